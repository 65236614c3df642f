//! Micro-benchmarks of walsync's hot paths (divan).
//!
//! Run with `cargo bench --bench core` (cargo uses the release profile for
//! benches); the top-level Makefile runs exactly that. No arguments, network
//! or environment variables are needed: the fixture (a SQLite WAL of about
//! 38 MB) is built in a temporary directory that is removed afterwards, and
//! the whole run takes about 25 s after compilation. A failed fixture
//! assertion makes the command exit non-zero. Pass a filter to run one bench,
//! e.g. `cargo bench --bench core -- wal_scan`. Measured figures are recorded
//! in `benches/RESULTS.md`.
//!
//! What each bench measures, and why:
//!
//! - `wal_header_parse`: [`WalHeader::parse`] of a real 32-byte WAL header
//!   (magic, version, page size checks and the header checksum). Runs once
//!   per poll of the WAL, so it must be negligible: target ≤ 5 ns.
//! - `frame_header_parse`: [`FrameHeader::parse`] of a 24-byte frame header
//!   (five big-endian words). Runs once per frame: target ≤ 3 ns.
//! - `wal_checksum_frame`: the cumulative WAL checksum of one 4 KB frame
//!   (the first 8 bytes of the frame header, then the 4096-byte page), as the
//!   scanner chains it, for little- and big-endian checksum words. This is
//!   the per-byte cost of verifying the WAL.
//! - `wal_scan`: [`Scanner`] over every committed transaction of a real WAL
//!   written by SQLite (bundled, via rusqlite): 2,000 transactions of varied
//!   inserts with `wal_autocheckpoint=0`, so the WAL is tens of megabytes.
//!   This is the cost of cutting the log into transactions (salts, checksum
//!   chain, frame list) — the upper bound on how fast walsync can follow a
//!   write burst.
//! - `sha256`: `ring` SHA-256 of 1 KB, 64 KB and 1 MB (content hashing of
//!   uploads): target 1 MB ≤ 1 ms.
//! - `ltx_encode` / `ltx_decode` / `ltx_decode_all` / `ltx_verify`: an LTX
//!   file of 256 pages of 4 KB taken from the database file that the same
//!   SQLite workload produced (pages spread evenly over the file: interior
//!   and leaf pages of a table and of an index), so LZ4 sees realistic,
//!   partly compressible content rather than random bytes (incompressible) or
//!   zero pages (trivial). Encode = LZ4 block compression + CRC-64 + index;
//!   decode streams the pages into one reused buffer; `decode_all` also
//!   allocates a `Vec` per page; verify streams the whole file keeping no
//!   pages. Throughput is in uncompressed page bytes.
//!
//! All inputs are built once, outside the timed closures (a `OnceLock`
//! fixture forced before `divan::main`), and every input and result goes
//! through `divan::black_box`.

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use ring::digest::{digest, SHA256};
use walsync::ltx::{self, Header};
use walsync::sqlite::wal::{
    checksum, Checksum, FrameHeader, Position, Scanner, WalHeader, FRAME_HEADER_SIZE,
    WAL_HEADER_SIZE,
};

fn main() {
    // Build the WAL and the database before any timing starts.
    let f = fixture();
    eprintln!(
        "fixture: WAL {} bytes ({} committed in {} transactions / {} frames), \
         DB {} pages of {} bytes; LTX of {} pages: {} bytes ({:.1}% of the raw pages)",
        f.wal.len(),
        f.committed_bytes,
        f.transactions,
        f.frames,
        f.db_pages,
        f.page_size,
        f.ltx_pages.len(),
        f.ltx_file.len(),
        100.0 * f.ltx_file.len() as f64 / (f.ltx_pages.len() * f.page_size) as f64,
    );
    divan::main();
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

const TRANSACTIONS: usize = 2_000;
const LTX_PAGES: usize = 256;

struct Fixture {
    /// The whole `-wal` file as SQLite left it (connection still open).
    wal: Vec<u8>,
    /// Bytes up to the end of the last commit frame.
    committed_bytes: u64,
    transactions: usize,
    frames: usize,
    page_size: usize,
    /// Pages in the checkpointed database file.
    db_pages: usize,
    /// `(pgno, page)` pairs for the LTX benches, from the database file.
    ltx_pages: Vec<(u32, Vec<u8>)>,
    /// Header used to encode `ltx_pages`.
    ltx_header: Header,
    /// `ltx_pages` encoded.
    ltx_file: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build_fixture)
}

/// xorshift64*: deterministic content without a `rand` dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "alpha",
    "order",
    "invoice",
    "shipped",
    "pending",
    "customer",
    "warehouse",
    "berlin",
    "lisbon",
    "oslo",
    "kyoto",
    "parcel",
    "refund",
    "express",
    "standard",
    "priority",
    "note",
    "signed",
    "returned",
    "damaged",
    "paid",
    "card",
    "transfer",
    "cash",
    "widget",
    "gadget",
    "sprocket",
    "bolt",
    "nut",
    "washer",
    "cable",
    "adapter",
];

fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

fn write_workload(db: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(db).expect("open bench database");
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "PRAGMA wal_autocheckpoint=0;
         BEGIN;
         CREATE TABLE orders(
             id INTEGER PRIMARY KEY,
             customer TEXT NOT NULL,
             status TEXT NOT NULL,
             amount REAL NOT NULL,
             qty INTEGER NOT NULL,
             note TEXT,
             payload BLOB
         );
         CREATE INDEX orders_customer ON orders(customer, status);
         CREATE TABLE events(id INTEGER PRIMARY KEY, order_id INTEGER, kind TEXT, at INTEGER);
         COMMIT;",
    )
    .expect("schema");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for tx in 0..TRANSACTIONS {
        let t = conn.unchecked_transaction().expect("begin");
        {
            let mut ins = t
                .prepare_cached(
                    "INSERT INTO orders(customer, status, amount, qty, note, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .expect("prepare");
            let mut ev = t
                .prepare_cached("INSERT INTO events(order_id, kind, at) VALUES (?1, ?2, ?3)")
                .expect("prepare");
            let rows = 1 + rng.below(4) as usize;
            for _ in 0..rows {
                let customer = format!("customer-{:05}", tx as u64 * 2 + rng.below(16));
                let status = WORDS[rng.below(6) as usize];
                let amount = rng.below(1_000_000) as f64 / 100.0;
                let qty = rng.below(50) as i64;
                let words = 3 + rng.below(25) as usize;
                let note = sentence(&mut rng, words);
                // Partly structured blob: a repeated prefix plus noise.
                let len = rng.below(600) as usize;
                let mut payload = Vec::with_capacity(len);
                for i in 0..len {
                    payload.push(if i % 4 == 0 { rng.next() as u8 } else { b'x' });
                }
                ins.execute(rusqlite::params![
                    customer, status, amount, qty, note, payload
                ])
                .expect("insert");
                let id = t.last_insert_rowid();
                ev.execute(rusqlite::params![id, "created", tx as i64 * 1000])
                    .expect("event");
            }
            // Some updates of older rows, so that old pages are rewritten too.
            if tx % 10 == 0 {
                let from = 1 + rng.below(t.last_insert_rowid() as u64) as i64;
                t.execute(
                    "UPDATE orders SET status = 'shipped', qty = qty + 1
                     WHERE id BETWEEN ?1 AND ?1 + 20",
                    [from],
                )
                .expect("update");
            }
        }
        t.commit().expect("commit");
    }
    conn
}

fn build_fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let conn = write_workload(&db);
    // Read the WAL while the connection is open: closing the last connection
    // checkpoints and deletes it.
    let wal = std::fs::read(dir.path().join("bench.db-wal")).expect("read -wal");

    let header = WalHeader::parse(&wal).expect("WAL header");
    let mut scan = Scanner::new(&wal, Position::start(&header)).expect("scanner");
    let (mut transactions, mut frames) = (0, 0);
    for tx in scan.by_ref() {
        transactions += 1;
        frames += tx.frames.len();
    }
    let committed_bytes = scan.position().offset;
    assert_eq!(
        transactions,
        TRANSACTIONS + 1,
        "schema + workload transactions"
    );

    // Checkpoint into the database file and take pages from it.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("checkpoint");
    let page_size = header.page_size as usize;
    let dbfile = std::fs::read(&db).expect("read database");
    drop(conn);
    assert_eq!(dbfile.len() % page_size, 0);
    let db_pages = dbfile.len() / page_size;
    assert!(db_pages >= LTX_PAGES, "database has only {db_pages} pages");
    let step = db_pages / LTX_PAGES;
    let ltx_pages: Vec<(u32, Vec<u8>)> = (0..LTX_PAGES)
        .map(|i| {
            let pgno = 1 + i * step;
            let at = (pgno - 1) * page_size;
            (pgno as u32, dbfile[at..at + page_size].to_vec())
        })
        .collect();
    // An incremental (non-snapshot) LTX: txid 2, database of `db_pages` pages.
    let ltx_header = Header::new(page_size as u32, db_pages as u32, 2, 2, 1_700_000_000_000);
    let ltx_file = encode(&ltx_header, &ltx_pages);
    ltx::verify(ltx_file.as_slice(), "fixture").expect("fixture LTX verifies");

    Fixture {
        wal,
        committed_bytes,
        transactions,
        frames,
        page_size,
        db_pages,
        ltx_pages,
        ltx_header,
        ltx_file,
    }
}

fn encode(header: &Header, pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
    ltx::encode_to_vec(*header, pages.iter().map(|(p, d)| (*p, d.as_slice()))).expect("encode")
}

// ---------------------------------------------------------------------------
// WAL
// ---------------------------------------------------------------------------

