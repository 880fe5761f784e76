//! The C types of the ABI: `#[repr(C)]` structs and fixed-width enums, exactly as `roomcast.h`
//! declares them. Nothing here holds Rust-owned data by reference: strings and arrays in events
//! point into the event's own arena (see [`crate::event`]).

// The C names (lower-case types, upper-case variants) are the ABI's, as `roomcast.h` spells them.
#![allow(non_camel_case_types)]

use std::os::raw::c_char;

/// The ABI version: it changes whenever a signature, a struct layout or the meaning of a value
/// changes incompatibly. `rc_abi_version()` returns the library's.
pub const RC_ABI_VERSION: u32 = 1;

/// What a call returned. `RC_OK` and `RC_EMPTY` are not failures; every other value is, with a
/// message in `rc_last_error_message()` (calls) or in the event's `text` (replies, `CLOSED`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_status {
    /// Done.
    RC_OK = 0,
    /// `rc_client_poll` / `rc_client_wait`: no event now (or within the timeout).
    RC_EMPTY = 1,
    /// The relay: the request is malformed or a value is out of its documented range.
    RC_BAD_REQUEST = 100,
    /// The relay: missing, expired or forged token.
    RC_UNAUTHORIZED = 101,
    /// The relay: the caller may not do this.
    RC_FORBIDDEN = 102,
    /// The relay: the per-connection send rate was exceeded.
    RC_RATE_LIMITED = 103,
    /// The relay (or this library, before sending): a body or value is larger than its limit.
    RC_TOO_LARGE = 104,
    /// The relay: no room with that id.
    RC_ROOM_NOT_FOUND = 105,
    /// The relay: a room with that id already exists.
    RC_ROOM_EXISTS = 106,
    /// The relay: this user has not joined the room.
    RC_NOT_IN_ROOM = 107,
    /// The relay: the user is banned from the room.
    RC_BANNED = 108,
    /// The relay: the user is muted.
    RC_MUTED = 109,
    /// The relay: the user is in the most rooms allowed.
    RC_TOO_MANY_ROOMS = 110,
    /// The relay: the room has the most attribute keys allowed.
    RC_ATTR_LIMIT = 111,
    /// The relay: the attribute key belongs to another user.
    RC_ATTR_NOT_OWNER = 112,
    /// The relay: no attribute with that key.
    RC_ATTR_NOT_FOUND = 113,
    /// The relay: too many items in one call.
    RC_BATCH_TOO_LARGE = 114,
    /// The relay: no message with that sequence number.
    RC_MESSAGE_NOT_FOUND = 115,
    /// The relay: the message may not be recalled (by this user, or any more).
    RC_RECALL_FORBIDDEN = 116,
    /// The relay: the room's ingress budget refused the message; retry later.
    RC_SHED = 117,
    /// The relay: a dependency is unreachable; retry later.
    RC_UNAVAILABLE = 118,
    /// The relay: a fault inside the relay.
    RC_INTERNAL = 119,
    /// A null pointer, a struct from another ABI version, or a value out of range.
    RC_INVALID_ARGUMENT = 200,
    /// A string argument is not valid UTF-8.
    RC_INVALID_UTF8 = 201,
    /// A null, freed or unknown client handle, or an event that was already freed.
    RC_INVALID_HANDLE = 202,
    /// The client was closed, or its connection is gone: no more requests, no more events after
    /// `RC_EVENT_CLOSED`.
    RC_CLOSED = 203,
    /// Too many requests in flight (`rc_config.max_requests`): poll their replies first.
    RC_BUSY = 204,
    /// No reply within `rc_config.request_timeout_ms` (the request may still have been done).
    RC_TIMEOUT = 205,
    /// The server could not be reached: bad address, no route, handshake failed or timed out,
    /// certificate rejected.
    RC_CONNECT = 206,
    /// The CA PEM (or the system root store) is unusable.
    RC_TLS = 207,
    /// The server broke the protocol.
    RC_PROTOCOL = 208,
    /// A bug inside this library was caught (a Rust panic); the call did nothing.
    RC_PANIC = 209,
}

