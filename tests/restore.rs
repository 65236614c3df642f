//! Restore, proven against oracles: a real Litestream 0.5.17 replica (its
//! own restore is `expected.db`), and replicas built here from recorded
//! SQLite file states, restored at every txid and compared byte for byte.
//! Every failure must name the object or txid and leave nothing behind.
//! The core tests run on a directory store and, when available, on S3
//! (Garage; required under `WALSYNC_REQUIRE_EXTERNAL=1`).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::dir_entries as entries;
use common::process::walsync;
use walsync::ltx::{self, Header};
use walsync::restore::{self, Plan, RestoreOptions, Target};
use walsync::storage::{FileStorage, Metadata, Storage};
use walsync::storage::{META_SHA256, META_TIMESTAMP};
use walsync::util::hex;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/litestream-0.5.17"
);
const PAGE_SIZE: u32 = 1024;
const TXIDS: u64 = 30;
const BASE_TS: i64 = 1_750_000_000_000;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn opts() -> RestoreOptions {
    RestoreOptions::default()
}

/// Put the Litestream fixture into `s` under our layout `<db>/<level %04x>/…`
/// (no metadata: Litestream's file backend writes none).
fn put_fixture(s: &dyn Storage, db: &str) {
    for level in [0u8, 9] {
        let dir = Path::new(FIXTURE).join(format!("ltx/{level}"));
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let key = format!("{db}/{level:04x}/{name}");
            s.put(&key, &fs::read(e.path()).unwrap(), &Metadata::new())
                .unwrap();
        }
    }
}

fn restore_to(s: &dyn Storage, db: &str, target: Target, out: &Path) -> walsync::Result<Plan> {
    let plan = restore::plan(s, db, target)?;
    restore::restore(s, &plan, out, &opts())?;
    Ok(plan)
}

