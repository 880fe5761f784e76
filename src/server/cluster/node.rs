//! One relay's part in a cluster (see [`crate::store::nats`] for the design): the room leases it
//! holds, the sends it forwards to other rooms' owners and answers for its own, the live traffic
//! it publishes and subscribes to, and its cache of every room's state from one KV watch.

use super::holes::{self, Seen, Stamp, TERM_HEADER};
use super::lease::{Lease, LeaseStep};
use crate::metrics as m;
use crate::protocol::{
    Class, ErrorCode, Event, Message, WireError, decode_body, encode_datagram, encode_frame,
};
use crate::room::ring::{ClassCounts, class_index};
use crate::room::{Entry, Outgoing, Payload, Room};
use crate::server::ServerError;
use crate::server::data::{Actor, AttrCall, AttrResults};
use crate::server::relay::{Relay, SEQ_RESERVE, Stamped, now_ms};
use crate::store::nats::{Names, StateValue, parse_state};
use crate::store::{NatsConfig, Op, StoredMessage};
use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Live messages queued for NATS at most; past it one is dropped and counted in
/// [`m::CLUSTER_LIVE_DROPPED`].
const LIVE_QUEUE: usize = 65_536;
/// Forwarded sends an owner works on at once per room; past it a request is answered
/// `UNAVAILABLE` at once.
const SERVING: usize = 4_096;
/// Longest pause between a forwarded send's tries to find or become the room's owner.
const FORWARD_PAUSE_MAX: Duration = Duration::from_millis(200);
/// Header of a live message: present when join history may show it.
const KEEP_HEADER: &str = "Roomcast-Keep";
/// A member count not rewritten for this many lease TTLs is gone (its relay is).
const COUNT_TTLS: u32 = 3;
/// Header of a forwarded request that is an admin change ([`AdminCall`]), not a send.
const ADMIN_HEADER: &str = "Roomcast-Admin";
/// Header of a forwarded request that is a client's attribute change ([`AttrCall`]).
const ATTR_HEADER: &str = "Roomcast-Attr";
/// Most messages one hole fill reads from history; numbers beyond are counted in a `Gap`.
const FILL_MAX: u64 = 1000;
/// How long a hole fill tries to read history (the relay's store may be reconnecting after the
/// outage that made the hole) before it counts the hole in a `Gap`.
const FILL_TRYING: Duration = Duration::from_secs(10);

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS refused or did not answer.
    #[error("cluster: {0}")]
    Nats(String),
}

impl From<ClusterError> for ServerError {
    fn from(e: ClusterError) -> Self {
        ServerError::Data(e.to_string())
    }
}

fn nats_err(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(format!("NATS: {what}: {e}"))
}

fn unavailable(msg: impl Into<String>) -> WireError {
    WireError::new(ErrorCode::Unavailable, msg)
}

/// A task stopped when its handle goes.
struct Owned<T>(JoinHandle<T>);

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The lease value in `P_leases`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseValue {
    node: String,
    /// The KV revision at which this owner acquired the lease (0 in the acquiring write).
    term: u64,
    /// The numbers the last owner reserved and never used, as this owner found them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unused: Option<Unused>,
}

/// Sequence numbers of a room no message has: `newest < seq < first`, where `newest` was the
/// room's newest stored message when an owner took it and `first` the first number it assigns
/// (the numbers between were reserved by the last owner and never used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Unused {
    epoch: u64,
    newest: u64,
    first: u64,
}

/// A room this relay owns.
struct Held {
    lease: Lease,
    revision: u64,
    term: u64,
    unused: Option<Unused>,
    /// Answers the room's forwarded requests; told to stop when this relay steps down.
    responder: Owned<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A room whose live subject this relay is subscribed to.
struct LiveSub {
    ready: tokio::sync::watch::Receiver<bool>,
    _task: Owned<()>,
}

/// One live message on its way to NATS.
struct LiveOut {
    subject: String,
    keep: bool,
    /// The owner's stamp ([`TERM_HEADER`]).
    stamp: Option<String>,
    frame: Bytes,
}

/// A send forwarded to a room's owner.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    from: String,
    msg_type: String,
    body: Bytes,
    class: Class,
    keep: bool,
}

/// An admin API call forwarded to a room's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminCall {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The request body.
    pub body: Bytes,
}

/// The owner's admin API answer to an [`AdminCall`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminAnswer {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The response body.
    pub body: Bytes,
}

impl AdminAnswer {
    /// An error answer as the admin API gives it (`{"error", "message"}`).
    pub fn error(code: ErrorCode, message: String) -> Self {
        let body = serde_json::json!({"error": code, "message": message});
        AdminAnswer {
            status: code.http_status(),
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_string()),
        }
    }
}

/// Runs a forwarded admin call through this relay's admin API.
pub type AdminHandler = Arc<
    dyn Fn(AdminCall) -> std::pin::Pin<Box<dyn std::future::Future<Output = AdminAnswer> + Send>>
        + Send
        + Sync,
>;

/// The owner's answer to a forwarded send.
#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Sent { seq: u64, ts: u64 },
    Refused(WireError),
}

/// One room's member counts on the other relays: node → (count, when it was last written).
type NodeCounts = HashMap<String, (usize, Instant)>;

