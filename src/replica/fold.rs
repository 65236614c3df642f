//! A running merge of consecutive objects of one database: for every page
//! its newest version, and what sequential application needs besides.
//!
//! Why a file of its own: an object merged from a chain must restore exactly
//! like the chain applied in order. That rule lives here, once, for its two
//! users: the compactor's merge (`crate::compact`), which folds the objects
//! of a chain it listed, and the cache of just-stored objects
//! ([`super::recent`]), which folds each level-0 object as it is stored. A
//! busy database rewrites the same few pages commit after commit, so a fold
//! of its last 30 seconds holds each of those pages once where the bodies
//! held it in every upload, and its next level-1 merge needs neither a LIST
//! nor a GET. Pages stay in memory while small; a fold that may spill moves
//! them to a temporary file past its limit (a level-3 merge of a large
//! database never holds the database in memory), one that may not fails.
//!
//! The rule: the newest version of each page wins; after each object the
//! pages past its commit size are dropped; and a page the database dropped
//! (it shrank below it) and regained without rewriting it reads as zeros
//! after sequential application (the restore truncates after every object),
//! so the merged object carries it as an explicit zero page and yields the
//! identical file on any base.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ltx::{self, Decoder, Header};

/// Where the pages of a fold wait: one slot per page number (a newer
/// version replaces its slot) in memory, then in a temporary file (slot `i`
/// at `i × page_size`). A fold kept in memory only ([`Room::Memory`]: the
/// cache's, one per busy database for up to a level-1 interval) holds its
/// pages LZ4-compressed, a page costing a few microseconds once per upload
/// that rewrote it; a merge's ([`Room::Spill`]) holds them as they are.
struct PageStore {
    page_size: usize,
    compress: bool,
    /// Slot `i` is `mem[i]` while in memory; an emptied slot (its page was
    /// dropped by a shrink) is empty.
    mem: Vec<Box<[u8]>>,
    /// Bytes of the slots in `mem`.
    mem_bytes: usize,
    /// Past the limit: the file, and the number of slots in it.
    file: Option<(File, u64)>,
    /// Page number → slot of its newest version.
    pages: BTreeMap<u32, u64>,
}

/// What a slot in memory costs besides its bytes (the box and the
/// allocator's header), and a page's entry in the index (about, with its
/// share of a B-tree node).
const SLOT_OVERHEAD: usize = std::mem::size_of::<Box<[u8]>>() + 16;
const INDEX_ENTRY: usize = 24;

impl PageStore {
    fn new(page_size: u32, compress: bool) -> PageStore {
        PageStore {
            page_size: page_size as usize,
            compress,
            mem: Vec::new(),
            mem_bytes: 0,
            file: None,
            pages: BTreeMap::new(),
        }
    }

    /// Bytes of memory it would hold with `mem_bytes` bytes in `slots`
    /// slots (pages and their index, an index entry per slot at most).
    fn cost(&self, mem_bytes: usize, slots: usize) -> usize {
        mem_bytes + slots * (SLOT_OVERHEAD + INDEX_ENTRY)
    }

    /// Bytes of memory it holds (as the limit counts them).
    fn bytes(&self) -> usize {
        self.cost(self.mem_bytes, self.mem.len())
    }

