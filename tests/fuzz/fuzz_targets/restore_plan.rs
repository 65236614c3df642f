//! Fuzz the object-name parsers and the restore planner over arbitrary
//! listings. Each input line is an object key; the keys that parse form a
//! replica, which is planned for the newest txid and for targets taken from
//! the input. A plan must start with a snapshot, be contiguous, end exactly
//! at its target and use only listed objects; a failure must name the
//! database. Names must round-trip through `object_key`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use walsync::ltx;
use walsync::replica::{Replica, ReplicaObject};
use walsync::restore::Target;
use walsync::storage::FileStorage;

fn storage() -> &'static FileStorage {
    static S: OnceLock<(tempfile::TempDir, FileStorage)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::create(dir.path()).expect("file storage");
        (dir, s)
    })
    .1
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.lines();
    let prefix = lines.next().unwrap_or("");
    let mut objects = Vec::new();
    let mut targets = vec![Target::Latest];
    for line in lines {
        if let Some(t) = line.strip_prefix('@') {
            if let Ok(t) = t.parse::<u64>() {
                targets.push(Target::Txid(t));
            }
            continue;
        }
        if let Some(name) = line.rsplit('/').next() {
            if let Some((min, max)) = ltx::parse_object_name(name) {
                assert!(min >= 1 && min <= max);
                assert_eq!(ltx::file_name(min, max), name);
            }
        }
        let Some(k) = ltx::parse_object_key(prefix, line) else {
            continue;
        };
        let again = ltx::object_key(prefix, &k.db, k.level, k.min_txid, k.max_txid);
        assert_eq!(ltx::parse_object_key(prefix, &again), Some(k.clone()));
        if k.db != "db" {
            continue;
        }
        objects.push(ReplicaObject {
            key: again,
            level: k.level,
            min_txid: k.min_txid,
            max_txid: k.max_txid,
            size: (k.max_txid - k.min_txid) % 1000,
        });
    }
    let replica = Replica {
        db: "db".into(),
        location: "fuzz/db".into(),
        objects,
    };
    for target in targets {
        match replica.plan(storage(), target) {
            Ok(plan) => {
                let first = plan.objects.first().expect("a plan has objects");
                assert_eq!(first.min_txid, 1, "a plan starts with a snapshot");
                let mut pos = 0u64;
                for o in &plan.objects {
                    assert!(replica.objects.contains(o), "planned an unlisted object");
                    assert!(
                        o.min_txid <= pos + 1 && o.max_txid > pos,
                        "chain not contiguous"
                    );
                    pos = o.max_txid;
                }
                assert_eq!(pos, plan.txid, "chain ends off target");
                if let Target::Txid(t) = target {
                    assert_eq!(plan.txid, t);
                }
            }
            Err(e) => {
                let line = e.to_string();
                assert!(!line.contains('\n'), "multi-line error: {line}");
                assert!(
                    line.contains("db"),
                    "error does not name the database: {line}"
                );
            }
        }
    }
});
