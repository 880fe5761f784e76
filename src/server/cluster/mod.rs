//! Which store a relay runs on: the embedded redb file, or NATS JetStream when `[cluster] nats`
//! names servers; the relay's node id in the cluster; and its part in the cluster
//! ([`Cluster`]: room leases, forwarded sends, live fan-out, the shared state's cache).

mod holes;
pub mod lease;
pub mod members;
mod node;

pub use node::{AdminAnswer, AdminCall, AdminHandler, Cluster, ClusterError};

use super::{STORE_FILE, ServerError};
use crate::config::Config;
use crate::store::{NatsStore, RedbStore, Store};
use std::path::Path;
use std::sync::Arc;

/// File in the data folder holding the generated node id.
pub const NODE_ID_FILE: &str = "node.id";

/// Starts `relay`'s part in the cluster `config` names (none for a single node).
pub async fn start(config: &Config, relay: &Arc<super::Relay>) -> Result<(), ServerError> {
    let Some(mut nats) = config.nats_config() else {
        return Ok(());
    };
    if nats.node_id.is_empty() {
        nats.node_id = node_id(&config.server.data)?;
    }
    let counts = std::time::Duration::from_millis(config.rooms.member_count_interval_ms);
    let cluster = Cluster::start(relay, nats, config.cluster.lease_ttl_ms, counts).await?;
    // ---- cluster-wide member lists ----
    let answering = members::serve(Arc::downgrade(&cluster), Arc::downgrade(relay));
    cluster.own(tokio::spawn(answering));
    // ---- end cluster-wide member lists ----
    relay.set_cluster(cluster);
    Ok(())
}

/// Opens the store `config` asks for.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, ServerError> {
    let Some(mut nats) = config.nats_config() else {
        let store = RedbStore::open(&config.server.data.join(STORE_FILE), config.store_config())?;
        return Ok(Arc::new(store));
    };
    if nats.node_id.is_empty() {
        nats.node_id = node_id(&config.server.data)?;
    }
    tracing::info!(
        servers = %nats.servers.join(","),
        node = %nats.node_id,
        "cluster mode: the store is in NATS JetStream"
    );
    let store = NatsStore::open(nats, config.store_config())?;
    Ok(Arc::new(store))
}

/// The node id kept in `data`, generated there on first use.
pub fn node_id(data: &Path) -> Result<String, ServerError> {
    let path = data.join(NODE_ID_FILE);
    let bad = |e: std::io::Error| ServerError::Data(format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bad(e)),
    }
    let id = format!("node-{:016x}", rand::random::<u64>());
    std::fs::write(&path, format!("{id}\n")).map_err(bad)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = node_id(dir.path()).expect("generated");
        assert!(first.starts_with("node-") && first.len() == 21, "{first}");
        assert_eq!(node_id(dir.path()).expect("read back"), first);
        std::fs::write(dir.path().join(NODE_ID_FILE), "relay-7\n").expect("write");
        assert_eq!(node_id(dir.path()).expect("an operator's"), "relay-7");
    }
}
