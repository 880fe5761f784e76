//! A ClientHello flood: real QUIC Initial packets (each a new connection with its own TLS
//! ClientHello) sent from many UDP source ports over plain sockets, never answered.
//!
//! Each attempt is a `quinn-proto` client connection whose first datagram is taken from it and
//! sent on one of `sources` sockets, in turn; the connection is then dropped, and whatever the
//! server answers (a handshake flight or a Retry) is never read. To the server this is a crowd
//! of clients that start handshakes and vanish: what an attacker with many addresses, or one
//! that spoofs source addresses, costs it. Bounded in count and time, loopback targets only.

use super::BenchError;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Most attempts one flood sends.
pub const MAX_HELLOS: usize = 1_000_000;
/// Most source sockets one flood opens.
pub const MAX_SOURCES: usize = 1024;

/// Connections made on one client endpoint before the next.
const ENDPOINT_REUSE: usize = 4096;

/// What to send.
#[derive(Debug, Clone)]
pub struct FloodSpec {
    /// The QUIC server (loopback only).
    pub target: SocketAddr,
    /// Attempts (each a new connection's first datagram).
    pub count: usize,
    /// Attempts per second (0: as fast as the sockets take them).
    pub rate: f64,
    /// UDP source sockets, used in turn.
    pub sources: usize,
    /// Longest time the flood runs, whatever is left of `count`.
    pub max_time: Duration,
}

/// What was sent.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FloodTally {
    /// Initial datagrams sent.
    pub sent: u64,
    /// Sends the kernel refused (e.g. a full socket buffer).
    pub send_errors: u64,
    /// Seconds from the first to the last send.
    pub secs: f64,
}

/// Sends the flood; blocks the calling thread until `count` attempts went out, `max_time`
/// passed, or `stop` was set.
pub fn client_hello_flood(spec: &FloodSpec, stop: &AtomicBool) -> Result<FloodTally, BenchError> {
    super::require_loopback("the flood target", spec.target)?;
    if spec.count > MAX_HELLOS || spec.sources == 0 || spec.sources > MAX_SOURCES {
        return Err(BenchError::Args(format!(
            "a flood sends at most {MAX_HELLOS} hellos from 1..={MAX_SOURCES} sockets"
        )));
    }
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| BenchError::Io { what, source }
    };
    let bind = match spec.target {
        SocketAddr::V4(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0)),
    };
    let sockets = (0..spec.sources)
        .map(|_| UdpSocket::bind(bind))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("binding flood sockets"))?;
    // The certificate is never checked (no answer is read), so any trust anchor will do: the
    // flood's own throwaway CA.
    let ca = crate::tls::ServerIdentity::generate(&[])?
        .ca_pem
        .unwrap_or_default();
    let crypto = crate::tls::quic_client_crypto(ca.as_bytes())?;
    let client = quinn_proto::ClientConfig::new(Arc::new(crypto));
    let new_endpoint = || {
        quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            false,
            None,
        )
    };
    let mut endpoint = new_endpoint();
    let start = Instant::now();
    let end = start + spec.max_time;
    let mut tally = FloodTally::default();
    let mut buf = Vec::with_capacity(1500);
    for i in 0..spec.count {
        if stop.load(Ordering::Relaxed) || Instant::now() >= end {
            break;
        }
        if spec.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / spec.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        // An endpoint keeps an entry for every connection it made; a fresh one now and then
        // keeps the generator's memory flat however long the flood.
        if i % ENDPOINT_REUSE == 0 {
            endpoint = new_endpoint();
        }
        let now = Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, client.clone(), spec.target, "localhost")
            .map_err(|e| BenchError::Setup(format!("flood connection: {e}")))?;
        buf.clear();
        if let Some(t) = conn.poll_transmit(now, 1, &mut buf) {
            match sockets[i % sockets.len()].send_to(&buf[..t.size], spec.target) {
                Ok(_) => tally.sent += 1,
                Err(_) => tally.send_errors += 1,
            }
        }
    }
    tally.secs = start.elapsed().as_secs_f64();
    Ok(tally)
}

/// What `roomcast bench --scenario flood` measured.
#[derive(Debug, Default, serde::Serialize)]
pub struct FloodReport {
    /// What the generator sent.
    pub flood: FloodTally,
    /// UDP source sockets.
    pub sources: usize,
    /// Attempts per second asked for (0: as fast as possible).
    pub rate: f64,
    /// Server RSS before the flood (after one connect+join), KiB.
    pub rss_idle_kib: Option<u64>,
    /// Highest server RSS sampled during the flood and until its handshakes ended, KiB.
    pub rss_peak_kib: Option<u64>,
    /// Server RSS once every handshake the flood started had ended, KiB.
    pub rss_after_kib: Option<u64>,
    /// Real connect+join probes during the flood that succeeded.
    pub probes_ok: u64,
    /// Probes that failed or took longer than 10 s, by error.
    pub probes_failed: std::collections::BTreeMap<String, u64>,
    /// Connect+join time of the probes, µs.
    pub probe_connect_join_us: super::stats::LatencySummary,
    /// The relay's counters after the flood (accepted, retried, refused connection attempts,
    /// closes by reason), when its metrics are reachable.
    pub server_counters: std::collections::BTreeMap<String, f64>,
}

