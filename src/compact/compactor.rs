//! The daemon's compactor thread: every database's levels and retention on
//! one schedule, plus the check that the replica is still stored.
//!
//! Why a file of its own: one thread serves all databases; its timers decide
//! when each level runs and cost nothing for an idle database.

use super::*;

/// Compaction and retention settings of a daemon.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Interval of levels 1, 2, 3 (`None`: the level is off; a level whose
    /// lower level is off has nothing to merge).
    pub intervals: [Option<Duration>; 3],
    /// How long an object stays deletable before retention deletes it.
    pub grace: Duration,
    /// Directory for temporary files.
    pub tmp_dir: PathBuf,
    /// Level-0 objects just stored, folded: level 1 merges them without a
    /// GET (see [`Recent`]).
    pub recent: Option<Arc<Recent>>,
    /// How often a shipping database's newest snapshot is checked to be
    /// still stored ([`PRESENCE_CHECK`]).
    pub presence_check: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            intervals: defaults::COMPACTION_INTERVALS.map(Some),
            grace: defaults::RETENTION_GRACE,
            tmp_dir: std::env::temp_dir(),
            recent: None,
            presence_check: PRESENCE_CHECK,
        }
    }
}

/// A database handed to the compactor once its replication started.
pub struct DbEntry {
    /// Name in the bucket.
    pub name: String,
    /// Its replication counters (durable txid, newest snapshot).
    pub stats: Arc<DbStats>,
    /// Highest max txid per level stored at start-up (index = level).
    pub level_ends: [u64; 10],
    /// Retention window (`None`: keep everything).
    pub retention: Option<Duration>,
}

struct DbState {
    entry: DbEntry,
    /// Newest level-L object's max txid (index 1..=3).
    end: [u64; 4],
    /// Highest source txid examined per level (no LIST until it grows).
    scanned: [u64; 4],
    due: [Instant; 4],
    /// Source position when the last retention pass ran (`None`: never).
    retention_seen: Option<[u64; 4]>,
    retention_due: Instant,
    /// When objects inside the window at the last pass can start to leave
    /// it (`None`: nothing will, until new objects arrive).
    retention_next: Option<Instant>,
    /// Deletable objects and when they were first seen deletable.
    marks: HashMap<String, Instant>,
    failures: u32,
    /// Next look at whether the newest snapshot is still stored, and the
    /// durable txid at the last look (only a database that shipped since
    /// is looked at: an idle one costs no request).
    presence_due: Instant,
    presence_seen: u64,
}

/// How often a database that ships is checked for its newest snapshot
/// still being in storage: a replica deleted under a running daemon (a
/// mistaken `rm`, a lifecycle rule) is re-seeded with a snapshot instead of
/// growing level-0 objects that no restore can start from.
pub const PRESENCE_CHECK: Duration = Duration::from_secs(600);

/// How often retention looks at a database that still has objects to
/// expire, given its window.
fn retention_check_interval(window: Duration) -> Duration {
    (window / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

/// The compactor thread: one for the daemon, serving every database.
pub struct Compactor {
    tx: Sender<DbEntry>,
    stop: Arc<AtomicBool>,
    stop_tx: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Compactor {
    /// Start the thread.
    pub fn start(storage: Arc<dyn Storage>, policy: Policy) -> Result<Compactor> {
        let (tx, rx) = crossbeam_channel::unbounded::<DbEntry>();
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || run(&*storage, &policy, &rx, &stop_rx, &flag))
            .map_err(|e| Error::Config(format!("cannot start the compactor thread: {e}")))?;
        Ok(Compactor {
            tx,
            stop,
            stop_tx: Some(stop_tx),
            handle: Some(handle),
        })
    }

    /// A handle for database threads to register themselves.
    pub fn sender(&self) -> Sender<DbEntry> {
        self.tx.clone()
    }

    /// Stop after the current step and wait for the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.stop_tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    storage: &dyn Storage,
    policy: &Policy,
    rx: &Receiver<DbEntry>,
    stop_rx: &Receiver<()>,
    stop: &AtomicBool,
) {
    let mut dbs: Vec<DbState> = Vec::new();
    loop {
        let now = Instant::now();
        for db in &mut dbs {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            db.run_due(storage, policy, now, stop);
        }
        let next = dbs
            .iter()
            .map(|d| d.next_due(policy))
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()));
        let tick = next.map_or_else(crossbeam_channel::never, crossbeam_channel::after);
        crossbeam_channel::select! {
            recv(rx) -> e => if let Ok(e) = e { add(&mut dbs, e, policy) },
            recv(stop_rx) -> _ => return,
            recv(tick) -> _ => {}
        }
        while let Ok(e) = rx.try_recv() {
            add(&mut dbs, e, policy);
        }
    }
}

