//! Room policy through the real server (SPEC §2 lifecycle, §3 membership, §5 moderation, §7 classes
//! and budgets): a relay on `127.0.0.1:0`, real QUIC+TLS clients, the admin API over HTTP.
//!
//! Timers are driven deterministically: `server.relay().tick(now).await` is the server's own timer pass,
//! called with a chosen `now`, and real clients receive what it does. Tests that drive it start the
//! server with [`manual_timers`], so the server's periodic pass (which ticks with the wall clock)
//! stays out of the way. Nothing waits on the clock: every wait is for an event, a reply or an
//! admin answer, bounded by the shared safety timeout.

mod common;

use common::{
    Method, TestServer, body, metric, next_event, next_message, next_message_lane, next_notice,
    within,
};
use roomcast::client::{Client, ClientError, ClientEvent};
use roomcast::config::Config;
use roomcast::policy::{BudgetConfig, IngressBudget};
use roomcast::protocol::{Class, DestroyReason, ErrorCode, Event, KickReason, WireError};
use roomcast::server::relay::now_ms;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

const MIN: u64 = 60_000;

/// Moves the server's own timer pass out of the way: it runs once at start (no rooms yet) and next
/// an hour later, so the `tick(now)` calls of a test are the only ones that act.
fn manual_timers(c: &mut Config) {
    c.rooms.timer_tick_ms = 3_600_000;
}

/// The refusal of a client call.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> WireError {
    match r {
        Err(ClientError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The error code of a refused client call.
fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    refused(r).code
}

/// An admin call that must answer `status`; returns its JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    status: u16,
) -> Value {
    let r = server.api(method.clone(), path, body).await;
    assert_eq!(r.status, status, "{method} {path}: {}", r.text);
    r.json
}

/// An admin call that must be refused with `status` and `code`, its message naming `names`.
async fn refused_call(
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
    (status, code): (u16, &str),
    names: &str,
) {
    let r = server.api(method.clone(), path, body).await;
    r.assert_error(status, code);
    let message = r.json["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(names),
        "{method} {path}: the message {message:?} should name {names:?}"
    );
}

const BAD: (u16, &str) = (400, "BAD_REQUEST");

/// `POST /v1/rooms` with `spec`, asserting 201; returns the room's admin view.
async fn create(server: &TestServer, spec: Value) -> Value {
    call(server, Method::POST, "/v1/rooms", Some(spec), 201).await
}

/// `GET /v1/rooms/{id}`, asserting 200.
async fn view(server: &TestServer, id: &str) -> Value {
    call(server, Method::GET, &format!("/v1/rooms/{id}"), None, 200).await
}

/// The room's last activity (join, leave or message) as the admin API reports it.
async fn last_activity(server: &TestServer, id: &str) -> u64 {
    num(&view(server, id).await, "last_activity_ms")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

/// The admin member list of a room (join order), checking its total.
async fn members(server: &TestServer, id: &str) -> Vec<String> {
    let v = call(
        server,
        Method::GET,
        &format!("/v1/rooms/{id}/members?limit=500"),
        None,
        200,
    )
    .await;
    let list: Vec<String> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_str().expect("user_id").to_owned())
        .collect();
    assert_eq!(num(&v, "total"), list.len() as u64, "{v}");
    list
}

/// Whether `user` is a member of `room`, by `members:check`.
async fn is_member(server: &TestServer, room: &str, user: &str) -> bool {
    let v = call(
        server,
        Method::POST,
        &format!("/v1/rooms/{room}/members:check"),
        Some(json!({ "user_ids": [user] })),
        200,
    )
    .await;
    assert_eq!(v["results"][0]["user_id"], user, "{v}");
    v["results"][0]["member"].as_bool().expect("member flag")
}

/// Publishes a system message into `room` through the admin API and checks that it is the next
/// event of each of `readers`. Events reach a connection in the order they were sent, so this
/// proves a reader was sent nothing else in between.
async fn marker(server: &TestServer, room: &str, readers: &[&Client]) {
    let sent = call(
        server,
        Method::POST,
        &format!("/v1/rooms/{room}/messages"),
        Some(json!({ "type": "marker", "body": "-" })),
        200,
    )
    .await;
    let seq = num(&sent, "seq");
    for c in readers {
        let m = next_message(c).await;
        assert_eq!(
            (m.room.as_str(), m.seq, m.msg_type.as_str()),
            (room, seq, "marker"),
            "{}: expected only the marker",
            c.user()
        );
    }
}

/// A connected client for `user` that joined `room` (no history).
async fn joined(server: &TestServer, user: &str, room: &str) -> Client {
    let c = server.client(user).await;
    c.join(room, -1)
        .await
        .unwrap_or_else(|e| panic!("{user} joins {room}: {e}"));
    c
}

/// Sends a chat message that must be accepted; returns its seq.
async fn send_ok(c: &Client, room: &str, text: &str) -> u64 {
    c.send(room, "chat", body(text), false)
        .await
        .unwrap_or_else(|e| panic!("{} sends to {room}: {e}", c.user()))
        .0
}

/// The next message of `c`, which must be `text` from `from` in `room`; returns its class.
async fn expect_chat(c: &Client, room: &str, from: &str, text: &str) -> Class {
    let m = next_message(c).await;
    assert_eq!(
        (m.room.as_str(), m.from.as_str(), m.body.as_ref()),
        (room, from, text.as_bytes()),
        "{}",
        c.user()
    );
    m.class
}

fn destroyed(room: &str, reason: DestroyReason) -> ClientEvent {
    ClientEvent::RoomDestroyed {
        room: room.into(),
        reason,
    }
}

