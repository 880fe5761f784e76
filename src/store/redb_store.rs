//! The redb implementation of [`Store`]: see [`RedbStore`].

use super::guard::{contained, guarded};
use super::health::{Health, closed_error, now_ms};
use super::{
    Ack, AttrRecord, Durability, LoadedRoom, Op, RoomRecord, Snapshot, Store, StoreConfig,
    StoreError, StoreHealth, StoredMessage, Then,
};
use crate::metrics as m;
use crate::policy::GlobalPolicy;
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redb::{
    BackendError, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageBackend,
    StorageError, Table, TableDefinition,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::fmt::Display;
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const ROOMS: TableDefinition<&str, &[u8]> = TableDefinition::new("rooms");
const ATTRS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("attrs");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const META_FORMAT: &str = "format";
const META_GLOBAL: &str = "global";
/// Written by the recovery probe (the time of the probe, ms); nothing reads it.
const META_PROBE: &str = "probe";

/// See [`RedbStore::FORMAT_VERSION`].
const FORMAT_VERSION: u32 = 1;
/// See [`RedbStore::MAX_JOBS_PER_COMMIT`].
const MAX_JOBS_PER_COMMIT: usize = 4096;

/// See [`RedbStore::MAX_BATCHED_BACKLOG`].
const MAX_BATCHED_BACKLOG: usize = 65_536;
/// First wait of a failing store before it probes the disk; doubled after each failed probe.
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two probes.
const PROBE_MAX: Duration = Duration::from_secs(2);
/// Bytes the disk probe of [`DiskFile`] writes (and removes again).
pub(super) const PROBE_BYTES: usize = 1 << 20;
/// How long a reopen waits for reads in progress to let go of the old handle.
const REOPEN_WAIT: Duration = Duration::from_secs(5);
/// What to do about a damaged store file, in every message that reports one.
const DAMAGED_ADVICE: &str = "restore it from a backup, or move it away to start with an empty \
                              store (its rooms, attributes and history are then lost)";

type AckSender = oneshot::Sender<Result<(), StoreError>>;

/// Where a store keeps its file: opens it as redb storage, and tells whether the disk takes
/// writes again after a failure. [`DiskFile`] is the plain file; a wrapper can stand between
/// redb and the file (a fault-injecting one in tests, for example).
pub trait StoreFile: Send + Sync + 'static {
    /// The file, for messages (and the empty-file check at open).
    fn path(&self) -> &Path;

    /// Opens the file, creating it if missing, as redb storage.
    fn open(&self) -> io::Result<Box<dyn StorageBackend>>;

    /// Whether the disk takes writes again: a failing store asks this before it tries a real
    /// write, so a disk that is still full costs no reopen of the database.
    fn probe(&self) -> io::Result<()>;
}

/// The store file on the local filesystem.
#[derive(Debug, Clone)]
pub struct DiskFile {
    path: PathBuf,
}

impl DiskFile {
    /// The file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskFile { path: path.into() }
    }
}

impl StoreFile for DiskFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(file_backend(&self.path)?))
    }

    /// Writes and fsyncs 1 MiB to `<file>.probe` beside the store, then removes it.
    fn probe(&self) -> io::Result<()> {
        use std::io::Write;
        let mut name = self.path.clone().into_os_string();
        name.push(".probe");
        let probe = PathBuf::from(name);
        let result = (|| {
            let mut f = std::fs::File::create(&probe)?;
            f.write_all(&vec![0u8; PROBE_BYTES])?;
            f.sync_all()
        })();
        let _ = std::fs::remove_file(&probe);
        result
    }
}

/// redb's own storage on the file at `path`, created if missing.
pub(super) fn file_backend(path: &Path) -> io::Result<redb::backends::FileBackend> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    redb::backends::FileBackend::new(file).map_err(io::Error::other)
}

/// A boxed backend as redb storage (redb takes backends by value).
#[derive(Debug)]
struct Boxed(Box<dyn StorageBackend>);

impl StorageBackend for Boxed {
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.0.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}

/// One submit.
struct Job {
    ops: Vec<Op>,
    /// `None` in `batched` mode, where the ack resolved at submit.
    ack: Option<AckSender>,
    then: Option<Then>,
}

impl Job {
    /// Tells the submitter the outcome: `then` first, then the ack.
    fn finish(self, result: &Result<(), StoreError>) {
        if let Some(then) = self.then {
            then.run(result.as_ref().map(|_| ()));
        }
        if let Some(ack) = self.ack {
            // The submitter may have stopped waiting; nothing to do then.
            let _ = ack.send(result.clone());
        }
    }
}

/// What the writer thread receives.
enum Msg {
    Job(Job),
    /// Commit everything queued, then stop.
    Close,
}

/// Counters shared by the writer and [`RedbStore::stats`].
#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    failed_commits: AtomicU64,
    refused: AtomicU64,
    reopens: AtomicU64,
    jobs: AtomicU64,
    ops: AtomicU64,
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed.
    pub commits: u64,
    /// Transactions that failed (their acks got the error).
    pub failed_commits: u64,
    /// Submits refused because the store was failing or closed.
    pub refused: u64,
    /// Times the database was reopened after a failed write.
    pub reopens: u64,
    /// Submits committed.
    pub jobs: u64,
    /// Ops committed.
    pub ops: u64,
    /// Submits waiting in the channel for the writer.
    pub queued: usize,
}

/// The durable store in one redb file, with one writer thread and group commit.
///
/// # On disk
/// Four tables, values postcard-encoded:
/// - `rooms`: room id → [`RoomRecord`];
/// - `attrs`: (room id, key) → [`AttrRecord`];
/// - `messages`: (room id, seq) → [`StoredMessage`]; the tuple key sorts a room's history by
///   sequence number, so paging and trimming are range scans;
/// - `meta`: `"format"` → [`RedbStore::FORMAT_VERSION`] (another version is refused on open),
///   `"global"` → [`GlobalPolicy`], `"probe"` → the time of the last recovery probe.
///
/// # Opening
/// [`RedbStore::open`] refuses a zero-length file (redb would take it for a new, empty store;
/// a roomcast store is never empty, so such a file was truncated or replaced), and opens with
/// redb's integrity check: the checksum of every page of the committed trees is verified, so a
/// damaged file (a zeroed page, a truncated file) is an error that names the file and what to do,
/// never a panic later. Every call into redb that reads pages (open, load, history reads, the
/// writer's transactions) also runs inside a panic guard, so a page redb cannot parse fails that
/// call with [`StoreError::Damaged`] instead of unwinding.
///
/// # The writer
/// [`RedbStore::submit_then`] only pushes a job onto a channel; a single thread (`roomcast-store`)
/// owns every write transaction. It blocks for the first job, then takes every job already queued
/// (at most [`RedbStore::MAX_JOBS_PER_COMMIT`]), applies all their ops in submission order in one
/// transaction, trims the history of the rooms that got messages, commits with
/// [`redb::Durability::Immediate`] (an fsync), then runs each job's [`Then`] and resolves its ack,
/// in submission order. Whatever arrives while a commit is in flight waits in the channel and goes
/// into the next transaction, so under load one fsync serves many submitters. In `batched` mode
/// the writer keeps gathering for up to `flush_ms` after the first job before it commits, and
/// acks resolve at submit time.
///
/// `submit` runs under the relay's room locks and must never wait for the disk, so the channel
/// never blocks a submitter. In `sync` mode back-pressure comes from the acks: every reply waits
/// for its ack, so the queue holds at most the changes in flight. In `batched` mode acks resolve
/// at once, so a disk slower than the traffic would let the queue grow without bound: past
/// [`RedbStore::MAX_BATCHED_BACKLOG`] changes waiting for the disk the store stops taking writes
/// ([`Store::writable`] is false, `/healthz` reports the backlog, submits are refused and counted
/// in `roomcast_store_write_failures_total`) until the writer has worked the queue down to half
/// of it. [`RedbStore::stats`] shows the depth.
///
/// # Failures and recovery
/// A transaction that fails on the disk (`ENOSPC`, `EIO`, a failed fsync) fails every job in it,
/// and the store becomes *failing*: [`Store::writable`] turns false, `/healthz` reports it, and
/// every later submit is refused at once (the relay refuses before it changes anything). redb
/// latches an I/O error (every later operation on that handle fails with "previous I/O error"),
/// so the writer reopens the database at once, which brings reads back (redb repairs the file's
/// allocator state on that open, in time proportional to the file). Then it waits, 100 ms at
/// first and doubling up to 2 s, asks [`StoreFile::probe`] whether the disk takes writes again,
/// and once it does, commits a small probe transaction; when that succeeds the store is healthy
/// again, with nothing restarted. A failed probe transaction latches the handle again, so the
/// writer reopens it again and goes on waiting. A transaction that fails on a value it cannot
/// decode (a damaged record) fails its jobs only; the disk is fine, and the store stays healthy.
///
/// # Retention
/// After a batch, each room that got messages loses its oldest messages beyond `history_max` and
/// those older than `history_max_age_ms` before the newest timestamp appended to it in the batch
/// (deterministic, and "now" for a message that was just sent). History is scanned from its
/// oldest message, and the age scan stops at the first message young enough: timestamps are
/// assumed not to decrease with the sequence number, as the relay assigns both. The writer keeps
/// each room's message count in memory (counted once on open), so trimming reads only the few
/// messages it deletes plus one.
///
/// # Closing
/// [`Store::close`] (also run on drop) commits everything queued, stops and joins the writer and
/// releases the file, so it can be opened again at once. Afterwards `submit` returns an ack that
/// has failed, and reads fail.
pub struct RedbStore {
    /// `None` once closed (which releases the file and its lock when the last reader and the
    /// writer let go of it, so the same file can be opened again in this process) and while the
    /// writer reopens it.
    db: Arc<ArcSwapOption<Database>>,
    file: Arc<dyn StoreFile>,
    durability: Durability,
    tx: flume::Sender<Msg>,
    health: Arc<Health>,
    /// The writer thread until closed. The lock is held through the join, so a second `close`
    /// waits for the first.
    writer: Mutex<Option<JoinHandle<()>>>,
    counters: Arc<Counters>,
    /// In `batched` mode: whether the queue is over [`RedbStore::MAX_BATCHED_BACKLOG`] (and not
    /// yet back to half of it), and since when (ms since the Unix epoch).
    backlog: AtomicBool,
    backlog_since: AtomicU64,
}

