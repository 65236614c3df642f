//! Idle databases (`src/capture/park.rs`): what the application can and
//! cannot do while walsync has their files closed, and a reopening that
//! fails.
//!
//! - While parked, walsync holds SQLite's SHARED lock through its kept
//!   descriptor of the database (`src/sqlite/hold.rs`), as its open
//!   connection did: the application cannot leave WAL mode (found by the
//!   review of the first version, where it could).
//! - A reopening that fails at once on every pass (here the WAL's name
//!   taken by a directory) is retried with the loop's backoff, and SIGTERM
//!   still stops the daemon (the first version retried in a tight loop,
//!   100% CPU, thousands of error lines a second, and ignored SIGTERM).
//!
//! Run: `out=$(scripts/s3-server.sh start) && eval "$out"` then
//! `cargo test --test park_reopen`. Without the S3 environment the test
//! skips, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::time::Duration;

use common::daemon::{commit, create_db, Env};
use common::process::{wait_for, Signal};

#[test]
fn parked_database_stays_in_wal_mode_and_a_failed_reopening_backs_off() {
    let Some(env) = Env::new("park_reopen") else {
        return;
    };
    let path = env.path("app.db");
    let app = create_db(&path);
    commit(&app, 1);
    let db = path.display().to_string();
    let mut daemon = env.daemon(&[db], &["--close-idle-after", "1s"]);
    daemon.wait_line(Duration::from_secs(60), |l| {
        l.contains("app.db: idle: files closed")
    });
    // Parked: the SHARED lock keeps the journal mode as it is.
    let err = app
        .execute_batch("PRAGMA journal_mode=DELETE")
        .expect_err("journal_mode=DELETE must be refused while walsync holds the database");
    assert!(err.to_string().contains("locked"), "{err}");
    // The application goes away (its close cannot checkpoint: the lock),
    // and the WAL's name is taken by a directory: every reopening fails at
    // once.
    drop(app);
    let wal = env.path("app.db-wal");
    std::fs::rename(&wal, env.path("app.db-wal.aside")).expect("move the WAL aside");
    std::fs::create_dir(&wal).expect("a directory in the WAL's place");
    let failures = |text: &str| {
        text.lines()
            .filter(|l| l.contains("app.db") && l.contains("ERROR") && l.contains("retrying"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(20), || failures(&env.log_text()) >= 1),
        "the reopening did not fail: {}",
        env.log_text()
    );
    std::thread::sleep(Duration::from_secs(3));
    let errors = failures(&env.log_text());
    daemon.signal(Signal::TERM);
    let stopped = wait_for(Duration::from_secs(20), || daemon.exited().is_some());
    // With the backoff (0.5 s, 1 s, 2 s, ...) a handful in 3 s; without
    // it, thousands.
    assert!(
        errors <= 10 && stopped,
        "the failed reopening was retried {errors} times in ~3 s (no backoff?); \
         stopped within 20 s of SIGTERM: {stopped}"
    );
}
