//! The registry of rooms, users and connections, and every operation on them that the QUIC
//! sessions and the admin API share.
//!
//! Lock order, always: `rooms` → `creating` → a room's state → `users` → `conns`. Nothing here
//! awaits while holding one of these, and nothing on the delivery path takes any of them. The
//! async change locks (see [`super::durable`]) come before all of them: a room's, then the
//! app-wide lists'.
//!
//! Durable changes follow [`super::durable`]: stored first, applied after. A client's message is
//! stamped at once (its sequence number and timestamp, in order) and held out of the room's ring
//! until the store has appended it (`sync` mode): members, join history and `history` requests
//! see it only once it is durable, and a message the store refuses is seen by no one (its
//! sequence number stays unused) while its sender is told `UNAVAILABLE`.

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
use crate::room::{
    Fanout, Hold, JoinPoint, MemberOrder, Outgoing, Refused, Room, RoomState, Signal, validate_id,
    validate_msg_type,
};
use crate::store::{Ack, Durability, Op, Snapshot, Store, StoredMessage, Then};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

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

#[derive(Default)]
struct UserState {
    conns: HashSet<u64>,
    rooms: HashSet<String>,
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

/// A subscription to `room` from `at` that first tells the client `Resumed{missed}`.
fn resume(room: &Arc<Room>, at: JoinPoint, missed: u64) -> DeliveryCmd {
    DeliveryCmd::Subscribe {
        room: room.clone(),
        at,
        first: Some(encode_frame(&Event::Resumed {
            room: room.id.clone(),
            missed,
            last_seq: at.last_seq,
        })),
    }
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
const SEQ_RESERVE: u64 = 10_000;

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
    users: Mutex<HashMap<String, UserState>>,
    conns: Mutex<HashMap<u64, ConnHandle>>,
    next_conn: AtomicU64,
    last_epoch: AtomicU64,
    /// Rooms whose creation is being stored, by id: a second creation of the id waits for it.
    creating: Mutex<HashMap<String, Arc<Room>>>,
    /// The change lock of the app-wide lists (see [`super::durable`]).
    pub(crate) global_changes: Arc<tokio::sync::Mutex<()>>,
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
        Relay {
            config,
            auth,
            admin_key,
            store,
            rooms: RwLock::new(HashMap::new()),
            global: RwLock::new(GlobalPolicy::default()),
            users: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            last_epoch: AtomicU64::new(0),
            creating: Mutex::new(HashMap::new()),
            global_changes: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

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
        for loaded in snap.rooms {
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
            rooms.insert(rec.id, room);
        }
        metrics::gauge!(m::ROOMS).set(rooms.len() as f64);
        tracing::info!(rooms = rooms.len(), "rooms restored from the store");
    }

    // ---- connections ----

    /// Registers an authenticated connection; returns its id. Memberships the user kept through
    /// the offline grace period move to this connection: it is subscribed to them at once and told
    /// how many messages it missed (`Event::Resumed`).
    pub fn register_conn(&self, handle: ConnHandle) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let user = handle.user.clone();
        let tx = handle.tx.clone();
        let transport = handle.transport;
        // In `conns` before `users`: a connection another one hands a room over to (found in
        // `users`, see `unregister_conn`) must already be reachable by `tell`.
        lock(&self.conns).insert(id, handle);
        let rooms: Vec<String> = {
            let mut users = lock(&self.users);
            let u = users.entry(user.clone()).or_default();
            u.conns.insert(id);
            u.rooms.iter().cloned().collect()
        };
        metrics::gauge!(m::CONNECTIONS, "transport" => transport.as_str()).increment(1.0);
        for room_id in rooms {
            let Ok(room) = self.room(&room_id) else {
                continue;
            };
            let mut st = room.state();
            let published = room.ring.join_point().messages;
            let Some(member) = st.member_mut(&user) else {
                continue;
            };
            if member.conns.contains(&id) {
                // Handed over to this connection already, by another one that closed meanwhile.
                continue;
            }
            if member.offline_since.take().is_none() {
                // Still served by another connection, maybe one that died unnoticed: should that
                // one go, this connection takes over from here (see `unregister_conn`).
                member.reconnect_messages.get_or_insert(published);
                continue;
            }
            member.conns.insert(id);
            let at = room.ring.join_point();
            let missed = at.messages.saturating_sub(member.offline_messages);
            // Queued under the room's lock, so a kick or ban of this membership that follows
            // cannot reach the delivery task first. A fresh queue of 256 holds these (at most
            // rooms_per_user).
            let _ = tx.try_send(resume(&room, at, missed));
            drop(st);
            tracing::debug!(room = %room_id, user = %user, missed, "membership resumed");
        }
        id
    }

