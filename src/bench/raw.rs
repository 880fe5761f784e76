//! The raw-QUIC baseline: the least a fan-out server over quinn must do, speaking enough of
//! roomcast's protocol that the same client library and scenarios run against it.
//!
//! What it does: accept the control stream, answer `Hello` with `Welcome` (no token check), `Join`
//! with `Joined` (empty info), `Leave` with `Left`, `Ping` with `Pong`, and `Send` by encoding one
//! `Event::Message` frame and handing a `Bytes` clone of it to every connection that joined that
//! room id. Each connection has a writer task that writes `Event::Ready` first and then, on every
//! wake-up, drains everything queued for it and writes it with one `write_all_chunks`; low-priority
//! messages go as datagrams when they fit (and are dropped, like roomcast sheds them, when the
//! datagram buffer is full). What it does not do: rooms beyond a member list, moderation, classes,
//! rate limits, history or a store.
//!
//! Transport settings and socket buffers are roomcast's defaults ([`crate::config::Transport`]),
//! applied the way `server::endpoint` applies them, so a difference in a measurement is the relay's
//! own work (the datagram receive buffer is 16 KiB in both: quinn refuses to send datagrams when
//! receiving them is disabled). A connection's queue holds at most [`QUEUE`] events (roomcast's default ring size):
//! a member further behind loses the newest events, which is counted and printed at exit.

