//! The membership core, driven without a runtime: unit tests of its rules (SPEC §2 lifecycle
//! end of memberships, §3 membership, §5 moderation's effect on membership and sends), the three
//! lifecycle races, and a property test over random sequences of inputs.

use super::*;
use crate::policy::{GlobalPolicy, Moderation};
use crate::protocol::ErrorCode;
use std::collections::BTreeMap;

/// A stand-in for the rooms' rings: how many messages each room has published.
#[derive(Default)]
struct Rings(BTreeMap<String, u64>);

impl Rings {
    fn at(&self, room: &str) -> JoinPoint {
        let n = self.0.get(room).copied().unwrap_or(0);
        JoinPoint {
            pos: n,
            last_seq: n,
            cum: [0, n, 0],
            messages: n,
        }
    }

    fn publish(&mut self, room: &str, n: u64) {
        *self.0.entry(room.to_owned()).or_default() += n;
    }

    fn point(&self) -> impl FnMut(&str) -> JoinPoint + '_ {
        |room| self.at(room)
    }
}

fn cfg(rooms_per_user: usize, single_room: bool, grace: u64) -> CoreConfig {
    CoreConfig {
        rooms_per_user,
        single_room,
        offline_grace_ms: grace,
    }
}

fn core_with(cfg: CoreConfig, rooms: &[&str]) -> Core {
    let mut core = Core::new(cfg);
    for (i, r) in rooms.iter().enumerate() {
        assert!(core.room_created(r, i as u64 + 1).is_empty());
    }
    core
}

fn subscribes(fx: &[Effect]) -> Vec<(ConnId, String, Option<u64>)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Subscribe {
                conn,
                room,
                resumed,
                ..
            } => Some((*conn, room.clone(), *resumed)),
            _ => None,
        })
        .collect()
}

fn unsubscribes(fx: &[Effect]) -> Vec<(ConnId, String, Option<KickReason>, u64)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Unsubscribe {
                conn,
                room,
                kicked,
                until,
                ..
            } => Some((*conn, room.clone(), *kicked, until.messages)),
            _ => None,
        })
        .collect()
}

// ---- §3 membership ----

#[test]
fn a_join_subscribes_the_connection_once_and_announces_a_new_member_once() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.conn_up(2, "u", &mut rings.point());
    let fx = core.join(10, 1, "u", "r", &mut rings.point()).unwrap();
    assert!(matches!(&fx[0], Effect::Joined { user, members: 1, .. } if user == "u"));
    assert_eq!(subscribes(&fx), [(1, "r".to_owned(), None)]);
    // The same connection again: nothing new. A second device: subscribed, not a new member.
    assert!(
        core.join(11, 1, "u", "r", &mut rings.point())
            .unwrap()
            .is_empty()
    );
    let fx = core.join(12, 2, "u", "r", &mut rings.point()).unwrap();
    assert_eq!(subscribes(&fx), [(2, "r".to_owned(), None)]);
    assert!(!fx.iter().any(|e| matches!(e, Effect::Joined { .. })));
    assert_eq!(core.room("r").unwrap().member("u").unwrap().joined_ms, 10);
    core.check().unwrap();
}

#[test]
fn a_join_of_a_missing_room_or_from_an_unknown_connection_is_refused() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    let e = core.join(0, 1, "u", "r", &mut rings.point()).unwrap_err();
    assert_eq!(e, CoreError::NoConn(1));
    core.conn_up(1, "u", &mut rings.point());
    let e = core
        .join(0, 1, "u", "nope", &mut rings.point())
        .unwrap_err();
    assert_eq!(WireError::from(e).code, ErrorCode::RoomNotFound);
    // A connection is its user's only.
    let e = core
        .join(0, 1, "other", "r", &mut rings.point())
        .unwrap_err();
    assert_eq!(e, CoreError::NoConn(1));
}

#[test]
fn the_rooms_per_user_limit_counts_rooms_not_devices() {
    let rings = Rings::default();
    let mut core = core_with(cfg(2, false, 30_000), &["a", "b", "c"]);
    core.conn_up(1, "u", &mut rings.point());
    core.conn_up(2, "u", &mut rings.point());
    core.join(0, 1, "u", "a", &mut rings.point()).unwrap();
    core.join(0, 2, "u", "b", &mut rings.point()).unwrap();
    let e = core.join(0, 1, "u", "c", &mut rings.point()).unwrap_err();
    assert_eq!(
        e,
        CoreError::TooManyRooms {
            user: "u".into(),
            n: 2
        }
    );
    assert_eq!(WireError::from(e).code, ErrorCode::TooManyRooms);
    // A room the user is in already is no new room.
    core.join(0, 1, "u", "b", &mut rings.point()).unwrap();
    core.leave(1, "u", "a", &mut rings.point()).unwrap();
    core.join(0, 1, "u", "c", &mut rings.point()).unwrap();
    core.check().unwrap();
}

