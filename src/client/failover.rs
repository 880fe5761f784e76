//! A client that outlives its relay: it knows several relays, reconnects when its connection
//! dies, and resumes its memberships there exactly.
//!
//! [`FailoverClient`] holds one [`Client`] at a time. When its connection dies (the relay was
//! killed, restarted or is unreachable; not when the relay refused the token or the caller
//! closed), it connects to the next address, round robin, pausing after each full round with a
//! doubling back-off (`backoff_min` to `backoff_max`) for at most `reconnect_for`, and sends
//! [`Request::Resume`](crate::protocol::Request::Resume) for each room it is in, with the room's
//! epoch and the newest `seq` it received. The relay answers each with `Resumed{missed}`, then
//! the messages after that seq it can replay, then live traffic; the events of the application
//! read on as if nothing happened, with [`ClientEvent::Reconnected`] where the connection
//! changed. A room that cannot be resumed (destroyed meanwhile, a ban) is told with
//! [`ClientEvent::ResumeFailed`]. A relay that answers a resume `UNAVAILABLE` (it cannot reach
//! its store or NATS just now) ends no membership: the client leaves it and resumes on the next
//! relay, with the same back-off, within the same `reconnect_for`.
//!
//! The newest `seq` per room is taken from the delivery stream, which is in order.
//! Low-priority datagrams may overtake it, so those received above it are remembered (at most
//! [`DATAGRAMS_KEPT`] per room) and not delivered a second time when the resume replays them.

use super::{Client, ClientConfig, ClientError, ClientEvent};
use crate::protocol::{
    Attribute, CloseCode, ErrorCode, HistoryEntry, JoinInfo, RoomInfo, WireError,
};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Datagram sequence numbers remembered per room above its newest stream message.
pub const DATAGRAMS_KEPT: usize = 4096;

/// How a [`FailoverClient`] connects and reconnects.
#[derive(Clone)]
pub struct FailoverConfig {
    /// The relays: tried in this order at the start, round robin from the one that failed after.
    pub servers: Vec<SocketAddr>,
    /// Everything else of a connection (its `server` is replaced by each of `servers`).
    pub client: ClientConfig,
    /// The pause after the first round of connects that all failed; doubled after each round.
    pub backoff_min: Duration,
    /// The longest pause between two rounds.
    pub backoff_max: Duration,
    /// How long after a connection died the client keeps trying before it gives up (then
    /// [`ClientEvent::Closed`] ends the events); zero: it does not reconnect.
    pub reconnect_for: Duration,
}

impl FailoverConfig {
    /// `servers` with `client`'s settings, back-off from 100 ms to 5 s, trying for 60 s.
    pub fn new(servers: Vec<SocketAddr>, client: ClientConfig) -> Self {
        FailoverConfig {
            servers,
            client,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            reconnect_for: Duration::from_secs(60),
        }
    }
}

/// A membership the client resumes after a reconnect.
#[derive(Debug, Clone, Copy)]
struct Membership {
    epoch: u64,
    /// The newest seq delivered on the stream (or the join's `last_seq`).
    last_seq: u64,
}

/// What the client knows of its rooms.
#[derive(Default)]
struct Track {
    rooms: HashMap<String, Membership>,
    /// Per room, datagram seqs received above its `last_seq`.
    datagrams: HashMap<String, BTreeSet<u64>>,
}

impl Track {
    /// Takes an event the application is about to get; false when it is a datagram it already
    /// got (replayed after a resume).
    fn take(&mut self, ev: &ClientEvent) -> bool {
        match ev {
            ClientEvent::Message { message, datagram } => {
                let Some(m) = self.rooms.get_mut(&message.room) else {
                    return true;
                };
                let seen = self.datagrams.entry(message.room.clone()).or_default();
                if *datagram {
                    // One at or below the stream's newest is late, not replayed (a resume
                    // replays only what follows it).
                    if message.seq > m.last_seq && !seen.insert(message.seq) {
                        return false;
                    }
                    while seen.len() > DATAGRAMS_KEPT {
                        seen.pop_first();
                    }
                    return true;
                }
                if seen.remove(&message.seq) {
                    // Came as a datagram already; the stream replays it after a resume.
                    m.last_seq = m.last_seq.max(message.seq);
                    return false;
                }
                m.last_seq = m.last_seq.max(message.seq);
                *seen = seen.split_off(&(m.last_seq + 1));
                true
            }
            ClientEvent::Kicked { room, .. }
            | ClientEvent::RoomDestroyed { room, .. }
            | ClientEvent::ResumeFailed { room, .. } => {
                self.rooms.remove(room);
                self.datagrams.remove(room);
                true
            }
            _ => true,
        }
    }
}

