//! The `--config` file: databases with per-database overrides, and the
//! global settings of `walsync sync`.
//!
//! Why a file next to the flags: a server replicating a dozen databases with
//! different prefixes or snapshot intervals cannot say so in one
//! `ExecStart=` line. The file mirrors the flags (same names, kebab-case)
//! so there is one vocabulary; a flag given on the command line wins over
//! the file, and a setting neither gives takes its default from
//! [`crate::defaults`], the table the flags' help texts are checked against.
//! Unknown keys are an error naming the key and its line, because
//! a misspelt `snapshot-intervall` silently ignored is a backup policy
//! silently not applied. Credentials are *not* accepted here (they come
//! from the environment, see the README), so the file can be world-readable.
//!
//! ```toml
//! bucket = "s3://my-bucket/walsync"
//! snapshot-interval = "12h"
//!
//! [[database]]
//! path = "/data/*.db"
//!
//! [[database]]
//! path = "/srv/billing/billing.db"
//! name = "billing"
//! prefix = "billing-backups"
//! snapshot-interval = "1h"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The file as written. Every global key is optional (flags may supply it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub uploaders: Option<usize>,
    pub snapshot_interval: Option<String>,
    pub checkpoint_pages: Option<u64>,
    pub truncate_pages: Option<u64>,
    pub max_wal_mib: Option<u64>,
    pub min_put_interval: Option<String>,
    pub close_idle_after: Option<String>,
    pub memory_mib: Option<u64>,
    pub shutdown_timeout: Option<String>,
    pub retention: Option<String>,
    pub retention_grace: Option<String>,
    pub compaction: Option<String>,
    pub max_requests_per_sec: Option<u32>,
    pub metrics_addr: Option<String>,
    pub status_socket: Option<String>,
    pub heartbeat_url: Option<String>,
    pub heartbeat_interval: Option<String>,
    pub heartbeat_max_lag: Option<String>,
    /// `--exec`: the command to run once replicating.
    pub exec: Option<String>,
    pub restore_if_missing: Option<bool>,
    pub require_replica: Option<bool>,
    /// `[[database]]` tables.
    #[serde(default)]
    pub database: Vec<DatabaseEntry>,
}

/// One `[[database]]` table.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DatabaseEntry {
    /// A database path or a glob pattern.
    pub path: String,
    /// Name in the bucket (default: the file name; `/` allowed, e.g.
    /// `acme/data.db`). Only for a plain path.
    pub name: Option<String>,
    /// Key prefix in the same bucket for this database's objects, instead of
    /// the global prefix.
    pub prefix: Option<String>,
    /// Snapshot interval for this database (`0` = only when needed).
    pub snapshot_interval: Option<String>,
    /// How long to keep this database's history exactly restorable (`0` =
    /// keep everything).
    pub retention: Option<String>,
    /// File holding this database's encryption key.
    pub encryption_key_file: Option<PathBuf>,
}

/// One database (path or pattern) to replicate with its overrides, validated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DbSpec {
    /// Path or glob pattern.
    pub pattern: String,
    /// Name in the bucket, when not the file name.
    pub name: Option<String>,
    /// Key prefix for this database's objects (replaces the global one).
    pub prefix: Option<String>,
    /// `Some(None)`: no periodic snapshots; `None`: the global setting.
    pub snapshot_interval: Option<Option<Duration>>,
    /// `Some(None)`: keep everything; `None`: the global `retention`.
    pub retention: Option<Option<Duration>>,
    /// Encryption key file override, passed through to the database's settings.
    pub encryption_key_file: Option<PathBuf>,
}

impl DbSpec {
    /// A database from the command line: no overrides.
    pub fn plain(pattern: impl Into<String>) -> DbSpec {
        DbSpec {
            pattern: pattern.into(),
            ..DbSpec::default()
        }
    }
}

/// Parse a duration setting (`30s`, `5m`, `24h`; `0` = zero), naming `what`
/// in the error.
pub fn duration(what: &str, value: &str) -> Result<Duration> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value.trim())
        .map_err(|e| Error::Config(format!("{what} {value:?}: {e} (use e.g. 30s, 5m, 24h)")))
}

