//! Commits written to the WAL but not yet published, and filesystems whose
//! file events cannot be trusted: the wake-ups inotify does not deliver.
//!
//! Why: walsync sleeps until a file event, but two things it must see raise
//! none.
//!
//! - **Publication.** SQLite writes a transaction's frames, syncs the WAL
//!   (`synchronous=FULL`, the default) and only then publishes the commit in
//!   the `-shm` wal-index — a store into a shared memory mapping, which no
//!   inotify event reports. walsync wakes on the WAL write, finds nothing
//!   published yet, and on a slow disk the publication comes seconds later
//!   with nothing left to wake it. So after every pass that read everything
//!   published, the watcher looks past the published end ([`TailProbe`]): if
//!   the frames there form a complete commit of the current generation
//!   (salts, checksum chain and a commit frame all verified), a publication
//!   is coming, and the watcher polls every [`TAIL_POLL`] until it arrives.
//!   Frames of a rolled-back transaction (no commit frame) or of an older
//!   generation (other salts) cause no polling. A commit that stays
//!   unpublished for [`TAIL_PATIENCE`] after the last file event (its writer
//!   died between writing and publishing, and SQLite will overwrite it) is
//!   then looked at only every [`TAIL_SLOW_POLL`], and no longer counted as lag.
//! - **Remote and layered filesystems.** inotify reports only changes made
//!   through the local kernel: on NFS, CIFS/SMB, FUSE, 9p or Ceph a change
//!   made elsewhere raises nothing. A database there is polled every
//!   [`FS_POLL`] as well ([`unreliable_events`]).
//!
//! The WAL is read with `pread`, never through the memory map: the probe runs
//! while walsync may not pin the WAL, and a truncation must not fault.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use crate::sqlite::shm::ShmHeader;
use crate::sqlite::wal::{
    self, Checksum, FrameHeader, WalHeader, FRAME_HEADER_SIZE, WAL_HEADER_SIZE,
};

/// How often a database with a written, unpublished commit is looked at.
pub const TAIL_POLL: Duration = Duration::from_millis(100);

/// How long after the last file event an unpublished commit is polled for
/// at [`TAIL_POLL`] and counted as lag.
pub const TAIL_PATIENCE: Duration = Duration::from_secs(30);

/// How often it is looked at after that.
pub const TAIL_SLOW_POLL: Duration = Duration::from_secs(5);

/// How often a database on a filesystem without reliable events is looked at.
pub const FS_POLL: Duration = Duration::from_secs(1);

/// Frames verified per probe at most: a huge transaction is followed over
/// several probes (the scan resumes where it stopped) instead of stalling
/// the watcher thread.
const FRAMES_PER_PROBE: u32 = 4096;

/// What lies past the published end of the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// No commit: nothing, leftovers, or frames of a transaction still open.
    Nothing,
    /// A complete commit, written and not yet published.
    Committed,
    /// Valid frames so far, not all verified yet (a huge transaction): look
    /// again soon, the scan resumes where it stopped.
    Undecided,
}

/// An incremental scan past the published end of the WAL.
#[derive(Default)]
pub struct TailProbe {
    /// Generation and published end the scan started from.
    key: Option<(u32, u32, u32)>,
    /// Salts the frames past the end must carry.
    salts: (u32, u32),
    /// Next frame to verify and the running checksum before it.
    offset: u64,
    sum: Checksum,
    big_endian: bool,
    page_size: u32,
    buf: Vec<u8>,
}

impl TailProbe {
    /// A probe that has verified nothing yet.
    pub fn new() -> TailProbe {
        TailProbe::default()
    }

    /// Free the frame buffer (memory only: the next probe allocates it
    /// again); for a watcher going idle.
    pub fn release_buffer(&mut self) {
        self.buf = Vec::new();
    }

    /// Forget what was verified: after a file event the frames past the
    /// published end may have been rewritten (a new writer after a rollback).
    pub fn reset(&mut self) {
        self.key = None;
    }

