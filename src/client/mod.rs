//! The roomcast client library: connect, join, leave, send, and a stream of events.
//!
//! ```no_run
//! # async fn demo(ca_pem: Vec<u8>, token: String) -> Result<(), roomcast::client::ClientError> {
//! use roomcast::client::{Client, ClientConfig, ClientEvent};
//! let client = Client::connect(ClientConfig::new("127.0.0.1:7700".parse().unwrap(), ca_pem, token)).await?;
//! client.join("lobby", -1).await?;
//! client.send("lobby", "chat", "hello".into(), false).await?;
//! while let Some(event) = client.next_event().await {
//!     if let ClientEvent::Message { message, .. } = event {
//!         println!("{}: {:?}", message.from, message.body);
//!     }
//! }
//! # Ok(()) }
//! ```

/// The WebSocket transport's client.
pub mod ws;

mod failover;
pub use failover::{FailoverClient, FailoverConfig};

use crate::protocol::{
    Attribute, ClientFrame, CloseCode, DecodeError, DestroyReason, ErrorCode, Event, FrameReader,
    HistoryEntry, JoinInfo, KickReason, Message, PROTOCOL_VERSION, Request, Response, RoomInfo,
    ServerFrame, WireError, decode_body, encode_frame,
};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// How to reach and authenticate to a server.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's QUIC address.
    pub server: SocketAddr,
    /// The name its certificate is checked against.
    pub server_name: String,
    /// PEM of the CA to trust.
    pub ca_pem: Vec<u8>,
    /// The client token (HS256 JWT).
    pub token: String,
    /// Accept low-priority messages as datagrams (default true).
    pub datagrams: bool,
    /// Events buffered before the library stops reading the delivery stream (and the server
    /// starts skipping messages for this connection); low-priority datagrams that find it full
    /// are dropped and reported with a `Gap`.
    pub event_buffer: usize,
    /// How long [`Client::connect`] waits for the QUIC handshake and the server's welcome
    /// together (default [`DEFAULT_CONNECT_TIMEOUT`], 10 s: long enough for a few lost handshake
    /// packets on a poor network). When no handshake completes in that time the connect fails
    /// with [`ClientError::NoAnswer`]: nothing answers at that address.
    pub connect_timeout: Duration,
    /// How long a connection may stay silent before the client counts it dead (QUIC idle
    /// timeout; the smaller of both sides' applies; default [`DEFAULT_IDLE_TIMEOUT`], 30 s). The
    /// client sends keep-alives at a third of it (at most every 10 s), so only a dead path or
    /// relay stays silent that long; [`FailoverClient`] reconnects after it.
    pub idle_timeout: Duration,
}

