//! The store in NATS JetStream ([`NatsStore`]), and the design of cluster mode it is part of.
//!
//! Cluster mode lets any number of relays share rooms through NATS: members of one room sit on
//! different relays, and a relay can die without losing a message it acknowledged. Nothing of
//! it is home-made consensus: ordering comes from one owner per room under a KV lease, safety
//! from JetStream's compare-and-set on the KV revision and on a subject's last sequence.
//! **Built so far** (marked *now* below): this store, with its names, fence, outage behaviour
//! and metrics; `roomcast serve --cluster-nats URL`; and several relays sharing rooms
//! (`crate::server::cluster`): room leases, forwarded sends, live fan-out with interest routing,
//! admin changes of a room through any relay (forwarded to its owner), and one KV watch per
//! relay keeping its rooms current, member counts and member lists across relays, the app-wide
//! lists written through any relay. **Still to build** (marked *next*): join/leave events
//! across relays. Resume on another relay is built (*now*, see "Resume").
//!
//! # Names
//! Everything lives under `cluster.prefix` (`P`, default `roomcast`). A room id becomes one
//! subject token `R` by [`encode_room`] (`A-Z a-z 0-9 - _` kept, any other byte as `=XX`, so a
//! `.` in an id never splits a subject; `eu.lobby` is `eu=2Elobby`). NATS' guidance is followed:
//! **no stream and no consumer per room or per client** — one stream and a few buckets for the
//! whole deployment, subjects per room inside them.
//!
//! | what | name | kind | key / subject |
//! |---|---|---|---|
//! | history (*now*) | `P_history` | stream, file, `cluster.replicas` | `P.hist.m.R` messages, `P.hist.x.R` recall markers |
//! | room state (*now*) | `P_state` | KV, history 1 | `room.R` → `{record, attrs}` (JSON), `global` → the app-wide lists |
//! | leases (*now*) | `P_leases` | KV, history 1, age limit = `cluster.lease_ttl_ms` | `room.R` → `{node, term, unused}` |
//! | member counts (*now*) | `P_members` | KV, memory, age limit 3 × lease TTL | `R.<node>` → that relay's count |
//! | live traffic (*now*) | — | core NATS | `P.live.R` |
//! | forwarded requests (*now*) | — | core NATS request/reply | `P.fwd.R`: sends, and admin calls (`Roomcast-Admin` header) |
//! | member lists (*now*) | — | core NATS request/reply | `P.members.<node>`: a relay's members of a room |
//!
//! History retention is the stream's own: `max_msgs_per_subject = store.history_max` (count per
//! room) and `max_age = store.history_max_age_secs` (age since stored), with direct gets so any
//! replica answers reads. Normal and protected messages share the room's subject (the class is in
//! the message). A recall publishes a marker (the message without its body) on `P.hist.x.R` and
//! then deletes the original: the body is gone from NATS, the marker keeps the sequence number.
//! If one stream's throughput ever limits (one Raft group at R3), the scale-out path is a fixed
//! number of partitioned streams `P_history_<n>` chosen by a hash of `R`, not one per room.
//!
//! # The store (*now*)
//! [`NatsStore`] implements the store trait with the redb store's semantics: submits are applied
//! in order by one writer; an ack resolves (in `sync` mode) after JetStream acknowledged every
//! op; a write that fails takes no effect and the caller answers `UNAVAILABLE`. Loading reads the
//! bucket's stream (last value per key) and the history stream once each, with one short-lived
//! ordered consumer apiece, to learn the rooms and, per room, the stream sequence of each stored
//! message and of the room's last one (an index kept in memory, at most `history_max` per room). A room's record and
//! its attributes are one KV value, so an attribute change and the room's attribute version are
//! one atomic write; other ops of one submit (a room's deletion and the app-wide lists) are
//! applied in order, each atomic.
//!
//! **The fence.** Every append carries `Nats-Expected-Last-Subject-Sequence` with the stream
//! sequence of the room's last message as this store knows it (0: none), and every KV write
//! expects the revision it last saw (`create` for a key it has not seen). A second writer's
//! append or write moves them on, so the first writer's next one is refused:
//! [`crate::store::StoreError::Fenced`], surfaced as `UNAVAILABLE`, and the store stays healthy
//! for other rooms. Known pitfalls handled: the expected value is a *stream* sequence, not a
//! count; when every message of a room expired or was purged the subject is empty, so a refused
//! append looks the subject up and, only if it is empty, expects 0; `create` after a delete or a
//! purge needs the tombstone's revision (async-nats' `create` looks it up and updates on it), and
//! a writer racing it there makes it fail as "already exists", which is then a fence as well;
//! KV wrong-revision errors come as 10071 or 10164 depending on the path, both of which
//! async-nats reports as a wrong last revision.
//!
//! **Outages.** While the connection is down (the client's event), or after a request that is not
//! answered within `cluster.request_timeout_ms`, the store is failing: that submit fails, those
//! queued behind it fail, later ones are refused at once with a message that names NATS,
//! `/healthz` answers 503 with the reason, `roomcast_store_healthy` and `roomcast_nats_connected`
//! are 0. The writer probes (a stream info request) with back-off up to 2 s and takes writes
//! again by itself. A write whose answer was lost in flight may have landed: before taking writes
//! again the writer looks, and undoes it (deletes the message, restores the KV value) if it did,
//! so what a client was told (refused) is what a restart finds.
//!
//! # Ownership and the lease (*now*)
//! One relay at a time sequences a room: the owner. `acquire` = KV `create(room.R)` in `P_leases`
//! with `{node, term}` (the bucket's age limit is the lease TTL, so an entry not written for a TTL
//! is gone; `term` is the revision of the acquiring write, set by the write right after it);
//! `renew` = `update` on the revision it holds, every TTL/3. A room gets an owner with its first
//! send (no responder on `P.fwd.R`: the sending relay acquires); a clean shutdown purges the
//! relay's leases on their revisions; a relay that finds a lease under its own node id (an earlier
//! run of it) takes it back at once by `update` on its revision. Only the holder's revision
//! matches, so renewals are compare-and-set, and an owner that cannot renew loses the entry when
//! its TTL runs out. A stale owner learns it lost in three ways, the last of which needs no clock:
//! (1) a renewal refused on the revision; (2) its own timer: it stops sequencing once TTL minus a
//! safety margin has passed since its last *acknowledged* renewal, before anyone else can acquire;
//! (3) the fence: a new owner, right after acquiring, reloads the room (KV value and the subject's
//! last sequence), reserves sequence numbers above `seq_reserved` (KV compare-and-set, as after a
//! restart: the old owner's next KV write is refused), and its first append moves the subject's
//! last sequence on (the old owner's next append is refused), so no sequence number is ever durable
//! twice. (*next*: a fence marker appended at once — an empty message with a `Roomcast-Fence: term`
//! header, skipped by readers — so the old owner's appends are refused even before the new owner's
//! first.) `Fenced` makes the relay step down: it stops sequencing the room, and its sends are
//! forwarded from then on. The decisions on times (when to renew, when to stop) are
//! `crate::server::cluster::lease`, plain code taking `now`.
//! **Failover time**: a dead owner's rooms move within one lease TTL plus one renewal interval.
//! A hung owner (paused, cut off) still holds its subscriptions: a request forwarded to it times
//! out (twice the request timeout plus a second), and is never sent again; the sender's relay
//! then takes the room if the lease has run out, else refuses (the owner may still make it).
//!
//! # Sends, fan-out and interest routing (*now*)
//! A member's send on a relay that does not own the room is a request on `P.fwd.R`, answered by the
//! owner with `{seq, ts}` once the append is durable (or with the owner's error); no responder
//! means no owner: the relay tries to acquire the lease and handles it itself. The owner publishes
//! every message its ring places once on `P.live.R` (the delivery frame, encoded once, which
//! carries seq, ts and class; a `Roomcast-Keep` header when join history keeps it), in placement
//! order, i.e. seq order; low-priority messages that history does not keep go the same way,
//! unstored. The relays' connection for this is `no_echo`: an owner with members never receives its
//! own traffic back. A relay subscribes to `P.live.R` only while it has members in the room: NATS
//! sends a message to each relay with members once, and none to a relay without. Each relay puts
//! what arrives into the room's local ring, so classes, shedding, datagrams and exact `Gap` counts
//! are the single-node ones; a join is answered once the subscription is in place at the server.
//! Every relay follows `P_state` through one watch (from the last value of each key; one consumer
//! per relay, not per room) to keep its cache of rooms, policies, moderation lists, attributes and
//! the app-wide lists current: rooms created or destroyed elsewhere appear and end here, and
//! members banned elsewhere are removed here. Admin changes of a room made on a relay that does not
//! own it are requests to the owner on the same subject: the admin call itself (method, path,
//! body), run by the owner's admin API, whose answer is returned as it is (no owner: the relay
//! acquires and runs it). The app-wide lists (`global`) have no owner: a write of them expects
//! the revision this store last saw, and when another relay wrote them since, the relay reads
//! them again ([`crate::store::Store::reload_global`]) and decides its change anew on them, a
//! few times at most (*now*). Member lists and counts: each relay writes its
//! count per room to `P_members` (on change, at most every `rooms.member_count_interval_ms`); a
//! total is a listing of `R.*`, bounded by the number of relays (*now*: each relay writes on
//! change, at most every interval, and all its counts every lease TTL; each follows the bucket with
//! one watch and sums the counts written within three TTLs). Member *lists* are asked of each
//! relay with members on `P.members.<node>` (core NATS request/reply, one subscription per relay)
//! and merged in join-time order (*now*, `crate::server::cluster::members`).
//! Timers that store (idle destroy, lifetime, scheduled destroy, activity times, attribute sweeps)
//! run once per room, on its owner (*now*); offline exit runs where the member's session was. A
//! room whose destruction is due and that has no owner is acquired by the first relay whose timer
//! pass finds it; the other relays learn the end from the state bucket (the key's deletion) and
//! tell their members the reason their own timers give (scheduled, lifetime, idle; else manual).
//!
//! # Resume (*now*)
//! Resume is client-driven so it works on any relay: the client rejoins a room telling the epoch
//! and the last seq it received. The relay subscribes to live traffic first and buffers it, then
//! replays the missed seqs from its ring or, beyond the ring, from history (direct gets by
//! stream sequence), then drains the buffer from where the replay ended. All or nothing: seqs
//! it cannot replay (low-priority ones history does not keep, trimmed ones) are counted in
//! `Resumed{missed}`, never silently skipped; a room whose epoch changed is reported destroyed.
//! Reads of history on any relay see what other relays appended: a read looks up the room's
//! last stream sequence (both subjects, direct gets) and, only when the stream holds newer
//! messages than the relay's index, reads them once with a short-lived ordered consumer from
//! past the newest stream sequence it knows. A relay with no member of a room it does not own
//! brings its ring's numbering up to the room's newest stored message before a join or resume
//! (history below, live above). A new owner records the numbers the last owner reserved and
//! never used (as after a restart), so resumes on it do not count them, and writes them into
//! its lease value (`unused: {epoch, newest, first}`: no message has `newest < seq < first`,
//! kept in its renewals); every relay follows the leases bucket with one KV watch and keeps the
//! latest range per room, so a resume on a third relay replaying across the change does not
//! count them either. One range per room: a resume across two changes counts the older one
//! (an over-count), as does one on a relay started after the lease value was gone.
//!
//! # Guarantees
//! - **Ordering**: per room, `seq` is assigned by one writer at a time and only increases (past
//!   the numbers the last owner reserved when ownership moves, as after a restart); every
//!   member receives in seq order, and a range skipped on its own relay is an exact `Gap`.
//! - **Live traffic**: every stored message after a member's join point reaches it once, in
//!   order, on whichever relay it is (a hole in live traffic is placed from history); what
//!   history cannot give is in its `Gap` as far as the owner's stamps count it (see "Live
//!   traffic is exact").
//! - **Failover time**: a dead owner's rooms can be taken by another relay once its lease has
//!   run out: within one lease TTL of its last renewal, about 4/3 TTL after it died at worst.
//! - **Durability**: a `{seq, ts}` reply (and an admin call's answer) means JetStream acknowledged
//!   the write: with one NATS server it is in that server's store (written through to its file;
//!   fsynced per the server's `sync_interval`, `always` for power-loss safety); with
//!   `cluster.replicas = 3` on three servers it is on a quorum. A SIGKILLed relay loses nothing
//!   acknowledged (tested).
//! - **Availability**: while NATS is unreachable, changes and kept messages are refused with
//!   `UNAVAILABLE` (nothing half-made), reads of history fail the same way, and writes resume by
//!   themselves when NATS answers.
//!
//! # Mapping onto the room core
//! The membership core is unchanged: the first member in and the last member out of a room on
//! a relay are its `Joined{members: 1}` and `Left{members: 0}` effects, which the shell turns into
//! subscribing to and unsubscribing from `P.live.R`. Sequencing is the ring's: the owner's ring
//! stamps and places messages (an observer publishes what it places), a non-owner's ring places
//! what arrives with the owner's numbers (`Ring::place_remote`) and never stamps; the relay
//! forwards a send when `Cluster::sequences(room)` says it does not own the room now.
//!
//! # Live traffic is exact (*now*)
//! Core NATS is at most once: a relay whose connection drops for a moment, one whose live
//! subscription is being made while messages flow, an owner that died between acknowledging a
//! send and publishing it, or a full queue leave a relay without some numbers. Numbers alone do
//! not say which were used (a refused send's number and those reserved and never used are not),
//! and low-priority messages are not stored, so the owner stamps every live message (header
//! `Roomcast-Term: term first protected normal low`, `crate::server::cluster` `holes`): its
//! term (the lease revision of its acquisition), the term's first number, and the messages of
//! each class it placed in the term up to this one (counted by the ring's observer, in
//! placement order). A relay keeps the newest stamp it placed per subscription. A message
//! above the ring's newest number plus one is a hole: within one term, the difference of the
//! counts is exactly what it held per class; from a new term's first number (above the ring's
//! newest), the counts are; before that (an earlier term's tail, or a running term's first
//! message after a subscription) only history tells. The relay reads the hole with one bounded
//! history read (the newest 1000 stored messages below the arrival; tried for 10 s while its
//! store reconnects), places them in `seq` order, then counts in the ring's per-class counters
//! what the stamps say it held and history did not give (recalled, trimmed, low-priority; a
//! protected one as normal, as a `Gap` has no protected count), so every member reading past
//! the arrival gets an exact `Gap`, then places the arrival. Meanwhile arrivals wait in the
//! subscription's bounded queue (the NATS client's; a slow-consumer drop there is counted and
//! is a hole in its turn). A message at or below the ring's newest number is dropped (counted):
//! nothing twice. Right after a subscription is in place, and when a relay with members takes a
//! room over, it places what history holds above its ring the same way. What remains: a hole is
//! noticed at the next arrival; low-priority messages of an earlier term's tail (a dead owner's
//! never published ones included) and of a running term before a subscription are not counted;
//! the unread numbers of a hole wider than the read count as normal (an over-count at most).

mod names;
mod store;

pub use names::{HistoryKind, Names, decode as decode_room, encode as encode_room};
pub use store::{NatsAuth, NatsConfig, NatsStore, StateValue, connect_options, parse_state};
