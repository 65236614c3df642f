//! Per-tenant directory trees: databases named by their path below the fixed
//! part of the pattern that matched them (`<root>/*/*/data/*.db` →
//! `acme/eu/data/main.db`), tenants created and removed while the daemon
//! runs, names in `walsync list`, every database restored equal to its
//! source, and a name two paths would share refused.
//!
//! Run: `eval "$(scripts/s3-server.sh start)"` then
//! `cargo test --test tenants -- --test-threads=2`. Without the S3
//! environment the tests skip, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Env;
use common::oracle::{self, Writer};
use common::process::{text, wait_for, Cmd};

const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");
const CATCH_UP: Duration = Duration::from_secs(30);

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn bucket_spec(env: &Env) -> String {
    format!("s3://{}/{}", env.bucket, env.prefix)
}

/// The NAME column of `walsync list` (names here have no spaces).
fn listed_names(env: &Env) -> Vec<String> {
    let o = Cmd::new(WALSYNC)
        .args(["list", "--bucket", &bucket_spec(env)])
        .timeout(Duration::from_secs(30))
        .output();
    assert!(o.status.success(), "walsync list: {}", text(&o));
    let mut names: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// `walsync restore NAME` into `out` through the CLI, compared with `source`
/// by content.
fn assert_restores_equal(env: &Env, name: &str, source: &Path) {
    let out = env.path(&format!("restored-{}", name.replace('/', "_")));
    let o = Cmd::new(WALSYNC)
        .args(["restore", name, "--bucket", &bucket_spec(env)])
        .arg("-o")
        .arg(&out)
        .timeout(Duration::from_secs(60))
        .output();
    assert!(
        o.status.success(),
        "walsync restore {name} -o {}: {}",
        out.display(),
        text(&o)
    );
    let got = oracle::dump(&rusqlite::Connection::open(&out).unwrap());
    let diff = oracle::dump_diff(&got, &oracle::source_dump(source));
    assert!(diff.is_none(), "{name}: restore differs: {}", diff.unwrap());
}

/// Until the daemon (its latest start in the log) has searched its trees
/// and made its first passes.
fn wait_started(env: &Env) {
    let started = || {
        let log = env.log_text();
        let latest = log.rfind("==== test: start").map_or("", |i| &log[i..]);
        latest.contains("start-up complete")
    };
    assert!(
        wait_for(Duration::from_secs(20), started),
        "the daemon did not complete its start-up"
    );
}

/// A few commits to each writer, spread over ~`ms` milliseconds.
fn write_some(writers: &mut [&mut Writer], rounds: usize, ms: u64) {
    for _ in 0..rounds {
        for w in writers.iter_mut() {
            w.commit(1);
        }
        sleep_ms(ms / rounds as u64);
    }
}

fn tenant_db(root: &Path, tenant: &str, region: &str, file: &str) -> PathBuf {
    let dir = root.join(tenant).join(region).join("data");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(file)
}

#[test]
fn tenant_tree_grows_and_shrinks() {
    let Some(env) = Env::new("tenants") else {
        return;
    };
    let root = env.path("tenants");
    // Existing tenants, and files the pattern must not take: a log
    // directory, a hidden directory, a database one level too deep.
    let acme = tenant_db(&root, "acme", "eu", "main.db");
    let acme2 = tenant_db(&root, "acme", "us", "main.db");
    let beta = tenant_db(&root, "beta", "eu", "billing.db");
    let mut w_acme = Writer::create(&acme, 1);
    let mut w_acme2 = Writer::create(&acme2, 2);
    let mut w_beta = Writer::create(&beta, 3);
    std::fs::create_dir_all(root.join("acme/eu/logs")).unwrap();
    let _not_data = Writer::create(&root.join("acme/eu/logs/x.db"), 4);
    let _hidden = Writer::create(&tenant_db(&root, ".trash", "eu", "old.db"), 5);
    let deep = root.join("acme/eu/data/archive");
    std::fs::create_dir_all(&deep).unwrap();
    let _too_deep = Writer::create(&deep.join("old.db"), 6);

    let pattern = format!("{}/*/*/data/*.db", root.display());
    let mut daemon = env.daemon(&[pattern], &[]);
    wait_started(&env);
    write_some(&mut [&mut w_acme, &mut w_acme2, &mut w_beta], 20, 1000);

    // A tenant created while running, directories first (as `mkdir -p`
    // then the application would), and one moved in from elsewhere.
    daemon.note("creating tenant gamma");
    let gamma = tenant_db(&root, "gamma", "ap", "main.db");
    let mut w_gamma = Writer::create(&gamma, 7);
    let outside = env.path("staging/delta/eu/data");
    std::fs::create_dir_all(&outside).unwrap();
    let mut w_delta = Writer::create(&outside.join("main.db"), 8);
    w_delta.commit(3);
    daemon.note("moving tenant delta in");
    std::fs::rename(env.path("staging/delta"), root.join("delta")).unwrap();
    let delta = root.join("delta/eu/data/main.db");
    drop(w_delta);
    let mut w_delta = Writer::create(&delta, 8);
    write_some(
        &mut [&mut w_acme, &mut w_gamma, &mut w_delta, &mut w_beta],
        20,
        1000,
    );

    let all = [
        ("acme/eu/data/main.db", &acme),
        ("acme/us/data/main.db", &acme2),
        ("beta/eu/data/billing.db", &beta),
        ("gamma/ap/data/main.db", &gamma),
        ("delta/eu/data/main.db", &delta),
    ];
    for (name, path) in all {
        let mut replica = env.replica(name);
        oracle::wait_caught_up(&mut replica, path, CATCH_UP);
    }
    let mut want: Vec<String> = all.iter().map(|(n, _)| n.to_string()).collect();
    want.sort();
    assert_eq!(listed_names(&env), want, "walsync list names");

    // A tenant removed while running: its replication stops, its replica
    // stays, the others go on.
    daemon.note("removing tenant beta");
    drop(w_beta);
    // Compared by newest txid: compaction may still merge its objects.
    let beta_newest = env.replica("beta/eu/data/billing.db").newest();
    std::fs::remove_dir_all(root.join("beta")).unwrap();
    let log = env.log.clone();
    assert!(
        wait_for(Duration::from_secs(15), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("beta/eu/data/billing.db: replication stopped")),
        "no line saying beta's replication stopped"
    );
    write_some(&mut [&mut w_acme, &mut w_gamma], 10, 500);
    oracle::wait_caught_up(&mut env.replica("gamma/ap/data/main.db"), &gamma, CATCH_UP);
    assert_eq!(
        env.replica("beta/eu/data/billing.db").newest(),
        beta_newest,
        "beta's replica moved on after its removal"
    );
    // The same tenant created again: replicated again under its name.
    daemon.note("re-creating tenant beta");
    let beta = tenant_db(&root, "beta", "eu", "billing.db");
    let mut w_beta = Writer::create(&beta, 9);
    write_some(&mut [&mut w_beta], 10, 500);
    oracle::wait_caught_up(&mut env.replica("beta/eu/data/billing.db"), &beta, CATCH_UP);
    daemon.assert_running();

    let t0 = Instant::now();
    let status = daemon.sigterm(Duration::from_secs(30));
    assert!(status.success(), "exit after SIGTERM: {status}");
    eprintln!("stopped in {:.1?}", t0.elapsed());
    for (name, path) in [
        ("acme/eu/data/main.db", &acme),
        ("acme/us/data/main.db", &acme2),
        ("beta/eu/data/billing.db", &beta),
        ("gamma/ap/data/main.db", &gamma),
        ("delta/eu/data/main.db", &delta),
    ] {
        assert_restores_equal(&env, name, path);
    }
}

#[test]
fn any_depth_pattern_names_by_path() {
    let Some(env) = Env::new("anydepth") else {
        return;
    };
    let root = env.path("srv");
    let dbs = ["top.db", "a/one.db", "a/b/c/deep.db"];
    let mut writers: Vec<Writer> = dbs
        .iter()
        .enumerate()
        .map(|(i, rel)| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            Writer::create(&p, i as i64 + 1)
        })
        .collect();
    let mut daemon = env.daemon(&[format!("{}/**/*.db", root.display())], &[]);
    wait_started(&env);
    // A directory chain created at once while running.
    let later = root.join("x/y/z/later.db");
    std::fs::create_dir_all(later.parent().unwrap()).unwrap();
    writers.push(Writer::create(&later, 9));
    for _ in 0..10 {
        for w in writers.iter_mut() {
            w.commit(2);
        }
        sleep_ms(100);
    }
    for rel in dbs.iter().chain(["x/y/z/later.db"].iter()) {
        oracle::wait_caught_up(&mut env.replica(rel), &root.join(rel), CATCH_UP);
    }
    daemon.assert_running();
    let status = daemon.sigterm(Duration::from_secs(30));
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert_restores_equal(&env, "a/b/c/deep.db", &root.join("a/b/c/deep.db"));
    let mut want: Vec<String> = dbs.iter().map(|s| s.to_string()).collect();
    want.push("x/y/z/later.db".into());
    want.sort();
    assert_eq!(listed_names(&env), want);
}