/// What an event is. Which fields of [`rc_event`] each kind sets is documented on the fields.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_event_kind {
    /// No event (what a poll that returned `RC_EMPTY` leaves).
    RC_EVENT_NONE = 0,
    /// The connection is up: `user`, `conn_id`. Always the first event of a client that connects.
    RC_EVENT_CONNECTED = 1,
    /// The answer to a request: `request_id`, `request_kind`, `status`, `text`, and the
    /// request's result fields.
    RC_EVENT_REPLY = 2,
    /// A room message: `room`, `message`.
    RC_EVENT_MESSAGE = 3,
    /// Messages of `room` were skipped: `low`, `normal` (this client lagged, or its event
    /// queue was full).
    RC_EVENT_GAP = 4,
    /// `room` was destroyed: `reason` (`rc_destroy_reason`). The client is no longer a member.
    RC_EVENT_ROOM_DESTROYED = 5,
    /// This client was removed from `room`: `reason` (`rc_kick_reason`).
    RC_EVENT_KICKED = 6,
    /// The membership of `room` was resumed: after a reconnect within the offline grace (taken
    /// over at the hello), or after `RC_EVENT_RECONNECTED` (failover, `reconnect_for_ms`).
    /// `missed`: the messages this client will not receive (exact); `last_seq`: the room's
    /// newest sequence number at the resume. The messages after the last one received follow.
    RC_EVENT_RESUMED = 7,
    /// `users` were muted in `room` (empty room: everywhere) until `until_ms`.
    RC_EVENT_MUTED = 8,
    /// `users` were unmuted in `room` (empty room: everywhere).
    RC_EVENT_UNMUTED = 9,
    /// Mute-all was turned on in `room`.
    RC_EVENT_MUTE_ALL = 10,
    /// Mute-all was lifted in `room`.
    RC_EVENT_MUTE_ALL_LIFTED = 11,
    /// `users` were banned from `room` until `until_ms`.
    RC_EVENT_BANNED = 12,
    /// `users`' bans in `room` were lifted.
    RC_EVENT_UNBANNED = 13,
    /// `user` joined `room`.
    RC_EVENT_MEMBER_JOINED = 14,
    /// `user` left `room`.
    RC_EVENT_MEMBER_LEFT = 15,
    /// `room` has `count` members (large rooms, instead of join/leave events).
    RC_EVENT_MEMBER_COUNT = 16,
    /// Message `seq` of `room` was recalled: drop its body.
    RC_EVENT_RECALLED = 17,
    /// `attribute` of `room` was set; `version` is the room's attribute version after it.
    RC_EVENT_ATTRIBUTE_CHANGED = 18,
    /// `attribute.key` of `room` was deleted (`attribute.auto_delete`: because its owner left);
    /// `version` as above.
    RC_EVENT_ATTRIBUTE_REMOVED = 19,
    /// The connection is closed: `status` (`RC_OK` after `rc_client_close`; `RC_UNAUTHORIZED`,
    /// `RC_CONNECT`, `RC_TLS` when connecting failed; `RC_CLOSED` when the server or the network
    /// ended it), `close_code`, `text`. Always the last event.
    RC_EVENT_CLOSED = 20,
    /// Failover (`rc_config.reconnect_for_ms`): the connection died and the client is connected
    /// again, to the relay in `text` (`"ip:port"`). `RC_EVENT_RESUMED` or
    /// `RC_EVENT_RESUME_FAILED` follows for each room it was in.
    RC_EVENT_RECONNECTED = 21,
    /// Failover: the membership of `room` could not be resumed on the new relay and is over:
    /// `status` is the relay's refusal (`RC_ROOM_NOT_FOUND` when the room was destroyed
    /// meanwhile, `RC_BANNED`, ...), `text` its message.
    RC_EVENT_RESUME_FAILED = 22,
}

