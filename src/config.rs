//! Configuration: documented defaults, a TOML file that may override any of them, and validation.
//!
//! Precedence is flags over environment over file over defaults; `main.rs` applies the flags and
//! environment (through clap), this module the file and the defaults, so tests build a [`Config`]
//! directly and never touch the environment.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners and the data folder.
    pub server: ServerSection,
    /// Certificates.
    pub tls: TlsSection,
    /// Client tokens and the admin key.
    pub auth: AuthSection,
    /// Room lifecycle, membership and presence.
    pub rooms: Rooms,
    /// Limits from the specification.
    pub limits: Limits,
    /// The durable store and history.
    pub store: StoreSection,
    /// QUIC transport tuning.
    pub transport: Transport,
    /// The admin HTTP listener.
    pub admin: AdminSection,
    /// The public web listener: WebSocket, the JavaScript SDK and the demo page.
    pub web: Web,
    // ---- [cluster] ----
    /// Cluster mode: the store in NATS JetStream instead of the embedded file.
    pub cluster: ClusterSection,
    // ---- end [cluster] ----
}

// ---- [cluster] ----
/// `[cluster]`: the NATS servers and how to reach them. No `nats` URL: a single node on the
/// embedded store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// NATS server URLs (`nats://host:port`, `tls://host:port`); empty: single node.
    pub nats: Vec<String>,
    /// This relay's node id; empty: generated once and kept in the data folder (`node.id`).
    pub node_id: String,
    /// Prefix of every stream, bucket and subject roomcast makes, so several deployments can
    /// share one NATS account.
    pub prefix: String,
    /// Replicas of the streams and buckets (1, or 3 on a NATS cluster of three or more).
    pub replicas: usize,
    /// A NATS request (an append, a KV write, a read) not answered within this fails, ms.
    pub request_timeout_ms: u64,
    /// NATS credentials file (`.creds`: a user JWT and its nkey seed).
    pub creds: String,
    /// NATS user name (with `password`).
    pub user: String,
    /// NATS password.
    pub password: String,
    /// NATS token.
    pub token: String,
    /// File holding an nkey seed (`SU...`) to authenticate with.
    pub nkey_seed_file: String,
    /// PEM CA to trust for TLS to NATS (besides the system roots); also makes TLS required.
    pub tls_ca: String,
    /// PEM client certificate for TLS to NATS (with `tls_key`).
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// How long a room's ownership lease lasts without a renewal, ms: the owner renews it every
    /// third of it, and a dead owner's rooms move to a live relay within about this plus a third.
    pub lease_ttl_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            nats: Vec::new(),
            node_id: String::new(),
            prefix: "roomcast".into(),
            replicas: 1,
            request_timeout_ms: 5000,
            creds: String::new(),
            user: String::new(),
            password: String::new(),
            token: String::new(),
            nkey_seed_file: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            lease_ttl_ms: 10_000,
        }
    }
}

impl ClusterSection {
    /// Whether cluster mode is on.
    pub fn enabled(&self) -> bool {
        !self.nats.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !self.enabled() {
            return Ok(());
        }
        for url in &self.nats {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok || url.len() < 10 {
                return bad(format!(
                    "cluster.nats: {url:?} is not a NATS URL (nats://host:port or tls://host:port)"
                ));
            }
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 32
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !prefix_ok {
            return bad("cluster.prefix must be 1..=32 of A-Z a-z 0-9 _ -".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("cluster.replicas must be 1..=5".into());
        }
        if self.request_timeout_ms == 0 {
            return bad("cluster.request_timeout_ms must be above 0".into());
        }
        if !(1_000..=600_000).contains(&self.lease_ttl_ms) {
            return bad("cluster.lease_ttl_ms must be 1000..=600000".into());
        }
        if self.user.is_empty() != self.password.is_empty() {
            return bad("cluster.user and cluster.password must be set together".into());
        }
        let ways = [
            !self.creds.is_empty(),
            !self.user.is_empty(),
            !self.token.is_empty(),
            !self.nkey_seed_file.is_empty(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return bad(
                "cluster: set at most one of creds, user/password, token and nkey_seed_file".into(),
            );
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return bad("cluster.tls_cert and cluster.tls_key must be set together".into());
        }
        let id_ok = self.node_id.len() <= 64
            && self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !id_ok {
            return bad("cluster.node_id must be at most 64 of A-Z a-z 0-9 _ -".into());
        }
        Ok(())
    }
}
// ---- end [cluster] ----

// ---- [admin] ----
/// `[admin]`: the admin HTTP listener's timeouts and connection cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// A complete request head must arrive within this of the connection's start or of the end
    /// of its previous response (so also the keep-alive idle timeout), ms.
    pub header_timeout_ms: u64,
    /// A request body must arrive within this of its head, ms.
    pub body_timeout_ms: u64,
    /// Admin connections open at once; past it new ones are refused at once.
    pub max_connections: usize,
}

impl Default for AdminSection {
    fn default() -> Self {
        AdminSection {
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_connections: 4096,
        }
    }
}
// ---- end [admin] ----

/// `[server]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// UDP address of the QUIC listener.
    pub quic: SocketAddr,
    /// TCP address of the admin API and metrics.
    pub admin: SocketAddr,
    /// The data folder.
    pub data: PathBuf,
    /// TCP address of the public web listener: `"quic"` (the QUIC address and port, on TCP),
    /// `"off"`, or an address.
    pub web: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            // Loopback: a relay started with no configuration is reachable from this machine
            // only, since its development certificate is for local names. See `warnings`.
            quic: SocketAddr::from(([127, 0, 0, 1], 7700)),
            admin: SocketAddr::from(([127, 0, 0, 1], 7780)),
            data: PathBuf::from("roomcast-data"),
            web: "quic".into(),
        }
    }
}

impl ServerSection {
    /// Where the public web listener binds, given the bound QUIC address; `None` when it is off.
    /// `"quic"` takes the QUIC listener's IP and port (a QUIC port of 0 in the configuration
    /// leaves the web port to the kernel too, so tests never collide).
    pub fn web_addr(&self, quic_bound: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
        match self.web.as_str() {
            "off" => Ok(None),
            "quic" => {
                let port = if self.quic.port() == 0 {
                    0
                } else {
                    quic_bound.port()
                };
                Ok(Some(SocketAddr::new(self.quic.ip(), port)))
            }
            addr => addr.parse().map(Some).map_err(|_| {
                ConfigError::Invalid(format!(
                    "server.web must be \"quic\", \"off\" or an address like 0.0.0.0:7700, not {addr:?}"
                ))
            }),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain; empty: a development CA and certificate in the data folder.
    pub cert: String,
    /// PEM private key of `cert`.
    pub key: String,
    /// Extra host names or IP addresses for the generated development certificate.
    pub dev_names: Vec<String>,
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// Admin bearer key; empty: `ROOMCAST_ADMIN_KEY`, else `admin.key` in the data folder.
    pub admin_key: String,
    /// HS256 token secret; empty: `ROOMCAST_TOKEN_SECRET`, else `token.secret` in the data folder.
    pub token_secret: String,
    /// Accept a token of the form `dev:<user id>` without a signature. Never in production.
    pub dev_mode: bool,
    /// Clock skew tolerated on token expiry, in seconds.
    pub leeway_secs: u64,
    /// Longest lifetime of a token minted through the admin API, in seconds.
    pub max_token_ttl_secs: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            admin_key: String::new(),
            token_secret: String::new(),
            dev_mode: false,
            leeway_secs: 30,
            max_token_ttl_secs: 30 * 24 * 3600,
        }
    }
}

