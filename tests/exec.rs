//! `walsync-sync --exec` and `--restore-if-missing` (issue #15 items 3, 4)
//! against the local S3 server: the container pattern.
//!
//! The application is a `sqlite3` shell run through `sh -c` (which also
//! tests that `--exec` honours quotes without running a shell itself): the
//! stand-in `tests/fixtures/bin/sqlite3` (Python's standard `sqlite3`
//! module; CI has python3 but not the SQLite shell), whose directory comes
//! first on walsync's PATH, so no test runs a system `sqlite3`. It commits
//! several transactions right before it exits, with the default
//! `--min-put-interval` of 1 s, so those commits are still waiting when it
//! exits: each test judges by restoring the database with `walsync restore`
//! and comparing its content with the source.
//!
//! Run: `eval "$(scripts/s3-server.sh start)"`, then
//! `cargo test --test exec -- --test-threads=2`.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::daemon::{create_db, RestoreFrom};
use common::process::{log_in, text, wait_for, Cmd, Proc};

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");
/// The `sqlite3` shell stand-in (see its top-of-file comment).
const SQLITE3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bin/sqlite3");
/// How long a walsync whose child has exited may take to ship and exit.
const EXIT: Duration = Duration::from_secs(60);

/// Five transactions of one 100-byte row each, committed at once: the
/// first ships at once, the others wait for the 1 s put interval.
const FIVE_COMMITS: &str = "BEGIN; INSERT INTO t(v) VALUES (randomblob(100)); COMMIT; \
     BEGIN; INSERT INTO t(v) VALUES (randomblob(100)); COMMIT; \
     BEGIN; INSERT INTO t(v) VALUES (randomblob(100)); COMMIT; \
     BEGIN; INSERT INTO t(v) VALUES (randomblob(100)); COMMIT; \
     BEGIN; INSERT INTO t(v) VALUES (randomblob(100)); COMMIT;";

struct Env {
    dir: tempfile::TempDir,
    bucket: String,
    prefix: String,
    endpoint: String,
    log: PathBuf,
    /// The stand-in's directory, then the test's own PATH.
    path: OsString,
}