/// Read and parse the file at `path`.
pub fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse(path, &text)
}

/// Parse `text` (the contents of `path`, named in errors).
pub fn parse(path: &Path, text: &str) -> Result<FileConfig> {
    toml::from_str::<FileConfig>(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        Error::Config(match line {
            Some(l) => format!("{}: line {l}: {msg}", path.display()),
            None => format!("{}: {msg}", path.display()),
        })
    })
}

impl FileConfig {
    /// The `[[database]]` tables as validated specs (errors name the file,
    /// the entry and the key).
    pub fn databases(&self, file: &Path) -> Result<Vec<DbSpec>> {
        let mut out = Vec::with_capacity(self.database.len());
        for (i, d) in self.database.iter().enumerate() {
            let at = format!("{}: [[database]] #{} ({})", file.display(), i + 1, d.path);
            if d.path.trim().is_empty() {
                return Err(Error::Config(format!("{at}: path is empty")));
            }
            if let Some(name) = &d.name {
                if let Err(why) = crate::ltx::check_db_name(name) {
                    return Err(Error::Config(format!("{at}: name {name:?}: {why}")));
                }
                if d.path.contains(['*', '?', '[']) {
                    return Err(Error::Config(format!(
                        "{at}: name needs a plain path, not a pattern (every match would get the same name)"
                    )));
                }
            }
            if let Some(p) = &d.prefix {
                let n = crate::storage::normalize_prefix(p);
                if !n.is_empty() && crate::storage::validate_key(&n).is_err() {
                    return Err(Error::Config(format!(
                        "{at}: prefix {p:?} is not a valid key prefix"
                    )));
                }
            }
            let snapshot_interval = match &d.snapshot_interval {
                None => None,
                Some(v) => {
                    let d = duration(&format!("{at}: snapshot-interval"), v)?;
                    Some((!d.is_zero()).then_some(d))
                }
            };
            let retention = match &d.retention {
                None => None,
                Some(v) => {
                    let d = duration(&format!("{at}: retention"), v)?;
                    Some((!d.is_zero()).then_some(d))
                }
            };
            if let Some(k) = &d.encryption_key_file {
                if !k.is_absolute() {
                    return Err(Error::Config(format!(
                        "{at}: encryption-key-file {} must be an absolute path",
                        k.display()
                    )));
                }
            }
            out.push(DbSpec {
                pattern: d.path.clone(),
                name: d.name.clone(),
                prefix: d.prefix.clone(),
                snapshot_interval,
                retention,
                encryption_key_file: d.encryption_key_file.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let text =
            "bucket = \"b\"\n\n[[database]]\npath = \"/x.db\"\nsnapshot-intervall = \"1h\"\n";
        let e = parse(Path::new("/etc/w.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/w.toml: line 5: unknown field `snapshot-intervall`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn entries_are_validated() {
        let f = parse(
            Path::new("c.toml"),
            "[[database]]\npath = \"/d/*.db\"\nname = \"x\"\n",
        )
        .unwrap();
        let e = f.databases(Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("name needs a plain path"), "{e}");

        let f = parse(
            Path::new("c.toml"),
            "[[database]]\npath = \"/d/a.db\"\nretention = \"7 days\"\nsnapshot-interval = \"0\"\nencryption-key-file = \"/k\"\n",
        )
        .unwrap();
        let d = &f.databases(Path::new("c.toml")).unwrap()[0];
        assert_eq!(d.retention, Some(Some(Duration::from_secs(7 * 86400))));
        assert_eq!(d.snapshot_interval, Some(None));
        assert_eq!(d.encryption_key_file.as_deref(), Some(Path::new("/k")));

        let f = parse(
            Path::new("c.toml"),
            "[[database]]\npath = \"/d/a.db\"\nretention = \"soon\"\n",
        )
        .unwrap();
        let e = f.databases(Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("retention \"soon\""), "{e}");
    }
}
