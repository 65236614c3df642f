//! Merging objects: newest page wins, pages past the final size dropped.
//!
//! Why a file of its own: this is where the compactor reads its inputs from
//! storage, verified, and stores what it merged; the merge rule itself is
//! [`Fold`]'s.

use super::*;

/// Where a merge works: temporary files, a flag that stops it between
/// objects, and the daemon's folds of just-stored level-0 objects.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// Directory for temporary files.
    pub tmp_dir: &'a Path,
    /// Set to stop between objects (shutdown).
    pub cancel: &'a AtomicBool,
    /// Level-0 objects folded as they were stored, when the daemon keeps
    /// them: the level-1 merge needs no GET.
    pub recent: Option<&'a Recent>,
    /// Whose folds are this database's: its
    /// [`crate::capture::DbStats::lineage`].
    pub lineage: u64,
}

/// Merge `inputs` — a chain (each starting at or before the txid after the
/// previous one's end, ending after it) of one database — into one object at
/// `level`. Every input is verified (SHA-256 metadata, header against name,
/// LTX checksums) before anything is produced. `root` names objects in
/// messages (`s3://bucket/prefix`); `cancel` stops between inputs.
pub fn merge(
    storage: &dyn Storage,
    root: &str,
    inputs: &[ReplicaObject],
    ctx: &Ctx<'_>,
) -> Result<Encoded> {
    let (tmp_dir, cancel) = (ctx.tmp_dir, ctx.cancel);
    let mut fold = Fold::spilling(MEMORY_LIMIT, tmp_dir);
    for o in inputs {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Config("compaction stopped (shutting down)".into()));
        }
        let name = format!("{root}/{}", o.key);
        let reader = replica::fetch(storage, o, &name, tmp_dir, SPOOL_THRESHOLD)?.reader();
        let mut dec = Decoder::new(reader, name.clone())?;
        replica::check_header_matches(dec.header(), o, &name)?;
        fold.add(&mut dec, &name)?;
    }
    debug_assert_eq!(
        fold.range().map(|r| r.0),
        inputs.first().map(|o| o.min_txid)
    );
    encode(&fold, tmp_dir)
}

/// The merged object of `fold`, encoded.
pub(super) fn encode(fold: &Fold, tmp_dir: &Path) -> Result<Encoded> {
    let Some(header) = fold.header() else {
        return Err(Error::Config("internal: nothing to merge".into()));
    };
    let raw = fold.page_count() * u64::from(header.page_size);
    segment::encode_with(header, raw, tmp_dir, |w| {
        fold.write_pages(|pgno, page| w.page(pgno, page))
    })
}

/// Store an encoded object under `key` (streamed from its temp file when it
/// has one).
pub(super) fn put_encoded(storage: &dyn Storage, key: &str, enc: Encoded) -> Result<u64> {
    let mut enc = enc;
    match &mut enc.body {
        Body::Memory(b) => {
            storage.put(key, b, &enc.meta)?;
            Ok(b.len() as u64)
        }
        Body::File(p) => {
            let n = std::fs::metadata(&*p).map_err(|e| Error::io(&*p, e))?.len();
            storage.put_file(key, p, &enc.meta).map(|()| n)
        }
        Body::Stream(s) => {
            let mut counted = crate::storage::source::Counted::new(s.as_mut());
            storage.put_stream(key, &mut counted, &enc.meta)?;
            Ok(counted.last())
        }
    }
}