/// SQLite file states after each of `TXIDS` transactions (index = txid - 1),
/// rollback-journal mode so the file alone is the whole database. Includes
/// inserts, updates, deletes and a VACUUM that shrinks the file.
fn record_states() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("src.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size = {PAGE_SIZE}; PRAGMA journal_mode = DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         CREATE INDEX t_v ON t(v);"
    ))
    .unwrap();
    let mut states = vec![fs::read(&path).unwrap()];
    for k in 2..=TXIDS {
        match k {
            19 => conn
                .execute_batch("DELETE FROM t WHERE id % 2 = 0")
                .unwrap(),
            20 => conn.execute_batch("VACUUM").unwrap(),
            _ if k % 7 == 0 => conn
                .execute_batch("DELETE FROM t WHERE id % 5 = 0")
                .unwrap(),
            _ if k % 5 == 0 => conn
                .execute_batch("UPDATE t SET v = v || 'x' WHERE id % 4 = 1")
                .unwrap(),
            _ => {
                let tx = conn.unchecked_transaction().unwrap();
                for i in 0..(10 + k) {
                    let payload =
                        common::pseudo_random(20 + ((i * k) % 300) as usize, k * 1000 + i);
                    tx.execute(
                        "INSERT INTO t(v) VALUES (?1)",
                        [format!("{k}-{i}-{}", hex(&payload))],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
            }
        }
        states.push(fs::read(&path).unwrap());
    }
    assert!(
        states[19].len() < states[18].len(),
        "the VACUUM must shrink the file"
    );
    states
}

fn page(state: &[u8], pgno: u32) -> &[u8] {
    let ps = PAGE_SIZE as usize;
    &state[(pgno as usize - 1) * ps..pgno as usize * ps]
}

fn commit_of(state: &[u8]) -> u32 {
    (state.len() / PAGE_SIZE as usize) as u32
}

/// Pages of state `txid` that differ from state `txid - 1`.
fn changed(states: &[Vec<u8>], txid: u64) -> BTreeSet<u32> {
    let cur = &states[txid as usize - 1];
    let prev = &states[txid as usize - 2];
    (1..=commit_of(cur))
        .filter(|&p| p > commit_of(prev) || page(cur, p) != page(prev, p))
        .collect()
}

/// Encode an LTX file with the given pages of `state` and put it with
/// timestamp and SHA-256 metadata.
fn put_ltx(
    s: &dyn Storage,
    db: &str,
    level: u8,
    (min, max): (u64, u64),
    ts: i64,
    state: &[u8],
    pages: &BTreeSet<u32>,
) {
    let h = Header::new(PAGE_SIZE, commit_of(state), min, max, ts);
    let bytes = ltx::encode_to_vec(h, pages.iter().map(|&p| (p, page(state, p)))).unwrap();
    let sha = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let meta = Metadata::new()
        .with(META_TIMESTAMP, ltx::format_timestamp_ms(ts).unwrap())
        .with(META_SHA256, hex(sha.as_ref()));
    // The fixture's writes ride out a busy server's 503 (Garage answers
    // "database is locked" under load): the tests are about restores.
    let key = ltx::object_key("", db, level, min, max);
    walsync::storage::retry_transient(5, &key, || s.put(&key, &bytes, &meta)).unwrap();
}

/// The replica used everywhere: snapshots 1-1 and 1-15 at level 9, one
/// level-0 file per txid 2..=30 (page diffs), and a level-1 compaction of
/// 10..=25 (union of the level-0 page sets, values at 25; it spans the
/// VACUUM). Timestamps: level-0 txid k at BASE + k s; the snapshot 1-15 and
/// the compaction half a second after their last txid.
fn build_replica(s: &dyn Storage, db: &str, states: &[Vec<u8>]) {
    let all = |state: &[u8]| (1..=commit_of(state)).collect::<BTreeSet<u32>>();
    put_ltx(
        s,
        db,
        9,
        (1, 1),
        BASE_TS + 1000,
        &states[0],
        &all(&states[0]),
    );
    put_ltx(
        s,
        db,
        9,
        (1, 15),
        BASE_TS + 15_500,
        &states[14],
        &all(&states[14]),
    );
    for k in 2..=TXIDS {
        let ts = BASE_TS + k as i64 * 1000;
        put_ltx(
            s,
            db,
            0,
            (k, k),
            ts,
            &states[k as usize - 1],
            &changed(states, k),
        );
    }
    let state25 = &states[24];
    let union: BTreeSet<u32> = (10..=25)
        .flat_map(|k| changed(states, k))
        .filter(|&p| p <= commit_of(state25))
        .collect();
    put_ltx(s, db, 1, (10, 25), BASE_TS + 25_500, state25, &union);
}

fn key(db: &str, level: u8, min: u64, max: u64) -> String {
    ltx::object_key("", db, level, min, max)
}

// ---------------------------------------------------------------------------
// Core tests, generic over the backend
// ---------------------------------------------------------------------------

fn fixture_restores(s: &dyn Storage) {
    put_fixture(s, "fixture.db");
    let dir = tempfile::tempdir().unwrap();
    let expected = fs::read(Path::new(FIXTURE).join("expected.db")).unwrap();

    let out = dir.path().join("latest.db");
    let plan = restore_to(s, "fixture.db", Target::Latest, &out).unwrap();
    assert_eq!(plan.txid, 7);
    let levels: Vec<(u8, u64, u64)> = plan
        .objects
        .iter()
        .map(|o| (o.level, o.min_txid, o.max_txid))
        .collect();
    assert_eq!(
        levels,
        [
            (9, 1, 2),
            (0, 3, 3),
            (0, 4, 4),
            (0, 5, 5),
            (0, 6, 6),
            (0, 7, 7)
        ]
    );
    assert!(fs::read(&out).unwrap() == expected, "latest != expected.db");

    // From the snapshot alone.
    let out2 = dir.path().join("t2.db");
    let plan = restore_to(s, "fixture.db", Target::Txid(2), &out2).unwrap();
    assert_eq!(plan.objects.len(), 1);
    let conn = rusqlite::Connection::open(&out2).unwrap();
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    drop(conn);

    let out5 = dir.path().join("t5.db");
    let plan = restore_to(s, "fixture.db", Target::Txid(5), &out5).unwrap();
    assert_eq!(plan.objects.len(), 4);
    let conn = rusqlite::Connection::open(&out5).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0 && n < 160, "txid 5 has part of the rows, got {n}");
    drop(conn);
    // Only the restored files (and what SQLite made when we opened them).
    for name in entries(dir.path()) {
        assert!(!name.contains("walsync-restore"), "leftover {name}");
    }
}

