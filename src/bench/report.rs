//! The report: one serializable struct, printed as a table and written as JSON.

use super::launch::Raised;
use super::soak::Soak;
use super::stats::LatencySummary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything one run measured. `--json` writes it as is; the table shows the same numbers.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// fanout, rooms, overload or churn.
    pub scenario: String,
    /// roomcast or raw-quic.
    pub target: String,
    /// How the clients connected: quic or websocket.
    pub transport: String,
    /// Whether the harness started the server (false: `--server`).
    pub server_started: bool,
    /// Rooms.
    pub rooms: usize,
    /// Members asked for per room.
    pub members_per_room: usize,
    /// Members connected and joined after the ramp.
    pub connections: usize,
    /// Senders per room.
    pub senders_per_room: usize,
    /// Total send rate asked for, messages/s (0: saturate); churn: cycles/s.
    pub rate: f64,
    /// Sends outstanding per sender (churn: cycles in flight).
    pub inflight: usize,
    /// Message body, bytes.
    pub payload_bytes: usize,
    /// Load duration asked for, seconds.
    pub duration_secs: f64,
    /// store.durability of a started relay.
    pub durability: String,
    /// Least time between two writes to one connection, ms (`transport.delivery_window_us`).
    pub window_ms: Option<u64>,
    /// Clients were asked to acknowledge once per this many packets (`transport.ack_every_packets`).
    pub ack_every: Option<u32>,
    /// UDP endpoints the harness's clients shared (0: one per client).
    pub client_endpoints: usize,
    /// UDP GSO was on (`transport.segmentation_offload`).
    pub gso: bool,
    /// Configuration the started relay runs with above roomcast's defaults.
    pub limits_raised: Vec<Raised>,
    /// Connections opened at once during the ramp.
    pub ramp_parallel: usize,
    /// How long connecting and joining every member took, seconds.
    pub ramp_secs: f64,
    /// Members connected and joined per second during the ramp.
    pub ramp_connections_per_sec: f64,
    /// Connects that failed (ramp, and churn handshakes).
    pub failed_connects: u64,
    /// Failed connects by error.
    pub failed_connects_by_error: BTreeMap<String, u64>,
    /// Joins that failed during the ramp, by error.
    pub failed_joins_by_error: BTreeMap<String, u64>,
    /// From the start of the load to the last delivery (or the end of the drain), seconds.
    pub measured_secs: f64,
    /// Acknowledged sends.
    pub messages_sent: u64,
    /// Acknowledged sends per measured second.
    pub messages_sent_per_sec: f64,
    /// Acknowledged sends by the class asked for.
    pub messages_sent_by_class: ClassCounts,
    /// Messages received by all members.
    pub deliveries: u64,
    /// Acknowledged sends × members of their room.
    pub expected_deliveries: u64,
    /// Deliveries per measured second.
    pub deliveries_per_sec: f64,
    /// Deliveries by the class the sender asked for.
    pub deliveries_by_class: ClassCounts,
    /// Deliveries on the delivery stream.
    pub deliveries_stream: u64,
    /// Deliveries as datagrams.
    pub deliveries_datagram: u64,
    /// End-to-end latency (send → member), µs.
    pub latency_us: LatencySummary,
    /// Send → reply latency at the publishers, µs.
    pub send_latency_us: LatencySummary,
    /// Low-priority messages members were told they missed (`Gap`).
    pub gap_low: u64,
    /// Normal messages members were told they missed (`Gap`).
    pub gap_normal: u64,
    /// UDP datagrams the members received during the load (their QUIC connection stats).
    pub packets_to_members: u64,
    /// UDP datagrams the members sent meanwhile (acknowledgements, mostly).
    pub packets_from_members: u64,
    /// `roomcast_shed_total` from the relay's `/metrics` (change over the run), by labels.
    pub server_shed: Option<BTreeMap<String, f64>>,
    /// `roomcast_too_slow_disconnects_total` from `/metrics` (change over the run).
    pub server_too_slow: Option<f64>,
    /// Connections that closed during the run (`ClientEvent::Closed`, or found closed at the end).
    pub disconnects: u64,
    /// Their reasons.
    pub disconnect_reasons: BTreeMap<String, u64>,
    /// Refused or failed sends by error code.
    pub send_errors: BTreeMap<String, u64>,
    /// Paced sends not issued because `inflight` were outstanding.
    pub sends_skipped: u64,
    /// Sends still unanswered when the harness stopped waiting.
    pub sends_abandoned: u64,
    /// The server process's CPU and memory, when its pid is known.
    pub server: Option<ServerUsage>,
    // ---- cluster runs ----
    /// Every server process the harness measured (the relay; in a cluster run every relay and
    /// the nats-server) with its CPU time (user + system) over the measured window. `server`
    /// above is the relay of the sender only.
    pub server_processes: Vec<ProcessCpu>,
    /// The sum of `server_processes`' CPU, seconds.
    pub server_cpu_secs: f64,
    /// Deliveries per second of CPU of all server processes together.
    pub deliveries_per_server_cpu_sec: f64,
    /// A cluster run's (`--relays`) members and NATS traffic.
    pub cluster: Option<super::cluster::ClusterReport>,
    // ---- end cluster runs ----
    /// CPU the harness itself used in the measured window, seconds (it shares the machine).
    pub client_cpu_secs: f64,
    /// The server's memory through the load, and the `/metrics` scrapes meanwhile.
    pub soak: Option<Soak>,
    /// The overload scenario's split by member speed.
    pub overload: Option<Overload>,
    /// The churn scenario's numbers.
    pub churn: Option<Churn>,
    /// Temporary folder kept with `--keep`.
    pub kept_folder: Option<String>,
    /// The machine's 1-minute load average when the run started (other work skews the numbers).
    pub load_average_at_start: Option<f64>,
}

