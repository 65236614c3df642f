//! `--config FILE`: unknown keys are an error naming key and line; flags win
//! over the file; `[[database]]` entries with a glob, a name and a prefix of
//! their own replicate to the right keys of the bucket (one daemon, one
//! uploader pool) and restore from there; a plain-path entry wins over a
//! glob that matches the same file.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::daemon::{commit, create_db};
use common::process::{log_path, wait_for, Cmd, Proc};
use walsync::storage::{S3Config, S3Options, S3Storage, Storage};

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");

#[test]
fn unknown_key_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        "bucket = \"file:///tmp/x\"\n\n[[database]]\npath = \"/data/a.db\"\nsnapshot-intervall = \"1h\"\n",
    )
    .unwrap();
    let out = Cmd::new(WALSYNC)
        .args(["sync", "--config", &cfg.display().to_string()])
        .output();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "walsync: error: {}: line 5: unknown field `snapshot-intervall`, expected one of ",
        cfg.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // A misspelt global key too, and a missing file names the file.
    std::fs::write(&cfg, "bucket = \"b\"\nuploader = 3\n").unwrap();
    let out = Cmd::new(SYNC)
        .args(["--config", &cfg.display().to_string()])
        .output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "walsync: error: {}: line 2: unknown field `uploader`",
            cfg.display()
        )),
        "{stderr}"
    );
    let out = Cmd::new(SYNC)
        .args(["--config", "/nonexistent/walsync.toml"])
        .output();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("walsync: error: /nonexistent/walsync.toml: "));
}

#[test]
fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let conn = create_db(&db);
    commit(&conn, 1);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "bucket = \"file://{}\"\nuploaders = 0\n\n[[database]]\npath = \"{}\"\n",
            dir.path().join("store").display(),
            db.display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    // The file's value alone is refused, naming the setting...
    let out = Cmd::new(SYNC).args(["--config", &cfg]).output();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "walsync: error: --uploaders 0: must be 1..=256"
    );
    // ...and the flag wins over it.
    let args: Vec<String> = vec!["--config".into(), cfg, "--uploaders".into(), "2".into()];
    let mut d = Proc::start(SYNC, &args, &[], &log_path("config-override"));
    assert!(wait_for(Duration::from_secs(20), || d
        .log_text()
        .contains("start-up complete")));
    assert!(dir.path().join("store/o.db/0009").is_dir());
    assert!(d.sigterm(Duration::from_secs(20)).success());
}

fn s3_view(bucket: &str, prefix: &str) -> Arc<dyn Storage> {
    let cfg =
        S3Config::from_spec(&format!("s3://{bucket}/{prefix}"), &S3Options::default()).unwrap();
    Arc::new(S3Storage::new(cfg).unwrap())
}

fn count(storage: &dyn Storage, prefix: &str) -> usize {
    storage.list(prefix, None).map(|l| l.len()).unwrap_or(0)
}

fn rows(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn databases_with_own_name_and_prefix() {
    let Some(s3) = common::s3_config_or_skip("config-prefix") else {
        return;
    };
    let bucket = s3.bucket.clone();
    let prefix_a = common::unique_prefix("config-a");
    let prefix_b = common::unique_prefix("config-b");
    let dir = tempfile::tempdir().unwrap();
    let app1 = dir.path().join("app-1.db");
    let billing = dir.path().join("billing.db");
    let c1 = create_db(&app1);
    let cb = create_db(&billing);
    commit(&c1, 2);
    commit(&cb, 2);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"# global settings: the same names as the flags
bucket = "s3://{bucket}/{prefix_a}"
snapshot-interval = "0"
shutdown-timeout = "10s"

# Matches billing.db too: the plain-path entry below wins for it.
[[database]]
path = "{dir}/*.db"

[[database]]
path = "{billing}"
name = "billing"
prefix = "{prefix_b}"
snapshot-interval = "1h"
retention = "7d"
"#,
            dir = dir.path().display(),
            billing = billing.display()
        ),
    )
    .unwrap();
    let args: Vec<String> = vec!["--config".into(), cfg.display().to_string()];
    let mut d = Proc::start(SYNC, &args, &[], &log_path("config-prefix"));

    let a = s3_view(&bucket, &prefix_a);
    let b = s3_view(&bucket, &prefix_b);
    assert!(
        wait_for(Duration::from_secs(20), || count(&*a, "app-1.db/") >= 1
            && count(&*b, "billing/") >= 1),
        "snapshots did not arrive under their prefixes"
    );
    // A database created later that matches the glob is picked up.
    let app2 = dir.path().join("app-2.db");
    let c2 = create_db(&app2);
    for _ in 0..3 {
        commit(&c1, 5);
        commit(&cb, 5);
        commit(&c2, 5);
    }
    assert!(
        wait_for(Duration::from_secs(20), || count(&*a, "app-2.db/") >= 1
            && count(&*b, "billing/") >= 2),
        "writes did not arrive"
    );
    // A clean stop ships everything committed; the restores below compare.
    assert!(d.sigterm(Duration::from_secs(20)).success());
    // Nothing of billing under the global prefix, nothing of the apps under its own.
    assert_eq!(count(&*a, "billing"), 0);
    assert_eq!(count(&*a, "billing.db"), 0);
    assert_eq!(count(&*b, "app-"), 0);

    // Restores come back from where each database lives.
    for (name, prefix, source) in [
        ("billing", &prefix_b, &billing),
        ("app-1.db", &prefix_a, &app1),
        ("app-2.db", &prefix_a, &app2),
    ] {
        let out_path = dir.path().join(format!("restored-{name}"));
        let out = Cmd::new(WALSYNC)
            .args([
                "restore",
                name,
                "-o",
                &out_path.display().to_string(),
                "--bucket",
                &format!("s3://{bucket}/{prefix}"),
            ])
            .output();
        assert!(
            out.status.success(),
            "restore {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(rows(&out_path), rows(source), "{name}");
    }
}

