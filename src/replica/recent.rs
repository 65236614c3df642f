//! Level-0 objects just stored, folded for the compactor's next level-1
//! merge.
//!
//! Why: merging level-0 segments into level 1 would otherwise LIST them and
//! GET every object the uploaders just PUT: a busy database would pay one
//! GET per PUT. The uploaders offer each stored level-0 body here, and it
//! is folded into one running merge per database ([`Fold`]): a busy
//! database rewrites the same few pages in every upload, so the fold holds
//! each of them once, where keeping the bodies held it in every one. The
//! next level-1 object is that fold, encoded. Shared by both stages, owned
//! by neither. Merged objects are not kept: merging them again (level 2
//! every 5 minutes, level 3 every hour) costs a busy database about 130
//! GETs an hour, against 3,600 PUTs at one upload a second, and keeping
//! them would hold several minutes of each busy database in memory.

use std::collections::HashMap;
use std::io::Cursor;

use super::fold::Fold;
use crate::error::Result;
use crate::ltx::{self, Decoder};

/// Level-0 objects folded per database for the next level-1 merge, so that
/// it costs no GET. Bounded by a byte capacity (the least recently updated
/// fold first out; a miss is just a LIST and GETs), and off (capacity 0)
/// unless the daemon compacts.
pub struct Recent {
    inner: std::sync::Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    capacity: usize,
    bytes: usize,
    /// Eviction order, oldest first: a database and its fold's update
    /// number (entries of folds updated or taken since are skipped).
    order: std::collections::VecDeque<(String, u64)>,
    /// Database → its level-0 objects stored since the last level-1 merge.
    folds: HashMap<String, Kept>,
    /// Bumped on every fold update (tells a fold's newest entry in `order`).
    updates: u64,
}

struct Kept {
    fold: Fold,
    /// [`crate::capture::DbStats::lineage`] of the capture that stored it.
    lineage: u64,
    bytes: usize,
    update: u64,
}

