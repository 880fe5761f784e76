//! The `roomcast` command: `serve`, `token`, `sub`, `pub`, `chat`.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use roomcast::client::{Client, ClientConfig, ClientEvent};
use roomcast::config::Config;
use roomcast::protocol::Message;
use roomcast::server::{DataFolder, Server, ServerFile};
use serde_json::json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "roomcast", version, about = "A chatroom relay over QUIC.")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the relay. With no flags: QUIC on 0.0.0.0:7700, admin API on 127.0.0.1:7780, data in
    /// ./roomcast-data (development certificate and secrets generated there on first start).
    Serve(ServeArgs),
    /// Mint a client token with the token secret of the data folder (or ROOMCAST_TOKEN_SECRET).
    Token(TokenArgs),
    /// Join a room and print its events, one JSON object a line.
    Sub(SubArgs),
    /// Join a room, send one message, print the reply as JSON.
    Pub(PubArgs),
    /// Interactive chat in a room: lines you type are sent, messages are printed.
    Chat(ChatArgs),
    /// Load harness: starts a relay (or a raw-QUIC baseline) as a child process and measures it.
    Bench(roomcast::bench::BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see --print-config); unknown keys are an error.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address for QUIC.
    #[arg(long, env = "ROOMCAST_QUIC")]
    quic: Option<SocketAddr>,
    /// TCP address for the admin API and metrics.
    #[arg(long, env = "ROOMCAST_ADMIN")]
    admin: Option<SocketAddr>,
    /// Data folder.
    #[arg(long, env = "ROOMCAST_DATA")]
    data: Option<PathBuf>,
    /// Accept the token "dev:<user id>" without a signature (development only).
    #[arg(long)]
    dev_mode: Option<bool>,
    /// Print the full configuration (defaults merged with --config and flags) and exit.
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

/// Runs the command; a failure is printed as one line of text (its causes after colons), with
/// no backtrace even under `RUST_BACKTRACE`, and exits with status 1.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roomcast: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
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
            Cmd::Chat(a) => chat(a).await,
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
    if let Ok(v) = std::env::var("ROOMCAST_ADMIN_KEY")
        && !v.is_empty()
    {
        config.auth.admin_key = v;
    }
    if let Ok(v) = std::env::var("ROOMCAST_TOKEN_SECRET")
        && !v.is_empty()
    {
        config.auth.token_secret = v;
    }
    if a.print_config {
        print!("{}", config.to_commented_toml());
        return Ok(());
    }
    config.validate()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let _ = roomcast::metrics::prometheus();

    let shutdown = shutdown_signal();
    let data = DataFolder::new(&config.server.data);
    let prepared = data.prepare(&config)?;
    for note in &prepared.generated {
        eprintln!("roomcast: generated {note}");
    }
    let server = Server::bind(config, prepared.secrets, &prepared.identity).await?;
    data.write_server_file(&ServerFile {
        quic: server.quic_addr(),
        admin: server.admin_addr(),
    })?;
    eprintln!(
        "roomcast: QUIC on {}, admin API on http://{} (data in {})",
        server.quic_addr(),
        server.admin_addr(),
        data.path.display()
    );
    server.run(shutdown).await;
    Ok(())
}

/// Completes on SIGTERM or Ctrl-C. The handlers are installed when this is called, not when the
/// future is first polled: a SIGTERM that comes right after the server says it listens must
/// stop it cleanly, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn token_secret(data: &DataFolder) -> Result<String> {
    if let Ok(s) = std::env::var("ROOMCAST_TOKEN_SECRET")
        && !s.is_empty()
    {
        return Ok(s);
    }
    data.token_secret().with_context(|| {
        format!(
            "no token secret: set ROOMCAST_TOKEN_SECRET or start `roomcast serve` with data folder {}",
            data.path.display()
        )
    })
}

fn mint(data: &DataFolder, user: &str, ttl: u64) -> Result<String> {
    let auth = roomcast::auth::TokenAuth::new(token_secret(data)?.as_bytes(), 0, false);
    Ok(auth.mint(user, roomcast::auth::unix_secs() + ttl)?)
}

