//! The membership core: who is in which room, over which connections, as plain data.
//!
//! [`Core`] is a deterministic state machine in the shape of quinn-proto's `Connection`: the
//! shell ([`crate::server::Relay`]) feeds it inputs — a connection up or down, a join, a leave, a
//! kick, a room created or destroyed, a change stored, a timer pass — each with the time `now`
//! and the room's publish position ([`JoinPoint`], read from its ring) as arguments, and applies
//! the [`Effect`]s it returns, in order. Nothing in here reads a clock, touches a socket, spawns a
//! task, takes a lock or holds a channel; the tests drive it with plain `#[test]`s and a property
//! test over random sequences of inputs.
//!
//! # The rules it keeps
//! - A user is in at most `rooms_per_user` rooms, and in `single_room` mode in one: a join of
//!   another room ends the user's other memberships in the same input, so two devices joining
//!   two rooms at once cannot both win.
//! - A membership is of one *incarnation* of a room, its `(id, epoch)`: a room destroyed and
//!   created again under the same id is another room, and an effect about the old one (a lagging
//!   destruction, an unsubscribe) never touches a membership of the new one.
//! - A member whose last connection goes is offline: the user's other live connections take the
//!   membership over at once, each told how many messages it missed since it arrived; with none,
//!   the membership waits `offline_grace_ms` for a reconnect ([`Effect::Subscribe`] with
//!   `resumed`: the messages published while offline) and then ends with `Kicked{offline}`.
//!   What a connection missed is counted from its own arrival only: a connection that came and
//!   went leaves no mark behind.
//! - A membership that ends is unsubscribed at the room's position when it ended: its
//!   connections get everything published before, then `Kicked` (when it was not asked for),
//!   and nothing after.
//! - A durable change that ends memberships (a destruction) takes effect only once the store has
//!   it: [`Core::submit`] returns [`Effect::Store`], and [`Core::stored`] releases its effects
//!   when the shell reports the outcome (in the store's order); a refused change leaves no
//!   trace.

//!
//! # What it does not hold
//! The rest of a room stays where it was, plain data the shell keeps under the room's lock:
//! its moderation lists, policies and attributes ([`super::RoomState`]), the decisions on them
//! ([`crate::policy`]), and its sequencing and fan-out ([`super::Ring`]: a message is stamped
//! and, with `sync` durability, held until its append is durable). The core reads the
//! moderation lists as arguments ([`Core::check_join`], [`Core::check_send`]).

use super::records::Op;
use super::ring::JoinPoint;
use crate::policy::{GlobalPolicy, Moderation};
use crate::protocol::{ErrorCode, KickReason, WireError};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A connection's id, given by the shell.
pub type ConnId = u64;

/// The limits the core enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreConfig {
    /// Most rooms a user is in at once.
    pub rooms_per_user: usize,
    /// A user is in one room at a time: joining another leaves the current one.
    pub single_room: bool,
    /// How long a member with no connection keeps its membership, ms.
    pub offline_grace_ms: u64,
}

/// Why the core refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The room is not live (never created, or destroyed).
    #[error("room {0:?} does not exist")]
    NoRoom(String),
    /// The connection is not registered.
    #[error("connection {0} is not registered")]
    NoConn(ConnId),
    /// The user is not a member of the room.
    #[error("user {user:?} is not in room {room:?}")]
    NotInRoom {
        /// The user.
        user: String,
        /// The room.
        room: String,
    },
    /// A resume names an incarnation of the room that is gone (destroyed, perhaps created anew).
    #[error(
        "room {room:?} was destroyed: its incarnation of epoch {epoch} is gone (a resume cannot \
         carry a membership over to a room created anew); join it anew"
    )]
    Destroyed {
        /// The room.
        room: String,
        /// The epoch the resume named.
        epoch: u64,
        /// The live incarnation's epoch, if any.
        live: Option<u64>,
    },
    /// The user is in as many rooms as allowed.
    #[error("user {user:?} is already in {n} rooms, the most allowed (rooms_per_user)")]
    TooManyRooms {
        /// The user.
        user: String,
        /// Rooms it is in.
        n: usize,
    },
}

