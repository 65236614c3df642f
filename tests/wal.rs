//! WAL reader tests: the shared fixtures and WALs written by real SQLite.
//!
//! The oracle for SQLite-written WALs: with automatic checkpoints off, the
//! database file stays as it was when the WAL started. Applying the frames of
//! the first `i` committed transactions the scanner yields onto a copy of that
//! file must give a database that SQLite opens, that passes
//! `integrity_check`, and whose rows equal what the writer had committed after
//! transaction `i`.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use walsync::sqlite::wal::{
    self, checksum, resume, Checksum, Position, Resume, Scanner, StopReason, Transaction, WalError,
    WalHeader, MAGIC_BE, WAL_HEADER_SIZE,
};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wal")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn scan_all(data: &[u8]) -> (Vec<Transaction>, Scanner<'_>) {
    let header = WalHeader::parse(data).expect("header");
    let mut s = Scanner::new(data, Position::start(&header)).expect("scanner");
    let txs: Vec<_> = s.by_ref().collect();
    (txs, s)
}

fn pgnos(tx: &Transaction) -> Vec<u32> {
    tx.frames.iter().map(|f| f.pgno).collect()
}

#[test]
fn fixture_ok_has_two_transactions() {
    let data = fixture("ok.wal");
    let h = WalHeader::parse(&data).unwrap();
    assert!(!h.big_endian);
    assert_eq!(h.page_size, 4096);
    assert_eq!((h.salt1, h.salt2), (0x4875a40b, 0xa38de4f5));
    let (txs, s) = scan_all(&data);
    assert_eq!(txs.len(), 2);
    assert_eq!(pgnos(&txs[0]), vec![1, 2]);
    assert_eq!(txs[0].commit, 2);
    assert_eq!(pgnos(&txs[1]), vec![2]);
    assert_eq!(txs[1].commit, 2);
    assert_eq!(s.stop_reason(), Some(StopReason::EndOfFile));
    assert_eq!(s.position().offset, data.len() as u64);
}

#[test]
fn fixture_salt_mismatch_has_no_transaction() {
    let data = fixture("salt-mismatch.wal");
    let (txs, s) = scan_all(&data);
    assert!(txs.is_empty());
    assert_eq!(s.stop_reason(), Some(StopReason::SaltMismatch));
    assert_eq!(s.position().offset, WAL_HEADER_SIZE as u64);
}

#[test]
fn fixture_checksum_mismatch_has_no_transaction() {
    let data = fixture("frame-checksum-mismatch.wal");
    let (txs, s) = scan_all(&data);
    assert!(txs.is_empty());
    assert_eq!(s.stop_reason(), Some(StopReason::ChecksumMismatch));
}

#[test]
fn malformed_headers_are_errors_not_panics() {
    let ok = fixture("ok.wal");
    let mut bad_magic = ok.clone();
    bad_magic[3] = 0x99;
    assert!(matches!(
        WalHeader::parse(&bad_magic),
        Err(WalError::BadMagic(0x377f0699))
    ));
    let mut bad_version = ok.clone();
    bad_version[7] ^= 1;
    assert!(matches!(
        WalHeader::parse(&bad_version),
        Err(WalError::BadVersion(_))
    ));
    for ps in [0u32, 256, 1000, 131072, u32::MAX] {
        let mut b = ok.clone();
        b[8..12].copy_from_slice(&ps.to_be_bytes());
        assert_eq!(
            WalHeader::parse(&b),
            Err(WalError::BadPageSize(ps)),
            "page size {ps}"
        );
    }
    let mut bad_sum = ok.clone();
    bad_sum[16] ^= 1; // salt changes, header checksum no longer matches
    assert_eq!(WalHeader::parse(&bad_sum), Err(WalError::HeaderChecksum));
    for n in 0..32 {
        assert_eq!(WalHeader::parse(&ok[..n]), Err(WalError::ShortHeader(n)));
        assert!(resume(&ok[..n], None).is_err() || n == 0);
    }
    assert_eq!(resume(&[], None), Ok(Resume::Empty));
    // The error names the file.
    let e = WalError::BadMagic(1).at("/data/app.db-wal").to_string();
    assert!(e.contains("/data/app.db-wal") && e.contains("magic"), "{e}");
}

