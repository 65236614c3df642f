//! walsync: continuous replication of SQLite WAL files to S3-compatible storage.
//!
//! # The pipeline
//!
//! ```text
//!  app commits ──► <db>-wal, <db>-shm
//!                       │  inotify (watch), tail probe and polls (tail)
//!                       ▼
//!  replicate/  one watcher thread per database: pin the WAL with a read
//!              transaction, read what the wal-index publishes (wal, shm),
//!              check SQLite's commit counter, checkpoint after shipping
//!                       │  committed transactions, or a snapshot
//!                       ▼
//!  segment     LTX encoding (ltx/) into memory or a temp file (tmpfiles)
//!                       │  crossbeam channel, byte budget
//!                       ▼
//!  upload      fixed uploader pool, retries forever ──► storage/ (S3, file://,
//!              fenced by lease, rate-limited, counted, encrypted)
//!                       │
//!  compact     merges levels 1–3, retention, presence check ◄─ recent (cache)
//!
//!  restore     the mirror: list, plan a chain, fetch, verify, apply, atomically
//! ```
//!
//! # Modules
//!
//! The crate is laid out as the pipeline it implements; a module imports
//! only modules above it in this list (no import cycle):
//!
//! - [`util`], [`defaults`], [`error`]: leaves — helpers, defaults, the one
//!   error type.
//! - [`wal`]: read and verify a SQLite write-ahead log, cut it at commit frames.
//! - [`ltx`]: encode and decode LTX files, the on-storage format shared with
//!   Litestream 0.5, and the bucket layout (object keys).
//! - [`shm`]: read SQLite's wal-index header to count commits and prove none was missed.
//! - [`tail`]: the wake-ups inotify does not deliver (commits published
//!   without a file event, remote filesystems).
//! - [`tmpfiles`]: temp files named by their process, swept at start-up.
//! - [`storage`]: a small object-store trait with an S3 backend (rust-s3,
//!   blocking) and a local-directory backend, and the wrappers around them.
//! - [`segment`]: turn committed transactions and snapshots into LTX objects.
//! - [`recent`]: bodies of objects just stored, kept for the compactor.
//! - [`upload`]: the fixed uploader pool, byte budget and retries.
//! - [`lock`]: the advisory lock that keeps one process shipping a database.
//! - [`lease`]: writer fencing in the bucket (lease objects, conditional writes).
//! - [`replicate`]: one database's checkpoint-safe capture protocol.
//! - [`restore`]: plan, download, verify and apply a replica into a database file.
//! - [`compact`]: merge level-0 objects into levels 1–3; retention that never breaks a restore.
//! - [`watch`]: one inotify instance routing file changes to databases.
//! - [`metrics`]: database registry, Prometheus endpoint, request log.
//! - [`heartbeat`]: push heartbeats while replication is healthy.
//! - [`notify`]: systemd readiness, stopping and watchdog notifications.
//! - [`config`]: the `--config` file (databases, overrides, settings).
//! - [`daemon`]: `walsync sync`: globs, threads, signals.
//! - [`ops`]: `walsync list`, `verify` and `snapshot`.
//! - [`cli`]: command-line parsing shared by the `walsync` and `walsync-sync`
//!   binaries.
//!
//! There is no async runtime anywhere: the daemon is a fixed set of threads.

pub mod cli;
pub mod compact;
pub mod config;
pub mod daemon;
pub mod defaults;
pub mod error;
pub mod heartbeat;
pub mod lease;
pub mod lock;
pub mod ltx;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod recent;
pub mod replicate;
pub mod restore;
pub mod segment;
pub mod shm;
pub mod storage;
pub mod tail;
pub mod tmpfiles;
pub mod upload;
pub mod util;
pub mod wal;
pub mod watch;

pub use error::{Error, Result, StorageErrorKind};
