//! Review of idle-database parking (`src/capture/park.rs`): a failing test
//! that shows a bug found by the review.
//!
//! While walsync's files of an idle database are closed, the application
//! can do what walsync's open connection used to forbid, here leave WAL
//! mode. The reopening then fails on every pass; the failed pass must be
//! retried with the loop's backoff, not at once: `Capture::run` skips the
//! backoff (`if self.parked.is_some() { continue; }`) because a failed
//! `unpark` leaves `parked` set, so the daemon spins at 100% CPU and logs
//! thousands of errors a second, and, as that loop never looks at its
//! channels again, SIGTERM does not stop it.
//!
//! Run: `out=$(scripts/s3-server.sh start) && eval "$out"` then
//! `cargo test --test park_review`. Without the S3 environment the test
//! skips, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::time::Duration;

use common::daemon::{commit, create_db, Env};
use common::process::{wait_for, Signal};

#[test]
fn failed_unpark_is_retried_with_backoff() {
    let Some(env) = Env::new("park_failed_unpark") else {
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
    // Parked: nothing holds the database open but the application, which
    // may now leave WAL mode (with walsync's connection open it could not).
    app.execute_batch("PRAGMA journal_mode=DELETE")
        .expect("journal_mode=DELETE while walsync's files are closed");
    commit(&app, 1);
    std::thread::sleep(Duration::from_secs(3));
    let errors = env.log_text().matches("not in WAL mode").count();
    daemon.signal(Signal::TERM);
    let stopped = wait_for(Duration::from_secs(20), || daemon.exited().is_some());
    // With the backoff (0.5 s, 1 s, 2 s, ...) a handful; without it,
    // thousands.
    assert!(
        errors <= 10 && stopped,
        "the failed reopening was retried {errors} times in 3 s (no backoff); \
         stopped within 20 s of SIGTERM: {stopped}"
    );
}