fn every_txid(s: &dyn Storage, states: &[Vec<u8>]) {
    build_replica(s, "every.db", states);
    let dir = tempfile::tempdir().unwrap();

    let latest = restore::plan(s, "every.db", Target::Latest).unwrap();
    assert_eq!(latest.txid, TXIDS);
    let shape: Vec<(u8, u64, u64)> = latest
        .objects
        .iter()
        .map(|o| (o.level, o.min_txid, o.max_txid))
        .collect();
    assert_eq!(
        shape,
        [
            (9, 1, 15),
            (1, 10, 25),
            (0, 26, 26),
            (0, 27, 27),
            (0, 28, 28),
            (0, 29, 29),
            (0, 30, 30)
        ]
    );

    for txid in 1..=TXIDS {
        let out = dir.path().join(format!("{txid}.db"));
        let plan = restore_to(s, "every.db", Target::Txid(txid), &out).unwrap();
        assert_eq!(plan.txid, txid);
        let got = fs::read(&out).unwrap();
        assert!(
            got == states[txid as usize - 1],
            "txid {txid}: restored bytes differ from the recorded state ({} vs {} bytes)",
            got.len(),
            states[txid as usize - 1].len()
        );
    }

    // Spooling through ranged GETs, one thread, a one-byte window.
    let out = dir.path().join("spooled.db");
    let plan = restore::plan(s, "every.db", Target::Txid(27)).unwrap();
    let o = RestoreOptions {
        parallel: 1,
        window_bytes: 1,
        spool_threshold: 0,
        ..RestoreOptions::default()
    };
    let summary = restore::restore(s, &plan, &out, &o).unwrap();
    assert_eq!(summary.txid, 27);
    assert_eq!(summary.page_size, PAGE_SIZE);
    assert!(fs::read(&out).unwrap() == states[26]);
    assert!(summary.line().contains("txid 27"), "{}", summary.line());

    // By timestamp: just after each level-0 file lands, that txid.
    for txid in 1..=TXIDS {
        let ts = BASE_TS + txid as i64 * 1000 + 100;
        let plan = restore::plan(s, "every.db", Target::Timestamp(ts)).unwrap();
        assert_eq!(plan.txid, txid, "timestamp {ts}");
    }
    let out = dir.path().join("ts.db");
    let plan = restore_to(s, "every.db", Target::Timestamp(BASE_TS + 22_999), &out).unwrap();
    assert_eq!(plan.txid, 22);
    assert!(fs::read(&out).unwrap() == states[21]);
    let e = restore::plan(s, "every.db", Target::Timestamp(BASE_TS)).unwrap_err();
    assert!(
        e.to_string().contains("nothing in the replica is as old"),
        "{e}"
    );
}

/// Assert `r` failed with a message containing every needle, and that `dir`
/// holds exactly `before` (no output, no temp file).
#[track_caller]
fn assert_fails<T: std::fmt::Debug>(
    r: walsync::Result<T>,
    needles: &[&str],
    dir: &Path,
    before: &BTreeSet<String>,
) {
    let e = r.expect_err("must fail");
    let msg = e.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    for n in needles {
        assert!(msg.contains(n), "{msg:?} should contain {n:?}");
    }
    assert_eq!(&entries(dir), before, "after: {msg}");
}

