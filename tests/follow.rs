//! Follow mode (`walsync restore --follow`, src/follow/), end to end: a
//! primary `walsync-sync` under a checkpoint-heavy write load with
//! compaction and retention at short intervals, a follower, and readers of
//! the follower; a follower without a replica, through an outage, and after
//! a primary restarted with a gap. The failover runbook: tests/failover.rs.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use common::daemon::Env;
use common::follow::{daemon, follower, follower_state, open_ro, stopped_at};
use common::oracle::{self, app_state, Writer};
use common::process::{log_path, text, wait_for, Cmd, Signal};
use common::proxy::{s3_upstream, Proxy};

/// SHA-256 (hex) of the content of table `t`, in one read transaction of
/// `c`: per row its id (i64 BE), the length of `v` (u32 BE) and `v`. The
/// Python reader ([`PY_READER`]) computes the same.
fn content_hash(c: &Connection) -> rusqlite::Result<String> {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    let mut st = c.prepare_cached("SELECT id, v FROM t ORDER BY id")?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let v: Vec<u8> = r.get(1)?;
        h.update(&r.get::<_, i64>(0)?.to_be_bytes());
        h.update(&(v.len() as u32).to_be_bytes());
        h.update(&v);
    }
    Ok(walsync::util::hex(h.finish().as_ref()))
}

/// A reader in another process and another SQLite (Python's): every
/// 300 ms a new read-only connection, one read transaction, a line
/// `<content hash> <quick_check>` (or `ERROR …`); ends when the file
/// `argv[2]` exists, or after 150 s.
const PY_READER: &str = r#"
import hashlib, os, sqlite3, struct, sys, time
path, stop = sys.argv[1], sys.argv[2]
t0 = time.time()
while not os.path.exists(stop) and time.time() - t0 < 150:
    try:
        c = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=5, isolation_level=None)
        c.execute("BEGIN")
        h = hashlib.sha256()
        for i, v in c.execute("SELECT id, v FROM t ORDER BY id"):
            h.update(struct.pack(">qI", i, len(v)))
            h.update(v)
        qc = c.execute("PRAGMA quick_check").fetchone()[0]
        c.execute("COMMIT")
        c.close()
        print(h.hexdigest(), qc, flush=True)
    except sqlite3.Error as e:
        print("ERROR", e, flush=True)
    time.sleep(0.3)
"#;

/// One reader visit: open, one read transaction (hash, quick_check; held
/// `hold` long, then hashed again: the snapshot must not move), close.
fn read_once(path: &Path, hold: Duration) -> Result<(String, String), String> {
    let c = open_ro(path).map_err(|e| format!("open: {e}"))?;
    c.execute_batch("BEGIN")
        .map_err(|e| format!("begin: {e}"))?;
    let h = content_hash(&c).map_err(|e| format!("read: {e}"))?;
    let check: String = c
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| format!("quick_check: {e}"))?;
    if !hold.is_zero() {
        std::thread::sleep(hold);
        let again = content_hash(&c).map_err(|e| format!("read again: {e}"))?;
        if again != h {
            return Err(format!(
                "a read transaction saw its state change after {hold:?}"
            ));
        }
    }
    c.execute_batch("COMMIT").map_err(|e| format!("end: {e}"))?;
    Ok((h, check))
}

/// Masked byte comparison of two database files: everything but the page-1
/// fields the follower's SQLite sets at each commit (change counter,
/// version-valid-for, SQLite version: bytes 24..28 and 92..100).
fn same_bytes(a: &Path, b: &Path) -> Result<(), String> {
    let (x, y) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    if x.len() != y.len() {
        return Err(format!("sizes {} and {}", x.len(), y.len()));
    }
    let differ: Vec<usize> = (0..x.len())
        .filter(|&i| x[i] != y[i] && !(24..28).contains(&i) && !(92..100).contains(&i))
        .collect();
    if differ.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} bytes differ, first at offsets {:?}",
            differ.len(),
            &differ[..differ.len().min(8)]
        ))
    }
}

