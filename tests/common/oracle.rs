//! The test oracle: an independent restore straight from the bucket, and the
//! application model the writers follow.
//!
//! The restore here deliberately shares nothing with the daemon except the
//! LTX decoder (`walsync::ltx::decode_all`) and the storage trait: it lists a
//! database's objects, takes the newest level-9 snapshot ≤ T and then the
//! level-0 files up to T, which must be contiguous (a gap is a test failure),
//! applies the pages to an in-memory image, truncates it to the last file's
//! `commit` and opens the result with SQLite.
//!
//! The application model: table `t(id INTEGER PRIMARY KEY, v BLOB)` only ever
//! grows by strictly increasing ids, every transaction also sets
//! `meta.last` to its last id, and `v` is a pure function of `(gen, id)`. So
//! any consistent state is "rows 1..=k of generation g, meta.last = k", and
//! the state of a restore is the pair `(g, k)`, which must never go back as
//! the txid grows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use walsync::ltx::{self, SNAPSHOT_LEVEL};
use walsync::storage::Storage;

/// Metadata entry carrying the object's SHA-256.
pub const META_SHA256: &str = "walsync-sha256";

/// One stored object of a database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    pub key: String,
    pub level: u8,
    pub min: u64,
    pub max: u64,
}

/// The test oracle: a database's replica as seen from the bucket, with a
/// cache of verified object bodies and the SHA-256 recorded for every key
/// ever fetched.
pub struct Oracle {
    storage: Arc<dyn Storage>,
    db: String,
    cache: HashMap<String, Arc<Vec<u8>>>,
    shas: HashMap<String, String>,
    tmp: tempfile::TempDir,
    /// Skip compacted objects (levels 1–8) and start each restore at the
    /// newest snapshot before the first target (see `allow_compaction`).
    compaction: bool,
}

/// A restored database, open.
pub struct Restored {
    pub txid: u64,
    pub conn: Connection,
    pub path: PathBuf,
}

