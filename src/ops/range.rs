//! The restorable range of one database: the oldest and the newest state a
//! restore can reach with what is stored.
//!
//! Why a file of its own: "how far back can I go" is the question asked
//! before a restore, and its answer is not the listing itself: the oldest
//! restorable state is the oldest snapshot's txid (retention may have
//! deleted everything before it), and the newest is where the chain from a
//! snapshot ends, which is short of the newest stored txid when an object
//! is missing. `walsync list NAME` prints it under the objects.

use super::*;

/// The oldest and newest restorable txid of a database, with their times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorableRange {
    /// The oldest snapshot's txid: nothing older can be restored.
    pub oldest_txid: u64,
    /// Time of `oldest_txid` (ms since the epoch; header timestamp, else the
    /// object's modification time).
    pub oldest_time_ms: Option<i64>,
    /// The furthest txid the chain of stored objects reaches.
    pub newest_txid: u64,
    /// Time of `newest_txid`.
    pub newest_time_ms: Option<i64>,
    /// The newest txid stored, when a hole keeps the chain short of it.
    pub unreachable_newest: Option<u64>,
}

/// The restorable range of `db` given its objects (from [`list_files`]):
/// `None` when no snapshot is stored. Reads two 100-byte headers (the
/// times).
pub fn restorable_range(
    storage: &dyn Storage,
    db: &str,
    files: &[FileListing],
) -> Result<Option<RestorableRange>> {
    let objects: Vec<ReplicaObject> = files
        .iter()
        .map(|f| ReplicaObject {
            key: f.key.clone(),
            level: f.level,
            min_txid: f.min_txid,
            max_txid: f.max_txid,
            size: f.size,
        })
        .collect();
    let Some(oldest) = files
        .iter()
        .filter(|f| f.min_txid == 1)
        .min_by_key(|f| (f.max_txid, Reverse(f.level)))
    else {
        return Ok(None);
    };
    let (chain, reached) = replica::greedy(&objects, 0, u64::MAX, usize::MAX);
    let Some(last) = chain.last() else {
        return Ok(None);
    };
    let stored = files.iter().map(|f| f.max_txid).max().unwrap_or(0);
    let time_of = |key: &str| -> Option<i64> {
        let name = format!("{}/{key}", db.trim_matches('/'));
        match replica::read_header(storage, key, &name) {
            Ok(h) => Some(h.timestamp_ms),
            Err(e) => {
                log::warn!("{name}: cannot read its header: {e}");
                files.iter().find(|f| f.key == key).and_then(|f| f.time_ms)
            }
        }
    };
    Ok(Some(RestorableRange {
        oldest_txid: oldest.max_txid,
        oldest_time_ms: time_of(&oldest.key),
        newest_txid: reached,
        newest_time_ms: time_of(&last.key),
        unreachable_newest: (stored > reached).then_some(stored),
    }))
}

/// The lines `walsync list NAME` prints under its table.
pub fn format_range(range: Option<&RestorableRange>) -> String {
    let Some(r) = range else {
        return "restorable: nothing (no snapshot stored)\n".into();
    };
    let mut s = format!(
        "restorable: txid {} ({}) … txid {} ({})\n",
        r.oldest_txid,
        time_text(r.oldest_time_ms),
        r.newest_txid,
        time_text(r.newest_time_ms)
    );
    if let Some(t) = r.unreachable_newest {
        s.push_str(&format!(
            "warning: txids after {} up to {t} are stored but unreachable (a hole in the chain; see `walsync verify`)\n",
            r.newest_txid
        ));
    }
    s
}

/// The `"restorable"` member of `walsync list NAME --json`.
pub fn json_range(range: Option<&RestorableRange>) -> String {
    let Some(r) = range else {
        return "null".into();
    };
    format!(
        "{{\"oldest_txid\":{},\"oldest_time\":{},\"newest_txid\":{},\"newest_time\":{},\"newest_stored_txid\":{}}}",
        r.oldest_txid,
        json_time(r.oldest_time_ms),
        r.newest_txid,
        json_time(r.newest_time_ms),
        r.unreachable_newest.unwrap_or(r.newest_txid)
    )
}
