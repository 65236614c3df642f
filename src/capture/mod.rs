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
//!
//! # Files
//!
//! - `config.rs`: settings. `mod.rs`: the per-database state, the
//!   connection, the read transaction that pins the WAL, and the fence.
//! - `protocol.rs`: read what the wal-index publishes, the counter check,
//!   cut segments and send them in txid order, acknowledgements.
//! - `pass.rs`: one pass per wake-up (what is due, what was missed, when to
//!   look again).
//! - `checkpoint.rs`: walsync's own checkpoints and the WAL escape valve.
//! - `snapshot.rs`, `source.rs` (a snapshot streamed from the database),
//!   `resume.rs`, `run.rs` (loop and drain), `stats.rs`.

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
use crate::replica::{last_in_each_level, read_header};
use crate::sqlite::shm::{Shm, ShmHeader};
use crate::sqlite::tail::{self, Tail, TailProbe};
use crate::sqlite::wal::{
    self, Position, Resume, Scanner, StopReason, Transaction, WalHeader, WalMap,
};
use crate::storage::{RetryReads, Storage};
use crate::upload::segment::{self, Encoded};
use crate::upload::{Ack, Budget, Refusal, Segment};

mod checkpoint;
mod config;
mod park;
mod pass;
mod protocol;
mod resume;
mod run;
mod slots;
mod snapshot;
mod source;
mod stats;

pub use config::{DbConfig, Event, Snooze};
pub use resume::{find_resume_point, Resumed};
pub use run::Outcome;
pub use slots::{OpenSlots, Seat, Slot, Wakeup, BASE_FDS, OPEN_FDS, PARKED_FDS};
pub use source::SnapshotSource;
pub use stats::DbStats;

/// What [`Capture::ship_available`] found.
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

/// How far the WAL has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Up to this position of this generation.
    At(Position),
    /// The WAL was empty (no header) when last read; the next generation to
    /// appear continues from its start.
    Empty,
}

/// Where the read transaction `R` stands: the pin of the protocol (see the
/// module docs, facts 1 and 2). A pin without a read transaction cannot be
/// written down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pin {
    /// No read transaction: nothing stops a checkpointer from restarting
    /// or truncating the WAL.
    Released,
    /// `R` is open but not known to pin the WAL: it began on a fully
    /// backfilled WAL, so it stops further backfill and at most one restart
    /// can discard frames, all of them already backfilled (fact 2). The WAL
    /// is not read in this state; it holds nothing unread.
    Reading {
        /// The wal-index just before `R` began: `R`'s snapshot is at least
        /// this new.
        since: Option<ShmHeader>,
    },
    /// `R` is open and the wal-index showed frames not yet backfilled after
    /// it began: nothing can restart or truncate the WAL while it is held
    /// (fact 1), so the WAL may be read through the map.
    Pinned {
        /// As in [`Pin::Reading`].
        since: Option<ShmHeader>,
    },
}

impl Pin {
    /// A read transaction is open.
    fn in_read(self) -> bool {
        !matches!(self, Pin::Released)
    }

    /// The read transaction pins the WAL.
    fn pinned(self) -> bool {
        matches!(self, Pin::Pinned { .. })
    }

    /// The wal-index as seen just before the read transaction began.
    fn since(self) -> Option<ShmHeader> {
        match self {
            Pin::Released => None,
            Pin::Reading { since } | Pin::Pinned { since } => since,
        }
    }

    /// The same read transaction, now known to pin the WAL (or not).
    fn with_pinned(self, pinned: bool) -> Pin {
        match (self, pinned) {
            (Pin::Released, _) => Pin::Released,
            (Pin::Reading { since } | Pin::Pinned { since }, true) => Pin::Pinned { since },
            (Pin::Reading { since } | Pin::Pinned { since }, false) => Pin::Reading { since },
        }
    }
}

/// A shutdown in progress: ship what is committed now (no put interval, no
/// checkpoint) and stop once it is stored.
#[derive(Debug, Clone, Copy, Default)]
struct Drain {
    /// A pass has read everything published: what was committed before the
    /// shutdown is shipped once the uploads in flight are acknowledged
    /// (later commits are the next start's).
    covered: bool,
    /// The last pass shipped nothing because other databases held the
    /// whole upload budget: wait for them.
    starved: bool,
}

