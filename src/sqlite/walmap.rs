//! A memory map of one WAL file that follows the file as it grows.
//!
//! Why a file of its own: the map is the one place walsync reads WAL bytes
//! through `unsafe` (memmap2), and what makes that sound — which bytes may be
//! read, and when the WAL cannot be truncated under the reader — is written
//! here, next to the only code that maps and unmaps.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A read-only memory map of a WAL file.
///
/// The map covers the file as it was when [`WalMap::open`] or
/// [`WalMap::refresh`] ran; frames appended later are seen after the next
/// refresh.
pub struct WalMap {
    path: PathBuf,
    file: Option<File>,
    map: Option<memmap2::Mmap>,
    /// The file's length at the last [`WalMap::refresh`]: the only part of
    /// the map [`WalMap::bytes`] exposes (the map itself may reach past it).
    len: usize,
}

/// A WAL grows by a frame or a few per commit. Mapping it to the next
/// multiple of this, past its end, lets it grow that much before the next
/// `munmap`/`mmap` pair (and its TLB shootdown): address space, not memory.
const MAP_HEADROOM: u64 = 4 << 20;

impl WalMap {
    /// Map the WAL at `path`. A missing file maps as empty.
    pub fn open(path: impl Into<PathBuf>) -> Result<WalMap> {
        let mut m = WalMap {
            path: path.into(),
            file: None,
            map: None,
            len: 0,
        };
        m.refresh()?;
        Ok(m)
    }

    /// Follow the file to its current length (reopening it if it was
    /// replaced, created or deleted meanwhile).
    pub fn refresh(&mut self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        // Keep the open file while the path still names it: a shared map
        // follows the file's pages, so a file that grew within the mapped
        // range needs no new map, only its new length.
        if let Some(file) = &self.file {
            if let (Ok(now), Ok(open)) = (std::fs::metadata(&self.path), file.metadata()) {
                if (now.dev(), now.ino()) == (open.dev(), open.ino()) {
                    return self.map_to(open.len());
                }
            }
        }
        self.reopen()?;
        let Some(file) = &self.file else {
            return Ok(());
        };
        let len = file.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        self.map_to(len)
    }

    /// Expose the open file's first `len` bytes, mapping more of it when
    /// the map is too short.
    fn map_to(&mut self, len: u64) -> Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let len_usize = usize::try_from(len)
            .map_err(|_| Error::wal(&self.path, format!("{len} bytes do not fit in memory")))?;
        if len == 0 {
            self.map = None;
            self.len = 0;
            return Ok(());
        }
        if self.map.as_ref().is_some_and(|m| m.len() >= len_usize) {
            self.len = len_usize;
            return Ok(());
        }
        self.map = None;
        self.len = 0;
        let span = len.div_ceil(MAP_HEADROOM).saturating_mul(MAP_HEADROOM);
        let span = usize::try_from(span).unwrap_or(len_usize);
        // SAFETY: the map is read-only and private to this struct. Touching
        // a mapped page past the end of the file raises SIGBUS, so the
        // invariants are: (1) only `bytes()` reads the map, and it exposes
        // the file's length as of the last `refresh`, never the headroom
        // mapped past it; (2) the WAL is not truncated while those bytes are
        // read. SQLite shrinks a WAL in a TRUNCATE checkpoint, on the first
        // commit after a restart when `journal_size_limit` is set
        // (`walLimitSize`), and when the last connection closes. `capture`
        // reads the map only (a) under its fence — a held write lock, so no
        // checkpoint can restart or truncate and no commit can happen — or
        // (b) after `refresh` while its read transaction is known to pin the
        // WAL (the wal-index showed frames not yet backfilled after the read
        // transaction began), which rules out any restart, hence also
        // `walLimitSize`, and any TRUNCATE; its open connection means the app
        // never closes the last one. The bytes may still change (frames past
        // the published end being rewritten); every frame is checked against
        // the salts and the checksum chain, and only published frames are used.
        let map = unsafe { memmap2::MmapOptions::new().len(span).map(file) }
            .map_err(|e| Error::io(&self.path, e))?;
        self.map = Some(map);
        self.len = len_usize;
        Ok(())
    }

    /// The open WAL file for positioned reads (opened when it was missing;
    /// `None` while it does not exist). Never maps anything.
    pub fn file(&mut self) -> Result<Option<&File>> {
        if self.file.is_none() {
            self.reopen()?;
        }
        Ok(self.file.as_ref())
    }

    /// Drop the map and open the file at the path again (`None` while it
    /// does not exist).
    fn reopen(&mut self) -> Result<()> {
        self.map = None;
        self.len = 0;
        self.file = match File::open(&self.path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&self.path, e)),
        };
        Ok(())
    }

    /// Unmap and close the file (an idle database, see `capture::park`);
    /// the next [`WalMap::refresh`] opens it again.
    pub fn close(&mut self) {
        self.map = None;
        self.len = 0;
        self.file = None;
    }

    /// The mapped bytes (empty when the file is missing or empty).
    pub fn bytes(&self) -> &[u8] {
        match &self.map {
            Some(m) => m.get(..self.len).unwrap_or(&[]),
            None => &[],
        }
    }

    /// Unmap the pages read so far from this process (they stay in the page
    /// cache; the next read maps them again). A map kept across commits
    /// would otherwise keep every WAL page ever read resident here, up to
    /// the whole WAL per database, which the old map-per-growth did not.
    pub fn forget_read_pages(&self) {
        let Some(map) = &self.map else {
            return;
        };
        if map.is_empty() {
            return;
        }
        // SAFETY: the range is exactly this map (page-aligned start, its own
        // length); MADV_DONTNEED on a read-only shared file map only drops
        // page-table entries: later reads fault the file's pages in again,
        // with the same contents, and nothing of this map is borrowed here.
        let _ = unsafe {
            rustix::mm::madvise(
                map.as_ptr() as *mut std::ffi::c_void,
                map.len(),
                rustix::mm::Advice::LinuxDontNeed,
            )
        };
    }

    /// The WAL's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
