//! The WebSocket transport (`GET /ws` on the public listener): one socket carries both
//! directions of roomcast/1 (see the protocol module doc, "WebSocket").
//!
//! - Client → server: each binary message is one postcard [`ClientFrame`](crate::protocol::ClientFrame) body, at most
//!   `limits.max_frame` bytes; the first must be the hello, within `transport.hello_timeout_ms`.
//! - Server → client: each binary message starts with an envelope byte,
//!   [`WS_CONTROL`] (length-delimited `ServerFrame`s, as on the
//!   control stream) or [`WS_EVENTS`] (length-delimited `Event`s, as
//!   on the delivery stream: one message carries a whole delivery batch).
//!
//! Backpressure: the socket has one bounded send queue (`web.send_queue_bytes`), written by one
//! writer task. When it is full the connection's delivery task waits, exactly as on a QUIC
//! stream whose flow-control window is full, so its backlog stays in the rooms' rings, where
//! egress shedding drops low-priority messages first, then normal ones, each with the exact
//! `Gap`; protected traffic that cannot be written within `transport.slow_close_ms` closes the
//! socket as `too_slow`. Low-priority messages have no datagram lane here: they share the
//! socket.
//!
//! Close codes: roomcast's [`CloseCode`] `n` is WebSocket close code `4000 + n` (`Normal` is
//! 1000); WebSocket-level faults use the standard codes: 1002 a broken frame, 1003 a text
//! message, 1007 invalid UTF-8 in a control frame, 1009 a message over `limits.max_frame`.
//! The server pings every `web.ping_ms`; a socket that sends nothing (pongs included) for
//! `web.idle_timeout_ms` is closed with 4003.

use super::admission::Handshaking;
use super::link::{Closer, EventSink, Gone, Link, ReplySink, TransportKind};
use super::relay::Relay;
use super::session::{self, FrameResult};
use super::web::text;
use crate::config::Config;
use crate::metrics as m;
use crate::protocol::{
    CloseCode, DecodeError, HelloFrame, WS_CONTROL, WS_EVENTS, decode_client_frame,
};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::Instrument;

/// The WebSocket close code for one of roomcast's close codes.
pub fn ws_close_code(code: CloseCode) -> u16 {
    match code {
        CloseCode::Normal => 1000,
        other => 4000 + other.code() as u16,
    }
}

/// Whether a page from `origin` may open a session. `host` is the host the request was sent to
/// (the `Host` header or the WebTransport URL's authority); a page of the relay's own host,
/// a loopback page, an origin in `allowed` (or `"*"` there) may; a request without an `Origin`
/// (not from a browser) may too: roomcast's tokens, not cookies, authenticate, so the check
/// decides which sites may embed the relay, not who may use it.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some(origin_host) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .map(host_of)
    else {
        return false;
    };
    if is_loopback_host(origin_host) {
        return true;
    }
    host.map(host_of)
        .is_some_and(|h| !h.is_empty() && h.eq_ignore_ascii_case(origin_host))
}

/// The host of an authority `host[:port]` (an IPv6 address keeps its brackets).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split_inclusive(']').next().unwrap_or(authority);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost") {
        return true;
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

type Body = Full<Bytes>;

