//! `--heartbeat-url`: pings arrive while replication is healthy, at most one
//! per interval, stop while uploads are stuck (S3 behind a proxy that is
//! taken down), resume after; a failing heartbeat endpoint never affects
//! replication; the URL's token never reaches the log.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::{commit, create_db};
use common::process::{log_path, wait_for, Proc};
use common::proxy::{s3_upstream, Proxy};

const BIN: &str = env!("CARGO_BIN_EXE_walsync-sync");

/// A loopback HTTP server that answers 200 and records the time and request
/// line of every request.
struct PingServer {
    port: u16,
    pings: Arc<Mutex<Vec<(Instant, String)>>>,
    count: Arc<AtomicU64>,
}

impl PingServer {
    fn start() -> PingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pings: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let count = Arc::new(AtomicU64::new(0));
        let (p, c) = (pings.clone(), count.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                // Read the headers up to the blank line.
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                p.lock()
                    .unwrap()
                    .push((Instant::now(), first.trim().to_string()));
                c.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK",
                );
            }
        });
        PingServer { port, pings, count }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

#[test]
fn heartbeat_only_while_caught_up() {
    let Some(cfg) = common::s3_config_or_skip("heartbeat") else {
        return;
    };
    let proxy = Proxy::start(s3_upstream());
    let pings = PingServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hb.db");
    let conn = create_db(&db);
    commit(&conn, 5);
    let token = "hbTOKEN9f8e7d6c";
    let url = format!("http://127.0.0.1:{}/ping/{token}?rid={token}", pings.port);
    let args: Vec<String> = [
        db.display().to_string().as_str(),
        "--bucket",
        &cfg.bucket,
        "--prefix",
        &cfg.prefix,
        "--endpoint",
        &format!("http://127.0.0.1:{}", proxy.port),
        "--heartbeat-url",
        &url,
        "--heartbeat-interval",
        "300ms",
        "--heartbeat-max-lag",
        "1s",
        "--shutdown-timeout",
        "10s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut d = Proc::start(
        BIN,
        &args,
        &[("RUST_LOG", "walsync=trace".into())],
        &log_path("heartbeat"),
    );

    // Healthy: pings arrive, each a GET of the configured URL.
    assert!(
        wait_for(Duration::from_secs(20), || pings.count() >= 3),
        "no heartbeat while healthy"
    );
    {
        let list = pings.pings.lock().unwrap();
        assert_eq!(list[0].1, format!("GET /ping/{token}?rid={token} HTTP/1.1"));
        // At most one per interval (the first may come at once).
        for w in list.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(gap >= Duration::from_millis(250), "pings {gap:?} apart");
        }
    }

    // Storage down and a commit waiting: once the lag passes 1 s, no ping.
    d.note("proxy down");
    proxy.set_down(true);
    commit(&conn, 5);
    std::thread::sleep(Duration::from_millis(2000));
    let stuck = pings.count();
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(
        pings.count(),
        stuck,
        "heartbeat sent while uploads were stuck"
    );
    d.assert_running();

    // Storage back: the upload is retried, the lag returns to 0, pings resume.
    d.note("proxy up");
    proxy.set_down(false);
    assert!(
        wait_for(Duration::from_secs(30), || pings.count() >= stuck + 2),
        "heartbeat did not resume after storage came back"
    );
    assert!(d.sigterm(Duration::from_secs(20)).success());
    let log = d.log_text();
    assert!(
        log.contains("heartbeat withheld: hb.db: replication lag"),
        "{log}"
    );
    assert!(log.contains("heartbeat resumed"), "{log}");
    assert!(!log.contains(token), "the heartbeat token reached the log");
}

#[test]
fn failing_heartbeat_never_stops_replication() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("f.db");
    let conn = create_db(&db);
    commit(&conn, 1);
    let store = dir.path().join("store");
    let dead = common::closed_port();
    let url = format!("http://127.0.0.1:{dead}/ping/deadTOKEN42");
    let args: Vec<String> = vec![
        db.display().to_string(),
        "--bucket".into(),
        format!("file://{}", store.display()),
        "--heartbeat-url".into(),
        url,
        "--heartbeat-interval".into(),
        "200ms".into(),
    ];
    let mut d = Proc::start(BIN, &args, &[], &log_path("heartbeat-dead"));
    let objects = |store: &std::path::Path| -> usize {
        std::fs::read_dir(store.join("f.db/0000"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert!(wait_for(Duration::from_secs(20), || d.log_text().contains(
        &format!("heartbeat to http://127.0.0.1:{dead}/… failed")
    )));
    for _ in 0..3 {
        commit(&conn, 1);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        wait_for(Duration::from_secs(20), || objects(&store) >= 1),
        "nothing replicated while the heartbeat failed"
    );
    assert!(d.sigterm(Duration::from_secs(20)).success());
    assert!(!d.log_text().contains("deadTOKEN42"));
}
