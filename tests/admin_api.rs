//! Admin HTTP API tests against a real relay: keys, rooms, members, messages, tokens, the OpenAPI
//! document and the metrics.

mod common;

use common::{ADMIN_KEY, Method, TestServer, has_metric, metric, next_event, next_message, within};
use roomcast::client::{ClientError, ClientEvent};
use roomcast::protocol::{Class, ErrorCode};
use serde_json::{Value, json};
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_api_needs_the_key_and_the_open_endpoints_do_not() {
    let server = TestServer::start(|_| {}).await;

    let r = server.api_as(None, Method::GET, "/v1/rooms", None).await;
    r.assert_error(401, "UNAUTHORIZED");
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    assert!(
        r.json["message"]
            .as_str()
            .unwrap_or("")
            .contains("missing admin key"),
        "{}",
        r.text
    );

    let r = server
        .api_as(Some("wrong-key"), Method::GET, "/v1/rooms", None)
        .await;
    r.assert_error(401, "UNAUTHORIZED");
    assert_eq!(r.json["message"], "wrong admin key");
    // A key that only starts like the right one is wrong too.
    let longer = format!("{ADMIN_KEY}x");
    let r = server
        .api_as(Some(&longer), Method::GET, "/v1/rooms", None)
        .await;
    r.assert_error(401, "UNAUTHORIZED");
    // Without a key nothing happens: the room is not created.
    let r = server
        .api_as(
            None,
            Method::POST,
            "/v1/rooms",
            Some(json!({ "id": "sneaky" })),
        )
        .await;
    r.assert_error(401, "UNAUTHORIZED");
    let r = server.api(Method::GET, "/v1/rooms/sneaky", None).await;
    r.assert_error(404, "ROOM_NOT_FOUND");

    let r = server.api(Method::GET, "/v1/rooms", None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = server.api_as(None, Method::GET, "/healthz", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        serde_json::json!({"status": "ok", "store": {"state": "healthy"}})
    );
    let r = server.api_as(None, Method::GET, "/metrics", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    let r = server
        .api_as(None, Method::GET, "/openapi.json", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json["openapi"].as_str().unwrap_or("").starts_with('3'),
        "{}",
        r.text
    );
    // A wrong key does not break the open endpoints either.
    let r = server
        .api_as(Some("wrong-key"), Method::GET, "/healthz", None)
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_rooms_validates_and_refuses_duplicates() {
    let server = TestServer::start(|_| {}).await;

    let r = server
        .api(
            Method::POST,
            "/v1/rooms",
            Some(json!({ "id": "lobby", "name": "The Lobby" })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["id"], "lobby");
    assert_eq!(r.json["name"], "The Lobby");
    assert_eq!(r.json["member_count"], 0);
    assert_eq!(r.json["mute_all"], false);
    let epoch = r.json["epoch"].as_u64().expect("epoch");
    assert!(r.json["created_ms"].as_u64().expect("created_ms") > 0);

    let r = server
        .api(Method::POST, "/v1/rooms", Some(json!({ "id": "lobby" })))
        .await;
    r.assert_error(409, "ROOM_EXISTS");
    // The first room is untouched.
    let r = server.api(Method::GET, "/v1/rooms/lobby", None).await;
    assert_eq!(
        (r.json["name"].as_str(), r.json["epoch"].as_u64()),
        (Some("The Lobby"), Some(epoch))
    );

    for bad in ["bad id", "", "ü", &"a".repeat(65)] {
        let r = server
            .api(Method::POST, "/v1/rooms", Some(json!({ "id": bad })))
            .await;
        r.assert_error(400, "BAD_REQUEST");
    }
    let r = server
        .api(
            Method::POST,
            "/v1/rooms",
            Some(json!({ "id": "a".repeat(64) })),
        )
        .await;
    assert_eq!(r.status, 201, "64 characters is the longest id: {}", r.text);

    let r = server
        .api(
            Method::POST,
            "/v1/rooms",
            Some(json!({ "id": "x", "colour": "red" })),
        )
        .await;
    r.assert_error(400, "BAD_REQUEST");
    assert!(r.text.contains("colour"), "{}", r.text);
    let r = server
        .api_raw(
            Some(ADMIN_KEY),
            Method::POST,
            "/v1/rooms",
            Some(b"{not json".to_vec()),
        )
        .await;
    r.assert_error(400, "BAD_REQUEST");
    let r = server.api(Method::POST, "/v1/rooms", Some(json!({}))).await;
    r.assert_error(400, "BAD_REQUEST");

    let r = server.api(Method::GET, "/v1/rooms", None).await;
    assert_eq!(
        r.json["total"], 2,
        "only the two valid rooms exist: {}",
        r.text
    );
}

fn room_ids(v: &Value) -> Vec<String> {
    v["rooms"]
        .as_array()
        .expect("rooms array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_can_be_read_listed_in_pages_and_destroyed() {
    let server = TestServer::start(|_| {}).await;
    // Created out of order: listings are in id order.
    for id in ["r-c", "r-a", "r-e", "r-b", "r-d"] {
        server.create_room(id).await;
    }

    let r = server.api(Method::GET, "/v1/rooms/r-c", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.json["id"].as_str(), r.json["member_count"].as_u64()),
        (Some("r-c"), Some(0))
    );
    server
        .api(Method::GET, "/v1/rooms/r-zz", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");

    let r = server.api(Method::GET, "/v1/rooms", None).await;
    assert_eq!(room_ids(&r.json), ["r-a", "r-b", "r-c", "r-d", "r-e"]);
    assert_eq!(r.json["total"], 5);
    assert_eq!(r.json["next_cursor"], Value::Null);

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/rooms?limit=2&cursor={c}"),
            None => "/v1/rooms?limit=2".to_owned(),
        };
        let r = server.api(Method::GET, &path, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["total"], 5);
        pages.push(room_ids(&r.json));
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    assert_eq!(pages, [vec!["r-a", "r-b"], vec!["r-c", "r-d"], vec!["r-e"]]);
    for bad in [
        "/v1/rooms?limit=0",
        "/v1/rooms?limit=501",
        "/v1/rooms?limit=x",
        "/v1/rooms?page=2",
    ] {
        server
            .api(Method::GET, bad, None)
            .await
            .assert_error(400, "BAD_REQUEST");
    }
    let r = server.api(Method::GET, "/v1/rooms?limit=500", None).await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = server.api(Method::DELETE, "/v1/rooms/r-c", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({ "destroyed": ["r-c"], "not_found": [] }));
    server
        .api(Method::DELETE, "/v1/rooms/r-c", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");
    server
        .api(Method::GET, "/v1/rooms/r-c", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");

    let r = server
        .api(
            Method::POST,
            "/v1/rooms:destroy",
            Some(json!({ "ids": ["r-a", "r-c", "r-e", "nope"] })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({ "destroyed": ["r-a", "r-e"], "not_found": ["r-c", "nope"] })
    );
    let r = server.api(Method::GET, "/v1/rooms", None).await;
    assert_eq!(room_ids(&r.json), ["r-b", "r-d"]);
    assert_eq!(r.json["total"], 2);

    server
        .api(
            Method::POST,
            "/v1/rooms:destroy",
            Some(json!({ "ids": [] })),
        )
        .await
        .assert_error(400, "BATCH_TOO_LARGE");
    let many: Vec<String> = (0..101).map(|i| format!("x{i}")).collect();
    server
        .api(
            Method::POST,
            "/v1/rooms:destroy",
            Some(json!({ "ids": many })),
        )
        .await
        .assert_error(400, "BATCH_TOO_LARGE");
    // A destroyed id can be created again, as a new life of the room.
    let r = server
        .api(Method::POST, "/v1/rooms", Some(json!({ "id": "r-a" })))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

fn member_ids(v: &Value) -> Vec<String> {
    v["members"]
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| m["user_id"].as_str().expect("user_id").to_owned())
        .collect()
}

/// Follows `next_cursor` through every page of `base` (which already has its query).
async fn all_member_pages(server: &TestServer, base: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor: Option<u64> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("{base}&cursor={c}"),
            None => base.to_owned(),
        };
        let r = server.api(Method::GET, &path, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["total"], 5);
        pages.push(member_ids(&r.json));
        match r.json["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    pages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_listed_in_join_order_with_paging_and_checked() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let users = ["u-e", "u-c", "u-a", "u-d", "u-b"];
    let mut clients = Vec::new();
    // Joined one after the other: join order is known and is not alphabetical.
    for u in users {
        let c = server.client(u).await;
        c.join("lobby", -1).await.expect("joins");
        clients.push(c);
    }

    let r = server
        .api(Method::GET, "/v1/rooms/lobby/members", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(member_ids(&r.json), users);
    assert_eq!(r.json["total"], 5);
    assert_eq!(r.json["next_cursor"], Value::Null);
    let joined: Vec<u64> = r.json["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["joined_ms"].as_u64().expect("joined_ms"))
        .collect();
    assert!(joined.windows(2).all(|w| w[0] <= w[1]), "{joined:?}");

    let r = server
        .api(Method::GET, "/v1/rooms/lobby/members?order=desc", None)
        .await;
    let mut reversed = users.to_vec();
    reversed.reverse();
    assert_eq!(member_ids(&r.json), reversed);

    let pages = all_member_pages(&server, "/v1/rooms/lobby/members?order=asc&limit=2").await;
    assert_eq!(pages, [vec!["u-e", "u-c"], vec!["u-a", "u-d"], vec!["u-b"]]);
    let pages = all_member_pages(&server, "/v1/rooms/lobby/members?order=desc&limit=2").await;
    assert_eq!(pages, [vec!["u-b", "u-d"], vec!["u-a", "u-c"], vec!["u-e"]]);

    for bad in ["limit=501", "limit=0", "order=sideways", "limit=-1"] {
        server
            .api(Method::GET, &format!("/v1/rooms/lobby/members?{bad}"), None)
            .await
            .assert_error(400, "BAD_REQUEST");
    }
    let r = server
        .api(Method::GET, "/v1/rooms/lobby/members?limit=500", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    server
        .api(Method::GET, "/v1/rooms/nope/members", None)
        .await
        .assert_error(404, "ROOM_NOT_FOUND");

    // A leave shows in the listing at once.
    clients[2].leave("lobby").await.expect("u-a leaves");
    let r = server
        .api(Method::GET, "/v1/rooms/lobby/members", None)
        .await;
    assert_eq!(member_ids(&r.json), ["u-e", "u-c", "u-d", "u-b"]);
    assert_eq!(r.json["total"], 4);

    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/members:check",
            Some(json!({ "user_ids": ["u-b", "u-a", "stranger", "u-e"] })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json,
        json!({ "results": [
            { "user_id": "u-b", "member": true },
            { "user_id": "u-a", "member": false },
            { "user_id": "stranger", "member": false },
            { "user_id": "u-e", "member": true },
        ] })
    );
    let ids: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/members:check",
            Some(json!({ "user_ids": ids })),
        )
        .await;
    assert_eq!(r.status, 200, "1000 ids is the most: {}", r.text);
    assert_eq!(r.json["results"].as_array().map(Vec::len), Some(1000));
    let ids: Vec<String> = (0..1001).map(|i| format!("user-{i}")).collect();
    server
        .api(
            Method::POST,
            "/v1/rooms/lobby/members:check",
            Some(json!({ "user_ids": ids })),
        )
        .await
        .assert_error(400, "BATCH_TOO_LARGE");
    server
        .api(
            Method::POST,
            "/v1/rooms/nope/members:check",
            Some(json!({ "user_ids": ["u-b"] })),
        )
        .await
        .assert_error(404, "ROOM_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_messages_reach_members_with_the_returned_seq() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    server.create_room("other").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    alice.join("lobby", -1).await.expect("joins");
    bob.join("other", -1).await.expect("joins");

    // As a user, with a UTF-8 body.
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/messages",
            Some(json!({ "from": "host", "type": "chat", "body": "héllo" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["seq"], 1);
    let ts = r.json["ts"].as_u64().expect("ts");
    let m = next_message(&alice).await;
    assert_eq!(
        (
            m.room.as_str(),
            m.seq,
            m.ts,
            m.from.as_str(),
            m.msg_type.as_str(),
            m.class
        ),
        ("lobby", 1, ts, "host", "chat", Class::Normal)
    );
    assert_eq!(m.body, "héllo".as_bytes());

    // As the system, with a binary body.
    let binary: Vec<u8> = vec![0, 159, 146, 150, 255, 1];
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&binary);
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/messages",
            Some(json!({ "type": "rc:notice", "body_b64": b64 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["seq"], 2);
    let m = next_message(&alice).await;
    assert_eq!((m.seq, m.from.as_str(), m.class), (2, "", Class::Protected));
    assert_eq!(m.body, binary);

    // Body rules.
    let max = server.config.limits.admin_body;
    assert_eq!(max, 128 * 1024);
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/messages",
            Some(json!({ "type": "blob", "body": "x".repeat(max + 1) })),
        )
        .await;
    r.assert_error(413, "TOO_LARGE");
    for bad in [
        json!({ "type": "chat" }),
        json!({ "type": "chat", "body": "a", "body_b64": "YQ==" }),
        json!({ "type": "chat", "body_b64": "not base64!" }),
        json!({ "type": "", "body": "a" }),
        json!({ "type": "chat", "body": "a", "priority": 1 }),
    ] {
        server
            .api(Method::POST, "/v1/rooms/lobby/messages", Some(bad))
            .await
            .assert_error(400, "BAD_REQUEST");
    }
    server
        .api(
            Method::POST,
            "/v1/rooms/nope/messages",
            Some(json!({ "type": "chat", "body": "a" })),
        )
        .await
        .assert_error(404, "ROOM_NOT_FOUND");

    // Several rooms in one call: one result per room, in order.
    let r = server
        .api(
            Method::POST,
            "/v1/messages",
            Some(json!({ "rooms": ["other", "nope", "lobby"], "type": "news", "body": "multi" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.json["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(
        (results[0]["room"].as_str(), results[0]["seq"].as_u64()),
        (Some("other"), Some(1))
    );
    assert_eq!(results[0]["error"], Value::Null);
    assert_eq!(results[1]["room"], "nope");
    assert_eq!(results[1]["error"], "ROOM_NOT_FOUND");
    assert_eq!(results[1]["seq"], Value::Null);
    assert_eq!(
        (results[2]["room"].as_str(), results[2]["seq"].as_u64()),
        (Some("lobby"), Some(3))
    );
    let m = next_message(&bob).await;
    assert_eq!(
        (m.room.as_str(), m.seq, m.body.as_ref()),
        ("other", 1, b"multi".as_ref())
    );
    assert_eq!(Some(m.ts), results[0]["ts"].as_u64());
    let m = next_message(&alice).await;
    assert_eq!(
        (m.room.as_str(), m.seq, m.body.as_ref()),
        ("lobby", 3, b"multi".as_ref())
    );
    let eleven: Vec<String> = (0..11).map(|i| format!("r{i}")).collect();
    server
        .api(
            Method::POST,
            "/v1/messages",
            Some(json!({ "rooms": eleven, "type": "news", "body": "x" })),
        )
        .await
        .assert_error(400, "BATCH_TOO_LARGE");

    // Broadcast: every room, not kept in history.
    let r = server
        .api(
            Method::POST,
            "/v1/broadcast",
            Some(json!({ "type": "announce", "body": "to all" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({ "rooms": 2 }));
    let m = next_message(&alice).await;
    assert_eq!(
        (m.room.as_str(), m.seq, m.body.as_ref()),
        ("lobby", 4, b"to all".as_ref())
    );
    let m = next_message(&bob).await;
    assert_eq!(
        (m.room.as_str(), m.seq, m.body.as_ref()),
        ("other", 2, b"to all".as_ref())
    );
    let carol = server.client("carol").await;
    let info = carol.join("lobby", 50).await.expect("joins");
    assert_eq!(info.last_seq, 4);
    let kept: Vec<u64> = info.history.iter().map(|h| h.message.seq).collect();
    assert_eq!(kept, [1, 2, 3], "the broadcast is not kept in history");
}

/// The admin API accepts bodies up to `limits.admin_body` (128 KiB) and delivers each in one event
/// frame: it must fit the `max_event` the welcome announces (which the client library enforces).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_messages_fit_the_announced_max_event() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    alice.join("lobby", -1).await.expect("joins");
    let body = "x".repeat(server.config.limits.admin_body);
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/messages",
            Some(json!({ "type": "blob", "body": body })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let m = next_message(&alice).await;
    assert_eq!(m.body.len(), server.config.limits.admin_body);
    let frame = roomcast::protocol::encode_frame(&roomcast::protocol::Event::Message(m));
    assert!(
        frame.len() - 4 <= server.config.max_event_frame() as usize,
        "an event frame of {} bytes went out; the welcome announced max_event {}",
        frame.len() - 4,
        server.config.max_event_frame()
    );
}

/// The largest `History` reply the relay can give (a full page of messages of the largest admin
/// body) reaches the client library whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_history_page_of_the_largest_messages_reaches_the_client() {
    const PAGE: u32 = 200;
    let server =
        TestServer::start(|c| c.store.durability = roomcast::store::Durability::Batched).await;
    server.create_room("lobby").await;
    let body = "x".repeat(server.config.limits.admin_body);
    for _ in 0..PAGE {
        let r = server
            .api(
                Method::POST,
                "/v1/rooms/lobby/messages",
                Some(json!({ "from": "bot", "type": "blob", "body": body })),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let alice = server.client("alice").await;
    alice.join("lobby", -1).await.expect("joins");
    let page = alice
        .history("lobby", None, PAGE)
        .await
        .expect("a full page of the largest messages");
    assert_eq!(page.len(), PAGE as usize);
    let frame_len: usize = page.iter().map(|h| h.message.body.len()).sum();
    assert!(
        frame_len > 16 << 20,
        "the reply carried {frame_len} body bytes"
    );
    assert!(
        page.iter()
            .all(|h| h.message.body.len() == server.config.limits.admin_body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_body_is_a_json_error() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let body = "x".repeat(server.config.limits.admin_request_body + 1);
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/lobby/messages",
            Some(json!({ "type": "blob", "body": body })),
        )
        .await;
    r.assert_error(413, "TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_let_clients_connect() {
    let server = TestServer::start(|_| {}).await;
    let r = server
        .api(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "user_id": "zoe", "ttl_secs": 120 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let token = r.json["token"].as_str().expect("token").to_owned();
    let expires_at = r.json["expires_at"].as_u64().expect("expires_at");
    let now = roomcast::auth::unix_secs();
    assert!(
        (now + 100..=now + 120).contains(&expires_at),
        "expires_at {expires_at} is about now ({now}) + 120"
    );
    let client = server
        .connect(token)
        .await
        .expect("the minted token connects");
    assert_eq!(client.user(), "zoe");
    client.ping().await.expect("ping");

    // The default lifetime is a day.
    let r = server
        .api(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "user_id": "zoe" })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let expires_at = r.json["expires_at"].as_u64().expect("expires_at");
    assert!(
        (now + 86_300..=now + 86_500).contains(&expires_at),
        "{expires_at}"
    );

    let max = server.config.auth.max_token_ttl_secs;
    for bad in [
        json!({ "user_id": "zoe", "ttl_secs": 0 }),
        json!({ "user_id": "zoe", "ttl_secs": max + 1 }),
        json!({ "user_id": "bad user", "ttl_secs": 60 }),
        json!({ "user_id": "zoe", "ttl_secs": 60, "admin": true }),
        json!({ "ttl_secs": 60 }),
    ] {
        server
            .api(Method::POST, "/v1/tokens", Some(bad))
            .await
            .assert_error(400, "BAD_REQUEST");
    }
    let r = server
        .api(
            Method::POST,
            "/v1/tokens",
            Some(json!({ "user_id": "zoe", "ttl_secs": max })),
        )
        .await;
    assert_eq!(r.status, 200, "the longest lifetime is allowed: {}", r.text);
}

/// Every `.route("…", method(…))` in the admin module's sources, as `(METHOD, path)`.
fn served_routes() -> BTreeSet<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/admin");
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("src/admin is readable") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let src = std::fs::read_to_string(&path).expect("a readable source file");
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find_map(|(j, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(j)
                })
                .expect("a .route( call closes");
            let call = &rest[..end];
            let route = call
                .split('"')
                .nth(1)
                .expect("a route path literal")
                .to_owned();
            let handlers = &call[call.find(',').expect("a handler after the path") + 1..];
            for method in ["get", "post", "put", "delete", "patch"] {
                let starts = handlers.trim_start().starts_with(&format!("{method}("));
                let chained = handlers.contains(&format!(".{method}("));
                if starts || chained {
                    out.insert((method.to_uppercase(), route.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route_the_router_serves() {
    let server = TestServer::start(|_| {}).await;
    let served = served_routes();
    // The parser found the routes this test was written against.
    for (m, p) in [
        ("POST", "/v1/tokens"),
        ("POST", "/v1/rooms"),
        ("GET", "/v1/rooms"),
        ("POST", "/v1/rooms:destroy"),
        ("GET", "/v1/rooms/{id}"),
        ("DELETE", "/v1/rooms/{id}"),
        ("GET", "/v1/rooms/{id}/members"),
        ("POST", "/v1/rooms/{id}/members:check"),
        ("POST", "/v1/rooms/{id}/messages"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/broadcast"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ] {
        assert!(
            served.contains(&(m.to_owned(), p.to_owned())),
            "{m} {p} not found in the router source"
        );
    }

    let r = server
        .api_as(None, Method::GET, "/openapi.json", None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let paths = r.json["paths"].as_object().expect("paths object");
    let mut documented = BTreeSet::new();
    for (path, ops) in paths {
        for method in ops.as_object().expect("operations").keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in /openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "in /openapi.json but not routed: {unserved:?}"
    );

    // And each one really answers (no fallback, no 405) on the running server.
    for (method, path) in &documented {
        let concrete = path
            .replace("{id}", "no-such-room")
            .replace("{user}", "no-such-user")
            .replace("{type}", "no-such-type");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let r = server.api(method.clone(), &concrete, None).await;
        assert_ne!(r.status, 405, "{method} {concrete}: {}", r.text);
        assert_ne!(r.json["message"], "no such route", "{method} {concrete}");
        assert_ne!(r.status, 401, "{method} {concrete}: {}", r.text);
    }
    let r = server.api(Method::GET, "/v1/no-such-thing", None).await;
    assert_eq!(
        r.json["message"], "no such route",
        "the fallback check above can fail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_connections_rooms_messages_and_auth_failures() {
    let server = TestServer::start(|_| {}).await;
    // The recorder is process-wide and tests run in parallel: counters are compared before and
    // after, and only this test in this binary refuses a token or sends from a client.
    let before = server.metrics().await;
    let count =
        |text: &str, name: &str, labels: &[(&str, &str)]| metric(text, name, labels).unwrap_or(0.0);

    server.create_room("lobby").await;
    let alice = server.client("alice").await;
    let bob = server.client("bob").await;
    alice.join("lobby", -1).await.expect("joins");
    bob.join("lobby", -1).await.expect("joins");
    // One message at a time, each received before the next is sent: the delivery task counts a
    // write right after making it, so by the time the second message arrives the first one's
    // deliveries are in the metrics.
    for i in 1..=3u64 {
        let (seq, _) = alice
            .send("lobby", "chat", bytes::Bytes::from(format!("m{i}")), false)
            .await
            .expect("sends");
        assert_eq!(seq, i);
        for c in [&alice, &bob] {
            assert_eq!(next_message(c).await.seq, i);
        }
    }
    match server.connect(server.forged_token("mallory")).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e:?}"),
        Ok(_) => panic!("a forged token connected"),
    }

    let after = server.metrics().await;
    for (name, kind) in [
        ("roomcast_connections", "gauge"),
        ("roomcast_rooms", "gauge"),
        ("roomcast_members", "gauge"),
        ("roomcast_messages_in_total", "counter"),
        ("roomcast_messages_out_total", "counter"),
        ("roomcast_bytes_out_total", "counter"),
        ("roomcast_auth_failures_total", "counter"),
    ] {
        assert!(
            has_metric(&after, name, kind),
            "{name} ({kind}) missing:\n{after}"
        );
    }
    let delta = |name: &str, labels: &[(&str, &str)]| {
        count(&after, name, labels) - count(&before, name, labels)
    };
    assert_eq!(delta("roomcast_auth_failures_total", &[]), 1.0);
    assert_eq!(
        delta(
            "roomcast_messages_in_total",
            &[("class", "normal"), ("source", "client")]
        ),
        3.0
    );
    let out = delta(
        "roomcast_messages_out_total",
        &[("class", "normal"), ("lane", "stream")],
    );
    assert!(
        out >= 4.0,
        "at least messages 1 and 2 to both members were counted, got {out}"
    );
    let bytes = delta("roomcast_bytes_out_total", &[("lane", "stream")]);
    assert!(
        bytes >= 4.0 * 20.0,
        "message frames are over 20 bytes each, got {bytes}"
    );
    // The admin calls of this test are counted by route and status.
    assert!(
        delta(
            "roomcast_admin_requests_total",
            &[("route", "POST /v1/rooms"), ("status", "201")]
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_destroy_reaches_members_of_several_rooms() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("a").await;
    server.create_room("b").await;
    let alice = server.client("alice").await;
    alice.join("a", -1).await.expect("joins a");
    alice.join("b", -1).await.expect("joins b");
    let r = server
        .api(
            Method::POST,
            "/v1/rooms:destroy",
            Some(json!({ "ids": ["a", "b"] })),
        )
        .await;
    assert_eq!(r.json, json!({ "destroyed": ["a", "b"], "not_found": [] }));
    let mut rooms = Vec::new();
    for _ in 0..2 {
        match next_event(&alice).await {
            ClientEvent::RoomDestroyed { room, reason } => {
                assert_eq!(reason, roomcast::protocol::DestroyReason::Manual);
                rooms.push(room);
            }
            other => panic!("expected RoomDestroyed, got {other:?}"),
        }
    }
    rooms.sort();
    assert_eq!(rooms, ["a", "b"]);
    // Both memberships are gone with their rooms.
    let err = within(
        "a send",
        alice.send("a", "chat", bytes::Bytes::new(), false),
    )
    .await
    .expect_err("gone");
    assert!(matches!(err, ClientError::Refused(_)), "{err:?}");
    assert_eq!(err.code(), Some(ErrorCode::RoomNotFound));
}
