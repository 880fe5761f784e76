//! [`NatsStore`]: the [`Store`] on NATS JetStream (see the module doc of [`super`]).

use super::names::{HistoryKind, Names};
use crate::metrics as m;
use crate::policy::GlobalPolicy;
use crate::store::health::{Health, closed_error};
use crate::store::{
    Ack, AttrRecord, Durability, LoadedRoom, Op, RoomRecord, Snapshot, Store, StoreConfig,
    StoreError, StoreHealth, StoredMessage, Then,
};
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Submits queued at most; past it a submit is refused at once (`UNAVAILABLE`), counted in
/// [`m::NATS_QUEUE_FULL`].
const QUEUE: usize = 65_536;
/// How often the writer, when idle, samples the connection counters and, while failing, probes.
const TICK: Duration = Duration::from_millis(250);
/// Reads of one history page run this many direct gets at once.
const READ_CONCURRENCY: usize = 32;

/// How a relay authenticates to NATS.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// A `.creds` file (user JWT and nkey seed).
    Creds(PathBuf),
    /// User name and password.
    UserPassword(String, String),
    /// A token.
    Token(String),
    /// A file holding an nkey seed.
    NkeySeedFile(PathBuf),
}

impl std::fmt::Debug for NatsAuth {
    /// Never shows a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsAuth::None => f.write_str("None"),
            NatsAuth::Creds(p) => write!(f, "Creds({})", p.display()),
            NatsAuth::UserPassword(u, _) => write!(f, "UserPassword({u}, <hidden>)"),
            NatsAuth::Token(_) => f.write_str("Token(<hidden>)"),
            NatsAuth::NkeySeedFile(p) => write!(f, "NkeySeedFile({})", p.display()),
        }
    }
}

/// Where and how to reach NATS, and the names to use there.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs.
    pub servers: Vec<String>,
    /// This relay's node id (the connection's name in NATS' monitoring).
    pub node_id: String,
    /// Prefix of every stream, bucket and subject.
    pub prefix: String,
    /// Replicas of the stream and the bucket.
    pub replicas: usize,
    /// Longest wait for any NATS request.
    pub request_timeout: Duration,
    /// Credentials.
    pub auth: NatsAuth,
    /// A CA to trust (and TLS required).
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// A room as the state bucket keeps it: the record with its attributes, in one value so that a
/// change of both (an attribute and the room's attribute version) is one atomic write.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct RoomValue {
    record: Option<RoomRecord>,
    attrs: BTreeMap<String, AttrRecord>,
}

/// What the store knows of one room: its durable value with the KV revision it has, and where
/// its history is in the stream.
#[derive(Debug, Clone, Default)]
struct RoomState {
    value: RoomValue,
    /// KV revision of the room's key as this store last wrote or read it; 0: none known.
    revision: u64,
    /// Stream sequence of the last message on the room's message subject; 0: none. Every
    /// append expects it (`Nats-Expected-Last-Subject-Sequence`).
    last_hist: u64,
    /// The newest stored message's `(seq, ts)`, as the load found it.
    newest: Option<(u64, u64)>,
}

/// Per room: room seq → stream sequence of the stored message or of its recall marker. The
/// writer changes it as its writes succeed; readers look up under the lock, then read NATS.
type Index = Arc<Mutex<HashMap<String, BTreeMap<u64, u64>>>>;

/// A write whose outcome NATS did not tell (the connection went away in flight): checked, and
/// undone if it landed, before the store takes writes again, so a refused write has no effect.
#[derive(Debug)]
enum Uncertain {
    Append {
        room: String,
        prev: u64,
        seq: u64,
    },
    Kv {
        key: String,
        attempted: Bytes,
        prev: Option<Bytes>,
    },
    /// A recall marker of message `seq` that may stand without its recall having been made.
    Marker {
        room: String,
        seq: u64,
    },
}

struct State {
    rooms: HashMap<String, RoomState>,
    global: GlobalPolicy,
    global_revision: u64,
    uncertain: Vec<Uncertain>,
}

/// The NATS side: the client, the stream, the bucket, and everything the writer knows.
struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    history: stream::Stream,
    state_kv: kv::Store,
    names: Names,
    cfg: StoreConfig,
    timeout: Duration,
    index: Index,
}

enum Job {
    Ops {
        ops: Vec<Op>,
        then: Option<Then>,
        ack: Option<oneshot::Sender<Result<(), StoreError>>>,
    },
    Close(std::sync::mpsc::Sender<()>),
    /// Read one room again (see [`Store::reload_room`]).
    Reload {
        room: String,
        done: std::sync::mpsc::Sender<Result<Option<LoadedRoom>, StoreError>>,
    },
    /// Read the app-wide lists again (see [`Store::reload_global`]).
    ReloadGlobal {
        done: std::sync::mpsc::Sender<Result<GlobalPolicy, StoreError>>,
    },
}

/// The durable store in NATS JetStream: rooms, attributes and the app-wide lists in one KV
/// bucket, history in one stream with a subject per room. One writer task applies submits in
/// order; in `sync` mode an ack resolves after JetStream acknowledged every op of its submit.
///
/// The NATS client runs on a small runtime of the store's own, so the trait's blocking reads
/// ([`Store::history`], [`Store::message`]) can wait for NATS from any thread, and the store
/// works the same under any caller runtime.
///
/// Faults: when the connection drops, or a write fails or is not answered within
/// `request_timeout`, the store turns failing: that submit fails (its changes undone if they
/// reached NATS after all), the queued ones fail with it, and later submits are refused at once
/// until a probe (a stream info request) succeeds; then it takes writes again by itself. An
/// append refused by its fence, or a KV write by its revision, means another writer changed the
/// room: [`StoreError::Fenced`], and the store stays healthy.
pub struct NatsStore {
    tx: flume::Sender<Job>,
    health: Arc<Health>,
    durability: Durability,
    nats: Arc<Nats>,
    snapshot: Mutex<Option<Snapshot>>,
    closed: AtomicBool,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("NATS: {what}: {e}"))
}

