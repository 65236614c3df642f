//! Compaction and retention (issue #6).
//!
//! - `merge_equals_sequential_application`: random chains of LTX objects
//!   (pages rewritten, the database shrinking and growing again) merged by
//!   `compact::merge` give, on a random base, exactly the file that applying
//!   the inputs one by one gives. No S3 needed.
//! - `restore_replans_when_an_object_disappears`: a restore whose planned
//!   objects are replaced by a compaction and deleted meanwhile still
//!   restores the planned txid.
//! - `compact_by_hand_keeps_exactly_the_window`: `walsync compact` on a
//!   synthetic history: every txid inside the window restores exactly,
//!   what lies before the window's first state is exactly one chain.
//! - `daemon_compacts_and_retention_never_breaks_a_restore` (Garage): hours
//!   of activity compressed into seconds (levels at 1 s / 3 s / 6 s,
//!   retention 20 s, grace 1 s) while restores run in a loop; afterwards 50+
//!   random txids and timestamps inside the window restore to the states an
//!   independent restorer recorded while the level-0 objects still existed.
//! - `idle_daemon_makes_no_requests` (Garage through the recording proxy):
//!   100 idle databases, zero requests in a minute.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::oracle::{self, app_state, Writer};
use common::process::{Cmd, Proc, Signal};
use walsync::compact;
use walsync::ltx::{self, Header, SNAPSHOT_LEVEL};
use walsync::replica::ReplicaObject;
use walsync::restore::{self, RestoreOptions, Target};
use walsync::storage::{FileStorage, Metadata, S3Storage, Storage};
use walsync::storage::{META_SHA256, META_TIMESTAMP};

const SYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync");

use walsync::util::now_ms;

// ---------------------------------------------------------------------------
// Synthetic replicas
// ---------------------------------------------------------------------------

const PS: u32 = 512;

/// A database image and the objects written for it so far.
struct Synth {
    storage: Arc<dyn Storage>,
    db: String,
    image: Vec<Vec<u8>>,
    txid: u64,
    /// The image after every txid.
    states: BTreeMap<u64, Vec<u8>>,
    /// Txid of the newest snapshot.
    last_snapshot: u64,
    /// Where level-0 bodies go as the uploaders would put them.
    recent: Option<Arc<walsync::replica::recent::Recent>>,
}

impl Synth {
    fn new(storage: Arc<dyn Storage>, db: &str) -> Synth {
        Synth {
            storage,
            db: db.into(),
            image: Vec::new(),
            txid: 0,
            states: BTreeMap::new(),
            last_snapshot: 0,
            recent: None,
        }
    }

    fn flat(&self) -> Vec<u8> {
        self.image.concat()
    }

    fn put(&self, level: u8, h: Header, pages: Vec<(u32, Vec<u8>)>) -> String {
        let bytes = ltx::encode_to_vec(h, pages).unwrap();
        let sha = walsync::util::hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        let meta = Metadata::new()
            .with(
                META_TIMESTAMP,
                ltx::format_timestamp_ms(h.timestamp_ms).unwrap(),
            )
            .with(META_SHA256, sha);
        let key = ltx::object_key("", &self.db, level, h.min_txid, h.max_txid);
        self.storage.put(&key, &bytes, &meta).unwrap();
        if let Some(r) = &self.recent {
            r.offer(&key, 0, bytes);
        }
        key
    }

    /// A full snapshot of the current image as the next txid (level 9).
    fn snapshot(&mut self, ts: i64) {
        self.txid += 1;
        let commit = self.image.len() as u32;
        let pages = (1..=commit)
            .map(|p| (p, self.image[p as usize - 1].clone()))
            .collect();
        self.put(
            SNAPSHOT_LEVEL,
            Header::new(PS, commit, 1, self.txid, ts),
            pages,
        );
        self.states.insert(self.txid, self.flat());
        self.last_snapshot = self.txid;
    }

    /// One level-0 transaction: rewrite some pages, change the size.
    fn txn(&mut self, rng: &mut common::Rng, ts: i64) {
        self.txid += 1;
        let old = self.image.len() as u32;
        let commit = match rng.below(6) {
            0 => (old / 2).max(1),              // shrink
            1 => old + 1 + rng.below(4) as u32, // grow
            _ => old.max(1),
        };
        let mut changed = std::collections::BTreeMap::new();
        // SQLite writes every page it adds when growing; LTX does not
        // require it (unwritten pages read as zeros): do both.
        let write_all = rng.below(2) == 0;
        for p in old + 1..=commit {
            if write_all || rng.below(2) == 0 {
                changed.insert(p, common::pseudo_random(PS as usize, rng.next()));
            }
        }
        for _ in 0..rng.below(4) {
            let p = 1 + rng.below(u64::from(commit)) as u32;
            changed.insert(p, common::pseudo_random(PS as usize, rng.next()));
        }
        self.image.resize(commit as usize, vec![0; PS as usize]);
        for (p, d) in &changed {
            self.image[*p as usize - 1] = d.clone();
        }
        let pages = changed.into_iter().collect();
        self.put(0, Header::new(PS, commit, self.txid, self.txid, ts), pages);
        self.states.insert(self.txid, self.flat());
    }
}

