//! Bodies of objects just stored, kept for the compactor.
//!
//! Why: merging level-0 segments into level 1 would otherwise GET every
//! object the uploaders just PUT: a busy database would pay one GET per
//! PUT. The uploaders offer each stored body here; the compactor takes it
//! instead of fetching it. Shared by both stages, owned by neither.

use std::collections::HashMap;

use crate::ltx::{self, MAX_LEVEL};

/// Bodies of objects just stored that the next compaction will merge
/// (level-0 segments from the uploaders, level-1 and -2 merges from the
/// compactor), so that merging them costs no GET: without it a busy
/// database pays one GET for every PUT. Bounded by a byte capacity (oldest
/// first out; a miss is just a GET), and off (capacity 0) unless the daemon
/// compacts.
pub struct Recent {
    inner: std::sync::Mutex<RecentInner>,
}

#[derive(Default)]
struct RecentInner {
    capacity: usize,
    bytes: usize,
    order: std::collections::VecDeque<String>,
    bodies: HashMap<String, Vec<u8>>,
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

    /// Remember the body stored under `key`, if it is an object a
    /// compaction will read (levels 0..MAX_LEVEL-1) and fits.
    pub fn offer(&self, key: &str, body: Vec<u8>) {
        let wanted = ltx::parse_object_key("", key).is_some_and(|k| k.level < MAX_LEVEL);
        let mut g = self.lock();
        // What the body holds in memory, not only its length.
        let size = body.capacity();
        if !wanted || size > g.capacity {
            return;
        }
        g.bytes += size;
        if let Some(old) = g.bodies.insert(key.to_string(), body) {
            g.bytes -= old.capacity();
        } else {
            g.order.push_back(key.to_string());
        }
        g.evict();
    }

    /// Take the body of `key` out of the cache.
    pub fn take(&self, key: &str) -> Option<Vec<u8>> {
        let mut g = self.lock();
        let body = g.bodies.remove(key)?;
        g.bytes -= body.capacity();
        // Its key stays in `order` until it reaches the front (cheap).
        Some(body)
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

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.lock();
        f.debug_struct("Recent")
            .field("capacity", &g.capacity)
            .field("bytes", &g.bytes)
            .field("objects", &g.bodies.len())
            .finish()
    }
}

impl RecentInner {
    fn evict(&mut self) {
        while self.bytes > self.capacity {
            let Some(k) = self.order.pop_front() else {
                break;
            };
            if let Some(b) = self.bodies.remove(&k) {
                self.bytes -= b.capacity();
            }
        }
        // Keys of taken bodies: drop them once they are most of the queue.
        if self.order.len() > 2 * self.bodies.len() + 64 {
            let bodies = &self.bodies;
            self.order.retain(|k| bodies.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keeps_what_compaction_reads_within_its_capacity() {
        let r = Recent::new(100);
        let k = |l: u8, t: u64| ltx::object_key("", "a.db", l, t, t);
        r.offer(&k(0, 1), vec![1; 40]);
        r.offer(&k(0, 2), vec![2; 40]);
        r.offer(&k(3, 3), vec![3; 10]); // level 3 is never merged: not kept
        r.offer("a.db/0000/not-ltx", vec![4; 10]);
        assert_eq!(r.bytes(), 80);
        r.offer(&k(0, 3), vec![5; 40]); // evicts the oldest
        assert_eq!(r.bytes(), 80);
        assert_eq!(r.take(&k(0, 1)), None);
        assert_eq!(r.take(&k(0, 2)), Some(vec![2; 40]));
        assert_eq!(r.take(&k(0, 2)), None, "taken once");
        r.offer(&k(1, 9), vec![6; 101]); // larger than the capacity
        assert_eq!(r.bytes(), 40);
        r.set_capacity(0);
        assert_eq!(r.bytes(), 0);
        for t in 10..1000 {
            r.set_capacity(10);
            r.offer(&k(0, t), vec![0; 5]);
            let _ = r.take(&k(0, t));
        }
        assert!(r.lock().order.len() < 100, "taken keys do not pile up");
        // What a body holds counts, not only its length.
        r.set_capacity(1000);
        let mut v = Vec::with_capacity(100);
        v.extend([7u8; 10]);
        r.offer(&k(0, 5000), v);
        assert_eq!(r.bytes(), 100);
        assert_eq!(r.take(&k(0, 5000)).map(|b| b.len()), Some(10));
        assert_eq!(r.bytes(), 0);
    }
}
