//! The admin API on any relay acts cluster-wide: three real `roomcast serve` processes on one
//! real `nats-server -js`, clients over real QUIC on loopback. Destroying several rooms through
//! a relay that owns none of them, changing the app-wide lists through each relay in turn, and
//! listing or checking a room's members through any relay answer for the whole cluster. No
//! sleeps: every wait is for an event, or a bounded poll of another process's admin API.

mod common;
mod nats_support;

use common::{body, poll};
use nats_support::serve::Serve;
use reqwest::Method;
use roomcast::client::{Client, ClientEvent};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// Upper bound on waiting for one event: only turns a hang into a failure.
const EVENT: Duration = Duration::from_secs(30);

/// Three relays `relay-a`, `relay-b`, `relay-c` on the NATS at `url`.
fn three(dir: &Path, url: &str) -> [Serve; 3] {
    ["relay-a", "relay-b", "relay-c"].map(|node| Serve::start(dir, node, url, ""))
}

/// Creates `room` through `on` and waits until every relay of `all` knows it.
async fn create_everywhere(on: &Serve, all: &[Serve], room: &str) {
    let (status, reply) = on
        .admin(Method::POST, "/v1/rooms", Some(json!({"id": room})))
        .await;
    assert_eq!(status, 201, "{reply}");
    for relay in all {
        poll("the room on every relay", || async {
            let (status, _) = relay
                .admin(Method::GET, &format!("/v1/rooms/{room}"), None)
                .await;
            (status == 200).then_some(())
        })
        .await;
    }
}

/// Waits until `relay` reports `count` members of `room` in the room's info.
async fn member_count_becomes(relay: &Serve, room: &str, count: u64) {
    poll("the member count on the relay", || async {
        let (_, info) = relay
            .admin(Method::GET, &format!("/v1/rooms/{room}"), None)
            .await;
        (info["member_count"] == json!(count)).then_some(())
    })
    .await;
}