fn failure_table(s: &dyn Storage, states: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.db");
    let none = BTreeSet::new();
    let name8 = ltx::file_name(8, 8);
    let name5 = ltx::file_name(5, 5);

    // Missing replica.
    assert_fails(
        restore::plan(s, "missing.db", Target::Latest),
        &["missing.db", "no replica"],
        d,
        &none,
    );

    // Gap: delete level-0 txid 8.
    build_replica(s, "gap.db", states);
    s.delete_many(&[key("gap.db", 0, 8, 8)]).unwrap();
    assert_fails(
        restore::plan(s, "gap.db", Target::Txid(12)),
        &[
            "gap.db",
            "gap",
            "txids 8..8",
            &ltx::file_name(7, 7),
            &ltx::file_name(9, 9),
        ],
        d,
        &none,
    );
    // The compaction bridges the gap for later txids.
    restore_to(s, "gap.db", Target::Txid(26), &out).unwrap();
    assert!(fs::read(&out).unwrap() == states[25]);
    fs::remove_file(&out).unwrap();

    // Corrupt byte in an object without SHA-256 metadata (Litestream-like):
    // the LTX checks catch it.
    build_replica(s, "corrupt.db", states);
    let k5 = key("corrupt.db", 0, 5, 5);
    let mut bytes = s.get(&k5).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    s.put(&k5, &bytes, &Metadata::new()).unwrap();
    assert_fails(
        restore_to(s, "corrupt.db", Target::Txid(8), &out),
        &[&name5, "invalid LTX"],
        d,
        &none,
    );
    // The same corruption with the SHA-256 metadata of the original bytes.
    bytes[mid] ^= 0x40;
    let sha = hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
    bytes[mid] ^= 0x40;
    s.put(&k5, &bytes, &Metadata::new().with(META_SHA256, sha))
        .unwrap();
    assert_fails(
        restore_to(s, "corrupt.db", Target::Txid(8), &out),
        &[&name5, "SHA-256 mismatch"],
        d,
        &none,
    );

    // Garbage under a valid name.
    build_replica(s, "garbage.db", states);
    s.put(
        &key("garbage.db", 0, 8, 8),
        &common::pseudo_random(3000, 8),
        &Metadata::new(),
    )
    .unwrap();
    assert_fails(
        restore_to(s, "garbage.db", Target::Txid(9), &out),
        &[&name8, "bad magic"],
        d,
        &none,
    );

    // A valid LTX file under another txid's name.
    build_replica(s, "renamed.db", states);
    let seven = s.get(&key("renamed.db", 0, 7, 7)).unwrap();
    s.put(&key("renamed.db", 0, 8, 8), &seven, &Metadata::new())
        .unwrap();
    assert_fails(
        restore_to(s, "renamed.db", Target::Txid(9), &out),
        &[&name8, "header says txids 7..7"],
        d,
        &none,
    );

    // Wrong SHA-256 metadata on intact bytes.
    build_replica(s, "sha.db", states);
    let k8 = key("sha.db", 0, 8, 8);
    let good = s.get(&k8).unwrap();
    s.put(
        &k8,
        &good,
        &Metadata::new().with(META_SHA256, "00".repeat(32)),
    )
    .unwrap();
    assert_fails(
        restore_to(s, "sha.db", Target::Txid(8), &out),
        &[&name8, "SHA-256 mismatch"],
        d,
        &none,
    );

    // Target before the first snapshot.
    build_replica(s, "late.db", states);
    s.delete_many(&[key("late.db", 9, 1, 1)]).unwrap();
    assert_fails(
        restore::plan(s, "late.db", Target::Txid(10)),
        &[
            "late.db",
            "txid 10 is before the first snapshot",
            &ltx::file_name(1, 15),
        ],
        d,
        &none,
    );
    // Beyond the newest txid.
    assert_fails(
        restore::plan(s, "late.db", Target::Txid(31)),
        &["late.db", "txid 31 is beyond the newest txid 30"],
        d,
        &none,
    );

    // Unparseable object under the database prefix.
    build_replica(s, "stray.db", states);
    s.put("stray.db/0000/notes.txt", b"hello", &Metadata::new())
        .unwrap();
    assert_fails(
        restore::plan(s, "stray.db", Target::Latest),
        &[
            "stray.db",
            "unparseable object name",
            "stray.db/0000/notes.txt",
        ],
        d,
        &none,
    );

    // Page size changing along the chain.
    build_replica(s, "pagesize.db", states);
    let h = Header::new(PAGE_SIZE * 2, 8, 8, 8, BASE_TS);
    let bytes = ltx::encode_to_vec(h, [(1u32, vec![0u8; PAGE_SIZE as usize * 2])]).unwrap();
    s.put(&key("pagesize.db", 0, 8, 8), &bytes, &Metadata::new())
        .unwrap();
    assert_fails(
        restore_to(s, "pagesize.db", Target::Txid(9), &out),
        &[&name8, "page size 2048 differs from page size 1024"],
        d,
        &none,
    );

    // OUT exists, no force: untouched. With force: replaced.
    fs::write(&out, b"keep me").unwrap();
    let with_out: BTreeSet<String> = ["out.db".to_string()].into();
    let plan = restore::plan(s, "sha.db", Target::Txid(5)).unwrap();
    assert_fails(
        restore::restore(s, &plan, &out, &opts()),
        &["out.db", "already exists"],
        d,
        &with_out,
    );
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
    // A stale WAL next to OUT is refused too, and removed with force.
    fs::remove_file(&out).unwrap();
    fs::write(d.join("out.db-wal"), b"stale").unwrap();
    let with_wal: BTreeSet<String> = ["out.db-wal".to_string()].into();
    assert_fails(
        restore::restore(s, &plan, &out, &opts()),
        &["out.db-wal", "replay"],
        d,
        &with_wal,
    );
    fs::write(&out, b"keep me").unwrap();
    let force = RestoreOptions {
        force: true,
        ..RestoreOptions::default()
    };
    restore::restore(s, &plan, &out, &force).unwrap();
    assert!(fs::read(&out).unwrap() == states[4]);
    assert_eq!(entries(d), with_out);
    fs::remove_file(&out).unwrap();

    // Unwritable output directory (tests may run as root, so: a parent
    // that is a regular file, and one that does not exist).
    fs::write(d.join("file"), b"x").unwrap();
    let with_file: BTreeSet<String> = ["file".to_string()].into();
    assert_fails(
        restore::restore(s, &plan, &d.join("file/out.db"), &opts()),
        &["file/out.db", "Not a directory"],
        d,
        &with_file,
    );
    assert_fails(
        restore::restore(s, &plan, &d.join("nodir/out.db"), &opts()),
        &["nodir", "cannot create the restore file"],
        d,
        &with_file,
    );
    // A failure after download (corrupt object late in the chain) with an
    // existing OUT and force: OUT untouched, no temp file.
    fs::write(&out, b"keep me").unwrap();
    let with_both: BTreeSet<String> = ["file".to_string(), "out.db".to_string()].into();
    let plan = restore::plan(s, "garbage.db", Target::Txid(9)).unwrap();
    assert_fails(
        restore::restore(s, &plan, &out, &force),
        &[&name8],
        d,
        &with_both,
    );
    assert_eq!(fs::read(&out).unwrap(), b"keep me");
}