fn kicked(room: &str, reason: KickReason) -> ClientEvent {
    ClientEvent::Kicked {
        room: room.into(),
        reason,
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// The list at `path` holds one entry: fills it to 20 with `prefix` ids, then checks that one
/// more (`extra`, in the JSON field `field`) is refused with "at most 20" and changes nothing.
async fn fill_to_twenty_then_refuse(
    server: &TestServer,
    path: &str,
    field: &str,
    prefix: &str,
    extra: &str,
) -> serde_json::Value {
    call(
        server,
        Method::POST,
        path,
        Some(json!({ field: ids(prefix, 19) })),
        204,
    )
    .await;
    let full = call(server, Method::GET, path, None, 200).await;
    assert_eq!(full[field].as_array().map(Vec::len), Some(20), "{path}");
    refused_call(
        server,
        Method::POST,
        path,
        Some(json!({ field: [extra] })),
        BAD,
        "at most 20",
    )
    .await;
    assert_eq!(
        call(server, Method::GET, path, None, 200).await,
        full,
        "{path}"
    );
    full
}

fn destroyed_by(report: &roomcast::server::timers::TickReport) -> Vec<(&str, DestroyReason)> {
    let mut d: Vec<(&str, DestroyReason)> = report
        .destroyed
        .iter()
        .map(|(r, why)| (r.as_str(), *why))
        .collect();
    d.sort_by_key(|(r, _)| *r);
    d
}

// =================================== §2 room lifecycle ===================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_is_created_with_its_policies_and_info_and_a_second_create_is_room_exists() {
    let server = TestServer::start(manual_timers).await;
    let created = create(
        &server,
        json!({
            "id": "stage",
            "name": "Main stage",
            "destroy_policy": {"type": "lifetime", "minutes": 120},
            "mute_all": true,
            "mute_all_whitelist": ["host"],
            "member_events": true,
        }),
    )
    .await;
    let (epoch, created_ms) = (num(&created, "epoch"), num(&created, "created_ms"));
    assert_eq!(
        created,
        json!({
            "id": "stage", "name": "Main stage", "epoch": epoch, "created_ms": created_ms,
            "member_count": 0, "destroy_policy": {"type": "lifetime", "minutes": 120},
            "destroy_at_ms": null, "keepalive": false, "mute_all": true, "member_events": true,
            "last_activity_ms": created_ms,
        })
    );
    assert_eq!(view(&server, "stage").await, created);
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/v1/rooms/stage/mute-all-whitelist",
            None,
            200
        )
        .await,
        json!({"user_ids": ["host"]})
    );

    // Creating it again is a conflict and changes nothing.
    refused_call(
        &server,
        Method::POST,
        "/v1/rooms",
        Some(json!({"id": "stage", "name": "Other"})),
        (409, "ROOM_EXISTS"),
        "stage",
    )
    .await;
    assert_eq!(view(&server, "stage").await, created);

    // Out-of-range creations are refused, naming the range, and create nothing.
    let bad = [
        (
            json!({"id": "bad", "destroy_policy": {"type": "idle", "minutes": 0}}),
            "1..=1440",
        ),
        (
            json!({"id": "bad", "destroy_policy": {"type": "idle", "minutes": 1441}}),
            "1..=1440",
        ),
        (
            json!({"id": "bad", "destroy_policy": {"type": "lifetime", "minutes": 59}}),
            "60..=10080",
        ),
        (
            json!({"id": "bad", "destroy_policy": {"type": "lifetime", "minutes": 10081}}),
            "60..=10080",
        ),
        (
            json!({"id": "bad", "mute_all_whitelist": ids("w", 21)}),
            "20",
        ),
    ];
    for (spec, names) in bad {
        refused_call(&server, Method::POST, "/v1/rooms", Some(spec), BAD, names).await;
    }
    refused_call(
        &server,
        Method::GET,
        "/v1/rooms/bad",
        None,
        (404, "ROOM_NOT_FOUND"),
        "bad",
    )
    .await;
    assert_eq!(
        num(
            &call(&server, Method::GET, "/v1/rooms", None, 200).await,
            "total"
        ),
        1
    );

    // The initial mute-all holds for everyone but its whitelist; member events are on.
    let guest = server.client("guest").await;
    let g = guest.join("stage", -1).await.expect("guest joins");
    assert_eq!(
        (
            g.room.name.as_str(),
            g.room.epoch,
            g.room.created_ms,
            g.room.mute_all,
            g.muted
        ),
        ("Main stage", epoch, created_ms, true, true)
    );
    let host = server.client("host").await;
    let h = host.join("stage", -1).await.expect("host joins");
    assert_eq!((h.room.member_count, h.muted), (2, false));
    assert_eq!(
        next_notice(&guest).await,
        Event::MemberJoined {
            room: "stage".into(),
            user: "host".into()
        }
    );
    assert_eq!(
        code(guest.send("stage", "chat", body("hi"), false).await),
        ErrorCode::Muted
    );
    send_ok(&host, "stage", "welcome").await;
    for c in [&guest, &host] {
        expect_chat(c, "stage", "host", "welcome").await;
    }

    // Info: id, name, epoch, created time, member count, destroy policy, mute-all state.
    let info = view(&server, "stage").await;
    assert_eq!(
        (
            &info["id"],
            &info["name"],
            num(&info, "epoch"),
            num(&info, "created_ms"),
            num(&info, "member_count"),
            &info["destroy_policy"],
            &info["mute_all"],
        ),
        (
            &json!("stage"),
            &json!("Main stage"),
            epoch,
            created_ms,
            2,
            &json!({"type": "lifetime", "minutes": 120}),
            &json!(true),
        )
    );
    let client_info = guest.room_info("stage").await.expect("client room info");
    assert_eq!(
        (
            client_info.epoch,
            client_info.member_count,
            client_info.mute_all
        ),
        (epoch, 2, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_rooms_tells_members_and_takes_attributes_mutes_and_bans_along() {
    let server = TestServer::start(manual_timers).await;
    for id in ["a", "b", "c"] {
        server.create_room(id).await;
    }
    let first_epoch = num(&view(&server, "a").await, "epoch");
    let at = now_ms() + 10 * MIN;
    let setup = [
        (
            Method::PUT,
            "/v1/rooms/a/attributes",
            json!({"owner": "admin", "entries": {"topic": "rust"}}),
            200,
        ),
        (
            Method::POST,
            "/v1/rooms/a/bans",
            json!({"user_ids": ["mallory"], "minutes": 60}),
            200,
        ),
        (
            Method::POST,
            "/v1/rooms/a/mutes",
            json!({"user_ids": ["bob"], "minutes": 60}),
            200,
        ),
        (Method::PUT, "/v1/rooms/a/mute-all", Value::Null, 204),
        (
            Method::POST,
            "/v1/rooms/a/mute-all-whitelist",
            json!({"user_ids": ["carol"]}),
            204,
        ),
        (
            Method::POST,
            "/v1/rooms/a/user-whitelist",
            json!({"user_ids": ["dave"]}),
            204,
        ),
        (
            Method::PUT,
            "/v1/rooms/a/destroy-at",
            json!({ "at": at }),
            204,
        ),
    ];
    for (method, path, b, status) in setup {
        let b = (!b.is_null()).then_some(b);
        call(&server, method, path, b, status).await;
    }
    let alice = server.client("alice").await;
    let info = alice.join("a", -1).await.expect("alice joins a");
    assert!(info.muted, "mute-all is on");
    assert_eq!(info.attributes.len(), 1);
    let bob = joined(&server, "bob", "b").await;
    let carol = joined(&server, "carol", "c").await;

    // One room.
    assert_eq!(
        call(&server, Method::DELETE, "/v1/rooms/a", None, 200).await,
        json!({"destroyed": ["a"], "not_found": []})
    );
    assert_eq!(
        next_event(&alice).await,
        destroyed("a", DestroyReason::Manual)
    );
    refused_call(
        &server,
        Method::DELETE,
        "/v1/rooms/a",
        None,
        (404, "ROOM_NOT_FOUND"),
        "a",
    )
    .await;

    // Several rooms per call; the limit of 100 ids is a refusal that destroys nothing.
    let mut too_many = ids("x", 100);
    too_many.push("b".into());
    refused_call(
        &server,
        Method::POST,
        "/v1/rooms:destroy",
        Some(json!({ "ids": too_many })),
        (400, "BATCH_TOO_LARGE"),
        "100",
    )
    .await;
    refused_call(
        &server,
        Method::POST,
        "/v1/rooms:destroy",
        Some(json!({"ids": []})),
        (400, "BATCH_TOO_LARGE"),
        "100",
    )
    .await;
    assert!(is_member(&server, "b", "bob").await);
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/v1/rooms:destroy",
            Some(json!({"ids": ["b", "c", "nope"]})),
            200
        )
        .await,
        json!({"destroyed": ["b", "c"], "not_found": ["nope"]})
    );
    assert_eq!(
        next_event(&bob).await,
        destroyed("b", DestroyReason::Manual)
    );
    assert_eq!(
        next_event(&carol).await,
        destroyed("c", DestroyReason::Manual)
    );
    assert_eq!(
        num(
            &call(&server, Method::GET, "/v1/rooms", None, 200).await,
            "total"
        ),
        0
    );

    // Re-created, it is a new life with nothing of the old one.
    let again = create(&server, json!({"id": "a"})).await;
    assert_ne!(num(&again, "epoch"), first_epoch);
    assert!(num(&again, "epoch") > first_epoch);
    assert_eq!(
        (&again["mute_all"], &again["destroy_at_ms"]),
        (&json!(false), &Value::Null)
    );
    let empty = [
        (
            "/v1/rooms/a/attributes",
            json!({"version": 0, "attributes": []}),
        ),
        ("/v1/rooms/a/bans", json!({"users": []})),
        ("/v1/rooms/a/mutes", json!({"users": []})),
        ("/v1/rooms/a/mute-all-whitelist", json!({"user_ids": []})),
        ("/v1/rooms/a/user-whitelist", json!({"user_ids": []})),
    ];
    for (path, want) in empty {
        assert_eq!(
            call(&server, Method::GET, path, None, 200).await,
            want,
            "{path}"
        );
    }
    let info = alice.join("a", -1).await.expect("alice joins the new a");
    assert_eq!(
        (info.muted, info.attributes.len(), info.last_seq),
        (false, 0, 0)
    );
    let mallory = joined(&server, "mallory", "a").await;
    bob.join("a", -1).await.expect("bob joins the new a");
    assert_eq!(send_ok(&bob, "a", "free again").await, 1);
    for c in [&alice, &mallory, &bob] {
        expect_chat(c, "a", "bob", "free again").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_room_goes_after_its_minutes_and_joins_and_messages_but_not_broadcasts_defer_it() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    create(
        &server,
        json!({"id": "quiet", "destroy_policy": {"type": "idle", "minutes": 5}}),
    )
    .await;
    // The default policy: idle for the global `rooms.idle_destroy_minutes` (60).
    let lobby = create(&server, json!({"id": "lobby"})).await;
    assert_eq!(
        lobby["destroy_policy"],
        json!({"type": "idle", "minutes": null})
    );
    let lobby_since = num(&lobby, "last_activity_ms");

    let alice = joined(&server, "alice", "quiet").await;
    let joined_at = last_activity(&server, "quiet").await;
    assert!(relay.tick(joined_at + 4 * MIN).await.destroyed.is_empty());
    assert!(
        relay
            .tick(joined_at + 5 * MIN - 1)
            .await
            .destroyed
            .is_empty()
    );

    // A client message is activity.
    send_ok(&alice, "quiet", "still here").await;
    expect_chat(&alice, "quiet", "alice", "still here").await;
    let sent_at = last_activity(&server, "quiet").await;
    assert!(sent_at >= joined_at);
    assert!(relay.tick(sent_at + 5 * MIN - 1).await.destroyed.is_empty());

    // A join is activity.
    let bob = joined(&server, "bob", "quiet").await;
    let bob_at = last_activity(&server, "quiet").await;
    assert!(bob_at >= sent_at);
    assert!(relay.tick(bob_at + 5 * MIN - 1).await.destroyed.is_empty());

    // An admin broadcast is not.
    assert_eq!(
        call(
            &server,
            Method::POST,
            "/v1/broadcast",
            Some(json!({"type": "news", "body": "hello all"})),
            200
        )
        .await,
        json!({"rooms": 2})
    );
    for c in [&alice, &bob] {
        let m = next_message(c).await;
        assert_eq!((m.room.as_str(), m.msg_type.as_str()), ("quiet", "news"));
    }
    assert_eq!(last_activity(&server, "quiet").await, bob_at);
    assert_eq!(last_activity(&server, "lobby").await, lobby_since);

    let report = relay.tick(bob_at + 5 * MIN).await;
    assert_eq!(destroyed_by(&report), [("quiet", DestroyReason::Idle)]);
    for c in [&alice, &bob] {
        assert_eq!(next_event(c).await, destroyed("quiet", DestroyReason::Idle));
    }
    refused_call(
        &server,
        Method::GET,
        "/v1/rooms/quiet",
        None,
        (404, "ROOM_NOT_FOUND"),
        "quiet",
    )
    .await;

    // The global idle time, from the lobby's creation (the broadcast did not count).
    assert!(
        relay
            .tick(lobby_since + 60 * MIN - 1)
            .await
            .destroyed
            .is_empty()
    );
    assert_eq!(
        destroyed_by(&relay.tick(lobby_since + 60 * MIN).await),
        [("lobby", DestroyReason::Idle)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_room_ends_its_minutes_after_creation_and_is_never_idle_destroyed() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    let show = create(
        &server,
        json!({"id": "show", "destroy_policy": {"type": "lifetime", "minutes": 120}}),
    )
    .await;
    let created_ms = num(&show, "created_ms");
    let alice = joined(&server, "alice", "show").await;
    send_ok(&alice, "show", "opening").await;
    expect_chat(&alice, "show", "alice", "opening").await;

    // Idle for almost two hours, twice the global idle time: the lifetime policy keeps it.
    assert!(
        relay
            .tick(created_ms + 120 * MIN - 1)
            .await
            .destroyed
            .is_empty()
    );
    assert_eq!(
        destroyed_by(&relay.tick(created_ms + 120 * MIN).await),
        [("show", DestroyReason::Lifetime)]
    );
    assert_eq!(
        next_event(&alice).await,
        destroyed("show", DestroyReason::Lifetime)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_destroy_fires_at_its_time_and_can_be_moved_or_cancelled() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    for id in ["sched", "cancelled", "kept"] {
        server.create_room(id).await;
    }
    let at = now_ms() + 10 * MIN;

    // Settable, movable, cancellable.
    call(
        &server,
        Method::PUT,
        "/v1/rooms/sched/destroy-at",
        Some(json!({"at": at + MIN})),
        204,
    )
    .await;
    call(
        &server,
        Method::PUT,
        "/v1/rooms/sched/destroy-at",
        Some(json!({ "at": at })),
        204,
    )
    .await;
    assert_eq!(num(&view(&server, "sched").await, "destroy_at_ms"), at);
    call(
        &server,
        Method::PUT,
        "/v1/rooms/cancelled/destroy-at",
        Some(json!({ "at": at })),
        204,
    )
    .await;
    call(
        &server,
        Method::DELETE,
        "/v1/rooms/cancelled/destroy-at",
        None,
        204,
    )
    .await;
    assert_eq!(
        view(&server, "cancelled").await["destroy_at_ms"],
        Value::Null
    );
    // A time in the past is refused and changes nothing.
    for past in [now_ms() - 1, 0] {
        refused_call(
            &server,
            Method::PUT,
            "/v1/rooms/sched/destroy-at",
            Some(json!({ "at": past })),
            BAD,
            "future",
        )
        .await;
    }
    assert_eq!(num(&view(&server, "sched").await, "destroy_at_ms"), at);
    refused_call(
        &server,
        Method::PUT,
        "/v1/rooms/nowhere/destroy-at",
        Some(json!({ "at": at })),
        (404, "ROOM_NOT_FOUND"),
        "nowhere",
    )
    .await;
    // An explicit schedule applies to a keepalive room too.
    call(&server, Method::PUT, "/v1/rooms/kept/keepalive", None, 204).await;
    call(
        &server,
        Method::PUT,
        "/v1/rooms/kept/destroy-at",
        Some(json!({ "at": at })),
        204,
    )
    .await;

    let alice = joined(&server, "alice", "sched").await;
    let carol = joined(&server, "carol", "cancelled").await;
    assert!(relay.tick(at - 1).await.destroyed.is_empty());
    assert_eq!(
        destroyed_by(&relay.tick(at).await),
        [
            ("kept", DestroyReason::Scheduled),
            ("sched", DestroyReason::Scheduled)
        ]
    );
    assert_eq!(
        next_event(&alice).await,
        destroyed("sched", DestroyReason::Scheduled)
    );
    // The cancelled one lives on.
    assert_eq!(num(&view(&server, "cancelled").await, "member_count"), 1);
    marker(&server, "cancelled", &[&carol]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_rooms_are_never_auto_destroyed_and_the_list_has_no_cap() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    create(
        &server,
        json!({"id": "forever", "destroy_policy": {"type": "idle", "minutes": 1}}),
    )
    .await;
    create(
        &server,
        json!({"id": "long-show", "destroy_policy": {"type": "lifetime", "minutes": 60}}),
    )
    .await;
    create(
        &server,
        json!({"id": "mortal", "destroy_policy": {"type": "idle", "minutes": 1}}),
    )
    .await;
    // More than RongCloud's 5: seven rooms on the list.
    let mut kept: BTreeSet<String> = ids("k", 5).into_iter().collect();
    kept.extend(["forever".to_owned(), "long-show".to_owned()]);
    for id in &kept {
        if id.starts_with('k') {
            server.create_room(id).await;
        }
        call(
            &server,
            Method::PUT,
            &format!("/v1/rooms/{id}/keepalive"),
            None,
            204,
        )
        .await;
    }
    let list = call(&server, Method::GET, "/v1/keepalive", None, 200).await;
    assert_eq!(list, json!({ "rooms": kept }));
    assert_eq!(view(&server, "forever").await["keepalive"], json!(true));
    assert_eq!(view(&server, "mortal").await["keepalive"], json!(false));
    refused_call(
        &server,
        Method::PUT,
        "/v1/rooms/nowhere/keepalive",
        None,
        (404, "ROOM_NOT_FOUND"),
        "nowhere",
    )
    .await;

    let alice = joined(&server, "alice", "forever").await;
    let far = now_ms() + 30 * 24 * 60 * MIN;
    assert_eq!(
        destroyed_by(&relay.tick(far).await),
        [("mortal", DestroyReason::Idle)]
    );
    marker(&server, "forever", &[&alice]).await;
    assert_eq!(
        num(
            &call(&server, Method::GET, "/v1/rooms", None, 200).await,
            "total"
        ),
        kept.len() as u64
    );

    // Off the list, it goes at the next tick.
    call(
        &server,
        Method::DELETE,
        "/v1/rooms/forever/keepalive",
        None,
        204,
    )
    .await;
    kept.remove("forever");
    assert_eq!(
        call(&server, Method::GET, "/v1/keepalive", None, 200).await,
        json!({ "rooms": kept })
    );
    assert_eq!(
        destroyed_by(&relay.tick(far).await),
        [("forever", DestroyReason::Idle)]
    );
    assert_eq!(
        next_event(&alice).await,
        destroyed("forever", DestroyReason::Idle)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_destroy_policy_applies_at_the_next_tick() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    create(
        &server,
        json!({"id": "show", "destroy_policy": {"type": "lifetime", "minutes": 600}}),
    )
    .await;
    let alice = joined(&server, "alice", "show").await;
    let since = last_activity(&server, "show").await;
    // Idle for 200 minutes, but its lifetime has not run out.
    assert!(relay.tick(since + 200 * MIN).await.destroyed.is_empty());

    // Invalid policies are refused and change nothing.
    for (policy, names) in [
        (json!({"type": "idle", "minutes": 0}), "1..=1440"),
        (json!({"type": "lifetime", "minutes": 10081}), "60..=10080"),
        (json!({"type": "never"}), "never"),
    ] {
        refused_call(
            &server,
            Method::PUT,
            "/v1/rooms/show/destroy-policy",
            Some(policy),
            BAD,
            names,
        )
        .await;
    }
    assert_eq!(
        view(&server, "show").await["destroy_policy"],
        json!({"type": "lifetime", "minutes": 600})
    );

    call(
        &server,
        Method::PUT,
        "/v1/rooms/show/destroy-policy",
        Some(json!({"type": "idle", "minutes": 60})),
        204,
    )
    .await;
    assert_eq!(
        view(&server, "show").await["destroy_policy"],
        json!({"type": "idle", "minutes": 60})
    );
    assert_eq!(
        destroyed_by(&relay.tick(since + 200 * MIN).await),
        [("show", DestroyReason::Idle)]
    );
    assert_eq!(
        next_event(&alice).await,
        destroyed("show", DestroyReason::Idle)
    );
}

// =================================== §3 membership ===================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_needs_the_room_and_returns_the_asked_history() {
    let server = TestServer::start(manual_timers).await;
    server.create_room("hist").await;
    for i in 1..=55 {
        call(
            &server,
            Method::POST,
            "/v1/rooms/hist/messages",
            Some(json!({"from": "poster", "type": "chat", "body": format!("m{i}")})),
            200,
        )
        .await;
    }
    let reader = server.client("reader").await;
    assert_eq!(
        code(reader.join("nowhere", 0).await),
        ErrorCode::RoomNotFound
    );

    // Out of range: refused, naming the limit, and not joined.
    for n in [51, -2] {
        let e = refused(reader.join("hist", n).await);
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("1..=50"), "{}", e.message);
    }
    assert!(!is_member(&server, "hist", "reader").await);

    let seqs = |info: &roomcast::protocol::JoinInfo| -> Vec<u64> {
        for h in &info.history {
            assert_eq!(h.message.body, format!("m{}", h.message.seq).as_bytes());
        }
        info.history.iter().map(|h| h.message.seq).collect()
    };
    let none = reader.join("hist", -1).await.expect("joins");
    assert_eq!((seqs(&none), none.last_seq), (vec![], 55));
    let default = reader.join("hist", 0).await.expect("joins again");
    assert_eq!(seqs(&default), (46..=55).collect::<Vec<_>>());
    let max = reader.join("hist", 50).await.expect("joins again");
    assert_eq!(seqs(&max), (6..=55).collect::<Vec<_>>());
    let one = reader.join("hist", 1).await.expect("joins again");
    assert_eq!(seqs(&one), [55]);
    assert_eq!(members(&server, "hist").await, ["reader"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_is_in_at_most_8_rooms() {
    let server = TestServer::start(manual_timers).await;
    let rooms = ids("r", 9);
    for r in &rooms {
        server.create_room(r).await;
    }
    let alice = server.client("alice").await;
    for r in &rooms[..8] {
        alice.join(r, -1).await.expect("one of 8 rooms");
    }
    let e = refused(alice.join(&rooms[8], -1).await);
    assert_eq!(e.code, ErrorCode::TooManyRooms);
    assert!(e.message.contains("8 rooms"), "{}", e.message);
    assert!(e.message.contains("rooms_per_user"), "{}", e.message);
    assert!(!is_member(&server, &rooms[8], "alice").await);
    // The limit is per user, across devices.
    let phone = server.client("alice").await;
    assert_eq!(
        code(phone.join(&rooms[8], -1).await),
        ErrorCode::TooManyRooms
    );

    alice.leave(&rooms[0]).await.expect("leaves one");
    phone.join(&rooms[8], -1).await.expect("now there is room");
    assert!(is_member(&server, &rooms[8], "alice").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_room_mode_moves_every_device_of_the_user_to_the_new_room() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.single_room = true;
    })
    .await;
    create(&server, json!({"id": "a", "member_events": true})).await;
    server.create_room("b").await;
    let watcher = joined(&server, "watcher", "a").await;
    let laptop = joined(&server, "u", "a").await;
    let phone = server.client("u").await;
    phone.join("a", -1).await.expect("second device joins a");
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberJoined {
            room: "a".into(),
            user: "u".into()
        }
    );

    let info = laptop.join("b", -1).await.expect("joins b");
    assert_eq!(info.room.members, ["u"]);
    for device in [&laptop, &phone] {
        assert_eq!(
            next_event(device).await,
            kicked("a", KickReason::SingleRoom)
        );
    }
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberLeft {
            room: "a".into(),
            user: "u".into()
        }
    );
    assert_eq!(members(&server, "a").await, ["watcher"]);
    assert_eq!(members(&server, "b").await, ["u"]);
    // Joining the room it is in moves nothing.
    phone.join("b", -1).await.expect("second device joins b");
    send_ok(&laptop, "b", "here").await;
    for device in [&laptop, &phone] {
        expect_chat(device, "b", "u", "here").await;
    }
    marker(&server, "a", &[&watcher]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_room_mode_a_refused_join_keeps_the_current_room() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.single_room = true;
    })
    .await;
    server.create_room("a").await;
    server.create_room("b").await;
    call(
        &server,
        Method::POST,
        "/v1/rooms/b/bans",
        Some(json!({"user_ids": ["u"], "minutes": 10})),
        200,
    )
    .await;
    let u = joined(&server, "u", "a").await;
    assert_eq!(code(u.join("b", -1).await), ErrorCode::Banned);
    assert!(
        is_member(&server, "a", "u").await,
        "a refused join must change nothing"
    );
    marker(&server, "a", &[&u]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_in_join_order_checked_and_shown_to_clients_up_to_20() {
    let server = TestServer::start(manual_timers).await;
    server.create_room("big").await;
    let names = ids("m", 25);
    let mut clients = Vec::new();
    for n in &names {
        clients.push(joined(&server, n, "big").await);
    }

    let asc = call(
        &server,
        Method::GET,
        "/v1/rooms/big/members?limit=500&order=asc",
        None,
        200,
    )
    .await;
    let listed: Vec<&str> = asc["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, names);
    assert_eq!(
        (num(&asc, "total"), &asc["next_cursor"]),
        (25, &Value::Null)
    );
    let times: Vec<u64> = asc["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| num(m, "joined_ms"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    let desc = call(
        &server,
        Method::GET,
        "/v1/rooms/big/members?limit=3&order=desc",
        None,
        200,
    )
    .await;
    let listed: Vec<&str> = desc["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["user_id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed, ["m24", "m23", "m22"]);
    assert_eq!(num(&desc, "total"), 25);
    for limit in [0, 501] {
        refused_call(
            &server,
            Method::GET,
            &format!("/v1/rooms/big/members?limit={limit}"),
            None,
            BAD,
            "1..=500",
        )
        .await;
    }

    let check = call(
        &server,
        Method::POST,
        "/v1/rooms/big/members:check",
        Some(json!({"user_ids": ["m00", "nobody", "m24"]})),
        200,
    )
    .await;
    assert_eq!(
        check,
        json!({"results": [
            {"user_id": "m00", "member": true},
            {"user_id": "nobody", "member": false},
            {"user_id": "m24", "member": true},
        ]})
    );
    let thousand = call(
        &server,
        Method::POST,
        "/v1/rooms/big/members:check",
        Some(json!({ "user_ids": ids("u", 1000) })),
        200,
    )
    .await;
    assert_eq!(thousand["results"].as_array().map(Vec::len), Some(1000));
    let mut too_many = ids("u", 1000);
    too_many.push("m00".into());
    refused_call(
        &server,
        Method::POST,
        "/v1/rooms/big/members:check",
        Some(json!({ "user_ids": too_many })),
        (400, "BATCH_TOO_LARGE"),
        "1..=1000",
    )
    .await;

    // A client sees the count and the first 20 members.
    let info = clients[7].room_info("big").await.expect("room info");
    assert_eq!(info.member_count, 25);
    assert_eq!(info.members, names[..20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_events_announce_joins_and_leaves_only_where_turned_on() {
    let server = TestServer::start(manual_timers).await;
    create(&server, json!({"id": "on", "member_events": true})).await;
    server.create_room("off").await;
    let watcher = server.client("watcher").await;
    watcher.join("on", -1).await.expect("joins on");
    watcher.join("off", -1).await.expect("joins off");

    let bob = server.client("bob").await;
    bob.join("off", -1).await.expect("bob joins off");
    bob.leave("off").await.expect("bob leaves off");
    bob.join("on", -1).await.expect("bob joins on");
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberJoined {
            room: "on".into(),
            user: "bob".into()
        }
    );
    bob.leave("on").await.expect("bob leaves on");
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberLeft {
            room: "on".into(),
            user: "bob".into()
        }
    );
    assert_eq!(members(&server, "on").await, ["watcher"]);
    // Nothing came from "off", and nothing else from "on".
    marker(&server, "off", &[&watcher]).await;
    marker(&server, "on", &[&watcher]).await;
    // A leaver is not a member any more.
    assert_eq!(
        code(bob.send("on", "chat", body("x"), false).await),
        ErrorCode::NotInRoom
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_member_events_max_joins_and_leaves_become_a_periodic_member_count() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.member_events_max = 3;
        c.rooms.member_count_interval_ms = 5_000;
    })
    .await;
    let relay = server.relay();
    create(&server, json!({"id": "crowd", "member_events": true})).await;
    let watcher = joined(&server, "watcher", "crowd").await;
    let u1 = joined(&server, "u1", "crowd").await;
    let _u2 = joined(&server, "u2", "crowd").await;
    for u in ["u1", "u2"] {
        assert_eq!(
            next_notice(&watcher).await,
            Event::MemberJoined {
                room: "crowd".into(),
                user: u.into()
            }
        );
    }
    assert_eq!(
        next_notice(&u1).await,
        Event::MemberJoined {
            room: "crowd".into(),
            user: "u2".into()
        }
    );
    // Three members: still events. A fourth: none; the tick announces the count instead.
    let u3 = joined(&server, "u3", "crowd").await;
    let t = now_ms();
    assert_eq!(relay.tick(t).await.counts_sent, 1);
    let count = |n: u64| Event::MemberCount {
        room: "crowd".into(),
        count: n,
    };
    assert_eq!(next_notice(&watcher).await, count(4));
    assert_eq!(next_notice(&u1).await, count(4));
    assert_eq!(
        relay.tick(t).await.counts_sent,
        0,
        "the count did not change"
    );

    let u4 = joined(&server, "u4", "crowd").await;
    assert_eq!(
        relay.tick(t + 5_000 - 1).await.counts_sent,
        0,
        "within the interval"
    );
    assert_eq!(relay.tick(t + 5_000).await.counts_sent, 1);
    assert_eq!(next_notice(&watcher).await, count(5));
    u4.leave("crowd").await.expect("u4 leaves");
    u3.leave("crowd").await.expect("u3 leaves");
    // 5 → 4 → 3: the first leave is above the limit (no event), the second is at it.
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberLeft {
            room: "crowd".into(),
            user: "u3".into()
        }
    );
    marker(&server, "crowd", &[&watcher]).await;
    assert_eq!(members(&server, "crowd").await, ["watcher", "u1", "u2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_member_events_max_again_announces_the_count_again() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.member_events_max = 3;
        c.rooms.member_count_interval_ms = 5_000;
    })
    .await;
    let relay = server.relay();
    create(&server, json!({"id": "crowd", "member_events": true})).await;
    let watcher = joined(&server, "watcher", "crowd").await;
    let _u1 = joined(&server, "u1", "crowd").await;
    let _u2 = joined(&server, "u2", "crowd").await;
    for _ in 0..2 {
        assert!(matches!(
            next_notice(&watcher).await,
            Event::MemberJoined { .. }
        ));
    }
    let u3 = joined(&server, "u3", "crowd").await;
    let t = now_ms();
    assert_eq!(relay.tick(t).await.counts_sent, 1);
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberCount {
            room: "crowd".into(),
            count: 4
        }
    );
    u3.leave("crowd").await.expect("u3 leaves");
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberLeft {
            room: "crowd".into(),
            user: "u3".into()
        }
    );
    // The watcher now counts 3. u3 comes back: 4, above the limit, so no MemberJoined ...
    u3.join("crowd", -1).await.expect("u3 rejoins");
    // ... and the count must be announced at a later tick.
    assert_eq!(relay.tick(t + 10_000).await.counts_sent, 1);
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberCount {
            room: "crowd".into(),
            count: 4
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_member_is_removed_after_the_grace_unless_on_the_user_whitelist() {
    const GRACE: u64 = 30_000;
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.offline_grace_ms = GRACE;
    })
    .await;
    let relay = server.relay();
    create(&server, json!({"id": "r", "member_events": true})).await;
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/user-whitelist",
        Some(json!({"user_ids": ["vip"]})),
        204,
    )
    .await;
    let watcher = joined(&server, "watcher", "r").await;
    let ghost = joined(&server, "ghost", "r").await;
    let vip = joined(&server, "vip", "r").await;
    for u in ["ghost", "vip"] {
        assert_eq!(
            next_notice(&watcher).await,
            Event::MemberJoined {
                room: "r".into(),
                user: u.into()
            }
        );
    }

    // Both connections go. `unregister_conn` is what the server calls when it notices a connection
    // is gone; calling it here first makes the moment the grace starts known to the test instead
    // of racing the server's own notice (its call when the connection then closes is a no-op).
    let before = now_ms();
    for c in [&ghost, &vip] {
        relay.unregister_conn(c.conn_id());
    }
    let after = now_ms();
    for c in [&ghost, &vip] {
        c.close().await;
    }
    assert_eq!(members(&server, "r").await, ["watcher", "ghost", "vip"]);
    assert!(
        relay
            .tick(before + GRACE - 1)
            .await
            .offline_removed
            .is_empty()
    );
    let report = relay.tick(after + GRACE).await;
    assert_eq!(
        report.offline_removed,
        [("r".to_owned(), "ghost".to_owned())]
    );
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberLeft {
            room: "r".into(),
            user: "ghost".into()
        }
    );
    assert_eq!(members(&server, "r").await, ["watcher", "vip"]);

    // The whitelisted member stays however long it is gone (the room is on keepalive so the
    // far-future tick tests only the offline exit).
    call(&server, Method::PUT, "/v1/rooms/r/keepalive", None, 204).await;
    let far = after + 1000 * GRACE;
    assert!(relay.tick(far).await.offline_removed.is_empty());
    assert_eq!(members(&server, "r").await, ["watcher", "vip"]);
    // Off the whitelist, the next tick removes it.
    call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/user-whitelist/vip",
        None,
        204,
    )
    .await;
    assert_eq!(
        relay.tick(far).await.offline_removed,
        [("r".to_owned(), "vip".to_owned())]
    );
    assert_eq!(
        next_notice(&watcher).await,
        Event::MemberLeft {
            room: "r".into(),
            user: "vip".into()
        }
    );
    assert_eq!(members(&server, "r").await, ["watcher"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_within_the_grace_resumes_with_the_exact_missed_count() {
    const GRACE: u64 = 30_000;
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.offline_grace_ms = GRACE;
    })
    .await;
    let relay = server.relay();
    server.create_room("r").await;
    let mobile = joined(&server, "mobile", "r").await;
    let host = joined(&server, "host", "r").await;
    for i in 1..=2 {
        send_ok(&host, "r", &format!("before {i}")).await;
        for c in [&mobile, &host] {
            expect_chat(c, "r", "host", &format!("before {i}")).await;
        }
    }

    // The connection goes (see the offline-exit test for why `unregister_conn` is called here).
    relay.unregister_conn(mobile.conn_id());
    mobile.close().await;
    for i in 1..=3 {
        send_ok(&host, "r", &format!("missed {i}")).await;
        expect_chat(&host, "r", "host", &format!("missed {i}")).await;
    }

    let back = server.client("mobile").await;
    assert_eq!(
        next_event(&back).await,
        ClientEvent::Resumed {
            room: "r".into(),
            missed: 3,
            last_seq: 5
        }
    );
    // Still a member: the grace no longer runs, new messages arrive without a join, and it sends.
    assert!(
        relay
            .tick(now_ms() + 10 * GRACE)
            .await
            .offline_removed
            .is_empty()
    );
    assert_eq!(members(&server, "r").await, ["mobile", "host"]);
    assert_eq!(send_ok(&host, "r", "after").await, 6);
    for c in [&back, &host] {
        expect_chat(c, "r", "host", "after").await;
    }
    assert_eq!(send_ok(&back, "r", "i am back").await, 7);
    for c in [&back, &host] {
        expect_chat(c, "r", "mobile", "i am back").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnecting_before_the_old_connection_is_noticed_keeps_its_membership() {
    const GRACE: u64 = 30_000;
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.rooms.offline_grace_ms = GRACE;
    })
    .await;
    let relay = server.relay();
    server.create_room("r").await;
    let old = joined(&server, "mobile", "r").await;
    let host = joined(&server, "host", "r").await;
    // The reconnect comes first; the server notices the old connection's loss after it.
    let back = server.client("mobile").await;
    send_ok(&host, "r", "meanwhile").await;
    expect_chat(&host, "r", "host", "meanwhile").await;
    relay.unregister_conn(old.conn_id());
    old.close().await;

    assert!(
        relay
            .tick(now_ms() + GRACE)
            .await
            .offline_removed
            .is_empty(),
        "the user is connected: it must keep its membership"
    );
    assert_eq!(members(&server, "r").await, ["mobile", "host"]);
    assert!(matches!(
        next_event(&back).await,
        ClientEvent::Resumed { .. }
    ));
}

/// Children killed (SIGKILL, by their own pid) and reaped when dropped, also when a test fails.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_killed_subscriber_processes_are_gone_within_the_grace_plus_a_tick() {
    // Short transport and timer settings so that the whole path runs on the real clock: the QUIC
    // idle timeout notices the dead connections, the grace runs, the server's own timer removes.
    let server = TestServer::start(|c| {
        c.transport.idle_timeout_ms = 1_000;
        c.transport.keep_alive_ms = 300;
        c.rooms.offline_grace_ms = 500;
        c.rooms.timer_tick_ms = 100;
    })
    .await;
    create(&server, json!({"id": "R", "member_events": true})).await;
    let watcher = joined(&server, "watcher", "R").await;
    let mut ca = tempfile::NamedTempFile::new().expect("a CA file");
    ca.write_all(&server.ca_pem).expect("CA written");

    let users: Vec<String> = (1..=5).map(|i| format!("viewer-{i}")).collect();
    let (lines_tx, lines) = flume::unbounded::<(usize, String)>();
    let mut children = Children(Vec::new());
    for (i, user) in users.iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .arg("sub")
            .args(["--server", &server.quic_addr.to_string()])
            .arg("--ca")
            .arg(ca.path())
            .args([
                "--token",
                &server.token(user),
                "--room",
                "R",
                "--user",
                user,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("roomcast sub starts");
        let out = child.stdout.take().expect("stdout piped");
        children.0.push(child);
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((i, line)).is_err() {
                    return;
                }
            }
        });
    }
    drop(lines_tx);
    // Each prints `{"event":"joined",...}` first (then the presence notices of the others).
    let mut joined_subs = BTreeSet::new();
    while joined_subs.len() < users.len() {
        let (i, line) = within("a joined line", lines.recv_async())
            .await
            .expect("a sub process printed a line");
        if joined_subs.insert(i) {
            let v: Value = serde_json::from_str(&line).expect("JSON lines");
            assert_eq!(
                (&v["event"], &v["room"]),
                (&json!("joined"), &json!("R")),
                "{line}"
            );
        }
    }
    let mut joins = BTreeSet::new();
    for _ in 0..users.len() {
        match next_notice(&watcher).await {
            Event::MemberJoined { room, user } if room == "R" => joins.insert(user),
            other => panic!("expected a join, got {other:?}"),
        };
    }
    assert_eq!(joins, users.iter().cloned().collect());
    assert_eq!(members(&server, "R").await.len(), 6);

    // Kill them: the connections vanish without a close, and nothing is sent in the room.
    for c in &mut children.0 {
        c.kill().expect("SIGKILL");
        c.wait().expect("reaped");
    }
    let leaves = within("five MemberLeft notices", async {
        let mut left = BTreeSet::new();
        while left.len() < users.len() {
            match watcher.next_event().await {
                Some(ClientEvent::Notice(Event::MemberLeft { room, user })) if room == "R" => {
                    left.insert(user);
                }
                other => panic!("expected a leave, got {other:?}"),
            }
        }
        left
    })
    .await;
    assert_eq!(leaves, users.iter().cloned().collect());
    let list = call(
        &server,
        Method::GET,
        "/v1/rooms/R/members?limit=500",
        None,
        200,
    )
    .await;
    assert_eq!(num(&list, "total"), 1);
    assert_eq!(list["members"][0]["user_id"], "watcher");
}

