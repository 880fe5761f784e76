//! Admin operations on room policy: lifecycle settings, bans, mutes, mute-all, whitelists, global
//! lists. Each checks every limit before it changes anything, so a refused call changes nothing;
//! each is a durable change (see [`super::durable`]): stored first, then applied, with its
//! notices and kicks only after that.

use super::data::remove_attr;
use super::durable::NOT_MADE;
use super::relay::{Durable, Relay, now_ms};
use crate::policy::{self, DestroyPolicy, GlobalPolicy, MAX_TYPES, MAX_USERS_PER_CALL, Moderation};
use crate::protocol::{ErrorCode, Event, KickReason, WireError};
use crate::room::{Room, RoomState, validate_id};
use crate::store::Op;
use std::collections::BTreeSet;
use std::sync::Arc;

fn bad(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::BadRequest, msg)
}

/// A room as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RoomAdminView {
    /// Room id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Changes every time the room is created anew.
    pub epoch: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Members now.
    pub member_count: u64,
    /// How the room ends by itself.
    pub destroy_policy: DestroyPolicy,
    /// Scheduled destroy time, ms since the Unix epoch.
    pub destroy_at_ms: Option<u64>,
    /// On the keepalive list.
    pub keepalive: bool,
    /// Whether mute-all is on.
    pub mute_all: bool,
    /// Whether members get join/leave events.
    pub member_events: bool,
    /// Last join, leave or message, ms since the Unix epoch.
    pub last_activity_ms: u64,
}

/// A user with an expiry.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UserUntil {
    /// User id.
    pub user_id: String,
    /// When it ends, ms since the Unix epoch.
    pub until_ms: u64,
}

/// A room's ban list or mute list.
#[derive(Debug, Clone, Copy)]
enum Listed {
    Ban,
    Mute,
}

/// Which app-wide message-type list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeList {
    /// Always protected.
    Whitelist,
    /// Always low priority.
    LowPriority,
}

impl Relay {
    /// The admin view of a room.
    pub fn room_admin_view(&self, id: &str) -> Result<RoomAdminView, WireError> {
        let room = self.room(id)?;
        Ok(self.admin_view_of(&room))
    }

    pub(crate) fn admin_view_of(&self, room: &Room) -> RoomAdminView {
        let keepalive = self.global().keepalive.contains(&room.id);
        let st = room.state();
        RoomAdminView {
            id: room.id.clone(),
            name: room.name.clone(),
            epoch: room.epoch,
            created_ms: room.created_ms,
            member_count: self.member_count(room) as u64,
            destroy_policy: st.policy,
            destroy_at_ms: st.destroy_at_ms,
            keepalive,
            mute_all: st.moderation.mute_all,
            member_events: st.member_events,
            last_activity_ms: st.last_activity_ms,
        }
    }

    /// Changes how a room ends by itself; takes effect at the next timer tick.
    pub fn set_destroy_policy(
        self: &Arc<Self>,
        id: &str,
        policy: DestroyPolicy,
    ) -> Result<Durable<()>, WireError> {
        policy.validate()?;
        self.settings_change(id, move |s| {
            s.policy = policy;
            Ok(())
        })
    }

    /// Schedules (or with `None` cancels) a room's destruction at `at_ms`.
    pub fn set_destroy_at(
        self: &Arc<Self>,
        id: &str,
        at_ms: Option<u64>,
    ) -> Result<Durable<()>, WireError> {
        if let Some(at) = at_ms
            && at <= now_ms()
        {
            self.room(id)?;
            return Err(bad(format!(
                "at must be in the future (ms since the Unix epoch), got {at}"
            )));
        }
        self.settings_change(id, move |s| {
            s.destroy_at_ms = at_ms;
            Ok(())
        })
    }

