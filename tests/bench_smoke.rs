//! `roomcast bench` end to end: the built binary starts a relay as its child, runs a short paced
//! fan-out (reading the relay's memory and scraping its `/metrics` meanwhile), and writes a JSON
//! report whose numbers add up.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Turns a hang into a failure; the run itself takes a few seconds.
const SAFETY: Duration = Duration::from_secs(25);

#[test]
fn paced_fanout_delivers_every_message_to_every_member() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let json = dir.path().join("r.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "bench",
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
            "--json",
        ])
        .arg(&json)
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
    assert!(
        status.success(),
        "roomcast bench failed: {status}\n{stderr}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("the report is JSON");
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
