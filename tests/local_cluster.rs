//! `deploy/local-cluster.sh`, the README's one command for three relays and a NATS on one
//! machine, run as a user would: the real script, the real binary, a real nats-server. Its
//! relays share rooms, one CA and one token secret (a client that trusts relay 1 joins on relay
//! 2 and gets a message sent through relay 3), and when NATS dies it stops every relay it
//! started and ends with an error.

mod nats_support;

use bytes::Bytes;
use roomcast::client::{Client, ClientConfig, ClientEvent};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Upper bound of each wait: only turns a hang into a failure.
const LIMIT: Duration = Duration::from_secs(60);

/// A port free on loopback for both UDP and TCP (QUIC and the web listener share it), with
/// `n - 1` more free after it.
fn free_run(n: u16) -> u16 {
    'search: for _ in 0..200 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
        let base = udp.local_addr().expect("addr").port();
        if base > 65_000 {
            continue;
        }
        drop(udp);
        for p in base..base + n {
            let free = UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && TcpListener::bind(("127.0.0.1", p)).is_ok();
            if !free {
                continue 'search;
            }
        }
        return base;
    }
    panic!("no run of {n} free ports on loopback");
}

fn tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("tcp");
    l.local_addr().expect("addr").port()
}

/// The value of `key` in the script's `cluster.env`.
fn env_value(dir: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join("cluster.env")).expect("cluster.env");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in cluster.env"))
        .to_owned()
}

/// SIGKILLs a process group when dropped (a no-op once it has ended).
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0)])
            .stderr(Stdio::null())
            .status();
    }
}

fn pid_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_one_command_cluster_shares_rooms_trust_and_tokens_and_stops_whole() {
    let Some(nats) = nats_support::binary("the_one_command_cluster") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("cluster");
    // Each relay's QUIC port (UDP) and web port (TCP) are base + i; admin ports likewise.
    let quic_base = free_run(4);
    let admin_base = free_run(4);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        // Its own process group, so a failing test leaves nothing of it running.
        .process_group(0)
        .env("ROOMCAST", env!("CARGO_BIN_EXE_roomcast"))
        .env("NATS_SERVER", &nats)
        .env("DIR", &work)
        .env("QUIC_BASE", quic_base.to_string())
        .env("ADMIN_BASE", admin_base.to_string())
        .env("NATS_PORT", tcp_port().to_string())
        .env("NATS_MONITOR", tcp_port().to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the script starts");
    let _group = Group(child.id());
    // The script says so once everything is up.
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let up = rx
        .recv_timeout(LIMIT)
        .expect("the script reports the cluster up");
    assert!(up.contains("three relays on one NATS are up"), "{up}");

    let quic = |i: u16| SocketAddr::from(([127, 0, 0, 1], quic_base + i));
    let admin = format!("http://127.0.0.1:{}", admin_base + 1);
    let key = env_value(&work, "ROOMCAST_ADMIN_KEY");
    let secret = env_value(&work, "ROOMCAST_TOKEN_SECRET");
    let created = reqwest::Client::new()
        .post(format!("{admin}/v1/rooms"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"id": "lobby"}))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(created.status(), 201);

    // One CA (relay 1's) and one token secret for all three relays.
    let ca = std::fs::read(work.join("relay-1/ca.pem")).expect("relay 1's CA");
    let config = |user: &str, server: SocketAddr| {
        let token = roomcast::auth::TokenAuth::new(secret.as_bytes(), 0, false)
            .mint(user, roomcast::auth::unix_secs() + 600)
            .expect("token");
        ClientConfig::new(server, ca.clone(), token)
    };
    let alice = tokio::time::timeout(LIMIT, Client::connect(config("alice", quic(2))))
        .await
        .expect("bounded")
        .expect("alice connects to relay 2");
    alice.join("lobby", -1).await.expect("joins on relay 2");
    let bob = tokio::time::timeout(LIMIT, Client::connect(config("bob", quic(3))))
        .await
        .expect("bounded")
        .expect("bob connects to relay 3");
    bob.join("lobby", -1).await.expect("joins on relay 3");
    let (seq, _) = bob
        .send("lobby", "chat", Bytes::from_static(b"hi"), false)
        .await
        .expect("sent through relay 3");
    let got = tokio::time::timeout(LIMIT, async {
        loop {
            match alice.next_event().await.expect("events") {
                ClientEvent::Message { message, .. } => return message,
                ClientEvent::Closed { reason, .. } => panic!("closed: {reason}"),
                _ => {}
            }
        }
    })
    .await
    .expect("alice gets bob's message");
    assert_eq!((got.seq, got.body.as_ref()), (seq, &b"hi"[..]));
    alice.close().await;
    bob.close().await;

    // NATS gone (SIGKILL): the script sees it, stops every relay it started, and ends with an
    // error; a relay's stop does not wait for NATS.
    let pids: Vec<u64> = (1..=3)
        .map(|i| {
            let f = std::fs::read_to_string(work.join(format!("relay-{i}/server.json")))
                .expect("server.json");
            let v: serde_json::Value = serde_json::from_str(&f).expect("json");
            v["pid"].as_u64().expect("pid")
        })
        .collect();
    let nats_pid = std::fs::read_to_string(work.join("nats.pid")).expect("nats.pid");
    let killed = Command::new("kill")
        .args(["-KILL", nats_pid.trim()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(LIMIT)
        .expect("the script ends")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(1),
        "the script ends with an error: {status:?}"
    );
    for pid in pids {
        assert!(!pid_alive(pid), "relay pid {pid} outlived the script");
    }
}