    /// Puts a room on, or takes it off, the keepalive list.
    pub fn set_keepalive(self: &Arc<Self>, id: &str, on: bool) -> Result<Durable<()>, WireError> {
        let room = self.room(id)?;
        self.check_writable()?;
        let relay = self.clone();
        Ok(Durable::later(async move {
            // The room's lock first: its destruction takes it off the list under the same lock.
            let _room_locked = relay.lock_room(&room).await?;
            let id = room.id.clone();
            relay
                .global_change(
                    move |g| {
                        match on {
                            true => g.keepalive.insert(id.clone()),
                            false => g.keepalive.remove(&id),
                        };
                        Ok(())
                    },
                    |_, _| {},
                )
                .await
        }))
    }

    /// The keepalive list.
    pub fn keepalive_list(&self) -> Vec<String> {
        self.global().keepalive.iter().cloned().collect()
    }

    /// Bans users for `minutes`: present ones are removed at once with `Kicked{banned}` (and
    /// their auto-delete attributes with them, in the same transaction).
    pub fn ban(
        self: &Arc<Self>,
        id: &str,
        users: &[String],
        minutes: u32,
        notify: bool,
    ) -> Result<Durable<u64>, WireError> {
        policy::check_users(users)?;
        let dur = policy::check_minutes(minutes)?;
        let banned = users.to_vec();
        let told = users.to_vec();
        let s_relay = self.clone();
        let durable = self.room_change(
            id,
            move |s, room, st, ops| {
                let until = now_ms() + dur;
                for u in &banned {
                    s.moderation.bans.insert(u.clone(), until);
                }
                let doomed: Vec<String> = st
                    .attrs
                    .iter()
                    .filter(|(_, a)| {
                        a.auto_delete
                            && banned.contains(&a.owner)
                            && s_relay.is_member(room, &a.owner)
                    })
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in &doomed {
                    ops.push(Op::DeleteAttr {
                        room: room.id.clone(),
                        key: key.clone(),
                    });
                }
                s.attr_version += doomed.len() as u64;
                Ok((until, doomed))
            },
            move |relay, room, st, (until, doomed)| {
                let now = now_ms();
                for u in &told {
                    relay.remove_member(room, st, u, KickReason::Banned, now);
                }
                for key in doomed {
                    if st.attrs.contains_key(key) {
                        remove_attr(room, st, key.clone(), true, now);
                    }
                }
                for u in &told {
                    if !st.attrs.values().any(|a| a.auto_delete && &a.owner == u) {
                        st.departed.remove(u);
                    }
                }
                let event = Event::Banned {
                    room: room.id.clone(),
                    users: told.clone(),
                    until_ms: *until,
                };
                relay.notify(room, st, &told, &event, notify);
            },
        )?;
        Ok(Durable::later(async move {
            durable.wait().await.map(|(until, _)| until)
        }))
    }

    /// Lifts a ban.
    pub fn unban(
        self: &Arc<Self>,
        id: &str,
        user: &str,
        notify: bool,
    ) -> Result<Durable<()>, WireError> {
        self.lift(id, user, notify, Listed::Ban)
    }

    /// Live bans of a room.
    pub fn bans(&self, id: &str) -> Result<Vec<UserUntil>, WireError> {
        self.listed(id, Listed::Ban)
    }

    /// Mutes members for `minutes`; the mute outlives leaving the room.
    pub fn mute(
        self: &Arc<Self>,
        id: &str,
        users: &[String],
        minutes: u32,
        notify: bool,
    ) -> Result<Durable<u64>, WireError> {
        policy::check_users(users)?;
        let dur = policy::check_minutes(minutes)?;
        let muted = users.to_vec();
        self.room_change(
            id,
            {
                let muted = muted.clone();
                move |s, _, _, _| {
                    let until = now_ms() + dur;
                    for u in &muted {
                        s.moderation.mutes.insert(u.clone(), until);
                    }
                    Ok(until)
                }
            },
            move |relay, room, st, until| {
                let event = Event::Muted {
                    room: room.id.clone(),
                    users: muted.clone(),
                    until_ms: *until,
                };
                relay.notify(room, st, &muted, &event, notify);
            },
        )
    }

