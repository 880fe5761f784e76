//! Holes in a room's live traffic, as a relay that does not own the room sees them: the owner's
//! stamp on every live message, and what a hole between two messages holds (plain code, no I/O).
//!
//! Live traffic is core NATS, at most once: a relay cut off from NATS for a moment, a
//! subscription made while messages flow, an owner that died between a message's ack and its
//! live publish, or a full queue all leave numbers a relay never received. Sequence numbers are
//! not enough to tell them from numbers never used (a refused send's, or those an owner reserved
//! and never used), and low-priority messages are not stored, so history cannot tell either.
//! The owner therefore stamps every live message ([`TERM_HEADER`]) with its term (the lease
//! revision at which it took the room), the first number of the term, and how many messages of
//! each class it placed in the term up to and including this one. Within a term the numbers
//! only grow, so between two stamped messages of one term the difference of the counts is
//! exactly what was placed between them, per class; from a term's first number to a message of
//! it, its counts are.

use crate::protocol::Class;
use crate::room::ring::{ClassCounts, class_index};

/// Header of a live message: the owner's [`Stamp`].
pub const TERM_HEADER: &str = "Roomcast-Term";

/// What the owner stamps on a live message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The owner's term: the lease revision at which it took the room.
    pub term: u64,
    /// The first sequence number of the term.
    pub first: u64,
    /// Messages placed in the term up to and including this one, per class.
    pub counts: ClassCounts,
}

impl Stamp {
    /// The header value: `term first protected normal low`.
    pub fn encode(&self) -> String {
        let [p, n, l] = self.counts;
        format!("{} {} {p} {n} {l}", self.term, self.first)
    }

    /// Reads a header value; `None` when it is not one.
    pub fn parse(value: &str) -> Option<Stamp> {
        let mut it = value.split(' ').map(|t| t.parse::<u64>().ok());
        let mut next = || it.next().flatten();
        let stamp = Stamp {
            term: next()?,
            first: next()?,
            counts: [next()?, next()?, next()?],
        };
        match it.next() {
            None => Some(stamp),
            Some(_) => None,
        }
    }
}

/// The newest message a relay placed from a room's live traffic, with its stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its sequence number.
    pub seq: u64,
    /// The owner's stamp on it.
    pub stamp: Stamp,
}

/// The messages of one term a hole holds, as the stamps tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The hole's messages with `seq >= from` are of the arriving message's term.
    pub from: u64,
    /// How many there are, per class.
    pub counts: ClassCounts,
}

/// What the hole between `last` (the newest number the ring has) and an arriving message
/// `seq` of `class` with `stamp` holds of the arriving message's term: exact when the relay
/// saw the term's previous message at `last`, or when the term began after `last`; `None` when
/// the stamps cannot tell (the first message after a subscription, in a term that began before
/// the relay's numbering; or an unstamped message).
pub fn expected(
    last: u64,
    seq: u64,
    class: Class,
    stamp: Option<Stamp>,
    seen: Option<Seen>,
) -> Option<Expected> {
    let s = stamp?;
    let mut counts = s.counts;
    let own = &mut counts[class_index(class)];
    *own = own.saturating_sub(1);
    match seen {
        Some(p) if p.stamp.term == s.term && p.seq == last => {
            for (c, before) in counts.iter_mut().zip(p.stamp.counts) {
                *c = c.saturating_sub(before);
            }
            Some(Expected {
                from: last + 1,
                counts,
            })
        }
        _ if s.first > last && s.first <= seq => Some(Expected {
            from: s.first,
            counts,
        }),
        _ => None,
    }
}

/// What the members are told they missed of a hole, per class: of the arriving message's term,
/// what the stamps say it held (`expected`) less what history gave (`found`, per class, the
/// term's messages only); plus `unknown` numbers outside the term known to be messages that
/// history cannot give (recalled, or beyond the read) — counted as normal. A `Gap` has no
/// protected count (a protected message is never shed), so a protected message history lacks
/// (recalled, trimmed) is counted as normal.
pub fn missed(expected: Option<Expected>, found: ClassCounts, unknown: u64) -> ClassCounts {
    let mut out = [0; 3];
    if let Some(e) = expected {
        for (o, (want, got)) in out.iter_mut().zip(e.counts.iter().zip(found)) {
            *o = want.saturating_sub(got);
        }
    }
    let protected = std::mem::take(&mut out[class_index(Class::Protected)]);
    out[class_index(Class::Normal)] += protected + unknown;
    out
}

