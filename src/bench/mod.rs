//! The load harness behind `roomcast bench`, with a raw-QUIC baseline server.
//!
//! ```text
//! roomcast bench --scenario fanout --members 1000 --rate 0 --duration 10 [--json r.json]
//! roomcast bench --scenario fanout --target raw-quic ...      # the same load against the baseline
//! ```
//!
//! By default the harness starts the server under test as a child process of the same executable
//! (`roomcast serve --config <tmp>/bench.toml`, or `roomcast bench --serve-raw` for the baseline) on
//! `127.0.0.1:0` with a temporary data folder, so the server's CPU and memory can be read from
//! `/proc/<pid>` apart from the clients'. Then:
//! 1. **ramp**: every member connects (its own QUIC connection) and joins its room, `--ramp` at a
//!    time; the server's RSS is read before and after (idle memory per connection);
//! 2. **load**: senders (the first `--senders` members of each room) send for `--duration` seconds,
//!    paced (`--rate`) or closed-loop (`--rate 0`: `--inflight` sends outstanding per sender, all on
//!    one pipelined connection); every member reads its events and records latency from the send
//!    time stamped into each payload;
//! 3. **drain**: the harness waits (bounded) until every acknowledged message reached every member
//!    of its room, or deliveries stop arriving; the measured window runs from the start of the load
//!    to the last delivery, and the server's CPU time (utime + stime) is read at both ends;
//! 4. the report: a table on stdout, and `--json FILE`.
//!
//! Through the load the server's RSS is read every `--rss-every` seconds, and with
//! `--scrape-every` its `/metrics` is scraped as Prometheus would; the report gives the memory's
//! growth from `--soak-from` to the end and per hour ([`soak`]).
//!
//! The `churn` scenario replaces 1–3 with a storm of connect → join → leave → close cycles.
//!
//! With `--relays N` the harness starts a `nats-server -js` and N relays in cluster mode sharing
//! the room instead of one relay on the embedded store, deals the members over them (the sender
//! on relay 0), measures the CPU of every server process and the bytes through NATS
//! ([`cluster`]).
//!
//! Module map: [`launch`] starts and stops the server under test, [`cluster`] the nats-server
//! and relays of a cluster run, [`load`] holds the member, sender
//! and churn loops, [`raw`] the baseline server, [`stats`] the histogram and `/proc` readers,
//! [`admin`] a tiny HTTP client for the admin API, [`soak`] the memory readings and scrapes during
//! the load, [`report`] the output.

pub mod admin;
pub mod cluster;
pub mod flood;
pub mod launch;
pub mod load;
pub mod raw;
pub mod report;
pub mod soak;
pub mod stats;

use launch::Target;
use load::Member;
use load::{Live, Reach, SendPlan, Spec};
use report::{Report, ServerUsage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// Which load to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One room: `--members` members, `--senders` of them sending.
    Fanout,
    /// `--rooms` rooms of `--members` members each, `--senders` per room.
    Rooms,
    /// One room with a share of slow readers and a mix of message classes.
    Overload,
    /// Connect → join → leave → close cycles at `--rate` a second.
    Churn,
    /// A ClientHello flood (`--hellos` from `--sources` ports at `--rate` a second) while a real
    /// client connects and joins every 250 ms; reports the server's RSS and the connect times.
    Flood,
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    /// The roomcast relay.
    Roomcast,
    /// The raw-QUIC fan-out baseline (same protocol subset, no room logic, no store).
    RawQuic,
}

/// How the harness's clients reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTransport {
    /// Native QUIC (ALPN roomcast/1).
    Quic,
    /// WebSockets over TLS on the relay's public web listener.
    Websocket,
}

impl BenchTransport {
    /// The report's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BenchTransport::Quic => "quic",
            BenchTransport::Websocket => "websocket",
        }
    }
}

/// `store.durability` of a started relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Send replies wait for the fsync.
    Sync,
    /// fsync within `store.flush_ms`; replies do not wait.
    Batched,
}

impl From<DurabilityArg> for crate::store::Durability {
    fn from(d: DurabilityArg) -> Self {
        match d {
            DurabilityArg::Sync => crate::store::Durability::Sync,
            DurabilityArg::Batched => crate::store::Durability::Batched,
        }
    }
}

