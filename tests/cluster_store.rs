//! The JetStream store against a real `nats-server -js` (see `tests/nats_support`): the store
//! cases of the embedded store run on both backends through the `Store` trait (a round trip
//! through a reopen, retention by count, recall, deleting a room, history paging), then what
//! only a shared store has: retention by age in JetStream, the history fence and the KV
//! revision refusing a second writer (`Fenced`), and NATS stopped and restarted (writes
//! refused as unavailable, nothing acknowledged lost, writes back by themselves).

mod nats_support;

use bytes::Bytes;
use roomcast::policy::{DestroyPolicy, GlobalPolicy, Moderation};
use roomcast::protocol::Class;
use roomcast::store::{
    AttrRecord, Durability, NatsConfig, NatsStore, Op, RedbStore, RoomRecord, Store, StoreConfig,
    StoreError, StoreHealth, StoredMessage,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(history_max: usize, max_age_ms: u64) -> StoreConfig {
    StoreConfig {
        durability: Durability::Sync,
        flush_ms: 10,
        history_max,
        history_max_age_ms: max_age_ms,
        cache_bytes: 16 << 20,
    }
}

fn nats_cfg(url: &str) -> NatsConfig {
    nats_support::store_config(url, "test")
}

/// A store backend the shared cases open, close and open again.
enum Backend {
    Redb(PathBuf),
    Nats(String),
}

impl Backend {
    fn open(&self, cfg: StoreConfig) -> Arc<dyn Store> {
        match self {
            Backend::Redb(p) => Arc::new(RedbStore::open(p, cfg).expect("redb opens")),
            Backend::Nats(url) => {
                Arc::new(NatsStore::open(nats_cfg(url), cfg).expect("NATS opens"))
            }
        }
    }
}

/// Runs `case` on redb, then on a fresh nats-server (when there is one).
fn on_both(test: &str, case: impl Fn(&Backend)) {
    let dir = tempfile::tempdir().expect("tempdir");
    case(&Backend::Redb(dir.path().join("store.redb")));
    let Some(bin) = nats_support::binary(test) else {
        return;
    };
    let nats = nats_support::NatsServer::start(&bin, dir.path());
    case(&Backend::Nats(nats.url()));
}

fn room(id: &str) -> RoomRecord {
    RoomRecord {
        id: id.into(),
        name: format!("Room {id}"),
        epoch: 3,
        created_ms: 1_000,
        policy: DestroyPolicy::idle(None),
        destroy_at_ms: None,
        member_events: true,
        moderation: Moderation::default(),
        last_activity_ms: 2_000,
        seq_reserved: 500,
        attr_version: 0,
    }
}

fn msg(seq: u64, ts: u64) -> StoredMessage {
    StoredMessage {
        seq,
        ts,
        from: format!("user{}", seq % 3),
        msg_type: "text".into(),
        body: Bytes::from(format!("body {seq}")),
        class: [Class::Protected, Class::Normal, Class::Low][(seq % 3) as usize],
        recalled: false,
    }
}

fn append(room: &str, seq: u64, ts: u64) -> Op {
    Op::Append {
        room: room.into(),
        msg: msg(seq, ts),
    }
}

fn attr(value: &str, set_ms: u64) -> AttrRecord {
    AttrRecord {
        value: value.into(),
        owner: "alice".into(),
        auto_delete: false,
        set_ms,
    }
}

fn apply(store: &dyn Store, ops: Vec<Op>) -> Result<(), StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(store.submit(ops).wait())
}

