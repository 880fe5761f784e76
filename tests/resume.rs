//! Client-driven resume (`Request::Resume`) against a real relay over QUIC on loopback: the
//! replay from history beyond the ring, exact `missed` counts, live traffic after the replay
//! with nothing twice, and the refusals (a destroyed incarnation, a ban, a bad `last_seq`).

mod common;

use common::*;
use roomcast::client::{Client, ClientEvent};
use roomcast::protocol::{ErrorCode, Event};

/// A relay whose memberships end with their connection (no offline grace) and whose rings hold
/// 16 entries (a resume replays from the ring only within the newest 4).
async fn small_ring_server() -> TestServer {
    TestServer::start(|c| {
        c.rooms.offline_grace_ms = 0;
        c.limits.ring_capacity = 16;
    })
    .await
}

/// Sends `n` messages from `client` to `room`, those whose index (from 1) is in `low` as
/// low-priority; returns their seqs.
async fn send_all(client: &Client, room: &str, n: u64, low: &[u64]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 1..=n {
        let (seq, _) = within(
            "a send",
            client.send(room, "chat", body(&format!("m{i}")), low.contains(&i)),
        )
        .await
        .expect("sent");
        seqs.push(seq);
    }
    seqs
}

/// The next `Resumed` of `client`, skipping presence notices: `(missed, last_seq)`.
async fn next_resumed(client: &Client) -> (u64, u64) {
    loop {
        match next_event(client).await {
            ClientEvent::Resumed {
                missed, last_seq, ..
            } => return (missed, last_seq),
            ClientEvent::Notice(_) => {}
            other => panic!("expected Resumed, got {other:?}"),
        }
    }
}

