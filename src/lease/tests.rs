//! Unit tests of leases, fencing and the conditional-write probe.

use super::*;
use crate::defaults::LEASE_TTL;
use crate::storage::FileStorage;

fn store() -> (tempfile::TempDir, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
    (dir, s)
}

#[test]
fn file_store_does_conditional_writes() {
    let (_d, s) = store();
    assert_eq!(probe(&*s).unwrap(), Mode::Conditional);
    assert!(s.list("", None).unwrap().is_empty(), "probe object left");
}

#[test]
fn second_holder_is_refused_until_expiry() {
    let (_d, s) = store();
    for mode in [Mode::Conditional, Mode::Fallback] {
        let db = format!("app-{mode:?}.db");
        let a = Fencer::new(s.clone(), mode, Duration::from_millis(400));
        let b = Fencer::new(s.clone(), mode, Duration::from_millis(400));
        a.acquire(&db, None).unwrap();
        let e = b.acquire(&db, None).unwrap_err().to_string();
        assert!(e.contains(&db) && e.contains(a.holder()), "{e}");
        std::thread::sleep(Duration::from_millis(500));
        b.acquire(&db, None).unwrap();
        // `a` is fenced out at its next renewal, and stays out.
        let e = a.ensure(&db).unwrap_err().to_string();
        assert!(e.contains("fenced out") && e.contains(b.holder()), "{e}");
        assert!(a.ensure(&db).is_err());
        b.ensure(&db).unwrap();
        // A clean release lets the next writer in at once.
        b.release(&db);
        let c = Fencer::new(s.clone(), mode, Duration::from_secs(60));
        c.acquire(&db, None).unwrap();
    }
}

#[test]
fn a_restart_holding_the_same_local_lock_takes_over_at_once() {
    let (d, s) = store();
    let db_file = d.path().join("app.db");
    std::fs::write(&db_file, b"").unwrap();
    let ttl = Duration::from_secs(60);
    let lock = crate::sqlite::lock::try_lock(&db_file).unwrap();
    let id = local_identity(&lock).unwrap();
    let a = Fencer::new(s.clone(), Mode::Fallback, ttl);
    a.acquire("app.db", Some(&id)).unwrap();
    drop(lock); // `a` crashed: its lock is gone, its lease is not
                // Another process without that lock is refused.
    let b = Fencer::new(s.clone(), Mode::Fallback, ttl);
    assert!(b.acquire("app.db", Some("other:1:2")).is_err());
    assert!(b.acquire("app.db", None).is_err());
    // The restart takes the lock again and the lease at once.
    let lock = crate::sqlite::lock::try_lock(&db_file).unwrap();
    let c = Fencer::new(s.clone(), Mode::Fallback, ttl);
    c.acquire("app.db", local_identity(&lock).as_deref())
        .unwrap();
    let e = a.ensure("app.db");
    assert!(e.is_ok(), "{e:?}"); // `a` had plenty of TTL left: no check
}

#[test]
fn conditional_segment_puts_refuse_a_second_writer() {
    let (_d, s) = store();
    let fa = Arc::new(Fencer::new(s.clone(), Mode::Conditional, LEASE_TTL));
    let a = FencedStorage::new(s.clone(), fa.clone());
    fa.acquire("x.db", None).unwrap();
    let key = "x.db/0000/0000000000000001-0000000000000001.ltx";
    a.put(key, b"one", &Metadata::new()).unwrap();
    // Our own retry of the same PUT is fine.
    a.put(key, b"one", &Metadata::new()).unwrap();
    // A writer that bypassed the lease (same key, other holder) is refused.
    let fb = Arc::new(Fencer::new(s.clone(), Mode::Conditional, LEASE_TTL));
    fb.held.lock().unwrap().insert(
        "x.db".into(),
        Arc::new(Mutex::new(Held {
            expires_ms: i64::MAX / 2,
            ..Held::default()
        })),
    );
    let b = FencedStorage::new(s.clone(), fb);
    let e = b
        .put(key, b"two", &Metadata::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fenced out") && e.contains(fa.holder()), "{e}");
    assert_eq!(s.get(key).unwrap(), b"one");
}

#[test]
fn lease_text_round_trips() {
    let mut l = Lease {
        holder: "h:1:ab".into(),
        expires_ms: 1_700_000_000_000,
        local: None,
    };
    assert_eq!(Lease::decode(&l.encode()), Some(l.clone()));
    l.local = Some("boot:1:2".into());
    assert_eq!(Lease::decode(&l.encode()), Some(l));
    assert_eq!(Lease::decode(b"junk"), None);
}

/// Requests sent so far through `s`, all kinds and keys.
fn requests(s: &crate::storage::CountingStorage) -> u64 {
    s.snapshot()
        .values()
        .map(|c| c.requests.iter().sum::<u64>())
        .sum()
}

#[test]
fn a_release_costs_one_request_conditional_two_fallback_none_expired() {
    let (_d, inner) = store();
    for (mode, cost) in [(Mode::Conditional, 1), (Mode::Fallback, 2)] {
        let s = Arc::new(crate::storage::CountingStorage::new(inner.clone()));
        let db = format!("app-{mode:?}.db");
        let a = Fencer::new(s.clone(), mode, LEASE_TTL);
        a.acquire(&db, None).unwrap();
        let before = requests(&s);
        a.release(&db);
        assert_eq!(requests(&s) - before, cost, "{mode:?}");
        // Released: the next writer gets in at once, TTL or not.
        let b = Fencer::new(s.clone(), mode, LEASE_TTL);
        b.acquire(&db, None).unwrap();

        // A lease that expired already is left as it is: no request.
        let db = format!("idle-{mode:?}.db");
        let c = Fencer::new(s.clone(), mode, Duration::from_millis(50));
        c.acquire(&db, None).unwrap();
        std::thread::sleep(Duration::from_millis(80));
        let before = requests(&s);
        c.release(&db);
        assert_eq!(requests(&s), before, "{mode:?}");
        Fencer::new(s.clone(), mode, LEASE_TTL)
            .acquire(&db, None)
            .unwrap();
    }
}

#[test]
fn a_release_never_overwrites_a_lease_another_writer_took() {
    let (_d, s) = store();
    for mode in [Mode::Conditional, Mode::Fallback] {
        let db = format!("app-{mode:?}.db");
        let a = Fencer::new(s.clone(), mode, LEASE_TTL);
        a.acquire(&db, None).unwrap();
        // Another writer took the lease while `a` still believes it holds
        // it (a clock that ran ahead on its host, say).
        let b = Fencer::new(s.clone(), mode, LEASE_TTL);
        let (_, etag) = b.read(&db).unwrap().unwrap();
        b.write(&db, Some(&etag), now_ms() + 60_000, false, None)
            .unwrap()
            .unwrap();
        let (theirs, _) = b.read(&db).unwrap().unwrap();
        assert_eq!(theirs.holder, b.holder);
        a.release(&db);
        let (now, _) = b.read(&db).unwrap().unwrap();
        assert_eq!(
            now, theirs,
            "{mode:?}: the release clobbered the new holder's lease"
        );
        b.ensure(&db).unwrap();
    }
}
