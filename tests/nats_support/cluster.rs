//! Three `nats-server -js` processes in one NATS cluster on loopback: each picks its client,
//! route and monitoring ports itself (`-1`, read back from its log: no probe-then-bind race) and
//! keeps them across a restart, with its own JetStream store folder. The cluster is ready when
//! every live server says so through its monitoring endpoint: `/healthz` answers 200 (JetStream
//! current), `/routez` shows routes to each other live server, and `/jsz` names one meta leader
//! of a three-server cluster. Every server is killed when the cluster is dropped.
//!
//! A JetStream cluster needs configured routes. The first server's route port is known only once
//! it runs, so it starts with a route to a closed port (refused at once, retried in the
//! background) and the others route to it; once all three run, a restarted server is given the
//! route ports of all three, so it rejoins whichever of them it reaches first.

use super::{Started, launch};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// How long the cluster may take to form (or a restarted server to catch up): only turns a
/// hang into a failure.
const FORM: Duration = Duration::from_secs(90);

/// The NATS cluster's name.
const CLUSTER: &str = "roomcast-test";

/// One server of the cluster.
struct Member {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    client: u16,
    route: u16,
    monitor: u16,
}

/// Three JetStream servers routed into one cluster.
pub struct NatsCluster {
    bin: PathBuf,
    members: Vec<Member>,
}

/// The ports a starting server reports in its log.
struct Ports {
    client: u16,
    route: u16,
    monitor: u16,
}

/// Starts server `name` with its store under `dir`, on `ports` (each `None`: one it picks), with
/// routes to `routes`; returns once its log has named all three ports and said it is ready.
fn spawn(bin: &Path, dir: &Path, name: &str, ports: Option<&Ports>, routes: &[u16]) -> Member {
    let pick = |p: Option<u16>| p.map_or("-1".to_owned(), |p| p.to_string());
    let routes: Vec<String> = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let args = [
        "-js".to_owned(),
        "-a".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        pick(ports.map(|p| p.client)),
        "-m".to_owned(),
        pick(ports.map(|p| p.monitor)),
        "--server_name".to_owned(),
        name.to_owned(),
        "--cluster_name".to_owned(),
        CLUSTER.to_owned(),
        "--cluster".to_owned(),
        format!("nats://127.0.0.1:{}", pick(ports.map(|p| p.route))),
        "--routes".to_owned(),
        routes.join(","),
        "-sd".to_owned(),
        dir.join("js").display().to_string(),
    ];
    std::fs::create_dir_all(dir).expect("the server's folder");
    // Appended to, so a restarted server's log follows its first run's.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nats.log"))
        .expect("log file");
    let (child, rx) = launch(bin, &args, log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut client, mut route, mut monitor, mut ready) = (None, None, None, false);
    while client.is_none() || route.is_none() || monitor.is_none() || !ready {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Started::Port(p)) => client = Some(p),
            Ok(Started::Route(p)) => route = Some(p),
            Ok(Started::Monitor(p)) => monitor = Some(p),
            Ok(Started::Ready) => ready = true,
            Err(_) => panic!(
                "nats-server {name} did not report its ports and readiness within 30 s (log: {})",
                dir.join("nats.log").display()
            ),
        }
    }
    Member {
        name: name.to_owned(),
        dir: dir.to_owned(),
        child: Some(child),
        client: client.expect("client port"),
        route: route.expect("route port"),
        monitor: monitor.expect("monitoring port"),
    }
}

/// `GET path` on the monitoring port `port`: the status and the JSON body (null when it is not
/// JSON); `None` when the server does not answer.
fn monitor_get(port: u16, path: &str) -> Option<(u16, Value)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).unwrap_or(Value::Null)))
}

/// Whether JetStream at `url` places (and deletes again) a three-replica stream: the meta
/// leader sees three current peers with their stats. On a thread of its own, with its own
/// runtime, as the harness runs inside the tests' runtime.
fn can_place_three_replicas(url: &str) -> Result<(), String> {
    let url = url.to_owned();
    let probe = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
            let js = async_nats::jetstream::new(client);
            let config = async_nats::jetstream::stream::Config {
                name: "harness_ready".into(),
                subjects: vec!["harness.ready".into()],
                num_replicas: 3,
                ..Default::default()
            };
            let placed = js.create_stream(config).await.map(|_| ());
            let _ = js.delete_stream("harness_ready").await;
            placed.map_err(|e| format!("a three-replica probe stream: {e}"))
        })
    });
    probe
        .join()
        .map_err(|_| "the probe thread panicked".to_owned())?
}

impl Member {
    fn live(&self) -> bool {
        self.child.is_some()
    }

