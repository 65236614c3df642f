//! `walsync sync`: wiring the pipeline together for many databases.
//!
//! Why a folder of its own: the per-database protocol ([`crate::capture`]),
//! the uploader pool ([`crate::upload`]) and change notification ([`watch`])
//! are each testable alone; this is the part that owns process-level
//! concerns — glob
//! expansion (a systemd `ExecStart=` line has no shell), name collisions,
//! start-up checks that must fail loudly (credentials, bucket), one thread per
//! database, picking up databases created later, and signals: the first
//! SIGTERM/SIGINT ships everything committed and exits, a second exits at once.
//!
//! - [`config`]: the `--config` file (databases, overrides, settings).
//! - [`watch`]: one inotify instance routing file changes to databases.
//! - [`metrics`]: database registry, Prometheus endpoint, request log.
//! - [`heartbeat`]: push heartbeats while replication is healthy.
//! - `limits`: the open-file limit, raised and checked at start.
//! - [`notify`]: systemd readiness, stopping and watchdog notifications.

pub mod config;
pub mod heartbeat;
mod limits;
pub mod metrics;
pub mod notify;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::capture::{Capture, DbConfig, Event};
use crate::compact::{Compactor, DbEntry, Policy};
use crate::daemon::config::DbSpec;
use crate::daemon::metrics::{DbState, Registry};
use crate::error::{Error, Result};
use crate::storage::{CountingStorage, RateLimited, RoutedStorage, Storage};
use crate::upload::Uploader;
use watch::{Discovery, Router};

/// Daemon-wide settings (per-database ones are templated by `db`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Database paths or glob patterns, with per-database overrides.
    pub databases: Vec<DbSpec>,
    /// Template for per-database settings (path and name are replaced).
    pub db: DbConfig,
    /// Uploader threads.
    pub uploaders: usize,
    /// Byte budget for queued and in-flight segments.
    pub memory_budget: u64,
    /// How long a clean shutdown may take to ship what is committed.
    pub shutdown_timeout: Duration,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Push heartbeats while healthy.
    pub heartbeat: Option<crate::daemon::heartbeat::Config>,
    /// Compaction levels and retention grace (see [`crate::compact`]).
    pub compaction: Policy,
    /// Cap on storage requests per second, shared by all databases (0 = none).
    pub max_requests_per_sec: u32,
    /// Writer fencing in the bucket ([`crate::lease`]); `None` = off.
    pub fencer: Option<Arc<crate::lease::Fencer>>,
    /// Where the fencer's lease objects go, routed by database name like
    /// the data (a database with its own prefix keeps its lease there).
    pub lease_store: Option<Arc<RoutedStorage>>,
}

/// Bytes of just-stored objects kept for the compactor (see
/// [`crate::replica::recent::Recent`]): 30 s of level 0 for a few busy databases.
const RECENT_BYTES: usize = 8 << 20;

/// The storage of databases with a prefix or key of their own.
#[derive(Clone)]
pub struct OwnStorage {
    /// What the pipeline reads and writes (encrypting when keyed).
    pub data: Arc<dyn Storage>,
    /// The same place as is, for lease objects.
    pub raw: Arc<dyn Storage>,
}

/// How often the daemon hands free allocator pages back to the kernel after
/// start-up ([`crate::util::release_free_memory`]; a few ms at 1,000 DBs).
const RELEASE_MEMORY_EVERY: Duration = Duration::from_secs(60);

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