/// The connection of the moment.
#[derive(Clone)]
enum Link {
    Up(Arc<Client>),
    Reconnecting,
    /// Closed for good, with why.
    Gone(Option<CloseCode>, String),
}

struct Shared {
    cfg: FailoverConfig,
    link: watch::Sender<Link>,
    track: Mutex<Track>,
    closing: AtomicBool,
}

impl Shared {
    fn track(&self) -> std::sync::MutexGuard<'_, Track> {
        self.track.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A client over several relays that reconnects and resumes by itself (see the module doc).
pub struct FailoverClient {
    shared: Arc<Shared>,
    events: flume::Receiver<ClientEvent>,
    user: String,
    max_frame: u32,
    _pump: tokio::task::JoinSet<()>,
}

/// Whether a connection that closed this way is worth another relay.
fn retry_after(code: Option<CloseCode>) -> bool {
    match code {
        // A dead path or relay, a relay shutting down or restarting, a fault, or too slow a
        // reader (the next connection starts afresh).
        None | Some(CloseCode::Shutdown | CloseCode::TooSlow | CloseCode::Internal) => true,
        Some(CloseCode::Normal | CloseCode::Unauthorized | CloseCode::Protocol) => false,
    }
}

/// Whether a failed connect means no relay will take this client (its token or trust).
fn hopeless(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Refused(_) | ClientError::Certificate { .. } | ClientError::Tls(_)
    )
}

impl FailoverClient {
    /// Connects to the first of `cfg.servers` that answers (each within the connect timeout),
    /// and keeps the client connected from then on. Fails with the last server's error when
    /// none answers, at once when one refuses the token or its certificate is refused.
    pub async fn connect(cfg: FailoverConfig) -> Result<FailoverClient, ClientError> {
        let mut last = None;
        for (i, server) in cfg.servers.iter().enumerate() {
            match Client::connect(ClientConfig {
                server: *server,
                ..cfg.client.clone()
            })
            .await
            {
                Ok(client) => return Ok(Self::start(cfg, client, i)),
                Err(e) if hopeless(&e) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Closed {
            code: None,
            reason: "no server address given".into(),
        }))
    }

    fn start(cfg: FailoverConfig, client: Client, index: usize) -> FailoverClient {
        let user = client.user().to_owned();
        let max_frame = client.max_frame();
        let client = Arc::new(client);
        let (link, _) = watch::channel(Link::Up(client.clone()));
        let buffer = cfg.client.event_buffer.max(1);
        let shared = Arc::new(Shared {
            cfg,
            link,
            track: Mutex::new(Track::default()),
            closing: AtomicBool::new(false),
        });
        let (tx, events) = flume::bounded(buffer);
        let mut pump = tokio::task::JoinSet::new();
        pump.spawn(run(shared.clone(), client, index, tx));
        FailoverClient {
            shared,
            events,
            user,
            max_frame,
            _pump: pump,
        }
    }

    /// The authenticated user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The relay connected to now (`None` while reconnecting or closed).
    pub fn server(&self) -> Option<SocketAddr> {
        match &*self.shared.link.borrow() {
            Link::Up(c) => c.connection().remote_address().into(),
            _ => None,
        }
    }

    /// The connection to use: the current one, or the next one within `reconnect_for` (also
    /// when the current one is closed and the client has not moved on yet).
    async fn client(&self) -> Result<Arc<Client>, ClientError> {
        let mut rx = self.shared.link.subscribe();
        let wait = rx.wait_for(|l| match l {
            Link::Up(c) => c.connection().close_reason().is_none(),
            Link::Reconnecting => false,
            Link::Gone(..) => true,
        });
        match tokio::time::timeout(self.shared.cfg.reconnect_for, wait).await {
            Ok(Ok(l)) => match &*l {
                Link::Up(c) => Ok(c.clone()),
                Link::Gone(code, reason) => Err(ClientError::Closed {
                    code: *code,
                    reason: reason.clone(),
                }),
                Link::Reconnecting => gave_up(),
            },
            _ => gave_up(),
        }
    }

