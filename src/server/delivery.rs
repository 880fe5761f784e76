//! A connection's delivery task: reads each joined room's ring at its own cursor and writes what it
//! finds to the connection's delivery stream (and low-priority messages as datagrams).
//!
//! Coalescing: every wake-up drains everything that is ready in every room (up to
//! `delivery_batch_bytes`) and writes it with one vectored write, so one packet carries as many
//! frames as fit. There is no timer: an idle connection sleeps on its [`Signal`].
//!
//! Lag: the task never makes a publisher wait. When the connection's flow control holds a write
//! back, the ring moves on; on the next read the task finds its cursor overwritten, skips to the
//! newest half of the ring, and sends `Gap{low, normal}` with the exact counts it skipped (from the
//! cumulative per-class counters on every ring entry).

use super::relay::DeliveryCmd;
use crate::metrics as m;
use crate::protocol::{Class, Event, KickReason, encode_frame};
use crate::room::ring::{ClassCounts, class_index};
use crate::room::{Read, Room, Signal};
use bytes::Bytes;
use std::sync::Arc;

struct Sub {
    room: Arc<Room>,
    cursor: u64,
    cum: ClassCounts,
}

/// Per-batch tallies, flushed to the metrics once per write.
#[derive(Default)]
struct Tally {
    stream: ClassCounts,
    datagram: ClassCounts,
    stream_bytes: u64,
    datagram_bytes: u64,
    gaps: ClassCounts,
}

const CLASSES: [Class; 3] = [Class::Protected, Class::Normal, Class::Low];

impl Tally {
    fn flush(&self) {
        for c in CLASSES {
            let i = class_index(c);
            if self.stream[i] > 0 {
                metrics::counter!(m::MESSAGES_OUT, "class" => c.as_str(), "lane" => "stream")
                    .increment(self.stream[i]);
            }
            if self.datagram[i] > 0 {
                metrics::counter!(m::MESSAGES_OUT, "class" => c.as_str(), "lane" => "datagram")
                    .increment(self.datagram[i]);
            }
            if self.gaps[i] > 0 {
                metrics::counter!(m::GAP_MESSAGES, "class" => c.as_str()).increment(self.gaps[i]);
            }
        }
        if self.stream_bytes > 0 {
            metrics::counter!(m::BYTES_OUT, "lane" => "stream").increment(self.stream_bytes);
        }
        if self.datagram_bytes > 0 {
            metrics::counter!(m::BYTES_OUT, "lane" => "datagram").increment(self.datagram_bytes);
        }
    }
}

/// The delivery side of one connection.
pub(crate) struct Delivery {
    pub conn: quinn::Connection,
    pub stream: quinn::SendStream,
    pub rx: flume::Receiver<DeliveryCmd>,
    pub signal: Arc<Signal>,
    pub conn_id: u64,
    pub batch_bytes: usize,
}