impl From<CoreError> for WireError {
    fn from(e: CoreError) -> Self {
        let code = match &e {
            CoreError::NoRoom(_) | CoreError::Destroyed { .. } => ErrorCode::RoomNotFound,
            CoreError::NoConn(_) => ErrorCode::Internal,
            CoreError::NotInRoom { .. } => ErrorCode::NotInRoom,
            CoreError::TooManyRooms { .. } => ErrorCode::TooManyRooms,
        };
        WireError::new(code, e.to_string())
    }
}

/// How a membership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The user left (from one device; the others are told `Kicked{other_device}`).
    Left,
    /// Removed, and told why.
    Kicked(KickReason),
    /// Its last connection closed and the relay keeps no offline grace.
    Gone,
    /// The room was destroyed (its members learn it from the room's end, not from a kick).
    Destroyed,
}

/// Identifies a change submitted to the store, for [`Core::stored`].
pub type ChangeId = u64;

/// What a stored change does once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    /// Destroy this incarnation of a room.
    Destroy {
        /// Room id.
        room: String,
        /// Its epoch.
        epoch: u64,
    },
    /// End these users' memberships of this incarnation of a room, telling them why.
    Kick {
        /// Room id.
        room: String,
        /// Its epoch.
        epoch: u64,
        /// The users.
        users: Vec<String>,
        /// Why.
        reason: KickReason,
    },
}

/// What the shell does, in the order returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Start delivering the room to `conn` from `at`; `resumed`: first tell it
    /// `Resumed{missed}` (a membership that moved to it).
    Subscribe {
        /// The connection.
        conn: ConnId,
        /// Room id.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// Where to start.
        at: JoinPoint,
        /// `Some(missed)` when the membership is resumed on this connection.
        resumed: Option<u64>,
    },
    /// Stop delivering the room to `conn` once everything before `until` is delivered or
    /// counted in a `Gap`; then tell it `Kicked{kicked}` when set.
    Unsubscribe {
        /// The connection.
        conn: ConnId,
        /// Room id.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// Why, when the client did not ask for it.
        kicked: Option<KickReason>,
        /// Where the membership ended.
        until: JoinPoint,
    },
    /// `user` became a member; the room now has `members`.
    Joined {
        /// Room id.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// The user.
        user: String,
        /// Members after the join.
        members: usize,
    },
    /// `user`'s membership ended; the room now has `members`.
    Left {
        /// Room id.
        room: String,
        /// The room's epoch.
        epoch: u64,
        /// The user.
        user: String,
        /// How.
        how: Ended,
        /// Members after.
        members: usize,
    },
    /// Store these ops; report the outcome with [`Core::stored`].
    Store {
        /// The change.
        id: ChangeId,
        /// What to store.
        ops: Vec<Op>,
    },
}

/// One member of a room incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Join order, unique in the room.
    pub order: u64,
    /// Join time, ms since the epoch.
    pub joined_ms: u64,
    /// The user's connections subscribed to the room.
    pub conns: BTreeSet<ConnId>,
    /// Since when, and at how many published messages, the member has had no connection.
    pub offline: Option<(u64, u64)>,
    /// The user's live connections not subscribed (they arrived while another one served the
    /// membership), with the messages the room had published when each arrived: should the
    /// serving ones go, these take over and are told what they missed since.
    pub waiting: BTreeMap<ConnId, u64>,
}

/// The members of one live room incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomMembers {
    /// The incarnation.
    pub epoch: u64,
    /// Sequence numbers this run of the relay knows no message has: `(newest, first)` when the
    /// room was restored, its newest stored message and the first number this run assigns;
    /// the numbers strictly between were reserved by an earlier run and are not counted as
    /// missed by a resume ([`resume_missed`]).
    pub unused: (u64, u64),
    members: BTreeMap<String, Member>,
    by_join: BTreeMap<u64, String>,
    next_order: u64,
}

impl RoomMembers {
    /// The member record of `user`.
    pub fn member(&self, user: &str) -> Option<&Member> {
        self.members.get(user)
    }

    /// Member count.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the room has no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member.
    pub fn members(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members.iter()
    }

