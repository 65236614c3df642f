//! Idle databases close their files ("parking"), and reopen on the next
//! file event without losing continuity.
//!
//! Why: a replicated database holds eight descriptors (SQLite's database,
//! WAL and `-shm`, the one SQLite keeps after the fence's connection,
//! walsync's own three, the lock file) and the memory of an SQLite
//! connection. With thousands of mostly idle databases (one per tenant),
//! that is what limits a process: 10,000 databases need 80,000 descriptors,
//! four times the usual hard limit. A parked database keeps its lock file
//! open and, while the limit has room, its database descriptor (see below);
//! besides those only its watch and its position in memory: in the daemon
//! it sleeps without a thread ([`Capture::run_parking`],
//! `crate::daemon::lot`). Its directory watch wakes it on the next write.
//!
//! # Why parking cannot lose a commit
//!
//! While parked, walsync holds no read transaction: the application's
//! checkpoints may copy, restart and truncate the WAL freely (module doc of
//! [`super`], facts 1–2 no longer hold). It parks only when everything
//! published was read and the commit counter agreed (and, pinned, after
//! taking the SHARED lock below), and on reopening it
//! takes the fence (nobody can commit or checkpoint) and accepts exactly two
//! cases as continuous:
//!
//! 1. The WAL is of the generation last read and still reaches the position
//!    read (the start-up rule, [`super::resume`]): within one generation
//!    frames are only appended, so every commit since is past the position.
//! 2. The database file is unchanged since parking (same inode, size, mtime
//!    and ctime): no checkpoint copied anything into it, and a restart or
//!    truncation can only discard frames that were copied. So at most one
//!    restart happened, discarding only frames copied before parking — all
//!    read already — and every commit since is in the current WAL from its
//!    first frame. (A parked database's file must be at least
//!    [`QUIET_FOR`] old, so that a later write cannot carry the same
//!    timestamp.)
//!
//! The commit counter is not used across parking: the wal-index may have
//! been rebuilt meanwhile (an application's first connection after all
//! closed rebuilds it and counts from zero). Anything else means a
//! checkpoint may have moved frames walsync had not read into the database:
//! the next txid is a snapshot, as after a restart of walsync.
//!
//! The usual cause, an application closing its last connection (SQLite
//! then checkpoints and deletes the WAL, which walsync's open connection
//! prevents), is kept out while the open-file limit has room: a parked
//! database keeps walsync's own descriptor of the database and holds
//! SQLite's SHARED lock through it ([`crate::sqlite::hold`]), exactly as
//! its connection did ("pinned": two descriptors instead of one). Past that
//! room, or when the lock cannot be taken, it parks with the lock file
//! only, and a database that then needed a snapshot parks only after
//! longer and longer idle spells (four times longer after each, up to
//! [`MAX_IDLE`]), unless open slots run short.
//!
//! Open slots (how many databases may be open at once under the open-file
//! limit) are counted in `slots.rs`.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use super::slots::{Pin, SlotWait};
use super::*;

/// A database whose file was written more recently than this is not
/// parked yet (see the module doc, case 2: file timestamps are coarse).
pub(super) const QUIET_FOR: Duration = Duration::from_secs(2);

/// The longest idle spell before parking a database whose reopening needed
/// a snapshot before.
const MAX_IDLE: Duration = Duration::from_secs(3600);

/// What a database remembers while its files are closed.
#[derive(Debug, Clone, Copy)]
pub(super) struct Parked {
    /// How far the WAL was read (everything published, at parking).
    read: Read,
    /// The database file then.
    db: FileStamp,
    /// The WAL file then (`None`: missing).
    wal: Option<FileStamp>,
    /// The wall clock and the monotonic clock then: a wall clock that went
    /// back since makes file times unreliable (case 2 is not used).
    at: (std::time::SystemTime, Instant),
    /// The database file was quiet for [`QUIET_FOR`] when stamped (else
    /// case 2 is not used).
    db_trusted: bool,
    /// Both files were (else the shutdown drain reopens the database
    /// whatever their stamps say).
    trusted: bool,
    /// A file event arrived since parking (the WAL may hold new commits).
    pub(super) woken: bool,
}

/// What changes when anything writes a file: identity, size, mtime, ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// How long ago the file was last written or changed. A time in the
    /// future (the clock went back since) counts as long ago: a later write
    /// gets an earlier time, never the same one.
    fn quiet(&self) -> Duration {
        let latest = self.mtime.max(self.ctime);
        let secs = u64::try_from(latest.0).unwrap_or(0);
        let nanos = u32::try_from(latest.1).unwrap_or(0);
        let at = std::time::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999));
        at.elapsed().unwrap_or(Duration::MAX)
    }
}