// =================================== §5 moderation ===================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_kicks_at_once_and_blocks_rejoining_until_it_expires_or_is_lifted() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    server.create_room("r").await;
    let alice = joined(&server, "alice", "r").await;
    let bob = joined(&server, "bob", "r").await;

    let before = now_ms();
    let ban = call(
        &server,
        Method::POST,
        "/v1/rooms/r/bans",
        Some(json!({"user_ids": ["alice"], "minutes": 1})),
        200,
    )
    .await;
    let after = now_ms();
    let until = num(&ban, "until_ms");
    assert!(before + MIN <= until && until <= after + MIN, "{until}");
    // Removed by the time the call returned; the kick is already on its way.
    assert!(!is_member(&server, "r", "alice").await);
    assert_eq!(next_event(&alice).await, kicked("r", KickReason::Banned));
    // Not notified: only the banned user is told.
    let banned = Event::Banned {
        room: "r".into(),
        users: vec!["alice".into()],
        until_ms: until,
    };
    assert_eq!(next_notice(&alice).await, banned);
    marker(&server, "r", &[&bob]).await;
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/bans", None, 200).await,
        json!({"users": [{"user_id": "alice", "until_ms": until}]})
    );
    let e = refused(alice.join("r", -1).await);
    assert_eq!(e.code, ErrorCode::Banned);
    assert!(e.message.contains(&until.to_string()), "{}", e.message);
    assert_eq!(
        code(alice.send("r", "chat", body("let me in"), false).await),
        ErrorCode::NotInRoom
    );

    // Limits: refused, naming the limit, nothing changed (bob, in the too-long list, stays).
    let mut twenty_one = ids("x", 20);
    twenty_one.push("bob".into());
    for (b, names) in [
        (json!({"user_ids": twenty_one, "minutes": 1}), "1..=20"),
        (json!({"user_ids": ["bob"], "minutes": 0}), "1..=43200"),
        (json!({"user_ids": ["bob"], "minutes": 43201}), "1..=43200"),
        (json!({"user_ids": [], "minutes": 1}), "1..=20"),
    ] {
        refused_call(
            &server,
            Method::POST,
            "/v1/rooms/r/bans",
            Some(b),
            BAD,
            names,
        )
        .await;
    }
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/bans", None, 200).await,
        json!({"users": [{"user_id": "alice", "until_ms": until}]})
    );
    assert!(is_member(&server, "r", "bob").await);

    // Expiry: the timer pass at the ban's end drops it; then the join succeeds.
    relay.tick(until - 1).await;
    assert_eq!(code(alice.join("r", -1).await), ErrorCode::Banned);
    relay.tick(until).await;
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/bans", None, 200).await,
        json!({"users": []})
    );
    alice.join("r", -1).await.expect("the ban expired");

    // A notified ban: the room is told too; then lifted by hand.
    let ban = call(
        &server,
        Method::POST,
        "/v1/rooms/r/bans",
        Some(json!({"user_ids": ["alice"], "minutes": 43200, "notify": true})),
        200,
    )
    .await;
    let until = num(&ban, "until_ms");
    let banned = Event::Banned {
        room: "r".into(),
        users: vec!["alice".into()],
        until_ms: until,
    };
    assert_eq!(next_event(&alice).await, kicked("r", KickReason::Banned));
    assert_eq!(next_notice(&alice).await, banned);
    assert_eq!(next_notice(&bob).await, banned);
    call(&server, Method::DELETE, "/v1/rooms/r/bans/alice", None, 204).await;
    assert_eq!(
        next_notice(&alice).await,
        Event::Unbanned {
            room: "r".into(),
            users: vec!["alice".into()]
        }
    );
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/bans", None, 200).await,
        json!({"users": []})
    );
    refused_call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/bans/alice",
        None,
        BAD,
        "not banned",
    )
    .await;
    alice.join("r", -1).await.expect("unbanned");
    send_ok(&alice, "r", "back").await;
    for c in [&alice, &bob] {
        expect_chat(c, "r", "alice", "back").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_member_still_receives_and_the_mute_outlives_leaving() {
    let server = TestServer::start(manual_timers).await;
    server.create_room("r").await;
    let alice = joined(&server, "alice", "r").await;
    let bob = joined(&server, "bob", "r").await;
    let carol = joined(&server, "carol", "r").await;

    let mute = call(
        &server,
        Method::POST,
        "/v1/rooms/r/mutes",
        Some(json!({"user_ids": ["alice"], "minutes": 10})),
        200,
    )
    .await;
    let until = num(&mute, "until_ms");
    // Not notified: alice alone is told.
    assert_eq!(
        next_notice(&alice).await,
        Event::Muted {
            room: "r".into(),
            users: vec!["alice".into()],
            until_ms: until
        }
    );
    let e = refused(alice.send("r", "chat", body("hello?"), false).await);
    assert_eq!(e.code, ErrorCode::Muted);
    assert!(e.message.contains("muted in this room"), "{}", e.message);
    // She still receives; the others got no notice (their next event is bob's message).
    send_ok(&bob, "r", "you are muted").await;
    for c in [&alice, &bob, &carol] {
        expect_chat(c, "r", "bob", "you are muted").await;
    }
    // The mute outlives leaving and rejoining.
    alice.leave("r").await.expect("leaves");
    let info = alice.join("r", -1).await.expect("rejoins");
    assert!(info.muted);
    assert_eq!(
        code(alice.send("r", "chat", body("now?"), false).await),
        ErrorCode::Muted
    );
    // An admin send as the muted user bypasses the mute.
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/messages",
        Some(json!({"from": "alice", "type": "chat", "body": "via admin"})),
        200,
    )
    .await;
    for c in [&alice, &bob, &carol] {
        expect_chat(c, "r", "alice", "via admin").await;
    }

    // A notified mute: every member hears of it.
    let mute = call(
        &server,
        Method::POST,
        "/v1/rooms/r/mutes",
        Some(json!({"user_ids": ["carol"], "minutes": 43200, "notify": true})),
        200,
    )
    .await;
    let carol_until = num(&mute, "until_ms");
    for c in [&alice, &bob, &carol] {
        assert_eq!(
            next_notice(c).await,
            Event::Muted {
                room: "r".into(),
                users: vec!["carol".into()],
                until_ms: carol_until
            }
        );
    }
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/mutes", None, 200).await,
        json!({"users": [
            {"user_id": "alice", "until_ms": until},
            {"user_id": "carol", "until_ms": carol_until},
        ]})
    );

    // Limits: refused, naming the limit, nothing changed.
    let mut twenty_one = ids("x", 20);
    twenty_one.push("bob".into());
    for (b, names) in [
        (json!({"user_ids": twenty_one, "minutes": 1}), "1..=20"),
        (json!({"user_ids": ["bob"], "minutes": 0}), "1..=43200"),
        (json!({"user_ids": ["bob"], "minutes": 43201}), "1..=43200"),
    ] {
        refused_call(
            &server,
            Method::POST,
            "/v1/rooms/r/mutes",
            Some(b),
            BAD,
            names,
        )
        .await;
    }
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/mutes", None, 200).await["users"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    send_ok(&bob, "r", "not muted").await;
    for c in [&alice, &bob, &carol] {
        expect_chat(c, "r", "bob", "not muted").await;
    }

    // Unmute (not notified): alice alone is told, and she can send again.
    call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/mutes/alice",
        None,
        204,
    )
    .await;
    assert_eq!(
        next_notice(&alice).await,
        Event::Unmuted {
            room: "r".into(),
            users: vec!["alice".into()]
        }
    );
    refused_call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/mutes/alice",
        None,
        BAD,
        "not muted",
    )
    .await;
    send_ok(&alice, "r", "free").await;
    for c in [&alice, &bob, &carol] {
        expect_chat(c, "r", "alice", "free").await;
    }
    assert_eq!(
        call(&server, Method::GET, "/v1/rooms/r/mutes", None, 200).await,
        json!({"users": [{"user_id": "carol", "until_ms": carol_until}]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_all_silences_every_member_but_its_whitelist_of_at_most_20() {
    let server = TestServer::start(manual_timers).await;
    server.create_room("r").await;
    let host = joined(&server, "host", "r").await;
    let guest = joined(&server, "guest", "r").await;

    call(&server, Method::PUT, "/v1/rooms/r/mute-all", None, 204).await;
    assert_eq!(view(&server, "r").await["mute_all"], json!(true));
    for c in [&host, &guest] {
        assert_eq!(next_notice(c).await, Event::MuteAll { room: "r".into() });
        let e = refused(c.send("r", "chat", body("hello"), false).await);
        assert_eq!(e.code, ErrorCode::Muted);
        assert!(e.message.contains("mute-all"), "{}", e.message);
    }
    let late = server.client("late").await;
    assert!(late.join("r", -1).await.expect("late joins").muted);

    // The whitelist may send, even with a member mute of its own.
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/mute-all-whitelist",
        Some(json!({"user_ids": ["host"]})),
        204,
    )
    .await;
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/mutes",
        Some(json!({"user_ids": ["host"], "minutes": 5})),
        200,
    )
    .await;
    assert!(matches!(next_notice(&host).await, Event::Muted { .. }));
    send_ok(&host, "r", "host speaks").await;
    for c in [&host, &guest, &late] {
        expect_chat(c, "r", "host", "host speaks").await;
    }

    // At most 20 on the whitelist: the 21st is refused and changes nothing.
    let full = fill_to_twenty_then_refuse(
        &server,
        "/v1/rooms/r/mute-all-whitelist",
        "user_ids",
        "w",
        "guest",
    )
    .await;
    refused_call(
        &server,
        Method::POST,
        "/v1/rooms/r/mute-all-whitelist",
        Some(json!({ "user_ids": ids("v", 21) })),
        BAD,
        "1..=20",
    )
    .await;
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/v1/rooms/r/mute-all-whitelist",
            None,
            200
        )
        .await,
        full
    );
    assert_eq!(
        code(guest.send("r", "chat", body("me too"), false).await),
        ErrorCode::Muted
    );

    // Off the whitelist, the host is muted again (by mute-all and its own mute).
    call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/mute-all-whitelist/host",
        None,
        204,
    )
    .await;
    assert_eq!(
        code(host.send("r", "chat", body("again"), false).await),
        ErrorCode::Muted
    );

    call(&server, Method::DELETE, "/v1/rooms/r/mute-all", None, 204).await;
    for c in [&host, &guest, &late] {
        assert_eq!(
            next_notice(c).await,
            Event::MuteAllLifted { room: "r".into() }
        );
    }
    assert_eq!(view(&server, "r").await["mute_all"], json!(false));
    send_ok(&guest, "r", "finally").await;
    for c in [&host, &guest, &late] {
        expect_chat(c, "r", "guest", "finally").await;
    }
    // The host's own member mute is still there.
    assert_eq!(
        code(host.send("r", "chat", body("and me?"), false).await),
        ErrorCode::Muted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_globally_muted_user_on_the_mute_all_whitelist_still_gets_muted() {
    let server = TestServer::start(manual_timers).await;
    let relay = server.relay();
    create(
        &server,
        json!({"id": "a", "mute_all": true, "mute_all_whitelist": ["troll"]}),
    )
    .await;
    server.create_room("b").await;
    let troll = server.client("troll").await;
    for r in ["a", "b"] {
        assert!(!troll.join(r, -1).await.expect("joins").muted);
    }
    let friend = joined(&server, "friend", "b").await;

    let mute = call(
        &server,
        Method::POST,
        "/v1/global-mutes",
        Some(json!({"user_ids": ["troll"], "minutes": 5})),
        200,
    )
    .await;
    let until = num(&mute, "until_ms");
    assert_eq!(
        next_notice(&troll).await,
        Event::Muted {
            room: String::new(),
            users: vec!["troll".into()],
            until_ms: until
        }
    );
    for r in ["a", "b"] {
        let e = refused(troll.send(r, "chat", body("spam"), false).await);
        assert_eq!(e.code, ErrorCode::Muted, "{r}");
        assert!(e.message.contains("globally"), "{}", e.message);
    }
    let other = server.client("troll").await;
    assert!(other.join("b", -1).await.expect("joins").muted);
    assert_eq!(
        call(&server, Method::GET, "/v1/global-mutes", None, 200).await,
        json!({"users": [{"user_id": "troll", "until_ms": until}]})
    );
    // The others were not told (one notice went to the user, not to the rooms).
    marker(&server, "b", &[&friend, &troll, &other]).await;
    marker(&server, "a", &[&troll]).await;

    // Limits: refused, naming the limit, nothing changed.
    for (b, names) in [
        (json!({"user_ids": ids("x", 21), "minutes": 1}), "1..=20"),
        (json!({"user_ids": ["friend"], "minutes": 0}), "1..=43200"),
        (
            json!({"user_ids": ["friend"], "minutes": 43201}),
            "1..=43200",
        ),
    ] {
        refused_call(
            &server,
            Method::POST,
            "/v1/global-mutes",
            Some(b),
            BAD,
            names,
        )
        .await;
    }
    assert_eq!(
        call(&server, Method::GET, "/v1/global-mutes", None, 200).await,
        json!({"users": [{"user_id": "troll", "until_ms": until}]})
    );
    send_ok(&friend, "b", "unaffected").await;
    for c in [&friend, &troll, &other] {
        expect_chat(c, "b", "friend", "unaffected").await;
    }

    // Lifted by hand: told, and free again (in "a" thanks to the whitelist).
    call(&server, Method::DELETE, "/v1/global-mutes/troll", None, 204).await;
    for c in [&troll, &other] {
        assert_eq!(
            next_notice(c).await,
            Event::Unmuted {
                room: String::new(),
                users: vec!["troll".into()]
            }
        );
    }
    refused_call(
        &server,
        Method::DELETE,
        "/v1/global-mutes/troll",
        None,
        BAD,
        "not globally muted",
    )
    .await;
    send_ok(&troll, "a", "whitelisted").await;
    expect_chat(&troll, "a", "troll", "whitelisted").await;

    // Or by expiry: the timer pass at its end drops it.
    let mute = call(
        &server,
        Method::POST,
        "/v1/global-mutes",
        Some(json!({"user_ids": ["troll"], "minutes": 1})),
        200,
    )
    .await;
    let until = num(&mute, "until_ms");
    for c in [&troll, &other] {
        assert!(matches!(next_notice(c).await, Event::Muted { .. }));
    }
    relay.tick(until - 1).await;
    assert_eq!(
        code(troll.send("b", "chat", body("x"), false).await),
        ErrorCode::Muted
    );
    relay.tick(until).await;
    assert_eq!(
        call(&server, Method::GET, "/v1/global-mutes", None, 200).await,
        json!({"users": []})
    );
    send_ok(&troll, "b", "expired").await;
    for c in [&friend, &troll, &other] {
        expect_chat(c, "b", "troll", "expired").await;
    }
}

/// Why a send was refused: which check of the send order refused it, from its message.
fn send_outcome(r: Result<(u64, u64), ClientError>) -> &'static str {
    let e = match r {
        Ok(_) => return "sent",
        Err(e) => refused::<()>(Err(e)),
    };
    assert_eq!(e.code, ErrorCode::Muted, "{}", e.message);
    if e.message.contains("globally") {
        "global mute"
    } else if e.message.contains("mute-all") {
        "mute-all"
    } else {
        assert!(e.message.contains("muted in this room"), "{}", e.message);
        "member mute"
    }
}

