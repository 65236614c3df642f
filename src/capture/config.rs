//! The settings of one replicated database, and what its thread is told.
//!
//! Why a file of its own: these are what the daemon and the commands build
//! before a watcher exists; the watcher's state lives in `mod.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::STUCK_AFTER;
use crate::defaults;

/// Settings of one replicated database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// Path of the database file.
    pub path: PathBuf,
    /// Name in the bucket (the file name by default).
    pub name: String,
    /// Run a PASSIVE checkpoint once the WAL holds this many frames.
    pub checkpoint_pages: u64,
    /// Run a TRUNCATE checkpoint once the WAL file is this many pages long.
    pub truncate_pages: u64,
    /// Take a full snapshot this often (none when `None`).
    pub snapshot_interval: Option<Duration>,
    /// Minimum time between two PUTs of this database.
    pub min_put_interval: Duration,
    /// How long a fence may wait for the application's writer.
    pub busy_timeout: Duration,
    /// While uploads are stuck, past this WAL size (bytes) walsync stops
    /// holding the WAL back: the application's checkpoints proceed and the
    /// next txid will be a snapshot (0 = never).
    pub max_wal_bytes: u64,
    /// Uploads that made no progress for this long while the one in flight
    /// failed are an outage (see `max_wal_bytes`).
    pub stuck_after: Duration,
    /// Directory for temporary files of large segments (snapshots are
    /// streamed from the database and need none).
    pub tmp_dir: PathBuf,
    /// Retention window of the replica (`None`: keep everything); see
    /// [`crate::compact`].
    pub retention: Option<Duration>,
}

impl DbConfig {
    /// Defaults ([`crate::defaults`]) for the database at `path`, named by
    /// its file name.
    pub fn new(path: impl Into<PathBuf>) -> DbConfig {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        DbConfig {
            path,
            name,
            checkpoint_pages: defaults::CHECKPOINT_PAGES,
            truncate_pages: defaults::TRUNCATE_PAGES,
            snapshot_interval: Some(defaults::SNAPSHOT_INTERVAL),
            min_put_interval: defaults::MIN_PUT_INTERVAL,
            busy_timeout: Duration::from_secs(5),
            max_wal_bytes: defaults::MAX_WAL_MIB << 20,
            stuck_after: STUCK_AFTER,
            tmp_dir: std::env::temp_dir(),
            retention: Some(defaults::RETENTION),
        }
    }
}

/// What the watcher thread is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The WAL or database file changed.
    Wake,
    /// Ship what is committed, wait for the uploads, then stop.
    Shutdown,
}

/// Set while a watcher waits for a timer that reads the WAL anyway (the put
/// interval holds back what is published): events for WAL writes need not
/// wake it until then. The daemon's file-event router reads it and skips
/// those wake-ups — at 10 commits/s and a 1 s interval, nine in ten. Events
/// for the database file itself (replaced, deleted) always wake it.
#[derive(Clone, Debug, Default)]
pub struct Snooze(Arc<AtomicBool>);

impl Snooze {
    /// The watcher will read the WAL at its timer: WAL events may be skipped.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }
}
