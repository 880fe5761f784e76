//! Wire protocol v1: everything a client in any language needs to talk to roomcast.
//!
//! This module holds no I/O beyond reading and writing frames on a byte stream; the types here and
//! this page are the whole contract between a client and the relay. A client written from this
//! page alone interoperates with the relay: the byte-level examples at the end are checked
//! against the encoder by a unit test.
//!
//! # Transport: QUIC
//! - QUIC version 1 (RFC 9000) with TLS 1.3 (RFC 9001), one connection per client device, on the
//!   relay's UDP port (`server.quic`, 7700 by default). ALPN: [`ALPN`] = `roomcast/1`; a
//!   connection offering no such ALPN fails its handshake.
//! - **Certificate**: the client verifies the server's certificate chain and that it is valid
//!   for the host name it connects to (the TLS server name). A relay with its own certificate
//!   (`tls.cert`) is reached by that certificate's names; the development certificate the relay
//!   generates in its data folder is signed by the data folder's `ca.pem` and valid for
//!   `localhost`, `127.0.0.1`, `::1` and the names in `tls.dev_names`. The reference client
//!   checks the name `localhost` unless told another (`ClientConfig::server_name`).
//! - **Retry and refusal**: when many handshakes are in progress (`transport.retry_threshold`)
//!   the relay answers a client's first Initial packet with a QUIC Retry; the client repeats its
//!   Initial with the Retry's token (every QUIC stack does this on its own). When
//!   `transport.max_handshakes` are in progress, a new connection is refused with the transport
//!   error `CONNECTION_REFUSED`: retry later.
//! - **Streams, each way**: the client may open **one bidirectional stream** (the control
//!   stream; the relay's `initial_max_streams_bidi` is 1) and **no unidirectional stream** (its
//!   `initial_max_streams_uni` is 0). The relay opens **one unidirectional stream** (the delivery
//!   stream) and no bidirectional one, so the client **must** allow at least one unidirectional
//!   stream (`initial_max_streams_uni` ≥ 1); one that does not is closed with
//!   [`CloseCode::Protocol`] within the hello timeout, without a welcome. The relay's receive
//!   windows are small (`transport.stream_window` 64 KiB for the control stream,
//!   `transport.conn_window` 128 KiB in all): a client sends requests, not bulk data.
//! - **Datagrams** (RFC 9221): a client that advertises `max_datagram_frame_size` receives
//!   low-priority messages as datagrams (below). The relay ignores datagrams from clients: they
//!   are accepted by QUIC and never read (at most 16 KiB of them are buffered, older ones
//!   dropped); send none.
//! - **Keep-alives and idle timeout**: the relay sends a QUIC PING when a connection has been
//!   quiet for `transport.keep_alive_ms` (10 s) and considers it dead after
//!   `transport.idle_timeout_ms` (30 s) of silence (QUIC takes the smaller of both sides' idle
//!   timeouts). A client needs no keep-alive of its own to stay connected, but one below its NAT's
//!   binding timeout keeps the path open; the reference client sends one every 10 s.
//! - The relay may ask the client, with the ACK frequency extension, to acknowledge less often
//!   (`transport.ack_every_packets`); a client that does not support it acknowledges as usual.
//!
//! # A session
//! 1. The client opens the control stream and sends [`ClientFrame::Hello`]: the protocol version
//!    ([`PROTOCOL_VERSION`] = 1) and its token. The handshake and the hello must both be done
//!    within the **hello timeout** (`transport.hello_timeout_ms`, 10 s; the QUIC handshake alone
//!    within `transport.handshake_timeout_ms`, 5 s) of the client's first packet, else the relay
//!    closes with [`CloseCode::Protocol`] and `no hello within the hello timeout (10000 ms)`.
//! 2. The relay answers on the control stream with [`ServerFrame::Welcome`] (the user id, the
//!    connection's id, and the frame limits) or with [`ServerFrame::Refused`] followed by a close:
//!    - a token that is missing, expired, not yet valid (`nbf`), forged or malformed: `Refused`
//!      with `UNAUTHORIZED` and a message that names the problem, then close code
//!      [`CloseCode::Unauthorized`] with the same text as reason. Tokens are HS256 JWTs with
//!      `sub` (the user id, 1–64 characters of `[A-Za-z0-9_.:@-]`), `exp` and optionally `nbf`
//!      (seconds since the epoch; `auth.leeway_secs` of clock skew is tolerated); a relay in
//!      development mode (`auth.dev_mode`) also takes `dev:<user id>` unsigned. A token is at
//!      most [`MAX_TOKEN_LEN`] (8 KiB): a longer one is refused as `UNAUTHORIZED` with its length,
//!      even inside a hello over the frame limit (such a hello, up to [`HELLO_SKIP_MAX`] = 2 MiB,
//!      is read and discarded, never buffered; a larger one closes with `Protocol`);
//!    - another protocol version: `Refused` with `BAD_REQUEST` and `protocol version 2 is not
//!      supported; this server speaks 1`, then close code [`CloseCode::Protocol`];
//!    - any other first frame, or a second hello later: close code `Protocol`, no `Refused`.
//! 3. The relay opens the delivery stream; its first event is always [`Event::Ready`] with the
//!    welcome's connection id. The relay writes the welcome before the first byte of the delivery
//!    stream, but QUIC does not order streams against each other: a client must accept the
//!    delivery stream at any time after its hello, and may see `Ready` before the welcome.
//! 4. The client sends [`ClientFrame::Request`]s, each with an `id` of its choice (any `u32`; a
//!    counter will do), and gets exactly one [`ServerFrame::Reply`] per request with the same id,
//!    **in request order**. Requests may be pipelined: up to 64 are outstanding at once per
//!    connection, and the relay reads no further while 64 wait for their replies (the client's
//!    writes then wait on flow control). Requests take effect in order. A `Send` beyond the
//!    connection's rate (`limits.send_rate_per_sec`, burst `limits.send_burst`) is refused with
//!    `RATE_LIMITED`. A request of a variant the relay does not know (from a newer client) is
//!    answered `BAD_REQUEST` with its id, and the connection goes on: a client can probe for
//!    features that way.
//! 5. Events arrive on the delivery stream (and as datagrams) until the connection ends.
//!
//! # Ending a session
//! - **Cleanly**: finish the control stream (send its FIN). The relay answers every request still
//!   outstanding, finishes its side of the control stream, and once the client has acknowledged
//!   those replies (within `transport.slow_close_ms`, 5 s) closes the connection with
//!   [`CloseCode::Normal`] and the reason `control stream finished`. Or close the connection
//!   yourself with application code 0 (replies in flight are then lost).
//! - Stopping either of the relay's streams (STOP_SENDING) or resetting the control stream
//!   (RESET_STREAM) breaks the protocol: the relay closes with [`CloseCode::Protocol`] and a
//!   reason naming the stream, e.g. `the client stopped the delivery stream (STOP_SENDING)`.
//! - The relay closes with an application close code of [`CloseCode`] and a reason text:
//!   `1 "server shutting down"`, `2` with the token's refusal, `3` with the protocol violation,
//!   `4 "too_slow"` for a connection that could not take its protected traffic
//!   (`transport.slow_close_ms` of backlog), `5` for an internal fault.
//!
//! # Membership belongs to the user
//! A user may be connected from several devices (connections) at once; a room's membership is the
//! user's, not a connection's:
//! - A room counts the user once (`member_count`, `MemberJoined`), however many of its devices
//!   joined. A join from a second device adds that connection to the membership (it does not
//!   count against `limits.rooms_per_user` again) and starts its deliveries.
//! - Every connection of the user that joined receives the room's events. Any connection of the
//!   user may send, recall, set attributes and read history in the room, even one that did not
//!   join it (it just receives nothing of the room).
//! - A `Leave` from any device ends the membership for the user: that connection gets nothing
//!   more of the room, and every other device of the user that was receiving it gets
//!   `Kicked{other_device}`. A ban kicks every device (`Kicked{banned}`); `single_room` mode's
//!   switch too (`Kicked{single_room}`).
//! - When the user's last connection goes, its memberships wait `rooms.offline_grace_ms` (30 s):
//!   a connection of the user that arrives within it takes them over, with `Resumed{missed}` per
//!   room (what was published meanwhile; history has it). After the grace the user is removed
//!   from the room (its members see `MemberLeft` where member events are on). Members on the
//!   room's user whitelist are never removed for being offline.
//!
//! # Resume after a reconnect
//! A client that lost its connection (the relay died, restarted, or the network failed) and
//! reconnected, to the same relay or another one of the deployment, rejoins each room with
//! [`Request::Resume`]: the room, the epoch of the incarnation it was a member of, and the
//! newest `seq` it received from it (0 if none). The relay checks it like a join (the room
//! exists, the user is not banned, `limits.rooms_per_user`) and answers [`Response::Joined`]
//! (its `history` is empty; `last_seq` is the room's newest message at the resume). Then, on the
//! delivery stream and before anything else of the room:
//! 1. [`Event::Resumed`] with `missed`: how many messages after the request's `last_seq` this
//!    connection will **not** get (and `last_seq`: the newest at the resume);
//! 2. every other message with `seq` above the request's `last_seq`, in `seq` order: from the
//!    relay's ring where it still holds them, from history (normal and protected messages)
//!    beyond it;
//! 3. live traffic, which the relay buffered from the moment of the resume: nothing falls
//!    between the replay and the live messages, and nothing is delivered twice.
//!
//! The replay is all or nothing per message and never silently partial: what cannot be
//! replayed exactly (low-priority messages, which history does not keep; messages trimmed from
//! history by `store.history_max` or its age; recalled ones; the oldest beyond 1000 messages
//! or 8 MiB of replay) is counted in `missed`, and what the ring sheds after the resume comes
//! as a `Gap`, as for any member. Sequence numbers a relay reserved and never used before it
//! restarted are not messages and are not counted (so neither are low-priority messages a
//! relay sent after its last stored message, just before a crash: nothing records them).
//!
//! - A room destroyed meanwhile (or destroyed and created anew under the same id: another
//!   `epoch`) is refused with `ROOM_NOT_FOUND` and a message saying the incarnation was
//!   destroyed; join it anew to be a member of the new one. A ban, a full `rooms_per_user` and a
//!   `last_seq` above the room's newest are refused as for a join (`BANNED`, `TOO_MANY_ROOMS`,
//!   `BAD_REQUEST`).
//! - A user whose membership the relay still holds (a reconnect within `rooms.offline_grace_ms`
//!   to the same relay) has it moved to the new connection at the hello, with `Resumed{missed}`
//!   as described above under "Membership belongs to the user" (counted from when the relay saw
//!   the old connection go: what it wrote to the dead connection before is not counted); a
//!   `Resume` then only confirms it (`Joined`, nothing replayed). While the relay still counts
//!   the old connection live, the new one is not subscribed at the hello, and its `Resume`
//!   replays as above.
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
//! the client's frames must have `len` in `1..=max_frame` (the welcome's `max_frame`; by default
//! [`DEFAULT_MAX_FRAME`], 64 KiB; a hello has its own rule above); a larger or undecodable frame
//! closes the connection with [`CloseCode::Protocol`] and the reason, without the body being
//! read. Frames on the delivery stream are at most the welcome's `max_event` (admin messages may
//! carry up to 128 KiB). Replies on the control stream have no fixed maximum: a `History` reply
//! carries up to 200 messages of up to 128 KiB each (about 25 MiB; the reference client and the browser SDK accept 32 MiB).
//!
//! postcard in one paragraph: `u8` is one byte; `u16`, `u32`, `u64` are LEB128 varints (7 bits per
//! byte, least significant group first, high bit set on every byte but the last); `i32`/`i64`
//! are zigzag-encoded (`0, -1, 1, -2, …` → `0, 1, 2, 3, …`) then varint; `bool` is one byte 0/1;
//! strings and byte arrays (`Bytes`) are a varint length then the bytes (strings UTF-8); `Option`
//! is a byte 0 (None) or 1 then the value; a `Vec` is a varint count then the items; a tuple
//! `(A, B)` is `A` then `B`, with no count or separator (so `Vec<(String, String)>` is a count,
//! then key, value, key, value, …); a struct is its fields in declaration order; an enum is a
//! varint variant index (the order of the variants below, from 0) then its fields in order (a
//! newtype variant such as `Refused(WireError)` is the index then the inner value); `Result` is
//! the enum `Ok` = 0 / `Err` = 1. Nothing is padded or aligned, and a frame's body must be
//! consumed exactly: trailing bytes are an error.
//!
//! # Delivery stream and datagrams
//! The delivery stream carries [`Event`]s: room messages of the normal and protected classes,
//! gaps, kicks, room destruction, moderation and presence notices, attribute changes. Messages of
//! one room arrive in `seq` order. **Low-priority** messages ([`Class::Low`]) are sent as QUIC
//! DATAGRAM frames when the client advertised datagram support and the encoded event fits the
//! path's datagram size; otherwise on the delivery stream like any other event. A datagram holds
//! exactly one postcard-encoded [`Event`] with **no** length prefix. Datagrams may be lost or
//! arrive out of order; the per-room `seq` lets a client notice. A connection that lags is sent
//! `Gap{low, normal}` with the exact counts it skipped, before the room's next delivered event.
//!
//! # Errors
//! A refused request gets `Reply { id, result: Err(WireError { code, message }) }`; `code` is one
//! of [`ErrorCode`]'s stable names (encoded as its variant index), `message` is for humans and may
//! change.
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
//! Variants are only ever appended, and fields are never added to a variant. A client that meets an
//! unknown event variant should skip the frame (its length prefix says how far); the relay
//! answers an unknown request variant with `BAD_REQUEST` and the request's id. A connection's
//! protocol version is the hello's; a relay that speaks another one refuses the hello as above.
//!
//! # Byte-level examples
//! Each block is one whole frame as it travels, in hex, with what each part means. The unit test
//! `protocol::tests::the_documented_examples_are_what_the_encoder_writes` encodes the same values
//! and compares them with these bytes.
//!
//! ## Example: Hello
//! `ClientFrame::Hello { version: 1, token: "dev:alice" }` (a development-mode token; a real one
//! is a JWT string, encoded the same way), client → relay on the control stream:
//! ```text
//! 00 00 00 0c                      frame length: 12 bytes follow
//! 00                               ClientFrame variant 0: Hello
//! 01                               version: 1
//! 09                               token: 9 bytes of UTF-8 follow
//! 64 65 76 3a 61 6c 69 63 65       "dev:alice"
//! ```
//!
//! ## Example: Welcome
//! `ServerFrame::Welcome { user: "alice", conn_id: 1, max_frame: 65536, max_event: 132096 }`,
//! relay → client on the control stream:
//! ```text
//! 00 00 00 0e                      frame length: 14
//! 00                               ServerFrame variant 0: Welcome
//! 05 61 6c 69 63 65                user: 5 bytes, "alice"
//! 01                               conn_id: 1
//! 80 80 04                         max_frame: 65536 (varint: 0x00 | 0x80, 0x00 | 0x80, 0x04)
//! 80 88 08                         max_event: 132096
//! ```
//!
//! ## Example: Send
//! `ClientFrame::Request { id: 1, request: Request::Send { room: "lobby", msg_type: "chat",
//! body: "hi", low: false } }`, client → relay:
//! ```text
//! 00 00 00 12                      frame length: 18
//! 01                               ClientFrame variant 1: Request
//! 01                               id: 1
//! 02                               Request variant 2: Send
//! 05 6c 6f 62 62 79                room: "lobby"
//! 04 63 68 61 74                   msg_type: "chat"
//! 02 68 69                         body: 2 bytes, "hi"
//! 00                               low: false
//! ```
//!
//! ## Example: the Send's reply
//! `ServerFrame::Reply { id: 1, result: Ok(Response::Sent { seq: 1, ts: 1767225600000 }) }`
//! (`ts` is 2026-01-01T00:00:00Z in ms), relay → client:
//! ```text
//! 00 00 00 0b                      frame length: 11
//! 02                               ServerFrame variant 2: Reply
//! 01                               id: 1
//! 00                               Result variant 0: Ok
//! 02                               Response variant 2: Sent
//! 01                               seq: 1
//! 80 d0 ea b6 b7 33                ts: 1767225600000
//! ```
//!
//! ## Example: a refused request
//! `ServerFrame::Reply { id: 2, result: Err(WireError { code: ErrorCode::NotInRoom, message:
//! "join first" }) }`:
//! ```text
//! 00 00 00 0f                      frame length: 15
//! 02                               ServerFrame variant 2: Reply
//! 02                               id: 2
//! 01                               Result variant 1: Err
//! 07                               code: ErrorCode variant 7, NOT_IN_ROOM
//! 0a 6a 6f 69 6e 20 66 69 72 73 74    message: 10 bytes, "join first"
//! ```
//!
//! ## Example: Resume
//! `ClientFrame::Request { id: 3, request: Request::Resume { room: "lobby", epoch:
//! 1767225600000000, last_seq: 41 } }` (an epoch is microseconds since the epoch at the room's
//! creation), client → relay:
//! ```text
//! 00 00 00 12                      frame length: 18
//! 01                               ClientFrame variant 1: Request
//! 03                               id: 3
//! 0a                               Request variant 10: Resume
//! 05 6c 6f 62 62 79                room: "lobby"
//! 80 80 81 b1 84 e9 91 03          epoch: 1767225600000000
//! 29                               last_seq: 41
//! ```
//!
//! ## Example: Ready
//! `Event::Ready { conn_id: 1 }`, the first frame of the delivery stream:
//! ```text
//! 00 00 00 02                      frame length: 2
//! 00                               Event variant 0: Ready
//! 01                               conn_id: 1
//! ```
//!
//! ## Example: a delivered message
//! `Event::Message(Message { room: "lobby", seq: 1, ts: 1767225600000, from: "alice", msg_type:
//! "chat", body: "hi", class: Class::Normal })`, relay → client on the delivery stream:
//! ```text
//! 00 00 00 1d                      frame length: 29
//! 01                               Event variant 1: Message
//! 05 6c 6f 62 62 79                room: "lobby"
//! 01                               seq: 1
//! 80 d0 ea b6 b7 33                ts: 1767225600000
//! 05 61 6c 69 63 65                from: "alice"
//! 04 63 68 61 74                   msg_type: "chat"
//! 02 68 69                         body: "hi"
//! 01                               class: Class variant 1, Normal
//! ```
//! The same event as a datagram (a low-priority message would have class `02`) is these bytes
//! without the four-byte length.

