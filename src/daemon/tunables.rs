//! glibc's per-thread cache of freed blocks ("tcache") off for the daemon.
//!
//! Why: the daemon runs one watcher thread per database, and glibc keeps a
//! small cache of freed blocks in every thread that allocates. Multiplied by
//! a thousand threads those caches, and the arena pages they keep from being
//! reused or returned (`malloc_trim` cannot release a page a cached block
//! sits on), were a third of walsync's memory: 1,000 idle databases, 77 →
//! 47 MB of allocator memory (`make scale`, `rss by kind`). The cache is a
//! speed-up for programs that free and reallocate the same sizes in tight
//! loops; walsync's threads sleep between file events. CPU did not move
//! beyond noise: 100 databases × 10 commits/s with the setting in the unit
//! (an earlier measurement), 10 databases × 10 commits/s in alternated runs
//! when this re-execution was added.
//!
//! glibc reads its tunables only when a process starts (`GLIBC_TUNABLES`, read
//! by the dynamic loader); there is no call to switch the cache off later.
//! So `walsync sync` re-executes itself once, before any thread starts, with
//! `glibc.malloc.tcache_count=0` added to `GLIBC_TUNABLES` — unless that
//! variable already says how big the cache is (the user's choice wins: set
//! `glibc.malloc.tcache_count=7` to keep glibc's default). The same process
//! id carries on (exec, not fork), so systemd and `--exec` see no
//! difference (signal dispositions and masks start afresh, before walsync
//! sets up its own). An `--exec` child gets `GLIBC_TUNABLES` as walsync
//! found it ([`scrub_child`]). Started through a symlink, the process name
//! becomes the program's own (`walsync-sync`) after the re-execution.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Set in the re-executed process to `GLIBC_TUNABLES` as walsync found it
/// (empty: unset); its presence also means "do not re-execute again".
const MARKER: &str = "WALSYNC_ORIGINAL_GLIBC_TUNABLES";
const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";
const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// `GLIBC_TUNABLES` to re-execute with, from the two variables as found;
/// `None`: go on as is (already re-executed, or the cache size is set).
fn plan(tunables: Option<&OsStr>, marker: Option<&OsStr>) -> Option<OsString> {
    if marker.is_some() {
        return None;
    }
    match tunables.filter(|t| !t.is_empty()) {
        None => Some(OsString::from(TCACHE_OFF)),
        Some(t) if sets_tcache_count(t) => None,
        Some(t) => {
            let mut v = t.to_os_string();
            v.push(":");
            v.push(TCACHE_OFF);
            Some(v)
        }
    }
}

/// `tunables` (colon-separated `name=value` pairs) sets the cache size.
fn sets_tcache_count(tunables: &OsStr) -> bool {
    tunables.as_bytes().split(|b| *b == b':').any(|kv| {
        kv.starts_with(TCACHE_COUNT.as_bytes()) && kv.get(TCACHE_COUNT.len()) == Some(&b'=')
    })
}

/// Re-execute this process with glibc's tcache off when the environment
/// does not size it already. Returns only when no re-execution was needed
/// or it failed (then walsync runs with glibc's default; logged). Call
/// before any thread is spawned.
pub fn reexec_with_tcache_off() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let found = std::env::var_os(TUNABLES);
    let Some(value) = plan(found.as_deref(), std::env::var_os(MARKER).as_deref()) else {
        return;
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            log::warn!("glibc's malloc cache stays on: {e}");
            return;
        }
    };
    // Run through the dynamic loader (`ld-linux… walsync-sync …`), this
    // process's program is the loader: re-executing it with walsync's
    // arguments would fail.
    let name = exe.file_name().map(OsStr::as_bytes).unwrap_or_default();
    if name.starts_with(b"ld-") || name.starts_with(b"ld.so") {
        log::debug!("run through the dynamic loader: glibc's malloc cache stays on");
        return;
    }
    let err = exec_with(&exe, &value, found.as_deref().unwrap_or_default());
    log::warn!(
        "glibc's malloc cache stays on: re-executing {} failed: {err}",
        exe.display()
    );
}

