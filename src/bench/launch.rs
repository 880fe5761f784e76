//! The server under test: a `roomcast serve` or a raw baseline started as a child process of
//! `current_exe()` in a temporary folder, or a server that is already running.
//!
//! A started server writes its bound addresses to a file once it listens (`server.json` in the
//! relay's data folder, `raw.json` for the baseline); the harness waits for that file (bounded),
//! reads the CA and secrets next to it, and at the end stops the child with SIGTERM, then SIGKILL
//! after `STOP_GRACE` (5 s).

use super::admin::Admin;
use super::{BenchArgs, BenchError, TargetKind};
use crate::auth::TokenAuth;
use crate::config::Config;
use crate::server::{DataFolder, ServerFile};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a started server to write its address file.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a stopped child gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// File the raw baseline writes its bound address to.
pub const RAW_FILE: &str = "raw.json";

/// What the raw baseline writes once it listens.
#[derive(Debug, Serialize, Deserialize)]
pub struct RawFile {
    /// Its QUIC address.
    pub quic: SocketAddr,
}

/// A value the rate limits were raised from and to, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct Raised {
    /// Configuration key.
    pub key: &'static str,
    /// roomcast's default.
    pub default: String,
    /// What the bench ran with.
    pub bench: String,
}

/// How clients get a token.
#[derive(Debug, Clone)]
pub enum Tokens {
    /// Minted with the relay's HS256 secret.
    Secret(Box<TokenAuth>),
    /// Any string (the raw baseline checks none).
    Fixed(String),
}

impl Tokens {
    /// A token for `user`, valid for a day.
    pub fn mint(&self, user: &str) -> Result<String, BenchError> {
        match self {
            Tokens::Secret(auth) => auth
                .mint(user, crate::auth::unix_secs() + 86_400)
                .map_err(|e| BenchError::Setup(format!("minting a token: {e}"))),
            Tokens::Fixed(t) => Ok(t.clone()),
        }
    }
}

/// The server under test and how to reach it.
pub struct Target {
    /// Which kind it is.
    pub kind: TargetKind,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its public web listener (WebSocket), when known.
    pub web: Option<SocketAddr>,
    /// PEM of the CA its certificate chains to.
    pub ca_pem: Vec<u8>,
    /// Client tokens.
    pub tokens: Tokens,
    /// Its admin API, when reachable.
    pub admin: Option<Admin>,
    /// Its process id, to measure (None: not measured).
    pub pid: Option<u32>,
    /// Limits the started relay runs with above roomcast's defaults.
    pub raised: Vec<Raised>,
    /// Whether a relay started here creates rooms on join (so no admin call is needed).
    pub join_creates: bool,
    pub(super) child: Option<Child>,
    pub(super) tmp: Option<TempDir>,
    /// A cluster run's nats-server and relays (`child` is then `None`: they are all here).
    pub(super) cluster: Option<super::cluster::Cluster>,
}

impl Target {
    /// Starts (or locates) the server `args` ask for.
    pub async fn open(args: &BenchArgs) -> Result<Target, BenchError> {
        match args.server {
            Some(addr) => Self::external(args, addr),
            None => match args.target {
                TargetKind::Roomcast => Self::start_roomcast(args).await,
                TargetKind::RawQuic => Self::start_raw(args).await,
            },
        }
    }

