//! Glob patterns over directory trees: which files match, which directories
//! can lead to a match, and the walk that finds both.
//!
//! Why not `glob::glob` alone: the daemon must also *watch* every directory
//! a pattern's wildcard parts can match, including ones created while it
//! runs (`/srv/tenants/*/data.db`: a tenant created later is replicated),
//! so it needs the directories as well as the files, and the question "can
//! anything below this new directory match?" for each directory event.
//!
//! A pattern is its fixed leading part (the components without a wildcard,
//! the *root*) and the components after it, matched one path component at
//! a time as a POSIX shell does: `*`, `?` and `[…]` never cross a `/`, and
//! never match a leading `.` (hidden directories such as `.snapshots` are not
//! walked); `**` as a whole component matches any number of directories,
//! zero included. A database's name in the bucket is its path below the
//! root ([`TreePattern::name_of`]), so names stay the same wherever the root
//! is mounted.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// True when `s` has a glob wildcard.
pub(crate) fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// How a component is matched: shell-like (see the module docs).
const OPTIONS: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: true,
};

#[derive(Debug, Clone)]
enum Part {
    /// `**`: any number of directories.
    AnyDepth,
    Glob(glob::Pattern),
}

impl Part {
    fn matches(&self, component: &str) -> bool {
        match self {
            Part::AnyDepth => !component.starts_with('.'),
            Part::Glob(g) => g.matches_with(component, OPTIONS),
        }
    }
}

/// One glob pattern of the command line or config file.
#[derive(Debug, Clone)]
pub struct TreePattern {
    text: String,
    root: PathBuf,
    /// Components after the root; the last one matches file names.
    parts: Vec<Part>,
}

impl TreePattern {
    /// Parse `text`, which must contain a wildcard.
    pub fn new(text: &str) -> Result<TreePattern> {
        let bad = |why: String| Error::Config(format!("{text}: invalid pattern: {why}"));
        let mut root = PathBuf::new();
        let mut parts = Vec::new();
        for c in Path::new(text).components() {
            let s = match c {
                Component::CurDir if parts.is_empty() => continue,
                Component::Normal(s) => s.to_str().ok_or_else(|| bad("not valid UTF-8".into()))?,
                Component::RootDir | Component::Prefix(_) if parts.is_empty() => {
                    root.push(c);
                    continue;
                }
                Component::ParentDir if parts.is_empty() => {
                    root.push(c);
                    continue;
                }
                _ => return Err(bad("'.' or '..' after a wildcard".into())),
            };
            if parts.is_empty() && !is_pattern(s) {
                root.push(s);
            } else if s == "**" {
                parts.push(Part::AnyDepth);
            } else if s.contains("**") {
                return Err(bad("'**' must be a whole path component".into()));
            } else {
                parts.push(Part::Glob(
                    glob::Pattern::new(s).map_err(|e| bad(e.to_string()))?,
                ));
            }
        }
        match parts.last() {
            None => return Err(bad("no wildcard".into())),
            Some(Part::AnyDepth) => {
                // `/srv/**` means every file below /srv.
                parts.push(Part::Glob(
                    glob::Pattern::new("*").map_err(|e| bad(e.to_string()))?,
                ))
            }
            Some(Part::Glob(_)) => {}
        }
        if root.as_os_str().is_empty() {
            root.push(".");
        }
        Ok(TreePattern {
            text: text.to_string(),
            root,
            parts,
        })
    }

