//! What walsync reads of SQLite's own files: the write-ahead log, the
//! wal-index (`-shm`), the frames written but not yet published, and the
//! lock that keeps one process shipping a database.
//!
//! Why a folder of its own: these are SQLite's file formats and rules
//! (`wal.c`), not walsync's. Everything here reads bytes and files and knows
//! nothing of LTX, storage or threads, so it can be tested and fuzzed on any
//! input. The capture protocol ([`crate::capture`]) builds on it.
//!
//! - [`wal`]: verify a WAL, cut it at commit frames, map it (`memmap2`;
//!   the map, [`wal::WalMap`], and its soundness rules live in `walmap.rs`).
//! - [`shm`]: the wal-index header: `mxFrame`, salts, `nBackfill` and the
//!   commit counter that proves nothing was missed.
//! - [`tail`]: commits written past `mxFrame` and not yet published, the
//!   wake-ups inotify does not deliver, remote filesystems.
//! - [`lock`]: the advisory lock file beside a database.
//! - [`hold`]: SQLite's SHARED lock on a database held without a
//!   connection (an idle database's files closed, `capture::park`).

pub mod hold;
pub mod lock;
pub mod shm;
pub mod tail;
pub mod wal;
mod walmap;