/// Apply LTX bytes to an image the way restore does: pages, then truncate.
fn apply(image: &mut Vec<u8>, bytes: &[u8]) {
    let (h, pages) = ltx::decode_all(bytes, "test").unwrap();
    let ps = h.page_size as usize;
    for (pgno, data) in pages {
        let at = (pgno as usize - 1) * ps;
        if image.len() < at + ps {
            image.resize(at + ps, 0);
        }
        image[at..at + ps].copy_from_slice(&data);
    }
    image.resize(h.commit as usize * ps, 0);
}

fn object(storage: &dyn Storage, key: &str) -> ReplicaObject {
    let k = ltx::parse_object_key("", key).unwrap();
    ReplicaObject {
        key: key.into(),
        level: k.level,
        min_txid: k.min_txid,
        max_txid: k.max_txid,
        size: storage.head(key).unwrap().unwrap().size,
    }
}

/// A random base image as a snapshot (txid 1), then 1 to 12 level-0
/// transactions (txids 2.., times 1000..): the base image and their keys.
fn random_chain(s: &mut Synth, rng: &mut common::Rng) -> (Vec<u8>, Vec<String>) {
    s.image = (0..1 + rng.below(12))
        .map(|_| common::pseudo_random(PS as usize, rng.next()))
        .collect();
    s.snapshot(1000);
    let base = s.flat();
    let keys = (0..1 + rng.below(12) as i64)
        .map(|i| {
            s.txn(rng, 1000 + i);
            ltx::object_key("", &s.db, 0, s.txid, s.txid)
        })
        .collect();
    (base, keys)
}

#[test]
fn merge_equals_sequential_application() {
    let mut rng = common::Rng::new("merge_equals_sequential_application");
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
    let cancel = AtomicBool::new(false);
    for case in 0..150 {
        let db = format!("m{case}.db");
        let mut s = Synth::new(storage.clone(), &db);
        let (base, keys) = random_chain(&mut s, &mut rng);
        let inputs: Vec<ReplicaObject> = keys.iter().map(|k| object(&*storage, k)).collect();
        let enc = compact::merge(
            &*storage,
            "test",
            &inputs,
            &compact::Ctx {
                tmp_dir: dir.path(),
                cancel: &cancel,
                recent: None,
                lineage: 0,
            },
        )
        .unwrap();
        let merged = match enc.body {
            walsync::upload::segment::Body::Memory(b) => b,
            walsync::upload::segment::Body::File(p) => std::fs::read(&p).unwrap(),
            walsync::upload::segment::Body::Stream(mut s) => {
                walsync::storage::source::collect(s.as_mut()).unwrap()
            }
        };
        let h = Header::decode(&merged[..ltx::HEADER_SIZE]).unwrap();
        assert_eq!((h.min_txid, h.max_txid), (2, s.txid), "case {case}");
        check_merged(&*storage, &s, &base, &keys, &merged, case);
    }
}

/// `merged` (of `keys`, txids 2.. on `base`, the last at time 1000 + n - 1)
/// restores exactly like `keys` applied one after the other.
fn check_merged(
    storage: &dyn Storage,
    s: &Synth,
    base: &[u8],
    keys: &[String],
    merged: &[u8],
    case: u64,
) {
    let h = Header::decode(&merged[..ltx::HEADER_SIZE]).unwrap();
    assert_eq!(
        h.timestamp_ms,
        1000 + keys.len() as i64 - 1,
        "case {case}: last input's time"
    );
    let mut seq = base.to_vec();
    for k in keys {
        apply(&mut seq, &storage.get(k).unwrap());
    }
    let mut one = base.to_vec();
    apply(&mut one, merged);
    assert_eq!(seq, s.flat(), "case {case}: the model itself");
    assert_eq!(
        one, seq,
        "case {case}: merged object differs from sequential application"
    );
}

