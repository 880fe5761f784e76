//! One client connection: handshake, hello and token check, the request loop on the control stream,
//! and the delivery task it owns.

use super::delivery::Delivery;
use super::relay::{ConnHandle, DeliveryCmd, Relay};
use crate::metrics as m;
use crate::protocol::{
    ClientFrame, CloseCode, DecodeError, ErrorCode, FrameReader, PROTOCOL_VERSION, Request,
    Response, ServerFrame, WireError, encode_frame,
};
use crate::room::Signal;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Depth of a connection's delivery command queue (joins, leaves, kicks). Commands are rare and
/// tiny; a queue this deep only fills when the connection stopped reading altogether, and then
/// the connection is closed as too slow (see `Relay::tell`).
const DELIVERY_QUEUE: usize = 256;

/// Serves one incoming connection to its end.
pub(crate) async fn serve(relay: Arc<Relay>, incoming: quinn::Incoming) {
    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
    let remote = incoming.remote_address();
    let span = tracing::info_span!("conn", %remote, user = tracing::field::Empty);
    async move {
        let reason = match run(&relay, incoming).await {
            Ok(reason) => reason,
            Err(e) => {
                tracing::debug!(error = %e, "connection ended");
                "lost"
            }
        };
        metrics::counter!(m::CONNECTIONS_CLOSED, "reason" => reason).increment(1);
    }
    .instrument(span)
    .await
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

async fn run(relay: &Arc<Relay>, incoming: quinn::Incoming) -> Result<&'static str, SessionError> {
    let cfg = &relay.config;
    let hello_timeout = Duration::from_millis(cfg.transport.hello_timeout_ms);
    let max_frame = cfg.limits.max_frame;

    // Handshake, control stream and hello share one deadline.
    let opened = tokio::time::timeout(hello_timeout, async {
        let conn = incoming.await?;
        let (send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv, max_frame);
        let hello = reader.read::<ClientFrame>().await;
        Ok::<_, quinn::ConnectionError>((conn, send, reader, hello))
    })
    .await
    .map_err(|_| SessionError::HelloTimeout)??;
    let (conn, mut send, mut reader, hello) = opened;

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
            return Ok("protocol");
        }
        Ok(Some(_)) => {
            protocol_close(&conn, "the first frame must be a hello");
            return Ok("protocol");
        }
        Ok(None) => {
            protocol_close(&conn, "control stream ended before the hello");
            return Ok("protocol");
        }
        Err(e) => {
            protocol_close(&conn, &format!("bad hello: {e}"));
            return Ok("protocol");
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
            return Ok("unauthorized");
        }
    };
    tracing::Span::current().record("user", user.as_str());

    let (tx, rx) = flume::bounded(DELIVERY_QUEUE);
    let conn_id = relay.register_conn(ConnHandle {
        user: user.clone(),
        tx: tx.clone(),
        conn: conn.clone(),
    });
    let result = serve_registered(relay, &conn, send, &mut reader, &user, conn_id, tx, rx).await;
    relay.unregister_conn(conn_id);
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve_registered(
    relay: &Arc<Relay>,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    reader: &mut FrameReader<quinn::RecvStream>,
    user: &str,
    conn_id: u64,
    tx: flume::Sender<DeliveryCmd>,
    rx: flume::Receiver<DeliveryCmd>,
) -> Result<&'static str, SessionError> {
    let cfg = &relay.config;
    let stream = conn.open_uni().await?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(
        Delivery {
            conn: conn.clone(),
            stream,
            rx,
            signal: Arc::new(Signal::default()),
            conn_id,
            batch_bytes: cfg.transport.delivery_batch_bytes,
        }
        .run()
        .in_current_span(),
    );
    send.write_all(&encode_frame(&ServerFrame::Welcome {
        user: user.to_owned(),
        conn_id,
        max_frame: cfg.limits.max_frame,
    }))
    .await?;
    tracing::info!(conn_id, "connected");

    let limits = &cfg.limits;
    let mut bucket = crate::policy::TokenBucket::new(
        limits.send_rate_per_sec,
        limits.send_burst,
        super::relay::now_ms(),
    );
    loop {
        let frame = tokio::select! {
            biased;
            // The delivery task only ends early when the connection is gone.
            _ = tasks.join_next() => return Ok("lost"),
            f = reader.read::<ClientFrame>() => f,
        };
        let (id, request) = match frame {
            Ok(Some(ClientFrame::Request { id, request })) => (id, request),
            Ok(Some(ClientFrame::Hello { .. })) => {
                protocol_close(conn, "hello sent twice");
                return Ok("protocol");
            }
            Ok(None) => {
                conn.close(CloseCode::Normal.into(), b"control stream finished");
                return Ok("normal");
            }
            Err(DecodeError::Io(e)) => {
                tracing::debug!(error = %e, "control stream failed");
                return Ok(closed_reason(conn));
            }
            Err(e) => {
                tracing::info!(error = %e, "protocol error");
                protocol_close(conn, &e.to_string());
                return Ok("protocol");
            }
        };
        let result = if matches!(request, Request::Send { .. })
            && !bucket.try_take(super::relay::now_ms())
        {
            Err(WireError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages a second (burst {}) from this connection",
                    limits.send_rate_per_sec, limits.send_burst
                ),
            ))
        } else {
            handle(relay, user, conn_id, &tx, request).await
        };
        if let Err(e) = &result {
            metrics::counter!(m::REQUEST_ERRORS, "error" => e.code.as_str()).increment(1);
        }
        send.write_all(&encode_frame(&ServerFrame::Reply { id, result }))
            .await?;
    }
}

async fn handle(
    relay: &Relay,
    user: &str,
    conn_id: u64,
    tx: &flume::Sender<DeliveryCmd>,
    request: Request,
) -> Result<Response, WireError> {
    match request {
        Request::Join { room, history } => {
            let (info, sub) = relay.join(conn_id, user, &room, history)?;
            if let Some((room, at)) = sub {
                // Our own delivery task; it only stops when the connection is gone.
                let _ = tx.send_async(DeliveryCmd::Subscribe { room, at }).await;
            }
            Ok(Response::Joined(info))
        }
        Request::Leave { room } => {
            relay.leave(conn_id, user, &room)?;
            Ok(Response::Left)
        }
        Request::Send {
            room,
            msg_type,
            body,
            low,
        } => {
            let (seq, ts) = relay.send(user, &room, msg_type, body, low)?;
            Ok(Response::Sent { seq, ts })
        }
        Request::RoomInfo { room } => Ok(Response::Info(
            relay.room_info(&room, relay.config.limits.room_info_members)?,
        )),
        Request::Ping => Ok(Response::Pong),
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
