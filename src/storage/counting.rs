//! Request accounting: a [`Storage`] wrapper that counts every request per
//! database and kind.
//!
//! Why a wrapper: request cost is what an operator pays for, and "an idle
//! daemon makes zero requests" is a promise worth checking in production,
//! not only in a benchmark. Counting at the one place every request passes
//! (uploads, start-up probes, and whatever compaction or retention later
//! sends through the same storage) needs no cooperation from the callers.
//! The database is the first segment of the key (or of the list prefix),
//! which is how objects are laid out ([`crate::ltx::object_key`]). Counters are atomics in
//! a map behind a `RwLock`: the write lock is only taken the first time a
//! database is seen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::{Metadata, ObjectInfo, Storage};
use crate::error::{Result, StorageErrorKind};
use crate::ltx;

/// The request kinds counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// `put` and `put_file`.
    Put,
    /// `get`, `get_with_info` and `get_range`.
    Get,
    /// `list` and `list_page`.
    List,
    /// `head` and `check`.
    Head,
    /// `delete_many` (one per call).
    Delete,
}

impl RequestKind {
    /// Every kind, in metric order.
    pub const ALL: [RequestKind; 5] = [
        RequestKind::Put,
        RequestKind::Get,
        RequestKind::List,
        RequestKind::Head,
        RequestKind::Delete,
    ];

    /// Upper-case name (`PUT`, ...), as used in metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Put => "PUT",
            RequestKind::Get => "GET",
            RequestKind::List => "LIST",
            RequestKind::Head => "HEAD",
            RequestKind::Delete => "DELETE",
        }
    }
}

/// Every error kind, in metric order.
pub const ERROR_KINDS: [StorageErrorKind; 5] = [
    StorageErrorKind::NotFound,
    StorageErrorKind::NoSuchBucket,
    StorageErrorKind::AccessDenied,
    StorageErrorKind::Transient,
    StorageErrorKind::Other,
];

/// Snake-case name of an error kind, for metric labels.
pub fn error_kind_name(kind: StorageErrorKind) -> &'static str {
    match kind {
        StorageErrorKind::NotFound => "not_found",
        StorageErrorKind::NoSuchBucket => "no_such_bucket",
        StorageErrorKind::AccessDenied => "access_denied",
        StorageErrorKind::Transient => "transient",
        StorageErrorKind::Other => "other",
    }
}

fn error_index(kind: StorageErrorKind) -> usize {
    match kind {
        StorageErrorKind::NotFound => 0,
        StorageErrorKind::NoSuchBucket => 1,
        StorageErrorKind::AccessDenied => 2,
        StorageErrorKind::Transient => 3,
        StorageErrorKind::Other => 4,
    }
}

/// Counters of one database.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests sent, by [`RequestKind`] (index = position in `ALL`).
    pub requests: [AtomicU64; 5],
    /// Failed requests by [`ERROR_KINDS`] position (a failure of any
    /// non-storage kind, such as a local read error, counts as `other`).
    pub errors: [AtomicU64; 5],
    /// Bytes stored by successful PUTs.
    pub put_bytes: AtomicU64,
    /// Objects stored by successful PUTs.
    pub put_objects: AtomicU64,
    /// The newest failed request (not-found answers are no failure: probes
    /// expect them), for `walsync status`.
    pub last_error: crate::util::LastError,
}

/// A plain copy of [`Counters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// See [`Counters::requests`].
    pub requests: [u64; 5],
    /// See [`Counters::errors`].
    pub errors: [u64; 5],
    /// See [`Counters::put_bytes`].
    pub put_bytes: u64,
    /// See [`Counters::put_objects`].
    pub put_objects: u64,
}

impl Counters {
    /// A consistent-enough copy (each counter read once).
    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &[AtomicU64; 5]| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
        Snapshot {
            requests: load(&self.requests),
            errors: load(&self.errors),
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            put_objects: self.put_objects.load(Ordering::Relaxed),
        }
    }
}

/// Label used for requests that name no database (a listing of everything).
pub const NO_DATABASE: &str = "(none)";

/// A [`Storage`] that forwards to `inner` and counts.
pub struct CountingStorage {
    inner: Arc<dyn Storage>,
    dbs: RwLock<BTreeMap<String, Arc<Counters>>>,
}