/// `roomcast bench`: load scenarios against a relay (or the raw-QUIC baseline) on this machine.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Load to run: fanout (one room), rooms (many rooms), overload (slow members and a class mix),
    /// churn (connect/join/leave/close storm).
    #[arg(long, value_enum, default_value_t = Scenario::Fanout)]
    pub scenario: Scenario,
    /// Members per room (fanout, rooms, overload); the senders are among them.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Rooms in the rooms scenario (fanout and overload use one).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Senders per room.
    #[arg(long, default_value_t = 1)]
    pub senders: usize,
    /// Messages per second over all senders; 0 saturates (each sender keeps --inflight sends
    /// outstanding). For churn: cycles per second (0 means 1000).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Sends outstanding per sender at most (paced sends beyond it are skipped and counted); for
    /// churn, cycles in flight at most [default: 64].
    #[arg(long)]
    pub inflight: Option<usize>,
    /// Message body in bytes (at least 9: the send time and a class tag, then padding).
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Seconds of load after the ramp (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Connections opened in parallel during the ramp.
    #[arg(long, default_value_t = 100)]
    pub ramp: usize,
    /// Share of members that read slowly (overload).
    #[arg(long, default_value_t = 0.1)]
    pub slow_share: f64,
    /// Events per second a slow member reads (overload).
    #[arg(long, default_value_t = 200.0)]
    pub slow_rate: f64,
    /// Share of messages sent low-priority [default: 0.3 for overload, else 0].
    #[arg(long)]
    pub low_share: Option<f64>,
    /// Share of messages sent with the type `bench.p`, which the harness puts on the message-type
    /// whitelist (protected class) [default: 0.1 for overload, else 0].
    #[arg(long)]
    pub protected_share: Option<f64>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Server to measure: the roomcast relay, or the raw-QUIC fan-out baseline.
    #[arg(long, value_enum, default_value_t = TargetKind::Roomcast)]
    pub target: TargetKind,
    /// How the clients connect: native QUIC, or WebSockets over TLS on the relay's public
    /// listener (roomcast only).
    #[arg(long, value_enum, default_value_t = BenchTransport::Quic)]
    pub transport: BenchTransport,
    /// Bench a server that is already running at this QUIC address (loopback only) instead of
    /// starting one; give --data, or --ca with --token-secret (and --admin, --admin-key).
    #[arg(long, value_name = "ADDR")]
    pub server: Option<SocketAddr>,
    /// Process id of the running server, to measure its CPU and memory.
    #[arg(long, value_name = "PID", requires = "server")]
    pub server_pid: Option<u32>,
    /// Data folder of the running server (ca.pem, token.secret, admin.key, server.json).
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// PEM file of the CA the running server's certificate chains to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// File holding the running server's HS256 token secret.
    #[arg(long, value_name = "FILE")]
    pub token_secret: Option<PathBuf>,
    /// Admin API address of the running server (loopback only).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
    /// File holding the running server's admin key.
    #[arg(long, value_name = "FILE")]
    pub admin_key: Option<PathBuf>,
    /// Least ms between two writes to one connection, for both targets (0: off):
    /// a write soon after the previous one waits for the window's end, so
    /// paced traffic shares packets. Sets roomcast's
    /// `transport.delivery_window_us` [default: roomcast's default, 50].
    #[arg(long)]
    pub window_ms: Option<u64>,
    /// Turn UDP GSO off for both targets (`transport.segmentation_offload = false`).
    #[arg(long)]
    pub no_gso: bool,
    /// UDP endpoints the harness's clients share, taken in turn (0: one per
    /// client, as separate client processes would have).
    #[arg(long, default_value_t = 0)]
    pub client_endpoints: usize,
    /// Ask clients to acknowledge once per this many packets (QUIC ACK
    /// frequency), for both targets; sets `transport.ack_every_packets`
    /// (default: roomcast's default).
    #[arg(long)]
    pub ack_every: Option<u32>,
    /// store.durability of the relay the harness starts.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Sync)]
    pub durability: DurabilityArg,
    /// Keep roomcast's default send rate limit and room ingress budget (by default they are raised
    /// so that they do not cap throughput; the report lists what was raised).
    #[arg(long)]
    pub stock_limits: bool,
    // ---- flood scenario ----
    /// ClientHellos the flood scenario sends (at most 1000000).
    #[arg(long, default_value_t = 10_000)]
    pub hellos: usize,
    /// UDP source ports the flood scenario sends from (1..=1024).
    #[arg(long, default_value_t = 100)]
    pub sources: usize,
    // ---- end flood scenario ----
    /// Seconds between two readings of the server's RSS during the load (the soak figures).
    #[arg(long, default_value_t = 5.0)]
    pub rss_every: f64,
    /// Seconds into the load from which the RSS growth is measured (at most half the load).
    #[arg(long, default_value_t = 120.0)]
    pub soak_from: f64,
    /// Scrape the relay's /metrics every this many seconds during the load, as Prometheus
    /// would (off by default).
    #[arg(long, value_name = "SECS")]
    pub scrape_every: Option<f64>,
    // ---- cluster runs ----
    /// Start a nats-server and this many relays in cluster mode sharing the room(s) (1..=8), the
    /// sender on relay 0 and the other members dealt over the relays; without it, one relay on
    /// the embedded store (fanout, rooms and overload over QUIC).
    #[arg(long, value_name = "N")]
    pub relays: Option<usize>,
    /// The nats-server binary of a --relays run [default: nats-server on the PATH].
    #[arg(long, value_name = "PATH", requires = "relays")]
    pub nats_server: Option<PathBuf>,
    // ---- end cluster runs ----
    /// Keep the temporary folder (configuration, data, server log) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Run the raw-QUIC baseline server (started by the harness itself).
    #[arg(long, hide = true)]
    pub serve_raw: bool,
    /// Address the raw baseline binds.
    #[arg(long, hide = true)]
    pub addr: Option<SocketAddr>,
}

