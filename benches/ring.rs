//! Micro-benchmarks of a room's publish side: [`Room`] as a [`Fanout`] and [`Ring::read`].
//!
//! Run with `cargo bench --bench ring` (about a minute and a half on two idle cores) or add
//! `-- --quick`. Every publish case times publishes one by one with the message built outside the
//! timed region, so the two `Instant::now` calls per publish (a few tens of ns) weigh on all alike.
//!
//! - `publish/*`: one 200-byte normal message published into a room with 1, 100 and 10,000
//!   registered watchers; the time includes encoding the frame once, storing it in the ring
//!   (dropping the entry it overwrites, the ring being full as in a busy room) and notifying every
//!   watcher. Two wake-up states:
//!   - `steady`: every signal is already pending (nobody consumed the previous notification), so a
//!     notify is one atomic swap; this is the cost while subscribers are busy writing;
//!   - `wake_all`: before each publish every signal is re-armed through its public API (the pending
//!     flag consumed by a `wait()` and a waker registered by a second `wait()`, outside the timed
//!     region), so every notify swaps the flag *and* wakes a waker. The waker only counts (an
//!     atomic increment); a real tokio waker also schedules the task, which costs more.
//!
//!   Throughput is in watchers notified per second.
//! - `read/drain/N`: one reader reading N entries at its own cursor. Throughput: entries/s.
//! - `read/fanout/R`: R readers (cursors in a `Vec`, one thread) each reading the same newly
//!   published entry; the publish is outside the timed region. Throughput: deliveries/s.
//! - `concurrent/*`: the publisher's cost alone (`publish_alone`) and with a second thread running:
//!   one reading the ring continuously at its own cursor (`publish_with_reader`), and two controls
//!   that tell apart where a reader's cost to the publisher comes from, a thread that only spins
//!   (`publish_beside_busy_thread`: sharing the machine) and one that only polls `tail`
//!   (`publish_beside_tail_poller`: what a caught-up reader does). Each prints to stderr what the
//!   second thread saw and, on Linux, how long each thread waited for a CPU: the pair needs both
//!   cores of a two-core machine, so anything else running skews these first.
//!
//! [`Ring::read`]: roomcast::room::Ring::read

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use roomcast::policy::BudgetConfig;
use roomcast::protocol::Class;
use roomcast::room::{Fanout, Outgoing, Read, Room, Signal};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

/// The default `limits.ring_capacity`.
const RING_CAPACITY: usize = 4096;
/// Wall clock handed to `publish`; constant, timestamps are made monotonic by the ring.
const NOW_MS: u64 = 1_700_000_000_000;
/// Watcher counts for the publish benchmarks and reader counts for the fan-out benchmarks.
const FANOUT: [u64; 3] = [1, 100, 10_000];

fn room() -> Room {
    // Publishing does not consult the ingress budget (senders call `admit` first); any will do.
    let budget = BudgetConfig {
        window_ms: 1000,
        total: u32::MAX,
        reserved: 0,
        protected_extra: 0,
    };
    Room::new("bench".into(), "Bench".into(), 1, 0, RING_CAPACITY, budget)
}

fn message() -> Outgoing {
    Outgoing {
        from: "user-0001".into(),
        msg_type: "chat".into(),
        body: Bytes::from(vec![b'x'; 200]),
        class: Class::Normal,
        keep_in_history: true,
    }
}

/// Fills the ring so every later publish overwrites (and drops) an entry, as in a busy room.
fn fill(room: &Room) {
    for _ in 0..room.ring.capacity() {
        room.publish(message(), NOW_MS);
    }
}

/// Times `iters` publishes one by one, running `before_each` and building each message outside
/// the timed region.
fn time_publishes(room: &Room, iters: u64, mut before_each: impl FnMut()) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        before_each();
        let m = message();
        let start = Instant::now();
        black_box(room.publish(m, NOW_MS));
        timed += start.elapsed();
    }
    timed
}

