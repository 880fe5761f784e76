//! Admin operations on room policy: lifecycle settings, bans, mutes, mute-all, whitelists, global
//! lists. Each checks every limit before it changes anything, so a refused call changes nothing.

use super::relay::{Durable, Relay, now_ms};
use crate::policy::{self, DestroyPolicy, MAX_TYPES, MAX_USERS_PER_CALL};
use crate::protocol::{ErrorCode, Event, KickReason, WireError};
use crate::room::{Room, validate_id};
use crate::store::Op;
use std::collections::BTreeSet;

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
            member_count: st.len() as u64,
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
        &self,
        id: &str,
        policy: DestroyPolicy,
    ) -> Result<Durable<()>, WireError> {
        policy.validate()?;
        let room = self.room(id)?;
        let mut st = room.state();
        st.policy = policy;
        Ok(self.save_room(&room, &st))
    }

    /// Persists a room's record (state locked, so records reach the store in change order).
    pub(crate) fn save_room(&self, room: &Room, st: &crate::room::RoomState) -> Durable<()> {
        Durable {
            value: (),
            ack: self.persist(vec![Op::PutRoom(room.record(st))]),
        }
    }

    fn save_global(&self) -> Durable<()> {
        Durable {
            value: (),
            ack: self.persist_global(),
        }
    }

    /// Schedules (or with `None` cancels) a room's destruction at `at_ms`.
    pub fn set_destroy_at(&self, id: &str, at_ms: Option<u64>) -> Result<Durable<()>, WireError> {
        let room = self.room(id)?;
        if let Some(at) = at_ms
            && at <= now_ms()
        {
            return Err(bad(format!(
                "at must be in the future (ms since the Unix epoch), got {at}"
            )));
        }
        let mut st = room.state();
        st.destroy_at_ms = at_ms;
        Ok(self.save_room(&room, &st))
    }

    /// Puts a room on, or takes it off, the keepalive list.
    pub fn set_keepalive(&self, id: &str, on: bool) -> Result<Durable<()>, WireError> {
        self.room(id)?;
        {
            let mut g = self.global_mut();
            if on {
                g.keepalive.insert(id.to_owned());
            } else {
                g.keepalive.remove(id);
            }
        }
        Ok(self.save_global())
    }

    /// The keepalive list.
    pub fn keepalive_list(&self) -> Vec<String> {
        self.global().keepalive.iter().cloned().collect()
    }

    /// Bans users for `minutes`: present ones are removed at once with `Kicked{banned}`.
    pub fn ban(
        &self,
        id: &str,
        users: &[String],
        minutes: u32,
        notify: bool,
    ) -> Result<Durable<u64>, WireError> {
        policy::check_users(users)?;
        let dur = policy::check_minutes(minutes)?;
        let room = self.room(id)?;
        let now = now_ms();
        let until = now + dur;
        let saved = {
            let mut st = room.state();
            for u in users {
                st.moderation.bans.insert(u.clone(), until);
                self.remove_member(&room, &mut st, u, Some(KickReason::Banned), now);
            }
            self.save_room(&room, &st)
        };
        let event = Event::Banned {
            room: id.to_owned(),
            users: users.to_vec(),
            until_ms: until,
        };
        self.notify(&room, users, &event, notify);
        Ok(Durable {
            value: until,
            ack: saved.ack,
        })
    }

    /// Lifts a ban.
    pub fn unban(&self, id: &str, user: &str, notify: bool) -> Result<Durable<()>, WireError> {
        self.lift(id, user, notify, Listed::Ban)
    }

    /// Live bans of a room.
    pub fn bans(&self, id: &str) -> Result<Vec<UserUntil>, WireError> {
        self.listed(id, Listed::Ban)
    }

    /// Mutes members for `minutes`; the mute outlives leaving the room.
    pub fn mute(
        &self,
        id: &str,
        users: &[String],
        minutes: u32,
        notify: bool,
    ) -> Result<Durable<u64>, WireError> {
        policy::check_users(users)?;
        let dur = policy::check_minutes(minutes)?;
        let room = self.room(id)?;
        let until = now_ms() + dur;
        let saved = {
            let mut st = room.state();
            for u in users {
                st.moderation.mutes.insert(u.clone(), until);
            }
            self.save_room(&room, &st)
        };
        let event = Event::Muted {
            room: id.to_owned(),
            users: users.to_vec(),
            until_ms: until,
        };
        self.notify(&room, users, &event, notify);
        Ok(Durable {
            value: until,
            ack: saved.ack,
        })
    }

    /// Lifts a member mute.
    pub fn unmute(&self, id: &str, user: &str, notify: bool) -> Result<Durable<()>, WireError> {
        self.lift(id, user, notify, Listed::Mute)
    }

    /// Live member mutes of a room.
    pub fn mutes(&self, id: &str) -> Result<Vec<UserUntil>, WireError> {
        self.listed(id, Listed::Mute)
    }

    /// Takes `user` off a room's ban or mute list; the user (and with `notify` the room) is told.
    fn lift(
        &self,
        id: &str,
        user: &str,
        notify: bool,
        which: Listed,
    ) -> Result<Durable<()>, WireError> {
        validate_id("user id", user)?;
        let room = self.room(id)?;
        let saved = {
            let mut st = room.state();
            let list = match which {
                Listed::Ban => &mut st.moderation.bans,
                Listed::Mute => &mut st.moderation.mutes,
            };
            if list.remove(user).is_none() {
                let what = match which {
                    Listed::Ban => "banned from",
                    Listed::Mute => "muted in",
                };
                return Err(bad(format!("user {user:?} is not {what} room {id:?}")));
            }
            self.save_room(&room, &st)
        };
        let users = vec![user.to_owned()];
        let event = match which {
            Listed::Ban => Event::Unbanned {
                room: id.to_owned(),
                users: users.clone(),
            },
            Listed::Mute => Event::Unmuted {
                room: id.to_owned(),
                users: users.clone(),
            },
        };
        self.notify(&room, &users, &event, notify);
        Ok(saved)
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
    pub fn set_mute_all(&self, id: &str, on: bool) -> Result<Durable<()>, WireError> {
        let room = self.room(id)?;
        let (changed, saved) = {
            let mut st = room.state();
            let changed = st.moderation.mute_all != on;
            st.moderation.mute_all = on;
            (changed, self.save_room(&room, &st))
        };
        if changed {
            let event = if on {
                Event::MuteAll {
                    room: id.to_owned(),
                }
            } else {
                Event::MuteAllLifted {
                    room: id.to_owned(),
                }
            };
            room.publish_event(&event, now_ms());
        }
        Ok(saved)
    }

    /// Adds users to a room's mute-all whitelist or user whitelist (each holds at most 20).
    pub fn whitelist_add(
        &self,
        id: &str,
        users: &[String],
        mute_all: bool,
    ) -> Result<Durable<()>, WireError> {
        policy::check_users(users)?;
        let room = self.room(id)?;
        let mut st = room.state();
        let list = if mute_all {
            &mut st.moderation.mute_all_whitelist
        } else {
            &mut st.moderation.user_whitelist
        };
        let after: BTreeSet<&String> = list.iter().chain(users).collect();
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
        list.extend(users.iter().cloned());
        Ok(self.save_room(&room, &st))
    }

    /// Removes a user from a room whitelist.
    pub fn whitelist_remove(
        &self,
        id: &str,
        user: &str,
        mute_all: bool,
    ) -> Result<Durable<()>, WireError> {
        validate_id("user id", user)?;
        let room = self.room(id)?;
        let mut st = room.state();
        let list = if mute_all {
            &mut st.moderation.mute_all_whitelist
        } else {
            &mut st.moderation.user_whitelist
        };
        if !list.remove(user) {
            return Err(bad(format!("user {user:?} is not on that whitelist")));
        }
        Ok(self.save_room(&room, &st))
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
    pub fn global_mute(&self, users: &[String], minutes: u32) -> Result<Durable<u64>, WireError> {
        policy::check_users(users)?;
        let dur = policy::check_minutes(minutes)?;
        let until = now_ms() + dur;
        {
            let mut g = self.global_mut();
            for u in users {
                g.global_mutes.insert(u.clone(), until);
            }
        }
        let saved = self.save_global();
        for u in users {
            self.tell_user(
                u,
                &Event::Muted {
                    room: String::new(),
                    users: vec![u.clone()],
                    until_ms: until,
                },
            );
        }
        Ok(Durable {
            value: until,
            ack: saved.ack,
        })
    }

    /// Lifts a global mute; the user is told.
    pub fn global_unmute(&self, user: &str) -> Result<Durable<()>, WireError> {
        validate_id("user id", user)?;
        if self.global_mut().global_mutes.remove(user).is_none() {
            return Err(bad(format!("user {user:?} is not globally muted")));
        }
        let saved = self.save_global();
        self.tell_user(
            user,
            &Event::Unmuted {
                room: String::new(),
                users: vec![user.to_owned()],
            },
        );
        Ok(saved)
    }

    /// Live global mutes.
    pub fn global_mutes(&self) -> Vec<UserUntil> {
        live(&self.global().global_mutes, now_ms())
    }

    /// Adds message types to an app-wide list (each holds at most 20).
    pub fn types_add(&self, which: TypeList, types: &[String]) -> Result<Durable<()>, WireError> {
        if types.is_empty() || types.len() > MAX_TYPES {
            return Err(bad(format!(
                "types must hold 1..={MAX_TYPES} message types, got {}",
                types.len()
            )));
        }
        for t in types {
            crate::room::validate_msg_type(t)?;
        }
        let mut g = self.global_mut();
        let list = match which {
            TypeList::Whitelist => &mut g.type_whitelist,
            TypeList::LowPriority => &mut g.low_types,
        };
        let after: BTreeSet<&String> = list.iter().chain(types).collect();
        if after.len() > MAX_TYPES {
            return Err(bad(format!(
                "a message-type list holds at most {MAX_TYPES} types; it has {} and {} more were asked",
                list.len(),
                after.len() - list.len()
            )));
        }
        list.extend(types.iter().cloned());
        drop(g);
        Ok(self.save_global())
    }

    /// Removes a message type from an app-wide list.
    pub fn types_remove(&self, which: TypeList, t: &str) -> Result<Durable<()>, WireError> {
        let mut g = self.global_mut();
        let list = match which {
            TypeList::Whitelist => &mut g.type_whitelist,
            TypeList::LowPriority => &mut g.low_types,
        };
        if !list.remove(t) {
            return Err(bad(format!("type {t:?} is not on that list")));
        }
        drop(g);
        Ok(self.save_global())
    }

    /// An app-wide message-type list.
    pub fn types(&self, which: TypeList) -> Vec<String> {
        let g = self.global();
        match which {
            TypeList::Whitelist => g.type_whitelist.iter().cloned().collect(),
            TypeList::LowPriority => g.low_types.iter().cloned().collect(),
        }
    }

    /// Tells the room (when `notify`) and always the affected users who would not hear it there.
    fn notify(&self, room: &Room, users: &[String], event: &Event, notify: bool) {
        // Published and checked under one lock: a target that leaves or joins meanwhile gets the
        // notice once, from the room or directly.
        let st = room.state();
        if notify {
            room.publish_event(event, now_ms());
        }
        for u in users {
            let in_room = notify && st.member(u).is_some();
            if !in_room {
                self.tell_user(u, event);
            }
        }
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
