//! Reading a SQLite write-ahead log: verify it, cut it at commit frames.
//!
//! Why this module exists: the WAL is the only place where the changes of a
//! WAL-mode database exist before SQLite checkpoints them into the database
//! file. walsync ships exactly the transactions SQLite itself would consider
//! committed, so the reader follows SQLite's own recovery rules
//! (`walIndexRecover` in `wal.c`):
//!
//! - the 32-byte header carries the magic (which also selects the byte order
//!   of the checksum words), the format version, the page size and two salts;
//! - every frame (24-byte header + one page) must carry the header's salts and
//!   continue the cumulative checksum chain that starts at the header;
//! - the log ends at the first frame that fails either test, and only frames up
//!   to the last *commit frame* (non-zero "database size" field) are committed.
//!
//! A checkpoint followed by a new write *restarts* the WAL: the header gets
//! salt-1 + 1 and a fresh salt-2, and new frames overwrite the old ones from
//! the start without shrinking the file. A reader that compares file sizes
//! misses every restart; this reader compares salts ([`resume`]).
//!
//! The parsing functions work on byte slices so they can be tested and fuzzed
//! on any input; [`WalMap`] maps the real file with `memmap2` and is the only
//! `unsafe` in the crate.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// Size of the WAL file header.
pub const WAL_HEADER_SIZE: usize = 32;
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: usize = 24;
/// Magic for a WAL whose checksums use little-endian words.
pub const MAGIC_LE: u32 = 0x377f_0682;
/// Magic for a WAL whose checksums use big-endian words.
pub const MAGIC_BE: u32 = 0x377f_0683;
/// The only WAL format version SQLite has ever written.
pub const WAL_VERSION: u32 = 3_007_000;
/// Smallest page size SQLite supports.
pub const MIN_PAGE_SIZE: u32 = 512;
/// Largest page size SQLite supports.
pub const MAX_PAGE_SIZE: u32 = 65_536;

/// Why a WAL cannot be read at all. A WAL that is merely cut short or ends in
/// garbage is *not* an error: the log simply ends there (see [`StopReason`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalError {
    /// Fewer than 32 bytes: no complete header.
    ShortHeader(usize),
    /// The first four bytes are not a WAL magic number.
    BadMagic(u32),
    /// A format version other than 3007000.
    BadVersion(u32),
    /// Page size not a power of two in 512..=65536.
    BadPageSize(u32),
    /// The header's own checksum does not match its first 24 bytes.
    HeaderChecksum,
    /// A saved position does not fit this WAL (offset not on a frame boundary,
    /// page size or byte order differs).
    BadPosition(String),
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::ShortHeader(n) => {
                write!(f, "file is {n} bytes, shorter than the 32-byte WAL header")
            }
            WalError::BadMagic(m) => write!(f, "bad magic 0x{m:08x} (not a SQLite WAL)"),
            WalError::BadVersion(v) => write!(f, "unsupported WAL format version {v}"),
            WalError::BadPageSize(p) => write!(f, "invalid page size {p}"),
            WalError::HeaderChecksum => write!(f, "header checksum mismatch"),
            WalError::BadPosition(s) => write!(f, "saved position does not fit: {s}"),
        }
    }
}

impl std::error::Error for WalError {}

impl WalError {
    /// Attach the WAL's path, giving the crate's one-line error.
    pub fn at(self, path: impl AsRef<Path>) -> Error {
        Error::wal(path, self.to_string())
    }
}

/// A running WAL checksum: the two 32-bit words SQLite chains through the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Checksum(pub u32, pub u32);

