//! Idle databases close their files ("parking", `src/capture/park.rs`) and
//! reopen them on the next write without losing a commit and, where the
//! rules allow, without a snapshot.
//!
//! Each test runs the real `walsync-sync` against the local S3 server through
//! the shared harness (`common::daemon::Env`), looks at the daemon's open
//! descriptors in `/proc/<pid>/fd` to know whether a database is parked, and
//! judges replication through restores (the oracle and `walsync restore`).
//! Every wait is bounded; nothing asserts a speed. The mutation each test
//! was checked against is named in its doc comment and in tests/README.md.
//!
//! Run: `eval "$(scripts/s3-server.sh start)"` then
//! `cargo test --test park -- --test-threads=1`. Without the S3 environment
//! the tests skip, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Env;
use common::oracle::{self, app_state, Monotone, Oracle, Writer};
use common::process::{text, wait_for, Cmd, Proc, Signal};

const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long a database may take to park (idle 1 s, files quiet 2 s, a
/// loaded machine).
const PARK_WITHIN: Duration = Duration::from_secs(30);

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn side(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Which of `db`, `db-wal`, `db-shm` and `db-walsync.lock` process `pid`
/// has open (as suffixes: "", "-wal", "-shm", "-walsync.lock"; one entry
/// per descriptor).
fn open_files(pid: u32, db: &Path) -> Vec<&'static str> {
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue; // closed meanwhile
        };
        for suffix in ["", "-wal", "-shm", "-walsync.lock"] {
            if target == side(&db, suffix) {
                found.push(suffix);
            }
        }
    }
    found.sort();
    found
}

/// The daemon's latest start logged that `db` closed its files and did not
/// reopen them since. (Only the lock file open is no proof alone: the
/// daemon takes the lock before it opens the database.)
fn logged_parked(daemon: &Proc, db: &Path) -> bool {
    let name = db.file_name().unwrap().to_string_lossy();
    let log = daemon.log_text();
    let latest = log
        .rfind("==== test: start")
        .map_or(&log[..], |i| &log[i..]);
    let closed = latest.rfind(&format!("{name}: {PARKED_LINE}"));
    let reopened = latest.rfind(&format!("{name}: woken: files reopened"));
    closed.is_some() && closed > reopened
}

/// How many databases (`*.db` files in `dir`) process `pid` has open.
fn open_dbs(pid: u32, dir: &Path) -> usize {
    let dir = std::fs::canonicalize(dir).unwrap();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let mut dbs: Vec<PathBuf> = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|t| t.parent() == Some(&dir) && t.extension().is_some_and(|x| x == "db"))
        .collect();
    dbs.sort();
    dbs.dedup();
    dbs.len()
}

/// Parked: logged so, and the daemon holds no descriptor of the database,
/// its WAL or `-shm`, but still its lock file.
fn parked(daemon: &Proc, db: &Path) -> bool {
    logged_parked(daemon, db) && open_files(daemon.pid(), db) == ["-walsync.lock"]
}

/// Wait (bounded) until `db` is parked; fails the test otherwise.
fn wait_parked(daemon: &Proc, db: &Path) {
    let ok = wait_for(PARK_WITHIN, || parked(daemon, db));
    assert!(
        ok,
        "{}: not parked within {PARK_WITHIN:?}: the daemon has open {:?}",
        db.display(),
        open_files(daemon.pid(), db)
    );
}

/// SIGSTOP, and wait (bounded) until every thread of the process is
/// stopped: the signal is delivered asynchronously, and a thread still
/// running could react to what the test does next.
fn stop(daemon: &mut Proc) {
    daemon.signal(Signal::STOP);
    let pid = daemon.pid();
    let stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                // "pid (comm) STATE ...": the state follows the last ')'.
                st.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
            })
        })
    };
    assert!(
        wait_for(Duration::from_secs(10), stopped),
        "the daemon did not stop"
    );
}

