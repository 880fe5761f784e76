//! The public web listener and the WebSocket transport through a real server on loopback: the
//! SDK and connection info it serves, the admin API it never serves, bad input (garbage frames,
//! oversized and text messages, a foreign Origin, no hello, a bad token, a silent peer, 1000 idle
//! sockets) each closed with a clear code while the relay keeps serving, HTTPS with the
//! development CA, and a WebSocket member that stops reading: shed with exact gaps, the room
//! unaffected.

mod common;

use common::*;
use roomcast::client::ClientEvent;
use roomcast::client::ws::{WsClient, WsClientConfig};
use roomcast::protocol::{Class, CloseCode, ErrorCode};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ws_url(server: &TestServer) -> String {
    format!("ws://{}/ws", server.web_addr)
}

async fn ws_client(server: &TestServer, user: &str) -> WsClient {
    let cfg = WsClientConfig::new(ws_url(server), server.ca_pem.clone(), server.token(user));
    within("a WebSocket connect", WsClient::connect(cfg))
        .await
        .unwrap_or_else(|e| panic!("{user} connects over WebSocket: {e}"))
}

/// A plain HTTP/1.1 GET on the web listener: (status, body).
async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("writes");
    let mut out = Vec::new();
    within("an HTTP response", s.read_to_end(&mut out))
        .await
        .expect("reads");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// A WebSocket opened by hand over TCP (for input no WebSocket library would send).
async fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("writes");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        within("the upgrade", s.read_exact(&mut b))
            .await
            .expect("reads");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A client frame: FIN, `opcode`, masked `payload`.
fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads server frames until the close frame; returns its code and reason.
async fn read_close(s: &mut TcpStream) -> (u16, String) {
    within("a close frame", async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.expect("a frame header");
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    s.read_exact(&mut b).await.expect("len");
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    s.read_exact(&mut b).await.expect("len");
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            s.read_exact(&mut payload).await.expect("payload");
            if h[0] & 0x0f == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    })
    .await
}

fn hello(token: &str) -> Vec<u8> {
    postcard::to_allocvec(&roomcast::protocol::ClientFrame::Hello {
        version: roomcast::protocol::PROTOCOL_VERSION,
        token: token.into(),
    })
    .expect("encodes")
}