/// Continue the WAL checksum `init` over `data`, whose length must be a
/// multiple of 8 (headers and pages always are). Words are read little-endian
/// for [`MAGIC_LE`] logs and big-endian for [`MAGIC_BE`] logs.
///
/// This is SQLite's `walChecksumBytes`: for each pair of words (x0, x1),
/// `s1 += x0 + s2; s2 += x1 + s1`, all wrapping.
#[inline]
pub fn checksum(big_endian: bool, init: Checksum, data: &[u8]) -> Checksum {
    debug_assert!(data.len() % 8 == 0);
    let (mut s1, mut s2) = (init.0, init.1);
    let chunks = data.chunks_exact(8);
    if big_endian {
        for c in chunks {
            let x0 = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let x1 = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            s1 = s1.wrapping_add(x0).wrapping_add(s2);
            s2 = s2.wrapping_add(x1).wrapping_add(s1);
        }
    } else {
        for c in chunks {
            let x0 = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let x1 = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
            s1 = s1.wrapping_add(x0).wrapping_add(s2);
            s2 = s2.wrapping_add(x1).wrapping_add(s1);
        }
    }
    Checksum(s1, s2)
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The 32-byte WAL header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalHeader {
    /// True for magic 0x377f0683 (big-endian checksum words).
    pub big_endian: bool,
    /// Page size in bytes.
    pub page_size: u32,
    /// Checkpoint sequence number.
    pub checkpoint_seq: u32,
    /// Salt-1: incremented by one at every WAL restart.
    pub salt1: u32,
    /// Salt-2: a fresh random value at every WAL restart.
    pub salt2: u32,
    /// Checksum of the first 24 header bytes; the seed of the frame chain.
    pub checksum: Checksum,
}

impl WalHeader {
    /// Parse and verify the header at the start of `buf`.
    #[inline]
    pub fn parse(buf: &[u8]) -> Result<WalHeader, WalError> {
        let Some(h) = buf.get(..WAL_HEADER_SIZE) else {
            return Err(WalError::ShortHeader(buf.len()));
        };
        let magic = be32(h, 0);
        let big_endian = match magic {
            MAGIC_LE => false,
            MAGIC_BE => true,
            other => return Err(WalError::BadMagic(other)),
        };
        let version = be32(h, 4);
        if version != WAL_VERSION {
            return Err(WalError::BadVersion(version));
        }
        let page_size = be32(h, 8);
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(WalError::BadPageSize(page_size));
        }
        let checksum = Checksum(be32(h, 24), be32(h, 28));
        if self::checksum(big_endian, Checksum(0, 0), &h[..24]) != checksum {
            return Err(WalError::HeaderChecksum);
        }
        Ok(WalHeader {
            big_endian,
            page_size,
            checkpoint_seq: be32(h, 12),
            salt1: be32(h, 16),
            salt2: be32(h, 20),
            checksum,
        })
    }

    /// Bytes in one frame: frame header plus one page.
    pub fn frame_size(&self) -> u64 {
        FRAME_HEADER_SIZE as u64 + u64::from(self.page_size)
    }
}

/// The 24-byte header in front of every page in the WAL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Page number this frame holds.
    pub pgno: u32,
    /// For a commit frame the database size in pages after the commit; else 0.
    pub commit: u32,
    /// Must equal the WAL header's salt-1.
    pub salt1: u32,
    /// Must equal the WAL header's salt-2.
    pub salt2: u32,
    /// Cumulative checksum up to and including this frame.
    pub checksum: Checksum,
}

impl FrameHeader {
    /// Parse a frame header (no validation; see [`Scanner`]).
    #[inline]
    pub fn parse(b: &[u8; FRAME_HEADER_SIZE]) -> FrameHeader {
        FrameHeader {
            pgno: be32(b, 0),
            commit: be32(b, 4),
            salt1: be32(b, 8),
            salt2: be32(b, 12),
            checksum: Checksum(be32(b, 16), be32(b, 20)),
        }
    }

    /// True when this frame ends a transaction.
    pub fn is_commit(&self) -> bool {
        self.commit != 0
    }
}

/// Where shipping stopped: enough to continue reading the same WAL generation
/// later without rescanning it from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// Salt-1 of the generation.
    pub salt1: u32,
    /// Salt-2 of the generation.
    pub salt2: u32,
    /// Page size of the log.
    pub page_size: u32,
    /// Checksum byte order of the log.
    pub big_endian: bool,
    /// Byte offset of the next frame to read (just past a commit frame, or 32).
    pub offset: u64,
    /// Running checksum at `offset`.
    pub checksum: Checksum,
}

impl Position {
    /// The start of the generation described by `header`: no frame read yet.
    pub fn start(header: &WalHeader) -> Position {
        Position {
            salt1: header.salt1,
            salt2: header.salt2,
            page_size: header.page_size,
            big_endian: header.big_endian,
            offset: WAL_HEADER_SIZE as u64,
            checksum: header.checksum,
        }
    }

    /// Number of frames before `offset`.
    pub fn frame_index(&self) -> u64 {
        (self.offset - WAL_HEADER_SIZE as u64)
            / (FRAME_HEADER_SIZE as u64 + u64::from(self.page_size))
    }

    fn same_generation(&self, h: &WalHeader) -> bool {
        self.salt1 == h.salt1 && self.salt2 == h.salt2
    }
}

/// One frame of a committed transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Page number.
    pub pgno: u32,
    /// Byte offset of the frame header in the WAL (the page follows 24 bytes later).
    pub offset: u64,
}

/// One committed transaction: frames up to and including a commit frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The frames in log order (a page may appear more than once; the last wins).
    pub frames: Vec<Frame>,
    /// Database size in pages after this transaction.
    pub commit: u32,
    /// Position just past the commit frame and its copies.
    pub end: Position,
    /// Copies of the commit frame folded into this transaction (see
    /// [`Scanner`]): sector padding, or — indistinguishable by content —
    /// further one-frame commits writing the same page with the same bytes.
    /// Only SQLite's commit counter can tell how many of them were commits.
    pub copies: u32,
}

