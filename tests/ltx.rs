//! LTX codec tests against real Litestream 0.5.17 output and hand-built
//! broken files.

use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use walsync::ltx::{self, Decoder, Encoder, Header, CRC64, HEADER_FLAG_NO_CHECKSUM};
use walsync::Error;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/litestream-0.5.17")
}

fn fixture(level: u8, min: u64, max: u64) -> (String, Vec<u8>) {
    let name = ltx::file_name(min, max);
    let path = fixture_dir().join(format!("ltx/{level}/{name}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (name, bytes)
}

fn all_fixtures() -> Vec<(u8, String, Vec<u8>)> {
    let mut out = Vec::new();
    for level in [0u8, 9] {
        let dir = fixture_dir().join(format!("ltx/{level}"));
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            out.push((level, n, bytes));
        }
    }
    assert_eq!(out.len(), 8, "expected 7 L0 files and 1 snapshot");
    out
}

/// Deterministic tiny PRNG (xorshift64*), no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

fn ltx_reason(r: Result<impl std::fmt::Debug, Error>) -> String {
    match r {
        Err(Error::Ltx { reason, .. }) => reason,
        other => panic!("expected Error::Ltx, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Real Litestream files
// ---------------------------------------------------------------------------

#[test]
fn every_fixture_decodes() {
    for (level, name, bytes) in all_fixtures() {
        let (min, max) = ltx::parse_object_name(&name).unwrap();
        let (h, pages) = ltx::decode_all(&bytes, &name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.flags, HEADER_FLAG_NO_CHECKSUM, "{name}");
        assert_eq!(h.page_size, 4096, "{name}");
        assert_eq!((h.min_txid, h.max_txid), (min, max), "{name}");
        assert_eq!(h.is_snapshot(), level == 9 || min == 1, "{name}");
        assert_eq!(h.pre_apply_checksum, 0);
        assert!(
            h.wal_offset > 0 && h.wal_size > 0,
            "{name}: WAL fields filled in"
        );
        assert!(!pages.is_empty());
        if h.is_snapshot() {
            let pgnos: Vec<u32> = pages.iter().map(|p| p.0).collect();
            assert_eq!(pgnos, (1..=h.commit).collect::<Vec<_>>(), "{name}");
        }
        // The streaming verifier agrees and sees the real page index.
        let s = ltx::verify(&bytes[..], name.as_str()).unwrap();
        assert_eq!(s.header, h);
        assert_eq!(s.size, bytes.len() as u64);
        assert_eq!(s.index.len(), pages.len());
        assert_eq!(s.trailer.post_apply_checksum, 0);
        assert_ne!(s.trailer.file_checksum & ltx::CHECKSUM_FLAG, 0);
    }
}

#[test]
fn reencoded_fixture_keeps_header_and_pages() {
    for (_, name, bytes) in all_fixtures() {
        let (h, pages) = ltx::decode_all(&bytes, &name).unwrap();
        let ours = ltx::encode_to_vec(h, pages.iter().map(|(p, d)| (*p, d.as_slice()))).unwrap();
        // Header bytes are identical; payload bytes may differ (another LZ4
        // compressor), the decoded content may not.
        assert_eq!(
            ours[..ltx::HEADER_SIZE],
            bytes[..ltx::HEADER_SIZE],
            "{name}"
        );
        let (h2, pages2) = ltx::decode_all(&ours, &name).unwrap();
        assert_eq!(h2, h);
        assert_eq!(pages2, pages);
    }
}

/// Apply LTX files in order to an in-memory database image, truncating to each
/// file's commit, as a restore does.
fn restore(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut image = Vec::new();
    for (name, bytes) in files {
        let (h, pages) = ltx::decode_all(bytes, name).unwrap();
        let ps = h.page_size as usize;
        for (pgno, data) in pages {
            let off = (pgno as usize - 1) * ps;
            if image.len() < off + ps {
                image.resize(off + ps, 0);
            }
            image[off..off + ps].copy_from_slice(&data);
        }
        image.resize(h.commit as usize * ps, 0);
    }
    image
}

#[test]
fn fixture_restore_matches_expected_db() {
    let expected = std::fs::read(fixture_dir().join("expected.db")).unwrap();

    let mut files = vec![fixture(9, 1, 2)];
    files.extend((3..=7).map(|t| fixture(0, t, t)));
    let from_snapshot = restore(&files);
    assert_eq!(from_snapshot.len(), expected.len());
    assert!(
        from_snapshot == expected,
        "snapshot + L0 3..7 differs from expected.db"
    );

    let all_l0: Vec<_> = (1..=7).map(|t| fixture(0, t, t)).collect();
    let from_l0 = restore(&all_l0);
    assert!(from_l0 == expected, "L0 1..7 differs from expected.db");
}

// ---------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------

fn pages_for(page_size: u32, pgnos: &[u32], rng: &mut Rng, kind: &str) -> Vec<(u32, Vec<u8>)> {
    pgnos
        .iter()
        .map(|&p| {
            let mut d = vec![0u8; page_size as usize];
            match kind {
                "random" => rng.fill(&mut d),
                "zero" => {}
                _ => {
                    // Half text-like, half random.
                    for (i, b) in d.iter_mut().enumerate().take(page_size as usize / 2) {
                        *b = b"row data "[i % 9];
                    }
                    rng.fill(&mut d[page_size as usize / 2..]);
                }
            }
            (p, d)
        })
        .collect()
}

#[test]
fn round_trip_page_sizes_and_contents() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for page_size in [512u32, 4096, 65536] {
        for kind in ["random", "zero", "mixed"] {
            // Snapshot: every page 1..=commit.
            let commit = 5;
            let pages = pages_for(page_size, &[1, 2, 3, 4, 5], &mut rng, kind);
            let h = Header::new(page_size, commit, 1, 4, walsync::util::now_ms());
            let bytes = ltx::encode_to_vec(h, pages.clone()).unwrap();
            let (h2, got) = ltx::decode_all(&bytes, "snap").unwrap();
            assert_eq!(h2, h);
            assert!(h2.is_snapshot());
            assert_eq!(got, pages, "snapshot page size {page_size} {kind}");

            // Non-snapshot: a sparse set of pages.
            let pages = pages_for(page_size, &[2, 7, 9], &mut rng, kind);
            let h = Header {
                wal_offset: 32,
                wal_size: 3 * (24 + i64::from(page_size)),
                wal_salt1: 1,
                wal_salt2: 2,
                ..Header::new(page_size, 10, 5, 5, 1_700_000_000_000)
            };
            let bytes = ltx::encode_to_vec(h, pages.clone()).unwrap();
            let (h2, got) = ltx::decode_all(&bytes, "l0").unwrap();
            assert_eq!(h2, h);
            assert_eq!(got, pages, "segment page size {page_size} {kind}");
        }
    }
}

/// 16,385 pages of 64 KiB: about 20 s in a debug build, so opt-in
/// (`cargo test --release --test ltx -- --ignored`); the lock-page rules
/// themselves are unit-tested in `src/ltx/tests.rs`.
#[test]
#[ignore]
fn snapshot_skips_lock_page() {
    // Page size 65536: lock page 16385. A snapshot of 16386 pages holds all
    // but that one.
    let ps = 65536u32;
    let lock = ltx::lock_pgno(ps);
    assert_eq!(lock, 16385);
    let zero = vec![0u8; ps as usize];
    let h = Header::new(ps, lock + 1, 1, 1, 0);
    let mut enc = Encoder::new(Vec::new(), h).unwrap();
    for p in (1..=lock + 1).filter(|&p| p != lock) {
        enc.write_page(p, &zero).unwrap();
    }
    let (bytes, summary) = enc.finish().unwrap();
    assert_eq!(summary.index.len() as u32, lock);
    let s = ltx::verify(&bytes[..], "big").unwrap();
    assert_eq!(s, summary);
}

#[test]
fn encoder_streams_pages_out() {
    struct CountingWriter(Rc<Cell<usize>>);
    impl Write for CountingWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.set(self.0.get() + b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let n = Rc::new(Cell::new(0));
    let mut rng = Rng(7);
    let mut enc = Encoder::new(CountingWriter(n.clone()), Header::new(4096, 100, 1, 1, 0)).unwrap();
    assert_eq!(n.get(), ltx::HEADER_SIZE);
    let mut page = vec![0u8; 4096];
    for p in 1..=100 {
        rng.fill(&mut page);
        let before = n.get();
        enc.write_page(p, &page).unwrap();
        // An incompressible page went to the writer right away.
        assert!(n.get() >= before + 4096, "page {p} was buffered");
        assert_eq!(n.get() as u64, enc.bytes_written());
    }
    let (_, s) = enc.finish().unwrap();
    assert_eq!(s.size, n.get() as u64);
}

#[test]
fn encoder_rejects_bad_input() {
    let page = vec![0u8; 4096];
    let seg = Header::new(4096, 10, 5, 5, 0);
    let snap = Header::new(4096, 3, 1, 5, 0);

    assert!(ltx_reason(
        Encoder::new(
            Vec::new(),
            Header {
                page_size: 1000,
                ..seg
            }
        )
        .map(|_| ())
    )
    .contains("page size"));
    assert!(
        ltx_reason(Encoder::new(Vec::new(), Header { min_txid: 0, ..seg }).map(|_| ()))
            .contains("min txid")
    );
    assert!(
        ltx_reason(Encoder::new(Vec::new(), Header { min_txid: 6, ..seg }).map(|_| ()))
            .contains("greater than max")
    );
    assert!(
        ltx_reason(Encoder::new(Vec::new(), Header { flags: 0x4, ..seg }).map(|_| ()))
            .contains("flags")
    );

    let mut enc = Encoder::new(Vec::new(), seg).unwrap();
    assert!(ltx_reason(enc.write_page(1, &page[..100])).contains("page size"));
    assert!(ltx_reason(enc.write_page(0, &page)).contains("page number 0"));
    assert!(ltx_reason(enc.write_page(11, &page)).contains("beyond commit"));
    enc.write_page(4, &page).unwrap();
    assert!(ltx_reason(enc.write_page(4, &page)).contains("strictly increasing"));
    assert!(ltx_reason(enc.write_page(3, &page)).contains("strictly increasing"));

    let big = Header::new(4096, 300_000, 2, 2, 0);
    let mut enc = Encoder::new(Vec::new(), big).unwrap();
    assert!(ltx_reason(enc.write_page(ltx::lock_pgno(4096), &page)).contains("lock page"));

    let mut enc = Encoder::new(Vec::new(), snap).unwrap();
    assert!(ltx_reason(enc.write_page(2, &page)).contains("snapshot missing page 1"));
    enc.write_page(1, &page).unwrap();
    assert!(ltx_reason(enc.write_page(3, &page)).contains("snapshot missing page 2"));
    enc.write_page(2, &page).unwrap();
    assert!(ltx_reason(enc.finish()).contains("snapshot missing page 3"));
}

// ---------------------------------------------------------------------------
// Hand-built files for the rejection table
// ---------------------------------------------------------------------------

/// One page record as it will be stored.
struct RawPage {
    pgno: u32,
    flags: u16,
    /// Bytes after the page header (and size field, for the block form).
    stored: Vec<u8>,
    /// Bytes the checksum covers (the decompressed page).
    hashed: Vec<u8>,
    /// Override of the block-form size field.
    size_field: Option<u32>,
}

fn block(pgno: u32, data: &[u8]) -> RawPage {
    RawPage {
        pgno,
        flags: ltx::PAGE_FLAG_LZ4_BLOCK,
        stored: lz4_flex::block::compress(data),
        hashed: data.to_vec(),
        size_field: None,
    }
}

fn frame(pgno: u32, data: &[u8]) -> RawPage {
    let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
    enc.write_all(data).unwrap();
    RawPage {
        pgno,
        flags: ltx::PAGE_FLAG_LZ4_FRAME,
        stored: enc.finish().unwrap(),
        hashed: data.to_vec(),
        size_field: None,
    }
}

#[derive(Default)]
struct Tweak {
    /// Replace the page index entries (pgno, offset, size).
    index: Option<Vec<(u64, u64, u64)>>,
    /// Added to the index length field.
    index_len_delta: i64,
    post_apply: u64,
}

fn uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Build a file byte by byte with a correct file checksum, so structural
/// checks (not the checksum) are what a decoder trips over.
fn build(header: [u8; 100], pages: &[RawPage], t: Tweak) -> Vec<u8> {
    let mut out = Vec::new();
    let mut hash = CRC64.digest();
    out.extend_from_slice(&header);
    hash.update(&header);
    let mut index = Vec::new();
    for p in pages {
        let off = out.len() as u64;
        let mut ph = p.pgno.to_be_bytes().to_vec();
        ph.extend_from_slice(&p.flags.to_be_bytes());
        if p.flags & ltx::PAGE_FLAG_LZ4_BLOCK != 0 {
            let n = p.size_field.unwrap_or(p.stored.len() as u32);
            ph.extend_from_slice(&n.to_be_bytes());
        }
        hash.update(&ph);
        out.extend_from_slice(&ph);
        out.extend_from_slice(&p.stored);
        hash.update(&p.hashed);
        index.push((u64::from(p.pgno), off, out.len() as u64 - off));
    }
    out.extend_from_slice(&[0; 6]);
    hash.update(&[0; 6]);
    let mut idx = Vec::new();
    for (a, b, c) in t.index.unwrap_or(index) {
        uvarint(&mut idx, a);
        uvarint(&mut idx, b);
        uvarint(&mut idx, c);
    }
    uvarint(&mut idx, 0);
    let len = (idx.len() as i64 + t.index_len_delta) as u64;
    idx.extend_from_slice(&len.to_be_bytes());
    hash.update(&idx);
    out.extend_from_slice(&idx);
    hash.update(&t.post_apply.to_be_bytes());
    out.extend_from_slice(&t.post_apply.to_be_bytes());
    out.extend_from_slice(&(ltx::CHECKSUM_FLAG | hash.finalize()).to_be_bytes());
    out
}

const PS: usize = 512;

fn seg_header() -> Header {
    Header::new(PS as u32, 10, 4, 4, 1_700_000_000_000)
}

fn pg(n: u8) -> Vec<u8> {
    let mut d = vec![n; PS];
    d[..8].copy_from_slice(b"pagedata");
    d
}

fn decode_err(bytes: &[u8]) -> String {
    ltx_reason(ltx::decode_all(bytes, "bad.ltx"))
}

#[test]
fn builder_matches_encoder() {
    // The hand builder is only useful if it is right: a plain build decodes
    // and equals what the encoder writes.
    let h = seg_header();
    let pages = [block(2, &pg(2)), block(3, &pg(3))];
    let built = build(h.encode(), &pages, Tweak::default());
    let ours = ltx::encode_to_vec(h, [(2, pg(2)), (3, pg(3))]).unwrap();
    assert_eq!(built, ours);
}

#[test]
fn legacy_frame_pages_decode() {
    let h = seg_header();
    let bytes = build(
        h.encode(),
        &[frame(2, &pg(2)), block(5, &pg(5)), frame(9, &pg(9))],
        Tweak::default(),
    );
    let (_, pages) = ltx::decode_all(&bytes, "legacy").unwrap();
    assert_eq!(pages, vec![(2, pg(2)), (5, pg(5)), (9, pg(9))]);
}

#[test]
fn rejection_table() {
    let good_h = seg_header();
    let good = build(
        good_h.encode(),
        &[block(2, &pg(2)), block(3, &pg(3))],
        Tweak::default(),
    );
    ltx::decode_all(&good, "good").unwrap();

    let with_header = |f: &dyn Fn(&mut [u8; 100])| {
        let mut b = good.clone();
        let mut h = [0u8; 100];
        h.copy_from_slice(&b[..100]);
        f(&mut h);
        b[..100].copy_from_slice(&h);
        b
    };
    let pages = |h: Header, p: Vec<RawPage>| build(h.encode(), &p, Tweak::default());

    let big = vec![7u8; PS + 1];
    let small = vec![7u8; PS - 1];
    let over_size = RawPage {
        size_field: Some(u32::MAX),
        ..block(2, &pg(2))
    };
    let mut bad_flags = block(2, &pg(2));
    bad_flags.flags = 0x0002;
    let zero_pgno = RawPage {
        pgno: 0,
        ..block(2, &pg(2))
    };
    let lock_h = Header::new(65536, 20_000, 3, 3, 0);
    let lock_page = block(ltx::lock_pgno(65536), &vec![0u8; 65536]);
    let snap = Header::new(PS as u32, 3, 1, 2, 0);
    let entries = |v: &[(u64, u64, u64)]| Tweak {
        index: Some(v.to_vec()),
        ..Tweak::default()
    };
    let real_idx: Vec<(u64, u64, u64)> = ltx::verify(&good[..], "g")
        .unwrap()
        .index
        .iter()
        .map(|e| (u64::from(e.pgno), e.offset, e.size))
        .collect();
    let (i0, i1) = (real_idx[0], real_idx[1]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "bad magic",
            with_header(&|h| h[0..4].copy_from_slice(b"LTX2")),
            "bad magic",
        ),
        (
            "page size 4097",
            with_header(&|h| h[8..12].copy_from_slice(&4097u32.to_be_bytes())),
            "bad page size",
        ),
        (
            "page size 256",
            with_header(&|h| h[8..12].copy_from_slice(&256u32.to_be_bytes())),
            "bad page size",
        ),
        (
            "page size 128k",
            with_header(&|h| h[8..12].copy_from_slice(&131072u32.to_be_bytes())),
            "bad page size",
        ),
        (
            "min txid 0",
            with_header(&|h| h[16..24].copy_from_slice(&0u64.to_be_bytes())),
            "min txid is 0",
        ),
        (
            "min > max",
            with_header(&|h| h[16..24].copy_from_slice(&9u64.to_be_bytes())),
            "greater than max txid",
        ),
        (
            "unknown flag 0x1",
            with_header(&|h| h[4..8].copy_from_slice(&3u32.to_be_bytes())),
            "unknown header flags",
        ),
        (
            "unknown flag 0x80000000",
            with_header(&|h| h[4] = 0x80),
            "unknown header flags",
        ),
        (
            "reserved bytes",
            with_header(&|h| h[99] = 1),
            "reserved header bytes",
        ),
        (
            "pre-apply with NoChecksum",
            with_header(&|h| h[47] = 1),
            "pre-apply checksum",
        ),
        (
            "WAL salt without offset",
            with_header(&|h| h[64] = 1),
            "WAL salts",
        ),
        (
            "negative WAL size",
            with_header(&|h| h[56] = 0x80),
            "negative WAL size",
        ),
        (
            "pgno repeated",
            pages(good_h, vec![block(3, &pg(3)), block(3, &pg(3))]),
            "not strictly increasing",
        ),
        (
            "pgno decreasing",
            pages(good_h, vec![block(5, &pg(5)), block(3, &pg(3))]),
            "not strictly increasing",
        ),
        (
            "pgno > commit",
            pages(good_h, vec![block(11, &pg(1))]),
            "beyond commit",
        ),
        (
            "lock page present",
            pages(lock_h, vec![lock_page]),
            "lock page",
        ),
        (
            "pgno 0 with flags",
            pages(good_h, vec![zero_pgno]),
            "page number 0",
        ),
        (
            "unknown page flags",
            pages(good_h, vec![bad_flags]),
            "unknown page flags",
        ),
        (
            "block decompresses too big",
            pages(
                good_h,
                vec![RawPage {
                    hashed: big.clone(),
                    ..block(2, &big)
                }],
            ),
            "decompress",
        ),
        (
            "block decompresses too small",
            pages(
                good_h,
                vec![RawPage {
                    hashed: small.clone(),
                    ..block(2, &small)
                }],
            ),
            "decompressed size",
        ),
        (
            "frame decompresses too big",
            pages(good_h, vec![frame(2, &big)]),
            "more than page size",
        ),
        (
            "frame decompresses too small",
            pages(good_h, vec![frame(2, &small)]),
            "decompressed size",
        ),
        (
            "compressed size huge",
            pages(good_h, vec![over_size]),
            "exceeds the maximum",
        ),
        (
            "garbage LZ4 block",
            pages(
                good_h,
                vec![RawPage {
                    stored: vec![0xff; 40],
                    ..block(2, &pg(2))
                }],
            ),
            "LZ4 block",
        ),
        (
            "garbage LZ4 frame",
            pages(
                good_h,
                vec![RawPage {
                    stored: vec![0xff; 40],
                    ..frame(2, &pg(2))
                }],
            ),
            "LZ4 frame",
        ),
        (
            "snapshot missing first page",
            pages(snap, vec![block(2, &pg(2)), block(3, &pg(3))]),
            "snapshot missing page 1",
        ),
        (
            "snapshot missing middle page",
            pages(snap, vec![block(1, &pg(1)), block(3, &pg(3))]),
            "snapshot missing page 2",
        ),
        (
            "snapshot missing last page",
            pages(snap, vec![block(1, &pg(1)), block(2, &pg(2))]),
            "snapshot missing page 3",
        ),
        (
            "index wrong offset",
            build(
                good_h.encode(),
                &[block(2, &pg(2)), block(3, &pg(3))],
                entries(&[i0, (i1.0, i1.1 + 1, i1.2)]),
            ),
            "page index entry 1",
        ),
        (
            "index wrong size",
            build(
                good_h.encode(),
                &[block(2, &pg(2)), block(3, &pg(3))],
                entries(&[(i0.0, i0.1, i0.2 - 1), i1]),
            ),
            "page index entry 0",
        ),
        (
            "index wrong pgno",
            build(
                good_h.encode(),
                &[block(2, &pg(2)), block(3, &pg(3))],
                entries(&[i0, (4, i1.1, i1.2)]),
            ),
            "page index entry 1",
        ),
        (
            "index too short",
            build(
                good_h.encode(),
                &[block(2, &pg(2)), block(3, &pg(3))],
                entries(&[i0]),
            ),
            "index ends after 1 entries",
        ),
        (
            "index too long",
            build(
                good_h.encode(),
                &[block(2, &pg(2)), block(3, &pg(3))],
                entries(&[i0, i1, (5, 0, 0)]),
            ),
            "more entries",
        ),
        (
            "index length field",
            build(
                good_h.encode(),
                &[block(2, &pg(2)), block(3, &pg(3))],
                Tweak {
                    index_len_delta: 1,
                    ..Tweak::default()
                },
            ),
            "index length",
        ),
        (
            "post-apply with NoChecksum",
            build(
                good_h.encode(),
                &[block(2, &pg(2))],
                Tweak {
                    post_apply: ltx::CHECKSUM_FLAG | 5,
                    ..Tweak::default()
                },
            ),
            "post-apply checksum",
        ),
        (
            "trailing garbage",
            [good.clone(), b"junk".to_vec()].concat(),
            "trailing bytes",
        ),
        (
            "trailing zero byte",
            [good.clone(), vec![0]].concat(),
            "trailing bytes",
        ),
        (
            "checksum: timestamp flipped",
            {
                let mut b = good.clone();
                b[39] ^= 1;
                b
            },
            "checksum mismatch",
        ),
        (
            "checksum: node id flipped",
            {
                let mut b = good.clone();
                b[79] ^= 0x40;
                b
            },
            "checksum mismatch",
        ),
        (
            "checksum: stored checksum flipped",
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 1] ^= 1;
                b
            },
            "checksum mismatch",
        ),
        (
            "checksum: flag bit cleared",
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 8] &= 0x7f;
                b
            },
            "checksum mismatch",
        ),
        (
            "checksum: post-apply flipped",
            {
                let mut b = good.clone();
                let n = b.len();
                b[n - 9] ^= 1;
                b
            },
            "checksum mismatch",
        ),
        ("empty file", Vec::new(), "truncated: header"),
    ];
    for (what, bytes, needle) in cases {
        let reason = decode_err(&bytes);
        assert!(
            reason.contains(needle),
            "{what}: reason {reason:?} should contain {needle:?}"
        );
        // The streaming verifier agrees.
        let r2 = ltx_reason(ltx::verify(&bytes[..], "bad.ltx"));
        assert_eq!(r2, reason, "{what}");
    }
}

