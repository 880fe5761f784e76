//! The per-room lock-free broadcast ring.
//!
//! A fixed array of slots, each an [`ArcSwapOption`] holding one published [`Entry`], and an atomic
//! `tail` (the next position). Publishing stores the entry into slot `pos % capacity` and then
//! advances `tail` with release ordering; readers load `tail` with acquire ordering and then the
//! slot. Neither side takes a lock the other side holds: publishers serialise among themselves
//! with a publisher-only mutex (a room's sequence numbers must be assigned in ring order), readers
//! only do atomic loads, and an overwritten slot is detected by its entry's position being newer than
//! the one asked for. A reader that lags by more than the capacity therefore never slows the
//! publisher: it finds out it lagged and skips ahead, and the cumulative per-class counters stamped
//! on every entry tell it exactly how many messages of each class it skipped.
//!
//! Held messages: a message whose store append must be durable before anyone sees it is stamped
//! (its sequence number and timestamp) at once, in order, but placed in the ring only when the
//! store has resolved it ([`Ring::resolve`]): readers never see a message the store may still
//! refuse, so there is nothing to take back when it does. Messages are placed in sequence order:
//! a message that needs no store (a low-priority one, or any in `batched` mode) stamped behind a
//! held one waits for it, and no longer. A refused message is never placed; its sequence number
//! stays unused. System events are not held: they are placed at once.
//!
//! Wake-ups go through [`Watchers`]: each subscribing connection registers one [`Signal`] (an atomic
//! flag plus an [`AtomicWaker`]); the publisher sets the flags lock-free, so a connection that is
//! already awake costs one atomic swap per publish.

use crate::protocol::Class;
use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

/// Per-class message counts, indexed by [`class_index`].
pub type ClassCounts = [u64; 3];

/// The index of a class in [`ClassCounts`].
pub fn class_index(class: Class) -> usize {
    match class {
        Class::Protected => 0,
        Class::Normal => 1,
        Class::Low => 2,
    }
}

/// One published item: a message frame encoded once for every subscriber.
#[derive(Debug)]
pub struct Entry {
    /// Ring position (internal; not the message's `seq`).
    pub pos: u64,
    /// The message's room sequence number.
    pub seq: u64,
    /// Its class.
    pub class: Class,
    /// Counts of messages per class published up to and including this one.
    pub cum: ClassCounts,
    /// The delivery-stream frame (length prefix included).
    pub frame: Bytes,
    /// The datagram payload, for low-priority entries.
    pub datagram: Option<Bytes>,
    /// The decoded message, for join history; `None` when it is not to be kept in history.
    pub history: Option<crate::protocol::Message>,
    /// When it was published (for the fan-out latency histogram).
    pub published: tokio::time::Instant,
}

/// What a reader finds at its cursor.
#[derive(Debug)]
pub enum Read {
    /// Nothing new yet.
    Empty,
    /// The entry at the cursor.
    Entry(Arc<Entry>),
    /// The cursor's entry was overwritten; the oldest position still readable.
    Lagged {
        /// Where to continue.
        oldest: u64,
    },
}

/// What a publisher hands the ring: the event encoded once for every subscriber.
#[derive(Debug)]
pub struct Payload {
    /// Its class.
    pub class: Class,
    /// The delivery-stream frame (length prefix included).
    pub frame: Bytes,
    /// The datagram payload, for low-priority messages.
    pub datagram: Option<Bytes>,
    /// The decoded message, for join history; `None` when it is not to be kept in history.
    pub history: Option<crate::protocol::Message>,
}

/// What the publisher's hook decides for a stamped message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Place it now (or right after the held messages before it).
    No,
    /// Keep it out of the ring until [`Ring::resolve`] says whether it stays.
    UntilResolved,
    /// Drop it now: its sequence number is not used.
    Refuse,
}

/// Why a message was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The ring is closed (the room was destroyed).
    Closed,
    /// The ring takes no messages for now (the room's destruction is being stored).
    Frozen,
    /// The publisher's hook refused it ([`Hold::Refuse`]).
    Hook,
}