/// Each of `clients` sends once; the outcomes must be `want`. Every accepted message must reach
/// every one of them. Returns how many were sent.
async fn send_round(clients: [&Client; 4], want: [&str; 4]) -> usize {
    let mut sent = 0;
    for (c, want) in clients.into_iter().zip(want) {
        let got = send_outcome(c.send("r", "chat", body(c.user()), false).await);
        assert_eq!(got, want, "{}", c.user());
        if got == "sent" {
            sent += 1;
            for reader in clients {
                expect_chat(reader, "r", c.user(), c.user()).await;
            }
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_send_check_order_is_global_mute_then_whitelist_then_mutes_and_admin_bypasses_all() {
    let server = TestServer::start(manual_timers).await;
    create(
        &server,
        json!({"id": "r", "mute_all_whitelist": ["w", "g"]}),
    )
    .await;
    let names = ["w", "g", "m", "p"];
    let mut clients = Vec::new();
    for n in names {
        clients.push(joined(&server, n, "r").await);
    }
    let [w, g, m, p] = [&clients[0], &clients[1], &clients[2], &clients[3]];
    // w: whitelisted and member-muted; g: whitelisted and globally muted; m: member-muted;
    // p: nothing.
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/mutes",
        Some(json!({"user_ids": ["w", "m"], "minutes": 5})),
        200,
    )
    .await;
    call(
        &server,
        Method::POST,
        "/v1/global-mutes",
        Some(json!({"user_ids": ["g"], "minutes": 5})),
        200,
    )
    .await;
    for c in [w, g, m] {
        assert!(matches!(next_notice(c).await, Event::Muted { .. }));
    }

    let all = [w, g, m, p];
    let mut sent = send_round(all, ["sent", "global mute", "member mute", "sent"]).await;
    call(&server, Method::PUT, "/v1/rooms/r/mute-all", None, 204).await;
    for c in all {
        assert_eq!(next_notice(c).await, Event::MuteAll { room: "r".into() });
    }
    sent += send_round(all, ["sent", "global mute", "mute-all", "mute-all"]).await;
    assert_eq!(sent, 3);

    // The admin API sends as any of them, whatever mutes they are under.
    for from in names {
        call(
            &server,
            Method::POST,
            "/v1/rooms/r/messages",
            Some(json!({"from": from, "type": "chat", "body": "admin"})),
            200,
        )
        .await;
        for reader in [w, g, m, p] {
            expect_chat(reader, "r", from, "admin").await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_whitelist_makes_messages_protected_and_holds_20() {
    let server = TestServer::start(manual_timers).await;
    server.create_room("r").await;
    let vip = joined(&server, "vip", "r").await;
    let fan = joined(&server, "fan", "r").await;
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/user-whitelist",
        Some(json!({"user_ids": ["vip"]})),
        204,
    )
    .await;
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/v1/rooms/r/user-whitelist",
            None,
            200
        )
        .await,
        json!({"user_ids": ["vip"]})
    );
    send_ok(&vip, "r", "important").await;
    send_ok(&fan, "r", "hi").await;
    // Marked low, a whitelisted user's message is still protected (on the stream).
    vip.send("r", "chat", body("low?"), true)
        .await
        .expect("sends");
    call(
        &server,
        Method::POST,
        "/v1/rooms/r/messages",
        Some(json!({"from": "vip", "type": "chat", "body": "via admin"})),
        200,
    )
    .await;
    for c in [&vip, &fan] {
        let got: Vec<(String, Class, bool)> = [
            next_message_lane(c).await,
            next_message_lane(c).await,
            next_message_lane(c).await,
            next_message_lane(c).await,
        ]
        .into_iter()
        .map(|(m, dgram)| {
            (
                String::from_utf8_lossy(&m.body).into_owned(),
                m.class,
                dgram,
            )
        })
        .collect();
        assert_eq!(
            got,
            [
                ("important".to_owned(), Class::Protected, false),
                ("hi".to_owned(), Class::Normal, false),
                ("low?".to_owned(), Class::Protected, false),
                ("via admin".to_owned(), Class::Protected, false),
            ],
            "{}",
            c.user()
        );
    }

    // At most 20: the 21st is refused and changes nothing.
    fill_to_twenty_then_refuse(
        &server,
        "/v1/rooms/r/user-whitelist",
        "user_ids",
        "w",
        "fan",
    )
    .await;
    send_ok(&fan, "r", "still normal").await;
    for c in [&vip, &fan] {
        assert_eq!(
            expect_chat(c, "r", "fan", "still normal").await,
            Class::Normal
        );
    }
    // Off the list, the user's messages are normal again.
    call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/user-whitelist/vip",
        None,
        204,
    )
    .await;
    refused_call(
        &server,
        Method::DELETE,
        "/v1/rooms/r/user-whitelist/vip",
        None,
        BAD,
        "not on that whitelist",
    )
    .await;
    send_ok(&vip, "r", "ordinary").await;
    for c in [&vip, &fan] {
        assert_eq!(expect_chat(c, "r", "vip", "ordinary").await, Class::Normal);
    }
}

// =================================== §7 classes and budgets ===================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_type_lists_decide_the_class_and_hold_20_types() {
    let server = TestServer::start(manual_timers).await;
    server.create_room("r").await;
    let alice = joined(&server, "alice", "r").await;
    let bob = joined(&server, "bob", "r").await;
    call(
        &server,
        Method::POST,
        "/v1/message-types/whitelist",
        Some(json!({"types": ["gift"]})),
        204,
    )
    .await;
    call(
        &server,
        Method::POST,
        "/v1/message-types/low-priority",
        Some(json!({"types": ["cursor", "gift"]})),
        204,
    )
    .await;
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/v1/message-types/whitelist",
            None,
            200
        )
        .await,
        json!({"types": ["gift"]})
    );
    assert_eq!(
        call(
            &server,
            Method::GET,
            "/v1/message-types/low-priority",
            None,
            200
        )
        .await,
        json!({"types": ["cursor", "gift"]})
    );

    // gift: whitelisted (and low, and marked low): protected. cursor: low. chat: normal.
    let sends = [("gift", true), ("cursor", false), ("chat", false)];
    for (t, low) in sends {
        alice.send("r", t, body(t), low).await.expect("sends");
    }
    for c in [&alice, &bob] {
        // The datagram lane is not ordered with the stream: collect, then sort by seq.
        let mut got = Vec::new();
        for _ in 0..sends.len() {
            let (m, dgram) = next_message_lane(c).await;
            got.push((m.seq, m.msg_type, m.class, dgram));
        }
        got.sort_by_key(|g| g.0);
        assert_eq!(
            got,
            [
                (1, "gift".to_owned(), Class::Protected, false),
                (2, "cursor".to_owned(), Class::Low, true),
                (3, "chat".to_owned(), Class::Normal, false),
            ],
            "{}",
            c.user()
        );
    }

    // 20 types at most, per call and per list; a refusal changes nothing.
    let mut twenty_one: Vec<String> = ids("t", 20);
    twenty_one.push("x".into());
    for list in ["whitelist", "low-priority"] {
        let path = format!("/v1/message-types/{list}");
        refused_call(
            &server,
            Method::POST,
            &path,
            Some(json!({ "types": twenty_one })),
            BAD,
            "1..=20",
        )
        .await;
    }
    fill_to_twenty_then_refuse(&server, "/v1/message-types/whitelist", "types", "t", "chat").await;
    send_ok(&alice, "r", "plain").await;
    for c in [&alice, &bob] {
        assert_eq!(expect_chat(c, "r", "alice", "plain").await, Class::Normal);
    }

    // Off the whitelist, gift is low (it is on the low list).
    call(
        &server,
        Method::DELETE,
        "/v1/message-types/whitelist/gift",
        None,
        204,
    )
    .await;
    alice
        .send("r", "gift", body("g"), false)
        .await
        .expect("sends");
    for c in [&alice, &bob] {
        let (m, dgram) = next_message_lane(c).await;
        assert_eq!(
            (m.msg_type.as_str(), m.class, dgram),
            ("gift", Class::Low, true)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_connection_rate_limit_refuses_past_the_burst() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.limits.send_rate_per_sec = 1;
        c.limits.send_burst = 3;
    })
    .await;
    server.create_room("r").await;
    let alice = joined(&server, "alice", "r").await;
    // Four sends at once, in this order on the control stream.
    let (a, b, c, d) = tokio::join!(
        alice.send("r", "chat", body("1"), false),
        alice.send("r", "chat", body("2"), false),
        alice.send("r", "chat", body("3"), false),
        alice.send("r", "chat", body("4"), false),
    );
    let seqs: Vec<u64> = [a, b, c]
        .into_iter()
        .map(|r| r.expect("within the burst").0)
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let e = refused(d);
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(
        e.message.contains("1 messages a second (burst 3)"),
        "{}",
        e.message
    );
    // Other requests are not limited; another connection has its own budget.
    alice.ping().await.expect("ping");
    let phone = server.client("alice").await;
    phone.join("r", -1).await.expect("joins");
    assert_eq!(
        send_ok(&phone, "r", "5").await,
        4,
        "the refused send took no seq"
    );
}

