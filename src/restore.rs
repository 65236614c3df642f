//! Restore: rebuild a database file from its replica.
//!
//! Why this module matters more than any other: a backup is worth exactly
//! what its restore is worth. Every byte the daemon ships is only useful if
//! this code can turn the objects back into the database as it was at a
//! chosen transaction, refuse loudly when it cannot, and never leave a
//! half-written file where the user expects a database.
//!
//! A restore has two steps:
//!
//! 1. **Plan** ([`list_replica`], [`Replica::plan`], or [`plan`] for both):
//!    one listing of `<db>/` (all levels at once; every key must parse, a
//!    stray object under the database prefix is an error, not silently
//!    skipped), then a chain (bucket layout: [`crate::ltx::object_key`]): a full snapshot (any object
//!    with min txid 1, normally the newest level-9 snapshot at or before the
//!    target) followed by objects from any level satisfying
//!    `next.min ≤ prev.max + 1 < next.max + 1`, ending exactly at the target.
//!    The chain is chosen greedily: at every step the object reaching the
//!    furthest without passing the target. Because an object reachable from
//!    an earlier position is also reachable from a later one, greedy never
//!    misses a chain that exists and uses the fewest objects (fewest GETs):
//!    a compacted level-1 file replaces the level-0 files it covers.
//!
//!    A timestamp target is resolved to a txid first. The authoritative time
//!    of an object is the `timestamp_ms` field of its LTX header (the
//!    `litestream-timestamp` metadata is a copy of it, and objects written by
//!    Litestream's file backend have no metadata at all), read with a ranged
//!    GET of the first 100 bytes. Within one level objects are written in
//!    txid order, so their timestamps grow with their txids: a binary search
//!    per level finds the newest object whose timestamp is at or before the
//!    target with `O(log n)` small GETs per level instead of one HEAD per
//!    object (what Litestream does). The restored txid is the largest such
//!    object's max txid over all levels.
//!
//! 2. **Execute** ([`restore`]): a pool of threads GETs the planned objects
//!    in parallel while the calling thread applies them strictly in plan
//!    order. Memory is bounded: at most `2 × parallel` objects and
//!    `window_bytes` bytes are fetched ahead of the one being applied, and
//!    objects of [`SPOOL_THRESHOLD`] bytes or more are streamed through
//!    ranged GETs into an anonymous temporary file instead of memory.
//!    Every object is verified: its `walsync-sha256` metadata when present
//!    (Litestream's objects have none), its header against its name, and
//!    the LTX decoder's structural rules and file checksum. Pages are written
//!    with `pwrite` at `(pgno - 1) × page_size` into a temporary file next to
//!    the output, so the newest version of every page wins; after each object
//!    the file is cut to that object's commit size (a database that shrank
//!    and grew again must not resurrect stale pages). Then `PRAGMA
//!    integrity_check` must say `ok`, the file is fsynced, renamed into place
//!    (atomically, never over an existing file unless forced) and the
//!    directory is fsynced. On any failure a guard removes the temporary
//!    file (and any `-wal`/`-shm` SQLite made for the check): nothing is left
//!    at the output path.
//!
//! Every read goes through [`RetryReads`]: a transient failure (503, 500,
//! a reset connection) is retried a bounded number of times with backoff,
//! and a body that does not match its `walsync-sha256` metadata is fetched
//! again, before the restore gives up with the error naming the object.
//!
//! The restored file keeps the journal mode recorded in its header (WAL for
//! a database replicated from its WAL). It needs no `-wal` file: every
//! committed page is in the main file, and stale `OUT-wal`/`OUT-shm` files,
//! which SQLite would replay over the restored pages, are refused (or
//! removed with `force`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, IsTerminal, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result, StorageErrorKind};
use crate::ltx::{self, Decoder, Header};
use crate::segment::{hex, META_SHA256};
use crate::storage::{RetryReads, Storage};

/// Default number of download threads.
pub const DEFAULT_PARALLEL: usize = 8;
/// Default byte budget for objects fetched ahead of the one being applied.
pub const DEFAULT_WINDOW_BYTES: u64 = 256 << 20;
/// Objects at least this large are streamed to a temporary file with ranged
/// GETs instead of being held in memory.
pub const SPOOL_THRESHOLD: u64 = 64 << 20;
/// Times a restore plans again after a planned object disappeared.
const MAX_REPLANS: usize = 3;
/// Size of one ranged GET when spooling a large object.
const RANGE_CHUNK: u64 = 16 << 20;

/// Which state of the database to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The newest txid in the replica.
    Latest,
    /// Exactly this txid.
    Txid(u64),
    /// The newest txid whose object timestamp is at or before this time
    /// (milliseconds since the Unix epoch).
    Timestamp(i64),
}

/// One LTX object of a replica, as named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaObject {
    /// Key relative to the storage's prefix.
    pub key: String,
    /// Level (0 = per-sync segments, 1–8 compactions, 9 = snapshots).
    pub level: u8,
    /// First txid covered (1 = full snapshot).
    pub min_txid: u64,
    /// Last txid covered.
    pub max_txid: u64,
    /// Size in bytes, from the listing.
    pub size: u64,
}

