//! Compaction and retention: a replica that stays small and fast to restore
//! without ever losing a state a restore inside the retention window needs.
//!
//! Why a stage of its own: the capture protocol (`replicate`) ships one
//! level-0 object per group of commits, which is what makes commit→S3
//! latency low, but a busy database then leaves hundreds of thousands of
//! tiny objects a day. Restoring from them costs one GET each, and keeping
//! them forever grows the bucket without bound. Both jobs read what is
//! stored and write or delete objects; neither touches the WAL, so they run
//! on their own thread and never delay a commit's upload.
//!
//! # Compaction
//!
//! Level `L` (1–3) merges a chain of level-`L-1` objects into one object
//! every interval (30 s, 5 min, 1 h by default). A merged object covers
//! txids `first.min ..= last.max` and carries the last input's commit
//! (database size), timestamp and WAL position, so it is interchangeable
//! with its inputs for every reader: restore, Litestream, and the start-up
//! resume (which reads the newest object's WAL fields). For every page the
//! newest version wins and pages past the final size are dropped. One
//! subtlety goes beyond "newest page wins": when the database shrank below a
//! page inside the chain and grew again without rewriting it, sequential
//! application leaves that page zeroed (the restore truncates after every
//! object); the merged object then carries an explicit zero page so it
//! yields the identical file on any base.
//!
//! A level-`L` object starts right after the previous level-`L` object or
//! right after a snapshot: walsync stores a snapshot under a txid of its own
//! (level 9), so level 0 has a hole at every snapshot txid and a merge never
//! spans one. Each pass first checks the daemon's in-memory counters; an idle
//! database makes no request at all.
//!
//! # Retention
//!
//! A restore to any moment inside the window (`--retention`, 24 h by
//! default) must keep working, exactly, for every txid. Let `T0` be the
//! state at the window's start: the newest txid whose timestamp is at or
//! before `now − retention`. Every restore target inside the window is
//! `≥ T0`, and its chain (greedy, as `restore` plans it) is a prefix of the
//! chain to `T0` followed by objects ending after `T0`. So the objects kept
//! are exactly:
//!
//! - every object whose max txid is after `T0` (they hold the window), and
//! - the chain restoring `T0` itself (its newest snapshot, then the fewest
//!   compacted objects and level-0 objects reaching `T0`).
//!
//! Everything else ends at or before `T0` and is on no such chain: it is
//! deleted, but only after it has been deletable for a grace period (5 min
//! by default), so a restore planned before it became deletable finishes
//! first; a restore that still meets a deleted object re-plans (`restore`).
//! Retention is computed from the chain, never from an object's age alone,
//! and when the window's first state has no complete chain (a damaged
//! replica) nothing at all is deleted.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::ltx::{self, Decoder, Header, SNAPSHOT_LEVEL};
pub use crate::recent::Recent;
use crate::replicate::DbStats;
use crate::restore::{self, ReplicaObject, SPOOL_THRESHOLD};
use crate::segment::{self, Encoded, MEMORY_LIMIT};
use crate::storage::Storage;
use crate::upload::Body;

pub use crate::ltx::MAX_LEVEL;

/// Default intervals of levels 1, 2 and 3.
pub const DEFAULT_INTERVALS: [Duration; 3] = [
    Duration::from_secs(30),
    Duration::from_secs(5 * 60),
    Duration::from_secs(60 * 60),
];

pub use crate::defaults::DEFAULT_RETENTION;

/// Default time an object stays deletable before it is deleted.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5 * 60);

/// At most this many objects go into one merged object (a long backlog is
/// merged in several objects, one after the other).
pub const MAX_INPUTS: usize = 10_000;

/// Keys per DELETE request (the S3 limit).
const DELETE_BATCH: usize = 1000;

// ---------------------------------------------------------------------------
// Merge
// ---------------------------------------------------------------------------

/// Where merged pages wait for the output: memory while small, then a
/// temporary file (a level-3 merge of a large database must not hold the
/// database in memory).
struct PageStore {
    page_size: usize,
    mem: Vec<u8>,
    file: Option<(File, u64)>,
    tmp_dir: PathBuf,
    /// Page number → offset of its newest version in the store.
    pages: std::collections::BTreeMap<u32, u64>,
}

