//! The storage wrapper that encrypts what it stores and decrypts what it
//! reads, streamed chunk by chunk.
//!
//! Why a file of its own: the format and keys (the parent module) are one
//! thing, mapping every storage request onto sealed objects another.

use super::*;

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

    /// Seals the body chunk by chunk as the inner store takes it (a
    /// multipart upload on S3): memory stays at one chunk however large the
    /// snapshot, and nothing is written to local disk.
    fn put_stream(&self, key: &str, body: &mut dyn Source, meta: &Metadata) -> Result<()> {
        let mut sealed = Sealed {
            crypt: self,
            key,
            body,
        };
        self.inner.put_stream(key, &mut sealed, &stored_meta(meta))
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

/// A body as stored encrypted: every write seals it again under a fresh
/// salt (a retried upload never reuses a nonce under one key).
struct Sealed<'a> {
    crypt: &'a CryptStorage,
    key: &'a str,
    body: &'a mut dyn Source,
}

impl Source for Sealed<'_> {
    fn size_hint(&self) -> u64 {
        let plain = self.body.size_hint();
        HEADER_LEN + chunk_count(plain) * TAG + plain
    }

    fn write_to(&mut self, w: &mut dyn Write) -> Result<u64> {
        let sealer = self.crypt.new_sealer(self.key)?;
        let loc = self.crypt.location(self.key);
        w.write_all(&sealer.head.raw)
            .map_err(|e| Error::Crypt(format!("{loc}: {e}")))?;
        let mut out = SealWriter {
            sealer: &sealer,
            w,
            cur: Vec::with_capacity(CHUNK as usize),
            sealed: Vec::with_capacity(STRIDE as usize),
            index: 0,
            written: HEADER_LEN,
        };
        self.body.write_to(&mut out)?;
        // The last chunk (empty for an empty body) carries the last flag.
        out.seal(true)
            .map_err(|e| Error::Crypt(format!("{loc}: {e}")))?;
        Ok(out.written)
    }
}

/// Holds one chunk of plaintext; seals a full one only once more bytes
/// arrive, because the last chunk is sealed differently.
struct SealWriter<'a> {
    sealer: &'a Sealer,
    w: &'a mut dyn Write,
    cur: Vec<u8>,
    sealed: Vec<u8>,
    index: u64,
    written: u64,
}

impl SealWriter<'_> {
    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        self.sealed.clear();
        self.sealer
            .seal(self.index, last, &self.cur, &mut self.sealed)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.w.write_all(&self.sealed)?;
        self.written += self.sealed.len() as u64;
        self.cur.clear();
        self.index += 1;
        Ok(())
    }
}

impl Write for SealWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.cur.len() as u64 == CHUNK {
            self.seal(false)?;
        }
        let n = data.len().min(CHUNK as usize - self.cur.len());
        self.cur.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
