//! One client connection: handshake, hello and token check, the request loop on the control stream,
//! and the delivery task it owns. The request loop and the delivery task are the same for every
//! transport ([`serve_session`] over a [`Link`]); this module also opens native QUIC connections
//! and hands `h3` ones to [`super::webtransport`].

use super::admission::Handshaking;
use super::data::Actor;
use super::delivery::Delivery;
use super::link::{Closer, EventSink, Gone, Link, REFUSAL_WAIT, ReplySink, TransportKind};
use super::relay::{ConnHandle, DeliveryTx, Durable, Relay};
use crate::metrics as m;
use crate::protocol::{
    ClientFrame, CloseCode, DecodeError, ErrorCode, FrameReader, HELLO_SKIP_MAX, HelloFrame,
    PROTOCOL_VERSION, REQUEST_VARIANTS, Request, Response, ServerFrame, WireError,
    decode_client_frame, encode_frame,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Depth of a connection's delivery command queue (joins, leaves, kicks). Commands are rare and
/// tiny; a queue this deep only fills when the connection stopped reading altogether, and then
/// the connection is closed as too slow (see `Relay::tell`).
const DELIVERY_QUEUE: usize = 256;

/// Serves one incoming connection to its end.
///
/// The future is the connection's task for as long as it lives, so it is kept small: the
/// handshake (the incoming packet, the hello read under its timeout, the token check) runs in a
/// boxed future of its own, freed when it ends, instead of sizing every session task for good
/// (~2.5 KiB per connection).
pub(crate) fn serve(
    relay: Arc<Relay>,
    incoming: quinn::Incoming,
    handshaking: Handshaking,
) -> impl Future<Output = ()> + Send + 'static {
    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
    let remote = incoming.remote_address();
    let span = tracing::info_span!("conn", %remote, user = tracing::field::Empty);
    // Counted as handshaking until the opening ends, welcomed or not.
    let opening = Box::pin(open(relay.clone(), incoming, handshaking));
    async move {
        let (reason, transport) = match run(&relay, opening).await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended");
                ("lost", TransportKind::Quic)
            }
        };
        closed_metric(reason, transport);
    }
    .instrument(span)
}

/// Counts a closed connection by reason and transport.
pub(crate) fn closed_metric(reason: &'static str, transport: TransportKind) {
    metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason, "transport" => transport.as_str())
        .increment(1);
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("handshake: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] Gone),
    #[error("WebTransport: {0}")]
    WebTransport(String),
}

/// A connection past its handshake, hello and token check, with its delivery stream open.
struct Opened {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    user: String,
    delivery: quinn::SendStream,
}

