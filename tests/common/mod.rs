//! Shared helpers for the integration tests: a real relay on `127.0.0.1:0` with certificates minted
//! per test, clients and raw QUIC connections to it, an admin HTTP client, and event helpers.
//!
//! Every wait here is for an event (a reply, a message, a close). The only timeout is a generous
//! safety net ([`SAFETY`]) that turns a hang into a failure; nothing synchronises on time.

// Each test binary compiles this module on its own and uses a different part of it.
#![allow(dead_code)]

use roomcast::auth::{TokenAuth, unix_secs};
use roomcast::client::{Client, ClientConfig, ClientError, ClientEvent};
use roomcast::config::Config;
use roomcast::node::Server;
use roomcast::protocol::{CloseCode, Event, Message};
use roomcast::server::{Relay, Secrets};
use roomcast::tls::ServerIdentity;
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use reqwest::Method;

/// The admin bearer key every test server runs with.
pub const ADMIN_KEY: &str = "test-admin-key-0123456789";
/// The HS256 token secret every test server runs with.
pub const TOKEN_SECRET: &str = "test-token-secret-0123456789";

/// A rate or budget no test reaches.
const UNLIMITED: u32 = 1_000_000_000;

/// Upper bound on any single wait. Only turns a hang into a failure; never used to synchronise.
pub const SAFETY: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it does not finish within [`SAFETY`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(SAFETY, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {SAFETY:?} waiting for {what}"),
    }
}

/// Waits until `done()` holds, checking every 5 ms, for at most the safety timeout.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Polls `check` every 20 ms until it yields a value, for at most [`SAFETY`]: for a condition
/// of another process (its RSS, its `/metrics`, its `/healthz`) that sends no event a test
/// could await.
pub async fn poll<T, F: Future<Output = Option<T>>>(what: &str, check: impl FnMut() -> F) -> T {
    poll_for(what, SAFETY, check).await
}

/// [`poll`] for at most `limit`.
pub async fn poll_for<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let polling = async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if let Some(v) = check().await {
                return v;
            }
        }
    };
    match tokio::time::timeout(limit, polling).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// A relay serving on loopback for one test.
pub struct TestServer {
    /// The bound QUIC address.
    pub quic_addr: SocketAddr,
    /// The bound admin address.
    pub admin_addr: SocketAddr,
    /// The bound public web listener (WebSocket, SDK, demo page).
    pub web_addr: SocketAddr,
    /// PEM of the CA that signed this server's certificate.
    pub ca_pem: Vec<u8>,
    /// The configuration it runs with.
    pub config: Config,
    /// The running relay's shared core (see [`TestServer::relay`]).
    relay: Arc<Relay>,
    http: reqwest::Client,
    /// The data folder, removed when the server is dropped.
    _data: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Binds a relay on `127.0.0.1:0` (QUIC and admin) with a fresh in-memory identity and its own
    /// temporary data folder, after `tweak` adjusted the default configuration, and runs it until [`TestServer::shutdown`] (or
    /// until the `TestServer` is dropped).
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        // Installs the process-wide recorder so `/metrics` renders; later calls are no-ops.
        roomcast::metrics::prometheus().expect("the Prometheus recorder installs");
        let data = tempfile::tempdir().expect("a temporary data folder");
        let mut config = Config::default();
        config.server.data = data.path().to_owned();
        config.server.quic = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.admin = SocketAddr::from(([127, 0, 0, 1], 0));
        // Tests need no large kernel buffers; keep the bind quiet and cheap.
        config.transport.udp_recv_buffer = 1 << 20;
        config.transport.udp_send_buffer = 1 << 20;
        // Rate limits and the room ingress budget refill with the wall clock: a test that is not
        // about them must not depend on how fast the machine is, so they are lifted here (a test
        // about them sets them back in its tweak).
        let l = &mut config.limits;
        l.send_rate_per_sec = UNLIMITED;
        l.send_burst = UNLIMITED;
        l.room_budget_total = UNLIMITED;
        l.room_budget_reserved = 0;
        l.admin_rate_per_sec = UNLIMITED;
        l.admin_burst = UNLIMITED;
        tweak(&mut config);
        let identity = ServerIdentity::generate(&[]).expect("identity generates");
        let ca_pem = identity
            .ca_pem
            .clone()
            .expect("a generated identity has a CA")
            .into_bytes();
        let secrets = Secrets {
            admin_key: ADMIN_KEY.into(),
            token_secret: TOKEN_SECRET.into(),
        };
        let server = Server::bind(config.clone(), secrets, &identity)
            .await
            .expect("server binds");
        let quic_addr = server.quic_addr();
        let admin_addr = server.admin_addr();
        let web_addr = server
            .web_addr()
            .expect("the web listener is on by default");
        // Kept before `run` consumes the server, so tests can drive its timer pass.
        let relay = server.relay().clone();
        assert_ne!(quic_addr.port(), 0);
        assert_ne!(admin_addr.port(), 0);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        TestServer {
            quic_addr,
            admin_addr,
            web_addr,
            ca_pem,
            config,
            relay,
            http: reqwest::Client::new(),
            _data: data,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Fires the shutdown signal and waits for `Server::run` to return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("the run task is owned once");
        within("the server to shut down", task)
            .await
            .expect("the run task does not panic");
    }

