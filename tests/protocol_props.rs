//! Property tests for the wire protocol in `roomcast::protocol`.
//!
//! Every frame type gets a proptest strategy that reaches every variant, and every value round-trips
//! through both transports a client sees: stream framing (`encode_frame` + `FrameReader::read`,
//! several frames back to back, delivered whole and in small chunks) and datagrams
//! (`encode_datagram` + `decode_body`). The robustness properties feed the decoders arbitrary,
//! truncated, oversized and corrupted input and check that they answer with an error instead of
//! panicking or waiting for bytes they do not need.
//!
//! Everything here is synchronous: a `FrameReader` over an in-memory reader never has to wait, so
//! each future is polled exactly once with a no-op waker ([`ready`]). A future that is still pending
//! after that poll is a reader waiting for input it should not need, and fails the test.

use bytes::Bytes;
use proptest::prelude::*;
use roomcast::protocol::{
    Attribute, Class, ClientFrame, DEFAULT_MAX_FRAME, DecodeError, DestroyReason, ErrorCode, Event,
    FrameReader, HistoryEntry, JoinInfo, KickReason, Message, Request, Response, RoomInfo,
    ServerFrame, WireError, decode_body, encode_datagram, encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, ReadBuf};

// ---------------------------------------------------------------------------------------------
// Driving the async reader synchronously.
// ---------------------------------------------------------------------------------------------

/// Polls `fut` once; `None` if it is pending (the reader wanted bytes the test did not provide).
fn ready<F: Future>(fut: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// An in-memory stream that hands out at most `chunk` bytes per read, so the reader's partial-read
/// handling is exercised. At the end it reports end-of-stream, or, with `then_pending`, never
/// answers again (a peer that has sent a header and is still sending).
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
    then_pending: bool,
}

impl<'a> Trickle<'a> {
    fn new(data: &'a [u8], chunk: usize) -> Self {
        Trickle {
            data,
            chunk: chunk.max(1),
            then_pending: false,
        }
    }
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.data.is_empty() && self.then_pending {
            return Poll::Pending;
        }
        let n = self.chunk.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

/// How a stream of frames ended.
#[derive(Debug)]
enum End {
    /// `Ok(None)`: a clean end between frames.
    Clean,
    /// The first error.
    Err(DecodeError),
}

/// Reads frames until the stream ends or fails (at most `limit` frames, so corrupted input that
/// happens to decode cannot loop for long). Fails the test case if a read does not complete.
fn read_frames<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    limit: usize,
) -> Result<(Vec<T>, End), TestCaseError> {
    let mut out = Vec::new();
    for _ in 0..limit {
        match ready(reader.read::<T>()) {
            None => {
                return Err(TestCaseError::fail(
                    "read did not complete on in-memory input",
                ));
            }
            Some(Ok(Some(v))) => out.push(v),
            Some(Ok(None)) => return Ok((out, End::Clean)),
            Some(Err(e)) => return Ok((out, End::Err(e))),
        }
    }
    Ok((out, End::Clean))
}

fn concat_frames<T: Serialize>(values: &[T]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| encode_frame(v).to_vec())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Every variant of every enum, in wire order. The `match`es without a wildcard make the compiler
// point here when a variant is appended, so the strategies below cannot silently miss it.
// ---------------------------------------------------------------------------------------------

const CLASSES: [Class; 3] = [Class::Protected, Class::Normal, Class::Low];

const DESTROY_REASONS: [DestroyReason; 4] = [
    DestroyReason::Manual,
    DestroyReason::Idle,
    DestroyReason::Lifetime,
    DestroyReason::Scheduled,
];

const KICK_REASONS: [KickReason; 4] = [
    KickReason::Banned,
    KickReason::OtherDevice,
    KickReason::SingleRoom,
    KickReason::Offline,
];