/// Why a bench run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag is out of range or flags conflict.
    #[error("invalid arguments: {0}")]
    Args(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server under test could not be started or reached.
    #[error("setup: {0}")]
    Setup(String),
    /// An admin API call failed.
    #[error("admin API: {0}")]
    Admin(String),
    /// Certificates could not be made.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The run was interrupted (Ctrl-C); every server it started was stopped.
    #[error("interrupted")]
    Interrupted,
    /// No client could connect, so there is nothing to measure.
    #[error("no member could connect and join: connects {connects:?}, joins {joins:?}")]
    NoMembers {
        /// Failed connects by error.
        connects: BTreeMap<String, u64>,
        /// Failed joins by error.
        joins: BTreeMap<String, u64>,
    },
}

/// Most connections one run opens (bounded by file descriptors: one UDP socket each).
const MAX_CONNECTIONS: usize = 50_000;
/// Longest drain after the senders stop.
const DRAIN_MAX: Duration = Duration::from_secs(5);
/// The drain ends early when no delivery arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(500);
/// Pause between the ramp and the idle memory reading.
const SETTLE: Duration = Duration::from_millis(1000);

/// The transport settings the bench varies, the same for roomcast and the raw baseline.
pub(crate) fn transport_of(args: &BenchArgs) -> crate::config::Transport {
    let mut t = crate::config::Transport {
        segmentation_offload: !args.no_gso,
        ..Default::default()
    };
    if let Some(ms) = args.window_ms {
        t.delivery_window_us = ms.saturating_mul(1000);
    }
    if let Some(n) = args.ack_every {
        t.ack_every_packets = n;
    }
    t
}

/// Runs `roomcast bench`: builds its own runtime, prints the report, writes `--json`.
pub fn run(args: BenchArgs) -> Result<(), BenchError> {
    if args.serve_raw {
        let addr = args
            .addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let dir = args
            .data
            .clone()
            .ok_or_else(|| BenchError::Args("--serve-raw needs --data DIR".into()))?;
        return raw::serve(addr, &dir, transport_of(&args));
    }
    validate(&args)?;
    let rt = runtime()?;
    let (target, result) = rt.block_on(async {
        // Ctrl-C ends the run like an error: what was started is dropped (a half-started
        // cluster stops its children) and the target is stopped below.
        let interrupted = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(interrupted);
        let mut target = tokio::select! {
            t = Target::open(&args) => match t {
                Ok(t) => t,
                Err(e) => return (None, Err(e)),
            },
            () = &mut interrupted => return (None, Err(BenchError::Interrupted)),
        };
        let result = tokio::select! {
            r = async {
                match args.scenario {
                    Scenario::Churn => churn(&args, &mut target).await.map(Output::load),
                    Scenario::Flood => flood::scenario(&args, &target).await.map(Output::Flood),
                    _ => rooms(&args, &mut target).await.map(Output::load),
                }
            } => r,
            () = &mut interrupted => Err(BenchError::Interrupted),
        };
        (Some(target), result)
    });
    // Stopping waits (bounded) for the child; outside the runtime, as it blocks.
    if let Some(mut t) = target {
        t.stop();
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    let report = result?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text + "\n").map_err(|source| BenchError::Io {
            what: format!("writing {}", path.display()),
            source,
        })?;
    }
    Ok(())
}

/// What a run produced: printed as a table, written as JSON.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Output {
    /// The load scenarios' report.
    Load(Box<Report>),
    /// The flood scenario's report.
    Flood(flood::FloodReport),
}

impl Output {
    fn load(r: Report) -> Self {
        Output::Load(Box::new(r))
    }

    fn table(&self) -> String {
        match self {
            Output::Load(r) => r.table(),
            Output::Flood(r) => r.table(),
        }
    }
}

/// A multi-threaded runtime with one worker per core.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| BenchError::Io {
            what: "starting the async runtime".into(),
            source,
        })
}

/// Only loopback addresses are load targets.
pub(crate) fn require_loopback(flag: &str, addr: SocketAddr) -> Result<(), BenchError> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(BenchError::Args(format!(
            "{flag} {addr}: the harness only loads servers on this machine (127.0.0.0/8 or ::1)"
        )))
    }
}

