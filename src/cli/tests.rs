//! The defaults the command line states and the ones it applies, checked
//! against [`crate::defaults`].
//!
//! A help text says its default in words ("(default 4)") because argh prints
//! doc comments verbatim; these tests read every subcommand's `--help` and
//! fail when a stated default is not the constant the code applies, or when
//! a help text states a default no test knows about.

use super::*;
use std::time::Duration;

/// Every subcommand's `--help` text, by name.
fn help_texts() -> Vec<(&'static str, String)> {
    [
        "sync", "restore", "snapshot", "list", "verify", "compact", "status",
    ]
    .into_iter()
    .map(
        |cmd| match Walsync::from_args(&["walsync"], &[cmd, "--help"]) {
            Err(early) => (cmd, early.output),
            Ok(_) => panic!("{cmd} --help parsed as a command"),
        },
    )
    .collect()
}

/// `(flag, description)` of each option in a help text, the description's
/// wrapped lines joined with single spaces.
fn options(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in help.lines() {
        if let Some(rest) = line.strip_prefix("  --") {
            let (flag, text) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push((format!("--{flag}"), text.trim().to_string()));
        } else if line.starts_with("    ") {
            if let Some((_, text)) = out.last_mut() {
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(line.trim());
            }
        }
    }
    out
}

/// What a help text's "(default …)" says: the value up to `:`, `;` or `)`
/// ("(default 0: ship each commit at once)" → "0"), or the prose after
/// "(default: " ("(default: off)" → "off)").
fn stated_default(text: &str) -> Option<&str> {
    let after = &text[text.find("(default")? + "(default".len()..];
    match after.strip_prefix(':') {
        Some(prose) => Some(prose.trim()),
        None => after.trim().split([':', ';', ')']).next(),
    }
}

