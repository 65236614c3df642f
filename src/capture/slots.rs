//! Open slots: how many databases may be open at once under the
//! open-file limit.
//!
//! Why a file of its own: [`OpenSlots`] counts open databases against the
//! open-file limit: a database opens (at start-up or to unpark, see
//! `park.rs`) only when a slot is free, and while others wait, an idle open
//! database parks at once instead of after `close_idle_after`. A woken
//! database that finds no slot free waits for one — in the daemon without
//! a thread: it queues a way to wake it ([`SlotWait::queue`]), and a slot
//! given back (or more room: a pin dropped, a database stopped) wakes the
//! first in the queue. One woken for a slot it then does not use (it
//! stops) passes the wake-up on; one that finds the slot taken by another
//! keeps its place at the front.
//!
//! Why no slot goes unnoticed: a waiter counts itself in `waiting`, queues
//! and then looks for a slot once more; a slot given back is counted free
//! before `waiting` is read. With sequentially consistent operations on
//! both sides, either the waiter sees the free slot or the slot's owner
//! sees the waiter (and wakes the queue's first, under its lock).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// Open databases that must fit besides the pins (see [`OpenSlots::try_pin`]).
/// An open database holds its slot from a wake-up to the acknowledgement of
/// its upload (tens of milliseconds): 64 serve hundreds of wake-ups a second.
const MIN_PINLESS_OPEN: u64 = 64;

/// Descriptors an open database holds beyond a parked one's lock file, at
/// most: SQLite's database, WAL and `-shm`; the fence's connection's
/// database (the descriptor SQLite keeps after a connection closes, reused)
/// and WAL; walsync's own database, WAL and `-shm`; a streamed snapshot's
/// copy of the WAL descriptor.
pub const OPEN_FDS: u64 = 9;
/// Descriptors a parked database holds (its lock file).
pub const PARKED_FDS: u64 = 1;
/// Descriptors kept for everything else (stdio, inotify, sockets of the
/// uploaders, temp files of segments, the status and metrics sockets).
pub const BASE_FDS: u64 = 512;

/// Open databases counted against the open-file limit (see the module doc).
#[derive(Debug)]
pub struct OpenSlots {
    /// The open-file limit (`u64::MAX`: unlimited).
    fd_limit: u64,
    /// Databases running, parked or not (each holds at least its lock file).
    dbs: AtomicU64,
    /// Databases known to be starting (see [`OpenSlots::expect`]).
    expected: AtomicU64,
    /// Databases open now.
    open: AtomicU64,
    /// Parked databases that keep their database descriptor (pinned).
    pins: AtomicU64,
    /// Databases waiting for a slot (in a thread or queued): idle ones
    /// park for them ([`OpenSlots::pressed`]).
    waiting: AtomicU64,
    /// Of those, the ones waiting in a thread (signalled through `freed`).
    blocked: AtomicU64,
    /// Databases waiting without a thread, first come first woken.
    queue: Mutex<VecDeque<Queued>>,
    freed_tx: Sender<()>,
    freed: Receiver<()>,
}

/// One open database's slot; given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<OpenSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        if self.0.blocked.load(Ordering::SeqCst) > 0 {
            let _ = self.0.freed_tx.try_send(());
        }
        if self.0.waiting.load(Ordering::SeqCst) > 0 {
            self.0.wake_first();
        }
    }
}

/// Wakes a database that waits for a slot without a thread (rings its
/// doorbell: `crate::daemon::lot`).
pub type Wakeup = Arc<dyn Fn() + Send + Sync>;

/// One waiter in [`OpenSlots`]' queue: `queued` is cleared when it is
/// taken out, so that a waiter looking again is queued once.
struct Queued {
    queued: Arc<AtomicBool>,
    wakeup: Wakeup,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued")
    }
}

