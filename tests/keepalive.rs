//! `S3Storage` keeps its connections: many requests share few TCP
//! connections, and a pooled connection the server closed — idle, or just
//! as it is reused — costs a new connection, never an error or a lost
//! object.
//!
//! The storage talks to the test S3 server through the loopback proxy of
//! `common::proxy`, which counts the connections it accepts and closes them
//! on demand the way a server does: all at once (a restart, an idle sweep)
//! or each at its next request (an idle timeout firing as the client reuses
//! the connection, which no liveness check can see coming). A proxy and not
//! a restart of the shared S3 server: other tests run against it at the
//! same time.

mod common;

use common::proxy::{s3_upstream, Proxy};
use walsync::storage::{Metadata, Precondition, S3Storage, Storage};
use walsync::StorageErrorKind;

/// A storage on the test server, through a fresh proxy.
fn through_proxy(name: &str) -> Option<(S3Storage, Proxy)> {
    let mut config = common::s3_config_or_skip(name)?;
    let proxy = Proxy::start(s3_upstream());
    config.endpoint = Some(format!("http://127.0.0.1:{}", proxy.port));
    Some((S3Storage::new(config).expect("S3 client"), proxy))
}

/// N sequential requests of every common kind open far fewer than N
/// connections (attohttpc opened one per request).
#[test]
fn sequential_requests_share_connections() {
    let Some((s, proxy)) = through_proxy("keepalive_reuse") else {
        return;
    };
    let meta = Metadata::new().with("k", "v");
    let rounds = 50;
    for i in 0..rounds {
        let key = format!("db/{i:04}.ltx");
        let body = common::pseudo_random(100 + i, i as u64);
        s.put(&key, &body, &meta).unwrap();
        assert_eq!(s.get(&key).unwrap(), body);
        assert_eq!(s.head(&key).unwrap().unwrap().metadata, meta);
        assert_eq!(s.get_range(&key, 10, Some(5)).unwrap(), body[10..15]);
    }
    assert_eq!(s.list("db/", None).unwrap().len(), rounds);
    let requests = 4 * rounds as u64 + 1;
    let connections = proxy.accepted();
    eprintln!("{requests} requests over {connections} TCP connection(s)");
    assert!(
        connections <= 2,
        "{requests} sequential requests opened {connections} connections"
    );
}

/// The server closes the pooled connections in the middle of a run of
/// PUT/GET/HEAD/LIST/DELETE: every call still succeeds, nothing is lost.
#[test]
fn pooled_connections_survive_the_server_closing_them() {
    let Some((s, proxy)) = through_proxy("keepalive_closed") else {
        return;
    };
    let meta = Metadata::new().with("n", "1");
    let mut stored = Vec::new();
    for i in 0..60usize {
        match i % 10 {
            // Closed while idle: the next request finds a dead connection.
            3 => proxy.cut(),
            // Closed as the next request arrives on it.
            7 => proxy.close_on_next_request(),
            _ => {}
        }
        let key = format!("db/{i:04}.ltx");
        let body = common::pseudo_random(50 + i, i as u64);
        s.put(&key, &body, &meta)
            .unwrap_or_else(|e| panic!("PUT {i}: {e}"));
        stored.push((key, body));
        if i % 10 == 7 {
            proxy.close_on_next_request();
        }
        let (key, body) = &stored[i / 2];
        assert_eq!(&s.get(key).unwrap_or_else(|e| panic!("GET {i}: {e}")), body);
        if i % 10 == 8 {
            proxy.close_on_next_request();
        }
        let listed = s
            .list("db/", None)
            .unwrap_or_else(|e| panic!("LIST {i}: {e}"));
        assert_eq!(listed.len(), stored.len(), "LIST {i}");
        if i % 10 == 9 {
            proxy.close_on_next_request();
            assert!(s.head(key).unwrap().is_some(), "HEAD {i}");
            proxy.close_on_next_request();
            s.delete_many(std::slice::from_ref(key))
                .unwrap_or_else(|e| panic!("DELETE {i}: {e}"));
            s.put(key, body, &meta).unwrap();
        }
    }
    // Several pooled connections, all closed at their next request: the
    // resend must go out on a new connection, not another doomed one.
    std::thread::scope(|t| {
        for j in 0..4 {
            let (s, meta) = (&s, &meta);
            t.spawn(move || {
                for k in 0..5 {
                    s.put(&format!("par/{j}-{k}.ltx"), b"x", meta).unwrap();
                }
            });
        }
    });
    proxy.close_on_next_request();
    for k in 0..4 {
        s.put(&format!("after/{k}.ltx"), b"y", &meta)
            .unwrap_or_else(|e| panic!("PUT after/{k}: {e}"));
    }
    for (key, body) in &stored {
        assert_eq!(&s.get(key).unwrap(), body, "{key}");
    }
    let closed = proxy.closed_on_request();
    eprintln!(
        "{} connections accepted, {closed} closed under a request",
        proxy.accepted()
    );
    // The faults really hit requests in flight, not only idle sockets.
    assert!(
        closed >= 20,
        "only {closed} requests met a closed connection"
    );
}

