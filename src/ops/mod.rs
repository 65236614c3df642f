//! `walsync list`, `walsync verify` and `walsync snapshot`.
//!
//! Why together: all three look at a replica from the outside, one-shot,
//! without the daemon. `list` answers "what is in this bucket" with one
//! listing (plus one 100-byte ranged GET per database for the newest
//! object's time); `verify` answers "can I trust this backup" by planning the
//! chain to the newest txid, downloading and checking every object, and
//! optionally restoring it; `snapshot` ships a full snapshot now, guarded by
//! the same lock the daemon holds (src/sqlite/lock.rs) so two processes never
//! allocate the same txid.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::capture::{DbConfig, Replica as Shipper};
use crate::error::{Error, Result};
use crate::ltx::{self, Header, SNAPSHOT_LEVEL};
use crate::restore::{self, ReplicaObject, RestoreOptions, Target};
use crate::storage::META_SHA256;
use crate::storage::{Metadata, Storage};
use crate::upload::Uploader;
use crate::util::hex;

// ---------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------

/// One database of a bucket, as `walsync list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbListing {
    /// Database name (key prefix).
    pub name: String,
    /// Highest txid any object reaches.
    pub newest_txid: u64,
    /// Time of the newest txid (ms since the epoch): the LTX header timestamp
    /// of the object ending at it, else that object's modification time.
    pub time_ms: Option<i64>,
    /// Level-9 objects.
    pub snapshots: usize,
    /// All objects.
    pub objects: usize,
    /// Bytes stored, all objects.
    pub bytes: u64,
    /// Key of the object whose time is shown.
    pub newest_key: String,
}

/// One object of a database, as `walsync list NAME` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileListing {
    /// Key relative to the storage prefix.
    pub key: String,
    /// Level (0 segments, 1–8 compactions, 9 snapshots).
    pub level: u8,
    /// First txid.
    pub min_txid: u64,
    /// Last txid.
    pub max_txid: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time from the listing (ms since the epoch).
    pub time_ms: Option<i64>,
}

fn system_ms(t: Option<SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Every database in the store: one listing of the whole prefix, then one
/// ranged GET of the 100-byte LTX header of each database's newest object
/// (`parallel` at a time). Keys that are not LTX object keys are ignored.
pub fn list_databases(storage: &dyn Storage, parallel: usize) -> Result<Vec<DbListing>> {
    let mut dbs: BTreeMap<String, (DbListing, Option<SystemTime>, u8)> = BTreeMap::new();
    for info in storage.list("", None)? {
        let Some(k) = ltx::parse_object_key("", &info.key) else {
            log::debug!("list: ignoring {}", info.key);
            continue;
        };
        let e = dbs.entry(k.db.clone()).or_insert_with(|| {
            (
                DbListing {
                    name: k.db.clone(),
                    newest_txid: 0,
                    time_ms: None,
                    snapshots: 0,
                    objects: 0,
                    bytes: 0,
                    newest_key: String::new(),
                },
                None,
                u8::MAX,
            )
        });
        e.0.objects += 1;
        e.0.bytes += info.size;
        if k.level == SNAPSHOT_LEVEL {
            e.0.snapshots += 1;
        }
        // The newest txid's time comes from the lowest level ending there
        // (the segment written when it was committed).
        if k.max_txid > e.0.newest_txid || (k.max_txid == e.0.newest_txid && k.level < e.2) {
            e.0.newest_txid = k.max_txid;
            e.0.newest_key = info.key.clone();
            e.1 = info.last_modified;
            e.2 = k.level;
        }
    }
    let mut out: Vec<(DbListing, Option<SystemTime>)> =
        dbs.into_values().map(|(d, m, _)| (d, m)).collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![None; out.len()]);
    let threads = parallel.clamp(1, 64).min(out.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((d, _)) = out.get(i) else { break };
                let ts = header_of(storage, &d.newest_key).map(|h| h.timestamp_ms);
                if let Err(e) = &ts {
                    log::warn!(
                        "{}: cannot read the header of {}: {e}",
                        d.name,
                        d.newest_key
                    );
                }
                if let Ok(mut r) = results.lock() {
                    r[i] = ts.ok();
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    for (i, (d, modified)) in out.iter_mut().enumerate() {
        d.time_ms = results
            .get(i)
            .copied()
            .flatten()
            .or_else(|| system_ms(*modified));
    }
    Ok(out.into_iter().map(|(d, _)| d).collect())
}

fn header_of(storage: &dyn Storage, key: &str) -> Result<Header> {
    let head = storage.get_range(key, 0, Some(ltx::HEADER_SIZE as u64))?;
    Header::decode(&head).map_err(|reason| Error::ltx(key, reason))
}

/// Every object of database `db` with one listing, ordered by level then
/// txid. Errors like [`restore::list_replica`] on keys it cannot explain.
pub fn list_files(storage: &dyn Storage, db: &str) -> Result<Vec<FileListing>> {
    let db = db.trim_matches('/');
    if db.is_empty() {
        return Err(Error::Config("empty database name".into()));
    }
    let mut out = Vec::new();
    for info in storage.list(&format!("{db}/"), None)? {
        match ltx::parse_object_key("", &info.key) {
            Some(k) if k.db == db => out.push(FileListing {
                key: info.key,
                level: k.level,
                min_txid: k.min_txid,
                max_txid: k.max_txid,
                size: info.size,
                time_ms: system_ms(info.last_modified),
            }),
            Some(_) => {}
            None => {
                return Err(Error::Restore(format!(
                    "{db}: unparseable object name {}/{} under the database prefix",
                    storage.describe(),
                    info.key
                )))
            }
        }
    }
    out.sort_by_key(|f| (f.level, f.min_txid, f.max_txid));
    Ok(out)
}

fn time_text(ms: Option<i64>) -> String {
    ms.and_then(|ms| ltx::format_timestamp_ms(ms).ok())
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns separated by two spaces; numbers right-aligned.
fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = width[i];
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_time(ms: Option<i64>) -> String {
    match ms.and_then(|ms| ltx::format_timestamp_ms(ms).ok()) {
        Some(t) => json_str(&t),
        None => "null".into(),
    }
}

/// `walsync list` output: a table, or a JSON array with `json`.
pub fn format_databases(dbs: &[DbListing], json: bool) -> String {
    if json {
        let items: Vec<String> = dbs
            .iter()
            .map(|d| {
                format!(
                    "{{\"name\":{},\"newest_txid\":{},\"time\":{},\"snapshots\":{},\"objects\":{},\"bytes\":{}}}",
                    json_str(&d.name),
                    d.newest_txid,
                    json_time(d.time_ms),
                    d.snapshots,
                    d.objects,
                    d.bytes
                )
            })
            .collect();
        return format!("[{}]\n", items.join(","));
    }
    let rows: Vec<Vec<String>> = dbs
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.newest_txid.to_string(),
                time_text(d.time_ms),
                d.snapshots.to_string(),
                d.objects.to_string(),
                d.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "TXID", "TIME", "SNAPSHOTS", "OBJECTS", "BYTES"],
        &rows,
        &[false, true, false, true, true, true],
    )
}

/// `walsync list NAME` output: a table, or a JSON object with `json`.
pub fn format_files(db: &str, files: &[FileListing], json: bool) -> String {
    if json {
        let items: Vec<String> = files
            .iter()
            .map(|f| {
                format!(
                    "{{\"level\":{},\"min_txid\":{},\"max_txid\":{},\"size\":{},\"time\":{},\"key\":{}}}",
                    f.level,
                    f.min_txid,
                    f.max_txid,
                    f.size,
                    json_time(f.time_ms),
                    json_str(&f.key)
                )
            })
            .collect();
        return format!(
            "{{\"name\":{},\"files\":[{}]}}\n",
            json_str(db),
            items.join(",")
        );
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.level.to_string(),
                f.min_txid.to_string(),
                f.max_txid.to_string(),
                f.size.to_string(),
                time_text(f.time_ms),
            ]
        })
        .collect();
    table(
        &["LEVEL", "MIN TXID", "MAX TXID", "SIZE", "TIME"],
        &rows,
        &[true, true, true, true, false],
    )
}

