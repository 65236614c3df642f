//! The per-commit hot path: one committed transaction, from the file event
//! to its segment in the upload queue (divan).
//!
//! Run with `cargo bench --bench commit` (`make bench` runs it after `core`).
//! No network or environment is needed: the database and a local-directory
//! replica live in a temporary directory removed afterwards.
//!
//! What it measures, and why: a busy daemon does this once per commit (or
//! once per `--min-put-interval` under load), for every database, so its
//! cost is what CPU use at 100 databases × 10 commits/s is made of. The
//! real [`Capture`] runs on its own thread, as in the daemon, reading a real
//! WAL that SQLite (bundled, via rusqlite) writes; the benchmark thread plays
//! the application, the inotify watcher and the uploader:
//!
//! - `commit_only`: the application's `INSERT` alone (autocommit, one ~100-byte
//!   row, `synchronous=NORMAL` as most WAL applications run): the baseline
//!   to subtract.
//! - `commit_to_segment`: the same `INSERT`, then the file event
//!   ([`Event::Wake`]), then wait until the watcher has queued the segment
//!   holding it; the segment is acknowledged at once (an instant upload),
//!   so the watcher's work after the acknowledgement (moving its read
//!   transaction, its checkpoints every `--checkpoint-pages`) runs in the
//!   background of the next iteration, as it would in the daemon.
//!
//! Each iteration checks that the segment holds exactly the next txid, so a
//! pass that skipped a commit cannot look fast. `--min-put-interval 0`: the
//! put interval would otherwise hold commits back for a second on purpose.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use divan::Bencher;
use rusqlite::Connection;
use walsync::capture::{Capture, DbConfig, Event};
use walsync::storage::{FileStorage, Storage};
use walsync::upload::{Ack, Budget, Segment};

fn main() {
    divan::main();
}

/// A database in WAL mode with a table, and the application's connection.
fn app(db: &Path) -> Connection {
    let c = Connection::open(db).expect("open the benchmark database");
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
    )
    .expect("set up the benchmark database");
    c
}

fn insert(c: &Connection, i: u64) {
    c.execute(
        "INSERT INTO t(body) VALUES (?1)",
        [format!("row {i:08} {}", "x".repeat(88))],
    )
    .expect("insert");
}

#[divan::bench]
fn commit_only(bencher: Bencher) {
    let dir = tempfile::tempdir().expect("temp dir");
    let c = app(&dir.path().join("b.db"));
    let mut i = 0;
    bencher.bench_local(|| {
        i += 1;
        insert(&c, i);
    });
}

/// The watcher of one database, running on its own thread.
struct Watcher {
    events: Sender<Event>,
    segments: Receiver<Segment>,
    budget: Arc<Budget>,
    shutdown: Option<Sender<()>>,
    thread: Option<std::thread::JoinHandle<walsync::Result<()>>>,
    next_txid: u64,
}

impl Watcher {
    fn start(dir: &Path, db: &Path) -> Watcher {
        let storage: Arc<dyn Storage> =
            Arc::new(FileStorage::create(dir.join("replica")).expect("replica dir"));
        let mut cfg = DbConfig::new(db);
        cfg.min_put_interval = Duration::ZERO;
        cfg.snapshot_interval = None;
        cfg.tmp_dir = dir.to_path_buf();
        let (seg_tx, segments) = crossbeam_channel::unbounded();
        let budget = Arc::new(Budget::new(64 << 20));
        let capture = Capture::open(cfg, storage, seg_tx, budget.clone()).expect("open capture");
        let (events, ev_rx) = crossbeam_channel::bounded(1);
        let (shutdown, sd_rx) = crossbeam_channel::bounded(0);
        let thread = std::thread::spawn(move || {
            Box::new(capture).run(ev_rx, sd_rx, Duration::from_secs(10))
        });
        let mut w = Watcher {
            events,
            segments,
            budget,
            shutdown: Some(shutdown),
            thread: Some(thread),
            next_txid: 1,
        };
        w.next(); // the first snapshot
        w
    }

    /// Wait for the next segment, check its txid and acknowledge it.
    fn next(&mut self) {
        let seg = self
            .segments
            .recv_timeout(Duration::from_secs(10))
            .expect("the watcher queued no segment within 10 s");
        assert_eq!(seg.txid, self.next_txid, "segment {}", seg.key);
        // After the first snapshot, every segment must be a level-0 one: a
        // pass that fell back to snapshots would time something else.
        let level = if self.next_txid == 1 {
            "/0009/"
        } else {
            "/0000/"
        };
        assert!(
            seg.key.contains(level),
            "segment {} is not at {level}",
            seg.key
        );
        self.next_txid += 1;
        self.budget.release(seg.charge);
        let bytes = seg.body.len().unwrap_or(0);
        let _ = seg.ack.send(Ack {
            txid: seg.txid,
            bytes,
            refused: None,
        });
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.shutdown.take();
        if let Some(t) = self.thread.take() {
            // The drain may queue nothing more; acknowledge what it does.
            while !t.is_finished() {
                if let Ok(seg) = self.segments.recv_timeout(Duration::from_millis(10)) {
                    let _ = seg.ack.send(Ack {
                        txid: seg.txid,
                        bytes: 0,
                        refused: None,
                    });
                }
            }
            let _ = t.join();
        }
    }
}

#[divan::bench]
fn commit_to_segment(bencher: Bencher) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("b.db");
    let c = app(&db);
    insert(&c, 0);
    let mut w = Watcher::start(dir.path(), &db);
    let mut i = 0;
    bencher.bench_local(|| {
        i += 1;
        insert(&c, i);
        let _ = w.events.try_send(Event::Wake);
        w.next();
    });
}
