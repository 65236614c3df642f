//! SQLite's own check of a restored database, before it is installed.
//!
//! Why this exists next to walsync's checksums: the LTX file checksum of
//! every object (and its `walsync-sha256` metadata) proves that each page
//! applied is the page that was shipped. It cannot prove that what was
//! shipped was a sound database (a source already corrupt on disk, a bug
//! anywhere between the WAL and the temp file). SQLite's check can, at a
//! price that depends on how thorough it is. Measured on 1 GiB databases
//! restored from the local Garage (benches/README.md "Restore checks"):
//! `quick_check` takes 0.7–3.1 s, 13–31 % of the restore; `integrity_check`
//! of a database with five indexes ~50 s, ten times the rest of the
//! restore. So the default is `quick_check`: every page of every
//! b-tree is read and its structure checked (page types, cell bounds, key
//! order, record format, overflow chains, free-list, no page used twice or
//! lost), and NOT NULL and CHECK constraints, which is what a byte-level
//! mishap breaks. `integrity_check` (`--integrity-check`) also checks that
//! every index holds exactly the rows of its table and that UNIQUE holds —
//! logical damage that no page checksum can see, and that `walsync verify`
//! keeps checking.
//!
//! There is no way to skip SQLite's check: for the seconds it saves,
//! installing a database nobody looked at is not worth it.

use super::*;

/// How thoroughly SQLite checks the restored file (`PRAGMA quick_check` or
/// `PRAGMA integrity_check`); see the module docs for the trade-off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteCheck {
    /// `PRAGMA quick_check`: the structure of every page, NOT NULL and
    /// CHECK constraints (the default).
    #[default]
    Quick,
    /// `PRAGMA integrity_check`: also every index against its table and
    /// UNIQUE constraints.
    Integrity,
}

impl SqliteCheck {
    /// The pragma's name, as users know it (`quick_check`).
    pub fn pragma(self) -> &'static str {
        match self {
            SqliteCheck::Quick => "quick_check",
            SqliteCheck::Integrity => "integrity_check",
        }
    }
}

/// SQLite's complaints quoted in the error (one line stays readable).
const SHOWN: usize = 5;

/// Run `check` on the database at `path` (restored for `plan`); an error
/// names the database, the txid and SQLite's first complaints.
pub(super) fn sqlite_check(path: &Path, plan: &Plan, check: SqliteCheck) -> Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Error::sqlite(path, e))?;
    let rows: Vec<String> = match (|| {
        let mut stmt = conn.prepare(&format!("PRAGMA {}({})", check.pragma(), SHOWN + 1))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
    })() {
        Ok(rows) => rows,
        // A page too damaged to walk stops the check with an error
        // ("database disk image is malformed"): that is its verdict on
        // the database, reported like its rows.
        Err(e)
            if matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            ) =>
        {
            vec![e.to_string()]
        }
        Err(e) => return Err(Error::sqlite(path, e)),
    };
    conn.close().map_err(|(_, e)| Error::sqlite(path, e))?;
    if rows.len() == 1 && rows[0] == "ok" {
        return Ok(());
    }
    let more = if rows.len() > SHOWN { "; …" } else { "" };
    Err(Error::Restore(format!(
        "{}: the database restored at txid {} fails PRAGMA {}: {}{more}",
        plan.db,
        plan.txid,
        check.pragma(),
        rows[..rows.len().min(SHOWN)].join("; ")
    )))
}
