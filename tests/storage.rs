//! The storage contract, run against both backends: a local directory
//! (`FileStorage`) always, and the local Garage server (`S3Storage`) when
//! `scripts/s3-server.sh start` exported its environment.

mod common;

use std::path::Path;
use std::time::Instant;

use walsync::storage::{self, FileStorage, Metadata, S3Config, S3Options, S3Storage, Storage};
use walsync::StorageErrorKind;

/// Objects for the pagination check: more than one 1000-key S3 page.
const LIST_COUNT: usize = 1100;

fn kind<T: std::fmt::Debug>(r: walsync::Result<T>) -> StorageErrorKind {
    r.expect_err("expected an error")
        .storage_kind()
        .expect("expected a storage error")
}

fn keys(infos: &[storage::ObjectInfo]) -> Vec<String> {
    infos.iter().map(|i| i.key.clone()).collect()
}

/// Puts `keys` (body = key bytes) with a few threads.
fn put_parallel(s: &dyn Storage, keys: &[String]) {
    let threads = 8;
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for key in keys.iter().skip(t).step_by(threads) {
                    s.put(key, key.as_bytes(), &Metadata::new())
                        .unwrap_or_else(|e| panic!("put {key}: {e}"));
                }
            });
        }
    });
}

/// The whole contract. `s` must be empty (a fresh prefix or directory).
fn run_suite(s: &dyn Storage) {
    let t0 = Instant::now();
    let none = Metadata::new();

    // Round trips: empty and 5 MB bodies.
    s.put("rt/empty", b"", &none).unwrap();
    assert_eq!(s.get("rt/empty").unwrap(), b"");
    assert_eq!(s.head("rt/empty").unwrap().unwrap().size, 0);
    let big = common::pseudo_random(5 * 1024 * 1024, 1);
    s.put("rt/big", &big, &none).unwrap();
    assert!(s.get("rt/big").unwrap() == big, "5 MB body differs");
    let info = s.head("rt/big").unwrap().unwrap();
    assert_eq!((info.key.as_str(), info.size), ("rt/big", big.len() as u64));
    assert!(info.last_modified.is_some());

    // Metadata via head and get.
    let meta = Metadata::new()
        .with("litestream-timestamp", "2024-05-01T10:00:00.123456789Z")
        .with("walsync-sha256", "ab".repeat(32));
    s.put("meta/obj", b"payload", &meta).unwrap();
    assert_eq!(s.head("meta/obj").unwrap().unwrap().metadata, meta);
    let (body, info) = s.get_with_info("meta/obj").unwrap();
    assert_eq!((body.as_slice(), info.size), (&b"payload"[..], 7));
    assert_eq!(info.metadata, meta);
    let bad = Metadata::new().with("bad name", "x");
    assert_eq!(kind(s.put("meta/bad", b"", &bad)), StorageErrorKind::Other);

    // Missing objects.
    assert_eq!(s.head("missing/x").unwrap(), None);
    assert_eq!(kind(s.get("missing/x")), StorageErrorKind::NotFound);
    assert_eq!(
        kind(s.get_range("missing/x", 0, Some(1))),
        StorageErrorKind::NotFound
    );
    let e = s.get("missing/x").unwrap_err().to_string();
    assert!(e.contains("missing/x") && !e.contains('\n'), "{e}");

    // Listing: order, pagination, start_after, prefixes.
    let t_list = Instant::now();
    let list_keys: Vec<String> = (0..LIST_COUNT)
        .rev()
        .map(|i| format!("list/{i:05}"))
        .collect();
    put_parallel(s, &list_keys);
    let put_time = t_list.elapsed();
    let mut expected = list_keys.clone();
    expected.sort();
    let listed = s.list("list/", None).unwrap();
    assert_eq!(keys(&listed), expected);
    assert!(listed.iter().all(|i| i.size == 10 && i.metadata.is_empty()));
    let after = s.list("list/", Some("list/01049")).unwrap();
    assert_eq!(keys(&after), expected[1050..]);
    assert_eq!(keys(&s.list("list/", Some("list/")).unwrap()), expected);
    assert!(s.list("list/", Some("list/01099")).unwrap().is_empty());
    assert!(s.list("nothing/", None).unwrap().is_empty());
    assert!(s.list("lis/", None).unwrap().is_empty());
    assert_eq!(s.list("lis", None).unwrap().len(), LIST_COUNT);
    // Byte order, not directory-walk order: '-' (2d) < '/' (2f) < '0' (30), 'B' < 'a'.
    for key in ["order/a0", "order/a/b", "order/a-b", "order/B"] {
        s.put(key, b"o", &none).unwrap();
    }
    let order = ["order/B", "order/a-b", "order/a/b", "order/a0"];
    assert_eq!(keys(&s.list("order/", None).unwrap()), order);
    assert_eq!(keys(&s.list("order/a", None).unwrap()), order[1..]);
    assert_eq!(
        keys(&s.list("order/", Some("order/a-b")).unwrap()),
        order[2..]
    );
    println!(
        "{}: put {LIST_COUNT} objects in {put_time:.2?}, listed in {:.2?}",
        s.describe(),
        t_list.elapsed() - put_time
    );

    // Ranged reads.
    let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    s.put("range/obj", &body, &none).unwrap();
    assert_eq!(
        s.get_range("range/obj", 10, Some(20)).unwrap(),
        body[10..30]
    );
    assert_eq!(s.get_range("range/obj", 0, Some(1)).unwrap(), body[..1]);
    assert_eq!(
        s.get_range("range/obj", 990, Some(100)).unwrap(),
        body[990..]
    );
    assert_eq!(s.get_range("range/obj", 100, None).unwrap(), body[100..]);
    assert!(s.get_range("range/obj", 0, Some(0)).unwrap().is_empty());
    assert!(s.get_range("range/obj", 1000, Some(10)).unwrap().is_empty());
    assert!(s.get_range("range/obj", 5000, None).unwrap().is_empty());

    // Overwrite replaces body and metadata.
    s.put(
        "ow/obj",
        b"one",
        &Metadata::new().with("walsync-sha256", "1"),
    )
    .unwrap();
    s.put(
        "ow/obj",
        b"two",
        &Metadata::new().with("walsync-sha256", "2"),
    )
    .unwrap();
    let (body, info) = s.get_with_info("ow/obj").unwrap();
    assert_eq!(body, b"two");
    assert_eq!(info.metadata.get("walsync-sha256"), Some("2"));
    s.put("ow/obj", b"three", &none).unwrap();
    assert_eq!(s.get("ow/obj").unwrap(), b"three");
    assert!(s.head("ow/obj").unwrap().unwrap().metadata.is_empty());

    // delete_many: present and absent keys, empty list, > 1000 keys.
    for key in ["del/1", "del/2", "del/3"] {
        s.put(key, b"d", &none).unwrap();
    }
    s.delete_many(&["del/1".into(), "del/absent".into(), "del/2".into()])
        .unwrap();
    assert_eq!(keys(&s.list("del/", None).unwrap()), ["del/3"]);
    assert_eq!(s.head("del/1").unwrap(), None);
    s.delete_many(&[]).unwrap();
    s.delete_many(&list_keys).unwrap();
    assert!(s.list("list/", None).unwrap().is_empty());

    // Leave the store empty.
    let rest = keys(&s.list("", None).unwrap());
    assert!(rest.contains(&"rt/big".to_string()), "{rest:?}");
    s.delete_many(&rest).unwrap();
    assert!(s.list("", None).unwrap().is_empty());
    println!("{}: suite passed in {:.2?}", s.describe(), t0.elapsed());
}