    fn external(args: &BenchArgs, quic: SocketAddr) -> Result<Target, BenchError> {
        let data = args.data.as_ref().map(DataFolder::new);
        let ca_pem = match (&args.ca, &data) {
            (Some(p), _) => read(p)?,
            (None, Some(d)) => d
                .ca_pem()
                .ok_or_else(|| BenchError::Setup(format!("no ca.pem in {}", d.path.display())))?,
            (None, None) => {
                return Err(BenchError::Setup(
                    "--server needs --data DIR or --ca FILE to trust the server".into(),
                ));
            }
        };
        let secret = match (&args.token_secret, &data) {
            (Some(p), _) => Some(read_text(p)?),
            (None, Some(d)) => d.token_secret(),
            (None, None) => None,
        };
        let tokens = match (args.target, secret) {
            (TargetKind::RawQuic, _) => Tokens::Fixed("raw".into()),
            (TargetKind::Roomcast, Some(s)) => {
                Tokens::Secret(Box::new(TokenAuth::new(s.as_bytes(), 0, false)))
            }
            (TargetKind::Roomcast, None) => {
                return Err(BenchError::Setup(
                    "--server needs --data DIR or --token-secret FILE to mint client tokens".into(),
                ));
            }
        };
        let admin_addr = args
            .admin
            .or_else(|| data.as_ref().and_then(|d| d.server_file()).map(|f| f.admin));
        let key = match (&args.admin_key, &data) {
            (Some(p), _) => Some(read_text(p)?),
            (None, Some(d)) => d.admin_key(),
            (None, None) => None,
        };
        let admin = match (args.target, admin_addr) {
            (TargetKind::Roomcast, Some(addr)) => {
                super::require_loopback("--admin", addr)?;
                Some(Admin { addr, key })
            }
            _ => None,
        };
        let web = data
            .as_ref()
            .and_then(|d| d.server_file())
            .and_then(|f| f.web);
        Ok(Target {
            kind: args.target,
            quic,
            web,
            ca_pem,
            tokens,
            admin,
            pid: args.server_pid,
            raised: Vec::new(),
            join_creates: false,
            child: None,
            tmp: None,
            cluster: None,
        })
    }

    async fn start_roomcast(args: &BenchArgs) -> Result<Target, BenchError> {
        if args.relays.is_some() {
            return super::cluster::start(args).await;
        }
        let tmp = TempDir::new(args.keep)?;
        let (config, raised) = relay_config(args, &tmp.path.join("data"))?;
        let (mut child, file) = launch_relay(&tmp.path, &config).await?;
        let (ca_pem, secret, admin_key) = match read_secrets(&config.server.data) {
            Ok(v) => v,
            Err(e) => {
                stop_child(&mut child);
                return Err(e);
            }
        };
        Ok(Target {
            kind: TargetKind::Roomcast,
            quic: file.quic,
            web: file.web,
            ca_pem,
            tokens: Tokens::Secret(Box::new(TokenAuth::new(secret.as_bytes(), 0, false))),
            admin: Some(Admin {
                addr: file.admin,
                key: Some(admin_key),
            }),
            pid: Some(child.id()),
            raised,
            join_creates: true,
            child: Some(child),
            tmp: Some(tmp),
            cluster: None,
        })
    }

    async fn start_raw(args: &BenchArgs) -> Result<Target, BenchError> {
        let tmp = TempDir::new(args.keep)?;
        let mut cmd = Command::new(current_exe()?);
        cmd.arg("bench")
            .arg("--serve-raw")
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(&tmp.path)
            .arg("--window-ms")
            .arg((super::transport_of(args).delivery_window_us / 1000).to_string());
        if let Some(n) = args.ack_every {
            cmd.arg("--ack-every").arg(n.to_string());
        }
        if args.no_gso {
            cmd.arg("--no-gso");
        }
        let log = tmp.path.join("server.log");
        let mut child = spawn(cmd, &log)?;
        let file = tmp.path.join(RAW_FILE);
        let ready = match wait_for_file(&mut child, &file, &log).await {
            Ok(()) => read_raw(&tmp.path),
            Err(e) => Err(e),
        };
        let (quic, ca_pem) = match ready {
            Ok(v) => v,
            Err(e) => {
                stop_child(&mut child);
                return Err(e);
            }
        };
        Ok(Target {
            kind: TargetKind::RawQuic,
            quic,
            web: None,
            ca_pem,
            tokens: Tokens::Fixed("raw".into()),
            admin: None,
            pid: Some(child.id()),
            raised: Vec::new(),
            join_creates: true,
            child: Some(child),
            tmp: Some(tmp),
            cluster: None,
        })
    }

    /// Every server process to measure, named: the relay (one per relay in a cluster run, by
    /// index) and a cluster run's nats-server.
    pub fn server_pids(&self) -> Vec<(String, u32)> {
        match &self.cluster {
            Some(c) => c.pids(),
            None => self
                .pid
                .map(|p| ("relay".to_owned(), p))
                .into_iter()
                .collect(),
        }
    }

    /// The temporary folder, when one was made.
    pub fn folder(&self) -> Option<&Path> {
        self.tmp.as_ref().map(|t| t.path.as_path())
    }

