//! Room data: attributes (KV with owners), recall and history.
//!
//! Attribute changes are durable changes (see [`super::durable`]): decided under the room's
//! change lock, stored, then applied under the room's lock, which publishes their events into
//! the ring there, so members see changes in version order, right after the snapshot their join
//! returned, and only changes that are durable.

use super::durable::NOT_MADE;
use super::relay::{Durable, Relay, now_ms};
use crate::protocol::{Attribute, ErrorCode, Event, HistoryEntry, Message, WireError};
use crate::room::{Room, RoomState, validate_id};
use crate::store::{AttrRecord, Op, StoreError, StoredMessage};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor<'a> {
    /// A client (must be a member; batch ≤ 10).
    Client(&'a str),
    /// The admin API acting as `owner` (batch ≤ 20).
    Admin(&'a str),
    /// A client of another relay, which checked that it is a member (a cluster forwards a
    /// client's change to the room's owner): as a client otherwise.
    Forwarded(&'a str),
}

impl<'a> Actor<'a> {
    fn user(&self) -> &'a str {
        match self {
            Actor::Client(u) | Actor::Admin(u) | Actor::Forwarded(u) => u,
        }
    }

    fn batch(&self) -> usize {
        match self {
            Actor::Client(_) | Actor::Forwarded(_) => CLIENT_BATCH,
            Actor::Admin(_) => ADMIN_BATCH,
        }
    }

    /// The same kind of actor, as `user`.
    fn as_user<'b>(&self, user: &'b str) -> Actor<'b> {
        match self {
            Actor::Client(_) => Actor::Client(user),
            Actor::Admin(_) => Actor::Admin(user),
            Actor::Forwarded(_) => Actor::Forwarded(user),
        }
    }
}

// ---- cluster: a client's attribute change of a room another relay owns ----
/// A client's attribute call, as its relay forwards it to the room's owner.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum AttrCall {
    /// [`Relay::set_attributes`].
    Set {
        /// The client.
        user: String,
        /// Key → value.
        entries: Vec<(String, String)>,
        /// Removed when the client leaves.
        auto_delete: bool,
        /// Overwrites another owner's keys.
        force: bool,
    },
    /// [`Relay::delete_attributes`].
    Delete {
        /// The client.
        user: String,
        /// The keys.
        keys: Vec<String>,
        /// Deletes another owner's keys.
        force: bool,
    },
}

impl AttrCall {
    fn user(&self) -> &str {
        match self {
            AttrCall::Set { user, .. } | AttrCall::Delete { user, .. } => user,
        }
    }
}

impl Relay {
    /// Makes `call` as `actor` (of the call's user) on this relay.
    pub(crate) fn attr_call(
        self: &Arc<Self>,
        kind: Actor<'_>,
        room_id: &str,
        call: &AttrCall,
    ) -> Result<Durable<AttrResults>, WireError> {
        let actor = kind.as_user(call.user());
        match call {
            AttrCall::Set {
                entries,
                auto_delete,
                force,
                ..
            } => self.set_attributes(actor, room_id, entries, *auto_delete, *force),
            AttrCall::Delete { keys, force, .. } => {
                self.delete_attributes(actor, room_id, keys, *force)
            }
        }
    }

