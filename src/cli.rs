//! The client commands of the binary: `token`, `sub` and `pub`, and what they share with `chat`
//! (finding the relay, connecting, explaining a failure).

use crate::{Conn, PubArgs, SubArgs, TokenArgs};
use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use roomcast::client::{ClientConfig, ClientError, ClientEvent, FailoverClient, FailoverConfig};
use roomcast::config::Config;
use roomcast::protocol::{ErrorCode, Message, utc_text};
use roomcast::server::{DataFolder, SERVER_FILE, ServerFile};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn token_secret(data: &DataFolder) -> Result<String> {
    if let Ok(s) = std::env::var("ROOMCAST_TOKEN_SECRET")
        && !s.is_empty()
    {
        return Ok(s);
    }
    data.token_secret().with_context(|| {
        format!(
            "no token secret in {}: start `roomcast serve` with that data folder first, pass \
             --data DIR of a relay's data folder, or set ROOMCAST_TOKEN_SECRET (or pass --token T)",
            data.path.display()
        )
    })
}

fn mint(data: &DataFolder, user: &str, ttl: u64) -> Result<(String, u64)> {
    let auth = roomcast::auth::TokenAuth::new(token_secret(data)?.as_bytes(), 0, false);
    let expires = roomcast::auth::unix_secs() + ttl;
    Ok((auth.mint(user, expires)?, expires))
}

pub(crate) fn token(a: TokenArgs) -> Result<()> {
    let (token, expires) = mint(&DataFolder::new(&a.data), &a.user, a.ttl)?;
    println!("{token}");
    eprintln!(
        "roomcast: token for {:?}, expires {} ({expires} s since the epoch)",
        a.user,
        utc_text(expires.saturating_mul(1000))
    );
    Ok(())
}

/// The relay a client command talks to, and where its address came from (for error hints).
pub(crate) struct Target {
    data: DataFolder,
    /// The relays to try, in order (`--server a,b,c`).
    servers: Vec<SocketAddr>,
    /// The running relay's `server.json`, when there is one.
    file: Option<ServerFile>,
    /// Whether `--ca` named the CA (else the data folder's).
    ca_flag: bool,
}

/// An address a relay wrote that listens on every interface, made reachable: its loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if !addr.ip().is_unspecified() {
        return addr;
    }
    let ip: std::net::IpAddr = if addr.is_ipv6() {
        std::net::Ipv6Addr::LOCALHOST.into()
    } else {
        std::net::Ipv4Addr::LOCALHOST.into()
    };
    SocketAddr::new(ip, addr.port())
}

impl Target {
    pub(crate) fn new(c: &Conn) -> Self {
        let data = DataFolder::new(&c.data);
        let file = data.server_file();
        let servers = match c.server.is_empty() {
            false => c.server.clone(),
            true => vec![
                file.as_ref()
                    .map(|f| reachable(f.quic))
                    .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7700))),
            ],
        };
        Target {
            data,
            servers,
            file,
            ca_flag: c.ca.is_some(),
        }
    }

    /// Where the server address came from, as a hint line.
    fn origin(&self, c: &Conn) -> String {
        let server_json = self.data.path.join(SERVER_FILE);
        if c.server.len() > 1 {
            "(none of the addresses given with --server answered)".into()
        } else if !c.server.is_empty() {
            "(the address given with --server)".into()
        } else if let Some(f) = &self.file {
            // A relay killed without its cleanup (SIGKILL, a crash) leaves its file behind.
            let gone = f
                .pid
                .filter(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                .filter(|_| Path::new("/proc/self").exists())
                .map(|pid| format!(", left by a relay (pid {pid}) that is no longer running"))
                .unwrap_or_default();
            format!(
                "(the address in {}{gone}; pass --server ADDR for another relay)",
                server_json.display()
            )
        } else {
            format!(
                "(the default address: no running relay has written {}; pass --server ADDR)",
                server_json.display()
            )
        }
    }

    /// The curl line that creates `room` on this relay.
    fn create_room_hint(&self, room: &str) -> String {
        let admin = self
            .file
            .as_ref()
            .map(|f| reachable(f.admin))
            .unwrap_or_else(|| Config::default().server.admin);
        let key = if self.data.admin_key().is_some() {
            format!("$(cat {})", self.data.path.join("admin.key").display())
        } else {
            "$ROOMCAST_ADMIN_KEY".to_owned()
        };
        format!(
            "  create it through the admin API:\n    curl -X POST -H \"Authorization: Bearer {key}\" \
             http://{admin}/v1/rooms -d '{{\"id\":\"{room}\"}}'\n  or let joins create rooms: \
             rooms.join_creates = true in the relay's config file"
        )
    }

    /// A client error, with what to do about it where the CLI can tell.
    pub(crate) fn explain(&self, c: &Conn, e: ClientError) -> anyhow::Error {
        let data = self.data.path.display();
        match &e {
            ClientError::NoAnswer { server, .. } => anyhow!(
                "no relay answers at {server} — is `roomcast serve` running?\n  {}",
                self.origin(c)
            ),
            ClientError::Certificate { server, reason } if self.ca_flag => anyhow!(
                "the relay at {server} presented a certificate that the CA given with --ca does \
                 not accept ({reason})\n  pass the CA of that relay with --ca FILE (and \
                 --server-name NAME if its certificate is for another name)"
            ),
            ClientError::Certificate { server, reason } => anyhow!(
                "the relay at {server} presented a certificate that {data}/ca.pem does not accept \
                 ({reason})\n  {data} may belong to another relay, or that relay's certificate \
                 was regenerated: pass --data DIR of the relay you mean, or --ca FILE with its CA"
            ),
            ClientError::Refused(w) if w.code == ErrorCode::RoomNotFound => {
                let room = room_of(&w.message).unwrap_or("ROOM");
                anyhow!("{w}\n{}", self.create_room_hint(room))
            }
            ClientError::Refused(w) if w.code == ErrorCode::Unauthorized && c.token.is_none() => {
                anyhow!(
                    "{w}\n  the token was minted with the token secret of {data}: that folder may \
                     belong to another relay (pass --data DIR of the relay you mean, or --token T)"
                )
            }
            _ => e.into(),
        }
    }
}

