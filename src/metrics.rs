//! Metric names, their help text, and the Prometheus recorder.
//!
//! Code records through the `metrics` facade with these constants. Labels never carry room or
//! user ids (unbounded cardinality); they carry classes, lanes, reasons and routes.
//!
//! Memory: the Prometheus recorder keeps every histogram sample until the next render or upkeep
//! folds it into the buckets, so [`upkeep`] runs on a timer the server owns (every
//! [`UPKEEP_EVERY`]), and a relay nobody scrapes holds at most that interval's samples. The
//! delivery path records per write, not per message: counters add a write's tallies through
//! handles registered once, and its two histograms take one write in
//! [`HISTOGRAM_SAMPLE_EVERY`] per connection.

use crate::protocol::Class;
use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// Gauge: open client connections (authenticated), by `transport`.
pub const CONNECTIONS: &str = "roomcast_connections";
// ---- connection opening ----
/// Gauge: connections in their opening (QUIC handshake, hello, token check), not yet counted in
/// [`CONNECTIONS`].
pub const CONNECTIONS_HANDSHAKING: &str = "roomcast_connections_handshaking";
/// Counter: connection attempts answered with a QUIC Retry (address validation under load).
pub const HANDSHAKES_RETRIED: &str = "roomcast_handshakes_retried_total";
/// Counter: connection attempts refused because `transport.max_handshakes` were in progress.
pub const HANDSHAKES_REFUSED: &str = "roomcast_handshakes_refused_total";
/// Gauge: open admin HTTP connections.
pub const ADMIN_CONNECTIONS: &str = "roomcast_admin_connections";
/// Counter: admin HTTP connections refused because `admin.max_connections` were open.
pub const ADMIN_CONNECTIONS_REFUSED: &str = "roomcast_admin_connections_refused_total";
// ---- end connection opening ----
/// Counter: connections accepted (before authentication).
pub const CONNECTIONS_ACCEPTED: &str = "roomcast_connections_accepted_total";
/// Counter: connections closed, by `reason` and `transport`.
pub const CONNECTIONS_CLOSED: &str = "roomcast_connections_closed_total";
/// Gauge: live rooms.
pub const ROOMS: &str = "roomcast_rooms";
/// Gauge: room memberships (a user in two rooms counts twice).
pub const MEMBERS: &str = "roomcast_members";
/// Counter: messages accepted for fan-out, by `class` and `source` (client/admin).
pub const MESSAGES_IN: &str = "roomcast_messages_in_total";
/// Counter: message deliveries written to connections, by `class`, `lane` (stream/datagram) and
/// `transport` (quic/webtransport/websocket).
pub const MESSAGES_OUT: &str = "roomcast_messages_out_total";
/// Counter: event bytes written to connections, by `lane` and `transport`.
pub const BYTES_OUT: &str = "roomcast_bytes_out_total";
/// Counter: messages a lagging connection skipped, by `class`.
pub const GAP_MESSAGES: &str = "roomcast_gap_messages_total";
/// Counter: messages shed, by `class` and `reason` (ingress: refused by the room's budget).
pub const SHED: &str = "roomcast_shed_total";
/// Counter: members removed by the server, by `reason` (offline, banned, single_room).
pub const MEMBERS_REMOVED: &str = "roomcast_members_removed_total";
/// Counter: rooms destroyed, by `reason`.
pub const ROOMS_DESTROYED: &str = "roomcast_rooms_destroyed_total";
/// Counter: refused client requests, by `error`.
pub const REQUEST_ERRORS: &str = "roomcast_request_errors_total";
/// Counter: refused client tokens.
pub const AUTH_FAILURES: &str = "roomcast_auth_failures_total";
/// Counter: admin API calls, by `route` and `status`.
pub const ADMIN_REQUESTS: &str = "roomcast_admin_requests_total";
/// Counter: connections closed because they could not take their protected traffic.
pub const TOO_SLOW: &str = "roomcast_too_slow_disconnects_total";
/// Histogram: ring entries a delivery task was behind, over its rooms, when it drained for a
/// write; sampled (one write in [`HISTOGRAM_SAMPLE_EVERY`] per connection).
pub const DELIVERY_LAG: &str = "roomcast_delivery_lag_messages";
/// Histogram: time from the publish of the oldest message in a write to the write's completion,
/// seconds; sampled (one write in [`HISTOGRAM_SAMPLE_EVERY`] per connection).
pub const FANOUT_LATENCY: &str = "roomcast_fanout_latency_seconds";
// ---- store faults ----
/// Counter: store writes (transactions and recovery probes) that failed.
pub const STORE_WRITE_FAILURES: &str = "roomcast_store_write_failures_total";
/// Gauge: 1 while the store takes writes, 0 while it is failing (or closed).
pub const STORE_HEALTHY: &str = "roomcast_store_healthy";
// ---- end store faults ----
// ---- cluster: NATS ----
/// Gauge: 1 while the relay is connected to NATS (cluster mode), 0 while it is not.
pub const NATS_CONNECTED: &str = "roomcast_nats_connected";
/// Histogram: NATS round trips of the store (append, KV writes, reads), by `op`, seconds.
pub const NATS_REQUEST_SECONDS: &str = "roomcast_nats_request_seconds";
/// Counter: payload bytes received from NATS.
pub const NATS_BYTES_IN: &str = "roomcast_nats_bytes_in_total";
/// Counter: payload bytes sent to NATS.
pub const NATS_BYTES_OUT: &str = "roomcast_nats_bytes_out_total";
/// Counter: store submits refused because the NATS store's queue was full.
pub const NATS_QUEUE_FULL: &str = "roomcast_nats_store_queue_full_total";
// ---- end cluster: NATS ----
// ---- client-driven resume ----
/// Counter: `Resume` requests, by `outcome`: `replayed` (subscribed with a replay),
/// `confirmed` (the connection already served the membership), `refused`.
pub const RESUMES: &str = "roomcast_resumes_total";
/// Counter: messages resumes replayed, by `from` (`ring`, `history`).
pub const RESUME_REPLAYED: &str = "roomcast_resume_replayed_messages_total";
/// Counter: messages resumes could not replay (the sum of their `Resumed{missed}`).
pub const RESUME_MISSED: &str = "roomcast_resume_missed_messages_total";
// ---- end client-driven resume ----
// ---- cluster: rooms across relays ----
/// Counter: messages this relay published on rooms' live subjects (as their owner).
pub const CLUSTER_MESSAGES_OUT: &str = "roomcast_cluster_messages_out_total";
/// Counter: messages this relay received on rooms' live subjects (from their owners).
pub const CLUSTER_MESSAGES_IN: &str = "roomcast_cluster_messages_in_total";
/// Counter: payload bytes of live messages and forwarded sends sent to NATS.
pub const CLUSTER_BYTES_OUT: &str = "roomcast_cluster_bytes_out_total";
/// Counter: payload bytes of live messages and forwarded sends received from NATS.
pub const CLUSTER_BYTES_IN: &str = "roomcast_cluster_bytes_in_total";
/// Counter: live messages not published because the queue to NATS was full.
pub const CLUSTER_LIVE_DROPPED: &str = "roomcast_cluster_live_dropped_total";
/// Gauge: 1 while the relay's cluster connection to NATS (leases, forwarding, live traffic) is
/// up, 0 while it is not.
pub const CLUSTER_CONNECTED: &str = "roomcast_cluster_connected";
/// Gauge: rooms this relay owns (sequences) now.
pub const CLUSTER_OWNED_ROOMS: &str = "roomcast_cluster_owned_rooms";
/// Gauge: rooms whose live subject this relay is subscribed to (it has members there).
pub const CLUSTER_LIVE_ROOMS: &str = "roomcast_cluster_live_rooms";
/// Counter: room ownerships this relay took or lost, by `change` (acquired, renewal_refused,
/// expired, fenced, released).
pub const CLUSTER_OWNERSHIP_CHANGES: &str = "roomcast_cluster_ownership_changes_total";
/// Counter: sends and admin changes forwarded to a room's owner, by `outcome` (ok, refused,
/// unavailable), and those this relay answered as the owner (`served`, or `busy`: refused at
/// once, too many at once).
pub const CLUSTER_FORWARDED: &str = "roomcast_cluster_forwarded_total";
// ---- end cluster: rooms across relays ----
// ---- cluster: holes in live traffic ----
/// Counter: holes a relay noticed in a room's live traffic, by `outcome` (`filled`: every
/// message of it placed from history; `counted`: some told to the members in a `Gap`).
pub const CLUSTER_LIVE_HOLES: &str = "roomcast_cluster_live_holes_total";
/// Counter: messages of live holes placed from history.
pub const CLUSTER_LIVE_FILLED: &str = "roomcast_cluster_live_filled_messages_total";
/// Counter: messages of live holes that history could not give, by `class` (told to members in
/// a `Gap`: low as low, normal and protected as normal).
pub const CLUSTER_LIVE_MISSED: &str = "roomcast_cluster_live_missed_messages_total";
/// Counter: live messages that arrived twice or late (at or below what the ring had) and were
/// dropped.
pub const CLUSTER_LIVE_DUPLICATES: &str = "roomcast_cluster_live_duplicates_total";
/// Counter: live messages the NATS client dropped because the relay did not take them fast
/// enough (slow consumer); each becomes a hole, filled or counted.
pub const CLUSTER_LIVE_OVERFLOW: &str = "roomcast_cluster_live_overflow_total";
// ---- end cluster: holes in live traffic ----

