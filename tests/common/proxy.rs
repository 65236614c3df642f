//! A loopback TCP proxy in front of the test S3 server that can simulate an
//! outage (shared by the outage and heartbeat tests), count the connections
//! a client opens, and close kept-alive connections the way a server does
//! (the connection-pool tests).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A loopback TCP proxy that can refuse service: while `down`, accepted
/// connections are closed at once and open ones are cut.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    /// Client connections accepted and forwarded.
    accepted: AtomicU64,
    /// Connections accepted before this generation close at their next
    /// request (see [`Proxy::close_on_next_request`]).
    generation: AtomicU64,
    /// Connections closed that way, with a request in flight.
    closed_on_request: AtomicU64,
    /// Only requests with this method are closed that way (all if unset).
    method: Mutex<Option<&'static str>>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let counters: Arc<Counters> = Arc::default();
        let (d, s, c, n) = (down.clone(), stop.clone(), conns.clone(), counters.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2))
                else {
                    continue;
                };
                n.accepted.fetch_add(1, Ordering::SeqCst);
                let born = n.generation.load(Ordering::SeqCst);
                {
                    let mut list = c.lock().unwrap();
                    list.retain(|x| x.peer_addr().is_ok());
                    list.push(client.try_clone().unwrap());
                    list.push(server.try_clone().unwrap());
                }
                let (from, to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let n = n.clone();
                std::thread::spawn(move || forward_requests(from, to, born, &n));
                std::thread::spawn(move || {
                    let (mut from, mut to) = (server, client);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        Proxy {
            port,
            down,
            stop,
            conns,
            counters,
        }
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Close every open connection now, both ways, as a server that
    /// restarts or drops idle keep-alive connections does.
    pub fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Every connection open now is closed when its client sends the next
    /// request, without forwarding it: a server closing an idle connection
    /// at the moment the client reuses it. The client has no way to see it
    /// coming.
    pub fn close_on_next_request(&self) {
        self.close_on_next(None);
    }

    /// [`Proxy::close_on_next_request`] for the next request with `method`
    /// only: requests with other methods pass and the connection stays
    /// doomed.
    pub fn close_on_next(&self, method: Option<&'static str>) {
        *self.counters.method.lock().unwrap() = method;
        self.counters.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Client connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed by [`Proxy::close_on_next_request`] so far.
    pub fn closed_on_request(&self) -> u64 {
        self.counters.closed_on_request.load(Ordering::SeqCst)
    }
}

/// Client to server, until either side closes; a connection older than the
/// current generation is closed, unforwarded, when its next bytes arrive.
fn forward_requests(mut from: TcpStream, mut to: TcpStream, born: u64, n: &Counters) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let got = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(got) => got,
        };
        let method = *n.method.lock().unwrap();
        let doomed = n.generation.load(Ordering::SeqCst) > born
            && method.is_none_or(|m| buf[..got].starts_with(format!("{m} ").as_bytes()));
        if doomed {
            n.closed_on_request.fetch_add(1, Ordering::SeqCst);
            let _ = from.shutdown(std::net::Shutdown::Both);
            let _ = to.shutdown(std::net::Shutdown::Both);
            return;
        }
        if to.write_all(&buf[..got]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.set_down(true);
    }
}

/// The test server's address from `AWS_ENDPOINT_URL_S3` (`http://127.0.0.1:PORT`).
pub fn s3_upstream() -> SocketAddr {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3").expect("AWS_ENDPOINT_URL_S3");
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("endpoint {endpoint}: {e}"))
}
