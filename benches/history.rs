//! `make bench-history`: what compaction buys a restore (issue #6).
//!
//! Builds, in the S3 bucket of the environment (scripts/bench.sh starts a
//! private Garage), the replica a busy database leaves after `--hours` of
//! history at `--writes` writes per second, shipped as one level-0 object
//! per `--put-interval` seconds (what `walsync-sync --min-put-interval`
//! does), with the daemon's own compaction code (`compact::compact_level`)
//! run at the simulated 30 s / 5 min / 1 h boundaries and a snapshot at the
//! start. Timestamps are simulated (the history ends now).
//!
//! The database is a real SQLite file: 2 rows of 2,000 bytes per 4 KiB page,
//! each row's payload a known region; a "write" overwrites one region with
//! new bytes (a quarter random), which keeps every page a valid b-tree page,
//! so `PRAGMA integrity_check` of each restore passes and the restored file
//! is compared byte for byte with the model.
//!
//! Then it restores the newest state twice with `restore::restore`, counting
//! requests: through the compacted chain (`restore::plan`, level by level)
//! and from level 0 alone (the newest snapshot and every level-0 object, as
//! a replica without compaction would need). Results go to
//! `benches/results/history.{json,txt}`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walsync::compact;
use walsync::ltx::{self, Header};
use walsync::restore::{self, Plan, RestoreOptions, Target};
use walsync::storage::{
    Metadata, ObjectInfo, Precondition, S3Config, S3Options, S3Storage, Storage,
};
use walsync::storage::{META_SHA256, META_TIMESTAMP};

const PS: usize = 4096;
const ROW: usize = 2000;
const MARK: &[u8; 16] = b"WALSYNC-BENCH-RW";

/// Counts requests by kind.
#[derive(Default)]
struct Counts {
    get: AtomicU64,
    list: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    delete: AtomicU64,
}

impl Counts {
    fn snapshot(&self) -> [u64; 5] {
        [
            self.get.load(Ordering::Relaxed),
            self.list.load(Ordering::Relaxed),
            self.head.load(Ordering::Relaxed),
            self.put.load(Ordering::Relaxed),
            self.delete.load(Ordering::Relaxed),
        ]
    }
}

struct Counting {
    inner: S3Storage,
    n: Arc<Counts>,
}

