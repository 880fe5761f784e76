//! The frame types. Variant order is the wire encoding: only ever append.

use super::WireError;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Client → server, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// 0: the first frame of a connection.
    Hello {
        /// Must be [`super::PROTOCOL_VERSION`].
        version: u16,
        /// HS256 JWT with `sub` = user id and `exp`.
        token: String,
    },
    /// 1: a request; answered by one [`ServerFrame::Reply`] with the same id.
    Request {
        /// Chosen by the client, echoed in the reply.
        id: u32,
        /// What is asked.
        request: Request,
    },
}

/// What a client may ask for. Appending a variant raises [`super::REQUEST_VARIANTS`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// 0: join a room. `history`: -1 none, 0 the default count (10), 1..=50 that many.
    Join {
        /// Room id.
        room: String,
        /// How many recent messages to include in the reply.
        history: i32,
    },
    /// 1: leave a room.
    Leave {
        /// Room id.
        room: String,
    },
    /// 2: send a message to a room the user has joined.
    Send {
        /// Room id.
        room: String,
        /// Message type, 1–32 characters of `[A-Za-z0-9_.:@-]`, not starting with `rc:`.
        msg_type: String,
        /// The payload, at most 16 KiB by default.
        body: Bytes,
        /// Ask for the low-priority class (datagram delivery, shed first).
        low: bool,
    },
    /// 3: room info with up to 20 members.
    RoomInfo {
        /// Room id.
        room: String,
    },
    /// 4: a no-op round trip.
    Ping,
    /// 5: set up to 10 attributes. Each key must be absent or the user's own unless `force`.
    SetAttributes {
        /// Room id.
        room: String,
        /// `(key, value)` pairs.
        entries: Vec<(String, String)>,
        /// Remove these keys when the user leaves the room.
        auto_delete: bool,
        /// Set even keys owned by others, taking them over.
        force: bool,
    },
    /// 6: delete up to 10 attributes. Each key must be the user's own unless `force`.
    DeleteAttributes {
        /// Room id.
        room: String,
        /// Keys.
        keys: Vec<String>,
        /// Delete even keys owned by others.
        force: bool,
    },
    /// 7: read attributes; an empty `keys` reads all.
    GetAttributes {
        /// Room id.
        room: String,
        /// Keys, or empty for all.
        keys: Vec<String>,
    },
    /// 8: recall one of the user's own messages within the recall window.
    Recall {
        /// Room id.
        room: String,
        /// The message's sequence number.
        seq: u64,
    },
    /// 9: page history backwards: up to `limit` (1..=200) messages with `seq < before_seq`
    /// (`before_seq` 0: the newest), oldest first.
    History {
        /// Room id.
        room: String,
        /// Exclusive upper bound, or 0 for the newest.
        before_seq: u64,
        /// Page size.
        limit: u32,
    },
    /// 10: rejoin a room after a reconnect (to this relay or another): the incarnation `epoch`
    /// the client was a member of and the newest `seq` it received. Checked like a join;
    /// answered with [`Response::Joined`] (no history), then [`Event::Resumed`] with what cannot
    /// be replayed, then every other message after `last_seq` in order, then live traffic.
    Resume {
        /// Room id.
        room: String,
        /// The room's epoch the membership was of ([`RoomInfo::epoch`]).
        epoch: u64,
        /// The newest sequence number received from the room (0: none).
        last_seq: u64,
    },
}

/// Server → client, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// 0: the hello was accepted.
    Welcome {
        /// The authenticated user id.
        user: String,
        /// This connection's id on the server.
        conn_id: u64,
        /// The largest frame body the server accepts on the control stream.
        max_frame: u32,
        /// The largest event frame body the server writes on the delivery stream (admin
        /// messages may be larger than client ones).
        max_event: u32,
    },
    /// 1: the hello was refused; the server closes the connection next.
    Refused(WireError),
    /// 2: the answer to the request with the same id.
    Reply {
        /// The request's id.
        id: u32,
        /// The answer or the refusal.
        result: Result<Response, WireError>,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// 0: to [`Request::Join`].
    Joined(JoinInfo),
    /// 1: to [`Request::Leave`].
    Left,
    /// 2: to [`Request::Send`]: the message's room sequence number and server time (ms since epoch).
    Sent {
        /// Room sequence number.
        seq: u64,
        /// Server timestamp, milliseconds since the Unix epoch.
        ts: u64,
    },
    /// 3: to [`Request::RoomInfo`].
    Info(RoomInfo),
    /// 4: to [`Request::Ping`].
    Pong,
    /// 5: to [`Request::SetAttributes`] and [`Request::DeleteAttributes`]: one result per key, in
    /// order (`None` = done), and the room's attribute version after the call.
    AttributeResults {
        /// Version after the call.
        version: u64,
        /// `(key, error)` per asked key.
        results: Vec<(String, Option<WireError>)>,
    },
    /// 6: to [`Request::GetAttributes`].
    Attributes {
        /// The room's attribute version.
        version: u64,
        /// The asked attributes that exist.
        attributes: Vec<Attribute>,
    },
    /// 7: to [`Request::Recall`].
    Recalled,
    /// 8: to [`Request::History`]: oldest first.
    History(Vec<HistoryEntry>),
}

