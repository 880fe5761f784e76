//! What a session and its delivery task need of a client connection, whatever carries it:
//! native QUIC (`roomcast/1`), a WebTransport session (`h3` on the same UDP port) or a WebSocket
//! on the public listener. Each transport implements `Link` (close, closed, datagrams),
//! `ReplySink` (the control stream's write side) and `EventSink` (the delivery stream), so
//! the request loop and the delivery task are one code for all three.

use crate::protocol::CloseCode;
use bytes::Bytes;
use std::future::Future;

/// Which transport a connection came in on: the `transport` label of the connection and delivery
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC with ALPN `roomcast/1`.
    Quic,
    /// WebTransport over HTTP/3 (ALPN `h3`) on the QUIC port.
    WebTransport,
    /// A WebSocket on the public web listener.
    WebSocket,
}

impl TransportKind {
    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Quic => "quic",
            TransportKind::WebTransport => "webtransport",
            TransportKind::WebSocket => "websocket",
        }
    }
}

/// Closes a connection with one of roomcast's close codes and a reason: what the registry keeps
/// of a connection to end it (shutdown, a full delivery queue).
pub trait Closer: Send + Sync {
    /// Closes the connection; later calls do nothing.
    fn close(&self, code: CloseCode, reason: &str);
}

/// A client connection as its session and delivery task use it.
pub(crate) trait Link: Closer + Clone + 'static {
    /// Resolves once the connection is closed, by either side.
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static;
    /// How the connection ended, for `roomcast_connections_closed_total`: `normal` (the client
    /// closed it cleanly), `shutdown` (closed here) or `lost`.
    fn closed_reason(&self) -> &'static str;
    /// Whether the connection is closed (or closing): a stream that failed while it is not was
    /// stopped or reset by the client.
    fn is_closed(&self) -> bool;
    /// The largest datagram the client takes now, `None` when it takes none.
    fn max_datagram_size(&self) -> Option<usize> {
        None
    }
    /// Bytes free in the outgoing datagram buffer.
    fn datagram_space(&self) -> usize {
        0
    }
    /// Queues a datagram; false when the path cannot take it.
    fn send_datagram(&self, _datagram: Bytes) -> bool {
        false
    }
}

/// A write could not be made: the client stopped the stream (STOP_SENDING), or the connection
/// is gone.
#[derive(Debug, thiserror::Error)]
#[error("{why}")]
pub(crate) struct Gone {
    /// The client stopped the stream while the connection lives.
    pub stopped: bool,
    pub why: String,
}

impl Gone {
    /// The connection is gone.
    pub fn lost(why: impl Into<String>) -> Self {
        Gone {
            stopped: false,
            why: why.into(),
        }
    }
}

/// The write side of the control stream: replies, in order.
pub(crate) trait ReplySink: Send + 'static {
    /// Writes one length-delimited [`crate::protocol::ServerFrame`].
    fn write(&mut self, frame: Bytes) -> impl Future<Output = Result<(), Gone>> + Send;

    /// Ends the stream and waits until the client has everything written on it, so a close
    /// that follows cannot overtake it (callers bound the wait).
    fn finish(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How long a refusal waits for the client to have read it before the connection closes.
pub(crate) const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The delivery stream: length-delimited [`crate::protocol::Event`] frames, in order.
pub(crate) trait EventSink: Send + 'static {
    /// Writes every frame in `frames` (which it may empty); waits while the client's window (or
    /// send queue) is full.
    fn write_all(&mut self, frames: &mut [Bytes]) -> impl Future<Output = Result<(), Gone>> + Send;
}

// ---- native QUIC ----

impl Closer for quinn::Connection {
    fn close(&self, code: CloseCode, reason: &str) {
        quinn::Connection::close(self, code.into(), reason.as_bytes());
    }
}

impl Link for quinn::Connection {
    fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let conn = self.clone();
        async move {
            conn.closed().await;
        }
    }

    fn closed_reason(&self) -> &'static str {
        match self.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c))
                if c.error_code == quinn::VarInt::from_u32(CloseCode::Normal.code()) =>
            {
                "normal"
            }
            Some(quinn::ConnectionError::LocallyClosed) => "shutdown",
            _ => "lost",
        }
    }

    fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    fn max_datagram_size(&self) -> Option<usize> {
        quinn::Connection::max_datagram_size(self)
    }

    fn datagram_space(&self) -> usize {
        self.datagram_send_buffer_space()
    }

    fn send_datagram(&self, datagram: Bytes) -> bool {
        quinn::Connection::send_datagram(self, datagram).is_ok()
    }
}

impl ReplySink for quinn::SendStream {
    async fn write(&mut self, frame: Bytes) -> Result<(), Gone> {
        self.write_all(&frame).await.map_err(quic_write)
    }

    async fn finish(&mut self) {
        if quinn::SendStream::finish(self).is_ok() {
            let _ = self.stopped().await;
        }
    }
}

fn quic_write(e: quinn::WriteError) -> Gone {
    Gone {
        stopped: matches!(e, quinn::WriteError::Stopped(_)),
        why: e.to_string(),
    }
}

impl EventSink for quinn::SendStream {
    async fn write_all(&mut self, frames: &mut [Bytes]) -> Result<(), Gone> {
        self.write_all_chunks(frames).await.map_err(quic_write)
    }
}
