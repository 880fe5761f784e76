//! Events as C sees them: each [`Item`] becomes an [`rc_event`] whose strings and arrays live in
//! one arena ([`bumpalo::Bump`]: one allocation for a typical message) that the event registry
//! keeps until `rc_event_free`.
//!
//! The registry maps a never-reused `u64` (the event's `_handle`) to its arena. Freeing looks the
//! handle up, so a second free of the same event, or of a copy of it, finds nothing and is
//! reported instead of freeing twice.

use crate::client::{Final, Item, Reply};
use crate::status::{Failure, relay_status};
use crate::types::*;
use bumpalo::Bump;
use roomcast::client::ClientEvent;
use roomcast::protocol::{
    Attribute, Class, DestroyReason, Event, HistoryEntry, KickReason, Message, Response, RoomInfo,
    WireError,
};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// The empty string every unused string field points at (static: never freed).
const EMPTY: rc_str = rc_str {
    ptr: c"".as_ptr(),
    len: 0,
};

const NO_ATTRIBUTE: rc_attribute = rc_attribute {
    key: EMPTY,
    value: EMPTY,
    owner: EMPTY,
    auto_delete: false,
    set_ms: 0,
};

const NO_MESSAGE: rc_message = rc_message {
    room: EMPTY,
    seq: 0,
    ts_ms: 0,
    from: EMPTY,
    msg_type: EMPTY,
    body: EMPTY,
    msg_class: 0,
    datagram: false,
    recalled: false,
};

const NO_INFO: rc_room_info = rc_room_info {
    id: EMPTY,
    name: EMPTY,
    epoch: 0,
    created_ms: 0,
    member_count: 0,
    members: std::ptr::null(),
    members_len: 0,
    mute_all: false,
};

/// An event of kind `RC_EVENT_NONE` with every field empty: what a poll without an event leaves.
pub const NO_EVENT: rc_event = rc_event {
    kind: rc_event_kind::RC_EVENT_NONE,
    status: rc_status::RC_OK,
    request_id: 0,
    request_kind: rc_request_kind::RC_REQUEST_NONE,
    text: EMPTY,
    room: EMPTY,
    user: EMPTY,
    conn_id: 0,
    message: NO_MESSAGE,
    low: 0,
    normal: 0,
    reason: 0,
    close_code: 0,
    seq: 0,
    ts_ms: 0,
    last_seq: 0,
    missed: 0,
    count: 0,
    until_ms: 0,
    users: std::ptr::null(),
    users_len: 0,
    version: 0,
    attribute: NO_ATTRIBUTE,
    info: NO_INFO,
    muted: false,
    messages: std::ptr::null(),
    messages_len: 0,
    attributes: std::ptr::null(),
    attributes_len: 0,
    results: std::ptr::null(),
    results_len: 0,
    _handle: 0,
};

/// Builds an event's strings and arrays in its arena.
struct Arena<'a>(&'a Bump);

