//! Starting one database: its settings, its wake-up route, its thread.
//!
//! Why a file of its own: the thread body is where a database that cannot be
//! replicated yet (not in WAL mode, locked by another process, storage down)
//! waits and retries without holding up the others, and where the lock on
//! the file and the bucket lease are taken before the resume point is read.
//! Once replicating, a database whose files are closed while idle sleeps
//! without a thread ([`DbTask`], `super::lot`) and wakes on a new one.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::capture::{Capture, Event, Outcome, Seat};
use crate::compact::DbEntry;
use crate::daemon::lot::{Doorbell, Wake};
use crate::daemon::metrics::DbState;
use crate::daemon::targets::{is_pattern, spec_name};
use crate::daemon::tree::TreePattern;
use crate::daemon::{Daemon, Running};
use crate::error::{Error, Result};

/// Sends a watcher thread's key to the daemon's loop when dropped: when the
/// thread returns, and when it unwinds.
struct Finished(crossbeam_channel::Sender<PathBuf>, PathBuf);

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.0.send(std::mem::take(&mut self.1));
    }
}

/// A replicating database between two threads (see [`crate::daemon::lot`]):
/// its state and what its thread holds.
struct DbTask {
    rep: Box<Capture>,
    ctx: TaskCtx,
}

struct TaskCtx {
    events: crossbeam_channel::Receiver<Event>,
    stop: crossbeam_channel::Receiver<()>,
    drain: Duration,
    fencer: Option<std::sync::Arc<crate::lease::Fencer>>,
    name: String,
    /// The database's lock (shared with the `on_moved` hook in `rep`).
    held: std::sync::Arc<std::sync::Mutex<Option<crate::sqlite::lock::DbLock>>>,
    bell: Doorbell<Box<DbTask>>,
    /// The result, for the daemon (sent before `finished` is dropped).
    done: crossbeam_channel::Sender<Result<()>>,
    _seat: Seat,
    /// Dropped last: tells the daemon's loop the database ended.
    _finished: Finished,
}

impl DbTask {
    /// Replicate until the database ends, or until it is parked with
    /// nothing to do: then this thread ends and its doorbell keeps it.
    fn run(self) {
        let DbTask { mut rep, mut ctx } = self;
        loop {
            match rep.run_parking(&ctx.events, &ctx.stop, ctx.drain, true) {
                Outcome::Done(result) => return ctx.finish(result),
                Outcome::Parked(r) => {
                    let due = r.wake_at();
                    let deaf = r.waits_for_slot();
                    let bell = ctx.bell.clone();
                    match bell.park(Box::new(DbTask { rep: r, ctx }), due, deaf, |t| t.woken()) {
                        None => return,
                        Some(t) => (rep, ctx) = (t.rep, t.ctx),
                    }
                }
            }
        }
    }

    /// A wake-up is waiting: a file event, or the stop channel closed. (A
    /// closed event channel is none: `rep` keeps a sender of its own, for
    /// `on_moved`, so it closes only when the database ends.)
    fn woken(&self) -> bool {
        // Waiting for an open slot, a file event changes nothing.
        (!self.ctx.events.is_empty() && !self.rep.waits_for_slot())
            || matches!(
                self.ctx.stop.try_recv(),
                Err(crossbeam_channel::TryRecvError::Disconnected)
            )
    }

    /// Spawn a thread for a parked database that was woken.
    fn spawn(task: Box<DbTask>) -> std::result::Result<(), Box<DbTask>> {
        // Handed over through a cell: a thread that cannot be started
        // gives the database back instead of dropping it.
        let name = task.ctx.name.clone();
        let cell = std::sync::Arc::new(std::sync::Mutex::new(Some(task)));
        let theirs = cell.clone();
        let spawned = spawn_db_thread(&name, move || {
            let task = theirs.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = task {
                t.run();
            }
        });
        match spawned {
            Ok(_) => Ok(()),
            Err(_) => match cell.lock().unwrap_or_else(|p| p.into_inner()).take() {
                Some(t) => Err(t),
                None => Ok(()),
            },
        }
    }
}

