//! How many events a single `rc_client_poll` loop takes from a busy room, and what each costs,
//! against the Rust client (`roomcast::client`) in the same room.
//!
//! One process: a relay on loopback (its own runtime), publishers that keep the room busy
//! (200-byte messages, pipelined), and one subscriber, either the C ABI (polled the way an
//! engine does: every frame, drain until `RC_EMPTY`, freeing each event) or the Rust client
//! (drained with `try_recv` the same way). Each run lasts `--secs` (default 5); runs alternate
//! ABI / Rust, `--runs` (default 3) of each, and the medians are reported:
//! - events/s the subscriber received;
//! - drain rate: events taken per second of time spent inside drains (what one poll loop can
//!   take when events are waiting);
//! - CPU ns per event of the polling thread, and of the client's own runtime thread.
//!
//! `cargo bench -p roomcast-ffi --bench poll [-- --secs 5 --runs 3]`

// Calls the exported `extern "C"` functions directly: the same code a C caller runs.
#![allow(unsafe_code)]

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use roomcast::client::{Client, ClientConfig, ClientEvent};
use roomcast::config::Config;
use roomcast::node::Server;
use roomcast::server::Secrets;
use roomcast::tls::ServerIdentity;
use roomcast_ffi::*;
use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SECRET: &str = "bench-token-secret-0123456789";
const ROOM: &str = "busy";
const PUBLISHERS: usize = 3;
const IN_FLIGHT: usize = 32;
const BODY: usize = 200;
const QUEUE: u32 = 65_536;

/// One subscriber run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    events_per_sec: f64,
    drain_per_sec: f64,
    poll_ns: f64,
    runtime_ns: f64,
    gaps: u64,
}

fn main() -> Result<()> {
    let mut secs = 5u64;
    let mut runs = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().context("--secs N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    let data = tempfile::tempdir()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-relay")
        .enable_all()
        .build()?;
    let identity = ServerIdentity::generate(&[])?;
    let ca_pem = identity.ca_pem.clone().context("a CA")?.into_bytes();
    let mut config = Config::default();
    config.server.quic = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.data = data.path().to_owned();
    config.rooms.join_creates = true;
    config.store.durability = roomcast::store::Durability::Batched;
    let l = &mut config.limits;
    (l.send_rate_per_sec, l.send_burst) = (1_000_000_000, 1_000_000_000);
    (l.room_budget_total, l.room_budget_reserved) = (1_000_000_000, 0);
    let secrets = Secrets {
        admin_key: "bench-admin-key-0123456789".into(),
        token_secret: SECRET.into(),
    };
    let server = server_rt.block_on(Server::bind(config, secrets, &identity))?;
    let quic = server.quic_addr();
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    server_rt.spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let token = |user: &str| {
        roomcast::auth::TokenAuth::new(SECRET.as_bytes(), 0, false)
            .mint(user, roomcast::auth::unix_secs() + 3600)
    };
    println!(
        "busy room: {PUBLISHERS} publishers x {IN_FLIGHT} sends in flight, {BODY}-byte bodies; {runs} runs of {secs} s per subscriber, alternating"
    );
    let mut ffi_runs = Vec::new();
    let mut rust_runs = Vec::new();
    for i in 0..runs {
        let f = with_load(&server_rt, quic, &ca_pem, &token, secs, || {
            ffi_subscriber(quic, &ca_pem, &token(&format!("ffi-sub-{i}"))?, secs)
        })?;
        println!("  run {}: C ABI  {}", i + 1, show(&f));
        ffi_runs.push(f);
        let r = with_load(&server_rt, quic, &ca_pem, &token, secs, || {
            rust_subscriber(quic, &ca_pem, &token(&format!("rust-sub-{i}"))?, secs)
        })?;
        println!("  run {}: Rust   {}", i + 1, show(&r));
        rust_runs.push(r);
    }
    let (f, r) = (median(&ffi_runs), median(&rust_runs));
    println!("median: C ABI  {}", show(&f));
    println!("median: Rust   {}", show(&r));
    println!(
        "C ABI / Rust: polling thread {:.2}x CPU per event ({:+.0} ns), client thread {:.2}x, events/s {:.2}x",
        f.poll_ns / r.poll_ns,
        f.poll_ns - r.poll_ns,
        f.runtime_ns / r.runtime_ns,
        f.events_per_sec / r.events_per_sec
    );
    let _ = stop_server.send(());
    Ok(())
}

