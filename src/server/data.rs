//! Room data: attributes (KV with owners), recall and history.
//!
//! Attribute changes happen under the room's lock and publish their event into the ring there, so
//! members see changes in version order, right after the snapshot their join returned.

use super::relay::{Durable, Relay, now_ms};
use crate::protocol::{Attribute, ErrorCode, Event, HistoryEntry, Message, WireError};
use crate::room::{Room, RoomState, validate_id};
use crate::store::{AttrRecord, Op};
use std::collections::BTreeSet;

/// Most attribute keys in a room.
pub const MAX_KEYS: usize = 100;
/// Longest attribute value, bytes.
pub const MAX_VALUE: usize = 4096;
/// Most keys in one client call.
pub const CLIENT_BATCH: usize = 10;
/// Most keys in one admin call.
pub const ADMIN_BATCH: usize = 20;
/// Largest history page.
pub const HISTORY_PAGE: usize = 200;
/// Recalled sequence numbers remembered in memory per room.
const RECENT_RECALLS: usize = 1024;

fn werr(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

/// Checks an attribute key: 1–128 characters from `[A-Za-z0-9+=_-]`.
pub fn validate_key(key: &str) -> Result<(), WireError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'=' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(werr(
            ErrorCode::BadRequest,
            format!("attribute key must be 1-128 characters from [A-Za-z0-9+=_-], got {key:?}"),
        ))
    }
}

/// The attributes of a room, in key order.
pub(crate) fn attributes_of(st: &RoomState) -> Vec<Attribute> {
    st.attrs.iter().map(|(k, a)| to_attribute(k, a)).collect()
}

fn to_attribute(key: &str, a: &AttrRecord) -> Attribute {
    Attribute {
        key: key.to_owned(),
        value: a.value.clone(),
        owner: a.owner.clone(),
        auto_delete: a.auto_delete,
        set_ms: a.set_ms,
    }
}

/// Who is changing attributes.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A client (must be a member; batch ≤ 10).
    Client(&'a str),
    /// The admin API acting as `owner` (batch ≤ 20).
    Admin(&'a str),
}

impl Actor<'_> {
    fn user(&self) -> &str {
        match self {
            Actor::Client(u) | Actor::Admin(u) => u,
        }
    }

    fn batch(&self) -> usize {
        match self {
            Actor::Client(_) => CLIENT_BATCH,
            Actor::Admin(_) => ADMIN_BATCH,
        }
    }
}

/// Per-key outcome of an attribute call, and the version after it.
pub type AttrResults = (u64, Vec<(String, Option<WireError>)>);

impl Relay {
    fn check_batch(&self, actor: Actor<'_>, n: usize) -> Result<(), WireError> {
        let max = actor.batch();
        if n == 0 || n > max {
            return Err(werr(
                ErrorCode::BatchTooLarge,
                format!("an attribute call takes 1..={max} keys, got {n}"),
            ));
        }
        Ok(())
    }

    fn check_member(room: &Room, st: &RoomState, actor: Actor<'_>) -> Result<(), WireError> {
        if let Actor::Client(u) = actor
            && st.member(u).is_none()
        {
            return Err(werr(
                ErrorCode::NotInRoom,
                format!("join room {:?} before changing its attributes", room.id),
            ));
        }
        Ok(())
    }