    /// The running relay's core. Its timer pass is deterministic code that takes `now`:
    /// `server.relay().tick(now_ms() + 61 * 60_000)` runs every timer due an hour from now
    /// (idle, lifetime and scheduled destroys, offline exits, member counts, expiries) through
    /// the real server, and its clients receive the events.
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    // ---------------- tokens and clients ----------------

    /// A valid token for `user`, expiring in ten minutes.
    pub fn token(&self, user: &str) -> String {
        TokenAuth::new(TOKEN_SECRET.as_bytes(), 0, false)
            .mint(user, unix_secs() + 600)
            .expect("token mints")
    }

    /// A token for `user` signed with a secret the server does not know.
    pub fn forged_token(&self, user: &str) -> String {
        TokenAuth::new(b"some-other-secret", 0, false)
            .mint(user, unix_secs() + 600)
            .expect("token mints")
    }

    /// A correctly signed token for `user` that expired an hour ago (well past any leeway).
    pub fn expired_token(&self, user: &str) -> String {
        TokenAuth::new(TOKEN_SECRET.as_bytes(), 0, false)
            .mint(user, unix_secs() - 3600)
            .expect("token mints")
    }

    /// A client configuration for this server with `token`.
    pub fn client_config(&self, token: String) -> ClientConfig {
        ClientConfig::new(self.quic_addr, self.ca_pem.clone(), token)
    }

    /// Connects with `token`, returning the outcome as is.
    pub async fn connect(&self, token: String) -> Result<Client, ClientError> {
        within("a connect", Client::connect(self.client_config(token))).await
    }

    /// A connected client for `user`.
    pub async fn client(&self, user: &str) -> Client {
        self.client_with(user, |_| {}).await
    }

    /// A connected client for `user` whose configuration `tweak` adjusted.
    pub async fn client_with(&self, user: &str, tweak: impl FnOnce(&mut ClientConfig)) -> Client {
        let mut cfg = self.client_config(self.token(user));
        tweak(&mut cfg);
        let client = within("a connect", Client::connect(cfg))
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        assert_eq!(client.user(), user);
        client
    }

    /// A plain QUIC connection (ALPN `roomcast/1`, trusting this server's CA) with no roomcast
    /// handshake on it yet.
    pub async fn raw_connect(&self) -> RawConn {
        let crypto = roomcast::tls::quic_client_crypto(&self.ca_pem).expect("client crypto");
        let cfg = quinn::ClientConfig::new(Arc::new(crypto));
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("client endpoint binds");
        let connecting = endpoint
            .connect_with(cfg, self.quic_addr, "localhost")
            .expect("connect starts");
        let conn = within("a QUIC handshake", connecting)
            .await
            .expect("QUIC handshake");
        RawConn { endpoint, conn }
    }

    // ---------------- admin API ----------------

    /// The admin base URL.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// An admin call with the right key and an optional JSON body.
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> ApiReply {
        self.api_as(Some(ADMIN_KEY), method, path, body).await
    }

