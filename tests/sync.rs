//! End-to-end tests of the `walsync-sync` daemon against the local S3 server.
//!
//! Each test runs the real binary as a child process (`RUST_LOG=walsync=debug`,
//! stderr in `$CARGO_TARGET_TMPDIR/sync-logs/<test>-<pid>.log`, printed when
//! the test fails) on its own `--prefix`, drives real SQLite writers, and
//! judges the result only through the oracle in `common::oracle`: an
//! independent restore at (nearly) every txid, never log lines (except where
//! the message itself is the behaviour under test, scenario 12).
//!
//! Run: `out=$(scripts/s3-server.sh start) && eval "$out"` then
//! `cargo test --test sync -- --test-threads=2`. Without the S3 environment
//! the tests skip, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use common::daemon::Env;
use common::oracle::{self, app_state, Monotone, Oracle, Writer};
use common::process::{wait_for, Cmd};
use common::proxy::{s3_upstream, Proxy};
use common::Rng;

const BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const CATCH_UP: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Restore at every txid (or `sample` random ones plus the newest when there
/// are more than `max_all`), checking each state with the model and the
/// monotonicity; returns the checker.
fn check_history(replica: &mut Oracle, rng: &mut Rng, max_all: usize, sample: usize) -> Monotone {
    let newest = replica.newest().expect("nothing stored");
    let first_snapshot = replica
        .list()
        .iter()
        .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL)
        .map(|o| o.max)
        .min()
        .expect("no snapshot");
    let targets: Option<Vec<u64>> = if (newest as usize) <= max_all {
        None
    } else {
        let mut t: Vec<u64> = (0..sample)
            .map(|_| rng.range(first_snapshot, newest))
            .collect();
        t.push(newest);
        t.sort();
        t.dedup();
        Some(t)
    };
    let mut mono = Monotone::default();
    let db = replica.db().to_string();
    let checked = replica.restore_each(targets.as_deref(), |r| {
        mono.push(&db, r.txid, app_state(&r.conn));
    });
    assert!(!checked.is_empty());
    assert_eq!(*checked.last().unwrap(), newest);
    eprintln!(
        "{db}: restored and checked {} txid(s) up to {newest}; final state {:?}",
        checked.len(),
        mono.last()
    );
    mono
}

/// Wait for the replica to equal the source, then check its whole history,
/// that the newest state is the writer's, and that no object was overwritten.
fn verify_db(env: &Env, db: &str, rng: &mut Rng, expect: (i64, i64)) -> Monotone {
    let mut replica = env.replica(db);
    let newest = oracle::wait_caught_up(&mut replica, &env.path(db), CATCH_UP);
    let mono = check_history(&mut replica, rng, 2000, 300);
    assert_eq!(
        mono.last(),
        Some(expect),
        "{db}: the newest restore (txid {newest}) is not the writer's last state"
    );
    replica.check_no_overwrite();
    mono
}

