//! The watcher thread's loop and its shutdown drain.
//!
//! Why a file of its own: the loop owns the channels (file events, acks,
//! shutdown) and sleeps until the pass's next timer; the drain ships
//! everything committed before the process exits.

use super::slots::SlotWait;
use super::*;

/// A sleep at least this long is idle (see [`Capture::trim_idle`]).
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(5);

/// Once, after 10 s of waiting for an open slot since `since`.
fn warn_slot_wait(name: &str, since: Instant, warned: &mut bool, slots: &OpenSlots) {
    if !*warned && since.elapsed() >= Duration::from_secs(10) {
        *warned = true;
        log::warn!(
            "{name}: waiting {}s for an open slot (open-file limit; {} databases open)",
            since.elapsed().as_secs(),
            slots.open()
        );
    }
}

/// How [`Capture::run_parking`] ended.
pub enum Outcome {
    /// The loop ended: shut down (everything committed shipped, or the
    /// reason it was not), or stopped by an error.
    Done(Result<()>),
    /// Parked with nothing to do: to be woken on another thread (see
    /// `crate::daemon::lot`), by a file event, the shutdown or
    /// [`Capture::wake_at`].
    Parked(Box<Capture>),
}

/// What a parked database's sleep ended with.
enum Waking {
    /// Woken, and an open slot taken: go on.
    Woken,
    /// Told to shut down.
    Stop,
    /// Nothing to do (only when the sleep does not block).
    Asleep,
}

impl Capture {
    /// The watcher thread's loop: runs until `Shutdown`, the event channel
    /// closes or `shutdown` is closed (a broadcast), then ships what is
    /// committed and waits for the uploads up to `drain_timeout`. Boxed: by
    /// value, the 1.3 KiB of `Capture` would sit in this frame and its
    /// caller's, resident for the thread's life.
    pub fn run(
        self: Box<Self>,
        events: Receiver<Event>,
        shutdown: Receiver<()>,
        drain_timeout: Duration,
    ) -> Result<()> {
        let mut rep = self;
        loop {
            match rep.run_parking(&events, &shutdown, drain_timeout, false) {
                Outcome::Done(r) => return r,
                // Not reached (a sleep that blocks never leaves): go on.
                Outcome::Parked(r) => rep = r,
            }
        }
    }

    /// [`Capture::run`], except that with `leave` a parked database with
    /// nothing to do returns instead of sleeping in this thread.
    pub fn run_parking(
        mut self: Box<Self>,
        events: &Receiver<Event>,
        shutdown: &Receiver<()>,
        drain_timeout: Duration,
        leave: bool,
    ) -> Outcome {
        let mut retry = 0u32;
        let mut timer: Option<Instant>;
        let mut pending_error: Option<Instant>;
        // Memory only: the file-event count when SQLite's wal-index map
        // was last trimmed (see `trim_idle`): trim again only after a
        // wake-up.
        let mut trimmed_at: Option<u64> = None;
        loop {
            if self.parked.is_some() && !self.holds_slot() {
                match self.sleep_parked(events, shutdown, !leave) {
                    Waking::Woken => {}
                    Waking::Stop => return Outcome::Done(self.drain(drain_timeout)),
                    Waking::Asleep => return Outcome::Parked(self),
                }
            }
            match self.tick() {
                Ok(next) => {
                    self.stats.passes.fetch_add(1, Ordering::Relaxed);
                    retry = 0;
                    timer = next;
                    pending_error = None;
                }
                Err(e @ Error::Fenced(_)) => {
                    log::error!("{e}");
                    self.stats.last_error.note(e.to_string());
                    let _ = self.end_read();
                    return Outcome::Done(Err(e));
                }
                Err(e) => {
                    // A failed pass may have snoozed after `step`; no pass
                    // is due before the retry: wake on every event. Events
                    // skipped since the pass began retry it at once, as a
                    // wake-up arriving now would.
                    let missed = self.snooze.wake();
                    let wait = if missed {
                        self.woken();
                        Duration::ZERO
                    } else {
                        crate::util::backoff(retry, Duration::from_secs(30))
                    };
                    log::error!(
                        "{}: {e} (retrying in {:.1}s)",
                        self.cfg.name,
                        wait.as_secs_f32()
                    );
                    self.stats.last_error.note(e.to_string());
                    retry = retry.saturating_add(1);
                    pending_error = Some(Instant::now() + wait);
                    // The last pass's timer may be past already: without
                    // this the failing pass would run again at once.
                    timer = None;
                }
            }
            let deadline = [timer, pending_error].into_iter().flatten().min();
            // Parked by this pass: sleep parked. (Still parked after a
            // failed reopening: back off as any failed pass.)
            let was_parked = self.parked.is_some();
            let park_at = match pending_error {
                None => self.park_if_idle(deadline),
                Some(_) => None,
            };
            if !was_parked && self.parked.is_some() {
                continue;
            }
            let deadline = [deadline, park_at].into_iter().flatten().min();
            let idle = deadline.is_none_or(|d| d > Instant::now() + IDLE_TRIM_AFTER);
            if idle && trimmed_at != Some(self.events) && self.inflight.is_empty() {
                trimmed_at = Some(self.events);
                self.trim_idle();
            }
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let never = crossbeam_channel::never();
            let tick = match timeout {
                Some(t) => crossbeam_channel::after(t),
                None => never,
            };
            crossbeam_channel::select! {
                recv(events) -> ev => match ev {
                    Ok(Event::Wake) => self.woken(),
                    Ok(Event::Shutdown) | Err(_) => return Outcome::Done(self.drain(drain_timeout)),
                },
                recv(self.acks) -> a => if let Ok(a) = a { self.on_ack(a) },
                recv(shutdown) -> _ => return Outcome::Done(self.drain(drain_timeout)),
                recv(tick) -> _ => {}
            }
            // Coalesce a burst of events into one pass.
            while let Ok(a) = self.acks.try_recv() {
                self.on_ack(a);
            }
            loop {
                match events.try_recv() {
                    Ok(Event::Wake) => self.woken(),
                    Ok(Event::Shutdown) => return Outcome::Done(self.drain(drain_timeout)),
                    Err(_) => break,
                }
            }
        }
    }