// ---------------------------------------------------------------------------
// Directory backend
// ---------------------------------------------------------------------------

fn file_storage() -> (tempfile::TempDir, FileStorage) {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::create(dir.path().join("bucket")).unwrap();
    (dir, s)
}

#[test]
fn file_fixture() {
    let (_d, s) = file_storage();
    fixture_restores(&s);
}

#[test]
fn file_every_txid_and_timestamp() {
    let (_d, s) = file_storage();
    every_txid(&s, &record_states());
}

#[test]
fn file_failures() {
    let (_d, s) = file_storage();
    failure_table(&s, &record_states());
}

#[test]
fn fixture_from_level0_only() {
    // Litestream's level-0 file 1-1 is a snapshot too: without level 9 the
    // chain starts there.
    let (_d, s) = file_storage();
    put_fixture(&s, "l0.db");
    s.delete_many(&[key("l0.db", 9, 1, 2)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.db");
    let plan = restore_to(&s, "l0.db", Target::Latest, &out).unwrap();
    assert_eq!(plan.objects.len(), 7);
    let expected = fs::read(Path::new(FIXTURE).join("expected.db")).unwrap();
    assert!(fs::read(&out).unwrap() == expected);
}

// ---------------------------------------------------------------------------
// S3 (Garage)
// ---------------------------------------------------------------------------

#[test]
fn s3_fixture() {
    let Some(s) = common::s3_storage_or_skip("restore_fixture") else {
        return;
    };
    fixture_restores(&*s);
}

#[test]
fn s3_every_txid_and_timestamp() {
    let Some(s) = common::s3_storage_or_skip("restore_every") else {
        return;
    };
    every_txid(&*s, &record_states());
}

#[test]
fn s3_failures() {
    let Some(s) = common::s3_storage_or_skip("restore_failures") else {
        return;
    };
    failure_table(&*s, &record_states());
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

#[test]
fn cli_restore() {
    let (d, s) = file_storage();
    let states = record_states();
    build_replica(&s, "cli.db", &states);
    let bucket = format!("file://{}", s.root().display());
    let out_dir = d.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out: PathBuf = out_dir.join("cli.db");
    let out_s = out.to_str().unwrap();

    let o = walsync(&[
        "restore", "cli.db", "-o", out_s, "--bucket", &bucket, "--txid", "0x1c",
    ]);
    assert!(o.status.success(), "{o:?}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("restored cli.db at txid 28"), "{stdout}");
    assert!(o.stderr.is_empty(), "{o:?}");
    assert!(fs::read(&out).unwrap() == states[27]);

    // OUT exists: one line on stderr, non-zero exit, file untouched.
    let o = walsync(&["restore", "cli.db", "-o", out_s, "--bucket", &bucket]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(fs::read(&out).unwrap() == states[27]);

    // --if-db-not-exists: nothing to do, exit 0.
    let o = walsync(&[
        "restore",
        "cli.db",
        "-o",
        out_s,
        "--bucket",
        &bucket,
        "--if-db-not-exists",
    ]);
    assert!(o.status.success(), "{o:?}");

    // --force with a timestamp.
    let ts = ltx::format_timestamp_ms(BASE_TS + 12_200).unwrap();
    let o = walsync(&[
        "restore",
        "cli.db",
        "-o",
        out_s,
        "--bucket",
        &bucket,
        "--force",
        "--timestamp",
        &ts,
        "--parallel",
        "2",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(fs::read(&out).unwrap() == states[11]);

    // No replica: an error, unless --if-replica-exists.
    let other = out_dir.join("other.db");
    let other_s = other.to_str().unwrap();
    let o = walsync(&["restore", "nope.db", "-o", other_s, "--bucket", &bucket]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("nope.db") && stderr.contains("no replica"),
        "{stderr}"
    );
    let o = walsync(&[
        "restore",
        "nope.db",
        "-o",
        other_s,
        "--bucket",
        &bucket,
        "--if-replica-exists",
    ]);
    assert!(o.status.success(), "{o:?}");
    assert!(!other.exists());

    // A gap: one line naming the txids.
    s.delete_many(&[key("cli.db", 0, 3, 3)]).unwrap();
    let o = walsync(&[
        "restore", "cli.db", "-o", other_s, "--bucket", &bucket, "--txid", "5",
    ]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("txids 3..3"), "{stderr}");
    assert_eq!(entries(&out_dir), ["cli.db".to_string()].into());
}

/// Manual check of a larger restore (progress line, throughput):
/// `WALSYNC_BIG_REPLICA=/tmp/dir cargo test --test restore big_replica -- --ignored`
/// writes a 40 MB snapshot plus 200 level-0 files under `file:///tmp/dir`,
/// database `big.db`.
#[test]
#[ignore]
fn big_replica() {
    let Some(root) = std::env::var_os("WALSYNC_BIG_REPLICA") else {
        return;
    };
    let s = FileStorage::create(PathBuf::from(root)).unwrap();
    let ps = 4096u32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=DELETE; CREATE TABLE t(x BLOB)")
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..9_000u64 {
        tx.execute(
            "INSERT INTO t VALUES (?1)",
            [common::pseudo_random(4000, i)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    let mut db = fs::read(&path).unwrap();
    let commit = (db.len() / ps as usize) as u32;
    let h = Header::new(ps, commit, 1, 1, BASE_TS);
    let bytes = ltx::encode_to_vec(
        h,
        (1..=commit).map(|p| (p, &db[(p as usize - 1) * 4096..p as usize * 4096])),
    )
    .unwrap();
    s.put(&key("big.db", 9, 1, 1), &bytes, &Metadata::new())
        .unwrap();
    for t in 2..=200u64 {
        conn.execute(
            "UPDATE t SET x = ?1 WHERE rowid = ?2",
            rusqlite::params![common::pseudo_random(4000, t * 7), t as i64 * 40],
        )
        .unwrap();
        let cur = fs::read(&path).unwrap();
        let commit = (cur.len() / ps as usize) as u32;
        let changed: Vec<u32> = (1..=commit)
            .filter(|&p| {
                let r = (p as usize - 1) * 4096..p as usize * 4096;
                db.get(r.clone()) != cur.get(r)
            })
            .collect();
        let h = Header::new(ps, commit, t, t, BASE_TS + t as i64);
        let bytes = ltx::encode_to_vec(
            h,
            changed
                .iter()
                .map(|&p| (p, &cur[(p as usize - 1) * 4096..p as usize * 4096])),
        )
        .unwrap();
        s.put(&key("big.db", 0, t, t), &bytes, &Metadata::new())
            .unwrap();
        db = cur;
    }
    fs::copy(&path, s.root().join("expected.db")).unwrap();
}
