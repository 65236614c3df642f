//! Bounded retries for callers that must finish, not wait forever.
//!
//! Why: the uploader pool retries transient failures forever (a daemon
//! outlives any outage), but a command a user runs — `walsync restore`, the
//! daemon's start-up check — must either succeed or end in one clear line.
//! Between those, one 503 SlowDown, one reset connection or one cut-off body
//! must not fail a restore of thousands of objects. So reads here are
//! retried a bounded number of times with the uploader's capped, jittered
//! backoff, and the last error is returned unchanged (it names the object).
//!
//! A body cut short by the network is not always a transport error: the
//! HTTP client may hand over a short body as complete. [`RetryReads`]
//! therefore also refetches an object whose bytes do not match its
//! `walsync-sha256` metadata, and a ranged read that came back shorter than
//! asked (restore only asks for ranges inside the object); after the last
//! attempt it returns what it got and the caller's verification fails loudly.

use std::time::Duration;

use crate::error::Result;
use crate::storage::{Metadata, ObjectInfo, Storage};
use crate::util::backoff;

/// Attempts per request (the first one included): 11 retries, about 20 s of
/// waiting (at most 26 s) before a request that keeps failing is given up.
/// A server throttling 30 % of requests (503 SlowDown) fails one request
/// 12 times in a row with probability 0.3^12 = 5e-7, so a restore of
/// thousands of objects does not give up in the middle; with 8 attempts
/// (7e-5 per request) it did, now and then.
pub const ATTEMPTS: u32 = 12;
/// Fetches of a body that came back damaged (SHA-256 mismatch, short range),
/// the first one included: few, because a corrupt object in the bucket fails
/// the same way every time and should be reported without delay.
pub const REFETCHES: u32 = 3;
/// Longest wait between two attempts.
pub const MAX_WAIT: Duration = Duration::from_secs(4);

/// Run `op` until it succeeds, fails permanently, or `attempts` transient
/// failures happened; `what` names the request in the warning.
pub fn retry_transient<T>(
    attempts: u32,
    what: &str,
    mut op: impl FnMut() -> Result<T>,
) -> Result<T> {
    let mut n = 0;
    loop {
        match op() {
            Err(e) if n + 1 < attempts && e.storage_kind().is_some_and(|k| k.is_retryable()) => {
                let wait = backoff(n, MAX_WAIT);
                log::warn!(
                    "{what}: {e}; retry {} of {} in {:.1}s",
                    n + 1,
                    attempts - 1,
                    wait.as_secs_f64()
                );
                std::thread::sleep(wait);
                n += 1;
            }
            other => return other,
        }
    }
}

/// Repeat `op` while `bad` holds for its result, at most [`REFETCHES`] times
/// in all; transient errors are retried as in [`retry_transient`].
fn retry_while<T>(
    what: &str,
    mut op: impl FnMut() -> Result<T>,
    bad: impl Fn(&T) -> Option<String>,
) -> Result<T> {
    let mut n = 0;
    loop {
        let got = retry_transient(ATTEMPTS, what, &mut op)?;
        match bad(&got) {
            Some(why) if n + 1 < REFETCHES => {
                let wait = backoff(n, MAX_WAIT);
                log::warn!("{what}: {why}; refetching in {:.1}s", wait.as_secs_f64());
                std::thread::sleep(wait);
                n += 1;
            }
            _ => return Ok(got),
        }
    }
}

/// A storage whose reads are retried (see the module documentation);
/// writes pass through unchanged.
pub struct RetryReads<'a>(pub &'a dyn Storage);

fn sha_mismatch(body: &[u8], info: &ObjectInfo) -> Option<String> {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    super::sha256_mismatch(&info.metadata, digest.as_ref())
        .map(|why| format!("body ({} bytes): {why}", body.len()))
}

impl Storage for RetryReads<'_> {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        self.0.put(key, body, meta)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        retry_while(
            key,
            || self.0.get_with_info(key),
            |(body, info)| sha_mismatch(body, info),
        )
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        retry_while(
            key,
            || self.0.get_range(key, start, len),
            |body| match len {
                Some(l) if (body.len() as u64) < l => {
                    Some(format!("{} of {l} bytes at offset {start}", body.len()))
                }
                _ => None,
            },
        )
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        retry_transient(ATTEMPTS, key, || self.0.head(key))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        retry_transient(ATTEMPTS, prefix, || self.0.list(prefix, start_after))
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        retry_transient(ATTEMPTS, prefix, || {
            self.0.list_page(prefix, start_after, max_keys)
        })
    }

    fn put_stream(&self, key: &str, body: &mut dyn super::Source, meta: &Metadata) -> Result<()> {
        self.0.put_stream(key, body, meta)
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &super::Precondition,
    ) -> Result<bool> {
        self.0.put_conditional(key, body, meta, cond)
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        self.0.get_with_etag(key)
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.0.delete_many(keys)
    }

    fn check(&self) -> Result<()> {
        retry_transient(ATTEMPTS, &self.0.describe(), || self.0.check())
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, StorageErrorKind};
    use std::cell::Cell;

    fn transient() -> Error {
        Error::Storage {
            location: "b/k".into(),
            kind: StorageErrorKind::Transient,
            message: "HTTP 503 SlowDown".into(),
        }
    }

    #[test]
    fn transient_errors_are_retried_then_succeed() {
        let calls = Cell::new(0);
        let r = retry_transient(5, "k", || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(transient())
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn retries_are_bounded_and_keep_the_last_error() {
        let calls = Cell::new(0);
        let r: Result<()> = retry_transient(3, "k", || {
            calls.set(calls.get() + 1);
            Err(transient())
        });
        assert_eq!(calls.get(), 3);
        assert!(r.unwrap_err().to_string().contains("b/k"));
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let r: Result<()> = retry_transient(5, "k", || {
            calls.set(calls.get() + 1);
            Err(Error::Storage {
                location: "b/k".into(),
                kind: StorageErrorKind::AccessDenied,
                message: "HTTP 403".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(calls.get(), 1);
    }
}
