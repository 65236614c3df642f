//! `walsync sync`: wiring the pipeline together for many databases.
//!
//! Why a folder of its own: the per-database protocol ([`crate::capture`]),
//! the uploader pool ([`crate::upload`]) and change notification ([`watch`])
//! are each testable alone; this is the part that owns process-level
//! concerns — glob
//! expansion (a systemd `ExecStart=` line has no shell), name collisions,
//! start-up checks that must fail loudly (credentials, bucket), one thread per
//! database, picking up databases created later, and signals: the first
//! SIGTERM/SIGINT ships everything committed and exits, a second exits at once
//! (with `--exec`, signals go to the child and its exit starts the shutdown).
//!
//! - [`config`]: the `--config` file (databases, overrides, settings).
//! - [`watch`]: one inotify instance routing file changes to databases.
//! - [`metrics`]: database registry, Prometheus endpoint, request log.
//! - [`heartbeat`]: push heartbeats while replication is healthy.
//! - [`status`]: the local socket `walsync status` asks.
//! - `limits`: the open-file limit, raised and checked at start.
//! - [`notify`]: systemd readiness, stopping and watchdog notifications.
//! - [`targets`]: paths and patterns to databases and their names.
//! - [`tree`]: glob patterns over directory trees, and the walk.
//! - `start`: one database's settings, wake-up route and thread.
//! - [`exec`]: `--exec`, the application as a child process.
//! - [`missing`]: `--restore-if-missing`, databases absent at start.

pub mod config;
pub mod exec;
pub mod heartbeat;
mod limits;
mod lot;
pub mod metrics;
pub mod missing;
pub mod notify;
mod start;
pub mod status;
pub mod targets;
pub mod tree;
pub mod tunables;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::capture::DbConfig;
use crate::compact::{Compactor, DbEntry, Policy};
use crate::daemon::config::DbSpec;
use crate::daemon::metrics::Registry;
use crate::error::{Error, Result};
use crate::storage::{CountingStorage, RateLimited, RoutedStorage, Storage};
use crate::upload::Uploader;
pub use targets::{check_names, db_name, expand, Targets};
use targets::{is_pattern, spec_name};
use tree::TreePattern;
use watch::{Discovery, Router};

/// Daemon-wide settings (per-database ones are templated by `db`).
#[derive(Clone, Debug)]
pub struct Options {
    /// Database paths or glob patterns, with per-database overrides.
    pub databases: Vec<DbSpec>,
    /// Template for per-database settings (path and name are replaced).
    pub db: DbConfig,
    /// Uploader threads (`None`: sized by the databases replicated,
    /// [`crate::defaults::uploaders_for`]; the pool grows as they are found).
    pub uploaders: Option<usize>,
    /// Byte budget for queued and in-flight segments.
    pub memory_budget: u64,
    /// How long a clean shutdown may take to ship what is committed.
    pub shutdown_timeout: Duration,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve `walsync status` on a local socket.
    pub status_socket: crate::daemon::status::Setting,
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
    /// `--exec`: the command (as words) to run once replicating.
    pub exec: Option<Vec<String>>,
    /// `--restore-if-missing` / `--require-replica`.
    pub if_missing: missing::IfMissing,
}

/// Bytes of just-stored level-0 objects kept, folded, for the compactor
/// (see [`crate::replica::recent::Recent`]): 30 s of the pages a few hundred
/// busy databases rewrite.
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
/// start-up ([`crate::util::release_free_memory`]; a few ms at 1,000 DBs)...
const RELEASE_MEMORY_EVERY: Duration = Duration::from_secs(60);
/// ... and sooner after databases closed their files for being idle (their
/// SQLite connections are freed then: 1,000 databases parking after
/// start-up left 10 MB of free pages until the next minute's release): at
/// most this often, after this many closes.
const RELEASE_MEMORY_AFTER_CLOSES: (Duration, u64) = (Duration::from_secs(15), 16);

/// A started database. Stopped ([`Running::stop`]) and waited for before
/// it is dropped: a database parked without a thread lives in its doorbell
/// (see [`lot`]) until rung, and dropping its `Running` without a ring would
/// leave it there — its lock held, its uploads' channel open.
struct Running {
    name: String,
    /// The path as configured or found (the map's key is the real file).
    path: PathBuf,
    /// The database's result when it ends.
    done: Receiver<Result<()>>,
    /// Rung to run it when it sleeps without a thread (see [`lot`]).
    bell: Arc<dyn lot::Bell>,
    /// Dropped to stop this database (its watcher drains and exits).
    stop: Option<Sender<()>>,
}

impl Running {
    /// Stop this database: it ships what is committed and ends.
    fn stop(&mut self) {
        self.stop = None;
        // Sleeping without a thread: wake it to see the closed channel.
        self.bell.ring();
    }
}

