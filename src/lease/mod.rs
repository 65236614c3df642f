//! Writer fencing: one process at a time ships a database name to a replica.
//!
//! Why: two `walsync-sync` processes (on one host or two) replicating the
//! same database name to the same prefix would each allocate txids from the
//! same newest object and interleave their segments, leaving a replica no
//! restore can trust. The local `flock` (src/sqlite/lock.rs) covers one host and one
//! path only; this covers the bucket.
//!
//! # Lease
//!
//! Each database name has a lease object `<db>.walsync-lease` *beside* its
//! `<db>/` prefix (never inside it: restore, verify, `list` and start-up
//! resume read `<db>/` and ignore other keys). It holds the holder id
//! (`host:pid:random`) and an expiry time. A writer:
//!
//! - **acquires** it before reading its resume point: refused (one line
//!   naming the database and the holder) while another holder's lease is
//!   valid; an expired lease is taken over. One exception makes a restart
//!   after a crash (systemd `Restart=on-failure`) immediate instead of
//!   waiting out the TTL: a lease whose holder recorded the identity of the
//!   local database lock we now hold (boot id, device and inode of the lock
//!   file, src/sqlite/lock.rs) belonged to a process that is gone, because that
//!   process held the lock for as long as it shipped;
//! - **renews** it only when about to ship and less than half the TTL is
//!   left, so an idle database costs zero requests (no renewal timer). A
//!   segment is never shipped under a lease with less than half its TTL left;
//! - **is fenced out** when at renewal the lease names another holder (it
//!   took over while we were idle or stalled) or is gone: that database stops
//!   with one error line, the others go on. It never takes the lease back:
//!   the other writer may have shipped txids after ours;
//! - **releases** it at a clean shutdown by setting its expiry to now (the
//!   holder stays, so a fenced-out writer still sees it was replaced).
//!
//! # Modes
//!
//! At start-up [`probe`] writes a probe object twice with `If-None-Match: *`.
//! A refused second write means the server does conditional writes (AWS S3,
//! MinIO, R2, Tigris): lease updates are then compare-and-swap
//! (`If-None-Match: *` to create, `If-Match: <etag>` to renew or take over),
//! and level-0 segment PUTs carry `If-None-Match: *`, so a second writer's
//! PUT of an existing txid fails without any extra request. A second write
//! that succeeds (Garage 2.5.0 ignores the header) selects the **fallback**:
//! plain PUT of the lease, then read it back and check we are the holder.
//! The fallback narrows but cannot close the race of two writers starting
//! within one round trip of each other; conditional mode closes it.
//!
//! # Clocks
//!
//! Expiry is wall-clock time written by the holder and compared by the
//! others: hosts must agree on the time to well within the TTL (NTP). A
//! holder stalled longer than half the TTL between its check and its PUT
//! (a paused VM) can still land a PUT after expiry; the TTL must exceed any
//! such stall. The default TTL is 60 s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{Error, Result, StorageErrorKind};
use crate::ltx;
use crate::storage::{Metadata, ObjectInfo, Precondition, Storage};
use crate::util::{now_ms, random_u64};

use crate::ltx::LEASE_SUFFIX;
/// Metadata naming the writer of an object (tells our own retried
/// conditional PUT from another writer's object).
pub const META_WRITER: &str = "walsync-writer";
/// Longest wait before the read-back of a contended lease (fallback mode).
const SETTLE: Duration = Duration::from_millis(500);
/// First line of a lease object.
const LEASE_MAGIC: &str = "walsync-lease v1";

/// How fencing is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The server honours `If-None-Match` / `If-Match`.
    Conditional,
    /// Lease object written, then read back.
    Fallback,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Conditional => "conditional writes (If-None-Match/If-Match)",
            Mode::Fallback => "lease object with read-back (server ignores conditional writes)",
        })
    }
}

/// Finds out whether `store` honours `If-None-Match: *` by writing a probe
/// object twice (then deleting it): 3 requests.
pub fn probe(store: &dyn Storage) -> Result<Mode> {
    let key = format!("walsync-probe-{:016x}.tmp", random_u64());
    let body = b"walsync conditional write probe";
    let first = store.put_conditional(&key, body, &Metadata::new(), &Precondition::Absent);
    let mode = match first {
        Ok(true) => {
            match store.put_conditional(&key, body, &Metadata::new(), &Precondition::Absent) {
                Ok(false) => Mode::Conditional,
                Ok(true) => Mode::Fallback,
                Err(e) => {
                    let _ = store.delete_many(&[key]);
                    return Err(e);
                }
            }
        }
        // The store cannot do it at all (or refuses the header).
        Ok(false) => Mode::Fallback,
        Err(e) if e.storage_kind() == Some(StorageErrorKind::Other) => {
            log::debug!("conditional write probe failed: {e}");
            Mode::Fallback
        }
        Err(e) => return Err(e),
    };
    store.delete_many(&[key])?;
    Ok(mode)
}

