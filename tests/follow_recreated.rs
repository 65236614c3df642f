//! Follow mode (src/follow/) when the replica is deleted and recreated: a
//! new primary starts a new history from txid 1 in the same place. The
//! follower must not apply the new history over its database; it stops
//! with one line and a non-zero exit (review finding M1).

mod common;

use std::time::Duration;

use common::daemon::Env;
use common::follow::{daemon, follower, follower_state};
use common::oracle::{self, app_state, Writer};
use common::process::{wait_for, Signal};

#[test]
fn follower_stops_when_the_replica_goes_back() {
    let Some(env) = Env::new("follow_recreated") else {
        return;
    };
    let src = env.path("app.db");
    let out = env.path("follower.db");
    let extra = ["--min-put-interval", "0s"];
    let mut w = Writer::create(&src, 1);
    w.commit(3);
    let mut primary = daemon(&env, &[&src], "follow_recreated-primary", &extra);
    let mut replica = env.replica("app.db").allow_compaction();
    oracle::wait_caught_up(&mut replica, &src, Duration::from_secs(30));
    let mut f = follower(
        &env,
        "app.db",
        &out,
        "follow_recreated-follower",
        &["--follow-interval-max", "1s"],
    );
    for _ in 0..30 {
        w.commit(1);
        std::thread::sleep(Duration::from_millis(30));
    }
    let want = app_state(&w.conn).unwrap();
    assert!(
        wait_for(Duration::from_secs(30), || follower_state(&out) == want),
        "the follower did not reach {want:?}\n{}",
        f.log_tail(20)
    );
    let followed = replica.newest().expect("objects");

    // The replica is deleted; a new primary starts a new history. The
    // follower is stopped meanwhile (else it may see the empty replica
    // first: "went back ... to 0", right too, but not this test's point).
    f.signal(Signal::STOP);
    assert!(primary.sigterm(Duration::from_secs(30)).success());
    drop(w);
    let keys: Vec<String> = env
        .storage
        .list("", None)
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(!keys.is_empty());
    env.storage.delete_many(&keys).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", src.display()));
    }
    let mut w = Writer::create(&src, 2);
    w.commit(2);
    let mut primary2 = daemon(&env, &[&src], "follow_recreated-primary2", &extra);
    // A new oracle: the old one caches objects by key.
    let mut replica = env.replica("app.db");
    oracle::wait_caught_up(&mut replica, &src, Duration::from_secs(30));
    let newest = replica.newest().expect("objects");
    f.signal(Signal::CONT);
    assert!(
        newest < followed,
        "new history {newest}, followed {followed}"
    );

    // Bounded: a check at least every 6 polls of at most 1 s.
    let status = f.wait(Duration::from_secs(60));
    assert!(!status.success(), "{}", f.log_tail(20));
    let log = f.log_text();
    let line = format!("app.db: the replica went back from txid {followed} to {newest}");
    assert!(
        log.contains(&line) && log.contains("restore again with --force"),
        "no {line:?} in\n{}",
        f.log_tail(20)
    );
    // The followed database was left at its state, not mixed.
    assert_eq!(follower_state(&out), want);
    assert!(primary2.sigterm(Duration::from_secs(30)).success());
}