/// How the opening ended: a native session to serve, a WebTransport connection to hand over, or
/// a connection already over (refused) with its reason.
enum Opening {
    Open(Opened),
    WebTransport(quinn::Connection, Handshaking),
    Refused(&'static str),
}

async fn run(
    relay: &Arc<Relay>,
    opening: impl Future<Output = Result<Opening, SessionError>>,
) -> Result<(&'static str, TransportKind), SessionError> {
    let Opened {
        conn,
        send,
        reader,
        user,
        delivery,
    } = match opening.await? {
        Opening::Open(opened) => opened,
        Opening::WebTransport(conn, handshaking) => {
            // Boxed: inline, the WebTransport session's future would size every native session
            // task as well (it took each QUIC connection's task from 2.3 KiB to 8.7 KiB).
            let reason =
                Box::pin(super::webtransport::serve(relay.clone(), conn, handshaking)).await;
            return Ok((reason, TransportKind::WebTransport));
        }
        Opening::Refused(reason) => return Ok((reason, TransportKind::Quic)),
    };
    // Frames are read by their own task: a frame read is not cancel-safe, and the session's
    // loop must also wait for replies.
    let (frames_tx, frames) = flume::bounded(PIPELINE);
    let session = Session {
        transport: TransportKind::Quic,
        link: conn,
        replies: send,
        events: std::future::ready(Ok(delivery)),
        reader: read_frames(reader, frames_tx),
        frames,
        user,
    };
    serve_session(relay, session)
        .await
        .map(|reason| (reason, TransportKind::Quic))
}

/// A frame read from the control stream, as the session's loop receives it.
pub(crate) type FrameResult = Result<Option<ClientFrame>, DecodeError>;

/// The first frame of a control stream, as [`FrameReader::read_hello`] reads it.
pub(crate) type HelloResult = Result<Option<HelloFrame>, DecodeError>;

/// An authenticated connection on any transport, ready to be served.
pub(crate) struct Session<L, R, D, F> {
    pub transport: TransportKind,
    pub link: L,
    /// The control stream's write side.
    pub replies: R,
    /// Opens the delivery stream.
    pub events: D,
    /// Reads the control stream into `frames`; the session owns it.
    pub reader: F,
    pub frames: flume::Receiver<FrameResult>,
    pub user: String,
}

/// Serves an authenticated connection on any transport: registers it, opens its delivery
/// stream, writes the welcome, runs the delivery task and the request loop, and unregisters it
/// at the end. Returns how it ended.
pub(crate) async fn serve_session<L, R, E, D, F>(
    relay: &Arc<Relay>,
    session: Session<L, R, D, F>,
) -> Result<&'static str, SessionError>
where
    L: Link,
    R: ReplySink,
    E: EventSink,
    D: Future<Output = Result<E, SessionError>> + Send,
    F: Future<Output: Send + 'static> + Send + 'static,
{
    let Session {
        transport,
        link,
        mut replies,
        events,
        reader,
        frames,
        user,
    } = session;
    let (tx, rx, signal) = DeliveryTx::bounded(DELIVERY_QUEUE);
    let conn_id = relay.register_conn(ConnHandle {
        user: user.clone(),
        tx,
        conn: Arc::new(link.clone()),
        transport,
    });
    let result = async {
        let cfg = &relay.config;
        let stream = events.await?;
        // Frames are encoded before the write rather than inside its expression, so the frame
        // value (a temporary alive until the end of the statement) is not kept in this
        // long-lived future.
        let welcome = encode_frame(&ServerFrame::Welcome {
            user: user.clone(),
            conn_id,
            max_frame: cfg.limits.max_frame,
            max_event: cfg.max_event_frame(),
        });
        // The welcome is written before the delivery task writes `Ready` on its stream; QUIC
        // does not order streams against each other, so a client may still see the delivery
        // stream first (a WebSocket carries both in order).
        if let Err(e) = replies.write(welcome).await {
            return write_failed(&link, e);
        }
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(
            Delivery {
                conn: link.clone(),
                stream,
                transport,
                rx,
                signal,
                conn_id,
                batch_bytes: cfg.transport.delivery_batch_bytes,
                slow_close: Duration::from_millis(cfg.transport.slow_close_ms),
                window: Duration::from_micros(cfg.transport.delivery_window_us),
            }
            // No span on the delivery task: it is polled for every batch, and entering a span
            // per poll cost ~3% of server CPU in paced fan-out; it logs the connection id itself.
            .run(),
        );
        let mut reader_task = tokio::task::JoinSet::new();
        reader_task.spawn(reader);
        // Debug, not info: at thousands of connections a second one line each is its own load.
        tracing::debug!(conn_id, "connected");
        serve_registered(
            relay,
            &link,
            &mut replies,
            &mut tasks,
            &frames,
            &user,
            conn_id,
        )
        .await
    }
    .await;
    relay.unregister_conn(conn_id);
    result
}
/// The handshake, the control stream and the hello, the token check and the delivery stream, all
/// under one deadline (`transport.hello_timeout_ms`).
async fn open(
    relay: Arc<Relay>,
    incoming: quinn::Incoming,
    handshaking: Handshaking,
) -> Result<Opening, SessionError> {
    let cfg = &relay.config;
    let hello_timeout = Duration::from_millis(cfg.transport.hello_timeout_ms);
    let start = tokio::time::Instant::now();
    let deadline = start + hello_timeout;
    let handshake_deadline = start + Duration::from_millis(cfg.transport.handshake_timeout_ms);
    let max_frame = cfg.limits.max_frame;

    // Handshake, control stream and hello share one deadline.
    let conn_slot: std::sync::Mutex<Option<quinn::Connection>> = std::sync::Mutex::new(None);
    let opened = tokio::time::timeout_at(deadline, async {
        let conn = match tokio::time::timeout_at(handshake_deadline, incoming).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Ok(Err(Some(e))),
            // Dropping the unfinished handshake abandons it.
            Err(_) => return Ok(Err(None)),
        };
        *conn_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        if super::webtransport::is_h3(&conn) {
            return Ok(Ok(Handshake::WebTransport(conn)));
        }
        // A native client opens one control stream and nothing else (the handshake granted
        // what an HTTP/3 client needs; granted credit stays, but is never renewed).
        conn.set_max_concurrent_bi_streams(1u32.into());
        conn.set_max_concurrent_uni_streams(0u32.into());
        let (send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv, max_frame);
        let hello = reader.read_hello(HELLO_SKIP_MAX).await;
        Ok::<_, quinn::ConnectionError>(Ok(Handshake::Native(conn, send, reader, hello)))
    })
    .await;
    let opened = match opened {
        Ok(Ok(Ok(opened))) => opened,
        Ok(Ok(Err(Some(e)))) => {
            tracing::debug!(error = %e, "handshake failed");
            return Ok(Opening::Refused("handshake_failed"));
        }
        Ok(Ok(Err(None))) => return Ok(Opening::Refused("handshake_timeout")),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            let Some(conn) = conn_slot.lock().unwrap_or_else(|p| p.into_inner()).take() else {
                // Dropping the unfinished handshake abandons it.
                return Ok(Opening::Refused("handshake_timeout"));
            };
            protocol_close(&conn, &hello_timeout_reason(hello_timeout));
            return Ok(Opening::Refused("hello_timeout"));
        }
    };
    let (conn, mut send, reader, hello) = match opened {
        Handshake::Native(conn, send, reader, hello) => (conn, send, reader, hello),
        // The WebTransport session counts as handshaking until its own hello is checked.
        Handshake::WebTransport(conn) => return Ok(Opening::WebTransport(conn, handshaking)),
    };

    let user = match check_hello(&relay, hello) {
        Ok(user) => user,
        Err(refusal) => {
            return Ok(Opening::Refused(
                refuse_hello(&conn, &mut send, refusal).await,
            ));
        }
    };
    // The delivery stream is opened (which sends nothing yet) before the welcome, so a client
    // that grants the server no unidirectional stream is refused instead of welcomed and then
    // left waiting; quinn's open waits for the client's stream credit, under the same deadline.
    let delivery = match tokio::time::timeout_at(deadline, conn.open_uni()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => {
            protocol_close(
                &conn,
                "the client must allow the server one unidirectional stream (the delivery stream)",
            );
            return Ok(Opening::Refused("protocol"));
        }
    };
    tracing::Span::current().record("user", user.as_str());
    Ok(Opening::Open(Opened {
        conn,
        send,
        reader,
        user,
        delivery,
    }))
}

