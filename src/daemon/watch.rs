//! File-change notification for every database, from one inotify instance.
//!
//! Why one instance: Linux allows only 128 inotify instances per user by
//! default, and walsync must run 1,000 databases without raising sysctls. One
//! instance watches each *directory* that holds a database (watch count =
//! directories, not files), and one thread reads its events and routes them:
//! a change to `<db>` or `<db>-wal` wakes that database's watcher thread; a
//! new file matching a watched glob pattern is reported so the daemon can
//! start replicating it, a new directory that can hold such files so the
//! daemon can watch it too ([`super::tree`]), and a database file removed or
//! moved away so the daemon can stop replicating it. No polling: an idle
//! database costs no wake-up.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use super::lot::Wake;
use super::tree::{child, is_database_name, TreePattern};
use crate::capture::Snooze;
use crate::error::{Error, Result};

/// What the router sends to the daemon besides per-database wake-ups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A file matching a watched pattern appeared.
    NewDatabase(PathBuf),
    /// A directory that can hold matching files appeared (created or moved
    /// in): the daemon watches and searches it.
    NewDirectory(PathBuf),
    /// A database file, or a directory with databases below it, was removed
    /// or moved away.
    Gone(PathBuf),
    /// Events were lost (the kernel's queue overflowed): search again.
    Rescan,
}

#[derive(Default)]
struct Routes {
    /// Every path a watched directory was registered under: one inotify
    /// watch per inode, so a directory and a symlink to it share one.
    dirs: HashMap<WatchDescriptor, Vec<PathBuf>>,
    /// Per watched name: the database's wake-up channel, and for its WAL
    /// the watcher's [`Snooze`].
    dbs: HashMap<(PathBuf, OsString), (Wake, Option<Snooze>)>,
    trees: Vec<Arc<TreePattern>>,
}

/// Shared handle: register databases and patterns from any thread.
#[derive(Clone)]
pub struct Router {
    watches: Arc<Mutex<Watches>>,
    routes: Arc<Mutex<Routes>>,
}

const MASK: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CREATE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::DELETE_SELF);

impl Router {
    /// Create the inotify instance and start the routing thread; new files
    /// matching a registered pattern are reported on `discoveries`.
    pub fn start(discoveries: Sender<Discovery>) -> Result<Router> {
        let inotify = Inotify::init().map_err(|e| {
            Error::Config(format!(
                "cannot create an inotify instance: {e} (fs.inotify.max_user_instances reached? walsync needs one; raise it with sysctl fs.inotify.max_user_instances)"
            ))
        })?;
        let router = Router {
            watches: Arc::new(Mutex::new(inotify.watches())),
            routes: Arc::new(Mutex::new(Routes::default())),
        };
        let routes = router.routes.clone();
        std::thread::Builder::new()
            .name("inotify".into())
            .stack_size(256 * 1024)
            .spawn(move || route(inotify, &routes, &discoveries))
            .map_err(|e| Error::Config(format!("cannot start the inotify thread: {e}")))?;
        Ok(router)
    }

    /// Watch a directory a pattern can match, before it is searched:
    /// `Ok(false)` (logged) when it cannot be watched but others can — gone
    /// meanwhile, no permission (a root-only `lost+found` in a tenant
    /// volume) — so it is skipped; an error only for the watch limit,
    /// which no other directory would escape.
    pub fn watch_tree_dir(&self, dir: &Path) -> Result<bool> {
        match self.try_watch(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                Err(watch_error(dir, e))
            }
            Err(e) => {
                log::warn!("{}; not searched for databases", watch_error(dir, e));
                Ok(false)
            }
        }
    }

    /// Watch `dir` (once per inode; a second path to it is an alias).
    pub fn watch_dir(&self, dir: &Path) -> Result<()> {
        self.try_watch(dir).map_err(|e| watch_error(dir, e))
    }

    fn try_watch(&self, dir: &Path) -> std::io::Result<()> {
        let wd = self
            .watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(dir, MASK)?;
        let mut r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let aliases = r.dirs.entry(wd).or_default();
        if !aliases.iter().any(|d| d == dir) {
            aliases.push(dir.to_path_buf());
        }
        Ok(())
    }

    /// Wake `events` whenever `db` or its WAL changes. `db` must be the
    /// resolved path (no symlink): SQLite keeps the WAL beside the real file,
    /// and the events name the real directory's entries.
    pub fn add_database(&self, db: &Path, events: Wake, snooze: Snooze) -> Result<()> {
        let (dir, name) = split(db)?;
        self.watch_dir(&dir)?;
        let mut wal = name.clone();
        wal.push("-wal");
        let mut r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        r.dbs.insert((dir.clone(), name), (events.clone(), None));
        r.dbs.insert((dir, wal), (events, Some(snooze)));
        Ok(())
    }

    /// Stop routing events of `db`.
    pub fn remove_database(&self, db: &Path) {
        if let Ok((dir, name)) = split(db) {
            let mut wal = name.clone();
            wal.push("-wal");
            let mut r = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            r.dbs.remove(&(dir.clone(), name));
            r.dbs.remove(&(dir, wal));
        }
    }

    /// Report new files matching `tree`, and new directories that can hold
    /// them, in every watched directory (the caller watches the directories
    /// [`TreePattern::walk`] visits).
    pub fn add_tree(&self, tree: Arc<TreePattern>) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trees
            .push(tree);
    }
}

