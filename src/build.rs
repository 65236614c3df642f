//! Build script: the git commit `walsync --version` prints.
//!
//! Sets `WALSYNC_GIT_COMMIT` for the crate: the value of that variable at
//! build time when set (a packager building from a tarball can name the
//! commit), else `git rev-parse --short=12 HEAD` of the checkout being
//! built, else `unknown` (no git, not a checkout: a crate tarball). It never
//! fails the build.
//!
//! Rebuilds only when HEAD moves: cargo watches the HEAD file and the ref
//! it points to (both found with `git rev-parse --git-path`, so worktrees
//! work too), never the whole tree.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Watch `path` if it exists (a path that does not exist would make cargo
/// rerun this script on every build); else, with `or_dir`, its directory.
fn watch(path: &Path, or_dir: bool) {
    let path = match (path.exists(), path.parent()) {
        (true, _) => path,
        (false, Some(dir)) if or_dir && dir.is_dir() => dir,
        _ => return,
    };
    println!("cargo:rerun-if-changed={}", path.display());
}

fn main() {
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-env-changed=WALSYNC_GIT_COMMIT");
    let given = std::env::var("WALSYNC_GIT_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let commit = match given {
        Some(c) => c.trim().to_string(),
        None => {
            // Only a checkout whose top level is this crate: a crate
            // unpacked inside some other repository must not report that
            // repository's commit.
            let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
            let top = git(&["rev-parse", "--show-toplevel"]);
            let ours = match (top, std::fs::canonicalize(&manifest)) {
                (Some(top), Ok(m)) => std::fs::canonicalize(top).ok() == Some(m),
                _ => false,
            };
            if ours {
                // --git-path answers relative to the crate's directory. A
                // branch whose ref is only in packed-refs (a fresh clone's
                // may be) gets a file of its own at its next commit, in the
                // ref's directory (refs/heads), which is watched for that.
                let path = |p: String| Path::new(&manifest).join(p);
                if let Some(p) = git(&["rev-parse", "--git-path", "HEAD"]) {
                    watch(&path(p), false);
                }
                if let Some(p) = git(&["symbolic-ref", "-q", "HEAD"])
                    .and_then(|r| git(&["rev-parse", "--git-path", &r]))
                {
                    watch(&path(p), true);
                }
                if let Some(p) = git(&["rev-parse", "--git-path", "packed-refs"]) {
                    watch(&path(p), false);
                }
                git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
            } else {
                "unknown".into()
            }
        }
    };
    println!("cargo:rustc-env=WALSYNC_GIT_COMMIT={commit}");
}