/// The delivery histograms record one write in this many, per connection (the first of them,
/// counting writes that carried messages).
pub const HISTOGRAM_SAMPLE_EVERY: u32 = 16;
/// How often [`upkeep`] folds the recorded histogram samples into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Registers the help text of every metric with the installed recorder.
pub fn describe() {
    describe_gauge!(
        CONNECTIONS,
        "Open, authenticated client connections, by transport (quic, webtransport, websocket)."
    );
    describe_counter!(
        CONNECTIONS_ACCEPTED,
        "QUIC connections and WebSocket upgrades accepted, before authentication."
    );
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Client connections closed, by reason (normal, shutdown, unauthorized, protocol, lost, handshake_failed, handshake_timeout, hello_timeout) and transport."
    );
    // ---- connection opening ----
    describe_gauge!(
        CONNECTIONS_HANDSHAKING,
        "Connections in their QUIC handshake or before their hello is accepted; not in roomcast_connections."
    );
    describe_counter!(
        HANDSHAKES_RETRIED,
        "Connection attempts answered with a QUIC Retry (transport.retry_threshold handshakes in progress)."
    );
    describe_counter!(
        HANDSHAKES_REFUSED,
        "Connection attempts refused (transport.max_handshakes handshakes in progress)."
    );
    describe_gauge!(ADMIN_CONNECTIONS, "Open admin HTTP connections.");
    describe_counter!(
        ADMIN_CONNECTIONS_REFUSED,
        "Admin HTTP connections refused at once because admin.max_connections were open."
    );
    // ---- end connection opening ----
    describe_gauge!(ROOMS, "Live rooms.");
    describe_gauge!(
        MEMBERS,
        "Room memberships; a user in two rooms counts twice."
    );
    describe_counter!(
        MESSAGES_IN,
        "Messages accepted for fan-out, by class and source (client, admin)."
    );
    describe_counter!(
        MESSAGES_OUT,
        "Message deliveries written to connections, by class, lane (stream, datagram) and transport."
    );
    describe_counter!(
        BYTES_OUT,
        Unit::Bytes,
        "Event bytes written to client connections, by lane and transport."
    );
    describe_counter!(
        GAP_MESSAGES,
        "Messages a lagging connection skipped, by class."
    );
    describe_counter!(
        SHED,
        "Messages shed, by class and reason (ingress = refused by the room's ingress budget)."
    );
    describe_counter!(
        MEMBERS_REMOVED,
        "Members removed by the server, by reason (offline, banned, single_room)."
    );
    describe_counter!(
        ROOMS_DESTROYED,
        "Rooms destroyed, by reason (manual, idle, lifetime, scheduled)."
    );
    describe_counter!(REQUEST_ERRORS, "Client requests refused, by error name.");
    describe_counter!(
        AUTH_FAILURES,
        "Client hellos refused for a missing, expired or forged token."
    );
    describe_counter!(ADMIN_REQUESTS, "Admin API calls, by route and status.");
    describe_counter!(
        TOO_SLOW,
        "Connections closed with too_slow: they could not take their protected traffic in time."
    );
    describe_histogram!(
        DELIVERY_LAG,
        format!(
            "Ring entries a delivery task was behind, over its rooms, when it drained for a write \
             (subscriber lag); sampled: one write in {HISTOGRAM_SAMPLE_EVERY} per connection."
        )
    );
    describe_histogram!(
        FANOUT_LATENCY,
        Unit::Seconds,
        format!(
            "Time from the publish of the oldest message in a write to the write's completion; \
             sampled: one write in {HISTOGRAM_SAMPLE_EVERY} per connection."
        )
    );
    // ---- store faults ----
    describe_counter!(
        STORE_WRITE_FAILURES,
        "Store writes (transactions and recovery probes) that failed, e.g. on a full disk."
    );
    describe_gauge!(
        STORE_HEALTHY,
        "1 while the store takes writes; 0 while it is failing and changes are refused."
    );
    // ---- end store faults ----
    // ---- cluster: NATS ----
    describe_gauge!(
        NATS_CONNECTED,
        "1 while the relay is connected to NATS (cluster mode); 0 while it is not."
    );
    describe_histogram!(
        NATS_REQUEST_SECONDS,
        Unit::Seconds,
        "NATS round trips of the JetStream store, by op (append, kv_update, kv_create, get, ...)."
    );
    describe_counter!(
        NATS_BYTES_IN,
        Unit::Bytes,
        "Payload bytes received from NATS."
    );
    describe_counter!(NATS_BYTES_OUT, Unit::Bytes, "Payload bytes sent to NATS.");
    describe_counter!(
        NATS_QUEUE_FULL,
        "Store submits refused at once because the NATS store's queue was full."
    );
    // ---- end cluster: NATS ----
    // ---- client-driven resume ----
    describe_counter!(
        RESUMES,
        "Resume requests, by outcome (replayed, confirmed: the connection already served the membership, refused)."
    );
    describe_counter!(
        RESUME_REPLAYED,
        "Messages resumes replayed to reconnected members, by where from (ring, history)."
    );
    describe_counter!(
        RESUME_MISSED,
        "Messages resumes could not replay (told to the members in Resumed{missed})."
    );
    // ---- end client-driven resume ----
    // ---- cluster: rooms across relays ----
    describe_counter!(
        CLUSTER_MESSAGES_OUT,
        "Messages published on rooms' live subjects, as their owner (once per message)."
    );
    describe_counter!(
        CLUSTER_MESSAGES_IN,
        "Messages received on rooms' live subjects from their owners (once per message per relay with members)."
    );
    describe_counter!(
        CLUSTER_BYTES_OUT,
        Unit::Bytes,
        "Payload bytes of live messages and forwarded sends sent to NATS."
    );
    describe_counter!(
        CLUSTER_BYTES_IN,
        Unit::Bytes,
        "Payload bytes of live messages and forwarded sends received from NATS."
    );
    describe_counter!(
        CLUSTER_LIVE_DROPPED,
        "Live messages not published because the queue to NATS was full."
    );
    describe_gauge!(
        CLUSTER_OWNED_ROOMS,
        "Rooms this relay owns (sequences) now."
    );
    describe_gauge!(
        CLUSTER_LIVE_ROOMS,
        "Rooms whose live subject this relay is subscribed to (it has members there)."
    );
    describe_counter!(
        CLUSTER_OWNERSHIP_CHANGES,
        "Room ownerships taken or lost, by change (acquired, renewal_refused, expired, fenced, released)."
    );
    describe_counter!(
        CLUSTER_FORWARDED,
        "Sends and admin changes forwarded to a room's owner, by outcome (ok, refused, unavailable); served: answered as the owner; busy: refused at once as the owner, too many at once."
    );
    // ---- end cluster: rooms across relays ----
    // ---- cluster: holes in live traffic ----
    describe_counter!(
        CLUSTER_LIVE_HOLES,
        "Holes noticed in rooms' live traffic, by outcome (filled from history; counted: some told in a Gap)."
    );
    describe_counter!(
        CLUSTER_LIVE_FILLED,
        "Messages of live holes placed from history."
    );
    describe_counter!(
        CLUSTER_LIVE_MISSED,
        "Messages of live holes history could not give, by class (told to members in a Gap)."
    );
    describe_counter!(
        CLUSTER_LIVE_DUPLICATES,
        "Live messages that arrived twice or late and were dropped."
    );
    describe_counter!(
        CLUSTER_LIVE_OVERFLOW,
        "Live messages the NATS client dropped (slow consumer); each becomes a hole, filled or counted."
    );
    // ---- end cluster: holes in live traffic ----
}

