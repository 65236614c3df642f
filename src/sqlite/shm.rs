//! Reading SQLite's wal-index header (`<db>-shm`) to prove nothing was missed.
//!
//! Why: the WAL file alone cannot tell walsync how many transactions SQLite
//! committed. A generation that was checkpointed and overwritten, or
//! truncated, leaves no trace in the WAL. The wal-index header in the `-shm`
//! file can: it holds the number of the last valid frame (`mxFrame`), the
//! salts of the current generation, the number of frames already copied into
//! the database (`nBackfill`), and `iChange`, a counter SQLite increments by
//! one for **every committed write transaction** (`walFrames` in `wal.c`) and
//! keeps across WAL restarts. Comparing `iChange` with the number of commits
//! walsync has read turns "no committed transaction was lost" from a hope into
//! a check (see `capture`).
//!
//! Layout (`struct WalIndexHdr` / `WalCkptInfo` in SQLite's `wal.c`, native
//! byte order): two 48-byte copies of the header at offsets 0 and 48, then
//! `nBackfill` at 96. The format is shared by every SQLite version since
//! 3.7.0 (processes of different versions must share one `-shm`), so it is
//! stable in practice. A writer updates copy 2 then copy 1; a reader that
//! sees both equal and the header checksum valid has a consistent header —
//! SQLite's own readers use the same rule. The file is read with `pread`,
//! never mapped, so a concurrent truncation cannot fault.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sqlite::wal::{checksum, Checksum};

const HDR_SIZE: usize = 48;
const READ_SIZE: usize = 2 * HDR_SIZE + 4;
/// How often to re-read a header caught mid-update before giving up.
const RETRIES: usize = 100;

/// A consistent copy of the wal-index header plus the backfill count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmHeader {
    /// Committed write transactions counter (wrapping).
    pub change: u32,
    /// Index (1-based) of the last valid commit frame in the WAL; 0 = empty.
    pub mx_frame: u32,
    /// Database size in pages after the last commit.
    pub n_page: u32,
    /// Page size in bytes.
    pub page_size: u32,
    /// Salt-1 of the current WAL generation.
    pub salt1: u32,
    /// Salt-2 of the current WAL generation.
    pub salt2: u32,
    /// Frames already copied back into the database file.
    pub backfill: u32,
}

/// Reader of one database's `-shm` file.
pub struct Shm {
    path: PathBuf,
    file: Option<File>,
}

impl Shm {
    /// The `-shm` file next to `db`. It is opened lazily.
    pub fn for_db(db: &Path) -> Shm {
        let mut p = db.as_os_str().to_owned();
        p.push("-shm");
        Shm {
            path: PathBuf::from(p),
            file: None,
        }
    }

    /// Path of the `-shm` file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read a consistent header. `Ok(None)` when the file is missing, too
    /// short or not initialised yet (no connection has opened the WAL).
    pub fn read(&mut self) -> Result<Option<ShmHeader>> {
        if self.file.is_none() {
            match File::open(&self.path) {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(&self.path, e)),
            }
        }
        let Some(file) = &self.file else {
            return Ok(None);
        };
        let mut buf = [0u8; READ_SIZE];
        for _ in 0..RETRIES {
            let n = read_full(file, &mut buf).map_err(|e| Error::io(&self.path, e))?;
            if n < READ_SIZE {
                return Ok(None);
            }
            if let Some(h) = parse(&buf) {
                return Ok(Some(h));
            }
            if buf[12] == 0 && buf[HDR_SIZE + 12] == 0 {
                return Ok(None); // isInit == 0: not initialised
            }
            std::thread::yield_now();
        }
        Err(Error::io(
            &self.path,
            std::io::Error::other("wal-index header stayed inconsistent"),
        ))
    }

    /// Drop the open file (after the database was replaced).
    pub fn reset(&mut self) {
        self.file = None;
    }
}

/// Size of one wal-index region as SQLite maps it (`WALINDEX_PGSZ`).
const REGION: usize = 32 * 1024;

