//! The registry of rooms, users and connections, and every operation on them that the QUIC
//! sessions and the admin API share.
//!
//! Lock order, always: `rooms` → a room's state → `users` → `conns`. Nothing here awaits while
//! holding a lock, and nothing on the delivery path takes any of them.

use crate::auth::TokenAuth;
use crate::config::Config;
use crate::metrics as m;
use crate::protocol::{
    Class, DestroyReason, ErrorCode, JoinInfo, KickReason, Message, RoomInfo, WireError,
};
use crate::room::{Fanout, JoinPoint, MemberOrder, Outgoing, Room, validate_id, validate_msg_type};
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
    },
    /// Stop reading a room; tell the client with `Kicked` when `kicked` is set.
    Unsubscribe {
        /// Room id.
        room: String,
        /// Why, when the client did not ask for it.
        kicked: Option<KickReason>,
    },
}

/// What the registry keeps of a connection.
pub struct ConnHandle {
    /// The authenticated user.
    pub user: String,
    /// The delivery task's queue.
    pub tx: flume::Sender<DeliveryCmd>,
    /// The QUIC connection, to close it.
    pub conn: quinn::Connection,
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

/// The shared core of a running relay.
pub struct Relay {
    /// The configuration it runs with.
    pub config: Arc<Config>,
    /// Token checks.
    pub auth: TokenAuth,
    /// The admin bearer key.
    pub admin_key: String,
    rooms: RwLock<HashMap<String, Arc<Room>>>,
    users: Mutex<HashMap<String, UserState>>,
    conns: Mutex<HashMap<u64, ConnHandle>>,
    next_conn: AtomicU64,
    last_epoch: AtomicU64,
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

fn room_not_found(id: &str) -> WireError {
    err(ErrorCode::RoomNotFound, format!("room {id:?} does not exist"))
}

impl Relay {
    /// A relay with no rooms.
    pub fn new(config: Arc<Config>, auth: TokenAuth, admin_key: String) -> Self {
        Relay {
            config,
            auth,
            admin_key,
            rooms: RwLock::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            last_epoch: AtomicU64::new(0),
        }
    }

    fn room(&self, id: &str) -> Result<Arc<Room>, WireError> {
        let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
        rooms.get(id).cloned().ok_or_else(|| room_not_found(id))
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

    // ---- connections ----

    /// Registers an authenticated connection; returns its id.
    pub fn register_conn(&self, handle: ConnHandle) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.users)
            .entry(handle.user.clone())
            .or_default()
            .conns
            .insert(id);
        lock(&self.conns).insert(id, handle);
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        id
    }