/// What a stated default must equal.
enum Want {
    Count(u64),
    Time(Duration),
    Intervals([Duration; 3]),
    /// Prose that must contain this.
    Says(&'static str),
}

fn table() -> Vec<(&'static str, &'static str, Want)> {
    use crate::defaults as d;
    use Want::*;
    let endpoint = Says("$AWS_ENDPOINT_URL_S3, else AWS");
    let mut t = vec![
        ("sync", "--endpoint", endpoint),
        (
            "sync",
            "--uploaders",
            Says("4, one per 500 databases up to 24"),
        ),
        ("sync", "--snapshot-interval", Time(d::SNAPSHOT_INTERVAL)),
        ("sync", "--checkpoint-pages", Count(d::CHECKPOINT_PAGES)),
        ("sync", "--truncate-pages", Count(d::TRUNCATE_PAGES)),
        ("sync", "--max-wal-mib", Count(d::MAX_WAL_MIB)),
        ("sync", "--min-put-interval", Time(d::MIN_PUT_INTERVAL)),
        ("sync", "--close-idle-after", Time(d::CLOSE_IDLE_AFTER)),
        ("sync", "--memory-mib", Count(d::MEMORY_MIB)),
        ("sync", "--shutdown-timeout", Time(d::SHUTDOWN_TIMEOUT)),
        ("sync", "--metrics-addr", Says("off")),
        ("sync", "--status-socket", Says("see its --help")),
        ("status", "--status-socket", Says("see below")),
        ("sync", "--heartbeat-url", Says("off")),
        ("sync", "--heartbeat-interval", Time(d::HEARTBEAT_INTERVAL)),
        ("sync", "--heartbeat-max-lag", Time(d::HEARTBEAT_MAX_LAG)),
        ("sync", "--retention", Time(d::RETENTION)),
        ("sync", "--retention-grace", Time(d::RETENTION_GRACE)),
        ("sync", "--compaction", Intervals(d::COMPACTION_INTERVALS)),
        (
            "sync",
            "--max-requests-per-sec",
            Count(u64::from(d::MAX_REQUESTS_PER_SEC)),
        ),
        ("sync", "--lease-ttl", Time(d::LEASE_TTL)),
        ("restore", "--parallel", Count(d::RESTORE_PARALLEL as u64)),
        ("verify", "--parallel", Count(d::RESTORE_PARALLEL as u64)),
        ("snapshot", "--timeout", Time(d::SNAPSHOT_TIMEOUT)),
        ("compact", "--retention", Time(d::RETENTION)),
    ];
    for cmd in ["restore", "snapshot", "list", "verify", "compact"] {
        t.push((cmd, "--endpoint", Says("$AWS_ENDPOINT_URL_S3, else AWS")));
    }
    for cmd in ["sync", "restore", "snapshot", "list", "verify", "compact"] {
        t.push((cmd, "--region", Says(d::S3_REGION)));
    }
    t
}

#[test]
fn every_stated_default_is_the_constant() {
    let table = table();
    let mut seen = vec![false; table.len()];
    for (cmd, help) in help_texts() {
        for (flag, text) in options(&help) {
            let Some(stated) = stated_default(&text) else {
                continue;
            };
            let i = table
                .iter()
                .position(|(c, f, _)| *c == cmd && *f == flag)
                .unwrap_or_else(|| {
                    panic!("{cmd} {flag} states a default no test checks: {text:?}")
                });
            seen[i] = true;
            let ok = match &table[i].2 {
                Want::Count(n) => stated.parse::<u64>().ok() == Some(*n),
                Want::Time(d) => crate::daemon::config::duration("", stated).ok() == Some(*d),
                Want::Intervals(d) => parse_compaction(stated).ok() == Some(d.map(Some)),
                Want::Says(s) => stated.contains(s),
            };
            assert!(ok, "{cmd} {flag}: help states {stated:?}, not the default");
        }
    }
    for ((cmd, flag, _), seen) in table.iter().zip(seen) {
        assert!(seen, "{cmd} {flag}: no \"(default …)\" in its help text");
    }
}

#[test]
fn stated_default_reads_value_or_prose() {
    assert_eq!(stated_default("threads (default 4)"), Some("4"));
    assert_eq!(stated_default("x (default 0: ship at once)"), Some("0"));
    assert_eq!(stated_default("x (default 30s,5m,1h)"), Some("30s,5m,1h"));
    assert_eq!(stated_default("x (default: off)"), Some("off)"));
    assert_eq!(stated_default("default: $KEY (hex)"), None);
}

/// The daemon's settings with no flag and no config file are the table's.
#[test]
fn sync_applies_the_defaults() {
    use crate::defaults as d;
    let o = SyncArgs::default()
        .options(vec![DbSpec::plain("/x.db")])
        .unwrap();
    // Sized by the databases (the help's "4, one per 500 databases up to
    // 24"): defaults::uploaders_for.
    assert_eq!(o.uploaders, None);
    assert_eq!(
        (d::UPLOADERS, d::DBS_PER_UPLOADER, d::MAX_AUTO_UPLOADERS),
        (4, 500, 24)
    );
    assert_eq!(
        [1, 2_499, 2_500, 10_000, 100_000].map(|n| d::uploaders_for(n, 0)),
        [4, 4, 5, 20, 24]
    );
    // Under a request cap: no more threads than tokens a second (at least 4).
    assert_eq!(
        [1, 10, 100].map(|rps| d::uploaders_for(10_000, rps)),
        [4, 10, 20]
    );
    assert_eq!(o.memory_budget, d::MEMORY_MIB << 20);
    assert_eq!(o.shutdown_timeout, d::SHUTDOWN_TIMEOUT);
    assert_eq!(o.max_requests_per_sec, d::MAX_REQUESTS_PER_SEC);
    assert_eq!(o.compaction.intervals, d::COMPACTION_INTERVALS.map(Some));
    assert_eq!(o.compaction.grace, d::RETENTION_GRACE);
    assert_eq!(o.db.checkpoint_pages, d::CHECKPOINT_PAGES);
    assert_eq!(o.db.truncate_pages, d::TRUNCATE_PAGES);
    assert_eq!(o.db.snapshot_interval, Some(d::SNAPSHOT_INTERVAL));
    assert_eq!(o.db.min_put_interval, d::MIN_PUT_INTERVAL);
    assert_eq!(o.db.close_idle_after, Some(d::CLOSE_IDLE_AFTER));
    assert_eq!(o.db.max_wal_bytes, d::MAX_WAL_MIB << 20);
    assert_eq!(o.db.retention, Some(d::RETENTION));
    assert!(o.heartbeat.is_none() && o.metrics_addr.is_none());
    assert_eq!(o.status_socket, crate::daemon::status::Setting::Default);

    let hb = SyncArgs {
        heartbeat_url: Some("https://hc.example/x".into()),
        ..SyncArgs::default()
    }
    .options(vec![DbSpec::plain("/x.db")])
    .unwrap()
    .heartbeat
    .unwrap();
    assert_eq!(hb.interval, d::HEARTBEAT_INTERVAL);
    assert_eq!(hb.max_lag, d::HEARTBEAT_MAX_LAG);
}

/// `scripts/walsync.example.toml` shows the defaults under "Pipeline
/// (defaults shown)": set as a config file, they change nothing.
#[test]
fn example_config_shows_the_defaults() {
    let example = include_str!("../../scripts/walsync.example.toml");
    let start = example
        .find("# Pipeline (defaults shown).")
        .expect("section in the example");
    let section: String = example[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim_start_matches("# ").to_string() + "\n")
        .collect();
    assert!(section.contains("memory-mib"), "{section}");
    let dir = std::env::temp_dir().join(format!("walsync-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, &section).unwrap();
    let mut from_file = SyncArgs {
        config: Some(path.display().to_string()),
        ..SyncArgs::default()
    };
    let specs = from_file.apply_config().unwrap();
    assert!(specs.is_empty());
    let plain = vec![DbSpec::plain("/x.db")];
    let a = from_file.options(plain.clone()).unwrap();
    let b = SyncArgs::default().options(plain).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"), "{section}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The container settings come from flags or the file alike, `--exec` is
/// split into words, and `--require-replica` alone is refused.
#[test]
fn container_settings_from_flags_or_file() {
    use crate::daemon::missing::IfMissing;
    let plain = || vec![DbSpec::plain("/x.db")];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "exec = \"myapp --name 'a b'\"\nrestore-if-missing = true\nrequire-replica = true\n",
    )
    .unwrap();
    let mut from_file = SyncArgs {
        config: Some(path.display().to_string()),
        ..SyncArgs::default()
    };
    from_file.apply_config().unwrap();
    let o = from_file.options(plain()).unwrap();
    assert_eq!(
        o.exec,
        Some(vec!["myapp".into(), "--name".into(), "a b".into()])
    );
    assert_eq!(o.if_missing, IfMissing::RestoreRequired);

    let flags = SyncArgs::from_args(&["walsync-sync"], &["x.db", "--restore-if-missing"]).unwrap();
    assert_eq!(
        flags.options(plain()).unwrap().if_missing,
        IfMissing::Restore
    );
    assert_eq!(
        SyncArgs::default().options(plain()).unwrap().if_missing,
        IfMissing::Refuse
    );
    let alone = SyncArgs::from_args(&["walsync-sync"], &["x.db", "--require-replica"]).unwrap();
    let e = alone.options(plain()).unwrap_err().to_string();
    assert!(
        e.contains("--require-replica needs --restore-if-missing"),
        "{e}"
    );
    let bad = SyncArgs::from_args(&["walsync-sync"], &["x.db", "--exec", "a 'b"]).unwrap();
    assert!(bad.options(plain()).is_err());
}

#[test]
fn duration_or_falls_back_and_names_the_flag() {
    let d = Duration::from_secs(7);
    assert_eq!(duration_or("x", &None, d).unwrap(), d);
    assert_eq!(
        duration_or("x", &Some("0".into()), d).unwrap(),
        Duration::ZERO
    );
    let e = duration_or("lease-ttl", &Some("soon".into()), d).unwrap_err();
    assert!(e.to_string().contains("--lease-ttl \"soon\""), "{e}");
}

/// The macro-built flags land in the command's struct and in `storage()`.
#[test]
fn one_shot_commands_share_the_storage_flags() {
    let args = [
        "compact",
        "app.db",
        "--bucket",
        "s3://b/p",
        "--endpoint",
        "http://127.0.0.1:1",
        "--region",
        "garage",
        "--path-style",
        "--encryption-key-file",
        "/k",
        "--decryption-key-file",
        "/old1",
        "--decryption-key-file",
        "/old2",
    ];
    let Walsync {
        command: Some(Command::Compact(a)),
        ..
    } = Walsync::from_args(&["walsync"], &args).unwrap()
    else {
        panic!("not compact");
    };
    let want = StorageFlags::new(
        "s3://b/p".into(),
        Some("http://127.0.0.1:1".into()),
        Some("garage".into()),
        true,
        Some("/k".into()),
        vec!["/old1".into(), "/old2".into()],
    );
    assert_eq!(a.storage(), want);
    assert_eq!(a.retention, None);

    let Walsync {
        command: Some(Command::List(l)),
        ..
    } = Walsync::from_args(&["walsync"], &["list", "--bucket", "b", "--json"]).unwrap()
    else {
        panic!("not list");
    };
    assert!(l.json);
    assert_eq!(l.storage().spec, "b");
    assert_eq!(l.storage().s3.path_style, None);
}

/// `walsync sync`'s storage: bucket and prefix joined, the rest as given.
#[test]
fn sync_storage_joins_bucket_and_prefix() {
    let s = SyncArgs {
        bucket: Some("b".into()),
        prefix: Some("/p/".into()),
        region: Some("r".into()),
        ..SyncArgs::default()
    };
    let f = s.storage().unwrap();
    assert_eq!(f.spec, "s3://b/p");
    assert_eq!(f.s3.region.as_deref(), Some("r"));
    assert!(SyncArgs::default().storage().is_err());
}

/// Every help text: `walsync --help`, each subcommand's, `walsync-sync --help`.
fn all_help_texts() -> Vec<(String, String)> {
    let top = match Walsync::from_args(&["walsync"], &["--help"]) {
        Err(early) => early.output,
        Ok(_) => panic!("--help parsed as a command"),
    };
    let sync = match SyncArgs::from_args(&["walsync-sync"], &["--help"]) {
        Err(early) => early.output,
        Ok(_) => panic!("walsync-sync --help parsed as a command"),
    };
    let mut all = vec![("walsync".to_string(), top), ("walsync-sync".into(), sync)];
    all.extend(
        help_texts()
            .into_iter()
            .map(|(cmd, h)| (format!("walsync {cmd}"), h)),
    );
    all
}

/// Each `--help` fits on one 80 x 40 screen and names the environment
/// variables the command reads.
#[test]
fn help_fits_one_screen_and_names_the_environment() {
    for (cmd, help) in all_help_texts() {
        let lines: Vec<&str> = help.trim_end().lines().collect();
        assert!(lines.len() <= 40, "{cmd} --help: {} lines", lines.len());
        for line in &lines {
            assert!(line.chars().count() <= 80, "{cmd} --help: {line:?}");
        }
        if cmd == "walsync status" {
            // Talks to the daemon only: no storage, no logging.
            for var in ["RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"] {
                assert!(help.contains(var), "{cmd} --help does not name ${var}");
            }
            continue;
        }
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL_S3",
            "AWS_REGION",
            "AWS_CA_BUNDLE",
            "WALSYNC_ENCRYPTION_KEY",
            "RUST_LOG",
        ] {
            assert!(help.contains(var), "{cmd} --help does not name ${var}");
        }
    }
}

/// The daemon's flags left out of the options list to keep its help short
/// are each still named, with their default, in its notes; every flag the
/// daemon accepts appears in its help.
#[test]
fn sync_help_names_every_flag() {
    let (_, help) = all_help_texts().remove(1);
    for flag in [
        "--config",
        "--bucket",
        "--prefix",
        "--endpoint",
        "--region",
        "--path-style",
        "--uploaders",
        "--snapshot-interval",
        "--checkpoint-pages",
        "--truncate-pages",
        "--max-wal-mib",
        "--min-put-interval",
        "--memory-mib",
        "--shutdown-timeout",
        "--metrics-addr",
        "--status-socket",
        "--heartbeat-url",
        "--heartbeat-interval",
        "--heartbeat-max-lag",
        "--retention",
        "--retention-grace",
        "--compaction",
        "--max-requests-per-sec",
        "--encryption-key-file",
        "--decryption-key-file",
        "--lease-ttl",
        "--no-fencing",
        "--exec",
        "--restore-if-missing",
        "--require-replica",
        "--version",
    ] {
        let named = help.lines().any(|l| {
            l.trim_start()
                .split([' ', ',', '(', ')', ':'])
                .any(|w| w == flag)
        });
        assert!(named, "walsync-sync --help does not name {flag}");
        // A hidden flag must still parse.
        let switch = [
            "--path-style",
            "--no-fencing",
            "--restore-if-missing",
            "--require-replica",
            "--version",
        ];
        if !switch.contains(&flag) {
            let args = ["x.db", flag, "1"];
            let parsed = SyncArgs::from_args(&["walsync-sync"], &args);
            assert!(parsed.is_ok(), "{flag} is not accepted");
        }
    }
}

/// `--version`: the package version and the git commit of the build
/// (12 hex digits, or `unknown` when built outside a git checkout).
#[test]
fn version_line_names_version_and_commit() {
    let line = version_line("walsync");
    let want = format!("walsync {} (git commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&want), "{line}");
    assert!(
        GIT_COMMIT == "unknown"
            || (GIT_COMMIT.len() >= 7 && GIT_COMMIT.chars().all(|c| c.is_ascii_hexdigit())),
        "{GIT_COMMIT:?}"
    );
    assert!(line.ends_with(&format!("{GIT_COMMIT})")), "{line}");
    for argv in [["--version"], ["-V"]] {
        let a = Walsync::from_args(&["walsync"], &argv).unwrap();
        assert!(a.version && a.command.is_none());
        let s = SyncArgs::from_args(&["walsync-sync"], &argv).unwrap();
        assert!(s.version);
    }
}
