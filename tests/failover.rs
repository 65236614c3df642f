//! The failover runbook with follow mode (scripts/README.md "Failover
//! runbook"): the primary `walsync-sync` is killed with SIGKILL, the caught-up
//! follower is stopped, and `walsync-sync` on the follower's database is
//! refused while the dead primary's lease lives, then takes the replica over.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::daemon::Env;
use common::follow::{daemon, follower, open_ro, stopped_at};
use common::oracle::{self, app_state, Writer};
use common::process::wait_for;

/// The failover runbook: the primary dies (kill -9); the follower catches
/// up and is stopped; `walsync-sync` on the follower's database is refused
/// while the old lease lives, then takes over and continues the replica;
/// every state stored before the kill and every commit after the promotion
/// restores.
#[test]
fn failover_promotes_the_follower() {
    let Some(env) = Env::new("follow_failover") else {
        return;
    };
    let src = env.path("app.db");
    // The standby keeps the primary's file name: walsync-sync names a
    // database's replica after its file (else `name` in --config).
    std::fs::create_dir_all(env.path("standby")).unwrap();
    let out: PathBuf = env.path("standby").join("app.db");
    let lease = ["--lease-ttl", "3s", "--min-put-interval", "0s"];
    let mut w = Writer::create(&src, 1);
    w.commit(3);
    let mut primary = daemon(&env, &[&src], "follow_failover-primary", &lease);
    let mut replica = env.replica("app.db").allow_compaction();
    oracle::wait_caught_up(&mut replica, &src, Duration::from_secs(30));
    let mut f = follower(
        &env,
        "app.db",
        &out,
        "follow_failover-follower",
        &["--follow-interval-max", "1s"],
    );
    for _ in 0..40 {
        w.commit(2);
        std::thread::sleep(Duration::from_millis(50));
    }
    oracle::wait_caught_up(&mut replica, &src, Duration::from_secs(30));
    let stored = replica.newest().expect("objects");
    let stored_state = app_state(&w.conn).unwrap().unwrap();

    // 1. The primary dies with its application.
    primary.kill9();
    drop(w);

    // 2. The follower has applied everything stored; stop it.
    assert!(
        wait_for(Duration::from_secs(30), || {
            open_ro(&out)
                .ok()
                .and_then(|c| app_state(&c).ok().flatten())
                == Some(stored_state)
        }),
        "the follower did not reach {stored_state:?}\n{}",
        f.log_tail(20)
    );
    assert!(f.sigterm(Duration::from_secs(30)).success());
    assert_eq!(stopped_at(&f), stored);

    // 3. Promote: walsync-sync on the standby's database is refused while
    //    the dead primary's lease lives, then takes the replica over.
    let mut promoted = daemon(&env, &[&out], "follow_failover-promoted", &lease);
    promoted.wait_line(Duration::from_secs(20), |l| {
        l.contains("replicated by another walsync")
    });
    // The application writes to the standby's database at once; those
    // commits wait in its WAL until the daemon may ship (a change of the
    // file is also what makes a refused daemon try again).
    let mut w2 = Writer::create(&out, 1);
    assert_eq!(w2.last, stored_state.1);
    let mut polls = 0;
    promoted.wait_line_with(
        Duration::from_secs(40),
        |l| l.contains("taking over the expired lease"),
        || {
            polls += 1;
            if polls % 5 == 0 {
                w2.commit(1);
            }
        },
    );
    for _ in 0..20 {
        w2.commit(3);
        std::thread::sleep(Duration::from_millis(50));
    }
    oracle::wait_caught_up(&mut replica, &out, Duration::from_secs(30));
    let last = w2.last;
    drop(w2);
    assert!(promoted.sigterm(Duration::from_secs(30)).success());

    // 4. The whole history restores: every txid gives a whole state that
    //    never goes back, the kill's state is there, and the newest state
    //    holds every commit made after the promotion.
    let mut mono = oracle::Monotone::default();
    replica.restore_each(None, |r| mono.push("app.db", r.txid, app_state(&r.conn)));
    assert!(
        mono.states
            .iter()
            .any(|(t, s)| *t == stored && *s == Some(stored_state)),
        "txid {stored} does not restore {stored_state:?}: {:?}",
        mono.states
    );
    assert_eq!(mono.last(), Some((1, last)));
    eprintln!(
        "follow_failover: {} states restored, kill at txid {stored}, newest k {last}",
        mono.count
    );
}
