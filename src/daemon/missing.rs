//! `--restore-if-missing`: databases that do not exist at start.
//!
//! Why a file of its own: a container starts on an empty volume, and the
//! application's database must come back from its replica *before* the
//! application opens it (an application that finds no file creates an empty
//! one, and walsync would then ship that as the new state). So before
//! replication starts, each database given as a plain path that does not
//! exist is restored (newest state) with the restore code of `walsync
//! restore` (atomic, verified), through the same storage, prefix and keys
//! as its replication. A database that exists is left alone, even when its
//! replica is newer. A missing database without a replica starts empty:
//! its directory is watched, and its replication begins when the
//! application creates it (with `--require-replica` that is refused
//! instead). For a glob pattern, each replica whose name maps back to a
//! path the pattern matches (its root joined with the name) is restored
//! there — unless that name is taken locally (a plain path's, or a file a
//! pattern finds now) or another pattern storing in the same place could
//! produce it too: names are one namespace per bucket, and restoring a
//! database under the wrong pattern would put a tenant's data in another
//! tree (and refuse every later start with a name clash).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::daemon::config::DbSpec;
use crate::daemon::targets::{is_pattern, spec_name};
use crate::daemon::tree::TreePattern;
use crate::daemon::OwnStorage;
use crate::error::{Error, Result};
use crate::restore::{self, RestoreOptions, Target};
use crate::storage::Storage;

/// What to do about configured databases that do not exist at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IfMissing {
    /// Refuse them (`expand`: "no such database file").
    #[default]
    Refuse,
    /// Restore them from their replica; without one, wait for the
    /// application to create them.
    Restore,
    /// Restore them; without a replica, refuse to start.
    RestoreRequired,
}

/// The configured plain paths that do not exist (with their spec index).
fn missing(specs: &[DbSpec]) -> Vec<(usize, PathBuf)> {
    specs
        .iter()
        .enumerate()
        .filter(|(_, s)| !is_pattern(&s.pattern))
        .map(|(i, s)| (i, PathBuf::from(&s.pattern)))
        .filter(|(_, p)| std::fs::symlink_metadata(p).is_err())
        .collect()
}

/// The databases of `storage` that pattern `specs[i]` would replicate under
/// their name but that are missing locally: `(i, path)`, where the path is
/// the pattern's root joined with the name (the inverse of
/// [`TreePattern::name_of`]). A plain path or an earlier pattern that also
/// covers the path keeps it (as the daemon decides at start).
fn missing_in_trees(
    specs: &[DbSpec],
    storage_of: &dyn Fn(usize) -> Arc<dyn Storage>,
) -> Result<Vec<(usize, PathBuf)>> {
    let trees = specs
        .iter()
        .map(|s| {
            is_pattern(&s.pattern)
                .then(|| TreePattern::new(&s.pattern))
                .transpose()
        })
        .collect::<Result<Vec<_>>>()?;
    // The spec a path belongs to, as the daemon decides: a plain path
    // naming it, else the first pattern matching it.
    let owner = |path: &Path| {
        specs
            .iter()
            .position(|s| !is_pattern(&s.pattern) && Path::new(&s.pattern) == path)
            .or_else(|| {
                trees
                    .iter()
                    .position(|t| t.as_ref().is_some_and(|t| t.matches(path)))
            })
    };
    // The names every spec holds locally now: a plain path's, and those of
    // the files each pattern finds. A replica of such a name is that file's.
    let mut taken = std::collections::HashSet::new();
    for (i, (spec, tree)) in specs.iter().zip(&trees).enumerate() {
        match tree {
            None => taken.extend(spec_name(spec, None, Path::new(&spec.pattern)).ok()),
            Some(t) => {
                for f in t.walk(t.root(), &mut |_| Ok(true)).0 {
                    if owner(&f) == Some(i) {
                        taken.extend(spec_name(spec, Some(t), &f).ok());
                    }
                }
            }
        }
    }
    // `tree` (spec `i`) would replicate a database named `name` at `path`.
    let produces = |i: usize, tree: &TreePattern, name: &str| {
        let path = tree.root().join(name);
        (owner(&path) == Some(i) && tree.name_of(&path).as_deref() == Some(name)).then_some(path)
    };
    let mut out: Vec<(usize, PathBuf)> = Vec::new();
    for (i, tree) in trees.iter().enumerate() {
        let Some(tree) = tree else { continue };
        let storage = storage_of(i);
        let listing =
            crate::storage::retry_transient(5, &storage.describe(), || storage.list("", None))?;
        let mut names = std::collections::BTreeSet::new();
        for info in listing {
            // Names come from the bucket: only those walsync could have
            // written (no `..`, no empty segment) map to a path.
            match crate::ltx::parse_object_key("", &info.key) {
                Some(k) if crate::ltx::check_db_name(&k.db).is_ok() => {
                    names.insert(k.db);
                }
                _ => {}
            }
        }
        for name in names {
            let Some(path) = produces(i, tree, &name) else {
                continue;
            };
            if taken.contains(&name) || std::fs::symlink_metadata(&path).is_ok() {
                continue;
            }
            let rivals: Vec<&str> = trees
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && storage_of(*j).describe() == storage.describe())
                .filter_map(|(j, t)| t.as_ref().filter(|t| produces(j, t, &name).is_some()))
                .map(TreePattern::text)
                .collect();
            if !rivals.is_empty() {
                log::warn!(
                    "--restore-if-missing: replica {name:?} could belong to {} or {}: not restored",
                    tree.text(),
                    rivals.join(" or ")
                );
                continue;
            }
            out.push((i, path));
        }
    }
    Ok(out)
}