/// Exec `exe` with this process's arguments and `GLIBC_TUNABLES=value`;
/// returns the error when the exec fails.
fn exec_with(exe: &Path, value: &OsStr, original: &OsStr) -> std::io::Error {
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| OsString::from("walsync"));
    // The program's own path, not /proc/self/exe, whose name would become
    // the process name that ps, top and pkill show.
    let sigpipe = sigpipe_disposition(None);
    let err = Command::new(exe)
        .arg0(arg0)
        .args(args)
        .env(TUNABLES, value)
        .env(MARKER, original)
        .exec();
    // `exec` sets SIGPIPE back to the default action before trying (for
    // the new program); Rust programs run with it ignored, and walsync
    // relies on that: a closed stdout must be an EPIPE error, never a
    // silent death that skips the shutdown drain. Put it back as it was.
    if let Some(old) = sigpipe {
        sigpipe_disposition(Some(old));
    }
    err
}

/// SIGPIPE's disposition before `set` replaces it (`None`: the call
/// failed). Process-wide: called before any thread is spawned.
fn sigpipe_disposition(set: Option<libc::sigaction>) -> Option<libc::sigaction> {
    // SAFETY: `sigaction` reads (and with `set`, replaces) one signal's
    // disposition; both pointers are valid for the call, the new action a
    // copy of one the kernel returned before, so no handler is invented.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        let new = set
            .as_ref()
            .map_or(std::ptr::null(), |n| n as *const libc::sigaction);
        (libc::sigaction(libc::SIGPIPE, new, &mut old) == 0).then_some(old)
    }
}

/// Give a child (`--exec`) `GLIBC_TUNABLES` as walsync found it.
pub fn scrub_child(cmd: &mut Command) {
    match std::env::var_os(MARKER) {
        Some(original) if original.is_empty() => {
            cmd.env_remove(TUNABLES);
        }
        Some(original) => {
            cmd.env(TUNABLES, original);
        }
        None => {}
    }
    cmd.env_remove(MARKER);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<&OsStr> {
        Some(OsStr::new(s))
    }

    #[test]
    fn the_cache_size_is_added_unless_set() {
        assert_eq!(plan(None, None), Some(OsString::from(TCACHE_OFF)));
        assert_eq!(plan(os(""), None), Some(OsString::from(TCACHE_OFF)));
        assert_eq!(
            plan(os("glibc.malloc.arena_max=2"), None),
            Some(OsString::from(
                "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"
            ))
        );
        assert_eq!(plan(os("glibc.malloc.tcache_count=7"), None), None);
        assert_eq!(
            plan(
                os("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3"),
                None
            ),
            None
        );
        // A name that merely starts the same is another tunable, and a
        // name without a value sets nothing (glibc ignores it).
        assert!(plan(os("glibc.malloc.tcache_count_x=1"), None).is_some());
        assert!(plan(os("glibc.malloc.tcache_count"), None).is_some());
        // Re-executed already: never again (glibc may have dropped the
        // variable, in secure-execution mode).
        assert_eq!(plan(None, os("")), None);
        assert_eq!(plan(os("x=1"), os("x=1")), None);
    }

    /// Set in the process that runs the check below on its own.
    const ALONE: &str = "WALSYNC_TEST_SIGPIPE_ALONE";

    /// `exec` changes a process-wide disposition for a moment, which could
    /// kill the harness if another test wrote to a closed socket then: the
    /// check runs in a process of its own (this test binary, this test
    /// only).
    #[test]
    fn a_failed_exec_leaves_sigpipe_as_it_was() {
        let name = "daemon::tunables::tests::a_failed_exec_leaves_sigpipe_as_it_was";
        if std::env::var_os(ALONE).is_none() {
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains("1 passed"),
                "the check did not run: {stdout}"
            );
            return;
        }
        let before = sigpipe_disposition(None).unwrap().sa_sigaction;
        assert_eq!(
            before,
            libc::SIG_IGN,
            "Rust programs start with SIGPIPE ignored"
        );
        let err = exec_with(
            Path::new("/nonexistent/walsync"),
            OsStr::new(TCACHE_OFF),
            OsStr::new(""),
        );
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(sigpipe_disposition(None).unwrap().sa_sigaction, before);
    }
}