impl RedbStore {
    /// The on-disk format this build reads and writes. Bump it on any change to the tables or to
    /// the encoding of their values.
    pub const FORMAT_VERSION: u32 = FORMAT_VERSION;

    /// Most jobs (submits) applied in one transaction; more stay queued for the next one.
    pub const MAX_JOBS_PER_COMMIT: usize = MAX_JOBS_PER_COMMIT;

    /// Most changes (submits) that may wait for the disk in `batched` durability, whose acks do
    /// not wait for it; past it writes are refused until the queue is back to half of it.
    pub const MAX_BATCHED_BACKLOG: usize = MAX_BATCHED_BACKLOG;

    /// Opens the store in `path` (a file), creating it if missing, and starts the writer thread.
    pub fn open(path: &Path, cfg: StoreConfig) -> Result<RedbStore, StoreError> {
        Self::open_with(Arc::new(DiskFile::new(path)), cfg)
    }

    /// Opens the store in `file` (see [`StoreFile`]), creating it if missing, and starts the
    /// writer thread. Every failure is an error that names the file and what to do about it.
    pub fn open_with(file: Arc<dyn StoreFile>, cfg: StoreConfig) -> Result<RedbStore, StoreError> {
        let shown = file.path().display().to_string();
        if std::fs::metadata(file.path()).is_ok_and(|meta| meta.len() == 0) {
            return Err(StoreError::Damaged(format!(
                "the store file {shown} is empty (0 bytes), which a roomcast store never is: it \
                 was truncated or replaced; {DAMAGED_ADVICE}"
            )));
        }
        let db = open_database(file.as_ref(), true, cfg.cache_bytes)?;
        let counts = guarded(
            || format!("the store file {shown} is damaged; {DAMAGED_ADVICE}. Opening it"),
            || {
                init(&db, &shown)?;
                count_messages(&db)
            },
        )
        .map_err(|e| at_open(&shown, e))?;
        tracing::info!(
            path = %shown,
            rooms_with_history = counts.len(),
            messages = counts.values().sum::<u64>(),
            durability = ?cfg.durability,
            "store opened"
        );

        let db = Arc::new(db);
        let shared = Arc::new(ArcSwapOption::from(Some(db.clone())));
        let counters = Arc::new(Counters::default());
        let health = Arc::new(Health::new());
        let (tx, rx) = flume::unbounded();
        let durability = cfg.durability;
        let writer = Writer {
            db: Some(db),
            shared: shared.clone(),
            file: file.clone(),
            latched: false,
            rx,
            cfg,
            counts: Counts {
                committed: counts,
                pending: HashMap::new(),
            },
            counters: counters.clone(),
            health: health.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("roomcast-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Unavailable(format!("starting the store writer: {e}")))?;
        Ok(RedbStore {
            db: shared,
            file,
            durability,
            tx,
            health,
            writer: Mutex::new(Some(handle)),
            counters,
            backlog: AtomicBool::new(false),
            backlog_since: AtomicU64::new(0),
        })
    }

    /// Whether the `batched` queue is over its bound (see [`RedbStore::MAX_BATCHED_BACKLOG`]):
    /// set when the queue reaches it, cleared when the writer has worked it down to half.
    fn backlogged(&self) -> bool {
        if self.durability != Durability::Batched {
            return false;
        }
        let queued = self.tx.len();
        let was = self.backlog.load(Ordering::Acquire);
        let is = match was {
            true => queued > MAX_BATCHED_BACKLOG / 2,
            false => queued >= MAX_BATCHED_BACKLOG,
        };
        if is != was
            && self
                .backlog
                .compare_exchange(was, is, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            if is {
                self.backlog_since.store(now_ms(), Ordering::Relaxed);
                metrics::gauge!(m::STORE_HEALTHY).set(0.0);
                tracing::warn!(
                    queued,
                    "store write queue full: writes refused until it drains"
                );
            } else {
                if self.health.writable() {
                    metrics::gauge!(m::STORE_HEALTHY).set(1.0);
                }
                tracing::info!(queued, "store write queue drained: writes taken again");
            }
        }
        is
    }

    /// The refusal while the `batched` queue is over its bound.
    fn backlog_error(&self) -> String {
        format!(
            "the store's write queue is full: {} changes are waiting for the disk (at most {} \
             with batched durability); retry later",
            self.tx.len(),
            MAX_BATCHED_BACKLOG
        )
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            failed_commits: self.counters.failed_commits.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            reopens: self.counters.reopens.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            ops: self.counters.ops.load(Ordering::Relaxed),
            queued: self.tx.len(),
        }
    }

    /// The database, for a read; an error once closed or while it is reopened.
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .load_full()
            .ok_or_else(|| match self.health.snapshot() {
                StoreHealth::Closed => closed_error(),
                _ => StoreError::Unavailable(
                    "the store is being reopened after a failed write; retry".into(),
                ),
            })
    }

    /// Runs the read `f` on the database, inside the panic guard; `what` names it for errors.
    fn read<T>(
        &self,
        what: impl FnOnce() -> String,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let db = self.db()?;
        let shown = self.file.path().display();
        guarded(|| format!("{shown}: {}", what()), || f(&db))
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let shown = self.file.path().display().to_string();
        self.read(|| "loading".into(), load)
            .map_err(|e| at_open(&shown, e))
    }

