//! The load itself: the ramp of members, their readers, the senders, and the churn storm.
//!
//! Every member is one [`Member`] (its own QUIC connection, or with `--transport websocket` its
//! own WebSocket over TLS) that joins one room and reads its events until told to stop. Senders are members too (the first `senders` of each room), so each message is
//! delivered to exactly the room's member count, the sender's own copy included. A payload starts
//! with its send time (µs since the Unix epoch, 8 bytes little-endian) and the class the sender
//! asked for (1 byte), then padding; a reader turns the time into an end-to-end latency and counts
//! the delivery under the asked class (the raw baseline knows no protected class).
//!
//! Every loop is bounded in time: senders stop at their deadline and give outstanding sends a bounded
//! wait, readers stop on a signal, the churn storm stops issuing at its deadline.

use super::launch::Tokens;
use super::stats::{Histogram, now_us};
use crate::client::ws::{WsClient, WsClientConfig};
use crate::client::{Client, ClientConfig, ClientEndpoint, ClientError, ClientEvent};
use crate::protocol::Class;
use crate::protocol::JoinInfo;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Message type of normal and low messages.
pub const TYPE_NORMAL: &str = "bench";
/// Message type the harness puts on the whitelist (protected class).
pub const TYPE_PROTECTED: &str = "bench.p";
/// Smallest payload: the send time and the class tag.
pub const MIN_PAYLOAD: usize = 9;
/// Longest wait for outstanding sends after a sender's deadline.
const SEND_DRAIN: Duration = Duration::from_secs(10);
/// Events a reader takes from its queue before looking at the stop signal again.
const READ_BATCH: usize = 256;

/// How clients reach the server.
#[derive(Clone)]
pub struct Reach {
    /// QUIC address.
    pub server: SocketAddr,
    /// CA to trust.
    pub ca_pem: Vec<u8>,
    /// Tokens.
    pub tokens: Tokens,
    /// Shared client endpoints, taken in turn; empty: one endpoint per client.
    pub endpoints: Arc<Vec<ClientEndpoint>>,
    /// The next shared endpoint to use.
    pub next: Arc<AtomicUsize>,
    /// `wss://…/ws` of the relay's public listener: members connect over WebSockets.
    pub ws: Option<String>,
    /// Every relay of a cluster run by index ([`Spec::relay`]); empty: `server` only.
    pub relays: Arc<Vec<SocketAddr>>,
}

/// A member's connection: native QUIC or a WebSocket.
pub enum Member {
    /// QUIC, ALPN roomcast/1.
    Quic(Client),
    /// A WebSocket on the public listener.
    Ws(WsClient),
}

impl Member {
    /// Joins a room.
    pub async fn join(&self, room: &str, history: i32) -> Result<JoinInfo, ClientError> {
        match self {
            Member::Quic(c) => c.join(room, history).await,
            Member::Ws(c) => c.join(room, history).await,
        }
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        match self {
            Member::Quic(c) => c.leave(room).await,
            Member::Ws(c) => c.leave(room).await,
        }
    }

    /// Sends a message.
    pub async fn send(
        &self,
        room: &str,
        msg_type: &str,
        body: Bytes,
        low: bool,
    ) -> Result<(u64, u64), ClientError> {
        match self {
            Member::Quic(c) => c.send(room, msg_type, body, low).await,
            Member::Ws(c) => c.send(room, msg_type, body, low).await,
        }
    }

    /// The event stream.
    pub fn events(&self) -> &flume::Receiver<ClientEvent> {
        match self {
            Member::Quic(c) => c.events(),
            Member::Ws(c) => c.events(),
        }
    }

    /// Closes the connection.
    pub async fn close(&self) {
        match self {
            Member::Quic(c) => c.close().await,
            Member::Ws(c) => c.close().await,
        }
    }

    /// UDP datagrams received and sent so far (QUIC only).
    fn udp(&self) -> (u64, u64) {
        match self {
            Member::Quic(c) => {
                let s = c.connection().stats();
                (s.udp_rx.datagrams, s.udp_tx.datagrams)
            }
            Member::Ws(_) => (0, 0),
        }
    }

    /// The QUIC connection's close reason, once it closed.
    fn close_reason(&self) -> Option<String> {
        match self {
            Member::Quic(c) => c.connection().close_reason().map(|e| close_text(&e)),
            Member::Ws(_) => None,
        }
    }
}

