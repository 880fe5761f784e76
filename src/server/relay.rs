//! The registry of rooms, users and connections, and every operation on them that the QUIC
//! sessions and the admin API share.
//!
//! Who is a member of which room over which connections is decided by the membership core
//! ([`crate::room::core::Core`]): the relay feeds it every join, leave, kick, connection up or
//! down, room creation and destruction and timer pass, with the time and the room's publish
//! position, and applies the effects it returns. The connections' effects (subscribe,
//! unsubscribe) are applied under the core's lock, so a kick that follows a join cannot reach
//! a delivery task before its subscription; the rooms' (member events, counts, departed
//! owners) once it is released, each under its room's state lock.
//!
//! Lock order, always: a room's state → `core` → `rooms` (read, for a lookup or a check
//! only) → `creating` → `conns`. `rooms` is never held while taking a room's state or `core`
//! (a queued writer of `rooms` blocks new readers, so any other order could deadlock); the
//! one exception is a room being created, whose state nobody else can hold yet. Nothing here
//! awaits while holding one of these, and nothing on the delivery path takes any of them. The
//! async change locks (see [`super::durable`]) come before all of them: a room's, then the
//! app-wide lists'.
//!
//! Durable changes follow [`super::durable`]: stored first, applied after. A client's message is
//! stamped at once (its sequence number and timestamp, in order) and held out of the room's ring
//! until the store has appended it (`sync` mode): members, join history and `history` requests
//! see it only once it is durable, and a message the store refuses is seen by no one (its
//! sequence number stays unused) while its sender is told `UNAVAILABLE`.

use super::cluster::Cluster;
use super::data::attributes_of;
pub use super::durable::Durable;
use super::durable::{ChangeGuard, NOT_MADE, unavailable};
use crate::auth::TokenAuth;
use crate::config::Config;
use crate::metrics as m;
use crate::policy::{self, DestroyPolicy, GlobalPolicy};
use crate::protocol::{
    Class, DestroyReason, ErrorCode, Event, JoinInfo, KickReason, RoomInfo, WireError, encode_frame,
};
use crate::room::core::{After, Core, CoreConfig, Effect, Ended};
use crate::room::{
    Fanout, Hold, JoinPoint, MemberOrder, Outgoing, Refused, Room, RoomState, Signal, validate_id,
    validate_msg_type,
};
use crate::store::{Ack, Durability, Op, Snapshot, Store, StoredMessage, Then};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

// ---- client-driven resume (Request::Resume) ----
#[path = "resume.rs"]
mod resume;
// ---- end client-driven resume ----

/// Work for a connection's delivery task.
#[derive(Clone)]
pub enum DeliveryCmd {
    /// Start reading a room's ring at `at`.
    Subscribe {
        /// The room.
        room: Arc<Room>,
        /// Where to start.
        at: JoinPoint,
        /// Written before anything read from the room (a `Resumed` that introduces it).
        first: Option<Bytes>,
    },
    /// Stop reading a room once everything published before `until` (the ring's join point when
    /// the membership ended) is delivered or accounted for in a `Gap`; then tell the client with
    /// `Kicked` when `kicked` is set.
    Unsubscribe {
        /// Room id.
        room: String,
        /// The room's epoch: a membership of an older incarnation of the id is not this one.
        epoch: u64,
        /// Why, when the client did not ask for it.
        kicked: Option<KickReason>,
        /// Where the membership ended: the first position after it, and the class counts before.
        until: JoinPoint,
    },
    /// Write this encoded event frame (a notice for this connection only) about `room` (empty
    /// for notices about no room). It follows the `Kicked` of a membership of `room` that is
    /// still ending.
    Event {
        /// Room id, or empty.
        room: String,
        /// The encoded event.
        frame: Bytes,
    },
}

/// The sending side of a connection's delivery queue: each command also wakes the delivery task
/// through the same [`Signal`] its rooms use, so the task waits on one thing only.
#[derive(Clone)]
pub struct DeliveryTx {
    tx: flume::Sender<DeliveryCmd>,
    signal: Arc<Signal>,
}

impl DeliveryTx {
    /// A queue of `capacity` commands: the sender, the receiver, and the task's signal.
    pub fn bounded(capacity: usize) -> (DeliveryTx, flume::Receiver<DeliveryCmd>, Arc<Signal>) {
        let (tx, rx) = flume::bounded(capacity);
        let signal = Arc::new(Signal::default());
        let sender = DeliveryTx {
            tx,
            signal: signal.clone(),
        };
        (sender, rx, signal)
    }

    /// Queues `cmd` without waiting; fails when the queue is full or the task is gone.
    pub fn try_send(&self, cmd: DeliveryCmd) -> Result<(), flume::TrySendError<DeliveryCmd>> {
        self.tx.try_send(cmd)?;
        self.signal.notify();
        Ok(())
    }
}

/// What the registry keeps of a connection.
pub struct ConnHandle {
    /// The authenticated user.
    pub user: String,
    /// The delivery task's queue.
    pub tx: DeliveryTx,
    /// The connection, to close it.
    pub conn: Arc<dyn super::link::Closer>,
    /// What carries it (the `transport` label of the connection gauge).
    pub transport: super::link::TransportKind,
}

/// Fields of a room creation.
#[derive(Debug, Clone, Default)]
pub struct NewRoom {
    /// Room id.
    pub id: String,
    /// Display name (defaults to the id).
    pub name: Option<String>,
    /// Initial mute-all.
    pub mute_all: bool,
    /// Initial mute-all whitelist (at most 20 users).
    pub mute_all_whitelist: Vec<String>,
    /// How the room ends by itself.
    pub destroy_policy: DestroyPolicy,
    /// Send join/leave events to members.
    pub member_events: bool,
}

/// One page of a member listing.
#[derive(Debug, Clone)]
pub struct MemberPage {
    /// `(user, joined_ms)`, in the asked order.
    pub members: Vec<(String, u64)>,
    /// Members in the room.
    pub total: usize,
    /// Cursor for the next page, when there may be one.
    pub next: Option<u64>,
}

/// A message sent through the admin API.
#[derive(Debug, Clone)]
pub struct AdminMessage {
    /// Sender user id; `None` for the system.
    pub from: Option<String>,
    /// Message type.
    pub msg_type: String,
    /// Payload.
    pub body: Bytes,
    /// Whether history keeps it.
    pub store: bool,
    /// Low-priority class.
    pub low: bool,
}

/// A message's `(seq, ts)`.
pub type Stamped = (u64, u64);

/// What a room creation does next.
enum CreateStep {
    /// The id is taken.
    Exists,
    /// Another creation of the id is being stored.
    Wait(Arc<Room>),
    /// Store this new room (its change lock held).
    Store(Arc<Room>, ChangeGuard),
}

/// What a client is told of a message the store could not take.
const MESSAGE_NOT_SENT: &str = "the message was not sent to anyone";

/// Counts a message accepted for fan-out.
fn count_in(class: Class, source: &'static str) {
    metrics::counter!(m::MESSAGES_IN, "class" => class.as_str(), "source" => source).increment(1);
}

/// Sequence numbers reserved ahead in the store, so a restart continues above every number that
/// may have been handed out (reserved again when half is used).
pub(crate) const SEQ_RESERVE: u64 = 10_000;
/// Tries of a manual destruction of a kept room that other relays' writes of the app-wide lists
/// keep fencing (cluster mode).
const DESTROY_TRIES: u32 = 5;