fn validate(a: &BenchArgs) -> Result<(), BenchError> {
    let bad = |m: String| Err(BenchError::Args(m));
    if let Some(s) = a.server {
        require_loopback("--server", s)?;
    }
    if let Some(n) = a.relays {
        if !(1..=cluster::MAX_RELAYS).contains(&n) {
            return bad(format!(
                "--relays must be 1..={}, got {n}",
                cluster::MAX_RELAYS
            ));
        }
        if a.server.is_some()
            || a.target != TargetKind::Roomcast
            || a.transport != BenchTransport::Quic
            || matches!(a.scenario, Scenario::Churn | Scenario::Flood)
        {
            return bad(
                "--relays starts its own relays and measures fanout, rooms or overload over QUIC \
                 (not with --server, --target raw-quic, --transport websocket, churn or flood)"
                    .into(),
            );
        }
    }
    if a.scenario == Scenario::Flood && a.target != TargetKind::Roomcast {
        return bad("the flood scenario measures the roomcast relay only".into());
    }
    if a.transport == BenchTransport::Websocket && a.target == TargetKind::RawQuic {
        return bad(
            "--transport websocket measures roomcast; the raw-QUIC baseline has no web listener"
                .into(),
        );
    }
    if a.duration.is_nan() || a.duration <= 0.0 || a.duration > 3600.0 {
        return bad(format!(
            "--duration must be in (0, 3600], got {}",
            a.duration
        ));
    }
    if let Some(ms) = a.window_ms.filter(|&ms| ms > 100) {
        return bad(format!("--window-ms must be at most 100, got {ms}"));
    }
    if a.ack_every.is_some_and(|n| !(1..=64).contains(&n)) {
        return bad("--ack-every must be 1..=64".into());
    }
    if !a.rate.is_finite() || a.rate < 0.0 {
        return bad(format!("--rate must be 0 or more, got {}", a.rate));
    }
    if a.payload < load::MIN_PAYLOAD || a.payload > 16 * 1024 {
        return bad(format!(
            "--payload must be {}..=16384 bytes, got {}",
            load::MIN_PAYLOAD,
            a.payload
        ));
    }
    let (low, protected) = shares(a);
    for (name, v) in [
        ("--low-share", low),
        ("--protected-share", protected),
        ("--slow-share", a.slow_share),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return bad(format!("{name} must be in 0..=1, got {v}"));
        }
    }
    if low + protected > 1.0 {
        return bad("--low-share plus --protected-share must be at most 1".into());
    }
    if !matches!(a.scenario, Scenario::Churn | Scenario::Flood) {
        let rooms = room_count(a);
        if a.members == 0 || rooms == 0 || a.senders == 0 || a.senders > a.members {
            return bad(format!(
                "need --members >= 1, --rooms >= 1 and 1 <= --senders <= --members (got {}, {rooms}, {})",
                a.members, a.senders
            ));
        }
        if a.members.saturating_mul(rooms) > MAX_CONNECTIONS {
            return bad(format!(
                "{} connections asked; the harness opens at most {MAX_CONNECTIONS}",
                a.members.saturating_mul(rooms)
            ));
        }
    }
    if a.slow_rate.is_nan() || a.slow_rate <= 0.0 {
        return bad("--slow-rate must be above 0".into());
    }
    for (name, v) in [
        ("--rss-every", Some(a.rss_every)),
        ("--scrape-every", a.scrape_every),
    ] {
        if let Some(v) = v.filter(|v| !(0.1..=3600.0).contains(v)) {
            return bad(format!("{name} must be 0.1..=3600 seconds, got {v}"));
        }
    }
    if !(0.0..=3600.0).contains(&a.soak_from) {
        return bad(format!(
            "--soak-from must be 0..=3600 seconds, got {}",
            a.soak_from
        ));
    }
    if a.scrape_every.is_some()
        && (a.target == TargetKind::RawQuic || a.scenario == Scenario::Churn)
    {
        return bad(
            "--scrape-every needs the relay's admin API and a fanout, rooms or overload run".into(),
        );
    }
    Ok(())
}

fn room_count(a: &BenchArgs) -> usize {
    match a.scenario {
        Scenario::Rooms => a.rooms,
        _ => 1,
    }
}

/// (low, protected) shares, with the overload scenario's defaults.
fn shares(a: &BenchArgs) -> (f64, f64) {
    let overload = a.scenario == Scenario::Overload;
    (
        a.low_share.unwrap_or(if overload { 0.3 } else { 0.0 }),
        a.protected_share
            .unwrap_or(if overload { 0.1 } else { 0.0 }),
    )
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Fanout => "fanout",
        Scenario::Rooms => "rooms",
        Scenario::Overload => "overload",
        Scenario::Churn => "churn",
        Scenario::Flood => "flood",
    }
}

fn target_name(t: TargetKind) -> &'static str {
    match t {
        TargetKind::Roomcast => "roomcast",
        TargetKind::RawQuic => "raw-quic",
    }
}

/// The parts of the report every scenario fills the same way.
fn base_report(a: &BenchArgs, target: &Target) -> Report {
    let transport = transport_of(a);
    Report {
        scenario: scenario_name(a.scenario).into(),
        target: target_name(target.kind).into(),
        transport: a.transport.as_str().into(),
        server_started: a.server.is_none(),
        rate: a.rate,
        payload_bytes: a.payload,
        duration_secs: a.duration,
        durability: match (a.server, target.kind) {
            (Some(_), _) => "unknown (running server)".into(),
            (None, TargetKind::RawQuic) => "none (no store)".into(),
            (None, TargetKind::Roomcast) => match a.durability {
                DurabilityArg::Sync => "sync".into(),
                DurabilityArg::Batched => "batched".into(),
            },
        },
        window_ms: Some(transport.delivery_window_us / 1000),
        ack_every: Some(transport.ack_every_packets),
        client_endpoints: a.client_endpoints,
        gso: !a.no_gso,
        limits_raised: target.raised.clone(),
        ramp_parallel: a.ramp,
        kept_folder: if a.keep {
            target.folder().map(|p| p.display().to_string())
        } else {
            None
        },
        load_average_at_start: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse().ok()),
        ..Report::default()
    }
}

