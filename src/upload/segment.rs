//! Turning WAL transactions and database snapshots into LTX objects.
//!
//! Why a stage of its own: both the steady-state path (committed transactions
//! → one level-0 segment) and the snapshot path (every page of the database
//! at one consistent point → one level-9 object) produce the same thing, an
//! LTX file plus the metadata the uploader stores with it. Keeping the byte
//! work here leaves `capture` with only the protocol.
//!
//! A segment folds one or more committed transactions: for every page the
//! newest frame wins, pages beyond the last commit's database size are
//! dropped (the database shrank), and the header records the WAL range it
//! came from (offset, size, salts) so a restarted daemon can resume from the
//! newest object's header alone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{Error, Result};
use crate::ltx::{self, Encoder, Header};
use crate::sqlite::wal::{self, Position, Transaction};
use crate::storage::{Metadata, Source};

/// Segments whose raw pages exceed this are encoded into a temp file, and
/// snapshots are streamed from the database (see `capture::source`).
pub const MEMORY_LIMIT: u64 = 8 << 20;

/// At most this much is reserved before encoding a segment in memory
/// (larger ones grow as they are written): below glibc's initial mmap
/// threshold (128 KiB), so a small segment is not a mapping of its own,
/// rounded up to whole pages when it is cut to size.
const PRESIZE_LIMIT: usize = 64 << 10;

use crate::storage::{META_SHA256, META_TIMESTAMP};
use crate::util::hex;

/// A segment's bytes: small ones in memory, large segments in a temp file,
/// large snapshots read from the database as they are uploaded.
pub enum Body {
    /// An encoded LTX file.
    Memory(Vec<u8>),
    /// An encoded LTX file on disk (deleted when the segment is dropped).
    File(tempfile::TempPath),
    /// An LTX file written as it is uploaded (a snapshot read from the
    /// database: see `capture::source`).
    Stream(Box<dyn Source>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Memory(v) => write!(f, "Memory({} bytes)", v.len()),
            Body::File(p) => write!(f, "File({})", p.display()),
            Body::Stream(s) => write!(f, "Stream(at most {} bytes)", s.size_hint()),
        }
    }
}

impl Body {
    /// Size in bytes (for a stream: at most this).
    pub fn len(&self) -> Result<u64> {
        match self {
            Body::Memory(v) => Ok(v.len() as u64),
            Body::File(p) => std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| Error::io(p, e)),
            Body::Stream(s) => Ok(s.size_hint()),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        matches!(self.len(), Ok(0))
    }
}

/// An encoded LTX object ready for upload.
pub struct Encoded {
    /// The LTX header written.
    pub header: Header,
    /// The bytes (in memory or in a temp file).
    pub body: Body,
    /// Timestamp and SHA-256 metadata.
    pub meta: Metadata,
}

/// Where the daemon stands in the WAL after this object: the WAL fields of an
/// LTX header describe the range `[wal_offset, wal_offset + wal_size)`.
pub fn wal_fields(h: &mut Header, start_offset: u64, end: &Position) {
    h.wal_offset = start_offset as i64;
    h.wal_size = end.offset.saturating_sub(start_offset) as i64;
    h.wal_salt1 = end.salt1;
    h.wal_salt2 = end.salt2;
}

/// Something LTX pages can be written to (an [`Encoder`] over any writer).
pub trait PageWriter {
    /// Append one page; page numbers must strictly increase.
    fn page(&mut self, pgno: u32, data: &[u8]) -> Result<()>;
}

impl<W: Write> PageWriter for Encoder<W> {
    fn page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        self.write_page(pgno, data)
    }
}

/// Encode the committed transactions `txs` (consecutive, from one WAL
/// generation held in `wal_bytes`) as one level-0 LTX file for `txid`.
pub fn encode_transactions(
    wal_bytes: &[u8],
    txs: &[Transaction],
    txid: u64,
    tmp_dir: &Path,
) -> Result<Encoded> {
    let (Some(first), Some(last)) = (txs.first(), txs.last()) else {
        return Err(Error::Config("internal: empty segment".into()));
    };
    let page_size = last.end.page_size;
    let commit = last.commit;
    // Newest frame per page; pages past the final size are dropped.
    let mut pages: BTreeMap<u32, &wal::Frame> = BTreeMap::new();
    for tx in txs {
        for f in &tx.frames {
            pages.insert(f.pgno, f);
        }
    }
    let lock = ltx::lock_pgno(page_size);
    pages.retain(|pgno, _| *pgno <= commit && *pgno != lock);
    let mut header = Header::new(page_size, commit, txid, txid, crate::util::now_ms());
    wal_fields(&mut header, first.start_offset(), &last.end);
    let raw = pages.len() as u64 * u64::from(page_size);
    encode_with(header, raw, tmp_dir, |w| {
        for (pgno, f) in &pages {
            let data = wal::frame_page(wal_bytes, page_size, f).ok_or_else(|| {
                Error::Config(format!("internal: frame of page {pgno} outside the WAL"))
            })?;
            w.page(*pgno, data)?;
        }
        Ok(())
    })
}

