//! LTX files: the on-storage format of every replicated segment and snapshot.
//!
//! walsync does not invent a format. It writes exactly what Litestream 0.5
//! writes (the LTX format of `github.com/superfly/ltx`) and lays
//! the objects out under Litestream's keys, so that a bucket written by
//! walsync can be restored with `litestream restore`, and a bucket written by
//! Litestream can be restored with walsync. Compatibility with real files is
//! the ground truth: the tests decode files written by Litestream 0.5.17 and
//! have the real `litestream` binary restore files written here.
//!
//! # File layout (all integers big-endian)
//!
//! ```text
//! header        100 bytes   "LTX1", flags, page size, commit, min/max txid, ...
//! page block    per page:   pgno u32, flags u16 [, size u32], LZ4 payload
//!               then        6 zero bytes (end of page block)
//! page index    per page:   uvarint pgno, uvarint offset, uvarint size
//!               then        uvarint 0, u64 index length (terminator included)
//! trailer       16 bytes    post-apply checksum u64, file checksum u64
//! ```
//!
//! The file checksum is CRC-64/GO-ISO over the header, every page header, the
//! size field of block-form pages, the *decompressed* page bytes, the zero
//! page header, the whole page index (entries, terminator and the u64
//! length) and the post-apply checksum; the stored value has bit 63 set.
//!
//! The [`Encoder`] streams: it never holds more than one page and the small
//! page index (page number, offset, size per page). The [`Decoder`] streams
//! the same way and checks every structural rule, so a corrupt or hostile
//! object ends in [`Error::Ltx`] with a reason, never in a panic or an
//! unbounded allocation.

use std::io::{self, Read, Write};
use std::time::SystemTime;

use crate::error::{Error, Result};

/// The four magic bytes at the start of every LTX file.
pub const MAGIC: &[u8; 4] = b"LTX1";
/// Size of the file header in bytes.
pub const HEADER_SIZE: usize = 100;
/// Size of a page header (pgno u32 + flags u16) in bytes.
pub const PAGE_HEADER_SIZE: usize = 6;
/// Size of the trailer (post-apply checksum + file checksum) in bytes.
pub const TRAILER_SIZE: usize = 16;

/// Header flag: the file carries no database checksums (pre-apply and
/// post-apply checksums are zero).
///
/// This is the only header flag bit Litestream 0.5 defines; any other bit is
/// rejected. Litestream's restore refuses files that carry database
/// checksums, so walsync always sets this flag.
pub const HEADER_FLAG_NO_CHECKSUM: u32 = 0x2;
/// All header flag bits this module understands.
pub const HEADER_FLAG_MASK: u32 = HEADER_FLAG_NO_CHECKSUM;

/// Page header flag: a u32 compressed size follows the page header, then one
/// raw LZ4 *block* (the form Litestream ≥ 0.5.16 writes; the form walsync
/// writes).
pub const PAGE_FLAG_LZ4_BLOCK: u16 = 0x0001;
/// Page header flags value for the legacy form: one LZ4 *frame* per page, no
/// size field (read only).
pub const PAGE_FLAG_LZ4_FRAME: u16 = 0;

/// Bit set on every stored checksum so that it is never zero.
pub const CHECKSUM_FLAG: u64 = 1 << 63;

/// The level that holds full-database snapshots.
pub const SNAPSHOT_LEVEL: u8 = 9;

/// Highest compaction level (levels 1..=3 hold merges of the level below).
pub const MAX_LEVEL: u8 = 3;

/// SQLite's pending byte offset; the page holding it is the lock page.
pub const PENDING_BYTE: u64 = 0x4000_0000;

/// Smallest valid page size.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest valid page size.
pub const MAX_PAGE_SIZE: u32 = 65536;

/// The CRC-64 used for the file checksum (Go's `crc64.ISO` table: reflected
/// polynomial 0xD800000000000000, init and xor-out all ones). The
/// slice-by-16 tables: the byte-at-a-time default was a third of a
/// restore's CPU time.
pub const CRC64: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_GO_ISO);
static CRC64_STATIC: crc::Crc<u64, crc::Table<16>> = CRC64;