/// Every LTX object stored for one database.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Database name (key prefix).
    pub db: String,
    /// Where the replica lives, for messages (`s3://bucket/prefix/db`).
    pub location: String,
    /// The objects, in key order.
    pub objects: Vec<ReplicaObject>,
}

/// The objects to apply, in order, to rebuild `db` at `txid`.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Database name.
    pub db: String,
    /// Where the replica lives, for messages.
    pub location: String,
    /// The txid the restored database will be at.
    pub txid: u64,
    /// A snapshot first, then objects with increasing txid ranges.
    pub objects: Vec<ReplicaObject>,
}

impl Plan {
    /// Total bytes to download.
    pub fn total_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// How [`restore`] runs.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Download threads (at least 1).
    pub parallel: usize,
    /// Replace an existing output file (and remove its stale `-wal`/`-shm`).
    pub force: bool,
    /// Show a progress line on stderr (only when it is a terminal and the
    /// restore takes more than a moment).
    pub progress: bool,
    /// Byte budget for objects fetched ahead of the one being applied.
    pub window_bytes: u64,
    /// Objects at least this large are spooled to a temporary file through
    /// ranged GETs instead of memory ([`SPOOL_THRESHOLD`] by default).
    pub spool_threshold: u64,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            parallel: DEFAULT_PARALLEL,
            force: false,
            progress: false,
            window_bytes: DEFAULT_WINDOW_BYTES,
            spool_threshold: SPOOL_THRESHOLD,
        }
    }
}

/// What a finished restore did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Database name.
    pub db: String,
    /// The txid restored.
    pub txid: u64,
    /// Objects downloaded and applied.
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Page size of the restored database.
    pub page_size: u32,
    /// Pages in the restored database.
    pub pages: u32,
    /// Wall-clock time of the restore.
    pub elapsed: Duration,
    /// Where the database was written.
    pub output: PathBuf,
}

impl Summary {
    /// One line for humans: what was restored, where, how much and how fast.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let mb = self.bytes as f64 / 1e6;
        let rate = if secs > 0.0 { mb / secs } else { 0.0 };
        format!(
            "restored {} at txid {} to {}: {} objects, {} bytes, {} pages of {} bytes, {secs:.2} s, {rate:.1} MB/s",
            self.db,
            self.txid,
            self.output.display(),
            self.objects,
            self.bytes,
            self.pages,
            self.page_size,
        )
    }
}

// ---------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------

/// List and plan in one call: [`plan_by_level`] for the newest state or a
/// txid, falling back to [`list_replica`] then [`Replica::plan`] (which
/// also explains why no chain exists).
pub fn plan(storage: &dyn Storage, db: &str, target: Target) -> Result<Plan> {
    if let Some(plan) = plan_by_level(storage, db, target)? {
        return Ok(plan);
    }
    list_replica(storage, db)?.plan(storage, target)
}

/// Plan without listing the whole replica: list the snapshots, take the
/// newest one at or before the target, extend the chain through levels 3, 2
/// and 1 (listed whole: they are small), then list level 0 only after the
/// position reached. A busy database
/// keeps a day of level-0 objects for point-in-time restores; restoring the
/// newest state this way reads a handful of listing pages instead of all of
/// them. `Ok(None)` when this finds no exact chain (or the target is a
/// timestamp): the caller then plans from the full listing, which finds
/// every chain that exists and explains a missing one.
pub fn plan_by_level(storage: &dyn Storage, db: &str, target: Target) -> Result<Option<Plan>> {
    let storage = &RetryReads(storage);
    let db = db.trim_matches('/');
    let limit = match target {
        Target::Latest => u64::MAX,
        Target::Txid(t) if t >= 1 => t,
        _ => return Ok(None),
    };
    let level_objects = |level: u8, after: Option<String>| -> Result<Vec<ReplicaObject>> {
        let dir = ltx::level_prefix("", db, level);
        let mut out = Vec::new();
        let mut after = after;
        loop {
            let page = storage.list_page(&dir, after.as_deref(), 1000)?;
            let full = page.len() == 1000;
            after = page.last().map(|o| o.key.clone());
            for info in page {
                let k = ltx::parse_object_key("", &info.key)
                    .filter(|k| k.db == db && k.level == level)
                    .ok_or_else(|| {
                        Error::Restore(format!(
                            "{db}: unparseable object name {}/{} under the database prefix \
                             (expected {db}/<level %04x>/<min txid %016x>-<max txid %016x>.ltx)",
                            storage.describe(),
                            info.key
                        ))
                    })?;
                out.push(ReplicaObject {
                    key: info.key,
                    level,
                    min_txid: k.min_txid,
                    max_txid: k.max_txid,
                    size: info.size,
                });
            }
            // Past the target: later pages cannot help.
            if !full || out.last().is_some_and(|o| o.min_txid > limit) {
                return Ok(out);
            }
        }
    };
    let snapshots = level_objects(ltx::SNAPSHOT_LEVEL, None)?;
    if snapshots.iter().any(|o| o.min_txid != 1) {
        return Ok(None); // list_replica reports it
    }
    let mut newest = snapshots.iter().map(|o| o.max_txid).max().unwrap_or(0);
    let Some(base) = snapshots
        .iter()
        .filter(|o| o.max_txid <= limit)
        .max_by_key(|o| (o.max_txid, Reverse(o.size)))
        .cloned()
    else {
        return Ok(None);
    };
    let mut pos = base.max_txid;
    let mut objects = vec![base];
    for level in [3u8, 2, 1, 0] {
        // Compacted levels are small (retention trims them too) and may hold
        // an object that starts before the snapshot and ends after it:
        // list them whole. Level 0 is the big one: only after the position.
        let after = (level == 0).then(|| {
            format!(
                "{}{pos:016x}-ffffffffffffffff.ltx",
                ltx::level_prefix("", db, 0)
            )
        });
        let found = level_objects(level, after)?;
        newest = newest.max(found.iter().map(|o| o.max_txid).max().unwrap_or(0));
        loop {
            let next = found
                .iter()
                .filter(|o| o.min_txid <= pos + 1 && o.max_txid > pos && o.max_txid <= limit)
                .max_by_key(|o| (o.max_txid, Reverse(o.size)));
            match next {
                Some(o) => {
                    pos = o.max_txid;
                    objects.push(o.clone());
                }
                None => break,
            }
        }
    }
    let txid = if limit == u64::MAX { newest } else { limit };
    if pos != txid {
        return Ok(None);
    }
    Ok(Some(Plan {
        db: db.to_string(),
        location: format!("{}/{db}", storage.describe()),
        txid,
        objects,
    }))
}