    fn put(&mut self, pgno: u32, data: &[u8], room: &Room) -> Result<()> {
        let ps = self.page_size as u64;
        let old = self.pages.get(&pgno).copied();
        if let Some((f, n)) = &mut self.file {
            let slot = old.unwrap_or(*n);
            f.write_all_at(data, slot * ps)
                .map_err(|e| Error::io(room.dir(), e))?;
            if old.is_none() {
                *n += 1;
                self.pages.insert(pgno, slot);
            }
            return Ok(());
        }
        let slot: Box<[u8]> = match self.compress {
            true => lz4_flex::block::compress(data).into_boxed_slice(),
            false => data.into(),
        };
        let freed = old.map_or(0, |i| self.mem[i as usize].len());
        let after = self.mem_bytes - freed + slot.len();
        let slots = self.mem.len() + usize::from(old.is_none());
        if self.cost(after, slots) as u64 <= room.limit() {
            self.mem_bytes = after;
            match old {
                Some(i) => self.mem[i as usize] = slot,
                None => {
                    self.pages.insert(pgno, self.mem.len() as u64);
                    self.mem.push(slot);
                }
            }
            return Ok(());
        }
        let dir = match room {
            Room::Spill { dir, .. } => dir,
            Room::Memory { limit } => {
                return Err(Error::Config(format!(
                    "more than {limit} bytes of pages; not kept in memory"
                )))
            }
        };
        // Past the limit: every slot moves to the file at its index.
        let mut f = tempfile::tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
        let mut raw = vec![0u8; self.page_size];
        for i in 0..self.mem.len() {
            self.unpack(i, &mut raw)?;
            f.write_all(&raw).map_err(|e| Error::io(dir, e))?;
        }
        let n = self.mem.len() as u64;
        self.file = Some((f, n));
        self.mem = Vec::new();
        self.mem_bytes = 0;
        self.put(pgno, data, room)
    }

    /// Slot `i` of `mem` as a page (zeros for an emptied slot).
    fn unpack(&self, i: usize, buf: &mut [u8]) -> Result<()> {
        let slot = &self.mem[i];
        if slot.is_empty() {
            buf.fill(0);
            return Ok(());
        }
        if !self.compress {
            buf.copy_from_slice(slot);
            return Ok(());
        }
        match lz4_flex::block::decompress_into(slot, buf) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(Error::Config(format!(
                "internal: a folded page decompressed to {n} bytes, not {}",
                buf.len()
            ))),
            Err(e) => Err(Error::Config(format!(
                "internal: a folded page does not decompress: {e}"
            ))),
        }
    }

    fn read(&self, slot: u64, buf: &mut [u8], room: &Room) -> Result<()> {
        match &self.file {
            Some((f, _)) => f
                .read_exact_at(buf, slot * self.page_size as u64)
                .map_err(|e| Error::io(room.dir(), e)),
            None => self.unpack(slot as usize, buf),
        }
    }

    /// The database shrank to `commit` pages: the pages past it are
    /// dropped (their slots emptied while in memory).
    fn truncate(&mut self, commit: u32) {
        let dropped = self.pages.split_off(&(commit.saturating_add(1)));
        if self.file.is_none() {
            for slot in dropped.into_values() {
                let emptied = std::mem::take(&mut self.mem[slot as usize]);
                self.mem_bytes -= emptied.len();
            }
        }
    }
}

/// How much a fold may hold, and where the rest goes.
enum Room {
    /// In memory up to `limit` bytes of pages, then a temp file in `dir`.
    Spill { limit: u64, dir: PathBuf },
    /// In memory up to `limit` bytes of pages; past it [`Fold::add`] fails.
    Memory { limit: u64 },
}

impl Room {
    fn limit(&self) -> u64 {
        match self {
            Room::Spill { limit, .. } | Room::Memory { limit } => *limit,
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Room::Spill { dir, .. } => dir,
            Room::Memory { .. } => Path::new("memory"),
        }
    }
}

/// A chain of objects of one database folded into one (see the module doc).
pub struct Fold {
    store: Option<PageStore>,
    first: Option<Header>,
    last: Option<Header>,
    /// The smallest commit size of the objects folded.
    low: u32,
    objects: usize,
    room: Room,
}

impl Fold {
    /// An empty fold keeping up to `limit` bytes of pages in memory, the
    /// rest in a temporary file in `tmp_dir`.
    pub fn spilling(limit: u64, tmp_dir: &Path) -> Fold {
        Fold::with(Room::Spill {
            limit,
            dir: tmp_dir.to_path_buf(),
        })
    }

    /// An empty fold of at most `limit` bytes of pages, all in memory.
    pub fn in_memory(limit: u64) -> Fold {
        Fold::with(Room::Memory { limit })
    }