const ERROR_CODES: [ErrorCode; 20] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::RateLimited,
    ErrorCode::TooLarge,
    ErrorCode::RoomNotFound,
    ErrorCode::RoomExists,
    ErrorCode::NotInRoom,
    ErrorCode::Banned,
    ErrorCode::Muted,
    ErrorCode::TooManyRooms,
    ErrorCode::AttrLimit,
    ErrorCode::AttrNotOwner,
    ErrorCode::AttrNotFound,
    ErrorCode::BatchTooLarge,
    ErrorCode::MessageNotFound,
    ErrorCode::RecallForbidden,
    ErrorCode::Shed,
    ErrorCode::Internal,
    ErrorCode::Unavailable,
];

/// The documented wire index of each variant (the position in the enum, from 0).
fn client_frame_index(f: &ClientFrame) -> u8 {
    match f {
        ClientFrame::Hello { .. } => 0,
        ClientFrame::Request { .. } => 1,
    }
}

fn request_index(r: &Request) -> u8 {
    match r {
        Request::Join { .. } => 0,
        Request::Leave { .. } => 1,
        Request::Send { .. } => 2,
        Request::RoomInfo { .. } => 3,
        Request::Ping => 4,
        Request::SetAttributes { .. } => 5,
        Request::DeleteAttributes { .. } => 6,
        Request::GetAttributes { .. } => 7,
        Request::Recall { .. } => 8,
        Request::History { .. } => 9,
        Request::Resume { .. } => 10,
    }
}

fn server_frame_index(f: &ServerFrame) -> u8 {
    match f {
        ServerFrame::Welcome { .. } => 0,
        ServerFrame::Refused(_) => 1,
        ServerFrame::Reply { .. } => 2,
    }
}

fn response_index(r: &Response) -> u8 {
    match r {
        Response::Joined(_) => 0,
        Response::Left => 1,
        Response::Sent { .. } => 2,
        Response::Info(_) => 3,
        Response::Pong => 4,
        Response::AttributeResults { .. } => 5,
        Response::Attributes { .. } => 6,
        Response::Recalled => 7,
        Response::History(_) => 8,
    }
}

fn event_index(e: &Event) -> u8 {
    match e {
        Event::Ready { .. } => 0,
        Event::Message(_) => 1,
        Event::Gap { .. } => 2,
        Event::RoomDestroyed { .. } => 3,
        Event::Kicked { .. } => 4,
        Event::Resumed { .. } => 5,
        Event::Muted { .. } => 6,
        Event::Unmuted { .. } => 7,
        Event::MuteAll { .. } => 8,
        Event::MuteAllLifted { .. } => 9,
        Event::Banned { .. } => 10,
        Event::Unbanned { .. } => 11,
        Event::MemberJoined { .. } => 12,
        Event::MemberLeft { .. } => 13,
        Event::MemberCount { .. } => 14,
        Event::Recalled { .. } => 15,
        Event::AttributeChanged { .. } => 16,
        Event::AttributeRemoved { .. } => 17,
    }
}

/// How many `Event` variants this build knows; a higher tag is a newer server's event.
const EVENT_VARIANTS: u8 = 18;

/// The constants above list every fieldless variant once, in wire order: each variant's documented
/// index (a `match` without a wildcard, so an appended variant fails to compile here) is its
/// position in the list.
#[test]
fn fieldless_variant_lists_are_complete_and_in_order() {
    let class = |c: &Class| match c {
        Class::Protected => 0,
        Class::Normal => 1,
        Class::Low => 2,
    };
    let destroy = |d: &DestroyReason| match d {
        DestroyReason::Manual => 0,
        DestroyReason::Idle => 1,
        DestroyReason::Lifetime => 2,
        DestroyReason::Scheduled => 3,
    };
    let kick = |k: &KickReason| match k {
        KickReason::Banned => 0,
        KickReason::OtherDevice => 1,
        KickReason::SingleRoom => 2,
        KickReason::Offline => 3,
    };
    let code = |e: &ErrorCode| match e {
        ErrorCode::BadRequest => 0,
        ErrorCode::Unauthorized => 1,
        ErrorCode::Forbidden => 2,
        ErrorCode::RateLimited => 3,
        ErrorCode::TooLarge => 4,
        ErrorCode::RoomNotFound => 5,
        ErrorCode::RoomExists => 6,
        ErrorCode::NotInRoom => 7,
        ErrorCode::Banned => 8,
        ErrorCode::Muted => 9,
        ErrorCode::TooManyRooms => 10,
        ErrorCode::AttrLimit => 11,
        ErrorCode::AttrNotOwner => 12,
        ErrorCode::AttrNotFound => 13,
        ErrorCode::BatchTooLarge => 14,
        ErrorCode::MessageNotFound => 15,
        ErrorCode::RecallForbidden => 16,
        ErrorCode::Shed => 17,
        ErrorCode::Internal => 18,
        ErrorCode::Unavailable => 19,
    };
    let positions = |indices: Vec<usize>| indices == (0..indices.len()).collect::<Vec<_>>();
    assert!(positions(CLASSES.iter().map(class).collect()));
    assert!(positions(DESTROY_REASONS.iter().map(destroy).collect()));
    assert!(positions(KICK_REASONS.iter().map(kick).collect()));
    assert!(positions(ERROR_CODES.iter().map(code).collect()));
}

