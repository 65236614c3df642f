//! `Storage::put_file` streams: storing a 64 MiB file through the directory
//! backend, alone and under every wrapper the daemon stacks on it, never
//! holds more than a few MiB. A global allocator in this test binary records
//! the largest single allocation and the peak of live heap bytes while each
//! call runs; a whole-file read (the old trait default, which `FileStorage`
//! inherited) shows up as one 64 MiB allocation.
//!
//! One `#[test]` only: the allocator counts every thread of the process,
//! so nothing else may run beside the measured call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use walsync::lease::{FencedStorage, Fencer, Mode};
use walsync::storage::crypt::Key;
use walsync::storage::{
    CountingStorage, CryptStorage, FileStorage, Keyring, Metadata, RateLimited, RetryReads,
    RoutedStorage, Storage,
};

struct Meter;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::SeqCst) + size;
    PEAK.fetch_max(live, Ordering::SeqCst);
    LARGEST.fetch_max(size, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Meter {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static METER: Meter = Meter;

const FILE_SIZE: usize = 64 << 20;
const LIMIT: usize = 8 << 20;

/// Runs `f`; returns (largest allocation, peak growth of live bytes).
fn measure(f: impl FnOnce()) -> (usize, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    f();
    let peak = PEAK.load(Ordering::SeqCst);
    (LARGEST.load(Ordering::SeqCst), peak.saturating_sub(base))
}

/// Deterministic bytes, 1 MiB at a time.
fn block(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn write_source(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..FILE_SIZE >> 20 {
        f.write_all(&block(i)).unwrap();
    }
    f.sync_all().unwrap();
}

/// The object `key` read back through `s` equals the source, 1 MiB at a time.
fn assert_same(s: &dyn Storage, key: &str, src: &Path, what: &str) {
    let mut f = std::fs::File::open(src).unwrap();
    let mut want = vec![0u8; 1 << 20];
    for i in 0..FILE_SIZE >> 20 {
        f.read_exact(&mut want).unwrap();
        let got = s.get_range(key, (i << 20) as u64, Some(1 << 20)).unwrap();
        assert!(got == want, "{what}: MiB {i} of {key} differs");
    }
    let info = s.head(key).unwrap().unwrap();
    assert_eq!(info.size, FILE_SIZE as u64, "{what}: size");
}

#[test]
fn put_file_holds_a_few_mib_whatever_the_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("snapshot.ltx.tmp");
    write_source(&src);
    let meta = Metadata::new()
        .with("litestream-timestamp", "2024-05-01T10:00:00.123456789Z")
        .with("walsync-sha256", "ab".repeat(32));
    let file = Arc::new(FileStorage::create(dir.path().join("bucket")).unwrap());
    let file_dyn: Arc<dyn Storage> = file.clone();

    // The daemon's stack: routed → rate limited → counting → fenced.
    let routed = Arc::new(RoutedStorage::new(file_dyn.clone()));
    let limited: Arc<dyn Storage> = Arc::new(RateLimited::new(routed.clone(), 1000));
    let counting: Arc<dyn Storage> = Arc::new(CountingStorage::new(limited));
    let fencer = Arc::new(Fencer::new(
        counting.clone(),
        Mode::Conditional,
        Duration::from_secs(60),
    ));
    fencer.acquire("app.db", None).unwrap();
    let fenced: Arc<dyn Storage> = Arc::new(FencedStorage::new(counting.clone(), fencer));
    let crypt: Arc<dyn Storage> = Arc::new(CryptStorage::new(
        file_dyn.clone(),
        Keyring::new(Key::from_bytes([9; 32]), vec![]),
    ));
    let retry = RetryReads(&*file_dyn);
    let boxed: Box<dyn Storage> = Box::new(file.as_ref().clone());

    let key = |n: u32| format!("app.db/0009/0000000000000001-{n:016x}.ltx");
    let stacks: Vec<(&str, &dyn Storage)> = vec![
        ("FileStorage", file.as_ref()),
        ("Arc<dyn Storage>", &file_dyn),
        ("Box<dyn Storage>", &boxed),
        ("RoutedStorage", routed.as_ref()),
        ("Counting(RateLimited(Routed))", counting.as_ref()),
        ("Fenced(Counting(...))", fenced.as_ref()),
        ("CryptStorage", crypt.as_ref()),
        ("RetryReads", &retry),
    ];
    let mut failures = Vec::new();
    for (i, (what, s)) in stacks.iter().enumerate() {
        let k = key(i as u32 + 1);
        let (largest, peak) = measure(|| s.put_file(&k, &src, &meta).unwrap());
        eprintln!("{what}: largest allocation {largest} B, peak growth {peak} B");
        if largest > LIMIT || peak > LIMIT {
            failures.push(format!(
                "{what}: largest allocation {largest} B, peak growth {peak} B (limit {LIMIT} B)"
            ));
        }
        assert_same(*s, &k, &src, what);
        let stored = s.head(&k).unwrap().unwrap().metadata;
        assert_eq!(
            stored.get("litestream-timestamp"),
            meta.get("litestream-timestamp"),
            "{what}"
        );
        if *what != "CryptStorage" {
            // Encrypted objects do not store the plaintext's hash.
            assert_eq!(stored.get("walsync-sha256"), meta.get("walsync-sha256"));
        }
    }
    // The plain object is byte for byte the source file, metadata included.
    let plain = dir.path().join("bucket").join(key(1));
    assert_eq!(
        std::fs::metadata(&plain).unwrap().len(),
        FILE_SIZE as u64,
        "{}",
        plain.display()
    );
    assert_eq!(file.head(&key(1)).unwrap().unwrap().metadata, meta);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // No temporary file left beside the objects.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("bucket/app.db/0009"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