    /// Lifts a member mute.
    pub fn unmute(
        self: &Arc<Self>,
        id: &str,
        user: &str,
        notify: bool,
    ) -> Result<Durable<()>, WireError> {
        self.lift(id, user, notify, Listed::Mute)
    }

    /// Live member mutes of a room.
    pub fn mutes(&self, id: &str) -> Result<Vec<UserUntil>, WireError> {
        self.listed(id, Listed::Mute)
    }

    /// Takes `user` off a room's ban or mute list; the user (and with `notify` the room) is told.
    fn lift(
        self: &Arc<Self>,
        id: &str,
        user: &str,
        notify: bool,
        which: Listed,
    ) -> Result<Durable<()>, WireError> {
        validate_id("user id", user)?;
        let user = user.to_owned();
        let room_id = id.to_owned();
        let users = vec![user.clone()];
        self.room_change(
            id,
            move |s, _, _, _| {
                let list = match which {
                    Listed::Ban => &mut s.moderation.bans,
                    Listed::Mute => &mut s.moderation.mutes,
                };
                if list.remove(&user).is_none() {
                    let what = match which {
                        Listed::Ban => "banned from",
                        Listed::Mute => "muted in",
                    };
                    return Err(bad(format!("user {user:?} is not {what} room {room_id:?}")));
                }
                Ok(())
            },
            move |relay, room, st, _| {
                let event = match which {
                    Listed::Ban => Event::Unbanned {
                        room: room.id.clone(),
                        users: users.clone(),
                    },
                    Listed::Mute => Event::Unmuted {
                        room: room.id.clone(),
                        users: users.clone(),
                    },
                };
                relay.notify(room, st, &users, &event, notify);
            },
        )
    }

    fn listed(&self, id: &str, which: Listed) -> Result<Vec<UserUntil>, WireError> {
        let room = self.room(id)?;
        let now = now_ms();
        let st = room.state();
        Ok(match which {
            Listed::Ban => live(&st.moderation.bans, now),
            Listed::Mute => live(&st.moderation.mutes, now),
        })
    }

    /// Turns mute-all on or off; every member is affected, so the room is always told.
    pub fn set_mute_all(self: &Arc<Self>, id: &str, on: bool) -> Result<Durable<()>, WireError> {
        self.room_change(
            id,
            move |s, _, _, _| {
                let changed = s.moderation.mute_all != on;
                s.moderation.mute_all = on;
                Ok(changed)
            },
            move |_, room, _, changed| {
                if *changed {
                    let event = match on {
                        true => Event::MuteAll {
                            room: room.id.clone(),
                        },
                        false => Event::MuteAllLifted {
                            room: room.id.clone(),
                        },
                    };
                    room.publish_event(&event, now_ms());
                }
            },
        )
        .map(|d| Durable::later(async move { d.wait().await.map(|_| ()) }))
    }

    /// Adds users to a room's mute-all whitelist or user whitelist (each holds at most 20).
    pub fn whitelist_add(
        self: &Arc<Self>,
        id: &str,
        users: &[String],
        mute_all: bool,
    ) -> Result<Durable<()>, WireError> {
        policy::check_users(users)?;
        let users = users.to_vec();
        self.settings_change(id, move |s| {
                let list = match mute_all {
                    true => &mut s.moderation.mute_all_whitelist,
                    false => &mut s.moderation.user_whitelist,
                };
                let after: BTreeSet<&String> = list.iter().chain(&users).collect();
                if after.len() > MAX_USERS_PER_CALL {
                    return Err(bad(format!(
                        "the {} of a room holds at most {MAX_USERS_PER_CALL} users; it has {} and {} more were asked",
                        if mute_all {
                            "mute-all whitelist"
                        } else {
                            "user whitelist"
                        },
                        list.len(),
                        after.len() - list.len()
                    )));
                }
                list.extend(users);
                Ok(())
        })
    }

