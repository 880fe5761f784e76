//! Admission of new QUIC connections: handshakes in progress are counted and capped, and past a
//! threshold a client must prove its address (QUIC Retry) before the relay keeps any state for it.
//!
//! A connection counts as *handshaking* from its first packet until its opening ends: the QUIC
//! handshake, the hello, the token check and the delivery stream, within
//! `transport.handshake_timeout_ms` for the handshake and `transport.hello_timeout_ms` for all of
//! it. For each new connection attempt, with `n` handshakes in progress:
//! 1. `n >= transport.retry_threshold` and the client's address is not validated yet: answer with
//!    a Retry. The Retry carries a token bound to the address and costs the relay no state; a real
//!    client comes back at once with it (one round trip more), a flood from addresses that do not
//!    answer (or are spoofed) ends there.
//! 2. `n >= transport.max_handshakes`: refuse (QUIC `CONNECTION_REFUSED`), so the state a crowd of
//!    real peers can make the relay hold is bounded too.
//! 3. Otherwise accept.
//!
//! The decision is the pure [`decide`]; the accept loop applies it.

use crate::metrics as m;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What to do with a new connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Start the handshake.
    Accept,
    /// Ask the client to prove its address first (stateless).
    Retry,
    /// Refuse the connection (stateless).
    Refuse,
}

/// The limits [`decide`] applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Handshakes in progress from which unvalidated clients get a Retry (0: always).
    pub retry_threshold: usize,
    /// Handshakes in progress from which new connections are refused.
    pub max_handshakes: usize,
}

/// The decision for an attempt with `in_progress` handshakes running; `validated`: the client
/// came back with a Retry token (or one from an earlier connection) that proves its address;
/// `may_retry`: a Retry is still possible for it (a client only gets one).
pub(crate) fn decide(
    in_progress: usize,
    validated: bool,
    may_retry: bool,
    limits: Limits,
) -> Admit {
    if !validated && in_progress >= limits.retry_threshold {
        return if may_retry {
            Admit::Retry
        } else {
            Admit::Refuse
        };
    }
    if in_progress >= limits.max_handshakes {
        return Admit::Refuse;
    }
    Admit::Accept
}

/// The count of handshakes in progress, shared by the accept loops and the sessions.
#[derive(Debug, Default)]
pub(crate) struct Handshakes {
    in_progress: AtomicUsize,
}

impl Handshakes {
    /// Decides on `incoming` and applies the decision: a Retry or a refusal is sent at once and
    /// `None` returned; an accepted attempt is counted until its [`Handshaking`] guard drops.
    pub(crate) fn admit(
        self: &Arc<Self>,
        incoming: quinn::Incoming,
        limits: Limits,
    ) -> Option<(quinn::Incoming, Handshaking)> {
        let n = self.in_progress.load(Ordering::Relaxed);
        match decide(
            n,
            incoming.remote_address_validated(),
            incoming.may_retry(),
            limits,
        ) {
            Admit::Accept => Some((incoming, Handshaking::start(self.clone()))),
            Admit::Retry => {
                metrics::counter!(m::HANDSHAKES_RETRIED).increment(1);
                // Fails only when the client already had its Retry, which `may_retry` excluded.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                None
            }
            Admit::Refuse => {
                metrics::counter!(m::HANDSHAKES_REFUSED).increment(1);
                incoming.refuse();
                None
            }
        }
    }
}

/// One handshake in progress, counted (and in the [`m::CONNECTIONS_HANDSHAKING`] gauge, not yet
/// in [`m::CONNECTIONS`]) until dropped.
pub(crate) struct Handshaking {
    /// The QUIC admission count it is part of; `None` for a WebSocket's opening, which QUIC
    /// admission does not limit (the public listener caps its connections itself).
    of: Option<Arc<Handshakes>>,
}

impl Handshaking {
    fn start(of: Arc<Handshakes>) -> Self {
        of.in_progress.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::CONNECTIONS_HANDSHAKING).increment(1.0);
        Handshaking { of: Some(of) }
    }

    /// An opening outside QUIC admission (a WebSocket's): in the gauge only.
    pub(crate) fn gauge_only() -> Self {
        metrics::gauge!(m::CONNECTIONS_HANDSHAKING).increment(1.0);
        Handshaking { of: None }
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        if let Some(of) = &self.of {
            of.in_progress.fetch_sub(1, Ordering::Relaxed);
        }
        metrics::gauge!(m::CONNECTIONS_HANDSHAKING).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        retry_threshold: 64,
        max_handshakes: 1024,
    };

    #[test]
    fn below_the_threshold_everyone_is_accepted() {
        for validated in [false, true] {
            assert_eq!(decide(0, validated, true, LIMITS), Admit::Accept);
            assert_eq!(decide(63, validated, true, LIMITS), Admit::Accept);
        }
    }

    #[test]
    fn from_the_threshold_unvalidated_clients_get_a_retry_and_validated_ones_get_in() {
        assert_eq!(decide(64, false, true, LIMITS), Admit::Retry);
        assert_eq!(decide(1023, false, true, LIMITS), Admit::Retry);
        assert_eq!(decide(64, true, false, LIMITS), Admit::Accept);
        assert_eq!(decide(1023, true, false, LIMITS), Admit::Accept);
        // A client that already had its Retry and is still not validated (a bad token).
        assert_eq!(decide(64, false, false, LIMITS), Admit::Refuse);
    }

    #[test]
    fn from_the_cap_even_validated_clients_are_refused() {
        assert_eq!(decide(1024, true, false, LIMITS), Admit::Refuse);
        assert_eq!(decide(5000, true, false, LIMITS), Admit::Refuse);
        // Unvalidated ones still get the (stateless) Retry first.
        assert_eq!(decide(1024, false, true, LIMITS), Admit::Retry);
    }

    #[test]
    fn a_zero_threshold_always_asks_for_a_retry() {
        let always = Limits {
            retry_threshold: 0,
            ..LIMITS
        };
        assert_eq!(decide(0, false, true, always), Admit::Retry);
        assert_eq!(decide(0, true, false, always), Admit::Accept);
    }
}