/// Every file name under `dir`, recursively.
fn walk(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            walk(&entry.path(), out);
        } else {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn file_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::create(dir.path().join("replica")).unwrap();
    s.check().unwrap();
    run_suite(&s);
}

#[test]
fn file_put_leaves_no_temp_files_and_nests_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let s = storage::open(&url, &S3Options::default()).unwrap();
    assert_eq!(s.describe(), url);
    let meta = Metadata::new().with("walsync-sha256", "00");
    s.put("db/0000/a.ltx", b"a", &meta).unwrap();
    s.put("db/0000/a.ltx", b"b", &meta).unwrap();
    s.put("x/y/z/w.ltx", b"w", &Metadata::new()).unwrap();
    assert_eq!(std::fs::read(dir.path().join("x/y/z/w.ltx")).unwrap(), b"w");
    assert_eq!(
        keys(&s.list("", None).unwrap()),
        ["db/0000/a.ltx", "x/y/z/w.ltx"]
    );
    assert_eq!(keys(&s.list("x/y/", None).unwrap()), ["x/y/z/w.ltx"]);
    let mut names = Vec::new();
    walk(dir.path(), &mut names);
    names.sort();
    assert_eq!(names, [".a.ltx.meta", "a.ltx", "w.ltx"], "temp files left");
    // A key that is a directory is not an object.
    assert_eq!(s.head("x/y").unwrap(), None);
    assert_eq!(kind(s.get("x/y")), StorageErrorKind::NotFound);
    // Keys that would escape the directory or clash with private files.
    for bad in ["../x", "a/./b", "/abs", "a/.meta"] {
        assert!(s.put(bad, b"", &Metadata::new()).is_err(), "{bad}");
    }
}

