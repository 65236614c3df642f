//! One poll of the replica: which objects continue the followed database
//! from the txid it is at.
//!
//! Why a file of its own: the cheap common case (one LIST of level 0 after
//! the last applied key) and the rare ones (objects compacted away before
//! they were fetched, a new snapshot after a gap) must agree on one rule:
//! apply only objects that continue the position exactly
//! ([`crate::replica::chain`]), or a snapshot when the history has a gap.

use crate::error::Result;
use crate::ltx::{self, SNAPSHOT_LEVEL};
use crate::replica::listing::{after_txid, list_level, Strictness};
use crate::replica::{greedy, last_in_each_level, ReplicaObject};
use crate::storage::Storage;

/// Level-0 objects to apply above which a poll also looks at the compacted
/// levels.
const MANY: usize = 64;

/// What a poll found.
#[derive(Debug, Default)]
pub(super) struct Next {
    /// Objects to apply in order (a snapshot first when the history after
    /// the position has a gap); empty when the follower is current.
    pub objects: Vec<ReplicaObject>,
    /// The newest txid of any object seen (0 when none past the position).
    pub newest: u64,
}

/// How much of the replica one poll looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Depth {
    /// Level 0 after the position: one LIST request when current.
    Level0,
    /// Level 0, plus snapshots newer than the position (one more LIST):
    /// a primary that restarted after a gap ships a snapshot and may then
    /// stay idle, leaving nothing new at level 0.
    Snapshots,
    /// Everything that can continue the position: level 0, the compacted
    /// levels (listed whole, they are small) and newer snapshots.
    Full,
}

/// Poll `db` for the objects continuing txid `pos`. A [`Depth::Level0`]
/// poll that finds objects past `pos` none of which continues it (they were
/// compacted away before this follower fetched them, or a snapshot filled a
/// gap), or more than [`MANY`] of them, looks again with [`Depth::Full`].
pub(super) fn next(storage: &dyn Storage, db: &str, pos: u64, depth: Depth) -> Result<Next> {
    let level0 = list_level(
        storage,
        db,
        0,
        Some(after_txid(db, 0, pos)),
        u64::MAX,
        Strictness::Strict,
    )?;
    let mut newest = level0.iter().map(|o| o.max_txid).max().unwrap_or(0);
    let (chain, _) = greedy(&level0, pos, u64::MAX, usize::MAX);
    let gap = chain.is_empty() && !level0.is_empty();
    if gap {
        log::debug!(
            "{db}: level 0 after txid {pos} does not continue it (compacted away, or a \
             snapshot after a gap): looking at every level"
        );
    }
    // Far behind (a follower that was stopped, a long outage): compacted
    // objects cover the same txids in far fewer GETs.
    let depth = if gap || chain.len() > MANY {
        Depth::Full
    } else {
        depth
    };
    if depth == Depth::Level0 {
        return Ok(Next {
            objects: chain,
            newest,
        });
    }
    // Snapshots are all named 1-<txid>: list those past the position.
    let after_snap = format!(
        "{}0000000000000001-{pos:016x}.ltx",
        ltx::level_prefix("", db, SNAPSHOT_LEVEL)
    );
    let snapshots: Vec<ReplicaObject> = list_level(
        storage,
        db,
        SNAPSHOT_LEVEL,
        Some(after_snap),
        u64::MAX,
        Strictness::Strict,
    )?
    .into_iter()
    .filter(|o| o.max_txid > pos)
    .collect();
    newest = newest.max(snapshots.iter().map(|o| o.max_txid).max().unwrap_or(0));
    let mut all = level0;
    if depth == Depth::Full {
        for level in [1u8, 2, 3] {
            all.extend(list_level(
                storage,
                db,
                level,
                None,
                u64::MAX,
                Strictness::Strict,
            )?);
        }
        newest = newest.max(all.iter().map(|o| o.max_txid).max().unwrap_or(0));
    }
    let (chain, reached) = greedy(&all, pos, u64::MAX, usize::MAX);
    // A snapshot past where the history continues: the primary started a
    // new history (a restart after a gap, a forced snapshot). Apply it,
    // then what continues it.
    let objects = match snapshots
        .iter()
        .filter(|s| s.max_txid > reached)
        .max_by_key(|s| (s.max_txid, std::cmp::Reverse(s.size)))
    {
        Some(snap) => {
            let (rest, _) = greedy(&all, snap.max_txid, u64::MAX, usize::MAX);
            std::iter::once(snap.clone()).chain(rest).collect()
        }
        None => chain,
    };
    Ok(Next { objects, newest })
}

/// Whether the replica still reaches txid `pos` (the follower's position;
/// `last_min` the min txid of the object applied last): `None` when some
/// stored object ends at `pos` or later, else `Some(newest stored txid)`
/// (0 when nothing is stored), i.e. the replica went back: it was deleted
/// and a new history started below the follower's position.
///
/// Cheap first: one short LIST of level 0 from the object applied last and
/// one of the snapshots past `pos - 1` (what an idle replica holds: the
/// newest level-0 object ends at `pos`). Only when both find nothing (the
/// object was compacted away and retention removed it) the newest object of
/// every level ([`crate::replica::last_in_each_level`]: one LIST for a small
/// replica, O(log txid) per level for a large one).
pub(super) fn went_back(
    storage: &dyn Storage,
    db: &str,
    pos: u64,
    last_min: u64,
) -> Result<Option<u64>> {
    let reaches = |level: u8, after: String| -> Result<bool> {
        let dir = ltx::level_prefix("", db, level);
        Ok(storage
            .list_page(&dir, Some(&after), 20)?
            .iter()
            .filter_map(|o| ltx::parse_object_name(o.key.rsplit('/').next().unwrap_or("")))
            .any(|(_, max)| max >= pos))
    };
    if reaches(0, after_txid(db, 0, last_min.min(pos).saturating_sub(1)))? {
        return Ok(None);
    }
    let after_snap = format!(
        "{}0000000000000001-{:016x}.ltx",
        ltx::level_prefix("", db, SNAPSHOT_LEVEL),
        pos.saturating_sub(1)
    );
    if reaches(SNAPSHOT_LEVEL, after_snap)? {
        return Ok(None);
    }
    let mut newest = 0u64;
    for last in last_in_each_level(storage, db)?.into_iter().flatten() {
        if last.max_txid >= pos {
            return Ok(None);
        }
        newest = newest.max(last.max_txid);
    }
    Ok(Some(newest))
}
