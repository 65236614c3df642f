//! `walsync verify`: can this backup be trusted.
//!
//! Why a file of its own: verification downloads and checks every object of
//! the chain to the newest txid (SHA-256, header against name, LTX
//! structure and checksums) and optionally restores it, collecting every
//! problem instead of stopping at the first.

use super::*;

/// How [`verify_db`] runs.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Also restore the newest txid into a temporary directory and run
    /// `PRAGMA integrity_check` on the result.
    pub restore: bool,
    /// Objects downloaded at once.
    pub parallel: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            restore: false,
            parallel: crate::defaults::RESTORE_PARALLEL,
        }
    }
}

/// What [`verify_db`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Database name.
    pub db: String,
    /// Objects checked.
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Newest txid in the replica.
    pub newest_txid: u64,
    /// Objects in the restore chain of the newest txid.
    pub chain: usize,
    /// The txid restored (with `restore`).
    pub restored: Option<u64>,
    /// One line per problem; empty when everything checks.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for humans.
    pub fn line(&self) -> String {
        let chain = if self.chain > 0 {
            format!("restorable from {} objects", self.chain)
        } else {
            "NOT restorable".into()
        };
        let mut s = format!(
            "{}: {}: {} objects, {} bytes checked; newest txid {} {chain}",
            self.db,
            if self.ok() { "ok" } else { "FAILED" },
            self.objects,
            self.bytes,
            self.newest_txid,
        );
        if let Some(t) = self.restored {
            s.push_str(&format!("; restored txid {t}, integrity_check ok"));
        }
        if !self.ok() {
            s.push_str(&format!("; {} problem(s)", self.problems.len()));
        }
        s
    }
}

/// Objects at least this large are checked through ranged GETs, streamed.
const STREAM_THRESHOLD: u64 = 64 << 20;

/// Reads an object through ranged GETs, hashing what it returns.
struct RangedReader<'a> {
    storage: &'a dyn Storage,
    key: &'a str,
    size: u64,
    off: u64,
    buf: Vec<u8>,
    pos: usize,
    sha: ring::digest::Context,
}

impl Read for RangedReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.off >= self.size {
                return Ok(0);
            }
            let want = replica::fetch::RANGE_CHUNK.min(self.size - self.off);
            let chunk = self
                .storage
                .get_range(self.key, self.off, Some(want))
                .map_err(io::Error::other)?;
            if chunk.len() as u64 != want {
                return Err(io::Error::other(format!(
                    "short read at offset {}: got {} bytes of {want}",
                    self.off,
                    chunk.len()
                )));
            }
            self.sha.update(&chunk);
            self.off += want;
            self.buf = chunk;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Download one object and check everything about it: its `walsync-sha256`
/// metadata when present, its header against its name, the LTX structure
/// and file checksum, and that nothing follows the trailer.
pub fn verify_object(storage: &dyn Storage, o: &ReplicaObject) -> Result<ltx::Summary> {
    let name = o.key.as_str();
    // A SHA-256 mismatch is reported before any LTX error: it says the
    // object changed after it was written, the more useful diagnosis.
    let (summary, size) = if o.size >= STREAM_THRESHOLD {
        let info = storage.head(&o.key)?.ok_or_else(|| {
            Error::Restore(format!("{name}: listed but gone (deleted meanwhile?)"))
        })?;
        let mut r = RangedReader {
            storage,
            key: &o.key,
            size: info.size,
            off: 0,
            buf: Vec::new(),
            pos: 0,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
        };
        let summary = ltx::verify(&mut r, name);
        // Hash whatever the decoder did not read too.
        io::copy(&mut r, &mut io::sink()).map_err(|e| Error::ltx(name, e.to_string()))?;
        check_sha(name, &info.metadata, r.sha.finish().as_ref())?;
        (summary?, info.size)
    } else {
        let (bytes, info) = storage.get_with_info(&o.key)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        check_sha(name, &info.metadata, digest.as_ref())?;
        (ltx::verify(bytes.as_slice(), name)?, bytes.len() as u64)
    };
    replica::check_header_matches(&summary.header, o, name)?;
    if summary.size != size {
        return Err(Error::ltx(
            name,
            format!(
                "{} bytes follow the trailer ({} of {size} bytes decoded)",
                size - summary.size.min(size),
                summary.size
            ),
        ));
    }
    Ok(summary)
}

fn check_sha(name: &str, meta: &Metadata, digest: &[u8]) -> Result<()> {
    match sha256_mismatch(meta, digest) {
        Some(why) => Err(Error::ltx(name, why)),
        None => Ok(()),
    }
}

/// Verify database `db`: plan the chain to the newest txid, download and
/// check every object, and with `opts.restore` restore the newest txid into
/// a temporary directory and run `PRAGMA integrity_check`. Every problem is
/// collected (one line each), not just the first.
pub fn verify_db(storage: &dyn Storage, db: &str, opts: &VerifyOptions) -> VerifyReport {
    let mut report = VerifyReport {
        db: db.trim_matches('/').to_string(),
        ..VerifyReport::default()
    };
    let replica = match replica::list(storage, db) {
        Ok(r) => r,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    if replica.is_empty() {
        report.problems.push(format!(
            "{}: no replica at {} (no objects)",
            report.db, replica.location
        ));
        return report;
    }
    report.newest_txid = replica.newest_txid();
    let plan = match replica.plan(storage, Target::Latest) {
        Ok(p) => {
            report.chain = p.objects.len();
            Some(p)
        }
        Err(e) => {
            report.problems.push(e.to_string());
            None
        }
    };

    // Every object, `parallel` at a time; problems in key order.
    let objects = &replica.objects;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<u64>>>> =
        Mutex::new((0..objects.len()).map(|_| None).collect());
    let threads = opts.parallel.clamp(1, 64).min(objects.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(o) = objects.get(i) else { break };
                let r = verify_object(storage, o).map(|sum| sum.size);
                if let Ok(mut res) = results.lock() {
                    res[i] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    for (o, r) in objects.iter().zip(results) {
        report.objects += 1;
        match r {
            Some(Ok(size)) => report.bytes += size,
            Some(Err(e)) => report.problems.push(format!("{}: {e}", report.db)),
            None => report
                .problems
                .push(format!("{}: {}: not checked", report.db, o.key)),
        }
    }

    if opts.restore {
        if let Some(plan) = &plan {
            match restore_and_check(storage, plan, opts) {
                Ok(()) => report.restored = Some(plan.txid),
                Err(e) => report.problems.push(format!("{}: restore: {e}", report.db)),
            }
        }
    }
    report
}

fn restore_and_check(
    storage: &dyn Storage,
    plan: &restore::Plan,
    opts: &VerifyOptions,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("walsync-verify-")
        .tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    let out = dir.path().join("restored.db");
    // The thorough check (indexes against tables), not the restore's
    // default quick_check: verify is the command that has the time.
    let ropts = RestoreOptions {
        parallel: opts.parallel.max(1),
        check: restore::SqliteCheck::Integrity,
        ..RestoreOptions::default()
    };
    restore::restore(storage, plan, &out, &ropts)?;
    Ok(())
}
