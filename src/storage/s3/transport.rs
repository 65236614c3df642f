//! How an S3 request travels: signed by rust-s3, sent through one shared
//! ureq agent that keeps connections alive, answered in full.
//!
//! Why a file of its own: the agent's settings (timeouts, pool, what ureq
//! must not do on its own) and the one rule for retrying a request on a
//! broken pooled connection are decided here, for every request.

use std::io;
use std::path::Path;
use std::time::Duration;

use s3::command::{Command, HttpMethod};
use s3::request::blocking::AttoRequest;
use s3::request::Request as _;
use s3::Bucket;
use ureq::http;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::transport::{Connector as _, DefaultConnector};

use super::wire::{Observe, Progress, Resolve};
use super::REQUEST_TIMEOUT;
use crate::error::{Error, Result};

/// How long an unused connection stays in the pool. Below the idle
/// timeouts of the usual front ends of S3 services (60 s for AWS load
/// balancers, 75 s for nginx), so we normally drop a connection before the
/// server does; a server that closes sooner (Apache's 5 s) is caught by
/// ureq's liveness probe before reuse, and a close that races with our
/// request by the retry in [`Http::send`]. Long enough that a database
/// committing every few seconds keeps its connection.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept (all to one host). The pool limits only idle
/// connections, never concurrency: this covers the uploaders (at most
/// [`crate::defaults::MAX_AUTO_UPLOADERS`] unless `--uploaders` says more)
/// plus compaction, snapshots and restore's parallel reads; with more
/// threads, connections past this count are closed after use instead of
/// pooled. Each idle connection holds one descriptor and its
/// two buffers ([`BUFFER`]).
pub(super) const POOL_IDLE: usize = 32;
const _: () = assert!(crate::defaults::MAX_AUTO_UPLOADERS < POOL_IDLE);

/// Input and output buffer of a connection. S3 answers' headers are a few
/// hundred bytes; bigger buffers would only save system calls on
/// multi-MiB bodies, which are rare (snapshots), while every pooled
/// connection keeps its buffers.
const BUFFER: usize = 32 << 10;

/// Largest response head accepted (S3 user metadata is at most 2 KiB).
const MAX_HEAD: usize = 16 << 10;

/// Whether a request may be sent again after its connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replay {
    /// Sending it twice has the effect of sending it once: GET, HEAD, LIST,
    /// DeleteObjects, a plain PUT (same bytes to the same key), a part
    /// upload (same part number), an abort.
    Idempotent,
    /// A second copy could see the first one's effect and answer
    /// differently: a conditional PUT (412 after our own write succeeded),
    /// initiating (a second upload) or completing (NoSuchUpload) a
    /// multipart upload. Replayed only if the request was never completely
    /// written, so the server cannot have acted on it.
    OnlyUnsent,
}

/// A complete answer: status, headers and the whole body, read to its end
/// so the connection goes back to the pool.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The value of header `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub(super) enum Failure {
    /// rust-s3 could not build or sign it (bad key, bad credentials).
    Build(s3::error::S3Error),
    /// The URL rust-s3 built is not one the HTTP layer accepts.
    Url(String),
    /// The connection failed, timed out or carried garbage.
    Transport(ureq::Error),
}

/// The HTTP side of an [`S3Storage`](super::S3Storage): one agent, shared
/// by every thread that uses the storage (`ureq::Agent` is `Send + Sync`
/// and its pool is behind a lock held only to take or return a connection).
pub(super) struct Http {
    agent: ureq::Agent,
}