/// Wait (bounded) until the daemon has the database and its WAL open again.
fn wait_open(daemon: &Proc, db: &Path) -> bool {
    wait_for(Duration::from_secs(20), || {
        let open = open_files(daemon.pid(), db);
        open.contains(&"") && open.contains(&"-wal")
    })
}

/// `(salt1, salt2)` of the WAL header: a new pair means a new generation
/// (a restart or a new file).
fn wal_salts(db: &Path) -> Option<(u32, u32)> {
    let b = std::fs::read(side(db, "-wal")).ok()?;
    let word = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    Some((word(16)?, word(20)?))
}

fn snapshots(replica: &Oracle) -> Vec<u64> {
    replica
        .list()
        .iter()
        .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL)
        .map(|o| o.max)
        .collect()
}

/// The newest restore (oracle) equals the source by content, without
/// waiting.
fn assert_newest_equal(replica: &mut Oracle, db: &Path) {
    let r = replica
        .restore_newest()
        .unwrap_or_else(|| panic!("{}: nothing stored", replica.db()));
    let diff = oracle::dump_diff(&oracle::dump(&r.conn), &oracle::source_dump(db));
    assert!(
        diff.is_none(),
        "{}: newest restore (txid {}) differs from the source: {}",
        replica.db(),
        r.txid,
        diff.unwrap()
    );
}

/// Size of the object of `name` whose last txid is `txid`.
fn object_size(env: &Env, name: &str, txid: u64) -> u64 {
    let infos = env.storage.list(&format!("{name}/"), None).unwrap();
    infos
        .iter()
        .find(|i| walsync::ltx::parse_object_key("", &i.key).is_some_and(|k| k.max_txid == txid))
        .unwrap_or_else(|| panic!("{name}: no object ends at txid {txid}"))
        .size
}

/// `walsync restore NAME --txid N` through the CLI, opened.
fn cli_restore(env: &Env, name: &str, txid: u64) -> rusqlite::Connection {
    let out = env.path(&format!("restored-{name}-{txid}"));
    let o = Cmd::new(WALSYNC)
        .args(["restore", name, "--txid", &txid.to_string(), "--bucket"])
        .arg(format!("s3://{}/{}", env.bucket, env.prefix))
        .arg("-o")
        .arg(&out)
        .env("RUST_LOG", "walsync=warn")
        .timeout(Duration::from_secs(60))
        .output();
    assert!(
        o.status.success(),
        "walsync restore {name} --txid {txid}: {}",
        text(&o)
    );
    rusqlite::Connection::open(&out).unwrap()
}

/// Count of log lines containing `what`.
fn log_count(env: &Env, what: &str) -> usize {
    env.log_text().lines().filter(|l| l.contains(what)).count()
}

/// One database with a writer (its connection held), the daemon on it with
/// `--close-idle-after idle`, and the replica, caught up once.
type One = (Env, PathBuf, Writer, Proc, Oracle);

fn one(test: &'static str, file: &str, idle: &str) -> Option<One> {
    let env = Env::new(test)?;
    let db = env.path(file);
    let mut w = Writer::create(&db, 1);
    w.commit(5);
    let daemon = env.daemon(&[db.display().to_string()], &["--close-idle-after", idle]);
    let mut replica = env.replica(file);
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    Some((env, db, w, daemon, replica))
}

const PARKED_LINE: &str = "idle: files closed";
const LOST_LINE: &str = "while walsync had this idle database's files closed";

// ---------------------------------------------------------------------------
// 1. Files are closed and reopened
// ---------------------------------------------------------------------------