#[test]
fn random_damage_never_panics_and_never_invents_commits() {
    let ok = fixture("ok.wal");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut b = ok.clone();
        match rnd() % 3 {
            0 => b.truncate((rnd() % ok.len() as u64) as usize),
            1 => {
                for _ in 0..(1 + rnd() % 4) {
                    let i = (rnd() % b.len() as u64) as usize;
                    b[i] ^= 1 << (rnd() % 8);
                }
            }
            _ => {
                let i = (rnd() % b.len() as u64) as usize;
                b[i] = rnd() as u8;
            }
        }
        if let Ok(h) = WalHeader::parse(&b) {
            let pos = Position::start(&h);
            if let Ok(s) = Scanner::new(&b, pos) {
                // Damage can only shorten the log: every transaction the
                // damaged log yields is one of the original's, in order.
                let (orig, _) = scan_all(&ok);
                let got: Vec<_> = s.collect();
                assert!(got.len() <= orig.len());
                if h.salt1 == 0x4875a40b && h.salt2 == 0xa38de4f5 && h.page_size == 4096 {
                    for (g, o) in got.iter().zip(&orig) {
                        assert_eq!(pgnos(g), pgnos(o));
                    }
                }
            }
        }
        let _ = resume(&b, None);
    }
}

/// Re-encode a little-endian WAL with big-endian checksum words.
fn to_big_endian(le: &[u8]) -> Vec<u8> {
    let h = WalHeader::parse(le).unwrap();
    let mut out = le.to_vec();
    out[..4].copy_from_slice(&MAGIC_BE.to_be_bytes());
    let hs = checksum(true, Checksum(0, 0), &out[..24]);
    out[24..28].copy_from_slice(&hs.0.to_be_bytes());
    out[28..32].copy_from_slice(&hs.1.to_be_bytes());
    let frame = h.frame_size() as usize;
    let mut sum = hs;
    let mut off = WAL_HEADER_SIZE;
    while off + frame <= out.len() {
        sum = checksum(true, sum, &out[off..off + 8]);
        sum = checksum(true, sum, &out[off + 24..off + frame]);
        out[off + 16..off + 20].copy_from_slice(&sum.0.to_be_bytes());
        out[off + 20..off + 24].copy_from_slice(&sum.1.to_be_bytes());
        off += frame;
    }
    out
}

#[test]
fn big_endian_checksums() {
    let be = to_big_endian(&fixture("ok.wal"));
    let h = WalHeader::parse(&be).unwrap();
    assert!(h.big_endian);
    let (txs, _) = scan_all(&be);
    assert_eq!(txs.len(), 2);
    // The little-endian reading of the same bytes must fail the header checksum.
    let mut mixed = be.clone();
    mixed[3] = 0x82;
    assert_eq!(WalHeader::parse(&mixed), Err(WalError::HeaderChecksum));
}

// ---------------------------------------------------------------------------
// WALs written by real SQLite.

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
    conn: Connection,
}

impl Db {
    fn new(page_size: u32) -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA page_size={page_size};
             PRAGMA journal_mode=WAL;
             PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);"
        ))
        .unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        Db {
            _dir: dir,
            path,
            conn,
        }
    }

    fn wal(&self) -> Vec<u8> {
        std::fs::read(self.path.with_extension("db-wal")).unwrap_or_default()
    }

    fn db_file(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn rows(&self) -> Vec<(i64, Vec<u8>)> {
        rows_of(&self.conn)
    }

    fn insert(&self, id: i64, len: usize) {
        let v: Vec<u8> = (0..len).map(|i| (i as i64 * 31 + id) as u8).collect();
        self.conn
            .execute("INSERT INTO t VALUES (?1, ?2)", (id, v))
            .unwrap();
    }
}

fn rows_of(conn: &Connection) -> Vec<(i64, Vec<u8>)> {
    let mut st = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    let rows = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows
}