#[test]
fn s3_suite() {
    let Some(s) = common::s3_storage_or_skip("s3_suite") else {
        return;
    };
    s.check().unwrap();
    run_suite(&*s);
}

#[test]
fn s3_open_by_url() {
    let Some(config) = common::s3_config_or_skip("s3_open_by_url") else {
        return;
    };
    let url = format!("s3://{}/{}", config.bucket, config.prefix);
    let s = storage::open(&url, &S3Options::default()).unwrap();
    assert_eq!(s.describe(), url);
    s.check().unwrap();
    s.put("k", b"v", &Metadata::new()).unwrap();
    assert_eq!(s.get("k").unwrap(), b"v");
    s.delete_many(&["k".into()]).unwrap();
}

/// Builds a client from `config` and asserts that every verb fails with `want`.
fn assert_all_fail(config: S3Config, want: StorageErrorKind, must_name: &str) {
    let secret = config
        .credentials
        .as_ref()
        .map(|c| c.secret_access_key.clone());
    let s = S3Storage::new(config).unwrap();
    let e = s.check().unwrap_err();
    let text = e.to_string();
    println!("check: {text}");
    assert_eq!(e.storage_kind(), Some(want), "{text}");
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(
        text.contains(must_name),
        "does not name {must_name}: {text}"
    );
    if let Some(secret) = secret {
        assert!(!text.contains(&secret), "leaks the secret: {text}");
    }
    assert_eq!(kind(s.put("k", b"v", &Metadata::new())), want);
    assert_eq!(kind(s.get("k")), want);
    assert_eq!(kind(s.list("", None)), want);
    assert_eq!(kind(s.delete_many(&["k".into()])), want);
}

#[test]
fn s3_wrong_secret_is_access_denied() {
    let Some(mut config) = common::s3_config_or_skip("s3_wrong_secret") else {
        return;
    };
    if let Some(c) = config.credentials.as_mut() {
        c.secret_access_key = "0".repeat(64);
    }
    let bucket = config.bucket.clone();
    assert_all_fail(config, StorageErrorKind::AccessDenied, &bucket);
}

#[test]
fn s3_missing_bucket_is_no_such_bucket() {
    let Some(mut config) = common::s3_config_or_skip("s3_missing_bucket") else {
        return;
    };
    config.bucket = format!("walsync-missing-{}", std::process::id());
    let bucket = config.bucket.clone();
    assert_all_fail(config, StorageErrorKind::NoSuchBucket, &bucket);
}

#[test]
fn s3_unreachable_endpoint_is_transient() {
    // Needs no server: a closed port on 127.0.0.1 refuses connections.
    let spec = "s3://walsync-unreachable/p";
    let opts = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{}", common::closed_port())),
        region: Some("garage".into()),
        path_style: None,
    };
    let config = S3Config::from_spec_with_env(spec, &opts, |name| match name {
        "AWS_ACCESS_KEY_ID" => Some("GK000000000000000000000000".into()),
        "AWS_SECRET_ACCESS_KEY" => Some("0".repeat(64)),
        _ => None,
    })
    .unwrap();
    let t = Instant::now();
    assert_all_fail(config, StorageErrorKind::Transient, "walsync-unreachable");
    assert!(
        t.elapsed().as_secs() < 5,
        "no hidden retries: {:?}",
        t.elapsed()
    );
}

/// A directory store that records which trait method reached it.
struct Probe {
    inner: FileStorage,
    calls: std::sync::Mutex<Vec<&'static str>>,
}

impl Probe {
    fn note(&self, what: &'static str) {
        self.calls.lock().unwrap().push(what);
    }

    fn take(&self) -> Vec<&'static str> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }
}