    /// Sets attributes; each key is checked on its own (`ATTR_NOT_OWNER`, `ATTR_LIMIT`,
    /// `BAD_REQUEST`), the others still apply.
    pub fn set_attributes(
        &self,
        actor: Actor<'_>,
        room_id: &str,
        entries: &[(String, String)],
        auto_delete: bool,
        force: bool,
    ) -> Result<Durable<AttrResults>, WireError> {
        self.check_batch(actor, entries.len())?;
        validate_id("owner", actor.user())?;
        let room = self.room(room_id)?;
        let now = now_ms();
        let mut st = room.state();
        Self::check_member(&room, &st, actor)?;
        let owner = actor.user().to_owned();
        let mut results = Vec::with_capacity(entries.len());
        let mut ops = Vec::new();
        for (key, value) in entries {
            let outcome = (|| {
                validate_key(key)?;
                if value.len() > MAX_VALUE {
                    return Err(werr(
                        ErrorCode::TooLarge,
                        format!(
                            "attribute value is {} bytes, the most is {MAX_VALUE}",
                            value.len()
                        ),
                    ));
                }
                match st.attrs.get(key) {
                    Some(a) if a.owner != owner && !force => {
                        return Err(werr(
                            ErrorCode::AttrNotOwner,
                            format!(
                                "attribute {key:?} belongs to {:?}; use force to take it over",
                                a.owner
                            ),
                        ));
                    }
                    None if st.attrs.len() >= MAX_KEYS => {
                        return Err(werr(
                            ErrorCode::AttrLimit,
                            format!(
                                "room {room_id:?} already has {MAX_KEYS} attributes, the most allowed"
                            ),
                        ));
                    }
                    _ => {}
                }
                Ok(())
            })();
            if outcome.is_ok() {
                let attr = AttrRecord {
                    value: value.clone(),
                    owner: owner.clone(),
                    auto_delete,
                    set_ms: now,
                };
                st.attr_version += 1;
                room.publish_event(
                    &Event::AttributeChanged {
                        room: room.id.clone(),
                        version: st.attr_version,
                        attribute: to_attribute(key, &attr),
                    },
                    now,
                );
                st.attrs.insert(key.clone(), attr.clone());
                ops.push(Op::PutAttr {
                    room: room.id.clone(),
                    key: key.clone(),
                    attr,
                });
            }
            results.push((key.clone(), outcome.err()));
        }
        Ok(self.finish_attrs(&room, &st, ops, results))
    }

    fn finish_attrs(
        &self,
        room: &Room,
        st: &RoomState,
        mut ops: Vec<Op>,
        results: Vec<(String, Option<WireError>)>,
    ) -> Durable<AttrResults> {
        if !ops.is_empty() {
            ops.push(Op::PutRoom(room.record(st)));
        }
        Durable {
            value: (st.attr_version, results),
            ack: self.persist(ops),
        }
    }

    /// Deletes attributes; per key `ATTR_NOT_FOUND` or `ATTR_NOT_OWNER`. The admin always forces.
    pub fn delete_attributes(
        &self,
        actor: Actor<'_>,
        room_id: &str,
        keys: &[String],
        force: bool,
    ) -> Result<Durable<AttrResults>, WireError> {
        self.check_batch(actor, keys.len())?;
        let force = force || matches!(actor, Actor::Admin(_));
        let room = self.room(room_id)?;
        let now = now_ms();
        let mut st = room.state();
        Self::check_member(&room, &st, actor)?;
        let mut results = Vec::with_capacity(keys.len());
        let mut ops = Vec::new();
        for key in keys {
            let outcome = match st.attrs.get(key) {
                None => Err(werr(
                    ErrorCode::AttrNotFound,
                    format!("room {room_id:?} has no attribute {key:?}"),
                )),
                Some(a) if a.owner != actor.user() && !force => Err(werr(
                    ErrorCode::AttrNotOwner,
                    format!(
                        "attribute {key:?} belongs to {:?}; use force to delete it",
                        a.owner
                    ),
                )),
                Some(_) => Ok(()),
            };
            if outcome.is_ok() {
                ops.push(remove_attr(&room, &mut st, key.clone(), false, now));
            }
            results.push((key.clone(), outcome.err()));
        }
        Ok(self.finish_attrs(&room, &st, ops, results))
    }

    /// Reads attributes (all when `keys` is empty). Clients must be members.
    pub fn get_attributes(
        &self,
        actor: Option<Actor<'_>>,
        room_id: &str,
        keys: &[String],
    ) -> Result<(u64, Vec<Attribute>), WireError> {
        if keys.len() > MAX_KEYS {
            return Err(werr(
                ErrorCode::BatchTooLarge,
                format!("ask for at most {MAX_KEYS} keys, got {}", keys.len()),
            ));
        }
        let room = self.room(room_id)?;
        let st = room.state();
        if let Some(a) = actor {
            Self::check_member(&room, &st, a)?;
        }
        let attrs = if keys.is_empty() {
            attributes_of(&st)
        } else {
            let wanted: BTreeSet<&String> = keys.iter().collect();
            wanted
                .into_iter()
                .filter_map(|k| st.attrs.get(k).map(|a| to_attribute(k, a)))
                .collect()
        };
        Ok((st.attr_version, attrs))
    }