/// An idle database keeps only its lock file open; a write reopens it and
/// ships. Mutation checked: `Capture::park` not closing the WAL
/// (`self.wal.close()` removed) → "not parked" (the `-wal` descriptor
/// stays).
#[test]
fn idle_files_closed_and_reopened() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-fds", "fds.db", "1s") else {
        return;
    };
    assert!(wait_open(&daemon, &db), "never opened the database");
    wait_parked(&daemon, &db);
    eprintln!("parked: open {:?}", open_files(daemon.pid(), &db));

    // A write wakes it: the descriptors come back while writing, and the
    // write ships.
    daemon.note("writing to the parked database");
    let mut reopened = false;
    for _ in 0..100 {
        w.commit(2);
        sleep_ms(100);
        let open = open_files(daemon.pid(), &db);
        if open.contains(&"") && open.contains(&"-wal") && open.contains(&"-shm") {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "the descriptors did not come back while writing");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    // And it parks again once idle.
    wait_parked(&daemon, &db);
    w.commit(1);
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(log_count(&env, PARKED_LINE) >= 2);
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert_newest_equal(&mut replica, &db);
}

/// `--close-idle-after 0`: the files stay open however long it is idle.
#[test]
fn close_idle_after_0_keeps_files_open() {
    let Some((env, db, _w, mut daemon, _)) = one("park-never", "never.db", "0") else {
        return;
    };
    assert!(wait_open(&daemon, &db), "never opened the database");
    // Idle for longer than any parking would need (1 s idle + 2 s quiet
    // files), looking every 500 ms.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        let open = open_files(daemon.pid(), &db);
        assert!(
            open.contains(&"") && open.contains(&"-wal") && open.contains(&"-shm"),
            "--close-idle-after 0 closed files: open {open:?}"
        );
        sleep_ms(500);
    }
    assert_eq!(log_count(&env, PARKED_LINE), 0);
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

// ---------------------------------------------------------------------------
// 2. Continuity without snapshots for a long-lived application connection
// ---------------------------------------------------------------------------

/// PASSIVE with `walsync` open and caught up, retried (bounded) until the
/// WAL is fully backfilled: walsync moves its read transaction to the
/// newest commit shortly after reading it.
fn passive_fully(w: &Writer) {
    let mut last = (0, 0, 0);
    let ok = wait_for(Duration::from_secs(10), || {
        last = w.checkpoint("PASSIVE");
        last.0 == 0 && last.1 == last.2
    });
    assert!(ok, "PASSIVE never backfilled the whole WAL: {last:?}");
}

