//! When a room's owner renews its lease and when it must stop sequencing: plain decisions on
//! times the caller passes (`now`, ms on a monotonic clock), with no socket or timer.
//!
//! The lease is an entry in NATS KV whose age limit is the TTL: it disappears TTL after its
//! last write unless renewed. The owner counts from when it *sent* the last renewal NATS
//! acknowledged (the entry was written no earlier), renews every third of the TTL, and stops
//! sequencing once TTL minus a quarter has passed since: a renewal that is lost or late leaves a
//! quarter of the TTL of slack for clock rates and delays before anyone else can acquire.

/// What the owner of a room does at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// Nothing yet.
    Hold,
    /// Send a renewal (compare-and-set on the revision it holds).
    Renew,
    /// Stop sequencing: the lease may be gone or about to be.
    StepDown,
}

/// The lease a relay holds on one room, as times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    ttl_ms: u64,
    /// When the newest acknowledged write of the entry was sent.
    acked_at: u64,
    /// When a renewal in flight was sent, if one is.
    renewing: Option<u64>,
}

impl Lease {
    /// A lease acquired by a write sent at `sent_at` that NATS acknowledged.
    pub fn acquired(ttl_ms: u64, sent_at: u64) -> Self {
        Lease {
            ttl_ms,
            acked_at: sent_at,
            renewing: None,
        }
    }

    /// Renewal interval: a third of the TTL.
    pub fn renew_every(&self) -> u64 {
        self.ttl_ms / 3
    }

    /// Time after the last acknowledged write at which the owner stops sequencing.
    pub fn stop_after(&self) -> u64 {
        self.ttl_ms - self.ttl_ms / 4
    }

    /// Whether the owner may still assign sequence numbers at `now`.
    pub fn may_sequence(&self, now: u64) -> bool {
        now < self.acked_at.saturating_add(self.stop_after())
    }

    /// What to do at `now`. A renewal in flight is not sent again until it is answered, or
    /// until another renewal interval passed without an answer.
    pub fn step(&self, now: u64) -> LeaseStep {
        if !self.may_sequence(now) {
            return LeaseStep::StepDown;
        }
        let due = now >= self.acked_at.saturating_add(self.renew_every());
        let waiting = self
            .renewing
            .is_some_and(|sent| now < sent.saturating_add(self.renew_every()));
        if due && !waiting {
            LeaseStep::Renew
        } else {
            LeaseStep::Hold
        }
    }

    /// A renewal was sent at `now`.
    pub fn renewal_sent(&mut self, now: u64) {
        self.renewing = Some(now);
    }

    /// The renewal sent at `sent_at` was acknowledged.
    pub fn renewed(&mut self, sent_at: u64) {
        self.acked_at = self.acked_at.max(sent_at);
        self.renewing = None;
    }

    /// The renewal sent at `sent_at` got no answer (NATS did not answer in time): tried again at
    /// the next step.
    pub fn renewal_failed(&mut self) {
        self.renewing = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_every_third_and_waits_for_the_answer() {
        let mut l = Lease::acquired(9_000, 1_000);
        assert_eq!(l.step(1_000), LeaseStep::Hold);
        assert_eq!(l.step(3_999), LeaseStep::Hold);
        assert_eq!(l.step(4_000), LeaseStep::Renew);
        l.renewal_sent(4_000);
        assert_eq!(l.step(4_500), LeaseStep::Hold, "one renewal in flight");
        l.renewed(4_000);
        assert_eq!(l.step(6_999), LeaseStep::Hold);
        assert_eq!(l.step(7_000), LeaseStep::Renew);
    }

    #[test]
    fn stops_sequencing_a_quarter_before_the_ttl_since_the_last_acknowledged_write() {
        let mut l = Lease::acquired(8_000, 0);
        assert_eq!(l.stop_after(), 6_000);
        assert!(l.may_sequence(5_999));
        assert!(!l.may_sequence(6_000));
        assert_eq!(l.step(6_000), LeaseStep::StepDown);
        // A renewal counts from when it was sent, not from when its answer came.
        l.renewal_sent(2_700);
        l.renewed(2_700);
        assert!(l.may_sequence(8_699));
        assert_eq!(l.step(8_700), LeaseStep::StepDown);
        // An older answer never moves it back.
        l.renewed(1_000);
        assert!(l.may_sequence(8_699));
    }

    #[test]
    fn an_unanswered_renewal_is_sent_again_until_the_lease_runs_out() {
        let mut l = Lease::acquired(9_000, 0);
        l.renewal_sent(3_000);
        assert_eq!(l.step(5_999), LeaseStep::Hold);
        assert_eq!(
            l.step(6_000),
            LeaseStep::Renew,
            "no answer for a whole interval"
        );
        l.renewal_failed();
        assert_eq!(l.step(6_100), LeaseStep::Renew, "failed: try at once");
        l.renewal_sent(6_100);
        assert_eq!(l.step(6_749), LeaseStep::Hold);
        assert_eq!(
            l.step(6_750),
            LeaseStep::StepDown,
            "never renewed: stop at 3/4 TTL"
        );
    }
}