type Digest = crc::Digest<'static, u64, crc::Table<16>>;

/// The lock page of a database with this page size: it never holds data and
/// never appears in an LTX file.
pub fn lock_pgno(page_size: u32) -> u32 {
    // page_size >= 1 for any caller that validated the header; guard anyway.
    (PENDING_BYTE / u64::from(page_size.max(1))) as u32 + 1
}

/// True if `page_size` is a power of two in 512..=65536.
pub fn is_valid_page_size(page_size: u32) -> bool {
    page_size.is_power_of_two() && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size)
}

/// Largest compressed payload the decoder accepts for one page. A real LZ4
/// block of `page_size` bytes is never larger (LZ4's bound is
/// `n + n/255 + 16`); anything bigger is corruption, refused before any
/// allocation.
pub fn max_compressed_page_size(page_size: u32) -> usize {
    lz4_flex::block::get_maximum_output_size(page_size as usize)
}

pub use crate::util::now_ms;
use crate::util::system_time_ms;

// ---------------------------------------------------------------------------
// Header and trailer
// ---------------------------------------------------------------------------

/// The 100-byte LTX file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Header flags; see [`HEADER_FLAG_NO_CHECKSUM`].
    pub flags: u32,
    /// Database page size in bytes (power of two, 512..=65536).
    pub page_size: u32,
    /// Database size in pages after this file is applied.
    pub commit: u32,
    /// First transaction id covered (≥ 1; 1 means snapshot).
    pub min_txid: u64,
    /// Last transaction id covered (≥ `min_txid`).
    pub max_txid: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Database checksum before apply (0 with NoChecksum and on snapshots).
    pub pre_apply_checksum: u64,
    /// Offset in the source WAL where this segment starts (0 if not from a WAL).
    pub wal_offset: i64,
    /// Size of the WAL range this segment was cut from.
    pub wal_size: i64,
    /// Salt-1 of the source WAL header.
    pub wal_salt1: u32,
    /// Salt-2 of the source WAL header.
    pub wal_salt2: u32,
    /// Id of the node that wrote the file (0 if unset).
    pub node_id: u64,
}