// ---------------------------------------------------------------------------------------------
// Strategies.
// ---------------------------------------------------------------------------------------------

/// Ids as the server produces them, and arbitrary Unicode (the codec must carry any string).
fn text() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_.:@-]{0,16}", any::<String>()]
}

fn body() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn class() -> impl Strategy<Value = Class> {
    prop::sample::select(&CLASSES[..])
}

fn destroy_reason() -> impl Strategy<Value = DestroyReason> {
    prop::sample::select(&DESTROY_REASONS[..])
}

fn kick_reason() -> impl Strategy<Value = KickReason> {
    prop::sample::select(&KICK_REASONS[..])
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(&ERROR_CODES[..])
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (error_code(), text()).prop_map(|(code, message)| WireError { code, message })
}

fn message() -> impl Strategy<Value = Message> {
    (
        text(),
        any::<u64>(),
        any::<u64>(),
        text(),
        text(),
        body(),
        class(),
    )
        .prop_map(|(room, seq, ts, from, msg_type, body, class)| Message {
            room,
            seq,
            ts,
            from,
            msg_type,
            body,
            class,
        })
}

fn attribute() -> impl Strategy<Value = Attribute> {
    (text(), text(), text(), any::<bool>(), any::<u64>()).prop_map(
        |(key, value, owner, auto_delete, set_ms)| Attribute {
            key,
            value,
            owner,
            auto_delete,
            set_ms,
        },
    )
}

fn attributes() -> impl Strategy<Value = Vec<Attribute>> {
    prop::collection::vec(attribute(), 0..4)
}

fn history_entry() -> impl Strategy<Value = HistoryEntry> {
    (message(), any::<bool>()).prop_map(|(message, recalled)| HistoryEntry { message, recalled })
}

fn keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..4)
}

