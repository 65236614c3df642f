//! Writer fencing (src/lease/): two `walsync-sync` processes replicating
//! the same database name to the same prefix never interleave txids.
//!
//! - Fallback mode against Garage (which ignores `If-None-Match`): a second
//!   daemon is refused while the first ships, takes over after the first was
//!   killed and its lease expired, and a writer whose lease was taken over
//!   while it was idle is fenced out at its next upload (its other databases
//!   go on). The writer of every object (`walsync-writer` metadata) proves
//!   the txids of the writers never interleave; restores prove the content.
//! - Conditional mode against moto's S3 server (`.venv/bin/moto_server`,
//!   installed by scripts/venv.sh), on 127.0.0.1: the probe detects it, and
//!   a second writer's segment PUT of an existing txid is refused by the
//!   server itself.
//!
//! Run: `out=$(scripts/s3-server.sh start) && eval "$out"` then
//! `cargo test --test fencing`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::{self, Writer};
use common::process::{text, Cmd, Proc, Signal};
use walsync::lease::{self, FencedStorage, Fencer, Mode};
use walsync::storage::{Metadata, S3Config, S3Credentials, S3Storage, Storage};

const SYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync");
const TTL: &str = "3s";
const TTL_WAIT: Duration = Duration::from_millis(3600);

/// A `walsync-sync` child with its log file; killed when dropped, its
/// log's tail printed if the test fails.
struct Daemon {
    proc: Proc,
}

impl Daemon {
    fn start(name: &str, dir: &Path, args: &[String], env: &[(&str, String)]) -> Daemon {
        let proc = Cmd::new(SYNC_BIN)
            .args(args)
            .env("RUST_LOG", "walsync=debug")
            .envs(env)
            .spawn(&dir.join(format!("{name}.log")));
        Daemon { proc }
    }

    fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// Waits until the log contains `needle`; returns that line.
    fn wait_log(&mut self, needle: &str, timeout: Duration, poke: impl FnMut()) -> String {
        self.proc
            .wait_line_with(timeout, |l| l.contains(needle), poke)
    }

    /// The holder id this daemon logged at start-up.
    fn holder(&mut self) -> String {
        let line = self.wait_log("writer fencing:", Duration::from_secs(30), || {});
        line.rsplit("holder ").next().unwrap().trim().to_string()
    }

    fn kill9(&mut self) {
        self.proc.kill9();
    }

    /// SIGTERM and wait (at most 30 s) for it to exit, whatever its status.
    fn sigterm(&mut self) {
        self.proc.signal(Signal::TERM);
        self.proc.wait(Duration::from_secs(30));
    }
}

fn walsync(args: &[&str], env: &[(&str, String)]) -> Output {
    Cmd::new(WALSYNC_BIN).args(args).envs(env).output()
}

/// `(level, min txid, max txid, writer)` of every LTX object of `db`.
fn writers(storage: &dyn Storage, db: &str) -> Vec<(u8, u64, u64, String)> {
    let mut out: Vec<(u8, u64, u64, String)> = storage
        .list(&format!("{db}/"), None)
        .unwrap()
        .into_iter()
        .filter_map(|i| {
            let k = walsync::ltx::parse_object_key("", &i.key)?;
            let meta = storage.head(&i.key).unwrap()?.metadata;
            let w = meta.get(lease::META_WRITER).unwrap_or("?").to_string();
            Some((k.level, k.min_txid, k.max_txid, w))
        })
        .collect();
    out.sort();
    out
}

/// Asserts that no txid was written twice (a level-0 object introduces
/// min..=max, a snapshot its max) and that the writers' txids follow each
/// other in the order `order`, never interleaved. Returns objects per writer.
fn assert_not_interleaved(objs: &[(u8, u64, u64, String)], order: &[&str]) -> Vec<usize> {
    let mut counts = vec![0; order.len()];
    let mut introduced: Vec<(u64, usize)> = Vec::new();
    for (level, min, max, w) in objs {
        let i = order
            .iter()
            .position(|o| o == w)
            .unwrap_or_else(|| panic!("object {min}-{max} by unexpected writer {w}: {objs:?}"));
        let first = match level {
            0 => *min,
            9 => *max,
            _ => continue, // compactions re-cover txids already written
        };
        introduced.extend((first..=*max).map(|t| (t, i)));
        counts[i] += 1;
    }
    introduced.sort();
    for p in introduced.windows(2) {
        assert_ne!(p[0].0, p[1].0, "txid {} written twice: {objs:?}", p[0].0);
        assert!(
            p[0].1 <= p[1].1,
            "txid {} by {} follows txid {} by a later writer {}: {objs:?}",
            p[1].0,
            order[p[1].1],
            p[0].0,
            order[p[0].1]
        );
    }
    counts
}