/// Encode an LTX file under `header` whose pages `fill` writes, into memory
/// when `raw_size` (uncompressed page bytes) is small, else into a temp file
/// in `tmp_dir` so memory stays bounded whatever the database size.
pub fn encode_with(
    header: Header,
    raw_size: u64,
    tmp_dir: &Path,
    fill: impl FnOnce(&mut dyn PageWriter) -> Result<()>,
) -> Result<Encoded> {
    if raw_size <= MEMORY_LIMIT {
        // Sized for the pages up front (no reallocation on the way) and cut
        // to the bytes written after: an encoded segment waits in the upload
        // queue and then in the compactor's cache (`Recent`), thousands of
        // them with many busy databases, so slack from a doubling `Vec`
        // would be most of their memory.
        let pages = raw_size / u64::from(header.page_size.max(1));
        let bound = ltx::max_encoded_size(pages, header.page_size).min(PRESIZE_LIMIT);
        let mut enc = Encoder::new(Sha256Writer::new(Vec::with_capacity(bound)), header)?;
        fill(&mut enc)?;
        let (w, _) = enc.finish()?;
        let (mut body, sha) = w.finish();
        body.shrink_to_fit();
        return Ok(Encoded {
            header,
            body: Body::Memory(body),
            meta: metadata(&header, &sha)?,
        });
    }
    // Named by this process, so a restart after a kill can sweep it.
    let tmp = crate::tmpfiles::create(tmp_dir)?;
    let (file, path) = tmp.into_parts();
    let mut enc = Encoder::new(Sha256Writer::new(BufWriter::new(file)), header)?;
    fill(&mut enc)?;
    let (w, _) = enc.finish()?;
    let (buf, sha) = w.finish();
    let file = buf
        .into_inner()
        .map_err(|e| Error::io(&path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    Ok(Encoded {
        header,
        body: Body::File(path),
        meta: metadata(&header, &sha)?,
    })
}

fn metadata(header: &Header, sha: &[u8]) -> Result<Metadata> {
    Ok(timestamp_metadata(header)?.with(META_SHA256, hex(sha)))
}

/// The timestamp metadata alone: what a streamed object carries (its
/// SHA-256 is known only once it is written, after the metadata was sent;
/// the LTX file checksum covers its bytes).
pub fn timestamp_metadata(header: &Header) -> Result<Metadata> {
    Ok(Metadata::new().with(
        META_TIMESTAMP,
        ltx::format_timestamp_ms(header.timestamp_ms)?,
    ))
}

/// A writer that hashes everything written through it (ring SHA-256).
pub struct Sha256Writer<W> {
    inner: W,
    ctx: ring::digest::Context,
}

impl<W: Write> Sha256Writer<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// The inner writer and the digest of everything written.
    pub fn finish(self) -> (W, Vec<u8>) {
        (self.inner, self.ctx.finish().as_ref().to_vec())
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Read page `pgno` of the database file into `buf` (pread; the file is
/// never mapped because SQLite may truncate it).
pub fn read_db_page(file: &File, path: &Path, pgno: u32, buf: &mut [u8]) -> Result<()> {
    let offset = u64::from(pgno - 1) * buf.len() as u64;
    file.read_exact_at(buf, offset).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("reading page {pgno}: {e}")),
        )
    })
}

/// Page size recorded in a database file header (bytes 16–17; 1 = 65536).
pub fn db_page_size(first_bytes: &[u8]) -> Option<u32> {
    let b = first_bytes.get(16..18)?;
    let v = u32::from(u16::from_be_bytes([b[0], b[1]]));
    let size = if v == 1 { 65536 } else { v };
    (size.is_power_of_two() && (512..=65536).contains(&size)).then_some(size)
}
