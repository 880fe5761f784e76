//! Store faults, through the real server over real QUIC and HTTP: the store is the real redb file
//! on a disk that fills up ([`QuotaFile`]: every write is charged against a byte quota and fails
//! with the operating system's `ENOSPC` once it is spent), and "a restart" is a new server on the
//! same file. What the relay tells anyone must be what a restart finds: a change the store
//! refuses is refused (`UNAVAILABLE`) and visible nowhere; once space is freed, the store writes
//! again by itself and `/healthz` says so.
//!
//! Negative checks ("no member got it") wait for an event, never for time: an admin message that
//! history does not keep needs no disk, so it goes out during the outage, on the same ordered
//! stream; the next event a member sees after a refused change must be that marker.
//!
//! These tests share the process's metrics (the store's health gauge), so they run one at a time.

mod common;
mod store_support;

use common::{body, code, metric, next_event};
use reqwest::Method;
use roomcast::client::ClientEvent;
use roomcast::protocol::{ErrorCode, Event, KickReason, Message};
use roomcast::server::STORE_FILE;
use roomcast::store::{Quota, QuotaFile};
use roomcast::tls::ServerIdentity;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use store_support::{Node, next_text};

/// One test at a time (see the module doc); an async lock, as it is held across awaits.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A data folder, the server's identity, a disk with no limit yet, and a relay whose store is on
/// that disk.
async fn setup() -> (tempfile::TempDir, ServerIdentity, Arc<Quota>, Node) {
    let data = tempfile::tempdir().expect("data folder");
    let identity = ServerIdentity::generate(&[]).expect("identity");
    let quota = Quota::unlimited();
    let node = start(data.path(), &identity, &quota).await;
    (data, identity, quota, node)
}

/// A relay on `data` whose store file is on `quota`'s disk.
async fn start(data: &Path, identity: &ServerIdentity, quota: &Arc<Quota>) -> Node {
    let file = QuotaFile::new(data.join(STORE_FILE), quota.clone());
    Node::start(data, identity, Arc::new(file)).await
}

fn texts(history: &[roomcast::protocol::HistoryEntry]) -> Vec<(u64, String)> {
    history
        .iter()
        .map(|h| (h.message.seq, text_of(&h.message)))
        .collect()
}