    /// A pattern matching exactly the file at `path` (a database named on
    /// the command line that does not exist yet): its directory is watched
    /// like a pattern's root, and its name is its file name.
    pub fn exact(path: &Path) -> Result<TreePattern> {
        let text = path.to_string_lossy().into_owned();
        let (dir, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(d), Some(n)) => (d, n),
            _ => {
                return Err(Error::Config(format!(
                    "{text}: not a file path with a UTF-8 file name"
                )))
            }
        };
        let root = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        };
        let glob = glob::Pattern::new(&glob::Pattern::escape(name))
            .map_err(|e| Error::Config(format!("{text}: {e}")))?;
        Ok(TreePattern {
            text,
            root,
            parts: vec![Part::Glob(glob)],
        })
    }

    /// The pattern as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The fixed leading directory (`.` when the pattern starts with a wildcard).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The components of `path` below the root, if it is below the root and
    /// every component is UTF-8.
    fn below_root<'p>(&self, path: &'p Path) -> Option<Vec<&'p str>> {
        // Below `.`, the walk writes `app.db`, not `./app.db`.
        let rel = if self.root == Path::new(".") && path.is_relative() {
            path.strip_prefix(".").unwrap_or(path)
        } else {
            path.strip_prefix(&self.root).ok()?
        };
        rel.components()
            .map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect()
    }

    /// Whether the file at `path` (written as root + components, as the walk
    /// and the file events produce it) matches the whole pattern.
    pub fn matches(&self, path: &Path) -> bool {
        self.below_root(path)
            .is_some_and(|c| full_match(&self.parts, &c))
    }

    /// Whether a file matching the pattern can be in `dir` or below it: the
    /// directories to watch and to walk.
    pub fn could_contain(&self, dir: &Path) -> bool {
        let dirs = &self.parts[..self.parts.len() - 1];
        self.below_root(dir).is_some_and(|c| prefix_match(dirs, &c))
    }

    /// The database name of a matching `path`: its components below the
    /// root, joined by `/` (`/srv/tenants/*/data.db` → `acme/data.db`).
    pub fn name_of(&self, path: &Path) -> Option<String> {
        self.below_root(path)
            .filter(|c| !c.is_empty())
            .map(|c| c.join("/"))
    }

    /// Walk `from` (the root, or a directory that appeared below it): call
    /// `visit` on every directory that could contain a match, before listing
    /// it (so a watch added there misses nothing created during the walk),
    /// and return the matching files. `visit` returns whether to search the
    /// directory (`false`: skip it, e.g. a `lost+found` that cannot be
    /// watched); its first error ends the walk, with the files found so far.
    /// Symlinked directories are followed, each directory once. Unreadable
    /// directories are logged and skipped.
    pub fn walk(
        &self,
        from: &Path,
        visit: &mut dyn FnMut(&Path) -> Result<bool>,
    ) -> (Vec<PathBuf>, Option<Error>) {
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        let mut stack = vec![from.to_path_buf()];
        while let Some(dir) = stack.pop() {
            if !self.could_contain(&dir) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue; // removed meanwhile
            };
            if !meta.is_dir() {
                continue;
            }
            use std::os::unix::fs::MetadataExt;
            if !seen.insert((meta.dev(), meta.ino())) {
                continue; // a symlink loop, or a second way to one directory
            }
            match visit(&dir) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    files.sort();
                    return (files, Some(e));
                }
            }
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) => {
                    log::warn!("{}: {e}; not searched for databases", dir.display());
                    continue;
                }
            };
            for entry in entries.flatten() {
                let path = child(&dir, &entry.file_name());
                let is_dir = std::fs::metadata(&path).is_ok_and(|m| m.is_dir());
                if is_dir {
                    stack.push(path);
                } else if self.matches(&path) && is_database_name(&path) {
                    files.push(path);
                }
            }
        }
        files.sort();
        (files, None)
    }
}

