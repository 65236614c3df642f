//! Planning a restore: which objects, in which order, reach the target.
//!
//! Why a file of its own: a plan is pure reasoning over a listing (the newest
//! snapshot at or before the target, then a contiguous chain from any level,
//! [`crate::replica::chain`]), and `list`, `verify` and the fuzzer use it
//! without downloading anything.

use super::*;

/// List and plan in one call: [`plan_by_level`] for the newest state or a
/// txid, falling back to [`list`] then [`Replica::plan`] (which also
/// explains why no chain exists).
pub fn plan(storage: &dyn Storage, db: &str, target: Target) -> Result<Plan> {
    if let Some(plan) = plan_by_level(storage, db, target)? {
        return Ok(plan);
    }
    list(storage, db)?.plan(storage, target)
}

/// [`plan`] for a caller that treats "no replica" as an answer, not an
/// error: `Ok(None)` when nothing is stored under `db`. An object listed a
/// moment ago can be gone when its header is read (retention, `walsync
/// compact`): then it plans again, a bounded number of times.
pub fn plan_if_replica(storage: &dyn Storage, db: &str, target: Target) -> Result<Option<Plan>> {
    let once = || -> Result<Option<Plan>> {
        if let Some(plan) = plan_by_level(storage, db, target)? {
            return Ok(Some(plan));
        }
        let replica = list(storage, db)?;
        if replica.is_empty() {
            return Ok(None);
        }
        replica.plan(storage, target).map(Some)
    };
    let mut attempt = 0;
    loop {
        match once() {
            Err(e)
                if e.storage_kind() == Some(StorageErrorKind::NotFound)
                    && attempt < MAX_REPLANS =>
            {
                attempt += 1;
                log::warn!("{db}: {e}; planning again");
            }
            other => return other,
        }
    }
}

/// Plan without listing the whole replica: list the snapshots, take the
/// newest one at or before the target, extend the chain through levels 3, 2
/// and 1 (listed whole: they are small), then list level 0 only after the
/// position reached. A busy database keeps a day of level-0 objects for
/// point-in-time restores; restoring the newest state this way reads a
/// handful of listing pages instead of all of them. `Ok(None)` when this
/// finds no exact chain (or the target is a timestamp): the caller then
/// plans from the full listing, which finds every chain that exists and
/// explains a missing one.
pub fn plan_by_level(storage: &dyn Storage, db: &str, target: Target) -> Result<Option<Plan>> {
    let storage = &RetryReads(storage);
    let db = db.trim_matches('/');
    let limit = match target {
        Target::Latest => u64::MAX,
        Target::Txid(t) if t >= 1 => t,
        _ => return Ok(None),
    };
    let level_objects = |level: u8, after: Option<String>| {
        list_level(storage, db, level, after, limit, Strictness::Strict)
    };
    let snapshots = level_objects(ltx::SNAPSHOT_LEVEL, None)?;
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
        let after = (level == 0).then(|| listing::after_txid(db, 0, pos));
        let found = level_objects(level, after)?;
        newest = newest.max(found.iter().map(|o| o.max_txid).max().unwrap_or(0));
        let (chain, reached) = greedy(&found, pos, limit, usize::MAX);
        objects.extend(chain);
        pos = reached;
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

impl Replica {
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
}
