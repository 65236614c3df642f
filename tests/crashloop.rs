//! The crash loop: writers on several databases with random application
//! checkpoints (PASSIVE, FULL, RESTART, TRUNCATE) and random transaction
//! sizes, while `walsync-sync` is SIGKILLed and restarted at random moments
//! and the fault proxy (`scripts/s3proxy.py`) injects every kind of S3 fault,
//! including dark periods.
//!
//! The source state of every committed transaction is recorded (the model
//! of `common::oracle`: a database's state is `(gen, last)`, rows 1..=last,
//! so the state after each commit is its `last`, with the wall-clock time
//! its transaction began). During the run, at random moments, a random
//! stored txid is restored with `walsync restore` through the faults and
//! must be a recorded state; at the end every database must catch up, and
//! then each is restored by the independent oracle at every txid (or a
//! sample), and by `walsync restore` through the faults at the newest txid,
//! at random txids and at random timestamps, each compared with the
//! recorded states. Transactions lost (committed, but not in the newest
//! restore) must be 0.
//!
//! The short version runs in `make test`. `make soak` runs the long one
//! through the same code with the settings in the environment:
//! `WALSYNC_CRASH_CYCLES` (kill cycles, default 10), `WALSYNC_CRASH_DBS`
//! (databases, default 3), `WALSYNC_CRASH_SECS` (time bound of the kill
//! phase, default 75) and `WALSYNC_CRASH_REPORT` (a file for the JSON
//! summary). Bounded in count (cycles) and time (the bound above plus at
//! most 120 s to catch up).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::RestoreFrom;
use common::faultproxy::FaultProxy;
use common::oracle::{self, app_state, Monotone, Oracle, Writer};
use common::process::{log_in, Cmd};
use common::Rng;
use walsync::storage::{S3Storage, Storage};

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

use walsync::util::now_ms;

fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .expect("timestamp in range");
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("format timestamp")
}

/// One database under test: its writer and every state it committed.
struct Db {
    name: String,
    writer: Writer,
    /// `last` after each commit → wall-clock ms when its transaction began
    /// (the initial empty state 0 included).
    began: BTreeMap<i64, i64>,
    /// (`last`, wall-clock ms when the commit returned), in order.
    ended: Vec<(i64, i64)>,
}

impl Db {
    /// Is `state` one the writer committed?
    fn check_recorded(&self, what: &str, state: Result<Option<(i64, i64)>, String>) -> i64 {
        let state = state.unwrap_or_else(|e| panic!("{}: {what}: {e}", self.name));
        let (gen, last) = state.unwrap_or_else(|| panic!("{}: {what}: no tables", self.name));
        assert_eq!(
            gen, self.writer.gen,
            "{}: {what}: wrong generation",
            self.name
        );
        assert!(
            self.began.contains_key(&last),
            "{}: {what}: state last = {last} was never committed (torn or invented transaction)",
            self.name
        );
        last
    }
}

/// Counters of the run, printed and written as JSON.
#[derive(Default)]
struct Report {
    cycles: u64,
    transactions: u64,
    rows: u64,
    app_checkpoints: BTreeMap<String, (u64, u64)>,
    slowest_checkpoint_ms: u128,
    startup_exits: u64,
    restores_during: u64,
    /// Restores during the loop that ran out of retries (one clear line).
    restores_gave_up: u64,
    restores_end_cli: u64,
    txids_checked: u64,
    lost: u64,
    seconds: f64,
}

const MIXED: &str = r#"{"slowdown": 0.04, "error500": 0.04, "reset_request": 0.03,
    "reset_response": 0.03, "truncate": 0.03, "latency_ms": [0, 30]}"#;

/// The fault configuration of one cycle.
fn roll_faults(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => "{}".to_string(),
        1 => format!(
            r#"{{"dark": {{"mode": "refuse", "seconds": {}}}}}"#,
            rng.range(1, 3)
        ),
        2 => format!(
            r#"{{"dark": {{"mode": "hang", "seconds": {}}}}}"#,
            rng.range(1, 3)
        ),
        3 => r#"{"slowdown": 0.3, "error500": 0.2}"#.to_string(),
        4 => r#"{"reset_response": 0.3, "methods": ["PUT"]}"#.to_string(),
        _ => MIXED.to_string(),
    }
}

