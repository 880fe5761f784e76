//! Crash safety: a real `roomcast serve` process is killed with SIGKILL in the middle of a load
//! and restarted on the same data folder; everything it acknowledged must be there, nothing twice.
//! The same on the JetStream store, against a real nats-server (`tests/nats_support`).

mod nats_support;

use bytes::Bytes;
use nats_support::serve::Serve as Relay;
use rand::Rng;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Starts `roomcast serve` on `data` and waits until it listens.
fn start(data: &Path) -> Relay {
    start_with(data, "")
}

/// [`start`] with `extra` appended to its configuration file.
fn start_with(data: &Path, extra: &str) -> Relay {
    Relay::start_in(data, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_loses_nothing_acknowledged() {
    sigkill_during_load("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_load_on_jetstream_loses_nothing_acknowledged() {
    let Some(bin) = nats_support::binary("sigkill_during_load_on_jetstream") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, dir.path());
    sigkill_during_load(&format!("[cluster]\nnats = [\"{}\"]\n", nats.url())).await;
    drop(nats);
}

/// The crash test on the store `extra` configures (nothing: the embedded file).
async fn sigkill_during_load(extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = dir.path().to_owned();
    let relay = start_with(&data, extra);
    use reqwest::Method;

    // A known set of admin changes, each acknowledged.
    let room_body = json!({"id": "crash", "name": "Crash room",
        "destroy_policy": {"type": "lifetime", "minutes": 600}});
    assert_eq!(
        relay
            .admin(Method::POST, "/v1/rooms", Some(room_body))
            .await
            .0,
        201
    );
    let attrs = json!({"owner": "host", "entries": {"score": "3:1", "stage": "final"}});
    assert_eq!(
        relay
            .admin(Method::PUT, "/v1/rooms/crash/attributes", Some(attrs))
            .await
            .0,
        200
    );
    let ban = json!({"user_ids": ["troll"], "minutes": 60});
    assert_eq!(
        relay
            .admin(Method::POST, "/v1/rooms/crash/bans", Some(ban))
            .await
            .0,
        200
    );
    let mute = json!({"user_ids": ["noisy"], "minutes": 60});
    assert_eq!(
        relay
            .admin(Method::POST, "/v1/rooms/crash/mutes", Some(mute))
            .await
            .0,
        200
    );
    let gmute = json!({"user_ids": ["spammer"], "minutes": 60});
    assert_eq!(
        relay
            .admin(Method::POST, "/v1/global-mutes", Some(gmute))
            .await
            .0,
        200
    );
    assert_eq!(
        relay
            .admin(Method::PUT, "/v1/rooms/crash/keepalive", None)
            .await
            .0,
        204
    );
    let types = json!({"types": ["gift"]});
    assert_eq!(
        relay
            .admin(Method::POST, "/v1/message-types/whitelist", Some(types))
            .await
            .0,
        204
    );
    let first = json!({"from": "host", "type": "chat", "body": "to be recalled"});
    let (status, sent) = relay
        .admin(Method::POST, "/v1/rooms/crash/messages", Some(first))
        .await;
    assert_eq!(status, 200, "{sent}");
    let recalled_seq = sent["seq"].as_u64().expect("seq");
    assert_eq!(
        relay
            .admin(
                Method::POST,
                &format!("/v1/rooms/crash/messages/{recalled_seq}/recall"),
                None
            )
            .await
            .0,
        204
    );

    // Load: pipelined sends from several tasks; SIGKILL after a random number of acks.
    let client = Arc::new(relay.client("sender").await);
    client.join("crash", -1).await.expect("join");
    let acked: Arc<Mutex<Vec<(u64, String)>>> = Arc::default();
    let kill_after = rand::rng().random_range(200..1200usize);
    let total = 3000usize;
    let reached = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8usize {
        let client = client.clone();
        let acked = acked.clone();
        let reached = reached.clone();
        tasks.spawn(async move {
            for i in (t..total).step_by(8) {
                let body = format!("m-{i}");
                match client
                    .send("crash", "chat", Bytes::from(body.clone()), false)
                    .await
                {
                    Ok((seq, _)) => {
                        let mut a = acked.lock().expect("lock");
                        a.push((seq, body));
                        if a.len() == kill_after {
                            reached.notify_one();
                        }
                    }
                    Err(_) => return,
                }
            }
        });
    }
    let mut relay = relay;
    tokio::time::timeout(Duration::from_secs(60), reached.notified())
        .await
        .expect("the load reaches the kill point");
    relay.child.kill().expect("SIGKILL");
    relay.child.wait().expect("reaped");
    // Sends still waiting for replies from the dead server would wait for the idle timeout.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(client);
    drop(relay);
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= kill_after, "acks before the kill");
    assert!(acked.len() < total, "the kill happened during the load");

    // Restart on the same folder.
    let relay = start_with(&data, extra);
    let (status, room) = relay.admin(Method::GET, "/v1/rooms/crash", None).await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["name"], "Crash room");
    assert_eq!(room["destroy_policy"]["type"], "lifetime");
    assert_eq!(room["destroy_policy"]["minutes"], 600);
    assert_eq!(room["keepalive"], true);
    let (_, a) = relay
        .admin(Method::GET, "/v1/rooms/crash/attributes", None)
        .await;
    let keys: Vec<&str> = a["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|x| x["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["score", "stage"]);
    let (_, bans) = relay.admin(Method::GET, "/v1/rooms/crash/bans", None).await;
    assert_eq!(bans["users"][0]["user_id"], "troll");
    let (_, mutes) = relay
        .admin(Method::GET, "/v1/rooms/crash/mutes", None)
        .await;
    assert_eq!(mutes["users"][0]["user_id"], "noisy");
    let (_, g) = relay.admin(Method::GET, "/v1/global-mutes", None).await;
    assert_eq!(g["users"][0]["user_id"], "spammer");
    let (_, t) = relay
        .admin(Method::GET, "/v1/message-types/whitelist", None)
        .await;
    assert_eq!(t["types"], json!(["gift"]));

    let history = relay.history("crash").await;
    let seqs: Vec<u64> = history
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "history is ordered");
    let first = &history[0];
    assert_eq!(first["seq"].as_u64(), Some(recalled_seq));
    assert_eq!(first["recalled"], true, "recall survived: {first}");
    assert!(first["body"].is_null(), "a recalled message keeps no body");
    let mut seen = std::collections::HashMap::new();
    for m in &history[1..] {
        let body = m["body"].as_str().expect("body").to_owned();
        assert!(
            seen.insert(body.clone(), m["seq"].as_u64().expect("seq"))
                .is_none(),
            "{body} appears twice"
        );
    }
    for (seq, body) in &acked {
        assert_eq!(
            seen.get(body),
            Some(seq),
            "acknowledged message {body} (seq {seq}) is missing or moved"
        );
    }

    // The room goes on above every sequence number handed out before the crash.
    let max_acked = acked.iter().map(|(s, _)| *s).max().unwrap_or(0);
    let client = relay.client("sender").await;
    client.join("crash", -1).await.expect("join after restart");
    let (seq, _) = client
        .send("crash", "chat", Bytes::from_static(b"after"), false)
        .await
        .expect("send after restart");
    assert!(
        seq > max_acked,
        "seq {seq} after restart, {max_acked} before"
    );
    let later = relay.history("crash").await;
    assert_eq!(later.last().expect("newest")["body"], "after");
    assert_eq!(
        later.len(),
        history.len() + 1,
        "pages stay complete after more traffic"
    );
    assert_eq!(
        data.join(roomcast::server::STORE_FILE).exists(),
        extra.is_empty(),
        "the store file exists exactly when the relay runs on the embedded store"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_with_a_reason_and_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data: PathBuf = dir.path().to_owned();
    let mut relay = start(&data);
    let (status, _) = relay
        .admin(
            reqwest::Method::POST,
            "/v1/rooms",
            Some(json!({"id": "bye"})),
        )
        .await;
    assert_eq!(status, 201);
    let client = relay.client("alice").await;
    client.join("bye", -1).await.expect("join");
    let pid = relay.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let event = tokio::time::timeout(Duration::from_secs(10), client.next_event())
        .await
        .expect("the close arrives");
    match event {
        Some(roomcast::client::ClientEvent::Closed { code, reason }) => {
            assert_eq!(code, Some(roomcast::protocol::CloseCode::Shutdown));
            assert_eq!(reason, "server shutting down");
        }
        other => panic!("expected the shutdown close, got {other:?}"),
    }
    let status = relay.child.wait().expect("the server exits");
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
}
