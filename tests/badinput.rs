//! The bad-input table (issue #8, item 3): every kind of bad input a user can
//! hand walsync, each one row, each asserting the two promises:
//!
//! (a) a clear failure: a command exits non-zero with ONE line on stderr that
//!     names the thing (database path, object key, bucket, flag); the daemon
//!     instead keeps replicating its other databases and logs a line naming
//!     the bad one;
//! (b) nothing already replicated is lost or overwritten: every object stored
//!     before keeps its key and SHA-256, and a restore of an earlier state
//!     still equals that state.
//!
//! Rows run against the real S3 server (Garage) of `make test`. Some kinds
//! also have focused tests elsewhere (tests/restore.rs at the library level,
//! tests/sync.rs for the daemon's first line); this table checks them all the
//! same way, end to end through the binaries. The rows run one after
//! another and every row runs even when an earlier one failed; the test
//! fails at the end listing every failed row.
//!
//! Permission rows drop privileges with `setpriv` (tests run as root, which
//! file modes do not stop); the disk-full row mounts a small tmpfs. When the
//! environment cannot do that (not root, no setpriv), those rows say so and
//! are skipped, unless WALSYNC_REQUIRE_EXTERNAL=1.

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::{self, Oracle, Writer};
use common::process::{text, Cmd, Proc};
use walsync::storage::{S3Config, S3Storage, Storage};

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");
const CATCH_UP: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A place in the bucket (unique prefix) with its storage client.
struct Place {
    config: S3Config,
    storage: Arc<dyn Storage>,
}

impl Place {
    fn new(name: &str) -> Option<Place> {
        let config = common::s3_config_or_skip(name)?;
        let storage: Arc<dyn Storage> =
            Arc::new(S3Storage::new(config.clone()).expect("S3 client"));
        Some(Place { config, storage })
    }

    /// `s3://bucket/prefix`, as the commands take it.
    fn spec(&self) -> String {
        format!("s3://{}/{}", self.config.bucket, self.config.prefix)
    }

    fn replica(&self, db: &str) -> Oracle {
        // The daemon may compact during a row; the oracle restores from
        // snapshots and level 0 only.
        Oracle::new(self.storage.clone(), db).allow_compaction()
    }

    /// Every object under the prefix: key → SHA-256 of its body.
    fn contents(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for info in self.storage.list("", None).expect("list") {
            let body = self.storage.get(&info.key).expect("get");
            let sha = ring::digest::digest(&ring::digest::SHA256, &body);
            out.insert(info.key, walsync::util::hex(sha.as_ref()));
        }
        out
    }

    /// Copy every object of `db` from `other` here, metadata included.
    fn copy_from(&self, other: &Place, db: &str) {
        for info in other.storage.list(&format!("{db}/"), None).unwrap() {
            let (body, full) = other.storage.get_with_info(&info.key).unwrap();
            self.storage.put(&info.key, &body, &full.metadata).unwrap();
        }
    }

    /// The level-0 object keys of `db`, by txid.
    fn level0(&self, db: &str) -> BTreeMap<u64, String> {
        self.replica(db)
            .list()
            .into_iter()
            .filter(|o| o.level == 0)
            .map(|o| (o.min, o.key))
            .collect()
    }
}

/// What a command printed and how it ended.
struct Outcome {
    status: ExitStatus,
    lines: Vec<String>,
}

/// Run `bin args` (RUST_LOG unset: what a user sees), bounded to 30 s.
fn run(bin: &str, args: &[String], as_nobody: bool) -> Outcome {
    run_env(bin, args, as_nobody, &[])
}

/// `setpriv` arguments that run the rest of a command line as `nobody`.
const AS_NOBODY: [&str; 6] = [
    "setpriv",
    "--reuid=nobody",
    "--regid=nogroup",
    "--clear-groups",
    "--inh-caps=-all",
    "--",
];

/// `bin`, run as `nobody` (through `setpriv`) when `as_nobody`.
fn command(bin: &str, as_nobody: bool) -> Cmd {
    let mut cmd = Cmd::new(bin);
    if as_nobody {
        cmd.wrap(&AS_NOBODY);
    }
    cmd
}

/// `run` with extra environment variables.
fn run_env(bin: &str, args: &[String], as_nobody: bool, envs: &[(&str, &str)]) -> Outcome {
    let o = command(bin, as_nobody)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(envs)
        .timeout(Duration::from_secs(30))
        .output();
    let lines = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    Outcome {
        status: o.status,
        lines,
    }
}

/// An env_logger record: `[2026-11-26T20:38:41Z WARN  walsync::…] …`.
fn is_log_record(line: &str) -> bool {
    line.starts_with('[')
        && line.split_once(']').is_some_and(|(head, _)| {
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .iter()
                .any(|l| head.contains(l))
        })
}