/// A multipart upload whose part upload meets a closed connection (the
/// initiate and complete requests are not idempotent: they would fail as
/// transient, see the conditional PUT below).
#[test]
fn multipart_upload_survives_closed_connections() {
    let Some((s, proxy)) = through_proxy("keepalive_multipart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let body = common::pseudo_random(20 << 20, 7);
    std::fs::write(&path, &body).unwrap();
    let meta = Metadata::new().with("walsync-sha256", "ab".repeat(32));
    s.put("big.ltx", b"warm the pool", &Metadata::new())
        .unwrap();
    proxy.close_on_next(Some("PUT"));
    s.put_file("big.ltx", &path, &meta).unwrap();
    assert_eq!(s.head("big.ltx").unwrap().unwrap().metadata, meta);
    assert!(
        s.get("big.ltx").unwrap() == body,
        "multipart object differs"
    );
    assert!(proxy.closed_on_request() >= 1);
}

/// A conditional PUT is not idempotent: when its connection closes after
/// the request was written, it fails as transient (the caller retries)
/// rather than being replayed into a 412 that would read as "another
/// writer got there first".
#[test]
fn conditional_put_on_a_closed_connection_is_never_a_false_412() {
    let Some((s, proxy)) = through_proxy("keepalive_conditional") else {
        return;
    };
    let meta = Metadata::new();
    assert!(s.get_with_etag("lease").unwrap().is_none());
    proxy.close_on_next_request();
    match s.put_conditional("lease", b"me", &meta, &Precondition::Absent) {
        Ok(won) => assert!(won, "a lost race reported for a write nobody else made"),
        Err(e) => {
            assert_eq!(e.storage_kind(), Some(StorageErrorKind::Transient), "{e}");
            // The retry the caller makes wins: the first copy never arrived.
            assert!(s
                .put_conditional("lease", b"me", &meta, &Precondition::Absent)
                .unwrap());
        }
    }
    let (body, etag) = s.get_with_etag("lease").unwrap().unwrap();
    assert_eq!(body, b"me");
    proxy.close_on_next_request();
    let swapped = s.put_conditional("lease", b"me2", &meta, &Precondition::Matches(etag));
    match swapped {
        Ok(won) => assert!(won),
        Err(e) => assert_eq!(e.storage_kind(), Some(StorageErrorKind::Transient), "{e}"),
    }
}

/// Not a check, a measurement (`make`-less, run by hand):
/// `cargo test --release --test keepalive -- --ignored --nocapture measure`,
/// under `strace -f -e trace=connect -c` to count TCP connects. 1,000
/// small PUTs straight to the S3 server through one `S3Storage`.
#[test]
#[ignore]
fn measure_sequential_puts() {
    let Some(s) = common::s3_storage_or_skip("keepalive_measure") else {
        return;
    };
    let body = common::pseudo_random(200, 1);
    let meta = Metadata::new();
    let t = std::time::Instant::now();
    for i in 0..1000 {
        s.put(&format!("m/{i:05}.ltx"), &body, &meta).unwrap();
    }
    let elapsed = t.elapsed();
    eprintln!(
        "1000 PUTs in {elapsed:.2?} ({:.0} µs per PUT)",
        elapsed.as_micros() as f64 / 1000.0
    );
}
