//! Merging objects: newest page wins, pages past the final size dropped.
//!
//! Why a file of its own: a merged object must restore exactly like its
//! inputs applied in order; this is the byte work, with pages spooled to a
//! temp file past a size so memory stays bounded.

use super::*;

/// Where merged pages wait for the output: memory while small, then a
/// temporary file (a level-3 merge of a large database must not hold the
/// database in memory).
struct PageStore {
    page_size: usize,
    mem: Vec<u8>,
    file: Option<(File, u64)>,
    tmp_dir: PathBuf,
    /// Page number → offset of its newest version in the store.
    pages: std::collections::BTreeMap<u32, u64>,
}

impl PageStore {
    fn new(page_size: u32, tmp_dir: &Path) -> PageStore {
        PageStore {
            page_size: page_size as usize,
            mem: Vec::new(),
            file: None,
            tmp_dir: tmp_dir.to_path_buf(),
            pages: std::collections::BTreeMap::new(),
        }
    }

    fn put(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        let at = match &mut self.file {
            Some((f, len)) => {
                f.write_all_at(data, *len)
                    .map_err(|e| Error::io(&self.tmp_dir, e))?;
                let at = *len;
                *len += data.len() as u64;
                at
            }
            None if (self.mem.len() + data.len()) as u64 > MEMORY_LIMIT => {
                let mut f = tempfile::tempfile_in(&self.tmp_dir)
                    .map_err(|e| Error::io(&self.tmp_dir, e))?;
                f.write_all(&self.mem)
                    .and_then(|()| f.write_all(data))
                    .map_err(|e| Error::io(&self.tmp_dir, e))?;
                let at = self.mem.len() as u64;
                self.file = Some((f, at + data.len() as u64));
                self.mem = Vec::new();
                at
            }
            None => {
                let at = self.mem.len() as u64;
                self.mem.extend_from_slice(data);
                at
            }
        };
        self.pages.insert(pgno, at);
        Ok(())
    }

    fn read(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        match &self.file {
            Some((f, _)) => f
                .read_exact_at(buf, at)
                .map_err(|e| Error::io(&self.tmp_dir, e)),
            None => {
                let at = at as usize;
                buf.copy_from_slice(&self.mem[at..at + self.page_size]);
                Ok(())
            }
        }
    }

    /// The database shrank to `commit` pages.
    fn truncate(&mut self, commit: u32) {
        let _ = self.pages.split_off(&(commit.saturating_add(1)));
    }
}

/// Where a merge works: temporary files, a flag that stops it between
/// objects, and the cache of just-stored bodies.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// Directory for temporary files.
    pub tmp_dir: &'a Path,
    /// Set to stop between objects (shutdown).
    pub cancel: &'a AtomicBool,
    /// Bodies read instead of GETs, when the daemon keeps them.
    pub recent: Option<&'a Recent>,
}

