//! Point-in-time restore of a backup the `walsync-sync` daemon made while a
//! writer committed: at ≥ 50 random txids (`walsync restore --txid`, compared
//! with the oracle's independent restore at that txid) and at ≥ 50 random
//! times (`walsync restore --timestamp`, which must give the state of the
//! newest txid whose object time is at or before the target, and that state
//! must be one the writer had committed by then).
//!
//! Needs the S3 environment; skips without it unless
//! `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::{self, app_state, Writer};
use common::process::Cmd;
use walsync::ltx::{self, Header};
use walsync::storage::{S3Storage, Storage};

const SYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync");
const POINTS: usize = 60;

use walsync::util::now_ms;

fn restore_cli(bucket: &str, name: &str, out: &Path, flag: &str, value: &str) -> (i64, i64) {
    let o = Cmd::new(WALSYNC_BIN)
        .args(["restore", name, "--bucket", bucket, flag, value, "-o"])
        .arg(out)
        .output();
    assert!(
        o.status.success(),
        "walsync restore {flag} {value} failed: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let conn = rusqlite::Connection::open(out).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok", "{flag} {value}");
    app_state(&conn)
        .unwrap_or_else(|e| panic!("{flag} {value}: {e}"))
        .unwrap_or_else(|| panic!("{flag} {value}: restored an empty database"))
}

#[test]
fn point_in_time_by_txid_and_timestamp() {
    let name = "pitr";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let mut rng = common::Rng::new(name);
    let bucket_spec = format!("s3://{}/{}", config.bucket, config.prefix);
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let gen = 9;
    let mut w = Writer::create(&db, gen);
    w.commit(5);
    let mut daemon = Cmd::new(SYNC_BIN)
        .arg(&db)
        .args(["--bucket", &config.bucket, "--prefix", &config.prefix])
        .args(["--snapshot-interval", "1s"])
        // Every commit its own txid, so each state can be restored.
        .args(["--min-put-interval", "0"])
        .env("RUST_LOG", "walsync=debug")
        .spawn(&dir.path().join("daemon.log"));

    // The source state after each commit, with the time the commit began
    // (the object holding it is cut after that).
    let mut history: Vec<(i64, i64)> = vec![(0, w.last)];
    let t0 = Instant::now();
    for i in 0..150u64 {
        let began = now_ms();
        w.commit(1 + (i % 4) as usize);
        history.push((began, w.last));
        std::thread::sleep(Duration::from_millis(rng.range(2, 35)));
    }
    let mut replica = oracle::Oracle::new(storage.clone(), "p.db");
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(30));
    let status = daemon.sigterm(Duration::from_secs(30));
    assert!(status.success(), "daemon exited with {status}");
    eprintln!("{} commits in {:.1?}", history.len() - 1, t0.elapsed());

    // Every object's time, from its LTX header.
    let objects = replica.list();
    let mut times: BTreeMap<u64, i64> = BTreeMap::new(); // max txid → newest time ending there
    for o in &objects {
        let head = storage
            .get_range(&o.key, 0, Some(ltx::HEADER_SIZE as u64))
            .unwrap();
        let h = Header::decode(&head).unwrap();
        let e = times.entry(o.max).or_insert(h.timestamp_ms);
        *e = (*e).min(h.timestamp_ms);
    }
    let first_snapshot = objects
        .iter()
        .filter(|o| o.level == ltx::SNAPSHOT_LEVEL)
        .map(|o| o.max)
        .min()
        .unwrap();
    let newest = replica.newest().unwrap();
    eprintln!(
        "{} objects, txids {first_snapshot}..={newest}",
        objects.len()
    );
    assert!(newest >= 40, "too few txids ({newest}) for a PITR test");

    // By txid: the CLI equals the oracle's own restore.
    let mut txids: Vec<u64> = (0..POINTS)
        .map(|_| rng.range(first_snapshot, newest))
        .collect();
    txids.sort();
    let mut expected: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    {
        let mut uniq = txids.clone();
        uniq.dedup();
        replica.restore_each(Some(&uniq), |r| {
            let s = app_state(&r.conn).unwrap().expect("empty state");
            expected.insert(r.txid, s);
        });
    }
    for (i, t) in txids.iter().enumerate() {
        let out = dir.path().join(format!("tx-{i}.db"));
        let got = restore_cli(&bucket_spec, "p.db", &out, "--txid", &t.to_string());
        assert_eq!(Some(&got), expected.get(t), "txid {t}");
        let _ = std::fs::remove_file(&out);
    }

    // By timestamp: the state of the newest txid whose time is ≤ T, which
    // the writer had begun committing by T.
    let first_time = times.get(&first_snapshot).copied().unwrap();
    let last_time = times.values().copied().max().unwrap();
    let mut checked = 0;
    for i in 0..POINTS {
        let target = if i % 4 == 0 {
            // Exactly an object's time.
            let t = rng.range(first_snapshot, newest);
            times
                .range(t..)
                .next()
                .map(|(_, ms)| *ms)
                .unwrap_or(last_time)
        } else {
            rng.range(first_time as u64, last_time as u64 + 200) as i64
        };
        let want_txid = times
            .iter()
            .filter(|(_, ms)| **ms <= target)
            .map(|(t, _)| *t)
            .max()
            .unwrap();
        if want_txid < first_snapshot {
            continue;
        }
        let want = match expected.get(&want_txid) {
            Some(s) => *s,
            None => {
                let mut s = None;
                replica.restore_each(Some(&[want_txid]), |r| {
                    s = app_state(&r.conn).unwrap();
                });
                let s = s.expect("empty state");
                expected.insert(want_txid, s);
                s
            }
        };
        let ts = ltx::format_timestamp_ms(target).unwrap();
        let out = dir.path().join(format!("ts-{i}.db"));
        let got = restore_cli(&bucket_spec, "p.db", &out, "--timestamp", &ts);
        assert_eq!(
            got, want,
            "--timestamp {ts}: expected the state of txid {want_txid}"
        );
        // The state must be one the writer committed, begun by T.
        let committed = history
            .iter()
            .find(|(_, k)| *k == got.1)
            .unwrap_or_else(|| panic!("--timestamp {ts}: state {got:?} was never committed"));
        assert!(
            committed.0 <= target,
            "--timestamp {ts}: state {got:?} was committed after the target (at {} ms)",
            committed.0
        );
        checked += 1;
        let _ = std::fs::remove_file(&out);
    }
    assert!(checked >= 50, "only {checked} timestamp points checked");
    eprintln!(
        "point in time: {} txid targets and {checked} timestamp targets agree",
        txids.len()
    );
}