    fn submit_then(&self, ops: Vec<Op>, then: Option<Then>) -> Ack {
        let backlogged = self.backlogged();
        if backlogged || !self.health.writable() {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = then {
                t.forget();
            }
            if backlogged {
                metrics::counter!(m::STORE_WRITE_FAILURES).increment(1);
                return Ack::failed(StoreError::Unavailable(self.backlog_error()));
            }
            return Ack::failed(self.health.refusal());
        }
        let (ack_tx, ack) = match self.durability {
            Durability::Sync => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Ack::pending(rx))
            }
            Durability::Batched => (None, Ack::done()),
        };
        match self.tx.send(Msg::Job(Job {
            ops,
            ack: ack_tx,
            then,
        })) {
            Ok(()) => ack,
            // The writer is gone: closed concurrently, or it died.
            Err(flume::SendError(msg)) => {
                if let Msg::Job(Job { then: Some(t), .. }) = msg {
                    t.forget();
                }
                Ack::failed(closed_error())
            }
        }
    }

    fn writable(&self) -> bool {
        self.health.writable() && !self.backlogged()
    }

    fn health(&self) -> StoreHealth {
        match self.health.snapshot() {
            StoreHealth::Healthy if self.backlogged() => StoreHealth::Failing {
                since_ms: self.backlog_since.load(Ordering::Relaxed),
                error: self.backlog_error(),
                failures: 0,
            },
            h => h,
        }
    }

    fn history(
        &self,
        room: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(
            || format!("reading the history of room {room:?}"),
            |db| {
                let txn = db.begin_read().map_err(ctx("history: begin read"))?;
                let messages = txn
                    .open_table(MESSAGES)
                    .map_err(ctx("history: messages table"))?;
                let upper = match before_seq {
                    Some(before) => Bound::Excluded((room, before)),
                    None => Bound::Included((room, u64::MAX)),
                };
                let mut out = Vec::with_capacity(limit.min(1024));
                for entry in messages
                    .range((Bound::Included((room, 0u64)), upper))
                    .map_err(ctx("history: reading"))?
                    .rev()
                    .take(limit)
                {
                    let (key, msg) = entry.map_err(ctx("history: reading"))?;
                    let seq = key.value().1;
                    out.push(decode::<StoredMessage>(msg.value(), || {
                        format!("message {seq} of room {room:?}")
                    })?);
                }
                out.reverse();
                Ok(out)
            },
        )
    }

    fn message(&self, room: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        self.read(
            || format!("reading message {seq} of room {room:?}"),
            |db| {
                let txn = db.begin_read().map_err(ctx("message: begin read"))?;
                let messages = txn
                    .open_table(MESSAGES)
                    .map_err(ctx("message: messages table"))?;
                match messages.get((room, seq)).map_err(ctx("message: reading"))? {
                    None => Ok(None),
                    Some(v) => {
                        decode(v.value(), || format!("message {seq} of room {room:?}")).map(Some)
                    }
                }
            },
        )
    }

    fn close(&self) {
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(handle) = writer.take() else {
            return;
        };
        if handle.thread().id() == std::thread::current().id() {
            // Dropped by work the writer runs (the last owner let go inside a `Then`): the
            // writer stops by itself once the channel is gone; it cannot join itself.
            self.health.close();
            return;
        }
        // Fails only if the writer already stopped, which the join below reports.
        let _ = self.tx.send(Msg::Close);
        let shown = self.file.path().display();
        if handle.join().is_err() {
            tracing::error!(path = %shown, "the store writer thread panicked");
        } else {
            tracing::info!(path = %shown, "store closed");
        }
        self.health.close();
        self.db.store(None);
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Everything stored, for a start.
fn load(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(ctx("load: begin read"))?;
    let rooms = txn.open_table(ROOMS).map_err(ctx("load: rooms table"))?;
    let attrs = txn.open_table(ATTRS).map_err(ctx("load: attrs table"))?;
    let messages = txn
        .open_table(MESSAGES)
        .map_err(ctx("load: messages table"))?;
    let meta = txn.open_table(META).map_err(ctx("load: meta table"))?;

    let mut out = Vec::new();
    for entry in rooms.iter().map_err(ctx("load: reading rooms"))? {
        let (id, row) = entry.map_err(ctx("load: reading rooms"))?;
        let id = id.value();
        let record = decode::<RoomRecord>(row.value(), || format!("room {id:?}"))?;

        let upper = after_prefix(id);
        let mut room_attrs = Vec::new();
        for entry in attrs
            .range((id, "")..(upper.as_str(), ""))
            .map_err(ctx("load: reading attributes"))?
        {
            let (key, attr) = entry.map_err(ctx("load: reading attributes"))?;
            let key = key.value().1.to_owned();
            let attr =
                decode::<AttrRecord>(attr.value(), || format!("attribute {key:?} of room {id:?}"))?;
            room_attrs.push((key, attr));
        }

        let newest = match messages
            .range((id, 0u64)..=(id, u64::MAX))
            .map_err(ctx("load: reading history"))?
            .next_back()
        {
            None => None,
            Some(entry) => {
                let (key, msg) = entry.map_err(ctx("load: reading history"))?;
                let seq = key.value().1;
                let msg = decode::<StoredMessage>(msg.value(), || {
                    format!("message {seq} of room {id:?}")
                })?;
                Some((seq, msg.ts))
            }
        };
        out.push(LoadedRoom {
            record,
            attrs: room_attrs,
            newest,
        });
    }

    let global = match meta
        .get(META_GLOBAL)
        .map_err(ctx("load: reading the global policy"))?
    {
        Some(v) => decode::<GlobalPolicy>(v.value(), || "the global policy".into())?,
        None => GlobalPolicy::default(),
    };
    Ok(Snapshot { rooms: out, global })
}

/// Opens the database in `file`, with redb's integrity check when `check` (at start; a reopen
/// after a failed write trusts the file redb itself wrote) and a page cache of `cache_bytes`.
/// Every failure names the file.
fn open_database(
    file: &dyn StoreFile,
    check: bool,
    cache_bytes: usize,
) -> Result<Database, StoreError> {
    let shown = file.path().display().to_string();
    let backend = file
        .open()
        .map_err(|e| StoreError::Unavailable(format!("cannot open the store file {shown}: {e}")))?;
    let opened = contained(|| {
        let mut builder = Database::builder();
        builder.set_check_integrity_on_open(check);
        builder.set_cache_size(cache_bytes);
        builder.create_with_backend(Boxed(backend))
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_error(&shown, e)),
        Err(panic) => Err(StoreError::Damaged(format!(
            "the store file {shown} is damaged (the storage engine failed reading it: {panic}); \
             {DAMAGED_ADVICE}"
        ))),
    }
}

/// What an open failure means for the operator.
fn open_error(shown: &str, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
            "the store file {shown} is in use by another process (another roomcast serve on the \
             same data folder?); stop it, or give this server its own --data folder"
        )),
        DatabaseError::Storage(StorageError::Corrupted(detail)) => StoreError::Damaged(format!(
            "the store file {shown} is damaged ({detail}); {DAMAGED_ADVICE}"
        )),
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == io::ErrorKind::InvalidData => {
            StoreError::Damaged(format!(
                "the store file {shown} is not a roomcast store or is damaged ({io}); \
                 {DAMAGED_ADVICE}"
            ))
        }
        DatabaseError::Storage(StorageError::Io(io))
            if io.kind() == io::ErrorKind::UnexpectedEof =>
        {
            StoreError::Damaged(format!(
                "the store file {shown} is shorter than its contents (truncated?: {io}); \
                 {DAMAGED_ADVICE}"
            ))
        }
        DatabaseError::RepairAborted | DatabaseError::UpgradeRequired(_) => StoreError::Damaged(
            format!("the store file {shown} cannot be opened ({e}); {DAMAGED_ADVICE}"),
        ),
        other => StoreError::Unavailable(format!(
            "cannot open the store file {shown}: {other} (is the disk full, or the file not \
             writable?)"
        )),
    }
}

/// An error while opening or loading, as the operator reads it.
fn at_open(shown: &str, e: StoreError) -> StoreError {
    match e {
        StoreError::Damaged(m) if !m.contains(shown) => StoreError::Damaged(format!(
            "the store file {shown} is damaged ({m}); {DAMAGED_ADVICE}"
        )),
        StoreError::Unavailable(m) if !m.contains(shown) => {
            StoreError::Unavailable(format!("the store file {shown} cannot be read: {m}"))
        }
        other => other,
    }
}

/// The writer thread's state.
struct Writer {
    /// The database; `None` only while a reopen failed.
    db: Option<Arc<Database>>,
    /// What readers use: the same handle, `None` while it is reopened.
    shared: Arc<ArcSwapOption<Database>>,
    file: Arc<dyn StoreFile>,
    /// The handle failed on the disk, so redb refuses everything on it until it is reopened.
    latched: bool,
    rx: flume::Receiver<Msg>,
    cfg: StoreConfig,
    counts: Counts,
    counters: Arc<Counters>,
    health: Arc<Health>,
}

impl Writer {
    fn run(mut self) {
        let mut backoff = PROBE_FIRST;
        loop {
            if !self.health.writable() {
                match self.wait_out(backoff) {
                    Waited::Closed => return,
                    Waited::Probe => {}
                }
                match self.recover() {
                    Ok(()) => {
                        backoff = PROBE_FIRST;
                        self.health.recovered();
                        tracing::warn!(path = %self.file.path().display(), "store writes again");
                    }
                    Err(e) => {
                        self.health.failed(&e);
                        tracing::debug!(error = %e, "store still cannot write");
                        backoff = (backoff * 2).min(PROBE_MAX);
                    }
                }
                continue;
            }
            // Every sender is gone only if the store was dropped without `close`, which `Drop`
            // prevents; stop either way.
            let Ok(first) = self.rx.recv() else { return };
            let mut jobs = Vec::new();
            let closing = match first {
                Msg::Job(job) => {
                    jobs.push(job);
                    self.gather(&mut jobs)
                }
                Msg::Close => true,
            };
            if !jobs.is_empty() {
                self.commit(jobs);
            }
            if closing {
                // Submits that raced with `close` and got into the channel are still applied.
                loop {
                    let jobs: Vec<Job> = self
                        .rx
                        .try_iter()
                        .take(MAX_JOBS_PER_COMMIT)
                        .filter_map(|m| match m {
                            Msg::Job(job) => Some(job),
                            Msg::Close => None,
                        })
                        .collect();
                    if jobs.is_empty() {
                        return;
                    }
                    self.commit(jobs);
                }
            }
        }
    }

    /// While failing: refuses every job that comes for `wait`, then says whether to probe.
    fn wait_out(&mut self, wait: Duration) -> Waited {
        // A std `Instant` is fine here: this is a plain thread, not a task under tokio's clock.
        let deadline = Instant::now() + wait;
        loop {
            match self.rx.recv_deadline(deadline) {
                Ok(Msg::Job(job)) => self.refuse(job),
                Ok(Msg::Close) => {
                    for msg in self.rx.try_iter().collect::<Vec<_>>() {
                        if let Msg::Job(job) = msg {
                            self.refuse(job);
                        }
                    }
                    return Waited::Closed;
                }
                Err(flume::RecvTimeoutError::Timeout) => return Waited::Probe,
                Err(flume::RecvTimeoutError::Disconnected) => return Waited::Closed,
            }
        }
    }