#[test]
fn crash_loop() {
    let name = "crashloop";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let cycles = env_num("WALSYNC_CRASH_CYCLES", 10);
    let n_dbs = env_num("WALSYNC_CRASH_DBS", 3) as usize;
    let limit = Duration::from_secs(env_num("WALSYNC_CRASH_SECS", 75));
    let mut rng = Rng::new(name);
    let bucket = config.bucket.clone();
    let prefix = config.prefix.clone();
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config).expect("S3 client"));
    let proxy = FaultProxy::start("{}", rng.next());
    let dir = tempfile::tempdir().expect("tempdir");
    let from = RestoreFrom {
        bin: WALSYNC.to_string(),
        bucket: bucket.clone(),
        prefix: prefix.clone(),
        endpoint: proxy.endpoint(),
    };
    eprintln!(
        "{name}: {cycles} cycles, {n_dbs} databases, kill phase ≤ {limit:?}, prefix {prefix}"
    );

    let mut dbs: Vec<Db> = (0..n_dbs)
        .map(|i| {
            let name = format!("c{i:02}.db");
            let writer = Writer::create(&dir.path().join(&name), 1);
            Db {
                name,
                began: BTreeMap::from([(writer.last, now_ms())]),
                ended: Vec::new(),
                writer,
            }
        })
        .collect();
    let mut args: Vec<String> = vec![format!("{}/*.db", dir.path().display())];
    args.extend(
        [
            "--bucket",
            &bucket,
            "--prefix",
            &prefix,
            "--endpoint",
            &proxy.endpoint(),
            "--checkpoint-pages",
            "60",
            "--truncate-pages",
            "240",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let mut cmd = Cmd::new(SYNC);
    cmd.args(&args).env("RUST_LOG", "walsync=debug");
    let mut daemon = cmd.spawn(&log_in("crash-logs", name));
    let replicas: Vec<Oracle> = dbs
        .iter()
        .map(|d| Oracle::new(storage.clone(), &d.name).allow_compaction())
        .collect();
    let t_ready = Instant::now();
    while replicas.iter().any(|r| r.newest().is_none()) {
        assert!(
            t_ready.elapsed() < Duration::from_secs(30),
            "{name}: no first snapshot of every database within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let restorable_from_ms = now_ms();

    let mut rep = Report::default();
    let modes = ["PASSIVE", "FULL", "RESTART", "TRUNCATE"];
    let t0 = Instant::now();
    let mut phase_end = Instant::now() + Duration::from_millis(rng.range(500, 4000));
    let mut scratch = 0u64;
    while rep.cycles < cycles && t0.elapsed() < limit {
        // One writer step on a random database.
        let db = &mut dbs[rng.below(n_dbs as u64) as usize];
        let rows = if rng.below(30) == 0 {
            rng.range(50, 200)
        } else {
            rng.range(1, 8)
        } as usize;
        let began = now_ms();
        db.writer.commit(rows);
        db.began.insert(db.writer.last, began);
        db.ended.push((db.writer.last, now_ms()));
        rep.transactions += 1;
        rep.rows += rows as u64;
        // Application checkpoints: more often while walsync is down (the
        // case that forces a snapshot). A short busy timeout, so that a
        // checkpoint walsync's read transaction holds back returns busy
        // instead of stalling the writer.
        if rng.below(if daemon.running() { 40 } else { 15 }) == 0 {
            let mode = modes[rng.below(4) as usize];
            db.writer
                .conn
                .busy_timeout(Duration::from_millis(300))
                .unwrap();
            let tc = Instant::now();
            let busy =
                match db
                    .writer
                    .conn
                    .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                        r.get::<_, i64>(0)
                    }) {
                    Ok(b) => b != 0,
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        true
                    }
                    Err(e) => panic!("{}: checkpoint {mode}: {e}", db.name),
                };
            rep.slowest_checkpoint_ms = rep.slowest_checkpoint_ms.max(tc.elapsed().as_millis());
            db.writer.conn.busy_timeout(Duration::from_secs(5)).unwrap();
            let e = rep.app_checkpoints.entry(mode.to_string()).or_default();
            e.0 += 1;
            e.1 += busy as u64;
        }
        std::thread::sleep(Duration::from_millis(rng.range(1, 8)));

        // A daemon that exited on its own: only acceptable at start-up
        // while S3 was unreachable (it exits 1 in one line then, and a
        // service manager restarts it); anything else fails the test.
        if daemon.running() {
            if let Some(code) = daemon.exited().map(|s| s.code()) {
                let tail = daemon.log_tail(1);
                assert!(
                    code == Some(1) && tail.contains("temporary failure"),
                    "{name}: the daemon exited with {code:?}: {tail}"
                );
                rep.startup_exits += 1;
                daemon.spawn();
            }
        }
        if Instant::now() < phase_end {
            continue;
        }
        if daemon.running() {
            daemon.kill9();
            rep.cycles += 1;
            phase_end = Instant::now() + Duration::from_millis(rng.range(0, 1500));
        } else {
            let faults = roll_faults(&mut rng);
            daemon.note(&format!("faults: {faults}"));
            proxy.set(&faults);
            daemon.spawn();
            // Up 0.5–6 s: long enough that a snapshot forced by the
            // checkpoints while it was down usually lands before the next
            // kill (with kills every ~2 s a 5 MB database on a loaded
            // machine made no progress for minutes: nothing lost, nothing
            // shipped either).
            phase_end = Instant::now() + Duration::from_millis(rng.range(500, 6000));
            // Sometimes: restore a random stored txid of a random database
            // through the faults and check it is a committed state.
            if rng.below(3) == 0 {
                let i = rng.below(n_dbs as u64) as usize;
                let objs = replicas[i].list();
                let first = objs
                    .iter()
                    .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL)
                    .map(|o| o.max)
                    .min();
                let newest = objs.iter().map(|o| o.max).max();
                if let (Some(first), Some(newest)) = (first, newest) {
                    let txid = rng.range(first, newest);
                    scratch += 1;
                    let out = dir.path().join(format!("r{scratch}.restored"));
                    let r = from.run(&dbs[i].name, &out, &["--txid", &txid.to_string()]);
                    if r.status.success() {
                        let conn = rusqlite::Connection::open(&out).unwrap();
                        dbs[i].check_recorded(&format!("restore at txid {txid}"), app_state(&conn));
                        rep.restores_during += 1;
                    } else {
                        // Under up to 50 % failing requests a restore may
                        // run out of retries: allowed, if it says so in one
                        // line and leaves no file behind.
                        let err = String::from_utf8_lossy(&r.stderr);
                        let last = err.lines().last().unwrap_or("");
                        assert!(
                            last.starts_with("walsync: error:")
                                && last.contains("temporary failure"),
                            "{}: restore at txid {txid} failed otherwise: {err}",
                            dbs[i].name
                        );
                        assert!(!out.exists(), "a failed restore left {}", out.display());
                        rep.restores_gave_up += 1;
                    }
                }
            }
        }
    }
    if !daemon.running() {
        proxy.set(MIXED);
        daemon.spawn();
    }

    // The end: catch up (under mild faults), then judge every database.
    proxy.set(MIXED);
    daemon.note("catch-up");
    let mut txids = 0;
    let mut lost = 0;
    for (db, mut replica) in dbs.iter().zip(replicas) {
        let path = dir.path().join(&db.name);
        let newest = oracle::wait_caught_up(&mut replica, &path, Duration::from_secs(120));
        // Oracle restores: every txid up to 1,500, else 300 random ones.
        let first = replica
            .list()
            .iter()
            .filter(|o| o.level == walsync::ltx::SNAPSHOT_LEVEL)
            .map(|o| o.max)
            .min()
            .expect("a snapshot");
        let targets: Option<Vec<u64>> = (newest > 1500).then(|| {
            let mut t: Vec<u64> = (0..300).map(|_| rng.range(first, newest)).collect();
            t.push(newest);
            t.sort();
            t.dedup();
            t
        });
        let mut mono = Monotone::default();
        let mut at: HashMap<u64, i64> = HashMap::new();
        let checked = replica.restore_each(targets.as_deref(), |r| {
            let state = app_state(&r.conn);
            at.insert(
                r.txid,
                db.check_recorded(&format!("txid {}", r.txid), state.clone()),
            );
            mono.push(&db.name, r.txid, state);
        });
        txids += checked.len();
        let final_last = at[&newest];
        let db_lost = db.ended.iter().filter(|(l, _)| *l > final_last).count();
        if db_lost > 0 {
            eprintln!(
                "{}: LOST {db_lost} transaction(s): newest txid {newest} restores last = {final_last}, the writer committed last = {}",
                db.name, db.writer.last
            );
        }
        lost += db_lost;
        replica.check_no_overwrite();

        // walsync restore through the faults: newest, 3 txids, 2 timestamps.
        let out = dir.path().join(format!("{}.newest", db.name));
        let got = oracle::dump(&from.open(&db.name, &out, &[]));
        if let Some(d) = oracle::dump_diff(&got, &oracle::source_dump(&path)) {
            panic!("{}: walsync restore differs from the source: {d}", db.name);
        }
        rep.restores_end_cli += 1;
        let known: Vec<u64> = at.keys().copied().collect();
        for k in 0..3 {
            let txid = known[rng.below(known.len() as u64) as usize];
            let out = dir.path().join(format!("{}.t{k}", db.name));
            let conn = from.open(&db.name, &out, &["--txid", &txid.to_string()]);
            let last =
                db.check_recorded(&format!("walsync restore --txid {txid}"), app_state(&conn));
            assert_eq!(
                last, at[&txid],
                "{}: walsync restore --txid {txid} differs from the oracle",
                db.name
            );
            rep.restores_end_cli += 1;
        }
        let after: Vec<&(i64, i64)> = db
            .ended
            .iter()
            .filter(|(_, t)| *t > restorable_from_ms + 1000)
            .collect();
        for k in 0..2 {
            let Some(&&(_, ts)) = after.get(rng.below(after.len().max(1) as u64) as usize) else {
                break;
            };
            let out = dir.path().join(format!("{}.ts{k}", db.name));
            let stamp = rfc3339_ms(ts);
            let conn = from.open(&db.name, &out, &["--timestamp", &stamp]);
            let last = db.check_recorded(
                &format!("walsync restore --timestamp {stamp}"),
                app_state(&conn),
            );
            assert!(
                db.began[&last] <= ts + 1,
                "{}: restore at {stamp} holds last = {last}, a transaction begun after that time",
                db.name
            );
            rep.restores_end_cli += 1;
        }
    }
    daemon.assert_running();
    rep.txids_checked = txids as u64;
    rep.lost = lost as u64;
    rep.seconds = t0.elapsed().as_secs_f64();
    let stats = proxy.stats();
    let ckpt: Vec<String> = rep
        .app_checkpoints
        .iter()
        .map(|(m, (n, busy))| format!("\"{m}\": {{\"run\": {n}, \"busy\": {busy}}}"))
        .collect();
    let faults: Vec<String> = stats
        .faults
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect();
    let json = format!(
        "{{\"cycles\": {}, \"databases\": {n_dbs}, \"daemon_starts\": {}, \"startup_exits\": {}, \
         \"transactions\": {}, \"rows\": {}, \"faults_injected\": {}, \"faults\": {{{}}}, \
         \"requests\": {}, \"app_checkpoints\": {{{}}}, \"slowest_app_checkpoint_ms\": {}, \
         \"restores_during_loop\": {}, \"restores_gave_up\": {}, \"restores_at_end_cli\": {}, \"txids_checked_by_oracle\": {}, \
         \"lost\": {}, \"seconds\": {:.1}}}",
        rep.cycles,
        daemon.starts,
        rep.startup_exits,
        rep.transactions,
        rep.rows,
        stats.total_faults(),
        faults.join(", "),
        stats.requests.values().sum::<u64>(),
        ckpt.join(", "),
        rep.slowest_checkpoint_ms,
        rep.restores_during,
        rep.restores_gave_up,
        rep.restores_end_cli,
        rep.txids_checked,
        rep.lost,
        rep.seconds
    );
    eprintln!("{name}: {json}");
    if let Ok(path) = std::env::var("WALSYNC_CRASH_REPORT") {
        std::fs::write(PathBuf::from(&path), format!("{json}\n"))
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
    }
    assert_eq!(rep.lost, 0, "{name}: transactions lost (see above)");
    assert!(
        rep.cycles >= cycles.min(3),
        "{name}: only {} kill cycles ran within {limit:?}",
        rep.cycles
    );
    assert!(stats.total_faults() > 0, "{name}: no fault was injected");
}
