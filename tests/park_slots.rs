//! More databases than open slots: idle databases close their files
//! (`src/capture/park.rs`) so that many fit under a low open-file limit,
//! and without parking the same limit is refused in one line
//! (`src/daemon/limits.rs`). The daemon runs under a lowered open-file
//! limit (`sh -c 'ulimit -n N; exec …'`: only a POSIX shell needed).
//!
//! Run: `eval "$(scripts/s3-server.sh start)"` then
//! `cargo test --test park_slots -- --test-threads=1`. Without the S3
//! environment the tests skip, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Env;
use common::oracle::{self, app_state, Oracle, Writer};
use common::park::*;
use common::process::{text, wait_for};

// ---------------------------------------------------------------------------
// More databases than open slots
// ---------------------------------------------------------------------------

/// Open-file limit of the daemon, and databases: only
/// (750 − 512 − 60) / 9 = 19 fit open at once, while all 60 open would
/// need 60 × 10 = 600 descriptors besides the 512 kept for the rest.
const FD_LIMIT: &str = "750";
const MANY: usize = 60;
const SLOTS: usize = (750 - 512 - MANY) / 9;

/// Mutation checked: `OpenSlots::capacity` at least 1,000 (no effective
/// slot limit) → "unable to open database file" at start-up, replicas that
/// never catch up.
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
        .wrap(&under_limit(FD_LIMIT))
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

/// A command prefix that runs the rest under an open-file limit of `n`
/// (soft and hard), with nothing but a POSIX shell.
fn under_limit(n: &str) -> [String; 3] {
    [
        "sh".into(),
        "-c".into(),
        format!("ulimit -n {n} && exec \"$0\" \"$@\""),
    ]
}

/// The daemon on `env`'s databases under an open-file limit of `limit` must
/// refuse to start in one line; returns it.
fn refused_line(env: &Env, limit: &str, extra: &[&str]) -> String {
    let o = env
        .daemon_cmd(&[env.glob()], extra)
        .env("RUST_LOG", "walsync=warn")
        .wrap(&under_limit(limit))
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
        line.contains("need about 1112 open files (10 each)")
            && line.contains("open-file limit is 750")
            && line.contains("--close-idle-after"),
        "does not name the limit and the way out: {line}"
    );
    // 60 + 512 + 16 × 9 = 716 > 700.
    let line = refused_line(&env, "700", &[]);
    assert!(
        line.contains("need about 716 open files (1 each and 9 more while open)")
            && line.contains("open-file limit is 700")
            && !line.contains("--close-idle-after"),
        "does not name the limit: {line}"
    );
}
