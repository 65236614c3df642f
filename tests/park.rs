//! Idle databases close their files ("parking", `src/capture/park.rs`) and
//! reopen them on the next write without losing a commit and, where the
//! rules allow, without a snapshot. The open-file limit side (more
//! databases than open slots) is `tests/park_slots.rs`.
//!
//! Each test runs the real `walsync-sync` against the local S3 server through
//! the shared harness (`common::daemon::Env`, helpers in `common::park`),
//! looks at the daemon's open descriptors in `/proc/<pid>/fd` to know
//! whether a database is parked, and judges replication through restores
//! (the oracle and `walsync restore`). Every wait is bounded; nothing
//! asserts a speed. The mutation each test was checked against is named in
//! its doc comment and in tests/README.md.
//!
//! Run: `eval "$(scripts/s3-server.sh start)"` then
//! `cargo test --test park -- --test-threads=1`. Without the S3 environment
//! the tests skip, unless `WALSYNC_REQUIRE_EXTERNAL=1`.

mod common;

use std::time::{Duration, Instant};

use common::oracle::{self, app_state, Monotone, Writer};
use common::park::*;
use common::process::{wait_for, Signal};

// ---------------------------------------------------------------------------
// 1. Files are closed and reopened
// ---------------------------------------------------------------------------

/// An idle database keeps only its lock file open, and no thread; a write
/// reopens it (on a new thread) and ships. Mutations checked:
/// `Capture::park` not closing the WAL (`self.wal.close()` removed) → "not
/// parked" (the `-wal` descriptor stays); `DbTask::run` calling
/// `run_parking` with `leave` false → "still has its thread".
#[test]
fn idle_files_closed_and_reopened() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-fds", "fds.db", "1s") else {
        return;
    };
    assert!(wait_open(&daemon, &db), "never opened the database");
    wait_parked(&daemon, &db);
    eprintln!("parked: open {:?}", open_files(daemon.pid(), &db));
    assert!(
        wait_for(Duration::from_secs(10), || db_threads(&daemon) == 0),
        "parked, but the database still has its thread"
    );

    // A write wakes it: the descriptors come back while writing, and the
    // write ships.
    daemon.note("writing to the parked database");
    let mut reopened = false;
    for _ in 0..100 {
        w.commit(2);
        sleep_ms(100);
        let open = open_files(daemon.pid(), &db);
        if open.contains(&"") && open.contains(&"-wal") && open.contains(&"-shm") {
            reopened = true;
            break;
        }
    }
    assert!(reopened, "the descriptors did not come back while writing");
    // Open again, with its thread again (it cannot park while written to).
    assert_eq!(db_threads(&daemon), 1, "reopened without a thread");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    // And it parks again once idle.
    wait_parked(&daemon, &db);
    w.commit(1);
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(log_count(&env, PARKED_LINE) >= 2);
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert_newest_equal(&mut replica, &db);
}

/// `--close-idle-after 0`: the files stay open however long it is idle.
#[test]
fn close_idle_after_0_keeps_files_open() {
    let Some((env, db, _w, mut daemon, _)) = one("park-never", "never.db", "0") else {
        return;
    };
    assert!(wait_open(&daemon, &db), "never opened the database");
    // Idle for longer than any parking would need (1 s idle + 2 s quiet
    // files), looking every 500 ms.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(6) {
        let open = open_files(daemon.pid(), &db);
        assert!(
            open.contains(&"") && open.contains(&"-wal") && open.contains(&"-shm"),
            "--close-idle-after 0 closed files: open {open:?}"
        );
        sleep_ms(500);
    }
    assert_eq!(log_count(&env, PARKED_LINE), 0);
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

// ---------------------------------------------------------------------------
// 2. Continuity without snapshots for a long-lived application connection
// ---------------------------------------------------------------------------

/// PASSIVE with `walsync` open and caught up, retried (bounded) until the
/// WAL is fully backfilled: walsync moves its read transaction to the
/// newest commit shortly after reading it.
fn passive_fully(w: &Writer) {
    let mut last = (0, 0, 0);
    let ok = wait_for(Duration::from_secs(10), || {
        last = w.checkpoint("PASSIVE");
        last.0 == 0 && last.1 == last.2
    });
    assert!(ok, "PASSIVE never backfilled the whole WAL: {last:?}");
}