/// An `inotify_add_watch` failure as one line naming the directory, and
/// for the watch limit the sysctl that raises it.
fn watch_error(dir: &Path, e: std::io::Error) -> Error {
    // ENOSPC from inotify_add_watch: the per-user watch limit.
    let why = if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) {
        format!(
            "cannot watch directory: fs.inotify.max_user_watches ({}) reached; raise it (sysctl fs.inotify.max_user_watches)",
            inotify_limit("max_user_watches").map_or_else(|| "?".into(), |n| n.to_string())
        )
    } else {
        format!("cannot watch directory: {e}")
    };
    Error::io(dir, std::io::Error::new(e.kind(), why))
}

fn split(db: &Path) -> Result<(PathBuf, OsString)> {
    match (db.parent(), db.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            };
            Ok((dir, name.to_os_string()))
        }
        _ => Err(Error::Config(format!("{}: not a file path", db.display()))),
    }
}

/// How long the router waits before reading events again after a batch that
/// only reached snoozing watchers (see [`route`]).
/// 10 databases × 10 commits/s: 186 → 62 router wake-ups per second.
const ROUTER_NAP: Duration = Duration::from_millis(20);
/// The longest nap while every database is snoozing (see [`nap_length`]):
/// the default put interval, so a busy database's commits cost the router
/// about one wake-up per upload, not one per commit.
const LONG_NAP: Duration = Duration::from_secs(1);
/// No nap after a batch of this many events or more (a 64 KiB read holds
/// at least 240 events, even of the longest names).
const NAP_MAX_BATCH: usize = 128;
/// No nap while the kernel's event queue could not hold this many events
/// per watched name: a burst where every database commits at once during
/// a nap must not overflow it (an overflow loses nothing, but wakes every
/// database and searches every tree again).
const NAP_EVENTS_PER_NAME: usize = 4;

