//! Where replicated objects live.
//!
//! Why a trait at all: the pipeline, restore and the tests only ever need a
//! handful of object-store verbs (put, get, ranged get, head, list, batch
//! delete). Keeping them behind one tiny [`Storage`] trait means none of those
//! callers cares whether the objects end up in an S3-compatible bucket
//! ([`S3Storage`], rust-s3 blocking API, no async runtime) or in a local
//! directory ([`FileStorage`], for tests, demos and "replicate to a mounted
//! disk"). Both backends are driven by the same test suite, so they behave
//! the same way where it matters: key order of `list`, `NotFound` on a missing
//! object, absent keys being no error for `delete_many`.
//!
//! Keys are always relative to the backend's own prefix (`s3://bucket/prefix`
//! or `file:///dir`): the backend prepends it on the way out and strips it on
//! the way back, so callers work with keys such as
//! `db/0000/0000000000000001-0000000000000001.ltx` (the layout of [`crate::ltx::object_key`]).

pub mod counting;
pub mod crypt;
mod file;
mod limit;
mod retry;
pub mod routed;
mod s3;
pub mod source;

use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::error::{Error, Result, StorageErrorKind};

pub use counting::CountingStorage;
pub use crypt::{CryptStorage, Keyring};
pub use file::FileStorage;
pub use limit::RateLimited;
pub use retry::{retry_transient, RetryReads};
pub use routed::RoutedStorage;
pub use s3::{S3Config, S3Credentials, S3Options, S3Storage};
pub use source::{FileSource, Source};

/// User metadata of an object: a small map of lower-case names to values.
///
/// On S3 an entry `name → value` travels as the header `x-amz-meta-name:
/// value`; the pipeline stores `litestream-timestamp` and `walsync-sha256`.
/// Names are ASCII lower-case letters, digits and `-`; values are printable
/// ASCII without line breaks (what every S3 implementation round-trips
/// unchanged). [`Storage::put`] rejects anything else.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// An empty map.
    pub fn new() -> Metadata {
        Metadata::default()
    }

    /// Sets `name` (stored lower-case) to `value`, builder style.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Metadata {
        self.insert(name, value);
        self
    }

    /// Sets `name` (stored lower-case) to `value`.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(name.to_ascii_lowercase(), value.into());
    }

    /// The value stored under `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(&name.to_ascii_lowercase()).map(String::as_str)
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Checks names and values against the rules above; `Err` carries the reason.
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        for (name, value) in &self.0 {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!(
                    "invalid metadata name {name:?} (use a-z, 0-9 and '-')"
                ));
            }
            if !value.bytes().all(|b| (b' '..=b'~').contains(&b)) {
                return Err(format!(
                    "invalid metadata value for {name:?} (printable ASCII only)"
                ));
            }
        }
        Ok(())
    }
}

impl<K: AsRef<str>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Metadata {
        let mut m = Metadata::new();
        for (k, v) in iter {
            m.insert(k.as_ref(), v);
        }
        m
    }
}

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the backend's prefix.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time, when the backend reports one.
    pub last_modified: Option<SystemTime>,
    /// User metadata. Filled by [`Storage::head`] and [`Storage::get_with_info`];
    /// [`Storage::list`] leaves it empty (S3 listings do not carry it).
    pub metadata: Metadata,
}

/// The condition of [`Storage::put_conditional`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Store only if no object exists under the key (`If-None-Match: *`).
    Absent,
    /// Store only if the current object has this ETag (`If-Match`).
    Matches(String),
}

/// A flat, prefix-scoped object store. All methods block; implementations are
/// shared between threads (`Send + Sync`).
///
/// Only [`Storage::get`] and [`Storage::put_file`] have default bodies,
/// each right for every store because it is expressed in a method the
/// store writes out. Every other method must be written out, because a
/// default that a wrapper inherits silently goes wrong where nobody looks:
/// a streaming default reading the whole body turned streamed snapshots
/// into whole-file reads, a `list_page` default lists every page, a `put_conditional` default
/// drops the lease's atomicity and a `get_with_etag` default returns an ETag
/// the inner store's `If-Match` does not know. Wrappers forward each method
/// to their inner store.
pub trait Storage: Send + Sync {
    /// Stores `body` under `key` with user metadata `meta`, replacing any
    /// existing object. When this returns `Ok` the object is durable.
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()>;

