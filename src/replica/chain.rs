//! The one chain planner: which objects, in which order, rebuild a txid.
//!
//! Why a file of its own: restore, retention and compaction each need "the
//! objects that continue the history from here", and a planner written three
//! times is three chances to skip or overlap a transaction.
//!
//! An object continues position `pos` (the last txid applied) when
//! `min ≤ pos + 1 ≤ max`. The planner is greedy: at every step it takes the
//! continuing object that reaches furthest without passing the limit; ties
//! go to the higher level, then the smaller object. Because an object
//! reachable from an earlier position is also reachable from a later one,
//! greedy never misses a chain that exists, and it uses the fewest objects
//! (fewest GETs): a compacted level-1 object replaces the level-0 objects it
//! covers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::{Replica, ReplicaObject};
use crate::error::{Error, Result};

/// The greedy chain through `objects` from position `pos`: objects that
/// end at or before `limit`, at most `max_len` of them. Returns the chain
/// and the position it reaches (`pos` when nothing continues it).
/// `O(n log n)` in the number of objects.
pub fn greedy<'a>(
    objects: impl IntoIterator<Item = &'a ReplicaObject>,
    pos: u64,
    limit: u64,
    max_len: usize,
) -> (Vec<ReplicaObject>, u64) {
    let mut files: Vec<&ReplicaObject> = objects
        .into_iter()
        .filter(|o| o.max_txid <= limit && o.max_txid > pos)
        .collect();
    files.sort_by_key(|o| (o.min_txid, o.max_txid));
    // Max-heap: reach furthest, then higher level, then smaller object, then
    // the earlier one.
    let mut heap: BinaryHeap<(u64, u8, Reverse<u64>, Reverse<usize>)> = BinaryHeap::new();
    let mut out: Vec<ReplicaObject> = Vec::new();
    let mut pos = pos;
    let mut next = 0usize;
    while pos < limit && out.len() < max_len {
        while let Some(f) = files.get(next) {
            if f.min_txid > pos.saturating_add(1) {
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
            None => break,
        }
    }
    (out, pos)
}

impl Replica {
    /// The greedy chain from nothing to exactly `target`, or an error that
    /// names the hole (or the missing snapshot) that prevents it.
    pub fn chain(&self, target: u64) -> Result<Vec<ReplicaObject>> {
        let (chain, reached) = greedy(&self.objects, 0, target, usize::MAX);
        if reached == target {
            return Ok(chain);
        }
        Err(self.chain_error(target, reached, chain.last()))
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
}
