//! Running `walsync-sync` / `walsync` as child processes for the operations
//! tests (metrics, heartbeat, config, notify, secrets): spawn with a log
//! file, stop with SIGTERM, wait for conditions, scrape metrics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Path of the `walsync-sync` binary under test (set by each test crate).
pub fn log_path(test: &str) -> PathBuf {
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ops-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join(format!("{test}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    log
}

/// A child process whose stdout and stderr go to one log file; killed when
/// dropped, its log printed if the test is failing.
pub struct Proc {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `bin args` with `envs` added to the test's environment and
    /// `RUST_LOG=walsync=debug` unless `envs` sets it.
    pub fn start(bin: &str, args: &[String], envs: &[(&str, String)], log: &Path) -> Proc {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("RUST_LOG", "walsync=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        Proc {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn note(&self, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "==== test: {what} ====");
        }
    }

    /// Panic if the process exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait().unwrap() {
                panic!("the process exited unexpectedly: {status}");
            }
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        self.assert_running();
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -TERM failed");
        self.wait(timeout)
    }

    /// Wait up to `timeout` for the exit status.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        let mut c = self.child.take().expect("not running");
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if t0.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                panic!("the process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(120);
            eprintln!("==== last lines of {} ====", self.log.display());
            for l in &lines[from..] {
                eprintln!("{l}");
            }
            eprintln!("==== end ====");
        }
    }
}

/// Poll `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A WAL-mode database at `path` with table `t(id INTEGER PRIMARY KEY, v BLOB)`.
pub fn create_db(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    c
}

/// One committed transaction inserting `rows` rows of 100 bytes.
pub fn commit(c: &rusqlite::Connection, rows: usize) {
    let tx = c.unchecked_transaction().unwrap();
    for _ in 0..rows {
        tx.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .unwrap();
    }
    tx.commit().unwrap();
}

/// `GET http://addr/metrics`, or `None` while nothing answers.
pub fn scrape(addr: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(&format!("http://{addr}/metrics")).call().ok()?;
    resp.body_mut().read_to_string().ok()
}

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g.
/// `db="a.db",kind="PUT"`; empty for none) in a Prometheus text page.
pub fn metric(page: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}