    /// Removes a user from a room whitelist.
    pub fn whitelist_remove(
        self: &Arc<Self>,
        id: &str,
        user: &str,
        mute_all: bool,
    ) -> Result<Durable<()>, WireError> {
        validate_id("user id", user)?;
        let user = user.to_owned();
        self.settings_change(id, move |s| {
            let list = match mute_all {
                true => &mut s.moderation.mute_all_whitelist,
                false => &mut s.moderation.user_whitelist,
            };
            if !list.remove(&user) {
                return Err(bad(format!("user {user:?} is not on that whitelist")));
            }
            Ok(())
        })
    }

    /// A room whitelist.
    pub fn whitelist(&self, id: &str, mute_all: bool) -> Result<Vec<String>, WireError> {
        let room = self.room(id)?;
        let st = room.state();
        let list = if mute_all {
            &st.moderation.mute_all_whitelist
        } else {
            &st.moderation.user_whitelist
        };
        Ok(list.iter().cloned().collect())
    }

    /// Mutes users in every room for `minutes`; each is told.
    pub fn global_mute(
        self: &Arc<Self>,
        users: &[String],
        minutes: u32,
    ) -> Result<Durable<u64>, WireError> {
        policy::check_users(users)?;
        let dur = policy::check_minutes(minutes)?;
        self.check_writable()?;
        let users = users.to_vec();
        let relay = self.clone();
        Ok(Durable::later(async move {
            let muted = users.clone();
            relay
                .global_change(
                    move |g| {
                        let until = now_ms() + dur;
                        for u in &muted {
                            g.global_mutes.insert(u.clone(), until);
                        }
                        Ok(until)
                    },
                    move |relay, until| {
                        for u in &users {
                            relay.tell_user(
                                u,
                                &Event::Muted {
                                    room: String::new(),
                                    users: vec![u.clone()],
                                    until_ms: *until,
                                },
                            );
                        }
                    },
                )
                .await
        }))
    }

    /// Lifts a global mute; the user is told.
    pub fn global_unmute(self: &Arc<Self>, user: &str) -> Result<Durable<()>, WireError> {
        validate_id("user id", user)?;
        if !self.global().global_mutes.contains_key(user) {
            return Err(bad(format!("user {user:?} is not globally muted")));
        }
        self.check_writable()?;
        let user = user.to_owned();
        let relay = self.clone();
        Ok(Durable::later(async move {
            let lifted = user.clone();
            relay
                .global_change(
                    move |g| match g.global_mutes.remove(&lifted) {
                        Some(_) => Ok(()),
                        None => Err(bad(format!("user {lifted:?} is not globally muted"))),
                    },
                    move |relay, _| {
                        relay.tell_user(
                            &user,
                            &Event::Unmuted {
                                room: String::new(),
                                users: vec![user.clone()],
                            },
                        );
                    },
                )
                .await
        }))
    }

    /// Live global mutes.
    pub fn global_mutes(&self) -> Vec<UserUntil> {
        live(&self.global().global_mutes, now_ms())
    }

    /// Adds message types to an app-wide list (each holds at most 20).
    pub fn types_add(
        self: &Arc<Self>,
        which: TypeList,
        types: &[String],
    ) -> Result<Durable<()>, WireError> {
        if types.is_empty() || types.len() > MAX_TYPES {
            return Err(bad(format!(
                "types must hold 1..={MAX_TYPES} message types, got {}",
                types.len()
            )));
        }
        for t in types {
            crate::room::validate_msg_type(t)?;
        }
        self.check_writable()?;
        let types = types.to_vec();
        let relay = self.clone();
        Ok(Durable::later(async move {
            relay
                .global_change(
                    move |g| {
                        let list = type_list(g, which);
                        let after: BTreeSet<&String> = list.iter().chain(&types).collect();
                        if after.len() > MAX_TYPES {
                            return Err(bad(format!(
                                "a message-type list holds at most {MAX_TYPES} types; it has {} and {} more were asked",
                                list.len(),
                                after.len() - list.len()
                            )));
                        }
                        list.extend(types.iter().cloned());
                        Ok(())
                    },
                    |_, _| {},
                )
                .await
        }))
    }

