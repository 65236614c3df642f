//! `walsync status` against a real daemon replicating to the local S3
//! server: one line per database with the right names, paths, txids (equal
//! to `walsync list` once writes stop) and errors; the JSON document's keys;
//! the socket's mode (0600 even under umask 000); a second daemon on the
//! same socket refused; a stale socket taken over; a silent client neither
//! blocking others nor kept forever; no daemon → one line, non-zero.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::{commit, create_db};
use common::process::{log_path, text, wait_for, Cmd};
use serde_json::Value;

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");

/// The keys of one database in `walsync status --json` (scripts/README.md).
const KEYS: [&str; 12] = [
    "name",
    "path",
    "state",
    "files_closed",
    "shipped_txid",
    "lag_ms",
    "wal_bytes",
    "last_snapshot",
    "last_snapshot_ms",
    "last_error",
    "last_error_time",
    "last_error_ms",
];

/// `walsync status [--status-socket sock] [extra]` with `envs`.
fn status(sock: Option<&Path>, extra: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut c = Cmd::new(WALSYNC);
    c.arg("status");
    if let Some(s) = sock {
        c.arg("--status-socket").arg(s);
    }
    for (k, v) in envs {
        c.env(k, v);
    }
    c.args(extra)
        .env_remove("RUNTIME_DIRECTORY")
        .timeout(Duration::from_secs(30))
        .output()
}

/// The JSON document by name, or `None` while no daemon answers.
fn status_json(sock: &Path) -> Option<Vec<Value>> {
    let o = status(Some(sock), &["--json"], &[]);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice::<Value>(&o.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON: {e}\n{}", text(&o)))
        .as_array()
        .cloned()
}

fn find<'a>(doc: &'a [Value], name: &str) -> Option<&'a Value> {
    doc.iter().find(|d| d["name"] == name)
}

fn txid(doc: &[Value], name: &str) -> u64 {
    find(doc, name)
        .and_then(|d| d["shipped_txid"].as_u64())
        .unwrap_or(0)
}

