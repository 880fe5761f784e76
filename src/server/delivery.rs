//! A connection's delivery task: reads each joined room's ring at its own cursor and writes what it
//! finds to the connection's delivery stream (and low-priority messages as datagrams).
//!
//! Coalescing: every wake-up drains everything that is ready in every room (up to
//! `delivery_batch_bytes`) and writes it with one vectored write, so one packet carries as many
//! frames as fit. There is no timer when idle: the task sleeps on its [`Signal`]. While the
//! connection lags, its writes already gather many frames each. For paced traffic the write
//! window (`transport.delivery_window_us`, 50 ms by default, 0 turns it off) spaces a
//! connection's writes (stream frames and datagrams alike) at least that far apart: a message that
//! finds the connection quiet for a window goes out at once, messages that follow sooner wait for
//! the window's end and share its packets. So sparse traffic gets no added latency, and dense
//! traffic at most one window.
//!
//! Shedding, in priority order (SPEC §7): the publisher never waits for this task. When the
//! connection falls behind its ring (flow control holds its writes back), it skips low-priority
//! messages once it is a quarter of the ring behind and normal ones at half
//! ([`crate::policy::shed_on_egress`]); protected messages are always written. Before its next
//! delivered message of that room it gets `Gap{low, normal}` with the exact counts it skipped,
//! taken from the cumulative per-class counters on every ring entry. If it falls a whole ring
//! behind with protected messages among the overwritten ones, or a write cannot complete within
//! `slow_close_ms`, the connection is closed with [`CloseCode::TooSlow`] and reason `too_slow`:
//! protected traffic is never dropped while a connection lives.
//!
//! A membership that ends (leave, kick, ban) ends at the ring position where it ended: the member
//! still gets everything published before that, then its `Kicked`, and nothing after it.

use super::link::{EventSink, Link, TransportKind};
use super::relay::DeliveryCmd;
use crate::metrics as m;
use crate::policy::shed_on_egress;
use crate::protocol::{Class, CloseCode, DestroyReason, Event, KickReason, encode_frame};
use crate::room::ring::{ClassCounts, class_index};
use crate::room::{JoinPoint, Read, Room, Signal};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

struct Sub {
    room: Arc<Room>,
    cursor: u64,
    /// Cumulative per-class counts up to the last entry this member visited.
    cum: ClassCounts,
    /// Messages skipped since the last `Gap` (shed or overwritten).
    missed: ClassCounts,
    /// Set when the membership ended: read up to there, then stop.
    leaving: Option<Leaving>,
}

/// The end of a membership: what the member still gets.
struct Leaving {
    /// Where the membership ended: the first ring position after it and the class counts before.
    until: JoinPoint,
    /// Told to the client once everything before `until` is written.
    kicked: Option<KickReason>,
    /// Notices about the room that came after the end (a ban's `Banned`): written after `Kicked`.
    then: Vec<Bytes>,
}

/// Per-batch tallies, flushed to the metrics once per write.
#[derive(Default)]
struct Tally {
    stream: ClassCounts,
    datagram: ClassCounts,
    stream_bytes: u64,
    datagram_bytes: u64,
    shed_lag: ClassCounts,
    shed_overrun: ClassCounts,
    shed_datagram: u64,
    /// Ring entries not yet read, over the connection's rooms, when the drain began.
    lag: u64,
    /// When the oldest message of the batch was published.
    oldest: Option<tokio::time::Instant>,
}

