//! The durable store behind a small trait: rooms and their policies, attributes, the app-wide
//! lists and message history survive a restart and a crash.
//!
//! The relay never waits on disk while it holds a lock: it [`Store::submit`]s ordered batches of
//! [`Op`]s (under the room's lock, so the store sees changes in the order memory made them) and
//! awaits the returned [`Ack`] afterwards, outside every lock. [`RedbStore`] applies them on one
//! writer thread with group commit: everything queued while a commit is in flight goes into the
//! next transaction, so the disk cost is shared by all of it.
//!
//! Durability (see [`Durability`]):
//! - `sync`: an [`Ack`] resolves after the transaction holding its ops is fsynced. A client's send
//!   reply and an admin call's answer wait for it: nothing acknowledged is lost on a crash.
//! - `batched`: acks resolve at once; the writer fsyncs at least every `flush_ms`. A crash loses
//!   at most the last `flush_ms` of changes, for lower reply latency and less disk traffic.

mod redb_store;

pub use redb_store::RedbStore;

use crate::policy::{DestroyPolicy, GlobalPolicy, Moderation};
use crate::protocol::Class;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Why the store failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// When an [`Ack`] resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the fsync of the transaction holding the ops.
    Sync,
    /// At once; the writer fsyncs at least every `flush_ms`.
    Batched,
}

/// Store settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// When acks resolve.
    pub durability: Durability,
    /// Longest time between fsyncs in `batched` mode, ms.
    pub flush_ms: u64,
    /// Messages kept per room (the newest).
    pub history_max: usize,
    /// Oldest message kept, ms of age.
    pub history_max_age_ms: u64,
}

/// A room's durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// Room id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Epoch of this life of the room.
    pub epoch: u64,
    /// Creation time, ms.
    pub created_ms: u64,
    /// Destroy policy.
    pub policy: DestroyPolicy,
    /// Scheduled destroy time, ms.
    pub destroy_at_ms: Option<u64>,
    /// Join/leave events on.
    pub member_events: bool,
    /// Bans, mutes, mute-all, whitelists.
    pub moderation: Moderation,
    /// Last activity, ms (persisted coarsely).
    pub last_activity_ms: u64,
    /// Every sequence number up to this one may have been handed out: after a restart the room
    /// continues above it.
    pub seq_reserved: u64,
    /// The room's attribute version.
    pub attr_version: u64,
}

/// One attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttrRecord {
    /// Value, UTF-8, at most 4096 bytes.
    pub value: String,
    /// The user who set it last.
    pub owner: String,
    /// Removed when the owner leaves.
    pub auto_delete: bool,
    /// When it was set, ms.
    pub set_ms: u64,
}

/// A message as history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Room sequence number.
    pub seq: u64,
    /// Server timestamp, ms.
    pub ts: u64,
    /// Sender; empty for the system.
    pub from: String,
    /// Message type.
    pub msg_type: String,
    /// Payload; empty once recalled.
    pub body: Bytes,
    /// Class.
    pub class: Class,
    /// Recalled: the body is gone, the marker stays.
    pub recalled: bool,
}

/// A room as loaded at start.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedRoom {
    /// Its record.
    pub record: RoomRecord,
    /// Its attributes by key.
    pub attrs: Vec<(String, AttrRecord)>,
    /// The newest stored message's sequence number and timestamp, if any.
    pub newest: Option<(u64, u64)>,
}

/// Everything loaded at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every room.
    pub rooms: Vec<LoadedRoom>,
    /// The app-wide lists.
    pub global: GlobalPolicy,
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Creates or replaces a room record.
    PutRoom(RoomRecord),
    /// Deletes a room with its attributes and history.
    DeleteRoom(String),
    /// Replaces the app-wide lists.
    PutGlobal(GlobalPolicy),
    /// Sets an attribute.
    PutAttr {
        /// Room id.
        room: String,
        /// Key.
        key: String,
        /// Value and owner.
        attr: AttrRecord,
    },
    /// Deletes an attribute.
    DeleteAttr {
        /// Room id.
        room: String,
        /// Key.
        key: String,
    },
    /// Appends a message to history (retention trims the oldest).
    Append {
        /// Room id.
        room: String,
        /// The message.
        msg: StoredMessage,
    },
    /// Marks a stored message recalled and drops its body.
    Recall {
        /// Room id.
        room: String,
        /// Its sequence number.
        seq: u64,
    },
}

/// Resolves when the ops it was returned for are durable (per [`Durability`]).
#[must_use = "await the ack before acknowledging the change to anyone"]
pub struct Ack(pub Option<tokio::sync::oneshot::Receiver<Result<(), StoreError>>>);

impl Ack {
    /// An ack that is already resolved.
    pub fn done() -> Self {
        Ack(None)
    }

    /// Waits until durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(StoreError("the store writer stopped".into()))),
        }
    }
}

/// The store interface the relay uses; a clustered backend implements the same.
pub trait Store: Send + Sync + 'static {
    /// Everything stored, for a start.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Queues `ops`, applied in order and atomically together, after every earlier submit.
    /// Never blocks on disk.
    fn submit(&self, ops: Vec<Op>) -> Ack;

    /// Up to `limit` of the newest stored messages of `room` with `seq < before_seq` (all when
    /// `None`), oldest first. Sees only committed messages.
    fn history(
        &self,
        room: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// One stored message.
    fn message(&self, room: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError>;

    /// Waits until everything submitted so far is durable, then stops the writer.
    fn close(&self);
}
