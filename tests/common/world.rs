//! A `Capture` driven directly, over a directory store with an adjustable
//! PUT delay and outage switch standing in for a slow or failing S3: the
//! harness of `tests/replica.rs` and `tests/stream.rs`, which judge only by
//! restoring and comparing rows with the source.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rusqlite::Connection;
use walsync::capture::{Capture, DbConfig, Event};
use walsync::restore::{self, RestoreOptions, Target};
use walsync::storage::{FileStorage, Metadata, ObjectInfo, Precondition, Source, Storage};
use walsync::upload::Uploader;

/// FileStorage with an adjustable PUT delay (a slow S3).
pub struct Slow {
    pub inner: FileStorage,
    pub delay_ms: AtomicU64,
    /// PUTs fail (a transient error) after their delay: an outage.
    pub failing: std::sync::atomic::AtomicBool,
    /// Streamed PUTs store the object, then report a transient error (an
    /// answer lost on the way back).
    pub ambiguous: std::sync::atomic::AtomicBool,
    /// Pause after every write of a streamed body (µs): a slow upload.
    pub stream_pause_us: AtomicU64,
    /// Streamed PUTs begun.
    pub streams: AtomicU64,
    /// The next streamed PUT fails (a transient error), once.
    pub fail_next_stream: std::sync::atomic::AtomicBool,
}

/// A source whose writer pauses after every write.
struct Dawdle<'a> {
    inner: &'a mut dyn Source,
    pause: Duration,
}

struct DawdleWriter<'a> {
    inner: &'a mut dyn std::io::Write,
    pause: Duration,
}

impl std::io::Write for DawdleWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        std::thread::sleep(self.pause);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Source for Dawdle<'_> {
    fn size_hint(&self) -> u64 {
        self.inner.size_hint()
    }
    fn write_to(&mut self, w: &mut dyn std::io::Write) -> walsync::Result<u64> {
        self.inner.write_to(&mut DawdleWriter {
            inner: w,
            pause: self.pause,
        })
    }
}

impl Slow {
    /// The PUT delay; re-read while waiting, so a test can end an "outage".
    /// Then the PUT fails while `failing` is set.
    pub fn wait(&self) -> walsync::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(walsync::Error::storage(
                "slow",
                walsync::StorageErrorKind::Transient,
                "storage is down (test)",
            ));
        }
        Ok(())
    }
}

