//! `walsync sync`: wiring the pipeline together for many databases.
//!
//! Why a module of its own: the per-database protocol (`replicate`), the
//! uploader pool (`upload`) and change notification (`watch`) are each
//! testable alone; this is the part that owns process-level concerns — glob
//! expansion (a systemd `ExecStart=` line has no shell), name collisions,
//! start-up checks that must fail loudly (credentials, bucket), one thread per
//! database, picking up databases created later, and signals: the first
//! SIGTERM/SIGINT ships everything committed and exits, a second exits at once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::replicate::{DbConfig, Event, Replica};
use crate::storage::Storage;
use crate::upload::Uploader;
use crate::watch::{self, Discovery, Router};

/// Daemon-wide settings (per-database ones are templated by `db`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Database paths or glob patterns.
    pub databases: Vec<String>,
    /// Template for per-database settings (path and name are replaced).
    pub db: DbConfig,
    /// Uploader threads.
    pub uploaders: usize,
    /// Byte budget for queued and in-flight segments.
    pub memory_budget: u64,
    /// How long a clean shutdown may take to ship what is committed.
    pub shutdown_timeout: Duration,
    /// Writer fencing in the bucket (src/lease.rs); `None` = off.
    pub fencer: Option<Arc<crate::lease::Fencer>>,
}

/// Stack size of a per-database thread (SQLite needs little; keep 1,000
/// threads cheap).
const DB_THREAD_STACK: usize = 512 * 1024;

struct Running {
    name: String,
    handle: JoinHandle<Result<()>>,
}

/// The expanded database list and the directory patterns to keep watching.
#[derive(Debug, Default)]
pub struct Targets {
    /// Database files found now.
    pub files: Vec<PathBuf>,
    /// `(directory, pattern)` pairs for databases created later.
    pub patterns: Vec<(PathBuf, glob::Pattern)>,
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expand the command line's paths and globs. A plain path must exist; a
/// pattern may match nothing yet (its directory is watched for new files).
pub fn expand(args: &[String]) -> Result<Targets> {
    let mut t = Targets::default();
    for arg in args {
        if !is_pattern(arg) {
            let p = PathBuf::from(arg);
            if !p.is_file() {
                return Err(Error::Config(format!("{arg}: no such database file")));
            }
            t.files.push(p);
            continue;
        }
        let pattern = glob::Pattern::new(arg)
            .map_err(|e| Error::Config(format!("{arg}: invalid pattern: {e}")))?;
        let paths =
            glob::glob(arg).map_err(|e| Error::Config(format!("{arg}: invalid pattern: {e}")))?;
        for p in paths {
            let p = p.map_err(|e| {
                let path = e.path().to_path_buf();
                Error::io(path, e.into())
            })?;
            if p.is_file() && watch::is_database_name(&p) {
                t.files.push(p);
            }
        }
        // Keep watching the directory part when it has no wildcard.
        let dir = Path::new(arg)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        if !is_pattern(&dir.to_string_lossy()) {
            if dir.is_dir() {
                t.patterns.push((dir, pattern));
            } else {
                return Err(Error::Config(format!(
                    "{arg}: directory {} does not exist",
                    dir.display()
                )));
            }
        } else {
            log::warn!("{arg}: wildcards in directory names are expanded once at start; new directories are not watched");
        }
    }
    t.files.sort();
    t.files.dedup();
    Ok(t)
}

/// The name of a database in the bucket: its file name.
pub fn db_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::Config(format!("{}: not a file path", path.display())))
}

/// Refuse two databases with one name, naming both paths.
pub fn check_names(files: &[PathBuf]) -> Result<()> {
    let mut seen: HashMap<String, &PathBuf> = HashMap::new();
    for f in files {
        let name = db_name(f)?;
        if let Some(other) = seen.insert(name.clone(), f) {
            return Err(Error::Config(format!(
                "two databases would be stored as {name:?}: {} and {}",
                other.display(),
                f.display()
            )));
        }
    }
    Ok(())
}

/// Run the daemon until a signal; returns the process status.
pub fn run(opts: Options, storage: Arc<dyn Storage>) -> Result<()> {
    let targets = expand(&opts.databases)?;
    check_names(&targets.files)?;
    if targets.files.is_empty() && targets.patterns.is_empty() {
        return Err(Error::Config("no database to replicate".into()));
    }
    storage.check()?;
    if let Some(f) = &opts.fencer {
        f.start(true)?;
    }
    raise_fd_limit(targets.files.len());

    let uploader = Uploader::start(storage.clone(), opts.uploaders, opts.memory_budget);
    let (disc_tx, disc_rx) = crossbeam_channel::unbounded::<Discovery>();
    let router = Router::start(disc_tx)?;
    for (dir, pattern) in &targets.patterns {
        router.add_pattern(dir, pattern.clone())?;
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let signals = signal_channel()?;

    let mut daemon = Daemon {
        opts,
        storage,
        uploader,
        router,
        stop: stop_rx,
        running: HashMap::new(),
        names: HashMap::new(),
    };
    for f in &targets.files {
        daemon.start_db(f);
    }
    log::info!(
        "replicating {} database(s) to {}",
        daemon.running.len(),
        daemon.storage.describe()
    );
    loop {
        crossbeam_channel::select! {
            recv(disc_rx) -> d => if let Ok(Discovery::NewDatabase(p)) = d {
                daemon.start_db(&p);
            },
            recv(signals) -> _ => break,
        }
    }
    log::info!("shutting down: shipping what is committed (a second signal exits at once)");
    drop(stop_tx); // broadcast: every watcher drains and stops
    let watchdog = std::thread::spawn(move || {
        if signals.recv().is_ok() {
            eprintln!("walsync: second signal, exiting now");
            std::process::exit(130);
        }
    });
    let _ = watchdog;
    let mut failed = 0;
    for (_, r) in daemon.running.drain() {
        match r.handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                log::error!("{}: {e}", r.name);
            }
            Err(_) => {
                failed += 1;
                log::error!("{}: watcher thread panicked", r.name);
            }
        }
    }
    daemon.uploader.join();
    if failed > 0 {
        return Err(Error::Config(format!(
            "{failed} database(s) did not finish shipping before exit"
        )));
    }
    Ok(())
}