// ---------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------

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
const RANGE_CHUNK: u64 = 16 << 20;

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
            let want = RANGE_CHUNK.min(self.size - self.off);
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
    let h = &summary.header;
    if (h.min_txid, h.max_txid) != (o.min_txid, o.max_txid) {
        return Err(Error::ltx(
            name,
            format!(
                "header says txids {}..{}, the name says {}..{}",
                h.min_txid, h.max_txid, o.min_txid, o.max_txid
            ),
        ));
    }
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
    if let Some(expected) = meta.get(META_SHA256) {
        let got = hex(digest);
        if !expected.trim().eq_ignore_ascii_case(&got) {
            return Err(Error::ltx(
                name,
                format!("SHA-256 mismatch: {META_SHA256} metadata says {expected}, the object hashes to {got}"),
            ));
        }
    }
    Ok(())
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
    let replica = match restore::list_replica(storage, db) {
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
    let ropts = RestoreOptions {
        parallel: opts.parallel.max(1),
        ..RestoreOptions::default()
    };
    restore::restore(storage, plan, &out, &ropts)?;
    // The restore checks integrity itself; check again on a fresh
    // connection, independently of how it did so.
    let conn =
        rusqlite::Connection::open_with_flags(&out, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| Error::sqlite(&out, e))?;
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check(20)")
        .and_then(|mut st| {
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(|e| Error::sqlite(&out, e))?;
    if rows != ["ok"] {
        return Err(Error::Restore(format!(
            "txid {}: integrity_check: {}",
            plan.txid,
            rows.join("; ")
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// snapshot
// ---------------------------------------------------------------------------

/// Take a consistent snapshot of the database at `db` now and wait until
/// storage acknowledged it (up to `timeout`). Returns `(name, txid)`.
///
/// Refused while another process (a `walsync-sync` daemon) ships the
/// database: both would allocate the same next txid. The daemon takes
/// snapshots itself (`--snapshot-interval`).
pub fn snapshot(db: &Path, storage: Arc<dyn Storage>, timeout: Duration) -> Result<(String, u64)> {
    if !db.is_file() {
        return Err(Error::Config(format!(
            "{}: no such database file",
            db.display()
        )));
    }
    let _lock = crate::sqlite::lock::try_lock(db)?;
    storage.check()?;
    let mut cfg = DbConfig::new(db);
    cfg.name = crate::daemon::db_name(db)?;
    cfg.snapshot_interval = None;
    let name = cfg.name.clone();
    let uploader = Uploader::start(storage.clone(), 2, 64 << 20);
    let result = Shipper::open(cfg, storage, uploader.sender(), uploader.budget())
        .and_then(|mut rep| rep.snapshot_now("requested by walsync snapshot", timeout));
    if result.is_err() {
        uploader.abort();
    }
    uploader.join();
    result.map(|txid| (name, txid))
}
