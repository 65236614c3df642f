//! Where storage left off: the newest object and the WAL position it records.
//!
//! Why a file of its own: a restarted daemon must continue the replica
//! exactly (same WAL generation, same offset) or start over with a snapshot;
//! finding the newest object costs O(log txid) small LIST requests.

use super::*;

impl Capture {
    pub(super) fn resume_from(&mut self, resumed: Option<Resumed>) -> Result<()> {
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
        if let Some(t) = res.snapshot_time {
            let ms = u64::try_from(crate::util::system_time_ms(t)).unwrap_or(0);
            self.stats.stored_snapshot_ms.store(ms, Ordering::Relaxed);
        }
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

/// Find the newest txid in storage and the WAL position recorded with it,
/// in O(log txid) small LIST requests per level (no full listing).
pub fn find_resume_point(storage: &dyn Storage, db: &str) -> Result<Option<Resumed>> {
    let mut best: Option<(u64, String)> = None;
    let mut level_ends = [0u64; 10];
    let mut snapshot_time = None;
    for (level, last) in (0u8..).zip(last_in_each_level(storage, db)?) {
        if let Some(last) = last {
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
    let h = read_header(storage, &key, &key)?;
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
