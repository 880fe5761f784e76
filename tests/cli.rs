//! The command line as a first-time user meets it: the real `roomcast` binary, real relays on
//! loopback, real data folders. Each test checks what the user reads (stdout, stderr, exit
//! status) and what is true on the relay afterwards (members, files).

use roomcast::client::{Client, ClientConfig};
use roomcast::config::{Config, ENV_VARS};
use roomcast::server::DataFolder;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_roomcast");

/// Upper bound on any wait: turns a hang into a failure, never used to synchronise.
const SAFETY: Duration = Duration::from_secs(25);

/// A `roomcast` command, with the environment a user's shell would not set removed.
fn roomcast(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in ENV_VARS.iter().chain(&["ROOMCAST_TOKEN", "RUST_BACKTRACE"]) {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// A running `roomcast` process whose output is collected as it comes.
struct Proc {
    pid: u32,
    /// The process's exit status, sent by the thread that waits for it.
    exited: mpsc::Receiver<std::io::Result<ExitStatus>>,
    /// Whether the exit was taken from `exited` already.
    reaped: bool,
    stdin: Option<ChildStdin>,
    stdout: Arc<Output>,
    stderr: Arc<Output>,
    /// The threads collecting stdout and stderr; they end when the process closes its pipes.
    collectors: Vec<std::thread::JoinHandle<()>>,
    what: String,
}

/// What one of the process's pipes has yielded so far; `grew` is notified on each read.
#[derive(Default)]
struct Output {
    bytes: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("lock")).into_owned()
    }

    /// Waits until `cond` holds of the text (woken by each read), at most [`SAFETY`]; whether
    /// it did.
    fn wait_for(&self, cond: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + SAFETY;
        let mut bytes = self.bytes.lock().expect("lock");
        loop {
            if cond(&String::from_utf8_lossy(&bytes)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            bytes = self.grew.wait_timeout(bytes, left).expect("lock").0;
        }
    }
}

/// Collects everything `from` yields as it comes (a prompt has no newline to wait for).
fn collect(mut from: impl Read + Send + 'static) -> (Arc<Output>, std::thread::JoinHandle<()>) {
    let out = Arc::new(Output::default());
    let sink = out.clone();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                return;
            }
            sink.bytes
                .lock()
                .expect("lock")
                .extend_from_slice(&buf[..n]);
            sink.grew.notify_all();
        }
    });
    (out, thread)
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("roomcast starts");
        let (stdout, out_thread) = collect(child.stdout.take().expect("piped"));
        let (stderr, err_thread) = collect(child.stderr.take().expect("piped"));
        let stdin = child.stdin.take();
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        Proc {
            pid,
            exited,
            reaped: false,
            stdin,
            stdout,
            stderr,
            collectors: vec![out_thread, err_thread],
            what: what.to_owned(),
        }
    }

    fn stdout(&self) -> String {
        self.stdout.text()
    }

    fn stderr(&self) -> String {
        self.stderr.text()
    }

    fn wait_stdout(&self, what: &str, cond: impl Fn(&str) -> bool) {
        assert!(
            self.stdout.wait_for(cond),
            "timed out after {SAFETY:?} waiting for {}: {what}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout(),
            self.stderr()
        );
    }

    fn wait_stderr(&self, what: &str, cond: impl Fn(&str) -> bool) {
        assert!(
            self.stderr.wait_for(cond),
            "timed out after {SAFETY:?} waiting for {}: {what}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout(),
            self.stderr()
        );
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("written to stdin");
        stdin.flush().expect("flushed");
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    fn signal(&self, sig: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// Waits for the exit (bounded) and returns the status with everything printed. Standard
    /// input stays open until then: a program must end by itself.
    fn finish(mut self) -> (ExitStatus, String, String) {
        let status = match self.exited.recv_timeout(SAFETY) {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                self.kill();
                panic!(
                    "{} did not exit within {SAFETY:?}\nstdout:\n{}\nstderr:\n{}",
                    self.what,
                    self.stdout(),
                    self.stderr()
                );
            }
        };
        self.reaped = true;
        // The pipes close with the process; the collectors finish right after.
        for thread in self.collectors.drain(..) {
            thread.join().expect("collector");
        }
        (status, self.stdout(), self.stderr())
    }

    /// SIGKILLs the process, if it still runs, and reaps it.
    fn kill(&mut self) {
        if self.reaped {
            return;
        }
        if let Err(mpsc::TryRecvError::Empty) = self.exited.try_recv() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.exited.recv_timeout(SAFETY);
        }
        self.reaped = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to its end, with nothing on its standard input.
fn run(cmd: Command, what: &str) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn(cmd, what);
    proc.close_stdin();
    proc.finish()
}

