//! The shell around the room core: [`Relay`] feeds the core its inputs and applies its effects,
//! and the client side of a relay lives here: the QUIC endpoints, one session per connection
//! (control stream, delivery task) over every transport, the public web listener, and the data
//! folder bootstrap. [`Listeners`] serves them until told to stop; `node::Server` (one layer up) runs
//! them with the admin listener.

mod admission;
mod bootstrap;
// ---- cluster ----
pub mod cluster;
// ---- end cluster ----
pub mod data;
mod delivery;
pub mod durable;
#[cfg(feature = "bench")]
pub(crate) use delivery::window_wait;
pub mod link;
pub mod moderation;
pub mod relay;
mod session;
pub mod timers;
// ---- browser transports ----
mod web;
mod webtransport;
pub mod ws;
// ---- end browser transports ----

pub use bootstrap::{DataFolder, Prepared, SERVER_FILE, ServerFile};
pub use relay::Relay;

use crate::config::Config;
use crate::protocol::CloseCode;
use crate::tls::{Certs, ServerIdentity, TlsError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Certificates could not be made or loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket could not be bound or configured.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file in the data folder could not be read or written.
    #[error("data folder: {0}")]
    Data(String),
    /// The store could not be opened or loaded.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// File name of the store in the data folder.
pub const STORE_FILE: &str = "roomcast.redb";

/// Secrets the server runs with.
#[derive(Clone)]
pub struct Secrets {
    /// The admin bearer key.
    pub admin_key: String,
    /// The HS256 token secret.
    pub token_secret: String,
}

/// The relay's client listeners, bound and not yet serving: the QUIC endpoints (native clients
/// and WebTransport on one UDP port) and the public web listener (WebSocket, SDK, demo page).
/// `node::Server` (one layer up) binds them beside the admin listener and runs them.
pub struct Listeners {
    /// The relay they serve.
    pub relay: Arc<Relay>,
    /// The QUIC endpoints on one port.
    pub endpoints: Vec<quinn::Endpoint>,
    /// The bound QUIC address.
    pub quic_addr: SocketAddr,
    /// The public web listener, unless `server.web = "off"`.
    pub web: Option<tokio::net::TcpListener>,
    /// The certificate the relay presents (and renews, for a development one).
    pub certs: Arc<Certs>,
}

/// How often a running relay checks whether its development certificate is due for renewal.
const CERT_CHECK: Duration = Duration::from_secs(3600);

/// Binds the QUIC endpoints of `config` (`server.quic`, `transport.endpoints`); returns them with
/// the bound address.
pub fn bind_quic(
    config: &Config,
    certs: &Arc<Certs>,
) -> Result<(Vec<quinn::Endpoint>, SocketAddr), ServerError> {
    let endpoints = endpoints(config, certs)?;
    let quic_addr = endpoints[0]
        .local_addr()
        .map_err(|source| ServerError::Bind {
            what: "QUIC",
            addr: config.server.quic,
            source,
        })?;
    Ok((endpoints, quic_addr))
}

/// Binds the public web listener of `config` (`server.web`), given the bound QUIC address;
/// `None` when it is off.
pub async fn bind_web(
    config: &Config,
    quic_addr: SocketAddr,
) -> Result<Option<(tokio::net::TcpListener, SocketAddr)>, ServerError> {
    let Some(addr) = config.server.web_addr(quic_addr)? else {
        return Ok(None);
    };
    let bind_err = |source| ServerError::Bind {
        what: "web",
        addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    Ok(Some((listener, bound)))
}

impl Listeners {
    /// Serves until `stop` turns true, then closes every client with [`CloseCode::Shutdown`] and
    /// the reason `server shutting down`, waits up to `shutdown_grace_ms` for the closes to be
    /// sent, and returns once every task it owns has ended. The timer pass runs meanwhile.
    pub async fn run(self, stop_rx: tokio::sync::watch::Receiver<bool>) {
        let Listeners {
            relay,
            endpoints,
            quic_addr,
            web,
            certs,
        } = self;
        let mut sessions = tokio::task::JoinSet::new();
        let ticker = {
            let relay = relay.clone();
            let mut stop = stop_rx.clone();
            let every = Duration::from_millis(relay.config.rooms.timer_tick_ms);
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(every);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = interval.tick() => {}
                    }
                    // Outside the select: a tick awaits the store, and the stop branch's output
                    // holds a lock that must not live across that.
                    let report = relay.tick(relay::now_ms()).await;
                    if !report.destroyed.is_empty() || !report.offline_removed.is_empty() {
                        tracing::debug!(?report, "timers fired");
                    }
                }
            })
        };
        let web_task = match web {
            Some(listener) => {
                let tls = certs
                    .server_config(&[b"http/1.1"])
                    .map(Arc::new)
                    .map_err(|e| tracing::error!(error = %e, "public listener TLS"));
                tls.ok().map(|tls| {
                    let ctx = Arc::new(web::Web {
                        relay: relay.clone(),
                        certs: certs.clone(),
                        quic_port: quic_addr.port(),
                    });
                    tokio::spawn(web::run(ctx, listener, tls, stop_rx.clone()))
                })
            }
            None => None,
        };
        let renewer = {
            let certs = certs.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(CERT_CHECK);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => break,
                        _ = interval.tick() => match certs.renew_if_due(std::time::SystemTime::now()) {
                            Ok(true) => tracing::info!("development certificate renewed"),
                            Ok(false) => {}
                            Err(e) => tracing::error!(error = %e, "renewing the development certificate"),
                        },
                    }
                }
            })
        };
        tracing::info!(quic = %quic_addr, endpoints = endpoints.len(), "serving");
        // One accept task per endpoint feeds one queue, so sessions are owned in one place. Each
        // attempt is admitted, asked for a Retry or refused at once (see `admission`); admitted
        // ones are counted as handshaking from here on.
        let (incoming_tx, incoming_rx) =
            flume::bounded::<(quinn::Incoming, admission::Handshaking)>(1024);
        let mut acceptors = tokio::task::JoinSet::new();
        let handshakes = Arc::new(admission::Handshakes::default());
        let limits = admission::Limits {
            retry_threshold: relay.config.transport.retry_threshold,
            max_handshakes: relay.config.transport.max_handshakes,
        };
        for ep in &endpoints {
            let ep = ep.clone();
            let tx = incoming_tx.clone();
            let handshakes = handshakes.clone();
            acceptors.spawn(async move {
                while let Some(incoming) = ep.accept().await {
                    let Some(admitted) = handshakes.admit(incoming, limits) else {
                        continue;
                    };
                    if tx.send_async(admitted).await.is_err() {
                        break;
                    }
                }
            });
        }
        drop(incoming_tx);
        let mut stop = stop_rx.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                // Reaped before taking more, so a stream of connections cannot pile up ended
                // sessions in the set.
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                incoming = incoming_rx.recv_async() => match incoming {
                    Ok((incoming, handshaking)) => {
                        sessions.spawn(session::serve(relay.clone(), incoming, handshaking));
                    }
                    Err(_) => break,
                },
            }
        }
        acceptors.abort_all();
        tracing::info!("shutting down");
        let _ = ticker.await;
        let _ = renewer.await;
        let reason = b"server shutting down";
        relay.close_all(CloseCode::Shutdown, "server shutting down");
        for ep in &endpoints {
            ep.close(CloseCode::Shutdown.into(), reason);
        }
        let grace = Duration::from_millis(relay.config.transport.shutdown_grace_ms);
        let idle = futures_util::future::join_all(endpoints.iter().map(|ep| ep.wait_idle()));
        let _ = tokio::time::timeout(grace, idle).await;
        sessions.shutdown().await;
        if let Some(task) = web_task {
            // It drains its own connections within the grace period.
            let _ = task.await;
        }
    }
}

