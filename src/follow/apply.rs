//! Applying one LTX object to the followed database as one SQLite write
//! transaction, through the `sqlite_dbpage` virtual table.
//!
//! Why a file of its own: this is the part readers depend on. Every page
//! goes through SQLite's pager and WAL, so a reader of the database sees the
//! state before the object or the state after it, never a mix (see the
//! module docs of [`crate::follow`] for the mechanism and its limits).

use std::io::BufReader;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::ltx::{self, Decoder, Header};
use crate::replica::{check_header_matches, Fetched, ReplicaObject};

/// Writes one page of the attached database (`INSERT` with a page number
/// past the end grows it; `data = NULL` for page N drops page N and every
/// page after it at commit). `schema` is the table's hidden column naming
/// the database written.
const WRITE_PAGE: &str = "INSERT INTO sqlite_dbpage(schema, pgno, data) VALUES ('replica', ?1, ?2)";

/// The follower's connection to the database it keeps current.
pub(super) struct Applier {
    conn: Connection,
    path: PathBuf,
    page_size: u32,
    /// Pages in the database after the last applied object.
    pages: u32,
    buf: Vec<u8>,
}

impl Applier {
    /// Open the restored database `path` for following: it must be in WAL
    /// mode (readers keep their snapshot only then) and this SQLite must
    /// have the `sqlite_dbpage` table.
    ///
    /// `path` is ATTACHed as `replica` to an in-memory main database, as
    /// SQLite's `sqlite3_rsync` does: every statement checks the schema
    /// cookie of *main* only, so a page write after one that changed the
    /// replica's schema cookie (CREATE, DROP, VACUUM on the primary) does
    /// not make SQLite re-read a half-written `sqlite_master` ("malformed
    /// database schema" once the schema spans more than one page).
    pub(super) fn open(path: &Path) -> Result<Applier> {
        let sq = |e| Error::sqlite(path, e);
        let file = path.to_str().ok_or_else(|| {
            Error::Restore(format!(
                "{}: --follow needs a path that is valid UTF-8",
                path.display()
            ))
        })?;
        // No SQLITE_OPEN_CREATE: ATTACH inherits the flags and must not
        // create the file (it was restored before).
        let conn = Connection::open_with_flags(
            ":memory:",
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sq)?;
        // A reader never blocks a WAL writer; a busy wait only covers
        // another process opening the file (WAL recovery) or a checkpoint.
        conn.busy_timeout(Duration::from_secs(5)).map_err(sq)?;
        conn.execute("ATTACH DATABASE ?1 AS replica", [file])
            .map_err(sq)?;
        let mode: String = conn
            .query_row("PRAGMA replica.journal_mode", [], |r| r.get(0))
            .map_err(sq)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Restore(format!(
                "{}: journal mode is {mode}, --follow needs a WAL-mode database \
                 (the primary's journal_mode must be WAL)",
                path.display()
            )));
        }
        if let Err(e) = conn.prepare(WRITE_PAGE) {
            return Err(Error::Restore(format!(
                "{}: this walsync's SQLite has no sqlite_dbpage table \
                 (built without SQLITE_ENABLE_DBPAGE_VTAB, see .cargo/config.toml): \
                 --follow needs it ({e})",
                path.display()
            )));
        }
        // The follower is derived data: a power loss may lose its last
        // transactions, never its consistency (WAL, synchronous=NORMAL).
        conn.execute_batch("PRAGMA replica.synchronous=NORMAL")
            .map_err(sq)?;
        let page_size: u32 = conn
            .query_row("PRAGMA replica.page_size", [], |r| r.get(0))
            .map_err(sq)?;
        let pages: u32 = conn
            .query_row("PRAGMA replica.page_count", [], |r| r.get(0))
            .map_err(sq)?;
        Ok(Applier {
            conn,
            path: path.to_path_buf(),
            page_size,
            pages,
            buf: vec![0u8; page_size as usize],
        })
    }

    /// Apply `fetched` (the body of `o`, named `name` in messages) as one
    /// write transaction; returns its header. On any error (a corrupt
    /// object is only known at its trailer) the transaction is rolled back:
    /// the database stays at the previous txid.
    pub(super) fn apply(
        &mut self,
        o: &ReplicaObject,
        name: &str,
        fetched: Fetched,
    ) -> Result<Header> {
        match fetched {
            Fetched::Memory(bytes) => self.apply_from(o, name, bytes.as_slice()),
            Fetched::Spooled(f) => self.apply_from(o, name, BufReader::with_capacity(1 << 20, f)),
        }
    }

    fn apply_from<R: Read>(&mut self, o: &ReplicaObject, name: &str, r: R) -> Result<Header> {
        let mut dec = Decoder::new(r, name)?;
        let h = *dec.header();
        check_header_matches(&h, o, name)?;
        if h.page_size != self.page_size {
            return Err(Error::Restore(format!(
                "{name}: page size {} differs from the followed database's {} \
                 (the primary changed its page size): restore again with --force",
                h.page_size, self.page_size
            )));
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| Error::sqlite(&self.path, e))?;
        match self.write_pages(&mut dec, &h) {
            Ok(()) => {}
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(Error::sqlite(&self.path, e));
        }
        self.pages = h.commit;
        Ok(h)
    }

    /// Every page of the object, then what a plain restore's `set_len`
    /// does: pages past the old end that the object does not hold become
    /// zeros, pages past its commit size are dropped.
    fn write_pages<R: Read>(&mut self, dec: &mut Decoder<R>, h: &Header) -> Result<()> {
        let sq = |e| Error::sqlite(&self.path, e);
        let lock = ltx::lock_pgno(self.page_size);
        let zeros = vec![0u8; self.page_size as usize];
        let mut stmt = self.conn.prepare_cached(WRITE_PAGE).map_err(sq)?;
        // The first page past the old end not written yet.
        let mut next_new = self.pages.saturating_add(1);
        let zero_fill = |stmt: &mut rusqlite::CachedStatement<'_>, from: u32, upto: u32| {
            for p in from..upto {
                if p != lock {
                    stmt.execute(params![p, &zeros[..]])?;
                }
            }
            Ok::<(), rusqlite::Error>(())
        };
        // The decoder refuses pages past the commit size and out of order.
        while let Some(pgno) = dec.next_page(&mut self.buf)? {
            if pgno >= next_new {
                zero_fill(&mut stmt, next_new, pgno).map_err(sq)?;
                next_new = pgno + 1;
            }
            stmt.execute(params![pgno, &self.buf[..]]).map_err(sq)?;
        }
        if h.commit >= next_new {
            zero_fill(&mut stmt, next_new, h.commit.saturating_add(1)).map_err(sq)?;
        }
        // Must be the last write of the transaction: a later page write
        // cancels the truncation (SQLite's dbpage.c).
        let top = self.pages.max(next_new.saturating_sub(1));
        if h.commit < top {
            stmt.execute(params![h.commit + 1, rusqlite::types::Null])
                .map_err(sq)?;
        }
        Ok(())
    }

    /// Checkpoint what can be checkpointed (readers may hold part of the
    /// WAL) and close; SQLite removes the `-wal` file when no reader has the
    /// database open.
    pub(super) fn close(self) -> Result<()> {
        let path = self.path.clone();
        if let Err(e) = self
            .conn
            .query_row("PRAGMA replica.wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            log::debug!("{}: final checkpoint: {e}", path.display());
        }
        self.conn.close().map_err(|(_, e)| Error::sqlite(&path, e))
    }
}