impl Header {
    /// A header as walsync writes it: NoChecksum, the given page size, commit,
    /// transaction range and timestamp; WAL fields and node id zero.
    pub fn new(
        page_size: u32,
        commit: u32,
        min_txid: u64,
        max_txid: u64,
        timestamp_ms: i64,
    ) -> Header {
        Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size,
            commit,
            min_txid,
            max_txid,
            timestamp_ms,
            ..Header::default()
        }
    }

    /// True if this file is a snapshot (`min_txid == 1`): it then holds every
    /// page `1..=commit` except the lock page.
    pub fn is_snapshot(&self) -> bool {
        self.min_txid == 1
    }

    /// True if the NoChecksum flag is set.
    pub fn no_checksum(&self) -> bool {
        self.flags & HEADER_FLAG_NO_CHECKSUM != 0
    }

    /// The lock page number for this header's page size.
    pub fn lock_pgno(&self) -> u32 {
        lock_pgno(self.page_size)
    }

    /// The last page number a snapshot with this header must contain.
    fn last_snapshot_pgno(&self) -> u32 {
        if self.commit == self.lock_pgno() {
            self.commit - 1
        } else {
            self.commit
        }
    }

    /// Serialize to the 100-byte on-disk form (reserved bytes zero).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&self.flags.to_be_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_be_bytes());
        b[12..16].copy_from_slice(&self.commit.to_be_bytes());
        b[16..24].copy_from_slice(&self.min_txid.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_txid.to_be_bytes());
        b[32..40].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        b[40..48].copy_from_slice(&self.pre_apply_checksum.to_be_bytes());
        b[48..56].copy_from_slice(&self.wal_offset.to_be_bytes());
        b[56..64].copy_from_slice(&self.wal_size.to_be_bytes());
        b[64..68].copy_from_slice(&self.wal_salt1.to_be_bytes());
        b[68..72].copy_from_slice(&self.wal_salt2.to_be_bytes());
        b[72..80].copy_from_slice(&self.node_id.to_be_bytes());
        b
    }

    /// Parse and [validate](Header::validate) a header from the first 100
    /// bytes of `bytes`.
    ///
    /// Errors are a plain reason (this layer does not know the object's
    /// name); wrap it with [`Error::ltx`].
    pub fn decode(bytes: &[u8]) -> std::result::Result<Header, String> {
        if let Some(reason) = encrypted_reason(bytes) {
            return Err(reason);
        }
        let Some(b) = bytes.get(..HEADER_SIZE) else {
            return Err(format!(
                "truncated header: {} bytes, need {HEADER_SIZE}",
                bytes.len()
            ));
        };
        if &b[0..4] != MAGIC {
            return Err(format!("bad magic {:02x?}, expected \"LTX1\"", &b[0..4]));
        }
        if b[80..].iter().any(|&x| x != 0) {
            return Err("reserved header bytes 80..100 are not zero".into());
        }
        let h = Header {
            flags: be_u32(&b[4..8]),
            page_size: be_u32(&b[8..12]),
            commit: be_u32(&b[12..16]),
            min_txid: be_u64(&b[16..24]),
            max_txid: be_u64(&b[24..32]),
            timestamp_ms: be_u64(&b[32..40]) as i64,
            pre_apply_checksum: be_u64(&b[40..48]),
            wal_offset: be_u64(&b[48..56]) as i64,
            wal_size: be_u64(&b[56..64]) as i64,
            wal_salt1: be_u32(&b[64..68]),
            wal_salt2: be_u32(&b[68..72]),
            node_id: be_u64(&b[72..80]),
        };
        h.validate()?;
        Ok(h)
    }

    /// Check the header's rules (the same ones Litestream's reader applies):
    /// known flag bits only, valid page size, `1 ≤ min_txid ≤ max_txid`,
    /// non-negative WAL offset/size, WAL salts/size only with a WAL offset,
    /// and a pre-apply checksum that matches the checksum mode.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.flags & !HEADER_FLAG_MASK != 0 {
            return Err(format!(
                "unknown header flags 0x{:08x} (known: 0x{HEADER_FLAG_MASK:08x} NoChecksum)",
                self.flags & !HEADER_FLAG_MASK
            ));
        }
        if !is_valid_page_size(self.page_size) {
            return Err(format!(
                "bad page size {} (must be a power of two in 512..=65536)",
                self.page_size
            ));
        }
        if self.min_txid == 0 {
            return Err("min txid is 0 (must be at least 1)".into());
        }
        if self.min_txid > self.max_txid {
            return Err(format!(
                "min txid {} greater than max txid {}",
                self.min_txid, self.max_txid
            ));
        }
        if self.wal_offset < 0 {
            return Err(format!("negative WAL offset {}", self.wal_offset));
        }
        if self.wal_size < 0 {
            return Err(format!("negative WAL size {}", self.wal_size));
        }
        if (self.wal_salt1 != 0 || self.wal_salt2 != 0) && self.wal_offset == 0 {
            return Err("WAL salts set without a WAL offset".into());
        }
        if self.wal_size != 0 && self.wal_offset == 0 {
            return Err("WAL size set without a WAL offset".into());
        }
        if self.is_snapshot() || self.no_checksum() {
            if self.pre_apply_checksum != 0 {
                return Err(format!(
                    "pre-apply checksum 0x{:016x} must be 0 on {}",
                    self.pre_apply_checksum,
                    if self.is_snapshot() {
                        "a snapshot"
                    } else {
                        "a NoChecksum file"
                    }
                ));
            }
        } else if self.pre_apply_checksum & CHECKSUM_FLAG == 0 {
            return Err(format!(
                "pre-apply checksum 0x{:016x} lacks the 1<<63 flag",
                self.pre_apply_checksum
            ));
        }
        Ok(())
    }
}

