//! The room core, the rooms' real rings and the connections' real delivery readers driven
//! together, without sockets or a runtime: a property test over random joins, leaves, sends
//! (held for the store or not, kept or refused), bans, destructions, re-creations, connections
//! coming and going, timer ticks and deliveries of random size, some connections with room for
//! datagrams and some without.
//!
//! The core's own property test (`room::core`'s) checks memberships against a stand-in for the
//! rings; this one checks what reaches each connection, decoded from the frames and datagrams the
//! delivery reader writes: per room, sequence numbers strictly increase; every message placed
//! during a subscription arrives exactly once or is counted in a `Gap` of its class (protected
//! ones always arrive, or the connection is closed as too slow); a `Kicked` comes after every
//! message before the kick and nothing of that membership follows it; a destroyed room's
//! members get everything up to its end and then `RoomDestroyed`; a `Gap` reports only what was
//! skipped while the reader lagged (a reader at most one entry behind, with room for its
//! datagrams, loses nothing new); a connection is closed as too slow only after an overrun; and
//! the core's invariants (no member without a connection past the grace, the per-user room
//! limit) hold after each step.
//!
//! The effects are turned into delivery commands as `Relay::apply` does: a join's subscription
//! starts at the ring's join point when applied, a resumed one where the core counted from.

use super::*;
use crate::policy::{BudgetConfig, Moderation};
use crate::protocol::{Message, decode_body};
use crate::room::core::{After, ConnId, Core, CoreConfig, Effect};
use crate::room::records::Op;
use crate::room::{Fanout, Hold, Outgoing};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

const USERS: [&str; 3] = ["u0", "u1", "u2"];
const ROOMS: [&str; 2] = ["r0", "r1"];
const GRACE: u64 = 1_000;
/// Small, so lagging readers shed and overrun.
const RING: usize = 8;
/// Messages stamped and not yet placed per room at most (the store's queue): the store
/// resolves the held ones in order, and at most `HELD_MAX + 1` are placed in one step.
const HELD_MAX: usize = 4;

#[derive(Debug, Clone)]
enum Input {
    Up(usize),
    Down(usize),
    Join(usize, usize),
    Leave(usize, usize),
    /// A send of one class; `held`: kept out of the ring until the store resolves it.
    Send(usize, usize, Class, bool),
    /// Many sends at once from one member, none held: readers lag, shed and overrun.
    Burst(usize, usize, Class, usize),
    /// The store answers a room's oldest held message.
    Resolve(usize, bool),
    Ban(usize, usize, bool),
    Destroy(usize, bool),
    Create(usize),
    Tick(u64),
    /// A connection's delivery task wakes: at most `budget` bytes, `dgram` bytes of datagram
    /// buffer free (`None`: the connection takes no datagrams).
    Drain(usize, usize, Option<usize>),
}

fn class() -> impl Strategy<Value = Class> {
    prop_oneof![
        1 => Just(Class::Protected),
        3 => Just(Class::Normal),
        3 => Just(Class::Low),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        3 => (0..3usize).prop_map(Input::Up),
        1 => (0..6usize).prop_map(Input::Down),
        4 => (0..6usize, 0..2usize).prop_map(|(c, r)| Input::Join(c, r)),
        1 => (0..6usize, 0..2usize).prop_map(|(c, r)| Input::Leave(c, r)),
        8 => (0..6usize, 0..2usize, class(), any::<bool>())
            .prop_map(|(u, r, c, h)| Input::Send(u, r, c, h)),
        2 => (0..6usize, 0..2usize, class(), 1..14usize)
            .prop_map(|(u, r, c, n)| Input::Burst(u, r, c, n)),
        3 => (0..2usize, prop::bool::weighted(0.8)).prop_map(|(r, k)| Input::Resolve(r, k)),
        1 => (0..3usize, 0..2usize, any::<bool>()).prop_map(|(u, r, ok)| Input::Ban(u, r, ok)),
        1 => (0..2usize, any::<bool>()).prop_map(|(r, ok)| Input::Destroy(r, ok)),
        1 => (0..2usize).prop_map(Input::Create),
        1 => (0..1_500u64).prop_map(Input::Tick),
        4 => (0..6usize, 1..400usize, prop::option::of(0..200usize))
            .prop_map(|(c, b, d)| Input::Drain(c, b, d)),
    ]
}