    /// Whether `wal` holds a complete commit of the wal-index's current
    /// generation past its published end `shm.mx_frame`. `known` is the
    /// generation walsync last read (its salts), if any.
    pub fn committed_past(
        &mut self,
        wal: &File,
        shm: &ShmHeader,
        known: Option<(u32, u32)>,
    ) -> std::io::Result<Tail> {
        let key = (shm.salt1, shm.salt2, shm.mx_frame);
        if self.key != Some(key) && !self.start(wal, shm, known)? {
            return Ok(Tail::Nothing);
        }
        self.key = Some(key);
        let frame = FRAME_HEADER_SIZE + self.page_size as usize;
        self.buf.resize(frame, 0);
        for _ in 0..FRAMES_PER_PROBE {
            match wal.read_exact_at(&mut self.buf, self.offset) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(Tail::Nothing),
                Err(e) => return Err(e),
            }
            let (head, page) = self.buf.split_at(FRAME_HEADER_SIZE);
            let mut hb = [0u8; FRAME_HEADER_SIZE];
            hb.copy_from_slice(head);
            let fh = FrameHeader::parse(&hb);
            if (fh.salt1, fh.salt2) != self.salts || fh.pgno == 0 {
                return Ok(Tail::Nothing);
            }
            let sum = wal::checksum(self.big_endian, self.sum, &head[..8]);
            let sum = wal::checksum(self.big_endian, sum, page);
            if sum != fh.checksum {
                // Not written completely yet, or left from a rolled-back
                // transaction: the next write raises an event.
                return Ok(Tail::Nothing);
            }
            if fh.is_commit() {
                // Stay on this frame: the next probe verifies it again.
                return Ok(Tail::Committed);
            }
            self.offset += frame as u64;
            self.sum = sum;
        }
        Ok(Tail::Undecided)
    }

    /// Position the scan just past the published end; false when the WAL
    /// holds nothing of the wal-index's generation there.
    fn start(
        &mut self,
        wal: &File,
        shm: &ShmHeader,
        known: Option<(u32, u32)>,
    ) -> std::io::Result<bool> {
        let mut hb = [0u8; WAL_HEADER_SIZE];
        match wal.read_exact_at(&mut hb, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e),
        }
        let Ok(h) = WalHeader::parse(&hb) else {
            return Ok(false);
        };
        // A connection that never restarted the WAL itself starts a new
        // generation (`mxFrame` 0) with random salts, which reach the
        // wal-index only when the commit is published. A header that is
        // neither the wal-index's nor the generation walsync last read is
        // such a new one; the one walsync read is a leftover.
        let salts = (h.salt1, h.salt2);
        let fresh = shm.mx_frame == 0 && Some(salts) != known;
        if salts != (shm.salt1, shm.salt2) && !fresh {
            return Ok(false);
        }
        let frame = h.frame_size();
        let end = WAL_HEADER_SIZE as u64 + u64::from(shm.mx_frame) * frame;
        // The running checksum at the published end is the one recorded in
        // the last published frame (or the header's, for an empty log).
        let sum = if shm.mx_frame == 0 {
            h.checksum
        } else {
            let mut fb = [0u8; FRAME_HEADER_SIZE];
            match wal.read_exact_at(&mut fb, end - frame) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e),
            }
            let fh = FrameHeader::parse(&fb);
            if (fh.salt1, fh.salt2) != (h.salt1, h.salt2) {
                return Ok(false);
            }
            fh.checksum
        };
        self.salts = salts;
        self.offset = end;
        self.sum = sum;
        self.big_endian = h.big_endian;
        self.page_size = h.page_size;
        Ok(true)
    }
}

/// The filesystem holding `path` when inotify cannot be trusted to report
/// every change there (its name, for the log); `None` for local filesystems.
pub fn unreliable_events(path: &Path) -> Option<&'static str> {
    let st = rustix::fs::statfs(path).ok()?;
    // Magic numbers from linux/magic.h (and fs/fuse, fs/ceph).
    #[allow(clippy::unnecessary_cast)]
    let name = match st.f_type as i64 {
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x517B => "smb",
        0x6573_5546 => "fuse",
        0x0102_1997 => "9p",
        0x00C3_6400 => "ceph",
        0x0BD0_0BD0 => "lustre",
        0x4750_4653 => "gpfs",
        0x5346_414F => "afs",
        _ => return None,
    };
    Some(name)
}