    fn with(room: Room) -> Fold {
        Fold {
            store: None,
            first: None,
            last: None,
            low: u32::MAX,
            objects: 0,
            room,
        }
    }

    /// Fold in the next object of the chain, read by `dec` to its end (which
    /// verifies its checksums); `name` names it in errors. It must continue
    /// the objects folded so far: start at or before the txid after them,
    /// end after them, same page size. On an error the fold is left
    /// half-updated: drop it.
    pub fn add<R: Read>(&mut self, dec: &mut Decoder<R>, name: &str) -> Result<()> {
        let h = *dec.header();
        if let Some(prev) = self.last {
            if h.page_size != prev.page_size {
                return Err(Error::ltx(
                    name,
                    format!(
                        "page size {} differs from {} of the objects before it; not merged",
                        h.page_size, prev.page_size
                    ),
                ));
            }
            if h.min_txid > prev.max_txid + 1 || h.max_txid <= prev.max_txid {
                return Err(Error::ltx(
                    name,
                    format!(
                        "txids {}..{} do not continue txid {}; not merged",
                        h.min_txid, h.max_txid, prev.max_txid
                    ),
                ));
            }
        }
        let compress = matches!(self.room, Room::Memory { .. });
        let st = self
            .store
            .get_or_insert_with(|| PageStore::new(h.page_size, compress));
        let mut buf = vec![0u8; h.page_size as usize];
        while let Some(pgno) = dec.next_page(&mut buf)? {
            st.put(pgno, &buf, &self.room)?;
        }
        st.truncate(h.commit);
        self.low = self.low.min(h.commit);
        self.first.get_or_insert(h);
        self.last = Some(h);
        self.objects += 1;
        Ok(())
    }

