//! WebTransport on the QUIC port: a connection that negotiated ALPN `h3` is an HTTP/3
//! WebTransport session (web-transport-quinn takes over the quinn connection). Inside the
//! session the protocol is roomcast/1 itself: the client opens the one bidirectional control
//! stream and sends its hello, the server opens the one unidirectional delivery stream, and
//! low-priority events go as WebTransport datagrams when the session takes them.
//!
//! The session is `CONNECT https://HOST:PORT/roomcast` from a page whose `Origin` passes
//! [`super::ws::origin_allowed`]; `?datagrams=0` asks for every event on the delivery stream
//! (for browsers whose datagram support falls short). Other paths get `404`, other origins
//! `403`. Close codes are roomcast's [`CloseCode`]s, carried in the session's close capsule, so
//! a page sees them in `WebTransport.closed`.

use super::admission::Handshaking;
use super::link::{Closer, EventSink, Gone, Link, ReplySink, TransportKind};
use super::relay::Relay;
use super::session::{self, SessionError};
use crate::protocol::{CloseCode, FrameReader, HELLO_SKIP_MAX};
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Whether the connection negotiated HTTP/3 (WebTransport) rather than `roomcast/1`.
pub(crate) fn is_h3(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == web_transport_quinn::ALPN.as_bytes())
}

/// Stream credit an HTTP/3 client needs, granted in every handshake (the ALPN is not known when
/// the transport parameters go out, and Chromium refuses fewer than 3 unidirectional streams):
/// its control stream and the two QPACK streams (unidirectional), the CONNECT request and
/// roomcast's control stream (bidirectional).
pub(crate) const H3_UNI_STREAMS: u32 = 3;
pub(crate) const H3_BIDI_STREAMS: u32 = 2;

/// A WebTransport session as a [`Link`].
#[derive(Clone)]
struct WtLink {
    session: web_transport_quinn::Session,
    /// The client asked for low-priority events as datagrams (the default).
    datagrams: bool,
}

impl Closer for WtLink {
    fn close(&self, code: CloseCode, reason: &str) {
        self.session.close(code.code(), reason.as_bytes());
    }
}

impl Link for WtLink {
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let session = self.session.clone();
        async move {
            session.closed().await;
        }
    }

    fn closed_reason(&self) -> &'static str {
        use web_transport_quinn::{SessionError as E, WebTransportError as W};
        match self.session.close_reason() {
            Some(E::WebTransportError(W::Closed(code, _))) if code == CloseCode::Normal.code() => {
                "normal"
            }
            Some(E::ConnectionError(quinn::ConnectionError::LocallyClosed)) => "shutdown",
            _ => "lost",
        }
    }

    fn is_closed(&self) -> bool {
        self.session.close_reason().is_some()
    }

    fn max_datagram_size(&self) -> Option<usize> {
        let max = self.session.max_datagram_size();
        (self.datagrams && max > 0).then_some(max)
    }

    fn datagram_space(&self) -> usize {
        self.session.datagram_send_buffer_space()
    }

    fn send_datagram(&self, datagram: Bytes) -> bool {
        self.session.send_datagram(datagram).is_ok()
    }
}

impl ReplySink for web_transport_quinn::SendStream {
    async fn write(&mut self, frame: Bytes) -> Result<(), Gone> {
        web_transport_quinn::SendStream::write_all(self, &frame)
            .await
            .map_err(wt_write)
    }

    async fn finish(&mut self) {
        if web_transport_quinn::SendStream::finish(self).is_ok() {
            let _ = self.stopped().await;
        }
    }
}

fn wt_write(e: web_transport_quinn::WriteError) -> Gone {
    Gone {
        stopped: matches!(e, web_transport_quinn::WriteError::Stopped(_)),
        why: e.to_string(),
    }
}

impl EventSink for web_transport_quinn::SendStream {
    async fn write_all(&mut self, frames: &mut [Bytes]) -> Result<(), Gone> {
        self.write_all_chunks(frames).await.map_err(wt_write)
    }
}

/// Serves a QUIC connection that negotiated `h3` to its end; returns how it ended. It counts as
/// handshaking until its hello is checked.
pub(crate) async fn serve(
    relay: Arc<Relay>,
    conn: quinn::Connection,
    handshaking: Handshaking,
) -> &'static str {
    match open_and_serve(&relay, conn, handshaking).await {
        Ok(reason) => reason,
        Err(e) => {
            tracing::debug!(error = %e, "WebTransport session ended");
            "lost"
        }
    }
}

async fn open_and_serve(
    relay: &Arc<Relay>,
    conn: quinn::Connection,
    handshaking: Handshaking,
) -> Result<&'static str, SessionError> {
    let cfg = &relay.config;
    let hello_timeout = Duration::from_millis(cfg.transport.hello_timeout_ms);
    let deadline = tokio::time::Instant::now() + hello_timeout;
    let request =
        match tokio::time::timeout_at(deadline, web_transport_quinn::Request::accept(conn.clone()))
            .await
        {
            Ok(r) => r.map_err(|e| SessionError::WebTransport(e.to_string()))?,
            Err(_) => {
                session::protocol_close(&conn, &session::hello_timeout_reason(hello_timeout));
                return Ok("hello_timeout");
            }
        };
    let origin = request
        .headers
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let host = request.url.host_str().unwrap_or_default().to_owned();
    let status = if request.url.path() != super::web::WEBTRANSPORT_PATH {
        Some(hyper::StatusCode::NOT_FOUND)
    } else if !super::ws::origin_allowed(origin, Some(&host), &cfg.web.origins) {
        tracing::info!(origin, "WebTransport session from a foreign origin refused");
        Some(hyper::StatusCode::FORBIDDEN)
    } else {
        None
    };
    if let Some(status) = status {
        let _ = request.reject(status).await;
        // The client closes once it has read the refusal; closing first could lose it.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
        session::protocol_close(&conn, "session refused");
        return Ok("protocol");
    }
    let datagrams = !request
        .url
        .query_pairs()
        .any(|(k, v)| k == "datagrams" && v == "0");
    let session = request
        .ok()
        .await
        .map_err(|e| SessionError::WebTransport(e.to_string()))?;
    let link = WtLink {
        session: session.clone(),
        datagrams,
    };
    let opened = tokio::time::timeout_at(deadline, async {
        let (send, recv) = session.accept_bi().await?;
        let mut reader = FrameReader::new(recv, cfg.limits.max_frame);
        let hello = reader.read_hello(HELLO_SKIP_MAX).await;
        Ok::<_, web_transport_quinn::SessionError>((send, reader, hello))
    })
    .await;
    let (mut send, reader, hello) = match opened {
        Ok(r) => r.map_err(|e| SessionError::WebTransport(e.to_string()))?,
        Err(_) => {
            session::protocol_close(&link, &session::hello_timeout_reason(hello_timeout));
            return Ok("hello_timeout");
        }
    };
    let user = match session::check_hello(relay, hello) {
        Ok(user) => user,
        Err(refusal) => return Ok(session::refuse_hello(&link, &mut send, refusal).await),
    };
    tracing::Span::current().record("user", user.as_str());
    drop(handshaking);
    let (frames_tx, frames) = flume::bounded(session::PIPELINE);
    let events = {
        let session = session.clone();
        async move {
            session
                .open_uni()
                .await
                .map_err(|e| SessionError::WebTransport(e.to_string()))
        }
    };
    let served = session::Session {
        transport: TransportKind::WebTransport,
        link,
        replies: send,
        events,
        reader: session::read_frames(reader, frames_tx),
        frames,
        user,
    };
    session::serve_session(relay, served).await
}
