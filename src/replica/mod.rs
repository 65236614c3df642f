//! The replica in the bucket, as a model over [`Storage`](crate::storage::Storage): what objects a
//! database has, in which levels, which chains they form, and fetching one
//! with its checks.
//!
//! Why a folder of its own: the capture side writes this layout and the
//! compactor, retention, restore, `list` and `verify` read it. They agree on
//! it through this one place: one listing parser, one chain planner, one
//! header reader, one SHA-256 check.
//!
//! - [`recent`]: bodies of objects just stored, kept for the compactor.

pub mod recent;