/// A stamped message not yet placed.
#[derive(Debug)]
struct Held {
    seq: u64,
    payload: Payload,
    /// `None` until resolved; then whether it is placed.
    keep: Option<bool>,
}

/// Publisher-side state; only publishers (and [`Ring::resolve`]) take its lock.
#[derive(Debug, Default)]
pub struct PublishState {
    /// The next message sequence number to assign.
    pub next_seq: u64,
    /// The last timestamp handed out, so timestamps never go backwards.
    pub last_ts: u64,
    /// Cumulative per-class counts of what was placed.
    pub cum: ClassCounts,
    /// Set once by [`Ring::close`]; nothing is published after it.
    pub closed: bool,
    /// Set by [`Ring::freeze`]: messages are refused, events still placed.
    pub frozen: bool,
    /// The sequence number of the newest placed message (or where a restart resumed).
    pub last_placed: u64,
    /// Messages placed so far.
    pub placed: u64,
    /// Stamped messages waiting to be placed, in sequence order.
    held: VecDeque<Held>,
}

/// A consistent snapshot of the publish side, taken by a joining member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JoinPoint {
    /// The ring position the member reads from.
    pub pos: u64,
    /// The newest placed sequence number (0 if none).
    pub last_seq: u64,
    /// Cumulative per-class counts before `pos`.
    pub cum: ClassCounts,
    /// Messages placed before `pos`: the difference of two join points is how many messages
    /// were published between them.
    pub messages: u64,
}

/// Sees every message the ring places from its own publishers (not from
/// [`Ring::place_remote`]), in sequence order, under the publisher lock: it must not block.
pub type Observer = Box<dyn Fn(&Entry) + Send + Sync>;

/// The broadcast ring.
pub struct Ring {
    slots: Box<[ArcSwapOption<Entry>]>,
    mask: u64,
    /// Polled by every reader: kept off the publisher's cache line.
    tail: CacheLine<AtomicU64>,
    closed: AtomicBool,
    /// Publisher-only; on its own cache line so readers polling `tail` do not slow it.
    publish: CacheLine<Mutex<PublishState>>,
    observer: std::sync::OnceLock<Observer>,
}

/// Aligns its content to its own 128-byte block (two 64-byte lines, as adjacent-line prefetch
/// pairs them), so writes to it do not invalidate neighbours' lines.
#[repr(align(128))]
struct CacheLine<T>(T);

