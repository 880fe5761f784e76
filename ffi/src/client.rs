//! The client behind a handle: its runtime thread, the connection (a
//! [`roomcast::client::FailoverClient`], which reconnects and resumes when
//! `rc_config.reconnect_for_ms` is set), the request tasks, and the two queues `rc_client_poll`
//! reads.
//!
//! # Queues and order
//! - **Room events** come from the failover client's bounded event channel, which forwards the
//!   connection's (both bounded by [`roomcast::client::ClientConfig::event_buffer`],
//!   `rc_config.event_queue`). When they are full the library stops reading the delivery
//!   stream, so the relay sheds this connection's low,
//!   then normal messages and sends a `Gap` before the next delivered one; low datagrams that
//!   find it full are dropped, counted and reported as a `Gap` too. Nothing is lost silently.
//! - **Control items** (the `CONNECTED` event, replies, a failed connect) go on a second
//!   channel whose bound can never be reached: a request is refused with `RC_BUSY` while
//!   `max_requests` replies are outstanding (sent and not yet polled), and each request posts
//!   exactly one reply.
//! - A poll takes control items first, then room events. `CONNECTED` is posted before room events
//!   can exist, so it is always first. `CLOSED` is always last: it is held back until every
//!   request in flight has had its reply taken, and after it every call says `RC_CLOSED`.
//!
//! # Threads
//! Each client owns a tokio runtime with one worker thread; the connection, its readers and the
//! request tasks run there. Nothing runs on the caller's thread except the short, non-blocking
//! work of a call (and `rc_client_wait`'s bounded wait). No callback ever runs anywhere.

use crate::status::Failure;
use crate::types::{rc_close_code, rc_request_kind, rc_status};
use roomcast::client::{ClientConfig, ClientError, ClientEvent, FailoverClient, FailoverConfig};
use roomcast::protocol::{CloseCode, Response};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// How long a connection may stay silent before it counts as dead, when the client fails over
/// (`rc_config.reconnect_for_ms`): the CLI's bound. Without failover the library's default.
pub const FAILOVER_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What `rc_client_open` was given, checked and copied.
#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` entries, tried in order.
    pub servers: Vec<String>,
    /// The certificate name to check, when given.
    pub server_name: Option<String>,
    /// CA PEM; `None`: the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The client token.
    pub token: String,
    /// Accept datagrams.
    pub datagrams: bool,
    /// The room event queue's bound.
    pub event_queue: usize,
    /// Replies outstanding before `RC_BUSY`.
    pub max_requests: u32,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Bound on each request.
    pub request_timeout: Duration,
    /// How long to keep reconnecting after the connection died; zero: never.
    pub reconnect_for: Duration,
}

/// One thing a poll hands out, before it becomes an `rc_event`.
#[derive(Debug)]
pub enum Item {
    /// The connection is up.
    Connected {
        /// The authenticated user.
        user: String,
        /// The connection's id on the server.
        conn_id: u64,
    },
    /// The answer to a request.
    Reply(Reply),
    /// A room event (never `ClientEvent::Closed`: that becomes [`Item::Closed`]).
    Room(ClientEvent),
    /// The last event.
    Closed(Final),
}

/// The answer to one request.
#[derive(Debug)]
pub struct Reply {
    /// The id the request call returned.
    pub id: u64,
    /// Which request.
    pub kind: rc_request_kind,
    /// The room it was about (empty for ping).
    pub room: String,
    /// The relay's answer, or why there is none.
    pub result: Result<Response, Failure>,
}

/// How the connection ended.
#[derive(Debug, Clone)]
pub struct Final {
    /// `RC_OK` when the application closed it.
    pub status: rc_status,
    /// The relay's close code, or `RC_CLOSE_NONE`.
    pub close_code: u32,
    /// Why.
    pub text: String,
}

/// What the runtime posts for the poller.
enum Control {
    Connected {
        user: String,
        conn_id: u64,
    },
    Reply(Reply),
    /// Connecting failed or was cancelled: the final event, held until the replies are out.
    Failed(Final),
}

/// Where the connection is.
#[derive(Clone)]
enum Conn {
    Connecting,
    Ready(Arc<FailoverClient>),
    Failed(Failure),
}