/// The daemon's level-1 merge of a busy database: its level-0 objects were
/// folded as they were stored ([`walsync::replica::recent::Recent`]), and
/// the merge is that fold, stored with one PUT and no GET (nor a LIST when
/// it continues the last level-1 object). It must
/// restore exactly like the objects applied one after the other, shrinks
/// and regrown pages included.
#[test]
fn a_level1_merge_from_the_fold_equals_sequential_application() {
    let mut rng = common::Rng::new("a_level1_merge_from_the_fold_equals_sequential_application");
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
    let counting = walsync::storage::CountingStorage::new(inner.clone());
    let cancel = AtomicBool::new(false);
    for case in 0..150 {
        let db = format!("f{case}.db");
        let recent = Arc::new(walsync::replica::recent::Recent::new(1 << 20));
        let mut s = Synth::new(inner.clone(), &db);
        s.recent = Some(recent.clone());
        let (base, keys) = random_chain(&mut s, &mut rng);
        let n = keys.len();
        let ctx = compact::Ctx {
            tmp_dir: dir.path(),
            cancel: &cancel,
            recent: Some(&recent),
            lineage: 0,
        };
        // Right after the last level-1 object (here the snapshot's txid):
        // no LIST. A new database's first level-1 object (position 0) starts
        // after the snapshot's hole, found by one LIST. A fold stored by
        // another lineage (an earlier replication of the same name) is
        // never used: everything comes from storage.
        let pos = case % 2;
        let other = case % 3 == 2;
        let ctx = compact::Ctx {
            lineage: u64::from(other),
            ..ctx
        };
        let o = compact::compact_level(&counting, &db, 1, pos, &ctx)
            .unwrap()
            .expect("merged");
        assert_eq!((o.min_txid, o.max_txid), (2, s.txid), "case {case}");
        let requests = counting.snapshot()[db.as_str()].requests;
        let want = match other {
            false => [1, 0, 1 - pos, 0, 0],
            true => [1, n as u64, 1, 0, 0],
        };
        assert_eq!(
            requests, want,
            "case {case}: [PUT, GET, LIST, HEAD, DELETE]"
        );
        let merged = inner.get(&o.key).unwrap();
        check_merged(&*inner, &s, &base, &keys, &merged, case);
        // The same merge from storage gives the same bytes.
        let inputs: Vec<ReplicaObject> = keys.iter().map(|k| object(&*inner, k)).collect();
        let ctx = compact::Ctx {
            recent: None,
            ..ctx
        };
        let enc = compact::merge(&*inner, "test", &inputs, &ctx).unwrap();
        match enc.body {
            walsync::upload::segment::Body::Memory(b) => assert_eq!(b, merged, "case {case}"),
            _ => panic!("case {case}: a small merge is encoded in memory"),
        }
        // The fold was used up: the next merge finds nothing new.
        assert!(compact::compact_level(&counting, &db, 1, s.txid, &ctx)
            .unwrap()
            .is_none());
    }
}

/// A synthetic history with compactions, as the daemon would leave it.
fn synthetic_history(storage: Arc<dyn Storage>, db: &str, rng: &mut common::Rng) -> Synth {
    let mut s = Synth::new(storage.clone(), db);
    // Small enough that some merges read from the cache, some from storage.
    let recent = Arc::new(walsync::replica::recent::Recent::new(24 << 10));
    s.recent = Some(recent.clone());
    s.image = vec![common::pseudo_random(PS as usize, 1); 3];
    let cancel = AtomicBool::new(false);
    let tmp = std::env::temp_dir();
    let mut ends = [0u64; 4];
    let mut ts = 1_000_000i64;
    s.snapshot(ts);
    for step in 1..=240 {
        ts += 1000;
        if step % 80 == 0 {
            s.snapshot(ts);
        } else {
            s.txn(rng, ts);
        }
        // Levels every 5, 20 and 60 steps.
        for (level, every) in [(1usize, 5), (2, 20), (3, 60)] {
            if step % every == 0 {
                let ctx = compact::Ctx {
                    tmp_dir: &tmp,
                    cancel: &cancel,
                    recent: Some(&recent),
                    lineage: 0,
                };
                while let Some(o) =
                    compact::compact_level(&*storage, db, level as u8, ends[level], &ctx).unwrap()
                {
                    ends[level] = o.max_txid;
                }
            }
        }
    }
    s
}

/// Restore's plan for `txid`, applied (synthetic pages are not a SQLite
/// database, so the plan is applied here rather than by `restore`).
fn restore_image(storage: &dyn Storage, db: &str, txid: u64) -> Vec<u8> {
    apply_plan(
        storage,
        &restore::plan(storage, db, Target::Txid(txid)).unwrap(),
    )
}

fn apply_plan(storage: &dyn Storage, plan: &restore::Plan) -> Vec<u8> {
    let mut image = Vec::new();
    for o in &plan.objects {
        apply(&mut image, &storage.get(&o.key).unwrap());
    }
    image
}

