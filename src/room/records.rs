//! What the store keeps, as the room core decides it: the records of rooms, attributes and
//! messages, the snapshot a start loads, and the [`Op`]s a change is made of. The core emits ops
//! as effects; the store (one layer up) makes them durable.

use crate::policy::{DestroyPolicy, GlobalPolicy, Moderation};
use crate::protocol::Class;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// When a store acknowledges a change (see `crate::store::Ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After the fsync of the transaction holding the ops.
    Sync,
    /// At once; the writer fsyncs at least every `flush_ms`.
    Batched,
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
    /// Creates or replaces a room record. Over a record of the same epoch, `seq_reserved` and
    /// `last_activity_ms` never go down (they are raised on their own by [`Op::ReserveSeq`] and
    /// [`Op::Touch`]).
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
    /// Raises a room's `seq_reserved` to at least `upto` (nothing if the room is not stored).
    ReserveSeq {
        /// Room id.
        room: String,
        /// The new reservation.
        upto: u64,
    },
    /// Raises a room's `last_activity_ms` to at least `at_ms` (nothing if the room is not stored).
    Touch {
        /// Room id.
        room: String,
        /// The activity time.
        at_ms: u64,
    },
    /// Marks a stored message recalled and drops its body.
    Recall {
        /// Room id.
        room: String,
        /// Its sequence number.
        seq: u64,
    },
}