/// Lists every object under `<db>/` with one (paginated) listing.
///
/// Keys of databases nested below this one (`<db>/<sub>/<level>/…`) are
/// skipped; any other key that is not `<db>/<level %04x>/<min %016x>-<max
/// %016x>.ltx`, and any level-9 object that is not a snapshot, is an error
/// naming the key: restoring around objects nobody can explain is how data
/// gets lost quietly.
pub fn list_replica(storage: &dyn Storage, db: &str) -> Result<Replica> {
    list_replica_with_times(storage, db).map(|(r, _)| r)
}

/// [`list_replica`], also returning when each object was stored (from the
/// listing; retention uses it to know when to look again).
pub(crate) fn list_replica_with_times(
    storage: &dyn Storage,
    db: &str,
) -> Result<(Replica, HashMap<String, SystemTime>)> {
    let storage = &RetryReads(storage);
    let db = db.trim_matches('/');
    if db.is_empty() {
        return Err(Error::Config("empty database name".into()));
    }
    let location = format!("{}/{db}", storage.describe());
    let prefix = format!("{db}/");
    let mut objects = Vec::new();
    let mut times = HashMap::new();
    for info in storage.list(&prefix, None)? {
        match ltx::parse_object_key("", &info.key) {
            Some(k) if k.db == db => {
                if k.level == ltx::SNAPSHOT_LEVEL && k.min_txid != 1 {
                    return Err(Error::Restore(format!(
                        "{db}: level-9 object {}/{} is not a snapshot (its min txid is {}, not 1)",
                        storage.describe(),
                        info.key,
                        k.min_txid
                    )));
                }
                if let Some(t) = info.last_modified {
                    times.insert(info.key.clone(), t);
                }
                objects.push(ReplicaObject {
                    key: info.key,
                    level: k.level,
                    min_txid: k.min_txid,
                    max_txid: k.max_txid,
                    size: info.size,
                });
            }
            Some(k) => log::debug!("{db}: skipping {} (database {})", info.key, k.db),
            None => {
                return Err(Error::Restore(format!(
                    "{db}: unparseable object name {}/{} under the database prefix \
                     (expected {db}/<level %04x>/<min txid %016x>-<max txid %016x>.ltx)",
                    storage.describe(),
                    info.key
                )))
            }
        }
    }
    Ok((
        Replica {
            db: db.to_string(),
            location,
            objects,
        },
        times,
    ))
}

impl Replica {
    /// True when the database has no object at all.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The newest txid any object reaches (0 when empty).
    pub fn newest_txid(&self) -> u64 {
        self.objects.iter().map(|o| o.max_txid).max().unwrap_or(0)
    }

    fn no_replica(&self) -> Error {
        Error::Restore(format!(
            "{}: no replica at {} (no objects under {}/)",
            self.db, self.location, self.db
        ))
    }

    /// The chain of objects restoring `target`. `storage` is only used to
    /// read object headers for a [`Target::Timestamp`].
    pub fn plan(&self, storage: &dyn Storage, target: Target) -> Result<Plan> {
        let storage = &RetryReads(storage);
        if self.is_empty() {
            return Err(self.no_replica());
        }
        let newest = self.newest_txid();
        let txid = match target {
            Target::Latest => newest,
            Target::Txid(0) => {
                return Err(Error::Restore(format!(
                    "{}: txid 0 does not exist (txids start at 1)",
                    self.db
                )))
            }
            Target::Txid(t) if t > newest => {
                return Err(Error::Restore(format!(
                    "{}: txid {t} is beyond the newest txid {newest} in {}",
                    self.db, self.location
                )))
            }
            Target::Txid(t) => t,
            Target::Timestamp(ms) => self.txid_at(storage, ms)?,
        };
        let objects = self.chain(txid)?;
        Ok(Plan {
            db: self.db.clone(),
            location: self.location.clone(),
            txid,
            objects,
        })
    }

