//! Client-driven resume ([`Request::Resume`](crate::protocol::Request::Resume)): the join of a
//! member that reconnected, here or to another relay, with the replay of what it missed (the
//! protocol module doc, "Resume after a reconnect", is the contract).
//!
//! The order that keeps it exact: history is read first (a resume whose history cannot be read
//! is refused whole); then, under the room's lock and the core's, the core takes the resume as
//! a join ([`Core::resume`](crate::room::core::Core::resume)) and the connection is subscribed
//! at a ring position at or before the room's position now. From there on the connection's delivery task buffers live traffic in the
//! ring like any member's; the subscription carries, ahead of the ring, `Resumed{missed}` and
//! the messages from history that precede what the ring still holds. So nothing falls between
//! the replay and the live messages, and nothing comes twice.

use super::{DeliveryCmd, Relay, attributes_of, m};
use crate::protocol::{ErrorCode, Event, JoinInfo, WireError, encode_frame};
use crate::room::core::{CoreError, Effect, resume_missed};
use crate::room::ring::{ClassCounts, class_index};
use crate::room::{JoinPoint, Read, Ring, validate_id};
use bytes::{BufMut, Bytes, BytesMut};

/// Most messages one resume replays from history; older ones are counted in `missed`.
const REPLAY_MAX: usize = 1000;

/// Most bytes of replayed frames one resume queues; older messages beyond are counted in
/// `missed`.
const REPLAY_BYTES: usize = 8 << 20;

/// Where a resume reads the ring from.
struct RingStart {
    /// The first ring position the connection reads, and the class counts before it.
    pos: u64,
    cum: ClassCounts,
    /// The ring replays every message from this sequence number on.
    from_seq: u64,
    /// Messages between `pos` and the room's position (what the ring replays).
    messages: u64,
}

/// The ring position from which the ring holds every message after `after`, looking back no
/// further than a quarter of the ring (beyond it a reader would shed what history can replay).
/// What the ring does not hold (it holds only what this relay placed: nothing, on a relay that
/// just caught up with a room another relay sequences) is replayed from history.
fn ring_start(ring: &Ring, at: &JoinPoint, after: u64) -> RingStart {
    let floor = at.pos.saturating_sub(ring.capacity() / 4);
    let mut start = RingStart {
        pos: at.pos,
        cum: at.cum,
        from_seq: at.last_seq.saturating_add(1),
        messages: 0,
    };
    let mut pos = at.pos;
    while pos > floor {
        let Read::Entry(e) = ring.read(pos - 1) else {
            return start;
        };
        if e.seq != 0 && e.seq <= after {
            start.from_seq = after.saturating_add(1);
            return start;
        }
        pos -= 1;
        let mut cum = e.cum;
        cum[class_index(e.class)] = cum[class_index(e.class)].saturating_sub(1);
        start.pos = e.pos;
        start.cum = cum;
        if e.seq != 0 {
            start.from_seq = e.seq;
            start.messages += 1;
        }
    }
    start
}

