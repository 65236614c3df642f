//! Which files are databases, and what each is called in the bucket.
//!
//! Why a file of its own: the command line and the config file name
//! databases by paths and glob patterns, the bucket by names; this is the
//! one place that turns the first into the second and refuses two databases
//! that would be stored under one name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::daemon::config::DbSpec;
use crate::daemon::watch;
use crate::error::{Error, Result};

/// The expanded database list and the directory patterns to keep watching.
#[derive(Debug, Default)]
pub struct Targets {
    /// Database files found now.
    pub files: Vec<PathBuf>,
    /// `(directory, pattern)` pairs for databases created later.
    pub patterns: Vec<(PathBuf, glob::Pattern)>,
}

pub(crate) fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expand the command line's paths and globs. A plain path must exist; a
/// pattern may match nothing yet (its directory is watched for new files).
pub fn expand(args: &[String]) -> Result<Targets> {
    let mut t = Targets::default();
    for arg in args {
        if !is_pattern(arg) {
            let p = PathBuf::from(arg);
            if !p.is_file() {
                return Err(Error::Config(format!("{arg}: no such database file")));
            }
            t.files.push(p);
            continue;
        }
        let pattern = glob::Pattern::new(arg)
            .map_err(|e| Error::Config(format!("{arg}: invalid pattern: {e}")))?;
        let paths =
            glob::glob(arg).map_err(|e| Error::Config(format!("{arg}: invalid pattern: {e}")))?;
        for p in paths {
            let p = p.map_err(|e| {
                let path = e.path().to_path_buf();
                Error::io(path, e.into())
            })?;
            if p.is_file() && watch::is_database_name(&p) {
                t.files.push(p);
            }
        }
        // Keep watching the directory part when it has no wildcard.
        let dir = Path::new(arg)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        if !is_pattern(&dir.to_string_lossy()) {
            if dir.is_dir() {
                t.patterns.push((dir, pattern));
            } else {
                return Err(Error::Config(format!(
                    "{arg}: directory {} does not exist",
                    dir.display()
                )));
            }
        } else {
            log::warn!("{arg}: wildcards in directory names are expanded once at start; new directories are not watched");
        }
    }
    t.files.sort();
    t.files.dedup();
    Ok(t)
}

/// The name of a database in the bucket: its file name.
pub fn db_name(path: &Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::Config(format!("{}: not a file path", path.display())))
}

/// Refuse two databases with one name, naming both paths. `files` are the
/// database paths with the name each would be stored under.
pub fn check_names(files: &[(String, &Path)]) -> Result<()> {
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for (name, f) in files {
        if let Some(other) = seen.insert(name, f) {
            return Err(Error::Config(format!(
                "two databases would be stored as {name:?}: {} and {}",
                other.display(),
                f.display()
            )));
        }
    }
    Ok(())
}

/// The name of the database at `path` under `spec`: its `name` override, else
/// the file name.
pub(crate) fn spec_name(spec: &DbSpec, path: &Path) -> Result<String> {
    match &spec.name {
        Some(n) => Ok(n.clone()),
        None => db_name(path),
    }
}