    fn refuse(&mut self, job: Job) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        job.finish(&Err(self.health.refusal()));
    }

    /// One recovery attempt: the disk probe, a reopen if the handle is latched, a probe commit.
    fn recover(&mut self) -> Result<(), StoreError> {
        self.file
            .probe()
            .map_err(|e| StoreError::Unavailable(format!("the disk refuses writes: {e}")))?;
        if self.latched || self.db.is_none() {
            self.reopen()?;
        }
        let db = self.db.clone().ok_or_else(not_open)?;
        let result = guarded(
            || "the probe write".into(),
            || {
                let txn = db.begin_write().map_err(ctx("probe: begin write"))?;
                {
                    let mut meta = txn.open_table(META).map_err(ctx("probe: meta table"))?;
                    let now = encode(&now_ms())?;
                    meta.insert(META_PROBE, now.as_slice())
                        .map_err(ctx("probe: writing"))?;
                }
                txn.commit().map_err(ctx("probe: commit"))
            },
        );
        if result.is_err() {
            self.latched = true;
            // Reads come back at once; the next attempt waits for the disk.
            let _ = self.reopen();
        }
        result
    }

    /// Replaces a latched handle with a fresh one (readers fail fast meanwhile).
    fn reopen(&mut self) -> Result<(), StoreError> {
        self.counters.reopens.fetch_add(1, Ordering::Relaxed);
        self.shared.store(None);
        let old: Option<Weak<Database>> = self.db.take().map(|db| Arc::downgrade(&db));
        // redb holds a lock on the file: the old handle must be gone, so wait for reads in
        // progress to let go of it (they are short). A plain thread may sleep.
        if let Some(old) = old {
            let started = Instant::now();
            while old.strong_count() > 0 {
                if started.elapsed() > REOPEN_WAIT {
                    self.db = old.upgrade();
                    self.shared.store(self.db.clone());
                    return Err(StoreError::Unavailable(
                        "reopening the store: reads did not let go of it".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let db = Arc::new(open_database(
            self.file.as_ref(),
            false,
            self.cfg.cache_bytes,
        )?);
        self.latched = false;
        self.shared.store(Some(db.clone()));
        self.db = Some(db);
        tracing::info!(path = %self.file.path().display(), "store reopened");
        Ok(())
    }

    /// Adds the jobs that join the first one in its transaction; returns whether a close came.
    fn gather(&self, jobs: &mut Vec<Job>) -> bool {
        match self.cfg.durability {
            // Group commit: whatever queued up while the last commit was in flight.
            Durability::Sync => {
                while jobs.len() < MAX_JOBS_PER_COMMIT {
                    match self.rx.try_recv() {
                        Ok(Msg::Job(job)) => jobs.push(job),
                        Ok(Msg::Close) => return true,
                        Err(_) => break,
                    }
                }
            }
            // Everything that comes within `flush_ms` of the first job. A std `Instant` is fine
            // here: this is a plain thread, not a task under tokio's (pausable) clock.
            Durability::Batched => {
                let deadline = Instant::now() + Duration::from_millis(self.cfg.flush_ms);
                while jobs.len() < MAX_JOBS_PER_COMMIT {
                    match self.rx.recv_deadline(deadline) {
                        Ok(Msg::Job(job)) => jobs.push(job),
                        Ok(Msg::Close) => return true,
                        Err(_) => break,
                    }
                }
            }
        }
        false
    }

    /// Applies `jobs` in one transaction, commits durably and tells their submitters.
    fn commit(&mut self, jobs: Vec<Job>) {
        let started = Instant::now();
        let ops = jobs.iter().map(|j| j.ops.len() as u64).sum::<u64>();
        let result = match self.db.clone() {
            None => Err(not_open()),
            Some(db) => match contained(|| self.write(&db, &jobs)) {
                Ok(r) => r,
                Err(panic) => Err(StoreError::Unavailable(format!(
                    "the storage engine failed writing: {panic}"
                ))),
            },
        };
        match &result {
            Ok(()) => {
                self.counts.commit();
                self.counters.commits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .jobs
                    .fetch_add(jobs.len() as u64, Ordering::Relaxed);
                self.counters.ops.fetch_add(ops, Ordering::Relaxed);
                tracing::trace!(
                    jobs = jobs.len(),
                    ops,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "store commit"
                );
            }
            Err(e) => {
                self.counts.rollback();
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, jobs = jobs.len(), ops, "store commit failed");
                if let StoreError::Unavailable(_) = e {
                    // The disk failed: refuse what comes, and get reads back.
                    self.health.failed(e);
                    self.latched = true;
                    if let Err(e) = self.reopen() {
                        tracing::error!(error = %e, "reopening the store failed");
                    }
                }
            }
        }
        for job in jobs {
            job.finish(&result);
        }
    }

    fn write(&mut self, db: &Database, jobs: &[Job]) -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(ctx("begin write"))?;
        txn.set_durability(redb::Durability::Immediate)
            .map_err(ctx("set durability"))?;
        {
            let mut rooms = txn.open_table(ROOMS).map_err(ctx("rooms table"))?;
            let mut attrs = txn.open_table(ATTRS).map_err(ctx("attrs table"))?;
            let mut messages = txn.open_table(MESSAGES).map_err(ctx("messages table"))?;
            let mut meta = txn.open_table(META).map_err(ctx("meta table"))?;
            // Rooms that got messages, with the newest timestamp appended to each.
            let mut appended: HashMap<&str, u64> = HashMap::new();
            for op in jobs.iter().flat_map(|j| &j.ops) {
                match op {
                    Op::PutRoom(record) => {
                        let mut record = record.clone();
                        if let Some(old) = stored_room(&rooms, &record.id)?
                            && old.epoch == record.epoch
                        {
                            record.seq_reserved = record.seq_reserved.max(old.seq_reserved);
                            record.last_activity_ms =
                                record.last_activity_ms.max(old.last_activity_ms);
                        }
                        let row = encode(&record)?;
                        rooms
                            .insert(record.id.as_str(), row.as_slice())
                            .map_err(ctx("put room"))?;
                    }
                    Op::ReserveSeq { room, upto } => {
                        update_room(&mut rooms, room, |r| {
                            r.seq_reserved = r.seq_reserved.max(*upto)
                        })?;
                    }
                    Op::Touch { room, at_ms } => {
                        update_room(&mut rooms, room, |r| {
                            r.last_activity_ms = r.last_activity_ms.max(*at_ms)
                        })?;
                    }
                    Op::DeleteRoom(id) => {
                        rooms.remove(id.as_str()).map_err(ctx("delete room"))?;
                        let upper = after_prefix(id);
                        attrs
                            .retain_in((id.as_str(), "")..(upper.as_str(), ""), |_, _| false)
                            .map_err(ctx("delete room attributes"))?;
                        messages
                            .retain_in((id.as_str(), 0u64)..=(id.as_str(), u64::MAX), |_, _| false)
                            .map_err(ctx("delete room history"))?;
                        self.counts.set(id, 0);
                    }
                    Op::PutGlobal(global) => {
                        let v = encode(global)?;
                        meta.insert(META_GLOBAL, v.as_slice())
                            .map_err(ctx("put global policy"))?;
                    }
                    Op::PutAttr { room, key, attr } => {
                        let v = encode(attr)?;
                        attrs
                            .insert((room.as_str(), key.as_str()), v.as_slice())
                            .map_err(ctx("put attribute"))?;
                    }
                    Op::DeleteAttr { room, key } => {
                        attrs
                            .remove((room.as_str(), key.as_str()))
                            .map_err(ctx("delete attribute"))?;
                    }
                    Op::Append { room, msg } => {
                        let v = encode(msg)?;
                        let replaced = messages
                            .insert((room.as_str(), msg.seq), v.as_slice())
                            .map_err(ctx("append message"))?
                            .is_some();
                        if !replaced {
                            let n = self.counts.get(room);
                            self.counts.set(room, n + 1);
                        }
                        let newest = appended.entry(room.as_str()).or_insert(msg.ts);
                        *newest = (*newest).max(msg.ts);
                    }
                    Op::Recall { room, seq } => {
                        let current = match messages
                            .get((room.as_str(), *seq))
                            .map_err(ctx("recall: reading"))?
                        {
                            Some(v) => Some(decode::<StoredMessage>(v.value(), || {
                                format!("message {seq} of room {room:?}")
                            })?),
                            None => None,
                        };
                        if let Some(mut msg) = current {
                            msg.recalled = true;
                            msg.body = Bytes::new();
                            let v = encode(&msg)?;
                            messages
                                .insert((room.as_str(), *seq), v.as_slice())
                                .map_err(ctx("recall: writing"))?;
                        }
                    }
                }
            }
            for (room, now) in appended {
                self.trim(&mut messages, room, now)?;
            }
        }
        txn.commit().map_err(ctx("commit"))
    }

    /// Deletes the oldest messages of `room` beyond `history_max` and those older than
    /// `now - history_max_age_ms`.
    fn trim(
        &mut self,
        messages: &mut Table<(&str, u64), &[u8]>,
        room: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        let count = self.counts.get(room);
        let excess = count.saturating_sub(self.cfg.history_max as u64);
        let cutoff = now.saturating_sub(self.cfg.history_max_age_ms);
        let mut doomed = Vec::new();
        for entry in messages
            .range((room, 0u64)..=(room, u64::MAX))
            .map_err(ctx("trim: reading"))?
        {
            let (key, value) = entry.map_err(ctx("trim: reading"))?;
            let seq = key.value().1;
            if (doomed.len() as u64) < excess {
                doomed.push(seq);
                continue;
            }
            let msg = decode::<StoredMessage>(value.value(), || {
                format!("message {seq} of room {room:?}")
            })?;
            if msg.ts < cutoff {
                doomed.push(seq);
            } else {
                break;
            }
        }
        for seq in &doomed {
            messages
                .remove((room, *seq))
                .map_err(ctx("trim: deleting"))?;
        }
        self.counts.set(room, count - doomed.len() as u64);
        Ok(())
    }
}

/// What a failing writer's wait ended with.
enum Waited {
    /// Time to probe.
    Probe,
    /// The store is closing (or dropped).
    Closed,
}

/// The stored record of room `id`; a record that does not decode counts as none (it is about to
/// be replaced).
fn stored_room(rooms: &Table<&str, &[u8]>, id: &str) -> Result<Option<RoomRecord>, StoreError> {
    Ok(rooms
        .get(id)
        .map_err(ctx("reading a room"))?
        .and_then(|v| postcard::from_bytes::<RoomRecord>(v.value()).ok()))
}

/// Changes the stored record of room `id` with `f`, if there is one that decodes.
fn update_room(
    rooms: &mut Table<&str, &[u8]>,
    id: &str,
    f: impl FnOnce(&mut RoomRecord),
) -> Result<(), StoreError> {
    if let Some(mut record) = stored_room(rooms, id)? {
        f(&mut record);
        let row = encode(&record)?;
        rooms
            .insert(id, row.as_slice())
            .map_err(ctx("update room"))?;
    }
    Ok(())
}

/// Per-room message counts: the committed ones plus the changes of the transaction in progress,
/// which are dropped if it fails.
struct Counts {
    committed: HashMap<String, u64>,
    pending: HashMap<String, u64>,
}

impl Counts {
    fn get(&self, room: &str) -> u64 {
        self.pending
            .get(room)
            .or_else(|| self.committed.get(room))
            .copied()
            .unwrap_or(0)
    }

    fn set(&mut self, room: &str, n: u64) {
        self.pending.insert(room.to_owned(), n);
    }

    fn commit(&mut self) {
        for (room, n) in self.pending.drain() {
            if n == 0 {
                self.committed.remove(&room);
            } else {
                self.committed.insert(room, n);
            }
        }
    }

    fn rollback(&mut self) {
        self.pending.clear();
    }
}

/// Creates the tables if missing and checks (or, in a new file, writes) the format version.
fn init(db: &Database, shown: &str) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(ctx("begin write"))?;
    {
        let mut meta = txn.open_table(META).map_err(ctx("meta table"))?;
        let found = match meta
            .get(META_FORMAT)
            .map_err(ctx("reading the format version"))?
        {
            Some(v) => Some(decode::<u32>(v.value(), || "the format version".into())?),
            None => None,
        };
        match found {
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Damaged(format!(
                    "the store file {shown} has store format version {other}, this build reads \
                     version {FORMAT_VERSION} only: run the roomcast that wrote it, or move the \
                     file away to start with an empty store"
                )));
            }
            None => {
                let v = encode(&FORMAT_VERSION)?;
                meta.insert(META_FORMAT, v.as_slice())
                    .map_err(ctx("writing the format version"))?;
            }
        }
        txn.open_table(ROOMS).map_err(ctx("rooms table"))?;
        txn.open_table(ATTRS).map_err(ctx("attrs table"))?;
        txn.open_table(MESSAGES).map_err(ctx("messages table"))?;
    }
    txn.commit().map_err(ctx("commit"))
}

