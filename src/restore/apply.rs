//! Downloading the plan's objects in parallel and applying them in order.
//!
//! Why a file of its own: the bounded-memory transfer (a window of objects in
//! flight, big ones spooled to disk) and the page application are the part
//! that sets a restore's speed.

use super::*;

/// True when `o` is fetched by parallel ranged GETs.
pub(super) fn is_ranged(o: &ReplicaObject, opts: &RestoreOptions) -> bool {
    o.size >= opts.ranged_threshold
}

/// Download the plan's objects in parallel and apply them in order into
/// `file`; returns (page size, pages) of the result.
pub(super) fn download_and_apply(
    storage: &dyn Storage,
    plan: &Plan,
    file: &File,
    tmp_path: &Path,
    spool_dir: &Path,
    opts: &RestoreOptions,
) -> Result<(u32, u32)> {
    let n = plan.objects.len();
    let threads = opts.parallel.clamp(1, 256).min(n);
    let window = threads * 2;
    let names: Vec<String> = plan
        .objects
        .iter()
        .map(|o| format!("{}/{}", storage_root(&plan.location, &plan.db), o.key))
        .collect();
    let cancel = AtomicBool::new(false);
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<usize>();
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<(usize, Result<Fetched>)>();
    let mut progress = Progress::new(opts.progress, &plan.db, plan.total_bytes());

    std::thread::scope(|s| {
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            let cancel = &cancel;
            let names = &names;
            s.spawn(move || {
                for i in job_rx {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = fetch(
                        storage,
                        &plan.objects[i],
                        &names[i],
                        spool_dir,
                        opts.spool_threshold,
                    );
                    if res_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        let result = (|| {
            let mut applier = Applier {
                file,
                tmp_path,
                page_size: 0,
                first: String::new(),
                commit: 0,
                buf: Vec::new(),
            };
            let mut pending: BTreeMap<usize, Fetched> = BTreeMap::new();
            let mut sent = 0usize;
            let mut ahead_bytes = 0u64;
            for (i, (object, name)) in plan.objects.iter().zip(&names).enumerate() {
                // Keep the window full: the next object always, more while
                // the count and byte budgets allow.
                while sent < n
                    && (sent <= i
                        || (sent < i + window
                            && ahead_bytes + plan.objects[sent].size <= opts.window_bytes))
                {
                    // Large objects are fetched by ranges when their turn
                    // comes (src/restore/ranged.rs), not by this pool.
                    if !is_ranged(&plan.objects[sent], opts) {
                        ahead_bytes += plan.objects[sent].size;
                        job_tx
                            .send(sent)
                            .map_err(|_| Error::Restore("download threads stopped".into()))?;
                    }
                    sent += 1;
                }
                if is_ranged(object, opts) {
                    applier.apply_ranged(storage, object, name, opts, &mut progress)?;
                    continue;
                }
                let fetched = loop {
                    if let Some(f) = pending.remove(&i) {
                        break f;
                    }
                    let (j, r) = res_rx
                        .recv()
                        .map_err(|_| Error::Restore("download threads stopped".into()))?;
                    pending.insert(j, r?);
                };
                applier.apply(object, name, fetched)?;
                ahead_bytes = ahead_bytes.saturating_sub(object.size);
                progress.add(object.size);
            }
            Ok((applier.page_size, applier.commit))
        })();
        cancel.store(true, Ordering::Relaxed);
        drop(job_tx);
        progress.finish();
        result
    })
}

pub(super) struct Applier<'a> {
    pub(super) file: &'a File,
    pub(super) tmp_path: &'a Path,
    page_size: u32,
    first: String,
    commit: u32,
    buf: Vec<u8>,
}

impl Applier<'_> {
    fn apply(&mut self, o: &ReplicaObject, name: &str, fetched: Fetched) -> Result<()> {
        match fetched {
            Fetched::Memory(bytes) => self.apply_from(o, name, bytes.as_slice()),
            Fetched::Spooled(f) => self.apply_from(o, name, BufReader::with_capacity(1 << 20, f)),
        }
    }

    /// Check an object's header before its pages are applied: the first
    /// object must be a snapshot, every page size the same.
    pub(super) fn start_object(&mut self, h: &ltx::Header, name: &str) -> Result<()> {
        if self.page_size == 0 {
            if !h.is_snapshot() {
                return Err(Error::ltx(
                    name,
                    "the first object of a restore must be a snapshot (min txid 1)",
                ));
            }
            self.page_size = h.page_size;
            self.first = name.to_string();
            self.buf = vec![0u8; h.page_size as usize];
        } else if h.page_size != self.page_size {
            return Err(Error::ltx(
                name,
                format!(
                    "page size {} differs from page size {} of {}",
                    h.page_size, self.page_size, self.first
                ),
            ));
        }
        Ok(())
    }

    /// Write one page at its place in the database.
    pub(super) fn write_page(&self, pgno: u32, page: &[u8]) -> Result<()> {
        self.file
            .write_all_at(page, u64::from(pgno - 1) * u64::from(self.page_size))
            .map_err(|e| Error::io(self.tmp_path, e))
    }

    /// After an object's pages: the database has exactly `commit` pages.
    pub(super) fn finish_object(&mut self, h: &ltx::Header) -> Result<()> {
        self.file
            .set_len(u64::from(h.commit) * u64::from(self.page_size))
            .map_err(|e| Error::io(self.tmp_path, e))?;
        self.commit = h.commit;
        Ok(())
    }

    fn apply_from<R: Read>(&mut self, o: &ReplicaObject, name: &str, r: R) -> Result<()> {
        let mut dec = Decoder::new(r, name)?;
        let h = *dec.header();
        check_header_matches(&h, o, name)?;
        self.start_object(&h, name)?;
        let ps = u64::from(self.page_size);
        while let Some(pgno) = dec.next_page(&mut self.buf)? {
            self.file
                .write_all_at(&self.buf, u64::from(pgno - 1) * ps)
                .map_err(|e| Error::io(self.tmp_path, e))?;
        }
        self.finish_object(&h)
    }
}