/// A database (re)started by the daemon: a database replicated again under
/// the same name (its file removed and brought back) replaces its old
/// state, so one name is never compacted by two states at once.
fn add(dbs: &mut Vec<DbState>, entry: DbEntry, policy: &Policy) {
    let state = DbState::new(entry, policy);
    match dbs.iter_mut().find(|d| d.entry.name == state.entry.name) {
        Some(old) => *old = state,
        None => dbs.push(state),
    }
}

impl DbState {
    fn new(entry: DbEntry, policy: &Policy) -> DbState {
        let now = Instant::now();
        let mut end = [0u64; 4];
        end[1..4].copy_from_slice(&entry.level_ends[1..4]);
        let mut due = [now; 4];
        for (i, iv) in policy.intervals.iter().enumerate() {
            due[i + 1] = now + iv.unwrap_or_default();
        }
        DbState {
            entry,
            end,
            scanned: [0; 4],
            due,
            retention_seen: None,
            // Not in the first seconds: start-up has enough to do.
            retention_due: now + policy.intervals[0].unwrap_or(defaults::COMPACTION_INTERVALS[0]),
            retention_next: None,
            marks: HashMap::new(),
            failures: 0,
            presence_due: now + policy.presence_check,
            presence_seen: 0,
        }
    }

    /// Is the newest snapshot this process knows durable still stored? If
    /// it is gone, the replica was deleted under us: tell the watcher,
    /// whose next txid is then a snapshot.
    fn check_presence(&mut self, storage: &dyn Storage, policy: &Policy, now: Instant) {
        let stats = &self.entry.stats;
        let durable = stats.durable_txid.load(Ordering::Relaxed);
        if now < self.presence_due || durable == self.presence_seen {
            return;
        }
        self.presence_due = now + policy.presence_check;
        let snap = stats.snapshot_txid.load(Ordering::Relaxed);
        if snap == 0 {
            return;
        }
        let key = ltx::object_key("", &self.entry.name, SNAPSHOT_LEVEL, 1, snap);
        match storage.head(&key) {
            Ok(Some(_)) => self.presence_seen = durable,
            // A newer snapshot may have replaced it meanwhile (and retention
            // deleted it): only a snapshot still the newest counts.
            Ok(None) if stats.snapshot_txid.load(Ordering::Relaxed) == snap => {
                log::warn!(
                    "{}: the newest snapshot {key} is no longer in storage (replica deleted?)",
                    self.entry.name
                );
                stats.replica_missing.store(true, Ordering::Relaxed);
                self.presence_seen = durable;
            }
            Ok(None) => {}
            Err(e) => log::debug!("{}: presence check of {key}: {e}", self.entry.name),
        }
    }

    /// The newest txid the source of `level` reaches.
    fn source_end(&self, level: usize) -> u64 {
        if level == 1 {
            self.entry.stats.durable_txid.load(Ordering::Relaxed)
        } else {
            self.end[level - 1]
        }
    }

    fn has_work(&self, level: usize) -> bool {
        let src = self.source_end(level);
        src > self.end[level].max(self.scanned[level])
    }

    fn positions(&self) -> [u64; 4] {
        [self.source_end(1), self.end[1], self.end[2], self.end[3]]
    }

    fn next_due(&self, policy: &Policy) -> Instant {
        let mut next: Option<Instant> = None;
        for level in 1..=3usize {
            if policy.intervals[level - 1].is_some() && self.has_work(level) {
                next = Some(next.map_or(self.due[level], |n| n.min(self.due[level])));
            }
        }
        if self.retention_wanted() {
            next = Some(next.map_or(self.retention_due, |n| n.min(self.retention_due)));
        }
        // Nothing to do: look again when the counters may have moved.
        next.unwrap_or_else(|| {
            let soonest = policy
                .intervals
                .iter()
                .flatten()
                .min()
                .copied()
                .unwrap_or(Duration::from_secs(60));
            Instant::now() + soonest
        })
    }

