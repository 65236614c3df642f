//! [`S3Storage`]: objects in an S3-compatible bucket, through rust-s3's
//! blocking (`sync`) API — plain HTTP/1.1 calls on the calling thread, no
//! async runtime.
//!
//! Configuration comes from flags ([`S3Options`]) and the usual AWS
//! environment variables (see [`S3Config::from_spec`]). Failures are mapped
//! to [`StorageErrorKind`] so callers can decide between retrying
//! (`Transient`) and stopping loudly (`AccessDenied`, `NoSuchBucket`).
//!
//! rust-s3's own retry (a process-wide count with fixed `n²`-second sleeps) is
//! switched off when an [`S3Storage`] is built: walsync's uploader retries with
//! capped, jittered backoff itself, and two retry layers would multiply delays
//! and hide outages from it.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::ObjectIdentifier;
use s3::{Bucket, Region};

use super::{
    err, normalize_prefix, one_line, validate_key, Metadata, ObjectInfo, Precondition, Storage,
};
use crate::error::{Error, Result, StorageErrorKind};

/// Longest time one S3 request may take (see [`S3Storage::new`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Region used when neither a flag nor the environment names one.
const DEFAULT_REGION: &str = "us-east-1";
/// Keys per ListObjectsV2 page and per DeleteObjects request (the S3 maximum).
const BATCH: usize = 1000;

/// S3 settings given on the command line; each overrides the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL (`http://127.0.0.1:3900`, `https://…r2.cloudflarestorage.com`).
    pub endpoint: Option<String>,
    /// Signing region (`garage` for Garage, `auto` for R2, …).
    pub region: Option<String>,
    /// Force path-style (`true`) or virtual-host-style (`false`) addressing.
    /// Default: path style with a custom endpoint, virtual hosts on AWS.
    pub path_style: Option<bool>,
}

/// Access keys. `Debug` never prints the secret or the token.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
    /// `AWS_SESSION_TOKEN`, for temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Everything needed to talk to one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Custom endpoint URL; `None` means AWS S3 for `region`.
    pub endpoint: Option<String>,
    /// Signing region; `None` means `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by Garage and MinIO.
    pub path_style: bool,
    /// Access keys; `None` falls back to rust-s3's lookup (environment, then
    /// the `~/.aws/credentials` profile).
    pub credentials: Option<S3Credentials>,
}

impl S3Config {
    /// Builds the configuration for `spec` (`NAME` or `s3://NAME[/prefix]`)
    /// from `opts` and the environment:
    ///
    /// - endpoint: `opts.endpoint`, else `AWS_ENDPOINT_URL_S3`, else
    ///   `AWS_ENDPOINT_URL` (a URL without scheme gets `https://`);
    /// - region: `opts.region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`,
    ///   else `us-east-1`;
    /// - credentials: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    ///   `AWS_SESSION_TOKEN`.
    ///
    /// Empty variables count as unset.
    pub fn from_spec(spec: &str, opts: &S3Options) -> Result<S3Config> {
        S3Config::from_spec_with_env(spec, opts, |name| std::env::var(name).ok())
    }

    /// [`S3Config::from_spec`] with the environment supplied by `env`.
    pub fn from_spec_with_env(
        spec: &str,
        opts: &S3Options,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Config> {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (bucket, prefix) = parse_bucket_spec(spec)?;
        let endpoint = opts
            .endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())
            .or_else(|| var("AWS_ENDPOINT_URL_S3"))
            .or_else(|| var("AWS_ENDPOINT_URL"))
            .map(|e| normalize_endpoint(&e))
            .transpose()?;
        let region = opts
            .region
            .clone()
            .filter(|r| !r.trim().is_empty())
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"));
        let path_style = opts.path_style.unwrap_or(endpoint.is_some());
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Some(S3Credentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            (Some(_), None) => {
                return Err(Error::Config(
                    "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
                ))
            }
            _ => None,
        };
        Ok(S3Config {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            credentials,
        })
    }

