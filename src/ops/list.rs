//! `walsync list`: what is in a bucket, and what one database holds.
//!
//! Why a file of its own: listing is the cheap, read-only view (one listing
//! plus one 100-byte ranged GET per database); its table and JSON output are
//! an interface scripts depend on.

use super::*;

/// One database of a bucket, as `walsync list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbListing {
    /// Database name (key prefix).
    pub name: String,
    /// Highest txid any object reaches.
    pub newest_txid: u64,
    /// Time of the newest txid (ms since the epoch): the LTX header timestamp
    /// of the object ending at it, else that object's modification time.
    pub time_ms: Option<i64>,
    /// Level-9 objects.
    pub snapshots: usize,
    /// All objects.
    pub objects: usize,
    /// Bytes stored, all objects.
    pub bytes: u64,
    /// Key of the object whose time is shown.
    pub newest_key: String,
}

/// One object of a database, as `walsync list NAME` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileListing {
    /// Key relative to the storage prefix.
    pub key: String,
    /// Level (0 segments, 1–8 compactions, 9 snapshots).
    pub level: u8,
    /// First txid.
    pub min_txid: u64,
    /// Last txid.
    pub max_txid: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time from the listing (ms since the epoch).
    pub time_ms: Option<i64>,
}

fn system_ms(t: Option<SystemTime>) -> Option<i64> {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Every database in the store: one listing of the whole prefix, then one
/// ranged GET of the 100-byte LTX header of each database's newest object
/// (`parallel` at a time). Keys that are not LTX object keys are ignored.
pub fn list_databases(storage: &dyn Storage, parallel: usize) -> Result<Vec<DbListing>> {
    let mut dbs: BTreeMap<String, (DbListing, Option<SystemTime>, u8)> = BTreeMap::new();
    for info in storage.list("", None)? {
        let Some(k) = ltx::parse_object_key("", &info.key) else {
            log::debug!("list: ignoring {}", info.key);
            continue;
        };
        let e = dbs.entry(k.db.clone()).or_insert_with(|| {
            (
                DbListing {
                    name: k.db.clone(),
                    newest_txid: 0,
                    time_ms: None,
                    snapshots: 0,
                    objects: 0,
                    bytes: 0,
                    newest_key: String::new(),
                },
                None,
                u8::MAX,
            )
        });
        e.0.objects += 1;
        e.0.bytes += info.size;
        if k.level == SNAPSHOT_LEVEL {
            e.0.snapshots += 1;
        }
        // The newest txid's time comes from the lowest level ending there
        // (the segment written when it was committed).
        if k.max_txid > e.0.newest_txid || (k.max_txid == e.0.newest_txid && k.level < e.2) {
            e.0.newest_txid = k.max_txid;
            e.0.newest_key = info.key.clone();
            e.1 = info.last_modified;
            e.2 = k.level;
        }
    }
    let mut out: Vec<(DbListing, Option<SystemTime>)> =
        dbs.into_values().map(|(d, m, _)| (d, m)).collect();
    let next = AtomicUsize::new(0);
    let results = Mutex::new(vec![None; out.len()]);
    let threads = parallel.clamp(1, 64).min(out.len());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((d, _)) = out.get(i) else { break };
                let ts = replica::read_header(storage, &d.newest_key, &d.newest_key)
                    .map(|h| h.timestamp_ms);
                if let Err(e) = &ts {
                    log::warn!(
                        "{}: cannot read the header of {}: {e}",
                        d.name,
                        d.newest_key
                    );
                }
                if let Ok(mut r) = results.lock() {
                    r[i] = ts.ok();
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    for (i, (d, modified)) in out.iter_mut().enumerate() {
        d.time_ms = results
            .get(i)
            .copied()
            .flatten()
            .or_else(|| system_ms(*modified));
    }
    Ok(out.into_iter().map(|(d, _)| d).collect())
}

/// Every object of database `db` with one listing, ordered by level then
/// txid. Errors like [`replica::list`] on keys it cannot explain.
pub fn list_files(storage: &dyn Storage, db: &str) -> Result<Vec<FileListing>> {
    let (replica, times) = replica::list_with_times(storage, db, Strictness::Show)?;
    let mut out: Vec<FileListing> = replica
        .objects
        .into_iter()
        .map(|o| FileListing {
            time_ms: system_ms(times.get(&o.key).copied()),
            key: o.key,
            level: o.level,
            min_txid: o.min_txid,
            max_txid: o.max_txid,
            size: o.size,
        })
        .collect();
    out.sort_by_key(|f| (f.level, f.min_txid, f.max_txid));
    Ok(out)
}

pub(super) fn time_text(ms: Option<i64>) -> String {
    ms.and_then(|ms| ltx::display_timestamp_ms(ms).ok())
        .unwrap_or_else(|| "-".into())
}

/// Left-aligned columns separated by two spaces; the columns marked in
/// `right` (numbers) right-aligned. The tables of `walsync list` and
/// `walsync status`.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = width[i];
            let pad = w.saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        // An empty last cell leaves no trailing blanks.
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn json_time(ms: Option<i64>) -> String {
    match ms.and_then(|ms| ltx::format_timestamp_ms(ms).ok()) {
        Some(t) => json_str(&t),
        None => "null".into(),
    }
}

/// `walsync list` output: a table, or a JSON array with `json`.
pub fn format_databases(dbs: &[DbListing], json: bool) -> String {
    if json {
        let items: Vec<String> = dbs
            .iter()
            .map(|d| {
                format!(
                    "{{\"name\":{},\"newest_txid\":{},\"time\":{},\"snapshots\":{},\"objects\":{},\"bytes\":{}}}",
                    json_str(&d.name),
                    d.newest_txid,
                    json_time(d.time_ms),
                    d.snapshots,
                    d.objects,
                    d.bytes
                )
            })
            .collect();
        return format!("[{}]\n", items.join(","));
    }
    let rows: Vec<Vec<String>> = dbs
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.newest_txid.to_string(),
                time_text(d.time_ms),
                d.snapshots.to_string(),
                d.objects.to_string(),
                d.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "TXID", "TIME", "SNAPSHOTS", "OBJECTS", "BYTES"],
        &rows,
        &[false, true, false, true, true, true],
    )
}

/// `walsync list NAME` output: a table and the restorable range, or a JSON
/// object with `json`.
pub fn format_files(
    db: &str,
    files: &[FileListing],
    range: Option<&RestorableRange>,
    json: bool,
) -> String {
    if json {
        let items: Vec<String> = files
            .iter()
            .map(|f| {
                format!(
                    "{{\"level\":{},\"min_txid\":{},\"max_txid\":{},\"size\":{},\"time\":{},\"key\":{}}}",
                    f.level,
                    f.min_txid,
                    f.max_txid,
                    f.size,
                    json_time(f.time_ms),
                    json_str(&f.key)
                )
            })
            .collect();
        return format!(
            "{{\"name\":{},\"restorable\":{},\"files\":[{}]}}\n",
            json_str(db),
            json_range(range),
            items.join(",")
        );
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.level.to_string(),
                f.min_txid.to_string(),
                f.max_txid.to_string(),
                f.size.to_string(),
                time_text(f.time_ms),
            ]
        })
        .collect();
    let mut out = table(
        &["LEVEL", "MIN TXID", "MAX TXID", "SIZE", "TIME"],
        &rows,
        &[true, true, true, true, false],
    );
    out.push('\n');
    out.push_str(&format_range(range));
    out
}
