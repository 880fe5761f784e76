//! Damaged files at start, with the real `roomcast serve` binary: a store file with a zeroed page,
//! a truncated or an empty store file, and an emptied `token.secret` each stop `serve` with a
//! non-zero exit and one message that names the file and says what to do; never a panic, never a
//! backtrace (the runs set `RUST_BACKTRACE=1` to be sure), never a silently new store or secret.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How a `serve` run ended.
struct Run {
    /// `None`: it started serving (and was stopped with SIGTERM, exiting cleanly).
    refused: Option<ExitStatus>,
    stderr: String,
}

/// Writes a config serving on loopback port 0 with its data in `data`; returns its path.
fn config(dir: &Path, data: &Path) -> PathBuf {
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nquic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata = \"{}\"\n",
            data.display()
        ),
    )
    .expect("config written");
    path
}

/// Runs `roomcast serve --config config` until it serves or exits. A server that serves runs
/// `then`, and is stopped with SIGTERM right after; it must exit cleanly.
fn serve(config: &Path, then: impl FnOnce(&Path)) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("roomcast starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("admin API on") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => true,
        Err(mpsc::RecvTimeoutError::Disconnected) => false,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            panic!("serve neither started nor exited within 60 s");
        }
    };
    if started {
        then(config.parent().expect("a folder"));
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
    }
    let status = child.wait().expect("serve exits");
    let stderr = reader.join().expect("the reader thread");
    if started {
        assert!(
            status.success(),
            "a clean exit after SIGTERM: {status:?}\n{stderr}"
        );
    }
    Run {
        refused: (!started).then_some(status),
        stderr,
    }
}

/// Checks what a refused start printed.
fn assert_refused(run: &Run, names: &Path, what: &str) {
    let status = run
        .refused
        .unwrap_or_else(|| panic!("{what}: serve started\n{}", run.stderr));
    assert!(!status.success(), "{what}: {status:?}");
    assert_quiet(&run.stderr, what);
    assert!(
        run.stderr.contains(&names.display().to_string()),
        "{what}: the message does not name {}:\n{}",
        names.display(),
        run.stderr
    );
}

fn assert_quiet(stderr: &str, what: &str) {
    let lower = stderr.to_lowercase();
    assert!(
        !lower.contains("panicked") && !lower.contains("backtrace"),
        "{what}: a panic or a backtrace:\n{stderr}"
    );
}

/// Fills a store through a real `serve`: a room and twenty stored messages.
fn fill(dir: &Path) {
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("data/server.json")).expect("server.json"),
    )
    .expect("server.json parses");
    let admin = file["admin"].as_str().expect("admin address").to_owned();
    let key = std::fs::read_to_string(dir.join("data/admin.key")).expect("admin key");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let post = |path: &str, body: Value| {
            http.post(format!("http://{admin}{path}"))
                .bearer_auth(key.trim())
                .json(&body)
                .send()
        };
        let r = post("/v1/rooms", json!({"id": "lobby"}))
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        for i in 0..20 {
            let r = post(
                "/v1/rooms/lobby/messages",
                json!({"type": "chat", "body": format!("message {i} {}", "x".repeat(300))}),
            )
            .await
            .expect("send");
            assert_eq!(r.status(), 200);
        }
    });
}

/// A data folder whose store a real `serve` filled; returns (its temp dir, the config, the
/// store file, the store's bytes).
fn filled() -> (tempfile::TempDir, PathBuf, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = config(dir.path(), &data);
    let first = serve(&cfg, fill);
    assert!(first.refused.is_none(), "{}", first.stderr);
    let store = data.join("roomcast.redb");
    let pristine = std::fs::read(&store).expect("the store file");
    assert!(pristine.len() >= 8 * 4096, "{} bytes", pristine.len());
    (dir, cfg, store, pristine)
}

#[test]
fn a_zeroed_page_stops_serve_with_a_message_naming_the_store_file() {
    let (_dir, cfg, store, pristine) = filled();
    // One zeroed 4 KiB page at a time: serve refuses every page its data uses, and starts
    // (its data intact) when the page held nothing.
    let mut refused = 0;
    for page in 0..pristine.len() / 4096 {
        let mut bytes = pristine.clone();
        bytes[page * 4096..(page + 1) * 4096].fill(0);
        std::fs::write(&store, &bytes).expect("damaged");
        let run = serve(&cfg, |_| {});
        let what = format!("page {page} zeroed");
        assert_quiet(&run.stderr, &what);
        if run.refused.is_some() {
            assert_refused(&run, &store, &what);
            assert!(
                run.stderr.contains("backup") && run.stderr.contains("move it away"),
                "{what}: the message says what to do:\n{}",
                run.stderr
            );
            refused += 1;
        }
    }
    assert!(
        refused >= 3,
        "only {refused} of {} zeroed pages were refused",
        pristine.len() / 4096
    );
    std::fs::write(&store, &pristine).expect("restored");
    let last = serve(&cfg, |_| {});
    assert!(last.refused.is_none(), "{}", last.stderr);
}

#[test]
fn a_truncated_store_file_stops_serve_by_name() {
    let (_dir, cfg, store, pristine) = filled();
    for keep in [pristine.len() / 2, 4096, 100] {
        std::fs::write(&store, &pristine[..keep]).expect("truncated");
        assert_refused(
            &serve(&cfg, |_| {}),
            &store,
            &format!("truncated to {keep} bytes"),
        );
    }
}

#[test]
fn an_empty_store_file_stops_serve_by_name_and_is_not_taken_for_a_new_store() {
    let (_dir, cfg, store, _) = filled();
    std::fs::write(&store, b"").expect("emptied");
    let run = serve(&cfg, |_| {});
    assert_refused(&run, &store, "an empty store file");
    assert!(run.stderr.contains("empty"), "{}", run.stderr);
    assert_eq!(
        std::fs::metadata(&store).expect("still there").len(),
        0,
        "not taken for a new store"
    );
}

#[test]
fn a_whitespace_only_token_secret_stops_serve_by_name_and_is_kept() {
    let (dir, cfg, _, _) = filled();
    let secret = dir.path().join("data/token.secret");
    let kept = std::fs::read_to_string(&secret).expect("the secret");
    std::fs::write(&secret, " \n\t\n").expect("emptied");
    let run = serve(&cfg, |_| {});
    assert_refused(&run, &secret, "a whitespace-only token.secret");
    assert_eq!(
        std::fs::read_to_string(&secret).expect("still there"),
        " \n\t\n",
        "no new secret was written over it"
    );
    std::fs::write(&secret, &kept).expect("restored");
    let last = serve(&cfg, |_| {});
    assert!(last.refused.is_none(), "{}", last.stderr);
}