    /// Removes the `auto_delete` attributes `user` owns (it is leaving), with events.
    pub(crate) fn auto_delete_attrs(&self, room: &Room, st: &mut RoomState, user: &str, now: u64) {
        self.auto_delete_where(room, st, now, |a| a.owner == user);
    }

    /// After a restart: removes the `auto_delete` attributes whose owners are not members.
    pub(crate) fn clear_orphaned_attrs(&self, room: &Room, st: &mut RoomState, now: u64) {
        let members: BTreeSet<String> = st.members().map(|(u, _)| u.clone()).collect();
        self.auto_delete_where(room, st, now, |a| !members.contains(&a.owner));
    }

    fn auto_delete_where(
        &self,
        room: &Room,
        st: &mut RoomState,
        now: u64,
        gone: impl Fn(&AttrRecord) -> bool,
    ) {
        let keys: Vec<String> = st
            .attrs
            .iter()
            .filter(|(_, a)| a.auto_delete && gone(a))
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let mut ops = Vec::new();
        for key in keys {
            ops.push(remove_attr(room, st, key, true, now));
        }
        ops.push(Op::PutRoom(room.record(st)));
        // Later acks cover it: the store applies in order.
        let _ = self.persist(ops);
    }

    /// Recalls a message: `by` is the sender (within `recall_window_ms`, own messages only) or
    /// `None` for the admin (any message, any time). Members get `Recalled{seq}`.
    pub fn recall(
        &self,
        by: Option<&str>,
        room_id: &str,
        seq: u64,
    ) -> Result<Durable<()>, WireError> {
        let room = self.room(room_id)?;
        let now = now_ms();
        let found = self.find_message(&room, seq)?;
        let Some((from, ts, recalled)) = found else {
            return Err(werr(
                ErrorCode::MessageNotFound,
                format!("room {room_id:?} has no message {seq}"),
            ));
        };
        if let Some(user) = by {
            if from != user {
                return Err(werr(
                    ErrorCode::RecallForbidden,
                    "only the sender (or the admin) may recall a message",
                ));
            }
            let window = self.config.store.recall_window_ms;
            if now > ts.saturating_add(window) {
                return Err(werr(
                    ErrorCode::RecallForbidden,
                    format!("message {seq} is older than the recall window of {window} ms"),
                ));
            }
        }
        if recalled {
            return Ok(Durable::now(()));
        }
        let mut st = room.state();
        if !st.recent_recalls.insert(seq) {
            return Ok(Durable::now(()));
        }
        while st.recent_recalls.len() > RECENT_RECALLS {
            st.recent_recalls.pop_first();
        }
        room.publish_event(
            &Event::Recalled {
                room: room.id.clone(),
                seq,
            },
            now,
        );
        let ack = self.persist(vec![Op::Recall {
            room: room.id.clone(),
            seq,
        }]);
        Ok(Durable { value: (), ack })
    }

    /// `(from, ts, recalled)` of message `seq`, from the store or the ring.
    fn find_message(
        &self,
        room: &Room,
        seq: u64,
    ) -> Result<Option<(String, u64, bool)>, WireError> {
        if seq == 0 || seq > room.ring.last_seq() {
            return Ok(None);
        }
        let recalled_mem = room.state().recent_recalls.contains(&seq);
        if let Some(m) = self
            .store()
            .message(&room.id, seq)
            .map_err(|e| werr(ErrorCode::Internal, e.to_string()))?
        {
            return Ok(Some((m.from, m.ts, m.recalled || recalled_mem)));
        }
        let tail = room.ring.tail();
        let floor = tail.saturating_sub(room.ring.capacity());
        for pos in (floor..tail).rev() {
            if let crate::room::Read::Entry(e) = room.ring.read(pos)
                && e.seq == seq
            {
                let (from, ts) = e
                    .history
                    .as_ref()
                    .map(|m| (m.from.clone(), m.ts))
                    .unwrap_or_else(|| message_meta(&e.frame));
                return Ok(Some((from, ts, recalled_mem)));
            }
        }
        Ok(None)
    }