impl CountingStorage {
    /// Count the requests sent to `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> CountingStorage {
        CountingStorage {
            inner,
            dbs: RwLock::new(BTreeMap::new()),
        }
    }

    /// The counters of database `db` (created on first use).
    pub fn counters(&self, db: &str) -> Arc<Counters> {
        if let Some(c) = self.dbs.read().unwrap_or_else(|p| p.into_inner()).get(db) {
            return c.clone();
        }
        self.dbs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(db.to_string())
            .or_default()
            .clone()
    }

    /// Copies of every database's counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, Snapshot> {
        self.dbs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.snapshot()))
            .collect()
    }

    /// The newest failed request of database `db` and its time (ms since
    /// the epoch), if any.
    pub fn last_error(&self, db: &str) -> Option<(String, i64)> {
        let dbs = self.dbs.read().unwrap_or_else(|p| p.into_inner());
        dbs.get(db)?.last_error.get()
    }

    fn count<T>(&self, key: &str, kind: RequestKind, result: Result<T>) -> Result<T> {
        let c = self.counters(database_of(key));
        c.requests[kind as usize].fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            let k = e.storage_kind().unwrap_or(StorageErrorKind::Other);
            c.errors[error_index(k)].fetch_add(1, Ordering::Relaxed);
            if k != StorageErrorKind::NotFound {
                c.last_error.note(e.to_string());
            }
        }
        result
    }

    fn count_put(&self, key: &str, bytes: u64, result: Result<()>) -> Result<()> {
        let result = self.count(key, RequestKind::Put, result);
        if result.is_ok() {
            let c = self.counters(database_of(key));
            c.put_bytes.fetch_add(bytes, Ordering::Relaxed);
            c.put_objects.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// The database a key or list prefix belongs to ([`ltx::database_of`]), or
/// [`NO_DATABASE`] when it names none.
pub fn database_of(key: &str) -> &str {
    ltx::database_of(key).unwrap_or(NO_DATABASE)
}

impl Storage for CountingStorage {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        let r = self.inner.put(key, body, meta);
        self.count_put(key, body.len() as u64, r)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        let r = self.inner.get_with_info(key);
        self.count(key, RequestKind::Get, r)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let r = self.inner.get(key);
        self.count(key, RequestKind::Get, r)
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        let r = self.inner.get_range(key, start, len);
        self.count(key, RequestKind::Get, r)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let r = self.inner.head(key);
        self.count(key, RequestKind::Head, r)
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        let r = self.inner.list(prefix, start_after);
        self.count(prefix, RequestKind::List, r)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let r = self.inner.list_page(prefix, start_after, max_keys);
        self.count(prefix, RequestKind::List, r)
    }

    fn put_stream(&self, key: &str, body: &mut dyn super::Source, meta: &Metadata) -> Result<()> {
        let mut counted = super::source::Counted::new(body);
        let r = self.inner.put_stream(key, &mut counted, meta);
        self.count_put(key, counted.last(), r)
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &super::Precondition,
    ) -> Result<bool> {
        let r = self.inner.put_conditional(key, body, meta, cond);
        match r {
            // Stored: an upload like any PUT. Refused (412) or failed: a
            // request, no bytes uploaded.
            Ok(true) => self
                .count_put(key, body.len() as u64, Ok(()))
                .map(|()| true),
            other => self.count(key, RequestKind::Put, other),
        }
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let r = self.inner.get_with_etag(key);
        self.count(key, RequestKind::Get, r)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let r = self.inner.delete_many(keys);
        // One request per database named (a batch may span several).
        let mut dbs: Vec<&str> = keys.iter().map(|k| database_of(k)).collect();
        dbs.sort_unstable();
        dbs.dedup();
        if dbs.is_empty() {
            return r;
        }
        for db in &dbs[1..] {
            let _ = self.count(db_key(db).as_str(), RequestKind::Delete, Ok(()));
        }
        self.count(db_key(dbs[0]).as_str(), RequestKind::Delete, r)
    }

    fn check(&self) -> Result<()> {
        let r = self.inner.check();
        self.count("", RequestKind::Head, r)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

fn db_key(db: &str) -> String {
    format!("{db}/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    #[test]
    fn counts_by_database_and_kind() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
        let s = CountingStorage::new(inner);
        s.put("a.db/0000/x.ltx", b"hello", &Metadata::new())
            .unwrap();
        s.put("b.db/0000/x.ltx", b"hi", &Metadata::new()).unwrap();
        assert_eq!(s.get("a.db/0000/x.ltx").unwrap(), b"hello");
        let missing = s.get("a.db/0000/missing.ltx").unwrap_err();
        assert_eq!(missing.storage_kind(), Some(StorageErrorKind::NotFound));
        assert_eq!(s.list("a.db/", None).unwrap().len(), 1);
        assert!(s.head("b.db/0000/x.ltx").unwrap().is_some());
        s.delete_many(&["a.db/0000/x.ltx".into(), "b.db/0000/x.ltx".into()])
            .unwrap();
        s.list("", None).unwrap();

        let snap = s.snapshot();
        let a = snap["a.db"];
        assert_eq!(a.requests, [1, 2, 1, 0, 1]);
        assert_eq!(a.errors, [1, 0, 0, 0, 0]);
        assert_eq!((a.put_bytes, a.put_objects), (5, 1));
        let b = snap["b.db"];
        assert_eq!(b.requests, [1, 0, 0, 1, 1]);
        assert_eq!((b.put_bytes, b.put_objects), (2, 1));
        assert_eq!(snap[NO_DATABASE].requests, [0, 0, 1, 0, 0]);
        // A not-found answer is no error for `walsync status`; a failure is.
        assert_eq!(s.last_error("a.db"), None);
        assert_eq!(s.last_error("nobody.db"), None);
        s.put("c.db/f", b"x", &Metadata::new()).unwrap();
        let e = s.put("c.db/f/g", b"x", &Metadata::new()).unwrap_err();
        let (text, ms) = s.last_error("c.db").unwrap();
        assert_eq!(text, e.to_string());
        assert!(ms > 0);
    }

    #[test]
    fn database_of_takes_the_first_segment() {
        assert_eq!(database_of("app.db/0000/x.ltx"), "app.db");
        assert_eq!(database_of("app.db/"), "app.db");
        assert_eq!(database_of("app"), NO_DATABASE);
        assert_eq!(database_of(""), NO_DATABASE);
    }
}