impl PageStore {
    fn new(page_size: u32, tmp_dir: &Path) -> PageStore {
        PageStore {
            page_size: page_size as usize,
            mem: Vec::new(),
            file: None,
            tmp_dir: tmp_dir.to_path_buf(),
            pages: std::collections::BTreeMap::new(),
        }
    }

    fn put(&mut self, pgno: u32, data: &[u8]) -> Result<()> {
        let at = match &mut self.file {
            Some((f, len)) => {
                f.write_all_at(data, *len)
                    .map_err(|e| Error::io(&self.tmp_dir, e))?;
                let at = *len;
                *len += data.len() as u64;
                at
            }
            None if (self.mem.len() + data.len()) as u64 > MEMORY_LIMIT => {
                let mut f = tempfile::tempfile_in(&self.tmp_dir)
                    .map_err(|e| Error::io(&self.tmp_dir, e))?;
                f.write_all(&self.mem)
                    .and_then(|()| f.write_all(data))
                    .map_err(|e| Error::io(&self.tmp_dir, e))?;
                let at = self.mem.len() as u64;
                self.file = Some((f, at + data.len() as u64));
                self.mem = Vec::new();
                at
            }
            None => {
                let at = self.mem.len() as u64;
                self.mem.extend_from_slice(data);
                at
            }
        };
        self.pages.insert(pgno, at);
        Ok(())
    }

    fn read(&self, at: u64, buf: &mut [u8]) -> Result<()> {
        match &self.file {
            Some((f, _)) => f
                .read_exact_at(buf, at)
                .map_err(|e| Error::io(&self.tmp_dir, e)),
            None => {
                let at = at as usize;
                buf.copy_from_slice(&self.mem[at..at + self.page_size]);
                Ok(())
            }
        }
    }

    /// The database shrank to `commit` pages.
    fn truncate(&mut self, commit: u32) {
        let _ = self.pages.split_off(&(commit.saturating_add(1)));
    }
}

/// Where a merge works: temporary files, a flag that stops it between
/// objects, and the cache of just-stored bodies.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// Directory for temporary files.
    pub tmp_dir: &'a Path,
    /// Set to stop between objects (shutdown).
    pub cancel: &'a AtomicBool,
    /// Bodies read instead of GETs, when the daemon keeps them.
    pub recent: Option<&'a Recent>,
}

