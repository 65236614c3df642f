//! Fuzz the LTX encoder against the decoder: arbitrary headers and pages
//! (compressible and not) are encoded; whatever the encoder accepts must
//! decode to exactly the same header and pages, and flipping any one byte of
//! the encoded file must make the decoder fail or decode the very same
//! content (the file checksum covers header and decompressed pages).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use walsync::ltx::{self, Header};

#[derive(Arbitrary, Debug)]
struct Input {
    page_size_log2: u8,
    commit: u32,
    min_txid: u64,
    span: u8,
    timestamp_ms: i64,
    pages: Vec<(u16, u8, Vec<u8>)>,
    flip: u16,
}

fuzz_target!(|input: Input| {
    let page_size = 512u32 << (input.page_size_log2 % 8);
    let min = input.min_txid;
    let max = min.saturating_add(u64::from(input.span));
    let header = Header::new(page_size, input.commit, min, max, input.timestamp_ms);
    // Pages: fill byte `fill`, then the given bytes (a compressible tail).
    let mut pages: Vec<(u32, Vec<u8>)> = input
        .pages
        .iter()
        .take(16)
        .map(|(pgno, fill, bytes)| {
            let mut p = vec![*fill; page_size as usize];
            let n = bytes.len().min(p.len());
            p[..n].copy_from_slice(&bytes[..n]);
            (u32::from(*pgno), p)
        })
        .collect();
    pages.sort_by_key(|(pgno, _)| *pgno);
    pages.dedup_by_key(|(pgno, _)| *pgno);
    let Ok(bytes) = ltx::encode_to_vec(header, pages.iter().map(|(n, p)| (*n, p.as_slice())))
    else {
        return;
    };
    let (h, decoded) =
        ltx::decode_all(&bytes, "roundtrip.ltx").expect("encoder output must decode");
    assert_eq!(h, header);
    assert_eq!(decoded, pages);
    // Flipping a byte must not change what is decoded: either the decoder
    // fails, or the file still means exactly the same (a flip inside an LZ4
    // match offset over a run of equal bytes can decode to the same page;
    // the checksum covers the decompressed pages, so that is no loss).
    let mut bad = bytes.clone();
    let at = usize::from(input.flip) % bad.len();
    bad[at] ^= 0x01;
    if let Ok((h2, p2)) = ltx::decode_all(&bad, "flipped.ltx") {
        assert!(
            h2 == header && p2 == pages,
            "a flipped byte at offset {at} of {} decoded to different content",
            bad.len()
        );
    }
});
