//! Per-database counters other threads read: durable txid, snapshots, lag,
//! the last error.
//!
//! Why a file of its own: the metrics endpoint, the heartbeat, `walsync
//! status` and the compactor read these while the watcher thread writes
//! them; lag is defined here, once.

use std::time::Duration;

use crate::util::{LastError, Since};

/// Counters readable from other threads.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Which replication of the database this is, unique in the process
    /// ([`DbStats::new`]; a database stopped and started again gets a new
    /// one). What the uploaders fold for the compactor is kept per lineage:
    /// a new one may restart its txids, so an old one's folds must never be
    /// merged into it. (`Default` gives 0: tests only.)
    pub lineage: u64,
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
    /// Unix time (ms) the newest snapshot in storage at start-up was stored
    /// (from the listing); 0 = none or unknown.
    pub stored_snapshot_ms: std::sync::atomic::AtomicU64,
    /// The database's files are closed while it is idle (see
    /// `capture::park`).
    pub parked: std::sync::atomic::AtomicBool,
    /// Times its files were closed for being idle.
    pub parks: std::sync::atomic::AtomicU64,
    /// Times walsync stopped holding the WAL back in an outage
    /// (`--max-wal-mib`; the next txid is a snapshot).
    pub wal_releases: std::sync::atomic::AtomicU64,
    /// The last failed pass of the watcher loop (what it logged).
    pub last_error: LastError,
    /// Segments cut but not yet durable: `(max txid, when first seen)`,
    /// oldest first (replication lag, see [`DbStats::lag`]).
    unacked: std::sync::Mutex<std::collections::VecDeque<(u64, std::time::SystemTime)>>,
    /// Since when something committed in the WAL has not been read
    /// (published or only written).
    unread: Since,
    /// Set by the compactor when the newest snapshot disappeared from
    /// storage: the next txid must be a snapshot.
    pub replica_missing: std::sync::atomic::AtomicBool,
}

impl DbStats {
    /// Counters of a new lineage.
    pub fn new() -> DbStats {
        static LINEAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        DbStats {
            lineage: LINEAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..DbStats::default()
        }
    }

    /// A segment ending at `txid` was cut from the WAL now; its lag counts
    /// from when its first transaction was seen unread, if it was.
    pub fn note_cut(&self, txid: u64) {
        let at = self
            .unread
            .take()
            .unwrap_or_else(std::time::SystemTime::now);
        let mut q = self.unacked.lock().unwrap_or_else(|p| p.into_inner());
        q.push_back((txid, at));
    }

    /// Something committed is in the WAL and not read yet (keeps the
    /// earliest time it was seen).
    pub fn note_unread(&self) {
        self.unread.mark();
    }

    /// Something committed in the WAL is known not to be read yet.
    pub fn unread(&self) -> bool {
        self.unread.is_set()
    }

    /// Everything committed in the WAL has been read.
    pub fn note_read_all(&self) {
        self.unread.clear();
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
        let unread = self.unread.is_set().then(|| self.unread.elapsed());
        cut.max(unread).unwrap_or(Duration::ZERO)
    }
}