/// Merge `inputs` — a chain (each starting at or before the txid after the
/// previous one's end, ending after it) of one database — into one object at
/// `level`. Every input is verified (SHA-256 metadata, header against name,
/// LTX checksums) before anything is produced. `root` names objects in
/// messages (`s3://bucket/prefix`); `cancel` stops between inputs.
pub fn merge(
    storage: &dyn Storage,
    root: &str,
    inputs: &[ReplicaObject],
    ctx: &Ctx<'_>,
) -> Result<Encoded> {
    let (tmp_dir, cancel, recent) = (ctx.tmp_dir, ctx.cancel, ctx.recent);
    let (Some(first_obj), Some(_)) = (inputs.first(), inputs.last()) else {
        return Err(Error::Config("internal: nothing to merge".into()));
    };
    let mut store: Option<PageStore> = None;
    let mut first: Option<Header> = None;
    let mut last: Option<Header> = None;
    let mut low = u32::MAX;
    let mut buf = Vec::new();
    for o in inputs {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Config("compaction stopped (shutting down)".into()));
        }
        let name = format!("{root}/{}", o.key);
        let reader: Box<dyn std::io::Read + Send> = match recent.and_then(|r| r.take(&o.key)) {
            Some(bytes) => Box::new(std::io::Cursor::new(bytes)),
            None => restore::fetch(storage, o, &name, tmp_dir, SPOOL_THRESHOLD)?.reader(),
        };
        let mut dec = Decoder::new(reader, name.clone())?;
        let h = *dec.header();
        restore::check_header_matches(&h, o, &name)?;
        if let Some(prev) = last {
            if h.page_size != prev.page_size {
                return Err(Error::ltx(
                    &name,
                    format!(
                        "page size {} differs from {} of the objects before it; not merged",
                        h.page_size, prev.page_size
                    ),
                ));
            }
            if h.min_txid > prev.max_txid + 1 || h.max_txid <= prev.max_txid {
                return Err(Error::ltx(
                    &name,
                    format!(
                        "txids {}..{} do not continue txid {}; not merged",
                        h.min_txid, h.max_txid, prev.max_txid
                    ),
                ));
            }
        }
        let st = store.get_or_insert_with(|| PageStore::new(h.page_size, tmp_dir));
        buf.resize(h.page_size as usize, 0);
        while let Some(pgno) = dec.next_page(&mut buf)? {
            st.put(pgno, &buf)?;
        }
        st.truncate(h.commit);
        low = low.min(h.commit);
        first.get_or_insert(h);
        last = Some(h);
    }
    let (Some(first), Some(last), Some(store)) = (first, last, store) else {
        return Err(Error::Config("internal: nothing to merge".into()));
    };
    debug_assert_eq!(first.min_txid, first_obj.min_txid);
    let mut header = Header::new(
        last.page_size,
        last.commit,
        first.min_txid,
        last.max_txid,
        last.timestamp_ms,
    );
    // The position after the last input: a daemon resuming from this
    // object continues exactly where it would from that input.
    header.wal_offset = last.wal_offset;
    header.wal_size = last.wal_size;
    header.wal_salt1 = last.wal_salt1;
    header.wal_salt2 = last.wal_salt2;
    header.node_id = last.node_id;
    let commit = last.commit;
    let lock = ltx::lock_pgno(last.page_size);
    let ps = last.page_size as usize;
    // Pages above `low` that no input rewrote after the database last
    // shrank below them read as zeros after sequential application.
    let zero_from = low.saturating_add(1);
    let zero_fill = zero_from..=commit;
    let count = store.pages.len() as u64 + u64::from(commit.saturating_sub(low));
    segment::encode_with(header, count * ps as u64, tmp_dir, |w| {
        let mut page = vec![0u8; ps];
        let zero = vec![0u8; ps];
        for (&pgno, &at) in store.pages.range(..zero_from) {
            store.read(at, &mut page)?;
            w.page(pgno, &page)?;
        }
        for pgno in zero_fill.filter(|p| *p != lock) {
            match store.pages.get(&pgno) {
                Some(&at) => {
                    store.read(at, &mut page)?;
                    w.page(pgno, &page)?;
                }
                None => w.page(pgno, &zero)?,
            }
        }
        Ok(())
    })
}

/// Store an encoded object under `key` (streamed from its temp file when it
/// has one).
fn put_encoded(
    storage: &dyn Storage,
    key: &str,
    enc: Encoded,
    recent: Option<&Recent>,
) -> Result<u64> {
    match &enc.body {
        Body::Memory(b) => {
            storage.put(key, b, &enc.meta)?;
            let n = b.len() as u64;
            if let (Some(r), Body::Memory(b)) = (recent, enc.body) {
                r.offer(key, b);
            }
            Ok(n)
        }
        Body::File(p) => {
            let n = enc.body.len()?;
            storage.put_file(key, p, &enc.meta).map(|()| n)
        }
    }
}

// ---------------------------------------------------------------------------
// One level's pass
// ---------------------------------------------------------------------------

fn parse_level_objects(
    db: &str,
    level: u8,
    listing: Vec<crate::storage::ObjectInfo>,
) -> Vec<ReplicaObject> {
    let mut out = Vec::new();
    for info in listing {
        match ltx::parse_object_key("", &info.key) {
            Some(k) if k.db == db && k.level == level => out.push(ReplicaObject {
                key: info.key,
                level,
                min_txid: k.min_txid,
                max_txid: k.max_txid,
                size: info.size,
            }),
            _ => log::debug!(
                "{db}: compaction skips {} (not an LTX object name)",
                info.key
            ),
        }
    }
    out.sort_by_key(|o| (o.min_txid, o.max_txid));
    out
}

