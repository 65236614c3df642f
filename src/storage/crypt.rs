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

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use super::{Metadata, ObjectInfo, Precondition, Storage};
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

/// A [`Storage`] that encrypts everything it stores (see the module doc).
pub struct CryptStorage {
    inner: Arc<dyn Storage>,
    keys: Keyring,
    rng: SystemRandom,
}

impl CryptStorage {
    /// Wraps `inner`: objects are sealed with `keys`' current key.
    pub fn new(inner: Arc<dyn Storage>, keys: Keyring) -> CryptStorage {
        CryptStorage {
            inner,
            keys,
            rng: SystemRandom::new(),
        }
    }

    fn location(&self, key: &str) -> String {
        format!("{}/{key}", self.inner.describe())
    }

    /// A sealer with a fresh salt for a new object.
    fn new_sealer(&self, key: &str) -> Result<Sealer> {
        let mut salt = [0u8; 32];
        self.rng
            .fill(&mut salt)
            .map_err(|_| Error::Config("system random generator failed".into()))?;
        let head = Head::new(&self.keys.current.id, &salt);
        Ok(Sealer {
            key: self.keys.current.object_key(head.salt())?,
            head,
            object: key.to_string(),
        })
    }

    /// A sealer for the stored header `raw`, or why it cannot be opened.
    fn open_sealer(&self, key: &str, raw: &[u8]) -> Result<Sealer> {
        let loc = self.location(key);
        if raw.len() < HEADER_LEN as usize || &raw[..8] != MAGIC {
            return Err(Error::Crypt(format!(
                "{loc}: not encrypted, but an encryption key is configured (a replica is either encrypted or not; see README \"Encryption\")"
            )));
        }
        let mut head = Head {
            raw: [0u8; HEADER_LEN as usize],
        };
        head.raw.copy_from_slice(&raw[..HEADER_LEN as usize]);
        if head.raw[8] != VERSION
            || head.raw[9..12] != [0, 0, 0]
            || head.raw[12..16] != (CHUNK as u32).to_be_bytes()
        {
            return Err(Error::Crypt(format!(
                "{loc}: unsupported encryption format version {}",
                head.raw[8]
            )));
        }
        let Some(k) = self.keys.find(head.key_id()) else {
            return Err(Error::Crypt(format!(
                "{loc}: encrypted with key id {}, which does not match the configured key(s) {}",
                hex(head.key_id()),
                self.keys.ids()
            )));
        };
        Ok(Sealer {
            key: k.object_key(head.salt())?,
            head,
            object: key.to_string(),
        })
    }

    fn seal_all(&self, key: &str, body: &[u8]) -> Result<Vec<u8>> {
        let sealer = self.new_sealer(key)?;
        let n = chunk_count(body.len() as u64);
        let mut out = Vec::with_capacity(body.len() + (HEADER_LEN + n * TAG) as usize);
        out.extend_from_slice(&sealer.head.raw);
        if body.is_empty() {
            sealer.seal(0, true, &[], &mut out)?;
        }
        for (i, chunk) in body.chunks(CHUNK as usize).enumerate() {
            let i = i as u64;
            sealer.seal(i, i + 1 == n, chunk, &mut out)?;
        }
        Ok(out)
    }

    fn open_all(&self, key: &str, mut stored: Vec<u8>) -> Result<Vec<u8>> {
        let loc = self.location(key);
        let sealer = self.open_sealer(key, &stored)?;
        let plain = plain_size(stored.len() as u64).ok_or_else(|| {
            Error::Crypt(format!(
                "{loc}: truncated encrypted object ({} bytes)",
                stored.len()
            ))
        })?;
        let n = chunk_count(plain);
        let mut out = Vec::with_capacity(plain as usize);
        for (i, sealed) in stored[HEADER_LEN as usize..]
            .chunks_mut(STRIDE as usize)
            .enumerate()
        {
            let i = i as u64;
            out.extend_from_slice(sealer.open(i, i + 1 == n, sealed, &loc)?);
        }
        Ok(out)
    }

