//! The newest object of a level, found in a few requests.
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

/// The object with the highest max txid in one level, by exponential then
/// binary search on the sort field (min txid; max txid for snapshots):
/// `O(log n)` LIST requests of one short page each, however long the level.
pub fn last_in_level(storage: &dyn Storage, db: &str, level: u8) -> Result<Option<LastInLevel>> {
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
    let best = storage
        .list_page(&dir, Some(&after), PROBE_PAGE)?
        .into_iter()
        .filter_map(|o| {
            let name = o.key.rsplit('/').next().unwrap_or("");
            let (min, max) = ltx::parse_object_name(name)?;
            (level != SNAPSHOT_LEVEL || min == 1).then_some((max, o))
        })
        .max_by_key(|(max, _)| *max);
    let Some((max, info)) = best else {
        return Ok(None);
    };
    Ok(Some(LastInLevel {
        max_txid: max,
        key: info.key,
        modified: info.last_modified,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{FileStorage, Metadata};

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
}
