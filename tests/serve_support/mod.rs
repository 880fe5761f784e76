//! A real `roomcast serve` process for the tests that need one (a crash, a restart, a
//! failover): started on a configuration file, ready once its log says it listens, with the
//! addresses it wrote to its data folder's `server.json`.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `roomcast serve`.
pub struct Served {
    /// The process (the caller kills it).
    pub child: Child,
    /// Its QUIC address.
    pub quic: SocketAddr,
    /// Its admin address.
    pub admin: SocketAddr,
}

/// Starts `roomcast serve --config CONFIG` whose data folder is `data` and waits (at most
/// `limit`) for its "listening" line on stderr; `RUST_LOG=warn`.
pub fn serve(config: &Path, data: &Path, limit: Duration) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomcast starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("admin API on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(limit)
        .expect("the server says it is listening");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("server.json")).expect("server.json written"),
    )
    .expect("server.json parses");
    let addr =
        |k: &str| -> SocketAddr { file[k].as_str().expect("address").parse().expect("addr") };
    Served {
        child,
        quic: addr("quic"),
        admin: addr("admin"),
    }
}