fn show(r: &Run) -> String {
    format!(
        "{:>9.0} events/s, drain {:>10.0} events/s, polling thread {:>6.0} ns/event, client thread {:>6.0} ns/event, {} gaps",
        r.events_per_sec, r.drain_per_sec, r.poll_ns, r.runtime_ns, r.gaps
    )
}

fn median(runs: &[Run]) -> Run {
    let pick = |f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Run {
        events_per_sec: pick(|r| r.events_per_sec),
        drain_per_sec: pick(|r| r.drain_per_sec),
        poll_ns: pick(|r| r.poll_ns),
        runtime_ns: pick(|r| r.runtime_ns),
        gaps: runs.iter().map(|r| r.gaps).max().unwrap_or(0),
    }
}

/// Runs `subscriber` while publishers keep the room busy (they start once it has joined, so
/// each run sees the same load), then stops them.
fn with_load<T>(
    rt: &tokio::runtime::Runtime,
    quic: SocketAddr,
    ca_pem: &[u8],
    token: &dyn Fn(&str) -> Result<String, roomcast::protocol::WireError>,
    secs: u64,
    subscriber: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        let cfg = ClientConfig::new(quic, ca_pem.to_vec(), token(&format!("pub-{p}"))?);
        let stop = stop.clone();
        pubs.push(rt.spawn(async move {
            let client = Arc::new(Client::connect(cfg).await?);
            client.join(ROOM, -1).await?;
            let body = Bytes::from(vec![b'x'; BODY]);
            // Bounded in time by `stop` (set after the run's `secs`) and in count.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(secs * 4 + 30);
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..IN_FLIGHT {
                let (client, stop, body) = (client.clone(), stop.clone(), body.clone());
                tasks.spawn(async move {
                    let mut sent = 0u64;
                    while !stop.load(Ordering::Relaxed)
                        && tokio::time::Instant::now() < deadline
                        && sent < 10_000_000
                    {
                        if client
                            .send(ROOM, "chat", body.clone(), false)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        sent += 1;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            client.close().await;
            anyhow::Ok(())
        }));
    }
    let result = subscriber();
    stop.store(true, Ordering::Relaxed);
    for p in pubs {
        rt.block_on(p)??;
    }
    result
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time of this process's threads named `name` (from /proc), summed.
fn named_threads_cpu(name: &str) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for task in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            if &stat[open + 1..close] != name {
                continue;
            }
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
            let t = |i: usize| {
                fields
                    .get(i)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            ticks += t(11) + t(12);
        }
    }
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// Polls every frame (1 ms) for `secs`, draining until empty; returns the figures.
fn measure(
    secs: u64,
    runtime_thread: &str,
    mut drain: impl FnMut(&mut u64) -> Result<u64>,
) -> Result<Run> {
    let frame = Duration::from_millis(1);
    let (mut events, mut gaps, mut draining) = (0u64, 0u64, Duration::ZERO);
    let (cpu0, rt0, t0) = (
        thread_cpu(),
        named_threads_cpu(runtime_thread),
        Instant::now(),
    );
    while t0.elapsed() < Duration::from_secs(secs) {
        let start = Instant::now();
        let n = drain(&mut gaps)?;
        if n > 0 {
            draining += start.elapsed();
            events += n;
        }
        std::thread::sleep(frame); // the rest of the frame
    }
    let (cpu, rt, wall) = (
        thread_cpu() - cpu0,
        named_threads_cpu(runtime_thread) - rt0,
        t0.elapsed(),
    );
    if events == 0 {
        bail!("the subscriber received nothing");
    }
    Ok(Run {
        events_per_sec: events as f64 / wall.as_secs_f64(),
        drain_per_sec: events as f64 / draining.as_secs_f64(),
        poll_ns: cpu.as_nanos() as f64 / events as f64,
        runtime_ns: rt.as_nanos() as f64 / events as f64,
        gaps,
    })
}

fn ffi_subscriber(quic: SocketAddr, ca_pem: &[u8], token: &str, secs: u64) -> Result<Run> {
    let server = CString::new(quic.to_string())?;
    let ca = CString::new(ca_pem.to_vec())?;
    let token = CString::new(token)?;
    let room = CString::new(ROOM)?;
    let mut cfg = std::mem::MaybeUninit::<rc_config>::uninit();
    // SAFETY: `cfg` is writable; rc_config_init fills every field.
    let mut cfg = unsafe {
        rc_config_init(cfg.as_mut_ptr());
        cfg.assume_init()
    };
    cfg.server = server.as_ptr();
    cfg.ca_pem = ca.as_ptr();
    cfg.token = token.as_ptr();
    cfg.event_queue = QUEUE;
    let mut client = std::ptr::null_mut();
    // SAFETY: a config from rc_config_init whose strings outlive the call; `client` writable.
    let s = unsafe { rc_client_open(&cfg, &mut client) };
    if s != rc_status::RC_OK {
        bail!("rc_client_open: {s:?}");
    }
    let mut ev = std::mem::MaybeUninit::<rc_event>::uninit();
    let mut join = 0u64;
    // SAFETY: `room` is 0-terminated, `join` writable.
    unsafe { rc_client_join(client, room.as_ptr(), -1, &mut join) };
    // Wait for the join's reply (and the CONNECTED before it), bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if Instant::now() > deadline {
            bail!("no join reply");
        }
        // SAFETY: `ev` is writable; a filled event is freed before the next poll.
        let s = unsafe { rc_client_wait(client, ev.as_mut_ptr(), 100) };
        if s != rc_status::RC_OK {
            continue;
        }
        // SAFETY: RC_OK means the event was written.
        let e = unsafe { ev.assume_init_mut() };
        let done = e.kind == rc_event_kind::RC_EVENT_REPLY && e.request_id == join;
        let ok = e.status == rc_status::RC_OK;
        // SAFETY: a filled event.
        unsafe { rc_event_free(e) };
        if done {
            if !ok {
                bail!("join failed");
            }
            break;
        }
    }
    let run = measure(secs, "roomcast-client", |gaps| {
        let mut n = 0;
        loop {
            // SAFETY: `ev` is writable; each filled event is freed right after it is read.
            let s = unsafe { rc_client_poll(client, ev.as_mut_ptr()) };
            if s != rc_status::RC_OK {
                return Ok(n);
            }
            // SAFETY: RC_OK means the event was written.
            let e = unsafe { ev.assume_init_mut() };
            match e.kind {
                rc_event_kind::RC_EVENT_MESSAGE => n += 1,
                rc_event_kind::RC_EVENT_GAP => *gaps += 1,
                _ => {}
            }
            // SAFETY: a filled event.
            unsafe { rc_event_free(e) };
        }
    });
    rc_client_free(client);
    run
}

fn rust_subscriber(quic: SocketAddr, ca_pem: &[u8], token: &str, secs: u64) -> Result<Run> {
    // The same shape as the C ABI's client: one runtime thread of its own.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-rust-client")
        .enable_all()
        .build()?;
    let mut cfg = ClientConfig::new(quic, ca_pem.to_vec(), token.to_owned());
    cfg.event_buffer = QUEUE as usize;
    let client = rt.block_on(async {
        let c = Client::connect(cfg).await?;
        c.join(ROOM, -1).await?;
        anyhow::Ok(c)
    })?;
    let run = measure(secs, "bench-rust-clie", |gaps| {
        let mut n = 0;
        while let Ok(ev) = client.events().try_recv() {
            match ev {
                ClientEvent::Message { .. } => n += 1,
                ClientEvent::Gap { .. } => *gaps += 1,
                _ => {}
            }
        }
        Ok(n)
    });
    rt.block_on(client.close());
    run
}