/// A room attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// Key.
    pub key: String,
    /// Value.
    pub value: String,
    /// The user who set it last.
    pub owner: String,
    /// Removed when the owner leaves.
    pub auto_delete: bool,
    /// When it was set, ms since the Unix epoch.
    pub set_ms: u64,
}

/// A history item: a message, or the marker of a recalled one (empty body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The message (body empty when recalled).
    pub message: Message,
    /// Whether it was recalled.
    pub recalled: bool,
}

/// The join reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinInfo {
    /// The room, with up to 20 members.
    pub room: RoomInfo,
    /// The room's sequence counter at the join (the newest number handed out, 0 if none; after a
    /// restart it may be above the newest stored message): every message with a higher `seq` is
    /// delivered on the delivery stream.
    pub last_seq: u64,
    /// Whether the user is muted in this room.
    pub muted: bool,
    /// The requested recent messages, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Every attribute of the room.
    pub attributes: Vec<Attribute>,
    /// The attribute version the snapshot is at; change events carry later versions.
    pub attr_version: u64,
}

/// Room info as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// Room id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Changes every time a room with this id is created anew.
    pub epoch: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Members right now.
    pub member_count: u64,
    /// Up to 20 members, oldest joins first.
    pub members: Vec<String>,
    /// Whether mute-all is on.
    pub mute_all: bool,
}

/// The priority class of a message, decided by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    /// 0: never shed while the connection lives.
    Protected,
    /// 1: reliable, shed after low.
    Normal,
    /// 2: datagrams when they fit, shed first.
    Low,
}

impl Class {
    /// Lower-case name, as used in metrics labels and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Protected => "protected",
            Class::Normal => "normal",
            Class::Low => "low",
        }
    }
}

/// A room message as delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Room id.
    pub room: String,
    /// Per-room sequence number, strictly increasing.
    pub seq: u64,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: u64,
    /// Sender user id; empty for the system.
    pub from: String,
    /// Message type.
    pub msg_type: String,
    /// Payload.
    pub body: Bytes,
    /// The class the server gave it.
    pub class: Class,
}

/// Why a room went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DestroyReason {
    /// 0: destroyed through the admin API.
    Manual,
    /// 1: no activity for the idle period.
    Idle,
    /// 2: its fixed lifetime ran out.
    Lifetime,
    /// 3: its scheduled destroy time came.
    Scheduled,
}

impl DestroyReason {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DestroyReason::Manual => "manual",
            DestroyReason::Idle => "idle",
            DestroyReason::Lifetime => "lifetime",
            DestroyReason::Scheduled => "scheduled",
        }
    }
}

/// Why a member was removed by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KickReason {
    /// 0: banned from the room.
    Banned,
    /// 1: the same user left or was moved on another device.
    OtherDevice,
    /// 2: `single_room` mode: the user joined another room.
    SingleRoom,
    /// 3: offline for longer than the grace period.
    Offline,
}

impl KickReason {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            KickReason::Banned => "banned",
            KickReason::OtherDevice => "other_device",
            KickReason::SingleRoom => "single_room",
            KickReason::Offline => "offline",
        }
    }
}

