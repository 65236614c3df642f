//! Unit tests of restore output handling.

use super::*;

#[test]
fn abandoned_temps_of_dead_restores_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join(".out.db.walsync-restore-4000000000-1f.tmp");
    let dead_wal = dir
        .path()
        .join(".out.db.walsync-restore-4000000000-1f.tmp-wal");
    let live = dir.path().join(format!(
        ".out.db.walsync-restore-{}-2.tmp",
        std::process::id()
    ));
    let other = dir
        .path()
        .join(".other.db.walsync-restore-4000000000-3.tmp");
    for p in [&dead, &dead_wal, &live, &other] {
        std::fs::write(p, b"x").unwrap();
    }
    remove_abandoned_temps(dir.path(), "out.db");
    assert!(!dead.exists() && !dead_wal.exists());
    assert!(live.exists() && other.exists());
}