impl Tally {
    /// Adds the batch to the counters and, when `sampled`, to the histograms (one sample per
    /// write: its lag and its oldest message's latency).
    fn flush(&self, transport: TransportKind, sampled: bool) {
        let m = m::delivery(transport.as_str());
        for i in 0..3 {
            m.stream[i].add(self.stream[i]);
            m.datagram[i].add(self.datagram[i]);
            m.shed_lag[i].add(self.shed_lag[i]);
            m.shed_overrun[i].add(self.shed_overrun[i]);
            let datagram = if i == class_index(Class::Low) {
                self.shed_datagram
            } else {
                0
            };
            m.gaps[i].add(self.shed_lag[i] + self.shed_overrun[i] + datagram);
        }
        m.shed_datagram.add(self.shed_datagram);
        m.stream_bytes.add(self.stream_bytes);
        m.datagram_bytes.add(self.datagram_bytes);
        if sampled {
            if self.lag > 0 {
                m.lag.record(self.lag as f64);
            }
            if let Some(at) = self.oldest {
                m.latency.record(at.elapsed().as_secs_f64());
            }
        }
    }
}

/// The delivery side of one connection, over any transport.
pub(crate) struct Delivery<L, E> {
    pub conn: L,
    pub stream: E,
    pub transport: TransportKind,
    pub rx: flume::Receiver<DeliveryCmd>,
    pub signal: Arc<Signal>,
    pub conn_id: u64,
    pub batch_bytes: usize,
    pub slow_close: Duration,
    /// Least time between two writes (0: write as soon as woken), so paced traffic shares packets.
    pub window: Duration,
}

/// Why a drain stopped.
enum Drained {
    /// Everything ready was read.
    Done,
    /// The batch is full; read again right after writing it.
    More,
    /// The connection lost protected traffic: close it.
    TooSlow,
}

