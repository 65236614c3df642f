//! What a restore would do, without doing it: `walsync restore --dry-run`.
//!
//! Why a file of its own: before a restore that takes minutes, a user wants
//! to see which objects it will fetch, how many bytes and requests that
//! costs, and which state (txid and time) it reaches. The request count is
//! computed here by [`object_requests`], next to the code that issues the
//! requests, so the two cannot drift apart (a test compares them through
//! the request-counting storage).

use super::*;

/// Requests a restore sends for its objects (listing and retries aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// GET requests (whole objects and ranges).
    pub gets: u64,
    /// HEAD requests.
    pub heads: u64,
}

/// Requests [`restore`] sends to download object `o` with `opts`: for an
/// object fetched by parallel ranges one HEAD and [`ranged_gets`]; else as
/// [`crate::replica::fetch`] issues them, one GET for an object below the
/// spool threshold, else one HEAD and one ranged GET per
/// [`crate::replica::fetch::RANGE_CHUNK`].
pub fn object_requests(o: &ReplicaObject, opts: &RestoreOptions) -> Requests {
    if is_ranged(o, opts) {
        Requests {
            gets: ranged_gets(o.size, opts.range_size),
            heads: 1,
        }
    } else if o.size >= opts.spool_threshold {
        Requests {
            gets: o.size.div_ceil(crate::replica::fetch::RANGE_CHUNK).max(1),
            heads: 1,
        }
    } else {
        Requests { gets: 1, heads: 0 }
    }
}

impl Plan {
    /// Requests the restore of this plan sends to fetch its objects.
    pub fn requests(&self, opts: &RestoreOptions) -> Requests {
        self.objects.iter().fold(Requests::default(), |a, o| {
            let r = object_requests(o, opts);
            Requests {
                gets: a.gets + r.gets,
                heads: a.heads + r.heads,
            }
        })
    }

    /// The time of the state this plan reaches (ms since the epoch): the
    /// header timestamp of its last object, read with one 100-byte GET.
    pub fn target_time_ms(&self, storage: &dyn Storage) -> Result<Option<i64>> {
        let Some(last) = self.objects.last() else {
            return Ok(None);
        };
        let name = format!("{}/{}", storage_root(&self.location, &self.db), last.key);
        let h = crate::replica::read_header(&RetryReads(storage), &last.key, &name)?;
        Ok(Some(h.timestamp_ms))
    }

    /// The plan for humans (a table and totals) or as one JSON object;
    /// `time_ms` from [`Plan::target_time_ms`].
    pub fn describe(&self, time_ms: Option<i64>, opts: &RestoreOptions, json: bool) -> String {
        let req = self.requests(opts);
        let time = time_ms.and_then(|ms| ltx::format_timestamp_ms(ms).ok());
        if json {
            let objects: Vec<serde_json::Value> = self
                .objects
                .iter()
                .map(|o| {
                    serde_json::json!({
                        "level": o.level,
                        "min_txid": o.min_txid,
                        "max_txid": o.max_txid,
                        "size": o.size,
                        "key": o.key,
                    })
                })
                .collect();
            let v = serde_json::json!({
                "name": self.db,
                "location": self.location,
                "txid": self.txid,
                "time": time,
                "objects": objects,
                "bytes": self.total_bytes(),
                "get_requests": req.gets,
                "head_requests": req.heads,
                "check": opts.check.pragma(),
            });
            return format!("{v}\n");
        }
        let rows: Vec<[String; 5]> = self
            .objects
            .iter()
            .map(|o| {
                [
                    o.level.to_string(),
                    o.min_txid.to_string(),
                    o.max_txid.to_string(),
                    o.size.to_string(),
                    o.key.clone(),
                ]
            })
            .collect();
        let head = ["LEVEL", "MIN TXID", "MAX TXID", "SIZE", "KEY"].map(String::from);
        let mut width = [0usize; 5];
        for r in std::iter::once(&head).chain(&rows) {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = format!(
            "plan: {} at txid {} ({}) from {}\n",
            self.db,
            self.txid,
            time.as_deref().unwrap_or("time unknown"),
            self.location
        );
        for r in std::iter::once(&head).chain(&rows) {
            out.push_str(&format!(
                "{:>w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {}\n",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = width[0],
                w1 = width[1],
                w2 = width[2],
                w3 = width[3],
            ));
        }
        out.push_str(&format!(
            "total: {} objects, {} bytes, {} GET and {} HEAD requests\n",
            self.objects.len(),
            self.total_bytes(),
            req.gets,
            req.heads
        ));
        out.push_str(&format!(
            "check: LTX checksums of every object, then PRAGMA {}{}\n",
            opts.check.pragma(),
            match opts.check {
                SqliteCheck::Quick => " (--integrity-check: also indexes against tables)",
                SqliteCheck::Integrity => "",
            }
        ));
        out
    }
}
