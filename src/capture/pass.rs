//! One pass of the watcher: read, ship, check the counter, look again.
//!
//! Why a file of its own: this is what runs on every wake-up — what is due
//! now, what was missed (a replaced file, a commit published without an
//! event, see [`crate::sqlite::tail`]) and when to look again.

use super::*;

/// Segments of one database in flight at once. One: a crash can then never
/// leave a stored txid after a missing one (a hole no restore could cross),
/// and group commit keeps throughput up: while one segment uploads, every
/// transaction committed meanwhile is folded into the next.
const MAX_INFLIGHT: usize = 1;

/// Re-checks after a wake-up that showed no change (5, 20, 80, 320 ms).
const SETTLE_CHECKS: u32 = 4;

impl Capture {
    /// Handle a wake-up: read and ship what is new, check the commit
    /// counter, checkpoint when due.
    pub(super) fn step(&mut self) -> Result<()> {
        if let Some(d) = &mut self.drain {
            d.starved = false;
        }
        if self.read.is_none() || !self.pin.in_read() || self.snapshot_reason.is_some() {
            // Not established, or continuity lost: only a snapshot may come
            // next (a segment now would claim to follow a state it does not).
            return Ok(());
        }
        if self.inflight.len() + self.pending.len() >= MAX_INFLIGHT {
            log::trace!("{}: step: waiting for an upload", self.cfg.name);
            return self.release_if_wal_too_big(); // the WAL is the buffer
        }
        if self.budget.exhausted() {
            // Other databases hold the budget: look again shortly. During an
            // outage the budget stays full, so the WAL is the buffer here too.
            self.deferred_until = Some(Instant::now() + Duration::from_millis(50));
            if let Some(d) = &mut self.drain {
                d.starved = true;
            }
            return self.release_if_wal_too_big();
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
            self.pin.pinned(),
            self.read.map(|r| match r {
                Read::At(p) => p.frame_index(),
                Read::Empty => 0,
            })
        );
        if !self.pin.pinned() {
            if shm.mx_frame <= shm.backfill {
                // Fully backfilled and not pinned: nothing unread can exist
                // (the read transaction began with everything read) — which
                // the commit counter confirms.
                self.check_counter(&shm)?;
                if self.snapshot_reason.is_none() {
                    self.drain_covered();
                    self.repin_if_changed(&shm)?;
                }
                return Ok(());
            }
            self.pin = self.pin.with_pinned(true);
        }
        // The put interval groups commits while running: published frames
        // wait for it, pinned by the read transaction. With nothing unread
        // there is no upload to postpone, and the counter check, the repin
        // and the checkpoint below must not wait: an application's own
        // checkpoint may be waiting for walsync's read mark while it holds
        // the writer lock. A shutdown drain ships at once.
        if self.drain.is_none() && !self.read_all_published(&shm) {
            if let Some(last) = self.last_put {
                let due = last + self.cfg.min_put_interval;
                if Instant::now() < due {
                    self.deferred_until = Some(due);
                    // The pass at `due` reads everything published by then.
                    self.snooze.snooze(due);
                    return Ok(());
                }
            }
        }
        let caught_up = matches!(self.read, Some(Read::At(_))) && self.read_all_published(&shm);
        let shm = if caught_up {
            // Nothing new is published (same generation, same end): no WAL
            // to map or scan — a wake-up for an acknowledgement, a settle
            // check or a checkpointer's progress. The counter must agree
            // all the same.
            self.check_counter(&shm)?;
            // As ship_available would: the counter read with this position.
            self.counted = self.counted.or(Some(shm.change));
            if self.snapshot_reason.is_some() {
                return Ok(());
            }
            self.drain_covered();
            shm
        } else {
            match self.ship_available(false)? {
                Ship::Lost(reason) => return self.doubt(&reason),
                Ship::NotReady => {
                    // The WAL can be ahead of the wal-index for a moment.
                    self.settle_later();
                    return Ok(());
                }
                // A drain has read everything published when it began.
                Ship::Nothing | Ship::Shipped => self.drain_covered(),
            }
            // Move the read transaction forward only when nothing committed
            // since the read: frames not read yet must stay pinned (a read
            // transaction that starts on a fully backfilled WAL would not
            // keep them from being overwritten).
            let Some(shm) = self.read_shm()? else {
                return Ok(());
            };
            shm
        };
        if self.read_all_published(&shm) {
            self.repin_if_changed(&shm)?;
        } else {
            self.settle_later();
        }
        self.maybe_checkpoint()
    }