fn seqs(msgs: &[StoredMessage]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

#[test]
fn every_op_round_trips_through_a_reopen() {
    on_both("every_op_round_trips_through_a_reopen", |b| {
        let mut lobby = room("eu.lobby");
        lobby.policy = DestroyPolicy::lifetime(90);
        lobby.moderation = Moderation {
            bans: BTreeMap::from([("mallory".into(), 9_000)]),
            mutes: BTreeMap::from([("bob".into(), 8_000)]),
            mute_all: true,
            mute_all_whitelist: BTreeSet::from(["alice".into()]),
            user_whitelist: BTreeSet::from(["carol".into()]),
        };
        let games = room("games");
        let global = GlobalPolicy {
            global_mutes: BTreeMap::from([("spammer".into(), 77)]),
            type_whitelist: BTreeSet::from(["alert".into()]),
            low_types: BTreeSet::from(["typing".into()]),
            keepalive: BTreeSet::from(["eu.lobby".into()]),
        };
        {
            let store = b.open(cfg(100, 3_600_000));
            let s = store.load().expect("load");
            assert!(s.rooms.is_empty() && s.global == GlobalPolicy::default());
            apply(
                &*store,
                vec![
                    Op::PutAttr {
                        room: "eu.lobby".into(),
                        key: "topic".into(),
                        attr: attr("hello", 1),
                    },
                    Op::PutRoom(lobby.clone()),
                    Op::PutRoom(games.clone()),
                    Op::PutGlobal(global.clone()),
                ],
            )
            .expect("first batch");
            apply(
                &*store,
                vec![
                    Op::PutAttr {
                        room: "eu.lobby".into(),
                        key: "pinned".into(),
                        attr: attr("42", 2),
                    },
                    Op::DeleteAttr {
                        room: "eu.lobby".into(),
                        key: "topic".into(),
                    },
                    Op::ReserveSeq {
                        room: "eu.lobby".into(),
                        upto: 900,
                    },
                    Op::ReserveSeq {
                        room: "eu.lobby".into(),
                        upto: 800,
                    },
                    Op::Touch {
                        room: "games".into(),
                        at_ms: 5_000,
                    },
                    append("eu.lobby", 1, 10),
                    append("eu.lobby", 2, 20),
                    append("eu.lobby", 3, 30),
                    append("games", 7, 70),
                    Op::Recall {
                        room: "eu.lobby".into(),
                        seq: 2,
                    },
                    Op::Recall {
                        room: "eu.lobby".into(),
                        seq: 99,
                    },
                ],
            )
            .expect("second batch");
            store.close();
        }
        let store = b.open(cfg(100, 3_600_000));
        let mut s = store.load().expect("reload");
        s.rooms.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        assert_eq!(s.global, global);
        assert_eq!(s.rooms.len(), 2);
        let (l, g) = (&s.rooms[0], &s.rooms[1]);
        let mut want_lobby = lobby.clone();
        want_lobby.seq_reserved = 900;
        assert_eq!(l.record, want_lobby);
        assert_eq!(l.attrs, vec![("pinned".to_owned(), attr("42", 2))]);
        assert_eq!(l.newest, Some((3, 30)));
        assert_eq!(g.record.last_activity_ms, 5_000);
        assert_eq!(g.newest, Some((7, 70)));
        let h = store.history("eu.lobby", None, 10).expect("history");
        assert_eq!(seqs(&h), [1, 2, 3]);
        assert!(h[1].recalled && h[1].body.is_empty(), "{:?}", h[1]);
        assert_eq!(h[0], msg(1, 10));
        assert_eq!(
            store
                .message("eu.lobby", 2)
                .expect("read")
                .map(|m| m.recalled),
            Some(true)
        );
        assert_eq!(store.message("eu.lobby", 4).expect("read"), None);
        store.close();
    });
}

#[test]
fn history_pages_and_retention_by_count_keeps_exactly_history_max() {
    on_both("history_pages_and_retention_by_count", |b| {
        let store = b.open(cfg(5, 3_600_000));
        let _ = store.load().expect("load");
        apply(
            &*store,
            vec![Op::PutRoom(room("r")), Op::PutRoom(room("other"))],
        )
        .expect("rooms");
        for seq in 1..=8 {
            apply(&*store, vec![append("r", seq, seq * 10)]).expect("append");
        }
        apply(&*store, vec![append("other", 1, 10)]).expect("append");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("all")),
            [4, 5, 6, 7, 8]
        );
        assert_eq!(seqs(&store.history("r", None, 2).expect("newest")), [7, 8]);
        assert_eq!(seqs(&store.history("r", Some(7), 2).expect("page")), [5, 6]);
        assert_eq!(
            seqs(&store.history("r", Some(4), 2).expect("end")),
            Vec::<u64>::new()
        );
        assert_eq!(store.message("r", 3).expect("read"), None, "trimmed");
        assert_eq!(
            seqs(&store.history("other", None, 100).expect("other")),
            [1]
        );
        store.close();
        let store = b.open(cfg(5, 3_600_000));
        let _ = store.load().expect("reload");
        assert_eq!(
            seqs(&store.history("r", None, 100).expect("all")),
            [4, 5, 6, 7, 8]
        );
        store.close();
    });
}

