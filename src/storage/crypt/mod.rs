//! [`CryptStorage`]: client-side encryption as a [`Storage`] wrapper.
//!
//! Why a wrapper: upload, restore, verify, list, start-up resume and
//! compaction all reach objects through the [`Storage`] trait. Encrypting at
//! that seam makes every one of them work unchanged: they put and get LTX
//! bytes, the wrapper stores and returns ciphertext underneath. Sizes in
//! listings and `head` are translated back to plaintext sizes, and ranged
//! reads of the plaintext fetch only the chunks that cover the range, so
//! restore's header probes and 16 MiB ranged spooling keep their cost.
//!
//! # Object format (version 1)
//!
//! ```text
//! header (56 bytes): magic "WSYNCENC" | version u8 = 1 | 3 zero bytes
//!                    | chunk size u32 BE (65536) | key id [8] | salt [32]
//! chunk 0 .. n-1:    AES-256-GCM ciphertext of ≤ chunk-size plaintext bytes | tag [16]
//! ```
//!
//! Every chunk but the last holds exactly `chunk size` plaintext bytes; the
//! last holds 1..=chunk size (an empty object is one empty chunk). The
//! plaintext size therefore follows from the stored size alone.
//!
//! **Nonces are never reused.** Each object is sealed with its own AES key,
//! derived with HKDF-SHA256 from the master key and a fresh 256-bit random
//! salt (stored in the header). Within an object the 96-bit nonce is the
//! chunk index. A (key, nonce) pair could only repeat if two objects drew the
//! same 256-bit salt, which does not happen; retrying a PUT re-encrypts with a
//! new salt. Random 96-bit nonces under one key would instead put a birthday
//! bound on the number of objects a key may seal; per-object keys remove it.
//!
//! **Associated data** of every chunk is: the whole 56-byte header (so the key
//! id, salt and chunk size cannot be altered), the object's key relative to the
//! store prefix (`db/level/min-max.ltx`: an object copied or replayed under
//! another name fails), the chunk index (reordering fails) and a last-chunk
//! flag (truncation at a chunk boundary fails).
//!
//! The key id (first 8 bytes of SHA-256 over a domain tag and the key) lets
//! walsync say *which* key an object needs, and pick it among several
//! decryption keys during rotation ([`Keyring`]).
//!
//! **Plain objects are refused** when a key is configured: a replica is
//! either encrypted or not. Accepting plain LTX would let anyone with write
//! access to the bucket replace encrypted history by forged plaintext objects
//! (a downgrade). To encrypt an existing replica, replicate to a new prefix.
//!
//! The `walsync-sha256` metadata is not stored for encrypted objects: it
//! would be a hash of the plaintext, readable by anyone with read access to
//! the bucket (a confirmation oracle for guessed content). The GCM tags
//! authenticate every byte instead; [`Storage::get_with_info`] reports the
//! SHA-256 of the plaintext it authenticated under that name, so callers that
//! record or compare it (verify, the test oracle) work unchanged.
//!
//! Encrypted objects are not LTX files: Litestream cannot read them.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Metadata, ObjectInfo, Precondition, Source, Storage};
use crate::error::{Error, Result};

pub use crate::ltx::{encrypted_reason, ENCRYPTED_MAGIC as MAGIC, KEY_ENV};
use crate::storage::META_SHA256;
use crate::util::hex;
/// Format version written and read.
const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: u64 = 56;
/// Plaintext bytes per chunk.
pub const CHUNK: u64 = 64 << 10;
/// GCM tag size.
const TAG: u64 = 16;
/// Stored bytes per full chunk.
const STRIDE: u64 = CHUNK + TAG;

