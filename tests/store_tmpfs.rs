//! The store on a real filesystem that fills up: a small tmpfs this test mounts (which needs
//! root, as in CI), the relay's data folder on it, and a filler file that takes the rest of the
//! space. Everything the kernel does is real: the `ENOSPC`, which writes it refuses, what redb
//! can still do (rewriting allocated pages needs no space here, so reads go on).
//!
//! A machine where the test cannot mount says so on stderr and the test passes without running;
//! with `ROOMCAST_REQUIRE_TMPFS=1` (set by `.ci/run`) it fails instead, so CI never skips it.

mod common;
mod store_support;

use common::{body, next_event};
use roomcast::client::{Client, ClientEvent};
use roomcast::protocol::ErrorCode;
use roomcast::server::STORE_FILE;
use roomcast::store::DiskFile;
use roomcast::tls::ServerIdentity;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use store_support::Node;

/// A relay on `data` with its store as it would be by default: the plain file there.
async fn start(data: &Path, identity: &ServerIdentity) -> Node {
    Node::start(
        data,
        identity,
        Arc::new(DiskFile::new(data.join(STORE_FILE))),
    )
    .await
}

/// A mounted tmpfs, unmounted when dropped (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path, size: &str) -> Result<Mount, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Mount(at.to_owned()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The bodies of a room's history, as a client reads it.
async fn history(c: &Client) -> Result<Vec<String>, roomcast::client::ClientError> {
    Ok(c.history("r", None, 200)
        .await?
        .iter()
        .map(|h| String::from_utf8_lossy(&h.message.body).into_owned())
        .collect())
}

async fn next_body(c: &Client) -> String {
    match next_event(c).await {
        ClientEvent::Message { message, .. } => String::from_utf8_lossy(&message.body).into_owned(),
        other => panic!("{}: expected a message, got {other:?}", c.user()),
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill_up(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 16 * 1024];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_tmpfs_refused_sends_reach_no_one_and_freeing_space_brings_writes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mount point");
    let _mount = match Mount::new(&mnt, "8m") {
        Ok(m) => m,
        Err(why) => {
            let required = std::env::var("ROOMCAST_REQUIRE_TMPFS").is_ok_and(|v| v == "1");
            eprintln!(
                "\n*** store_tmpfs: NOT RUN: cannot mount a tmpfs ({why}); it needs root. \
                 tests/store_faults.rs covers the same faults on a quota disk. ***\n"
            );
            assert!(!required, "ROOMCAST_REQUIRE_TMPFS=1 but no tmpfs: {why}");
            return;
        }
    };
    let data = mnt.join("data");
    let identity = ServerIdentity::generate(&[]).expect("identity");
    let node = start(&data, &identity).await;
    let clients = node.room_with("r", &["alice", "bob"]).await;
    let (alice, bob) = (&clients[0], &clients[1]);

    fill_up(&mnt.join("filler"));
    // redb may still reuse pages it freed before; the file needs new space soon enough.
    let mut accepted = Vec::new();
    let refusal = loop {
        assert!(
            accepted.len() < 2_000,
            "2000 sends fit on a full 8 MiB tmpfs"
        );
        let text = format!("m{} {}", accepted.len(), "x".repeat(4000));
        match alice.send("r", "chat", body(&text), false).await {
            Ok(_) => {
                assert_eq!(next_body(bob).await, text, "an accepted send is delivered");
                accepted.push(text);
            }
            Err(e) => break e,
        }
    };
    // The refused message reached no one: the next thing bob sees is this marker, an admin
    // message history does not keep (so it needs no disk), on the same ordered stream.
    node.marker("r", "marker").await;
    assert_eq!(next_body(bob).await, "marker");
    assert_eq!(refusal.code(), Some(ErrorCode::Unavailable), "{refusal}");
    let health = node.health_becomes(503).await;
    assert!(
        health["store"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "{health}"
    );
    // Reads go on during the outage on this filesystem (the reopen only rewrites pages).
    let during = history(bob).await;
    eprintln!(
        "store_tmpfs: {} sends fitted after the disk filled; a read during the outage: {}",
        accepted.len(),
        match &during {
            Ok(_) => "served".to_owned(),
            Err(e) => e.to_string(),
        }
    );
    match during {
        Ok(h) => assert_eq!(h, accepted),
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::Unavailable), "{e}"),
    }

    std::fs::remove_file(mnt.join("filler")).expect("space freed");
    node.health_becomes(200).await;
    alice
        .send("r", "chat", body("after"), false)
        .await
        .expect("writes again without a restart");
    assert_eq!(next_body(bob).await, "after");
    accepted.push("after".to_owned());
    assert_eq!(history(bob).await.expect("history"), accepted);
    node.stop().await;

    let node = start(&data, &identity).await;
    let carol = node.client("carol").await;
    carol.join("r", -1).await.expect("joins");
    assert_eq!(history(&carol).await.expect("history"), accepted);
    node.stop().await;
}
