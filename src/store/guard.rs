//! Containment of panics inside the storage engine.
//!
//! redb trusts its file: a page damaged outside it (a zeroed block, a truncated file) can make it
//! panic instead of returning an error. Every call into redb that reads pages runs inside
//! [`guarded`], which turns such a panic into a [`StoreError::Damaged`] naming what was being
//! done, so a bad page fails one request or a start with a clear message instead of unwinding
//! through the relay. While a guarded call runs, the process's panic hook stays quiet for that
//! thread (no "panicked at" line, no backtrace): the error is reported where it is handled.

use super::StoreError;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// Guarded calls running on this thread.
    static QUIET: Cell<u32> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();

/// Wraps the current panic hook once: panics inside a guarded call are not printed.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(|q| q.get()) == 0 {
                previous(info);
            }
        }));
    });
}

/// Runs `f` with this thread's panic output silenced; a panic comes back as its message.
pub(crate) fn contained<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    QUIET.with(|q| q.set(q.get() + 1));
    // The storage engine's state after a panic is not trusted by the caller: the error says the
    // file is damaged, and the failed call is not retried on the same handle.
    let result = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(q.get() - 1));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned())
    })
}

/// Runs `f`, turning a panic inside it into [`StoreError::Damaged`] with `what` (what was being
/// done, e.g. "reading the history of room \"lobby\"") and the panic's message.
pub(crate) fn guarded<T>(
    what: impl FnOnce() -> String,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    contained(f).unwrap_or_else(|why| {
        let what = what();
        tracing::error!(%what, panic = %why, "the storage engine failed on a damaged page");
        Err(StoreError::Damaged(format!(
            "{what}: the storage engine failed ({why})"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_a_damaged_error_and_the_hook_is_restored() {
        let r: Result<(), StoreError> = guarded(
            || "reading something".into(),
            || panic!("invalid page type byte 0"),
        );
        let e = r.expect_err("the panic is an error");
        assert!(matches!(e, StoreError::Damaged(_)), "{e:?}");
        assert_eq!(
            e.message(),
            "reading something: the storage engine failed (invalid page type byte 0)"
        );
        assert_eq!(QUIET.with(|q| q.get()), 0);
        let ok = guarded(|| "fine".into(), || Ok(7)).expect("no panic");
        assert_eq!(ok, 7);
    }
}
