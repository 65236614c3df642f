//! What the S3 agent plugs under ureq: connections that report how far a
//! request got, and a name resolver that spawns no thread.
//!
//! Why a file of its own: the retry rule in `transport.rs` needs facts
//! that ureq's errors do not carry — was the connection taken from the
//! pool, was the whole request written, did any byte of an answer arrive —
//! and those can only be observed at the connection. They are recorded per
//! thread ([`Progress`]): ureq runs a request, from the pool lookup to the
//! last body byte, on the calling thread, and a connection serves one
//! request at a time, so the thread that reads the record is the one whose
//! request wrote it.
//!
//! ureq's `unversioned` API (connectors, transports, resolvers) only
//! changes in minor releases, which is why `Cargo.toml` pins ureq to 3.5.x.

use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};

/// How far the current thread's request got on its connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Progress {
    /// A new connection was opened for it (not one from the pool).
    pub fresh: bool,
    /// The request was written completely: ureq only waits for input once
    /// the request line, the headers and the body are out.
    pub sent: bool,
    /// At least one byte of an answer arrived.
    pub answered: bool,
}

thread_local! {
    static PROGRESS: Cell<Progress> = Cell::new(Progress::default());
}

impl Progress {
    /// Forgets the previous request's record; call before each attempt.
    pub fn reset() {
        PROGRESS.with(|p| p.set(Progress::default()));
    }

    /// The record of the current thread's latest attempt.
    pub fn current() -> Progress {
        PROGRESS.with(Cell::get)
    }

    fn update(f: impl FnOnce(&mut Progress)) {
        PROGRESS.with(|p| {
            let mut v = p.get();
            f(&mut v);
            p.set(v);
        });
    }
}

/// The last link of the connector chain: wraps every new connection
/// (plain TCP or TLS, whatever ureq's default chain produced) in an
/// [`Observed`] one.
#[derive(Debug)]
pub(super) struct Observe;

impl Connector<Box<dyn Transport>> for Observe {
    type Out = Observed;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<Observed>, ureq::Error> {
        Ok(chained.map(|inner| {
            Progress::update(|p| p.fresh = true);
            log::debug!(
                "S3: new connection to {}",
                details.uri.authority().map(|a| a.as_str()).unwrap_or("?")
            );
            Observed(inner)
        }))
    }
}

/// A connection that records [`Progress`] and otherwise does what the
/// connection it wraps does.
#[derive(Debug)]
pub(super) struct Observed(Box<dyn Transport>);

impl Observed {
    fn note_input(&mut self) {
        if !self.0.buffers().input().is_empty() {
            Progress::update(|p| p.answered = true);
        }
    }
}

impl Transport for Observed {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.0.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.0.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        Progress::update(|p| p.sent = true);
        let result = self.0.maybe_await_input(timeout);
        self.note_input();
        result
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        Progress::update(|p| p.sent = true);
        let result = self.0.await_input(timeout);
        self.note_input();
        result
    }

    fn is_open(&mut self) -> bool {
        self.0.is_open()
    }

    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
}

/// How long a looked-up address is reused. ureq resolves the host before
/// every request, pooled connection or not; the addresses only matter when
/// a new connection is opened, so a short cache spares a lookup per
/// request without pinning an address for long.
const RESOLVE_TTL: Duration = Duration::from_secs(10);

/// ureq's resolver run without a timeout, so it looks up on the calling
/// thread (with a timeout it spawns a thread per lookup, that is per
/// request), behind a one-entry cache: one [`S3Storage`](super::S3Storage)
/// talks to one host. A lookup that hangs is bounded by the system
/// resolver's own timeouts, as it was with attohttpc.
#[derive(Debug, Default)]
pub(super) struct Resolve {
    cache: Mutex<Option<(Uri, Instant, ResolvedSocketAddrs)>>,
}

impl Resolver for Resolve {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let now = Instant::now();
        let same_host =
            |cached: &Uri| cached.scheme() == uri.scheme() && cached.authority() == uri.authority();
        if let Ok(cache) = self.cache.lock() {
            if let Some((host, at, addrs)) = cache.as_ref() {
                if same_host(host) && now.duration_since(*at) < RESOLVE_TTL {
                    return Ok(addrs.clone());
                }
            }
        }
        let addrs = DefaultResolver::default().resolve(uri, config, NextTimeout::default())?;
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((uri.clone(), now, addrs.clone()));
        }
        Ok(addrs)
    }
}