/// The part of a client its tasks share.
struct Shared {
    control: flume::Sender<Control>,
    state: watch::Sender<Conn>,
    /// Set once connected: the library client, whose event channel is the room event queue.
    client: OnceLock<Arc<FailoverClient>>,
    /// `rc_client_close` was called.
    closed_by_app: AtomicBool,
    /// Wakes a connect in progress when the application closes.
    cancel: Notify,
}

/// Bookkeeping that decides when `CLOSED` may go out.
#[derive(Default)]
struct Flow {
    /// Requests whose reply has not been taken by a poll yet.
    in_flight: u32,
    /// The final event, once known, waiting for `in_flight` to reach 0.
    last: Option<Final>,
    /// `CLOSED` was handed out.
    done: bool,
}

/// A client handle's state.
pub struct Handle {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    /// Requests, in the order they were made, for the dispatcher task.
    jobs: flume::Sender<Job>,
    control: flume::Receiver<Control>,
    flow: Mutex<Flow>,
    next_request: AtomicU64,
    max_requests: u32,
    request_timeout: Duration,
}

/// One source a wait woke up for.
enum Woken {
    Control(Control),
    Room(Result<ClientEvent, flume::RecvError>),
}

impl Handle {
    /// Starts the runtime thread and the connect; returns at once. The outcome arrives as
    /// `CONNECTED` or `CLOSED`.
    pub fn open(opts: Options) -> Result<Handle, Failure> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(1)
            .thread_name("roomcast-client")
            .enable_all()
            .build()
            .map_err(|e| {
                Failure::new(
                    rc_status::RC_CONNECT,
                    format!("starting the client thread: {e}"),
                )
            })?;
        // Bounded, and never full: see the module doc.
        let (control_tx, control) = flume::bounded(opts.max_requests as usize + 2);
        let (state, _) = watch::channel(Conn::Connecting);
        let shared = Arc::new(Shared {
            control: control_tx,
            state,
            client: OnceLock::new(),
            closed_by_app: AtomicBool::new(false),
            cancel: Notify::new(),
        });
        // At most `max_requests` are in flight, so at most that many wait here.
        let (jobs, queued) = flume::bounded(opts.max_requests as usize);
        runtime.spawn(run_connect(shared.clone(), opts.clone()));
        runtime.spawn(dispatch(shared.state.subscribe(), queued));
        Ok(Handle {
            runtime: Some(runtime),
            shared,
            jobs,
            control,
            flow: Mutex::new(Flow::default()),
            next_request: AtomicU64::new(1),
            max_requests: opts.max_requests,
            request_timeout: opts.request_timeout,
        })
    }

    fn flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next item, without blocking: `Ok(None)` when there is none now, `RC_CLOSED` once
    /// `CLOSED` was handed out.
    pub fn poll(&self) -> Result<Option<Item>, Failure> {
        loop {
            if let Ok(c) = self.control.try_recv() {
                match self.take_control(c) {
                    Some(item) => return Ok(Some(item)),
                    None => continue,
                }
            }
            if let Some(events) = self.room_events() {
                match events.try_recv() {
                    Ok(ev) => match self.take_room(Ok(ev)) {
                        Some(item) => return Ok(Some(item)),
                        None => continue,
                    },
                    Err(flume::TryRecvError::Empty) => {}
                    Err(flume::TryRecvError::Disconnected) => {
                        self.take_room(Err(flume::RecvError::Disconnected));
                        continue;
                    }
                }
            }
            return self.take_last();
        }
    }

    /// Like [`Handle::poll`], waiting up to `timeout` for an item.
    pub fn wait(&self, timeout: Duration) -> Result<Option<Item>, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.poll()? {
                return Ok(Some(item));
            }
            let events = self.room_events().cloned();
            let mut selector =
                flume::Selector::new().recv(&self.control, |r| r.ok().map(Woken::Control));
            if let Some(events) = &events {
                selector = selector.recv(events, |r| Some(Woken::Room(r)));
            }
            let woken = match selector.wait_deadline(deadline) {
                Ok(Some(w)) => w,
                // The control channel cannot disconnect while `self` holds its sender.
                Ok(None) => continue,
                Err(flume::select::SelectError::Timeout) => return Ok(None),
            };
            let item = match woken {
                Woken::Control(c) => self.take_control(c),
                Woken::Room(r) => self.take_room(r),
            };
            if let Some(item) = item {
                return Ok(Some(item));
            }
        }
    }

    /// The room event channel, while room events may still come.
    fn room_events(&self) -> Option<&flume::Receiver<ClientEvent>> {
        let client = self.shared.client.get()?;
        let flow = self.flow();
        (flow.last.is_none() && !flow.done).then(|| client.events())
    }

    fn take_control(&self, c: Control) -> Option<Item> {
        match c {
            Control::Connected { user, conn_id } => Some(Item::Connected { user, conn_id }),
            Control::Reply(r) => {
                let mut flow = self.flow();
                flow.in_flight = flow.in_flight.saturating_sub(1);
                Some(Item::Reply(r))
            }
            Control::Failed(last) => {
                self.flow().last.get_or_insert(last);
                None
            }
        }
    }

    fn take_room(&self, r: Result<ClientEvent, flume::RecvError>) -> Option<Item> {
        let last = match r {
            Ok(ClientEvent::Closed { code, reason }) => Final {
                status: if self.shared.closed_by_app.load(Ordering::Acquire) {
                    rc_status::RC_OK
                } else {
                    rc_status::RC_CLOSED
                },
                close_code: code.map_or(rc_close_code::RC_CLOSE_NONE as u32, CloseCode::code),
                text: reason,
            },
            Ok(ev) => return Some(Item::Room(ev)),
            Err(_) => Final {
                status: rc_status::RC_CLOSED,
                close_code: rc_close_code::RC_CLOSE_NONE as u32,
                text: "the connection's event stream ended".into(),
            },
        };
        self.flow().last.get_or_insert(last);
        None
    }

    /// `CLOSED` once it is known and every reply was taken; `RC_CLOSED` after it.
    fn take_last(&self) -> Result<Option<Item>, Failure> {
        let mut flow = self.flow();
        if flow.done {
            return Err(Failure::new(
                rc_status::RC_CLOSED,
                "the client is closed and its last event was delivered",
            ));
        }
        // Replies are posted before they are counted out, so no reply can follow this.
        if flow.in_flight == 0
            && self.control.is_empty()
            && let Some(last) = flow.last.take()
        {
            flow.done = true;
            return Ok(Some(Item::Closed(last)));
        }
        Ok(None)
    }

    /// Starts a request on the runtime thread; returns its id at once. `op` runs once the
    /// connection is up, after every request made before it has been written; its reply (or
    /// its failure) is posted as exactly one control item.
    pub fn submit<F, Fut>(&self, kind: rc_request_kind, room: String, op: F) -> Result<u64, Failure>
    where
        F: FnOnce(Arc<FailoverClient>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response, ClientError>> + Send + 'static,
    {
        {
            let mut flow = self.flow();
            if flow.done || self.shared.closed_by_app.load(Ordering::Acquire) {
                return Err(Failure::new(rc_status::RC_CLOSED, "the client is closed"));
            }
            if flow.in_flight >= self.max_requests {
                return Err(Failure::new(
                    rc_status::RC_BUSY,
                    format!(
                        "{} requests are in flight (max_requests); poll their replies first",
                        flow.in_flight
                    ),
                ));
            }
            flow.in_flight += 1;
        }
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            reply: ReplyOnce {
                control: self.shared.control.clone(),
                id,
                kind,
                room: Some(room),
            },
            deadline: tokio::time::Instant::now() + self.request_timeout,
            timeout: self.request_timeout,
            run: Box::new(move |client| Box::pin(op(client))),
        };
        // Never full: `in_flight` bounds the jobs as it bounds the replies. Should it fail, the
        // job's drop posts its reply.
        let _ = self.jobs.try_send(job);
        Ok(id)
    }

    /// Closes the connection (or stops connecting) without waiting; `CLOSED` follows.
    pub fn close(&self) -> Result<(), Failure> {
        if self.shared.closed_by_app.swap(true, Ordering::AcqRel) || self.flow().done {
            return Err(Failure::new(
                rc_status::RC_CLOSED,
                "the client is already closed",
            ));
        }
        if let Some(client) = self.shared.client.get() {
            client.close_now();
        }
        self.shared.cancel.notify_one();
        Ok(())
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if let Some(client) = self.shared.client.get().cloned() {
            // Tell the server now (it would otherwise hold the membership until the offline
            // grace), and give the close up to a second to go out. A thread inside another
            // runtime cannot block on this one: it only sends the close.
            if tokio::runtime::Handle::try_current().is_ok() {
                client.close_now();
            } else {
                runtime.block_on(async {
                    let _ = tokio::time::timeout(Duration::from_secs(1), client.close()).await;
                });
            }
        }
        // Tasks are dropped at once; only a blocking name lookup could still be running, and
        // it is not waited for long.
        if tokio::runtime::Handle::try_current().is_ok() {
            runtime.shutdown_background();
        } else {
            runtime.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

/// Posts a request's one reply: the result, or, if the task is dropped before it has one (the
/// client is being freed, or a bug panicked it), a failure, so that `in_flight` always drains.
struct ReplyOnce {
    control: flume::Sender<Control>,
    id: u64,
    kind: rc_request_kind,
    room: Option<String>,
}

impl ReplyOnce {
    fn send(mut self, result: Result<Response, Failure>) {
        self.post(result);
    }

    fn post(&mut self, result: Result<Response, Failure>) {
        if let Some(room) = self.room.take() {
            // Never full (see the module doc); a client being freed has no poller left.
            let _ = self.control.try_send(Control::Reply(Reply {
                id: self.id,
                kind: self.kind,
                room,
                result,
            }));
        }
    }
}

impl Drop for ReplyOnce {
    fn drop(&mut self) {
        self.post(Err(Failure::new(
            rc_status::RC_CLOSED,
            "the request was abandoned: the client is closing",
        )));
    }
}

/// A request waiting for the dispatcher.
struct Job {
    reply: ReplyOnce,
    deadline: tokio::time::Instant,
    timeout: Duration,
    run: Box<dyn FnOnce(Arc<FailoverClient>) -> RequestFuture + Send>,
}

type RequestFuture = std::pin::Pin<Box<dyn Future<Output = Result<Response, ClientError>> + Send>>;

impl Job {
    async fn run(self, client: Arc<FailoverClient>) {
        let Job {
            reply,
            deadline,
            timeout,
            run,
        } = self;
        let result = match tokio::time::timeout_at(deadline, run(client)).await {
            Ok(r) => r.map_err(|e| Failure::from_client(&e)),
            Err(_) => Err(Failure::new(
                rc_status::RC_TIMEOUT,
                format!("no reply within {} ms", timeout.as_millis()),
            )),
        };
        reply.send(result);
    }
}

/// Runs the requests of one client in the order they were made. Once connected, each request
/// is first polled in that order (`FuturesUnordered` polls new futures first-in first-out),
/// and its first poll reaches the client library's control-stream lock, a FIFO `tokio` mutex,
/// without an await before it: so frames reach the wire in call order (a `send` made right
/// after a `join` is never refused for being first), while replies are awaited concurrently.
async fn dispatch(mut state: watch::Receiver<Conn>, jobs: flume::Receiver<Job>) {
    use futures_util::StreamExt;
    let conn = match state.wait_for(|c| !matches!(c, Conn::Connecting)).await {
        Ok(c) => c.clone(),
        Err(_) => return,
    };
    let client = match conn {
        Conn::Ready(client) => client,
        Conn::Failed(f) => {
            while let Ok(job) = jobs.recv_async().await {
                job.reply.send(Err(f.clone()));
            }
            return;
        }
        // `wait_for` only returns states its predicate accepts.
        Conn::Connecting => return,
    };
    let mut running = futures_util::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            job = jobs.recv_async() => match job {
                Ok(job) => running.push(job.run(client.clone())),
                Err(_) => break,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}

async fn run_connect(shared: Arc<Shared>, opts: Options) {
    let cancelled = || Failure::new(rc_status::RC_OK, "closed before the connection was up");
    let outcome = tokio::select! {
        r = connect_any(&opts) => r,
        _ = shared.cancel.notified() => Err(cancelled()),
    };
    match outcome {
        Ok(client) => {
            let client = Arc::new(client);
            // CONNECTED goes out before room events become visible, so it is always first.
            let _ = shared.control.try_send(Control::Connected {
                user: client.user().to_owned(),
                conn_id: client.conn_id().unwrap_or_default(),
            });
            let _ = shared.client.set(client.clone());
            shared.state.send_replace(Conn::Ready(client.clone()));
            if shared.closed_by_app.load(Ordering::Acquire) {
                client.close_now();
            }
        }
        Err(f) => {
            let close_code = if f.status == rc_status::RC_UNAUTHORIZED {
                rc_close_code::RC_CLOSE_UNAUTHORIZED
            } else {
                rc_close_code::RC_CLOSE_NONE
            };
            shared
                .state
                .send_replace(Conn::Failed(if f.status == rc_status::RC_OK {
                    Failure::new(rc_status::RC_CLOSED, f.message.clone())
                } else {
                    f.clone()
                }));
            let _ = shared.control.try_send(Control::Failed(Final {
                status: f.status,
                close_code: close_code as u32,
                text: f.message,
            }));
        }
    }
}

/// Resolves every entry in order, then connects to the first address that answers, within the
/// connect timeout overall; the client fails over across all of them afterwards (when
/// `reconnect_for` is not zero). A server that answers with a refusal (a bad token) is final:
/// the others would answer the same.
async fn connect_any(opts: &Options) -> Result<FailoverClient, Failure> {
    let ca_pem = match &opts.ca_pem {
        Some(pem) => pem.clone(),
        None => system_roots_pem()?,
    };
    let deadline = tokio::time::Instant::now() + opts.connect_timeout;
    let timed_out = || {
        Failure::new(
            rc_status::RC_CONNECT,
            format!(
                "no connection within {} ms",
                opts.connect_timeout.as_millis()
            ),
        )
    };
    let mut last = Failure::new(rc_status::RC_CONNECT, "no server address");
    let mut servers = Vec::new();
    let mut server_name = opts.server_name.clone();
    for entry in &opts.servers {
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(entry)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => last = Failure::new(rc_status::RC_CONNECT, format!("{entry}: {e}")),
            Ok(Ok(addrs)) => {
                // One certificate name for every relay: the given one, or the first entry's.
                server_name.get_or_insert_with(|| default_server_name(entry));
                servers.extend(addrs);
            }
        }
    }
    let Some(&first) = servers.first() else {
        return Err(last);
    };
    let mut client = ClientConfig::new(first, ca_pem, opts.token.clone());
    client.server_name = server_name.unwrap_or_else(|| "localhost".into());
    client.datagrams = opts.datagrams;
    client.event_buffer = opts.event_queue;
    client.connect_timeout = client.connect_timeout.min(opts.connect_timeout);
    if !opts.reconnect_for.is_zero() {
        // A client that fails over notices a dead relay sooner (keep-alives every ~3 s).
        client.idle_timeout = FAILOVER_IDLE_TIMEOUT;
    }
    let mut cfg = FailoverConfig::new(servers, client);
    cfg.reconnect_for = opts.reconnect_for;
    match tokio::time::timeout_at(deadline, FailoverClient::connect(cfg)).await {
        Err(_) => Err(timed_out()),
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            let mut f = Failure::from_client(&e);
            if let rc_status::RC_CLOSED | rc_status::RC_PROTOCOL = f.status {
                f.status = rc_status::RC_CONNECT;
            }
            Err(f)
        }
    }
}

/// The certificate name for an address entry: its host, or `localhost` for an IP literal.
pub fn default_server_name(entry: &str) -> String {
    let host = entry.rsplit_once(':').map_or(entry, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".into()
    } else {
        host.into()
    }
}

/// The system's root certificates as PEM, for `roomcast::client` (which takes PEM).
fn system_roots_pem() -> Result<Vec<u8>, Failure> {
    use base64::Engine;
    let found = rustls_native_certs::load_native_certs();
    if found.certs.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        return Err(Failure::new(
            rc_status::RC_TLS,
            format!("no system root certificates found{why}; set rc_config.ca_pem"),
        ));
    }
    let mut pem = String::new();
    for cert in &found.certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Ok(pem.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_name_defaults_to_the_host() {
        assert_eq!(default_server_name("127.0.0.1:7700"), "localhost");
        assert_eq!(default_server_name("[::1]:7700"), "localhost");
        assert_eq!(
            default_server_name("chat.example.com:7700"),
            "chat.example.com"
        );
    }
}