impl Http {
    /// The agent; HTTPS servers are checked against the certificates of
    /// the PEM file `ca_bundle` if given (read once, here: a missing or
    /// empty file is a configuration error at start, not a TLS failure on
    /// every request), else against the Mozilla roots built into ureq.
    pub fn new(ca_bundle: Option<&Path>) -> Result<Http> {
        let roots = match ca_bundle {
            Some(path) => RootCerts::from(load_ca_bundle(path)?),
            None => RootCerts::WebPki,
        };
        let config = ureq::Agent::config_builder()
            .tls_config(TlsConfig::builder().root_certs(roots).build())
            // Every request ends within this time: a server that hangs
            // becomes a failed attempt, which is retried and which the WAL
            // escape valve counts as an outage (`--max-wal-mib`). One PUT
            // carries at most 16 MiB (larger objects go in parts), so this
            // needs ~2.2 Mbit/s.
            .timeout_global(Some(REQUEST_TIMEOUT))
            // Error statuses are answers: errors.rs reads their S3 code.
            .http_status_as_error(false)
            // A signed request is bound to its host; S3 redirects (wrong
            // region) are errors to report, not to follow.
            .max_redirects(0)
            .max_idle_age(IDLE_TIMEOUT)
            .max_idle_connections(POOL_IDLE)
            .max_idle_connections_per_host(POOL_IDLE)
            .input_buffer_size(BUFFER)
            .output_buffer_size(BUFFER)
            .max_response_header_size(MAX_HEAD)
            // Objects are stored as sent: no transparent decompression,
            // which would also hide the Content-Length we check bodies by.
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .user_agent(concat!("walsync/", env!("CARGO_PKG_VERSION")))
            .build();
        let connector = DefaultConnector::new().chain(Observe);
        Ok(Http {
            agent: ureq::Agent::with_parts(config, connector, Resolve::default()),
        })
    }

    /// Signs `command` for `path` (a full key, or `/` for bucket requests)
    /// and sends it. Every status is an answer; only a request that got no
    /// complete answer fails.
    ///
    /// A request that failed because its pooled connection was broken —
    /// the server closed or reset it (idle timeout, restart) before any byte
    /// of an answer — is sent once more, on a new connection (idle ones to
    /// the host are dropped: they are suspect too), and only the
    /// second outcome counts: a connection we chose to reuse going stale is
    /// not a failure of the server. That holds for [`Replay::Idempotent`]
    /// requests, and for the others only when the request was not
    /// completely written (see [`Replay`]). A failure on a new connection,
    /// or after part of an answer arrived, is returned as it is.
    pub fn send(
        &self,
        bucket: &Bucket,
        path: &str,
        command: Command<'_>,
        replay: Replay,
    ) -> Result<Answer, Failure> {
        match self.attempt(bucket, path, command.clone(), false) {
            Err(Failure::Transport(e)) if stale(&e, Progress::current(), replay) => {
                log::debug!("S3: pooled connection was closed by the server ({e}); resending");
                self.attempt(bucket, path, command, true)
            }
            other => other,
        }
    }

    /// One attempt, signed afresh (a new `x-amz-date`); on a new
    /// connection if `fresh`.
    fn attempt(
        &self,
        bucket: &Bucket,
        path: &str,
        command: Command<'_>,
        fresh: bool,
    ) -> Result<Answer, Failure> {
        Progress::reset();
        let request = AttoRequest::new(bucket, path, command).map_err(Failure::Build)?;
        let headers = request.headers().map_err(Failure::Build)?;
        let url = request.url().map_err(Failure::Build)?;
        let uri: http::Uri = url
            .as_str()
            .parse()
            .map_err(|e: http::uri::InvalidUri| Failure::Url(e.to_string()))?;
        let method = match request.command.http_verb() {
            HttpMethod::Get => http::Method::GET,
            HttpMethod::Head => http::Method::HEAD,
            HttpMethod::Put => http::Method::PUT,
            HttpMethod::Post => http::Method::POST,
            HttpMethod::Delete => http::Method::DELETE,
        };
        // rust-s3 signs Content-Length itself for requests with a body;
        // ureq keeps a Content-Length it is given and adds none for `()`.
        let mut builder = http::Request::builder().method(method).uri(uri);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        let response = match &request.command {
            Command::PutObject { content, .. } | Command::UploadPart { content, .. }
                if !content.is_empty() =>
            {
                let req = builder
                    .body(*content)
                    .map_err(|e| Failure::Url(e.to_string()))?;
                self.run(req, fresh)
            }
            _ => {
                let body = request.request_body().map_err(Failure::Build)?;
                if body.is_empty() {
                    let req = builder.body(()).map_err(|e| Failure::Url(e.to_string()))?;
                    self.run(req, fresh)
                } else {
                    let req = builder
                        .body(body.as_slice())
                        .map_err(|e| Failure::Url(e.to_string()))?;
                    self.run(req, fresh)
                }
            }
        }
        .map_err(Failure::Transport)?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        // ureq's default limit is 10 MB; walsync reads whole objects into
        // memory (a segment is at most 64 MiB) as it did with attohttpc,
        // which had no limit either. A short body is an error here and in
        // the Content-Length check.
        let body = body
            .into_with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(Failure::Transport)?;
        Ok(Answer {
            status,
            headers: parts.headers,
            body,
        })
    }
}

