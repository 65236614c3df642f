//! `walsync snapshot`: ship a full snapshot of a database now.
//!
//! Why a file of its own: it is the one operation here that writes to the
//! replica, guarded by the same lock the daemon holds.

use super::*;

/// Take a consistent snapshot of the database at `db`, stored as `name`, now and wait until
/// storage acknowledged it (up to `timeout`). Returns `(name, txid)`.
///
/// Refused while another process (a `walsync-sync` daemon) ships the
/// database: both would allocate the same next txid. The daemon takes
/// snapshots itself (`--snapshot-interval`).
pub fn snapshot(
    db: &Path,
    name: &str,
    storage: Arc<dyn Storage>,
    timeout: Duration,
) -> Result<(String, u64)> {
    if !db.is_file() {
        return Err(Error::Config(format!(
            "{}: no such database file",
            db.display()
        )));
    }
    let _lock = crate::sqlite::lock::try_lock(db)?;
    storage.check()?;
    let mut cfg = DbConfig::new(db);
    cfg.name = name.to_string();
    cfg.snapshot_interval = None;
    let name = cfg.name.clone();
    let uploader = Uploader::start(storage.clone(), 2, 64 << 20);
    let result = Capture::open(cfg, storage, uploader.sender(), uploader.budget())
        .and_then(|mut rep| rep.snapshot_now("requested by walsync snapshot", timeout));
    if result.is_err() {
        uploader.abort();
    }
    uploader.join();
    result.map(|txid| (name, txid))
}
