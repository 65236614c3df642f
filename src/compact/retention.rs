//! Retention: which objects no restore inside the window needs.
//!
//! Why a file of its own: deleting is the one irreversible step; the plan
//! keeps the chain of the window's first state plus everything after it, and
//! is also printed by `walsync compact --dry-run`.

use super::*;

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
    let (replica, times) = replica::list_with_times(storage, db, Strictness::Strict)?;
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