async fn timed<T>(op: &'static str, fut: impl Future<Output = T>) -> T {
    let start = Instant::now();
    let out = fut.await;
    metrics::histogram!(m::NATS_REQUEST_SECONDS, "op" => op).record(start.elapsed().as_secs_f64());
    out
}

/// The connect options of `cfg` (credentials, TLS, timeouts) and its server addresses, for
/// every connection a relay makes to NATS.
pub async fn connect_options(
    cfg: &NatsConfig,
) -> Result<(async_nats::ConnectOptions, Vec<async_nats::ServerAddr>), StoreError> {
    let mut opts = match &cfg.auth {
        NatsAuth::None => async_nats::ConnectOptions::new(),
        NatsAuth::Creds(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| unavailable(&format!("credentials file {}", path.display()), e))?,
        NatsAuth::UserPassword(u, p) => {
            async_nats::ConnectOptions::with_user_and_password(u.clone(), p.clone())
        }
        NatsAuth::Token(t) => async_nats::ConnectOptions::with_token(t.clone()),
        NatsAuth::NkeySeedFile(path) => {
            let seed = std::fs::read_to_string(path)
                .map_err(|e| unavailable(&format!("nkey seed file {}", path.display()), e))?;
            async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        }
    };
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &cfg.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = cfg
        .servers
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| unavailable(&format!("server URL {s:?}"), e))
        })
        .collect::<Result<_, _>>()?;
    let opts = opts
        .connection_timeout(cfg.request_timeout)
        .request_timeout(Some(cfg.request_timeout));
    Ok((opts, servers))
}

/// Connects with `cfg`'s servers, credentials and TLS; connection changes reach `health`.
async fn connect(cfg: &NatsConfig, health: Arc<Health>) -> Result<async_nats::Client, StoreError> {
    let (opts, servers) = connect_options(cfg).await?;
    opts.name(format!("roomcast {}", cfg.node_id))
        .event_callback(move |event| {
            let health = health.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        metrics::gauge!(m::NATS_CONNECTED).set(0.0);
                        tracing::warn!("lost the connection to NATS; refusing writes");
                        health.failed(&StoreError::Unavailable(
                            "the connection to NATS is lost".into(),
                        ));
                    }
                    async_nats::Event::Connected => {
                        metrics::gauge!(m::NATS_CONNECTED).set(1.0);
                        tracing::info!("connected to NATS");
                    }
                    other => tracing::debug!(event = %other, "NATS client event"),
                }
            }
        })
        .connect(servers)
        .await
        .map_err(|e| unavailable(&format!("cannot connect to {}", cfg.servers.join(", ")), e))
}

impl NatsStore {
    /// Connects, makes the stream and the bucket if they are missing (or updates their limits),
    /// and loads everything. Refuses when NATS cannot be reached.
    pub fn open(nats: NatsConfig, cfg: StoreConfig) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("roomcast-nats")
            .enable_all()
            .build()
            .map_err(|e| unavailable("starting its runtime", e))?;
        let health = Arc::new(Health::new());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let h = health.clone();
        runtime.spawn(async move {
            let _ = done_tx.send(Self::open_async(nats, cfg, h).await);
        });
        let opened = done_rx
            .recv()
            .map_err(|_| unavailable("opening", "the runtime stopped"))
            .and_then(|r| r);
        let (nats, state, snapshot) = match opened {
            Ok(o) => o,
            Err(e) => {
                // Dropping a runtime blocks, which an async caller must not do.
                runtime.shutdown_background();
                return Err(e);
            }
        };
        let (tx, rx) = flume::bounded(QUEUE);
        let nats = Arc::new(nats);
        metrics::gauge!(m::NATS_CONNECTED).set(1.0);
        runtime.spawn(writer(nats.clone(), state, rx, health.clone()));
        Ok(NatsStore {
            tx,
            health,
            durability: nats.cfg.durability,
            nats,
            snapshot: Mutex::new(Some(snapshot)),
            closed: AtomicBool::new(false),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    async fn open_async(
        ncfg: NatsConfig,
        cfg: StoreConfig,
        health: Arc<Health>,
    ) -> Result<(Nats, State, Snapshot), StoreError> {
        let client = connect(&ncfg, health).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(ncfg.request_timeout)
            .build(client.clone());
        let names = Names::new(&ncfg.prefix);
        let history_cfg = stream::Config {
            name: names.history_stream(),
            subjects: vec![names.history_subjects()],
            max_messages_per_subject: i64::try_from(cfg.history_max).unwrap_or(i64::MAX),
            max_age: Duration::from_millis(cfg.history_max_age_ms),
            storage: stream::StorageType::File,
            num_replicas: ncfg.replicas,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        };
        // Opened as it is when its limits are this relay's; updated when they differ (the
        // limits are the deployment's: the last relay started with new ones sets them).
        let history = match js.get_stream(names.history_stream()).await {
            Ok(existing) => {
                let have = &existing.cached_info().config;
                if have.max_messages_per_subject != history_cfg.max_messages_per_subject
                    || have.max_age != history_cfg.max_age
                {
                    let mut changed = have.clone();
                    changed.max_messages_per_subject = history_cfg.max_messages_per_subject;
                    changed.max_age = history_cfg.max_age;
                    js.update_stream(changed)
                        .await
                        .map_err(|e| unavailable("updating the history stream's limits", e))?;
                }
                existing
            }
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                js.create_stream(history_cfg)
                    .await
                    .map_err(|e| unavailable("creating the history stream", e))?
            }
            Err(e) => return Err(unavailable("opening the history stream", e)),
        };
        let state_kv = match js.get_key_value(names.state_bucket()).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: names.state_bucket(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: ncfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("creating the state bucket", e))?,
        };
        let nats = Nats {
            client,
            js: js.clone(),
            history,
            state_kv,
            names,
            cfg,
            timeout: ncfg.request_timeout,
            index: Index::default(),
        };
        let state = nats.load().await?;
        let snapshot = Snapshot {
            rooms: state
                .rooms
                .values()
                .filter_map(|r| {
                    let record = r.value.record.clone()?;
                    Some(LoadedRoom {
                        record,
                        attrs: r
                            .value
                            .attrs
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        newest: r.newest,
                    })
                })
                .collect(),
            global: state.global.clone(),
        };
        let mut snapshot = snapshot;
        snapshot.rooms.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        Ok((nats, state, snapshot))
    }