/// (a) for a command: non-zero exit and exactly one stderr line naming
/// every `needle`. Returns the line.
fn assert_one_line(o: &Outcome, needles: &[&str]) -> String {
    assert!(
        !o.status.success(),
        "exited 0, expected a failure; stderr: {:?}",
        o.lines
    );
    // Log records (`[time LEVEL target] …`, e.g. the retries of a
    // transient error before giving up) may come first; the failure itself
    // is one line.
    let errors: Vec<&String> = o.lines.iter().filter(|l| !is_log_record(l)).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {:?}", o.lines);
    let line = errors[0];
    for n in needles {
        assert!(line.contains(n), "the line does not name {n:?}: {line}");
    }
    line.clone()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// `walsync restore NAME -o OUT --bucket SPEC [extra]`.
fn restore_cmd(place: &Place, db: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&["restore", db, "-o"]);
    a.push(out.display().to_string());
    a.push("--bucket".into());
    a.push(place.spec());
    a.extend(strings(extra));
    a
}

/// Restore `db` at `txid` with the CLI into `dir` and return its dump.
fn restored_dump(place: &Place, db: &str, txid: u64, dir: &Path) -> Vec<String> {
    let out =
        dir.join(format!("check-{db}-{txid}-{}.db", common::unique_prefix("r")).replace('/', "_"));
    let o = run(
        WALSYNC,
        &restore_cmd(place, db, &out, &["--txid", &txid.to_string()]),
        false,
    );
    assert!(
        o.status.success(),
        "restore of {db} at txid {txid} failed: {:?}",
        o.lines
    );
    oracle::source_dump(&out)
}

/// A running walsync-sync with its log in a file; killed when dropped, its
/// log's tail printed if the row fails.
struct Daemon {
    proc: Proc,
}

impl Daemon {
    fn start(place: &Place, dbs: &[&Path], log: PathBuf, as_nobody: bool) -> Daemon {
        let proc = command(SYNC, as_nobody)
            .args(dbs)
            .args(["--bucket", &place.spec(), "--shutdown-timeout", "10s"])
            .env("RUST_LOG", "walsync=info")
            .spawn(&log);
        Daemon { proc }
    }

    fn assert_running(&mut self) {
        self.proc.assert_running();
    }

    /// SIGTERM and wait (bounded); the exit must be clean.
    fn stop(mut self) {
        let s = self.proc.sigterm(Duration::from_secs(20));
        assert!(s.success(), "walsync-sync exited {s} after SIGTERM");
    }

    /// A WARN/ERROR log line naming `needle`, waiting up to `timeout`.
    fn wait_log_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_line(
            |l| l.contains(needle) && (l.contains("ERROR") || l.contains("WARN")),
            timeout,
        )
    }

    /// The first log line matching `pred`, waiting up to `timeout`.
    fn wait_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.proc.wait_line(timeout, pred)
    }
}

/// True when the rows that drop privileges can run here: root with setpriv.
fn can_drop_privileges() -> bool {
    let root = Cmd::new("id")
        .arg("-u")
        .try_output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let setpriv = Cmd::new("setpriv")
        .arg("--version")
        .try_output()
        .is_ok_and(|o| o.status.success());
    root && setpriv
}