    /// Removes a closed connection. A member left with no connection in a room leaves it.
    pub fn unregister_conn(&self, id: u64) {
        let Some(handle) = lock(&self.conns).remove(&id) else {
            return;
        };
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
        let rooms: Vec<String> = {
            let mut users = lock(&self.users);
            let Some(u) = users.get_mut(&handle.user) else {
                return;
            };
            u.conns.remove(&id);
            u.rooms.iter().cloned().collect()
        };
        for room_id in rooms {
            let Ok(room) = self.room(&room_id) else {
                continue;
            };
            let mut st = room.state();
            if st.remove_conn(&handle.user, id) {
                st.remove(&handle.user);
                metrics::gauge!(m::MEMBERS).decrement(1.0);
                drop(st);
                self.forget_membership(&handle.user, &room_id);
            }
        }
        let mut users = lock(&self.users);
        if users
            .get(&handle.user)
            .is_some_and(|u| u.conns.is_empty() && u.rooms.is_empty())
        {
            users.remove(&handle.user);
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

    fn tell(&self, conn: u64, cmd: DeliveryCmd) {
        let conns = lock(&self.conns);
        if let Some(h) = conns.get(&conn)
            && h.tx.try_send(cmd).is_err()
        {
            // The delivery queue only overflows when the connection stopped reading entirely.
            h.conn.close(
                crate::protocol::CloseCode::TooSlow.into(),
                b"delivery queue full",
            );
        }
    }

    /// Closes every connection with `code` and `reason`.
    pub fn close_all(&self, code: crate::protocol::CloseCode, reason: &str) {
        for h in lock(&self.conns).values() {
            h.conn.close(code.into(), reason.as_bytes());
        }
    }

    // ---- rooms ----

    /// Creates a room.
    pub fn create_room(&self, new: NewRoom) -> Result<RoomInfo, WireError> {
        validate_id("room id", &new.id)?;
        let name = new.name.unwrap_or_else(|| new.id.clone());
        if name.len() > 256 {
            return Err(err(
                ErrorCode::BadRequest,
                "room name must be at most 256 bytes",
            ));
        }
        let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
        if rooms.contains_key(&new.id) {
            return Err(err(
                ErrorCode::RoomExists,
                format!("room {:?} already exists", new.id),
            ));
        }
        let room = Arc::new(Room::new(
            new.id.clone(),
            name,
            self.next_epoch(),
            now_ms(),
            self.config.limits.ring_capacity,
        ));
        room.state().mute_all = new.mute_all;
        rooms.insert(new.id.clone(), room.clone());
        drop(rooms);
        metrics::gauge!(m::ROOMS).increment(1.0);
        tracing::info!(room = %new.id, epoch = room.epoch, "room created");
        Ok(self.info_of(&room, self.config.limits.room_info_members))
    }

    /// Destroys a room: every member is told why and removed.
    pub fn destroy_room(&self, id: &str, reason: DestroyReason) -> Result<(), WireError> {
        let room = {
            let mut rooms = self.rooms.write().unwrap_or_else(|p| p.into_inner());
            rooms.remove(id).ok_or_else(|| room_not_found(id))?
        };
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
        metrics::gauge!(m::ROOMS).decrement(1.0);
        tracing::info!(room = %id, reason = reason.as_str(), members = users.len(), "room destroyed");
        Ok(())
    }

    /// Room info with up to `members` members.
    pub fn room_info(&self, id: &str, members: usize) -> Result<RoomInfo, WireError> {
        let room = self.room(id)?;
        Ok(self.info_of(&room, members))
    }

    fn info_of(&self, room: &Room, members: usize) -> RoomInfo {
        let st = room.state();
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
            mute_all: st.mute_all,
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

    /// Joins `conn` of `user` to a room. Returns the reply and, when the connection was not
    /// subscribed yet, the room and join point for its delivery task.
    pub fn join(
        &self,
        conn: u64,
        user: &str,
        room_id: &str,
        history: i32,
    ) -> Result<(JoinInfo, Option<(Arc<Room>, JoinPoint)>), WireError> {
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
        let room = self.room(room_id)?;
        let mut st = room.state();
        if room.is_closed() {
            return Err(room_not_found(room_id));
        }
        let already = st.has_conn(user, conn);
        if st.member(user).is_none() {
            let users = lock(&self.users);
            let n = users.get(user).map_or(0, |u| u.rooms.len());
            if n >= limits.rooms_per_user {
                return Err(err(
                    ErrorCode::TooManyRooms,
                    format!(
                        "user {user:?} is already in {n} rooms, the most allowed (rooms_per_user)"
                    ),
                ));
            }
        }
        if st.add(user, conn, now_ms()) {
            metrics::gauge!(m::MEMBERS).increment(1.0);
        }
        lock(&self.users)
            .entry(user.to_owned())
            .or_default()
            .rooms
            .insert(room_id.to_owned());
        let at = room.ring.join_point();
        let info = {
            let members = st
                .page(MemberOrder::Asc, limits.room_info_members, None)
                .into_iter()
                .map(|(u, _, _)| u)
                .collect();
            RoomInfo {
                id: room.id.clone(),
                name: room.name.clone(),
                epoch: room.epoch,
                created_ms: room.created_ms,
                member_count: st.len() as u64,
                members,
                mute_all: st.mute_all,
            }
        };
        let muted = st.mute_all;
        drop(st);
        let history: Vec<Message> = room
            .ring
            .recent(at.pos, wanted)
            .into_iter()
            .filter_map(|e| e.history.clone())
            .collect();
        tracing::debug!(room = %room_id, user, conn, "joined");
        let sub = (!already).then(|| (room.clone(), at));
        Ok((
            JoinInfo {
                room: info,
                last_seq: at.last_seq,
                muted,
                history,
            },
            sub,
        ))
    }

    /// `user` leaves a room from `conn`; the user's other connections are told `Kicked{other_device}`.
    pub fn leave(&self, conn: u64, user: &str, room_id: &str) -> Result<(), WireError> {
        validate_id("room id", room_id)?;
        let room = self.room(room_id)?;
        let member = room.state().remove(user).ok_or_else(|| {
            err(
                ErrorCode::NotInRoom,
                format!("user {user:?} is not in room {room_id:?}"),
            )
        })?;
        metrics::gauge!(m::MEMBERS).decrement(1.0);
        self.forget_membership(user, room_id);
        for c in member.conns {
            let kicked = (c != conn).then_some(KickReason::OtherDevice);
            self.tell(
                c,
                DeliveryCmd::Unsubscribe {
                    room: room_id.to_owned(),
                    kicked,
                },
            );
        }
        Ok(())
    }

    // ---- messages ----

    /// A client's send.
    pub fn send(
        &self,
        user: &str,
        room_id: &str,
        msg_type: String,
        body: Bytes,
        low: bool,
    ) -> Result<(u64, u64), WireError> {
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
        if room.state().member(user).is_none() {
            return Err(err(
                ErrorCode::NotInRoom,
                format!("join room {room_id:?} before sending to it"),
            ));
        }
        let class = if low { Class::Low } else { Class::Normal };
        let out = Outgoing {
            from: user.to_owned(),
            msg_type,
            body,
            class,
            keep_in_history: class != Class::Low,
        };
        let stamped = room
            .publish(out, now_ms())
            .ok_or_else(|| room_not_found(room_id))?;
        metrics::counter!(m::MESSAGES_IN, "class" => class.as_str(), "source" => "client")
            .increment(1);
        Ok(stamped)
    }

    /// An admin send to one room.
    pub fn admin_send(&self, room_id: &str, msg: &AdminMessage) -> Result<(u64, u64), WireError> {
        self.check_admin_message(msg)?;
        let room = self.room(room_id)?;
        self.publish_admin(&room, msg)
            .ok_or_else(|| room_not_found(room_id))
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
                format!("message body is {} bytes, the most is {max}", msg.body.len()),
            ));
        }
        Ok(())
    }

