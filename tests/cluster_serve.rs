//! A relay on the JetStream store, over real QUIC and HTTP on loopback, against a real
//! `nats-server -js` that the test kills and restarts: while NATS is down, sends and changes are
//! refused as `UNAVAILABLE` with a message naming NATS, `/healthz` says why, nothing refused is
//! delivered or stored, nothing acknowledged is lost, and writes come back by themselves.

mod common;
mod nats_support;
mod store_support;

use bytes::Bytes;
use common::{body, code, metric};
use reqwest::Method;
use roomcast::protocol::ErrorCode;
use roomcast::store::NatsStore;
use roomcast::tls::ServerIdentity;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use store_support::{Node, next_text};

fn nats_store(url: &str, data: &Path) -> Arc<NatsStore> {
    let nats = nats_support::store_config(url, "serve-test");
    Arc::new(NatsStore::open(nats, Node::config(data).store_config()).expect("the store opens"))
}

async fn bodies(c: &roomcast::client::Client) -> Vec<String> {
    c.history("r", None, 200)
        .await
        .expect("history")
        .iter()
        .map(|h| String::from_utf8_lossy(&h.message.body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_refuses_sends_and_changes_then_recovers_by_itself() {
    let Some(bin) = nats_support::binary("nats_down_refuses_sends_and_changes") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let data = dir.path().join("data");
    let identity = ServerIdentity::generate(&[]).expect("identity");
    let node = Node::start_on(&data, &identity, nats_store(&nats.url(), &data)).await;
    let clients = node.room_with("r", &["alice", "bob"]).await;
    let (alice, bob) = (&clients[0], &clients[1]);
    for i in 0..5 {
        let text = format!("before {i}");
        alice
            .send("r", "chat", body(&text), false)
            .await
            .expect("acknowledged");
        next_text(bob, &text).await;
    }
    let health = node.health_becomes(200).await;
    assert_eq!(health["store"]["state"], "healthy");

    nats.kill();
    // The first send after the loss may wait for the request timeout; from then on every
    // write is refused at once.
    let refused = alice
        .send("r", "chat", Bytes::from_static(b"refused 1"), false)
        .await;
    assert_eq!(code(refused), ErrorCode::Unavailable);
    let health = node.health_becomes(503).await;
    assert_eq!(health["store"]["state"], "failing", "{health}");
    let why = health["store"]["error"].as_str().expect("error");
    assert!(why.contains("NATS"), "{health}");
    let e = alice
        .send("r", "chat", Bytes::from_static(b"refused 2"), false)
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Some(ErrorCode::Unavailable));
    assert!(e.to_string().contains("NATS"), "{e}");
    let r = node
        .api(
            Method::POST,
            "/v1/rooms/r/bans",
            Some(json!({"user_ids": ["mallory"], "minutes": 5})),
        )
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    let scrape = node.api(Method::GET, "/metrics", None).await.text;
    assert_eq!(metric(&scrape, "roomcast_nats_connected", &[]), Some(0.0));
    assert_eq!(metric(&scrape, "roomcast_store_healthy", &[]), Some(0.0));

    nats.restart();
    node.health_becomes(200).await;
    alice
        .send("r", "chat", body("after"), false)
        .await
        .expect("writes came back by themselves");
    // Nothing refused reached bob: the next thing he gets is the message after the outage.
    next_text(bob, "after").await;
    let mut want: Vec<String> = (0..5).map(|i| format!("before {i}")).collect();
    want.push("after".into());
    assert_eq!(bodies(alice).await, want);
    let bans = node.ok(Method::GET, "/v1/rooms/r/bans", None, 200).await;
    assert_eq!(bans["users"], json!([]), "the refused ban was not made");
    drop(clients);
    node.stop().await;

    // A restart on the same NATS agrees with what the clients were told.
    let node = Node::start_on(&data, &identity, nats_store(&nats.url(), &data)).await;
    let carol = node.client("carol").await;
    carol.join("r", -1).await.expect("the room survived");
    assert_eq!(bodies(&carol).await, want);
    drop(carol);
    node.stop().await;
}
