//! Room state as plain data, and the lock-free broadcast ring that fans a room's messages out.
//!
//! A [`Room`] has two independent halves:
//! - the **publish side**, [`Ring`] plus [`Watchers`]: senders publish into the ring and wake the
//!   subscribed connections; subscribers read at their own cursor and never block a publisher;
//! - the **control side**, [`RoomState`] behind a mutex that only joins, leaves, sends (for the
//!   mute check) and the admin API take; delivery tasks never touch it. Who is a member, over
//!   which connections, is [`core::Core`]'s: one state machine across rooms.
//!
//! The [`Fanout`] trait is the publish side's interface, so a clustered transport can stand in for
//! the local ring later without touching the code that sends.
//!
//! A room's durable changes (its policies, moderation lists, attributes, its destruction) are
//! serialised by [`Room::changes`], an async lock held from the decision through the store's
//! acknowledgement to the change in memory, so the store sees them in the order memory makes them
//! and nothing becomes visible before it is durable.

pub mod core;
pub mod records;
pub mod ring;

use crate::policy::{BudgetConfig, DestroyPolicy, IngressBudget, Moderation};
use crate::protocol::{Class, DestroyReason, Event, Message, encode_datagram, encode_frame};
pub use crate::protocol::{validate_id, validate_msg_type};
use bytes::Bytes;
use records::{AttrRecord, RoomRecord};
pub use ring::{Entry, Hold, JoinPoint, Payload, Read, Refused, Ring, Signal, Watchers};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// A message about to be published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Sender user id; empty for the system.
    pub from: String,
    /// Message type.
    pub msg_type: String,
    /// Payload.
    pub body: Bytes,
    /// Its class.
    pub class: Class,
    /// Whether join history may show it.
    pub keep_in_history: bool,
}

/// The publish side of a room: the one interface senders use.
pub trait Fanout: Send + Sync {
    /// Publishes `msg` at wall-clock `now_ms` and wakes the subscribers. Never waits for a
    /// subscriber. `stamped` sees the message's payload and sequence number while publishers are
    /// still serialised, so whatever it records (history) is in order and cannot race the room's
    /// destruction, and decides whether the message is placed now, held until
    /// [`resolve`](Self::resolve)d, or refused.
    fn publish_with(
        &self,
        msg: Outgoing,
        now_ms: u64,
        stamped: &mut dyn FnMut(&Payload, u64) -> Hold,
    ) -> Result<(u64, u64), Refused>;

    /// [`publish_with`](Self::publish_with) placing the message at once; `None` if the room is
    /// closed or frozen.
    fn publish(&self, msg: Outgoing, now_ms: u64) -> Option<(u64, u64)> {
        self.publish_with(msg, now_ms, &mut |_, _| Hold::No).ok()
    }

    /// Places (`keep`) or drops the held message `seq`, waking the subscribers if it (or what
    /// waited behind it) was placed.
    fn resolve(&self, seq: u64, keep: bool);
}

/// The control-side state of a room.
#[derive(Debug, Default)]
pub struct RoomState {
    /// Bans, mutes, mute-all and the whitelists.
    pub moderation: Moderation,
    /// How the room ends by itself.
    pub policy: DestroyPolicy,
    /// Scheduled destroy time.
    pub destroy_at_ms: Option<u64>,
    /// Last join, leave or client message.
    pub last_activity_ms: u64,
    /// Whether members get join/leave events.
    pub member_events: bool,
    /// The member count last announced with `MemberCount`, and when.
    pub count_announced: Option<(u64, u64)>,
    /// Attributes by key.
    pub attrs: BTreeMap<String, AttrRecord>,
    /// Bumped by every attribute change.
    pub attr_version: u64,
    /// Users who left while owning `auto_delete` attributes: the attributes go (durably first)
    /// unless the user is a member again by then.
    pub departed: BTreeSet<String>,
    /// The last activity time that was persisted.
    pub persisted_activity_ms: u64,
    /// Recently recalled sequence numbers (for history served from the ring before the store
    /// has committed it); bounded.
    pub recent_recalls: BTreeSet<u64>,
    /// When the room was restored from the store (until its orphaned auto-delete attributes are
    /// cleared).
    pub restored_at: Option<u64>,
}

/// Order of a member listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberOrder {
    /// Oldest joins first.
    Asc,
    /// Newest joins first.
    Desc,
}

/// A live room.
pub struct Room {
    /// Room id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Changes with every creation of a room with this id.
    pub epoch: u64,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
    /// The broadcast ring.
    pub ring: Ring,
    /// The delivery tasks to wake.
    pub watchers: Watchers,
    /// The ingress budget; only senders take this lock.
    pub budget: Mutex<IngressBudget>,
    /// Serialises the room's durable changes: held from the decision through the store's ack to
    /// the change in memory. Never taken on the delivery or send path.
    pub changes: Arc<tokio::sync::Mutex<()>>,
    /// Sequence numbers up to this one are durably reserved: the room may hand them out, and a
    /// restart continues above them.
    pub seq_reserved: AtomicU64,
    state: Mutex<RoomState>,
    reason: OnceLock<DestroyReason>,
}

