//! Client failover with real `roomcast serve` processes over real QUIC on loopback: a
//! `FailoverClient` whose relay is SIGKILLed moves to the next one and resumes its room there;
//! one whose relay is SIGKILLed and restarted on the same data folder under a paced publisher
//! resumes with the exact `missed`, and gets every message after what it had, in seq order,
//! none twice; and three relays sharing a room whose owner is SIGKILLed under a paced load: its
//! member resumes exactly on a survivor, the survivors' members get every acknowledged message,
//! history holds each once, and ownership moves within the lease bound.

mod common;
mod nats_support;

use bytes::Bytes;
use common::{metric, poll, poll_for};
use roomcast::client::{Client, ClientConfig, ClientEvent, FailoverClient, FailoverConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nats_support::cluster::NatsCluster;
use nats_support::serve::{SECRET, Serve as Relay};

/// Upper bound of one wait in these tests (a dead relay is noticed after the clients' 3 s idle
/// timeout): only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(60);

/// How long the test clients' connections may stay silent before they count as dead.
const IDLE: Duration = Duration::from_secs(3);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// A relay's stored seqs of `room`, oldest first.
async fn history(relay: &Relay, room: &str) -> Vec<u64> {
    relay
        .history(room)
        .await
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

async fn create_room(relay: &Relay, id: &str) {
    let (status, body) = relay
        .admin(
            reqwest::Method::POST,
            "/v1/rooms",
            Some(json!({ "id": id })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// How a test client of `user` reaches `relay`: a dead relay is noticed after [`IDLE`].
fn client_config(relay: &Relay, user: &str) -> ClientConfig {
    let mut cfg = relay.client_config(user);
    cfg.idle_timeout = IDLE;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg
}

async fn client(relay: &Relay, user: &str) -> Client {
    Client::connect(client_config(relay, user))
        .await
        .expect("client connects")
}

/// A failover client for `user` over `servers`, trusting `relay`'s CA (relays sharing a data
/// folder or a store share it too).
async fn failover(
    relay: &Relay,
    servers: Vec<SocketAddr>,
    user: &str,
    buffer: usize,
) -> FailoverClient {
    let mut cfg = client_config(relay, user);
    cfg.event_buffer = buffer;
    let mut fc = FailoverConfig::new(servers, cfg);
    fc.backoff_min = Duration::from_millis(50);
    fc.backoff_max = Duration::from_millis(500);
    within("a failover client connects", FailoverClient::connect(fc))
        .await
        .expect("connects")
}

/// What a subscriber saw, in order.
#[derive(Debug, Default)]
struct Seen {
    /// Message seqs, as delivered.
    seqs: Vec<u64>,
    /// Where the stream moved to another connection: (index into `seqs`, the server).
    reconnected: Vec<(usize, SocketAddr)>,
    /// `Resumed{missed, last_seq}`, with the index into `seqs` where it came.
    resumed: Vec<(usize, u64, u64)>,
    /// `Gap{low, normal}` totals.
    gaps: (u64, u64),
}

impl Seen {
    /// Takes one event; panics on an end of the membership or the connection.
    fn take(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Message { message, .. } => self.seqs.push(message.seq),
            ClientEvent::Reconnected { server } => self.reconnected.push((self.seqs.len(), server)),
            ClientEvent::Resumed {
                missed, last_seq, ..
            } => self.resumed.push((self.seqs.len(), missed, last_seq)),
            ClientEvent::Gap { low, normal, .. } => {
                self.gaps.0 += low;
                self.gaps.1 += normal;
            }
            ClientEvent::Notice(_) => {}
            other => panic!("the subscriber got {other:?}"),
        }
    }
}

/// Reads `sub`'s events into `seen` until it has the message `seq`.
async fn read_until(sub: &FailoverClient, seen: &mut Seen, seq: u64) {
    within(&format!("message {seq}"), async {
        while !seen.seqs.contains(&seq) {
            let ev = sub.next_event().await.expect("events go on");
            seen.take(ev);
        }
    })
    .await;
}

fn strictly_increasing(seqs: &[u64]) -> bool {
    seqs.windows(2).all(|w| w[0] < w[1])
}

/// Two relays on one nats-server: `a` with room `lobby` (3 messages in it), and `b`, a
/// standby on the same store started after them (it shares the room, its epoch and history,
/// and the CA). `None` when there is no nats-server to run.
/// The NATS server, the two relays, and the seq of the last of the three early messages.
async fn standby_pair(
    test: &str,
    dir: &Path,
) -> Option<(nats_support::NatsServer, Relay, Relay, u64)> {
    let bin = nats_support::binary(test)?;
    let nats = nats_support::NatsServer::start(&bin, &dir.join("nats"));
    // A short lease, so the survivor takes the room over soon after the owner dies.
    let extra = format!(
        "[cluster]\nnats = [\"{}\"]\nlease_ttl_ms = 1500\n",
        nats.url()
    );
    let (data_a, data_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&data_a).expect("dir a");
    std::fs::create_dir_all(&data_b).expect("dir b");
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let a = Relay::start_at(&data_a, any, &extra);
    create_room(&a, "lobby").await;
    let early = client(&a, "pub").await;
    early.join("lobby", -1).await.expect("joins on a");
    let mut last = 0;
    for i in 0..3 {
        let (seq, _) = early
            .send("lobby", "chat", Bytes::from(format!("early {i}")), false)
            .await
            .expect("sent on a");
        assert!(seq > last, "seqs increase");
        last = seq;
    }
    early.close().await;
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(data_a.join(f), data_b.join(f)).expect("CA shared");
    }
    let b = Relay::start_at(&data_b, any, &extra);
    Some((nats, a, b, last))
}

/// Publishes `n` messages on `relay` as `pub`; their seqs.
async fn publish(relay: &Relay, n: usize) -> Vec<u64> {
    let publisher = client(relay, "pub").await;
    publisher.join("lobby", -1).await.expect("pub joins");
    let mut acked = Vec::new();
    for i in 0..n {
        acked.push(send_retrying(&publisher, i).await);
    }
    publisher.close().await;
    acked
}

/// Sends message `m{i}` to `lobby` as `publisher`; its seq. Refused with UNAVAILABLE (sent to
/// no one) while a dead owner's lease runs out: sent again on an interval, as a client does,
/// within the test's bound.
async fn send_retrying(publisher: &Client, i: usize) -> u64 {
    send_text_retrying(publisher, &format!("m{i}")).await
}

/// [`send_retrying`] with the body `text`.
async fn send_text_retrying(publisher: &Client, text: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut retry = tokio::time::interval(Duration::from_millis(50));
    loop {
        match publisher
            .send("lobby", "chat", Bytes::from(text.to_owned()), false)
            .await
        {
            Ok((seq, _)) => return seq,
            Err(e)
                if e.code() == Some(roomcast::protocol::ErrorCode::Unavailable)
                    && tokio::time::Instant::now() < deadline =>
            {
                retry.tick().await;
            }
            Err(e) => panic!("send {text}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_two_relays_moves_to_the_second_when_the_first_is_sigkilled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((nats, mut a, b, early)) = standby_pair("a_client_given_two_relays", dir.path()).await
    else {
        return;
    };

    let sub = failover(&a, vec![a.quic, b.quic], "sub", 8192).await;
    assert_eq!(sub.server(), Some(a.quic));
    let info = sub.join("lobby", -1).await.expect("joins on a");
    assert_eq!(info.last_seq, early);

    a.kill();
    // Published on b while the subscriber has not noticed yet, and after it moved: every one
    // reaches it once, in order, after its Resumed.
    let acked = publish(&b, 10).await;
    let mut seen = Seen::default();
    read_until(&sub, &mut seen, *acked.last().expect("sent")).await;
    assert_eq!(seen.reconnected, [(0, b.quic)], "{seen:?}");
    assert_eq!(sub.server(), Some(b.quic));
    let (at, missed, _) = seen.resumed[0];
    assert_eq!((at, missed), (0, 0), "{seen:?}");
    assert_eq!(seen.seqs, acked, "every message once, in order");
    // Still a member there: its own send comes back.
    let (seq, _) = sub
        .send("lobby", "chat", Bytes::from_static(b"moved"), false)
        .await
        .expect("sends on b");
    read_until(&sub, &mut seen, seq).await;
    sub.close().await;
    drop(b);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_restarted_under_a_paced_publisher_resumes_its_subscriber_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_owned();
    let mut relay = Relay::start_at(&data, SocketAddr::from(([127, 0, 0, 1], 0)), "");
    let addr = relay.quic;
    create_room(&relay, "live").await;

    // A subscriber that reads slowly enough that the relay still holds messages for it when it
    // dies: a small event buffer and large bodies fill its stream window.
    let sub = failover(&relay, vec![addr], "sub", 4).await;
    let info = sub.join("live", -1).await.expect("sub joins");
    let epoch = info.room.epoch;
    let publisher = failover(&relay, vec![addr], "pub", 1024).await;
    publisher.join("live", -1).await.expect("pub joins");

    let body = Bytes::from(vec![b'x'; 8 * 1024]);
    let mut acked: Vec<u64> = Vec::new();
    let mut failed = 0u32;
    // Phase 1, fast: 100 messages while the subscriber reads nothing.
    for _ in 0..100 {
        match publisher.send("live", "chat", body.clone(), false).await {
            Ok((seq, _)) => acked.push(seq),
            Err(e) => panic!("the relay is up: {e}"),
        }
    }
    relay.kill();
    // Restarted on the same data folder and port.
    let restarted = tokio::task::spawn_blocking(move || Relay::start_at(&data, addr, ""))
        .await
        .expect("restarts");
    // Phase 2, paced: 50 more across the clients' reconnects (a send whose connection died
    // may or may not have been made; the history says).
    let sender = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..50 {
            tick.tick().await;
            match publisher
                .send("live", "chat", Bytes::from_static(b"paced"), false)
                .await
            {
                Ok((seq, _)) => acked.push(seq),
                Err(_) => failed += 1,
            }
        }
        publisher.close().await;
        (acked, failed)
    });
    let mut seen = Seen::default();
    // Everything of the first run the subscriber still gets, its move, and the replay, while
    // the publisher goes on.
    let mut sender = sender;
    let (acked, failed) = within("the paced publisher", async {
        loop {
            tokio::select! {
                ev = sub.next_event() => seen.take(ev.expect("events go on")),
                done = &mut sender => break done.expect("publisher task"),
            }
        }
    })
    .await;
    let last = *acked.last().expect("acked");
    read_until(&sub, &mut seen, last).await;
    assert!(
        failed <= 1,
        "at most the send in flight at the restart fails: {failed}"
    );

    let history = history(&restarted, "live").await;
    // Nothing acknowledged is lost.
    for s in &acked {
        assert!(history.binary_search(s).is_ok(), "acked {s} not in history");
    }
    assert_eq!(seen.reconnected.len(), 1, "{:?}", seen.reconnected);
    assert_eq!(seen.resumed.len(), 1, "{:?}", seen.resumed);
    let (at, missed, resumed_last) = seen.resumed[0];
    let (moved_at, server) = seen.reconnected[0];
    assert_eq!((moved_at, server), (at, addr));
    let from = seen.seqs[..at].last().copied().unwrap_or(info.last_seq);
    // The old run still held messages for the subscriber when it died: the resume replayed
    // them from history.
    let old_run_last = acked[99];
    assert!(from < old_run_last, "the subscriber had them all ({from})");
    // Exact: `missed` is what history has after `from` up to the resume and the subscriber did
    // not get; here, every such message is in history, so nothing.
    let in_range = |s: &u64| *s > from && *s <= resumed_last;
    let stored = history.iter().filter(|s| in_range(s)).count();
    let got = seen.seqs.iter().filter(|s| in_range(s)).count();
    assert_eq!(missed, (stored - got) as u64);
    assert_eq!(missed, 0);
    // Every stored message after the join, once, in seq order (history keeps every class the
    // publisher sent), and nothing else.
    assert!(strictly_increasing(&seen.seqs), "{:?}", seen.seqs);
    let expected: Vec<u64> = history
        .iter()
        .copied()
        .filter(|s| *s > info.last_seq)
        .collect();
    assert_eq!(seen.seqs, expected);
    assert!(seen.seqs.contains(&old_run_last));
    // Resumed in the same incarnation.
    let (status, room) = restarted
        .admin(reqwest::Method::GET, "/v1/rooms/live", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(room["epoch"].as_u64(), Some(epoch), "{room}");
    sub.close().await;
    drop(relay);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roomcast_sub_with_two_servers_moves_to_the_second_when_the_first_is_sigkilled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((nats, mut a, b, early)) =
        standby_pair("roomcast_sub_with_two_servers", dir.path()).await
    else {
        return;
    };
    let token = roomcast::auth::TokenAuth::new(SECRET.as_bytes(), 0, false)
        .mint("sub", roomcast::auth::unix_secs() + 600)
        .expect("token");
    let servers = format!("{},{}", a.quic, b.quic);
    let ca = a.data.join("ca.pem");
    let mut sub = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "sub", "--room", "lobby", "--user", "sub", "--count", "5", "--server",
        ])
        .arg(&servers)
        .arg("--ca")
        .arg(&ca)
        .args(["--token", &token, "--data"])
        .arg(dir.path().join("no-data"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("roomcast sub starts");
    let stdout = sub.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let next = |what: &str| -> Value {
        rx.recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("sub printed no {what}"))
    };
    let joined = next("joined line");
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["last_seq"], early, "{joined}");
    a.kill();
    let acked = publish(&b, 5).await;
    let mut lines = Vec::new();
    while lines
        .iter()
        .filter(|l: &&Value| l["event"] == "message")
        .count()
        < 5
    {
        lines.push(next("line after the kill"));
    }
    let status = tokio::task::spawn_blocking(move || sub.wait())
        .await
        .expect("waits")
        .expect("exit status");
    assert!(status.success(), "{lines:?}");
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(events[..2], ["reconnected", "resumed"], "{lines:?}");
    assert_eq!(lines[0]["server"], b.quic.to_string());
    assert_eq!(lines[1]["missed"], 0);
    let seqs: Vec<u64> = lines
        .iter()
        .filter(|l| l["event"] == "message")
        .filter_map(|l| l["seq"].as_u64())
        .collect();
    assert_eq!(seqs, acked);
    drop(b);
    drop(nats);
}

/// Waits until `relay` knows room `id` (through its watch of the shared state).
async fn room_known(relay: &Relay, id: &str) {
    within(&format!("room {id} on a relay"), async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            let (status, _) = relay
                .admin(reqwest::Method::GET, &format!("/v1/rooms/{id}"), None)
                .await;
            if status == 200 {
                return;
            }
            tick.tick().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sigkilled_under_a_paced_load_its_clients_resume_exactly_on_the_survivors() {
    let Some(bin) = nats_support::binary("the_owner_sigkilled_under_a_paced_load") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    owner_sigkilled_under_a_paced_load(dir.path(), &[nats.url()], "").await;
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_server_nats_cluster_with_r3_the_owner_sigkilled_under_load_loses_nothing() {
    let Some(bin) = nats_support::binary("on_a_three_server_nats_cluster_the_owner_sigkilled")
    else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = NatsCluster::start(&bin, &dir.path().join("nats"));
    // Every relay is given all three servers; the stream and buckets have three replicas. A
    // send forwarded to the owner as it dies can be routed to the server it was on before that
    // server's routes hear it is gone; the forwarder waits 2 request timeouts + 1 s for it (in
    // doubt), so a short request timeout keeps that within the bound.
    let extra = "replicas = 3\nrequest_timeout_ms = 1000\n";
    owner_sigkilled_under_a_paced_load(dir.path(), &nats.urls(), extra).await;
    assert_three_replicas(&nats);
    drop(nats);
}

/// Asserts that every stream the relays made (history, and each KV bucket's) has three
/// replicas on the cluster, as the cluster's `/jsz` reports them.
fn assert_three_replicas(nats: &NatsCluster) {
    let (status, jsz) = nats
        .monitor(1, "/jsz?streams=true&config=true")
        .expect("/jsz answers");
    assert_eq!(status, 200, "{jsz}");
    let streams: Vec<&Value> = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .collect();
    assert!(streams.len() > 1, "the history stream and buckets: {jsz}");
    for s in streams {
        assert_eq!(s["config"]["num_replicas"], 3, "{}: {s}", s["name"]);
    }
}

/// Three relays sharing room `lobby` on the NATS at `urls` (each relay given all of them,
/// `extra` appended to each `[cluster]`): Amy on A sends first, so A owns the room; Bob on B and
/// Cal on C are members; a paced publisher on B; A is SIGKILLed mid-load. Amy resumes on a
/// survivor with the exact `missed`, every acknowledged send is in history once, the survivors'
/// members get each, and ownership moves within the lease bound.
async fn owner_sigkilled_under_a_paced_load(dir: &Path, urls: &[String], extra: &str) {
    // A short lease: the bound on moving a dead owner's room is one TTL plus one renewal.
    let ttl = Duration::from_millis(1500);
    let extra = format!("lease_ttl_ms = {}\n{extra}", ttl.as_millis());
    let mut a = Relay::start_on(dir, "relay-a", urls, &extra);
    // One CA for the three, so a client given all three addresses trusts each.
    for node in ["relay-b", "relay-c"] {
        let data = dir.join(node);
        std::fs::create_dir_all(&data).expect("data folder");
        for f in ["ca.pem", "ca.key"] {
            std::fs::copy(a.data.join(f), data.join(f)).expect("CA shared");
        }
    }
    let b = Relay::start_on(dir, "relay-b", urls, &extra);
    let c = Relay::start_on(dir, "relay-c", urls, &extra);
    create_room(&a, "lobby").await;
    room_known(&b, "lobby").await;
    room_known(&c, "lobby").await;

    // Amy on A sends first: A owns the room. Bob on B and Cal on C are members as well.
    let all = |first: &Relay| {
        let mut v = vec![first.quic];
        v.extend(
            [a.quic, b.quic, c.quic]
                .into_iter()
                .filter(|q| *q != first.quic),
        );
        v
    };
    let amy = failover(&a, all(&a), "amy", 8192).await;
    let bob = failover(&b, all(&b), "bob", 8192).await;
    let cal = failover(&c, all(&c), "cal", 8192).await;
    amy.join("lobby", -1).await.expect("amy joins on A");
    let (first, _) = amy
        .send("lobby", "chat", Bytes::from_static(b"first"), false)
        .await
        .expect("sent on A");
    let bob_from = bob
        .join("lobby", -1)
        .await
        .expect("bob joins on B")
        .last_seq;
    let cal_from = cal
        .join("lobby", -1)
        .await
        .expect("cal joins on C")
        .last_seq;

    // A paced publisher on B (its sends forwarded to the owner); A is SIGKILLed mid-load.
    let publisher = client(&b, "pub").await;
    publisher.join("lobby", -1).await.expect("pub joins on B");
    let mut acked = vec![first];
    let (total, kill_after) = (300, 40);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    // No burst after the stall: the load goes on past the clients' idle timeout.
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut killed_at = None;
    let mut moved_in = None;
    for i in 0..total {
        pace.tick().await;
        if i == kill_after {
            a.kill();
            killed_at = Some(tokio::time::Instant::now());
        }
        let seq = send_retrying(&publisher, i).await;
        if let (Some(at), None) = (killed_at, moved_in) {
            moved_in = Some(at.elapsed());
        }
        acked.push(seq);
    }
    let newest = *acked.last().expect("sent");
    assert!(strictly_increasing(&acked), "no seq twice: {acked:?}");

    // Every acknowledged send is in history, read through a survivor; no seq is stored twice.
    let stored = history(&b, "lobby").await;
    assert!(strictly_increasing(&stored), "{stored:?}");
    for seq in &acked {
        assert!(
            stored.contains(seq),
            "acked {seq} is in history: {stored:?}"
        );
    }
    assert_eq!(stored, history(&c, "lobby").await, "the same history on C");

    // The survivors' members got every stored message after their join point once, in order
    // (also those the dead owner stored and never published live, or never answered), and
    // nothing else: every message is stored here, so there is nothing to count in a Gap.
    for (member, from) in [(&bob, bob_from), (&cal, cal_from)] {
        let mut seen = Seen::default();
        read_until(member, &mut seen, newest).await;
        assert!(seen.reconnected.is_empty(), "{seen:?}");
        let want: Vec<u64> = stored.iter().copied().filter(|s| *s > from).collect();
        assert_eq!(seen.seqs, want, "exactly once, in order: {seen:?}");
        assert_eq!(seen.gaps, (0, 0), "nothing to count: {seen:?}");
        // Every one sent after they joined.
        for seq in &acked[1..] {
            assert!(seen.seqs.contains(seq), "{seq} delivered: {seen:?}");
        }
    }

    // Amy moved to B or C and resumed there with the exact count of what she did not get.
    let mut seen = Seen::default();
    read_until(&amy, &mut seen, newest).await;
    assert_eq!(seen.reconnected.len(), 1, "{seen:?}");
    let (at, server) = seen.reconnected[0];
    assert!(server == b.quic || server == c.quic, "{seen:?}");
    let &(resumed_at, missed, resume_point) = seen.resumed.first().expect("Resumed");
    assert_eq!(
        resumed_at, at,
        "Resumed comes first after the move: {seen:?}"
    );
    assert!(strictly_increasing(&seen.seqs), "nothing twice: {seen:?}");
    let had = seen.seqs[..at].last().copied().unwrap_or(0);
    let after = &seen.seqs[at..];
    let not_received = stored
        .iter()
        .filter(|s| **s > had && **s <= resume_point && !after.contains(s))
        .count() as u64;
    eprintln!("amy had {had}, moved to {server} and resumed at {resume_point}, missed {missed}");
    assert_eq!(missed, not_received, "Resumed{{missed}} is exact: {seen:?}");
    for seq in &acked {
        assert!(
            seen.seqs.contains(seq) || (*seq > had && *seq <= resume_point),
            "{seq} delivered to amy or counted: {seen:?}"
        );
    }

    // Ownership moved within the bound (a lease TTL plus one renewal interval), measured from
    // the kill to the first acknowledged send after it; generously, as the machine is shared.
    let moved_in = moved_in.expect("sends after the kill");
    let bound = ttl + ttl / 3;
    eprintln!("ownership moved {moved_in:?} after the kill (bound {bound:?})");
    assert!(moved_in < bound * 3, "moved in {moved_in:?}");
    for m in [&amy, &bob, &cal] {
        m.close().await;
    }
    publisher.close().await;
    drop((b, c));
}

// ---------------- NATS outages under load ----------------

/// The longest a send may take to be answered, acknowledged or refused: longer is a hang.
const ANSWER: Duration = Duration::from_secs(15);

/// Upper bounds of one paced publisher: sends, and time.
const MAX_SENDS: usize = 2000;
const MAX_LOAD: Duration = Duration::from_secs(90);

/// What a paced publisher got so far: the seq and body of each acknowledged send, and the body
/// and error of each refused one.
#[derive(Debug, Default)]
struct Load {
    acked: Vec<(u64, String)>,
    refused: Vec<(String, String)>,
}

/// A publisher on `relay`, sending `{tag}-{i}` to `lobby` every 20 ms until `stop` (within
/// [`MAX_SENDS`] and [`MAX_LOAD`]); every send must be answered within [`ANSWER`], and a
/// refusal must be `UNAVAILABLE`. Its progress is in the returned [`Load`].
async fn paced_publisher(
    relay: &Relay,
    tag: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Load>>, tokio::task::JoinHandle<()>) {
    let publisher = client(relay, tag).await;
    publisher
        .join("lobby", -1)
        .await
        .expect("the publisher joins");
    let load = Arc::new(Mutex::new(Load::default()));
    let progress = load.clone();
    let task = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for i in 0..MAX_SENDS {
            if stop.load(Ordering::SeqCst) || started.elapsed() > MAX_LOAD {
                break;
            }
            pace.tick().await;
            let text = format!("{tag}-{i}");
            let sent = publisher.send("lobby", "chat", Bytes::from(text.clone()), false);
            let answer = tokio::time::timeout(ANSWER, sent)
                .await
                .unwrap_or_else(|_| panic!("{text}: no answer within {ANSWER:?}"));
            if let Err(e) = &answer {
                assert_eq!(
                    e.code(),
                    Some(roomcast::protocol::ErrorCode::Unavailable),
                    "{text}: {e}"
                );
            }
            let mut load = progress.lock().expect("load");
            match answer {
                Ok((seq, _)) => load.acked.push((seq, text)),
                Err(e) => load.refused.push((text, e.to_string())),
            }
        }
        publisher.close().await;
    });
    (load, task)
}

/// Whether the refusal `why` says the send may still have been made (a forwarded send whose
/// owner did not answer in time).
fn in_doubt(why: &str) -> bool {
    why.contains("may still make it")
}

/// Counts of `load` now: (acknowledged, refused).
fn counts(load: &Mutex<Load>) -> (usize, usize) {
    let l = load.lock().expect("load");
    (l.acked.len(), l.refused.len())
}

/// Waits until each of `loads` has `acked` more acknowledged and `refused` more refused sends
/// than it had at `from`.
async fn progressed(what: &str, loads: &[Arc<Mutex<Load>>], acked: usize, refused: usize) {
    let from: Vec<(usize, usize)> = loads.iter().map(|l| counts(l)).collect();
    poll_for(what, LIMIT, || {
        let done = loads.iter().zip(&from).all(|(l, (a0, r0))| {
            let (a, r) = counts(l);
            a >= a0 + acked && r >= r0 + refused
        });
        async move { done.then_some(()) }
    })
    .await;
}

/// Whether `relay`'s `/healthz` answers `status` and its metrics say `roomcast_nats_connected`
/// is `connected`.
async fn nats_state_is(relay: &Relay, status: u16, connected: f64) -> bool {
    let (got, _) = relay.admin(reqwest::Method::GET, "/healthz", None).await;
    let metrics = relay.metrics().await;
    got == status && metric(&metrics, "roomcast_nats_connected", &[]) == Some(connected)
}

/// Waits until `relay`'s `/healthz` answers `status` and `roomcast_nats_connected` is
/// `connected`.
async fn nats_state_becomes(relay: &Relay, status: u16, connected: f64) {
    poll_for(
        "the relay's NATS state in /healthz and /metrics",
        LIMIT,
        || async { nats_state_is(relay, status, connected).await.then_some(()) },
    )
    .await;
}

/// Stops the publishers `tasks` of `loads`, waits for them, and prints what each got (with
/// the distinct refusals).
async fn stop_publishers(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    loads: &[Arc<Mutex<Load>>],
) {
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within("the publishers", t).await.expect("publisher task");
    }
    for l in loads {
        let l = l.lock().expect("load");
        let why: std::collections::BTreeSet<&str> =
            l.refused.iter().map(|(_, w)| w.as_str()).collect();
        eprintln!(
            "a publisher: {} acknowledged, {} refused: {why:?}",
            l.acked.len(),
            l.refused.len()
        );
    }
}

/// `member`'s messages of `lobby` as (seq, body), read until one of `probes` (sent on
/// `prober` until each member got one: live traffic is at most once, so a probe may be lost);
/// panics on an end of its connection.
async fn drain_members(members: &[&Client], prober: &Client) -> Vec<Vec<(u64, String)>> {
    let mut got: Vec<Vec<(u64, String)>> = vec![Vec::new(); members.len()];
    let mut done = vec![false; members.len()];
    for probe in 0..30 {
        if done.iter().all(|d| *d) {
            return got;
        }
        send_text_retrying(prober, &format!("probe-{probe}")).await;
        for (i, m) in members.iter().enumerate() {
            if done[i] {
                continue;
            }
            let reading = async {
                loop {
                    match m.next_event().await.expect("the event stream is open") {
                        ClientEvent::Message { message, .. } => {
                            let text = String::from_utf8_lossy(&message.body).into_owned();
                            let is_probe = text.starts_with("probe-");
                            got[i].push((message.seq, text));
                            if is_probe {
                                return;
                            }
                        }
                        ClientEvent::Closed { reason, .. } => {
                            panic!("{}: closed: {reason}", m.user())
                        }
                        _ => {}
                    }
                }
            };
            done[i] = tokio::time::timeout(Duration::from_secs(1), reading)
                .await
                .is_ok();
        }
    }
    panic!("no probe reached every member: {done:?}");
}

/// `relay`'s history of `lobby`, once it can be read: right after NATS servers die or return,
/// JetStream may still be moving its leaders, and reads are refused (503, retry later) until
/// then.
async fn settled_history(relay: &Relay) -> Vec<Value> {
    poll_for("the history readable", LIMIT, || async {
        let (status, _) = relay
            .admin(
                reqwest::Method::GET,
                "/v1/rooms/lobby/messages?limit=1",
                None,
            )
            .await;
        (status == 200).then_some(())
    })
    .await;
    relay.history("lobby").await
}

/// Asserts what a load across a NATS outage must leave: every acknowledged send of `loads` in
/// `history` exactly once under its seq, no seq twice, nothing refused stored, and each
/// member's messages in seq order, none twice, each one stored under its seq.
fn assert_nothing_acknowledged_lost(
    history: &[Value],
    loads: &[Arc<Mutex<Load>>],
    members: &[Vec<(u64, String)>],
) {
    let stored: Vec<(u64, String)> = history
        .iter()
        .map(|m| {
            let seq = m["seq"].as_u64().expect("seq");
            (seq, m["body"].as_str().expect("body").to_owned())
        })
        .collect();
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert!(strictly_increasing(&seqs), "no seq twice: {seqs:?}");
    let by_seq: BTreeMap<u64, &str> = stored.iter().map(|(s, b)| (*s, b.as_str())).collect();
    let mut bodies: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, b) in &stored {
        *bodies.entry(b.as_str()).or_default() += 1;
    }
    let mut all_acked = Vec::new();
    for load in loads {
        let load = load.lock().expect("load");
        for (seq, text) in &load.acked {
            assert_eq!(by_seq.get(seq), Some(&text.as_str()), "acked {seq} {text}");
            assert_eq!(bodies.get(text.as_str()), Some(&1), "{text} stored once");
            all_acked.push(*seq);
        }
        for (text, why) in &load.refused {
            // A forwarded send whose owner did not answer is in doubt, and the refusal says
            // so: stored at most once. Any other refusal was sent to no one.
            let most = usize::from(in_doubt(why));
            let stored = bodies.get(text.as_str()).copied().unwrap_or(0);
            assert!(
                stored <= most,
                "refused {text} ({why}) stored {stored} times"
            );
        }
    }
    all_acked.sort_unstable();
    assert!(strictly_increasing(&all_acked), "a seq acknowledged twice");
    for got in members {
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert!(strictly_increasing(&seqs), "in order, none twice: {seqs:?}");
        for (seq, text) in got {
            assert_eq!(
                by_seq.get(seq),
                Some(&text.as_str()),
                "delivered {seq} {text}"
            );
        }
    }
}

/// Three relays `relay-a`, `relay-b`, `relay-c`, relay `i` on the NATS servers `urls(i)`,
/// sharing room `lobby`: Amy on A sends first (A owns the room), Bob on B and Cal on C join.
async fn three_sharing_lobby(
    dir: &Path,
    urls: impl Fn(usize) -> Vec<String>,
    extra: &str,
) -> ([Relay; 3], [Client; 3]) {
    let relays = ["relay-a", "relay-b", "relay-c"];
    let relays: Vec<Relay> = relays
        .iter()
        .enumerate()
        .map(|(i, node)| Relay::start_on(dir, node, &urls(i), extra))
        .collect();
    let relays: [Relay; 3] = relays.try_into().unwrap_or_else(|_| unreachable!());
    create_room(&relays[0], "lobby").await;
    for r in &relays[1..] {
        room_known(r, "lobby").await;
    }
    let amy = client(&relays[0], "amy").await;
    amy.join("lobby", -1).await.expect("amy joins on A");
    amy.send("lobby", "chat", Bytes::from_static(b"first"), false)
        .await
        .expect("sent on A");
    let bob = client(&relays[1], "bob").await;
    let cal = client(&relays[2], "cal").await;
    for m in [&bob, &cal] {
        m.join("lobby", -1).await.expect("joins");
    }
    (relays, [amy, bob, cal])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nats_server_of_three_sigkilled_under_load_its_relays_move_and_nothing_acked_is_lost() {
    let Some(bin) = nats_support::binary("one_nats_server_of_three_sigkilled_under_load") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = NatsCluster::start(&bin, &dir.path().join("nats"));
    // Each relay is given one server (it learns the others from the cluster): relay-a, the
    // room's owner, is on n0, the one killed.
    let (relays, members) =
        three_sharing_lobby(dir.path(), |i| vec![nats.url(i)], "replicas = 3\n").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (on_a, task_a) = paced_publisher(&relays[0], "pa", stop.clone()).await;
    let (on_b, task_b) = paced_publisher(&relays[1], "pb", stop.clone()).await;
    let loads = [on_a, on_b];
    progressed("sends before the kill", &loads, 30, 0).await;

    nats.kill(0);
    // Both relays keep serving, relay-a through another server of the cluster.
    progressed("sends after the kill", &loads, 50, 0).await;
    stop_publishers(&stop, vec![task_a, task_b], &loads).await;
    // Every relay is on NATS, relay-a too (on n1 or n2: it was given only n0).
    nats.wait_formed();
    for r in &relays {
        nats_state_becomes(r, 200, 1.0).await;
    }
    let [amy, bob, cal] = &members;
    let got = drain_members(&[amy, bob, cal], cal).await;
    let history = settled_history(&relays[2]).await;
    assert_nothing_acknowledged_lost(&history, &loads, &got);
    assert_three_replicas(&nats);
    drop(members);
    drop(relays);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_under_load_across_relays_refuses_clearly_and_loses_nothing() {
    let Some(bin) = nats_support::binary("nats_stopped_and_restarted_under_load") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let url = nats.url();
    let (relays, members) = three_sharing_lobby(
        dir.path(),
        |_| vec![url.clone()],
        "request_timeout_ms = 1000\n",
    )
    .await;
    // Paced publishers on A (the owner) and B (forwarded to A).
    let stop = Arc::new(AtomicBool::new(false));
    let (on_a, task_a) = paced_publisher(&relays[0], "pa", stop.clone()).await;
    let (on_b, task_b) = paced_publisher(&relays[1], "pb", stop.clone()).await;
    let loads = [on_a, on_b];
    progressed("sends before the outage", &loads, 30, 0).await;

    nats.kill();
    // Each publisher is refused, each relay says so in /healthz and its metrics.
    progressed("refusals during the outage", &loads, 0, 5).await;
    for r in &relays {
        nats_state_becomes(r, 503, 0.0).await;
    }
    let (_, health) = relays[2]
        .admin(reqwest::Method::GET, "/healthz", None)
        .await;
    assert!(health.to_string().contains("NATS"), "{health}");
    progressed("more refusals during the outage", &loads, 0, 3).await;

    nats.restart();
    for r in &relays {
        nats_state_becomes(r, 200, 1.0).await;
    }
    // Each relay takes sends again by itself.
    progressed("sends after the restart", &loads, 30, 0).await;
    stop_publishers(&stop, vec![task_a, task_b], &loads).await;
    for l in &loads {
        for (text, why) in &l.lock().expect("load").refused {
            assert!(why.contains("NATS") || in_doubt(why), "{text}: {why}");
        }
    }
    let [amy, bob, cal] = &members;
    send_text_retrying(cal, "on C").await;
    let got = drain_members(&[amy, bob, cal], cal).await;
    let history = settled_history(&relays[2]).await;
    assert_nothing_acknowledged_lost(&history, &loads, &got);
    drop(members);
    drop(relays);
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refused_unavailable_keeps_the_membership_until_a_relay_can_resume_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((mut nats, mut a, b, early)) =
        standby_pair("a_resume_refused_unavailable", dir.path()).await
    else {
        return;
    };
    let sub = failover(&a, vec![a.quic, b.quic], "sub", 8192).await;
    let info = sub.join("lobby", -1).await.expect("joins on a");
    assert_eq!(info.last_seq, early);

    // With NATS gone, b cannot read the room's history, so it refuses the resume UNAVAILABLE.
    nats.kill();
    a.kill();
    poll("b refuses a resume", || async {
        let text = b.metrics().await;
        let refused = metric(&text, "roomcast_resumes_total", &[("outcome", "refused")]);
        refused.is_some_and(|n| n >= 1.0).then_some(())
    })
    .await;
    nats.restart();

    // The membership was kept: once b can serve it, the subscriber resumes there and gets what
    // is sent after, with nothing missed (`Seen::take` fails on a `ResumeFailed`).
    let acked = publish(&b, 3).await;
    let mut seen = Seen::default();
    read_until(&sub, &mut seen, *acked.last().expect("sent")).await;
    assert!(
        seen.reconnected.iter().all(|(_, s)| *s == b.quic),
        "{seen:?}"
    );
    assert!(
        seen.reconnected.len() >= 2,
        "refused once, then resumed: {seen:?}"
    );
    let (at, missed, _) = *seen.resumed.last().expect("resumed");
    assert_eq!((at, missed), (0, 0), "{seen:?}");
    assert_eq!(seen.seqs, acked, "every message once, in order");
    sub.close().await;
    drop(b);
    drop(nats);
}
