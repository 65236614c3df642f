//! `walsync list`, `walsync verify` and `walsync snapshot`.
//!
//! Why together: all three look at a replica from the outside, one-shot,
//! without the daemon. `list` answers "what is in this bucket" with one
//! listing (plus one 100-byte ranged GET per database for the newest
//! object's time); `verify` answers "can I trust this backup" by planning the
//! chain to the newest txid, downloading and checking every object, and
//! optionally restoring it; `snapshot` ships a full snapshot now, guarded by
//! the same lock the daemon holds ([`crate::sqlite::lock`]) so two processes never
//! allocate the same txid.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::capture::{Capture, DbConfig};
use crate::error::{Error, Result};
use crate::ltx::{self, SNAPSHOT_LEVEL};
use crate::replica::{self, ReplicaObject, Strictness};
use crate::restore::{self, RestoreOptions, Target};
use crate::storage::sha256_mismatch;
use crate::storage::{Metadata, Storage};
use crate::upload::Uploader;

mod list;
mod range;
mod snapshot;
mod verify;

pub use list::*;
pub use range::*;
pub use snapshot::*;
pub use verify::*;
