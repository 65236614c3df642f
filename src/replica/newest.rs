//! The newest object of each level, found in a few requests.
//!
//! Why a file of its own: a daemon starting on a replica with a day of
//! level-0 objects must find where it left off without listing them all,
//! and the compactor resumes each level the same way.

use crate::error::Result;
use crate::ltx::{self, SNAPSHOT_LEVEL};
use crate::storage::{ObjectInfo, Storage};

/// The newest object of one level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastInLevel {
    /// Its max txid.
    pub max_txid: u64,
    /// Its key.
    pub key: String,
    /// When it was stored, if the listing says.
    pub modified: Option<std::time::SystemTime>,
}

/// Keys fetched per probe (one LIST request either way).
const PROBE_PAGE: usize = 100;

/// The levels walsync and Litestream write: compaction levels 0–3 and the
/// snapshots.
const LEVELS: [u8; 5] = [0, 1, 2, 3, SNAPSHOT_LEVEL];

/// The newest object of every level in [`LEVELS`] (indexed by level).
///
/// One LIST of the database's first keys comes first: keys sort by level
/// directory, so every level whose keys all sort before the page's last key
/// (on a replica of fewer than [`PROBE_PAGE`] objects: every level, and an
/// absent replica) is read off that page, and only the others are searched
/// with [`last_in_level`]. A daemon starting 10,000 new databases sends
/// one LIST each instead of one per level; a small replica's restart one
/// instead of a search per level.
pub fn last_in_each_level(storage: &dyn Storage, db: &str) -> Result<[Option<LastInLevel>; 10]> {
    let db = db.trim_matches('/');
    let page = storage.list_page(&format!("{db}/"), None, PROBE_PAGE)?;
    let complete = page.len() < PROBE_PAGE;
    let last_key = page.last().map(|o| o.key.as_str()).unwrap_or("");
    let mut out: [Option<LastInLevel>; 10] = Default::default();
    for level in LEVELS {
        let dir = ltx::level_prefix("", db, level);
        // The listing is in key order and has every key up to its last one:
        // a last key past every key starting with `dir` means the whole
        // level was on the page.
        let whole = complete || (last_key > dir.as_str() && !last_key.starts_with(&dir));
        out[usize::from(level)] = if whole {
            newest_of(level, page.iter().filter(|o| o.key.starts_with(&dir)))
        } else {
            last_in_level(storage, db, level)?
        };
    }
    Ok(out)
}

/// Of `objects` (keys of one level's directory), the LTX object reaching
/// the highest txid; keys that are not LTX names, and level-9 objects not
/// starting at txid 1, are skipped.
fn newest_of<'a>(level: u8, objects: impl Iterator<Item = &'a ObjectInfo>) -> Option<LastInLevel> {
    objects
        .filter_map(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            let (min, max) = ltx::parse_object_name(name)?;
            (level != SNAPSHOT_LEVEL || min == 1).then_some((max, o))
        })
        .max_by_key(|(max, _)| *max)
        .map(|(max, o)| LastInLevel {
            max_txid: max,
            key: o.key.clone(),
            modified: o.last_modified,
        })
}

