//! Unit tests of restore planning and output handling.

use super::*;

fn obj(level: u8, min: u64, max: u64) -> ReplicaObject {
    ReplicaObject {
        key: ltx::object_key("", "a.db", level, min, max),
        level,
        min_txid: min,
        max_txid: max,
        size: 100,
    }
}

fn replica(objects: Vec<ReplicaObject>) -> Replica {
    Replica {
        db: "a.db".into(),
        location: "file:///r/a.db".into(),
        objects,
    }
}

fn ranges(r: &Replica, target: u64) -> Vec<(u8, u64, u64)> {
    r.chain(target)
        .unwrap()
        .iter()
        .map(|o| (o.level, o.min_txid, o.max_txid))
        .collect()
}

#[test]
fn greedy_chain_prefers_furthest_reach() {
    let mut objects = vec![obj(9, 1, 1), obj(9, 1, 6), obj(1, 2, 4), obj(2, 5, 12)];
    objects.extend((2..=14).map(|t| obj(0, t, t)));
    let r = replica(objects);
    assert_eq!(
        ranges(&r, 14),
        [(9, 1, 6), (2, 5, 12), (0, 13, 13), (0, 14, 14)]
    );
    assert_eq!(ranges(&r, 5), [(9, 1, 1), (1, 2, 4), (0, 5, 5)]);
    assert_eq!(ranges(&r, 6), [(9, 1, 6)]);
    assert_eq!(ranges(&r, 1), [(9, 1, 1)]);
}

#[test]
fn equal_reach_prefers_higher_level() {
    let r = replica(vec![obj(0, 1, 1), obj(9, 1, 3), obj(0, 1, 3), obj(0, 2, 2)]);
    assert_eq!(ranges(&r, 3), [(9, 1, 3)]);
}

#[test]
fn chain_errors_name_the_hole() {
    let r = replica(vec![obj(9, 1, 2), obj(0, 3, 3), obj(0, 6, 6), obj(1, 3, 9)]);
    let e = r.chain(6).unwrap_err().to_string();
    assert!(e.contains("txids 4..5 are in no object"), "{e}");
    assert!(e.contains("0000000000000003-0000000000000003.ltx"), "{e}");
    assert!(e.contains("0000000000000006-0000000000000006.ltx"), "{e}");
    assert!(e.contains("covers txid 4 but ends at txid 9"), "{e}");
    // Exactly 9 works through the compaction.
    assert_eq!(ranges(&r, 9), [(9, 1, 2), (1, 3, 9)]);
    let e = replica(vec![obj(9, 1, 5)])
        .chain(3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("txid 3 is before the first snapshot"), "{e}");
    let e = replica(vec![obj(0, 2, 5)])
        .chain(3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no snapshot"), "{e}");
}

#[test]
fn long_chains_plan_quickly() {
    let n = 200_000u64;
    let mut objects = vec![obj(9, 1, 1)];
    objects.extend((2..=n).map(|t| obj(0, t, t)));
    let r = replica(objects);
    let start = Instant::now();
    assert_eq!(r.chain(n).unwrap().len() as u64, n);
    assert!(start.elapsed() < Duration::from_secs(10));
}

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