/// One replicated database, driven by its own thread.
pub struct Capture {
    cfg: DbConfig,
    storage: Arc<dyn Storage>,
    segments: Sender<Segment>,
    budget: Arc<Budget>,
    acks_tx: Sender<Ack>,
    acks: Receiver<Ack>,
    stats: Arc<DbStats>,

    /// The streamed snapshot in flight, if one is (see `source.rs`). Declared
    /// before `conn` and `db_file`: dropping it withdraws the source before
    /// the read transaction that keeps its pages ends.
    stream: Option<source::Withdraw>,
    conn: Option<Connection>,
    /// walsync's own descriptor of the database file (pages for snapshots;
    /// shared with a streamed snapshot in flight, which never closes it).
    db_file: Option<Arc<File>>,
    /// The read transaction and whether it pins the WAL.
    pin: Pin,
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
    /// No snapshot before this (after the escape valve withdrew one: the
    /// application's checkpoints get the WAL back for a while).
    snapshot_not_before: Option<Instant>,
    /// What storage held at start-up (level ends for the compactor).
    resumed: Option<Resumed>,
    snapshot_reason: Option<String>,
    deferred_until: Option<Instant>,
    /// Set while shutting down (the drain, see `run.rs`).
    drain: Option<Drain>,
    /// Set when an upload was refused because another writer holds the
    /// replica ([`crate::lease`]): replication of this database stops.
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
    /// When the last file event arrived (for WAL events skipped while
    /// snoozing: when the next pass began, at most `min_put_interval`
    /// later).
    last_event: Instant,
    /// File events so far (memory trimming: a wake-up since the last trim).
    events: u64,
    /// Poll interval on filesystems without reliable file events.
    fs_poll: Option<Duration>,
    /// Last time storage made progress on this database's uploads (an ack,
    /// or a send with nothing in flight): an outage is time without it
    /// while the upload in flight fails (`upload_failures`).
    last_progress: Instant,
    upload_failures: Arc<std::sync::atomic::AtomicU32>,
    /// Shared with the file-event router: whether the put interval's timer
    /// will read the WAL anyway, and whether WAL events came meanwhile (see
    /// [`Snooze`]).
    snooze: Snooze,
    /// Told `(old, new)` resolved paths before reconnecting to a replaced
    /// or moved file, so its lock is held and its events are watched where
    /// SQLite now writes (see [`Capture::on_moved`]).
    rewatch: Option<Moved>,
    /// Open slots shared with the other databases, and this one's (see
    /// `park.rs`); `None`: never parks.
    parking: Option<park::Parking>,
    /// Set while the database's files are closed for being idle.
    parked: Option<park::Parked>,
}

/// Callback told `(old, new)` resolved paths of a moved database.
type Moved = Box<dyn FnMut(&Path, &Path) -> Result<()> + Send>;

/// Uploads without progress for this long, the one in flight failing, are
/// an outage: only then may the WAL past `max_wal_bytes` be released (once
/// per outage). A big upload that is slow but succeeding is none.
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(60);

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

