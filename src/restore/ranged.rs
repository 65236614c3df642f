//! One large object restored by parallel ranged GETs, its pages decoded in
//! parallel and written in place.
//!
//! Why a file of its own: a large database restores mostly from one
//! snapshot object, and fetching and decoding it as one stream runs on one
//! connection and one core. Here the object's tail (page index, trailer)
//! is read first, the page block is cut into ranges of
//! [`RestoreOptions::range_size`] bytes fetched by `--parallel` threads, and
//! each thread decodes the page records lying wholly in its range
//! ([`ltx::decode_record`]: every page is its own LZ4 block or frame) and
//! writes them with `pwrite` at their offset in the temp file. A record cut
//! by a range boundary is joined and decoded by the calling thread. Each
//! piece returns the CRC-64 of the bytes it covered; combined in file order
//! ([`ltx::crc64_combine`]) they must equal the trailer's file checksum, and
//! the index must tile the page block exactly ([`ltx::parse_index`]), so
//! the checks are the streaming decoder's. The object's `walsync-sha256`
//! metadata (a hash of the whole object, which cannot be computed in
//! parallel) is not checked for ranged objects; the LTX checksum covers
//! every page.
//!
//! Memory: one range per thread (read into a buffer that may grow to twice
//! its size: 147 MB peak RSS measured with 8 threads) plus a write buffer,
//! the tail read, and the page index (16 bytes per page of the object),
//! whatever the object size.
//! Pages are written before the file checksum is known to match; the temp
//! file is only installed after every object verified, so a corrupt object
//! fails the restore and leaves nothing.

use super::*;
use crate::ltx::{PageIndexEntry, HEADER_SIZE, PAGE_HEADER_SIZE, TAIL_SIZE};

/// Default size of one ranged GET of a large object.
pub const RANGE_SIZE: u64 = 8 << 20;
/// Objects at least this large are fetched by parallel ranged GETs.
pub const RANGED_THRESHOLD: u64 = 16 << 20;
/// Smallest range: a page record (≤ 64 KiB + a little) must never span
/// more than a few ranges.
const MIN_RANGE: u64 = 128 << 10;
/// Consecutive pages are written with one `pwrite` of up to this many bytes.
const WRITE_BATCH: usize = 1 << 20;

fn tail_len(size: u64, range: u64) -> u64 {
    range.min(size.saturating_sub(HEADER_SIZE as u64))
}

/// GET requests [`Applier::apply_ranged`] sends for an object of `size`
/// bytes: the header, the tail, one per range of the rest of the page
/// block (one more, not counted here, when the page index is larger than
/// a range).
pub fn ranged_gets(size: u64, range: u64) -> u64 {
    let range = range.max(MIN_RANGE);
    let rest = size.saturating_sub(tail_len(size, range) + HEADER_SIZE as u64);
    2 + rest.div_ceil(range)
}

/// One contiguous part of the page block and where its bytes come from.
struct Piece {
    start: u64,
    end: u64,
    /// Fetched with a ranged GET (else cut from the tail read).
    fetch: bool,
}

/// What a piece's thread hands back.
#[derive(Default)]
struct PieceOut {
    /// Bytes before the first record starting in the piece (the end of a
    /// record begun earlier).
    head: Vec<u8>,
    /// The start of a record that continues in the next piece, and its
    /// index entry.
    tail: Option<(usize, Vec<u8>)>,
    crc: u64,
    hashed: u64,
}

