//! What the relay keeps grows with its rooms, users and connections, never with its traffic: the
//! delivery histograms take one write in `HISTOGRAM_SAMPLE_EVERY` per connection (not a sample per
//! delivery), metric label sets stay bounded whatever the requests, and the registry's maps shrink
//! back to empty when rooms and connections go.
//!
//! This binary holds its own Prometheus recorder: the one test that delivers messages is the only
//! one that records in the delivery histograms.

mod common;

use common::*;
use roomcast::metrics::HISTOGRAM_SAMPLE_EVERY;
use roomcast::server::relay::{Footprint, now_ms};

/// Polls `done` every few milliseconds until it holds (bounded by [`within`]): the registry's
/// sizes change on the server's tasks, with no event a client could wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_histograms_take_one_write_in_sixteen_not_one_sample_per_delivery() {
    let server = TestServer::start(|c| c.transport.delivery_window_us = 0).await;
    server.create_room("paced").await;
    let alice = server.client("alice").await;
    within("join", alice.join("paced", -1)).await.expect("join");
    // One message per write: each is sent once the previous one arrived.
    const SENDS: u32 = 64;
    for i in 0..SENDS {
        within(
            "send",
            alice.send("paced", "chat", body(&i.to_string()), false),
        )
        .await
        .expect("send");
        assert_eq!(next_message(&alice).await.body, body(&i.to_string()));
    }
    let text = server.metrics().await;
    let out = metric(
        &text,
        "roomcast_messages_out_total",
        &[("class", "normal"), ("lane", "stream")],
    );
    assert_eq!(out, Some(f64::from(SENDS)), "every delivery is counted");
    let sampled = f64::from(SENDS.div_ceil(HISTOGRAM_SAMPLE_EVERY));
    for histogram in [
        "roomcast_fanout_latency_seconds_count",
        "roomcast_delivery_lag_messages_count",
    ] {
        assert_eq!(
            metric(&text, histogram, &[]),
            Some(sampled),
            "{histogram}: one write in {HISTOGRAM_SAMPLE_EVERY}\n{text}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_http_methods_do_not_grow_the_admin_metric_labels() {
    let server = TestServer::start(|_| {}).await;
    let http = reqwest::Client::new();
    for i in 0..40 {
        let method = Method::from_bytes(format!("MADEUP{i}").as_bytes()).expect("a method token");
        let r = admin_call(&http, &server.admin_url("/nowhere"), None, method, None).await;
        r.assert_error(400, "BAD_REQUEST");
    }
    let text = server.metrics().await;
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("roomcast_admin_requests_total{") && l.contains("unmatched"))
        .collect();
    assert_eq!(
        metric(
            &text,
            "roomcast_admin_requests_total",
            &[("route", "OTHER unmatched"), ("status", "400")]
        ),
        Some(40.0),
        "{series:?}"
    );
    assert_eq!(
        series.len(),
        1,
        "one series for every made-up method: {series:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_shrinks_back_to_empty_when_rooms_and_connections_go() {
    // Long enough that the server's own timer pass never removes anyone during the test.
    let grace = 600_000;
    let server = TestServer::start(|c| c.rooms.offline_grace_ms = grace).await;
    assert_eq!(server.relay().footprint(), Footprint::default());
    let rooms: Vec<String> = (0..4).map(|r| format!("room-{r}")).collect();
    for r in &rooms {
        server.create_room(r).await;
    }
    let mut clients = Vec::new();
    for u in 0..12 {
        let c = server.client(&format!("user-{u}")).await;
        for r in &rooms[..1 + u % rooms.len()] {
            within("join", c.join(r, -1)).await.expect("join");
        }
        clients.push(c);
    }
    let memberships: usize = (0..12).map(|u| 1 + u % rooms.len()).sum();
    let full = server.relay().footprint();
    assert_eq!(
        (full.rooms, full.users, full.conns, full.members),
        (4, 12, 12, memberships)
    );
    // The delivery tasks register with each room they read as the subscription reaches them.
    until("every delivery task to register", || {
        server.relay().footprint().watchers >= memberships
    })
    .await;

    // Half the users leave by closing their connection: they stay members through the offline
    // grace, then the timer pass removes them.
    for c in clients.drain(..6) {
        c.close().await;
    }
    until("the closed connections to unregister", || {
        server.relay().footprint().conns <= 6
    })
    .await;
    assert_eq!(server.relay().footprint().users, 12, "offline members stay");
    server.relay().tick(now_ms() + grace + 1).await;
    let after_grace = server.relay().footprint();
    assert_eq!((after_grace.users, after_grace.conns), (6, 6));

    // The rooms go, then the rest of the connections.
    for r in &rooms {
        let r = server
            .api(Method::DELETE, &format!("/v1/rooms/{r}"), None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let no_rooms = server.relay().footprint();
    assert_eq!(
        (no_rooms.rooms, no_rooms.members, no_rooms.watchers),
        (0, 0, 0)
    );
    assert_eq!(no_rooms.users, 6, "connected users without rooms");
    for c in clients.drain(..) {
        c.close().await;
    }
    until("the registry to empty", || {
        server.relay().footprint() == Footprint::default()
    })
    .await;
    server.shutdown().await;
}
