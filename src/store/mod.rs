//! The durable store behind a small trait: rooms and their policies, attributes, the app-wide
//! lists and message history survive a restart and a crash.
//!
//! The relay never waits on disk while it holds a lock: it [`Store::submit`]s ordered batches of
//! [`Op`]s and awaits the returned [`Ack`] afterwards, outside every lock. A change becomes
//! visible only once its ack resolved without error (see the server's module docs), so what the
//! relay tells anyone is what a restart finds. [`RedbStore`] applies submits on one writer thread
//! with group commit: everything queued while a commit is in flight goes into the next
//! transaction, so the disk cost is shared by all of it.
//!
//! Durability (see [`Durability`]):
//! - `sync`: an [`Ack`] resolves after the transaction holding its ops is fsynced. A client's send
//!   reply and an admin call's answer wait for it: nothing acknowledged is lost on a crash.
//! - `batched`: acks resolve at once; the writer fsyncs at least every `flush_ms`. A crash, or a
//!   batch the disk refuses, loses at most the last `flush_ms` of changes, for lower reply latency
//!   and less disk traffic.
//!
//! Faults: a store that cannot write (disk full, an I/O error) reports it through
//! [`Store::health`] and refuses every later submit at once, until it has recovered by itself
//! (see [`RedbStore`]); the relay answers `UNAVAILABLE` meanwhile.

mod guard;
mod health;
// ---- cluster: the JetStream store ----
pub mod nats;
// ---- end cluster ----
mod quota;
mod redb_store;

pub use quota::{Quota, QuotaFile};
pub use redb_store::{DiskFile, RedbStore, StoreFile, StoreStats};
// ---- cluster ----
pub use nats::{NatsAuth, NatsConfig, NatsStore};
// ---- end cluster ----

use crate::policy::GlobalPolicy;
pub use crate::room::records::{
    AttrRecord, Durability, LoadedRoom, Op, RoomRecord, Snapshot, StoredMessage,
};
use serde::Serialize;

/// Why the store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot read or write now (disk full, an I/O error, recovering, closed); it may
    /// take writes again later.
    #[error("{0}")]
    Unavailable(String),
    /// The file or a value in it is damaged: retrying does not help.
    #[error("{0}")]
    Damaged(String),
    /// Another writer changed what this store wrote (a shared store: its history fence or a
    /// KV revision refused the write); this store must reload before it writes it again.
    #[error("{0}")]
    Fenced(String),
}

impl StoreError {
    /// The message, without the kind.
    pub fn message(&self) -> &str {
        match self {
            StoreError::Unavailable(m) | StoreError::Damaged(m) | StoreError::Fenced(m) => m,
        }
    }
}

/// What the store can do right now, as `/healthz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoreHealth {
    /// Writes succeed.
    Healthy,
    /// The last write failed; submits are refused until a probe write succeeds.
    Failing {
        /// Since when, ms since the Unix epoch.
        since_ms: u64,
        /// The error of the last failed write.
        error: String,
        /// Failed writes (transactions and probes) since it started failing.
        failures: u64,
    },
    /// Closed: the relay is stopping.
    Closed,
}

/// Store settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// When acks resolve.
    pub durability: Durability,
    /// Longest time between fsyncs in `batched` mode, ms.
    pub flush_ms: u64,
    /// Messages kept per room (the newest).
    pub history_max: usize,
    /// Oldest message kept, ms of age.
    pub history_max_age_ms: u64,
    /// Page cache of the embedded store, bytes (the JetStream store has none of its own).
    pub cache_bytes: usize,
}

/// Resolves when the ops it was returned for are durable (per [`Durability`]).
#[must_use = "await the ack before acknowledging the change to anyone"]
pub struct Ack(AckState);

enum AckState {
    Done,
    Failed(StoreError),
    Pending(tokio::sync::oneshot::Receiver<Result<(), StoreError>>),
}

impl Ack {
    /// An ack that is already resolved.
    pub fn done() -> Self {
        Ack(AckState::Done)
    }

    /// An ack that has already failed: the ops were not taken.
    pub fn failed(e: StoreError) -> Self {
        Ack(AckState::Failed(e))
    }