/// One connection held by the application throughout; bursts of commits
/// separated by idle spells that park the database, with an application
/// PASSIVE checkpoint before one spell (the next write restarts the WAL:
/// continuity by "database file unchanged since parking"), none before
/// another (same WAL generation), and a burst past the autocheckpoint
/// threshold. Only the first snapshot may exist, and every txid restores.
/// Mutations checked: `unpark` without the "database file unchanged" case
/// (`else if false`) → snapshots after the restarted WALs; `unpark` without
/// the "same generation" case (`continued = false`) → the WAL is read
/// again from its start after waking (case 2 then holds too), so the
/// wake-up commit ships as the whole WAL (step C).
#[test]
fn parking_costs_no_snapshot() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-continuity", "cont.db", "1s")
    else {
        return;
    };
    let name = "cont.db";
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);

    // A: a burst (same generation as at parking), caught up, then PASSIVE
    // by the application while walsync is open: the WAL is fully
    // backfilled, so the next write restarts it.
    daemon.note("A: burst, then PASSIVE");
    let salts = wal_salts(&db);
    for _ in 0..20 {
        w.commit(3);
        sleep_ms(20);
    }
    eprintln!(
        "A: WAL {}",
        match wal_salts(&db) == salts {
            true => "of the same generation as at parking",
            false => "restarted (fully backfilled at parking)",
        }
    );
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    passive_fully(&w);
    wait_parked(&daemon, &db);

    // B: the first write restarts the WAL (the database file is the one
    // seen at parking); then no checkpoint, ~600 frames (2.4 MB: below
    // walsync's own checkpoint at 1,000 pages).
    daemon.note("B: burst after a restart, no checkpoint");
    let salts = wal_salts(&db);
    let wal_len = || std::fs::metadata(side(&db, "-wal")).map_or(0, |m| m.len());
    let mut commits = 0;
    while commits < 2000 && wal_len() < 600 * 4096 {
        w.commit(20);
        commits += 1;
        sleep_ms(5);
    }
    assert!(commits < 2000, "B: the WAL did not grow");
    assert_ne!(wal_salts(&db), salts, "B: the WAL did not restart");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);
    let wal_at_park = wal_len();

    // C: one commit wakes it (same generation): only that commit ships, not
    // the WAL again. Then a burst well past the autocheckpoint threshold
    // (1,000 pages) while it is open.
    daemon.note("C: autocheckpoint-sized burst");
    let salts = wal_salts(&db);
    w.commit(1);
    assert!(wait_open(&daemon, &db), "C: not reopened after a commit");
    assert_eq!(wal_salts(&db), salts, "C: the WAL restarted unexpectedly");
    let woke = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let shipped = object_size(&env, name, woke);
    eprintln!("C: the wake-up commit shipped as {shipped} bytes; the WAL was {wal_at_park} bytes");
    assert!(
        shipped < 64 * 1024,
        "C: txid {woke} (one small commit after parking) is {shipped} bytes: the WAL ({wal_at_park} bytes) was read again"
    );
    // Short pauses let walsync read and move its read transaction along,
    // so that the automatic checkpoints can copy frames.
    let db_len = std::fs::metadata(&db).unwrap().len();
    let own = log_count(&env, "PASSIVE checkpoint:");
    let mut commits = 0;
    while commits < 3000
        && (std::fs::metadata(&db).unwrap().len() < db_len + 1024 * 1024 || wal_len() < 1000 * 4096)
    {
        w.commit(100);
        commits += 1;
        sleep_ms(10);
    }
    eprintln!(
        "C: {commits} commits; database file {db_len} -> {} bytes, WAL {} bytes, walsync's own checkpoints: {}",
        std::fs::metadata(&db).unwrap().len(),
        wal_len(),
        log_count(&env, "PASSIVE checkpoint:") - own
    );
    assert!(commits < 3000, "C: no automatic checkpoint happened");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);

    // D: a last burst after the autocheckpointed spell.
    daemon.note("D: last burst");
    for _ in 0..10 {
        w.commit(2);
        sleep_ms(20);
    }
    let newest = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);

    let parks = log_count(&env, PARKED_LINE);
    assert!(parks >= 5, "parked {parks} times, expected at least 5");
    assert_eq!(
        log_count(&env, LOST_LINE),
        0,
        "a reopening found the WAL checkpointed"
    );
    let snaps = snapshots(&replica);
    assert_eq!(
        snaps.len(),
        1,
        "parking cost snapshots: level-9 objects at txids {snaps:?}"
    );

    // Every stored txid restores (CLI, each level-0 txid) to a state of
    // the model that never goes back; the newest is the source's.
    let mut txids: Vec<u64> = replica
        .list()
        .iter()
        .filter(|o| o.level == 0)
        .map(|o| o.max)
        .chain(snaps.iter().copied())
        .collect();
    txids.sort();
    txids.dedup();
    let mut mono = Monotone::default();
    for t in &txids {
        let c = cli_restore(&env, name, *t);
        mono.push(name, *t, app_state(&c));
    }
    assert_eq!(txids.last(), Some(&newest));
    assert_eq!(mono.last(), Some((w.gen, w.last)));
    // And the oracle agrees at every txid.
    let checked = replica.restore_each(None, |_| {});
    assert_eq!(checked.len(), txids.len());
    eprintln!(
        "{name}: {} txids restored, {parks} parks, 1 snapshot",
        txids.len()
    );
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

