//! Secrets never leak: a full run (sync with metrics and heartbeat, then
//! list, verify, restore) at trace level, the metrics page, `--help` of
//! every command and the errors of wrong credentials and of a config file
//! that tries to hold one are captured, and none contains the secret access
//! key, the session token or the heartbeat URL's token.

mod common;

use std::time::Duration;

use common::daemon::{commit, create_db, scrape};
use common::process::{log_path, wait_for, Cmd, Proc};

const SYNC: &str = env!("CARGO_BIN_EXE_walsync-sync");
const WALSYNC: &str = env!("CARGO_BIN_EXE_walsync");

/// Every captured text, with what produced it.
struct Captured(Vec<(String, String)>);

impl Captured {
    fn add(&mut self, what: &str, text: impl Into<String>) {
        self.0.push((what.to_string(), text.into()));
    }

    fn output(&mut self, what: &str, out: &std::process::Output) {
        self.add(
            what,
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }

    fn assert_free_of(&self, secrets: &[(&str, &str)]) {
        for (what, text) in &self.0 {
            assert!(
                !text.is_empty() || what.contains("metrics"),
                "{what}: nothing captured"
            );
            for (name, value) in secrets {
                assert!(value.len() >= 8, "{name} too short to search for");
                assert!(!text.contains(value), "{name} appears in {what}:\n{text}");
            }
        }
    }
}

#[test]
fn no_secret_in_logs_errors_help_or_metrics() {
    let Some(s3) = common::s3_config_or_skip("secrets") else {
        return;
    };
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
    let token = "hbSECRETtoken77f3";
    let session = "SESSIONtokenValue0123";
    let mut cap = Captured(Vec::new());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let conn = create_db(&db);
    commit(&conn, 3);
    let bucket = format!("s3://{}/{}", s3.bucket, s3.prefix);
    let addr = format!("127.0.0.1:{}", common::closed_port());
    let hb_port = common::closed_port();
    let hb_url = format!("http://user:{token}@127.0.0.1:{hb_port}/ping/{token}?k={token}");

    for level in [
        "walsync=trace",
        "trace",
        "trace,ureq=trace,ureq_proto=trace",
    ] {
        // The daemon: trace logging, metrics, a heartbeat whose URL is a secret.
        let args: Vec<String> = vec![
            db.display().to_string(),
            "--bucket".into(),
            bucket.clone(),
            "--metrics-addr".into(),
            addr.clone(),
            "--heartbeat-url".into(),
            hb_url.clone(),
            "--heartbeat-interval".into(),
            "200ms".into(),
        ];
        let log = log_path(&format!("secrets-{}", level.len()));
        let mut d = Proc::start(SYNC, &args, &[("RUST_LOG", level.into())], &log);
        let mut page = String::new();
        assert!(wait_for(Duration::from_secs(20), || {
            page = scrape(&addr).unwrap_or_default();
            page.contains("walsync_database_durable_txid{db=\"s.db\"}")
        }));
        for _ in 0..3 {
            commit(&conn, 2);
        }
        assert!(wait_for(Duration::from_secs(20), || d
            .log_text()
            .contains("heartbeat to http://127.0.0.1:")));
        cap.add(
            &format!("metrics ({level})"),
            scrape(&addr).unwrap_or_default(),
        );
        assert!(d.sigterm(Duration::from_secs(20)).success());
        cap.add(&format!("daemon log ({level})"), d.log_text());

        // The client commands, at the same level.
        let restored = dir.path().join(format!("restored-{}.db", level.len()));
        for (what, args) in [
            ("list", vec!["list", "--bucket", &bucket]),
            ("list s.db", vec!["list", "s.db", "--bucket", &bucket]),
            (
                "verify",
                vec!["verify", "s.db", "--restore", "--bucket", &bucket],
            ),
            (
                "restore",
                vec![
                    "restore",
                    "s.db",
                    "-o",
                    restored.to_str().unwrap(),
                    "--bucket",
                    &bucket,
                ],
            ),
        ] {
            let out = Cmd::new(WALSYNC)
                .args(&args)
                .env("RUST_LOG", level)
                .output();
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cap.output(&format!("{what} ({level})"), &out);
        }
    }

    // --help of every command.
    for args in [
        vec!["--help"],
        vec!["sync", "--help"],
        vec!["restore", "--help"],
        vec!["list", "--help"],
        vec!["verify", "--help"],
        vec!["snapshot", "--help"],
    ] {
        let out = Cmd::new(WALSYNC).args(&args).output();
        cap.output(&format!("walsync {}", args.join(" ")), &out);
    }
    let out = Cmd::new(SYNC).arg("--help").output();
    cap.output("walsync-sync --help", &out);

    // Wrong credentials (a wrong secret and a session token): the error
    // names the bucket and the cause, never the values.
    let wrong = "WRONGsecretValue9876543210";
    let out = Cmd::new(WALSYNC)
        .args(["list", "--bucket", &bucket])
        .env("AWS_SECRET_ACCESS_KEY", wrong)
        .env("AWS_SESSION_TOKEN", session)
        .env("RUST_LOG", "trace")
        .output();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("access denied"), "{stderr}");
    cap.output("list with a wrong secret", &out);
    let out = Cmd::new(SYNC)
        .args([db.to_str().unwrap(), "--bucket", &bucket])
        .env("AWS_SECRET_ACCESS_KEY", wrong)
        .env("RUST_LOG", "trace")
        .output();
    assert!(!out.status.success());
    cap.output("sync with a wrong secret", &out);

    // A config file is no place for credentials: refused, value not echoed.
    let cfg = dir.path().join("walsync.toml");
    std::fs::write(
        &cfg,
        format!("bucket = \"{bucket}\"\nsecret-access-key = \"{wrong}\"\n"),
    )
    .unwrap();
    let out = Cmd::new(SYNC)
        .args(["--config", cfg.to_str().unwrap()])
        .output();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `secret-access-key`"));
    cap.output("config with a secret", &out);

    cap.assert_free_of(&[
        ("AWS_SECRET_ACCESS_KEY", &secret),
        ("the wrong secret", wrong),
        ("AWS_SESSION_TOKEN", session),
        ("the heartbeat token", token),
    ]);
}
