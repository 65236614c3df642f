//! One error type for the whole crate.
//!
//! Every failure a user can meet must end in one clear line that names the
//! thing that failed (database, WAL file, object key, bucket or flag). The
//! variants below therefore always carry that context next to the cause, and
//! their `Display` is that one line. Lower layers that parse bytes (WAL, LTX)
//! report a plain reason; the caller that knows the file or object name wraps
//! it with [`Error::wal`] / [`Error::ltx`].

use std::io;
use std::path::{Path, PathBuf};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a storage request failed, as far as the caller needs to react to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// The object does not exist (404 / ENOENT).
    NotFound,
    /// The bucket does not exist.
    NoSuchBucket,
    /// Credentials were refused or do not allow the request (401/403).
    AccessDenied,
    /// A transient failure worth retrying (5xx, 408, 429, connection reset, timeout).
    Transient,
    /// Anything else: a permanent error that retrying will not fix.
    Other,
}

impl StorageErrorKind {
    /// True for failures that a retry with backoff may overcome.
    pub fn is_retryable(self) -> bool {
        matches!(self, StorageErrorKind::Transient)
    }
}

/// Everything that can go wrong in walsync.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation on a named path failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A WAL file is malformed or cannot be used.
    #[error("{}: invalid WAL: {reason}", path.display())]
    Wal { path: PathBuf, reason: String },

    /// An LTX object is malformed, corrupt or violates a structural rule.
    #[error("{object}: invalid LTX file: {reason}")]
    Ltx { object: String, reason: String },

    /// A storage request failed.
    #[error("{location}: {kind_text}: {message}", kind_text = kind_text(*kind))]
    Storage {
        /// `bucket/key` or `dir/key`, whatever names the object for the user.
        location: String,
        kind: StorageErrorKind,
        message: String,
    },

    /// SQLite refused an operation on a database.
    #[error("{}: sqlite: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A restore cannot be planned or carried out (no replica, a gap in the
    /// chain, a target outside the replica, an existing output). The text
    /// names the database, object or txid.
    #[error("{0}")]
    Restore(String),

    /// A flag, URL or configuration value is invalid.
    #[error("{0}")]
    Config(String),

    /// An encrypted object cannot be opened (no or wrong key, altered,
    /// truncated, renamed). The text names the object and, for a failed
    /// tag, the chunk.
    #[error("{0}")]
    Crypt(String),

    /// Another writer holds (or took over) a database's replica: this
    /// process must not ship it. The text names the database and the holder.
    #[error("{0}")]
    Fenced(String),

    /// A streamed body can no longer be written: the database state it
    /// reads was released (a snapshot whose read transaction ended, see
    /// [`crate::storage::Source`]). Its upload is abandoned, not retried.
    #[error("{0}")]
    Withdrawn(String),
}

fn kind_text(kind: StorageErrorKind) -> &'static str {
    match kind {
        StorageErrorKind::NotFound => "not found",
        StorageErrorKind::NoSuchBucket => "no such bucket",
        StorageErrorKind::AccessDenied => {
            "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        }
        StorageErrorKind::Transient => "temporary failure",
        StorageErrorKind::Other => "request failed",
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A malformed WAL at `path`.
    pub fn wal(path: impl AsRef<Path>, reason: impl Into<String>) -> Error {
        Error::Wal {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }

    /// A malformed LTX object named `object`.
    pub fn ltx(object: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Ltx {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// A SQLite error on the database at `path`.
    pub fn sqlite(path: impl AsRef<Path>, source: rusqlite::Error) -> Error {
        Error::Sqlite {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A storage error on `location`.
    pub fn storage(
        location: impl Into<String>,
        kind: StorageErrorKind,
        message: impl Into<String>,
    ) -> Error {
        Error::Storage {
            location: location.into(),
            kind,
            message: message.into(),
        }
    }

    /// The storage error kind, if this is a storage error.
    pub fn storage_kind(&self) -> Option<StorageErrorKind> {
        match self {
            Error::Storage { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}
