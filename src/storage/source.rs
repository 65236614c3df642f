//! Bodies written out rather than held: what [`Storage::put_stream`] stores.
//!
//! Why: a snapshot of a large database must reach storage without a copy of
//! it in memory or on the local disk (a staging copy can fill the disk the
//! database lives on). So the uploader does not receive bytes, it receives a
//! [`Source`] that writes them, page by page, into whatever the store hands
//! it: an S3 multipart upload that sends each part as it fills, a temporary
//! file beside the target, a cipher in front of either.
//!
//! A source may be written more than once (a failed upload starts again from
//! the first byte) and must write the same bytes every time, or fail. A
//! snapshot's source fails once it is *withdrawn* (its database moved on and
//! the pages it would read are gone), with [`Error::Withdrawn`].
//!
//! [`Storage::put_stream`]: super::Storage::put_stream

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A body that writes itself (see the module documentation).
pub trait Source: Send {
    /// An upper bound of the bytes [`Source::write_to`] writes: S3 sizes its
    /// parts by it so that 10,000 parts always suffice.
    fn size_hint(&self) -> u64;

    /// Writes the whole body to `w` and returns the bytes written. A store
    /// whose writer fails keeps its own error and prefers it to what the
    /// source made of the `io::Error` it saw.
    fn write_to(&mut self, w: &mut dyn Write) -> Result<u64>;
}

/// A file written as it is on disk (a temporary file of an encoded object).
pub struct FileSource {
    path: PathBuf,
    len: u64,
}

impl FileSource {
    /// The file at `path` (opened again on every write).
    pub fn new(path: &Path) -> Result<FileSource> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        Ok(FileSource {
            path: path.to_path_buf(),
            len,
        })
    }
}

impl Source for FileSource {
    fn size_hint(&self) -> u64 {
        self.len
    }

    fn write_to(&mut self, w: &mut dyn Write) -> Result<u64> {
        let mut f = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        io::copy(&mut f, w).map_err(|e| Error::io(&self.path, e))
    }
}

/// A source that counts what it wrote the last time (request metrics).
pub struct Counted<'a> {
    inner: &'a mut dyn Source,
    last: u64,
}

impl<'a> Counted<'a> {
    /// Count what `inner` writes.
    pub fn new(inner: &'a mut dyn Source) -> Counted<'a> {
        Counted { inner, last: 0 }
    }

    /// Bytes written by the last (or only) write.
    pub fn last(&self) -> u64 {
        self.last
    }
}

impl Source for Counted<'_> {
    fn size_hint(&self) -> u64 {
        self.inner.size_hint()
    }

    fn write_to(&mut self, w: &mut dyn Write) -> Result<u64> {
        let n = self.inner.write_to(w)?;
        self.last = n;
        Ok(n)
    }
}

/// Collects a whole source in memory (small bodies, single requests).
pub fn collect(source: &mut dyn Source) -> Result<Vec<u8>> {
    let mut out =
        Vec::with_capacity(usize::try_from(source.size_hint().min(16 << 20)).unwrap_or(0));
    source.write_to(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_source_writes_the_file_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let mut s = FileSource::new(&p).unwrap();
        assert_eq!(s.size_hint(), 5);
        assert_eq!(collect(&mut s).unwrap(), b"hello");
        assert_eq!(collect(&mut s).unwrap(), b"hello");
    }
}