    /// `s3://bucket/prefix`, for messages.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Splits `NAME` or `s3://NAME[/prefix]` into bucket and normalized prefix.
fn parse_bucket_spec(spec: &str) -> Result<(String, String)> {
    let (bucket, prefix) = if let Some(rest) = spec.strip_prefix("s3://") {
        match rest.split_once('/') {
            Some((bucket, prefix)) => (bucket, normalize_prefix(prefix)),
            None => (rest, String::new()),
        }
    } else if spec.contains("://") {
        return Err(Error::Config(format!(
            "{spec}: unsupported URL scheme (use s3://bucket/prefix, a bucket name or file:///dir)"
        )));
    } else if spec.contains('/') {
        return Err(Error::Config(format!(
            "{spec}: not a bucket name (use s3://bucket/prefix for a prefix, file:///dir for a directory)"
        )));
    } else {
        (spec, String::new())
    };
    let valid = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !valid {
        return Err(Error::Config(format!(
            "{spec}: invalid bucket name {bucket:?} (3 to 63 letters, digits, '.', '-')"
        )));
    }
    if prefix.split('/').any(|s| s == "." || s == "..") || prefix.contains("//") {
        return Err(Error::Config(format!("{spec}: invalid prefix {prefix:?}")));
    }
    Ok((bucket.to_string(), prefix))
}

/// Adds `https://` to a bare host, drops trailing slashes, rejects other schemes.
fn normalize_endpoint(endpoint: &str) -> Result<String> {
    let endpoint = endpoint.trim().trim_end_matches('/');
    let endpoint = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("https://{endpoint}")
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(Error::Config(format!(
            "{endpoint}: S3 endpoint must be an http:// or https:// URL"
        )));
    }
    Ok(endpoint)
}