/// A QUIC connection past its handshake: a native one with its control stream and hello, or a
/// WebTransport one (ALPN `h3`).
enum Handshake {
    Native(
        quinn::Connection,
        quinn::SendStream,
        FrameReader<quinn::RecvStream>,
        HelloResult,
    ),
    WebTransport(quinn::Connection),
}

/// Why a hello was not accepted.
pub(crate) enum Refusal {
    /// Answer with `Refused(code, message)`, then close with `close`; `reason` is the metrics
    /// label.
    Refuse {
        code: ErrorCode,
        message: String,
        close: CloseCode,
        reason: &'static str,
    },
    /// Close with [`CloseCode::Protocol`] and this reason.
    Close(String),
}

/// Checks the first frame of a control stream: a hello of our version with a valid token.
/// Returns the authenticated user.
pub(crate) fn check_hello(relay: &Relay, hello: HelloResult) -> Result<String, Refusal> {
    let token = match hello {
        Ok(Some(HelloFrame::Frame(ClientFrame::Hello { version, token })))
            if version == PROTOCOL_VERSION =>
        {
            token
        }
        // A token too long to read: refused like any bad token (the version does not matter).
        Ok(Some(HelloFrame::Oversized { token_len })) => {
            return Err(unauthorized(crate::auth::token_too_long(token_len)));
        }
        Ok(Some(HelloFrame::Frame(ClientFrame::Hello { version, .. }))) => {
            return Err(Refusal::Refuse {
                code: ErrorCode::BadRequest,
                message: format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                ),
                close: CloseCode::Protocol,
                reason: "protocol",
            });
        }
        Ok(Some(HelloFrame::Frame(_))) | Err(DecodeError::UnknownRequest { .. }) => {
            return Err(Refusal::Close("the first frame must be a hello".into()));
        }
        Ok(None) => {
            return Err(Refusal::Close(
                "control stream ended before the hello".into(),
            ));
        }
        Err(e) => return Err(Refusal::Close(format!("bad hello: {e}"))),
    };
    relay.auth.verify(&token).map_err(unauthorized)
}