#[test]
fn single_room_mode_moves_the_user_on_every_device_with_an_event() {
    let mut rings = Rings::default();
    let mut core = core_with(cfg(8, true, 30_000), &["a", "b"]);
    core.conn_up(1, "u", &mut rings.point());
    core.conn_up(2, "u", &mut rings.point());
    core.join(0, 1, "u", "a", &mut rings.point()).unwrap();
    core.join(0, 2, "u", "a", &mut rings.point()).unwrap();
    rings.publish("a", 3);
    let fx = core.join(0, 1, "u", "b", &mut rings.point()).unwrap();
    // Both devices end their membership of a after its 3 messages, told why, then b.
    assert_eq!(
        unsubscribes(&fx),
        [
            (1, "a".to_owned(), Some(KickReason::SingleRoom), 3),
            (2, "a".to_owned(), Some(KickReason::SingleRoom), 3)
        ]
    );
    assert_eq!(subscribes(&fx), [(1, "b".to_owned(), None)]);
    let left = fx
        .iter()
        .position(|e| matches!(e, Effect::Left { .. }))
        .unwrap();
    let joined = fx
        .iter()
        .position(|e| matches!(e, Effect::Joined { .. }))
        .unwrap();
    assert!(left < joined, "{fx:?}");
    assert_eq!(core.rooms_of("u"), [("b".to_owned(), 2)]);
    core.check().unwrap();
}

#[test]
fn a_leave_unsubscribes_the_leaving_device_untold_and_kicks_the_others() {
    let mut rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.conn_up(2, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    core.join(0, 2, "u", "r", &mut rings.point()).unwrap();
    rings.publish("r", 5);
    let fx = core.leave(1, "u", "r", &mut rings.point()).unwrap();
    assert_eq!(
        unsubscribes(&fx),
        [
            (1, "r".to_owned(), None, 5),
            (2, "r".to_owned(), Some(KickReason::OtherDevice), 5)
        ]
    );
    assert!(matches!(
        fx.last(),
        Some(Effect::Left {
            how: Ended::Left,
            members: 0,
            ..
        })
    ));
    let e = core.leave(1, "u", "r", &mut rings.point()).unwrap_err();
    assert_eq!(WireError::from(e).code, ErrorCode::NotInRoom);
    assert_eq!(core.footprint(), (1, 1, 2, 0));
}

#[test]
fn a_member_offline_within_the_grace_is_resumed_with_what_it_missed() {
    let mut rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    rings.publish("r", 2);
    assert!(core.conn_down(1_000, 1, &mut rings.point()).is_empty());
    rings.publish("r", 7);
    // Not yet due: the grace runs from the last connection's end.
    assert!(
        core.tick(30_999, "r", &|_| false, &mut rings.point())
            .is_empty()
    );
    let fx = core.conn_up(2, "u", &mut rings.point());
    assert_eq!(subscribes(&fx), [(2, "r".to_owned(), Some(7))]);
    assert!(
        core.tick(1_000_000, "r", &|_| false, &mut rings.point())
            .is_empty()
    );
    core.check().unwrap();
}

#[test]
fn a_member_offline_past_the_grace_is_removed_without_traffic_unless_whitelisted() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    for (c, u) in [(1, "u"), (2, "w")] {
        core.conn_up(c, u, &mut rings.point());
        core.join(0, c, u, "r", &mut rings.point()).unwrap();
        core.conn_down(1_000, c, &mut rings.point());
    }
    let keeps = |u: &str| u == "w";
    let fx = core.tick(31_000, "r", &keeps, &mut rings.point());
    assert_eq!(
        fx,
        [Effect::Left {
            room: "r".into(),
            epoch: 1,
            user: "u".into(),
            how: Ended::Kicked(KickReason::Offline),
            members: 1,
        }]
    );
    assert!(core.is_member("r", "w") && !core.is_member("r", "u"));
    assert_eq!(core.rooms_of("u"), []);
    core.check().unwrap();
}

#[test]
fn with_no_grace_the_last_connection_ends_the_membership() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 0), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    let fx = core.conn_down(5, 1, &mut rings.point());
    assert!(
        matches!(
            &fx[..],
            [Effect::Left {
                how: Ended::Gone,
                ..
            }]
        ),
        "{fx:?}"
    );
    assert_eq!(core.footprint(), (1, 0, 0, 0));
}

#[test]
fn a_membership_moves_to_a_live_device_when_its_only_connection_goes() {
    let mut rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    rings.publish("r", 4);
    // A reconnect before the old connection is noticed gone.
    assert!(core.conn_up(2, "u", &mut rings.point()).is_empty());
    rings.publish("r", 3);
    let fx = core.conn_down(9, 1, &mut rings.point());
    assert_eq!(subscribes(&fx), [(2, "r".to_owned(), Some(3))]);
    core.check().unwrap();
}