/// One connection held by the application throughout; bursts of commits
/// separated by idle spells that park the database, with an application
/// PASSIVE checkpoint before one spell (the next write restarts the WAL:
/// continuity by "database file unchanged since parking"), none before
/// another (same WAL generation), and a burst past the autocheckpoint
/// threshold. Only the first snapshot may exist, and every txid restores.
/// Mutations checked: `unpark` without the "database file unchanged" case
/// (`else if false`) → snapshots after the restarted WALs; `unpark` without
/// the "same generation" case (`continued = false`) → the WAL is read
/// again from its start after waking (case 2 then holds too), so the
/// wake-up commit ships as the whole WAL (step C).
#[test]
fn parking_costs_no_snapshot() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-continuity", "cont.db", "1s")
    else {
        return;
    };
    let name = "cont.db";
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);

    // A: a burst (same generation as at parking), caught up, then PASSIVE
    // by the application while walsync is open: the WAL is fully
    // backfilled, so the next write restarts it.
    daemon.note("A: burst, then PASSIVE");
    let salts = wal_salts(&db);
    for _ in 0..20 {
        w.commit(3);
        sleep_ms(20);
    }
    eprintln!(
        "A: WAL {}",
        match wal_salts(&db) == salts {
            true => "of the same generation as at parking",
            false => "restarted (fully backfilled at parking)",
        }
    );
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    passive_fully(&w);
    wait_parked(&daemon, &db);

    // B: the first write restarts the WAL (the database file is the one
    // seen at parking); then no checkpoint, ~600 frames (2.4 MB: below
    // walsync's own checkpoint at 1,000 pages).
    daemon.note("B: burst after a restart, no checkpoint");
    let salts = wal_salts(&db);
    let wal_len = || std::fs::metadata(side(&db, "-wal")).map_or(0, |m| m.len());
    let mut commits = 0;
    while commits < 2000 && wal_len() < 600 * 4096 {
        w.commit(20);
        commits += 1;
        sleep_ms(5);
    }
    assert!(commits < 2000, "B: the WAL did not grow");
    assert_ne!(wal_salts(&db), salts, "B: the WAL did not restart");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);
    let wal_at_park = wal_len();

    // C: one commit wakes it (same generation): only that commit ships, not
    // the WAL again. Then a burst well past the autocheckpoint threshold
    // (1,000 pages) while it is open.
    daemon.note("C: autocheckpoint-sized burst");
    let salts = wal_salts(&db);
    w.commit(1);
    assert!(wait_open(&daemon, &db), "C: not reopened after a commit");
    assert_eq!(wal_salts(&db), salts, "C: the WAL restarted unexpectedly");
    let woke = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    let shipped = object_size(&env, name, woke);
    eprintln!("C: the wake-up commit shipped as {shipped} bytes; the WAL was {wal_at_park} bytes");
    assert!(
        shipped < 64 * 1024,
        "C: txid {woke} (one small commit after parking) is {shipped} bytes: the WAL ({wal_at_park} bytes) was read again"
    );
    // Short pauses let walsync read and move its read transaction along,
    // so that the automatic checkpoints can copy frames.
    let db_len = std::fs::metadata(&db).unwrap().len();
    let own = log_count(&env, "PASSIVE checkpoint:");
    let mut commits = 0;
    while commits < 3000
        && (std::fs::metadata(&db).unwrap().len() < db_len + 1024 * 1024 || wal_len() < 1000 * 4096)
    {
        w.commit(100);
        commits += 1;
        sleep_ms(10);
    }
    eprintln!(
        "C: {commits} commits; database file {db_len} -> {} bytes, WAL {} bytes, walsync's own checkpoints: {}",
        std::fs::metadata(&db).unwrap().len(),
        wal_len(),
        log_count(&env, "PASSIVE checkpoint:") - own
    );
    assert!(commits < 3000, "C: no automatic checkpoint happened");
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);

    // D: a last burst after the autocheckpointed spell.
    daemon.note("D: last burst");
    for _ in 0..10 {
        w.commit(2);
        sleep_ms(20);
    }
    let newest = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);

    let parks = log_count(&env, PARKED_LINE);
    assert!(parks >= 5, "parked {parks} times, expected at least 5");
    assert_eq!(
        log_count(&env, LOST_LINE),
        0,
        "a reopening found the WAL checkpointed"
    );
    let snaps = snapshots(&replica);
    assert_eq!(
        snaps.len(),
        1,
        "parking cost snapshots: level-9 objects at txids {snaps:?}"
    );

    // Every stored txid restores (CLI, each level-0 txid) to a state of
    // the model that never goes back; the newest is the source's.
    let mut txids: Vec<u64> = replica
        .list()
        .iter()
        .filter(|o| o.level == 0)
        .map(|o| o.max)
        .chain(snaps.iter().copied())
        .collect();
    txids.sort();
    txids.dedup();
    let mut mono = Monotone::default();
    for t in &txids {
        let c = cli_restore(&env, name, *t);
        mono.push(name, *t, app_state(&c));
    }
    assert_eq!(txids.last(), Some(&newest));
    assert_eq!(mono.last(), Some((w.gen, w.last)));
    // And the oracle agrees at every txid.
    let checked = replica.restore_each(None, |_| {});
    assert_eq!(checked.len(), txids.len());
    eprintln!(
        "{name}: {} txids restored, {parks} parks, 1 snapshot",
        txids.len()
    );
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