fn sha256_hex(bytes: &[u8]) -> String {
    walsync::util::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

impl Oracle {
    pub fn new(storage: Arc<dyn Storage>, db: &str) -> Oracle {
        Oracle {
            storage,
            db: db.to_string(),
            cache: HashMap::new(),
            shas: HashMap::new(),
            tmp: tempfile::tempdir().expect("tempdir"),
            compaction: false,
        }
    }

    /// For replicas the daemon compacts and retention trims: ignore levels
    /// 1–8 (the oracle restores from snapshots and level 0 only, so it stays
    /// independent of the compactor) and start from the newest snapshot at
    /// or before the first target (older objects may have been deleted).
    pub fn allow_compaction(mut self) -> Oracle {
        self.compaction = true;
        self
    }

    pub fn db(&self) -> &str {
        &self.db
    }

    /// Every object of the database, in key order. Unparsable keys fail.
    pub fn list(&self) -> Vec<Obj> {
        let prefix = format!("{}/", self.db);
        let infos = self
            .storage
            .list(&prefix, None)
            .unwrap_or_else(|e| panic!("list {prefix}: {e}"));
        infos
            .into_iter()
            .map(|i| {
                let k = ltx::parse_object_key("", &i.key)
                    .unwrap_or_else(|| panic!("unexpected object key {:?}", i.key));
                assert_eq!(k.db, self.db, "object {} of another database", i.key);
                Obj {
                    key: i.key,
                    level: k.level,
                    min: k.min_txid,
                    max: k.max_txid,
                }
            })
            .collect()
    }

    /// Highest txid stored, if any.
    pub fn newest(&self) -> Option<u64> {
        self.list().iter().map(|o| o.max).max()
    }

    /// The lowest txid after the first snapshot that no object holds (a
    /// hole in the history), if any. While uploads are in flight a hole can
    /// be transient; after the daemon caught up it is a failure.
    pub fn first_gap(&self) -> Option<u64> {
        let objs = self.list();
        let first = objs
            .iter()
            .filter(|o| o.level == SNAPSHOT_LEVEL)
            .map(|o| o.max)
            .min()?;
        let mut covered: Vec<(u64, u64)> = objs
            .iter()
            .map(|o| {
                if o.level == SNAPSHOT_LEVEL {
                    (o.max, o.max)
                } else {
                    (o.min, o.max)
                }
            })
            .filter(|(_, max)| *max >= first)
            .collect();
        covered.sort();
        let mut next = first;
        for (min, max) in covered {
            if min > next {
                return Some(next);
            }
            next = next.max(max + 1);
        }
        None
    }

    /// The body of `key`, verified against its `walsync-sha256` metadata;
    /// the SHA-256 is recorded and must never change for a key.
    fn fetch(&mut self, key: &str) -> Arc<Vec<u8>> {
        if let Some(b) = self.cache.get(key) {
            return b.clone();
        }
        let (body, info) = self
            .storage
            .get_with_info(key)
            .unwrap_or_else(|e| panic!("get {key}: {e}"));
        let meta = info
            .metadata
            .get(META_SHA256)
            .unwrap_or_else(|| panic!("{key}: no {META_SHA256} metadata"))
            .to_string();
        let actual = sha256_hex(&body);
        assert_eq!(
            actual, meta,
            "{key}: body SHA-256 differs from its metadata"
        );
        self.record_sha(key, &meta);
        let body = Arc::new(body);
        self.cache.insert(key.to_string(), body.clone());
        body
    }

    fn record_sha(&mut self, key: &str, sha: &str) {
        if let Some(old) = self.shas.insert(key.to_string(), sha.to_string()) {
            assert_eq!(
                old, sha,
                "{key} was overwritten with different content (sha256 {old} → {sha})"
            );
        }
    }

    /// HEAD every object now stored: record each one's SHA-256 and fail if
    /// a key seen before now carries a different one (an object overwritten
    /// with other content, e.g. a txid reused after a restart). Also checks
    /// that no key seen before disappeared. Returns the number of objects.
    pub fn check_no_overwrite(&mut self) -> usize {
        let objs = self.list();
        let now: std::collections::HashSet<&str> = objs.iter().map(|o| o.key.as_str()).collect();
        for k in self.shas.keys() {
            assert!(now.contains(k.as_str()), "object {k} disappeared");
        }
        for o in &objs {
            let info = self
                .storage
                .head(&o.key)
                .unwrap_or_else(|e| panic!("head {}: {e}", o.key))
                .unwrap_or_else(|| panic!("{} listed but missing", o.key));
            let sha = info
                .metadata
                .get(META_SHA256)
                .unwrap_or_else(|| panic!("{}: no {META_SHA256} metadata", o.key))
                .to_string();
            self.record_sha(&o.key, &sha);
        }
        objs.len()
    }

    /// Restore at each txid in `targets` (all restorable txids when `None`)
    /// and call `check` on each restored database, in increasing txid order.
    ///
    /// The plan per target T: newest snapshot ≤ T, then level-0 files
    /// contiguous up to T. It is computed incrementally (the same plan).
    /// Fails loudly on a gap, a duplicate txid, an unexpected level, a
    /// header disagreeing with its key or a snapshot missing a page.
    /// Returns the txids checked.
    pub fn restore_each(
        &mut self,
        targets: Option<&[u64]>,
        mut check: impl FnMut(&Restored),
    ) -> Vec<u64> {
        let objs = self.list();
        assert!(!objs.is_empty(), "{}: nothing stored", self.db);
        let mut snapshots: BTreeMap<u64, Obj> = BTreeMap::new();
        let mut l0: BTreeMap<u64, Obj> = BTreeMap::new();
        for o in &objs {
            match o.level {
                SNAPSHOT_LEVEL => {
                    assert_eq!(o.min, 1, "snapshot {} must start at txid 1", o.key);
                    if let Some(prev) = snapshots.insert(o.max, o.clone()) {
                        panic!("two snapshots for txid {}: {} {}", o.max, prev.key, o.key);
                    }
                }
                0 => {
                    if let Some(prev) = l0.insert(o.min, o.clone()) {
                        panic!(
                            "two level-0 files from txid {}: {} {}",
                            o.min, prev.key, o.key
                        );
                    }
                }
                _ if self.compaction => {}
                l => panic!(
                    "unexpected level {l} object {} (walsync does not compact)",
                    o.key
                ),
            }
        }
        for (t, s) in &snapshots {
            if let Some((_, o)) = l0.range(..=*t).next_back() {
                assert!(
                    o.max < *t,
                    "txid {t} stored twice: snapshot {} and {}",
                    s.key,
                    o.key
                );
            }
        }
        let newest = objs.iter().map(|o| o.max).max().unwrap_or(0);
        let mut first = *snapshots
            .keys()
            .next()
            .unwrap_or_else(|| panic!("{}: no snapshot stored", self.db));
        if self.compaction {
            let lowest = targets
                .and_then(|ts| ts.iter().copied().min())
                .unwrap_or(first);
            if let Some((t, _)) = snapshots.range(..=lowest).next_back() {
                first = *t;
            }
        }
        assert!(
            self.compaction || l0.range(..first).next().is_none(),
            "{}: level-0 files before the first snapshot (txid {first}) can never be restored",
            self.db
        );
        let wanted = |t: u64| targets.is_none_or(|ts| ts.contains(&t));
        let last_wanted = targets.map_or(newest, |ts| ts.iter().copied().max().unwrap_or(0));
        let mut image: Vec<u8> = Vec::new();
        let mut page_size: u32 = 0;
        let mut checked = Vec::new();
        let mut t = first;
        while t <= newest && t <= last_wanted {
            // The snapshot at t wins over continuing (it is the newest ≤ t).
            let (obj, snapshot) = match snapshots.get(&t) {
                Some(s) => (s.clone(), true),
                None => match l0.get(&t) {
                    Some(o) => (o.clone(), false),
                    None => panic!(
                        "{}: gap: no object holds txid {t} (objects up to {newest}); \
                         around it: {:?}",
                        self.db,
                        objs.iter()
                            .filter(|o| o.max + 3 >= t && o.min <= t + 3)
                            .map(|o| o.key.as_str())
                            .collect::<Vec<_>>()
                    ),
                },
            };
            let body = self.fetch(&obj.key);
            let (h, pages) = ltx::decode_all(&body, &obj.key)
                .unwrap_or_else(|e| panic!("decode {}: {e}", obj.key));
            assert_eq!(
                (h.min_txid, h.max_txid),
                (obj.min, obj.max),
                "{}: header txids differ from the key",
                obj.key
            );
            let ps = h.page_size as usize;
            if snapshot {
                assert!(h.is_snapshot(), "{}: level 9 but not a snapshot", obj.key);
                image = vec![0u8; h.commit as usize * ps];
                let lock = ltx::lock_pgno(h.page_size);
                let expected = (1..=h.commit).filter(|p| *p != lock).count();
                assert_eq!(
                    pages.len(),
                    expected,
                    "{}: snapshot of {} pages holds {} pages",
                    obj.key,
                    h.commit,
                    pages.len()
                );
            } else {
                assert_eq!(
                    h.page_size, page_size,
                    "{}: page size changed without a snapshot",
                    obj.key
                );
            }
            page_size = h.page_size;
            for (pgno, data) in &pages {
                let end = *pgno as usize * ps;
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[end - ps..end].copy_from_slice(data);
            }
            image.resize(h.commit as usize * ps, 0);
            t = obj.max;
            if wanted(t) {
                let r = self.open_image(t, &image);
                check(&r);
                checked.push(t);
            }
            t += 1;
        }
        checked
    }

    /// Restore the newest txid (or `None` when nothing is stored).
    pub fn restore_newest(&mut self) -> Option<Restored> {
        let newest = self.newest()?;
        let mut out = None;
        let dir = self.tmp.path().join("newest");
        self.restore_each(Some(&[newest]), |r| {
            // Keep a copy: the restore_each file is overwritten by the next.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join("newest.db");
            std::fs::copy(&r.path, &p).unwrap();
            out = Some(p);
        });
        let p = out?;
        let conn = Connection::open(&p).unwrap();
        Some(Restored {
            txid: newest,
            conn,
            path: p,
        })
    }

    fn open_image(&self, txid: u64, image: &[u8]) -> Restored {
        let path = self.tmp.path().join("restored.db");
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        std::fs::write(&path, image).expect("write restored image");
        let conn = Connection::open(&path).expect("open restored database");
        let ic: Vec<String> = conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| {
                s.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .unwrap_or_else(|e| vec![format!("integrity_check failed: {e}")]);
        assert_eq!(
            ic,
            vec!["ok".to_string()],
            "{}: restore at txid {txid}: integrity_check",
            self.db
        );
        Restored { txid, conn, path }
    }
}

// ---------------------------------------------------------------------------
// The application model
// ---------------------------------------------------------------------------

/// Value of row `id` in generation `gen`: 40..=340 deterministic bytes.
pub fn value(gen: i64, id: i64) -> Vec<u8> {
    let len = 40 + (id as usize * 37) % 301;
    super::pseudo_random(len, (gen as u64) << 32 | id as u64)
}

/// A writer following the model on its own connection.
pub struct Writer {
    pub conn: Connection,
    pub path: PathBuf,
    pub gen: i64,
    pub last: i64,
}

impl Writer {
    /// Open (creating if needed) `path` in WAL mode with the schema, as an
    /// application would: open, set WAL, create tables in one transaction.
    pub fn create(path: &Path, gen: i64) -> Writer {
        Writer::create_with(path, gen, "")
    }

    /// Like `create`, running `pragmas` right after opening.
    pub fn create_with(path: &Path, gen: i64, pragmas: &str) -> Writer {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_millis(5000)).unwrap();
        conn.execute_batch(pragmas).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(&format!(
            "PRAGMA synchronous=NORMAL;
             BEGIN IMMEDIATE;
             CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS meta(k INTEGER PRIMARY KEY CHECK (k = 0), gen INTEGER NOT NULL, last INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta VALUES (0, {gen}, 0);
             COMMIT;"
        ))
        .unwrap();
        let (g, last): (i64, i64) = conn
            .query_row("SELECT gen, last FROM meta", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(
            g,
            gen,
            "{}: existing database of another generation",
            path.display()
        );
        Writer {
            conn,
            path: path.to_path_buf(),
            gen,
            last,
        }
    }

    /// One transaction adding `rows` rows.
    pub fn commit(&mut self, rows: usize) {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate);
        let tx = tx.unwrap_or_else(|e| panic!("{}: begin: {e}", self.path.display()));
        {
            let mut ins = tx
                .prepare_cached("INSERT INTO t(id, v) VALUES (?1, ?2)")
                .unwrap();
            for i in 1..=rows as i64 {
                let id = self.last + i;
                ins.execute(rusqlite::params![id, value(self.gen, id)])
                    .unwrap_or_else(|e| panic!("{}: insert: {e}", self.path.display()));
            }
        }
        let last = self.last + rows as i64;
        tx.execute("UPDATE meta SET last = ?1", [last]).unwrap();
        tx.commit()
            .unwrap_or_else(|e| panic!("{}: commit: {e}", self.path.display()));
        self.last = last;
    }

    /// `PRAGMA wal_checkpoint(mode)`: (busy, log, checkpointed).
    pub fn checkpoint(&self, mode: &str) -> (i64, i64, i64) {
        self.conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap_or_else(|e| panic!("{}: checkpoint {mode}: {e}", self.path.display()))
    }
}

/// The model state of a database: `None` for a database without tables,
/// else `(gen, k)` after checking rows are exactly 1..=k with the right values.
pub fn app_state(conn: &Connection) -> Result<Option<(i64, i64)>, String> {
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(|e| e.to_string())?;
    if tables == 0 {
        return Ok(None);
    }
    let (gen, last): (i64, i64) = conn
        .query_row("SELECT gen, last FROM meta", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| format!("meta: {e}"))?;
    let mut stmt = conn
        .prepare("SELECT id, v FROM t ORDER BY id")
        .map_err(|e| e.to_string())?;
    let mut rows = stmt.query([]).map_err(|e| e.to_string())?;
    let mut expect = 1i64;
    while let Some(row) = rows.next().map_err(|e| e.to_string())? {
        let id: i64 = row.get(0).map_err(|e| e.to_string())?;
        if id != expect {
            return Err(format!(
                "rows are not 1..=k: expected id {expect}, found {id} (meta.last = {last})"
            ));
        }
        let v: Vec<u8> = row.get(1).map_err(|e| e.to_string())?;
        if v != value(gen, id) {
            return Err(format!("row {id}: wrong value"));
        }
        expect += 1;
    }
    if expect - 1 != last {
        return Err(format!(
            "rows 1..={} but meta.last = {last}: the transaction is torn",
            expect - 1
        ));
    }
    Ok(Some((gen, last)))
}

/// Checks that states restored at increasing txids never go back: within a
/// generation k never decreases; a generation only moves up; an empty
/// database may only appear before a new generation.
#[derive(Default)]
pub struct Monotone {
    last: Option<(i64, i64)>,
    empty_since: bool,
    pub count: usize,
    pub states: Vec<(u64, Option<(i64, i64)>)>,
}

impl Monotone {
    pub fn push(&mut self, db: &str, txid: u64, state: Result<Option<(i64, i64)>, String>) {
        let state = state.unwrap_or_else(|e| panic!("{db}: restore at txid {txid}: {e}"));
        self.count += 1;
        self.states.push((txid, state));
        match state {
            None => self.empty_since = true,
            Some(s) => {
                if let Some(prev) = self.last {
                    if self.empty_since {
                        assert!(
                            s.0 > prev.0,
                            "{db}: txid {txid}: state {s:?} after an empty database; before it {prev:?}"
                        );
                    } else {
                        assert!(
                            s >= prev,
                            "{db}: txid {txid}: state {s:?} went back from {prev:?} (a lost or reordered transaction)"
                        );
                    }
                }
                self.last = Some(s);
                self.empty_since = false;
            }
        }
    }

    pub fn last(&self) -> Option<(i64, i64)> {
        self.last
    }
}

/// Every table's rows, as text, for comparing two databases by content.
pub fn dump(conn: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for (name, sql) in tables {
        out.push(format!("schema {name}: {sql}"));
        if !sql.starts_with("CREATE TABLE") {
            continue;
        }
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let mut line = format!("{name}:");
            for i in 0..n {
                let v: rusqlite::types::Value = row.get(i).unwrap();
                match v {
                    rusqlite::types::Value::Blob(b) => {
                        line.push_str(&format!(" blob:{}", sha256_hex(&b)))
                    }
                    other => line.push_str(&format!(" {other:?}")),
                }
            }
            out.push(line);
        }
    }
    out
}

/// Why two dumps differ, in one short line (`None` when equal).
pub fn dump_diff(a: &[String], b: &[String]) -> Option<String> {
    if a == b {
        return None;
    }
    let i = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    Some(format!(
        "{} vs {} lines; first difference at line {i}: {:?} vs {:?}",
        a.len(),
        b.len(),
        a.get(i).map(|s| s.chars().take(120).collect::<String>()),
        b.get(i).map(|s| s.chars().take(120).collect::<String>())
    ))
}

/// The source database's dump, read on a fresh connection.
pub fn source_dump(path: &Path) -> Vec<String> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    dump(&c)
}

