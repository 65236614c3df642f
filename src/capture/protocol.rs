//! Reading what the wal-index publishes and shipping it: the counter check.
//!
//! Why a file of its own: this is where a transaction read from the WAL
//! becomes a segment, and the one place that decides whether what was read
//! may be shipped at all — only when the number of transactions read is the
//! number SQLite's commit counter says was committed (see the module doc of
//! [`super`]).

use super::*;

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

impl Capture {
    /// Under `fence`: read the WAL to its end, ship it, (re)start the read
    /// transaction and set the commit counter. `trust_salts` is the start-up
    /// case where no counter exists yet and the stored position was checked.
    pub(super) fn establish(&mut self, fence: Fence, trust_salts: bool) -> Result<()> {
        self.establish_under(&fence, trust_salts)?;
        drop(fence);
        Ok(())
    }

    /// [`Capture::establish`], keeping the fence held.
    pub(super) fn establish_under(&mut self, _fence: &Fence, trust_salts: bool) -> Result<()> {
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
    pub(super) fn ship_available(&mut self, fenced: bool) -> Result<Ship> {
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
        self.wal.forget_read_pages();
        self.send(enc, 0)?;
        self.read = Some(Read::At(last.end));
        Ok(())
    }

    /// Queue `enc` for upload: at once when nothing of this database is in
    /// flight, else after what is (objects are stored in txid order, so a
    /// crash never leaves a stored txid after a missing one).
    pub(super) fn send(&mut self, enc: Encoded, level: u8) -> Result<()> {
        self.next_txid = enc.header.max_txid + 1;
        self.stats.note_cut(enc.header.max_txid);
        self.pending.push_back((enc, level));
        self.flush_pending()
    }

    pub(super) fn flush_pending(&mut self) -> Result<()> {
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
        // Files and streamed snapshots are written as they upload; only
        // their buffers count (S3 parts grow past 16 MiB with the size).
        let charge = self.budget.force(match enc.body {
            crate::upload::segment::Body::Memory(_) => len,
            _ => len.min((len / 9_000).max(16 << 20)),
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
                lineage: self.stats.lineage,
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

    pub(super) fn on_ack(&mut self, ack: Ack) {
        match ack.refused.map(|r| *r) {
            None => {}
            Some(Refusal::Fenced(why)) => {
                // Not stored: it stays in flight, nothing more is sent.
                self.fenced = Some(why);
                return;
            }
            Some(Refusal::Withdrawn(why)) => {
                // Not stored, and never will be: a new snapshot comes next,
                // under a new txid (see `source.rs`); nothing cut after the
                // withdrawn one may be shipped on top of it.
                self.inflight.remove(&ack.txid);
                if self.snapshot_inflight == Some(ack.txid) {
                    self.snapshot_inflight = None;
                }
                self.pending.clear();
                self.stream = None;
                if self.snapshot_reason.is_none() {
                    self.snapshot_reason = Some(why);
                }
                // Not at once: a snapshot abandoned for a local read error
                // would otherwise be retried in a tight loop.
                let soon = Instant::now() + Duration::from_secs(1);
                self.snapshot_not_before =
                    Some(self.snapshot_not_before.map_or(soon, |t| t.max(soon)));
                return;
            }
        }
        self.inflight.remove(&ack.txid);
        self.last_progress = Instant::now();
        self.upload_failures = Arc::default();
        if self.snapshot_inflight == Some(ack.txid) {
            self.snapshot_inflight = None;
            // Stored: its pages need not be held any more.
            self.stream = None;
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
}