/// `[rooms]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rooms {
    /// Minutes without a join, leave or message before an idle-policy room is destroyed (1..=1440).
    pub idle_destroy_minutes: u32,
    /// A member with no connection for this long is removed, in milliseconds.
    pub offline_grace_ms: u64,
    /// How often timers (idle, lifetime, scheduled destroy, offline exit) are checked, ms.
    pub timer_tick_ms: u64,
    /// Joining a room leaves the user's previous room, on all devices.
    pub single_room: bool,
    /// Above this many members, join/leave events become a periodic member count.
    pub member_events_max: usize,
    /// Interval of the member count update in large rooms, ms.
    pub member_count_interval_ms: u64,
    /// A join of a missing room creates it (off: ROOM_NOT_FOUND).
    pub join_creates: bool,
}

impl Default for Rooms {
    fn default() -> Self {
        Rooms {
            idle_destroy_minutes: 60,
            offline_grace_ms: 30_000,
            timer_tick_ms: 1_000,
            single_room: false,
            member_events_max: 500,
            member_count_interval_ms: 5_000,
            join_creates: false,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest frame body on a stream, in bytes.
    pub max_frame: u32,
    /// Largest message body from a client, in bytes.
    pub client_body: usize,
    /// Largest message body through the admin API, in bytes.
    pub admin_body: usize,
    /// Rooms one user may be in at once.
    pub rooms_per_user: usize,
    /// Slots in each room's broadcast ring: how far a member may lag before it skips.
    pub ring_capacity: usize,
    /// History messages for a join that asks for 0 (the default).
    pub history_default: u32,
    /// Most history messages a join may ask for.
    pub history_max: u32,
    /// Most members in one admin member listing.
    pub member_page_max: usize,
    /// Most user ids in one membership check.
    pub member_check_max: usize,
    /// Members shown in a client's room info.
    pub room_info_members: usize,
    /// Most rooms in one admin send.
    pub rooms_per_send: usize,
    /// Most rooms destroyed in one admin call.
    pub rooms_per_destroy: usize,
    /// Largest admin API request body, in bytes.
    pub admin_request_body: usize,
    /// Client sends per second per connection (token bucket rate).
    pub send_rate_per_sec: u32,
    /// Client sends a connection may burst.
    pub send_burst: u32,
    /// Window of the per-room ingress budget, ms.
    pub room_budget_window_ms: u64,
    /// Messages per window per room, all classes.
    pub room_budget_total: u32,
    /// Part of the total that low-priority messages may not use.
    pub room_budget_reserved: u32,
    /// Extra messages per window that only protected messages may use.
    pub room_budget_protected_extra: u32,
    /// Admin API calls per second (token bucket rate).
    pub admin_rate_per_sec: u32,
    /// Admin API calls that may burst.
    pub admin_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: crate::protocol::DEFAULT_MAX_FRAME,
            client_body: 16 * 1024,
            admin_body: 128 * 1024,
            rooms_per_user: 8,
            ring_capacity: 4096,
            history_default: 10,
            history_max: 50,
            member_page_max: 500,
            member_check_max: 1000,
            room_info_members: 20,
            rooms_per_send: 10,
            rooms_per_destroy: 100,
            admin_request_body: 512 * 1024,
            send_rate_per_sec: 10,
            send_burst: 20,
            room_budget_window_ms: 200,
            room_budget_total: 40,
            room_budget_reserved: 20,
            room_budget_protected_extra: 20,
            admin_rate_per_sec: 200,
            admin_burst: 400,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// `sync`: replies wait for the fsync; `batched`: fsync within `flush_ms`.
    pub durability: crate::store::Durability,
    /// Longest time between fsyncs in batched mode, ms.
    pub flush_ms: u64,
    /// Messages kept per room (the newest).
    pub history_max: usize,
    /// Oldest message kept, seconds.
    pub history_max_age_secs: u64,
    /// Keep low-priority messages in history too.
    pub history_low: bool,
    /// How long a sender may recall its own message, ms.
    pub recall_window_ms: u64,
    /// Page cache of the embedded store, MiB: the most memory it keeps of the file.
    pub cache_mb: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            durability: crate::store::Durability::Sync,
            flush_ms: 10,
            history_max: 1000,
            history_max_age_secs: 7 * 24 * 3600,
            history_low: false,
            recall_window_ms: 120_000,
            cache_mb: 1024,
        }
    }
}

/// `[transport]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Transport {
    /// UDP receive buffer asked of the kernel, in bytes.
    pub udp_recv_buffer: usize,
    /// UDP send buffer asked of the kernel, in bytes.
    pub udp_send_buffer: usize,
    /// QUIC keep-alive interval, in milliseconds.
    pub keep_alive_ms: u64,
    /// A connection silent this long is dead, in milliseconds.
    pub idle_timeout_ms: u64,
    /// Time a client has to finish the handshake and send its hello, in milliseconds.
    pub hello_timeout_ms: u64,
    // ---- handshake admission ----
    /// Time a client has to finish the QUIC handshake, in milliseconds (`hello_timeout_ms` bounds
    /// it too).
    pub handshake_timeout_ms: u64,
    /// Handshakes in progress from which clients must validate their address with a QUIC Retry
    /// first (0: always; `max_handshakes` or more: never).
    pub retry_threshold: usize,
    /// Handshakes in progress from which new connections are refused.
    pub max_handshakes: usize,
    // ---- end handshake admission ----
    /// Receive window of the control stream, in bytes.
    pub stream_window: u32,
    /// Receive window of a whole connection, in bytes.
    pub conn_window: u32,
    /// Unacknowledged bytes the server buffers per connection.
    pub send_window: u64,
    /// Datagram bytes queued per connection before the oldest are dropped.
    pub datagram_send_buffer: usize,
    /// Most event bytes one delivery write gathers.
    pub delivery_batch_bytes: usize,
    /// Time a closing server waits for connections to finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// A delivery write that cannot complete this long closes the connection as too slow, ms.
    pub slow_close_ms: u64,
    /// QUIC endpoints (UDP sockets with SO_REUSEPORT on one port); 0 = one per core.
    pub endpoints: usize,
    /// Least time between two delivery writes to one connection, microseconds (0 = off, default 50 ms).
    pub delivery_window_us: u64,
    /// Ask clients to acknowledge once per this many packets (QUIC ACK frequency; 2 = QUIC's default).
    pub ack_every_packets: u32,
    /// Hand quinn's sends to the kernel in GSO batches of up to 10 datagrams.
    pub segmentation_offload: bool,
}

