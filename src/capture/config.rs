//! The settings of one replicated database, and what its thread is told.
//!
//! Why a file of its own: these are what the daemon and the commands build
//! before a watcher exists; the watcher's state lives in `mod.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
    /// Close the database's files after this long without a file event
    /// (`None`: keep them open); see `capture::park`.
    pub close_idle_after: Option<Duration>,
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
            close_idle_after: Some(defaults::CLOSE_IDLE_AFTER),
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

/// Whether a watcher waits for a timer that reads the WAL anyway (the put
/// interval holds back what is published), and whether WAL events came
/// meanwhile. Events for WAL writes need not wake a snoozing watcher: the
/// daemon's file-event router skips those wake-ups — at 10 commits/s and a
/// 1 s interval, nine in ten — but records them, so the next pass still
/// counts them as file events (settle count and tail probe reset, as for a
/// delivered wake-up: an event may come before SQLite publishes the commit
/// in the wal-index). Events for the database file itself (replaced,
/// deleted) always wake it.
///
/// Why nothing committed is missed: the router marks every WAL event
/// (`fetch_or`) after the write it reports; the watcher clears the state
/// (`swap`) at the start of every pass and sets SNOOZED only later in that
/// pass, when it defers, with a timer armed. If the router sees SNOOZED,
/// its mark stays until the next pass (the timer's, or one after an
/// error), which begins after the write. If not, it sends a wake-up (or
/// finds one queued): the `store` of a later snooze may erase that mark,
/// but the queued wake-up runs another pass all the same.
///
/// The timer's deadline is published beside the state for the router's
/// naps only ([`Snooze::snoozing_until`]): nothing above depends on it.
#[derive(Clone, Debug, Default)]
pub struct Snooze(Arc<SnoozeState>);

#[derive(Debug, Default)]
struct SnoozeState {
    /// SNOOZED and MISSED bits.
    bits: AtomicU8,
    /// The snooze's timer, in milliseconds after [`epoch`].
    until_ms: AtomicU64,
}

/// The watcher waits for its timer.
const SNOOZED: u8 = 1;
/// A WAL event came since the watcher last looked.
const MISSED: u8 = 2;

/// The instant snooze deadlines are counted from (the first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Snooze {
    /// A WAL event: recorded; true when the watcher must be woken (it is
    /// not snoozing).
    pub fn note_event(&self) -> bool {
        self.0.bits.fetch_or(MISSED, Ordering::AcqRel) & SNOOZED == 0
    }

    /// When the watcher is snoozing: the time of its timer's pass (a hint,
    /// rounded up to the millisecond; the pass itself may come later).
    pub fn snoozing_until(&self) -> Option<Instant> {
        if self.0.bits.load(Ordering::Acquire) & SNOOZED == 0 {
            return None;
        }
        // Seeing SNOOZED (Acquire) shows this snooze's `until_ms` or a
        // later one's: a hint either way.
        let ms = self.0.until_ms.load(Ordering::Relaxed);
        epoch().checked_add(Duration::from_millis(ms))
    }

    /// The pass at the timer, at `until`, reads the WAL: skip wake-ups
    /// until then.
    pub(super) fn snooze(&self, until: Instant) {
        let ms = until.saturating_duration_since(epoch()).as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1);
        self.0.until_ms.store(ms, Ordering::Relaxed);
        self.0.bits.store(SNOOZED, Ordering::Release);
    }

    /// A pass begins (or a failed one ends): stop snoozing; true when a WAL
    /// event came since the last `wake`.
    pub(super) fn wake(&self) -> bool {
        self.0.bits.swap(0, Ordering::AcqRel) & MISSED != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snooze_publishes_its_timer_while_snoozing() {
        let s = Snooze::default();
        assert_eq!(s.snoozing_until(), None);
        assert!(s.note_event(), "awake: the event wakes it");
        let until = Instant::now() + Duration::from_millis(700);
        s.snooze(until);
        let got = s.snoozing_until().expect("snoozing");
        assert!(
            got >= until && got <= until + Duration::from_millis(2),
            "{got:?} vs {until:?}"
        );
        assert!(!s.note_event(), "snoozing: recorded only");
        assert!(s.wake(), "the recorded event is reported");
        assert_eq!(s.snoozing_until(), None);
        assert!(!s.wake());
    }
}