/// Server → client, on the delivery stream (length-prefixed) or as one datagram (no prefix).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// 0: first event of the delivery stream.
    Ready {
        /// This connection's id on the server.
        conn_id: u64,
    },
    /// 1: a room message.
    Message(Message),
    /// 2: messages of this room were skipped because the connection lagged; sent before the next
    /// delivered event of the room.
    Gap {
        /// Room id.
        room: String,
        /// Low-priority messages skipped.
        low: u64,
        /// Normal messages skipped.
        normal: u64,
    },
    /// 3: the room is gone; the connection is no longer a member.
    RoomDestroyed {
        /// Room id.
        room: String,
        /// Why.
        reason: DestroyReason,
    },
    /// 4: this connection was removed from the room. It comes after every message the room
    /// published before the removal, and no message of the room follows it.
    Kicked {
        /// Room id.
        room: String,
        /// Why.
        reason: KickReason,
    },
    /// 5: this connection took over the user's membership: after a reconnect within the offline
    /// grace period (`missed` messages were sent while the user had no connection), or after a
    /// [`Request::Resume`] (`missed`: the messages after its `last_seq` that are not replayed).
    Resumed {
        /// Room id.
        room: String,
        /// Messages this connection will not receive (see above).
        missed: u64,
        /// Sequence number of the newest message at the moment of the resume.
        last_seq: u64,
    },
    /// 6: users were muted in a room (`room` empty: muted in every room, a global mute).
    Muted {
        /// Room id, or empty for a global mute.
        room: String,
        /// The muted users.
        users: Vec<String>,
        /// When the mute ends, ms since the epoch.
        until_ms: u64,
    },
    /// 7: users were unmuted (`room` empty: a global mute was lifted).
    Unmuted {
        /// Room id, or empty for a global mute.
        room: String,
        /// The users.
        users: Vec<String>,
    },
    /// 8: mute-all was turned on.
    MuteAll {
        /// Room id.
        room: String,
    },
    /// 9: mute-all was lifted.
    MuteAllLifted {
        /// Room id.
        room: String,
    },
    /// 10: users were banned from the room (sent to the room when the ban asked to notify).
    Banned {
        /// Room id.
        room: String,
        /// The banned users.
        users: Vec<String>,
        /// When the ban ends, ms since the epoch.
        until_ms: u64,
    },
    /// 11: bans were lifted.
    Unbanned {
        /// Room id.
        room: String,
        /// The users.
        users: Vec<String>,
    },
    /// 12: a member joined (rooms with member events, up to `member_events_max` members).
    MemberJoined {
        /// Room id.
        room: String,
        /// User id.
        user: String,
    },
    /// 13: a member left, was removed or went offline for good.
    MemberLeft {
        /// Room id.
        room: String,
        /// User id.
        user: String,
    },
    /// 14: the member count, sent periodically instead of join/leave events in large rooms.
    MemberCount {
        /// Room id.
        room: String,
        /// Members now.
        count: u64,
    },
    /// 15: a message was recalled; drop its body.
    Recalled {
        /// Room id.
        room: String,
        /// Its sequence number.
        seq: u64,
    },
    /// 16: an attribute was set.
    AttributeChanged {
        /// Room id.
        room: String,
        /// The room's attribute version after this change.
        version: u64,
        /// The attribute.
        attribute: Attribute,
    },
    /// 17: an attribute was deleted (`auto`: because its owner left).
    AttributeRemoved {
        /// Room id.
        room: String,
        /// The room's attribute version after this change.
        version: u64,
        /// Key.
        key: String,
        /// Deleted automatically with its owner's departure.
        auto: bool,
    },
}

impl Event {
    /// The room the event is about; empty for a notice about no room (a global mute), `None`
    /// for `Ready`.
    pub fn room(&self) -> Option<&str> {
        match self {
            Event::Ready { .. } => None,
            Event::Message(m) => Some(&m.room),
            Event::Gap { room, .. }
            | Event::RoomDestroyed { room, .. }
            | Event::Kicked { room, .. }
            | Event::Resumed { room, .. }
            | Event::Muted { room, .. }
            | Event::Unmuted { room, .. }
            | Event::MuteAll { room, .. }
            | Event::MuteAllLifted { room, .. }
            | Event::Banned { room, .. }
            | Event::Unbanned { room, .. }
            | Event::MemberJoined { room, .. }
            | Event::MemberLeft { room, .. }
            | Event::MemberCount { room, .. }
            | Event::Recalled { room, .. }
            | Event::AttributeChanged { room, .. }
            | Event::AttributeRemoved { room, .. } => Some(room),
        }
    }
}