    /// Joins a room (see [`Client::join`]); the membership is resumed after a reconnect.
    pub async fn join(&self, room: &str, history: i32) -> Result<JoinInfo, ClientError> {
        let info = self.client().await?.join(room, history).await?;
        let mut track = self.shared.track();
        let known = track.rooms.get(room).filter(|m| m.epoch == info.room.epoch);
        let last_seq = known.map_or(info.last_seq, |m| m.last_seq.max(info.last_seq));
        track.rooms.insert(
            room.to_owned(),
            Membership {
                epoch: info.room.epoch,
                last_seq,
            },
        );
        Ok(info)
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.client().await?.leave(room).await?;
        let mut track = self.shared.track();
        track.rooms.remove(room);
        track.datagrams.remove(room);
        Ok(())
    }

    /// Sends a message; returns its `(seq, ts)`. A send whose connection dies before its reply
    /// fails (it may or may not have been sent: the room's history tells); it is not repeated.
    pub async fn send(
        &self,
        room: &str,
        msg_type: &str,
        body: Bytes,
        low: bool,
    ) -> Result<(u64, u64), ClientError> {
        self.client().await?.send(room, msg_type, body, low).await
    }

    /// Room info with up to 20 members.
    pub async fn room_info(&self, room: &str) -> Result<RoomInfo, ClientError> {
        self.client().await?.room_info(room).await
    }

    /// A page of history (see [`Client::history`]).
    pub async fn history(
        &self,
        room: &str,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, ClientError> {
        self.client().await?.history(room, before_seq, limit).await
    }

    /// A round trip.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.client().await?.ping().await
    }

    /// Sets up to 10 attributes (see [`Client::set_attributes`]).
    pub async fn set_attributes(
        &self,
        room: &str,
        entries: &[(&str, &str)],
        auto_delete: bool,
        force: bool,
    ) -> Result<(u64, Vec<(String, Option<WireError>)>), ClientError> {
        self.client()
            .await?
            .set_attributes(room, entries, auto_delete, force)
            .await
    }

    /// Deletes up to 10 attributes (see [`Client::delete_attributes`]).
    pub async fn delete_attributes(
        &self,
        room: &str,
        keys: &[&str],
        force: bool,
    ) -> Result<(u64, Vec<(String, Option<WireError>)>), ClientError> {
        self.client()
            .await?
            .delete_attributes(room, keys, force)
            .await
    }

    /// Reads attributes (all when `keys` is empty).
    pub async fn get_attributes(
        &self,
        room: &str,
        keys: &[&str],
    ) -> Result<(u64, Vec<Attribute>), ClientError> {
        self.client().await?.get_attributes(room, keys).await
    }

    /// Recalls one of this user's messages.
    pub async fn recall(&self, room: &str, seq: u64) -> Result<(), ClientError> {
        self.client().await?.recall(room, seq).await
    }

    /// The connection's id on the relay connected to now (`None` while reconnecting or closed).
    pub fn conn_id(&self) -> Option<u64> {
        match &*self.shared.link.borrow() {
            Link::Up(c) => Some(c.conn_id()),
            _ => None,
        }
    }

    /// The largest frame the relay connected to now accepts (the first relay's while
    /// reconnecting or closed).
    pub fn max_frame(&self) -> u32 {
        match &*self.shared.link.borrow() {
            Link::Up(c) => c.max_frame(),
            _ => self.max_frame,
        }
    }

    /// The event stream, across reconnects.
    pub fn events(&self) -> &flume::Receiver<ClientEvent> {
        &self.events
    }

    /// The next event; `None` after [`ClientEvent::Closed`] was taken.
    pub async fn next_event(&self) -> Option<ClientEvent> {
        self.events.recv_async().await.ok()
    }

    /// Closes the connection (no reconnect follows) and waits briefly for the close to be sent.
    pub async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let link = self.shared.link.borrow().clone();
        if let Link::Up(c) = link {
            c.close().await;
        }
    }

    /// Closes the connection (no reconnect follows) without waiting for the close to be sent;
    /// for callers that cannot await.
    pub fn close_now(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let link = self.shared.link.borrow().clone();
        if let Link::Up(c) = link {
            c.connection()
                .close(CloseCode::Normal.into(), b"client closed");
        }
    }
}

fn gave_up<T>() -> Result<T, ClientError> {
    Err(ClientError::Closed {
        code: None,
        reason: "no relay answered within the reconnect time".into(),
    })
}