    fn retention_wanted(&self) -> bool {
        self.entry.retention.is_some()
            && (self.retention_seen != Some(self.positions())
                || self.retention_next.is_some()
                || !self.marks.is_empty())
    }

    fn run_due(&mut self, storage: &dyn Storage, policy: &Policy, now: Instant, stop: &AtomicBool) {
        let name = self.entry.name.clone();
        for level in 1..=3usize {
            let Some(iv) = policy.intervals[level - 1] else {
                continue;
            };
            if now < self.due[level] || !self.has_work(level) {
                continue;
            }
            self.due[level] = now + iv;
            let src = self.source_end(level);
            // A backlog of more than MAX_INPUTS objects takes a few rounds.
            for _ in 0..4 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let pos = self.end[level];
                let ctx = Ctx {
                    tmp_dir: &policy.tmp_dir,
                    cancel: stop,
                    recent: policy.recent.as_deref(),
                    lineage: self.entry.stats.lineage,
                };
                let r = compact_level(storage, &name, level as u8, pos, &ctx);
                match r {
                    Ok(Some(o)) => {
                        self.failures = 0;
                        self.end[level] = o.max_txid;
                        if o.max_txid >= src {
                            break;
                        }
                    }
                    Ok(None) => {
                        self.scanned[level] = src;
                        break;
                    }
                    // Shutdown cancels a merge between its inputs: nothing
                    // was written, the next start merges again. Not a failure.
                    Err(e) if stop.load(Ordering::Relaxed) => {
                        log::debug!(
                            "{name}: level-{level} compaction left for the next start: {e}"
                        );
                        return;
                    }
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        let wait =
                            crate::util::backoff(self.failures, iv.max(Duration::from_secs(30)));
                        self.due[level] = now + wait;
                        log::warn!(
                            "{name}: level-{level} compaction failed (next try in {:.0}s): {e}",
                            wait.as_secs_f32()
                        );
                        break;
                    }
                }
            }
        }
        if let Some(window) = self.entry.retention {
            if now >= self.retention_due && self.retention_wanted() && !stop.load(Ordering::Relaxed)
            {
                self.retention_pass(storage, policy, window, now);
            }
        }
        self.check_presence(storage, policy, now);
    }

    fn retention_pass(
        &mut self,
        storage: &dyn Storage,
        policy: &Policy,
        window: Duration,
        now: Instant,
    ) {
        let name = self.entry.name.clone();
        let positions = self.positions();
        let check = retention_check_interval(window);
        let plan = match plan_retention(storage, &name, window, crate::util::now_ms()) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("{name}: retention pass failed: {e}");
                self.retention_due = now + check;
                return;
            }
        };
        self.retention_seen = Some(positions);
        // Wall-clock time of the next possible change, as an Instant.
        self.retention_next = plan
            .next_change
            .map(|t| match t.duration_since(SystemTime::now()) {
                Ok(ahead) => now + ahead,
                Err(_) => now,
            });
        let deletable: std::collections::HashSet<&str> =
            plan.delete.iter().map(|(o, _)| o.key.as_str()).collect();
        self.marks.retain(|k, _| deletable.contains(k.as_str()));
        let mut ripe = Vec::new();
        for (o, why) in &plan.delete {
            let since = *self.marks.entry(o.key.clone()).or_insert(now);
            if now.duration_since(since) >= policy.grace {
                log::debug!("{name}: retention deletes {}: {why}", o.key);
                ripe.push(o.key.clone());
            }
        }
        if !ripe.is_empty() {
            match delete_keys(storage, &ripe) {
                Ok(()) => {
                    log::info!(
                        "{name}: retention deleted {} object(s) outside the window (first state txid {})",
                        ripe.len(),
                        plan.t0.unwrap_or(0)
                    );
                    for k in &ripe {
                        self.marks.remove(k);
                    }
                }
                Err(e) => log::warn!("{name}: retention could not delete: {e}"),
            }
        }
        // Next pass: when marked objects are ripe; else when the window can
        // move (an idle database); while the database changes, at least
        // every `check` (the positions differ then).
        let mut due = now + check;
        if let Some(next) = self.retention_next {
            due = due.max(next);
        }
        if let Some(first) = self.marks.values().min() {
            due = due.min(*first + policy.grace);
        }
        self.retention_due = due.max(now + Duration::from_millis(100));
    }
}