    /// The meta leader this server names once it is a current member of a cluster whose other
    /// live servers are `peers`; else why it is not yet.
    fn not_ready(&self, peers: &BTreeSet<String>) -> Result<String, String> {
        let status = monitor_get(self.monitor, "/healthz").map(|(s, v)| (s, v.to_string()));
        match status {
            Some((200, _)) => {}
            other => return Err(format!("{}: /healthz {other:?}", self.name)),
        }
        let (_, routez) = monitor_get(self.monitor, "/routez")
            .ok_or_else(|| format!("{}: no /routez", self.name))?;
        let routed: BTreeSet<String> = routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["remote_name"].as_str().map(str::to_owned))
            .collect();
        if !peers.is_subset(&routed) {
            return Err(format!(
                "{}: routes to {routed:?}, not {peers:?}",
                self.name
            ));
        }
        let (_, jsz) =
            monitor_get(self.monitor, "/jsz").ok_or_else(|| format!("{}: no /jsz", self.name))?;
        let meta = &jsz["meta_cluster"];
        let leader = meta["leader"].as_str().unwrap_or_default();
        if leader.is_empty() || meta["cluster_size"].as_u64() != Some(3) {
            return Err(format!("{}: meta group {meta}", self.name));
        }
        if leader == self.name {
            // The leader places streams: only on peers it sees current and online (else
            // "no suitable peers for placement").
            let placeable: BTreeSet<String> = meta["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["current"] == true && r["offline"] != true)
                .filter_map(|r| r["name"].as_str().map(str::to_owned))
                .collect();
            if !peers.is_subset(&placeable) {
                return Err(format!("{}: leads, but sees {meta}", self.name));
            }
        }
        // Every stream (and KV bucket) has a leader, and the streams this server leads have
        // their replicas on live servers current (only a stream's leader knows): a restarted
        // server has caught up.
        let (_, jsz) = monitor_get(self.monitor, "/jsz?streams=true")
            .ok_or_else(|| format!("{}: no /jsz?streams", self.name))?;
        let streams = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten());
        for st in streams {
            let c = &st["cluster"];
            let led_by = c["leader"].as_str().unwrap_or_default();
            let lagging = led_by == self.name
                && c["replicas"].as_array().into_iter().flatten().any(|r| {
                    let live = r["name"].as_str().is_some_and(|n| peers.contains(n));
                    live && (r["current"] != true || r["offline"] == true)
                });
            if led_by.is_empty() || lagging {
                return Err(format!("{}: stream {} at {c}", self.name, st["name"]));
            }
        }
        Ok(leader.to_owned())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl NatsCluster {
    /// Starts three servers under `dir` (`n0`, `n1`, `n2`) and waits until they form one
    /// JetStream cluster.
    pub fn start(bin: &Path, dir: &Path) -> NatsCluster {
        let mut members: Vec<Member> = Vec::new();
        for i in 0..3 {
            let name = format!("n{i}");
            // The first routes to a closed port (see the module doc), the others to the first.
            let routes = members.first().map_or(vec![1], |m| vec![m.route]);
            members.push(spawn(bin, &dir.join(&name), &name, None, &routes));
        }
        let cluster = NatsCluster {
            bin: bin.to_owned(),
            members,
        };
        cluster.wait_formed();
        cluster
    }

    /// Waits until every live server is healthy, routed to every other live one, and all
    /// name the same JetStream meta leader.
    pub fn wait_formed(&self) {
        let deadline = Instant::now() + FORM;
        loop {
            let live: BTreeSet<String> = self
                .members
                .iter()
                .filter(|m| m.live())
                .map(|m| m.name.clone())
                .collect();
            let leaders: Result<BTreeSet<String>, String> = self
                .members
                .iter()
                .filter(|m| m.live())
                .map(|m| {
                    let mut peers = live.clone();
                    peers.remove(&m.name);
                    m.not_ready(&peers)
                })
                .collect();
            // One leader, a live one (whose own check above saw every other live peer).
            let why = match leaders {
                Ok(l) if l.len() == 1 && l.iter().all(|n| live.contains(n)) => {
                    // With all three up, the proof: a three-replica stream can be placed.
                    if live.len() < 3 {
                        return;
                    }
                    match can_place_three_replicas(&self.url(0)) {
                        Ok(()) => return,
                        Err(e) => e,
                    }
                }
                Ok(l) => format!("meta leaders {l:?}"),
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "the NATS cluster did not form within {FORM:?}: {why} (logs under {})",
                self.members[0].dir.display()
            );
            // A poll interval: the servers report no event a test can wait on.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every server's client URL (`nats://127.0.0.1:PORT`), `n0` first.
    pub fn urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.url(i)).collect()
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.members[i].client)
    }

    /// Server `i`'s monitoring port.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.members[i].monitor
    }

    /// `GET path` on server `i`'s monitoring endpoint (`None`: no answer).
    pub fn monitor(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        monitor_get(self.members[i].monitor, path)
    }

    /// SIGKILLs server `i` (its store stays).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts server `i` again on its ports and store, routed to all three, and waits until the
    /// cluster has formed again with it (its streams caught up: its `/healthz` is 200).
    pub fn restart(&mut self, i: usize) {
        self.members[i].kill();
        let routes: Vec<u16> = self.members.iter().map(|m| m.route).collect();
        let m = &self.members[i];
        let ports = Ports {
            client: m.client,
            route: m.route,
            monitor: m.monitor,
        };
        let again = spawn(&self.bin, &m.dir, &m.name, Some(&ports), &routes);
        self.members[i] = again;
        self.wait_formed();
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }
}