impl<L: Link, E: EventSink> Delivery<L, E> {
    /// Runs until the connection closes or its stream fails.
    pub async fn run(mut self) {
        let mut subs: Vec<Sub> = Vec::new();
        let mut out: Vec<Bytes> = vec![encode_frame(&Event::Ready {
            conn_id: self.conn_id,
        })];
        let mut last_write: Option<tokio::time::Instant> = None;
        let mut sampler = m::Sampler::default();
        let closed = Link::closed(&self.conn);
        tokio::pin!(closed);
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                self.apply(cmd, &mut subs, &mut out);
            }
            let mut tally = Tally::default();
            let drained = self.drain(&mut subs, &mut out, &mut tally);
            if !self.window.is_zero() && (!out.is_empty() || tally.datagram.iter().any(|&n| n > 0))
            {
                last_write = Some(tokio::time::Instant::now());
            }
            if !out.is_empty() {
                tally.stream_bytes += out.iter().map(|b| b.len() as u64).sum::<u64>();
                match tokio::time::timeout(self.slow_close, self.stream.write_all(&mut out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        self.too_slow("a delivery write did not complete in time");
                        break;
                    }
                }
                out.clear();
            }
            // Writes that carried messages take turns in the histograms.
            tally.flush(self.transport, tally.oldest.is_some() && sampler.take());
            match drained {
                Drained::Done => {}
                Drained::More => {
                    tokio::task::yield_now().await;
                    continue;
                }
                Drained::TooSlow => {
                    self.too_slow("protected messages were overrun");
                    break;
                }
            }
            // One signal wakes this task for its rooms and its command queue alike; `closed`
            // stays registered across iterations, so an idle wait costs no allocation or lock.
            tokio::select! {
                biased;
                _ = &mut closed => break,
                _ = self.signal.wait() => {
                    // Write window (transport.delivery_window_us): a wake-up soon after the last
                    // write waits for the window's end, so what arrives meanwhile shares packets.
                    // A backlog already fills packets: then waiting would only slow a lagging
                    // member down (and get its messages shed).
                    let now = tokio::time::Instant::now();
                    if let Some(due) = window_wait(last_write, self.window, now, || backlog(&subs)) {
                        tokio::time::sleep_until(due).await;
                    }
                }
            }
            if self.rx.is_disconnected() && self.rx.is_empty() {
                break;
            }
        }
        for s in &subs {
            s.room.watchers.remove(self.conn_id);
        }
    }

    fn too_slow(&self, why: &str) {
        tracing::info!(
            conn_id = self.conn_id,
            why,
            "closing a connection that is too slow"
        );
        metrics::counter!(m::TOO_SLOW).increment(1);
        self.conn.close(CloseCode::TooSlow, "too_slow");
    }

    /// Applies a command; notices for the client go to `out`, ahead of the next drain (a
    /// `Resumed` must precede the messages it introduces), except those that must follow the end
    /// of a membership of their room.
    fn apply(&self, cmd: DeliveryCmd, subs: &mut Vec<Sub>, out: &mut Vec<Bytes>) {
        match cmd {
            DeliveryCmd::Subscribe { room, at, first } => {
                if subs
                    .iter()
                    .any(|s| s.leaving.is_none() && Arc::ptr_eq(&s.room, &room))
                {
                    return;
                }
                // A membership that is ending keeps its place (before this one) until it is read
                // to its end, so its messages and its Kicked come before the new membership's;
                // so does one of an older incarnation of the id, until its end is read.
                if let Some(frame) = first {
                    notice(subs, out, &room.id, frame);
                }
                room.watchers.add(self.conn_id, self.signal.clone());
                subs.push(Sub {
                    room,
                    cursor: at.pos,
                    cum: at.cum,
                    missed: [0; 3],
                    leaving: None,
                });
                // Anything published between the join and the registration is read on this pass.
                self.signal.notify();
            }
            DeliveryCmd::Unsubscribe {
                room,
                epoch,
                kicked,
                until,
            } => {
                // The next drain delivers what was published while a member, then ends it.
                match live_sub(subs, &room, epoch) {
                    Some(sub) => {
                        sub.leaving = Some(Leaving {
                            until,
                            kicked,
                            then: Vec::new(),
                        })
                    }
                    None => {
                        if let Some(reason) = kicked {
                            notice(subs, out, &room, kick_frame(&room, reason));
                        }
                    }
                }
            }
            DeliveryCmd::Event { room, frame } => notice(subs, out, &room, frame),
        }
    }

    /// Reads every subscription up to the batch limit.
    fn drain(&self, subs: &mut Vec<Sub>, out: &mut Vec<Bytes>, tally: &mut Tally) -> Drained {
        let mut budget = self.batch_bytes;
        // Asked of quinn (it takes the connection's lock) only when a low message needs it.
        let mut dgram_max: Option<Option<usize>> = None;
        let mut result = Drained::Done;
        let mut gone = Vec::new();
        for (i, sub) in subs.iter_mut().enumerate() {
            let mut first_published = None;
            let cap = sub.room.ring.capacity();
            tally.lag += sub.room.ring.tail().saturating_sub(sub.cursor);
            loop {
                if budget == 0 {
                    result = Drained::More;
                    break;
                }
                if let Some(mut l) = sub.leaving.take_if(|l| sub.cursor >= l.until.pos) {
                    // An overrun may have carried the cursor past the end: what was lost up to
                    // the end is counted like any other overrun.
                    for k in 0..3 {
                        let lost = l.until.cum[k].saturating_sub(sub.cum[k]);
                        sub.missed[k] += lost;
                        tally.shed_overrun[k] += lost;
                    }
                    if sub.missed[class_index(Class::Protected)] > 0 {
                        return Drained::TooSlow;
                    }
                    flush_gap(sub, out);
                    if let Some(reason) = l.kicked {
                        out.push(kick_frame(&sub.room.id, reason));
                    }
                    out.append(&mut l.then);
                    gone.push(i);
                    break;
                }
                match sub.room.ring.read(sub.cursor) {
                    Read::Empty => {
                        if !sub.room.is_closed() {
                            break;
                        }
                        // Closed: a publish may have landed between the read and the check.
                        if !sub.room.ring.read(sub.cursor).is_empty() {
                            continue;
                        }
                        flush_gap(sub, out);
                        gone.push(i);
                        out.push(encode_frame(&Event::RoomDestroyed {
                            room: sub.room.id.clone(),
                            reason: sub.room.destroy_reason().unwrap_or(DestroyReason::Manual),
                        }));
                        break;
                    }
                    Read::Lagged { oldest } => {
                        // Overrun: continue at the oldest entry still there; the counts of what
                        // was lost come from that entry's cumulative counters.
                        sub.cursor = oldest;
                    }
                    Read::Entry(e) => {
                        let ci = class_index(e.class);
                        for k in 0..3 {
                            let own = u64::from(k == ci);
                            let lost = e.cum[k].saturating_sub(own).saturating_sub(sub.cum[k]);
                            sub.missed[k] += lost;
                            tally.shed_overrun[k] += lost;
                        }
                        sub.cum = e.cum;
                        sub.cursor = e.pos + 1;
                        if sub.missed[class_index(Class::Protected)] > 0 {
                            return Drained::TooSlow;
                        }
                        let lag = sub.room.ring.tail().saturating_sub(e.pos);
                        if shed_on_egress(e.class, lag, cap) {
                            sub.missed[ci] += 1;
                            tally.shed_lag[ci] += 1;
                            continue;
                        }
                        first_published.get_or_insert(e.published);
                        let max = match &e.datagram {
                            Some(_) => {
                                *dgram_max.get_or_insert_with(|| self.conn.max_datagram_size())
                            }
                            None => None,
                        };
                        match (&e.datagram, max) {
                            (Some(d), Some(max)) if d.len() <= max => {
                                // A full datagram buffer would make quinn drop older datagrams
                                // silently; shed this one instead, and count it.
                                if self.conn.datagram_space() < d.len() {
                                    sub.missed[ci] += 1;
                                    tally.shed_datagram += 1;
                                    continue;
                                }
                                flush_gap(sub, out);
                                if self.conn.send_datagram(d.clone()) {
                                    tally.datagram[ci] += 1;
                                    tally.datagram_bytes += d.len() as u64;
                                } else {
                                    // The path cannot take it after all: the stream can.
                                    budget = budget.saturating_sub(e.frame.len());
                                    tally.stream[ci] += 1;
                                    out.push(e.frame.clone());
                                }
                            }
                            _ => {
                                flush_gap(sub, out);
                                budget = budget.saturating_sub(e.frame.len());
                                tally.stream[ci] += 1;
                                out.push(e.frame.clone());
                            }
                        }
                    }
                }
            }
            if let Some(at) = first_published {
                tally.oldest = Some(tally.oldest.map_or(at, |o| o.min(at)));
            }
        }
        // In order: a new membership of a room must stay behind the one that is ending.
        for i in gone.into_iter().rev() {
            let s = subs.remove(i);
            // The same room may be joined again (a new membership after this one ended).
            if !subs.iter().any(|o| Arc::ptr_eq(&o.room, &s.room)) {
                s.room.watchers.remove(self.conn_id);
            }
        }
        result
    }
}