/// A connection as the delivery reader sees it: datagrams up to `max` while `space` lasts, and
/// whether it was closed.
#[derive(Clone, Default)]
struct TestLink(Arc<Mutex<LinkState>>);

#[derive(Default)]
struct LinkState {
    max: Option<usize>,
    space: usize,
    sent: Vec<Bytes>,
    closed: bool,
}

impl TestLink {
    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl crate::server::link::Closer for TestLink {
    fn close(&self, _code: CloseCode, _reason: &str) {
        self.state().closed = true;
    }
}

impl Link for TestLink {
    fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        // Never awaited here: the test drives `apply` and `drain` itself.
        let closed = self.is_closed();
        async move {
            if !closed {
                std::future::pending::<()>().await
            }
        }
    }
    fn closed_reason(&self) -> &'static str {
        "shutdown"
    }
    fn is_closed(&self) -> bool {
        self.state().closed
    }
    fn max_datagram_size(&self) -> Option<usize> {
        self.state().max
    }
    fn datagram_space(&self) -> usize {
        self.state().space
    }
    fn send_datagram(&self, d: Bytes) -> bool {
        let mut st = self.state();
        st.space = st.space.saturating_sub(d.len());
        st.sent.push(d);
        true
    }
}

/// The delivery stream's side, collecting what is written.
struct Collect(Vec<Bytes>);

impl EventSink for Collect {
    async fn write_all(&mut self, frames: &mut [Bytes]) -> Result<(), crate::server::link::Gone> {
        self.0.extend(frames.iter().cloned());
        Ok(())
    }
}

/// One subscription as the commands sent to the reader describe it.
#[derive(Debug)]
struct SubRec {
    epoch: u64,
    start: u64,
    /// Set by an `Unsubscribe`: the first position after the membership, and whether `Kicked`.
    until: Option<(u64, bool)>,
}

/// What one connection has received of one room id, over all its subscriptions.
#[derive(Debug, Default)]
struct Track {
    subs: VecDeque<SubRec>,
    last_seq: u64,
    /// Per class (`class_index`): messages received, and of ended subscriptions, placed.
    received: ClassCounts,
    gaps: ClassCounts,
    ended: ClassCounts,
}

struct Conn {
    user: String,
    delivery: Delivery<TestLink, Collect>,
    tx: flume::Sender<DeliveryCmd>,
    subs: Vec<Sub>,
    tracks: BTreeMap<String, Track>,
}

/// What one incarnation of a room placed: position → (seq, class).
type Log = BTreeMap<u64, (u64, Class)>;

struct World {
    core: Core,
    live: BTreeMap<String, Arc<Room>>,
    /// Every incarnation's placed messages, by (room, epoch); and seq → (epoch, pos).
    logs: BTreeMap<(String, u64), Log>,
    seqs: BTreeMap<(String, u64), (u64, u64)>,
    /// Ring positions read into the logs so far, per incarnation.
    logged: BTreeMap<(String, u64), u64>,
    held: BTreeMap<String, VecDeque<u64>>,
    moderation: BTreeMap<String, Moderation>,
    /// The next sequence number per room id: a new incarnation continues above the old one (as
    /// after a restart), so a seq names one message of the id.
    next_seq: BTreeMap<String, u64>,
    next_epoch: u64,
    now: u64,
    next_conn: ConnId,
    conns: BTreeMap<ConnId, Conn>,
}

fn budget() -> BudgetConfig {
    BudgetConfig {
        window_ms: 1000,
        total: u32::MAX / 4,
        reserved: 0,
        protected_extra: 0,
    }
}

