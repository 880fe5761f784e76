//! Wire protocol v1: everything a client in any language needs to talk to roomcast.
//!
//! This module holds no I/O beyond reading and writing frames on a byte stream; the types here are
//! the whole contract between a client and the relay.
//!
//! # Connection
//! - QUIC (RFC 9000) with TLS 1.3, ALPN [`ALPN`] = `roomcast/1`. One connection per client device.
//! - The client opens **one bidirectional stream**, the *control stream*, and sends a
//!   [`ClientFrame::Hello`] carrying the protocol version and its token. The server answers with
//!   [`ServerFrame::Welcome`] or, for a bad token, with [`ServerFrame::Refused`] and then closes the
//!   connection with application close code [`CloseCode::Unauthorized`].
//! - After the welcome the client sends [`ClientFrame::Request`]s. Each carries a client-chosen `id`
//!   (any `u32`; a counter is fine) and the server answers each with exactly one
//!   [`ServerFrame::Reply`] carrying the same id, in request order. A request of a variant the
//!   server does not know (from a newer client) is answered with `BAD_REQUEST` and its id, and
//!   the connection goes on, so a client can probe for features.
//! - The server opens **one unidirectional stream**, the *delivery stream*, and writes [`Event`]s
//!   on it: room messages of the normal and protected classes, gaps, kicks and room destruction.
//!   Its first event is always [`Event::Ready`]; it lives as long as the connection. The client
//!   must grant the server one unidirectional stream (transport parameter
//!   `initial_max_streams_uni` ≥ 1); a client that does not is closed with
//!   [`CloseCode::Protocol`] within the hello timeout, without a welcome. The server writes the
//!   welcome before the first byte of the delivery stream, but QUIC does not order streams
//!   against each other: a client must accept the delivery stream at any time after its hello,
//!   and may see `Ready` before the welcome.
//! - Stopping either of the server's streams (STOP_SENDING) or resetting the control stream
//!   (RESET_STREAM) breaks the protocol: the server closes with [`CloseCode::Protocol`] and a
//!   reason naming the stream. To end a session cleanly, finish the control stream: the server
//!   answers every request still outstanding, finishes its side, and closes with
//!   [`CloseCode::Normal`] and the reason `control stream finished` once the client has
//!   acknowledged the replies.
//! - **Low-priority** messages ([`Class::Low`]) are sent as QUIC DATAGRAM frames (RFC 9221) when the
//!   client advertised datagram support and the encoded event fits the path's datagram size;
//!   otherwise they go on the delivery stream like any other event. A datagram holds exactly one
//!   postcard-encoded [`Event`] with **no** length prefix. Datagrams are unreliable and may be lost;
//!   the per-room `seq` lets a client notice.
//!
//! # Browsers
//! - **WebTransport** (HTTP/3, ALPN `h3`) on the same UDP port: the session is `CONNECT
//!   https://HOST:PORT/roomcast` (append `?datagrams=0` to get low-priority events on the delivery
//!   stream instead of as datagrams). Inside the session everything above holds as written: the
//!   client opens the one bidirectional control stream and sends the hello, the server opens the
//!   one unidirectional delivery stream, and low-priority events come as WebTransport datagrams
//!   (one postcard [`Event`], no length prefix). The server closes the session with the
//!   [`CloseCode`]s below, carried in its close capsule.
//! - **WebSocket** at `GET /ws` on the public web listener: one socket carries both directions.
//!   A client message (binary) is one postcard [`ClientFrame`] body with **no** length prefix, at
//!   most `max_frame` bytes. A server message (binary) starts with a one-byte envelope:
//!   [`WS_CONTROL`] (`0x00`), then one or more length-delimited [`ServerFrame`]s exactly as on the
//!   control stream, or [`WS_EVENTS`] (`0x01`), then one or more length-delimited [`Event`]s exactly
//!   as on the delivery stream. Low-priority messages share the socket. Close codes: [`CloseCode`]
//!   `n` is WebSocket close code `4000 + n` (`Normal` is 1000); 1002 a broken WebSocket frame,
//!   1003 a text message, 1009 a message over `max_frame`. The server pings; a socket silent for
//!   the idle timeout (no pong) is closed with 4003.
//!
//! # Framing on streams
//! Every frame on a stream is `len: u32 big-endian` followed by `len` bytes of
//! [postcard](https://postcard.jamesmunns.com/wire-format)-encoded body. On the control stream
//! `len` must be in `1..=max_frame` (the server announces its `max_frame` in the welcome; the
//! default is [`DEFAULT_MAX_FRAME`]); on the delivery stream frames are at most the welcome's
//! `max_event` (admin messages may carry up to 128 KiB). A reader checks the length *before*
//! reading the body, so an oversized
//! frame is refused without buffering it: the server answers an oversized or undecodable frame on the
//! control stream by closing the connection with [`CloseCode::Protocol`].
//!
//! postcard in one paragraph: integers `u16..u64` are LEB128 varints (7 bits per byte, low first),
//! `i32`/`i64` are zigzag then varint, `bool` is one byte 0/1, strings and byte arrays are a varint
//! length then the bytes, `Option` is a byte 0 (None) or 1 then the value, a `Vec` is a varint count
//! then the items, an enum is a varint variant index (the order of the variants below, from 0) then
//! its fields in order, a struct is its fields in order, `Result` is enum `Ok`=0 / `Err`=1.
//!
//! # Errors
//! A refused request gets `Reply { id, result: Err(WireError { code, message }) }`; `code` is one of
//! [`ErrorCode`]'s stable names (encoded as its variant index), `message` is for humans.
//!
//! # Close codes
//! The server closes a connection with an application close code from [`CloseCode`] and a reason
//! text, e.g. `1 "server shutting down"`.
//!
//! # Versioning
//! Variants are only ever appended; a client that sees an unknown event variant should skip the frame.

mod codec;
mod error;
mod frames;

pub use codec::{
    DecodeError, FrameReader, REQUEST_VARIANTS, decode_body, decode_client_frame, encode_datagram,
    encode_frame,
};
pub use error::{CloseCode, ErrorCode, WireError};
pub use frames::*;

/// WebSocket envelope: the rest of the message is length-delimited [`ServerFrame`]s, as on the
/// control stream.
pub const WS_CONTROL: u8 = 0x00;

/// WebSocket envelope: the rest of the message is length-delimited [`Event`]s, as on the
/// delivery stream.
pub const WS_EVENTS: u8 = 0x01;

/// The ALPN protocol id a client must offer.
pub const ALPN: &[u8] = b"roomcast/1";

/// The protocol version sent in [`ClientFrame::Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// A wire time (ms since the Unix epoch, as in `until_ms` or `ts`) for people: RFC 3339 in
/// UTC to the second, e.g. `2026-12-02T07:05:00Z`. A time past year 9999 prints as its number.
pub fn utc_text(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

/// Default largest frame body, in bytes, on either stream.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;

#[cfg(test)]
mod time_text_tests {
    use super::utc_text;

    #[test]
    fn wire_times_read_as_rfc3339_utc() {
        assert_eq!(utc_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_text(1_795_671_510_989), "2026-11-26T05:38:30Z");
        assert_eq!(
            utc_text(u64::MAX),
            "18446744073709551615 ms after the Unix epoch"
        );
    }
}
