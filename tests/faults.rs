//! walsync against a misbehaving S3: every fault kind of the fault proxy
//! (`scripts/s3proxy.py`), in front of the real S3 server.
//!
//! Each test runs the real `walsync-sync` through the proxy while a writer
//! commits (with application checkpoints), turns one kind of fault on, waits
//! until the replica caught up with the source *while the faults continue*,
//! then judges only by the oracle (`common::oracle`, reading the bucket
//! directly): every stored txid restores to a state the writer committed,
//! states never go back, the newest equals the source, no object was ever
//! overwritten. Then `walsync restore` itself runs through the faulty proxy
//! and must produce the same database (retrying transient failures), or,
//! where every answer is broken, fail with one line naming the object and
//! leave no file. The proxy's own counters prove the faults were injected.
//!
//! Bounded: each test writes at most 300 transactions in at most 8 s and
//! waits at most 60 s for the catch-up.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::RestoreFrom;
use common::faultproxy::FaultProxy;
use common::oracle::{self, app_state, Monotone, Oracle, Writer};
use common::process::{log_in, Cmd, Proc};
use common::Rng;
use walsync::storage::{S3Storage, Storage};

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");

/// One test's world.
struct World {
    name: &'static str,
    dir: tempfile::TempDir,
    bucket: String,
    prefix: String,
    storage: Arc<dyn Storage>,
    rng: Rng,
    proxy: FaultProxy,
}

impl World {
    fn new(name: &'static str) -> Option<World> {
        let config = common::s3_config_or_skip(name)?;
        let mut rng = Rng::new(name);
        let proxy = FaultProxy::start("{}", rng.next());
        Some(World {
            name,
            dir: tempfile::tempdir().expect("tempdir"),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            storage: Arc::new(S3Storage::new(config).expect("S3 client")),
            rng,
            proxy,
        })
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("f.db")
    }

    fn daemon(&self) -> Proc {
        let args: Vec<String> = [
            &self.db().display().to_string(),
            "--bucket",
            &self.bucket,
            "--prefix",
            &self.prefix,
            "--endpoint",
            &self.proxy.endpoint(),
            "--checkpoint-pages",
            "40",
            "--truncate-pages",
            "160",
            // Still grouping commits (one every 3–12 ms) into one upload,
            // but ten uploads a second rather than the default's one: the
            // faults need requests to land on.
            "--min-put-interval",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut cmd = Cmd::new(SYNC);
        cmd.args(args).env("RUST_LOG", "walsync=debug");
        Proc::new(&cmd, &log_in("fault-logs", self.name))
    }

    fn restore(&self) -> RestoreFrom {
        RestoreFrom {
            bin: WALSYNC.to_string(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            endpoint: self.proxy.endpoint(),
        }
    }
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The app's checkpoint modes, drawn at random during the load.
const MODES: [&str; 4] = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];

/// What a scenario does besides the common steps.
struct Scenario {
    /// Fault configuration while the daemon replicates.
    sync_faults: &'static str,
    /// Fault configuration while `walsync restore` runs.
    restore_faults: &'static str,
    /// Fault kinds whose counters must be > 0 at the end.
    expect: &'static [&'static str],
    /// SIGKILL and restart the daemon in the middle of the load (its
    /// start-up reads the bucket through the faults).
    restart: bool,
}

impl Scenario {
    fn new(
        sync_faults: &'static str,
        restore_faults: &'static str,
        expect: &'static [&'static str],
        restart: bool,
    ) -> Scenario {
        Scenario {
            sync_faults,
            restore_faults,
            expect,
            restart,
        }
    }
}