fn restored_equals(bucket: &str, db: &str, source: &Path, out: &Path, env: &[(&str, String)]) {
    let o = walsync(
        &[
            "restore",
            db,
            "--bucket",
            bucket,
            "-o",
            out.to_str().unwrap(),
        ],
        env,
    );
    assert!(o.status.success(), "restore: {}", text(&o));
    let c = rusqlite::Connection::open(out).unwrap();
    let diff = oracle::dump_diff(&oracle::dump(&c), &oracle::source_dump(source));
    assert!(
        diff.is_none(),
        "{db}: restore differs from {}: {diff:?}",
        source.display()
    );
}

#[test]
fn fallback_lease_refuses_takes_over_and_fences_out() {
    let name = "fence_fallback";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let storage: Arc<dyn Storage> = Arc::new(S3Storage::new(config).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let (da, db_) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db_).unwrap();
    let args = |files: &[&Path]| -> Vec<String> {
        let mut v: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        v.extend(
            [
                "--bucket",
                &bucket,
                "--lease-ttl",
                TTL,
                "--shutdown-timeout",
                "10s",
            ]
            .map(String::from),
        );
        v
    };
    let (a_app, a_other, b_app) = (da.join("app.db"), da.join("other.db"), db_.join("app.db"));
    let mut wa = Writer::create(&a_app, 1);
    let mut wo = Writer::create(&a_other, 3);
    let mut wb = Writer::create(&b_app, 2);
    wa.commit(5);
    wo.commit(5);
    wb.commit(5);
    let mut app = oracle::Oracle::new(storage.clone(), "app.db");
    let mut other = oracle::Oracle::new(storage.clone(), "other.db");

    // 1. A replicates app.db and other.db.
    let mut a = Daemon::start("A", dir.path(), &args(&[&a_app, &a_other]), &[]);
    let ha = a.holder();
    assert!(
        a.log_text().contains("lease object with read-back"),
        "{}",
        a.log_text()
    );
    oracle::wait_caught_up(&mut app, &a_app, Duration::from_secs(30));

    // 2. B (another directory, same name) is refused while A ships: A
    //    commits every 200 ms (renewing its lease), B every 500 ms (retrying).
    let mut b = Daemon::start("B", dir.path(), &args(&[&b_app]), &[]);
    let hb = b.holder();
    let refused = b.wait_log(
        "replicated by another walsync",
        Duration::from_secs(20),
        || {},
    );
    assert!(
        refused.contains("app.db") && refused.contains(&ha),
        "{refused}"
    );
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        wa.commit(2);
        n += 1;
        if n % 3 == 0 {
            wb.commit(1);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    oracle::wait_caught_up(&mut app, &a_app, Duration::from_secs(30));
    let objs = writers(&*storage, "app.db");
    assert!(
        objs.iter().all(|(_, _, _, w)| *w == ha),
        "B wrote while A held the lease: {objs:?}"
    );

    // 3. A is killed; after its lease expired B takes over (its database
    //    differs, so it ships a snapshot as the next txid).
    a.kill9();
    std::thread::sleep(TTL_WAIT);
    b.wait_log(
        "taking over the expired lease",
        Duration::from_secs(40),
        || wb.commit(1),
    );
    wb.commit(3);
    oracle::wait_caught_up(&mut app, &b_app, Duration::from_secs(30));
    let objs = writers(&*storage, "app.db");
    let counts = assert_not_interleaved(&objs, &[&ha, &hb]);
    assert!(counts[0] > 0 && counts[1] > 0, "{objs:?}");

    // 4. B idles past its TTL; A restarts and takes app.db over (and
    //    other.db back); B's next upload is fenced out, B's process stays up.
    std::thread::sleep(TTL_WAIT);
    let mut a2 = Daemon::start("A2", dir.path(), &args(&[&a_app, &a_other]), &[]);
    let ha2 = a2.holder();
    wa.commit(4);
    wo.commit(4);
    oracle::wait_caught_up(&mut app, &a_app, Duration::from_secs(30));
    oracle::wait_caught_up(&mut other, &a_other, Duration::from_secs(30));
    wb.commit(2);
    let fenced = b.wait_log("fenced out", Duration::from_secs(20), || {});
    assert!(
        fenced.contains("app.db") && fenced.contains(&ha2),
        "{fenced}"
    );
    for _ in 0..3 {
        wb.commit(1);
        wa.commit(1);
        std::thread::sleep(Duration::from_millis(300));
    }
    oracle::wait_caught_up(&mut app, &a_app, Duration::from_secs(30));
    b.proc.assert_running();
    let objs = writers(&*storage, "app.db");
    let counts = assert_not_interleaved(&objs, &[&ha, &hb, &ha2]);
    assert!(counts.iter().all(|&c| c > 0), "{counts:?}: {objs:?}");
    eprintln!("{name}: objects per writer {counts:?}");

    // Lease objects are invisible to list, verify and restore.
    let o = walsync(&["list", "--bucket", &bucket], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("app.db") && out.contains("other.db") && !out.contains("lease"),
        "{out}"
    );
    let o = walsync(&["list", "app.db", "--bucket", &bucket], &[]);
    assert!(o.status.success(), "{}", text(&o));
    for db in ["app.db", "other.db"] {
        let o = walsync(&["verify", db, "--restore", "--bucket", &bucket], &[]);
        assert!(o.status.success(), "{}", text(&o));
    }
    restored_equals(&bucket, "app.db", &a_app, &dir.path().join("r-app.db"), &[]);
    restored_equals(
        &bucket,
        "other.db",
        &a_other,
        &dir.path().join("r-other.db"),
        &[],
    );
    a2.sigterm();
    b.sigterm();
    // A clean stop released A2's lease: its expiry is now, not in 3 s.
    let lease = String::from_utf8(storage.get(&lease::lease_key("other.db")).unwrap()).unwrap();
    let expires: i64 = lease
        .lines()
        .find_map(|l| l.strip_prefix("expires_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{lease}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(expires <= now + 500, "lease not released: {lease}");
}

// ---------------------------------------------------------------------------
// Conditional writes: moto's S3 server
// ---------------------------------------------------------------------------

/// moto_server on a free 127.0.0.1 port with bucket `walsync-moto`; killed
/// when dropped.
struct Moto {
    _proc: Proc,
    endpoint: String,
}

const MOTO_BUCKET: &str = "walsync-moto";

fn start_moto(dir: &Path) -> Option<Moto> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    if !bin.is_file() {
        assert!(
            !common::require_external(),
            "{} missing: run scripts/venv.sh (WALSYNC_REQUIRE_EXTERNAL=1 forbids skipping)",
            bin.display()
        );
        eprintln!("skipped: moto_server not installed (scripts/venv.sh)");
        return None;
    }
    let port = common::closed_port();
    let proc = Cmd::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .spawn(&dir.join("moto.log"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let moto = Moto {
        _proc: proc,
        endpoint,
    };
    let t0 = Instant::now();
    loop {
        // moto does not check signatures: an unsigned PUT creates the bucket.
        match ureq::put(&format!("{}/{MOTO_BUCKET}", moto.endpoint)).send_empty() {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "moto_server did not come up: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let _ = writeln!(std::io::stderr(), "moto_server at {}", moto.endpoint);
    Some(moto)
}

fn moto_env(m: &Moto) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_S3", m.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_SESSION_TOKEN", String::new()),
    ]
}

fn moto_storage(m: &Moto, prefix: &str) -> Arc<dyn Storage> {
    Arc::new(
        S3Storage::new(S3Config {
            bucket: MOTO_BUCKET.into(),
            prefix: prefix.into(),
            endpoint: Some(m.endpoint.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
            credentials: Some(S3Credentials {
                access_key_id: "testing".into(),
                secret_access_key: "testing".into(),
                session_token: None,
            }),
            ca_bundle: None,
        })
        .unwrap(),
    )
}

#[test]
fn conditional_writes_on_a_server_that_honours_them() {
    let dir = tempfile::tempdir().unwrap();
    let Some(moto) = start_moto(dir.path()) else {
        return;
    };
    let storage = moto_storage(&moto, "p1");
    assert_eq!(lease::probe(&*storage).unwrap(), Mode::Conditional);

    // Storage level: the lease is compare-and-swap; a second writer that
    // somehow ships the same txid is refused by the server.
    let fa = Arc::new(Fencer::new(
        storage.clone(),
        Mode::Conditional,
        Duration::from_secs(60),
    ));
    let fb = Arc::new(Fencer::new(
        storage.clone(),
        Mode::Conditional,
        Duration::from_secs(60),
    ));
    fa.acquire("x.db", None).unwrap();
    let e = fb.acquire("x.db", None).unwrap_err().to_string();
    assert!(e.contains("x.db") && e.contains(fa.holder()), "{e}");
    let a = FencedStorage::new(storage.clone(), fa.clone());
    let key = "x.db/0000/0000000000000001-0000000000000001.ltx";
    a.put(key, b"first", &Metadata::new()).unwrap();
    a.put(key, b"first", &Metadata::new()).unwrap(); // our own retry is fine
                                                     // A writer with a stale position: it got the lease after it expired
                                                     // but resumed before `a` shipped txid 1. The server refuses its PUT.
    let short = Duration::from_millis(1500);
    let fc = Arc::new(Fencer::new(storage.clone(), Mode::Conditional, short));
    let fd = Arc::new(Fencer::new(storage.clone(), Mode::Conditional, short));
    fc.acquire("y.db", None).unwrap();
    std::thread::sleep(short + Duration::from_millis(200));
    fd.acquire("y.db", None).unwrap();
    let d = FencedStorage::new(storage.clone(), fd.clone());
    let ykey = "y.db/0000/0000000000000001-0000000000000001.ltx";
    FencedStorage::new(storage.clone(), fc.clone())
        .put(ykey, b"c", &Metadata::new())
        .unwrap_err(); // c: lease taken over, fenced at renewal
    storage.put(ykey, b"c", &Metadata::new()).unwrap(); // c's PUT that raced it
    let e = d.put(ykey, b"d", &Metadata::new()).unwrap_err().to_string();
    assert!(
        e.contains("fenced out") && e.contains("already exists"),
        "{e}"
    );
    assert_eq!(storage.get(ykey).unwrap(), b"c");

    // Daemon level: A ships, B is refused, A killed, B takes over after
    // the TTL, the restore equals B's database, txids do not interleave.
    let prefix = "p2";
    let bucket = format!("s3://{MOTO_BUCKET}/{prefix}");
    let env = moto_env(&moto);
    let storage = moto_storage(&moto, prefix);
    let (da, dbb) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&dbb).unwrap();
    let (a_app, b_app) = (da.join("app.db"), dbb.join("app.db"));
    let mut wa = Writer::create(&a_app, 1);
    let mut wb = Writer::create(&b_app, 2);
    wa.commit(5);
    wb.commit(5);
    let args = |p: &Path| -> Vec<String> {
        vec![
            p.display().to_string(),
            "--bucket".into(),
            bucket.clone(),
            "--path-style".into(),
            "--lease-ttl".into(),
            TTL.into(),
        ]
    };
    let mut app = oracle::Oracle::new(storage.clone(), "app.db");
    let mut a = Daemon::start("A", dir.path(), &args(&a_app), &env);
    let ha = a.holder();
    assert!(
        a.log_text().contains("writer fencing: conditional writes"),
        "{}",
        a.log_text()
    );
    oracle::wait_caught_up(&mut app, &a_app, Duration::from_secs(30));
    let mut b = Daemon::start("B", dir.path(), &args(&b_app), &env);
    let hb = b.holder();
    let refused = b.wait_log(
        "replicated by another walsync",
        Duration::from_secs(20),
        || {},
    );
    assert!(refused.contains(&ha), "{refused}");
    for _ in 0..10 {
        wa.commit(1);
        wb.commit(1);
        std::thread::sleep(Duration::from_millis(200));
    }
    oracle::wait_caught_up(&mut app, &a_app, Duration::from_secs(30));
    a.kill9();
    std::thread::sleep(TTL_WAIT);
    b.wait_log(
        "taking over the expired lease",
        Duration::from_secs(40),
        || wb.commit(1),
    );
    oracle::wait_caught_up(&mut app, &b_app, Duration::from_secs(30));
    let objs = writers(&*storage, "app.db");
    let counts = assert_not_interleaved(&objs, &[&ha, &hb]);
    assert!(counts.iter().all(|&c| c > 0), "{objs:?}");
    restored_equals(&bucket, "app.db", &b_app, &dir.path().join("r.db"), &env);
    b.sigterm();
}
