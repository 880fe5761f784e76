//! The `roomcast` command: `serve`, `token`, `sub`, `pub`, `chat`.

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use roomcast::client::{Client, ClientConfig, ClientError, ClientEvent};
use roomcast::config::{Config, SECRET_KEYS};
use roomcast::protocol::{ErrorCode, Message, utc_text};
use roomcast::server::{DataFolder, SERVER_FILE, Server, ServerError, ServerFile};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

mod chat;

#[derive(Parser)]
#[command(name = "roomcast", version, about = "A chatroom relay over QUIC.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay. With no flags: QUIC on 127.0.0.1:7700 and the admin API on 127.0.0.1:7780
    /// (this machine only), data in ./roomcast-data (development certificate and secrets
    /// generated there on first start). For clients on other machines: --quic 0.0.0.0:7700 with
    /// a real certificate (tls.cert, tls.key in the config file).
    ///
    /// Stops cleanly on SIGTERM or Ctrl-C. Log levels: RUST_LOG (default info), e.g.
    /// RUST_LOG=debug or RUST_LOG=roomcast=debug,quinn=warn.
    Serve(ServeArgs),
    /// Mint a client token with the token secret of the data folder (or ROOMCAST_TOKEN_SECRET).
    Token(TokenArgs),
    /// Join a room and print its events, one JSON object a line.
    Sub(SubArgs),
    /// Join a room, send one message, print the reply as JSON.
    Pub(PubArgs),
    /// Interactive chat in a room: lines you type are sent, the room's messages and events are
    /// printed. Ends with /quit, Ctrl-D or Ctrl-C (leaving the room), or when the relay ends the
    /// membership or the connection (exit status 1; chat does not reconnect).
    Chat(ChatArgs),
    /// Load harness: starts a relay (or a raw-QUIC baseline) as a child process and measures it.
    Bench(roomcast::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see --print-config); unknown keys are an error.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address for QUIC [default: 127.0.0.1:7700, or server.quic of the config file].
    #[arg(long, env = "ROOMCAST_QUIC")]
    quic: Option<SocketAddr>,
    /// TCP address for the admin API and metrics [default: 127.0.0.1:7780].
    #[arg(long, env = "ROOMCAST_ADMIN")]
    admin: Option<SocketAddr>,
    /// Data folder [default: roomcast-data].
    #[arg(long, env = "ROOMCAST_DATA")]
    data: Option<PathBuf>,
    /// Accept the token "dev:<user id>" without a signature (development only). A bare
    /// --dev-mode turns it on; --dev-mode=false turns off a dev_mode the config file turns on.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    dev_mode: Option<bool>,
    // ---- cluster ----
    /// Cluster mode: a NATS server URL (repeatable, or comma-separated) [default: cluster.nats
    /// of the config file; none: a single node on the embedded store].
    #[arg(
        long,
        env = "ROOMCAST_CLUSTER_NATS",
        value_name = "URL",
        value_delimiter = ','
    )]
    cluster_nats: Vec<String>,
    // ---- end cluster ----
    /// Print the full configuration (defaults merged with --config, environment and flags)
    /// after validating it, and exit. Secret values are not shown.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args, Clone)]
struct Conn {
    /// Server QUIC address [default: from the data folder's server.json, else 127.0.0.1:7700].
    #[arg(long)]
    server: Option<SocketAddr>,
    /// Name the server certificate is checked against.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Data folder of a local `serve`: its CA and token secret are used when --ca/--token are not given.
    #[arg(long, env = "ROOMCAST_DATA", default_value = "roomcast-data")]
    data: PathBuf,
    /// PEM file of the CA to trust.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client token; by default one is minted for --user from the data folder's token secret.
    #[arg(long, env = "ROOMCAST_TOKEN")]
    token: Option<String>,
    /// Seconds to wait for the relay to answer before giving up.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    connect_timeout: f64,
}