/// Numbers strictly between `lo` and `hi` that are not in `unused` (the never-used numbers
/// `unused.0 < seq < unused.1` an ownership change left).
pub fn used_between(lo: u64, hi: u64, unused: (u64, u64)) -> u64 {
    let span = hi.saturating_sub(lo.saturating_add(1));
    let u_lo = unused.0.max(lo).saturating_add(1);
    let u_hi = unused.1.min(hi);
    span.saturating_sub(u_hi.saturating_sub(u_lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(term: u64, first: u64, counts: ClassCounts) -> Stamp {
        Stamp {
            term,
            first,
            counts,
        }
    }

    #[test]
    fn a_stamp_reads_back_and_garbage_is_refused() {
        let s = stamp(7, 1001, [1, 20, 3]);
        assert_eq!(s.encode(), "7 1001 1 20 3");
        assert_eq!(Stamp::parse(&s.encode()), Some(s));
        for bad in [
            "",
            "7 1001 1 20",
            "7 1001 1 20 3 4",
            "7 x 1 2 3",
            "-1 1 1 1 1",
        ] {
            assert_eq!(Stamp::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn within_a_term_the_counts_tell_the_hole_exactly() {
        // Seen seq 10 with counts [0, 8, 2]; seq 20 arrives (normal) with [0, 12, 5]: between
        // them 3 normal and 3 low messages, the other 3 numbers never used.
        let seen = Seen {
            seq: 10,
            stamp: stamp(4, 1, [0, 8, 2]),
        };
        let e = expected(
            10,
            20,
            Class::Normal,
            Some(stamp(4, 1, [0, 12, 5])),
            Some(seen),
        );
        assert_eq!(
            e,
            Some(Expected {
                from: 11,
                counts: [0, 3, 3]
            })
        );
        // History gave the 3 normal ones: only the low ones are missed.
        assert_eq!(missed(e, [0, 3, 0], 0), [0, 0, 3]);
        // A recalled normal one is missed too.
        assert_eq!(missed(e, [0, 2, 0], 0), [0, 1, 3]);
    }

    #[test]
    fn a_new_term_counts_from_its_first_number() {
        // The relay has 10; the new owner's term began at 1001 (1..=1000 reserved earlier);
        // 1003 arrives as the term's third message (the first two were missed).
        let e = expected(10, 1003, Class::Low, Some(stamp(9, 1001, [1, 0, 2])), None);
        assert_eq!(
            e,
            Some(Expected {
                from: 1001,
                counts: [1, 0, 1]
            })
        );
        // A protected one history lacks is told as normal; the low one as low.
        assert_eq!(missed(e, [0, 0, 0], 0), [0, 1, 1]);
        // Seen in an older term: the same.
        let old = Seen {
            seq: 10,
            stamp: stamp(3, 1, [0, 10, 0]),
        };
        assert_eq!(
            expected(
                10,
                1003,
                Class::Low,
                Some(stamp(9, 1001, [1, 0, 2])),
                Some(old)
            ),
            e
        );
    }

    #[test]
    fn the_first_message_after_a_subscription_in_a_running_term_tells_nothing() {
        // The term began at 1, the relay's numbering is at 50 (history): unknown.
        assert_eq!(
            expected(50, 60, Class::Normal, Some(stamp(2, 1, [0, 59, 0])), None),
            None
        );
        // Seen, but not at `last` (the ring moved on another way): unknown as well.
        let seen = Seen {
            seq: 40,
            stamp: stamp(2, 1, [0, 40, 0]),
        };
        assert_eq!(
            expected(
                50,
                60,
                Class::Normal,
                Some(stamp(2, 1, [0, 59, 0])),
                Some(seen)
            ),
            None
        );
        assert_eq!(expected(50, 60, Class::Normal, None, None), None);
        // Then only what history shows to be missing is counted.
        assert_eq!(missed(None, [0, 9, 0], 2), [0, 2, 0]);
    }

    #[test]
    fn numbers_used_leave_out_the_unused_range() {
        assert_eq!(used_between(10, 20, (0, 0)), 9);
        // 12 < seq < 16 never used: 13, 14, 15.
        assert_eq!(used_between(10, 20, (12, 16)), 6);
        // A range wider than the span.
        assert_eq!(used_between(10, 20, (5, 100)), 0);
        assert_eq!(used_between(10, 11, (0, 0)), 0);
    }
}