/// Restore every missing database that has a replica: each configured plain
/// path, and for a pattern each replica in the bucket whose name maps to a
/// path the pattern matches (`/srv/tenants/*/data.db` and a replica
/// `acme/data.db` → `/srv/tenants/acme/data.db`, directories created).
/// `default` stores every database unless `own[i]` gives `specs[i]` a
/// storage of its own. Errors (a failed restore, a missing replica under
/// [`IfMissing::RestoreRequired`]) name the path; nothing is replicated then.
pub fn restore_missing(
    specs: &[DbSpec],
    mode: IfMissing,
    default: &Arc<dyn Storage>,
    own: &[Option<OwnStorage>],
) -> Result<()> {
    if mode == IfMissing::Refuse {
        return Ok(());
    }
    let storage_of = |i: usize| -> Arc<dyn Storage> {
        match own.get(i) {
            Some(Some(own)) => own.data.clone(),
            _ => default.clone(),
        }
    };
    let from_trees = missing_in_trees(specs, &storage_of)?;
    for (i, path) in missing(specs).into_iter().chain(from_trees) {
        let tree = match is_pattern(&specs[i].pattern) {
            true => Some(TreePattern::new(&specs[i].pattern)?),
            false => None,
        };
        let name = spec_name(&specs[i], tree.as_ref(), &path)?;
        let storage = storage_of(i);
        let at =
            |e: Error| Error::Restore(format!("{}: --restore-if-missing: {e}", path.display()));
        match restore::plan_if_replica(&*storage, &name, Target::Latest).map_err(at)? {
            Some(plan) => {
                if let Some(dir) = path.parent().filter(|_| tree.is_some()) {
                    std::fs::create_dir_all(dir).map_err(|e| at(Error::io(dir, e)))?;
                }
                let summary = restore::restore(&*storage, &plan, &path, &RestoreOptions::default())
                    .map_err(at)?;
                log::info!("{} (--restore-if-missing)", summary.line());
            }
            None if mode == IfMissing::RestoreRequired => {
                return Err(Error::Restore(format!(
                    "{}: does not exist and {name:?} has no replica in {} (--require-replica)",
                    path.display(),
                    storage.describe()
                )));
            }
            None => log::info!(
                "{}: does not exist and {name:?} has no replica in {}: replicated once it is created",
                path.display(),
                storage.describe()
            ),
        }
    }
    Ok(())
}

/// For a plain path that does not exist (only with a restore mode): a
/// pattern matching exactly that file, so its directory is watched and its
/// replication begins when the application creates it. `None` for anything
/// else (the caller expands it as usual).
pub fn watch_missing(spec: &DbSpec, mode: IfMissing) -> Result<Option<TreePattern>> {
    if mode == IfMissing::Refuse
        || is_pattern(&spec.pattern)
        || std::fs::symlink_metadata(&spec.pattern).is_ok()
    {
        return Ok(None);
    }
    let exact = TreePattern::exact(Path::new(&spec.pattern))?;
    if !exact.root().is_dir() {
        return Err(Error::Config(format!(
            "{}: directory {} does not exist",
            spec.pattern,
            exact.root().display()
        )));
    }
    Ok(Some(exact))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_plain_paths_are_watched() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("there.db");
        std::fs::write(&there, b"").unwrap();
        let absent = dir.path().join("absent.db");
        let spec = |p: &Path| DbSpec::plain(p.to_string_lossy());
        let bare = DbSpec::plain("walsync-test-absent.db");
        let t = watch_missing(&bare, IfMissing::Restore).unwrap().unwrap();
        assert_eq!(t.root(), Path::new("."));
        assert!(t.matches(Path::new("walsync-test-absent.db")));
        assert!(watch_missing(&spec(&there), IfMissing::Restore)
            .unwrap()
            .is_none());
        assert!(watch_missing(&spec(&absent), IfMissing::Refuse)
            .unwrap()
            .is_none());
        let glob = DbSpec::plain(format!("{}/*.db", dir.path().display()));
        assert!(watch_missing(&glob, IfMissing::Restore).unwrap().is_none());
        let t = watch_missing(&spec(&absent), IfMissing::Restore)
            .unwrap()
            .unwrap();
        assert_eq!(t.root(), dir.path());
        assert!(t.matches(&absent));
        assert!(!t.matches(&dir.path().join("other.db")));
        assert_eq!(t.name_of(&absent).as_deref(), Some("absent.db"));
        let nowhere = DbSpec::plain("/no/such/dir/a.db");
        let e = watch_missing(&nowhere, IfMissing::RestoreRequired)
            .unwrap_err()
            .to_string();
        assert!(e.contains("directory /no/such/dir does not exist"), "{e}");
    }
}
