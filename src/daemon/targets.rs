//! Which files are databases, and what each is called in the bucket.
//!
//! Why a file of its own: the command line and the config file name
//! databases by paths and glob patterns, the bucket by names; this is the
//! one place that turns the first into the second and refuses two databases
//! that would be stored under one name.
//!
//! A database matched by a pattern is named by its path below the pattern's
//! fixed leading directory (`/srv/tenants/*/data.db` → `acme/data.db`;
//! `/data/*.db` → `app.db`), so per-tenant trees with one file name per
//! tenant work and names do not change when the tree moves; a plain path is
//! named by its file name; a config entry may set a name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::daemon::config::DbSpec;
pub(crate) use crate::daemon::tree::is_pattern;
use crate::daemon::tree::TreePattern;
use crate::error::{Error, Result};

/// The expanded database list and the patterns to keep watching.
#[derive(Debug, Default)]
pub struct Targets {
    /// Database files found now.
    pub files: Vec<PathBuf>,
    /// The patterns among the arguments, for databases created later.
    pub trees: Vec<TreePattern>,
}

/// Expand the command line's paths and globs. A plain path must exist; a
/// pattern may match nothing yet (its directories are watched for new
/// files), but its fixed leading directory must exist.
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
        let tree = TreePattern::new(arg)?;
        if !tree.root().is_dir() {
            return Err(Error::Config(format!(
                "{arg}: directory {} does not exist",
                tree.root().display()
            )));
        }
        let (found, _) = tree.walk(tree.root(), &mut |_| Ok(true));
        t.files.extend(found);
        t.trees.push(tree);
    }
    t.files.sort();
    t.files.dedup();
    Ok(t)
}

/// The name of a database given as a plain path: its file name.
pub fn db_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::Config(format!(
                "{}: not a file path with a UTF-8 file name",
                path.display()
            ))
        })?;
    checked(name, path)
}

/// `name` if it can name a database in the bucket, else one line naming
/// the database's path ([`crate::ltx::check_db_name`]).
fn checked(name: &str, path: &Path) -> Result<String> {
    crate::ltx::check_db_name(name)
        .map(|()| name.to_string())
        .map_err(|why| {
            Error::Config(format!(
                "{}: cannot be stored as {name:?}: {why}",
                path.display()
            ))
        })
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

/// The name of the database at `path` under `spec`: its `name` override,
/// else its path below the fixed part of the spec's pattern (`tree`), else
/// (a plain path) its file name.
pub(crate) fn spec_name(spec: &DbSpec, tree: Option<&TreePattern>, path: &Path) -> Result<String> {
    match (&spec.name, tree) {
        (Some(n), _) => checked(n, path),
        (None, Some(t)) => match t.name_of(path) {
            Some(n) => checked(&n, path),
            None => Err(Error::Config(format!(
                "{}: not below {} (pattern {}), or not UTF-8",
                path.display(),
                t.root().display(),
                t.text()
            ))),
        },
        (None, None) => db_name(path),
    }
}
