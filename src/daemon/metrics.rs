//! What the daemon is doing, for operators: the database registry, the
//! Prometheus endpoint (`--metrics-addr`) and the periodic request log.
//!
//! Why one registry: readiness (sd_notify), the heartbeat, the metrics
//! endpoint and `walsync status` ([`crate::daemon::status`]) all ask the same questions — which databases are there, has each
//! made its first pass, how far behind is it — so the daemon records each
//! database once here and every consumer reads the same state. The HTTP
//! server is `tiny_http`, synchronous, on its own thread: scraping never
//! touches a database thread or storage (an idle daemon stays at zero
//! requests), it only reads atomics.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::capture::DbStats;
use crate::error::{Error, Result};
use crate::storage::counting::{self, CountingStorage, RequestKind, ERROR_KINDS};
use crate::upload::{Budget, QueueProbe, Stats};

/// Where a database stands.
#[derive(Clone)]
pub enum DbState {
    /// Its thread is starting it (lock, connection, resume point).
    Opening,
    /// Opening failed; the thread retries when the file changes.
    Failed(String),
    /// Replicating.
    Running(Arc<DbStats>),
}

#[derive(Clone)]
struct Entry {
    path: PathBuf,
    state: DbState,
    /// Found at start-up (readiness waits for these only).
    initial: bool,
    /// The last failure to open it and its time (ms since the epoch), kept
    /// once it opens.
    open_error: Option<(String, i64)>,
}

/// One database as the registry knows it (`walsync status`).
pub struct Known {
    /// Name in the bucket.
    pub name: String,
    /// Path as configured.
    pub path: PathBuf,
    /// Where it stands.
    pub state: DbState,
    /// The last failure to open it, with its time (ms since the epoch).
    pub open_error: Option<(String, i64)>,
    /// The last failed storage request naming it, with its time.
    pub storage_error: Option<(String, i64)>,
}

/// Databases and pipeline counters shared by metrics, heartbeat and readiness.
pub struct Registry {
    dbs: RwLock<BTreeMap<String, Entry>>,
    requests: Arc<CountingStorage>,
    uploads: Arc<Stats>,
    queue: QueueProbe,
    budget: Arc<Budget>,
}

impl Registry {
    /// A registry reading request counts from `requests` and the pool's state.
    pub fn new(
        requests: Arc<CountingStorage>,
        uploads: Arc<Stats>,
        queue: QueueProbe,
        budget: Arc<Budget>,
    ) -> Registry {
        Registry {
            dbs: RwLock::new(BTreeMap::new()),
            requests,
            uploads,
            queue,
            budget,
        }
    }

    /// Database `name` at `path` is being started.
    pub fn add(&self, name: &str, path: &Path, initial: bool) {
        self.write().insert(
            name.to_string(),
            Entry {
                path: path.to_path_buf(),
                state: DbState::Opening,
                initial,
                open_error: None,
            },
        );
    }

    /// Database `name` changed state.
    pub fn set_state(&self, name: &str, state: DbState) {
        if let Some(e) = self.write().get_mut(name) {
            if let DbState::Failed(msg) = &state {
                e.open_error = Some((msg.clone(), crate::util::now_ms()));
            }
            e.state = state;
        }
    }