/// Messages per room, for retention.
fn count_messages(db: &Database) -> Result<HashMap<String, u64>, StoreError> {
    let txn = db
        .begin_read()
        .map_err(ctx("counting history: begin read"))?;
    let messages = txn
        .open_table(MESSAGES)
        .map_err(ctx("counting history: messages table"))?;
    let mut counts: HashMap<String, u64> = HashMap::new();
    for entry in messages.iter().map_err(ctx("counting history"))? {
        let (key, _) = entry.map_err(ctx("counting history"))?;
        let room = key.value().0;
        match counts.get_mut(room) {
            Some(n) => *n += 1,
            None => {
                counts.insert(room.to_owned(), 1);
            }
        }
    }
    Ok(counts)
}

/// The smallest string above every key whose room part is `id`: ranges over `(id, "")..(this,
/// "")` hold exactly that room's keys.
fn after_prefix(id: &str) -> String {
    format!("{id}\0")
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Damaged(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError::Damaged(format!("decoding {}: {e}", what())))
}

/// Wraps an error of the storage engine with what was being done. A page the engine finds
/// corrupt is [`StoreError::Damaged`]; everything else (I/O, a previous I/O error) is
/// [`StoreError::Unavailable`].
fn ctx<E: Into<redb::Error>>(what: impl Display) -> impl FnOnce(E) -> StoreError {
    move |e| match e.into() {
        redb::Error::Corrupted(detail) => StoreError::Damaged(format!("{what}: {detail}")),
        other => StoreError::Unavailable(format!("{what}: {other}")),
    }
}

