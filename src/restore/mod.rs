//! Restore: rebuild a database file from its replica.
//!
//! Why this module matters more than any other: a backup is worth exactly
//! what its restore is worth. Every byte the daemon ships is only useful if
//! this code can turn the objects back into the database as it was at a
//! chosen transaction, refuse loudly when it cannot, and never leave a
//! half-written file where the user expects a database.
//!
//! A restore has two steps:
//!
//! 1. **Plan** ([`plan`]): the replica is read through
//!    [`crate::replica`]: a listing (every key must parse, a stray object
//!    under the database prefix is an error, not silently skipped), then the
//!    greedy chain ([`crate::replica::chain`]): a full snapshot (any object
//!    with min txid 1, normally the newest level-9 snapshot at or before the
//!    target) followed by objects from any level satisfying
//!    `next.min ≤ prev.max + 1 < next.max + 1`, ending exactly at the target.
//!    A timestamp target is resolved to a txid first
//!    ([`crate::replica::timeline`]).
//!
//! 2. **Execute** ([`restore`]): a pool of threads GETs the planned objects
//!    in parallel while the calling thread applies them strictly in plan
//!    order. Memory is bounded: at most `2 × parallel` objects and
//!    `window_bytes` bytes are fetched ahead of the one being applied.
//!    Objects of [`RANGED_THRESHOLD`] bytes or more (a large snapshot, a big
//!    compaction) are fetched when their turn comes by `parallel` ranged
//!    GETs of [`RANGE_SIZE`], their pages decoded in parallel with the page
//!    index and written in place (`ranged.rs`).
//!    Every object is verified: its `walsync-sha256` metadata when present
//!    (Litestream's objects have none; ranged objects are checked by the
//!    LTX checksum alone), its header against its name, and the LTX
//!    decoder's structural rules and file checksum. Pages are written
//!    with `pwrite` at `(pgno - 1) × page_size` into a temporary file next to
//!    the output, so the newest version of every page wins; after each object
//!    the file is cut to that object's commit size (a database that shrank
//!    and grew again must not resurrect stale pages). Then SQLite's check
//!    (`PRAGMA quick_check` by default, `integrity_check` on request:
//!    [`SqliteCheck`], `check.rs`) must say `ok`, the file is fsynced,
//!    renamed into place (atomically, never over an existing file unless
//!    forced) and the directory is fsynced. On any failure a guard removes the temporary
//!    file (and any `-wal`/`-shm` SQLite made for the check): nothing is left
//!    at the output path.
//!
//! Every read goes through [`RetryReads`]: a transient failure (503, 500,
//! a reset connection) is retried a bounded number of times with backoff,
//! and a body that does not match its `walsync-sha256` metadata is fetched
//! again, before the restore gives up with the error naming the object.
//!
//! The restored file keeps the journal mode recorded in its header (WAL for
//! a database replicated from its WAL). It needs no `-wal` file: every
//! committed page is in the main file, and stale `OUT-wal`/`OUT-shm` files,
//! which SQLite would replay over the restored pages, are refused (or
//! removed with `force`).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result, StorageErrorKind};
use crate::ltx::{self, Decoder};
use crate::replica::listing::{self, list, list_level, Strictness};
use crate::replica::{
    check_header_matches, fetch, greedy, storage_root, Fetched, Replica, ReplicaObject,
    SPOOL_THRESHOLD,
};
use crate::storage::{RetryReads, Storage};

/// Default byte budget for objects fetched ahead of the one being applied.
pub const DEFAULT_WINDOW_BYTES: u64 = 256 << 20;
/// Times a restore plans again after a planned object disappeared.
const MAX_REPLANS: usize = 3;

/// Which state of the database to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest txid in the replica.
    Latest,
    /// Exactly this txid.
    Txid(u64),
    /// The newest txid whose object timestamp is at or before this time
    /// (milliseconds since the Unix epoch).
    Timestamp(i64),
}

/// The objects to apply, in order, to rebuild `db` at `txid`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Database name.
    pub db: String,
    /// Where the replica lives, for messages.
    pub location: String,
    /// The txid the restored database will be at.
    pub txid: u64,
    /// A snapshot first, then objects with increasing txid ranges.
    pub objects: Vec<ReplicaObject>,
}

impl Plan {
    /// Total bytes to download.
    pub fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// How [`restore`] runs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Download threads (at least 1).
    pub parallel: usize,
    /// Replace an existing output file (and remove its stale `-wal`/`-shm`).
    pub force: bool,
    /// Show a progress line on stderr (only when it is a terminal and the
    /// restore takes more than two seconds; `src/restore/progress.rs`).
    pub progress: bool,
    /// Byte budget for objects fetched ahead of the one being applied.
    pub window_bytes: u64,
    /// Objects at least this large are spooled to a temporary file through
    /// ranged GETs instead of memory ([`SPOOL_THRESHOLD`] by default).
    pub spool_threshold: u64,
    /// Objects at least this large are fetched by `parallel` ranged GETs
    /// and decoded in parallel ([`RANGED_THRESHOLD`] by default).
    pub ranged_threshold: u64,
    /// Bytes per ranged GET of such an object ([`RANGE_SIZE`] by default).
    pub range_size: u64,
    /// SQLite's check of the result before it is installed.
    pub check: SqliteCheck,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            parallel: crate::defaults::RESTORE_PARALLEL,
            force: false,
            progress: false,
            window_bytes: DEFAULT_WINDOW_BYTES,
            spool_threshold: SPOOL_THRESHOLD,
            ranged_threshold: RANGED_THRESHOLD,
            range_size: RANGE_SIZE,
            check: SqliteCheck::default(),
        }
    }
}

/// What a finished restore did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Database name.
    pub db: String,
    /// The txid restored.
    pub txid: u64,
    /// Objects downloaded and applied.
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Page size of the restored database.
    pub page_size: u32,
    /// Pages in the restored database.
    pub pages: u32,
    /// Wall-clock time of the restore.
    pub elapsed: Duration,
    /// SQLite's check that passed, and how long it took (part of `elapsed`).
    pub check: (SqliteCheck, Duration),
    /// Where the database was written.
    pub output: PathBuf,
}

impl Summary {
    /// One line for humans: what was restored, where, how much, how fast,
    /// and SQLite's check with its share of the time.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mb = self.bytes as f64 / 1e6;
        let rate = if secs > 0.0 { mb / secs } else { 0.0 };
        let (check, check_time) = self.check;
        format!(
            "restored {} at txid {} to {}: {} objects, {} bytes, {} pages of {} bytes, {secs:.2} s, {rate:.1} MB/s; {} ok in {:.2} s",
            self.db,
            self.txid,
            self.output.display(),
            self.objects,
            self.bytes,
            self.pages,
            self.page_size,
            check.pragma(),
            check_time.as_secs_f64(),
        )
    }
}

mod apply;
mod check;
mod execute;
mod inspect;
mod plan;
mod progress;
mod ranged;
#[cfg(test)]
mod tests;

use apply::*;
pub use check::SqliteCheck;
use check::*;
pub use execute::*;
pub use inspect::*;
pub use plan::*;
use progress::Progress;
pub use ranged::{ranged_gets, RANGED_THRESHOLD, RANGE_SIZE};
