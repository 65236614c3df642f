//! Reading LTX files: streamed, every structural rule checked.
//!
//! Why a file of its own: a corrupt or hostile object must end in
//! [`Error::Ltx`] with a reason, never a panic or an unbounded allocation.

use super::*;

/// Counts the bytes read from the underlying reader (offsets for the index).
struct Counting<R> {
    r: R,
    pos: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pages,
    Done,
    Failed,
}

/// Streaming LTX reader and verifier.
///
/// [`Decoder::new`] reads and validates the header; [`Decoder::next_page`]
/// yields one decompressed page at a time; when the page block ends the
/// decoder reads and checks the page index, the trailer and the file
/// checksum before reporting the end. A page is only known to be good once
/// the whole file verified: callers that apply pages must not make them
/// visible before `next_page` returned `Ok(None)` (or [`Decoder::finish`]
/// succeeded).
///
/// Reads are small (6, 4 and 1 bytes for headers and index varints): give it
/// a buffered reader (`BufReader`, `&[u8]`).
pub struct Decoder<R: Read> {
    input: Counting<R>,
    object: String,
    header: Header,
    hash: Digest,
    state: State,
    prev_pgno: u32,
    index: Vec<PageIndexEntry>,
    compressed: Vec<u8>,
    trailer: Trailer,
}