    /// A client's change of a room this relay does not sequence: checked for membership here,
    /// then made by the room's owner (`None`: this relay makes it itself).
    fn forward_attrs(
        self: &Arc<Self>,
        actor: Actor<'_>,
        room_id: &str,
        call: impl FnOnce(String) -> AttrCall,
    ) -> Result<Option<Durable<AttrResults>>, WireError> {
        let Actor::Client(user) = actor else {
            return Ok(None);
        };
        let Some(cluster) = self.cluster().cloned() else {
            return Ok(None);
        };
        if cluster.sequences(room_id) {
            return Ok(None);
        }
        let room = self.room(room_id)?;
        self.check_member(&room, actor)?;
        let call = call(user.to_owned());
        let relay = self.clone();
        Ok(Some(Durable::later(async move {
            match cluster.forward_attrs(&relay, &room, &call).await? {
                Some(results) => Ok(results),
                // This relay owns the room now.
                None => {
                    relay
                        .attr_call(Actor::Client(""), &room.id, &call)?
                        .wait()
                        .await
                }
            }
        })))
    }
}
// ---- end cluster ----

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

    fn check_member(&self, room: &Room, actor: Actor<'_>) -> Result<(), WireError> {
        if let Actor::Client(u) = actor
            && !self.is_member(room, u)
        {
            return Err(werr(
                ErrorCode::NotInRoom,
                format!("join room {:?} before changing its attributes", room.id),
            ));
        }
        Ok(())
    }

    /// Sets attributes; each key is checked on its own (`ATTR_NOT_OWNER`, `ATTR_LIMIT`,
    /// `BAD_REQUEST`), the others still apply, all in one store transaction.
    pub fn set_attributes(
        self: &Arc<Self>,
        actor: Actor<'_>,
        room_id: &str,
        entries: &[(String, String)],
        auto_delete: bool,
        force: bool,
    ) -> Result<Durable<AttrResults>, WireError> {
        self.check_batch(actor, entries.len())?;
        validate_id("owner", actor.user())?;
        let forwarded = self.forward_attrs(actor, room_id, |user| AttrCall::Set {
            user,
            entries: entries.to_vec(),
            auto_delete,
            force,
        })?;
        if let Some(done) = forwarded {
            return Ok(done);
        }
        let entries = entries.to_vec();
        let now = now_ms();
        self.attr_change(
            actor,
            room_id,
            move |room, st, owner| plan_set(room, st, owner, &entries, auto_delete, force, now),
            move |room, st, (changes, results)| {
                for (key, attr) in changes {
                    st.attr_version += 1;
                    room.publish_event(
                        &Event::AttributeChanged {
                            room: room.id.clone(),
                            version: st.attr_version,
                            attribute: to_attribute(&key, &attr),
                        },
                        now,
                    );
                    st.attrs.insert(key, attr);
                }
                results
            },
        )
    }

    /// Deletes attributes; per key `ATTR_NOT_FOUND` or `ATTR_NOT_OWNER`. The admin always forces.
    pub fn delete_attributes(
        self: &Arc<Self>,
        actor: Actor<'_>,
        room_id: &str,
        keys: &[String],
        force: bool,
    ) -> Result<Durable<AttrResults>, WireError> {
        self.check_batch(actor, keys.len())?;
        let forwarded = self.forward_attrs(actor, room_id, |user| AttrCall::Delete {
            user,
            keys: keys.to_vec(),
            force,
        })?;
        if let Some(done) = forwarded {
            return Ok(done);
        }
        let force = force || matches!(actor, Actor::Admin(_));
        let keys = keys.to_vec();
        self.attr_change(
            actor,
            room_id,
            move |room, st, user| {
                let mut results = Vec::with_capacity(keys.len());
                let mut doomed: Vec<String> = Vec::new();
                for key in &keys {
                    let outcome = match st.attrs.get(key) {
                        Some(_) if doomed.contains(key) => None,
                        other => other,
                    };
                    let outcome = match outcome {
                        None => Err(werr(
                            ErrorCode::AttrNotFound,
                            format!("room {:?} has no attribute {key:?}", room.id),
                        )),
                        Some(a) if a.owner != user && !force => Err(werr(
                            ErrorCode::AttrNotOwner,
                            format!(
                                "attribute {key:?} belongs to {:?}; use force to delete it",
                                a.owner
                            ),
                        )),
                        Some(_) => Ok(()),
                    };
                    if outcome.is_ok() {
                        doomed.push(key.clone());
                    }
                    results.push((key.clone(), outcome.err()));
                }
                (removal_ops(room, st, &doomed), (doomed, results))
            },
            move |room, st, (doomed, results)| {
                let now = now_ms();
                for key in doomed {
                    remove_attr(room, st, key, false, now);
                }
                results
            },
        )
    }

    /// An attribute call as a durable change: under the room's change lock, a client must be a
    /// member, `plan` (given the room, its state and the acting user) decides the store ops and
    /// what to apply, and once they are durable `apply` changes the state (locked) and returns
    /// the per-key results, answered with the version after.
    fn attr_change<P: Send + 'static>(
        self: &Arc<Self>,
        actor: Actor<'_>,
        room_id: &str,
        plan: impl FnOnce(&Room, &RoomState, &str) -> (Vec<Op>, P) + Send + 'static,
        apply: impl FnOnce(&Room, &mut RoomState, P) -> Vec<(String, Option<WireError>)>
        + Send
        + 'static,
    ) -> Result<Durable<AttrResults>, WireError> {
        let room = self.room(room_id)?;
        self.check_writable()?;
        let relay = self.clone();
        let kind = actor.as_user("");
        let user = actor.user().to_owned();
        Ok(Durable::later(async move {
            let guard = relay.lock_room(&room).await?;
            let actor = kind.as_user(&user);
            let (ops, planned) = {
                let st = room.state();
                relay.check_member(&room, actor)?;
                plan(&room, &st, &user)
            };
            let target = room.clone();
            relay
                .commit(NOT_MADE, ops, move |ok| {
                    let _locked = guard;
                    ok.then(|| {
                        let mut st = target.state();
                        let results = apply(&target, &mut st, planned);
                        (st.attr_version, results)
                    })
                })
                .await
        }))
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
            self.check_member(&room, a)?;
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

    /// Removes the `auto_delete` attributes of the room's departed users (see
    /// `RoomState::departed`) who are not members again, durably first, with
    /// `AttributeRemoved{auto}` events. Nothing to do returns at once; a store that cannot write
    /// leaves them marked for a later try.
    pub(crate) async fn sweep(self: &Arc<Self>, room: &Arc<Room>) -> Result<(), WireError> {
        if room.state().departed.is_empty() {
            return Ok(());
        }
        self.check_writable()?;
        let guard = self.lock_room(room).await?;
        let (ops, doomed, users) = {
            let st = room.state();
            let users: Vec<String> = st
                .departed
                .iter()
                .filter(|u| !self.is_member(room, u))
                .cloned()
                .collect();
            let doomed: Vec<String> = st
                .attrs
                .iter()
                .filter(|(_, a)| a.auto_delete && users.contains(&a.owner))
                .map(|(k, _)| k.clone())
                .collect();
            (removal_ops(room, &st, &doomed), doomed, users)
        };
        let target = room.clone();
        let now = now_ms();
        self.commit(NOT_MADE, ops, move |ok| {
            let _locked = guard;
            ok.then(|| {
                let mut st = target.state();
                for key in doomed {
                    remove_attr(&target, &mut st, key, true, now);
                }
                for u in &users {
                    st.departed.remove(u);
                }
            })
        })
        .await
    }

    /// [`Relay::sweep`], with a failure logged (the timer pass tries again).
    pub(crate) async fn sweep_logged(self: &Arc<Self>, room: &Arc<Room>) {
        if let Err(e) = self.sweep(room).await {
            tracing::debug!(room = %room.id, error = %e.message, "auto-delete attributes kept for now");
        }
    }

    /// After a restart: marks the owners of `auto_delete` attributes who are not members as
    /// departed, for [`Relay::sweep`].
    pub(crate) fn mark_orphaned_attrs(&self, room: &Room, st: &mut RoomState) {
        let orphans: Vec<String> = st
            .attrs
            .values()
            .filter(|a| a.auto_delete && !self.is_member(room, &a.owner))
            .map(|a| a.owner.clone())
            .collect();
        st.departed.extend(orphans);
    }

    /// Recalls a message: `by` is the sender (within `recall_window_ms`, own messages only) or
    /// `None` for the admin (any message, any time). Members get `Recalled{seq}` once the recall
    /// is durable.
    pub fn recall(
        self: &Arc<Self>,
        by: Option<&str>,
        room_id: &str,
        seq: u64,
    ) -> Result<Durable<()>, WireError> {
        let room = self.room(room_id)?;
        self.check_writable()?;
        let relay = self.clone();
        let by = by.map(str::to_owned);
        Ok(Durable::later(async move {
            let guard = relay.lock_room(&room).await?;
            let now = now_ms();
            let found = relay.find_message(&room, seq)?;
            let Some((from, ts, recalled)) = found else {
                return Err(werr(
                    ErrorCode::MessageNotFound,
                    format!("room {:?} has no message {seq}", room.id),
                ));
            };
            if let Some(user) = &by {
                if &from != user {
                    return Err(werr(
                        ErrorCode::RecallForbidden,
                        "only the sender (or the admin) may recall a message",
                    ));
                }
                let window = relay.config.store.recall_window_ms;
                if now > ts.saturating_add(window) {
                    return Err(werr(
                        ErrorCode::RecallForbidden,
                        format!("message {seq} is older than the recall window of {window} ms"),
                    ));
                }
            }
            if recalled {
                return Ok(());
            }
            let ops = vec![Op::Recall {
                room: room.id.clone(),
                seq,
            }];
            let target = room.clone();
            relay
                .commit(NOT_MADE, ops, move |ok| {
                    let _locked = guard;
                    ok.then(|| {
                        let mut st = target.state();
                        if !st.recent_recalls.insert(seq) {
                            return;
                        }
                        while st.recent_recalls.len() > RECENT_RECALLS {
                            st.recent_recalls.pop_first();
                        }
                        target.publish_event(
                            &Event::Recalled {
                                room: target.id.clone(),
                                seq,
                            },
                            now,
                        );
                    })
                })
                .await
        }))
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
        if let Some(m) = self.store().message(&room.id, seq).map_err(read_error)? {
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
        let stored = self.stored_history(room, before_seq, limit)?;
        Ok(self.merge_history(room, stored, before_seq, limit, recalls))
    }

    // ---- cluster: a relay's first member of a room another relay sequences ----
    /// Brings the local ring's numbering of `room` up to what the stream holds when this relay
    /// does not sequence the room and has no member there (its ring gets no live traffic): a
    /// join or resume then counts from the room's real newest message, history below it and
    /// live traffic above it (a live message at or below it is refused by the ring, being in
    /// history).
    pub(crate) fn catch_up(&self, room: &Room) -> Result<(), WireError> {
        if self.sequences(&room.id) || self.core().room(&room.id).is_some_and(|r| !r.is_empty()) {
            return Ok(());
        }
        let committed = self.stored_history(room, None, 1)?.committed;
        room.ring.resume_seq(committed.saturating_add(1));
        Ok(())
    }
    // ---- end cluster ----

    /// The stored part of a history page: the store's newest committed sequence number and up
    /// to `limit` stored messages with `seq < before_seq`.
    pub(crate) fn stored_history(
        &self,
        room: &Room,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<StoredPage, WireError> {
        let store = self.store();
        let messages = store
            .history(&room.id, before_seq, limit)
            .map_err(read_error)?;
        let committed = match before_seq {
            None => messages.last().map_or(0, |m| m.seq),
            Some(_) => store
                .history(&room.id, None, 1)
                .map_err(read_error)?
                .last()
                .map_or(0, |m| m.seq),
        };
        Ok(StoredPage {
            committed,
            messages,
        })
    }

    /// A history page from its stored part and the ring: everything up to the store's newest
    /// committed message comes from the store (which applies retention); what the ring holds
    /// above it is on its way to the store (`batched` mode). Only messages with
    /// `seq < before_seq`, and none the ring has not placed yet (a message is shown once it is
    /// visible), at most `limit`, oldest first.
    pub(crate) fn merge_history(
        &self,
        room: &Room,
        stored: StoredPage,
        before_seq: Option<u64>,
        limit: usize,
        recalls: &BTreeSet<u64>,
    ) -> Vec<HistoryEntry> {
        let mut visible = room.ring.join_point().last_seq;
        // ---- cluster: what the room's owner stored is visible (its sender was answered) ----
        if !self.sequences(&room.id) {
            visible = visible.max(stored.committed);
        }
        // ---- end cluster ----
        let bound = before_seq
            .unwrap_or(u64::MAX)
            .min(visible.saturating_add(1));
        let floor = stored
            .committed
            .max(stored.messages.last().map_or(0, |m| m.seq));
        let pending: Vec<Message> = room
            .ring
            .history_between(floor, bound)
            .into_iter()
            .filter_map(|e| e.history.clone())
            .collect();
        let mut out: Vec<HistoryEntry> = stored
            .messages
            .into_iter()
            .filter(|m| m.seq < bound)
            .map(|m| history_entry(&room.id, m, recalls))
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
        let skip = out.len().saturating_sub(limit);
        out.split_off(skip)
    }
}

/// The stored part of a history page (see [`Relay::stored_history`]).
pub(crate) struct StoredPage {
    /// The store's newest committed sequence number in the room.
    pub(crate) committed: u64,
    /// The stored messages of the page, oldest first.
    messages: Vec<StoredMessage>,
}

/// A stored message as a history entry; a recalled one (in the store or in `recalls`) without
/// its body.
fn history_entry(room: &str, m: StoredMessage, recalls: &BTreeSet<u64>) -> HistoryEntry {
    let recalled = m.recalled || recalls.contains(&m.seq);
    HistoryEntry {
        recalled,
        message: Message {
            room: room.to_owned(),
            seq: m.seq,
            ts: m.ts,
            from: m.from,
            msg_type: m.msg_type,
            body: if recalled {
                bytes::Bytes::new()
            } else {
                m.body
            },
            class: m.class,
        },
    }
}

/// A failed store read as the caller sees it: `UNAVAILABLE` while the store cannot be read
/// (retry later), `INTERNAL` for a damaged record.
fn read_error(e: StoreError) -> WireError {
    match e {
        StoreError::Unavailable(m) | StoreError::Fenced(m) => werr(
            ErrorCode::Unavailable,
            format!("the store cannot be read now ({m}); retry later"),
        ),
        StoreError::Damaged(m) => werr(ErrorCode::Internal, format!("the store: {m}")),
    }
}

/// The changes of an attribute set, decided on `st`: the store ops (with the room's record at the
/// new version), and the `(key, attribute)` pairs to apply in order with the per-key results.
#[allow(clippy::type_complexity)]
fn plan_set(
    room: &Room,
    st: &RoomState,
    owner: &str,
    entries: &[(String, String)],
    auto_delete: bool,
    force: bool,
    now: u64,
) -> (
    Vec<Op>,
    (Vec<(String, AttrRecord)>, Vec<(String, Option<WireError>)>),
) {
    // Keys this call sets, with their owner, on top of the room's: a later entry of the same
    // call sees an earlier one.
    let mut set: HashMap<&str, &str> = HashMap::new();
    let mut added = 0;
    let mut results = Vec::with_capacity(entries.len());
    let mut changes = Vec::new();
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
            let current = set
                .get(key.as_str())
                .copied()
                .or_else(|| st.attrs.get(key).map(|a| a.owner.as_str()));
            match current {
                Some(o) if o != owner && !force => Err(werr(
                    ErrorCode::AttrNotOwner,
                    format!("attribute {key:?} belongs to {o:?}; use force to take it over"),
                )),
                None if st.attrs.len() + added >= MAX_KEYS => Err(werr(
                    ErrorCode::AttrLimit,
                    format!(
                        "room {:?} already has {MAX_KEYS} attributes, the most allowed",
                        room.id
                    ),
                )),
                _ => Ok(()),
            }
        })();
        if outcome.is_ok() {
            if set.insert(key, owner).is_none() && !st.attrs.contains_key(key) {
                added += 1;
            }
            let attr = AttrRecord {
                value: value.clone(),
                owner: owner.to_owned(),
                auto_delete,
                set_ms: now,
            };
            ops.push(Op::PutAttr {
                room: room.id.clone(),
                key: key.clone(),
                attr: attr.clone(),
            });
            changes.push((key.clone(), attr));
        }
        results.push((key.clone(), outcome.err()));
    }
    let version = st.attr_version + changes.len() as u64;
    if !ops.is_empty() {
        let mut record = room.record(st);
        record.attr_version = version;
        ops.push(Op::PutRoom(record));
    }
    (ops, (changes, results))
}

