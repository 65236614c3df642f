//! Helpers of the follow-mode tests (tests/follow.rs, tests/failover.rs):
//! a follower (`walsync restore --follow`) and daemons with logs of their
//! own, read-only connections, the txid a follower stopped at.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::daemon::Env;
use super::oracle::app_state;
use super::process::{log_path, Cmd, Proc};

/// `walsync restore DB -o OUT --follow` against the test's bucket.
pub fn follower(env: &Env, db: &str, out: &Path, name: &str, extra: &[&str]) -> Proc {
    let log = log_path(name);
    let _ = std::fs::remove_file(&log);
    let stdout = log.with_extension("stdout");
    Cmd::new(env!("CARGO_BIN_EXE_walsync"))
        .args(["restore", db, "-o"])
        .arg(out)
        .args([
            "--bucket",
            &format!("s3://{}/{}", env.bucket, env.prefix),
            "--follow",
        ])
        .args(extra)
        .env("RUST_LOG", "walsync=debug")
        .stdout_to(&stdout)
        .spawn(&log)
}

/// `walsync-sync DB` with its own log (two daemons of one test must not
/// share one: a line waited for must be the right one's).
pub fn daemon(env: &Env, dbs: &[&Path], name: &str, extra: &[&str]) -> Proc {
    let log = log_path(name);
    let _ = std::fs::remove_file(&log);
    Cmd::new(env!("CARGO_BIN_EXE_walsync-sync"))
        .args(dbs.iter().map(|p| p.as_os_str()))
        .args([
            "--bucket",
            &env.bucket,
            "--prefix",
            &env.prefix,
            "--shutdown-timeout",
            "10s",
            "--status-socket",
            "none",
        ])
        .args(extra)
        .env("RUST_LOG", "walsync=debug")
        .spawn(&log)
}

/// A read-only connection (`mode=ro`), as an application reads a follower.
pub fn open_ro(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        format!("file:{}?mode=ro", path.display()),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// The txid of the follower's last line `stopped following DB at txid N`.
pub fn stopped_at(f: &Proc) -> u64 {
    let out = f.stdout_text();
    out.lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("stopped following ")?
                .split(" at txid ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no 'stopped following' line in {out:?}"))
}

/// The follower's database state by the model (`None` until readable).
pub fn follower_state(out: &Path) -> Option<(i64, i64)> {
    open_ro(out).ok().and_then(|c| app_state(&c).ok().flatten())
}
