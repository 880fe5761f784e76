//! One client connection: handshake, hello and token check, the request loop on the control stream,
//! and the delivery task it owns.

use super::data::Actor;
use super::delivery::Delivery;
use super::relay::{ConnHandle, DeliveryCmd, DeliveryTx, Durable, Relay};
use crate::metrics as m;
use crate::protocol::{
    ClientFrame, CloseCode, DecodeError, ErrorCode, FrameReader, PROTOCOL_VERSION, Request,
    Response, ServerFrame, WireError, encode_frame,
};
use crate::room::Signal;
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
) -> impl Future<Output = ()> + Send + 'static {
    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
    let remote = incoming.remote_address();
    let span = tracing::info_span!("conn", %remote, user = tracing::field::Empty);
    let opening = Box::pin(open(relay.clone(), incoming));
    async move {
        let reason = match run(&relay, opening).await {
            Ok(reason) => reason,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended");
                "lost"
            }
        };
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    }
    .instrument(span)
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("handshake: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("timed out waiting for the hello")]
    HelloTimeout,
}

/// A connection past its handshake, hello and token check.
struct Opened {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    user: String,
}

/// How the opening ended: a session to serve, or a refusal already sent (with its reason).
enum Opening {
    Open(Opened),
    Refused(&'static str),
}

async fn run(
    relay: &Arc<Relay>,
    opening: impl Future<Output = Result<Opening, SessionError>>,
) -> Result<&'static str, SessionError> {
    let Opened {
        conn,
        send,
        reader,
        user,
    } = match opening.await? {
        Opening::Open(opened) => opened,
        Opening::Refused(reason) => return Ok(reason),
    };
    let (tx, rx, signal) = DeliveryTx::bounded(DELIVERY_QUEUE);
    let conn_id = relay.register_conn(ConnHandle {
        user: user.clone(),
        tx,
        conn: conn.clone(),
    });
    let queue = (rx, signal);
    let result = serve_registered(relay, &conn, send, reader, &user, conn_id, queue).await;
    relay.unregister_conn(conn_id);
    result
}

/// The handshake, the control stream and the hello (under one deadline), and the token check.
async fn open(relay: Arc<Relay>, incoming: quinn::Incoming) -> Result<Opening, SessionError> {
    let cfg = &relay.config;
    let hello_timeout = Duration::from_millis(cfg.transport.hello_timeout_ms);
    let max_frame = cfg.limits.max_frame;

    // Handshake, control stream and hello share one deadline.
    let conn_slot: std::sync::Mutex<Option<quinn::Connection>> = std::sync::Mutex::new(None);
    let opened = tokio::time::timeout(hello_timeout, async {
        let conn = incoming.await?;
        *conn_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        let (send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv, max_frame);
        let hello = reader.read::<ClientFrame>().await;
        Ok::<_, quinn::ConnectionError>((conn, send, reader, hello))
    })
    .await;
    let opened = match opened {
        Ok(r) => r?,
        Err(_) => {
            if let Some(conn) = conn_slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
                protocol_close(&conn, "no hello within the hello timeout");
            }
            return Err(SessionError::HelloTimeout);
        }
    };
    let (conn, mut send, reader, hello) = opened;

    let token = match hello {
        Ok(Some(ClientFrame::Hello { version, token })) if version == PROTOCOL_VERSION => token,
        Ok(Some(ClientFrame::Hello { version, .. })) => {
            let msg = format!(
                "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
            );
            refuse(
                &conn,
                &mut send,
                ErrorCode::BadRequest,
                &msg,
                CloseCode::Protocol,
            )
            .await;
            return Ok(Opening::Refused("protocol"));
        }
        Ok(Some(_)) => {
            protocol_close(&conn, "the first frame must be a hello");
            return Ok(Opening::Refused("protocol"));
        }
        Ok(None) => {
            protocol_close(&conn, "control stream ended before the hello");
            return Ok(Opening::Refused("protocol"));
        }
        Err(e) => {
            protocol_close(&conn, &format!("bad hello: {e}"));
            return Ok(Opening::Refused("protocol"));
        }
    };
    let user = match relay.auth.verify(&token) {
        Ok(user) => user,
        Err(e) => {
            metrics::counter!(m::AUTH_FAILURES).increment(1);
            tracing::info!(reason = %e.message, "token refused");
            refuse(
                &conn,
                &mut send,
                ErrorCode::Unauthorized,
                &e.message,
                CloseCode::Unauthorized,
            )
            .await;
            return Ok(Opening::Refused("unauthorized"));
        }
    };
    tracing::Span::current().record("user", user.as_str());
    Ok(Opening::Open(Opened {
        conn,
        send,
        reader,
        user,
    }))
}