impl Default for Transport {
    fn default() -> Self {
        Transport {
            udp_recv_buffer: 8 << 20,
            udp_send_buffer: 8 << 20,
            keep_alive_ms: 10_000,
            idle_timeout_ms: 30_000,
            hello_timeout_ms: 10_000,
            handshake_timeout_ms: 5_000,
            retry_threshold: 128,
            max_handshakes: 1024,
            stream_window: 64 * 1024,
            conn_window: 128 * 1024,
            send_window: 256 * 1024,
            datagram_send_buffer: 256 * 1024,
            delivery_batch_bytes: 64 * 1024,
            shutdown_grace_ms: 2_000,
            slow_close_ms: 5_000,
            endpoints: 1,
            delivery_window_us: 50_000,
            ack_every_packets: 2,
            segmentation_offload: true,
        }
    }
}

/// Which peers the public web listener serves plain HTTP (without TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttp {
    /// Peers on a loopback address only (a page on `http://127.0.0.1` is a secure context).
    Loopback,
    /// Every peer (behind a TLS-terminating proxy).
    Any,
    /// None: HTTPS only.
    Never,
}

/// `[web]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Web {
    /// Which peers may speak plain HTTP; everyone else must use TLS.
    pub plain_http: PlainHttp,
    /// Page origins allowed to open a WebSocket or WebTransport session besides the relay's own
    /// and loopback ones (`"*"`: any).
    pub origins: Vec<String>,
    /// Open TCP connections on the public listener at most; more are refused at accept.
    pub max_connections: usize,
    /// Bytes a WebSocket's send queue holds before its delivery waits (and its room's ring
    /// backlog is shed, low first).
    pub send_queue_bytes: usize,
    /// Interval of the server's WebSocket pings, ms.
    pub ping_ms: u64,
    /// A WebSocket with nothing received (pongs included) for this long is closed, ms.
    pub idle_timeout_ms: u64,
}

impl Default for Web {
    fn default() -> Self {
        Web {
            plain_http: PlainHttp::Loopback,
            origins: Vec::new(),
            max_connections: 50_000,
            send_queue_bytes: 256 * 1024,
            ping_ms: 10_000,
            idle_timeout_ms: 30_000,
        }
    }
}