impl Delivery {
    /// Runs until the connection closes or its stream fails.
    pub async fn run(mut self) {
        let mut subs: Vec<Sub> = Vec::new();
        let mut out: Vec<Bytes> = vec![encode_frame(&Event::Ready {
            conn_id: self.conn_id,
        })];
        loop {
            while let Ok(cmd) = self.rx.try_recv() {
                self.apply(cmd, &mut subs, &mut out);
            }
            let mut tally = Tally::default();
            let more = self.drain(&mut subs, &mut out, &mut tally);
            if !out.is_empty() {
                tally.stream_bytes += out.iter().map(|b| b.len() as u64).sum::<u64>();
                if self.stream.write_all_chunks(&mut out).await.is_err() {
                    break;
                }
                out.clear();
            }
            tally.flush();
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                biased;
                _ = self.conn.closed() => break,
                cmd = self.rx.recv_async() => match cmd {
                    Ok(cmd) => self.apply(cmd, &mut subs, &mut out),
                    Err(_) => break,
                },
                _ = self.signal.wait() => {}
            }
        }
        for s in &subs {
            s.room.watchers.remove(self.conn_id);
        }
    }

    fn apply(&self, cmd: DeliveryCmd, subs: &mut Vec<Sub>, out: &mut Vec<Bytes>) {
        match cmd {
            DeliveryCmd::Subscribe { room, at } => {
                if subs.iter().any(|s| Arc::ptr_eq(&s.room, &room)) {
                    return;
                }
                subs.retain(|s| s.room.id != room.id);
                room.watchers.add(self.conn_id, self.signal.clone());
                subs.push(Sub {
                    room,
                    cursor: at.pos,
                    cum: at.cum,
                });
                // Anything published between the join and the registration is read on this pass.
                self.signal.notify();
            }
            DeliveryCmd::Unsubscribe { room, kicked } => {
                subs.retain(|s| {
                    let keep = s.room.id != room;
                    if !keep {
                        s.room.watchers.remove(self.conn_id);
                    }
                    keep
                });
                if let Some(reason) = kicked {
                    out.push(kick_frame(&room, reason));
                }
            }
            DeliveryCmd::Event(frame) => out.push(frame),
        }
    }

    /// Reads every subscription up to the batch limit; true if something is left to read.
    fn drain(&self, subs: &mut Vec<Sub>, out: &mut Vec<Bytes>, tally: &mut Tally) -> bool {
        let mut budget = self.batch_bytes;
        let dgram_max = self.conn.max_datagram_size();
        let mut more = false;
        let mut gone = Vec::new();
        for (i, sub) in subs.iter_mut().enumerate() {
            let mut first_published = None;
            loop {
                if budget == 0 {
                    more = true;
                    break;
                }
                match sub.room.ring.read(sub.cursor) {
                    Read::Empty => {
                        if !sub.room.is_closed() {
                            break;
                        }
                        // Closed: a publish may have landed between the read and the check.
                        if !sub.room.ring.read(sub.cursor).is_empty() {
                            continue;
                        }
                        {
                            gone.push(i);
                            out.push(encode_frame(&Event::RoomDestroyed {
                                room: sub.room.id.clone(),
                                reason: sub
                                    .room
                                    .destroy_reason()
                                    .unwrap_or(crate::protocol::DestroyReason::Manual),
                            }));
                        }
                        break;
                    }
                    Read::Lagged { oldest } => {
                        let tail = sub.room.ring.tail();
                        sub.cursor = oldest.max(tail.saturating_sub(sub.room.ring.capacity() / 2));
                    }
                    Read::Entry(e) => {
                        let ci = class_index(e.class);
                        let mut missed = [0u64; 3];
                        for (k, miss) in missed.iter_mut().enumerate() {
                            let own = u64::from(k == ci);
                            *miss = e.cum[k].saturating_sub(own).saturating_sub(sub.cum[k]);
                            tally.gaps[k] += *miss;
                        }
                        let (low, normal) = (
                            missed[class_index(Class::Low)],
                            missed[class_index(Class::Normal)],
                        );
                        if low > 0 || normal > 0 {
                            out.push(encode_frame(&Event::Gap {
                                room: sub.room.id.clone(),
                                low,
                                normal,
                            }));
                        }
                        sub.cum = e.cum;
                        sub.cursor = e.pos + 1;
                        first_published.get_or_insert(e.published);
                        match (&e.datagram, dgram_max) {
                            (Some(d), Some(max)) if d.len() <= max => {
                                if self.conn.send_datagram(d.clone()).is_ok() {
                                    tally.datagram[ci] += 1;
                                    tally.datagram_bytes += d.len() as u64;
                                }
                            }
                            _ => {
                                budget = budget.saturating_sub(e.frame.len());
                                tally.stream[ci] += 1;
                                out.push(e.frame.clone());
                            }
                        }
                    }
                }
            }
            if let Some(at) = first_published {
                metrics::histogram!(m::FANOUT_LATENCY).record(at.elapsed().as_secs_f64());
            }
        }
        for i in gone.into_iter().rev() {
            let s = subs.swap_remove(i);
            s.room.watchers.remove(self.conn_id);
        }
        more
    }
}

fn kick_frame(room: &str, reason: KickReason) -> Bytes {
    encode_frame(&Event::Kicked {
        room: room.to_owned(),
        reason,
    })
}

impl Read {
    fn is_empty(&self) -> bool {
        matches!(self, Read::Empty)
    }
}