/// The chain of level-`level - 1` objects a level-`level` object would
/// merge next, starting right after txid `pos` (at most [`MAX_INPUTS`]).
/// `Ok(None)`: nothing to merge.
///
/// When nothing continues `pos` exactly, the chain starts at the first
/// object after the hole. That is always safe: a merged object is exactly
/// its inputs, and a restore uses it only where a chain reaches its first
/// txid, as it would use the inputs. Holes are normal: a snapshot's own txid
/// (level 9 only), or a level left empty by retention after a long idle
/// spell (the chain then continues from a higher level's object).
pub fn next_inputs(
    storage: &dyn Storage,
    db: &str,
    level: u8,
    pos: u64,
) -> Result<Option<Vec<ReplicaObject>>> {
    let src = level - 1;
    let dir = ltx::level_prefix("", db, src);
    let after = format!("{dir}{pos:016x}-ffffffffffffffff.ltx");
    let objects = parse_level_objects(db, src, storage.list(&dir, Some(&after))?);
    let continues = |objs: &[ReplicaObject]| {
        objs.iter()
            .any(|o| o.min_txid <= pos + 1 && o.max_txid > pos)
    };
    if objects.is_empty() {
        return Ok(None);
    }
    if !continues(&objects) && src > 0 {
        // Compacted levels are small: an object that starts before `pos`
        // and ends after it (two compactors wrote overlapping merges) is
        // only found in the whole listing.
        let all = parse_level_objects(db, src, storage.list(&dir, None)?);
        if continues(&all) {
            return Ok(chain_after(&all, pos));
        }
    }
    Ok(chain_after(&objects, pos))
}

/// Greedy chain (furthest reach first) through `objects` from `pos`, or
/// from the first object after `pos` when none continues it.
fn chain_after(objects: &[ReplicaObject], pos: u64) -> Option<Vec<ReplicaObject>> {
    let candidates: Vec<&ReplicaObject> = objects.iter().filter(|o| o.max_txid > pos).collect();
    let first_min = candidates.iter().map(|o| o.min_txid).min()?;
    let mut cur = pos.max(first_min - 1);
    let mut chain: Vec<ReplicaObject> = Vec::new();
    while chain.len() < MAX_INPUTS {
        let next = candidates
            .iter()
            .filter(|o| o.min_txid <= cur + 1 && o.max_txid > cur)
            .max_by_key(|o| (o.max_txid, std::cmp::Reverse(o.size)));
        match next {
            Some(o) => {
                cur = o.max_txid;
                chain.push((*o).clone());
            }
            None => break,
        }
    }
    (!chain.is_empty()).then_some(chain)
}

/// Merge the next chain of level-`level - 1` objects after `pos` into one
/// level-`level` object and store it. Returns the stored object, or `None`
/// when there was nothing to merge.
pub fn compact_level(
    storage: &dyn Storage,
    db: &str,
    level: u8,
    pos: u64,
    ctx: &Ctx<'_>,
) -> Result<Option<ReplicaObject>> {
    if !(1..=MAX_LEVEL).contains(&level) {
        return Err(Error::Config(format!("internal: compaction level {level}")));
    }
    let Some(inputs) = next_inputs(storage, db, level, pos)? else {
        return Ok(None);
    };
    let root = storage.describe();
    let enc = merge(storage, &root, &inputs, ctx)?;
    let h = enc.header;
    let key = ltx::object_key("", db, level, h.min_txid, h.max_txid);
    let size = put_encoded(storage, &key, enc, ctx.recent)?;
    log::debug!(
        "{db}: compacted {} level-{} object(s) into {key} (txids {}..{}, {size} bytes)",
        inputs.len(),
        level - 1,
        h.min_txid,
        h.max_txid
    );
    Ok(Some(ReplicaObject {
        key,
        level,
        min_txid: h.min_txid,
        max_txid: h.max_txid,
        size,
    }))
}

// ---------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------

