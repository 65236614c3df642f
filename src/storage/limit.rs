//! A cap on requests per second shared by every database of a daemon.
//!
//! Why: on a metered bucket (or a provider that throttles with 503
//! SlowDown), one daemon replicating hundreds of busy databases can issue
//! more requests than the operator wants to pay for. [`RateLimited`] wraps
//! any [`Storage`] and makes each request take a token from one bucket
//! refilled at `per_sec` (burst: one second's worth). Callers simply block
//! a little longer; the WAL, pinned by each database's read transaction, is
//! the buffer meanwhile, as during any slow upload. A paginated listing
//! takes one token per page; a multipart upload counts as one request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Metadata, ObjectInfo, Storage};
use crate::error::Result;

/// Keys per listing page (S3's maximum).
const PAGE: usize = 1000;

/// A [`Storage`] whose requests are limited to `per_sec` per second.
pub struct RateLimited<S> {
    inner: S,
    per_sec: f64,
    /// Tokens available and when they were last refilled.
    bucket: Mutex<(f64, Instant)>,
}

impl<S: Storage> RateLimited<S> {
    /// Wrap `inner`; `per_sec` must be at least 1.
    pub fn new(inner: S, per_sec: u32) -> RateLimited<S> {
        let per_sec = f64::from(per_sec.max(1));
        RateLimited {
            inner,
            per_sec,
            bucket: Mutex::new((per_sec, Instant::now())),
        }
    }

    /// Block until one request may go.
    fn take(&self) {
        loop {
            let wait = {
                let mut b = match self.bucket.lock() {
                    Ok(b) => b,
                    Err(poisoned) => poisoned.into_inner(),
                };
                let now = Instant::now();
                let refill = now.duration_since(b.1).as_secs_f64() * self.per_sec;
                b.0 = (b.0 + refill).min(self.per_sec);
                b.1 = now;
                if b.0 >= 1.0 {
                    b.0 -= 1.0;
                    return;
                }
                (1.0 - b.0) / self.per_sec
            };
            std::thread::sleep(Duration::from_secs_f64(wait));
        }
    }
}

impl<S: Storage> Storage for RateLimited<S> {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        self.take();
        self.inner.put(key, body, meta)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        self.take();
        self.inner.get_with_info(key)
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        self.take();
        self.inner.get_range(key, start, len)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.take();
        self.inner.head(key)
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        let mut out: Vec<ObjectInfo> = Vec::new();
        let mut after = start_after.map(str::to_string);
        loop {
            let page = self.list_page(prefix, after.as_deref(), PAGE)?;
            let full = page.len() == PAGE;
            after = page.last().map(|o| o.key.clone());
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        self.take();
        self.inner.list_page(prefix, start_after, max_keys)
    }

    fn put_stream(&self, key: &str, body: &mut dyn super::Source, meta: &Metadata) -> Result<()> {
        self.take();
        self.inner.put_stream(key, body, meta)
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &super::Precondition,
    ) -> Result<bool> {
        self.take();
        self.inner.put_conditional(key, body, meta, cond)
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.take();
        self.inner.get_with_etag(key)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.take();
        self.inner.delete_many(keys)
    }

    fn check(&self) -> Result<()> {
        self.take();
        self.inner.check()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;

    #[test]
    fn requests_beyond_the_burst_wait_for_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = RateLimited::new(FileStorage::create(dir.path()).unwrap(), 20);
        let start = Instant::now();
        // 20 from the burst, then 10 more at 20/s: at least ~0.5 s.
        for i in 0..30 {
            s.put(&format!("k{i}"), b"x", &Metadata::new()).unwrap();
        }
        assert!(start.elapsed() >= Duration::from_millis(450));
        // A listing of 2,500 keys takes three pages through the limiter.
        for i in 30..2500 {
            s.inner
                .put(&format!("k{i:05}"), b"x", &Metadata::new())
                .unwrap();
        }
        assert_eq!(s.list("k", None).unwrap().len(), 2500);
    }
}
