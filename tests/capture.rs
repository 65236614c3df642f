//! The capture path under adversity: a slow disk, symlinked paths, identical
//! commits, WAL growth while uploads are in flight, walsync's own TRUNCATE
//! checkpoints, a database file longer than the database.
//!
//! Each test runs the real `walsync-sync` binary against a local-directory
//! replica (`--bucket file:///…`: what is tested here is the capture, not the
//! network) and judges the result with the oracle's independent restore.
//! Each scenario was a way to lose or delay data, or to waste a full snapshot
//! per transaction, before the fix it guards.
//!
//! The slow-disk test builds an `LD_PRELOAD` shim from C source with `gcc`
//! that delays `fsync`/`fdatasync` of `*-wal` files, and runs the application
//! as a Python `sqlite3` process under it (the shim slows the application
//! only, never walsync).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::{metric, scrape};
use common::oracle::{self, Oracle, Writer};
use common::process::{Cmd, Proc};
use walsync::ltx::SNAPSHOT_LEVEL;
use walsync::storage::{FileStorage, Storage};

const BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");
const CATCH_UP: Duration = Duration::from_secs(30);

/// A test's directories: databases, the replica, the daemon's log.
struct World {
    dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    test: &'static str,
}

impl World {
    fn new(test: &'static str) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("replica")).unwrap();
        let storage: Arc<dyn Storage> =
            Arc::new(FileStorage::create(dir.path().join("replica")).unwrap());
        World { dir, storage, test }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn bucket(&self) -> String {
        format!("file://{}", self.path("replica").display())
    }

    /// `walsync-sync args… --bucket file:///…`, logging to the test's log.
    fn daemon(&self, args: &[&str]) -> Proc {
        self.daemon_env(args, &[])
    }

    fn daemon_env(&self, args: &[&str], envs: &[(&str, String)]) -> Proc {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--bucket".to_string(), self.bucket()]);
        all.extend(["--shutdown-timeout".to_string(), "10s".to_string()]);
        let log = common::process::log_path(self.test);
        Proc::start(BIN, &all, envs, &log)
    }

    fn replica(&self, name: &str) -> Oracle {
        Oracle::new(self.storage.clone(), name)
    }
}

/// Number of snapshots (level-9 objects) stored for `name`.
fn snapshots(r: &Oracle) -> usize {
    r.list()
        .iter()
        .filter(|o| o.level == SNAPSHOT_LEVEL)
        .count()
}

/// The warnings that announce an unplanned snapshot.
fn unplanned_snapshots(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("the next txid will be a snapshot"))
        .collect()
}

fn stop(mut d: Proc) -> String {
    let status = d.sigterm(Duration::from_secs(20));
    assert!(status.success(), "walsync-sync exited with {status}");
    d.log_text()
}

// ---------------------------------------------------------------------------
// 1. A commit published long after its WAL write
// ---------------------------------------------------------------------------

const FSYNC_SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Delay fsync/fdatasync of files whose name ends in "-wal" by
   $WALSYNC_FSYNC_DELAY_MS milliseconds: a slow or saturated disk, for the
   process that preloads this library only. */