fn count_levels(replica: &Oracle) -> (usize, usize) {
    let objs = replica.list();
    let snaps = objs
        .iter()
        .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL)
        .count();
    (snaps, objs.len() - snaps)
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn wal_len(db: &Path) -> u64 {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    std::fs::metadata(PathBuf::from(p))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Remove a database and its side files.
fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

// ---------------------------------------------------------------------------
// 1. Steady writes to three databases
// ---------------------------------------------------------------------------

#[test]
fn steady_writes_three_databases() {
    let Some(env) = Env::new("steady3") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let names = ["a.db", "b.db", "c.db"];
    let mut writers: Vec<Writer> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Writer::create(&env.path(n), i as i64 + 1))
        .collect();
    let mut daemon = env.daemon(&[env.glob()], &[]);
    let t0 = Instant::now();
    for round in 0..200 {
        for w in writers.iter_mut() {
            w.commit(rng.range(1, 3) as usize);
        }
        if round % 50 == 0 {
            daemon.assert_running();
        }
        sleep_ms(rng.range(1, 4));
        assert!(t0.elapsed() < Duration::from_secs(60), "writers too slow");
    }
    eprintln!("wrote 3×200 transactions in {:.1?}", t0.elapsed());
    for (n, w) in names.iter().zip(&writers) {
        verify_db(&env, n, &mut rng, (w.gen, w.last));
    }
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 2. wal_autocheckpoint=1
// ---------------------------------------------------------------------------

#[test]
fn writer_with_autocheckpoint_1() {
    let Some(env) = Env::new("autockpt1") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("auto.db");
    let mut w = Writer::create_with(&db, 1, "PRAGMA wal_autocheckpoint=1;");
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    let t0 = Instant::now();
    for _ in 0..300 {
        w.commit(rng.range(1, 4) as usize);
        sleep_ms(rng.range(1, 4));
        if t0.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    verify_db(&env, "auto.db", &mut rng, (w.gen, w.last));
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 3. Application checkpoints of every mode + walsync's own
// ---------------------------------------------------------------------------

#[test]
fn app_checkpoints_all_modes() {
    let Some(env) = Env::new("appckpt") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("ckpt.db");
    let mut w = Writer::create(&db, 1);
    let mut daemon = env.daemon(
        &[db.display().to_string()],
        &["--checkpoint-pages", "10", "--truncate-pages", "40"],
    );
    let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
    let t0 = Instant::now();
    let mut done = Vec::new();
    for i in 0..400 {
        w.commit(rng.range(1, 5) as usize);
        sleep_ms(rng.range(1, 5));
        // A checkpoint every ~8 transactions. The first four (one per mode)
        // wait with the writer's 5 s busy_timeout: against walsync's read
        // transaction the blocking modes use it all, so the others wait at
        // most 50 ms, which keeps the test short and many checkpoints in.
        if rng.below(8) == 0 || (i > 350 && done.len() < 4) {
            let (mode, wait) = if done.len() < 4 {
                (modes[done.len()], 5000)
            } else {
                (modes[rng.below(4) as usize], 50)
            };
            w.conn.busy_timeout(Duration::from_millis(wait)).unwrap();
            let c0 = Instant::now();
            let r = w.checkpoint(mode);
            w.conn.busy_timeout(Duration::from_millis(5000)).unwrap();
            done.push((mode, r, c0.elapsed()));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let complete = done
        .iter()
        .filter(|(m, (busy, log, ck), _)| *m != "PASSIVE" && *busy == 0 && log == ck)
        .count();
    eprintln!(
        "{} application checkpoints, {complete} complete FULL/RESTART/TRUNCATE; \
         (mode, (busy, log, checkpointed), time): {done:?}",
        done.len()
    );
    assert!(done.len() >= 20, "only {} checkpoints", done.len());
    verify_db(&env, "ckpt.db", &mut rng, (w.gen, w.last));
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 4. SIGKILL and restart while writing
// ---------------------------------------------------------------------------

/// With several uploaders a SIGKILL must still never leave txid N+1 stored
/// without N (the restart would resume after the highest txid and make the
/// hole permanent): the daemon keeps one segment per database in flight.
#[test]
fn sigkill_restarts_lose_nothing() {
    sigkill_scenario("sigkill", &[]);
}

/// The same with one uploader.
#[test]
fn sigkill_restarts_lose_nothing_one_uploader() {
    sigkill_scenario("sigkill1", &["--uploaders", "1"]);
}

fn sigkill_scenario(name: &'static str, extra: &[&str]) {
    let Some(env) = Env::new(name) else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("kill.db");
    let mut w = Writer::create(&db, 1);
    let mut flags = vec!["--checkpoint-pages", "30", "--truncate-pages", "120"];
    flags.extend_from_slice(extra);
    let mut daemon = env.daemon(&[db.display().to_string()], &flags);
    let mut replica = env.replica("kill.db");
    let t0 = Instant::now();
    let mut kills = 0;
    let mut next_kill = Instant::now() + Duration::from_millis(rng.range(300, 1500));
    let mut down_until: Option<Instant> = None;
    while kills < 6 || down_until.is_some() {
        w.commit(rng.range(1, 3) as usize);
        sleep_ms(rng.range(2, 6));
        let now = Instant::now();
        if let Some(u) = down_until {
            if now >= u {
                daemon.spawn();
                down_until = None;
                next_kill = now + Duration::from_millis(rng.range(200, 1500));
                let n = replica.check_no_overwrite();
                eprintln!("restart #{kills}: {n} objects, none overwritten");
            }
        } else if now >= next_kill {
            daemon.kill9();
            kills += 1;
            down_until = Some(now + Duration::from_millis(rng.range(0, 400)));
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "scenario too slow");
    }
    eprintln!("{kills} SIGKILLs in {:.1?}, {} rows", t0.elapsed(), w.last);
    verify_db(&env, "kill.db", &mut rng, (w.gen, w.last));
    replica.check_no_overwrite();
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 5. App checkpoints while walsync is stopped
// ---------------------------------------------------------------------------

#[test]
fn checkpoints_while_stopped_force_a_snapshot() {
    let Some(env) = Env::new("stopped") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("stop.db");
    let mut w = Writer::create(&db, 1);
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    let mut replica = env.replica("stop.db");
    for _ in 0..30 {
        w.commit(2);
        sleep_ms(3);
    }
    let before = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let status = daemon.sigterm(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    let (snaps_before, _) = count_levels(&replica);

    for _ in 0..20 {
        w.commit(2);
    }
    let r = w.checkpoint("TRUNCATE");
    assert_eq!(r.0, 0, "TRUNCATE was busy with walsync stopped: {r:?}");
    assert_eq!(wal_len(&db), 0);
    for _ in 0..20 {
        w.commit(2);
    }
    let r = w.checkpoint("RESTART");
    assert_eq!(r.0, 0, "RESTART was busy with walsync stopped: {r:?}");
    for _ in 0..20 {
        w.commit(2);
    }
    daemon.spawn();
    let after = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(after > before);
    let objs = replica.list();
    let new_snaps: Vec<_> = objs
        .iter()
        .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL && o.max > before)
        .collect();
    assert!(
        !new_snaps.is_empty(),
        "no snapshot after the restart (had {snaps_before} before, newest txid was {before})"
    );
    // Some writes after the restart still replicate incrementally.
    for _ in 0..20 {
        w.commit(1);
        sleep_ms(3);
    }
    verify_db(&env, "stop.db", &mut rng, (w.gen, w.last));
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 6. Rolled-back transactions with spilled pages
// ---------------------------------------------------------------------------

const MARKER: i64 = 1_000_000;

#[test]
fn rolled_back_spill_never_restored() {
    let Some(env) = Env::new("rollback") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("rb.db");
    let mut w = Writer::create_with(&db, 1, "PRAGMA cache_size=2;");
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    let mut spilled = 0;
    for round in 0..5 {
        for _ in 0..20 {
            w.commit(rng.range(1, 3) as usize);
            sleep_ms(2);
        }
        let len0 = wal_len(&db);
        w.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for i in 0..200 {
            w.conn
                .execute(
                    "INSERT INTO t(id, v) VALUES (?1, randomblob(600))",
                    [MARKER + round * 1000 + i],
                )
                .unwrap();
        }
        w.conn.execute("UPDATE meta SET last = -1", []).unwrap();
        let len1 = wal_len(&db);
        if len1 > len0 {
            spilled += 1;
        }
        // Let walsync look at the WAL while the spilled frames are there.
        sleep_ms(200);
        w.conn.execute_batch("ROLLBACK").unwrap();
    }
    for _ in 0..20 {
        w.commit(1);
        sleep_ms(2);
    }
    assert!(
        spilled >= 3,
        "the rolled-back transactions did not spill into the WAL ({spilled}/5)"
    );
    let mut replica = env.replica("rb.db");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let mut markers = 0;
    replica.restore_each(None, |r| {
        let n: i64 = r
            .conn
            .query_row("SELECT count(*) FROM t WHERE id >= ?1", [MARKER], |x| {
                x.get(0)
            })
            .unwrap();
        markers += n;
        assert_eq!(
            n, 0,
            "txid {}: {n} rolled-back marker rows restored",
            r.txid
        );
    });
    assert_eq!(markers, 0);
    verify_db(&env, "rb.db", &mut rng, (w.gen, w.last));
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 7. VACUUM, growing and shrinking
// ---------------------------------------------------------------------------

#[test]
fn vacuum_between_writes() {
    let Some(env) = Env::new("vacuum") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("vac.db");
    let mut w = Writer::create(&db, 1);
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    let write = |w: &mut Writer, rng: &mut Rng, n: usize| {
        for _ in 0..n {
            w.commit(rng.range(1, 3) as usize);
            sleep_ms(2);
        }
    };
    write(&mut w, &mut rng, 40);
    w.conn
        .execute_batch(
            "CREATE TABLE pad(x BLOB);
             INSERT INTO pad SELECT randomblob(3000) FROM generate_series(1, 300);",
        )
        .or_else(|_| {
            // generate_series may be missing from the bundled build.
            w.conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS pad(x BLOB);
                 WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
                 INSERT INTO pad SELECT randomblob(3000) FROM s;",
            )
        })
        .unwrap();
    write(&mut w, &mut rng, 20);
    w.conn.execute_batch("VACUUM").unwrap();
    write(&mut w, &mut rng, 20);
    let pages = |w: &Writer| -> i64 {
        w.conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap()
    };
    let big = pages(&w);
    w.conn.execute_batch("DELETE FROM pad").unwrap();
    write(&mut w, &mut rng, 10);
    w.conn.execute_batch("VACUUM").unwrap();
    let small = pages(&w);
    assert!(
        small * 2 < big,
        "VACUUM did not shrink the database ({big} → {small} pages)"
    );
    write(&mut w, &mut rng, 40);
    let mono = verify_db(&env, "vac.db", &mut rng, (w.gen, w.last));
    eprintln!(
        "database {big} → {small} pages; {} states checked",
        mono.count
    );
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 8. Database deleted and re-created under the same path
// ---------------------------------------------------------------------------

#[test]
fn database_recreated_under_same_path() {
    let Some(env) = Env::new("recreate") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("re.db");
    let mut w = Writer::create(&db, 1);
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    let mut replica = env.replica("re.db");
    for _ in 0..50 {
        w.commit(rng.range(1, 3) as usize);
        sleep_ms(3);
    }
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    drop(w);
    daemon.note("deleting re.db");
    remove_db(&db);
    sleep_ms(300);
    daemon.note("re-creating re.db");
    let mut w2 = Writer::create(&db, 2);
    for _ in 0..50 {
        w2.commit(rng.range(1, 3) as usize);
        sleep_ms(3);
    }
    let mono = verify_db(&env, "re.db", &mut rng, (w2.gen, w2.last));
    assert!(
        mono.states
            .iter()
            .any(|(_, s)| matches!(s, Some((1, k)) if *k > 0)),
        "the first generation is missing from the history"
    );
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 9. S3 outage through a proxy
// ---------------------------------------------------------------------------

#[test]
fn s3_outage_through_proxy() {
    let Some(env) = Env::new("outage") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let proxy = Proxy::start(s3_upstream());
    let db = env.path("out.db");
    let mut w = Writer::create(&db, 1);
    let ep = format!("http://127.0.0.1:{}", proxy.port);
    let mut daemon = env.daemon(&[db.display().to_string()], &["--endpoint", &ep]);
    let replica = env.replica("out.db");
    let t0 = Instant::now();
    let mut phase = 0;
    let mut outage_start = None;
    let mut newest_at_outage = 0;
    while phase < 3 {
        w.commit(rng.range(1, 3) as usize);
        sleep_ms(rng.range(2, 6));
        let el = t0.elapsed();
        if phase == 0 && el > Duration::from_millis(1500) {
            newest_at_outage = replica.newest().unwrap_or(0);
            daemon.note("S3 down");
            proxy.set_down(true);
            outage_start = Some(Instant::now());
            phase = 1;
        } else if phase == 1 && outage_start.unwrap().elapsed() > Duration::from_secs(5) {
            daemon.note("S3 up");
            proxy.set_down(false);
            phase = 2;
        } else if phase == 2 && outage_start.unwrap().elapsed() > Duration::from_secs(7) {
            phase = 3;
        }
    }
    assert!(newest_at_outage > 0, "nothing replicated before the outage");
    let mut replica = env.replica("out.db");
    let t_up = Instant::now();
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(45));
    eprintln!("caught up {:.1?} after S3 came back", t_up.elapsed());
    verify_db(&env, "out.db", &mut rng, (w.gen, w.last));
    let log = env.log_text();
    assert!(
        log.contains("upload failed") || log.contains("retrying"),
        "the outage was not noticed by the daemon (proxy not in the path?)"
    );
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 10. A database created after start
// ---------------------------------------------------------------------------

#[test]
fn database_created_after_start() {
    let Some(env) = Env::new("newdb") else { return };
    let mut rng = Rng::new(env.name);
    let mut a = Writer::create(&env.path("a.db"), 1);
    let mut daemon = env.daemon(&[env.glob()], &[]);
    for _ in 0..20 {
        a.commit(1);
        sleep_ms(5);
    }
    daemon.note("creating late.db");
    let mut b = Writer::create(&env.path("late.db"), 7);
    for _ in 0..100 {
        a.commit(1);
        b.commit(rng.range(1, 3) as usize);
        sleep_ms(3);
    }
    // An application that creates the file first and only later switches
    // it to WAL mode (e.g. `sqlite3 slow.db` then `PRAGMA journal_mode=WAL`):
    // walsync sees an empty, not-yet-WAL file first.
    daemon.note("creating slow.db (empty for 500 ms)");
    drop(rusqlite::Connection::open(env.path("slow.db")).unwrap());
    assert_eq!(std::fs::metadata(env.path("slow.db")).unwrap().len(), 0);
    sleep_ms(500);
    let mut c = Writer::create(&env.path("slow.db"), 9);
    for _ in 0..30 {
        c.commit(1);
        sleep_ms(3);
    }
    verify_db(&env, "a.db", &mut rng, (a.gen, a.last));
    verify_db(&env, "late.db", &mut rng, (b.gen, b.last));
    verify_db(&env, "slow.db", &mut rng, (c.gen, c.last));
    daemon.assert_running();
}

// ---------------------------------------------------------------------------
// 11. SIGTERM ships everything and exits 0
// ---------------------------------------------------------------------------

#[test]
fn sigterm_ships_everything_and_exits_0() {
    let Some(env) = Env::new("sigterm") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let db = env.path("term.db");
    let mut w = Writer::create(&db, 1);
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    // Wait until the start-up snapshot is there, so SIGTERM is not racing it.
    let replica = env.replica("term.db");
    assert!(wait_for(Duration::from_secs(10), || replica
        .newest()
        .is_some()));
    for _ in 0..200 {
        w.commit(rng.range(1, 4) as usize);
        sleep_ms(1);
    }
    let t0 = Instant::now();
    let status = daemon.sigterm(Duration::from_secs(15));
    let took = t0.elapsed();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(took < Duration::from_secs(11), "took {took:?}");
    eprintln!("exited 0 in {took:.1?} after SIGTERM");
    // No waiting: everything committed must already be stored.
    let mut replica = env.replica("term.db");
    let r = replica.restore_newest().unwrap();
    let diff = oracle::dump_diff(&oracle::dump(&r.conn), &oracle::source_dump(&db));
    assert!(
        diff.is_none(),
        "newest restore after SIGTERM differs: {}",
        diff.unwrap()
    );
    check_history(&mut replica, &mut rng, 2000, 300);
    replica.check_no_overwrite();
}

// ---------------------------------------------------------------------------
// 12. Bad input
// ---------------------------------------------------------------------------

#[test]
fn bad_databases_are_skipped_and_named() {
    let Some(env) = Env::new("badinput") else {
        return;
    };
    let mut rng = Rng::new(env.name);
    let mut good = Writer::create(&env.path("good.db"), 1);
    {
        let c = rusqlite::Connection::open(env.path("rollback.db")).unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE x(a); INSERT INTO x VALUES (1);")
            .unwrap();
    }
    std::fs::write(env.path("junk.db"), b"this is not a database\n".repeat(100)).unwrap();
    let mut daemon = env.daemon(&[env.glob()], &[]);
    for _ in 0..50 {
        good.commit(2);
        sleep_ms(3);
    }
    verify_db(&env, "good.db", &mut rng, (good.gen, good.last));
    daemon.assert_running();
    let log = env.log_text();
    for bad in ["rollback.db", "junk.db"] {
        let line = log
            .lines()
            .find(|l| l.contains(bad) && (l.contains("ERROR") || l.contains("WARN")));
        assert!(
            line.is_some(),
            "the log does not name {bad} in an error/warning"
        );
        eprintln!("{bad}: {}", line.unwrap());
        assert!(
            env.replica(bad).list().is_empty(),
            "{bad} must not be stored"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("rollback.db") && l.to_lowercase().contains("wal")),
        "the message for the non-WAL database does not say what is wrong"
    );
}

/// Run the daemon expecting a quick failure; returns (status, stderr lines,
/// time). RUST_LOG is unset: what a user sees by default.
fn run_expect_failure(
    args: &[String],
    env_vars: &[(&str, &str)],
) -> (ExitStatus, Vec<String>, Duration) {
    let t0 = Instant::now();
    let o = Cmd::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env_vars)
        .timeout(Duration::from_secs(20))
        .output();
    let (status, took) = (o.status, t0.elapsed());
    let text = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<String> = BufReader::new(text.as_bytes())
        .lines()
        .map(|l| l.unwrap())
        .filter(|l| !l.trim().is_empty())
        .collect();
    (status, lines, took)
}

#[test]
fn wrong_secret_key_fails_fast_in_one_line() {
    let Some(env) = Env::new("badsecret") else {
        return;
    };
    let _w = Writer::create(&env.path("s.db"), 1);
    let args = vec![
        env.path("s.db").display().to_string(),
        "--bucket".into(),
        env.bucket.clone(),
        "--prefix".into(),
        env.prefix.clone(),
    ];
    let bad = "0".repeat(64);
    let (status, lines, took) = run_expect_failure(&args, &[("AWS_SECRET_ACCESS_KEY", &bad)]);
    eprintln!("wrong secret: {status} in {took:.1?}: {lines:?}");
    assert!(!status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(lines.len(), 1, "expected one stderr line: {lines:?}");
    assert!(
        lines[0].contains(&env.bucket),
        "the line does not name the bucket: {}",
        lines[0]
    );
    assert!(env.replica("s.db").list().is_empty());
}

#[test]
fn missing_bucket_fails_fast_in_one_line() {
    let Some(env) = Env::new("nobucket") else {
        return;
    };
    let _w = Writer::create(&env.path("s.db"), 1);
    let bucket = format!("walsync-missing-{}", std::process::id());
    let args = vec![
        env.path("s.db").display().to_string(),
        "--bucket".into(),
        bucket.clone(),
    ];
    let (status, lines, took) = run_expect_failure(&args, &[]);
    eprintln!("missing bucket: {status} in {took:.1?}: {lines:?}");
    assert!(!status.success());
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(lines.len(), 1, "expected one stderr line: {lines:?}");
    assert!(
        lines[0].contains(&bucket),
        "the line does not name the bucket: {}",
        lines[0]
    );
}

#[test]
fn same_file_name_in_two_directories_is_refused() {
    let Some(env) = Env::new("dupname") else {
        return;
    };
    std::fs::create_dir_all(env.path("one")).unwrap();
    std::fs::create_dir_all(env.path("two")).unwrap();
    let p1 = env.path("one/app.db");
    let p2 = env.path("two/app.db");
    let _w1 = Writer::create(&p1, 1);
    let _w2 = Writer::create(&p2, 2);
    let args = vec![
        p1.display().to_string(),
        format!("{}/*.db", env.path("two").display()),
        "--bucket".into(),
        env.bucket.clone(),
        "--prefix".into(),
        env.prefix.clone(),
    ];
    let (status, lines, took) = run_expect_failure(&args, &[]);
    eprintln!("duplicate names: {status} in {took:.1?}: {lines:?}");
    assert!(!status.success());
    assert_eq!(lines.len(), 1, "expected one stderr line: {lines:?}");
    for p in [&p1, &p2] {
        assert!(
            lines[0].contains(&p.display().to_string()),
            "the line does not name {}: {}",
            p.display(),
            lines[0]
        );
    }
    assert!(env.replica("app.db").list().is_empty());
}

// ---------------------------------------------------------------------------
// 13. A database over 1 GiB (crosses the lock page)
// ---------------------------------------------------------------------------

/// Slow (writes and uploads ~1.1 GiB): run with
/// `cargo test --release --test sync -- --ignored big_database`.
#[test]
#[ignore = "slow: writes and replicates a 1.1 GiB database"]
fn big_database_over_1gib() {
    let Some(env) = Env::new("big") else { return };
    let mut rng = Rng::new(env.name);
    let db = env.path("big.db");
    {
        // Built in rollback-journal mode (fast), then switched to WAL.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "PRAGMA page_size=4096; PRAGMA journal_mode=DELETE; PRAGMA synchronous=OFF;
             CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB);",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..(1100 * 16) {
            // 64 KiB per row: 1.1 GiB, mostly incompressible.
            tx.execute(
                "INSERT INTO big VALUES (?1, ?2)",
                rusqlite::params![i, common::pseudo_random(64 * 1024, i as u64)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        assert!(pages * 4096 > 1 << 30, "only {pages} pages");
    }
    let mut w = Writer::create(&db, 1);
    let mut daemon = env.daemon(&[db.display().to_string()], &[]);
    for _ in 0..20 {
        w.commit(3);
        sleep_ms(5);
    }
    let mut replica = env.replica("big.db");
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(600));
    let mono = check_history(&mut replica, &mut rng, 0, 1);
    assert_eq!(mono.last(), Some((w.gen, w.last)));
    daemon.assert_running();
}