    /// Runs `fut` on the store's runtime and waits for it from this thread.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rt) = rt.as_ref() else {
                return Err(closed_error());
            };
            rt.spawn(async move {
                let _ = tx.send(fut.await);
            });
        }
        rx.recv_timeout(self.nats.timeout * 2 + Duration::from_secs(1))
            .map_err(|_| unavailable("reading", "no answer in time"))?
    }

    /// The stream sequences of `room`'s newest `limit` messages with `seq < before`, newest
    /// first.
    fn stream_seqs(&self, room: &str, before: u64, limit: usize) -> Vec<u64> {
        let idx = self.nats.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.get(room)
            .map(|m| {
                m.range(..before)
                    .rev()
                    .take(limit)
                    .map(|(_, s)| *s)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Nats {
    /// Reads the bucket and scans the history stream once (one ordered consumer) to learn
    /// where every room's messages are.
    async fn load(&self) -> Result<State, StoreError> {
        let mut state = State {
            rooms: HashMap::new(),
            global: GlobalPolicy::default(),
            global_revision: 0,
            uncertain: Vec::new(),
        };
        // The bucket's stream, last value per key: one pass, not a request per key.
        let bucket = self.names.state_bucket();
        let kv_stream = self
            .js
            .get_stream(format!("KV_{bucket}"))
            .await
            .map_err(|e| unavailable("opening the state bucket's stream", e))?;
        let prefix = format!("$KV.{bucket}.");
        let last_per_key = jetstream::consumer::DeliverPolicy::LastPerSubject;
        self.scan(
            &kv_stream,
            last_per_key,
            format!("{prefix}>"),
            "reading the state bucket",
            |msg, sseq| {
                let deleted = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("KV-Operation"))
                    .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
                let Some(key) = msg.subject.strip_prefix(prefix.as_str()) else {
                    return Ok(());
                };
                if deleted {
                    return Ok(());
                }
                if key == Names::GLOBAL_KEY {
                    state.global = decode_json(&msg.payload, "the app-wide lists")?;
                    state.global_revision = sseq;
                } else if let Some(room) = self.names.parse_room_key(key) {
                    let value: RoomValue = decode_json(&msg.payload, &format!("room {room:?}"))?;
                    let r = state.rooms.entry(room).or_default();
                    r.value = value;
                    r.revision = sseq;
                }
                Ok(())
            },
        )
        .await?;
        let all = jetstream::consumer::DeliverPolicy::All;
        let every_room = self.names.history_subjects();
        self.scan(
            &self.history,
            all,
            every_room,
            "scanning history",
            |msg, sseq| {
                if let Some((kind, room)) = self.names.parse_history(&msg.subject) {
                    let stored: StoredMessage = decode_msg(&msg.payload, &room, sseq)?;
                    self.index_insert(&room, stored.seq, sseq);
                    let r = state.rooms.entry(room).or_default();
                    if kind == HistoryKind::Message {
                        r.last_hist = r.last_hist.max(sseq);
                    }
                    if r.newest.is_none_or(|(seq, _)| seq < stored.seq) {
                        r.newest = Some((stored.seq, stored.ts));
                    }
                }
                Ok(())
            },
        )
        .await?;
        Ok(state)
    }

    /// Reads `stream` (its subjects matching `filter_subject`) once with one short-lived ordered
    /// consumer, calling `f` with each message and its stream sequence, until nothing is pending.
    async fn scan(
        &self,
        stream: &stream::Stream,
        deliver_policy: jetstream::consumer::DeliverPolicy,
        filter_subject: String,
        what: &str,
        mut f: impl FnMut(&jetstream::Message, u64) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let info = stream.get_info().await.map_err(|e| unavailable(what, e))?;
        if info.state.messages == 0 {
            return Ok(());
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy,
                filter_subject,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable(what, e))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(what, e))?;
        loop {
            let next = tokio::time::timeout(self.timeout, messages.next())
                .await
                .map_err(|_| unavailable(what, "no answer in time"))?;
            let Some(msg) = next else {
                return Ok(());
            };
            let msg = msg.map_err(|e| unavailable(what, e))?;
            let (sseq, pending) = {
                let i = msg.info().map_err(|e| unavailable(what, e))?;
                (i.stream_sequence, i.pending)
            };
            f(&msg, sseq)?;
            if pending == 0 {
                return Ok(());
            }
        }
    }

    /// Records where message `seq` of `room` is, keeping the newest `history_max`.
    fn index_insert(&self, room: &str, seq: u64, sseq: u64) {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let m = idx.entry(room.to_owned()).or_default();
        m.insert(seq, sseq);
        while m.len() > self.cfg.history_max {
            m.pop_first();
        }
    }

    /// Brings `room`'s index up to what the stream holds, so reads on any relay see the
    /// messages other relays (the room's owner) appended: one last-by-subject lookup per
    /// history subject, and only when the stream holds newer ones, one short-lived ordered
    /// consumer reading them from past the newest stream sequence the index knows (at most
    /// `history_max` per room are kept).
    async fn refresh(&self, room: &str) -> Result<(), StoreError> {
        let known = self
            .index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(room)
            .and_then(|m| m.values().max().copied())
            .unwrap_or(0);
        let mut last = 0;
        for kind in [HistoryKind::Message, HistoryKind::Recall] {
            let of_kind = self.last_of(kind, room, "reading history").await?;
            last = last.max(of_kind.unwrap_or(0));
        }
        if last <= known {
            return Ok(());
        }
        let from = jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: known + 1,
        };
        self.scan(
            &self.history,
            from,
            self.names.history_any(room),
            "reading history",
            |msg, sseq| {
                let stored: StoredMessage = decode_msg(&msg.payload, room, sseq)?;
                self.index_insert(room, stored.seq, sseq);
                Ok(())
            },
        )
        .await
    }

    /// The stream sequence of the newest message on `room`'s history subject of `kind`, `None`
    /// when it has none.
    async fn last_of(
        &self,
        kind: HistoryKind,
        room: &str,
        what: &str,
    ) -> Result<Option<u64>, StoreError> {
        let subject = self.names.history(kind, room);
        match timed(
            "get_last",
            self.history.direct_get_last_for_subject(subject),
        )
        .await
        {
            Ok(raw) => Ok(Some(raw.sequence)),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable(what, e)),
        }
    }

    /// Where message `seq` of `room` is.
    fn index_get(&self, room: &str, seq: u64) -> Option<u64> {
        let idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        idx.get(room).and_then(|m| m.get(&seq).copied())
    }

    /// The message at stream sequence `sseq`, `None` if it is gone (trimmed, deleted).
    async fn get(&self, sseq: u64) -> Result<Option<StoredMessage>, StoreError> {
        match timed("get", self.history.direct_get(sseq)).await {
            Ok(raw) => {
                let room = self
                    .names
                    .parse_history(&raw.subject)
                    .map(|(_, r)| r)
                    .unwrap_or_default();
                decode_msg(&raw.payload, &room, sseq).map(Some)
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(unavailable("reading history", e)),
        }
    }

    /// Applies one submit's ops in order. On error, nothing of this submit that the store knows
    /// of is kept in `state` (and [`State::uncertain`] lists what may have reached NATS).
    async fn apply(&self, state: &mut State, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut i = 0;
        while i < ops.len() {
            match &ops[i] {
                Op::PutRoom(_)
                | Op::PutAttr { .. }
                | Op::DeleteAttr { .. }
                | Op::ReserveSeq { .. }
                | Op::Touch { .. } => {
                    // Consecutive changes of one room's value are one write.
                    let room = room_of(&ops[i]).to_owned();
                    let current = state
                        .rooms
                        .get(&room)
                        .map(|r| r.value.clone())
                        .unwrap_or_default();
                    let mut value = current.clone();
                    while i < ops.len() && is_value_op(&ops[i]) && room_of(&ops[i]) == room {
                        fold(&mut value, &ops[i]);
                        i += 1;
                    }
                    if value != current && value.record.is_some() {
                        self.put_room(state, &room, value).await?;
                    }
                    continue;
                }
                Op::DeleteRoom(room) => self.delete_room(state, room).await?,
                Op::PutGlobal(global) => self.put_global(state, global).await?,
                Op::Append { room, msg } => self.append(state, room, msg).await?,
                Op::Recall { room, seq } => self.recall(state, room, *seq).await?,
            }
            i += 1;
        }
        Ok(())
    }

    /// Writes `bytes` at `key` expecting revision `known` (0: a key this store has not seen,
    /// so `create`); the new revision. A revision conflict is [`StoreError::Fenced`] with
    /// `conflict`; a write NATS did not answer is remembered as uncertain, with `prev` (the value
    /// before, if any) to restore should it have landed.
    async fn kv_write(
        &self,
        state: &mut State,
        key: String,
        bytes: Bytes,
        known: u64,
        prev: Option<Bytes>,
        conflict: String,
    ) -> Result<u64, StoreError> {
        let (result, op) = if known > 0 {
            let r = timed(
                "kv_update",
                self.state_kv.update(&key, bytes.clone(), known),
            )
            .await;
            let r = r.map_err(|e| {
                let c = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                (c || wrong_last_sequence(&e), e.to_string())
            });
            (r, "writing")
        } else {
            let r = timed("kv_create", self.state_kv.create(&key, bytes.clone())).await;
            let r = r.map_err(|e| {
                let c = e.kind() == kv::CreateErrorKind::AlreadyExists;
                (c || wrong_last_sequence(&e), e.to_string())
            });
            (r, "creating")
        };
        match result {
            Ok(revision) => Ok(revision),
            Err((true, _)) => Err(StoreError::Fenced(conflict)),
            Err((false, e)) => {
                let what = format!("{op} {key}");
                state.uncertain.push(Uncertain::Kv {
                    key,
                    attempted: bytes,
                    prev,
                });
                Err(unavailable(&what, e))
            }
        }
    }

    async fn put_room(
        &self,
        state: &mut State,
        room: &str,
        value: RoomValue,
    ) -> Result<(), StoreError> {
        let (known, prev) = match state.rooms.get(room) {
            Some(r) if r.revision > 0 => (r.revision, Some(Bytes::from(encode_json(&r.value)?))),
            _ => (0, None),
        };
        let bytes = Bytes::from(encode_json(&value)?);
        let conflict = format!(
            "room {room:?} was changed in NATS by another relay; this relay no longer writes it"
        );
        let key = self.names.room_key(room);
        let revision = self
            .kv_write(state, key, bytes, known, prev, conflict)
            .await?;
        let r = state.rooms.entry(room.to_owned()).or_default();
        r.value = value;
        r.revision = revision;
        Ok(())
    }

    async fn delete_room(&self, state: &mut State, room: &str) -> Result<(), StoreError> {
        timed(
            "purge",
            self.history
                .purge()
                .filter(self.names.history_any(room))
                .into_future(),
        )
        .await
        .map_err(|e| unavailable("deleting a room's history", e))?;
        if let Some(r) = state.rooms.get_mut(room) {
            r.last_hist = 0;
        }
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room);
        timed("kv_purge", self.state_kv.purge(self.names.room_key(room)))
            .await
            .map_err(|e| unavailable("deleting a room", e))?;
        state.rooms.remove(room);
        Ok(())
    }

    async fn put_global(&self, state: &mut State, global: &GlobalPolicy) -> Result<(), StoreError> {
        let known = state.global_revision;
        let prev = match known {
            0 => None,
            _ => Some(Bytes::from(encode_json(&state.global)?)),
        };
        let bytes = Bytes::from(encode_json(global)?);
        let conflict = "the app-wide lists were changed in NATS by another relay".to_owned();
        let key = Names::GLOBAL_KEY.to_owned();
        state.global_revision = self
            .kv_write(state, key, bytes, known, prev, conflict)
            .await?;
        state.global = global.clone();
        Ok(())
    }

    /// Publishes `payload` on `subject` expecting `expected` as the subject's last stream
    /// sequence; the new message's stream sequence.
    async fn publish_fenced(
        &self,
        subject: &str,
        payload: Bytes,
        expected: u64,
    ) -> Result<u64, async_nats::jetstream::context::PublishError> {
        let ack = self
            .js
            .send_publish(
                subject.to_owned(),
                jetstream::message::PublishMessage::build()
                    .payload(payload)
                    .expected_last_subject_sequence(expected),
            )
            .await?
            .await?;
        Ok(ack.sequence)
    }

    async fn append(
        &self,
        state: &mut State,
        room: &str,
        msg: &StoredMessage,
    ) -> Result<(), StoreError> {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let subject = self.names.history(HistoryKind::Message, room);
        let payload = Bytes::from(
            postcard::to_stdvec(msg).map_err(|e| StoreError::Damaged(format!("encoding: {e}")))?,
        );
        let mut expected = state.rooms.get(room).map_or(0, |r| r.last_hist);
        let mut retried = false;
        let sseq = loop {
            let out = timed(
                "append",
                self.publish_fenced(&subject, payload.clone(), expected),
            )
            .await;
            match out {
                Ok(sseq) => break sseq,
                Err(e)
                    if (e.kind() == K::WrongLastSequence || wrong_last_sequence(&e))
                        && !retried =>
                {
                    // Either another writer appended, or every message of the room expired
                    // (age) or was purged, which leaves the subject empty: only then is
                    // expecting nothing right.
                    let last = timed(
                        "get_last",
                        self.history.direct_get_last_for_subject(subject.clone()),
                    )
                    .await;
                    match last {
                        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
                            expected = 0;
                            retried = true;
                        }
                        Ok(found) => {
                            return Err(StoreError::Fenced(format!(
                                "room {room:?}: another writer appended to its history (its last \
                                 stream sequence is {}, this relay expected {expected}); this \
                                 relay no longer writes it",
                                found.sequence
                            )));
                        }
                        Err(e) => return Err(unavailable("checking a refused append", e)),
                    }
                }
                Err(e) if e.kind() == K::WrongLastSequence || wrong_last_sequence(&e) => {
                    return Err(StoreError::Fenced(format!(
                        "room {room:?}: another writer appended to its history; this relay no \
                         longer writes it"
                    )));
                }
                Err(e) => {
                    if matches!(e.kind(), K::TimedOut | K::BrokenPipe | K::Other) {
                        state.uncertain.push(Uncertain::Append {
                            room: room.to_owned(),
                            prev: expected,
                            seq: msg.seq,
                        });
                    }
                    return Err(unavailable("appending a message", e));
                }
            }
        };
        state.rooms.entry(room.to_owned()).or_default().last_hist = sseq;
        self.index_insert(room, msg.seq, sseq);
        Ok(())
    }

    async fn recall(&self, state: &mut State, room: &str, seq: u64) -> Result<(), StoreError> {
        let Some(sseq) = self.index_get(room, seq) else {
            return Ok(());
        };
        let Some(mut msg) = self.get(sseq).await? else {
            return Ok(());
        };
        if msg.recalled {
            return Ok(());
        }
        msg.recalled = true;
        msg.body = Bytes::new();
        let payload = Bytes::from(
            postcard::to_stdvec(&msg).map_err(|e| StoreError::Damaged(format!("encoding: {e}")))?,
        );
        let uncertain = || Uncertain::Marker {
            room: room.to_owned(),
            seq,
        };
        let marker = timed("recall", async {
            self.js
                .publish(self.names.history(HistoryKind::Recall, room), payload)
                .await?
                .await
        })
        .await
        .map_err(|e| {
            state.uncertain.push(uncertain());
            unavailable("recalling a message", e)
        })?;
        // The body goes, then the marker stands in for the message. Should the deletion fail,
        // the marker is removed again before the store takes writes: the recall was not made.
        timed("delete", self.history.delete_message(sseq))
            .await
            .map_err(|e| {
                state.uncertain.push(uncertain());
                unavailable("recalling a message: deleting its body", e)
            })?;
        self.index_insert(room, seq, marker.sequence);
        Ok(())
    }

    /// Reads `room` as NATS holds it now: its value and revision, its history subject's last
    /// stream sequence and newest message, and where each of its messages is.
    async fn reload(
        &self,
        state: &mut State,
        room: &str,
    ) -> Result<Option<LoadedRoom>, StoreError> {
        let entry = timed("kv_get", self.state_kv.entry(self.names.room_key(room)))
            .await
            .map_err(|e| unavailable("reloading a room", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            state.rooms.remove(room);
            return Ok(None);
        };
        let value: RoomValue = decode_json(&entry.value, &format!("room {room:?}"))?;
        let what = "reloading a room's history";
        let last_msg = self.last_of(HistoryKind::Message, room, what).await?;
        let last_marker = self.last_of(HistoryKind::Recall, room, what).await?;
        let mut newest: Option<(u64, u64)> = None;
        self.index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room);
        if last_msg.is_some() || last_marker.is_some() {
            let all = jetstream::consumer::DeliverPolicy::All;
            self.scan(
                &self.history,
                all,
                self.names.history_any(room),
                "reloading a room's history",
                |msg, sseq| {
                    let stored: StoredMessage = decode_msg(&msg.payload, room, sseq)?;
                    self.index_insert(room, stored.seq, sseq);
                    if newest.is_none_or(|(seq, _)| seq < stored.seq) {
                        newest = Some((stored.seq, stored.ts));
                    }
                    Ok(())
                },
            )
            .await?;
        }
        let loaded = value.record.clone().map(|record| LoadedRoom {
            record,
            attrs: value.attrs.clone().into_iter().collect(),
            newest,
        });
        state.rooms.insert(
            room.to_owned(),
            RoomState {
                value,
                revision: entry.revision,
                last_hist: last_msg.unwrap_or(0),
                newest,
            },
        );
        Ok(loaded)
    }

    /// Reads the app-wide lists as NATS holds them now, with their revision.
    async fn reload_global(&self, state: &mut State) -> Result<GlobalPolicy, StoreError> {
        let entry = timed("kv_get", self.state_kv.entry(Names::GLOBAL_KEY))
            .await
            .map_err(|e| unavailable("reloading the app-wide lists", e))?;
        match entry.filter(|e| e.operation == kv::Operation::Put) {
            Some(entry) => {
                state.global = decode_json(&entry.value, "the app-wide lists")?;
                state.global_revision = entry.revision;
            }
            None => {
                state.global = GlobalPolicy::default();
                state.global_revision = 0;
            }
        }
        Ok(state.global.clone())
    }

    /// Whether NATS answers now: a stream info request.
    async fn probe(&self) -> Result<(), StoreError> {
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(StoreError::Unavailable("no connection to NATS".into()));
        }
        self.history
            .get_info()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("probe", e))
    }

    /// Undoes what an unanswered write did, if it landed after all.
    async fn settle(&self, state: &mut State) -> Result<(), StoreError> {
        while let Some(u) = state.uncertain.pop() {
            let r = match &u {
                Uncertain::Append { room, prev, seq } => {
                    self.settle_append(room, *prev, *seq).await
                }
                Uncertain::Kv {
                    key,
                    attempted,
                    prev,
                } => self.settle_kv(state, key, attempted, prev.as_ref()).await,
                Uncertain::Marker { room, seq } => self.settle_marker(room, *seq).await,
            };
            if let Err(e) = r {
                state.uncertain.push(u);
                return Err(e);
            }
        }
        Ok(())
    }

    async fn settle_append(&self, room: &str, prev: u64, seq: u64) -> Result<(), StoreError> {
        let subject = self.names.history(HistoryKind::Message, room);
        match self.history.direct_get_last_for_subject(subject).await {
            Ok(last) if last.sequence != prev => {
                let m: StoredMessage = decode_msg(&last.payload, room, last.sequence)?;
                if m.seq == seq {
                    tracing::info!(room, seq, "undoing an append NATS took after refusing it");
                    self.history
                        .delete_message(last.sequence)
                        .await
                        .map_err(|e| unavailable("undoing an append", e))?;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable("checking an unanswered append", e)),
        }
    }

    async fn settle_marker(&self, room: &str, seq: u64) -> Result<(), StoreError> {
        let subject = self.names.history(HistoryKind::Recall, room);
        match self.history.direct_get_last_for_subject(subject).await {
            Ok(last) => {
                let m: StoredMessage = decode_msg(&last.payload, room, last.sequence)?;
                if m.seq == seq && self.index_get(room, seq) != Some(last.sequence) {
                    tracing::info!(room, seq, "removing the marker of a recall that failed");
                    self.history
                        .delete_message(last.sequence)
                        .await
                        .map_err(|e| unavailable("undoing a recall", e))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable("checking an unanswered recall", e)),
        }
    }

    async fn settle_kv(
        &self,
        state: &mut State,
        key: &str,
        attempted: &Bytes,
        prev: Option<&Bytes>,
    ) -> Result<(), StoreError> {
        let entry = self
            .state_kv
            .entry(key)
            .await
            .map_err(|e| unavailable("checking an unanswered write", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(());
        };
        if entry.value != *attempted {
            return Ok(());
        }
        tracing::info!(key, "undoing a KV write NATS took after refusing it");
        let revision = match prev {
            Some(v) => self
                .state_kv
                .update(key, v.clone(), entry.revision)
                .await
                .map_err(|e| unavailable("undoing a write", e))?,
            None => {
                self.state_kv
                    .purge_expect_revision(key, Some(entry.revision))
                    .await
                    .map_err(|e| unavailable("undoing a write", e))?;
                0
            }
        };
        if key == Names::GLOBAL_KEY {
            state.global_revision = revision;
        } else if let Some(room) = self.names.parse_room_key(key)
            && let Some(r) = state.rooms.get_mut(&room)
        {
            r.revision = revision;
        }
        Ok(())
    }
}

/// Whether `e` (or an error under it) is JetStream's "wrong last sequence": 10071, or 10164
/// (the form some server paths use, which async-nats reports as an "other" error).
fn wrong_last_sequence(e: &(dyn std::error::Error + 'static)) -> bool {
    use async_nats::jetstream::ErrorCode;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(js) = err.downcast_ref::<async_nats::jetstream::Error>() {
            let code = js.error_code();
            return code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        cur = err.source();
    }
    false
}

fn is_value_op(op: &Op) -> bool {
    matches!(
        op,
        Op::PutRoom(_)
            | Op::PutAttr { .. }
            | Op::DeleteAttr { .. }
            | Op::ReserveSeq { .. }
            | Op::Touch { .. }
    )
}

fn room_of(op: &Op) -> &str {
    match op {
        Op::PutRoom(r) => &r.id,
        Op::PutAttr { room, .. }
        | Op::DeleteAttr { room, .. }
        | Op::ReserveSeq { room, .. }
        | Op::Touch { room, .. }
        | Op::Append { room, .. }
        | Op::Recall { room, .. } => room,
        Op::DeleteRoom(r) => r,
        Op::PutGlobal(_) => "",
    }
}

/// One op on a room's value, with the redb store's rules: over a record of the same epoch,
/// `seq_reserved` and `last_activity_ms` never go down.
fn fold(value: &mut RoomValue, op: &Op) {
    match op {
        Op::PutRoom(record) => {
            let mut record = record.clone();
            if let Some(old) = &value.record
                && old.epoch == record.epoch
            {
                record.seq_reserved = record.seq_reserved.max(old.seq_reserved);
                record.last_activity_ms = record.last_activity_ms.max(old.last_activity_ms);
            }
            value.record = Some(record);
        }
        Op::PutAttr { key, attr, .. } => {
            value.attrs.insert(key.clone(), attr.clone());
        }
        Op::DeleteAttr { key, .. } => {
            value.attrs.remove(key);
        }
        Op::ReserveSeq { upto, .. } => {
            if let Some(r) = &mut value.record {
                r.seq_reserved = r.seq_reserved.max(*upto);
            }
        }
        Op::Touch { at_ms, .. } => {
            if let Some(r) = &mut value.record {
                r.last_activity_ms = r.last_activity_ms.max(*at_ms);
            }
        }
        _ => {}
    }
}

/// A value of the state bucket, as a relay other than its writer reads it (see
/// [`parse_state`]).
#[derive(Debug, Clone, PartialEq)]
pub enum StateValue {
    /// A room's record (`None` while it has none) and attributes.
    Room {
        /// Room id.
        id: String,
        /// Its record.
        record: Option<RoomRecord>,
        /// Its attributes by key.
        attrs: Vec<(String, AttrRecord)>,
    },
    /// The app-wide lists.
    Global(GlobalPolicy),
}

/// Decodes the state bucket's value `value` at `key`; `None` for a key roomcast does not
/// write there.
pub fn parse_state(
    names: &Names,
    key: &str,
    value: &[u8],
) -> Result<Option<StateValue>, StoreError> {
    if key == Names::GLOBAL_KEY {
        return decode_json(value, "the app-wide lists").map(|g| Some(StateValue::Global(g)));
    }
    let Some(id) = names.parse_room_key(key) else {
        return Ok(None);
    };
    let v: RoomValue = decode_json(value, &format!("room {id:?}"))?;
    Ok(Some(StateValue::Room {
        id,
        record: v.record,
        attrs: v.attrs.into_iter().collect(),
    }))
}

fn encode_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Damaged(format!("encoding: {e}")))
}

fn decode_json<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(b)
        .map_err(|e| StoreError::Damaged(format!("{what} in the NATS state bucket: {e}")))
}

