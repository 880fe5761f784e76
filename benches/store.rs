//! Throughput of the durable store ([`RedbStore`]): messages per second appended under group
//! commit, with a real file in a temporary directory.
//!
//! Run with `cargo bench --bench store` (under a minute on two cores) or add `-- --quick`.
//!
//! - `append/sync/N`: N concurrent submitters (tokio tasks on a two-thread runtime), each in its
//!   own room, append one 200-byte message at a time and await its ack before the next, as a
//!   client's send does in `sync` mode. Every ack waits for an fsync, so throughput comes from
//!   group commit: each transaction carries whatever queued while the previous one was syncing.
//! - `append/batched/N`: the same submitters in `batched` mode (`flush_ms` = 10): acks resolve at
//!   once, so each submitter appends its share without waiting; the timed region ends when the
//!   writer has committed every message (polling [`RedbStore::stats`]), so this is the sustained
//!   rate of the writer, not of the channel.
//!
//! Retention is on (the default `history_max` of 1000 per room), so after warm-up every append
//! also deletes the room's oldest message, as in a busy relay. Throughput: messages/s.

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use roomcast::protocol::Class;
use roomcast::store::{Durability, Op, RedbStore, Store, StoreConfig, StoredMessage};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Payload size of every message.
const BODY_BYTES: usize = 200;
/// (mode, concurrent submitters) per case.
const CASES: &[(Durability, usize)] = &[
    (Durability::Sync, 1),
    (Durability::Sync, 16),
    (Durability::Sync, 64),
    (Durability::Batched, 1),
    (Durability::Batched, 64),
];

/// One store with a sequence counter per submitter's room, kept across criterion's calls.
struct Fixture {
    store: Arc<RedbStore>,
    next_seq: Arc<Vec<AtomicU64>>,
    body: Bytes,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(durability: Durability, submitters: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = StoreConfig {
            durability,
            flush_ms: 10,
            history_max: 1000,
            history_max_age_ms: 7 * 24 * 3600 * 1000,
            cache_bytes: 1 << 30,
        };
        let store = RedbStore::open(&dir.path().join("roomcast.redb"), cfg).expect("open store");
        Fixture {
            store: Arc::new(store),
            next_seq: Arc::new((0..submitters).map(|_| AtomicU64::new(1)).collect()),
            body: Bytes::from(vec![b'x'; BODY_BYTES]),
            _dir: dir,
        }
    }

    /// Appends `total` messages split over the submitters; returns the elapsed time once every
    /// one is acked (sync) or committed (batched).
    fn run(&self, rt: &tokio::runtime::Runtime, total: u64) -> Duration {
        let submitters = self.next_seq.len() as u64;
        let committed_before = self.store.stats().jobs;
        let started = Instant::now();
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..submitters {
                let share = total / submitters + u64::from(i < total % submitters);
                let store = self.store.clone();
                let next_seq = self.next_seq.clone();
                let body = self.body.clone();
                tasks.spawn(async move {
                    let room = format!("room{i}");
                    for _ in 0..share {
                        let seq = next_seq[i as usize].fetch_add(1, Ordering::Relaxed);
                        let msg = StoredMessage {
                            seq,
                            ts: 1_700_000_000_000 + seq,
                            from: "bench".into(),
                            msg_type: "text".into(),
                            body: body.clone(),
                            class: Class::Normal,
                            recalled: false,
                        };
                        let ack = store.submit(vec![Op::Append {
                            room: room.clone(),
                            msg,
                        }]);
                        ack.wait().await.expect("ack");
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("submitter");
            }
        });
        // Batched acks resolved at submit: wait for the writer to commit them all.
        while self.store.stats().jobs < committed_before + total {
            std::thread::sleep(Duration::from_micros(200));
        }
        started.elapsed()
    }
}

fn store_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));
    for &(durability, submitters) in CASES {
        let mode = match durability {
            Durability::Sync => "sync",
            Durability::Batched => "batched",
        };
        let fixture = Fixture::new(durability, submitters);
        group.bench_function(BenchmarkId::new(mode, submitters), |b| {
            b.iter_custom(|iters| fixture.run(&rt, iters))
        });
        let stats = fixture.store.stats();
        eprintln!(
            "append/{mode}/{submitters}: {} messages in {} commits ({:.1} per commit)",
            stats.jobs,
            stats.commits,
            stats.jobs as f64 / stats.commits.max(1) as f64
        );
        fixture.store.close();
    }
    group.finish();
}

mod group {
    // In a private module, so the function the macro generates needs no doc.
    use super::store_append;
    criterion::criterion_group!(benches, store_append);
}
criterion_main!(group::benches);
