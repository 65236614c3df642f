//! The bucket layout: object keys and names, and the other names under a
//! database's prefix.
//!
//! Why a file of its own: every stage that reads or writes the bucket agrees
//! on these names through this one place.

/// `<min %016x>-<max %016x>.ltx`.
pub fn file_name(min_txid: u64, max_txid: u64) -> String {
    format!("{min_txid:016x}-{max_txid:016x}.ltx")
}

/// The directory part of a key: `<prefix>/<db>/<level %04x>/` (no leading
/// slash when the prefix is empty; slashes at either end of `prefix` and
/// `db` are dropped).
pub fn level_prefix(prefix: &str, db: &str, level: u8) -> String {
    let prefix = prefix.trim_matches('/');
    let db = db.trim_matches('/');
    if prefix.is_empty() {
        format!("{db}/{level:04x}/")
    } else {
        format!("{prefix}/{db}/{level:04x}/")
    }
}

/// Suffix of a lease object's key: `<db>.walsync-lease`, beside the
/// database's `<db>/` prefix ([`crate::lease`]).
pub const LEASE_SUFFIX: &str = ".walsync-lease";

/// First bytes of every object sealed by client-side encryption
/// ([`crate::storage::crypt`]).
pub const ENCRYPTED_MAGIC: &[u8; 8] = b"WSYNCENC";
/// Environment variable holding the current encryption key (64 hex digits).
pub const KEY_ENV: &str = "WALSYNC_ENCRYPTION_KEY";

/// If `bytes` start with an encrypted object's header, the reason an LTX
/// reader without a key gives: names the key id and the flag to pass.
pub fn encrypted_reason(bytes: &[u8]) -> Option<String> {
    if bytes.len() < 24 || &bytes[..8] != ENCRYPTED_MAGIC {
        return None;
    }
    Some(format!(
        "object is encrypted (key id {}); pass --encryption-key-file or set {KEY_ENV}",
        crate::util::hex(&bytes[16..24])
    ))
}

/// The object key of an LTX file:
/// `<prefix>/<db>/<level %04x>/<min %016x>-<max %016x>.ltx`.
pub fn object_key(prefix: &str, db: &str, level: u8, min_txid: u64, max_txid: u64) -> String {
    let mut k = level_prefix(prefix, db, level);
    k.push_str(&file_name(min_txid, max_txid));
    k
}

fn parse_hex_fixed(s: &str, len: usize) -> Option<u64> {
    if s.len() != len || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// Parse `<min %016x>-<max %016x>.ltx` (lowercase hex only, `1 ≤ min ≤ max`).
pub fn parse_object_name(file_name: &str) -> Option<(u64, u64)> {
    let stem = file_name.strip_suffix(".ltx")?;
    let (a, b) = stem.split_once('-')?;
    let min = parse_hex_fixed(a, 16)?;
    let max = parse_hex_fixed(b, 16)?;
    (min >= 1 && min <= max).then_some((min, max))
}

/// A parsed object key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    /// Database name (may itself contain `/`).
    pub db: String,
    /// Level (0 = per-sync segments, 9 = snapshots).
    pub level: u8,
    /// First transaction id.
    pub min_txid: u64,
    /// Last transaction id.
    pub max_txid: u64,
}

/// Parse a full key `<prefix>/<db>/<level %04x>/<min>-<max>.ltx` written
/// under `prefix`. `None` if the key is not under the prefix or not an LTX
/// object key.
pub fn parse_object_key(prefix: &str, key: &str) -> Option<ObjectKey> {
    let prefix = prefix.trim_matches('/');
    let rest = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')?
    };
    let (dir, name) = rest.rsplit_once('/')?;
    let (db, level) = dir.rsplit_once('/')?;
    // `object_key` never writes an empty path segment (it trims the slashes
    // around prefix and name), so `a//b`, `/db` or `db/` are no keys of
    // ours: accepting them named databases (`/app.db`) that `restore` and
    // `list` then could not find (found by fuzzing, tests/fuzz_regressions.rs).
    if db.split('/').any(str::is_empty) {
        return None;
    }
    let level = u8::try_from(parse_hex_fixed(level, 4)?).ok()?;
    let (min_txid, max_txid) = parse_object_name(name)?;
    Some(ObjectKey {
        db: db.to_string(),
        level,
        min_txid,
        max_txid,
    })
}

/// A level directory walsync or Litestream writes (`0000`–`0009`). Higher
/// four-digit hex segments (`tenants/0042/…`) are parts of database names.
fn is_level_dir(seg: &str) -> bool {
    parse_hex_fixed(seg, 4).is_some_and(|l| l <= u64::from(super::SNAPSHOT_LEVEL))
}

/// Whether `name` can name a database in the bucket: the key prefix of its
/// objects (`<name>/<level>/…`), so no empty, `.` or `..` segment, no
/// leading or trailing `/`, no control character; no segment after the
/// first that reads as a level directory (`0000`–`0009`, see
/// [`database_of`]); not ending in the lease suffix. `Err` says why.
pub fn check_db_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        Err("the name is empty".into())
    } else if name.chars().any(char::is_control) {
        Err("it contains a control character".into())
    } else if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        Err("it has an empty, '.' or '..' path segment".into())
    } else if name.split('/').skip(1).any(is_level_dir) {
        Err("a path segment 0000-0009 reads as a level directory of the bucket layout".into())
    } else if name.ends_with(LEASE_SUFFIX) {
        Err(format!("names ending in {LEASE_SUFFIX} are lease objects"))
    } else {
        Ok(())
    }
}

/// The database a key or listing prefix belongs to, the one mapping every
/// wrapper that routes or counts by database uses:
///
/// - a lease object `<db>.walsync-lease` → `<db>`;
/// - an LTX object key ([`parse_object_key`]) → its database;
/// - anything under a level directory, `<db>/<level %04x>/…` (a level
///   prefix, a stray file) → the part before the last such directory;
/// - a database prefix `<db>/` → `<db>`;
/// - any other key with a `/` → its first segment.
///
/// `None` for a key with no `/` at all or an empty first segment.
pub fn database_of(key: &str) -> Option<&str> {
    if let Some(db) = key.strip_suffix(LEASE_SUFFIX) {
        if !db.is_empty() && !db.ends_with('/') {
            return Some(db);
        }
    }
    if let Some(k) = parse_object_key("", key) {
        return Some(&key[..k.db.len()]);
    }
    let mut db = None;
    let mut offset = 0;
    let segments: Vec<&str> = key.split('/').collect();
    for (i, seg) in segments.iter().enumerate() {
        // A level directory: not the first segment, followed by a `/`.
        if i > 0 && i + 1 < segments.len() && is_level_dir(seg) {
            db = Some(&key[..offset - 1]);
        }
        offset += seg.len() + 1;
    }
    let db = db
        .or_else(|| key.strip_suffix('/'))
        .or_else(|| key.split_once('/').map(|(first, _)| first))?;
    (!db.is_empty() && !db.starts_with('/')).then_some(db)
}