/// The object with the highest max txid in one level, by exponential then
/// binary search on the sort field (min txid; max txid for snapshots):
/// `O(log n)` LIST requests of one short page each, however long the level.
fn last_in_level(storage: &dyn Storage, db: &str, level: u8) -> Result<Option<LastInLevel>> {
    let dir = ltx::level_prefix("", db, level);
    let probe = |t: u64| -> Result<Option<ObjectInfo>> {
        let after = if level == SNAPSHOT_LEVEL {
            format!("{dir}{:016x}-{t:016x}", 1)
        } else {
            format!("{dir}{t:016x}")
        };
        // Keys that are not LTX names (a stray upload, an editor's backup
        // file) sort among or after the real ones: skip them, within one
        // page, instead of letting them wedge start-up.
        Ok(storage
            .list_page(&dir, Some(&after), PROBE_PAGE)?
            .into_iter()
            .find(|o| {
                let name = o.key.rsplit('/').next().unwrap_or("");
                ltx::parse_object_name(name)
                    .is_some_and(|(min, _)| level != SNAPSHOT_LEVEL || min == 1)
            }))
    };
    let Some(_) = probe(0)? else {
        return Ok(None);
    };
    // Largest t with probe(t) non-empty.
    let mut lo = 0u64;
    let mut hi = 1u64;
    while hi < u64::MAX / 2 && probe(hi)?.is_some() {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if probe(mid)?.is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Every LTX key after `lo` has the same (largest) min txid; of those
    // (two compactions can start at one txid) the one reaching furthest.
    let after = if level == SNAPSHOT_LEVEL {
        format!("{dir}{:016x}-{lo:016x}", 1)
    } else {
        format!("{dir}{lo:016x}")
    };
    let page = storage.list_page(&dir, Some(&after), PROBE_PAGE)?;
    Ok(newest_of(level, page.iter()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CountingStorage, FileStorage, Metadata};
    use std::sync::Arc;

    #[test]
    fn newest_txid_is_found_past_stray_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::create(dir.path()).unwrap();
        for t in 1..=37u64 {
            s.put(
                &ltx::object_key("", "a.db", 0, t, t),
                b"x",
                &Metadata::new(),
            )
            .unwrap();
        }
        s.put(
            &ltx::object_key("", "a.db", 9, 1, 20),
            b"x",
            &Metadata::new(),
        )
        .unwrap();
        for stray in [
            "a.db/0000/zz-not-ltx",
            "a.db/0000/0000000000000003-x.ltx",
            "a.db/0009/README",
            "a.db/0009/0000000000000002-0000000000000030.ltx",
        ] {
            s.put(stray, b"x", &Metadata::new()).unwrap();
        }
        assert_eq!(
            last_in_level(&s, "a.db", 0).unwrap().map(|l| l.max_txid),
            Some(37)
        );
        assert_eq!(
            last_in_level(&s, "a.db", SNAPSHOT_LEVEL)
                .unwrap()
                .map(|l| l.max_txid),
            Some(20)
        );
        assert_eq!(last_in_level(&s, "a.db", 1).unwrap(), None);
        assert_eq!(last_in_level(&s, "b.db", 0).unwrap(), None);
    }

    /// A store holding `objects` (level, min, max) of `a.db`, `strays`
    /// beside them, and another database; counted.
    fn store(objects: &[(u8, u64, u64)], strays: &[&str]) -> (tempfile::TempDir, CountingStorage) {
        let dir = tempfile::tempdir().unwrap();
        let inner = FileStorage::create(dir.path()).unwrap();
        for &(level, min, max) in objects {
            let key = ltx::object_key("", "a.db", level, min, max);
            inner.put(&key, b"x", &Metadata::new()).unwrap();
        }
        for stray in strays {
            inner.put(stray, b"x", &Metadata::new()).unwrap();
        }
        let other = ltx::object_key("", "a.db2", 0, 1, 1);
        inner.put(&other, b"x", &Metadata::new()).unwrap();
        (dir, CountingStorage::new(Arc::new(inner)))
    }

    fn lists(s: &CountingStorage) -> u64 {
        s.snapshot().values().map(|c| c.requests[2]).sum()
    }

    /// Each level as `last_in_level` finds it, level by level.
    fn one_by_one(s: &dyn Storage) -> [Option<LastInLevel>; 10] {
        let mut want: [Option<LastInLevel>; 10] = Default::default();
        for level in LEVELS {
            want[usize::from(level)] = last_in_level(s, "a.db", level).unwrap();
        }
        want
    }

    #[test]
    fn a_small_replica_costs_one_list() {
        let mut objects = vec![(9, 1, 4), (9, 1, 9), (9, 2, 9), (1, 2, 6), (1, 7, 8)];
        objects.extend((2..=12).map(|t| (0, t, t)));
        let strays = [
            "a.db/0000/zz-not-ltx",
            "a.db/README",
            "a.db/0001/0000000000000009-x.ltx",
        ];
        let (_dir, s) = store(&objects, &strays);
        let got = last_in_each_level(&s, "a.db").unwrap();
        assert_eq!(
            lists(&s),
            1,
            "one LIST for a replica of fewer than a page of keys"
        );
        let ends: Vec<u64> = got
            .iter()
            .map(|l| l.as_ref().map_or(0, |l| l.max_txid))
            .collect();
        assert_eq!(ends, [12, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(got, one_by_one(&s));

        let (_dir, empty) = store(&[], &[]);
        let got = last_in_each_level(&empty, "a.db").unwrap();
        assert!(got.iter().all(Option::is_none), "{got:?}");
        assert_eq!(
            lists(&empty),
            1,
            "one LIST for a database without a replica"
        );
    }

    #[test]
    fn a_large_replica_is_searched_past_the_first_page() {
        // The first page ends inside level 1: level 0 is read off it, the
        // levels after it are searched.
        let mut objects: Vec<(u8, u64, u64)> = (1..=5).map(|t| (0, t, t)).collect();
        objects.extend((1..=250).map(|t| (1, t, t)));
        objects.extend([(3, 1, 40), (9, 1, 100), (9, 1, 260)]);
        let (_dir, s) = store(&objects, &["a.db/0001/zz-stray"]);
        let got = last_in_each_level(&s, "a.db").unwrap();
        let ends: Vec<u64> = got
            .iter()
            .map(|l| l.as_ref().map_or(0, |l| l.max_txid))
            .collect();
        assert_eq!(ends, [5, 250, 0, 40, 0, 0, 0, 0, 0, 260]);
        assert_eq!(got, one_by_one(&s));

        // The first page ends inside level 0: every level is searched.
        let objects: Vec<(u8, u64, u64)> = (1..=PROBE_PAGE as u64 + 1)
            .map(|t| (0, t, t))
            .chain([(9, 1, 30)])
            .collect();
        let (_dir, s) = store(&objects, &[]);
        let got = last_in_each_level(&s, "a.db").unwrap();
        assert_eq!(
            got[0].as_ref().map(|l| l.max_txid),
            Some(PROBE_PAGE as u64 + 1)
        );
        assert_eq!(got[9].as_ref().map(|l| l.max_txid), Some(30));
        assert_eq!(got, one_by_one(&s));
    }
}