impl Room {
    /// A new empty room.
    pub fn new(
        id: String,
        name: String,
        epoch: u64,
        created_ms: u64,
        ring_capacity: usize,
        budget: BudgetConfig,
    ) -> Self {
        Room {
            id,
            name,
            epoch,
            created_ms,
            ring: Ring::new(ring_capacity),
            watchers: Watchers::default(),
            budget: Mutex::new(IngressBudget::new(budget)),
            changes: Arc::new(tokio::sync::Mutex::new(())),
            seq_reserved: AtomicU64::new(0),
            state: Mutex::new(RoomState {
                last_activity_ms: created_ms,
                ..RoomState::default()
            }),
            reason: OnceLock::new(),
        }
    }

    /// The control-side state. Never taken on the delivery path.
    pub fn state(&self) -> MutexGuard<'_, RoomState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the room was destroyed.
    pub fn is_closed(&self) -> bool {
        self.ring.is_closed()
    }

    /// Closes the room's ring and wakes every subscriber so it can see the end. False if it was
    /// closed already.
    pub fn close(&self, reason: DestroyReason) -> bool {
        let _ = self.reason.set(reason);
        let first = self.ring.close();
        self.watchers.notify_all();
        first
    }

    /// The durable record of this room.
    pub fn record(&self, st: &RoomState) -> RoomRecord {
        RoomRecord {
            id: self.id.clone(),
            name: self.name.clone(),
            epoch: self.epoch,
            created_ms: self.created_ms,
            policy: st.policy,
            destroy_at_ms: st.destroy_at_ms,
            member_events: st.member_events,
            moderation: st.moderation.clone(),
            last_activity_ms: st.last_activity_ms,
            seq_reserved: self.seq_reserved.load(Ordering::Acquire),
            attr_version: st.attr_version,
        }
    }

    /// Admits one message of `class` into the ingress budget at `now`.
    pub fn admit(&self, class: Class, now_ms: u64) -> bool {
        self.budget
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(class, now_ms)
    }

    /// Publishes a protected system event to every subscriber (no sequence number). False once
    /// the room is closed.
    pub fn publish_event(&self, event: &Event, now_ms: u64) -> bool {
        let payload = Payload {
            class: Class::Protected,
            frame: encode_frame(event),
            datagram: None,
            history: None,
        };
        let ok = self.ring.publish_event(now_ms, payload);
        if ok {
            self.watchers.notify_all();
        }
        ok
    }

    /// Why the room was closed, once it is.
    pub fn destroy_reason(&self) -> Option<DestroyReason> {
        self.reason.get().copied()
    }
}

impl Fanout for Room {
    fn publish_with(
        &self,
        msg: Outgoing,
        now_ms: u64,
        hook: &mut dyn FnMut(&Payload, u64) -> Hold,
    ) -> Result<(u64, u64), Refused> {
        let class = msg.class;
        let stamped = self.ring.publish_held(
            now_ms,
            |seq, ts| {
                let event = Event::Message(Message {
                    room: self.id.clone(),
                    seq,
                    ts,
                    from: msg.from,
                    msg_type: msg.msg_type,
                    body: msg.body,
                    class,
                });
                let frame = encode_frame(&event);
                let datagram = (class == Class::Low).then(|| encode_datagram(&event));
                let Event::Message(message) = event else {
                    unreachable!("built as a message above")
                };
                Payload {
                    class,
                    frame,
                    datagram,
                    history: msg.keep_in_history.then_some(message),
                }
            },
            |payload, seq| hook(payload, seq),
        );
        if stamped.is_ok() {
            self.watchers.notify_all();
        }
        stamped
    }

    fn resolve(&self, seq: u64, keep: bool) {
        if self.ring.resolve(seq, keep) {
            self.watchers.notify_all();
        }
    }
}

/// The room list a client or the admin sees: shared by the registry and the admin API.
pub type RoomRef = Arc<Room>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_encodes_once_and_keeps_history_only_when_asked() {
        let budget = BudgetConfig {
            window_ms: 1000,
            total: 100,
            reserved: 0,
            protected_extra: 0,
        };
        let room = Room::new("r".into(), "R".into(), 1, 0, 8, budget);
        let out = |keep, class| Outgoing {
            from: "u".into(),
            msg_type: "chat".into(),
            body: Bytes::from_static(b"hi"),
            class,
            keep_in_history: keep,
        };
        assert_eq!(room.publish(out(true, Class::Normal), 5), Some((1, 5)));
        assert_eq!(room.publish(out(false, Class::Low), 6), Some((2, 6)));
        let Read::Entry(low) = room.ring.read(1) else {
            panic!("entry 1 missing")
        };
        assert!(low.datagram.is_some() && low.history.is_none());
        let recent = room.ring.recent(2, 10);
        assert_eq!(recent.len(), 1);
        assert!(room.close(DestroyReason::Manual));
        assert_eq!(room.destroy_reason(), Some(DestroyReason::Manual));
        assert_eq!(room.publish(out(true, Class::Normal), 7), None);
    }
}