mod codec;
mod error;
mod frames;
mod ids;

pub use codec::{
    DecodeError, FrameReader, HelloFrame, REQUEST_VARIANTS, decode_body, decode_client_frame,
    encode_datagram, encode_frame,
};
pub use error::{CloseCode, ErrorCode, WireError};
pub use frames::*;
pub use ids::{validate_id, validate_msg_type};

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

/// Longest client token, in bytes: a longer one is refused with `UNAUTHORIZED`, even in a hello
/// frame over the frame limit (see the module doc).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Largest hello the server reads (and discards) to refuse an over-long token in words; a larger
/// first frame closes the connection with [`CloseCode::Protocol`].
pub const HELLO_SKIP_MAX: u32 = 2 << 20;

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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The bytes of the module doc's example block under the heading `## Example: {name}`: the
    /// leading two-digit hex tokens of each line of its ```text block.
    fn documented(name: &str) -> Vec<u8> {
        let doc: Vec<&str> = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect();
        let heading = format!("## Example: {name}");
        let start = doc
            .iter()
            .position(|l| *l == heading)
            .unwrap_or_else(|| panic!("no example {name:?}"));
        let block = doc[start..]
            .iter()
            .skip_while(|l| **l != "```text")
            .skip(1)
            .take_while(|l| **l != "```");
        let mut bytes = Vec::new();
        for line in block {
            for token in line.split_whitespace() {
                if token.len() != 2 {
                    break;
                }
                match u8::from_str_radix(token, 16) {
                    Ok(b) => bytes.push(b),
                    Err(_) => break,
                }
            }
        }
        assert!(!bytes.is_empty(), "example {name:?} has no bytes");
        bytes
    }

    #[test]
    fn the_documented_examples_are_what_the_encoder_writes() {
        let ts = 1_767_225_600_000;
        let message = Message {
            room: "lobby".into(),
            seq: 1,
            ts,
            from: "alice".into(),
            msg_type: "chat".into(),
            body: Bytes::from_static(b"hi"),
            class: Class::Normal,
        };
        let examples: Vec<(&str, Bytes)> = vec![
            (
                "Hello",
                encode_frame(&ClientFrame::Hello {
                    version: PROTOCOL_VERSION,
                    token: "dev:alice".into(),
                }),
            ),
            (
                "Welcome",
                encode_frame(&ServerFrame::Welcome {
                    user: "alice".into(),
                    conn_id: 1,
                    max_frame: DEFAULT_MAX_FRAME,
                    max_event: 132_096,
                }),
            ),
            (
                "Send",
                encode_frame(&ClientFrame::Request {
                    id: 1,
                    request: Request::Send {
                        room: "lobby".into(),
                        msg_type: "chat".into(),
                        body: Bytes::from_static(b"hi"),
                        low: false,
                    },
                }),
            ),
            (
                "the Send's reply",
                encode_frame(&ServerFrame::Reply {
                    id: 1,
                    result: Ok(Response::Sent { seq: 1, ts }),
                }),
            ),
            (
                "a refused request",
                encode_frame(&ServerFrame::Reply {
                    id: 2,
                    result: Err(WireError::new(ErrorCode::NotInRoom, "join first")),
                }),
            ),
            (
                "Resume",
                encode_frame(&ClientFrame::Request {
                    id: 3,
                    request: Request::Resume {
                        room: "lobby".into(),
                        epoch: 1_767_225_600_000_000,
                        last_seq: 41,
                    },
                }),
            ),
            ("Ready", encode_frame(&Event::Ready { conn_id: 1 })),
            (
                "a delivered message",
                encode_frame(&Event::Message(message.clone())),
            ),
        ];
        for (name, encoded) in examples {
            assert_eq!(documented(name), encoded.to_vec(), "example {name:?}");
        }
        // The datagram form is the same body without the length prefix, and the doc's frame
        // lengths are the bodies' lengths.
        let frame = documented("a delivered message");
        assert_eq!(
            encode_datagram(&Event::Message(message)).to_vec(),
            frame[4..]
        );
        assert_eq!(frame[..4], ((frame.len() - 4) as u32).to_be_bytes());
    }
}