/// The QUIC endpoints: `transport.endpoints` of them (0: one per core) on one UDP port. With more
/// than one, each has its own socket bound with `SO_REUSEPORT`; the kernel hashes each client's
/// address pair to one socket, so a connection always lands on the same endpoint, and the
/// endpoints' receive paths run on different cores.
fn endpoints(config: &Config, certs: &Arc<Certs>) -> Result<Vec<quinn::Endpoint>, ServerError> {
    // One UDP port for native clients and browsers: the connection's negotiated ALPN decides.
    let crypto = Arc::new(
        certs.quic_server_crypto(&[crate::protocol::ALPN, web_transport_quinn::ALPN.as_bytes()])?,
    );
    let n = match config.transport.endpoints {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let first = endpoint_with(config, crypto.clone(), config.server.quic, n > 1)?;
    let addr = first.local_addr().map_err(|source| ServerError::Bind {
        what: "QUIC",
        addr: config.server.quic,
        source,
    })?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(endpoint_with(config, crypto.clone(), addr, true)?);
    }
    Ok(all)
}

/// One QUIC endpoint with roomcast's transport settings (from `config`) on a UDP socket with
/// large buffers. The bench's raw-QUIC baseline uses it too, so both run the same transport.
pub fn endpoint(
    config: &Config,
    identity: &ServerIdentity,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<quinn::Endpoint, ServerError> {
    endpoint_with(
        config,
        Arc::new(identity.quic_server_crypto()?),
        addr,
        reuse_port,
    )
}

fn endpoint_with(
    config: &Config,
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<quinn::Endpoint, ServerError> {
    let t = &config.transport;
    let mut transport = quinn::TransportConfig::default();
    // A native client opens exactly one bidirectional stream (control) and no unidirectional
    // one; the server opens the delivery stream. The handshake grants what an HTTP/3
    // (WebTransport) client needs, since browsers refuse less (the ALPN is not known yet when
    // the transport parameters are sent); a native connection's limits drop to 1 and 0 right
    // after its handshake, so the extra credit is never renewed (see `session::open`).
    transport
        .max_concurrent_bidi_streams(webtransport::H3_BIDI_STREAMS.into())
        .max_concurrent_uni_streams(webtransport::H3_UNI_STREAMS.into())
        // Small receive windows: clients send little (requests of at most one frame), and quinn
        // allocates receive buffers up to the window; the defaults (1.25 MB per stream) cost
        // ~37 KiB of RSS per idle connection and far more under load.
        .stream_receive_window(t.stream_window.into())
        .receive_window(t.conn_window.into())
        // Bounds the unacknowledged data buffered per connection; a lagging client then holds
        // back its own delivery task instead of growing server memory, and its backlog stays in
        // the room's ring, where egress shedding (low first, then normal) can see and drop it.
        .send_window(t.send_window)
        // With GSO (default) quinn sizes a connection's send buffer for 10 datagrams (~13 KiB) the
        // first time it sends two at once and keeps it; without, one datagram's worth, but every
        // datagram is its own system call: 1.8x the CPU per delivery in a saturated fan-out.
        .enable_segmentation_offload(t.segmentation_offload)
        // Datagrams must be enabled locally for quinn to send any (with `None` every
        // send_datagram fails with `Disabled`); clients send none, so the buffer stays empty.
        .datagram_receive_buffer_size(Some(16 * 1024))
        .datagram_send_buffer_size(t.datagram_send_buffer)
        // A relay mostly sends: every acknowledgement a client returns is a packet the server must
        // receive and process. With the ACK frequency extension the server asks clients to
        // acknowledge once per `ack_every_packets` (still within 25 ms, and at once on reordering).
        .ack_frequency_config((t.ack_every_packets != 2).then(|| {
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(t.ack_every_packets.saturating_sub(1).into());
            ack
        }))
        // Keep-alives keep NAT bindings open and let a dead peer be noticed within the idle timeout.
        .keep_alive_interval(Some(Duration::from_millis(t.keep_alive_ms)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(t.idle_timeout_ms))
                .map_err(|e| ServerError::Data(format!("transport.idle_timeout_ms: {e}")))?,
        ));
    let mut server_config = quinn::ServerConfig::with_crypto(crypto);
    server_config.transport_config(Arc::new(transport));
    // Attempts the accept loop has not decided on yet, and what quinn buffers for them, are
    // bounded like the handshakes themselves (quinn's defaults: 65536 attempts, 10 MiB each,
    // 100 MiB in all), so a flood faster than the accept loop cannot pile up there instead.
    server_config
        .max_incoming(t.max_handshakes.max(1))
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(t.max_handshakes as u64 * 16 * 1024);

    let bind_err = |source| ServerError::Bind {
        what: "QUIC",
        addr,
        source,
    };
    let socket = crate::net::udp_socket(addr, t.udp_recv_buffer, t.udp_send_buffer, reuse_port)
        .map_err(bind_err)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ServerError::Data("no async runtime for QUIC".into()))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        runtime,
    )
    .map_err(bind_err)
}

/// Raises this process's open-file limit (`RLIMIT_NOFILE`) to its hard limit; returns the soft
/// limit before and after. Every admin connection and client socket takes a descriptor, and the
/// usual soft limit (1024) is far below what a relay holds.
#[cfg(unix)]
#[allow(unsafe_code)]
// `rlim_t` is `u64` on Linux but not on every Unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit with a pointer to a live rlimit of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = lim.rlim_cur as u64;
    if lim.rlim_cur >= lim.rlim_max {
        return Ok((before, before));
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, lim.rlim_cur as u64))
}

/// Raises this process's open-file limit: nothing to do off Unix.
#[cfg(not(unix))]
pub fn raise_open_file_limit() -> std::io::Result<(u64, u64)> {
    Ok((0, 0))
}