    /// The database holds an open slot (or does not count slots).
    fn holds_slot(&self) -> bool {
        self.parking.as_ref().is_none_or(|p| p.slot.is_some())
    }

    /// When a parked database has something to do without a file event:
    /// its periodic snapshot may be due.
    ///
    /// While it waits for an open slot without a thread, it is woken when
    /// a slot is given back, a pin dropped or a database stops (see
    /// `slots.rs`), and looks again every 30 s besides.
    pub fn wake_at(&self) -> Option<Instant> {
        if self.waits_for_slot() {
            // A snapshot due meanwhile needs the slot too.
            return Some(Instant::now() + Duration::from_secs(30));
        }
        self.cfg.snapshot_interval.map(|iv| self.last_snapshot + iv)
    }

    /// Woken, and waiting for an open slot without a thread: file events
    /// change nothing until a slot is free (see `slots.rs`).
    pub fn waits_for_slot(&self) -> bool {
        self.parking.as_ref().is_some_and(|p| p.slot_wait.is_some())
    }

    /// Parked: sleep until a file event (or a periodic snapshot is due),
    /// then wait for an open slot. With `block` false, nothing to do now
    /// returns [`Waking::Asleep`] instead of sleeping.
    fn sleep_parked(
        &mut self,
        events: &Receiver<Event>,
        shutdown: &Receiver<()>,
        block: bool,
    ) -> Waking {
        let Some(slots) = self.parking.as_ref().map(|p| p.slots.clone()) else {
            return Waking::Woken;
        };
        // Without a thread to wait in (the daemon's), a woken database waits
        // for its slot queued.
        let wakeup = match block {
            true => None,
            false => self.parking.as_ref().and_then(|p| p.wakeup.clone()),
        };
        if let (true, Some(w)) = (self.waits_for_slot(), &wakeup) {
            // Woken before, and waiting for a slot without a thread: events
            // since are wake-ups too.
            loop {
                match events.try_recv() {
                    Ok(Event::Wake) => self.woken(),
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Ok(Event::Shutdown) | Err(_) => return self.stop_waiting(),
                }
            }
            if !matches!(
                shutdown.try_recv(),
                Err(crossbeam_channel::TryRecvError::Empty)
            ) {
                return self.stop_waiting();
            }
            return self.take_slot_or_queue(&slots, w);
        }
        loop {
            let due = self
                .wake_at()
                .map(|d| d.saturating_duration_since(Instant::now()));
            let tick = due.map_or_else(crossbeam_channel::never, crossbeam_channel::after);
            let mut sel = crossbeam_channel::Select::new();
            let on_event = sel.recv(events);
            let on_stop = sel.recv(shutdown);
            sel.recv(&tick);
            let op = match block {
                true => sel.select(),
                false => match sel.try_select() {
                    Ok(op) => op,
                    Err(_) => return Waking::Asleep,
                },
            };
            // Each arm completes the operation on the receiver it chose.
            match op.index() {
                i if i == on_event => match op.recv(events) {
                    Ok(Event::Wake) => {
                        self.woken();
                        break;
                    }
                    Ok(Event::Shutdown) | Err(_) => return Waking::Stop,
                },
                i if i == on_stop => {
                    let _ = op.recv(shutdown);
                    return Waking::Stop;
                }
                _ => {
                    let _ = op.recv(&tick);
                }
            }
            // The periodic snapshot is due: nothing was shipped since the
            // newest snapshot, so it is the current state already (as in
            // `tick`), without reopening.
            let snap = self.stats.snapshot_txid.load(Ordering::Relaxed);
            if snap > 0 && snap + 1 == self.next_txid && self.pending.is_empty() {
                self.last_snapshot = Instant::now();
                continue;
            }
            break;
        }
        if let Some(w) = &wakeup {
            return self.take_slot_or_queue(&slots, w);
        }
        let slot = slots.try_take().or_else(|| {
            // Woken: something may be committed and unread until it opens.
            self.stats.note_unread();
            let since = Instant::now();
            let mut warned = false;
            slots.waiting(|| loop {
                warn_slot_wait(&self.cfg.name, since, &mut warned, &slots);
                crossbeam_channel::select! {
                    recv(slots.freed()) -> _ => {}
                    recv(events) -> ev => match ev {
                        Ok(Event::Wake) => self.woken(),
                        Ok(Event::Shutdown) | Err(_) => return None,
                    },
                    recv(shutdown) -> _ => return None,
                    recv(crossbeam_channel::after(Duration::from_secs(1))) -> _ => {}
                }
                if let Some(s) = slots.try_take() {
                    return Some(s);
                }
            })
        });
        match (slot, self.parking.as_mut()) {
            (Some(s), Some(p)) => {
                p.slot = Some(s);
                Waking::Woken
            }
            _ => Waking::Stop,
        }
    }

