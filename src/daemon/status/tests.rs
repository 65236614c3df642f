//! The status server on a bare registry: the document, the socket's mode,
//! clients that send nothing or too much, a live or stale socket at the path.

use super::*;

fn registry() -> (Arc<Registry>, crate::upload::Uploader, tempfile::TempDir) {
    use crate::storage::{CountingStorage, FileStorage, Storage};
    let dir = tempfile::tempdir().unwrap();
    let files: Arc<dyn Storage> = Arc::new(FileStorage::create(dir.path()).unwrap());
    let counting = Arc::new(CountingStorage::new(files));
    let storage: Arc<dyn Storage> = counting.clone();
    let uploader = crate::upload::Uploader::start(storage, 1, 1 << 20);
    let reg = Registry::new(
        counting,
        uploader.stats(),
        uploader.queue_probe(),
        uploader.budget(),
    );
    (Arc::new(reg), uploader, dir)
}

fn ask(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn setting_parses_none_and_paths() {
    assert_eq!(Setting::parse(None), Setting::Default);
    assert_eq!(Setting::parse(Some("none")), Setting::Off);
    assert_eq!(
        Setting::parse(Some("/run/x.sock")),
        Setting::At("/run/x.sock".into())
    );
}

#[test]
fn document_names_states_and_errors() {
    let (reg, uploader, _dir) = registry();
    reg.add("a.db", Path::new("/nowhere/a.db"), true);
    reg.add("b.db", Path::new("/nowhere/b.db"), true);
    reg.set_state("b.db", DbState::Failed("b.db: not in WAL mode".into()));
    let stats = Arc::new(crate::capture::DbStats::default());
    stats.durable_txid.store(7, Ordering::Relaxed);
    stats
        .stored_snapshot_ms
        .store(1_700_000_000_000, Ordering::Relaxed);
    reg.add("c.db", Path::new("/nowhere/c.db"), true);
    reg.set_state("c.db", DbState::Running(stats));
    let doc: Vec<DbStatus> = serde_json::from_str(&document(&reg)).unwrap();
    let names: Vec<&str> = doc.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a.db", "b.db", "c.db"]);
    assert_eq!(doc[0].state, "starting");
    assert_eq!(doc[1].state, "failed");
    assert_eq!(doc[1].last_error.as_deref(), Some("b.db: not in WAL mode"));
    assert!(doc[1].last_error_ms.unwrap() > 1_600_000_000_000);
    assert!(doc[1].last_error_time.as_deref().unwrap().ends_with('Z'));
    assert_eq!(doc[1].shipped_txid, None);
    assert_eq!(doc[2].state, "replicating");
    assert!(!doc[2].files_closed);
    assert_eq!(doc[2].shipped_txid, Some(7));
    assert_eq!(doc[2].lag_ms, Some(0));
    assert_eq!(doc[2].last_snapshot_ms, Some(1_700_000_000_000));
    assert_eq!(
        doc[2].last_snapshot.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    assert_eq!(doc[2].last_error, None);
    assert_eq!(doc[2].path, "/nowhere/c.db");
    uploader.join();
}

#[test]
fn socket_is_private_answers_and_is_removed() {
    let (reg, uploader, dir) = registry();
    reg.add("a.db", Path::new("/nowhere/a.db"), true);
    let path = dir.path().join("s.sock");
    let served = serve(&Setting::At(path.clone()), reg.clone())
        .unwrap()
        .unwrap();
    let m = std::fs::symlink_metadata(&path).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.mode() & 0o777, 0o600);
    // Nothing but the socket is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".walsync-status-"))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    // A silent client does not hold up another one: the other is
    // answered while the silent one is still connected, waited for.
    let mut silent = UnixStream::connect(&path).unwrap();
    let doc = ask(&path, b"status\n");
    assert!(doc.starts_with("[{\"name\":\"a.db\""), "{doc}");
    silent.set_nonblocking(true).unwrap();
    let e = silent.read(&mut [0u8; 8]).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    // ... and is disconnected once its time is up.
    silent.set_nonblocking(false).unwrap();
    silent.set_read_timeout(Some(REQUEST_TIMEOUT * 5)).unwrap();
    let mut late = String::new();
    silent.read_to_string(&mut late).unwrap();
    assert_eq!(late, "", "a silent client got {late:?}");

    let bad = ask(&path, b"gimme\n");
    assert!(bad.contains("unknown request"), "{bad}");
    let long = ask(&path, &[b'x'; MAX_REQUEST + 10]);
    assert!(long.contains("request too long"), "{long}");

    // A second daemon on the same path is refused while this one answers.
    let e = serve(&Setting::At(path.clone()), reg.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("another walsync daemon answers there"), "{e}");
    assert!(e.contains(&path.display().to_string()), "{e}");

    drop(served);
    assert!(!path.exists(), "socket left after a clean exit");
    uploader.join();
}

#[test]
fn stale_socket_is_replaced_other_files_are_not() {
    let (reg, uploader, dir) = registry();
    let path = dir.path().join("s.sock");
    // A socket nobody listens on: bound, then the listener closed.
    drop(UnixListener::bind(&path).unwrap());
    let served = serve(&Setting::At(path.clone()), reg.clone())
        .unwrap()
        .unwrap();
    assert_eq!(ask(&path, b"status\n"), "[]\n");
    drop(served);

    std::fs::write(&path, b"precious").unwrap();
    let e = serve(&Setting::At(path.clone()), reg.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    uploader.join();
}

#[test]
fn own_dir_refuses_a_symlink_and_tightens_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("walsync");
    own_dir(&d).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&d), 0o700);
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    own_dir(&d).unwrap();
    assert_eq!(mode(&d), 0o700);
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&d, &link).unwrap();
    assert!(own_dir(&link).is_err());
}