/// Which request a reply answers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_request_kind {
    /// Not a reply.
    RC_REQUEST_NONE = 0,
    /// `rc_client_join`: `info`, `last_seq`, `muted`, `messages` (history), `attributes`,
    /// `version` (the attribute version of the snapshot).
    RC_REQUEST_JOIN = 1,
    /// `rc_client_leave`: nothing more.
    RC_REQUEST_LEAVE = 2,
    /// `rc_client_send`: `seq`, `ts_ms`.
    RC_REQUEST_SEND = 3,
    /// `rc_client_room_info`: `info`.
    RC_REQUEST_ROOM_INFO = 4,
    /// `rc_client_set_attributes`: `version`, `results` (one per key, in order).
    RC_REQUEST_SET_ATTRIBUTES = 5,
    /// `rc_client_delete_attributes`: `version`, `results`.
    RC_REQUEST_DELETE_ATTRIBUTES = 6,
    /// `rc_client_get_attributes`: `version`, `attributes`.
    RC_REQUEST_GET_ATTRIBUTES = 7,
    /// `rc_client_recall`: nothing more.
    RC_REQUEST_RECALL = 8,
    /// `rc_client_history`: `messages`, oldest first.
    RC_REQUEST_HISTORY = 9,
    /// `rc_client_ping`: nothing more.
    RC_REQUEST_PING = 10,
}

/// The priority class the relay gave a message.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_class {
    /// Never shed while the connection lives.
    RC_CLASS_PROTECTED = 0,
    /// Reliable; shed after low.
    RC_CLASS_NORMAL = 1,
    /// Datagrams when they fit; shed first.
    RC_CLASS_LOW = 2,
}

/// Why a room went away (`RC_EVENT_ROOM_DESTROYED`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_destroy_reason {
    /// Destroyed through the admin API.
    RC_DESTROY_MANUAL = 0,
    /// No activity for the idle period.
    RC_DESTROY_IDLE = 1,
    /// Its fixed lifetime ran out.
    RC_DESTROY_LIFETIME = 2,
    /// Its scheduled destroy time came.
    RC_DESTROY_SCHEDULED = 3,
}

/// Why this client was removed from a room (`RC_EVENT_KICKED`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_kick_reason {
    /// Banned from the room.
    RC_KICK_BANNED = 0,
    /// The same user left or was moved on another device.
    RC_KICK_OTHER_DEVICE = 1,
    /// `single_room` mode: the user joined another room.
    RC_KICK_SINGLE_ROOM = 2,
    /// Offline for longer than the grace period.
    RC_KICK_OFFLINE = 3,
}

/// The relay's close code in `RC_EVENT_CLOSED` (`close_code`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rc_close_code {
    /// Closed on request, nothing wrong.
    RC_CLOSE_NORMAL = 0,
    /// The server is shutting down.
    RC_CLOSE_SHUTDOWN = 1,
    /// The token was missing, expired or forged.
    RC_CLOSE_UNAUTHORIZED = 2,
    /// A peer broke the protocol.
    RC_CLOSE_PROTOCOL = 3,
    /// This client could not keep up with its protected traffic.
    RC_CLOSE_TOO_SLOW = 4,
    /// A fault inside the relay.
    RC_CLOSE_INTERNAL = 5,
    /// No relay close code: closed locally, or by the network (timeout, unreachable).
    RC_CLOSE_NONE = 255,
}

/// A string or byte string owned by an event: `ptr` is never null, `ptr[len]` is always 0, so
/// `ptr` can be used as a C string (when the value holds no 0 byte, which ids never do).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_str {
    /// UTF-8 bytes (message bodies: any bytes), followed by a 0 byte.
    pub ptr: *const c_char,
    /// Length in bytes, without the final 0.
    pub len: usize,
}

/// A room message (in `RC_EVENT_MESSAGE`, or in a join's or history page's `messages`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_message {
    /// Room id.
    pub room: rc_str,
    /// Per-room sequence number, strictly increasing.
    pub seq: u64,
    /// Server timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Sender user id; empty for the system.
    pub from: rc_str,
    /// Message type.
    pub msg_type: rc_str,
    /// Payload (any bytes; also 0-terminated).
    pub body: rc_str,
    /// The class the relay gave it (`rc_class`).
    pub msg_class: u32,
    /// It came as a QUIC datagram (low-priority lane).
    pub datagram: bool,
    /// History only: the message was recalled (its body is empty).
    pub recalled: bool,
}