// ---------------------------------------------------------------------------
// 3. A checkpoint while parked is detected, never a hole
// ---------------------------------------------------------------------------

/// Parked and stopped (SIGSTOP), the application commits, truncates the WAL
/// into the database file, commits more and closes (SQLite then
/// checkpoints and deletes the WAL). After SIGCONT the reopening must see
/// that the database file changed: a snapshot, and the replica has every
/// row. Mutation checked: `unpark` treating the database file as unchanged
/// (`else if true`) → the replica never catches up (the rows committed
/// while stopped are missing).
#[test]
fn checkpoint_while_parked_means_snapshot() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-checkpoint", "ckpt.db", "1s")
    else {
        return;
    };
    for _ in 0..10 {
        w.commit(2);
        sleep_ms(20);
    }
    let before = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);
    let snaps_before = snapshots(&replica).len();

    daemon.note("SIGSTOP");
    stop(&mut daemon);
    assert!(parked(&daemon, &db), "woke before it stopped");
    for _ in 0..10 {
        w.commit(3);
    }
    let r = w.checkpoint("TRUNCATE");
    assert_eq!(r.0, 0, "TRUNCATE busy while walsync was parked: {r:?}");
    for _ in 0..10 {
        w.commit(3);
    }
    let expect = (w.gen, w.last);
    drop(w);
    assert!(
        !side(&db, "-wal").exists(),
        "closing the last connection left the WAL"
    );
    daemon.signal(Signal::CONT);
    daemon.note("SIGCONT");

    let after = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(after > before);
    let snaps = snapshots(&replica);
    assert!(
        snaps.len() > snaps_before && snaps.iter().any(|t| *t > before),
        "no snapshot after the checkpoint while parked: snapshots at {snaps:?}, newest before {before}"
    );
    assert!(log_count(&env, LOST_LINE) >= 1);
    let c = cli_restore(&env, "ckpt.db", after);
    assert_eq!(app_state(&c), Ok(Some(expect)));
    let mut mono = Monotone::default();
    replica.restore_each(None, |r| mono.push("ckpt.db", r.txid, app_state(&r.conn)));
    assert_eq!(mono.last(), Some(expect));
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

// ---------------------------------------------------------------------------
// 4. More databases than open slots
// ---------------------------------------------------------------------------

/// Open-file limit of the daemon in test 4, and databases: only
/// (450 − 256 − 60) / 7 = 19 fit open at once, while all 60 open would
/// need 60 × 8 = 480 descriptors.
const FD_LIMIT: &str = "--nofile=450";
const MANY: usize = 60;
const SLOTS: usize = (450 - 256 - MANY) / 7;

