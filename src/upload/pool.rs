//! The uploader pool: a set of threads that PUT segments to storage.
//!
//! Why a separate stage: watcher threads must never touch the network (a slow
//! or dead S3 endpoint must not stop them from reading the WAL), and the
//! number of connections to S3 must not grow with the number of databases
//! beyond a few dozen. Watchers push [`Segment`]s into one crossbeam
//! channel; a small pool (`--uploaders`, else sized by the databases:
//! [`crate::defaults::uploaders_for`]) drains it, retrying transient
//! failures forever with capped, jittered exponential backoff, and reports
//! each durable segment back to its watcher ([`Ack`]). Memory is bounded by
//! a byte budget shared by all watchers ([`Budget`]): a watcher that would
//! exceed it waits, and meanwhile the WAL itself (pinned by the watcher's
//! read transaction) is the buffer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;
use crate::replica::recent::Recent;
use crate::storage::{FileSource, Metadata, Source, Storage};
use crate::util::Since;

use crate::upload::segment::Body;

/// One LTX object to store, and whom to tell when it is durable.
pub struct Segment {
    /// Object key relative to the storage prefix.
    pub key: String,
    /// Transaction id the object ends at.
    pub txid: u64,
    /// The bytes.
    pub body: Body,
    /// User metadata (timestamp, SHA-256).
    pub meta: Metadata,
    /// Bytes charged to the shared budget (released after upload).
    pub charge: u64,
    /// Where to report the upload.
    pub ack: Sender<Ack>,
    /// Database name, for messages.
    pub db: String,
    /// [`crate::capture::DbStats::lineage`] of the capture that cut it.
    pub lineage: u64,
    /// Failed attempts so far, readable by the watcher: an upload that is
    /// slow but not failing is no outage.
    pub failures: Arc<std::sync::atomic::AtomicU32>,
}

/// A segment is durable in storage, or can never be stored by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Its transaction id.
    pub txid: u64,
    /// Bytes uploaded.
    pub bytes: u64,
    /// Set when the segment was *not* stored (boxed: every database's ack
    /// channel keeps a block of 31 acks allocated, so an ack stays small).
    pub refused: Option<Box<Refusal>>,
}

const _: () = assert!(std::mem::size_of::<Ack>() <= 24);

/// Why a segment was not stored (and is not retried).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another writer holds the database ([`crate::lease`]): the reason,
    /// one line.
    Fenced(String),
    /// Its streamed body was withdrawn ([`crate::error::Error::Withdrawn`]):
    /// the reason.
    Withdrawn(String),
}

/// Byte budget shared by every watcher (a counting semaphore on bytes).
pub struct Budget {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
    /// Since the first failed PUT after the last stored one (clear while
    /// the last attempt succeeded). Shared by every watcher: a segment still
    /// waiting in the queue has failed no attempt of its own, yet its
    /// database is in the same outage.
    failing: Since,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit: limit.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
            failing: Since::default(),
        }
    }

    /// An uploader stored an object: the pool is not failing.
    pub fn note_stored(&self) {
        self.failing.clear();
    }

    /// An upload attempt failed (keeps the start of the failing streak).
    pub fn note_failed(&self) {
        self.failing.mark();
    }

    /// How long every upload attempt has failed (zero while the last one
    /// succeeded).
    pub fn failing_for(&self) -> Duration {
        self.failing.elapsed()
    }

    /// Reserve `n` bytes, waiting up to `timeout`. A request larger than the
    /// whole budget is granted when nothing else is charged (and charged as
    /// the whole budget). Returns the bytes charged, or `None` on timeout.
    pub fn acquire(&self, n: u64, timeout: Duration) -> Option<u64> {
        let n = n.min(self.limit);
        let deadline = Instant::now() + timeout;
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used + n > self.limit {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            used = self
                .freed
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += n;
        Some(n)
    }

    /// Charge `n` bytes without waiting (may overshoot the limit; callers
    /// that must not block, such as a watcher holding the write lock, use it
    /// and then see [`Budget::exhausted`] until uploads catch up).
    pub fn force(&self, n: u64) -> u64 {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used += n;
        n
    }

    /// True when nothing more should be queued.
    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }

    /// Give back `n` bytes.
    pub fn release(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
        self.freed.notify_all();
    }

    /// Bytes currently charged.
    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Request counters of the whole pool.