/// The one line a failed command printed on stderr.
fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded:\n{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).trim_end().to_string();
    assert_eq!(err.lines().count(), 1, "not one line:\n{}", text(o));
    err
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Commit to each database every 20 ms until `stop` (at most 1,500 commits
/// each, 60 s).
fn writers(dbs: Vec<rusqlite::Connection>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        for _ in 0..1500 {
            if stop.load(Ordering::Relaxed) || t0.elapsed() > Duration::from_secs(60) {
                break;
            }
            for c in &dbs {
                commit(c, 2);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

#[test]
fn status_shows_every_database() {
    let Some(cfg) = common::s3_config_or_skip("status") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a.db"),
        dir.path().join("b.db"),
        dir.path().join("c.db"),
    );
    let conns = vec![create_db(&a), create_db(&b)];
    // c.db is a SQLite database in rollback-journal mode: refused.
    rusqlite::Connection::open(&c)
        .unwrap()
        .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    let sock = dir.path().join("run/status.sock");
    let bucket = format!("s3://{}/{}", cfg.bucket, cfg.prefix);
    let mut daemon = Cmd::new(SYNC);
    daemon
        .arg(&a)
        .arg(&b)
        .arg(&c)
        .args(["--bucket", &bucket, "--status-socket"])
        .arg(&sock)
        .env("RUST_LOG", "walsync=debug")
        // The socket must be 0600 whatever the umask.
        .wrap(&["sh", "-c", "umask 000 && exec \"$@\"", "sh"]);
    let mut d = daemon.spawn(&log_path("status"));
    let stop = Arc::new(AtomicBool::new(false));
    let load = writers(conns, stop.clone());

    let mut doc = Vec::new();
    assert!(
        wait_for(Duration::from_secs(30), || {
            doc = status_json(&sock).unwrap_or_default();
            txid(&doc, "a.db") >= 1
                && txid(&doc, "b.db") >= 1
                && find(&doc, "c.db").is_some_and(|d| d["state"] == "failed")
        }),
        "status never showed a.db and b.db shipped, c.db failed: {doc:?}"
    );
    assert_eq!(mode(&sock), 0o600, "socket mode under umask 000");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("run"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["status.sock"]);

    // The documented keys, for every database; paths as given.
    for d in &doc {
        let keys: BTreeSet<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, KEYS.into_iter().collect(), "{d}");
    }
    for (name, path) in [("a.db", &a), ("b.db", &b), ("c.db", &c)] {
        assert_eq!(
            find(&doc, name).unwrap()["path"],
            path.display().to_string()
        );
    }
    let failed = find(&doc, "c.db").unwrap();
    assert!(
        failed["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not in WAL mode")),
        "{failed}"
    );
    assert!(failed["last_error_ms"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(failed["shipped_txid"].is_null() && failed["lag_ms"].is_null());
    let ok = find(&doc, "a.db").unwrap();
    assert_eq!(ok["state"], "replicating");
    assert!(ok["last_error"].is_null(), "{ok}");
    assert!(ok["wal_bytes"].as_u64().unwrap() > 0, "{ok}");
    // The first snapshot was cut by this daemon.
    assert!(ok["last_snapshot_ms"].as_i64().unwrap() > 1_600_000_000_000);
    assert!(ok["last_snapshot"].as_str().unwrap().ends_with('Z'));

    // Under load the shipped txid moves between two calls.
    let first = txid(&doc, "a.db");
    assert!(
        wait_for(Duration::from_secs(20), || {
            status_json(&sock).is_some_and(|d| txid(&d, "a.db") > first)
        }),
        "a.db's shipped txid stayed at {first} under writes"
    );

    // The table: a header and one line per database, columns aligned.
    let o = status(Some(&sock), &[], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("walsync status:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME  "), "{table}");
    for (line, (name, path)) in lines[1..]
        .iter()
        .zip([("a.db", &a), ("b.db", &b), ("c.db", &c)])
    {
        assert!(line.starts_with(name), "{table}");
        let at = line.find(&path.display().to_string()).expect("path");
        assert_eq!(at, lines[0].find("PATH").unwrap(), "{table}");
    }
    assert!(
        lines[3].contains(" failed ") && lines[3].contains("not in WAL mode"),
        "{table}"
    );

    // A second daemon on the same socket is refused, in one line.
    let other = dir.path().join("other.db");
    drop(create_db(&other));
    let o = Cmd::new(SYNC)
        .arg(&other)
        .args(["--bucket", &format!("{bucket}-other"), "--status-socket"])
        .arg(&sock)
        .env("RUST_LOG", "off")
        .timeout(Duration::from_secs(60))
        .output();
    let e = one_line_error(&o);
    assert!(
        e.contains(&sock.display().to_string()) && e.contains("another walsync daemon answers"),
        "{e}"
    );
    d.assert_running();

    eprintln!(
        "walsync status --json:\n{}",
        String::from_utf8_lossy(&status(Some(&sock), &["--json"], &[]).stdout)
    );

    // Writes stop: what status says is shipped is what `walsync list` shows.
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let mut listed = Value::Null;
    assert!(
        wait_for(Duration::from_secs(30), || {
            let Some(doc) = status_json(&sock) else {
                return false;
            };
            let o = Cmd::new(WALSYNC)
                .args(["list", "--json", "--bucket", &bucket])
                .env("RUST_LOG", "off")
                .output();
            listed = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            let newest = |name: &str| {
                listed.as_array().and_then(|l| {
                    l.iter()
                        .find(|d| d["name"] == name)
                        .and_then(|d| d["newest_txid"].as_u64())
                })
            };
            ["a.db", "b.db"].iter().all(|n| {
                find(&doc, n).is_some_and(|d| d["lag_ms"] == 0) && newest(n) == Some(txid(&doc, n))
            })
        }),
        "status and list never agreed: {listed}"
    );

    assert!(d.sigterm(Duration::from_secs(30)).success());
    assert!(!sock.exists(), "socket left after a clean exit");
    let e = one_line_error(&status(Some(&sock), &[], &[]));
    assert_eq!(
        e,
        format!(
            "walsync: error: no walsync daemon at {}: no socket there",
            sock.display()
        )
    );
}

#[test]
fn default_socket_stale_socket_and_silent_client() {
    let Some(cfg) = common::s3_config_or_skip("status-default") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    commit(&create_db(&db), 3);
    let xdg = dir.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = xdg.join("walsync/status.sock");
    let bucket = format!("s3://{}/{}", cfg.bucket, cfg.prefix);
    let mut cmd = Cmd::new(SYNC);
    cmd.arg(&db)
        .args(["--bucket", &bucket])
        .env("RUST_LOG", "walsync=debug")
        .env("XDG_RUNTIME_DIR", &xdg)
        .env_remove("RUNTIME_DIRECTORY");
    let mut d = cmd.spawn(&log_path("status-default"));
    let env = [("XDG_RUNTIME_DIR", xdg.as_path())];
    let answered =
        |o: &Output| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("s.db");
    assert!(
        wait_for(Duration::from_secs(30), || answered(&status(
            None,
            &[],
            &env
        ))),
        "walsync status without --status-socket never found the daemon"
    );
    assert_eq!(mode(&xdg.join("walsync")), 0o700);
    assert_eq!(mode(&sock), 0o600);

    // A client that connects and sends nothing: others are answered while
    // it waits, and it is disconnected after the request time limit.
    let mut silent = UnixStream::connect(&sock).unwrap();
    let o = status(None, &["--json"], &env);
    assert!(answered(&o), "{}", text(&o));
    // Served concurrently, not after the silent client's time ran out:
    // the silent one is still connected.
    silent.set_nonblocking(true).unwrap();
    let waiting = silent.read(&mut [0u8; 8]);
    assert!(
        waiting
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "the silent client was dropped before another was answered: {waiting:?}"
    );
    silent.set_nonblocking(false).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut got = String::new();
    silent
        .read_to_string(&mut got)
        .expect("the silent client was never disconnected");
    assert_eq!(got, "");
    d.assert_running();

    // SIGKILL leaves the socket file behind: nobody answers there.
    d.kill9();
    assert!(sock.exists());
    let e = one_line_error(&status(None, &[], &env));
    assert_eq!(
        e,
        format!(
            "walsync: error: no walsync daemon at {}: connection refused",
            sock.display()
        )
    );
    // A new daemon takes the stale socket over.
    d.spawn();
    assert!(
        wait_for(Duration::from_secs(30), || answered(&status(
            None,
            &[],
            &env
        ))),
        "the restarted daemon did not take the stale socket over"
    );
    assert!(
        d.log_text().contains("nobody answers"),
        "no takeover logged"
    );
    assert_eq!(mode(&sock), 0o600);
    assert!(d.sigterm(Duration::from_secs(30)).success());
    assert!(!sock.exists(), "socket left after a clean exit");
}
