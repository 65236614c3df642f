//! Client-side encryption (src/storage/crypt/) against the local S3 server.
//!
//! The daemon replicates with `--encryption-key-file`; the tests then look
//! at the bucket with a plain client (no key) and through the CLI with no,
//! the wrong, a rotated and the right key, and alter stored objects the way
//! an attacker with write access to the bucket could: flip a byte, copy an
//! object over another name, cut an object at a chunk boundary.
//!
//! Run: `out=$(scripts/s3-server.sh start) && eval "$out"` then
//! `cargo test --test encryption`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::oracle::{self, app_state, Writer};
use common::process::{text, Cmd};
use walsync::storage::crypt::{Key, Keyring, CHUNK, HEADER_LEN};
use walsync::storage::{CryptStorage, Metadata, S3Config, S3Storage, Storage};

const SYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC_BIN: &str = env!("CARGO_BIN_EXE_walsync");

fn walsync(args: &[&str]) -> Output {
    Cmd::new(WALSYNC_BIN)
        .args(args)
        .env_remove("WALSYNC_ENCRYPTION_KEY")
        .output()
}

/// The one error line of a failed command.
fn error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let last = err.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("walsync: error: "), "{}", text(o));
    last
}

/// A key file with mode 0600 holding `key` as 64 hex digits.
fn key_file(dir: &Path, name: &str, key: [u8; 32]) -> PathBuf {
    let p = dir.join(name);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&p, format!("{hex}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn raw_storage(config: &S3Config) -> Arc<dyn Storage> {
    Arc::new(S3Storage::new(config.clone()).unwrap())
}

fn crypt(raw: &Arc<dyn Storage>, current: [u8; 32], old: &[[u8; 32]]) -> Arc<dyn Storage> {
    let keys = Keyring::new(
        Key::from_bytes(current),
        old.iter().map(|k| Key::from_bytes(*k)).collect(),
    );
    Arc::new(CryptStorage::new(raw.clone(), keys))
}

/// Run the daemon on `db` until `w`'s commits are replicated, then SIGTERM.
/// Commits made while it runs ship as level-0 segments.
fn replicate(
    bucket: &str,
    w: &mut Writer,
    extra: &[&str],
    log: &Path,
    replica: &mut oracle::Oracle,
) {
    let db = w.path.clone();
    let mut daemon = Cmd::new(SYNC_BIN)
        .arg(&db)
        .args(["--bucket", bucket])
        .args(extra)
        .env("RUST_LOG", "walsync=debug")
        .env_remove("WALSYNC_ENCRYPTION_KEY")
        .spawn(log);
    oracle::wait_caught_up(replica, &db, Duration::from_secs(30));
    for _ in 0..4 {
        w.commit(10);
        std::thread::sleep(Duration::from_millis(100));
    }
    oracle::wait_caught_up(replica, &db, Duration::from_secs(30));
    let status = daemon.sigterm(Duration::from_secs(30));
    assert!(
        status.success(),
        "daemon exit {status}: {}",
        daemon.log_text()
    );
}

/// Every LTX object key of `db`, sorted.
fn ltx_keys(raw: &dyn Storage, db: &str) -> Vec<String> {
    let mut keys: Vec<String> = raw
        .list(&format!("{db}/"), None)
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .filter(|k| k.ends_with(".ltx"))
        .collect();
    keys.sort();
    keys
}

#[test]
fn encrypted_sync_restore_and_attacks() {
    let name = "enc_sync";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let bucket = format!("s3://{}/{}", config.bucket, config.prefix);
    let dir = tempfile::tempdir().unwrap();
    let key_a = [0x11u8; 32];
    let key_b = [0x22u8; 32];
    let kf_a = key_file(dir.path(), "a.key", key_a);
    let kf_b = key_file(dir.path(), "b.key", key_b);
    let (kf_a, kf_b) = (kf_a.to_str().unwrap(), kf_b.to_str().unwrap());
    let raw = raw_storage(&config);

    // Phase 1: replicate under key A. The rows carry pseudo-random values
    // (incompressible, so they appear literally in a plain LTX object).
    let db = dir.path().join("app.db");
    let mut w = Writer::create(&db, 7);
    for _ in 0..5 {
        w.commit(20);
    }
    let mut replica = oracle::Oracle::new(crypt(&raw, key_a, &[]), "app.db");
    replicate(
        &bucket,
        &mut w,
        &["--encryption-key-file", kf_a],
        &dir.path().join("sync1.log"),
        &mut replica,
    );
    let log = std::fs::read_to_string(dir.path().join("sync1.log")).unwrap();
    assert!(log.contains("client-side encryption on"), "{log}");
    assert!(!log.contains(&"11".repeat(32)), "the key is in the log");

    // The bucket holds no LTX and no row value in clear, while the same
    // objects opened with the key do (so the check below can fail).
    let needle = oracle::value(7, 42);
    let needle = &needle[..32];
    let keys = ltx_keys(&*raw, "app.db");
    assert!(keys.len() >= 2, "{keys:?}");
    let opened = crypt(&raw, key_a, &[]);
    let mut found_plain = false;
    for k in &keys {
        let stored = raw.get(k).unwrap();
        assert_ne!(&stored[..4], b"LTX1", "{k} is plain LTX");
        assert_eq!(&stored[..8], b"WSYNCENC", "{k}");
        assert!(
            !stored.windows(needle.len()).any(|x| x == needle),
            "{k}: row bytes readable in the bucket"
        );
        let (plain, _) = opened.get_with_info(k).unwrap();
        assert_eq!(&plain[..4], b"LTX1");
        assert!(
            raw.head(k)
                .unwrap()
                .unwrap()
                .metadata
                .get("walsync-sha256")
                .is_none(),
            "{k}: plaintext hash stored in the bucket"
        );
        let (_, pages) = walsync::ltx::decode_all(&plain, k).unwrap();
        found_plain |= pages
            .iter()
            .any(|(_, p)| p.windows(needle.len()).any(|x| x == needle));
        // Listing and head report plaintext sizes.
        assert_eq!(opened.head(k).unwrap().unwrap().size, plain.len() as u64);
    }
    assert!(
        found_plain,
        "the needle is in no page: the check proves nothing"
    );

    // Restore with the key: exactly the source database.
    let out1 = dir.path().join("r1.db");
    let o = walsync(&[
        "restore",
        "app.db",
        "--bucket",
        &bucket,
        "-o",
        out1.to_str().unwrap(),
        "--encryption-key-file",
        kf_a,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let c = rusqlite::Connection::open(&out1).unwrap();
    assert_eq!(app_state(&c).unwrap(), Some((7, w.last)));
    assert!(
        oracle::dump_diff(&oracle::dump(&c), &oracle::source_dump(&db)).is_none(),
        "restored database differs from the source"
    );
    // The key from the environment works as well; verify and list too.
    let out_env = dir.path().join("r-env.db");
    let o = Cmd::new(WALSYNC_BIN)
        .args([
            "restore",
            "app.db",
            "--bucket",
            &bucket,
            "-o",
            out_env.to_str().unwrap(),
        ])
        .env("WALSYNC_ENCRYPTION_KEY", "11".repeat(32))
        .output();
    assert!(o.status.success(), "{}", text(&o));
    let o = walsync(&[
        "verify",
        "app.db",
        "--restore",
        "--bucket",
        &bucket,
        "--encryption-key-file",
        kf_a,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = walsync(&["list", "--bucket", &bucket, "--encryption-key-file", kf_a]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("app.db"),
        "{}",
        text(&o)
    );

    // No key: one line naming the object and the key id.
    let id_a = Key::from_bytes(key_a).id_hex();
    let id_b = Key::from_bytes(key_b).id_hex();
    let out = dir.path().join("fail.db");
    let out_s = out.to_str().unwrap();
    let e = error_line(&walsync(&[
        "restore", "app.db", "--bucket", &bucket, "-o", out_s,
    ]));
    assert!(
        e.contains("app.db/")
            && e.contains("is encrypted")
            && e.contains(&id_a)
            && e.contains("--encryption-key-file"),
        "{e}"
    );
    assert!(!out.exists());
    let o = walsync(&["verify", "app.db", "--bucket", &bucket]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("is encrypted"),
        "{}",
        text(&o)
    );

    // Wrong key: names the object's key id and ours.
    let e = error_line(&walsync(&[
        "restore",
        "app.db",
        "--bucket",
        &bucket,
        "-o",
        out_s,
        "--encryption-key-file",
        kf_b,
    ]));
    assert!(
        e.contains("app.db/")
            && e.contains(&id_a)
            && e.contains(&id_b)
            && e.contains("does not match"),
        "{e}"
    );

    // Rotation: phase 2 replicates under key B with A as decryption-only
    // key; the history (A) and the new objects (B) restore together.
    w.commit(30);
    let mut replica = oracle::Oracle::new(crypt(&raw, key_b, &[key_a]), "app.db");
    replicate(
        &bucket,
        &mut w,
        &["--encryption-key-file", kf_b, "--decryption-key-file", kf_a],
        &dir.path().join("sync2.log"),
        &mut replica,
    );
    let out2 = dir.path().join("r2.db");
    let o = walsync(&[
        "restore",
        "app.db",
        "--bucket",
        &bucket,
        "-o",
        out2.to_str().unwrap(),
        "--encryption-key-file",
        kf_b,
        "--decryption-key-file",
        kf_a,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let c = rusqlite::Connection::open(&out2).unwrap();
    assert_eq!(app_state(&c).unwrap(), Some((7, w.last)));
    // Key B alone cannot open the older objects.
    let e = error_line(&walsync(&[
        "restore",
        "app.db",
        "--bucket",
        &bucket,
        "-o",
        out_s,
        "--encryption-key-file",
        kf_b,
    ]));
    assert!(e.contains(&id_a) && e.contains("does not match"), "{e}");
    let both = ["--encryption-key-file", kf_b, "--decryption-key-file", kf_a];
    let restore_both = |extra: &[&str]| {
        let _ = std::fs::remove_file(&out);
        let mut args = vec!["restore", "app.db", "--bucket", &bucket, "-o", out_s];
        args.extend_from_slice(&both);
        args.extend_from_slice(extra);
        walsync(&args)
    };

    // Tampering, one object at a time, restored afterwards.
    let keys = ltx_keys(&*raw, "app.db");
    let l0: Vec<&String> = keys.iter().filter(|k| k.contains("/0000/")).collect();
    assert!(l0.len() >= 3, "{keys:?}");
    let victim = l0[1].clone();
    let original = raw.get(&victim).unwrap();
    // A flipped byte in the ciphertext: authentication fails, naming
    // object and chunk.
    let mut bad = original.clone();
    let at = HEADER_LEN as usize + 3;
    bad[at] ^= 0x40;
    raw.put(&victim, &bad, &Metadata::new()).unwrap();
    let e = error_line(&restore_both(&[]));
    assert!(
        e.contains(&victim) && e.contains("authentication failed") && e.contains("chunk 0"),
        "{e}"
    );
    // Another object of the same database copied over this name (same key,
    // valid ciphertext): the name is bound, so it fails too.
    let other = raw.get(l0[2]).unwrap();
    raw.put(&victim, &other, &Metadata::new()).unwrap();
    let e = error_line(&restore_both(&[]));
    assert!(
        e.contains(&victim) && e.contains("authentication failed"),
        "{e}"
    );
    // Truncated (the last tag cut off).
    raw.put(&victim, &original[..original.len() - 16], &Metadata::new())
        .unwrap();
    let e = error_line(&restore_both(&[]));
    assert!(e.contains(&victim), "{e}");
    // A plain LTX object slipped in is refused (no downgrade).
    raw.put(&victim, &original, &Metadata::new()).unwrap();
    let plain = crypt(&raw, key_b, &[key_a]).get(&victim).unwrap();
    raw.put(&victim, &plain, &Metadata::new()).unwrap();
    let e = error_line(&restore_both(&[]));
    assert!(e.contains(&victim) && e.contains("not encrypted"), "{e}");
    // Restored original: everything restores again.
    raw.put(&victim, &original, &Metadata::new()).unwrap();
    let o = restore_both(&[]);
    assert!(o.status.success(), "{}", text(&o));

    // A key file readable by others is refused, without printing the key.
    std::fs::remove_file(&out).unwrap();
    std::fs::set_permissions(kf_a, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = error_line(&walsync(&[
        "restore",
        "app.db",
        "--bucket",
        &bucket,
        "-o",
        out_s,
        "--encryption-key-file",
        kf_a,
    ]));
    assert!(e.contains(kf_a) && e.contains("chmod 600"), "{e}");
    assert!(!e.contains(&"11".repeat(8)), "{e}");
}

/// Ranged reads, truncation at a chunk boundary and a big object through
/// `put_file` (multipart on S3), at the storage level.
#[test]
fn ranges_truncation_and_big_files() {
    let name = "enc_ranges";
    let Some(config) = common::s3_config_or_skip(name) else {
        return;
    };
    let raw = raw_storage(&config);
    let s = crypt(&raw, [0x33; 32], &[]);
    let c = CHUNK as usize;
    let body = common::pseudo_random(3 * c + 1234, 99);
    let key = "x.db/0000/0000000000000001-0000000000000001.ltx";
    s.put(key, &body, &Metadata::new()).unwrap();
    assert_eq!(s.head(key).unwrap().unwrap().size, body.len() as u64);
    assert_eq!(
        s.list("x.db/", None).unwrap()[0].size,
        body.len() as u64,
        "listing size is not the plaintext size"
    );
    for (start, len) in [
        (0usize, Some(100usize)),
        (c - 10, Some(20)),
        (c, Some(c)),
        (2 * c + 5, None),
        (3 * c, Some(5000)),
        (body.len() - 1, None),
        (body.len(), Some(10)),
        (body.len() + 50, None),
    ] {
        let want: Vec<u8> = body
            .iter()
            .skip(start)
            .take(len.unwrap_or(usize::MAX))
            .copied()
            .collect();
        let got = s
            .get_range(key, start as u64, len.map(|l| l as u64))
            .unwrap();
        assert_eq!(got.len(), want.len(), "start {start} len {len:?}");
        assert!(got == want, "start {start} len {len:?}: bytes differ");
    }

    // Cut exactly at a chunk boundary: every remaining chunk is intact but
    // the new last one was not sealed as last.
    let stored = raw.get(key).unwrap();
    let cut = HEADER_LEN as usize + 2 * (c + 16);
    raw.put(key, &stored[..cut], &Metadata::new()).unwrap();
    let e = s.get(key).unwrap_err().to_string();
    assert!(
        e.contains(key) && e.contains("authentication failed at chunk 1"),
        "{e}"
    );
    let e = s
        .get_range(key, c as u64, Some(10))
        .unwrap_err()
        .to_string();
    assert!(e.contains("authentication failed at chunk 1"), "{e}");
    // Ranged reads of intact chunks before the cut still work.
    assert_eq!(s.get_range(key, 0, Some(10)).unwrap(), &body[..10]);

    // 40 MiB through put_file: streamed, multipart underneath.
    let dir = tempfile::tempdir().unwrap();
    let big_path = dir.path().join("big.ltx");
    let big = common::pseudo_random(40 << 20, 5);
    std::fs::write(&big_path, &big).unwrap();
    let big_key = "x.db/0009/0000000000000001-0000000000000002.ltx";
    s.put_file(big_key, &big_path, &Metadata::new()).unwrap();
    let info = raw.head(big_key).unwrap().unwrap();
    let chunks = (big.len() as u64).div_ceil(CHUNK);
    assert_eq!(info.size, HEADER_LEN + big.len() as u64 + 16 * chunks);
    assert_eq!(s.head(big_key).unwrap().unwrap().size, big.len() as u64);
    assert!(s.get(big_key).unwrap() == big, "big object differs");
    let mid = 17 << 20;
    assert!(s.get_range(big_key, mid, Some(1 << 20)).unwrap() == big[mid as usize..][..1 << 20]);
    // No temporary file left beside the source.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "{left:?}");
}
