//! Which txid was current at a moment: the replica's timeline.
//!
//! Why a file of its own: restore to a time and retention ("what must stay
//! so every state of the last 24 h restores") both ask it, and the answer
//! must come from the same rule.
//!
//! The authoritative time of an object is the `timestamp_ms` field of its
//! LTX header (the `litestream-timestamp` metadata is a copy of it, and
//! objects written by Litestream's file backend have no metadata at all),
//! read with a ranged GET of the first 100 bytes. Within one level objects
//! are written in txid order, so their timestamps grow with their txids: a
//! binary search per level finds the newest object whose timestamp is at or
//! before the target with `O(log n)` small GETs per level instead of one
//! HEAD per object (what Litestream does). The txid current at that time is
//! the largest such object's max txid over all levels.

use std::collections::{BTreeMap, HashMap};

use super::{check_header_matches, read_header, Replica, ReplicaObject};
use crate::error::{Error, Result};
use crate::ltx;
use crate::storage::Storage;

impl Replica {
    /// The newest txid whose object timestamp is at or before `ms`: a binary
    /// search per level over header timestamps (see the module docs).
    pub fn txid_at(&self, storage: &dyn Storage, ms: i64) -> Result<u64> {
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
    pub fn newest_at(
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
        let name = self.full(&o.key);
        let h = read_header(storage, &o.key, &name)?;
        check_header_matches(&h, o, &name)?;
        cache.insert(o.key.clone(), h.timestamp_ms);
        Ok(h.timestamp_ms)
    }
}
