//! systemd notifications: the test plays systemd — it binds the
//! `$NOTIFY_SOCKET` datagram socket, sets `$WATCHDOG_USEC`/`$WATCHDOG_PID`,
//! runs `walsync-sync` and checks `READY=1` (after start-up, even when one
//! database cannot be opened), `WATCHDOG=1` pings, and `STOPPING=1` on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::daemon::{commit, create_db};
use common::process::{log_path, wait_for, Proc};

const BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");

fn recv_all(sock: &UnixDatagram, into: &mut Vec<(Instant, String)>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in text.lines() {
            into.push((Instant::now(), line.to_string()));
        }
    }
}

#[test]
fn ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    let conn = create_db(&good);
    commit(&conn, 3);
    // A database still in rollback-journal mode cannot be replicated: it is
    // reported, and must not hold readiness back forever.
    let bad = dir.path().join("bad.db");
    rusqlite::Connection::open(&bad)
        .unwrap()
        .execute_batch("CREATE TABLE t(x);")
        .unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let store = dir.path().join("store");

    // `exec` keeps the shell's pid, so $WATCHDOG_PID names the daemon.
    let script = format!(
        "WATCHDOG_PID=$$ exec '{BIN}' '{}' '{}' --bucket 'file://{}'",
        good.display(),
        bad.display(),
        store.display()
    );
    let mut d = Proc::start(
        "/bin/sh",
        &["-c".into(), script],
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "400000".into()),
        ],
        &log_path("notify"),
    );
    let mut got: Vec<(Instant, String)> = Vec::new();
    let has = |got: &[(Instant, String)], what: &str| got.iter().filter(|(_, m)| m == what).count();
    assert!(
        wait_for(Duration::from_secs(20), || {
            recv_all(&sock, &mut got);
            has(&got, "READY=1") == 1 && has(&got, "WATCHDOG=1") >= 3
        }),
        "expected READY=1 then watchdog pings, got {got:?}"
    );
    assert_eq!(got[0].1, "READY=1", "{got:?}");
    // The good database made its first pass (its snapshot exists or is on
    // its way); the bad one was reported.
    assert!(wait_for(Duration::from_secs(10), || store
        .join("good.db/0009")
        .is_dir()));
    assert!(
        d.log_text().contains("bad.db: not replicated"),
        "{}",
        d.log_text()
    );
    // Pings come about every WATCHDOG_USEC/2 = 200 ms.
    let pings: Vec<Instant> = got
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap < Duration::from_millis(390),
            "watchdog pings {gap:?} apart"
        );
    }

    assert!(d.sigterm(Duration::from_secs(20)).success());
    recv_all(&sock, &mut got);
    assert_eq!(has(&got, "STOPPING=1"), 1, "{got:?}");
    assert_eq!(got.last().unwrap().1, "STOPPING=1", "{got:?}");
}

#[test]
fn no_notify_socket_no_messages_needed() {
    // Without $NOTIFY_SOCKET the daemon runs as before (Type=simple, a shell).
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("plain.db");
    let conn = create_db(&db);
    commit(&conn, 1);
    let store = dir.path().join("store");
    let args = vec![
        db.display().to_string(),
        "--bucket".into(),
        format!("file://{}", store.display()),
    ];
    let mut d = Proc::start(BIN, &args, &[], &log_path("notify-none"));
    assert!(wait_for(Duration::from_secs(20), || d
        .log_text()
        .contains("start-up complete")));
    assert!(d.sigterm(Duration::from_secs(20)).success());
    assert!(!d.log_text().contains("notified systemd"));
}