/// The first `RoomDestroyed` of `client`, skipping other events.
async fn destroyed(client: &Client) -> (String, roomcast::protocol::DestroyReason) {
    let waiting = async {
        loop {
            match client.next_event().await.expect("the event stream is open") {
                ClientEvent::RoomDestroyed { room, reason } => return (room, reason),
                ClientEvent::Closed { reason, .. } => panic!("{}: closed: {reason}", client.user()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(EVENT, waiting)
        .await
        .unwrap_or_else(|_| panic!("{}: no RoomDestroyed within {EVENT:?}", client.user()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_several_rooms_through_a_relay_that_owns_none_has_each_owner_destroy_its_own() {
    let Some(bin) = nats_support::binary("destroying_several_rooms_through_any_relay") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let relays = three(dir.path(), &nats.url());
    let [a, b, c] = &relays;
    create_everywhere(a, &relays, "ra").await;
    create_everywhere(a, &relays, "rb").await;
    // A room gets its owner with its first send: A owns `ra`, B owns `rb`.
    let ann = a.client("ann").await;
    let bea = b.client("bea").await;
    ann.join("ra", -1).await.expect("joins");
    bea.join("rb", -1).await.expect("joins");
    ann.send("ra", "chat", body("mine"), false)
        .await
        .expect("sent");
    bea.send("rb", "chat", body("mine"), false)
        .await
        .expect("sent");

    let (status, reply) = c
        .admin(
            Method::POST,
            "/v1/rooms:destroy",
            Some(json!({"ids": ["ra", "rb", "nope"]})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply,
        json!({"destroyed": ["ra", "rb"], "not_found": ["nope"]}),
        "each room destroyed by its owner"
    );
    // The owners' members are told, and no relay knows the rooms any more.
    let manual = roomcast::protocol::DestroyReason::Manual;
    assert_eq!(destroyed(&ann).await, ("ra".to_owned(), manual));
    assert_eq!(destroyed(&bea).await, ("rb".to_owned(), manual));
    for relay in &relays {
        for room in ["ra", "rb"] {
            let (status, info) = relay
                .admin(Method::GET, &format!("/v1/rooms/{room}"), None)
                .await;
            assert_eq!(status, 404, "{room}: {info}");
        }
    }
    // And the owners no longer sequence them: a send is refused as to a missing room.
    let refused = ann
        .send("ra", "chat", body("after"), false)
        .await
        .expect_err("the room is gone");
    assert_eq!(
        refused.code(),
        Some(roomcast::protocol::ErrorCode::RoomNotFound)
    );
    drop((ann, bea));
    drop(relays);
    drop(nats);
}

/// The users `relay` lists as globally muted, sorted.
async fn global_mutes(relay: &Serve) -> Vec<String> {
    let (status, reply) = relay.admin(Method::GET, "/v1/global-mutes", None).await;
    assert_eq!(status, 200, "{reply}");
    let mut users: Vec<String> = reply["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["user_id"].as_str().expect("user_id").to_owned())
        .collect();
    users.sort();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_wide_lists_change_through_every_relay_in_turn_and_each_sees_every_change() {
    let Some(bin) = nats_support::binary("the_app_wide_lists_change_through_any_relay") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let relays = three(dir.path(), &nats.url());
    let [a, b, c] = &relays;

    // Each relay in turn writes the lists another wrote last.
    let mut muted = Vec::new();
    for (relay, user) in [(a, "u-a"), (b, "u-b"), (c, "u-c"), (a, "u-a2")] {
        let (status, reply) = relay
            .admin(
                Method::POST,
                "/v1/global-mutes",
                Some(json!({"user_ids": [user], "minutes": 10})),
            )
            .await;
        assert_eq!(status, 200, "a global mute through {user}'s relay: {reply}");
        muted.push(user.to_owned());
        muted.sort();
    }
    for relay in &relays {
        poll("every global mute on every relay", || async {
            (global_mutes(relay).await == muted).then_some(())
        })
        .await;
    }
    // In force for a sender on a relay that wrote none of it.
    create_everywhere(a, &relays, "hall").await;
    let muted_user = b.client("u-c").await;
    muted_user.join("hall", -1).await.expect("joins");
    let refused = muted_user
        .send("hall", "chat", body("hi"), false)
        .await
        .expect_err("globally muted");
    assert_eq!(refused.code(), Some(roomcast::protocol::ErrorCode::Muted));

    // A lift through B of a mute written through A, a type list through C then B.
    let (status, reply) = b.admin(Method::DELETE, "/v1/global-mutes/u-a", None).await;
    assert_eq!(status, 204, "{reply}");
    for (relay, t) in [(c, "gift"), (b, "tip")] {
        let (status, reply) = relay
            .admin(
                Method::POST,
                "/v1/message-types/whitelist",
                Some(json!({"types": [t]})),
            )
            .await;
        assert_eq!(status, 204, "{t}: {reply}");
    }
    for relay in &relays {
        poll("the lift and the types on every relay", || async {
            let (_, types) = relay
                .admin(Method::GET, "/v1/message-types/whitelist", None)
                .await;
            let lifted = !global_mutes(relay).await.contains(&"u-a".to_owned());
            (lifted && types["types"] == json!(["gift", "tip"])).then_some(())
        })
        .await;
    }
    // A second lift of the same mute, through another relay, gets the true answer.
    let (status, reply) = c.admin(Method::DELETE, "/v1/global-mutes/u-a", None).await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"], "BAD_REQUEST", "{reply}");

    // Two relays writing at once: both changes are made, and both callers are told so.
    let (one, two) = tokio::join!(
        a.admin(
            Method::POST,
            "/v1/global-mutes",
            Some(json!({"user_ids": ["race-a"], "minutes": 10})),
        ),
        c.admin(
            Method::POST,
            "/v1/global-mutes",
            Some(json!({"user_ids": ["race-c"], "minutes": 10})),
        ),
    );
    assert_eq!((one.0, two.0), (200, 200), "{} {}", one.1, two.1);
    for relay in &relays {
        poll("both racing mutes on every relay", || async {
            let now = global_mutes(relay).await;
            (now.contains(&"race-a".to_owned()) && now.contains(&"race-c".to_owned())).then_some(())
        })
        .await;
    }
    drop(muted_user);
    drop(relays);
    drop(nats);
}

/// Every member `relay` lists for `room`, following `next_cursor` with pages of `limit`.
async fn all_members(relay: &Serve, room: &str, order: &str, limit: usize) -> (Vec<String>, Value) {
    let mut users = Vec::new();
    let mut cursor: Option<u64> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/v1/rooms/{room}/members?limit={limit}&order={order}");
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = relay.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        for m in page["members"].as_array().expect("members") {
            users.push(m["user_id"].as_str().expect("user_id").to_owned());
        }
        pages += 1;
        assert!(pages <= 20, "paging does not end: {page}");
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return (users, page),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_every_relay_are_listed_and_checked_through_any_and_a_silent_relay_is_named() {
    let Some(bin) = nats_support::binary("members_are_listed_through_any_relay") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let mut relays = three(dir.path(), &nats.url());
    create_everywhere(&relays[0], &relays, "r").await;
    // Joined one after the other, in this order, across the relays.
    let order = ["m0", "m1", "m2", "m3", "m4", "m5", "m6"];
    let mut members = Vec::new();
    for (i, user) in order.iter().enumerate() {
        let client = relays[i % 3].client(user).await;
        client.join("r", -1).await.expect("joins");
        members.push(client);
    }
    for relay in &relays {
        member_count_becomes(relay, "r", order.len() as u64).await;
    }
    let want: Vec<String> = order.iter().map(|s| s.to_string()).collect();
    let mut newest_first = want.clone();
    newest_first.reverse();
    for relay in &relays {
        // A page may end early where two joins share a millisecond, never skip or repeat.
        let (asc, last) = all_members(relay, "r", "asc", 3).await;
        assert_eq!(asc, want, "{last}");
        assert_eq!(last["total"], json!(order.len()), "{last}");
        assert!(last.get("partial").is_none(), "{last}");
        let (desc, _) = all_members(relay, "r", "desc", 2).await;
        assert_eq!(desc, newest_first);
    }
    let (status, check) = relays[2]
        .admin(
            Method::POST,
            "/v1/rooms/r/members:check",
            Some(json!({"user_ids": ["m0", "m1", "m2", "nobody"]})),
        )
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(
        check,
        json!({"results": [
            {"user_id": "m0", "member": true},
            {"user_id": "m1", "member": true},
            {"user_id": "m2", "member": true},
            {"user_id": "nobody", "member": false},
        ]})
    );

    // A broadcast through C reaches the room (which has no owner yet) on every relay.
    let (status, reply) = relays[2]
        .admin(
            Method::POST,
            "/v1/broadcast",
            Some(json!({"type": "notice", "body": "to all"})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["rooms"], json!(1), "{reply}");
    for member in &members {
        let waiting = async {
            loop {
                match member.next_event().await.expect("the event stream is open") {
                    ClientEvent::Message { message, .. } => return message,
                    ClientEvent::Closed { reason, .. } => panic!("closed: {reason}"),
                    _ => {}
                }
            }
        };
        let got = tokio::time::timeout(EVENT, waiting)
            .await
            .unwrap_or_else(|_| panic!("{}: no broadcast within {EVENT:?}", member.user()));
        assert_eq!((got.room.as_str(), got.msg_type.as_str()), ("r", "notice"));
    }

    // B dies: its count is still fresh, it does not answer, and the answers say so.
    relays[1].kill();
    let (status, page) = relays[0]
        .admin(Method::GET, "/v1/rooms/r/members?limit=100", None)
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["partial"], json!(true), "{page}");
    assert_eq!(page["unanswered"], json!(["relay-b"]), "{page}");
    let listed: Vec<&str> = page["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    assert_eq!(listed, ["m0", "m2", "m3", "m5", "m6"], "those on A and C");
    let (status, check) = relays[2]
        .admin(
            Method::POST,
            "/v1/rooms/r/members:check",
            Some(json!({"user_ids": ["m0", "m1"]})),
        )
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["partial"], json!(true), "{check}");
    assert_eq!(check["unanswered"], json!(["relay-b"]), "{check}");
    assert_eq!(check["results"][0]["member"], json!(true), "{check}");
    drop(members);
    drop(relays);
    drop(nats);
}