/// One of the kernel's inotify limits (`fs.inotify.<name>`).
fn inotify_limit(name: &str) -> Option<usize> {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

fn route(mut inotify: Inotify, routes: &Mutex<Routes>, discoveries: &Sender<Discovery>) {
    let mut buf = vec![0u8; 64 * 1024];
    let queue = inotify_limit("max_queued_events").unwrap_or(16_384);
    let mut read_at = Instant::now();
    // Whether the previous batch was followed by a nap (see `nap_length`).
    let mut napped = false;
    // Doorbells of the databases woken by a batch, rung once the routes
    // lock is released (a parked database's ring spawns its thread: see
    // `lot`); kept across batches, not allocated for each.
    let mut bells = Vec::new();
    loop {
        // Wait in poll(2), then read what is there (the descriptor is
        // non-blocking). The crate's blocking read clears and sets
        // O_NONBLOCK around every read: three syscalls more per wake-up,
        // one wake-up per commit under a steady load.
        let ready = {
            let mut fds = [rustix::event::PollFd::new(
                &inotify,
                rustix::event::PollFlags::IN,
            )];
            rustix::event::poll(&mut fds, None)
        };
        match ready {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                log::error!("inotify poll failed: {e}; file changes are no longer seen");
                return;
            }
        }
        // Events read now came since the previous read (for the nap's
        // rate estimate).
        let since = read_at.elapsed();
        read_at = Instant::now();
        let events = match inotify.read_events(&mut buf) {
            Ok(ev) => ev,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                ) =>
            {
                continue
            }
            Err(e) => {
                log::error!("inotify read failed: {e}; file changes are no longer seen");
                return;
            }
        };
        // Whether the batch woke a watcher or reported anything besides
        // writes (no nap then), and reached snoozing watchers (see below).
        let (mut urgent, mut snoozed, mut count) = (false, false, 0usize);
        let mut r = routes.lock().unwrap_or_else(|p| p.into_inner());
        for ev in events {
            count += 1;
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                urgent = true;
                // Events were dropped: wake everyone, each checks for itself;
                // the daemon searches the trees again.
                for (tx, _) in r.dbs.values() {
                    bells.push(tx.send());
                }
                let _ = discoveries.send(Discovery::Rescan);
                continue;
            }
            if ev
                .mask
                .intersects(EventMask::MOVE_SELF | EventMask::DELETE_SELF)
            {
                // The directory itself was renamed or deleted: its events no
                // longer concern the path it was watched under. Wake its
                // databases; each finds its file gone or replaced and watches
                // again where the path now leads.
                urgent = true;
                drop(r);
                let mut w = routes.lock().unwrap_or_else(|p| p.into_inner());
                let gone = w.dirs.remove(&ev.wd).unwrap_or_default();
                for ((dir, _), (tx, _)) in &w.dbs {
                    if gone.contains(dir) {
                        bells.push(tx.send());
                    }
                }
                drop(w);
                r = routes.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let (Some(dirs), Some(name)) = (r.dirs.get(&ev.wd), ev.name) else {
                continue;
            };
            let created = ev
                .mask
                .intersects(EventMask::CREATE | EventMask::MOVED_TO | EventMask::CLOSE_WRITE);
            let removed = ev
                .mask
                .intersects(EventMask::DELETE | EventMask::MOVED_FROM);
            let is_dir = ev.mask.contains(EventMask::ISDIR);
            for dir in dirs {
                let key = (dir.clone(), name.to_os_string());
                // A file closed after it was opened for writing changed
                // nothing by being closed (each write was a MODIFY event):
                // not a wake-up. walsync closing an idle database's files
                // would otherwise wake it at once (`capture::park`).
                let closed = ev.mask.contains(EventMask::CLOSE_WRITE);
                if let Some((tx, snooze)) = r.dbs.get(&key).filter(|_| !closed) {
                    // A full channel already holds a wake-up, and a snoozing
                    // watcher reads the WAL at its timer: nothing is lost.
                    if snooze.as_ref().is_none_or(Snooze::note_event) {
                        bells.push(tx.send());
                        urgent = true;
                    } else {
                        snoozed = true;
                    }
                    // The database file itself (its WAL has a snooze).
                    if removed && snooze.is_none() {
                        urgent = true;
                        let _ = discoveries.send(Discovery::Gone(child(dir, name)));
                    }
                }
                // Writes (the hot path) stop here: no path is built.
                if r.trees.is_empty() || !(created || removed) {
                    continue;
                }
                let path = child(dir, name);
                urgent = true;
                if is_dir && removed {
                    let _ = discoveries.send(Discovery::Gone(path));
                } else if is_dir && created {
                    if r.trees.iter().any(|t| t.could_contain(&path)) {
                        let _ = discoveries.send(Discovery::NewDirectory(path));
                    }
                } else if created
                    && is_database_name(&path)
                    && r.trees.iter().any(|t| t.matches(&path))
                {
                    let _ = discoveries.send(Discovery::NewDatabase(path));
                }
            }
        }
        let names = r.dbs.len();
        let nap = (snoozed
            && !urgent
            && count < NAP_MAX_BATCH
            && names.saturating_mul(NAP_EVENTS_PER_NAME) <= queue)
            .then(|| {
                // Each database's WAL entry (its own name has no snooze).
                let wals = r.dbs.values().filter_map(|(_, s)| s.as_ref());
                let now = Instant::now();
                let untils = wals.map(Snooze::snoozing_until);
                nap_length(untils, count, since, napped, queue, now)
            });
        drop(r);
        for b in bells.drain(..) {
            b.ring_event();
        }
        napped = nap.is_some();
        if let Some(nap) = nap {
            // Every event went to a database waiting for its put interval
            // (a busy one): nothing needs routing at once. Let the next
            // events gather into one read instead of waking for each commit
            // of every busy database. A commit to a quiet database meanwhile
            // waits at most ROUTER_NAP. Not after a large batch, nor with
            // more watched names than the kernel's queue can hold a few
            // events of each (see NAP_EVENTS_PER_NAME).
            std::thread::sleep(nap);
        }
    }
}