/// A [`Storage`] in an S3-compatible bucket.
pub struct S3Storage {
    bucket: Box<Bucket>,
    bucket_name: String,
    prefix: String,
    /// Endpoint shown in transport error messages.
    endpoint: String,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket_name)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl S3Storage {
    /// A client for `config`. Sends no request (see [`Storage::check`]).
    pub fn new(config: S3Config) -> Result<S3Storage> {
        // walsync retries on its own; see the module documentation.
        s3::set_retries(0);
        let region_name = config
            .region
            .clone()
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let region = match &config.endpoint {
            Some(endpoint) => Region::Custom {
                region: region_name,
                endpoint: endpoint.clone(),
            },
            None => match region_name.parse::<Region>() {
                Ok(Region::Custom { .. }) | Err(_) => Region::Custom {
                    endpoint: format!("https://s3.{region_name}.amazonaws.com"),
                    region: region_name,
                },
                Ok(known) => known,
            },
        };
        let endpoint = format!("{}://{}", region.scheme(), region.host());
        let credentials = match &config.credentials {
            Some(c) => Credentials::new(
                Some(&c.access_key_id),
                Some(&c.secret_access_key),
                None,
                c.session_token.as_deref(),
                None,
            ),
            None => Credentials::default(),
        }
        .map_err(|_| {
            Error::Config(format!(
                "{}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                config.url()
            ))
        })?;
        let mut bucket = Bucket::new(&config.bucket, region, credentials).map_err(|e| {
            Error::Config(format!("{}: {}", config.url(), one_line(&e.to_string())))
        })?;
        if config.path_style {
            bucket.set_path_style();
        } else {
            bucket.set_subdomain_style();
        }
        // Every request ends within this time: a server that hangs becomes a
        // failed attempt, which is retried and which the WAL escape valve
        // counts as an outage (`--max-wal-mib`). One PUT carries at most
        // 16 MiB (larger objects go in parts), so this needs ~2.2 Mbit/s.
        bucket.set_request_timeout(Some(REQUEST_TIMEOUT));
        Ok(S3Storage {
            bucket,
            bucket_name: config.bucket,
            prefix: config.prefix,
            endpoint,
        })
    }

    /// The key inside the bucket for a key relative to our prefix.
    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket_name, self.full_key(key))
    }

    fn checked_key(&self, key: &str) -> Result<String> {
        validate_key(key)
            .map_err(|reason| err(self.location(key), StorageErrorKind::Other, reason))?;
        Ok(self.full_key(key))
    }

    /// The HTTP client hands over a body cut short by a dropped connection
    /// as if it were complete: compare it with `Content-Length`, and call a
    /// short body what it is, a transient transport failure.
    fn check_length(
        &self,
        key: &str,
        headers: &std::collections::HashMap<String, String>,
        body: &[u8],
    ) -> Result<()> {
        let announced = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<u64>().ok());
        match announced {
            Some(n) if n != body.len() as u64 => Err(err(
                self.location(key),
                StorageErrorKind::Transient,
                format!(
                    "{}: body cut short: {} of {n} bytes received",
                    self.endpoint,
                    body.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Maps a rust-s3 error on `location` to a one-line storage error.
    fn map_err(&self, location: String, e: S3Error) -> Error {
        let (kind, message) = classify(&e, &self.endpoint);
        err(location, kind, message)
    }
}

/// Extracts `<tag>…</tag>` from an S3 XML error body, entities decoded.
fn xml_field(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&close)? + start;
    Some(
        body[start..end]
            .trim()
            .replace("&apos;", "'")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// Kind and one-line message for a rust-s3 error.
fn classify(e: &S3Error, endpoint: &str) -> (StorageErrorKind, String) {
    match e {
        S3Error::HttpFailWithBody(status, body) => {
            let code = xml_field(body, "Code").unwrap_or_default();
            let kind = status_kind(*status, &code);
            let mut message = format!("HTTP {status}");
            if !code.is_empty() {
                message.push(' ');
                message.push_str(&code);
            }
            match xml_field(body, "Message") {
                Some(m) if !m.is_empty() => {
                    message.push_str(": ");
                    message.push_str(&one_line(&m));
                }
                _ if code.is_empty() && !body.trim().is_empty() => {
                    message.push_str(": ");
                    message.push_str(&one_line(body));
                }
                _ => {}
            }
            if code == "AuthorizationHeaderMalformed" {
                // What a wrong region looks like (Garage wants `garage`).
                message.push_str(" (check --region / AWS_REGION)");
            }
            (kind, message)
        }
        S3Error::HttpFail => (StorageErrorKind::Other, "HTTP request failed".into()),
        S3Error::Io(io) => (
            io_kind(io.kind()),
            format!("{endpoint}: {}", one_line(&io.to_string())),
        ),
        S3Error::Atto(atto) => {
            let kind = match atto.kind() {
                attohttpc::ErrorKind::Io(io) => io_kind(io.kind()),
                _ => StorageErrorKind::Other,
            };
            (kind, format!("{endpoint}: {}", one_line(&atto.to_string())))
        }
        S3Error::Credentials(_) => (StorageErrorKind::AccessDenied, one_line(&e.to_string())),
        // A 2xx answer whose XML does not parse was cut off or garbled on
        // the way (a LIST body truncated by a proxy or a dropped
        // connection): asking again is the cure, so it is transient.
        S3Error::SerdeXml(_) => (
            StorageErrorKind::Transient,
            format!("{endpoint}: malformed answer: {}", one_line(&e.to_string())),
        ),
        other => (StorageErrorKind::Other, one_line(&other.to_string())),
    }
}

/// Kind for an HTTP error status and S3 error code.
fn status_kind(status: u16, code: &str) -> StorageErrorKind {
    match code {
        "NoSuchBucket" => return StorageErrorKind::NoSuchBucket,
        "NoSuchKey" => return StorageErrorKind::NotFound,
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "InvalidToken"
        | "ExpiredToken"
        | "InvalidSignature" => return StorageErrorKind::AccessDenied,
        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable" => {
            return StorageErrorKind::Transient
        }
        _ => {}
    }
    match status {
        404 => StorageErrorKind::NotFound,
        401 | 403 => StorageErrorKind::AccessDenied,
        408 | 429 | 500 | 502 | 503 | 504 => StorageErrorKind::Transient,
        _ => StorageErrorKind::Other,
    }
}

/// Kind for a transport-level I/O error.
fn io_kind(kind: io::ErrorKind) -> StorageErrorKind {
    use io::ErrorKind::*;
    match kind {
        ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
        | TimedOut | WouldBlock | UnexpectedEof | Interrupted | AddrNotAvailable => {
            StorageErrorKind::Transient
        }
        PermissionDenied => StorageErrorKind::AccessDenied,
        _ => {
            // NetworkUnreachable / HostUnreachable (stable in Rust 1.83) and
            // DNS failures have no stable kind in our MSRV: match the text.
            let text = format!("{kind:?}").to_ascii_lowercase();
            if text.contains("unreachable") || text.contains("network") {
                StorageErrorKind::Transient
            } else {
                StorageErrorKind::Other
            }
        }
    }
}

/// Parses S3 times: RFC 3339 in listings, the HTTP date form
/// (`Wed, 21 Oct 2015 07:28:00 GMT`) in headers.
fn parse_time(text: &str) -> Option<SystemTime> {
    use time::format_description::well_known::{Rfc2822, Rfc3339};
    use time::OffsetDateTime;
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(t.into());
    }
    let numeric_zone = match text.strip_suffix(" GMT") {
        Some(rest) => format!("{rest} +0000"),
        None => text.to_string(),
    };
    OffsetDateTime::parse(&numeric_zone, &Rfc2822)
        .ok()
        .map(Into::into)
}

/// User metadata from response headers (`x-amz-meta-*`, any case).
fn metadata_from_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a str)>) -> Metadata {
    headers
        .filter_map(|(name, value)| {
            let lower = name.to_ascii_lowercase();
            lower
                .strip_prefix("x-amz-meta-")
                .map(|n| (n.to_string(), value.to_string()))
        })
        .collect()
}