#[test]
fn delete_room_removes_its_attrs_and_history_only_and_a_new_life_starts_empty() {
    on_both("delete_room_removes_its_attrs_and_history_only", |b| {
        let store = b.open(cfg(100, 3_600_000));
        let _ = store.load().expect("load");
        for id in ["a", "a.b", "gone"] {
            apply(
                &*store,
                vec![
                    Op::PutRoom(room(id)),
                    Op::PutAttr {
                        room: id.into(),
                        key: "k".into(),
                        attr: attr("v", 1),
                    },
                    append(id, 1, 10),
                    append(id, 2, 20),
                ],
            )
            .expect("room");
        }
        apply(&*store, vec![Op::DeleteRoom("a".into())]).expect("delete");
        apply(&*store, vec![Op::DeleteRoom("gone".into())]).expect("delete");
        assert!(store.history("a", None, 10).expect("read").is_empty());
        assert_eq!(seqs(&store.history("a.b", None, 10).expect("read")), [1, 2]);
        let mut again = room("a");
        again.epoch = 4;
        apply(
            &*store,
            vec![Op::PutRoom(again.clone()), append("a", 1, 30)],
        )
        .expect("new life");
        store.close();
        let store = b.open(cfg(100, 3_600_000));
        let mut s = store.load().expect("reload");
        s.rooms.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        assert_eq!(s.rooms.len(), 2, "a deleted room stays deleted");
        assert_eq!(s.rooms[0].record, again);
        assert!(s.rooms[0].attrs.is_empty(), "attributes went with the room");
        assert_eq!(s.rooms[1].attrs.len(), 1);
        let h = store.history("a", None, 10).expect("read");
        assert_eq!(seqs(&h), [1]);
        assert_eq!(h[0].ts, 30, "only the new life's message");
        store.close();
    });
}

/// A nats-server for one test, or `None` (said on stderr) when there is none.
fn nats_for(test: &str, dir: &Path) -> Option<nats_support::NatsServer> {
    let bin = nats_support::binary(test)?;
    Some(nats_support::NatsServer::start(&bin, dir))
}

/// Polls `cond` every 20 ms until it holds, for at most `secs`.
fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn jetstream_retention_by_age_expires_messages_and_appends_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = nats_for("jetstream_retention_by_age", dir.path()) else {
        return;
    };
    let b = Backend::Nats(nats.url());
    let store = b.open(cfg(100, 1_000));
    let _ = store.load().expect("load");
    apply(
        &*store,
        vec![
            Op::PutRoom(room("r")),
            append("r", 1, 10),
            append("r", 2, 20),
        ],
    )
    .expect("append");
    assert_eq!(seqs(&store.history("r", None, 10).expect("read")), [1, 2]);
    eventually("the messages to expire", 15, || {
        store.history("r", None, 10).expect("read").is_empty()
    });
    // Every message of the room expired: the fence expects an empty subject now, and takes it.
    apply(&*store, vec![append("r", 3, 30)]).expect("an append after all expired");
    assert_eq!(seqs(&store.history("r", None, 10).expect("read")), [3]);
    store.close();
}

#[test]
fn a_second_writer_is_fenced_off_history_and_room_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(nats) = nats_for("a_second_writer_is_fenced", dir.path()) else {
        return;
    };
    let b = Backend::Nats(nats.url());
    let first = b.open(cfg(100, 3_600_000));
    let _ = first.load().expect("load");
    apply(&*first, vec![Op::PutRoom(room("r")), append("r", 1, 10)]).expect("first writes");
    // A second store on the same NATS loads what the first wrote and writes after it.
    let second = b.open(cfg(100, 3_600_000));
    let loaded = second.load().expect("load");
    assert_eq!(loaded.rooms[0].newest, Some((1, 10)));
    apply(&*second, vec![append("r", 2, 20)]).expect("the second appends");
    apply(
        &*second,
        vec![Op::ReserveSeq {
            room: "r".into(),
            upto: 2_000,
        }],
    )
    .expect("the second writes the room");
    // The first still believes it is the writer: both its append and its room write are refused.
    let e = apply(&*first, vec![append("r", 2, 21)]).expect_err("a stale append");
    assert!(matches!(e, StoreError::Fenced(_)), "{e:?}");
    assert!(e.message().contains("another writer"), "{e}");
    let e = apply(
        &*first,
        vec![Op::ReserveSeq {
            room: "r".into(),
            upto: 3_000,
        }],
    )
    .expect_err("a stale room write");
    assert!(matches!(e, StoreError::Fenced(_)), "{e:?}");
    // A fenced write is not an outage: the first store stays healthy for other rooms.
    assert_eq!(first.health(), StoreHealth::Healthy);
    apply(
        &*first,
        vec![Op::PutRoom(room("mine")), append("mine", 1, 5)],
    )
    .expect("other room");
    let h = second.history("r", None, 10).expect("read");
    assert_eq!(
        h.iter().map(|m| (m.seq, m.ts)).collect::<Vec<_>>(),
        [(1, 10), (2, 20)]
    );
    first.close();
    second.close();
    let third = b.open(cfg(100, 3_600_000));
    let s = third.load().expect("load");
    let r = s.rooms.iter().find(|r| r.record.id == "r").expect("room r");
    assert_eq!(
        r.record.seq_reserved, 2_000,
        "the refused write left no trace"
    );
    third.close();
}