/// A waker that counts its wake-ups, standing in for a delivery task's waker.
#[derive(Default)]
struct CountingWaker(AtomicU64);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Puts `signal` in the state of a delivery task asleep in `wait()`: nothing pending and a waker
/// registered. The first poll consumes a pending notification (or registers); the second finds
/// nothing pending and registers the waker.
fn arm(signal: &Signal, cx: &mut Context<'_>) {
    let _ = pin!(signal.wait()).poll(cx);
    let asleep = pin!(signal.wait()).poll(cx).is_pending();
    assert!(asleep, "a signal with nothing pending must wait");
}

fn watched_room(n: u64) -> (Room, Vec<Arc<Signal>>) {
    let room = room();
    let signals: Vec<Arc<Signal>> = (0..n).map(|_| Arc::new(Signal::default())).collect();
    for (conn, s) in signals.iter().enumerate() {
        room.watchers.add(conn as u64, s.clone());
    }
    assert_eq!(room.watchers.len() as u64, n);
    fill(&room);
    (room, signals)
}

fn publish(c: &mut Criterion) {
    let sched = sched_ns();
    let mut group = c.benchmark_group("publish");
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    let mut cx = Context::from_waker(&waker);
    for n in FANOUT {
        let (room, signals) = watched_room(n);
        group.throughput(Throughput::Elements(n));

        // `fill` left every signal pending: each notify is one swap and no wake.
        group.bench_with_input(BenchmarkId::new("steady", n), &n, |b, _| {
            b.iter_custom(|iters| time_publishes(&room, iters, || {}))
        });

        // Check the re-arming does what the benchmark claims: one wake per watcher.
        let before = counter.0.load(Ordering::Relaxed);
        signals.iter().for_each(|s| arm(s, &mut cx));
        room.publish(message(), NOW_MS);
        assert_eq!(counter.0.load(Ordering::Relaxed) - before, n);

        group.bench_with_input(BenchmarkId::new("wake_all", n), &n, |b, _| {
            b.iter_custom(|iters| {
                time_publishes(&room, iters, || {
                    signals.iter().for_each(|s| arm(s, &mut cx))
                })
            })
        });
    }
    group.finish();
    eprintln!("publish group: {}", sched_report(sched, sched_ns()));
}

fn read(c: &mut Criterion) {
    let sched = sched_ns();
    let mut group = c.benchmark_group("read");

    let room = room();
    fill(&room);
    for n in [64u64, RING_CAPACITY as u64] {
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("drain", n), &n, |b, &n| {
            let start = room.ring.tail() - n;
            b.iter(|| {
                for pos in start..start + n {
                    match room.ring.read(pos) {
                        Read::Entry(e) => {
                            black_box(&e.frame);
                        }
                        other => panic!("position {pos}: {other:?}"),
                    }
                }
            })
        });
    }

    for r in FANOUT {
        group.throughput(Throughput::Elements(r));
        group.bench_with_input(BenchmarkId::new("fanout", r), &r, |b, &r| {
            let mut cursors = vec![room.ring.tail(); r as usize];
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    room.publish(message(), NOW_MS);
                    let start = Instant::now();
                    for cursor in cursors.iter_mut() {
                        if let Read::Entry(e) = room.ring.read(*cursor) {
                            black_box(&e.frame);
                            *cursor += 1;
                        }
                    }
                    timed += start.elapsed();
                }
                // Every reader got every message.
                assert!(cursors.iter().all(|&c| c == room.ring.tail()));
                timed
            })
        });
    }
    group.finish();
    eprintln!("read group: {}", sched_report(sched, sched_ns()));
}

