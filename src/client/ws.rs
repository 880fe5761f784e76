//! A roomcast client over the WebSocket transport (`/ws` on the relay's public listener), with
//! the same calls and events as the QUIC [`Client`](crate::client::Client). The load harness uses it to measure
//! the WebSocket transport; applications in Rust normally use QUIC.

use super::{ClientError, ClientEvent, calls, to_client_event};
use crate::protocol::{
    ClientFrame, CloseCode, DecodeError, Event, JoinInfo, PROTOCOL_VERSION, Request, Response,
    ServerFrame, WS_CONTROL, WS_EVENTS, WireError, decode_body, encode_datagram,
};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How to reach a relay's WebSocket.
#[derive(Clone)]
pub struct WsClientConfig {
    /// `ws://HOST:PORT/ws` (plain HTTP, loopback) or `wss://HOST:PORT/ws`.
    pub url: String,
    /// PEM of the CA to trust for `wss://`.
    pub ca_pem: Vec<u8>,
    /// The client token.
    pub token: String,
    /// An `Origin` header to send, as a browser would.
    pub origin: Option<String>,
    /// Events buffered before the client stops reading the socket (then the relay's send queue
    /// fills and it sheds for this connection, as for a QUIC client).
    pub event_buffer: usize,
}

impl WsClientConfig {
    /// A config for `url` with `token`, trusting `ca_pem`.
    pub fn new(url: impl Into<String>, ca_pem: Vec<u8>, token: String) -> Self {
        WsClientConfig {
            url: url.into(),
            ca_pem,
            token,
            origin: None,
            event_buffer: 8192,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Socket = WebSocketStream<Box<dyn Io>>;
type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Result<Response, WireError>>>>>>;

/// A connected, authenticated WebSocket client.
pub struct WsClient {
    sink: tokio::sync::Mutex<SplitSink<Socket, Message>>,
    pending: Pending,
    next_id: AtomicU32,
    events: flume::Receiver<ClientEvent>,
    user: String,
    conn_id: u64,
    _tasks: tokio::task::JoinSet<()>,
}

fn closed(reason: impl Into<String>) -> ClientError {
    ClientError::Closed {
        code: None,
        reason: reason.into(),
    }
}

/// The roomcast close code of a WebSocket close code.
fn close_code(ws: u16) -> Option<CloseCode> {
    match ws {
        1000 => Some(CloseCode::Normal),
        4000..=4999 => CloseCode::from_code(u64::from(ws - 4000)),
        _ => None,
    }
}

impl WsClient {
    /// Connects, sends the hello and waits for the welcome.
    pub async fn connect(cfg: WsClientConfig) -> Result<WsClient, ClientError> {
        let mut request = cfg
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::Protocol(format!("WebSocket URL: {e}")))?;
        if let Some(origin) = &cfg.origin {
            let v = origin
                .parse()
                .map_err(|_| ClientError::Protocol("bad origin".into()))?;
            request.headers_mut().insert("origin", v);
        }
        let uri = request.uri().clone();
        let host = uri.host().unwrap_or("localhost").to_owned();
        let tls = uri.scheme_str() == Some("wss");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let host_ip = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((host_ip, port))
            .await
            .map_err(ClientError::Endpoint)?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if tls {
            let crypto = crate::tls::tls_client_config(&cfg.ca_pem, &[b"http/1.1"])?;
            let name = rustls::pki_types::ServerName::try_from(host_ip.to_owned())
                .map_err(|e| ClientError::Protocol(format!("server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(crypto))
                .connect(name, tcp)
                .await
                .map_err(ClientError::Endpoint)?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (socket, _) = tokio_tungstenite::client_async(request, io)
            .await
            .map_err(|e| closed(format!("WebSocket handshake: {e}")))?;
        let (mut sink, mut stream) = socket.split();
        let hello = encode_datagram(&ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: cfg.token.clone(),
        });
        sink.send(Message::Binary(hello))
            .await
            .map_err(|e| closed(e.to_string()))?;
        // The first control message is the welcome or the refusal; events may come before it
        // (a `Resumed` queued when the connection registered) and are kept for the reader.
        let mut early = Vec::new();
        let (user, conn_id) = loop {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) if b.first() == Some(&WS_CONTROL) => {
                    let frames =
                        split_frames(&b[1..]).map_err(|e| ClientError::Protocol(e.to_string()))?;
                    match frames.first().map(|f| decode_body::<ServerFrame>(f)) {
                        Some(Ok(ServerFrame::Welcome { user, conn_id, .. })) => {
                            break (user, conn_id);
                        }
                        Some(Ok(ServerFrame::Refused(e))) => return Err(ClientError::Refused(e)),
                        other => {
                            return Err(ClientError::Protocol(format!(
                                "expected a welcome, got {other:?}"
                            )));
                        }
                    }
                }
                Some(Ok(Message::Binary(b))) => early.push(b),
                Some(Ok(Message::Close(frame))) => {
                    return Err(ClientError::Closed {
                        code: frame.as_ref().and_then(|f| close_code(u16::from(f.code))),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(closed(e.to_string())),
                None => return Err(closed("socket ended before the welcome")),
            }
        };
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, events) = flume::bounded(cfg.event_buffer.max(1));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(read(early, stream, pending.clone(), tx));
        Ok(WsClient {
            sink: tokio::sync::Mutex::new(sink),
            pending,
            next_id: AtomicU32::new(1),
            events,
            user,
            conn_id,
            _tasks: tasks,
        })
    }

    /// The authenticated user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// This connection's id on the server.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Sends a request and waits for its reply.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(|p| p.insert(id, tx))
            .is_some();
        if !waiting {
            return Err(closed("the socket is closed"));
        }
        let frame = encode_datagram(&ClientFrame::Request { id, request });
        self.sink
            .lock()
            .await
            .send(Message::Binary(frame))
            .await
            .map_err(|e| closed(e.to_string()))?;
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ClientError::Refused(e)),
            Err(_) => Err(closed("the socket closed before the reply")),
        }
    }

    /// Joins a room; `history` as in [`super::Client::join`].
    pub async fn join(&self, room: &str, history: i32) -> Result<JoinInfo, ClientError> {
        calls::joined(self.request(calls::join(room, history)).await?)
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        calls::left(self.request(calls::leave(room)).await?)
    }

    /// Sends a message; returns its `(seq, ts)`.
    pub async fn send(
        &self,
        room: &str,
        msg_type: &str,
        body: Bytes,
        low: bool,
    ) -> Result<(u64, u64), ClientError> {
        calls::sent(self.request(calls::send(room, msg_type, body, low)).await?)
    }

    /// The event stream.
    pub fn events(&self) -> &flume::Receiver<ClientEvent> {
        &self.events
    }

    /// The next event; `None` after [`ClientEvent::Closed`] was taken.
    pub async fn next_event(&self) -> Option<ClientEvent> {
        self.events.recv_async().await.ok()
    }

    /// Closes the socket with 1000.
    pub async fn close(&self) {
        let mut sink = self.sink.lock().await;
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.close().await;
    }
}

/// Splits length-delimited frames.
fn split_frames(mut b: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len == 0 {
            return Err(DecodeError::Empty);
        }
        if b.len() < 4 + len {
            return Err(DecodeError::Truncated);
        }
        out.push(&b[4..4 + len]);
        b = &b[4 + len..];
    }
    Ok(out)
}

async fn read(
    early: Vec<Bytes>,
    mut stream: SplitStream<Socket>,
    pending: Pending,
    tx: flume::Sender<ClientEvent>,
) {
    let mut close = (None, String::from("socket ended"));
    let mut early = early.into_iter();
    loop {
        let message = match early.next() {
            Some(b) => Ok(Message::Binary(b)),
            None => match stream.next().await {
                Some(m) => m,
                None => break,
            },
        };
        let b = match message {
            Ok(Message::Binary(b)) => b,
            Ok(Message::Close(frame)) => {
                if let Some(f) = frame {
                    close = (close_code(u16::from(f.code)), f.reason.to_string());
                }
                break;
            }
            Ok(_) => continue,
            Err(e) => {
                close = (None, e.to_string());
                break;
            }
        };
        let Some((&envelope, rest)) = b.split_first() else {
            continue;
        };
        let Ok(frames) = split_frames(rest) else {
            close = (None, "unreadable message from the server".into());
            break;
        };
        for f in frames {
            if envelope == WS_CONTROL {
                if let Ok(ServerFrame::Reply { id, result }) = decode_body::<ServerFrame>(f) {
                    let tx = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .as_mut()
                        .and_then(|p| p.remove(&id));
                    if let Some(tx) = tx {
                        let _ = tx.send(result);
                    }
                }
            } else if envelope == WS_EVENTS
                && let Ok(event) = decode_body::<Event>(f)
                && let Some(ev) = to_client_event(event, false)
                && tx.send_async(ev).await.is_err()
            {
                return;
            }
        }
    }
    pending.lock().unwrap_or_else(|p| p.into_inner()).take();
    let _ = tx
        .send_async(ClientEvent::Closed {
            code: close.0,
            reason: close.1,
        })
        .await;
}
