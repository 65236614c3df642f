//! SQLite's SHARED lock on a database file, held without a connection.
//!
//! Why: every open SQLite connection to a WAL-mode database holds a SHARED
//! lock on the database file for its lifetime, and a connection that closes
//! checkpoints the WAL and deletes it only if it can take EXCLUSIVE, that is
//! when it is the last one. While walsync has an idle database's files
//! closed (`capture::park`), an application that closes its last connection
//! would therefore checkpoint frames walsync has not read into the database
//! and delete the WAL, and walsync would have to take a snapshot. Holding
//! the same SHARED lock through walsync's own descriptor of the database
//! keeps SQLite's behaviour exactly what it is while walsync's connection is
//! open, at the cost of that one descriptor.
//!
//! The lock is an *open file description* lock (`F_OFD_SETLK`), not a
//! classic POSIX lock: a POSIX lock belongs to the process, so SQLite's own
//! connections in this process would release it when they unlock the range
//! or close any descriptor of the file. An OFD lock belongs to the
//! descriptor it was taken through and ends when that descriptor is closed.
//! It is a read lock, compatible with every SHARED lock (this process's
//! included) and in conflict with EXCLUSIVE, which walsync's own
//! connections never take on a WAL-mode database (they close without
//! checkpointing, `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, and never change the
//! journal mode).

use std::fs::File;
use std::os::fd::AsRawFd;

/// SQLite's lock bytes (`os.h`): `PENDING_BYTE` is at 1 GiB (0x40000000),
/// the SHARED range is `SHARED_SIZE` bytes from `PENDING_BYTE + 2`. Part of
/// the file format: every SQLite process on the machine uses these offsets.
const SHARED_FIRST: i64 = 0x4000_0000 + 2;
/// See [`SHARED_FIRST`].
const SHARED_SIZE: i64 = 510;

/// Take a read lock on SQLite's SHARED range of the database open as
/// `file`, held until `file` is closed. Fails without waiting when another
/// process holds EXCLUSIVE (an application in `locking_mode=EXCLUSIVE`, or
/// one closing its last connection right now).
pub fn hold_shared(file: &File) -> std::io::Result<()> {
    // SAFETY: `flock` is a plain C struct, fully initialised here (zeroed,
    // then the fields fcntl reads); `fcntl(F_OFD_SETLK)` only reads it for
    // the duration of the call, and `file` is an open descriptor for that
    // duration (borrowed). l_pid must be 0 for OFD locks.
    let rc = unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = SHARED_FIRST;
        lock.l_len = SHARED_SIZE;
        lock.l_pid = 0;
        libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock)
    };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held through one descriptor, the lock survives this process taking
    /// and releasing a classic lock on the same range through another one
    /// and closing it (what SQLite's connections do), and keeps EXCLUSIVE
    /// out; closing its descriptor ends it.
    #[test]
    fn survives_the_process_unlocking_and_ends_with_its_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, b"x").unwrap();
        let held = File::open(&path).unwrap();
        hold_shared(&held).unwrap();
        let classic = |file: &File, kind: i32| {
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = kind as libc::c_short;
            lock.l_whence = libc::SEEK_SET as libc::c_short;
            lock.l_start = SHARED_FIRST;
            lock.l_len = SHARED_SIZE;
            // SAFETY: as in `hold_shared`, with a classic lock.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) }
        };
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(classic(&other, libc::F_RDLCK), 0);
        assert_eq!(classic(&other, libc::F_UNLCK), 0);
        drop(other);
        // An EXCLUSIVE (write) lock conflicts with the held read lock, also
        // from this process.
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        assert_eq!(classic(&writer, libc::F_WRLCK), -1);
        drop(held);
        assert_eq!(classic(&writer, libc::F_WRLCK), 0);
    }
}