fn room_info() -> impl Strategy<Value = RoomInfo> {
    (
        text(),
        text(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(text(), 0..=20),
        any::<bool>(),
    )
        .prop_map(
            |(id, name, epoch, created_ms, member_count, members, mute_all)| RoomInfo {
                id,
                name,
                epoch,
                created_ms,
                member_count,
                members,
                mute_all,
            },
        )
}

fn join_info() -> impl Strategy<Value = JoinInfo> {
    (
        room_info(),
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(history_entry(), 0..4),
        attributes(),
        any::<u64>(),
    )
        .prop_map(
            |(room, last_seq, muted, history, attributes, attr_version)| JoinInfo {
                room,
                last_seq,
                muted,
                history,
                attributes,
                attr_version,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (text(), any::<i32>()).prop_map(|(room, history)| Request::Join { room, history }),
        text().prop_map(|room| Request::Leave { room }),
        (text(), text(), body(), any::<bool>()).prop_map(|(room, msg_type, body, low)| {
            Request::Send {
                room,
                msg_type,
                body,
                low,
            }
        }),
        text().prop_map(|room| Request::RoomInfo { room }),
        Just(Request::Ping),
        (
            text(),
            prop::collection::vec((text(), text()), 0..4),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(room, entries, auto_delete, force)| Request::SetAttributes {
                    room,
                    entries,
                    auto_delete,
                    force,
                }
            ),
        (text(), keys(), any::<bool>())
            .prop_map(|(room, keys, force)| { Request::DeleteAttributes { room, keys, force } }),
        (text(), keys()).prop_map(|(room, keys)| Request::GetAttributes { room, keys }),
        (text(), any::<u64>()).prop_map(|(room, seq)| Request::Recall { room, seq }),
        (text(), any::<u64>(), any::<u32>()).prop_map(|(room, before_seq, limit)| {
            Request::History {
                room,
                before_seq,
                limit,
            }
        }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(room, epoch, last_seq)| {
            Request::Resume {
                room,
                epoch,
                last_seq,
            }
        }),
    ]
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (any::<u16>(), text()).prop_map(|(version, token)| ClientFrame::Hello { version, token }),
        (any::<u32>(), request()).prop_map(|(id, request)| ClientFrame::Request { id, request }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        join_info().prop_map(Response::Joined),
        Just(Response::Left),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, ts)| Response::Sent { seq, ts }),
        room_info().prop_map(Response::Info),
        Just(Response::Pong),
        (
            any::<u64>(),
            prop::collection::vec((text(), prop::option::of(wire_error())), 0..4)
        )
            .prop_map(|(version, results)| Response::AttributeResults { version, results }),
        (any::<u64>(), attributes()).prop_map(|(version, attributes)| Response::Attributes {
            version,
            attributes
        }),
        Just(Response::Recalled),
        prop::collection::vec(history_entry(), 0..4).prop_map(Response::History),
    ]
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (text(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(user, conn_id, max_frame, max_event)| ServerFrame::Welcome {
                user,
                conn_id,
                max_frame,
                max_event,
            }
        ),
        wire_error().prop_map(ServerFrame::Refused),
        (
            any::<u32>(),
            prop_oneof![response().prop_map(Ok), wire_error().prop_map(Err)]
        )
            .prop_map(|(id, result)| ServerFrame::Reply { id, result }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        any::<u64>().prop_map(|conn_id| Event::Ready { conn_id }),
        message().prop_map(Event::Message),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(room, low, normal)| Event::Gap {
            room,
            low,
            normal
        }),
        (text(), destroy_reason()).prop_map(|(room, reason)| Event::RoomDestroyed { room, reason }),
        (text(), kick_reason()).prop_map(|(room, reason)| Event::Kicked { room, reason }),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(room, missed, last_seq)| {
            Event::Resumed {
                room,
                missed,
                last_seq,
            }
        }),
        (text(), users(), any::<u64>()).prop_map(|(room, users, until_ms)| Event::Muted {
            room,
            users,
            until_ms
        }),
        (text(), users()).prop_map(|(room, users)| Event::Unmuted { room, users }),
        text().prop_map(|room| Event::MuteAll { room }),
        text().prop_map(|room| Event::MuteAllLifted { room }),
        (text(), users(), any::<u64>()).prop_map(|(room, users, until_ms)| Event::Banned {
            room,
            users,
            until_ms
        }),
        (text(), users()).prop_map(|(room, users)| Event::Unbanned { room, users }),
        (text(), text()).prop_map(|(room, user)| Event::MemberJoined { room, user }),
        (text(), text()).prop_map(|(room, user)| Event::MemberLeft { room, user }),
        (text(), any::<u64>()).prop_map(|(room, count)| Event::MemberCount { room, count }),
        (text(), any::<u64>()).prop_map(|(room, seq)| Event::Recalled { room, seq }),
        (text(), any::<u64>(), attribute()).prop_map(|(room, version, attribute)| {
            Event::AttributeChanged {
                room,
                version,
                attribute,
            }
        }),
        (text(), any::<u64>(), text(), any::<bool>()).prop_map(|(room, version, key, auto)| {
            Event::AttributeRemoved {
                room,
                version,
                key,
                auto,
            }
        }),
    ]
}