/// Wait for every database to end (after [`Running::stop`]); returns how
/// many ended with an error, each logged. Meanwhile, once a second, the
/// doorbells of those still running are rung if due: a parked database
/// whose thread could not be spawned (the thread limit) is tried again,
/// all of them at once rather than one after another.
fn join_all(running: Vec<Running>) -> usize {
    let mut failed = 0;
    let mut left = std::collections::VecDeque::from(running);
    while let Some(r) = left.front() {
        let outcome = match r.done.recv_timeout(Duration::from_secs(1)) {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                Some("watcher thread panicked".to_string())
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                for r in &left {
                    r.bell.ring_if_due(now);
                }
                continue;
            }
        };
        if let Some(msg) = outcome {
            failed += 1;
            log::error!("{}", name_line(&r.name, &msg));
        }
        left.pop_front();
    }
    failed
}

/// How long a database file found by a pattern may be missing before its
/// replication stops (an application replacing the file by delete and
/// create, or by two renames, brings it back within this).
const GONE_GRACE: Duration = Duration::from_secs(2);

/// Run the daemon until a signal (or, with `--exec`, until the child
/// exits); returns the exit status to use (the child's, or 0).
///
/// `default` stores every database; `own[i]`, when set, stores the databases
/// of `opts.databases[i]` instead (a per-database prefix). All of them are
/// reached through one uploader pool and counted per database.
pub fn run(opts: Options, default: Arc<dyn Storage>, own: Vec<Option<OwnStorage>>) -> Result<i32> {
    missing::restore_missing(&opts.databases, opts.if_missing, &default, &own)?;
    let mut files: Vec<(PathBuf, usize)> = Vec::new();
    let mut trees: Vec<Option<Arc<TreePattern>>> = Vec::new();
    // Plain paths absent at start, replicated once created.
    let mut absent: Vec<PathBuf> = Vec::new();
    for i in 0..opts.databases.len() {
        let spec = &opts.databases[i];
        if let Some(exact) = missing::watch_missing(spec, opts.if_missing)? {
            absent.push(PathBuf::from(&spec.pattern));
            trees.push(Some(Arc::new(exact)));
            continue;
        }
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
        trees.push(t.trees.into_iter().next().map(Arc::new));
    }
    let named = files
        .iter()
        .map(|(f, i)| {
            let name = spec_name(&opts.databases[*i], trees[*i].as_deref(), f)?;
            Ok((name, f.as_path()))
        })
        .collect::<Result<Vec<_>>>()?;
    check_names(&named)?;
    if files.is_empty() && trees.iter().all(Option::is_none) {
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
    let slots = limits::raise_fd_limit(files.len(), opts.db.close_idle_after.is_some())?;
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
    let uploaders = opts
        .uploaders
        .unwrap_or_else(|| crate::defaults::uploaders_for(files.len(), opts.max_requests_per_sec));
    log::info!(
        "{uploaders} uploader threads ({} databases found)",
        files.len()
    );
    let uploader = Uploader::start(storage.clone(), uploaders, opts.memory_budget);
    let registry = Arc::new(Registry::new(
        counting,
        uploader.stats(),
        uploader.queue_probe(),
        uploader.budget(),
    ));
    if let Some(addr) = opts.metrics_addr {
        crate::daemon::metrics::serve(addr, registry.clone())?;
    }
    // Held until `run` returns: a clean exit removes the socket file.
    let _status = crate::daemon::status::serve(&opts.status_socket, registry.clone())?;
    if let Some(hb) = &opts.heartbeat {
        crate::daemon::heartbeat::spawn(hb.clone(), registry.clone())?;
    }
    crate::daemon::metrics::spawn_request_log(registry.clone(), Duration::from_secs(60));
    let mut policy = opts.compaction.clone();
    if policy.intervals[0].is_some() {
        // Level 1 merges what the uploaders just stored: keep it folded
        // (bounded) so merging it costs no GET.
        let recent = uploader.recent();
        recent.set_capacity(RECENT_BYTES);
        policy.recent = Some(recent);
    }
    let compactor = Compactor::start(storage.clone(), policy)?;
    let (disc_tx, disc_rx) = crossbeam_channel::unbounded::<Discovery>();
    let router = Router::start(disc_tx)?;
    let signals = signal_channel()?;
    let (finished_tx, finished) = crossbeam_channel::unbounded::<PathBuf>();
    let mut app = exec::App::new(opts.exec.clone());
    let never = crossbeam_channel::never();

    let mut daemon = Daemon {
        opts,
        trees,
        storage,
        routed,
        own,
        registry,
        uploader,
        compactor: compactor.sender(),
        router,
        finished: finished_tx,
        running: HashMap::new(),
        ended: Default::default(),
        names: HashMap::new(),
        failed: 0,
        slots,
    };
    for (f, i) in &files {
        daemon.start_db(f, *i, true);
    }
    // Watch every directory a pattern can match, then search them again:
    // a database created between the first search and its watch is found.
    for tree in daemon.trees.clone().into_iter().flatten() {
        daemon.router.add_tree(tree.clone());
        daemon.search(&tree, tree.root())?;
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
    // Ticking every 50 ms ends when start-up is complete and the `--exec`
    // child (if any) has started.
    let mut settled = false;
    let mut ticker = crossbeam_channel::tick(Duration::from_millis(50));
    // Parked databases' timers (see `Running::bell`).
    let lot_timer = crossbeam_channel::tick(Duration::from_secs(1));
    // After start-up, free memory inside the allocator's arenas goes back to
    // the kernel now and then (crate::util::release_free_memory).
    let mut trim = crossbeam_channel::never();
    // Idle closes counted at the last release, and when it ran.
    let mut trimmed = (0u64, Instant::now());
    // Paths reported removed, each checked once `GONE_GRACE` has passed
    // since its report (deadlines in order).
    let mut gone: std::collections::VecDeque<(PathBuf, Instant)> = Default::default();
    // What ends the loop besides a signal: the `--exec` child's exit, or
    // its failure to start.
    let mut signalled = false;
    let mut exit_code = 0;
    let mut app_error = None;
    loop {
        let gone_timer = gone
            .front()
            .map_or_else(crossbeam_channel::never, |(_, at)| {
                crossbeam_channel::at(*at)
            });
        crossbeam_channel::select! {
            recv(disc_rx) -> d => match d {
                Ok(Discovery::NewDatabase(p)) => daemon.discovered(&p),
                Ok(Discovery::NewDirectory(dir)) => {
                    for tree in daemon.trees.clone().into_iter().flatten() {
                        if tree.could_contain(&dir) {
                            if let Err(e) = daemon.search(&tree, &dir) {
                                log::error!("{e}; new databases there are not replicated");
                            }
                        }
                    }
                }
                Ok(Discovery::Gone(p)) => gone.push_back((p, Instant::now() + GONE_GRACE)),
                Ok(Discovery::Rescan) => {
                    // File events were dropped: search every tree again and
                    // check every database's file.
                    log::warn!("file events were lost (inotify queue overflow): searching again");
                    for tree in daemon.trees.clone().into_iter().flatten() {
                        if let Err(e) = daemon.search(&tree, tree.root()) {
                            log::error!("{e}; new databases there are not replicated");
                        }
                    }
                    let at = Instant::now() + GONE_GRACE;
                    gone.extend(daemon.running_paths().into_iter().map(|p| (p, at)));
                }
                Err(_) => {}
            },
            recv(gone_timer) -> _ => {
                let now = Instant::now();
                let mut due = Vec::new();
                while let Some((p, _)) = gone.front().filter(|(_, at)| *at <= now) {
                    due.push(p.clone());
                    gone.pop_front();
                }
                daemon.stop_removed(&due);
            },
            recv(finished) -> key => if let Ok(key) = key { daemon.finished(&key) },
            recv(lot_timer) -> _ => {
                // Parked databases whose periodic snapshot is due, and
                // threads to spawn again (see `lot`).
                let now = Instant::now();
                for r in daemon.running.values() {
                    r.bell.ring_if_due(now);
                }
            },
            recv(signals) -> sig => {
                signalled = true;
                // With a running `--exec` child, the child decides when to
                // stop; replication goes on until it exits.
                if !app.as_ref().is_some_and(|a| a.forward(sig.unwrap_or(0))) {
                    break;
                }
            },
            recv(app.as_ref().map_or(&never, |a| a.exited())) -> status => {
                let status = status.map_or(1, exec::status_code);
                log::info!("--exec: the child exited with status {status}");
                exit_code = status;
                break;
            },
            recv(trim) -> _ => {
                let closes = daemon.registry.idle_closes();
                let (soonest, many) = RELEASE_MEMORY_AFTER_CLOSES;
                let now = Instant::now();
                // A second of slack: the 5 s ticks drift a little late.
                let since = now.duration_since(trimmed.1) + Duration::from_secs(1);
                // The sum drops when databases stop (freeing memory too).
                if since >= RELEASE_MEMORY_EVERY
                    || (since >= soonest && closes.abs_diff(trimmed.0) >= many)
                {
                    crate::util::release_free_memory();
                    trimmed = (closes, now);
                }
            },
            recv(ticker) -> _ => {
                if !ready && daemon.registry.ready() {
                    ready = true;
                    log::info!("start-up complete");
                    crate::util::release_free_memory();
                    trimmed = (daemon.registry.idle_closes(), Instant::now());
                    trim = crossbeam_channel::tick(Duration::from_secs(5));
                    crate::daemon::notify::ready();
                }
                if let (true, Some(a)) = (ready, app.as_mut()) {
                    if let Err(e) = a.start_when_replicating(&daemon.registry) {
                        app_error = Some(e);
                        break;
                    }
                }
                if ready && !settled && !app.as_ref().is_some_and(exec::App::pending) {
                    settled = true;
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
    // A signal may have ended the loop just after the child exited: its
    // status is still the one to exit with.
    if let Some(status) = app.as_ref().and_then(|a| a.exited().try_recv().ok()) {
        exit_code = exec::status_code(status);
        log::info!("--exec: the child exited with status {exit_code}");
    }
    crate::daemon::notify::stopping();
    log::info!("shutting down: shipping what is committed (a second signal exits at once)");
    // A child that exited on its own leaves walsync unsignalled: the
    // first signal then only says so, the next one exits at once.
    let mut grace = usize::from(!signalled && app_error.is_none());
    let second_signal = std::thread::spawn(move || {
        while signals.recv().is_ok() {
            if grace == 0 {
                eprintln!("walsync: second signal, exiting now");
                std::process::exit(130);
            }
            grace -= 1;
            log::warn!("shipping what the --exec child committed; a second signal exits at once");
        }
    });
    let _ = second_signal;
    // A database created just before the shutdown (by an `--exec` child
    // that then exited) may not be replicated yet: its discovery still
    // queued, or its directory not searched yet. Search every tree once
    // more and start what is found, so its commits ship in the drain like
    // the others'.
    let late = disc_rx.try_iter().filter_map(|d| match d {
        Discovery::NewDatabase(p) => Some(p),
        _ => None,
    });
    let mut late: Vec<PathBuf> = late.chain(absent).collect();
    // Every watcher drains and stops (in parallel with the search below).
    for r in daemon.running.values_mut() {
        r.stop();
    }
    for tree in daemon.trees.iter().flatten() {
        late.extend(tree.walk(tree.root(), &mut |_| Ok(true)).0);
    }
    for p in late {
        daemon.discovered(&p);
    }
    for r in daemon.running.values_mut() {
        r.stop(); // the late ones: one attempt, then drain
    }
    compactor.stop(); // a merge in progress stops between objects
    let failed = daemon.failed + join_all(daemon.running.drain().map(|(_, r)| r).collect());
    // Every drain has ended (shipped, or reported what it could not ship
    // in time): what is still queued is abandoned, not waited for past
    // --shutdown-timeout.
    daemon.uploader.abort();
    daemon.uploader.join();
    if failed > 0 {
        let child = match app.as_ref().is_some_and(|a| !a.pending()) {
            true => format!(" (the --exec child exited with status {exit_code})"),
            false => String::new(),
        };
        return Err(Error::Config(format!(
            "{failed} database(s) did not finish shipping before exit{child}"
        )));
    }
    match app_error {
        Some(e) => Err(e),
        None => Ok(exit_code),
    }
}

/// `msg` as one line naming database `name` (once: errors from a watcher
/// often name it already).
fn name_line(name: &str, msg: &str) -> String {
    match msg
        .strip_prefix(name)
        .is_some_and(|rest| rest.starts_with(':'))
    {
        true => msg.to_string(),
        false => format!("{name}: {msg}"),
    }
}

struct Daemon {
    opts: Options,
    /// Per entry of `opts.databases`: its pattern, if it is one.
    trees: Vec<Option<Arc<TreePattern>>>,
    storage: Arc<dyn Storage>,
    routed: Arc<RoutedStorage>,
    own: Vec<Option<OwnStorage>>,
    registry: Arc<Registry>,
    uploader: Uploader,
    compactor: Sender<DbEntry>,
    router: Router,
    /// Each watcher thread sends its key here when it ends.
    finished: Sender<PathBuf>,
    running: HashMap<PathBuf, Running>,
    /// Databases whose replication ended by itself (failed, fenced):
    /// not restarted by file events.
    ended: std::collections::HashSet<PathBuf>,
    names: HashMap<String, PathBuf>,
    /// Databases whose replication ended with an error before shutdown.
    failed: usize,
    /// Open databases counted against the open-file limit.
    slots: Arc<crate::capture::OpenSlots>,
}

/// A channel that receives the number of each SIGTERM/SIGINT received.
pub(crate) fn signal_channel() -> Result<Receiver<i32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| Error::Config(format!("cannot install signal handlers: {e}")))?;
    let (tx, rx): (Sender<i32>, Receiver<i32>) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name("signals".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            for sig in signals.forever() {
                if tx.send(sig).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the signal thread: {e}")))?;
    Ok(rx)
}