#[test]
fn a_name_override_that_collides_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    commit(&create_db(&a), 1);
    commit(&create_db(&b), 1);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "bucket = \"file://{}\"\n[[database]]\npath = \"{}\"\nname = \"b.db\"\n[[database]]\npath = \"{}\"\n",
            dir.path().join("store").display(),
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let out = Cmd::new(SYNC)
        .args(["--config", cfg.to_str().unwrap()])
        .output();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "walsync: error: two databases would be stored as \"b.db\": {} and {}",
            a.display(),
            b.display()
        )
    );
}

/// `encryption-key-file` on one `[[database]]` entry: that database's
/// objects are encrypted with it (no LTX in the clear, restore needs the
/// key), the other database's are not.
#[test]
fn per_database_encryption_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let key = dir.path().join("k.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plain = dir.path().join("plain.db");
    let secret = dir.path().join("secret.db");
    let (cp, cs) = (create_db(&plain), create_db(&secret));
    commit(&cp, 3);
    commit(&cs, 3);
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!(
            "bucket = \"file://{}\"\nsnapshot-interval = \"0\"\n\n[[database]]\npath = \"{}\"\n\n\
             [[database]]\npath = \"{}\"\nencryption-key-file = \"{}\"\n",
            store.display(),
            plain.display(),
            secret.display(),
            key.display()
        ),
    )
    .unwrap();
    let args: Vec<String> = vec!["--config".into(), cfg.display().to_string()];
    let mut d = Proc::start(SYNC, &args, &[], &log_path("config-key"));
    assert!(wait_for(Duration::from_secs(20), || d
        .log_text()
        .contains("start-up complete")));
    for _ in 0..3 {
        commit(&cp, 2);
        commit(&cs, 2);
    }
    assert!(
        d.sigterm(Duration::from_secs(20)).success(),
        "{}",
        d.log_text()
    );

    // Every stored object of secret.db is ciphertext, of plain.db LTX.
    let objects = |db: &str| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for level in std::fs::read_dir(store.join(db)).unwrap() {
            for f in std::fs::read_dir(level.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if p.extension().is_some_and(|e| e == "ltx") {
                    out.push(std::fs::read(&p).unwrap());
                }
            }
        }
        out
    };
    let (ps, ss) = (objects("plain.db"), objects("secret.db"));
    assert!(!ps.is_empty() && !ss.is_empty());
    assert!(ps.iter().all(|b| b.starts_with(b"LTX1")));
    assert!(ss
        .iter()
        .all(|b| !b.starts_with(b"LTX1") && !b.windows(4).any(|w| w == b"LTX1")));

    // Restores: the keyed one only with its key.
    let bucket = format!("file://{}", store.display());
    let restore = |db: &str, out: &Path, key: Option<&Path>| {
        let mut c = Cmd::new(WALSYNC);
        c.args(["restore", db, "--bucket", &bucket, "-o"]).arg(out);
        if let Some(k) = key {
            c.arg("--encryption-key-file").arg(k);
        }
        c.output()
    };
    let out = dir.path().join("s.restored");
    let o = restore("secret.db", &out, None);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is encrypted"), "{err}");
    let o = restore("secret.db", &out, Some(&key));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&secret));
    let out = dir.path().join("p.restored");
    let o = restore("plain.db", &out, None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(rows(&out), rows(&plain));
}
