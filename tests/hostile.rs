//! Hostile and independent peers: clients written from the protocol document alone (plain quinn
//! with their own TLS and transport settings, frames written by hand), and the edge cases of the
//! control and delivery streams they meet.

mod common;

use common::{TestServer, poll, within};
use roomcast::protocol::{
    ClientFrame, CloseCode, ErrorCode, Event, FrameReader, PROTOCOL_VERSION, Request, Response,
    ServerFrame, encode_frame,
};
use std::net::SocketAddr;
use std::sync::Arc;

// ---------------- an independent client ----------------

/// A QUIC client configuration as the protocol document describes it: TLS 1.3, ALPN
/// `roomcast/1`, trusting the server's CA; `tweak` sets its transport parameters.
fn peer_config(
    ca_pem: &[u8],
    tweak: impl FnOnce(&mut quinn::TransportConfig),
) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &*ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"roomcast/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC crypto");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    tweak(&mut transport);
    config.transport_config(Arc::new(transport));
    config
}

/// One independent client connection and the endpoint that drives it.
struct Peer {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

/// The control stream of a [`Peer`] after its hello.
struct Control {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Peer {
    /// Connects to `server` with the transport `tweak` sets.
    async fn connect(server: &TestServer, tweak: impl FnOnce(&mut quinn::TransportConfig)) -> Peer {
        Self::connect_to(server.quic_addr, &server.ca_pem, tweak).await
    }

    async fn connect_to(
        addr: SocketAddr,
        ca_pem: &[u8],
        tweak: impl FnOnce(&mut quinn::TransportConfig),
    ) -> Peer {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("client endpoint binds");
        let connecting = endpoint
            .connect_with(peer_config(ca_pem, tweak), addr, "localhost")
            .expect("connect starts");
        let conn = within("the QUIC handshake", connecting)
            .await
            .expect("QUIC handshake");
        Peer {
            _endpoint: endpoint,
            conn,
        }
    }

    /// Opens the control stream and sends a hello with `token`; the answer is not read yet.
    async fn hello(&self, token: &str) -> Control {
        let (mut send, recv) = self.conn.open_bi().await.expect("control stream");
        write(
            &mut send,
            &ClientFrame::Hello {
                version: PROTOCOL_VERSION,
                token: token.into(),
            },
        )
        .await;
        Control { send, recv }
    }