#[test]
fn members_page_in_join_order_both_ways_with_cursor() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    for (i, u) in ["a", "b", "c", "d"].iter().enumerate() {
        core.conn_up(i as u64, u, &mut rings.point());
        let fx = core
            .join(100 + i as u64, i as u64, u, "r", &mut rings.point())
            .unwrap();
        assert!(matches!(&fx[0], Effect::Joined { .. }));
    }
    core.conn_up(9, "b", &mut rings.point());
    let fx = core.join(999, 9, "b", "r", &mut rings.point()).unwrap();
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Joined { .. })),
        "second device of a member is not a new member"
    );
    let names = |v: Vec<(String, u64, u64)>| v.into_iter().map(|t| t.0).collect::<Vec<_>>();
    let r = core.room("r").unwrap();
    assert_eq!(names(r.page(false, 2, None)), ["a", "b"]);
    assert_eq!(names(r.page(false, 2, Some(1))), ["c", "d"]);
    assert_eq!(names(r.page(true, 3, None)), ["d", "c", "b"]);
    assert_eq!(names(r.page(true, 3, Some(1))), ["a"]);
    assert_eq!(r.page(false, 1, None)[0].1, 100);
    core.kick("r", "b", KickReason::Banned, &mut rings.point());
    let r = core.room("r").unwrap();
    assert_eq!(names(r.page(false, 10, None)), ["a", "c", "d"]);
}

// ---- §5 moderation ----

#[test]
fn a_banned_user_cannot_join_until_the_ban_ends() {
    let core = core_with(cfg(8, false, 30_000), &["r"]);
    let mut m = Moderation::default();
    m.bans.insert("u".into(), 1_000);
    let e = core.check_join("r", "u", &m, 999).unwrap_err();
    assert_eq!(e.code, ErrorCode::Banned);
    core.check_join("r", "u", &m, 1_000).unwrap();
    core.check_join("r", "v", &m, 0).unwrap();
    let e = core.check_join("gone", "v", &m, 0).unwrap_err();
    assert_eq!(e.code, ErrorCode::RoomNotFound);
}

#[test]
fn a_send_needs_membership_then_follows_the_mute_order() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    let (mut m, mut g) = (Moderation::default(), GlobalPolicy::default());
    let e = core.check_send("r", "u", &m, &g, 0).unwrap_err();
    assert_eq!(e.code, ErrorCode::NotInRoom);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    core.check_send("r", "u", &m, &g, 0).unwrap();
    m.mute_all = true;
    assert_eq!(
        core.check_send("r", "u", &m, &g, 0).unwrap_err().code,
        ErrorCode::Muted
    );
    m.mute_all_whitelist.insert("u".into());
    m.mutes.insert("u".into(), 100);
    // The mute-all whitelist overrides mute-all and a member mute; a global mute wins over it.
    core.check_send("r", "u", &m, &g, 0).unwrap();
    g.global_mutes.insert("u".into(), 100);
    assert_eq!(
        core.check_send("r", "u", &m, &g, 0).unwrap_err().code,
        ErrorCode::Muted
    );
    core.check_send("r", "u", &m, &g, 100).unwrap();
}

#[test]
fn a_ban_kicks_only_once_stored_after_what_was_published_before() {
    let mut rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    let kick = After::Kick {
        room: "r".into(),
        epoch: 1,
        users: vec!["u".into(), "absent".into()],
        reason: KickReason::Banned,
    };
    let Effect::Store { id, .. } = core.submit(vec![], kick.clone()) else {
        panic!("a change is stored first")
    };
    rings.publish("r", 2);
    assert!(
        core.is_member("r", "u"),
        "nothing happens before the store has it"
    );
    let fx = core.stored(id, true, &mut rings.point());
    assert_eq!(
        unsubscribes(&fx),
        [(1, "r".to_owned(), Some(KickReason::Banned), 2)]
    );
    // A refused change leaves everything as it was.
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    let Effect::Store { id, .. } = core.submit(vec![], kick) else {
        panic!("a change is stored first")
    };
    assert!(core.stored(id, false, &mut rings.point()).is_empty());
    assert!(core.is_member("r", "u"));
    assert_eq!(core.pending(), 0);
}

// ---- §2 lifecycle: the end of a room ends its memberships ----

#[test]
fn a_destruction_ends_every_membership_once_stored() {
    let rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r", "s"]);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    core.join(0, 1, "u", "s", &mut rings.point()).unwrap();
    let destroy = |room: &str, epoch| After::Destroy {
        room: room.into(),
        epoch,
    };
    let Effect::Store { id: first, ops } =
        core.submit(vec![Op::DeleteRoom("r".into())], destroy("r", 1))
    else {
        panic!("a change is stored first")
    };
    assert_eq!(ops, [Op::DeleteRoom("r".into())]);
    let Effect::Store { id: second, .. } = core.submit(vec![], destroy("s", 2)) else {
        panic!("a change is stored first")
    };
    // Each change takes effect when the store has it, whatever else is pending.
    let fx = core.stored(second, true, &mut rings.point());
    assert!(matches!(&fx[..], [Effect::Left { how: Ended::Destroyed, room, .. }] if room == "s"));
    assert!(core.is_member("r", "u"));
    let fx = core.stored(first, true, &mut rings.point());
    assert!(matches!(&fx[..], [Effect::Left { how: Ended::Destroyed, room, .. }] if room == "r"));
    // Reported twice, it changes nothing more.
    assert!(core.stored(first, true, &mut rings.point()).is_empty());
    assert_eq!(core.footprint(), (0, 1, 1, 0));
    assert_eq!(core.pending(), 0);
    core.check().unwrap();
}

