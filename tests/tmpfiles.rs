//! A daemon started after a SIGKILL removes the snapshot temp files the
//! killed process left in its temp directory, and only those: a file whose
//! pid is a live process (here: this test) stays.

mod common;

use std::time::Duration;

use common::daemon::{commit, create_db};
use common::process::{log_path, wait_for, Cmd, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");

#[test]
fn start_up_sweeps_temp_files_of_dead_processes_only() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // A pid that named a process a moment ago and names none now.
    let mut gone = Cmd::new("true").spawn(&log_path("tmpfiles-true"));
    let dead_pid = gone.pid();
    assert!(gone.wait(Duration::from_secs(20)).success());
    let dead = tmp.join(format!(".walsync-{dead_pid}-Ab12Cd.ltx.tmp"));
    let live = tmp.join(format!(".walsync-{}-Ef34Gh.ltx.tmp", std::process::id()));
    let other = tmp.join("unrelated.ltx.tmp");
    for f in [&dead, &live, &other] {
        std::fs::write(f, vec![7u8; 4096]).unwrap();
    }

    let db = dir.path().join("a.db");
    let conn = create_db(&db);
    commit(&conn, 1);
    let store = dir.path().join("store");
    let args = vec![
        db.display().to_string(),
        "--bucket".into(),
        format!("file://{}", store.display()),
    ];
    let mut p = Proc::start(
        BIN,
        &args,
        &[("TMPDIR", tmp.display().to_string())],
        &log_path("tmpfiles-sweep"),
    );
    assert!(
        wait_for(Duration::from_secs(20), || p
            .log_text()
            .contains("start-up complete")),
        "daemon did not start"
    );
    assert!(!dead.exists(), "leftover of a dead process kept");
    assert!(live.exists(), "file of a live process removed");
    assert!(other.exists(), "a file walsync did not name removed");
    let log = p.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("temporary file(s)"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(lines[0].contains("removed 1 temporary file(s)"), "{log}");
    assert!(p.sigterm(Duration::from_secs(20)).success());
}
