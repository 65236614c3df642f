//! Per-database counters other threads read: durable txid, snapshots, lag.
//!
//! Why a file of its own: the metrics endpoint, the heartbeat and the
//! compactor read these while the watcher thread writes them; lag is defined
//! here, once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::ltx;

/// Counters readable from other threads.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Highest txid known durable (contiguous).
    pub durable_txid: std::sync::atomic::AtomicU64,
    /// Segments acknowledged.
    pub segments: std::sync::atomic::AtomicU64,
    /// Snapshots taken.
    pub snapshots: std::sync::atomic::AtomicU64,
    /// Checkpoints run by walsync.
    pub checkpoints: std::sync::atomic::AtomicU64,
    /// Txid of the newest snapshot known durable (0 = none yet).
    pub snapshot_txid: std::sync::atomic::AtomicU64,
    /// Passes of the watcher loop finished (start-up readiness: ≥ 1).
    pub passes: std::sync::atomic::AtomicU64,
    /// Unix time (ms) the last snapshot was handed to the uploaders; 0 = none yet.
    pub last_snapshot_ms: std::sync::atomic::AtomicU64,
    /// Segments cut but not yet durable: `(max txid, when first seen)`,
    /// oldest first (replication lag, see [`DbStats::lag`]).
    unacked: std::sync::Mutex<std::collections::VecDeque<(u64, std::time::SystemTime)>>,
    /// Unix time (ms) since which something committed in the WAL has not
    /// been read (published or only written); 0 = nothing.
    unread_since_ms: std::sync::atomic::AtomicU64,
    /// Set by the compactor when the newest snapshot disappeared from
    /// storage: the next txid must be a snapshot.
    pub replica_missing: std::sync::atomic::AtomicBool,
}

impl DbStats {
    /// A segment ending at `txid` was cut from the WAL now; its lag counts
    /// from when its first transaction was seen unread, if it was.
    pub fn note_cut(&self, txid: u64) {
        let since = self.unread_since_ms.swap(0, Ordering::Relaxed);
        let at = match since {
            0 => std::time::SystemTime::now(),
            ms => std::time::UNIX_EPOCH + Duration::from_millis(ms),
        };
        let mut q = self.unacked.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((txid, at));
    }

    /// Something committed is in the WAL and not read yet (keeps the
    /// earliest time it was seen).
    pub fn note_unread(&self) {
        let _ = self.unread_since_ms.compare_exchange(
            0,
            u64::try_from(ltx::now_ms()).unwrap_or(1).max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Everything committed in the WAL has been read.
    pub fn note_read_all(&self) {
        self.unread_since_ms.store(0, Ordering::Relaxed);
    }

    /// Everything up to `txid` is durable.
    pub fn note_durable(&self, txid: u64) {
        let mut q = self.unacked.lock().unwrap_or_else(|p| p.into_inner());
        while q.front().is_some_and(|(t, _)| *t <= txid) {
            q.pop_front();
        }
    }

    /// Replication lag: the age of the oldest committed transaction that
    /// storage has not acknowledged yet — cut into a segment, or still in
    /// the WAL (published or only written); zero when caught up.
    pub fn lag(&self) -> Duration {
        let q = self.unacked.lock().unwrap_or_else(|p| p.into_inner());
        let cut = q.front().and_then(|(_, at)| at.elapsed().ok());
        let unread = match self.unread_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => (std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .elapsed()
                .ok(),
        };
        cut.max(unread).unwrap_or(Duration::ZERO)
    }
}