    /// Removes a message type from an app-wide list.
    pub fn types_remove(
        self: &Arc<Self>,
        which: TypeList,
        t: &str,
    ) -> Result<Durable<()>, WireError> {
        let listed = match which {
            TypeList::Whitelist => self.global().type_whitelist.contains(t),
            TypeList::LowPriority => self.global().low_types.contains(t),
        };
        if !listed {
            return Err(bad(format!("type {t:?} is not on that list")));
        }
        self.check_writable()?;
        let t = t.to_owned();
        let relay = self.clone();
        Ok(Durable::later(async move {
            relay
                .global_change(
                    move |g| match type_list(g, which).remove(&t) {
                        true => Ok(()),
                        false => Err(bad(format!("type {t:?} is not on that list"))),
                    },
                    |_, _| {},
                )
                .await
        }))
    }

    /// An app-wide message-type list.
    pub fn types(&self, which: TypeList) -> Vec<String> {
        let g = self.global();
        match which {
            TypeList::Whitelist => g.type_whitelist.iter().cloned().collect(),
            TypeList::LowPriority => g.low_types.iter().cloned().collect(),
        }
    }

    /// Tells the room (when `notify`) and always the affected users who would not hear it there
    /// (state locked: published and checked under one lock, so a target that leaves or joins
    /// meanwhile gets the notice once, from the room or directly).
    fn notify(&self, room: &Room, st: &RoomState, users: &[String], event: &Event, notify: bool) {
        let _ = st;
        // Published and checked under the core's lock: no membership of the room begins or
        // ends in between.
        let direct: Vec<&String> = {
            let core = self.core();
            if notify {
                room.publish_event(event, now_ms());
            }
            let live = core.room(&room.id).filter(|r| r.epoch == room.epoch);
            users
                .iter()
                .filter(|u| !(notify && live.is_some_and(|r| r.member(u).is_some())))
                .collect()
        };
        for u in direct {
            self.tell_user(u, event);
        }
    }

    /// A change of room `id`'s settings that nobody is told about (see [`Relay::room_change`]).
    fn settings_change(
        self: &Arc<Self>,
        id: &str,
        change: impl FnOnce(&mut Settings) -> Result<(), WireError> + Send + 'static,
    ) -> Result<Durable<()>, WireError> {
        self.room_change(id, move |s, _, _, _| change(s), |_, _, _, _| {})
    }

    /// A durable change of room `id`'s settings (see [`super::durable`]): under the room's change
    /// lock, `change` edits a copy of its settings (given the room, its state, and store ops to
    /// add before the room's record) or refuses; once the record with the copy is durable, the copy replaces
    /// the settings in memory and `effects` makes the change visible, under the room's lock.
    fn room_change<T, C, E>(
        self: &Arc<Self>,
        id: &str,
        change: C,
        effects: E,
    ) -> Result<Durable<T>, WireError>
    where
        T: Send + 'static,
        C: FnOnce(&mut Settings, &Room, &RoomState, &mut Vec<Op>) -> Result<T, WireError>
            + Send
            + 'static,
        E: FnOnce(&Relay, &Room, &mut RoomState, &T) + Send + 'static,
    {
        let room = self.room(id)?;
        self.check_writable()?;
        let relay = self.clone();
        Ok(Durable::later(async move {
            let guard = relay.lock_room(&room).await?;
            let (value, settings, ops) = {
                let st = room.state();
                let mut settings = Settings {
                    policy: st.policy,
                    destroy_at_ms: st.destroy_at_ms,
                    moderation: st.moderation.clone(),
                    attr_version: st.attr_version,
                };
                let mut ops = Vec::new();
                let value = change(&mut settings, &room, &st, &mut ops)?;
                let mut record = room.record(&st);
                record.policy = settings.policy;
                record.destroy_at_ms = settings.destroy_at_ms;
                record.moderation = settings.moderation.clone();
                record.attr_version = settings.attr_version;
                ops.push(Op::PutRoom(record));
                (value, settings, ops)
            };
            let target = room.clone();
            let applier = relay.clone();
            relay
                .commit(NOT_MADE, ops, move |ok| {
                    let _locked = guard;
                    if !ok {
                        return None;
                    }
                    let mut st = target.state();
                    st.policy = settings.policy;
                    st.destroy_at_ms = settings.destroy_at_ms;
                    st.moderation = settings.moderation;
                    effects(&applier, &target, &mut st, &value);
                    Some(value)
                })
                .await
        }))
    }

