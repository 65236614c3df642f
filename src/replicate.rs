//! One database's replication: the checkpoint-safe capture protocol.
//!
//! Why this is the heart of walsync: a committed transaction exists only in
//! the WAL until SQLite checkpoints it, and a checkpoint followed by a WAL
//! restart (or a TRUNCATE) destroys the frames. Missing them silently means a
//! backup with a hole. The protocol below makes loss impossible where it can
//! and *detectable* everywhere else, and answers detected doubt with a full
//! snapshot as the next txid.
//!
//! # Facts it rests on (each checked against real SQLite in `tests/shm.rs`)
//!
//! 1. A read transaction whose snapshot uses WAL frames ("pinned") stops every
//!    checkpointer from restarting or truncating the WAL.
//! 2. A read transaction that needs no WAL frame (the WAL was fully
//!    backfilled when it began) does not stop a restart, but it does stop any
//!    further *backfill*; so while it is held, at most one restart can
//!    happen, and it can only discard frames that were already backfilled.
//! 3. While a connection holds the write lock (`BEGIN IMMEDIATE`, the
//!    *fence*), nobody can commit, restart or truncate.
//! 4. The wal-index header's `iChange` counts every committed transaction,
//!    across restarts (`shm`).
//!
//! # The protocol
//!
//! - The wal-index is the authority on what is committed. Every read first
//!   takes a consistent copy of its header (`shm`), then maps the WAL and
//!   scans it only up to that header's `mxFrame` (frames past it may be
//!   valid-looking leftovers of a writer that died before publishing).
//! - `counted` follows `iChange`. Before anything read is shipped, the
//!   number of transactions read must equal the number SQLite committed
//!   since the last read (`iChange - counted`). If not, commits were lost
//!   (e.g. checkpointed and overwritten while walsync held no pin): nothing
//!   is shipped and the next txid is a full snapshot. So a segment is never
//!   stored on top of a state that misses a commit.
//! - The read transaction `R` is established under the fence after reading
//!   the WAL to its end (start-up, after walsync's own checkpoints, after an
//!   error). Once everything published has been read and the wal-index
//!   changed since `R` began, `R` is moved to the newest snapshot without
//!   the fence (`repin`), so the application's own checkpoints can copy
//!   frames up to the newest commit; a commit that slips into that gap and
//!   is checkpointed away is caught by the counter before anything else is
//!   shipped.
//! - The WAL is read through the memory map only under the fence or once `R`
//!   is known to pin it (the wal-index showed `mxFrame > nBackfill` after `R`
//!   began). In the other state the WAL holds nothing unread, so nothing is
//!   read; this is also what keeps the map clear of truncated pages.
//! - walsync checkpoints itself past a threshold: it takes the fence, ships
//!   what committed meanwhile, ends `R`, runs a PASSIVE checkpoint, starts `R`
//!   again and drops the fence (the next writer then restarts the WAL). Past
//!   a larger threshold it runs TRUNCATE after the fence and re-establishes
//!   `R`, the counter catching any commit that slipped in between.
//! - One segment per database is in flight at a time (later ones queue), so
//!   a crash never leaves a stored txid after a missing one.
//! - On start-up the position comes from the newest object's header; only a
//!   WAL of the same generation that still reaches that offset is continued.
//!   Anything else (the app checkpointed while walsync was down, a new
//!   database, a replaced file) starts with a snapshot.
//! - walsync keeps its own descriptor of the database open as long as its
//!   SQLite connection: closing any descriptor of a file drops every POSIX
//!   lock the process holds on it, SQLite's included.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::ltx::{self, Header, SNAPSHOT_LEVEL};
use crate::segment::{self, Encoded};
use crate::shm::{Shm, ShmHeader};
use crate::storage::{RetryReads, Storage};
use crate::tail::{self, Tail, TailProbe};
use crate::upload::{Ack, Budget, Segment};
use crate::wal::{self, Position, Resume, Scanner, StopReason, Transaction, WalHeader, WalMap};

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
    /// Directory for temporary snapshot files.
    pub tmp_dir: PathBuf,
    /// Retention window of the replica (`None`: keep everything); see
    /// [`crate::compact`].
    pub retention: Option<Duration>,
}

impl DbConfig {
    /// Defaults for the database at `path`, named by its file name.
    pub fn new(path: impl Into<PathBuf>) -> DbConfig {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        DbConfig {
            path,
            name,
            checkpoint_pages: 1000,
            truncate_pages: 16 * 1024,
            snapshot_interval: Some(Duration::from_secs(24 * 3600)),
            min_put_interval: Duration::ZERO,
            busy_timeout: Duration::from_secs(5),
            max_wal_bytes: 1 << 30,
            stuck_after: STUCK_AFTER,
            tmp_dir: std::env::temp_dir(),
            retention: Some(crate::defaults::DEFAULT_RETENTION),
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

/// Resume information from the newest object in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    /// Newest txid stored.
    pub txid: u64,
    /// WAL position after it, when its header records one.
    pub salt1: u32,
    /// See `salt1`.
    pub salt2: u32,
    /// Offset just past the last shipped frame (0 = none recorded).
    pub offset: u64,
    /// Page size.
    pub page_size: u32,
    /// Highest max txid stored in each level (index = level; 0 = none).
    pub level_ends: [u64; 10],
    /// When the newest snapshot was stored (from the listing), if any.
    pub snapshot_time: Option<std::time::SystemTime>,
}

/// Segments of one database in flight at once. One: a crash can then never
/// leave a stored txid after a missing one (a hole no restore could cross),
/// and group commit keeps throughput up: while one segment uploads, every
/// transaction committed meanwhile is folded into the next.
const MAX_INFLIGHT: usize = 1;

/// Re-checks after a wake-up that showed no change (5, 20, 80, 320 ms).
const SETTLE_CHECKS: u32 = 4;

/// What [`Replica::ship_available`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ship {
    /// Nothing new was committed.
    Nothing,
    /// New transactions went into a segment.
    Shipped,
    /// The WAL and the wal-index are mid-update: look again shortly.
    NotReady,
    /// Continuity is lost: nothing was shipped, a snapshot must come next.
    Lost(String),
}

fn lost_reason(change: u32, counted: u32, read: usize) -> String {
    let committed = change.wrapping_sub(counted);
    if committed > u32::MAX / 2 {
        format!(
            "SQLite's commit counter went back by {} (the wal-index was rebuilt)",
            counted.wrapping_sub(change)
        )
    } else {
        format!(
            "SQLite counted {committed} committed transaction(s) where walsync read {read}: \
             some were checkpointed away before walsync read them"
        )
    }
}

/// How far the WAL has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Up to this position of this generation.
    At(Position),
    /// The WAL was empty (no header) when last read; the next generation to
    /// appear continues from its start.
    Empty,
}

/// One replicated database, driven by its own thread.
pub struct Replica {
    cfg: DbConfig,
    storage: Arc<dyn Storage>,
    segments: Sender<Segment>,
    budget: Arc<Budget>,
    acks_tx: Sender<Ack>,
    acks: Receiver<Ack>,
    stats: Arc<DbStats>,

    conn: Option<Connection>,
    /// walsync's own descriptor of the database file (pages for snapshots).
    db_file: Option<File>,
    in_read: bool,
    pinned: bool,
    /// The wal-index as seen just before the read transaction began: the
    /// read transaction's snapshot is at least this new.
    r_shm: Option<ShmHeader>,
    /// Re-checks scheduled after a wake that changed nothing yet (a
    /// checkpointer updates the wal-index only after writing the database).
    settle: u32,
    wal: WalMap,
    shm: Shm,
    db_id: Option<(u64, u64)>,