fn time_text(ms: i64) -> String {
    ltx::format_timestamp_ms(ms).unwrap_or_else(|_| format!("{ms} ms"))
}

/// `host:pid:random`, unique per process.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .collect();
    format!("{host}:{}:{:08x}", std::process::id(), random_u64() as u32)
}

/// The lease object key of database `db`.
pub fn lease_key(db: &str) -> String {
    format!("{}{LEASE_SUFFIX}", db.trim_matches('/'))
}

/// A decoded lease object.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    holder: String,
    expires_ms: i64,
    /// [`local_identity`] of the holder's database lock, if it had one.
    local: Option<String>,
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        let mut text = format!(
            "{LEASE_MAGIC}\nholder={}\nexpires_ms={}\nexpires={}\n",
            self.holder,
            self.expires_ms,
            time_text(self.expires_ms)
        );
        if let Some(local) = &self.local {
            text.push_str(&format!("local={local}\n"));
        }
        text.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != LEASE_MAGIC {
            return None;
        }
        let (mut holder, mut expires, mut local) = (None, None, None);
        for line in lines {
            match line.split_once('=') {
                Some(("holder", v)) => holder = Some(v.to_string()),
                Some(("expires_ms", v)) => expires = v.parse::<i64>().ok(),
                Some(("local", v)) if !v.is_empty() => local = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Lease {
            holder: holder.filter(|h| !h.is_empty())?,
            expires_ms: expires?,
            local,
        })
    }
}

/// Our hold on one database.
#[derive(Debug, Default)]
struct Held {
    /// Our lease's expiry (ms since the epoch); 0 before the first acquire.
    expires_ms: i64,
    /// ETag of our lease object (conditional mode).
    etag: Option<String>,
    /// Why we were fenced out, once we were.
    fenced: Option<String>,
    /// Our [`local_identity`], written into every renewal.
    local: Option<String>,
}

/// Identity of a database lock this process holds: the kernel's boot id and
/// the lock file's device and inode. Equal identities in a lease and here
/// mean the lease's holder held this very lock, which we now hold: it is gone.
pub fn local_identity(lock: &crate::sqlite::lock::DbLock) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let md = std::fs::metadata(lock.path()).ok()?;
    Some(format!("{}:{}:{}", boot.trim(), md.dev(), md.ino()))
}

/// Acquires, renews and releases the leases of this process.
pub struct Fencer {
    /// Where lease objects live: the store *without* encryption.
    store: Arc<dyn Storage>,
    holder: String,
    ttl: Duration,
    /// Set by [`Fencer::new`] or [`Fencer::start`]; fallback until then.
    mode: std::sync::OnceLock<Mode>,
    held: Mutex<HashMap<String, Arc<Mutex<Held>>>>,
}

impl std::fmt::Debug for Fencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fencer")
            .field("holder", &self.holder)
            .field("ttl", &self.ttl)
            .field("mode", &self.mode())
            .finish()
    }
}

impl Fencer {
    /// A fencer for `store` in `mode` (see [`probe`]).
    pub fn new(store: Arc<dyn Storage>, mode: Mode, ttl: Duration) -> Fencer {
        let f = Fencer::unprobed(store, ttl);
        let _ = f.mode.set(mode);
        f
    }