impl Transaction {
    /// Byte offset of the first frame.
    pub fn start_offset(&self) -> u64 {
        self.frames.first().map_or(self.end.offset, |f| f.offset)
    }
}

/// Why a scan stopped reading frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The file ends exactly at a frame boundary.
    EndOfFile,
    /// The file ends inside a frame (a write in progress, or a torn file).
    PartialFrame,
    /// A frame carries other salts: left over from an earlier generation.
    SaltMismatch,
    /// A frame's checksum breaks the chain.
    ChecksumMismatch,
    /// A frame with page number 0 (never written by SQLite).
    ZeroPage,
    /// The caller's frame limit was reached.
    Limit,
}

/// Iterates the committed transactions of one WAL generation, starting at a
/// [`Position`]. Frames after the last commit frame are never yielded.
pub struct Scanner<'a> {
    data: &'a [u8],
    pos: Position,
    stop: Option<StopReason>,
    frame_limit: u64,
}

impl<'a> Scanner<'a> {
    /// Start scanning `data` (the whole WAL file) at `pos`. The WAL header in
    /// `data` must belong to the same generation as `pos` (see [`resume`]).
    pub fn new(data: &'a [u8], pos: Position) -> Result<Scanner<'a>, WalError> {
        let header = WalHeader::parse(data)?;
        if !pos.same_generation(&header) {
            return Err(WalError::BadPosition(format!(
                "salts {:08x}/{:08x} differ from the WAL header's {:08x}/{:08x}",
                pos.salt1, pos.salt2, header.salt1, header.salt2
            )));
        }
        if pos.page_size != header.page_size || pos.big_endian != header.big_endian {
            return Err(WalError::BadPosition(
                "page size or byte order differs from the WAL header".into(),
            ));
        }
        let frame = header.frame_size();
        if pos.offset < WAL_HEADER_SIZE as u64 || (pos.offset - WAL_HEADER_SIZE as u64) % frame != 0
        {
            return Err(WalError::BadPosition(format!(
                "offset {} is not on a frame boundary",
                pos.offset
            )));
        }
        Ok(Scanner {
            data,
            pos,
            stop: None,
            frame_limit: u64::MAX,
        })
    }

    /// Read at most `frames` frames past the start position (the transaction
    /// being read when the limit hits is not yielded).
    pub fn with_frame_limit(mut self, frames: u64) -> Self {
        self.frame_limit = frames;
        self
    }

    /// Position after the last transaction yielded so far.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Why the scan ended; `None` while transactions may still follow.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop
    }

    /// Verify the frame at `offset` against the salts and the running
    /// checksum `sum`; returns its header, its page and the new checksum.
    fn read_frame(
        &self,
        offset: u64,
        sum: Checksum,
    ) -> Result<(FrameHeader, &'a [u8], Checksum), StopReason> {
        let frame_size = FRAME_HEADER_SIZE + self.pos.page_size as usize;
        let Ok(start) = usize::try_from(offset) else {
            return Err(StopReason::PartialFrame);
        };
        let Some(bytes) = self.data.get(start..).filter(|r| !r.is_empty()) else {
            return Err(StopReason::EndOfFile);
        };
        let Some(frame) = bytes.get(..frame_size) else {
            return Err(StopReason::PartialFrame);
        };
        let (head, page) = frame.split_at(FRAME_HEADER_SIZE);
        let mut hb = [0u8; FRAME_HEADER_SIZE];
        hb.copy_from_slice(head);
        let fh = FrameHeader::parse(&hb);
        if fh.salt1 != self.pos.salt1 || fh.salt2 != self.pos.salt2 {
            return Err(StopReason::SaltMismatch);
        }
        if fh.pgno == 0 {
            return Err(StopReason::ZeroPage);
        }
        let sum = checksum(self.pos.big_endian, sum, &head[..8]);
        let sum = checksum(self.pos.big_endian, sum, page);
        if sum != fh.checksum {
            return Err(StopReason::ChecksumMismatch);
        }
        Ok((fh, page, sum))
    }