#[test]
fn nats_stopped_and_restarted_refuses_writes_loses_nothing_and_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(mut nats) = nats_for("nats_stopped_and_restarted", dir.path()) else {
        return;
    };
    let b = Backend::Nats(nats.url());
    let store = b.open(cfg(1000, 3_600_000));
    let _ = store.load().expect("load");
    apply(&*store, vec![Op::PutRoom(room("r"))]).expect("room");
    for seq in 1..=20 {
        apply(&*store, vec![append("r", seq, seq)]).expect("append");
    }
    nats.kill();
    // The first write after the loss fails (or is refused at once, once the client noticed);
    // from then on every submit is refused at once, with a clear message.
    let e = apply(&*store, vec![append("r", 21, 21)]).expect_err("NATS is down");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    eventually("the store to report failing", 10, || {
        matches!(store.health(), StoreHealth::Failing { .. })
    });
    assert!(!store.writable());
    let ack = store.submit(vec![append("r", 22, 22)]);
    let refused = ack.refused().expect("refused at once").clone();
    assert!(refused.message().contains("NATS"), "{refused}");
    let StoreHealth::Failing { error, .. } = store.health() else {
        panic!("failing");
    };
    assert!(error.contains("NATS"), "{error}");

    nats.restart();
    eventually("writes to come back by themselves", 30, || store.writable());
    apply(&*store, vec![append("r", 23, 23)]).expect("append after the restart");
    let h = store.history("r", None, 100).expect("read");
    let got = seqs(&h);
    let mut want: Vec<u64> = (1..=20).collect();
    want.push(23);
    assert_eq!(got, want, "every acknowledged append, and no refused one");
    store.close();
    let again = b.open(cfg(1000, 3_600_000));
    let _ = again.load().expect("reload");
    assert_eq!(seqs(&again.history("r", None, 100).expect("read")), want);
    again.close();
}

#[test]
fn an_unreachable_nats_is_a_clear_error_at_open() {
    // A port nothing listens on: the listener is bound, then dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let mut c = nats_cfg(&format!("nats://127.0.0.1:{port}"));
    c.request_timeout = Duration::from_millis(500);
    let e = NatsStore::open(c, cfg(10, 1000)).err().expect("refused");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.message().contains("cannot connect"), "{e}");
}

#[test]
fn on_a_three_server_nats_cluster_with_three_replicas_a_server_loss_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(bin) = nats_support::binary("on_a_three_server_nats_cluster") else {
        return;
    };
    let mut cluster = nats_support::cluster::NatsCluster::start(&bin, dir.path());
    let mut c = nats_cfg(&cluster.url(0));
    c.servers = cluster.urls();
    c.replicas = 3;
    let store = NatsStore::open(c.clone(), cfg(1000, 3_600_000)).expect("opens on the cluster");
    let _ = store.load().expect("load");
    apply(&store, vec![Op::PutRoom(room("r"))]).expect("room");
    let mut acked: Vec<u64> = Vec::new();
    for seq in 1..=20 {
        apply(&store, vec![append("r", seq, seq)]).expect("append");
        acked.push(seq);
    }
    // One server of three dies (the store may have been connected to it): the stream keeps a
    // quorum; a write refused while JetStream moves its leaders was not made.
    cluster.kill(0);
    let mut seq = 21;
    eventually(
        "an append acknowledged with two servers of three",
        60,
        || match apply(&store, vec![append("r", seq, seq)]) {
            Ok(()) => {
                acked.push(seq);
                true
            }
            Err(e) => {
                assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
                seq += 1;
                false
            }
        },
    );
    assert_eq!(seqs(&store.history("r", None, 100).expect("read")), acked);
    store.close();
    // The dead server comes back on its ports, rejoins and catches up (awaited); a reopen
    // finds everything acknowledged, and nothing else.
    cluster.restart(0);
    let again = NatsStore::open(c, cfg(1000, 3_600_000)).expect("reopens");
    let _ = again.load().expect("reload");
    assert_eq!(seqs(&again.history("r", None, 100).expect("read")), acked);
    again.close();
}
