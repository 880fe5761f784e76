//! The admin listener: HTTP/1.1 connections served with hyper's connection builder, with the
//! timeouts and the connection cap that `axum::serve` lacks.
//!
//! - **Header timeout** (`admin.header_timeout_ms`): a connection must deliver a complete request
//!   head within this long of its opening or of the end of its previous response, or it is closed.
//!   So it is also the keep-alive idle timeout, and a slowloris client that trickles its headers is
//!   closed when it runs out.
//! - **Body timeout** (`admin.body_timeout_ms`): a request body must have arrived within this long
//!   of its head, or the request is answered `408` (`BAD_REQUEST`) and the connection closed; the
//!   handler never runs, so nothing of it takes effect.
//! - **Connection cap** (`admin.max_connections`): past it a new connection is answered at once
//!   with `429` (`RATE_LIMITED`) and closed, so a crowd of idle connections cannot take every
//!   file descriptor of the process.

use super::ApiErrorBody;
use crate::metrics as m;
use crate::protocol::ErrorCode;
use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The admin listener's limits.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A complete request head must arrive within this of the connection's start or the end of
    /// its previous response.
    pub header_timeout: Duration,
    /// A request body must arrive within this of its head.
    pub body_timeout: Duration,
    /// Connections open at once; past it new ones are refused at once.
    pub max_connections: usize,
}

impl ServeLimits {
    /// The limits of `config`'s `[admin]` section.
    pub fn of(config: &crate::config::Config) -> Self {
        let a = &config.admin;
        ServeLimits {
            header_timeout: Duration::from_millis(a.header_timeout_ms),
            body_timeout: Duration::from_millis(a.body_timeout_ms),
            max_connections: a.max_connections,
        }
    }
}

/// Pause after a failed accept (e.g. no file descriptor left), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest a stopping listener waits for its connections to finish their requests.
const DRAIN: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish
/// (for up to 2 s) and returns. Every connection is a task owned here.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let router = with_body_deadline(router, limits.body_timeout);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            // Reaped before accepting more, so a stream of connections cannot pile up finished
            // tasks in the set.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        refuse(&stream, limits.max_connections);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let router = router.clone();
                    let stop = stop_rx.clone();
                    conns.spawn(async move {
                        metrics::gauge!(m::ADMIN_CONNECTIONS).increment(1.0);
                        serve_connection(stream, router, limits.header_timeout, stop).await;
                        metrics::gauge!(m::ADMIN_CONNECTIONS).decrement(1.0);
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener could not accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        conns.shutdown().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: Router,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    // The guard `wait_for` returns is not `Send`: drop it inside the future.
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        // Timeouts and peers that went away: routine on a public port.
        tracing::debug!(error = %e, "admin connection ended");
    }
}

/// Answers a connection past the cap with `429` and closes it; a try, never a wait: a peer
/// whose socket cannot take the answer at once gets the close alone.
fn refuse(stream: &tokio::net::TcpStream, max: usize) {
    metrics::counter!(m::ADMIN_CONNECTIONS_REFUSED).increment(1);
    let body = serde_json::json!({
        "error": ErrorCode::RateLimited,
        "message": format!(
            "the admin listener has its maximum of {max} connections open (admin.max_connections); retry later"
        ),
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

/// Wraps every request body in a [`Deadline`]; a request whose body missed it is answered `408`
/// with the JSON error body and `connection: close`.
fn with_body_deadline(router: Router, timeout: Duration) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: axum::middleware::Next| async move {
            let missed = Arc::new(AtomicBool::new(false));
            let flag = missed.clone();
            let req = req.map(|body| Body::new(Deadline::new(body, timeout, flag)));
            let resp = next.run(req).await;
            if !missed.load(Ordering::Relaxed) {
                return resp;
            }
            let message = format!(
                "the request body did not arrive within {} ms (admin.body_timeout_ms)",
                timeout.as_millis()
            );
            let mut resp = (
                StatusCode::REQUEST_TIMEOUT,
                axum::Json(ApiErrorBody {
                    error: ErrorCode::BadRequest,
                    message,
                }),
            )
                .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        },
    ))
}

/// A request body that fails once its deadline passes, and says so through `missed`.
struct Deadline {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
    missed: Arc<AtomicBool>,
}

impl Deadline {
    fn new(inner: Body, timeout: Duration, missed: Arc<AtomicBool>) -> Self {
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            missed,
        }
    }
}

/// The error a body that missed its deadline ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.missed.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
