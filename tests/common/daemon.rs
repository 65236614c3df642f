//! Helpers of the tests that run `walsync-sync` / `walsync` as child
//! processes (through [`super::process`]): a database with a writer table,
//! Prometheus scraping, `walsync restore` through an endpoint, and the
//! end-to-end tests' [`Env`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walsync::storage::{S3Storage, Storage};

use super::oracle::Oracle;
use super::process::{text, Cmd, Proc};

/// A WAL-mode database at `path` with table `t(id INTEGER PRIMARY KEY, v BLOB)`.
pub fn create_db(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;
         CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    c
}

/// One committed transaction inserting `rows` rows of 100 bytes.
pub fn commit(c: &rusqlite::Connection, rows: usize) {
    let tx = c.unchecked_transaction().unwrap();
    for _ in 0..rows {
        tx.execute("INSERT INTO t(v) VALUES (randomblob(100))", [])
            .unwrap();
    }
    tx.commit().unwrap();
}

/// `GET http://addr/metrics`, or `None` while nothing answers.
pub fn scrape(addr: &str) -> Option<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(&format!("http://{addr}/metrics")).call().ok()?;
    resp.body_mut().read_to_string().ok()
}

/// The value of the sample `name{labels}` (labels exactly as rendered, e.g.
/// `db="a.db",kind="PUT"`; empty for none) in a Prometheus text page.
pub fn metric(page: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Where `walsync restore` reads from (through `endpoint`, e.g. the fault
/// proxy).
pub struct RestoreFrom {
    pub bin: String,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: String,
}

impl RestoreFrom {
    /// `walsync restore <db> -o <out> --bucket s3://<bucket>/<prefix>
    /// --endpoint <endpoint> --path-style [extra]`, with a time bound.
    pub fn run(&self, db: &str, out: &Path, extra: &[&str]) -> std::process::Output {
        Cmd::new(&self.bin)
            .args(["restore", db, "-o"])
            .arg(out)
            .args([
                "--bucket",
                &format!("s3://{}/{}", self.bucket, self.prefix),
                "--endpoint",
                &self.endpoint,
                "--path-style",
            ])
            .args(extra)
            .env("RUST_LOG", "walsync=warn")
            .output()
    }

    /// [`RestoreFrom::run`], which must succeed; the restored database, open.
    pub fn open(&self, db: &str, out: &Path, extra: &[&str]) -> rusqlite::Connection {
        let r = self.run(db, out, extra);
        assert!(
            r.status.success(),
            "{db}: walsync restore {} failed: {}",
            extra.join(" "),
            text(&r)
        );
        rusqlite::Connection::open(out).unwrap_or_else(|e| panic!("open {}: {e}", out.display()))
    }
}

/// The end-to-end tests' world (tests/sync.rs, tests/tenants.rs): a
/// directory for databases, the bucket and prefix, the storage client for
/// the oracle, and the daemon's log file.
pub struct Env {
    pub name: &'static str,
    pub dir: tempfile::TempDir,
    pub bucket: String,
    pub prefix: String,
    pub storage: Arc<dyn Storage>,
    pub log: PathBuf,
    pub started: Instant,
}

impl Env {
    pub fn new(name: &'static str) -> Option<Env> {
        let config = super::s3_config_or_skip(name)?;
        let bucket = config.bucket.clone();
        let prefix = config.prefix.clone();
        let storage: Arc<dyn Storage> =
            Arc::new(S3Storage::new(config).expect("S3 client for the oracle"));
        let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sync-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log = logs.join(format!("{name}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        eprintln!("{name}: prefix {prefix}, daemon log {}", log.display());
        Some(Env {
            name,
            dir: tempfile::tempdir().unwrap(),
            bucket,
            prefix,
            storage,
            log,
            started: Instant::now(),
        })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn glob(&self) -> String {
        format!("{}/*.db", self.dir.path().display())
    }

    pub fn replica(&self, db: &str) -> Oracle {
        Oracle::new(self.storage.clone(), db)
    }

    /// Start the daemon on `dbs` with extra flags (killed when dropped,
    /// its log's tail printed if the test fails).
    pub fn daemon(&self, dbs: &[String], extra: &[&str]) -> Proc {
        self.daemon_cmd(dbs, extra).spawn(&self.log)
    }

    /// The command [`Env::daemon`] runs, to change before starting it
    /// (e.g. a shell lowering the open-file limit, tests/park_slots.rs) or to run to
    /// completion with [`Cmd::output`].
    pub fn daemon_cmd(&self, dbs: &[String], extra: &[&str]) -> Cmd {
        let mut cmd = Cmd::new(env!("CARGO_BIN_EXE_walsync-sync"));
        cmd.args(dbs)
            .args([
                "--bucket",
                &self.bucket,
                "--prefix",
                &self.prefix,
                "--shutdown-timeout",
                "10s",
            ])
            .args(extra)
            .env("RUST_LOG", "walsync=debug");
        cmd
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        eprintln!(
            "{}: {} after {:.1?}",
            self.name,
            if std::thread::panicking() {
                "FAILED"
            } else {
                "done"
            },
            self.started.elapsed()
        );
        // The daemon's log tail is printed by its `Proc` when it is dropped.
    }
}