    fn publish_admin(&self, room: &Room, msg: &AdminMessage) -> Option<(u64, u64)> {
        let class = if msg.low {
            Class::Low
        } else if msg.from.is_none() {
            Class::Protected
        } else {
            Class::Normal
        };
        let out = Outgoing {
            from: msg.from.clone().unwrap_or_default(),
            msg_type: msg.msg_type.clone(),
            body: msg.body.clone(),
            class,
            keep_in_history: msg.store && class != Class::Low,
        };
        let stamped = room.publish(out, now_ms());
        if stamped.is_some() {
            metrics::counter!(m::MESSAGES_IN, "class" => class.as_str(), "source" => "admin")
                .increment(1);
        }
        stamped
    }

    /// An admin send to several rooms: one result per room, in order.
    pub fn admin_send_many(
        &self,
        rooms: &[String],
        msg: &AdminMessage,
    ) -> Result<Vec<Result<(u64, u64), WireError>>, WireError> {
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

    /// Sends to every room (not stored in history). Returns how many rooms got it.
    pub fn broadcast(&self, msg: &AdminMessage) -> Result<usize, WireError> {
        self.check_admin_message(msg)?;
        let msg = AdminMessage {
            store: false,
            ..msg.clone()
        };
        let rooms: Vec<Arc<Room>> = {
            let rooms = self.rooms.read().unwrap_or_else(|p| p.into_inner());
            rooms.values().cloned().collect()
        };
        Ok(rooms
            .iter()
            .filter(|r| self.publish_admin(r, &msg).is_some())
            .count())
    }
}