impl World {
    fn new(single_room: bool) -> Self {
        let mut w = World {
            core: Core::new(CoreConfig {
                rooms_per_user: 2,
                single_room,
                offline_grace_ms: GRACE,
            }),
            live: BTreeMap::new(),
            logs: BTreeMap::new(),
            seqs: BTreeMap::new(),
            logged: BTreeMap::new(),
            held: BTreeMap::new(),
            moderation: BTreeMap::new(),
            next_seq: BTreeMap::new(),
            next_epoch: 1,
            now: 0,
            next_conn: 1,
            conns: BTreeMap::new(),
        };
        for r in ROOMS {
            w.create(r);
        }
        w
    }

    fn create(&mut self, id: &str) {
        if self.live.contains_key(id) {
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let room = Arc::new(Room::new(
            id.into(),
            id.into(),
            epoch,
            self.now,
            RING,
            budget(),
        ));
        room.ring
            .resume_seq(self.next_seq.get(id).copied().unwrap_or(1));
        self.live.insert(id.to_owned(), room);
        let fx = self.core.room_created(id, epoch);
        self.apply(fx);
    }

    /// The `i`-th live connection, counted round (none when there is none).
    fn conn_id(&self, i: usize) -> Option<ConnId> {
        let n = self.conns.len();
        (n > 0)
            .then(|| self.conns.keys().nth(i % n).copied())
            .flatten()
    }

    /// Records what the rings placed since the last look (publishes and resolves place at most
    /// `HELD_MAX + 1` entries at a time, well within the ring).
    fn log_rings(&mut self) {
        for room in self.live.values() {
            let key = (room.id.clone(), room.epoch);
            let from = self.logged.get(&key).copied().unwrap_or(0);
            let tail = room.ring.tail();
            for pos in from..tail {
                let Read::Entry(e) = room.ring.read(pos) else {
                    panic!(
                        "{}@{} overwrote position {pos} within a step",
                        room.id, room.epoch
                    );
                };
                assert!(e.seq > 0, "only messages are published here");
                let log = self.logs.entry(key.clone()).or_default();
                if let Some((_, &(last, _))) = log.last_key_value() {
                    assert!(
                        e.seq > last,
                        "seq not increasing in the ring of {}",
                        room.id
                    );
                }
                log.insert(pos, (e.seq, e.class));
                let old = self
                    .seqs
                    .insert((room.id.clone(), e.seq), (room.epoch, pos));
                assert!(old.is_none(), "seq {} of {} placed twice", e.seq, room.id);
            }
            self.logged.insert(key, tail);
            self.next_seq
                .insert(room.id.clone(), room.ring.last_seq() + 1);
        }
    }

    fn point(live: &BTreeMap<String, Arc<Room>>) -> impl FnMut(&str) -> JoinPoint + '_ {
        |id| {
            live.get(id)
                .map(|r| r.ring.join_point())
                .unwrap_or_default()
        }
    }