#[test]
fn compact_by_hand_keeps_exactly_the_window() {
    let mut rng = common::Rng::new("compact_by_hand_keeps_exactly_the_window");
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path().join("b")).unwrap());
    let s = synthetic_history(storage.clone(), "h.db", &mut rng);
    let before = walsync::replica::list(&*storage, "h.db").unwrap().objects;
    let levels: Vec<u8> = before.iter().map(|o| o.level).collect();
    for l in [0, 1, 2, 3, 9] {
        assert!(levels.contains(&l), "history has level {l}");
    }
    // Every state restores before retention, through the compacted chain,
    // planned from the full listing and level by level.
    let replica = walsync::replica::list(&*storage, "h.db").unwrap();
    let mut by_level = 0;
    for t in 1..=s.txid {
        let full = replica.plan(&*storage, Target::Txid(t)).unwrap();
        assert_eq!(apply_plan(&*storage, &full), s.states[&t], "txid {t}");
        if let Some(p) = restore::plan_by_level(&*storage, "h.db", Target::Txid(t)).unwrap() {
            assert_eq!(p.txid, t);
            assert!(
                p.objects.len() <= full.objects.len() + 3,
                "txid {t}: {p:?} vs {full:?}"
            );
            assert_eq!(apply_plan(&*storage, &p), s.states[&t], "txid {t} by level");
            by_level += 1;
        }
    }
    assert!(
        by_level >= s.txid as usize * 9 / 10,
        "only {by_level} txids planned by level"
    );
    let latest = restore::plan_by_level(&*storage, "h.db", Target::Latest)
        .unwrap()
        .expect("the newest state plans by level");
    assert_eq!(latest.txid, s.txid);
    assert_eq!(apply_plan(&*storage, &latest), s.states[&s.txid]);
    // Window: everything newer than step 150's time (txid 151).
    // A fixed "now" whose window starts 500 ms after step 150's time.
    let window = Duration::from_secs(10);
    let now = 1_000_000 + 150 * 1000 + 500 + 10_000;
    let mut out = Vec::new();
    let dry = compact::compact_by_hand(
        &*storage,
        "h.db",
        Some(window),
        true,
        now,
        dir.path(),
        &mut out,
    )
    .unwrap();
    let dry_text = String::from_utf8(out).unwrap();
    assert_eq!(
        walsync::replica::list(&*storage, "h.db").unwrap().objects,
        before,
        "--dry-run changed nothing"
    );
    assert!(dry.deleted > 0, "{dry_text}");
    assert!(dry_text.contains("would delete"), "{dry_text}");

    let mut out = Vec::new();
    let done = compact::compact_by_hand(
        &*storage,
        "h.db",
        Some(window),
        false,
        now,
        dir.path(),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    eprintln!("{text}");
    assert_eq!(
        done.deleted, dry.deleted,
        "dry run predicted the deletions:\n{dry_text}\n---\n{text}"
    );
    let after = walsync::replica::list(&*storage, "h.db").unwrap().objects;
    assert_eq!(after.len(), before.len() - done.deleted);
    let t0 = 151u64;
    // Inside the window: every txid restores exactly.
    for t in t0..=s.txid {
        assert_eq!(
            restore_image(&*storage, "h.db", t),
            s.states[&t],
            "txid {t}"
        );
    }
    // Before it: exactly one chain (snapshot, then contiguous objects, ending
    // at the window's first state) and nothing else.
    let mut old: Vec<&ReplicaObject> = after.iter().filter(|o| o.max_txid <= t0).collect();
    old.sort_by_key(|o| (o.min_txid, o.max_txid));
    assert_eq!(old[0].min_txid, 1, "starts with a snapshot: {old:?}");
    assert_eq!(old.iter().filter(|o| o.min_txid == 1).count(), 1, "{old:?}");
    for w in old.windows(2) {
        assert_eq!(w[1].min_txid, w[0].max_txid + 1, "one chain: {old:?}");
    }
    assert_eq!(old.last().unwrap().max_txid, t0, "{old:?}");
    // A txid before the window is gone (the point of retention).
    assert!(restore::plan(&*storage, "h.db", Target::Txid(10)).is_err());
    // The next moment the window can move: the oldest store time of an
    // object inside it, plus the window (an idle daemon sleeps until then).
    let p = compact::plan_retention(&*storage, "h.db", window, now).unwrap();
    let next = p.next_change.expect("objects inside the window");
    let stored_ago = next
        .duration_since(SystemTime::now())
        .map(|ahead| window.saturating_sub(ahead))
        .unwrap_or(window);
    assert!(stored_ago < Duration::from_secs(120), "{stored_ago:?}");
    // A second run has nothing left to delete.
    let mut out = Vec::new();
    let again = compact::compact_by_hand(
        &*storage,
        "h.db",
        Some(window),
        false,
        now,
        dir.path(),
        &mut out,
    )
    .unwrap();
    assert_eq!(again.deleted, 0, "{}", String::from_utf8_lossy(&out));
}

type Meddle = Box<dyn FnOnce(&dyn Storage) + Send>;

/// A storage that, on the first GET of `victim`, first replaces the
/// objects of the plan by compacting them and deletes the originals (what
/// a concurrent `walsync compact` does).
struct Meddler {
    inner: Arc<dyn Storage>,
    victim: String,
    on_victim: std::sync::Mutex<Option<Meddle>>,
}

impl Meddler {
    fn meddle(&self, key: &str) {
        if key == self.victim {
            if let Some(f) = self.on_victim.lock().unwrap().take() {
                f(&*self.inner);
            }
        }
    }
}

