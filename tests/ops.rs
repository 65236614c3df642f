//! `walsync list`, `walsync verify` and `walsync snapshot` through the real
//! binaries.
//!
//! The snapshot test uses a `file://` bucket and needs nothing external; the
//! list/verify test runs the daemon against the S3 server (skipped without
//! it unless `WALSYNC_REQUIRE_EXTERNAL=1`).

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{text, Cmd, Proc};

use common::oracle::{self, app_state, Writer};
use walsync::storage::{FileStorage, Metadata, S3Storage, Storage};

const SYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync");

fn walsync(args: &[&str]) -> Output {
    Cmd::new(WALSYNC_BIN).args(args).output()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn sigterm(daemon: &mut Proc) {
    let status = daemon.sigterm(Duration::from_secs(30));
    assert!(status.success(), "daemon exited with {status}");
}

fn restored_state(bucket: &str, name: &str, out: &Path) -> (i64, i64) {
    let o = walsync(&[
        "restore",
        name,
        "--bucket",
        bucket,
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "restore: {}", text(&o));
    let c = rusqlite::Connection::open(out).unwrap();
    app_state(&c).unwrap().expect("empty database restored")
}

/// `--version` of both binaries: one line, the version and the git commit
/// the build recorded; `walsync` without a command: one error line, exit 1.
#[test]
fn version_of_both_binaries() {
    for (bin, name) in [(WALSYNC_BIN, "walsync"), (SYNC_BIN, "walsync-sync")] {
        for flag in ["--version", "-V"] {
            let out = Cmd::new(bin).arg(flag).output();
            assert!(out.status.success(), "{name} {flag}: {out:?}");
            let line = stdout(&out);
            assert_eq!(
                line,
                format!(
                    "{name} {} (git commit {})\n",
                    env!("CARGO_PKG_VERSION"),
                    walsync::cli::GIT_COMMIT
                )
            );
        }
    }
    let out = walsync(&[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("walsync: error: no command given"), "{err}");
}

#[test]
fn snapshot_command_and_the_daemon_lock() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let bucket_dir = dir.path().join("bucket");
    let bucket = format!("file://{}", bucket_dir.display());
    let db_arg = db.to_str().unwrap();
    let mut w = Writer::create(&db, 2);
    w.commit(10);

    // First snapshot of a database with no replica: txid 1.
    let o = walsync(&["snapshot", db_arg, "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(stdout(&o).contains("stored as txid 1 "), "{}", text(&o));

    // Commits since, then a second snapshot: what was committed ships
    // first, the snapshot follows as a later txid.
    for _ in 0..3 {
        w.commit(5);
    }
    let o = walsync(&["snapshot", db_arg, "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    let second: u64 = stdout(&o)
        .split("txid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no txid in {}", text(&o)));
    assert!(second >= 2, "{}", text(&o));
    assert_eq!(
        restored_state(&bucket, "s.db", &dir.path().join("r1.db")),
        (2, w.last)
    );

    // While the daemon replicates the database, snapshot is refused.
    let mut daemon = Cmd::new(SYNC_BIN)
        .args([db_arg, "--bucket", &bucket])
        .env("RUST_LOG", "walsync=debug")
        .spawn(&dir.path().join("daemon.log"));
    // The daemon logs this once it holds the lock and opened the database.
    // (Probing with try_lock here would itself hold the lock for a moment
    // and could make the daemon's first attempt fail.)
    daemon.wait_line(Duration::from_secs(15), |l| {
        l.contains("s.db: resuming after txid") || l.contains("s.db: snapshot as txid")
    });
    assert!(
        walsync::sqlite::lock::try_lock(&db).is_err(),
        "the daemon holds the lock"
    );
    w.commit(3);
    let o = walsync(&["snapshot", db_arg, "--bucket", &bucket]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("is replicating this database") && err.contains(&daemon.pid().to_string()),
        "{}",
        text(&o)
    );
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    w.commit(4);
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(&bucket_dir).unwrap());
    let mut replica = oracle::Oracle::new(storage.clone(), "s.db");
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(20));
    sigterm(&mut daemon);

    // Stopped: snapshot works again, after everything shipped before it.
    w.commit(2);
    let o = walsync(&["snapshot", db_arg, "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        restored_state(&bucket, "s.db", &dir.path().join("r2.db")),
        (2, w.last)
    );
    // The whole history restores, every txid once, states monotone.
    let mut mono = oracle::Monotone::default();
    let checked = replica.restore_each(None, |r| mono.push("s.db", r.txid, app_state(&r.conn)));
    assert_eq!(mono.last(), Some((2, w.last)));
    assert_eq!(replica.check_no_overwrite(), replica.list().len());
    let o = walsync(&["verify", "s.db", "--restore", "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    eprintln!(
        "snapshot: {} txids restored and checked; {}",
        checked.len(),
        stdout(&o).trim()
    );

    // A missing database file is a clear error.
    let o = walsync(&[
        "snapshot",
        dir.path().join("nope.db").to_str().unwrap(),
        "--bucket",
        &bucket,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn list_and_verify_commands() {
    let name = "ops_list_verify";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut writers: Vec<Writer> = ["a.db", "b.db"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut w = Writer::create(&dir.path().join(n), i as i64 + 1);
            w.commit(3);
            w
        })
        .collect();
    let mut daemon = Cmd::new(SYNC_BIN)
        .arg(format!("{}/*.db", dir.path().display()))
        .args(["--bucket", &config.bucket, "--prefix", &config.prefix])
        // Several level-0 objects to damage: one upload per commit.
        .args(["--min-put-interval", "0"])
        .env("RUST_LOG", "walsync=debug")
        .spawn(&dir.path().join("daemon.log"));
    // Commits before the daemon replicates end up in its first snapshot;
    // wait until it stored one per database (start-up takes a writer lease,
    // src/lease/) so the commits below ship as level-0 segments.
    let t0 = Instant::now();
    for n in ["a.db", "b.db"] {
        let r = oracle::Oracle::new(storage.clone(), n);
        while r.newest().is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{n}: nothing stored"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for i in 0..30 {
        for w in &mut writers {
            w.commit(1 + i % 3);
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    let mut replicas = Vec::new();
    for n in ["a.db", "b.db"] {
        let mut r = oracle::Oracle::new(storage.clone(), n);
        oracle::wait_caught_up(&mut r, &dir.path().join(n), Duration::from_secs(20));
        replicas.push(r);
    }
    sigterm(&mut daemon);

    // list: one row per database, newest txid and counts as stored.
    let o = walsync(&["list", "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME"), "{out}");
    let o = walsync(&["list", "--bucket", &bucket, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let json = stdout(&o);
    for r in &replicas {
        let objs = r.list();
        let snaps = objs.iter().filter(|o| o.level == 9).count();
        let bytes: u64 = storage
            .list(&format!("{}/", r.db()), None)
            .unwrap()
            .iter()
            .map(|i| i.size)
            .sum();
        let want = format!(
            "{{\"name\":\"{}\",\"newest_txid\":{},\"time\":\"",
            r.db(),
            r.newest().unwrap()
        );
        assert!(json.contains(&want), "{want} not in {json}");
        let want = format!(
            "\"snapshots\":{snaps},\"objects\":{},\"bytes\":{bytes}}}",
            objs.len()
        );
        assert!(json.contains(&want), "{want} not in {json}");
    }
    // list NAME: one row per object.
    let objs = replicas[0].list();
    let o = walsync(&["list", "a.db", "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    // A header, a row per object, a blank line and the restorable range.
    assert_eq!(stdout(&o).lines().count(), objs.len() + 3, "{}", text(&o));
    assert!(stdout(&o).contains("restorable: txid "), "{}", text(&o));
    let o = walsync(&["list", "a.db", "--bucket", &bucket, "--json"]);
    assert_eq!(stdout(&o).matches("\"level\":").count(), objs.len());
    let o = walsync(&["list", "nothere.db", "--bucket", &bucket]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));

    // verify: all good, with a test restore.
    let o = walsync(&["verify", "--all", "--restore", "--bucket", &bucket]);
    assert!(o.status.success(), "{}", text(&o));
    let out = stdout(&o);
    assert!(
        out.contains("a.db: ok") && out.contains("b.db: ok"),
        "{out}"
    );

    // Damage a.db three ways: a flipped byte under a SHA-256 that no longer
    // matches, a flipped byte in an object without metadata (LTX checksum),
    // and a missing segment (a hole in the chain).
    let l0: Vec<_> = objs.iter().filter(|o| o.level == 0).collect();
    assert!(l0.len() >= 5, "{} level-0 objects", l0.len());
    let flip = |key: &str, meta: Option<Metadata>| {
        let (mut body, info) = storage.get_with_info(key).unwrap();
        let at = body.len() / 2;
        body[at] ^= 0x55;
        storage
            .put(key, &body, &meta.unwrap_or(info.metadata))
            .unwrap();
    };
    flip(&l0[1].key, None);
    flip(&l0[2].key, Some(Metadata::new()));
    storage.delete_many(&[l0[3].key.clone()]).unwrap();
    let o = walsync(&["verify", "--all", "--bucket", &bucket]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = stdout(&o);
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem:")).collect();
    assert_eq!(problems.len(), 3, "{}", text(&o));
    assert!(
        problems.iter().any(|p| p.contains("SHA-256 mismatch")),
        "{out}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!("txid {} ", l0[3].min))
                || p.contains(&format!("txids {}", l0[3].min))),
        "{out}"
    );
    assert!(out.contains("b.db: ok"), "{out}");
    assert!(out.contains("a.db: FAILED"), "{out}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("3 problem(s) in 1 of 2 database(s)"), "{err}");
    eprintln!("verify output:\n{out}");
}
