//! walsync: continuous replication of SQLite WAL files to S3-compatible storage.
//!
//! The crate is laid out as the pipeline it implements:
//!
//! - [`wal`]: read and verify a SQLite write-ahead log, cut it at commit frames.
//! - [`ltx`]: encode and decode LTX files, the on-storage format shared with
//!   Litestream 0.5.
//! - [`shm`]: read SQLite's wal-index header to count commits and prove none was missed.
//! - [`tail`]: the wake-ups inotify does not deliver (commits published
//!   without a file event, remote filesystems).
//! - [`storage`]: a small object-store trait with an S3 backend (rust-s3,
//!   blocking) and a local-directory backend.
//! - [`segment`]: turn committed transactions and snapshots into LTX objects.
//! - [`upload`]: the fixed uploader pool, byte budget and retries.
//! - [`tmpfiles`]: temp files named by their process, swept at start-up.
//! - [`replicate`]: one database's checkpoint-safe capture protocol.
//! - [`watch`]: one inotify instance routing file changes to databases.
//! - [`daemon`]: `walsync sync`: globs, threads, signals.
//! - [`lock`]: the advisory lock that keeps one process shipping a database.
//! - [`lease`]: writer fencing in the bucket (lease objects, conditional writes).
//! - [`ops`]: `walsync list`, `verify` and `snapshot`.
//! - [`compact`]: merge level-0 objects into levels 1–3; retention that never breaks a restore.
//! - [`restore`]: plan, download, verify and apply a replica into a database file.
//! - [`config`]: the `--config` file (databases, overrides, settings).
//! - [`metrics`]: database registry, Prometheus endpoint, request log.
//! - [`heartbeat`]: push heartbeats while replication is healthy.
//! - [`notify`]: systemd readiness, stopping and watchdog notifications.
//! - [`cli`]: command-line parsing shared by the `walsync` and `walsync-sync`
//!   binaries.
//! - [`recent`]: bodies of objects just stored, kept for the compactor.
//! - [`defaults`], [`util`]: defaults and small helpers every stage shares
//!   (leaves: they import nothing of the crate).
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