impl Arena<'_> {
    fn bytes(&self, b: &[u8]) -> rc_str {
        if b.is_empty() {
            return EMPTY;
        }
        let buf = self.0.alloc_slice_fill_copy(b.len() + 1, 0u8);
        buf[..b.len()].copy_from_slice(b);
        rc_str {
            ptr: buf.as_ptr().cast(),
            len: b.len(),
        }
    }

    fn str(&self, s: &str) -> rc_str {
        self.bytes(s.as_bytes())
    }

    fn strs(&self, v: &[String]) -> (*const rc_str, usize) {
        if v.is_empty() {
            return (std::ptr::null(), 0);
        }
        let out = self.0.alloc_slice_fill_iter(v.iter().map(|s| self.str(s)));
        (out.as_ptr(), out.len())
    }

    fn message(&self, m: &Message, datagram: bool, recalled: bool) -> rc_message {
        rc_message {
            room: self.str(&m.room),
            seq: m.seq,
            ts_ms: m.ts,
            from: self.str(&m.from),
            msg_type: self.str(&m.msg_type),
            body: self.bytes(&m.body),
            msg_class: class(m.class) as u32,
            datagram,
            recalled,
        }
    }

    fn history(&self, h: &[HistoryEntry]) -> (*const rc_message, usize) {
        if h.is_empty() {
            return (std::ptr::null(), 0);
        }
        let out = self.0.alloc_slice_fill_iter(
            h.iter()
                .map(|e| self.message(&e.message, false, e.recalled)),
        );
        (out.as_ptr(), out.len())
    }

    fn attribute(&self, a: &Attribute) -> rc_attribute {
        rc_attribute {
            key: self.str(&a.key),
            value: self.str(&a.value),
            owner: self.str(&a.owner),
            auto_delete: a.auto_delete,
            set_ms: a.set_ms,
        }
    }

    fn attributes(&self, a: &[Attribute]) -> (*const rc_attribute, usize) {
        if a.is_empty() {
            return (std::ptr::null(), 0);
        }
        let out = self
            .0
            .alloc_slice_fill_iter(a.iter().map(|a| self.attribute(a)));
        (out.as_ptr(), out.len())
    }

    fn results(&self, r: &[(String, Option<WireError>)]) -> (*const rc_key_result, usize) {
        if r.is_empty() {
            return (std::ptr::null(), 0);
        }
        let out = self.0.alloc_slice_fill_iter(r.iter().map(|(key, err)| {
            rc_key_result {
                key: self.str(key),
                status: err
                    .as_ref()
                    .map_or(rc_status::RC_OK, |e| relay_status(e.code)),
                text: err.as_ref().map_or(EMPTY, |e| self.str(&e.message)),
            }
        }));
        (out.as_ptr(), out.len())
    }

    fn info(&self, i: &RoomInfo) -> rc_room_info {
        let (members, members_len) = self.strs(&i.members);
        rc_room_info {
            id: self.str(&i.id),
            name: self.str(&i.name),
            epoch: i.epoch,
            created_ms: i.created_ms,
            member_count: i.member_count,
            members,
            members_len,
            mute_all: i.mute_all,
        }
    }
}

fn class(c: Class) -> rc_class {
    match c {
        Class::Protected => rc_class::RC_CLASS_PROTECTED,
        Class::Normal => rc_class::RC_CLASS_NORMAL,
        Class::Low => rc_class::RC_CLASS_LOW,
    }
}

fn destroy_reason(r: DestroyReason) -> rc_destroy_reason {
    match r {
        DestroyReason::Manual => rc_destroy_reason::RC_DESTROY_MANUAL,
        DestroyReason::Idle => rc_destroy_reason::RC_DESTROY_IDLE,
        DestroyReason::Lifetime => rc_destroy_reason::RC_DESTROY_LIFETIME,
        DestroyReason::Scheduled => rc_destroy_reason::RC_DESTROY_SCHEDULED,
    }
}

fn kick_reason(r: KickReason) -> rc_kick_reason {
    match r {
        KickReason::Banned => rc_kick_reason::RC_KICK_BANNED,
        KickReason::OtherDevice => rc_kick_reason::RC_KICK_OTHER_DEVICE,
        KickReason::SingleRoom => rc_kick_reason::RC_KICK_SINGLE_ROOM,
        KickReason::Offline => rc_kick_reason::RC_KICK_OFFLINE,
    }
}

/// A first arena chunk that holds a typical event whole.
fn arena_for(item: &Item) -> Bump {
    let size = match item {
        Item::Room(ClientEvent::Message { message: m, .. }) => {
            m.room.len() + m.from.len() + m.msg_type.len() + m.body.len() + 4
        }
        _ => 256,
    };
    Bump::with_capacity(size)
}

/// The event for `item`, with its arena registered; `_handle` identifies it for freeing.
pub fn to_event(item: &Item) -> rc_event {
    let bump = arena_for(item);
    let mut ev = fill(&Arena(&bump), item);
    ev._handle = register(bump);
    ev
}

fn fill(a: &Arena<'_>, item: &Item) -> rc_event {
    use rc_event_kind::*;
    let mut ev = NO_EVENT;
    match item {
        Item::Connected { user, conn_id } => {
            ev.kind = RC_EVENT_CONNECTED;
            ev.user = a.str(user);
            ev.conn_id = *conn_id;
        }
        Item::Reply(r) => fill_reply(a, r, &mut ev),
        Item::Closed(Final {
            status,
            close_code,
            text,
        }) => {
            ev.kind = RC_EVENT_CLOSED;
            ev.status = *status;
            ev.close_code = *close_code;
            ev.text = a.str(text);
        }
        Item::Room(event) => fill_room(a, event, &mut ev),
    }
    ev
}