impl TaskCtx {
    fn finish(self, result: Result<()>) {
        if let (Some(f), Ok(())) = (&self.fencer, &result) {
            f.release(&self.name);
        }
        // The lock is released before the daemon hears of the end (it may
        // start the database again at once).
        drop(self.held);
        let _ = self.done.send(result);
    }
}

/// Whether `path` is an SQLite database in WAL mode (header bytes 18 and 19,
/// the file format write and read versions, are 2).
fn is_wal_database(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| {
            header.starts_with(b"SQLite format 3\0") && header[18] == 2 && header[19] == 2
        })
}

/// Stack size of a per-database thread (SQLite needs little; keep 1,000
/// threads cheap).
const DB_THREAD_STACK: usize = 512 * 1024;

/// Start a database's thread (`db-<name>`, [`DB_THREAD_STACK`]) running `f`.
fn spawn_db_thread(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("db-{name}"))
        .stack_size(DB_THREAD_STACK)
        .spawn(move || {
            // SAFETY: this thread was spawned with `DB_THREAD_STACK`
            // (`stack_size` above), and this is its first statement.
            unsafe { crate::util::note_thread_stack(DB_THREAD_STACK) };
            f()
        })
        .map(|_| ())
}

impl Daemon {
    /// The configured database (index into `opts.databases`) a newly
    /// discovered file belongs to: a plain path naming it, else the first
    /// pattern that matches.
    pub(super) fn spec_for(&self, path: &Path) -> Option<usize> {
        let specs = &self.opts.databases;
        specs
            .iter()
            .position(|s| !is_pattern(&s.pattern) && Path::new(&s.pattern) == path)
            .or_else(|| {
                self.trees
                    .iter()
                    .position(|t| t.as_ref().is_some_and(|t| t.matches(path)))
            })
    }

