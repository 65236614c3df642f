//! Reading one LTX file in pieces: its tail and page index first, then page
//! records decoded independently, checksums combined afterwards.
//!
//! Why a file of its own: a restore of a large snapshot is bound by one
//! thread decoding one stream ([`Decoder`]). The format allows more: every
//! page is its own LZ4 block (or, in the legacy form, its own LZ4 frame),
//! and the page index at the end of the file gives each page record's
//! offset and size. So the restorer reads the tail, checks the index here
//! ([`parse_index`]: the records must tile the page block exactly, in
//! strictly increasing page order, every page of a snapshot present), then
//! fetches ranges of the page block in parallel and decodes each record on
//! its own ([`decode_record`]). The file checksum is one CRC-64 over the
//! whole file; each piece computes the CRC of its part and
//! [`crc64_combine`] joins them in file order, so the check is exactly the
//! streaming decoder's.

use super::*;

/// A running CRC-64 (the file checksum's) over one part of a file.
pub type Crc64Digest = crc::Digest<'static, u64, crc::Table<16>>;

/// A fresh CRC-64 digest (Go's ISO table, as the file checksum).
pub fn crc64_digest() -> Crc64Digest {
    CRC64_STATIC.digest()
}

/// Bytes after the page index: its u64 length and the trailer.
pub const TAIL_SIZE: u64 = 8 + TRAILER_SIZE as u64;

