//! SQLite's check of a restored database (issue #13 item 2): `PRAGMA
//! quick_check` by default, `PRAGMA integrity_check` with
//! `--integrity-check`. Real databases, damaged on purpose, replicated with
//! `walsync snapshot` to the local S3 server and restored with the CLI.
//!
//! Needs the local S3 server (`scripts/s3-server.sh start`); skipped
//! without it unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::dir_entries as entries;
use common::process::{text, walsync};
use rusqlite::Connection;

/// The rows `PRAGMA <check>` returns (`["ok"]` for a sound database), or
/// SQLite's error as the only row.
fn check(path: &Path, pragma: &str) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let rows = conn
        .prepare(&format!("PRAGMA {pragma}(5)"))
        .and_then(|mut st| {
            st.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        });
    rows.unwrap_or_else(|e| vec![format!("error: {e}")])
}

/// A WAL database of 3,000 rows with an index on `a`.
fn create(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b TEXT);
         CREATE INDEX t_a ON t(a);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO t SELECT i, 'a' || i, printf('b%06d', i) FROM n;",
    )
    .unwrap();
    conn
}

/// `walsync snapshot` of `src` as `name`; returns the txid it stored.
fn snapshot(src: &Path, name: &str, bucket: &str) -> u64 {
    let o = walsync(&[
        "snapshot",
        src.to_str().unwrap(),
        "--bucket",
        bucket,
        "--name",
        name,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let txid = out
        .split("stored as txid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| t.parse().ok());
    txid.unwrap_or_else(|| panic!("no txid in {out:?}"))
}

/// A restore that failed with one error line (log lines aside) holding
/// every string of `want`, and left nothing in `out_dir`.
fn assert_refused(o: &std::process::Output, want: &[String], out_dir: &Path) {
    assert!(!o.status.success(), "restored: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains(" INFO ") && !l.contains(" WARN "))
        .collect();
    assert_eq!(lines.len(), 1, "not one error line: {err}");
    eprintln!("error line: {}", lines[0]);
    for w in want {
        assert!(lines[0].contains(w.as_str()), "{w:?} not in {:?}", lines[0]);
    }
    assert!(entries(out_dir).is_empty(), "{:?}", entries(out_dir));
}

/// An index that no longer matches its table (its definition rewritten
/// through `writable_schema`: the entries hold `a`, the schema says `b`).
/// Every page is sound, so `quick_check` passes and the default restore
/// installs the database; `integrity_check` finds the index wrong, so
/// `--integrity-check` fails with one line naming the database and txid and
/// leaves nothing at the output. `--dry-run` names the check that will run.
#[test]
fn integrity_check_flag_catches_what_quick_check_passes() {
    let Some(config) = common::s3_config_or_skip("restore_check_index") else {
        return;
    };
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    let conn = create(&src);
    conn.execute_batch(
        "PRAGMA writable_schema=ON;
         UPDATE sqlite_schema SET sql = 'CREATE INDEX t_a ON t(b)' WHERE name = 't_a';
         PRAGMA writable_schema=OFF;",
    )
    .unwrap();
    drop(conn);
    assert_eq!(check(&src, "quick_check"), ["ok"]);
    let full = check(&src, "integrity_check");
    assert!(
        full.iter().any(|r| r.contains("missing from index t_a")),
        "the damage is not what this test is about: {full:?}"
    );
    let txid = snapshot(&src, "idx.db", &bucket);

    // --dry-run says which check will run.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.db");
    let out_s = out.to_str().unwrap();
    let base = ["restore", "idx.db", "-o", out_s, "--bucket", &bucket];
    let o = walsync(&[&base[..], &["--dry-run"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("then PRAGMA quick_check"), "{plan}");
    let o = walsync(&[&base[..], &["--dry-run", "--integrity-check", "--json"]].concat());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["check"], "integrity_check", "{v}");
    assert!(entries(out_dir.path()).is_empty());

    // --integrity-check refuses the database: one line, nothing written.
    let o = walsync(&[&base[..], &["--integrity-check"]].concat());
    let want = [
        "idx.db".to_string(),
        format!("txid {txid}"),
        "PRAGMA integrity_check".into(),
        "missing from index t_a".into(),
    ];
    assert_refused(&o, &want, out_dir.path());

    // The default (quick_check) restores it, and says which check passed.
    let o = walsync(&base);
    assert!(o.status.success(), "{}", text(&o));
    let summary = String::from_utf8_lossy(&o.stdout);
    assert!(summary.contains("quick_check ok"), "{summary}");
    assert_eq!(entries(out_dir.path()), BTreeSet::from(["out.db".into()]));
    assert_eq!(check(&out, "quick_check"), ["ok"]);
    assert_eq!(check(&out, "integrity_check"), full);
}

/// A b-tree page whose cell count is impossible (edited through
/// `sqlite_dbpage`): the default restore's `quick_check` fails with one
/// line naming the database and txid, and nothing is left at the output.
#[test]
fn default_check_catches_a_broken_page() {
    let Some(config) = common::s3_config_or_skip("restore_check_page") else {
        return;
    };
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    let conn = create(&src);
    // A leaf page of the table (type 0x0d), not page 1: cell count 0xffff.
    let pgno: i64 = conn
        .query_row(
            "SELECT pgno FROM sqlite_dbpage WHERE pgno > 1 AND substr(data, 1, 1) = x'0d' \
             ORDER BY pgno DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut page: Vec<u8> = conn
        .query_row(
            "SELECT data FROM sqlite_dbpage WHERE pgno = ?1",
            [pgno],
            |r| r.get(0),
        )
        .unwrap();
    page[3] = 0xff;
    page[4] = 0xff;
    conn.execute(
        "UPDATE sqlite_dbpage SET data = ?2 WHERE pgno = ?1",
        rusqlite::params![pgno, page],
    )
    .unwrap();
    drop(conn);
    assert_ne!(check(&src, "quick_check"), ["ok"]);
    let txid = snapshot(&src, "page.db", &bucket);

    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.db");
    let o = walsync(&[
        "restore",
        "page.db",
        "-o",
        out.to_str().unwrap(),
        "--bucket",
        &bucket,
    ]);
    let want = [
        "page.db".to_string(),
        format!("txid {txid}"),
        "PRAGMA quick_check".into(),
    ];
    assert_refused(&o, &want, out_dir.path());
}