/// Every method written out (none left to the trait's defaults).
impl Storage for Counting {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> walsync::Result<()> {
        self.n.put.fetch_add(1, Ordering::Relaxed);
        self.inner.put(key, body, meta)
    }
    fn get_with_info(&self, key: &str) -> walsync::Result<(Vec<u8>, ObjectInfo)> {
        self.n.get.fetch_add(1, Ordering::Relaxed);
        self.inner.get_with_info(key)
    }
    fn get(&self, key: &str) -> walsync::Result<Vec<u8>> {
        self.n.get.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> walsync::Result<Vec<u8>> {
        self.n.get.fetch_add(1, Ordering::Relaxed);
        self.inner.get_range(key, start, len)
    }
    fn head(&self, key: &str) -> walsync::Result<Option<ObjectInfo>> {
        self.n.head.fetch_add(1, Ordering::Relaxed);
        self.inner.head(key)
    }
    fn list(&self, prefix: &str, after: Option<&str>) -> walsync::Result<Vec<ObjectInfo>> {
        // One request per page of 1,000 keys.
        let mut out: Vec<ObjectInfo> = Vec::new();
        let mut after = after.map(str::to_string);
        loop {
            let page = self.list_page(prefix, after.as_deref(), 1000)?;
            let full = page.len() == 1000;
            after = page.last().map(|o| o.key.clone());
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> walsync::Result<Vec<ObjectInfo>> {
        self.n.list.fetch_add(1, Ordering::Relaxed);
        self.inner.list_page(prefix, after, max)
    }
    fn put_stream(
        &self,
        key: &str,
        body: &mut dyn walsync::storage::Source,
        meta: &Metadata,
    ) -> walsync::Result<()> {
        self.n.put.fetch_add(1, Ordering::Relaxed);
        self.inner.put_stream(key, body, meta)
    }
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> walsync::Result<bool> {
        self.inner.put_conditional(key, body, meta, cond)
    }
    fn get_with_etag(&self, key: &str) -> walsync::Result<Option<(Vec<u8>, String)>> {
        self.inner.get_with_etag(key)
    }
    fn delete_many(&self, keys: &[String]) -> walsync::Result<()> {
        self.n.delete.fetch_add(1, Ordering::Relaxed);
        self.inner.delete_many(keys)
    }
    fn check(&self) -> walsync::Result<()> {
        self.inner.check()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

struct Args {
    hours: u64,
    writes: u64,
    put_interval: u64,
    rows: usize,
    out: String,
}

fn args() -> Args {
    let mut a = Args {
        hours: 24,
        writes: 10,
        put_interval: 1,
        rows: 2000,
        out: "benches/results".into(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = || v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--hours" => a.hours = val().parse().expect("--hours N"),
            "--writes" => a.writes = val().parse().expect("--writes N"),
            "--put-interval" => a.put_interval = val().parse().expect("--put-interval SECONDS"),
            "--rows" => a.rows = val().parse().expect("--rows N"),
            "--out" => a.out = val(),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

/// A tiny deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The database model: page images and the writable regions in them.
struct Model {
    pages: Vec<Vec<u8>>,
    regions: Vec<(usize, usize)>, // (page index, offset)
}

fn build_model(rows: usize, dir: &Path) -> Model {
    let path = dir.join("model.db");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    let mut blob = MARK.to_vec();
    blob.resize(ROW, b'a');
    let tx = c.unchecked_transaction().unwrap();
    for id in 0..rows {
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2)",
            rusqlite::params![id as i64, blob],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(c);
    let bytes = std::fs::read(&path).unwrap();
    let pages: Vec<Vec<u8>> = bytes.chunks(PS).map(|c| c.to_vec()).collect();
    let mut regions = Vec::new();
    for (i, p) in pages.iter().enumerate() {
        let mut at = 0;
        while let Some(off) = p[at..].windows(MARK.len()).position(|w| w == MARK) {
            let start = at + off + MARK.len();
            if start + ROW - MARK.len() <= PS {
                regions.push((i, start));
            }
            at = start;
        }
    }
    assert!(
        regions.len() >= rows * 9 / 10,
        "found {} regions",
        regions.len()
    );
    Model { pages, regions }
}

fn meta_for(h: &Header, body: &[u8]) -> Metadata {
    Metadata::new()
        .with(
            META_TIMESTAMP,
            ltx::format_timestamp_ms(h.timestamp_ms).unwrap(),
        )
        .with(
            META_SHA256,
            walsync::util::hex(ring::digest::digest(&ring::digest::SHA256, body).as_ref()),
        )
}

use walsync::util::now_ms;

fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`:
    // the simulation is a benchmark, not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("history: skipped (run it with `make bench-history`)");
        return;
    }
    let a = args();
    let Some(bucket) = std::env::var("WALSYNC_TEST_BUCKET")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        eprintln!("history: needs the S3 environment (run it as `make bench-history`)");
        std::process::exit(2);
    };
    let config = S3Config::from_spec(
        &format!("s3://{bucket}/bench-history"),
        &S3Options::default(),
    )
    .expect("S3 environment");
    let counts = Arc::new(Counts::default());
    let storage: Arc<dyn Storage> = Arc::new(Counting {
        inner: S3Storage::new(config).unwrap(),
        n: counts.clone(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut model = build_model(a.rows, tmp.path());
    let commit = model.pages.len() as u32;
    let db = format!("history-{}.db", now_ms());
    // End one object before the hour: the longest chain the level
    // structure produces (every level holds its most objects then).
    let seconds = a.hours * 3600 - a.put_interval;
    let start_ms = now_ms() - seconds as i64 * 1000;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let t_build = Instant::now();

    // Txid 1: the snapshot at the start.
    let snap_h = Header::new(PS as u32, commit, 1, 1, start_ms);
    let pages: Vec<(u32, Vec<u8>)> = model
        .pages
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 + 1 != ltx::lock_pgno(PS as u32))
        .map(|(i, p)| (i as u32 + 1, p.clone()))
        .collect();
    let body = ltx::encode_to_vec(snap_h, pages).unwrap();
    storage
        .put(
            &ltx::object_key("", &db, 9, 1, 1),
            &body,
            &meta_for(&snap_h, &body),
        )
        .unwrap();

    // Level-0 objects, PUT by 8 threads; compaction at the simulated
    // boundaries once the objects it merges are stored.
    let (tx, rx) = crossbeam_channel::bounded::<(String, Vec<u8>, Metadata)>(256);
    let putters: Vec<_> = (0..8)
        .map(|_| {
            let rx = rx.clone();
            let s = storage.clone();
            std::thread::spawn(move || {
                for (k, b, m) in rx {
                    s.put(&k, &b, &m).unwrap();
                }
            })
        })
        .collect();
    let cancel = AtomicBool::new(false);
    let mut ends = [0u64; 4];
    let mut txid = 1u64;
    let mut l0_objects = 0u64;
    let mut compactions = [0u64; 4];
    let mut hot = 0usize;
    let per_segment = a.writes * a.put_interval;
    let mut sec = 0u64;
    let mut hour_txid = 1u64;
    let mut hour_image: Vec<u8> = model.pages.concat();
    while sec < seconds {
        sec += a.put_interval;
        let mut changed: BTreeMap<u32, ()> = BTreeMap::new();
        for _ in 0..per_segment {
            // Recent rows are hot: 3 of 4 writes go to the last 5 %.
            let n = model.regions.len();
            let r = if rng.next() % 4 == 0 {
                (rng.next() as usize) % n
            } else {
                n - 1 - ((rng.next() as usize + hot) % (n / 20).max(1))
            };
            hot = hot.wrapping_add(1);
            let (pi, off) = model.regions[r];
            let region = &mut model.pages[pi][off..off + ROW - MARK.len()];
            for (j, b) in region.iter_mut().enumerate() {
                *b = if j % 4 == 0 { rng.next() as u8 } else { b'b' };
            }
            changed.insert(pi as u32 + 1, ());
        }
        txid += 1;
        let ts = start_ms + sec as i64 * 1000;
        let h = Header::new(PS as u32, commit, txid, txid, ts);
        let pages: Vec<(u32, Vec<u8>)> = changed
            .keys()
            .map(|p| (*p, model.pages[*p as usize - 1].clone()))
            .collect();
        let body = ltx::encode_to_vec(h, pages).unwrap();
        let meta = meta_for(&h, &body);
        tx.send((ltx::object_key("", &db, 0, txid, txid), body, meta))
            .unwrap();
        l0_objects += 1;
        for (level, every) in [(1usize, 30u64), (2, 300), (3, 3600)] {
            if sec % every == 0 {
                if level == 1 {
                    // The level-0 objects must be stored before merging.
                    while !rx.is_empty() {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let ctx = compact::Ctx {
                    tmp_dir: tmp.path(),
                    cancel: &cancel,
                    recent: None,
                    lineage: 0,
                };
                while let Some(o) =
                    compact::compact_level(&*storage, &db, level as u8, ends[level], &ctx).unwrap()
                {
                    ends[level] = o.max_txid;
                    compactions[level] += 1;
                }
            }
        }
        if sec % 3600 == 0 {
            hour_txid = txid;
            hour_image = model.pages.concat();
            eprintln!(
                "history: hour {}/{}: txid {txid}, {:.0} s",
                sec / 3600,
                a.hours,
                t_build.elapsed().as_secs_f64()
            );
        }
    }
    drop(tx);
    for p in putters {
        p.join().unwrap();
    }
    let build_secs = t_build.elapsed().as_secs_f64();
    let expected: Vec<u8> = model.pages.concat();

    // Restore the newest state: compacted chain, then level 0 alone.
    let opts = RestoreOptions::default();
    let run = |plan: &Plan, name: &str, expected: &[u8]| -> (f64, [u64; 5], usize, u64) {
        let out = tmp.path().join(name);
        let before = counts.snapshot();
        let t = Instant::now();
        let summary = restore::restore(&*storage, plan, &out, &opts).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let after = counts.snapshot();
        let got = std::fs::read(&out).unwrap();
        assert!(
            got == expected,
            "{name}: restored file differs from the model"
        );
        let _ = std::fs::remove_file(&out);
        let d = [0, 1, 2, 3, 4].map(|i| after[i] - before[i]);
        (secs, d, summary.objects, summary.bytes)
    };
    let before_plan = counts.snapshot();
    let t = Instant::now();
    let plan = restore::plan(&*storage, &db, Target::Latest).unwrap();
    let plan_secs = t.elapsed().as_secs_f64();
    let plan_reqs = counts.snapshot()[1] - before_plan[1];
    let (c_secs, c_reqs, c_objs, c_bytes) = run(&plan, "compacted.db", &expected);
    let c_total = c_secs + plan_secs;
    // The state at the last full hour: every level had just been merged.
    let before_plan = counts.snapshot();
    let t = Instant::now();
    let hplan = restore::plan(&*storage, &db, Target::Txid(hour_txid)).unwrap();
    let hplan_secs = t.elapsed().as_secs_f64();
    let hplan_reqs = counts.snapshot()[1] - before_plan[1];
    let (h_secs, h_reqs, h_objs, h_bytes) = run(&hplan, "hour.db", &hour_image);
    let h_total = h_secs + hplan_secs;

    let before_plan = counts.snapshot();
    let t = Instant::now();
    let replica = walsync::replica::list(&*storage, &db).unwrap();
    let mut l0: Vec<_> = replica
        .objects
        .iter()
        .filter(|o| o.level == 0 || (o.level == 9 && o.max_txid == 1))
        .cloned()
        .collect();
    l0.sort_by_key(|o| (o.min_txid, o.level == 0));
    let l0_plan = Plan {
        db: db.clone(),
        location: replica.location.clone(),
        txid,
        objects: l0,
    };
    let l0_plan_secs = t.elapsed().as_secs_f64();
    let l0_list = counts.snapshot()[1] - before_plan[1];
    let (u_secs, u_reqs, u_objs, u_bytes) = run(&l0_plan, "level0.db", &expected);
    let u_total = u_secs + l0_plan_secs;

    let text = format!(
        "history: {} h at {} writes/s, one level-0 object per {} s: {} level-0 objects, \
         compactions L1 {} / L2 {} / L3 {}, database {} pages of {PS} bytes; built in {build_secs:.0} s\n\
         restore newest, compacted:  {:>7.2} s  {:>4} objects  {:>11} bytes  GET {:>6}  LIST {:>4}  (plan {plan_reqs} LIST, {plan_secs:.2} s)\n\
         restore at the last hour:   {h_total:>7.2} s  {h_objs:>4} objects  {h_bytes:>11} bytes  GET {:>6}  LIST {:>4}  (txid {hour_txid}: every level just merged)\n\
         restore newest, level 0:    {:>7.2} s  {:>4} objects  {:>11} bytes  GET {:>6}  LIST {:>4}  (listing {l0_list} LIST, {l0_plan_secs:.2} s)\n\
         speed-up {:.1}x, GETs {:.0}x fewer\n",
        a.hours,
        a.writes,
        a.put_interval,
        l0_objects,
        compactions[1],
        compactions[2],
        compactions[3],
        commit,
        c_total,
        c_objs,
        c_bytes,
        c_reqs[0],
        c_reqs[1] + plan_reqs,
        h_reqs[0],
        h_reqs[1] + hplan_reqs,
        u_total,
        u_objs,
        u_bytes,
        u_reqs[0],
        u_reqs[1] + l0_list,
        u_total / c_total,
        u_reqs[0] as f64 / c_reqs[0].max(1) as f64,
    );
    print!("{text}");
    let json = format!(
        "{{\"hours\":{},\"writes_per_sec\":{},\"put_interval_s\":{},\"level0_objects\":{},\
         \"compactions\":[{},{},{}],\"pages\":{},\"build_s\":{build_secs:.1},\
         \"compacted\":{{\"seconds\":{c_total:.3},\"objects\":{c_objs},\"bytes\":{c_bytes},\"get\":{},\"list\":{}}},\
         \"at_last_hour\":{{\"txid\":{hour_txid},\"seconds\":{h_total:.3},\"objects\":{h_objs},\"bytes\":{h_bytes},\"get\":{},\"list\":{}}},\
         \"level0\":{{\"seconds\":{u_total:.3},\"objects\":{u_objs},\"bytes\":{u_bytes},\"get\":{},\"list\":{}}}}}\n",
        a.hours,
        a.writes,
        a.put_interval,
        l0_objects,
        compactions[1],
        compactions[2],
        compactions[3],
        commit,
        c_reqs[0],
        c_reqs[1] + plan_reqs,
        h_reqs[0],
        h_reqs[1] + hplan_reqs,
        u_reqs[0],
        u_reqs[1] + l0_list,
    );
    std::fs::create_dir_all(&a.out).unwrap();
    std::fs::write(Path::new(&a.out).join("history.txt"), &text).unwrap();
    std::fs::write(Path::new(&a.out).join("history.json"), json).unwrap();
    // Leave the bucket clean for the next run.
    let keys: Vec<String> = walsync::replica::list(&*storage, &db)
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    compact::delete_keys(&*storage, &keys).unwrap();
}