/// One comment per key, printed by `roomcast serve --print-config`.
const KEY_DOCS: &[(&str, &str)] = &[
    ("server", "Listeners and the data folder."),
    (
        "server.quic",
        "UDP address of the QUIC listener: ALPN roomcast/1 for native clients, h3 for WebTransport. The default is loopback only; \"0.0.0.0:7700\" or \"[::]:7700\" listens on every interface (then set tls.cert and tls.key, or tls.dev_names).",
    ),
    (
        "server.admin",
        "TCP address of the admin API, /metrics, /healthz and /openapi.json.",
    ),
    (
        "server.data",
        "Data folder: development certificates, generated secrets, server address.",
    ),
    (
        "server.web",
        "TCP address of the public web listener (WebSocket at /ws, the SDK at /roomcast.js, the demo page at /): \"quic\" = the QUIC address and port on TCP, \"off\", or an address.",
    ),
    (
        "web",
        "The public web listener. It never serves the admin API.",
    ),
    (
        "web.plain_http",
        "Peers allowed plain HTTP: \"loopback\" (a page on http://127.0.0.1 is a secure context, so WebTransport works from it), \"any\" (behind a TLS proxy) or \"never\". Everyone else must use HTTPS on the same port.",
    ),
    (
        "web.origins",
        "Page origins allowed to open WebSocket and WebTransport sessions besides the relay's own and loopback ones, e.g. [\"https://example.com\"]; \"*\" allows any. Requests without an Origin (non-browser clients) are allowed.",
    ),
    (
        "web.max_connections",
        "Open TCP connections on the public listener at most; more are closed at accept.",
    ),
    (
        "web.send_queue_bytes",
        "Bytes a WebSocket's send queue holds; when it is full, delivery waits and the room's backlog for that socket is shed (low first, then normal, with an exact Gap); protected traffic that cannot wait closes it as too_slow.",
    ),
    (
        "web.ping_ms",
        "Interval of the server's WebSocket pings, ms.",
    ),
    (
        "web.idle_timeout_ms",
        "A WebSocket with nothing received (pongs included) for this long is closed, ms.",
    ),
    (
        "tls",
        "Certificates. Leave cert and key empty to use a development CA generated in the data folder.",
    ),
    ("tls.cert", "PEM certificate chain file."),
    ("tls.key", "PEM private key file of the certificate."),
    (
        "tls.dev_names",
        "Extra host names or IP addresses for the generated development certificate.",
    ),
    (
        "auth",
        "Client tokens (HS256 JWT, sub = user id, exp required) and the admin key.",
    ),
    (
        "auth.admin_key",
        "Admin bearer key. Empty: ROOMCAST_ADMIN_KEY, else admin.key in the data folder (generated once).",
    ),
    (
        "auth.token_secret",
        "HS256 secret. Empty: ROOMCAST_TOKEN_SECRET, else token.secret in the data folder (generated once).",
    ),
    (
        "auth.dev_mode",
        "Accept the token \"dev:<user id>\" without a signature. Development only.",
    ),
    (
        "auth.leeway_secs",
        "Clock skew tolerated on token expiry, seconds.",
    ),
    (
        "auth.max_token_ttl_secs",
        "Longest lifetime of a token minted by POST /v1/tokens, seconds.",
    ),
    ("rooms", "Room lifecycle, membership and presence."),
    (
        "rooms.idle_destroy_minutes",
        "Minutes without a join, leave or message before a room with the idle policy is destroyed (1..=1440).",
    ),
    (
        "rooms.offline_grace_ms",
        "A member whose connections are all gone for this long is removed, ms.",
    ),
    (
        "rooms.timer_tick_ms",
        "How often idle, lifetime and scheduled destroys and offline exits are checked, ms.",
    ),
    (
        "rooms.single_room",
        "Joining a room leaves the user's previous room on all its devices (Kicked{single_room}).",
    ),
    (
        "rooms.member_events_max",
        "Above this many members, join/leave events become a periodic MemberCount.",
    ),
    (
        "rooms.member_count_interval_ms",
        "Interval of the MemberCount update in large rooms, ms.",
    ),
    (
        "rooms.join_creates",
        "A join of a missing room creates it instead of failing with ROOM_NOT_FOUND.",
    ),
    ("limits", "Limits from the specification; each is enforced."),
    (
        "limits.max_frame",
        "Largest frame body on a QUIC stream, bytes. Larger frames close the connection.",
    ),
    (
        "limits.client_body",
        "Largest message body from a client, bytes (TOO_LARGE above).",
    ),
    (
        "limits.admin_body",
        "Largest message body through the admin API, bytes.",
    ),
    (
        "limits.rooms_per_user",
        "Rooms one user may be in at once (TOO_MANY_ROOMS above).",
    ),
    (
        "limits.ring_capacity",
        "Slots in each room's broadcast ring: how far a member may lag before it skips (rounded up to a power of two).",
    ),
    (
        "limits.history_default",
        "History messages returned to a join that asks for 0.",
    ),
    (
        "limits.history_max",
        "Most history messages a join may ask for.",
    ),
    (
        "limits.member_page_max",
        "Most members in one admin member listing.",
    ),
    (
        "limits.member_check_max",
        "Most user ids in one membership check.",
    ),
    (
        "limits.room_info_members",
        "Members listed in a client's room info.",
    ),
    ("limits.rooms_per_send", "Most rooms in one admin send."),
    (
        "limits.rooms_per_destroy",
        "Most rooms destroyed in one admin call.",
    ),
    (
        "limits.admin_request_body",
        "Largest admin API request body, bytes.",
    ),
    (
        "limits.send_rate_per_sec",
        "Client sends per second per connection (RATE_LIMITED above).",
    ),
    (
        "limits.send_burst",
        "Client sends a connection may burst above the rate.",
    ),
    (
        "limits.room_budget_window_ms",
        "Window of the per-room ingress budget, ms (the defaults make 200 msg/s).",
    ),
    (
        "limits.room_budget_total",
        "Messages per window per room, all classes; past it, SHED.",
    ),
    (
        "limits.room_budget_reserved",
        "Part of the total reserved for normal and protected messages (low may not use it).",
    ),
    (
        "limits.room_budget_protected_extra",
        "Extra messages per window only protected messages may use.",
    ),
    (
        "limits.admin_rate_per_sec",
        "Admin API calls per second (RATE_LIMITED above).",
    ),
    (
        "limits.admin_burst",
        "Admin API calls that may burst above the rate.",
    ),
    (
        "store",
        "The embedded store (roomcast.redb in the data folder) and history.",
    ),
    (
        "store.durability",
        "\"sync\": a reply waits until its change is fsynced (group commit shares the fsync); \"batched\": replies at once, fsync within flush_ms (a crash may lose that much).",
    ),
    (
        "store.flush_ms",
        "Longest time between fsyncs in batched mode, ms.",
    ),
    ("store.history_max", "Messages kept per room (the newest)."),
    (
        "store.history_max_age_secs",
        "Oldest message kept, seconds.",
    ),
    (
        "store.history_low",
        "Keep low-priority messages in history too.",
    ),
    (
        "store.recall_window_ms",
        "How long a sender may recall its own message, ms (the admin may recall any).",
    ),
    (
        "store.cache_mb",
        "Page cache of the embedded store, MiB (1..=65536): the most memory it keeps of the store file; it fills as history is read and written. Lower it on small machines. Not used in cluster mode.",
    ),
    (
        "transport.endpoints",
        "QUIC endpoints sharing the port (SO_REUSEPORT), each with its own receive path; 0 = one per core. See BENCHMARKS.md.",
    ),
    (
        "transport.delivery_window_us",
        "Least time between two delivery writes to one connection, us (0 = off). A message that finds the connection quiet for that long goes out at once; messages that follow sooner wait for the window's end and share packets. Adds at most this much latency, and only to dense traffic: at 100 msg/s into 1000 members, 50 ms cut the server's CPU per delivery from 9.8 to 6.0 us (5 messages per packet instead of 1.7). At most 100000.",
    ),
    (
        "transport.ack_every_packets",
        "Ask clients (QUIC ACK frequency extension) to acknowledge once per this many packets, within 25 ms: fewer acknowledgements for the server to receive. 2 is QUIC's default; 1..=64.",
    ),
    (
        "transport.segmentation_offload",
        "Send up to 10 datagrams per system call (UDP GSO). On by default: without it a saturated fan-out cost 1.8x the server CPU per delivery. Off saves about 4 KiB per connection (quinn then keeps a send buffer of one datagram instead of ten, ~13 KiB, once traffic has filled it) for servers that hold many mostly idle connections.",
    ),
    (
        "transport.slow_close_ms",
        "A connection whose delivery write cannot complete this long is closed with too_slow, ms (protected messages are never dropped).",
    ),
    (
        "transport",
        "QUIC transport tuning for many small connections.",
    ),
    // ---- [admin] ----
    (
        "admin",
        "The admin HTTP listener (server.admin): timeouts and a connection cap.",
    ),
    (
        "admin.header_timeout_ms",
        "A connection must send a complete request head within this of its start or of the end of its previous response, ms; otherwise it is closed (also the keep-alive idle timeout, and the end of a slowloris client).",
    ),
    (
        "admin.body_timeout_ms",
        "A request body must arrive within this of its head, ms; otherwise 408 and the connection is closed (the call takes no effect).",
    ),
    (
        "admin.max_connections",
        "Admin connections open at once; past it a new one gets 429 and is closed at once.",
    ),
    // ---- end [admin] ----
    // ---- [cluster] ----
    (
        "cluster",
        "Cluster mode: the store in NATS JetStream (streams and KV buckets) instead of the embedded file. No nats URL: a single node. Supported NATS servers: 2.11 and later, with JetStream.",
    ),
    (
        "cluster.nats",
        "NATS server URLs, e.g. [\"nats://127.0.0.1:4222\"] (tls:// for TLS); empty: single node on the embedded store. Also --cluster-nats URL (repeatable, or comma-separated).",
    ),
    (
        "cluster.node_id",
        "This relay's id in the cluster (A-Z a-z 0-9 _ -); empty: generated once and kept in the data folder as node.id.",
    ),
    (
        "cluster.prefix",
        "Prefix of the streams, KV buckets and subjects roomcast makes, so several deployments can share a NATS account.",
    ),
    (
        "cluster.replicas",
        "Replicas of the streams and buckets: 1, or 3 on a NATS cluster of three or more servers.",
    ),
    (
        "cluster.request_timeout_ms",
        "A NATS request (append, KV write, read) not answered within this fails, ms; the relay then answers UNAVAILABLE and refuses writes until NATS answers again.",
    ),
    ("cluster.creds", "NATS credentials file (.creds)."),
    ("cluster.user", "NATS user name (with password)."),
    (
        "cluster.password",
        "NATS password; or the environment variable ROOMCAST_NATS_PASSWORD.",
    ),
    (
        "cluster.token",
        "NATS token; or the environment variable ROOMCAST_NATS_TOKEN.",
    ),
    (
        "cluster.nkey_seed_file",
        "File holding an nkey seed (SU...) to authenticate with.",
    ),
    (
        "cluster.tls_ca",
        "PEM CA to trust for TLS to NATS; setting it requires TLS.",
    ),
    (
        "cluster.tls_cert",
        "PEM client certificate for TLS to NATS (with tls_key).",
    ),
    ("cluster.tls_key", "PEM private key of tls_cert."),
    (
        "cluster.lease_ttl_ms",
        "How long a room's ownership lease (KV bucket <prefix>_leases) lasts without a renewal, ms; the owner renews it every third and stops sequencing a quarter before it runs out. A dead owner's rooms move to a live relay within about 4/3 of it.",
    ),
    // ---- end [cluster] ----
    (
        "transport.udp_recv_buffer",
        "UDP receive buffer asked of the kernel, bytes (the 208 KiB default loses packets at a few hundred connections).",
    ),
    (
        "transport.udp_send_buffer",
        "UDP send buffer asked of the kernel, bytes.",
    ),
    ("transport.keep_alive_ms", "QUIC keep-alive interval, ms."),
    (
        "transport.idle_timeout_ms",
        "A connection silent this long is dead, ms.",
    ),
    (
        "transport.hello_timeout_ms",
        "Time a client has to finish the handshake and send its hello, ms.",
    ),
    // ---- handshake admission ----
    (
        "transport.handshake_timeout_ms",
        "Time a client has to finish the QUIC handshake, ms; an unfinished handshake is dropped. The hello timeout bounds it too.",
    ),
    (
        "transport.retry_threshold",
        "Handshakes in progress from which a new client must first prove its address with a QUIC Retry (one round trip more, no server state until it does); 0 = always, max_handshakes or more = never.",
    ),
    (
        "transport.max_handshakes",
        "Handshakes in progress (QUIC handshake, hello, token check) from which new connections are refused.",
    ),
    // ---- end handshake admission ----
    (
        "transport.stream_window",
        "Receive window of the control stream, bytes.",
    ),
    (
        "transport.conn_window",
        "Receive window of a whole connection, bytes.",
    ),
    (
        "transport.send_window",
        "Unacknowledged bytes buffered per connection, bytes.",
    ),
    (
        "transport.datagram_send_buffer",
        "Datagram bytes queued per connection before the oldest are dropped.",
    ),
    (
        "transport.delivery_batch_bytes",
        "Most event bytes one delivery write gathers (coalescing).",
    ),
    (
        "transport.shutdown_grace_ms",
        "Time a stopping server waits for connections to close, ms.",
    ),
];