    /// Up to `limit` members in join order (`desc`: newest first), after the join order `after`
    /// (a cursor from a previous page): `(user, joined_ms, order)`.
    pub fn page(&self, desc: bool, limit: usize, after: Option<u64>) -> Vec<(String, u64, u64)> {
        let pick = |(o, u): (&u64, &String)| {
            let joined = self.members.get(u).map_or(0, |m| m.joined_ms);
            (u.clone(), joined, *o)
        };
        match (desc, after) {
            (false, None) => self.by_join.iter().take(limit).map(pick).collect(),
            (false, Some(a)) => self
                .by_join
                .range(a.saturating_add(1)..)
                .take(limit)
                .map(pick)
                .collect(),
            (true, None) => self.by_join.iter().rev().take(limit).map(pick).collect(),
            (true, Some(a)) => self
                .by_join
                .range(..a)
                .rev()
                .take(limit)
                .map(pick)
                .collect(),
        }
    }

    fn remove(&mut self, user: &str) -> Option<Member> {
        let m = self.members.remove(user)?;
        self.by_join.remove(&m.order);
        Some(m)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserEntry {
    conns: BTreeSet<ConnId>,
    /// Rooms the user is a member of, with the epoch of the membership.
    rooms: BTreeMap<String, u64>,
}

/// The membership state machine (see the module doc).
#[derive(Debug, Clone)]
pub struct Core {
    cfg: CoreConfig,
    rooms: BTreeMap<String, RoomMembers>,
    users: BTreeMap<String, UserEntry>,
    conns: BTreeMap<ConnId, String>,
    pending: VecDeque<(ChangeId, After)>,
    next_change: ChangeId,
}

impl Core {
    /// A core with no rooms, users or connections.
    pub fn new(cfg: CoreConfig) -> Self {
        Core {
            cfg,
            rooms: BTreeMap::new(),
            users: BTreeMap::new(),
            conns: BTreeMap::new(),
            pending: VecDeque::new(),
            next_change: 1,
        }
    }

    /// The limits it enforces.
    pub fn config(&self) -> CoreConfig {
        self.cfg
    }

    // ---- reading ----

    /// The members of the live incarnation of `room`.
    pub fn room(&self, room: &str) -> Option<&RoomMembers> {
        self.rooms.get(room)
    }

    /// Whether `user` is a member of `room`.
    pub fn is_member(&self, room: &str, user: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.members.contains_key(user))
    }

    /// Member count of `room` (0 when it is not live).
    pub fn len(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, RoomMembers::len)
    }