    /// Greedy chain ending exactly at `target` (see the module docs).
    pub(crate) fn chain(&self, target: u64) -> Result<Vec<ReplicaObject>> {
        let mut files: Vec<&ReplicaObject> = self
            .objects
            .iter()
            .filter(|o| o.max_txid <= target)
            .collect();
        files.sort_by_key(|o| (o.min_txid, o.max_txid));
        // Max-heap: reach furthest, then higher level, then smaller object.
        let mut heap: BinaryHeap<(u64, u8, Reverse<u64>, Reverse<usize>)> = BinaryHeap::new();
        let mut out: Vec<ReplicaObject> = Vec::new();
        let mut pos = 0u64;
        let mut next = 0usize;
        while pos < target {
            while let Some(f) = files.get(next) {
                if f.min_txid > pos + 1 {
                    break;
                }
                heap.push((f.max_txid, f.level, Reverse(f.size), Reverse(next)));
                next += 1;
            }
            while heap.peek().is_some_and(|top| top.0 <= pos) {
                heap.pop();
            }
            match heap.pop() {
                Some((max, _, _, Reverse(i))) => {
                    out.push(files[i].clone());
                    pos = max;
                }
                None => return Err(self.chain_error(target, pos, out.last())),
            }
        }
        Ok(out)
    }

    fn chain_error(&self, target: u64, pos: u64, prev: Option<&ReplicaObject>) -> Error {
        let db = &self.db;
        let loc = &self.location;
        let Some(prev) = prev else {
            let first = self
                .objects
                .iter()
                .filter(|o| o.min_txid == 1)
                .min_by_key(|o| (o.max_txid, Reverse(o.level)));
            return Error::Restore(match first {
                Some(s) => format!(
                    "{db}: txid {target} is before the first snapshot {} (txid {}); \
                     the replica cannot restore an earlier state",
                    self.full(&s.key),
                    s.max_txid
                ),
                None => format!(
                    "{db}: no snapshot in {loc} (no object with min txid 1), cannot restore txid {target}"
                ),
            });
        };
        let missing = pos + 1;
        // What the chain could use next, and what covers the hole but ends
        // past the target (e.g. a later snapshot).
        let after = self
            .objects
            .iter()
            .filter(|o| o.min_txid > missing && o.max_txid <= target)
            .min_by_key(|o| (o.min_txid, Reverse(o.max_txid)));
        let over = self
            .objects
            .iter()
            .filter(|o| o.min_txid <= missing && o.max_txid > target)
            .min_by_key(|o| (o.max_txid, Reverse(o.level)));
        let over_note = over
            .map(|o| {
                format!(
                    "; {} covers txid {missing} but ends at txid {}",
                    self.full(&o.key),
                    o.max_txid
                )
            })
            .unwrap_or_default();
        Error::Restore(match after {
            Some(n) => format!(
                "{db}: gap in the replica: txids {missing}..{} are in no object \
                 (between {} and {}); cannot restore txid {target}{over_note}",
                n.min_txid - 1,
                self.full(&prev.key),
                self.full(&n.key)
            ),
            None if over.is_some() => format!(
                "{db}: cannot restore exactly txid {target}: after {} (txid {pos}) \
                 no object ends at or before it{over_note}",
                self.full(&prev.key)
            ),
            None => format!(
                "{db}: gap in the replica: txids {missing}..{target} are in no object \
                 (nothing after {}); cannot restore txid {target}",
                self.full(&prev.key)
            ),
        })
    }

