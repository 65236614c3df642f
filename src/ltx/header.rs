//! The LTX header, trailer and page index entries: fixed layouts, checked
//! on decode.
//!
//! Why a file of its own: encoder and decoder share them, and a header is
//! also read alone (resume points, restore planning).

use super::*;

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
    pub(super) fn last_snapshot_pgno(&self) -> u32 {
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

pub(super) fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

pub(super) fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

pub(super) fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}