#[derive(Default, Debug)]
pub struct Stats {
    /// Successful PUTs.
    pub puts: AtomicU64,
    /// Failed PUT attempts (retried).
    pub put_errors: AtomicU64,
    /// Bytes stored.
    pub bytes: AtomicU64,
}

/// Reads how many segments wait for an uploader thread.
#[derive(Clone)]
pub struct QueueProbe(Receiver<Segment>);

impl QueueProbe {
    /// Segments queued and not yet picked up by an uploader thread.
    pub fn depth(&self) -> usize {
        self.0.len()
    }
}

/// The running pool.
pub struct Uploader {
    tx: Sender<Segment>,
    probe: Receiver<Segment>,
    threads: Vec<JoinHandle<()>>,
    budget: Arc<Budget>,
    abort: Arc<AtomicBool>,
    stats: Arc<Stats>,
    recent: Arc<Recent>,
    storage: Arc<dyn Storage>,
    /// A thread could not be started while growing (warned once).
    spawn_failed: bool,
}

use crate::util::backoff;

impl Uploader {
    /// Start `threads` uploaders storing into `storage`, with a shared byte
    /// budget of `budget` bytes for queued and in-flight segments.
    pub fn start(storage: Arc<dyn Storage>, threads: usize, budget: u64) -> Uploader {
        let (tx, rx) = crossbeam_channel::unbounded::<Segment>();
        let mut pool = Uploader {
            tx,
            probe: rx,
            threads: Vec::new(),
            budget: Arc::new(Budget::new(budget)),
            abort: Arc::new(AtomicBool::new(false)),
            stats: Arc::new(Stats::default()),
            recent: Arc::new(Recent::new(0)),
            storage,
            spawn_failed: false,
        };
        for _ in 0..threads.max(1) {
            if let Err(e) = pool.spawn_one() {
                // Without its threads the daemon cannot work at all.
                log::error!("cannot start uploader thread: {e}");
                std::process::exit(1)
            }
        }
        pool
    }

    /// One more thread on the shared queue.
    fn spawn_one(&mut self) -> std::io::Result<()> {
        let rx = self.probe.clone();
        let storage = self.storage.clone();
        let budget = self.budget.clone();
        let abort = self.abort.clone();
        let stats = self.stats.clone();
        let recent = self.recent.clone();
        let handle = std::thread::Builder::new()
            .name(format!("uploader-{}", self.threads.len()))
            .stack_size(256 * 1024)
            .spawn(move || run(rx, &*storage, &budget, &abort, &stats, &recent))?;
        self.threads.push(handle);
        Ok(())
    }

    /// Grow the pool to `n` threads (it never shrinks): without
    /// `--uploaders`, the daemon sizes it by the databases it replicates.
    pub fn grow_to(&mut self, n: usize) {
        if self.threads.len() >= n {
            return;
        }
        while self.threads.len() < n {
            if let Err(e) = self.spawn_one() {
                if !self.spawn_failed {
                    self.spawn_failed = true;
                    log::warn!(
                        "uploader thread not started ({} running): {e}",
                        self.threads.len()
                    );
                }
                return;
            }
        }
        log::info!("{n} uploader threads");
    }

    /// Stored level-0 segments, folded for the compactor (off until its
    /// capacity is set; see [`Recent`]).
    pub fn recent(&self) -> Arc<Recent> {
        self.recent.clone()
    }

    /// A sender for watchers.
    pub fn sender(&self) -> Sender<Segment> {
        self.tx.clone()
    }