/// The wall clock went back since `at` (beyond a second of drift): file
/// times written since may equal older ones.
fn clock_went_back(at: (std::time::SystemTime, Instant)) -> bool {
    let wall = std::time::SystemTime::now()
        .duration_since(at.0)
        .unwrap_or(Duration::ZERO);
    wall + Duration::from_secs(1) < at.1.elapsed()
}

/// How a database parks: the shared slots and the slot it holds.
pub struct Parking {
    pub(super) slots: Arc<OpenSlots>,
    pub(super) slot: Option<Slot>,
    /// Reopenings that needed a snapshot (see the module doc).
    pub(super) lost: u32,
    /// Held while parked with the database descriptor kept.
    pub(super) pin: Option<Pin>,
    /// Woken, and waiting for a slot without a thread (see `slots.rs`).
    pub(super) slot_wait: Option<SlotWait>,
    /// How to wake this database when it sleeps without a thread (set by
    /// the daemon; `None`: it waits in its thread).
    pub(super) wakeup: Option<Wakeup>,
}

impl Capture {
    /// Close this database's files when it has been idle long enough (or
    /// at once while other databases wait for a slot). `deadline` is the
    /// next timer of the pass; returns when to look again if parking is
    /// only a matter of time, or `None`.
    pub(super) fn park_if_idle(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        let parking = self.parking.as_ref()?;
        let slots = parking.slots.clone();
        let after = self.cfg.close_idle_after?;
        let after = after
            .saturating_mul(4u32.saturating_pow(parking.lost))
            .min(MAX_IDLE.max(after));
        if self.parked.is_some()
            || self.conn.is_none()
            || !self.pin.in_read()
            || self.read.is_none()
            || self.snapshot_reason.is_some()
            || !self.inflight.is_empty()
            || !self.pending.is_empty()
            || self.stream.is_some()
            || self.snapshot_inflight.is_some()
            || self.drain.is_some()
            || self.fenced.is_some()
            || self.fs_poll.is_some()
            || self.via_symlink
        {
            return None;
        }
        let pressed = slots.pressed();
        let wait = if pressed { Duration::ZERO } else { after };
        let now = Instant::now();
        // Something is due soon (a settle check, a tail poll, a retry).
        if deadline.is_some_and(|d| d < now + Duration::from_secs(1)) {
            return None;
        }
        let at = self.last_event + wait;
        if at > now {
            return Some(at);
        }
        match self.park(pressed) {
            Ok(None) => None,
            Ok(Some(later)) => Some(later),
            Err(e) => {
                // The next pass repairs what failed (a read transaction
                // ended by a failed step is taken again).
                log::debug!("{}: not parked: {e}", self.cfg.name);
                Some(Instant::now() + Duration::from_secs(1))
            }
        }
    }

    /// Park now if everything published was read and the database file is
    /// quiet; else `Ok(Some(when))` to try again. While others wait for a
    /// slot (`pressed`) it parks at once: a file written less than
    /// [`QUIET_FOR`] ago is parked with its stamp untrusted (case 2 of the
    /// module doc is then not used).
    fn park(&mut self, pressed: bool) -> Result<Option<Instant>> {
        let Some(shm) = self.read_shm()? else {
            return Ok(None);
        };
        let read_all =
            (!self.pin.pinned() && shm.mx_frame <= shm.backfill) || self.read_all_published(&shm);
        // A commit written past the published end (its writer stalled
        // before publishing it) would get no file event when published.
        if !read_all || self.counted != Some(shm.change) || self.stats.unread() {
            return Ok(None); // the next pass reads it
        }
        let Some(db) = FileStamp::of(&self.real) else {
            return Ok(None);
        };
        if Some((db.dev, db.ino)) != self.db_id {
            return Ok(None); // replaced: the next pass sees it
        }
        let wal = FileStamp::of(self.wal.path());
        let quiet = db.quiet().min(wal.map_or(QUIET_FOR, |w| w.quiet()));
        if quiet < QUIET_FOR && !pressed {
            return Ok(Some(Instant::now() + (QUIET_FOR - quiet)));
        }
        let Some(read) = self.read else {
            return Ok(None);
        };
        // The SHARED lock is taken while SQLite's connection still holds
        // its own, so there is no moment without one.
        let pin = match (&self.db_file, self.parking.as_ref()) {
            (Some(f), Some(p)) => p.slots.try_pin().filter(|_| {
                crate::sqlite::hold::hold_shared(f)
                    .map_err(|e| log::debug!("{}: SHARED lock not held: {e}", self.cfg.name))
                    .is_ok()
            }),
            _ => None,
        };
        self.end_read()?;
        // SQLite's connection first, walsync's own descriptor of the
        // database after it (see `connect`), unless it is kept.
        self.conn = None;
        if pin.is_none() {
            self.db_file = None;
        }
        self.wal.close();
        self.shm.reset();
        self.tail.reset();
        self.parked = Some(Parked {
            read,
            db,
            wal,
            at: (std::time::SystemTime::now(), Instant::now()),
            db_trusted: db.quiet() >= QUIET_FOR,
            trusted: quiet >= QUIET_FOR,
            woken: false,
        });
        if let Some(p) = &mut self.parking {
            p.slot = None;
            p.pin = pin;
        }
        self.stats.parked.store(true, Ordering::Relaxed);
        self.stats.parks.fetch_add(1, Ordering::Relaxed);
        // Memory only: the stack pages the open database's passes touched
        // (tens of KiB per thread; see the function).
        crate::util::release_unused_stack();
        log::debug!("{}: idle: files closed", self.cfg.name);
        Ok(None)
    }