/// The calling thread's time on a CPU and time spent runnable but waiting for one, in ns, from
/// Linux's `/proc/thread-self/schedstat`; `None` elsewhere. On a shared two-core machine the
/// waiting share says how far wall-clock times are inflated by other processes.
fn sched_ns() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// "on CPU x ms, waited y ms (z%)" between two `sched_ns` readings.
fn sched_report(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> String {
    match (before, after) {
        (Some((r0, w0)), Some((r1, w1))) => {
            let (run, wait) = ((r1 - r0) as f64 / 1e6, (w1 - w0) as f64 / 1e6);
            format!(
                "on CPU {run:.0} ms, waited for a CPU {wait:.0} ms ({:.0}%)",
                100.0 * wait / (run + wait).max(1e-9)
            )
        }
        _ => "no schedstat".into(),
    }
}

/// What the concurrent reader saw.
struct ReaderStats {
    delivered: u64,
    lagged: u64,
    elapsed: Duration,
}

/// Reads `room` at its own cursor until `stop`, spinning when it is caught up. After a lag it
/// skips to half a ring behind the tail, as the server's delivery task does, rather than to
/// `Lagged { oldest }`, which is the slot the publisher overwrites next.
fn read_continuously(room: &Room, stop: &AtomicBool) -> ReaderStats {
    let started = Instant::now();
    let mut cursor = room.ring.tail();
    let (mut delivered, mut lagged) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        match room.ring.read(cursor) {
            Read::Entry(e) => {
                black_box(&e.frame);
                cursor += 1;
                delivered += 1;
            }
            Read::Empty => std::hint::spin_loop(),
            Read::Lagged { oldest } => {
                let half_behind = room.ring.tail().saturating_sub(room.ring.capacity() / 2);
                cursor = oldest.max(half_behind);
                lagged += 1;
            }
        }
    }
    ReaderStats {
        delivered,
        lagged,
        elapsed: started.elapsed(),
    }
}

/// Benchmarks publishing into a fresh full room while `second` runs on another thread until told
/// to stop; prints the publisher's and the second thread's scheduling and what `second` reports.
fn publish_beside<F>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    second: F,
) where
    F: FnOnce(&Room, &AtomicBool) -> String + Send,
{
    let room = room();
    fill(&room);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            let sched = sched_ns();
            let report = second(&room, &stop);
            format!("{report}; {}", sched_report(sched, sched_ns()))
        });
        let sched = sched_ns();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| time_publishes(&room, iters, || {}))
        });
        let publisher = sched_report(sched, sched_ns());
        stop.store(true, Ordering::Relaxed);
        let other = other.join().expect("second thread");
        eprintln!("{name}: publisher {publisher}\n{name}: second thread: {other}");
    });
}

fn concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent");
    group.throughput(Throughput::Elements(1));

    let alone = room();
    fill(&alone);
    let sched = sched_ns();
    group.bench_function("publish_alone", |b| {
        b.iter_custom(|iters| time_publishes(&alone, iters, || {}))
    });
    eprintln!(
        "publish_alone: publisher {}",
        sched_report(sched, sched_ns())
    );

    // Controls, to tell apart what a reader costs the publisher: a thread that only keeps the
    // other core busy, and one that only polls `tail` (what a caught-up reader does).
    publish_beside(&mut group, "publish_beside_busy_thread", |_, stop| {
        let mut spins = 0u64;
        while !stop.load(Ordering::Relaxed) {
            spins += 1;
            std::hint::spin_loop();
        }
        format!("spun {spins} times")
    });
    publish_beside(&mut group, "publish_beside_tail_poller", |room, stop| {
        let (mut last, mut changes) = (room.ring.tail(), 0u64);
        while !stop.load(Ordering::Relaxed) {
            let tail = room.ring.tail();
            changes += u64::from(tail != last);
            last = tail;
            std::hint::spin_loop();
        }
        format!("saw tail change {changes} times")
    });
    publish_beside(&mut group, "publish_with_reader", |room, stop| {
        let start = room.ring.tail();
        let stats = read_continuously(room, stop);
        format!(
            "delivered {} of {} entries published while it ran, in {:.2?} ({:.1} ns per \
             delivered entry, including time spent waiting at the tail); lagged {} times",
            stats.delivered,
            room.ring.tail() - start,
            stats.elapsed,
            stats.elapsed.as_nanos() as f64 / stats.delivered.max(1) as f64,
            stats.lagged,
        )
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
}

mod group {
    // In a private module, so the function the macro generates needs no doc.
    use super::{concurrent, config, publish, read};
    criterion::criterion_group! {
        name = benches;
        config = config();
        targets = publish, read, concurrent
    }
}
criterion_main!(group::benches);