fn users() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..5)
}

/// A byte stream that is a valid sequence of frames of one of the three stream types.
fn frame_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(client_frame(), 1..4).prop_map(|v| concat_frames(&v)),
        prop::collection::vec(server_frame(), 1..4).prop_map(|v| concat_frames(&v)),
        prop::collection::vec(event(), 1..4).prop_map(|v| concat_frames(&v)),
    ]
}

/// Arbitrary bytes, half of them behind a plausible small length prefix so the body decoders are
/// reached, not just the header check.
fn junk() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (1u32..96, prop::collection::vec(any::<u8>(), 0..128)).prop_map(|(len, rest)| {
            let mut v = len.to_be_bytes().to_vec();
            v.extend(rest);
            v
        }),
    ]
}

// ---------------------------------------------------------------------------------------------
// Round trips.
// ---------------------------------------------------------------------------------------------

/// `values` back to back in one buffer, read whole and in `chunk`-byte pieces; then each value
/// as a datagram, whose payload must be exactly the frame body.
fn round_trip<T>(values: &[T], chunk: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let wire = concat_frames(values);
    for reader in [Trickle::new(&wire, wire.len()), Trickle::new(&wire, chunk)] {
        let mut reader = FrameReader::new(reader, DEFAULT_MAX_FRAME);
        let (got, end) = read_frames::<T, _>(&mut reader, values.len() + 1)?;
        prop_assert!(matches!(end, End::Clean), "stream ended with {:?}", end);
        prop_assert_eq!(&got[..], values);
    }
    for v in values {
        let frame = encode_frame(v);
        let datagram = encode_datagram(v);
        prop_assert_eq!(&frame[4..], &datagram[..], "datagram payload = frame body");
        prop_assert_eq!(
            u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize,
            datagram.len()
        );
        let back: T = decode_body(&datagram).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, v);
        // A datagram holds exactly one value: one byte more is refused.
        let mut longer = datagram.to_vec();
        longer.push(0);
        prop_assert!(decode_body::<T>(&longer).is_err());
    }
    Ok(())
}

/// Cases per property (proptest's default is 256; `PROPTEST_CASES` does not override this).
const CASES: u32 = 128;

fn chunk() -> impl Strategy<Value = usize> {
    1usize..8
}