fn reach(a: &BenchArgs, target: &Target) -> Result<Reach, BenchError> {
    let ws = match a.transport {
        BenchTransport::Quic => None,
        BenchTransport::Websocket => {
            let web = target.web.ok_or_else(|| {
                BenchError::Setup(
                    "--transport websocket needs the relay's public web listener (server.json's web)"
                        .into(),
                )
            })?;
            Some(format!("wss://127.0.0.1:{}/ws", web.port()))
        }
    };
    let reach = Reach::new(
        target.quic,
        target.ca_pem.clone(),
        target.tokens.clone(),
        a.client_endpoints,
        ws,
    )
    .map_err(|e| BenchError::Setup(format!("client endpoints: {e}")))?;
    Ok(match &target.cluster {
        Some(c) => reach.with_relays(c.quic_addrs()),
        None => reach,
    })
}

/// CPU seconds a process used between two samples (0 when either is missing).
fn cpu_between(start: Option<stats::ProcSample>, end: Option<stats::ProcSample>) -> f64 {
    match (start, end) {
        (Some(s), Some(e)) => e.cpu_secs - s.cpu_secs,
        _ => 0.0,
    }
}

fn sample(pid: Option<u32>) -> Option<stats::ProcSample> {
    pid.and_then(stats::sample)
}

fn own() -> Option<stats::ProcSample> {
    stats::sample(std::process::id())
}

/// Samples of one relay metric now, when the relay's metrics are reachable.
async fn scrape(target: &Target, name: &str) -> Option<BTreeMap<String, f64>> {
    let admin = target.admin.as_ref()?;
    match admin.metric(name).await {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("roomcast bench: could not read /metrics: {e}");
            None
        }
    }
}

/// Prepares rooms and the whitelist through the admin API where the scenario needs them.
async fn prepare(target: &Target, rooms: &[String], protected: bool) -> Result<(), BenchError> {
    if target.kind != TargetKind::Roomcast {
        return Ok(());
    }
    // Rooms of a cluster run are made before the ramp through relay 0: first joins on several
    // relays at once would each try to create the room, and all but one be refused.
    let need_rooms = !target.join_creates || target.cluster.is_some();
    if !need_rooms && !protected {
        return Ok(());
    }
    let Some(admin) = &target.admin else {
        return Err(BenchError::Setup(
            "the running relay's admin API is needed (to create rooms or whitelist bench.p): \
             give --data or --admin with --admin-key"
                .into(),
        ));
    };
    if protected {
        admin.whitelist_types(&[load::TYPE_PROTECTED]).await?;
    }
    if need_rooms {
        for r in rooms {
            admin.create_room(r).await?;
        }
    }
    Ok(())
}

/// Closes every client, many at once (each close waits briefly for its close to be sent).
async fn close_all(clients: Vec<Arc<Member>>) {
    use futures_util::StreamExt;
    futures_util::stream::iter(clients.into_iter().map(|c| async move { c.close().await }))
        .buffer_unordered(1000)
        .for_each(|_| async {})
        .await;
}