/// Skip a row that the environment cannot run (printed), or fail when
/// external requirements are enforced.
fn skip(row: &str, why: &str) {
    assert!(
        !common::require_external(),
        "{row}: cannot run: {why} (WALSYNC_REQUIRE_EXTERNAL=1 forbids skipping)"
    );
    eprintln!("{row}: SKIPPED: {why}");
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_nobody(path: &Path) {
    let s = Cmd::new("chown")
        .args(["nobody:nogroup", &path.display().to_string()])
        .output()
        .status;
    assert!(s.success(), "chown {}", path.display());
}

// ---------------------------------------------------------------------------
// The replicated source shared by the restore rows
// ---------------------------------------------------------------------------

/// A database replicated once (snapshot + level-0 files, each txid's state
/// recorded) that restore rows copy to their own prefix before breaking it.
struct Source {
    place: Place,
    db: &'static str,
    /// Dump of the restore at each txid.
    states: BTreeMap<u64, Vec<String>>,
    newest: u64,
    dir: tempfile::TempDir,
}

impl Source {
    fn build() -> Option<Source> {
        let place = Place::new("badinput-src")?;
        let dir = tempfile::tempdir().unwrap();
        let db = "src.db";
        let path = dir.path().join(db);
        // Big rows: the database is ~600 KB so the disk-full row can fill a
        // small tmpfs with it.
        let mut w = Writer::create(&path, 7);
        let d = Daemon::start(&place, &[&path], dir.path().join("src.log"), false);
        // Commits until at least three level-0 files exist (group commit
        // may fold several commits into one), bounded in count and time.
        let t0 = std::time::Instant::now();
        for i in 0..40 {
            w.commit(300);
            std::thread::sleep(Duration::from_millis(150));
            if i >= 5 && (place.level0(db).len() >= 3 || t0.elapsed() > Duration::from_secs(20)) {
                break;
            }
        }
        let mut replica = place.replica(db);
        oracle::wait_caught_up(&mut replica, &path, CATCH_UP);
        d.stop();
        let mut states = BTreeMap::new();
        let txids = replica.restore_each(None, |r| {
            states.insert(r.txid, oracle::dump(&r.conn));
        });
        let newest = *txids.last().unwrap();
        assert!(
            place.level0(db).len() >= 3,
            "the source needs level-0 files: {:?}",
            replica.list()
        );
        drop(w);
        Some(Source {
            place,
            db,
            states,
            newest,
            dir,
        })
    }

    /// A fresh prefix holding a copy of the source replica.
    fn copy(&self, row: &str) -> Place {
        let p = Place::new(row).expect("S3 env checked by Source::build");
        p.copy_from(&self.place, self.db);
        p
    }

    /// The level-0 keys by txid, skipping the first (kept intact so an
    /// earlier state stays restorable).
    fn middle_level0(&self, p: &Place) -> (u64, String) {
        let l0 = p.level0(self.db);
        let (txid, key) = l0.iter().nth(1).expect("two level-0 files");
        (*txid, key.clone())
    }
}

/// Run a restore that must fail: one line naming `needles`, the bucket
/// unchanged, no output (or the existing output unchanged), no temp files
/// left; then the state at `earlier` still restores equal to what it was.
fn restore_fails(
    src: &Source,
    p: &Place,
    extra: &[&str],
    needles: &[&str],
    earlier: Option<u64>,
) -> String {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out.db");
    let before = p.contents();
    let o = run(WALSYNC, &restore_cmd(p, src.db, &out, extra), false);
    let line = assert_one_line(&o, needles);
    assert_eq!(
        p.contents(),
        before,
        "the failed restore changed the bucket"
    );
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in the output dir: {left:?}");
    if let Some(t) = earlier {
        assert_eq!(
            restored_dump(p, src.db, t, work.path()),
            src.states[&t],
            "the state at txid {t} no longer restores equal"
        );
    }
    line
}

// ---------------------------------------------------------------------------
// Daemon rows: a bad database next to a good one
// ---------------------------------------------------------------------------

/// What a daemon row does to the victim database while walsync is stopped.
type Corrupt = fn(dir: &Path, victim: &Path);

/// What walsync must do with the broken victim.
#[derive(Clone, Copy)]
enum Expect {
    /// Refuse it: a WARN/ERROR line naming the victim and containing this.
    Refused(&'static str),
    /// SQLite itself accepts the file as it is (its recovery reads what it
    /// can): walsync must follow SQLite — a new txid, and the replica
    /// converges to what SQLite now reads — and say so in a line naming the
    /// victim and containing this.
    FollowsSqlite(&'static str),
    /// Like `FollowsSqlite`, for a break within the WAL generation walsync
    /// stored (the application's connection stays open, leaked, so this
    /// process cannot act as an independent reader: only the line naming
    /// the victim and containing this, and a new txid, are checked).
    SameGeneration(&'static str),
}

/// Wait (bounded) until `replica` stores a txid above `t`.
fn wait_newer(replica: &Oracle, t: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < CATCH_UP {
        if replica.newest().is_some_and(|n| n > t) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The daemon scenario: `good.db` and `victim.db` are replicated; walsync
/// stops; the victim gets more commits and then is broken by `corrupt`
/// (simulating an application that left its WAL behind); walsync starts
/// again. It must log a line naming the victim, keep replicating good.db,
/// overwrite no stored object and still restore the victim's earlier state.
fn daemon_row(row: &str, corrupt: Corrupt, expect: Expect) -> String {
    let place = Place::new(row).expect("S3 env");
    let dir = tempfile::tempdir().unwrap();
    let good_path = dir.path().join("good.db");
    let victim_path = dir.path().join("victim.db");
    let mut good = Writer::create(&good_path, 1);
    let mut victim = Writer::create(&victim_path, 2);
    for _ in 0..3 {
        good.commit(5);
        victim.commit(5);
    }
    let d = Daemon::start(
        &place,
        &[&good_path, &victim_path],
        dir.path().join("first.log"),
        false,
    );
    let mut good_rep = place.replica("good.db");
    let mut victim_rep = place.replica("victim.db");
    oracle::wait_caught_up(&mut good_rep, &good_path, CATCH_UP);
    let t1 = oracle::wait_caught_up(&mut victim_rep, &victim_path, CATCH_UP);
    let d1 = oracle::source_dump(&victim_path);
    d.stop();
    good_rep.check_no_overwrite();
    victim_rep.check_no_overwrite();
    // The application closes (its last connection checkpoints the WAL
    // away), then writes again in another process that crashes: the new
    // WAL and its wal-index stay behind. The wal-index is then removed (as
    // after a reboot) so every reader recovers from the WAL file itself.
    // The writing must happen in another process: SQLite shares one
    // wal-index per file among the connections of a process, and a leaked
    // connection here would keep serving the old one to the oracle.
    if let Expect::SameGeneration(_) = expect {
        // Keep the WAL generation walsync stored: more commits on the same
        // connection, which is then leaked (no checkpoint on close).
        for _ in 0..3 {
            victim.commit(5);
        }
        std::mem::forget(victim);
    } else {
        drop(victim);
        crash_commits(&victim_path, 3);
    }
    let _ = std::fs::remove_file(dir.path().join("victim.db-shm"));
    corrupt(dir.path(), &victim_path);

    let mut d = Daemon::start(
        &place,
        &[&good_path, &victim_path],
        dir.path().join("second.log"),
        false,
    );
    let line = match expect {
        Expect::Refused(needle) => {
            let line = d.wait_log_line("victim.db", CATCH_UP);
            assert!(line.contains(needle), "expected {needle:?} in: {line}");
            line
        }
        Expect::SameGeneration(needle) => {
            let line = d.wait_line(|l| l.contains("victim.db") && l.contains(needle), CATCH_UP);
            assert!(
                wait_newer(&victim_rep, t1),
                "nothing new was stored for the victim"
            );
            line
        }
        Expect::FollowsSqlite(needle) => {
            let line = d.wait_line(|l| l.contains("victim.db") && l.contains(needle), CATCH_UP);
            let t2 = oracle::wait_caught_up(&mut victim_rep, &victim_path, CATCH_UP);
            assert!(t2 > t1, "nothing new was stored for the victim");
            line
        }
    };
    for _ in 0..5 {
        good.commit(5);
        std::thread::sleep(Duration::from_millis(20));
    }
    oracle::wait_caught_up(&mut good_rep, &good_path, CATCH_UP);
    d.assert_running();
    good_rep.check_no_overwrite();
    victim_rep.check_no_overwrite();
    let check = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_dump(&place, "victim.db", t1, check.path()),
        d1,
        "the victim's state at txid {t1} no longer restores equal"
    );
    d.stop();
    line
}

/// `txs` transactions on `db` by a Python process that then exits without
/// closing the database (as if it crashed): its WAL and wal-index stay.
fn crash_commits(db: &Path, txs: usize) {
    let script = r#"
import os, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA wal_autocheckpoint=0")
for _ in range(int(sys.argv[2])):
    c.execute("BEGIN IMMEDIATE")
    last = c.execute("SELECT last FROM meta").fetchone()[0]
    for i in range(1, 6):
        c.execute("INSERT INTO t(id, v) VALUES (?, randomblob(200))", (last + i,))
    c.execute("UPDATE meta SET last = ?", (last + 5,))
    c.execute("COMMIT")
os._exit(0)
"#;
    let o = Cmd::new("python3")
        .args(["-c", script, &db.display().to_string(), &txs.to_string()])
        .output();
    assert!(o.status.success(), "python3 writer failed: {}", text(&o));
    assert!(wal_of(db).exists(), "the crashed writer left no WAL");
}

fn wal_of(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    assert!(
        data.len() >= at + bytes.len(),
        "{} too short",
        path.display()
    );
    data[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

fn corrupt_truncated_header(_: &Path, victim: &Path) {
    let wal = wal_of(victim);
    let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(20).unwrap();
}

fn corrupt_bad_magic(_: &Path, victim: &Path) {
    patch(&wal_of(victim), 0, &[0xde, 0xad, 0xbe, 0xef]);
}

fn corrupt_other_wal(dir: &Path, victim: &Path) {
    // A WAL written by another database (same schema, other content).
    let other = dir.join("other.db");
    drop(Writer::create(&other, 9));
    crash_commits(&other, 4);
    std::fs::copy(wal_of(&other), wal_of(victim)).unwrap();
}

fn corrupt_frame_checksum(_: &Path, victim: &Path) {
    let wal = wal_of(victim);
    let data = std::fs::read(&wal).unwrap();
    let page_size = u32::from_be_bytes([data[8], data[9], data[10], data[11]]) as usize;
    let frames = (data.len() - 32) / (24 + page_size);
    assert!(frames >= 4, "the victim's WAL has {frames} frames");
    // A byte of the page data of the first frame of the last transaction:
    // valid frames follow it, and the transactions before it stay valid.
    let at = 32 + (frames - 2) * (24 + page_size) + 24 + 100;
    patch(&wal, at, &[data[at] ^ 0xff]);
}

fn corrupt_page_size(_: &Path, victim: &Path) {
    // The header claims another page size (with a valid header checksum):
    // the frames no longer line up with it.
    let wal = wal_of(victim);
    let mut data = std::fs::read(&wal).unwrap();
    let ps = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
    let other = if ps == 1024 { 2048u32 } else { 1024 };
    data[8..12].copy_from_slice(&other.to_be_bytes());
    let be = data[3] == 0x83;
    let sum = walsync::sqlite::wal::checksum(be, walsync::sqlite::wal::Checksum(0, 0), &data[..24]);
    data[24..28].copy_from_slice(&sum.0.to_be_bytes());
    data[28..32].copy_from_slice(&sum.1.to_be_bytes());
    std::fs::write(&wal, data).unwrap();
}

/// A daemon row for a database walsync cannot use from the start: the good
/// database goes on, the bad one is named in the log and stores nothing.
fn daemon_unusable_row(row: &str, make_bad: fn(&Path), as_nobody: bool) -> String {
    let place = Place::new(row).expect("S3 env");
    let dir = tempfile::tempdir().unwrap();
    if as_nobody {
        chmod(dir.path(), 0o755);
    }
    let good_path = dir.path().join("good.db");
    let bad_path = dir.path().join("bad.db");
    let mut good = Writer::create(&good_path, 1);
    good.commit(5);
    if as_nobody {
        for f in ["good.db", "good.db-wal", "good.db-shm"] {
            chown_nobody(&dir.path().join(f));
        }
        // walsync keeps a lock file next to the database.
        chmod(dir.path(), 0o777);
    }
    make_bad(&bad_path);
    let mut d = Daemon::start(
        &place,
        &[&good_path, &bad_path],
        dir.path().join("daemon.log"),
        as_nobody,
    );
    let line = d.wait_log_line("bad.db", CATCH_UP);
    for _ in 0..5 {
        good.commit(5);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut good_rep = place.replica("good.db");
    oracle::wait_caught_up(&mut good_rep, &good_path, CATCH_UP);
    good_rep.check_no_overwrite();
    d.assert_running();
    assert!(
        place.replica("bad.db").list().is_empty(),
        "bad.db must not be stored"
    );
    d.stop();
    good_rep.check_no_overwrite();
    line
}

fn make_junk(p: &Path) {
    std::fs::write(p, b"this is not a database\n".repeat(200)).unwrap();
}

fn make_rollback(p: &Path) {
    let c = rusqlite::Connection::open(p).unwrap();
    c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE x(a); INSERT INTO x VALUES (1);")
        .unwrap();
}

fn make_unreadable(p: &Path) {
    let mut w = Writer::create(p, 3);
    w.commit(5);
    drop(w);
    chmod(p, 0o600); // owned by root; walsync runs as nobody
}

/// The database is deleted while walsync watches it: a line names it, the
/// good one goes on, the stored replica of the deleted one stays whole.
fn deleted_while_watched(row: &str) -> String {
    let place = Place::new(row).expect("S3 env");
    let dir = tempfile::tempdir().unwrap();
    let good_path = dir.path().join("good.db");
    let victim_path = dir.path().join("victim.db");
    let mut good = Writer::create(&good_path, 1);
    let mut victim = Writer::create(&victim_path, 2);
    good.commit(5);
    victim.commit(5);
    let mut d = Daemon::start(
        &place,
        &[&good_path, &victim_path],
        dir.path().join("daemon.log"),
        false,
    );
    let mut victim_rep = place.replica("victim.db");
    let t1 = oracle::wait_caught_up(&mut victim_rep, &victim_path, CATCH_UP);
    let d1 = oracle::source_dump(&victim_path);
    victim_rep.check_no_overwrite();
    drop(victim);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = victim_path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let line = d.wait_log_line("victim.db", CATCH_UP);
    for _ in 0..5 {
        good.commit(5);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut good_rep = place.replica("good.db");
    oracle::wait_caught_up(&mut good_rep, &good_path, CATCH_UP);
    d.assert_running();
    victim_rep.check_no_overwrite();
    let check = tempfile::tempdir().unwrap();
    assert_eq!(restored_dump(&place, "victim.db", t1, check.path()), d1);
    d.stop();
    line
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

type RowFn<'a> = Box<dyn Fn() -> String + 'a>;

#[test]
fn bad_input_table() {
    let Some(src) = Source::build() else {
        return;
    };
    let bucket = src.place.config.bucket.clone();
    let privileged = can_drop_privileges();
    let db = src.db;
    let sync_args = |extra: &[&str]| -> Vec<String> {
        let mut a = vec![src.dir.path().join(db).display().to_string()];
        a.extend(strings(&["--bucket", &src.place.spec()]));
        a.extend(strings(extra));
        a
    };
    // A flag row: the command is refused before touching anything.
    let flag_row = |args: Vec<String>, bin: &'static str, needle: &'static str| -> String {
        let before = src.place.contents();
        let o = run(bin, &args, false);
        let line = assert_one_line(&o, &[needle]);
        assert_eq!(src.place.contents(), before);
        line
    };

    let rows: Vec<(&str, RowFn)> = vec![
        // --- WAL and database files (daemon) ---
        (
            "truncated WAL header",
            Box::new(|| {
                daemon_row(
                    "bi-walshort",
                    corrupt_truncated_header,
                    Expect::Refused("shorter than the 32-byte WAL header"),
                )
            }),
        ),
        (
            "bad WAL magic",
            Box::new(|| {
                daemon_row(
                    "bi-walmagic",
                    corrupt_bad_magic,
                    Expect::Refused("bad magic"),
                )
            }),
        ),
        (
            "WAL of another database",
            Box::new(|| {
                daemon_row(
                    "bi-walother",
                    corrupt_other_wal,
                    Expect::FollowsSqlite("WAL generation changed"),
                )
            }),
        ),
        (
            "frame checksum mismatch mid-log",
            Box::new(|| {
                daemon_row(
                    "bi-walsum",
                    corrupt_frame_checksum,
                    Expect::FollowsSqlite("WAL generation changed"),
                )
            }),
        ),
        (
            "page size change in the WAL header",
            Box::new(|| {
                daemon_row(
                    "bi-walpsz",
                    corrupt_page_size,
                    Expect::FollowsSqlite("WAL generation changed"),
                )
            }),
        ),
        (
            "page size change within the stored WAL generation",
            Box::new(|| {
                daemon_row(
                    "bi-walpsz2",
                    corrupt_page_size,
                    Expect::SameGeneration("WAL page size changed from 4096 to 1024"),
                )
            }),
        ),
        (
            "non-SQLite file",
            Box::new(|| daemon_unusable_row("bi-junk", make_junk, false)),
        ),
        (
            "rollback-journal database",
            Box::new(|| daemon_unusable_row("bi-rollback", make_rollback, false)),
        ),
        (
            "database deleted while watched",
            Box::new(|| deleted_while_watched("bi-deleted")),
        ),
        (
            "permission denied on the database",
            Box::new(|| {
                if !privileged {
                    skip(
                        "permission denied",
                        "needs root and setpriv to run walsync as nobody",
                    );
                    return "skipped".into();
                }
                daemon_unusable_row("bi-perm", make_unreadable, true)
            }),
        ),
        // --- S3 ---
        (
            "bucket missing",
            Box::new(|| {
                let missing = format!("walsync-missing-{}", std::process::id());
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                let o = run(
                    WALSYNC,
                    &strings(&[
                        "restore",
                        db,
                        "-o",
                        &out.display().to_string(),
                        "--bucket",
                        &missing,
                    ]),
                    false,
                );
                let line = assert_one_line(&o, &[&missing]);
                assert!(!out.exists());
                line
            }),
        ),
        (
            "wrong credentials",
            Box::new(|| {
                let before = src.place.contents();
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                let secret = "0".repeat(64);
                let o = run_env(
                    WALSYNC,
                    &restore_cmd(&src.place, db, &out, &[]),
                    false,
                    &[("AWS_SECRET_ACCESS_KEY", &secret)],
                );
                let line = assert_one_line(&o, &[&bucket, "access denied"]);
                assert!(!out.exists());
                assert_eq!(src.place.contents(), before);
                line
            }),
        ),
        (
            "endpoint unreachable at start",
            Box::new(|| {
                let port = common::closed_port();
                let endpoint = format!("http://127.0.0.1:{port}");
                let before = src.place.contents();
                let o = run(SYNC, &sync_args(&["--endpoint", &endpoint]), false);
                let line = assert_one_line(&o, &[&bucket, &endpoint]);
                assert_eq!(src.place.contents(), before);
                line
            }),
        ),
        (
            "two databases with one name",
            Box::new(|| {
                let other = tempfile::tempdir().unwrap();
                let twin = other.path().join(db);
                std::fs::copy(src.dir.path().join(db), &twin).unwrap();
                let p1 = src.dir.path().join(db).display().to_string();
                let p2 = twin.display().to_string();
                let before = src.place.contents();
                let mut args = sync_args(&[]);
                args.insert(1, p2.clone());
                let o = run(SYNC, &args, false);
                let line = assert_one_line(&o, &[&p1, &p2]);
                assert_eq!(src.place.contents(), before);
                line
            }),
        ),
        // --- Objects in the bucket (restore) ---
        (
            "garbage object under a valid LTX name",
            Box::new(|| {
                let p = src.copy("bi-garbage");
                let (txid, key) = src.middle_level0(&p);
                let meta = walsync::storage::Metadata::new();
                p.storage
                    .put(&key, b"garbage, not an LTX file", &meta)
                    .unwrap();
                restore_fails(&src, &p, &[], &[&key], Some(txid - 1))
            }),
        ),
        (
            "LTX with a bad checksum",
            Box::new(|| {
                let p = src.copy("bi-badsum");
                let (txid, key) = src.middle_level0(&p);
                let (mut body, info) = p.storage.get_with_info(&key).unwrap();
                let n = body.len();
                body[n - 1] ^= 0x55; // the file checksum in the trailer
                                     // Without the SHA-256 metadata (as Litestream writes it) the
                                     // LTX checksum is what must catch it.
                let mut meta = walsync::storage::Metadata::new();
                for (k, v) in info.metadata.iter() {
                    if k != oracle::META_SHA256 {
                        meta.insert(k, v);
                    }
                }
                p.storage.put(&key, &body, &meta).unwrap();
                restore_fails(&src, &p, &[], &[&key, "checksum"], Some(txid - 1))
            }),
        ),
        (
            "LTX with a gap",
            Box::new(|| {
                let p = src.copy("bi-gap");
                let (txid, key) = src.middle_level0(&p);
                p.storage.delete_many(std::slice::from_ref(&key)).unwrap();
                let gap = txid.to_string();
                restore_fails(&src, &p, &[], &["gap", &gap], Some(txid - 1))
            }),
        ),
        (
            "truncated LTX",
            Box::new(|| {
                let p = src.copy("bi-trunc");
                let (txid, key) = src.middle_level0(&p);
                let (body, info) = p.storage.get_with_info(&key).unwrap();
                let mut meta = walsync::storage::Metadata::new();
                for (k, v) in info.metadata.iter() {
                    if k != oracle::META_SHA256 {
                        meta.insert(k, v);
                    }
                }
                p.storage.put(&key, &body[..body.len() / 2], &meta).unwrap();
                restore_fails(&src, &p, &[], &[&key], Some(txid - 1))
            }),
        ),
        // --- Restore targets ---
        (
            "restore target exists",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("exists.db");
                std::fs::write(&out, b"precious").unwrap();
                let o = run(WALSYNC, &restore_cmd(&src.place, db, &out, &[]), false);
                let line = assert_one_line(&o, &[&out.display().to_string(), "--force"]);
                assert_eq!(std::fs::read(&out).unwrap(), b"precious");
                line
            }),
        ),
        (
            "restore to a read-only directory",
            Box::new(|| {
                if !privileged {
                    skip(
                        "read-only dir",
                        "needs root and setpriv to run walsync as nobody",
                    );
                    return "skipped".into();
                }
                let work = tempfile::tempdir().unwrap();
                chmod(work.path(), 0o755); // root's; nobody may not write
                let out = work.path().join("ro.db");
                let o = run(WALSYNC, &restore_cmd(&src.place, db, &out, &[]), true);
                let line = assert_one_line(&o, &[&work.path().display().to_string()]);
                assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
                line
            }),
        ),
        (
            "disk full during restore",
            Box::new(|| {
                if !privileged {
                    skip("disk full", "needs root to mount a tmpfs");
                    return "skipped".into();
                }
                let work = tempfile::tempdir().unwrap();
                let mnt = work.path().join("small");
                std::fs::create_dir(&mnt).unwrap();
                let m = Cmd::new("mount")
                    .args([
                        "-t",
                        "tmpfs",
                        "-o",
                        "size=256k",
                        "tmpfs",
                        &mnt.display().to_string(),
                    ])
                    .output()
                    .status;
                if !m.success() {
                    skip("disk full", "mount -t tmpfs failed");
                    return "skipped".into();
                }
                struct Unmount(PathBuf);
                impl Drop for Unmount {
                    fn drop(&mut self) {
                        let _ = Cmd::new("umount").arg(&self.0).try_output();
                    }
                }
                let _guard = Unmount(mnt.clone());
                let out = mnt.join("full.db");
                let before = src.place.contents();
                let o = run(WALSYNC, &restore_cmd(&src.place, db, &out, &[]), false);
                let line = assert_one_line(&o, &[&mnt.display().to_string()]);
                let left: Vec<_> = std::fs::read_dir(&mnt)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert!(left.is_empty(), "left on the full disk: {left:?}");
                assert_eq!(src.place.contents(), before);
                line
            }),
        ),
        // --- Absurd flag values ---
        (
            "--uploaders 0",
            Box::new(|| flag_row(sync_args(&["--uploaders", "0"]), SYNC, "--uploaders")),
        ),
        (
            "--snapshot-interval banana",
            Box::new(|| {
                flag_row(
                    sync_args(&["--snapshot-interval", "banana"]),
                    SYNC,
                    "--snapshot-interval",
                )
            }),
        ),
        (
            "--memory-mib 0",
            Box::new(|| flag_row(sync_args(&["--memory-mib", "0"]), SYNC, "--memory-mib")),
        ),
        (
            "--checkpoint-pages > --truncate-pages",
            Box::new(|| {
                flag_row(
                    sync_args(&["--checkpoint-pages", "2000", "--truncate-pages", "1000"]),
                    SYNC,
                    "--checkpoint-pages",
                )
            }),
        ),
        (
            "restore --txid 0",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                flag_row(
                    restore_cmd(&src.place, db, &out, &["--txid", "0"]),
                    WALSYNC,
                    "--txid",
                )
            }),
        ),
        (
            "restore --parallel 0",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                flag_row(
                    restore_cmd(&src.place, db, &out, &["--parallel", "0"]),
                    WALSYNC,
                    "--parallel",
                )
            }),
        ),
        (
            "restore --timestamp yesterday",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                flag_row(
                    restore_cmd(&src.place, db, &out, &["--timestamp", "yesterday"]),
                    WALSYNC,
                    "yesterday",
                )
            }),
        ),
        (
            "restore --follow --txid 3",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                flag_row(
                    restore_cmd(&src.place, db, &out, &["--follow", "--txid", "3"]),
                    WALSYNC,
                    "--follow",
                )
            }),
        ),
        (
            "restore --wait-for-replica without --follow",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                flag_row(
                    restore_cmd(&src.place, db, &out, &["--wait-for-replica"]),
                    WALSYNC,
                    "--follow",
                )
            }),
        ),
        (
            "restore --follow --follow-interval-max soon",
            Box::new(|| {
                let work = tempfile::tempdir().unwrap();
                let out = work.path().join("o.db");
                flag_row(
                    restore_cmd(
                        &src.place,
                        db,
                        &out,
                        &["--follow", "--follow-interval-max", "soon"],
                    ),
                    WALSYNC,
                    "--follow-interval-max",
                )
            }),
        ),
    ];

    let mut failed = Vec::new();
    for (kind, f) in &rows {
        let t0 = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(line) => eprintln!("ok   {kind} ({:.1?}): {line}", t0.elapsed()),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("FAIL {kind} ({:.1?}): {msg}", t0.elapsed());
                failed.push(*kind);
            }
        }
    }
    // The source replica itself was never touched by any row.
    let newest = src.newest;
    let check = tempfile::tempdir().unwrap();
    assert_eq!(
        restored_dump(&src.place, db, newest, check.path()),
        src.states[&newest]
    );
    assert!(rows.len() >= 20);
    assert!(
        failed.is_empty(),
        "{} of {} bad-input rows failed: {failed:?}",
        failed.len(),
        rows.len()
    );
    eprintln!("{} bad-input rows passed", rows.len());
}

