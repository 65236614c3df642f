//! Follow mode (src/follow/) through schema changes: a primary whose
//! `sqlite_master` spans several pages runs migrations (CREATE TABLE,
//! DROP TABLE, VACUUM) while a follower applies them; readers of the
//! follower must only ever see whole states, and the follower must keep
//! following. Every page write of an object that changes the schema cookie
//! must not make SQLite re-read a half-written schema (review finding S1).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use common::daemon::Env;
use common::follow::{daemon, follower, open_ro};
use common::process::wait_for;

/// A table with a long definition and an index: 100 of them make
/// `sqlite_master` span several 4 KiB pages.
fn create_table(c: &Connection, i: u32) -> rusqlite::Result<()> {
    c.execute_batch(&format!(
        "CREATE TABLE tab_{i}(id INTEGER PRIMARY KEY, a_rather_long_column_name TEXT,
             another_rather_long_column_name BLOB, yet_another_column REAL,
             a_fifth_column_with_a_default TEXT DEFAULT 'some default text');
         CREATE INDEX tab_{i}_by_a ON tab_{i}(a_rather_long_column_name, yet_another_column);
         INSERT INTO tab_{i}(a_rather_long_column_name, another_rather_long_column_name)
             VALUES ('row of {i}', randomblob(300));"
    ))
}

/// What a reader compares: the schema (names and SQL, in name order) and
/// the number of rows over every table, read in one read transaction.
fn state(c: &Connection) -> rusqlite::Result<(Vec<String>, i64)> {
    c.execute_batch("BEGIN")?;
    let names: Vec<String> = c
        .prepare("SELECT name || ':' || coalesce(sql, '') FROM sqlite_master ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut rows = 0i64;
    for t in &tables {
        rows += c.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
            r.get::<_, i64>(0)
        })?;
    }
    c.execute_batch("COMMIT")?;
    Ok((names, rows))
}

fn follower_state(out: &Path) -> Option<(Vec<String>, i64)> {
    open_ro(out).ok().and_then(|c| state(&c).ok())
}

#[test]
fn follower_applies_schema_changes_of_a_multi_page_schema() {
    let Some(env) = Env::new("follow_schema") else {
        return;
    };
    let src = env.path("app.db");
    let out = env.path("follower.db");
    let w = Connection::open(&src).unwrap();
    w.busy_timeout(Duration::from_secs(5)).unwrap();
    w.execute_batch("PRAGMA journal_mode=WAL; BEGIN").unwrap();
    for i in 0..100 {
        create_table(&w, i).unwrap();
    }
    w.execute_batch("COMMIT").unwrap();
    let schema_pages: i64 = w
        .query_row(
            "SELECT count(*) FROM dbstat WHERE name = 'sqlite_schema'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0);
    eprintln!("sqlite_master spans {schema_pages} pages");

    let mut primary = daemon(
        &env,
        &[&src],
        "follow_schema-primary",
        &["--min-put-interval", "0s"],
    );
    let mut f = follower(
        &env,
        "app.db",
        &out,
        "follow_schema-follower",
        &["--wait-for-replica", "--follow-interval-max", "1s"],
    );
    let want = state(&w).unwrap();
    assert!(
        wait_for(Duration::from_secs(60), || follower_state(&out).as_ref()
            == Some(&want)),
        "the follower did not restore the first state\n{}",
        f.log_tail(20)
    );

    // Readers: a new read-only connection each time, one read transaction
    // with quick_check; any error or damage is a failure.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, reads, out) = (stop.clone(), reads.clone(), out.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                let c = open_ro(&out).map_err(|e| format!("open: {e}"))?;
                state(&c).map_err(|e| format!("read: {e}"))?;
                let qc: String = c
                    .query_row("PRAGMA quick_check", [], |r| r.get(0))
                    .map_err(|e| format!("quick_check: {e}"))?;
                if qc != "ok" {
                    return Err(format!("quick_check: {qc}"));
                }
                reads.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })
    };

    // Migrations: 10 rounds of 10 new tables, then drops, then VACUUM.
    for round in 0..10u32 {
        w.execute_batch("BEGIN").unwrap();
        for i in 0..10 {
            create_table(&w, 100 + round * 10 + i).unwrap();
        }
        w.execute_batch("COMMIT").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        w.execute_batch(&format!(
            "DROP TABLE tab_{}; DROP TABLE tab_{};",
            round * 3,
            round * 3 + 1
        ))
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        f.assert_running();
    }
    w.execute_batch("VACUUM").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    create_table(&w, 500).unwrap();
    let want = state(&w).unwrap();
    let reached = wait_for(Duration::from_secs(60), || {
        follower_state(&out).as_ref() == Some(&want)
    });
    stop.store(true, Ordering::Relaxed);
    let read = reader.join().unwrap();
    assert!(
        reached,
        "the follower did not reach the final state (running: {})\n{}",
        f.running(),
        f.log_tail(30)
    );
    read.unwrap_or_else(|e| panic!("a reader: {e}\n{}", f.log_tail(30)));
    assert!(reads.load(Ordering::Relaxed) > 0, "no read completed");
    f.assert_running();
    assert!(f.sigterm(Duration::from_secs(30)).success());
    assert!(primary.sigterm(Duration::from_secs(30)).success());
    let c = Connection::open(&out).unwrap();
    let ic: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ic, "ok");
}
