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
//! instead). Patterns are out of scope for now: which replica names belong
//! to a pattern is only known once names carry their subdirectory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::daemon::config::DbSpec;
use crate::daemon::targets::{is_pattern, spec_name};
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

/// Restore every missing plain-path database that has a replica. `default`
/// stores every database unless `own[i]` gives `specs[i]` a storage of its
/// own. Errors (a failed restore, a missing replica under
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
    for (i, path) in missing(specs) {
        let name = spec_name(&specs[i], &path)?;
        let storage = match own.get(i) {
            Some(Some(own)) => &own.data,
            _ => default,
        };
        let at =
            |e: Error| Error::Restore(format!("{}: --restore-if-missing: {e}", path.display()));
        match restore::plan_if_replica(&**storage, &name, Target::Latest).map_err(at)? {
            Some(plan) => {
                let summary =
                    restore::restore(&**storage, &plan, &path, &RestoreOptions::default())
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

/// For a plain path that does not exist (only with a restore mode): the
/// directory to watch and the pattern matching exactly that file, so its
/// replication begins when the application creates it. `None` for
/// anything else (the caller expands it as usual).
/// A bare file name (`app.db`) becomes `./app.db` in `spec`, the form in
/// which its creation is reported.
pub fn watch_missing(
    spec: &mut DbSpec,
    mode: IfMissing,
) -> Result<Option<(PathBuf, glob::Pattern)>> {
    if mode == IfMissing::Refuse
        || is_pattern(&spec.pattern)
        || std::fs::symlink_metadata(&spec.pattern).is_ok()
    {
        return Ok(None);
    }
    let path = Path::new(&spec.pattern);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::Config(format!(
            "{}: directory {} does not exist",
            spec.pattern,
            dir.display()
        )));
    }
    // Discoveries are reported as `dir/name`.
    let file = dir.join(path.file_name().unwrap_or_default());
    spec.pattern = file.to_string_lossy().into_owned();
    let pattern = glob::Pattern::new(&glob::Pattern::escape(&file.to_string_lossy()))
        .map_err(|e| Error::Config(format!("{}: {e}", spec.pattern)))?;
    Ok(Some((dir, pattern)))
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
        let bare = &mut DbSpec::plain("walsync-test-absent.db");
        let (d, _) = watch_missing(bare, IfMissing::Restore).unwrap().unwrap();
        assert_eq!(
            (d.to_str(), bare.pattern.as_str()),
            (Some("."), "./walsync-test-absent.db")
        );
        assert!(watch_missing(&mut spec(&there), IfMissing::Restore)
            .unwrap()
            .is_none());
        assert!(watch_missing(&mut spec(&absent), IfMissing::Refuse)
            .unwrap()
            .is_none());
        let mut glob = DbSpec::plain(format!("{}/*.db", dir.path().display()));
        assert!(watch_missing(&mut glob, IfMissing::Restore)
            .unwrap()
            .is_none());
        let (d, p) = watch_missing(&mut spec(&absent), IfMissing::Restore)
            .unwrap()
            .unwrap();
        assert_eq!(d, dir.path());
        assert!(p.matches_path(&absent));
        assert!(!p.matches_path(&dir.path().join("other.db")));
        let mut nowhere = DbSpec::plain("/no/such/dir/a.db");
        let e = watch_missing(&mut nowhere, IfMissing::RestoreRequired)
            .unwrap_err()
            .to_string();
        assert!(e.contains("directory /no/such/dir does not exist"), "{e}");
    }
}
