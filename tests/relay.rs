//! QUIC-level integration tests: a real relay on `127.0.0.1:0`, real QUIC and TLS, real clients.

mod common;

use bytes::Bytes;
use common::{
    Method, TestServer, body, code, metric, next_closed, next_event, next_message,
    next_message_lane, until, within,
};
use roomcast::client::{Client, ClientError, ClientEvent};
use roomcast::protocol::{
    Class, ClientFrame, CloseCode, DestroyReason, ErrorCode, Event, KickReason, PROTOCOL_VERSION,
    ServerFrame, encode_frame,
};
use std::sync::Arc;
use tokio::task::JoinSet;

/// A raw QUIC connection (no client library) that has sent a hello with `token`: the connection,
/// its control stream's send half and the server's first frame on it.
async fn raw_hello(
    server: &TestServer,
    token: String,
) -> (
    common::RawConn,
    quinn::SendStream,
    Result<Option<ServerFrame>, roomcast::protocol::DecodeError>,
) {
    let raw = server.raw_connect().await;
    let (mut send, recv) = raw.conn.open_bi().await.expect("control stream");
    send.write_all(&encode_frame(&ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        token,
    }))
    .await
    .expect("hello written");
    let mut reader = roomcast::protocol::FrameReader::new(recv, 1 << 20);
    let first = within("the server's first frame", reader.read::<ServerFrame>()).await;
    (raw, send, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_returns_room_info_and_leave_ends_membership() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;

    let a = alice.join("lobby", -1).await.expect("alice joins");
    assert_eq!(a.room.id, "lobby");
    assert_eq!(a.room.name, "lobby");
    assert_eq!(a.room.member_count, 1);
    assert_eq!(a.room.members, ["alice"]);
    assert_eq!(a.last_seq, 0);
    assert!(!a.muted);
    assert!(a.history.is_empty());

    let b = bob.join("lobby", -1).await.expect("bob joins");
    assert_eq!(b.room.member_count, 2);
    assert_eq!(b.room.members, ["alice", "bob"]);
    assert_eq!(b.room.epoch, a.room.epoch);

    let info = alice.room_info("lobby").await.expect("room info");
    assert_eq!(
        (info.member_count, info.members.clone()),
        (2, vec!["alice".to_owned(), "bob".to_owned()])
    );

    let (seq, ts) = alice
        .send("lobby", "chat", body("hi"), false)
        .await
        .expect("alice sends");
    assert_eq!(seq, 1);
    for c in [&alice, &bob] {
        let m = next_message(c).await;
        assert_eq!(
            (m.seq, m.ts, m.from.as_str(), m.msg_type.as_str()),
            (1, ts, "alice", "chat")
        );
        assert_eq!(m.body, "hi");
    }

    alice.leave("lobby").await.expect("alice leaves");
    let info = bob.room_info("lobby").await.expect("room info");
    assert_eq!(
        (info.member_count, info.members),
        (1, vec!["bob".to_owned()])
    );
    assert_eq!(
        code(alice.send("lobby", "chat", body("gone"), false).await),
        ErrorCode::NotInRoom
    );
    assert_eq!(code(alice.leave("lobby").await), ErrorCode::NotInRoom);

    // The room goes on for the others: bob's send is seq 2 and alice, having left, does not get it
    // (her next event is the message of a room she is still in).
    server.create_room("side").await;
    alice.join("side", -1).await.expect("alice joins side");
    let (seq, _) = bob
        .send("lobby", "chat", body("after"), false)
        .await
        .expect("bob sends");
    assert_eq!(seq, 2);
    assert_eq!(next_message(&bob).await.seq, 2);
    alice
        .send("side", "chat", body("marker"), false)
        .await
        .expect("alice sends to side");
    let m = next_message(&alice).await;
    assert_eq!(
        (m.room.as_str(), m.body.as_ref()),
        ("side", b"marker".as_ref())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_200_members_exactly_once_in_order() {
    const MEMBERS: usize = 200;
    const MESSAGES: u64 = 50;
    // Batched durability: with the default (sync) every send reply waits for an fsync, which makes
    // this test about the disk rather than the fan-out.
    let server = Arc::new(
        TestServer::start(|c| c.store.durability = roomcast::store::Durability::Batched).await,
    );
    server.create_room("big").await;

    let mut members: Vec<Client> = Vec::with_capacity(MEMBERS);
    for batch in 0..MEMBERS / 50 {
        let mut set = JoinSet::new();
        for i in batch * 50..(batch + 1) * 50 {
            let server = server.clone();
            set.spawn(async move {
                let c = server.client(&format!("member-{i:03}")).await;
                let info = c.join("big", -1).await.expect("member joins");
                assert_eq!(info.last_seq, 0);
                c
            });
        }
        while let Some(c) = set.join_next().await {
            members.push(c.expect("member task"));
        }
    }
    let sender = server.client("sender").await;
    let info = sender.join("big", -1).await.expect("sender joins");
    assert_eq!(info.room.member_count, MEMBERS as u64 + 1);
    assert_eq!(
        info.room.members.len(),
        20,
        "room info lists up to 20 members"
    );
    assert_eq!(info.last_seq, 0);

    let mut sent = Vec::new();
    for i in 1..=MESSAGES {
        let (seq, ts) = sender
            .send("big", "chat", body(&format!("m{i}")), false)
            .await
            .expect("send");
        assert_eq!(seq, i);
        sent.push((seq, ts));
    }
    // A final message: once a member has it, any duplicate or late copy of 1..=50 would have shown
    // up before it (delivery is in seq order per room).
    let (end_seq, _) = sender
        .send("big", "end", Bytes::new(), false)
        .await
        .expect("send end");
    assert_eq!(end_seq, MESSAGES + 1);
    let sent = Arc::new(sent);

    members.push(sender);
    let mut readers = JoinSet::new();
    for c in members {
        let sent = sent.clone();
        readers.spawn(async move {
            let mut got = Vec::new();
            loop {
                let m = next_message(&c).await;
                assert_eq!((m.room.as_str(), m.from.as_str()), ("big", "sender"));
                assert_eq!(m.class, Class::Normal);
                if m.msg_type == "end" {
                    assert_eq!(m.seq, MESSAGES + 1, "{}", c.user());
                    break;
                }
                assert_eq!(m.body, format!("m{}", m.seq).as_bytes(), "{}", c.user());
                got.push((m.seq, m.ts));
            }
            assert_eq!(got, *sent, "{} got every message once, in order", c.user());
            c.user().to_owned()
        });
    }
    let mut done = 0;
    while let Some(r) = readers.join_next().await {
        r.expect("reader task");
        done += 1;
    }
    assert_eq!(done, MEMBERS + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_missing_room_is_room_not_found() {
    let server = TestServer::start(|_| {}).await;
    let alice = server.client("alice").await;
    assert_eq!(
        code(alice.join("nowhere", -1).await),
        ErrorCode::RoomNotFound
    );
    assert_eq!(
        code(alice.room_info("nowhere").await),
        ErrorCode::RoomNotFound
    );
    assert_eq!(code(alice.leave("nowhere").await), ErrorCode::RoomNotFound);
    assert_eq!(code(alice.join("bad id", -1).await), ErrorCode::BadRequest);
    // The connection is still usable.
    alice.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_without_joining_is_not_in_room() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    let err = alice
        .send("lobby", "chat", body("hi"), false)
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Some(ErrorCode::NotInRoom));
    assert_eq!(
        code(alice.send("nowhere", "chat", body("hi"), false).await),
        ErrorCode::RoomNotFound
    );
    // Message types are checked too.
    alice.join("lobby", -1).await.expect("joins");
    assert_eq!(
        code(alice.send("lobby", "rc:kick", body("x"), false).await),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(alice.send("lobby", "", body("x"), false).await),
        ErrorCode::BadRequest
    );
    let (seq, _) = alice
        .send("lobby", "chat", body("ok"), false)
        .await
        .expect("member sends");
    assert_eq!(seq, 1, "refused sends take no sequence number");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_expired_tokens_are_refused_and_counted() {
    let server = TestServer::start(|_| {}).await;
    // This is the only test in this binary that presents a bad token, so the process-wide counter
    // moves by exactly what it does.
    let before =
        metric(&server.metrics().await, "roomcast_auth_failures_total", &[]).unwrap_or(0.0);

    let forged = server.connect(server.forged_token("mallory")).await;
    match forged {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert_eq!(e.message, "token signature is invalid");
        }
        Err(other) => panic!("expected Refused(UNAUTHORIZED), got {other:?}"),
        Ok(_) => panic!("a forged token connected"),
    }
    let expired = server.connect(server.expired_token("alice")).await;
    match expired {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.code, ErrorCode::Unauthorized);
            assert_eq!(e.message, "token expired");
        }
        Err(other) => panic!("expected Refused(UNAUTHORIZED), got {other:?}"),
        Ok(_) => panic!("an expired token connected"),
    }

    // On the wire: the refusal arrives on the control stream, then the close with its own code.
    let (raw, _send, first) = raw_hello(&server, server.forged_token("mallory")).await;
    match first {
        Ok(Some(ServerFrame::Refused(e))) => assert_eq!(e.code, ErrorCode::Unauthorized),
        other => panic!("expected Refused, got {other:?}"),
    }
    let (code, reason) = raw.closed().await;
    assert_eq!(code, u64::from(CloseCode::Unauthorized.code()));
    assert_eq!(reason, "token signature is invalid");

    let after = metric(&server.metrics().await, "roomcast_auth_failures_total", &[])
        .expect("auth failures are exported");
    assert_eq!(after - before, 3.0);

    // The same user with a good token is fine.
    let alice = server.client("alice").await;
    alice.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_protocol_version_is_refused_with_a_protocol_close() {
    let server = TestServer::start(|_| {}).await;
    let raw = server.raw_connect().await;
    let (mut send, recv) = raw.conn.open_bi().await.expect("control stream");
    send.write_all(&encode_frame(&ClientFrame::Hello {
        version: PROTOCOL_VERSION + 1,
        token: server.token("alice"),
    }))
    .await
    .expect("hello written");
    let mut reader = roomcast::protocol::FrameReader::new(recv, 1 << 20);
    match within("the refusal", reader.read::<ServerFrame>()).await {
        Ok(Some(ServerFrame::Refused(e))) => {
            assert_eq!(e.code, ErrorCode::BadRequest);
            assert!(e.message.contains("protocol version 2"), "{}", e.message);
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    let (code, _) = raw.closed().await;
    assert_eq!(code, u64::from(CloseCode::Protocol.code()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_too_large_and_oversized_frames_close_the_connection() {
    let server = TestServer::start(|_| {}).await;
    assert_eq!(server.config.limits.client_body, 16 * 1024);
    assert_eq!(server.config.limits.max_frame, 64 * 1024);
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    alice.join("lobby", -1).await.expect("joins");

    let limit = server.config.limits.client_body;
    let (seq, _) = alice
        .send("lobby", "blob", Bytes::from(vec![7u8; limit]), false)
        .await
        .expect("a body of exactly the limit is accepted");
    assert_eq!(seq, 1);
    let m = next_message(&alice).await;
    assert_eq!((m.seq, m.body.len()), (1, limit));

    let err = alice
        .send("lobby", "blob", Bytes::from(vec![7u8; limit + 1]), false)
        .await
        .expect_err("one byte over");
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    // Still connected and the refused message took no seq.
    let (seq, _) = alice
        .send("lobby", "chat", body("still here"), false)
        .await
        .expect("sends");
    assert_eq!(seq, 2);
    assert_eq!(next_message(&alice).await.seq, 2);

    // A frame over limits.max_frame: the client library refuses it before writing and stays
    // connected...
    let max = server.config.limits.max_frame as usize;
    assert_eq!(alice.max_frame() as usize, max);
    let err = alice
        .send("lobby", "blob", Bytes::from(vec![7u8; max + 1]), false)
        .await
        .expect_err("frame over max_frame");
    assert_eq!(err.code(), Some(ErrorCode::TooLarge), "{err}");
    assert!(
        err.to_string().contains("exceeds the relay's maximum"),
        "{err}"
    );
    let (seq, _) = alice
        .send("lobby", "chat", body("after the refusal"), false)
        .await
        .expect("still connected");
    assert_eq!(seq, 3);

    // ...and a client that writes one anyway is closed: the server refuses it from its length
    // prefix alone.
    let (raw, mut send, first) = raw_hello(&server, server.token("mallory")).await;
    match first {
        Ok(Some(ServerFrame::Welcome { .. })) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    send.write_all(&((max + 1) as u32).to_be_bytes())
        .await
        .expect("length prefix written");
    let (code, reason) = raw.closed().await;
    assert_eq!(code, u64::from(CloseCode::Protocol.code()));
    assert!(reason.starts_with("frame of "), "{reason}");
    assert!(
        reason.ends_with(&format!("exceeds the maximum of {max}")),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_control_stream_closes_with_protocol() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;

    // 1. A valid hello, then a well-delimited frame whose body is not a frame.
    let (raw, mut send, first) = raw_hello(&server, server.token("mallory")).await;
    match first {
        Ok(Some(ServerFrame::Welcome {
            user, max_frame, ..
        })) => {
            assert_eq!((user.as_str(), max_frame), ("mallory", 64 * 1024));
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    let mut garbage = 16u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 16]);
    send.write_all(&garbage).await.expect("garbage written");
    let (code, reason) = raw.closed().await;
    assert_eq!(code, 3);
    assert_eq!(code, u64::from(CloseCode::Protocol.code()));
    assert!(reason.starts_with("malformed frame"), "{reason}");

    // 2. Length-prefixed garbage instead of a hello.
    let raw = server.raw_connect().await;
    let (mut send, _recv) = raw.conn.open_bi().await.expect("control stream");
    send.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("garbage written");
    let (code, reason) = raw.closed().await;
    assert_eq!(code, u64::from(CloseCode::Protocol.code()));
    assert!(reason.starts_with("bad hello: malformed frame"), "{reason}");

    // 3. Not even a plausible length: text where the length prefix should be.
    let raw = server.raw_connect().await;
    let (mut send, _recv) = raw.conn.open_bi().await.expect("control stream");
    send.write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("garbage written");
    let (code, reason) = raw.closed().await;
    assert_eq!(code, u64::from(CloseCode::Protocol.code()));
    assert!(reason.starts_with("bad hello: frame of "), "{reason}");

    // 4. A request before the hello.
    let raw = server.raw_connect().await;
    let (mut send, _recv) = raw.conn.open_bi().await.expect("control stream");
    send.write_all(&encode_frame(&ClientFrame::Request {
        id: 1,
        request: roomcast::protocol::Request::Ping,
    }))
    .await
    .expect("request written");
    let (code, reason) = raw.closed().await;
    assert_eq!(code, u64::from(CloseCode::Protocol.code()));
    assert_eq!(reason, "the first frame must be a hello");

    // The server is unharmed: a normal client connects, joins and sends.
    let alice = server.client("alice").await;
    alice.join("lobby", -1).await.expect("joins");
    let (seq, _) = alice
        .send("lobby", "chat", body("fine"), false)
        .await
        .expect("sends");
    assert_eq!(seq, 1);
    assert_eq!(next_message(&alice).await.body, "fine");
}

/// The `CloseCode::Protocol` documentation lists a timeout among its causes, and every other
/// refusal of a connection names itself with a close code and a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_hello_times_out_with_a_protocol_close() {
    let server = TestServer::start(|c| c.transport.hello_timeout_ms = 300).await;
    let raw = server.raw_connect().await;
    // Open the control stream with half a length prefix and never finish the hello.
    let (mut send, _recv) = raw.conn.open_bi().await.expect("control stream");
    send.write_all(&[0, 0]).await.expect("written");
    let (code, reason) = raw.closed().await;
    assert_eq!(
        code,
        u64::from(CloseCode::Protocol.code()),
        "closed with code {code} and reason {reason:?}"
    );
    assert!(!reason.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_a_room_notifies_its_members() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("doomed").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    alice.join("doomed", -1).await.expect("alice joins");
    bob.join("doomed", -1).await.expect("bob joins");
    alice
        .send("doomed", "chat", body("last words"), false)
        .await
        .expect("sends");

    let r = server.api(Method::DELETE, "/v1/rooms/doomed", None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    for c in [&alice, &bob] {
        // Everything published before the destroy is delivered first.
        let m = next_message(c).await;
        assert_eq!((m.seq, m.body.as_ref()), (1, b"last words".as_ref()));
        assert_eq!(
            next_event(c).await,
            ClientEvent::RoomDestroyed {
                room: "doomed".into(),
                reason: DestroyReason::Manual,
            }
        );
    }
    assert_eq!(
        code(alice.send("doomed", "chat", body("hello?"), false).await),
        ErrorCode::RoomNotFound
    );
    assert_eq!(code(bob.join("doomed", -1).await), ErrorCode::RoomNotFound);

    // A room re-created with the same id is a new life: new epoch, seq from 1, no old members.
    server.create_room("doomed").await;
    let info = alice.join("doomed", -1).await.expect("rejoins");
    assert_eq!(info.room.member_count, 1);
    assert_eq!(info.last_seq, 0);
    let (seq, _) = alice
        .send("doomed", "chat", body("again"), false)
        .await
        .expect("sends");
    assert_eq!(seq, 1);
    let m = next_message(&alice).await;
    assert_eq!((m.seq, m.body.as_ref()), (1, b"again".as_ref()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_priority_messages_arrive_as_datagrams() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    for c in [&alice, &bob] {
        c.join("lobby", -1).await.expect("joins");
    }

    let (low_seq, low_ts) = alice
        .send("lobby", "cursor", body("x=1"), true)
        .await
        .expect("low send");
    let (normal_seq, _) = alice
        .send("lobby", "chat", body("hello"), false)
        .await
        .expect("normal send");
    assert_eq!((low_seq, normal_seq), (1, 2));

    for c in [&bob, &alice] {
        // The two lanes are not ordered with each other: collect both, then check each.
        let mut got = [next_message_lane(c).await, next_message_lane(c).await];
        got.sort_by_key(|(m, _)| m.seq);
        let (low, low_dgram) = &got[0];
        assert_eq!(
            (
                low.seq,
                low.ts,
                low.class,
                low.msg_type.as_str(),
                *low_dgram
            ),
            (1, low_ts, Class::Low, "cursor", true),
            "{}",
            c.user()
        );
        assert_eq!(low.body, "x=1");
        let (normal, normal_dgram) = &got[1];
        assert_eq!(
            (normal.seq, normal.class, *normal_dgram),
            (2, Class::Normal, false),
            "{}",
            c.user()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_datagram_support_low_messages_come_on_the_stream() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client_with("alice", |c| c.datagrams = false).await;
    let carol = server.client_with("carol", |c| c.datagrams = false).await;
    for c in [&alice, &carol] {
        c.join("lobby", -1).await.expect("joins");
    }
    let (low_seq, low_ts) = alice
        .send("lobby", "cursor", body("x=1"), true)
        .await
        .expect("low send");
    let (normal_seq, _) = alice
        .send("lobby", "chat", body("hello"), false)
        .await
        .expect("normal send");
    assert_eq!((low_seq, normal_seq), (1, 2));

    for c in [&carol, &alice] {
        // One lane: in seq order.
        let (m, dgram) = next_message_lane(c).await;
        assert_eq!(
            (m.seq, m.ts, m.class, m.msg_type.as_str(), dgram),
            (1, low_ts, Class::Low, "cursor", false),
            "{}",
            c.user()
        );
        assert_eq!(m.body, "x=1");
        let (m, dgram) = next_message_lane(c).await;
        assert_eq!(
            (m.seq, m.class, dgram),
            (2, Class::Normal, false),
            "{}",
            c.user()
        );
    }

    // Low messages are not kept for join history.
    let dave = server.client("dave").await;
    let info = dave.join("lobby", 10).await.expect("joins");
    let seqs: Vec<u64> = info.history.iter().map(|h| h.message.seq).collect();
    assert_eq!(seqs, [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_on_one_device_kicks_the_other() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    server.create_room("side").await;
    let phone = server.client("alice").await;
    let laptop = server.client("alice").await;
    assert_ne!(phone.conn_id(), laptop.conn_id());
    let bob = server.client("bob").await;

    for c in [&phone, &laptop] {
        c.join("lobby", -1).await.expect("joins lobby");
        c.join("side", -1).await.expect("joins side");
    }
    let info = bob.join("lobby", -1).await.expect("bob joins");
    assert_eq!(info.room.member_count, 2, "two devices are one member");
    assert_eq!(info.room.members, ["alice", "bob"]);

    // Both devices receive the room's messages.
    bob.send("lobby", "chat", body("hi alice"), false)
        .await
        .expect("sends");
    for c in [&phone, &laptop] {
        let m = next_message(c).await;
        assert_eq!((m.seq, m.from.as_str()), (1, "bob"));
    }

    phone.leave("lobby").await.expect("leaves");
    let info = bob.room_info("lobby").await.expect("info");
    assert_eq!(
        (info.member_count, info.members),
        (1, vec!["bob".to_owned()])
    );
    assert_eq!(
        next_event(&laptop).await,
        ClientEvent::Kicked {
            room: "lobby".into(),
            reason: KickReason::OtherDevice,
        }
    );
    assert_eq!(
        code(laptop.send("lobby", "chat", body("x"), false).await),
        ErrorCode::NotInRoom
    );

    // Neither device gets the lobby any more, and the leaving device got no kick: after a message
    // to the lobby, the next event of each is a marker in the room they are still in.
    bob.send("lobby", "chat", body("after"), false)
        .await
        .expect("sends");
    phone
        .send("side", "chat", body("marker"), false)
        .await
        .expect("sends marker");
    for c in [&phone, &laptop] {
        let m = next_message(c).await;
        assert_eq!(
            (m.room.as_str(), m.seq, m.body.as_ref()),
            ("side", 1, b"marker".as_ref())
        );
    }
}

/// A membership ends after everything published during it: a ban's `Kicked` comes after the
/// messages sent before the ban, and a member that leaves and joins again gets the messages from
/// before its leave, then those after its new join, none from in between. The longest write
/// window (100 ms) holds the messages back in the delivery tasks while the ban and the leave
/// happen, so the memberships end while their messages are still unread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_ends_after_everything_published_during_it() {
    let server = TestServer::start(|c| c.transport.delivery_window_us = 100_000).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    let carol = server.client("carol").await;
    for c in [&alice, &bob, &carol] {
        c.join("lobby", -1).await.expect("joins");
    }
    for text in ["one", "two"] {
        carol
            .send("lobby", "chat", body(text), false)
            .await
            .expect("sends");
    }
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/bans",
            Some(serde_json::json!({"user_ids": ["alice"], "minutes": 5})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    bob.leave("lobby").await.expect("bob leaves");
    carol
        .send("lobby", "chat", body("missed"), false)
        .await
        .expect("sends");
    bob.join("lobby", -1).await.expect("bob joins again");
    carol
        .send("lobby", "chat", body("three"), false)
        .await
        .expect("sends");

    // Messages and kicks in arrival order; notices (members joining and leaving) aside.
    async fn story(c: &Client, until: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = match next_event(c).await {
                ClientEvent::Message { message, .. } => {
                    String::from_utf8_lossy(&message.body).into_owned()
                }
                ClientEvent::Kicked { reason, .. } => format!("kicked:{}", reason.as_str()),
                ClientEvent::Notice(_) => continue,
                other => panic!("unexpected {other:?}"),
            };
            let last = line == until;
            seen.push(line);
            if last {
                return seen;
            }
        }
    }
    assert_eq!(
        story(&alice, "kicked:banned").await,
        ["one", "two", "kicked:banned"]
    );
    // Her own notice of the ban follows the kick.
    match next_event(&alice).await {
        ClientEvent::Notice(Event::Banned { users, .. }) => assert_eq!(users, ["alice"]),
        other => panic!("expected Banned, got {other:?}"),
    }
    assert_eq!(story(&bob, "three").await, ["one", "two", "three"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_room_is_too_many_with_rooms_per_user_2() {
    let server = TestServer::start(|c| c.limits.rooms_per_user = 2).await;
    for r in ["r1", "r2", "r3"] {
        server.create_room(r).await;
    }
    let alice = server.client("alice").await;
    alice.join("r1", -1).await.expect("first");
    alice.join("r2", -1).await.expect("second");
    assert_eq!(code(alice.join("r3", -1).await), ErrorCode::TooManyRooms);
    // Re-joining a room the user is in is not a new room.
    alice.join("r2", -1).await.expect("rejoin");
    // The limit is per user, across devices.
    let laptop = server.client("alice").await;
    assert_eq!(code(laptop.join("r3", -1).await), ErrorCode::TooManyRooms);
    laptop.join("r1", -1).await.expect("a room the user is in");
    // Leaving frees a slot.
    alice.leave("r1").await.expect("leaves");
    alice.join("r3", -1).await.expect("third after leaving one");
    assert_eq!(code(alice.join("r1", -1).await), ErrorCode::TooManyRooms);
}

/// The per-user room limit holds when several devices join different rooms at once: the user
/// ends in exactly `rooms_per_user` rooms, and every other join is refused with TOO_MANY_ROOMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_from_several_devices_respect_rooms_per_user() {
    const ROOMS: usize = 8;
    const DEVICES: usize = 4;
    let server = TestServer::start(|c| c.limits.rooms_per_user = 2).await;
    for r in 0..ROOMS {
        server.create_room(&format!("r{r}")).await;
    }
    let mut devices = Vec::new();
    for _ in 0..DEVICES {
        devices.push(Arc::new(server.client("alice").await));
    }
    let mut joins = JoinSet::new();
    for (d, device) in devices.iter().enumerate() {
        for r in 0..ROOMS {
            let device = device.clone();
            // Each device starts at a different room, so joins of different rooms overlap.
            let room = format!("r{}", (r + d * 2) % ROOMS);
            joins.spawn(async move { (room.clone(), device.join(&room, -1).await) });
        }
    }
    let mut joined = std::collections::BTreeSet::new();
    while let Some(done) = joins.join_next().await {
        let (room, result) = done.expect("join task");
        match result {
            Ok(_) => {
                joined.insert(room);
            }
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::TooManyRooms), "{e}"),
        }
    }
    assert_eq!(joined.len(), 2, "rooms joined: {joined:?}");
    let member_of: Vec<String> = (0..ROOMS)
        .map(|r| format!("r{r}"))
        .filter(|id| {
            let info = server.relay().room_info(id, 10).expect("room");
            info.members.iter().any(|m| m == "alice")
        })
        .collect();
    assert_eq!(member_of.len(), 2, "{member_of:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_history_returns_the_newest_messages_oldest_first() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    alice.join("lobby", -1).await.expect("joins");
    let mut sent = Vec::new();
    for i in 1..=5 {
        sent.push(
            alice
                .send("lobby", "chat", body(&format!("m{i}")), false)
                .await
                .expect("sends"),
        );
    }

    let bob = server.client("bob").await;
    let info = bob.join("lobby", 3).await.expect("joins with history 3");
    assert_eq!(info.last_seq, 5);
    assert!(info.history.iter().all(|h| !h.recalled));
    let got: Vec<(u64, u64, String, Bytes)> = info
        .history
        .iter()
        .map(|h| {
            let m = &h.message;
            (m.seq, m.ts, m.from.clone(), m.body.clone())
        })
        .collect();
    let want: Vec<(u64, u64, String, Bytes)> = (3..=5)
        .map(|i| {
            let (seq, ts) = sent[i - 1];
            (seq, ts, "alice".to_owned(), body(&format!("m{i}")))
        })
        .collect();
    assert_eq!(got, want);

    let carol = server.client("carol").await;
    let info = carol
        .join("lobby", -1)
        .await
        .expect("joins with no history");
    assert!(info.history.is_empty());
    assert_eq!(info.last_seq, 5);

    let dave = server.client("dave").await;
    let info = dave.join("lobby", 0).await.expect("joins with the default");
    let seqs: Vec<u64> = info.history.iter().map(|h| h.message.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5], "the default (10) covers all five");

    let erin = server.client("erin").await;
    assert_eq!(code(erin.join("lobby", 51).await), ErrorCode::BadRequest);
    assert_eq!(code(erin.join("lobby", -2).await), ErrorCode::BadRequest);
    let info = erin.join("lobby", 50).await.expect("50 is the most");
    assert_eq!(info.history.len(), 5);

    // History is not delivered again on the delivery stream: the next message is the next seq.
    let (seq, _) = alice
        .send("lobby", "chat", body("m6"), false)
        .await
        .expect("sends");
    assert_eq!(seq, 6);
    for c in [&bob, &carol, &dave, &erin] {
        assert_eq!(next_message(c).await.seq, 6, "{}", c.user());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_and_returns() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    alice.join("lobby", -1).await.expect("joins");

    server.shutdown().await;

    for c in [&alice, &bob] {
        let (code, reason) = next_closed(c).await;
        assert_eq!(code, Some(CloseCode::Shutdown), "{}", c.user());
        assert_eq!(reason, "server shutting down");
        assert!(
            within("the event stream to end", c.next_event())
                .await
                .is_none(),
            "Closed is the last event"
        );
    }
    match alice.ping().await {
        Err(ClientError::Closed { code, reason }) => {
            assert_eq!(code, Some(CloseCode::Shutdown));
            assert_eq!(reason, "server shutting down");
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}

/// What a member that reads late finds: messages in seq order, and gaps that account for every
/// message it did not get. Returns `(delivered, gap_normal_total, gap_events)`.
async fn read_with_gaps(client: &Client, room: &str, last: u64) -> (u64, u64, u64) {
    let (mut delivered, mut skipped, mut gaps) = (0u64, 0u64, 0u64);
    let mut prev = 0u64;
    let mut pending_gap: Option<u64> = None;
    while prev < last {
        match next_event(client).await {
            ClientEvent::Message { message, .. } => {
                assert_eq!(message.room, room);
                let expected = prev + 1 + pending_gap.take().unwrap_or(0);
                assert_eq!(
                    message.seq, expected,
                    "after seq {prev}, a message must follow directly or after a gap of exactly the skipped count"
                );
                prev = message.seq;
                delivered += 1;
            }
            ClientEvent::Gap {
                room: r,
                low,
                normal,
            } => {
                assert_eq!(r, room);
                assert_eq!(low, 0, "no low messages were sent");
                assert!(normal > 0, "a gap reports what it skipped");
                assert!(pending_gap.is_none(), "two gaps in a row");
                pending_gap = Some(normal);
                skipped += normal;
                gaps += 1;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    (delivered, skipped, gaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_skips_with_an_exact_gap_and_never_blocks_the_sender() {
    const MESSAGES: u64 = 500;
    // Large enough that 500 of them overflow the client's 1 MiB stream window many times over, so
    // the lagging member's delivery really stalls while the 16-slot ring moves on.
    const BODY: usize = 8 * 1024;
    let server = TestServer::start(|c| {
        c.limits.ring_capacity = 16;
        // Sends and deliveries alternate here, one message per round trip: the write window
        // would hold each one back (50 ms by default) for nothing to batch it with.
        c.transport.delivery_window_us = 0;
        // This test is about gaps; the slow member's stalled write must not trip the too-slow
        // close however long the sending phase takes on a busy machine.
        c.transport.slow_close_ms = 600_000;
        // Not about the disk: no fsync before each of the 500 send replies.
        c.store.durability = roomcast::store::Durability::Batched;
    })
    .await;
    server.create_room("busy").await;
    let sender = server.client("sender").await;
    let fast = server.client("fast").await;
    let slow = server.client_with("slow", |c| c.event_buffer = 1).await;
    for c in [&sender, &fast, &slow] {
        c.join("busy", -1).await.expect("joins");
    }

    let payload = Bytes::from(vec![b'x'; BODY]);
    for i in 1..=MESSAGES {
        let (seq, _) = sender
            .send("busy", "chat", payload.clone(), false)
            .await
            .expect("every send succeeds while a member lags");
        assert_eq!(seq, i);
        // Pace on the fast member's delivery (an event, not a clock): it never lags, so it must
        // receive every message, while the slow member reads nothing at all.
        let m = next_message(&fast).await;
        assert_eq!((m.seq, m.body.len()), (i, BODY));
    }

    let (delivered, skipped, gaps) = read_with_gaps(&slow, "busy", MESSAGES).await;
    assert!(gaps >= 1, "the slow member lagged and was told so");
    assert!(skipped > 0);
    assert_eq!(
        delivered + skipped,
        MESSAGES,
        "every message is delivered or counted in a gap (delivered {delivered}, skipped {skipped})"
    );
}

/// SPEC §7: protected messages (system messages from the admin API) are never shed while the
/// connection lives; a connection that cannot take them is closed `too_slow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_never_silently_loses_protected_messages() {
    const MESSAGES: u64 = 300;
    let server = TestServer::start(|c| {
        c.limits.ring_capacity = 16;
        // One message per round trip, as above: nothing for the write window to batch.
        c.transport.delivery_window_us = 0;
        // Not about the disk: no fsync before each of the admin send replies.
        c.store.durability = roomcast::store::Durability::Batched;
    })
    .await;
    server.create_room("busy").await;
    let fast = server.client("fast").await;
    let slow = server.client_with("slow", |c| c.event_buffer = 1).await;
    for c in [&fast, &slow] {
        c.join("busy", -1).await.expect("joins");
    }
    let body = "p".repeat(8 * 1024);
    for i in 1..=MESSAGES {
        let r = server
            .api(
                Method::POST,
                "/v1/rooms/busy/messages",
                Some(serde_json::json!({ "type": "notice", "body": body })),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["seq"], i);
        let m = next_message(&fast).await;
        assert_eq!((m.seq, m.class), (i, Class::Protected));
    }
    // Either every protected message arrives, in order, or the connection is closed as too slow.
    let mut prev = 0;
    while prev < MESSAGES {
        match next_event(&slow).await {
            ClientEvent::Message { message, .. } => {
                assert_eq!(
                    message.seq,
                    prev + 1,
                    "protected message(s) {}..{} were skipped without a trace",
                    prev + 1,
                    message.seq
                );
                prev = message.seq;
            }
            ClientEvent::Closed { code, reason } => {
                assert_eq!(code, Some(CloseCode::TooSlow));
                assert_eq!(reason, "too_slow");
                return;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_on_one_port_serve_every_client() {
    let server = TestServer::start(|c| c.transport.endpoints = 3).await;
    server.create_room("multi").await;
    let mut clients = Vec::new();
    for i in 0..12 {
        let c = server.client(&format!("u{i}")).await;
        c.join("multi", -1).await.expect("joins");
        clients.push(c);
    }
    let (seq, _) = clients[0]
        .send("multi", "chat", "hi".into(), false)
        .await
        .expect("sends");
    for c in &clients {
        let m = next_message(c).await;
        assert_eq!((m.seq, m.body.as_ref()), (seq, b"hi".as_ref()));
    }
}

/// A sender sends `n` messages into a fresh room as fast as they are acknowledged; a reader must
/// receive every one, in order, with its body.
async fn send_then_read_in_order(server: &TestServer, room: &str, n: u32) {
    server.create_room(room).await;
    let sender = server.client("sender").await;
    let reader = server.client("reader").await;
    sender.join(room, -1).await.expect("joins");
    reader.join(room, -1).await.expect("joins");
    let mut sent = Vec::new();
    for i in 0..n {
        let body = Bytes::from(format!("m{i}"));
        let (seq, _) = sender
            .send(room, "chat", body.clone(), false)
            .await
            .expect("sends");
        sent.push((seq, body));
    }
    for (seq, body) in sent {
        let m = next_message(&reader).await;
        assert_eq!((m.seq, m.body), (seq, body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_window_batches_without_losing_or_reordering() {
    let server = TestServer::start(|c| c.transport.delivery_window_us = 20_000).await;
    send_then_read_in_order(&server, "paced", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sharing_one_endpoint_each_get_their_messages_and_close_alone() {
    use roomcast::client::ClientEndpoint;
    let server = TestServer::start(|_| {}).await;
    server.create_room("shared").await;
    let endpoint = ClientEndpoint::new(server.quic_addr, &server.ca_pem, true).expect("endpoint");
    let mut clients = Vec::new();
    for user in ["s1", "s2", "s3"] {
        let c = Client::connect_on(&endpoint, server.client_config(server.token(user)))
            .await
            .expect("connects on the shared endpoint");
        assert_eq!(c.user(), user);
        c.join("shared", -1).await.expect("joins");
        clients.push(c);
    }
    // Closing one client leaves the others (and the shared socket) working.
    clients.remove(0).close().await;
    let (seq, _) = clients[0]
        .send("shared", "chat", Bytes::from_static(b"after close"), false)
        .await
        .expect("sends");
    for c in &clients {
        let m = next_message(c).await;
        assert_eq!((m.seq, m.body.as_ref()), (seq, b"after close".as_ref()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_acknowledgements_asked_of_clients_lose_nothing() {
    let server = TestServer::start(|c| c.transport.ack_every_packets = 16).await;
    send_then_read_in_order(&server, "acks", 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_datagrams_dropped_on_a_full_client_buffer_are_reported_as_a_gap() {
    const LOW: u64 = 30;
    let server = TestServer::start(|_| {}).await;
    server.create_room("dgram").await;
    let sender = server.client("sender").await;
    // Two events of buffer and no reading while the burst arrives: most datagrams find it full.
    let reader = server.client_with("reader", |c| c.event_buffer = 2).await;
    sender.join("dgram", -1).await.expect("joins");
    reader.join("dgram", -1).await.expect("joins");
    for i in 0..LOW {
        sender
            .send("dgram", "chat", Bytes::from(format!("low {i}")), true)
            .await
            .expect("sends low");
    }
    let (end, _) = sender
        .send("dgram", "chat", body("end"), false)
        .await
        .expect("sends normal");
    // The burst must reach the reader's connection before anything reads its events: on a busy
    // machine the relay may still be writing it when the sends are answered.
    until(
        "every low datagram to reach the reader's connection",
        || reader.connection().stats().frame_rx.datagram >= LOW,
    )
    .await;

    let (mut low_delivered, mut low_gap, mut end_seen) = (0u64, 0u64, false);
    while !(end_seen && low_delivered + low_gap == LOW) {
        match next_event(&reader).await {
            ClientEvent::Message { message, datagram } if message.seq == end => {
                assert!(!datagram, "normal messages come on the stream");
                end_seen = true;
            }
            ClientEvent::Message { datagram, .. } => {
                assert!(datagram, "these low messages fit in a datagram");
                low_delivered += 1;
            }
            ClientEvent::Gap { room, low, normal } => {
                assert_eq!((room.as_str(), normal), ("dgram", 0));
                low_gap += low;
            }
            other => panic!("unexpected event {other:?}"),
        }
        assert!(low_delivered + low_gap <= LOW, "nothing counted twice");
    }
    assert!(low_gap > 0, "a two-event buffer could not hold the burst");
}

/// Joins and leaves racing the destruction and re-creation of their room never deadlock the
/// relay: a destruction once took the room registry before the room's state, the reverse of a
/// join's order, and a queued registry writer (a creation or destruction being applied) then
/// closed the cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_and_leaves_racing_room_destruction_never_deadlock() {
    const ROUNDS: usize = 300;
    const MEMBERS: usize = 12;
    // A deadlock blocks the runtime's workers, and with them its timers: a plain thread ends
    // the test binary with a message instead of letting it hang. It watches progress, not the
    // clock: every join, leave, destruction and creation counts, and a deadlock stops them all,
    // while a loaded machine only slows them down.
    let progress = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (done, watched) = std::sync::mpsc::channel::<()>();
    {
        let progress = progress.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watched.recv_timeout(std::time::Duration::from_secs(30))
            {
                let now = progress.load(std::sync::atomic::Ordering::Relaxed);
                if now == seen {
                    eprintln!(
                        "the relay deadlocked: no join, leave or room destruction ended in 30 s \
                         ({now} had)"
                    );
                    std::process::exit(101);
                }
                seen = now;
            }
        });
    }
    let server =
        TestServer::start(|c| c.store.durability = roomcast::store::Durability::Batched).await;
    let rooms = ["x", "y", "z"];
    for r in rooms {
        server.create_room(r).await;
    }
    let mut tasks = JoinSet::new();
    for i in 0..MEMBERS {
        let c = server.client(&format!("m{i}")).await;
        let progress = progress.clone();
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                // Either may be refused (the room is gone for a moment); neither may hang.
                let _ = c.join("x", -1).await;
                let _ = c.leave("x").await;
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    for r in rooms {
        let relay = server.relay().clone();
        let progress = progress.clone();
        tasks.spawn(async move {
            for _ in 0..ROUNDS {
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Ok(d) = relay.destroy_room(r, DestroyReason::Manual) {
                    let _ = d.wait().await;
                }
                let new = roomcast::server::relay::NewRoom {
                    id: r.into(),
                    ..Default::default()
                };
                if let Ok(d) = relay.create_room(new) {
                    let _ = d.wait().await;
                }
            }
        });
    }
    // No time limit here: the watchdog fails the test if progress stops.
    while let Some(ended) = tasks.join_next().await {
        ended.expect("no task panics");
    }
    let _ = done.send(());
    // The relay still serves.
    let alice = server.client("alice").await;
    alice.join("y", -1).await.expect("joins after the race");
}
