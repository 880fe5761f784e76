//! How the relay makes a durable change so that what it tells anyone is what a restart finds.
//!
//! Every change the store keeps (a room's creation, destruction, policies and moderation lists,
//! attributes, recalls, the app-wide lists) goes the same way:
//! 1. cheap checks, and a refusal at once when the store is known to be failing
//!    (`Relay::check_writable`);
//! 2. the change lock of what it changes (`Relay::lock_room`, `Relay::lock_global`; in that
//!    order when both), an async lock held until the change is in memory, so changes reach the
//!    store in the order memory makes them and each is decided on the state the one before left;
//! 3. the decision, on the current state (under its std lock, briefly), which yields the store
//!    ops and nothing else: memory is not touched yet;
//! 4. `Relay::commit`: the ops are stored; once they are durable, the change is applied to
//!    memory and its visible effects (events, kicks, notices) are produced. If the store refuses
//!    or fails, nothing changes anywhere and the caller gets `UNAVAILABLE`.
//!
//! In `sync` mode step 4 applies the change on the store's writer thread right after the commit,
//! before the ack resolves: a caller that stops waiting (a closed HTTP connection) cannot leave
//! a stored change unapplied, or the other way round. In `batched` mode acks resolve before the
//! commit by definition, so the change is applied at once, and a batch the disk then refuses is
//! lost like the last `flush_ms` of a crash.
//!
//! Messages take a lighter path (no change lock, see [`Relay::send`]): they are stamped in order
//! and held out of the room's ring until their append is durable.

use super::relay::Relay;
use crate::protocol::{ErrorCode, WireError};
use crate::room::Room;
use crate::store::{Op, StoreError, StoreHealth, Then};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// A change lock, held until the change it guards is in memory.
pub(crate) type ChangeGuard = tokio::sync::OwnedMutexGuard<()>;

/// The outcome of a request that may change durable state: await [`Durable::wait`].
///
/// The checks that need no lock have run when the call that returned it returned (and refused
/// at once when they failed). A message is already stamped; the wait resolves when it is durable
/// (and visible) or refused. Any other change happens in the wait: it is decided, stored, and
/// only then applied and made visible, so nothing of it is seen before it is durable. Once its
/// ops are submitted, a change completes even if the wait is dropped.
#[must_use = "a change takes effect only when waited for"]
pub struct Durable<T>(Pin<Box<dyn Future<Output = Result<T, WireError>> + Send>>);

impl<T: Send + 'static> Durable<T> {
    /// A result with nothing to wait for.
    pub fn now(value: T) -> Self {
        Durable(Box::pin(std::future::ready(Ok(value))))
    }

    /// The outcome of `f`.
    pub(crate) fn later(f: impl Future<Output = Result<T, WireError>> + Send + 'static) -> Self {
        Durable(Box::pin(f))
    }

    /// Waits for the outcome.
    pub async fn wait(self) -> Result<T, WireError> {
        self.0.await
    }
}

/// `UNAVAILABLE`: the store could not make `what` durable, so it was not made.
pub(crate) fn unavailable(what: &str, e: &StoreError) -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        format!(
            "{what}: the store cannot write ({}); retry later",
            e.message()
        ),
    )
}

/// The usual `what` of [`unavailable`].
pub(crate) const NOT_MADE: &str = "the change was not made";

impl Relay {
    /// Refuses at once (`UNAVAILABLE`) while the store is failing.
    pub(crate) fn check_writable(&self) -> Result<(), WireError> {
        if self.store().writable() {
            return Ok(());
        }
        let why = match self.store().health() {
            StoreHealth::Failing { error, .. } => error,
            StoreHealth::Closed => "the relay is shutting down".to_owned(),
            StoreHealth::Healthy => "it failed a moment ago".to_owned(),
        };
        Err(unavailable(NOT_MADE, &StoreError::Unavailable(why)))
    }

    /// Takes `room`'s change lock; `ROOM_NOT_FOUND` if the room was destroyed meanwhile.
    pub(crate) async fn lock_room(&self, room: &Arc<Room>) -> Result<ChangeGuard, WireError> {
        let guard = room.changes.clone().lock_owned().await;
        if room.is_closed() {
            return Err(super::relay::room_not_found(&room.id));
        }
        Ok(guard)
    }

    /// Takes the change lock of the app-wide lists.
    pub(crate) async fn lock_global(&self) -> ChangeGuard {
        self.global_changes.clone().lock_owned().await
    }

    /// Stores `ops`; once they are durable runs `finish(true)`, which applies the change and
    /// returns its result. If the store refuses or fails, runs `finish(false)` (which undoes
    /// whatever the decision reserved, and drops its locks) and answers `UNAVAILABLE` with `what`.
    /// `finish` owns the change locks, so they are held until it ran. See the module doc for
    /// where it runs.
    pub(crate) async fn commit<T: Send + 'static>(
        &self,
        what: &'static str,
        ops: Vec<Op>,
        finish: impl FnOnce(bool) -> Option<T> + Send + 'static,
    ) -> Result<T, WireError> {
        self.commit_or_fenced(what, ops, finish)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`commit`](Self::commit), telling also whether a refusal was the shared store's fence
    /// (another relay wrote what this one expected to find unchanged): `(error, true)`.
    pub(crate) async fn commit_or_fenced<T: Send + 'static>(
        &self,
        what: &'static str,
        ops: Vec<Op>,
        finish: impl FnOnce(bool) -> Option<T> + Send + 'static,
    ) -> Result<T, (WireError, bool)> {
        let fenced = |e: &StoreError| matches!(e, StoreError::Fenced(_));
        let lost = || {
            WireError::new(
                ErrorCode::Unavailable,
                format!("{what}: the store failed while writing it; retry later"),
            )
        };
        if ops.is_empty() {
            return finish(true).ok_or_else(|| (lost(), false));
        }
        // Whoever takes `finish` first runs it: the writer after the commit (sync), or this
        // task right after the submit (batched, where the ack has resolved already).
        type Finish<T> = Box<dyn FnOnce(bool) -> Option<T> + Send>;
        let slot: Arc<Mutex<Option<Finish<T>>>> = Arc::new(Mutex::new(Some(Box::new(finish))));
        let take =
            |slot: &Mutex<Option<Finish<T>>>| slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let in_then = slot.clone();
        let then = Then::new(move |outcome| {
            if let Some(f) = take(&in_then)
                && let Some(value) = f(outcome.is_ok())
            {
                let _ = tx.send(value);
            }
        });
        let ack = self.store().submit_then(ops, Some(then));
        if let Some(e) = ack.refused() {
            let e = (unavailable(what, e), fenced(e));
            if let Some(f) = take(&slot) {
                f(false);
            }
            return Err(e);
        }
        if ack.is_done()
            && let Some(f) = take(&slot)
        {
            return f(true).ok_or_else(|| (lost(), false));
        }
        drop(slot);
        ack.wait()
            .await
            .map_err(|e| (unavailable(what, &e), fenced(&e)))?;
        rx.await.map_err(|_| (lost(), false))
    }
}