/// The lines a terminal shows for `output`: on each line, what follows the last "clear line"
/// (ESC [2K), without carriage returns.
fn screen_lines(output: &str) -> Vec<String> {
    output
        .split('\n')
        .map(|line| {
            line.rsplit("\x1b[2K")
                .next()
                .unwrap_or("")
                .replace('\r', "")
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// The one `error:` line group a failed command prints (the error, then its indented hints).
fn error_text(stderr: &str) -> String {
    let errors = stderr.matches("error:").count();
    assert_eq!(errors, 1, "one error, printed once:\n{stderr}");
    assert!(!stderr.contains("Caused by"), "{stderr}");
    stderr.to_owned()
}

/// A `roomcast serve` started by a test on loopback ports, with a data folder of its own.
struct Relay {
    proc: Proc,
    data: PathBuf,
    quic: SocketAddr,
    admin: SocketAddr,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn server_json(data: &Path) -> PathBuf {
    data.join("server.json")
}

impl Relay {
    fn start() -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nquic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndata = \"{}\"\n",
                data.display()
            ),
        )
        .expect("config written");
        let proc = Proc::spawn(
            roomcast(&["serve", "--config", &config.display().to_string()]),
            "serve",
        );
        // Printed right after the relay wrote its server.json.
        proc.wait_stderr("its start", |e| e.contains("roomcast: QUIC on"));
        let file = server_json(&data);
        assert!(file.exists(), "{} is written", file.display());
        let f = DataFolder::new(&data)
            .server_file()
            .expect("server.json parses");
        Relay {
            proc,
            data,
            quic: f.quic,
            admin: f.admin,
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            _dir: dir,
        }
    }

    fn data_arg(&self) -> String {
        self.data.display().to_string()
    }

    /// A client command against this relay (`--data` of its folder).
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = roomcast(args);
        cmd.args(["--data", &self.data_arg()]);
        cmd
    }

    fn admin_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let key = std::fs::read_to_string(self.data.join("admin.key")).expect("admin.key");
        let url = format!("http://{}{path}", self.admin);
        let body = body.map(|b| b.to_string().into_bytes());
        let reply = self.rt.block_on(common::admin_call(
            &reqwest::Client::new(),
            &url,
            Some(key.trim()),
            method,
            body,
        ));
        (reply.status, reply.json)
    }

    fn create_room(&self, id: &str) {
        let (status, body) =
            self.admin_call(reqwest::Method::POST, "/v1/rooms", Some(json!({"id": id})));
        assert_eq!(status, 201, "{body}");
    }

    fn members(&self, room: &str) -> Vec<String> {
        let (status, body) = self.admin_call(
            reqwest::Method::GET,
            &format!("/v1/rooms/{room}/members"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["members"]
            .as_array()
            .expect("members")
            .iter()
            .map(|m| m["user_id"].as_str().expect("user_id").to_owned())
            .collect()
    }

    fn client(&self, user: &str) -> Client {
        let secret = DataFolder::new(&self.data)
            .token_secret()
            .expect("token.secret");
        let token = roomcast::auth::TokenAuth::new(secret.as_bytes(), 0, false)
            .mint(user, roomcast::auth::unix_secs() + 600)
            .expect("token");
        let ca = std::fs::read(self.data.join("ca.pem")).expect("ca.pem");
        self.rt
            .block_on(Client::connect(ClientConfig::new(self.quic, ca, token)))
            .expect("client connects")
    }

    /// Stops the relay with `sig` and returns how it exited.
    fn stop(self, sig: &str) -> (ExitStatus, PathBuf, tempfile::TempDir) {
        self.proc.signal(sig);
        let (status, _, stderr) = self.proc.finish();
        assert!(
            status.success(),
            "a clean exit after SIG{sig}: {status:?}\n{stderr}"
        );
        (status, self.data, self._dir)
    }
}

/// A data folder with a CA and a token secret, as `serve` leaves it, but no relay.
fn prepared_folder(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    DataFolder::new(&data)
        .prepare(&Config::default())
        .expect("prepares");
    data
}

#[test]
fn client_commands_without_a_relay_fail_fast_naming_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = prepared_folder(dir.path());
    // A UDP port that takes packets and never answers: what a client sees when no relay runs
    // (QUIC gets no "connection refused").
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bound");
    let addr = silent.local_addr().expect("addr").to_string();
    let data = data.display().to_string();
    let common = ["--data", data.as_str(), "--server", addr.as_str()];
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("sub", vec!["sub", "--room", "lobby", "--user", "alice"]),
        (
            "pub",
            vec!["pub", "--room", "lobby", "--user", "bob", "hello"],
        ),
        ("chat", vec!["chat", "--room", "lobby", "--user", "carol"]),
    ];
    let running: Vec<(&str, Proc)> = commands
        .into_iter()
        .map(|(name, mut args)| {
            args.extend(common);
            (name, Proc::spawn(roomcast(&args), name))
        })
        .collect();
    for (name, proc) in running {
        let (status, _, stderr) = proc.finish();
        assert!(!status.success(), "{name}: {status:?}");
        let text = error_text(&stderr);
        assert!(
            text.contains(&format!(
                "no relay answers at {addr} — is `roomcast serve` running?"
            )),
            "{name}: {text}"
        );
        assert!(text.contains("--server"), "{name}: {text}");
    }
}