#[divan::bench]
fn wal_header_parse(bencher: Bencher) {
    let mut h = [0u8; WAL_HEADER_SIZE];
    h.copy_from_slice(&fixture().wal[..WAL_HEADER_SIZE]);
    bencher
        .counter(BytesCount::new(WAL_HEADER_SIZE))
        .bench(|| WalHeader::parse(black_box(&h[..])));
}

#[divan::bench]
fn frame_header_parse(bencher: Bencher) {
    let mut fh = [0u8; FRAME_HEADER_SIZE];
    fh.copy_from_slice(&fixture().wal[WAL_HEADER_SIZE..WAL_HEADER_SIZE + FRAME_HEADER_SIZE]);
    bencher
        .counter(BytesCount::new(FRAME_HEADER_SIZE))
        .bench(|| FrameHeader::parse(black_box(&fh)));
}

/// Byte order of the checksum words (the WAL magic selects it).
#[derive(Clone, Copy)]
enum Endian {
    Little,
    Big,
}

impl fmt::Display for Endian {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endian::Little => "le",
            Endian::Big => "be",
        })
    }
}

#[divan::bench(args = [Endian::Little, Endian::Big])]
fn wal_checksum_frame(bencher: Bencher, endian: Endian) {
    let f = fixture();
    // The first frame of the real WAL: header + page 1.
    let frame = &f.wal[WAL_HEADER_SIZE..WAL_HEADER_SIZE + FRAME_HEADER_SIZE + f.page_size];
    let big_endian = matches!(endian, Endian::Big);
    bencher.counter(BytesCount::new(8 + f.page_size)).bench(|| {
        let be = black_box(big_endian);
        let frame = black_box(frame);
        let sum = checksum(
            be,
            black_box(Checksum(0x1234_5678, 0x9abc_def0)),
            &frame[..8],
        );
        checksum(be, sum, &frame[FRAME_HEADER_SIZE..])
    });
}

#[divan::bench]
fn wal_scan(bencher: Bencher) {
    let f = fixture();
    let start = Position::start(&WalHeader::parse(&f.wal).expect("header"));
    bencher
        .counter(BytesCount::new(f.committed_bytes))
        .bench(|| {
            let scan = Scanner::new(black_box(&f.wal), black_box(start)).expect("scanner");
            let mut frames = 0usize;
            for tx in scan {
                frames += black_box(tx).frames.len();
            }
            assert_eq!(frames, f.frames);
            frames
        });
}

// ---------------------------------------------------------------------------
// SHA-256
// ---------------------------------------------------------------------------

fn hash_input() -> &'static [u8] {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| {
        let mut rng = Rng(42);
        (0..1 << 20).map(|_| rng.next() as u8).collect()
    })
}

#[divan::bench(consts = [1024, 65536, 1048576])]
fn sha256<const N: usize>(bencher: Bencher) {
    let data = &hash_input()[..N];
    bencher
        .counter(BytesCount::new(N))
        .bench(|| digest(&SHA256, black_box(data)));
}

// ---------------------------------------------------------------------------
// LTX
// ---------------------------------------------------------------------------

fn ltx_bytes(f: &Fixture) -> BytesCount {
    BytesCount::new(f.ltx_pages.len() * f.page_size)
}

#[divan::bench]
fn ltx_encode(bencher: Bencher) {
    let f = fixture();
    bencher
        .counter(ltx_bytes(f))
        .counter(ItemsCount::new(f.ltx_pages.len()))
        .bench(|| encode(black_box(&f.ltx_header), black_box(&f.ltx_pages)));
}

#[divan::bench]
fn ltx_decode(bencher: Bencher) {
    let f = fixture();
    bencher
        .counter(ltx_bytes(f))
        .counter(ItemsCount::new(f.ltx_pages.len()))
        .with_inputs(|| vec![0u8; f.page_size])
        .bench_local_refs(|buf| {
            let mut dec =
                ltx::Decoder::new(black_box(f.ltx_file.as_slice()), "bench").expect("decoder");
            let mut n = 0usize;
            while let Some(pgno) = dec.next_page(buf).expect("page") {
                black_box((pgno, &buf[..]));
                n += 1;
            }
            assert_eq!(n, f.ltx_pages.len());
            n
        });
}

#[divan::bench]
fn ltx_decode_all(bencher: Bencher) {
    let f = fixture();
    bencher
        .counter(ltx_bytes(f))
        .counter(ItemsCount::new(f.ltx_pages.len()))
        .bench(|| ltx::decode_all(black_box(&f.ltx_file), "bench").expect("decode"));
}

#[divan::bench]
fn ltx_verify(bencher: Bencher) {
    let f = fixture();
    bencher
        .counter(ltx_bytes(f))
        .counter(ItemsCount::new(f.ltx_pages.len()))
        .bench(|| ltx::verify(black_box(f.ltx_file.as_slice()), "bench").expect("verify"));
}
