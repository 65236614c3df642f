//! `--metrics-addr`: the Prometheus endpoint of a real daemon replicating to
//! the local S3 server. The values must move with writes (txid, bytes, PUT
//! count), lag must return to 0, and an idle daemon must make no requests.

mod common;

use std::time::Duration;

use common::daemon::{commit, create_db, metric, scrape};
use common::process::{log_path, wait_for, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");

fn s3_args(test: &str) -> Option<Vec<String>> {
    let cfg = common::s3_config_or_skip(test)?;
    Some(vec![
        "--bucket".into(),
        cfg.bucket.clone(),
        "--prefix".into(),
        cfg.prefix.clone(),
    ])
}

#[test]
fn metrics_move_with_writes() {
    let Some(mut args) = s3_args("metrics") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let conn = create_db(&db);
    commit(&conn, 10);
    let addr = format!("127.0.0.1:{}", common::closed_port());
    args.extend([
        db.display().to_string(),
        "--metrics-addr".into(),
        addr.clone(),
        "--snapshot-interval".into(),
        "0".into(),
        // Only replication's own requests: the exact PUT count below.
        "--compaction".into(),
        "off".into(),
    ]);
    let mut d = Proc::start(BIN, &args, &[], &log_path("metrics"));

    let lbl = "db=\"m.db\"";
    let put = "db=\"m.db\",kind=\"PUT\"";
    // Start-up: the first snapshot becomes durable.
    let mut page = String::new();
    assert!(
        wait_for(Duration::from_secs(20), || {
            page = scrape(&addr).unwrap_or_default();
            metric(&page, "walsync_database_durable_txid", lbl).unwrap_or(0.0) >= 1.0
                && metric(&page, "walsync_database_lag_seconds", lbl) == Some(0.0)
        }),
        "no durable txid in the metrics:\n{page}"
    );
    let txid0 = metric(&page, "walsync_database_durable_txid", lbl).unwrap();
    let bytes0 = metric(&page, "walsync_database_uploaded_bytes_total", lbl).unwrap();
    let objects0 = metric(&page, "walsync_database_uploaded_objects_total", lbl).unwrap();
    let puts0 = metric(&page, "walsync_storage_requests_total", put).unwrap();
    assert!(bytes0 > 0.0 && objects0 >= 1.0 && puts0 >= 1.0, "{page}");
    assert_eq!(
        metric(&page, "walsync_database_replicating", lbl),
        Some(1.0)
    );
    assert!(metric(&page, "walsync_database_snapshots_total", lbl).unwrap() >= 1.0);
    // No outage here: the WAL was never released (tests/replica.rs counts
    // a release through the same counter).
    assert_eq!(
        metric(&page, "walsync_database_wal_releases_total", lbl),
        Some(0.0)
    );
    assert!(
        metric(
            &page,
            "walsync_database_last_snapshot_timestamp_seconds",
            lbl
        )
        .unwrap()
            > 1.6e9
    );
    assert!(metric(&page, "walsync_database_wal_bytes", lbl).unwrap() > 0.0);
    // Start-up probed storage: LIST requests are counted for the database.
    assert!(
        metric(
            &page,
            "walsync_storage_requests_total",
            "db=\"m.db\",kind=\"LIST\""
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(
            &page,
            "walsync_storage_errors_total",
            "db=\"m.db\",kind=\"transient\""
        ),
        Some(0.0)
    );
    assert!(metric(&page, "walsync_process_resident_memory_bytes", "").unwrap() > 1e6);
    assert!(metric(&page, "walsync_process_threads", "").unwrap() >= 3.0);
    assert!(metric(&page, "walsync_uploader_queue_depth", "").is_some());

    // Idle: two scrapes a while apart show the same request counts.
    std::thread::sleep(Duration::from_millis(1500));
    let idle_a = scrape(&addr).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let idle_b = scrape(&addr).unwrap();
    let requests = |p: &str| -> Vec<String> {
        p.lines()
            .filter(|l| l.starts_with("walsync_storage_requests_total"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        requests(&idle_a),
        requests(&idle_b),
        "an idle daemon sent requests"
    );

    // Writes move the counters; lag returns to 0 once shipped.
    for _ in 0..5 {
        commit(&conn, 20);
        std::thread::sleep(Duration::from_millis(30));
    }
    assert!(
        wait_for(Duration::from_secs(20), || {
            page = scrape(&addr).unwrap_or_default();
            metric(&page, "walsync_database_durable_txid", lbl).unwrap_or(0.0) >= txid0 + 1.0
                && metric(&page, "walsync_database_lag_seconds", lbl) == Some(0.0)
        }),
        "txid did not move or lag did not return to 0:\n{page}"
    );
    let txid1 = metric(&page, "walsync_database_durable_txid", lbl).unwrap();
    assert!(metric(&page, "walsync_database_uploaded_bytes_total", lbl).unwrap() > bytes0);
    assert!(metric(&page, "walsync_database_uploaded_objects_total", lbl).unwrap() > objects0);
    let puts1 = metric(&page, "walsync_storage_requests_total", put).unwrap();
    assert!(puts1 > puts0, "{page}");
    // One PUT per acknowledged segment (no retries against a healthy server).
    assert_eq!(puts1 - puts0, txid1 - txid0, "{page}");
    assert!(metric(&page, "walsync_database_segments_total", lbl).unwrap() >= txid1 - txid0);

    // Not found and other paths answer 404; the endpoint is plain text.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent.get(&format!("http://{addr}/nope")).call().unwrap();
    assert_eq!(r.status().as_u16(), 404);

    assert!(d.sigterm(Duration::from_secs(20)).success());
}

#[test]
fn metrics_addr_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let conn = create_db(&db);
    commit(&conn, 1);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let store = dir.path().join("store");
    let args = vec![
        db.display().to_string(),
        "--bucket".into(),
        format!("file://{}", store.display()),
        "--metrics-addr".into(),
        addr.clone(),
    ];
    let log = log_path("metrics-in-use");
    let mut p = Proc::start(BIN, &args, &[], &log);
    let status = p.wait(Duration::from_secs(20));
    assert!(!status.success());
    let text = p.log_text();
    let line = text
        .lines()
        .find(|l| l.starts_with("walsync: error:"))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    assert!(
        line.contains(&format!("--metrics-addr {addr}: cannot listen")),
        "{line}"
    );

    // A malformed address is refused before anything starts.
    let args = vec![
        db.display().to_string(),
        "--bucket".into(),
        format!("file://{}", store.display()),
        "--metrics-addr".into(),
        "localhost".into(),
    ];
    let mut p = Proc::start(BIN, &args, &[], &log_path("metrics-bad-addr"));
    assert!(!p.wait(Duration::from_secs(20)).success());
    assert!(
        p.log_text()
            .contains("walsync: error: --metrics-addr \"localhost\""),
        "{}",
        p.log_text()
    );
}
