//! The `roomcast` command: `serve`, `token`, `sub`, `pub`, `chat`.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};
use roomcast::config::{Config, Flags, Layered};
use roomcast::node::Server;
use roomcast::server::{DataFolder, ServerError, ServerFile};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod chat;
mod cli;

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
    #[cfg(feature = "bench")]
    Bench(Box<roomcast::bench::BenchArgs>),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML configuration file (see --print-config); unknown keys are an error.
    #[arg(long, env = "ROOMCAST_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address for QUIC [env: ROOMCAST_QUIC] [default: 127.0.0.1:7700, or server.quic of
    /// the config file].
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// TCP address for the admin API and metrics [env: ROOMCAST_ADMIN] [default: 127.0.0.1:7780].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Data folder [env: ROOMCAST_DATA] [default: roomcast-data].
    #[arg(long)]
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
    /// Cluster mode: a NATS server URL (repeatable, or comma-separated) [env:
    /// ROOMCAST_CLUSTER_NATS] [default: cluster.nats of the config file; none: a single node on
    /// the embedded store].
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    cluster_nats: Vec<String>,
    // ---- end cluster ----
    /// Print the full configuration (defaults merged with --config, environment and flags)
    /// after validating it, and exit. Secret values are not shown.
    #[arg(long)]
    print_config: bool,
}

#[derive(Args, Clone)]
struct Conn {
    /// Server QUIC address, or several comma-separated (a,b,c): the first that answers is used,
    /// and when its connection dies the client moves to the next and resumes its rooms there
    /// [default: from the data folder's server.json, else 127.0.0.1:7700].
    #[arg(long, value_delimiter = ',', num_args = 1)]
    server: Vec<SocketAddr>,
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
    /// Seconds to keep reconnecting (round robin over --server, with back-off) after the
    /// connection died, before giving up; 0: do not reconnect.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    reconnect_for: f64,
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
    #[cfg(feature = "bench")]
    if let Cmd::Bench(a) = cli.cmd {
        return roomcast::bench::run(*a).map_err(anyhow::Error::from);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::Token(a) => cli::token(a),
            Cmd::Sub(a) => cli::sub(a).await,
            Cmd::Pub(a) => cli::publish(a).await,
            Cmd::Chat(a) => chat::chat(a).await,
            #[cfg(feature = "bench")]
            Cmd::Bench(_) => Ok(()),
        }
    })
}

async fn serve(a: ServeArgs) -> Result<()> {
    let file = a.config.as_deref().map(Config::from_file).transpose()?;
    let flags = Flags {
        quic: a.quic,
        admin: a.admin,
        data: a.data.clone(),
        dev_mode: a.dev_mode,
        cluster_nats: a.cluster_nats.clone(),
    };
    let Layered {
        config,
        secrets_from_env: from_env,
    } = Config::layered(file, &|var| std::env::var(var).ok(), &flags)?;
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
