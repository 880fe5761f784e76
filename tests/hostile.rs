//! Hostile and independent peers: clients written from the protocol document alone (plain quinn
//! with their own TLS and transport settings, frames written by hand), and the edge cases of the
//! control and delivery streams they meet.

mod common;

use common::{TestServer, within};
use roomcast::protocol::{
    ClientFrame, CloseCode, ErrorCode, Event, FrameReader, PROTOCOL_VERSION, Request, Response,
    ServerFrame, encode_frame,
};
use std::future::Future;
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
    control
        .request(
            1,
            Request::Join {
                room: "lobby".into(),
                history: -1,
            },
        )
        .await;
    expected.push((1, "joined"));
    for id in 2..=31 {
        let body = bytes::Bytes::from(vec![b'x'; 1000]);
        let request = Request::Send {
            room: "lobby".into(),
            msg_type: "chat".into(),
            body,
            low: false,
        };
        control.request(id, request).await;
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
        "unknown request variant 42: this server knows variants 0 to 9 of protocol 1"
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
    assert_eq!(
        peer.closed().await,
        (
            protocol_code(),
            "the client reset its control stream (RESET_STREAM)".to_owned()
        )
    );
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
    assert_eq!(
        peer.closed().await,
        (
            protocol_code(),
            "the client stopped reading its control stream (STOP_SENDING)".to_owned()
        )
    );
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
    control
        .request(
            1,
            Request::Join {
                room: "lobby".into(),
                history: -1,
            },
        )
        .await;
    assert!(matches!(control.reply(1).await, Ok(Response::Joined(_))));
    let request = Request::Send {
        room: "lobby".into(),
        msg_type: "chat".into(),
        body: bytes::Bytes::from_static(b"to a stopped stream"),
        low: false,
    };
    control.request(2, request).await;
    assert_eq!(
        peer.closed().await,
        (
            protocol_code(),
            "the client stopped the delivery stream (STOP_SENDING)".to_owned()
        )
    );
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
            http: reqwest::Client::new(),
            _data: data,
        }
    }

    fn token(&self, user: &str) -> String {
        roomcast::auth::TokenAuth::new(SECRET.as_bytes(), 0, false)
            .mint(user, roomcast::auth::unix_secs() + 600)
            .expect("token mints")
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

/// Polls `check` every 20 ms until it yields a value, for at most [`common::SAFETY`]: waiting
/// for a condition another process makes true, which sends no event this test could await.
async fn poll<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    within(what, async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
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