    /// During a drain: everything published has been read.
    pub(super) fn drain_covered(&mut self) {
        if let Some(d) = &mut self.drain {
            d.covered = true;
        }
    }

    /// Everything the wal-index `shm` publishes has been read.
    pub(super) fn read_all_published(&self, shm: &ShmHeader) -> bool {
        match self.read {
            Some(Read::At(p)) => {
                (shm.salt1, shm.salt2) == (p.salt1, p.salt2)
                    && u64::from(shm.mx_frame) == p.frame_index()
            }
            Some(Read::Empty) => shm.mx_frame == 0,
            None => false,
        }
    }

    /// A file event arrived.
    pub(super) fn woken(&mut self) {
        if let Some(p) = &mut self.parked {
            p.woken = true;
        }
        self.settle = 0;
        self.tail.reset();
        self.last_event = Instant::now();
        self.events = self.events.wrapping_add(1);
    }

    /// After a pass: is anything committed still unread? Something
    /// published and not read yet (a pass that was deferred or not ready) is
    /// looked at again shortly, whatever else is scheduled; a commit written
    /// but not yet published (see [`crate::sqlite::tail`]) is polled for until it is.
    /// Both count as replication lag from the moment they were first seen.
    fn watch_tail(&mut self) -> Result<()> {
        if self.read.is_none() || !self.pin.in_read() || self.snapshot_reason.is_some() {
            return Ok(());
        }
        let Some(shm) = self.read_shm()? else {
            return Ok(());
        };
        let read_all =
            (!self.pin.pinned() && shm.mx_frame <= shm.backfill) || self.read_all_published(&shm);
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
        let changed = self.pin.since().is_none_or(|r| {
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
    pub(super) fn check_counter(&mut self, shm: &ShmHeader) -> Result<()> {
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

    pub(super) fn doubt(&mut self, reason: &str) -> Result<()> {
        log::warn!(
            "{}: {reason}; the next txid will be a snapshot",
            self.cfg.name
        );
        self.snapshot_reason = Some(reason.to_string());
        Ok(())
    }

    /// Stop for good once fenced out (see [`crate::lease`]).
    pub(super) fn check_fenced(&self) -> Result<()> {
        match &self.fenced {
            Some(why) => Err(Error::Fenced(why.clone())),
            None => Ok(()),
        }
    }

    /// Re-open after the database file was replaced, deleted or recreated.
    pub(super) fn check_file(&mut self) -> Result<bool> {
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
    pub(super) fn tick(&mut self) -> Result<Option<Instant>> {
        if self.snooze.wake() {
            // WAL events came since the last pass: those skipped while
            // snoozing are file events all the same (the others were
            // counted when their wake-up arrived; once more is harmless).
            self.woken();
        }
        self.check_fenced()?;
        self.flush_pending()?;
        self.unpark()?;
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
        if !self.pin.in_read() && self.snapshot_reason.is_none() && self.read.is_some() {
            // A checkpoint or start-up step failed after the read
            // transaction ended: take it again under the fence.
            let fence = self.fence()?;
            self.establish(fence, self.counted.is_none())?;
        }
        if let Some(reason) = self.snapshot_reason.clone() {
            // One segment in flight at a time: the snapshot waits for it.
            let wait = self.snapshot_not_before.filter(|t| *t > Instant::now());
            if let Some(t) = wait {
                self.deferred_until = Some(t);
            } else if self.inflight.is_empty() && self.pending.is_empty() {
                self.snapshot_not_before = None;
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
}