/// Every environment variable `serve` reads: the stand-ins for its flags and the secrets. A
/// program that starts a relay with settings of its own removes these from the child's
/// environment.
pub const ENV_VARS: [&str; 6] = [
    "ROOMCAST_CONFIG",
    "ROOMCAST_QUIC",
    "ROOMCAST_ADMIN",
    "ROOMCAST_DATA",
    "ROOMCAST_ADMIN_KEY",
    "ROOMCAST_TOKEN_SECRET",
];

/// The environment variables that stand for `serve`'s flags, with the key each sets.
pub const FLAG_VARS: [(&str, &str); 3] = [
    ("ROOMCAST_QUIC", "server.quic"),
    ("ROOMCAST_ADMIN", "server.admin"),
    ("ROOMCAST_DATA", "server.data"),
];

/// What `serve`'s flags set: `None` for a flag not given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--quic`.
    pub quic: Option<SocketAddr>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
    /// `--data`.
    pub data: Option<PathBuf>,
    /// `--dev-mode[=BOOL]`.
    pub dev_mode: Option<bool>,
    /// `--cluster-nats URL[,URL...]` (empty: not given).
    pub cluster_nats: Vec<String>,
}

/// A configuration and where its secrets came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Layered {
    /// The merged configuration (not validated yet).
    pub config: Config,
    /// The secret keys ([`SECRET_KEYS`]) set from the environment.
    pub secrets_from_env: Vec<&'static str>,
}

impl Config {
    /// The configuration `serve` runs with, by precedence: the `flags` over the environment
    /// (`env` reads a variable: [`FLAG_VARS`] and the secrets of [`SECRET_KEYS`]; an empty value
    /// counts as unset) over the `file` (already read) over the defaults.
    pub fn layered(
        file: Option<Config>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Flags,
    ) -> Result<Layered, ConfigError> {
        let mut config = file.unwrap_or_default();
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let addr = |name: &str| -> Result<Option<SocketAddr>, ConfigError> {
            var(name)
                .map(|v| {
                    v.parse().map_err(|e| {
                        ConfigError::Invalid(format!("{name}={v:?} is not an address: {e}"))
                    })
                })
                .transpose()
        };
        if let Some(v) = flags.quic.or(addr("ROOMCAST_QUIC")?) {
            config.server.quic = v;
        }
        if let Some(v) = flags.admin.or(addr("ROOMCAST_ADMIN")?) {
            config.server.admin = v;
        }
        if let Some(v) = flags
            .data
            .clone()
            .or(var("ROOMCAST_DATA").map(PathBuf::from))
        {
            config.server.data = v;
        }
        if let Some(v) = flags.dev_mode {
            config.auth.dev_mode = v;
        }
        // ---- cluster ----
        let nats_env = || -> Option<Vec<String>> {
            let urls: Vec<String> = var("ROOMCAST_CLUSTER_NATS")?
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            (!urls.is_empty()).then_some(urls)
        };
        if !flags.cluster_nats.is_empty() {
            config.cluster.nats = flags.cluster_nats.clone();
        } else if let Some(urls) = nats_env() {
            config.cluster.nats = urls;
        }
        // ---- end cluster ----
        let mut secrets_from_env = Vec::new();
        for (key, name) in SECRET_KEYS {
            if let Some(v) = var(name)
                && let Some(secret) = config.secret_mut(key)
            {
                *secret = v;
                secrets_from_env.push(key);
            }
        }
        Ok(Layered {
            config,
            secrets_from_env,
        })
    }
}

/// The keys that hold secrets, with the environment variable that sets each. A printed
/// configuration never shows their values.
pub const SECRET_KEYS: [(&str, &str); 4] = [
    ("auth.admin_key", "ROOMCAST_ADMIN_KEY"),
    ("auth.token_secret", "ROOMCAST_TOKEN_SECRET"),
    // ---- [cluster] ----
    ("cluster.password", "ROOMCAST_NATS_PASSWORD"),
    ("cluster.token", "ROOMCAST_NATS_TOKEN"),
    // ---- end [cluster] ----
];

impl Config {
    /// The value of the secret `key` (one of [`SECRET_KEYS`]), to set it from the environment.
    pub fn secret_mut(&mut self, key: &str) -> Option<&mut String> {
        match key {
            "auth.admin_key" => Some(&mut self.auth.admin_key),
            "auth.token_secret" => Some(&mut self.auth.token_secret),
            // ---- [cluster] ----
            "cluster.password" => Some(&mut self.cluster.password),
            "cluster.token" => Some(&mut self.cluster.token),
            // ---- end [cluster] ----
            _ => None,
        }
    }

