//! Metric names, their help text, and the Prometheus recorder.
//!
//! Code records through the `metrics` facade with these constants. Labels never carry room or
//! user ids (unbounded cardinality); they carry classes, lanes, reasons and routes.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

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
/// Histogram: how many entries a delivery task was behind its room's ring when it woke.
pub const DELIVERY_LAG: &str = "roomcast_delivery_lag_messages";
/// Histogram: time from publish to the delivery write, seconds.
pub const FANOUT_LATENCY: &str = "roomcast_fanout_latency_seconds";
// ---- store faults ----
/// Counter: store writes (transactions and recovery probes) that failed.
pub const STORE_WRITE_FAILURES: &str = "roomcast_store_write_failures_total";
/// Gauge: 1 while the store takes writes, 0 while it is failing (or closed).
pub const STORE_HEALTHY: &str = "roomcast_store_healthy";
// ---- end store faults ----

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
        "Ring entries a delivery task was behind when it woke (subscriber lag, ring depth)."
    );
    describe_histogram!(
        FANOUT_LATENCY,
        Unit::Seconds,
        "Time from a message's publish to the write that delivers it."
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