static void delay(int fd) {
    const char *ms = getenv("WALSYNC_FSYNC_DELAY_MS");
    char link[64], target[4096];
    ssize_t n;
    if (!ms) return;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    n = readlink(link, target, sizeof target - 1);
    if (n < 4) return;
    target[n] = 0;
    if (strcmp(target + n - 4, "-wal") != 0) return;
    long v = atol(ms);
    struct timespec ts = { v / 1000, (v % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    delay(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    delay(fd);
    return real(fd);
}
"#;

/// Build the fsync-delay shim into `dir`; `None` (skipped) without gcc or
/// python3, unless external tools are required.
fn build_shim(dir: &Path) -> Option<PathBuf> {
    let have = |tool: &str| {
        Cmd::new(tool)
            .arg("--version")
            .try_output()
            .is_ok_and(|o| o.status.success())
    };
    for tool in ["gcc", "python3"] {
        if !have(tool) {
            assert!(
                !common::require_external(),
                "{tool} not found (WALSYNC_REQUIRE_EXTERNAL=1)"
            );
            eprintln!("skipped: {tool} not found");
            return None;
        }
    }
    let src = dir.join("fsync_delay.c");
    let lib = dir.join("fsync_delay.so");
    std::fs::write(&src, FSYNC_SHIM).unwrap();
    let out = Cmd::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output();
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(lib)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// SQLite publishes a commit in the wal-index (shared memory, no file event)
/// only after the WAL fsync returns. With a 5 s fsync, the commit must still
/// be stored within 1 s of its publication, and the lag must show meanwhile.
#[test]
fn commit_published_late_is_shipped_within_a_second() {
    late_publication("late_publication", false);
}

/// The same, as the first commit of a new WAL generation: after a TRUNCATE
/// checkpoint, a connection that never restarted the WAL itself writes the
/// new generation under random salts, which reach the wal-index only when
/// the commit is published.
#[test]
fn first_commit_after_truncate_published_late_is_shipped() {
    late_publication("late_after_truncate", true);
}

fn late_publication(test: &'static str, truncate_first: bool) {
    let w = World::new(test);
    let Some(shim) = build_shim(w.dir.path()) else {
        return;
    };
    let db = w.path("app.db");
    let mut app = Writer::create(&db, 1);
    app.conn
        .execute_batch("CREATE TABLE late(x TEXT NOT NULL);")
        .unwrap();
    app.commit(5);
    let port = common::closed_port();
    let addr = format!("127.0.0.1:{port}");
    let d = w.daemon(&[db.to_str().unwrap(), "--metrics-addr", &addr]);
    let mut replica = w.replica("app.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    if truncate_first {
        let (busy, _, _) = app.checkpoint("TRUNCATE");
        assert_eq!(busy, 0, "TRUNCATE checkpoint was busy");
        assert_eq!(std::fs::metadata(w.path("app.db-wal")).unwrap().len(), 0);
    }
    // Let the daemon settle: no pass is pending when the commit is written.
    std::thread::sleep(Duration::from_millis(1500));
    let before = replica.newest().unwrap();

    const DELAY_MS: u64 = 5000;
    let script = "import sqlite3, sys, time\n\
         db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n\
         db.execute('PRAGMA synchronous=FULL')\n\
         db.execute('BEGIN IMMEDIATE')\n\
         db.execute(\"INSERT INTO late VALUES ('published late')\")\n\
         t0 = time.time()\n\
         db.execute('COMMIT')\n\
         t1 = time.time()\n\
         print(t0, t1, flush=True)\n\
         time.sleep(3)\n";
    let mut py = Cmd::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&db)
        .env("LD_PRELOAD", &shim)
        .env("WALSYNC_FSYNC_DELAY_MS", DELAY_MS.to_string())
        .stdout_to(w.path("writer.out"))
        .spawn(&w.path("writer.log"));
    let t_start = unix_now();
    // Watch storage and the lag gauge until the commit is stored.
    let mut stored_at = None;
    let mut lags: Vec<(f64, f64)> = Vec::new();
    let mut last_scrape = Instant::now() - Duration::from_secs(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_at.is_none() && Instant::now() < deadline {
        if replica.newest().is_some_and(|n| n > before) {
            stored_at = Some(unix_now());
            break;
        }
        if last_scrape.elapsed() >= Duration::from_millis(200) {
            last_scrape = Instant::now();
            if let Some(lag) = scrape(&addr)
                .and_then(|p| metric(&p, "walsync_database_lag_seconds", "db=\"app.db\""))
            {
                lags.push((unix_now(), lag));
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = py.wait(Duration::from_secs(30));
    assert!(status.success(), "python writer failed: {}", py.log_text());
    let text = py.stdout_text();
    let mut times = text.split_whitespace().map(|t| t.parse::<f64>().unwrap());
    let (t0, t1) = (times.next().unwrap(), times.next().unwrap());
    assert!(
        t1 - t0 >= (DELAY_MS as f64 / 1000.0) - 0.1,
        "the fsync shim did not delay the commit (took {:.2}s): the test proves nothing",
        t1 - t0
    );
    let stored_at = stored_at.unwrap_or_else(|| {
        panic!(
            "the commit published at +{:.2}s was not stored within 30 s",
            t1 - t_start
        )
    });
    eprintln!(
        "written at +{:.2}s, published at +{:.2}s, stored at +{:.2}s ({:.3}s after publication)",
        t0 - t_start,
        t1 - t_start,
        stored_at - t_start,
        stored_at - t1
    );
    assert!(
        stored_at - t1 <= 1.0,
        "stored {:.3}s after publication (must be within 1 s)",
        stored_at - t1
    );
    // While the commit was written but not published (the last delayed
    // fsync; a new generation's header is synced before its frames are
    // written), the lag grew.
    let synced_from = t1 - DELAY_MS as f64 / 1000.0;
    let waiting: Vec<f64> = lags
        .iter()
        .filter(|(at, _)| *at > synced_from + 1.0 && *at < t1 - 0.3)
        .map(|(_, lag)| *lag)
        .collect();
    assert!(
        !waiting.is_empty() && waiting.iter().all(|l| *l > 0.0),
        "lag while the commit awaited publication: {waiting:?} (all samples: {lags:?})"
    );
    assert!(
        waiting.iter().any(|l| *l >= 1.5),
        "lag never reached the time the commit waited: {waiting:?}"
    );
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    drop(app);
    stop(d);
}

// ---------------------------------------------------------------------------
// 2. Symlinks: SQLite keeps -wal and -shm beside the real file
// ---------------------------------------------------------------------------

/// A database given as a symlink to the real file, opened by the
/// application through the link too: every transaction is replicated under
/// the name the user gave, with one snapshot.
#[test]
fn symlinked_database_file_is_replicated_completely() {
    let w = World::new("symlinked_file");
    std::fs::create_dir_all(w.path("real")).unwrap();
    std::fs::create_dir_all(w.path("links")).unwrap();
    let real = w.path("real/store.db");
    let link = w.path("links/app.db");
    let mut app = Writer::create(&real, 1);
    app.commit(3);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let d = w.daemon(&[link.to_str().unwrap()]);
    // The application writes through the link as well (same file for SQLite).
    let mut via_link = Writer::create(&link, 1);
    for _ in 0..40 {
        via_link.commit(2);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut replica = w.replica("app.db");
    oracle::wait_caught_up(&mut replica, &real, CATCH_UP);
    assert_eq!(replica.first_gap(), None);
    let log = stop(d);
    assert_eq!(snapshots(&replica), 1, "snapshots stored");
    assert!(
        unplanned_snapshots(&log).is_empty(),
        "unplanned snapshots: {:?}",
        unplanned_snapshots(&log)
    );
    drop((app, via_link));
}

/// A link retargeted to another database while idle (a release switch):
/// walsync follows it without any file event where it watches, and
/// replicates the new target completely (after a snapshot).
#[test]
fn retargeted_symlink_is_followed() {
    let w = World::new("symlink_retarget");
    std::fs::create_dir_all(w.path("v1")).unwrap();
    std::fs::create_dir_all(w.path("v2")).unwrap();
    let mut one = Writer::create(&w.path("v1/app.db"), 1);
    one.commit(3);
    let mut two = Writer::create(&w.path("v2/app.db"), 2);
    two.commit(4);
    let link = w.path("current.db");
    std::os::unix::fs::symlink(w.path("v1/app.db"), &link).unwrap();
    let d = w.daemon(&[link.to_str().unwrap()]);
    let mut replica = w.replica("current.db");
    oracle::wait_caught_up(&mut replica, &w.path("v1/app.db"), CATCH_UP);
    std::thread::sleep(Duration::from_secs(2));
    // Retarget atomically, as deploy tools do.
    std::os::unix::fs::symlink(w.path("v2/app.db"), w.path("next.db")).unwrap();
    std::fs::rename(w.path("next.db"), &link).unwrap();
    for _ in 0..10 {
        two.commit(1);
        std::thread::sleep(Duration::from_millis(50));
    }
    oracle::wait_caught_up(&mut replica, &w.path("v2/app.db"), CATCH_UP);
    // And its later commits, through the events of its own directory.
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        two.commit(2);
    }
    oracle::wait_caught_up(&mut replica, &w.path("v2/app.db"), CATCH_UP);
    stop(d);
    drop((one, two));
}

/// A glob through a symlinked directory: the databases there at start and
/// one created later are replicated completely.
#[test]
fn glob_through_symlinked_directory() {
    let w = World::new("symlinked_dir");
    std::fs::create_dir_all(w.path("volume/data")).unwrap();
    std::os::unix::fs::symlink(w.path("volume/data"), w.path("current")).unwrap();
    let mut a = Writer::create(&w.path("volume/data/a.db"), 1);
    a.commit(2);
    let pattern = format!("{}/*.db", w.path("current").display());
    let d = w.daemon(&[&pattern]);
    let mut ra = w.replica("a.db");
    oracle::wait_caught_up(&mut ra, &w.path("volume/data/a.db"), CATCH_UP);
    // Created after start, in the real directory.
    let mut b = Writer::create(&w.path("volume/data/b.db"), 2);
    for i in 0..20 {
        a.commit(1);
        b.commit(1 + i % 3);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut rb = w.replica("b.db");
    oracle::wait_caught_up(&mut ra, &w.path("volume/data/a.db"), CATCH_UP);
    oracle::wait_caught_up(&mut rb, &w.path("volume/data/b.db"), CATCH_UP);
    let log = stop(d);
    assert_eq!(snapshots(&ra), 1, "a.db snapshots");
    assert!(unplanned_snapshots(&log).is_empty(), "{log}");
    drop((a, b));
}

// ---------------------------------------------------------------------------
// 3. Two identical commits in one read
// ---------------------------------------------------------------------------

/// Two consecutive one-page commits with byte-identical frames (a row
/// written back to the value it had) read in one pass look exactly like
/// one commit plus sector padding; the commit counter settles it without a
/// false "commits were lost" snapshot.
#[test]
fn identical_commits_need_no_snapshot() {
    let w = World::new("identical_commits");
    let db = w.path("kv.db");
    let app = rusqlite::Connection::open(&db).unwrap();
    app.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO kv VALUES (1, 'start');",
    )
    .unwrap();
    // Batch reads: commits within 2 s of an upload are read together.
    let d = w.daemon(&[db.to_str().unwrap(), "--min-put-interval", "2s"]);
    let mut replica = w.replica("kv.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    for round in 0..3 {
        app.execute("UPDATE kv SET v = ?1 WHERE k = 1", [format!("r{round}")])
            .unwrap();
        app.execute("UPDATE kv SET v = 'same' WHERE k = 1", [])
            .unwrap();
        // A transaction that changes the row and writes it back: the page
        // is dirty, and its commit frame repeats the previous one byte for
        // byte. (A plain no-op UPDATE writes no frame at all.)
        app.execute_batch(
            "BEGIN; UPDATE kv SET v = 'other' WHERE k = 1;
             UPDATE kv SET v = 'same' WHERE k = 1; COMMIT;",
        )
        .unwrap();
        oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    }
    // The WAL really holds identical consecutive commit frames.
    let copies = repeated_commit_frames(&std::fs::read(w.path("kv.db-wal")).unwrap());
    assert!(
        copies >= 3,
        "only {copies} repeated commit frames in the WAL"
    );
    let log = stop(d);
    assert!(
        unplanned_snapshots(&log).is_empty(),
        "unplanned snapshots: {:?}",
        unplanned_snapshots(&log)
    );
    assert_eq!(snapshots(&replica), 1, "snapshots stored");
}

/// Commit frames that repeat the frame before them byte for byte (page
/// number, database size and page), read straight from the WAL file.
fn repeated_commit_frames(wal: &[u8]) -> usize {
    let page_size = u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let frames: Vec<&[u8]> = wal[32..].chunks_exact(24 + page_size).collect();
    frames
        .windows(2)
        .filter(|p| {
            let commit = |f: &[u8]| u32::from_be_bytes(f[4..8].try_into().unwrap());
            commit(p[0]) != 0
                && commit(p[1]) == commit(p[0])
                && p[0][..4] == p[1][..4]
                && p[0][24..] == p[1][24..]
        })
        .count()
}

// ---------------------------------------------------------------------------
// 4. A WAL past --max-wal-mib while uploads are merely in flight
// ---------------------------------------------------------------------------

/// Uploads in flight are not an outage: past `--max-wal-mib` walsync must
/// not release the WAL and snapshot on every pass.
#[test]
fn no_snapshot_storm_past_max_wal() {
    let w = World::new("max_wal_storm");
    let db = w.path("big.db");
    let mut app = Writer::create_with(&db, 1, "PRAGMA wal_autocheckpoint=0;");
    app.commit(1);
    let d = w.daemon(&[
        db.to_str().unwrap(),
        "--max-wal-mib",
        "1",
        "--checkpoint-pages",
        "1000000",
        "--truncate-pages",
        "1000000",
        // Slow uploads: one is nearly always in flight.
        "--max-requests-per-sec",
        "4",
    ]);
    let mut replica = w.replica("big.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let t0 = Instant::now();
    // ~3 MiB of WAL in one generation over ~4 s.
    while t0.elapsed() < Duration::from_secs(4) {
        app.commit(40);
        std::thread::sleep(Duration::from_millis(20));
    }
    let wal_len = std::fs::metadata(w.path("big.db-wal")).unwrap().len();
    assert!(
        wal_len > 2 << 20,
        "WAL only {wal_len} bytes: not past the limit"
    );
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(60));
    let log = stop(d);
    assert_eq!(snapshots(&replica), 1, "snapshots stored");
    assert!(
        unplanned_snapshots(&log).is_empty(),
        "{:?}",
        unplanned_snapshots(&log)
    );
}

// ---------------------------------------------------------------------------
// 5. walsync's own TRUNCATE checkpoints under a steady writer
// ---------------------------------------------------------------------------

/// With small checkpoint thresholds walsync truncates the WAL often while
/// the application keeps committing: no commit may slip in between and be
/// checkpointed away unread (which forces a snapshot and loses its txid).
#[test]
fn own_truncate_checkpoints_lose_no_commit() {
    let w = World::new("truncate_slip");
    let db = w.path("busy.db");
    let mut app = Writer::create(&db, 1);
    // An application that retries a busy write lock at once (no sleep, as
    // a spinning busy handler or several writers do) is the first to take
    // the lock when walsync's fence drops it.
    fn spin(_: i32) -> bool {
        std::thread::yield_now();
        true
    }
    app.conn.busy_handler(Some(spin)).unwrap();
    app.commit(1);
    let d = w.daemon(&[
        db.to_str().unwrap(),
        "--checkpoint-pages",
        "50",
        "--truncate-pages",
        "100",
        // The race this test is about: a checkpoint after every shipped
        // commit, so one upload per commit.
        "--min-put-interval",
        "0",
    ]);
    let mut replica = w.replica("busy.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let t0 = Instant::now();
    let mut commits = 0;
    while t0.elapsed() < Duration::from_secs(6) && commits < 20_000 {
        app.commit(1 + commits % 4);
        commits += 1;
    }
    // A spinning writer leaves a TRUNCATE almost no gap (it gives up when a
    // commit slipped in), so on a loaded machine none may succeed above. Go
    // on committing with short pauses until one did, commits still arriving
    // around it (bounded: at most 20 s more).
    let truncated_ok = |d: &Proc| d.log_text().contains("TRUNCATE checkpoint: Ok((0,");
    let t1 = Instant::now();
    while !truncated_ok(&d) && t1.elapsed() < Duration::from_secs(20) {
        for _ in 0..20 {
            app.commit(1 + commits % 4);
            commits += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(60));
    let log = stop(d);
    let truncated = log
        .lines()
        .filter(|l| l.contains("TRUNCATE checkpoint: Ok((0,"))
        .count();
    eprintln!(
        "{commits} commits ({} s of paced ones), {truncated} successful TRUNCATE checkpoints",
        t1.elapsed().as_secs()
    );
    assert!(
        truncated >= 1,
        "walsync never truncated the WAL: the test proves nothing"
    );
    assert!(
        unplanned_snapshots(&log).is_empty(),
        "{} unplanned snapshots, first: {:?}",
        unplanned_snapshots(&log).len(),
        unplanned_snapshots(&log).first()
    );
    assert_eq!(snapshots(&replica), 1, "snapshots stored");
    assert_eq!(replica.first_gap(), None);
}

// ---------------------------------------------------------------------------
// 6. A database file longer than the database
// ---------------------------------------------------------------------------

/// `SQLITE_FCNTL_CHUNK_SIZE` (or a truncation that failed) leaves the file
/// longer than the database. A snapshot taken with an empty WAL must use the
/// size SQLite records, so the restore is exactly the database.
#[test]
fn snapshot_of_a_file_longer_than_its_database_is_exact() {
    let w = World::new("chunk_size");
    let db = w.path("chunky.db");
    {
        let mut app = Writer::create(&db, 1);
        app.commit(20);
        app.checkpoint("TRUNCATE");
    }
    let page_count = |p: &Path| -> (i64, i64) {
        let c = rusqlite::Connection::open(p).unwrap();
        let n: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        let s: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        (n, s)
    };
    let (pages, page_size) = page_count(&db);
    // What a 64 KiB chunk size leaves behind: zeros past the last page.
    let len = std::fs::metadata(&db).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    f.set_len(len + 64 * 1024).unwrap();
    drop(f);
    let d = w.daemon(&[db.to_str().unwrap()]);
    let mut replica = w.replica("chunky.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    stop(d);
    let out = w.path("restored.db");
    let o = Cmd::new(WALSYNC)
        .args(["restore", "chunky.db", "-o"])
        .arg(&out)
        .args(["--bucket", &w.bucket()])
        .output();
    assert!(
        o.status.success(),
        "restore failed: {}",
        common::process::text(&o)
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        (pages * page_size) as u64,
        "restored file length (the source holds {pages} pages of {page_size} bytes)"
    );
    assert_eq!(page_count(&out), (pages, page_size));
    assert!(oracle::dump_diff(&oracle::source_dump(&out), &oracle::source_dump(&db)).is_none());
}

// ---------------------------------------------------------------------------
// 7. The replica deleted under a running daemon
// ---------------------------------------------------------------------------

/// Someone deletes the database's objects (a mistaken `rm`, a lifecycle
/// rule) while the daemon runs: it notices its newest snapshot is gone and
/// re-seeds the replica with a snapshot, so the newest state is restorable
/// again (instead of level-0 objects no restore can start from).
#[test]
fn replica_deleted_under_a_running_daemon_is_reseeded() {
    let w = World::new("replica_deleted");
    let db = w.path("app.db");
    let mut app = Writer::create(&db, 1);
    app.commit(3);
    let d = w.daemon_env(
        &[db.to_str().unwrap(), "--compaction", "1s,1h,1h"],
        &[("WALSYNC_PRESENCE_CHECK_SECS", "1".to_string())],
    );
    let mut replica = w.replica("app.db").allow_compaction();
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    std::fs::remove_dir_all(w.path("replica/app.db")).unwrap();
    let t0 = Instant::now();
    let mut reseeded = false;
    while t0.elapsed() < Duration::from_secs(30) {
        app.commit(1);
        std::thread::sleep(Duration::from_millis(200));
        if snapshots(&w.replica("app.db").allow_compaction()) > 0 {
            reseeded = true;
            break;
        }
    }
    assert!(reseeded, "no snapshot stored within 30 s of the deletion");
    let mut replica = w.replica("app.db").allow_compaction();
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let log = stop(d);
    assert!(log.contains("is no longer in storage"), "{log}");
}

// ---------------------------------------------------------------------------
// 8. The database's directory replaced by a rename
// ---------------------------------------------------------------------------

/// A deploy swaps the data directory (`mv data data.old; mv data.new data`):
/// the watched directory is now elsewhere, and the database at the path is
/// another file. walsync notices without any event from the new directory
/// and replicates the new database completely.
#[test]
fn directory_swapped_by_rename_is_followed() {
    let w = World::new("directory_swap");
    std::fs::create_dir_all(w.path("data")).unwrap();
    let db = w.path("data/app.db");
    let mut old = Writer::create(&db, 1);
    old.commit(5);
    let d = w.daemon(&[db.to_str().unwrap()]);
    let mut replica = w.replica("app.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    drop(old);
    // The new release's database, prepared beside, then swapped in.
    std::fs::create_dir_all(w.path("data.new")).unwrap();
    let mut new = Writer::create(&w.path("data.new/app.db"), 2);
    new.commit(7);
    drop(new);
    // Let the daemon settle: no pass is pending when the swap happens.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::rename(w.path("data"), w.path("data.old")).unwrap();
    std::fs::rename(w.path("data.new"), w.path("data")).unwrap();
    let mut new = Writer::create(&db, 2);
    for _ in 0..10 {
        new.commit(2);
        std::thread::sleep(Duration::from_millis(50));
    }
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    // And it keeps following the new directory's file events.
    for _ in 0..10 {
        new.commit(1);
    }
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    stop(d);
}