impl FloodReport {
    /// The report as a table.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let kib = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} KiB"));
        let _ = writeln!(
            out,
            "flood: {} ClientHellos in {:.2} s from {} ports ({:.0}/s, {} send errors)",
            self.flood.sent,
            self.flood.secs,
            self.sources,
            self.flood.sent as f64 / self.flood.secs.max(1e-9),
            self.flood.send_errors
        );
        let _ = writeln!(
            out,
            "server RSS: idle {}, peak {}, after {}",
            kib(self.rss_idle_kib),
            kib(self.rss_peak_kib),
            kib(self.rss_after_kib)
        );
        let l = &self.probe_connect_join_us;
        let _ = writeln!(
            out,
            "real clients during the flood: {} connected and joined (p50 {} us, max {} us), {} failed {:?}",
            self.probes_ok,
            l.p50,
            l.max,
            self.probes_failed.values().sum::<u64>(),
            self.probes_failed
        );
        for (k, v) in &self.server_counters {
            let _ = writeln!(out, "  {k} {v}");
        }
        out
    }
}

/// Time between two real connect+join probes during a flood.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Longest connect+join a probe waits for.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait, after the flood, for the handshakes it started to end.
const SETTLE_MAX: Duration = Duration::from_secs(30);

/// `roomcast bench --scenario flood`: a ClientHello flood of `--hellos` attempts from `--sources`
/// ports at `--rate` a second (for at most `--duration` seconds) against the target, while a real
/// client connects and joins every 250 ms; reports the server's RSS (idle, peak, after) and the
/// probes' connect+join times.
pub(crate) async fn scenario(
    a: &super::BenchArgs,
    target: &super::launch::Target,
) -> Result<FloodReport, BenchError> {
    let room = "bench-flood".to_owned();
    super::prepare(target, std::slice::from_ref(&room), false).await?;
    let probe = |n: u64| {
        let room = room.clone();
        async move {
            let token = target.tokens.mint(&format!("probe-{n}"))?;
            let cfg = crate::client::ClientConfig::new(target.quic, target.ca_pem.clone(), token);
            let started = Instant::now();
            let joined = tokio::time::timeout(PROBE_TIMEOUT, async {
                let client = crate::client::Client::connect(cfg).await?;
                client.join(&room, -1).await?;
                client.close().await;
                Ok::<_, crate::client::ClientError>(())
            })
            .await;
            Ok::<_, BenchError>(match joined {
                Ok(Ok(())) => Ok(started.elapsed()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            })
        }
    };
    // One cycle first, so the idle figure includes what any first connection allocates.
    if let Err(e) = probe(0).await? {
        return Err(BenchError::Setup(format!(
            "a first client could not join: {e}"
        )));
    }
    let mut report = FloodReport {
        sources: a.sources,
        rate: a.rate,
        rss_idle_kib: super::sample(target.pid).map(|s| s.rss_kib),
        ..Default::default()
    };
    let spec = FloodSpec {
        target: target.quic,
        count: a.hellos,
        rate: a.rate,
        sources: a.sources,
        max_time: Duration::from_secs_f64(a.duration),
    };
    eprintln!(
        "roomcast bench: flood: {} ClientHellos from {} ports at {} a second",
        spec.count,
        spec.sources,
        if spec.rate > 0.0 {
            spec.rate.to_string()
        } else {
            "as many as possible".into()
        }
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || client_hello_flood(&spec, &stop))
    };
    let mut peak = report.rss_idle_kib.unwrap_or(0);
    let mut latency = super::stats::Histogram::default();
    let mut n = 0;
    let mut next_probe = tokio::time::Instant::now() + PROBE_EVERY;
    let mut sampling = tokio::time::interval(Duration::from_millis(50));
    let tally = loop {
        tokio::select! {
            done = &mut flood => {
                break done.map_err(|e| BenchError::Setup(format!("flood task: {e}")))??;
            }
            _ = sampling.tick() => {
                if let Some(s) = super::sample(target.pid) {
                    peak = peak.max(s.rss_kib);
                }
            }
            _ = tokio::time::sleep_until(next_probe) => {
                n += 1;
                match probe(n).await? {
                    Ok(t) => {
                        report.probes_ok += 1;
                        latency.record(t.as_micros() as u64);
                    }
                    Err(e) => *report.probes_failed.entry(e).or_default() += 1,
                }
                next_probe = tokio::time::Instant::now() + PROBE_EVERY;
            }
        }
    };
    stop.store(true, Ordering::Relaxed);
    report.flood = tally;
    report.probe_connect_join_us = latency.summary();
    // Until every handshake the flood started has ended (its deadline), sampling on.
    let settle_end = tokio::time::Instant::now() + SETTLE_MAX;
    while tokio::time::Instant::now() < settle_end {
        if let Some(s) = super::sample(target.pid) {
            peak = peak.max(s.rss_kib);
        }
        let handshaking = super::scrape(target, crate::metrics::CONNECTIONS_HANDSHAKING).await;
        if handshaking.is_none_or(|m| m.values().sum::<f64>() == 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.rss_after_kib = super::sample(target.pid).map(|s| s.rss_kib);
    report.rss_peak_kib = report.rss_idle_kib.map(|_| peak);
    for name in [
        crate::metrics::CONNECTIONS_ACCEPTED,
        crate::metrics::HANDSHAKES_RETRIED,
        crate::metrics::HANDSHAKES_REFUSED,
        crate::metrics::CONNECTIONS_CLOSED,
    ] {
        for (labels, v) in super::scrape(target, name).await.unwrap_or_default() {
            report.server_counters.insert(format!("{name}{labels}"), v);
        }
    }
    Ok(report)
}
