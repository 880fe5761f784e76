//! A store file on a disk of limited size, for fault drills and tests: [`QuotaFile`] is the real
//! file, but every write is charged against a shared [`Quota`] of bytes, and a write the quota
//! cannot pay for fails with the operating system's own `ENOSPC` error, as it would on a full
//! disk. Raising the quota is freeing space. Every write needs space, as on a copy-on-write
//! filesystem (on ext4 or tmpfs rewriting an allocated page needs none), so the moment the disk
//! is full is exact. A disk can also be made slow: while [`Quota::stall`] holds it, every fsync
//! waits, as on a disk that cannot keep up. Nothing else about the store changes: it is the same redb file, writer,
//! recovery and relay as on a real disk.

use super::redb_store::{PROBE_BYTES, StoreFile, file_backend};
use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Bytes a disk can still take; shared by the [`QuotaFile`]s on it.
#[derive(Debug, Default)]
pub struct Quota {
    /// `None`: no limit.
    left: Mutex<Option<u64>>,
    refused: AtomicU64,
    /// While true, fsyncs wait.
    stalled: Mutex<bool>,
    unstalled: Condvar,
}

impl Quota {
    /// A disk with no limit (yet).
    pub fn unlimited() -> Arc<Quota> {
        Arc::new(Quota::default())
    }

    /// Sets how many bytes may still be written (`Some(0)`: the disk is full; `None`: no limit).
    pub fn set_left(&self, bytes: Option<u64>) {
        *self.left.lock().unwrap_or_else(|p| p.into_inner()) = bytes;
    }

    /// How many bytes may still be written.
    pub fn left(&self) -> Option<u64> {
        *self.left.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stalls (`true`) or releases (`false`) the disk: while stalled, every fsync on it waits.
    pub fn stall(&self, on: bool) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = on;
        self.unstalled.notify_all();
    }

    /// Waits while the disk is stalled.
    fn wait_unstalled(&self) {
        let mut stalled = self.stalled.lock().unwrap_or_else(|p| p.into_inner());
        while *stalled {
            stalled = self
                .unstalled
                .wait(stalled)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Writes refused for want of space so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Pays for a write of `n` bytes, or refuses it with `ENOSPC`.
    fn charge(&self, n: u64) -> io::Result<()> {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        match left.as_mut() {
            None => Ok(()),
            Some(l) if *l >= n => {
                *l -= n;
                Ok(())
            }
            Some(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(no_space())
            }
        }
    }
}

/// The error a full disk gives.
fn no_space() -> io::Error {
    #[cfg(unix)]
    return io::Error::from_raw_os_error(libc::ENOSPC);
    #[cfg(not(unix))]
    io::Error::from(io::ErrorKind::StorageFull)
}

/// A store file whose writes are charged against a [`Quota`].
#[derive(Debug, Clone)]
pub struct QuotaFile {
    path: PathBuf,
    quota: Arc<Quota>,
}

impl QuotaFile {
    /// The file at `path` on a disk with `quota`.
    pub fn new(path: impl Into<PathBuf>, quota: Arc<Quota>) -> Self {
        QuotaFile {
            path: path.into(),
            quota,
        }
    }
}

impl StoreFile for QuotaFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn open(&self) -> io::Result<Box<dyn StorageBackend>> {
        Ok(Box::new(QuotaBackend {
            inner: file_backend(&self.path)?,
            quota: self.quota.clone(),
        }))
    }

    /// As the disk probe of [`super::DiskFile`] would find: room for its probe file, or not.
    fn probe(&self) -> io::Result<()> {
        match self.quota.left() {
            Some(left) if left < PROBE_BYTES as u64 => Err(no_space()),
            _ => Ok(()),
        }
    }
}

/// redb storage over the real file, with writes charged against the quota.
#[derive(Debug)]
struct QuotaBackend {
    inner: FileBackend,
    quota: Arc<Quota>,
}

impl StorageBackend for QuotaBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }
    /// Growing a file allocates nothing on Linux (it is sparse until written), so it is free.
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.quota.wait_unstalled();
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.quota.charge(data.len() as u64)?;
        self.inner.write(offset, data)
    }
    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }
    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }
    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }
    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }
    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }
    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