// ---- the three lifecycle races ----

/// A room destroyed and created again while a member's connection still reads the old one:
/// the old incarnation's destruction, arriving late, must not end the membership of the new
/// one, and the new one's kick names its epoch. The old shell matched memberships by room id
/// alone.
#[test]
fn race_a_late_destruction_of_an_old_incarnation_leaves_the_new_one_alone() {
    let rings = Rings::default();
    let mut core = Core::new(cfg(1, false, 30_000));
    core.room_created("r", 1);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    // The old incarnation ends while its destruction is still being applied; the id is
    // created again and joined.
    core.room_created("r", 2);
    let fx = core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Subscribe { epoch: 2, .. })),
        "{fx:?}"
    );
    // The old one's destruction lands late.
    assert!(core.room_destroyed("r", 1).is_empty());
    assert!(core.is_member("r", "u"));
    assert_eq!(core.rooms_of("u"), [("r".to_owned(), 2)]);
    core.check().unwrap();
    // The limit still counts the membership: a second room is refused.
    core.room_created("s", 3);
    assert!(core.join(0, 1, "u", "s", &mut rings.point()).is_err());
    let fx = core.kick("r", "u", KickReason::Banned, &mut rings.point());
    assert!(
        matches!(&fx[0], Effect::Unsubscribe { epoch: 2, .. }),
        "{fx:?}"
    );
}

/// Two devices of one user join two different rooms at once in `single_room` mode: whatever
/// the order the joins land in, the user ends in exactly one room and the other device's
/// membership is ended with `Kicked{single_room}`. The old shell checked the user's rooms
/// before taking the joined room's lock, so both joins could pass.
#[test]
fn race_two_devices_joining_two_rooms_at_once_end_in_one_room() {
    for first in [true, false] {
        let rings = Rings::default();
        let mut core = core_with(cfg(8, true, 30_000), &["a", "b"]);
        core.conn_up(1, "u", &mut rings.point());
        core.conn_up(2, "u", &mut rings.point());
        let (x, y) = if first {
            ((1, "a"), (2, "b"))
        } else {
            ((2, "b"), (1, "a"))
        };
        core.join(0, x.0, "u", x.1, &mut rings.point()).unwrap();
        let fx = core.join(0, y.0, "u", y.1, &mut rings.point()).unwrap();
        assert_eq!(core.rooms_of("u").len(), 1);
        assert_eq!(core.rooms_of("u")[0].0, y.1);
        assert_eq!(
            unsubscribes(&fx),
            [(x.0, x.1.to_owned(), Some(KickReason::SingleRoom), 0)]
        );
        core.check().unwrap();
    }
    // The old shell's order, reproduced on the same inputs: each device read the user's rooms
    // (to leave them) before either join was recorded, then joined. Both stay.
    let rings = Rings::default();
    let mut old = core_with(cfg(8, false, 30_000), &["a", "b"]);
    old.conn_up(1, "u", &mut rings.point());
    old.conn_up(2, "u", &mut rings.point());
    let read_by_1 = old.rooms_of("u");
    let read_by_2 = old.rooms_of("u");
    for (conn, room, read) in [(1, "a", read_by_1), (2, "b", read_by_2)] {
        for (other, _) in read.iter().filter(|(r, _)| r != room) {
            old.kick(other, "u", KickReason::SingleRoom, &mut rings.point());
        }
        old.join(0, conn, "u", room, &mut rings.point()).unwrap();
    }
    assert_eq!(
        old.rooms_of("u").len(),
        2,
        "the old order leaves the user in both rooms"
    );
}

/// A connection that arrived while the membership was served, and went again, must leave no
/// mark: a later hand-over tells the connection that takes over what it missed since it
/// arrived, not since the one that came and went. The old shell kept the first arrival's count
/// in one field for the member.
#[test]
fn race_a_stale_arrival_mark_does_not_inflate_a_later_resumed() {
    let mut rings = Rings::default();
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    core.conn_up(1, "u", &mut rings.point());
    core.join(0, 1, "u", "r", &mut rings.point()).unwrap();
    core.conn_up(2, "u", &mut rings.point());
    rings.publish("r", 100);
    // Connection 2 goes without ever taking over; connection 1 delivered those 100.
    assert!(core.conn_down(1, 2, &mut rings.point()).is_empty());
    core.conn_up(3, "u", &mut rings.point());
    rings.publish("r", 5);
    let fx = core.conn_down(2, 1, &mut rings.point());
    assert_eq!(subscribes(&fx), [(3, "r".to_owned(), Some(5))]);
    core.check().unwrap();
}