fn fill_reply(a: &Arena<'_>, r: &Reply, ev: &mut rc_event) {
    ev.kind = rc_event_kind::RC_EVENT_REPLY;
    ev.request_id = r.id;
    ev.request_kind = r.kind;
    ev.room = a.str(&r.room);
    let resp = match &r.result {
        Ok(resp) => resp,
        Err(Failure { status, message }) => {
            ev.status = *status;
            ev.text = a.str(message);
            return;
        }
    };
    match resp {
        Response::Joined(j) => {
            ev.info = a.info(&j.room);
            ev.last_seq = j.last_seq;
            ev.muted = j.muted;
            (ev.messages, ev.messages_len) = a.history(&j.history);
            (ev.attributes, ev.attributes_len) = a.attributes(&j.attributes);
            ev.version = j.attr_version;
        }
        Response::Sent { seq, ts } => {
            ev.seq = *seq;
            ev.ts_ms = *ts;
        }
        Response::Info(info) => ev.info = a.info(info),
        Response::AttributeResults { version, results } => {
            ev.version = *version;
            (ev.results, ev.results_len) = a.results(results);
        }
        Response::Attributes {
            version,
            attributes,
        } => {
            ev.version = *version;
            (ev.attributes, ev.attributes_len) = a.attributes(attributes);
        }
        Response::History(h) => (ev.messages, ev.messages_len) = a.history(h),
        Response::Left | Response::Recalled | Response::Pong => {}
    }
}

fn fill_room(a: &Arena<'_>, event: &ClientEvent, ev: &mut rc_event) {
    use rc_event_kind::*;
    match event {
        ClientEvent::Message { message, datagram } => {
            ev.kind = RC_EVENT_MESSAGE;
            ev.message = a.message(message, *datagram, false);
            ev.room = ev.message.room;
        }
        ClientEvent::Gap { room, low, normal } => {
            ev.kind = RC_EVENT_GAP;
            ev.room = a.str(room);
            ev.low = *low;
            ev.normal = *normal;
        }
        ClientEvent::RoomDestroyed { room, reason } => {
            ev.kind = RC_EVENT_ROOM_DESTROYED;
            ev.room = a.str(room);
            ev.reason = destroy_reason(*reason) as u32;
        }
        ClientEvent::Kicked { room, reason } => {
            ev.kind = RC_EVENT_KICKED;
            ev.room = a.str(room);
            ev.reason = kick_reason(*reason) as u32;
        }
        ClientEvent::Resumed {
            room,
            missed,
            last_seq,
        } => {
            ev.kind = RC_EVENT_RESUMED;
            ev.room = a.str(room);
            ev.missed = *missed;
            ev.last_seq = *last_seq;
        }
        ClientEvent::Notice(notice) => fill_notice(a, notice, ev),
        ClientEvent::Reconnected { server } => {
            ev.kind = RC_EVENT_RECONNECTED;
            ev.text = a.str(&server.to_string());
        }
        ClientEvent::ResumeFailed { room, error } => {
            ev.kind = RC_EVENT_RESUME_FAILED;
            ev.room = a.str(room);
            ev.status = relay_status(error.code);
            ev.text = a.str(&format!("{}: {}", error.code, error.message));
        }
        // A poll turns `Closed` into `Item::Closed`; kept total for safety.
        ClientEvent::Closed { reason, .. } => {
            ev.kind = RC_EVENT_CLOSED;
            ev.status = rc_status::RC_CLOSED;
            ev.close_code = rc_close_code::RC_CLOSE_NONE as u32;
            ev.text = a.str(reason);
        }
    }
}