    /// Stops a started server (SIGTERM, then SIGKILL after a bounded wait); a running server that
    /// was only benched is left alone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        if let Some(mut cluster) = self.cluster.take() {
            cluster.stop();
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The configuration of a relay the harness starts, with its data in `data_dir`, and what it
/// raised above roomcast's defaults.
pub(super) fn relay_config(
    args: &BenchArgs,
    data_dir: &Path,
) -> Result<(Config, Vec<Raised>), BenchError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut config = Config::default();
    config.server.quic = loopback;
    config.server.admin = loopback;
    config.server.data = data_dir.to_owned();
    config.store.durability = args.durability.into();
    // The same write window and ACK frequency for roomcast as for the raw baseline.
    let t = super::transport_of(args);
    config.transport.delivery_window_us = t.delivery_window_us;
    config.transport.ack_every_packets = t.ack_every_packets;
    config.transport.segmentation_offload = t.segmentation_offload;
    let mut raised = if args.stock_limits {
        Vec::new()
    } else {
        raise_limits(&mut config)
    };
    // Joins create rooms, so a scenario needs no admin call per room. Recorded as a raise.
    raised.push(Raised {
        key: "rooms.join_creates",
        default: config.rooms.join_creates.to_string(),
        bench: "true".into(),
    });
    config.rooms.join_creates = true;
    Ok((config, raised))
}

/// Starts `roomcast serve` with `config` (written to `dir/bench.toml`, its log in
/// `dir/server.log`) and waits until it listens; returns the child and its address file.
pub(super) async fn launch_relay(
    dir: &Path,
    config: &Config,
) -> Result<(Child, ServerFile), BenchError> {
    config
        .validate()
        .map_err(|e| BenchError::Setup(format!("bench configuration: {e}")))?;
    let data_dir = &config.server.data;
    let toml_path = dir.join("bench.toml");
    write(&toml_path, &config.to_commented_toml())?;
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut cmd = Command::new(current_exe()?);
    cmd.arg("serve")
        .arg("--config")
        .arg(&toml_path)
        .arg("--quic")
        .arg(loopback.to_string())
        .arg("--admin")
        .arg(loopback.to_string())
        .arg("--data")
        .arg(data_dir);
    // The environment may not point the child elsewhere: flags and the file say it all.
    for var in crate::config::ENV_VARS {
        cmd.env_remove(var);
    }
    let log = dir.join("server.log");
    let mut child = spawn(cmd, &log)?;
    let server_file = data_dir.join(crate::server::SERVER_FILE);
    let ready = match wait_for_file(&mut child, &server_file, &log).await {
        Ok(()) => DataFolder::new(data_dir).server_file().ok_or_else(|| {
            BenchError::Setup(format!("server.json missing in {}", data_dir.display()))
        }),
        Err(e) => Err(e),
    };
    match ready {
        Ok(file) => Ok((child, file)),
        Err(e) => {
            stop_child(&mut child);
            Err(e)
        }
    }
}

/// Lifts every limit that would cap a benchmark's throughput; returns what changed.
fn raise_limits(config: &mut Config) -> Vec<Raised> {
    const HIGH: u32 = 1_000_000_000;
    let l = &mut config.limits;
    let mut raised = Vec::new();
    let mut raise_u32 = |key: &'static str, v: &mut u32, to: u32| {
        raised.push(Raised {
            key,
            default: v.to_string(),
            bench: to.to_string(),
        });
        *v = to;
    };
    raise_u32("limits.send_rate_per_sec", &mut l.send_rate_per_sec, HIGH);
    raise_u32("limits.send_burst", &mut l.send_burst, HIGH);
    raise_u32("limits.room_budget_total", &mut l.room_budget_total, HIGH);
    raise_u32(
        "limits.room_budget_protected_extra",
        &mut l.room_budget_protected_extra,
        HIGH,
    );
    raise_u32(
        "limits.admin_rate_per_sec",
        &mut l.admin_rate_per_sec,
        100_000,
    );
    raise_u32("limits.admin_burst", &mut l.admin_burst, 100_000);
    raised.push(Raised {
        key: "limits.rooms_per_user",
        default: l.rooms_per_user.to_string(),
        bench: "10000".into(),
    });
    l.rooms_per_user = 10_000;
    raised
}