/// A token refusal: counted, logged (without the token) and answered `UNAUTHORIZED`.
fn unauthorized(e: WireError) -> Refusal {
    metrics::counter!(m::AUTH_FAILURES).increment(1);
    tracing::info!(reason = %e.message, "token refused");
    Refusal::Refuse {
        code: ErrorCode::Unauthorized,
        message: e.message,
        close: CloseCode::Unauthorized,
        reason: "unauthorized",
    }
}

/// Answers a refused hello on any transport: the `Refused` frame then the close, or only the
/// close; returns the metrics reason.
pub(crate) async fn refuse_hello<L: Closer, R: ReplySink>(
    link: &L,
    replies: &mut R,
    refusal: Refusal,
) -> &'static str {
    match refusal {
        Refusal::Refuse {
            code,
            message,
            close,
            reason,
        } => {
            let frame = encode_frame(&ServerFrame::Refused(WireError::new(code, &message)));
            if replies.write(frame).await.is_ok() {
                let _ = tokio::time::timeout(REFUSAL_WAIT, replies.finish()).await;
            }
            link.close(close, &message);
            reason
        }
        Refusal::Close(why) => {
            protocol_close(link, &why);
            "protocol"
        }
    }
}

/// The close reason of a hello that did not come in time.
pub(crate) fn hello_timeout_reason(timeout: Duration) -> String {
    format!(
        "no hello within the hello timeout ({} ms)",
        timeout.as_millis()
    )
}

/// Requests whose replies may be outstanding at once on one connection. Replies still go out in
/// request order; pipelining lets a client keep sending while earlier sends wait for the store.
pub(crate) const PIPELINE: usize = 64;

type ReplyFuture = Pin<Box<dyn Future<Output = (u32, Result<Response, WireError>)> + Send>>;