proptest! {
    // Each case already holds several frames; 128 cases keep the file at a few seconds.
    #![proptest_config(ProptestConfig::with_cases(CASES))]
    #[test]
    fn client_frames_round_trip(v in prop::collection::vec(client_frame(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn requests_round_trip(v in prop::collection::vec(request(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn server_frames_round_trip(v in prop::collection::vec(server_frame(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn responses_round_trip(v in prop::collection::vec(response(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn events_round_trip(v in prop::collection::vec(event(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn messages_round_trip(v in prop::collection::vec(message(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn join_infos_round_trip(v in prop::collection::vec(join_info(), 1..4), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn attributes_round_trip(v in prop::collection::vec(attribute(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn history_entries_round_trip(v in prop::collection::vec(history_entry(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn room_infos_round_trip(v in prop::collection::vec(room_info(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn wire_errors_round_trip(v in prop::collection::vec(wire_error(), 1..6), c in chunk()) {
        round_trip(&v, c)?;
    }

    #[test]
    fn reply_results_round_trip(
        v in prop::collection::vec(
            prop_oneof![response().prop_map(Ok), wire_error().prop_map(Err)], 1..6),
        c in chunk(),
    ) {
        round_trip::<Result<Response, WireError>>(&v, c)?;
    }

    #[test]
    fn fieldless_enums_round_trip(
        classes in prop::collection::vec(class(), 1..6),
        destroys in prop::collection::vec(destroy_reason(), 1..6),
        kicks in prop::collection::vec(kick_reason(), 1..6),
        codes in prop::collection::vec(error_code(), 1..6),
        c in chunk(),
    ) {
        round_trip(&classes, c)?;
        round_trip(&destroys, c)?;
        round_trip(&kicks, c)?;
        round_trip(&codes, c)?;
    }

    /// The first body byte is the variant index the protocol documents (all indices are < 128, so
    /// the varint is one byte).
    #[test]
    fn enum_tags_are_the_documented_variant_indices(
        cf in client_frame(),
        rq in request(),
        sf in server_frame(),
        rs in response(),
        ev in event(),
    ) {
        prop_assert_eq!(encode_datagram(&cf)[0], client_frame_index(&cf));
        prop_assert_eq!(encode_datagram(&rq)[0], request_index(&rq));
        prop_assert_eq!(encode_datagram(&sf)[0], server_frame_index(&sf));
        prop_assert_eq!(encode_datagram(&rs)[0], response_index(&rs));
        prop_assert_eq!(encode_datagram(&ev)[0], event_index(&ev));
    }
}

/// Fieldless enums encode as their position, and `Result` as `Ok`=0 / `Err`=1, as documented.
#[test]
fn fieldless_enums_encode_as_their_position() {
    fn check<T: Serialize + Debug>(all: &[T]) {
        for (i, v) in all.iter().enumerate() {
            assert_eq!(&encode_datagram(v)[..], &[i as u8], "{v:?}");
        }
    }
    check(&CLASSES);
    check(&DESTROY_REASONS);
    check(&KICK_REASONS);
    check(&ERROR_CODES);
    let ok: Result<Response, WireError> = Ok(Response::Pong);
    let err: Result<Response, WireError> = Err(WireError::new(ErrorCode::Internal, ""));
    assert_eq!(&encode_datagram(&ok)[..], &[0, 4]);
    assert_eq!(&encode_datagram(&err)[..], &[1, 18, 0]);
}

/// The stable error names are the same on QUIC (`as_str`) and in JSON (serde).
#[test]
fn error_code_json_names_are_the_stable_names() {
    for code in ERROR_CODES {
        let json = serde_json::to_string(&code).expect("serialises");
        assert_eq!(json, format!("\"{}\"", code.as_str()));
        let back: ErrorCode = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, code);
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness.
// ---------------------------------------------------------------------------------------------

proptest! {
    // Each case already holds several frames; 128 cases keep the file at a few seconds.
    #![proptest_config(ProptestConfig::with_cases(CASES))]
    /// Arbitrary bytes on the control stream give frames or an error, never a panic or a hang.
    #[test]
    fn arbitrary_bytes_never_panic_the_stream_reader(bytes in junk()) {
        let mut reader = FrameReader::<&[u8]>::new(&bytes, DEFAULT_MAX_FRAME);
        read_frames::<ClientFrame, _>(&mut reader, 64)?;
        let mut reader = FrameReader::<&[u8]>::new(&bytes, DEFAULT_MAX_FRAME);
        read_frames::<ServerFrame, _>(&mut reader, 64)?;
        let mut reader = FrameReader::<&[u8]>::new(&bytes, DEFAULT_MAX_FRAME);
        read_frames::<Event, _>(&mut reader, 64)?;
    }

    /// Arbitrary datagrams give an event or an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic_the_body_decoder(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_body::<Event>(&bytes);
        let _ = decode_body::<ClientFrame>(&bytes);
        let _ = decode_body::<ServerFrame>(&bytes);
    }

    /// Cutting a valid stream anywhere yields the whole frames before the cut, then a clean end if
    /// the cut falls between frames and `Truncated` otherwise.
    #[test]
    fn truncation_anywhere_is_truncated(
        cf in prop::collection::vec(client_frame(), 1..4),
        sf in prop::collection::vec(server_frame(), 1..4),
        ev in prop::collection::vec(event(), 1..4),
        c in chunk(),
    ) {
        truncations(&cf, c)?;
        truncations(&sf, c)?;
        truncations(&ev, c)?;
    }

    /// An announced length above the maximum is refused from the header alone: the peer has sent
    /// nothing else and the read still completes.
    #[test]
    fn oversized_length_is_refused_from_the_header_alone(
        (max, len) in (1u32..=4 * DEFAULT_MAX_FRAME).prop_flat_map(|max| (Just(max), max + 1..=u32::MAX)),
        c in chunk(),
    ) {
        let header = len.to_be_bytes();
        let stream = Trickle { data: &header, chunk: c, then_pending: true };
        let mut reader = FrameReader::new(stream, max);
        match ready(reader.read::<ClientFrame>()) {
            Some(Err(DecodeError::TooLarge { len: l, max: m })) => {
                prop_assert_eq!((l, m), (len, max));
            }
            Some(other) => prop_assert!(false, "expected TooLarge, got {:?}", other),
            None => prop_assert!(false, "reader waited for the body of an oversized frame"),
        }
    }

    /// The limit is inclusive: a body of exactly `max` bytes is read, one byte more is refused.
    #[test]
    fn the_frame_limit_is_inclusive(f in server_frame()) {
        let frame = encode_frame(&f);
        let len = (frame.len() - 4) as u32;
        let mut reader = FrameReader::new(&frame[..], len);
        let got = ready(reader.read::<ServerFrame>()).expect("completes");
        prop_assert_eq!(got.ok().flatten(), Some(f));
        let mut reader = FrameReader::new(&frame[..], len - 1);
        let got = ready(reader.read::<ServerFrame>()).expect("completes");
        prop_assert!(
            matches!(got, Err(DecodeError::TooLarge { len: l, max }) if l == len && max == len - 1),
            "{:?}", got
        );
    }

    /// Corrupting bytes of a valid stream or datagram gives frames or errors, never a panic.
    #[test]
    fn flipped_bytes_never_panic(
        wire in frame_stream(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
    ) {
        let mut bad = wire.clone();
        for (at, mask) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= mask;
        }
        let mut reader = FrameReader::<&[u8]>::new(&bad, DEFAULT_MAX_FRAME);
        read_frames::<ClientFrame, _>(&mut reader, 64)?;
        let mut reader = FrameReader::<&[u8]>::new(&bad, DEFAULT_MAX_FRAME);
        read_frames::<ServerFrame, _>(&mut reader, 64)?;
        let mut reader = FrameReader::<&[u8]>::new(&bad, DEFAULT_MAX_FRAME);
        read_frames::<Event, _>(&mut reader, 64)?;
        // The same corruption applied to the bodies read as datagrams.
        let _ = decode_body::<Event>(&bad[4.min(bad.len())..]);
        let _ = decode_body::<ClientFrame>(&bad[4.min(bad.len())..]);
        let _ = decode_body::<ServerFrame>(&bad[4.min(bad.len())..]);
    }

    /// A frame the reader cannot decode (e.g. an event variant from a newer server) is consumed
    /// whole, so a client can skip it and read the next frame, as the versioning rules ask.
    #[test]
    fn an_undecodable_frame_can_be_skipped(
        tag in EVENT_VARIANTS..128,
        junk in prop::collection::vec(any::<u8>(), 0..32),
        next in event(),
    ) {
        let mut body = vec![tag];
        body.extend(junk);
        let mut wire = (body.len() as u32).to_be_bytes().to_vec();
        wire.extend(&body);
        wire.extend_from_slice(&encode_frame(&next));
        let mut reader = FrameReader::<&[u8]>::new(&wire, DEFAULT_MAX_FRAME);
        let first = ready(reader.read::<Event>()).expect("completes");
        prop_assert!(matches!(first, Err(DecodeError::Malformed(_))), "{:?}", first);
        let second = ready(reader.read::<Event>()).expect("completes");
        prop_assert_eq!(second.ok().flatten(), Some(next));
    }
}

fn truncations<T>(values: &[T], chunk: usize) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let wire = concat_frames(values);
    // Offsets where a frame ends, with how many frames precede them.
    let mut boundaries = vec![0usize];
    for v in values {
        let last = *boundaries.last().unwrap_or(&0);
        boundaries.push(last + encode_frame(v).len());
    }
    for cut in 0..wire.len() {
        let whole = boundaries.iter().filter(|&&b| b <= cut).count() - 1;
        let mut reader = FrameReader::new(Trickle::new(&wire[..cut], chunk), DEFAULT_MAX_FRAME);
        let (got, end) = read_frames::<T, _>(&mut reader, values.len() + 1)?;
        prop_assert_eq!(&got[..], &values[..whole], "cut at {}", cut);
        if boundaries.contains(&cut) {
            prop_assert!(matches!(end, End::Clean), "cut at {}: {:?}", cut, end);
        } else {
            prop_assert!(
                matches!(end, End::Err(DecodeError::Truncated)),
                "cut at {}: {:?}",
                cut,
                end
            );
        }
    }
    Ok(())
}

/// The plain cases of the documented framing, spelled out.
#[test]
fn empty_stream_is_a_clean_end_and_zero_length_is_empty() {
    let mut reader = FrameReader::<&[u8]>::new(&[], DEFAULT_MAX_FRAME);
    assert!(matches!(
        ready(reader.read::<ClientFrame>()),
        Some(Ok(None))
    ));
    let mut reader = FrameReader::<&[u8]>::new(&[0, 0, 0, 0], DEFAULT_MAX_FRAME);
    assert!(matches!(
        ready(reader.read::<ClientFrame>()),
        Some(Err(DecodeError::Empty))
    ));
}

// ---------------------------------------------------------------------------------------------
// The ring's lag contract. Not wire protocol, but found while benchmarking the ring
// (benches/ring.rs) and kept here as the one test file of this change.
// ---------------------------------------------------------------------------------------------

/// `Read::Lagged { oldest }` is documented as "the oldest position still readable" and "where to
/// continue", and must be so even while a publish has stored its entry over the cursor's slot but
/// not yet advanced `tail`. (It used to answer `Lagged { oldest: pos }` there, the very position it
/// found overwritten, so a reader continuing at `oldest` busy-looped until the publisher advanced
/// `tail`; fixed in `Ring::read` by taking the overwriting entry's position into account.)
///
/// The window is made observable without threads: the overwritten entry is dropped inside the
/// slot store, before `tail` moves, and its frame's owner reads the ring from its `Drop`.
#[test]
fn lagged_oldest_is_readable_even_mid_publish() {
    use roomcast::room::{Read, Ring};
    use std::sync::{Arc, Mutex, Weak};

    type Seen = Arc<Mutex<Vec<(String, String)>>>;
    struct Probe {
        ring: Weak<Ring>,
        seen: Seen,
    }
    impl AsRef<[u8]> for Probe {
        fn as_ref(&self) -> &[u8] {
            &[]
        }
    }
    impl Drop for Probe {
        fn drop(&mut self) {
            let Some(ring) = self.ring.upgrade() else {
                return;
            };
            let first = ring.read(0);
            let again = match &first {
                Read::Lagged { oldest } => format!("{:?}", ring.read(*oldest)),
                _ => String::new(),
            };
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.push((format!("{first:?}"), again));
        }
    }

    let ring = Arc::new(Ring::new(2));
    let seen: Seen = Arc::default();
    let entry = |frame: Bytes| roomcast::room::Payload {
        class: Class::Normal,
        frame,
        datagram: None,
        history: None,
    };
    let probe = Bytes::from_owner(Probe {
        ring: Arc::downgrade(&ring),
        seen: seen.clone(),
    });
    ring.publish(1, |_, _| entry(probe));
    ring.publish(1, |_, _| entry(Bytes::new()));
    // Position 2 overwrites position 0's slot; the probe reads position 0 from inside the store.
    ring.publish(1, |_, _| entry(Bytes::new()));

    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(
        seen.len(),
        1,
        "the probe ran once, inside the overwriting store"
    );
    let (first, again) = &seen[0];
    assert!(
        first.starts_with("Lagged"),
        "position 0 is overwritten: {first}"
    );
    assert!(
        again.starts_with("Entry"),
        "`oldest` must be readable, as documented; read(0) gave {first}, read(oldest) gave {again}"
    );
}