    /// The shared byte budget.
    pub fn budget(&self) -> Arc<Budget> {
        self.budget.clone()
    }

    /// A handle that reports the queue depth (for metrics) without keeping
    /// the pool alive.
    pub fn queue_probe(&self) -> QueueProbe {
        QueueProbe(self.probe.clone())
    }

    /// Pool-wide counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Stop retrying: segments still failing are dropped (they stay in the
    /// WAL and are shipped after the next start). Used on a forced exit.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Close the queue and wait for the threads to drain it.
    pub fn join(self) {
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn run(
    rx: Receiver<Segment>,
    storage: &dyn Storage,
    budget: &Budget,
    abort: &AtomicBool,
    stats: &Stats,
    recent: &Recent,
) {
    while let Ok(mut seg) = rx.recv() {
        let mut attempt = 0u32;
        loop {
            if abort.load(Ordering::SeqCst) {
                break;
            }
            let result = match &mut seg.body {
                Body::Memory(b) => storage.put(&seg.key, b, &seg.meta).map(|()| b.len() as u64),
                Body::File(p) => FileSource::new(p).and_then(|mut f| {
                    let n = f.size_hint();
                    storage.put_stream(&seg.key, &mut f, &seg.meta).map(|()| n)
                }),
                Body::Stream(s) => {
                    let mut body = Progressing {
                        inner: s.as_mut(),
                        failures: &seg.failures,
                        budget,
                        written: 0,
                    };
                    storage
                        .put_stream(&seg.key, &mut body, &seg.meta)
                        .map(|()| body.written)
                }
            };
            match result {
                Ok(bytes) => {
                    budget.note_stored();
                    stats.puts.fetch_add(1, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                    log::debug!("{}: stored {} ({bytes} bytes)", seg.db, seg.key);
                    // Folded before the ack, so that a database's next
                    // segment (sent after the ack) is folded after it: a
                    // fold holds consecutive objects, in txid order. The
                    // body is not needed any more: moved, not copied.
                    if let (Body::Memory(b), true) = (&mut seg.body, recent.enabled()) {
                        recent.offer(&seg.key, seg.lineage, std::mem::take(b));
                    }
                    let _ = seg.ack.send(Ack {
                        txid: seg.txid,
                        bytes,
                        refused: None,
                    });
                    break;
                }
                Err(Error::Fenced(why)) => {
                    // Retrying cannot help: another writer owns the replica.
                    let _ = seg.ack.send(Ack {
                        txid: seg.txid,
                        bytes: 0,
                        refused: Some(Box::new(Refusal::Fenced(why))),
                    });
                    break;
                }
                Err(Error::Withdrawn(why)) => {
                    // The state it would upload is gone: its watcher takes a
                    // new snapshot (under a new txid) instead.
                    log::info!("{why}");
                    let _ = seg.ack.send(Ack {
                        txid: seg.txid,
                        bytes: 0,
                        refused: Some(Box::new(Refusal::Withdrawn(why))),
                    });
                    break;
                }
                Err(e) => {
                    stats.put_errors.fetch_add(1, Ordering::Relaxed);
                    seg.failures.fetch_add(1, Ordering::Relaxed);
                    budget.note_failed();
                    let retryable = e.storage_kind().is_some_and(|k| k.is_retryable());
                    // Transient failures retry at least every 5 s, so replication
                    // catches up soon after S3 returns; permanent ones (403,
                    // missing bucket) back off to 30 s and are logged as errors.
                    let wait =
                        backoff(attempt, Duration::from_secs(if retryable { 5 } else { 30 }));
                    if retryable {
                        log::warn!(
                            "{}: upload failed, retrying in {:.1}s: {e}",
                            seg.db,
                            wait.as_secs_f32()
                        );
                    } else {
                        log::error!(
                            "{}: upload failed, retrying in {:.1}s: {e}",
                            seg.db,
                            wait.as_secs_f32()
                        );
                    }
                    attempt = attempt.saturating_add(1);
                    sleep_unless(wait, abort);
                }
            }
        }
        budget.release(seg.charge);
    }
}

/// Bytes of a streamed upload between two signs of progress.
const PROGRESS_EVERY: u64 = 1 << 20;

/// A streamed body whose upload shows progress: every [`PROGRESS_EVERY`]
/// bytes the store accepted, its segment and the pool count as not failing.
/// A large snapshot retried after one failed attempt and now uploading
/// slowly is no outage: the escape valve must not withdraw it.
struct Progressing<'a> {
    inner: &'a mut dyn Source,
    failures: &'a std::sync::atomic::AtomicU32,
    budget: &'a Budget,
    /// Bytes written by the last attempt.
    written: u64,
}

struct ProgressWriter<'a> {
    w: &'a mut dyn std::io::Write,
    failures: &'a std::sync::atomic::AtomicU32,
    budget: &'a Budget,
    n: u64,
}

impl std::io::Write for ProgressWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let k = self.w.write(data)?;
        let before = self.n / PROGRESS_EVERY;
        self.n += k as u64;
        if self.n / PROGRESS_EVERY > before {
            self.failures.store(0, Ordering::Relaxed);
            self.budget.note_stored();
        }
        Ok(k)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

impl Source for Progressing<'_> {
    fn size_hint(&self) -> u64 {
        self.inner.size_hint()
    }

