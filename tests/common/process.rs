//! The one process harness of the integration tests: every program a test
//! runs (the walsync binaries, Litestream, moto, the S3 proxy, `python3`,
//! `gcc`, `setpriv`, `mount`, …) is started here, and nowhere else.
//!
//! - [`Cmd`]: what to run, as data (program, arguments, environment, working
//!   directory, an optional wrapper such as `setpriv … --`), so a daemon can
//!   be started again after it was killed.
//! - [`Cmd::output`]: a one-shot command, run to completion within a time
//!   bound (120 s unless [`Cmd::timeout`] says otherwise) and killed after
//!   it. stdout and stderr are captured through files, so a chatty command
//!   never blocks on a full pipe.
//! - [`Proc`]: a long-running child (a daemon, a server, a writer) whose
//!   stdout and stderr go to a log file: SIGTERM with a bounded wait for the
//!   exit status, SIGKILL, restart, log lines waited for with a bound. It is
//!   SIGKILLed and reaped when dropped (no zombie, no stray daemon), and the
//!   tail of its log is printed when the test is failing at that moment.
//!
//! Signals go through `rustix` (a dependency of the crate), never through a
//! `kill` child process, and only to a child that has not been reaped yet,
//! so a recycled pid is never hit.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// How long a one-shot command may run unless [`Cmd::timeout`] says otherwise.
pub const ONE_SHOT_LIMIT: Duration = Duration::from_secs(120);

/// How many log lines a failing test prints.
const TAIL_LINES: usize = 150;