    /// A hello that must be welcomed; returns the control stream and the connection id.
    async fn welcomed(&self, token: &str) -> (Control, u64) {
        let mut control = self.hello(token).await;
        match control.next().await {
            Some(ServerFrame::Welcome { conn_id, .. }) => (control, conn_id),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Waits for the server to close the connection with [`CloseCode::Protocol`] and `reason`.
    async fn assert_protocol_close(&self, reason: &str) {
        assert_eq!(self.closed().await, (protocol_code(), reason.to_owned()));
    }

    /// Waits for the server to close the connection; its application close code and reason.
    async fn closed(&self) -> (u64, String) {
        match within("the server to close the connection", self.conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(c) => (
                c.error_code.into_inner(),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            other => panic!("expected an application close, got {other}"),
        }
    }
}

impl Control {
    /// The next frame from the server; `None` at the end of the stream or when it failed.
    async fn next(&mut self) -> Option<ServerFrame> {
        // A reader reads exactly one frame and keeps nothing back, so one per frame will do.
        let mut reader = FrameReader::new(&mut self.recv, 16 << 20);
        within("a control frame", reader.read::<ServerFrame>())
            .await
            .ok()
            .flatten()
    }

    /// Writes a request.
    async fn request(&mut self, id: u32, request: Request) {
        write(&mut self.send, &ClientFrame::Request { id, request }).await;
    }

    /// The next frame, which must be the reply to `id`.
    async fn reply(&mut self, id: u32) -> Result<Response, roomcast::protocol::WireError> {
        match self.next().await {
            Some(ServerFrame::Reply { id: got, result }) if got == id => result,
            other => panic!("expected the reply to {id}, got {other:?}"),
        }
    }
}

/// A join of `room` asking for no history.
fn join(room: &str) -> Request {
    Request::Join {
        room: room.into(),
        history: -1,
    }
}

/// A normal-class `chat` message to `room`.
fn send(room: &str, body: impl Into<bytes::Bytes>) -> Request {
    Request::Send {
        room: room.into(),
        msg_type: "chat".into(),
        body: body.into(),
        low: false,
    }
}

async fn write(send: &mut quinn::SendStream, frame: &ClientFrame) {
    send.write_all(&encode_frame(frame))
        .await
        .expect("frame written");
}

fn protocol_code() -> u64 {
    u64::from(CloseCode::Protocol.code())
}

// ---------------- control-stream edge cases ----------------

/// A client that finishes its control stream while requests are outstanding gets every reply
/// and the end of the stream before the close (the server does not close while replies are in
/// flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finishing_the_control_stream_with_requests_outstanding_loses_no_reply() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let peer = Peer::connect(&server, |_| {}).await;
    let (mut control, _) = peer.welcomed(&server.token("alice")).await;

    // Pipelined and never waited for: a join, sends (each reply waits for its fsync), pages of
    // history of about 30 KiB each (some 1.2 MiB of replies in all), a ping, then the end.
    let mut expected = Vec::new();
    control.request(1, join("lobby")).await;
    expected.push((1, "joined"));
    for id in 2..=31 {
        control.request(id, send("lobby", vec![b'x'; 1000])).await;
        expected.push((id, "sent"));
    }
    for id in 32..=71 {
        let request = Request::History {
            room: "lobby".into(),
            before_seq: 0,
            limit: 200,
        };
        control.request(id, request).await;
        expected.push((id, "history"));
    }
    control.request(72, Request::Ping).await;
    expected.push((72, "pong"));
    control.send.finish().expect("control stream finished");

    let mut got = Vec::new();
    while let Some(frame) = control.next().await {
        match frame {
            ServerFrame::Reply { id, result } => {
                let kind = match result {
                    Ok(Response::Joined(_)) => "joined",
                    Ok(Response::Sent { .. }) => "sent",
                    Ok(Response::History(_)) => "history",
                    Ok(Response::Pong) => "pong",
                    other => panic!("reply {id}: unexpected {other:?}"),
                };
                got.push((id, kind));
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }
    assert_eq!(got.len(), expected.len(), "replies lost: got {got:?}");
    assert_eq!(got, expected);
    assert_eq!(
        peer.closed().await,
        (
            u64::from(CloseCode::Normal.code()),
            "control stream finished".to_owned()
        )
    );
}

/// A client that grants the server no unidirectional stream cannot get its delivery stream: it
/// is not welcomed, and it is closed with a reason within the hello timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_granting_no_unidirectional_stream_is_closed_with_a_reason() {
    let server = TestServer::start(|c| c.transport.hello_timeout_ms = 1000).await;
    let peer = Peer::connect(&server, |t| {
        t.max_concurrent_uni_streams(0u32.into());
    })
    .await;
    let mut control = peer.hello(&server.token("alice")).await;
    let answer = control.next().await;
    assert!(answer.is_none(), "expected no welcome, got {answer:?}");
    let (code, reason) = peer.closed().await;
    assert_eq!(code, protocol_code(), "{reason}");
    assert_eq!(
        reason,
        "the client must allow the server one unidirectional stream (the delivery stream)"
    );
}

/// A request of a variant the server does not know gets `BAD_REQUEST` with its id, and the
/// connection goes on: a newer client can probe for features.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_request_variant_is_refused_by_id_and_the_connection_goes_on() {
    let server = TestServer::start(|_| {}).await;
    let peer = Peer::connect(&server, |_| {}).await;
    let (mut control, conn_id) = peer.welcomed(&server.token("alice")).await;

    // The delivery stream's first event is Ready with the welcome's connection id.
    let recv = within("the delivery stream", peer.conn.accept_uni())
        .await
        .expect("delivery stream");
    let mut events = FrameReader::new(recv, 1 << 20);
    match within("Ready", events.read::<Event>()).await {
        Ok(Some(Event::Ready { conn_id: got })) => assert_eq!(got, conn_id),
        other => panic!("expected Ready, got {other:?}"),
    }

    // Frame 1 (Request), id 77 (varint 0x4d), variant 42, then fields this server cannot know.
    let body = [1u8, 0x4d, 42, 5, b'f', b'u', b't', b'u', b'r'];
    let mut raw = (body.len() as u32).to_be_bytes().to_vec();
    raw.extend_from_slice(&body);
    control.send.write_all(&raw).await.expect("written");
    control.request(78, Request::Ping).await;

    let e = control.reply(77).await.expect_err("refused");
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert_eq!(
        e.message,
        "unknown request variant 42: this server knows variants 0 to 10 of protocol 1"
    );
    assert_eq!(control.reply(78).await, Ok(Response::Pong));
}

/// A client that resets its control stream breaks the protocol and is told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_the_control_stream_closes_with_the_protocol_code_and_a_reason() {
    let server = TestServer::start(|_| {}).await;
    let peer = Peer::connect(&server, |_| {}).await;
    let (mut control, _) = peer.welcomed(&server.token("alice")).await;
    control.send.reset(7u32.into()).expect("reset");
    peer.assert_protocol_close("the client reset its control stream (RESET_STREAM)")
        .await;
}

/// A client that stops reading its control stream (STOP_SENDING) is closed with a reason as soon
/// as the server has a reply to write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_control_stream_closes_with_the_protocol_code_and_a_reason() {
    let server = TestServer::start(|_| {}).await;
    let peer = Peer::connect(&server, |_| {}).await;
    let (mut control, _) = peer.welcomed(&server.token("alice")).await;
    control.recv.stop(7u32.into()).expect("stopped");
    // Pings until the server, writing a reply, finds the stream stopped and closes (bounded: the
    // first ping after the stop reaches the server already does).
    let closed = peer.conn.closed();
    tokio::pin!(closed);
    for id in 1..=100 {
        let ping = encode_frame(&ClientFrame::Request {
            id,
            request: Request::Ping,
        });
        tokio::select! {
            _ = &mut closed => break,
            written = control.send.write_all(&ping) => if written.is_err() { break },
        }
    }
    peer.assert_protocol_close("the client stopped reading its control stream (STOP_SENDING)")
        .await;
}

/// A client that stops the delivery stream (STOP_SENDING) is closed with a reason when the
/// server next writes to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_delivery_stream_closes_with_the_protocol_code_and_a_reason() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("lobby").await;
    let peer = Peer::connect(&server, |_| {}).await;
    let (mut control, _) = peer.welcomed(&server.token("alice")).await;
    let mut delivery = within("the delivery stream", peer.conn.accept_uni())
        .await
        .expect("delivery stream");
    delivery.stop(7u32.into()).expect("stopped");
    control.request(1, join("lobby")).await;
    assert!(matches!(control.reply(1).await, Ok(Response::Joined(_))));
    control
        .request(2, send("lobby", &b"to a stopped stream"[..]))
        .await;
    peer.assert_protocol_close("the client stopped the delivery stream (STOP_SENDING)")
        .await;
}

// ---------------- a `roomcast serve` process ----------------

const ADMIN_KEY: &str = "hostile-test-admin-key";
const SECRET: &str = "hostile-test-token-secret";

/// A real `roomcast serve` process on loopback with its own data folder, killed on drop: its
/// `/metrics` and its memory are its own.
struct Served {
    child: std::process::Child,
    quic: SocketAddr,
    admin: SocketAddr,
    ca_pem: Vec<u8>,
    http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl Served {
    /// Starts `roomcast serve` with `extra` TOML appended to a loopback configuration, and waits
    /// for it to write its `server.json`.
    async fn start(extra: &str) -> Served {
        let data = tempfile::tempdir().expect("data folder");
        let config = data.path().join("serve.toml");
        let toml = format!(
            "[server]\nquic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata = \"{}\"\n\
             [auth]\nadmin_key = \"{ADMIN_KEY}\"\ntoken_secret = \"{SECRET}\"\n{extra}",
            data.path().display()
        );
        std::fs::write(&config, toml).expect("config written");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("roomcast serve starts");
        let file = data.path().join("server.json");
        let text = poll("server.json", || {
            let text = std::fs::read_to_string(&file).ok();
            if text.is_none() {
                assert!(
                    child.try_wait().expect("wait").is_none(),
                    "roomcast serve exited"
                );
            }
            async move { text.filter(|t| !t.is_empty()) }
        })
        .await;
        let json: serde_json::Value = serde_json::from_str(&text).expect("server.json parses");
        let addr = |k: &str| json[k].as_str().expect("address").parse().expect("address");
        Served {
            quic: addr("quic"),
            admin: addr("admin"),
            ca_pem: std::fs::read(data.path().join("ca.pem")).expect("ca.pem"),
            child,
            // No pooled connections: each call is a connection of its own, counted and closed.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
            _data: data,
        }
    }

    fn token(&self, user: &str) -> String {
        roomcast::auth::TokenAuth::new(SECRET.as_bytes(), 0, false)
            .mint(user, roomcast::auth::unix_secs() + 600)
            .expect("token mints")
    }

    /// A connected library client for `user`.
    #[cfg(feature = "bench")]
    async fn client(&self, user: &str) -> roomcast::client::Client {
        let cfg =
            roomcast::client::ClientConfig::new(self.quic, self.ca_pem.clone(), self.token(user));
        within("a connect", roomcast::client::Client::connect(cfg))
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"))
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        let r = common::admin_call(&self.http, &url, None, common::Method::GET, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.text
    }

    /// Polls `/metrics` until `name{labels}` has the value `want` (a missing sample counts as 0).
    async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        poll(&format!("{name}{labels:?} = {want}"), || async {
            let text = self.metrics().await;
            (common::metric(&text, name, labels).unwrap_or(0.0) == want).then_some(())
        })
        .await
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------- metrics of the opening ----------------

/// A connection in its opening is counted as handshaking, not as connected; a hello timeout is
/// counted as such, not as a lost connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshaking_connections_are_visible_and_a_hello_timeout_is_not_lost() {
    let served = Served::start("[transport]\nhello_timeout_ms = 500\n").await;
    let silent = Peer::connect_to(served.quic, &served.ca_pem, |_| {}).await;
    served
        .wait_metric("roomcast_connections_handshaking", &[], 1.0)
        .await;
    let text = served.metrics().await;
    assert_eq!(
        common::metric(&text, "roomcast_connections", &[]).unwrap_or(0.0),
        0.0
    );

    // A welcomed connection moves from one gauge to the other.
    let talker = Peer::connect_to(served.quic, &served.ca_pem, |_| {}).await;
    served
        .wait_metric("roomcast_connections_handshaking", &[], 2.0)
        .await;
    let (_control, _) = talker.welcomed(&served.token("alice")).await;
    served.wait_metric("roomcast_connections", &[], 1.0).await;

    assert_eq!(
        silent.closed().await,
        (
            protocol_code(),
            "no hello within the hello timeout (500 ms)".to_owned()
        )
    );
    let closed = "roomcast_connections_closed_total";
    served
        .wait_metric(closed, &[("reason", "hello_timeout")], 1.0)
        .await;
    served
        .wait_metric("roomcast_connections_handshaking", &[], 0.0)
        .await;
    let text = served.metrics().await;
    assert_eq!(common::metric(&text, closed, &[("reason", "lost")]), None);
    assert_eq!(
        common::metric(&text, "roomcast_connections", &[]),
        Some(1.0)
    );
}

// ---------------- tokens ----------------

/// A token signed with the test server's secret carrying `claims` as they are.
fn signed(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::TOKEN_SECRET.as_bytes()),
    )
    .expect("signs")
}

/// A 1 MiB token is refused with `UNAUTHORIZED` in words, on the control stream and in the close,
/// like any bad token, not with a frame-size protocol close; a 60 KB one (within the frame limit)
/// the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_token_is_unauthorized_not_a_frame_size_close() {
    let server = TestServer::start(|_| {}).await;
    for len in [1usize << 20, 60_000] {
        let peer = Peer::connect(&server, |_| {}).await;
        let mut control = peer.hello(&"x".repeat(len)).await;
        let want = format!("token is {len} bytes; at most 8192 are accepted");
        match control.next().await {
            Some(ServerFrame::Refused(e)) => {
                assert_eq!(
                    (e.code, e.message.as_str()),
                    (ErrorCode::Unauthorized, &*want)
                );
            }
            other => panic!("{len}: expected Refused, got {other:?}"),
        }
        assert_eq!(
            peer.closed().await,
            (u64::from(CloseCode::Unauthorized.code()), want)
        );
    }
    // The library client gets the refusal too.
    let err = server
        .connect("y".repeat(1 << 20))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{err}");
}

