//! walsync's own checkpoints, and the escape valve for a WAL held too long.
//!
//! Why a file of its own: a checkpoint is the one step that destroys WAL
//! frames, so walsync runs its own only after shipping, under the fence, and
//! holds its read transaction across a TRUNCATE (see [`super`], facts 1–3).

use super::*;

impl Capture {
    /// During a long storage outage the read transaction keeps the WAL from
    /// being reused, so it grows with every commit. Past `max_wal_bytes`,
    /// stop holding it: the application's checkpoints work again, nothing is
    /// lost (the database file has everything), and the next txid is a
    /// snapshot once the queued segments are stored. Point-in-time history
    /// between the last stored txid and that snapshot is what is given up.
    pub(super) fn release_if_wal_too_big(&mut self) -> Result<()> {
        // Any read transaction holds the WAL: a pinned one keeps its frames
        // from being reused, and one that began on a fully backfilled WAL
        // (not pinned yet: the pass that would say so waits for the upload)
        // blocks every backfill, so the WAL grows all the same.
        if self.cfg.max_wal_bytes == 0 || !self.pin.in_read() {
            return Ok(());
        }
        // Only a real outage: uploads in flight are normal, and releasing on
        // every pass would turn every transaction into a full snapshot. Once
        // released, the snapshot waits for the uploads in flight to come
        // back; a streamed snapshot in flight is withdrawn instead, and the
        // next one waits `stuck_after`, so in an outage this fires at most
        // once per `stuck_after` and the application's checkpoints have the
        // WAL in between.
        // Failing: this database's upload, or — for a segment still queued
        // behind others, or one waiting for the byte budget — every upload.
        let stalled = self.last_progress.elapsed();
        let failing = self.upload_failures.load(Ordering::Relaxed) > 0
            || self.budget.failing_for() >= self.cfg.stuck_after;
        if stalled < self.cfg.stuck_after || !failing {
            // Look again when it could be due, not only at the next file
            // event: the commits that grew the WAL may all have come before
            // the outage counted as one (the put interval postpones the
            // first upload that fails), and then no event would come.
            let at = if stalled < self.cfg.stuck_after {
                self.last_progress + self.cfg.stuck_after
            } else {
                Instant::now() + self.cfg.stuck_after
            };
            self.deferred_until = Some(self.deferred_until.map_or(at, |d| d.min(at)));
            return Ok(());
        }
        // What the pinned read transaction holds back is the current
        // generation (it cannot restart while pinned), not the file, whose
        // length never shrinks without a TRUNCATE.
        // The page size from the wal-index: the read position may be
        // `Read::Empty` (nothing was in the WAL when it began).
        let Some(shm) = self.read_shm()? else {
            return Ok(());
        };
        let frame = wal::FRAME_HEADER_SIZE as u64 + u64::from(shm.page_size);
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
        if self.withdraw_stream() {
            self.snapshot_not_before = Some(Instant::now() + self.cfg.stuck_after);
        }
        self.end_read()?;
        self.snapshot_reason = Some(reason);
        self.stats.wal_releases.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Checkpoint once the WAL is past the thresholds. Normally only when
    /// every segment is acknowledged (the WAL still holds what is in flight);
    /// under a steady write load, where something is always in flight, once
    /// the WAL is twice the PASSIVE threshold: the in-flight segment holds
    /// its own copy of the frames, and a crash before its upload only costs
    /// a snapshot on restart, never data.
    pub(super) fn maybe_checkpoint(&mut self) -> Result<()> {
        // At shutdown a checkpoint protects nothing (the application
        // checkpoints once walsync's read transaction ends) and could
        // outlast the drain's deadline.
        if self.drain.is_some() || !self.pin.pinned() || self.snapshot_reason.is_some() {
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
                    std::thread::sleep(crate::util::backoff(attempt, Duration::from_secs(2)));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