    /// The configuration for people to read (`serve --print-config`): [`Config::to_commented_toml`]
    /// with every secret value replaced by `""` and a comment saying where it was set:
    /// `from_env` lists the secret keys that came from the environment. Saved as a file, the
    /// output keeps working: an empty secret is read from the environment or the data folder.
    pub fn to_redacted_toml(&self, from_env: &[&str]) -> String {
        let mut shown = self.clone();
        let mut notes = Vec::new();
        for (key, var) in SECRET_KEYS {
            if let Some(value) = shown.secret_mut(key)
                && !value.is_empty()
            {
                value.clear();
                let origin = if from_env.contains(&key) {
                    format!("the environment ({var})")
                } else {
                    "the configuration file".to_owned()
                };
                notes.push((key, format!("Set (value not shown) in {origin}.")));
            }
        }
        shown.commented_toml(|key| {
            notes
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, note)| note.clone())
        })
    }

    /// Things about a valid configuration that an operator should know before it serves: a QUIC
    /// listener on other interfaces than loopback with only the development certificate.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let quic = self.server.quic;
        if !quic.ip().is_loopback() && self.tls.cert.is_empty() {
            let reach = if quic.ip().is_unspecified() {
                "every interface"
            } else {
                "a non-loopback address"
            };
            out.push(format!(
                "QUIC listens on {quic} ({reach}) with the development certificate of the data \
                 folder: remote clients must trust its ca.pem and connect by a name in it \
                 (localhost, 127.0.0.1, ::1 and tls.dev_names); for production set tls.cert \
                 and tls.key"
            ));
        }
        out
    }

    /// The largest event frame the delivery stream carries: a message with the largest admin
    /// body plus room for its envelope (ids, type, sequence number).
    pub fn max_event_frame(&self) -> u32 {
        let body = self.limits.admin_body.max(self.limits.client_body);
        u32::try_from(body + 1024).unwrap_or(u32::MAX)
    }

    /// The store settings.
    pub fn store_config(&self) -> crate::store::StoreConfig {
        crate::store::StoreConfig {
            durability: self.store.durability,
            flush_ms: self.store.flush_ms,
            history_max: self.store.history_max,
            history_max_age_ms: self.store.history_max_age_secs * 1000,
            cache_bytes: self.store.cache_mb << 20,
        }
    }

    // ---- [cluster] ----
    /// The NATS settings of cluster mode, with `node_id` as given (the caller fills in a
    /// generated one when it is empty); `None` for a single node.
    pub fn nats_config(&self) -> Option<crate::store::NatsConfig> {
        use crate::store::NatsAuth;
        let c = &self.cluster;
        if !c.enabled() {
            return None;
        }
        let path = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        let auth = if let Some(p) = path(&c.creds) {
            NatsAuth::Creds(p)
        } else if !c.user.is_empty() {
            NatsAuth::UserPassword(c.user.clone(), c.password.clone())
        } else if !c.token.is_empty() {
            NatsAuth::Token(c.token.clone())
        } else if let Some(p) = path(&c.nkey_seed_file) {
            NatsAuth::NkeySeedFile(p)
        } else {
            NatsAuth::None
        };
        Some(crate::store::NatsConfig {
            servers: c.nats.clone(),
            node_id: c.node_id.clone(),
            prefix: c.prefix.clone(),
            replicas: c.replicas,
            request_timeout: std::time::Duration::from_millis(c.request_timeout_ms),
            auth,
            tls_ca: path(&c.tls_ca),
            tls_client: path(&c.tls_cert).zip(path(&c.tls_key)),
        })
    }
    // ---- end [cluster] ----

    /// The per-room ingress budget settings.
    pub fn budget(&self) -> crate::policy::BudgetConfig {
        let l = &self.limits;
        crate::policy::BudgetConfig {
            window_ms: l.room_budget_window_ms,
            total: l.room_budget_total,
            reserved: l.room_budget_reserved,
            protected_extra: l.room_budget_protected_extra,
        }
    }

    /// Reads a TOML file over the defaults; unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Parses TOML over the defaults.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Checks ranges that the types do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if l.max_frame < 1024 {
            return bad("limits.max_frame must be at least 1024");
        }
        if l.client_body + 1024 > l.max_frame as usize {
            return bad("limits.client_body must be at least 1 KiB below limits.max_frame");
        }
        if l.rooms_per_user == 0 || l.ring_capacity < 16 || l.ring_capacity > 1 << 20 {
            return bad(
                "limits.rooms_per_user must be >= 1 and limits.ring_capacity in 16..=1048576",
            );
        }
        if l.history_default > l.history_max {
            return bad("limits.history_default must not exceed limits.history_max");
        }
        let r = &self.rooms;
        if !(crate::policy::IDLE_MINUTES.0..=crate::policy::IDLE_MINUTES.1)
            .contains(&r.idle_destroy_minutes)
        {
            return bad("rooms.idle_destroy_minutes must be 1..=1440");
        }
        if r.timer_tick_ms == 0 || r.member_count_interval_ms == 0 {
            return bad("rooms.timer_tick_ms and rooms.member_count_interval_ms must be above 0");
        }
        if l.room_budget_window_ms == 0 || l.room_budget_reserved > l.room_budget_total {
            return bad(
                "limits.room_budget_window_ms must be above 0 and room_budget_reserved at most room_budget_total",
            );
        }
        if l.send_rate_per_sec == 0 || l.admin_rate_per_sec == 0 {
            return bad("limits.send_rate_per_sec and limits.admin_rate_per_sec must be above 0");
        }
        if self.transport.delivery_window_us > 100_000 {
            return bad("transport.delivery_window_us must be at most 100000 (100 ms)");
        }
        if !(1..=64).contains(&self.transport.ack_every_packets) {
            return bad("transport.ack_every_packets must be 1..=64");
        }
        if self.transport.endpoints > 64 {
            return bad("transport.endpoints must be 0 (one per core) or 1..=64");
        }
        if self.store.history_max == 0 || self.store.flush_ms == 0 {
            return bad("store.history_max and store.flush_ms must be above 0");
        }
        if !(1..=65536).contains(&self.store.cache_mb) {
            return bad("store.cache_mb must be 1..=65536 (MiB)");
        }
        let t = &self.transport;
        if t.handshake_timeout_ms == 0 || t.hello_timeout_ms == 0 {
            return bad(
                "transport.handshake_timeout_ms and transport.hello_timeout_ms must be above 0",
            );
        }
        if t.max_handshakes == 0 {
            return bad("transport.max_handshakes must be above 0");
        }
        let a = &self.admin;
        if a.header_timeout_ms == 0 || a.body_timeout_ms == 0 || a.max_connections == 0 {
            return bad(
                "admin.header_timeout_ms, admin.body_timeout_ms and admin.max_connections must be above 0",
            );
        }
        if self.transport.keep_alive_ms >= self.transport.idle_timeout_ms {
            return bad("transport.keep_alive_ms must be below transport.idle_timeout_ms");
        }
        self.server.web_addr(self.server.quic)?;
        if self.web.ping_ms == 0 || self.web.ping_ms >= self.web.idle_timeout_ms {
            return bad("web.ping_ms must be above 0 and below web.idle_timeout_ms");
        }
        if self.web.send_queue_bytes < 1024 || self.web.max_connections == 0 {
            return bad(
                "web.send_queue_bytes must be at least 1024 and web.max_connections above 0",
            );
        }
        if self.tls.cert.is_empty() != self.tls.key.is_empty() {
            return bad("tls.cert and tls.key must be set together");
        }
        self.cluster.validate()?;
        Ok(())
    }

    /// The full configuration as TOML, each key with its comment.
    pub fn to_commented_toml(&self) -> String {
        self.commented_toml(|_| None)
    }

    /// [`Config::to_commented_toml`] with `note(key)`, when there is one, as a second comment line.
    fn commented_toml(&self, note: impl Fn(&str) -> Option<String>) -> String {
        let value = toml::Value::try_from(self).unwrap_or(toml::Value::Table(Default::default()));
        let mut out = String::from(
            "# roomcast configuration. Every key is optional; shown are the defaults.\n",
        );
        let Some(table) = value.as_table() else {
            return out;
        };
        for (section, body) in table {
            out.push('\n');
            push_doc(&mut out, section);
            out.push_str(&format!("[{section}]\n"));
            if let Some(body) = body.as_table() {
                for (key, v) in body {
                    let name = format!("{section}.{key}");
                    push_doc(&mut out, &name);
                    if let Some(note) = note(&name) {
                        out.push_str(&format!("# {note}\n"));
                    }
                    out.push_str(&format!("{key} = {v}\n"));
                }
            }
        }
        out
    }
}

