//! One relay process: the store, the relay (the room core and its shell), the client listeners
//! and the admin listener, bound together and stopped by one shutdown future.
//!
//! [`Server::bind`] takes a configuration and binds every socket (use port 0 in tests and read
//! the bound addresses back); [`Server::run`] serves until the shutdown future completes, then
//! closes every client with [`CloseCode::Shutdown`](crate::protocol::CloseCode::Shutdown) and the
//! reason `server shutting down`, waits up to `shutdown_grace_ms` for the closes to be sent,
//! stops the admin listener, closes the store and returns once every task it owns has ended.

use crate::auth::TokenAuth;
use crate::config::Config;
use crate::server::{Listeners, Relay, Secrets, ServerError};
use crate::tls::{Certs, ServerIdentity};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A bound, not yet running relay.
pub struct Server {
    listeners: Listeners,
    admin: tokio::net::TcpListener,
    admin_addr: SocketAddr,
    web_addr: Option<SocketAddr>,
}

impl Server {
    /// Opens the store (the file in the data folder, or NATS JetStream when `[cluster] nats` is
    /// set), then binds the QUIC endpoint, the admin listener and
    /// the public web listener.
    pub async fn bind(
        config: Config,
        secrets: Secrets,
        identity: &ServerIdentity,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.server.data)
            .map_err(|e| ServerError::Data(format!("{}: {e}", config.server.data.display())))?;
        // ---- cluster: redb, or JetStream when [cluster] nats is set ----
        let store = crate::server::cluster::open_store(&config)?;
        // ---- end cluster ----
        Self::bind_with_store(config, secrets, identity, store).await
    }

    /// [`Server::bind`] on a store the caller opened (a [`crate::store::RedbStore`] on a
    /// [`crate::store::StoreFile`] of its own, for instance); the data folder holds the rest.
    pub async fn bind_with_store(
        config: Config,
        secrets: Secrets,
        identity: &ServerIdentity,
        store: Arc<dyn crate::store::Store>,
    ) -> Result<Self, ServerError> {
        config.validate()?;
        let config = Arc::new(config);
        let certs = identity.certs()?;
        let (endpoints, quic_addr) = crate::server::bind_quic(&config, &certs)?;
        let admin = tokio::net::TcpListener::bind(config.server.admin)
            .await
            .map_err(|source| ServerError::Bind {
                what: "admin",
                addr: config.server.admin,
                source,
            })?;
        let admin_addr = admin.local_addr().map_err(|source| ServerError::Bind {
            what: "admin",
            addr: config.server.admin,
            source,
        })?;
        let (web, web_addr) = match crate::server::bind_web(&config, quic_addr).await? {
            Some((listener, bound)) => (Some(listener), Some(bound)),
            None => (None, None),
        };
        let auth = TokenAuth::new(
            secrets.token_secret.as_bytes(),
            config.auth.leeway_secs,
            config.auth.dev_mode,
        );
        let snapshot = store.load()?;
        let relay = Arc::new(Relay::new(config.clone(), auth, secrets.admin_key, store));
        relay.restore(snapshot);
        // ---- cluster: leases, forwarding, live fan-out ----
        crate::server::cluster::start(&config, &relay).await?;
        // ---- end cluster ----
        Ok(Server {
            listeners: Listeners {
                relay,
                endpoints,
                quic_addr,
                web,
                certs,
            },
            admin,
            admin_addr,
            web_addr,
        })
    }

    /// The bound QUIC address.
    pub fn quic_addr(&self) -> SocketAddr {
        self.listeners.quic_addr
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The bound public web listener address, unless it is off.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// The certificate the relay presents (and renews, for a development one).
    pub fn certs(&self) -> &Arc<Certs> {
        &self.listeners.certs
    }

    /// The relay, for in-process inspection.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.listeners.relay
    }

    /// Serves until `shutdown` completes, then closes every connection and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server {
            listeners, admin, ..
        } = self;
        let relay = listeners.relay.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let prometheus = crate::metrics::prometheus();
        let router = crate::admin::router(relay.clone(), prometheus.clone());
        // ---- cluster: changes other relays forward run through this admin API ----
        if let Some(cluster) = relay.cluster() {
            cluster.set_admin(crate::admin::cluster_handler(
                router.clone(),
                relay.admin_key.clone(),
            ));
        }
        // ---- end cluster ----
        // Histogram samples are folded into their buckets on this timer, not only when scraped.
        let upkeep = prometheus.map(|handle| {
            let mut stop = stop_rx.clone();
            tokio::spawn(crate::metrics::upkeep(handle, async move {
                let _ = stop.wait_for(|s| *s).await;
            }))
        });
        let mut admin_rx = stop_rx.clone();
        let admin_limits = crate::admin::serve::ServeLimits::of(&relay.config);
        let admin_task = tokio::spawn(async move {
            let stop = async move {
                let _ = admin_rx.wait_for(|s| *s).await;
            };
            crate::admin::serve::serve(admin, router, admin_limits, stop).await;
        });
        let serving = tokio::spawn(listeners.run(stop_rx.clone()));
        shutdown.await;
        let _ = stop_tx.send(true);
        let _ = serving.await;
        if let Some(upkeep) = upkeep {
            let _ = upkeep.await;
        }
        let grace = Duration::from_millis(relay.config.transport.shutdown_grace_ms);
        if tokio::time::timeout(grace, admin_task).await.is_err() {
            tracing::warn!("admin listener did not stop in time");
        }
        drop(stop_rx);
        // ---- cluster: its rooms move at once ----
        if let Some(cluster) = relay.cluster() {
            cluster.release_all().await;
        }
        // ---- end cluster ----
        relay.store().close();
        tracing::info!("stopped");
    }
}
