//! `--exec`: the application as walsync's child process.
//!
//! Why a module of its own: in a container the usual pattern is "replicate
//! around the application": start replication, run the application, and
//! when it stops, ship what it committed and stop with it, with its exit
//! status (Litestream's `replicate -exec`, LiteFS's `exec`). Without this a
//! container needs a shell script juggling two processes and their signals.
//! Everything about the child lives here: splitting the command line as a
//! POSIX shell would (quotes honoured, but no shell runs unless the user
//! writes `sh -c …`), when it may start, forwarding SIGTERM/SIGINT to it,
//! noticing its exit, and turning that into walsync's exit status. The
//! daemon's loop ([`super::run`]) only hooks it in: a select arm for "the
//! child exited", signals forwarded instead of stopping while the child runs,
//! and its clean shutdown path (every watcher drains, the uploaders join)
//! before the child's status is returned.
//!
//! The child inherits stdin, stdout, stderr, the environment (without what
//! walsync added to it, see [`super::tunables`]) and the working directory.
//! It is waited for with `waitid(WNOWAIT)` before it is reaped, so a signal
//! is only ever sent to a pid that is still our child (a zombie at worst),
//! never to a recycled one.

use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use crate::daemon::metrics::Registry;
use crate::error::{Error, Result};

/// How long a database found at start may stay unreplicated (a transient
/// storage error is retried every second) before the child is refused.
const START_GRACE: Duration = Duration::from_secs(5);

/// `--exec`'s value as words, split as a POSIX shell would (quotes and
/// backslashes honoured; no variables, globs or pipes: that takes `sh -c`).
pub fn split(cmd: &str) -> Result<Vec<String>> {
    let words = shlex::split(cmd).ok_or_else(|| {
        Error::Config(format!(
            "--exec {cmd:?}: unbalanced quotes or a trailing backslash"
        ))
    })?;
    if words.is_empty() {
        return Err(Error::Config(
            "--exec is empty: give the command to run, e.g. --exec \"myapp --serve\"".into(),
        ));
    }
    Ok(words)
}

/// The exit status walsync passes on: the child's code, or 128 + the
/// signal's number when a signal killed it (as shells report it).
pub fn status_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// The `--exec` command: waiting to start, running, or gone.
pub struct App {
    argv: Vec<String>,
    /// The child while it has not been reaped (signals go only to it).
    child: Arc<Mutex<Option<Child>>>,
    started: bool,
    /// When start-up completed with a database not replicating yet.
    waiting_since: Option<Instant>,
    exited: Receiver<ExitStatus>,
}

impl App {
    /// `argv` from [`split`]; `None` when there is no `--exec`.
    pub fn new(argv: Option<Vec<String>>) -> Option<App> {
        Some(App {
            argv: argv?,
            child: Arc::new(Mutex::new(None)),
            started: false,
            waiting_since: None,
            exited: crossbeam_channel::never(),
        })
    }

    /// True while the child has not been started.
    pub fn pending(&self) -> bool {
        !self.started
    }

    /// Receives the child's exit status once (never, before it started).
    pub fn exited(&self) -> &Receiver<ExitStatus> {
        &self.exited
    }

    /// Called on every tick after start-up completed: start the child once
    /// every database found at start replicates. A database that still does
    /// not (locked by another walsync, not a database, storage refusing it)
    /// after [`START_GRACE`] is an error naming it, and the child is never
    /// started.
    pub fn start_when_replicating(&mut self, registry: &Registry) -> Result<()> {
        if self.started {
            return Ok(());
        }
        if let Some((name, why)) = registry.start_failure() {
            let since = *self.waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < START_GRACE {
                return Ok(());
            }
            return Err(Error::Config(format!(
                "--exec {:?} not started: {name} is not replicated: {why}",
                self.argv[0]
            )));
        }
        self.start()
    }

    fn start(&mut self) -> Result<()> {
        self.started = true;
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..]);
        super::tunables::scrub_child(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::Config(format!("--exec: cannot start {:?}: {e}", self.argv[0])))?;
        let pid = Pid::from_child(&child);
        let words = self.argv.iter().map(String::as_str);
        log::info!(
            "--exec: started {} (pid {})",
            shlex::try_join(words).unwrap_or_else(|_| self.argv.join(" ")),
            pid.as_raw_nonzero()
        );
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let slot = self.child.clone();
        let waiter = std::thread::Builder::new()
            .name("exec-wait".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                // Wait without reaping: while the slot holds the child, its
                // pid stays ours, so forwarding a signal hits nobody else.
                loop {
                    match rustix::process::waitid(
                        WaitId::Pid(pid),
                        WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
                    ) {
                        Err(rustix::io::Errno::INTR) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            log::warn!("--exec: waitid: {e}; waiting with wait(2)");
                            break;
                        }
                    }
                }
                let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
                let status = match slot.take() {
                    Some(mut child) => child.wait(),
                    None => return,
                };
                drop(slot);
                match status {
                    Ok(status) => {
                        let _ = tx.send(status);
                    }
                    Err(e) => {
                        log::error!("--exec: cannot wait for the child: {e}");
                        let _ = tx.send(ExitStatus::from_raw(1 << 8));
                    }
                }
            });
        if let Err(e) = waiter {
            self.kill();
            return Err(Error::Config(format!(
                "--exec: cannot start the thread waiting for the child: {e}"
            )));
        }
        self.exited = rx;
        Ok(())
    }

    /// Pass `signal` (SIGTERM, SIGINT) on to the child. False when there is
    /// no child (not started yet, or already exited): the caller stops.
    pub fn forward(&self, signal: i32) -> bool {
        let slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let Some(child) = slot.as_ref() else {
            return false;
        };
        let pid = Pid::from_child(child);
        match Signal::from_named_raw(signal) {
            Some(sig) => {
                log::info!(
                    "--exec: passing signal {signal} on to the child (pid {})",
                    pid.as_raw_nonzero()
                );
                if let Err(e) = rustix::process::kill_process(pid, sig) {
                    log::warn!("--exec: cannot signal the child: {e}");
                }
            }
            None => log::warn!("--exec: signal {signal} not passed on"),
        }
        true
    }

    /// SIGKILL a child that must not outlive a failed start-up.
    fn kill(&self) {
        let mut slot = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = slot.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_honours_quotes_without_a_shell() {
        assert_eq!(
            split(r#"myapp --name "a b" 'c d' e\ f $HOME"#).unwrap(),
            ["myapp", "--name", "a b", "c d", "e f", "$HOME"]
        );
        assert_eq!(split("sh -c 'x | y'").unwrap(), ["sh", "-c", "x | y"]);
        let e = split("myapp \"open").unwrap_err().to_string();
        assert!(e.contains("--exec") && e.contains("unbalanced"), "{e}");
        let e = split("  ").unwrap_err().to_string();
        assert!(e.contains("--exec is empty"), "{e}");
    }

    #[test]
    fn status_is_the_code_or_128_plus_the_signal() {
        assert_eq!(status_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(status_code(ExitStatus::from_raw(15)), 143);
    }
}