    /// The object's bytes together with its size, time and user metadata.
    /// A missing object is an error of kind [`StorageErrorKind::NotFound`].
    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)>;

    /// The object's bytes. A missing object is [`StorageErrorKind::NotFound`].
    fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.get_with_info(key).map(|(body, _)| body)
    }

    /// `len` bytes (or up to the end when `None`) starting at offset `start`.
    /// A range reaching past the end is cut at the end.
    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>>;

    /// Size, time and metadata of `key`, or `None` when it does not exist.
    fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// Every object whose key starts with `prefix` (plain string prefix, not a
    /// directory) and sorts after `start_after`, in lexicographic (byte) key
    /// order. Pagination is internal: the whole listing is returned.
    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>>;

    /// At most `max_keys` objects of [`Storage::list`], with one request on
    /// S3: what a caller that needs only the first keys after a point uses
    /// (start-up probes for the newest txid).
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>>;

    /// Stores what `body` writes under `key`, like [`Storage::put`], without
    /// holding it whole in memory or copying it to local disk (S3: a
    /// multipart upload whose parts are sent as they fill; directory: a
    /// temporary file beside the target). `body` may be written more than
    /// once (a part or the whole upload retried); its errors, such as
    /// [`Error::Withdrawn`], are returned unchanged.
    fn put_stream(&self, key: &str, body: &mut dyn Source, meta: &Metadata) -> Result<()>;

    /// Stores the file at `path` under `key` through [`Storage::put_stream`].
    fn put_file(&self, key: &str, path: &std::path::Path, meta: &Metadata) -> Result<()> {
        self.put_stream(key, &mut FileSource::new(path)?, meta)
    }

    /// Stores `body` under `key` only if `cond` holds, atomically on the
    /// server: `Ok(true)` when stored, `Ok(false)` when the precondition
    /// failed (HTTP 412). Stores that cannot do this return an error of kind
    /// [`StorageErrorKind::Other`]; note that some S3 servers (Garage 2.5.0)
    /// silently ignore the condition instead, which only a probe detects
    /// (`crate::lease::probe`).
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> Result<bool>;

    /// The object's bytes and its ETag (for [`Precondition::Matches`]), or
    /// `None` when it does not exist. The ETag is the store's own (S3's
    /// quoted MD5 or multipart tag; a file's SHA-256), the one its
    /// `put_conditional` compares.
    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>>;

    /// Deletes `keys`; keys that do not exist are not an error.
    fn delete_many(&self, keys: &[String]) -> Result<()>;

    /// One cheap request proving the store is reachable and the credentials
    /// work, so a wrong password or missing bucket fails at start-up in one line.
    fn check(&self) -> Result<()>;

    /// Where the objects live, for messages (`s3://bucket/prefix`, `file:///dir`).
    fn describe(&self) -> String;
}

/// A shared or boxed storage is a storage: wrappers such as [`RateLimited`]
/// take their inner storage by value, the daemon keeps an `Arc` to route by
/// it and the backends are opened as a `Box`.
macro_rules! delegate_storage {
    ($($ptr:ident)::+) => {
        impl<S: Storage + ?Sized> Storage for $($ptr)::+<S> {
            fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
                (**self).put(key, body, meta)
            }
            fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
                (**self).get_with_info(key)
            }
            fn get(&self, key: &str) -> Result<Vec<u8>> {
                (**self).get(key)
            }
            fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
                (**self).get_range(key, start, len)
            }
            fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
                (**self).head(key)
            }
            fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
                (**self).list(prefix, start_after)
            }
            fn list_page(
                &self,
                prefix: &str,
                start_after: Option<&str>,
                max_keys: usize,
            ) -> Result<Vec<ObjectInfo>> {
                (**self).list_page(prefix, start_after, max_keys)
            }
            fn put_stream(&self, key: &str, body: &mut dyn Source, meta: &Metadata) -> Result<()> {
                (**self).put_stream(key, body, meta)
            }
            fn put_conditional(
                &self,
                key: &str,
                body: &[u8],
                meta: &Metadata,
                cond: &Precondition,
            ) -> Result<bool> {
                (**self).put_conditional(key, body, meta, cond)
            }
            fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
                (**self).get_with_etag(key)
            }
            fn delete_many(&self, keys: &[String]) -> Result<()> {
                (**self).delete_many(keys)
            }
            fn check(&self) -> Result<()> {
                (**self).check()
            }
            fn describe(&self) -> String {
                (**self).describe()
            }
        }
    };
}