/// What retention decided for one database.
#[derive(Debug, Clone, Default)]
pub struct RetentionPlan {
    /// The window's first state (`None`: every object is inside the window).
    pub t0: Option<u64>,
    /// Objects to delete, each with the reason.
    pub delete: Vec<(ReplicaObject, String)>,
    /// Objects kept.
    pub keep: usize,
    /// Objects kept only because they end after the window's first state
    /// (they become deletable later, as the window moves).
    pub in_window: usize,
    /// When the window's first state can next move: the oldest store time
    /// of an object inside the window, plus the window (`None`: nothing
    /// inside the window — until new objects arrive nothing can change).
    pub next_change: Option<SystemTime>,
}

/// Decide what retention may delete for `db` at wall-clock `now_ms`.
pub fn plan_retention(
    storage: &dyn Storage,
    db: &str,
    retention: Duration,
    now_ms: i64,
) -> Result<RetentionPlan> {
    let (replica, times) = restore::list_replica_with_times(storage, db)?;
    if replica.is_empty() {
        return Ok(RetentionPlan::default());
    }
    let window_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(window_ms);
    // An object's timestamp is at or before its store time, so the window
    // cannot move past it before `stored + retention`.
    let next_change = |after: u64| {
        replica
            .objects
            .iter()
            .filter(|o| o.max_txid > after)
            .filter_map(|o| times.get(&o.key))
            .min()
            .map(|t| *t + retention)
    };
    let t0 = match replica.newest_at(storage, cutoff)? {
        Ok(t0) => t0,
        Err(_) => {
            return Ok(RetentionPlan {
                t0: None,
                delete: Vec::new(),
                keep: replica.objects.len(),
                in_window: replica.objects.len(),
                next_change: next_change(0),
            })
        }
    };
    let chain = match replica.chain(t0) {
        Ok(c) => c,
        Err(e) => {
            log::warn!(
                "{db}: retention deletes nothing: the state at the window's start (txid {t0}) \
                 cannot be restored from the replica: {e}"
            );
            return Ok(RetentionPlan {
                t0: Some(t0),
                delete: Vec::new(),
                keep: replica.objects.len(),
                in_window: 0,
                next_change: None,
            });
        }
    };
    let needed: std::collections::HashSet<&str> = chain.iter().map(|o| o.key.as_str()).collect();
    let first = chain.first().map(|o| o.key.clone()).unwrap_or_default();
    let mut plan = RetentionPlan {
        t0: Some(t0),
        next_change: next_change(t0),
        ..RetentionPlan::default()
    };
    for o in &replica.objects {
        if o.max_txid > t0 {
            plan.keep += 1;
            plan.in_window += 1;
        } else if needed.contains(o.key.as_str()) {
            plan.keep += 1;
        } else {
            let why = if o.level == SNAPSHOT_LEVEL {
                format!(
                    "snapshot at txid {} is older than the window's first state (txid {t0}), \
                     which restores from {first}",
                    o.max_txid
                )
            } else {
                format!(
                    "txids {}..{} end at or before the window's first state (txid {t0}) \
                     and are not on its restore chain ({} objects from {first})",
                    o.min_txid,
                    o.max_txid,
                    chain.len()
                )
            };
            plan.delete.push((o.clone(), why));
        }
    }
    Ok(plan)
}