impl Applier<'_> {
    /// Fetch, verify and apply the large object `o` (see the module docs).
    pub(super) fn apply_ranged(
        &mut self,
        storage: &dyn Storage,
        o: &ReplicaObject,
        name: &str,
        opts: &RestoreOptions,
        progress: &mut Progress,
    ) -> Result<()> {
        let range = opts.range_size.max(MIN_RANGE);
        let size = storage
            .head(&o.key)?
            .ok_or_else(|| {
                Error::storage(
                    name,
                    StorageErrorKind::NotFound,
                    "object listed but gone (deleted during the restore?)",
                )
            })?
            .size;
        let short = |what: &str, got: usize, want: u64| {
            Error::ltx(
                name,
                format!("short read of the {what}: got {got} bytes of {want}"),
            )
        };
        if size < HEADER_SIZE as u64 + PAGE_HEADER_SIZE as u64 + TAIL_SIZE {
            return Err(Error::ltx(name, format!("truncated: {size} bytes")));
        }
        let head = storage.get_range(&o.key, 0, Some(HEADER_SIZE as u64))?;
        if head.len() != HEADER_SIZE {
            return Err(short("header", head.len(), HEADER_SIZE as u64));
        }
        let h = ltx::Header::decode(&head).map_err(|r| Error::ltx(name, r))?;
        check_header_matches(&h, o, name)?;
        self.start_object(&h, name)?;

        let tail_start = size - tail_len(size, range);
        let mut tail = storage.get_range(&o.key, tail_start, Some(size - tail_start))?;
        if tail.len() as u64 != size - tail_start {
            return Err(short("tail", tail.len(), size - tail_start));
        }
        let (index_len, trailer) = ltx::parse_tail(&tail[tail.len() - TAIL_SIZE as usize..])
            .map_err(|r| Error::ltx(name, r))?;
        let index_start = (size - TAIL_SIZE)
            .checked_sub(index_len)
            .filter(|&s| s >= (HEADER_SIZE + PAGE_HEADER_SIZE) as u64)
            .ok_or_else(|| {
                Error::ltx(
                    name,
                    format!("page index length {index_len} does not fit a file of {size} bytes"),
                )
            })?;
        let block_end = index_start - PAGE_HEADER_SIZE as u64;
        let mut tail_start = tail_start;
        if block_end < tail_start {
            // A page index larger than one range: one more GET for its start.
            let mut more = storage.get_range(&o.key, block_end, Some(tail_start - block_end))?;
            if more.len() as u64 != tail_start - block_end {
                return Err(short("page index", more.len(), tail_start - block_end));
            }
            more.extend_from_slice(&tail);
            tail = more;
            tail_start = block_end;
        }
        let at = |off: u64| (off - tail_start) as usize;
        if tail[at(block_end)..at(index_start)] != [0u8; PAGE_HEADER_SIZE] {
            return Err(Error::ltx(
                name,
                format!("no end of the page block at offset {block_end}"),
            ));
        }
        let index = &tail[at(index_start)..at(index_start + index_len)];
        let entries = ltx::parse_index(index, &h, block_end).map_err(|r| Error::ltx(name, r))?;

        // The page block: ranges up to the tail read, then the tail's part.
        let mut pieces = Vec::new();
        let fetched_end = block_end.min(tail_start);
        let mut s = HEADER_SIZE as u64;
        while s < fetched_end {
            let e = (s + range).min(fetched_end);
            pieces.push(Piece {
                start: s,
                end: e,
                fetch: true,
            });
            s = e;
        }
        if block_end > s {
            pieces.push(Piece {
                start: s,
                end: block_end,
                fetch: false,
            });
        }

        let outs = self.run_pieces(
            storage, o, name, &h, &entries, &pieces, &tail, tail_start, opts, progress,
        )?;

        // The header and the tail read count too.
        progress.add(size - (fetched_end.max(HEADER_SIZE as u64) - HEADER_SIZE as u64));

        // Join the checksums in file order, decoding records cut by a
        // range boundary on the way.
        let mut crc = ltx::CRC64.checksum(&head);
        let mut pending: Option<(usize, Vec<u8>)> = None;
        let mut buf = vec![0u8; h.page_size as usize];
        for out in outs {
            if pending.is_none() && !out.head.is_empty() {
                return Err(Error::ltx(
                    name,
                    "page block bytes outside every page record",
                ));
            }
            if let Some((i, mut bytes)) = pending.take() {
                bytes.extend_from_slice(&out.head);
                let e = &entries[i];
                if bytes.len() as u64 == e.size {
                    let mut d = ltx::crc64_digest();
                    let n = ltx::decode_record(&bytes, e, &mut buf, &mut d)
                        .map_err(|r| Error::ltx(name, r))?;
                    crc = ltx::crc64_combine(crc, d.finalize(), n);
                    self.write_page(e.pgno, &buf)?;
                } else {
                    pending = Some((i, bytes));
                }
            }
            crc = ltx::crc64_combine(crc, out.crc, out.hashed);
            if let Some(t) = out.tail {
                pending = Some(t);
            }
        }
        if let Some((i, _)) = pending {
            return Err(Error::ltx(
                name,
                format!("page {} runs past the page block", entries[i].pgno),
            ));
        }
        let rest = &tail[at(block_end)..tail.len() - ltx::TRAILER_SIZE + 8];
        crc = ltx::crc64_combine(crc, ltx::CRC64.checksum(rest), rest.len() as u64);
        let computed = ltx::CHECKSUM_FLAG | crc;
        if trailer.file_checksum != computed {
            return Err(Error::ltx(
                name,
                format!(
                    "file checksum mismatch: stored 0x{:016x}, computed 0x{computed:016x}",
                    trailer.file_checksum
                ),
            ));
        }
        let post = trailer.post_apply_checksum;
        if h.no_checksum() && post != 0 {
            return Err(Error::ltx(
                name,
                format!("post-apply checksum 0x{post:016x} in a NoChecksum file (must be 0)"),
            ));
        }
        if !h.no_checksum() && post & ltx::CHECKSUM_FLAG == 0 {
            return Err(Error::ltx(
                name,
                format!("post-apply checksum 0x{post:016x} lacks the 1<<63 flag"),
            ));
        }
        self.finish_object(&h)
    }

    /// Fetch (or cut from the tail) and decode every piece, `parallel`
    /// threads at a time; the outputs in piece order.
    #[allow(clippy::too_many_arguments)]
    fn run_pieces(
        &mut self,
        storage: &dyn Storage,
        o: &ReplicaObject,
        name: &str,
        h: &ltx::Header,
        entries: &[PageIndexEntry],
        pieces: &[Piece],
        tail: &[u8],
        tail_start: u64,
        opts: &RestoreOptions,
        progress: &mut Progress,
    ) -> Result<Vec<PieceOut>> {
        let threads = opts.parallel.clamp(1, 256).min(pieces.len()).max(1);
        let cancel = AtomicBool::new(false);
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<usize>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<(usize, Result<PieceOut>)>();
        for i in 0..pieces.len() {
            let _ = job_tx.send(i);
        }
        drop(job_tx);
        let file = self.file;
        let tmp_path = self.tmp_path;
        let mut outs: Vec<Option<PieceOut>> = (0..pieces.len()).map(|_| None).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let job_rx = job_rx.clone();
                let res_tx = res_tx.clone();
                let cancel = &cancel;
                s.spawn(move || {
                    let mut writer = PageWriter::new(file, tmp_path, h.page_size);
                    for i in job_rx {
                        if cancel.load(Ordering::Relaxed) {
                            break;
                        }
                        let p = &pieces[i];
                        let r = (|| {
                            let fetched;
                            let data: &[u8] = if p.fetch {
                                fetched =
                                    storage.get_range(&o.key, p.start, Some(p.end - p.start))?;
                                if fetched.len() as u64 != p.end - p.start {
                                    return Err(Error::ltx(
                                        name,
                                        format!(
                                            "short read at offset {}: got {} bytes of {}",
                                            p.start,
                                            fetched.len(),
                                            p.end - p.start
                                        ),
                                    ));
                                }
                                &fetched
                            } else {
                                &tail
                                    [(p.start - tail_start) as usize..(p.end - tail_start) as usize]
                            };
                            decode_piece(p, data, entries, &mut writer, name)
                        })();
                        if r.is_err() {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        if res_tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(res_tx);
            let mut first_err: Option<(usize, Error)> = None;
            for (i, r) in res_rx.iter() {
                match r {
                    Ok(out) => {
                        if pieces[i].fetch {
                            progress.add(pieces[i].end - pieces[i].start);
                        }
                        outs[i] = Some(out);
                    }
                    Err(e) => {
                        if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                            first_err = Some((i, e));
                        }
                    }
                }
            }
            match first_err {
                Some((_, e)) => Err(e),
                None => Ok(()),
            }
        })?;
        outs.into_iter()
            .map(|o| o.ok_or_else(|| Error::Restore(format!("{name}: a range was not fetched"))))
            .collect()
    }
}