#[test]
fn readers_of_a_follower_see_only_committed_states() {
    let Some(env) = Env::new("follow_readers") else {
        return;
    };
    let src = env.path("app.db");
    let out = env.path("follower.db");
    let committed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let w = Connection::open(&src).unwrap();
    w.busy_timeout(Duration::from_secs(5)).unwrap();
    w.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB NOT NULL);
         INSERT INTO t(v) VALUES (randomblob(500));",
    )
    .unwrap();
    committed.lock().unwrap().insert(content_hash(&w).unwrap());

    let mut primary = daemon(
        &env,
        &[&src],
        "follow_readers-primary",
        &[
            "--compaction",
            "1s,2s,4s",
            "--retention",
            "3s",
            "--retention-grace",
            "1s",
            "--min-put-interval",
            "0s",
            "--checkpoint-pages",
            "64",
        ],
    );
    let mut replica = env.replica("app.db").allow_compaction();
    oracle::wait_caught_up(&mut replica, &src, Duration::from_secs(30));
    let mut f = follower(
        &env,
        "app.db",
        &out,
        "follow_readers-follower",
        &["--follow-interval-max", "2s"],
    );
    assert!(
        wait_for(Duration::from_secs(30), || out.exists()),
        "the follower did not restore {}",
        out.display()
    );

    // Readers: every 300 ms a new connection, one read transaction; every
    // fifth holds its snapshot for 2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (stop, reads, committed, out) =
                (stop.clone(), reads.clone(), committed.clone(), out.clone());
            std::thread::spawn(move || -> Result<HashSet<String>, String> {
                let mut seen = HashSet::new();
                let mut n = 0u32;
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(120) {
                    n += 1;
                    let hold = if n % 5 == r {
                        Duration::from_secs(2)
                    } else {
                        Duration::ZERO
                    };
                    let (h, check) = read_once(&out, hold)?;
                    if check != "ok" {
                        return Err(format!("quick_check: {check}"));
                    }
                    if !committed.lock().unwrap().contains(&h) {
                        return Err(format!("read {n}: a state the primary never committed"));
                    }
                    seen.insert(h);
                    reads.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(300));
                }
                Ok(seen)
            })
        })
        .collect();

    // And one in Python (another process, another SQLite library).
    let py_stop = env.path("py-reader.stop");
    let py_out = log_path("follow_readers-py").with_extension("stdout");
    let _ = std::fs::remove_file(&py_out);
    let have_python = Cmd::new("python3").arg("--version").try_output().is_ok();
    assert!(
        have_python || !common::require_external(),
        "python3 is needed for the Python reader"
    );
    let mut py = have_python.then(|| {
        Cmd::new("python3")
            .args(["-c", PY_READER])
            .arg(&out)
            .arg(&py_stop)
            .stdout_to(&py_out)
            .spawn(&log_path("follow_readers-py"))
    });

    // The load: inserts of varied sizes, deletes, updates, rollbacks,
    // checkpoints of every mode, VACUUMs (the database shrinks); the hash
    // of each state is recorded before its COMMIT. The follower is stopped
    // for 12 s halfway, so objects it has not fetched are compacted away.
    let mut rng = common::Rng::new("follow_readers");
    let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
    let t0 = Instant::now();
    let (mut commits, mut rollbacks, mut paused) = (0u32, 0u32, None);
    let mut i = 0u64;
    while i < 800 && t0.elapsed() < Duration::from_secs(70) {
        i += 1;
        if i == 250 {
            f.signal(Signal::STOP);
            paused = Some(Instant::now());
        }
        if paused.is_some_and(|t| t.elapsed() > Duration::from_secs(12)) {
            f.signal(Signal::CONT);
            paused = None;
        }
        match rng.below(12) {
            0..=5 => {
                w.execute_batch("BEGIN IMMEDIATE").unwrap();
                for _ in 0..rng.range(1, 6) {
                    let len = if rng.below(20) == 0 {
                        rng.range(5000, 30000)
                    } else {
                        rng.range(20, 3000)
                    };
                    w.execute("INSERT INTO t(v) VALUES (randomblob(?1))", [len as i64])
                        .unwrap();
                }
                let rows: i64 = w
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap();
                if rows > 300 {
                    w.execute(
                        "DELETE FROM t WHERE id IN (SELECT id FROM t ORDER BY id LIMIT 150)",
                        [],
                    )
                    .unwrap();
                }
                committed.lock().unwrap().insert(content_hash(&w).unwrap());
                w.execute_batch("COMMIT").unwrap();
                commits += 1;
            }
            6 | 7 => {
                w.execute_batch("BEGIN IMMEDIATE").unwrap();
                w.execute(
                    "UPDATE t SET v = randomblob(length(v) / 2 + 1) WHERE id % 7 = ?1",
                    [rng.below(7) as i64],
                )
                .unwrap();
                w.execute("DELETE FROM t WHERE id % 11 = ?1", [rng.below(11) as i64])
                    .unwrap();
                committed.lock().unwrap().insert(content_hash(&w).unwrap());
                w.execute_batch("COMMIT").unwrap();
                commits += 1;
            }
            8 => {
                w.execute_batch("BEGIN IMMEDIATE").unwrap();
                w.execute("DELETE FROM t", []).unwrap();
                w.execute("INSERT INTO t(v) VALUES (randomblob(77))", [])
                    .unwrap();
                w.execute_batch("ROLLBACK").unwrap();
                rollbacks += 1;
            }
            9 | 10 => {
                let mode = modes[rng.below(4) as usize];
                let _ = w.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |_| Ok(()));
            }
            _ => {
                if rng.below(4) == 0 {
                    w.execute_batch("VACUUM").unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(rng.range(20, 80)));
    }
    if paused.is_some() {
        f.signal(Signal::CONT);
    }
    let want = content_hash(&w).unwrap();
    eprintln!(
        "follow_readers: {commits} commits, {rollbacks} rollbacks in {:.1?}",
        t0.elapsed()
    );

    // After the writes stop, the follower equals the source within seconds.
    let t1 = Instant::now();
    let caught_up = wait_for(Duration::from_secs(30), || {
        read_once(&out, Duration::ZERO).is_ok_and(|(h, _)| h == want)
    });
    assert!(
        caught_up,
        "the follower did not reach the source's state within 30 s"
    );
    eprintln!(
        "follow_readers: follower equal to the source {:.1?} after the last write",
        t1.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let mut states = HashSet::new();
    for r in readers {
        match r.join().unwrap() {
            Ok(seen) => states.extend(seen),
            Err(e) => panic!("reader: {e}\n{}", f.log_tail(40)),
        }
    }
    if let Some(py) = py.as_mut() {
        std::fs::write(&py_stop, b"").unwrap();
        assert!(py.wait(Duration::from_secs(30)).success());
        let lines = std::fs::read_to_string(&py_out).unwrap();
        let committed = committed.lock().unwrap();
        let mut py_states = HashSet::new();
        for l in lines.lines() {
            let (h, check) = l.split_once(' ').unwrap_or((l, ""));
            assert!(
                check == "ok" && committed.contains(h),
                "Python reader: {l:?} (not a committed state with quick_check ok)"
            );
            py_states.insert(h.to_string());
        }
        eprintln!(
            "follow_readers: the Python reader made {} reads, {} distinct committed states",
            lines.lines().count(),
            py_states.len()
        );
        assert!(lines.lines().count() >= 20, "{lines}");
    }
    let n = reads.load(Ordering::Relaxed);
    eprintln!(
        "follow_readers: {n} reads saw {} distinct committed states",
        states.len()
    );
    assert!(
        n >= 20 && states.len() >= 5,
        "{n} reads, {} states",
        states.len()
    );

    // Stop the primary, then the follower (exit 0); its file equals a plain
    // restore of the same txid, byte for byte (page-1 counters aside).
    assert!(primary.sigterm(Duration::from_secs(30)).success());
    let newest = replica.newest().expect("objects");
    assert!(
        wait_for(Duration::from_secs(30), || f
            .log_text()
            .contains(&format!("..={newest} "))),
        "the follower never applied txid {newest}"
    );
    let status = f.sigterm(Duration::from_secs(30));
    assert!(status.success(), "follower: {status:?}\n{}", f.log_tail(30));
    let txid = stopped_at(&f);
    assert_eq!(txid, newest);
    let log = f.log_text();
    let replans = log.matches("does not continue").count()
        + log.matches("planning from the compacted levels").count();
    eprintln!("follow_readers: the follower planned from the compacted levels {replans} times");
    // Retention (3 s) removed level-0 objects during the 12 s pause.
    assert!(replans >= 1, "{}", f.log_tail(40));
    let plain = env.path("plain.db");
    let o = Cmd::new(env!("CARGO_BIN_EXE_walsync"))
        .args(["restore", "app.db", "-o"])
        .arg(&plain)
        .args([
            "--bucket",
            &format!("s3://{}/{}", env.bucket, env.prefix),
            "--txid",
            &txid.to_string(),
        ])
        .output();
    assert!(o.status.success(), "{}", text(&o));
    for p in [&out, &plain] {
        let c = Connection::open(p).unwrap();
        let _ = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }
    same_bytes(&out, &plain).unwrap_or_else(|e| panic!("follower vs plain restore: {e}"));
    let c = open_ro(&out).unwrap();
    assert_eq!(content_hash(&c).unwrap(), want);
}

/// Without a replica `--follow` fails at once with one line; with
/// `--wait-for-replica` it waits for one. Then it survives a storage outage
/// (one warning, resumes) and a primary restarted after a gap (the
/// application checkpointed while walsync was down: a new snapshot, which
/// the follower applies).
#[test]
fn follower_waits_survives_an_outage_and_a_restart_with_a_gap() {
    let Some(env) = Env::new("follow_outage") else {
        return;
    };
    let src = env.path("app.db");
    let out = env.path("follower.db");
    let bucket = format!("s3://{}/{}", env.bucket, env.prefix);

    // 1. No replica: one line, non-zero, nothing written.
    let o = Cmd::new(env!("CARGO_BIN_EXE_walsync"))
        .args(["restore", "app.db", "-o"])
        .arg(&out)
        .args(["--bucket", &bucket, "--follow"])
        .timeout(Duration::from_secs(60))
        .output();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("app.db") && err.contains("--wait-for-replica"),
        "{err}"
    );
    assert!(!out.exists());

    // 2. --wait-for-replica, through a proxy that can fail.
    let proxy = Proxy::start(s3_upstream());
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let mut f = follower(
        &env,
        "app.db",
        &out,
        "follow_outage-follower",
        &[
            "--wait-for-replica",
            "--follow-interval-max",
            "1s",
            "--endpoint",
            &endpoint,
            "--path-style",
        ],
    );
    f.wait_line(Duration::from_secs(30), |l| l.contains("waiting for one"));
    let mut w = Writer::create(&src, 1);
    w.commit(5);
    let extra = ["--min-put-interval", "0s"];
    let mut primary = daemon(&env, &[&src], "follow_outage-primary", &extra);
    for _ in 0..10 {
        w.commit(2);
        std::thread::sleep(Duration::from_millis(50));
    }
    let want = app_state(&w.conn).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || follower_state(&out) == want),
        "the follower did not reach {want:?}"
    );

    // 3. Storage unreachable for the follower for 4 s.
    proxy.set_down(true);
    proxy.cut();
    for _ in 0..20 {
        w.commit(1);
        std::thread::sleep(Duration::from_millis(200));
    }
    f.assert_running();
    proxy.set_down(false);
    let want = app_state(&w.conn).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || follower_state(&out) == want),
        "the follower did not resume after the outage\n{}",
        f.log_tail(20)
    );
    let log = f.log_text();
    assert_eq!(log.matches("following paused").count(), 1, "{log}");
    assert!(log.contains("storage answers again"), "{log}");

    // 4. The primary stops; the application checkpoints and writes on;
    //    the restarted primary ships a snapshot after a gap in level 0.
    assert!(primary.sigterm(Duration::from_secs(30)).success());
    w.commit(3);
    w.checkpoint("TRUNCATE");
    w.commit(3);
    primary.spawn();
    primary.wait_line(Duration::from_secs(30), |l| l.contains("snapshot as txid"));
    for _ in 0..5 {
        w.commit(2);
        std::thread::sleep(Duration::from_millis(50));
    }
    let want = app_state(&w.conn).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || follower_state(&out) == want),
        "the follower did not apply the new snapshot\n{}",
        f.log_tail(20)
    );
    assert!(
        f.log_text().contains("applying it whole"),
        "{}",
        f.log_tail(30)
    );
    assert!(f.sigterm(Duration::from_secs(30)).success());
    assert!(primary.sigterm(Duration::from_secs(30)).success());
}
