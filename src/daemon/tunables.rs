//! glibc's per-thread cache of freed blocks ("tcache") off for the daemon.
//!
//! Why: the daemon runs one watcher thread per database, and glibc keeps a
//! small cache of freed blocks in every thread that allocates. Multiplied by
//! a thousand threads those caches, and the arena pages they keep from being
//! reused or returned (`malloc_trim` cannot release a page a cached block
//! sits on), were a third of walsync's memory: 1,000 idle databases, 77 →
//! 47 MB of allocator memory (`make scale`, `rss by kind`). The cache is a
//! speed-up for programs that free and reallocate the same sizes in tight
//! loops; walsync's threads sleep between file events, and CPU was unchanged
//! within noise at 100 databases × 10 commits/s.
//!
//! glibc reads its tunables only when a process starts (`GLIBC_TUNABLES`, read
//! by the dynamic loader); there is no call to switch the cache off later.
//! So `walsync sync` re-executes itself once, before any thread starts, with
//! `GLIBC_TUNABLES=glibc.malloc.tcache_count=0` — unless the environment sets
//! `GLIBC_TUNABLES` already (the user's choice wins, any value: set
//! `glibc.malloc.tcache_count=7` to keep glibc's default). The same process
//! id carries on (exec, not fork), so systemd, `--exec` and signal handling
//! see no difference. An `--exec` child does not inherit the variable
//! walsync added ([`scrub_child`]).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Set in the re-executed process: walsync added `GLIBC_TUNABLES` itself
/// (and must not re-execute again).
const MARKER: &str = "WALSYNC_ADDED_GLIBC_TUNABLES";
const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// What to do at the start of `walsync sync`, from the two variables.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// Re-execute with the cache off.
    Reexec,
    /// Already tuned, by walsync or the user: go on.
    Keep,
}

fn plan(tunables: Option<&OsString>, marker: Option<&OsString>) -> Plan {
    if tunables.is_some() || marker.is_some() {
        Plan::Keep
    } else {
        Plan::Reexec
    }
}

/// Re-execute this process with glibc's tcache off when the environment
/// does not tune malloc already. Returns only when no re-execution was
/// needed or it failed (then walsync runs with glibc's default; logged).
/// Call before any thread is spawned.
pub fn reexec_with_tcache_off() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let tunables = std::env::var_os(TUNABLES);
    let marker = std::env::var_os(MARKER);
    if plan(tunables.as_ref(), marker.as_ref()) == Plan::Keep {
        return;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            log::debug!("not re-executed with {TUNABLES}={TCACHE_OFF}: {e}");
            return;
        }
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("walsync"));
    // The program's own path (not /proc/self/exe, whose name would become
    // the process name that ps, top and pkill show). A binary replaced
    // since it started makes the exec fail: walsync then runs untuned.
    let err = Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, TCACHE_OFF)
        .env(MARKER, "1")
        .exec();
    log::debug!("not re-executed with {TUNABLES}={TCACHE_OFF}: {err}");
}

/// Keep `GLIBC_TUNABLES` from a child (`--exec`) when walsync added it:
/// the child gets the environment walsync was started with.
pub fn scrub_child(cmd: &mut Command) {
    if std::env::var_os(MARKER).is_some() {
        cmd.env_remove(TUNABLES);
    }
    cmd.env_remove(MARKER);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_tunables_and_a_done_reexec_are_kept() {
        let some = OsString::from("x");
        assert_eq!(plan(None, None), Plan::Reexec);
        assert_eq!(plan(Some(&some), None), Plan::Keep);
        assert_eq!(plan(None, Some(&some)), Plan::Keep);
        assert_eq!(plan(Some(&some), Some(&some)), Plan::Keep);
    }
}
