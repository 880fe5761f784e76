//! Live traffic across relays is exact: real `roomcast serve` processes on a real
//! `nats-server -js` (`tests/nats_support`), clients over real QUIC on loopback. A relay that
//! misses part of a room's live traffic (its NATS connection cut for a moment, or its first
//! member joining while messages flow) places what history holds in seq order before what
//! comes next, and tells its members the rest in a `Gap` of the right class; nothing comes
//! twice. A resume on a relay that neither owned the room nor owns it now does not count the
//! numbers an ownership change left unused. No sleeps: every wait is for an event, or a bounded
//! poll of another process's `/metrics`.

mod common;
mod nats_support;

use common::{body, metric, poll};
use nats_support::serve::Serve;
use roomcast::client::{Client, ClientEvent};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Upper bound on one member's reading: only turns a hang into a failure.
const COLLECT: Duration = Duration::from_secs(30);

/// A TCP proxy on loopback between one relay and the NATS server: cutting it closes every
/// connection through it and refuses new ones until it is restored, as a network blip does;
/// swallowing swallows what the relay's cluster connection (leases, forwarding, live traffic)
/// sends from then on, while its store's connection goes on.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    swallow: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

/// Copies `inbound` to `outbound` and back; what the relay sends on its cluster connection
/// (named `roomcast <node> cluster` in its CONNECT) is dropped while `swallow` is set.
async fn relay_conn(inbound: TcpStream, outbound: TcpStream, swallow: Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_relay, mut to_relay) = inbound.into_split();
    let (mut from_nats, mut to_nats) = outbound.into_split();
    let back = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_nats, &mut to_relay).await;
    });
    let mut buf = vec![0; 16 * 1024];
    let mut head = Vec::new();
    let mut cluster = false;
    while let Ok(n) = from_relay.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if !cluster && head.len() < 8192 {
            head.extend_from_slice(&buf[..n]);
            cluster = head.windows(9).any(|w| w == b" cluster\"");
        }
        if cluster && swallow.load(Ordering::SeqCst) {
            continue;
        }
        if to_nats.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    back.abort();
}

impl Proxy {
    async fn start(to: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let up = Arc::new(AtomicBool::new(true));
        let swallow = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let (up, swallow, conns) = (up.clone(), swallow.clone(), conns.clone());
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        continue; // dropped: refused while cut
                    }
                    let swallow = swallow.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(to).await {
                            relay_conn(inbound, outbound, swallow).await;
                        }
                    });
                    conns.lock().expect("lock").push(task);
                }
            }
        });
        Proxy {
            addr,
            up,
            swallow,
            conns,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Closes every connection through the proxy and refuses new ones.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().expect("lock").drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// From now on, what the relay's cluster connection sends goes nowhere.
    fn swallow_cluster(&self) {
        self.swallow.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

fn nats_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("nats://")
        .parse()
        .expect("a loopback address")
}

/// Waits until the gauge `name` of `relay` is `value`.
async fn gauge_becomes(relay: &Serve, name: &str, value: f64) {
    poll(&format!("{name} = {value}"), || async {
        (metric(&relay.metrics().await, name, &[]) == Some(value)).then_some(())
    })
    .await;
}

/// What one member received of a room: message seqs in arrival order, and `Gap` totals.
#[derive(Debug, Default)]
struct Received {
    seqs: Vec<u64>,
    low_gap: u64,
    normal_gap: u64,
}

/// Reads `client`'s events of `room` until it has the message `last` (or one after it).
async fn read_until(client: &Client, room: &str, got: &mut Received, last: u64) {
    let reading = async {
        while got.seqs.last().is_none_or(|s| *s < last) {
            match client.next_event().await.expect("the event stream is open") {
                ClientEvent::Message { message, .. } if message.room == room => {
                    got.seqs.push(message.seq);
                }
                ClientEvent::Gap {
                    room: r,
                    low,
                    normal,
                } if r == room => {
                    got.low_gap += low;
                    got.normal_gap += normal;
                }
                ClientEvent::Closed { code, reason } => {
                    panic!("{}: closed ({code:?}): {reason}", client.user())
                }
                _ => {}
            }
        }
    };
    if tokio::time::timeout(COLLECT, reading).await.is_err() {
        panic!(
            "{}: no message {last} of {room} within {COLLECT:?}; got {got:?}",
            client.user()
        );
    }
}

/// Sends `n` messages as `client` (low-priority where `low(i)`); their seqs.
async fn send(client: &Client, room: &str, n: usize, low: impl Fn(usize) -> bool) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let (seq, _) = client
            .send(room, "chat", body(&format!("m{i}")), low(i))
            .await
            .expect("sent");
        seqs.push(seq);
    }
    seqs
}