/// The shared core of a running relay.
pub struct Relay {
    /// The configuration it runs with.
    pub config: Arc<Config>,
    /// Token checks.
    pub auth: TokenAuth,
    /// The admin bearer key.
    pub admin_key: String,
    store: Arc<dyn Store>,
    rooms: RwLock<HashMap<String, Arc<Room>>>,
    global: RwLock<GlobalPolicy>,
    /// Memberships (see the module doc).
    core: Mutex<Core>,
    conns: Mutex<HashMap<u64, ConnHandle>>,
    next_conn: AtomicU64,
    last_epoch: AtomicU64,
    /// Rooms whose creation is being stored, by id: a second creation of the id waits for it.
    creating: Mutex<HashMap<String, Arc<Room>>>,
    /// The change lock of the app-wide lists (see [`super::durable`]).
    pub(crate) global_changes: Arc<tokio::sync::Mutex<()>>,
    // ---- cluster ----
    /// This relay's part in a cluster, once started (none: a single node).
    cluster: std::sync::OnceLock<Arc<Cluster>>,
    // ---- end cluster ----
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn err(code: ErrorCode, msg: impl Into<String>) -> WireError {
    WireError::new(code, msg)
}

pub(crate) fn room_not_found(id: &str) -> WireError {
    err(
        ErrorCode::RoomNotFound,
        format!("room {id:?} does not exist"),
    )
}

impl Relay {
    /// A relay with no rooms.
    pub fn new(
        config: Arc<Config>,
        auth: TokenAuth,
        admin_key: String,
        store: Arc<dyn Store>,
    ) -> Self {
        let core = Core::new(CoreConfig {
            rooms_per_user: config.limits.rooms_per_user,
            single_room: config.rooms.single_room,
            offline_grace_ms: config.rooms.offline_grace_ms,
        });
        Relay {
            config,
            auth,
            admin_key,
            store,
            rooms: RwLock::new(HashMap::new()),
            global: RwLock::new(GlobalPolicy::default()),
            core: Mutex::new(core),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            last_epoch: AtomicU64::new(0),
            creating: Mutex::new(HashMap::new()),
            global_changes: Arc::new(tokio::sync::Mutex::new(())),
            cluster: std::sync::OnceLock::new(),
        }
    }

    // ---- cluster ----
    /// This relay's part in a cluster, if it runs in one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Joins the relay to a cluster (once, before serving).
    pub fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// Whether this relay sequences `room` and runs its timers: always on a single node, only
    /// as its owner in a cluster.
    pub(crate) fn sequences(&self, room: &str) -> bool {
        self.cluster().is_none_or(|c| c.sequences(room))
    }

    /// Takes `room` when it has no owner (its timers found it due here): whether this relay
    /// sequences it now.
    pub(crate) async fn claim(self: &Arc<Self>, room: &Arc<Room>) -> bool {
        match self.cluster() {
            None => true,
            Some(c) => c.clone().claim(self, room).await,
        }
    }
    // ---- end cluster ----

    pub(crate) fn room(&self, id: &str) -> Result<Arc<Room>, WireError> {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        rooms.get(id).cloned().ok_or_else(|| room_not_found(id))
    }

    pub(crate) fn all_rooms(&self) -> Vec<Arc<Room>> {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        rooms.values().cloned().collect()
    }

    /// The app-wide lists, to read.
    pub fn global(&self) -> std::sync::RwLockReadGuard<'_, GlobalPolicy> {
        self.global.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The app-wide lists, to change. Never held while taking another lock.
    pub(crate) fn global_mut(&self) -> std::sync::RwLockWriteGuard<'_, GlobalPolicy> {
        self.global.write().unwrap_or_else(|p| p.into_inner())
    }