/// The 16-byte trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trailer {
    /// Database checksum after apply (0 with NoChecksum).
    pub post_apply_checksum: u64,
    /// CRC-64 of the file with bit 63 set.
    pub file_checksum: u64,
}

impl Trailer {
    /// Serialize to the 16-byte on-disk form.
    pub fn encode(&self) -> [u8; TRAILER_SIZE] {
        let mut b = [0u8; TRAILER_SIZE];
        b[0..8].copy_from_slice(&self.post_apply_checksum.to_be_bytes());
        b[8..16].copy_from_slice(&self.file_checksum.to_be_bytes());
        b
    }
}

/// One entry of the page index: where a page's record sits in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageIndexEntry {
    /// Page number.
    pub pgno: u32,
    /// Absolute file offset of the page header.
    pub offset: u64,
    /// Bytes of page header + size field + compressed payload.
    pub size: u64,
}

/// What a finished encode or a verified decode knows about the whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The file header.
    pub header: Header,
    /// The file trailer (with the file checksum).
    pub trailer: Trailer,
    /// The page index, in file order.
    pub index: Vec<PageIndexEntry>,
    /// Total file size in bytes.
    pub size: u64,
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

// ---------------------------------------------------------------------------
// Encoder
// ---------------------------------------------------------------------------

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
fn next_snapshot_pgno(prev: u32, lock: u32) -> u32 {
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

// ---------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Object names
// ---------------------------------------------------------------------------

/// `<min %016x>-<max %016x>.ltx`.
pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// The directory part of a key: `<prefix>/<db>/<level %04x>/` (no leading
/// slash when the prefix is empty; slashes at either end of `prefix` and
/// `db` are dropped).
pub fn level_prefix(prefix: &str, db: &str, level: u8) -> String {
    let prefix = prefix.trim_matches('/');
    let db = db.trim_matches('/');
    if prefix.is_empty() {
        format!("{db}/{level:04x}/")
    } else {
        format!("{prefix}/{db}/{level:04x}/")
    }
}

/// Suffix of a lease object's key: `<db>.walsync-lease`, beside the
/// database's `<db>/` prefix ([`crate::lease`]).
pub const LEASE_SUFFIX: &str = ".walsync-lease";

/// First bytes of every object sealed by client-side encryption
/// ([`crate::storage::crypt`]).
pub const ENCRYPTED_MAGIC: &[u8; 8] = b"WSYNCENC";
/// Environment variable holding the current encryption key (64 hex digits).
pub const KEY_ENV: &str = "WALSYNC_ENCRYPTION_KEY";

/// If `bytes` start with an encrypted object's header, the reason an LTX
/// reader without a key gives: names the key id and the flag to pass.
pub fn encrypted_reason(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 24 || &bytes[..8] != ENCRYPTED_MAGIC {
        return None;
    }
    Some(format!(
        "object is encrypted (key id {}); pass --encryption-key-file or set {KEY_ENV}",
        crate::util::hex(&bytes[16..24])
    ))
}

/// The object key of an LTX file:
/// `<prefix>/<db>/<level %04x>/<min %016x>-<max %016x>.ltx`.
pub fn object_key(prefix: &str, db: &str, level: u8, min_txid: u64, max_txid: u64) -> String {
    let mut k = level_prefix(prefix, db, level);
    k.push_str(&file_name(min_txid, max_txid));
    k
}

fn parse_hex_fixed(s: &str, len: usize) -> Option<u64> {
    if s.len() != len || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Parse `<min %016x>-<max %016x>.ltx` (lowercase hex only, `1 ≤ min ≤ max`).
pub fn parse_object_name(file_name: &str) -> Option<(u64, u64)> {
    let stem = file_name.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    let min = parse_hex_fixed(a, 16)?;
    let max = parse_hex_fixed(b, 16)?;
    (min >= 1 && min <= max).then_some((min, max))
}

/// A parsed object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    /// Database name (may itself contain `/`).
    pub db: String,
    /// Level (0 = per-sync segments, 9 = snapshots).
    pub level: u8,
    /// First transaction id.
    pub min_txid: u64,
    /// Last transaction id.
    pub max_txid: u64,
}

/// Parse a full key `<prefix>/<db>/<level %04x>/<min>-<max>.ltx` written
/// under `prefix`. `None` if the key is not under the prefix or not an LTX
/// object key.
pub fn parse_object_key(prefix: &str, key: &str) -> Option<ObjectKey> {
    let prefix = prefix.trim_matches('/');
    let rest = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')?
    };
    let (dir, name) = rest.rsplit_once('/')?;
    let (db, level) = dir.rsplit_once('/')?;
    // `object_key` never writes an empty path segment (it trims the slashes
    // around prefix and name), so `a//b`, `/db` or `db/` are no keys of
    // ours: accepting them named databases (`/app.db`) that `restore` and
    // `list` then could not find (found by fuzzing, tests/fuzz_regressions.rs).
    if db.split('/').any(str::is_empty) {
        return None;
    }
    let level = u8::try_from(parse_hex_fixed(level, 4)?).ok()?;
    let (min_txid, max_txid) = parse_object_name(name)?;
    Some(ObjectKey {
        db: db.to_string(),
        level,
        min_txid,
        max_txid,
    })
}