    /// Database `name` is no longer replicated.
    pub fn remove(&self, name: &str) {
        self.write().remove(name);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.dbs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Idle closes (`--close-idle-after`) of the running databases so far:
    /// a wave of them frees SQLite connections the daemon then hands back
    /// to the kernel ([`crate::util::release_free_memory`]).
    pub fn idle_closes(&self) -> u64 {
        let dbs = self.dbs.read().unwrap_or_else(|p| p.into_inner());
        dbs.values()
            .map(|e| match &e.state {
                DbState::Running(s) => s.parks.load(Ordering::Relaxed),
                _ => 0,
            })
            .sum()
    }

    fn entries(&self) -> Vec<(String, Entry)> {
        self.dbs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every database with its state and last errors, by name.
    pub fn databases(&self) -> Vec<Known> {
        self.entries()
            .into_iter()
            .map(|(name, e)| Known {
                storage_error: self.requests.last_error(&name),
                name,
                path: e.path,
                state: e.state,
                open_error: e.open_error,
            })
            .collect()
    }

    /// Start-up is complete: every database found at start-up has finished
    /// its first pass, or failed to open (reported in the log; the daemon
    /// keeps retrying it and replicates the others).
    pub fn ready(&self) -> bool {
        self.entries()
            .iter()
            .filter(|(_, e)| e.initial)
            .all(|(_, e)| match &e.state {
                DbState::Opening => false,
                DbState::Failed(_) => true,
                DbState::Running(s) => s.passes.load(Ordering::Relaxed) > 0,
            })
    }

    /// A database found at start-up that is not replicating (its name and
    /// why), if any: `--exec` starts its child only when there is none.
    pub fn start_failure(&self) -> Option<(String, String)> {
        self.entries()
            .into_iter()
            .find_map(|(name, e)| match e.state {
                DbState::Failed(msg) if e.initial => Some((name, msg)),
                _ => None,
            })
    }

    /// `Ok` when every database replicates and lags at most `max_lag`;
    /// otherwise the first reason why not (for the log).
    pub fn caught_up(&self, max_lag: Duration) -> std::result::Result<(), String> {
        for (name, e) in self.entries() {
            match &e.state {
                DbState::Opening => return Err(format!("{name}: still starting")),
                DbState::Failed(msg) => return Err(format!("{name}: not replicated: {msg}")),
                DbState::Running(s) => {
                    let lag = s.lag();
                    if lag > max_lag {
                        return Err(format!(
                            "{name}: replication lag {:.1}s exceeds {:.1}s",
                            lag.as_secs_f64(),
                            max_lag.as_secs_f64()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Per-database request counts as one log line each, for those that
    /// changed since `last` (updated in place).
    pub fn request_log(&self, last: &mut BTreeMap<String, counting::Snapshot>) -> Vec<String> {
        let mut lines = Vec::new();
        for (db, snap) in self.requests.snapshot() {
            if last.get(&db) == Some(&snap) {
                continue;
            }
            let mut line = format!("{db}: requests");
            for k in RequestKind::ALL {
                let _ = write!(line, " {}={}", k.name(), snap.requests[k as usize]);
            }
            let errors: u64 = snap.errors.iter().sum();
            let _ = write!(
                line,
                " errors={errors} uploaded={} bytes in {} objects",
                snap.put_bytes, snap.put_objects
            );
            lines.push(line);
            last.insert(db, snap);
        }
        lines
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let entries = self.entries();
        let requests = self.requests.snapshot();

        family(
            &mut out,
            "walsync_database_replicating",
            "gauge",
            "1 while the database is replicated, 0 while it is starting or failed to open",
        );
        for (name, e) in &entries {
            let v = u8::from(matches!(e.state, DbState::Running(_)));
            sample(&mut out, "walsync_database_replicating", &[("db", name)], v);
        }
        let running: Vec<(&String, &Arc<DbStats>)> = entries
            .iter()
            .filter_map(|(n, e)| match &e.state {
                DbState::Running(s) => Some((n, s)),
                _ => None,
            })
            .collect();
        family(
            &mut out,
            "walsync_database_durable_txid",
            "gauge",
            "highest txid acknowledged by storage (contiguous)",
        );
        for (name, s) in &running {
            sample(
                &mut out,
                "walsync_database_durable_txid",
                &[("db", name)],
                s.durable_txid.load(Ordering::Relaxed),
            );
        }
        family(&mut out, "walsync_database_lag_seconds", "gauge",
            "age of the oldest transaction read from the WAL and not yet acknowledged by storage; 0 when caught up");
        for (name, s) in &running {
            sample(
                &mut out,
                "walsync_database_lag_seconds",
                &[("db", name)],
                format!("{:.3}", s.lag().as_secs_f64()),
            );
        }
        family(
            &mut out,
            "walsync_database_wal_bytes",
            "gauge",
            "size of the database's -wal file",
        );
        for (name, e) in &entries {
            sample(
                &mut out,
                "walsync_database_wal_bytes",
                &[("db", name)],
                wal_bytes(&e.path),
            );
        }
        family(
            &mut out,
            "walsync_database_last_snapshot_timestamp_seconds",
            "gauge",
            "unix time the newest snapshot was cut by this process (absent before the first)",
        );
        for (name, s) in &running {
            let ms = s.last_snapshot_ms.load(Ordering::Relaxed);
            if ms > 0 {
                sample(
                    &mut out,
                    "walsync_database_last_snapshot_timestamp_seconds",
                    &[("db", name)],
                    format!("{:.3}", ms as f64 / 1000.0),
                );
            }
        }
        for (metric, help, pick) in [
            (
                "walsync_database_segments_total",
                "segments acknowledged by storage",
                (|s: &DbStats| s.segments.load(Ordering::Relaxed)) as fn(&DbStats) -> u64,
            ),
            (
                "walsync_database_snapshots_total",
                "snapshots cut",
                |s: &DbStats| s.snapshots.load(Ordering::Relaxed),
            ),
            (
                "walsync_database_checkpoints_total",
                "checkpoints run by walsync",
                |s: &DbStats| s.checkpoints.load(Ordering::Relaxed),
            ),
            (
                "walsync_database_wal_releases_total",
                "times walsync stopped holding the WAL back in an outage (--max-wal-mib); a snapshot follows",
                |s: &DbStats| s.wal_releases.load(Ordering::Relaxed),
            ),
            (
                "walsync_database_idle_closes_total",
                "times the database's files were closed for being idle (--close-idle-after)",
                |s: &DbStats| s.parks.load(Ordering::Relaxed),
            ),
        ] {
            family(&mut out, metric, "counter", help);
            for (name, s) in &running {
                sample(&mut out, metric, &[("db", name)], pick(s));
            }
        }
        family(
            &mut out,
            "walsync_databases_files_closed",
            "gauge",
            "databases replicated with their files closed while idle (--close-idle-after)",
        );
        let closed = running
            .iter()
            .filter(|(_, s)| s.parked.load(Ordering::Relaxed))
            .count();
        sample(&mut out, "walsync_databases_files_closed", &[], closed);
        family(
            &mut out,
            "walsync_database_uploaded_bytes_total",
            "counter",
            "bytes stored by successful PUTs",
        );
        for (db, c) in &requests {
            sample(
                &mut out,
                "walsync_database_uploaded_bytes_total",
                &[("db", db)],
                c.put_bytes,
            );
        }
        family(
            &mut out,
            "walsync_database_uploaded_objects_total",
            "counter",
            "objects stored by successful PUTs",
        );
        for (db, c) in &requests {
            sample(
                &mut out,
                "walsync_database_uploaded_objects_total",
                &[("db", db)],
                c.put_objects,
            );
        }
        family(&mut out, "walsync_storage_requests_total", "counter",
            "storage requests sent, by database and kind (db=\"(none)\": requests naming no database)");
        for (db, c) in &requests {
            for k in RequestKind::ALL {
                sample(
                    &mut out,
                    "walsync_storage_requests_total",
                    &[("db", db), ("kind", k.name())],
                    c.requests[k as usize],
                );
            }
        }
        family(
            &mut out,
            "walsync_storage_errors_total",
            "counter",
            "failed storage requests, by database and error kind",
        );
        for (db, c) in &requests {
            for (i, k) in ERROR_KINDS.iter().enumerate() {
                sample(
                    &mut out,
                    "walsync_storage_errors_total",
                    &[("db", db), ("kind", counting::error_kind_name(*k))],
                    c.errors[i],
                );
            }
        }
        family(
            &mut out,
            "walsync_uploader_queue_depth",
            "gauge",
            "segments waiting for an uploader thread",
        );
        sample(
            &mut out,
            "walsync_uploader_queue_depth",
            &[],
            self.queue.depth(),
        );
        family(
            &mut out,
            "walsync_uploader_budget_used_bytes",
            "gauge",
            "bytes of queued and in-flight segments charged to --memory-mib",
        );
        sample(
            &mut out,
            "walsync_uploader_budget_used_bytes",
            &[],
            self.budget.used(),
        );
        family(
            &mut out,
            "walsync_uploader_put_errors_total",
            "counter",
            "failed upload attempts (each is retried)",
        );
        sample(
            &mut out,
            "walsync_uploader_put_errors_total",
            &[],
            self.uploads.put_errors.load(Ordering::Relaxed),
        );
        if let Some((rss, threads)) = process_status() {
            family(
                &mut out,
                "walsync_process_resident_memory_bytes",
                "gauge",
                "resident set size (VmRSS)",
            );
            sample(&mut out, "walsync_process_resident_memory_bytes", &[], rss);
            family(
                &mut out,
                "walsync_process_threads",
                "gauge",
                "threads of the process",
            );
            sample(&mut out, "walsync_process_threads", &[], threads);
        }
        out
    }
}

/// Size of the `-wal` file beside database `path` (0 when there is none).
pub fn wal_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(&wal).map_or(0, |m| m.len())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Prometheus label-value escaping: backslash, double quote, line feed.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `(VmRSS bytes, Threads)` from `/proc/self/status`.
fn process_status() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// Serve `registry` at `http://addr/metrics` on a thread of its own.
/// Binding failures are returned (naming the flag); request errors are logged.
pub fn serve(addr: SocketAddr, registry: Arc<Registry>) -> Result<SocketAddr> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| Error::Config(format!("--metrics-addr {addr}: cannot listen: {e}")))?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    std::thread::Builder::new()
        .name("metrics".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            for req in server.incoming_requests() {
                let path = req.url().split('?').next().unwrap_or("");
                let (status, body, ctype) = match (req.method(), path) {
                    (tiny_http::Method::Get, "/metrics") => (
                        200,
                        registry.render(),
                        "text/plain; version=0.0.4; charset=utf-8",
                    ),
                    (tiny_http::Method::Get, "/") => (
                        200,
                        "walsync: metrics at /metrics\n".to_string(),
                        "text/plain; charset=utf-8",
                    ),
                    _ => (404, "not found\n".to_string(), "text/plain; charset=utf-8"),
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(status);
                if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes())
                {
                    response = response.with_header(h);
                }
                if let Err(e) = req.respond(response) {
                    log::debug!("metrics: cannot answer a request: {e}");
                }
            }
        })
        .map_err(|e| Error::Config(format!("cannot start the metrics thread: {e}")))?;
    log::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}

/// Log per-database request counts at debug level every `every`, only for
/// databases whose counts changed (an idle daemon stays silent).
pub fn spawn_request_log(registry: Arc<Registry>, every: Duration) {
    let spawned = std::thread::Builder::new()
        .name("request-log".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut last = BTreeMap::new();
            loop {
                std::thread::sleep(every);
                if log::log_enabled!(log::Level::Debug) {
                    for line in registry.request_log(&mut last) {
                        log::debug!("{line}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the request-log thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_log_reports_only_changes() {
        use crate::storage::{FileStorage, Metadata, Storage};
        let dir = tempfile::tempdir().unwrap();
        let files: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
        let counting = Arc::new(CountingStorage::new(files));
        let storage: Arc<dyn Storage> = counting.clone();
        let uploader = crate::upload::Uploader::start(storage.clone(), 1, 1 << 20);
        let reg = Registry::new(
            counting,
            uploader.stats(),
            uploader.queue_probe(),
            uploader.budget(),
        );
        let mut last = BTreeMap::new();
        assert!(reg.request_log(&mut last).is_empty());
        storage
            .put("a.db/0000/x.ltx", b"abc", &Metadata::new())
            .unwrap();
        let lines = reg.request_log(&mut last);
        assert_eq!(
            lines,
            ["a.db: requests PUT=1 GET=0 LIST=0 HEAD=0 DELETE=0 errors=0 uploaded=3 bytes in 1 objects"]
        );
        assert!(
            reg.request_log(&mut last).is_empty(),
            "unchanged counts logged again"
        );
        storage.get("a.db/0000/x.ltx").unwrap();
        assert_eq!(reg.request_log(&mut last).len(), 1);
        let page = reg.render();
        assert!(
            page.contains("walsync_storage_requests_total{db=\"a.db\",kind=\"GET\"} 1\n"),
            "{page}"
        );
        assert!(page.contains("walsync_uploader_queue_depth 0\n"), "{page}");
        uploader.join();
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn process_status_reads_rss_and_threads() {
        let (rss, threads) = process_status().unwrap();
        assert!(rss > 0);
        assert!(threads >= 1);
    }
}
