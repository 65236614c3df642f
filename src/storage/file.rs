//! [`FileStorage`]: objects as plain files under a local directory.
//!
//! An object `a/b.ltx` is the file `<root>/a/b.ltx`, byte for byte, so a
//! replica directory can be inspected, copied or served with ordinary tools.
//!
//! Durability: `put` and `put_stream` write a temporary file next to the target
//! (`put_stream` writes its source in bounded pieces, never whole), fsync it,
//! rename it over the target and fsync the directory. The rename is the
//! commit point: a reader sees the old object or the new one, never a torn one,
//! and a crash leaves at most a temporary file behind (ignored by `list`).
//!
//! Metadata lives in a sidecar file `.<name>.meta` beside the object, one
//! `name=value` line per entry. A sidecar was chosen over extended attributes
//! because xattrs are not supported (or limited in size) on every file system
//! (tmpfs before Linux 6.6, some network and FUSE mounts), are dropped by many
//! copy tools, and would need `unsafe` FFI or another dependency. The sidecar
//! is renamed into place just before the object, so the object never becomes
//! visible without its metadata; an overwrite interrupted between the two
//! renames can leave the old object with the new metadata, which is harmless
//! for walsync, whose keys are written once.
//!
//! Names starting with `.` are private to this backend (temporary files and
//! sidecars): keys with such a segment are rejected and `list` skips them.
//! Directories are created on demand and never removed, so a concurrent `put`
//! can never lose its parent directory to a `delete_many`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::{err, hex, validate_key, Metadata, ObjectInfo, Precondition, Source, Storage};
use crate::error::{Error, Result, StorageErrorKind};

/// Counter making temporary file names unique between threads of one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A [`Storage`] backed by a local directory (`file:///dir`).
#[derive(Debug, Clone)]
pub struct FileStorage {
    root: PathBuf,
}

impl FileStorage {
    /// Uses `root` as the store, creating the directory if needed.
    pub fn create(root: impl AsRef<Path>) -> Result<FileStorage> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        Ok(FileStorage { root })
    }

    /// The directory holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn location(&self, key: &str) -> String {
        format!("file://{}/{}", self.root.display(), key)
    }

    /// The file of `key`, after checking the key is storable.
    fn path_of(&self, key: &str) -> Result<PathBuf> {
        let reason = validate_key(key).err().or_else(|| {
            key.split('/')
                .any(|seg| seg.starts_with('.'))
                .then(|| format!("object key {key:?} has a segment starting with '.'"))
        });
        match reason {
            Some(reason) => Err(err(self.location(key), StorageErrorKind::Other, reason)),
            None => Ok(self.root.join(key)),
        }
    }

    /// Maps an I/O error on `key` to a storage error.
    fn io_err(&self, key: &str, e: io::Error) -> Error {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => StorageErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => StorageErrorKind::AccessDenied,
            io::ErrorKind::Interrupted | io::ErrorKind::TimedOut => StorageErrorKind::Transient,
            _ => StorageErrorKind::Other,
        };
        err(self.location(key), kind, e.to_string())
    }

    fn not_found(&self, key: &str) -> Error {
        err(
            self.location(key),
            StorageErrorKind::NotFound,
            "no such object",
        )
    }

    /// Opens `key` for reading; a missing file or a directory is `NotFound`.
    fn open_object(&self, key: &str) -> Result<(File, fs::Metadata)> {
        let path = self.path_of(key)?;
        let file = File::open(&path).map_err(|e| self.io_err(key, e))?;
        let md = file.metadata().map_err(|e| self.io_err(key, e))?;
        if !md.is_file() {
            return Err(self.not_found(key));
        }
        Ok((file, md))
    }

    fn info(&self, key: &str, md: &fs::Metadata, metadata: Metadata) -> ObjectInfo {
        ObjectInfo {
            key: key.to_string(),
            size: md.len(),
            last_modified: md.modified().ok(),
            metadata,
        }
    }

    /// Reads the sidecar of `key` (empty metadata when there is none).
    fn read_meta(&self, key: &str, path: &Path) -> Result<Metadata> {
        let text = match fs::read_to_string(sidecar_path(path)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Metadata::new()),
            Err(e) => return Err(self.io_err(key, e)),
        };
        let mut meta = Metadata::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once('=').ok_or_else(|| {
                err(
                    self.location(key),
                    StorageErrorKind::Other,
                    format!("corrupt metadata sidecar line {line:?}"),
                )
            })?;
            meta.insert(name, value);
        }
        Ok(meta)
    }

    /// Writes `bytes` into a fresh temporary file in `dir` and fsyncs it.
    fn write_temp(&self, key: &str, dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        self.fill_temp(key, dir, name, |f| f.write_all(bytes))
    }

    /// A fresh temporary file in `dir` that `fill` writes, fsynced.
    fn fill_temp(
        &self,
        key: &str,
        dir: &Path,
        name: &str,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<PathBuf> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            fill(&mut f)?;
            f.sync_all()
        })();
        match result {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(self.io_err(key, e))
            }
        }
    }

    /// `put` and `put_stream`: the object's bytes come from `fill`, written
    /// into a temporary file beside the target and renamed over it (see the
    /// module doc for the order of the renames).
    fn store(
        &self,
        key: &str,
        meta: &Metadata,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> Result<()> {
        let path = self.path_of(key)?;
        meta.validate()
            .map_err(|reason| err(self.location(key), StorageErrorKind::Other, reason))?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fs::create_dir_all(&dir).map_err(|e| self.io_err(key, e))?;

        let data_tmp = self.fill_temp(key, &dir, &name, fill)?;
        let sidecar = sidecar_path(&path);
        let meta_result = if meta.is_empty() {
            match fs::remove_file(&sidecar) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(self.io_err(key, e)),
                _ => Ok(()),
            }
        } else {
            let text: String = meta.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            self.write_temp(key, &dir, &format!("{name}.meta"), text.as_bytes())
                .and_then(|tmp| {
                    fs::rename(&tmp, &sidecar).map_err(|e| {
                        let _ = fs::remove_file(&tmp);
                        self.io_err(key, e)
                    })
                })
        };
        if let Err(e) = meta_result {
            let _ = fs::remove_file(&data_tmp);
            return Err(e);
        }
        if let Err(e) = fs::rename(&data_tmp, &path) {
            let _ = fs::remove_file(&data_tmp);
            return Err(self.io_err(key, e));
        }
        fsync_dir(&dir).map_err(|e| self.io_err(key, e))
    }
}