/// Ring entries waiting for this connection at or above which the write window does not wait:
/// they fill several packets already.
const WINDOW_BACKLOG: u64 = 16;

/// Until when a wake-up at `now` waits before draining, if at all: only within `window` of the
/// last write, and only while fewer than [`WINDOW_BACKLOG`] entries wait (`backlog` is asked
/// only then, so a connection without a window never counts its rooms' entries).
pub(crate) fn window_wait<I>(
    last_write: Option<I>,
    window: Duration,
    now: I,
    backlog: impl FnOnce() -> u64,
) -> Option<I>
where
    I: Copy + Ord + std::ops::Add<Duration, Output = I>,
{
    let due = last_write? + window;
    (due > now && backlog() < WINDOW_BACKLOG).then_some(due)
}

/// Ring entries not yet read by this connection, over its rooms.
fn backlog(subs: &[Sub]) -> u64 {
    subs.iter()
        .map(|s| s.room.ring.tail().saturating_sub(s.cursor))
        .sum()
}

/// The live (not ending) subscription of the incarnation `epoch` of `room`: an older
/// incarnation of the id, still read to its end, is another membership.
fn live_sub<'a>(subs: &'a mut [Sub], room: &str, epoch: u64) -> Option<&'a mut Sub> {
    subs.iter_mut()
        .find(|s| s.leaving.is_none() && s.room.id == room && s.room.epoch == epoch)
}