/// Wait until the newest restore equals the source by content; returns the
/// newest txid. Panics after `timeout` with the last difference.
pub fn wait_caught_up(replica: &mut Oracle, source: &Path, timeout: Duration) -> u64 {
    let start = Instant::now();
    let mut last_seen = None;
    let mut why = String::from("nothing stored");
    loop {
        let newest = replica.newest();
        if let Some(gap) = newest.and_then(|_| replica.first_gap()) {
            // An upload still in flight (or a hole that will fail below).
            why = format!("no object holds txid {gap} (newest {newest:?})");
        } else if newest.is_some() && newest != last_seen {
            last_seen = newest;
            let want = source_dump(source);
            let r = replica.restore_newest().expect("restore");
            match dump_diff(&dump(&r.conn), &want) {
                None => return r.txid,
                Some(d) => why = format!("newest txid {}: {d}", r.txid),
            }
        } else if newest.is_some() {
            // The source may have moved on without a new object (a bug) or
            // the object is in flight: compare again.
            let want = source_dump(source);
            let r = replica.restore_newest().expect("restore");
            if dump_diff(&dump(&r.conn), &want).is_none() {
                return r.txid;
            }
        }
        assert!(
            start.elapsed() < timeout,
            "{}: the replica did not catch up with {} within {timeout:?}: {why}",
            replica.db(),
            source.display()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