/// Tokens the server refuses say why in words: not yet valid (`nbf`), another algorithm, not a
/// JWT at all, a user id of 5000 bytes (not echoed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_say_why_in_words() {
    let server = TestServer::start(|c| c.auth.leeway_secs = 30).await;
    let now = roomcast::auth::unix_secs();
    let cases = [
        (
            signed(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 3600})),
            "token is not valid yet (its nbf is in the future)".to_owned(),
        ),
        (
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9.".to_owned(),
            "token header is not a JSON JWT header naming HS256 as its algorithm".to_owned(),
        ),
        (
            "not a token".to_owned(),
            "token is not a JWT: expected three base64url parts separated by dots".to_owned(),
        ),
        (
            signed(serde_json::json!({"sub": "u".repeat(5000), "exp": now + 600})),
            "token sub (user id) must be 1-64 characters from [A-Za-z0-9_.:@-], got 5000 bytes"
                .to_owned(),
        ),
    ];
    for (token, want) in cases {
        match server.connect(token).await {
            Err(roomcast::client::ClientError::Refused(e)) => {
                assert_eq!((e.code, e.message), (ErrorCode::Unauthorized, want));
            }
            Err(other) => panic!("expected a refusal, got {other}"),
            Ok(_) => panic!("connected with a bad token"),
        }
    }
    // A token whose nbf has come is accepted.
    let ready = signed(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now - 5}));
    let alice = server.connect(ready).await.expect("connects");
    alice.ping().await.expect("ping");
}