/// The seqs of the next `n` messages of `client`, skipping presence notices (a gap fails).
async fn next_seqs(client: &Client, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    while seqs.len() < n {
        match next_event(client).await {
            ClientEvent::Message { message, .. } => seqs.push(message.seq),
            ClientEvent::Notice(
                Event::MemberJoined { .. } | Event::MemberLeft { .. } | Event::MemberCount { .. },
            ) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
    seqs
}

/// Waits until `user` is no longer a member of `room` (its connection closed).
async fn until_gone(server: &TestServer, room: &str, user: &str) {
    let relay = server.relay().clone();
    let (room, user) = (room.to_owned(), user.to_owned());
    until("the membership to end with its connection", move || {
        relay.check_members(&room, std::slice::from_ref(&user)).ok() == Some(vec![false])
    })
    .await;
}

#[tokio::test]
async fn a_resume_beyond_the_ring_replays_history_and_counts_what_it_cannot() {
    let server = small_ring_server().await;
    server.create_room("r").await;
    let publisher = server.client("p").await;
    publisher.join("r", -1).await.expect("p joins");
    let first = server.client("u").await;
    let info = first.join("r", -1).await.expect("u joins");
    let epoch = info.room.epoch;
    assert_eq!(send_all(&publisher, "r", 2, &[]).await, [1, 2]);
    assert_eq!(next_seqs(&first, 2).await, [1, 2]);
    first.close().await;
    until_gone(&server, "r", "u").await;

    // 13 more while u is away, the 3rd, 6th and 9th low-priority (history keeps none of those);
    // the ring keeps the newest 16 entries, a resume reads the newest 4 of them.
    let seqs = send_all(&publisher, "r", 13, &[3, 6, 9]).await;
    assert_eq!(seqs, (3..=15).collect::<Vec<_>>());

    let second = server.client("u").await;
    let resumed = within("the resume", second.resume("r", epoch, 2))
        .await
        .expect("resumed");
    assert!(resumed.history.is_empty());
    assert_eq!(resumed.last_seq, 15);
    assert_eq!(resumed.room.epoch, epoch);
    // 3..=11 lie beyond what the ring replays: the stored ones come from history, the three
    // low ones (5, 8, 11) are counted; 12..=15 come from the ring.
    assert_eq!(next_resumed(&second).await, (3, 15));
    // Live traffic after the resume follows the replay, nothing twice.
    assert_eq!(send_all(&publisher, "r", 2, &[]).await, [16, 17]);
    assert_eq!(
        next_seqs(&second, 12).await,
        [3, 4, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17]
    );
    // It is a member again: it may send, and receives its own message.
    let (seq, _) = second
        .send("r", "chat", body("back"), false)
        .await
        .expect("u sends");
    assert_eq!(next_seqs(&second, 1).await, [seq]);
    // Counted (the recorder is the process's: other tests add theirs).
    let text = server.metrics().await;
    let count = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0);
    assert!(
        count("roomcast_resume_missed_messages_total", &[]) >= 3.0,
        "{text}"
    );
    assert!(
        count(
            "roomcast_resume_replayed_messages_total",
            &[("from", "history")]
        ) >= 6.0
    );
    assert!(
        count(
            "roomcast_resume_replayed_messages_total",
            &[("from", "ring")]
        ) >= 4.0
    );
    assert!(count("roomcast_resumes_total", &[("outcome", "replayed")]) >= 1.0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_the_ring_covers_replays_every_class_from_the_ring() {
    let server = TestServer::start(|c| c.rooms.offline_grace_ms = 0).await;
    server.create_room("r").await;
    let publisher = server.client("p").await;
    publisher.join("r", -1).await.expect("p joins");
    let first = server.client("u").await;
    let epoch = first.join("r", -1).await.expect("u joins").room.epoch;
    send_all(&publisher, "r", 1, &[]).await;
    assert_eq!(next_seqs(&first, 1).await, [1]);
    first.close().await;
    until_gone(&server, "r", "u").await;
    // Low-priority ones too: the ring still holds them.
    send_all(&publisher, "r", 6, &[2, 4]).await;
    let second = server.client_with("u", |c| c.datagrams = false).await;
    second.resume("r", epoch, 1).await.expect("resumed");
    assert_eq!(next_resumed(&second).await, (0, 7));
    assert_eq!(next_seqs(&second, 6).await, [2, 3, 4, 5, 6, 7]);
    // Resuming from the newest: nothing to replay, nothing missed.
    let third = server.client("v").await;
    third.join("r", -1).await.expect("v joins");
    third.close().await;
    until_gone(&server, "r", "v").await;
    let fourth = server.client("v").await;
    fourth.resume("r", epoch, 7).await.expect("resumed");
    assert_eq!(next_resumed(&fourth).await, (0, 7));
    send_all(&publisher, "r", 1, &[]).await;
    assert_eq!(next_seqs(&fourth, 1).await, [8]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_of_a_destroyed_incarnation_is_told_the_room_was_destroyed() {
    let server = TestServer::start(|c| c.rooms.offline_grace_ms = 0).await;
    server.create_room("r").await;
    let first = server.client("u").await;
    let old = first.join("r", -1).await.expect("u joins").room.epoch;
    first.close().await;
    until_gone(&server, "r", "u").await;
    let r = server
        .api(reqwest::Method::DELETE, "/v1/rooms/r", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let second = server.client("u").await;
    // Destroyed, and nothing there now.
    let e = second.resume("r", old, 0).await.expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::RoomNotFound), "{e}");
    assert!(e.to_string().contains("destroyed"), "{e}");
    // Destroyed and created anew: another incarnation, still refused; a join gets the new one.
    server.create_room("r").await;
    let e = second.resume("r", old, 0).await.expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::RoomNotFound), "{e}");
    assert!(e.to_string().contains("destroyed"), "{e}");
    assert!(e.to_string().contains(&old.to_string()), "{e}");
    let info = second.join("r", -1).await.expect("joins the new room");
    assert_ne!(info.room.epoch, old);
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_is_checked_like_a_join() {
    let server = TestServer::start(|c| c.rooms.offline_grace_ms = 0).await;
    server.create_room("r").await;
    let first = server.client("u").await;
    let epoch = first.join("r", -1).await.expect("u joins").room.epoch;
    first.close().await;
    until_gone(&server, "r", "u").await;
    let second = server.client("u").await;
    // A seq the room never reached.
    let e = second.resume("r", epoch, 5).await.expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    assert!(e.to_string().contains("newest"), "{e}");
    // A bad room id.
    let e = second
        .resume("no room!", epoch, 0)
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::BadRequest), "{e}");
    // Banned meanwhile.
    let r = server
        .api(
            reqwest::Method::POST,
            "/v1/rooms/r/bans",
            Some(serde_json::json!({"user_ids": ["u"], "minutes": 10})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = second.resume("r", epoch, 0).await.expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Banned), "{e}");
    assert_eq!(
        server.relay().check_members("r", &["u".into()]).ok(),
        Some(vec![false])
    );
    let text = server.metrics().await;
    let refused = metric(&text, "roomcast_resumes_total", &[("outcome", "refused")]);
    assert!(refused.is_some_and(|n| n >= 3.0), "{text}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_resume_while_the_old_connection_still_counts_replays_to_the_new_one() {
    // The relay has not noticed the old connection is gone (it is still open here): the new
    // connection is not subscribed at its hello, and its resume replays what it lacks.
    let server = TestServer::start(|_| {}).await;
    server.create_room("r").await;
    let publisher = server.client("p").await;
    publisher.join("r", -1).await.expect("p joins");
    // Low-priority messages on the stream, so all come in seq order.
    let old = server.client_with("u", |c| c.datagrams = false).await;
    let epoch = old.join("r", -1).await.expect("u joins").room.epoch;
    send_all(&publisher, "r", 5, &[4]).await;
    assert_eq!(next_seqs(&old, 5).await, [1, 2, 3, 4, 5]);
    let new = server.client_with("u", |c| c.datagrams = false).await;
    new.resume("r", epoch, 2).await.expect("resumed");
    assert_eq!(next_resumed(&new).await, (0, 5));
    send_all(&publisher, "r", 1, &[]).await;
    assert_eq!(next_seqs(&new, 4).await, [3, 4, 5, 6]);
    assert_eq!(next_seqs(&old, 1).await, [6]);
    server.shutdown().await;
}