    /// A page of history: up to `limit` (1..=200) messages with `seq < before_seq`, oldest first.
    pub fn history(
        &self,
        room_id: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, WireError> {
        if limit == 0 || limit > HISTORY_PAGE {
            return Err(werr(
                ErrorCode::BadRequest,
                format!("limit must be 1..={HISTORY_PAGE}, got {limit}"),
            ));
        }
        let room = self.room(room_id)?;
        let recalls = room.state().recent_recalls.clone();
        self.history_of(&room, before_seq, limit, &recalls)
    }

    /// History from the store, completed with messages still on their way to it from the ring.
    pub(crate) fn history_of(
        &self,
        room: &Room,
        before_seq: Option<u64>,
        limit: usize,
        recalls: &BTreeSet<u64>,
    ) -> Result<Vec<HistoryEntry>, WireError> {
        // Everything up to the store's newest committed message comes from the store (which
        // applies retention); what the ring holds above it is on its way to the store.
        let store = self.store();
        let internal = |e: crate::store::StoreError| werr(ErrorCode::Internal, e.to_string());
        let committed = store
            .history(&room.id, None, 1)
            .map_err(internal)?
            .last()
            .map_or(0, |m| m.seq);
        let stored = store
            .history(&room.id, before_seq, limit)
            .map_err(internal)?;
        let floor = committed.max(stored.last().map_or(0, |m| m.seq));
        let bound = before_seq.unwrap_or(u64::MAX);
        let pending: Vec<Message> = room
            .ring
            .history_between(floor, bound)
            .into_iter()
            .filter_map(|e| e.history.clone())
            .collect();
        let mut out: Vec<HistoryEntry> = stored
            .into_iter()
            .map(|m| HistoryEntry {
                recalled: m.recalled || recalls.contains(&m.seq),
                message: Message {
                    room: room.id.clone(),
                    seq: m.seq,
                    ts: m.ts,
                    from: m.from,
                    msg_type: m.msg_type,
                    body: if m.recalled {
                        bytes::Bytes::new()
                    } else {
                        m.body
                    },
                    class: m.class,
                },
            })
            .collect();
        out.extend(pending.into_iter().map(|mut m| {
            let recalled = recalls.contains(&m.seq);
            if recalled {
                m.body = bytes::Bytes::new();
            }
            HistoryEntry {
                message: m,
                recalled,
            }
        }));
        for e in &mut out {
            if e.recalled {
                e.message.body = bytes::Bytes::new();
            }
        }
        let skip = out.len().saturating_sub(limit);
        Ok(out.split_off(skip))
    }
}

/// Sender and timestamp of a ring entry that keeps no decoded copy (not kept in history).
fn message_meta(frame: &bytes::Bytes) -> (String, u64) {
    match crate::protocol::decode_body::<Event>(frame.get(4..).unwrap_or_default()) {
        Ok(Event::Message(m)) => (m.from, m.ts),
        _ => (String::new(), 0),
    }
}

/// Removes attribute `key` (it exists), bumps the version, tells the members
/// (`AttributeRemoved`, `auto` when auto-delete removed it) and returns the store op.
fn remove_attr(room: &Room, st: &mut RoomState, key: String, auto: bool, now: u64) -> Op {
    st.attrs.remove(&key);
    st.attr_version += 1;
    room.publish_event(
        &Event::AttributeRemoved {
            room: room.id.clone(),
            version: st.attr_version,
            key: key.clone(),
            auto,
        },
        now,
    );
    Op::DeleteAttr {
        room: room.id.clone(),
        key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_keys_follow_the_spec() {
        assert!(validate_key("a+b=c_d-E9").is_ok());
        assert!(validate_key(&"k".repeat(128)).is_ok());
        assert!(validate_key(&"k".repeat(129)).is_err());
        assert!(validate_key("").is_err());
        assert!(validate_key("a.b").is_err());
        assert!(validate_key("a b").is_err());
    }
}
