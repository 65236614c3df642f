//! From committed transactions to durable objects: LTX encoding, then the
//! uploader pool.
//!
//! Why a folder of its own: the capture protocol ([`crate::capture`]) and the
//! compactor ([`crate::compact`]) both produce LTX objects and hand them to
//! the same pool of uploader threads; neither should know how bytes
//! reach storage.
//!
//! - [`segment`]: turn committed transactions and snapshots into LTX objects
//!   in memory or in a temp file ([`crate::tmpfiles`]).
//! - [`pool`]: the uploader pool, its byte budget, retries and acks.

pub mod pool;
pub mod segment;

pub use pool::*;
