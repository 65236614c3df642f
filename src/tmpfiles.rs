//! Temporary LTX files: names that say whose they are, and a start-up sweep.
//!
//! Why: a snapshot, a segment over [`crate::upload::segment::MEMORY_LIMIT`] or a
//! compaction is encoded into a file in the temp directory (and, with
//! encryption, sealed into a second one) so memory stays bounded; the file is
//! deleted once stored. A SIGKILL, an OOM kill or a power cut skips that
//! deletion, and each leftover is as large as the database: a daemon
//! restarted by a supervisor after every kill would fill the disk.
//!
//! So every such file is named `.walsync-<pid>-<random>.ltx.tmp`, and the
//! daemon sweeps its temp directories at start-up ([`sweep`]). A file is
//! removed only when its owner is certainly gone:
//!
//! - its pid names no live process (`kill(pid, 0)` fails with `ESRCH`; a
//!   process of another user, `EPERM`, counts as alive); or the pid is this
//!   process's own and this process has not created a temp file yet (an
//!   earlier process with the same pid: walsync as PID 1 of a container
//!   restarts with the same pid every time);
//! - names from before this scheme (`.walsync-XXXXXX.ltx.tmp`,
//!   `.walsync-enc-XXXXXX`) carry no pid: they are removed when older than
//!   [`LEGACY_AGE`], longer than any upload holds one.
//!
//! The pid is that of this machine's (this PID namespace's) process table:
//! a temp directory shared with walsync processes on another host or in
//! another container must not be swept, and is not a supported setup.

use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Names of temp files start with this.
const PREFIX: &str = ".walsync-";
/// ... and end with this.
const SUFFIX: &str = ".ltx.tmp";
/// Legacy (pid-less) names this old are leftovers.
pub const LEGACY_AGE: Duration = Duration::from_secs(3600);

/// Set once this process created a temp file: from then on its own pid's
/// files are live.
static CREATED: AtomicBool = AtomicBool::new(false);

/// A new, empty temp file `.walsync-<pid>-<random>.ltx.tmp` in `dir`,
/// deleted when the returned value (or its `TempPath`) is dropped.
pub fn create(dir: &Path) -> Result<tempfile::NamedTempFile<File>> {
    CREATED.store(true, Ordering::SeqCst);
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .suffix(SUFFIX)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))
}

/// What a file name says about its owner.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// Created by the process with this pid.
    Pid(u32),
    /// A name from before pids were recorded.
    Legacy,
}

fn owner(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix(PREFIX)?;
    if let Some(mid) = rest.strip_suffix(SUFFIX) {
        if let Some((pid, random)) = mid.split_once('-') {
            let pid = pid.parse::<u32>().ok().filter(|p| *p > 0)?;
            return (!random.is_empty()).then_some(Owner::Pid(pid));
        }
        // tempfile's random part: six alphanumerics.
        return (!mid.is_empty() && mid.bytes().all(|b| b.is_ascii_alphanumeric()))
            .then_some(Owner::Legacy);
    }
    let random = rest.strip_prefix("enc-")?;
    (!random.is_empty() && random.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(Owner::Legacy)
}

/// True unless the process table certainly has no process `pid`.
fn alive(pid: u32) -> bool {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(p),
        Err(e) if e == rustix::io::Errno::SRCH
    )
}

/// Whether the file `name`, last modified at `modified`, is a leftover.
fn is_leftover(name: &str, modified: Option<SystemTime>, own_live: bool) -> bool {
    match owner(name) {
        Some(Owner::Pid(pid)) if pid == std::process::id() => !own_live,
        Some(Owner::Pid(pid)) => !alive(pid),
        Some(Owner::Legacy) => modified
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= LEGACY_AGE),
        None => false,
    }
}

/// Removes the temp files in `dir` whose process is gone (see the module
/// doc); returns how many. Logs one line when it removed any, and a warning
/// per file it could not remove. Never fails: a sweep is housekeeping.
pub fn sweep(dir: &Path) -> usize {
    sweep_with(dir, CREATED.load(Ordering::SeqCst))
}