fn push_doc(out: &mut String, key: &str) {
    if let Some((_, doc)) = KEY_DOCS.iter().find(|(k, _)| *k == key) {
        out.push_str(&format!("# {doc}\n"));
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn cluster_servers_come_from_the_flag_over_the_environment_over_the_file() {
        let file = Config::from_toml("[cluster]\nnats = [\"nats://127.0.0.1:1\"]\n").unwrap();
        let vars: std::collections::BTreeMap<&str, &str> = [(
            "ROOMCAST_CLUSTER_NATS",
            " nats://127.0.0.1:2, nats://127.0.0.1:3 ,",
        )]
        .into();
        let env = |name: &str| vars.get(name).map(|v| (*v).to_owned());
        let none = |_: &str| None;
        let f = Config::layered(Some(file.clone()), &none, &Flags::default()).unwrap();
        assert_eq!(f.config.cluster.nats, ["nats://127.0.0.1:1"]);
        let e = Config::layered(Some(file.clone()), &env, &Flags::default()).unwrap();
        assert_eq!(
            e.config.cluster.nats,
            ["nats://127.0.0.1:2", "nats://127.0.0.1:3"]
        );
        let flags = Flags {
            cluster_nats: vec!["nats://127.0.0.1:4".into()],
            ..Flags::default()
        };
        let l = Config::layered(Some(file), &env, &flags).unwrap();
        assert_eq!(l.config.cluster.nats, ["nats://127.0.0.1:4"]);
    }

    #[test]
    fn flags_win_over_the_environment_over_the_file_over_the_defaults() {
        let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let file = Config::from_toml(
            "[server]\nquic = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\ndata = \"file\"\n\
             [auth]\ndev_mode = true\nadmin_key = \"from-file\"\n",
        )
        .unwrap();
        let vars: std::collections::BTreeMap<&str, &str> = [
            ("ROOMCAST_QUIC", "127.0.0.1:11"),
            ("ROOMCAST_DATA", "env"),
            ("ROOMCAST_TOKEN_SECRET", "from-env"),
            ("ROOMCAST_ADMIN_KEY", ""),
        ]
        .into();
        let env = |name: &str| vars.get(name).map(|v| (*v).to_owned());
        let none = |_: &str| None;
        let flags = Flags {
            quic: Some(a(21)),
            ..Flags::default()
        };
        // Defaults alone.
        let d = Config::layered(None, &none, &Flags::default()).unwrap();
        assert_eq!(d.config, Config::default());
        assert!(d.secrets_from_env.is_empty());
        // The file over the defaults.
        let f = Config::layered(Some(file.clone()), &none, &Flags::default()).unwrap();
        assert_eq!(f.config.server.quic, a(1));
        assert_eq!(f.config.rooms, Config::default().rooms);
        // The environment over the file (an empty variable is unset).
        let e = Config::layered(Some(file.clone()), &env, &Flags::default()).unwrap();
        assert_eq!(e.config.server.quic, a(11));
        assert_eq!(e.config.server.admin, a(2));
        assert_eq!(e.config.server.data, PathBuf::from("env"));
        assert_eq!(e.config.auth.token_secret, "from-env");
        assert_eq!(e.config.auth.admin_key, "from-file");
        assert_eq!(e.secrets_from_env, ["auth.token_secret"]);
        // Flags over the environment.
        let l = Config::layered(Some(file.clone()), &env, &flags).unwrap();
        assert_eq!(l.config.server.quic, a(21));
        assert_eq!(l.config.server.data, PathBuf::from("env"));
        assert!(l.config.auth.dev_mode);
        let off = Flags {
            dev_mode: Some(false),
            ..Flags::default()
        };
        assert!(
            !Config::layered(Some(file), &env, &off)
                .unwrap()
                .config
                .auth
                .dev_mode
        );
    }

    #[test]
    fn a_bad_address_in_the_environment_is_named() {
        let env = |name: &str| (name == "ROOMCAST_ADMIN").then(|| "nowhere".to_owned());
        let e = Config::layered(None, &env, &Flags::default()).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ROOMCAST_ADMIN=\"nowhere\" is not an address"),
            "{text}"
        );
        // A flag given instead is not read from the environment at all.
        let flags = Flags {
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            ..Flags::default()
        };
        assert!(
            Config::layered(None, &env, &flags).is_err(),
            "the variable is still checked"
        );
    }

    #[test]
    fn every_key_of_the_readme_table_is_documented_here() {
        let readme = include_str!("../README.md");
        let start = readme
            .find("| key | default | what |")
            .expect("the README's key table");
        let mut documented = 0;
        for line in readme[start..].lines().skip(2) {
            let Some(first) = line.strip_prefix("| ").and_then(|l| l.split(" |").next()) else {
                break;
            };
            let mut section = "";
            for key in first.split('`').skip(1).step_by(2) {
                let full = match key.split_once('.') {
                    Some((sec, _)) => {
                        section = sec;
                        key.to_owned()
                    }
                    None => format!("{section}.{key}"),
                };
                let named = |k: &str| match full.strip_suffix('*') {
                    Some(prefix) => k.starts_with(prefix),
                    None => k == full,
                };
                assert!(
                    KEY_DOCS.iter().any(|(k, _)| named(k)),
                    "the README's table names {full}, which the configuration does not document"
                );
                documented += 1;
            }
        }
        assert!(documented >= 5, "read {documented} keys from the table");
    }
    use super::*;

    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(t) = v.as_table() {
            for (k, v) in t {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(name.clone());
                if prefix.is_empty() {
                    keys(v, &name, out);
                }
            }
        }
    }

    #[test]
    fn every_key_has_a_comment_and_the_printout_parses_back() {
        let c = Config::default();
        let mut all = Vec::new();
        keys(
            &toml::Value::try_from(&c).expect("serializes"),
            "",
            &mut all,
        );
        for k in &all {
            assert!(
                KEY_DOCS.iter().any(|(d, _)| d == k),
                "key {k} has no comment"
            );
        }
        let printed = c.to_commented_toml();
        assert_eq!(Config::from_toml(&printed).expect("parses"), c);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn printed_secrets_are_redacted_and_the_printout_still_parses() {
        let mut c = Config::default();
        c.auth.admin_key = "admin-from-env-5f3a".into();
        c.auth.token_secret = "secret-from-file-9c1e".into();
        let printed = c.to_redacted_toml(&["auth.admin_key"]);
        assert!(!printed.contains("admin-from-env-5f3a"), "{printed}");
        assert!(!printed.contains("secret-from-file-9c1e"), "{printed}");
        assert!(
            printed.contains("# Set (value not shown) in the environment (ROOMCAST_ADMIN_KEY).\nadmin_key = \"\"\n"),
            "{printed}"
        );
        assert!(
            printed.contains(
                "# Set (value not shown) in the configuration file.\ntoken_secret = \"\"\n"
            ),
            "{printed}"
        );
        let parsed = Config::from_toml(&printed).expect("parses");
        assert!(parsed.auth.admin_key.is_empty() && parsed.auth.token_secret.is_empty());
        assert_eq!(parsed.limits, c.limits);
        // Nothing to hide: no note, and the same text as the faithful printout.
        let plain = Config::default();
        assert_eq!(plain.to_redacted_toml(&[]), plain.to_commented_toml());
    }

    #[test]
    fn quic_binds_loopback_by_default_and_warns_elsewhere_with_dev_certificates() {
        let mut c = Config::default();
        assert_eq!(c.server.quic, SocketAddr::from(([127, 0, 0, 1], 7700)));
        assert!(c.warnings().is_empty());
        c.server.quic = SocketAddr::from(([0, 0, 0, 0], 7700));
        let w = c.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("0.0.0.0:7700 (every interface)"), "{w:?}");
        assert!(w[0].contains("tls.cert"), "{w:?}");
        c.tls.cert = "/etc/roomcast/cert.pem".into();
        c.tls.key = "/etc/roomcast/key.pem".into();
        assert!(
            c.warnings().is_empty(),
            "a real certificate: nothing to warn about"
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_partial_files_keep_defaults() {
        let err = Config::from_toml("[server]\nquick = \"1.2.3.4:1\"\n").unwrap_err();
        assert!(err.to_string().contains("quick"), "{err}");
        let c = Config::from_toml("[limits]\nrooms_per_user = 3\n").expect("parses");
        assert_eq!(c.limits.rooms_per_user, 3);
        assert_eq!(c.limits.client_body, 16 * 1024);
    }

    #[test]
    fn the_web_listener_follows_the_quic_address_unless_set() {
        let c = Config::default();
        let bound = c.server.quic;
        assert_eq!(c.server.web_addr(bound).expect("valid"), Some(bound));
        let mut c = Config::default();
        c.server.quic = "127.0.0.1:0".parse().expect("addr");
        let ephemeral: SocketAddr = "127.0.0.1:40001".parse().expect("addr");
        assert_eq!(
            c.server.web_addr(ephemeral).expect("valid"),
            Some("127.0.0.1:0".parse().expect("addr")),
            "a QUIC port left to the kernel leaves the web port to it too"
        );
        c.server.web = "off".into();
        assert_eq!(c.server.web_addr(ephemeral).expect("valid"), None);
        c.server.web = "127.0.0.1:8443".into();
        assert_eq!(
            c.server.web_addr(ephemeral).expect("valid"),
            Some("127.0.0.1:8443".parse().expect("addr"))
        );
        c.server.web = "localhost".into();
        let err = c.validate().expect_err("not an address");
        assert!(err.to_string().contains("server.web"), "{err}");
        let c = Config::from_toml("[web]\nplain_http = \"never\"\n").expect("parses");
        assert_eq!(c.web.plain_http, PlainHttp::Never);
        assert!(Config::from_toml("[web]\nplain_http = \"sometimes\"\n").is_err());
    }

    // ---- [cluster] ----
    #[test]
    fn cluster_mode_is_off_by_default_and_its_options_are_checked() {
        let c = Config::default();
        assert!(!c.cluster.enabled() && c.nats_config().is_none());
        let c = Config::from_toml(
            "[cluster]\nnats = [\"nats://127.0.0.1:4222\", \"tls://10.0.0.2:4222\"]\n\
             user = \"relay\"\npassword = \"pw\"\ntls_ca = \"/etc/nats/ca.pem\"\n",
        )
        .expect("parses");
        c.validate().expect("valid");
        let n = c.nats_config().expect("cluster mode");
        assert_eq!(n.servers.len(), 2);
        assert!(
            matches!(n.auth, crate::store::NatsAuth::UserPassword(ref u, ref p) if u == "relay" && p == "pw")
        );
        assert!(
            !format!("{:?}", n.auth).contains("pw"),
            "the password is never shown"
        );
        assert_eq!(n.tls_ca, Some(PathBuf::from("/etc/nats/ca.pem")));
        let refused = [
            "nats = [\"127.0.0.1:4222\"]",
            "nats = [\"nats://a:1\"]\nuser = \"u\"",
            "nats = [\"nats://a:1\"]\ntoken = \"t\"\ncreds = \"/x.creds\"",
            "nats = [\"nats://a:1\"]\nprefix = \"a.b\"",
            "nats = [\"nats://a:1\"]\nreplicas = 0",
            "nats = [\"nats://a:1\"]\ntls_cert = \"c.pem\"",
            "nats = [\"nats://a:1\"]\nnode_id = \"has space\"",
        ];
        for body in refused {
            let c = Config::from_toml(&format!("[cluster]\n{body}\n")).expect("parses");
            let err = c.validate().expect_err(body).to_string();
            assert!(err.contains("cluster"), "{body}: {err}");
        }
        let mut c = Config::default();
        c.cluster.nats = vec!["nats://127.0.0.1:4222".into()];
        c.cluster.token = "s3cret-token".into();
        let printed = c.to_redacted_toml(&[]);
        assert!(!printed.contains("s3cret-token"), "{printed}");
    }
    // ---- end [cluster] ----

    #[test]
    fn out_of_range_values_are_refused() {
        let mut c = Config::default();
        c.limits.client_body = c.limits.max_frame as usize;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.tls.cert = "x.pem".into();
        assert!(c.validate().is_err());
        for (window, acks, ok) in [(100_000, 64, true), (100_001, 2, false), (0, 0, false)] {
            let mut c = Config::default();
            c.transport.delivery_window_us = window;
            c.transport.ack_every_packets = acks;
            let err = c.validate().err().map(|e| e.to_string());
            assert_eq!(err.is_none(), ok, "window {window} acks {acks}: {err:?}");
        }
        for (mb, ok) in [
            (0, false),
            (1, true),
            (1024, true),
            (65536, true),
            (65537, false),
        ] {
            let mut c = Config::default();
            c.store.cache_mb = mb;
            let err = c.validate().err().map(|e| e.to_string());
            assert_eq!(err.is_none(), ok, "cache_mb {mb}: {err:?}");
            if ok {
                assert_eq!(c.store_config().cache_bytes, mb * 1024 * 1024);
            } else {
                assert!(err.is_some_and(|e| e.contains("store.cache_mb")));
            }
        }
    }
}