// ---- the property test ----

pub(crate) mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const USERS: [&str; 3] = ["u0", "u1", "u2"];
    const ROOMS: [&str; 3] = ["r0", "r1", "r2"];
    const GRACE: u64 = 1_000;

    #[derive(Debug, Clone)]
    enum Input {
        Up(usize),
        Down(usize),
        Join(usize, usize),
        Leave(usize, usize),
        Send(usize, usize),
        Ban(usize, usize, bool),
        Mute(usize, usize),
        Destroy(usize, bool),
        Create(usize),
        /// A late destruction of an older incarnation of the room.
        Stale(usize),
        Tick(u64),
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            3 => (0..3usize).prop_map(Input::Up),
            2 => (0..8usize).prop_map(Input::Down),
            4 => (0..8usize, 0..3usize).prop_map(|(c, r)| Input::Join(c, r)),
            1 => (0..8usize, 0..3usize).prop_map(|(c, r)| Input::Leave(c, r)),
            4 => (0..3usize, 0..3usize).prop_map(|(u, r)| Input::Send(u, r)),
            1 => (0..3usize, 0..3usize, any::<bool>()).prop_map(|(u, r, ok)| Input::Ban(u, r, ok)),
            1 => (0..3usize, 0..3usize).prop_map(|(u, r)| Input::Mute(u, r)),
            1 => (0..3usize, any::<bool>()).prop_map(|(r, ok)| Input::Destroy(r, ok)),
            1 => (0..3usize).prop_map(Input::Create),
            1 => (0..3usize).prop_map(Input::Stale),
            2 => (0..1_500u64).prop_map(Input::Tick),
        ]
    }

    /// What one connection's delivery would hold, from the effects alone.
    #[derive(Debug, Default)]
    struct Delivery {
        /// Live subscriptions: (room, epoch) → from which message.
        subs: BTreeMap<(String, u64), u64>,
    }

    /// One membership as the model sees it.
    #[derive(Debug)]
    struct Span {
        /// Messages published during it, not delivered to any connection and not yet counted.
        uncounted: u64,
    }

    struct World {
        core: Core,
        rings: Rings,
        epochs: BTreeMap<String, u64>,
        /// Destroyed incarnations per room.
        dead: BTreeMap<String, Vec<u64>>,
        /// Each room's moderation lists (bans and mutes last `GRACE` ms).
        moderation: BTreeMap<String, Moderation>,
        next_epoch: u64,
        now: u64,
        next_conn: ConnId,
        /// Live connections: id → user.
        conns: BTreeMap<ConnId, String>,
        /// When each live connection came up (messages per room at that time).
        arrived: BTreeMap<ConnId, BTreeMap<String, u64>>,
        deliveries: BTreeMap<ConnId, Delivery>,
        spans: BTreeMap<(String, String, u64), Span>,
        /// Connections told `Kicked` for (room, epoch), that must get nothing more of it.
        ended: BTreeSet<(ConnId, String, u64)>,
        /// Where each connection's last subscription of (room, epoch) ended: a later one starts
        /// at or after it, so no message reaches a connection twice and positions only grow.
        read_to: BTreeMap<(ConnId, String, u64), u64>,
    }

    impl World {
        fn new(single_room: bool) -> Self {
            let mut w = World {
                core: Core::new(cfg(2, single_room, GRACE)),
                rings: Rings::default(),
                epochs: BTreeMap::new(),
                dead: BTreeMap::new(),
                moderation: BTreeMap::new(),
                next_epoch: 1,
                now: 0,
                next_conn: 1,
                conns: BTreeMap::new(),
                arrived: BTreeMap::new(),
                deliveries: BTreeMap::new(),
                spans: BTreeMap::new(),
                ended: BTreeSet::new(),
                read_to: BTreeMap::new(),
            };
            for r in ROOMS {
                w.create(r);
            }
            w
        }

        fn create(&mut self, room: &str) {
            if self.epochs.contains_key(room) {
                return;
            }
            let e = self.next_epoch;
            self.next_epoch += 1;
            self.epochs.insert(room.to_owned(), e);
            let fx = self.core.room_created(room, e);
            self.apply(fx);
        }

        fn conn(&self, i: usize) -> Option<(ConnId, String)> {
            self.conns.iter().nth(i).map(|(c, u)| (*c, u.clone()))
        }

        fn apply(&mut self, fx: Vec<Effect>) {
            for e in fx {
                match e {
                    Effect::Subscribe {
                        conn,
                        room,
                        epoch,
                        at,
                        resumed,
                    } => {
                        assert_eq!(
                            Some(&epoch),
                            self.epochs.get(&room),
                            "subscribe to a dead room"
                        );
                        let user = self
                            .conns
                            .get(&conn)
                            .expect("subscribe of a live conn")
                            .clone();
                        let d = self.deliveries.entry(conn).or_default();
                        let old = d.subs.insert((room.clone(), epoch), at.messages);
                        assert!(old.is_none(), "{conn} subscribed twice to {room}@{epoch}");
                        let key = (conn, room.clone(), epoch);
                        if let Some(&end) = self.read_to.get(&key) {
                            assert!(at.messages >= end, "{conn} would read {room} again");
                        }
                        self.ended.remove(&(conn, room.clone(), epoch));
                        let span = self
                            .spans
                            .get_mut(&(user, room.clone(), epoch))
                            .expect("a subscription belongs to a membership");
                        if let Some(missed) = resumed {
                            // What it missed: exactly the messages no connection got, or (a
                            // hand-over) at most what came since this connection arrived.
                            let since = self.arrived[&conn].get(&room).copied().unwrap_or(0);
                            let arrived_missed = at.messages.saturating_sub(since);
                            assert!(
                                missed == span.uncounted || missed <= arrived_missed,
                                "{conn} told it missed {missed} in {room}; uncounted {}, \
                                 since it arrived {arrived_missed}",
                                span.uncounted
                            );
                            span.uncounted = 0;
                        }
                    }
                    Effect::Unsubscribe {
                        conn,
                        room,
                        epoch,
                        kicked,
                        until,
                    } => {
                        let d = self.deliveries.entry(conn).or_default();
                        let from = d.subs.remove(&(room.clone(), epoch)).unwrap_or_else(|| {
                            panic!("{conn} unsubscribed from {room}@{epoch}, not read")
                        });
                        assert!(from <= until.messages);
                        self.read_to
                            .insert((conn, room.clone(), epoch), until.messages);
                        assert_eq!(until.messages, self.rings.at(&room).messages);
                        if kicked.is_some() {
                            self.ended.insert((conn, room, epoch));
                        }
                    }
                    Effect::Joined {
                        room, epoch, user, ..
                    } => {
                        let old = self
                            .spans
                            .insert((user, room, epoch), Span { uncounted: 0 });
                        assert!(old.is_none(), "joined twice");
                    }
                    Effect::Left {
                        room,
                        epoch,
                        user,
                        how,
                        ..
                    } => {
                        assert!(
                            self.spans
                                .remove(&(user.clone(), room.clone(), epoch))
                                .is_some()
                        );
                        if how == Ended::Destroyed {
                            // The room's end closes every subscription of it.
                            for d in self.deliveries.values_mut() {
                                d.subs.remove(&(room.clone(), epoch));
                            }
                        }
                    }
                    Effect::Store { .. } => {}
                }
            }
        }

        fn step(&mut self, input: Input) {
            let fx = match input {
                Input::Up(u) => {
                    let c = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(c, USERS[u].to_owned());
                    self.arrived.insert(c, self.rings.0.clone());
                    self.core.conn_up(c, USERS[u], &mut self.rings.point())
                }
                Input::Down(i) => {
                    let Some((c, _)) = self.conn(i) else { return };
                    let fx = self.core.conn_down(self.now, c, &mut self.rings.point());
                    self.conns.remove(&c);
                    self.deliveries.remove(&c);
                    self.apply(fx);
                    return;
                }
                Input::Join(i, r) => {
                    let Some((c, u)) = self.conn(i) else { return };
                    let m = self.moderation.get(ROOMS[r]).cloned().unwrap_or_default();
                    if self.core.check_join(ROOMS[r], &u, &m, self.now).is_err() {
                        // Refused: a live room that bans the user, or no room.
                        assert!(
                            !self.epochs.contains_key(ROOMS[r])
                                || m.banned_until(&u, self.now).is_some()
                        );
                        return;
                    }
                    match self
                        .core
                        .join(self.now, c, &u, ROOMS[r], &mut self.rings.point())
                    {
                        Ok(fx) => fx,
                        Err(e) => {
                            assert!(matches!(
                                e,
                                CoreError::TooManyRooms { .. } | CoreError::NoRoom(_)
                            ));
                            return;
                        }
                    }
                }
                Input::Leave(i, r) => {
                    let Some((c, u)) = self.conn(i) else { return };
                    self.core
                        .leave(c, &u, ROOMS[r], &mut self.rings.point())
                        .unwrap_or_default()
                }
                Input::Send(u, r) => {
                    let m = self.moderation.get(ROOMS[r]).cloned().unwrap_or_default();
                    let g = GlobalPolicy::default();
                    if self
                        .core
                        .check_send(ROOMS[r], USERS[u], &m, &g, self.now)
                        .is_ok()
                    {
                        self.rings.publish(ROOMS[r], 1);
                        let epoch = self.epochs[ROOMS[r]];
                        // Every membership of the room with no subscribed connection misses it.
                        for ((user, room, e), span) in self.spans.iter_mut() {
                            if room == ROOMS[r] && *e == epoch {
                                let served = self.deliveries.iter().any(|(c, d)| {
                                    self.conns.get(c) == Some(user)
                                        && d.subs.contains_key(&(room.clone(), epoch))
                                });
                                if !served {
                                    span.uncounted += 1;
                                }
                            }
                        }
                    }
                    return;
                }
                Input::Ban(u, r, ok) => {
                    let Some(&epoch) = self.epochs.get(ROOMS[r]) else {
                        return;
                    };
                    let after = After::Kick {
                        room: ROOMS[r].into(),
                        epoch,
                        users: vec![USERS[u].into()],
                        reason: KickReason::Banned,
                    };
                    let Effect::Store { id, .. } = self.core.submit(vec![], after) else {
                        unreachable!("submit stores")
                    };
                    if ok {
                        let until = self.now + GRACE;
                        let m = self.moderation.entry(ROOMS[r].to_owned()).or_default();
                        m.bans.insert(USERS[u].into(), until);
                    }
                    self.core.stored(id, ok, &mut self.rings.point())
                }
                Input::Mute(u, r) => {
                    let until = self.now + GRACE;
                    let m = self.moderation.entry(ROOMS[r].to_owned()).or_default();
                    m.mutes.insert(USERS[u].into(), until);
                    return;
                }
                Input::Destroy(r, ok) => {
                    let Some(&epoch) = self.epochs.get(ROOMS[r]) else {
                        return;
                    };
                    let after = After::Destroy {
                        room: ROOMS[r].into(),
                        epoch,
                    };
                    let Effect::Store { id, .. } = self
                        .core
                        .submit(vec![Op::DeleteRoom(ROOMS[r].into())], after)
                    else {
                        unreachable!("submit stores")
                    };
                    let fx = self.core.stored(id, ok, &mut self.rings.point());
                    if ok {
                        self.epochs.remove(ROOMS[r]);
                        self.dead
                            .entry(ROOMS[r].to_owned())
                            .or_default()
                            .push(epoch);
                        // A room's bans and mutes go with it.
                        self.moderation.remove(ROOMS[r]);
                        // A late destruction of the old incarnation changes nothing.
                        assert!(self.core.room_destroyed(ROOMS[r], epoch).is_empty());
                    }
                    fx
                }
                Input::Create(r) => {
                    self.create(ROOMS[r]);
                    return;
                }
                Input::Stale(r) => {
                    let Some(&epoch) = self.dead.get(ROOMS[r]).and_then(|d| d.first()) else {
                        return;
                    };
                    let before = format!("{:?}", self.core.room(ROOMS[r]));
                    assert!(self.core.room_destroyed(ROOMS[r], epoch).is_empty());
                    assert_eq!(before, format!("{:?}", self.core.room(ROOMS[r])));
                    return;
                }
                Input::Tick(dt) => {
                    self.now += dt;
                    let now = self.now;
                    let mut fx = Vec::new();
                    for r in ROOMS {
                        fx.extend(self.core.tick(now, r, &|_| false, &mut self.rings.point()));
                    }
                    self.apply(fx);
                    // No member is left with no connection past the grace.
                    for r in ROOMS {
                        if let Some(members) = self.core.room(r) {
                            for (u, m) in members.members() {
                                if let Some((since, _)) = m.offline {
                                    assert!(now < since + GRACE, "{u} in {r} offline past grace");
                                }
                                assert!(!m.conns.is_empty() || m.offline.is_some());
                            }
                        }
                    }
                    return;
                }
            };
            self.apply(fx);
        }

        fn invariants(&self) {
            self.core.check().unwrap();
            // A user banned from a room is not in it.
            for (room, m) in &self.moderation {
                for u in m.bans.keys() {
                    if m.banned_until(u, self.now).is_some() {
                        assert!(
                            !self.core.is_member(room, u),
                            "{u} banned from {room} is in it"
                        );
                    }
                }
            }
            // Every membership the core holds, the model holds, and the reverse.
            let mut held = BTreeSet::new();
            for r in ROOMS {
                if let Some(members) = self.core.room(r) {
                    for (u, _) in members.members() {
                        held.insert((u.clone(), r.to_owned(), members.epoch));
                    }
                }
            }
            let modeled: BTreeSet<_> = self.spans.keys().cloned().collect();
            assert_eq!(held, modeled);
            // Every subscription is of a live membership of its connection's user, and a member
            // served by some connection is subscribed there.
            for (c, d) in &self.deliveries {
                for (room, epoch) in d.subs.keys() {
                    let user = &self.conns[c];
                    assert!(
                        self.spans
                            .contains_key(&(user.clone(), room.clone(), *epoch)),
                        "{c} reads {room}@{epoch} after its membership ended"
                    );
                    assert!(!self.ended.contains(&(*c, room.clone(), *epoch)));
                }
            }
            for r in ROOMS {
                if let Some(members) = self.core.room(r) {
                    for (_, m) in members.members() {
                        for c in &m.conns {
                            assert!(
                                self.deliveries.get(c).is_some_and(|d| d
                                    .subs
                                    .contains_key(&(r.to_owned(), members.epoch))),
                                "{c} serves {r} unsubscribed"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Cases per property test: 256, or `PROPTEST_CASES` for a longer search.
    pub(crate) fn cases() -> u32 {
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        // 256 cases of up to 60 inputs by default (well under a second); for a longer search:
        // PROPTEST_CASES=20000 cargo test --lib room::core
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn random_inputs_keep_every_membership_invariant(
            single_room in any::<bool>(),
            inputs in proptest::collection::vec(input(), 1..60),
        ) {
            let mut w = World::new(single_room);
            for i in inputs {
                w.step(i);
                w.invariants();
            }
        }
    }
}

// ---- client-driven resume ----

#[test]
fn a_resume_is_a_join_of_the_same_incarnation_only() {
    let rings = Rings::default();
    // Room "r" is epoch 1.
    let mut core = core_with(cfg(1, false, 30_000), &["r", "s"]);
    core.conn_up(1, "u", &mut rings.point());
    // An incarnation that is gone: refused as destroyed, naming the epoch; nothing changes.
    let e = core
        .resume(0, 1, "u", "r", 7, &mut rings.point())
        .unwrap_err();
    assert_eq!(
        e,
        CoreError::Destroyed {
            room: "r".into(),
            epoch: 7,
            live: Some(1)
        }
    );
    let wire = WireError::from(e);
    assert_eq!(wire.code, ErrorCode::RoomNotFound);
    assert!(wire.message.contains("destroyed"), "{}", wire.message);
    assert!(!core.is_member("r", "u"));
    let e = core
        .resume(0, 1, "u", "gone", 1, &mut rings.point())
        .unwrap_err();
    assert!(
        matches!(e, CoreError::Destroyed { live: None, .. }),
        "{e:?}"
    );
    // The live one: a join, with a join's subscription and a join's limits.
    let fx = core.resume(5, 1, "u", "r", 1, &mut rings.point()).unwrap();
    assert_eq!(subscribes(&fx), [(1, "r".to_owned(), None)]);
    assert!(matches!(&fx[0], Effect::Joined { members: 1, .. }));
    let e = core
        .resume(5, 1, "u", "s", 2, &mut rings.point())
        .unwrap_err();
    assert_eq!(WireError::from(e).code, ErrorCode::TooManyRooms);
    // Already served by this connection: nothing to do.
    assert!(
        core.resume(6, 1, "u", "r", 1, &mut rings.point())
            .unwrap()
            .is_empty()
    );
    core.check().unwrap();
}

#[test]
fn a_restored_room_remembers_the_numbers_its_earlier_run_reserved() {
    let mut core = core_with(cfg(8, false, 30_000), &["r"]);
    assert_eq!(core.room("r").unwrap().unused, (0, 0));
    core.room_restarted("r", 1, 40, 10_001);
    assert_eq!(core.room("r").unwrap().unused, (40, 10_001));
    // Another incarnation's restart does not touch this one.
    core.room_restarted("r", 2, 5, 9);
    assert_eq!(core.room("r").unwrap().unused, (40, 10_001));
}

#[test]
fn resume_missed_counts_what_neither_history_nor_the_ring_replays() {
    // Nothing after the client's newest: nothing missed.
    assert_eq!(resume_missed(10, 11, 10, 0, (0, 0)), 0);
    // The ring replays everything after 10.
    assert_eq!(resume_missed(10, 11, 50, 0, (0, 0)), 0);
    // The ring from 31: 11..=30 from history, 15 of them stored, 5 were low-priority.
    assert_eq!(resume_missed(10, 31, 50, 15, (0, 0)), 5);
    // All 20 stored.
    assert_eq!(resume_missed(10, 31, 50, 20, (0, 0)), 0);
    // `below` past the newest: bounded by the newest.
    assert_eq!(resume_missed(10, 1_000, 20, 4, (0, 0)), 6);
    // A restart: the earlier run stored up to 40 and reserved to 10_000; this run starts at
    // 10_001 and its ring holds all of it. From 30: 31..=40 from history, of which 8 are
    // stored; 41..=10_000 were never used.
    assert_eq!(resume_missed(30, 10_001, 10_020, 8, (40, 10_001)), 2);
    assert_eq!(resume_missed(30, 10_001, 10_020, 10, (40, 10_001)), 0);
    // A client whose newest is inside the unused range (the previous run's low message) or at
    // its end.
    assert_eq!(resume_missed(45, 10_001, 10_020, 0, (40, 10_001)), 0);
    assert_eq!(resume_missed(10_000, 10_001, 10_020, 0, (40, 10_001)), 0);
    // This run's ring no longer holds its start: 10_001..=10_099 from history, 90 stored.
    assert_eq!(resume_missed(30, 10_100, 10_200, 100, (40, 10_001)), 9);
}