// ---------------------------------------------------------------------------
// 3. A checkpoint while parked is detected, never a hole
// ---------------------------------------------------------------------------

/// Parked and stopped (SIGSTOP), the application commits, truncates the WAL
/// into the database file, commits more and closes (SQLite then
/// checkpoints and deletes the WAL). After SIGCONT the reopening must see
/// that the database file changed: a snapshot, and the replica has every
/// row. Mutation checked: `unpark` treating the database file as unchanged
/// (`else if true`) → the replica never catches up (the rows committed
/// while stopped are missing).
#[test]
fn checkpoint_while_parked_means_snapshot() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-checkpoint", "ckpt.db", "1s")
    else {
        return;
    };
    for _ in 0..10 {
        w.commit(2);
        sleep_ms(20);
    }
    let before = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    wait_parked(&daemon, &db);
    let snaps_before = snapshots(&replica).len();

    daemon.note("SIGSTOP");
    stop(&mut daemon);
    assert!(parked(&daemon, &db), "woke before it stopped");
    for _ in 0..10 {
        w.commit(3);
    }
    let r = w.checkpoint("TRUNCATE");
    assert_eq!(r.0, 0, "TRUNCATE busy while walsync was parked: {r:?}");
    for _ in 0..10 {
        w.commit(3);
    }
    let expect = (w.gen, w.last);
    drop(w);
    // walsync's kept descriptor holds SQLite's SHARED lock while parked
    // (src/sqlite/hold.rs): the application's close cannot checkpoint and
    // delete the WAL, as with walsync's connection open.
    assert!(
        side(&db, "-wal").exists(),
        "closing the last connection deleted the WAL: walsync held no SHARED lock while parked"
    );
    daemon.signal(Signal::CONT);
    daemon.note("SIGCONT");

    let after = oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(after > before);
    let snaps = snapshots(&replica);
    assert!(
        snaps.len() > snaps_before && snaps.iter().any(|t| *t > before),
        "no snapshot after the checkpoint while parked: snapshots at {snaps:?}, newest before {before}"
    );
    assert!(log_count(&env, LOST_LINE) >= 1);
    let c = cli_restore(&env, "ckpt.db", after);
    assert_eq!(app_state(&c), Ok(Some(expect)));
    let mut mono = Monotone::default();
    replica.restore_each(None, |r| mono.push("ckpt.db", r.txid, app_state(&r.conn)));
    assert_eq!(mono.last(), Some(expect));
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}

// ---------------------------------------------------------------------------
// 4. Shutdown while parked
// ---------------------------------------------------------------------------