#[test]
fn one_name_for_two_paths_is_refused() {
    let Some(env) = Env::new("treeclash") else {
        return;
    };
    let a = tenant_db(&env.path("one"), "acme", "eu", "main.db");
    let b = tenant_db(&env.path("two"), "acme", "eu", "main.db");
    let _wa = Writer::create(&a, 1);
    let _wb = Writer::create(&b, 2);
    let o = Cmd::new(env!("CARGO_BIN_EXE_walsync-sync"))
        .arg(format!("{}/*/*/data/*.db", env.path("one").display()))
        .arg(format!("{}/*/eu/data/*.db", env.path("two").display()))
        .args(["--bucket", &env.bucket, "--prefix", &env.prefix])
        .env_remove("RUST_LOG")
        .timeout(Duration::from_secs(20))
        .output();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line: {lines:?}");
    for p in [&a, &b] {
        assert!(
            lines[0].contains(&p.display().to_string()),
            "the line does not name {}: {}",
            p.display(),
            lines[0]
        );
    }
    assert!(lines[0].contains("acme/eu/data/main.db"), "{}", lines[0]);
    assert!(env.replica("acme/eu/data/main.db").list().is_empty());
}

/// `--restore-if-missing` with a pattern: a new, empty volume gets every
/// tenant of the replica back under the pattern's root (directories
/// created) before replication starts; a tenant that exists locally is
/// left alone.
#[test]
fn restore_if_missing_brings_back_a_tree() {
    let Some(env) = Env::new("treerestore") else {
        return;
    };
    let first = env.path("vol1/tenants");
    let acme = first.join("acme/data.db");
    let beta = first.join("beta/data.db");
    for p in [&acme, &beta] {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    }
    let mut w_acme = Writer::create(&acme, 1);
    let mut w_beta = Writer::create(&beta, 2);
    let mut daemon = env.daemon(&[format!("{}/*/data.db", first.display())], &[]);
    write_some(&mut [&mut w_acme, &mut w_beta], 10, 500);
    for (name, path) in [("acme/data.db", &acme), ("beta/data.db", &beta)] {
        oracle::wait_caught_up(&mut env.replica(name), path, CATCH_UP);
    }
    assert!(daemon.sigterm(Duration::from_secs(30)).success());

    // A new volume: the pattern's root does not exist yet, except for a
    // beta the application already has.
    let second = env.path("vol2/tenants");
    let local_beta = second.join("beta/data.db");
    std::fs::create_dir_all(local_beta.parent().unwrap()).unwrap();
    let mut w_local = Writer::create(&local_beta, 3);
    w_local.commit(1);
    let local_before = oracle::source_dump(&local_beta);
    let mut daemon = env.daemon(
        &[format!("{}/*/data.db", second.display())],
        &["--restore-if-missing"],
    );
    wait_started(&env);
    let restored = second.join("acme/data.db");
    let diff = oracle::dump_diff(&oracle::source_dump(&restored), &oracle::source_dump(&acme));
    assert!(diff.is_none(), "acme restored differs: {}", diff.unwrap());
    assert_eq!(
        oracle::source_dump(&local_beta),
        local_before,
        "an existing database was replaced"
    );
    daemon.assert_running();
    assert!(daemon.sigterm(Duration::from_secs(30)).success());
}

