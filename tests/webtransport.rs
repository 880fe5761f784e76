//! WebTransport on the relay's QUIC port, through a real server and a real WebTransport client
//! (web-transport-quinn over quinn, ALPN `h3`, the development CA): roomcast/1 inside the
//! session, low-priority messages as datagrams unless the session asks otherwise, the Origin
//! and path checks, the hello timeout, and native QUIC clients on the same port unchanged.

mod common;

use common::*;
use roomcast::protocol::{
    ClientFrame, Event, FrameReader, PROTOCOL_VERSION, Request, Response, ServerFrame, decode_body,
    encode_frame,
};
use std::sync::Arc;
use web_transport_quinn::{Session, SessionError, WebTransportError, http};

async fn session(
    server: &TestServer,
    path: &str,
    origin: Option<&str>,
) -> Result<Session, web_transport_quinn::ClientError> {
    let tls = roomcast::tls::tls_client_config(&server.ca_pem, &[b"h3"]).expect("tls");
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.datagram_receive_buffer_size(Some(1 << 20));
    cfg.transport_config(Arc::new(transport));
    let endpoint =
        quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0))).expect("binds");
    let conn = within(
        "the QUIC handshake",
        endpoint
            .connect_with(cfg, server.quic_addr, "localhost")
            .expect("connects"),
    )
    .await
    .expect("handshake");
    let url = url::Url::parse(&format!(
        "https://localhost:{}{path}",
        server.quic_addr.port()
    ))
    .expect("url");
    let mut request = web_transport_quinn::proto::ConnectRequest::new(url);
    if let Some(o) = origin {
        request = request.with_header(
            http::header::ORIGIN,
            http::HeaderValue::from_str(o).expect("origin"),
        );
    }
    within("the CONNECT", Session::connect(conn, request)).await
}

/// A roomcast session inside a WebTransport session: control stream, welcome, delivery stream.
struct Wt {
    session: Session,
    send: web_transport_quinn::SendStream,
    replies: FrameReader<web_transport_quinn::RecvStream>,
    events: FrameReader<web_transport_quinn::RecvStream>,
    next_id: u32,
}