/// Mutation checked: `OpenSlots::capacity` returning `u64::MAX` (no slot
/// limit) → "Too many open files" / databases failing at start-up.
#[test]
fn more_databases_than_open_slots() {
    let Some(env) = Env::new("park-slots") else {
        return;
    };
    let names: Vec<String> = (0..MANY).map(|i| format!("s{i:02}.db")).collect();
    let mut writers: Vec<Writer> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut w = Writer::create(&env.path(n), i as i64 + 1);
            w.commit(2);
            w
        })
        .collect();
    let mut daemon = env
        .daemon_cmd(&[env.glob()], &[])
        .wrap(&["prlimit", FD_LIMIT, "--"])
        .spawn(&env.log);
    // Compaction may run during the long waits: the oracle ignores it.
    let replica = |n: &str| env.replica(n).allow_compaction();
    let replicas: Vec<Oracle> = names.iter().map(|n| replica(n)).collect();

    // Start-up completes: every database gets its first snapshot. Never
    // more than SLOTS databases open at once (sampled).
    let t0 = Instant::now();
    let mut missing: Vec<&str> = Vec::new();
    let mut most_open = 0;
    let all = wait_for(Duration::from_secs(180), || {
        daemon.assert_running();
        most_open = most_open.max(open_dbs(daemon.pid(), env.dir.path()));
        missing = names
            .iter()
            .zip(&replicas)
            .filter(|(_, r)| snapshots(r).is_empty())
            .map(|(n, _)| n.as_str())
            .collect();
        missing.is_empty()
    });
    assert!(all, "no first snapshot of {missing:?}");
    eprintln!("every first snapshot stored after {:.1?}", t0.elapsed());

    // A few commits to each, spread out, then each must catch up.
    daemon.note("writing to every database");
    for _ in 0..3 {
        for w in writers.iter_mut() {
            w.commit(1);
            most_open = most_open.max(open_dbs(daemon.pid(), env.dir.path()));
        }
        sleep_ms(500);
    }
    for (n, r) in names.iter().zip(replicas) {
        let mut r = r;
        oracle::wait_caught_up(&mut r, &env.path(n), Duration::from_secs(120));
        most_open = most_open.max(open_dbs(daemon.pid(), env.dir.path()));
    }
    assert!(
        (1..=SLOTS).contains(&most_open),
        "{most_open} databases open at once (sampled), {SLOTS} slots"
    );
    // One more commit each right before SIGTERM: the shutdown ships them.
    daemon.note("last commits, then SIGTERM");
    for w in writers.iter_mut() {
        w.commit(1);
    }
    let status = daemon.sigterm(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}");
    for (n, w) in names.iter().zip(&writers) {
        let mut r = replica(n);
        assert_newest_equal(&mut r, &env.path(n));
        let got = app_state(&r.restore_newest().unwrap().conn);
        assert_eq!(got, Ok(Some((w.gen, w.last))), "{n}");
    }
    let log = env.log_text();
    assert!(
        !log.contains("Too many open files"),
        "the daemon ran out of descriptors"
    );
    assert!(
        !log.contains("unable to open database file"),
        "a database could not be opened"
    );
    eprintln!(
        "{MANY} databases under {FD_LIMIT}: {} parks, at most {most_open} open at once (sampled)",
        log_count(&env, PARKED_LINE)
    );
}