#[test]
fn serve_removes_its_server_file_when_stopped() {
    for sig in ["TERM", "INT"] {
        let relay = Relay::start();
        let file = server_json(&relay.data);
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(written["pid"], json!(relay.proc.pid));
        let (_, data, _dir) = relay.stop(sig);
        assert!(
            !server_json(&data).exists(),
            "server.json is gone after SIG{sig}"
        );
    }
}

#[test]
fn a_second_serve_fails_with_a_hint_and_leaves_the_first_ones_file() {
    let relay = Relay::start();
    let file = server_json(&relay.data);
    let before = std::fs::read_to_string(&file).expect("read");

    // The same data folder, other ports: the store is the first relay's.
    let (status, _, stderr) = run(
        roomcast(&[
            "serve",
            "--data",
            &relay.data_arg(),
            "--quic",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ]),
        "second serve, same data",
    );
    assert!(!status.success());
    let text = error_text(&stderr);
    assert!(
        text.contains(&format!("another relay (pid {})", relay.proc.pid)),
        "{text}"
    );

    // The first relay's QUIC port, another data folder.
    let other = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = run(
        roomcast(&[
            "serve",
            "--data",
            &other.path().display().to_string(),
            "--quic",
            &relay.quic.to_string(),
            "--admin",
            "127.0.0.1:0",
        ]),
        "second serve, same port",
    );
    assert!(!status.success());
    let text = error_text(&stderr);
    assert!(
        text.contains(&format!("{} is already in use", relay.quic)),
        "{text}"
    );
    assert!(
        text.contains("--quic ADDR") && text.contains("server.quic"),
        "{text}"
    );
    assert!(!server_json(other.path()).exists());

    assert_eq!(
        std::fs::read_to_string(&file).expect("still there"),
        before,
        "the running relay's server.json is untouched"
    );
    relay.create_room("still");
    let (status, stdout, stderr) = run(
        relay.cli(&["pub", "--room", "still", "--user", "bob", "served"]),
        "pub",
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("\"seq\":1"), "{stdout}");
}

