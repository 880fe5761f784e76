//! Real `roomcast serve` processes (on the embedded store, or on one NATS): each with its own
//! data folder, loopback ports it picks itself (read back from its `server.json`), ready once
//! its log says the admin API is listening, killed when dropped.

use roomcast::client::{Client, ClientConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The admin key of every relay these tests start.
pub const ADMIN_KEY: &str = "cluster-test-admin-key";
/// The token secret every relay shares, so one token is good on each.
pub const SECRET: &str = "cluster-test-token-secret";

/// One running `roomcast serve`.
pub struct Serve {
    /// The process.
    pub child: Child,
    /// Its data folder.
    pub data: PathBuf,
    /// The bound QUIC address.
    pub quic: SocketAddr,
    /// The bound admin address.
    pub admin: SocketAddr,
    http: reqwest::Client,
}

impl Serve {
    /// Starts relay `node` on the NATS at `nats_url`, with its data under `dir/node` and
    /// `extra` appended to its configuration.
    pub fn start(dir: &Path, node: &str, nats_url: &str, extra: &str) -> Serve {
        let cluster = format!("[cluster]\nnats = [\"{nats_url}\"]\nnode_id = \"{node}\"\n{extra}");
        Self::start_in(&dir.join(node), &cluster)
    }

    /// [`Serve::start`] on the NATS servers at `urls` (several servers of one NATS cluster).
    pub fn start_on(dir: &Path, node: &str, urls: &[String], extra: &str) -> Serve {
        let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        let cluster = format!(
            "[cluster]\nnats = [{}]\nnode_id = \"{node}\"\n{extra}",
            quoted.join(", ")
        );
        Self::start_in(&dir.join(node), &cluster)
    }

    /// Starts a relay on the data folder `data` (made if missing), with `extra` appended to its
    /// configuration (nothing: a single node on the embedded store).
    pub fn start_in(data: &Path, extra: &str) -> Serve {
        Self::start_at(data, SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// [`Serve::start_in`] with QUIC on `quic` (port 0: any free one), e.g. the port of a
    /// relay this one restarts.
    pub fn start_at(data: &Path, quic: SocketAddr, extra: &str) -> Serve {
        let data = data.to_owned();
        let name = data.display().to_string();
        std::fs::create_dir_all(&data).expect("data folder");
        let config = data.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
quic = "{quic}"
admin = "127.0.0.1:0"
web = "off"
data = "{data}"
[auth]
admin_key = "{ADMIN_KEY}"
token_secret = "{SECRET}"
[limits]
send_rate_per_sec = 100000
send_burst = 100000
room_budget_total = 1000000
admin_rate_per_sec = 100000
admin_burst = 100000
[store]
durability = "sync"
history_max = 100000
{extra}
"#,
                data = data.display()
            ),
        )
        .expect("config written");
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roomcast starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = data.join("relay.log");
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if line.contains("admin API on") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(data.join("relay.log")).unwrap_or_default();
                panic!("the relay on {name} did not say it was listening; its log:\n{log}")
            });
        let file: Value = serde_json::from_str(
            &std::fs::read_to_string(data.join("server.json")).expect("server.json written"),
        )
        .expect("server.json parses");
        let addr = |k: &str| file[k].as_str().expect(k).parse().expect("an address");
        Serve {
            child,
            quic: addr("quic"),
            admin: addr("admin"),
            data,
            http: reqwest::Client::new(),
        }
    }

    /// One admin call: the status and the JSON body (null when it is not JSON).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin call");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Every stored message of `room`, oldest first, paged through the admin API.
    pub async fn history(&self, room: &str) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut before: Option<u64> = None;
        for _ in 0..1000 {
            let q = match before {
                Some(b) => format!("/v1/rooms/{room}/messages?limit=200&before_seq={b}"),
                None => format!("/v1/rooms/{room}/messages?limit=200"),
            };
            let (status, page) = self.admin(reqwest::Method::GET, &q, None).await;
            assert_eq!(status, 200, "{page}");
            let mut chunk = page["messages"].as_array().expect("messages").clone();
            chunk.extend(out);
            out = chunk;
            match page["next_before_seq"].as_u64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        out
    }

    /// The relay's `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// How a client of `user` reaches this relay (a token good for 10 minutes, its CA).
    pub fn client_config(&self, user: &str) -> ClientConfig {
        let token = roomcast::auth::TokenAuth::new(SECRET.as_bytes(), 0, false)
            .mint(user, roomcast::auth::unix_secs() + 600)
            .expect("token");
        let ca = std::fs::read(self.data.join("ca.pem")).expect("ca.pem");
        ClientConfig::new(self.quic, ca, token)
    }

    /// A client of `user` connected to this relay.
    pub async fn client(&self, user: &str) -> Client {
        Client::connect(self.client_config(user))
            .await
            .expect("client connects")
    }

    /// Creates `room` through this relay's admin API and waits (polling, at most 30 s) until
    /// each of `others` knows it through its watch of the shared state.
    pub async fn create_room_known_by(&self, room: &str, others: &[&Serve]) {
        let (status, reply) = self
            .admin(
                reqwest::Method::POST,
                "/v1/rooms",
                Some(serde_json::json!({"id": room})),
            )
            .await;
        assert_eq!(status, 201, "{reply}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for relay in others {
            let path = format!("/v1/rooms/{room}");
            while relay.admin(reqwest::Method::GET, &path, None).await.0 != 200 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "room {room} not known on {} within 30 s",
                    relay.admin
                );
                tick.tick().await;
            }
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
