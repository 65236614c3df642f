//! One level's pass: which objects of the level below come next, and
//! merging them into one object of this level.
//!
//! Why a file of its own: choosing inputs is where a compaction could skip or
//! overlap history; the chain rules live here.

use super::*;
use crate::replica::listing;

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
    let level_objects =
        |after| replica::list_level(storage, db, src, after, u64::MAX, Strictness::Lenient);
    let objects = level_objects(Some(listing::after_txid(db, src, pos)))?;
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
        let all = level_objects(None)?;
        if continues(&all) {
            return Ok(chain_after(&all, pos));
        }
    }
    Ok(chain_after(&objects, pos))
}

/// The greedy chain ([`replica::chain`]) through `objects` from `pos`, or
/// from the first object after `pos` when none continues it.
fn chain_after(objects: &[ReplicaObject], pos: u64) -> Option<Vec<ReplicaObject>> {
    let first_min = objects
        .iter()
        .filter(|o| o.max_txid > pos)
        .map(|o| o.min_txid)
        .min()?;
    let (chain, _) = replica::greedy(objects, pos.max(first_min - 1), u64::MAX, MAX_INPUTS);
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
    // A busy database's level-0 objects, folded as they were stored (see
    // `Recent`): they make the level-1 object without a GET.
    let fold = match ctx.recent {
        Some(r) if level == 1 => r.take_fold(db, ctx.lineage),
        _ => None,
    };
    let starts_at = |f: &Fold, txid: u64| f.range().is_some_and(|(min, _)| min == txid);
    let (enc, merged) = match fold {
        // Right after the last level-1 object: no LIST either.
        Some(f) if starts_at(&f, pos + 1) => (encode(&f, ctx.tmp_dir)?, f.objects()),
        fold => {
            let Some(inputs) = next_inputs(storage, db, level, pos)? else {
                return Ok(None);
            };
            match (fold, inputs.first()) {
                // The chain starts after a hole (a snapshot's txid; a new
                // database's first level-1 object), where the fold does.
                (Some(f), Some(first)) if starts_at(&f, first.min_txid) => {
                    (encode(&f, ctx.tmp_dir)?, f.objects())
                }
                // Anything else (objects stored before this process
                // started, a fold evicted and begun again): from storage.
                _ => {
                    let root = storage.describe();
                    (merge(storage, &root, &inputs, ctx)?, inputs.len())
                }
            }
        }
    };
    let h = enc.header;
    let key = ltx::object_key("", db, level, h.min_txid, h.max_txid);
    let size = put_encoded(storage, &key, enc)?;
    log::debug!(
        "{db}: compacted {merged} level-{} object(s) into {key} (txids {}..{}, {size} bytes)",
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