#[test]
fn room_not_found_says_how_to_create_the_room() {
    let relay = Relay::start();
    for cmd in [
        vec!["sub", "--room", "nowhere", "--user", "alice"],
        vec!["pub", "--room", "nowhere", "--user", "bob", "hi"],
    ] {
        let (status, stdout, stderr) = run(relay.cli(&cmd), cmd[0]);
        assert!(!status.success());
        let text = error_text(&stderr);
        assert!(text.contains("room \"nowhere\" does not exist"), "{text}");
        let admin_key = relay.data.join("admin.key");
        assert!(
            text.contains(&format!(
                "curl -X POST -H \"Authorization: Bearer $(cat {})\" http://{}/v1/rooms -d '{{\"id\":\"nowhere\"}}'",
                admin_key.display(),
                relay.admin
            )),
            "{text}"
        );
        assert!(text.contains("rooms.join_creates = true"), "{text}");
        if cmd[0] == "pub" {
            // pub's JSON answer keeps its shape.
            let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
            assert_eq!(v["error"], "ROOM_NOT_FOUND");
        }
    }
    // What the hint says works.
    relay.create_room("nowhere");
    let (status, _, stderr) = run(
        relay.cli(&["pub", "--room", "nowhere", "--user", "bob", "hi"]),
        "pub",
    );
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_certificate_from_another_ca_points_at_the_data_folder() {
    let relay = Relay::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = prepared_folder(dir.path());
    let (status, _, stderr) = run(
        roomcast(&[
            "sub",
            "--room",
            "lobby",
            "--user",
            "alice",
            "--data",
            &stale.display().to_string(),
            "--server",
            &relay.quic.to_string(),
        ]),
        "sub with another relay's data folder",
    );
    assert!(!status.success());
    let text = error_text(&stderr);
    assert!(
        text.contains(&format!(
            "the relay at {} presented a certificate that {}/ca.pem does not accept",
            relay.quic,
            stale.display()
        )),
        "{text}"
    );
    assert!(text.contains("may belong to another relay"), "{text}");
    assert!(text.contains("--data DIR"), "{text}");
}

#[test]
fn pub_leaves_the_room_it_joined_but_keeps_a_membership_the_user_had() {
    let relay = Relay::start();
    relay.create_room("lobby");
    let (status, stdout, stderr) = run(
        relay.cli(&["pub", "--room", "lobby", "--user", "bob", "hello"]),
        "pub",
    );
    assert!(status.success(), "{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(v["seq"], 1);
    assert_eq!(
        relay.members("lobby"),
        Vec::<String>::new(),
        "no ghost member"
    );

    // alice is in the room on another device: pub as alice must not take her out.
    let alice = relay.client("alice");
    relay
        .rt
        .block_on(alice.join("lobby", -1))
        .expect("alice joins");
    let (status, _, stderr) = run(
        relay.cli(&["pub", "--room", "lobby", "--user", "alice", "from the CLI"]),
        "pub as a member",
    );
    assert!(status.success(), "{stderr}");
    assert_eq!(relay.members("lobby"), vec!["alice".to_owned()]);
    let seen = relay.rt.block_on(async {
        tokio::time::timeout(SAFETY, alice.next_event())
            .await
            .expect("an event")
    });
    match seen {
        Some(roomcast::client::ClientEvent::Message { message, .. }) => {
            assert_eq!(&message.body[..], b"from the CLI");
        }
        other => panic!("alice still receives the room, got {other:?}"),
    }
}

/// Starts `chat` for `user` in `room` and waits for its greeting.
fn chat(relay: &Relay, room: &str, user: &str) -> Proc {
    let chat = Proc::spawn(
        relay.cli(&["chat", "--room", room, "--user", user]),
        &format!("chat {user}"),
    );
    chat.wait_stdout("the greeting", |o| o.contains(&format!("joined {room}")));
    chat
}

#[test]
fn chat_prints_readable_lines_once_and_ends_when_banned() {
    let relay = Relay::start();
    let (status, body) = relay.admin_call(
        reqwest::Method::POST,
        "/v1/rooms",
        Some(json!({"id": "lobby", "member_events": true})),
    );
    assert_eq!(status, 201, "{body}");
    let mut carol = chat(&relay, "lobby", "carol");
    carol.type_line("hello from carol");
    carol.wait_stdout("her own line", |o| o.contains("carol: hello from carol"));
    let (status, _, stderr) = run(
        relay.cli(&["pub", "--room", "lobby", "--user", "bob", "hi carol"]),
        "pub",
    );
    assert!(status.success(), "{stderr}");
    carol.wait_stdout("bob's line", |o| o.contains("bob: hi carol"));
    let (status, body) = relay.admin_call(
        reqwest::Method::POST,
        "/v1/rooms/lobby/bans",
        Some(json!({"user_ids": ["carol"], "minutes": 5, "notify": true})),
    );
    assert!(status < 300, "{status} {body}");
    let (status, stdout, stderr) = carol.finish();
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        error_text(&stderr).contains("you were banned from lobby"),
        "{stderr}"
    );
    assert_eq!(
        stdout.matches("hello from carol").count(),
        1,
        "her line once:\n{stdout}"
    );
    assert!(
        stdout.contains("* bob joined") && stdout.contains("* bob left"),
        "{stdout}"
    );
    for raw in ["{", "Kicked", "Banned {", "Notice", "MemberJoined"] {
        assert!(!stdout.contains(raw), "no raw event ({raw}) in:\n{stdout}");
    }

    // The ban's end as a person reads it, beside the number a program reads.
    let (status, _, stderr) = run(
        relay.cli(&["pub", "--room", "lobby", "--user", "carol", "again"]),
        "pub while banned",
    );
    assert!(!status.success());
    let text = error_text(&stderr);
    let until = text
        .split(" until ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .expect("an end time");
    assert!(
        until.len() == 20 && until.ends_with('Z') && until.as_bytes()[10] == b'T',
        "RFC 3339 UTC, got {until:?} in {text}"
    );
    assert!(text.contains(" ms since the epoch)"), "{text}");
}

#[test]
fn chat_leaves_at_end_of_input_and_ends_when_the_relay_stops() {
    let relay = Relay::start();
    relay.create_room("lobby");
    let mut dave = chat(&relay, "lobby", "dave");
    dave.type_line("bye");
    dave.wait_stdout("his line", |o| o.contains("dave: bye"));
    dave.close_stdin();
    let (status, _, stderr) = dave.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(relay.members("lobby"), Vec::<String>::new(), "dave left");

    // A relay going away: the chat tries to reconnect (here for 1 s), then says why it ended.
    let erin = Proc::spawn(
        relay.cli(&[
            "chat",
            "--room",
            "lobby",
            "--user",
            "erin",
            "--reconnect-for",
            "1",
        ]),
        "chat erin",
    );
    erin.wait_stdout("the greeting", |o| o.contains("joined lobby"));
    let (_, _data, _dir) = relay.stop("TERM");
    let (status, stdout, stderr) = erin.finish();
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    let why = error_text(&stderr);
    assert!(
        why.contains("connection closed: server shutting down"),
        "{stderr}"
    );
    assert!(
        why.contains("no relay of 1 answered within 1 s"),
        "{stderr}"
    );
}

/// `roomcast serve ARGS --print-config`.
fn print_config(args: &[&str]) -> Command {
    let mut cmd = roomcast(&["serve"]);
    cmd.args(args).arg("--print-config");
    cmd
}

#[test]
fn print_config_validates_redacts_secrets_and_binds_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("with-secret.toml");
    std::fs::write(&file, "[auth]\ntoken_secret = \"file-secret-81b2\"\n").expect("written");
    let config = file.display().to_string();
    let mut cmd = print_config(&["--config", &config]);
    cmd.env("ROOMCAST_ADMIN_KEY", "env-admin-key-77c4");
    let (status, stdout, stderr) = run(cmd, "print-config");
    assert!(status.success(), "{stderr}");
    assert!(!stdout.contains("env-admin-key-77c4"), "{stdout}");
    assert!(!stdout.contains("file-secret-81b2"), "{stdout}");
    assert!(stdout.contains("(value not shown) in the environment (ROOMCAST_ADMIN_KEY)"));
    assert!(stdout.contains("(value not shown) in the configuration file"));
    let printed = Config::from_toml(&stdout).expect("the printout parses");
    assert_eq!(printed.server.quic, "127.0.0.1:7700".parse().expect("addr"));

    std::fs::write(&file, "[transport]\nack_every_packets = 0\n").expect("written");
    let (status, stdout, stderr) = run(
        print_config(&["--config", &config]),
        "print-config of an invalid file",
    );
    assert!(!status.success());
    assert!(
        stdout.is_empty(),
        "nothing printed for an invalid config: {stdout}"
    );
    assert!(
        error_text(&stderr).contains("transport.ack_every_packets must be 1..=64"),
        "{stderr}"
    );
}

#[test]
fn dev_mode_is_a_bare_flag_that_the_file_cannot_outvote() {
    let dir = tempfile::tempdir().expect("tempdir");
    let on = dir.path().join("on.toml");
    std::fs::write(&on, "[auth]\ndev_mode = true\n").expect("written");
    let on = on.display().to_string();
    for (args, expected) in [
        (vec!["--dev-mode"], true),
        (vec![], false),
        (vec!["--config", on.as_str()], true),
        (vec!["--config", on.as_str(), "--dev-mode=false"], false),
    ] {
        let (status, stdout, stderr) = run(print_config(&args), "print-config");
        assert!(status.success(), "{args:?}: {stderr}");
        let c = Config::from_toml(&stdout).expect("parses");
        assert_eq!(c.auth.dev_mode, expected, "{args:?}");
    }
}

#[test]
fn the_example_config_is_the_printed_one() {
    let (status, stdout, stderr) = run(
        print_config(&["--quic", "0.0.0.0:7700", "--data", "/var/lib/roomcast"]),
        "print-config",
    );
    assert!(status.success(), "{stderr}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/roomcast.toml");
    let example = std::fs::read_to_string(&path).expect("deploy/roomcast.toml");
    assert!(
        example == stdout,
        "deploy/roomcast.toml is out of date: regenerate it with \
         `roomcast serve --quic 0.0.0.0:7700 --data /var/lib/roomcast --print-config > deploy/roomcast.toml`"
    );
    let config = Config::from_file(&path).expect("parses");
    config.validate().expect("valid");
    assert_eq!(config.server.data, Path::new("/var/lib/roomcast"));
}

#[test]
fn the_library_gives_up_after_its_connect_timeout_and_names_a_foreign_certificate() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = prepared_folder(dir.path());
    let ca = std::fs::read(data.join("ca.pem")).expect("ca.pem");
    assert_eq!(
        ClientConfig::new("127.0.0.1:1".parse().expect("addr"), ca.clone(), "t".into())
            .connect_timeout,
        roomcast::client::DEFAULT_CONNECT_TIMEOUT
    );

    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bound");
    let addr = silent.local_addr().expect("addr");
    let mut cfg = ClientConfig::new(addr, ca.clone(), "t".into());
    cfg.connect_timeout = Duration::from_millis(300);
    match rt.block_on(Client::connect(cfg)) {
        Err(roomcast::client::ClientError::NoAnswer { server, waited }) => {
            assert_eq!(server, addr);
            assert_eq!(waited, Duration::from_millis(300));
        }
        Err(other) => panic!("expected NoAnswer, got {other}"),
        Ok(_) => panic!("nothing listens there"),
    }

    let relay = Relay::start();
    let cfg = ClientConfig::new(relay.quic, ca, "t".into());
    match relay.rt.block_on(Client::connect(cfg)) {
        Err(roomcast::client::ClientError::Certificate { server, reason }) => {
            assert_eq!(server, relay.quic);
            assert!(reason.starts_with("invalid peer certificate"), "{reason}");
        }
        Err(other) => panic!("expected Certificate, got {other}"),
        Ok(_) => panic!("the relay's certificate is from another CA"),
    }
}