/// A started relay's CA, token secret and admin key, from its data folder.
pub(super) fn read_secrets(data: &Path) -> Result<(Vec<u8>, String, String), BenchError> {
    let folder = DataFolder::new(data);
    let missing = |what: &str| BenchError::Setup(format!("{what} missing in {}", data.display()));
    let ca = folder.ca_pem().ok_or_else(|| missing("ca.pem"))?;
    let secret = folder
        .token_secret()
        .ok_or_else(|| missing("token.secret"))?;
    let admin = folder.admin_key().ok_or_else(|| missing("admin.key"))?;
    Ok((ca, secret, admin))
}

fn read_raw(dir: &Path) -> Result<(SocketAddr, Vec<u8>), BenchError> {
    let text = read_text(&dir.join(RAW_FILE))?;
    let file: RawFile = serde_json::from_str(&text)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", dir.join(RAW_FILE).display())))?;
    Ok((file.quic, read(&dir.join(crate::tls::DEV_CA_FILE))?))
}

pub(super) fn current_exe() -> Result<PathBuf, BenchError> {
    std::env::current_exe().map_err(|source| BenchError::Io {
        what: "locating the roomcast executable".into(),
        source,
    })
}

pub(super) fn spawn(mut cmd: Command, log: &Path) -> Result<Child, BenchError> {
    let io = |what: String| move |source| BenchError::Io { what, source };
    die_with_parent(&mut cmd);
    let out = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("opening {}", log.display())))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(io(format!("starting {cmd:?}")))
}

/// Waits until `file` exists and parses, the child exits, or [`START_TIMEOUT`] passes.
pub(super) async fn wait_for_file(
    child: &mut Child,
    file: &Path,
    log: &Path,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        // The file is written in one go, but it may be caught half-written: wait until it parses.
        if std::fs::read_to_string(file)
            .ok()
            .is_some_and(|t| serde_json::from_str::<serde_json::Value>(&t).is_ok())
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BenchError::Setup(format!(
                "the server exited ({status}) before listening; its log:\n{}",
                tail(log)
            )));
        }
        if Instant::now() > deadline {
            return Err(BenchError::Setup(format!(
                "the server wrote no {} within {START_TIMEOUT:?}; its log:\n{}",
                file.display(),
                tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// SIGTERM, a bounded wait, then SIGKILL.
pub(super) fn stop_child(child: &mut Child) {
    stop_children(std::slice::from_mut(child));
}

/// SIGTERM to every child at once, one bounded wait for them all, then SIGKILL to the rest.
pub(super) fn stop_children(children: &mut [Child]) {
    let mut running: Vec<&mut Child> = children
        .iter_mut()
        .filter_map(|c| (!matches!(c.try_wait(), Ok(Some(_)))).then_some(c))
        .collect();
    for c in &running {
        terminate(c.id());
    }
    let deadline = Instant::now() + STOP_GRACE;
    while !running.is_empty() && Instant::now() < deadline {
        running.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        if !running.is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for c in running {
        eprintln!(
            "roomcast bench: server process {} did not stop within {STOP_GRACE:?}; killing it",
            c.id()
        );
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The child gets SIGTERM when the thread that spawned it ends (the harness spawns from the thread
/// that drives the run, so: when the harness dies without stopping it, e.g. killed). It runs in
/// a process group of its own, so a Ctrl-C in the terminal reaches the harness only, which then
/// stops its children in order (the relays before the nats-server they use).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2) and
    // setpgid(2), which are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            libc::setpgid(0, 0);
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with the id of a child this process spawned and has not reaped yet (so the
    // id cannot have been reused); no memory is passed.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

pub(super) fn read(p: &Path) -> Result<Vec<u8>, BenchError> {
    std::fs::read(p).map_err(|source| BenchError::Io {
        what: format!("reading {}", p.display()),
        source,
    })
}

pub(super) fn read_text(p: &Path) -> Result<String, BenchError> {
    Ok(String::from_utf8_lossy(&read(p)?).trim().to_owned())
}

pub(super) fn write(p: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(p, text).map_err(|source| BenchError::Io {
        what: format!("writing {}", p.display()),
        source,
    })
}

/// A folder under the system temp directory, removed on drop unless kept.
pub(super) struct TempDir {
    /// The folder.
    pub(super) path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub(super) fn new(keep: bool) -> Result<TempDir, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("roomcast-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| BenchError::Io {
            what: format!("creating {}", path.display()),
            source,
        })?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
