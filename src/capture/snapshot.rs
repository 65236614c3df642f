//! Full snapshots: every page at one consistent point, as the next txid.
//!
//! Why a file of its own: a snapshot is how continuity is restored whenever
//! it is in doubt, and `walsync snapshot` takes one on demand; both cut it
//! under the fence. A small one is encoded in memory; a large one is read
//! from the database while it uploads (`source.rs`), never copied.

use super::*;

impl Capture {
    /// `walsync snapshot`: wait for the segments in flight, take a snapshot
    /// as the next txid, and wait until storage acknowledged it (everything
    /// up to `timeout`). Returns the snapshot's txid. The caller must hold
    /// the database's [`crate::sqlite::lock`] so no other process allocates txids.
    pub fn snapshot_now(&mut self, reason: &str, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        self.wait_uploaded(deadline, timeout)?;
        let txid = self.next_txid;
        self.snapshot(reason)?;
        self.wait_uploaded(deadline, timeout)?;
        self.end_read()?;
        if self.stats.snapshot_txid.load(Ordering::Relaxed) != txid {
            return Err(Error::Config(format!(
                "{}: snapshot txid {txid} was not stored{}",
                self.cfg.name,
                self.snapshot_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )));
        }
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
    /// database file. Encoded in memory when small, else streamed from the
    /// database during its upload; memory stays bounded either way.
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
        // The WAL just scanned, for a streamed snapshot's frames: taken
        // under the fence, so it is this file whatever later happens to the
        // path.
        let wal_file = match (commit, self.wal.file()?) {
            (Some(_), Some(f)) => Some(f.try_clone().map_err(|e| Error::io(self.wal.path(), e))?),
            _ => None,
        };
        self.end_read()?;
        self.begin_read()?;
        let shm = self.note_read_began()?;
        self.counted = shm.map(|h| h.change);
        self.read = Some(end.map_or(Read::Empty, Read::At));
        drop(fence);

        // Without a pin the WAL is fully backfilled and the read transaction
        // stops any further backfill: the database file alone is the state.
        if !self.pin.pinned() {
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
        let mut header = Header::new(page_size, commit, 1, txid, crate::util::now_ms());
        if let Some(Read::At(p)) = self.read {
            segment::wal_fields(&mut header, wal::WAL_HEADER_SIZE as u64, &p);
        }
        let raw = u64::from(commit) * u64::from(page_size);
        let enc = if raw <= segment::MEMORY_LIMIT {
            let lock = ltx::lock_pgno(page_size);
            let wal_bytes = self.wal.bytes();
            segment::encode_with(header, raw, &self.cfg.tmp_dir, |w| {
                let mut buf = vec![0u8; page_size as usize];
                for pgno in (1..=commit).filter(|p| *p != lock) {
                    match frames.get(&pgno) {
                        Some(f) => {
                            let data =
                                wal::frame_page(wal_bytes, page_size, f).ok_or_else(|| {
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
            })?
        } else {
            // Pages read while it uploads: held still by the read
            // transaction begun above (see `source.rs`).
            let pages = source::Pages {
                db: file.clone(),
                db_path: path.clone(),
                wal: wal_file.filter(|_| !frames.is_empty()),
                wal_path: self.wal.path().to_path_buf(),
                frames: frames.iter().map(|(p, f)| (*p, f.offset)).collect(),
            };
            let (src, withdraw) = source::snapshot_source(header, &self.cfg.name, pages);
            self.stream = Some(withdraw);
            Encoded {
                header,
                meta: segment::timestamp_metadata(&header)?,
                body: segment::Body::Stream(Box::new(src)),
            }
        };
        self.wal.forget_read_pages();
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
}