use super::BenchError;
use super::launch::{RAW_FILE, RawFile};
use crate::config::Transport;
use crate::protocol::{
    Class, ClientFrame, DEFAULT_MAX_FRAME, ErrorCode, Event, FrameReader, JoinInfo, Message,
    Request, Response, RoomInfo, ServerFrame, WireError, encode_datagram, encode_frame,
};
use arc_swap::ArcSwap;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Events queued per connection before newer ones are dropped (roomcast's default ring size).
pub const QUEUE: usize = 4096;

/// One queued delivery.
#[derive(Clone)]
enum Out {
    /// A stream frame.
    Frame(Bytes),
    /// A low-priority message: the datagram, and the frame to use when it does not fit.
    Low(Bytes, Bytes),
}

struct Member {
    conn: u64,
    tx: flume::Sender<Out>,
}

#[derive(Default)]
struct Group {
    members: ArcSwap<Vec<Arc<Member>>>,
    seq: AtomicU64,
}

/// Low-priority datagrams dropped because the connection's datagram buffer was full.
static DATAGRAMS_DROPPED: AtomicU64 = AtomicU64::new(0);

#[derive(Default)]
struct Hub {
    groups: RwLock<HashMap<String, Arc<Group>>>,
    next_conn: AtomicU64,
    dropped: AtomicU64,
}

impl Hub {
    fn group(&self, room: &str) -> Arc<Group> {
        if let Some(g) = self
            .groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(room)
        {
            return g.clone();
        }
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(room.to_owned())
            .or_default()
            .clone()
    }

    fn join(&self, room: &str, member: &Arc<Member>) -> u64 {
        let g = self.group(room);
        g.members.rcu(|v| {
            let mut v = Vec::clone(v);
            if !v.iter().any(|m| m.conn == member.conn) {
                v.push(member.clone());
            }
            v
        });
        g.members.load().len() as u64
    }

    fn leave(&self, room: &str, conn: u64) {
        let g = self.group(room);
        g.members.rcu(|v| {
            v.iter()
                .filter(|m| m.conn != conn)
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    fn send(&self, room: &str, from: &str, msg_type: String, body: Bytes, low: bool) -> (u64, u64) {
        let g = self.group(room);
        let seq = g.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = crate::server::relay::now_ms();
        let event = Event::Message(Message {
            room: room.to_owned(),
            seq,
            ts,
            from: from.to_owned(),
            msg_type,
            body,
            class: if low { Class::Low } else { Class::Normal },
        });
        let frame = encode_frame(&event);
        let out = if low {
            Out::Low(encode_datagram(&event), frame)
        } else {
            Out::Frame(frame)
        };
        let mut dropped = 0;
        for m in g.members.load().iter() {
            if m.tx.try_send(out.clone()).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        (seq, ts)
    }
}

/// Runs the baseline on `addr` until SIGTERM or Ctrl-C, writing the CA to `dir/ca.pem` and the
/// bound address to `dir/raw.json`. `transport` carries the settings the bench varies for both
/// targets: the write window (`delivery_window_us`) and the ACK frequency (`ack_every_packets`).
pub fn serve(addr: SocketAddr, dir: &Path, transport: Transport) -> Result<(), BenchError> {
    super::require_loopback("--addr", addr)?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let identity = crate::tls::ServerIdentity::generate(&[])?;
        let io = |what: String| move |source| BenchError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let ca = dir.join(crate::tls::DEV_CA_FILE);
        std::fs::write(&ca, identity.ca_pem.clone().unwrap_or_default())
            .map_err(io(format!("writing {}", ca.display())))?;
        let config = crate::config::Config {
            transport,
            ..Default::default()
        };
        let endpoint = endpoint(&config, addr, &identity)?;
        let transport = Arc::new(config.transport);
        let local = endpoint
            .local_addr()
            .map_err(io("reading the bound address".into()))?;
        let file = dir.join(RAW_FILE);
        let text = serde_json::to_string(&RawFile { quic: local }).unwrap_or_default();
        std::fs::write(&file, text).map_err(io(format!("writing {}", file.display())))?;
        eprintln!(
            "raw baseline: QUIC on {local}, write window {} us, ack every {} packets",
            transport.delivery_window_us, transport.ack_every_packets
        );

        let hub = Arc::new(Hub::default());
        let mut conns = tokio::task::JoinSet::new();
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                incoming = endpoint.accept() => match incoming {
                    Some(i) => { conns.spawn(connection(hub.clone(), i, transport.clone())); }
                    None => break,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        endpoint.close(1u32.into(), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        conns.shutdown().await;
        eprintln!(
            "raw baseline: stopped; {} events dropped on full queues, {} datagrams on full buffers",
            hub.dropped.load(Ordering::Relaxed),
            DATAGRAMS_DROPPED.load(Ordering::Relaxed)
        );
        Ok(())
    })
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn connection(hub: Arc<Hub>, incoming: quinn::Incoming, t: Arc<Transport>) {
    let hello = tokio::time::timeout(Duration::from_millis(t.hello_timeout_ms), async {
        let conn = incoming.await.ok()?;
        let (send, recv) = conn.accept_bi().await.ok()?;
        let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME);
        match reader.read::<ClientFrame>().await {
            Ok(Some(ClientFrame::Hello { .. })) => Some((conn, send, reader)),
            _ => {
                conn.close(4u32.into(), b"expected a hello");
                None
            }
        }
    })
    .await;
    let Ok(Some((conn, mut send, mut reader))) = hello else {
        return;
    };
    let conn_id = hub.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let user = format!("raw-{conn_id}");
    let Ok(stream) = conn.open_uni().await else {
        return;
    };
    let (tx, rx) = flume::bounded(QUEUE);
    let member = Arc::new(Member { conn: conn_id, tx });
    // The writer is owned here: it ends with the connection, or is aborted when this returns.
    let mut writer = tokio::task::JoinSet::new();
    writer.spawn(write_loop(
        conn.clone(),
        stream,
        rx,
        conn_id,
        Duration::from_micros(t.delivery_window_us),
        t.delivery_batch_bytes,
    ));
    let welcome = encode_frame(&ServerFrame::Welcome {
        user: user.clone(),
        conn_id,
        max_frame: DEFAULT_MAX_FRAME,
        max_event: 16 << 20,
    });
    if send.write_all(&welcome).await.is_err() {
        return;
    }
    let mut rooms: Vec<String> = Vec::new();
    while let Ok(Some(ClientFrame::Request { id, request })) = reader.read::<ClientFrame>().await {
        let result = match request {
            Request::Join { room, .. } => {
                let count = hub.join(&room, &member);
                if !rooms.contains(&room) {
                    rooms.push(room.clone());
                }
                Ok(Response::Joined(JoinInfo {
                    room: RoomInfo {
                        id: room.clone(),
                        name: room,
                        epoch: 0,
                        created_ms: 0,
                        member_count: count,
                        members: Vec::new(),
                        mute_all: false,
                    },
                    last_seq: 0,
                    muted: false,
                    history: Vec::new(),
                    attributes: Vec::new(),
                    attr_version: 0,
                }))
            }
            Request::Leave { room } => {
                hub.leave(&room, conn_id);
                rooms.retain(|r| *r != room);
                Ok(Response::Left)
            }
            Request::Send {
                room,
                msg_type,
                body,
                low,
            } => {
                let (seq, ts) = hub.send(&room, &user, msg_type, body, low);
                Ok(Response::Sent { seq, ts })
            }
            Request::Ping => Ok(Response::Pong),
            _ => Err(WireError::new(
                ErrorCode::BadRequest,
                "the raw baseline answers only join, leave, send and ping",
            )),
        };
        let reply = encode_frame(&ServerFrame::Reply { id, result });
        if send.write_all(&reply).await.is_err() {
            break;
        }
    }
    for r in &rooms {
        hub.leave(r, conn_id);
    }
    conn.close(0u32.into(), b"control stream finished");
}

async fn write_loop(
    conn: quinn::Connection,
    mut stream: quinn::SendStream,
    rx: flume::Receiver<Out>,
    conn_id: u64,
    window: Duration,
    batch_bytes: usize,
) {
    let mut out: Vec<Bytes> = vec![encode_frame(&Event::Ready { conn_id })];
    if stream.write_all_chunks(&mut out).await.is_err() {
        return;
    }
    out.clear();
    let mut last_write: Option<tokio::time::Instant> = None;
    // Registered once, not per message.
    let closed = conn.closed();
    tokio::pin!(closed);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut closed => return,
            m = rx.recv_async() => match m {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        // The relay's write window rule: a wake-up soon after the last write waits for the
        // window's end, unless a backlog (here: what is queued behind this message) fills
        // packets already.
        let now = tokio::time::Instant::now();
        if let Some(due) = crate::server::window_wait(last_write, window, now, || rx.len() as u64) {
            tokio::time::sleep_until(due).await;
        }
        let mut bytes = 0;
        let dgram_max = conn.max_datagram_size();
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Out::Frame(f) => {
                    bytes += f.len();
                    out.push(f);
                }
                Out::Low(d, f) => {
                    let fits = dgram_max.is_some_and(|max| d.len() <= max);
                    if fits && conn.datagram_send_buffer_space() < d.len() {
                        // A full buffer would make quinn drop older datagrams; drop this one.
                        DATAGRAMS_DROPPED.fetch_add(1, Ordering::Relaxed);
                    } else if !fits || conn.send_datagram(d).is_err() {
                        // Too large, or refused: the stream carries it, nothing is lost silently.
                        bytes += f.len();
                        out.push(f);
                    }
                }
            }
            if bytes < batch_bytes {
                next = rx.try_recv().ok();
            }
        }
        // Datagrams count as a write too, as in the relay.
        if !window.is_zero() {
            last_write = Some(tokio::time::Instant::now());
        }
        if !out.is_empty() {
            if stream.write_all_chunks(&mut out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}

/// A QUIC endpoint with roomcast's transport settings and socket buffers: the same function the
/// relay binds with, so the baseline and roomcast cannot drift apart.
fn endpoint(
    config: &crate::config::Config,
    addr: SocketAddr,
    identity: &crate::tls::ServerIdentity,
) -> Result<quinn::Endpoint, BenchError> {
    crate::server::endpoint(config, identity, addr, false)
        .map_err(|e| BenchError::Setup(format!("raw baseline endpoint: {e}")))
}