fn fill_notice(a: &Arena<'_>, notice: &Event, ev: &mut rc_event) {
    use rc_event_kind::*;
    ev.room = a.str(notice.room().unwrap_or(""));
    match notice {
        Event::Muted {
            users, until_ms, ..
        } => {
            ev.kind = RC_EVENT_MUTED;
            (ev.users, ev.users_len) = a.strs(users);
            ev.until_ms = *until_ms;
        }
        Event::Unmuted { users, .. } => {
            ev.kind = RC_EVENT_UNMUTED;
            (ev.users, ev.users_len) = a.strs(users);
        }
        Event::MuteAll { .. } => ev.kind = RC_EVENT_MUTE_ALL,
        Event::MuteAllLifted { .. } => ev.kind = RC_EVENT_MUTE_ALL_LIFTED,
        Event::Banned {
            users, until_ms, ..
        } => {
            ev.kind = RC_EVENT_BANNED;
            (ev.users, ev.users_len) = a.strs(users);
            ev.until_ms = *until_ms;
        }
        Event::Unbanned { users, .. } => {
            ev.kind = RC_EVENT_UNBANNED;
            (ev.users, ev.users_len) = a.strs(users);
        }
        Event::MemberJoined { user, .. } => {
            ev.kind = RC_EVENT_MEMBER_JOINED;
            ev.user = a.str(user);
        }
        Event::MemberLeft { user, .. } => {
            ev.kind = RC_EVENT_MEMBER_LEFT;
            ev.user = a.str(user);
        }
        Event::MemberCount { count, .. } => {
            ev.kind = RC_EVENT_MEMBER_COUNT;
            ev.count = *count;
        }
        Event::Recalled { seq, .. } => {
            ev.kind = RC_EVENT_RECALLED;
            ev.seq = *seq;
        }
        Event::AttributeChanged {
            version, attribute, ..
        } => {
            ev.kind = RC_EVENT_ATTRIBUTE_CHANGED;
            ev.version = *version;
            ev.attribute = a.attribute(attribute);
        }
        Event::AttributeRemoved {
            version, key, auto, ..
        } => {
            ev.kind = RC_EVENT_ATTRIBUTE_REMOVED;
            ev.version = *version;
            ev.attribute.key = a.str(key);
            ev.attribute.auto_delete = *auto;
        }
        // The client library turns these into their own `ClientEvent`s; `Ready` never reaches
        // an application. Mapped anyway so that no event is dropped.
        Event::Message(m) => {
            ev.kind = RC_EVENT_MESSAGE;
            ev.message = a.message(m, false, false);
        }
        Event::Gap { low, normal, .. } => {
            ev.kind = RC_EVENT_GAP;
            ev.low = *low;
            ev.normal = *normal;
        }
        Event::RoomDestroyed { reason, .. } => {
            ev.kind = RC_EVENT_ROOM_DESTROYED;
            ev.reason = destroy_reason(*reason) as u32;
        }
        Event::Kicked { reason, .. } => {
            ev.kind = RC_EVENT_KICKED;
            ev.reason = kick_reason(*reason) as u32;
        }
        Event::Resumed {
            missed, last_seq, ..
        } => {
            ev.kind = RC_EVENT_RESUMED;
            ev.missed = *missed;
            ev.last_seq = *last_seq;
        }
        Event::Ready { .. } => ev.kind = RC_EVENT_NONE,
    }
}

/// Live event arenas by handle.
struct Registry {
    next: u64,
    live: HashMap<u64, Bump>,
}

static EVENTS: LazyLock<Mutex<Registry>> = LazyLock::new(|| {
    Mutex::new(Registry {
        next: 1,
        live: HashMap::new(),
    })
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    EVENTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn register(bump: Bump) -> u64 {
    let mut r = registry();
    let handle = r.next;
    r.next += 1;
    r.live.insert(handle, bump);
    handle
}

/// Frees the arena of `handle`; false when there is none (0, already freed, or made up).
pub fn release(handle: u64) -> bool {
    // The arena is dropped outside the lock.
    let bump = registry().live.remove(&handle);
    bump.is_some()
}

/// Events handed out and not yet freed (for tests and leak checks).
pub fn live_events() -> usize {
    registry().live.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast::protocol::Class;

    fn message(body: &[u8]) -> Item {
        Item::Room(ClientEvent::Message {
            message: Message {
                room: "lobby".into(),
                seq: 7,
                ts: 1,
                from: "bob".into(),
                msg_type: "chat".into(),
                body: bytes::Bytes::copy_from_slice(body),
                class: Class::Low,
            },
            datagram: true,
        })
    }

    #[test]
    fn an_event_is_freed_once() {
        let ev = to_event(&message(b"hi"));
        assert_eq!(ev.kind, rc_event_kind::RC_EVENT_MESSAGE);
        assert_eq!((ev.message.seq, ev.message.body.len), (7, 2));
        assert!(ev.message.datagram);
        assert_eq!(ev.message.msg_class, rc_class::RC_CLASS_LOW as u32);
        assert!(release(ev._handle), "the first free releases the arena");
        assert!(!release(ev._handle), "a second free finds nothing");
        assert!(!release(0), "handle 0 is never live");
    }

    #[test]
    fn unused_strings_are_empty_not_null() {
        let ev = to_event(&message(b""));
        assert!(!ev.message.body.ptr.is_null() && ev.message.body.len == 0);
        assert!(!ev.text.ptr.is_null() && !ev.user.ptr.is_null());
        assert!(ev.users.is_null() && ev.users_len == 0);
        assert!(release(ev._handle));
    }
}