    /// A durable change of the app-wide lists: under their change lock, `change` edits a copy or
    /// refuses; once the copy is durable it replaces the lists in memory, then `effects` runs.
    ///
    /// In cluster mode any relay writes the lists, so the store's fence refuses a write made on
    /// a stale copy (another relay wrote them since): the lists are then read again from the
    /// store and `change` is decided anew on them, up to [`GLOBAL_TRIES`] times. Each of two
    /// relays changing them at once thus gets the answer true of the lists it changed.
    async fn global_change<T, C, E>(
        self: &Arc<Self>,
        mut change: C,
        effects: E,
    ) -> Result<T, WireError>
    where
        T: Send + 'static,
        C: FnMut(&mut GlobalPolicy) -> Result<T, WireError>,
        E: FnOnce(&Relay, &T) + Send + 'static,
    {
        let effects = Arc::new(std::sync::Mutex::new(Some(effects)));
        let mut tries = 0;
        loop {
            tries += 1;
            let guard = self.lock_global().await;
            let mut global = self.global().clone();
            let value = change(&mut global)?;
            let ops = vec![Op::PutGlobal(global.clone())];
            let relay = self.clone();
            let effects = effects.clone();
            let outcome = self
                .commit_or_fenced(NOT_MADE, ops, move |ok| {
                    let _locked = guard;
                    if !ok {
                        return None;
                    }
                    *relay.global_mut() = global;
                    let effects = effects.lock().unwrap_or_else(|p| p.into_inner()).take();
                    if let Some(effects) = effects {
                        effects(&relay, &value);
                    }
                    Some(value)
                })
                .await;
            match outcome {
                Ok(value) => return Ok(value),
                Err((_, true)) if tries < GLOBAL_TRIES => self.reload_global().await?,
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Reads the app-wide lists again from the shared store (another relay wrote them), so the
    /// next write of them expects what is there now.
    pub(crate) async fn reload_global(self: &Arc<Self>) -> Result<(), WireError> {
        let _locked = self.lock_global().await;
        let store = self.store().clone();
        let loaded = tokio::task::spawn_blocking(move || store.reload_global())
            .await
            .map_err(|e| {
                WireError::new(
                    ErrorCode::Unavailable,
                    format!("reading the app-wide lists: {e}; {NOT_MADE}"),
                )
            })?
            .map_err(|e| super::durable::unavailable(NOT_MADE, &e))?;
        *self.global_mut() = loaded;
        Ok(())
    }
}

/// Tries of a change of the app-wide lists that other relays' writes keep fencing.
const GLOBAL_TRIES: u32 = 5;

/// The durable settings of a room that the admin changes, as a copy to edit.
pub(crate) struct Settings {
    /// How the room ends by itself.
    pub policy: DestroyPolicy,
    /// Scheduled destroy time.
    pub destroy_at_ms: Option<u64>,
    /// Bans, mutes, mute-all, whitelists.
    pub moderation: Moderation,
    /// The attribute version the record is stored with.
    pub attr_version: u64,
}

/// One of the app-wide message-type lists.
fn type_list(g: &mut GlobalPolicy, which: TypeList) -> &mut BTreeSet<String> {
    match which {
        TypeList::Whitelist => &mut g.type_whitelist,
        TypeList::LowPriority => &mut g.low_types,
    }
}

fn live(map: &std::collections::BTreeMap<String, u64>, now: u64) -> Vec<UserUntil> {
    map.iter()
        .filter(|(_, until)| now < **until)
        .map(|(u, until)| UserUntil {
            user_id: u.clone(),
            until_ms: *until,
        })
        .collect()
}