/// fanout, rooms and overload.
async fn rooms(a: &BenchArgs, target: &mut Target) -> Result<Report, BenchError> {
    let mut report = base_report(a, target);
    let n_rooms = room_count(a);
    let members = a.members;
    let senders = a.senders;
    let overload = a.scenario == Scenario::Overload;
    let n_slow = if overload {
        ((a.slow_share * members as f64).round() as usize).min(members - senders)
    } else {
        0
    };
    let (low_share, protected_share) = shares(a);
    let inflight = a.inflight.unwrap_or(64);
    report.rooms = n_rooms;
    report.members_per_room = members;
    report.senders_per_room = senders;
    report.inflight = inflight;
    let scraping = match (a.scrape_every, &target.admin) {
        (Some(every), Some(admin)) => Some((admin.clone(), Duration::from_secs_f64(every))),
        (Some(_), None) => {
            return Err(BenchError::Args(
                "--scrape-every needs the relay's admin API: give --data or --admin".into(),
            ));
        }
        (None, _) => None,
    };

    let room_ids: Vec<String> = (0..n_rooms).map(|r| format!("bench-{r}")).collect();
    prepare(target, &room_ids, protected_share > 0.0).await?;
    let n_relays = target.cluster.as_ref().map_or(1, |c| c.relays.len()).max(1);
    let specs: Vec<Spec> = room_ids
        .iter()
        .enumerate()
        .flat_map(|(ri, room)| {
            (0..members).map(move |i| Spec {
                room: room.clone(),
                room_index: ri,
                user: format!("m{ri}-{i}"),
                sender: i < senders,
                // The last members of the room are the slow ones.
                slow: i >= members - n_slow,
                // The senders on relay 0, the others in turn over every relay.
                relay: if i < senders { 0 } else { i % n_relays },
            })
        })
        .collect();

    let reach = reach(a, target)?;
    let rss_start = sample(target.pid).map(|s| s.rss_kib);
    eprintln!(
        "roomcast bench: ramp: {} connections, {} at once",
        specs.len(),
        a.ramp
    );
    let ramp = load::ramp(&reach, specs, a.ramp).await;
    report.connections = ramp.joined.len();
    report.ramp_secs = ramp.secs;
    report.ramp_connections_per_sec = ramp.joined.len() as f64 / ramp.secs.max(1e-9);
    report.failed_connects = ramp.failed_connects.values().sum();
    report.failed_connects_by_error = ramp.failed_connects.clone();
    report.failed_joins_by_error = ramp.failed_joins.clone();
    if ramp.joined.is_empty() {
        return Err(BenchError::NoMembers {
            connects: ramp.failed_connects,
            joins: ramp.failed_joins,
        });
    }
    eprintln!(
        "roomcast bench: ramp done in {:.2} s ({} joined, {} failed connects)",
        ramp.secs,
        ramp.joined.len(),
        report.failed_connects
    );
    let mut room_size = vec![0u64; n_rooms];
    let mut members_per_relay = vec![0usize; n_relays];
    for j in &ramp.joined {
        room_size[j.spec.room_index] += 1;
        members_per_relay[j.spec.relay] += 1;
    }

    let live = Arc::new(Live::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    for j in &ramp.joined {
        let reading = load::read_events(
            j.client.clone(),
            j.spec.slow.then_some(a.slow_rate),
            live.clone(),
            stop_rx.clone(),
        );
        let relay = j.spec.relay;
        readers.spawn(async move { (relay, reading.await) });
    }
    tokio::time::sleep(SETTLE).await;
    let rss_idle = sample(target.pid).map(|s| s.rss_kib);
    let shed_before = scrape(target, crate::metrics::SHED).await;
    let slow_before = scrape(target, crate::metrics::TOO_SLOW).await;

    let senders_total = ramp.joined.iter().filter(|j| j.spec.sender).count().max(1);
    let per_sender_rate = a.rate / senders_total as f64;
    let servers = target.server_pids();
    let nats_before = match &target.cluster {
        Some(c) => Some(c.counters().await),
        None => None,
    };
    let servers_start: Vec<_> = servers.iter().map(|(_, p)| stats::sample(*p)).collect();
    let cpu_start = sample(target.pid);
    let own_start = own();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    eprintln!(
        "roomcast bench: load: {senders_total} sender(s) for {} s",
        a.duration
    );
    let mut sending = tokio::task::JoinSet::new();
    for (k, j) in ramp.joined.iter().filter(|j| j.spec.sender).enumerate() {
        sending.spawn(load::send_loop(
            j.client.clone(),
            j.spec.room.clone(),
            j.spec.room_index,
            SendPlan {
                rate: per_sender_rate,
                inflight,
                payload: a.payload,
                protected_share,
                low_share,
                salt: k as u64,
            },
            deadline,
            live.clone(),
        ));
    }
    // The soak: RSS readings (and /metrics scrapes when asked for) through the load.
    let mut soaking = tokio::task::JoinSet::new();
    soaking.spawn(soak::run(
        target.pid,
        Duration::from_secs_f64(a.rss_every),
        scraping,
        start,
        deadline,
    ));
    let mut sent = Vec::new();
    let mut progress =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = (0u64, 0u64);
    while !sending.is_empty() {
        tokio::select! {
            done = sending.join_next() => {
                if let Some(Ok(t)) = done {
                    sent.push(t);
                }
            }
            _ = progress.tick() => {
                let now = (live.sent.load(Ordering::Relaxed), live.delivered.load(Ordering::Relaxed));
                eprintln!(
                    "roomcast bench: t={:>4.1}s sent/s {:>9} deliveries/s {:>10}",
                    start.elapsed().as_secs_f64(),
                    now.0 - last.0,
                    now.1 - last.1
                );
                last = now;
            }
        }
    }
    let rss_end = sample(target.pid).map(|s| s.rss_kib);
    let soaked = soaking.join_next().await.and_then(Result::ok);

    // Drain: until every acknowledged message reached every member of its room, or deliveries
    // stop arriving, bounded.
    let mut sent_per_room = vec![0u64; n_rooms];
    for t in &sent {
        sent_per_room[t.room_index] += t.sent.iter().sum::<u64>();
    }
    let expected: u64 = sent_per_room
        .iter()
        .zip(&room_size)
        .map(|(s, m)| s * m)
        .sum();
    let drain_start = Instant::now();
    let mut seen = live.delivered.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        if seen >= expected
            || last_change.elapsed() >= DRAIN_QUIET
            || drain_start.elapsed() >= DRAIN_MAX
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = live.delivered.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last_change = Instant::now();
        }
    }
    let end = if seen >= expected {
        Instant::now()
    } else {
        last_change
    };
    let cpu_end = sample(target.pid);
    let own_end = own();
    let servers_end: Vec<_> = servers.iter().map(|(_, p)| stats::sample(*p)).collect();
    let nats_after = match &target.cluster {
        Some(c) => Some(c.counters().await),
        None => None,
    };
    let measured = end.duration_since(start).as_secs_f64().max(1e-9);
    let shed_after = scrape(target, crate::metrics::SHED).await;
    let slow_after = scrape(target, crate::metrics::TOO_SLOW).await;

    let _ = stop_tx.send(true);
    let mut tallies = Vec::new();
    let mut deliveries_per_relay = vec![0u64; n_relays];
    while let Some(t) = readers.join_next().await {
        if let Ok((relay, t)) = t {
            deliveries_per_relay[relay] += t.delivered.iter().sum::<u64>();
            tallies.push(t);
        }
    }
    let clients: Vec<Arc<Member>> = ramp.joined.iter().map(|j| j.client.clone()).collect();
    drop(ramp);
    close_all(clients).await;

    // The report.
    let mut latency = stats::Histogram::default();
    let mut send_latency = stats::Histogram::default();
    let mut delivered = [0u64; 3];
    let mut by_class_sent = [0u64; 3];
    for t in &tallies {
        latency.merge(&t.latency);
        for (d, v) in delivered.iter_mut().zip(t.delivered) {
            *d += v;
        }
        report.deliveries_stream += t.stream;
        report.deliveries_datagram += t.datagram;
        report.gap_low += t.gap_low;
        report.gap_normal += t.gap_normal;
        report.packets_to_members += t.packets_in;
        report.packets_from_members += t.packets_out;
        report.disconnects += t.closed;
        for (k, v) in &t.close_reasons {
            *report.disconnect_reasons.entry(k.clone()).or_default() += v;
        }
    }
    for t in &sent {
        send_latency.merge(&t.latency);
        for (d, v) in by_class_sent.iter_mut().zip(t.sent) {
            *d += v;
        }
        for (k, v) in &t.errors {
            *report.send_errors.entry(k.clone()).or_default() += v;
        }
        report.sends_skipped += t.skipped;
        report.sends_abandoned += t.abandoned;
    }
    report.measured_secs = measured;
    report.messages_sent = by_class_sent.iter().sum();
    report.messages_sent_per_sec = report.messages_sent as f64 / measured;
    report.messages_sent_by_class = by_class_sent.into();
    report.deliveries = delivered.iter().sum();
    report.deliveries_by_class = delivered.into();
    report.expected_deliveries = expected;
    report.deliveries_per_sec = report.deliveries as f64 / measured;
    report.latency_us = latency.summary();
    report.send_latency_us = send_latency.summary();
    report.server_shed = match (shed_before, shed_after) {
        (Some(b), Some(after)) => Some(
            after
                .into_iter()
                .map(|(k, v)| {
                    let d = v - b.get(&k).copied().unwrap_or(0.0);
                    (k, d)
                })
                .filter(|(_, v)| *v != 0.0)
                .collect(),
        ),
        _ => None,
    };
    report.server_too_slow = match (slow_before, slow_after) {
        (Some(b), Some(a)) => Some(a.values().sum::<f64>() - b.values().sum::<f64>()),
        _ => None,
    };
    report.client_cpu_secs = cpu_between(own_start, own_end);
    report.server = usage(
        target.pid,
        cpu_start,
        cpu_end,
        measured,
        report.deliveries,
        report.connections,
        [rss_start, rss_idle, rss_end],
    );
    report.server_processes = servers
        .iter()
        .zip(servers_start.iter().zip(&servers_end))
        .map(|((name, pid), (s, e))| report::ProcessCpu {
            name: name.clone(),
            pid: *pid,
            cpu_secs: cpu_between(*s, *e),
        })
        .collect();
    report.server_cpu_secs = report.server_processes.iter().map(|p| p.cpu_secs).sum();
    report.deliveries_per_server_cpu_sec = if report.server_cpu_secs > 0.0 {
        report.deliveries as f64 / report.server_cpu_secs
    } else {
        0.0
    };
    if let (Some(c), Some(before), Some(after)) = (&target.cluster, &nats_before, &nats_after) {
        report.cluster = Some(cluster::ClusterReport::between(
            c,
            before,
            after,
            report.messages_sent,
            members_per_relay,
            deliveries_per_relay,
        ));
    }
    if let Some((samples, scrapes)) = soaked
        && (!samples.is_empty() || scrapes.is_some())
    {
        let from = soak::from_secs(a.soak_from, a.duration);
        report.soak = Some(soak::Soak {
            scrapes,
            ..soak::growth(&samples, a.rss_every, from)
        });
    }
    if overload {
        report.overload = Some(overload_split(
            &tallies,
            &by_class_sent,
            a.slow_rate,
            send_latency.quantile(0.99),
        ));
    }
    Ok(report)
}