/// Folds the histogram samples `handle`'s recorder holds into their buckets every
/// [`UPKEEP_EVERY`] until `stop` completes. Without it they pile up until the next scrape.
pub async fn upkeep(handle: PrometheusHandle, stop: impl Future<Output = ()>) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// A counter registered with the recorder the first time something is added to it, so a series
/// appears on `/metrics` once it has counted something (as with `counter!` at the call site),
/// and looked up by name and labels only that once.
pub(crate) struct LazyCounter {
    name: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    counter: OnceLock<Counter>,
}

impl LazyCounter {
    fn new(name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        LazyCounter {
            name,
            labels: labels.to_vec(),
            counter: OnceLock::new(),
        }
    }

    /// Adds `n`; nothing at all when `n` is 0.
    pub fn add(&self, n: u64) {
        if n > 0 {
            self.counter
                .get_or_init(|| metrics::counter!(self.name, self.labels.as_slice()))
                .increment(n);
        }
    }
}

/// One counter per message class, indexed by `room::ring::class_index` (protected, normal, low).
pub(crate) type PerClass = [LazyCounter; 3];

/// The metrics the delivery tasks record, kept once for the process: looking a metric up by name
/// and labels on every write would cost more than the write's own bookkeeping.
pub(crate) struct DeliveryMetrics {
    /// [`MESSAGES_OUT`] on the stream lane, by class.
    pub stream: PerClass,
    /// [`MESSAGES_OUT`] on the datagram lane, by class.
    pub datagram: PerClass,
    /// [`SHED`] with reason `lag`, by class.
    pub shed_lag: PerClass,
    /// [`SHED`] with reason `overrun`, by class.
    pub shed_overrun: PerClass,
    /// [`SHED`] of low messages with reason `datagram_buffer`.
    pub shed_datagram: LazyCounter,
    /// [`GAP_MESSAGES`], by class.
    pub gaps: PerClass,
    /// [`BYTES_OUT`] on the stream lane.
    pub stream_bytes: LazyCounter,
    /// [`BYTES_OUT`] on the datagram lane.
    pub datagram_bytes: LazyCounter,
    /// [`DELIVERY_LAG`].
    pub lag: Histogram,
    /// [`FANOUT_LATENCY`].
    pub latency: Histogram,
}

