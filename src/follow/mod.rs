//! Follow mode (`walsync restore NAME -o PATH --follow`): a local read
//! replica kept current from the bucket.
//!
//! Why a module of its own: a plain restore writes a private temporary file
//! and renames it into place once; a follower changes a database that
//! applications are reading *while* it changes. That needs a different
//! writer (through SQLite, `apply.rs`), a poll loop with its own cost policy
//! (`poll.rs` and [`Interval`]), and its own answers to what the primary does
//! meanwhile (compaction, retention, restarts, outages).
//!
//! ## Readers see only whole committed states
//!
//! `PATH` stays a WAL-mode SQLite database, and each LTX object is applied
//! as **one SQLite write transaction**: `BEGIN IMMEDIATE`, every page of the
//! object written with `INSERT INTO sqlite_dbpage(schema, pgno, data)`, a
//! truncation (`data = NULL` for the first page past the object's commit
//! size) when the database shrank, `COMMIT`. This is the mechanism of
//! SQLite's own `sqlite3_rsync`, including its connection: `PATH` is
//! ATTACHed as `replica` to an in-memory main database, so a page write
//! after one that changed the schema cookie (a migration on the primary)
//! does not make SQLite re-read a half-written schema. The pages go through SQLite's pager into
//! `PATH-wal` and become visible at the commit frame, published in the
//! wal-index by SQLite itself, so:
//!
//! - a reader (`file:PATH?mode=ro`, any SQLite library, any process) sees
//!   the state before an object or after it, never part of one; every LTX
//!   object ends at a txid the primary committed, so every state a reader
//!   can see is one the primary committed;
//! - a long read transaction keeps its snapshot (its WAL frames are not
//!   checkpointed over) and never blocks the follower: WAL writers do not
//!   wait for readers. The cost is a `PATH-wal` that grows until the reader
//!   ends; SQLite's automatic PASSIVE checkpoints then catch up;
//! - an object is committed only after its trailer and file checksum
//!   verified: a corrupt or truncated object is rolled back, never half
//!   applied.
//!
//! The bundled SQLite is built with `SQLITE_ENABLE_DBPAGE_VTAB`
//! (`.cargo/config.toml`); a build without it refuses `--follow` with one
//! line. Alternatives considered: writing `PATH-wal` frames and the
//! wal-index ourselves (re-implementing SQLite's WAL writer and locking:
//! too easy to get subtly wrong), or the backup API from a staging copy
//! (correct, but every apply rewrites the whole database into the WAL).
//!
//! Limits:
//!
//! - Readers must open `PATH` read-only. A write by anyone else mixes
//!   pages of two histories (SQLite's locks keep each transaction whole, not
//!   the result meaningful).
//! - In page 1, the change counter (bytes 24–27), the "version-valid-for"
//!   number (92–95) and the SQLite version (96–99) are set by the
//!   follower's SQLite at each commit that writes page 1, as SQLite does in
//!   WAL mode; every other byte equals what a plain restore at the same txid
//!   writes. SQLite does not use these fields in WAL mode (it detects
//!   changes through the wal-index).
//! - A database in auto-vacuum mode is applied like any other; SQLite's
//!   commit-time vacuum has nothing to do on a state the primary committed
//!   (its free-page count is 0 in FULL mode).
//! - A change of page size (VACUUM on the primary) stops following with one
//!   line: restore again with `--force`.
//!
//! ## Polling, cost and lag
//!
//! Each poll is one LIST of level 0 after the last applied key
//! ([`crate::replica::listing::after_txid`]). After a poll that applied
//! something the next comes after [`FAST`]; each idle poll doubles the wait
//! up to `--follow-interval-max` (default 10 s); every
//! [`SNAPSHOT_CHECK_EVERY`]-th idle poll also lists snapshots newer than the
//! position (one more LIST), for a primary that restarted after a gap and
//! shipped a snapshot with nothing after it yet, and checks that the
//! replica did not go back (below). An idle follower therefore costs
//! `3600 / max × (1 + 2/6)` LIST requests per hour: **480 per hour** at the
//! default 10 s (GETs only when something changed).
//!
//! ## A replica deleted and recreated
//!
//! A new primary may start a new history (txid 1 up) where the followed
//! replica was. Applying it over the followed database would mix two
//! histories, so a poll that applied nothing, on the polls that list
//! snapshots and at least every [`SNAPSHOT_CHECK_EVERY`] polls, checks that
//! some stored object still ends at or past the applied txid
//! ([`poll::went_back`]: one short LIST of level 0 from the object applied
//! last, one of the snapshots; only if both find nothing, the newest object
//! of every level). If none does, following stops with one line and a
//! non-zero exit: `NAME: the replica went back from txid N to M (deleted and
//! recreated?): restore again with --force`. Limit: a recreated replica
//! whose new history already reached the follower's txid before a check is
//! not detected; its objects that continue the position would be applied.
//! Restore again with `--force` after recreating a replica.
//!
//! Objects that continue the position exactly are applied in txid order
//! ([`crate::replica::chain`]). When level 0 has objects past the position
//! but none continues it (compaction and retention removed them before this
//! follower fetched them), or an object vanished between LIST and GET, or
//! more than 64 objects wait (a follower far behind: compacted objects cover
//! them in fewer GETs), the poll looks at the compacted levels and the
//! snapshots too; a snapshot
//! past where the history continues (a new snapshot after a gap) is applied
//! whole, then what follows it. A failed poll (storage outage, a ranged
//! read cut short) is logged once and retried with the backoff; the
//! follower resumes where it was. A damaged object (checksum mismatch) is
//! fetched again with the same backoff, [`MAX_DAMAGED`] times in all, then
//! following stops with the object's name.
//!
//! Logged: each batch applied (debug), a summary at most once a minute
//! (info): the applied txid, the newest stored txid seen, and the lag
//! behind the primary's commit time of the object applied last.