fn not_open() -> StoreError {
    StoreError::Unavailable("the store file could not be reopened after a failed write".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DestroyPolicy, Moderation};
    use crate::protocol::Class;
    use std::collections::{BTreeMap, BTreeSet};

    fn cfg(durability: Durability) -> StoreConfig {
        StoreConfig {
            durability,
            flush_ms: 10,
            history_max: 1000,
            history_max_age_ms: 7 * 24 * 3600 * 1000,
            cache_bytes: 16 << 20,
        }
    }

    fn db_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("roomcast.redb")
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    }

    /// Submits and waits for the ack.
    fn apply(store: &RedbStore, ops: Vec<Op>) -> Result<(), StoreError> {
        rt().block_on(store.submit(ops).wait())
    }

    fn room(id: &str) -> RoomRecord {
        RoomRecord {
            id: id.into(),
            name: format!("Room {id}"),
            epoch: 3,
            created_ms: 1_000,
            policy: DestroyPolicy::idle(None),
            destroy_at_ms: None,
            member_events: true,
            moderation: Moderation::default(),
            last_activity_ms: 2_000,
            seq_reserved: 500,
            attr_version: 0,
        }
    }

    fn msg(seq: u64, ts: u64) -> StoredMessage {
        StoredMessage {
            seq,
            ts,
            from: format!("user{}", seq % 3),
            msg_type: "text".into(),
            body: Bytes::from(format!("body {seq}")),
            class: [Class::Protected, Class::Normal, Class::Low][(seq % 3) as usize],
            recalled: false,
        }
    }

    fn append(room: &str, seq: u64, ts: u64) -> Op {
        Op::Append {
            room: room.into(),
            msg: msg(seq, ts),
        }
    }

    fn attr(value: &str, set_ms: u64) -> AttrRecord {
        AttrRecord {
            value: value.into(),
            owner: "alice".into(),
            auto_delete: set_ms.is_multiple_of(2),
            set_ms,
        }
    }

    fn seqs(msgs: &[StoredMessage]) -> Vec<u64> {
        msgs.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_new_store_loads_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&db_path(&dir), cfg(Durability::Sync)).expect("open");
        assert_eq!(store.load().expect("load"), Snapshot::default());
        assert_eq!(store.history("r", None, 10).expect("history"), vec![]);
        assert_eq!(store.message("r", 1).expect("message"), None);
        store.close();
    }

    #[test]
    fn every_op_round_trips_through_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);

        let mut lobby = room("lobby");
        lobby.policy = DestroyPolicy::lifetime(90);
        lobby.destroy_at_ms = Some(5_401_000);
        lobby.moderation = Moderation {
            bans: BTreeMap::from([("mallory".into(), 9_000)]),
            mutes: BTreeMap::from([("bob".into(), 8_000)]),
            mute_all: true,
            mute_all_whitelist: BTreeSet::from(["alice".into()]),
            user_whitelist: BTreeSet::from(["carol".into()]),
        };
        let mut games = room("games");
        games.policy = DestroyPolicy::idle(Some(30));
        let global = GlobalPolicy {
            global_mutes: BTreeMap::from([("spammer".into(), 77)]),
            type_whitelist: BTreeSet::from(["alert".into()]),
            low_types: BTreeSet::from(["typing".into()]),
            keepalive: BTreeSet::from(["lobby".into()]),
        };
        let mut renamed = games.clone();
        renamed.name = "Games!".into();
        renamed.attr_version = 2;

        {
            let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
            apply(
                &store,
                vec![
                    Op::PutRoom(lobby.clone()),
                    Op::PutRoom(games.clone()),
                    Op::PutGlobal(GlobalPolicy::default()),
                    Op::PutAttr {
                        room: "lobby".into(),
                        key: "topic".into(),
                        attr: attr("hello", 1),
                    },
                    Op::PutAttr {
                        room: "lobby".into(),
                        key: "pinned".into(),
                        attr: attr("42", 2),
                    },
                    Op::PutAttr {
                        room: "games".into(),
                        key: "mode".into(),
                        attr: attr("chess", 3),
                    },
                ],
            )
            .expect("first batch");
            apply(
                &store,
                vec![
                    Op::PutRoom(renamed.clone()),
                    Op::PutGlobal(global.clone()),
                    Op::PutAttr {
                        room: "lobby".into(),
                        key: "topic".into(),
                        attr: attr("updated", 4),
                    },
                    Op::DeleteAttr {
                        room: "lobby".into(),
                        key: "pinned".into(),
                    },
                    Op::DeleteAttr {
                        room: "lobby".into(),
                        key: "never-set".into(),
                    },
                    append("lobby", 1, 10),
                    append("lobby", 2, 20),
                    append("lobby", 3, 30),
                    append("games", 7, 70),
                    Op::Recall {
                        room: "lobby".into(),
                        seq: 2,
                    },
                ],
            )
            .expect("second batch");
            store.close();
        }

        let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("reopen");
        let mut snapshot = store.load().expect("load");
        snapshot.rooms.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        let expected = Snapshot {
            rooms: vec![
                LoadedRoom {
                    record: renamed,
                    attrs: vec![("mode".into(), attr("chess", 3))],
                    newest: Some((7, 70)),
                },
                LoadedRoom {
                    record: lobby,
                    attrs: vec![("topic".into(), attr("updated", 4))],
                    newest: Some((3, 30)),
                },
            ],
            global,
        };
        assert_eq!(snapshot, expected);

        let mut recalled = msg(2, 20);
        recalled.recalled = true;
        recalled.body = Bytes::new();
        assert_eq!(
            store.history("lobby", None, 10).expect("history"),
            vec![msg(1, 10), recalled, msg(3, 30)]
        );
        assert_eq!(
            store.message("games", 7).expect("message"),
            Some(msg(7, 70))
        );
        assert_eq!(store.message("games", 1).expect("message"), None);
    }

    #[test]
    fn delete_room_removes_its_attrs_and_history_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        {
            let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
            // Neighbours whose ids sort right around "a": their keys must survive.
            let mut ops = Vec::new();
            for id in ["a", "a\0b", "ab", "`"] {
                ops.push(Op::PutRoom(room(id)));
                ops.push(Op::PutAttr {
                    room: id.into(),
                    key: "k".into(),
                    attr: attr(id, 1),
                });
                ops.push(Op::PutAttr {
                    room: id.into(),
                    key: "".into(),
                    attr: attr(id, 2),
                });
                ops.push(append(id, 0, 1));
                ops.push(append(id, u64::MAX, 2));
            }
            apply(&store, ops).expect("setup");
            apply(&store, vec![Op::DeleteRoom("a".into())]).expect("delete");
            assert_eq!(store.history("a", None, 10).expect("history"), vec![]);
            assert_eq!(store.message("a", u64::MAX).expect("message"), None);
            store.close();
        }
        let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("reopen");
        let snapshot = store.load().expect("load");
        let mut ids: Vec<&str> = snapshot
            .rooms
            .iter()
            .map(|r| r.record.id.as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, vec!["`", "a\0b", "ab"]);
        for r in &snapshot.rooms {
            assert_eq!(r.attrs.len(), 2, "attrs of {:?}", r.record.id);
            assert_eq!(r.newest, Some((u64::MAX, 2)));
            assert_eq!(
                seqs(&store.history(&r.record.id, None, 10).expect("history")),
                vec![0, u64::MAX]
            );
        }
        assert_eq!(store.history("a", None, 10).expect("history"), vec![]);

        // A room created again under the same id starts with an empty history and its count
        // starts at zero: retention keeps exactly history_max.
        store.close();
        let mut c = cfg(Durability::Sync);
        c.history_max = 2;
        let store = RedbStore::open(&path, c).expect("reopen");
        apply(&store, vec![Op::PutRoom(room("a")), append("a", 10, 5)]).expect("recreate");
        apply(&store, vec![append("a", 11, 6)]).expect("append");
        assert_eq!(
            seqs(&store.history("a", None, 10).expect("history")),
            vec![10, 11]
        );
        apply(&store, vec![Op::DeleteRoom("a".into()), append("a", 1, 7)]).expect("same batch");
        assert_eq!(
            seqs(&store.history("a", None, 10).expect("history")),
            vec![1]
        );
    }

    #[test]
    fn history_pages_newest_first_returned_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        {
            let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
            apply(&store, (1..=25).map(|s| append("r", s, s * 10)).collect()).expect("append");
            apply(&store, vec![append("r2", 1, 1)]).expect("append");
            let all: Vec<u64> = (1..=25).collect();
            assert_eq!(seqs(&store.history("r", None, 10).expect("h")), all[15..]);
            assert_eq!(
                seqs(&store.history("r", Some(16), 10).expect("h")),
                all[5..15]
            );
            assert_eq!(seqs(&store.history("r", Some(6), 10).expect("h")), all[..5]);
            assert_eq!(
                seqs(&store.history("r", Some(1), 10).expect("h")),
                Vec::<u64>::new()
            );
            assert_eq!(
                seqs(&store.history("r", None, 0).expect("h")),
                Vec::<u64>::new()
            );
            assert_eq!(seqs(&store.history("r", None, 100).expect("h")), all);
            assert_eq!(
                seqs(&store.history("r", Some(1000), 3).expect("h")),
                vec![23, 24, 25]
            );
            assert_eq!(
                seqs(&store.history("nope", None, 10).expect("h")),
                Vec::<u64>::new()
            );
            store.close();
        }
        // After a reopen, paging back from the newest visits every message once, in order.
        let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("reopen");
        let mut pages = Vec::new();
        let mut before = None;
        loop {
            let page = store.history("r", before, 7).expect("page");
            let Some(first) = page.first() else { break };
            before = Some(first.seq);
            pages.push(page);
        }
        let collected: Vec<StoredMessage> = pages.into_iter().rev().flatten().collect();
        assert_eq!(
            collected,
            (1..=25).map(|s| msg(s, s * 10)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn recall_survives_reopen_and_ignores_missing_messages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        {
            let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
            apply(&store, vec![append("r", 1, 1), append("r", 2, 2)]).expect("append");
            apply(
                &store,
                vec![
                    Op::Recall {
                        room: "r".into(),
                        seq: 1,
                    },
                    Op::Recall {
                        room: "r".into(),
                        seq: 99,
                    },
                    Op::Recall {
                        room: "elsewhere".into(),
                        seq: 1,
                    },
                ],
            )
            .expect("recall");
            store.close();
        }
        let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("reopen");
        let recalled = store.message("r", 1).expect("message").expect("kept");
        assert!(recalled.recalled);
        assert!(recalled.body.is_empty());
        assert_eq!(
            (recalled.seq, recalled.ts, recalled.from.as_str()),
            (1, 1, "user1")
        );
        assert_eq!(store.message("r", 2).expect("message"), Some(msg(2, 2)));
        assert_eq!(store.message("r", 99).expect("message"), None);
        assert_eq!(store.message("elsewhere", 1).expect("message"), None);
        assert_eq!(seqs(&store.history("r", None, 10).expect("h")), vec![1, 2]);
    }

    #[test]
    fn retention_by_count_keeps_exactly_history_max() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        let mut c = cfg(Durability::Sync);
        c.history_max = 5;
        {
            let store = RedbStore::open(&path, c.clone()).expect("open");
            // Exactly at the limit: nothing goes.
            for s in 1..=5 {
                apply(&store, vec![append("r", s, s)]).expect("append");
            }
            assert_eq!(
                seqs(&store.history("r", None, 100).expect("h")),
                vec![1, 2, 3, 4, 5]
            );
            // One over: the oldest goes.
            apply(&store, vec![append("r", 6, 6)]).expect("append");
            assert_eq!(
                seqs(&store.history("r", None, 100).expect("h")),
                vec![2, 3, 4, 5, 6]
            );
            // Many in one batch.
            apply(&store, (7..=20).map(|s| append("r", s, s)).collect()).expect("append");
            assert_eq!(
                seqs(&store.history("r", None, 100).expect("h")),
                vec![16, 17, 18, 19, 20]
            );
            // Rewriting an existing seq does not count twice.
            apply(&store, vec![append("r", 20, 20)]).expect("rewrite");
            assert_eq!(
                seqs(&store.history("r", None, 100).expect("h")),
                vec![16, 17, 18, 19, 20]
            );
            // Another room has its own count.
            apply(&store, vec![append("other", 1, 1)]).expect("append");
            assert_eq!(
                seqs(&store.history("other", None, 100).expect("h")),
                vec![1]
            );
            store.close();
        }
        // The counts are rebuilt on open.
        let store = RedbStore::open(&path, c).expect("reopen");
        apply(&store, vec![append("r", 21, 21)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![17, 18, 19, 20, 21]
        );
    }

    #[test]
    fn retention_by_age_uses_the_newest_appended_timestamp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        let mut c = cfg(Durability::Sync);
        c.history_max_age_ms = 1_000;
        let store = RedbStore::open(&path, c).expect("open");
        apply(
            &store,
            vec![append("r", 1, 0), append("r", 2, 500), append("r", 3, 999)],
        )
        .expect("append");
        // now = 999: cutoff saturates at 0, nothing is older.
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![1, 2, 3]
        );
        // now = 1_500: cutoff 500; ts 0 goes, ts 500 (exactly at the cutoff) stays.
        apply(&store, vec![append("r", 4, 1_500)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![2, 3, 4]
        );
        // now = 1_501: ts 500 is now 1 ms too old.
        apply(&store, vec![append("r", 5, 1_501)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![3, 4, 5]
        );
        // Within one batch, "now" is the newest ts appended (2_500, whatever the order): cutoff
        // 1_500, so ts 999 goes and ts 1_500 stays.
        apply(&store, vec![append("r", 7, 2_500), append("r", 6, 2_000)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![4, 5, 6, 7]
        );
        // Count and age together: both limits apply.
        store.close();
        let mut c = cfg(Durability::Sync);
        c.history_max = 3;
        c.history_max_age_ms = 1_000;
        let store = RedbStore::open(&path, c).expect("reopen");
        apply(&store, vec![append("r", 8, 2_600)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![6, 7, 8]
        );
        apply(&store, vec![append("r", 9, 3_500)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![7, 8, 9]
        );
        apply(&store, vec![append("r", 10, 3_601)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("h")),
            vec![9, 10]
        );
    }

    #[test]
    fn sync_acks_resolve_after_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        const THREADS: u64 = 8;
        const EACH: u64 = 50;
        {
            let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
            std::thread::scope(|s| {
                for t in 0..THREADS {
                    let store = &store;
                    s.spawn(move || {
                        let rt = rt();
                        let room = format!("room{t}");
                        for i in 0..EACH {
                            let ack = store.submit(vec![
                                append(&room, i, i),
                                Op::PutAttr {
                                    room: room.clone(),
                                    key: format!("k{i}"),
                                    attr: attr("v", i),
                                },
                            ]);
                            assert!(!ack.is_done(), "sync acks wait for the commit");
                            rt.block_on(ack.wait()).expect("ack");
                            // Readers see only committed data: the acked message is there.
                            assert_eq!(
                                store.message(&room, i).expect("message"),
                                Some(msg(i, i)),
                                "acked but not committed: {room} {i}"
                            );
                        }
                    });
                }
            });
            let stats = store.stats();
            assert_eq!(stats.jobs, THREADS * EACH);
            assert_eq!(stats.ops, THREADS * EACH * 2);
            assert_eq!(stats.failed_commits, 0);
            // Dropped without close: Drop stops the writer cleanly.
        }
        let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("reopen");
        let snapshot = store.load().expect("load");
        for t in 0..THREADS {
            let room = format!("room{t}");
            assert_eq!(
                seqs(&store.history(&room, None, 1000).expect("h")),
                (0..EACH).collect::<Vec<_>>()
            );
            // No room records were written, so load lists none; the history is there.
            assert!(snapshot.rooms.is_empty());
        }
    }

    #[test]
    fn group_commit_shares_transactions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&db_path(&dir), cfg(Durability::Sync)).expect("open");
        const SUBMITS: u64 = 1000;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .expect("runtime");
        let store = Arc::new(store);
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..SUBMITS {
                let store = store.clone();
                tasks.spawn(async move {
                    store
                        .submit(vec![append(&format!("r{}", i % 10), i, i)])
                        .wait()
                        .await
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.expect("task").expect("ack");
            }
        });
        let stats = store.stats();
        println!("{SUBMITS} concurrent submits: {stats:?}");
        assert_eq!(stats.jobs, SUBMITS);
        assert!(
            stats.commits * 10 < SUBMITS,
            "{} commits for {SUBMITS} submits",
            stats.commits
        );
        let total: usize = (0..10)
            .map(|r| {
                store
                    .history(&format!("r{r}"), None, 1000)
                    .expect("h")
                    .len()
            })
            .sum();
        assert_eq!(total as u64, SUBMITS);
    }

    #[test]
    fn batched_acks_at_once_and_close_makes_it_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        let mut c = cfg(Durability::Batched);
        // Long enough that only `close` can have committed.
        c.flush_ms = 600_000;
        {
            let store = RedbStore::open(&path, c).expect("open");
            for i in 0..100 {
                let ack = store.submit(vec![
                    Op::PutRoom(room(&format!("r{i}"))),
                    append("r0", i, i),
                ]);
                assert!(ack.is_done(), "batched acks resolve at submit");
            }
            assert_eq!(store.stats().commits, 0);
            store.close();
            assert!(store.stats().commits >= 1);
            assert_eq!(store.stats().jobs, 100);
        }
        let store = RedbStore::open(&path, cfg(Durability::Batched)).expect("reopen");
        assert_eq!(store.load().expect("load").rooms.len(), 100);
        assert_eq!(store.history("r0", None, 1000).expect("h").len(), 100);
    }

    #[test]
    fn batched_mode_commits_within_flush_ms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(Durability::Batched);
        c.flush_ms = 20;
        let store = RedbStore::open(&db_path(&dir), c).expect("open");
        let started = Instant::now();
        let _ = store.submit(vec![append("r", 1, 1)]);
        // Wait for the commit itself (no close): it comes about flush_ms after the submit.
        while store.stats().commits == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "never flushed");
            std::thread::yield_now();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "committed before flush_ms"
        );
        assert_eq!(store.message("r", 1).expect("message"), Some(msg(1, 1)));
    }

    #[test]
    fn close_is_idempotent_and_later_submits_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        for durability in [Durability::Sync, Durability::Batched] {
            let store = RedbStore::open(&path, cfg(durability)).expect("open");
            apply(&store, vec![append("r", 1, 1)]).expect("before close");
            store.close();
            store.close();
            let err = apply(&store, vec![append("r", 2, 2)]).expect_err("after close");
            assert!(err.message().contains("closed"), "{err}");
            // Reads fail too: the file is released, and can be opened again at once, while
            // the closed store still exists.
            assert!(store.history("r", None, 10).is_err());
            let again = RedbStore::open(&path, cfg(durability)).expect("reopen");
            assert_eq!(seqs(&again.history("r", None, 10).expect("h")), vec![1]);
            drop(again);
            drop(store);
        }
    }

    #[test]
    fn the_file_is_locked_while_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
        let err = RedbStore::open(&path, cfg(Durability::Sync))
            .err()
            .expect("second open fails");
        assert!(err.message().contains("roomcast.redb"), "{err}");
        drop(store);
        RedbStore::open(&path, cfg(Durability::Sync)).expect("open after drop");
    }

    #[test]
    fn a_different_format_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        drop(RedbStore::open(&path, cfg(Durability::Sync)).expect("create"));
        {
            let db = Database::create(&path).expect("raw open");
            let txn = db.begin_write().expect("begin");
            {
                let mut meta = txn.open_table(META).expect("meta");
                let v = postcard::to_allocvec(&(FORMAT_VERSION + 1)).expect("encode");
                meta.insert(META_FORMAT, v.as_slice()).expect("insert");
            }
            txn.commit().expect("commit");
        }
        let err = RedbStore::open(&path, cfg(Durability::Sync))
            .err()
            .expect("refused");
        assert!(
            err.message()
                .contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{err}"
        );
    }

    #[test]
    fn a_failed_transaction_fails_its_acks_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        drop(RedbStore::open(&path, cfg(Durability::Sync)).expect("create"));
        // A message that cannot be decoded, so recalling it fails the transaction.
        {
            let db = Database::create(&path).expect("raw open");
            let txn = db.begin_write().expect("begin");
            {
                let mut messages = txn.open_table(MESSAGES).expect("messages");
                messages
                    .insert(("bad", 1u64), [0xffu8, 0xff, 0xff].as_slice())
                    .expect("insert");
            }
            txn.commit().expect("commit");
        }
        let mut c = cfg(Durability::Sync);
        c.history_max = 2;
        let store = RedbStore::open(&path, c).expect("open");
        let err = apply(
            &store,
            vec![
                append("r", 1, 1),
                append("r", 2, 2),
                Op::Recall {
                    room: "bad".into(),
                    seq: 1,
                },
            ],
        )
        .expect_err("the recall cannot decode");
        assert!(err.message().contains("message 1 of room \"bad\""), "{err}");
        assert_eq!(store.stats().failed_commits, 1);
        // All or nothing: the appends of the failed submit are not there.
        assert_eq!(store.history("r", None, 10).expect("h"), vec![]);
        // The writer goes on, and its count of the room was rolled back: with history_max 2, two
        // more messages are both kept (a count of 4 would trim both).
        apply(&store, vec![append("r", 3, 3)]).expect("append");
        apply(&store, vec![append("r", 4, 4)]).expect("append");
        assert_eq!(seqs(&store.history("r", None, 10).expect("h")), vec![3, 4]);
    }

    /// Waits (bounded) until `cond` holds; the store's recovery runs on its own thread.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let started = Instant::now();
        while !cond() {
            assert!(started.elapsed() < Duration::from_secs(20), "never: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn quota_store(
        dir: &tempfile::TempDir,
        c: StoreConfig,
    ) -> (RedbStore, Arc<super::super::Quota>) {
        let quota = super::super::Quota::unlimited();
        let file = Arc::new(super::super::QuotaFile::new(db_path(dir), quota.clone()));
        (RedbStore::open_with(file, c).expect("open"), quota)
    }

    #[test]
    fn a_full_disk_fails_the_write_refuses_later_ones_and_recovers_once_space_is_freed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, quota) = quota_store(&dir, cfg(Durability::Sync));
        apply(&store, vec![append("r", 1, 1)]).expect("room on the disk");
        assert!(store.writable());
        assert_eq!(store.health(), StoreHealth::Healthy);

        quota.set_left(Some(0));
        let err = apply(&store, vec![append("r", 2, 2)]).expect_err("the disk is full");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(err.message().contains("No space left on device"), "{err}");
        assert!(!store.writable());
        let StoreHealth::Failing {
            error, failures, ..
        } = store.health()
        else {
            panic!("failing expected, got {:?}", store.health())
        };
        assert!(error.contains("No space left on device"), "{error}");
        assert!(failures >= 1);
        // Refused at once: nothing is queued for a disk that is known to be full.
        let ack = store.submit(vec![append("r", 3, 3)]);
        let refused = ack.refused().expect("refused at once").clone();
        assert!(refused.message().contains("cannot write"), "{refused}");
        // Reads: on this disk every write needs space (as on a copy-on-write filesystem), so
        // the reopen that redb needs after the failure cannot repair the file yet, and reads say
        // so; where rewriting a page needs no space (ext4, tmpfs) they go on (see
        // tests/store_tmpfs.rs). Either way the failed append is not there.
        match store.history("r", None, 10) {
            Ok(h) => assert_eq!(seqs(&h), vec![1]),
            Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
        }
        assert!(store.stats().reopens >= 1);

        // Space freed: writes come back by themselves, with no restart.
        quota.set_left(None);
        eventually("the store writes again", || store.writable());
        assert_eq!(store.health(), StoreHealth::Healthy);
        apply(&store, vec![append("r", 4, 4)]).expect("writes again");
        assert_eq!(seqs(&store.history("r", None, 10).expect("h")), vec![1, 4]);
        store.close();
        let store = RedbStore::open(&db_path(&dir), cfg(Durability::Sync)).expect("reopen");
        assert_eq!(seqs(&store.history("r", None, 10).expect("h")), vec![1, 4]);
    }

    /// A disk slower than the traffic: with batched durability the queue stops at its bound, the
    /// store says so, and once the disk catches up every change it took is on the disk.
    #[test]
    fn a_batched_store_bounds_its_queue_on_a_stalled_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(Durability::Batched);
        c.flush_ms = 1;
        c.history_max = usize::MAX;
        let (store, quota) = quota_store(&dir, c.clone());
        quota.stall(true);
        let max = RedbStore::MAX_BATCHED_BACKLOG;
        let mut taken = 0u64;
        let refused = loop {
            let ack = store.submit(vec![append("r", taken + 1, taken + 1)]);
            if let Some(e) = ack.refused() {
                break e.clone();
            }
            taken += 1;
            // The writer holds at most one transaction's jobs out of the queue.
            assert!(taken as usize <= max + MAX_JOBS_PER_COMMIT, "never refused");
        };
        assert!(taken as usize >= max, "refused after {taken}");
        assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
        assert!(
            refused.message().contains("write queue is full"),
            "{refused}"
        );
        assert!(!store.writable());
        let StoreHealth::Failing { error, .. } = store.health() else {
            panic!("failing expected, got {:?}", store.health())
        };
        assert!(error.contains("waiting for the disk"), "{error}");
        assert!(store.stats().queued <= max);

        quota.stall(false);
        eventually("the queue drains", || store.writable());
        assert_eq!(store.health(), StoreHealth::Healthy);
        let next = taken + 1;
        assert!(store.submit(vec![append("r", next, next)]).is_done());
        store.close();
        let store = RedbStore::open(&db_path(&dir), c).expect("reopen");
        let all = store.history("r", None, usize::MAX).expect("history");
        let want: Vec<u64> = (1..=next).collect();
        assert_eq!(
            seqs(&all),
            want,
            "every change taken is on the disk, in order"
        );
    }

    #[test]
    fn a_batched_store_refuses_writes_while_failing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(Durability::Batched);
        c.flush_ms = 1;
        let (store, quota) = quota_store(&dir, c);
        quota.set_left(Some(0));
        // Acknowledged at once, by definition of batched; its batch then fails on the disk.
        assert!(store.submit(vec![append("r", 1, 1)]).is_done());
        eventually("the failed batch is noticed", || !store.writable());
        assert!(store.submit(vec![append("r", 2, 2)]).refused().is_some());
        quota.set_left(None);
        eventually("the store writes again", || store.writable());
        assert!(store.submit(vec![append("r", 3, 3)]).is_done());
        store.close();
        let store = RedbStore::open(&db_path(&dir), cfg(Durability::Sync)).expect("reopen");
        // Like a crash: the acknowledged batch that failed is lost, the later one is there.
        assert_eq!(seqs(&store.history("r", None, 10).expect("h")), vec![3]);
    }

    #[test]
    fn then_runs_in_order_with_the_outcome_before_the_ack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, quota) = quota_store(&dir, cfg(Durability::Sync));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rt = rt();
        let mut acks = Vec::new();
        for i in 0..20u64 {
            let seen = seen.clone();
            acks.push(store.submit_then(
                vec![append("r", i, i)],
                Some(Then::new(move |outcome| {
                    seen.lock().expect("lock").push((i, outcome.is_ok()))
                })),
            ));
        }
        for ack in acks {
            rt.block_on(ack.wait()).expect("ack");
        }
        let got = seen.lock().expect("lock").clone();
        assert_eq!(got, (0..20).map(|i| (i, true)).collect::<Vec<_>>());

        quota.set_left(Some(0));
        let seen2 = seen.clone();
        let ack = store.submit_then(
            vec![append("r", 99, 99)],
            Some(Then::new(move |outcome| {
                seen2.lock().expect("lock").push((99, outcome.is_ok()))
            })),
        );
        assert!(rt.block_on(ack.wait()).is_err());
        assert_eq!(seen.lock().expect("lock").last(), Some(&(99, false)));
        // Refused at once: `then` is not run (the submitter handles the refusal itself).
        let ran = Arc::new(AtomicU64::new(0));
        let r2 = ran.clone();
        let ack = store.submit_then(
            vec![append("r", 100, 100)],
            Some(Then::new(move |_| {
                r2.fetch_add(1, Ordering::Relaxed);
            })),
        );
        assert!(ack.refused().is_some());
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reservations_and_activity_only_go_up_and_a_put_room_keeps_the_higher_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RedbStore::open(&db_path(&dir), cfg(Durability::Sync)).expect("open");
        let mut rec = room("r");
        rec.seq_reserved = 100;
        rec.last_activity_ms = 1_000;
        apply(&store, vec![Op::PutRoom(rec.clone())]).expect("put");
        apply(
            &store,
            vec![
                Op::ReserveSeq {
                    room: "r".into(),
                    upto: 500,
                },
                Op::ReserveSeq {
                    room: "r".into(),
                    upto: 200,
                },
                Op::Touch {
                    room: "r".into(),
                    at_ms: 5_000,
                },
                Op::Touch {
                    room: "r".into(),
                    at_ms: 2_000,
                },
                // A room that is not stored is left alone.
                Op::ReserveSeq {
                    room: "nowhere".into(),
                    upto: 9,
                },
            ],
        )
        .expect("raise");
        let loaded = |store: &RedbStore| store.load().expect("load").rooms[0].record.clone();
        assert_eq!(
            (loaded(&store).seq_reserved, loaded(&store).last_activity_ms),
            (500, 5_000)
        );
        // A record written from older memory does not lower them; another name does change.
        let mut older = rec.clone();
        older.name = "renamed".into();
        apply(&store, vec![Op::PutRoom(older)]).expect("put");
        let now = loaded(&store);
        assert_eq!(
            (now.seq_reserved, now.last_activity_ms, now.name.as_str()),
            (500, 5_000, "renamed")
        );
        assert_eq!(store.load().expect("load").rooms.len(), 1);
        // A new life of the room (another epoch) starts from its own values.
        let mut reborn = rec.clone();
        reborn.epoch += 1;
        apply(
            &store,
            vec![Op::DeleteRoom("r".into()), Op::PutRoom(reborn)],
        )
        .expect("again");
        let now = loaded(&store);
        assert_eq!((now.seq_reserved, now.last_activity_ms), (100, 1_000));
    }

    #[test]
    fn an_empty_store_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        std::fs::write(&path, b"").expect("empty file");
        let err = RedbStore::open(&path, cfg(Durability::Sync))
            .err()
            .expect("refused");
        assert!(matches!(err, StoreError::Damaged(_)), "{err:?}");
        assert!(err.message().contains(&path.display().to_string()), "{err}");
        assert!(err.message().contains("empty"), "{err}");
        assert!(err.message().contains("move it away"), "{err}");
        assert_eq!(std::fs::metadata(&path).expect("still there").len(), 0);
    }

    #[test]
    fn every_damaged_page_or_a_truncation_is_an_error_naming_the_file_never_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = db_path(&dir);
        {
            let store = RedbStore::open(&path, cfg(Durability::Sync)).expect("open");
            apply(&store, vec![Op::PutRoom(room("lobby"))]).expect("room");
            for i in 1..=40 {
                apply(&store, vec![append("lobby", i, i)]).expect("append");
            }
            store.close();
        }
        let pristine = std::fs::read(&path).expect("read");
        let shown = path.display().to_string();
        let mut refused = 0;
        let check = |bytes: &[u8], what: &str| -> bool {
            std::fs::write(&path, bytes).expect("write");
            match RedbStore::open(&path, cfg(Durability::Sync)) {
                Ok(store) => {
                    // A page nothing used: the store works as before.
                    assert_eq!(store.load().expect("load").rooms.len(), 1, "{what}");
                    false
                }
                Err(e) => {
                    assert!(e.message().contains(&shown), "{what}: {e}");
                    assert!(
                        e.message().contains("backup") || e.message().contains("move"),
                        "{what}: {e}"
                    );
                    true
                }
            }
        };
        for page in 0..pristine.len() / 4096 {
            let mut bytes = pristine.clone();
            bytes[page * 4096..(page + 1) * 4096].fill(0);
            refused += usize::from(check(&bytes, &format!("page {page} zeroed")));
        }
        assert!(refused >= 3, "only {refused} zeroed pages were noticed");
        for keep in [pristine.len() / 2, 4096, 100] {
            assert!(
                check(&pristine[..keep], &format!("truncated to {keep}")),
                "a file truncated to {keep} bytes opened"
            );
        }
        std::fs::write(&path, &pristine).expect("restore");
        RedbStore::open(&path, cfg(Durability::Sync)).expect("the pristine file opens");
    }
}