#[test]
fn payload_byte_flip_is_a_checksum_error() {
    // An incompressible page is stored as LZ4 literals: flipping one changes
    // the decompressed page, which only the file checksum can notice.
    let mut rng = Rng(99);
    let mut d = vec![0u8; PS];
    rng.fill(&mut d);
    let good = ltx::encode_to_vec(seg_header(), [(2, d)]).unwrap();
    let mid = ltx::HEADER_SIZE + 10 + PS / 2;
    let mut b = good.clone();
    b[mid] ^= 0x10;
    assert!(decode_err(&b).contains("checksum mismatch"));
}

#[test]
fn every_single_byte_flip_and_truncation_is_rejected() {
    let (name, good) = fixture(0, 3, 3);
    let original = ltx::decode_all(&good, &name).unwrap();
    let mut equivalent = 0;
    for i in 0..good.len() {
        let mut b = good.clone();
        b[i] ^= 0x01;
        match ltx::decode_all(&b, &name) {
            Err(Error::Ltx { .. }) => {}
            // The checksum covers the *decompressed* pages (as Litestream's
            // does), so a flip inside an LZ4 payload that still decodes to
            // the very same page (e.g. a match offset inside a run of zeros)
            // is harmless and undetectable. Anything else must be refused.
            Ok(decoded) => {
                assert!(
                    decoded == original,
                    "flip at {i} accepted with different content"
                );
                assert!(i >= ltx::HEADER_SIZE, "flip at {i} in the header accepted");
                equivalent += 1;
            }
            Err(e) => panic!("flip at {i}: unexpected error kind {e}"),
        }
    }
    assert!(
        equivalent * 20 < good.len(),
        "{equivalent} flips decoded to the same content"
    );
    for len in 0..good.len() {
        let reason = decode_err(&good[..len]);
        assert!(
            reason.contains("truncated")
                || reason.contains("LZ4")
                || reason.contains("decompressed size"),
            "truncated to {len}: {reason}"
        );
    }
    // Named offsets: header, page header, size field, payload, index, trailer.
    for (len, needle) in [
        (50, "truncated: header"),
        (100, "truncated: page header"),
        (103, "truncated: page header"),
        (106, "truncated: page size field"),
        (200, "truncated: compressed page"),
        (good.len() - 16, "truncated: trailer"),
        (good.len() - 1, "truncated: trailer"),
        (good.len() - 20, "truncated: page index length"),
    ] {
        let reason = decode_err(&good[..len]);
        assert!(
            reason.contains(needle),
            "truncated to {len}: {reason:?}, expected {needle:?}"
        );
    }
}