impl Env {
    /// The test's world, or `None` (skipped) without the S3 server or
    /// python3 (which runs the `sqlite3` stand-in).
    fn new(name: &str) -> Option<Env> {
        let config = common::s3_config_or_skip(name)?;
        let path = standin_path();
        if !have_python3(&path) {
            return None;
        }
        let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").expect("AWS_ENDPOINT_URL_S3");
        let log = log_in("exec-logs", name);
        eprintln!("{name}: prefix {}, log {}", config.prefix, log.display());
        Some(Env {
            dir: tempfile::tempdir().unwrap(),
            bucket: config.bucket,
            prefix: config.prefix,
            endpoint,
            log,
            path,
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `rel` in a volume directory of its own (created, empty).
    fn volume(&self, rel: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        p
    }

    /// `walsync-sync <db> --bucket … --prefix … <extra>`.
    fn sync(&self, db: &Path, extra: &[&str]) -> Cmd {
        let mut c = Cmd::new(SYNC);
        c.arg(db)
            .args(["--bucket", &self.bucket, "--prefix", &self.prefix])
            .args(extra)
            .env("RUST_LOG", "walsync=debug")
            .env("PATH", &self.path);
        if !extra.contains(&"--shutdown-timeout") {
            c.args(["--shutdown-timeout", "20s"]);
        }
        c
    }

    /// Run `walsync-sync … --exec <exec>` to its end; its exit status.
    fn run(&self, db: &Path, exec: &str, extra: &[&str]) -> ExitStatus {
        let mut p = self
            .sync(db, extra)
            .arg("--exec")
            .arg(exec)
            .spawn(&self.log);
        p.wait(EXIT)
    }

    fn restore_from(&self) -> RestoreFrom {
        RestoreFrom {
            bin: WALSYNC.into(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    /// `walsync restore <name>` into a fresh file; its content.
    fn restored(&self, name: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out = self.path(&format!("restored-{n}-{name}"));
        let c = self.restore_from().open(name, &out, &[]);
        drop(c);
        let got = content(&out);
        std::fs::remove_file(&out).unwrap();
        got
    }
}

/// Every row of `t`, in order, as text: what must survive a restore.
fn content(db: &Path) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row(
        "SELECT count(*) || ' rows: ' || coalesce(group_concat(id || '=' || hex(v), ','), '')
         FROM (SELECT id, v FROM t ORDER BY id)",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn rows(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// `sh -c 'SCRIPT' DB`: in SCRIPT, `$0` is the database path.
fn sh(script: &str, db: &Path) -> String {
    format!("sh -c '{script}' {}", db.display())
}

/// The one line a refused start prints (with `RUST_LOG=off`).
fn one_line(o: &Output) -> String {
    assert!(!o.status.success(), "walsync succeeded: {}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "not one line: {}", text(o));
    assert!(err.starts_with("walsync: error: "), "{err}");
    err
}

/// PATH with the stand-in's directory first: `sqlite3` in a child's
/// script is the stand-in.
fn standin_path() -> OsString {
    let dir = Path::new(SQLITE3).parent().unwrap().to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&rest))).unwrap()
}

/// Whether the stand-in runs (it needs python3 with its `sqlite3` module);
/// a failure under `WALSYNC_REQUIRE_EXTERNAL=1`. A script given `path`
/// must find the stand-in, not a system `sqlite3`.
fn have_python3(path: &OsString) -> bool {
    let o = Cmd::new("sh")
        .args(["-c", "sqlite3 -version"])
        .env("PATH", path)
        .try_output();
    let why = match &o {
        Ok(o) if o.status.success() => {
            let version = String::from_utf8_lossy(&o.stdout);
            assert!(
                version.contains("test stand-in"),
                "not the stand-in: {version}"
            );
            return true;
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            format!("{}: {}", o.status, err.trim().replace('\n', "; "))
        }
        Err(e) => e.to_string(),
    };
    assert!(
        !common::require_external(),
        "tests/exec.rs needs python3 (with its sqlite3 module) to run {SQLITE3}: {why}"
    );
    eprintln!("skipped: python3 cannot run {SQLITE3}: {why}");
    false
}

/// The child's exit status becomes walsync's (128+N for a signal), and
/// every transaction it committed right before exiting is in the bucket.
#[test]
fn exit_status_passes_through_and_what_the_child_committed_ships() {
    let Some(env) = Env::new("exec_status") else {
        return;
    };
    let cases: [(&str, &str, i32); 4] = [
        ("zero.db", "exit 0", 0),
        ("three.db", "exit 3", 3),
        ("killed.db", "kill -KILL $$", 128 + 9),
        ("termed.db", "kill -TERM $$", 128 + 15),
    ];
    for (file, end, want) in cases {
        let db = env.path(file);
        let c = create_db(&db);
        common::daemon::commit(&c, 3);
        drop(c);
        let script = format!("sqlite3 \"$0\" \"{FIVE_COMMITS}\" && {end}");
        let status = env.run(&db, &sh(&script, &db), &[]);
        assert_eq!(status.code(), Some(want), "{file}: {status}");
        assert_eq!(rows(&db), 8, "{file}: the child did not commit");
        assert_eq!(env.restored(file), content(&db), "{file}: not all shipped");
    }
}

/// Commits that could not be shipped before the shutdown timeout make the
/// exit status non-zero even when the child exited 0: here the timeout is
/// 0 s and the child's last commits wait for the 1 s put interval. With
/// everything shipped before the child exits, the same 0 s timeout exits 0.
#[test]
fn unshipped_commits_at_exit_are_a_failure() {
    let Some(env) = Env::new("exec_unshipped") else {
        return;
    };
    let db = env.path("late.db");
    let c = create_db(&db);
    common::daemon::commit(&c, 3);
    drop(c);
    let script = format!("sqlite3 \"$0\" \"{FIVE_COMMITS}\" && exit 0");
    let status = env.run(&db, &sh(&script, &db), &["--shutdown-timeout", "0s"]);
    assert_eq!(status.code(), Some(1), "{status}");
    let log = std::fs::read_to_string(&env.log).unwrap_or_default();
    assert!(
        log.contains("late.db: the shutdown timeout passed before everything committed")
            || log.contains("late.db: 1 segment(s) not uploaded at shutdown"),
        "no line naming the database"
    );
    // The same with the commits shipped before the child exits: exit 0 (a
    // zero timeout fails only what really was not shipped).
    let db = env.path("shipped.db");
    let c = create_db(&db);
    common::daemon::commit(&c, 3);
    drop(c);
    let script = format!("sqlite3 \"$0\" \"{FIVE_COMMITS}\" && sleep 3 && exit 0");
    let status = env.run(&db, &sh(&script, &db), &["--shutdown-timeout", "0s"]);
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(env.restored("shipped.db"), content(&db), "not all shipped");
}

/// SIGTERM to walsync goes to the child; replication goes on until the
/// child exits (here after committing once more in its trap), then walsync
/// exits with the child's status.
#[test]
fn sigterm_is_passed_to_the_child() {
    let Some(env) = Env::new("exec_sigterm") else {
        return;
    };
    let db = env.path("app.db");
    drop(create_db(&db));
    let started = env.path("app.db.started");
    // The trap commits five transactions and exits 42; the loop is bounded
    // (60 s).
    let script = format!(
        "trap \"sqlite3 \\\"\\$0\\\" \\\"{FIVE_COMMITS}\\\"; exit 42\" TERM; \
         sqlite3 \"$0\" \"{FIVE_COMMITS}\"; touch \"$0.started\"; \
         i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit 7"
    );
    let mut p = env
        .sync(&db, &[])
        .arg("--exec")
        .arg(sh(&script, &db))
        .spawn(&env.log);
    assert!(
        wait_for(Duration::from_secs(30), || started.exists()),
        "the child did not start"
    );
    p.signal(common::process::Signal::TERM);
    let status = p.wait(EXIT);
    assert_eq!(status.code(), Some(42), "{status}");
    assert_eq!(rows(&db), 10, "the trap did not commit");
    assert_eq!(env.restored("app.db"), content(&db));
    let log = std::fs::read_to_string(&env.log).unwrap();
    assert!(log.contains("passing signal 15 on to the child"), "{log}");
}

/// When replication cannot start, the child never runs and walsync says
/// why in one line: an unreachable bucket, a database another walsync
/// replicates, a bad `--exec`.
#[test]
fn no_child_when_replication_cannot_start() {
    let Some(env) = Env::new("exec_refused") else {
        return;
    };
    let db = env.path("app.db");
    drop(create_db(&db));
    let marker = env.path("child-ran");
    let exec = format!("touch {}", marker.display());
    let quiet = |c: &mut Cmd| -> Output { c.env("RUST_LOG", "off").output() };

    let closed = format!("http://127.0.0.1:{}", common::closed_port());
    let o = quiet(
        env.sync(&db, &["--endpoint", &closed, "--exec", &exec])
            .timeout(EXIT),
    );
    let err = one_line(&o);
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(!marker.exists(), "the child ran without replication");

    let o = quiet(&mut env.sync(&db, &["--exec", "myapp 'unbalanced"]));
    let err = one_line(&o);
    assert!(
        err.contains("--exec") && err.contains("unbalanced"),
        "{err}"
    );

    let mut first = Proc::new(&env.sync(&db, &[]), &env.log);
    first.spawn();
    first.wait_line(Duration::from_secs(30), |l| l.contains("start-up complete"));
    let o = quiet(env.sync(&db, &["--exec", &exec]).timeout(EXIT));
    let err = one_line(&o);
    assert!(
        err.contains("not started") && err.contains("is replicating this database"),
        "{err}"
    );
    assert!(!marker.exists(), "the child ran without replication");
    assert!(first.sigterm(EXIT).success());
}

/// The container sequence: an empty volume, the application creates and
/// fills its database under walsync; then a new empty volume: the database
/// is restored before the application starts, and it reads the same data.
#[test]
fn restore_if_missing_container_sequence() {
    let Some(env) = Env::new("exec_container") else {
        return;
    };
    let first = env.volume("vol1/app.db");
    let create = format!(
        "sqlite3 \"$0\" \"PRAGMA journal_mode=WAL; \
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB); {FIVE_COMMITS} {FIVE_COMMITS}\""
    );
    let status = env.run(&first, &sh(&create, &first), &["--restore-if-missing"]);
    assert_eq!(status.code(), Some(0), "first run: {status}");
    assert_eq!(rows(&first), 10);
    assert_eq!(env.restored("app.db"), content(&first));

    // A new volume: the app dumps what it finds, then adds five rows.
    let second = env.volume("vol2/app.db");
    let seen = env.path("vol2/seen.sql");
    let read = format!(
        "sqlite3 \"$0\" .dump > {} && sqlite3 \"$0\" \"{FIVE_COMMITS}\"",
        seen.display()
    );
    let status = env.run(&second, &sh(&read, &second), &["--restore-if-missing"]);
    assert_eq!(status.code(), Some(0), "second run: {status}");
    let dump = |db: &Path| {
        let o = Cmd::new(SQLITE3)
            .arg(db)
            .arg(".dump")
            .env("PATH", &env.path)
            .output();
        assert!(o.status.success(), "{}", text(&o));
        o.stdout
    };
    assert_eq!(
        std::fs::read(&seen).unwrap(),
        dump(&first),
        "the app did not find the first volume's database"
    );
    assert_eq!(rows(&second), 15);
    assert_eq!(env.restored("app.db"), content(&second));
}

/// An existing database is left alone even when its replica differs, and
/// `--require-replica` refuses a missing database without a replica in one
/// line naming it, before the child starts.
#[test]
fn existing_database_is_kept_and_require_replica_refuses() {
    let Some(env) = Env::new("exec_keep") else {
        return;
    };
    // A replica of app.db with 8 rows.
    let shipped = env.volume("a/app.db");
    let c = create_db(&shipped);
    common::daemon::commit(&c, 8);
    drop(c);
    let status = env.run(&shipped, "true", &[]);
    assert_eq!(status.code(), Some(0));
    assert_eq!(env.restored("app.db"), content(&shipped));

    // Another volume already holding app.db with 2 rows: kept as it is.
    let local = env.volume("b/app.db");
    let c = create_db(&local);
    common::daemon::commit(&c, 2);
    drop(c);
    let before = content(&local);
    let seen = env.path("b/seen");
    let read = format!(
        "sqlite3 \"$0\" \"SELECT count(*) FROM t\" > {}",
        seen.display()
    );
    let status = env.run(&local, &sh(&read, &local), &["--restore-if-missing"]);
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "2");
    assert_eq!(content(&local), before);

    // No replica of other.db: refused with --require-replica.
    let absent = env.volume("c/other.db");
    let marker = env.path("c/child-ran");
    let o = env
        .sync(
            &absent,
            &[
                "--restore-if-missing",
                "--require-replica",
                "--exec",
                &format!("touch {}", marker.display()),
            ],
        )
        .env("RUST_LOG", "off")
        .output();
    let err = one_line(&o);
    assert!(
        err.contains(&absent.display().to_string()) && err.contains("no replica"),
        "{err}"
    );
    assert!(!marker.exists() && !absent.exists());
}

/// A database the child creates, converts to WAL and writes just before it
/// exits (walsync's first attempt to open it failed: not in WAL mode yet)
/// is opened once more at shutdown and shipped.
#[test]
fn database_the_child_creates_just_before_exiting_ships() {
    let Some(env) = Env::new("exec_late") else {
        return;
    };
    let db = env.volume("vol/app.db");
    // Rollback journal first (walsync refuses it and waits a second before
    // trying again), then WAL and five commits 0.6 s later, and exit.
    let script = format!(
        "sqlite3 \"$0\" \"CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);\" && sleep 0.6 && \
         sqlite3 \"$0\" \"PRAGMA journal_mode=WAL; {FIVE_COMMITS}\""
    );
    let status = env.run(&db, &sh(&script, &db), &["--restore-if-missing"]);
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(rows(&db), 5);
    assert_eq!(env.restored("app.db"), content(&db));
}

/// walsync runs with glibc's per-thread malloc cache off (it re-executes
/// itself with it added to `GLIBC_TUNABLES`, see `src/daemon/tunables.rs`)
/// unless the user's `GLIBC_TUNABLES` sizes that cache, and the `--exec`
/// child gets `GLIBC_TUNABLES` as walsync was started with it.
#[test]
fn malloc_tunable_is_walsyncs_own_and_not_the_childs() {
    let Some(env) = Env::new("exec_tunables") else {
        return;
    };
    let cases: [(&str, Option<&str>, &str); 3] = [
        ("added.db", None, "glibc.malloc.tcache_count=0"),
        (
            "appended.db",
            Some("glibc.malloc.arena_max=4"),
            "glibc.malloc.arena_max=4:glibc.malloc.tcache_count=0",
        ),
        (
            "users.db",
            Some("glibc.malloc.tcache_count=7"),
            "glibc.malloc.tcache_count=7",
        ),
    ];
    for (file, users, daemons) in cases {
        let db = env.path(file);
        drop(create_db(&db));
        let parent = env.path(&format!("{file}.parent.env"));
        let child = env.path(&format!("{file}.child.env"));
        let comm = env.path(&format!("{file}.comm"));
        // The child's parent is walsync (`--exec` runs no shell of its own).
        let script = format!(
            "tr \"\\0\" \"\\n\" < /proc/$PPID/environ > \"{}\" && env > \"{}\" \
             && cat /proc/$PPID/comm > \"{}\"",
            parent.display(),
            child.display(),
            comm.display()
        );
        let mut cmd = env.sync(&db, &[]);
        cmd.env_remove("GLIBC_TUNABLES")
            .env_remove("WALSYNC_ORIGINAL_GLIBC_TUNABLES");
        if let Some(v) = users {
            cmd.env("GLIBC_TUNABLES", v);
        }
        let mut p = cmd.arg("--exec").arg(sh(&script, &db)).spawn(&env.log);
        let status = p.wait(EXIT);
        assert!(status.success(), "{file}: {status}");
        let lines = |path: &Path| -> Vec<String> {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("GLIBC_TUNABLES=") || l.starts_with("WALSYNC_ORIGINAL_"))
                .map(str::to_string)
                .collect()
        };
        // glibc's loader (2.36 here) may end the value of each tunable it
        // knows with a NUL in the exec-time copy of the environment that
        // /proc/PID/environ shows: the pairs after the first then appear
        // as lines of their own. Put the value back together.
        let text = std::fs::read_to_string(&parent).unwrap();
        let mut got = None::<String>;
        for line in text.lines() {
            match (&mut got, line.strip_prefix("GLIBC_TUNABLES=")) {
                (None, Some(v)) => got = Some(v.to_string()),
                (Some(v), None) if line.starts_with("glibc.") => {
                    v.push(':');
                    v.push_str(line);
                }
                (Some(_), _) => break,
                (None, None) => {}
            }
        }
        assert_eq!(
            got.as_deref(),
            Some(daemons),
            "{file}: walsync's GLIBC_TUNABLES"
        );
        // What walsync found, for its child (empty: unset; absent: not
        // re-executed).
        let marker = text
            .lines()
            .find_map(|l| l.strip_prefix("WALSYNC_ORIGINAL_GLIBC_TUNABLES="));
        let want_marker = match (users, daemons.ends_with("tcache_count=0")) {
            (_, false) => None,
            (None, true) => Some(""),
            (Some(v), true) => Some(v),
        };
        assert_eq!(
            marker, want_marker,
            "{file}: walsync's record of the original"
        );
        let childs: Vec<String> = users
            .map(|v| format!("GLIBC_TUNABLES={v}"))
            .into_iter()
            .collect();
        assert_eq!(lines(&child), childs, "{file}: the child's environment");
        // The process name ps, top and pkill show is still walsync's.
        let name = std::fs::read_to_string(&comm).unwrap();
        assert_eq!(name.trim(), "walsync-sync", "{file}: process name");
    }
}