    /// Woken, without a thread to wait in: take a free open slot, or queue
    /// to be woken when one is given back ([`Waking::Asleep`]).
    fn take_slot_or_queue(&mut self, slots: &Arc<OpenSlots>, wakeup: &Wakeup) -> Waking {
        if let Some(s) = slots.try_take() {
            return self.got_slot(s);
        }
        if !self.waits_for_slot() {
            // Woken: something may be committed and unread until it opens.
            self.stats.note_unread();
        }
        let Some(p) = self.parking.as_mut() else {
            return Waking::Woken; // slots are not counted
        };
        let wait = p.slot_wait.get_or_insert_with(|| SlotWait::new(slots));
        wait.queue(wakeup);
        // A slot given back before it was counted as waiting woke nobody.
        if let Some(s) = slots.try_take() {
            return self.got_slot(s);
        }
        warn_slot_wait(&self.cfg.name, wait.since, &mut wait.warned, slots);
        Waking::Asleep
    }

    fn got_slot(&mut self, slot: Slot) -> Waking {
        if let Some(p) = self.parking.as_mut() {
            p.slot = Some(slot);
            if let Some(w) = p.slot_wait.take() {
                w.served();
            }
        }
        Waking::Woken
    }

    /// Told to stop while waiting for a slot without a thread (the drain
    /// takes one itself, see `reopen_for_drain`).
    fn stop_waiting(&mut self) -> Waking {
        if let Some(p) = self.parking.as_mut() {
            p.slot_wait = None;
        }
        Waking::Stop
    }

    /// Memory only, before a long sleep with nothing in flight: free the
    /// tail probe's frame buffer; the passes since the last wake-up made
    /// SQLite touch its wal-index map (a WAL restart zeroes a whole 32 KiB
    /// hash table): drop those pages from this process's map
    /// ([`crate::sqlite::shm::trim_sqlite_map`]); drop most of SQLite's
    /// cached pages (`sqlite3_db_release_memory`: clean, unused pages only;
    /// no lock, read mark or transaction changes); then the pages of this
    /// thread's stack below the loop ([`crate::util::release_unused_stack`]).
    fn trim_idle(&mut self) {
        self.tail.release_buffer();
        if let Some(c) = &self.conn {
            if !crate::sqlite::shm::trim_sqlite_map(c) {
                log::trace!("{}: wal-index map not trimmed", self.cfg.name);
            }
            // Pages SQLite cached for the pass (its snapshot reads, the
            // fence's schema check): unused now, and with hundreds of
            // databases open between writes a large share of the heap.
            if let Err(e) = c.release_memory() {
                log::trace!("{}: SQLite cache not released: {e}", self.cfg.name);
            }
        }
        // Last: the calls above touched the stack below this frame too.
        crate::util::release_unused_stack();
    }