/// Queues a notice about `room`: next, ahead of the coming drain, unless a membership of `room`
/// is still ending; then right after that membership's `Kicked`.
fn notice(subs: &mut [Sub], out: &mut Vec<Bytes>, room: &str, frame: Bytes) {
    let ending = subs
        .iter_mut()
        .rev()
        .find_map(|s| s.leaving.as_mut().filter(|_| s.room.id == room));
    match ending {
        Some(l) => l.then.push(frame),
        None => out.push(frame),
    }
}

/// Writes `Gap{low, normal}` for what the member skipped since its last delivered message.
fn flush_gap(sub: &mut Sub, out: &mut Vec<Bytes>) {
    let low = sub.missed[class_index(Class::Low)];
    let normal = sub.missed[class_index(Class::Normal)];
    if low > 0 || normal > 0 {
        out.push(encode_frame(&Event::Gap {
            room: sub.room.id.clone(),
            low,
            normal,
        }));
    }
    sub.missed = [0; 3];
}

fn kick_frame(room: &str, reason: KickReason) -> Bytes {
    encode_frame(&Event::Kicked {
        room: room.to_owned(),
        reason,
    })
}

impl Read {
    fn is_empty(&self) -> bool {
        matches!(self, Read::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A room destroyed and created again while this connection still reads the old one: the
    /// new membership's end (a kick) must end the new subscription, not the old one, which
    /// still reads to its own end. Matched by id alone (the old order) it found the old one.
    #[test]
    fn a_membership_ends_on_its_own_incarnation_of_the_room() {
        let budget = crate::policy::BudgetConfig {
            window_ms: 1000,
            total: 100,
            reserved: 0,
            protected_extra: 0,
        };
        let sub = |epoch| Sub {
            room: Arc::new(Room::new("r".into(), "R".into(), epoch, 0, 8, budget)),
            cursor: 0,
            cum: [0; 3],
            missed: [0; 3],
            leaving: None,
        };
        let mut subs = vec![sub(1), sub(2)];
        assert_eq!(live_sub(&mut subs, "r", 2).map(|s| s.room.epoch), Some(2));
        assert_eq!(live_sub(&mut subs, "r", 1).map(|s| s.room.epoch), Some(1));
        assert!(live_sub(&mut subs, "r", 3).is_none());
        assert!(live_sub(&mut subs, "other", 2).is_none());
        subs[1].leaving = Some(Leaving {
            until: JoinPoint::default(),
            kicked: Some(KickReason::Banned),
            then: Vec::new(),
        });
        // An ending membership is not live: a second end finds nothing.
        assert!(live_sub(&mut subs, "r", 2).is_none());
    }

    #[test]
    fn the_write_window_holds_only_dense_traffic_with_a_small_backlog() {
        let t0 = Instant::now();
        let w = Duration::from_millis(50);
        let at = |ms| t0 + Duration::from_millis(ms);
        // Nothing written yet, or the window off: no wait.
        assert_eq!(window_wait(None, w, t0, || 0), None);
        assert_eq!(window_wait(Some(t0), Duration::ZERO, t0, || 0), None);
        // Soon after a write: wait for the window's end.
        assert_eq!(window_wait(Some(t0), w, at(10), || 1), Some(at(50)));
        assert_eq!(
            window_wait(Some(t0), w, at(49), || WINDOW_BACKLOG - 1),
            Some(at(50))
        );
        // Quiet for a whole window: at once.
        assert_eq!(window_wait(Some(t0), w, at(50), || 1), None);
        assert_eq!(window_wait(Some(t0), w, at(500), || 1), None);
        // A backlog fills packets already: no wait however recent the write.
        assert_eq!(window_wait(Some(t0), w, at(10), || WINDOW_BACKLOG), None);
    }
}

#[cfg(test)]
#[path = "delivery_props.rs"]
mod props;
