//! Unit tests of the replica model: the chain planner and the listing
//! parser.

use std::time::{Duration, Instant};

use super::*;
use crate::ltx;
use crate::storage::{FileStorage, Metadata, Storage};

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
fn greedy_starts_anywhere_and_stops_at_the_cap() {
    let objects: Vec<ReplicaObject> = (1..=10).map(|t| obj(0, t, t)).collect();
    let (chain, reached) = greedy(&objects, 4, u64::MAX, 3);
    let got: Vec<u64> = chain.iter().map(|o| o.max_txid).collect();
    assert_eq!((got, reached), (vec![5, 6, 7], 7));
    // Nothing continues txid 10.
    assert_eq!(greedy(&objects, 10, u64::MAX, 5), (Vec::new(), 10));
    // A limit is never passed.
    let (chain, reached) = greedy(&[obj(1, 1, 8), obj(0, 1, 1)], 0, 5, 9);
    assert_eq!((chain.len(), reached), (1, 1));
}

#[test]
fn listing_is_strict_or_lenient_about_stray_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = FileStorage::create(dir.path()).unwrap();
    let meta = Metadata::new();
    for (min, max) in [(1, 3), (4, 4), (5, 6)] {
        let level = if min == 1 { ltx::SNAPSHOT_LEVEL } else { 0 };
        s.put(&ltx::object_key("", "a.db", level, min, max), b"x", &meta)
            .unwrap();
    }
    // A database nested below this one is not this one's.
    s.put(&ltx::object_key("", "a.db/sub.db", 0, 7, 7), b"x", &meta)
        .unwrap();
    let r = list(&s, "a.db").unwrap();
    assert_eq!(r.objects.len(), 3);
    assert_eq!(r.newest_txid(), 6);

    s.put("a.db/0000/notes.txt", b"x", &meta).unwrap();
    let e = list(&s, "a.db").unwrap_err().to_string();
    assert!(
        e.contains("unparseable object name") && e.contains("notes.txt"),
        "{e}"
    );
    let lenient = listing::list_level(&s, "a.db", 0, None, u64::MAX, Strictness::Lenient).unwrap();
    assert_eq!(lenient.len(), 2);
    let strict = listing::list_level(&s, "a.db", 0, None, u64::MAX, Strictness::Strict);
    assert!(strict.is_err());
    // After txid 4: only what starts later.
    let after = listing::after_txid("a.db", 0, 4);
    let later =
        listing::list_level(&s, "a.db", 0, Some(after), u64::MAX, Strictness::Lenient).unwrap();
    assert_eq!(later.iter().map(|o| o.min_txid).collect::<Vec<_>>(), [5]);
}