/// A woken database waiting for a slot without a thread: counted as a
/// waiter (so that idle open databases park for it) until dropped, or
/// [`SlotWait::served`].
pub struct SlotWait {
    slots: Arc<OpenSlots>,
    /// Since when it waits (for the warning after 10 s), and whether the
    /// warning was logged.
    pub(super) since: std::time::Instant,
    pub(super) warned: bool,
    /// In the queue now.
    queued: Arc<AtomicBool>,
    /// Queued at least once (taken out since: it was woken).
    in_line: bool,
    /// It got its slot: a wake-up it had is used.
    served: bool,
}

impl SlotWait {
    pub(super) fn new(slots: &Arc<OpenSlots>) -> SlotWait {
        slots.waiting.fetch_add(1, Ordering::SeqCst);
        SlotWait {
            slots: slots.clone(),
            since: std::time::Instant::now(),
            warned: false,
            queued: Arc::default(),
            in_line: false,
            served: false,
        }
    }

    /// Be woken when a slot is given back (unless queued already). Woken
    /// before and the slot taken by another: first in the queue again.
    pub(super) fn queue(&mut self, wakeup: &Wakeup) {
        let mut q = self.slots.queue.lock().unwrap_or_else(|p| p.into_inner());
        if self.queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let entry = Queued {
            queued: self.queued.clone(),
            wakeup: wakeup.clone(),
        };
        match self.in_line {
            true => q.push_front(entry),
            false => q.push_back(entry),
        }
        self.in_line = true;
    }

    /// The wait ended with a slot.
    pub(super) fn served(mut self) {
        self.served = true;
    }
}

impl Drop for SlotWait {
    fn drop(&mut self) {
        // Still queued (it found a slot by itself, or stops): out of the
        // queue, so that a slot given back wakes a database still waiting.
        let removed = {
            let mut q = self.slots.queue.lock().unwrap_or_else(|p| p.into_inner());
            match self.queued.load(Ordering::SeqCst) {
                true => {
                    let at = q.iter().position(|w| Arc::ptr_eq(&w.queued, &self.queued));
                    at.and_then(|i| q.remove(i))
                }
                false => None,
            }
        };
        let woken = self.in_line && removed.is_none();
        // Dropped after the lock: its doorbell may be the last reference.
        drop(removed);
        self.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        if woken && !self.served {
            // Woken for a slot it does not take: the next one's turn.
            self.slots.wake_first();
        }
    }
}

/// One unit of a count of [`OpenSlots`] that takes descriptors besides
/// the open databases' (`pins`, `dbs`); counted back when dropped, which
/// may make room for one more open database.
#[derive(Debug)]
struct Counted {
    slots: Arc<OpenSlots>,
    count: fn(&OpenSlots) -> &AtomicU64,
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.count)(&self.slots).fetch_sub(1, Ordering::SeqCst);
        self.slots.wake_if_room();
    }
}

/// A parked database's kept database descriptor; given back when dropped.
#[derive(Debug)]
pub struct Pin {
    _held: Counted,
}

/// One running database (its lock file), counted in [`OpenSlots`] while it
/// runs.
#[derive(Debug)]
pub struct Seat {
    _held: Counted,
}

impl OpenSlots {
    /// Slots for databases under an open-file limit of `fd_limit`.
    pub fn new(fd_limit: u64) -> Arc<OpenSlots> {
        let (freed_tx, freed) = crossbeam_channel::bounded(64);
        Arc::new(OpenSlots {
            fd_limit,
            dbs: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            open: AtomicU64::new(0),
            pins: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            queue: Mutex::default(),
            freed_tx,
            freed,
        })
    }

    /// A database starts; counted until the seat is dropped.
    pub fn seat(self: &Arc<Self>) -> Seat {
        self.dbs.fetch_add(1, Ordering::SeqCst);
        Seat {
            _held: Counted {
                slots: self.clone(),
                count: |s| &s.dbs,
            },
        }
    }