/// The default of [`ClientConfig::idle_timeout`]: the relay's own default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The default of [`ClientConfig::connect_timeout`]. QUIC retransmits a lost first flight after
/// about 1 s, then doubling: 10 s leaves room for three or four losses.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ClientConfig {
    /// A config for `server` trusting `ca_pem`, checking the name `localhost`.
    pub fn new(server: SocketAddr, ca_pem: Vec<u8>, token: String) -> Self {
        ClientConfig {
            server,
            server_name: "localhost".into(),
            ca_pem,
            token,
            datagrams: true,
            event_buffer: 8192,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// What a client receives besides replies.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A room message.
    Message {
        /// The message.
        message: Message,
        /// Whether it came as a QUIC datagram.
        datagram: bool,
    },
    /// Messages were skipped: shed by the server because this connection lagged, or
    /// low-priority datagrams this library dropped because the event buffer was full.
    Gap {
        /// Room id.
        room: String,
        /// Low-priority messages skipped.
        low: u64,
        /// Normal messages skipped.
        normal: u64,
    },
    /// A room went away.
    RoomDestroyed {
        /// Room id.
        room: String,
        /// Why.
        reason: DestroyReason,
    },
    /// This connection was removed from a room.
    Kicked {
        /// Room id.
        room: String,
        /// Why.
        reason: KickReason,
    },
    /// This connection took over the user's membership of `room`: after a reconnect within the
    /// offline grace period (`missed` messages went out while the user was offline), or after a
    /// resume ([`Client::resume`], [`FailoverClient`]; `missed`: the messages after the resumed
    /// `last_seq` that are not replayed; every other one follows, in order).
    Resumed {
        /// Room id.
        room: String,
        /// Messages this connection will not receive.
        missed: u64,
        /// The newest sequence number at the resume.
        last_seq: u64,
    },
    /// A room notice: moderation (muted, banned, mute-all ...) or presence (member joined, left,
    /// count), as the protocol event.
    Notice(Event),
    /// [`FailoverClient`]: the connection died and the client is connected again, to `server`;
    /// the memberships follow, each with its `Resumed` (or [`ClientEvent::ResumeFailed`]).
    Reconnected {
        /// The relay now connected to.
        server: SocketAddr,
    },
    /// [`FailoverClient`]: a membership could not be resumed after a reconnect, and the client
    /// is no longer a member: the room was destroyed (`ROOM_NOT_FOUND`; it may have been
    /// created anew, to be joined again), the user was banned meanwhile, ...
    ResumeFailed {
        /// Room id.
        room: String,
        /// The relay's refusal.
        error: WireError,
    },
    /// The connection closed; the last event.
    Closed {
        /// The server's close code, when it closed the connection.
        code: Option<CloseCode>,
        /// Its reason text, or what went wrong.
        reason: String,
    },
}

/// The largest reply frame the client reads: a `History` page of 200 messages of the largest
/// (admin) body, 128 KiB each, is about 25 MiB.
pub const MAX_REPLY: u32 = 32 << 20;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA or TLS setup is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The local endpoint could not be made.
    #[error("local endpoint: {0}")]
    Endpoint(std::io::Error),
    /// The connection could not be started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// No QUIC handshake with `server` completed within [`ClientConfig::connect_timeout`]: no
    /// relay listens at that address, or something on the path drops its UDP packets.
    #[error("no relay answers at {server} (no QUIC handshake within {} ms)", waited.as_millis())]
    NoAnswer {
        /// The address tried.
        server: SocketAddr,
        /// How long the client waited.
        waited: Duration,
    },
    /// The server's certificate was refused: it is not signed by the CA the client trusts, has
    /// expired, or is not valid for [`ClientConfig::server_name`].
    #[error(
        "the relay at {server} presented a certificate the trusted CA does not accept ({reason})"
    )]
    Certificate {
        /// The server's address.
        server: SocketAddr,
        /// What the TLS layer found wrong with it.
        reason: String,
    },
    /// The server refused the request (or the hello).
    #[error("{0}")]
    Refused(WireError),
    /// The connection is closed.
    #[error("connection closed: {reason}")]
    Closed {
        /// The server's close code, when it closed the connection.
        code: Option<CloseCode>,
        /// The reason text.
        reason: String,
    },
    /// The server broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The stable error name, when the server refused.
    pub fn code(&self) -> Option<crate::protocol::ErrorCode> {
        match self {
            ClientError::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A connection the server welcomed: its control stream and what the welcome told.
struct Welcomed {
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    user: String,
    conn_id: u64,
    max_frame: u32,
    max_event: u32,
}

/// The error for a handshake that failed: a refused certificate is told apart from other closes.
fn handshake_failed(server: SocketAddr, err: &quinn::ConnectionError) -> ClientError {
    if let quinn::ConnectionError::TransportError(e) = err {
        // rustls reports a certificate it refused with a TLS alert (a crypto error code) and a
        // reason of the form "invalid peer certificate: <what>".
        let crypto = (0x100..0x200).contains(&u64::from(e.code));
        if crypto && e.reason.starts_with("invalid peer certificate") {
            return ClientError::Certificate {
                server,
                reason: e.reason.clone(),
            };
        }
    }
    closed(err)
}

fn closed(err: &quinn::ConnectionError) -> ClientError {
    let (code, reason) = close_info(err);
    ClientError::Closed { code, reason }
}

fn close_info(err: &quinn::ConnectionError) -> (Option<CloseCode>, String) {
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => (
            CloseCode::from_code(c.error_code.into_inner()),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        other => (None, other.to_string()),
    }
}

/// Requests waiting for their reply, by id; `None` once replies can no longer arrive.
type Pending = Arc<Mutex<Option<HashMap<u32, oneshot::Sender<Result<Response, WireError>>>>>>;

/// A request's place in [`Pending`], given up when the request ends however it ends: a request
/// dropped before it was written (a caller's timeout, say) would otherwise hold its place for the
/// connection's life, as no reply comes to take it.
struct Slot<'a> {
    pending: &'a Pending,
    id: u32,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(p) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            p.remove(&self.id);
        }
    }
}

