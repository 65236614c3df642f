//! The open-file limit: raised to the hard limit at start, and checked
//! against the databases found, so that running out is one clear line at
//! start rather than one "unable to open database file" per database.

use crate::error::{Error, Result};

/// Descriptors one replicated database holds (measured, idle after its first
/// snapshot): SQLite's database, WAL and `-shm`, the descriptor SQLite keeps
/// of the database after the fence's connection closes (closing it would
/// drop the locks), walsync's own database, WAL and `-shm` descriptors, and
/// the lock file.
const FDS_PER_DB: u64 = 8;
/// Descriptors besides the databases' (stdio, inotify, sockets, temp files).
const FDS_BASE: u64 = 64;

/// The usual soft open-file limit of 1,024 would stop at ~120 databases:
/// raise the soft limit to the hard limit, and refuse to start, in one line
/// naming the limit, when even that cannot hold the databases found now
/// (otherwise thousands of them would fail one by one with "unable to open
/// database file").
pub(super) fn raise_fd_limit(databases: usize) -> Result<()> {
    let need = databases as u64 * FDS_PER_DB + FDS_BASE;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < need => Err(Error::Config(format!(
            "{databases} databases need about {need} open files ({FDS_PER_DB} each), but the open-file limit is {n} even raised to its hard limit: raise the hard limit (LimitNOFILE= in the systemd unit, `ulimit -Hn`, or nofile in /etc/security/limits.conf)"
        ))),
        Ok(n) => {
            log::debug!("open-file limit: {n}");
            Ok(())
        }
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            Ok(())
        }
    }
}