/// Sends of one class for the ingress budget test: the message type and the low flag.
fn flood_send(class: Class) -> (&'static str, bool) {
    match class {
        Class::Low => ("like", true),
        Class::Normal => ("chat", false),
        Class::Protected => ("gift", false),
    }
}

/// Sends `order` into `room`, one at a time (so the server admits them in exactly this order),
/// rotating over `senders`; returns how many of each class were refused with `SHED`, as
/// `[low, normal, protected]`, after checking the admitted ones got dense seqs from 1.
async fn flood(senders: &[Client], room: &str, order: &[Class]) -> [u64; 3] {
    let mut shed = [0u64; 3];
    let mut next_seq = 1;
    for (i, class) in order.iter().enumerate() {
        let (t, low) = flood_send(*class);
        let sender = &senders[i % senders.len()];
        match sender.send(room, t, body(t), low).await {
            Ok((seq, _)) => {
                assert_eq!(seq, next_seq, "admitted messages take dense seqs");
                next_seq += 1;
            }
            Err(e) => {
                let e = match e {
                    ClientError::Refused(e) => e,
                    other => panic!("{other}"),
                };
                assert_eq!(e.code, ErrorCode::Shed, "{}", e.message);
                assert!(
                    e.message
                        .contains(&format!("budget for {}", class.as_str())),
                    "{}",
                    e.message
                );
                shed[class_slot(*class)] += 1;
            }
        }
    }
    shed
}