/// A connected, authenticated client.
pub struct Client {
    endpoint: quinn::Endpoint,
    /// The endpoint is this client's own (not a shared [`ClientEndpoint`]'s): wait for it on close.
    own_endpoint: bool,
    conn: quinn::Connection,
    send: tokio::sync::Mutex<quinn::SendStream>,
    pending: Pending,
    next_id: AtomicU32,
    events: flume::Receiver<ClientEvent>,
    user: String,
    conn_id: u64,
    /// The largest control frame body the server accepts (from the welcome).
    max_frame: u32,
    _tasks: tokio::task::JoinSet<()>,
}

/// The transport settings of a client: one incoming unidirectional stream (delivery), datagrams on,
/// a delivery window large enough for bursts; dead after `idle` of silence.
fn client_transport(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // The delivery window bounds how much a client that reads slowly lets the server hand over:
    // beyond it the backlog stays in the room's ring on the server, where low and normal
    // messages are shed (with a Gap) instead of arriving late.
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(1u32.into())
        .stream_receive_window((256u32 << 10).into())
        .receive_window((512u32 << 10).into())
        .datagram_receive_buffer_size(Some(1 << 20))
        .keep_alive_interval(Some((idle / 3).min(Duration::from_secs(10))))
        // A client sends small requests: a larger path MTU toward the server would not carry
        // more of them, and each discovery probe is a padded packet the server must process.
        // (The server keeps discovering its own path MTU: fan-out packets do fill it.)
        .mtu_discovery_config(None);
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// A local QUIC endpoint (one UDP socket) with roomcast's client TLS and transport settings,
/// which many connections can share: a load generator or a gateway opening thousands of clients
/// then parses the CA once and runs one socket instead of one per client.
#[derive(Clone)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

/// UDP buffer sizes of a client endpoint: the kernel's 208 KiB default drops handshake
/// flights when hundreds of connections share one socket.
const SHARED_BUFFER: usize = 2 << 20;

impl ClientEndpoint {
    /// An endpoint on an ephemeral port of the unspecified address of `server`'s family, trusting
    /// `ca_pem`; `datagrams` as in [`ClientConfig::datagrams`]. Its socket asks for 2 MiB
    /// buffers, since many connections may share it.
    pub fn new(server: SocketAddr, ca_pem: &[u8], datagrams: bool) -> Result<Self, ClientError> {
        Self::with_idle(server, ca_pem, datagrams, DEFAULT_IDLE_TIMEOUT)
    }

    /// [`ClientEndpoint::new`] whose connections count as dead after `idle` of silence (see
    /// [`ClientConfig::idle_timeout`]).
    pub fn with_idle(
        server: SocketAddr,
        ca_pem: &[u8],
        datagrams: bool,
        idle: Duration,
    ) -> Result<Self, ClientError> {
        let crypto = crate::tls::quic_client_crypto(ca_pem)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = client_transport(idle);
        if !datagrams {
            transport.datagram_receive_buffer_size(None);
        }
        config.transport_config(Arc::new(transport));
        let bind = match server {
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let socket = crate::net::udp_socket(bind, SHARED_BUFFER, SHARED_BUFFER, false)
            .map_err(ClientError::Endpoint)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            ClientError::Endpoint(std::io::Error::other("no async runtime for QUIC"))
        })?;
        let endpoint =
            quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                .map_err(ClientError::Endpoint)?;
        Ok(ClientEndpoint { endpoint, config })
    }
}