/// One server process's CPU over the measured window.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProcessCpu {
    /// `relay`, `relay-<i>` or `nats-server`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// User + system CPU, seconds (`/proc/<pid>/stat`).
    pub cpu_secs: f64,
}

/// Counts per class.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ClassCounts {
    /// Protected.
    pub protected: u64,
    /// Normal.
    pub normal: u64,
    /// Low.
    pub low: u64,
}

impl From<[u64; 3]> for ClassCounts {
    fn from(c: [u64; 3]) -> Self {
        ClassCounts {
            protected: c[0],
            normal: c[1],
            low: c[2],
        }
    }
}

/// CPU and memory of the server process.
#[derive(Debug, Default, Serialize)]
pub struct ServerUsage {
    /// Its pid.
    pub pid: u32,
    /// utime + stime over the measured window, seconds.
    pub cpu_secs: f64,
    /// Server CPU per delivery, µs (per connect + join cycle for churn).
    pub cpu_us_per_delivery: f64,
    /// Server CPU seconds per million deliveries.
    pub cpu_secs_per_million_deliveries: f64,
    /// Share of one core the server used in the window.
    pub cpu_cores: f64,
    /// VmRSS before any client connected, KiB.
    pub rss_start_kib: u64,
    /// VmRSS after the ramp, before the load, KiB.
    pub rss_idle_kib: u64,
    /// VmRSS at the end of the load, KiB.
    pub rss_end_kib: u64,
    /// (idle − start) / connections, KiB.
    pub rss_idle_per_connection_kib: f64,
    /// (end − start) / connections, KiB.
    pub rss_end_per_connection_kib: f64,
}

/// Delivered ÷ (sent × members), per class the sender asked for; `None` when none was sent.
#[derive(Debug, Default, Serialize)]
pub struct Ratios {
    /// Protected.
    pub protected: Option<f64>,
    /// Normal.
    pub normal: Option<f64>,
    /// Low.
    pub low: Option<f64>,
}

