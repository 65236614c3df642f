//! Helpers of the parking tests (`tests/park.rs`, `tests/park_slots.rs`):
//! which of a database's files the daemon has open (`/proc/<pid>/fd`),
//! whether its log says it is parked, stopping it for sure, and one database
//! with a writer and the daemon on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::daemon::Env;
use super::oracle::{self, Oracle, Writer};
use super::process::{text, wait_for, Cmd, Proc, Signal};

pub const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");
pub const CATCH_UP: Duration = Duration::from_secs(30);
/// How long a database may take to park (idle 1 s, files quiet 2 s, a
/// loaded machine).
pub const PARK_WITHIN: Duration = Duration::from_secs(30);

pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

pub fn side(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Which of `db`, `db-wal`, `db-shm` and `db-walsync.lock` process `pid`
/// has open (as suffixes: "", "-wal", "-shm", "-walsync.lock"; one entry
/// per descriptor).
pub fn open_files(pid: u32, db: &Path) -> Vec<&'static str> {
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
pub fn logged_parked(daemon: &Proc, db: &Path) -> bool {
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
pub fn open_dbs(pid: u32, dir: &Path) -> usize {
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

/// Parked: logged so, and the daemon holds no descriptor of the WAL or
/// `-shm`, but still its lock file and at most one of the database (kept
/// to hold SQLite's SHARED lock while the open-file limit has room).
pub fn parked(daemon: &Proc, db: &Path) -> bool {
    let files = open_files(daemon.pid(), db);
    logged_parked(daemon, db) && (files == ["-walsync.lock"] || files == ["", "-walsync.lock"])
}

/// Wait (bounded) until `db` is parked; fails the test otherwise.
pub fn wait_parked(daemon: &Proc, db: &Path) {
    let ok = wait_for(PARK_WITHIN, || parked(daemon, db));
    assert!(
        ok,
        "{}: not parked within {PARK_WITHIN:?}: the daemon has open {:?}",
        db.display(),
        open_files(daemon.pid(), db)
    );
}

/// Threads of the daemon named after a database (`db-<name>`, cut to the
/// kernel's 15 bytes).
pub fn db_threads(daemon: &Proc) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", daemon.pid())) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("db-"))
        })
        .count()
}

/// SIGSTOP, and wait (bounded) until every thread of the process is
/// stopped: the signal is delivered asynchronously, and a thread still
/// running could react to what the test does next.
pub fn stop(daemon: &mut Proc) {
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
pub fn wait_open(daemon: &Proc, db: &Path) -> bool {
    wait_for(Duration::from_secs(20), || {
        let open = open_files(daemon.pid(), db);
        open.contains(&"") && open.contains(&"-wal")
    })
}

/// `(salt1, salt2)` of the WAL header: a new pair means a new generation
/// (a restart or a new file).
pub fn wal_salts(db: &Path) -> Option<(u32, u32)> {
    let b = std::fs::read(side(db, "-wal")).ok()?;
    let word = |i: usize| Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?));
    Some((word(16)?, word(20)?))
}

pub fn snapshots(replica: &Oracle) -> Vec<u64> {
    replica
        .list()
        .iter()
        .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL)
        .map(|o| o.max)
        .collect()
}

/// The newest restore (oracle) equals the source by content, without
/// waiting.
pub fn assert_newest_equal(replica: &mut Oracle, db: &Path) {
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
pub fn object_size(env: &Env, name: &str, txid: u64) -> u64 {
    let infos = env.storage.list(&format!("{name}/"), None).unwrap();
    infos
        .iter()
        .find(|i| walsync::ltx::parse_object_key("", &i.key).is_some_and(|k| k.max_txid == txid))
        .unwrap_or_else(|| panic!("{name}: no object ends at txid {txid}"))
        .size
}

/// `walsync restore NAME --txid N` through the CLI, opened.
pub fn cli_restore(env: &Env, name: &str, txid: u64) -> rusqlite::Connection {
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
pub fn log_count(env: &Env, what: &str) -> usize {
    env.log_text().lines().filter(|l| l.contains(what)).count()
}

/// One database with a writer (its connection held), the daemon on it with
/// `--close-idle-after idle`, and the replica, caught up once.
pub type One = (Env, PathBuf, Writer, Proc, Oracle);

pub fn one(test: &'static str, file: &str, idle: &str) -> Option<One> {
    let env = Env::new(test)?;
    let db = env.path(file);
    let mut w = Writer::create(&db, 1);
    w.commit(5);
    let daemon = env.daemon(&[db.display().to_string()], &["--close-idle-after", idle]);
    let mut replica = env.replica(file);
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    Some((env, db, w, daemon, replica))
}

pub const PARKED_LINE: &str = "idle: files closed";
pub const LOST_LINE: &str = "while walsync had this idle database's files closed";
