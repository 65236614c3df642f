//! The replica in the bucket, as a model over [`Storage`]: which objects a
//! database has, in which levels, which chains they form, when each was
//! written, and fetching one with its checks.
//!
//! Why a folder of its own: the capture side writes this layout and the
//! compactor, retention, restore, `list` and `verify` read it. They agree on
//! it through this one place: one listing parser ([`listing`]), one chain
//! planner ([`chain`]), one header reader and one checked fetch
//! ([`fetch`](mod@fetch)).
//!
//! The layout: every object of database `<db>` is an LTX file named
//! `<db>/<level %04x>/<min txid %016x>-<max txid %016x>.ltx`
//! ([`crate::ltx::object_key`]). Level 0 holds what the daemon shipped, one
//! object per upload; levels 1–3 hold merges of the level below
//! ([`crate::compact`]); level 9 holds snapshots, each a whole database
//! (min txid 1). A database's writer lease sits beside its prefix as
//! `<db>.walsync-lease` ([`crate::lease`]).
//!
//! - [`listing`]: list a database's objects (all levels, or one level page by
//!   page), strict or lenient about keys it cannot explain.
//! - [`chain`]: the greedy chain of objects that reaches a txid.
//! - [`timeline`]: which txid was current at a time (header timestamps).
//! - [`fetch`](mod@fetch): one object's bytes with their SHA-256 and header checked,
//!   big ones spooled to disk; the header alone with a ranged GET.
//! - [`newest`]: the newest object of a level in a few requests.
//! - [`recent`]: level-0 objects just stored, folded per database
//!   ([`fold`]) for the compactor's next level-1 merge.
//! - [`fold`]: a chain of objects merged into one, newest page wins.

#[cfg(doc)]
use crate::storage::Storage;

pub mod chain;
pub mod fetch;
pub mod fold;
pub mod listing;
pub mod newest;
pub mod recent;
#[cfg(test)]
mod tests;
pub mod timeline;

pub use chain::greedy;
pub use fetch::{check_header_matches, fetch, read_header, Fetched, SPOOL_THRESHOLD};
pub use listing::{list, list_level, list_with_times, Strictness};
pub use newest::{last_in_each_level, LastInLevel};

/// One LTX object of a replica, as named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaObject {
    /// Key relative to the storage's prefix.
    pub key: String,
    /// Level (0 = per-sync segments, 1–8 compactions, 9 = snapshots).
    pub level: u8,
    /// First txid covered (1 = full snapshot).
    pub min_txid: u64,
    /// Last txid covered.
    pub max_txid: u64,
    /// Size in bytes, from the listing.
    pub size: u64,
}

/// Every LTX object stored for one database.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Database name (key prefix).
    pub db: String,
    /// Where the replica lives, for messages (`s3://bucket/prefix/db`).
    pub location: String,
    /// The objects, in key order.
    pub objects: Vec<ReplicaObject>,
}

impl Replica {
    /// True when the database has no object at all.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The newest txid any object reaches (0 when empty).
    pub fn newest_txid(&self) -> u64 {
        self.objects.iter().map(|o| o.max_txid).max().unwrap_or(0)
    }

    /// `s3://bucket/prefix/<key>` for messages.
    pub fn full(&self, key: &str) -> String {
        format!("{}/{key}", storage_root(&self.location, &self.db))
    }
}

/// The storage root (`s3://bucket/prefix`) from a replica location
/// (`s3://bucket/prefix/<db>`).
pub fn storage_root<'a>(location: &'a str, db: &str) -> &'a str {
    location
        .strip_suffix(db)
        .and_then(|s| s.strip_suffix('/'))
        .unwrap_or(location)
}