async fn serve_registered<L: Link, R: ReplySink>(
    relay: &Arc<Relay>,
    conn: &L,
    send: &mut R,
    tasks: &mut tokio::task::JoinSet<()>,
    frames: &flume::Receiver<FrameResult>,
    user: &str,
    conn_id: u64,
) -> Result<&'static str, SessionError> {
    let cfg = &relay.config;
    let limits = &cfg.limits;
    let mut bucket = crate::policy::TokenBucket::new(
        limits.send_rate_per_sec,
        limits.send_burst,
        super::relay::now_ms(),
    );
    let mut replies: FuturesOrdered<ReplyFuture> = FuturesOrdered::new();
    loop {
        tokio::select! {
            biased;
            // The delivery task ends early when the connection is gone, or when its stream was
            // stopped by the client (STOP_SENDING), which breaks the protocol.
            _ = tasks.join_next() => {
                if conn.is_closed() {
                    return Ok(conn.closed_reason());
                }
                protocol_close(conn, "the client stopped the delivery stream (STOP_SENDING)");
                return Ok("protocol");
            }
            Some((id, result)) = replies.next(), if !replies.is_empty() => {
                if let Err(e) = &result {
                    metrics::counter!(m::REQUEST_ERRORS, "error" => e.code.as_str()).increment(1);
                }
                let reply = encode_frame(&ServerFrame::Reply { id, result });
                if let Err(e) = send.write(reply).await {
                    return write_failed(conn, e);
                }
            }
            frame = frames.recv_async(), if replies.len() < PIPELINE => {
                let (id, request) = match frame {
                    Ok(Ok(Some(ClientFrame::Request { id, request }))) => (id, request),
                    Ok(Ok(Some(ClientFrame::Hello { .. }))) => {
                        protocol_close(conn, "hello sent twice");
                        return Ok("protocol");
                    }
                    Ok(Ok(None)) | Err(_) => {
                        // The client is done: answer what it asked, finish the stream, and close
                        // once the client has acknowledged every reply (closing at once would
                        // discard replies still unsent or unacknowledged), within slow_close_ms.
                        let drain = async {
                            while let Some((id, result)) = replies.next().await {
                                let reply = encode_frame(&ServerFrame::Reply { id, result });
                                send.write(reply).await?;
                            }
                            send.finish().await;
                            Ok::<_, Gone>(())
                        };
                        let slow = Duration::from_millis(cfg.transport.slow_close_ms);
                        if let Ok(Err(e)) = tokio::time::timeout(slow, drain).await {
                            return write_failed(conn, e);
                        }
                        conn.close(CloseCode::Normal, "control stream finished");
                        return Ok("normal");
                    }
                    Ok(Err(DecodeError::UnknownRequest { id, variant })) => {
                        // A newer client probing for a feature: refuse the request, keep going.
                        let e = WireError::new(
                            ErrorCode::BadRequest,
                            format!(
                                "unknown request variant {variant}: this server knows variants 0 to {} of protocol {PROTOCOL_VERSION}",
                                REQUEST_VARIANTS - 1
                            ),
                        );
                        replies.push_back(Box::pin(std::future::ready((id, Err(e)))));
                        continue;
                    }
                    Ok(Err(DecodeError::Io(e))) => {
                        tracing::debug!(error = %e, "control stream failed");
                        if conn.is_closed() {
                            return Ok(conn.closed_reason());
                        }
                        // The connection lives, so the client reset the stream (RESET_STREAM).
                        protocol_close(conn, "the client reset its control stream (RESET_STREAM)");
                        return Ok("protocol");
                    }
                    Ok(Err(e)) => {
                        tracing::info!(error = %e, "protocol error");
                        protocol_close(conn, &e.to_string());
                        return Ok("protocol");
                    }
                };
                let reply: ReplyFuture = if matches!(request, Request::Send { .. })
                    && !bucket.try_take(super::relay::now_ms())
                {
                    let e = WireError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "more than {} messages a second (burst {}) from this connection",
                            limits.send_rate_per_sec, limits.send_burst
                        ),
                    );
                    Box::pin(std::future::ready((id, Err(e))))
                } else {
                    let pending = handle(relay, user, conn_id, request);
                    Box::pin(async move { (id, pending.await) })
                };
                replies.push_back(reply);
            }
        }
    }
}