    /// `s3://bucket/prefix/<key>` for messages.
    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}/{key}", storage_root(&self.location, &self.db))
    }

    /// The newest txid whose object timestamp is at or before `ms`: a binary
    /// search per level over header timestamps (see the module docs).
    pub(crate) fn txid_at(&self, storage: &dyn Storage, ms: i64) -> Result<u64> {
        match self.newest_at(storage, ms)? {
            Ok(txid) => Ok(txid),
            Err(oldest) => {
                let when = ltx::format_timestamp_ms(ms).unwrap_or_else(|_| format!("{ms} ms"));
                let oldest = oldest
                    .map(|(ts, key)| {
                        let t = ltx::format_timestamp_ms(ts).unwrap_or_else(|_| format!("{ts} ms"));
                        format!("; the oldest object, {}, is from {t}", self.full(&key))
                    })
                    .unwrap_or_default();
                Err(Error::Restore(format!(
                    "{}: nothing in the replica is as old as {when}{oldest}",
                    self.db
                )))
            }
        }
    }

    /// [`Replica::txid_at`] without the error: `Ok(Ok(txid))`, or
    /// `Ok(Err(oldest))` when no object is that old (`oldest` = timestamp
    /// and key of the oldest object, if any).
    #[allow(clippy::type_complexity)]
    pub(crate) fn newest_at(
        &self,
        storage: &dyn Storage,
        ms: i64,
    ) -> Result<std::result::Result<u64, Option<(i64, String)>>> {
        let mut by_level: BTreeMap<u8, Vec<&ReplicaObject>> = BTreeMap::new();
        for o in &self.objects {
            by_level.entry(o.level).or_default().push(o);
        }
        let mut cache: HashMap<String, i64> = HashMap::new();
        let mut best: Option<u64> = None;
        let mut oldest: Option<(i64, String)> = None;
        for files in by_level.values_mut() {
            files.sort_by_key(|o| (o.max_txid, o.min_txid));
            // Invariant: files[..lo] have ts ≤ ms, files[hi..] have ts > ms.
            let (mut lo, mut hi) = (0usize, files.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let ts = self.timestamp_of(storage, files[mid], &mut cache)?;
                if ts <= ms {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if lo > 0 {
                let txid = files[lo - 1].max_txid;
                best = Some(best.map_or(txid, |b| b.max(txid)));
            } else if let Some(first) = files.first() {
                let ts = self.timestamp_of(storage, first, &mut cache)?;
                if oldest.as_ref().is_none_or(|(t, _)| ts < *t) {
                    oldest = Some((ts, first.key.clone()));
                }
            }
        }
        Ok(best.ok_or(oldest))
    }

    fn timestamp_of(
        &self,
        storage: &dyn Storage,
        o: &ReplicaObject,
        cache: &mut HashMap<String, i64>,
    ) -> Result<i64> {
        if let Some(ts) = cache.get(&o.key) {
            return Ok(*ts);
        }
        let bytes = storage.get_range(&o.key, 0, Some(ltx::HEADER_SIZE as u64))?;
        let name = self.full(&o.key);
        let h = Header::decode(&bytes).map_err(|r| Error::ltx(name.clone(), r))?;
        check_header_matches(&h, o, &name)?;
        cache.insert(o.key.clone(), h.timestamp_ms);
        Ok(h.timestamp_ms)
    }
}

/// The storage root (`s3://bucket/prefix`) from a replica location
/// (`s3://bucket/prefix/<db>`).
fn storage_root<'a>(location: &'a str, db: &str) -> &'a str {
    location
        .strip_suffix(db)
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or(location)
}

pub(crate) fn check_header_matches(h: &Header, o: &ReplicaObject, name: &str) -> Result<()> {
    if h.min_txid != o.min_txid || h.max_txid != o.max_txid {
        return Err(Error::ltx(
            name,
            format!(
                "header says txids {}..{} but the object name says {}..{}",
                h.min_txid, h.max_txid, o.min_txid, o.max_txid
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Execute
// ---------------------------------------------------------------------------

/// Removes the temporary database (and the `-wal`, `-shm` and `-journal`
/// files SQLite may create next to it) unless disarmed.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    fn sidecars(path: &Path) -> [PathBuf; 3] {
        ["-wal", "-shm", "-journal"].map(|s| {
            let mut p = path.as_os_str().to_owned();
            p.push(s);
            PathBuf::from(p)
        })
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in Self::sidecars(&self.path) {
            let _ = fs::remove_file(p);
        }
        let _ = fs::remove_file(&self.path);
    }
}

/// A downloaded, SHA-256-checked object.
enum Body {
    Memory(Vec<u8>),
    Spooled(File),
}

/// A downloaded object whose `walsync-sha256` (when present) matched.
pub(crate) struct Fetched {
    body: Body,
}

impl Fetched {
    /// Its bytes, from memory or from the spool file.
    pub(crate) fn reader(self) -> Box<dyn Read + Send> {
        match self.body {
            Body::Memory(bytes) => Box::new(io::Cursor::new(bytes)),
            Body::Spooled(f) => Box::new(BufReader::with_capacity(1 << 20, f)),
        }
    }
}

/// Restore `plan` into the file `out`. See the module docs for the steps and
/// guarantees; on error nothing is left at `out` (an existing file there is
/// untouched unless the error came after a forced rename, which is last).
pub fn restore(
    storage: &dyn Storage,
    plan: &Plan,
    out: &Path,
    opts: &RestoreOptions,
) -> Result<Summary> {
    let storage = &RetryReads(storage);
    let start = Instant::now();
    if plan.objects.is_empty() {
        return Err(Error::Restore(format!("{}: empty restore plan", plan.db)));
    }
    let stale = check_output(out, opts.force)?;
    let (dir, name) = split_output(out)?;
    remove_abandoned_temps(&dir, &name);
    let tmp_path = dir.join(format!(
        ".{name}.walsync-restore-{}-{:x}.tmp",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp_path)
        .map_err(|e| {
            Error::io(
                &dir,
                io::Error::new(e.kind(), format!("cannot create the restore file: {e}")),
            )
        })?;
    let mut guard = TempGuard {
        path: tmp_path.clone(),
        armed: true,
    };

    // An object deleted meanwhile (retention or `walsync compact` replaced
    // it by a compacted one) is no reason to fail: plan the same txid again
    // from a fresh listing and start over, a bounded number of times.
    let mut current = plan.clone();
    let mut replans = 0;
    let (page_size, pages) = loop {
        match download_and_apply(storage, &current, &file, &tmp_path, &dir, opts) {
            Ok(r) => break r,
            Err(e)
                if e.storage_kind() == Some(StorageErrorKind::NotFound)
                    && replans < MAX_REPLANS =>
            {
                replans += 1;
                log::warn!(
                    "{}: {e}; planning txid {} again (objects change while retention runs)",
                    plan.db,
                    plan.txid
                );
                file.set_len(0).map_err(|e| Error::io(&tmp_path, e))?;
                current =
                    list_replica(storage, &plan.db)?.plan(storage, Target::Txid(plan.txid))?;
            }
            Err(e) => return Err(e),
        }
    };
    let plan = &current;
    file.sync_all().map_err(|e| Error::io(&tmp_path, e))?;
    drop(file);
    integrity_check(&tmp_path, plan)?;
    // SQLite removes its -wal/-shm when the last connection closes; make sure.
    for p in TempGuard::sidecars(&tmp_path) {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    File::open(&tmp_path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp_path, e))?;

    for p in stale {
        fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
    }
    install(&tmp_path, out, opts.force)?;
    guard.armed = false;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))?;

    Ok(Summary {
        db: plan.db.clone(),
        txid: plan.txid,
        objects: plan.objects.len(),
        bytes: plan.total_bytes(),
        page_size,
        pages,
        elapsed: start.elapsed(),
        output: out.to_path_buf(),
    })
}

/// A restore killed with SIGKILL cannot remove its temp file
/// (`.NAME.walsync-restore-PID-….tmp`, never OUT itself). Remove those whose
/// process is gone, with their SQLite sidecars, before the next restore to
/// the same output. Best effort: a failure only leaves the file behind.
fn remove_abandoned_temps(dir: &Path, name: &str) {
    let prefix = format!(".{name}.walsync-restore-");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue; // a restore that is still running
        }
        let path = entry.path();
        log::info!("removing {} left by an interrupted restore", path.display());
        let _ = fs::remove_file(&path);
    }
}