delegate_storage!(std::sync::Arc);
delegate_storage!(Box);

/// Opens the store named by `url_or_bucket`:
///
/// - `file:///absolute/dir` → [`FileStorage`] (the directory is created);
/// - `s3://bucket[/prefix]` or a bare bucket name → [`S3Storage`], configured
///   from `opts` and the environment (see [`S3Config::from_spec`]).
///
/// Nothing is sent over the network; call [`Storage::check`] for that.
pub fn open(url_or_bucket: &str, opts: &S3Options) -> Result<Box<dyn Storage>> {
    if let Some(path) = url_or_bucket.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Config(format!(
                "{url_or_bucket}: a file URL needs an absolute path (file:///dir)"
            )));
        }
        return Ok(Box::new(FileStorage::create(path)?));
    }
    let config = S3Config::from_spec(url_or_bucket, opts)?;
    Ok(Box::new(S3Storage::new(config)?))
}

/// Rejects keys no backend can store the same way: empty, absolute, with
/// empty, `.` or `..` segments, or with control characters.
pub(crate) fn validate_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("empty object key".into());
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(format!("object key {key:?} must not start or end with '/'"));
    }
    if key
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "object key {key:?} has an empty, '.' or '..' segment"
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(format!("object key {key:?} contains a control character"));
    }
    Ok(())
}

/// `prefix` with surrounding slashes removed (`"/a/b/"` → `"a/b"`).
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_matches('/').to_string()
}

use crate::util::hex;

/// Metadata name holding the RFC 3339 timestamp Litestream's restore reads.
pub const META_TIMESTAMP: &str = "litestream-timestamp";
/// Metadata name holding the hex SHA-256 of the object.
pub const META_SHA256: &str = "walsync-sha256";

/// The one SHA-256 check of a fetched body: `None` when `meta` holds no
/// [`META_SHA256`] (Litestream's objects) or it matches `digest` (compared
/// as hex, ignoring case and surrounding whitespace); otherwise the reason,
/// naming both digests.
pub fn sha256_mismatch(meta: &Metadata, digest: &[u8]) -> Option<String> {
    let expected = meta.get(META_SHA256)?;
    let got = hex(digest);
    (!expected.trim().eq_ignore_ascii_case(&got)).then(|| {
        format!(
            "SHA-256 mismatch: {META_SHA256} metadata says {expected}, the object hashes to {got}"
        )
    })
}

/// Shortens a server-provided message to one line of reasonable length.
pub(crate) fn one_line(text: &str) -> String {
    let line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    line
}

/// Shorthand for a storage error of `kind` on `location`.
pub(crate) fn err(location: String, kind: StorageErrorKind, message: impl Into<String>) -> Error {
    Error::storage(location, kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_names_are_case_insensitive() {
        let m = Metadata::new().with("Litestream-Timestamp", "x");
        assert_eq!(m.get("litestream-timestamp"), Some("x"));
        assert_eq!(m.iter().next(), Some(("litestream-timestamp", "x")));
        assert!(m.validate().is_ok());
    }

    #[test]
    fn metadata_rejects_bad_names_and_values() {
        assert!(Metadata::new().with("a b", "x").validate().is_err());
        assert!(Metadata::new().with("a_b", "x").validate().is_err());
        assert!(Metadata::new().with("a", "x\ny").validate().is_err());
        assert!(Metadata::new().with("a", "é").validate().is_err());
    }

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("db/0000/a.ltx").is_ok());
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\nb"] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn one_line_collapses_whitespace() {
        assert_eq!(one_line("a\n  b\tc\n"), "a b c");
    }

    #[test]
    fn open_rejects_relative_file_url() {
        assert!(open("file://rel/dir", &S3Options::default()).is_err());
    }
}