// ---------------------------------------------------------------------------
// Timestamps (x-amz-meta-litestream-timestamp)
// ---------------------------------------------------------------------------

/// Format milliseconds since the epoch the way Litestream stores
/// `litestream-timestamp`: Go's `time.RFC3339Nano` in UTC (fraction digits
/// with trailing zeros trimmed, none for whole seconds), e.g.
/// `2025-01-02T03:04:05.678Z`.
pub fn format_timestamp_ms(ms: i64) -> Result<String> {
    let nanos = i128::from(ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|e| Error::Config(format!("timestamp {ms} ms out of range: {e}")))?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::Config(format!("timestamp {ms} ms cannot be formatted: {e}")))
}

/// [`format_timestamp_ms`] for a `SystemTime` (truncated to milliseconds,
/// the resolution of the LTX header).
pub fn format_system_time(t: SystemTime) -> Result<String> {
    format_timestamp_ms(system_time_ms(t))
}

/// Parse an RFC 3339 timestamp (any fraction length, any offset) back to
/// milliseconds since the epoch (truncated, as Litestream does).
pub fn parse_timestamp(s: &str) -> Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::Config(format!("bad RFC 3339 timestamp {s:?}: {e}")))?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms).map_err(|_| Error::Config(format!("timestamp {s:?} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_check_value() {
        assert_eq!(CRC64.checksum(b"123456789"), 0xb909_56c7_75a4_1001);
    }

    #[test]
    fn header_round_trip() {
        let h = Header {
            flags: HEADER_FLAG_NO_CHECKSUM,
            page_size: 4096,
            commit: 7,
            min_txid: 3,
            max_txid: 5,
            timestamp_ms: 1_700_000_000_123,
            pre_apply_checksum: 0,
            wal_offset: 32,
            wal_size: 8272,
            wal_salt1: 0xdead_beef,
            wal_salt2: 0x0102_0304,
            node_id: 42,
        };
        let b = h.encode();
        assert_eq!(&b[..4], b"LTX1");
        assert_eq!(Header::decode(&b).unwrap(), h);
        assert!(!h.is_snapshot());
        assert!(Header { min_txid: 1, ..h }.is_snapshot());
    }

    #[test]
    fn lock_page_numbers() {
        assert_eq!(lock_pgno(4096), 262_145);
        assert_eq!(lock_pgno(512), 2_097_153);
        assert_eq!(lock_pgno(65536), 16_385);
    }

    #[test]
    fn snapshot_lock_page_rules() {
        assert_eq!(next_snapshot_pgno(0, 5), 1);
        assert_eq!(next_snapshot_pgno(3, 5), 4);
        assert_eq!(next_snapshot_pgno(4, 5), 6);
        let h = Header::new(65536, 16386, 1, 1, 0);
        assert_eq!(h.last_snapshot_pgno(), 16386);
        let h = Header::new(65536, 16385, 1, 1, 0);
        assert_eq!(h.last_snapshot_pgno(), 16384);
        // A small snapshot never meets the lock page.
        assert_eq!(Header::new(4096, 3, 1, 1, 0).last_snapshot_pgno(), 3);
    }

    #[test]
    fn uvarint_matches_go() {
        let mut v = Vec::new();
        put_uvarint(&mut v, 264);
        assert_eq!(v, [0x88, 0x02]);
        v.clear();
        put_uvarint(&mut v, u64::MAX);
        assert_eq!(v.len(), 10);
    }

    #[test]
    fn names_and_keys() {
        assert_eq!(
            object_key("", "app.db", 9, 1, 2),
            "app.db/0009/0000000000000001-0000000000000002.ltx"
        );
        assert_eq!(
            object_key("backups/", "app.db", 0, 10, 10),
            "backups/app.db/0000/000000000000000a-000000000000000a.ltx"
        );
        assert_eq!(
            parse_object_name("000000000000000a-000000000000000b.ltx"),
            Some((10, 11))
        );
        assert_eq!(
            parse_object_name("000000000000000A-000000000000000b.ltx"),
            None
        );
        assert_eq!(
            parse_object_name("00000000000000a-000000000000000b.ltx"),
            None
        );
        assert_eq!(
            parse_object_name("000000000000000c-000000000000000b.ltx"),
            None
        );
        assert_eq!(
            parse_object_name("0000000000000000-000000000000000b.ltx"),
            None
        );
        assert_eq!(
            parse_object_name("000000000000000a-000000000000000b.lt"),
            None
        );
        let k = parse_object_key(
            "b/p",
            "b/p/dir/app.db/0009/0000000000000001-0000000000000002.ltx",
        )
        .unwrap();
        assert_eq!(
            k,
            ObjectKey {
                db: "dir/app.db".into(),
                level: 9,
                min_txid: 1,
                max_txid: 2
            }
        );
        assert_eq!(
            parse_object_key("", "app.db/0000/0000000000000003-0000000000000003.ltx")
                .unwrap()
                .level,
            0
        );
        assert!(
            parse_object_key("x", "app.db/0000/0000000000000003-0000000000000003.ltx").is_none()
        );
        assert!(
            parse_object_key("", "app.db/000A/0000000000000003-0000000000000003.ltx").is_none()
        );
        assert!(
            parse_object_key("", "app.db/0100/0000000000000003-0000000000000003.ltx").is_none()
        );
        assert!(parse_object_key("", "0000/0000000000000003-0000000000000003.ltx").is_none());
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp_ms(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_timestamp_ms(1_735_787_045_678).unwrap(),
            "2025-01-02T03:04:05.678Z"
        );
        assert_eq!(
            format_timestamp_ms(1_735_787_045_600).unwrap(),
            "2025-01-02T03:04:05.6Z"
        );
        for ms in [0, 1, 999, 1_735_787_045_678, 4_102_444_800_000] {
            assert_eq!(
                parse_timestamp(&format_timestamp_ms(ms).unwrap()).unwrap(),
                ms
            );
        }
        assert_eq!(
            parse_timestamp("2025-01-02T03:04:05.678901234Z").unwrap(),
            1_735_787_045_678
        );
        assert_eq!(
            parse_timestamp("2025-01-02T04:04:05.678+01:00").unwrap(),
            1_735_787_045_678
        );
        assert!(parse_timestamp("yesterday").is_err());
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_735_787_045_678);
        assert_eq!(format_system_time(t).unwrap(), "2025-01-02T03:04:05.678Z");
    }

    #[test]
    fn small_round_trip() {
        let h = Header::new(512, 3, 1, 1, 0);
        let pages: Vec<(u32, Vec<u8>)> = (1..=3).map(|p| (p, vec![p as u8; 512])).collect();
        let bytes = encode_to_vec(h, pages.clone()).unwrap();
        let (h2, got) = decode_all(&bytes, "t").unwrap();
        assert_eq!(h2, h);
        assert_eq!(got, pages);
    }
}