/// How long to nap after a batch that only reached snoozing watchers (see
/// [`route`]): ROUTER_NAP, or — when every database is snoozing (`wals`:
/// each database's [`Snooze::snoozing_until`]) — until the first of their
/// timers, at most LONG_NAP. The long nap needs a rate: `count` events
/// came in the `since` before this read, and the previous batch was
/// followed by a nap too (`after_nap`: a steady stream of such batches;
/// the first one after any other takes the short nap); the nap stays short
/// enough that events at that rate fill at most a quarter of the kernel's
/// queue of `queue` events. A burst that starts during a nap can still
/// overflow it: that loses nothing (every database is woken and the trees
/// are searched again), it only costs that work.
///
/// Why the long nap delays nothing that matters: a snoozing watcher holds
/// unread frames back until its timer; WAL events meanwhile are only
/// recorded, and its timer's pass reads the WAL anyway. A watcher can stop
/// snoozing earlier — a pass forced by a poll or a symlink's target (it
/// snoozes again), a periodic snapshot or a replaced file (it ships, which
/// starts a new put interval after the nap began, so its next upload could
/// not come before the nap ends anyway), or a failed pass (its retry on a
/// WAL event waits for the nap, at most LONG_NAP). A database registered
/// during the nap, discoveries and removals also wait at most LONG_NAP.
/// Late wake-ups never lose anything (the router may always be delayed):
/// they only change when a pass comes.
///
/// Cost: one look at every database's snooze, under the routes lock, after
/// each such batch; it stops at the first awake watcher, and naps are off
/// past ~2,000 databases (NAP_EVENTS_PER_NAME).
fn nap_length(
    wals: impl IntoIterator<Item = Option<Instant>>,
    count: usize,
    since: Duration,
    after_nap: bool,
    queue: usize,
    now: Instant,
) -> Duration {
    let mut first: Option<Instant> = None;
    for until in wals {
        let Some(until) = until else {
            return ROUTER_NAP; // an awake watcher: a quiet database's commit
        };
        first = Some(first.map_or(until, |f| f.min(until)));
    }
    let (Some(first), true) = (first, after_nap) else {
        return ROUTER_NAP;
    };
    // The time a quarter of the queue lasts at `count` events per `since`.
    let nanos = since.as_nanos() * (queue / 4) as u128 / count.max(1) as u128;
    let fill = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
    first
        .saturating_duration_since(now)
        .min(LONG_NAP)
        .min(fill)
        .max(ROUTER_NAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_naps_only_while_every_database_snoozes() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let nap = |wals: &[Option<Duration>], count: usize, since: Duration| {
            let wals = wals.iter().map(|d| d.map(|d| now + d));
            nap_length(wals, count, since, true, 16_384, now)
        };
        // Until the first snooze's timer.
        assert_eq!(nap(&[Some(ms(600)), Some(ms(300))], 2, ms(100)), ms(300));
        // One watcher awake: its next commit must not wait.
        assert_eq!(nap(&[Some(ms(600)), None], 2, ms(100)), ROUTER_NAP);
        assert_eq!(nap(&[], 2, ms(100)), ROUTER_NAP);
        // A timer already due, or due within the short nap.
        assert_eq!(nap(&[Some(Duration::ZERO)], 2, ms(100)), ROUTER_NAP);
        assert_eq!(nap(&[Some(ms(5))], 2, ms(100)), ROUTER_NAP);
        // Never longer than LONG_NAP (a long put interval).
        assert_eq!(nap(&[Some(ms(10_000))], 1, ms(100)), LONG_NAP);
        // 100 events in 20 ms: a quarter of the queue lasts 819.2 ms.
        assert_eq!(
            nap(&[Some(ms(900))], 100, ms(20)),
            Duration::from_micros(819_200)
        );
        // 127 events in 1 ms (127,000/s): 32 ms.
        assert_eq!(
            nap(&[Some(ms(900))], 127, ms(1)),
            Duration::from_nanos(32_251_968)
        );
        // Faster still: the short nap (the queue fills within it anyway).
        assert_eq!(
            nap(&[Some(ms(900))], 127, Duration::from_micros(100)),
            ROUTER_NAP
        );
        // After a wait in poll(2) the rate is unknown: the short nap first.
        let wals = [Some(now + ms(900))];
        assert_eq!(
            nap_length(wals, 1, ms(5_000), false, 16_384, now),
            ROUTER_NAP
        );
    }
}