/// A commit to a parked database right before SIGTERM is shipped by the
/// shutdown: once plainly (the file event usually wakes the database
/// first), then twice with the commit made through hard links, which the
/// directory watch does not see, so that the shutdown finds the database
/// parked and must tell from the files' stamps that it has to reopen it
/// (`reopen_for_drain`). Mutation checked: `reopen_for_drain` returning
/// `Ok(false)` (nothing to ship) → the linked commits are missing from the
/// replica; the plain round alone does not catch it.
#[test]
fn shutdown_while_parked_ships_the_last_commit() {
    let Some((env, db, mut w, mut daemon, mut replica)) = one("park-shutdown", "term.db", "1s")
    else {
        return;
    };
    wait_parked(&daemon, &db);

    // Once plainly (write, then SIGTERM at once).
    w.commit(3);
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    assert_newest_equal(&mut replica, &db);
    assert_eq!(
        app_state(&replica.restore_newest().unwrap().conn),
        Ok(Some((w.gen, w.last)))
    );

    // Again with the commit made through hard links of the database, WAL
    // and -shm in another directory: the directory watch sees no event, so
    // only the files can tell the shutdown that something was committed
    // since parking (as when the event is still on its way).
    let links = env.path("links");
    std::fs::create_dir(&links).unwrap();
    let linked = links.join("term.db");
    for suffix in ["", "-wal", "-shm"] {
        std::fs::hard_link(side(&db, suffix), side(&linked, suffix)).unwrap();
    }
    let mut w2 = Writer::create(&linked, w.gen);
    for round in 1..=2 {
        daemon.spawn();
        oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
        wait_parked(&daemon, &db);
        daemon.note(&format!(
            "round {round}: a commit through the links, SIGTERM"
        ));
        w2.last = w.last;
        w2.commit(4);
        w.last = w2.last;
        let status = daemon.sigterm(Duration::from_secs(20));
        assert!(status.success(), "round {round}: exit status {status}");
        let got = app_state(&replica.restore_newest().unwrap().conn);
        assert_eq!(got, Ok(Some((w.gen, w.last))), "round {round}");
        assert!(
            !logged_parked(&daemon, &db),
            "round {round}: the shutdown did not reopen the database"
        );
    }
    assert_newest_equal(&mut replica, &db);
}

// ---------------------------------------------------------------------------
// 5. Replaced while parked
// ---------------------------------------------------------------------------

/// The application closes its database while parked (no snapshot: the
/// SHARED lock walsync holds keeps SQLite from checkpointing and deleting
/// the WAL), then removes the `-wal` and `-shm` and renames another
/// database over it. The first of those events reopens it, so the reopening sees either
/// the old file changed or the new one: a snapshot either way, and the
/// replica follows the new file (its rows, its generation).
#[test]
fn replaced_while_parked_is_snapshotted() {
    let Some((env, db, w, mut daemon, mut replica)) = one("park-replaced", "repl.db", "1s") else {
        return;
    };
    // Closing the last connection while parked: the WAL stays (SHARED lock
    // held), no snapshot.
    wait_parked(&daemon, &db);
    drop(w);
    sleep_ms(3000);
    assert!(
        side(&db, "-wal").exists(),
        "closing the last connection deleted the WAL"
    );
    assert_eq!(
        log_count(&env, LOST_LINE),
        0,
        "closing the last connection cost a snapshot"
    );
    wait_parked(&daemon, &db);
    let snaps_before = snapshots(&replica).len();
    let staged = env.path("staged.db-new");
    let mut other = Writer::create(&staged, 2);
    other.commit(7);
    drop(other);
    daemon.note("renaming another database over the parked one");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(side(&db, suffix));
    }
    std::fs::rename(&staged, &db).unwrap();
    let mut w = Writer::create(&db, 2);
    w.commit(3);
    oracle::wait_caught_up(&mut replica, &db, CATCH_UP);
    assert!(
        snapshots(&replica).len() > snaps_before,
        "no snapshot of the new file"
    );
    assert_eq!(
        app_state(&replica.restore_newest().unwrap().conn),
        Ok(Some((2, w.last)))
    );
    let status = daemon.sigterm(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
}