    pub(super) fn start_db(&mut self, path: &Path, spec_index: usize, initial: bool) {
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
        let name = match spec_name(spec, self.trees[spec_index].as_deref(), path) {
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
        let doorbell: Doorbell<Box<DbTask>> = Doorbell::new(&name, Box::new(DbTask::spawn));
        let bell = doorbell.bell();
        let wake = Wake::new(ev_tx.clone(), bell.clone());
        let slot_bell = bell.clone();
        let (done_tx, done) = crossbeam_channel::bounded::<Result<()>>(1);
        if let Err(e) = self.router.add_database(&key, wake.clone(), snooze.clone()) {
            log::error!("{}: not replicated: {e}", path.display());
            return;
        }
        let storage = self.storage.clone();
        let segments = self.uploader.sender();
        let budget = self.uploader.budget();
        let (stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        let finished = self.finished.clone();
        let drain = self.opts.shutdown_timeout;
        let router = self.router.clone();
        let registry = self.registry.clone();
        registry.add(&name, path, initial);
        let reg_name = name.clone();
        let compactor = self.compactor.clone();
        let db_path = path.to_path_buf();
        let watched = key.clone();
        let fencer = self.opts.fencer.clone();
        let slots = self.slots.clone();
        let spawned = spawn_db_thread(&name, move || {
            // However the database ends, the daemon's loop hears of it
            // (and cleans up, or restarts a database whose file came
            // back); at shutdown nobody listens.
            let finished = Finished(finished, watched.clone());
            // Counted while the database runs: its lock file stays open.
            let seat = slots.seat();
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
            // At shutdown one last attempt is made: a database created
            // a moment ago (by an `--exec` child that then exited) may
            // open now, and what it committed must ship.
            let mut stopping = false;
            // The opening runs in a frame of its own (`util::outlined`):
            // its locals (a `Result<Capture>` of 1.3 KiB, errors,
            // temporaries) would otherwise sit in this frame, which stays
            // live above `run`'s loop for the thread's life, out of reach
            // of `util::release_unused_stack` (3 resident stack pages per
            // sleeping database instead of 5).
            let opened = crate::util::outlined(|| {
                let rep = loop {
                    let transient;
                    // An open slot first (see `capture::park`), before the
                    // lease's requests and the files: with thousands of
                    // databases, the others close their files when idle and
                    // make room, and no more than the slots talk to storage
                    // at once (each request may need a connection).
                    let slot = match stopping {
                        false => slots.take(&stop),
                        true => slots.take(&crossbeam_channel::after(Duration::from_secs(5))),
                    };
                    let Some(slot) = slot else {
                        // As below: an error only where this process
                        // would have shipped something.
                        if stopping && !is_wal_database(&db_path) {
                            return ControlFlow::Break(Ok(()));
                        }
                        if stopping {
                            return ControlFlow::Break(Err(Error::Config(format!(
                                    "{}: no open slot at shutdown (every one was taken): not read; what it committed stays in the WAL and ships on the next start",
                                    cfg.name
                                ))));
                        }
                        stopping = true;
                        continue;
                    };
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
                            // Boxed: its 1.3 KiB is not copied into this frame
                            // and `run`'s, which stay live while it sleeps.
                            let mut rep = Box::new(rep);
                            rep.set_parking(slots.clone(), slot);
                            let ring = slot_bell.clone();
                            rep.set_wakeup(std::sync::Arc::new(move || ring.ring()));
                            registry.set_state(&reg_name, DbState::Running(rep.stats()));
                            if reported.is_some() {
                                log::info!("{}: replicating now", db_path.display());
                            }
                            break rep;
                        }
                        // At shutdown: storage failing for a WAL-mode
                        // database this process would ship may leave
                        // commits unshipped: an error. A file that is gone,
                        // not an SQLite database in WAL mode, shipped by
                        // another process (its lock) or host (its lease),
                        // or that walsync cannot read (a damaged WAL,
                        // reported when it was found, as any bad input)
                        // has nothing this process could ship.
                        Err(e) if stopping => {
                            let elsewhere = lock.is_none() || matches!(e, Error::Fenced(_));
                            let unshipped = e.storage_kind().is_some()
                                && !elsewhere
                                && is_wal_database(&db_path);
                            return ControlFlow::Break(match unshipped {
                                true => Err(e),
                                false => Ok(()),
                            });
                        }
                        Err(e) => {
                            // Retried every second too: a lock held by
                            // another process (or by this one's previous
                            // watcher of a file just moved within a tree,
                            // still finishing) is released without any
                            // event here.
                            transient = e.storage_kind().is_some_and(|k| k.is_retryable())
                                || lock.is_none();
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
                        recv(stop) -> _ => {
                            stopping = true;
                            continue;
                        },
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
                            return ControlFlow::Break(Ok(()));
                        },
                        recv(stop) -> _ => {
                            stopping = true;
                            continue;
                        },
                        recv(crossbeam_channel::after(Duration::from_secs(30))) -> _ => {}
                    }
                };
                ControlFlow::Continue(rep)
            });
            let mut rep = match opened {
                ControlFlow::Continue(rep) => rep,
                ControlFlow::Break(result) => {
                    let _ = done_tx.send(result);
                    return;
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
            let moved_wake = wake;
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
                moved_router.add_database(new, moved_wake.clone(), moved_snooze.clone())
            });
            drop(ev_tx);
            DbTask {
                rep,
                ctx: TaskCtx {
                    events: ev_rx,
                    stop,
                    drain,
                    fencer,
                    name: cfg_name,
                    held,
                    bell: doorbell,
                    done: done_tx,
                    _seat: seat,
                    _finished: finished,
                },
            }
            .run();
        });
        match spawned {
            Ok(_) => {
                self.names.insert(name.clone(), path.to_path_buf());
                let path = path.to_path_buf();
                let stop = Some(stop_tx);
                self.running.insert(
                    key,
                    Running {
                        name,
                        path,
                        done,
                        bell,
                        stop,
                    },
                );
                if self.opts.uploaders.is_none() {
                    let rps = self.opts.max_requests_per_sec;
                    let n = crate::defaults::uploaders_for(self.running.len(), rps);
                    self.uploader.grow_to(n);
                }
            }
            Err(e) => {
                self.registry.remove(&name);
                log::error!("{}: cannot start a thread: {e}", path.display())
            }
        }
    }