impl Capture {
    /// Prepare replication of `cfg.path`: open it, check it is a WAL-mode
    /// SQLite database, and find where storage left off.
    pub fn open(
        cfg: DbConfig,
        storage: Arc<dyn Storage>,
        segments: Sender<Segment>,
        budget: Arc<Budget>,
    ) -> Result<Capture> {
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
        let mut r = Capture {
            wal: WalMap::open(wal_path(&real))?,
            shm: Shm::for_db(&real),
            real,
            via_symlink,
            tail: TailProbe::new(),
            last_event: Instant::now(),
            events: 0,
            fs_poll,
            last_progress: Instant::now(),
            upload_failures: Arc::default(),
            rewatch: None,
            snooze: Snooze::default(),
            cfg,
            storage,
            segments,
            budget,
            acks_tx,
            acks,
            stats: Arc::new(DbStats::new()),
            stream: None,
            conn: None,
            db_file: None,
            pin: Pin::Released,
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
            snapshot_not_before: None,
            resumed: None,
            snapshot_reason: None,
            deferred_until: None,
            drain: None,
            fenced: None,
            parking: None,
            parked: None,
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

    /// Park this database when idle (see `park.rs`), counting it in
    /// `slots`; `slot` is the one taken to open it.
    pub fn set_parking(&mut self, slots: Arc<OpenSlots>, slot: Slot) {
        self.parking = Some(park::Parking {
            slots,
            slot: Some(slot),
            lost: 0,
            pin: None,
            slot_wait: None,
            wakeup: None,
        });
    }

    /// How to wake this database when it sleeps without a thread: then a
    /// woken database that finds no open slot free waits without one too
    /// (see `slots.rs`). Set after [`Capture::set_parking`].
    pub fn set_wakeup(&mut self, wakeup: Wakeup) {
        if let Some(p) = self.parking.as_mut() {
            p.wakeup = Some(wakeup);
        }
    }

    /// Share `snooze` with whoever routes this database's file events.
    pub fn share_snooze(&mut self, snooze: Snooze) {
        self.snooze = snooze;
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
        self.withdraw_stream();
        self.pin = Pin::Released;
        self.conn = None;
        // A descriptor of the same file is kept (an idle database's, which
        // holds SQLite's SHARED lock: see `park.rs`).
        let kept = self.db_file.take();
        self.shm.reset();
        let real = resolve(&path)?;
        let kept = kept.filter(|f| {
            f.metadata()
                .is_ok_and(|m| Some((m.dev(), m.ino())) == file_id(&real))
        });
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
        // walsync's descriptor first, SQLite's connection second, then the
        // check below that both are of the file at the path.
        let db_file = match kept {
            Some(f) => f,
            None => Arc::new(File::open(&self.real).map_err(|e| Error::io(&path, e))?),
        };
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
        // Memory only: SQLite's wal-index map keeps just the pages it reads
        // resident (32 KiB per database otherwise; see the function).
        if !crate::sqlite::shm::trim_sqlite_map(&c) {
            log::debug!("{}: wal-index map not trimmed", self.cfg.name);
        }
        // The connection and walsync's descriptor must be of one file: a
        // file renamed over the path between the two opens would have
        // snapshots read one file's pages with the other's WAL. The path
        // names the descriptor's file after both opens: it did in between
        // too, or it changed and this fails (the pass is retried).
        let id = db_file.metadata().ok().map(|m| (m.dev(), m.ino()));
        if id.is_none() || id != file_id(&self.real) {
            return Err(Error::Config(format!(
                "{}: the database file was replaced while walsync opened it",
                path.display()
            )));
        }
        self.db_id = id;
        self.db_file = Some(db_file);
        self.conn = Some(c);
        Ok(())
    }

    fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::Config(format!("{}: no connection", self.cfg.path.display())))
    }

    /// Run one statement without rows. Cached: the read transaction is
    /// moved (`COMMIT`, `BEGIN`) after most commits, so parsing it every
    /// time would cost more than running it.
    fn sql(&self, sql: &str) -> Result<()> {
        self.conn()?
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .map_err(|e| Error::sqlite(&self.cfg.path, e))
    }

    fn begin_read(&mut self) -> Result<()> {
        if self.pin.in_read() {
            return Ok(());
        }
        let since = self.shm.read()?;
        self.sql("BEGIN")?;
        let c = self.conn()?;
        let r: rusqlite::Result<i64> = c
            .prepare_cached("SELECT count(*) FROM sqlite_master")
            .and_then(|mut s| s.query_row([], |r| r.get(0)));
        if let Err(e) = r {
            let _ = c.execute_batch("ROLLBACK");
            return Err(Error::sqlite(&self.cfg.path, e));
        }
        self.pin = Pin::Reading { since };
        Ok(())
    }

    /// End the read transaction (withdrawing a streamed snapshot first:
    /// its pages are safe only while the read transaction is held).
    fn end_read(&mut self) -> Result<()> {
        self.withdraw_stream();
        if self.pin.in_read() {
            self.pin = Pin::Released;
            self.sql("COMMIT")?;
        }
        Ok(())
    }

    /// Withdraw the streamed snapshot in flight, if any: returns whether one
    /// was still readable. Its upload is then abandoned (see `source.rs`).
    fn withdraw_stream(&mut self) -> bool {
        self.stream.take().is_some_and(|s| s.withdraw())
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
        self.pin = self
            .pin
            .with_pinned(shm.is_some_and(|h| h.mx_frame > h.backfill));
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

// A parked database sleeps without a thread, and wakes on a new one
// (`crate::daemon::lot`): its `Capture` moves between threads.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Capture>();
};