    /// An admin call with `key` (none: no `Authorization` header) and an optional JSON body.
    pub async fn api_as(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> ApiReply {
        let body = body.map(|b| serde_json::to_vec(&b).expect("JSON encodes"));
        self.api_raw(key, method, path, body).await
    }

    /// An admin call with `key` and raw body bytes (sent as `application/json`).
    pub async fn api_raw(
        &self,
        key: Option<&str>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> ApiReply {
        admin_call(&self.http, &self.admin_url(path), key, method, body).await
    }

    /// Creates a room through the admin API, asserting 201.
    pub async fn create_room(&self, id: &str) {
        let r = self
            .api(
                Method::POST,
                "/v1/rooms",
                Some(serde_json::json!({ "id": id })),
            )
            .await;
        assert_eq!(r.status, 201, "create room {id}: {}", r.text);
    }

    /// `GET /metrics` (no key), asserting 200.
    pub async fn metrics(&self) -> String {
        let r = self.api_as(None, Method::GET, "/metrics", None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.text
    }
}

/// An admin API answer.
#[derive(Debug)]
pub struct ApiReply {
    /// HTTP status.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body as text.
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub json: Value,
}

impl ApiReply {
    /// Asserts an error answer: `status` and the JSON body `{"error": code, "message": <non-empty>}`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.json["error"], code, "{}", self.text);
        let message = self.json["message"].as_str().unwrap_or("");
        assert!(
            !message.is_empty(),
            "error without a message: {}",
            self.text
        );
        let keys: Vec<&String> = self
            .json
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys, ["error", "message"], "{}", self.text);
    }
}

/// A raw QUIC connection and the endpoint that drives it.
pub struct RawConn {
    /// Kept so the endpoint lives as long as the connection.
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
}

impl RawConn {
    /// Waits for the server to close the connection; returns the application close code and reason.
    pub async fn closed(&self) -> (u64, String) {
        match within("the server to close the connection", self.conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(c) => (
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => panic!("expected an application close, got {other}"),
        }
    }
}

// ---------------- events ----------------

/// The client's next event.
pub async fn next_event(client: &Client) -> ClientEvent {
    within("an event", client.next_event())
        .await
        .expect("the event stream is open")
}

/// The client's next event, which must be a message; returns it and whether it came as a datagram.
pub async fn next_message_lane(client: &Client) -> (Message, bool) {
    match next_event(client).await {
        ClientEvent::Message { message, datagram } => (message, datagram),
        other => panic!("{}: expected a message, got {other:?}", client.user()),
    }
}

/// The client's next event, which must be a message.
pub async fn next_message(client: &Client) -> Message {
    next_message_lane(client).await.0
}

/// The client's next event, which must be a notice (moderation or presence); returns its event.
pub async fn next_notice(client: &Client) -> Event {
    match next_event(client).await {
        ClientEvent::Notice(event) => event,
        other => panic!("{}: expected a notice, got {other:?}", client.user()),
    }
}

/// The client's next event, which must be `Closed`; returns its code and reason.
pub async fn next_closed(client: &Client) -> (Option<CloseCode>, String) {
    match next_event(client).await {
        ClientEvent::Closed { code, reason } => (code, reason),
        other => panic!("{}: expected Closed, got {other:?}", client.user()),
    }
}

// ---------------- metrics ----------------

/// The sum of the samples `name` that carry all of `labels` (in any order), in Prometheus text
/// `text`; `None` when there is no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    // Series with at least these labels, summed: a query that leaves out a label (such as
    // `transport`) counts every value of it.
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let values: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (n, got) = match series.split_once('{') {
                Some((n, rest)) => {
                    let inner = rest.strip_suffix('}')?;
                    (n, inner.split(',').map(str::to_owned).collect::<Vec<_>>())
                }
                None => (series, Vec::new()),
            };
            (n == name && want.iter().all(|w| got.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Whether `text` has a `# TYPE name kind` line and at least one sample of `name`.
pub fn has_metric(text: &str, name: &str, kind: &str) -> bool {
    let typed = text.lines().any(|l| l == format!("# TYPE {name} {kind}"));
    let sampled = text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
    });
    typed && sampled
}

/// One admin API call on `url` with `key` (none: no `Authorization` header) and raw JSON body
/// bytes; what every test's admin helpers come down to.
pub async fn admin_call(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    method: Method,
    body: Option<Vec<u8>>,
) -> ApiReply {
    let mut req = http.request(method, url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    if let Some(body) = body {
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let resp = within("an admin call", req.send())
        .await
        .expect("admin request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = within("an admin body", resp.text())
        .await
        .expect("admin body");
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    ApiReply {
        status,
        content_type,
        text,
        json,
    }
}

/// A message body from text.
pub fn body(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

/// The error code of a refused call (a wire refusal or a local check of the client library).
pub fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> roomcast::protocol::ErrorCode {
    match r {
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("expected a refusal, got {e:?}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

// ---------------- floods ----------------

/// Sends `n` messages cycling protected (system), normal and low through the admin API, waiting
/// for `fast` to receive each before sending the next (so the flood is paced by a reader that
/// keeps up, and the stalled member's lag is the only variable).
pub async fn flood(server: &TestServer, fast: &Client, room: &str, n: u64, body: &str) {
    for i in 0..n {
        let msg = match i % 3 {
            0 => serde_json::json!({"type": "notice", "body": body}),
            1 => serde_json::json!({"from": "u", "type": "chat", "body": body}),
            _ => serde_json::json!({"from": "u", "type": "chat", "body": body, "low": true}),
        };
        let r = server
            .api(
                Method::POST,
                &format!("/v1/rooms/{room}/messages"),
                Some(msg),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let m = next_message(fast).await;
        assert_eq!(m.seq, i + 1, "the fast member gets every message in order");
    }
}