/// Decode the records of `data` (the bytes `p.start..p.end`) that lie
/// wholly in it, write their pages, and return the cut records' bytes and
/// the CRC-64 of what the file checksum covers.
fn decode_piece(
    p: &Piece,
    data: &[u8],
    entries: &[PageIndexEntry],
    writer: &mut PageWriter,
    name: &str,
) -> Result<PieceOut> {
    let first = entries.partition_point(|e| e.offset < p.start);
    let last = entries.partition_point(|e| e.offset < p.end);
    let head_end = entries.get(first).map_or(p.end, |e| e.offset.min(p.end));
    let mut out = PieceOut {
        head: data[..(head_end - p.start) as usize].to_vec(),
        ..PieceOut::default()
    };
    let mut d = ltx::crc64_digest();
    for (i, e) in entries.iter().enumerate().take(last).skip(first) {
        let from = (e.offset - p.start) as usize;
        if e.offset + e.size > p.end {
            out.tail = Some((i, data[from..].to_vec()));
            break;
        }
        let rec = &data[from..from + e.size as usize];
        let n =
            ltx::decode_record(rec, e, writer.page(), &mut d).map_err(|r| Error::ltx(name, r))?;
        out.hashed += n;
        writer.commit(e.pgno)?;
    }
    writer.flush()?;
    out.crc = d.finalize();
    Ok(out)
}