/// Delivery by member speed.
#[derive(Debug, Default, Serialize)]
pub struct Overload {
    /// Members reading at full speed (senders included).
    pub fast_members: usize,
    /// Members reading at `slow_rate`.
    pub slow_members: usize,
    /// Events per second a slow member reads.
    pub slow_rate: f64,
    /// Shares of fast members' expected deliveries that arrived.
    pub fast: Ratios,
    /// Shares of slow members' expected deliveries that arrived.
    pub slow: Ratios,
    /// `Gap` counts seen by fast members: low, normal.
    pub fast_gaps: [u64; 2],
    /// `Gap` counts seen by slow members: low, normal.
    pub slow_gaps: [u64; 2],
    /// Disconnects of fast members.
    pub fast_disconnects: u64,
    /// Disconnects of slow members.
    pub slow_disconnects: u64,
    /// Latency at fast members, µs.
    pub fast_latency_us: LatencySummary,
    /// Latency at slow members, µs.
    pub slow_latency_us: LatencySummary,
    /// The publishers' send → reply p99, µs.
    pub send_latency_p99_us: u64,
}

/// The churn storm.
#[derive(Debug, Default, Serialize)]
pub struct Churn {
    /// Cycles in flight at most.
    pub concurrency: usize,
    /// Cycles started.
    pub started: u64,
    /// Cycles not started because `concurrency` were in flight.
    pub skipped: u64,
    /// Connect + join completed.
    pub connect_join_ok: u64,
    /// Connect + join completed per second, sustained (to the last one).
    pub connect_join_per_sec: f64,
    /// Whole cycles (leave and close too) completed.
    pub completed: u64,
    /// Failed handshakes (QUIC + hello).
    pub failed_handshakes: u64,
    /// Failed joins or leaves by error.
    pub failed_requests: BTreeMap<String, u64>,
    /// Connect + join latency, µs.
    pub connect_join_latency_us: LatencySummary,
}

fn ratio(r: Option<f64>) -> String {
    r.map_or("-".into(), |v| format!("{:.4}", v))
}