impl Http {
    /// Runs `req` on a pooled connection, or if `fresh` on a new one: a
    /// zero idle age for this request makes the pool lookup pass over (and
    /// drop) every idle connection to the host, which after one turned out
    /// stale are suspect too. The new connection is pooled as usual.
    fn run<B: ureq::AsSendBody>(
        &self,
        req: http::Request<B>,
        fresh: bool,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        let req = if fresh {
            self.agent
                .configure_request(req)
                .max_idle_age(Duration::ZERO)
                .build()
        } else {
            req
        };
        self.agent.run(req)
    }
}

/// The certificates of the PEM file `path` (`AWS_CA_BUNDLE`); other PEM
/// items (keys) are skipped. No certificate at all is an error: an agent
/// that trusts nothing would fail every HTTPS request.
fn load_ca_bundle(path: &Path) -> Result<Vec<Certificate<'static>>> {
    let what =
        |reason: String| Error::Config(format!("AWS_CA_BUNDLE {}: {reason}", path.display()));
    let pem = std::fs::read(path).map_err(|e| what(e.to_string()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| what(format!("not a PEM file ({e})")))? {
            PemItem::Certificate(cert) => certs.push(cert),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(what("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Whether `e`, after `progress`, is a pooled connection the server had
/// already closed: worth one more try on a new connection (see
/// [`Http::send`]).
fn stale(e: &ureq::Error, progress: Progress, replay: Replay) -> bool {
    let broken = match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected
        ),
        _ => false,
    };
    broken
        && !progress.fresh
        && !progress.answered
        && (replay == Replay::Idempotent || !progress.sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM certificate block (the parser checks framing and base64 only;
    /// rustls parses the DER when it builds its root store).
    const PEM_CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n";

    #[test]
    fn ca_bundle_certificates_are_loaded_and_bad_bundles_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("ca.pem");
        let key = "-----BEGIN PRIVATE KEY-----\nMIIBAA==\n-----END PRIVATE KEY-----\n";
        std::fs::write(&bundle, format!("{PEM_CERT}{key}{PEM_CERT}")).unwrap();
        assert_eq!(load_ca_bundle(&bundle).unwrap().len(), 2);
        assert!(Http::new(Some(&bundle)).is_ok());
        assert!(Http::new(None).is_ok());

        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, key).unwrap();
        for bad in [&missing, &empty] {
            match Http::new(Some(bad)) {
                Err(Error::Config(msg)) => {
                    assert!(msg.starts_with("AWS_CA_BUNDLE "), "{msg}");
                    assert!(msg.contains(&*bad.to_string_lossy()), "{msg}");
                }
                Err(e) => panic!("{}: {e}", bad.display()),
                Ok(_) => panic!("{}: accepted", bad.display()),
            }
        }
    }

    #[test]
    fn only_stale_pooled_connections_are_retried() {
        let reset = || ureq::Error::Io(io::ErrorKind::ConnectionReset.into());
        let pooled = Progress {
            fresh: false,
            sent: true,
            answered: false,
        };
        assert!(stale(&reset(), pooled, Replay::Idempotent));
        // Written completely: the server may have acted on it.
        assert!(!stale(&reset(), pooled, Replay::OnlyUnsent));
        let unsent = Progress {
            sent: false,
            ..pooled
        };
        assert!(stale(&reset(), unsent, Replay::OnlyUnsent));
        // A new connection failing is the server's failure, not the pool's.
        let fresh = Progress {
            fresh: true,
            ..pooled
        };
        assert!(!stale(&reset(), fresh, Replay::Idempotent));
        // Part of an answer arrived: the server was there.
        let answered = Progress {
            answered: true,
            ..pooled
        };
        assert!(!stale(&reset(), answered, Replay::Idempotent));
        let refused = ureq::Error::Io(io::ErrorKind::ConnectionRefused.into());
        assert!(!stale(&refused, pooled, Replay::Idempotent));
        assert!(!stale(
            &ureq::Error::Timeout(ureq::Timeout::Global),
            pooled,
            Replay::Idempotent
        ));
    }
}