/// Every method written out (none left to the trait's defaults).
impl Storage for Probe {
    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> walsync::Result<()> {
        self.note("put");
        self.inner.put(key, body, meta)
    }
    fn get_with_info(&self, key: &str) -> walsync::Result<(Vec<u8>, storage::ObjectInfo)> {
        self.note("get_with_info");
        self.inner.get_with_info(key)
    }
    fn get(&self, key: &str) -> walsync::Result<Vec<u8>> {
        self.note("get");
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> walsync::Result<Vec<u8>> {
        self.note("get_range");
        self.inner.get_range(key, start, len)
    }
    fn head(&self, key: &str) -> walsync::Result<Option<storage::ObjectInfo>> {
        self.note("head");
        self.inner.head(key)
    }
    fn list(&self, prefix: &str, after: Option<&str>) -> walsync::Result<Vec<storage::ObjectInfo>> {
        self.note("list");
        self.inner.list(prefix, after)
    }
    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max_keys: usize,
    ) -> walsync::Result<Vec<storage::ObjectInfo>> {
        self.note("list_page");
        self.inner.list_page(prefix, after, max_keys)
    }
    fn put_stream(
        &self,
        key: &str,
        body: &mut dyn walsync::storage::Source,
        meta: &Metadata,
    ) -> walsync::Result<()> {
        self.note("put_stream");
        self.inner.put_stream(key, body, meta)
    }
    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &storage::Precondition,
    ) -> walsync::Result<bool> {
        self.note("put_conditional");
        self.inner.put_conditional(key, body, meta, cond)
    }
    fn get_with_etag(&self, key: &str) -> walsync::Result<Option<(Vec<u8>, String)>> {
        self.note("get_with_etag");
        self.inner.get_with_etag(key)
    }
    fn delete_many(&self, keys: &[String]) -> walsync::Result<()> {
        self.note("delete_many");
        self.inner.delete_many(keys)
    }
    fn check(&self) -> walsync::Result<()> {
        self.note("check");
        self.inner.check()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Every wrapper passes `put_stream` (also under `put_file`), `list_page`,
/// `put_conditional` and `get_with_etag` on as themselves: a wrapper
/// answering `put_stream` with a whole-body read and `put`, or `list_page` with a full `list`, would turn
/// a streamed snapshot into one allocation of its size or a short probe into
/// a listing of everything.
#[test]
fn wrappers_forward_streaming_and_conditional_methods() {
    use std::sync::Arc;
    use walsync::lease::{FencedStorage, Fencer, Mode};
    use walsync::storage::crypt::Key;
    use walsync::storage::{
        CountingStorage, CryptStorage, Keyring, Precondition, RateLimited, RetryReads,
        RoutedStorage,
    };

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bucket");
    let probe = Arc::new(Probe {
        inner: FileStorage::create(&root).unwrap(),
        calls: Default::default(),
    });
    let inner: Arc<dyn Storage> = probe.clone();
    let src = dir.path().join("body");
    std::fs::write(&src, common::pseudo_random(100_000, 3)).unwrap();
    // The lease goes to the same directory, past the probe.
    let fencer = Arc::new(Fencer::new(
        Arc::new(FileStorage::create(&root).unwrap()),
        Mode::Conditional,
        std::time::Duration::from_secs(60),
    ));
    fencer.acquire("app.db", None).unwrap();
    let keys = Keyring::new(Key::from_bytes([5; 32]), vec![]);
    let wrappers: Vec<(&str, Box<dyn Storage>)> = vec![
        ("Arc", Box::new(inner.clone())),
        ("Box", Box::new(Box::new(inner.clone()) as Box<dyn Storage>)),
        ("RoutedStorage", Box::new(RoutedStorage::new(inner.clone()))),
        (
            "RateLimited",
            Box::new(RateLimited::new(inner.clone(), 1000)),
        ),
        (
            "CountingStorage",
            Box::new(CountingStorage::new(inner.clone())),
        ),
        ("RetryReads", Box::new(RetryReads(&*probe))),
        (
            "FencedStorage",
            Box::new(FencedStorage::new(inner.clone(), fencer)),
        ),
        (
            "CryptStorage",
            Box::new(CryptStorage::new(inner.clone(), keys)),
        ),
    ];
    for (n, (what, s)) in wrappers.iter().enumerate() {
        let key = |i: u64| format!("app.db/0009/{:016x}-{:016x}.ltx", 1, 100 * n as u64 + i);
        probe.take();
        s.put_file(&key(1), &src, &Metadata::new()).unwrap();
        assert_eq!(probe.take(), ["put_stream"], "{what}: put_file");
        s.list_page("app.db/0009/", None, 1).unwrap();
        assert_eq!(probe.take(), ["list_page"], "{what}: list_page");
        let stored = s
            .put_conditional(&key(2), b"x", &Metadata::new(), &Precondition::Absent)
            .unwrap();
        assert!(stored, "{what}");
        assert_eq!(probe.take(), ["put_conditional"], "{what}: put_conditional");
        let (body, etag) = s.get_with_etag(&key(2)).unwrap().unwrap();
        assert_eq!(body, b"x", "{what}");
        assert_eq!(probe.take(), ["get_with_etag"], "{what}: get_with_etag");
        // The ETag is the inner store's own: a conditional overwrite with it
        // goes through, one with another ETag is refused.
        let cond = Precondition::Matches(etag);
        assert!(s
            .put_conditional(&key(2), b"y", &Metadata::new(), &cond)
            .unwrap());
        assert!(!s
            .put_conditional(&key(2), b"z", &Metadata::new(), &cond)
            .unwrap());
    }
}