/// The common steps; returns the world for extra checks.
fn run(name: &'static str, s: Scenario) -> Option<World> {
    let mut w = World::new(name)?;
    let db = w.db();
    let mut writer = Writer::create(&db, 1);
    writer.commit(3);
    let mut daemon = w.daemon();
    daemon.spawn();
    let mut replica = Oracle::new(w.storage.clone(), "f.db").allow_compaction();
    assert!(
        wait_for(Duration::from_secs(20), || replica.newest().is_some()),
        "{name}: no first snapshot within 20 s"
    );

    daemon.note(&format!("faults on: {}", s.sync_faults));
    w.proxy.set(s.sync_faults);
    let t0 = Instant::now();
    let mut commits = 0;
    let mut restarted = !s.restart;
    let mut slowest = (Duration::ZERO, "");
    // The load runs 300 commits or 8 s, then on (up to 30 s and 5,000
    // commits) until every fault the scenario expects has been injected:
    // the dice decide which requests fail, and a run without them proves
    // nothing.
    let mut last_look = Instant::now();
    loop {
        let enough = commits >= 300 || t0.elapsed() >= Duration::from_secs(8);
        if enough && last_look.elapsed() >= Duration::from_millis(500) {
            last_look = Instant::now();
            let stats = w.proxy.stats();
            if t0.elapsed() >= Duration::from_secs(30)
                || commits >= 5_000
                || s.expect.iter().all(|k| stats.fault(k) > 0)
            {
                break;
            }
        }
        let tc = Instant::now();
        writer.commit(w.rng.range(1, 3) as usize);
        commits += 1;
        slowest = slowest.max((tc.elapsed(), "commit"));
        if w.rng.below(60) == 0 {
            let mode = MODES[w.rng.below(4) as usize];
            let tc = Instant::now();
            writer.checkpoint(mode);
            slowest = slowest.max((tc.elapsed(), mode));
        }
        if !restarted && t0.elapsed() > Duration::from_secs(2) {
            daemon.kill9();
            daemon.spawn();
            restarted = true;
        }
        std::thread::sleep(Duration::from_millis(w.rng.range(3, 12)));
    }
    eprintln!(
        "{name}: {commits} transactions in {:.1?}; slowest writer step: {slowest:?}",
        t0.elapsed()
    );

    // Catch up while the faults go on.
    let newest = oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(60));
    daemon.assert_running();
    let mut mono = Monotone::default();
    let checked = replica.restore_each(None, |r| mono.push("f.db", r.txid, app_state(&r.conn)));
    assert_eq!(checked.last(), Some(&newest));
    assert_eq!(
        mono.last(),
        Some((writer.gen, writer.last)),
        "{name}: newest restore is not the writer's last state (lost transactions)"
    );
    replica.check_no_overwrite();

    // `walsync restore` through the faulty proxy: newest and three random txids.
    w.proxy.set(s.restore_faults);
    let out = w.dir.path().join("restored.db");
    let got = oracle::dump(&w.restore().open("f.db", &out, &[]));
    if let Some(d) = oracle::dump_diff(&got, &oracle::source_dump(&db)) {
        panic!("{name}: walsync restore differs from the source: {d}");
    }
    for i in 0..3 {
        let (txid, want) = mono.states[w.rng.below(mono.states.len() as u64) as usize];
        let out = w.dir.path().join(format!("at-{i}-{txid}.db"));
        let conn = w
            .restore()
            .open("f.db", &out, &["--txid", &txid.to_string()]);
        assert_eq!(
            app_state(&conn),
            Ok(want),
            "{name}: walsync restore --txid {txid} differs from the oracle"
        );
    }
    let stats = w.proxy.stats();
    eprintln!(
        "{name}: {} txids checked, faults injected {:?}, requests {:?}",
        checked.len(),
        stats.faults,
        stats.requests
    );
    for kind in s.expect {
        assert!(
            stats.fault(kind) > 0,
            "{name}: no {kind} fault was injected ({:?}): the test proved nothing",
            stats.faults
        );
    }
    w.proxy.set("{}");
    Some(w)
}