// ---------------- bounded handshakes ----------------

/// The resident set size of process `pid`, KiB.
#[cfg(feature = "bench")]
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// 10,000 real ClientHellos from 100 source ports, never answered, against a real `roomcast
/// serve`: its RSS stays within the bound the README states, and a real client connects and
/// joins during the flood. The flood generator is the harness's (feature `bench`).
#[cfg(feature = "bench")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_flood_keeps_memory_bounded_and_real_clients_connect() {
    const HELLOS: usize = 10_000;
    /// The README's bound on what a flood adds to the relay's resident memory.
    const BOUND_MIB: u64 = 64;
    let served = Served::start("").await;
    let pid = served.child.id();
    let url = format!("http://{}/v1/rooms", served.admin);
    let body = serde_json::to_vec(&serde_json::json!({"id": "lobby"})).expect("JSON");
    let r = common::admin_call(
        &served.http,
        &url,
        Some(ADMIN_KEY),
        common::Method::POST,
        Some(body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // One real client first, so the idle figure includes what any first connection allocates.
    let warm = served.client("warm").await;
    warm.join("lobby", -1).await.expect("joins");
    warm.close().await;
    let idle = rss_kib(pid);

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spec = roomcast::bench::flood::FloodSpec {
        target: served.quic,
        count: HELLOS,
        rate: 4000.0,
        sources: 100,
        max_time: std::time::Duration::from_secs(30),
    };
    let flood = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            roomcast::bench::flood::client_hello_flood(&spec, &stop)
        })
    };
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(idle));
    let sampler = {
        let peak = peak.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            // The RSS is sampled every 20 ms: the peak is what the test bounds.
            let mut every = tokio::time::interval(std::time::Duration::from_millis(20));
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                every.tick().await;
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    // A real client in the middle of the flood.
    poll("the flood to start", || async {
        let text = served.metrics().await;
        let retried = common::metric(&text, "roomcast_handshakes_retried_total", &[]);
        let accepted = common::metric(&text, "roomcast_connections_accepted_total", &[]);
        (retried.unwrap_or(0.0) + accepted.unwrap_or(0.0) > 1000.0).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let alice = served.client("alice").await;
    alice
        .join("lobby", -1)
        .await
        .expect("alice joins during the flood");
    let connect_join = started.elapsed();
    // The flood ends by itself within its max_time.
    let tally = tokio::time::timeout(std::time::Duration::from_secs(40), flood)
        .await
        .expect("the flood ends")
        .expect("flood task")
        .expect("flood runs");
    // Then until every handshake the flood started has ended.
    served
        .wait_metric("roomcast_connections_handshaking", &[], 0.0)
        .await;
    let after = rss_kib(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.await.expect("sampler");
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let text = served.metrics().await;
    eprintln!(
        "flood: {} hellos in {:.2} s ({} send errors); RSS idle {idle} KiB, peak {peak} KiB \
         (+{} KiB), after {after} KiB; connect+join during the flood {connect_join:?}; \
         accepted {:?}, retried {:?}, refused {:?}",
        tally.sent,
        tally.secs,
        tally.send_errors,
        peak - idle,
        common::metric(&text, "roomcast_connections_accepted_total", &[]),
        common::metric(&text, "roomcast_handshakes_retried_total", &[]),
        common::metric(&text, "roomcast_handshakes_refused_total", &[]),
    );
    assert!(
        tally.sent >= HELLOS as u64 * 9 / 10,
        "the flood sent {} hellos",
        tally.sent
    );
    assert!(
        peak - idle <= BOUND_MIB * 1024,
        "a flood raised RSS by {} KiB (idle {idle} KiB, peak {peak} KiB)",
        peak - idle
    );
    alice.ping().await.expect("alice is still served");
}

// ---------------- the admin listener ----------------

/// Reads `stream` until the server closes it (or resets it); what it sent before.
async fn read_until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// `GET /healthz` on a connection of its own, answered 200.
async fn healthz(served: &Served) -> std::time::Duration {
    let url = format!("http://{}/healthz", served.admin);
    let started = std::time::Instant::now();
    let r = common::admin_call(&served.http, &url, None, common::Method::GET, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    started.elapsed()
}

/// 2000 idle connections and 200 slowloris ones (a request head trickled a byte every 100 ms)
/// do not keep `/healthz` from answering, and every one of them is closed by the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_admin_connections_time_out_and_healthz_answers() {
    use tokio::io::AsyncWriteExt;
    // This process holds 2200 sockets too.
    roomcast::server::raise_open_file_limit().expect("the open-file limit");
    let served = Served::start("[admin]\nheader_timeout_ms = 5000\n").await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let s = tokio::net::TcpStream::connect(served.admin).await;
        idle.push(s.expect("idle connection"));
    }
    let (mut slow_reads, mut slow_writes) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let s = tokio::net::TcpStream::connect(served.admin).await;
        let (r, mut w) = s.expect("slow connection").into_split();
        w.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
            .await
            .expect("head start");
        slow_reads.push(r);
        slow_writes.push(w);
    }
    // One byte every 100 ms on each, for at most 20 s (the server closes them long before).
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let mut open = 0;
            for w in &mut slow_writes {
                if w.write_all(b"a").await.is_ok() {
                    open += 1;
                }
            }
            if open == 0 {
                break;
            }
        }
    });
    let took = healthz(&served).await;
    eprintln!("/healthz answered in {took:?} beside 2000 idle and 200 slowloris connections");

    within("the idle connections to be closed", async {
        for s in &mut idle {
            assert!(read_until_closed(s).await.is_empty());
        }
    })
    .await;
    within("the slowloris connections to be closed", async {
        for r in &mut slow_reads {
            read_until_closed(r).await;
        }
    })
    .await;
    trickle.abort();
    // The relay holds none of them any more (this scrape's own connection aside).
    served
        .wait_metric("roomcast_admin_connections", &[], 1.0)
        .await;
    healthz(&served).await;
}

