//! Default settings shared by more than one stage.
//!
//! Why a module of its own: a default that the daemon's per-database
//! settings and the compactor both need was imported from the compactor,
//! which tied the capture stage to compaction. Defaults live here, with
//! nothing of the crate imported, so any stage can read them.

use std::time::Duration;

/// Default retention window (`--retention`): every state of the last 24 h
/// stays restorable.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
