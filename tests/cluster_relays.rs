//! Rooms that span relays: three real `roomcast serve` processes on one real `nats-server -js`
//! (`tests/nats_support`), clients over real QUIC on loopback. A room's members sit on different
//! relays; whichever relay a sender is on, its send reaches the room's owner (forwarded over a
//! NATS request when that is another relay), is sequenced once, and reaches every member exactly
//! once, in seq order, through one copy per relay with members. No sleeps: every wait is for an
//! event, or a bounded poll of another process's `/metrics`. The last section: the admin API on
//! any relay acts cluster-wide.

mod common;
mod nats_support;

use common::{body, metric, poll};
use nats_support::serve::Serve;
use reqwest::Method;
use roomcast::client::{Client, ClientEvent};
use roomcast::protocol::Class;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Upper bound on collecting one member's messages: only turns a hang into a failure.
const COLLECT: Duration = Duration::from_secs(30);

/// Three relays `relay-a`, `relay-b`, `relay-c` on the NATS at `url`.
fn three(dir: &Path, url: &str) -> [Serve; 3] {
    three_with(dir, url, "")
}

/// [`three`] with `extra` appended to each configuration.
fn three_with(dir: &Path, url: &str, extra: &str) -> [Serve; 3] {
    ["relay-a", "relay-b", "relay-c"].map(|node| Serve::start(dir, node, url, extra))
}

/// Waits until `relay` reports `count` members of `room` (its own and the other relays').
async fn member_count_becomes(relay: &Serve, room: &str, count: u64) {
    room_field_becomes(relay, room, "member_count", json!(count)).await;
}

/// Creates `room` through `on`'s admin API and waits until every relay of `all` knows it
/// (through its watch of the shared state).
async fn create_everywhere(on: &Serve, all: &[Serve], room: &str) {
    let all: Vec<&Serve> = all.iter().collect();
    on.create_room_known_by(room, &all).await;
}

/// Two relays `relay-a` and `relay-b` (`extra` appended to each configuration), room `r` made
/// on A, `ann` a member on A and `bea` on B.
struct Pair {
    a: Serve,
    b: Serve,
    ann: Client,
    bea: Client,
}

async fn pair(dir: &Path, url: &str, extra: &str) -> Pair {
    let a = Serve::start(dir, "relay-a", url, extra);
    let b = Serve::start(dir, "relay-b", url, extra);
    create_everywhere(&a, std::slice::from_ref(&b), "r").await;
    let ann = a.client("ann").await;
    let bea = b.client("bea").await;
    for m in [&ann, &bea] {
        m.join("r", -1).await.expect("joins");
    }
    Pair { a, b, ann, bea }
}

/// The value of `name` in `relay`'s metrics (0 when it has no sample yet).
async fn counter(relay: &Serve, name: &str) -> f64 {
    metric(&relay.metrics().await, name, &[]).unwrap_or(0.0)
}

/// The first of `client`'s events that `pick` takes (skipping others), within [`COLLECT`].
async fn first<T>(client: &Client, what: &str, pick: impl Fn(ClientEvent) -> Option<T>) -> T {
    let waiting = async {
        loop {
            match client.next_event().await.expect("the event stream is open") {
                ClientEvent::Closed { reason, .. } => panic!("{}: closed: {reason}", client.user()),
                e => {
                    if let Some(v) = pick(e) {
                        return v;
                    }
                }
            }
        }
    };
    match tokio::time::timeout(COLLECT, waiting).await {
        Ok(v) => v,
        Err(_) => panic!("{}: no {what} within {COLLECT:?}", client.user()),
    }
}

/// What one member received of `room`: messages in arrival order with their lane, and any gap.
struct Received {
    messages: Vec<(roomcast::protocol::Message, bool)>,
    gaps: Vec<ClientEvent>,
}