/// `dir/name`, without a leading `./` (paths as a user would write them).
pub(crate) fn child(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    if dir == Path::new(".") {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

/// `comps` matched by all of `parts`.
fn full_match(parts: &[Part], comps: &[&str]) -> bool {
    match (parts.first(), comps.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        (Some(Part::AnyDepth), _) => {
            full_match(&parts[1..], comps)
                || comps
                    .first()
                    .is_some_and(|c| Part::AnyDepth.matches(c) && full_match(parts, &comps[1..]))
        }
        (Some(_), None) => false,
        (Some(p), Some(c)) => p.matches(c) && full_match(&parts[1..], &comps[1..]),
    }
}

/// `comps` (a directory) matched by a leading part of `parts`.
fn prefix_match(parts: &[Part], comps: &[&str]) -> bool {
    match (parts.first(), comps.first()) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(Part::AnyDepth), Some(c)) => {
            prefix_match(&parts[1..], comps)
                || (Part::AnyDepth.matches(c) && prefix_match(parts, &comps[1..]))
        }
        (Some(p), Some(c)) => p.matches(c) && prefix_match(&parts[1..], &comps[1..]),
    }
}

/// False for SQLite's side files (and walsync's lock file), which a pattern
/// like `/data/*` also matches, and for hidden files.
pub fn is_database_name(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    !(name.ends_with("-wal")
        || name.ends_with("-shm")
        || name.ends_with("-journal")
        || name.ends_with(crate::sqlite::lock::LOCK_SUFFIX)
        || name.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> TreePattern {
        TreePattern::new(s).unwrap()
    }

    #[test]
    fn roots_and_names() {
        let t = p("/srv/tenants/*/data.db");
        assert_eq!(t.root(), Path::new("/srv/tenants"));
        let f = Path::new("/srv/tenants/acme/data.db");
        assert!(t.matches(f));
        assert_eq!(t.name_of(f).as_deref(), Some("acme/data.db"));
        assert!(!t.matches(Path::new("/srv/tenants/a/b/data.db")));
        assert!(!t.matches(Path::new("/srv/tenants/.trash/data.db")));
        assert!(!t.matches(Path::new("/srv/other/acme/data.db")));
        let flat = p("/data/*.db");
        assert_eq!(
            flat.name_of(Path::new("/data/app.db")).as_deref(),
            Some("app.db")
        );
        let rel = p("*.db");
        assert_eq!(rel.root(), Path::new("."));
        assert!(rel.matches(Path::new("./app.db")));
        assert!(rel.matches(Path::new("app.db")));
        assert_eq!(rel.name_of(Path::new("app.db")).as_deref(), Some("app.db"));
        assert_eq!(
            p("./data/*.db").name_of(Path::new("data/x.db")).as_deref(),
            Some("x.db")
        );
    }

    #[test]
    fn any_depth() {
        let t = p("/srv/**/*.db");
        for f in ["/srv/a.db", "/srv/x/a.db", "/srv/x/y/z/a.db"] {
            assert!(t.matches(Path::new(f)), "{f}");
        }
        assert!(!t.matches(Path::new("/srv/.hidden/a.db")));
        assert_eq!(
            t.name_of(Path::new("/srv/x/y/a.db")).as_deref(),
            Some("x/y/a.db")
        );
        assert!(t.could_contain(Path::new("/srv/x/y/z")));
        let every = p("/srv/**");
        assert!(every.matches(Path::new("/srv/a/b")));
        assert!(every.could_contain(Path::new("/srv/a")));
    }

    #[test]
    fn directories_worth_watching() {
        let t = p("/srv/*/db/*.db");
        assert!(t.could_contain(Path::new("/srv")));
        assert!(t.could_contain(Path::new("/srv/acme")));
        assert!(t.could_contain(Path::new("/srv/acme/db")));
        assert!(!t.could_contain(Path::new("/srv/acme/logs")));
        assert!(!t.could_contain(Path::new("/srv/acme/db/old")));
        assert!(!t.could_contain(Path::new("/srv/.git")));
        assert!(!t.could_contain(Path::new("/other")));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "/srv/a**/x.db",
            "/srv/*/../x.db",
            "/srv/[/x.db",
            "/srv/x.db",
        ] {
            assert!(TreePattern::new(bad).is_err(), "{bad}");
        }
    }
}