/// Reads frames until the stream ends or fails, then hands the stream back: dropping it here
/// would tell the client to stop sending (STOP_SENDING) before the session has closed the
/// connection with its reason, so the client could see its write refused without the reason.
pub(crate) async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    mut reader: FrameReader<S>,
    out: flume::Sender<FrameResult>,
) -> FrameReader<S> {
    loop {
        let frame = reader.read_with(decode_client_frame).await;
        let last = !matches!(frame, Ok(Some(_)) | Err(DecodeError::UnknownRequest { .. }));
        if out.send_async(frame).await.is_err() || last {
            return reader;
        }
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Response, WireError>> + Send>>;

fn ready(r: Result<Response, WireError>) -> Pending {
    Box::pin(std::future::ready(r))
}

fn durable<T: Send + 'static>(
    d: Result<Durable<T>, WireError>,
    f: impl FnOnce(T) -> Response + Send + 'static,
) -> Pending {
    match d {
        Ok(d) => Box::pin(async move { d.wait().await.map(f) }),
        Err(e) => ready(Err(e)),
    }
}

/// Starts a request's work now (joins, leaves and sends take effect in request order) and returns
/// what to wait for before replying: a change the store keeps is made visible only once durable.
fn handle(relay: &Arc<Relay>, user: &str, conn_id: u64, request: Request) -> Pending {
    match request {
        Request::Join { room, history } => {
            durable(relay.join(conn_id, user, &room, history), Response::Joined)
        }
        Request::Leave { room } => durable(relay.leave(conn_id, user, &room), |_| Response::Left),
        Request::Send {
            room,
            msg_type,
            body,
            low,
        } => durable(relay.send(user, &room, msg_type, body, low), |(seq, ts)| {
            Response::Sent { seq, ts }
        }),
        Request::RoomInfo { room } => ready(
            relay
                .room_info(&room, relay.config.limits.room_info_members)
                .map(Response::Info),
        ),
        Request::Ping => ready(Ok(Response::Pong)),
        Request::SetAttributes {
            room,
            entries,
            auto_delete,
            force,
        } => durable(
            relay.set_attributes(Actor::Client(user), &room, &entries, auto_delete, force),
            |(version, results)| Response::AttributeResults { version, results },
        ),
        Request::DeleteAttributes { room, keys, force } => durable(
            relay.delete_attributes(Actor::Client(user), &room, &keys, force),
            |(version, results)| Response::AttributeResults { version, results },
        ),
        Request::GetAttributes { room, keys } => ready(
            relay
                .get_attributes(Some(Actor::Client(user)), &room, &keys)
                .map(|(version, attributes)| Response::Attributes {
                    version,
                    attributes,
                }),
        ),
        Request::Recall { room, seq } => {
            durable(relay.recall(Some(user), &room, seq), |_| Response::Recalled)
        }
        Request::Resume {
            room,
            epoch,
            last_seq,
        } => ready(
            relay
                .resume(conn_id, user, &room, epoch, last_seq)
                .inspect_err(|_| {
                    metrics::counter!(crate::metrics::RESUMES, "outcome" => "refused").increment(1)
                })
                .map(Response::Joined),
        ),
        Request::History {
            room,
            before_seq,
            limit,
        } => {
            let member = relay.room(&room).map(|r| relay.is_member(&r, user));
            match member {
                Ok(true) => ready(
                    relay
                        .history(
                            &room,
                            (before_seq > 0).then_some(before_seq),
                            limit as usize,
                        )
                        .map(Response::History),
                ),
                Ok(false) => ready(Err(WireError::new(
                    ErrorCode::NotInRoom,
                    format!("join room {room:?} before reading its history"),
                ))),
                Err(e) => ready(Err(e)),
            }
        }
    }
}

/// A failed write on the control stream: a client that stopped the stream (STOP_SENDING) broke
/// the protocol and is closed with a reason; any other failure means the connection is gone.
fn write_failed<L: Link>(conn: &L, e: Gone) -> Result<&'static str, SessionError> {
    if e.stopped {
        protocol_close(
            conn,
            "the client stopped reading its control stream (STOP_SENDING)",
        );
        return Ok("protocol");
    }
    Err(e.into())
}

pub(crate) fn protocol_close(conn: &impl Closer, why: &str) {
    conn.close(CloseCode::Protocol, why);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A native session's future, as `serve` runs it once the opening is done.
    fn session(relay: &Arc<Relay>) -> impl Future + '_ {
        run(
            relay,
            std::future::pending::<Result<Opening, SessionError>>(),
        )
    }

    /// The size of the future `make` returns, without calling it.
    fn future_size<F: Future>(_make: impl FnOnce(&'static Arc<Relay>) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection's task holds this future for as long as the connection lives, so its size
    /// is memory per connection: the WebTransport session (a much larger future) must stay boxed
    /// out of it. Inline, it made the future four times larger.
    #[test]
    fn a_native_session_task_stays_small() {
        let size = future_size(session);
        assert!(
            size <= RUN_FUTURE_MAX,
            "a session's future takes {size} bytes (at most {RUN_FUTURE_MAX})"
        );
    }

    /// The bound of [`a_native_session_task_stays_small`]: the future takes 2056 bytes in a debug
    /// build, 8488 with the WebTransport session inline.
    const RUN_FUTURE_MAX: usize = 4096;
}