    fn write_to(&mut self, w: &mut dyn std::io::Write) -> crate::error::Result<u64> {
        let mut pw = ProgressWriter {
            w,
            failures: self.failures,
            budget: self.budget,
            n: 0,
        };
        let n = self.inner.write_to(&mut pw)?;
        self.written = n;
        Ok(n)
    }
}

/// Sleep `d`, waking early when `flag` is set.
pub fn sleep_unless(d: Duration, flag: &AtomicBool) {
    let end = Instant::now() + d;
    while !flag.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            return;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FileStorage;
    use crate::storage::{Metadata, Source};

    /// A body that writes only once it is told to.
    struct Held(Receiver<()>);

    impl Source for Held {
        fn size_hint(&self) -> u64 {
            4
        }
        fn write_to(&mut self, w: &mut dyn std::io::Write) -> crate::error::Result<u64> {
            let _ = self.0.recv_timeout(Duration::from_secs(30));
            w.write_all(b"held")
                .map_err(|e| crate::error::Error::io(std::path::Path::new("held"), e))?;
            Ok(4)
        }
    }

    fn segment(txid: u64, body: Body, ack: &Sender<Ack>) -> Segment {
        Segment {
            key: format!("db/{txid:016x}.ltx"),
            txid,
            body,
            meta: Metadata::new(),
            charge: 0,
            ack: ack.clone(),
            db: "db".into(),
            lineage: 0,
            failures: Arc::default(),
        }
    }

    /// A thread added later takes segments while the first one is busy;
    /// the pool never shrinks; `join` waits for every thread.
    #[test]
    fn grown_pool_uploads_beside_a_busy_thread() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
        let mut pool = Uploader::start(storage, 1, 1 << 20);
        let (ack_tx, acks) = crossbeam_channel::unbounded();
        let (release, held) = crossbeam_channel::bounded(1);
        pool.sender()
            .send(segment(1, Body::Stream(Box::new(Held(held))), &ack_tx))
            .unwrap();
        pool.grow_to(2);
        pool.grow_to(1);
        assert_eq!(pool.threads.len(), 2);
        pool.sender()
            .send(segment(2, Body::Memory(b"next".to_vec()), &ack_tx))
            .unwrap();
        let first = acks.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(
            first.txid, 2,
            "the added thread stored it while the first was held"
        );
        release.send(()).unwrap();
        let second = acks.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(second.txid, 1);
        pool.join();
        assert!(dir.path().join("db/0000000000000001.ltx").exists());
        assert!(dir.path().join("db/0000000000000002.ltx").exists());
    }
}