/// Keep only the pages of SQLite's own wal-index map that are actually read
/// resident in this process, and drop the rest now.
///
/// Why: SQLite maps the `-shm` file in 32 KiB regions (shared, one map per
/// file per process). A read fault on a shared file map makes the kernel map
/// the neighbouring cached pages as well ("fault-around", 64 KiB), so after
/// the first read the whole region is in this process's RSS: 32 KiB per
/// replicated database, while an idle database's connection reads the
/// header page and a few hash-table pages. `MADV_RANDOM` turns fault-around
/// off for this map, `MADV_DONTNEED` unmaps what is there (the pages stay in
/// the page cache, shared with the application: nothing is lost, the next
/// access maps the page again). Neither changes what SQLite reads.
///
/// Best effort: returns false (and changes nothing) when the connection is
/// not in WAL mode or has no wal-index region 0 mapped. The WAL-mode check
/// comes first because `xShmMap` on a connection that has not opened its
/// WAL would open the `-shm` file and take a lock that only closing the WAL
/// releases; asking for the journal mode reads the database, which opens
/// the WAL of a WAL-mode connection the way any read does.
pub fn trim_sqlite_map(conn: &rusqlite::Connection) -> bool {
    use rusqlite::ffi;
    let mode: rusqlite::Result<String> = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0));
    if !mode.is_ok_and(|m| m.eq_ignore_ascii_case("wal")) {
        return false;
    }
    // SAFETY: `handle` is the open connection, used from this thread only
    // (walsync's connections are SQLITE_OPEN_NO_MUTEX and owned by one
    // thread); SQLITE_FCNTL_FILE_POINTER writes the `sqlite3_file*` of the
    // main database, valid while the connection is open. With `bExtend` = 0
    // `xShmMap` only returns region 0 (mapping it if the `-shm` file is
    // already that long) and never grows the file; `unixShmMap` takes its
    // own mutex. `madvise` with MADV_RANDOM and MADV_DONTNEED on a shared
    // file map changes neither its contents nor its validity.
    unsafe {
        let db = conn.handle();
        let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
        let rc = ffi::sqlite3_file_control(
            db,
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
            return false;
        }
        let methods = &*(*file).pMethods;
        let Some(shm_map) = methods.xShmMap.filter(|_| methods.iVersion >= 2) else {
            return false;
        };
        let mut region: *mut std::ffi::c_void = std::ptr::null_mut();
        if shm_map(file, 0, REGION as i32, 0, &mut region) != ffi::SQLITE_OK || region.is_null() {
            return false;
        }
        let page = rustix::param::page_size();
        if region as usize % page != 0 || REGION % page != 0 {
            return false;
        }
        use rustix::mm::{madvise, Advice};
        madvise(region, REGION, Advice::Random).is_ok()
            && madvise(region, REGION, Advice::LinuxDontNeed).is_ok()
    }
}

fn read_full(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn ne32(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parse the two header copies and the backfill count; `None` when the copies
/// differ, the header is not initialised or its checksum is wrong.
pub fn parse(buf: &[u8]) -> Option<ShmHeader> {
    let h1 = buf.get(..HDR_SIZE)?;
    let h2 = buf.get(HDR_SIZE..2 * HDR_SIZE)?;
    if h1 != h2 || h1[12] == 0 {
        return None;
    }
    // aCksum covers the first 40 bytes, words in native byte order.
    let sum = checksum(cfg!(target_endian = "big"), Checksum(0, 0), &h1[..40]);
    if sum != Checksum(ne32(h1, 40), ne32(h1, 44)) {
        return None;
    }
    let sz = u32::from(u16::from_ne_bytes([h1[14], h1[15]]));
    let page_size = (sz & 0xff00) | ((sz & 0x0001) << 16);
    Some(ShmHeader {
        change: ne32(h1, 8),
        mx_frame: ne32(h1, 16),
        n_page: ne32(h1, 20),
        page_size,
        // aSalt is a raw copy of the WAL header's (big-endian) salt bytes.
        salt1: be32(h1, 32),
        salt2: be32(h1, 36),
        backfill: ne32(buf, 2 * HDR_SIZE),
    })
}