impl S3Storage {
    /// An error naming `key` unless `status` is 2xx (with `fail-on-err` most
    /// failures already come back as errors; this catches the rest).
    fn expect_success(&self, key: &str, status: u16) -> Result<()> {
        if (200..300).contains(&status) {
            return Ok(());
        }
        Err(err(
            self.location(key),
            status_kind(status, ""),
            format!("HTTP {status}"),
        ))
    }

    /// `x-amz-meta-*` headers for `meta`, validated.
    fn meta_headers(&self, key: &str, meta: &Metadata) -> Result<HeaderMap> {
        meta.validate()
            .map_err(|reason| err(self.location(key), StorageErrorKind::Other, reason))?;
        let mut headers = HeaderMap::new();
        for (name, value) in meta.iter() {
            let name = HeaderName::from_bytes(format!("x-amz-meta-{name}").as_bytes());
            let value = HeaderValue::from_str(value);
            match (name, value) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => {
                    return Err(err(
                        self.location(key),
                        StorageErrorKind::Other,
                        "metadata is not a valid HTTP header",
                    ))
                }
            }
        }
        Ok(headers)
    }
}

/// An ETag as the `If-Match` header wants it: quoted.
fn quote_etag(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

/// Files larger than this are uploaded in parts (rust-s3 uses 8 MiB parts).
const MULTIPART_THRESHOLD: u64 = 16 << 20;

impl Storage for S3Storage {
    fn put_file(&self, key: &str, path: &std::path::Path, meta: &Metadata) -> Result<()> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len <= MULTIPART_THRESHOLD {
            let body = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            return self.put(key, &body, meta);
        }
        let full = self.checked_key(key)?;
        let headers = self.meta_headers(key, meta)?;
        let bucket = self
            .bucket
            .with_extra_headers(headers)
            .map_err(|e| self.map_err(self.location(key), e))?;
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let status = bucket
            .put_object_stream_with_content_type(&mut file, &full, "application/octet-stream")
            .map_err(|e| self.map_err(self.location(key), e))?;
        self.expect_success(key, status)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{root}{prefix}");
        let (page, _) = self
            .bucket
            .list_page(
                full_prefix.clone(),
                None,
                None,
                start_after.map(|s| format!("{root}{s}")),
                Some(max_keys.clamp(1, BATCH)),
            )
            .map_err(|e| self.map_err(format!("s3://{}/{full_prefix}", self.bucket_name), e))?;
        let mut out: Vec<ObjectInfo> = page
            .contents
            .into_iter()
            .filter_map(|object| {
                object.key.strip_prefix(&root).map(|key| ObjectInfo {
                    key: key.to_string(),
                    size: object.size,
                    last_modified: parse_time(&object.last_modified),
                    metadata: Metadata::new(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(max_keys);
        Ok(out)
    }

    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        let full = self.checked_key(key)?;
        let headers = self.meta_headers(key, meta)?;
        let response = self
            .bucket
            .put_object_with_content_type_and_headers(
                &full,
                body,
                "application/octet-stream",
                Some(headers),
            )
            .map_err(|e| self.map_err(self.location(key), e))?;
        let status = response.status_code();
        self.expect_success(key, status)
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        let full = self.checked_key(key)?;
        let response = self
            .bucket
            .get_object(&full)
            .map_err(|e| self.map_err(self.location(key), e))?;
        let status = response.status_code();
        self.expect_success(key, status)?;
        let headers = response.headers();
        let last_modified = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("last-modified"))
            .and_then(|(_, v)| parse_time(v));
        let metadata = metadata_from_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let body = response.to_vec();
        self.check_length(key, &headers, &body)?;
        let info = ObjectInfo {
            key: key.to_string(),
            size: body.len() as u64,
            last_modified,
            metadata,
        };
        Ok((body, info))
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        let full = self.checked_key(key)?;
        if len == Some(0) {
            return Ok(Vec::new());
        }
        let end = len.map(|l| start.saturating_add(l - 1));
        let response = match self.bucket.get_object_range(&full, start, end) {
            Ok(r) => r,
            // Range starting at or past the end: S3 says 416, we say "no bytes".
            Err(S3Error::HttpFailWithBody(416, _)) => return Ok(Vec::new()),
            Err(e) => return Err(self.map_err(self.location(key), e)),
        };
        let status = response.status_code();
        let headers = response.headers();
        let mut body = response.to_vec();
        self.check_length(key, &headers, &body)?;
        match status {
            206 => {}
            // The server ignored the Range header and sent everything.
            200 => {
                let from = usize::try_from(start).unwrap_or(usize::MAX).min(body.len());
                body.drain(..from);
            }
            _ => {
                return Err(err(
                    self.location(key),
                    status_kind(status, ""),
                    format!("HTTP {status}"),
                ))
            }
        }
        if let Some(len) = len {
            body.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        }
        Ok(body)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let full = self.checked_key(key)?;
        // HEAD responses have no body, so a 404 cannot say whether the key or
        // the bucket is missing: both read as "absent" ([`Storage::check`]
        // tells a missing bucket apart at start-up).
        let (head, status) = match self.bucket.head_object(&full) {
            Ok(r) => r,
            Err(S3Error::HttpFailWithBody(404, _)) => return Ok(None),
            Err(e) => return Err(self.map_err(self.location(key), e)),
        };
        if status == 404 {
            return Ok(None);
        }
        self.expect_success(key, status)?;
        let metadata: Metadata = head.metadata.unwrap_or_default().into_iter().collect();
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: head
                .content_length
                .and_then(|l| u64::try_from(l).ok())
                .unwrap_or(0),
            last_modified: head.last_modified.as_deref().and_then(parse_time),
            metadata,
        }))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{root}{prefix}");
        let mut start_after = start_after.map(|s| format!("{root}{s}"));
        let mut token: Option<String> = None;
        let mut out = Vec::new();
        loop {
            let (page, _) = self
                .bucket
                .list_page(
                    full_prefix.clone(),
                    None,
                    token.clone(),
                    if token.is_some() {
                        None
                    } else {
                        start_after.clone()
                    },
                    Some(BATCH),
                )
                .map_err(|e| self.map_err(format!("s3://{}/{full_prefix}", self.bucket_name), e))?;
            let last = page.contents.last().map(|o| o.key.clone());
            for object in page.contents {
                if let Some(key) = object.key.strip_prefix(&root) {
                    out.push(ObjectInfo {
                        key: key.to_string(),
                        size: object.size,
                        last_modified: parse_time(&object.last_modified),
                        metadata: Metadata::new(),
                    });
                }
            }
            if !page.is_truncated {
                break;
            }
            match (page.next_continuation_token, last) {
                (Some(next), _) => token = Some(next),
                // Truncated without a token: continue after the last key seen.
                (None, Some(last)) => {
                    token = None;
                    start_after = Some(last);
                }
                (None, None) => break,
            }
        }
        // Servers list in byte order already; make it a guarantee.
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    fn put_conditional(
        &self,
        key: &str,
        body: &[u8],
        meta: &Metadata,
        cond: &Precondition,
    ) -> Result<bool> {
        let full = self.checked_key(key)?;
        let mut headers = self.meta_headers(key, meta)?;
        let (name, value) = match cond {
            Precondition::Absent => (http::header::IF_NONE_MATCH, "*".to_string()),
            Precondition::Matches(etag) => (http::header::IF_MATCH, quote_etag(etag)),
        };
        let value = HeaderValue::from_str(&value).map_err(|_| {
            err(
                self.location(key),
                StorageErrorKind::Other,
                "ETag is not a valid HTTP header value",
            )
        })?;
        headers.insert(name, value);
        match self.bucket.put_object_with_content_type_and_headers(
            &full,
            body,
            "application/octet-stream",
            Some(headers),
        ) {
            Ok(response) => {
                self.expect_success(key, response.status_code())?;
                Ok(true)
            }
            // The precondition failed: another writer got there first.
            Err(S3Error::HttpFailWithBody(412, _)) => Ok(false),
            // AWS: a concurrent conditional write to the same key; retry.
            Err(S3Error::HttpFailWithBody(409, body)) => Err(err(
                self.location(key),
                StorageErrorKind::Transient,
                format!("HTTP 409 {}", xml_field(&body, "Code").unwrap_or_default()),
            )),
            Err(e) => Err(self.map_err(self.location(key), e)),
        }
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let full = self.checked_key(key)?;
        let response = match self.bucket.get_object(&full) {
            Ok(r) => r,
            Err(S3Error::HttpFailWithBody(404, body))
                if xml_field(&body, "Code").as_deref() != Some("NoSuchBucket") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(self.map_err(self.location(key), e)),
        };
        let status = response.status_code();
        if status == 404 {
            return Ok(None);
        }
        self.expect_success(key, status)?;
        let etag = response
            .headers()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| v.trim_matches('"').to_string())
            .ok_or_else(|| {
                err(
                    self.location(key),
                    StorageErrorKind::Other,
                    "the server sent no ETag",
                )
            })?;
        Ok(Some((response.to_vec(), etag)))
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let mut full_keys = Vec::with_capacity(keys.len());
        for key in keys {
            full_keys.push(self.checked_key(key)?);
        }
        for chunk in full_keys.chunks(BATCH) {
            let ids: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|k| ObjectIdentifier::new(k.as_str()))
                .collect();
            let location = format!("s3://{}/{}", self.bucket_name, chunk[0]);
            let result = self
                .bucket
                .delete_objects(ids)
                .map_err(|e| self.map_err(location, e))?;
            if let Some(failed) = result.errors.iter().find(|e| e.code != "NoSuchKey") {
                return Err(err(
                    format!("s3://{}/{}", self.bucket_name, failed.key),
                    status_kind(0, &failed.code),
                    format!(
                        "delete failed: {} {}",
                        failed.code,
                        one_line(&failed.message)
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<()> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.bucket
            .list_page(prefix, None, None, None, Some(1))
            .map(|_| ())
            .map_err(|e| self.map_err(self.describe(), e))
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket_name)
        } else {
            format!("s3://{}/{}", self.bucket_name, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn bucket_specs() {
        let c =
            S3Config::from_spec_with_env("s3://b-1/a/b/", &S3Options::default(), env(&[])).unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("b-1", "a/b"));
        assert_eq!(c.url(), "s3://b-1/a/b");
        let c = S3Config::from_spec_with_env("mybucket", &S3Options::default(), env(&[])).unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("mybucket", ""));
        for bad in [
            "gs://x/y",
            "a/b",
            "s3://x",
            "s3:///p",
            "s3://b-1/a/../b",
            "",
        ] {
            assert!(
                S3Config::from_spec_with_env(bad, &S3Options::default(), env(&[])).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn environment_and_flags() {
        let vars = [
            ("AWS_ENDPOINT_URL", "http://other:1"),
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:3900/"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_REGION", "garage"),
            ("AWS_ACCESS_KEY_ID", "GK1"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("AWS_SESSION_TOKEN", ""),
        ];
        let c = S3Config::from_spec_with_env("bkt", &S3Options::default(), env(&vars)).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(c.region.as_deref(), Some("garage"));
        assert!(c.path_style);
        let creds = c.credentials.unwrap();
        assert_eq!(creds.session_token, None);
        assert!(!format!("{creds:?}").contains("\"s\""));

        let opts = S3Options {
            endpoint: Some("s3.example.com".into()),
            region: Some("auto".into()),
            path_style: Some(false),
        };
        let c = S3Config::from_spec_with_env("bkt", &opts, env(&vars)).unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("https://s3.example.com"));
        assert_eq!(c.region.as_deref(), Some("auto"));
        assert!(!c.path_style);

        let c = S3Config::from_spec_with_env("bkt", &S3Options::default(), env(&[])).unwrap();
        assert_eq!((c.endpoint, c.region, c.path_style), (None, None, false));
        assert!(S3Config::from_spec_with_env(
            "bkt",
            &S3Options::default(),
            env(&[("AWS_ACCESS_KEY_ID", "x")])
        )
        .is_err());
    }

    #[test]
    fn error_classification() {
        let body = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code>\
                    <Message>Bucket not found: x</Message></Error>";
        let (kind, msg) = classify(&S3Error::HttpFailWithBody(404, body.into()), "e");
        assert_eq!(kind, StorageErrorKind::NoSuchBucket);
        assert_eq!(msg, "HTTP 404 NoSuchBucket: Bucket not found: x");
        let body = "<Error><Code>AuthorizationHeaderMalformed</Code><Message>unexpected \
                    scope: &apos;us-east-1&apos;</Message></Error>";
        let (kind, msg) = classify(&S3Error::HttpFailWithBody(400, body.into()), "e");
        assert_eq!(kind, StorageErrorKind::Other);
        assert_eq!(
            msg,
            "HTTP 400 AuthorizationHeaderMalformed: unexpected scope: 'us-east-1' \
             (check --region / AWS_REGION)"
        );
        let (kind, _) = classify(&S3Error::HttpFailWithBody(404, String::new()), "e");
        assert_eq!(kind, StorageErrorKind::NotFound);
        assert_eq!(status_kind(403, ""), StorageErrorKind::AccessDenied);
        assert_eq!(
            status_kind(400, "InvalidAccessKeyId"),
            StorageErrorKind::AccessDenied
        );
        assert_eq!(status_kind(503, ""), StorageErrorKind::Transient);
        assert_eq!(status_kind(400, "InvalidRequest"), StorageErrorKind::Other);
        let io = io::Error::from(io::ErrorKind::ConnectionRefused);
        let (kind, msg) = classify(&S3Error::Io(io), "http://127.0.0.1:1");
        assert_eq!(kind, StorageErrorKind::Transient);
        assert!(msg.starts_with("http://127.0.0.1:1: "));
    }

    #[test]
    fn times() {
        assert!(parse_time("2024-05-01T10:00:00.000Z").is_some());
        assert!(parse_time("Wed, 21 Oct 2015 07:28:00 GMT").is_some());
        assert!(parse_time("yesterday").is_none());
    }

    #[test]
    fn aws_region_without_endpoint() {
        let config = S3Config {
            bucket: "bkt".into(),
            prefix: String::new(),
            endpoint: None,
            region: Some("eu-west-3".into()),
            path_style: false,
            credentials: Some(S3Credentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
                session_token: None,
            }),
        };
        let s = S3Storage::new(config).unwrap();
        assert_eq!(s.describe(), "s3://bkt");
        assert!(s.endpoint.contains("amazonaws.com"), "{}", s.endpoint);
    }
}