    /// A fencer whose mode [`Fencer::start`] finds out later (after the
    /// daemon's own start-up checks, so their errors stay the first line).
    pub fn unprobed(store: Arc<dyn Storage>, ttl: Duration) -> Fencer {
        Fencer {
            store,
            holder: holder_id(),
            ttl,
            mode: std::sync::OnceLock::new(),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Probes the store (once) and logs the mode in force: at info level
    /// when `announce` (the daemon), else at debug.
    pub fn start(&self, announce: bool) -> Result<Mode> {
        if let Some(m) = self.mode.get() {
            return Ok(*m);
        }
        let mode = probe(&*self.store)?;
        let _ = self.mode.set(mode);
        log::log!(
            if announce {
                log::Level::Info
            } else {
                log::Level::Debug
            },
            "writer fencing: {mode}, lease TTL {}, holder {}",
            humantime::format_duration(self.ttl),
            self.holder
        );
        Ok(mode)
    }

    /// The mode in force.
    pub fn mode(&self) -> Mode {
        self.mode.get().copied().unwrap_or(Mode::Fallback)
    }

    /// This process's holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX / 4)
    }

    fn entry(&self, db: &str) -> Option<Arc<Mutex<Held>>> {
        self.held.lock().ok()?.get(db).cloned()
    }

    fn location(&self, db: &str) -> String {
        format!("{}/{}", self.store.describe(), lease_key(db))
    }

    /// Reads the lease of `db`: `None` when absent.
    fn read(&self, db: &str) -> Result<Option<(Lease, String)>> {
        let Some((bytes, etag)) = self.store.get_with_etag(&lease_key(db))? else {
            return Ok(None);
        };
        let lease = Lease::decode(&bytes).ok_or_else(|| {
            Error::Fenced(format!(
                "{db}: the lease object {} is not a walsync lease; delete it if no other walsync replicates {db}",
                self.location(db)
            ))
        })?;
        Ok(Some((lease, etag)))
    }

    /// Writes our lease over `current` (its ETag, `None` when absent);
    /// `Ok(None)` when another writer won the race.
    ///
    /// `contended` (fallback mode only): others may be writing too (the lease
    /// was absent or expired), so wait a moment before the read-back. A
    /// rival that read the lease before our PUT must then also have stalled
    /// that long before its own PUT to go unnoticed.
    fn write(
        &self,
        db: &str,
        current: Option<&str>,
        expires_ms: i64,
        contended: bool,
        local: Option<&str>,
    ) -> Result<Option<String>> {
        let lease = Lease {
            holder: self.holder.clone(),
            expires_ms,
            local: local.map(str::to_string),
        };
        if !self.put_lease(db, current, &lease)? {
            return Ok(None);
        }
        if contended && self.mode() == Mode::Fallback {
            std::thread::sleep((self.ttl / 4).min(SETTLE));
        }
        // Read back: proves the write in fallback mode, and gives the ETag.
        match self.read(db)? {
            Some((l, etag)) if l == lease => Ok(Some(etag)),
            _ => Ok(None),
        }
    }

    /// One PUT of `lease` over the object whose ETag is `current` (`None`:
    /// absent). Conditional mode: `false` when the object changed meanwhile.
    /// Fallback mode: written unconditionally (only a read-back can tell).
    fn put_lease(&self, db: &str, current: Option<&str>, lease: &Lease) -> Result<bool> {
        let (key, body, meta) = (lease_key(db), lease.encode(), Metadata::new());
        match self.mode() {
            Mode::Conditional => {
                let cond = match current {
                    None => Precondition::Absent,
                    Some(etag) => Precondition::Matches(etag.to_string()),
                };
                self.store.put_conditional(&key, &body, &meta, &cond)
            }
            Mode::Fallback => self.store.put(&key, &body, &meta).map(|()| true),
        }
    }

    fn held_by_other(&self, db: &str, other: &Lease) -> Error {
        Error::Fenced(format!(
            "{db}: replicated by another walsync ({}) whose lease in {} expires {}; refusing to ship (it can be taken over once that lease has expired)",
            other.holder,
            self.store.describe(),
            time_text(other.expires_ms)
        ))
    }

    /// Takes the lease of `db` (or confirms we hold it), before its resume
    /// point is read. Fails with [`Error::Fenced`] while another holder's
    /// lease is valid, unless it recorded `local` (see [`local_identity`]).
    pub fn acquire(&self, db: &str, local: Option<&str>) -> Result<()> {
        let entry = {
            let mut map = self
                .held
                .lock()
                .map_err(|_| Error::Config("lease table poisoned".into()))?;
            map.entry(db.to_string()).or_default().clone()
        };
        let mut held = entry
            .lock()
            .map_err(|_| Error::Config("lease poisoned".into()))?;
        let now = now_ms();
        let current = self.read(db)?;
        if let Some((lease, _)) = &current {
            let ours_before = local.is_some() && lease.local.as_deref() == local;
            if lease.holder != self.holder && lease.expires_ms > now && !ours_before {
                return Err(self.held_by_other(db, lease));
            }
            if lease.holder != self.holder && ours_before {
                log::info!(
                    "{db}: taking over the lease of {}: it held this host's lock on the database, which is ours now",
                    lease.holder
                );
            } else if lease.holder != self.holder {
                log::info!(
                    "{db}: taking over the expired lease of {} (expired {})",
                    lease.holder,
                    time_text(lease.expires_ms)
                );
            }
        }
        let expires = now + self.ttl_ms();
        let contended = current
            .as_ref()
            .is_none_or(|(l, _)| l.holder != self.holder || l.expires_ms <= now);
        let etag = current.as_ref().map(|(_, e)| e.as_str());
        match self.write(db, etag, expires, contended, local)? {
            Some(etag) => {
                *held = Held {
                    expires_ms: expires,
                    etag: Some(etag),
                    fenced: None,
                    local: local.map(str::to_string),
                };
                log::debug!("{db}: lease held until {}", time_text(expires));
                Ok(())
            }
            None => {
                let who = self
                    .read(db)
                    .ok()
                    .flatten()
                    .map_or_else(|| "unknown".to_string(), |(l, _)| l.holder);
                Err(Error::Fenced(format!(
                    "{db}: another walsync ({who}) took the lease in {} at the same moment; refusing to ship",
                    self.store.describe()
                )))
            }
        }
    }

    /// Called before storing an object of `db`: renews the lease when less
    /// than half the TTL is left. Databases never acquired pass unchecked.
    pub fn ensure(&self, db: &str) -> Result<()> {
        let Some(entry) = self.entry(db) else {
            return Ok(());
        };
        let mut held = entry
            .lock()
            .map_err(|_| Error::Config("lease poisoned".into()))?;
        if let Some(why) = &held.fenced {
            return Err(Error::Fenced(why.clone()));
        }
        let now = now_ms();
        if held.expires_ms - now > self.ttl_ms() / 2 {
            return Ok(());
        }
        let fence = |held: &mut Held, why: String| {
            held.fenced = Some(why.clone());
            Err(Error::Fenced(why))
        };
        let current = self.read(db)?;
        let (etag, contended) = match &current {
            Some((lease, etag)) if lease.holder == self.holder => {
                (etag.clone(), lease.expires_ms <= now)
            }
            Some((lease, _)) => {
                return fence(
                    &mut held,
                    format!(
                        "{db}: fenced out: another walsync ({}) took over the lease in {}; this process stops replicating {db} (restart it to resume after that writer stops)",
                        lease.holder,
                        self.store.describe()
                    ),
                )
            }
            None => {
                return fence(
                    &mut held,
                    format!(
                        "{db}: fenced out: the lease object {} disappeared; this process stops replicating {db}",
                        self.location(db)
                    ),
                )
            }
        };
        let expires = now + self.ttl_ms();
        let local = held.local.clone();
        match self.write(db, Some(&etag), expires, contended, local.as_deref())? {
            Some(etag) => {
                held.expires_ms = expires;
                held.etag = Some(etag);
                Ok(())
            }
            None => fence(
                &mut held,
                format!(
                    "{db}: fenced out: another walsync changed the lease in {} while it was being renewed; this process stops replicating {db}",
                    self.store.describe()
                ),
            ),
        }
    }

    /// Why `db` was fenced out, if it was.
    pub fn fenced(&self, db: &str) -> Option<String> {
        self.entry(db)?.lock().ok()?.fenced.clone()
    }

    /// Records that `db` was fenced out for `why`.
    fn mark_fenced(&self, db: &str, why: &str) {
        if let Some(e) = self.entry(db) {
            if let Ok(mut h) = e.lock() {
                h.fenced = Some(why.to_string());
            }
        }
    }

    /// Gives the lease of `db` up at a clean stop: expiry = now, so the next
    /// writer need not wait for the TTL. Best effort; errors are logged.
    ///
    /// At most two requests, one in conditional mode (a stop with 10,000
    /// databases sends one release per database): a lease that has expired
    /// already needs none (anyone may take it over); conditional mode
    /// writes `If-Match` our last ETag, which fails harmlessly if another
    /// writer has changed it since; fallback mode reads it first and writes
    /// only while it still names us. No read-back: nothing is proved by a
    /// release, and no ETag is needed afterwards.
    pub fn release(&self, db: &str) {
        let Some(entry) = self.held.lock().ok().and_then(|mut m| m.remove(db)) else {
            return;
        };
        let Ok(held) = entry.lock() else { return };
        if held.fenced.is_some() || held.expires_ms == 0 {
            return;
        }
        let now = now_ms();
        if held.expires_ms <= now {
            log::debug!("{db}: lease expired already, nothing to release");
            return;
        }
        let released = Lease {
            holder: self.holder.clone(),
            expires_ms: now,
            local: held.local.clone(),
        };
        let result = match (self.mode(), &held.etag) {
            (Mode::Conditional, Some(etag)) => self.put_lease(db, Some(etag), &released),
            _ => match self.read(db) {
                Ok(Some((lease, etag))) if lease.holder == self.holder => {
                    self.put_lease(db, Some(&etag), &released)
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(true) => log::debug!("{db}: lease released"),
            Ok(false) => log::debug!("{db}: lease changed by another writer; not released"),
            Err(e) => log::warn!("{db}: could not release the lease: {e}"),
        }
    }
}

mod fenced;
#[cfg(test)]
mod tests;

pub use fenced::*;
