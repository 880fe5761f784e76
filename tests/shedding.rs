//! Egress shedding through a real server: a member that lags skips low messages first, then
//! normal ones, never protected ones, and is told exactly how many it missed; a member that cannot
//! take its protected traffic is closed as too slow; nobody else waits for either.

mod common;

use common::*;
use reqwest::Method;
use roomcast::client::{Client, ClientEvent};
use roomcast::protocol::{Class, CloseCode, KickReason};
use serde_json::json;

/// What one class of a mixed flood looks like at a member.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Seen {
    delivered: u64,
    gap: u64,
}

/// A server with a `ring`-entry ring and room `room`, with two members: `fast` and `slow`.
async fn fast_and_slow(ring: usize, room: &str) -> (TestServer, Client, Client) {
    let server = TestServer::start(|c| {
        c.limits.ring_capacity = ring;
        c.transport.slow_close_ms = 120_000;
        // The floods wait for each delivery before the next send: nothing for the write window
        // (50 ms by default) to batch, so it is off here.
        c.transport.delivery_window_us = 0;
        c.store.durability = roomcast::store::Durability::Batched;
    })
    .await;
    server.create_room(room).await;
    let fast = server.client("fast").await;
    // The slow member takes no datagrams (low messages come on its stream too) and buffers one
    // event, so its connection's flow control stalls the server's writes to it.
    let slow = server
        .client_with("slow", |c| {
            c.event_buffer = 1;
            c.datagrams = false;
        })
        .await;
    fast.join(room, -1).await.expect("joins");
    slow.join(room, -1).await.expect("joins");
    (server, fast, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_sheds_low_before_normal_never_protected_with_exact_gaps() {
    const N: u64 = 900;
    // Larger than the flood, so nothing is overrun: what the member misses is shed by lag.
    let (server, fast, slow) = fast_and_slow(1024, "mix").await;
    flood(&server, &fast, "mix", N, &"x".repeat(8 * 1024)).await;

    let mut seen = [Seen::default(); 3];
    let idx = |c: Class| match c {
        Class::Protected => 0,
        Class::Normal => 1,
        Class::Low => 2,
    };
    let mut last_seq = 0;
    let mut gaps_before_messages = 0u64;
    let mut pending_gap = false;
    while seen.iter().map(|s| s.delivered + s.gap).sum::<u64>() < N {
        match next_event(&slow).await {
            ClientEvent::Message { message, .. } => {
                assert!(message.seq > last_seq, "in order");
                last_seq = message.seq;
                seen[idx(message.class)].delivered += 1;
                if pending_gap {
                    gaps_before_messages += 1;
                    pending_gap = false;
                }
            }
            ClientEvent::Gap { room, low, normal } => {
                assert_eq!(room, "mix");
                assert!(low + normal > 0, "a gap reports something");
                assert!(
                    !pending_gap,
                    "one gap before each delivered message at most"
                );
                seen[idx(Class::Low)].gap += low;
                seen[idx(Class::Normal)].gap += normal;
                pending_gap = true;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    let [protected, normal, low] = seen;
    // Exact accounting: every message of every class was delivered or counted in a gap.
    assert_eq!(
        protected,
        Seen {
            delivered: N / 3,
            gap: 0
        },
        "protected is never shed"
    );
    assert_eq!(normal.delivered + normal.gap, N / 3);
    assert_eq!(low.delivered + low.gap, N / 3);
    // Order: the member did lag, low went first, and normal never more than low.
    assert!(
        low.gap > 0,
        "the stalled member shed low messages: {seen:?}"
    );
    assert!(low.gap >= normal.gap, "low is shed before normal: {seen:?}");
    assert!(
        gaps_before_messages > 0,
        "gaps come before the next delivered message"
    );

    let metrics = server.metrics().await;
    let shed_low = metric(
        &metrics,
        "roomcast_shed_total",
        &[("class", "low"), ("reason", "lag")],
    );
    assert_eq!(shed_low, Some(low.gap as f64));
    let shed_protected = metric(
        &metrics,
        "roomcast_shed_total",
        &[("class", "protected"), ("reason", "lag")],
    );
    assert_eq!(shed_protected, None, "no protected message was ever shed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_reading_protected_traffic_is_closed_as_too_slow() {
    let server = TestServer::start(|c| {
        c.transport.slow_close_ms = 300;
        c.transport.delivery_window_us = 0;
        c.store.durability = roomcast::store::Durability::Batched;
    })
    .await;
    server.create_room("live").await;
    let fast = server.client("fast").await;
    let stuck = server.client_with("stuck", |c| c.event_buffer = 1).await;
    fast.join("live", -1).await.expect("joins");
    stuck.join("live", -1).await.expect("joins");
    // Protected (system) messages only: 400 × 8 KiB is more than the stuck member's windows hold.
    let body = "p".repeat(8 * 1024);
    for i in 1..=400u64 {
        let r = server
            .api(
                Method::POST,
                "/v1/rooms/live/messages",
                Some(json!({"type": "notice", "body": body})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // The stuck member never delays the others.
        assert_eq!(next_message(&fast).await.seq, i);
    }
    // The stuck member now reads: protected messages in order with no gap, then the close.
    let mut prev = 0;
    let (code, reason) = loop {
        match next_event(&stuck).await {
            ClientEvent::Message { message, .. } => {
                assert_eq!(message.class, Class::Protected);
                assert_eq!(message.seq, prev + 1, "no protected message is skipped");
                prev = message.seq;
            }
            ClientEvent::Closed { code, reason } => break (code, reason),
            other => panic!("unexpected event {other:?}"),
        }
    };
    assert_eq!(code, Some(CloseCode::TooSlow));
    assert_eq!(reason, "too_slow");
    assert!(prev < 400, "it was closed before it could take everything");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "roomcast_too_slow_disconnects_total", &[]),
        Some(1.0)
    );
    // The room goes on for everyone else.
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/live/messages",
            Some(json!({"type": "notice", "body": "still here"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(next_message(&fast).await.seq, 401);
}

/// A member banned while a whole ring behind is still told exactly what it lost before the ban:
/// its messages from before the ban, delivered or counted in a `Gap`, then `Kicked{banned}`, and
/// nothing sent after the ban (more than a ring of it, so the overrun carries its cursor past the
/// end of its membership).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_banned_while_overrun_gets_a_gap_for_what_it_lost_then_kicked() {
    const BEFORE: u64 = 100;
    const AFTER: u64 = 40;
    let (server, fast, slow) = fast_and_slow(16, "r").await;
    let body = "n".repeat(8 * 1024);
    let send_normal = |seq: u64| {
        let server = &server;
        let fast = &fast;
        let body = &body;
        async move {
            let r = server
                .api(
                    Method::POST,
                    "/v1/rooms/r/messages",
                    Some(json!({"from": "u", "type": "chat", "body": body})),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(next_message(fast).await.seq, seq);
        }
    };
    for seq in 1..=BEFORE {
        send_normal(seq).await;
    }
    let r = server
        .api(
            Method::POST,
            "/v1/rooms/r/bans",
            Some(json!({"user_ids": ["slow"], "minutes": 5})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for seq in BEFORE + 1..=BEFORE + AFTER {
        send_normal(seq).await;
    }

    let (mut delivered, mut gap) = (0u64, 0u64);
    loop {
        match next_event(&slow).await {
            ClientEvent::Message { message, .. } => {
                assert!(message.seq <= BEFORE, "sent after the ban: {}", message.seq);
                delivered += 1;
            }
            ClientEvent::Gap { low, normal, .. } => {
                assert_eq!(low, 0);
                gap += normal;
            }
            ClientEvent::Kicked { room, reason } => {
                assert_eq!((room.as_str(), reason), ("r", KickReason::Banned));
                break;
            }
            ClientEvent::Notice(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert!(gap > 0, "the member was overrun: {delivered} delivered");
    assert_eq!(
        delivered + gap,
        BEFORE,
        "every message before the ban is accounted for"
    );
}
