//! The public web listener: the WebSocket transport (`/ws`), the JavaScript SDK
//! (`/roomcast.js`, `/roomcast.d.ts`), the demo page (`/`, `/demo.js`) and what a page needs to
//! reach the relay over WebTransport (`/roomcast.json`: the QUIC port and the hash of the
//! development certificate). Nothing of the admin API is served here.
//!
//! One TCP port serves HTTPS to everyone and plain HTTP to the peers `web.plain_http` allows
//! (loopback by default): the first byte of a connection tells a TLS ClientHello (`0x16`) from
//! an HTTP request. A peer that may not use plain HTTP gets a short `400` telling it to use
//! HTTPS. Every connection must send its request (or its TLS handshake) within
//! `transport.hello_timeout_ms`, and at most `web.max_connections` are open at once.

use super::relay::Relay;
use super::ws;
use crate::config::PlainHttp;
use crate::tls::Certs;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The SDK, the demo and their declarations, embedded in the binary.
const ROOMCAST_JS: &str = include_str!("../web/roomcast.js");
const ROOMCAST_DTS: &str = include_str!("../web/roomcast.d.ts");
const INDEX_HTML: &str = include_str!("../web/index.html");
const DEMO_JS: &str = include_str!("../web/demo.js");

/// The path of the WebTransport session on the QUIC port.
pub(crate) const WEBTRANSPORT_PATH: &str = "/roomcast";

/// What every request handler needs.
pub(crate) struct Web {
    pub relay: Arc<Relay>,
    pub certs: Arc<Certs>,
    /// The bound QUIC port, for the WebTransport URL.
    pub quic_port: u16,
}

type Body = Full<Bytes>;

/// Serves the public listener until `stop` turns true; every connection task it spawns is
/// owned here and ended before it returns.
pub(crate) async fn run(
    web: Arc<Web>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let limit = Arc::new(tokio::sync::Semaphore::new(
        web.relay.config.web.max_connections,
    ));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: keep serving the others.
                        tracing::warn!(error = %e, "public listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "public listener full; connection refused");
                    drop(stream);
                    continue;
                };
                let web = web.clone();
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    connection(web, acceptor, stream, peer).await;
                    drop(permit);
                });
            }
        }
    }
    // WebSocket sessions were closed with the relay's close_all; what is still open (an HTTP
    // request in flight, a TLS handshake) gets the grace period.
    let grace = Duration::from_millis(web.relay.config.transport.shutdown_grace_ms);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drain).await.is_err() {
        conns.shutdown().await;
    }
}

/// Whether `peer` may speak plain HTTP under `policy`.
pub(crate) fn plain_allowed(policy: PlainHttp, peer: SocketAddr) -> bool {
    match policy {
        PlainHttp::Any => true,
        PlainHttp::Never => false,
        PlainHttp::Loopback => match peer.ip() {
            std::net::IpAddr::V4(ip) => ip.is_loopback(),
            std::net::IpAddr::V6(ip) => {
                ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        },
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE: u8 = 0x16;

async fn connection(
    web: Arc<Web>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let hello = Duration::from_millis(web.relay.config.transport.hello_timeout_ms);
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(hello, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1..)) => {}
        // Closed, failed, or silent for the whole hello timeout.
        _ => return,
    }
    if first[0] == TLS_HANDSHAKE {
        match tokio::time::timeout(hello, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => serve_http(web, tls, peer, true).await,
            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    } else if plain_allowed(web.relay.config.web.plain_http, peer) {
        serve_http(web, stream, peer, false).await;
    } else {
        let mut stream = stream;
        let body = "this listener speaks HTTPS to non-local peers\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = tokio::time::timeout(hello, stream.write_all(response.as_bytes())).await;
        let _ = stream.shutdown().await;
    }
}

/// Serves HTTP/1.1 on one connection; a WebSocket upgrade continues as a session in this task.
async fn serve_http<IO>(web: Arc<Web>, io: IO, peer: SocketAddr, tls: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hello = Duration::from_millis(web.relay.config.transport.hello_timeout_ms);
    let upgrade: Arc<Mutex<Option<hyper::upgrade::OnUpgrade>>> = Arc::new(Mutex::new(None));
    let service = {
        let web = web.clone();
        let upgrade = upgrade.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = handle(&web, req, tls, &upgrade);
            async move { Ok::<_, std::convert::Infallible>(response) }
        })
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(hello)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "HTTP connection ended");
    }
    let pending = upgrade.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(pending) = pending {
        match pending.await {
            Ok(upgraded) => ws::serve(web.relay.clone(), TokioIo::new(upgraded), peer).await,
            Err(e) => tracing::debug!(%peer, error = %e, "WebSocket upgrade failed"),
        }
    }
}

fn handle(
    web: &Web,
    mut req: Request<Incoming>,
    tls: bool,
    upgrade: &Mutex<Option<hyper::upgrade::OnUpgrade>>,
) -> Response<Body> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    match req.uri().path() {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/demo.js" => asset(DEMO_JS, "text/javascript; charset=utf-8"),
        "/roomcast.js" => asset(ROOMCAST_JS, "text/javascript; charset=utf-8"),
        "/roomcast.d.ts" => asset(ROOMCAST_DTS, "application/typescript; charset=utf-8"),
        "/roomcast.json" => json(&connect_info(web)),
        "/ws" => {
            let (response, on_upgrade) = ws::upgrade(&web.relay.config, &mut req, tls);
            if let Some(on) = on_upgrade {
                *upgrade.lock().unwrap_or_else(|p| p.into_inner()) = Some(on);
            }
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// What a page needs to connect: the WebTransport port, path and certificate hashes, and the
/// WebSocket path.
fn connect_info(web: &Web) -> serde_json::Value {
    let hashes: Vec<String> = web
        .certs
        .browser_hash()
        .map(|h| hex(&h))
        .into_iter()
        .collect();
    serde_json::json!({
        "webtransport": {
            "port": web.quic_port,
            "path": WEBTRANSPORT_PATH,
            "cert_sha256": hashes,
        },
        "websocket": { "path": "/ws" },
        "dev_mode": web.relay.config.auth.dev_mode,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Body> {
    response(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    )
}

fn json(v: &serde_json::Value) -> Response<Body> {
    response(
        StatusCode::OK,
        "application/json",
        Bytes::from(v.to_string()),
    )
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' https: wss: ws:; style-src 'self' 'unsafe-inline'",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_peers_by_default() {
        let at = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert!(plain_allowed(PlainHttp::Loopback, at("127.0.0.1:5000")));
        assert!(plain_allowed(PlainHttp::Loopback, at("127.8.9.1:5000")));
        assert!(plain_allowed(PlainHttp::Loopback, at("[::1]:5000")));
        assert!(plain_allowed(
            PlainHttp::Loopback,
            at("[::ffff:127.0.0.1]:5000")
        ));
        assert!(!plain_allowed(PlainHttp::Loopback, at("192.0.2.7:5000")));
        assert!(!plain_allowed(
            PlainHttp::Loopback,
            at("[2001:db8::1]:5000")
        ));
        assert!(plain_allowed(PlainHttp::Any, at("192.0.2.7:5000")));
        assert!(!plain_allowed(PlainHttp::Never, at("127.0.0.1:5000")));
    }
}