    /// An ack that resolves when `rx` does.
    pub fn pending(rx: tokio::sync::oneshot::Receiver<Result<(), StoreError>>) -> Self {
        Ack(AckState::Pending(rx))
    }

    /// The error, if the store refused the ops at once (nothing was queued).
    pub fn refused(&self) -> Option<&StoreError> {
        match &self.0 {
            AckState::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the ack resolved at submit (batched mode, or nothing to store).
    pub fn is_done(&self) -> bool {
        matches!(self.0, AckState::Done)
    }

    /// Waits until durable.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            AckState::Done => Ok(()),
            AckState::Failed(e) => Err(e),
            AckState::Pending(rx) => rx.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable("the store writer stopped".into()))
            }),
        }
    }
}

/// Work the store runs once a submit's ops are committed or have failed: on the writer, in
/// submission order, before the submit's [`Ack`] resolves. It must not block on anything that
/// waits for the store (taking a lock that a submitter holds briefly is fine: submits never wait).
pub struct Then(Option<ThenFn>);

/// The work of a [`Then`].
type ThenFn = Box<dyn FnOnce(Result<(), &StoreError>) + Send>;

impl Then {
    /// Runs `f` with the outcome.
    pub fn new(f: impl FnOnce(Result<(), &StoreError>) + Send + 'static) -> Self {
        Then(Some(Box::new(f)))
    }

    /// Runs it now with `outcome`.
    pub fn run(mut self, outcome: Result<(), &StoreError>) {
        if let Some(f) = self.0.take() {
            f(outcome);
        }
    }

    /// Drops it without running it (the submit was refused at once; the submitter handles that).
    pub fn forget(mut self) {
        self.0 = None;
    }
}

impl Drop for Then {
    /// A job dropped without an outcome (its writer died) counts as failed, so whoever waits on
    /// it is not left waiting.
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(&StoreError::Unavailable(
                "the store writer stopped".into(),
            )));
        }
    }
}

/// The store interface the relay uses; a clustered backend implements the same.
pub trait Store: Send + Sync + 'static {
    /// Everything stored, for a start.
    fn load(&self) -> Result<Snapshot, StoreError>;

    /// Queues `ops`, applied in order and atomically together, after every earlier submit, and
    /// runs `then` (if any) with the outcome. Never blocks on disk. While the store is failing
    /// (see [`Store::health`]) or closed it refuses at once: the ack has failed already
    /// ([`Ack::refused`]) and `then` is dropped unrun.
    fn submit_then(&self, ops: Vec<Op>, then: Option<Then>) -> Ack;

    /// [`submit_then`](Self::submit_then) with nothing to run.
    fn submit(&self, ops: Vec<Op>) -> Ack {
        self.submit_then(ops, None)
    }

    /// Whether writes are being taken now (cheap: one atomic load). A submit made while this is
    /// false is refused at once.
    fn writable(&self) -> bool;

    /// The store's state, for `/healthz`.
    fn health(&self) -> StoreHealth;

    /// Up to `limit` of the newest stored messages of `room` with `seq < before_seq` (all when
    /// `None`), oldest first. Sees only committed messages.
    fn history(
        &self,
        room: &str,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError>;

    /// One stored message.
    fn message(&self, room: &str, seq: u64) -> Result<Option<StoredMessage>, StoreError>;

    /// Waits until everything submitted so far is durable, then stops the writer.
    fn close(&self);

    // ---- cluster: a shared store ----
    /// Reads `room` again as the shared store holds it now (another relay may have written it
    /// since this store last did), after every earlier submit, so this store's next writes of
    /// it expect what is there; `None` when the room is not there. A store only one relay
    /// writes has nothing to reload and refuses.
    fn reload_room(&self, room: &str) -> Result<Option<LoadedRoom>, StoreError> {
        Err(StoreError::Unavailable(format!(
            "room {room:?}: this store is not shared, there is nothing to reload"
        )))
    }

    /// Reads the app-wide lists again as the shared store holds them now, after every earlier
    /// submit, so this store's next write of them expects what is there. A store only one relay
    /// writes has nothing to reload and refuses.
    fn reload_global(&self) -> Result<GlobalPolicy, StoreError> {
        Err(StoreError::Unavailable(
            "this store is not shared, the app-wide lists have nothing to reload".into(),
        ))
    }
    // ---- end cluster ----
}