#[test]
fn fuzz_flips_and_truncations_never_panic() {
    let mut rng = Rng(0x5eed);
    let (_, snap) = fixture(9, 1, 2);
    let legacy = build(
        seg_header().encode(),
        &[frame(2, &pg(2)), block(3, &pg(3)), frame(7, &pg(7))],
        Tweak::default(),
    );
    let bases = [snap, legacy, fixture(0, 7, 7).1];
    let decoded: Vec<_> = bases
        .iter()
        .map(|b| ltx::decode_all(b, "base").unwrap())
        .collect();
    let mut accepted = 0;
    for i in 0..10_000 {
        let base = &bases[i % bases.len()];
        let mut b = base.clone();
        for _ in 0..1 + rng.below(4) {
            let pos = rng.below(b.len());
            b[pos] ^= 1 + rng.below(255) as u8;
        }
        if rng.below(3) == 0 {
            let len = rng.below(b.len() + 1);
            b.truncate(len);
        }
        if rng.below(8) == 0 {
            b.extend_from_slice(&[0u8; 3]);
        }
        match ltx::decode_all(&b, "fuzz") {
            // Only an LZ4-equivalent payload change may pass (see above).
            Ok(d) => {
                assert!(
                    d == decoded[i % bases.len()],
                    "iteration {i}: corrupt content accepted"
                );
                accepted += 1;
            }
            Err(Error::Ltx { .. }) => {}
            Err(e) => panic!("iteration {i}: unexpected error kind {e:?}"),
        }
    }
    assert!(
        accepted < 100,
        "{accepted} of 10000 mutations decoded to the same content"
    );
}

#[test]
fn decoder_streams_and_reports_index() {
    let (name, bytes) = fixture(0, 7, 7);
    let mut dec = Decoder::new(&bytes[..], name.as_str()).unwrap();
    assert_eq!(dec.header().max_txid, 7);
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while let Some(pgno) = dec.next_page(&mut buf).unwrap() {
        assert!(pgno >= 1);
        n += 1;
    }
    assert_eq!(dec.index().len(), n);
    assert_eq!(dec.next_page(&mut buf).unwrap(), None);
    let s = dec.finish().unwrap();
    assert_eq!(s.size, bytes.len() as u64);
    // Wrong-size buffer is an error, not a panic.
    let mut dec = Decoder::new(&bytes[..], name.as_str()).unwrap();
    assert!(ltx_reason(dec.next_page(&mut [0u8; 10])).contains("page buffer"));
}