    /// At shutdown, parked: nothing to do (`Ok(false)`) when no file event
    /// came and neither the WAL nor the database file changed since
    /// parking (an event may still be on its way for a commit made just
    /// before the shutdown; the files say so). Otherwise take a slot before
    /// `deadline` and reopen (`Ok(true)`).
    pub(super) fn reopen_for_drain(&mut self, deadline: Instant) -> Result<bool> {
        let Some(p) = self.parked else {
            return Ok(true);
        };
        let unchanged =
            FileStamp::of(&self.real) == Some(p.db) && FileStamp::of(self.wal.path()) == p.wal;
        if !p.woken && unchanged && p.trusted && !clock_went_back(p.at) {
            return Ok(false);
        }
        if let Some(parking) = self.parking.as_mut() {
            if parking.slot.is_none() {
                let slots = parking.slots.clone();
                let slot = slots.take(&crossbeam_channel::at(deadline));
                match slot {
                    Some(s) => parking.slot = Some(s),
                    None => {
                        return Err(Error::Config(format!(
                            "{}: the shutdown timeout passed while waiting to reopen this idle database (every open slot was taken); what it committed stays in the WAL and ships on the next start",
                            self.cfg.name
                        )))
                    }
                }
            }
        }
        self.unpark()?;
        // Replaced while parked: reconnect now, its snapshot is due.
        self.check_file()?;
        Ok(true)
    }

    /// Reopen a parked database (its slot already taken) and decide, under
    /// the fence, whether what happened meanwhile can be continued (see the
    /// module doc) or needs a snapshot.
    pub(super) fn unpark(&mut self) -> Result<()> {
        let Some(p) = self.parked else {
            return Ok(());
        };
        // From here the kept descriptor (if any) counts in the open slot,
        // or is closed.
        let _pin = self.parking.as_mut().and_then(|p| p.pin.take());
        // Replaced or moved meanwhile: `check_file` reconnects to the new
        // file and snapshots it.
        let moved = self.via_symlink && resolve(&self.cfg.path).is_ok_and(|r| r != self.real);
        if file_id(&self.cfg.path) != self.db_id || moved {
            self.parked = None;
            self.stats.parked.store(false, Ordering::Relaxed);
            self.read = None;
            self.counted = None;
            return Ok(());
        }
        // `connect` keeps a pinned descriptor (same file): the SHARED lock
        // stays held; it now counts in the open slot.
        self.connect()?;
        let fence = self.fence()?;
        self.wal.refresh()?;
        let continued = match p.read {
            Read::At(pos) => matches!(
                wal::resume(self.wal.bytes(), Some(&pos)),
                Ok(Resume::Continue(_))
            ),
            Read::Empty => false,
        };
        self.parked = None;
        self.stats.parked.store(false, Ordering::Relaxed);
        log::debug!("{}: woken: files reopened", self.cfg.name);
        if continued {
            self.read = Some(p.read);
        } else if p.db_trusted && FileStamp::of(&self.real) == Some(p.db) && !clock_went_back(p.at)
        {
            // At most one restart, discarding only frames read before
            // parking: the current WAL holds every commit since.
            self.read = Some(Read::Empty);
        } else {
            self.read = None;
            self.counted = None;
            drop(fence);
            if let Some(parking) = self.parking.as_mut() {
                parking.lost = parking.lost.saturating_add(1);
            }
            return self.doubt(
                "the application checkpointed the WAL while walsync had this idle database's files closed",
            );
        }
        self.counted = None;
        self.establish(fence, true)
    }
}