impl<R: Read> Decoder<R> {
    /// Read and validate the header of the object named `object` (the name
    /// goes into every error).
    pub fn new(r: R, object: impl Into<String>) -> Result<Self> {
        let mut dec = Decoder {
            input: Counting { r, pos: 0 },
            object: object.into(),
            header: Header::default(),
            hash: CRC64_STATIC.digest(),
            state: State::Pages,
            prev_pgno: 0,
            index: Vec::new(),
            compressed: Vec::new(),
            trailer: Trailer::default(),
        };
        let mut b = [0u8; HEADER_SIZE];
        dec.read_exact(&mut b, "header")?;
        dec.header = Header::decode(&b).map_err(|r| dec.err(r))?;
        dec.hash.update(&b);
        Ok(dec)
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The object name used in errors.
    pub fn object(&self) -> &str {
        &self.object
    }

    /// The trailer; meaningful once the file has been read to the end.
    pub fn trailer(&self) -> &Trailer {
        &self.trailer
    }

    /// The index of the pages read so far (after the end: the verified page
    /// index of the file).
    pub fn index(&self) -> &[PageIndexEntry] {
        &self.index
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::ltx(self.object.clone(), reason)
    }

    fn fail(&mut self, e: Error) -> Error {
        self.state = State::Failed;
        e
    }

    /// Read exactly `buf.len()` bytes; truncation names `what` and the offset.
    fn read_exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let start = self.input.pos;
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(self.err(format!(
                    "truncated: {what} at offset {start} needs {} bytes, file ends after {filled}",
                    buf.len()
                )))
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.object, e)),
            }
        }
        Ok(())
    }

    fn read_hashed(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.read_exact(buf, what)?;
        self.hash.update(buf);
        Ok(())
    }

    /// Read the next page into `buf` (exactly `page_size` bytes) and return
    /// its page number, or `None` once the page block ended and the index,
    /// trailer and file checksum verified.
    pub fn next_page(&mut self, buf: &mut [u8]) -> Result<Option<u32>> {
        match self.state {
            State::Done => return Ok(None),
            State::Failed => return Err(self.err("decoder already failed")),
            State::Pages => {}
        }
        match self.next_page_inner(buf) {
            Ok(r) => Ok(r),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn next_page_inner(&mut self, buf: &mut [u8]) -> Result<Option<u32>> {
        let h = self.header;
        let page_size = h.page_size as usize;
        if buf.len() != page_size {
            return Err(self.err(format!(
                "page buffer is {} bytes, page size is {page_size}",
                buf.len()
            )));
        }
        let offset = self.input.pos;
        let mut ph = [0u8; PAGE_HEADER_SIZE];
        self.read_hashed(&mut ph, "page header")?;
        let pgno = be_u32(&ph[0..4]);
        let flags = u16::from_be_bytes([ph[4], ph[5]]);
        if pgno == 0 && flags == 0 {
            self.read_tail()?;
            self.state = State::Done;
            return Ok(None);
        }
        if pgno == 0 {
            return Err(self.err(format!(
                "page header at offset {offset}: page number 0 with flags 0x{flags:04x}"
            )));
        }
        if flags != PAGE_FLAG_LZ4_BLOCK && flags != PAGE_FLAG_LZ4_FRAME {
            return Err(self.err(format!("page {pgno}: unknown page flags 0x{flags:04x}")));
        }
        if pgno <= self.prev_pgno {
            return Err(self.err(format!(
                "page numbers not strictly increasing: {} then {pgno}",
                self.prev_pgno
            )));
        }
        if pgno > h.commit {
            return Err(self.err(format!("page {pgno} beyond commit {}", h.commit)));
        }
        if pgno == h.lock_pgno() {
            return Err(self.err(format!("page {pgno} is the lock page")));
        }
        if h.is_snapshot() {
            let expected = next_snapshot_pgno(self.prev_pgno, h.lock_pgno());
            if pgno != expected {
                return Err(self.err(format!(
                    "snapshot missing page {expected} (next page in file is {pgno})"
                )));
            }
        }
        if flags == PAGE_FLAG_LZ4_BLOCK {
            let mut sz = [0u8; 4];
            self.read_hashed(&mut sz, "page size field")?;
            let n = u32::from_be_bytes(sz) as usize;
            let max = max_compressed_page_size(h.page_size);
            if n > max {
                return Err(self.err(format!(
                    "page {pgno}: compressed size {n} exceeds the maximum {max} for page size {page_size}"
                )));
            }
            let mut compressed = std::mem::take(&mut self.compressed);
            compressed.resize(n, 0);
            let r = self.read_exact(&mut compressed, "compressed page");
            let r = r.and_then(|()| {
                lz4_flex::block::decompress_into(&compressed, buf).map_err(|e| {
                    self.err(format!(
                        "page {pgno}: LZ4 block does not decompress to {page_size} bytes: {e}"
                    ))
                })
            });
            self.compressed = compressed;
            let got = r?;
            if got != page_size {
                return Err(self.err(format!(
                    "page {pgno}: decompressed size {got}, page size is {page_size}"
                )));
            }
        } else {
            self.read_frame_page(pgno, buf)?;
        }
        self.hash.update(buf);
        self.index.push(PageIndexEntry {
            pgno,
            offset,
            size: self.input.pos - offset,
        });
        self.prev_pgno = pgno;
        Ok(Some(pgno))
    }

    /// Legacy form: one LZ4 frame holding exactly one page.
    fn read_frame_page(&mut self, pgno: u32, buf: &mut [u8]) -> Result<()> {
        let page_size = buf.len();
        let mut filled = 0usize;
        let mut extra = [0u8; 1];
        let result: io::Result<usize> = (|| {
            // The frame decoder reads exactly the frame's bytes (read_exact
            // underneath), so it stops at the frame's end mark.
            let mut fr = lz4_flex::frame::FrameDecoder::new(&mut self.input);
            loop {
                if filled == page_size {
                    // The frame must end here: one more read must see its end mark.
                    return loop {
                        match fr.read(&mut extra) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            r => break r,
                        }
                    };
                }
                match fr.read(&mut buf[filled..]) {
                    Ok(0) => return Ok(0),
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        })();
        match result {
            Err(e) => Err(self.err(format!("page {pgno}: bad LZ4 frame: {e}"))),
            Ok(0) if filled == page_size => Ok(()),
            Ok(_) if filled == page_size => Err(self.err(format!(
                "page {pgno}: LZ4 frame decompresses to more than page size {page_size}"
            ))),
            Ok(_) => Err(self.err(format!(
                "page {pgno}: decompressed size {filled}, page size is {page_size} (LZ4 frame short or truncated)"
            ))),
        }
    }

    fn read_uvarint(&mut self, what: &str) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let mut b = [0u8; 1];
            self.read_hashed(&mut b, what)?;
            let byte = b[0];
            if i == 9 && byte > 1 {
                return Err(self.err(format!("page index: {what} varint overflows 64 bits")));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(self.err(format!("page index: {what} varint longer than 10 bytes")))
    }

    /// After the zero page header: page index, trailer, checksum, end of input.
    fn read_tail(&mut self) -> Result<()> {
        let h = self.header;
        if h.is_snapshot() && self.prev_pgno != h.last_snapshot_pgno() {
            let missing = next_snapshot_pgno(self.prev_pgno, h.lock_pgno());
            return Err(self.err(format!(
                "snapshot missing page {missing} (commit {}, last page in file {})",
                h.commit, self.prev_pgno
            )));
        }
        let index_start = self.input.pos;
        let mut i = 0usize;
        loop {
            let pgno = self.read_uvarint("pgno")?;
            let Some(seen) = self.index.get(i).copied() else {
                if pgno != 0 {
                    return Err(self.err(format!(
                        "page index has more entries than the {} pages in the file (extra pgno {pgno})",
                        self.index.len()
                    )));
                }
                break;
            };
            if pgno == 0 {
                return Err(self.err(format!(
                    "page index ends after {i} entries, file has {} pages",
                    self.index.len()
                )));
            }
            let offset = self.read_uvarint("offset")?;
            let size = self.read_uvarint("size")?;
            if pgno != u64::from(seen.pgno) || offset != seen.offset || size != seen.size {
                return Err(self.err(format!(
                    "page index entry {i} is (pgno {pgno}, offset {offset}, size {size}) but the page block has (pgno {}, offset {}, size {})",
                    seen.pgno, seen.offset, seen.size
                )));
            }
            i += 1;
        }
        let index_len = self.input.pos - index_start;
        let mut lb = [0u8; 8];
        self.read_hashed(&mut lb, "page index length")?;
        let stored = u64::from_be_bytes(lb);
        if stored != index_len {
            return Err(self.err(format!(
                "page index length field says {stored} bytes, index is {index_len}"
            )));
        }
        let mut tb = [0u8; TRAILER_SIZE];
        self.read_exact(&mut tb, "trailer")?;
        self.hash.update(&tb[0..8]);
        self.trailer = Trailer {
            post_apply_checksum: be_u64(&tb[0..8]),
            file_checksum: be_u64(&tb[8..16]),
        };
        let computed = CHECKSUM_FLAG | self.hash.clone().finalize();
        if self.trailer.file_checksum != computed {
            return Err(self.err(format!(
                "file checksum mismatch: stored 0x{:016x}, computed 0x{computed:016x}",
                self.trailer.file_checksum
            )));
        }
        if h.no_checksum() {
            if self.trailer.post_apply_checksum != 0 {
                return Err(self.err(format!(
                    "post-apply checksum 0x{:016x} in a NoChecksum file (must be 0)",
                    self.trailer.post_apply_checksum
                )));
            }
        } else if self.trailer.post_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(self.err(format!(
                "post-apply checksum 0x{:016x} lacks the 1<<63 flag",
                self.trailer.post_apply_checksum
            )));
        }
        // Nothing may follow the trailer.
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(self.err(format!(
                        "trailing bytes after the trailer at offset {}",
                        self.input.pos - 1
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.object, e)),
            }
        }
        Ok(())
    }

    /// Read (and verify) whatever is left of the file without keeping pages;
    /// return the summary.
    pub fn finish(mut self) -> Result<Summary> {
        let mut buf = vec![0u8; self.header.page_size as usize];
        while self.next_page(&mut buf)?.is_some() {}
        Ok(Summary {
            header: self.header,
            trailer: self.trailer,
            index: self.index,
            size: self.input.pos,
        })
    }
}

/// Verify a whole LTX file while streaming it, keeping no pages (for
/// `walsync verify`). Returns the header, trailer and page index.
pub fn verify<R: Read>(r: R, object: impl Into<String>) -> Result<Summary> {
    Decoder::new(r, object)?.finish()
}

/// A page number and the page's bytes.
pub type Page = (u32, Vec<u8>);

/// Decode and verify a file held in memory; return its header and pages.
/// Meant for tests and small files.
pub fn decode_all(bytes: &[u8], object: &str) -> Result<(Header, Vec<Page>)> {
    let mut dec = Decoder::new(bytes, object)?;
    let mut pages = Vec::new();
    let mut buf = vec![0u8; dec.header().page_size as usize];
    while let Some(pgno) = dec.next_page(&mut buf)? {
        pages.push((pgno, buf.clone()));
    }
    Ok((*dec.header(), pages))
}
