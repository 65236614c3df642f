//! The one parser of a replica's listing: keys to [`ReplicaObject`]s.
//!
//! Why a file of its own: restore, retention, compaction, `list` and
//! `verify` all turn a listing into objects. Written once, they cannot
//! disagree on which keys count, and a key nobody can explain is treated
//! the same way everywhere: an error where a restore depends on the answer
//! ([`Strictness::Strict`]), a debug line where skipping it is safe
//! ([`Strictness::Lenient`], the compactor's inputs).

use std::collections::HashMap;
use std::time::SystemTime;

use super::{Replica, ReplicaObject};
use crate::error::{Error, Result};
use crate::ltx::{self, SNAPSHOT_LEVEL};
use crate::storage::{ObjectInfo, RetryReads, Storage};

/// What to do with a key under a database's prefix that is not one of its
/// LTX objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Refuse it with an error naming the key: restoring around objects
    /// nobody can explain is how data gets lost quietly.
    Strict,
    /// Skip it with a debug line.
    Lenient,
    /// As [`Strictness::Strict`], but a level-9 object that is not a
    /// snapshot is listed as it is: `walsync list NAME` shows what is there,
    /// stray objects included, so they can be found.
    Show,
}

/// Keys per listing request of [`list_level`].
const PAGE: usize = 1000;

/// The object `info` names, if it is an LTX object of database `db`.
///
/// Keys of databases nested below `db` (`<db>/<sub>/<level>/…`) are `None`.
/// A key that is not `<db>/<level %04x>/<min %016x>-<max %016x>.ltx`, or a
/// level-9 object that is not a snapshot (min txid 1), is an error when
/// `strict` and `None` (with a debug line) otherwise. `root` names the
/// store in messages.
pub fn parse(
    db: &str,
    info: ObjectInfo,
    strict: Strictness,
    root: &str,
) -> Result<Option<ReplicaObject>> {
    let problem = match ltx::parse_object_key("", &info.key) {
        Some(k) if k.db != db => {
            log::debug!("{db}: skipping {} (database {})", info.key, k.db);
            return Ok(None);
        }
        Some(k) if k.level == SNAPSHOT_LEVEL && k.min_txid != 1 && strict != Strictness::Show => {
            format!(
                "{db}: level-9 object {root}/{} is not a snapshot (its min txid is {}, not 1)",
                info.key, k.min_txid
            )
        }
        Some(k) => {
            return Ok(Some(ReplicaObject {
                key: info.key,
                level: k.level,
                min_txid: k.min_txid,
                max_txid: k.max_txid,
                size: info.size,
            }))
        }
        None => format!(
            "{db}: unparseable object name {root}/{} under the database prefix \
             (expected {db}/<level %04x>/<min txid %016x>-<max txid %016x>.ltx)",
            info.key
        ),
    };
    match strict {
        Strictness::Strict | Strictness::Show => Err(Error::Restore(problem)),
        Strictness::Lenient => {
            log::debug!("{problem}: skipped");
            Ok(None)
        }
    }
}

/// Every object under `<db>/` with one (paginated) listing, strictly
/// ([`parse`]). The listing is retried ([`RetryReads`]).
pub fn list(storage: &dyn Storage, db: &str) -> Result<Replica> {
    list_with_times(storage, db, Strictness::Strict).map(|(r, _)| r)
}

/// [`list`] with the given strictness, also returning when each object was
/// stored (from the listing; retention uses it to know when to look again,
/// `walsync list` shows it).
pub fn list_with_times(
    storage: &dyn Storage,
    db: &str,
    strict: Strictness,
) -> Result<(Replica, HashMap<String, SystemTime>)> {
    let db = db.trim_matches('/');
    if db.is_empty() {
        return Err(Error::Config("empty database name".into()));
    }
    let storage = &RetryReads(storage);
    let root = storage.describe();
    let mut objects = Vec::new();
    let mut times = HashMap::new();
    for info in storage.list(&format!("{db}/"), None)? {
        let modified = info.last_modified;
        if let Some(o) = parse(db, info, strict, &root)? {
            if let Some(t) = modified {
                times.insert(o.key.clone(), t);
            }
            objects.push(o);
        }
    }
    let replica = Replica {
        db: db.to_string(),
        location: format!("{root}/{db}"),
        objects,
    };
    Ok((replica, times))
}

/// The objects of one level of `db` in key (= txid) order, listed page by
/// page after the key `after` (the whole level when `None`), stopping after
/// the first page that reaches an object starting past txid `until`.
/// Failed requests are not retried here: a restore passes a [`RetryReads`]
/// (wrapping twice would retry each try again), the compactor retries on its
/// own schedule.
pub fn list_level(
    storage: &dyn Storage,
    db: &str,
    level: u8,
    after: Option<String>,
    until: u64,
    strict: Strictness,
) -> Result<Vec<ReplicaObject>> {
    let db = db.trim_matches('/');
    let dir = ltx::level_prefix("", db, level);
    let root = storage.describe();
    let mut out: Vec<ReplicaObject> = Vec::new();
    let mut after = after;
    loop {
        let page = storage.list_page(&dir, after.as_deref(), PAGE)?;
        let full = page.len() == PAGE;
        after = page.last().map(|o| o.key.clone());
        for info in page {
            if let Some(o) = parse(db, info, strict, &root)? {
                out.push(o);
            }
        }
        // Past `until`: later pages cannot help.
        if !full || out.last().is_some_and(|o| o.min_txid > until) {
            return Ok(out);
        }
    }
}

/// The key after which [`list_level`] finds the objects of `level` that
/// start after txid `pos`.
pub fn after_txid(db: &str, level: u8, pos: u64) -> String {
    format!(
        "{}{pos:016x}-ffffffffffffffff.ltx",
        ltx::level_prefix("", db, level)
    )
}
