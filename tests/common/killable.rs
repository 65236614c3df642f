//! The `walsync-sync` daemon (killed and restarted) and the `walsync restore` command as child
//! processes, for the reliability tests (tests/faults.rs, tests/crashloop.rs).
//!
//! Why here: those tests kill and restart the real binary many times and
//! restore through the real command line, so the harness that spawns,
//! SIGKILLs and logs them is shared instead of copied per test file. Every
//! start appends to one log file per test, which is printed (its tail) when
//! the test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The daemon of one test; killed when dropped.
pub struct Daemon {
    bin: PathBuf,
    args: Vec<String>,
    pub log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Daemon {
    /// A daemon for `args` (databases and flags), not started yet; its
    /// stderr goes to `$CARGO_TARGET_TMPDIR/<dir>/<test>-<pid>.log`.
    pub fn new(bin: &str, dir: &str, test: &str, args: Vec<String>) -> Daemon {
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
        std::fs::create_dir_all(&logs).expect("log dir");
        let log = logs.join(format!("{test}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        Daemon {
            bin: PathBuf::from(bin),
            args,
            log,
            child: None,
            starts: 0,
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Start it (it must not be running).
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        self.note(&format!("start #{}", self.starts));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env("RUST_LOG", "walsync=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// A marker line in the log.
    pub fn note(&self, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(f, "==== test: {what} ====");
        }
    }

    /// Fail if it exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait().expect("try_wait") {
                panic!(
                    "the daemon exited unexpectedly: {status} (log {})",
                    self.log.display()
                );
            }
        }
    }

    /// If it exited on its own: reap it and return its exit code.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status.code())
    }

    /// SIGKILL and reap it.
    pub fn kill9(&mut self) {
        self.assert_running();
        let mut c = self.child.take().expect("daemon not running");
        c.kill().expect("kill");
        c.wait().expect("wait");
        self.note("SIGKILL");
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "==== daemon log tail ({}) ====\n{}\n==== end ====",
                self.log.display(),
                self.log_tail(120)
            );
        }
    }
}

/// Where `walsync restore` reads from (through `endpoint`, e.g. the fault
/// proxy).
pub struct RestoreFrom {
    pub bin: String,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
}

impl RestoreFrom {
    /// `walsync restore <db> -o <out> --bucket s3://<bucket>/<prefix>
    /// --endpoint <endpoint> --path-style [extra]`, with a time bound.
    pub fn run(&self, db: &str, out: &Path, extra: &[&str]) -> Output {
        let child = Command::new(&self.bin)
            .args(["restore", db, "-o"])
            .arg(out)
            .args([
                "--bucket",
                &format!("s3://{}/{}", self.bucket, self.prefix),
                "--endpoint",
                &self.endpoint,
                "--path-style",
            ])
            .args(extra)
            .env("RUST_LOG", "walsync=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} restore: {e}", self.bin));
        wait_bounded(
            child,
            std::time::Duration::from_secs(120),
            "walsync restore",
        )
    }

    /// [`RestoreFrom::run`], which must succeed; the restored database, open.
    pub fn open(&self, db: &str, out: &Path, extra: &[&str]) -> rusqlite::Connection {
        let r = self.run(db, out, extra);
        assert!(
            r.status.success(),
            "{db}: walsync restore {} failed: {}",
            extra.join(" "),
            String::from_utf8_lossy(&r.stderr)
        );
        rusqlite::Connection::open(out).unwrap_or_else(|e| panic!("open {}: {e}", out.display()))
    }
}

/// Wait for `child` at most `limit`, killing it (and failing) after that.
pub fn wait_bounded(mut child: Child, limit: std::time::Duration, what: &str) -> Output {
    let t0 = std::time::Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} did not finish within {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
