//! A relay on a store file the test chose, for the store fault tests: the real server over real
//! QUIC and HTTP on loopback, its store a [`StoreFile`] (a quota disk or a plain file on a
//! mounted filesystem), restartable on the same data folder.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use crate::common::{ADMIN_KEY, ApiReply, TOKEN_SECRET, admin_call, next_event, poll_for, within};
use reqwest::Method;
use roomcast::auth::{TokenAuth, unix_secs};
use roomcast::client::{Client, ClientConfig, ClientEvent};
use roomcast::config::Config;
use roomcast::node::Server;
use roomcast::server::{Relay, Secrets};
use roomcast::store::{RedbStore, Store, StoreFile};
use roomcast::tls::ServerIdentity;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A running relay.
pub struct Node {
    /// Its core, to drive its timer pass (`relay.tick(now)`).
    pub relay: Arc<Relay>,
    quic: SocketAddr,
    admin: SocketAddr,
    ca_pem: Vec<u8>,
    http: reqwest::Client,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Node {
    /// A relay with its data folder `data` and its store in `file`; limits no test reaches.
    pub async fn start(data: &Path, identity: &ServerIdentity, file: Arc<dyn StoreFile>) -> Node {
        let config = Self::config(data);
        std::fs::create_dir_all(data).expect("data folder");
        let store = RedbStore::open_with(file, config.store_config()).expect("the store opens");
        Self::start_on(data, identity, Arc::new(store)).await
    }

    /// The configuration of these relays: data in `data`, loopback ports the kernel picks,
    /// limits no test reaches.
    pub fn config(data: &Path) -> Config {
        let mut config = Config::default();
        config.server.data = data.to_owned();
        config.server.quic = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.admin = SocketAddr::from(([127, 0, 0, 1], 0));
        config.transport.udp_recv_buffer = 1 << 20;
        config.transport.udp_send_buffer = 1 << 20;
        let l = &mut config.limits;
        l.send_rate_per_sec = 1_000_000;
        l.send_burst = 1_000_000;
        l.room_budget_total = 1_000_000;
        l.room_budget_reserved = 0;
        l.admin_rate_per_sec = 1_000_000;
        l.admin_burst = 1_000_000;
        config
    }

    /// A relay with its data folder `data` on `store` (opened with [`Node::config`]'s store
    /// settings).
    pub async fn start_on(data: &Path, identity: &ServerIdentity, store: Arc<dyn Store>) -> Node {
        roomcast::metrics::prometheus().expect("the Prometheus recorder installs");
        let config = Self::config(data);
        std::fs::create_dir_all(data).expect("data folder");
        let secrets = Secrets {
            admin_key: ADMIN_KEY.into(),
            token_secret: TOKEN_SECRET.into(),
        };
        let server = Server::bind_with_store(config, secrets, identity, store)
            .await
            .expect("server binds");
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let relay = server.relay().clone();
        let (quic, admin) = (server.quic_addr(), server.admin_addr());
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Node {
            relay,
            quic,
            admin,
            ca_pem: identity.ca_pem.clone().expect("a CA").into_bytes(),
            http: reqwest::Client::new(),
            stop,
            task,
        }
    }

    /// Stops the relay and waits until it has (its store closed, its file free).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        within("the server to stop", self.task)
            .await
            .expect("run does not panic");
        drop(self.relay);
    }

    /// A connected client for `user`.
    pub async fn client(&self, user: &str) -> Client {
        let token = TokenAuth::new(TOKEN_SECRET.as_bytes(), 0, false)
            .mint(user, unix_secs() + 600)
            .expect("token");
        within(
            "a connect",
            Client::connect(ClientConfig::new(self.quic, self.ca_pem.clone(), token)),
        )
        .await
        .expect("connects")
    }

    /// An admin call (with the key; `/healthz` and `/metrics` need none, and ignore it).
    pub async fn api(&self, method: Method, path: &str, body: Option<Value>) -> ApiReply {
        let url = format!("http://{}{path}", self.admin);
        let body = body.map(|b| serde_json::to_vec(&b).expect("JSON"));
        admin_call(&self.http, &url, Some(ADMIN_KEY), method, body).await
    }

    /// An admin call that must answer `status`; returns its JSON.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let r = self.api(method, path, body).await;
        assert_eq!(r.status, status, "{path}: {}", r.text);
        r.json
    }

    /// Creates room `id` and joins `users` to it (no history).
    pub async fn room_with(&self, id: &str, users: &[&str]) -> Vec<Client> {
        self.ok(Method::POST, "/v1/rooms", Some(json!({ "id": id })), 201)
            .await;
        let mut clients = Vec::new();
        for u in users {
            let c = self.client(u).await;
            c.join(id, -1).await.expect("joins");
            clients.push(c);
        }
        clients
    }

    /// Polls `/healthz` until it answers `status` (the store recovers on its own thread);
    /// returns its JSON.
    pub async fn health_becomes(&self, status: u16) -> Value {
        let what = format!("/healthz to say {status}");
        poll_for(&what, Duration::from_secs(30), || async {
            let r = self.api(Method::GET, "/healthz", None).await;
            (r.status == status).then_some(r.json)
        })
        .await
    }

    /// An admin message history does not keep: it needs no disk, so it goes out during an
    /// outage, on the same ordered stream as everything made visible before it (a low-priority
    /// one could overtake those as a datagram).
    pub async fn marker(&self, room: &str, text: &str) {
        self.ok(
            Method::POST,
            &format!("/v1/rooms/{room}/messages"),
            Some(json!({"type": "marker", "body": text, "store": false})),
            200,
        )
        .await;
    }
}

/// The next event of `c`, which must be the message `text`; returns its seq.
pub async fn next_text(c: &Client, text: &str) -> u64 {
    match next_event(c).await {
        ClientEvent::Message { message, .. } => {
            assert_eq!(
                String::from_utf8_lossy(&message.body),
                text,
                "{}: {message:?}",
                c.user()
            );
            message.seq
        }
        other => panic!("{}: expected {text:?}, got {other:?}", c.user()),
    }
}