/// Merge `inputs` — a chain (each starting at or before the txid after the
/// previous one's end, ending after it) of one database — into one object at
/// `level`. Every input is verified (SHA-256 metadata, header against name,
/// LTX checksums) before anything is produced. `root` names objects in
/// messages (`s3://bucket/prefix`); `cancel` stops between inputs.
pub fn merge(
    storage: &dyn Storage,
    root: &str,
    inputs: &[ReplicaObject],
    ctx: &Ctx<'_>,
) -> Result<Encoded> {
    let (tmp_dir, cancel, recent) = (ctx.tmp_dir, ctx.cancel, ctx.recent);
    let (Some(first_obj), Some(_)) = (inputs.first(), inputs.last()) else {
        return Err(Error::Config("internal: nothing to merge".into()));
    };
    let mut store: Option<PageStore> = None;
    let mut first: Option<Header> = None;
    let mut last: Option<Header> = None;
    let mut low = u32::MAX;
    let mut buf = Vec::new();
    for o in inputs {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Config("compaction stopped (shutting down)".into()));
        }
        let name = format!("{root}/{}", o.key);
        let reader: Box<dyn std::io::Read + Send> = match recent.and_then(|r| r.take(&o.key)) {
            Some(bytes) => Box::new(std::io::Cursor::new(bytes)),
            None => replica::fetch(storage, o, &name, tmp_dir, SPOOL_THRESHOLD)?.reader(),
        };
        let mut dec = Decoder::new(reader, name.clone())?;
        let h = *dec.header();
        replica::check_header_matches(&h, o, &name)?;
        if let Some(prev) = last {
            if h.page_size != prev.page_size {
                return Err(Error::ltx(
                    &name,
                    format!(
                        "page size {} differs from {} of the objects before it; not merged",
                        h.page_size, prev.page_size
                    ),
                ));
            }
            if h.min_txid > prev.max_txid + 1 || h.max_txid <= prev.max_txid {
                return Err(Error::ltx(
                    &name,
                    format!(
                        "txids {}..{} do not continue txid {}; not merged",
                        h.min_txid, h.max_txid, prev.max_txid
                    ),
                ));
            }
        }
        let st = store.get_or_insert_with(|| PageStore::new(h.page_size, tmp_dir));
        buf.resize(h.page_size as usize, 0);
        while let Some(pgno) = dec.next_page(&mut buf)? {
            st.put(pgno, &buf)?;
        }
        st.truncate(h.commit);
        low = low.min(h.commit);
        first.get_or_insert(h);
        last = Some(h);
    }
    let (Some(first), Some(last), Some(store)) = (first, last, store) else {
        return Err(Error::Config("internal: nothing to merge".into()));
    };
    debug_assert_eq!(first.min_txid, first_obj.min_txid);
    let mut header = Header::new(
        last.page_size,
        last.commit,
        first.min_txid,
        last.max_txid,
        last.timestamp_ms,
    );
    // The position after the last input: a daemon resuming from this
    // object continues exactly where it would from that input.
    header.wal_offset = last.wal_offset;
    header.wal_size = last.wal_size;
    header.wal_salt1 = last.wal_salt1;
    header.wal_salt2 = last.wal_salt2;
    header.node_id = last.node_id;
    let commit = last.commit;
    let lock = ltx::lock_pgno(last.page_size);
    let ps = last.page_size as usize;
    // Pages above `low` that no input rewrote after the database last
    // shrank below them read as zeros after sequential application.
    let zero_from = low.saturating_add(1);
    let zero_fill = zero_from..=commit;
    let count = store.pages.len() as u64 + u64::from(commit.saturating_sub(low));
    segment::encode_with(header, count * ps as u64, tmp_dir, |w| {
        let mut page = vec![0u8; ps];
        let zero = vec![0u8; ps];
        for (&pgno, &at) in store.pages.range(..zero_from) {
            store.read(at, &mut page)?;
            w.page(pgno, &page)?;
        }
        for pgno in zero_fill.filter(|p| *p != lock) {
            match store.pages.get(&pgno) {
                Some(&at) => {
                    store.read(at, &mut page)?;
                    w.page(pgno, &page)?;
                }
                None => w.page(pgno, &zero)?,
            }
        }
        Ok(())
    })
}

/// Store an encoded object under `key` (streamed from its temp file when it
/// has one).
pub(super) fn put_encoded(
    storage: &dyn Storage,
    key: &str,
    enc: Encoded,
    recent: Option<&Recent>,
) -> Result<u64> {
    let mut enc = enc;
    match &mut enc.body {
        Body::Memory(b) => {
            storage.put(key, b, &enc.meta)?;
            let n = b.len() as u64;
            if let Some(r) = recent {
                r.offer(key, std::mem::take(b));
            }
            Ok(n)
        }
        Body::File(p) => {
            let n = std::fs::metadata(&*p).map_err(|e| Error::io(&*p, e))?.len();
            storage.put_file(key, p, &enc.meta).map(|()| n)
        }
        Body::Stream(s) => {
            let mut counted = crate::storage::source::Counted::new(s.as_mut());
            storage.put_stream(key, &mut counted, &enc.meta)?;
            Ok(counted.last())
        }
    }
}
