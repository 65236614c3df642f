//! Parked databases sleep without a thread: a doorbell per database holds
//! its state and spawns a thread for it when something happens.
//!
//! Why: with thousands of mostly idle databases (one per tenant), a thread
//! per database was what a parked one still cost — 12 KB of resident stack,
//! a kernel task, and one of the process's threads, which containers and
//! systemd units limit (`TasksMax`, a pod's pids limit). A database whose
//! files are closed (`capture::park`) needs nothing of a thread until its
//! next file event, its periodic snapshot or the shutdown; its thread ends
//! and leaves its state here, and the first of those spawns a new one.
//!
//! # Why no wake-up is lost
//!
//! A wake-up is always a message or a closed channel first, and a ring of
//! the doorbell after it: the router sends `Event::Wake` and then rings;
//! the daemon drops the stop channel's sender and then rings. A thread
//! leaving a database here checks, under the doorbell's lock, whether any
//! wake-up is waiting in its channels, and if so keeps the database and
//! goes on. The lock orders the two sides: a ring that takes the lock
//! before the thread does finds nothing parked, but its message was sent
//! before, so the thread's check sees it; a ring after the thread finds the
//! database and spawns it. A ring that is no message (an open slot given
//! back, `capture::slots`; the daemon's stop) and finds nothing parked is
//! kept (`rung`): the next park gives the database back at once. A
//! database is never run by two threads: only
//! the one that takes it from the doorbell (or never left it there) runs it.
//!
//! A thread that cannot be spawned (the process's thread limit) leaves the
//! database parked with a retry a second later ([`Bell::ring_if_due`],
//! called by the daemon's loop every second, which also wakes databases
//! whose periodic snapshot is due).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::capture::Event;

/// A spawn that failed is tried again after this.
const RETRY_SPAWN: Duration = Duration::from_secs(1);

/// Spawns a thread that runs `T`; gives `T` back when no thread could be
/// started.
pub type Spawn<T> = dyn Fn(T) -> Result<(), T> + Send + Sync;

/// What the router and the daemon ring, whatever the parked state's type.
pub trait Bell: Send + Sync {
    /// Something happened: run the parked database now, if it is parked.
    fn ring(&self);
    /// A file event: as [`Bell::ring`], unless the parked database waits
    /// for something else (it reads its events when it runs).
    fn ring_event(&self);
    /// Run the parked database if its timer is due (a periodic snapshot,
    /// a spawn to retry).
    fn ring_if_due(&self, now: Instant);
}

struct Parked<T> {
    task: T,
    /// When to run it without a wake-up.
    due: Option<Instant>,
    /// File events do not run it (it waits for something else: an open
    /// slot); other rings do.
    deaf: bool,
}

struct State<T> {
    parked: Option<Parked<T>>,
    /// Rung while nothing was parked: the next [`Doorbell::park`] gives the
    /// task back at once (a ring is never lost, even one that is not a
    /// message in a channel: an open slot given back, see
    /// `capture::slots`).
    rung: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    spawn: Box<Spawn<T>>,
    /// For the log line of a failed spawn.
    name: String,
}

/// One database's doorbell (cheap to clone).
pub struct Doorbell<T>(Arc<Inner<T>>);

impl<T> Clone for Doorbell<T> {
    fn clone(&self) -> Self {
        Doorbell(self.0.clone())
    }
}

impl<T: Send + 'static> Doorbell<T> {
    pub fn new(name: &str, spawn: Box<Spawn<T>>) -> Doorbell<T> {
        Doorbell(Arc::new(Inner {
            state: Mutex::new(State {
                parked: None,
                rung: false,
            }),
            spawn,
            name: name.to_string(),
        }))
    }

    /// Leave `task` here until the next ring (or `due`), unless `waiting`
    /// says a wake-up is already there: then it is given back, to go on
    /// with. See the module doc for why the check is made under the lock.
    pub fn park(
        &self,
        task: T,
        due: Option<Instant>,
        deaf: bool,
        waiting: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        let mut state = self.0.lock();
        if std::mem::take(&mut state.rung) || waiting(&task) {
            return Some(task);
        }
        state.parked = Some(Parked { task, due, deaf });
        None
    }

    /// The handle the router and the daemon keep.
    pub fn bell(&self) -> Arc<dyn Bell> {
        self.0.clone()
    }
}

/// Failed spawns, and when the last warning was logged: under a thread
/// limit thousands can fail at once (an inotify overflow, the shutdown).
static FAILED_SPAWNS: AtomicU64 = AtomicU64::new(0);
static WARNED: Mutex<Option<Instant>> = Mutex::new(None);
const WARN_EVERY: Duration = Duration::from_secs(10);