/// The transports a delivery is labelled with (`transport`), in the order of their metric sets.
pub(crate) const TRANSPORTS: [&str; 3] = ["quic", "webtransport", "websocket"];

/// The delivery metrics of connections of one `transport` (one of [`TRANSPORTS`]; anything else
/// counts as the first); the histograms are registered with the recorder installed when this is
/// first asked for (the server installs its recorder before it accepts a connection).
pub(crate) fn delivery(transport: &str) -> &'static DeliveryMetrics {
    static METRICS: [OnceLock<DeliveryMetrics>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = TRANSPORTS.iter().position(|t| *t == transport).unwrap_or(0);
    let t = TRANSPORTS[i];
    METRICS[i].get_or_init(|| {
        // In `class_index` order.
        const CLASSES: [Class; 3] = [Class::Protected, Class::Normal, Class::Low];
        let out = |lane| {
            CLASSES.map(|c| {
                LazyCounter::new(
                    MESSAGES_OUT,
                    &[("class", c.as_str()), ("lane", lane), ("transport", t)],
                )
            })
        };
        let by_class = |name, key, value| {
            CLASSES.map(|c| match key {
                Some(key) => LazyCounter::new(name, &[("class", c.as_str()), (key, value)]),
                None => LazyCounter::new(name, &[("class", c.as_str())]),
            })
        };
        DeliveryMetrics {
            stream: out("stream"),
            datagram: out("datagram"),
            shed_lag: by_class(SHED, Some("reason"), "lag"),
            shed_overrun: by_class(SHED, Some("reason"), "overrun"),
            shed_datagram: LazyCounter::new(
                SHED,
                &[("class", "low"), ("reason", "datagram_buffer")],
            ),
            gaps: by_class(GAP_MESSAGES, None, ""),
            stream_bytes: LazyCounter::new(BYTES_OUT, &[("lane", "stream"), ("transport", t)]),
            datagram_bytes: LazyCounter::new(BYTES_OUT, &[("lane", "datagram"), ("transport", t)]),
            lag: metrics::histogram!(DELIVERY_LAG),
            latency: metrics::histogram!(FANOUT_LATENCY),
        }
    })
}

/// Picks the writes a connection records in the delivery histograms: the first of every
/// [`HISTOGRAM_SAMPLE_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    seen: u32,
}

impl Sampler {
    /// Counts one write; true when it is to be recorded.
    pub fn take(&mut self) -> bool {
        let due = self.seen == 0;
        self.seen = (self.seen + 1) % HISTOGRAM_SAMPLE_EVERY;
        due
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle; later calls return
/// the same handle. `None` if another recorder was installed first.
pub fn prometheus() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(FANOUT_LATENCY.to_owned()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(DELIVERY_LAG.to_owned()),
                    &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0],
                )
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_takes_the_first_write_of_every_run() {
        let mut s = Sampler::default();
        let taken: Vec<usize> = (0..50).filter(|_| s.take()).collect();
        let every = HISTOGRAM_SAMPLE_EVERY as usize;
        assert_eq!(taken, vec![0, every, 2 * every, 3 * every]);
    }
}
