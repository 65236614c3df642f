//! Compaction and retention: a replica that stays small and fast to restore
//! without ever losing a state a restore inside the retention window needs.
//!
//! Why a stage of its own: the capture protocol (`capture`) ships one
//! level-0 object per group of commits, which is what makes commit→S3
//! latency low, but a busy database then leaves hundreds of thousands of
//! tiny objects a day. Restoring from them costs one GET each, and keeping
//! them forever grows the bucket without bound. Both jobs read what is
//! stored and write or delete objects; neither touches the WAL, so they run
//! on their own thread and never delay a commit's upload.
//!
//! # Compaction
//!
//! Level `L` (1–3) merges a chain of level-`L-1` objects into one object
//! every interval (30 s, 5 min, 1 h by default). A merged object covers
//! txids `first.min ..= last.max` and carries the last input's commit
//! (database size), timestamp and WAL position, so it is interchangeable
//! with its inputs for every reader: restore, Litestream, and the start-up
//! resume (which reads the newest object's WAL fields). For every page the
//! newest version wins and pages past the final size are dropped. One
//! subtlety goes beyond "newest page wins": when the database shrank below a
//! page inside the chain and grew again without rewriting it, sequential
//! application leaves that page zeroed (the restore truncates after every
//! object); the merged object then carries an explicit zero page so it
//! yields the identical file on any base.
//!
//! A level-`L` object starts right after the previous level-`L` object or
//! right after a snapshot: walsync stores a snapshot under a txid of its own
//! (level 9), so level 0 has a hole at every snapshot txid and a merge never
//! spans one. Each pass first checks the daemon's in-memory counters; an idle
//! database makes no request at all.
//!
//! # Retention
//!
//! A restore to any moment inside the window (`--retention`, 24 h by
//! default) must keep working, exactly, for every txid. Let `T0` be the
//! state at the window's start: the newest txid whose timestamp is at or
//! before `now − retention`. Every restore target inside the window is
//! `≥ T0`, and its chain (greedy, as `restore` plans it) is a prefix of the
//! chain to `T0` followed by objects ending after `T0`. So the objects kept
//! are exactly:
//!
//! - every object whose max txid is after `T0` (they hold the window), and
//! - the chain restoring `T0` itself (its newest snapshot, then the fewest
//!   compacted objects and level-0 objects reaching `T0`).
//!
//! Everything else ends at or before `T0` and is on no such chain: it is
//! deleted, but only after it has been deletable for a grace period (5 min
//! by default), so a restore planned before it became deletable finishes
//! first; a restore that still meets a deleted object re-plans (`restore`).
//! Retention is computed from the chain, never from an object's age alone,
//! and when the window's first state has no complete chain (a damaged
//! replica) nothing at all is deleted.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};

use crate::capture::DbStats;
use crate::defaults;
use crate::error::{Error, Result};
use crate::ltx::{self, Decoder, SNAPSHOT_LEVEL};
use crate::replica::fold::Fold;
use crate::replica::recent::Recent;
use crate::replica::{self, ReplicaObject, Strictness, SPOOL_THRESHOLD};
use crate::storage::Storage;
use crate::upload::segment::Body;
use crate::upload::segment::{self, Encoded, MEMORY_LIMIT};

use crate::ltx::MAX_LEVEL;

/// At most this many objects go into one merged object (a long backlog is
/// merged in several objects, one after the other).
pub const MAX_INPUTS: usize = 10_000;

/// Keys per DELETE request (the S3 limit).
const DELETE_BATCH: usize = 1000;

mod by_hand;
mod compactor;
mod level;
mod merge;
mod retention;

pub use by_hand::*;
pub use compactor::*;
pub use level::*;
pub use merge::*;
pub use retention::*;