impl Reach {
    /// Reaches `server`; with `shared` above 0 the clients share that many UDP endpoints.
    pub fn new(
        server: SocketAddr,
        ca_pem: Vec<u8>,
        tokens: Tokens,
        shared: usize,
        ws: Option<String>,
    ) -> Result<Reach, String> {
        let endpoints = (0..shared)
            .map(|_| ClientEndpoint::new(server, &ca_pem, true).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Reach {
            server,
            ca_pem,
            tokens,
            endpoints: Arc::new(endpoints),
            next: Arc::default(),
            ws,
            relays: Arc::default(),
        })
    }

    /// The same, with the members dealt over these relays (QUIC only).
    pub fn with_relays(self, relays: Vec<SocketAddr>) -> Reach {
        Reach {
            relays: Arc::new(relays),
            ..self
        }
    }

    /// The QUIC address of relay `i` (`server` when there are no others).
    fn relay(&self, i: usize) -> SocketAddr {
        self.relays.get(i).copied().unwrap_or(self.server)
    }

    async fn connect(
        &self,
        user: &str,
        relay: usize,
        event_buffer: usize,
    ) -> Result<Member, String> {
        let token = self.tokens.mint(user).map_err(|e| e.to_string())?;
        if let Some(url) = &self.ws {
            let mut cfg = WsClientConfig::new(url.clone(), self.ca_pem.clone(), token);
            cfg.event_buffer = event_buffer;
            return WsClient::connect(cfg)
                .await
                .map(Member::Ws)
                .map_err(|e| error_name(&e));
        }
        let mut cfg = ClientConfig::new(self.relay(relay), self.ca_pem.clone(), token);
        cfg.event_buffer = event_buffer;
        let connected = if self.endpoints.is_empty() {
            Client::connect(cfg).await
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
            Client::connect_on(&self.endpoints[i], cfg).await
        };
        connected.map(Member::Quic).map_err(|e| error_name(&e))
    }
}

/// A short, stable name for a client error (the wire error code when the server refused).
pub fn error_name(e: &ClientError) -> String {
    match e {
        ClientError::Refused(w) => w.code.as_str().to_owned(),
        ClientError::Closed { code: Some(c), .. } => format!("CLOSED_{}", c.code()),
        ClientError::Closed { reason, .. } => {
            let r = reason.to_ascii_lowercase();
            if r.contains("timed out") {
                "TIMED_OUT".into()
            } else if r.contains("refused") {
                "CONNECTION_REFUSED".into()
            } else {
                "CLOSED".into()
            }
        }
        ClientError::NoAnswer { .. } => "TIMED_OUT".into(),
        ClientError::Tls(_) | ClientError::Certificate { .. } => "TLS".into(),
        ClientError::Endpoint(_) => "ENDPOINT".into(),
        ClientError::Connect(_) => "CONNECT".into(),
        ClientError::Protocol(_) => "PROTOCOL".into(),
    }
}

/// One member to connect.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Room id.
    pub room: String,
    /// Index of the room.
    pub room_index: usize,
    /// User id.
    pub user: String,
    /// Sends (and reads like any member).
    pub sender: bool,
    /// Reads slowly.
    pub slow: bool,
    /// The relay it connects to, by index ([`Reach::relays`]).
    pub relay: usize,
}

/// A joined member.
pub struct Joined {
    /// What it is.
    pub spec: Spec,
    /// Its connection.
    pub client: Arc<Member>,
}

/// The outcome of the ramp.
#[derive(Default)]
pub struct Ramp {
    /// Members connected and joined.
    pub joined: Vec<Joined>,
    /// Failed connects by error name.
    pub failed_connects: BTreeMap<String, u64>,
    /// Failed joins by error name.
    pub failed_joins: BTreeMap<String, u64>,
    /// How long it took.
    pub secs: f64,
}

/// Event buffer of a slow member: small, so the library stops reading the stream soon and the
/// server sees the lag.
const SLOW_EVENT_BUFFER: usize = 256;

