//! The process harness of `tests/common/process.rs` itself: what every other
//! test relies on when it starts a program. A child is gone (killed and
//! reaped, no zombie) once its handle is dropped, also when the test
//! panics; SIGTERM gives the exit status; a one-shot command is killed at
//! its time bound and never blocks on a full pipe.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{log_path, Cmd, Proc, Signal};

/// True while `pid` names a process (zombies included).
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn sleeper(test: &str) -> Proc {
    Cmd::new("sleep").arg("60").spawn(&log_path(test))
}

#[test]
fn dropped_child_is_killed_and_reaped() {
    let p = sleeper("harness-drop");
    let pid = p.pid();
    assert!(exists(pid));
    drop(p);
    assert!(!exists(pid), "pid {pid} still exists after the drop");
}

#[test]
fn child_of_a_panicking_test_is_killed() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let p = sleeper("harness-panic");
        tx.send(p.pid()).unwrap();
        panic!("a failing test (expected)");
    })
    .join();
    assert!(r.is_err());
    let pid = rx.recv().unwrap();
    assert!(!exists(pid), "pid {pid} survived the panic");
}

#[test]
fn sigterm_returns_the_status_and_kill9_reaps() {
    let log = log_path("harness-term");
    let mut p = Cmd::new("sh")
        .args([
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .spawn(&log);
    p.wait_line(Duration::from_secs(10), |l| l == "ready");
    let status = p.sigterm(Duration::from_secs(10));
    assert_eq!(status.code(), Some(7));
    assert!(p.log_text().contains("got TERM"), "{}", p.log_text());
    assert!(!p.running());

    // Restarted from the same description, then SIGKILLed.
    p.spawn();
    let pid = p.pid();
    p.kill9();
    assert!(!exists(pid));
    assert_eq!(p.starts, 2);
    assert!(p.log_text().contains("==== test: SIGKILL ===="));
}

#[test]
fn signal_to_an_exited_child_is_not_sent() {
    let mut p = Cmd::new("true").spawn(&log_path("harness-exited"));
    let t0 = Instant::now();
    while p.exited().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    p.spawn();
    std::thread::sleep(Duration::from_millis(200));
    // Exited but not reaped: the status stays for wait.
    p.signal(Signal::TERM);
    assert!(p.wait(Duration::from_secs(10)).success());
}

#[test]
fn wait_line_fails_when_the_child_exits_without_the_line() {
    let mut p = Cmd::new("sh")
        .args(["-c", "echo something else"])
        .spawn(&log_path("harness-noline"));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        p.wait_line(Duration::from_secs(30), |l| l.contains("never printed"))
    }));
    let msg = r.unwrap_err();
    let msg = msg.downcast_ref::<String>().unwrap();
    assert!(msg.contains("exited"), "{msg}");
}

#[test]
fn one_shot_output_is_bounded_and_never_blocks_on_a_pipe() {
    // Far more than a pipe holds, on both streams.
    let o = Cmd::new("sh")
        .args([
            "-c",
            "head -c 1000000 /dev/zero; head -c 300000 /dev/zero >&2; exit 3",
        ])
        .output();
    assert_eq!(o.status.code(), Some(3));
    assert_eq!((o.stdout.len(), o.stderr.len()), (1_000_000, 300_000));

    let t0 = Instant::now();
    let r = std::panic::catch_unwind(|| {
        Cmd::new("sleep")
            .arg("30")
            .timeout(Duration::from_millis(300))
            .output()
    });
    assert!(r.is_err(), "a command over its bound must fail the test");
    assert!(t0.elapsed() < Duration::from_secs(10));

    assert!(Cmd::new("/nonexistent/program").try_output().is_err());
}

#[test]
fn environment_directory_and_wrapper() {
    let dir = tempfile::tempdir().unwrap();
    let o = Cmd::new("sh")
        .args(["-c", "echo \"$HARNESS_A|${HOME-unset}|$(pwd)\""])
        .env("HARNESS_A", "a")
        .env_remove("HOME")
        .current_dir(dir.path())
        .wrap(&["env", "--"])
        .output();
    let out = String::from_utf8_lossy(&o.stdout);
    let cwd = dir.path().canonicalize().unwrap();
    assert_eq!(out.trim(), format!("a|unset|{}", cwd.display()));
}

#[test]
fn stdout_to_a_file_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Cmd::new("sh")
        .args(["-c", "echo out; echo err >&2"])
        .stdout_to(dir.path().join("out"))
        .spawn(&dir.path().join("log"));
    assert!(p.wait(Duration::from_secs(10)).success());
    assert_eq!(p.stdout_text(), "out\n");
    assert!(p.log_text().ends_with("err\n"), "{}", p.log_text());
}