/// The room id in a `ROOM_NOT_FOUND` message (`room "lobby" does not exist`).
fn room_of(message: &str) -> Option<&str> {
    message.split('"').nth(1)
}

/// How long a client command's connection may stay silent before it moves to the next relay.
const CLI_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) async fn connect(c: &Conn, target: &Target, user: &str) -> Result<FailoverClient> {
    let data = &target.data;
    let ca_pem = match &c.ca {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => data.ca_pem().with_context(|| {
            format!(
                "no relay data in {0} ({0}/ca.pem is missing): start `roomcast serve` in this \
                 folder first (it creates {0}), pass --data DIR of a relay's data folder, or \
                 --ca FILE --token T",
                data.path.display()
            )
        })?,
    };
    let token = match &c.token {
        Some(t) => t.clone(),
        None => mint(data, user, 3600)?.0,
    };
    let mut cfg = ClientConfig::new(target.servers[0], ca_pem, token);
    cfg.server_name = c.server_name.clone();
    cfg.connect_timeout = Duration::try_from_secs_f64(c.connect_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--connect-timeout must be a positive number of seconds")?;
    cfg.idle_timeout = CLI_IDLE_TIMEOUT;
    let mut failover = FailoverConfig::new(target.servers.clone(), cfg);
    failover.reconnect_for = Duration::try_from_secs_f64(c.reconnect_for)
        .ok()
        .context("--reconnect-for must be 0 or a positive number of seconds")?;
    FailoverClient::connect(failover)
        .await
        .map_err(|e| target.explain(c, e))
}

fn body_json(body: &Bytes) -> (&'static str, serde_json::Value) {
    match std::str::from_utf8(body) {
        Ok(s) => ("body", json!(s)),
        Err(_) => {
            use base64::Engine;
            (
                "body_b64",
                json!(base64::engine::general_purpose::STANDARD.encode(body)),
            )
        }
    }
}

fn message_json(m: &Message, datagram: bool, history: bool) -> serde_json::Value {
    let (key, body) = body_json(&m.body);
    let mut v = json!({
        "event": "message", "room": m.room, "seq": m.seq, "ts": m.ts, "from": m.from,
        "type": m.msg_type, "class": m.class.as_str(), "datagram": datagram,
    });
    v[key] = body;
    if history {
        v["history"] = json!(true);
    }
    v
}

fn event_json(ev: &ClientEvent) -> serde_json::Value {
    match ev {
        ClientEvent::Message { message, datagram } => message_json(message, *datagram, false),
        ClientEvent::Gap { room, low, normal } => {
            json!({"event": "gap", "room": room, "low": low, "normal": normal})
        }
        ClientEvent::RoomDestroyed { room, reason } => {
            json!({"event": "room_destroyed", "room": room, "reason": reason.as_str()})
        }
        ClientEvent::Kicked { room, reason } => {
            json!({"event": "kicked", "room": room, "reason": reason.as_str()})
        }
        ClientEvent::Resumed {
            room,
            missed,
            last_seq,
        } => json!({"event": "resumed", "room": room, "missed": missed, "last_seq": last_seq}),
        ClientEvent::Notice(event) => json!({"event": "notice", "notice": event}),
        ClientEvent::Reconnected { server } => {
            json!({"event": "reconnected", "server": server.to_string()})
        }
        ClientEvent::ResumeFailed { room, error } => {
            json!({"event": "resume_failed", "room": room, "error": error.code.as_str(), "message": error.message})
        }
        ClientEvent::Closed { code, reason } => {
            json!({"event": "closed", "code": code.map(|c| c.code()), "reason": reason})
        }
    }
}

pub(crate) async fn sub(a: SubArgs) -> Result<()> {
    let target = Target::new(&a.conn);
    let client = connect(&a.conn, &target, &a.user).await?;
    let info = match client.join(&a.room, a.history).await {
        Ok(info) => info,
        Err(e) => {
            client.close().await;
            return Err(target.explain(&a.conn, e));
        }
    };
    println!(
        "{}",
        json!({"event": "joined", "room": info.room.id, "epoch": info.room.epoch,
               "last_seq": info.last_seq, "members": info.room.member_count})
    );
    for h in &info.history {
        let mut v = message_json(&h.message, false, true);
        if h.recalled {
            v["recalled"] = json!(true);
        }
        println!("{v}");
    }
    let deadline = a
        .timeout
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    let mut got = 0u64;
    loop {
        if a.count.is_some_and(|c| got >= c) {
            break;
        }
        let ev = match deadline {
            Some(d) => match tokio::time::timeout_at(d, client.next_event()).await {
                Ok(ev) => ev,
                Err(_) => {
                    if let Some(c) = a.count {
                        client.close().await;
                        bail!("timed out after {got} of {c} messages");
                    }
                    break;
                }
            },
            None => client.next_event().await,
        };
        let Some(ev) = ev else { break };
        println!("{}", event_json(&ev));
        match ev {
            ClientEvent::Message { .. } => got += 1,
            ClientEvent::Closed { reason, .. } => bail!("connection closed: {reason}"),
            ClientEvent::RoomDestroyed { .. }
            | ClientEvent::Kicked { .. }
            | ClientEvent::ResumeFailed { .. } => break,
            ClientEvent::Gap { .. }
            | ClientEvent::Resumed { .. }
            | ClientEvent::Reconnected { .. }
            | ClientEvent::Notice(_) => {}
        }
    }
    client.close().await;
    Ok(())
}

/// Sends `body` as a member of `room`. A user who is not a member yet joins for the send and
/// leaves after it, so no member is left behind for the offline grace; a user who is already a
/// member (another device of it is in the room) stays one.
async fn send_once(client: &FailoverClient, a: &PubArgs) -> Result<(u64, u64), ClientError> {
    let body = Bytes::from(a.body.clone());
    match client.send(&a.room, &a.msg_type, body.clone(), a.low).await {
        Err(e) if e.code() == Some(ErrorCode::NotInRoom) => {}
        done => return done,
    }
    client.join(&a.room, -1).await?;
    let sent = client.send(&a.room, &a.msg_type, body, a.low).await;
    if let Err(e) = client.leave(&a.room).await {
        eprintln!(
            "roomcast: warning: could not leave {}: {e} (the relay removes the member after rooms.offline_grace_ms)",
            a.room
        );
    }
    sent
}

pub(crate) async fn publish(a: PubArgs) -> Result<()> {
    let target = Target::new(&a.conn);
    let client = connect(&a.conn, &target, &a.user).await?;
    let result = send_once(&client, &a).await;
    client.close().await;
    match result {
        Ok((seq, ts)) => {
            println!("{}", json!({"room": a.room, "seq": seq, "ts": ts}));
            Ok(())
        }
        Err(e) => {
            let (name, message) = match &e {
                ClientError::Refused(w) => (w.code.as_str(), w.message.clone()),
                other => ("CLOSED", other.to_string()),
            };
            println!("{}", json!({"error": name, "message": message}));
            Err(target.explain(&a.conn, e))
        }
    }
}