/// Answers a `GET /ws`: `101` and the pending upgrade for a valid WebSocket request from an
/// allowed origin, else `400`, `426` or `403` with a plain-text reason.
pub(crate) fn upgrade(
    config: &Config,
    req: &mut Request<Incoming>,
    _tls: bool,
) -> (Response<Body>, Option<hyper::upgrade::OnUpgrade>) {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return (
            text(
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade request\n",
            ),
            None,
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = text(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is served\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return (r, None);
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return (
            text(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing\n"),
            None,
        );
    };
    let origin = h.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !origin_allowed(origin, host, &config.web.origins) {
        tracing::info!(origin, "WebSocket from a foreign origin refused");
        return (
            text(
                StatusCode::FORBIDDEN,
                "this origin may not open a roomcast session (web.origins)\n",
            ),
            None,
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on = hyper::upgrade::on(req);
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let rh = r.headers_mut();
    rh.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    rh.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        rh.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    (r, Some(on))
}

/// How a socket ended, for the connection metrics.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    Open,
    /// The client closed it with 1000.
    Normal,
    /// Closed here.
    Local,
    /// Anything else.
    Lost,
}

/// State shared by a socket's session, writer and reader.
struct Shared {
    /// The close to send (WebSocket code, reason); the first request wins.
    close: Mutex<Option<(u16, String)>>,
    /// Wakes the writer for a close.
    close_asked: Notify,
    ended: Mutex<Ended>,
    /// Turns true once a close was asked for or the writer has finished.
    closing: tokio::sync::watch::Sender<bool>,
    /// Milliseconds since `born` at the last message received (pongs included).
    last_rx: AtomicU64,
    born: tokio::time::Instant,
    /// The send queue's byte budget: closed when the writer is gone, so no writer waits on it.
    bytes: Arc<Semaphore>,
}

impl Shared {
    fn ask_close(&self, code: u16, reason: &str, ended: Ended) {
        {
            let mut close = self.close.lock().unwrap_or_else(|p| p.into_inner());
            if close.is_some() {
                return;
            }
            *close = Some((code, truncate(reason, 120).to_owned()));
        }
        self.end(ended);
        self.closing.send_replace(true);
        self.close_asked.notify_one();
    }

    fn end(&self, how: Ended) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if *ended == Ended::Open {
            *ended = how;
        }
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_rx.store(ms, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.born.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_rx.load(Ordering::Relaxed)))
    }
}

/// A close reason fits a control frame (125 bytes) when cut at a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The socket as a [`Link`]: its closer and send queue.
#[derive(Clone)]
struct WsLink {
    shared: Arc<Shared>,
    queue: flume::Sender<(Bytes, OwnedSemaphorePermit)>,
    capacity: u32,
}

impl WsLink {
    /// Queues one message, waiting while the send queue's bytes are taken.
    async fn push(&self, message: Bytes) -> Result<(), Gone> {
        let n = u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let permit = self
            .shared
            .bytes
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| Gone::lost("the WebSocket is closed"))?;
        self.queue
            .send_async((message, permit))
            .await
            .map_err(|_| Gone::lost("the WebSocket is closed"))
    }

    /// `envelope` then the frames, as one message.
    async fn push_frames(&self, envelope: u8, frames: &[Bytes]) -> Result<(), Gone> {
        let len = 1 + frames.iter().map(Bytes::len).sum::<usize>();
        let mut buf = BytesMut::with_capacity(len);
        buf.put_u8(envelope);
        for f in frames {
            buf.extend_from_slice(f);
        }
        self.push(buf.freeze()).await
    }
}

impl Closer for WsLink {
    fn close(&self, code: CloseCode, reason: &str) {
        self.shared
            .ask_close(ws_close_code(code), reason, Ended::Local);
    }
}

impl Link for WsLink {
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        // A close asked for counts as closed: the delivery task stops writing at once.
        let mut closing = self.shared.closing.subscribe();
        async move {
            let _ = closing.wait_for(|c| *c).await;
        }
    }

    fn closed_reason(&self) -> &'static str {
        match *self.shared.ended.lock().unwrap_or_else(|p| p.into_inner()) {
            Ended::Normal => "normal",
            Ended::Local => "shutdown",
            Ended::Open | Ended::Lost => "lost",
        }
    }

    fn is_closed(&self) -> bool {
        *self.shared.closing.borrow()
    }
}

/// The control lane: replies in [`WS_CONTROL`] messages.
struct WsReplies(WsLink);

impl ReplySink for WsReplies {
    async fn write(&mut self, frame: Bytes) -> Result<(), Gone> {
        self.0
            .push_frames(WS_CONTROL, std::slice::from_ref(&frame))
            .await
    }
}

/// The delivery lane: each batch in one [`WS_EVENTS`] message.
struct WsEvents(WsLink);

impl EventSink for WsEvents {
    async fn write_all(&mut self, frames: &mut [Bytes]) -> Result<(), Gone> {
        self.0.push_frames(WS_EVENTS, frames).await
    }
}

/// Serves an upgraded WebSocket to its end.
pub(crate) async fn serve<IO>(relay: Arc<Relay>, io: IO, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
    let span = tracing::info_span!("ws", remote = %peer, user = tracing::field::Empty);
    let reason = run(&relay, io).instrument(span).await;
    session::closed_metric(reason, TransportKind::WebSocket);
}