/// One 256-bit key and its id. `Debug` prints only the id.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; 32],
    id: [u8; 8],
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {})", self.id_hex())
    }
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"walsync key id v1\0");
        ctx.update(&bytes);
        let digest = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        Key { bytes, id }
    }

    /// Parses 64 hex digits (surrounding whitespace ignored). `what` names the
    /// source in the error, which never contains the text itself.
    pub fn from_hex(text: &str, what: &str) -> Result<Key> {
        let t = text.trim();
        let bad = || {
            Error::Config(format!(
                "{what}: an encryption key must be 32 raw bytes or 64 hex digits"
            ))
        };
        if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let mut bytes = [0u8; 32];
        for (i, out) in bytes.iter_mut().enumerate() {
            *out = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Key::from_bytes(bytes))
    }

    /// Reads a key file: exactly 32 raw bytes, or 64 hex digits. Refuses a
    /// file that group or others may read, or that is not a regular file.
    pub fn from_file(path: &Path) -> Result<Key> {
        let what = path.display().to_string();
        let md = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        if !md.is_file() {
            return Err(Error::Config(format!(
                "{what}: key file is not a regular file"
            )));
        }
        let mode = md.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Config(format!(
                "{what}: key file is readable by group or others (mode {mode:04o}); run chmod 600 {what}"
            )));
        }
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if let Ok(bytes) = <[u8; 32]>::try_from(raw.as_slice()) {
            return Ok(Key::from_bytes(bytes));
        }
        let text = std::str::from_utf8(&raw).map_err(|_| {
            Error::Config(format!(
                "{what}: an encryption key must be 32 raw bytes or 64 hex digits"
            ))
        })?;
        Key::from_hex(text, &what)
    }

    /// The key id as 16 hex digits.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// The AES key for the object whose header carries `salt`.
    fn object_key(&self, salt: &[u8]) -> Result<LessSafeKey> {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(&self.bytes);
        let okm = prk
            .expand(&[b"walsync object key v1"], &aead::AES_256_GCM)
            .map_err(|_| Error::Config("HKDF expansion failed".into()))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

/// The key new objects are sealed with, and every key that may open one.
#[derive(Clone, Debug)]
pub struct Keyring {
    current: Key,
    /// Decryption-only keys (older keys during a rotation).
    old: Vec<Key>,
}

impl Keyring {
    /// A keyring sealing with `current` and opening with it and `old`.
    pub fn new(current: Key, old: Vec<Key>) -> Keyring {
        Keyring { current, old }
    }

    /// From the command line: `--encryption-key-file` (else the
    /// `WALSYNC_ENCRYPTION_KEY` variable) and `--decryption-key-file`s.
    /// `None` when no key is configured at all.
    pub fn from_options(
        key_file: Option<&str>,
        decryption_files: &[String],
        env: Option<String>,
    ) -> Result<Option<Keyring>> {
        let current = match (key_file, env.filter(|v| !v.trim().is_empty())) {
            (Some(path), _) => Some(Key::from_file(Path::new(path))?),
            (None, Some(text)) => Some(Key::from_hex(&text, KEY_ENV)?),
            (None, None) => None,
        };
        let old = decryption_files
            .iter()
            .map(|p| Key::from_file(Path::new(p)))
            .collect::<Result<Vec<_>>>()?;
        match current {
            Some(current) => Ok(Some(Keyring::new(current, old))),
            None if old.is_empty() => Ok(None),
            None => Err(Error::Config(
                "--decryption-key-file needs --encryption-key-file (or WALSYNC_ENCRYPTION_KEY) for new objects".into(),
            )),
        }
    }

    /// The key id new objects carry.
    pub fn current_id(&self) -> String {
        self.current.id_hex()
    }

    fn find(&self, id: &[u8]) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
    }

    fn ids(&self) -> String {
        std::iter::once(&self.current)
            .chain(&self.old)
            .map(Key::id_hex)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Plaintext size of an object stored with `stored` bytes, if that size is
/// possible at all.
pub fn plain_size(stored: u64) -> Option<u64> {
    let body = stored.checked_sub(HEADER_LEN)?;
    if body < TAG {
        return None;
    }
    let chunks = body.div_ceil(STRIDE);
    let plain = body - chunks * TAG;
    // The last chunk must hold 1..=CHUNK bytes, or the object is one empty chunk.
    let last = plain - (chunks - 1) * CHUNK;
    (last <= CHUNK && (last > 0 || chunks == 1)).then_some(plain)
}

/// Number of chunks of a `plain`-byte object.
fn chunk_count(plain: u64) -> u64 {
    plain.div_ceil(CHUNK).max(1)
}

/// A parsed object header.
struct Head {
    raw: [u8; HEADER_LEN as usize],
}

impl Head {
    fn new(key_id: &[u8; 8], salt: &[u8; 32]) -> Head {
        let mut raw = [0u8; HEADER_LEN as usize];
        raw[..8].copy_from_slice(MAGIC);
        raw[8] = VERSION;
        raw[12..16].copy_from_slice(&(CHUNK as u32).to_be_bytes());
        raw[16..24].copy_from_slice(key_id);
        raw[24..56].copy_from_slice(salt);
        Head { raw }
    }

    fn key_id(&self) -> &[u8] {
        &self.raw[16..24]
    }

    fn salt(&self) -> &[u8] {
        &self.raw[24..56]
    }
}

/// Seals or opens the chunks of one object.
struct Sealer {
    key: LessSafeKey,
    head: Head,
    object: String,
}

impl Sealer {
    fn aad(&self, index: u64, last: bool) -> Vec<u8> {
        let mut aad = Vec::with_capacity(HEADER_LEN as usize + self.object.len() + 24);
        aad.extend_from_slice(&self.head.raw);
        aad.extend_from_slice(&(self.object.len() as u64).to_be_bytes());
        aad.extend_from_slice(self.object.as_bytes());
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(u8::from(last));
        aad
    }

    fn nonce(index: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&index.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// Appends the sealed chunk `index` of `plain` to `out`.
    fn seal(&self, index: u64, last: bool, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Self::nonce(index),
                Aad::from(self.aad(index, last)),
                &mut out[start..],
            )
            .map_err(|_| Error::Config(format!("{}: encryption failed", self.object)))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens the sealed chunk `index` in place; returns its plaintext.
    fn open<'a>(
        &self,
        index: u64,
        last: bool,
        sealed: &'a mut [u8],
        location: &str,
    ) -> Result<&'a mut [u8]> {
        self.key
            .open_in_place(Self::nonce(index), Aad::from(self.aad(index, last)), sealed)
            .map_err(|_| {
                Error::Crypt(format!(
                    "{location}: authentication failed at chunk {index}: the object was altered, truncated or stored under another name"
                ))
            })
    }
}

#[cfg(test)]
mod tests;
mod wrapper;

pub use wrapper::*;