fn class_slot(c: Class) -> usize {
    match c {
        Class::Low => 0,
        Class::Normal => 1,
        Class::Protected => 2,
    }
}

/// What `IngressBudget` refuses of `order` (all in one window), as `[low, normal, protected]`.
fn model_shed(cfg: BudgetConfig, order: &[Class]) -> [u64; 3] {
    let mut budget = IngressBudget::new(cfg);
    let mut shed = [0u64; 3];
    for class in order {
        if !budget.admit(*class, 1) {
            shed[class_slot(*class)] += 1;
        }
    }
    shed
}

fn shed_metrics(text: &str) -> [f64; 3] {
    ["low", "normal", "protected"].map(|c| {
        metric(
            text,
            "roomcast_shed_total",
            &[("class", c), ("reason", "ingress")],
        )
        .unwrap_or(0.0)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_ingress_budget_sheds_by_class_exactly_as_its_arithmetic_says() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        // One long window, so every send of the test falls in it.
        c.limits.room_budget_window_ms = 600_000;
        c.limits.room_budget_total = 40;
        c.limits.room_budget_reserved = 20;
        c.limits.room_budget_protected_extra = 20;
        c.store.durability = roomcast::store::Durability::Batched;
    })
    .await;
    let cfg = server.config.budget();
    assert_eq!(
        cfg,
        BudgetConfig {
            window_ms: 600_000,
            total: 40,
            reserved: 20,
            protected_extra: 20
        }
    );
    call(
        &server,
        Method::POST,
        "/v1/message-types/whitelist",
        Some(json!({"types": ["gift"]})),
        204,
    )
    .await;
    server.create_room("mixed").await;
    server.create_room("ordered").await;
    let mut senders = Vec::new();
    for i in 0..3 {
        let c = server.client(&format!("fan-{i}")).await;
        c.join("mixed", -1).await.expect("joins");
        c.join("ordered", -1).await.expect("joins");
        senders.push(c);
    }
    // This is the only test of this binary that sheds at ingress, so the process-wide counters
    // move by exactly what it does.
    let before = shed_metrics(&server.metrics().await);

    // Interleaved low, normal, protected, 40 of each.
    let mixed: Vec<Class> = (0..40)
        .flat_map(|_| [Class::Low, Class::Normal, Class::Protected])
        .collect();
    let got = flood(&senders, "mixed", &mixed).await;
    assert_eq!(got, model_shed(cfg, &mixed));
    // Low stops at 20 used (7 admitted), normal at 40 (17), protected at 60 (36).
    assert_eq!(got, [33, 23, 4]);

    // All low first, then normal, then protected: 20 of each admitted; protected within its
    // share (the 20 extra) is never refused although the total was used up.
    let ordered: Vec<Class> = [Class::Low, Class::Normal, Class::Protected]
        .into_iter()
        .flat_map(|c| std::iter::repeat_n(c, 40))
        .collect();
    let got = flood(&senders, "ordered", &ordered).await;
    assert_eq!(got, model_shed(cfg, &ordered));
    assert_eq!(got, [20, 20, 20]);

    let after = shed_metrics(&server.metrics().await);
    let moved: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(moved, [53.0, 43.0, 24.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_rate_limit_refuses_past_the_burst_and_changes_nothing() {
    let server = TestServer::start(|c| {
        manual_timers(c);
        c.limits.admin_rate_per_sec = 1;
        c.limits.admin_burst = 2;
    })
    .await;
    for id in ["one", "two"] {
        call(
            &server,
            Method::POST,
            "/v1/rooms",
            Some(json!({ "id": id })),
            201,
        )
        .await;
    }
    let r = server
        .api(Method::POST, "/v1/rooms", Some(json!({"id": "three"})))
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    r.assert_error(429, "RATE_LIMITED");
    assert_eq!(
        r.json["message"],
        "more than 1 admin calls a second (burst 2)"
    );
    // Nothing was created; the open endpoints are not limited.
    let alice = server.client("alice").await;
    alice.join("two", -1).await.expect("two exists");
    assert_eq!(code(alice.join("three", -1).await), ErrorCode::RoomNotFound);
    server.metrics().await;
}