/// The daemon on `env`'s databases under `prlimit --nofile=LIMIT` must
/// refuse to start in one line; returns it.
fn refused_line(env: &Env, limit: &str, extra: &[&str]) -> String {
    let o = env
        .daemon_cmd(&[env.glob()], extra)
        .env("RUST_LOG", "walsync=warn")
        .wrap(&["prlimit", limit, "--"])
        .timeout(Duration::from_secs(60))
        .output();
    assert!(!o.status.success(), "started anyway: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    eprintln!("refused: {}", lines[0]);
    lines[0].to_string()
}

/// Without parking, the same databases under the same limit are refused
/// at start in one line naming the open-file limit and the way out; with
/// parking, a limit below 16 open databases is refused too.
#[test]
fn without_parking_the_limit_is_refused() {
    let Some(env) = Env::new("park-refused") else {
        return;
    };
    let _writers: Vec<Writer> = (0..MANY)
        .map(|i| Writer::create(&env.path(&format!("r{i:02}.db")), 1))
        .collect();
    let line = refused_line(&env, FD_LIMIT, &["--close-idle-after", "0"]);
    assert!(
        line.contains("need about 736 open files (8 each)")
            && line.contains("open-file limit is 450")
            && line.contains("--close-idle-after"),
        "does not name the limit and the way out: {line}"
    );
    // 60 + 256 + 16 × 7 = 428 > 400.
    let line = refused_line(&env, "--nofile=400", &[]);
    assert!(
        line.contains("need about 428 open files (1 each and 7 more while open)")
            && line.contains("open-file limit is 400")
            && !line.contains("--close-idle-after"),
        "does not name the limit: {line}"
    );
}

// ---------------------------------------------------------------------------
// 5. Shutdown while parked
// ---------------------------------------------------------------------------

/// A commit to a parked database right before SIGTERM is shipped by the
/// shutdown: once plainly (the file event usually wakes the database
/// first), then twice with the commit made through hard links, which the
/// directory watch does not see, so that the shutdown finds the database
/// parked and must tell from the files' stamps that it has to reopen it
/// (`reopen_for_drain`). Mutation checked: `reopen_for_drain` returning
/// `Ok(false)` (nothing to ship) → the linked commits are missing from the
/// replica; the plain round alone does not catch it.
#[test]
fn shutdown_while_parked_ships_the_last_commit() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-shutdown", "term.db", "1s")
    else {
        return;
    };
    wait_parked(&daemon, &db);

    // Once plainly (write, then SIGTERM at once).
    w.commit(3);
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert_newest_equal(&mut replica, &db);
    assert_eq!(
        app_state(&replica.restore_newest().unwrap().conn),
        Ok(Some((w.gen, w.last)))
    );

    // Again with the commit made through hard links of the database, WAL
    // and -shm in another directory: the directory watch sees no event, so
    // only the files can tell the shutdown that something was committed
    // since parking (as when the event is still on its way).
    let links = env.path("links");
    std::fs::create_dir(&links).unwrap();
    let linked = links.join("term.db");
    for suffix in ["", "-wal", "-shm"] {
        std::fs::hard_link(side(&db, suffix), side(&linked, suffix)).unwrap();
    }
    let mut w2 = Writer::create(&linked, w.gen);
    for round in 1..=2 {
        daemon.spawn();
        oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
        wait_parked(&daemon, &db);
        daemon.note(&format!(
            "round {round}: a commit through the links, SIGTERM"
        ));
        w2.last = w.last;
        w2.commit(4);
        w.last = w2.last;
        let status = daemon.sigterm(Duration::from_secs(20));
        assert!(status.success(), "round {round}: exit status {status}");
        let got = app_state(&replica.restore_newest().unwrap().conn);
        assert_eq!(got, Ok(Some((w.gen, w.last))), "round {round}");
        assert!(
            !logged_parked(&daemon, &db),
            "round {round}: the shutdown did not reopen the database"
        );
    }
    assert_newest_equal(&mut replica, &db);
}

// ---------------------------------------------------------------------------
// 6. Replaced while parked
// ---------------------------------------------------------------------------

/// The application closes its database (while parked: the WAL is
/// checkpointed and deleted, which costs a snapshot), and once it is parked
/// again removes the `-wal` and `-shm` and renames another database over
/// it. The first of those events reopens it, so the reopening sees either
/// the old file changed or the new one: a snapshot either way, and the
/// replica follows the new file (its rows, its generation).
#[test]
fn replaced_while_parked_is_snapshotted() {
    let Some((env, db, w, mut daemon, mut replica)) = one("park-replaced", "repl.db", "1s") else {
        return;
    };
    // Closing the last connection checkpoints and deletes the WAL: that
    // wakes it, costs a snapshot (see park.rs), and it parks again, later.
    wait_parked(&daemon, &db);
    drop(w);
    let snapshotted = wait_for(CATCH_UP, || log_count(&env, LOST_LINE) > 0);
    assert!(
        snapshotted,
        "closing the last connection while parked went unseen"
    );
    wait_parked(&daemon, &db);
    let snaps_before = snapshots(&replica).len();
    let staged = env.path("staged.db-new");
    let mut other = Writer::create(&staged, 2);
    other.commit(7);
    drop(other);
    daemon.note("renaming another database over the parked one");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(side(&db, suffix));
    }
    std::fs::rename(&staged, &db).unwrap();
    let mut w = Writer::create(&db, 2);
    w.commit(3);
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(
        snapshots(&replica).len() > snaps_before,
        "no snapshot of the new file"
    );
    assert_eq!(
        app_state(&replica.restore_newest().unwrap().conn),
        Ok(Some((2, w.last)))
    );
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}
