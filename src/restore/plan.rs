//! Planning a restore: which objects, in which order, reach the target.
//!
//! Why a file of its own: a plan is pure reasoning over a listing (the newest
//! snapshot at or before the target, then a contiguous chain from any level),
//! and `list`, `verify` and the fuzzer use it without
//! downloading anything.

use super::*;

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
pub(super) fn storage_root<'a>(location: &'a str, db: &str) -> &'a str {
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