/// Reads `client`'s events until it holds `n` messages of `room`.
async fn collect(client: &Client, room: &str, n: usize) -> Received {
    let mut got = Received {
        messages: Vec::new(),
        gaps: Vec::new(),
    };
    let reading = async {
        while got.messages.len() < n {
            match client.next_event().await.expect("the event stream is open") {
                ClientEvent::Message { message, datagram } if message.room == room => {
                    got.messages.push((message, datagram));
                }
                gap @ ClientEvent::Gap { .. } => got.gaps.push(gap),
                ClientEvent::Closed { code, reason } => {
                    panic!("{}: closed ({code:?}): {reason}", client.user())
                }
                _ => {}
            }
        }
    };
    if tokio::time::timeout(COLLECT, reading).await.is_err() {
        panic!(
            "{}: {} of {n} messages of {room} within {COLLECT:?}",
            client.user(),
            got.messages.len()
        );
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_three_relays_get_every_message_once_in_order_whoever_sends() {
    let Some(bin) = nats_support::binary("members_on_three_relays_get_every_message_once") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let relays = three(dir.path(), &nats.url());
    create_everywhere(&relays[0], &relays, "hall").await;

    // Two members on relay A, one on each of B and C; each of the three also sends.
    let members = [
        relays[0].client("ann").await,
        relays[0].client("abe").await,
        relays[1].client("bea").await,
        relays[2].client("cid").await,
    ];
    for m in &members {
        m.join("hall", -1).await.expect("joins");
    }
    const NORMAL: usize = 20;
    const LOW: usize = 5;
    // The three senders at once, from the three relays: the first sends race for the room's
    // ownership, the rest are sequenced by the winner (forwarded from the other two relays).
    let senders = [&members[0], &members[2], &members[3]];
    let sends = senders.iter().map(|c| async move {
        let mut sent = Vec::new();
        for i in 0..NORMAL {
            let text = format!("{} {i}", c.user());
            let (seq, ts) = c
                .send("hall", "chat", body(&text), false)
                .await
                .unwrap_or_else(|e| panic!("{text}: {e}"));
            sent.push((seq, ts, text, Class::Normal));
            if i < LOW {
                let text = format!("{} low {i}", c.user());
                let (seq, ts) = c
                    .send("hall", "cursor", body(&text), true)
                    .await
                    .unwrap_or_else(|e| panic!("{text}: {e}"));
                sent.push((seq, ts, text, Class::Low));
            }
        }
        sent
    });
    let sent: Vec<(u64, u64, String, Class)> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .flatten()
        .collect();
    let total = 3 * (NORMAL + LOW);
    assert_eq!(sent.len(), total);
    let by_seq: BTreeMap<u64, (u64, String, Class)> = sent
        .iter()
        .map(|(seq, ts, text, class)| (*seq, (*ts, text.clone(), *class)))
        .collect();
    assert_eq!(by_seq.len(), total, "no seq was assigned twice");

    for m in &members {
        let got = collect(m, "hall", total).await;
        assert!(got.gaps.is_empty(), "{}: {:?}", m.user(), got.gaps);
        let mut seen = BTreeSet::new();
        let mut last = [0u64; 2];
        for (msg, datagram) in &got.messages {
            assert!(seen.insert(msg.seq), "{}: seq {} twice", m.user(), msg.seq);
            let (ts, text, class) = by_seq
                .get(&msg.seq)
                .unwrap_or_else(|| panic!("{}: seq {} was never sent", m.user(), msg.seq));
            assert_eq!(
                (
                    &String::from_utf8_lossy(&msg.body).into_owned(),
                    msg.ts,
                    msg.class
                ),
                (text, *ts, *class),
                "{}: seq {}",
                m.user(),
                msg.seq
            );
            // Each lane (the stream; datagrams) is in seq order; the two are not ordered with
            // each other.
            assert_eq!(*datagram, msg.class == Class::Low, "{}: {text}", m.user());
            let lane = usize::from(*datagram);
            assert!(
                msg.seq > last[lane],
                "{}: seq {} after {}",
                m.user(),
                msg.seq,
                last[lane]
            );
            last[lane] = msg.seq;
        }
        assert_eq!(seen.len(), total, "{}", m.user());
    }

    // One relay sequenced the room; the other two forwarded their members' sends to it.
    let mut owners = 0;
    let mut forwarded = 0.0;
    for r in &relays {
        let text = r.metrics().await;
        owners += metric(&text, "roomcast_cluster_owned_rooms", &[]).unwrap_or(0.0) as usize;
        forwarded += metric(
            &text,
            "roomcast_cluster_forwarded_total",
            &[("outcome", "ok")],
        )
        .unwrap_or(0.0);
    }
    assert_eq!(owners, 1, "one owner");
    assert_eq!(
        forwarded as usize,
        2 * (NORMAL + LOW),
        "two senders' messages were forwarded"
    );
    drop(members);
    drop(relays);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_gets_a_rooms_traffic_once_per_message_only_while_it_has_members_there() {
    let Some(bin) = nats_support::binary("a_relay_gets_a_rooms_traffic_only_with_members") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let counts = "[rooms]\nmember_count_interval_ms = 50\n";
    let relays = three_with(dir.path(), &nats.url(), counts);
    let [a, b, c] = &relays;
    create_everywhere(a, &relays, "r").await;
    // Members on A (two) and B (two); none on C.
    let on_a = [a.client("ann").await, a.client("abe").await];
    let on_b = [b.client("bea").await, b.client("bob").await];
    for m in on_a.iter().chain(&on_b) {
        m.join("r", -1).await.expect("joins");
    }
    // A sends first and so owns the room; B's sends are forwarded to it.
    const EACH: usize = 10;
    for i in 0..EACH {
        on_a[0]
            .send("r", "chat", body(&format!("a {i}")), false)
            .await
            .expect("sent on the owner");
    }
    for i in 0..EACH {
        on_b[0]
            .send("r", "chat", body(&format!("b {i}")), false)
            .await
            .expect("forwarded");
    }
    for m in on_a.iter().chain(&on_b) {
        assert_eq!(collect(m, "r", 2 * EACH).await.messages.len(), 2 * EACH);
    }
    // The owner published each message once; B, with two members, received one copy of each;
    // C, with none, received nothing.
    let out = counter(a, "roomcast_cluster_messages_out_total").await;
    assert_eq!(out as usize, 2 * EACH, "published once per message");
    assert_eq!(counter(a, "roomcast_cluster_messages_in_total").await, 0.0);
    assert_eq!(
        counter(b, "roomcast_cluster_messages_in_total").await as usize,
        2 * EACH,
        "one copy per message for two members"
    );
    assert_eq!(counter(c, "roomcast_cluster_messages_in_total").await, 0.0);
    assert_eq!(counter(c, "roomcast_cluster_live_rooms").await, 0.0);
    assert_eq!(counter(b, "roomcast_cluster_live_rooms").await, 1.0);
    // Every relay counts the room's members on all of them (`<prefix>_members`).
    for relay in &relays {
        member_count_becomes(relay, "r", 4).await;
    }

    // B's last member leaves: B stops taking the room's traffic.
    on_b[0].leave("r").await.expect("leaves");
    on_b[1].leave("r").await.expect("leaves");
    poll("B unsubscribed", || async {
        (counter(b, "roomcast_cluster_live_rooms").await == 0.0).then_some(())
    })
    .await;
    for relay in &relays {
        member_count_becomes(relay, "r", 2).await;
    }
    for i in 0..EACH {
        on_a[1]
            .send("r", "chat", body(&format!("later {i}")), false)
            .await
            .expect("sent");
    }
    let later = collect(&on_a[0], "r", EACH).await;
    assert_eq!(later.messages.len(), EACH);
    assert_eq!(
        counter(a, "roomcast_cluster_messages_out_total").await as usize,
        3 * EACH
    );
    assert_eq!(
        counter(b, "roomcast_cluster_messages_in_total").await as usize,
        2 * EACH,
        "nothing after its last member left"
    );
    drop((on_a, on_b));
    drop(relays);
    drop(nats);
}

/// Room `stage`, made on the first relay and known to all, with a member on each given relay
/// (index into `relays`, user), joined.
async fn stage(relays: &[Serve; 3], members: [(usize, &str); 3]) -> [Client; 3] {
    create_everywhere(&relays[0], relays, "stage").await;
    let mut clients = Vec::new();
    for (i, user) in members {
        let m = relays[i].client(user).await;
        m.join("stage", -1).await.expect("joins");
        clients.push(m);
    }
    clients
        .try_into()
        .unwrap_or_else(|_| unreachable!("three members"))
}

/// Waits until `relay` reports `room`'s `field` as `want` (its cache of the shared state).
async fn room_field_becomes(relay: &Serve, room: &str, field: &str, want: serde_json::Value) {
    poll("the room's state on the relay", || async {
        let (_, info) = relay
            .admin(Method::GET, &format!("/v1/rooms/{room}"), None)
            .await;
        (info[field] == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_made_on_one_relay_and_changed_through_another_is_in_force_on_the_third() {
    let Some(bin) = nats_support::binary("a_room_changed_through_any_relay_is_in_force") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let relays = three(dir.path(), &nats.url());
    let [a, b, c] = &relays;
    let [ann, bea, mallory] = stage(&relays, [(0, "ann"), (1, "bea"), (1, "mallory")]).await;

    // A ban through C, a relay with no member there: C takes the room (nobody owned it yet).
    let (status, reply) = c
        .admin(
            Method::POST,
            "/v1/rooms/stage/bans",
            Some(json!({"user_ids": ["mallory"], "minutes": 5})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // In force on B: its member there is removed, and may not come back, there or on A.
    let kicked = first(&mallory, "mallory's removal on B", |e| match e {
        ClientEvent::Kicked { room, reason } => Some((room, reason)),
        _ => None,
    })
    .await;
    assert_eq!(
        kicked,
        ("stage".into(), roomcast::protocol::KickReason::Banned)
    );
    let refused = mallory.join("stage", -1).await.expect_err("banned on B");
    assert_eq!(refused.code(), Some(roomcast::protocol::ErrorCode::Banned));
    let on_a = a.client("mallory").await;
    let refused = on_a.join("stage", -1).await.expect_err("banned on A");
    assert_eq!(refused.code(), Some(roomcast::protocol::ErrorCode::Banned));
    for relay in [a, b] {
        let (_, bans) = relay.admin(Method::GET, "/v1/rooms/stage/bans", None).await;
        assert_eq!(bans["users"][0]["user_id"], "mallory", "{bans}");
    }

    // Mute-all through A, which does not own the room: made by its owner, C, and in force on B.
    let (status, reply) = a.admin(Method::PUT, "/v1/rooms/stage/mute-all", None).await;
    assert!((200..300).contains(&status), "{status} {reply}");
    room_field_becomes(b, "stage", "mute_all", json!(true)).await;
    let refused = bea
        .send("stage", "chat", body("hello?"), false)
        .await
        .expect_err("muted on B");
    assert_eq!(refused.code(), Some(roomcast::protocol::ErrorCode::Muted));
    room_field_becomes(a, "stage", "mute_all", json!(true)).await;
    let refused = ann
        .send("stage", "chat", body("hello?"), false)
        .await
        .expect_err("muted on A");
    assert_eq!(refused.code(), Some(roomcast::protocol::ErrorCode::Muted));
    assert_eq!(counter(c, "roomcast_cluster_owned_rooms").await, 1.0);
    let served = metric(
        &c.metrics().await,
        "roomcast_cluster_forwarded_total",
        &[("outcome", "served")],
    );
    assert_eq!(served, Some(1.0), "the mute-all was made by the owner");
    drop((ann, bea, mallory, on_a));
    drop(relays);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_end_comes_once_on_the_owner_and_every_relay_tells_its_members() {
    let Some(bin) = nats_support::binary("a_scheduled_end_comes_once_on_the_owner") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let relays = three(dir.path(), &nats.url());
    let [a, b, c] = &relays;
    create_everywhere(a, &relays, "show").await;
    let ann = a.client("ann").await;
    let cid = c.client("cid").await;
    for m in [&ann, &cid] {
        m.join("show", -1).await.expect("joins");
    }
    // Scheduled through B, which has no member there and takes the room (nobody owned it).
    let at = roomcast::server::relay::now_ms() + 1_500;
    let (status, reply) = b
        .admin(
            Method::PUT,
            "/v1/rooms/show/destroy-at",
            Some(json!({ "at": at })),
        )
        .await;
    assert_eq!(status, 204, "{reply}");
    for m in [&ann, &cid] {
        let ended = first(m, "the room's end", |e| match e {
            ClientEvent::RoomDestroyed { room, reason } => Some((room, reason)),
            _ => None,
        })
        .await;
        assert_eq!(
            ended,
            (
                "show".to_owned(),
                roomcast::protocol::DestroyReason::Scheduled
            ),
            "{}",
            m.user()
        );
    }
    let mut destroyed = 0.0;
    for relay in &relays {
        poll("the room gone on every relay", || async {
            let (status, _) = relay.admin(Method::GET, "/v1/rooms/show", None).await;
            (status == 404).then_some(())
        })
        .await;
        destroyed += metric(
            &relay.metrics().await,
            "roomcast_rooms_destroyed_total",
            &[("reason", "scheduled")],
        )
        .unwrap_or(0.0);
    }
    assert_eq!(destroyed, 1.0, "destroyed once, by its owner");
    drop((ann, cid));
    drop(relays);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_renews_its_lease_and_when_it_dies_another_relay_takes_the_room() {
    let Some(bin) = nats_support::binary("the_owner_renews_and_another_relay_takes_over") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let ttl = "lease_ttl_ms = 1500\n";
    let Pair { a, b, ann, bea } = pair(dir.path(), &nats.url(), ttl).await;
    let mut last = 0;
    for i in 0..5 {
        let (seq, _) = ann
            .send("r", "chat", body(&format!("a {i}")), false)
            .await
            .expect("sent on the owner");
        last = seq;
    }
    // The lease in NATS: A's, and renewed (its revision moves on while A holds it).
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let leases = async_nats::jetstream::new(client)
        .get_key_value("roomcast_leases")
        .await
        .expect("the leases bucket");
    let held = leases
        .entry("room.r")
        .await
        .expect("read")
        .expect("a lease");
    let value: serde_json::Value = serde_json::from_slice(&held.value).expect("JSON");
    assert_eq!(value["node"], "relay-a", "{value}");
    // The term is the revision of the acquiring write (renewals since have moved it on).
    let term = value["term"].as_u64().expect("a term");
    assert!(
        term > 0 && term < held.revision,
        "{value} at revision {}",
        held.revision
    );
    poll("a renewal", || async {
        let now = leases.entry("room.r").await.ok()??;
        (now.revision >= held.revision + 2).then_some(())
    })
    .await;
    let mut a = a;
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    drop(ann);
    // B's member's send: refused by no one for good; once A's lease has run out, B takes the
    // room, and numbers it above everything A may have handed out.
    let (seq, _) = bea
        .send("r", "chat", body("after"), false)
        .await
        .expect("B takes the room over");
    assert!(seq > last, "seq {seq} after {last}");
    let got = collect(&bea, "r", 6).await;
    let seqs: Vec<u64> = got.messages.iter().map(|(m, _)| m.seq).collect();
    assert_eq!(seqs[5], seq, "{seqs:?}");
    let scrape = b.metrics().await;
    assert_eq!(
        metric(&scrape, "roomcast_cluster_owned_rooms", &[]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "roomcast_cluster_ownership_changes_total",
            &[("change", "acquired")]
        ),
        Some(1.0)
    );
    let now = leases
        .entry("room.r")
        .await
        .expect("read")
        .expect("a lease");
    let value: serde_json::Value = serde_json::from_slice(&now.value).expect("JSON");
    assert_eq!(value["node"], "relay-b", "{value}");
    drop(bea);
    drop(b);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_a_forwarded_send_is_refused_and_after_it_nothing_refused_was_delivered() {
    let Some(bin) = nats_support::binary("with_nats_down_a_forwarded_send_is_refused") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let quick = "request_timeout_ms = 1000\n";
    let Pair { a, b, ann, bea } = pair(dir.path(), &nats.url(), quick).await;
    ann.send("r", "chat", body("before 1"), false)
        .await
        .expect("sent on the owner");
    bea.send("r", "chat", body("before 2"), false)
        .await
        .expect("forwarded");

    nats.kill();
    poll("B sees NATS gone", || async {
        let text = b.metrics().await;
        (metric(&text, "roomcast_cluster_connected", &[]) == Some(0.0)).then_some(())
    })
    .await;
    let refused = bea
        .send("r", "chat", body("refused"), false)
        .await
        .expect_err("NATS is down");
    assert_eq!(
        refused.code(),
        Some(roomcast::protocol::ErrorCode::Unavailable)
    );
    assert!(refused.to_string().contains("NATS"), "{refused}");

    nats.restart();
    for relay in [&a, &b] {
        poll("the relay back on NATS", || async {
            let text = relay.metrics().await;
            let up = metric(&text, "roomcast_cluster_connected", &[]) == Some(1.0)
                && metric(&text, "roomcast_store_healthy", &[]) == Some(1.0);
            up.then_some(())
        })
        .await;
    }
    // Live traffic is core NATS, at most once: B's member gets the owner's messages again once
    // B's subscription is back at the NATS server, which no metric shows. Probes sent on the
    // owner until one reaches B's member show it.
    let mut probes = 0;
    'probing: loop {
        probes += 1;
        assert!(
            probes <= 30,
            "no probe reached B's member after NATS came back"
        );
        ann.send("r", "chat", body(&format!("probe {probes}")), false)
            .await
            .expect("sent on the owner");
        let seen = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(ev) = bea.next_event().await {
                if let ClientEvent::Message { message, .. } = ev {
                    assert_ne!(
                        message.body.as_ref(),
                        b"refused",
                        "a refused send was delivered"
                    );
                    if message.body.starts_with(b"probe ") {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        if seen == Ok(true) {
            break 'probing;
        }
    }
    bea.send("r", "chat", body("after"), false)
        .await
        .expect("forwarded again");
    // Nothing refused reached anyone: each member's messages are the two before, probes, and
    // "after" last.
    for m in [&ann, &bea] {
        let mut bodies = Vec::new();
        let reading = async {
            while bodies.last().map(String::as_str) != Some("after") {
                match m.next_event().await.expect("the event stream is open") {
                    ClientEvent::Message { message, .. } => {
                        bodies.push(String::from_utf8_lossy(&message.body).into_owned())
                    }
                    ClientEvent::Closed { reason, .. } => panic!("{} closed: {reason}", m.user()),
                    _ => {}
                }
            }
        };
        if tokio::time::timeout(COLLECT, reading).await.is_err() {
            panic!("{}: no \"after\" within {COLLECT:?}: {bodies:?}", m.user());
        }
        assert!(
            !bodies.iter().any(|b| b == "refused"),
            "{}: {bodies:?}",
            m.user()
        );
        if m.user() == "ann" {
            assert_eq!(bodies[..2], ["before 1", "before 2"], "{bodies:?}");
        }
    }
    let (_, page) = a.admin(Method::GET, "/v1/rooms/r/messages", None).await;
    let stored: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().expect("body"))
        .collect();
    assert_eq!(stored[..2], ["before 1", "before 2"], "{page}");
    assert_eq!(stored.last(), Some(&"after"), "{page}");
    assert!(!stored.contains(&"refused"), "{page}");
    assert_eq!(stored.len(), 3 + probes, "{page}");
    drop((ann, bea));
    drop((a, b));
    drop(nats);
}

/// Sends `signal` (`STOP`, `CONT`) to `relay`'s process.
fn signal(relay: &Serve, signal: &str) {
    let done = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &relay.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(done.success(), "kill -{signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_paused_past_its_lease_steps_down_and_no_seq_is_assigned_twice() {
    let Some(bin) = nats_support::binary("an_owner_paused_past_its_lease_steps_down") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    // A paused owner still holds its subscriptions: a forwarded send waits for the request
    // timeout before the sender's relay looks at the lease.
    let ttl = "lease_ttl_ms = 1500\nrequest_timeout_ms = 1000\n";
    let Pair { a, b, ann, bea } = pair(dir.path(), &nats.url(), ttl).await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let (seq, _) = ann
            .send("r", "chat", body(&format!("a {i}")), false)
            .await
            .expect("sent on the owner");
        acked.push(seq);
    }
    // A stops (a partition from everything); B takes the room once A's lease has run out.
    signal(&a, "STOP");
    let (seq, _) = bea
        .send("r", "chat", body("b 0"), false)
        .await
        .expect("B takes the room over");
    acked.push(seq);
    signal(&a, "CONT");
    // A, back, does not sequence any more: its member's sends go to B.
    for i in 1..4 {
        let (seq, _) = ann
            .send("r", "chat", body(&format!("a again {i}")), false)
            .await
            .expect("sent through the new owner");
        acked.push(seq);
    }
    let unique: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(unique.len(), acked.len(), "a seq assigned twice: {acked:?}");
    assert!(
        acked.windows(2).all(|w| w[0] < w[1]),
        "seqs only increase: {acked:?}"
    );
    let scrape = a.metrics().await;
    assert_eq!(
        metric(&scrape, "roomcast_cluster_owned_rooms", &[]),
        Some(0.0)
    );
    let down = metric(&scrape, "roomcast_cluster_ownership_changes_total", &[]).unwrap_or(0.0)
        - metric(
            &scrape,
            "roomcast_cluster_ownership_changes_total",
            &[("change", "acquired")],
        )
        .unwrap_or(0.0);
    assert_eq!(down, 1.0, "A stepped down once:\n{scrape}");
    assert_eq!(
        metric(&b.metrics().await, "roomcast_cluster_owned_rooms", &[]),
        Some(1.0)
    );
    // Both members got every acknowledged message once, in order.
    for m in [&ann, &bea] {
        let got = collect(m, "r", acked.len()).await;
        let seqs: Vec<u64> = got.messages.iter().map(|(msg, _)| msg.seq).collect();
        assert_eq!(seqs, acked, "{}", m.user());
    }
    drop((ann, bea));
    drop((a, b));
    drop(nats);
}

/// Relays A and B, room `r` made on A and owned by it (its member `ann` sent `n` messages,
/// `acked`, first); B has no member there, so none of its live traffic.
struct Owned {
    a: Serve,
    b: Serve,
    ann: Client,
    epoch: u64,
    acked: Vec<u64>,
}

async fn owned_by_a(dir: &Path, url: &str, n: usize) -> Owned {
    let a = Serve::start(dir, "relay-a", url, "");
    let b = Serve::start(dir, "relay-b", url, "");
    create_everywhere(&a, std::slice::from_ref(&b), "r").await;
    let ann = a.client("ann").await;
    let epoch = ann.join("r", 0).await.expect("joins on A").room.epoch;
    let mut acked = Vec::new();
    for i in 0..n {
        let (seq, _) = ann
            .send("r", "chat", body(&format!("m{i}")), false)
            .await
            .expect("sent through A");
        acked.push(seq);
    }
    Owned {
        a,
        b,
        ann,
        epoch,
        acked,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_on_a_relay_that_does_not_own_the_room_holds_what_the_owner_stored() {
    let Some(bin) = nats_support::binary("history_on_a_non_owner") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let Owned {
        a, b, ann, acked, ..
    } = owned_by_a(dir.path(), &nats.url(), 5).await;
    assert_eq!(counter(&a, "roomcast_cluster_owned_rooms").await, 1.0);
    assert_eq!(counter(&b, "roomcast_cluster_owned_rooms").await, 0.0);
    let seqs = |h: &[roomcast::protocol::HistoryEntry]| -> Vec<u64> {
        h.iter().map(|e| e.message.seq).collect()
    };

    // A join's history on B, and pages of `history` requests there.
    let cal = b.client("cal").await;
    let info = cal.join("r", 10).await.expect("joins on B");
    assert_eq!(seqs(&info.history), acked, "join history on B");
    assert_eq!(info.last_seq, acked[4]);
    let newest = cal.history("r", None, 3).await.expect("a page on B");
    assert_eq!(seqs(&newest), acked[2..]);
    let older = cal
        .history("r", Some(acked[2]), 10)
        .await
        .expect("the older page on B");
    assert_eq!(seqs(&older), acked[..2]);
    let bodies: Vec<_> = newest.iter().map(|e| e.message.body.clone()).collect();
    assert_eq!(bodies, vec![body("m2"), body("m3"), body("m4")]);

    // Sent while B has a member: it is in B's history too, read from the stream.
    let (seq, _) = ann
        .send("r", "chat", body("m5"), false)
        .await
        .expect("sent through A");
    let page = cal.history("r", None, 10).await.expect("a page on B");
    assert_eq!(seqs(&page).last(), Some(&seq));
    assert_eq!(page.len(), 6);
    drop((ann, cal));
    drop((a, b));
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_relay_without_members_replays_from_history_what_the_owner_sequenced() {
    let Some(bin) = nats_support::binary("resume_on_a_non_owner") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let Owned {
        a,
        b,
        ann,
        epoch,
        acked,
    } = owned_by_a(dir.path(), &nats.url(), 4).await;

    // Bob received the first and comes back on B, which has no member of the room.
    let bob = b.client("bob").await;
    let info = bob
        .resume("r", epoch, acked[0])
        .await
        .expect("resumes on B");
    assert_eq!(info.last_seq, acked[3], "the room's newest, not B's ring's");
    let resumed = first(&bob, "Resumed", |e| match e {
        ClientEvent::Resumed {
            missed, last_seq, ..
        } => Some((missed, last_seq)),
        _ => None,
    })
    .await;
    assert_eq!(resumed, (0, acked[3]), "everything missed is replayed");
    let (seq, _) = ann
        .send("r", "chat", body("live"), false)
        .await
        .expect("sent through A");
    let got = collect(&bob, "r", 4).await;
    let seqs: Vec<u64> = got.messages.iter().map(|(m, _)| m.seq).collect();
    assert_eq!(
        seqs,
        [acked[1], acked[2], acked[3], seq],
        "replay, then live"
    );
    assert!(got.gaps.is_empty(), "{:?}", got.gaps);

    // A resume beyond the room's newest is still refused.
    let cal = b.client("cal").await;
    let refused = cal
        .resume("r", epoch, seq + 1)
        .await
        .expect_err("beyond the newest");
    assert_eq!(
        refused.code(),
        Some(roomcast::protocol::ErrorCode::BadRequest)
    );
    drop((ann, bob, cal));
    drop((a, b));
    drop(nats);
}

// ---- the admin API on any relay, cluster-wide ----
// Destroying several rooms through a relay that owns none of them, changing the app-wide lists
// through each relay in turn, listing or checking a room's members and broadcasting through any
// relay: each answers for the whole cluster.

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
    for (member, room) in [(&ann, "ra"), (&bea, "rb")] {
        let ended = first(member, "RoomDestroyed", |e| match e {
            ClientEvent::RoomDestroyed { room, reason } => Some((room, reason)),
            _ => None,
        })
        .await;
        assert_eq!(ended, (room.to_owned(), manual));
    }
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
async fn all_members(
    relay: &Serve,
    room: &str,
    order: &str,
    limit: usize,
) -> (Vec<String>, serde_json::Value) {
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
        let got = first(member, "the broadcast", |e| match e {
            ClientEvent::Message { message, .. } => Some(message),
            _ => None,
        })
        .await;
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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_room_is_destroyed_at_once_after_another_relay_wrote_the_app_wide_lists() {
    let Some(bin) = nats_support::binary("a_kept_room_is_destroyed_after_another_relay_wrote")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let Pair { a, b, ann, bea } = pair(dir.path(), &nats.url(), "").await;
    // A owns `r` (its first send) and puts it on the keepalive list.
    ann.send("r", "chat", body("mine"), false)
        .await
        .expect("sent");
    let (status, reply) = a.admin(Method::PUT, "/v1/rooms/r/keepalive", None).await;
    assert!((200..300).contains(&status), "{status} {reply}");
    // B writes the lists next.
    let (status, reply) = b
        .admin(
            Method::POST,
            "/v1/global-mutes",
            Some(json!({"user_ids": ["x"], "minutes": 10})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    // The destruction through the owner takes the room off the lists B wrote last.
    let (status, reply) = a.admin(Method::DELETE, "/v1/rooms/r", None).await;
    assert_eq!(status, 200, "{reply}");
    for member in [&ann, &bea] {
        let ended = first(member, "RoomDestroyed", |e| match e {
            ClientEvent::RoomDestroyed { room, reason } => Some((room, reason)),
            _ => None,
        })
        .await;
        assert_eq!(
            ended,
            ("r".to_owned(), roomcast::protocol::DestroyReason::Manual)
        );
    }
    for relay in [&a, &b] {
        poll(
            "the room gone and off the keepalive list, B's mute kept",
            || async {
                let (status, _) = relay.admin(Method::GET, "/v1/rooms/r", None).await;
                let (_, kept) = relay.admin(Method::GET, "/v1/keepalive", None).await;
                let (_, mutes) = relay.admin(Method::GET, "/v1/global-mutes", None).await;
                let kept_none = kept["rooms"] == json!([]);
                (status == 404 && kept_none && mutes["users"][0]["user_id"] == "x").then_some(())
            },
        )
        .await;
    }
    drop((ann, bea, a, b));
    drop(nats);
}
// ---- end the admin API on any relay ----

// ---- creations racing on two relays ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_room_created_on_two_relays_at_once_is_one_room_and_every_join_gets_in() {
    let Some(bin) = nats_support::binary("the_same_room_created_on_two_relays_at_once") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let creates = "[rooms]\njoin_creates = true\n";
    let a = Serve::start(dir.path(), "relay-a", &nats.url(), creates);
    let b = Serve::start(dir.path(), "relay-b", &nats.url(), creates);
    let ann = a.client("ann").await;
    let bea = b.client("bea").await;
    for i in 0..8 {
        // Joins that create the room, on both relays at once: both get in, into one room.
        let room = format!("joined-{i}");
        let (on_a, on_b) = tokio::join!(ann.join(&room, -1), bea.join(&room, -1));
        let on_a = on_a.unwrap_or_else(|e| panic!("{room}: the join on A: {e}"));
        let on_b = on_b.unwrap_or_else(|e| panic!("{room}: the join on B: {e}"));
        assert_eq!(on_a.room.epoch, on_b.room.epoch, "{room}: one incarnation");
        let (seq, _) = ann
            .send(&room, "chat", body("hi"), false)
            .await
            .expect("sent");
        let got = first(&bea, "the message on B", |e| match e {
            ClientEvent::Message { message, .. } if message.room == room => Some(message.seq),
            _ => None,
        })
        .await;
        assert_eq!(
            got, seq,
            "{room}: B's member is in the room A's member sent to"
        );

        // Admin creations of one id on both relays at once: one is made, the other is told
        // the room exists (never UNAVAILABLE), and both relays then know the room.
        let room = format!("made-{i}");
        let make = Some(json!({ "id": room }));
        let ((sa, ra), (sb, rb)) = tokio::join!(
            a.admin(Method::POST, "/v1/rooms", make.clone()),
            b.admin(Method::POST, "/v1/rooms", make.clone())
        );
        let mut statuses = [sa, sb];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "{room}: A {ra}, B {rb}");
        for relay in [&a, &b] {
            let (status, info) = relay
                .admin(Method::GET, &format!("/v1/rooms/{room}"), None)
                .await;
            assert_eq!(status, 200, "{room}: {info}");
        }
    }
}

// ---- attributes with owners, across relays ----

/// `relay`'s view of `room`'s attribute `key`: (value, owner), polled until `want`.
async fn attribute_becomes(relay: &Serve, room: &str, key: &str, want: Option<(&str, &str)>) {
    let path = format!("/v1/rooms/{room}/attributes?keys={key}");
    poll("the attribute on every relay", || async {
        let (status, view) = relay.admin(Method::GET, &path, None).await;
        assert_eq!(status, 200, "{view}");
        let got = view["attributes"]
            .as_array()
            .and_then(|a| a.first())
            .map(|a| {
                (
                    a["value"].as_str().unwrap_or_default().to_owned(),
                    a["owner"].as_str().unwrap_or_default().to_owned(),
                )
            });
        let want = want.map(|(v, o)| (v.to_owned(), o.to_owned()));
        (got == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_set_through_any_relay_keep_their_owner_on_every_relay() {
    let Some(bin) = nats_support::binary("attributes_set_through_any_relay") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let relays = three(dir.path(), &nats.url());
    let [a, b, c] = &relays;
    let [ann, bea, cid] = stage(&relays, [(0, "ann"), (1, "bea"), (2, "cid")]).await;
    // A owns the room (its first send).
    ann.send("stage", "chat", body("mine"), false)
        .await
        .expect("sent");

    // Bea sets a key through B, which does not own the room: made, with Bea as its owner.
    let (_, results) = bea
        .set_attributes("stage", &[("topic", "rust")], false, false)
        .await
        .expect("set on B");
    assert_eq!(results, [("topic".to_owned(), None)], "set on B");
    for relay in [a, b, c] {
        attribute_becomes(relay, "stage", "topic", Some(("rust", "bea"))).await;
    }
    // Cid, through C, may not overwrite Bea's key; with force he may.
    let (_, results) = cid
        .set_attributes("stage", &[("topic", "go")], false, false)
        .await
        .expect("answered on C");
    let refused = results[0].1.as_ref().expect("Bea's key is hers");
    assert_eq!(results[0].0, "topic");
    assert_ne!(
        refused.code,
        roomcast::protocol::ErrorCode::Unavailable,
        "{refused:?}"
    );
    attribute_becomes(a, "stage", "topic", Some(("rust", "bea"))).await;
    let (_, results) = cid
        .set_attributes("stage", &[("topic", "go")], false, true)
        .await
        .expect("forced on C");
    assert_eq!(results, [("topic".to_owned(), None)], "forced on C");
    for relay in [a, b, c] {
        attribute_becomes(relay, "stage", "topic", Some(("go", "cid"))).await;
    }
    // An admin change through C, as its owner Dan, is in force on the others.
    let (status, reply) = c
        .admin(
            Method::PUT,
            "/v1/rooms/stage/attributes",
            Some(json!({"owner": "dan", "entries": {"mood": "calm"}})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    for relay in [a, b, c] {
        attribute_becomes(relay, "stage", "mood", Some(("calm", "dan"))).await;
    }
    // Bea may not delete Dan's key through B; an admin deletion through B is in force everywhere.
    let (_, results) = bea
        .delete_attributes("stage", &["mood"], false)
        .await
        .expect("answered on B");
    let refused = results[0].1.as_ref().expect("Dan's key is his");
    assert_eq!(
        refused.code,
        roomcast::protocol::ErrorCode::AttrNotOwner,
        "{refused:?}"
    );
    let (status, reply) = b
        .admin(Method::DELETE, "/v1/rooms/stage/attributes/mood", None)
        .await;
    assert!((200..300).contains(&status), "{status} {reply}");
    for relay in [a, b, c] {
        attribute_becomes(relay, "stage", "mood", None).await;
    }
    let (status, reply) = b
        .admin(Method::DELETE, "/v1/rooms/stage/attributes/topic", None)
        .await;
    assert!((200..300).contains(&status), "{status} {reply}");
    for relay in [a, b, c] {
        attribute_becomes(relay, "stage", "topic", None).await;
    }
    drop((ann, bea, cid));
    drop(relays);
    drop(nats);
}