    fn read_transaction(&mut self) -> Result<Transaction, StopReason> {
        let frame_size = (FRAME_HEADER_SIZE + self.pos.page_size as usize) as u64;
        let mut offset = self.pos.offset;
        let mut sum = self.pos.checksum;
        let mut frames = Vec::new();
        loop {
            if self.frame_limit == 0 {
                return Err(StopReason::Limit);
            }
            let (fh, page, next) = self.read_frame(offset, sum)?;
            sum = next;
            self.frame_limit -= 1;
            frames.push(Frame {
                pgno: fh.pgno,
                offset,
            });
            offset += frame_size;
            if !fh.is_commit() {
                continue;
            }
            // With `synchronous=FULL` and no powersafe overwrite, SQLite pads
            // a commit to a sector boundary by writing the commit frame again
            // (`walFrames`, nExtra). The copies belong to this transaction:
            // counting them as transactions would break the commit count.
            // A later one-frame commit of the same page with the same bytes
            // (a no-op `UPDATE` run twice) looks exactly like such a copy; the
            // copies are counted so the caller can settle it with SQLite's
            // commit counter (the state after either reading is the same).
            let mut copies = 0u32;
            while self.frame_limit > 0 {
                match self.read_frame(offset, sum) {
                    Ok((pad, pad_page, next))
                        if pad.is_commit()
                            && pad.pgno == fh.pgno
                            && pad.commit == fh.commit
                            && pad_page == page =>
                    {
                        sum = next;
                        self.frame_limit -= 1;
                        offset += frame_size;
                        copies += 1;
                    }
                    _ => break,
                }
            }
            let end = Position {
                offset,
                checksum: sum,
                ..self.pos
            };
            return Ok(Transaction {
                frames,
                commit: fh.commit,
                end,
                copies,
            });
        }
    }
}

impl Iterator for Scanner<'_> {
    type Item = Transaction;

    fn next(&mut self) -> Option<Transaction> {
        if self.stop.is_some() {
            return None;
        }
        match self.read_transaction() {
            Ok(tx) => {
                self.pos = tx.end;
                Some(tx)
            }
            Err(reason) => {
                self.stop = Some(reason);
                None
            }
        }
    }
}

/// How the WAL on disk relates to the last shipped [`Position`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The WAL has no header (zero bytes, e.g. after `wal_checkpoint(TRUNCATE)`
    /// or before the first write): nothing to read.
    Empty,
    /// No previous position was given: the generation starts at this position.
    Fresh(Position),
    /// Same generation as the saved position: continue at its offset.
    Continue(Position),
    /// The WAL restarted exactly once since the saved position (salt-1 + 1,
    /// new salt-2): read the new generation from its first frame. Whether the
    /// old generation had been shipped to its end is the caller's knowledge.
    Restarted(Position),
    /// Anything else (salt jump, file shrunk within the generation, page size
    /// change): the continuity is lost and the caller must take a snapshot.
    Reset(String),
}

/// Compare the WAL in `data` with the last shipped position.
///
/// Errors are reserved for a file that is not a WAL (bad magic, version, page
/// size, header checksum, a partial header).
pub fn resume(data: &[u8], last: Option<&Position>) -> Result<Resume, WalError> {
    if data.is_empty() {
        return Ok(Resume::Empty);
    }
    let header = WalHeader::parse(data)?;
    let Some(last) = last else {
        return Ok(Resume::Fresh(Position::start(&header)));
    };
    if last.same_generation(&header) {
        if last.page_size != header.page_size || last.big_endian != header.big_endian {
            return Ok(Resume::Reset(format!(
                "page size changed from {} to {} within one generation",
                last.page_size, header.page_size
            )));
        }
        if (data.len() as u64) < last.offset {
            return Ok(Resume::Reset(format!(
                "WAL shrank to {} bytes, below the shipped offset {}",
                data.len(),
                last.offset
            )));
        }
        return Ok(Resume::Continue(*last));
    }
    if header.salt1 == last.salt1.wrapping_add(1) && header.salt2 != last.salt2 {
        return Ok(Resume::Restarted(Position::start(&header)));
    }
    Ok(Resume::Reset(format!(
        "WAL salts jumped from {:08x}/{:08x} to {:08x}/{:08x}",
        last.salt1, last.salt2, header.salt1, header.salt2
    )))
}

/// Read one page out of the WAL bytes for a frame yielded by [`Scanner`].
pub fn frame_page<'a>(data: &'a [u8], page_size: u32, frame: &Frame) -> Option<&'a [u8]> {
    let start = usize::try_from(frame.offset).ok()? + FRAME_HEADER_SIZE;
    data.get(start..start + page_size as usize)
}

pub use super::walmap::WalMap;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_chains_like_one_pass() {
        let data: Vec<u8> = (0..64u8).collect();
        for be in [false, true] {
            let whole = checksum(be, Checksum(1, 2), &data);
            let part = checksum(be, checksum(be, Checksum(1, 2), &data[..16]), &data[16..]);
            assert_eq!(whole, part);
        }
    }

    #[test]
    fn short_and_garbage_headers_are_errors() {
        assert_eq!(WalHeader::parse(&[]), Err(WalError::ShortHeader(0)));
        assert_eq!(
            WalHeader::parse(&[0x37; 31]),
            Err(WalError::ShortHeader(31))
        );
        assert!(matches!(
            WalHeader::parse(&[0u8; 32]),
            Err(WalError::BadMagic(0))
        ));
    }
}
