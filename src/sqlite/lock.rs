//! One writer of a database's replica at a time: an advisory lock file.
//!
//! Why: txids are allocated as "newest stored txid + 1" by whichever process
//! ships next. Two processes shipping the same database (a `walsync-sync`
//! daemon and a `walsync snapshot`, or two daemons) would both pick the same
//! txid and store two different states under it, a replica no restore can
//! trust. So every process that ships a database first takes an exclusive
//! `flock(2)` on `<db>-walsync.lock` next to it and keeps it while it ships;
//! the second process is refused with a message naming the holder's pid.
//!
//! Details:
//! - `flock`, not `fcntl`: SQLite's own locks are POSIX (`fcntl`) locks, and
//!   closing *any* descriptor of a file drops all of a process's POSIX locks
//!   on it. The lock is therefore on a separate file, never on the database,
//!   its `-wal` or its `-shm`, and `flock` locks are independent of SQLite's.
//! - The lock is released by the kernel when the holder exits, also on
//!   SIGKILL: a stale file is harmless and is never deleted (deleting it
//!   would let two processes lock two different inodes of the same name).
//! - It protects processes on one machine (or one kernel's view of a shared
//!   file system). Two machines replicating one database are not supported.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Suffix of the lock file: `<db>-walsync.lock`.
pub const LOCK_SUFFIX: &str = "-walsync.lock";

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(LOCK_SUFFIX);
    PathBuf::from(p)
}

/// An exclusive hold on a database's replica; released when dropped.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
    path: PathBuf,
}

impl DbLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when this is the lock of the database at `db` as it is now
    /// (the same lock file, not one at the same path in a directory that
    /// replaced ours).
    pub fn covers(&self, db: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let real = db.canonicalize().unwrap_or_else(|_| db.to_path_buf());
        match (self._file.metadata(), std::fs::metadata(lock_path(&real))) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }
}

/// Take the lock of the database at `db` without waiting. Fails with a
/// message naming the holder when another process (or another handle in this
/// process) holds it.
pub fn try_lock(db: &Path) -> Result<DbLock> {
    // One lock per file, whichever path or symlink names it.
    let real = db.canonicalize().unwrap_or_else(|_| db.to_path_buf());
    let path = lock_path(&real);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another walsync process".to_string()
            } else if holder == std::process::id().to_string() {
                // A file moved while this process replicates it under its
                // old path: that replication is still finishing.
                format!("this walsync process (pid {holder}, under the file's previous path)")
            } else {
                format!("another walsync process (pid {holder})")
            };
            return Err(Error::Config(format!(
                "{}: {who} is replicating this database (it holds {}); \
                 only one process may ship a database at a time",
                db.display(),
                path.display()
            )));
        }
        Err(e) => return Err(Error::io(&path, e.into())),
    }
    // Record the holder for the message above (best effort).
    let _ = file
        .set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()));
    Ok(DbLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        let first = try_lock(&db).unwrap();
        assert_eq!(first.path(), dir.path().join("a.db-walsync.lock"));
        let e = try_lock(&db).unwrap_err().to_string();
        assert!(e.contains("is replicating this database"), "{e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(first);
        let again = try_lock(&db).unwrap();
        drop(again);
    }
}
