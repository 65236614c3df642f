//! walsync: continuous replication of SQLite WAL files to S3-compatible storage.
//!
//! These crate docs are the architecture. Using walsync: `README.md` (the front
//! page) and `scripts/README.md` (the operations guide); measurements:
//! `benches/README.md`; the test suites: `tests/README.md`.
//!
//! # The pipeline
//!
//! ```text
//!  app commits ──► <db>-wal, <db>-shm
//!                       │  inotify (daemon/watch), tail probe and polls
//!                       ▼                                  (sqlite/tail)
//!  sqlite/    read and verify the WAL, the wal-index header, the lock file
//!                       │
//!  capture/   one watcher thread per database: pin the WAL with a read
//!             transaction, read what the wal-index publishes, check SQLite's
//!             commit counter, checkpoint after shipping
//!                       │  committed transactions, or a snapshot
//!                       ▼
//!  upload/    segment: LTX encoding (ltx/) into memory, a temp file, or
//!             straight into the upload (large snapshots, capture/source);
//!             pool: uploader threads, byte budget, retries forever
//!                       │
//!                       ▼
//!  storage/   S3 (rust-s3, blocking), file://; wrapped: encrypted, fenced
//!             (lease/), rate-limited, counted, retried, routed
//!                       │
//!  replica/   the bucket layout as a model: listing, chains, checked fetch
//!                       │
//!  compact/   merges levels 1–3, retention, presence check
//!  restore/   the mirror: plan a chain, fetch, verify, apply, atomically
//!  daemon/    `walsync sync`: globs, threads, signals, metrics, heartbeat
//!  ops/       `walsync list`, `verify`, `snapshot`
//!  cli/       flags of both binaries, one file per subcommand
//! ```
//!
//! # How the daemon works
//!
//! Each database has a watcher thread woken by inotify (one inotify instance
//! for the whole process, one watch per directory, so 1,000 databases fit the
//! default limits; an idle database costs no wake-up and no request). It reads
//! new WAL frames through a memory map, verifies salts and the checksum chain,
//! and cuts them at commit frames into LTX segments, one txid each; a
//! pool of uploader threads PUTs them (rust-s3, blocking API). A commit after a
//! quiet second becomes its own segment at once; under sustained writes each
//! database is uploaded at most once per `--min-put-interval` (1 s by default),
//! and when uploads are behind, everything committed meanwhile is folded into
//! the next one (group commit), so walsync keeps up with any write rate SQLite
//! sustains. Measured here (`make scale`, release build, see "Scale" in
//! `tests/README.md`): 1,000 databases in one process, under the default
//! 128-inotify-instance limit (walsync raises the soft open-file limit to the
//! hard limit), every first snapshot stored 16.1 s after start on a machine
//! with a load average of 13–21; RSS 264 MB after start-up, most of it SQLite's
//! per-connection lookaside (see `benches/README.md`); 1,007 threads.
//!
//! # Modules
//!
//! The crate is laid out as the pipeline it implements; a module imports
//! only modules above it in this list (no import cycle):
//!
//! - [`util`], [`defaults`], [`error`], [`tmpfiles`]: leaves — helpers, the
//!   defaults table, the one error type, temp files named by their process.
//! - [`sqlite`]: SQLite's own files: the WAL, the wal-index, commits not yet
//!   published, the lock beside a database.
//! - [`ltx`]: encode and decode LTX files, the on-storage format shared with
//!   Litestream 0.5, and the object names.
//! - [`storage`]: a small object-store trait with an S3 backend (rust-s3,
//!   blocking) and a local-directory backend, and the wrappers around them.
//! - [`replica`]: the bucket layout read back: listing, chains, checked fetch;
//!   the merge rule, and level-0 objects just stored folded by it.
//! - [`lease`]: writer fencing in the bucket (lease objects, conditional writes).
//! - [`upload`]: LTX segments and the uploader pool.
//! - [`capture`]: one database's checkpoint-safe capture protocol.
//! - [`compact`]: merge level-0 objects into levels 1–3; retention that never
//!   breaks a restore.
//! - [`restore`]: plan, download, verify and apply a replica into a database file.
//! - [`follow`]: `restore --follow`: keep a restored database current, each
//!   replicated transaction applied as one SQLite transaction for its readers.
//! - [`daemon`]: `walsync sync`: globs, threads, signals, the config file,
//!   inotify routing, metrics, heartbeats, systemd notifications.
//! - [`ops`]: `walsync list`, `verify` and `snapshot`.
//! - [`cli`]: command-line parsing shared by the `walsync` and `walsync-sync`
//!   binaries.
//!
//! # Bucket layout
//!
//! Litestream 0.5 compatible:
//!
//! ```text
//! <prefix>/<db name>/<level %04x>/<min txid %016x>-<max txid %016x>.ltx
//! ```
//!
//! - level `0000` holds one LTX file per sync (a segment of committed
//!   transactions); levels `0001`–`0003` hold compactions; level `0009` holds
//!   snapshots (`0000000000000001-<txid>.ltx`, every page of the database);
//! - each object carries `x-amz-meta-litestream-timestamp` (used for
//!   point-in-time restore) and `x-amz-meta-walsync-sha256`;
//! - restore takes the newest snapshot at or before the target, then the
//!   contiguous files above it, newest page version winning; the position to
//!   resume from is in the newest object's header (a merged object carries its
//!   last input's), so no state object is needed.
//!
//! There is no async runtime anywhere: the daemon is a set of threads.

// In import order, one tier per group.
pub mod defaults;
pub mod error;
pub mod tmpfiles;
pub mod util;

pub mod ltx;
pub mod sqlite;

pub mod storage;

pub mod lease;
pub mod replica;

pub mod upload;

pub mod capture;

pub mod compact;
pub mod follow;
pub mod restore;

pub mod daemon;
pub mod ops;

pub mod cli;

pub use error::{Error, Result, StorageErrorKind};