fn decode_msg(b: &[u8], room: &str, sseq: u64) -> Result<StoredMessage, StoreError> {
    postcard::from_bytes(b).map_err(|e| {
        StoreError::Damaged(format!(
            "history message at stream sequence {sseq} of room {room:?}: {e}"
        ))
    })
}

/// The writer: applies submits in order; while failing, probes until NATS answers.
async fn writer(nats: Arc<Nats>, mut state: State, rx: flume::Receiver<Job>, health: Arc<Health>) {
    let mut backoff = Duration::from_millis(100);
    let mut next_probe = Instant::now();
    loop {
        let stats = nats.client.statistics();
        metrics::counter!(m::NATS_BYTES_IN).absolute(stats.in_bytes.load(Ordering::Relaxed));
        metrics::counter!(m::NATS_BYTES_OUT).absolute(stats.out_bytes.load(Ordering::Relaxed));
        if !health.writable() && Instant::now() >= next_probe {
            let ok = match nats.probe().await {
                Ok(()) => nats.settle(&mut state).await,
                Err(e) => Err(e),
            };
            match ok {
                Ok(()) => {
                    tracing::info!("NATS answers again; taking writes");
                    health.recovered();
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    health.failed(&e);
                    next_probe = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        let job = match tokio::time::timeout(TICK, rx.recv_async()).await {
            Err(_) => continue,
            Ok(Err(_)) => return,
            Ok(Ok(job)) => job,
        };
        match job {
            Job::Close(done) => {
                let _ = done.send(());
                return;
            }
            Job::Reload { room, done } => {
                let out = if health.writable() {
                    nats.reload(&mut state, &room).await
                } else {
                    Err(health.refusal())
                };
                let _ = done.send(out);
            }
            Job::ReloadGlobal { done } => {
                let out = if health.writable() {
                    nats.reload_global(&mut state).await
                } else {
                    Err(health.refusal())
                };
                let _ = done.send(out);
            }
            Job::Ops { ops, then, ack } => {
                let outcome = if health.writable() {
                    nats.apply(&mut state, ops).await
                } else {
                    Err(health.refusal())
                };
                if let Err(e) = &outcome
                    && matches!(e, StoreError::Unavailable(_))
                    && health.writable()
                {
                    tracing::warn!(error = %e, "a NATS write failed; refusing writes until NATS answers");
                    health.failed(e);
                    next_probe = Instant::now() + backoff;
                }
                if let Some(then) = then {
                    then.run(outcome.as_ref().map(|_| ()));
                }
                if let Some(ack) = ack {
                    let _ = ack.send(outcome);
                }
            }
        }
    }
}

impl Store for NatsStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        if let Some(s) = self
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Ok(s);
        }
        Err(StoreError::Unavailable(
            "the NATS store is loaded once, when it opens".into(),
        ))
    }

    fn submit_then(&self, ops: Vec<Op>, then: Option<Then>) -> Ack {
        if !self.health.writable() {
            if let Some(t) = then {
                t.forget();
            }
            return Ack::failed(self.health.refusal());
        }
        if ops.is_empty() {
            if let Some(t) = then {
                t.run(Ok(()));
            }
            return Ack::done();
        }
        let sync = self.durability == Durability::Sync;
        let (ack_tx, ack_rx) = oneshot::channel();
        let job = Job::Ops {
            ops,
            then,
            ack: sync.then_some(ack_tx),
        };
        match self.tx.try_send(job) {
            Ok(()) if sync => Ack::pending(ack_rx),
            Ok(()) => Ack::done(),
            Err(e) => {
                let (flume::TrySendError::Full(job) | flume::TrySendError::Disconnected(job)) = e;
                if let Job::Ops { then: Some(t), .. } = job {
                    t.forget();
                }
                metrics::counter!(m::NATS_QUEUE_FULL).increment(1);
                Ack::failed(StoreError::Unavailable(
                    "the NATS store's queue is full".into(),
                ))
            }
        }
    }

    fn writable(&self) -> bool {
        self.health.writable()
    }

    fn health(&self) -> StoreHealth {
        self.health.snapshot()
    }

    fn history(
        &self,
        room: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        // What other relays appended first, then all candidates (at most `history_max`): one
        // trimmed meanwhile is skipped for an older.
        let nats = self.nats.clone();
        let owned = room.to_owned();
        self.block(async move { nats.refresh(&owned).await })?;
        let mut wanted = self.stream_seqs(room, before_seq.unwrap_or(u64::MAX), usize::MAX);
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let nats = self.nats.clone();
        self.block(async move {
            // Newest first until `limit` are found: a message trimmed meanwhile is skipped.
            let mut out = Vec::with_capacity(limit);
            while out.len() < limit && !wanted.is_empty() {
                let take = (limit - out.len()).min(wanted.len());
                let batch: Vec<u64> = wanted.drain(..take).collect();
                let got = futures_util::stream::iter(batch.into_iter().map(|s| nats.get(s)))
                    .buffered(READ_CONCURRENCY)
                    .collect::<Vec<_>>()
                    .await;
                for m in got {
                    if let Some(m) = m? {
                        out.push(m);
                    }
                }
            }
            out.reverse();
            Ok(out)
        })
    }

    fn message(&self, room: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError> {
        let sseq = match self.nats.index_get(room, seq) {
            Some(sseq) => sseq,
            None => {
                // Perhaps appended by another relay: look at the stream once.
                let nats = self.nats.clone();
                let owned = room.to_owned();
                self.block(async move { nats.refresh(&owned).await })?;
                match self.nats.index_get(room, seq) {
                    Some(sseq) => sseq,
                    None => return Ok(None),
                }
            }
        };
        let nats = self.nats.clone();
        self.block(async move { nats.get(sseq).await })
    }

    fn reload_room(&self, room: &str) -> Result<Option<LoadedRoom>, StoreError> {
        if !self.health.writable() {
            return Err(self.health.refusal());
        }
        let (done, rx) = std::sync::mpsc::channel();
        let job = Job::Reload {
            room: room.to_owned(),
            done,
        };
        if self.tx.try_send(job).is_err() {
            metrics::counter!(m::NATS_QUEUE_FULL).increment(1);
            return Err(StoreError::Unavailable(
                "the NATS store's queue is full".into(),
            ));
        }
        // Behind what was queued before it, each bounded by its timeouts.
        rx.recv_timeout(self.nats.timeout * 4)
            .map_err(|_| unavailable("reloading a room", "no answer in time"))?
    }

    fn reload_global(&self) -> Result<GlobalPolicy, StoreError> {
        if !self.health.writable() {
            return Err(self.health.refusal());
        }
        let (done, rx) = std::sync::mpsc::channel();
        if self.tx.try_send(Job::ReloadGlobal { done }).is_err() {
            metrics::counter!(m::NATS_QUEUE_FULL).increment(1);
            return Err(StoreError::Unavailable(
                "the NATS store's queue is full".into(),
            ));
        }
        // Behind what was queued before it, each bounded by its timeouts.
        rx.recv_timeout(self.nats.timeout * 4)
            .map_err(|_| unavailable("reloading the app-wide lists", "no answer in time"))?
    }

    fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.try_send(Job::Close(tx)).is_ok() {
            // Everything queued before is applied first (or fails), bounded by its timeouts.
            let _ = rx.recv_timeout(self.nats.timeout * 4);
        }
        self.health.close();
        metrics::gauge!(m::NATS_CONNECTED).set(0.0);
    }
}

impl Drop for NatsStore {
    fn drop(&mut self) {
        self.close();
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}