fn token(a: TokenArgs) -> Result<()> {
    println!("{}", mint(&DataFolder::new(&a.data), &a.user, a.ttl)?);
    Ok(())
}

async fn connect(c: &Conn, user: &str) -> Result<Client> {
    let data = DataFolder::new(&c.data);
    let server = match c.server {
        Some(s) => s,
        None => match data.server_file() {
            Some(f) if f.quic.ip().is_unspecified() => SocketAddr::new(
                if f.quic.is_ipv6() {
                    std::net::Ipv6Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv4Addr::LOCALHOST.into()
                },
                f.quic.port(),
            ),
            Some(f) => f.quic,
            None => SocketAddr::from(([127, 0, 0, 1], 7700)),
        },
    };
    let ca_pem = match &c.ca {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => data.ca_pem().with_context(|| {
            format!(
                "no CA: pass --ca FILE or run beside `roomcast serve` (looked in {})",
                data.path.display()
            )
        })?,
    };
    let token = match &c.token {
        Some(t) => t.clone(),
        None => mint(&data, user, 3600)?,
    };
    let mut cfg = ClientConfig::new(server, ca_pem, token);
    cfg.server_name = c.server_name.clone();
    Client::connect(cfg)
        .await
        .with_context(|| format!("connecting to {server}"))
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
    let client = connect(&a.conn, &a.user).await?;
    let info = client.join(&a.room, a.history).await?;
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
            ClientEvent::Closed { .. } => bail!("connection closed"),
            ClientEvent::RoomDestroyed { .. } | ClientEvent::Kicked { .. } => break,
            ClientEvent::Gap { .. } | ClientEvent::Resumed { .. } | ClientEvent::Notice(_) => {}
        }
    }
    client.close().await;
    Ok(())
}

async fn publish(a: PubArgs) -> Result<()> {
    let client = connect(&a.conn, &a.user).await?;
    let result = async {
        client.join(&a.room, -1).await?;
        client
            .send(&a.room, &a.msg_type, Bytes::from(a.body.clone()), a.low)
            .await
    }
    .await;
    client.close().await;
    match result {
        Ok((seq, ts)) => {
            println!("{}", json!({"room": a.room, "seq": seq, "ts": ts}));
            Ok(())
        }
        Err(e) => {
            let (name, message) = match &e {
                roomcast::client::ClientError::Refused(w) => (w.code.as_str(), w.message.clone()),
                other => ("CLOSED", other.to_string()),
            };
            println!("{}", json!({"error": name, "message": message}));
            bail!("{e}")
        }
    }
}

async fn chat(a: ChatArgs) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let client = std::sync::Arc::new(connect(&a.conn, &a.user).await?);
    let info = client.join(&a.room, 10).await?;
    println!(
        "joined {} ({} members). Type a message and press Enter; /quit to leave.",
        info.room.id, info.room.member_count
    );
    for h in &info.history {
        if h.recalled {
            println!("[{}] (recalled)", h.message.seq);
        } else {
            print_chat(&h.message);
        }
    }
    let events = client.clone();
    let printer = tokio::spawn(async move {
        while let Some(ev) = events.next_event().await {
            match ev {
                ClientEvent::Message { message, .. } => print_chat(&message),
                ClientEvent::Closed { reason, .. } => {
                    println!("* connection closed: {reason}");
                    break;
                }
                other => println!("* {}", event_json(&other)),
            }
        }
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end();
        if line == "/quit" {
            break;
        }
        if line.is_empty() {
            continue;
        }
        if let Err(e) = client
            .send(&a.room, "chat", Bytes::from(line.to_owned()), false)
            .await
        {
            println!("* not sent: {e}");
        }
    }
    let _ = client.leave(&a.room).await;
    client.close().await;
    printer.abort();
    Ok(())
}

fn print_chat(m: &Message) {
    println!(
        "[{}] {}: {}",
        m.seq,
        if m.from.is_empty() { "system" } else { &m.from },
        String::from_utf8_lossy(&m.body)
    );
}