async fn run<IO>(relay: &Arc<Relay>, io: IO) -> &'static str
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cfg = &relay.config;
    let max_frame = cfg.limits.max_frame as usize;
    // Small buffers: clients send small requests, and tungstenite's 128 KiB defaults would cost
    // that much per idle socket (a larger message grows the read buffer while it is read).
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(cfg.transport.delivery_batch_bytes + max_frame + 64 * 1024);
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config)).await;
    let (sink, stream) = ws.split();
    let capacity = u32::try_from(cfg.web.send_queue_bytes).unwrap_or(u32::MAX);
    let (closing, _) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared {
        close: Mutex::new(None),
        close_asked: Notify::new(),
        ended: Mutex::new(Ended::Open),
        closing,
        last_rx: AtomicU64::new(0),
        born: tokio::time::Instant::now(),
        bytes: Arc::new(Semaphore::new(capacity as usize)),
    });
    // Every queued message holds at least one byte of the budget, so the count is bounded too.
    let (queue, queued) = flume::bounded(capacity as usize);
    let link = WsLink {
        shared: shared.clone(),
        queue,
        capacity,
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(writer(
        sink,
        queued,
        shared.clone(),
        Duration::from_millis(cfg.web.ping_ms),
        Duration::from_millis(cfg.web.idle_timeout_ms),
    ));
    let (frames_tx, frames) = flume::bounded(session::PIPELINE);
    let mut reader_task = tokio::task::JoinSet::new();
    reader_task.spawn(reader(stream, frames_tx, shared.clone()));

    let reason = serve_opened(relay, link.clone(), frames, Handshaking::gauge_only()).await;
    // Let the writer send what is queued and the close frame (it gives up after a second).
    link.close(CloseCode::Normal, "closed");
    let _ = tokio::time::timeout(Duration::from_secs(3), tasks.join_next()).await;
    tasks.shutdown().await;
    reader_task.shutdown().await;
    reason
}

async fn serve_opened(
    relay: &Arc<Relay>,
    link: WsLink,
    frames: flume::Receiver<FrameResult>,
    handshaking: Handshaking,
) -> &'static str {
    let hello_timeout = Duration::from_millis(relay.config.transport.hello_timeout_ms);
    let hello = match tokio::time::timeout(hello_timeout, frames.recv_async()).await {
        Ok(Ok(frame)) => frame,
        // The reader ended without a word (it closed the socket with its reason).
        Ok(Err(_)) => return link.closed_reason(),
        Err(_) => {
            session::protocol_close(&link, &session::hello_timeout_reason(hello_timeout));
            return "hello_timeout";
        }
    };
    if let Err(DecodeError::Io(_)) = &hello {
        return link.closed_reason();
    }
    let hello = hello.map(|frame| frame.map(HelloFrame::Frame));
    let user = match session::check_hello(relay, hello) {
        Ok(user) => user,
        // The writer sends what is queued (the refusal) before the close frame.
        Err(refusal) => {
            return session::refuse_hello(&link, &mut WsReplies(link.clone()), refusal).await;
        }
    };
    tracing::Span::current().record("user", user.as_str());
    drop(handshaking);
    let events = {
        let link = link.clone();
        async move { Ok(WsEvents(link)) }
    };
    let served = session::Session {
        transport: TransportKind::WebSocket,
        link: link.clone(),
        replies: WsReplies(link),
        events,
        // The reader runs already: it read the hello.
        reader: std::future::ready(()),
        frames,
        user,
    };
    match session::serve_session(relay, served).await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket session ended");
            "lost"
        }
    }
}

type Sink<IO> = SplitSink<WebSocketStream<IO>, Message>;