/// Sends `n` messages as `client`, sending each again on an interval while it is refused with
/// `UNAVAILABLE` (sent to no one: a dead owner's lease is running out), within [`COLLECT`];
/// their seqs.
async fn send_retrying(client: &Client, room: &str, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    let deadline = tokio::time::Instant::now() + COLLECT;
    let mut retry = tokio::time::interval(Duration::from_millis(50));
    while seqs.len() < n {
        match client.send(room, "chat", body("later"), false).await {
            Ok((seq, _)) => seqs.push(seq),
            Err(e)
                if e.code() == Some(roomcast::protocol::ErrorCode::Unavailable)
                    && tokio::time::Instant::now() < deadline =>
            {
                retry.tick().await;
            }
            Err(e) => panic!("send: {e}"),
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_off_from_nats_for_a_moment_gets_what_history_holds_and_counts_the_rest() {
    let Some(bin) = nats_support::binary("live_hole_after_a_cut") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let proxy = Proxy::start(nats_addr(&nats.url())).await;
    let a = Serve::start(dir.path(), "relay-a", &nats.url(), "");
    // B reaches NATS through the proxy only.
    let b = Serve::start(dir.path(), "relay-b", &proxy.url(), "");
    a.create_room_known_by("r", &[&b]).await;
    let ann = a.client("ann").await;
    ann.join("r", -1).await.expect("ann joins on A");
    let bea = b.client("bea").await;
    let joined = bea.join("r", -1).await.expect("bea joins on B");

    // Before the cut: A owns the room, B gets its traffic.
    let before = send(&ann, "r", 5, |_| false).await;
    let mut got = Received::default();
    read_until(&bea, "r", &mut got, before[4]).await;
    assert_eq!(got.seqs, before);

    // B cut off: A goes on sequencing, 8 normal and 4 low-priority messages B never receives.
    proxy.cut();
    gauge_becomes(&b, "roomcast_cluster_connected", 0.0).await;
    let during = send(&ann, "r", 12, |i| i % 3 == 2).await;
    proxy.restore();
    gauge_becomes(&b, "roomcast_cluster_connected", 1.0).await;
    gauge_becomes(&b, "roomcast_store_healthy", 1.0).await;

    // After it: the next live message shows B the hole.
    let after = send(&ann, "r", 5, |_| false).await;
    read_until(&bea, "r", &mut got, after[4]).await;
    let stored: Vec<u64> = during
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 2)
        .map(|(_, s)| *s)
        .collect();
    let mut want = before.clone();
    want.extend(&stored);
    want.extend(&after);
    assert!(joined.last_seq < before[0]);
    assert_eq!(
        got.seqs, want,
        "every stored message once, in order, the low-priority ones of the cut not at all"
    );
    assert_eq!(
        (got.low_gap, got.normal_gap),
        (4, 0),
        "the low-priority messages of the cut are counted exactly: {got:?}"
    );
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "roomcast_cluster_live_filled_messages_total", &[]),
        Some(stored.len() as f64),
        "B placed the stored ones from history"
    );
    drop((ann, bea));
    drop((a, b, proxy));
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_a_busy_room_on_a_relay_without_members_gets_every_message_from_its_join_point()
 {
    let Some(bin) = nats_support::binary("live_first_join_window") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let a = Serve::start(dir.path(), "relay-a", &nats.url(), "");
    let b = Serve::start(dir.path(), "relay-b", &nats.url(), "");
    a.create_room_known_by("r", &[&b]).await;
    let ann = a.client("ann").await;
    ann.join("r", -1).await.expect("ann joins on A");
    ann.send("r", "chat", body("first"), false)
        .await
        .expect("A owns the room");

    // A paced publisher on A, bounded in count, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let newest = Arc::new(AtomicU64::new(0));
    let publisher = tokio::spawn({
        let (stop, newest) = (stop.clone(), newest.clone());
        async move {
            let mut pace = tokio::time::interval(Duration::from_millis(2));
            for i in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                pace.tick().await;
                let (seq, _) = ann
                    .send("r", "chat", body(&format!("p{i}")), false)
                    .await
                    .expect("sent on A");
                newest.store(seq, Ordering::SeqCst);
            }
            ann
        }
    });

    // Each round, B has no member of the room: the join makes its live subscription while
    // messages flow. From the join point on, every message comes once, in order: every seq is
    // one (one owner, all stored), so none may be skipped without a Gap.
    for round in 0..12 {
        let bob = b.client(&format!("bob{round}")).await;
        let info = bob.join("r", -1).await.expect("joins on B");
        poll("messages after the join", || async {
            (newest.load(Ordering::SeqCst) >= info.last_seq + 40).then_some(())
        })
        .await;
        let upto = newest.load(Ordering::SeqCst);
        let mut got = Received::default();
        read_until(&bob, "r", &mut got, upto).await;
        let want: Vec<u64> = (info.last_seq + 1..=got.seqs.last().copied().unwrap_or(0)).collect();
        assert_eq!(
            got.seqs, want,
            "round {round}: every message after the join point {} once, in order",
            info.last_seq
        );
        assert_eq!((got.low_gap, got.normal_gap), (0, 0), "round {round}");
        bob.leave("r").await.expect("leaves");
        gauge_becomes(&b, "roomcast_cluster_live_rooms", 0.0).await;
        bob.close().await;
    }
    stop.store(true, Ordering::SeqCst);
    let ann = publisher.await.expect("the publisher ends");
    drop(ann);
    drop((a, b));
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_third_relay_across_an_ownership_change_does_not_count_the_unused_numbers() {
    let Some(bin) = nats_support::binary("resume_across_an_owner_change") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let extra = "lease_ttl_ms = 1500\n";
    let mut a = Serve::start(dir.path(), "relay-a", &nats.url(), extra);
    let b = Serve::start(dir.path(), "relay-b", &nats.url(), extra);
    let c = Serve::start(dir.path(), "relay-c", &nats.url(), extra);
    a.create_room_known_by("r", &[&b, &c]).await;
    let ann = a.client("ann").await;
    let epoch = ann.join("r", 0).await.expect("joins on A").room.epoch;
    let old = send(&ann, "r", 3, |_| false).await;

    // A dies with numbers reserved and unused; B takes the room on its first send.
    a.kill();
    let bea = b.client("bea").await;
    bea.join("r", 0).await.expect("joins on B");
    let new = send_retrying(&bea, "r", 2).await;
    assert!(
        new[0] > old[2] + 1,
        "the new owner numbers above what A reserved: {old:?} {new:?}"
    );

    // A member that had the first message resumes on C, which has no member of the room and
    // never owned it: the replay spans the change, and nothing is missed.
    let mut attempt = 0;
    let from = old[0];
    let (missed, seqs) = poll("C knows the range the change left unused", || {
        attempt += 1;
        let user = format!("cal{attempt}");
        let c = &c;
        async move {
            let cal = c.client(&user).await;
            cal.resume("r", epoch, from).await.expect("resumes on C");
            let mut missed = None;
            let mut seqs = Vec::new();
            let reading = async {
                while seqs.len() < 4 {
                    match cal.next_event().await.expect("events") {
                        ClientEvent::Resumed { missed: m, .. } => missed = Some(m),
                        ClientEvent::Message { message, .. } => seqs.push(message.seq),
                        _ => {}
                    }
                }
            };
            tokio::time::timeout(COLLECT, reading)
                .await
                .expect("the replay");
            cal.close().await;
            let missed = missed.expect("Resumed first");
            eprintln!("{user} resumed on C from {from}: missed {missed}, replayed {seqs:?}");
            (missed == 0).then_some((missed, seqs))
        }
    })
    .await;
    assert_eq!(missed, 0);
    assert_eq!(
        seqs,
        [old[1], old[2], new[0], new[1]],
        "replayed across the change"
    );
    drop((ann, bea));
    drop((b, c));
    drop(nats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_sigkilled_after_acknowledging_sends_it_never_published_live_loses_none() {
    let Some(bin) = nats_support::binary("live_owner_died_before_publishing") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let nats = nats_support::NatsServer::start(&bin, &dir.path().join("nats"));
    let proxy = Proxy::start(nats_addr(&nats.url())).await;
    // A lease long enough that A still sequences the sends it answers once its renewals stop
    // reaching NATS (it stops three quarters of a TTL after its last renewal).
    let extra = "lease_ttl_ms = 3000\n";
    // A reaches NATS through the proxy; B and C directly.
    let mut a = Serve::start(dir.path(), "relay-a", &proxy.url(), extra);
    let b = Serve::start(dir.path(), "relay-b", &nats.url(), extra);
    let c = Serve::start(dir.path(), "relay-c", &nats.url(), extra);
    a.create_room_known_by("r", &[&b, &c]).await;
    let amy = a.client("amy").await;
    amy.join("r", -1).await.expect("amy joins on A");
    let first = send(&amy, "r", 1, |_| false).await;
    let bob = b.client("bob").await;
    let cal = c.client("cal").await;
    let from = bob.join("r", -1).await.expect("bob joins on B").last_seq;
    cal.join("r", -1).await.expect("cal joins on C");
    let live = send(&amy, "r", 3, |_| false).await;
    let (mut got_b, mut got_c) = (Received::default(), Received::default());
    read_until(&bob, "r", &mut got_b, live[2]).await;
    read_until(&cal, "r", &mut got_c, live[2]).await;

    // A stores and acknowledges sends, but their live publish never leaves it; then it dies.
    proxy.swallow_cluster();
    let unpublished = send(&amy, "r", 5, |_| false).await;
    a.kill();

    // A publisher on B: its sends are taken by a survivor once A's lease ran out.
    let publisher = b.client("pub").await;
    publisher.join("r", 0).await.expect("pub joins on B");
    let later = send_retrying(&publisher, "r", 3).await;
    let mut want: Vec<u64> = live.clone();
    want.extend(&unpublished);
    want.extend(&later);
    assert!(from >= first[0]);
    for (member, got) in [(&bob, &mut got_b), (&cal, &mut got_c)] {
        read_until(member, "r", got, later[2]).await;
        assert_eq!(
            got.seqs,
            want,
            "{}: every acknowledged message once, in order",
            member.user()
        );
        assert_eq!((got.low_gap, got.normal_gap), (0, 0), "nothing to count");
    }
    drop((amy, bob, cal, publisher));
    drop((b, c, proxy));
    drop(nats);
}