/// Pages decoded in place into a batch buffer, written with one `pwrite`
/// per run of consecutive page numbers.
struct PageWriter<'a> {
    file: &'a File,
    path: &'a Path,
    ps: usize,
    buf: Vec<u8>,
    first: u32,
    pages: usize,
}

impl<'a> PageWriter<'a> {
    fn new(file: &'a File, path: &'a Path, page_size: u32) -> PageWriter<'a> {
        PageWriter {
            file,
            path,
            ps: page_size as usize,
            buf: Vec::with_capacity(WRITE_BATCH.max(page_size as usize)),
            first: 0,
            pages: 0,
        }
    }

    /// The buffer for the next page.
    fn page(&mut self) -> &mut [u8] {
        let at = self.pages * self.ps;
        self.buf.resize(at + self.ps, 0);
        &mut self.buf[at..]
    }

    /// The page just decoded into [`PageWriter::page`] is `pgno`.
    fn commit(&mut self, pgno: u32) -> Result<()> {
        if self.pages > 0 && pgno != self.first + self.pages as u32 {
            // Not the next page: write the run before it, keep this one.
            let page = self.buf.split_off(self.pages * self.ps);
            self.flush()?;
            self.buf = page;
        }
        if self.pages == 0 {
            self.first = pgno;
        }
        self.pages += 1;
        if self.buf.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pages > 0 {
            let len = self.pages * self.ps;
            self.file
                .write_all_at(&self.buf[..len], u64::from(self.first - 1) * self.ps as u64)
                .map_err(|e| Error::io(self.path, e))?;
        }
        self.buf.clear();
        self.pages = 0;
        Ok(())
    }
}
