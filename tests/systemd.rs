//! The shipped systemd unit is valid (`systemd-analyze verify`) and runs the
//! daemon with the flags it documents.

use std::path::Path;

mod common;

use common::process::Cmd;

fn systemd_analyze() -> Option<&'static str> {
    let ok = Cmd::new("systemd-analyze")
        .arg("--version")
        .try_output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("systemd-analyze");
    }
    if common::require_external() {
        panic!("systemd-analyze not found (Debian package `systemd`); WALSYNC_REQUIRE_EXTERNAL=1 forbids skipping");
    }
    eprintln!("skipped: systemd-analyze not installed");
    None
}

#[test]
fn unit_file_verifies() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("scripts/walsync.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/walsync-sync --config /etc/walsync/walsync.toml ")
    );
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "Restart=on-failure",
        "EnvironmentFile=/etc/walsync/env",
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(hardening), "unit lacks {hardening:?}");
    }
    // Point ExecStart at the binary this test run built (verify checks that
    // the command exists) and verify the unit as systemd would load it.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace(
        "/usr/local/bin/walsync-sync",
        env!("CARGO_BIN_EXE_walsync-sync"),
    );
    let path = dir.path().join("walsync.service");
    std::fs::write(&path, unit).unwrap();
    let out = Cmd::new(tool).arg("verify").arg(&path).output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Warnings about the unit itself (not about the host) would be printed
    // with the unit's file name.
    assert!(
        !stderr.contains("walsync.service:"),
        "systemd-analyze complained:\n{stderr}"
    );
}

#[test]
fn example_environment_names_every_variable_the_unit_uses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("scripts/walsync.service")).unwrap();
    let env = std::fs::read_to_string(root.join("scripts/walsync.env.example")).unwrap();
    assert!(
        unit.contains("$WALSYNC_OPTS"),
        "WALSYNC_OPTS not used by the unit"
    );
    assert!(
        env.contains("WALSYNC_OPTS="),
        "WALSYNC_OPTS missing from the example env"
    );
}

#[test]
fn example_config_is_valid() {
    // The file `make install` puts at /etc/walsync/walsync.toml, which the
    // unit's ExecStart names, parses and validates.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("scripts/walsync.example.toml");
    let file = walsync::daemon::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let dbs = file.databases(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(dbs.len(), 2);
    assert_eq!(dbs[1].name.as_deref(), Some("billing"));
    assert_eq!(dbs[1].prefix.as_deref(), Some("billing-backups"));
    assert!(file.bucket.is_some());
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    assert!(makefile.contains("scripts/walsync.example.toml $(DESTDIR)/etc/walsync/walsync.toml"));
}