    /// Ship everything committed (or the snapshot continuity needs) and wait
    /// for the uploads, up to `timeout`.
    fn drain(mut self: Box<Self>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if self.parked.is_some() {
            match self.reopen_for_drain(deadline) {
                Ok(true) => {}
                Ok(false) => return Ok(()), // nothing written since parking
                Err(e) => return Err(e),
            }
        }
        let mut result = Ok(());
        self.drain = Some(Drain::default());
        // The deadline came before a pass read everything committed (or
        // before a snapshot continuity needs was stored).
        let mut unread = false;
        // One pass reading the WAL runs even when the deadline has passed
        // already (`--shutdown-timeout 0`): a database with nothing new is
        // then known to be covered, not reported as unshipped. It reads and
        // queues; it does not wait for uploads (a snapshot is not started).
        let mut first = true;
        loop {
            let idle = self.inflight.is_empty() && self.pending.is_empty();
            let drain = self.drain.unwrap_or_default();
            let done = idle && drain.covered && self.snapshot_reason.is_none();
            let one_pass = first && idle && self.snapshot_reason.is_none();
            first = false;
            if Instant::now() >= deadline && !one_pass {
                unread = !done && self.conn.is_some();
                break;
            }
            if done {
                break; // everything committed before the shutdown is stored
            }
            if idle {
                let r = match self.snapshot_reason.clone() {
                    // Taken under SQLite's write lock after the shutdown
                    // began: it holds everything committed before it.
                    Some(reason) if self.conn.is_some() => {
                        self.snapshot(&reason).map(|()| self.drain_covered())
                    }
                    Some(_) => break, // the database is gone; nothing to read
                    None if !self.pin.in_read() && self.read.is_some() && self.conn.is_some() => {
                        // An earlier step failed after ending the read
                        // transaction: re-establish it (it ships on the way).
                        let counted_unknown = self.counted.is_none();
                        self.fence()
                            .and_then(|f| self.establish(f, counted_unknown))
                    }
                    None => self.step(),
                };
                if let Err(e) = r {
                    result = Err(e);
                    break;
                }
                if self.drain.is_some_and(|d| d.starved) {
                    // Other databases' uploads hold the budget: wait for
                    // them rather than leave this one's commits unshipped.
                    let left = deadline.saturating_duration_since(Instant::now());
                    std::thread::sleep(left.min(Duration::from_millis(50)));
                    continue;
                }
                let settled = self.snapshot_reason.is_none()
                    && (self.pin.in_read() || self.conn.is_none() || self.read.is_none());
                if self.inflight.is_empty() && self.pending.is_empty() && settled {
                    break; // nothing more to ship
                }
                if self.inflight.is_empty() && self.pending.is_empty() {
                    continue; // a snapshot or re-establish is due: go again
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.acks.recv_timeout(left) {
                Ok(a) => {
                    self.on_ack(a);
                    if let Err(e) = self.check_fenced().and_then(|()| self.flush_pending()) {
                        result = Err(e);
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = self.end_read();
        if result.is_ok() && self.drain.is_some_and(|d| d.starved) {
            result = Err(Error::Config(format!(
                "{}: commits not uploaded at shutdown (the upload budget stayed full); they stay in the WAL and ship on the next start",
                self.cfg.name
            )));
        }
        let unshipped = self.inflight.len() + self.pending.len();
        if result.is_ok() && unshipped > 0 {
            result = Err(Error::Config(format!(
                "{}: {unshipped} segment(s) not uploaded at shutdown; they stay in the WAL and ship on the next start",
                self.cfg.name
            )));
        }
        if result.is_ok() && unread {
            result = Err(Error::Config(format!(
                "{}: the shutdown timeout passed before everything committed was read and stored; it stays in the WAL and ships on the next start",
                self.cfg.name
            )));
        }
        result
    }
}