/// Connects and joins every member, `parallel` at a time.
pub async fn ramp(reach: &Reach, specs: Vec<Spec>, parallel: usize) -> Ramp {
    let start = Instant::now();
    let mut out = Ramp::default();
    let mut stream = futures_util::stream::iter(specs.into_iter().map(|spec| {
        let reach = reach.clone();
        async move {
            let buffer = if spec.slow { SLOW_EVENT_BUFFER } else { 8192 };
            let client = match reach.connect(&spec.user, spec.relay, buffer).await {
                Ok(c) => c,
                Err(e) => return Err((true, e)),
            };
            match client.join(&spec.room, -1).await {
                Ok(_) => Ok(Joined {
                    spec,
                    client: Arc::new(client),
                }),
                Err(e) => {
                    client.close().await;
                    Err((false, error_name(&e)))
                }
            }
        }
    }))
    .buffer_unordered(parallel.max(1));
    while let Some(r) = stream.next().await {
        match r {
            Ok(j) => out.joined.push(j),
            Err((true, e)) => *out.failed_connects.entry(e).or_default() += 1,
            Err((false, e)) => *out.failed_joins.entry(e).or_default() += 1,
        }
    }
    out.secs = start.elapsed().as_secs_f64();
    out
}

/// What one member saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Reads slowly.
    pub slow: bool,
    /// Messages by the class their sender asked for (protected, normal, low).
    pub delivered: [u64; 3],
    /// Messages that came on the delivery stream.
    pub stream: u64,
    /// Messages that came as datagrams.
    pub datagram: u64,
    /// `Gap` counts: low, normal.
    pub gap_low: u64,
    /// `Gap` normal count.
    pub gap_normal: u64,
    /// Times the connection closed.
    pub closed: u64,
    /// Close reasons.
    pub close_reasons: BTreeMap<String, u64>,
    /// Messages whose payload was not the harness's.
    pub foreign: u64,
    /// Other events (notices, kicks).
    pub other: u64,
    /// End-to-end latency, µs.
    pub latency: Histogram,
    /// UDP datagrams the member received while reading (QUIC connection stats).
    pub packets_in: u64,
    /// UDP datagrams the member sent meanwhile (acknowledgements, mostly).
    pub packets_out: u64,
}

/// Live counters every reader adds to, for the drain and the progress line.
#[derive(Default)]
pub struct Live {
    /// Messages delivered so far.
    pub delivered: AtomicU64,
    /// Sends acknowledged so far.
    pub sent: AtomicU64,
}