mod apply;
mod poll;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::error::{Error, Result, StorageErrorKind};
use crate::replica::{fetch, SPOOL_THRESHOLD};
use crate::restore::{self, Plan, Target};
use crate::storage::Storage;

use apply::Applier;
use poll::{Depth, Next};

/// Wait before the next poll after one that applied something.
pub const FAST: Duration = Duration::from_millis(200);
/// Default for `--follow-interval-max`: the longest wait between polls.
pub const DEFAULT_INTERVAL_MAX: Duration = Duration::from_secs(10);
/// Every n-th idle poll also lists snapshots newer than the position.
pub const SNAPSHOT_CHECK_EVERY: u32 = 6;
/// Polls in a row that may find a damaged object before following fails.
const MAX_DAMAGED: u32 = 3;
/// At most one info line per this long while following.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// The adaptive poll interval: [`FAST`] after a change, doubling while
/// idle (or failing) up to `max`.
#[derive(Debug, Clone, Copy)]
pub struct Interval {
    now: Duration,
    max: Duration,
}

impl Interval {
    /// Start fast, never wait longer than `max`.
    pub fn new(max: Duration) -> Interval {
        Interval {
            now: FAST.min(max),
            max,
        }
    }
    /// The wait before the next poll.
    pub fn get(&self) -> Duration {
        self.now
    }
    /// Something changed: poll again soon.
    pub fn changed(&mut self) {
        self.now = FAST.min(self.max);
    }
    /// Nothing changed (or the poll failed): wait twice as long, up to max.
    pub fn idle(&mut self) {
        self.now = (self.now * 2).min(self.max);
    }
    /// LIST requests per hour of a follower that has been idle for long.
    pub fn idle_requests_per_hour(max: Duration) -> f64 {
        let polls = 3600.0 / max.as_secs_f64().max(0.001);
        polls * (1.0 + 2.0 / f64::from(SNAPSHOT_CHECK_EVERY))
    }
}

/// What a follow did until it was stopped.
#[derive(Debug, Clone)]
pub struct Followed {
    /// Database name.
    pub db: String,
    /// The txid `PATH` holds.
    pub txid: u64,
    /// Objects applied after the initial restore.
    pub objects: u64,
    /// Polls (LIST rounds) made.
    pub polls: u64,
    /// The min txid of the object applied last (for [`poll::went_back`]).
    last_min: u64,
}