    read: Option<Read>,
    counted: Option<u32>,
    next_txid: u64,
    inflight: BTreeSet<u64>,
    /// Segments encoded while another was in flight, sent in order.
    pending: std::collections::VecDeque<(Encoded, u8)>,
    last_put: Option<Instant>,
    last_snapshot: Instant,
    /// Txid of the snapshot in flight, if one is.
    snapshot_inflight: Option<u64>,
    /// What storage held at start-up (level ends for the compactor).
    resumed: Option<Resumed>,
    snapshot_reason: Option<String>,
    deferred_until: Option<Instant>,
    /// Set when an upload was refused because another writer holds the
    /// replica (src/lease.rs): replication of this database stops.
    fenced: Option<String>,
    /// The database file as SQLite names it: `cfg.path` with every symlink
    /// resolved. SQLite keeps `-wal` and `-shm` beside this file, not beside
    /// a symlink to it; `cfg.path` stays the name in messages.
    real: PathBuf,
    /// `cfg.path` goes through a symlink: its target is checked on every
    /// pass (a retargeted link is a replaced database).
    via_symlink: bool,
    /// Looks for commits written past the published end of the WAL.
    tail: TailProbe,
    /// When the last file event arrived.
    last_event: Instant,
    /// Poll interval on filesystems without reliable file events.
    fs_poll: Option<Duration>,
    /// Last time storage made progress on this database's uploads (an ack,
    /// or a send with nothing in flight): an outage is time without it
    /// while the upload in flight fails (`upload_failures`).
    last_progress: Instant,
    upload_failures: Arc<std::sync::atomic::AtomicU32>,
    /// Told `(old, new)` resolved paths before reconnecting to a replaced
    /// or moved file, so its lock is held and its events are watched where
    /// SQLite now writes (see [`Replica::on_moved`]).
    rewatch: Option<Moved>,
}

/// Callback told `(old, new)` resolved paths of a moved database.
type Moved = Box<dyn FnMut(&Path, &Path) -> Result<()> + Send>;

/// Uploads without progress for this long, the one in flight failing, are
/// an outage: only then may the WAL past `max_wal_bytes` be released (once
/// per outage). A big upload that is slow but succeeding is none.
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// `db` with every symlink resolved, as SQLite resolves it before it names
/// the `-wal` and `-shm` files (`unixFullPathname`).
pub fn resolve(db: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(db).map_err(|e| Error::io(db, e))
}

fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl Replica {
    /// Prepare replication of `cfg.path`: open it, check it is a WAL-mode
    /// SQLite database, and find where storage left off.
    pub fn open(
        cfg: DbConfig,
        storage: Arc<dyn Storage>,
        segments: Sender<Segment>,
        budget: Arc<Budget>,
    ) -> Result<Replica> {
        let (acks_tx, acks) = crossbeam_channel::unbounded();
        let real = resolve(&cfg.path)?;
        let via_symlink = !std::path::absolute(&cfg.path).is_ok_and(|a| a == real);
        if via_symlink {
            log::info!(
                "{}: {} resolves to {}: its WAL is read there",
                cfg.name,
                cfg.path.display(),
                real.display()
            );
        }
        let fs_poll = tail::unreliable_events(&real).map(|fs| {
            log::info!(
                "{}: {} is on {fs}, where file events may be missed: checking it every {}",
                cfg.name,
                real.display(),
                humantime::format_duration(tail::FS_POLL)
            );
            tail::FS_POLL
        });
        let mut r = Replica {
            wal: WalMap::open(wal_path(&real))?,
            shm: Shm::for_db(&real),
            real,
            via_symlink,
            tail: TailProbe::new(),
            last_event: Instant::now(),
            fs_poll,
            last_progress: Instant::now(),
            upload_failures: Arc::default(),
            rewatch: None,
            cfg,
            storage,
            segments,
            budget,
            acks_tx,
            acks,
            stats: Arc::new(DbStats::default()),
            conn: None,
            db_file: None,
            in_read: false,
            pinned: false,
            r_shm: None,
            settle: 0,
            db_id: None,
            read: None,
            counted: None,
            next_txid: 1,
            inflight: BTreeSet::new(),
            pending: std::collections::VecDeque::new(),
            last_put: None,
            last_snapshot: Instant::now(),
            snapshot_inflight: None,
            resumed: None,
            snapshot_reason: None,
            deferred_until: None,
            fenced: None,
        };
        r.connect()?;
        // Each probe retried on its own: with a flaky S3 a start-up of ~20
        // requests that must all succeed in a row would rarely get through.
        let resumed = find_resume_point(&RetryReads(&*r.storage), &r.cfg.name)?;
        r.resumed = resumed;
        r.resume_from(resumed)?;
        Ok(r)
    }

    /// The database's settings.
    pub fn config(&self) -> &DbConfig {
        &self.cfg
    }

    /// Shared counters.
    pub fn stats(&self) -> Arc<DbStats> {
        self.stats.clone()
    }

    /// What storage held when replication started (`None`: nothing).
    pub fn resumed(&self) -> Option<Resumed> {
        self.resumed
    }

    /// Call `f(old, new)` before reconnecting to a replaced or moved file
    /// (resolved paths; a retargeted symlink, a swapped directory), to move
    /// the lock and the file-event watch there. An error stops the
    /// reconnection (retried with backoff).
    pub fn on_moved(&mut self, f: impl FnMut(&Path, &Path) -> Result<()> + Send + 'static) {
        self.rewatch = Some(Box::new(f));
    }

    fn open_conn(&self) -> Result<Connection> {
        let path = &self.cfg.path;
        let c = Connection::open_with_flags(
            &self.real,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::sqlite(path, e))?;
        c.busy_timeout(self.cfg.busy_timeout)
            .map_err(|e| Error::sqlite(path, e))?;
        // Closing walsync's connection must never checkpoint unshipped frames.
        c.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .map_err(|e| Error::sqlite(path, e))?;
        c.execute_batch("PRAGMA cache_size=-64; PRAGMA wal_autocheckpoint=0;")
            .map_err(|e| Error::sqlite(path, e))?;
        Ok(c)
    }

    fn connect(&mut self) -> Result<()> {
        let path = self.cfg.path.clone();
        // Closing any descriptor of a file drops every POSIX lock this
        // process holds on it, SQLite's included (the classic fcntl trap).
        // So descriptors of the previous file are closed before SQLite opens
        // the new one, and walsync's own descriptor of the database stays
        // open as long as its SQLite connection does (`db_file` is declared
        // after `conn`, so it is dropped after it).
        self.in_read = false;
        self.conn = None;
        self.db_file = None;
        self.shm.reset();
        let real = resolve(&path)?;
        if real != self.real {
            log::info!(
                "{}: {} now resolves to {}",
                self.cfg.name,
                path.display(),
                real.display()
            );
            self.wal = WalMap::open(wal_path(&real))?;
            self.shm = Shm::for_db(&real);
            self.real = real;
        }
        let c = self.open_conn()?;
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| Error::sqlite(&path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Config(format!(
                "{}: not in WAL mode (journal_mode={mode}); walsync replicates WAL-mode databases only (PRAGMA journal_mode=WAL)",
                path.display()
            )));
        }
        self.db_id = file_id(&self.real);
        self.db_file = Some(File::open(&self.real).map_err(|e| Error::io(&path, e))?);
        self.conn = Some(c);
        self.pinned = false;
        Ok(())
    }

    fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::Config(format!("{}: no connection", self.cfg.path.display())))
    }

    fn sql(&self, sql: &str) -> Result<()> {
        self.conn()?
            .execute_batch(sql)
            .map_err(|e| Error::sqlite(&self.cfg.path, e))
    }

    fn begin_read(&mut self) -> Result<()> {
        if self.in_read {
            return Ok(());
        }
        self.r_shm = self.shm.read()?;
        let c = self.conn()?;
        c.execute_batch("BEGIN")
            .map_err(|e| Error::sqlite(&self.cfg.path, e))?;
        let r: rusqlite::Result<i64> =
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0));
        if let Err(e) = r {
            let _ = c.execute_batch("ROLLBACK");
            return Err(Error::sqlite(&self.cfg.path, e));
        }
        self.in_read = true;
        self.pinned = false;
        Ok(())
    }

    fn end_read(&mut self) -> Result<()> {
        if self.in_read {
            self.in_read = false;
            self.pinned = false;
            self.sql("COMMIT")?;
        }
        Ok(())
    }

    fn read_shm(&mut self) -> Result<Option<ShmHeader>> {
        self.shm.read()
    }

    /// Right after the read transaction began: is the WAL pinned? If the
    /// wal-index shows frames not yet backfilled, the read transaction either
    /// uses WAL frames (fact 1) or blocks their backfill (fact 2); either way
    /// nothing can restart or truncate the WAL while it is held.
    fn note_read_began(&mut self) -> Result<Option<ShmHeader>> {
        let shm = self.read_shm()?;
        self.pinned = shm.is_some_and(|h| h.mx_frame > h.backfill);
        Ok(shm)
    }

    /// Move the read transaction to the newest snapshot (no fence): called
    /// when everything committed has been read and the wal-index changed
    /// since the read transaction began. Without it, the application's own
    /// checkpoints could only copy frames up to walsync's old read mark, and
    /// a FULL/RESTART/TRUNCATE checkpoint would wait for walsync (its busy
    /// timeout) while holding the writer lock. A commit that slips in
    /// between and is checkpointed away is caught by the commit counter.
    fn repin(&mut self) -> Result<()> {
        log::trace!(
            "{}: moving the read transaction to the newest snapshot",
            self.cfg.name
        );
        self.end_read()?;
        self.begin_read()?;
        self.note_read_began()?;
        Ok(())
    }

    /// Take the write lock on a second connection: nobody can commit,
    /// checkpoint-restart or truncate until it is dropped.
    fn fence(&self) -> Result<Fence> {
        self.fence_within(self.cfg.busy_timeout)
    }

    /// A fence that gives up after `wait` (checkpoints are optional work: they
    /// must not queue behind a long application transaction or a
    /// checkpointer that waits for walsync).
    fn fence_within(&self, wait: Duration) -> Result<Fence> {
        let c = self.open_conn()?;
        c.busy_timeout(wait)
            .map_err(|e| Error::sqlite(&self.cfg.path, e))?;
        c.execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| Error::sqlite(&self.cfg.path, e))?;
        Ok(Fence(Some(c)))
    }

    fn resume_from(&mut self, resumed: Option<Resumed>) -> Result<()> {
        let Some(res) = resumed else {
            self.snapshot_reason = Some("no replica in storage yet".into());
            return Ok(());
        };
        self.next_txid = res.txid + 1;
        self.stats.durable_txid.store(res.txid, Ordering::Relaxed);
        let snap = res.level_ends[usize::from(SNAPSHOT_LEVEL)];
        self.stats.snapshot_txid.store(snap, Ordering::Relaxed);
        // The periodic snapshot timer runs from the newest stored snapshot,
        // not from process start: a daemon restarted more often than the
        // interval must still take them.
        if let Some(age) = res.snapshot_time.and_then(|t| t.elapsed().ok()) {
            if let Some(t) = Instant::now().checked_sub(age) {
                self.last_snapshot = t;
            }
        }
        if res.offset == 0 {
            self.snapshot_reason = Some("newest replica object records no WAL position".into());
            return Ok(());
        }
        let fence = self.fence()?;
        self.wal.refresh()?;
        let data = self.wal.bytes();
        let header = match WalHeader::parse(data) {
            Ok(h) => h,
            Err(_) if data.is_empty() => {
                self.snapshot_reason =
                    Some("WAL is empty: it was checkpointed while walsync was not running".into());
                return Ok(());
            }
            Err(e) => return Err(e.at(self.wal.path())),
        };
        // Say which of the three it was: a message blaming the salts when
        // they are equal sends the user looking in the wrong place.
        let changed = if (header.salt1, header.salt2) != (res.salt1, res.salt2) {
            Some(format!(
                "WAL generation changed while walsync was not running (salts {:08x}/{:08x} → {:08x}/{:08x})",
                res.salt1, res.salt2, header.salt1, header.salt2
            ))
        } else if header.page_size != res.page_size {
            Some(format!(
                "WAL page size changed from {} to {} while walsync was not running",
                res.page_size, header.page_size
            ))
        } else if (data.len() as u64) < res.offset {
            Some(format!(
                "WAL shrank to {} bytes, below the stored offset {}, while walsync was not running",
                data.len(),
                res.offset
            ))
        } else {
            None
        };
        if let Some(reason) = changed {
            self.snapshot_reason = Some(reason);
            return Ok(());
        }
        let frame = header.frame_size();
        let rel = res.offset.checked_sub(wal::WAL_HEADER_SIZE as u64);
        let Some(rel) = rel.filter(|r| r % frame == 0) else {
            self.snapshot_reason = Some(format!(
                "stored WAL offset {} is not a frame boundary",
                res.offset
            ));
            return Ok(());
        };
        // The running checksum at the offset is the checksum of the frame
        // before it, recorded in that frame's header.
        let checksum = if rel == 0 {
            header.checksum
        } else {
            let at = (res.offset - frame) as usize;
            let mut fh = [0u8; wal::FRAME_HEADER_SIZE];
            fh.copy_from_slice(&data[at..at + wal::FRAME_HEADER_SIZE]);
            let fh = wal::FrameHeader::parse(&fh);
            if !fh.is_commit() || (fh.salt1, fh.salt2) != (header.salt1, header.salt2) {
                self.snapshot_reason = Some(
                    "frame before the stored WAL offset is not a commit of this generation".into(),
                );
                return Ok(());
            }
            fh.checksum
        };
        let pos = Position {
            offset: res.offset,
            checksum,
            ..Position::start(&header)
        };
        log::info!(
            "{}: resuming after txid {} at WAL offset {}",
            self.cfg.name,
            res.txid,
            res.offset
        );
        self.read = Some(Read::At(pos));
        self.establish(fence, true)
    }

    /// Under `fence`: read the WAL to its end, ship it, (re)start the read
    /// transaction and set the commit counter. `trust_salts` is the start-up
    /// case where no counter exists yet and the stored position was checked.
    fn establish(&mut self, fence: Fence, trust_salts: bool) -> Result<()> {
        self.establish_under(&fence, trust_salts)?;
        drop(fence);
        Ok(())
    }

    /// [`Replica::establish`], keeping the fence held.
    fn establish_under(&mut self, _fence: &Fence, trust_salts: bool) -> Result<()> {
        self.wal.refresh()?;
        if !trust_salts && self.counted.is_none() {
            return Err(Error::Config(format!(
                "{}: internal: no commit count to check continuity against",
                self.cfg.name
            )));
        }
        match self.ship_available(true)? {
            Ship::Lost(reason) => {
                log::warn!(
                    "{}: {reason}; the next txid will be a snapshot",
                    self.cfg.name
                );
                self.snapshot_reason = Some(reason);
            }
            Ship::NotReady => {
                // Nothing is published (no connection has used the WAL yet).
            }
            Ship::Nothing | Ship::Shipped => {}
        }
        self.begin_read()?;
        let shm = self.note_read_began()?;
        self.counted = shm.map(|h| h.change).or(self.counted);
        Ok(())
    }

    /// Read the committed transactions past the current position that the
    /// wal-index publishes, and turn them into one segment — but only when
    /// their number is exactly what SQLite's commit counter says was
    /// committed since the last read. Must run under the fence or with `R`
    /// pinned.
    ///
    /// The wal-index is read first and bounds the scan: frames past its
    /// `mxFrame` may be valid-looking leftovers of a writer that died before
    /// publishing them, and the next writer overwrites them in place. And
    /// because the counter is checked *before* anything is emitted, a segment
    /// is never shipped on top of a state that is missing a commit.
    fn ship_available(&mut self, fenced: bool) -> Result<Ship> {
        let Some(shm) = self.read_shm()? else {
            return Ok(Ship::NotReady);
        };
        // Map the WAL after reading the wal-index: SQLite writes frames
        // before it publishes them, so the map then covers what `shm` says.
        self.wal.refresh()?;
        // Within the generation last read, every commit since is still in
        // the WAL past the position: only there can copies of a commit frame
        // be settled by the counter (see below).
        let mut same_generation = false;
        let start = match self.read {
            None => return Ok(Ship::Nothing),
            Some(Read::Empty) => {
                if self.wal.bytes().is_empty() {
                    // Still empty: nothing may have been committed since.
                    return Ok(match self.counted {
                        Some(c) if c != shm.change => Ship::Lost(lost_reason(shm.change, c, 0)),
                        _ => Ship::Nothing,
                    });
                }
                match wal::resume(self.wal.bytes(), None).map_err(|e| e.at(self.wal.path()))? {
                    Resume::Fresh(p) => p,
                    _ => return Ok(Ship::NotReady),
                }
            }
            Some(Read::At(pos)) => match wal::resume(self.wal.bytes(), Some(&pos))
                .map_err(|e| e.at(self.wal.path()))?
            {
                Resume::Empty => {
                    if !fenced {
                        return Ok(Ship::NotReady);
                    }
                    // Truncated under the fence: the counter says whether
                    // anything was lost with it.
                    return Ok(match self.counted {
                        Some(c) if c != shm.change => Ship::Lost(lost_reason(shm.change, c, 0)),
                        _ => {
                            self.read = Some(Read::Empty);
                            Ship::Nothing
                        }
                    });
                }
                Resume::Continue(p) => {
                    same_generation = true;
                    p
                }
                Resume::Restarted(p) | Resume::Fresh(p) => p,
                Resume::Reset(reason) => match WalHeader::parse(self.wal.bytes()) {
                    // The counter decides: several restarts that lost no
                    // commit are harmless.
                    Ok(h) if self.counted.is_some() => Position::start(&h),
                    _ => return Ok(Ship::Lost(reason)),
                },
            },
        };
        if (shm.salt1, shm.salt2) != (start.salt1, start.salt2) {
            // The WAL header and the wal-index disagree for a moment (a new
            // generation being started); under the fence they cannot.
            return Ok(if fenced {
                Ship::Lost("the WAL header and the wal-index disagree".into())
            } else {
                Ship::NotReady
            });
        }
        let published = u64::from(shm.mx_frame);
        let from = start.frame_index();
        if published < from {
            return Ok(Ship::Lost(format!(
                "the wal-index publishes {published} frames, fewer than the {from} already read"
            )));
        }
        let mut scanner = Scanner::new(self.wal.bytes(), start)
            .map_err(|e| e.at(self.wal.path()))?
            .with_frame_limit(published - from);
        let txs: Vec<Transaction> = scanner.by_ref().collect();
        let end = scanner.position();
        if end.frame_index() != published {
            let short = matches!(
                scanner.stop_reason(),
                Some(StopReason::EndOfFile | StopReason::PartialFrame)
            );
            if short && !fenced {
                return Ok(Ship::NotReady);
            }
            return Ok(Ship::Lost(format!(
                "the WAL holds {} valid frames where the wal-index publishes {published}",
                end.frame_index()
            )));
        }
        if let Some(c) = self.counted {
            let committed = u64::from(shm.change.wrapping_sub(c));
            let read = txs.len() as u64;
            // A copy of a commit frame is sector padding or a further commit
            // of the same page with the same bytes; the counter says which.
            // Either way the state is the same, and a segment is one txid.
            // Only within the generation last read is every commit since
            // still in the WAL: after a restart a lost commit could hide
            // behind a padding copy, so there the count must match exactly.
            let copies: u64 = txs.iter().map(|t| u64::from(t.copies)).sum();
            let settled = committed == read
                || (same_generation && committed > read && committed <= read + copies);
            if !settled {
                return Ok(Ship::Lost(lost_reason(shm.change, c, txs.len())));
            }
        }
        self.counted = Some(shm.change);
        if txs.is_empty() {
            self.read = Some(Read::At(end));
            return Ok(Ship::Nothing);
        }
        self.emit(&txs)?;
        Ok(Ship::Shipped)
    }

    fn emit(&mut self, txs: &[Transaction]) -> Result<()> {
        let Some(last) = txs.last() else {
            return Ok(());
        };
        // Everything read so far becomes one segment: one transaction when
        // idle, all of a burst when behind (group commit).
        let txid = self.next_txid;
        let enc = segment::encode_transactions(self.wal.bytes(), txs, txid, &self.cfg.tmp_dir)?;
        self.send(enc, 0)?;
        self.read = Some(Read::At(last.end));
        Ok(())
    }

    /// Queue `enc` for upload: at once when nothing of this database is in
    /// flight, else after what is (objects are stored in txid order, so a
    /// crash never leaves a stored txid after a missing one).
    fn send(&mut self, enc: Encoded, level: u8) -> Result<()> {
        self.next_txid = enc.header.max_txid + 1;
        self.stats.note_cut(enc.header.max_txid);
        self.pending.push_back((enc, level));
        self.flush_pending()
    }

    fn flush_pending(&mut self) -> Result<()> {
        if !self.inflight.is_empty() {
            return Ok(());
        }
        let Some((enc, level)) = self.pending.pop_front() else {
            return Ok(());
        };
        let txid = enc.header.max_txid;
        let key = ltx::object_key("", &self.cfg.name, level, enc.header.min_txid, txid);
        let len = enc.body.len()?;
        let failures: Arc<std::sync::atomic::AtomicU32> = Arc::default();
        // Files are streamed from disk; only their read buffer counts.
        let charge = self.budget.force(match enc.body {
            crate::upload::Body::Memory(_) => len,
            crate::upload::Body::File(_) => len.min(16 << 20),
        });
        self.segments
            .send(Segment {
                key,
                txid,
                body: enc.body,
                meta: enc.meta,
                charge,
                ack: self.acks_tx.clone(),
                db: self.cfg.name.clone(),
                failures: failures.clone(),
            })
            .map_err(|_| Error::Config("uploader pool stopped".into()))?;
        // Nothing was in flight: the time without progress starts now.
        self.last_progress = Instant::now();
        self.upload_failures = failures;
        self.inflight.insert(txid);
        if level == SNAPSHOT_LEVEL {
            self.snapshot_inflight = Some(txid);
        }
        self.last_put = Some(Instant::now());
        Ok(())
    }

    /// `walsync snapshot`: wait for the segments in flight, take a snapshot
    /// as the next txid, and wait until storage acknowledged it (everything
    /// up to `timeout`). Returns the snapshot's txid. The caller must hold
    /// the database's [`crate::lock`] so no other process allocates txids.
    pub fn snapshot_now(&mut self, reason: &str, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        self.wait_uploaded(deadline, timeout)?;
        let txid = self.next_txid;
        self.snapshot(reason)?;
        self.wait_uploaded(deadline, timeout)?;
        self.end_read()?;
        Ok(txid)
    }

    fn wait_uploaded(&mut self, deadline: Instant, timeout: Duration) -> Result<()> {
        self.flush_pending()?;
        while !self.inflight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.acks.recv_timeout(left) {
                Ok(a) => {
                    self.on_ack(a);
                    self.check_fenced()?;
                    self.flush_pending()?;
                }
                Err(_) => {
                    return Err(Error::Config(format!(
                        "{}: storage did not acknowledge txid {} within {}",
                        self.cfg.name,
                        self.inflight.first().copied().unwrap_or(0),
                        humantime::format_duration(timeout)
                    )))
                }
            }
        }
        Ok(())
    }

    /// Take a consistent snapshot as the next txid (level 9): every page as
    /// of the end of the WAL, the newest committed frame per page, else the
    /// database file. Streamed into a temp file; memory stays bounded.
    pub fn snapshot(&mut self, reason: &str) -> Result<()> {
        log::info!(
            "{}: snapshot as txid {}: {reason}",
            self.cfg.name,
            self.next_txid
        );
        let fence = self.fence()?;
        self.wal.refresh()?;
        let mut frames = HashMap::new();
        let mut commit = None;
        let mut end = None;
        let mut page_size = None;
        // Only frames the wal-index publishes count (a writer that died
        // before publishing leaves valid-looking frames past `mxFrame`).
        let published = self.read_shm()?;
        self.wal.refresh()?;
        if let (Ok(h), Some(sh)) = (WalHeader::parse(self.wal.bytes()), published) {
            if (sh.salt1, sh.salt2) == (h.salt1, h.salt2) {
                let mut s = Scanner::new(self.wal.bytes(), Position::start(&h))
                    .map_err(|e| e.at(self.wal.path()))?
                    .with_frame_limit(u64::from(sh.mx_frame));
                for tx in s.by_ref() {
                    for f in &tx.frames {
                        frames.insert(f.pgno, *f);
                    }
                    commit = Some(tx.commit);
                }
                if s.position().frame_index() != u64::from(sh.mx_frame) {
                    return Err(Error::wal(
                        self.wal.path(),
                        format!(
                            "holds {} valid frames where the wal-index publishes {}",
                            s.position().frame_index(),
                            sh.mx_frame
                        ),
                    ));
                }
                end = Some(s.position());
                page_size = Some(h.page_size);
            }
        }
        self.end_read()?;
        self.begin_read()?;
        let shm = self.note_read_began()?;
        self.counted = shm.map(|h| h.change);
        self.read = Some(end.map_or(Read::Empty, Read::At));
        drop(fence);

        // Without a pin the WAL is fully backfilled and the read transaction
        // stops any further backfill: the database file alone is the state.
        if !self.pinned {
            frames.clear();
        }
        let path = self.cfg.path.clone();
        let Some(file) = self.db_file.as_ref() else {
            return Err(Error::Config(format!("{}: not open", path.display())));
        };
        // The WAL's page size only when its frames are used: a WAL whose
        // header no frame matches (bad or foreign) says nothing about the
        // database file.
        let page_size = match page_size.filter(|_| commit.is_some()) {
            Some(p) => p,
            None => {
                let mut first = [0u8; 100];
                segment::read_db_page(file, &path, 1, &mut first)?;
                segment::db_page_size(&first).ok_or_else(|| {
                    Error::Config(format!(
                        "{}: not a SQLite database (bad header)",
                        path.display()
                    ))
                })?
            }
        };
        let commit = match commit {
            Some(c) => c,
            // No WAL frame: the size SQLite itself uses for the read
            // transaction's state (the header's page count), not the file's
            // length, which SQLITE_FCNTL_CHUNK_SIZE or a failed truncation
            // leaves larger than the database.
            None => {
                let pages: i64 = self
                    .conn()?
                    .query_row("PRAGMA page_count", [], |r| r.get(0))
                    .map_err(|e| Error::sqlite(&path, e))?;
                u32::try_from(pages)
                    .map_err(|_| Error::Config(format!("{}: database too large", path.display())))?
            }
        };
        let txid = self.next_txid;
        let mut header = Header::new(page_size, commit, 1, txid, ltx::now_ms());
        if let Some(Read::At(p)) = self.read {
            segment::wal_fields(&mut header, wal::WAL_HEADER_SIZE as u64, &p);
        }
        let lock = ltx::lock_pgno(page_size);
        let wal_bytes = self.wal.bytes();
        let raw = u64::from(commit) * u64::from(page_size);
        let enc = segment::encode_with(header, raw, &self.cfg.tmp_dir, |w| {
            let mut buf = vec![0u8; page_size as usize];
            for pgno in (1..=commit).filter(|p| *p != lock) {
                match frames.get(&pgno) {
                    Some(f) => {
                        let data = wal::frame_page(wal_bytes, page_size, f).ok_or_else(|| {
                            Error::Config(format!("internal: page {pgno} outside the WAL"))
                        })?;
                        w.page(pgno, data)?;
                    }
                    None => {
                        segment::read_db_page(file, &path, pgno, &mut buf)?;
                        w.page(pgno, &buf)?;
                    }
                }
            }
            Ok(())
        })?;
        self.send(enc, SNAPSHOT_LEVEL)?;
        self.last_snapshot = Instant::now();
        self.snapshot_reason = None;
        self.stats.snapshots.fetch_add(1, Ordering::Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.stats.last_snapshot_ms.store(now_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Handle a wake-up: read and ship what is new, check the commit
    /// counter, checkpoint when due.
    fn step(&mut self) -> Result<()> {
        if self.read.is_none() || !self.in_read || self.snapshot_reason.is_some() {
            // Not established, or continuity lost: only a snapshot may come
            // next (a segment now would claim to follow a state it does not).
            return Ok(());
        }
        if self.inflight.len() + self.pending.len() >= MAX_INFLIGHT {
            log::trace!("{}: step: waiting for an upload", self.cfg.name);
            return self.release_if_wal_too_big(); // the WAL is the buffer
        }
        if self.budget.exhausted() {
            // Other databases hold the budget: look again shortly.
            self.deferred_until = Some(Instant::now() + Duration::from_millis(50));
            return Ok(());
        }
        if let Some(last) = self.last_put {
            let due = last + self.cfg.min_put_interval;
            if Instant::now() < due {
                self.deferred_until = Some(due);
                return Ok(());
            }
        }
        let Some(shm) = self.read_shm()? else {
            return self.doubt("the wal-index (-shm) disappeared");
        };
        log::trace!(
            "{}: step: mxFrame={} backfill={} change={} pinned={} read={:?}",
            self.cfg.name,
            shm.mx_frame,
            shm.backfill,
            shm.change,
            self.pinned,
            self.read.map(|r| match r {
                Read::At(p) => p.frame_index(),
                Read::Empty => 0,
            })
        );
        if !self.pinned {
            if shm.mx_frame <= shm.backfill {
                // Fully backfilled and not pinned: nothing unread can exist
                // (the read transaction began with everything read) — which
                // the commit counter confirms.
                self.check_counter(&shm)?;
                if self.snapshot_reason.is_none() {
                    self.repin_if_changed(&shm)?;
                }
                return Ok(());
            }
            self.pinned = true;
        }
        self.wal.refresh()?;
        match self.ship_available(false)? {
            Ship::Lost(reason) => return self.doubt(&reason),
            Ship::NotReady => {
                // The WAL can be ahead of the wal-index for a moment.
                self.settle_later();
                return Ok(());
            }
            Ship::Nothing | Ship::Shipped => {}
        }
        // Move the read transaction forward only when nothing committed
        // since the read: frames not read yet must stay pinned (a read
        // transaction that starts on a fully backfilled WAL would not keep
        // them from being overwritten).
        let Some(shm) = self.read_shm()? else {
            return Ok(());
        };
        let caught_up = match self.read {
            Some(Read::At(p)) => {
                (shm.salt1, shm.salt2) == (p.salt1, p.salt2)
                    && u64::from(shm.mx_frame) == p.frame_index()
            }
            Some(Read::Empty) => shm.mx_frame == 0,
            None => false,
        };
        if caught_up {
            self.repin_if_changed(&shm)?;
        } else {
            self.settle_later();
        }
        self.maybe_checkpoint()
    }

    /// During a long storage outage the read transaction keeps the WAL from
    /// being reused, so it grows with every commit. Past `max_wal_bytes`,
    /// stop holding it: the application's checkpoints work again, nothing is
    /// lost (the database file has everything), and the next txid is a
    /// snapshot once the queued segments are stored. Point-in-time history
    /// between the last stored txid and that snapshot is what is given up.
    fn release_if_wal_too_big(&mut self) -> Result<()> {
        if self.cfg.max_wal_bytes == 0 || !self.in_read || !self.pinned {
            return Ok(());
        }
        // Only a real outage: uploads in flight are normal, and releasing on
        // every pass would turn every transaction into a full snapshot. Once
        // released, the snapshot waits for the uploads to come back, so this
        // fires at most once per outage.
        let stalled = self.last_progress.elapsed();
        if stalled < self.cfg.stuck_after || self.upload_failures.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        // What the pinned read transaction holds back is the current
        // generation (it cannot restart while pinned), not the file, whose
        // length never shrinks without a TRUNCATE.
        let (Some(shm), Some(Read::At(p))) = (self.read_shm()?, self.read) else {
            return Ok(());
        };
        let frame = wal::FRAME_HEADER_SIZE as u64 + u64::from(p.page_size);
        let len = u64::from(shm.mx_frame) * frame;
        if len <= self.cfg.max_wal_bytes {
            return Ok(());
        }
        let reason = format!(
            "the WAL reached {} MiB while uploads made no progress for {}s; walsync stopped holding it back",
            len >> 20,
            stalled.as_secs()
        );
        log::warn!(
            "{}: {reason}; the next txid will be a snapshot",
            self.cfg.name
        );
        self.end_read()?;
        self.snapshot_reason = Some(reason);
        Ok(())
    }

    /// A file event arrived.
    fn woken(&mut self) {
        self.settle = 0;
        self.tail.reset();
        self.last_event = Instant::now();
    }

    /// After a pass: is anything committed still unread? Something
    /// published and not read yet (a pass that was deferred or not ready) is
    /// looked at again shortly, whatever else is scheduled; a commit written
    /// but not yet published (see [`crate::tail`]) is polled for until it is.
    /// Both count as replication lag from the moment they were first seen.
    fn watch_tail(&mut self) -> Result<()> {
        if self.read.is_none() || !self.in_read || self.snapshot_reason.is_some() {
            return Ok(());
        }
        let Some(shm) = self.read_shm()? else {
            return Ok(());
        };
        let read_all = (!self.pinned && shm.mx_frame <= shm.backfill)
            || match self.read {
                Some(Read::At(p)) => {
                    (shm.salt1, shm.salt2) == (p.salt1, p.salt2)
                        && u64::from(shm.mx_frame) == p.frame_index()
                }
                Some(Read::Empty) => shm.mx_frame == 0,
                None => false,
            };
        let known = match self.read {
            Some(Read::At(p)) => Some((p.salt1, p.salt2)),
            _ => None,
        };
        let tail = match (read_all, self.wal.file()?) {
            (true, Some(f)) => self
                .tail
                .committed_past(f, &shm, known)
                .map_err(|e| Error::io(self.wal.path(), e))?,
            _ => Tail::Nothing,
        };
        // A commit left unpublished long after the last file event: its
        // writer died mid-commit (SQLite will overwrite it). Look now and
        // then, without counting it as lag.
        let patient = self.last_event.elapsed() < tail::TAIL_PATIENCE;
        let poll = match tail {
            Tail::Committed if patient => {
                log::trace!(
                    "{}: a commit is written past the published end: polling",
                    self.cfg.name
                );
                self.stats.note_unread();
                Some(tail::TAIL_POLL)
            }
            Tail::Committed => {
                self.stats.note_read_all();
                Some(tail::TAIL_SLOW_POLL)
            }
            Tail::Undecided => Some(tail::TAIL_POLL),
            Tail::Nothing if read_all => {
                self.stats.note_read_all();
                None
            }
            Tail::Nothing => {
                self.stats.note_unread();
                // Published but unread: look again shortly unless a timer of
                // the pass or an upload's acknowledgement wakes the watcher.
                let waiting = self.deferred_until.is_some()
                    || !self.inflight.is_empty()
                    || !self.pending.is_empty();
                (!waiting).then_some(tail::TAIL_POLL)
            }
        };
        if let Some(poll) = poll {
            let at = Instant::now() + poll;
            self.deferred_until = Some(self.deferred_until.map_or(at, |d| d.min(at)));
        }
        Ok(())
    }

    /// A wake-up can come before what caused it is visible: SQLite writes the
    /// WAL (or a checkpointer the database file) and publishes the result in
    /// the wal-index only afterwards, without another file event. Look again
    /// a few times (5, 20, 80, 320 ms) after a wake-up that changed nothing;
    /// an idle database stops waking after that.
    fn settle_later(&mut self) {
        if self.settle < SETTLE_CHECKS {
            let wait = Duration::from_millis(5 << (2 * self.settle));
            self.settle += 1;
            let at = Instant::now() + wait;
            self.deferred_until = Some(self.deferred_until.map_or(at, |d| d.min(at)));
        }
    }

    /// Everything published has been read: move the read transaction forward
    /// if its mark may be old or a checkpointer made progress (and may now
    /// wait for walsync); otherwise look again shortly (settle).
    fn repin_if_changed(&mut self, shm: &ShmHeader) -> Result<()> {
        let changed = self.r_shm.is_none_or(|r| {
            (r.mx_frame, r.backfill, r.salt1, r.salt2)
                != (shm.mx_frame, shm.backfill, shm.salt1, shm.salt2)
        });
        if changed {
            self.settle = 0;
            self.repin()
        } else {
            self.settle_later();
            Ok(())
        }
    }

    /// Everything committed has been read: the counters must agree.
    fn check_counter(&mut self, shm: &ShmHeader) -> Result<()> {
        match self.counted {
            Some(c) if c != shm.change => {
                let reason = format!(
                    "SQLite counted {} more committed transaction(s) than walsync read",
                    shm.change.wrapping_sub(c)
                );
                self.doubt(&reason)
            }
            _ => Ok(()),
        }
    }

    fn doubt(&mut self, reason: &str) -> Result<()> {
        log::warn!(
            "{}: {reason}; the next txid will be a snapshot",
            self.cfg.name
        );
        self.snapshot_reason = Some(reason.to_string());
        Ok(())
    }

    /// Checkpoint once the WAL is past the thresholds. Normally only when
    /// every segment is acknowledged (the WAL still holds what is in flight);
    /// under a steady write load, where something is always in flight, once
    /// the WAL is twice the PASSIVE threshold: the in-flight segment holds
    /// its own copy of the frames, and a crash before its upload only costs
    /// a snapshot on restart, never data.
    fn maybe_checkpoint(&mut self) -> Result<()> {
        if !self.pinned || self.snapshot_reason.is_some() {
            return Ok(());
        }
        let Some(Read::At(p)) = self.read else {
            return Ok(());
        };
        let frame = wal::FRAME_HEADER_SIZE as u64 + u64::from(p.page_size);
        let file_frames = (self.wal.bytes().len() as u64).saturating_sub(32) / frame;
        let truncate = file_frames >= self.cfg.truncate_pages;
        let idle = self.inflight.is_empty() && self.pending.is_empty();
        let due = if idle {
            p.frame_index() >= self.cfg.checkpoint_pages || truncate
        } else {
            p.frame_index() >= self.cfg.checkpoint_pages.saturating_mul(2)
                || file_frames >= self.cfg.truncate_pages.saturating_mul(2)
        };
        if !due {
            return Ok(());
        }
        self.checkpoint(truncate)
    }

    /// walsync's own checkpoint (see the module doc).
    fn checkpoint(&mut self, truncate: bool) -> Result<()> {
        let fence = match self.fence_within(Duration::from_millis(200)) {
            Ok(f) => f,
            Err(e) => {
                log::debug!("{}: checkpoint postponed: {e}", self.cfg.name);
                return Ok(());
            }
        };
        // Under the fence nothing new can commit: read what did meanwhile.
        match self.ship_available(true)? {
            Ship::Lost(reason) => return self.doubt(&reason),
            Ship::NotReady => return Ok(()),
            Ship::Nothing | Ship::Shipped => {}
        }
        self.end_read()?;
        let (busy, log_frames, done): (i64, i64, i64) = self
            .conn()?
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| Error::sqlite(&self.cfg.path, e))?;
        self.stats.checkpoints.fetch_add(1, Ordering::Relaxed);
        log::debug!(
            "{}: PASSIVE checkpoint: busy={busy} log={log_frames} checkpointed={done}",
            self.cfg.name
        );
        if !(truncate && busy == 0 && log_frames == done) {
            return self.establish(fence, false);
        }
        // TRUNCATE takes the write lock itself, so it cannot run under the
        // fence, and a commit can slip in once the fence is dropped. Begin
        // the read transaction first, on the now fully backfilled WAL: it
        // stops any further backfill (fact 2), so a TRUNCATE that finds a
        // slipped-in commit cannot copy it and gives up (busy) instead of
        // checkpointing it away unread. Without a busy wait it never holds
        // the application's writer back either.
        self.establish_under(&fence, false)?;
        let r: rusqlite::Result<(i64, i64, i64)> = match fence.release() {
            Some(c) => c.busy_timeout(Duration::ZERO).and_then(|()| {
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
            }),
            None => return Ok(()),
        };
        log::debug!("{}: TRUNCATE checkpoint: {r:?}", self.cfg.name);
        // Re-read under the fence: a truncated WAL restarts the position, a
        // commit that slipped in is still there to ship.
        let fence = self.fence_retrying()?;
        self.end_read()?;
        self.establish(fence, false)
    }

    fn fence_retrying(&self) -> Result<Fence> {
        let mut attempt = 0;
        loop {
            match self.fence() {
                Ok(f) => return Ok(f),
                Err(e) if attempt < 20 => {
                    log::debug!("{}: fence busy: {e}", self.cfg.name);
                    std::thread::sleep(crate::upload::backoff(attempt, Duration::from_secs(2)));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stop for good once fenced out (see [`crate::lease`]).
    fn check_fenced(&self) -> Result<()> {
        match &self.fenced {
            Some(why) => Err(Error::Fenced(why.clone())),
            None => Ok(()),
        }
    }

    fn on_ack(&mut self, ack: Ack) {
        if let Some(why) = ack.fenced {
            // Not stored: it stays in flight, nothing more is sent.
            self.fenced = Some(why);
            return;
        }
        self.inflight.remove(&ack.txid);
        self.last_progress = Instant::now();
        if self.snapshot_inflight == Some(ack.txid) {
            self.snapshot_inflight = None;
            self.stats.snapshot_txid.store(ack.txid, Ordering::Relaxed);
        }
        let durable = match (self.inflight.first(), self.pending.front()) {
            (Some(t), _) => t - 1,
            (None, Some((e, _))) => e.header.max_txid - 1,
            (None, None) => self.next_txid - 1,
        };
        self.stats.durable_txid.store(durable, Ordering::Relaxed);
        self.stats.note_durable(durable);
        self.stats.segments.fetch_add(1, Ordering::Relaxed);
    }

    /// Re-open after the database file was replaced, deleted or recreated.
    fn check_file(&mut self) -> Result<bool> {
        let id = file_id(&self.cfg.path);
        // Through a symlink, the same file may now be reached at another
        // place (where SQLite keeps another WAL): that is a move too.
        let moved = || self.via_symlink && resolve(&self.cfg.path).is_ok_and(|r| r != self.real);
        if id.is_some() && id == self.db_id && self.conn.is_some() && !moved() {
            return Ok(true);
        }
        if self.conn.is_some() {
            let _ = self.end_read();
            self.conn = None;
            self.db_file = None;
            self.read = None;
            self.counted = None;
            log::warn!("{}: database file was deleted or replaced", self.cfg.name);
        }
        if id.is_none() {
            return Ok(false); // wait for it to come back
        }
        // Before opening it: lock and watch the file where it is now
        // (another directory, or the same path in a directory that replaced
        // the watched one). Refused when another replica holds that file.
        let new = resolve(&self.cfg.path)?;
        if let Some(f) = self.rewatch.as_mut() {
            f(&self.real, &new)?;
        }
        self.connect()?;
        self.wal = WalMap::open(wal_path(&self.real))?;
        self.tail.reset();
        self.snapshot_reason = Some("database file was replaced".into());
        Ok(true)
    }

    /// Do whatever is due now; returns when the next timer fires.
    fn tick(&mut self) -> Result<Option<Instant>> {
        self.check_fenced()?;
        self.flush_pending()?;
        if !self.check_file()? {
            // Gone: its directory may be gone with its watch, so look again
            // every second rather than wait for an event that may never come.
            return Ok(Some(Instant::now() + tail::FS_POLL));
        }
        if self.snapshot_reason.is_none() {
            if let Some(iv) = self.cfg.snapshot_interval {
                if self.last_snapshot.elapsed() >= iv {
                    let snap = self.stats.snapshot_txid.load(Ordering::Relaxed);
                    if snap > 0 && snap + 1 == self.next_txid && self.pending.is_empty() {
                        // Nothing was shipped since the newest snapshot: it
                        // is the current state already. An idle database
                        // costs no upload (and its replica nothing to trim).
                        self.last_snapshot = Instant::now();
                    } else {
                        self.snapshot_reason = Some("periodic snapshot".into());
                    }
                }
            }
        }
        if self.stats.replica_missing.swap(false, Ordering::Relaxed) {
            self.snapshot_reason =
                Some("the replica's newest snapshot disappeared from storage".into());
        }
        self.deferred_until = None;
        if !self.in_read && self.snapshot_reason.is_none() && self.read.is_some() {
            // A checkpoint or start-up step failed after the read
            // transaction ended: take it again under the fence.
            let fence = self.fence()?;
            self.establish(fence, self.counted.is_none())?;
        }
        if let Some(reason) = self.snapshot_reason.clone() {
            // One segment in flight at a time: the snapshot waits for it.
            if self.inflight.is_empty() && self.pending.is_empty() {
                self.snapshot(&reason)?;
            }
        }
        self.step()?;
        self.watch_tail()?;
        let mut next = self.deferred_until;
        // Remote filesystems miss events; a symlink can be retargeted
        // without any event where walsync watches.
        let poll = self.fs_poll.or(self.via_symlink.then_some(tail::FS_POLL));
        if let Some(poll) = poll {
            let at = Instant::now() + poll;
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(iv) = self.cfg.snapshot_interval {
            let due = self.last_snapshot + iv;
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        Ok(next)
    }

    /// The watcher thread's loop: runs until `Shutdown`, the event channel
    /// closes or `shutdown` is closed (a broadcast), then ships what is committed and waits for the uploads up to
    /// `drain_timeout`.
    pub fn run(
        mut self,
        events: Receiver<Event>,
        shutdown: Receiver<()>,
        drain_timeout: Duration,
    ) -> Result<()> {
        let mut retry = 0u32;
        let mut timer: Option<Instant> = None;
        let mut pending_error: Option<Instant>;
        loop {
            match self.tick() {
                Ok(next) => {
                    self.stats.passes.fetch_add(1, Ordering::Relaxed);
                    retry = 0;
                    timer = next;
                    pending_error = None;
                }
                Err(e @ Error::Fenced(_)) => {
                    log::error!("{e}");
                    let _ = self.end_read();
                    return Err(e);
                }
                Err(e) => {
                    let wait = crate::upload::backoff(retry, Duration::from_secs(30));
                    log::error!(
                        "{}: {e} (retrying in {:.1}s)",
                        self.cfg.name,
                        wait.as_secs_f32()
                    );
                    retry = retry.saturating_add(1);
                    pending_error = Some(Instant::now() + wait);
                }
            }
            let deadline = [timer, pending_error].into_iter().flatten().min();
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let never = crossbeam_channel::never();
            let tick = match timeout {
                Some(t) => crossbeam_channel::after(t),
                None => never,
            };
            crossbeam_channel::select! {
                recv(events) -> ev => match ev {
                    Ok(Event::Wake) => self.woken(),
                    Ok(Event::Shutdown) | Err(_) => return self.drain(drain_timeout),
                },
                recv(self.acks) -> a => if let Ok(a) = a { self.on_ack(a) },
                recv(shutdown) -> _ => return self.drain(drain_timeout),
                recv(tick) -> _ => {}
            }
            // Coalesce a burst of events into one pass.
            while let Ok(a) = self.acks.try_recv() {
                self.on_ack(a);
            }
            loop {
                match events.try_recv() {
                    Ok(Event::Wake) => self.woken(),
                    Ok(Event::Shutdown) => return self.drain(drain_timeout),
                    Err(_) => break,
                }
            }
        }
    }

    /// Ship everything committed (or the snapshot continuity needs) and wait
    /// for the uploads, up to `timeout`.
    fn drain(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut result = Ok(());
        loop {
            if Instant::now() >= deadline {
                break;
            }
            let idle = self.inflight.is_empty() && self.pending.is_empty();
            if idle {
                let r = match self.snapshot_reason.clone() {
                    Some(reason) if self.conn.is_some() => self.snapshot(&reason),
                    Some(_) => break, // the database is gone; nothing to read
                    None if !self.in_read && self.read.is_some() && self.conn.is_some() => {
                        // An earlier step failed after ending the read
                        // transaction: re-establish it (it ships on the way).
                        let counted_unknown = self.counted.is_none();
                        self.fence()
                            .and_then(|f| self.establish(f, counted_unknown))
                    }
                    None => self.step(),
                };
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
                let settled = self.snapshot_reason.is_none()
                    && (self.in_read || self.conn.is_none() || self.read.is_none());
                if self.inflight.is_empty() && self.pending.is_empty() && settled {
                    break; // nothing more to ship
                }
                if self.inflight.is_empty() && self.pending.is_empty() {
                    continue; // a snapshot or re-establish is due: go again
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.acks.recv_timeout(left) {
                Ok(a) => {
                    self.on_ack(a);
                    if let Err(e) = self.check_fenced().and_then(|()| self.flush_pending()) {
                        result = Err(e);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = self.end_read();
        let unshipped = self.inflight.len() + self.pending.len();
        if result.is_ok() && unshipped > 0 {
            result = Err(Error::Config(format!(
                "{}: {unshipped} segment(s) not uploaded at shutdown; they stay in the WAL and ship on the next start",
                self.cfg.name
            )));
        }
        result
    }
}

/// The write lock held on a second connection (see the module doc).
struct Fence(Option<Connection>);

impl Fence {
    /// Drop the write lock and hand back the connection.
    fn release(mut self) -> Option<Connection> {
        let c = self.0.take()?;
        let _ = c.execute_batch("ROLLBACK");
        Some(c)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        if let Some(c) = &self.0 {
            let _ = c.execute_batch("ROLLBACK");
        }
    }
}

/// Find the newest txid in storage and the WAL position recorded with it,
/// in O(log txid) small LIST requests per level (no full listing).
pub fn find_resume_point(storage: &dyn Storage, db: &str) -> Result<Option<Resumed>> {
    let mut best: Option<(u64, String)> = None;
    let mut level_ends = [0u64; 10];
    let mut snapshot_time = None;
    for level in [0u8, 1, 2, 3, SNAPSHOT_LEVEL] {
        if let Some(last) = last_in_level(storage, db, level)? {
            level_ends[usize::from(level)] = last.max_txid;
            if level == SNAPSHOT_LEVEL {
                snapshot_time = last.modified;
            }
            if best.as_ref().is_none_or(|(b, _)| last.max_txid > *b) {
                best = Some((last.max_txid, last.key));
            }
        }
    }
    let Some((txid, key)) = best else {
        return Ok(None);
    };
    let head = storage.get_range(&key, 0, Some(ltx::HEADER_SIZE as u64))?;
    let h = Header::decode(&head).map_err(|reason| Error::ltx(&key, reason))?;
    let offset = if h.wal_offset > 0 {
        (h.wal_offset + h.wal_size) as u64
    } else {
        0
    };
    Ok(Some(Resumed {
        txid,
        salt1: h.wal_salt1,
        salt2: h.wal_salt2,
        offset,
        page_size: h.page_size,
        level_ends,
        snapshot_time,
    }))
}

/// The newest object of one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastInLevel {
    /// Its max txid.
    pub max_txid: u64,
    /// Its key.
    pub key: String,
    /// When it was stored, if the listing says.
    pub modified: Option<std::time::SystemTime>,
}

/// The file with the highest max txid in one level, by exponential then
/// binary search on the sort field (min txid; max txid for snapshots).
/// Keys fetched per start-up probe (one LIST request either way).
const PROBE_PAGE: usize = 100;

pub fn last_in_level(storage: &dyn Storage, db: &str, level: u8) -> Result<Option<LastInLevel>> {
    let dir = ltx::level_prefix("", db, level);
    let probe = |t: u64| -> Result<Option<crate::storage::ObjectInfo>> {
        let after = if level == SNAPSHOT_LEVEL {
            format!("{dir}{:016x}-{t:016x}", 1)
        } else {
            format!("{dir}{t:016x}")
        };
        // Keys that are not LTX names (a stray upload, an editor's backup
        // file) sort among or after the real ones: skip them, within one
        // page, instead of letting them wedge start-up.
        Ok(storage
            .list_page(&dir, Some(&after), PROBE_PAGE)?
            .into_iter()
            .find(|o| {
                let name = o.key.rsplit('/').next().unwrap_or("");
                ltx::parse_object_name(name)
                    .is_some_and(|(min, _)| level != SNAPSHOT_LEVEL || min == 1)
            }))
    };
    let Some(_) = probe(0)? else {
        return Ok(None);
    };
    // Largest t with probe(t) non-empty.
    let mut lo = 0u64;
    let mut hi = 1u64;
    while hi < u64::MAX / 2 && probe(hi)?.is_some() {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if probe(mid)?.is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Every LTX key after `lo` has the same (largest) min txid; of those
    // (two compactions can start at one txid) the one reaching furthest.
    let after = if level == SNAPSHOT_LEVEL {
        format!("{dir}{:016x}-{lo:016x}", 1)
    } else {
        format!("{dir}{lo:016x}")
    };
    let best = storage
        .list_page(&dir, Some(&after), PROBE_PAGE)?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            let (min, max) = ltx::parse_object_name(name)?;
            (level != SNAPSHOT_LEVEL || min == 1).then_some((max, o))
        })
        .max_by_key(|(max, _)| *max);
    let Some((max, info)) = best else {
        return Ok(None);
    };
    Ok(Some(LastInLevel {
        max_txid: max,
        key: info.key,
        modified: info.last_modified,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FileStorage, Metadata};

    #[test]
    fn newest_txid_is_found_past_stray_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::create(dir.path()).unwrap();
        for t in 1..=37u64 {
            s.put(
                &ltx::object_key("", "a.db", 0, t, t),
                b"x",
                &Metadata::new(),
            )
            .unwrap();
        }
        s.put(
            &ltx::object_key("", "a.db", 9, 1, 20),
            b"x",
            &Metadata::new(),
        )
        .unwrap();
        for stray in [
            "a.db/0000/zz-not-ltx",
            "a.db/0000/0000000000000003-x.ltx",
            "a.db/0009/README",
            "a.db/0009/0000000000000002-0000000000000030.ltx",
        ] {
            s.put(stray, b"x", &Metadata::new()).unwrap();
        }
        assert_eq!(
            last_in_level(&s, "a.db", 0).unwrap().map(|l| l.max_txid),
            Some(37)
        );
        assert_eq!(
            last_in_level(&s, "a.db", SNAPSHOT_LEVEL)
                .unwrap()
                .map(|l| l.max_txid),
            Some(20)
        );
        assert_eq!(last_in_level(&s, "a.db", 1).unwrap(), None);
        assert_eq!(last_in_level(&s, "b.db", 0).unwrap(), None);
    }
}