/// A log file for `test` under `$CARGO_TARGET_TMPDIR/<dir>/`, named
/// `<test>-<pid>.log`, removed if an earlier run left it.
pub fn log_in(dir: &str, test: &str) -> PathBuf {
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&logs).expect("log dir");
    let log = logs.join(format!("{test}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    log
}

/// [`log_in`] the directory of the operations tests (`ops-logs`).
pub fn log_path(test: &str) -> PathBuf {
    log_in("ops-logs", test)
}

/// Poll `cond` every 50 ms until it holds (`true`) or `timeout` passes
/// (`false`).
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

/// Status, stdout and stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run `walsync ARGS` to completion (without `RUST_LOG`, so stderr holds
/// only what a user would see).
pub fn walsync(args: &[&str]) -> Output {
    Cmd::new(env!("CARGO_BIN_EXE_walsync"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
}

/// What to run. Built like [`std::process::Command`]; stdin is always
/// empty (`/dev/null`).
#[derive(Clone, Debug)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    /// `None` removes the variable.
    envs: Vec<(OsString, Option<OsString>)>,
    cwd: Option<PathBuf>,
    /// Runs `wrap[0] wrap[1..] program args` instead (e.g. `setpriv … --`).
    wrap: Vec<OsString>,
    /// A [`Proc`]'s stdout goes here instead of its log.
    stdout: Option<PathBuf>,
    /// [`Cmd::output`]: stdout is a pipe nobody reads (closed at once).
    stdout_closed: bool,
    limit: Duration,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            envs: Vec::new(),
            cwd: None,
            wrap: Vec::new(),
            stdout: None,
            stdout_closed: false,
            limit: ONE_SHOT_LIMIT,
        }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Cmd {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Cmd {
        self.envs
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Every `(key, value)` of `vars`, as [`Cmd::env`].
    pub fn envs<K: AsRef<OsStr>, V: AsRef<OsStr>>(&mut self, vars: &[(K, V)]) -> &mut Cmd {
        for (k, v) in vars {
            self.env(k, v);
        }
        self
    }

    pub fn env_remove(&mut self, key: impl AsRef<OsStr>) -> &mut Cmd {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Cmd {
        self.cwd = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Run the program through `prefix` (`["setpriv", "--reuid=nobody",
    /// …, "--"]`): `prefix… program args…`. The wrapper must exec the
    /// program (same pid), so that signals reach it.
    pub fn wrap<S: AsRef<OsStr>>(&mut self, prefix: &[S]) -> &mut Cmd {
        self.wrap = prefix.iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// A [`Proc`] started from this writes its stdout to `path` (read it
    /// with [`Proc::stdout_text`]) instead of its log.
    pub fn stdout_to(&mut self, path: impl AsRef<Path>) -> &mut Cmd {
        self.stdout = Some(path.as_ref().to_path_buf());
        self
    }

    /// [`Cmd::output`] runs it with stdout a pipe whose reader is closed
    /// (`walsync --help | head -0`): writes fail with a broken pipe.
    pub fn stdout_closed(&mut self) -> &mut Cmd {
        self.stdout_closed = true;
        self
    }

    /// The time bound of [`Cmd::output`].
    pub fn timeout(&mut self, limit: Duration) -> &mut Cmd {
        self.limit = limit;
        self
    }

    /// `program args…` as a shell would show it, for messages.
    pub fn describe(&self) -> String {
        self.wrap
            .iter()
            .chain(std::iter::once(&self.program))
            .chain(&self.args)
            .map(|s| s.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut all = self.wrap.iter().chain(std::iter::once(&self.program));
        let mut cmd = Command::new(all.next().expect("a program"));
        cmd.args(all).args(&self.args).stdin(Stdio::null());
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        cmd
    }

    /// Run to completion within the time bound; panics when it cannot be
    /// started or runs too long (it is killed then).
    pub fn output(&self) -> Output {
        self.try_output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.describe()))
    }

    /// [`Cmd::output`], with a program that cannot be started (not
    /// installed) as an error instead of a panic.
    pub fn try_output(&self) -> std::io::Result<Output> {
        let mut out = tempfile::tempfile()?;
        let mut err = tempfile::tempfile()?;
        let mut cmd = self.command();
        match self.stdout_closed {
            true => cmd.stdout(Stdio::from(rustix::pipe::pipe()?.1)),
            false => cmd.stdout(out.try_clone()?),
        };
        cmd.stderr(err.try_clone()?);
        let mut child = Reaped(Some(cmd.spawn()?));
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = child.get().try_wait()? {
                break s;
            }
            if t0.elapsed() > self.limit {
                drop(child);
                panic!(
                    "{} did not finish within {:?}; stderr:\n{}",
                    self.describe(),
                    self.limit,
                    String::from_utf8_lossy(&read_all(&mut err))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        child.0 = None;
        Ok(Output {
            status,
            stdout: read_all(&mut out),
            stderr: read_all(&mut err),
        })
    }

    /// Start it as a [`Proc`] logging to `log`.
    pub fn spawn(&self, log: &Path) -> Proc {
        let mut p = Proc::new(self, log);
        p.spawn();
        p
    }
}

/// A child killed and reaped when dropped (the one-shot's guard).
struct Reaped(Option<Child>);

impl Reaped {
    fn get(&mut self) -> &mut Child {
        self.0.as_mut().expect("child")
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_all(f: &mut std::fs::File) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = f.rewind();
    let _ = f.read_to_end(&mut buf);
    buf
}

/// A long-running child process with its log file; SIGKILLed and reaped
/// when dropped, its log tail printed if the test is failing.
pub struct Proc {
    cmd: Cmd,
    child: Option<Child>,
    /// stderr, and stdout unless [`Cmd::stdout_to`] sent it elsewhere.
    pub log: PathBuf,
    /// How many times it was started.
    pub starts: u32,
}

impl Proc {
    /// Start `bin args` with `envs` added to the test's environment and
    /// `RUST_LOG=walsync=debug` unless `envs` sets it.
    pub fn start(bin: &str, args: &[String], envs: &[(&str, String)], log: &Path) -> Proc {
        let mut cmd = Cmd::new(bin);
        cmd.args(args).env("RUST_LOG", "walsync=debug").envs(envs);
        cmd.spawn(log)
    }

    /// A process for `cmd` appending to `log` (created if missing, so
    /// several processes can share one), not started yet.
    pub fn new(cmd: &Cmd, log: &Path) -> Proc {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("log {}: {e}", log.display()));
        Proc {
            cmd: cmd.clone(),
            child: None,
            log: log.to_path_buf(),
            starts: 0,
        }
    }

    /// Start it (again); it must not be running. A marker line in the log
    /// counts the starts.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.what());
        self.starts += 1;
        self.note(&format!("start #{}", self.starts));
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log {}: {e}", self.log.display()));
        let stdout = match &self.cmd.stdout {
            Some(path) => std::fs::File::create(path)
                .unwrap_or_else(|e| panic!("stdout {}: {e}", path.display())),
            None => log.try_clone().expect("log fd"),
        };
        let child = self
            .cmd
            .command()
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.cmd.describe()));
        self.child = Some(child);
    }

    /// The program's name, for messages.
    fn what(&self) -> String {
        let p = Path::new(&self.cmd.program);
        p.file_name()
            .unwrap_or(p.as_os_str())
            .to_string_lossy()
            .into()
    }

    /// True between a start and the exit status having been taken.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What it wrote to the file of [`Cmd::stdout_to`].
    pub fn stdout_text(&self) -> String {
        let path = self.cmd.stdout.as_ref().expect("no Cmd::stdout_to");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Print the log's tail to stderr (the test's output).
    pub fn print_tail(&self) {
        eprintln!(
            "==== {}: last lines of {} ====\n{}\n==== end ====",
            self.what(),
            self.log.display(),
            self.log_tail(TAIL_LINES)
        );
    }

    /// A marker line in the log: `==== test: what ====`.
    pub fn note(&self, what: &str) {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "==== test: {what} ====");
        }
    }

    /// If it exited on its own: reap it and return its exit status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// Panic if it exited on its own.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited unexpectedly: {status} (log {})",
                self.what(),
                self.log.display()
            );
        }
    }

    /// Send `sig`, unless it already exited (then nothing is sent: the
    /// status is kept for [`Proc::wait`]).
    pub fn signal(&mut self, sig: Signal) {
        let c = self.child.as_mut().expect("not running");
        if c.try_wait().expect("try_wait").is_none() {
            // Not reaped yet, so the pid is still this child's.
            rustix::process::kill_process(rustix::process::Pid::from_child(c), sig)
                .unwrap_or_else(|e| panic!("kill -{sig:?} {}: {e}", c.id()));
        }
    }

    /// SIGTERM (it must be running), then wait up to `timeout` for the exit
    /// status.
    pub fn sigterm(&mut self, timeout: Duration) -> ExitStatus {
        self.assert_running();
        self.signal(Signal::TERM);
        self.wait(timeout)
    }

    /// SIGKILL (it must be running) and reap it.
    pub fn kill9(&mut self) {
        self.assert_running();
        let mut c = self.child.take().expect("not running");
        c.kill().expect("kill");
        c.wait().expect("wait");
        self.note("SIGKILL");
    }

    /// Wait up to `timeout` for the exit status; after that SIGKILL, reap
    /// and panic.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let t0 = Instant::now();
        let mut c = self.child.take().expect("not running");
        loop {
            if let Some(s) = c.try_wait().expect("try_wait") {
                return s;
            }
            if t0.elapsed() > timeout {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not exit within {timeout:?}", self.what());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first log line matching `pred`, polled every 100 ms up to
    /// `timeout`; panics when it exits without writing one or time runs
    /// out.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl FnMut(&str) -> bool) -> String {
        self.wait_line_with(timeout, pred, || {})
    }

    /// [`Proc::wait_line`], calling `between` after each poll that found
    /// nothing (e.g. a commit that makes the daemon act).
    pub fn wait_line_with(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
        mut between: impl FnMut(),
    ) -> String {
        let t0 = Instant::now();
        loop {
            // Peek only: the status stays for `exited`/`assert_running`.
            let exited = match self.child.as_mut() {
                Some(c) => c.try_wait().expect("try_wait"),
                None => None,
            };
            if let Some(l) = self.log_text().lines().find(|l| pred(l)) {
                return l.to_string();
            }
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status}) before the log line (log {})",
                    self.what(),
                    self.log.display()
                );
            }
            assert!(
                t0.elapsed() < timeout,
                "{}: no matching log line within {timeout:?} (log {})",
                self.what(),
                self.log.display()
            );
            between();
            std::thread::sleep(Duration::from_millis(100));
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
            self.print_tail();
        }
    }
}