/// Every method written out (none left to the trait's defaults).
impl Storage for Meddler {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> walsync::Result<()> {
        self.inner.put(key, body, meta)
    }
    fn get_with_info(&self, key: &str) -> walsync::Result<(Vec<u8>, walsync::storage::ObjectInfo)> {
        self.meddle(key);
        self.inner.get_with_info(key)
    }
    fn get(&self, key: &str) -> walsync::Result<Vec<u8>> {
        self.meddle(key);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> walsync::Result<Vec<u8>> {
        self.inner.get_range(key, start, len)
    }
    fn head(&self, key: &str) -> walsync::Result<Option<walsync::storage::ObjectInfo>> {
        self.inner.head(key)
    }
    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> walsync::Result<Vec<walsync::storage::ObjectInfo>> {
        self.inner.list(prefix, after)
    }
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max_keys: usize,
    ) -> walsync::Result<Vec<walsync::storage::ObjectInfo>> {
        self.inner.list_page(prefix, after, max_keys)
    }
    fn put_stream(
        &self,
        key: &str,
        body: &mut dyn walsync::storage::Source,
        meta: &Metadata,
    ) -> walsync::Result<()> {
        self.inner.put_stream(key, body, meta)
    }
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &walsync::storage::Precondition,
    ) -> walsync::Result<bool> {
        self.inner.put_conditional(key, body, meta, cond)
    }
    fn get_with_etag(&self, key: &str) -> walsync::Result<Option<(Vec<u8>, String)>> {
        self.inner.get_with_etag(key)
    }
    fn delete_many(&self, keys: &[String]) -> walsync::Result<()> {
        self.inner.delete_many(keys)
    }
    fn check(&self) -> walsync::Result<()> {
        self.inner.check()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[test]
fn restore_replans_when_an_object_disappears() {
    let dir = tempfile::tempdir().unwrap();
    let inner: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path().join("b")).unwrap());
    // A real SQLite database as the payload, so restore's integrity check runs.
    let db = dir.path().join("r.db");
    let mut w = Writer::create(&db, 4);
    w.commit(3);
    w.checkpoint("TRUNCATE");
    drop(w);
    let bytes = std::fs::read(&db).unwrap();
    let pages: Vec<(u32, Vec<u8>)> = bytes
        .chunks(4096)
        .enumerate()
        .map(|(i, c)| (i as u32 + 1, c.to_vec()))
        .collect();
    let commit = pages.len() as u32;
    let put = |level: u8, min: u64, max: u64, pages: Vec<(u32, Vec<u8>)>| {
        let h = Header::new(4096, commit, min, max, 5000 + max as i64);
        let b = ltx::encode_to_vec(h, pages).unwrap();
        inner
            .put(
                &ltx::object_key("", "r.db", level, min, max),
                &b,
                &Metadata::new(),
            )
            .unwrap();
    };
    put(9, 1, 1, pages.clone());
    // Level-0 objects rewriting page 1 with its own bytes (no change).
    for t in 2..=6 {
        put(0, t, t, vec![pages[0].clone()]);
    }
    let plan = restore::plan(&*inner, "r.db", Target::Txid(6)).unwrap();
    assert_eq!(plan.objects.len(), 6);
    let victim = ltx::object_key("", "r.db", 0, 4, 4);
    let meddler = Meddler {
        inner: inner.clone(),
        victim: victim.clone(),
        on_victim: std::sync::Mutex::new(Some(Box::new(move |s: &dyn Storage| {
            let mut out = Vec::new();
            // Compact into level 1, then delete the level-0 objects it covers.
            compact::compact_by_hand(s, "r.db", None, false, 0, &std::env::temp_dir(), &mut out)
                .unwrap();
            let l0: Vec<String> = (2..=6)
                .map(|t| ltx::object_key("", "r.db", 0, t, t))
                .collect();
            s.delete_many(&l0).unwrap();
        }))),
    };
    let out = dir.path().join("out.db");
    let opts = RestoreOptions {
        parallel: 1,
        ..RestoreOptions::default()
    };
    let summary = restore::restore(&meddler, &plan, &out, &opts).unwrap();
    assert_eq!(summary.txid, 6);
    assert_eq!(
        summary.objects, 2,
        "re-planned: snapshot + one level-1 object"
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

// ---------------------------------------------------------------------------
// The daemon (Garage)
// ---------------------------------------------------------------------------

fn spawn_daemon(args: &[&str], dbs: &[PathBuf], log: &Path, env: &[(&str, String)]) -> Proc {
    Cmd::new(SYNC_BIN)
        .args(dbs)
        .args(args)
        .envs(env)
        .env("RUST_LOG", "walsync=debug")
        .spawn(log)
}

/// SIGTERM, and the exit status within 60 s.
fn stop(mut daemon: Proc) -> std::process::ExitStatus {
    daemon.signal(Signal::TERM);
    daemon.wait(Duration::from_secs(60))
}

fn restore_cli(bucket: &str, name: &str, out: &Path, args: &[&str]) -> Result<(i64, i64), String> {
    let o = Cmd::new(WALSYNC_BIN)
        .args(["restore", name, "--bucket", bucket, "--force", "-o"])
        .arg(out)
        .args(args)
        .try_output()
        .map_err(|e| e.to_string())?;
    if !o.status.success() {
        return Err(format!(
            "walsync restore {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let conn = rusqlite::Connection::open(out).map_err(|e| e.to_string())?;
    let s = app_state(&conn)?.ok_or("restored an empty database")?;
    Ok(s)
}

#[test]
fn daemon_compacts_and_retention_never_breaks_a_restore() {
    let name = "compact_daemon";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let mut rng = common::Rng::new(name);
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config.clone()).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.db");
    let mut w = Writer::create(&db, 3);
    w.commit(5);
    let retention = Duration::from_secs(20);
    let daemon = spawn_daemon(
        &[
            "--bucket",
            &bucket,
            "--compaction",
            "1s,3s,6s",
            "--retention",
            "20s",
            "--retention-grace",
            "1s",
            "--snapshot-interval",
            "4s",
            // Many txids inside the window to restore: one per commit.
            "--min-put-interval",
            "0",
        ],
        std::slice::from_ref(&db),
        &dir.path().join("daemon.log"),
        &[],
    );

    // Restores of the newest state run in a loop while retention deletes.
    let stop_restores = Arc::new(AtomicBool::new(false));
    let restores_ok = Arc::new(AtomicUsize::new(0));
    let restorer = {
        let stop = stop_restores.clone();
        let ok = restores_ok.clone();
        let bucket = bucket.clone();
        let out = dir.path().join("loop.db");
        std::thread::spawn(move || -> Result<(), String> {
            std::thread::sleep(Duration::from_secs(2));
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                restore_cli(&bucket, "c.db", &out, &[])?;
                ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    // The writer: ~40 s of commits. Every few seconds the independent
    // oracle records the state of every new txid (while its level-0
    // objects still exist) and the time of the object ending there.
    let mut oracle_replica = oracle::Oracle::new(storage.clone(), "c.db").allow_compaction();
    let mut expected: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    let mut times: BTreeMap<u64, i64> = BTreeMap::new();
    let mut seen_levels = [false; 10];
    let mut deleted_seen = 0usize;
    let mut last_keys: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut next_record = start + Duration::from_secs(3);
    let mut commits = 0;
    while start.elapsed() < Duration::from_secs(40) {
        w.commit(1 + rng.below(3) as usize);
        commits += 1;
        if rng.below(40) == 0 {
            w.checkpoint("PASSIVE");
        }
        std::thread::sleep(Duration::from_millis(rng.range(10, 60)));
        if Instant::now() >= next_record {
            next_record = Instant::now() + Duration::from_secs(3);
            record(
                &mut oracle_replica,
                &*storage,
                &mut expected,
                &mut times,
                &mut seen_levels,
            );
            let keys: Vec<String> = oracle_replica.list().into_iter().map(|o| o.key).collect();
            deleted_seen += last_keys.iter().filter(|k| !keys.contains(k)).count();
            last_keys = keys;
        }
    }
    oracle::wait_caught_up(&mut oracle_replica, &db, Duration::from_secs(30));
    record(
        &mut oracle_replica,
        &*storage,
        &mut expected,
        &mut times,
        &mut seen_levels,
    );
    // Let the compactor merge the tail and retention run once more.
    std::thread::sleep(Duration::from_secs(3));
    stop_restores.store(true, Ordering::Relaxed);
    let looped = restorer.join().unwrap();
    let status = stop(daemon);
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(status.success(), "daemon exited with {status}\n{log}");
    looped.unwrap_or_else(|e| panic!("a restore during retention failed: {e}\n{log}"));
    let loops = restores_ok.load(Ordering::Relaxed);
    assert!(loops >= 5, "only {loops} restores ran during the test");
    for l in [1usize, 2, 3] {
        assert!(
            seen_levels[l],
            "no level-{l} object was ever written\n{log}"
        );
    }
    assert!(deleted_seen > 0, "retention deleted nothing in 40 s\n{log}");
    assert!(log.contains("retention deleted"), "{log}");
    assert!(!log.contains("compaction failed"), "{log}");

    // 50+ points inside the window: by txid and by timestamp.
    let now = now_ms();
    let cutoff = now - retention.as_millis() as i64 + 1500; // margin: the window moves
    let first_in = times
        .iter()
        .filter(|(_, ts)| **ts >= cutoff)
        .map(|(t, _)| *t)
        .min()
        .expect("txids inside the window");
    let newest = *expected.keys().max().unwrap();
    let candidates: Vec<u64> = expected
        .keys()
        .copied()
        .filter(|t| *t >= first_in)
        .collect();
    assert!(
        candidates.len() >= 20,
        "{} txids in the window",
        candidates.len()
    );
    let out = dir.path().join("point.db");
    let mut checked = 0;
    for i in 0..30 {
        let t = candidates[rng.below(candidates.len() as u64) as usize];
        let got = restore_cli(&bucket, "c.db", &out, &["--txid", &t.to_string()])
            .unwrap_or_else(|e| panic!("txid {t} (window from {first_in}, newest {newest}): {e}"));
        assert_eq!(Some(&got), expected.get(&t), "point {i}: txid {t}");
        checked += 1;
    }
    let window_times: Vec<(u64, i64)> = times
        .iter()
        .filter(|(t, _)| **t >= first_in)
        .map(|(t, ms)| (*t, *ms))
        .collect();
    let (lo, hi) = (window_times[0].1, window_times[window_times.len() - 1].1);
    for i in 0..30 {
        let target = rng.range(lo as u64, hi as u64 + 100) as i64;
        let want = times
            .iter()
            .filter(|(_, ms)| **ms <= target)
            .map(|(t, _)| *t)
            .max()
            .unwrap();
        let ts = ltx::format_timestamp_ms(target).unwrap();
        let got = restore_cli(&bucket, "c.db", &out, &["--timestamp", &ts])
            .unwrap_or_else(|e| panic!("--timestamp {ts}: {e}"));
        assert_eq!(
            Some(&got),
            expected.get(&want),
            "point {i}: --timestamp {ts} (txid {want})"
        );
        checked += 1;
    }
    eprintln!(
        "{commits} commits, {} txids, {loops} looped restores, {deleted_seen} deletions seen, {checked} points checked",
        expected.len()
    );
}

/// Record, with the independent oracle, the state of every txid not yet
/// recorded, and every object's header time (newest per max txid).
fn record(
    replica: &mut oracle::Oracle,
    storage: &dyn Storage,
    expected: &mut BTreeMap<u64, (i64, i64)>,
    times: &mut BTreeMap<u64, i64>,
    levels: &mut [bool; 10],
) {
    let objs = replica.list();
    for o in &objs {
        levels[o.level as usize] = true;
        if o.level == 0 || o.level == SNAPSHOT_LEVEL {
            if times.contains_key(&o.max) {
                continue;
            }
            let head = storage
                .get_range(&o.key, 0, Some(ltx::HEADER_SIZE as u64))
                .unwrap();
            times.insert(o.max, Header::decode(&head).unwrap().timestamp_ms);
        }
    }
    let newest_snapshot_before = |t: u64| {
        objs.iter()
            .filter(|o| o.level == SNAPSHOT_LEVEL && o.max <= t)
            .map(|o| o.max)
            .max()
    };
    let todo: Vec<u64> = times
        .keys()
        .copied()
        .filter(|t| !expected.contains_key(t) && newest_snapshot_before(*t).is_some())
        .collect();
    if todo.is_empty() {
        return;
    }
    replica.restore_each(Some(&todo), |r| {
        let s = app_state(&r.conn).unwrap().expect("empty state");
        expected.insert(r.txid, s);
    });
}

#[test]
fn idle_daemon_makes_no_requests() {
    let name = "compact_idle";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("proxy");
    std::fs::create_dir(&spool).unwrap();
    let (proxy, line) = common::faultproxy::start_s3proxy(&["--spool", spool.to_str().unwrap()]);
    let port: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("proxy said {line:?}"));
    let mut dbs = Vec::new();
    for i in 0..100 {
        let p = dir.path().join(format!("idle{i:03}.db"));
        let mut w = Writer::create(&p, i);
        w.commit(2);
        dbs.push(p);
    }
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let daemon = spawn_daemon(
        // Short intervals: an idle database must not be snapshotted,
        // compacted or trimmed again and again.
        &[
            "--bucket",
            &bucket,
            "--compaction",
            "1s,2s,3s",
            "--snapshot-interval",
            "2s",
        ],
        &dbs,
        &dir.path().join("daemon.log"),
        &[("AWS_ENDPOINT_URL_S3", format!("http://127.0.0.1:{port}"))],
    );
    let count = || -> usize {
        std::fs::read_to_string(spool.join("requests.jsonl"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    // Start-up: resume probes, 100 snapshots, the first compaction look and
    // retention pass. Wait until the request count stands still for 5 s.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = (count(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(5) {
        assert!(Instant::now() < deadline, "requests never settled");
        std::thread::sleep(Duration::from_millis(250));
        let c = count();
        if c != last.0 {
            last = (c, Instant::now());
        }
    }
    let settled = last.0;
    assert!(settled >= 100, "start-up made only {settled} requests");
    std::thread::sleep(Duration::from_secs(60));
    let after = count();
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    let status = stop(daemon);
    drop(proxy);
    assert!(status.success(), "{log}");
    let extra: Vec<String> = std::fs::read_to_string(spool.join("requests.jsonl"))
        .unwrap_or_default()
        .lines()
        .skip(settled)
        .take(after - settled)
        .map(str::to_string)
        .collect();
    assert_eq!(after, settled, "an idle daemon made requests: {extra:#?}");
    eprintln!("start-up: {settled} requests; idle minute: 0 requests");
}

// ---------------------------------------------------------------------------
// Review reproductions
// ---------------------------------------------------------------------------

fn review_ctx<'a>(tmp: &'a Path, cancel: &'a AtomicBool) -> compact::Ctx<'a> {
    compact::Ctx {
        tmp_dir: tmp,
        cancel,
        recent: None,
        lineage: 0,
    }
}

/// A database idle for longer than the retention window: retention keeps
/// only the snapshot and the level-3 object reaching the newest txid, so
/// every level-1 and level-2 object is deleted. After a daemon restart (or
/// with `walsync compact`) the compactor starts level 1 from the newest
/// level-1 object that is left (none: txid 0). New level-0 objects start
/// right after the level-3 object, not after a snapshot, so `chain_after`
/// finds "a hole not at a snapshot" and level 1 never compacts again until
/// the next snapshot (24 h by default), LISTing all of level 0 every interval.
#[test]
fn review_level1_compaction_resumes_after_idle_retention() {
    let mut rng = common::Rng::new("review_level1_compaction_resumes_after_idle_retention");
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path().join("b")).unwrap());
    let db = "idle.db";
    let mut s = Synth::new(storage.clone(), db);
    s.image = vec![common::pseudo_random(PS as usize, 1); 3];
    let mut ts = 1_000_000i64;
    s.snapshot(ts);
    for _ in 0..20 {
        ts += 1000;
        s.txn(&mut rng, ts);
    }
    let mut out = Vec::new();
    let first =
        compact::compact_by_hand(&*storage, db, None, false, ts, dir.path(), &mut out).unwrap();
    assert_eq!(
        first.written[1..],
        [1, 1, 1],
        "{}",
        String::from_utf8_lossy(&out)
    );
    // Idle for two hours with a one-hour window.
    let idle_end = ts + 2 * 3600 * 1000;
    let mut out = Vec::new();
    compact::compact_by_hand(
        &*storage,
        db,
        Some(Duration::from_secs(3600)),
        false,
        idle_end,
        dir.path(),
        &mut out,
    )
    .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out));
    // Writes resume (no snapshot in between: the snapshot interval is longer
    // than the window).
    let mut ts = idle_end;
    for _ in 0..10 {
        ts += 1000;
        s.txn(&mut rng, ts);
    }
    // Restores are fine ...
    assert_eq!(restore_image(&*storage, db, s.txid), s.states[&s.txid]);
    // ... but the restarted daemon's compactor starts from find_resume_point's
    // level ends (DbState::new) and finds nothing to merge.
    let res = walsync::capture::find_resume_point(&*storage, db)
        .unwrap()
        .unwrap();
    eprintln!("level ends after restart: {:?}", res.level_ends);
    // `walsync compact --dry-run` first (it changes nothing), then the
    // restarted daemon's pass.
    let mut out = Vec::new();
    let by_hand =
        compact::compact_by_hand(&*storage, db, None, true, ts, dir.path(), &mut out).unwrap();
    let cancel = AtomicBool::new(false);
    let tmp = dir.path().to_path_buf();
    let r = compact::compact_level(
        &*storage,
        db,
        1,
        res.level_ends[1],
        &review_ctx(&tmp, &cancel),
    )
    .unwrap();

    assert!(
        r.is_some() && by_hand.written[1] > 0,
        "level 1 finds nothing to merge although 10 level-0 objects follow the level-3 object \
         (daemon: {r:?}; walsync compact --dry-run: {})",
        String::from_utf8_lossy(&out)
    );
}

/// `walsync compact` next to a running daemon (README: "safe ... at worst both
/// write overlapping merged objects"): both merge level 0 from the same
/// position at different moments, so level 1 holds [2..10] and [2..20]; the
/// daemon continues level 1 from its own end (11..25). The hand-run level-2
/// object is [2..20], the daemon's [2..25]. After a restart, `last_in_level`
/// returns the first key with the highest min txid — [2..20], the shorter one
/// — so level 2 resumes at txid 20, and `next_inputs` lists level 1 only
/// *after* `…0014-ffff…`, which hides [11..25] (min 11 ≤ 20). The next
/// level-1 object starts at 26: "a hole not at a snapshot", level 2 stalls.
#[test]
fn review_level2_stalls_after_overlapping_merges() {
    let mut rng = common::Rng::new("review_level2_stalls_after_overlapping_merges");
    let dir = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path().join("b")).unwrap());
    let db = "ov.db";
    let mut s = Synth::new(storage.clone(), db);
    s.image = vec![common::pseudo_random(PS as usize, 1); 3];
    let mut ts = 1_000_000i64;
    s.snapshot(ts);
    let cancel = AtomicBool::new(false);
    let tmp = dir.path().to_path_buf();
    let ctx = review_ctx(&tmp, &cancel);
    let mut txns = |s: &mut Synth, n: usize, rng: &mut common::Rng| {
        for _ in 0..n {
            ts += 1000;
            s.txn(rng, ts);
        }
    };
    txns(&mut s, 9, &mut rng); // L0 2..10
                               // Daemon: level 1 from txid 1.
    let d1 = compact::compact_level(&*storage, db, 1, 1, &ctx)
        .unwrap()
        .unwrap();
    assert_eq!((d1.min_txid, d1.max_txid), (2, 10));
    txns(&mut s, 10, &mut rng); // L0 11..20
                                // `walsync compact`, started at the same moment (same position, txid 1),
                                // lists level 0 a little later; then its level 2.
    let h1 = compact::compact_level(&*storage, db, 1, 1, &ctx)
        .unwrap()
        .unwrap();
    assert_eq!((h1.min_txid, h1.max_txid), (2, 20));
    let h2 = compact::compact_level(&*storage, db, 2, 1, &ctx)
        .unwrap()
        .unwrap();
    assert_eq!((h2.min_txid, h2.max_txid), (2, 20));
    txns(&mut s, 5, &mut rng); // L0 21..25
                               // Daemon: level 1 from its own end (10), then level 2 from its own (1).
    let d1b = compact::compact_level(&*storage, db, 1, 10, &ctx)
        .unwrap()
        .unwrap();
    assert_eq!((d1b.min_txid, d1b.max_txid), (11, 25));
    let d2 = compact::compact_level(&*storage, db, 2, 1, &ctx)
        .unwrap()
        .unwrap();
    assert_eq!((d2.min_txid, d2.max_txid), (2, 25));
    txns(&mut s, 5, &mut rng); // L0 26..30
    let d1c = compact::compact_level(&*storage, db, 1, 25, &ctx)
        .unwrap()
        .unwrap();
    assert_eq!((d1c.min_txid, d1c.max_txid), (26, 30));
    // Every state still restores.
    for t in 1..=s.txid {
        assert_eq!(restore_image(&*storage, db, t), s.states[&t], "txid {t}");
    }
    // Restart: level ends from storage.
    let res = walsync::capture::find_resume_point(&*storage, db)
        .unwrap()
        .unwrap();
    eprintln!("level ends after restart: {:?}", res.level_ends);
    let r = compact::compact_level(&*storage, db, 2, res.level_ends[2], &ctx).unwrap();
    assert!(
        r.is_some(),
        "level 2 resumes at txid {} (the newest level-2 object ends at 25) and finds nothing \
         to merge although level 1 holds [26..30]",
        res.level_ends[2]
    );
}