fn usage(
    pid: Option<u32>,
    start: Option<stats::ProcSample>,
    end: Option<stats::ProcSample>,
    measured: f64,
    work: u64,
    connections: usize,
    [rss_start, rss_idle, rss_end]: [Option<u64>; 3],
) -> Option<ServerUsage> {
    let (pid, start, end) = (pid?, start?, end?);
    let cpu = (end.cpu_secs - start.cpu_secs).max(0.0);
    let per_conn = |rss: Option<u64>| match (rss, rss_start) {
        (Some(r), Some(s)) if connections > 0 => (r as f64 - s as f64) / connections as f64,
        _ => 0.0,
    };
    Some(ServerUsage {
        pid,
        cpu_secs: cpu,
        cpu_us_per_delivery: if work > 0 {
            cpu * 1e6 / work as f64
        } else {
            0.0
        },
        cpu_secs_per_million_deliveries: if work > 0 {
            cpu * 1e6 / work as f64
        } else {
            0.0
        },
        cpu_cores: cpu / measured,
        rss_start_kib: rss_start.unwrap_or(0),
        rss_idle_kib: rss_idle.unwrap_or(0),
        rss_end_kib: rss_end.unwrap_or(end.rss_kib),
        rss_idle_per_connection_kib: per_conn(rss_idle),
        rss_end_per_connection_kib: per_conn(rss_end.or(Some(end.rss_kib))),
    })
}