fn map(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lat(l: &LatencySummary) -> String {
    format!(
        "p50 {} · p99 {} · p99.9 {} · max {} µs ({} samples)",
        l.p50, l.p99, l.p999, l.max, l.samples
    )
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<30} {v}");
        };
        row(
            "scenario",
            format!(
                "{} against {} over {}{}",
                self.scenario,
                self.target,
                self.transport,
                if self.server_started {
                    " (started by the harness)"
                } else {
                    " (running server)"
                }
            ),
        );
        if self.scenario != "churn" {
            row(
                "shape",
                format!(
                    "{} room(s) × {} members, {} sender(s)/room, rate {}, inflight {}, payload {} B, {} s",
                    self.rooms,
                    self.members_per_room,
                    self.senders_per_room,
                    if self.rate > 0.0 {
                        format!("{} msg/s", self.rate)
                    } else {
                        "saturate".into()
                    },
                    self.inflight,
                    self.payload_bytes,
                    self.duration_secs
                ),
            );
        }
        row(
            "durability · write window · ack every · GSO",
            format!(
                "{} · {} · {} · {}",
                self.durability,
                self.window_ms.map_or("n/a".into(), |l| format!("{l} ms")),
                self.ack_every
                    .map_or("n/a".into(), |n| format!("{n} packets")),
                if self.gso { "on" } else { "off" }
            ),
        );
        row(
            "client endpoints",
            match self.client_endpoints {
                0 => "one per client".into(),
                n => format!("{n} shared"),
            },
        );
        if !self.limits_raised.is_empty() {
            row(
                "limits raised",
                self.limits_raised
                    .iter()
                    .map(|r| format!("{} {}→{}", r.key, r.default, r.bench))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
        }
        if self.scenario != "churn" {
            row(
                "ramp",
                format!(
                    "{} connections in {:.2} s ({:.0}/s, {} at once)",
                    self.connections,
                    self.ramp_secs,
                    self.ramp_connections_per_sec,
                    self.ramp_parallel
                ),
            );
        }
        row(
            "failed connects",
            format!(
                "{} ({}); failed joins: {}",
                self.failed_connects,
                map(&self.failed_connects_by_error),
                map(&self.failed_joins_by_error)
            ),
        );
        row("measured", format!("{:.2} s", self.measured_secs));
        if let Some(c) = &self.churn {
            row(
                "connect+join",
                format!(
                    "{} ok, {:.0}/s sustained; {} started, {} skipped (concurrency {}), {} whole cycles",
                    c.connect_join_ok,
                    c.connect_join_per_sec,
                    c.started,
                    c.skipped,
                    c.concurrency,
                    c.completed
                ),
            );
            row("failed handshakes", c.failed_handshakes.to_string());
            row("failed join/leave", map(&c.failed_requests));
            row("connect+join latency", lat(&c.connect_join_latency_us));
        } else {
            row(
                "deliveries/s",
                format!(
                    "{:.0}  ({} of {} expected)",
                    self.deliveries_per_sec, self.deliveries, self.expected_deliveries
                ),
            );
            row(
                "messages sent/s",
                format!(
                    "{:.1}  ({} acknowledged: protected {}, normal {}, low {})",
                    self.messages_sent_per_sec,
                    self.messages_sent,
                    self.messages_sent_by_class.protected,
                    self.messages_sent_by_class.normal,
                    self.messages_sent_by_class.low
                ),
            );
            row("latency end-to-end", lat(&self.latency_us));
            row("latency send→reply", lat(&self.send_latency_us));
            row(
                "lanes",
                format!(
                    "stream {} · datagram {}",
                    self.deliveries_stream, self.deliveries_datagram
                ),
            );
            let delivered = self.deliveries_stream + self.deliveries_datagram;
            // Packets are QUIC connection statistics; a WebSocket member has none to read.
            if self.transport != "websocket" {
                row(
                    "packets",
                    format!(
                        "{} to members ({:.2} messages per packet) · {} from members",
                        self.packets_to_members,
                        delivered as f64 / self.packets_to_members.max(1) as f64,
                        self.packets_from_members
                    ),
                );
            }
            row(
                "gaps (client)",
                format!("low {} · normal {}", self.gap_low, self.gap_normal),
            );
            if let Some(shed) = &self.server_shed {
                let text = if shed.is_empty() {
                    "none".to_owned()
                } else {
                    shed.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                row("roomcast_shed_total", text);
            }
            if let Some(n) = self.server_too_slow {
                row("too_slow disconnects (server)", n.to_string());
            }
            row(
                "send errors",
                format!(
                    "{}; skipped (inflight full) {}; abandoned {}",
                    map(&self.send_errors),
                    self.sends_skipped,
                    self.sends_abandoned
                ),
            );
        }
        row(
            "disconnects",
            format!("{} ({})", self.disconnects, map(&self.disconnect_reasons)),
        );
        if let Some(o) = &self.overload {
            for (name, r, gaps, disc, l, n) in [
                (
                    "fast",
                    &o.fast,
                    o.fast_gaps,
                    o.fast_disconnects,
                    &o.fast_latency_us,
                    o.fast_members,
                ),
                (
                    "slow",
                    &o.slow,
                    o.slow_gaps,
                    o.slow_disconnects,
                    &o.slow_latency_us,
                    o.slow_members,
                ),
            ] {
                row(
                    &format!("{name} members ({n})"),
                    format!(
                        "delivered protected {} · normal {} · low {}; gaps low {} normal {}; disconnects {}",
                        ratio(r.protected),
                        ratio(r.normal),
                        ratio(r.low),
                        gaps[0],
                        gaps[1],
                        disc
                    ),
                );
                row(&format!("{name} latency"), lat(l));
            }
            row(
                "publisher send p99",
                format!("{} µs", o.send_latency_p99_us),
            );
        }
        match &self.server {
            Some(u) => {
                let per = if self.churn.is_some() {
                    "per connect+join"
                } else {
                    "per delivery"
                };
                row(
                    "server CPU",
                    format!(
                        "{:.3} s ({:.2} cores) · {:.3} µs {per} · {:.2} s per million",
                        u.cpu_secs,
                        u.cpu_cores,
                        u.cpu_us_per_delivery,
                        u.cpu_secs_per_million_deliveries
                    ),
                );
                if self.churn.is_some() {
                    row(
                        "server RSS",
                        format!("start {} KiB · end {} KiB", u.rss_start_kib, u.rss_end_kib),
                    );
                } else {
                    row(
                        "server RSS",
                        format!(
                            "start {} KiB · idle {} KiB · end {} KiB · per connection idle {:.1} KiB, end {:.1} KiB",
                            u.rss_start_kib,
                            u.rss_idle_kib,
                            u.rss_end_kib,
                            u.rss_idle_per_connection_kib,
                            u.rss_end_per_connection_kib
                        ),
                    );
                }
            }
            None => row("server CPU", "not measured (no --server-pid)".into()),
        }
        // ---- cluster runs ----
        if self.churn.is_none() && self.server_cpu_secs > 0.0 {
            row(
                "deliveries per server CPU-s",
                format!(
                    "{:.0}  (all server processes: {:.3} s; {})",
                    self.deliveries_per_server_cpu_sec,
                    self.server_cpu_secs,
                    self.server_processes
                        .iter()
                        .map(|p| format!("{} {:.3} s", p.name, p.cpu_secs))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if let Some(c) = &self.cluster {
            let list = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let opt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.1}"));
            row(
                "relays",
                format!(
                    "{} on nats-server {}; members {:?}; deliveries {:?}",
                    c.relays, c.nats_version, c.members_per_relay, c.deliveries_per_relay
                ),
            );
            row(
                "live messages per relay",
                format!(
                    "published {} · received {}",
                    list(&c.live_published_per_relay),
                    list(&c.live_received_per_relay)
                ),
            );
            row(
                "NATS bytes per message",
                format!(
                    "{} (nats-server /varz; {} messages through it per message) · relays' own count {} (ratio {})",
                    opt(c.nats_bytes_per_message),
                    c.nats_messages_per_message
                        .map_or("n/a".into(), |v| format!("{v:.2}")),
                    opt(c.relay_counted_bytes_per_message),
                    c.relay_to_nats_bytes
                        .map_or("n/a".into(), |v| format!("{v:.3}"))
                ),
            );
        }
        // ---- end cluster runs ----
        if let Some(k) = &self.soak {
            if !k.samples.is_empty() {
                row(
                    "server RSS through the load",
                    format!(
                        "{} KiB at {:.0} s → {} KiB at the end: {:+} KiB ({:+.2} %); trend {:+.0} KiB/h ({:+.2} %/h); max {} KiB; {} readings every {} s",
                        k.rss_from_kib,
                        k.from_secs,
                        k.rss_last_kib,
                        k.growth_kib,
                        k.growth_pct,
                        k.growth_kib_per_hour,
                        k.growth_pct_per_hour,
                        k.rss_max_kib,
                        k.samples.len(),
                        k.rss_every_secs
                    ),
                );
            }
            if let Some(sc) = &k.scrapes {
                row(
                    "/metrics scrapes",
                    format!(
                        "{} every {} s ({} failed): p50 {:.1} ms · max {:.1} ms; largest page {} KiB",
                        sc.ok,
                        sc.every_secs,
                        sc.failed,
                        sc.duration_us.p50 as f64 / 1000.0,
                        sc.duration_us.max as f64 / 1000.0,
                        sc.bytes_max / 1024
                    ),
                );
            }
        }
        row(
            "harness CPU · machine load",
            format!(
                "{:.3} s · load average {} at the start",
                self.client_cpu_secs,
                self.load_average_at_start
                    .map_or("unknown".into(), |l| format!("{l:.2}"))
            ),
        );
        if let Some(f) = &self.kept_folder {
            row("kept", f.clone());
        }
        s
    }
}