impl Wt {
    async fn open(session: Session, token: &str) -> Wt {
        let (mut send, recv) = session.open_bi().await.expect("control stream");
        let hello = encode_frame(&ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: token.into(),
        });
        send.write_all(&hello).await.expect("hello");
        let mut replies = FrameReader::new(recv, 1 << 20);
        let welcome = within("the welcome", replies.read::<ServerFrame>())
            .await
            .expect("reads");
        assert!(
            matches!(welcome, Some(ServerFrame::Welcome { .. })),
            "{welcome:?}"
        );
        let uni = within("the delivery stream", session.accept_uni())
            .await
            .expect("accepts");
        let mut events = FrameReader::new(uni, 1 << 20);
        let ready = within("Ready", events.read::<Event>())
            .await
            .expect("reads");
        assert!(matches!(ready, Some(Event::Ready { .. })), "{ready:?}");
        Wt {
            session,
            send,
            replies,
            events,
            next_id: 1,
        }
    }

    async fn request(&mut self, request: Request) -> Response {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode_frame(&ClientFrame::Request { id, request });
        self.send.write_all(&frame).await.expect("writes");
        match within("a reply", self.replies.read::<ServerFrame>()).await {
            Ok(Some(ServerFrame::Reply {
                id: got,
                result: Ok(r),
            })) if got == id => r,
            other => panic!("unexpected reply {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_session_speaks_roomcast_with_datagrams_for_low_messages() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("r").await;
    let native = server.client("native").await;
    native.join("r", -1).await.expect("native joins");

    let s = session(&server, "/roomcast", Some("https://localhost:7700"))
        .await
        .expect("a session");
    let mut wt = Wt::open(s, &server.token("web")).await;
    let joined = wt
        .request(Request::Join {
            room: "r".into(),
            history: -1,
        })
        .await;
    assert!(matches!(joined, Response::Joined(_)), "{joined:?}");
    let (normal, _) = native
        .send("r", "chat", body("normal"), false)
        .await
        .expect("sends");
    let (low, _) = native
        .send("r", "chat", body("low"), true)
        .await
        .expect("sends");
    match within("a stream event", wt.events.read::<Event>()).await {
        Ok(Some(Event::Message(m))) => assert_eq!((m.seq, &m.body[..]), (normal, &b"normal"[..])),
        other => panic!("{other:?}"),
    }
    let d = within("a datagram", wt.session.read_datagram())
        .await
        .expect("a datagram");
    match decode_body::<Event>(&d) {
        Ok(Event::Message(m)) => assert_eq!((m.seq, &m.body[..]), (low, &b"low"[..])),
        other => panic!("{other:?}"),
    }
    // The WebTransport member sends; the native one receives.
    let sent = wt
        .request(Request::Send {
            room: "r".into(),
            msg_type: "chat".into(),
            body: body("from wt"),
            low: false,
        })
        .await;
    let Response::Sent { seq, .. } = sent else {
        panic!("{sent:?}")
    };
    loop {
        let m = next_message(&native).await;
        if m.seq == seq {
            assert_eq!((m.from.as_str(), &m.body[..]), ("web", &b"from wt"[..]));
            break;
        }
    }
    let metrics = server.metrics().await;
    // The recorder is the process's: tests running beside this one may add their own.
    assert!(
        metric(
            &metrics,
            "roomcast_connections",
            &[("transport", "webtransport")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "roomcast_messages_out_total",
            &[("transport", "webtransport"), ("lane", "datagram")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_declines_datagrams_gets_low_messages_on_its_stream() {
    let server = TestServer::start(|_| {}).await;
    server.create_room("r").await;
    let native = server.client("native").await;
    native.join("r", -1).await.expect("joins");
    let s = session(&server, "/roomcast?datagrams=0", None)
        .await
        .expect("a session");
    let mut wt = Wt::open(s, &server.token("web")).await;
    wt.request(Request::Join {
        room: "r".into(),
        history: -1,
    })
    .await;
    let (low, _) = native
        .send("r", "chat", body("low"), true)
        .await
        .expect("sends");
    match within("a stream event", wt.events.read::<Event>()).await {
        Ok(Some(Event::Message(m))) => assert_eq!(m.seq, low),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_wrong_paths_and_silent_sessions_are_refused() {
    let server = TestServer::start(|c| c.transport.hello_timeout_ms = 500).await;
    server.create_room("r").await;
    let refused = |r: Result<Session, web_transport_quinn::ClientError>| match r {
        Ok(_) => panic!("the session was accepted"),
        Err(e) => e.to_string(),
    };
    let e = refused(session(&server, "/roomcast", Some("https://evil.example")).await);
    assert!(e.contains("403"), "{e}");
    let e = refused(session(&server, "/elsewhere", None).await);
    assert!(e.contains("404"), "{e}");
    // A session that never opens its control stream is closed with Protocol (3).
    let s = session(&server, "/roomcast", None)
        .await
        .expect("a session");
    match within("the close", s.closed()).await {
        SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
            assert_eq!(code, 3, "{reason}");
            assert!(reason.contains("hello timeout"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A bad token: Refused, then closed with Unauthorized (2).
    let s = session(&server, "/roomcast", None)
        .await
        .expect("a session");
    let (mut send, recv) = s.open_bi().await.expect("control stream");
    let hello = encode_frame(&ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        token: server.forged_token("x"),
    });
    send.write_all(&hello).await.expect("hello");
    let mut replies = FrameReader::new(recv, 1 << 20);
    match within("the refusal", replies.read::<ServerFrame>()).await {
        Ok(Some(ServerFrame::Refused(e))) => {
            assert_eq!(e.code, roomcast::protocol::ErrorCode::Unauthorized)
        }
        other => panic!("{other:?}"),
    }
    // Native clients on the same port are served as before.
    let c = server.client("native").await;
    c.join("r", -1).await.expect("joins");
    server.shutdown().await;
}