struct Daemon {
    opts: Options,
    storage: Arc<dyn Storage>,
    uploader: Uploader,
    router: Router,
    stop: Receiver<()>,
    running: HashMap<PathBuf, Running>,
    names: HashMap<String, PathBuf>,
}

impl Daemon {
    fn start_db(&mut self, path: &Path) {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if self.running.contains_key(&key) {
            return;
        }
        let name = match db_name(path) {
            Ok(n) => n,
            Err(e) => {
                log::error!("{e}");
                return;
            }
        };
        if let Some(other) = self.names.get(&name) {
            log::error!(
                "{}: not replicated: another database is already stored as {name:?} ({})",
                path.display(),
                other.display()
            );
            return;
        }
        let mut cfg = self.opts.db.clone();
        cfg.path = path.to_path_buf();
        cfg.name = name.clone();
        let cfg_name = name.clone();
        let (ev_tx, ev_rx) = crossbeam_channel::bounded::<Event>(1);
        if let Err(e) = self.router.add_database(path, ev_tx) {
            log::error!("{}: not replicated: {e}", path.display());
            return;
        }
        let storage = self.storage.clone();
        let segments = self.uploader.sender();
        let budget = self.uploader.budget();
        let stop = self.stop.clone();
        let drain = self.opts.shutdown_timeout;
        let router = self.router.clone();
        let db_path = path.to_path_buf();
        let fencer = self.opts.fencer.clone();
        let thread_name = format!("db-{name}");
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .stack_size(DB_THREAD_STACK)
            .spawn(move || {
                // A database that cannot be opened yet (a new file not yet
                // in WAL mode, an empty file, storage down) is reported once
                // and retried when it changes, or every 30 s; the other
                // databases go on. Giving up for good would leave a database
                // discovered a moment before its `PRAGMA journal_mode=WAL`
                // unreplicated forever.
                let mut reported: Option<String> = None;
                // Held while this thread ships the database: a second
                // process (another daemon, `walsync snapshot`) is refused
                // instead of allocating the same txids (src/lock.rs).
                let mut lock: Option<crate::lock::DbLock> = None;
                let rep = loop {
                    let locked = match lock {
                        Some(_) => Ok(()),
                        None => crate::lock::try_lock(&db_path).map(|l| lock = Some(l)),
                    };
                    // The bucket lease is taken before the resume point is
                    // read: no other writer can ship this name meanwhile.
                    let fenced = match &fencer {
                        Some(f) => locked.and_then(|()| {
                            let local = lock.as_ref().and_then(crate::lease::local_identity);
                            f.acquire(&cfg.name, local.as_deref())
                        }),
                        None => locked,
                    };
                    match fenced.and_then(|()| {
                        Replica::open(
                            cfg.clone(),
                            storage.clone(),
                            segments.clone(),
                            budget.clone(),
                        )
                    }) {
                        Ok(rep) => {
                            if reported.is_some() {
                                log::info!("{}: replicating now", db_path.display());
                            }
                            break rep;
                        }
                        Err(e) => {
                            let msg = e.to_string();
                            if reported.as_deref() == Some(msg.as_str()) {
                                log::debug!("{}: still not replicated: {msg}", db_path.display());
                            } else {
                                log::error!(
                                    "{}: not replicated: {msg} (retrying when the file changes)",
                                    db_path.display()
                                );
                                reported = Some(msg);
                            }
                        }
                    }
                    // At most one attempt a second, then wait for a change.
                    crossbeam_channel::select! {
                        recv(stop) -> _ => return Ok(()),
                        recv(crossbeam_channel::after(Duration::from_secs(1))) -> _ => {}
                    }
                    crossbeam_channel::select! {
                        recv(ev_rx) -> ev => if !matches!(ev, Ok(Event::Wake)) {
                            router.remove_database(&db_path);
                            return Ok(());
                        },
                        recv(stop) -> _ => return Ok(()),
                        recv(crossbeam_channel::after(Duration::from_secs(30))) -> _ => {}
                    }
                };
                let result = rep.run(ev_rx, stop, drain);
                if let (Some(f), Ok(())) = (&fencer, &result) {
                    f.release(&cfg_name);
                }
                drop(lock);
                result
            });
        match spawned {
            Ok(handle) => {
                self.names.insert(name.clone(), path.to_path_buf());
                self.running.insert(key, Running { name, handle });
            }
            Err(e) => log::error!("{}: cannot start a thread: {e}", path.display()),
        }
    }
}

/// Each database holds about five descriptors (SQLite's database, WAL and
/// `-shm`, the WAL map, the wal-index reader); the usual soft limit of 1,024
/// would stop at ~200 databases. Raise the soft limit to the hard limit.
fn raise_fd_limit(databases: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => {
            log::debug!("open-file limit: {n}");
            let need = databases as u64 * 6 + 64;
            if n < need {
                log::warn!(
                    "open-file limit {n} may be too low for {databases} databases (about {need} needed); raise LimitNOFILE"
                );
            }
        }
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// A channel that receives one message per SIGTERM/SIGINT/SIGHUP... (only
/// TERM and INT are handled).
fn signal_channel() -> Result<Receiver<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::Config(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for _ in signals.forever() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the signal thread: {e}")))?;
    Ok(rx)
}