/// Wait until `db` has a replica (`--wait-for-replica`), polling every
/// `every`; `Ok(None)` when a signal arrived first.
pub fn wait_for_replica(
    storage: &dyn Storage,
    db: &str,
    every: Duration,
    stop: &Receiver<i32>,
) -> Result<Option<Plan>> {
    let mut logged = false;
    loop {
        match restore::plan_if_replica(storage, db, Target::Latest) {
            Ok(Some(plan)) => return Ok(Some(plan)),
            Ok(None) if !logged => {
                log::info!(
                    "{db}: no replica in {} yet; waiting for one (--wait-for-replica)",
                    storage.describe()
                );
                logged = true;
            }
            Ok(None) => {}
            Err(e) if retryable(&e) => log::warn!("{db}: {e}; retrying"),
            Err(e) => return Err(e),
        }
        match stop.recv_timeout(every) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return Ok(None),
        }
    }
}

/// Keep `out` (restored at txid `txid` from `db`) current until a signal
/// arrives on `stop`; see the module docs.
pub fn follow(
    storage: &dyn Storage,
    db: &str,
    out: &Path,
    txid: u64,
    interval_max: Duration,
    stop: &Receiver<i32>,
) -> Result<Followed> {
    // No `RetryReads` here: this loop retries on its own schedule and logs
    // an outage once, where bounded retries would warn at every attempt.
    let mut applier = Applier::open(out)?;
    let spool_dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => Path::new(".").to_path_buf(),
    };
    let root = storage.describe();
    let mut st = Followed {
        db: db.to_string(),
        txid,
        objects: 0,
        polls: 0,
        last_min: txid,
    };
    let mut interval = Interval::new(interval_max);
    let mut idle_polls = 0u32;
    let mut full_next = false;
    let mut failing: Option<Instant> = None;
    let mut damaged = 0u32;
    let mut since_check = 0u32;
    let mut summary = Summary::new();
    log::info!(
        "{db}: following {root}/{db} into {} from txid {txid} (idle polls up to every {}: {:.0} LIST requests/hour)",
        out.display(),
        humantime::format_duration(interval_max),
        Interval::idle_requests_per_hour(interval_max)
    );
    // A signal (or a closed channel) ends the loop.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(interval.get()) {
        let depth = if full_next {
            Depth::Full
        } else if idle_polls % SNAPSHOT_CHECK_EVERY == SNAPSHOT_CHECK_EVERY - 1 {
            Depth::Snapshots
        } else {
            Depth::Level0
        };
        st.polls += 1;
        since_check = since_check.saturating_add(1);
        let before = st.objects;
        let result = poll::next(storage, db, st.txid, depth).and_then(|next| {
            apply_all(
                storage,
                &mut applier,
                &root,
                db,
                &spool_dir,
                next,
                &mut st,
                &mut summary,
                stop,
            )
        });
        // A replica deleted and recreated: its new history must not be
        // applied over this one. Checked when a poll applied nothing, on
        // the polls that list snapshots and at least every
        // SNAPSHOT_CHECK_EVERY polls.
        let result = result.and_then(|()| {
            if st.objects > before || (depth == Depth::Level0 && since_check < SNAPSHOT_CHECK_EVERY)
            {
                return Ok(());
            }
            since_check = 0;
            match poll::went_back(storage, db, st.txid, st.last_min)? {
                None => Ok(()),
                Some(newest) => Err(Error::Restore(format!(
                    "{db}: the replica went back from txid {} to {newest} \
                     (deleted and recreated?): restore again with --force",
                    st.txid
                ))),
            }
        });
        match result {
            Ok(()) => {
                full_next = false;
                if let Some(since) = failing.take() {
                    log::info!(
                        "{db}: storage answers again after {}; following from txid {}",
                        humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                        st.txid
                    );
                }
                if st.objects > before {
                    interval.changed();
                    idle_polls = 0;
                } else {
                    interval.idle();
                    idle_polls = idle_polls.wrapping_add(1);
                }
            }
            Err(e) if e.storage_kind() == Some(StorageErrorKind::NotFound) => {
                // Deleted between LIST and GET: compaction or retention
                // replaced it. Look at every level next time.
                // Again after a full poll: back off, do not spin.
                log::info!("{db}: {e}; planning from the compacted levels");
                if full_next {
                    interval.idle();
                } else {
                    interval.changed();
                }
                full_next = true;
            }
            Err(e) if retryable(&e) => {
                if failing.is_none() {
                    log::warn!(
                        "{db}: {e}; following paused at txid {}, retrying up to every {}",
                        st.txid,
                        humantime::format_duration(interval_max)
                    );
                    failing = Some(Instant::now());
                } else {
                    log::debug!("{db}: still failing: {e}");
                }
                full_next = true;
                interval.idle();
            }
            // A damaged body (SHA-256 mismatch, cut short): fetch again a
            // few times, backing off, then it is the object, not the
            // network.
            Err(e @ Error::Ltx { .. }) if damaged + 1 < MAX_DAMAGED => {
                damaged += 1;
                interval.idle();
                log::warn!(
                    "{db}: {e}; fetching it again in {}",
                    humantime::format_duration(interval.get())
                );
                full_next = true;
            }
            Err(e) => {
                let _ = applier.close();
                return Err(e);
            }
        }
        if st.objects > before {
            damaged = 0;
        }
        summary.maybe_log(db, &st);
    }
    applier.close()?;
    Ok(st)
}