/// A relative pattern: removing only a tenant's database file stops its
/// replication (the router names the file by its real path, the daemon
/// found it by the relative one), and a tenant directory renamed within
/// the tree is replicated under its new name within seconds (the lock of
/// the old path's watcher, still finishing, is retried every second).
#[test]
fn relative_root_file_removed_and_tenant_renamed() {
    let Some(env) = Env::new("treerel") else {
        return;
    };
    let root = env.path("tenants");
    for t in ["a", "b"] {
        std::fs::create_dir_all(root.join(t)).unwrap();
    }
    let mut wa = Writer::create(&root.join("a/data.db"), 1);
    let mut wb = Writer::create(&root.join("b/data.db"), 2);
    let mut daemon = Cmd::new(env!("CARGO_BIN_EXE_walsync-sync"))
        .arg("tenants/*/data.db")
        .args(["--bucket", &env.bucket, "--prefix", &env.prefix])
        .current_dir(env.dir.path())
        .env("RUST_LOG", "walsync=debug")
        .spawn(&env.log);
    wait_started(&env);
    write_some(&mut [&mut wa, &mut wb], 5, 300);
    oracle::wait_caught_up(
        &mut env.replica("a/data.db"),
        &root.join("a/data.db"),
        CATCH_UP,
    );

    daemon.note("removing a/data.db (the file only)");
    drop(wa);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(root.join(format!("a/data.db{suffix}")));
    }
    assert!(
        wait_for(Duration::from_secs(15), || env
            .log_text()
            .contains("a/data.db: replication stopped")),
        "a's replication did not stop after its file was removed"
    );

    daemon.note("renaming tenant b to c");
    drop(wb);
    std::fs::rename(root.join("b"), root.join("c")).unwrap();
    let c = root.join("c/data.db");
    let mut wc = Writer::create(&c, 2);
    let t0 = Instant::now();
    write_some(&mut [&mut wc], 5, 300);
    oracle::wait_caught_up(&mut env.replica("c/data.db"), &c, Duration::from_secs(15));
    eprintln!(
        "renamed tenant replicated {:.1?} after its first write",
        t0.elapsed()
    );
    daemon.assert_running();
    assert!(daemon.sigterm(Duration::from_secs(30)).success());
}