/// Reads `client`'s events until `stop` flips; a slow member takes at most `slow_rate` a second.
pub async fn read_events(
    client: Arc<Member>,
    slow: Option<f64>,
    live: Arc<Live>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Tally {
    let mut t = Tally {
        slow: slow.is_some(),
        ..Tally::default()
    };
    let events = client.events().clone();
    let (rx0, tx0) = client.udp();
    let mut debt = 0.0f64;
    loop {
        if *stop.borrow() {
            break;
        }
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            ev = events.recv_async() => match ev {
                Ok(ev) => ev,
                Err(_) => break,
            },
        };
        let now = now_us();
        let before = t.delivered.iter().sum::<u64>();
        let mut n = 1;
        take(&mut t, first, now);
        while n < READ_BATCH {
            match events.try_recv() {
                Ok(ev) => {
                    take(&mut t, ev, now);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        let got = t.delivered.iter().sum::<u64>() - before;
        if got > 0 {
            live.delivered.fetch_add(got, Ordering::Relaxed);
        }
        if let Some(rate) = slow {
            debt += n as f64 / rate;
            if debt >= 0.01 {
                let pause = Duration::from_secs_f64(debt);
                debt = 0.0;
                tokio::select! {
                    biased;
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    let (rx1, tx1) = client.udp();
    t.packets_in = rx1 - rx0;
    t.packets_out = tx1 - tx0;
    // A closed connection still hands out the data it had received before the close, so a slow
    // reader may not have reached its `Closed` event yet: ask the connection itself.
    if t.closed == 0
        && let Some(e) = client.close_reason()
    {
        t.closed += 1;
        *t.close_reasons.entry(e).or_default() += 1;
    }
    t
}

fn close_text(e: &quinn::ConnectionError) -> String {
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => format!(
            "{} {}",
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason)
        ),
        other => other.to_string(),
    }
}

fn take(t: &mut Tally, ev: ClientEvent, now: u64) {
    match ev {
        ClientEvent::Message { message, datagram } => {
            let b = &message.body;
            if b.len() < MIN_PAYLOAD {
                t.foreign += 1;
                return;
            }
            let mut stamp = [0u8; 8];
            stamp.copy_from_slice(&b[..8]);
            let sent = u64::from_le_bytes(stamp);
            let class = usize::from(b[8]).min(2);
            t.delivered[class] += 1;
            if datagram {
                t.datagram += 1;
            } else {
                t.stream += 1;
            }
            t.latency.record(now.saturating_sub(sent));
        }
        ClientEvent::Gap { low, normal, .. } => {
            t.gap_low += low;
            t.gap_normal += normal;
        }
        ClientEvent::Closed { code, reason } => {
            t.closed += 1;
            let key = match code {
                Some(c) => format!("{} {reason}", c.code()),
                None => reason,
            };
            *t.close_reasons.entry(key).or_default() += 1;
        }
        _ => t.other += 1,
    }
}

/// What a sender does.
#[derive(Debug, Clone)]
pub struct SendPlan {
    /// Messages per second from this sender; 0: saturate.
    pub rate: f64,
    /// Sends outstanding at most.
    pub inflight: usize,
    /// Body size.
    pub payload: usize,
    /// Share of protected messages (sent with [`TYPE_PROTECTED`]).
    pub protected_share: f64,
    /// Share of low-priority messages.
    pub low_share: f64,
    /// Offsets this sender's class mix from the others'.
    pub salt: u64,
}

/// What one sender did.
#[derive(Debug, Default, Clone)]
pub struct SendTally {
    /// Room index.
    pub room_index: usize,
    /// Acknowledged sends by asked class.
    pub sent: [u64; 3],
    /// Refused or failed sends by error name.
    pub errors: BTreeMap<String, u64>,
    /// Sends not issued because `inflight` were outstanding (paced mode).
    pub skipped: u64,
    /// Sends still outstanding when the drain wait ran out.
    pub abandoned: u64,
    /// Time from send to reply, µs.
    pub latency: Histogram,
}

/// The class of message `i` of a sender: a low-discrepancy sequence, so every share is met closely
/// and the classes interleave evenly.
fn class_of(i: u64, plan: &SendPlan) -> Class {
    const PHI: f64 = 0.618_033_988_749_894_9;
    let x = ((i.wrapping_add(plan.salt.wrapping_mul(7919))) as f64 * PHI).fract();
    if x < plan.protected_share {
        Class::Protected
    } else if x < plan.protected_share + plan.low_share {
        Class::Low
    } else {
        Class::Normal
    }
}

fn class_tag(c: Class) -> u8 {
    match c {
        Class::Protected => 0,
        Class::Normal => 1,
        Class::Low => 2,
    }
}

/// A payload of `size` bytes: send time, class tag, padding.
pub fn payload(class: Class, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(MIN_PAYLOAD));
    b.put_u64_le(now_us());
    b.put_u8(class_tag(class));
    b.resize(size.max(MIN_PAYLOAD), b'.');
    b.freeze()
}

type SendResult = (Class, Duration, Result<(u64, u64), ClientError>);

/// Sends to `room` until `deadline`, then waits (bounded) for the outstanding replies.
pub async fn send_loop(
    client: Arc<Member>,
    room: String,
    room_index: usize,
    plan: SendPlan,
    deadline: Instant,
    live: Arc<Live>,
) -> SendTally {
    let mut tally = SendTally {
        room_index,
        ..SendTally::default()
    };
    let mut pending: FuturesUnordered<_> = FuturesUnordered::new();
    let issue = |i: u64| {
        let client = client.clone();
        let room = room.clone();
        let class = class_of(i, &plan);
        let size = plan.payload;
        async move {
            let (msg_type, low) = match class {
                Class::Protected => (TYPE_PROTECTED, false),
                Class::Normal => (TYPE_NORMAL, false),
                Class::Low => (TYPE_NORMAL, true),
            };
            let body = payload(class, size);
            let t0 = Instant::now();
            let r = client.send(&room, msg_type, body, low).await;
            (class, t0.elapsed(), r) as SendResult
        }
    };
    let record = |tally: &mut SendTally, (class, took, r): SendResult| match r {
        Ok(_) => {
            tally.sent[usize::from(class_tag(class))] += 1;
            tally.latency.record(took.as_micros() as u64);
            live.sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => *tally.errors.entry(error_name(&e)).or_default() += 1,
    };
    let start = Instant::now();
    let mut issued = 0u64;
    if plan.rate <= 0.0 {
        // Closed loop: keep `inflight` sends outstanding until the deadline.
        loop {
            while pending.len() < plan.inflight.max(1) && Instant::now() < deadline {
                pending.push(issue(issued));
                issued += 1;
            }
            match tokio::time::timeout_at(deadline + SEND_DRAIN, pending.next()).await {
                Ok(Some(r)) => record(&mut tally, r),
                Ok(None) => break,
                Err(_) => {
                    tally.abandoned = pending.len() as u64;
                    break;
                }
            }
        }
    } else {
        // Open loop: issue what is due every millisecond (or every period, when longer).
        let period = Duration::from_secs_f64((1.0 / plan.rate).clamp(0.001, 1.0));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let issuing = Instant::now() < deadline;
            if !issuing && pending.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                Some(r) = pending.next(), if !pending.is_empty() => record(&mut tally, r),
                _ = tick.tick(), if issuing => {
                    let due = (start.elapsed().as_secs_f64() * plan.rate) as u64;
                    while issued < due {
                        if pending.len() < plan.inflight.max(1) {
                            pending.push(issue(issued));
                        } else {
                            tally.skipped += 1;
                        }
                        issued += 1;
                    }
                }
                _ = tokio::time::sleep_until(deadline + SEND_DRAIN), if !issuing => {
                    tally.abandoned = pending.len() as u64;
                    break;
                }
                else => break,
            }
        }
    }
    tally
}

/// What the churn storm saw.
#[derive(Debug, Default, Clone)]
pub struct ChurnTally {
    /// Cycles started.
    pub started: u64,
    /// Cycles not started because `concurrency` were running.
    pub skipped: u64,
    /// Connect + join completed.
    pub joined: u64,
    /// Leave + close completed too.
    pub completed: u64,
    /// Failed handshakes (connect and hello) by error name.
    pub failed_connects: BTreeMap<String, u64>,
    /// Failed joins or leaves by error name.
    pub failed_requests: BTreeMap<String, u64>,
    /// Connect + join time, µs.
    pub latency: Histogram,
    /// Seconds from the start to the last completed connect + join.
    pub secs: f64,
}

enum Cycle {
    ConnectFailed(String),
    RequestFailed(String, bool),
    Done(Duration),
}

async fn cycle(reach: Reach, user: String, room: String) -> Cycle {
    let t0 = Instant::now();
    let client = match reach.connect(&user, 0, 64).await {
        Ok(c) => c,
        Err(e) => return Cycle::ConnectFailed(e),
    };
    if let Err(e) = client.join(&room, -1).await {
        client.close().await;
        return Cycle::RequestFailed(error_name(&e), false);
    }
    let took = t0.elapsed();
    let left = client.leave(&room).await;
    client.close().await;
    match left {
        Ok(()) => Cycle::Done(took),
        Err(e) => Cycle::RequestFailed(error_name(&e), true),
    }
}

/// Starts `rate` connect → join → leave → close cycles a second until `deadline`, at most
/// `concurrency` at once, then waits (bounded) for the running ones.
pub async fn churn(
    reach: &Reach,
    room: &str,
    rate: f64,
    concurrency: usize,
    deadline: Instant,
    live: Arc<Live>,
) -> ChurnTally {
    let mut t = ChurnTally::default();
    let start = Instant::now();
    let mut last_join = start;
    let mut running = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reap = |t: &mut ChurnTally, c: Cycle| match c {
        Cycle::ConnectFailed(e) => *t.failed_connects.entry(e).or_default() += 1,
        Cycle::RequestFailed(e, joined) => {
            if joined {
                t.joined += 1;
            }
            *t.failed_requests.entry(e).or_default() += 1;
        }
        Cycle::Done(took) => {
            t.joined += 1;
            t.completed += 1;
            t.latency.record(took.as_micros() as u64);
            last_join = Instant::now();
            live.sent.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut issued = 0u64;
    loop {
        let issuing = Instant::now() < deadline;
        if !issuing && running.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(c) = done {
                    reap(&mut t, c);
                }
            }
            _ = tick.tick(), if issuing => {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                while issued < due {
                    if running.len() < concurrency.max(1) {
                        let user = format!("churn-{issued}");
                        running.spawn(cycle(reach.clone(), user, room.to_owned()));
                        t.started += 1;
                    } else {
                        t.skipped += 1;
                    }
                    issued += 1;
                }
            }
            _ = tokio::time::sleep_until(deadline + SEND_DRAIN), if !issuing => break,
            else => break,
        }
    }
    running.shutdown().await;
    t.secs = last_join.duration_since(start).as_secs_f64();
    t
}