impl Client {
    /// Connects on an endpoint of its own, sends the hello and waits for the welcome.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let endpoint =
            ClientEndpoint::with_idle(cfg.server, &cfg.ca_pem, cfg.datagrams, cfg.idle_timeout)?;
        Self::connect_inner(&endpoint, cfg, true).await
    }

    /// Connects on a shared endpoint; `cfg.ca_pem` and `cfg.datagrams` are the endpoint's.
    pub async fn connect_on(
        endpoint: &ClientEndpoint,
        cfg: ClientConfig,
    ) -> Result<Client, ClientError> {
        Self::connect_inner(endpoint, cfg, false).await
    }

    async fn connect_inner(
        shared: &ClientEndpoint,
        cfg: ClientConfig,
        own_endpoint: bool,
    ) -> Result<Client, ClientError> {
        let endpoint = shared.endpoint.clone();
        let server = cfg.server;
        let waited = cfg.connect_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let connecting = endpoint.connect_with(shared.config.clone(), server, &cfg.server_name)?;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(handshake_failed(server, &e)),
            // Dropping the handshake abandons the connection.
            Err(_) => return Err(ClientError::NoAnswer { server, waited }),
        };
        match tokio::time::timeout_at(deadline, Self::hello(&conn, &cfg)).await {
            Ok(Ok(welcomed)) => Ok(Self::start(
                endpoint,
                own_endpoint,
                conn,
                welcomed,
                cfg.event_buffer,
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                let reason = format!(
                    "the relay at {server} did not welcome the hello within {} ms",
                    waited.as_millis()
                );
                conn.close(CloseCode::Normal.into(), reason.as_bytes());
                Err(ClientError::Closed { code: None, reason })
            }
        }
    }

    /// Sends the hello on a new control stream and reads the welcome.
    async fn hello(conn: &quinn::Connection, cfg: &ClientConfig) -> Result<Welcomed, ClientError> {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
        let hello = encode_frame(&ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: cfg.token.clone(),
        });
        if send.write_all(&hello).await.is_err() {
            return Err(closed_now(conn).await);
        }
        // Control-stream replies are small; attribute and history replies are the largest.
        let mut reader = FrameReader::new(recv, MAX_REPLY);
        match reader.read::<ServerFrame>().await {
            Ok(Some(ServerFrame::Welcome {
                user,
                conn_id,
                max_frame,
                max_event,
                ..
            })) => Ok(Welcomed {
                send,
                reader,
                user,
                conn_id,
                max_frame,
                max_event,
            }),
            Ok(Some(ServerFrame::Refused(e))) => Err(ClientError::Refused(e)),
            Ok(Some(other)) => Err(ClientError::Protocol(format!(
                "expected a welcome, got {other:?}"
            ))),
            Ok(None) | Err(DecodeError::Io(_)) => Err(closed_now(conn).await),
            Err(e) => Err(ClientError::Protocol(e.to_string())),
        }
    }

    /// The client of a welcomed connection, with its reader tasks running.
    fn start(
        endpoint: quinn::Endpoint,
        own_endpoint: bool,
        conn: quinn::Connection,
        welcomed: Welcomed,
        event_buffer: usize,
    ) -> Client {
        let Welcomed {
            send,
            reader,
            user,
            conn_id,
            max_frame,
            max_event,
        } = welcomed;
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (tx, events) = flume::bounded(event_buffer.max(1));
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(read_replies(conn.clone(), reader, pending.clone()));
        tasks.spawn(read_events(conn.clone(), tx.clone(), max_event));
        tasks.spawn(read_datagrams(conn.clone(), tx));
        Client {
            endpoint,
            own_endpoint,
            conn,
            send: tokio::sync::Mutex::new(send),
            pending,
            next_id: AtomicU32::new(1),
            events,
            user,
            conn_id,
            max_frame,
            _tasks: tasks,
        }
    }

    /// The authenticated user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// This connection's id on the server.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// The largest request frame body the server accepts (its welcome's `max_frame`): it
    /// closes the connection on a larger one, so callers that take bodies from elsewhere check
    /// against it first.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// The underlying QUIC connection (for statistics).
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let waiting = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(|pending| pending.insert(id, tx))
            .is_some();
        if !waiting {
            // The reply stream has ended: no reply could arrive.
            return Err(closed_now(&self.conn).await);
        }
        let _slot = Slot {
            pending: &self.pending,
            id,
        };
        let frame = encode_frame(&ClientFrame::Request { id, request });
        // The relay closes the whole connection on a frame over its `max_frame`: refuse such a
        // request here instead, as the relay refuses an over-long body, and stay connected.
        let len = frame.len() - 4;
        if len > self.max_frame as usize {
            return Err(ClientError::Refused(WireError::new(
                ErrorCode::TooLarge,
                format!(
                    "the request frame of {len} bytes exceeds the relay's maximum of {} bytes",
                    self.max_frame
                ),
            )));
        }
        let written = self.send.lock().await.write_all(&frame).await;
        if written.is_err() {
            return Err(closed_now(&self.conn).await);
        }
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ClientError::Refused(e)),
            Err(_) => Err(closed_now(&self.conn).await),
        }
    }

    /// Joins a room; `history`: -1 none, 0 the server default, up to 50.
    pub async fn join(&self, room: &str, history: i32) -> Result<JoinInfo, ClientError> {
        calls::joined(self.request(calls::join(room, history)).await?)
    }

    /// Rejoins the incarnation `epoch` of `room` after a reconnect, having received its messages
    /// up to `last_seq`: the relay then sends `Resumed{missed}` and every message after
    /// `last_seq` it can replay, then live traffic (the protocol module doc, "Resume after a
    /// reconnect"). [`FailoverClient`] does this by itself.
    pub async fn resume(
        &self,
        room: &str,
        epoch: u64,
        last_seq: u64,
    ) -> Result<JoinInfo, ClientError> {
        calls::joined(self.request(calls::resume(room, epoch, last_seq)).await?)
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

    /// Room info with up to 20 members.
    pub async fn room_info(&self, room: &str) -> Result<RoomInfo, ClientError> {
        match self
            .request(Request::RoomInfo { room: room.into() })
            .await?
        {
            Response::Info(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// Sets up to 10 attributes; returns the attribute version and one result per key.
    pub async fn set_attributes(
        &self,
        room: &str,
        entries: &[(&str, &str)],
        auto_delete: bool,
        force: bool,
    ) -> Result<(u64, Vec<(String, Option<WireError>)>), ClientError> {
        let entries = entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match self
            .request(Request::SetAttributes {
                room: room.into(),
                entries,
                auto_delete,
                force,
            })
            .await?
        {
            Response::AttributeResults { version, results } => Ok((version, results)),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes up to 10 attributes; returns the attribute version and one result per key.
    pub async fn delete_attributes(
        &self,
        room: &str,
        keys: &[&str],
        force: bool,
    ) -> Result<(u64, Vec<(String, Option<WireError>)>), ClientError> {
        match self
            .request(Request::DeleteAttributes {
                room: room.into(),
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                force,
            })
            .await?
        {
            Response::AttributeResults { version, results } => Ok((version, results)),
            other => Err(unexpected(other)),
        }
    }

    /// Reads attributes (all when `keys` is empty).
    pub async fn get_attributes(
        &self,
        room: &str,
        keys: &[&str],
    ) -> Result<(u64, Vec<Attribute>), ClientError> {
        match self
            .request(Request::GetAttributes {
                room: room.into(),
                keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            })
            .await?
        {
            Response::Attributes {
                version,
                attributes,
            } => Ok((version, attributes)),
            other => Err(unexpected(other)),
        }
    }

    /// Recalls one of this user's messages.
    pub async fn recall(&self, room: &str, seq: u64) -> Result<(), ClientError> {
        match self
            .request(Request::Recall {
                room: room.into(),
                seq,
            })
            .await?
        {
            Response::Recalled => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// A page of history: up to `limit` messages with `seq < before_seq` (`None`: the newest),
    /// oldest first.
    pub async fn history(
        &self,
        room: &str,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        match self
            .request(Request::History {
                room: room.into(),
                before_seq: before_seq.unwrap_or(0),
                limit,
            })
            .await?
        {
            Response::History(h) => Ok(h),
            other => Err(unexpected(other)),
        }
    }

    /// A round trip.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.request(Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The event stream.
    pub fn events(&self) -> &flume::Receiver<ClientEvent> {
        &self.events
    }

    /// The next event; `None` after [`ClientEvent::Closed`] was taken.
    pub async fn next_event(&self) -> Option<ClientEvent> {
        self.events.recv_async().await.ok()
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(&self) {
        self.conn.close(CloseCode::Normal.into(), b"client closed");
        // A shared endpoint keeps running and sends the close; waiting for it to go idle would
        // wait for every other connection on it.
        if self.own_endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        }
    }
}

/// The requests every client of this library makes (QUIC and WebSocket alike), and what their
/// replies hold.
pub(crate) mod calls {
    use super::{ClientError, unexpected};
    use crate::protocol::{JoinInfo, Request, Response};
    use bytes::Bytes;

    pub fn join(room: &str, history: i32) -> Request {
        Request::Join {
            room: room.into(),
            history,
        }
    }

    pub fn joined(r: Response) -> Result<JoinInfo, ClientError> {
        match r {
            Response::Joined(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    pub fn resume(room: &str, epoch: u64, last_seq: u64) -> Request {
        Request::Resume {
            room: room.into(),
            epoch,
            last_seq,
        }
    }

    pub fn leave(room: &str) -> Request {
        Request::Leave { room: room.into() }
    }

    pub fn left(r: Response) -> Result<(), ClientError> {
        match r {
            Response::Left => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub fn send(room: &str, msg_type: &str, body: Bytes, low: bool) -> Request {
        Request::Send {
            room: room.into(),
            msg_type: msg_type.into(),
            body,
            low,
        }
    }

    pub fn sent(r: Response) -> Result<(u64, u64), ClientError> {
        match r {
            Response::Sent { seq, ts } => Ok((seq, ts)),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(resp: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {resp:?}"))
}

/// How long a client whose control stream ended waits for the connection's close (and the
/// server's reason) to arrive: the stream's end and the close can come in separate packets.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The error for a control stream that ended: the connection's close reason, once it arrives.
async fn closed_now(conn: &quinn::Connection) -> ClientError {
    match tokio::time::timeout(CLOSE_WAIT, conn.closed()).await {
        Ok(e) => closed(&e),
        Err(_) => ClientError::Closed {
            code: None,
            reason: "control stream ended".into(),
        },
    }
}

async fn read_replies(
    conn: quinn::Connection,
    mut reader: FrameReader<quinn::RecvStream>,
    pending: Pending,
) {
    loop {
        let frame = match reader.read::<ServerFrame>().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(DecodeError::Io(_)) => break,
            Err(e) => {
                // A reply this client cannot read: nothing after it can be matched up either.
                conn.close(CloseCode::Protocol.into(), e.to_string().as_bytes());
                break;
            }
        };
        if let ServerFrame::Reply { id, result } = frame {
            let tx = pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
                .and_then(|p| p.remove(&id));
            if let Some(tx) = tx {
                let _ = tx.send(result);
            }
        }
    }
    // Dropping the senders fails every outstanding request with "closed", and later requests
    // fail at once.
    pending.lock().unwrap_or_else(|p| p.into_inner()).take();
}

fn to_client_event(event: Event, datagram: bool) -> Option<ClientEvent> {
    Some(match event {
        Event::Ready { .. } => return None,
        Event::Message(message) => ClientEvent::Message { message, datagram },
        Event::Gap { room, low, normal } => ClientEvent::Gap { room, low, normal },
        Event::RoomDestroyed { room, reason } => ClientEvent::RoomDestroyed { room, reason },
        Event::Kicked { room, reason } => ClientEvent::Kicked { room, reason },
        Event::Resumed {
            room,
            missed,
            last_seq,
        } => ClientEvent::Resumed {
            room,
            missed,
            last_seq,
        },
        other => ClientEvent::Notice(other),
    })
}

async fn read_events(conn: quinn::Connection, tx: flume::Sender<ClientEvent>, max_event: u32) {
    if let Ok(recv) = conn.accept_uni().await {
        let mut reader = FrameReader::new(recv, max_event);
        while let Ok(Some(event)) = reader.read::<Event>().await {
            if let Some(ev) = to_client_event(event, false)
                && tx.send_async(ev).await.is_err()
            {
                return;
            }
        }
    }
    let (code, reason) = close_info(&conn.closed().await);
    let _ = tx.send_async(ClientEvent::Closed { code, reason }).await;
}

async fn read_datagrams(conn: quinn::Connection, tx: flume::Sender<ClientEvent>) {
    // Low messages dropped here because the event buffer was full, by room: the application is
    // told with a `Gap{low}` once the buffer has room again (checked on every datagram, and every
    // GAP_RETRY while drops wait to be told), so no drop goes unreported.
    let mut dropped: HashMap<String, u64> = HashMap::new();
    loop {
        let d = if dropped.is_empty() {
            conn.read_datagram().await
        } else {
            if !report_dropped(&tx, &mut dropped) {
                return;
            }
            if dropped.is_empty() {
                continue;
            }
            tokio::select! {
                d = conn.read_datagram() => d,
                _ = tokio::time::sleep(GAP_RETRY) => continue,
            }
        };
        let Ok(d) = d else {
            return;
        };
        let Some(ev) = decode_body::<Event>(&d)
            .ok()
            .and_then(|event| to_client_event(event, true))
        else {
            continue;
        };
        if !dropped.is_empty() && !report_dropped(&tx, &mut dropped) {
            return;
        }
        match tx.try_send(ev) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(ClientEvent::Message { message, .. })) => {
                *dropped.entry(message.room).or_default() += 1;
            }
            Err(flume::TrySendError::Full(_)) => {}
            Err(flume::TrySendError::Disconnected(_)) => return,
        }
    }
}

/// How often a datagram reader with unreported drops checks for room in the event buffer.
const GAP_RETRY: Duration = Duration::from_millis(10);

/// Queues a `Gap{low}` for every room with drops that fits in the event buffer (a try, so a
/// cancelled wait can never send one twice); false when the application is gone.
fn report_dropped(tx: &flume::Sender<ClientEvent>, dropped: &mut HashMap<String, u64>) -> bool {
    let rooms: Vec<String> = dropped.keys().cloned().collect();
    for room in rooms {
        let low = dropped.get(&room).copied().unwrap_or(0);
        let gap = ClientEvent::Gap {
            room: room.clone(),
            low,
            normal: 0,
        };
        match tx.try_send(gap) {
            Ok(()) => {
                dropped.remove(&room);
            }
            Err(flume::TrySendError::Full(_)) => break,
            Err(flume::TrySendError::Disconnected(_)) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_gives_up_its_reply_slot_however_it_ends() {
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let waiting = |p: &Pending| p.lock().map_or(0, |p| p.as_ref().map_or(0, |m| m.len()));
        for id in 0..3 {
            let (tx, _rx) = oneshot::channel();
            pending
                .lock()
                .expect("not poisoned")
                .as_mut()
                .expect("open")
                .insert(id, tx);
            // A request dropped before its reply (never written, or its caller gave up).
            drop(Slot {
                pending: &pending,
                id,
            });
        }
        assert_eq!(waiting(&pending), 0);
        // Once the connection is gone the map is too; a slot let go then is a no-op.
        pending.lock().expect("not poisoned").take();
        drop(Slot {
            pending: &pending,
            id: 9,
        });
    }
}