/// Requests whose replies may be outstanding at once on one connection. Replies still go out in
/// request order; pipelining lets a client keep sending while earlier sends wait for the store.
const PIPELINE: usize = 64;

type ReplyFuture = Pin<Box<dyn Future<Output = (u32, Result<Response, WireError>)> + Send>>;

async fn serve_registered(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    user: &str,
    conn_id: u64,
    (rx, signal): (flume::Receiver<DeliveryCmd>, Arc<Signal>),
) -> Result<&'static str, SessionError> {
    let cfg = &relay.config;
    let stream = conn.open_uni().await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        Delivery {
            conn: conn.clone(),
            stream,
            rx,
            signal,
            conn_id,
            batch_bytes: cfg.transport.delivery_batch_bytes,
            slow_close: Duration::from_millis(cfg.transport.slow_close_ms),
            window: Duration::from_micros(cfg.transport.delivery_window_us),
        }
        // No span on the delivery task: it is polled for every batch, and entering a span per
        // poll cost ~3% of server CPU in paced fan-out; it logs the connection id itself.
        .run(),
    );
    // Frames are read by their own task: a frame read is not cancel-safe, and the loop below
    // must also wait for replies.
    let (frames_tx, frames) = flume::bounded(PIPELINE);
    let mut reader_task = tokio::task::JoinSet::new();
    reader_task.spawn(read_frames(reader, frames_tx));
    // Frames are encoded before the write rather than inside its expression, so the frame value
    // (a temporary alive until the end of the statement) is not kept in this long-lived future.
    let welcome = encode_frame(&ServerFrame::Welcome {
        user: user.to_owned(),
        conn_id,
        max_frame: cfg.limits.max_frame,
        max_event: cfg.max_event_frame(),
    });
    send.write_all(&welcome).await?;
    // Debug, not info: at thousands of connections a second one line each is its own load.
    tracing::debug!(conn_id, "connected");

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
            // The delivery task only ends early when the connection is gone.
            _ = tasks.join_next() => return Ok(closed_reason(conn)),
            Some((id, result)) = replies.next(), if !replies.is_empty() => {
                if let Err(e) = &result {
                    metrics::counter!(m::REQUEST_ERRORS, "error" => e.code.as_str()).increment(1);
                }
                let reply = encode_frame(&ServerFrame::Reply { id, result });
                send.write_all(&reply).await?;
            }
            frame = frames.recv_async(), if replies.len() < PIPELINE => {
                let (id, request) = match frame {
                    Ok(Ok(Some(ClientFrame::Request { id, request }))) => (id, request),
                    Ok(Ok(Some(ClientFrame::Hello { .. }))) => {
                        protocol_close(conn, "hello sent twice");
                        return Ok("protocol");
                    }
                    Ok(Ok(None)) | Err(_) => {
                        // Finish the outstanding replies, then close.
                        while let Some((id, result)) = replies.next().await {
                            let reply = encode_frame(&ServerFrame::Reply { id, result });
                            send.write_all(&reply).await?;
                        }
                        conn.close(CloseCode::Normal.into(), b"control stream finished");
                        return Ok("normal");
                    }
                    Ok(Err(DecodeError::Io(e))) => {
                        tracing::debug!(error = %e, "control stream failed");
                        return Ok(closed_reason(conn));
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
async fn read_frames(
    mut reader: FrameReader<quinn::RecvStream>,
    out: flume::Sender<Result<Option<ClientFrame>, DecodeError>>,
) -> FrameReader<quinn::RecvStream> {
    loop {
        let frame = reader.read::<ClientFrame>().await;
        let last = !matches!(frame, Ok(Some(_)));
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
        Request::History {
            room,
            before_seq,
            limit,
        } => {
            let member = relay.room(&room).map(|r| r.state().member(user).is_some());
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

/// Sends a refusal on the control stream, waits briefly for it to arrive, then closes.
async fn refuse(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    code: ErrorCode,
    message: &str,
    close: CloseCode,
) {
    let frame = encode_frame(&ServerFrame::Refused(WireError::new(code, message)));
    if send.write_all(&frame).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
    }
    conn.close(close.into(), message.as_bytes());
}

fn protocol_close(conn: &quinn::Connection, why: &str) {
    conn.close(CloseCode::Protocol.into(), why.as_bytes());
}

fn closed_reason(conn: &quinn::Connection) -> &'static str {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(CloseCode::Normal.code()) =>
        {
            "normal"
        }
        Some(quinn::ConnectionError::LocallyClosed) => "shutdown",
        _ => "lost",
    }
}
