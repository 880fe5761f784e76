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
//!   [`ServerFrame::Reply`] carrying the same id, in request order.
//! - The server opens **one unidirectional stream**, the *delivery stream*, right after the welcome and
//!   writes [`Event`]s on it: room messages of the normal and protected classes, gaps, kicks and room
//!   destruction. Its first event is always [`Event::Ready`]; it lives as long as the connection.
//! - **Low-priority** messages ([`Class::Low`]) are sent as QUIC DATAGRAM frames (RFC 9221) when the
//!   client advertised datagram support and the encoded event fits the path's datagram size;
//!   otherwise they go on the delivery stream like any other event. A datagram holds exactly one
//!   postcard-encoded [`Event`] with **no** length prefix. Datagrams are unreliable and may be lost;
//!   the per-room `seq` lets a client notice.
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
//! [`ErrorCode::Unavailable`] means the relay's store cannot write now: the request changed
//! nothing (a refused `Send` was delivered to no one and is in no history) and may be retried as
//! it is. Any reply that is not an error comes once its change is durable and visible: a
//! `Sent { seq, ts }` comes after the message was placed for delivery, so a client may see its
//! own message on the delivery stream just before the reply.
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

pub use codec::{DecodeError, FrameReader, decode_body, encode_datagram, encode_frame};
pub use error::{CloseCode, ErrorCode, WireError};
pub use frames::*;

/// The ALPN protocol id a client must offer.
pub const ALPN: &[u8] = b"roomcast/1";

/// The protocol version sent in [`ClientFrame::Hello`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Default largest frame body, in bytes, on either stream.
pub const DEFAULT_MAX_FRAME: u32 = 64 * 1024;