/// A writer that keeps its first error (the source only passes on a copy).
struct Tap<W> {
    inner: W,
    failed: Option<io::Error>,
}

impl<W: Write> Write for Tap<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.inner.write(b).inspect_err(|e| {
            if self.failed.is_none() {
                self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            }
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `<dir>/.<name>.meta` for `<dir>/<name>`.
fn sidecar_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.meta"))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl FileStorage {
    /// Runs `f` holding an exclusive `flock` on `<root>/.walsync-conditional.lock`:
    /// conditional writes check and store under it, so they are atomic
    /// between threads and processes sharing the directory (local file
    /// systems; `flock` over NFS depends on the server).
    fn with_write_lock<T>(&self, key: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let path = self.root.join(".walsync-conditional.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| self.io_err(key, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io_err(key, e.into()))?;
        let result = f();
        drop(file); // closing releases the lock
        result
    }
}

impl Storage for FileStorage {
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> Result<bool> {
        self.with_write_lock(key, || {
            let current = self.get_with_etag(key)?;
            let ok = match (cond, &current) {
                (Precondition::Absent, None) => true,
                (Precondition::Matches(want), Some((_, etag))) => want == etag,
                _ => false,
            };
            if ok {
                self.put(key, body, meta)?;
            }
            Ok(ok)
        })
    }

    /// The ETag of a file object is the SHA-256 of its bytes.
    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        match self.get(key) {
            Ok(body) => {
                let etag = hex(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
                Ok(Some((body, etag)))
            }
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        self.store(key, meta, |f| f.write_all(body))
    }

    /// Written into the temporary file through a 64 KiB buffer: memory
    /// stays the same whatever the size. A source that fails leaves no
    /// temporary file; the error returned is the file system's when writing
    /// failed (a full disk is a storage error), else the source's own (a
    /// withdrawn snapshot).
    fn put_stream(&self, key: &str, body: &mut dyn Source, meta: &Metadata) -> Result<()> {
        let mut failed = None;
        let stored = self.store(key, meta, |f| {
            let mut w = Tap {
                inner: io::BufWriter::with_capacity(64 << 10, f),
                failed: None,
            };
            match body.write_to(&mut w) {
                Ok(_) => w.inner.flush(),
                Err(e @ Error::Withdrawn(_)) => {
                    failed = Some(e);
                    Err(io::Error::other("withdrawn"))
                }
                Err(e) => match w.failed.take() {
                    Some(own) => Err(own),
                    None => {
                        failed = Some(e);
                        Err(io::Error::other("source failed"))
                    }
                },
            }
        });
        match failed {
            Some(e) => Err(e),
            None => stored,
        }
    }

    /// The whole listing cut to `max_keys`: a directory has no pages, and
    /// [`FileStorage::list`] already reads only the prefix's directory.
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let mut all = self.list(prefix, start_after)?;
        all.truncate(max_keys);
        Ok(all)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        let (mut file, md) = self.open_object(key)?;
        let mut body = Vec::with_capacity(md.len() as usize);
        file.read_to_end(&mut body)
            .map_err(|e| self.io_err(key, e))?;
        let meta = self.read_meta(key, &self.root.join(key))?;
        let mut info = self.info(key, &md, meta);
        info.size = body.len() as u64;
        Ok((body, info))
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        let (mut file, md) = self.open_object(key)?;
        if start >= md.len() || len == Some(0) {
            return Ok(Vec::new());
        }
        let avail = md.len() - start;
        let want = len.map_or(avail, |l| l.min(avail));
        file.seek(SeekFrom::Start(start))
            .map_err(|e| self.io_err(key, e))?;
        let mut body = Vec::with_capacity(want as usize);
        file.take(want)
            .read_to_end(&mut body)
            .map_err(|e| self.io_err(key, e))?;
        Ok(body)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = self.path_of(key)?;
        let md = match fs::metadata(&path) {
            Ok(md) if md.is_file() => md,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_err(key, e)),
        };
        let meta = self.read_meta(key, &path)?;
        Ok(Some(self.info(key, &md, meta)))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        // Only the directory holding the prefix's last complete segment can
        // contain matching keys: walk that subtree, not the whole store.
        let base = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        if !base.is_empty() && validate_key(base).is_err() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let mut stack = vec![(self.root.join(base), base.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // The prefix names a file, not a directory: nothing below it.
                Err(_) if !dir.is_dir() => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                let name = match entry.file_name().into_string() {
                    Ok(name) if !name.starts_with('.') => name,
                    _ => continue, // private file, or not a key we could have written
                };
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let md = match entry.metadata() {
                    Ok(md) => md,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // deleted meanwhile
                    Err(e) => return Err(Error::io(entry.path(), e)),
                };
                if md.is_dir() {
                    // Descend only if keys below could match the prefix.
                    let below = format!("{key}/");
                    if below.starts_with(prefix) || prefix.starts_with(&below) {
                        stack.push((entry.path(), key));
                    }
                } else if md.is_file()
                    && key.starts_with(prefix)
                    && start_after.is_none_or(|after| key.as_str() > after)
                {
                    out.push(self.info(&key, &md, Metadata::new()));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            let path = self.path_of(key)?;
            for p in [sidecar_path(&path), path] {
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io_err(key, e)),
                }
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let md = fs::metadata(&self.root).map_err(|e| Error::io(&self.root, e))?;
        if !md.is_dir() {
            return Err(Error::Config(format!(
                "{}: not a directory",
                self.root.display()
            )));
        }
        // Prove we can write here: create and remove a private temp file.
        let tmp = self.write_temp(".check", &self.root, "check", b"")?;
        fs::remove_file(&tmp).map_err(|e| Error::io(&tmp, e))
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_is_hidden_next_to_object() {
        assert_eq!(
            sidecar_path(Path::new("/r/a/b.ltx")),
            PathBuf::from("/r/a/.b.ltx.meta")
        );
    }

    #[test]
    fn dot_segments_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::create(dir.path()).unwrap();
        let e = s.put("a/.hidden", b"x", &Metadata::new()).unwrap_err();
        assert_eq!(e.storage_kind(), Some(StorageErrorKind::Other));
        assert!(s.put("a/../b", b"x", &Metadata::new()).is_err());
    }
}