/// The relay still serves: a WebSocket client joins and round-trips.
async fn still_serving(server: &TestServer, room: &str) {
    let c = ws_client(server, "checker").await;
    c.join(room, -1).await.expect("joins");
    let (seq, _) = c
        .send(room, "chat", body("still here"), false)
        .await
        .expect("sends");
    assert!(seq > 0);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_connection_info_are_served_and_the_admin_api_is_not() {
    let server = TestServer::start(|_| {}).await;
    let (status, js) = get(server.web_addr, "/roomcast.js", "").await;
    assert_eq!(status, 200);
    assert!(js.contains("export async function connect"), "{js:.200}");
    let (status, dts) = get(server.web_addr, "/roomcast.d.ts", "").await;
    assert_eq!(status, 200);
    assert!(dts.contains("export function connect"));
    let (status, page) = get(server.web_addr, "/", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("/demo.js"));
    let (status, info) = get(server.web_addr, "/roomcast.json", "").await;
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).expect("json");
    assert_eq!(info["webtransport"]["port"], server.quic_addr.port());
    assert_eq!(info["webtransport"]["path"], "/roomcast");
    let hash = info["webtransport"]["cert_sha256"][0]
        .as_str()
        .expect("a hash");
    assert_eq!(hash.len(), 64, "SHA-256 in hex");
    // Nothing of the admin API, with or without the key.
    let key = format!("Authorization: Bearer {ADMIN_KEY}\r\n");
    for path in [
        "/v1/rooms",
        "/v1/rooms/x",
        "/metrics",
        "/healthz",
        "/openapi.json",
    ] {
        assert_eq!(get(server.web_addr, path, &key).await.0, 404, "{path}");
    }
    let mut s = TcpStream::connect(server.web_addr).await.expect("connects");
    let post = format!(
        "POST /v1/rooms HTTP/1.1\r\nHost: x\r\n{key}Content-Length: 10\r\nConnection: close\r\n\r\n{{\"id\":\"a\"}}"
    );
    s.write_all(post.as_bytes()).await.expect("writes");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("reads");
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    let r = server.api(Method::GET, "/v1/rooms/a", None).await;
    assert_eq!(
        r.status, 404,
        "no room was created through the public listener"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_member_talks_with_a_quic_member() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("mix").await;
    let quic = server.client("q").await;
    quic.join("mix", -1).await.expect("joins");
    let ws = ws_client(&server, "w").await;
    assert_eq!(ws.user(), "w");
    ws.join("mix", -1).await.expect("joins");
    let (seq, _) = ws
        .send("mix", "chat", body("from ws"), false)
        .await
        .expect("sends");
    let m = next_message(&quic).await;
    assert_eq!(
        (m.seq, m.from.as_str(), &m.body[..]),
        (seq, "w", &b"from ws"[..])
    );
    let (seq2, _) = quic
        .send("mix", "chat", body("low from quic"), true)
        .await
        .expect("sends");
    let mut got = Vec::new();
    while got.len() < 2 {
        match within("ws events", ws.next_event()).await {
            Some(ClientEvent::Message { message, datagram }) => {
                assert!(!datagram, "a WebSocket has no datagram lane");
                got.push((message.seq, message.class));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, vec![(seq, Class::Normal), (seq2, Class::Low)]);
    // Refusals carry their code as on QUIC.
    let err = ws
        .send("nowhere", "chat", body("x"), false)
        .await
        .expect_err("not a member");
    assert_eq!(err.code(), Some(ErrorCode::RoomNotFound));
    let metrics = server.metrics().await;
    let conns = |t| metric(&metrics, "roomcast_connections", &[("transport", t)]);
    // The recorder is the process's: tests running beside this one may add their own.
    assert!(conns("websocket").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(conns("quic").is_some_and(|n| n >= 1.0), "{metrics}");
    assert!(
        metric(
            &metrics,
            "roomcast_messages_out_total",
            &[("transport", "websocket"), ("class", "low")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    ws.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_websocket_input_gets_a_clear_close_code_and_the_relay_keeps_serving() {
    let server = TestServer::start(|c| c.transport.hello_timeout_ms = 1_000).await;
    server.create_room("r").await;
    let token = server.token("raw");

    // A frame with reserved bits and an unknown opcode.
    let mut s = raw_ws(server.web_addr).await;
    s.write_all(&[0xf3, 0x80, 0, 0, 0, 0])
        .await
        .expect("writes");
    assert_eq!(read_close(&mut s).await.0, 1002, "a broken frame");

    // A text message.
    let mut s = raw_ws(server.web_addr).await;
    s.write_all(&masked(0x1, b"{\"hello\":1}"))
        .await
        .expect("writes");
    let (code, reason) = read_close(&mut s).await;
    assert_eq!(code, 1003, "{reason}");
    assert!(reason.contains("binary"), "{reason}");

    // A message over limits.max_frame, refused on its header: the body is never sent (nor
    // buffered by the relay).
    let mut s = raw_ws(server.web_addr).await;
    let max = u64::from(server.config.limits.max_frame);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(max + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&header).await.expect("writes");
    assert_eq!(read_close(&mut s).await.0, 1009, "an oversized message");

    // Bytes that are no client frame.
    let mut s = raw_ws(server.web_addr).await;
    s.write_all(&masked(0x2, &[0xff, 0xff, 0xff]))
        .await
        .expect("writes");
    let (code, reason) = read_close(&mut s).await;
    assert_eq!(code, 4000 + CloseCode::Protocol.code() as u16, "{reason}");

    // A request before the hello.
    let mut s = raw_ws(server.web_addr).await;
    let ping = postcard::to_allocvec(&roomcast::protocol::ClientFrame::Request {
        id: 1,
        request: roomcast::protocol::Request::Ping,
    })
    .expect("encodes");
    s.write_all(&masked(0x2, &ping)).await.expect("writes");
    let (code, reason) = read_close(&mut s).await;
    assert_eq!(
        (code, reason.as_str()),
        (4003, "the first frame must be a hello")
    );

    // No hello within the hello timeout.
    let mut s = raw_ws(server.web_addr).await;
    let (code, reason) = read_close(&mut s).await;
    assert_eq!(code, 4003);
    assert!(reason.contains("hello timeout"), "{reason}");

    // A forged token: Refused with UNAUTHORIZED, then 4002.
    let cfg = WsClientConfig::new(
        ws_url(&server),
        server.ca_pem.clone(),
        server.forged_token("x"),
    );
    match WsClient::connect(cfg).await {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unauthorized), "{e}"),
        Ok(_) => panic!("a forged token is accepted"),
    }
    let mut s = raw_ws(server.web_addr).await;
    s.write_all(&masked(0x2, &hello("forged")))
        .await
        .expect("writes");
    assert_eq!(read_close(&mut s).await.0, 4002);

    // A foreign Origin is refused at the upgrade; the relay's own and loopback ones are not.
    let mut cfg = WsClientConfig::new(ws_url(&server), server.ca_pem.clone(), token.clone());
    cfg.origin = Some("https://evil.example".into());
    let err = WsClient::connect(cfg.clone())
        .await
        .err()
        .expect("a foreign origin is refused");
    assert!(err.to_string().contains("403"), "{err}");
    cfg.origin = Some(format!("http://localhost:{}", server.web_addr.port()));
    WsClient::connect(cfg).await.expect("a loopback origin");

    still_serving(&server, "r").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_answers_no_ping_is_closed() {
    let server = TestServer::start(|c| {
        c.web.ping_ms = 100;
        c.web.idle_timeout_ms = 400;
    })
    .await;
    let mut s = raw_ws(server.web_addr).await;
    s.write_all(&masked(0x2, &hello(&server.token("mute"))))
        .await
        .expect("writes");
    // It reads (the welcome, the pings) but never answers.
    let (code, reason) = read_close(&mut s).await;
    assert_eq!(code, 4003);
    assert!(reason.contains("idle timeout"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_are_closed_after_the_hello_timeout() {
    let server = TestServer::start(|c| c.transport.hello_timeout_ms = 500).await;
    server.create_room("r").await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(server.web_addr).await.expect("connects"));
    }
    // Meanwhile the relay serves.
    still_serving(&server, "r").await;
    for mut s in idle {
        let mut b = [0u8; 1];
        let n = within("an idle socket to be closed", s.read(&mut b))
            .await
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a byte");
    }
    still_serving(&server, "r").await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_served_with_the_development_ca_and_plain_http_can_be_refused() {
    let server = TestServer::start(|c| c.web.plain_http = roomcast::config::PlainHttp::Never).await;
    server.create_room("r").await;
    let (status, body) = get(server.web_addr, "/roomcast.js", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("HTTPS"), "{body}");
    let cfg = WsClientConfig::new(
        format!("wss://127.0.0.1:{}/ws", server.web_addr.port()),
        server.ca_pem.clone(),
        server.token("tls"),
    );
    let c = within("a wss connect", WsClient::connect(cfg))
        .await
        .expect("connects over TLS");
    c.join("r", -1).await.expect("joins");
    c.send("r", "chat", body_of("over tls"), false)
        .await
        .expect("sends");
    c.close().await;
    server.shutdown().await;
}

fn body_of(s: &str) -> bytes::Bytes {
    body(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_member_that_stops_reading_is_shed_with_exact_gaps_and_slows_nobody() {
    const N: u64 = 900;
    let server = TestServer::start(|c| {
        c.limits.ring_capacity = 1024;
        c.transport.slow_close_ms = 120_000;
        c.transport.delivery_window_us = 0;
        c.store.durability = roomcast::store::Durability::Batched;
        // A small send queue: the socket backs up after a few messages.
        c.web.send_queue_bytes = 32 * 1024;
        c.web.idle_timeout_ms = 600_000;
    })
    .await;
    server.create_room("mix").await;
    let fast = server.client("fast").await;
    fast.join("mix", -1).await.expect("joins");
    let mut cfg = WsClientConfig::new(ws_url(&server), server.ca_pem.clone(), server.token("slow"));
    // One event buffered: the client stops reading the socket until the test takes events.
    cfg.event_buffer = 1;
    let slow = within("a connect", WsClient::connect(cfg))
        .await
        .expect("connects");
    slow.join("mix", -1).await.expect("joins");
    flood(&server, &fast, "mix", N, &"x".repeat(8 * 1024)).await;

    let mut delivered = [0u64; 3];
    let mut gap_low = 0;
    let mut gap_normal = 0;
    let mut last_seq = 0;
    while delivered.iter().sum::<u64>() + gap_low + gap_normal < N {
        match within("the slow member's events", slow.next_event()).await {
            Some(ClientEvent::Message { message, .. }) => {
                assert!(message.seq > last_seq, "in order");
                last_seq = message.seq;
                let i = match message.class {
                    Class::Protected => 0,
                    Class::Normal => 1,
                    Class::Low => 2,
                };
                delivered[i] += 1;
            }
            Some(ClientEvent::Gap { room, low, normal }) => {
                assert_eq!(room, "mix");
                gap_low += low;
                gap_normal += normal;
            }
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(delivered[0], N / 3, "every protected message is delivered");
    assert_eq!(
        delivered[1] + gap_normal,
        N / 3,
        "normal: delivered or in a gap"
    );
    assert_eq!(delivered[2] + gap_low, N / 3, "low: delivered or in a gap");
    assert!(gap_low > 0, "the stalled socket was shed, not buffered");
    assert!(gap_low >= gap_normal, "low is shed before normal");
    let metrics = server.metrics().await;
    let shed = metric(&metrics, "roomcast_gap_messages_total", &[("class", "low")]).unwrap_or(0.0);
    assert_eq!(shed as u64, gap_low, "{metrics}");
    slow.close().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_websockets_with_the_shutdown_code_and_ends_every_task() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("r").await;
    let ws = ws_client(&server, "w").await;
    ws.join("r", -1).await.expect("joins");
    // A connection that never sends a byte, and one that sent half a request.
    let _silent = TcpStream::connect(server.web_addr).await.expect("connects");
    let mut half = TcpStream::connect(server.web_addr).await.expect("connects");
    half.write_all(b"GET / HTTP/1.1\r\nHo")
        .await
        .expect("writes");
    server.shutdown().await;
    loop {
        match within("the close", ws.next_event()).await {
            Some(ClientEvent::Closed { code, reason }) => {
                assert_eq!(code, Some(CloseCode::Shutdown), "{reason}");
                assert_eq!(reason, "server shutting down");
                break;
            }
            Some(_) => continue,
            None => panic!("the event stream ended without a close"),
        }
    }
}