    fn next_epoch(&self) -> u64 {
        let now_us = now_ms() * 1000;
        let prev = self
            .last_epoch
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now_us.max(last + 1))
            })
            .unwrap_or(0);
        now_us.max(prev + 1)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Submits `ops` without waiting: only for what nothing is told about (coarse activity
    /// times); the store keeps submits in order, so a later ack covers it.
    pub(crate) fn persist(&self, ops: Vec<Op>) -> Ack {
        if ops.is_empty() {
            return Ack::done();
        }
        self.store.submit(ops)
    }

    /// Rebuilds the rooms and app-wide lists from a store snapshot (at start, before serving).
    pub fn restore(&self, snap: Snapshot) {
        *self.global_mut() = snap.global;
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        let mut restarted = Vec::new();
        for loaded in snap.rooms {
            let newest = loaded.newest.map_or(0, |n| n.0);
            let first = loaded.record.seq_reserved.max(newest).saturating_add(1);
            let room = self.room_from_store(loaded);
            restarted.push((room.id.clone(), room.epoch, newest, first));
            rooms.insert(room.id.clone(), room);
        }
        metrics::gauge!(m::ROOMS).set(rooms.len() as f64);
        tracing::info!(rooms = rooms.len(), "rooms restored from the store");
        let live: Vec<(String, u64)> = rooms.values().map(|r| (r.id.clone(), r.epoch)).collect();
        drop(rooms);
        let mut core = self.core();
        for (id, epoch) in live {
            core.room_created(&id, epoch);
        }
        // What a resume does not count as missed: the numbers the earlier run reserved.
        for (id, epoch, newest, first) in restarted {
            core.room_restarted(&id, epoch, newest, first);
        }
    }

    /// A room as the store holds it, not registered yet: numbering continues above everything
    /// reserved or stored.
    fn room_from_store(&self, loaded: crate::store::LoadedRoom) -> Arc<Room> {
        let rec = loaded.record;
        let room = Arc::new(Room::new(
            rec.id.clone(),
            rec.name.clone(),
            rec.epoch,
            rec.created_ms,
            self.config.limits.ring_capacity,
            self.config.budget(),
        ));
        let newest = loaded.newest.unwrap_or((0, 0));
        room.ring
            .resume_seq(rec.seq_reserved.max(newest.0).saturating_add(1));
        room.seq_reserved
            .store(rec.seq_reserved.max(newest.0), Ordering::Release);
        {
            let mut st = room.state();
            st.policy = rec.policy;
            st.destroy_at_ms = rec.destroy_at_ms;
            st.member_events = rec.member_events;
            st.moderation = rec.moderation;
            st.last_activity_ms = rec.last_activity_ms.max(newest.1);
            st.persisted_activity_ms = st.last_activity_ms;
            st.attr_version = rec.attr_version;
            st.attrs = loaded.attrs.into_iter().collect();
            // Memberships do not survive a restart: auto-delete attributes of owners who do
            // not come back within the offline grace are removed by the timer pass.
            st.restored_at = Some(now_ms());
        }
        self.last_epoch.fetch_max(rec.epoch, Ordering::AcqRel);
        room
    }

    // ---- cluster: rooms another relay made or changed ----
    /// Registers a room another relay created (from the shared store's state): joinable here
    /// at once; an older incarnation under its id ends. `None` when this relay has that
    /// incarnation (or a newer one) already: the state watch and a creation that lost to another
    /// relay's may both bring the same room, and the first one in stays.
    pub(crate) fn adopt_room(
        &self,
        record: crate::store::RoomRecord,
        attrs: Vec<(String, crate::store::AttrRecord)>,
    ) -> Option<Arc<Room>> {
        let room = self.room_from_store(crate::store::LoadedRoom {
            record,
            attrs,
            newest: None,
        });
        room.state().restored_at = None;
        let old = {
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            if rooms.get(&room.id).is_some_and(|r| r.epoch >= room.epoch) {
                return None;
            }
            rooms.insert(room.id.clone(), room.clone())
        };
        if let Some(c) = self.cluster() {
            c.observe(&room);
        }
        if let Some(old) = &old {
            old.close(DestroyReason::Manual);
        } else {
            metrics::gauge!(m::ROOMS).increment(1.0);
        }
        let fx = self.core().room_created(&room.id, room.epoch);
        self.other_rooms(fx, now_ms());
        tracing::debug!(room = %room.id, epoch = room.epoch, "room learnt from the cluster");
        Some(room)
    }

    /// A creation of `id` the shared store's fence refused: another relay created a room of
    /// that id first. Takes that room from the store (as the state watch soon would) and answers
    /// as for any room that exists; `refused` when the store holds no such room.
    async fn created_elsewhere(self: &Arc<Self>, id: &str, refused: WireError) -> WireError {
        let store = self.store().clone();
        let key = id.to_owned();
        let loaded = tokio::task::spawn_blocking(move || store.reload_room(&key)).await;
        let Ok(Ok(Some(loaded))) = loaded else {
            return refused;
        };
        self.adopt_room(loaded.record, loaded.attrs);
        err(ErrorCode::RoomExists, format!("room {id:?} already exists"))
    }

    /// Takes a room's durable state as the shared store holds it (another relay changed it).
    pub(crate) fn refresh_room(
        &self,
        room: &Room,
        record: &crate::store::RoomRecord,
        attrs: Vec<(String, crate::store::AttrRecord)>,
    ) {
        let mut st = room.state();
        st.policy = record.policy;
        st.destroy_at_ms = record.destroy_at_ms;
        st.member_events = record.member_events;
        st.moderation = record.moderation.clone();
        st.last_activity_ms = st.last_activity_ms.max(record.last_activity_ms);
        st.persisted_activity_ms = st.persisted_activity_ms.max(record.last_activity_ms);
        st.attr_version = record.attr_version;
        st.attrs = attrs.into_iter().collect();
        room.seq_reserved
            .fetch_max(record.seq_reserved, Ordering::AcqRel);
        // Members here whom the room's owner banned go, as on the owner.
        let now = now_ms();
        let banned: Vec<String> = self
            .core()
            .room(&room.id)
            .filter(|r| r.epoch == room.epoch)
            .map(|r| {
                r.members()
                    .filter(|(u, _)| st.moderation.banned_until(u, now).is_some())
                    .map(|(u, _)| u.clone())
                    .collect()
            })
            .unwrap_or_default();
        for user in banned {
            self.remove_member(room, &mut st, &user, KickReason::Banned, now);
        }
    }

    /// Ends here a room another relay destroyed: its members here learn it from the room's end,
    /// with the reason its timers give now (a scheduled, lifetime or idle end), else `manual`.
    /// False when it is not here.
    pub(crate) fn drop_room_here(&self, id: &str) -> bool {
        let Some(room) = ({
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            rooms.remove(id)
        }) else {
            return false;
        };
        let reason = {
            let st = room.state();
            let life = policy::Lifecycle {
                policy: st.policy,
                created_ms: room.created_ms,
                last_activity_ms: st.last_activity_ms,
                destroy_at_ms: st.destroy_at_ms,
                keepalive: self.global().keepalive.contains(id),
            };
            let idle = u64::from(self.config.rooms.idle_destroy_minutes) * 60_000;
            policy::destroy_due(&life, idle, now_ms()).unwrap_or(DestroyReason::Manual)
        };
        room.close(reason);
        let fx = self.core().room_destroyed(id, room.epoch);
        metrics::gauge!(m::MEMBERS).decrement(fx.len() as f64);
        metrics::gauge!(m::ROOMS).decrement(1.0);
        tracing::info!(room = %id, "room destroyed by another relay");
        true
    }
    // ---- end cluster ----

    // ---- connections ----

    /// The membership core, locked (see the module doc for the order).
    pub(crate) fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// Where the live room `id` stands now (a zero point for a room that is gone).
    fn point(&self, id: &str) -> JoinPoint {
        self.room(id)
            .map(|r| r.ring.join_point())
            .unwrap_or_default()
    }

    /// Whether `user` is a member of `room` now.
    pub(crate) fn is_member(&self, room: &Room, user: &str) -> bool {
        let core = self.core();
        core.room(&room.id)
            .is_some_and(|r| r.epoch == room.epoch && r.member(user).is_some())
    }

    /// Member count of `room` (in a cluster, with the other relays' as they last wrote them).
    pub(crate) fn member_count(&self, room: &Room) -> usize {
        let core = self.core();
        let here = core
            .room(&room.id)
            .filter(|r| r.epoch == room.epoch)
            .map_or(0, |r| r.len());
        // ---- cluster: and on the other relays ----
        here + self.cluster().map_or(0, |c| c.remote_members(&room.id))
    }

    /// Applies the core's effects in order, its lock held by the caller (so they reach the
    /// delivery queues and the rings in the core's order): the connections' (subscribe,
    /// unsubscribe) and those of `held` (its state locked by the caller: the member gauge,
    /// events, departed owners). Returns the other rooms' effects, for [`Relay::other_rooms`]
    /// once both locks are released (a room's state is never taken while another's is held).
    ///
    /// A join's subscription (no `resumed`) starts where the ring is when it is applied: after
    /// the join's own `MemberJoined`, applied just before it. `joined`: the room a join holds,
    /// subscribed to even when its destruction took it out of the registry meanwhile. A resumed one starts exactly where
    /// the core counted what the connection missed; `started` is set to a join's.
    fn apply(
        &self,
        fx: Vec<Effect>,
        mut held: Option<(&Room, &mut RoomState)>,
        joined: Option<&Arc<Room>>,
        now: u64,
        started: &mut Option<JoinPoint>,
    ) -> Vec<Effect> {
        let mut others = Vec::new();
        for e in fx {
            match e {
                Effect::Subscribe {
                    conn,
                    room,
                    epoch,
                    at,
                    resumed,
                } => {
                    // The room a join holds, even if its destruction has taken it out of the
                    // registry meanwhile (the member then reads the ring's end: `RoomDestroyed`).
                    let held_room = joined.filter(|r| r.id == room && r.epoch == epoch).cloned();
                    let Some(target) =
                        held_room.or_else(|| self.room(&room).ok().filter(|r| r.epoch == epoch))
                    else {
                        continue;
                    };
                    let (at, first) = match resumed {
                        None => {
                            let at = target.ring.join_point();
                            *started = Some(at);
                            (at, None)
                        }
                        Some(missed) => {
                            tracing::debug!(room = %room, conn, missed, "membership resumed");
                            let frame = encode_frame(&Event::Resumed {
                                room: room.clone(),
                                missed,
                                last_seq: at.last_seq,
                            });
                            (at, Some(frame))
                        }
                    };
                    self.tell(
                        conn,
                        DeliveryCmd::Subscribe {
                            room: target,
                            at,
                            first,
                        },
                    );
                }
                Effect::Unsubscribe {
                    conn,
                    room,
                    epoch,
                    kicked,
                    until,
                } => self.tell(
                    conn,
                    DeliveryCmd::Unsubscribe {
                        room,
                        epoch,
                        kicked,
                        until,
                    },
                ),
                Effect::Joined {
                    ref room, epoch, ..
                }
                | Effect::Left {
                    ref room, epoch, ..
                } => match held.as_mut() {
                    Some((r, st)) if r.id == *room && r.epoch == epoch => {
                        self.room_effect(r, st, e, now)
                    }
                    _ => others.push(e),
                },
                Effect::Store { .. } => others.push(e),
            }
        }
        others
    }

    /// Applies the rooms' effects of the core, each under its own room's lock (none held).
    fn other_rooms(&self, fx: Vec<Effect>, now: u64) {
        for e in fx {
            let (Effect::Joined {
                room: id, epoch, ..
            }
            | Effect::Left {
                room: id, epoch, ..
            }) = &e
            else {
                continue;
            };
            match self.room(id) {
                Ok(room) if room.epoch == *epoch => {
                    let mut st = room.state();
                    // Back in the room since the core ended this membership (another device
                    // joined it, or the user reconnected): its end is not announced, and the
                    // user's auto-delete attributes stay.
                    if let Effect::Left { user, .. } = &e
                        && self.is_member(&room, user)
                    {
                        metrics::gauge!(m::MEMBERS).decrement(1.0);
                        continue;
                    }
                    self.room_effect(&room, &mut st, e, now);
                }
                // Gone meanwhile: only the gauge still counts it.
                _ => {
                    if let Effect::Left { members, .. } = e {
                        metrics::gauge!(m::MEMBERS).decrement(1.0);
                        if let (0, Some(c)) = (members, self.cluster()) {
                            c.room_gone(id);
                        }
                    }
                }
            }
        }
    }

    /// One room effect: the member gauge and counters, activity, departed owners of
    /// auto-delete attributes, `MemberJoined`/`MemberLeft` when the room has member events.
    fn room_effect(&self, room: &Room, st: &mut RoomState, e: Effect, now: u64) {
        // ---- cluster: the room's live traffic while it has members here ----
        if let Some(c) = self.cluster() {
            match &e {
                Effect::Joined { members, .. } | Effect::Left { members, .. } => {
                    c.interest(&room.id, *members > 0);
                    c.count_changed(&room.id, *members);
                }
                _ => {}
            }
        }
        // ---- end cluster ----
        match e {
            Effect::Joined { user, members, .. } => {
                metrics::gauge!(m::MEMBERS).increment(1.0);
                if self.member_events_on(st, members) {
                    room.publish_event(
                        &Event::MemberJoined {
                            room: room.id.clone(),
                            user,
                        },
                        now,
                    );
                    st.count_announced = None;
                }
            }
            Effect::Left {
                user, how, members, ..
            } => {
                metrics::gauge!(m::MEMBERS).decrement(1.0);
                if how == Ended::Destroyed {
                    return;
                }
                if let Ended::Kicked(k) = how
                    && k != KickReason::OtherDevice
                {
                    metrics::counter!(m::MEMBERS_REMOVED, "reason" => k.as_str()).increment(1);
                }
                st.last_activity_ms = now;
                // Its auto-delete attributes go too, durably first (see `Relay::sweep`).
                if st.attrs.values().any(|a| a.auto_delete && a.owner == user) {
                    st.departed.insert(user.clone());
                }
                if self.member_events_on(st, members) {
                    room.publish_event(
                        &Event::MemberLeft {
                            room: room.id.clone(),
                            user,
                        },
                        now,
                    );
                    // Members track the count from events again; a later crossing re-announces it.
                    st.count_announced = None;
                }
            }
            _ => {}
        }
    }

    /// Registers an authenticated connection; returns its id. Memberships the user kept through
    /// the offline grace period move to this connection: it is subscribed to them at once and told
    /// how many messages it missed (`Event::Resumed`).
    pub fn register_conn(&self, handle: ConnHandle) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let user = handle.user.clone();
        let transport = handle.transport;
        // In `conns` before the core hears of it: its subscriptions must reach it. A fresh
        // queue of 256 holds them (at most rooms_per_user).
        lock(&self.conns).insert(id, handle);
        metrics::gauge!(m::CONNECTIONS, "transport" => transport.as_str()).increment(1.0);
        let mut core = self.core();
        let fx = core.conn_up(id, &user, &mut |r| self.point(r));
        let rest = self.apply(fx, None, None, now_ms(), &mut None);
        drop(core);
        self.other_rooms(rest, now_ms());
        id
    }

    /// Removes a closed connection. A member left with no connection goes offline: it is removed
    /// after `offline_grace_ms` unless it reconnects (see [`Relay::tick`]); one the user's other
    /// connections can serve moves to them.
    pub fn unregister_conn(&self, id: u64) {
        let Some(handle) = lock(&self.conns).remove(&id) else {
            return;
        };
        metrics::gauge!(m::CONNECTIONS, "transport" => handle.transport.as_str()).decrement(1.0);
        let now = now_ms();
        let mut core = self.core();
        let fx = core.conn_down(now, id, &mut |r| self.point(r));
        let rest = self.apply(fx, None, None, now, &mut None);
        drop(core);
        self.other_rooms(rest, now);
    }

    /// Removes `user` from `room` (state already locked) now: its connections stop reading the
    /// room after what was published before, told `kicked`; members get `MemberLeft` when the
    /// room has member events. Its `auto_delete` attributes are marked for [`Relay::sweep`],
    /// which removes them once that is durable. Memberships are not stored (they do not survive
    /// a restart), so this needs no store.
    pub(crate) fn remove_member(
        &self,
        room: &Room,
        st: &mut RoomState,
        user: &str,
        kicked: KickReason,
        now: u64,
    ) -> bool {
        let mut core = self.core();
        if core.room(&room.id).is_none_or(|r| r.epoch != room.epoch) {
            return false;
        }
        let fx = core.kick(&room.id, user, kicked, &mut |r| self.point(r));
        let removed = !fx.is_empty();
        // A kick concerns this room only.
        let others = self.apply(fx, Some((room, st)), None, now, &mut None);
        debug_assert!(others.is_empty());
        removed
    }

    /// The timer pass of the memberships of `room` (state locked): members offline past the
    /// grace go; returns who.
    pub(crate) fn tick_members(&self, room: &Room, st: &mut RoomState, now: u64) -> Vec<String> {
        let whitelist = st.moderation.user_whitelist.clone();
        let mut core = self.core();
        if core.room(&room.id).is_none_or(|r| r.epoch != room.epoch) {
            return Vec::new();
        }
        let keeps = |u: &str| whitelist.contains(u);
        let fx = core.tick(now, &room.id, &keeps, &mut |r| self.point(r));
        let gone = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Left { user, .. } => Some(user.clone()),
                _ => None,
            })
            .collect();
        let others = self.apply(fx, Some((room, st)), None, now, &mut None);
        debug_assert!(others.is_empty());
        gone
    }

    fn member_events_on(&self, st: &RoomState, members: usize) -> bool {
        st.member_events && members <= self.config.rooms.member_events_max
    }

    pub(crate) fn tell(&self, conn: u64, cmd: DeliveryCmd) {
        let conns = lock(&self.conns);
        if let Some(h) = conns.get(&conn)
            && h.tx.try_send(cmd).is_err()
        {
            // The delivery queue only overflows when the connection stopped reading entirely.
            h.conn
                .close(crate::protocol::CloseCode::TooSlow, "delivery queue full");
        }
    }

    /// Sends `event` to every connection of `user`.
    pub(crate) fn tell_user(&self, user: &str, event: &Event) {
        let conns: Vec<u64> = self.core().conns_of(user);
        if conns.is_empty() {
            return;
        }
        let frame = encode_frame(event);
        let room = event.room().unwrap_or_default();
        for c in conns {
            self.tell(
                c,
                DeliveryCmd::Event {
                    room: room.to_owned(),
                    frame: frame.clone(),
                },
            );
        }
    }

    /// Closes every connection with `code` and `reason`.
    pub fn close_all(&self, code: crate::protocol::CloseCode, reason: &str) {
        for h in lock(&self.conns).values() {
            h.conn.close(code, reason);
        }
    }

    // ---- rooms ----

    /// Creates a room: stored first, then registered (a creation the store refuses leaves no
    /// trace). A second creation of the same id while one is being stored waits for its outcome.
    pub fn create_room(self: &Arc<Self>, new: NewRoom) -> Result<Durable<RoomInfo>, WireError> {
        validate_id("room id", &new.id)?;
        new.destroy_policy.validate()?;
        if new.mute_all_whitelist.len() > policy::MAX_USERS_PER_CALL {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "mute_all_whitelist holds at most {} users",
                    policy::MAX_USERS_PER_CALL
                ),
            ));
        }
        for u in &new.mute_all_whitelist {
            validate_id("user id", u)?;
        }
        let name = new.name.clone().unwrap_or_else(|| new.id.clone());
        if name.len() > 256 {
            return Err(err(
                ErrorCode::BadRequest,
                "room name must be at most 256 bytes",
            ));
        }
        self.check_writable()?;
        let relay = self.clone();
        Ok(Durable::later(async move {
            loop {
                match relay.create_step(&new, &name) {
                    CreateStep::Exists => {
                        return Err(err(
                            ErrorCode::RoomExists,
                            format!("room {:?} already exists", new.id),
                        ));
                    }
                    CreateStep::Wait(other) => {
                        // Another creation of this id is being stored: its outcome decides.
                        drop(other.changes.clone().lock_owned().await);
                        let mut creating = lock(&relay.creating);
                        if creating
                            .get(&new.id)
                            .is_some_and(|r| Arc::ptr_eq(r, &other))
                        {
                            // It failed and left its mark.
                            creating.remove(&new.id);
                        }
                    }
                    CreateStep::Store(room, guard) => {
                        return relay.store_creation(room, guard).await;
                    }
                }
            }
        }))
    }

    /// Decides a creation: refused, after another one, or a new room (registered as being
    /// created, its change lock held) to store.
    fn create_step(&self, new: &NewRoom, name: &str) -> CreateStep {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        if rooms.contains_key(&new.id) {
            return CreateStep::Exists;
        }
        let mut creating = lock(&self.creating);
        if let Some(other) = creating.get(&new.id) {
            return CreateStep::Wait(other.clone());
        }
        let room = Arc::new(Room::new(
            new.id.clone(),
            name.to_owned(),
            self.next_epoch(),
            now_ms(),
            self.config.limits.ring_capacity,
            self.config.budget(),
        ));
        let Ok(guard) = room.changes.clone().try_lock_owned() else {
            // A new room's lock is free; should it not be, try again.
            return CreateStep::Wait(room);
        };
        {
            let mut st = room.state();
            st.moderation.mute_all = new.mute_all;
            st.moderation.mute_all_whitelist = new.mute_all_whitelist.iter().cloned().collect();
            st.policy = new.destroy_policy;
            st.member_events = new.member_events;
        }
        room.seq_reserved.store(SEQ_RESERVE, Ordering::Release);
        if let Some(c) = self.cluster() {
            c.observe(&room);
        }
        creating.insert(new.id.clone(), room.clone());
        CreateStep::Store(room, guard)
    }

    /// Stores a new room's record; once durable, registers it.
    async fn store_creation(
        self: &Arc<Self>,
        room: Arc<Room>,
        guard: ChangeGuard,
    ) -> Result<RoomInfo, WireError> {
        let ops = vec![Op::PutRoom(room.record(&room.state()))];
        let relay = self.clone();
        let members = self.config.limits.room_info_members;
        let id = room.id.clone();
        let made = self
            .commit_or_fenced(NOT_MADE, ops, move |ok| {
                let _locked = guard;
                // The core first, then the registry: a room anyone can find is one it can join.
                // An older incarnation still in the core (its destruction being applied) is
                // replaced: a membership of it is not one of this room.
                let fx = match ok {
                    true => relay.core().room_created(&room.id, room.epoch),
                    false => Vec::new(),
                };
                {
                    let mut rooms = relay.rooms.write().unwrap_or_else(|p| p.into_inner());
                    let mut creating = lock(&relay.creating);
                    if creating
                        .get(&room.id)
                        .is_some_and(|r| Arc::ptr_eq(r, &room))
                    {
                        creating.remove(&room.id);
                    }
                    if !ok {
                        return None;
                    }
                    rooms.insert(room.id.clone(), room.clone());
                }
                relay.other_rooms(fx, now_ms());
                metrics::gauge!(m::ROOMS).increment(1.0);
                tracing::info!(room = %room.id, epoch = room.epoch, "room created");
                Some(relay.info_of(&room, members))
            })
            .await;
        match made {
            Ok(info) => Ok(info),
            // ---- cluster: another relay created this id first ----
            Err((e, true)) if self.cluster().is_some() => Err(self.created_elsewhere(&id, e).await),
            Err((e, _)) => Err(e),
        }
    }

    /// Destroys a room: every member is told why and removed.
    pub fn destroy_room(
        self: &Arc<Self>,
        id: &str,
        reason: DestroyReason,
    ) -> Result<Durable<()>, WireError> {
        let room = self.room(id)?;
        self.check_writable()?;
        let relay = self.clone();
        Ok(Durable::later(async move {
            // ---- cluster: tried again when another relay wrote the app-wide lists since ----
            let mut tries = 0;
            loop {
                tries += 1;
                match relay.destroy_once(&room, |_| Some(reason)).await {
                    Ok(Some(_)) => return Ok(()),
                    Ok(None) => return Err(room_not_found(&room.id)),
                    Err((_, true)) if tries < DESTROY_TRIES => {}
                    Err((e, _)) => return Err(e),
                }
            }
            // ---- end cluster ----
        }))
    }

    /// Destroys `room` if it is still the room registered under its id and `due` (given its
    /// state, locked together with the registry) still gives a reason: a join or send that came
    /// after a timer decided keeps the room, and a room re-created under the same id is not
    /// touched. `Ok(None)`: kept. A destruction the store refuses is an error; the timer pass
    /// tries again on its next tick.
    pub(crate) async fn destroy_if_due(
        self: &Arc<Self>,
        room: &Arc<Room>,
        due: impl FnOnce(&mut RoomState) -> Option<DestroyReason>,
    ) -> Result<Option<DestroyReason>, WireError> {
        self.destroy(room, due).await
    }

    /// Destroys `room` when `decide` gives a reason (see [`Relay::destroy_if_due`]): under the
    /// room's change lock, its deletion is stored first; then it leaves the registry, its ring
    /// closes and its members are told why. Messages are refused from the decision until the
    /// deletion is settled, so no message is stored after it; if the store refuses, the room
    /// goes on as it was.
    async fn destroy(
        self: &Arc<Self>,
        room: &Arc<Room>,
        decide: impl FnOnce(&mut RoomState) -> Option<DestroyReason>,
    ) -> Result<Option<DestroyReason>, WireError> {
        self.destroy_once(room, decide).await.map_err(|(e, _)| e)
    }

    /// [`destroy`](Self::destroy); a refusal comes with whether it is worth trying again at
    /// once: the room is on the keepalive list, another relay wrote the app-wide lists since
    /// this one read them (the store's fence refused the write, nothing was made), and they were
    /// read again.
    async fn destroy_once(
        self: &Arc<Self>,
        room: &Arc<Room>,
        decide: impl FnOnce(&mut RoomState) -> Option<DestroyReason>,
    ) -> Result<Option<DestroyReason>, (WireError, bool)> {
        self.check_writable().map_err(|e| (e, false))?;
        let Ok(guard) = self.lock_room(room).await else {
            return Ok(None);
        };
        // The keepalive list names live rooms: a room created again later starts without it.
        // Only a change of this room changes its place on the list, and this one holds its lock.
        let kept = self.global().keepalive.contains(&room.id);
        let global_guard = match kept {
            true => Some(self.lock_global().await),
            false => None,
        };
        let Some(reason) = self.decide_destroy(room, decide) else {
            return Ok(None);
        };
        // The lists first: in cluster mode another relay may have written them since, and a
        // write the fence refuses then leaves the room as it was.
        let mut ops = Vec::new();
        if kept {
            let mut global = self.global().clone();
            global.keepalive.remove(&room.id);
            ops.push(Op::PutGlobal(global));
        }
        ops.push(Op::DeleteRoom(room.id.clone()));
        let after = After::Destroy {
            room: room.id.clone(),
            epoch: room.epoch,
        };
        let Effect::Store { id: change, ops } = self.core().submit(ops, after) else {
            return Ok(None);
        };
        let relay = self.clone();
        let room = room.clone();
        let made = self
            .commit_or_fenced(NOT_MADE, ops, move |ok| {
                let _locked = (guard, global_guard);
                if !ok {
                    relay
                        .core()
                        .stored(change, false, &mut |_| JoinPoint::default());
                    room.ring.freeze(false);
                    return None;
                }
                relay.finish_destroy(&room, change, reason, kept);
                Some(Some(reason))
            })
            .await;
        match made {
            Ok(reason) => Ok(reason),
            // ---- cluster: the app-wide lists were stale; read again for the next try ----
            Err((e, true)) if kept => match self.reload_global().await {
                Ok(()) => Err((e, true)),
                Err(again) => {
                    tracing::debug!(error = %again.message, "the app-wide lists were not read again");
                    Err((e, false))
                }
            },
            // ---- end cluster ----
            Err((e, _)) => Err((e, false)),
        }
    }

    /// Decides a destruction with the room's state and the registry locked; freezes the ring
    /// when it is decided.
    fn decide_destroy(
        &self,
        room: &Arc<Room>,
        decide: impl FnOnce(&mut RoomState) -> Option<DestroyReason>,
    ) -> Option<DestroyReason> {
        // The room's state first, then the registry (read, for the check only): the order of
        // every other path (state → core → rooms), so no cycle can form with a join or a leave.
        let mut st = room.state();
        let live = {
            let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
            rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room))
        };
        if !live {
            return None;
        }
        let reason = decide(&mut st)?;
        room.ring.freeze(true);
        Some(reason)
    }

    /// Takes a destroyed room out of memory: the registry, its ring, its members (the core's
    /// stored `change`), the keepalive list (when `kept`).
    fn finish_destroy(&self, room: &Arc<Room>, change: u64, reason: DestroyReason, kept: bool) {
        let id = room.id.as_str();
        {
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            if rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, room)) {
                rooms.remove(id);
            }
        }
        room.close(reason);
        if let Some(c) = self.cluster() {
            c.room_gone(id);
        }
        // The members learn it from the room's end (`RoomDestroyed` after its last message).
        let fx = self
            .core()
            .stored(change, true, &mut |_| room.ring.join_point());
        let users = fx.len();
        metrics::gauge!(m::MEMBERS).decrement(users as f64);
        if kept {
            self.global_mut().keepalive.remove(id);
        }
        metrics::gauge!(m::ROOMS).decrement(1.0);
        metrics::counter!(m::ROOMS_DESTROYED, "reason" => reason.as_str()).increment(1);
        tracing::info!(room = %id, reason = reason.as_str(), members = users, "room destroyed");
    }

    /// Room info with up to `members` members.
    pub fn room_info(&self, id: &str, members: usize) -> Result<RoomInfo, WireError> {
        let room = self.room(id)?;
        Ok(self.info_of(&room, members))
    }

    fn info_of(&self, room: &Room, members: usize) -> RoomInfo {
        let st = room.state();
        self.info_from(room, &st, members)
    }

    pub(crate) fn info_from(&self, room: &Room, st: &RoomState, members: usize) -> RoomInfo {
        let core = self.core();
        let live = core.room(&room.id).filter(|r| r.epoch == room.epoch);
        RoomInfo {
            id: room.id.clone(),
            name: room.name.clone(),
            epoch: room.epoch,
            created_ms: room.created_ms,
            // ---- cluster: the members on the other relays too ----
            member_count: (live.map_or(0, |r| r.len())
                + self.cluster().map_or(0, |c| c.remote_members(&room.id)))
                as u64,
            members: live
                .map(|r| r.page(false, members, None))
                .unwrap_or_default()
                .into_iter()
                .map(|(u, _, _)| u)
                .collect(),
            mute_all: st.moderation.mute_all,
        }
    }

    /// Rooms in id order after `after`, at most `limit`, with the total count.
    pub fn list_rooms(&self, limit: usize, after: Option<&str>) -> (Vec<RoomInfo>, usize) {
        let rooms: BTreeMap<String, Arc<Room>> = {
            let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
            rooms.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let total = rooms.len();
        let page = rooms
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(_, r)| self.info_of(r, 0))
            .collect();
        (page, total)
    }

    /// A page of members.
    pub fn members(
        &self,
        id: &str,
        order: MemberOrder,
        limit: usize,
        after: Option<u64>,
    ) -> Result<MemberPage, WireError> {
        let max = self.config.limits.member_page_max;
        if limit == 0 || limit > max {
            return Err(err(
                ErrorCode::BadRequest,
                format!("limit must be 1..={max}, got {limit}"),
            ));
        }
        let room = self.room(id)?;
        let core = self.core();
        let live = core.room(&room.id).filter(|r| r.epoch == room.epoch);
        let page = live
            .map(|r| r.page(order == MemberOrder::Desc, limit, after))
            .unwrap_or_default();
        let next = (page.len() == limit)
            .then(|| page.last().map(|p| p.2))
            .flatten();
        Ok(MemberPage {
            members: page.into_iter().map(|(u, j, _)| (u, j)).collect(),
            total: live.map_or(0, |r| r.len()),
            next,
        })
    }

    /// Which of `users` are members.
    pub fn check_members(&self, id: &str, users: &[String]) -> Result<Vec<bool>, WireError> {
        let max = self.config.limits.member_check_max;
        if users.is_empty() || users.len() > max {
            return Err(err(
                ErrorCode::BatchTooLarge,
                format!("user_ids must hold 1..={max} ids, got {}", users.len()),
            ));
        }
        let room = self.room(id)?;
        Ok(users.iter().map(|u| self.is_member(&room, u)).collect())
    }

    // ---- membership ----

    /// Joins `conn` of `user` to a room; a connection not subscribed yet is subscribed (under the
    /// room's lock, so a kick that follows the join cannot overtake the subscription). With
    /// `rooms.join_creates`, a missing room is created first (stored, like any creation).
    pub fn join(
        self: &Arc<Self>,
        conn: u64,
        user: &str,
        room_id: &str,
        history: i32,
    ) -> Result<Durable<JoinInfo>, WireError> {
        validate_id("room id", room_id)?;
        let limits = &self.config.limits;
        let wanted = match history {
            -1 => 0,
            0 => limits.history_default as usize,
            n if n > 0 && n as u32 <= limits.history_max => n as usize,
            n => {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!(
                        "history must be -1 (none), 0 (default {}) or 1..={}, got {n}",
                        limits.history_default, limits.history_max
                    ),
                ));
            }
        };
        match self.room(room_id) {
            // ---- cluster: answered once the room's live traffic reaches this relay ----
            Ok(room) if self.cluster().is_some() => {
                let info = self.join_room(conn, user, &room, wanted)?;
                let relay = self.clone();
                Ok(Durable::later(async move {
                    if let Some(c) = relay.cluster() {
                        c.live_ready(&room.id).await;
                    }
                    Ok(info)
                }))
            }
            // ---- end cluster ----
            Ok(room) => self.join_room(conn, user, &room, wanted).map(Durable::now),
            Err(missing) if self.config.rooms.join_creates => {
                let created = self.create_room(NewRoom {
                    id: room_id.to_owned(),
                    ..NewRoom::default()
                });
                let relay = self.clone();
                let user = user.to_owned();
                let room_id = room_id.to_owned();
                Ok(Durable::later(async move {
                    match created {
                        Ok(d) => match d.wait().await {
                            Err(e) if e.code != ErrorCode::RoomExists => return Err(e),
                            _ => {}
                        },
                        Err(e) if e.code != ErrorCode::RoomExists => return Err(e),
                        Err(_) => {}
                    }
                    let room = relay.room(&room_id).map_err(|_| missing)?;
                    let info = relay.join_room(conn, &user, &room, wanted)?;
                    // ---- cluster: answered once the room's live traffic reaches this relay ----
                    if let Some(c) = relay.cluster() {
                        c.live_ready(&room.id).await;
                    }
                    Ok(info)
                }))
            }
            Err(e) => Err(e),
        }
    }

    fn join_room(
        &self,
        conn: u64,
        user: &str,
        room: &Arc<Room>,
        wanted: usize,
    ) -> Result<JoinInfo, WireError> {
        let limits = &self.config.limits;
        let room_id = room.id.as_str();
        self.catch_up(room)?;
        // Read before anything changes: a join whose history cannot be read is refused whole.
        let stored = match wanted {
            0 => None,
            n => Some(self.stored_history(room, None, n)?),
        };
        let now = now_ms();
        let mut st = room.state();
        if room.is_closed() {
            return Err(room_not_found(&room.id));
        }
        // One input of the core: in `single_room` mode the user's other memberships end in the
        // same step, so two devices joining two rooms at once cannot both stay.
        let mut core = self.core();
        core.check_join(&room.id, user, &st.moderation, now)?;
        if core.room(&room.id).is_none_or(|r| r.epoch != room.epoch) {
            return Err(room_not_found(&room.id));
        }
        let fx = core.join(now, conn, user, &room.id, &mut |r| self.point(r))?;
        st.departed.remove(user);
        st.last_activity_ms = now;
        // In `single_room` mode, the rooms left: once this room's lock is released.
        let mut started = None;
        let others = self.apply(fx, Some((room, &mut st)), Some(room), now, &mut started);
        // Where the subscription started (after the join's own event), as the reply says.
        let at = started.unwrap_or_else(|| room.ring.join_point());
        drop(core);
        let info = self.info_from(room, &st, limits.room_info_members);
        let muted = policy::check_send(user, &st.moderation, &self.global(), now).is_err();
        let attributes = attributes_of(&st);
        let attr_version = st.attr_version;
        let recalls = st.recent_recalls.clone();
        drop(st);
        self.other_rooms(others, now);
        let history = match stored {
            None => Vec::new(),
            Some(stored) => {
                self.merge_history(room, stored, Some(at.last_seq + 1), wanted, &recalls)
            }
        };
        tracing::debug!(room = %room_id, user, conn, "joined");
        Ok(JoinInfo {
            room: info,
            last_seq: at.last_seq,
            muted,
            history,
            attributes,
            attr_version,
        })
    }

    /// `user` leaves a room from `conn`; the user's other connections are told `Kicked{other_device}`.
    /// Its auto-delete attributes go before the wait returns (or, when that cannot be stored
    /// now, on a later timer tick).
    pub fn leave(
        self: &Arc<Self>,
        conn: u64,
        user: &str,
        room_id: &str,
    ) -> Result<Durable<()>, WireError> {
        validate_id("room id", room_id)?;
        let room = self.room(room_id)?;
        let mut st = room.state();
        // The leaving connection is told nothing; the user's other devices get Kicked. All get
        // what was published before the leave, and nothing after (not even the leave's events).
        let mut core = self.core();
        if core.room(room_id).is_none_or(|r| r.epoch != room.epoch) {
            return Err(err(
                ErrorCode::NotInRoom,
                format!("user {user:?} is not in room {room_id:?}"),
            ));
        }
        let fx = core.leave(conn, user, room_id, &mut |r| self.point(r))?;
        let others = self.apply(fx, Some((&room, &mut st)), None, now_ms(), &mut None);
        drop(core);
        drop(st);
        self.other_rooms(others, now_ms());
        let relay = self.clone();
        Ok(Durable::later(async move {
            relay.sweep_logged(&room).await;
            Ok(())
        }))
    }

    // ---- messages ----

    /// A client's send: membership, mutes, class, the room's ingress budget, then the ring. In
    /// `sync` mode a message history keeps becomes visible (and the wait resolves) once its
    /// append is durable; one the store refuses is seen by no one, and the wait answers
    /// `UNAVAILABLE`.
    pub fn send(
        self: &Arc<Self>,
        user: &str,
        room_id: &str,
        msg_type: String,
        body: Bytes,
        low: bool,
    ) -> Result<Durable<Stamped>, WireError> {
        validate_id("room id", room_id)?;
        validate_msg_type(&msg_type)?;
        let max = self.config.limits.client_body;
        if body.len() > max {
            return Err(err(
                ErrorCode::TooLarge,
                format!("message body is {} bytes, the most is {max}", body.len()),
            ));
        }
        let room = self.room(room_id)?;
        let now = now_ms();
        let class = {
            let mut st = room.state();
            let global = self.global();
            self.core()
                .check_send(room_id, user, &st.moderation, &global, now)?;
            let class = policy::classify(Some(user), &msg_type, low, &st.moderation, &global);
            drop(global);
            st.last_activity_ms = now;
            class
        };
        let keep = self.keeps(class, true);
        if keep {
            self.writable_for_messages()?;
        }
        if !room.admit(class, now) {
            metrics::counter!(m::SHED, "class" => class.as_str(), "reason" => "ingress")
                .increment(1);
            return Err(err(
                ErrorCode::Shed,
                format!(
                    "room {room_id:?} is over its ingress budget for {} messages",
                    class.as_str()
                ),
            ));
        }
        let out = Outgoing {
            from: user.to_owned(),
            msg_type,
            body,
            class,
            keep_in_history: keep,
        };
        self.publish_stored(&room, out, now, "client")
    }

    fn keeps(&self, class: Class, store: bool) -> bool {
        store && (class != Class::Low || self.config.store.history_low)
    }

    /// `UNAVAILABLE` for a message history would keep, while the store is failing.
    fn writable_for_messages(&self) -> Result<(), WireError> {
        self.check_writable()
            .map_err(|e| WireError::new(e.code, e.message.replacen(NOT_MADE, MESSAGE_NOT_SENT, 1)))
    }

    /// Publishes a message into `room`'s ring and, when history keeps it, appends it to the
    /// store in sequence order (one submit, under the ring's publisher lock). In `sync` mode a
    /// kept message is held out of the ring until its append is durable, and dropped if the
    /// store refuses it: the wait then answers `UNAVAILABLE` and no one has seen it. Sequence
    /// numbers are reserved in the store ahead of use (a restart continues above them); a
    /// message whose number is not durably reserved yet is held the same way until it is.
    pub(crate) fn publish_stored(
        self: &Arc<Self>,
        room: &Arc<Room>,
        out: Outgoing,
        now: u64,
        source: &'static str,
    ) -> Result<Durable<Stamped>, WireError> {
        // ---- cluster: a room another relay sequences gets the message forwarded ----
        if let Some(c) = self.cluster()
            && source != "forwarded"
            && !c.sequences(&room.id)
        {
            let (c, relay, room) = (c.clone(), self.clone(), room.clone());
            return Ok(Durable::later(async move {
                c.forward(&relay, &room, out, now, source).await
            }));
        }
        let cluster = self.cluster().cloned();
        // ---- end cluster ----
        let sync = self.config.store.durability == Durability::Sync;
        let class = out.class;
        let mut ack = Ack::done();
        let mut refusal = None;
        let stamped = room.publish_with(out, now, &mut |payload, seq| {
            let reserved = room.seq_reserved.load(Ordering::Acquire);
            let reserve_to = (seq + SEQ_RESERVE / 2 > reserved).then_some(seq + SEQ_RESERVE);
            let mut ops = Vec::new();
            if let Some(upto) = reserve_to {
                ops.push(Op::ReserveSeq {
                    room: room.id.clone(),
                    upto,
                });
            }
            if let Some(msg) = &payload.history {
                ops.push(Op::Append {
                    room: msg.room.clone(),
                    msg: StoredMessage {
                        seq: msg.seq,
                        ts: msg.ts,
                        from: msg.from.clone(),
                        msg_type: msg.msg_type.clone(),
                        body: msg.body.clone(),
                        class: msg.class,
                        recalled: false,
                    },
                });
            }
            // Whether the message depends on these ops: its append, or a number not yet
            // reserved. A reservation made early (half the reserve ahead) is only tried: a send
            // that follows tries again.
            let needs_store = payload.history.is_some() || seq > reserved;
            let held = sync && needs_store;
            if ops.is_empty() {
                count_in(class, source);
                return Hold::No;
            }
            let target = room.clone();
            let cluster = cluster.clone();
            let then = Then::new(move |outcome| {
                // ---- cluster: another relay took the room over ----
                if let (Err(crate::store::StoreError::Fenced(_)), Some(c)) = (outcome, &cluster) {
                    c.step_down(&target.id, "fenced");
                }
                // ---- end cluster ----
                if outcome.is_ok() {
                    if let Some(upto) = reserve_to {
                        target.seq_reserved.fetch_max(upto, Ordering::AcqRel);
                    }
                    if held {
                        count_in(class, source);
                    }
                }
                if held {
                    target.resolve(seq, outcome.is_ok());
                }
            });
            let submitted = self.store.submit_then(ops, Some(then));
            if let Some(e) = submitted.refused()
                && needs_store
            {
                refusal = Some(unavailable(MESSAGE_NOT_SENT, e));
                return Hold::Refuse;
            }
            if needs_store {
                ack = submitted;
            }
            if held {
                Hold::UntilResolved
            } else {
                count_in(class, source);
                Hold::No
            }
        });
        match stamped {
            Ok(stamped) => Ok(Durable::later(async move {
                ack.wait()
                    .await
                    .map_err(|e| unavailable(MESSAGE_NOT_SENT, &e))?;
                Ok(stamped)
            })),
            Err(Refused::Closed) => Err(room_not_found(&room.id)),
            Err(Refused::Frozen) => Err(err(
                ErrorCode::Unavailable,
                format!(
                    "room {:?} is being destroyed; the message was not sent",
                    room.id
                ),
            )),
            Err(Refused::Hook) => {
                Err(refusal
                    .unwrap_or_else(|| err(ErrorCode::Unavailable, MESSAGE_NOT_SENT.to_owned())))
            }
        }
    }

    /// An admin send to one room. Bypasses mutes and the ingress budget.
    pub fn admin_send(
        self: &Arc<Self>,
        room_id: &str,
        msg: &AdminMessage,
    ) -> Result<Durable<Stamped>, WireError> {
        self.check_admin_message(msg)?;
        let room = self.room(room_id)?;
        self.publish_admin(&room, msg, true)
    }

    fn check_admin_message(&self, msg: &AdminMessage) -> Result<(), WireError> {
        if let Some(from) = &msg.from {
            validate_id("from", from)?;
        }
        if msg.msg_type.is_empty()
            || msg.msg_type.len() > 32
            || validate_id("type", &msg.msg_type).is_err()
        {
            return Err(err(
                ErrorCode::BadRequest,
                format!(
                    "type must be 1-32 characters from [A-Za-z0-9_.:@-], got {:?}",
                    msg.msg_type
                ),
            ));
        }
        let max = self.config.limits.admin_body;
        if msg.body.len() > max {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "message body is {} bytes, the most is {max}",
                    msg.body.len()
                ),
            ));
        }
        Ok(())
    }

    fn publish_admin(
        self: &Arc<Self>,
        room: &Arc<Room>,
        msg: &AdminMessage,
        activity: bool,
    ) -> Result<Durable<Stamped>, WireError> {
        let now = now_ms();
        let class = {
            let mut st = room.state();
            if activity {
                st.last_activity_ms = now;
            }
            policy::classify(
                msg.from.as_deref(),
                &msg.msg_type,
                msg.low,
                &st.moderation,
                &self.global(),
            )
        };
        let keep = self.keeps(class, msg.store);
        if keep {
            self.writable_for_messages()?;
        }
        let out = Outgoing {
            from: msg.from.clone().unwrap_or_default(),
            msg_type: msg.msg_type.clone(),
            body: msg.body.clone(),
            class,
            keep_in_history: keep,
        };
        self.publish_stored(room, out, now, "admin")
    }

    /// An admin send to several rooms: one result per room, in order.
    pub fn admin_send_many(
        self: &Arc<Self>,
        rooms: &[String],
        msg: &AdminMessage,
    ) -> Result<Vec<Result<Durable<Stamped>, WireError>>, WireError> {
        let max = self.config.limits.rooms_per_send;
        if rooms.is_empty() || rooms.len() > max {
            return Err(err(
                ErrorCode::BatchTooLarge,
                format!("rooms must hold 1..={max} room ids, got {}", rooms.len()),
            ));
        }
        self.check_admin_message(msg)?;
        Ok(rooms.iter().map(|r| self.admin_send(r, msg)).collect())
    }

    /// Sends to every room (not stored in history, not activity): one send per room that took
    /// it, to wait for (in cluster mode a room another relay sequences gets its message only
    /// through the wait, which forwards it to the owner).
    pub fn broadcast(
        self: &Arc<Self>,
        msg: &AdminMessage,
    ) -> Result<Vec<Durable<Stamped>>, WireError> {
        self.check_admin_message(msg)?;
        let msg = AdminMessage {
            store: false,
            ..msg.clone()
        };
        Ok(self
            .all_rooms()
            .iter()
            .filter_map(|r| self.publish_admin(r, &msg, false).ok())
            .collect())
    }
}

// ---- memory footprint ----

/// How many entries the registry's maps hold: each is bounded by live rooms, users and
/// connections, not by traffic, and shrinks back when they go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Live rooms.
    pub rooms: usize,
    /// Users with a connection or a membership.
    pub users: usize,
    /// Registered connections.
    pub conns: usize,
    /// Memberships over all rooms.
    pub members: usize,
    /// Delivery tasks registered to be woken, over all rooms.
    pub watchers: usize,
}

impl Relay {
    /// The sizes of the registry's maps now.
    pub fn footprint(&self) -> Footprint {
        let rooms = self.all_rooms();
        let (_, users, _, members) = self.core().footprint();
        Footprint {
            rooms: rooms.len(),
            users,
            conns: lock(&self.conns).len(),
            members,
            watchers: rooms.iter().map(|r| r.watchers.len()).sum(),
        }
    }
}