/// The CRC-64 of `A ‖ B` from `crc(A)`, `crc(B)` and the length of `B`
/// (zlib's `crc32_combine` method over GF(2), for this reflected CRC with
/// all-ones init and xor-out).
pub fn crc64_combine(crc1: u64, crc2: u64, len2: u64) -> u64 {
    fn times(mat: &[u64; 64], mut vec: u64) -> u64 {
        let mut sum = 0u64;
        let mut i = 0;
        while vec != 0 {
            if vec & 1 != 0 {
                sum ^= mat[i];
            }
            vec >>= 1;
            i += 1;
        }
        sum
    }
    fn square(out: &mut [u64; 64], mat: &[u64; 64]) {
        for (n, o) in out.iter_mut().enumerate() {
            *o = times(mat, mat[n]);
        }
    }
    if len2 == 0 {
        return crc1;
    }
    let mut crc1 = crc1;
    let mut len2 = len2;
    let mut even = [0u64; 64];
    let mut odd = [0u64; 64];
    // The operator for one zero bit.
    odd[0] = 0xD800_0000_0000_0000;
    let mut row = 1u64;
    for o in odd.iter_mut().skip(1) {
        *o = row;
        row <<= 1;
    }
    square(&mut even, &odd); // two zero bits
    square(&mut odd, &even); // four zero bits
    loop {
        square(&mut even, &odd); // first pass: one zero byte
        if len2 & 1 != 0 {
            crc1 = times(&even, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
        square(&mut odd, &even);
        if len2 & 1 != 0 {
            crc1 = times(&odd, crc1);
        }
        len2 >>= 1;
        if len2 == 0 {
            break;
        }
    }
    crc1 ^ crc2
}

/// From the last [`TAIL_SIZE`] bytes of a file: the page index length
/// (terminator included) and the trailer.
pub fn parse_tail(last: &[u8]) -> std::result::Result<(u64, Trailer), String> {
    if last.len() != TAIL_SIZE as usize {
        return Err(format!("tail is {} bytes, need {TAIL_SIZE}", last.len()));
    }
    Ok((
        be_u64(&last[0..8]),
        Trailer {
            post_apply_checksum: be_u64(&last[8..16]),
            file_checksum: be_u64(&last[16..24]),
        },
    ))
}

/// Largest page record (page header, size field, payload) the decoder
/// accepts for `page_size`.
pub fn max_record_size(page_size: u32) -> u64 {
    (PAGE_HEADER_SIZE + 4 + max_compressed_page_size(page_size)) as u64
}

/// Parse and check the page index `index` (its bytes, terminator included,
/// without the u64 length) of a file with header `h` whose page block ends
/// (the zero page header starts) at `block_end`. The entries must tile
/// `HEADER_SIZE..block_end` exactly, page numbers strictly increasing, none
/// the lock page or past the commit, each no larger than a page record can
/// be, and a snapshot must hold every page. Errors are reasons, for
/// [`Error::ltx`].
pub fn parse_index(
    index: &[u8],
    h: &Header,
    block_end: u64,
) -> std::result::Result<Vec<PageIndexEntry>, String> {
    let mut pos = 0usize;
    let mut varint = |what: &str| -> std::result::Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = index.get(pos) else {
                return Err(format!("page index: truncated {what} varint"));
            };
            pos += 1;
            if i == 9 && byte > 1 {
                return Err(format!("page index: {what} varint overflows 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Ok(v);
            }
        }
        Err(format!("page index: {what} varint longer than 10 bytes"))
    };
    let max_size = max_record_size(h.page_size);
    let mut out: Vec<PageIndexEntry> = Vec::new();
    let mut next_offset = HEADER_SIZE as u64;
    loop {
        let pgno = varint("pgno")?;
        if pgno == 0 {
            break;
        }
        let offset = varint("offset")?;
        let size = varint("size")?;
        let i = out.len();
        let pgno = u32::try_from(pgno)
            .map_err(|_| format!("page index entry {i}: page number {pgno} too large"))?;
        if pgno > h.commit || pgno == h.lock_pgno() {
            return Err(format!(
                "page index entry {i}: page {pgno} (commit {}, lock page {})",
                h.commit,
                h.lock_pgno()
            ));
        }
        if out.last().is_some_and(|p| p.pgno >= pgno) {
            return Err(format!(
                "page index: page numbers not strictly increasing at entry {i} (page {pgno})"
            ));
        }
        if offset != next_offset || size <= PAGE_HEADER_SIZE as u64 || size > max_size {
            return Err(format!(
                "page index entry {i} (page {pgno}): offset {offset}, size {size} do not follow the previous record ending at {next_offset}"
            ));
        }
        next_offset = offset + size;
        out.push(PageIndexEntry { pgno, offset, size });
    }
    if pos != index.len() {
        return Err(format!(
            "page index length says {} bytes, the index ends after {pos}",
            index.len()
        ));
    }
    if next_offset != block_end {
        return Err(format!(
            "page index covers the page block up to offset {next_offset}, the block ends at {block_end}"
        ));
    }
    if h.is_snapshot() {
        let last = h.last_snapshot_pgno();
        let want = u64::from(last) - u64::from(h.lock_pgno() <= last);
        if out.len() as u64 != want || out.last().map_or(0, |p| p.pgno) != last {
            return Err(format!(
                "snapshot page index has {} pages, commit {} needs {want}",
                out.len(),
                h.commit
            ));
        }
    }
    Ok(out)
}

/// Decode one page record `rec` (exactly the bytes of index entry `e`)
/// into `buf` (one page), adding what the file checksum covers to `hash`;
/// returns the number of bytes hashed (for [`crc64_combine`]). Errors are
/// reasons, for [`Error::ltx`].
pub fn decode_record(
    rec: &[u8],
    e: &PageIndexEntry,
    buf: &mut [u8],
    hash: &mut Crc64Digest,
) -> std::result::Result<u64, String> {
    let page_size = buf.len();
    let pgno = e.pgno;
    if rec.len() as u64 != e.size || rec.len() <= PAGE_HEADER_SIZE {
        return Err(format!("page {pgno}: record of {} bytes", rec.len()));
    }
    let got = be_u32(&rec[0..4]);
    let flags = u16::from_be_bytes([rec[4], rec[5]]);
    if got != pgno {
        return Err(format!(
            "page header at offset {} says page {got}, the page index says {pgno}",
            e.offset
        ));
    }
    hash.update(&rec[..PAGE_HEADER_SIZE]);
    let mut hashed = (PAGE_HEADER_SIZE + page_size) as u64;
    match flags {
        PAGE_FLAG_LZ4_BLOCK => {
            let Some(sz) = rec.get(PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + 4) else {
                return Err(format!("page {pgno}: record too short for its size field"));
            };
            hash.update(sz);
            hashed += 4;
            let n = be_u32(sz) as usize;
            let payload = &rec[PAGE_HEADER_SIZE + 4..];
            if payload.len() != n {
                return Err(format!(
                    "page {pgno}: compressed size field {n}, the record holds {}",
                    payload.len()
                ));
            }
            let got = lz4_flex::block::decompress_into(payload, buf).map_err(|e| {
                format!("page {pgno}: LZ4 block does not decompress to {page_size} bytes: {e}")
            })?;
            if got != page_size {
                return Err(format!(
                    "page {pgno}: decompressed size {got}, page size is {page_size}"
                ));
            }
        }
        PAGE_FLAG_LZ4_FRAME => {
            let mut cur = io::Cursor::new(&rec[PAGE_HEADER_SIZE..]);
            let mut fr = lz4_flex::frame::FrameDecoder::new(&mut cur);
            let mut filled = 0usize;
            while filled < page_size {
                match fr.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("page {pgno}: bad LZ4 frame: {e}")),
                }
            }
            let mut extra = [0u8; 1];
            let more = fr
                .read(&mut extra)
                .map_err(|e| format!("page {pgno}: bad LZ4 frame: {e}"))?;
            drop(fr);
            if filled != page_size || more != 0 {
                return Err(format!(
                    "page {pgno}: LZ4 frame does not hold exactly one page of {page_size} bytes"
                ));
            }
            if cur.position() as usize != rec.len() - PAGE_HEADER_SIZE {
                return Err(format!(
                    "page {pgno}: LZ4 frame ends before its record (offset {})",
                    e.offset
                ));
            }
        }
        f => return Err(format!("page {pgno}: unknown page flags 0x{f:04x}")),
    }
    hash.update(buf);
    Ok(hashed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_matches_one_pass() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = CRC64.checksum(&data);
        for cut in [0usize, 1, 7, 100, 4096, 9_999, 10_000] {
            let (a, b) = data.split_at(cut);
            let c = crc64_combine(CRC64.checksum(a), CRC64.checksum(b), b.len() as u64);
            assert_eq!(c, whole, "cut at {cut}");
        }
    }

    /// Tail, index and records decoded piece by piece give the streaming
    /// decoder's pages and the stored file checksum.
    #[test]
    fn pieces_verify_like_the_stream() {
        let ps = 1024u32;
        let pages: Vec<(u32, Vec<u8>)> = (1..=40u32)
            .map(|p| (p, (0..ps).map(|i| (i * p % 251) as u8).collect()))
            .collect();
        let h = Header::new(ps, 40, 1, 5, 1_000);
        let file = encode_to_vec(h, pages.iter().map(|(p, b)| (*p, b.as_slice()))).unwrap();
        let n = file.len() as u64;
        let (index_len, trailer) = parse_tail(&file[(n - TAIL_SIZE) as usize..]).unwrap();
        let index_start = n - TAIL_SIZE - index_len;
        let block_end = index_start - PAGE_HEADER_SIZE as u64;
        let index = &file[index_start as usize..(index_start + index_len) as usize];
        let entries = parse_index(index, &h, block_end).unwrap();
        assert_eq!(entries.len(), 40);
        let mut crc = CRC64.checksum(&file[..HEADER_SIZE]);
        let mut buf = vec![0u8; ps as usize];
        for (e, (p, want)) in entries.iter().zip(&pages) {
            let mut d = crc64_digest();
            let rec = &file[e.offset as usize..(e.offset + e.size) as usize];
            let hashed = decode_record(rec, e, &mut buf, &mut d).unwrap();
            assert_eq!((e.pgno, &buf), (*p, want));
            assert_eq!(hashed, u64::from(ps) + 10);
            crc = crc64_combine(crc, d.finalize(), hashed);
        }
        let rest = &file[block_end as usize..(n - TRAILER_SIZE as u64 + 8) as usize];
        crc = crc64_combine(crc, CRC64.checksum(rest), rest.len() as u64);
        assert_eq!(CHECKSUM_FLAG | crc, trailer.file_checksum);
        // A record with a flipped payload byte fails or changes the checksum.
        let e = entries[3];
        let mut rec = file[e.offset as usize..(e.offset + e.size) as usize].to_vec();
        rec[12] ^= 0x40;
        let mut d = crc64_digest();
        let r = decode_record(&rec, &e, &mut buf, &mut d);
        assert!(r.is_err() || buf != pages[3].1);
        // An index that skips a page of a snapshot is refused.
        let snap = Header::new(ps, 41, 1, 1, 1_000);
        let err = parse_index(index, &snap, block_end).unwrap_err();
        assert!(err.contains("snapshot page index has 40 pages"), "{err}");
        let err = parse_index(index, &h, block_end + 1).unwrap_err();
        assert!(err.contains("block ends at"), "{err}");
    }
}