/// Two patterns storing in one place share one namespace of names: a
/// replica is restored only into the pattern that alone can produce its
/// name and only when no local file holds that name — never into another
/// pattern's tree (which would also make every later start refuse a name
/// clash).
#[test]
fn restore_if_missing_never_crosses_patterns() {
    let Some(env) = Env::new("treecross") else {
        return;
    };
    let (a, b) = (env.path("vol/a"), env.path("vol/b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut wx = Writer::create(&a.join("x.db"), 1);
    let mut wy = Writer::create(&b.join("y.db"), 2);
    let patterns = [
        format!("{}/*.db", a.display()),
        format!("{}/*.db", b.display()),
    ];
    let mut daemon = env.daemon(&patterns, &[]);
    write_some(&mut [&mut wx, &mut wy], 5, 300);
    oracle::wait_caught_up(&mut env.replica("x.db"), &a.join("x.db"), CATCH_UP);
    oracle::wait_caught_up(&mut env.replica("y.db"), &b.join("y.db"), CATCH_UP);
    assert!(daemon.sigterm(Duration::from_secs(30)).success());

    // Both databases exist: nothing is restored anywhere.
    let mut daemon = env.daemon(&patterns, &["--restore-if-missing"]);
    wait_started(&env);
    daemon.assert_running();
    assert!(daemon.sigterm(Duration::from_secs(30)).success());
    for stray in [a.join("y.db"), b.join("x.db")] {
        assert!(
            !stray.exists(),
            "{} restored into the wrong tree",
            stray.display()
        );
    }
    // An empty volume: each name could belong to either pattern, so
    // neither is restored (and the daemon still starts).
    drop((wx, wy));
    for d in [&a, &b] {
        std::fs::remove_dir_all(d).unwrap();
        std::fs::create_dir_all(d).unwrap();
    }
    let mut daemon = env.daemon(&patterns, &["--restore-if-missing"]);
    wait_started(&env);
    daemon.assert_running();
    assert!(
        env.log_text().contains("could belong to"),
        "no warning about the ambiguous names"
    );
    for f in [
        a.join("x.db"),
        a.join("y.db"),
        b.join("x.db"),
        b.join("y.db"),
    ] {
        assert!(!f.exists(), "{} restored although ambiguous", f.display());
    }
    assert!(daemon.sigterm(Duration::from_secs(30)).success());
}