    /// A file a pattern matches appeared (created, moved in, closed after a
    /// write, or found by a search): start it unless it runs already (or
    /// ended with an error: see [`Daemon::finished`]) or is gone again.
    pub(super) fn discovered(&mut self, path: &Path) {
        let Ok(key) = path.canonicalize() else {
            return; // gone again: nothing to replicate
        };
        if self.running.contains_key(&key) || self.ended.contains(&key) {
            return;
        }
        match self.spec_for(path) {
            Some(i) => {
                log::info!("{}: new database", path.display());
                self.start_db(path, i, false)
            }
            None => log::debug!("{}: matches no configured database", path.display()),
        }
    }

    /// Watch every directory at or below `from` that can hold databases of
    /// `tree`, and start the databases found there that are not running
    /// yet. A directory that cannot be watched (no permission, gone) is
    /// skipped with a warning; the watch limit is an error, returned after
    /// the databases found so far were started: fatal at start-up, logged
    /// later while the other directories go on.
    pub(super) fn search(&mut self, tree: &TreePattern, from: &Path) -> Result<()> {
        let router = self.router.clone();
        // The root itself must be watched (as it must exist); below it, a
        // directory that cannot be is skipped.
        let root = tree.root().to_path_buf();
        let (files, error) = tree.walk(from, &mut |dir| match dir == root {
            true => router.watch_dir(dir).map(|()| true),
            false => router.watch_tree_dir(dir),
        });
        for f in files {
            self.discovered(&f);
        }
        error.map_or(Ok(()), Err)
    }

    /// The databases found by a pattern whose file is missing now, at or
    /// below one of `paths` (removed files or directories, as the router
    /// named them, or as the database was found), are stopped. Their
    /// replicas stay; a database given as a plain path waits for its file
    /// to come back instead.
    pub(super) fn stop_removed(&mut self, paths: &[PathBuf]) {
        let removed: Vec<PathBuf> = self
            .running
            .iter()
            .filter(|(key, r)| {
                r.stop.is_some()
                    && paths
                        .iter()
                        .any(|p| r.path.starts_with(p) || key.starts_with(p))
                    && !r.path.exists()
                    && self
                        .spec_for(&r.path)
                        .is_some_and(|i| is_pattern(&self.opts.databases[i].pattern))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in removed {
            if let Some(r) = self.running.get_mut(&key) {
                log::info!(
                    "{}: removed; stopping the replication of {:?} (its replica stays)",
                    r.path.display(),
                    r.name
                );
                r.stop();
            }
        }
    }

    /// The files of every running database, for a check after file events
    /// were lost (an inotify queue overflow).
    pub(super) fn running_paths(&self) -> Vec<PathBuf> {
        self.running.values().map(|r| r.path.clone()).collect()
    }

    /// A watcher thread ended before shutdown. Stopped because its file was
    /// removed: forget it, and start it again if its file is back. Ended by
    /// itself (an error, fenced out by another writer): keep it as it was
    /// before threads could end early — its name reserved, its state shown
    /// as failed, not restarted by later file events — so an operator sees
    /// it and a fenced host does not take the lease back.
    pub(super) fn finished(&mut self, key: &Path) {
        let Some(r) = self.running.remove(key) else {
            return;
        };
        let stopped = r.stop.is_none();
        let outcome = match r.done.recv() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("watcher thread panicked".to_string()),
        };
        if let Some(msg) = &outcome {
            self.failed += 1;
            log::error!("{}", super::name_line(&r.name, msg));
        }
        if !stopped {
            let msg = outcome.unwrap_or_else(|| "replication ended".into());
            self.registry.set_state(&r.name, DbState::Failed(msg));
            self.ended.insert(key.to_path_buf());
            return;
        }
        log::info!("{}: replication stopped", r.name);
        self.names.remove(&r.name);
        self.registry.remove(&r.name);
        self.router.remove_database(key);
        if r.path.is_file() {
            self.discovered(&r.path);
        }
    }
}