#[derive(Args)]
struct TokenArgs {
    /// User id.
    #[arg(long)]
    user: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 86_400)]
    ttl: u64,
    /// Data folder holding token.secret.
    #[arg(long, env = "ROOMCAST_DATA", default_value = "roomcast-data")]
    data: PathBuf,
}

#[derive(Args)]
struct SubArgs {
    #[command(flatten)]
    conn: Conn,
    /// Room id.
    #[arg(long)]
    room: String,
    /// User id.
    #[arg(long)]
    user: String,
    /// History to print first: -1 none, 0 the server default, up to 50.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    history: i32,
    /// Exit after this many messages (history not counted).
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds; with --count, an unreached count is an error.
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(Args)]
struct PubArgs {
    #[command(flatten)]
    conn: Conn,
    /// Room id.
    #[arg(long)]
    room: String,
    /// User id.
    #[arg(long)]
    user: String,
    /// Message type.
    #[arg(long = "type", default_value = "chat")]
    msg_type: String,
    /// Send in the low-priority class (datagrams, shed first).
    #[arg(long)]
    low: bool,
    /// Message body (UTF-8).
    body: String,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    conn: Conn,
    /// Room id.
    #[arg(long)]
    room: String,
    /// User id.
    #[arg(long)]
    user: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes in one text, each cause once: a cause whose text its parent
/// already shows (as thiserror's `{source}` does) is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn run(cli: Cli) -> Result<()> {
    if let Cmd::Bench(a) = cli.cmd {
        return roomcast::bench::run(a).map_err(anyhow::Error::from);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Token(a) => token(a),
            Cmd::Sub(a) => sub(a).await,
            Cmd::Pub(a) => publish(a).await,
            Cmd::Chat(a) => chat::chat(a).await,
            Cmd::Bench(_) => Ok(()),
        }
    })
}

async fn serve(a: ServeArgs) -> Result<()> {
    let mut config = match &a.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(v) = a.quic {
        config.server.quic = v;
    }
    if let Some(v) = a.admin {
        config.server.admin = v;
    }
    if let Some(v) = a.data {
        config.server.data = v;
    }
    if let Some(v) = a.dev_mode {
        config.auth.dev_mode = v;
    }
    // ---- cluster ----
    if !a.cluster_nats.is_empty() {
        config.cluster.nats = a.cluster_nats.clone();
    }
    // ---- end cluster ----
    let mut from_env = Vec::new();
    for (key, var) in SECRET_KEYS {
        if let Ok(v) = std::env::var(var)
            && !v.is_empty()
            && let Some(secret) = config.secret_mut(key)
        {
            *secret = v;
            from_env.push(key);
        }
    }
    config.validate()?;
    if a.print_config {
        print!("{}", config.to_redacted_toml(&from_env));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = roomcast::metrics::prometheus();
    for warning in config.warnings() {
        eprintln!("roomcast: warning: {warning}");
    }
    // ---- open-file limit ----
    // Every admin connection and client socket is a file descriptor: take what the system allows.
    match roomcast::server::raise_open_file_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(
                before,
                after,
                "raised the open-file limit to its hard limit"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
    // ---- end open-file limit ----

    let shutdown = shutdown_signal()?;
    let data = DataFolder::new(&config.server.data);
    let prepared = data.prepare(&config)?;
    for note in &prepared.generated {
        eprintln!("roomcast: generated {note}");
    }
    let server = Server::bind(config, prepared.secrets, &prepared.identity)
        .await
        .map_err(|e| explain_serve(e, &data))?;
    // Removed when this function returns, on a clean stop and on any error after this point.
    let _server_file = data.write_server_file(&ServerFile {
        quic: server.quic_addr(),
        admin: server.admin_addr(),
        web: server.web_addr(),
        pid: Some(std::process::id()),
    })?;
    eprintln!(
        "roomcast: QUIC on {}, admin API on http://{} (data in {})",
        server.quic_addr(),
        server.admin_addr(),
        data.path.display()
    );
    if let Some(web) = server.web_addr() {
        let local = if web.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), web.port())
        } else {
            web
        };
        eprintln!(
            "roomcast: demo page and browser SDK on http://{local}/ (https:// from other hosts)"
        );
    }
    server.run(shutdown).await;
    Ok(())
}