fn text_of(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_the_full_disk_refuses_reaches_no_one_and_a_restart_agrees() {
    let _one = SERIAL.lock().await;
    let (data, identity, quota, node) = setup().await;
    let clients = node.room_with("r", &["alice", "bob"]).await;
    let (alice, bob) = (&clients[0], &clients[1]);
    let (one, _) = alice
        .send("r", "chat", body("one"), false)
        .await
        .expect("sent");
    for c in [alice, bob] {
        assert_eq!(next_text(c, "one").await, one);
    }

    quota.set_left(Some(0));
    let refused = alice.send("r", "chat", body("two"), false).await;
    // No member saw "two": the next event of each is the marker that followed it.
    node.marker("r", "after two").await;
    let marker = next_text(bob, "after two").await;
    assert_eq!(next_text(alice, "after two").await, marker);
    // And its sender was told so.
    let Err(e) = refused else {
        panic!("a send on a full disk was acknowledged: {refused:?}")
    };
    assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}");
    assert!(e.to_string().contains("not sent"), "{e}");
    // While the store is failing, the next send is refused at once, with the same words.
    assert_eq!(
        code(alice.send("r", "chat", body("two again"), false).await),
        ErrorCode::Unavailable
    );

    quota.set_left(None);
    node.health_becomes(200).await;
    let (three, _) = alice
        .send("r", "chat", body("three"), false)
        .await
        .expect("sent once space is back");
    for c in [alice, bob] {
        assert_eq!(next_text(c, "three").await, three);
    }
    assert!(one < marker && marker < three);
    let want = vec![(one, "one".to_owned()), (three, "three".to_owned())];
    assert_eq!(
        texts(&bob.history("r", None, 50).await.expect("history")),
        want
    );
    node.stop().await;

    // A restart on the same file: the history is exactly what members got and senders were told.
    let node = start(data.path(), &identity, &quota).await;
    let carol = node.client("carol").await;
    let info = carol.join("r", 50).await.expect("joins");
    assert_eq!(texts(&info.history), want);
    let listed = node
        .ok(Method::GET, "/v1/rooms/r/messages?limit=50", None, 200)
        .await;
    let seqs: Vec<u64> = listed["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [one, three]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_the_full_disk_refuses_are_visible_nowhere_and_a_restart_agrees() {
    let _one = SERIAL.lock().await;
    let (data, identity, quota, node) = setup().await;
    let clients = node.room_with("r", &["alice", "bob"]).await;
    let (alice, bob) = (&clients[0], &clients[1]);

    quota.set_left(Some(0));
    // The first write the full disk refuses: an attribute set, refused after it was submitted.
    let attr_set = node
        .api(
            Method::PUT,
            "/v1/rooms/r/attributes",
            Some(json!({"owner": "host", "entries": {"topic": "news"}})),
        )
        .await;
    // The store is failing now: these are refused at once, before anything changes.
    let created = node
        .api(Method::POST, "/v1/rooms", Some(json!({"id": "new"})))
        .await;
    let banned = node
        .api(
            Method::POST,
            "/v1/rooms/r/bans",
            Some(json!({"user_ids": ["alice"], "minutes": 10, "notify": true})),
        )
        .await;
    let client_set = bob
        .set_attributes("r", &[("seat", "bob")], false, false)
        .await;

    // Visible nowhere: no event to anyone, no room, alice still a member, no attribute.
    node.marker("r", "nothing before me").await;
    for c in [alice, bob] {
        next_text(c, "nothing before me").await;
    }
    node.api(Method::GET, "/v1/rooms/new", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");
    let members = node.ok(Method::GET, "/v1/rooms/r/members", None, 200).await;
    assert_eq!(members["total"], 2, "{members}");
    let attrs = node
        .ok(Method::GET, "/v1/rooms/r/attributes", None, 200)
        .await;
    assert_eq!(attrs["attributes"], json!([]), "{attrs}");
    assert_eq!(attrs["version"], 0, "{attrs}");
    let bans = node.ok(Method::GET, "/v1/rooms/r/bans", None, 200).await;
    assert_eq!(bans["users"], json!([]), "{bans}");
    // And each caller was told so.
    attr_set.assert_error(503, "UNAVAILABLE");
    assert!(
        attr_set.json["message"]
            .as_str()
            .is_some_and(|m| m.contains("not made")),
        "{}",
        attr_set.text
    );
    created.assert_error(503, "UNAVAILABLE");
    banned.assert_error(503, "UNAVAILABLE");
    assert_eq!(code(client_set), ErrorCode::Unavailable);

    // Space back: the same changes now succeed (and are seen), which shows the refusals above
    // were the disk's, not the requests'.
    quota.set_left(None);
    node.health_becomes(200).await;
    node.ok(
        Method::PUT,
        "/v1/rooms/r/attributes",
        Some(json!({"owner": "host", "entries": {"mood": "calm"}})),
        200,
    )
    .await;
    match next_event(bob).await {
        ClientEvent::Notice(Event::AttributeChanged {
            version, attribute, ..
        }) => assert_eq!((version, attribute.key.as_str()), (1, "mood")),
        other => panic!("bob: expected the attribute change, got {other:?}"),
    }
    node.stop().await;

    let node = start(data.path(), &identity, &quota).await;
    node.api(Method::GET, "/v1/rooms/new", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");
    let attrs = node
        .ok(Method::GET, "/v1/rooms/r/attributes", None, 200)
        .await;
    let keys: Vec<&str> = attrs["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|a| a["key"].as_str().expect("key"))
        .collect();
    assert_eq!((keys, attrs["version"].as_u64()), (vec!["mood"], Some(1)));
    let bans = node.ok(Method::GET, "/v1/rooms/r/bans", None, 200).await;
    assert_eq!(bans["users"], json!([]), "{bans}");
    let alice = node.client("alice").await;
    alice.join("r", -1).await.expect("alice was never banned");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_refused_by_the_full_disk_kicks_no_one() {
    let _one = SERIAL.lock().await;
    let (_data, _identity, quota, node) = setup().await;
    let clients = node.room_with("r", &["alice"]).await;
    let alice = &clients[0];
    quota.set_left(Some(0));
    // The first failing write is the ban itself: decided, submitted, refused by the disk.
    let banned = node
        .api(
            Method::POST,
            "/v1/rooms/r/bans",
            Some(json!({"user_ids": ["alice"], "minutes": 10, "notify": true})),
        )
        .await;
    node.marker("r", "still here").await;
    next_text(alice, "still here").await;
    banned.assert_error(503, "UNAVAILABLE");
    let check = node
        .ok(
            Method::POST,
            "/v1/rooms/r/members:check",
            Some(json!({"user_ids": ["alice"]})),
            200,
        )
        .await;
    assert_eq!(check["results"][0]["member"], true, "{check}");
    quota.set_left(None);
    node.health_becomes(200).await;
    node.ok(
        Method::POST,
        "/v1/rooms/r/bans",
        Some(json!({"user_ids": ["alice"], "minutes": 10})),
        200,
    )
    .await;
    match next_event(alice).await {
        ClientEvent::Kicked { room, reason } => {
            assert_eq!((room.as_str(), reason), ("r", KickReason::Banned))
        }
        other => panic!("alice: expected the kick, got {other:?}"),
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_space_is_freed_writes_succeed_again_without_a_restart_and_healthz_says_so() {
    let _one = SERIAL.lock().await;
    let (_data, _identity, quota, node) = setup().await;
    let clients = node.room_with("r", &["alice"]).await;
    let alice = &clients[0];
    let health = node.health_becomes(200).await;
    assert_eq!(
        health,
        json!({"status": "ok", "store": {"state": "healthy"}})
    );
    let failures = |text: &str| metric(text, "roomcast_store_write_failures_total", &[]);
    let text = node.api(Method::GET, "/metrics", None).await.text;
    let before = failures(&text).unwrap_or(0.0);
    assert_eq!(metric(&text, "roomcast_store_healthy", &[]), Some(1.0));

    quota.set_left(Some(0));
    assert_eq!(
        code(alice.send("r", "chat", body("lost"), false).await),
        ErrorCode::Unavailable
    );
    let health = node.health_becomes(503).await;
    assert_eq!(health["status"], "unavailable", "{health}");
    assert_eq!(health["store"]["state"], "failing", "{health}");
    assert!(
        health["store"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{health}"
    );
    assert!(health["store"]["failures"].as_u64() >= Some(1), "{health}");
    assert!(health["store"]["since_ms"].as_u64() > Some(0), "{health}");
    let text = node.api(Method::GET, "/metrics", None).await.text;
    assert!(failures(&text) > Some(before), "the failure counter moved");
    assert_eq!(metric(&text, "roomcast_store_healthy", &[]), Some(0.0));
    // Still failing while the disk is full: probes fail too, and say so.
    assert_eq!(
        code(alice.send("r", "chat", body("lost too"), false).await),
        ErrorCode::Unavailable
    );

    quota.set_left(None);
    let health = node.health_becomes(200).await;
    assert_eq!(
        health,
        json!({"status": "ok", "store": {"state": "healthy"}})
    );
    let text = node.api(Method::GET, "/metrics", None).await.text;
    assert_eq!(metric(&text, "roomcast_store_healthy", &[]), Some(1.0));
    let (seq, _) = alice
        .send("r", "chat", body("back"), false)
        .await
        .expect("the next write succeeds without a restart");
    assert_eq!(next_text(alice, "back").await, seq);
    node.ok(Method::POST, "/v1/rooms", Some(json!({"id": "later"})), 201)
        .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_destroy_the_full_disk_refuses_keeps_the_room_until_a_later_tick() {
    let _one = SERIAL.lock().await;
    let (data, identity, quota, node) = setup().await;
    node.ok(
        Method::POST,
        "/v1/rooms",
        Some(json!({"id": "r", "destroy_policy": {"type": "lifetime", "minutes": 60}})),
        201,
    )
    .await;
    let alice = node.client("alice").await;
    alice.join("r", -1).await.expect("joins");
    let later = roomcast::server::relay::now_ms() + 61 * 60_000;

    quota.set_left(Some(0));
    let report = node.relay.tick(later).await;
    assert!(report.destroyed.is_empty(), "{report:?}");
    // The room goes on, for its members too: no RoomDestroyed before this marker.
    node.marker("r", "still open").await;
    next_text(&alice, "still open").await;
    node.ok(Method::GET, "/v1/rooms/r", None, 200).await;

    quota.set_left(None);
    node.health_becomes(200).await;
    let report = node.relay.tick(later).await;
    assert_eq!(
        report.destroyed,
        [("r".to_owned(), roomcast::protocol::DestroyReason::Lifetime)]
    );
    match next_event(&alice).await {
        ClientEvent::RoomDestroyed { room, reason } => assert_eq!(
            (room.as_str(), reason),
            ("r", roomcast::protocol::DestroyReason::Lifetime)
        ),
        other => panic!("alice: expected the destruction, got {other:?}"),
    }
    node.stop().await;
    let node = start(data.path(), &identity, &quota).await;
    node.api(Method::GET, "/v1/rooms/r", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");
    node.stop().await;
}
