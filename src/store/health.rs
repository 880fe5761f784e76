//! Whether a store takes writes, shared by both backends: healthy, failing (since when, why,
//! how often) or closed, with the store metrics kept in step.

use super::{StoreError, StoreHealth};
use crate::metrics as m;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const CLOSED: u8 = 2;

/// Whether the store takes writes, and why not; shared by the writer, submitters and readers.
pub(super) struct Health {
    state: AtomicU8,
    /// `(since_ms, last error, failures)` while failing.
    detail: Mutex<(u64, String, u64)>,
}

impl Health {
    pub(super) fn new() -> Self {
        metrics::gauge!(m::STORE_HEALTHY).set(1.0);
        Health {
            state: AtomicU8::new(HEALTHY),
            detail: Mutex::new((0, String::new(), 0)),
        }
    }

    pub(super) fn writable(&self) -> bool {
        self.state.load(Ordering::Acquire) == HEALTHY
    }

    /// Records a failed write (a transaction or a probe).
    pub(super) fn failed(&self, e: &StoreError) {
        metrics::counter!(m::STORE_WRITE_FAILURES).increment(1);
        metrics::gauge!(m::STORE_HEALTHY).set(0.0);
        let mut d = self.detail.lock().unwrap_or_else(|p| p.into_inner());
        if self.state.load(Ordering::Acquire) == HEALTHY {
            *d = (now_ms(), String::new(), 0);
        }
        d.1 = e.message().to_owned();
        d.2 += 1;
        let _ = self
            .state
            .compare_exchange(HEALTHY, FAILING, Ordering::AcqRel, Ordering::Acquire);
    }

    pub(super) fn recovered(&self) {
        let _ = self
            .state
            .compare_exchange(FAILING, HEALTHY, Ordering::AcqRel, Ordering::Acquire);
        metrics::gauge!(m::STORE_HEALTHY).set(1.0);
    }

    pub(super) fn close(&self) {
        self.state.store(CLOSED, Ordering::Release);
        metrics::gauge!(m::STORE_HEALTHY).set(0.0);
    }

    /// Why a submit is refused now.
    pub(super) fn refusal(&self) -> StoreError {
        match self.state.load(Ordering::Acquire) {
            CLOSED => closed_error(),
            _ => {
                let d = self.detail.lock().unwrap_or_else(|p| p.into_inner());
                StoreError::Unavailable(format!("the store cannot write: {}", d.1))
            }
        }
    }

    pub(super) fn snapshot(&self) -> StoreHealth {
        match self.state.load(Ordering::Acquire) {
            HEALTHY => StoreHealth::Healthy,
            CLOSED => StoreHealth::Closed,
            _ => {
                let d = self.detail.lock().unwrap_or_else(|p| p.into_inner());
                StoreHealth::Failing {
                    since_ms: d.0,
                    error: d.1.clone(),
                    failures: d.2,
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn closed_error() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}