/// The client's life: forwards the current connection's events; when it dies, reconnects and
/// resumes; ends with `Closed`.
async fn run(
    shared: Arc<Shared>,
    mut client: Arc<Client>,
    mut index: usize,
    tx: flume::Sender<ClientEvent>,
) {
    loop {
        // The connection's end is watched on its own as well: a delivery stream read does not
        // always end when the connection times out, and what the client received before is
        // still forwarded first.
        let conn = client.connection().clone();
        let ended = conn.closed();
        tokio::pin!(ended);
        let mut last: Option<(Option<CloseCode>, String)> = None;
        let (code, reason) = loop {
            let ev = match &last {
                Some(_) => client.events().try_recv().ok(),
                None => tokio::select! {
                    biased;
                    ev = client.next_event() => ev,
                    e = &mut ended => {
                        last = Some(super::close_info(&e));
                        continue;
                    }
                },
            };
            match ev {
                Some(ClientEvent::Closed { code, reason }) => break (code, reason),
                Some(ev) => {
                    let fresh = shared.track().take(&ev);
                    if fresh && tx.send_async(ev).await.is_err() {
                        client.close().await;
                        return;
                    }
                }
                None => {
                    break last
                        .take()
                        .unwrap_or((None, "the connection's events ended".to_owned()));
                }
            }
        };
        let reconnects = !shared.cfg.reconnect_for.is_zero();
        if shared.closing.load(Ordering::Acquire) || !reconnects || !retry_after(code) {
            shared.link.send_replace(Link::Gone(code, reason.clone()));
            let _ = tx.send_async(ClientEvent::Closed { code, reason }).await;
            return;
        }
        tracing::info!(server = %shared.cfg.servers[index], %reason, "connection lost; reconnecting");
        shared.link.send_replace(Link::Reconnecting);
        let deadline = tokio::time::Instant::now() + shared.cfg.reconnect_for;
        let mut pause = shared.cfg.backoff_min;
        loop {
            let Some((next, at)) = reconnect(&shared, index, deadline).await else {
                let reason = format!(
                    "{reason}; no relay of {} answered within {} s",
                    shared.cfg.servers.len(),
                    shared.cfg.reconnect_for.as_secs()
                );
                shared.link.send_replace(Link::Gone(code, reason.clone()));
                let _ = tx.send_async(ClientEvent::Closed { code, reason }).await;
                return;
            };
            client = Arc::new(next);
            index = at;
            if tx
                .send_async(ClientEvent::Reconnected {
                    server: shared.cfg.servers[index],
                })
                .await
                .is_err()
            {
                client.close().await;
                return;
            }
            match resume_all(&shared, &client, &tx).await {
                Resumes::Done => break,
                Resumes::AppGone => {
                    client.close().await;
                    return;
                }
                Resumes::Unavailable(error) => {
                    // That relay cannot serve the rooms now (it lost its store, or NATS): the
                    // memberships are kept and resumed on the next relay that can, after a pause.
                    tracing::info!(server = %shared.cfg.servers[index], %error, "relay cannot resume now; trying the next");
                    client.close().await;
                    if tokio::time::Instant::now() + pause >= deadline {
                        let reason = format!(
                            "{reason}; no relay could resume the rooms within {} s ({error})",
                            shared.cfg.reconnect_for.as_secs()
                        );
                        shared.link.send_replace(Link::Gone(code, reason.clone()));
                        let _ = tx.send_async(ClientEvent::Closed { code, reason }).await;
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(shared.cfg.backoff_max);
                }
            }
        }
        shared.link.send_replace(Link::Up(client.clone()));
        // Closed while reconnecting: the new connection ends too, and the loop tells `Closed`.
        if shared.closing.load(Ordering::Acquire) {
            client
                .connection()
                .close(CloseCode::Normal.into(), b"client closed");
        }
    }
}

/// How resuming every membership on a new connection went.
enum Resumes {
    /// Each was resumed, or told the application why not ([`ClientEvent::ResumeFailed`]).
    Done,
    /// The relay answered `UNAVAILABLE` for one: nothing is given up, another relay is tried.
    Unavailable(crate::protocol::WireError),
    /// The application dropped the client.
    AppGone,
}

/// Resumes every membership on `client` at once (their events wait in the connection's buffer
/// meanwhile). A refusal that is final (the room was destroyed, a ban) ends that membership; a
/// relay that is unavailable ends none.
async fn resume_all(shared: &Shared, client: &Client, tx: &flume::Sender<ClientEvent>) -> Resumes {
    let rooms: Vec<(String, Membership)> = shared
        .track()
        .rooms
        .iter()
        .map(|(r, m)| (r.clone(), *m))
        .collect();
    let resumes = rooms
        .iter()
        .map(|(room, m)| client.resume(room, m.epoch, m.last_seq));
    let results = futures_util::future::join_all(resumes).await;
    let mut failed = Vec::new();
    for ((room, _), result) in rooms.into_iter().zip(results) {
        match result {
            Ok(_) => {}
            Err(ClientError::Refused(error)) if error.code == ErrorCode::Unavailable => {
                return Resumes::Unavailable(error);
            }
            Err(ClientError::Refused(error)) => failed.push((room, error)),
            // The new connection died already: the caller's event loop sees its end.
            Err(_) => {}
        }
    }
    for (room, error) in failed {
        tracing::info!(%room, %error, "membership not resumed");
        let ev = ClientEvent::ResumeFailed { room, error };
        shared.track().take(&ev);
        if tx.send_async(ev).await.is_err() {
            return Resumes::AppGone;
        }
    }
    Resumes::Done
}

/// Connects to the servers after `failed`, round robin, with back-off between rounds, until
/// `deadline`; the client and its server's index.
async fn reconnect(
    shared: &Shared,
    failed: usize,
    deadline: tokio::time::Instant,
) -> Option<(Client, usize)> {
    let cfg = &shared.cfg;
    let n = cfg.servers.len();
    let mut pause = cfg.backoff_min;
    let mut i = failed;
    loop {
        for _ in 0..n {
            if shared.closing.load(Ordering::Acquire) {
                return None;
            }
            i = (i + 1) % n;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let attempt = ClientConfig {
                server: cfg.servers[i],
                connect_timeout: cfg.client.connect_timeout.min(left),
                ..cfg.client.clone()
            };
            match Client::connect(attempt).await {
                Ok(c) => return Some((c, i)),
                Err(e) if hopeless(&e) => {
                    tracing::warn!(server = %cfg.servers[i], error = %e, "relay refused the client");
                    return None;
                }
                Err(e) => {
                    tracing::debug!(server = %cfg.servers[i], error = %e, "relay did not answer")
                }
            }
        }
        if tokio::time::Instant::now() + pause >= deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(cfg.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Class, Message};

    fn msg(room: &str, seq: u64, datagram: bool) -> ClientEvent {
        ClientEvent::Message {
            message: Message {
                room: room.into(),
                seq,
                ts: 0,
                from: "a".into(),
                msg_type: "chat".into(),
                body: Bytes::new(),
                class: if datagram { Class::Low } else { Class::Normal },
            },
            datagram,
        }
    }

    #[test]
    fn the_newest_seq_follows_the_stream_and_datagrams_come_once() {
        let mut t = Track::default();
        t.rooms.insert(
            "r".into(),
            Membership {
                epoch: 1,
                last_seq: 10,
            },
        );
        assert!(t.take(&msg("r", 11, false)));
        // A datagram overtakes the stream: delivered, but the resume point stays at 11.
        assert!(t.take(&msg("r", 13, true)));
        assert_eq!(t.rooms["r"].last_seq, 11);
        // The same datagram again (replayed after a resume): not delivered; a late one is.
        assert!(!t.take(&msg("r", 13, true)));
        assert!(t.take(&msg("r", 9, true)));
        assert!(t.take(&msg("r", 12, false)));
        // After a resume from 12 the stream replays 13: not delivered twice, but counted.
        assert!(!t.take(&msg("r", 13, false)));
        assert_eq!(t.rooms["r"].last_seq, 13);
        assert!(t.take(&msg("r", 14, false)));
        assert!(t.datagrams["r"].is_empty());
        // Rooms not joined through the client pass through untracked.
        assert!(t.take(&msg("other", 1, false)));
        // A membership that ends is forgotten.
        assert!(t.take(&ClientEvent::ResumeFailed {
            room: "r".into(),
            error: crate::protocol::WireError::new(crate::protocol::ErrorCode::RoomNotFound, "x"),
        }));
        assert!(t.rooms.is_empty());
    }

    #[test]
    fn only_a_dead_link_or_a_relay_going_away_is_worth_another_relay() {
        assert!(retry_after(None));
        assert!(retry_after(Some(CloseCode::Shutdown)));
        assert!(retry_after(Some(CloseCode::TooSlow)));
        assert!(!retry_after(Some(CloseCode::Unauthorized)));
        assert!(!retry_after(Some(CloseCode::Normal)));
        assert!(!retry_after(Some(CloseCode::Protocol)));
    }
}