/// Fetch and apply `next.objects` in order, stopping early on a signal.
#[allow(clippy::too_many_arguments)]
fn apply_all(
    storage: &dyn Storage,
    applier: &mut Applier,
    root: &str,
    db: &str,
    spool_dir: &Path,
    next: Next,
    st: &mut Followed,
    summary: &mut Summary,
    stop: &Receiver<i32>,
) -> Result<()> {
    summary.newest = summary.newest.max(next.newest);
    let first = st.txid;
    for o in &next.objects {
        if !stop.is_empty() {
            break;
        }
        let name = format!("{root}/{}", o.key);
        if o.min_txid == 1 {
            log::info!(
                "{db}: the history continues at snapshot {name} (txid {} after {}): applying it whole",
                o.max_txid,
                st.txid
            );
        }
        let fetched = fetch(storage, o, &name, spool_dir, SPOOL_THRESHOLD)?;
        let h = applier.apply(o, &name, fetched)?;
        st.txid = h.max_txid;
        st.last_min = h.min_txid;
        st.objects += 1;
        summary.applied(h.timestamp_ms);
    }
    if st.txid != first {
        log::debug!(
            "{db}: applied txids {}..={} ({} objects), newest stored {}, lag {} ms",
            first + 1,
            st.txid,
            next.objects.len(),
            summary.newest.max(st.txid),
            summary.lag_ms.unwrap_or(0)
        );
    }
    Ok(())
}

/// Failures worth waiting out: storage that does not answer, and SQLite
/// busy (another process holding the database's lock for a moment).
fn retryable(e: &Error) -> bool {
    match e {
        Error::Storage { kind, .. } => *kind != StorageErrorKind::NotFound,
        Error::Sqlite {
            source: rusqlite::Error::SqliteFailure(f, _),
            ..
        } => matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        ),
        _ => false,
    }
}

/// The once-a-minute info line.
struct Summary {
    last: Instant,
    objects: u64,
    newest: u64,
    lag_ms: Option<i64>,
}

impl Summary {
    fn new() -> Summary {
        Summary {
            last: Instant::now(),
            objects: 0,
            newest: 0,
            lag_ms: None,
        }
    }

    /// An object committed by the primary at `timestamp_ms` was applied.
    fn applied(&mut self, timestamp_ms: i64) {
        self.objects += 1;
        self.lag_ms = Some((crate::util::now_ms() - timestamp_ms).max(0));
    }

    fn maybe_log(&mut self, db: &str, st: &Followed) {
        if self.objects == 0 || self.last.elapsed() < SUMMARY_EVERY {
            return;
        }
        log::info!(
            "{db}: at txid {}, {} objects applied in the last {} s, newest stored txid {}, \
             lag behind the primary's commit {} ms",
            st.txid,
            self.objects,
            self.last.elapsed().as_secs(),
            self.newest.max(st.txid),
            self.lag_ms.unwrap_or(0)
        );
        self.last = Instant::now();
        self.objects = 0;
    }
}
