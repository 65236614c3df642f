//! Fetching one object with its checks, and reading an object's header.
//!
//! Why a file of its own: restore, compaction and `verify` all download
//! objects they are about to trust; each body is checked against its
//! `walsync-sha256` metadata ([`sha256_mismatch`]) and each header against
//! the object's name in one place, so no reader skips a check.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::ReplicaObject;
use crate::error::{Error, Result, StorageErrorKind};
use crate::ltx::{self, Header};
use crate::storage::{sha256_mismatch, Storage};

/// Objects at least this large are streamed to a temporary file with ranged
/// GETs instead of being held in memory.
pub const SPOOL_THRESHOLD: u64 = 64 << 20;
/// Size of one ranged GET when spooling a large object.
pub const RANGE_CHUNK: u64 = 16 << 20;

/// A downloaded object whose `walsync-sha256` metadata (when present)
/// matched its bytes.
pub enum Fetched {
    /// Held in memory.
    Memory(Vec<u8>),
    /// Spooled to an anonymous temporary file, positioned at its start.
    Spooled(File),
}

impl Fetched {
    /// Its bytes, from memory or from the spool file.
    pub fn reader(self) -> Box<dyn Read + Send> {
        match self {
            Fetched::Memory(bytes) => Box::new(io::Cursor::new(bytes)),
            Fetched::Spooled(f) => Box::new(BufReader::with_capacity(1 << 20, f)),
        }
    }
}

/// Fetch one object, check its SHA-256 metadata when present. Objects of
/// `spool_threshold` bytes or more are streamed through ranged GETs of
/// [`RANGE_CHUNK`] into an anonymous temporary file in `spool_dir`; `name`
/// names the object in messages.
pub fn fetch(
    storage: &dyn Storage,
    o: &ReplicaObject,
    name: &str,
    spool_dir: &Path,
    spool_threshold: u64,
) -> Result<Fetched> {
    let (body, meta, digest) = if o.size >= spool_threshold {
        let info = storage.head(&o.key)?.ok_or_else(|| {
            Error::storage(
                name,
                StorageErrorKind::NotFound,
                "object listed but gone (deleted during the restore?)",
            )
        })?;
        let mut file = tempfile::tempfile_in(spool_dir).map_err(|e| Error::io(spool_dir, e))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut off = 0u64;
        while off < info.size {
            let want = RANGE_CHUNK.min(info.size - off);
            let chunk = storage.get_range(&o.key, off, Some(want))?;
            if chunk.len() as u64 != want {
                // The network's fault, not the object's: a follower
                // retries it like any transient storage failure.
                return Err(Error::storage(
                    name,
                    StorageErrorKind::Transient,
                    format!(
                        "short read at offset {off}: got {} bytes of {want}",
                        chunk.len()
                    ),
                ));
            }
            ctx.update(&chunk);
            file.write_all(&chunk)
                .map_err(|e| Error::io(spool_dir, e))?;
            off += want;
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(spool_dir, e))?;
        (
            Fetched::Spooled(file),
            info.metadata,
            ctx.finish().as_ref().to_vec(),
        )
    } else {
        let (bytes, info) = storage.get_with_info(&o.key)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        (Fetched::Memory(bytes), info.metadata, digest)
    };
    if let Some(why) = sha256_mismatch(&meta, &digest) {
        return Err(Error::ltx(name, why));
    }
    Ok(body)
}

/// The LTX header of `key` with one ranged GET of its first
/// [`ltx::HEADER_SIZE`] bytes; `name` names it in messages.
pub fn read_header(storage: &dyn Storage, key: &str, name: &str) -> Result<Header> {
    let head = storage.get_range(key, 0, Some(ltx::HEADER_SIZE as u64))?;
    Header::decode(&head).map_err(|reason| Error::ltx(name, reason))
}

/// Refuse a header whose txid range is not the one its object's name says.
pub fn check_header_matches(h: &Header, o: &ReplicaObject, name: &str) -> Result<()> {
    if h.min_txid != o.min_txid || h.max_txid != o.max_txid {
        return Err(Error::ltx(
            name,
            format!(
                "header says txids {}..{} but the object name says {}..{}",
                h.min_txid, h.max_txid, o.min_txid, o.max_txid
            ),
        ));
    }
    Ok(())
}