impl Relay {
    /// `conn` of `user` resumes its membership of the incarnation `epoch` of `room_id`, having
    /// received everything up to `last_seq`: checked like a join, then replayed (see the module
    /// doc). A membership this connection already serves is confirmed, nothing replayed.
    pub fn resume(
        &self,
        conn: u64,
        user: &str,
        room_id: &str,
        epoch: u64,
        last_seq: u64,
    ) -> Result<JoinInfo, WireError> {
        validate_id("room id", room_id)?;
        let destroyed = |live| -> WireError {
            CoreError::Destroyed {
                room: room_id.to_owned(),
                epoch,
                live,
            }
            .into()
        };
        let room = self.room(room_id).map_err(|_| destroyed(None))?;
        if room.epoch != epoch {
            return Err(destroyed(Some(room.epoch)));
        }
        self.catch_up(&room)?;
        let newest = room.ring.join_point().last_seq;
        if last_seq > newest {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                format!(
                    "last_seq {last_seq} is beyond room {room_id:?}'s newest message ({newest})"
                ),
            ));
        }
        // Read before anything changes: a resume whose history cannot be read is refused whole.
        let recalls = room.state().recent_recalls.clone();
        // At most as many as there are numbers to replay.
        let wanted = usize::try_from(newest - last_seq).map_or(REPLAY_MAX, |n| n.min(REPLAY_MAX));
        let stored = match wanted {
            0 => Vec::new(),
            n => self.history_of(&room, None, n, &recalls)?,
        };
        let now = super::now_ms();
        let mut st = room.state();
        if room.is_closed() {
            return Err(destroyed(None));
        }
        let mut core = self.core();
        core.check_join(&room.id, user, &st.moderation, now)?;
        let fx = core.resume(now, conn, user, &room.id, epoch, &mut |r| self.point(r))?;
        let (mine, fx): (Vec<Effect>, Vec<Effect>) = fx.into_iter().partition(|e| {
            matches!(e, Effect::Subscribe { conn: c, room: r, .. } if *c == conn && *r == room.id)
        });
        st.departed.remove(user);
        st.last_activity_ms = now;
        let mut unused = core.room(&room.id).map_or((0, 0), |r| r.unused);
        // ---- cluster: the never-used numbers of the room's latest owner change ----
        if let Some(u) = self.cluster().and_then(|c| c.unused(&room.id, room.epoch))
            && u.1 > unused.1
        {
            unused = u;
        }
        // ---- end cluster ----
        if !mine.is_empty() {
            let at = room.ring.join_point();
            let start = ring_start(&room.ring, &at, last_seq);
            let mut replay: Vec<Bytes> = stored
                .into_iter()
                .filter(|h| !h.recalled)
                .map(|h| h.message)
                .filter(|m| m.seq > last_seq && m.seq < start.from_seq && m.seq <= at.last_seq)
                .map(|m| encode_frame(&Event::Message(m)))
                .collect();
            // The newest ones within the byte bound: an older message is counted, not replayed.
            let mut bytes = 0;
            let keep = replay
                .iter()
                .rev()
                .take_while(|f| {
                    bytes += f.len();
                    bytes <= REPLAY_BYTES
                })
                .count();
            replay.drain(..replay.len() - keep);
            let missed = resume_missed(
                last_seq,
                start.from_seq,
                at.last_seq,
                replay.len() as u64,
                unused,
            );
            tracing::debug!(room = %room.id, conn, last_seq, missed, replayed = replay.len(), "membership resumed by the client");
            metrics::counter!(m::RESUMES, "outcome" => "replayed").increment(1);
            metrics::counter!(m::RESUME_REPLAYED, "from" => "history")
                .increment(replay.len() as u64);
            metrics::counter!(m::RESUME_REPLAYED, "from" => "ring").increment(start.messages);
            metrics::counter!(m::RESUME_MISSED).increment(missed);
            let mut first = BytesMut::new();
            first.put(encode_frame(&Event::Resumed {
                room: room.id.clone(),
                missed,
                last_seq: at.last_seq,
            }));
            for f in replay {
                first.put(f);
            }
            self.tell(
                conn,
                DeliveryCmd::Subscribe {
                    room: room.clone(),
                    at: JoinPoint {
                        pos: start.pos,
                        cum: start.cum,
                        ..at
                    },
                    first: Some(first.freeze()),
                },
            );
        }
        if mine.is_empty() {
            metrics::counter!(m::RESUMES, "outcome" => "confirmed").increment(1);
        }
        let others = self.apply(fx, Some((&room, &mut st)), Some(&room), now, &mut None);
        drop(core);
        let info = self.info_from(&room, &st, self.config.limits.room_info_members);
        let muted = crate::policy::check_send(user, &st.moderation, &self.global(), now).is_err();
        let attributes = attributes_of(&st);
        let attr_version = st.attr_version;
        let last = room.ring.join_point().last_seq;
        drop(st);
        self.other_rooms(others, now);
        Ok(JoinInfo {
            room: info,
            last_seq: last,
            muted,
            history: Vec::new(),
            attributes,
            attr_version,
        })
    }
}