    /// Removes a closed connection. A member left with no connection goes offline: it is removed
    /// after `offline_grace_ms` unless it reconnects (see [`Relay::tick`]).
    pub fn unregister_conn(&self, id: u64) {
        let Some(handle) = lock(&self.conns).remove(&id) else {
            return;
        };
        metrics::gauge!(m::CONNECTIONS, "transport" => handle.transport.as_str()).decrement(1.0);
        let rooms: Vec<String> = {
            let mut users = lock(&self.users);
            let Some(u) = users.get_mut(&handle.user) else {
                return;
            };
            u.conns.remove(&id);
            u.rooms.iter().cloned().collect()
        };
        let now = now_ms();
        let grace = self.config.rooms.offline_grace_ms;
        for room_id in rooms {
            let Ok(room) = self.room(&room_id) else {
                continue;
            };
            let mut st = room.state();
            if !st.remove_conn(&handle.user, id) {
                continue;
            }
            // The user's live connections, read under the room's lock: one that closes
            // meanwhile either is gone from `users` already or finds itself handed over here
            // when its own pass reaches this room.
            let live: Vec<u64> = lock(&self.users)
                .get(&handle.user)
                .map(|u| u.conns.iter().copied().collect())
                .unwrap_or_default();
            if !live.is_empty() {
                // The user is still connected (a reconnect that came before this connection was
                // noticed gone): its live connections take the membership over.
                self.hand_over(&room, &mut st, &handle.user, &live);
                continue;
            }
            if grace == 0 {
                self.remove_member(&room, &mut st, &handle.user, None, now);
            } else if let Some(m) = st.member_mut(&handle.user) {
                m.offline_since = Some(now);
                m.offline_messages = room.ring.join_point().messages;
            }
        }
        self.drop_user_if_unused(&handle.user);
    }

    /// Subscribes `conns` to a room whose member lost its last subscribed connection, telling them
    /// what they missed since they connected (state locked).
    fn hand_over(&self, room: &Arc<Room>, st: &mut RoomState, user: &str, conns: &[u64]) {
        let at = room.ring.join_point();
        let Some(member) = st.member_mut(user) else {
            return;
        };
        let missed = at
            .messages
            .saturating_sub(member.reconnect_messages.take().unwrap_or(at.messages));
        member.conns.extend(conns.iter().copied());
        let cmd = resume(room, at, missed);
        for c in conns {
            self.tell(*c, cmd.clone());
        }
    }

    fn drop_user_if_unused(&self, user: &str) {
        let mut users = lock(&self.users);
        if users
            .get(user)
            .is_some_and(|u| u.conns.is_empty() && u.rooms.is_empty())
        {
            users.remove(user);
        }
    }