/// Apply the frames of `txs` to `base` and check the result against `want`.
fn check_state(
    base: &[u8],
    wal: &[u8],
    page_size: u32,
    txs: &[Transaction],
    want: &[(i64, Vec<u8>)],
) {
    let ps = page_size as usize;
    let mut img = base.to_vec();
    for tx in txs {
        for f in &tx.frames {
            let page = wal::frame_page(wal, page_size, f).expect("frame inside WAL");
            let at = (f.pgno as usize - 1) * ps;
            if img.len() < at + ps {
                img.resize(at + ps, 0);
            }
            img[at..at + ps].copy_from_slice(page);
        }
        img.resize(tx.commit as usize * ps, 0);
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("restored.db");
    std::fs::write(&p, &img).unwrap();
    let c = Connection::open(&p).unwrap();
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(rows_of(&c), want);
}

fn many_transactions(page_size: u32, n: i64, len: usize) {
    let db = Db::new(page_size);
    let base = db.db_file();
    let mut states = Vec::new();
    for id in 0..n {
        db.insert(id, len);
        states.push(db.rows());
    }
    let wal = db.wal();
    let (txs, s) = scan_all(&wal);
    assert_eq!(txs.len() as i64, n);
    assert_eq!(s.stop_reason(), Some(StopReason::EndOfFile));
    let page_count: u32 = db
        .conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(txs.last().unwrap().commit, page_count);
    for i in [0, n as usize / 3, n as usize / 2, n as usize - 1] {
        check_state(&base, &wal, page_size, &txs[..=i], &states[i]);
    }
}

#[test]
fn sqlite_many_transactions_4096() {
    many_transactions(4096, 300, 100);
}

#[test]
fn sqlite_page_size_512() {
    many_transactions(512, 120, 700);
}

#[test]
fn sqlite_page_size_65536() {
    many_transactions(65536, 40, 20_000);
}

#[test]
fn sqlite_big_transaction_spans_many_frames() {
    let db = Db::new(4096);
    db.conn.execute_batch("PRAGMA cache_size=-65536").unwrap();
    let base = db.db_file();
    db.conn.execute_batch("BEGIN").unwrap();
    for id in 0..200 {
        db.insert(id, 30_000);
    }
    db.conn.execute_batch("COMMIT").unwrap();
    let want = db.rows();
    let wal = db.wal();
    let (txs, _) = scan_all(&wal);
    assert_eq!(txs.len(), 1);
    assert!(txs[0].frames.len() > 1400, "{} frames", txs[0].frames.len());
    check_state(&base, &wal, 4096, &txs, &want);
}

#[test]
fn sqlite_rolled_back_transaction_is_never_yielded() {
    let db = Db::new(4096);
    let base = db.db_file();
    db.insert(1, 100);
    let committed = db.rows();
    let len_before = db.wal().len();
    // A tiny cache forces SQLite to spill uncommitted pages into the WAL.
    db.conn.execute_batch("PRAGMA cache_size=2; BEGIN").unwrap();
    for id in 2..400 {
        db.insert(id, 3000);
    }
    db.conn.execute_batch("ROLLBACK").unwrap();
    let wal = db.wal();
    assert!(wal.len() > len_before + 100 * 4096, "no spill happened");
    let (txs, s) = scan_all(&wal);
    assert_eq!(txs.len(), 1, "spilled frames must not form a transaction");
    assert_eq!(s.position().offset as usize, len_before);
    check_state(&base, &wal, 4096, &txs, &committed);

    // The next commit overwrites the spilled frames and is yielded.
    db.conn.execute_batch("PRAGMA cache_size=-2000").unwrap();
    db.insert(2, 100);
    let want = db.rows();
    let wal = db.wal();
    let (txs, _) = scan_all(&wal);
    assert_eq!(txs.len(), 2);
    check_state(&base, &wal, 4096, &txs, &want);
}

#[test]
fn resume_from_saved_position_without_rescanning() {
    let db = Db::new(4096);
    let base = db.db_file();
    for id in 0..50 {
        db.insert(id, 200);
    }
    let wal1 = db.wal();
    let (first, s) = scan_all(&wal1);
    let saved = s.position();
    for id in 50..80 {
        db.insert(id, 200);
    }
    let want = db.rows();
    let wal2 = db.wal();
    assert_eq!(resume(&wal2, Some(&saved)), Ok(Resume::Continue(saved)));
    let rest: Vec<_> = Scanner::new(&wal2, saved).unwrap().collect();
    assert_eq!(rest.len(), 30);
    assert_eq!(rest[0].start_offset(), saved.offset);
    let mut all = first.clone();
    all.extend(rest);
    let (one_pass, _) = scan_all(&wal2);
    assert_eq!(all, one_pass);
    check_state(&base, &wal2, 4096, &all, &want);

    // A frame limit stops before a transaction it cannot finish.
    let mut limited = Scanner::new(&wal2, saved).unwrap().with_frame_limit(1);
    assert!(limited.next().is_some() || one_pass[50].frames.len() > 1);
    let mut limited = Scanner::new(&wal2, Position::start(&WalHeader::parse(&wal2).unwrap()))
        .unwrap()
        .with_frame_limit(0);
    assert!(limited.next().is_none());
    assert_eq!(limited.stop_reason(), Some(StopReason::Limit));

    // Offsets that are not frame boundaries are refused.
    let bad = Position {
        offset: saved.offset + 1,
        ..saved
    };
    assert!(matches!(
        Scanner::new(&wal2, bad),
        Err(WalError::BadPosition(_))
    ));
}

#[test]
fn sqlite_restart_after_checkpoint_is_recognised() {
    let db = Db::new(4096);
    for id in 0..40 {
        db.insert(id, 500);
    }
    let wal1 = db.wal();
    let (_, s) = scan_all(&wal1);
    let saved = s.position();
    let h1 = WalHeader::parse(&wal1).unwrap();
    // No other reader: PASSIVE backfills everything; the next write restarts.
    let (busy, log, ckpt): (i64, i64, i64) = db
        .conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((busy, log), (0, ckpt));
    let base = db.db_file();
    db.insert(1000, 10);
    let want = db.rows();
    let wal2 = db.wal();
    assert_eq!(wal2.len(), wal1.len(), "a restart does not shrink the file");
    let h2 = WalHeader::parse(&wal2).unwrap();
    assert_eq!(h2.salt1, h1.salt1.wrapping_add(1));
    assert_ne!(h2.salt2, h1.salt2);
    let Resume::Restarted(pos) = resume(&wal2, Some(&saved)).unwrap() else {
        panic!("restart not recognised");
    };
    assert_eq!(pos.offset, WAL_HEADER_SIZE as u64);
    let mut s = Scanner::new(&wal2, pos).unwrap();
    let txs: Vec<_> = s.by_ref().collect();
    assert_eq!(
        txs.len(),
        1,
        "old-generation frames past the new end are not yielded"
    );
    assert_eq!(s.stop_reason(), Some(StopReason::SaltMismatch));
    check_state(&base, &wal2, 4096, &txs, &want);

    // Two restarts in between: the continuity is lost.
    db.conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .unwrap();
    db.insert(1001, 10);
    let wal3 = db.wal();
    assert!(matches!(resume(&wal3, Some(&saved)), Ok(Resume::Reset(_))));
}

#[test]
fn sqlite_truncate_checkpoint_is_recognised() {
    let db = Db::new(4096);
    for id in 0..10 {
        db.insert(id, 500);
    }
    let wal1 = db.wal();
    let (_, s) = scan_all(&wal1);
    let saved = s.position();
    db.conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert_eq!(db.wal().len(), 0);
    assert_eq!(resume(&db.wal(), Some(&saved)), Ok(Resume::Empty));
    db.insert(100, 10);
    let Resume::Restarted(pos) = resume(&db.wal(), Some(&saved)).unwrap() else {
        panic!("restart after truncate not recognised");
    };
    assert_eq!(Scanner::new(&db.wal(), pos).unwrap().count(), 1);

    // A WAL cut below the shipped offset within one generation is a reset.
    let mut cut = wal1.clone();
    cut.truncate(saved.offset as usize - 4096);
    assert!(matches!(resume(&cut, Some(&saved)), Ok(Resume::Reset(_))));
}

#[test]
fn walmap_reads_a_growing_file() {
    let db = Db::new(4096);
    let wal_path = db.path.with_extension("db-wal");
    let mut map = wal::WalMap::open(&wal_path).unwrap();
    assert!(map.bytes().is_empty());
    db.insert(1, 10);
    map.refresh().unwrap();
    assert_eq!(map.bytes(), &db.wal()[..]);
    assert_eq!(scan_all(map.bytes()).0.len(), 1);
    let missing = wal::WalMap::open(db.path.with_extension("nope")).unwrap();
    assert!(missing.bytes().is_empty());
}