    /// Turns the core's effects into delivery commands, as the relay does.
    fn apply(&mut self, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Subscribe {
                    conn,
                    room,
                    epoch,
                    at,
                    resumed,
                } => {
                    let Some(target) = self.live.get(&room).filter(|r| r.epoch == epoch).cloned()
                    else {
                        continue;
                    };
                    let (at, first) = match resumed {
                        None => (target.ring.join_point(), None),
                        Some(missed) => {
                            let frame = encode_frame(&Event::Resumed {
                                room: room.clone(),
                                missed,
                                last_seq: at.last_seq,
                            });
                            (at, Some(frame))
                        }
                    };
                    let c = self.conns.get_mut(&conn).expect("subscribe of a live conn");
                    c.tracks.entry(room).or_default().subs.push_back(SubRec {
                        epoch,
                        start: at.pos,
                        until: None,
                    });
                    c.tx.send(DeliveryCmd::Subscribe {
                        room: target,
                        at,
                        first,
                    })
                    .expect("reader alive");
                }
                Effect::Unsubscribe {
                    conn,
                    room,
                    epoch,
                    kicked,
                    until,
                } => {
                    let c = self
                        .conns
                        .get_mut(&conn)
                        .expect("unsubscribe of a live conn");
                    let rec = c
                        .tracks
                        .get_mut(&room)
                        .and_then(|t| {
                            t.subs
                                .iter_mut()
                                .rev()
                                .find(|s| s.epoch == epoch && s.until.is_none())
                        })
                        .unwrap_or_else(|| panic!("{conn} unsubscribed from {room}@{epoch}"));
                    assert!(rec.start <= until.pos, "a membership ends before it began");
                    rec.until = Some((until.pos, kicked.is_some()));
                    c.tx.send(DeliveryCmd::Unsubscribe {
                        room,
                        epoch,
                        kicked,
                        until,
                    })
                    .expect("reader alive");
                }
                Effect::Joined { .. } | Effect::Left { .. } | Effect::Store { .. } => {}
            }
        }
    }

    fn step(&mut self, input: Input) {
        match input {
            Input::Up(u) => {
                let c = self.next_conn;
                self.next_conn += 1;
                let (tx, rx) = flume::unbounded();
                let link = TestLink::default();
                let delivery = Delivery {
                    conn: link,
                    stream: Collect(Vec::new()),
                    transport: TransportKind::WebSocket,
                    rx,
                    signal: Arc::new(Signal::default()),
                    conn_id: c,
                    batch_bytes: usize::MAX,
                    slow_close: Duration::from_secs(1),
                    window: Duration::ZERO,
                };
                self.conns.insert(
                    c,
                    Conn {
                        user: USERS[u].to_owned(),
                        delivery,
                        tx,
                        subs: Vec::new(),
                        tracks: BTreeMap::new(),
                    },
                );
                let fx = self.core.conn_up(c, USERS[u], &mut Self::point(&self.live));
                self.apply(fx);
            }
            Input::Down(i) => {
                let Some(c) = self.conn_id(i) else { return };
                self.down(c);
            }
            Input::Join(i, r) => {
                let Some(c) = self.conn_id(i) else { return };
                let user = self.conns[&c].user.clone();
                let m = self.moderation.get(ROOMS[r]).cloned().unwrap_or_default();
                if self.core.check_join(ROOMS[r], &user, &m, self.now).is_err() {
                    return;
                }
                let joined = {
                    let point = &mut Self::point(&self.live);
                    self.core.join(self.now, c, &user, ROOMS[r], point)
                };
                if let Ok(fx) = joined {
                    self.apply(fx);
                }
            }
            Input::Leave(i, r) => {
                let Some(c) = self.conn_id(i) else { return };
                let user = self.conns[&c].user.clone();
                let left = {
                    let point = &mut Self::point(&self.live);
                    self.core.leave(c, &user, ROOMS[r], point)
                };
                if let Ok(fx) = left {
                    self.apply(fx);
                }
            }
            Input::Send(i, r, class, held) => self.send(i, r, class, held),
            Input::Burst(i, r, class, n) => {
                for _ in 0..n {
                    self.send(i, r, class, false);
                    self.log_rings();
                }
            }
            Input::Resolve(r, keep) => {
                let Some(room) = self.live.get(ROOMS[r]).cloned() else {
                    return;
                };
                if let Some(seq) = self.held.get_mut(ROOMS[r]).and_then(|q| q.pop_front()) {
                    room.resolve(seq, keep);
                }
            }
            Input::Ban(u, r, ok) => {
                let Some(room) = self.live.get(ROOMS[r]).cloned() else {
                    return;
                };
                let after = After::Kick {
                    room: ROOMS[r].into(),
                    epoch: room.epoch,
                    users: vec![USERS[u].into()],
                    reason: KickReason::Banned,
                };
                let Effect::Store { id, .. } = self.core.submit(vec![], after) else {
                    unreachable!("submit stores")
                };
                if ok {
                    let m = self.moderation.entry(ROOMS[r].to_owned()).or_default();
                    m.bans.insert(USERS[u].into(), self.now + GRACE);
                }
                let fx = self.core.stored(id, ok, &mut Self::point(&self.live));
                self.apply(fx);
            }
            Input::Destroy(r, ok) => self.destroy(ROOMS[r], ok),
            Input::Create(r) => self.create(ROOMS[r]),
            Input::Tick(dt) => {
                self.now += dt;
                let mut fx = Vec::new();
                for r in ROOMS {
                    let point = &mut Self::point(&self.live);
                    fx.extend(self.core.tick(self.now, r, &|_| false, point));
                }
                self.apply(fx);
            }
            Input::Drain(i, budget, dgram) => {
                let Some(c) = self.conn_id(i) else { return };
                self.drain(c, budget, dgram);
            }
        }
        self.log_rings();
    }

    /// A send of the `i`-th member of room `r` (counted round); `held`: kept out of the ring
    /// until the store resolves it.
    fn send(&mut self, i: usize, r: usize, class: Class, held: bool) {
        let Some(room) = self.live.get(ROOMS[r]).cloned() else {
            return;
        };
        // The `i`-th member sends (counted round), or a non-member is refused.
        let members: Vec<String> = self
            .core
            .room(ROOMS[r])
            .map(|m| m.members().map(|(u, _)| u.clone()).collect())
            .unwrap_or_default();
        let from = match members.len() {
            0 => USERS[i % USERS.len()].to_owned(),
            n => members[i % n].clone(),
        };
        let m = self.moderation.get(ROOMS[r]).cloned().unwrap_or_default();
        let g = crate::policy::GlobalPolicy::default();
        if self
            .core
            .check_send(ROOMS[r], &from, &m, &g, self.now)
            .is_err()
        {
            assert!(!members.contains(&from) || m.muted_until(&from, self.now).is_some());
            return;
        }
        // The store's queue is bounded: past it, the sender waits (here: does not send).
        if room.ring.held() >= HELD_MAX {
            return;
        }
        let queue = self.held.entry(ROOMS[r].to_owned()).or_default();
        let msg = Outgoing {
            from,
            msg_type: "t".into(),
            body: Bytes::from_static(b"x"),
            class,
            keep_in_history: true,
        };
        let mut stamped = |_: &crate::room::Payload, _| match held {
            true => Hold::UntilResolved,
            false => Hold::No,
        };
        if let Ok((seq, _)) = room.publish_with(msg, self.now, &mut stamped)
            && held
        {
            queue.push_back(seq);
        }
    }

    fn down(&mut self, c: ConnId) {
        self.conns.remove(&c);
        let fx = self
            .core
            .conn_down(self.now, c, &mut Self::point(&self.live));
        self.apply(fx);
    }

    /// A destruction as the relay makes it: the ring frozen while stored, then closed (or thawed).
    fn destroy(&mut self, id: &str, ok: bool) {
        let Some(room) = self.live.get(id).cloned() else {
            return;
        };
        room.ring.freeze(true);
        let after = After::Destroy {
            room: id.into(),
            epoch: room.epoch,
        };
        let Effect::Store { id: change, .. } =
            self.core.submit(vec![Op::DeleteRoom(id.into())], after)
        else {
            unreachable!("submit stores")
        };
        if !ok {
            self.core
                .stored(change, false, &mut |_| JoinPoint::default());
            room.ring.freeze(false);
            return;
        }
        self.log_rings();
        self.live.remove(id);
        self.held.remove(id);
        self.moderation.remove(id);
        room.close(DestroyReason::Manual);
        let fx = self
            .core
            .stored(change, true, &mut |_| room.ring.join_point());
        self.apply(fx);
    }

    /// One wake-up of a connection's delivery task: its commands, then one drain.
    fn drain(&mut self, c: ConnId, budget: usize, dgram: Option<usize>) {
        let conn = self.conns.get_mut(&c).expect("live conn");
        {
            let mut st = conn.delivery.conn.state();
            st.max = dgram.map(|_| 180);
            st.space = dgram.unwrap_or(0);
        }
        conn.delivery.batch_bytes = budget;
        let mut out = Vec::new();
        while let Ok(cmd) = conn.delivery.rx.try_recv() {
            let subscribe = matches!(cmd, DeliveryCmd::Subscribe { .. });
            let before = conn.subs.len();
            conn.delivery.apply(cmd, &mut conn.subs, &mut out);
            if subscribe {
                assert_eq!(conn.subs.len(), before + 1, "{c} subscribed twice");
            }
        }
        // What this drain may lose: per room id, nothing new when every subscription of it is at
        // most one entry behind (no shedding, no overrun) and datagrams all fit; then its `Gap`s
        // only report what was skipped before. A protected loss needs an overrun.
        let behind = |s: &Sub| s.room.ring.tail().saturating_sub(s.cursor);
        let backlog: u64 = conn.subs.iter().map(behind).sum();
        let dgrams_fit = dgram.is_none_or(|d| d >= 180 * backlog as usize);
        let mut lossless: BTreeMap<String, ClassCounts> = BTreeMap::new();
        for s in &conn.subs {
            let pending = lossless.entry(s.room.id.clone()).or_default();
            for (p, m) in pending.iter_mut().zip(s.missed) {
                *p += m;
            }
        }
        lossless.retain(|room, _| {
            dgrams_fit
                && conn
                    .subs
                    .iter()
                    .filter(|s| &s.room.id == room)
                    .all(|s| behind(s) <= 1)
        });
        let overrun = conn.subs.iter().any(|s| behind(s) > s.room.ring.capacity());
        let mut tally = Tally::default();
        let drained = conn.delivery.drain(&mut conn.subs, &mut out, &mut tally);
        if matches!(drained, Drained::TooSlow) {
            assert!(
                overrun,
                "{c} closed as too slow with no subscription overrun"
            );
        }
        let datagrams = std::mem::take(&mut conn.delivery.conn.state().sent);
        let stream: Vec<Event> = out
            .iter()
            .map(|f| decode_body::<Event>(&f[4..]).expect("a frame the reader wrote decodes"))
            .collect();
        let mut dgrams: Vec<Event> = datagrams
            .iter()
            .map(|d| decode_body::<Event>(d).expect("a datagram the reader sent decodes"))
            .collect();
        // The reader wrote each message to the stream or as a datagram, in its reading order
        // (per room, seq order). Put the datagrams back in that order: before a stream message
        // of their room with a higher seq, and before the end of the membership they were read
        // in (a `Kicked` or `RoomDestroyed`).
        let mut gaps: BTreeMap<String, ClassCounts> = BTreeMap::new();
        for ev in &stream {
            if let Event::Gap { room, low, normal } = ev {
                let g = gaps.entry(room.clone()).or_default();
                g[class_index(Class::Low)] += low;
                g[class_index(Class::Normal)] += normal;
            }
        }
        for (room, pending) in &lossless {
            let g = gaps.get(room).copied().unwrap_or_default();
            assert!(
                (0..3).all(|k| g[k] <= pending[k]),
                "{c} told a Gap of {room} {g:?} with nothing lost but {pending:?} before"
            );
        }
        for ev in stream {
            let before = match &ev {
                Event::Message(m) => Some((m.room.clone(), Bound::Seq(m.seq))),
                Event::Kicked { room, .. } => self.ending(c, room, true),
                Event::RoomDestroyed { room, .. } => self.ending(c, room, false),
                _ => None,
            };
            if let Some((room, bound)) = before {
                let (first, rest): (Vec<Event>, Vec<Event>) = std::mem::take(&mut dgrams)
                    .into_iter()
                    .partition(|d| self.read_before(d, &room, bound));
                dgrams = rest;
                for d in first {
                    self.observe(c, d);
                }
            }
            self.observe(c, ev);
        }
        for d in dgrams {
            self.observe(c, d);
        }
        if matches!(drained, Drained::TooSlow) {
            // The task closes the connection; the session's end takes it out of the core.
            self.down(c);
        }
    }

    /// The membership of `room` that a `Kicked` (or `RoomDestroyed`) now ends on `c`: the first
    /// one ended by a kick (or still open), as (epoch, its end).
    fn ending(&self, c: ConnId, room: &str, kicked: bool) -> Option<(String, Bound)> {
        let t = self.conns[&c].tracks.get(room)?;
        let rec = t.subs.iter().find(|s| match s.until {
            Some((_, k)) => kicked && k,
            None => !kicked,
        })?;
        let end = match rec.until {
            Some((end, _)) => end,
            None => self
                .logged
                .get(&(room.to_owned(), rec.epoch))
                .copied()
                .unwrap_or(0),
        };
        Some((room.to_owned(), Bound::End(rec.epoch, end)))
    }

    /// Whether datagram `d` was read before the stream event that `room`/`bound` describe.
    fn read_before(&self, d: &Event, room: &str, bound: Bound) -> bool {
        let Event::Message(m) = d else { return false };
        if m.room != room {
            return false;
        }
        match bound {
            Bound::Seq(s) => m.seq < s,
            Bound::End(epoch, end) => self
                .seqs
                .get(&(m.room.clone(), m.seq))
                .is_some_and(|&(e, pos)| e < epoch || (e == epoch && pos < end)),
        }
    }

    fn expected(&self, room: &str, rec: &SubRec, end: u64) -> ClassCounts {
        let mut n = [0; 3];
        if let Some(log) = self.logs.get(&(room.to_owned(), rec.epoch)) {
            for (_, (_, class)) in log.range(rec.start..end) {
                n[class_index(*class)] += 1;
            }
        }
        n
    }

    /// Ends the front subscription of `room` on `c` at `end` (its position after the last
    /// message it covers).
    fn end_front(&mut self, c: ConnId, room: &str, end: u64) {
        let rec = {
            let conn = self.conns.get_mut(&c).expect("live conn");
            let t = conn.tracks.get_mut(room).expect("tracked room");
            t.subs.pop_front().expect("a subscription to end")
        };
        let n = self.expected(room, &rec, end);
        let t = self
            .conns
            .get_mut(&c)
            .and_then(|c| c.tracks.get_mut(room))
            .expect("tracked room");
        for (e, n) in t.ended.iter_mut().zip(n) {
            *e += n;
        }
    }

    /// Pops the subscriptions of `room` that ended untold (a leave), before the next one.
    fn pop_untold(&mut self, c: ConnId, room: &str) {
        loop {
            let t = &self.conns[&c].tracks[room];
            match t.subs.front() {
                Some(SubRec {
                    until: Some((end, false)),
                    ..
                }) => {
                    let end = *end;
                    self.end_front(c, room, end);
                }
                _ => return,
            }
        }
    }

    /// Everything of ended subscriptions is accounted for: received once, or in a `Gap`.
    fn exact(&self, c: ConnId, room: &str, what: &str) {
        let t = &self.conns[&c].tracks[room];
        let p = class_index(Class::Protected);
        assert_eq!(
            t.received[p], t.ended[p],
            "{c} in {room} at {what}: protected received {} of {}",
            t.received[p], t.ended[p]
        );
        for k in [class_index(Class::Normal), class_index(Class::Low)] {
            assert_eq!(
                t.received[k] + t.gaps[k],
                t.ended[k],
                "{c} in {room} at {what}: class {k}: received {} + gaps {} != placed {}",
                t.received[k],
                t.gaps[k],
                t.ended[k]
            );
        }
    }

    fn observe(&mut self, c: ConnId, ev: Event) {
        match ev {
            Event::Message(Message {
                room, seq, class, ..
            }) => {
                let (epoch, pos) = *self
                    .seqs
                    .get(&(room.clone(), seq))
                    .unwrap_or_else(|| panic!("{c} got {room} seq {seq}, never placed"));
                {
                    let t = self.conns[&c].tracks.get(&room).expect("tracked room");
                    assert!(
                        seq > t.last_seq,
                        "{c}: {room} seq {seq} after {}",
                        t.last_seq
                    );
                }
                // Subscriptions ended untold before this one are done; it must be in the next.
                loop {
                    let t = &self.conns[&c].tracks[&room];
                    let Some(front) = t.subs.front() else {
                        panic!("{c} got {room} seq {seq} outside any membership");
                    };
                    let inside = front.epoch == epoch
                        && front.start <= pos
                        && front.until.is_none_or(|(end, _)| pos < end);
                    if inside {
                        break;
                    }
                    match front.until {
                        Some((end, false)) => self.end_front(c, &room, end),
                        _ => panic!(
                            "{c} got {room} seq {seq} (epoch {epoch} pos {pos}) outside its \
                             membership {front:?}: after its end or its Kicked"
                        ),
                    }
                }
                let t = self
                    .conns
                    .get_mut(&c)
                    .and_then(|c| c.tracks.get_mut(&room))
                    .expect("tracked room");
                t.last_seq = seq;
                t.received[class_index(class)] += 1;
            }
            Event::Gap { room, low, normal } => {
                let t = self
                    .conns
                    .get_mut(&c)
                    .and_then(|c| c.tracks.get_mut(&room))
                    .unwrap_or_else(|| panic!("{c} got a Gap of {room}, never subscribed"));
                t.gaps[class_index(Class::Low)] += low;
                t.gaps[class_index(Class::Normal)] += normal;
            }
            Event::Kicked { room, .. } => {
                self.pop_untold(c, &room);
                let front = self.conns[&c].tracks[&room].subs.front();
                let end = match front {
                    Some(SubRec {
                        until: Some((end, true)),
                        ..
                    }) => *end,
                    other => panic!("{c} told Kicked from {room} with no kick pending: {other:?}"),
                };
                self.end_front(c, &room, end);
                self.exact(c, &room, "Kicked");
            }
            Event::RoomDestroyed { room, .. } => {
                self.pop_untold(c, &room);
                let front = self.conns[&c].tracks[&room].subs.front();
                let Some(rec) = front.filter(|s| s.until.is_none()) else {
                    panic!("{c} told {room} destroyed while not reading it: {front:?}")
                };
                let key = (room.clone(), rec.epoch);
                assert!(
                    self.live.get(&room).is_none_or(|r| r.epoch != rec.epoch),
                    "{room}@{} told destroyed while live",
                    rec.epoch
                );
                let end = self.logged.get(&key).copied().unwrap_or(0);
                self.end_front(c, &room, end);
                self.exact(c, &room, "RoomDestroyed");
            }
            Event::Resumed { room, .. } => {
                assert!(
                    self.conns[&c].tracks.contains_key(&room),
                    "{c} resumed in {room}, never subscribed"
                );
            }
            other => panic!("{c} got an unexpected event {other:?}"),
        }
    }

    /// Ends everything: the held messages resolved, every room destroyed, every reader drained
    /// to the end. Then every subscription ended with its messages accounted for exactly.
    fn finish(&mut self) {
        for r in ROOMS {
            if let (Some(room), Some(q)) = (self.live.get(r).cloned(), self.held.get_mut(r)) {
                for seq in q.drain(..) {
                    room.resolve(seq, true);
                }
            }
            self.log_rings();
            self.destroy(r, true);
        }
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for c in ids {
            for _ in 0..4 {
                if self.conns.contains_key(&c) {
                    self.drain(c, usize::MAX, Some(usize::MAX));
                }
            }
            let Some(conn) = self.conns.get(&c) else {
                continue;
            };
            // Read to the end: memberships ended untold (leaves) are over too.
            let rooms: Vec<String> = conn.tracks.keys().cloned().collect();
            for room in rooms {
                self.pop_untold(c, &room);
                let t = &self.conns[&c].tracks[&room];
                assert!(
                    t.subs.is_empty(),
                    "{c} never saw the end of {room}: {:?}",
                    t.subs
                );
                self.exact(c, &room, "the end");
            }
        }
    }
}

/// Where a datagram's place among the stream frames ends.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Before the stream message of this seq.
    Seq(u64),
    /// Before the end of the membership reading (epoch, below this position).
    End(u64, u64),
}

proptest! {
    // 256 cases of up to 100 inputs by default; for a longer search:
    // PROPTEST_CASES=20000 cargo test --lib delivery_props
    #![proptest_config(ProptestConfig::with_cases(crate::room::core::tests::props::cases()))]

    #[test]
    fn every_message_of_a_membership_arrives_once_or_is_counted_in_a_gap(
        single_room in any::<bool>(),
        inputs in proptest::collection::vec(input(), 1..100),
    ) {
        let mut w = World::new(single_room);
        for i in inputs {
            w.step(i);
            if let Err(e) = w.core.check() {
                panic!("core invariant: {e}");
            }
        }
        w.finish();
    }
}