    fn forget_membership(&self, user: &str, room: &str) {
        let mut users = lock(&self.users);
        if let Some(u) = users.get_mut(user) {
            u.rooms.remove(room);
            if u.conns.is_empty() && u.rooms.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Removes `user` from `room` (state already locked): its connections stop reading the room,
    /// told `kicked` when set; members get `MemberLeft` when the room has member events. Its
    /// `auto_delete` attributes are marked for [`Relay::sweep`], which removes them once that is
    /// durable. Memberships are not stored (they do not survive a restart), so this needs no
    /// store.
    pub(crate) fn remove_member(
        &self,
        room: &Room,
        st: &mut RoomState,
        user: &str,
        kicked: Option<KickReason>,
        now: u64,
    ) -> bool {
        let Some(member) = st.remove(user) else {
            return false;
        };
        metrics::gauge!(m::MEMBERS).decrement(1.0);
        if let Some(k) = kicked.filter(|k| *k != KickReason::OtherDevice) {
            metrics::counter!(m::MEMBERS_REMOVED, "reason" => k.as_str()).increment(1);
        }
        self.forget_membership(user, &room.id);
        let until = room.ring.join_point();
        for c in member.conns {
            self.tell(
                c,
                DeliveryCmd::Unsubscribe {
                    room: room.id.clone(),
                    kicked,
                    until,
                },
            );
        }
        st.last_activity_ms = now;
        // Its auto-delete attributes go too, durably first (see `Relay::sweep`).
        if st.attrs.values().any(|a| a.auto_delete && a.owner == user) {
            st.departed.insert(user.to_owned());
        }
        if self.member_events_on(st) {
            room.publish_event(
                &Event::MemberLeft {
                    room: room.id.clone(),
                    user: user.to_owned(),
                },
                now,
            );
            // Members track the count from events again; a later crossing re-announces it.
            st.count_announced = None;
        }
        true
    }

    fn member_events_on(&self, st: &RoomState) -> bool {
        st.member_events && st.len() <= self.config.rooms.member_events_max
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
        let conns: Vec<u64> = lock(&self.users)
            .get(user)
            .map(|u| u.conns.iter().copied().collect())
            .unwrap_or_default();
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
        self.commit(NOT_MADE, ops, move |ok| {
            let _locked = guard;
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
            metrics::gauge!(m::ROOMS).increment(1.0);
            tracing::info!(room = %room.id, epoch = room.epoch, "room created");
            Some(relay.info_of(&room, members))
        })
        .await
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
            match relay.destroy(&room, |_| Some(reason)).await? {
                Some(_) => Ok(()),
                None => Err(room_not_found(&room.id)),
            }
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
        self.check_writable()?;
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
        let mut ops = vec![Op::DeleteRoom(room.id.clone())];
        if kept {
            let mut global = self.global().clone();
            global.keepalive.remove(&room.id);
            ops.push(Op::PutGlobal(global));
        }
        let relay = self.clone();
        let room = room.clone();
        self.commit(NOT_MADE, ops, move |ok| {
            let _locked = (guard, global_guard);
            if !ok {
                room.ring.freeze(false);
                return None;
            }
            relay.finish_destroy(&room, reason, kept);
            Some(Some(reason))
        })
        .await
    }

    /// Decides a destruction with the registry and the room's state locked; freezes the ring
    /// when it is decided.
    fn decide_destroy(
        &self,
        room: &Arc<Room>,
        decide: impl FnOnce(&mut RoomState) -> Option<DestroyReason>,
    ) -> Option<DestroyReason> {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        if !rooms.get(&room.id).is_some_and(|r| Arc::ptr_eq(r, room)) {
            return None;
        }
        let reason = decide(&mut room.state())?;
        room.ring.freeze(true);
        Some(reason)
    }

    /// Takes a destroyed room out of memory: the registry, its ring, its members, the keepalive
    /// list (when `kept`).
    fn finish_destroy(&self, room: &Arc<Room>, reason: DestroyReason, kept: bool) {
        let id = room.id.as_str();
        {
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            if rooms.get(id).is_some_and(|r| Arc::ptr_eq(r, room)) {
                rooms.remove(id);
            }
        }
        room.close(reason);
        let users: Vec<String> = {
            let mut st = room.state();
            let users: Vec<String> = st.members().map(|(u, _)| u.clone()).collect();
            for u in &users {
                st.remove(u);
            }
            users
        };
        metrics::gauge!(m::MEMBERS).decrement(users.len() as f64);
        for u in &users {
            self.forget_membership(u, id);
        }
        if kept {
            self.global_mut().keepalive.remove(id);
        }
        metrics::gauge!(m::ROOMS).decrement(1.0);
        metrics::counter!(m::ROOMS_DESTROYED, "reason" => reason.as_str()).increment(1);
        tracing::info!(room = %id, reason = reason.as_str(), members = users.len(), "room destroyed");
    }

    /// Room info with up to `members` members.
    pub fn room_info(&self, id: &str, members: usize) -> Result<RoomInfo, WireError> {
        let room = self.room(id)?;
        Ok(self.info_of(&room, members))
    }

    fn info_of(&self, room: &Room, members: usize) -> RoomInfo {
        let st = room.state();
        info_from(room, &st, members)
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
        let st = room.state();
        let page = st.page(order, limit, after);
        let next = (page.len() == limit)
            .then(|| page.last().map(|p| p.2))
            .flatten();
        Ok(MemberPage {
            members: page.into_iter().map(|(u, j, _)| (u, j)).collect(),
            total: st.len(),
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
        let st = room.state();
        Ok(users.iter().map(|u| st.member(u).is_some()).collect())
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
                    relay.join_room(conn, &user, &room, wanted)
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
        // Read before anything changes: a join whose history cannot be read is refused whole.
        let stored = match wanted {
            0 => None,
            n => Some(self.stored_history(room, None, n)?),
        };
        let now = now_ms();
        if self.config.rooms.single_room {
            // Check first: a refused join must not take the user out of its current room.
            Self::check_joinable(room, &room.state(), user, now)?;
            self.leave_others(user, room_id, now);
        }
        let mut st = room.state();
        Self::check_joinable(room, &st, user, now)?;
        let already = st.has_conn(user, conn);
        {
            // Counted and recorded under one lock: two devices joining two rooms at once cannot
            // both pass the limit.
            let mut users = lock(&self.users);
            let u = users.entry(user.to_owned()).or_default();
            let n = u.rooms.len();
            if st.member(user).is_none() && n >= limits.rooms_per_user {
                return Err(err(
                    ErrorCode::TooManyRooms,
                    format!(
                        "user {user:?} is already in {n} rooms, the most allowed (rooms_per_user)"
                    ),
                ));
            }
            u.rooms.insert(room_id.to_owned());
        }
        let new_member = st.add(user, conn, now);
        st.departed.remove(user);
        if let Some(m) = st.member_mut(user) {
            m.offline_since = None;
        }
        st.last_activity_ms = now;
        if new_member {
            metrics::gauge!(m::MEMBERS).increment(1.0);
            if self.member_events_on(&st) {
                room.publish_event(
                    &Event::MemberJoined {
                        room: room.id.clone(),
                        user: user.to_owned(),
                    },
                    now,
                );
                st.count_announced = None;
            }
        }
        let at = room.ring.join_point();
        let info = info_from(room, &st, limits.room_info_members);
        let muted = policy::check_send(user, &st.moderation, &self.global(), now).is_err();
        let attributes = attributes_of(&st);
        let attr_version = st.attr_version;
        let recalls = st.recent_recalls.clone();
        if !already {
            self.tell(
                conn,
                DeliveryCmd::Subscribe {
                    room: room.clone(),
                    at,
                    first: None,
                },
            );
        }
        drop(st);
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

    fn check_joinable(room: &Room, st: &RoomState, user: &str, now: u64) -> Result<(), WireError> {
        if room.is_closed() {
            return Err(room_not_found(&room.id));
        }
        if let Some(until) = st.moderation.banned_until(user, now) {
            return Err(err(
                ErrorCode::Banned,
                format!(
                    "user {user:?} is banned from room {:?} until {} ({until} ms since the epoch)",
                    room.id,
                    crate::protocol::utc_text(until)
                ),
            ));
        }
        Ok(())
    }

    /// `single_room` mode: removes `user` from every room but `keep`, telling all its devices.
    fn leave_others(&self, user: &str, keep: &str, now: u64) {
        let rooms: Vec<String> = lock(&self.users)
            .get(user)
            .map(|u| u.rooms.iter().filter(|r| *r != keep).cloned().collect())
            .unwrap_or_default();
        for r in rooms {
            if let Ok(room) = self.room(&r) {
                let mut st = room.state();
                self.remove_member(&room, &mut st, user, Some(KickReason::SingleRoom), now);
            }
        }
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
        let conns: Vec<u64> = st
            .member(user)
            .map(|m| m.conns.iter().copied().collect())
            .ok_or_else(|| {
                err(
                    ErrorCode::NotInRoom,
                    format!("user {user:?} is not in room {room_id:?}"),
                )
            })?;
        // The leaving connection is told nothing; the user's other devices get Kicked. All get
        // what was published before the leave, and nothing after (not even the leave's events).
        let until = room.ring.join_point();
        if let Some(m) = st.member_mut(user) {
            m.conns.retain(|c| *c != conn);
        }
        self.remove_member(
            &room,
            &mut st,
            user,
            Some(KickReason::OtherDevice),
            now_ms(),
        );
        if conns.contains(&conn) {
            self.tell(
                conn,
                DeliveryCmd::Unsubscribe {
                    room: room_id.to_owned(),
                    kicked: None,
                    until,
                },
            );
        }
        drop(st);
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
            if st.member(user).is_none() {
                return Err(err(
                    ErrorCode::NotInRoom,
                    format!("join room {room_id:?} before sending to it"),
                ));
            }
            let global = self.global();
            policy::check_send(user, &st.moderation, &global, now)?;
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
    fn publish_stored(
        self: &Arc<Self>,
        room: &Arc<Room>,
        out: Outgoing,
        now: u64,
        source: &'static str,
    ) -> Result<Durable<Stamped>, WireError> {
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
            let then = Then::new(move |outcome| {
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

    /// Sends to every room (not stored in history, not activity). Returns how many rooms got it.
    pub fn broadcast(self: &Arc<Self>, msg: &AdminMessage) -> Result<usize, WireError> {
        self.check_admin_message(msg)?;
        let msg = AdminMessage {
            store: false,
            ..msg.clone()
        };
        Ok(self
            .all_rooms()
            .iter()
            .filter(|r| self.publish_admin(r, &msg, false).is_ok())
            .count())
    }
}

fn info_from(room: &Room, st: &RoomState, members: usize) -> RoomInfo {
    RoomInfo {
        id: room.id.clone(),
        name: room.name.clone(),
        epoch: room.epoch,
        created_ms: room.created_ms,
        member_count: st.len() as u64,
        members: st
            .page(MemberOrder::Asc, members, None)
            .into_iter()
            .map(|(u, _, _)| u)
            .collect(),
        mute_all: st.moderation.mute_all,
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
        Footprint {
            rooms: rooms.len(),
            users: lock(&self.users).len(),
            conns: lock(&self.conns).len(),
            members: rooms.iter().map(|r| r.state().len()).sum(),
            watchers: rooms.iter().map(|r| r.watchers.len()).sum(),
        }
    }
}