/// Owns the socket's write half: queued messages in order, pings, and the close.
async fn writer<IO>(
    mut sink: Sink<IO>,
    queued: flume::Receiver<(Bytes, OwnedSemaphorePermit)>,
    shared: Arc<Shared>,
    ping_every: Duration,
    idle_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    loop {
        tokio::select! {
            biased;
            _ = shared.close_asked.notified() => break,
            item = queued.recv_async() => {
                let Ok((message, permit)) = item else { break };
                let written = tokio::select! {
                    biased;
                    _ = shared.close_asked.notified() => {
                        // Re-arm for the check below: the close is handled after the loop.
                        shared.close_asked.notify_one();
                        break;
                    }
                    r = write_batch(&mut sink, message, permit, &queued) => r,
                };
                if written.is_err() {
                    shared.end(Ended::Lost);
                    break;
                }
            }
            _ = ping.tick() => {
                if shared.idle_for() >= idle_timeout {
                    shared.ask_close(
                        ws_close_code(CloseCode::Protocol),
                        "nothing received within the idle timeout",
                        Ended::Lost,
                    );
                    continue;
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    shared.end(Ended::Lost);
                    break;
                }
            }
        }
    }
    let close = shared
        .close
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let finish = async {
        if let Some((code, reason)) = close {
            // What was queued before the close (a refusal, the last replies) goes first.
            while let Ok((message, _permit)) = queued.try_recv() {
                if sink.feed(Message::Binary(message)).await.is_err() {
                    return;
                }
            }
            let frame = CloseFrame {
                code: WsCode::from(code),
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
    shared.end(Ended::Lost);
    shared.bytes.close();
    shared.closing.send_replace(true);
}

/// Writes `first` and whatever else is queued already, then flushes once.
async fn write_batch<IO>(
    sink: &mut Sink<IO>,
    first: Bytes,
    permit: OwnedSemaphorePermit,
    queued: &flume::Receiver<(Bytes, OwnedSemaphorePermit)>,
) -> Result<(), WsError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    sink.feed(Message::Binary(first)).await?;
    drop(permit);
    for _ in 0..64 {
        let Ok((message, permit)) = queued.try_recv() else {
            break;
        };
        sink.feed(Message::Binary(message)).await?;
        drop(permit);
    }
    sink.flush().await
}

/// Owns the socket's read half: decodes client frames for the session, answers faults with
/// their close codes.
async fn reader<IO>(
    mut stream: SplitStream<WebSocketStream<IO>>,
    frames: flume::Sender<FrameResult>,
    shared: Arc<Shared>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = |what: &str| DecodeError::Io(std::io::Error::other(what.to_owned()));
    loop {
        let message = stream.next().await;
        shared.touch();
        let frame: FrameResult = match message {
            Some(Ok(Message::Binary(body))) => decode_client_frame(&body).map(Some),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(Message::Text(_))) => {
                shared.ask_close(
                    1003,
                    "roomcast frames are binary WebSocket messages",
                    Ended::Local,
                );
                Err(io("a text message"))
            }
            Some(Ok(Message::Close(frame))) => {
                let normal = frame.is_none_or(|f| u16::from(f.code) == 1000);
                shared.end(if normal { Ended::Normal } else { Ended::Lost });
                Ok(None)
            }
            None => {
                shared.end(Ended::Lost);
                shared.closing.send_replace(true);
                Err(io("the socket ended without a close frame"))
            }
            Some(Err(e)) => {
                let (code, why) = match &e {
                    WsError::Capacity(_) => (1009, "message larger than limits.max_frame"),
                    WsError::Protocol(_) => (1002, "broken WebSocket frame"),
                    WsError::Utf8(_) => (1007, "invalid UTF-8"),
                    _ => (0, ""),
                };
                if code != 0 {
                    tracing::info!(error = %e, "WebSocket protocol error");
                    shared.ask_close(code, why, Ended::Local);
                } else {
                    shared.end(Ended::Lost);
                    shared.closing.send_replace(true);
                }
                Err(io(&e.to_string()))
            }
        };
        let last = !matches!(frame, Ok(Some(_)) | Err(DecodeError::UnknownRequest { .. }));
        if frames.send_async(frame).await.is_err() || last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_of_the_relay_loopback_and_the_list_pass() {
        let none: &[String] = &[];
        assert!(origin_allowed(None, Some("relay.example:7700"), none));
        assert!(origin_allowed(
            Some("https://relay.example:8443"),
            Some("relay.example:7700"),
            none
        ));
        assert!(origin_allowed(Some("http://127.0.0.1:7700"), None, none));
        assert!(origin_allowed(Some("http://localhost:3000"), None, none));
        assert!(origin_allowed(Some("http://app.localhost"), None, none));
        assert!(origin_allowed(Some("http://[::1]:7700"), None, none));
        assert!(!origin_allowed(
            Some("https://evil.example"),
            Some("relay.example:7700"),
            none
        ));
        assert!(!origin_allowed(Some("null"), Some("relay.example"), none));
        assert!(!origin_allowed(
            Some("https://127.0.0.1.evil.example"),
            None,
            none
        ));
        let listed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(Some("https://app.example"), None, &listed));
        assert!(!origin_allowed(
            Some("https://app.example:444"),
            None,
            &listed
        ));
        assert!(origin_allowed(
            Some("https://anything.example"),
            None,
            &["*".to_owned()]
        ));
    }

    #[test]
    fn close_codes_map_into_the_private_range() {
        assert_eq!(ws_close_code(CloseCode::Normal), 1000);
        assert_eq!(ws_close_code(CloseCode::Protocol), 4003);
        assert_eq!(ws_close_code(CloseCode::TooSlow), 4004);
        assert_eq!(truncate("é".repeat(100).as_str(), 121).len(), 120);
    }
}
