//! The timer pass: idle, lifetime and scheduled destroys, offline exits (and the removal of their
//! auto-delete attributes), member-count updates and expiry of moderation lists. [`Relay::tick`]
//! takes `now` and acts on what the pure decisions in [`crate::policy`] say is due; the server
//! calls it every `rooms.timer_tick_ms`. A destruction or attribute removal the store cannot take
//! now is left as it is and tried again on a later tick.

use super::relay::Relay;
use crate::policy::{self, Lifecycle};
use crate::protocol::{DestroyReason, Event};
use crate::room::RoomState;
use crate::store::Op;
use std::sync::Arc;

/// Last-activity times are persisted when they moved at least this much (ms): after a restart
/// an idle room is destroyed at most this much later than it would have been.
const ACTIVITY_PERSIST_MS: u64 = 10_000;

/// What one tick did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// Rooms destroyed, with why.
    pub destroyed: Vec<(String, DestroyReason)>,
    /// Members removed for being offline past the grace period, as `(room, user)`.
    pub offline_removed: Vec<(String, String)>,
    /// Rooms that got a member-count update.
    pub counts_sent: usize,
}

impl Relay {
    /// Runs every timer due at `now` (ms since the Unix epoch).
    pub async fn tick(self: &Arc<Self>, now: u64) -> TickReport {
        let mut report = TickReport::default();
        let rooms_cfg = &self.config.rooms;
        let global_idle = u64::from(rooms_cfg.idle_destroy_minutes) * 60_000;
        let keepalive = self.global().keepalive.clone();
        for room in self.all_rooms() {
            let due = |st: &mut RoomState| {
                st.moderation.expire(now);
                let life = Lifecycle {
                    policy: st.policy,
                    created_ms: room.created_ms,
                    last_activity_ms: st.last_activity_ms,
                    destroy_at_ms: st.destroy_at_ms,
                    keepalive: keepalive.contains(&room.id),
                };
                policy::destroy_due(&life, global_idle, now)
            };
            // Decided under the room's lock alone; if due, decided again with the registry
            // locked too, so activity in between keeps the room.
            let mut due_now = due(&mut room.state()).is_some();
            // ---- cluster: a room's destruction and stored timers run on its owner only; a due
            // room with no owner is taken by the first relay whose timers find it ----
            let mut owner = self.sequences(&room.id);
            if due_now && !owner {
                owner = self.claim(&room).await;
            }
            due_now &= owner;
            // ---- end cluster ----
            if due_now {
                match self.destroy_if_due(&room, due).await {
                    Ok(Some(reason)) => {
                        report.destroyed.push((room.id.clone(), reason));
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(room = %room.id, error = %e.message, "room destruction deferred");
                    }
                }
            }
            self.tick_room(&room, now, &mut report);
            if owner {
                self.sweep_logged(&room).await;
            }
        }
        self.global_mut()
            .global_mutes
            .retain(|_, until| now < *until);
        report
    }

    /// The timers of one room that need no store (besides a coarse activity time).
    fn tick_room(&self, room: &crate::room::Room, now: u64, report: &mut TickReport) {
        let rooms_cfg = &self.config.rooms;
        {
            let mut st = room.state();
            if st.last_activity_ms >= st.persisted_activity_ms + ACTIVITY_PERSIST_MS
                && self.store().writable()
                && self.sequences(&room.id)
            {
                st.persisted_activity_ms = st.last_activity_ms;
                // Nothing is told about it: a later ack covers it, and a lost one only makes an
                // idle destroy after a restart come a little later.
                let _ = self.persist(vec![Op::Touch {
                    room: room.id.clone(),
                    at_ms: st.last_activity_ms,
                }]);
            }
            for u in self.tick_members(room, &mut st, now) {
                tracing::debug!(room = %room.id, user = %u, "offline member removed");
                report.offline_removed.push((room.id.clone(), u));
            }
            if st
                .restored_at
                .is_some_and(|t| now >= t.saturating_add(rooms_cfg.offline_grace_ms))
            {
                st.restored_at = None;
                self.mark_orphaned_attrs(room, &mut st);
            }
            let members = self.member_count(room);
            let count = members as u64;
            let large = members > rooms_cfg.member_events_max;
            if !large {
                // Back to join/leave events; a later crossing announces the count afresh.
                st.count_announced = None;
            }
            let due_count = st.member_events
                && large
                && match st.count_announced {
                    None => true,
                    Some((last, at)) => {
                        last != count && now >= at + rooms_cfg.member_count_interval_ms
                    }
                };
            if due_count {
                st.count_announced = Some((count, now));
                drop(st);
                room.publish_event(
                    &Event::MemberCount {
                        room: room.id.clone(),
                        count,
                    },
                    now,
                );
                report.counts_sent += 1;
            }
        }
    }
}
