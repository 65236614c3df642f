//! The open-file limit: raised to the hard limit at start, and checked
//! against the databases found, so that running out is one clear line at
//! start rather than one "unable to open database file" per database.

use std::sync::Arc;

use crate::capture::{OpenSlots, BASE_FDS, OPEN_FDS, PARKED_FDS};
use crate::error::{Error, Result};

/// Descriptors one open replicated database holds at most (see
/// [`OPEN_FDS`]), with its lock file.
const FDS_PER_DB: u64 = OPEN_FDS + PARKED_FDS;

/// Databases that must fit open at once even when idle ones close their
/// files: a start-up below this many would crawl.
const MIN_OPEN: u64 = 16;

/// The usual soft open-file limit of 1,024 would stop at ~120 open
/// databases: raise the soft limit to the hard limit. When idle databases
/// close their files (`parking`), each needs one descriptor plus
/// [`OPEN_FDS`] while open, and the returned [`OpenSlots`] keep the open
/// ones within the limit; otherwise every database needs all of
/// [`FDS_PER_DB`]. Refuse to start, in one line naming the limit, when even
/// the hard limit cannot hold the databases found now (otherwise thousands
/// of them would fail one by one with "unable to open database file").
pub(super) fn raise_fd_limit(databases: usize, parking: bool) -> Result<Arc<OpenSlots>> {
    let dbs = databases as u64;
    let (need, each) = match parking {
        true => (
            dbs * PARKED_FDS + BASE_FDS + dbs.min(MIN_OPEN) * OPEN_FDS,
            format!("{PARKED_FDS} each and {OPEN_FDS} more while open"),
        ),
        false => (dbs * FDS_PER_DB + BASE_FDS, format!("{FDS_PER_DB} each")),
    };
    let advice = match parking {
        true => "",
        false => " or let idle databases close their files (--close-idle-after)",
    };
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < need => Err(Error::Config(format!(
            "{databases} databases need about {need} open files ({each}), but the open-file limit is {n} even raised to its hard limit: raise the hard limit (LimitNOFILE= in the systemd unit, `ulimit -Hn`, or nofile in /etc/security/limits.conf){advice}"
        ))),
        Ok(n) => {
            log::debug!("open-file limit: {n}");
            let slots = OpenSlots::new(if parking { n } else { u64::MAX });
            slots.expect(dbs);
            Ok(slots)
        }
        Err(e) => {
            log::warn!("cannot raise the open-file limit: {e}");
            Ok(OpenSlots::new(u64::MAX))
        }
    }
}