/// A room attribute.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_attribute {
    /// Key.
    pub key: rc_str,
    /// Value (empty in `RC_EVENT_ATTRIBUTE_REMOVED`).
    pub value: rc_str,
    /// The user who set it last (empty in `RC_EVENT_ATTRIBUTE_REMOVED`).
    pub owner: rc_str,
    /// Removed when its owner leaves (`RC_EVENT_ATTRIBUTE_REMOVED`: it was removed so).
    pub auto_delete: bool,
    /// When it was set, ms since the Unix epoch.
    pub set_ms: u64,
}

/// One key's outcome in a set or delete attributes reply.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_key_result {
    /// Key.
    pub key: rc_str,
    /// `RC_OK`, or why this key was refused.
    pub status: rc_status,
    /// The refusal's message (empty on `RC_OK`).
    pub text: rc_str,
}

/// Room info as a client sees it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_room_info {
    /// Room id.
    pub id: rc_str,
    /// Display name.
    pub name: rc_str,
    /// Changes every time a room with this id is created anew.
    pub epoch: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Members right now.
    pub member_count: u64,
    /// Up to 20 members, oldest joins first.
    pub members: *const rc_str,
    /// Entries in `members`.
    pub members_len: usize,
    /// Mute-all is on.
    pub mute_all: bool,
}

/// An event, filled by `rc_client_poll` / `rc_client_wait`. Its strings and arrays belong to
/// the event until `rc_event_free`; fields a kind does not use are zero (strings: empty, not
/// null; arrays: null with length 0).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_event {
    /// What happened (`rc_event_kind`).
    pub kind: rc_event_kind,
    /// `RC_EVENT_REPLY` and `RC_EVENT_CLOSED`: the outcome; `RC_EVENT_RESUME_FAILED`: the
    /// relay's refusal; `RC_OK` for every other kind.
    pub status: rc_status,
    /// `RC_EVENT_REPLY`: the id the request call returned.
    pub request_id: u64,
    /// `RC_EVENT_REPLY`: which request (`rc_request_kind`).
    pub request_kind: rc_request_kind,
    /// `RC_EVENT_REPLY`: the refusal's message; `RC_EVENT_CLOSED`: why it closed;
    /// `RC_EVENT_RECONNECTED`: the relay's address; `RC_EVENT_RESUME_FAILED`: the refusal's
    /// message.
    pub text: rc_str,
    /// The room the event or the request is about (empty when none).
    pub room: rc_str,
    /// `RC_EVENT_CONNECTED`: this client's user id; `RC_EVENT_MEMBER_*`: the member.
    pub user: rc_str,
    /// `RC_EVENT_CONNECTED`: this connection's id on the server.
    pub conn_id: u64,
    /// `RC_EVENT_MESSAGE`: the message.
    pub message: rc_message,
    /// `RC_EVENT_GAP`: low-priority messages skipped.
    pub low: u64,
    /// `RC_EVENT_GAP`: normal messages skipped.
    pub normal: u64,
    /// `RC_EVENT_ROOM_DESTROYED`: `rc_destroy_reason`; `RC_EVENT_KICKED`: `rc_kick_reason`.
    pub reason: u32,
    /// `RC_EVENT_CLOSED`: the relay's close code (`rc_close_code`).
    pub close_code: u32,
    /// Reply to send: the message's sequence number; `RC_EVENT_RECALLED`: the recalled one.
    pub seq: u64,
    /// Reply to send: the server timestamp, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Reply to join: the room's newest sequence number at the join (later messages are
    /// delivered); `RC_EVENT_RESUMED`: the newest at the resume.
    pub last_seq: u64,
    /// `RC_EVENT_RESUMED`: messages this client missed and will not receive (exact).
    pub missed: u64,
    /// `RC_EVENT_MEMBER_COUNT`: members now.
    pub count: u64,
    /// `RC_EVENT_MUTED` / `RC_EVENT_BANNED`: when it ends, ms since the Unix epoch.
    pub until_ms: u64,
    /// `RC_EVENT_MUTED` / `UNMUTED` / `BANNED` / `UNBANNED`: the users.
    pub users: *const rc_str,
    /// Entries in `users`.
    pub users_len: usize,
    /// Attribute events and attribute replies; reply to join: the snapshot's version.
    pub version: u64,
    /// `RC_EVENT_ATTRIBUTE_CHANGED` / `RC_EVENT_ATTRIBUTE_REMOVED`: the attribute.
    pub attribute: rc_attribute,
    /// Reply to join or room info: the room.
    pub info: rc_room_info,
    /// Reply to join: this user is muted in the room.
    pub muted: bool,
    /// Reply to join: the requested history; reply to history: the page. Oldest first.
    pub messages: *const rc_message,
    /// Entries in `messages`.
    pub messages_len: usize,
    /// Reply to join: every attribute; reply to get attributes: those asked that exist.
    pub attributes: *const rc_attribute,
    /// Entries in `attributes`.
    pub attributes_len: usize,
    /// Reply to set or delete attributes: one per key, in order.
    pub results: *const rc_key_result,
    /// Entries in `results`.
    pub results_len: usize,
    /// Private: identifies the event's buffers for `rc_event_free` (0: none).
    pub _handle: u64,
}