/// The store ops that delete `keys` (present in `st`) and record the room's version after.
fn removal_ops(room: &Room, st: &RoomState, keys: &[String]) -> Vec<Op> {
    if keys.is_empty() {
        return Vec::new();
    }
    let mut ops: Vec<Op> = keys
        .iter()
        .map(|key| Op::DeleteAttr {
            room: room.id.clone(),
            key: key.clone(),
        })
        .collect();
    let mut record = room.record(st);
    record.attr_version = st.attr_version + keys.len() as u64;
    ops.push(Op::PutRoom(record));
    ops
}

/// Sender and timestamp of a ring entry that keeps no decoded copy (not kept in history).
fn message_meta(frame: &bytes::Bytes) -> (String, u64) {
    match crate::protocol::decode_body::<Event>(frame.get(4..).unwrap_or_default()) {
        Ok(Event::Message(m)) => (m.from, m.ts),
        _ => (String::new(), 0),
    }
}

/// Removes attribute `key` (it exists), bumps the version and tells the members
/// (`AttributeRemoved`, `auto` when auto-delete removed it).
pub(super) fn remove_attr(room: &Room, st: &mut RoomState, key: String, auto: bool, now: u64) {
    st.attrs.remove(&key);
    st.attr_version += 1;
    room.publish_event(
        &Event::AttributeRemoved {
            room: room.id.clone(),
            version: st.attr_version,
            key,
            auto,
        },
        now,
    );
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