impl<T> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, task: T) {
        if let Err(task) = (self.spawn)(task) {
            let failed = FAILED_SPAWNS.fetch_add(1, Ordering::Relaxed) + 1;
            let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
            if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                *warned = Some(Instant::now());
                log::warn!(
                    "{}: cannot start a thread to wake this idle database (the process's thread limit?); retrying every {}s ({failed} failed so far)",
                    self.name,
                    RETRY_SPAWN.as_secs()
                );
            }
            drop(warned);
            let mut state = self.lock();
            // Whatever rang meanwhile is served by the retry.
            state.rung = false;
            state.parked = Some(Parked {
                task,
                due: Some(Instant::now() + RETRY_SPAWN),
                deaf: false,
            });
        }
    }
}

impl<T: Send + 'static> Bell for Inner<T> {
    fn ring(&self) {
        let taken = {
            let mut state = self.lock();
            let taken = state.parked.take();
            state.rung = taken.is_none();
            taken
        };
        if let Some(p) = taken {
            self.run(p.task);
        }
    }

    fn ring_event(&self) {
        // Not sticky: the event itself is in the database's channel, where
        // a thread about to park sees it.
        let taken = {
            let mut state = self.lock();
            match state.parked.as_ref().is_some_and(|p| !p.deaf) {
                true => state.parked.take(),
                false => None,
            }
        };
        if let Some(p) = taken {
            self.run(p.task);
        }
    }

    fn ring_if_due(&self, now: Instant) {
        let taken = {
            let mut state = self.lock();
            match state.parked.as_ref().and_then(|p| p.due) {
                Some(due) if due <= now => state.parked.take(),
                _ => None,
            }
        };
        if let Some(p) = taken {
            self.run(p.task);
        }
    }
}

/// How the router wakes a database: a message on its event channel, then
/// its doorbell (in that order: see the module doc).
#[derive(Clone)]
pub struct Wake {
    tx: Sender<Event>,
    bell: Arc<dyn Bell>,
}

impl Wake {
    pub fn new(tx: Sender<Event>, bell: Arc<dyn Bell>) -> Wake {
        Wake { tx, bell }
    }

    /// A file event for this database: the message now; the doorbell to
    /// ring after it is returned, for the caller to ring once it holds no
    /// lock (a ring may spawn a thread). A full channel already holds a
    /// wake-up: nothing is lost.
    pub fn send(&self) -> Arc<dyn Bell> {
        let _ = self.tx.try_send(Event::Wake);
        self.bell.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting_bell(fail: bool) -> (Doorbell<u32>, Arc<AtomicUsize>, Arc<Mutex<Vec<u32>>>) {
        let spawned = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (spawned.clone(), ran.clone());
        let bell = Doorbell::new(
            "t.db",
            Box::new(move |t: u32| {
                s.fetch_add(1, Ordering::SeqCst);
                if fail {
                    return Err(t);
                }
                r.lock().unwrap().push(t);
                Ok(())
            }),
        );
        (bell, spawned, ran)
    }

    #[test]
    fn a_waiting_wake_up_keeps_the_task_and_a_ring_runs_it_once() {
        let (bell, spawned, ran) = counting_bell(false);
        assert_eq!(bell.park(7, None, false, |_| true), Some(7));
        assert_eq!(bell.park(7, None, false, |_| false), None);
        let b = bell.bell();
        b.ring();
        assert_eq!(*ran.lock().unwrap(), vec![7]);
        assert_eq!(spawned.load(Ordering::SeqCst), 1);
        // A ring while it runs is kept: its next park gives it back once.
        b.ring();
        assert_eq!(spawned.load(Ordering::SeqCst), 1);
        assert_eq!(bell.park(7, None, false, |_| false), Some(7));
        assert_eq!(bell.park(7, None, false, |_| false), None);
    }

    #[test]
    fn file_events_do_not_run_a_deaf_task_nor_stick() {
        let (bell, spawned, _) = counting_bell(false);
        assert_eq!(bell.park(3, None, true, |_| false), None);
        bell.bell().ring_event();
        assert_eq!(spawned.load(Ordering::SeqCst), 0, "deaf: not run");
        bell.bell().ring();
        assert_eq!(spawned.load(Ordering::SeqCst), 1, "other rings run it");
        // While it runs, an event is in its channel, not in the doorbell.
        bell.bell().ring_event();
        assert_eq!(bell.park(3, None, false, |_| false), None);
    }

    #[test]
    fn due_runs_only_when_due_and_a_failed_spawn_is_kept_for_a_retry() {
        let (bell, _, ran) = counting_bell(false);
        let now = Instant::now();
        assert!(bell
            .park(1, Some(now + Duration::from_secs(60)), false, |_| false)
            .is_none());
        bell.bell().ring_if_due(now);
        assert!(ran.lock().unwrap().is_empty());
        bell.bell().ring_if_due(now + Duration::from_secs(61));
        assert_eq!(*ran.lock().unwrap(), vec![1]);

        let (bell, spawned, _) = counting_bell(true);
        assert!(bell.park(2, None, false, |_| false).is_none());
        bell.bell().ring();
        assert_eq!(spawned.load(Ordering::SeqCst), 1);
        // Still parked, due for a retry: not lost.
        bell.bell().ring_if_due(Instant::now() + RETRY_SPAWN * 2);
        assert_eq!(spawned.load(Ordering::SeqCst), 2);
    }
}