    /// The live connections of `user`.
    pub fn conns_of(&self, user: &str) -> Vec<ConnId> {
        self.users
            .get(user)
            .map(|u| u.conns.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The rooms `user` is a member of, with their epochs.
    pub fn rooms_of(&self, user: &str) -> Vec<(String, u64)> {
        self.users
            .get(user)
            .map(|u| u.rooms.iter().map(|(r, e)| (r.clone(), *e)).collect())
            .unwrap_or_default()
    }

    /// The user of a registered connection.
    pub fn user_of(&self, conn: ConnId) -> Option<&str> {
        self.conns.get(&conn).map(String::as_str)
    }

    /// `(rooms, users, connections, memberships)` held now: each bounded by live rooms, users
    /// and connections, not by traffic.
    pub fn footprint(&self) -> (usize, usize, usize, usize) {
        let members = self.rooms.values().map(RoomMembers::len).sum();
        (
            self.rooms.len(),
            self.users.len(),
            self.conns.len(),
            members,
        )
    }

    /// Whether `user` may join `room` at `now` given the room's moderation lists: the room
    /// must be live and the user not banned (SPEC: `ROOM_NOT_FOUND`, `BANNED`).
    pub fn check_join(
        &self,
        room: &str,
        user: &str,
        moderation: &Moderation,
        now: u64,
    ) -> Result<(), WireError> {
        if !self.rooms.contains_key(room) {
            return Err(CoreError::NoRoom(room.to_owned()).into());
        }
        if let Some(until) = moderation.banned_until(user, now) {
            return Err(WireError::new(
                ErrorCode::Banned,
                format!(
                    "user {user:?} is banned from room {room:?} until {} ({until} ms since the epoch)",
                    crate::protocol::utc_text(until)
                ),
            ));
        }
        Ok(())
    }

    /// Whether `user` may send to `room` at `now`: a member, and not muted by the room's or the
    /// app-wide lists (in the order of [`crate::policy::check_send`]).
    pub fn check_send(
        &self,
        room: &str,
        user: &str,
        moderation: &Moderation,
        global: &GlobalPolicy,
        now: u64,
    ) -> Result<(), WireError> {
        if !self.is_member(room, user) {
            return Err(WireError::new(
                ErrorCode::NotInRoom,
                format!("join room {room:?} before sending to it"),
            ));
        }
        crate::policy::check_send(user, moderation, global, now)
    }

    // ---- rooms ----

    /// A room incarnation became live (created and stored, or restored). An older incarnation
    /// still registered under the id is replaced and its memberships forgotten.
    pub fn room_created(&mut self, room: &str, epoch: u64) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.rooms.get(room).is_some_and(|r| r.epoch != epoch) {
            fx = self.room_destroyed(room, self.rooms[room].epoch);
        }
        self.rooms.entry(room.to_owned()).or_insert(RoomMembers {
            epoch,
            ..RoomMembers::default()
        });
        fx
    }

    /// The live incarnation `epoch` of `room` was restored after a restart: its newest stored
    /// message is `newest` and this run numbers messages from `first` (the numbers between were
    /// reserved by the earlier run).
    pub fn room_restarted(&mut self, room: &str, epoch: u64, newest: u64, first: u64) {
        if let Some(r) = self.rooms.get_mut(room).filter(|r| r.epoch == epoch) {
            r.unused = (newest, first);
        }
    }

    /// The incarnation `epoch` of `room` is destroyed: its memberships end (each
    /// [`Effect::Left`] with [`Ended::Destroyed`]; the connections learn it from the room's
    /// end). A destruction of an incarnation that is no longer live changes nothing.
    pub fn room_destroyed(&mut self, room: &str, epoch: u64) -> Vec<Effect> {
        if self.rooms.get(room).is_none_or(|r| r.epoch != epoch) {
            return Vec::new();
        }
        let Some(members) = self.rooms.remove(room) else {
            return Vec::new();
        };
        let mut fx = Vec::new();
        let mut left = members.len();
        for user in members.by_join.values() {
            self.forget(user, room, epoch);
            left -= 1;
            fx.push(Effect::Left {
                room: room.to_owned(),
                epoch,
                user: user.clone(),
                how: Ended::Destroyed,
                members: left,
            });
        }
        fx
    }

    // ---- durable changes ----

    /// Submits a change whose effects wait for the store: returns [`Effect::Store`] with `ops`;
    /// [`Core::stored`] with its id releases (or drops) them.
    pub fn submit(&mut self, ops: Vec<Op>, after: After) -> Effect {
        let id = self.next_change;
        self.next_change += 1;
        self.pending.push_back((id, after));
        Effect::Store { id, ops }
    }

    /// The store took (`ok`) or refused change `id`: a taken change takes effect now, with the
    /// room's position from `point`; a refused one leaves everything as it was. The shell
    /// reports each change once, in the store's order.
    pub fn stored(
        &mut self,
        id: ChangeId,
        ok: bool,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Vec<Effect> {
        let Some(i) = self.pending.iter().position(|(c, _)| *c == id) else {
            return Vec::new();
        };
        let Some((_, after)) = self.pending.remove(i) else {
            return Vec::new();
        };
        if !ok {
            return Vec::new();
        }
        match after {
            After::Destroy { room, epoch } => self.room_destroyed(&room, epoch),
            After::Kick {
                room,
                epoch,
                users,
                reason,
            } => {
                if self.rooms.get(&room).is_none_or(|r| r.epoch != epoch) {
                    return Vec::new();
                }
                let at = point(&room);
                let mut fx = Vec::new();
                for u in &users {
                    fx.extend(self.end(&room, u, Ended::Kicked(reason), at, None));
                }
                fx
            }
        }
    }

    /// Changes submitted and not yet settled.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    // ---- connections ----

    /// A connection of `user` is up. Memberships the user kept offline move to it (subscribed
    /// with `Resumed{missed}`, the messages published while offline); memberships another of
    /// its connections still serves note its arrival, so it can take over from here.
    pub fn conn_up(
        &mut self,
        conn: ConnId,
        user: &str,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Vec<Effect> {
        self.conns.insert(conn, user.to_owned());
        let entry = self.users.entry(user.to_owned()).or_default();
        entry.conns.insert(conn);
        let rooms: Vec<(String, u64)> = entry.rooms.iter().map(|(r, e)| (r.clone(), *e)).collect();
        let mut fx = Vec::new();
        for (room, epoch) in rooms {
            let Some(r) = self.rooms.get_mut(&room).filter(|r| r.epoch == epoch) else {
                continue;
            };
            let Some(m) = r.members.get_mut(user) else {
                continue;
            };
            if m.conns.contains(&conn) {
                continue;
            }
            let at = point(&room);
            match m.offline.take() {
                Some((_, messages)) => {
                    m.conns.insert(conn);
                    fx.push(Effect::Subscribe {
                        conn,
                        room,
                        epoch,
                        at,
                        resumed: Some(at.messages.saturating_sub(messages)),
                    });
                }
                None => {
                    m.waiting.insert(conn, at.messages);
                }
            }
        }
        fx
    }

    /// A connection is down. A membership it served alone moves to the user's other live
    /// connections (each told what it missed since it arrived), or goes offline for the grace
    /// period (ends at once with no grace).
    pub fn conn_down(
        &mut self,
        now: u64,
        conn: ConnId,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Vec<Effect> {
        let Some(user) = self.conns.remove(&conn) else {
            return Vec::new();
        };
        let (live, rooms) = match self.users.get_mut(&user) {
            Some(u) => {
                u.conns.remove(&conn);
                let live: Vec<ConnId> = u.conns.iter().copied().collect();
                let rooms: Vec<(String, u64)> =
                    u.rooms.iter().map(|(r, e)| (r.clone(), *e)).collect();
                (live, rooms)
            }
            None => (Vec::new(), Vec::new()),
        };
        let mut fx = Vec::new();
        for (room, epoch) in rooms {
            let Some(r) = self.rooms.get_mut(&room).filter(|r| r.epoch == epoch) else {
                continue;
            };
            let Some(m) = r.members.get_mut(&user) else {
                continue;
            };
            m.waiting.remove(&conn);
            if !m.conns.remove(&conn) || !m.conns.is_empty() {
                continue;
            }
            let at = point(&room);
            if !live.is_empty() {
                for c in &live {
                    let since = m.waiting.remove(c).unwrap_or(at.messages);
                    m.conns.insert(*c);
                    fx.push(Effect::Subscribe {
                        conn: *c,
                        room: room.clone(),
                        epoch,
                        at,
                        resumed: Some(at.messages.saturating_sub(since)),
                    });
                }
            } else if self.cfg.offline_grace_ms > 0 {
                m.offline = Some((now, at.messages));
            } else {
                fx.extend(self.end(&room, &user, Ended::Gone, at, None));
            }
        }
        self.drop_user_if_unused(&user);
        fx
    }

    // ---- membership ----

    /// `conn` of `user` joins `room` at `now` (the shell checked bans and the room's state). In
    /// `single_room` mode the user's other memberships end first (`Kicked{single_room}`). The
    /// connection is subscribed unless it already was; [`Effect::Joined`] for a new member.
    pub fn join(
        &mut self,
        now: u64,
        conn: ConnId,
        user: &str,
        room: &str,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Result<Vec<Effect>, CoreError> {
        if self.conns.get(&conn).is_none_or(|u| u != user) {
            return Err(CoreError::NoConn(conn));
        }
        let Some(epoch) = self.rooms.get(room).map(|r| r.epoch) else {
            return Err(CoreError::NoRoom(room.to_owned()));
        };
        let member = self.is_member(room, user);
        let others: Vec<String> = self
            .users
            .get(user)
            .map(|u| u.rooms.keys().filter(|r| *r != room).cloned().collect())
            .unwrap_or_default();
        let kept = if self.cfg.single_room {
            0
        } else {
            others.len()
        };
        if !member && kept >= self.cfg.rooms_per_user {
            return Err(CoreError::TooManyRooms {
                user: user.to_owned(),
                n: kept,
            });
        }
        let mut fx = Vec::new();
        if self.cfg.single_room {
            for other in &others {
                let at = point(other);
                fx.extend(self.end(other, user, Ended::Kicked(KickReason::SingleRoom), at, None));
            }
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return Err(CoreError::NoRoom(room.to_owned()));
        };
        let at = point(room);
        let subscribed = match r.members.get_mut(user) {
            Some(m) => {
                m.offline = None;
                m.waiting.remove(&conn);
                !m.conns.insert(conn)
            }
            None => {
                let order = r.next_order;
                r.next_order += 1;
                r.by_join.insert(order, user.to_owned());
                r.members.insert(
                    user.to_owned(),
                    Member {
                        order,
                        joined_ms: now,
                        conns: BTreeSet::from([conn]),
                        offline: None,
                        waiting: BTreeMap::new(),
                    },
                );
                let members = r.members.len();
                self.users
                    .entry(user.to_owned())
                    .or_default()
                    .rooms
                    .insert(room.to_owned(), epoch);
                fx.push(Effect::Joined {
                    room: room.to_owned(),
                    epoch,
                    user: user.to_owned(),
                    members,
                });
                false
            }
        };
        if !subscribed {
            fx.push(Effect::Subscribe {
                conn,
                room: room.to_owned(),
                epoch,
                at,
                resumed: None,
            });
        }
        Ok(fx)
    }

    /// `conn` of `user` resumes its membership of the incarnation `epoch` of `room` (after a
    /// reconnect, here or on another relay): refused with [`CoreError::Destroyed`] when that
    /// incarnation is gone, else a [`Core::join`] (the same limits). The connection's
    /// [`Effect::Subscribe`] (none when it already serves the membership) is the shell's to
    /// place at the replay's start.
    pub fn resume(
        &mut self,
        now: u64,
        conn: ConnId,
        user: &str,
        room: &str,
        epoch: u64,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Result<Vec<Effect>, CoreError> {
        let live = self.rooms.get(room).map(|r| r.epoch);
        if live != Some(epoch) {
            return Err(CoreError::Destroyed {
                room: room.to_owned(),
                epoch,
                live,
            });
        }
        self.join(now, conn, user, room, point)
    }

    /// `user` leaves `room` from `conn`: that connection stops reading the room untold, the
    /// user's other connections get `Kicked{other_device}`.
    pub fn leave(
        &mut self,
        conn: ConnId,
        user: &str,
        room: &str,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Result<Vec<Effect>, CoreError> {
        if !self.is_member(room, user) {
            return Err(CoreError::NotInRoom {
                user: user.to_owned(),
                room: room.to_owned(),
            });
        }
        let at = point(room);
        Ok(self.end(room, user, Ended::Left, at, Some(conn)))
    }

    /// Removes `user` from `room` now, telling its connections `Kicked{reason}` after what was
    /// published before. Nothing when the user is not a member.
    pub fn kick(
        &mut self,
        room: &str,
        user: &str,
        reason: KickReason,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Vec<Effect> {
        if !self.is_member(room, user) {
            return Vec::new();
        }
        let at = point(room);
        self.end(room, user, Ended::Kicked(reason), at, None)
    }

    /// The timer pass of `room` at `now`: members offline past the grace (unless `keeps` says
    /// the user is on the room's whitelist) are removed with `Kicked{offline}`.
    pub fn tick(
        &mut self,
        now: u64,
        room: &str,
        keeps: &dyn Fn(&str) -> bool,
        point: &mut dyn FnMut(&str) -> JoinPoint,
    ) -> Vec<Effect> {
        let grace = self.cfg.offline_grace_ms;
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let gone: Vec<String> = r
            .members
            .iter()
            .filter(|(u, m)| {
                m.offline.is_some_and(|(since, _)| {
                    crate::policy::offline_due(since, grace, keeps(u), now)
                })
            })
            .map(|(u, _)| u.clone())
            .collect();
        let mut fx = Vec::new();
        for u in gone {
            let at = point(room);
            fx.extend(self.end(room, &u, Ended::Kicked(KickReason::Offline), at, None));
        }
        fx
    }

    /// Ends `user`'s membership of `room` at `until`: every subscribed connection is
    /// unsubscribed (`asked`, the one that left, untold; the others told per `how`).
    fn end(
        &mut self,
        room: &str,
        user: &str,
        how: Ended,
        until: JoinPoint,
        asked: Option<ConnId>,
    ) -> Vec<Effect> {
        let Some(r) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        let epoch = r.epoch;
        let Some(m) = r.remove(user) else {
            return Vec::new();
        };
        let members = r.members.len();
        self.forget(user, room, epoch);
        let told = match how {
            Ended::Left => Some(KickReason::OtherDevice),
            Ended::Kicked(k) => Some(k),
            Ended::Gone | Ended::Destroyed => None,
        };
        let mut fx: Vec<Effect> = m
            .conns
            .iter()
            .map(|c| Effect::Unsubscribe {
                conn: *c,
                room: room.to_owned(),
                epoch,
                kicked: if Some(*c) == asked { None } else { told },
                until,
            })
            .collect();
        fx.push(Effect::Left {
            room: room.to_owned(),
            epoch,
            user: user.to_owned(),
            how,
            members,
        });
        fx
    }

    /// Forgets `user`'s membership of the incarnation `epoch` of `room` (a later incarnation's
    /// membership stays).
    fn forget(&mut self, user: &str, room: &str, epoch: u64) {
        if let Some(u) = self.users.get_mut(user)
            && u.rooms.get(room) == Some(&epoch)
        {
            u.rooms.remove(room);
        }
        self.drop_user_if_unused(user);
    }

    fn drop_user_if_unused(&mut self, user: &str) {
        if self
            .users
            .get(user)
            .is_some_and(|u| u.conns.is_empty() && u.rooms.is_empty())
        {
            self.users.remove(user);
        }
    }

    /// Checks that the registry and the rooms agree (every membership is in its user's list
    /// with its room's epoch, and the reverse; every subscribed connection is live and the
    /// user's; the room limit holds); the first disagreement, in words.
    pub fn check(&self) -> Result<(), String> {
        for (id, r) in &self.rooms {
            for (u, m) in &r.members {
                let entry = self
                    .users
                    .get(u)
                    .ok_or(format!("{u} in {id} has no entry"))?;
                if entry.rooms.get(id) != Some(&r.epoch) {
                    return Err(format!("{u} in {id}@{} not in its list", r.epoch));
                }
                for c in m.conns.iter().chain(m.waiting.keys()) {
                    if !entry.conns.contains(c) {
                        return Err(format!("{u} in {id} holds conn {c}, not live"));
                    }
                }
                if !m.conns.is_empty() && m.offline.is_some() {
                    return Err(format!("{u} in {id} is offline with connections"));
                }
            }
        }
        for (u, entry) in &self.users {
            let limit = if self.cfg.single_room {
                1
            } else {
                self.cfg.rooms_per_user
            };
            if entry.rooms.len() > limit {
                return Err(format!("{u} is in {} rooms", entry.rooms.len()));
            }
            for (id, epoch) in &entry.rooms {
                if self
                    .rooms
                    .get(id)
                    .is_none_or(|r| r.epoch != *epoch || !r.members.contains_key(u))
                {
                    return Err(format!("{u} lists {id}@{epoch}, not a member"));
                }
            }
            for c in &entry.conns {
                if self.conns.get(c) != Some(u) {
                    return Err(format!("{u} lists conn {c}, not its own"));
                }
            }
        }
        Ok(())
    }
}

/// How many messages a resume from `from` (the newest `seq` the client received) cannot
/// replay: the sequence numbers in `from < seq < below` (`below`: the first number the ring
/// replays from, at most the room's newest `newest` + 1) that are not among the `replayed`
/// messages from history, less those `unused` says no message has (see
/// [`RoomMembers::unused`]). Within one run of the relay every number below the newest is a
/// message (low-priority ones are not stored, so they count here), so the count is exact.
pub fn resume_missed(from: u64, below: u64, newest: u64, replayed: u64, unused: (u64, u64)) -> u64 {
    let hi = below.min(newest.saturating_add(1));
    if hi <= from.saturating_add(1) {
        return 0;
    }
    let span = hi - from - 1;
    // Numbers strictly between unused.0 and unused.1, within from < seq < hi.
    let lo_u = unused.0.max(from).saturating_add(1);
    let hi_u = unused.1.min(hi);
    let never = hi_u.saturating_sub(lo_u);
    span.saturating_sub(replayed).saturating_sub(never)
}

#[cfg(test)]
#[path = "core_tests.rs"]
pub(crate) mod tests;