/// Help and results read through a pipe its reader closed early (`walsync
/// --help | head -1`; every command's results go through the same
/// `outln!`, here `--version`) and a command line that is not UTF-8: no
/// panic, the usual exit status (0, or 1 with one line naming the
/// argument).
#[test]
fn help_into_a_closed_pipe_and_arguments_not_utf8() {
    let helps: [(&str, &[&str]); 6] = [
        (WALSYNC, &["--help"]),
        (WALSYNC, &["restore", "--help"]),
        (WALSYNC, &["sync", "--help"]),
        (SYNC, &["--help"]),
        (WALSYNC, &["--version"]),
        (SYNC, &["--version"]),
    ];
    for (bin, args) in helps {
        let out = Cmd::new(bin)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout_closed()
            .output();
        assert!(out.status.success(), "{bin} {args:?}: {}", text(&out));
        assert!(out.stderr.is_empty(), "{bin} {args:?}: {}", text(&out));
    }
    let bad = std::ffi::OsStr::from_bytes(b"/data/\xffdb");
    for bin in [WALSYNC, SYNC] {
        let out = Cmd::new(bin).arg(bad).env_remove("RUST_LOG").output();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin}: {}", text(&out));
        assert_eq!(err.lines().count(), 1, "{bin}: {}", text(&out));
        assert!(err.contains("not UTF-8: /data/"), "{bin}: {}", text(&out));
    }
}