impl Recent {
    /// An empty cache holding at most `capacity` bytes (0 = off).
    pub fn new(capacity: usize) -> Recent {
        Recent {
            inner: std::sync::Mutex::new(RecentInner {
                capacity,
                ..RecentInner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecentInner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Change the capacity (evicting as needed).
    pub fn set_capacity(&self, capacity: usize) {
        let mut g = self.lock();
        g.capacity = capacity;
        g.evict();
    }

    /// Fold the body stored under `key` by the capture of `lineage` into
    /// its database's running merge if it is a level-0 object: continuing
    /// the fold when it is that lineage's and this object starts right after
    /// it, else starting a new one. Called in txid order for each database
    /// (one upload of a database at a time); anything else is ignored.
    pub fn offer(&self, key: &str, lineage: u64, body: Vec<u8>) {
        if let Some(k) = ltx::parse_object_key("", key).filter(|k| k.level == 0) {
            self.fold_in(key, &k, lineage, body);
        }
    }

    /// Fold the level-0 object `key` into its database's fold (decoded and
    /// verified outside the lock; the uploaders of other databases go on).
    fn fold_in(&self, key: &str, k: &ltx::ObjectKey, lineage: u64, body: Vec<u8>) {
        let (capacity, taken) = {
            let mut g = self.lock();
            let taken = g.folds.remove(&k.db).and_then(|kept| {
                g.bytes -= kept.bytes;
                (kept.lineage == lineage).then_some(kept.fold)
            });
            (g.capacity, taken)
        };
        if capacity == 0 {
            return;
        }
        let mut fold = match taken {
            Some(f) if f.range().is_some_and(|(_, max)| max + 1 == k.min_txid) => f,
            _ => Fold::in_memory(capacity as u64),
        };
        if let Err(e) = add_object(&mut fold, key, k, &body) {
            // Its level-1 merge will LIST and GET instead.
            log::debug!("{key}: not kept for the next merge: {e}");
            return;
        }
        drop(body);
        let bytes = fold.bytes();
        let mut g = self.lock();
        if bytes > g.capacity {
            return;
        }
        g.updates += 1;
        let update = g.updates;
        let kept = Kept {
            fold,
            lineage,
            bytes,
            update,
        };
        // The compactor may have taken an older fold meanwhile: this one
        // then no longer starts where its next merge does, and is dropped
        // there.
        if let Some(old) = g.folds.insert(k.db.clone(), kept) {
            g.bytes -= old.bytes;
        }
        g.bytes += bytes;
        g.order.push_back((k.db.clone(), update));
        g.evict();
    }

    /// Take the fold of `db`'s level-0 objects stored by the capture of
    /// `lineage`: every one stored since the last fold was taken, or since
    /// the first that did not continue it. The compactor uses it where its
    /// next level-1 object starts, else drops it. A fold of another lineage
    /// (an earlier replication of the name, whose txids the new one
    /// restarted) is dropped, never returned.
    pub fn take_fold(&self, db: &str, lineage: u64) -> Option<Fold> {
        let kept = {
            let mut g = self.lock();
            let kept = g.folds.remove(db)?;
            g.bytes -= kept.bytes;
            kept
        };
        (kept.lineage == lineage).then_some(kept.fold)
    }

    /// True when it keeps anything (capacity above 0).
    pub fn enabled(&self) -> bool {
        self.lock().capacity > 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// Decode the level-0 object `key` (verifying its checksums and that its
/// header matches its name) into `fold`.
fn add_object(fold: &mut Fold, key: &str, k: &ltx::ObjectKey, body: &[u8]) -> Result<()> {
    let mut dec = Decoder::new(Cursor::new(body), key)?;
    let named = super::ReplicaObject {
        key: key.to_string(),
        level: k.level,
        min_txid: k.min_txid,
        max_txid: k.max_txid,
        size: body.len() as u64,
    };
    super::check_header_matches(dec.header(), &named, key)?;
    fold.add(&mut dec, key)
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Recent")
            .field("capacity", &g.capacity)
            .field("bytes", &g.bytes)
            .field("folds", &g.folds.len())
            .finish()
    }
}

impl RecentInner {
    fn evict(&mut self) {
        while self.bytes > self.capacity {
            let Some((db, update)) = self.order.pop_front() else {
                break;
            };
            if self.folds.get(&db).is_some_and(|f| f.update == update) {
                if let Some(f) = self.folds.remove(&db) {
                    self.bytes -= f.bytes;
                }
            }
        }
        // Entries of folds updated or taken since: drop them once they are
        // most of the queue.
        if self.order.len() > 2 * self.folds.len() + 64 {
            let folds = &self.folds;
            self.order
                .retain(|(db, update)| folds.get(db).is_some_and(|f| f.update == *update));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ltx::Header;

    fn k(db: &str, l: u8, t: u64) -> String {
        ltx::object_key("", db, l, t, t)
    }

    /// A level-0 object of `db` at txid `t` rewriting pages `pages` (512
    /// bytes each, [`noise`]) of a 4-page database.
    fn level0(db: &str, t: u64, pages: &[u32]) -> (String, Vec<u8>) {
        let h = Header::new(512, 4, t, t, 1000 + t as i64);
        let body = ltx::encode_to_vec(h, pages.iter().map(|&p| (p, noise(t, p)))).unwrap();
        (k(db, 0, t), body)
    }

    /// 512 bytes that do not compress (xorshift), different for each seed.
    pub(crate) fn noise(t: u64, p: u32) -> Vec<u8> {
        let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(p) ^ 0xD1B5_4A32_D192_ED03;
        (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn level0_objects_fold_into_one_running_merge_per_database() {
        let r = Recent::new(64 << 10);
        // Page 2 rewritten by every commit: held once, not 20 times.
        for t in 2..22 {
            let (key, body) = level0("a.db", t, &[2]);
            r.offer(&key, 1, body);
        }
        let (key, body) = level0("a.db", 22, &[3]);
        r.offer(&key, 1, body);
        let held = r.bytes();
        assert!((1024..2 * 1024).contains(&held), "{held} bytes for 2 pages");
        let f = r.take_fold("a.db", 1).expect("folded");
        assert_eq!((f.range(), f.objects()), (Some((2, 22)), 21));
        assert_eq!(r.bytes(), 0);
        assert!(r.take_fold("a.db", 1).is_none(), "taken once");
        // A gap (a snapshot's txid) starts a new fold.
        for t in [30, 32, 33] {
            let (key, body) = level0("a.db", t, &[1]);
            r.offer(&key, 1, body);
        }
        assert_eq!(
            r.take_fold("a.db", 1).and_then(|f| f.range()),
            Some((32, 33))
        );
        // A fold is its lineage's: another one (the name replicated again,
        // its txids restarted) neither continues it nor takes it.
        for t in [40, 41] {
            let (key, body) = level0("a.db", t, &[1]);
            r.offer(&key, 1, body);
        }
        let (key, body) = level0("a.db", 42, &[1]);
        r.offer(&key, 2, body);
        assert_eq!(
            r.take_fold("a.db", 2).and_then(|f| f.range()),
            Some((42, 42))
        );
        let (key, body) = level0("a.db", 2, &[1]);
        r.offer(&key, 1, body);
        assert!(r.take_fold("a.db", 3).is_none());
        assert!(
            r.take_fold("a.db", 1).is_none(),
            "dropped when the other asked"
        );
        assert_eq!(r.bytes(), 0);
        // Merged objects and snapshots are not kept.
        let (_, body) = level0("c.db", 2, &[1]);
        r.offer(&k("c.db", 1, 2), 1, body.clone());
        r.offer(&k("c.db", 9, 2), 1, body);
        assert_eq!(r.bytes(), 0);
        // Not an LTX object, or a header that contradicts the name: nothing
        // kept, the merge falls back to GETs.
        r.offer(&k("b.db", 0, 1), 1, vec![0; 100]);
        let (_, body) = level0("b.db", 2, &[1]);
        r.offer(&k("b.db", 0, 3), 1, body);
        assert_eq!(r.bytes(), 0);
        assert!(r.take_fold("b.db", 1).is_none());
    }

    #[test]
    fn folds_are_evicted_least_recently_updated_first() {
        let (_, one) = level0("x.db", 2, &[1, 2]);
        let r = Recent::new(0);
        r.set_capacity(usize::MAX);
        r.offer(&k("x.db", 0, 2), 1, one);
        let two_pages = r.bytes();
        assert!(r.take_fold("x.db", 1).is_some());
        // Room for two databases' folds of two pages.
        r.set_capacity(2 * two_pages + two_pages / 2);
        for db in ["a.db", "b.db"] {
            let (key, body) = level0(db, 2, &[1, 2]);
            r.offer(&key, 1, body);
        }
        // `a.db` updated again: `b.db` is now the least recently updated.
        let (key, body) = level0("a.db", 3, &[1]);
        r.offer(&key, 1, body);
        let (key, body) = level0("c.db", 2, &[1, 2]);
        r.offer(&key, 1, body);
        assert!(r.take_fold("b.db", 1).is_none(), "evicted");
        assert_eq!(r.take_fold("a.db", 1).and_then(|f| f.range()), Some((2, 3)));
        assert!(r.take_fold("c.db", 1).is_some());
        // A fold larger than the capacity is not kept.
        r.set_capacity(two_pages / 2);
        let (key, body) = level0("d.db", 2, &[1, 2]);
        r.offer(&key, 1, body);
        assert!(r.take_fold("d.db", 1).is_none());
        assert!(r.lock().order.len() < 10);
    }
}