#[test]
fn slowdown_503() {
    run(
        "slowdown",
        Scenario::new(
            r#"{"slowdown": 0.3}"#,
            r#"{"slowdown": 0.3}"#,
            &["slowdown"],
            false,
        ),
    );
}

#[test]
fn internal_error_500() {
    run(
        "error500",
        Scenario::new(
            r#"{"error500": 0.3}"#,
            r#"{"error500": 0.3}"#,
            &["error500"],
            true,
        ),
    );
}

#[test]
fn reset_mid_request() {
    run(
        "reset_request",
        Scenario::new(
            r#"{"reset_request": 0.25}"#,
            r#"{"reset_request": 0.25}"#,
            &["reset_request"],
            false,
        ),
    );
}

/// PUTs that the server applied but whose answer was cut: the retry stores
/// the same bytes again (check_no_overwrite proves no key changed content).
#[test]
fn reset_mid_response_after_put_applied() {
    run(
        "reset_response",
        Scenario::new(
            r#"{"reset_response": 0.3, "methods": ["PUT"]}"#,
            r#"{"reset_response": 0.25}"#,
            &["reset_response"],
            true,
        ),
    );
}

/// Truncated bodies: the daemon restarts through them (its start-up reads
/// the newest object's header), restore retries them, and when every GET
/// is truncated restore fails in one line naming the object, leaving no file.
#[test]
fn truncated_bodies_never_accepted() {
    let Some(w) = run(
        "truncate",
        Scenario {
            sync_faults: r#"{"truncate": 0.3}"#,
            restore_faults: r#"{"truncate": 0.25, "methods": ["GET"]}"#,
            expect: &["truncate"],
            restart: true,
        },
    ) else {
        return;
    };
    w.proxy.set(r#"{"truncate": 1.0, "methods": ["GET"]}"#);
    let before = w.proxy.stats().fault("truncate");
    let out = w.dir.path().join("never.db");
    let r = w.restore().run("f.db", &out, &[]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success(),
        "restore succeeded although every GET was truncated"
    );
    assert!(!out.exists(), "a failed restore left {}", out.display());
    let last = stderr.trim_end().lines().last().unwrap_or("");
    assert!(
        last.contains("f.db"),
        "the error does not name the object: {stderr}"
    );
    assert!(w.proxy.stats().fault("truncate") > before);
    eprintln!("truncate: all-truncated restore failed with: {last}");
}

#[test]
fn added_latency() {
    run(
        "latency",
        Scenario::new(
            r#"{"latency_ms": [20, 250]}"#,
            r#"{"latency_ms": [0, 50]}"#,
            &[],
            false,
        ),
    );
}

/// Dark for 3 s: new connections refused, kept-alive ones answered by a close.
#[test]
fn dark_refuse() {
    run(
        "dark_refuse",
        Scenario::new(
            r#"{"dark": {"mode": "refuse", "seconds": 3}}"#,
            r#"{"dark": {"mode": "refuse", "seconds": 1}}"#,
            &["dark_refuse"],
            false,
        ),
    );
}

/// Dark for 3 s: requests are accepted and never answered until it ends.
#[test]
fn dark_hang() {
    run(
        "dark_hang",
        Scenario::new(
            r#"{"dark": {"mode": "hang", "seconds": 3}}"#,
            r#"{"dark": {"mode": "hang", "seconds": 1}}"#,
            &["dark_hang"],
            false,
        ),
    );
}

/// Everything at once, at lower rates, with a restart.
#[test]
fn all_faults_mixed() {
    run(
        "mixed",
        Scenario::new(
            r#"{"slowdown": 0.08, "error500": 0.08, "reset_request": 0.06,
                "reset_response": 0.06, "truncate": 0.06, "latency_ms": [0, 40]}"#,
            r#"{"slowdown": 0.05, "error500": 0.05, "reset_request": 0.05,
                "reset_response": 0.05, "truncate": 0.05}"#,
            &["slowdown", "error500"],
            true,
        ),
    );
}