/// A start that failed, with what to do: a listener that cannot bind is told with the flag,
/// key and variable that move it; a store another live relay holds, with that relay's pid.
fn explain_serve(e: ServerError, data: &DataFolder) -> anyhow::Error {
    if let ServerError::Store(_) = &e
        && let Some(pid) = data.server_file().and_then(|f| f.pid)
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        return anyhow!(
            "{e}\n  another relay (pid {pid}) is serving the data folder {}: stop it first, or \
             give this one its own with --data DIR",
            data.path.display()
        );
    }
    let ServerError::Bind { what, addr, source } = &e else {
        return e.into();
    };
    let (flag, key, var) = match *what {
        "QUIC" => ("--quic", "server.quic", "ROOMCAST_QUIC"),
        "admin" => ("--admin", "server.admin", "ROOMCAST_ADMIN"),
        _ => return e.into(),
    };
    let problem = match source.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("{addr} is already in use (another `roomcast serve`?)")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("listening on {addr} is not permitted (ports below 1024 need privileges)")
        }
        std::io::ErrorKind::AddrNotAvailable => {
            format!("{addr} is not an address of this machine")
        }
        _ => return e.into(),
    };
    anyhow!(
        "{what} listener: {problem}; choose another address with {flag} ADDR (config key {key}, environment {var})"
    )
}

/// Listens for SIGTERM and SIGINT (Ctrl-C) from now on, before `server.json` tells anyone the
/// relay is up (until then a signal would end the process without its cleanup), and returns the
/// future that completes on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

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

fn token(a: TokenArgs) -> Result<()> {
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
struct Target {
    data: DataFolder,
    server: SocketAddr,
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
    fn new(c: &Conn) -> Self {
        let data = DataFolder::new(&c.data);
        let file = data.server_file();
        let server = c
            .server
            .or_else(|| file.as_ref().map(|f| reachable(f.quic)))
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7700)));
        Target {
            data,
            server,
            file,
            ca_flag: c.ca.is_some(),
        }
    }

    /// Where the server address came from, as a hint line.
    fn origin(&self, c: &Conn) -> String {
        let server_json = self.data.path.join(SERVER_FILE);
        if c.server.is_some() {
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
    fn explain(&self, c: &Conn, e: ClientError) -> anyhow::Error {
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

async fn connect(c: &Conn, target: &Target, user: &str) -> Result<Client> {
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
    let mut cfg = ClientConfig::new(target.server, ca_pem, token);
    cfg.server_name = c.server_name.clone();
    cfg.connect_timeout = Duration::try_from_secs_f64(c.connect_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--connect-timeout must be a positive number of seconds")?;
    Client::connect(cfg).await.map_err(|e| target.explain(c, e))
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
        ClientEvent::Closed { code, reason } => {
            json!({"event": "closed", "code": code.map(|c| c.code()), "reason": reason})
        }
    }
}

async fn sub(a: SubArgs) -> Result<()> {
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
            ClientEvent::RoomDestroyed { .. } | ClientEvent::Kicked { .. } => break,
            ClientEvent::Gap { .. } | ClientEvent::Resumed { .. } | ClientEvent::Notice(_) => {}
        }
    }
    client.close().await;
    Ok(())
}

/// Sends `body` as a member of `room`. A user who is not a member yet joins for the send and
/// leaves after it, so no member is left behind for the offline grace; a user who is already a
/// member (another device of it is in the room) stays one.
async fn send_once(client: &Client, a: &PubArgs) -> Result<(u64, u64), ClientError> {
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

async fn publish(a: PubArgs) -> Result<()> {
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
