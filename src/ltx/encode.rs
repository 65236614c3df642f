//! Writing LTX files: one page at a time, the index and checksums as it goes.
//!
//! Why a file of its own: the encoder streams (never more than one page in
//! memory), and its rules mirror Litestream's writer exactly.

use super::*;

/// Streaming LTX writer.
///
/// Pages go out as soon as they are written, compressed in the LZ4 block
/// form; only the page index (pgno, offset, size) is kept in memory. Every
/// structural rule the [`Decoder`] checks is enforced here too, so a file
/// this writes is one Litestream accepts.
pub struct Encoder<W: Write> {
    w: W,
    header: Header,
    object: String,
    hash: Digest,
    pos: u64,
    prev_pgno: u32,
    index: Vec<PageIndexEntry>,
    compressed: Vec<u8>,
}

impl<W: Write> Encoder<W> {
    /// Validate `header` and write it to `w`.
    pub fn new(w: W, header: Header) -> Result<Self> {
        let object = file_name(header.min_txid, header.max_txid);
        header
            .validate()
            .map_err(|r| Error::ltx(object.clone(), format!("cannot encode: {r}")))?;
        let mut enc = Encoder {
            w,
            header,
            object,
            hash: CRC64_STATIC.digest(),
            pos: 0,
            prev_pgno: 0,
            index: Vec::new(),
            compressed: vec![0u8; max_compressed_page_size(header.page_size)],
        };
        enc.write_hashed(&header.encode())?;
        Ok(enc)
    }

    /// The header being written.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.pos
    }

    /// Pages written so far.
    pub fn pages_written(&self) -> usize {
        self.index.len()
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::ltx(self.object.clone(), reason)
    }

    fn write_raw(&mut self, b: &[u8]) -> Result<()> {
        self.w
            .write_all(b)
            .map_err(|e| Error::io(&self.object, e))?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn write_hashed(&mut self, b: &[u8]) -> Result<()> {
        self.hash.update(b);
        self.write_raw(b)
    }

    /// Append page `pgno`. `data` must be exactly `page_size` bytes; page
    /// numbers must strictly increase, be ≥ 1, ≤ `commit` and never the lock
    /// page; a snapshot must be written as the full run `1..=commit`.
    pub fn write_page(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        let h = self.header;
        if data.len() != h.page_size as usize {
            return Err(self.err(format!(
                "page {pgno}: {} bytes, page size is {}",
                data.len(),
                h.page_size
            )));
        }
        if pgno == 0 {
            return Err(self.err("page number 0"));
        }
        if pgno > h.commit {
            return Err(self.err(format!("page {pgno} beyond commit {}", h.commit)));
        }
        if pgno == h.lock_pgno() {
            return Err(self.err(format!("page {pgno} is the lock page")));
        }
        if pgno <= self.prev_pgno {
            return Err(self.err(format!(
                "page numbers not strictly increasing: {} then {pgno}",
                self.prev_pgno
            )));
        }
        if h.is_snapshot() {
            let expected = next_snapshot_pgno(self.prev_pgno, h.lock_pgno());
            if pgno != expected {
                return Err(self.err(format!(
                    "snapshot missing page {expected} (next page written was {pgno})"
                )));
            }
        }
        let n = lz4_flex::block::compress_into(data, &mut self.compressed)
            .map_err(|e| self.err(format!("page {pgno}: LZ4 compression failed: {e}")))?;
        let offset = self.pos;
        let mut ph = [0u8; PAGE_HEADER_SIZE + 4];
        ph[0..4].copy_from_slice(&pgno.to_be_bytes());
        ph[4..6].copy_from_slice(&PAGE_FLAG_LZ4_BLOCK.to_be_bytes());
        ph[6..10].copy_from_slice(&(n as u32).to_be_bytes());
        self.write_hashed(&ph)?;
        // The checksum covers the decompressed page, the file holds the block.
        self.hash.update(data);
        let compressed = std::mem::take(&mut self.compressed);
        let r = self.write_raw(&compressed[..n]);
        self.compressed = compressed;
        r?;
        self.index.push(PageIndexEntry {
            pgno,
            offset,
            size: self.pos - offset,
        });
        self.prev_pgno = pgno;
        Ok(())
    }

    /// Write the end of the page block, the page index and the trailer; return
    /// the writer and a summary (with the file checksum).
    pub fn finish(mut self) -> Result<(W, Summary)> {
        let h = self.header;
        if h.is_snapshot() && self.prev_pgno != h.last_snapshot_pgno() {
            let missing = next_snapshot_pgno(self.prev_pgno, h.lock_pgno());
            return Err(self.err(format!(
                "snapshot missing page {missing} (commit {}, last page written {})",
                h.commit, self.prev_pgno
            )));
        }
        self.write_hashed(&[0u8; PAGE_HEADER_SIZE])?;
        let mut idx = Vec::with_capacity(self.index.len() * 8 + 9);
        for e in &self.index {
            put_uvarint(&mut idx, u64::from(e.pgno));
            put_uvarint(&mut idx, e.offset);
            put_uvarint(&mut idx, e.size);
        }
        put_uvarint(&mut idx, 0);
        let len = idx.len() as u64;
        idx.extend_from_slice(&len.to_be_bytes());
        self.write_hashed(&idx)?;
        let post_apply_checksum = 0u64;
        self.hash.update(&post_apply_checksum.to_be_bytes());
        let trailer = Trailer {
            post_apply_checksum,
            file_checksum: CHECKSUM_FLAG | self.hash.clone().finalize(),
        };
        self.write_raw(&trailer.encode())?;
        self.w.flush().map_err(|e| Error::io(&self.object, e))?;
        let summary = Summary {
            header: h,
            trailer,
            index: self.index,
            size: self.pos,
        };
        Ok((self.w, summary))
    }
}

/// The page a snapshot must hold after `prev` (0 = none yet), skipping the
/// lock page.
pub(super) fn next_snapshot_pgno(prev: u32, lock: u32) -> u32 {
    let next = prev.saturating_add(1);
    if next == lock {
        next.saturating_add(1)
    } else {
        next
    }
}

/// Encode a whole file into memory from `(pgno, page)` pairs.
pub fn encode_to_vec<I, P>(header: Header, pages: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = (u32, P)>,
    P: AsRef<[u8]>,
{
    let mut enc = Encoder::new(Vec::new(), header)?;
    for (pgno, page) in pages {
        enc.write_page(pgno, page.as_ref())?;
    }
    Ok(enc.finish()?.0)
}