/// Refuse two databases with one name, naming both paths. `files` are the
/// database paths with the name each would be stored under.
pub fn check_names(files: &[(String, &Path)]) -> Result<()> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for (name, f) in files {
        if let Some(other) = seen.insert(name, f) {
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
///
/// `default` stores every database; `own[i]`, when set, stores the databases
/// of `opts.databases[i]` instead (a per-database prefix). All of them are
/// reached through one uploader pool and counted per database.
pub fn run(opts: Options, default: Arc<dyn Storage>, own: Vec<Option<OwnStorage>>) -> Result<()> {
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    let mut patterns: Vec<(PathBuf, glob::Pattern)> = Vec::new();
    for (i, spec) in opts.databases.iter().enumerate() {
        let t = expand(std::slice::from_ref(&spec.pattern))?;
        for f in t.files {
            match files.iter_mut().find(|(g, _)| *g == f) {
                // A plain path names its database more precisely than a
                // pattern that also matches it: its overrides win.
                Some(entry)
                    if !is_pattern(&spec.pattern)
                        && is_pattern(&opts.databases[entry.1].pattern) =>
                {
                    entry.1 = i;
                }
                Some(_) => {}
                None => files.push((f, i)),
            }
        }
        patterns.extend(t.patterns);
    }
    let named = files
        .iter()
        .map(|(f, i)| Ok((spec_name(&opts.databases[*i], f)?, f.as_path())))
        .collect::<Result<Vec<_>>>()?;
    check_names(&named)?;
    if files.is_empty() && patterns.is_empty() {
        return Err(Error::Config("no database to replicate".into()));
    }
    // Snapshots a killed walsync was encoding or uploading are still in the
    // temp directory; nothing of this process is there yet.
    let mut tmp_dirs = vec![&opts.db.tmp_dir, &opts.compaction.tmp_dir];
    tmp_dirs.dedup();
    for dir in tmp_dirs {
        crate::tmpfiles::sweep(dir);
    }
    // A blip at start-up (one 503, one reset) must not stop the daemon; a
    // server that stays unreachable still ends it in one line.
    crate::storage::retry_transient(5, &default.describe(), || default.check())?;
    for s in own.iter().flatten() {
        crate::storage::retry_transient(5, &s.data.describe(), || s.data.check())?;
    }
    limits::raise_fd_limit(files.len())?;
    if let Some(f) = &opts.fencer {
        // The probe writes an object: a blip must not stop the daemon. It
        // needs three requests in a row to succeed (each attempt uses a new
        // key), so under a brownout (a third of requests failing) five
        // attempts failed one restart in eight; the server has just answered
        // the check, so waiting longer (~1 min at most) is cheap.
        crate::storage::retry_transient(20, &default.describe(), || f.start(true).map(|_| ()))?;
    }

    let routed = Arc::new(RoutedStorage::new(default));
    // One request cap for every database, whichever prefix it stores under.
    let limited: Arc<dyn Storage> = match opts.max_requests_per_sec {
        0 => routed.clone(),
        n => Arc::new(RateLimited::new(routed.clone(), n)),
    };
    let counting = Arc::new(CountingStorage::new(limited));
    // Every LTX PUT checks this process's lease on the database's name.
    let storage: Arc<dyn Storage> = match &opts.fencer {
        Some(f) => Arc::new(crate::lease::FencedStorage::new(
            counting.clone(),
            f.clone(),
        )),
        None => counting.clone(),
    };
    let uploader = Uploader::start(storage.clone(), opts.uploaders, opts.memory_budget);
    let registry = Arc::new(Registry::new(
        counting,
        uploader.stats(),
        uploader.queue_probe(),
        uploader.budget(),
    ));
    if let Some(addr) = opts.metrics_addr {
        crate::daemon::metrics::serve(addr, registry.clone())?;
    }
    if let Some(hb) = &opts.heartbeat {
        crate::daemon::heartbeat::spawn(hb.clone(), registry.clone())?;
    }
    crate::daemon::metrics::spawn_request_log(registry.clone(), Duration::from_secs(60));
    let mut policy = opts.compaction.clone();
    if policy.intervals[0].is_some() {
        // Level 1 merges what the uploaders just stored: keep those bodies
        // (bounded) so merging them costs no GET.
        let recent = uploader.recent();
        recent.set_capacity(RECENT_BYTES);
        policy.recent = Some(recent);
    }
    let compactor = Compactor::start(storage.clone(), policy)?;
    let (disc_tx, disc_rx) = crossbeam_channel::unbounded::<Discovery>();
    let router = Router::start(disc_tx)?;
    for (dir, pattern) in &patterns {
        router.add_pattern(dir, pattern.clone())?;
    }
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
    let signals = signal_channel()?;

    let mut daemon = Daemon {
        opts,
        storage,
        routed,
        own,
        registry,
        uploader,
        compactor: compactor.sender(),
        router,
        stop: stop_rx,
        running: HashMap::new(),
        names: HashMap::new(),
    };
    for (f, i) in &files {
        daemon.start_db(f, *i, true);
    }
    log::info!(
        "replicating {} database(s) to {}",
        daemon.running.len(),
        daemon.storage.describe()
    );
    // Readiness is polled until every database found now made its first
    // pass; afterwards the same ticker feeds the systemd watchdog from this
    // loop, so a wedged main loop stops the pings.
    let watchdog = crate::daemon::notify::watchdog_interval();
    let mut ready = false;
    let mut ticker = crossbeam_channel::tick(Duration::from_millis(50));
    // After start-up, free memory inside the allocator's arenas goes back to
    // the kernel now and then (crate::util::release_free_memory).
    let mut trim = crossbeam_channel::never();
    loop {
        crossbeam_channel::select! {
            recv(disc_rx) -> d => if let Ok(Discovery::NewDatabase(p)) = d {
                match daemon.spec_for(&p) {
                    Some(i) => daemon.start_db(&p, i, false),
                    None => log::debug!("{}: matches no configured database", p.display()),
                }
            },
            recv(signals) -> _ => break,
            recv(trim) -> _ => crate::util::release_free_memory(),
            recv(ticker) -> _ => {
                if !ready && daemon.registry.ready() {
                    ready = true;
                    log::info!("start-up complete");
                    crate::util::release_free_memory();
                    trim = crossbeam_channel::tick(RELEASE_MEMORY_EVERY);
                    crate::daemon::notify::ready();
                    ticker = match watchdog {
                        Some(every) => crossbeam_channel::tick(every),
                        None => crossbeam_channel::never(),
                    };
                }
                if ready && watchdog.is_some() {
                    crate::daemon::notify::watchdog();
                }
            },
        }
    }
    crate::daemon::notify::stopping();
    log::info!("shutting down: shipping what is committed (a second signal exits at once)");
    let second_signal = std::thread::spawn(move || {
        if signals.recv().is_ok() {
            eprintln!("walsync: second signal, exiting now");
            std::process::exit(130);
        }
    });
    let _ = second_signal;
    drop(stop_tx); // broadcast: every watcher drains and stops
    compactor.stop(); // a merge in progress stops between objects
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

/// The name of the database at `path` under `spec`: its `name` override, else
/// the file name.
fn spec_name(spec: &DbSpec, path: &Path) -> Result<String> {
    match &spec.name {
        Some(n) => Ok(n.clone()),
        None => db_name(path),
    }
}

struct Daemon {
    opts: Options,
    storage: Arc<dyn Storage>,
    routed: Arc<RoutedStorage>,
    own: Vec<Option<OwnStorage>>,
    registry: Arc<Registry>,
    uploader: Uploader,
    compactor: Sender<DbEntry>,
    router: Router,
    stop: Receiver<()>,
    running: HashMap<PathBuf, Running>,
    names: HashMap<String, PathBuf>,
}

impl Daemon {
    /// The configured database (index into `opts.databases`) a newly
    /// discovered file belongs to: a plain path naming it, else the first
    /// pattern that matches.
    fn spec_for(&self, path: &Path) -> Option<usize> {
        let specs = &self.opts.databases;
        specs
            .iter()
            .position(|s| !is_pattern(&s.pattern) && Path::new(&s.pattern) == path)
            .or_else(|| {
                specs.iter().position(|s| {
                    glob::Pattern::new(&s.pattern).is_ok_and(|p| p.matches_path(path))
                })
            })
    }

    fn start_db(&mut self, path: &Path, spec_index: usize, initial: bool) {
        // The file as SQLite names it: its WAL lives beside this path, and
        // file events name this directory's entries (capture::resolve).
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(other) = self.running.get(&key) {
            if self.names.get(&other.name).is_some_and(|p| p != path) {
                log::warn!(
                    "{}: the same file as the database stored as {:?}: replicated once, under that name",
                    path.display(),
                    other.name
                );
            }
            return;
        }
        let spec = &self.opts.databases[spec_index];
        let name = match spec_name(spec, path) {
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
        // Per-database overrides from the config file. `spec.encryption_key_file`
        // is validated there and carried here for the setting that consumes it.
        let mut cfg = self.opts.db.clone();
        cfg.path = path.to_path_buf();
        cfg.name = name.clone();
        if let Some(interval) = spec.snapshot_interval {
            cfg.snapshot_interval = interval;
        }
        if let Some(retention) = spec.retention {
            cfg.retention = retention;
        }
        if let Some(Some(own)) = self.own.get(spec_index) {
            self.routed.route(&name, own.data.clone());
            if let Some(leases) = &self.opts.lease_store {
                leases.route(&name, own.raw.clone());
            }
        }
        let cfg_name = name.clone();
        let (ev_tx, ev_rx) = crossbeam_channel::bounded::<Event>(1);
        let snooze = crate::capture::Snooze::default();
        if let Err(e) = self
            .router
            .add_database(&key, ev_tx.clone(), snooze.clone())
        {
            log::error!("{}: not replicated: {e}", path.display());
            return;
        }
        let storage = self.storage.clone();
        let segments = self.uploader.sender();
        let budget = self.uploader.budget();
        let stop = self.stop.clone();
        let drain = self.opts.shutdown_timeout;
        let router = self.router.clone();
        let registry = self.registry.clone();
        registry.add(&name, path, initial);
        let reg_name = name.clone();
        let compactor = self.compactor.clone();
        let db_path = path.to_path_buf();
        let watched = key.clone();
        let fencer = self.opts.fencer.clone();
        let thread_name = format!("db-{name}");
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .stack_size(DB_THREAD_STACK)
            .spawn(move || {
                // SAFETY: this thread was spawned with `DB_THREAD_STACK`
                // (`stack_size` above), and this is its first statement.
                unsafe { crate::util::note_thread_stack(DB_THREAD_STACK) };
                // A database that cannot be opened yet (a new file not yet
                // in WAL mode, an empty file, storage down) is reported once
                // and retried when it changes, or every 30 s; the other
                // databases go on. Giving up for good would leave a database
                // discovered a moment before its `PRAGMA journal_mode=WAL`
                // unreplicated forever.
                let mut reported: Option<String> = None;
                // Held while this thread ships the database: a second
                // process (another daemon, `walsync snapshot`) is refused
                // instead of allocating the same txids (src/sqlite/lock.rs).
                let mut lock: Option<crate::sqlite::lock::DbLock> = None;
                let mut rep = loop {
                    let transient;
                    let locked = match lock {
                        Some(_) => Ok(()),
                        None => crate::sqlite::lock::try_lock(&db_path).map(|l| lock = Some(l)),
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
                        Capture::open(
                            cfg.clone(),
                            storage.clone(),
                            segments.clone(),
                            budget.clone(),
                        )
                    }) {
                        Ok(rep) => {
                            registry.set_state(&reg_name, DbState::Running(rep.stats()));
                            if reported.is_some() {
                                log::info!("{}: replicating now", db_path.display());
                            }
                            break rep;
                        }
                        Err(e) => {
                            transient = e.storage_kind().is_some_and(|k| k.is_retryable());
                            let msg = e.to_string();
                            registry.set_state(&reg_name, DbState::Failed(msg.clone()));
                            if reported.as_deref() == Some(msg.as_str()) {
                                log::debug!("{}: still not replicated: {msg}", db_path.display());
                            } else {
                                log::error!(
                                    "{}: not replicated: {msg} ({})",
                                    db_path.display(),
                                    if transient {
                                        "retrying every second"
                                    } else {
                                        "retrying when the file changes"
                                    }
                                );
                                reported = Some(msg);
                            }
                        }
                    }
                    // At most one attempt a second, then (unless the failure
                    // was transient) wait for a change.
                    crossbeam_channel::select! {
                        recv(stop) -> _ => return Ok(()),
                        recv(crossbeam_channel::after(Duration::from_secs(1))) -> _ => {}
                    }
                    if transient {
                        // S3 hiccuped (503, reset, a cut-off answer): the
                        // committed data waits in the WAL; try again now,
                        // not only when the application writes again.
                        continue;
                    }
                    crossbeam_channel::select! {
                        recv(ev_rx) -> ev => if !matches!(ev, Ok(Event::Wake)) {
                            router.remove_database(&watched);
                            registry.remove(&reg_name);
                            return Ok(());
                        },
                        recv(stop) -> _ => return Ok(()),
                        recv(crossbeam_channel::after(Duration::from_secs(30))) -> _ => {}
                    }
                };
                let _ = compactor.send(DbEntry {
                    name: cfg.name.clone(),
                    stats: rep.stats(),
                    level_ends: rep.resumed().map(|r| r.level_ends).unwrap_or_default(),
                    retention: cfg.retention,
                });
                // A replaced or moved file (a retargeted symlink, a swapped
                // directory): hold its lock — refused while another replica
                // ships that file — and watch where SQLite now writes.
                let moved_router = router.clone();
                let moved_tx = ev_tx.clone();
                let moved_snooze = snooze.clone();
                rep.share_snooze(snooze);
                let held = std::sync::Arc::new(std::sync::Mutex::new(lock.take()));
                let moved_lock = held.clone();
                rep.on_moved(move |old, new| {
                    let mut slot = moved_lock.lock().unwrap_or_else(|p| p.into_inner());
                    if !slot.as_ref().is_some_and(|l| l.covers(new)) {
                        let fresh = crate::sqlite::lock::try_lock(new)?;
                        *slot = Some(fresh);
                    }
                    moved_router.remove_database(old);
                    moved_router.add_database(new, moved_tx.clone(), moved_snooze.clone())
                });
                drop(ev_tx);
                let result = rep.run(ev_rx, stop, drain);
                if let (Some(f), Ok(())) = (&fencer, &result) {
                    f.release(&cfg_name);
                }
                drop(held);
                result
            });
        match spawned {
            Ok(handle) => {
                self.names.insert(name.clone(), path.to_path_buf());
                self.running.insert(key, Running { name, handle });
            }
            Err(e) => {
                self.registry.remove(&name);
                log::error!("{}: cannot start a thread: {e}", path.display())
            }
        }
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
