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

/// The most bytes an LTX file of `pages` pages of `page_size` bytes can
/// take (every page incompressible).
pub fn max_encoded_size(pages: u64, page_size: u32) -> usize {
    // Per page: its header, the compressed block's length and the block;
    // the index entry: three uvarints (at most 10 bytes each).
    let per_page = (PAGE_HEADER_SIZE + 4 + max_compressed_page_size(page_size) + 30) as u64;
    let fixed = (HEADER_SIZE + PAGE_HEADER_SIZE + 10 + 8 + TRAILER_SIZE) as u64;
    usize::try_from(pages.saturating_mul(per_page).saturating_add(fixed)).unwrap_or(usize::MAX)
}

/// Largest compressed payload the decoder accepts for one page. A real LZ4
/// block of `page_size` bytes is never larger (LZ4's bound is
/// `n + n/255 + 16`); anything bigger is corruption, refused before any
/// allocation.
pub fn max_compressed_page_size(page_size: u32) -> usize {
    lz4_flex::block::get_maximum_output_size(page_size as usize)
}

use crate::util::system_time_ms;

mod decode;
mod encode;
mod header;
mod keys;
mod ranged;
#[cfg(test)]
mod tests;
mod timestamp;

pub use decode::*;
pub use encode::*;
pub use header::*;
pub use keys::*;
pub use ranged::*;
pub use timestamp::*;