    /// How many databases may be open at once now (at least one).
    pub fn capacity(&self) -> u64 {
        self.capacity_with(self.pins.load(Ordering::SeqCst))
    }

    /// `n` databases are about to start: count them from now on, so that
    /// the first to start do not take the room of the later ones.
    pub fn expect(&self, n: u64) {
        self.expected.fetch_max(n, Ordering::AcqRel);
    }

    fn databases(&self) -> u64 {
        self.dbs
            .load(Ordering::SeqCst)
            .max(self.expected.load(Ordering::SeqCst))
    }

    fn capacity_with(&self, pins: u64) -> u64 {
        let parked = self.databases() * PARKED_FDS + pins;
        (self.fd_limit.saturating_sub(BASE_FDS + parked) / OPEN_FDS).max(1)
    }

    /// A pin for a database about to park, if the open-file limit has room:
    /// at least one database in 64 (and [`MIN_PINLESS_OPEN`]) can
    /// still be open at once with it, besides those open now.
    pub fn try_pin(self: &Arc<Self>) -> Option<Pin> {
        let floor = (self.databases() / 64).max(MIN_PINLESS_OPEN);
        // Counted only once accepted: a refused pin never took room.
        let mut pins = self.pins.load(Ordering::SeqCst);
        loop {
            let cap = self.capacity_with(pins + 1);
            if cap < floor || cap <= self.open() {
                return None;
            }
            match self.pins.compare_exchange_weak(
                pins,
                pins + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    return Some(Pin {
                        _held: Counted {
                            slots: self.clone(),
                            count: |s| &s.pins,
                        },
                    })
                }
                Err(now) => pins = now,
            }
        }
    }

    /// Databases open now.
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }

    /// A slot, if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let cap = self.capacity();
        let mut open = self.open.load(Ordering::SeqCst);
        loop {
            if open >= cap {
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => open = now,
            }
        }
    }

    /// Wait for a slot until `give_up` fires (then `None`). Checks again
    /// every second besides when a slot is freed: the capacity also grows
    /// when databases stop.
    pub fn take<T>(self: &Arc<Self>, give_up: &Receiver<T>) -> Option<Slot> {
        if let Some(s) = self.try_take() {
            return Some(s);
        }
        self.waiting(|| loop {
            if let Some(s) = self.try_take() {
                break Some(s);
            }
            crossbeam_channel::select! {
                recv(self.freed) -> _ => {}
                recv(give_up) -> _ => break None,
                recv(crossbeam_channel::after(Duration::from_secs(1))) -> _ => {}
            }
        })
    }

    /// Others wait for a slot, or nearly every slot is taken: idle open
    /// databases should park now.
    pub fn pressed(&self) -> bool {
        self.waiting.load(Ordering::Acquire) > 0
            || self.open().saturating_mul(10) >= self.capacity().saturating_mul(9)
    }

    /// Channel signalled when a slot is freed while someone waits.
    pub(super) fn freed(&self) -> &Receiver<()> {
        &self.freed
    }

    /// Wake the first database queued for a slot, if any (it looks for one
    /// on its new thread, and queues again if another took it first).
    fn wake_first(&self) {
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            let first = q.pop_front();
            if let Some(f) = &first {
                f.queued.store(false, Ordering::SeqCst);
            }
            first
        };
        if let Some(f) = first {
            (f.wakeup)();
        }
    }

    /// Wake the first queued database if there is room for one more open
    /// database now (the capacity grew: a pin or a database less).
    fn wake_if_room(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 && self.open() < self.capacity() {
            self.wake_first();
        }
    }

    /// Count a waiter in this thread while `f` runs (so that idle
    /// databases park for it, and a slot given back signals `freed`).
    pub(super) fn waiting<T>(&self, f: impl FnOnce() -> T) -> T {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        self.blocked.fetch_add(1, Ordering::SeqCst);
        let r = f();
        self.blocked.fetch_sub(1, Ordering::SeqCst);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counter() -> (Wakeup, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let wakeup: Wakeup = Arc::new(move || {
            m.fetch_add(1, Ordering::SeqCst);
        });
        (wakeup, n)
    }

    /// Room for exactly one open database among two.
    fn one_slot() -> (Arc<OpenSlots>, Seat, Seat) {
        let slots = OpenSlots::new(BASE_FDS + 2 * PARKED_FDS + OPEN_FDS);
        let (a, b) = (slots.seat(), slots.seat());
        (slots, a, b)
    }

    /// Two databases, one slot held by a third party, both waiting queued
    /// (`a` first).
    struct Two {
        slots: Arc<OpenSlots>,
        _seats: (Seat, Seat),
        held: Slot,
        a: SlotWait,
        wa: Wakeup,
        na: Arc<AtomicUsize>,
        b: SlotWait,
        nb: Arc<AtomicUsize>,
    }

    fn two_waiting() -> Two {
        let (slots, sa, sb) = one_slot();
        let held = slots.try_take().expect("one slot");
        assert!(slots.try_take().is_none());
        let (wa, na) = counter();
        let (wb, nb) = counter();
        let mut a = SlotWait::new(&slots);
        a.queue(&wa);
        let mut b = SlotWait::new(&slots);
        b.queue(&wb);
        Two {
            slots,
            _seats: (sa, sb),
            held,
            a,
            wa,
            na,
            b,
            nb,
        }
    }

    fn n(c: &AtomicUsize) -> usize {
        c.load(Ordering::SeqCst)
    }

    #[test]
    fn a_slot_given_back_wakes_the_first_queued_once() {
        let mut t = two_waiting();
        t.a.queue(&t.wa); // looking again: still queued once
        assert!(t.slots.pressed(), "waiters make idle databases park");
        drop(t.held);
        assert_eq!((n(&t.na), n(&t.nb)), (1, 0));
        let got = t.slots.try_take().expect("the slot given back");
        t.a.served();
        assert_eq!(n(&t.nb), 0, "a used its wake-up");
        drop(got);
        assert_eq!((n(&t.na), n(&t.nb)), (1, 1), "the next one in line");
        drop(t.b);
        assert!(!t.slots.pressed());
    }

    #[test]
    fn a_waiter_woken_that_stops_passes_the_wake_up_on() {
        let t = two_waiting();
        drop(t.held);
        assert_eq!(n(&t.na), 1);
        drop(t.a); // stops without taking the slot
        assert_eq!(n(&t.nb), 1);
    }

    #[test]
    fn a_wait_that_ends_queued_leaves_the_queue() {
        let t = two_waiting();
        drop(t.a); // stopped before it was woken
        assert_eq!(n(&t.nb), 0);
        drop(t.held);
        assert_eq!((n(&t.na), n(&t.nb)), (0, 1));
    }

    #[test]
    fn a_waiter_that_lost_the_race_keeps_its_place() {
        let mut t = two_waiting();
        drop(t.held);
        let other = t.slots.try_take().expect("taken by another first");
        t.a.queue(&t.wa); // woken, found none: first again
        drop(other);
        assert_eq!((n(&t.na), n(&t.nb)), (2, 0));
    }

    #[test]
    fn a_refused_pin_takes_no_room_and_wakes_nobody() {
        // Far below the 64 open databases a pin must leave room for.
        let (slots, _a, _b) = one_slot();
        let (wa, na) = counter();
        let mut a = SlotWait::new(&slots);
        a.queue(&wa);
        assert!(slots.try_pin().is_none());
        // A pin counted and then given back would have "made room" for
        // the queued waiter while nothing is open.
        assert_eq!(n(&na), 0, "a refused pin woke a waiter");
        assert_eq!(slots.capacity(), 1, "a refused pin takes no room");
        assert!(slots.try_take().is_some());
        drop(a);
    }
}