    fn translate(&self, mut info: ObjectInfo) -> ObjectInfo {
        // An impossible size stays as stored; reading the object reports why.
        info.size = plain_size(info.size).unwrap_or(info.size);
        info
    }
}

/// Metadata as stored for an encrypted object.
fn stored_meta(meta: &Metadata) -> Metadata {
    meta.iter()
        .filter(|(name, _)| *name != META_SHA256)
        .collect()
}

impl Storage for CryptStorage {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        let sealed = self.seal_all(key, body)?;
        self.inner.put(key, &sealed, &stored_meta(meta))
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        let (stored, mut info) = self.inner.get_with_info(key)?;
        let plain = self.open_all(key, stored)?;
        info.size = plain.len() as u64;
        let digest = ring::digest::digest(&ring::digest::SHA256, &plain);
        info.metadata.insert(META_SHA256, hex(digest.as_ref()));
        Ok((plain, info))
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        if len == Some(0) {
            return Ok(Vec::new());
        }
        let loc = self.location(key);
        let first = start / CHUNK;
        // Chunks first..=last cover the range; one byte past them tells
        // whether `last` is the object's final chunk without a HEAD.
        let last = len.map(|l| start.saturating_add(l - 1) / CHUNK);
        let to = last.and_then(|last| {
            (last + 1)
                .checked_mul(STRIDE)
                .and_then(|x| x.checked_add(HEADER_LEN + 1))
        });
        let Some(from) = first
            .checked_mul(STRIDE)
            .and_then(|x| x.checked_add(HEADER_LEN))
        else {
            return Ok(Vec::new());
        };
        let (head_raw, body) = if first == 0 {
            let mut b = self.inner.get_range(key, 0, to)?;
            if b.len() < HEADER_LEN as usize {
                // Not even a header: let open_sealer say why.
                self.open_sealer(key, &b)?;
                return Err(Error::Crypt(format!("{loc}: truncated encrypted object")));
            }
            let body = b.split_off(HEADER_LEN as usize);
            (b, body)
        } else {
            let h = self.inner.get_range(key, 0, Some(HEADER_LEN))?;
            (h, self.inner.get_range(key, from, to.map(|t| t - from))?)
        };
        let sealer = self.open_sealer(key, &head_raw)?;
        if body.is_empty() {
            // The range starts at or past the end of the object.
            return Ok(Vec::new());
        }
        let mut body = body;
        let more = match last.and_then(|l| (l - first + 1).checked_mul(STRIDE)) {
            Some(want) if body.len() as u64 > want => {
                body.truncate(want as usize);
                true
            }
            _ => false,
        };
        let mut out = Vec::new();
        let pieces = body.len().div_ceil(STRIDE as usize);
        for (j, sealed) in body.chunks_mut(STRIDE as usize).enumerate() {
            let index = first + j as u64;
            let is_last = !more && j + 1 == pieces;
            if (sealed.len() as u64) < TAG || (!is_last && sealed.len() as u64 != STRIDE) {
                return Err(Error::Crypt(format!(
                    "{loc}: truncated encrypted object at chunk {index}"
                )));
            }
            out.extend_from_slice(sealer.open(index, is_last, sealed, &loc)?);
        }
        let skip = (start - first * CHUNK) as usize;
        if skip >= out.len() {
            return Ok(Vec::new());
        }
        out.drain(..skip);
        if let Some(l) = len {
            out.truncate(usize::try_from(l).unwrap_or(usize::MAX));
        }
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        Ok(self.inner.head(key)?.map(|i| self.translate(i)))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .inner
            .list(prefix, start_after)?
            .into_iter()
            .map(|i| self.translate(i))
            .collect())
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        Ok(self
            .inner
            .list_page(prefix, start_after, max_keys)?
            .into_iter()
            .map(|i| self.translate(i))
            .collect())
    }

    /// Streams `path` through the cipher into a temporary file beside it,
    /// then hands that to the inner store (multipart on S3): memory stays at
    /// one chunk however large the snapshot.
    fn put_file(&self, key: &str, path: &Path, meta: &Metadata) -> Result<()> {
        let sealer = self.new_sealer(key)?;
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let mut tmp = crate::tmpfiles::create(dir)?;
        let mut src = File::open(path).map_err(|e| Error::io(path, e))?;
        let tmp_path = tmp.path().to_path_buf();
        let io_err = |e| Error::io(&tmp_path, e);
        tmp.write_all(&sealer.head.raw).map_err(io_err)?;
        let mut cur = read_chunk(&mut src, path)?;
        let mut out = Vec::with_capacity(STRIDE as usize);
        let mut index = 0u64;
        loop {
            let next = if cur.len() as u64 == CHUNK {
                read_chunk(&mut src, path)?
            } else {
                Vec::new()
            };
            let last = next.is_empty();
            out.clear();
            sealer.seal(index, last, &cur, &mut out)?;
            tmp.write_all(&out).map_err(io_err)?;
            if last {
                break;
            }
            cur = next;
            index += 1;
        }
        tmp.flush().map_err(io_err)?;
        let tmp = tmp.into_temp_path();
        self.inner.put_file(key, &tmp, &stored_meta(meta))
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> Result<bool> {
        let sealed = self.seal_all(key, body)?;
        self.inner
            .put_conditional(key, &sealed, &stored_meta(meta), cond)
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        match self.inner.get_with_etag(key)? {
            Some((stored, etag)) => Ok(Some((self.open_all(key, stored)?, etag))),
            None => Ok(None),
        }
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.inner.delete_many(keys)
    }

    fn check(&self) -> Result<()> {
        self.inner.check()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Reads up to one chunk (fewer bytes only at the end of the file).
fn read_chunk(src: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(CHUNK as usize);
    Read::take(&mut *src, CHUNK)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    fn store(dir: &Path, key: [u8; 32]) -> CryptStorage {
        let inner = Arc::new(FileStorage::create(dir).unwrap());
        CryptStorage::new(inner, Keyring::new(Key::from_bytes(key), vec![]))
    }

    #[test]
    fn sizes_round_trip() {
        for plain in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
            let stored = HEADER_LEN + plain + chunk_count(plain) * TAG;
            assert_eq!(plain_size(stored), Some(plain), "{plain}");
        }
        assert_eq!(plain_size(HEADER_LEN + 15), None);
        assert_eq!(plain_size(HEADER_LEN + STRIDE + 16), None); // empty last chunk
    }

    #[test]
    fn ranges_match_plaintext() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), [7; 32]);
        for size in [0usize, 5, CHUNK as usize, 2 * CHUNK as usize + 100] {
            let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            s.put("db/0000/x.ltx", &body, &Metadata::new()).unwrap();
            assert_eq!(s.get("db/0000/x.ltx").unwrap(), body);
            assert_eq!(s.head("db/0000/x.ltx").unwrap().unwrap().size, size as u64);
            let c = CHUNK as usize;
            for (start, len) in [
                (0, Some(100)),
                (0, None),
                (c - 3, Some(10)),
                (c, Some(c)),
                (c + 1, None),
                (size, Some(5)),
                (size + 10, None),
                (1, Some(2 * c)),
                (3, Some(usize::MAX - 10)),
            ] {
                let want: Vec<u8> = body
                    .iter()
                    .skip(start)
                    .take(len.unwrap_or(usize::MAX))
                    .copied()
                    .collect();
                let got = s
                    .get_range("db/0000/x.ltx", start as u64, len.map(|l| l as u64))
                    .unwrap();
                assert_eq!(got, want, "size {size} start {start} len {len:?}");
            }
        }
    }

    #[test]
    fn key_ids_and_hex() {
        let k = Key::from_hex(&"ab".repeat(32), "t").unwrap();
        assert_eq!(k.bytes, [0xab; 32]);
        assert_eq!(k.id_hex().len(), 16);
        assert!(!format!("{k:?}").contains("abab"));
        assert!(Key::from_hex("abc", "t").is_err());
        let e = Key::from_hex(&"zz".repeat(32), "t")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("zzzz"), "{e}");
    }
}