#[test]
fn chat_on_a_terminal_shows_the_users_line_once() {
    let relay = Relay::start();
    relay.create_room("lobby");
    // `script` (util-linux) runs chat on a pseudo-terminal and passes our keys to it.
    let line = format!(
        "{BIN} chat --room lobby --user dave --data {}",
        relay.data_arg()
    );
    let mut cmd = Command::new("script");
    cmd.args(["-qfec", &line, "/dev/null"]);
    cmd.env_remove("RUST_BACKTRACE");
    let mut dave = Proc::spawn(cmd, "chat on a terminal");
    dave.wait_stdout("the greeting", |o| o.contains("joined lobby"));
    let stdin = dave.stdin.as_mut().expect("stdin");
    stdin.write_all(b"hello tty\r").expect("typed");
    stdin.flush().expect("flushed");
    dave.wait_stdout("the delivered line", |o| o.contains("dave: hello tty"));
    let stdin = dave.stdin.as_mut().expect("stdin");
    stdin.write_all(b"/quit\r").expect("typed");
    stdin.flush().expect("flushed");
    let (status, stdout, stderr) = dave.finish();
    assert!(status.success(), "{stdout}\n{stderr}");
    let shown: Vec<String> = screen_lines(&stdout)
        .into_iter()
        .filter(|l| l.contains("hello tty"))
        .collect();
    assert_eq!(shown, vec!["dave: hello tty".to_owned()], "{stdout:?}");
    assert_eq!(relay.members("lobby"), Vec::<String>::new(), "dave left");
}