/// Every method written out (none left to the trait's defaults).
impl Storage for Slow {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> walsync::Result<()> {
        self.wait()?;
        self.inner.put(key, body, meta)
    }
    fn put_stream(&self, key: &str, body: &mut dyn Source, meta: &Metadata) -> walsync::Result<()> {
        self.wait()?;
        self.streams.fetch_add(1, Ordering::SeqCst);
        if self.fail_next_stream.swap(false, Ordering::SeqCst) {
            return Err(walsync::Error::storage(
                "slow",
                walsync::StorageErrorKind::Transient,
                "one failed attempt (test)",
            ));
        }
        let pause = Duration::from_micros(self.stream_pause_us.load(Ordering::SeqCst));
        let mut slow = Dawdle { inner: body, pause };
        self.inner.put_stream(key, &mut slow, meta)?;
        if self.ambiguous.load(Ordering::SeqCst) {
            return Err(walsync::Error::storage(
                "slow",
                walsync::StorageErrorKind::Transient,
                "connection reset after the upload (test)",
            ));
        }
        Ok(())
    }
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> walsync::Result<bool> {
        self.inner.put_conditional(key, body, meta, cond)
    }
    fn get_with_etag(&self, key: &str) -> walsync::Result<Option<(Vec<u8>, String)>> {
        self.inner.get_with_etag(key)
    }
    fn get_with_info(&self, key: &str) -> walsync::Result<(Vec<u8>, ObjectInfo)> {
        self.inner.get_with_info(key)
    }
    fn get(&self, key: &str) -> walsync::Result<Vec<u8>> {
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> walsync::Result<Vec<u8>> {
        self.inner.get_range(key, start, len)
    }
    fn head(&self, key: &str) -> walsync::Result<Option<ObjectInfo>> {
        self.inner.head(key)
    }
    fn list(&self, prefix: &str, start_after: Option<&str>) -> walsync::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix, start_after)
    }
    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> walsync::Result<Vec<ObjectInfo>> {
        self.inner.list_page(prefix, start_after, max_keys)
    }
    fn delete_many(&self, keys: &[String]) -> walsync::Result<()> {
        self.inner.delete_many(keys)
    }
    fn check(&self) -> walsync::Result<()> {
        self.inner.check()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

pub struct World {
    pub dir: tempfile::TempDir,
    pub db: PathBuf,
    pub slow: Arc<Slow>,
    pub storage: Arc<dyn Storage>,
}

pub fn app(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=0;")
        .unwrap();
    c
}

/// The source database: WAL mode, tables `t` and `u`, one row in `t`.
pub fn create_tables(c: &Connection) {
    c.execute_batch(
        "PRAGMA journal_mode=WAL; CREATE TABLE t(x TEXT); CREATE TABLE u(x TEXT); INSERT INTO t VALUES('a');",
    )
    .unwrap();
}

pub fn insert(path: &Path, v: &str) {
    let c = app(path);
    c.execute("INSERT INTO t VALUES (?1)", [v]).unwrap();
}

pub fn all_rows(c: &Connection) -> Vec<String> {
    let mut st = c
        .prepare("SELECT 't:'||x FROM t UNION ALL SELECT 'u:'||x FROM u")
        .unwrap();
    let v = st
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    v
}

impl World {
    pub fn new() -> World {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let slow = Arc::new(Slow {
            inner: FileStorage::create(dir.path().join("bucket")).unwrap(),
            delay_ms: AtomicU64::new(0),
            failing: Default::default(),
            ambiguous: Default::default(),
            stream_pause_us: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            fail_next_stream: Default::default(),
        });
        let storage: Arc<dyn Storage> = slow.clone();
        World {
            dir,
            db,
            slow,
            storage,
        }
    }

    /// The protocol as these tests were written for it: one upload per
    /// commit (tests of the put interval set their own).
    pub fn cfg(&self) -> DbConfig {
        let mut cfg = DbConfig::new(&self.db);
        cfg.min_put_interval = Duration::ZERO;
        cfg.snapshot_interval = None;
        cfg.tmp_dir = self.dir.path().to_path_buf();
        cfg
    }

    pub fn keys(&self) -> Vec<String> {
        walsync::replica::list(&*self.storage, "r.db")
            .map(|r| r.objects.into_iter().map(|o| o.key).collect())
            .unwrap_or_default()
    }

    pub fn rows_at(&self, target: Target) -> Vec<String> {
        let out = self
            .dir
            .path()
            .join(format!("restored-{}.db", rand_suffix()));
        let plan = restore::plan(&*self.storage, "r.db", target).unwrap();
        restore::restore(&*self.storage, &plan, &out, &RestoreOptions::default()).unwrap();
        let c = Connection::open(&out).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        all_rows(&c)
    }

    pub fn source_rows(&self) -> Vec<String> {
        all_rows(&app(&self.db))
    }
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

pub struct Running {
    pub events: Sender<Event>,
    pub shutdown: Arc<Mutex<Option<Sender<()>>>>,
    pub handle: std::thread::JoinHandle<walsync::Result<()>>,
    pub stats: Arc<walsync::capture::DbStats>,
    pub _uploader: Uploader,
}

pub fn start(w: &World, cfg: DbConfig) -> Running {
    let uploader = Uploader::start(w.storage.clone(), 1, 64 << 20);
    let rep = Capture::open(cfg, w.storage.clone(), uploader.sender(), uploader.budget()).unwrap();
    let (ev_tx, ev_rx) = crossbeam_channel::bounded::<Event>(1);
    let (sd_tx, sd_rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
    let stats = rep.stats();
    let handle =
        std::thread::spawn(move || Box::new(rep).run(ev_rx, sd_rx, Duration::from_secs(20)));
    Running {
        events: ev_tx,
        shutdown: Arc::new(Mutex::new(Some(sd_tx))),
        handle,
        stats,
        _uploader: uploader,
    }
}

impl Running {
    pub fn wake(&self) {
        let _ = self.events.try_send(Event::Wake);
    }
    pub fn stop(self) {
        self.shutdown.lock().unwrap().take();
        self.handle.join().unwrap().unwrap();
    }
}

pub fn wait_for(what: &str, f: impl FnMut() -> bool) {
    wait_for_within(what, Duration::from_secs(20), f)
}

/// [`wait_for`] with a bound of its own.
pub fn wait_for_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn has_txid(keys: &[String], txid: u64) -> bool {
    keys.iter()
        .any(|k| k.ends_with(&format!("-{txid:016x}.ltx")))
}