/// Past `admin.max_connections` a new connection is answered 429 with the JSON error body and
/// closed at once; once the idle ones time out, the listener serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_past_the_cap_are_refused_at_once() {
    let served = Served::start("[admin]\nmax_connections = 50\nheader_timeout_ms = 3000\n").await;
    let mut idle = Vec::new();
    for _ in 0..50 {
        let s = tokio::net::TcpStream::connect(served.admin).await;
        idle.push(s.expect("idle connection"));
    }
    // Accepted in order, so the 51st finds the 50 permits taken.
    let mut extra = tokio::net::TcpStream::connect(served.admin)
        .await
        .expect("connects");
    let answer = within("the refusal", read_until_closed(&mut extra)).await;
    let answer = String::from_utf8(answer).expect("text");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 429 "), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(json["error"], "RATE_LIMITED");
    assert_eq!(
        json["message"],
        "the admin listener has its maximum of 50 connections open (admin.max_connections); retry later"
    );
    within("the idle connections to be closed", async {
        for s in &mut idle {
            read_until_closed(s).await;
        }
    })
    .await;
    healthz(&served).await;
    let text = served.metrics().await;
    assert_eq!(
        common::metric(&text, "roomcast_admin_connections_refused_total", &[]),
        Some(1.0)
    );
}

/// A request whose body does not arrive within `admin.body_timeout_ms` is answered 408 with the
/// JSON error body, and takes no effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_does_not_arrive_in_time_is_refused() {
    use tokio::io::AsyncWriteExt;
    let served = Served::start("[admin]\nbody_timeout_ms = 500\n").await;
    let mut s = tokio::net::TcpStream::connect(served.admin)
        .await
        .expect("connects");
    let head = format!(
        "POST /v1/rooms HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"id\":\"slow\""
    );
    s.write_all(head.as_bytes()).await.expect("written");
    let answer = within("the 408", read_until_closed(&mut s)).await;
    let answer = String::from_utf8(answer).expect("text");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}");
    let json: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(json["error"], "BAD_REQUEST");
    assert_eq!(
        json["message"],
        "the request body did not arrive within 500 ms (admin.body_timeout_ms)"
    );
    let url = format!("http://{}/v1/rooms/slow", served.admin);
    let r = common::admin_call(
        &served.http,
        &url,
        Some(ADMIN_KEY),
        common::Method::GET,
        None,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
}