/// Refuse an existing output (unless `force`) and stale SQLite sidecars;
/// returns the sidecars to remove before the rename when forced.
fn check_output(out: &Path, force: bool) -> Result<Vec<PathBuf>> {
    match fs::symlink_metadata(out) {
        Ok(md) if md.is_dir() => {
            return Err(Error::Restore(format!(
                "{}: is a directory, not a database file",
                out.display()
            )))
        }
        Ok(_) if !force => {
            return Err(Error::Restore(format!(
                "{}: already exists (use --force to replace it)",
                out.display()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(out, e)),
    }
    let mut stale = Vec::new();
    for p in TempGuard::sidecars(out) {
        match fs::symlink_metadata(&p) {
            Ok(_) if !force => {
                return Err(Error::Restore(format!(
                    "{}: exists; SQLite would replay it over the restored database \
                     (remove it or use --force)",
                    p.display()
                )))
            }
            Ok(_) => stale.push(p),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Ok(stale)
}

fn split_output(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("{}: not a file name", out.display())))?
        .to_string();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

/// Move the finished temp file to `out`: a plain rename when forced, else a
/// hard link (fails atomically if `out` appeared meanwhile) and unlink.
fn install(tmp: &Path, out: &Path, force: bool) -> Result<()> {
    if force {
        return fs::rename(tmp, out).map_err(|e| Error::io(out, e));
    }
    match fs::hard_link(tmp, out) {
        Ok(()) => fs::remove_file(tmp).map_err(|e| Error::io(tmp, e)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::Restore(format!(
            "{}: already exists (created during the restore; use --force to replace it)",
            out.display()
        ))),
        // File systems without hard links: check, then rename.
        Err(_) if !out.exists() => fs::rename(tmp, out).map_err(|e| Error::io(out, e)),
        Err(e) => Err(Error::io(out, e)),
    }
}

fn integrity_check(path: &Path, plan: &Plan) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(path, e))?;
    let rows: Vec<String> = (|| {
        let mut stmt = conn.prepare("PRAGMA integrity_check(20)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
    })()
    .map_err(|e| Error::sqlite(path, e))?;
    conn.close().map_err(|(_, e)| Error::sqlite(path, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    Err(Error::Restore(format!(
        "{}: the database restored at txid {} fails PRAGMA integrity_check: {}",
        plan.db,
        plan.txid,
        rows.join("; ")
    )))
}

/// Fetch one object, check its SHA-256 metadata when present.
pub(crate) fn fetch(
    storage: &dyn Storage,
    o: &ReplicaObject,
    name: &str,
    spool_dir: &Path,
    spool_threshold: u64,
) -> Result<Fetched> {
    let (body, meta, digest) = if o.size >= spool_threshold {
        let info = storage.head(&o.key)?.ok_or_else(|| {
            Error::storage(
                name,
                StorageErrorKind::NotFound,
                "object listed but gone (deleted during the restore?)",
            )
        })?;
        let mut file = tempfile::tempfile_in(spool_dir).map_err(|e| Error::io(spool_dir, e))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut off = 0u64;
        while off < info.size {
            let want = RANGE_CHUNK.min(info.size - off);
            let chunk = storage.get_range(&o.key, off, Some(want))?;
            if chunk.len() as u64 != want {
                return Err(Error::ltx(
                    name,
                    format!(
                        "short read at offset {off}: got {} bytes of {want}",
                        chunk.len()
                    ),
                ));
            }
            ctx.update(&chunk);
            file.write_all(&chunk)
                .map_err(|e| Error::io(spool_dir, e))?;
            off += want;
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(spool_dir, e))?;
        (
            Body::Spooled(file),
            info.metadata,
            ctx.finish().as_ref().to_vec(),
        )
    } else {
        let (bytes, info) = storage.get_with_info(&o.key)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        (Body::Memory(bytes), info.metadata, digest)
    };
    if let Some(expected) = meta.get(META_SHA256) {
        let got = hex(&digest);
        if !expected.trim().eq_ignore_ascii_case(&got) {
            return Err(Error::ltx(
                name,
                format!("SHA-256 mismatch: {META_SHA256} metadata says {expected}, the object hashes to {got}"),
            ));
        }
    }
    Ok(Fetched { body })
}

/// Download the plan's objects in parallel and apply them in order into
/// `file`; returns (page size, pages) of the result.
fn download_and_apply(
    storage: &dyn Storage,
    plan: &Plan,
    file: &File,
    tmp_path: &Path,
    spool_dir: &Path,
    opts: &RestoreOptions,
) -> Result<(u32, u32)> {
    let n = plan.objects.len();
    let threads = opts.parallel.clamp(1, 256).min(n);
    let window = threads * 2;
    let names: Vec<String> = plan
        .objects
        .iter()
        .map(|o| format!("{}/{}", storage_root(&plan.location, &plan.db), o.key))
        .collect();
    let cancel = AtomicBool::new(false);
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<usize>();
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<(usize, Result<Fetched>)>();
    let mut progress = Progress::new(opts.progress, plan);

    std::thread::scope(|s| {
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            let cancel = &cancel;
            let names = &names;
            s.spawn(move || {
                for i in job_rx {
                    if cancel.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = fetch(
                        storage,
                        &plan.objects[i],
                        &names[i],
                        spool_dir,
                        opts.spool_threshold,
                    );
                    if res_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        drop(job_rx);

        let result = (|| {
            let mut applier = Applier {
                file,
                tmp_path,
                page_size: 0,
                first: String::new(),
                commit: 0,
                buf: Vec::new(),
            };
            let mut pending: BTreeMap<usize, Fetched> = BTreeMap::new();
            let mut sent = 0usize;
            let mut ahead_bytes = 0u64;
            for (i, (object, name)) in plan.objects.iter().zip(&names).enumerate() {
                // Keep the window full: the next object always, more while
                // the count and byte budgets allow.
                while sent < n
                    && (sent == i
                        || (sent < i + window
                            && ahead_bytes + plan.objects[sent].size <= opts.window_bytes))
                {
                    ahead_bytes += plan.objects[sent].size;
                    job_tx
                        .send(sent)
                        .map_err(|_| Error::Restore("download threads stopped".into()))?;
                    sent += 1;
                }
                let fetched = loop {
                    if let Some(f) = pending.remove(&i) {
                        break f;
                    }
                    let (j, r) = res_rx
                        .recv()
                        .map_err(|_| Error::Restore("download threads stopped".into()))?;
                    pending.insert(j, r?);
                };
                applier.apply(object, name, fetched)?;
                ahead_bytes = ahead_bytes.saturating_sub(object.size);
                progress.update(i + 1, object.size);
            }
            Ok((applier.page_size, applier.commit))
        })();
        cancel.store(true, Ordering::Relaxed);
        drop(job_tx);
        progress.finish();
        result
    })
}

struct Applier<'a> {
    file: &'a File,
    tmp_path: &'a Path,
    page_size: u32,
    first: String,
    commit: u32,
    buf: Vec<u8>,
}

impl Applier<'_> {
    fn apply(&mut self, o: &ReplicaObject, name: &str, fetched: Fetched) -> Result<()> {
        match fetched.body {
            Body::Memory(bytes) => self.apply_from(o, name, bytes.as_slice()),
            Body::Spooled(f) => self.apply_from(o, name, BufReader::with_capacity(1 << 20, f)),
        }
    }

    fn apply_from<R: Read>(&mut self, o: &ReplicaObject, name: &str, r: R) -> Result<()> {
        let mut dec = Decoder::new(r, name)?;
        let h = *dec.header();
        check_header_matches(&h, o, name)?;
        if self.page_size == 0 {
            if !h.is_snapshot() {
                return Err(Error::ltx(
                    name,
                    "the first object of a restore must be a snapshot (min txid 1)",
                ));
            }
            self.page_size = h.page_size;
            self.first = name.to_string();
            self.buf = vec![0u8; h.page_size as usize];
        } else if h.page_size != self.page_size {
            return Err(Error::ltx(
                name,
                format!(
                    "page size {} differs from page size {} of {}",
                    h.page_size, self.page_size, self.first
                ),
            ));
        }
        let ps = u64::from(self.page_size);
        while let Some(pgno) = dec.next_page(&mut self.buf)? {
            self.file
                .write_all_at(&self.buf, u64::from(pgno - 1) * ps)
                .map_err(|e| Error::io(self.tmp_path, e))?;
        }
        // The database has exactly `commit` pages after this object.
        self.file
            .set_len(u64::from(h.commit) * ps)
            .map_err(|e| Error::io(self.tmp_path, e))?;
        self.commit = h.commit;
        Ok(())
    }
}

/// A progress line on stderr, only for terminals and slow restores.
struct Progress {
    enabled: bool,
    start: Instant,
    last: Option<Instant>,
    total_objects: usize,
    total_bytes: u64,
    bytes: u64,
    db: String,
    shown: bool,
}

impl Progress {
    fn new(requested: bool, plan: &Plan) -> Progress {
        Progress {
            enabled: requested && io::stderr().is_terminal(),
            start: Instant::now(),
            last: None,
            total_objects: plan.objects.len(),
            total_bytes: plan.total_bytes(),
            bytes: 0,
            db: plan.db.clone(),
            shown: false,
        }
    }

    fn update(&mut self, done: usize, bytes: u64) {
        self.bytes += bytes;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.start) < Duration::from_secs(1)
            || self
                .last
                .is_some_and(|l| now.duration_since(l) < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(now);
        let secs = now.duration_since(self.start).as_secs_f64();
        let mut err = io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{}: {done}/{} objects, {:.1}/{:.1} MB, {:.1} MB/s",
            self.db,
            self.total_objects,
            self.bytes as f64 / 1e6,
            self.total_bytes as f64 / 1e6,
            self.bytes as f64 / 1e6 / secs
        );
        let _ = err.flush();
        self.shown = true;
    }

    fn finish(&mut self) {
        if self.shown {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(level: u8, min: u64, max: u64) -> ReplicaObject {
        ReplicaObject {
            key: ltx::object_key("", "a.db", level, min, max),
            level,
            min_txid: min,
            max_txid: max,
            size: 100,
        }
    }

    fn replica(objects: Vec<ReplicaObject>) -> Replica {
        Replica {
            db: "a.db".into(),
            location: "file:///r/a.db".into(),
            objects,
        }
    }

    fn ranges(r: &Replica, target: u64) -> Vec<(u8, u64, u64)> {
        r.chain(target)
            .unwrap()
            .iter()
            .map(|o| (o.level, o.min_txid, o.max_txid))
            .collect()
    }

    #[test]
    fn greedy_chain_prefers_furthest_reach() {
        let mut objects = vec![obj(9, 1, 1), obj(9, 1, 6), obj(1, 2, 4), obj(2, 5, 12)];
        objects.extend((2..=14).map(|t| obj(0, t, t)));
        let r = replica(objects);
        assert_eq!(
            ranges(&r, 14),
            [(9, 1, 6), (2, 5, 12), (0, 13, 13), (0, 14, 14)]
        );
        assert_eq!(ranges(&r, 5), [(9, 1, 1), (1, 2, 4), (0, 5, 5)]);
        assert_eq!(ranges(&r, 6), [(9, 1, 6)]);
        assert_eq!(ranges(&r, 1), [(9, 1, 1)]);
    }

    #[test]
    fn equal_reach_prefers_higher_level() {
        let r = replica(vec![obj(0, 1, 1), obj(9, 1, 3), obj(0, 1, 3), obj(0, 2, 2)]);
        assert_eq!(ranges(&r, 3), [(9, 1, 3)]);
    }

    #[test]
    fn chain_errors_name_the_hole() {
        let r = replica(vec![obj(9, 1, 2), obj(0, 3, 3), obj(0, 6, 6), obj(1, 3, 9)]);
        let e = r.chain(6).unwrap_err().to_string();
        assert!(e.contains("txids 4..5 are in no object"), "{e}");
        assert!(e.contains("0000000000000003-0000000000000003.ltx"), "{e}");
        assert!(e.contains("0000000000000006-0000000000000006.ltx"), "{e}");
        assert!(e.contains("covers txid 4 but ends at txid 9"), "{e}");
        // Exactly 9 works through the compaction.
        assert_eq!(ranges(&r, 9), [(9, 1, 2), (1, 3, 9)]);
        let e = replica(vec![obj(9, 1, 5)])
            .chain(3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("txid 3 is before the first snapshot"), "{e}");
        let e = replica(vec![obj(0, 2, 5)])
            .chain(3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no snapshot"), "{e}");
    }

    #[test]
    fn long_chains_plan_quickly() {
        let n = 200_000u64;
        let mut objects = vec![obj(9, 1, 1)];
        objects.extend((2..=n).map(|t| obj(0, t, t)));
        let r = replica(objects);
        let start = Instant::now();
        assert_eq!(r.chain(n).unwrap().len() as u64, n);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn abandoned_temps_of_dead_restores_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".out.db.walsync-restore-4000000000-1f.tmp");
        let dead_wal = dir
            .path()
            .join(".out.db.walsync-restore-4000000000-1f.tmp-wal");
        let live = dir.path().join(format!(
            ".out.db.walsync-restore-{}-2.tmp",
            std::process::id()
        ));
        let other = dir
            .path()
            .join(".other.db.walsync-restore-4000000000-3.tmp");
        for p in [&dead, &dead_wal, &live, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        remove_abandoned_temps(dir.path(), "out.db");
        assert!(!dead.exists() && !dead_wal.exists());
        assert!(live.exists() && other.exists());
    }
}