    /// First and last txid folded so far.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.first?.min_txid, self.last?.max_txid))
    }

    /// Objects folded so far.
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// Bytes of memory it holds.
    pub fn bytes(&self) -> usize {
        self.store.as_ref().map_or(0, PageStore::bytes)
    }

    /// The header of the merged object: the first object's first txid, the
    /// last one's last txid, commit size, timestamp and WAL position (a
    /// daemon resuming from the merged object continues exactly where it
    /// would from the last one). `None` while nothing is folded.
    pub fn header(&self) -> Option<Header> {
        let (first, last) = (self.first?, self.last?);
        let mut header = Header::new(
            last.page_size,
            last.commit,
            first.min_txid,
            last.max_txid,
            last.timestamp_ms,
        );
        header.wal_offset = last.wal_offset;
        header.wal_size = last.wal_size;
        header.wal_salt1 = last.wal_salt1;
        header.wal_salt2 = last.wal_salt2;
        header.node_id = last.node_id;
        Some(header)
    }

    /// At most this many pages go into the merged object (for sizing it).
    pub fn page_count(&self) -> u64 {
        let (Some(st), Some(last)) = (&self.store, self.last) else {
            return 0;
        };
        st.pages.len() as u64 + u64::from(last.commit.saturating_sub(self.low))
    }

    /// Hand the merged object's pages to `page` in page-number order.
    pub fn write_pages(&self, mut page: impl FnMut(u32, &[u8]) -> Result<()>) -> Result<()> {
        let (Some(st), Some(last)) = (&self.store, self.last) else {
            return Ok(());
        };
        let commit = last.commit;
        let lock = ltx::lock_pgno(last.page_size);
        let mut buf = vec![0u8; st.page_size];
        let zero = vec![0u8; st.page_size];
        // Pages above `low` that no object rewrote after the database last
        // shrank below them read as zeros after sequential application.
        let zero_from = self.low.saturating_add(1);
        for (&pgno, &slot) in st.pages.range(..zero_from) {
            st.read(slot, &mut buf, &self.room)?;
            page(pgno, &buf)?;
        }
        for pgno in (zero_from..=commit).filter(|p| *p != lock) {
            match st.pages.get(&pgno) {
                Some(&slot) => {
                    st.read(slot, &mut buf, &self.room)?;
                    page(pgno, &buf)?;
                }
                None => page(pgno, &zero)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::recent::tests::noise;

    /// Objects txid 2..=n of a database of 512-byte pages, each rewriting
    /// some pages and sometimes shrinking or growing it.
    fn history(n: u64) -> Vec<Vec<u8>> {
        let mut size = 6u32;
        (2..=n)
            .map(|t| {
                size = match t % 7 {
                    0 => (size / 2).max(1),
                    3 => size + 3,
                    _ => size,
                };
                let pages: Vec<(u32, Vec<u8>)> = (1..=size)
                    .filter(|p| (u64::from(*p) + t) % 3 == 0 || *p + 2 > size)
                    .map(|p| (p, noise(t, p)))
                    .collect();
                let h = Header::new(512, size, t, t, 1000 + t as i64);
                ltx::encode_to_vec(h, pages).unwrap()
            })
            .collect()
    }

    type Pages = Vec<(u32, Vec<u8>)>;

    fn fold_all(mut fold: Fold, objects: &[Vec<u8>]) -> Result<(Fold, Pages)> {
        for (i, body) in objects.iter().enumerate() {
            let mut dec = Decoder::new(&body[..], format!("object {i}"))?;
            fold.add(&mut dec, "object")?;
        }
        let mut pages = Vec::new();
        fold.write_pages(|p, d| {
            pages.push((p, d.to_vec()));
            Ok(())
        })?;
        Ok((fold, pages))
    }

    #[test]
    fn a_fold_that_spills_to_a_file_holds_the_same_pages() {
        let objects = history(60);
        let (all, want) = fold_all(Fold::in_memory(u64::MAX), &objects).unwrap();
        assert!(want.len() as u64 <= all.page_count());
        assert_eq!(all.range(), Some((2, 60)));
        let dir = tempfile::tempdir().unwrap();
        for limit in [0, 600, 3000, 9000] {
            let (spilled, got) = fold_all(Fold::spilling(limit, dir.path()), &objects).unwrap();
            assert_eq!(got, want, "limit {limit}");
            assert_eq!(spilled.header(), all.header());
        }
        // Spilling after a shrink emptied slots (txid 7): they keep their
        // place in the file.
        let longer = history(300);
        let (_, want) = fold_all(Fold::in_memory(u64::MAX), &longer).unwrap();
        let (early, _) = fold_all(Fold::spilling(u64::MAX, dir.path()), &longer[..10]).unwrap();
        let limit = early.bytes() as u64 + 1;
        let (spilled, got) = fold_all(Fold::spilling(limit, dir.path()), &longer).unwrap();
        assert_eq!(spilled.bytes(), 0, "spilled");
        assert_eq!(got, want);
        // In memory only: past its limit it fails instead.
        let e = fold_all(Fold::in_memory(3000), &objects).err().unwrap();
        assert!(e.to_string().contains("not kept in memory"), "{e}");
    }

    #[test]
    fn pages_a_shrink_drops_stop_counting() {
        let object = |t: u64, size: u32, pages: &[u32]| {
            let h = Header::new(512, size, t, t, 1000);
            ltx::encode_to_vec(h, pages.iter().map(|&p| (p, noise(t, p)))).unwrap()
        };
        let (grown, _) = fold_all(
            Fold::in_memory(u64::MAX),
            &[object(2, 8, &[1, 2, 3, 4, 5, 6, 7, 8])],
        )
        .unwrap();
        let objects = [object(2, 8, &[1, 2, 3, 4, 5, 6, 7, 8]), object(3, 2, &[1])];
        let (shrunk, pages) = fold_all(Fold::in_memory(u64::MAX), &objects).unwrap();
        assert_eq!(pages, [(1, noise(3, 1)), (2, noise(2, 2))]);
        assert!(
            shrunk.bytes() + 5 * 512 < grown.bytes(),
            "{} vs {}",
            shrunk.bytes(),
            grown.bytes()
        );
    }
}
