//! Restores of larger databases: the plan a dry run prints against the
//! requests a real restore sends, the restorable range `walsync list NAME`
//! shows, and byte-identical restores for several page sizes, from
//! compacted and uncompacted replicas, at random txids.
//!
//! Needs the local S3 server (`scripts/s3-server.sh start`); skipped
//! without it unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::collections::BTreeSet;
use std::fs;

use std::sync::Arc;

use common::dir_entries as entries;
use common::process::walsync;
use common::Rng;
use walsync::ltx::{self, Header};
use walsync::restore::{self, RestoreOptions, Target};
use walsync::storage::crypt::Key;
use walsync::storage::{
    CountingStorage, CryptStorage, Keyring, Metadata, ObjectInfo, Precondition, S3Config,
    S3Storage, Source, Storage,
};
use walsync::storage::{META_SHA256, META_TIMESTAMP};
use walsync::util::hex;

const BASE_TS: i64 = 1_760_000_000_000;

/// The file's states after each transaction (index = txid - 1), rollback
/// journal so the file alone is the database: a first transaction of
/// `rows` rows, then random updates, inserts and deletes.
fn record_states(ps: u32, rows: u64, txids: u64, rng: &mut Rng) -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size={ps}; PRAGMA journal_mode=DELETE; \
         CREATE TABLE t(id INTEGER PRIMARY KEY, x BLOB);"
    ))
    .unwrap();
    let blob = |rng: &mut Rng| common::pseudo_random(rng.range(50, 1500) as usize, rng.next());
    let mut states = Vec::new();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![i as i64, blob(rng)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    states.push(fs::read(&path).unwrap());
    let mut next_id = rows as i64;
    for _ in 2..=txids {
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..rng.range(1, 20) {
            match rng.below(4) {
                0 => {
                    tx.execute(
                        "INSERT INTO t VALUES (?1, ?2)",
                        rusqlite::params![next_id, blob(rng)],
                    )
                    .unwrap();
                    next_id += 1;
                }
                1 => {
                    tx.execute(
                        "DELETE FROM t WHERE id = ?1",
                        [rng.below(next_id as u64) as i64],
                    )
                    .unwrap();
                }
                _ => {
                    tx.execute(
                        "UPDATE t SET x = ?1 WHERE id = ?2",
                        rusqlite::params![blob(rng), rng.below(next_id as u64) as i64],
                    )
                    .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        states.push(fs::read(&path).unwrap());
    }
    states
}

fn commit_of(state: &[u8], ps: u32) -> u32 {
    (state.len() / ps as usize) as u32
}

fn page(state: &[u8], ps: u32, p: u32) -> &[u8] {
    let ps = ps as usize;
    &state[(p as usize - 1) * ps..p as usize * ps]
}

/// Pages of `cur` that differ from `prev` (or are new).
fn changed(prev: &[u8], cur: &[u8], ps: u32) -> BTreeSet<u32> {
    (1..=commit_of(cur, ps))
        .filter(|&p| {
            let r = (p as usize - 1) * ps as usize..p as usize * ps as usize;
            prev.get(r.clone()) != cur.get(r)
        })
        .collect()
}

fn put_ltx(
    s: &dyn Storage,
    db: &str,
    level: u8,
    (min, max): (u64, u64),
    ps: u32,
    state: &[u8],
    pages: &BTreeSet<u32>,
) {
    let ts = BASE_TS + max as i64 * 1000;
    let h = Header::new(ps, commit_of(state, ps), min, max, ts);
    let lock = ltx::lock_pgno(ps);
    let bytes = ltx::encode_to_vec(
        h,
        pages
            .iter()
            .filter(|&&p| p != lock)
            .map(|&p| (p, page(state, ps, p))),
    )
    .unwrap();
    let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let meta = Metadata::new()
        .with(META_TIMESTAMP, ltx::format_timestamp_ms(ts).unwrap())
        .with(META_SHA256, hex(sha.as_ref()));
    s.put(&ltx::object_key("", db, level, min, max), &bytes, &meta)
        .unwrap();
}

/// A snapshot at txid 1 and one level-0 object per later txid; with
/// `compacted`, also a level-1 object over txids 2..=n/2 and a second
/// snapshot at 3n/4.
fn write_replica(s: &dyn Storage, db: &str, ps: u32, states: &[Vec<u8>], compacted: bool) {
    let all = |st: &[u8]| (1..=commit_of(st, ps)).collect::<BTreeSet<u32>>();
    put_ltx(s, db, 9, (1, 1), ps, &states[0], &all(&states[0]));
    for t in 2..=states.len() {
        let pages = changed(&states[t - 2], &states[t - 1], ps);
        put_ltx(s, db, 0, (t as u64, t as u64), ps, &states[t - 1], &pages);
    }
    if compacted {
        let n = states.len();
        let half = n / 2;
        let end = &states[half - 1];
        let union: BTreeSet<u32> = (2..=half)
            .flat_map(|t| changed(&states[t - 2], &states[t - 1], ps))
            .filter(|&p| p <= commit_of(end, ps))
            .collect();
        put_ltx(s, db, 1, (2, half as u64), ps, end, &union);
        let snap = n * 3 / 4;
        put_ltx(
            s,
            db,
            9,
            (1, snap as u64),
            ps,
            &states[snap - 1],
            &all(&states[snap - 1]),
        );
    }
}

fn s3(test: &str) -> Option<(S3Config, Arc<dyn Storage>)> {
    let config = common::s3_config_or_skip(test)?;
    let storage = S3Storage::new(config.clone()).unwrap();
    Some((config, Arc::new(storage)))
}

fn requests(c: &CountingStorage) -> (u64, u64) {
    c.snapshot()
        .values()
        .fold((0, 0), |(g, h), s| (g + s.requests[1], h + s.requests[3]))
}

/// The requests a dry run predicts are the requests the restore sends, for
/// whole-object GETs and for ranged fetches of big objects; the restored
/// file equals the source at that txid.
#[test]
fn dry_run_predicts_requests() {
    let Some((_, s)) = s3("restore_scale_requests") else {
        return;
    };
    let mut rng = Rng::new("dry_run_predicts_requests");
    let ps = 4096;
    let states = record_states(ps, 3000, 24, &mut rng);
    write_replica(&*s, "req.db", ps, &states, true);
    let counting = CountingStorage::new(s.clone());
    let dir = tempfile::tempdir().unwrap();
    // Whole objects; spooled through ranges; parallel ranges (a range of
    // 128 KiB, the smallest, so a snapshot is many of them).
    let cases = [
        (u64::MAX, u64::MAX),
        (1 << 20, u64::MAX),
        (u64::MAX, 256 << 10),
    ];
    for (i, (spool, ranged)) in cases.into_iter().enumerate() {
        let txid = rng.range(1, states.len() as u64);
        let plan = restore::plan(&*s, "req.db", Target::Txid(txid)).unwrap();
        let opts = RestoreOptions {
            spool_threshold: spool,
            ranged_threshold: ranged,
            range_size: 128 << 10,
            ..RestoreOptions::default()
        };
        let want = plan.requests(&opts);
        let before = requests(&counting);
        let out = dir.path().join(format!("out{i}.db"));
        restore::restore(&counting, &plan, &out, &opts).unwrap();
        let after = requests(&counting);
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (want.gets, want.heads),
            "txid {txid}, case {i}: {plan:?}"
        );
        assert!(
            fs::read(&out).unwrap() == states[txid as usize - 1],
            "txid {txid}"
        );
    }
}

/// `walsync list NAME` shows the restorable range; `restore --dry-run`
/// prints the plan the library computes and writes nothing.
#[test]
fn cli_range_and_dry_run() {
    let Some((config, s)) = s3("restore_scale_cli") else {
        return;
    };
    let mut rng = Rng::new("cli_range_and_dry_run");
    let ps = 4096;
    let states = record_states(ps, 500, 12, &mut rng);
    write_replica(&*s, "cli.db", ps, &states, true);
    let n = states.len() as u64;
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);

    let o = walsync(&["list", "cli.db", "--bucket", &bucket]);
    assert!(o.status.success(), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    let first = ltx::display_timestamp_ms(BASE_TS + 1000).unwrap();
    let last = ltx::display_timestamp_ms(BASE_TS + n as i64 * 1000).unwrap();
    let want = format!("restorable: txid 1 ({first}) … txid {n} ({last})");
    assert!(out.contains(&want), "{want} not in {out}");
    let o = walsync(&["list", "cli.db", "--bucket", &bucket, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["restorable"]["oldest_txid"], 1, "{v}");
    assert_eq!(v["restorable"]["newest_txid"], n, "{v}");

    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("r.db");
    let out_s = out_path.to_str().unwrap();
    let txid = rng.range(2, n);
    let plan = restore::plan(&*s, "cli.db", Target::Txid(txid)).unwrap();
    let t = txid.to_string();
    let o = walsync(&[
        "restore",
        "cli.db",
        "-o",
        out_s,
        "--bucket",
        &bucket,
        "--txid",
        &t,
        "--dry-run",
    ]);
    assert!(o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    let time = ltx::format_timestamp_ms(BASE_TS + txid as i64 * 1000).unwrap();
    assert!(
        text.starts_with(&format!("plan: cli.db at txid {txid} ({time})")),
        "{text}"
    );
    for obj in &plan.objects {
        assert!(text.contains(&obj.key), "{} not in {text}", obj.key);
    }
    let req = plan.requests(&RestoreOptions::default());
    let total = format!(
        "total: {} objects, {} bytes, {} GET and {} HEAD requests",
        plan.objects.len(),
        plan.total_bytes(),
        req.gets,
        req.heads
    );
    assert!(text.contains(&total), "{total} not in {text}");
    let o = walsync(&[
        "restore",
        "cli.db",
        "-o",
        out_s,
        "--bucket",
        &bucket,
        "--txid",
        &t,
        "--dry-run",
        "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let keys: Vec<&str> = v["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = plan.objects.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(keys, want);
    assert_eq!(v["txid"], txid);
    assert_eq!(v["bytes"], plan.total_bytes());
    assert_eq!(v["get_requests"], req.gets);
    // Nothing written: no output, no temp file.
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

    // The real restore then reaches what the plan said.
    let o = walsync(&[
        "restore", "cli.db", "-o", out_s, "--bucket", &bucket, "--txid", &t,
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(fs::read(&out_path).unwrap() == states[txid as usize - 1]);
}

/// Options that send every object of 256 KiB or more through parallel
/// ranged GETs of 128 KiB (the smallest range), 4 threads.
fn ranged_opts() -> RestoreOptions {
    RestoreOptions {
        parallel: 4,
        ranged_threshold: 256 << 10,
        range_size: 128 << 10,
        ..RestoreOptions::default()
    }
}

/// Restore `db` at `txid` with `opts` and compare with the source state.
fn restores_identically(
    s: &dyn Storage,
    db: &str,
    states: &[Vec<u8>],
    txid: u64,
    opts: &RestoreOptions,
) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let plan = restore::plan(s, db, Target::Txid(txid)).unwrap();
    restore::restore(s, &plan, &out, opts).unwrap_or_else(|e| panic!("{db} txid {txid}: {e}"));
    assert!(
        fs::read(&out).unwrap() == states[txid as usize - 1],
        "{db}: restore at txid {txid} differs from the source"
    );
}

/// Page sizes 512, 4096 and 65536, from compacted and uncompacted replicas,
/// at random txids and the newest: parallel ranged restores are
/// byte-identical to the source (and so are whole-object ones).
#[test]
fn ranged_restores_are_identical() {
    let Some((_, s)) = s3("restore_scale_identical") else {
        return;
    };
    let mut rng = Rng::new("ranged_restores_are_identical");
    for (ps, rows) in [(512u32, 2500u64), (4096, 2500), (65536, 2000)] {
        let states = record_states(ps, rows, 10, &mut rng);
        let n = states.len() as u64;
        for compacted in [false, true] {
            let db = format!("p{ps}-{compacted}.db");
            write_replica(&*s, &db, ps, &states, compacted);
            let mut txids = vec![1, n];
            txids.extend((0..2).map(|_| rng.range(2, n - 1)));
            for &t in &txids {
                restores_identically(&*s, &db, &states, t, &ranged_opts());
            }
            restores_identically(&*s, &db, &states, txids[2], &RestoreOptions::default());
        }
    }
}

/// The same through client-side encryption (ranges of the plaintext).
#[test]
fn ranged_restores_encrypted() {
    let Some((_, raw)) = s3("restore_scale_encrypted") else {
        return;
    };
    let keys = Keyring::new(Key::from_bytes([7u8; 32]), Vec::new());
    let s: Arc<dyn Storage> = Arc::new(CryptStorage::new(raw, keys));
    let mut rng = Rng::new("ranged_restores_encrypted");
    let ps = 4096;
    let states = record_states(ps, 2500, 10, &mut rng);
    write_replica(&*s, "enc.db", ps, &states, true);
    for t in [states.len() as u64, rng.range(2, 9)] {
        restores_identically(&*s, "enc.db", &states, t, &ranged_opts());
    }
}

/// Flips one byte at `offset` of object `key` in every response covering
/// it (a corrupt range from the server); everything else passes through.
struct Corrupt {
    inner: Arc<dyn Storage>,
    key: String,
    offset: u64,
}

impl Corrupt {
    fn flip(&self, key: &str, start: u64, mut body: Vec<u8>) -> Vec<u8> {
        if key == self.key && self.offset >= start && self.offset - start < body.len() as u64 {
            body[(self.offset - start) as usize] ^= 0x20;
        }
        body
    }
}

impl Storage for Corrupt {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> walsync::Result<()> {
        self.inner.put(key, body, meta)
    }
    fn put_stream(&self, key: &str, body: &mut dyn Source, meta: &Metadata) -> walsync::Result<()> {
        self.inner.put_stream(key, body, meta)
    }
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> walsync::Result<bool> {
        self.inner.put_conditional(key, body, meta, cond)
    }
    fn get_with_etag(&self, key: &str) -> walsync::Result<Option<(Vec<u8>, String)>> {
        self.inner.get_with_etag(key)
    }
    fn get_with_info(&self, key: &str) -> walsync::Result<(Vec<u8>, ObjectInfo)> {
        let (body, info) = self.inner.get_with_info(key)?;
        Ok((self.flip(key, 0, body), info))
    }
    fn get(&self, key: &str) -> walsync::Result<Vec<u8>> {
        Ok(self.flip(key, 0, self.inner.get(key)?))
    }
    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> walsync::Result<Vec<u8>> {
        Ok(self.flip(key, start, self.inner.get_range(key, start, len)?))
    }
    fn head(&self, key: &str) -> walsync::Result<Option<ObjectInfo>> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> walsync::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix, start_after)
    }
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> walsync::Result<Vec<ObjectInfo>> {
        self.inner.list_page(prefix, start_after, max_keys)
    }
    fn delete_many(&self, keys: &[String]) -> walsync::Result<()> {
        self.inner.delete_many(keys)
    }
    fn check(&self) -> walsync::Result<()> {
        self.inner.check()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A corrupt byte anywhere in a ranged object (its header, a page record
/// in any range, the page index, the trailer) fails the restore with one
/// line naming the object, and leaves no output file.
#[test]
fn corrupt_range_fails_cleanly() {
    let Some((_, s)) = s3("restore_scale_corrupt") else {
        return;
    };
    let mut rng = Rng::new("corrupt_range_fails_cleanly");
    let ps = 4096;
    let states = record_states(ps, 2500, 4, &mut rng);
    write_replica(&*s, "bad.db", ps, &states, false);
    let plan = restore::plan(&*s, "bad.db", Target::Latest).unwrap();
    let snap = plan.objects[0].clone();
    assert!(snap.size >= 1 << 20, "snapshot of {} bytes", snap.size);
    let size = snap.size;
    // Header fields, early/middle/late pages, the index and the checksum.
    let mut offsets = vec![20, 101, 300 << 10, size / 2, size - 30, size - 2];
    offsets.extend((0..6).map(|_| rng.range(100, size - 1)));
    let dir = tempfile::tempdir().unwrap();
    for off in offsets {
        let bad = Corrupt {
            inner: s.clone(),
            key: snap.key.clone(),
            offset: off,
        };
        let out = dir.path().join("out.db");
        let err = restore::restore(&bad, &plan, &out, &ranged_opts()).expect_err(&format!(
            "a flipped byte at offset {off} of {size} went unnoticed"
        ));
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(&snap.key), "offset {off}: {msg}");
        assert!(
            entries(dir.path()).is_empty(),
            "offset {off}: {:?}",
            entries(dir.path())
        );
    }
    // The same replica restores when nothing is corrupted.
    restores_identically(&*s, "bad.db", &states, 4, &ranged_opts());
}

/// A database past 1 GiB holds SQLite's lock page (never stored, never
/// written): restored byte-identical through parallel ranges, page size
/// 65536 (zero-filled blobs keep the objects small). Slow (1.1 GB written
/// and compared twice):
/// `cargo test --test restore_scale lock_page -- --ignored`.
#[test]
#[ignore]
fn lock_page_crossed() {
    let Some((_, s)) = s3("restore_scale_lock") else {
        return;
    };
    let ps = 65536u32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size={ps}; PRAGMA journal_mode=DELETE; CREATE TABLE t(x BLOB);
         INSERT INTO t VALUES (zeroblob(600 * 1024 * 1024));
         INSERT INTO t VALUES (zeroblob(500 * 1024 * 1024));"
    ))
    .unwrap();
    let first = fs::read(&path).unwrap();
    conn.execute(
        "INSERT INTO t VALUES (?1)",
        [common::pseudo_random(300_000, 5)],
    )
    .unwrap();
    drop(conn);
    let states = vec![first, fs::read(&path).unwrap()];
    let lock = ltx::lock_pgno(ps);
    assert!(
        commit_of(&states[0], ps) > lock,
        "the database does not reach the lock page"
    );
    write_replica(&*s, "lock.db", ps, &states, false);
    restores_identically(&*s, "lock.db", &states, 1, &ranged_opts());
    restores_identically(&*s, "lock.db", &states, 2, &ranged_opts());
}