fn sweep_with(dir: &Path, own_live: bool) -> usize {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            log::debug!("{}: not swept for temp files: {e}", dir.display());
            return 0;
        }
    };
    let (mut count, mut bytes) = (0usize, 0u64);
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        // symlink_metadata: a link or directory of that name is left alone.
        let Ok(md) = entry.path().symlink_metadata() else {
            continue;
        };
        if !md.is_file() || !is_leftover(&name, md.modified().ok(), own_live) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                count += 1;
                bytes += md.len();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}: cannot remove leftover: {e}", entry.path().display()),
        }
    }
    if count > 0 {
        log::info!(
            "removed {count} temporary file(s) ({:.1} MiB) left in {} by walsync processes that no longer run",
            bytes as f64 / (1 << 20) as f64,
            dir.display()
        );
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_whose_they_are() {
        assert_eq!(owner(".walsync-123-AbC9x.ltx.tmp"), Some(Owner::Pid(123)));
        assert_eq!(owner(".walsync-Ab3xYz.ltx.tmp"), Some(Owner::Legacy));
        assert_eq!(owner(".walsync-enc-Ab3xYz"), Some(Owner::Legacy));
        for other in [
            ".walsync-0-x.ltx.tmp",
            ".walsync-12-.ltx.tmp",
            ".walsync-x1-y.ltx.tmp",
            ".walsync-conditional.lock",
            ".walsync-.ltx.tmp",
            "walsync-verify-abc",
            ".walsync-ab/c.ltx.tmp",
            "a.db",
        ] {
            assert_eq!(owner(other), None, "{other}");
        }
    }

    fn touch(dir: &Path, name: &str, age: Duration) {
        let f = File::create(dir.join(name)).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    /// A pid that named a process a moment ago and names none now.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        pid
    }

    #[test]
    fn sweep_removes_only_files_of_processes_that_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let own = std::process::id();
        let dead = format!(".walsync-{}-aaaaaa.ltx.tmp", dead_pid());
        let live_other = format!(".walsync-{}-bbbbbb.ltx.tmp", other.id());
        let live_own = format!(".walsync-{own}-cccccc.ltx.tmp");
        let fresh = Duration::ZERO;
        touch(d, &dead, fresh);
        touch(d, &live_other, LEGACY_AGE * 10);
        touch(d, &live_own, LEGACY_AGE * 10);
        touch(
            d,
            ".walsync-Old123.ltx.tmp",
            LEGACY_AGE + Duration::from_secs(60),
        );
        touch(
            d,
            ".walsync-enc-Old123",
            LEGACY_AGE + Duration::from_secs(60),
        );
        touch(d, ".walsync-New123.ltx.tmp", Duration::from_secs(60));
        touch(d, "unrelated.ltx.tmp", LEGACY_AGE * 10);
        // A directory with a leftover's name is not ours to remove.
        fs::create_dir(d.join(format!(".walsync-{}-dddddd.ltx.tmp", dead_pid()))).unwrap();

        assert_eq!(sweep_with(d, true), 3);
        let left = names(d);
        assert!(!left.contains(&dead), "{left:?}");
        for kept in [&live_other, &live_own] {
            assert!(left.contains(kept), "{kept} removed: {left:?}");
        }
        assert!(left.contains(&".walsync-New123.ltx.tmp".to_string()));
        assert!(left.contains(&"unrelated.ltx.tmp".to_string()));
        assert_eq!(left.len(), 5, "{left:?}");

        // Before this process made a temp file, its own pid's files are an
        // earlier process's (same pid after a restart).
        assert_eq!(sweep_with(d, false), 1);
        assert!(!names(d).contains(&live_own));
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn created_files_carry_this_pid_and_survive_a_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let f = create(dir.path()).unwrap();
        let name = f.path().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(owner(&name), Some(Owner::Pid(std::process::id())));
        assert_eq!(sweep(dir.path()), 0);
        assert!(f.path().exists());
        drop(f);
        assert!(names(dir.path()).is_empty());
    }
}