impl<T> std::ops::Deref for CacheLine<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl Ring {
    /// A ring of `capacity` slots, rounded up to a power of two (at least 2).
    pub fn new(capacity: usize) -> Self {
        let cap = capacity.max(2).next_power_of_two();
        Ring {
            slots: (0..cap).map(|_| ArcSwapOption::empty()).collect(),
            mask: cap as u64 - 1,
            tail: CacheLine(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
            publish: CacheLine(Mutex::new(PublishState {
                next_seq: 1,
                ..PublishState::default()
            })),
            observer: std::sync::OnceLock::new(),
        }
    }

    /// Sets the [`Observer`] of placed messages (once; false if one is set already).
    pub fn observe(&self, observer: Observer) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Places a message another publisher sequenced (`seq`, stamped `ts`), at once: the ring
    /// follows that publisher's numbering from here. A message at or below the newest sequence
    /// number this ring assigned or placed is refused (a duplicate or a late one), as is any
    /// once the ring is closed. The observer does not see it. Returns whether it was placed.
    pub fn place_remote(&self, seq: u64, ts: u64, payload: Payload) -> bool {
        let mut st = self.lock();
        if st.closed || seq < st.next_seq || !st.held.is_empty() {
            return false;
        }
        st.next_seq = seq + 1;
        st.last_ts = st.last_ts.max(ts);
        self.place_entry(&mut st, seq, payload);
        true
    }

    /// Counts messages another publisher sequenced that this ring will never place (lost on
    /// their way and not to be had from history): the next entry's cumulative counts include
    /// them, so every reader that reads past it is told them in a `Gap` of their class, exactly
    /// as if they had been placed and overwritten. The observer does not see them.
    pub fn skip_remote(&self, missed: ClassCounts) {
        let mut st = self.lock();
        for (c, n) in st.cum.iter_mut().zip(missed) {
            *c += n;
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The next position to be published.
    pub fn tail(&self) -> u64 {
        self.tail.load(Ordering::Acquire)
    }

    /// Publishes one message. `build(seq, ts)` makes its payload; it runs under the
    /// publisher-only lock so sequence numbers, timestamps and ring order agree. `now_ms` is the
    /// wall clock; timestamps are made monotonic here. Returns `(seq, ts)`, or `None` once the
    /// ring is closed or frozen.
    pub fn publish(
        &self,
        now_ms: u64,
        build: impl FnOnce(u64, u64) -> Payload,
    ) -> Option<(u64, u64)> {
        self.publish_held(now_ms, build, |_, _| Hold::No).ok()
    }

    /// Publishes one message as [`publish`](Self::publish) does, after `hold(payload, seq)` (run
    /// under the same lock, so what it records is in sequence order) decided whether it is placed
    /// now, held until [`resolve`](Self::resolve)d, or refused.
    pub fn publish_held(
        &self,
        now_ms: u64,
        build: impl FnOnce(u64, u64) -> Payload,
        hold: impl FnOnce(&Payload, u64) -> Hold,
    ) -> Result<(u64, u64), Refused> {
        let mut st = self.lock();
        if st.closed {
            return Err(Refused::Closed);
        }
        if st.frozen {
            return Err(Refused::Frozen);
        }
        let ts = now_ms.max(st.last_ts);
        let seq = st.next_seq;
        let payload = build(seq, ts);
        let keep = match hold(&payload, seq) {
            Hold::Refuse => return Err(Refused::Hook),
            Hold::No => Some(true),
            Hold::UntilResolved => None,
        };
        st.next_seq += 1;
        st.last_ts = ts;
        if keep.is_some() && st.held.is_empty() {
            self.place(&mut st, seq, payload);
        } else {
            st.held.push_back(Held { seq, payload, keep });
        }
        Ok((seq, ts))
    }

    /// Publishes a system event: placed at once, even ahead of held messages, and with no
    /// sequence number (its entry's `seq` is 0), so message sequence numbers stay dense. False
    /// once the ring is closed.
    pub fn publish_event(&self, now_ms: u64, payload: Payload) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.last_ts = now_ms.max(st.last_ts);
        self.place(&mut st, 0, payload);
        true
    }

    /// Says whether the held message `seq` stays (`keep`) or is dropped, then places every
    /// message at the front of the queue that is resolved. Returns whether anything was placed
    /// (the caller wakes the subscribers then). A message no longer held (the ring was closed)
    /// is ignored.
    pub fn resolve(&self, seq: u64, keep: bool) -> bool {
        let mut st = self.lock();
        let Some(h) = st.held.iter_mut().find(|h| h.seq == seq) else {
            return false;
        };
        h.keep = Some(keep);
        let mut placed = false;
        while st.held.front().is_some_and(|h| h.keep.is_some()) {
            let Some(h) = st.held.pop_front() else { break };
            if h.keep == Some(true) {
                self.place(&mut st, h.seq, h.payload);
                placed = true;
            }
        }
        placed
    }

    /// Messages stamped but not yet placed.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Refuses messages (not events) while `on`: a room whose destruction is being stored takes
    /// no message that the store would put after the deletion.
    pub fn freeze(&self, on: bool) {
        self.lock().frozen = on;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PublishState> {
        self.publish.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `payload` at the tail (publish lock held), and shows a message to the observer.
    fn place(&self, st: &mut PublishState, seq: u64, payload: Payload) {
        let entry = self.place_entry(st, seq, payload);
        if seq > 0
            && let Some(observer) = self.observer.get()
        {
            observer(&entry);
        }
    }

    /// Stores `payload` at the tail (publish lock held).
    fn place_entry(&self, st: &mut PublishState, seq: u64, payload: Payload) -> Arc<Entry> {
        let class = payload.class;
        st.cum[class_index(class)] += 1;
        if seq > 0 {
            st.last_placed = seq;
            st.placed += 1;
        }
        let pos = self.tail.load(Ordering::Relaxed);
        let entry = Entry {
            pos,
            seq,
            class,
            cum: st.cum,
            frame: payload.frame,
            datagram: payload.datagram,
            history: payload.history,
            published: tokio::time::Instant::now(),
        };
        let entry = Arc::new(entry);
        self.slots[(pos & self.mask) as usize].store(Some(entry.clone()));
        self.tail.store(pos + 1, Ordering::Release);
        entry
    }

    /// Closes the ring: later publishes fail, and held messages are dropped. Every entry placed
    /// before it stays readable, and a reader that sees [`is_closed`](Self::is_closed) and then
    /// finds [`Read::Empty`] has read all. Returns false if it was closed already.
    pub fn close(&self) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        st.closed = true;
        st.held.clear();
        self.closed.store(true, Ordering::Release);
        true
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Makes the next message's sequence number at least `next` (after a restart); the join
    /// point's `last_seq` follows, so the next message is `last_seq + 1`.
    pub fn resume_seq(&self, next: u64) {
        let mut st = self.lock();
        st.next_seq = st.next_seq.max(next);
        st.last_placed = st.last_placed.max(st.next_seq - 1);
    }

    /// The newest assigned message sequence number (0 if none), placed or held.
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// A consistent snapshot for a joining member.
    pub fn join_point(&self) -> JoinPoint {
        let st = self.lock();
        JoinPoint {
            pos: self.tail.load(Ordering::Relaxed),
            last_seq: st.last_placed,
            cum: st.cum,
            messages: st.placed,
        }
    }

    /// Reads position `pos`.
    pub fn read(&self, pos: u64) -> Read {
        let tail = self.tail.load(Ordering::Acquire);
        if pos >= tail {
            return Read::Empty;
        }
        let oldest = tail.saturating_sub(self.capacity());
        if pos < oldest {
            return Read::Lagged { oldest };
        }
        match self.slots[(pos & self.mask) as usize].load_full() {
            Some(e) if e.pos == pos => Read::Entry(e),
            // Overwritten between the tail load and the slot load, possibly by a publish that has
            // not advanced `tail` yet: the newer entry itself proves how far the ring has moved.
            other => {
                let by_tail = self
                    .tail
                    .load(Ordering::Acquire)
                    .saturating_sub(self.capacity());
                let by_slot = other.map_or(0, |e| (e.pos + 1).saturating_sub(self.capacity()));
                Read::Lagged {
                    oldest: by_tail.max(by_slot).max(pos + 1),
                }
            }
        }
    }

    /// Up to `n` of the newest entries before `before` that carry history, oldest first.
    pub fn recent(&self, before: u64, n: usize) -> Vec<Arc<Entry>> {
        let mut out = Vec::with_capacity(n);
        let mut pos = before;
        let floor = self.tail().saturating_sub(self.capacity());
        while out.len() < n && pos > floor {
            pos -= 1;
            if let Read::Entry(e) = self.read(pos)
                && e.history.is_some()
            {
                out.push(e);
            }
        }
        out.reverse();
        out
    }

    /// The entries that carry history with `floor < seq < bound`, oldest first; scans back from
    /// the tail only as far as `floor`.
    pub fn history_between(&self, floor: u64, bound: u64) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        let tail = self.tail();
        let oldest = tail.saturating_sub(self.capacity());
        let mut pos = tail;
        while pos > oldest {
            pos -= 1;
            let Read::Entry(e) = self.read(pos) else {
                break;
            };
            if e.history.is_none() {
                continue;
            }
            if e.seq <= floor {
                break;
            }
            if e.seq < bound {
                out.push(e);
            }
        }
        out.reverse();
        out
    }
}

/// A wake-up flag owned by one connection's delivery task.
#[derive(Debug, Default)]
pub struct Signal {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Marks the owner as having work and wakes it if it sleeps. Lock-free.
    pub fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Waits until [`notify`](Self::notify) was called since the last wait returned. Cancel-safe.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.pending.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.pending.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

const WATCHER_SHARDS: usize = 16;

/// The signals to wake when a room publishes, sharded so that a join copies 1/16 of the list.
///
/// Publishers only load the shards (lock-free); joins and leaves take a shard's writer lock, which
/// publishers never touch, and swap in a new list.
pub struct Watchers {
    shards: [WatcherShard; WATCHER_SHARDS],
}

/// A writer lock (joins and leaves only) and the current list of `(connection id, signal)`.
type WatcherShard = (Mutex<()>, ArcSwap<Vec<(u64, Arc<Signal>)>>);

impl Default for Watchers {
    fn default() -> Self {
        Watchers {
            shards: std::array::from_fn(|_| (Mutex::new(()), ArcSwap::from_pointee(Vec::new()))),
        }
    }
}

impl Watchers {
    /// Registers `signal` under `key` (a connection id).
    pub fn add(&self, key: u64, signal: Arc<Signal>) {
        let (lock, list) = &self.shards[key as usize % WATCHER_SHARDS];
        let _w = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Vec::clone(&list.load());
        next.retain(|(k, _)| *k != key);
        next.push((key, signal));
        list.store(Arc::new(next));
    }

    /// Removes the signal registered under `key`.
    pub fn remove(&self, key: u64) {
        let (lock, list) = &self.shards[key as usize % WATCHER_SHARDS];
        let _w = lock.lock().unwrap_or_else(|p| p.into_inner());
        let cur = list.load();
        if cur.iter().any(|(k, _)| *k == key) {
            let next: Vec<_> = cur.iter().filter(|(k, _)| *k != key).cloned().collect();
            list.store(Arc::new(next));
        }
    }

    /// Wakes every registered signal. Lock-free.
    pub fn notify_all(&self) {
        for (_, list) in &self.shards {
            for (_, s) in list.load().iter() {
                s.notify();
            }
        }
    }

    /// How many signals are registered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|(_, l)| l.load().len()).sum()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_class_counters_follow_the_ring_class_index() {
        // `crate::metrics::delivery()` registers its per-class counters in this order (the
        // test lives here: metrics is below room in the stack).
        for (i, c) in [Class::Protected, Class::Normal, Class::Low]
            .into_iter()
            .enumerate()
        {
            assert_eq!(class_index(c), i);
        }
    }

    fn payload(seq: u64, class: Class) -> Payload {
        Payload {
            class,
            frame: Bytes::from(seq.to_be_bytes().to_vec()),
            datagram: None,
            history: None,
        }
    }

    #[test]
    fn reads_in_order_then_empty() {
        let ring = Ring::new(8);
        for _ in 0..5 {
            ring.publish(10, |seq, _| payload(seq, Class::Normal));
        }
        for pos in 0..5 {
            match ring.read(pos) {
                Read::Entry(e) => assert_eq!(e.seq, pos + 1),
                other => panic!("pos {pos}: {other:?}"),
            }
        }
        assert!(matches!(ring.read(5), Read::Empty));
    }

    #[test]
    fn overwritten_positions_report_lag_with_the_oldest_readable() {
        let ring = Ring::new(4);
        for _ in 0..10 {
            ring.publish(10, |seq, _| payload(seq, Class::Normal));
        }
        match ring.read(2) {
            Read::Lagged { oldest } => assert_eq!(oldest, 6),
            other => panic!("{other:?}"),
        }
        assert!(matches!(ring.read(6), Read::Entry(e) if e.seq == 7));
    }

    #[test]
    fn cumulative_counts_give_exact_gaps_by_class() {
        let ring = Ring::new(4);
        let classes = [
            Class::Low,
            Class::Normal,
            Class::Low,
            Class::Protected,
            Class::Normal,
        ];
        for c in classes {
            ring.publish(10, |seq, _| payload(seq, c));
        }
        let Read::Entry(last) = ring.read(4) else {
            panic!("last entry missing")
        };
        assert_eq!(last.cum, [1, 2, 2]);
    }

    #[test]
    fn the_observer_sees_placed_messages_in_seq_order_and_no_events_or_remote_ones() {
        let ring = Ring::new(8);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        assert!(ring.observe(Box::new(move |e: &Entry| {
            s.lock().expect("lock").push(e.seq)
        })));
        assert!(!ring.observe(Box::new(|_: &Entry| {})), "set once");
        let held = ring
            .publish_held(
                10,
                |seq, _| payload(seq, Class::Normal),
                |_, _| Hold::UntilResolved,
            )
            .expect("open");
        ring.publish(10, |seq, _| payload(seq, Class::Low));
        assert!(ring.publish_event(10, payload(0, Class::Protected)));
        assert!(
            seen.lock().expect("lock").is_empty(),
            "nothing placed yet but the event"
        );
        assert!(ring.resolve(held.0, true));
        assert_eq!(*seen.lock().expect("lock"), vec![1, 2]);
        assert!(ring.place_remote(9, 20, payload(9, Class::Normal)));
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![1, 2],
            "remote ones are not observed"
        );
    }

    #[test]
    fn remote_messages_follow_the_remote_numbering_and_refuse_duplicates() {
        let ring = Ring::new(8);
        assert!(ring.place_remote(5, 100, payload(5, Class::Normal)));
        assert!(
            !ring.place_remote(5, 100, payload(5, Class::Normal)),
            "duplicate"
        );
        assert!(
            !ring.place_remote(3, 100, payload(3, Class::Normal)),
            "late"
        );
        assert!(ring.place_remote(7, 90, payload(7, Class::Low)));
        let jp = ring.join_point();
        assert_eq!(
            (jp.pos, jp.last_seq, jp.messages, jp.cum),
            (2, 7, 2, [0, 1, 1])
        );
        // A local publish continues above the remote numbering, never below its timestamps.
        let (seq, ts) = ring
            .publish(50, |seq, _| payload(seq, Class::Normal))
            .expect("open");
        assert_eq!((seq, ts), (8, 100));
        ring.close();
        assert!(
            !ring.place_remote(9, 100, payload(9, Class::Normal)),
            "closed"
        );
    }

    #[test]
    fn skipped_remote_messages_are_in_the_next_entrys_counts_not_in_the_ring() {
        let ring = Ring::new(8);
        assert!(ring.place_remote(1, 10, payload(1, Class::Normal)));
        let before = ring.join_point();
        // Seqs 2..=4 never came: two normal, one low.
        ring.skip_remote([0, 2, 1]);
        assert!(ring.place_remote(5, 20, payload(5, Class::Normal)));
        let Read::Entry(e) = ring.read(before.pos) else {
            panic!("the next entry is there");
        };
        assert_eq!(e.seq, 5);
        // A reader at `before` sees three lost besides the entry itself.
        assert_eq!(e.cum, [0, 4, 1]);
        assert_eq!((before.cum, ring.join_point().messages), ([0, 1, 0], 2));
        // A member joining after it is owed none of them.
        assert_eq!(ring.join_point().cum, [0, 4, 1]);
    }

    #[test]
    fn timestamps_never_go_backwards_and_seq_strictly_increases() {
        let ring = Ring::new(4);
        let (s1, t1) = ring
            .publish(100, |seq, _| payload(seq, Class::Normal))
            .expect("open");
        let (s2, t2) = ring
            .publish(50, |seq, _| payload(seq, Class::Normal))
            .expect("open");
        assert!(s2 > s1);
        assert_eq!((t1, t2), (100, 100));
        let jp = ring.join_point();
        assert_eq!((jp.pos, jp.last_seq), (2, 2));
    }

    #[test]
    fn a_closed_ring_refuses_publishes_but_keeps_what_it_had() {
        let ring = Ring::new(4);
        ring.publish(1, |seq, _| payload(seq, Class::Normal));
        assert!(ring.close());
        assert!(!ring.close());
        assert!(ring.is_closed());
        assert!(
            ring.publish(1, |seq, _| payload(seq, Class::Normal))
                .is_none()
        );
        assert!(matches!(ring.read(0), Read::Entry(_)));
        assert!(matches!(ring.read(1), Read::Empty));
    }

    #[test]
    fn signal_wakes_once_per_notify_batch() {
        let sig = Signal::default();
        sig.notify();
        sig.notify();
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut fut = std::pin::pin!(sig.wait());
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        let mut fut = std::pin::pin!(sig.wait());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }

    #[test]
    fn watchers_add_remove_and_notify() {
        let w = Watchers::default();
        let a = Arc::new(Signal::default());
        w.add(1, a.clone());
        w.add(17, Arc::new(Signal::default()));
        assert_eq!(w.len(), 2);
        w.notify_all();
        assert!(a.pending.load(Ordering::Acquire));
        w.remove(1);
        assert_eq!(w.len(), 1);
    }

    fn seqs_placed(ring: &Ring) -> Vec<u64> {
        (0..ring.tail())
            .filter_map(|pos| match ring.read(pos) {
                Read::Entry(e) => Some(e.seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn held_messages_are_placed_in_order_once_resolved_and_dropped_ones_leave_no_trace() {
        let ring = Ring::new(16);
        let held = |ring: &Ring| {
            ring.publish_held(
                1,
                |seq, _| payload(seq, Class::Normal),
                |_, _| Hold::UntilResolved,
            )
            .expect("stamped")
        };
        assert_eq!(held(&ring).0, 1);
        assert_eq!(held(&ring).0, 2);
        // A message that needs no store, stamped behind held ones, waits for them.
        let low = ring
            .publish_held(1, |seq, _| payload(seq, Class::Low), |_, _| Hold::No)
            .expect("stamped");
        assert_eq!(low.0, 3);
        assert_eq!(held(&ring).0, 4);
        // System events do not wait.
        assert!(ring.publish_event(1, payload(0, Class::Protected)));
        assert_eq!(seqs_placed(&ring), vec![0]);
        assert_eq!(ring.held(), 4);
        assert_eq!(ring.last_seq(), 4, "assigned, placed or not");
        assert_eq!(ring.join_point().last_seq, 0, "nothing placed yet");

        // Resolved out of order: nothing moves until the front is resolved.
        assert!(!ring.resolve(2, false));
        assert_eq!(seqs_placed(&ring), vec![0]);
        assert!(ring.resolve(1, true));
        // 1 placed, 2 dropped, 3 (not held) placed right after, 4 still held.
        assert_eq!(seqs_placed(&ring), vec![0, 1, 3]);
        let jp = ring.join_point();
        assert_eq!((jp.last_seq, jp.messages), (3, 2));
        // The dropped message is in no count: the cumulative counts are of placed entries.
        assert_eq!(jp.cum, [1, 1, 1]);
        assert!(ring.resolve(4, true));
        assert_eq!(seqs_placed(&ring), vec![0, 1, 3, 4]);
        assert_eq!(ring.held(), 0);
        // Resolving what is no longer held does nothing.
        assert!(!ring.resolve(4, true));

        // A refused message takes no number.
        let refused =
            ring.publish_held(1, |seq, _| payload(seq, Class::Normal), |_, _| Hold::Refuse);
        assert_eq!(refused, Err(Refused::Hook));
        assert_eq!(
            ring.publish(1, |seq, _| payload(seq, Class::Normal))
                .map(|s| s.0),
            Some(5)
        );
    }

    #[test]
    fn a_frozen_ring_refuses_messages_not_events_and_a_closed_one_drops_what_it_held() {
        let ring = Ring::new(16);
        ring.publish_held(
            1,
            |seq, _| payload(seq, Class::Normal),
            |_, _| Hold::UntilResolved,
        )
        .expect("stamped");
        ring.freeze(true);
        assert_eq!(
            ring.publish_held(1, |seq, _| payload(seq, Class::Normal), |_, _| Hold::No),
            Err(Refused::Frozen)
        );
        assert!(ring.publish_event(1, payload(0, Class::Protected)));
        ring.freeze(false);
        assert!(
            ring.publish(1, |seq, _| payload(seq, Class::Normal))
                .is_some()
        );
        assert!(ring.close());
        assert_eq!(ring.held(), 0);
        assert!(!ring.resolve(1, true));
        assert_eq!(seqs_placed(&ring), vec![0]);
    }
}
