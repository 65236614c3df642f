//! The SQLite behaviour walsync's checkpoint protocol rests on, checked
//! against real SQLite (bundled): the wal-index commit counter, and which
//! readers pin the WAL against restarts and truncation.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use walsync::sqlite::shm::Shm;
use walsync::sqlite::wal::{Position, Scanner, WalHeader};

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let c = open(&path);
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x);")
            .unwrap();
        Db { _dir: dir, path }
    }
    fn wal(&self) -> Vec<u8> {
        std::fs::read(self.path.with_extension("db-wal")).unwrap_or_default()
    }
}

fn open(p: &Path) -> Connection {
    let c = Connection::open(p).unwrap();
    c.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA busy_timeout=0;")
        .unwrap();
    c
}

fn begin_read(c: &Connection) {
    c.execute_batch("BEGIN").unwrap();
    let _: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
}

fn checkpoint(c: &Connection, mode: &str) -> (i64, i64, i64) {
    c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
}

fn commits_in_wal(wal: &[u8]) -> usize {
    let h = WalHeader::parse(wal).unwrap();
    Scanner::new(wal, Position::start(&h)).unwrap().count()
}

#[test]
fn change_counter_counts_commits_across_restarts() {
    let db = Db::new();
    let app = open(&db.path);
    let mut shm = Shm::for_db(&db.path);
    assert_eq!(
        shm.read().unwrap(),
        None,
        "no connection has used the WAL yet"
    );
    app.execute("INSERT INTO t VALUES (0)", []).unwrap();
    let h0 = shm.read().unwrap().expect("initialised");
    for i in 0..10 {
        app.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    let h1 = shm.read().unwrap().unwrap();
    assert_eq!(h1.change.wrapping_sub(h0.change), 10);
    let wal = db.wal();
    let wh = WalHeader::parse(&wal).unwrap();
    assert_eq!((h1.salt1, h1.salt2), (wh.salt1, wh.salt2));
    assert_eq!(h1.page_size, wh.page_size);
    assert_eq!(
        h1.mx_frame as u64,
        (wal.len() as u64 - 32) / wh.frame_size()
    );

    // A rolled-back transaction does not count.
    app.execute_batch("BEGIN; INSERT INTO t VALUES (99); ROLLBACK;")
        .unwrap();
    assert_eq!(shm.read().unwrap().unwrap().change, h1.change);

    // Checkpoint + restart keep the counter; salts follow the WAL header.
    let (_, log, ckpt) = checkpoint(&app, "PASSIVE");
    assert_eq!(log, ckpt);
    assert_eq!(shm.read().unwrap().unwrap().backfill as i64, ckpt);
    app.execute("INSERT INTO t VALUES (100)", []).unwrap();
    let h2 = shm.read().unwrap().unwrap();
    assert_eq!(h2.change.wrapping_sub(h1.change), 1);
    assert_eq!(h2.salt1, wh.salt1.wrapping_add(1));
    assert_eq!(h2.mx_frame, 1);
    assert_eq!(commits_in_wal(&db.wal()), 1);

    // TRUNCATE also keeps it.
    checkpoint(&app, "TRUNCATE");
    assert_eq!(db.wal().len(), 0);
    let h3 = shm.read().unwrap().unwrap();
    assert_eq!(h3.change, h2.change);
    assert_eq!(h3.mx_frame, 0);
}

#[test]
fn a_reader_using_wal_frames_pins_the_wal() {
    let db = Db::new();
    let app = open(&db.path);
    app.execute("INSERT INTO t VALUES (1)", []).unwrap();
    // walsync's reader starts while the WAL holds un-backfilled frames.
    let walsync = open(&db.path);
    begin_read(&walsync);
    app.execute("INSERT INTO t VALUES (2)", []).unwrap();
    let salts = WalHeader::parse(&db.wal()).unwrap().salt1;
    for mode in ["PASSIVE", "FULL", "RESTART", "TRUNCATE"] {
        let (busy, _, _) = checkpoint(&app, mode);
        if mode != "PASSIVE" {
            assert_eq!(busy, 1, "{mode} must not complete past the reader");
        }
        app.execute("INSERT INTO t VALUES (3)", []).unwrap();
        let wal = db.wal();
        assert!(!wal.is_empty(), "{mode} truncated a pinned WAL");
        assert_eq!(
            WalHeader::parse(&wal).unwrap().salt1,
            salts,
            "{mode} restarted a pinned WAL"
        );
    }
    walsync.execute_batch("COMMIT").unwrap();
}

#[test]
fn a_reader_of_a_fully_backfilled_wal_blocks_backfill_but_not_one_restart() {
    let db = Db::new();
    let app = open(&db.path);
    for i in 0..5 {
        app.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    let (_, log, ckpt) = checkpoint(&app, "PASSIVE");
    assert_eq!(log, ckpt);
    let salt = WalHeader::parse(&db.wal()).unwrap().salt1;
    // The reader needs no WAL frame: it does not pin the WAL.
    let walsync = open(&db.path);
    begin_read(&walsync);
    app.execute("INSERT INTO t VALUES (10)", []).unwrap();
    assert_eq!(
        WalHeader::parse(&db.wal()).unwrap().salt1,
        salt.wrapping_add(1),
        "restart happened"
    );
    // ...but it keeps the new generation from being backfilled, so no second
    // restart or truncation can follow while it is held.
    let mut shm = Shm::for_db(&db.path);
    for mode in ["PASSIVE", "TRUNCATE"] {
        checkpoint(&app, mode);
        assert_eq!(
            shm.read().unwrap().unwrap().backfill,
            0,
            "{mode} backfilled"
        );
        app.execute("INSERT INTO t VALUES (11)", []).unwrap();
        let wal = db.wal();
        assert_eq!(WalHeader::parse(&wal).unwrap().salt1, salt.wrapping_add(1));
    }
    assert_eq!(commits_in_wal(&db.wal()), 3);
    walsync.execute_batch("COMMIT").unwrap();
}

#[test]
fn a_held_write_lock_stops_every_change() {
    let db = Db::new();
    let app = open(&db.path);
    app.execute("INSERT INTO t VALUES (1)", []).unwrap();
    let fence = open(&db.path);
    fence.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(app.execute("INSERT INTO t VALUES (2)", []).is_err());
    let (busy, _, _) = checkpoint(&app, "TRUNCATE");
    assert_eq!(busy, 1);
    assert!(!db.wal().is_empty());
    // A PASSIVE checkpoint still runs under the fence.
    let walsync = open(&db.path);
    let (busy, log, ckpt) = checkpoint(&walsync, "PASSIVE");
    assert_eq!((busy, log), (0, ckpt));
    fence.execute_batch("ROLLBACK").unwrap();
}

#[test]
fn trimming_the_wal_index_map_changes_nothing_sqlite_sees() {
    use walsync::sqlite::shm::trim_sqlite_map;
    let db = Db::new();
    let app = open(&db.path);
    let walsync = open(&db.path);
    // Not in WAL mode: nothing to trim, and no `-shm` may be created (it
    // would stay open and locked for the life of the process).
    assert!(!trim_sqlite_map(&Connection::open_in_memory().unwrap()));
    let rollback = db.path.with_file_name("rollback.db");
    let rc = Connection::open(&rollback).unwrap();
    rc.execute_batch("CREATE TABLE r(x)").unwrap();
    assert!(!trim_sqlite_map(&rc));
    assert!(!rollback.with_file_name("rollback.db-shm").exists());
    for i in 0..100 {
        app.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    begin_read(&walsync);
    assert!(trim_sqlite_map(&walsync));
    let n: i64 = walsync
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 100);
    walsync.execute_batch("COMMIT").unwrap();
    // The application commits and checkpoints through the trimmed map too
    // (it is shared by every connection of the process to this file).
    for i in 100..200 {
        app.execute("INSERT INTO t VALUES (?1)", [i]).unwrap();
    }
    assert!(trim_sqlite_map(&app));
    let (busy, _, _) = checkpoint(&app, "TRUNCATE");
    assert_eq!(busy, 0);
    assert!(db.wal().is_empty());
    let n: i64 = walsync
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 200);
}