/// Delete `keys` in batches.
pub fn delete_keys(storage: &dyn Storage, keys: &[String]) -> Result<()> {
    for batch in keys.chunks(DELETE_BATCH) {
        storage.delete_many(batch)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The daemon's compactor thread
// ---------------------------------------------------------------------------

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
    /// Bodies just stored, read instead of GETs (see [`Recent`]).
    pub recent: Option<Arc<Recent>>,
    /// How often a shipping database's newest snapshot is checked to be
    /// still stored ([`PRESENCE_CHECK`]).
    pub presence_check: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            intervals: DEFAULT_INTERVALS.map(Some),
            grace: DEFAULT_GRACE,
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
            recv(rx) -> e => if let Ok(e) = e { dbs.push(DbState::new(e, policy)) },
            recv(stop_rx) -> _ => return,
            recv(tick) -> _ => {}
        }
        while let Ok(e) = rx.try_recv() {
            dbs.push(DbState::new(e, policy));
        }
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
            retention_due: now + policy.intervals[0].unwrap_or(DEFAULT_INTERVALS[0]),
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
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        let wait =
                            crate::upload::backoff(self.failures, iv.max(Duration::from_secs(30)));
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
        let plan = match plan_retention(storage, &name, window, ltx::now_ms()) {
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

// ---------------------------------------------------------------------------
// `walsync compact`
// ---------------------------------------------------------------------------

/// What `walsync compact` did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default)]
pub struct ByHand {
    /// Objects written per level (index 1..=3).
    pub written: [usize; 4],
    /// Objects deleted (or that would be).
    pub deleted: usize,
    /// Objects kept.
    pub kept: usize,
}

/// Compact every level of `db` as far as it goes, then apply retention
/// (`None`: keep everything), printing one line per action to `out`. With
/// `dry_run` nothing is written or deleted: the lines say what would be.
/// Unlike the daemon, nothing waits for a grace period: a restore running
/// meanwhile that meets a deleted object plans again (see `restore`).
pub fn compact_by_hand(
    storage: &dyn Storage,
    db: &str,
    retention: Option<Duration>,
    dry_run: bool,
    now_ms: i64,
    tmp_dir: &Path,
    out: &mut dyn Write,
) -> Result<ByHand> {
    let db = db.trim_matches('/');
    let mut ends = [0u64; 10];
    for level in [0u8, 1, 2, 3, SNAPSHOT_LEVEL] {
        if let Some(last) = crate::replicate::last_in_level(storage, db, level)? {
            ends[usize::from(level)] = last.max_txid;
        }
    }
    if ends.iter().all(|e| *e == 0) {
        return Err(Error::Restore(format!(
            "{db}: no replica in {} (no objects under {db}/)",
            storage.describe()
        )));
    }
    let cancel = AtomicBool::new(false);
    let io = |e: std::io::Error| Error::io("stdout", e);
    let mut done = ByHand::default();
    for level in 1..=MAX_LEVEL {
        let l = usize::from(level);
        let mut pos = ends[l];
        // Bounded: each round consumes at least one object.
        for _ in 0..100_000 {
            if dry_run {
                if let Some(inputs) = next_inputs(storage, db, level, pos)? {
                    let (a, b) = (inputs[0].min_txid, inputs[inputs.len() - 1].max_txid);
                    writeln!(
                        out,
                        "would merge {} level-{} object(s), txids {a}..{b}, into {}",
                        inputs.len(),
                        level - 1,
                        ltx::object_key("", db, level, a, b)
                    )
                    .map_err(io)?;
                    done.written[l] += 1;
                    pos = b;
                    continue;
                }
                break;
            }
            let ctx = Ctx {
                tmp_dir,
                cancel: &cancel,
                recent: None,
            };
            match compact_level(storage, db, level, pos, &ctx)? {
                Some(o) => {
                    writeln!(
                        out,
                        "wrote {} (txids {}..{}, {} bytes)",
                        o.key, o.min_txid, o.max_txid, o.size
                    )
                    .map_err(io)?;
                    done.written[l] += 1;
                    pos = o.max_txid;
                }
                None => break,
            }
        }
    }
    let Some(window) = retention else {
        writeln!(out, "retention off: nothing deleted").map_err(io)?;
        return Ok(done);
    };
    let plan = plan_retention(storage, db, window, now_ms)?;
    done.kept = plan.keep;
    done.deleted = plan.delete.len();
    let verb = if dry_run { "would delete" } else { "delete" };
    for (o, why) in &plan.delete {
        writeln!(out, "{verb} {}: {why}", o.key).map_err(io)?;
    }
    if !dry_run {
        let keys: Vec<String> = plan.delete.iter().map(|(o, _)| o.key.clone()).collect();
        delete_keys(storage, &keys)?;
    }
    let window_text = humantime::format_duration(window);
    match plan.t0 {
        Some(t0) => writeln!(
            out,
            "{db}: retention {window_text}: window starts at txid {t0}; kept {}, {} {}",
            plan.keep,
            if dry_run { "would delete" } else { "deleted" },
            plan.delete.len()
        ),
        None => writeln!(
            out,
            "{db}: retention {window_text}: every object is inside the window; kept {}",
            plan.keep
        ),
    }
    .map_err(io)?;
    Ok(done)
}