fn overload_split(
    tallies: &[load::Tally],
    sent: &[u64; 3],
    slow_rate: f64,
    send_p99: u64,
) -> report::Overload {
    let mut o = report::Overload {
        slow_rate,
        send_latency_p99_us: send_p99,
        ..report::Overload::default()
    };
    for slow in [false, true] {
        let group: Vec<&load::Tally> = tallies.iter().filter(|t| t.slow == slow).collect();
        let n = group.len();
        let mut got = [0u64; 3];
        let mut gaps = [0u64; 2];
        let mut disc = 0;
        let mut lat = stats::Histogram::default();
        for t in &group {
            for (g, v) in got.iter_mut().zip(t.delivered) {
                *g += v;
            }
            gaps[0] += t.gap_low;
            gaps[1] += t.gap_normal;
            disc += t.closed;
            lat.merge(&t.latency);
        }
        let r = |i: usize| {
            let want = sent[i] * n as u64;
            (want > 0).then(|| got[i] as f64 / want as f64)
        };
        let ratios = report::Ratios {
            protected: r(0),
            normal: r(1),
            low: r(2),
        };
        if slow {
            o.slow_members = n;
            o.slow = ratios;
            o.slow_gaps = gaps;
            o.slow_disconnects = disc;
            o.slow_latency_us = lat.summary();
        } else {
            o.fast_members = n;
            o.fast = ratios;
            o.fast_gaps = gaps;
            o.fast_disconnects = disc;
            o.fast_latency_us = lat.summary();
        }
    }
    o
}

/// The churn storm.
async fn churn(a: &BenchArgs, target: &mut Target) -> Result<Report, BenchError> {
    let mut report = base_report(a, target);
    let rate = if a.rate > 0.0 { a.rate } else { 1000.0 };
    // More in flight than the machine completes only queues handshakes behind each other until
    // their retransmission timers fire: 512 sustained 1.6k/s where 64 sustained 2.3k/s.
    let concurrency = a.inflight.unwrap_or(64);
    report.rate = rate;
    report.inflight = concurrency;
    report.rooms = 1;
    let room = "bench-churn".to_owned();
    prepare(target, std::slice::from_ref(&room), false).await?;
    let reach = reach(a, target)?;
    let live = Arc::new(Live::default());
    let rss_start = sample(target.pid).map(|s| s.rss_kib);
    let cpu_start = sample(target.pid);
    let own_start = own();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    eprintln!(
        "roomcast bench: churn: {rate} cycles/s for {} s, at most {concurrency} in flight",
        a.duration
    );
    let storm = load::churn(&reach, &room, rate, concurrency, deadline, live.clone());
    tokio::pin!(storm);
    let mut progress =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut last = 0;
    let tally = loop {
        tokio::select! {
            t = &mut storm => break t,
            _ = progress.tick() => {
                let now = live.sent.load(Ordering::Relaxed);
                eprintln!(
                    "roomcast bench: t={:>4.1}s connect+join/s {:>7}",
                    start.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        }
    };
    let cpu_end = sample(target.pid);
    let own_end = own();
    let measured = start.elapsed().as_secs_f64();
    report.measured_secs = measured;
    report.failed_connects = tally.failed_connects.values().sum();
    report.failed_connects_by_error = tally.failed_connects.clone();
    report.client_cpu_secs = cpu_between(own_start, own_end);
    report.server = usage(
        target.pid,
        cpu_start,
        cpu_end,
        measured,
        tally.joined,
        0,
        [rss_start, None, cpu_end.map(|s| s.rss_kib)],
    );
    report.churn = Some(report::Churn {
        concurrency,
        started: tally.started,
        skipped: tally.skipped,
        connect_join_ok: tally.joined,
        connect_join_per_sec: if tally.secs > 0.0 {
            tally.joined as f64 / tally.secs
        } else {
            0.0
        },
        completed: tally.completed,
        failed_handshakes: report.failed_connects,
        failed_requests: tally.failed_requests.clone(),
        connect_join_latency_us: tally.latency.summary(),
    });
    Ok(report)
}