/// A key and its value for `rc_client_set_attributes`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_key_value {
    /// Key, 0-terminated UTF-8.
    pub key: *const c_char,
    /// Value, 0-terminated UTF-8 (at most 4096 bytes).
    pub value: *const c_char,
}

/// How to reach and authenticate to a server. Fill it with `rc_config_init` first, then set
/// what differs; the strings are copied by `rc_client_open`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rc_config {
    /// Set by `rc_config_init` to `sizeof(rc_config)`: catches a header from another version.
    pub size: u32,
    /// Server address(es), tried in order: `"host:port"` or `"ip:port"`, comma-separated.
    pub server: *const c_char,
    /// Name the server certificate is checked against; null: the host of each address, or
    /// `"localhost"` for an IP address (what `roomcast serve`'s development certificate holds).
    pub server_name: *const c_char,
    /// PEM text of the CA certificate(s) to trust; null: the system's root certificates.
    pub ca_pem: *const c_char,
    /// The client token (HS256 JWT from the operator's app server or `roomcast token`).
    pub token: *const c_char,
    /// Accept low-priority messages as QUIC datagrams (default true).
    pub datagrams: bool,
    /// Room events buffered for `rc_client_poll` (default, and 0: 8192). When it is full the
    /// client stops reading: the relay sheds this client's low, then normal messages and tells
    /// it with `RC_EVENT_GAP`; low datagrams that find it full are dropped and told the same way.
    pub event_queue: u32,
    /// Requests in flight (made, reply not yet polled) before calls return `RC_BUSY`
    /// (default, and 0: 256).
    pub max_requests: u32,
    /// How long connecting may take, over every address (default, and 0: 10000 ms).
    pub connect_timeout_ms: u32,
    /// How long a request may wait for its reply before it is answered `RC_TIMEOUT`
    /// (default, and 0: 10000 ms).
    pub request_timeout_ms: u32,
    /// Failover: how long, after the connection died (the relay was killed or restarted, the
    /// path is gone: silent for 10 s when this is set, or the relay shut down), the client
    /// keeps reconnecting to
    /// the addresses of `server`, round robin from the one that failed, pausing 100 ms to 5 s
    /// (doubling) after each round. On the new relay it resumes every room it joined:
    /// `RC_EVENT_RECONNECTED`, then per room `RC_EVENT_RESUMED` (exact `missed`; the messages
    /// after the last one received follow) or `RC_EVENT_RESUME_FAILED`. Requests made meanwhile
    /// wait for the new connection (within `request_timeout_ms`); a send whose connection died
    /// before its reply fails and is not repeated. When this time runs out, `RC_EVENT_CLOSED`.
    /// A refused token or certificate ends the client at once. Default, and 0: no reconnect
    /// (the connection's end is `RC_EVENT_CLOSED`, as before this field existed).
    pub reconnect_for_ms: u32,
}