/// A relay's part in the cluster.
pub struct Cluster {
    node: String,
    names: Names,
    client: async_nats::Client,
    leases: kv::Store,
    state: kv::Store,
    ttl_ms: u64,
    timeout: Duration,
    started: Instant,
    relay: Weak<Relay>,
    held: Mutex<HashMap<String, Held>>,
    live: Mutex<HashMap<String, LiveSub>>,
    live_tx: flume::Sender<LiveOut>,
    /// One acquisition at a time (they are rare: a room's first send, or a failover).
    acquiring: tokio::sync::Mutex<()>,
    /// This relay's admin API, for changes other relays forward (dropped at shutdown).
    admin: Mutex<Option<AdminHandler>>,
    /// Responders of rooms this relay stepped down from, answering what they had taken.
    retired: Mutex<Vec<Owned<()>>>,
    members: kv::Store,
    /// This relay's member count per room, and whether it is to be written.
    counts: Mutex<HashMap<String, (usize, bool)>>,
    /// The other relays' member counts per room, by node, with when each was last written.
    remote_counts: Mutex<HashMap<String, NodeCounts>>,
    count_interval: Duration,
    tasks: Mutex<Vec<Owned<()>>>,
    /// Per room, this relay's term as its owner and what it placed in it (the live stamps).
    terms: Mutex<HashMap<String, Arc<Mutex<Option<Stamp>>>>>,
    /// Per room, the never-used numbers its latest owner change left, from the leases bucket.
    unused: Mutex<HashMap<String, Unused>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// Connects (a connection of its own, which never receives what it publishes), opens the
    /// leases bucket (making it, or setting its age limit to the lease TTL) and the state
    /// bucket, and starts the renewals, the live publisher and the state watch.
    pub async fn start(
        relay: &Arc<Relay>,
        nats: NatsConfig,
        ttl_ms: u64,
        count_interval: Duration,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let (opts, servers) = crate::store::nats::connect_options(&nats)
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let client = opts
            .name(format!("roomcast {} cluster", nats.node_id))
            .no_echo()
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics::gauge!(m::CLUSTER_CONNECTED).set(1.0);
                    }
                    async_nats::Event::Disconnected => {
                        metrics::gauge!(m::CLUSTER_CONNECTED).set(0.0);
                        tracing::warn!("lost the cluster connection to NATS; sends to rooms other relays own are refused");
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        metrics::counter!(m::CLUSTER_LIVE_OVERFLOW).increment(1);
                        tracing::warn!("live traffic came faster than this relay took it; the holes are filled from history or counted");
                    }
                    other => tracing::debug!(event = %other, "NATS cluster connection event"),
                }
            })
            .connect(servers)
            .await
            .map_err(|e| nats_err(&format!("cannot connect to {}", nats.servers.join(", ")), e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(nats.request_timeout)
            .build(client.clone());
        let names = Names::new(&nats.prefix);
        let ttl = Duration::from_millis(ttl_ms);
        let leases = match js.get_key_value(names.leases_bucket()).await {
            Ok(kv) => {
                let stream_name = format!("KV_{}", names.leases_bucket());
                let mut stream = js
                    .get_stream(&stream_name)
                    .await
                    .map_err(|e| nats_err("opening the leases bucket", e))?;
                let info = stream
                    .info()
                    .await
                    .map_err(|e| nats_err("reading the leases bucket", e))?;
                if info.config.max_age != ttl {
                    let mut changed = info.config.clone();
                    changed.max_age = ttl;
                    js.update_stream(changed)
                        .await
                        .map_err(|e| nats_err("setting the leases bucket's TTL", e))?;
                }
                kv
            }
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: names.leases_bucket(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: nats.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("creating the leases bucket", e))?,
        };
        let state = js
            .get_key_value(names.state_bucket())
            .await
            .map_err(|e| nats_err("opening the state bucket", e))?;
        // A relay rewrites its counts every lease TTL; a dead relay's go after three.
        let members = match js.get_key_value(names.members_bucket()).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: names.members_bucket(),
                    history: 1,
                    max_age: ttl * COUNT_TTLS,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: nats.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats_err("creating the members bucket", e))?,
        };
        let (live_tx, live_rx) = flume::bounded(LIVE_QUEUE);
        let cluster = Arc::new(Cluster {
            node: nats.node_id.clone(),
            names,
            client,
            leases,
            state,
            ttl_ms,
            timeout: nats.request_timeout,
            started: Instant::now(),
            relay: Arc::downgrade(relay),
            held: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            live_tx,
            acquiring: tokio::sync::Mutex::new(()),
            admin: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            members,
            counts: Mutex::new(HashMap::new()),
            remote_counts: Mutex::new(HashMap::new()),
            count_interval,
            tasks: Mutex::new(Vec::new()),
            terms: Mutex::new(HashMap::new()),
            unused: Mutex::new(HashMap::new()),
        });
        for room in relay.all_rooms() {
            cluster.observe(&room);
        }
        let tasks = vec![
            Owned(tokio::spawn(publisher(cluster.client.clone(), live_rx))),
            Owned(tokio::spawn(renewer(Arc::downgrade(&cluster)))),
            Owned(tokio::spawn(watcher(Arc::downgrade(&cluster)))),
            Owned(tokio::spawn(count_writer(Arc::downgrade(&cluster)))),
            Owned(tokio::spawn(count_watcher(Arc::downgrade(&cluster)))),
            Owned(tokio::spawn(lease_watcher(Arc::downgrade(&cluster)))),
        ];
        *lock(&cluster.tasks) = tasks;
        metrics::gauge!(m::CLUSTER_OWNED_ROOMS).set(0.0);
        metrics::gauge!(m::CLUSTER_LIVE_ROOMS).set(0.0);
        metrics::gauge!(m::CLUSTER_CONNECTED).set(1.0);
        tracing::info!(node = %cluster.node, lease_ttl_ms = ttl_ms, "cluster: rooms span relays");
        Ok(cluster)
    }

    /// Milliseconds on this relay's monotonic clock (the lease's time base).
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    // ---- live traffic ----

    /// Makes `room` publish every message it places (as its owner sequences them) once on its
    /// live subject.
    pub fn observe(&self, room: &Room) {
        let tx = self.live_tx.clone();
        let subject = self.names.live(&room.id);
        let term = self.term_of(&room.id);
        room.ring.observe(Box::new(move |e: &Entry| {
            // Under the ring's publisher lock: counted in placement order.
            let stamp = lock(&term).as_mut().map(|s| {
                s.counts[class_index(e.class)] += 1;
                s.encode()
            });
            let out = LiveOut {
                subject: subject.clone(),
                keep: e.history.is_some(),
                stamp,
                frame: e.frame.clone(),
            };
            if tx.try_send(out).is_err() {
                metrics::counter!(m::CLUSTER_LIVE_DROPPED).increment(1);
            }
        }));
    }

    /// This relay has members of `room` (`on`: its first came) or none any more: subscribes to
    /// the room's live subject, or unsubscribes.
    pub fn interest(self: &Arc<Self>, room: &str, on: bool) {
        let mut live = lock(&self.live);
        if !on {
            if live.remove(room).is_some() {
                metrics::gauge!(m::CLUSTER_LIVE_ROOMS).decrement(1.0);
            }
            return;
        }
        if live.contains_key(room) {
            return;
        }
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(live_in(Arc::downgrade(self), room.to_owned(), ready_tx));
        live.insert(
            room.to_owned(),
            LiveSub {
                ready,
                _task: Owned(task),
            },
        );
        metrics::gauge!(m::CLUSTER_LIVE_ROOMS).increment(1.0);
    }

    /// Waits (at most the request timeout) until the live subscription of `room`, if this relay
    /// has one, is in place at the NATS server: a join answered after it misses nothing the
    /// owner publishes later.
    pub async fn live_ready(&self, room: &str) {
        let ready = lock(&self.live).get(room).map(|s| s.ready.clone());
        if let Some(mut ready) = ready {
            let waited = tokio::time::timeout(self.timeout, ready.wait_for(|r| *r)).await;
            if !matches!(waited, Ok(Ok(_))) {
                tracing::warn!(room, "the live subscription is not in place yet");
            }
        }
    }

    /// This relay's term of `room` as its owner, shared with the room's observer.
    fn term_of(&self, room: &str) -> Arc<Mutex<Option<Stamp>>> {
        lock(&self.terms)
            .entry(room.to_owned())
            .or_default()
            .clone()
    }

    /// The never-used numbers `(newest, first)` of the incarnation `epoch` of `room` that its
    /// latest ownership change left, as the leases bucket told this relay.
    pub fn unused(&self, room: &str, epoch: u64) -> Option<(u64, u64)> {
        lock(&self.unused)
            .get(room)
            .filter(|u| u.epoch == epoch)
            .map(|u| (u.newest, u.first))
    }

    /// One change of the leases bucket: the never-used range a new owner wrote.
    fn lease_changed(&self, key: &str, value: Option<&[u8]>) {
        let Some(room) = self.names.parse_room_key(key) else {
            return;
        };
        let Some(unused) = value
            .and_then(|v| serde_json::from_slice::<LeaseValue>(v).ok())
            .and_then(|l| l.unused)
        else {
            return;
        };
        self.learn_unused(room, unused);
    }

    /// Keeps `unused` as `room`'s latest never-used range unless a later one is known.
    fn learn_unused(&self, room: String, unused: Unused) {
        let mut known = lock(&self.unused);
        let newer = known
            .get(&room)
            .is_none_or(|k| (k.epoch, k.first) < (unused.epoch, unused.first));
        if newer {
            known.insert(room, unused);
        }
    }

    /// Puts a live message from the owner into the room's local ring, after what this relay
    /// missed before it: a hole between the ring's newest number and this one is filled from
    /// history first, and what history cannot give is counted in the members' `Gap`. `seen` is
    /// the newest message placed from this subscription.
    async fn arrive(&self, room_id: &str, msg: &async_nats::Message, seen: &mut Option<Seen>) {
        let Some(relay) = self.relay.upgrade() else {
            return;
        };
        metrics::counter!(m::CLUSTER_MESSAGES_IN).increment(1);
        metrics::counter!(m::CLUSTER_BYTES_IN).increment(msg.payload.len() as u64);
        let Ok(room) = relay.room(room_id) else {
            return;
        };
        let frame = msg.payload.clone();
        let event = match frame.get(4..).map(decode_body::<Event>) {
            Some(Ok(Event::Message(m))) if m.room == room.id => m,
            _ => {
                tracing::warn!(room = room_id, "a live message that is not one; dropped");
                return;
            }
        };
        let header = |name: &str| msg.headers.as_ref().and_then(|h| h.get(name));
        let keep = header(KEEP_HEADER).is_some();
        let stamp = header(TERM_HEADER).and_then(|v| Stamp::parse(v.as_str()));
        let (seq, ts, class) = (event.seq, event.ts, event.class);
        let last = room.ring.last_seq();
        if seq <= last {
            metrics::counter!(m::CLUSTER_LIVE_DUPLICATES).increment(1);
            return;
        }
        if seq > last + 1 {
            let expected = holes::expected(last, seq, class, stamp, *seen);
            self.fill(&relay, &room, last, seq, expected).await;
        }
        let datagram =
            (class == Class::Low).then(|| encode_datagram(&Event::Message(event.clone())));
        let payload = Payload {
            class,
            frame,
            datagram,
            history: keep.then_some(event),
        };
        if room.ring.place_remote(seq, ts, payload) {
            room.watchers.notify_all();
            *seen = stamp.map(|stamp| Seen { seq, stamp });
        }
    }

    /// Fills the hole `last < seq < below` of `room`'s ring from history, in seq order, and
    /// counts what history cannot give (see [`holes::missed`]) so the members' next `Gap` tells
    /// it. A bounded read: the newest [`FILL_MAX`] stored messages of the hole, no consumer left
    /// open; tried for [`FILL_TRYING`] while the store cannot be read.
    async fn fill(
        &self,
        relay: &Arc<crate::server::relay::Relay>,
        room: &Arc<Room>,
        last: u64,
        below: u64,
        expected: Option<holes::Expected>,
    ) {
        // Numbers an ownership change left unused hold no message: not read for.
        let unused = self.unused(&room.id, room.epoch).unwrap_or((0, 0));
        let span = holes::used_between(last, below, unused);
        let want = span.min(FILL_MAX) as usize;
        let deadline = Instant::now() + FILL_TRYING;
        let mut pause = Duration::from_millis(50);
        let stored = loop {
            if want == 0 {
                break Some(Vec::new());
            }
            let store = relay.store().clone();
            let id = room.id.clone();
            let read = tokio::task::spawn_blocking(move || store.history(&id, Some(below), want))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.message().to_owned()));
            match read {
                Ok(messages) => break Some(messages),
                Err(e) if Instant::now() + pause < deadline => {
                    tracing::debug!(room = %room.id, error = %e, "cannot read history to fill a hole in live traffic yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::warn!(room = %room.id, error = %e, "cannot read history to fill a hole in live traffic; counted in a Gap");
                    break None;
                }
            }
        };
        let recalls = room.state().recent_recalls.clone();
        let from = expected.map_or(below, |e| e.from);
        let mut found: ClassCounts = [0; 3];
        let mut unknown = 0;
        let mut filled = 0;
        // Numbers of the hole not read (a hole wider than the read, or history unreadable):
        // counted, as many as were used (the term's own are in `expected`).
        let read_from = match &stored {
            None => below,
            Some(raw) if span > FILL_MAX && raw.len() == want => {
                raw.first().map_or(below, |m| m.seq)
            }
            Some(_) => last + 1,
        };
        unknown += holes::used_between(last, read_from.min(from), unused);
        let stored: Vec<StoredMessage> = stored
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.seq > last && m.seq < below)
            .collect();
        for m in stored {
            if m.recalled || recalls.contains(&m.seq) {
                if m.seq < from {
                    unknown += 1;
                }
                continue;
            }
            let class = m.class;
            let seq = m.seq;
            let message = Message {
                room: room.id.clone(),
                seq,
                ts: m.ts,
                from: m.from,
                msg_type: m.msg_type,
                body: m.body,
                class,
            };
            let event = Event::Message(message.clone());
            let payload = Payload {
                class,
                frame: encode_frame(&event),
                datagram: (class == Class::Low).then(|| encode_datagram(&event)),
                history: Some(message),
            };
            if room.ring.place_remote(seq, m.ts, payload) {
                filled += 1;
                if seq >= from {
                    found[class_index(class)] += 1;
                }
            }
        }
        let missed = holes::missed(expected, found, unknown);
        let lost: u64 = missed.iter().sum();
        if lost > 0 {
            room.ring.skip_remote(missed);
            for (class, n) in [("normal", missed[1]), ("low", missed[2])] {
                metrics::counter!(m::CLUSTER_LIVE_MISSED, "class" => class).increment(n);
            }
        }
        metrics::counter!(m::CLUSTER_LIVE_FILLED).increment(filled);
        let outcome = if lost > 0 { "counted" } else { "filled" };
        metrics::counter!(m::CLUSTER_LIVE_HOLES, "outcome" => outcome).increment(1);
        tracing::debug!(room = %room.id, last, below, filled, lost, "a hole in live traffic");
        if filled > 0 {
            room.watchers.notify_all();
        }
    }

    /// Right after a subscription is in place: what the owner stored since this relay's
    /// numbering (the join's read of history) and published before the subscription was in
    /// place is placed from history, so a member who joined then misses none of it.
    async fn fill_to_newest(&self, room_id: &str) {
        let Some(relay) = self.relay.upgrade() else {
            return;
        };
        let Ok(room) = relay.room(room_id) else {
            return;
        };
        if self.sequences(room_id) {
            return;
        }
        let store = relay.store().clone();
        let id = room.id.clone();
        let newest = tokio::task::spawn_blocking(move || store.history(&id, None, 1)).await;
        let Some(newest) = newest
            .ok()
            .and_then(Result::ok)
            .and_then(|m| m.last().map(|m| m.seq))
        else {
            return;
        };
        let last = room.ring.last_seq();
        if newest > last {
            self.fill(&relay, &room, last, newest + 1, None).await;
        }
    }

    // ---- member counts across relays ----

    /// This relay now has `members` members of `room`: written to the members bucket within
    /// the member-count interval.
    pub fn count_changed(&self, room: &str, members: usize) {
        lock(&self.counts).insert(room.to_owned(), (members, true));
    }

    /// `room` ended here: no live traffic, no members.
    pub fn room_gone(self: &Arc<Self>, room: &str) {
        self.interest(room, false);
        self.count_changed(room, 0);
    }

    /// Members of `room` on the other relays, as they last wrote their counts (a count not
    /// rewritten for three lease TTLs is not counted: its relay is gone).
    pub fn remote_members(&self, room: &str) -> usize {
        let fresh = Duration::from_millis(self.ttl_ms) * COUNT_TTLS;
        lock(&self.remote_counts).get(room).map_or(0, |nodes| {
            nodes
                .values()
                .filter(|(_, at)| at.elapsed() < fresh)
                .map(|(n, _)| n)
                .sum()
        })
    }

    // ---- cluster-wide member lists (see `super::members`) ----

    /// The other relays that have members of `room`, as their counts say (fresh ones only).
    pub fn member_nodes(&self, room: &str) -> Vec<String> {
        let fresh = Duration::from_millis(self.ttl_ms) * COUNT_TTLS;
        lock(&self.remote_counts)
            .get(room)
            .map_or_else(Vec::new, |nodes| {
                nodes
                    .iter()
                    .filter(|(_, (n, at))| *n > 0 && at.elapsed() < fresh)
                    .map(|(node, _)| node.clone())
                    .collect()
            })
    }

    /// This relay's node id, its names, its NATS connection and its request timeout.
    pub(super) fn parts(&self) -> (&str, &Names, &async_nats::Client, Duration) {
        (&self.node, &self.names, &self.client, self.timeout)
    }

    /// Keeps `task` running as long as the cluster part runs.
    pub(super) fn own(&self, task: JoinHandle<()>) {
        lock(&self.tasks).push(Owned(task));
    }
    // ---- end cluster-wide member lists ----

    /// Writes the counts that changed; every lease TTL, all of them again.
    async fn write_counts(&self, all: bool) {
        let due: Vec<(String, usize)> = {
            let mut counts = lock(&self.counts);
            let due = counts
                .iter_mut()
                .filter(|(_, (_, dirty))| all || *dirty)
                .map(|(room, (n, dirty))| {
                    *dirty = false;
                    (room.clone(), *n)
                })
                .collect();
            counts.retain(|_, (n, dirty)| *n > 0 || *dirty);
            due
        };
        for (room, n) in due {
            let key = self.names.members_key(&room, &self.node);
            let written = match n {
                0 => self.members.purge(&key).await.map_err(|e| e.to_string()),
                n => self
                    .members
                    .put(&key, Bytes::from(n.to_string()))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            if let Err(e) = written {
                tracing::debug!(room = %room, error = %e, "a member count was not written");
                lock(&self.counts).entry(room).or_insert((n, true)).1 = true;
            }
        }
    }

    /// Another relay's count changed.
    fn remote_count(&self, key: &str, count: Option<usize>) {
        let Some((room, node)) = self.names.parse_members_key(key) else {
            return;
        };
        if node == self.node {
            return;
        }
        let mut remote = lock(&self.remote_counts);
        match count {
            Some(n) => {
                remote
                    .entry(room)
                    .or_default()
                    .insert(node, (n, Instant::now()));
            }
            None => {
                if let Some(nodes) = remote.get_mut(&room) {
                    nodes.remove(&node);
                    if nodes.is_empty() {
                        remote.remove(&room);
                    }
                }
            }
        }
    }

    // ---- ownership ----

    /// Whether this relay sequences `room` now: it holds the lease and has not passed the point
    /// where it must stop.
    pub fn sequences(&self, room: &str) -> bool {
        let now = self.now();
        lock(&self.held)
            .get(room)
            .is_some_and(|h| h.lease.may_sequence(now))
    }

    /// Stops sequencing `room` (the store fenced a write, a renewal was refused, or the lease
    /// ran out), counted by `why`.
    pub fn step_down(&self, room: &str, why: &'static str) {
        if let Some(held) = lock(&self.held).remove(room) {
            // It stops taking requests and answers those it took (their changes complete).
            let _ = held.stop.send(true);
            let mut retired = lock(&self.retired);
            retired.retain(|t| !t.0.is_finished());
            retired.push(held.responder);
            metrics::gauge!(m::CLUSTER_OWNED_ROOMS).decrement(1.0);
            metrics::counter!(m::CLUSTER_OWNERSHIP_CHANGES, "change" => why).increment(1);
            tracing::info!(room, why, "stepped down as the room's owner");
        }
    }

    /// Takes `room` if nobody owns it (or an earlier run of this relay did); whether this relay
    /// sequences it now. Failures are logged: the caller's timers try again on their next pass.
    pub async fn claim(self: Arc<Self>, relay: &Arc<Relay>, room: &Arc<Room>) -> bool {
        match self.acquire(relay, room).await {
            Ok(owned) => owned,
            Err(e) => {
                tracing::debug!(room = %room.id, error = %e.message, "cannot take the room now");
                false
            }
        }
    }

    /// Tries to take `room`'s lease: `Ok(true)` when this relay owns it now (it reloaded the
    /// room and reserved sequence numbers above everything the last owner may have used),
    /// `Ok(false)` when another relay holds it.
    async fn acquire(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
    ) -> Result<bool, WireError> {
        let _one = self.acquiring.lock().await;
        if self.sequences(&room.id) {
            return Ok(true);
        }
        let key = self.names.room_key(&room.id);
        let value = |term, unused| {
            serde_json::to_vec(&LeaseValue {
                node: self.node.clone(),
                term,
                unused,
            })
            .map(Bytes::from)
            .map_err(|e| unavailable(format!("encoding a lease: {e}")))
        };
        let sent = self.now();
        let revision = match self.leases.create(&key, value(0, None)?).await {
            Ok(r) => r,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.take_back(&key, value(0, None)?).await {
                    Some(r) => r,
                    None => return Ok(false),
                }
            }
            Err(e) => {
                return Err(unavailable(format!(
                    "NATS: taking room {:?}'s lease: {e}",
                    room.id
                )));
            }
        };
        let owned = async {
            let term = revision;
            // Taken over first, so the lease's value tells every relay the numbers never used.
            let unused = self.take_over(relay, room, term).await?;
            let revision = self
                .leases
                .update(&key, value(term, Some(unused))?, revision)
                .await
                .map_err(|e| {
                    unavailable(format!("NATS: writing room {:?}'s lease: {e}", room.id))
                })?;
            Ok::<_, WireError>((term, revision, unused))
        }
        .await;
        let (term, revision, unused) = match owned {
            Ok(t) => t,
            Err(e) => {
                let _ = self.leases.purge(&key).await;
                return Err(e);
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let responder = Owned(tokio::spawn(serve_forwarded(
            Arc::downgrade(self),
            room.id.clone(),
            self.names.forward(&room.id),
            stopped,
        )));
        lock(&self.held).insert(
            room.id.clone(),
            Held {
                lease: Lease::acquired(self.ttl_ms, sent),
                revision,
                term,
                unused: Some(unused),
                responder,
                stop,
            },
        );
        metrics::gauge!(m::CLUSTER_OWNED_ROOMS).increment(1.0);
        metrics::counter!(m::CLUSTER_OWNERSHIP_CHANGES, "change" => "acquired").increment(1);
        tracing::info!(room = %room.id, term, "this relay owns the room now");
        Ok(true)
    }

    /// A lease held under this relay's own node id by an earlier run of it (it crashed, or
    /// stopped without releasing): taken back at once, compare-and-set on its revision. `None`
    /// when another relay holds it (or it changed meanwhile).
    async fn take_back(&self, key: &str, value: Bytes) -> Option<u64> {
        let entry = self.leases.entry(key).await.ok().flatten()?;
        let held: LeaseValue = serde_json::from_slice(&entry.value).ok()?;
        if entry.operation != kv::Operation::Put || held.node != self.node {
            return None;
        }
        let revision = self.leases.update(key, value, entry.revision).await.ok()?;
        tracing::info!(key, "took back a lease an earlier run of this relay held");
        Some(revision)
    }

    /// As after a restart: reloads `room` from the store (the last owner's writes), continues
    /// its numbering above every number that may have been handed out, and reserves more
    /// (which moves the room's KV revision on: the last owner's next write of it is fenced).
    /// Returns the numbers no message has (`newest < seq < first`) and starts the live stamps'
    /// `term` there.
    async fn take_over(
        &self,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
        term: u64,
    ) -> Result<Unused, WireError> {
        let store = relay.store().clone();
        let id = room.id.clone();
        let loaded = tokio::task::spawn_blocking(move || store.reload_room(&id))
            .await
            .map_err(|e| unavailable(format!("reloading a room: {e}")))?
            .map_err(|e| unavailable(format!("room {:?}: {}", room.id, e.message())))?;
        let Some(loaded) = loaded.filter(|l| l.record.epoch == room.epoch) else {
            return Err(WireError::new(
                ErrorCode::RoomNotFound,
                format!("room {:?} does not exist any more", room.id),
            ));
        };
        let newest = loaded.newest.map_or(0, |(seq, _)| seq);
        // What the last owner stored and this relay's members never got live (it died before
        // publishing it, or the traffic was lost on the way) is theirs before this term's.
        let members_here = relay.core().room(&room.id).is_some_and(|r| !r.is_empty());
        let last = room.ring.last_seq();
        if members_here && newest > last {
            self.fill(relay, room, last, newest + 1, None).await;
        }
        let used = loaded
            .record
            .seq_reserved
            .max(newest)
            .max(room.ring.last_seq());
        relay.refresh_room(room, &loaded.record, loaded.attrs);
        let unused = Unused {
            epoch: room.epoch,
            newest,
            first: used + 1,
        };
        // Before the first number of the term is assigned: its live messages are stamped.
        *lock(&self.term_of(&room.id)) = Some(Stamp {
            term,
            first: used + 1,
            counts: [0; 3],
        });
        self.learn_unused(room.id.clone(), unused);
        room.ring.resume_seq(used + 1);
        // A resume here does not count the numbers the last owner reserved and never used.
        relay
            .core()
            .room_restarted(&room.id, room.epoch, newest, used + 1);
        let upto = used + SEQ_RESERVE;
        relay
            .store()
            .submit(vec![Op::ReserveSeq {
                room: room.id.clone(),
                upto,
            }])
            .wait()
            .await
            .map_err(|e| unavailable(format!("room {:?}: {}", room.id, e.message())))?;
        room.seq_reserved.store(upto, Ordering::Release);
        Ok(unused)
    }

    /// Renews the leases due at `now`; steps down where the time is up or NATS refused.
    async fn renew_due(self: &Arc<Self>) {
        let now = self.now();
        let mut due = Vec::new();
        {
            let mut held = lock(&self.held);
            let mut expired = Vec::new();
            for (room, h) in held.iter_mut() {
                match h.lease.step(now) {
                    LeaseStep::Hold => {}
                    LeaseStep::Renew => {
                        h.lease.renewal_sent(now);
                        due.push((room.clone(), h.revision, h.term, h.unused));
                    }
                    LeaseStep::StepDown => expired.push(room.clone()),
                }
            }
            drop(held);
            for room in expired {
                self.step_down(&room, "expired");
            }
        }
        let renewals = due.into_iter().map(|(room, revision, term, unused)| {
            let this = self.clone();
            async move {
                let value = serde_json::to_vec(&LeaseValue {
                    node: this.node.clone(),
                    term,
                    unused,
                })
                .map(Bytes::from)
                .unwrap_or_default();
                let key = this.names.room_key(&room);
                let out = this.leases.update(&key, value, revision).await;
                (room, out)
            }
        });
        let results: Vec<_> = futures_util::stream::iter(renewals)
            .buffer_unordered(64)
            .collect()
            .await;
        for (room, out) in results {
            match out {
                Ok(revision) => {
                    if let Some(h) = lock(&self.held).get_mut(&room) {
                        h.revision = revision;
                        h.lease.renewed(now);
                    }
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.step_down(&room, "renewal_refused");
                }
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "a lease renewal failed; retrying");
                    if let Some(h) = lock(&self.held).get_mut(&room) {
                        h.lease.renewal_failed();
                    }
                }
            }
        }
    }

    /// Gives up every lease this relay holds (a clean shutdown), so their rooms move at once,
    /// and stops its tasks. Bounded: with NATS unreachable it releases nothing (the leases run
    /// out within their TTL) rather than wait for NATS.
    pub async fn release_all(&self) {
        let held: Vec<(String, Held)> = lock(&self.held).drain().collect();
        // The requests each room's responder took are answered first (bounded by the store's
        // timeouts), then the lease goes.
        for (_, h) in &held {
            let _ = h.stop.send(true);
        }
        let mut retired: Vec<Owned<()>> = lock(&self.retired).drain(..).collect();
        let mut held: Vec<(String, u64)> = held
            .into_iter()
            .map(|(room, h)| {
                retired.push(h.responder);
                (room, h.revision)
            })
            .collect();
        let answered = async {
            for r in &mut retired {
                let _ = (&mut r.0).await;
            }
        };
        let _ = tokio::time::timeout(self.timeout * 2, answered).await;
        lock(&self.live).clear();
        lock(&self.tasks).clear();
        *lock(&self.admin) = None;
        let rooms: Vec<String> = lock(&self.counts).keys().cloned().collect();
        let owned = held.len();
        metrics::gauge!(m::CLUSTER_OWNED_ROOMS).decrement(owned as f64);
        // With NATS away nothing can be released: the leases run out by themselves within their
        // TTL, and the counts within three. A stop never waits for NATS to come back.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            tracing::warn!(
                rooms = owned,
                "NATS is not reachable: the room leases are not released and run out within the lease TTL"
            );
            return;
        }
        let release = async {
            for (room, revision) in held.drain(..) {
                let key = self.names.room_key(&room);
                let _ = self
                    .leases
                    .purge_expect_revision(&key, Some(revision))
                    .await;
                metrics::counter!(m::CLUSTER_OWNERSHIP_CHANGES, "change" => "released")
                    .increment(1);
            }
            for room in rooms {
                let _ = self
                    .members
                    .purge(self.names.members_key(&room, &self.node))
                    .await;
            }
            let _ = self.client.flush().await;
        };
        if tokio::time::timeout(self.timeout * 2, release)
            .await
            .is_err()
        {
            tracing::warn!(
                "NATS did not take the releases in time; the leases run out within the lease TTL"
            );
        }
    }

    // ---- sends ----

    /// A member's send to `room`, which this relay does not sequence: forwarded to its owner
    /// and answered with the owner's `{seq, ts}` once the message is durable (or its refusal).
    /// With no owner answering, this relay takes the lease and sequences it itself.
    pub async fn forward(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
        out: Outgoing,
        now: u64,
        source: &'static str,
    ) -> Result<Stamped, WireError> {
        const NOT_SENT: &str = "the message was not sent to anyone";
        let request = Bytes::from(
            postcard::to_stdvec(&Forwarded {
                from: out.from.clone(),
                msg_type: out.msg_type.clone(),
                body: out.body.clone(),
                class: out.class,
                keep: out.keep_in_history,
            })
            .map_err(|e| unavailable(format!("encoding a forwarded send: {e}")))?,
        );
        let Some(reply) = self.to_owner(relay, room, None, request, NOT_SENT).await? else {
            return relay.publish_stored(room, out, now, source)?.wait().await;
        };
        let answer: ForwardReply = postcard::from_bytes(&reply)
            .map_err(|e| unavailable(format!("a malformed answer from the room's owner: {e}")))?;
        match answer {
            ForwardReply::Sent { seq, ts } => {
                metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "ok").increment(1);
                Ok((seq, ts))
            }
            ForwardReply::Refused(e) => {
                metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "refused").increment(1);
                Err(e)
            }
        }
    }

    /// An admin change of `room` made through this relay, which does not sequence it: run by
    /// the owner's admin API, whose answer it is. `None` when this relay owns the room (it may
    /// have just taken the lease): the caller runs it here.
    pub async fn forward_admin(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
        call: AdminCall,
    ) -> Result<Option<AdminAnswer>, WireError> {
        let Some(reply) = self
            .change_at_owner(relay, room, ADMIN_HEADER, &call)
            .await?
        else {
            return Ok(None);
        };
        metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "ok").increment(1);
        postcard::from_bytes(&reply)
            .map(Some)
            .map_err(|e| unavailable(format!("a malformed answer from the room's owner: {e}")))
    }

    /// A client's attribute change of `room`, which this relay does not sequence (it checked
    /// the membership): made by the owner, whose per-key answer it is. `None` when this relay
    /// owns the room (it may have just taken the lease): the caller makes it here.
    pub async fn forward_attrs(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
        call: &AttrCall,
    ) -> Result<Option<AttrResults>, WireError> {
        let Some(reply) = self.change_at_owner(relay, room, ATTR_HEADER, call).await? else {
            return Ok(None);
        };
        let answer: Result<AttrResults, WireError> = postcard::from_bytes(&reply)
            .map_err(|e| unavailable(format!("a malformed answer from the room's owner: {e}")))?;
        let outcome = if answer.is_ok() { "ok" } else { "refused" };
        metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => outcome).increment(1);
        answer.map(Some)
    }

    /// Makes one forwarded attribute change as the room's owner.
    async fn serve_attrs(self: &Arc<Self>, room_id: &str, msg: &async_nats::Message) -> Bytes {
        metrics::counter!(m::CLUSTER_BYTES_IN).increment(msg.payload.len() as u64);
        let answer: Result<AttrResults, WireError> = match (
            postcard::from_bytes::<AttrCall>(&msg.payload),
            self.relay.upgrade(),
        ) {
            (Err(e), _) => Err(WireError::new(
                ErrorCode::BadRequest,
                format!("a malformed forwarded change: {e}"),
            )),
            (Ok(_), None) => Err(unavailable("the relay is stopping")),
            (Ok(_), Some(_)) if !self.sequences(room_id) => Err(unavailable(format!(
                "this relay no longer owns room {room_id:?}; the change was not made"
            ))),
            (Ok(call), Some(relay)) => {
                match relay.attr_call(Actor::Forwarded(""), room_id, &call) {
                    Ok(done) => done.wait().await,
                    Err(e) => Err(e),
                }
            }
        };
        metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "served").increment(1);
        Bytes::from(postcard::to_stdvec(&answer).unwrap_or_default())
    }

    /// Sends `request` to `room`'s owner and returns its answer; `None` once this relay owns
    /// the room (it had, or took, the free lease). Tried until the request timeout, since an
    /// owner just elected may not answer yet. `what` ends a refusal's message.
    /// A change of `room` sent to its owner, marked by the header `kind`: the owner's encoded
    /// answer, or `None` when this relay owns the room (the caller makes it here).
    async fn change_at_owner(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
        kind: &'static str,
        call: &impl serde::Serialize,
    ) -> Result<Option<Bytes>, WireError> {
        let request = Bytes::from(
            postcard::to_stdvec(call)
                .map_err(|e| unavailable(format!("encoding a forwarded change: {e}")))?,
        );
        let mut headers = HeaderMap::new();
        headers.insert(kind, "1");
        self.to_owner(
            relay,
            room,
            Some(headers),
            request,
            "the change was not made",
        )
        .await
    }

    async fn to_owner(
        self: &Arc<Self>,
        relay: &Arc<Relay>,
        room: &Arc<Room>,
        headers: Option<HeaderMap>,
        request: Bytes,
        what: &str,
    ) -> Result<Option<Bytes>, WireError> {
        let subject = self.names.forward(&room.id);
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(10);
        let refused = |m: String| {
            metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "unavailable").increment(1);
            unavailable(m)
        };
        while Instant::now() < deadline {
            if self.sequences(&room.id) {
                return Ok(None);
            }
            if self.client.connection_state() != async_nats::connection::State::Connected {
                return Err(refused(format!("NATS is not reachable; {what}")));
            }
            metrics::counter!(m::CLUSTER_BYTES_OUT).increment(request.len() as u64);
            // The owner answers within its own store's timeouts (a failed append is refused
            // after at most the request timeout): waited for longer, so no answer is lost to a
            // timeout here while the owner may still make the change.
            let mut call = async_nats::Request::new()
                .payload(request.clone())
                .timeout(Some(self.timeout * 2 + Duration::from_secs(1)));
            if let Some(h) = &headers {
                call = call.headers(h.clone());
            }
            let sent = self.client.send_request(subject.clone(), call).await;
            match sent {
                Ok(reply) => {
                    metrics::counter!(m::CLUSTER_BYTES_IN).increment(reply.payload.len() as u64);
                    return Ok(Some(reply.payload));
                }
                Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                    if self.acquire(relay, room).await? {
                        return Ok(None);
                    }
                    // Held by a relay that does not answer (yet): its responder is starting, or
                    // it died and its lease runs out within the TTL.
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(FORWARD_PAUSE_MAX);
                }
                Err(e) if e.kind() == RequestErrorKind::TimedOut => {
                    // The owner took the request and did not answer: it is hung or cut off.
                    // Once its lease has run out it can no longer make the change (it stops
                    // sequencing before that), so this relay takes the room and makes it; while
                    // the lease holds the request may still be made there, so it is not sent
                    // again, and the refusal says so.
                    if self.acquire(relay, room).await? {
                        return Ok(None);
                    }
                    return Err(refused(format!(
                        "room {:?}'s owner did not answer in time; it may still make it, or \
                         {what}",
                        room.id
                    )));
                }
                Err(e) => {
                    return Err(refused(format!(
                        "NATS: forwarding to room {:?}'s owner: {e}; {what}",
                        room.id
                    )));
                }
            }
        }
        Err(refused(format!(
            "room {:?}'s owner does not answer (its lease runs out within {} ms); {what}",
            room.id, self.ttl_ms
        )))
    }

    /// Sets what runs a forwarded admin change on this relay (its admin API).
    pub fn set_admin(&self, handler: AdminHandler) {
        *lock(&self.admin) = Some(handler);
    }

    /// Runs one forwarded admin change as the room's owner.
    async fn serve_admin(self: &Arc<Self>, room_id: &str, msg: &async_nats::Message) -> Bytes {
        metrics::counter!(m::CLUSTER_BYTES_IN).increment(msg.payload.len() as u64);
        let refuse = |code: ErrorCode, message: String| AdminAnswer::error(code, message);
        let handler = lock(&self.admin).clone();
        let answer = match (postcard::from_bytes::<AdminCall>(&msg.payload), handler) {
            (Err(e), _) => refuse(
                ErrorCode::BadRequest,
                format!("a malformed forwarded change: {e}"),
            ),
            (Ok(_), None) => refuse(ErrorCode::Unavailable, "the relay is starting".into()),
            (Ok(_), Some(_)) if !self.sequences(room_id) => refuse(
                ErrorCode::Unavailable,
                format!("this relay no longer owns room {room_id:?}; the change was not made"),
            ),
            (Ok(call), Some(handler)) => handler(call).await,
        };
        metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "served").increment(1);
        Bytes::from(postcard::to_stdvec(&answer).unwrap_or_default())
    }

    /// Answers one forwarded send as the room's owner.
    async fn serve_one(self: &Arc<Self>, room_id: &str, msg: &async_nats::Message) -> ForwardReply {
        let Some(relay) = self.relay.upgrade() else {
            return ForwardReply::Refused(unavailable("the relay is stopping"));
        };
        metrics::counter!(m::CLUSTER_BYTES_IN).increment(msg.payload.len() as u64);
        let fwd: Forwarded = match postcard::from_bytes(&msg.payload) {
            Ok(f) => f,
            Err(e) => {
                return ForwardReply::Refused(WireError::new(
                    ErrorCode::BadRequest,
                    format!("a malformed forwarded send: {e}"),
                ));
            }
        };
        if !self.sequences(room_id) {
            return ForwardReply::Refused(unavailable(format!(
                "this relay no longer owns room {room_id:?}; the message was not sent to anyone"
            )));
        }
        let room = match relay.room(room_id) {
            Ok(r) => r,
            Err(e) => return ForwardReply::Refused(e),
        };
        let out = Outgoing {
            from: fwd.from,
            msg_type: fwd.msg_type,
            body: fwd.body,
            class: fwd.class,
            keep_in_history: fwd.keep,
        };
        let sent = match relay.publish_stored(&room, out, now_ms(), "forwarded") {
            Ok(d) => d.wait().await,
            Err(e) => Err(e),
        };
        metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "served").increment(1);
        match sent {
            Ok((seq, ts)) => ForwardReply::Sent { seq, ts },
            Err(e) => ForwardReply::Refused(e),
        }
    }

    // ---- state of every room ----

    /// One change of the state bucket, as another relay (or this one) wrote it.
    fn state_changed(self: &Arc<Self>, key: &str, value: Option<&[u8]>) {
        let Some(relay) = self.relay.upgrade() else {
            return;
        };
        let Some(value) = value else {
            if let Some(id) = self.names.parse_room_key(key)
                && !self.sequences(&id)
                && relay.drop_room_here(&id)
            {
                self.room_gone(&id);
            }
            return;
        };
        match parse_state(&self.names, key, value) {
            Ok(Some(StateValue::Global(global))) => *relay.global_mut() = global,
            Ok(Some(StateValue::Room {
                id,
                record: Some(record),
                attrs,
            })) => {
                // The owner's memory is the truth of its rooms; it wrote this value.
                if self.sequences(&id) {
                    return;
                }
                match relay.room(&id) {
                    Ok(room) if room.epoch == record.epoch => {
                        relay.refresh_room(&room, &record, attrs);
                    }
                    Ok(room) if room.epoch > record.epoch => {}
                    _ => {
                        relay.adopt_room(record, attrs);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(key, error = %e, "an unreadable state value; ignored"),
        }
    }
}

/// Writes this relay's member counts as they change (at most every member-count interval) and
/// all of them every lease TTL.
async fn count_writer(cluster: Weak<Cluster>) {
    let (every, refresh) = match cluster.upgrade() {
        Some(c) => (c.count_interval, Duration::from_millis(c.ttl_ms)),
        None => return,
    };
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_all = Instant::now();
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        let all = last_all.elapsed() >= refresh;
        if all {
            last_all = Instant::now();
        }
        c.write_counts(all).await;
    }
}

/// Publishes the live messages in the order the rings placed them.
async fn publisher(client: async_nats::Client, rx: flume::Receiver<LiveOut>) {
    while let Ok(out) = rx.recv_async().await {
        let len = out.frame.len() as u64;
        let sent = if out.keep || out.stamp.is_some() {
            let mut headers = HeaderMap::new();
            if out.keep {
                headers.insert(KEEP_HEADER, "1");
            }
            if let Some(stamp) = out.stamp {
                headers.insert(TERM_HEADER, stamp.as_str());
            }
            client
                .publish_with_headers(out.subject, headers, out.frame)
                .await
        } else {
            client.publish(out.subject, out.frame).await
        };
        match sent {
            Ok(()) => {
                metrics::counter!(m::CLUSTER_MESSAGES_OUT).increment(1);
                metrics::counter!(m::CLUSTER_BYTES_OUT).increment(len);
            }
            Err(e) => {
                metrics::counter!(m::CLUSTER_LIVE_DROPPED).increment(1);
                tracing::debug!(error = %e, "a live message was not published");
            }
        }
    }
}

/// Renews the leases a little more often than each is due.
async fn renewer(cluster: Weak<Cluster>) {
    let every = match cluster.upgrade() {
        Some(c) => Duration::from_millis((c.ttl_ms / 12).max(10)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        c.renew_due().await;
    }
}

/// Follows the state bucket, keeping this relay's rooms and app-wide lists as it has them.
async fn watcher(cluster: Weak<Cluster>) {
    follow(
        cluster,
        "state",
        |c| &c.state,
        |c, e| {
            let value = (e.operation == kv::Operation::Put).then_some(&e.value[..]);
            c.state_changed(&e.key, value);
        },
    )
    .await
}

/// Follows the leases bucket for the never-used ranges new owners write.
async fn lease_watcher(cluster: Weak<Cluster>) {
    follow(
        cluster,
        "leases",
        |c| &c.leases,
        |c, e| {
            let value = (e.operation == kv::Operation::Put).then_some(&e.value[..]);
            c.lease_changed(&e.key, value);
        },
    )
    .await
}

/// Follows the members bucket into the other relays' counts.
async fn count_watcher(cluster: Weak<Cluster>) {
    follow(
        cluster,
        "members",
        |c| &c.members,
        |c, e| {
            let count = (e.operation == kv::Operation::Put)
                .then(|| std::str::from_utf8(&e.value).ok()?.parse().ok())
                .flatten();
            c.remote_count(&e.key, count);
        },
    )
    .await
}

/// Follows the bucket `bucket` picks (one watch per relay, from the last value of every key),
/// handing each entry to `on`; watches again after an error, with a back-off up to 2 s.
async fn follow(
    cluster: Weak<Cluster>,
    what: &'static str,
    bucket: fn(&Cluster) -> &kv::Store,
    on: fn(&Arc<Cluster>, kv::Entry),
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let watch = bucket(&c).watch_with_history(">").await;
        drop(c);
        match watch {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Some(c) = cluster.upgrade() else { return };
                    match entry {
                        Ok(e) => {
                            backoff = Duration::from_millis(100);
                            on(&c, e);
                        }
                        Err(e) => {
                            tracing::warn!(bucket = what, error = %e, "a KV watch failed; watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(bucket = what, error = %e, "cannot watch a KV bucket; retrying")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Receives `room`'s live subject into its ring while this relay has members there.
async fn live_in(cluster: Weak<Cluster>, room: String, ready: tokio::sync::watch::Sender<bool>) {
    let Some(c) = cluster.upgrade() else { return };
    let subject = c.names.live(&room);
    let client = c.client.clone();
    drop(c);
    // Until it is in place (NATS may be away for a moment); the task ends when the last
    // member here leaves.
    let mut backoff = Duration::from_millis(100);
    let mut sub = loop {
        match client.subscribe(subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(room, error = %e, "cannot subscribe to the room's live traffic; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    };
    if client.flush().await.is_ok() {
        let _ = ready.send(true);
    }
    if let Some(c) = cluster.upgrade() {
        c.fill_to_newest(&room).await;
    }
    // While a hole is filled, what arrives waits in the subscription's bounded queue (the NATS
    // client's; past it, a slow-consumer drop, which is a hole in its turn).
    let mut seen = None;
    while let Some(msg) = sub.next().await {
        let Some(c) = cluster.upgrade() else { return };
        c.arrive(&room, &msg, &mut seen).await;
    }
}

/// Answers the requests forwarded to `room` while this relay owns it; once told to stop, takes
/// no more and answers those it took.
async fn serve_forwarded(
    cluster: Weak<Cluster>,
    room: String,
    subject: String,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(c) = cluster.upgrade() else { return };
    let client = c.client.clone();
    drop(c);
    let mut sub = match client.subscribe(subject).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(room, error = %e, "cannot take the room's forwarded sends");
            return;
        }
    };
    let _ = client.flush().await;
    let mut serving = JoinSet::new();
    loop {
        tokio::select! {
            // Told to stop, or its owner gone: either way it stops.
            _ = stop.changed() => break,
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                let Some(reply) = msg.reply.clone() else { continue };
                let Some(c) = cluster.upgrade() else { break };
                let room = room.clone();
                let client = client.clone();
                let has = |name: &str| msg.headers.as_ref().is_some_and(|h| h.get(name).is_some());
                let (admin, attrs) = (has(ADMIN_HEADER), has(ATTR_HEADER));
                if serving.len() >= SERVING {
                    metrics::counter!(m::CLUSTER_FORWARDED, "outcome" => "busy").increment(1);
                    // Answered in the form the caller reads: an admin answer for an admin call.
                    let change = format!("room {room:?}'s owner is busy; the change was not made");
                    let busy = if admin {
                        let answer = AdminAnswer::error(ErrorCode::Unavailable, change);
                        Bytes::from(postcard::to_stdvec(&answer).unwrap_or_default())
                    } else if attrs {
                        let answer: Result<AttrResults, WireError> = Err(unavailable(change));
                        Bytes::from(postcard::to_stdvec(&answer).unwrap_or_default())
                    } else {
                        encode_reply(&ForwardReply::Refused(unavailable(format!(
                            "room {room:?}'s owner is busy; the message was not sent to anyone"
                        ))))
                    };
                    let _ = client.publish(reply, busy).await;
                    continue;
                }
                serving.spawn(async move {
                    let bytes = if admin {
                        c.serve_admin(&room, &msg).await
                    } else if attrs {
                        c.serve_attrs(&room, &msg).await
                    } else {
                        encode_reply(&c.serve_one(&room, &msg).await)
                    };
                    metrics::counter!(m::CLUSTER_BYTES_OUT).increment(bytes.len() as u64);
                    let _ = client.publish(reply, bytes).await;
                });
            }
            Some(_) = serving.join_next(), if !serving.is_empty() => {}
        }
    }
    drop(sub);
    while serving.join_next().await.is_some() {}
}

fn encode_reply(reply: &ForwardReply) -> Bytes {
    Bytes::from(postcard::to_stdvec(reply).unwrap_or_default())
}
