//! A snapshot streamed from the database itself: no copy of it in memory or
//! on local disk.
//!
//! Why: a snapshot holds every page of the database. Encoding it into a
//! temporary file first needs free local disk the size of the (compressed)
//! database, on the disk the database lives on (Litestream's staging copy
//! filled users' disks). Instead the uploader receives a [`SnapshotSource`]
//! that reads each page when the upload writes it (an S3 multipart upload
//! sends each part as it fills), with bounded memory (see below).
//!
//! # Why its pages cannot change while it is uploaded
//!
//! The snapshot is cut under the fence, and the watcher's read transaction
//! `R` begins there at exactly its state (see [`super`]). While the snapshot
//! is in flight `R` stays where it began: one object of a database is in
//! flight at a time, and the repin and walsync's own checkpoints run only
//! with nothing in flight. So:
//! - `R` pinned (WAL frames in use): no frame up to the snapshot's end can
//!   be overwritten (fact 1) and no checkpoint copies a frame past `R`'s
//!   mark into the database file; the frames named here and the database
//!   file's other pages are the snapshot's.
//! - `R` not pinned (the WAL was fully backfilled): the snapshot uses the
//!   database file alone, and `R` stops every backfill (fact 2).
//!
//! # Withdrawal
//!
//! Whatever ends `R` while the snapshot is in flight (the `--max-wal-mib`
//! escape valve in an outage, a replaced database file, an error, the end of
//! replication) first withdraws the source ([`Withdraw`]): under the source's
//! lock, so no page read is in progress when `R` ends. Every later read fails
//! with [`Error::Withdrawn`], the uploader abandons the upload (S3: the
//! multipart upload is aborted) and the watcher takes a new snapshot under a
//! **new txid**. The withdrawn txid is never used again by this process: an
//! upload whose completion failed ambiguously may still be completed by the
//! server with the old state, and must not overwrite a newer object of the
//! same name. (After a restart the next txid comes from what storage lists;
//! a completion still in flight across a restart is not guarded against,
//! as it was not for a crash during any upload before.) A page that cannot
//! be read locally abandons the snapshot the same way.
//!
//! Memory: one part of the upload (S3), one page, and the LTX page index
//! the encoder keeps until the end of the file (about 24 bytes per page,
//! ~6 MiB per GiB of 4 KiB pages).
//!
//! A streamed object carries no `walsync-sha256` metadata (metadata is sent
//! before the body); its LTX file checksum covers every byte instead.
//!
//! The source reads the database file through the watcher's own descriptor
//! (shared, never closed here: closing a descriptor of the database would
//! drop SQLite's locks) and the WAL through a descriptor of its own.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::ltx::{self, Encoder, Header};
use crate::sqlite::wal::FRAME_HEADER_SIZE;
use crate::storage::Source;
use crate::upload::segment;

/// Where a snapshot's pages are: the newest WAL frame of a page, else the
/// database file.
pub(super) struct Pages {
    /// The watcher's descriptor of the database file.
    pub db: Arc<File>,
    pub db_path: PathBuf,
    /// A descriptor of the WAL (of the generation `R` pins); `None` when no
    /// frame is used.
    pub wal: Option<File>,
    pub wal_path: PathBuf,
    /// Page number → offset of the frame holding its newest committed
    /// version (at most the snapshot's end).
    pub frames: HashMap<u32, u64>,
}

impl Pages {
    fn read(&self, pgno: u32, buf: &mut [u8]) -> Result<()> {
        match (self.frames.get(&pgno), &self.wal) {
            (Some(&offset), Some(wal)) => wal
                .read_exact_at(buf, offset + FRAME_HEADER_SIZE as u64)
                .map_err(|e| {
                    Error::io(
                        &self.wal_path,
                        std::io::Error::new(e.kind(), format!("reading page {pgno}: {e}")),
                    )
                }),
            (Some(_), None) => Err(Error::Config(format!(
                "internal: page {pgno} is in a WAL that is not open"
            ))),
            (None, _) => segment::read_db_page(&self.db, &self.db_path, pgno, buf),
        }
    }
}

type Shared = Arc<Mutex<Option<Pages>>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Option<Pages>> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// The snapshot as the uploader writes it (see the module doc).
pub struct SnapshotSource {
    shared: Shared,
    header: Header,
    name: String,
}

/// The watcher's handle on a source in flight: withdraws it when dropped.
pub(super) struct Withdraw(Shared);

impl Withdraw {
    /// Stop the source from reading any further page (waits for a page read
    /// in progress). Returns whether it was still readable.
    pub fn withdraw(&self) -> bool {
        lock(&self.0).take().is_some()
    }
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// A source of the snapshot `header` of database `name` reading `pages`,
/// and the watcher's handle on it.
pub(super) fn snapshot_source(
    header: Header,
    name: &str,
    pages: Pages,
) -> (SnapshotSource, Withdraw) {
    let shared = Arc::new(Mutex::new(Some(pages)));
    (
        SnapshotSource {
            shared: shared.clone(),
            header,
            name: name.to_string(),
        },
        Withdraw(shared),
    )
}

impl Source for SnapshotSource {
    /// Every page uncompressed, plus what LZ4 may add to incompressible
    /// pages, the page headers, the index and the header and trailer.
    fn size_hint(&self) -> u64 {
        let h = &self.header;
        let page = ltx::max_compressed_page_size(h.page_size) as u64 + 64;
        u64::from(h.commit) * page + (1 << 20)
    }

    fn write_to(&mut self, w: &mut dyn Write) -> Result<u64> {
        let h = self.header;
        let mut enc = Encoder::new(w, h)?;
        let mut buf = vec![0u8; h.page_size as usize];
        let lock_page = ltx::lock_pgno(h.page_size);
        for pgno in (1..=h.commit).filter(|p| *p != lock_page) {
            {
                let pages = lock(&self.shared);
                let Some(pages) = pages.as_ref() else {
                    return Err(Error::Withdrawn(format!(
                        "{}: snapshot txid {} withdrawn: the read transaction that kept \
                         its pages was released",
                        self.name, h.max_txid
                    )));
                };
                // A local read error is not the store's: the watcher hears
                // of it (and takes a new snapshot) instead of the uploader
                // retrying it forever with the WAL held.
                pages.read(pgno, &mut buf).map_err(|e| {
                    Error::Withdrawn(format!(
                        "{}: snapshot txid {} abandoned: {e}",
                        self.name, h.max_txid
                    ))
                })?;
            }
            enc.write_page(pgno, &buf)?;
        }
        let (_, summary) = enc.finish()?;
        Ok(summary.size)
    }
}
