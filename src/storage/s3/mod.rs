//! [`S3Storage`]: objects in an S3-compatible bucket, over plain blocking
//! HTTP/1.1 on the calling thread — no async runtime — and over kept-alive
//! connections.
//!
//! Configuration comes from flags ([`S3Options`]) and the usual AWS
//! environment variables (see [`S3Config::from_spec`]). Failures are mapped
//! to [`StorageErrorKind`] so callers can decide between retrying
//! (`Transient`) and stopping loudly (`AccessDenied`, `NoSuchBucket`).
//!
//! # Who does what
//!
//! rust-s3 stays the S3 layer: it builds each request's URL (addressing
//! style, query), its headers and its SigV4 signature (`AttoRequest` and its
//! `Request` trait), and its serde types describe the XML answers (parsed
//! with the quick-xml it uses). The bytes travel through one
//! [`ureq::Agent`] per storage, shared by every thread using it, which pools
//! keep-alive connections (plain and TLS) per host (`transport.rs`).
//! rust-s3's own sending (attohttpc in its blocking mode) is not used: it
//! opens a new TCP — and TLS — connection for every request, with a thread
//! per connect, which was ~13 % of walsync's CPU under load and a round trip
//! or two of latency on every commit.
//!
//! Rejected alternatives:
//! - presigned URLs sent through ureq: rust-s3 presigns GET, PUT and DELETE
//!   only (no LIST, HEAD, DeleteObjects, multipart) and a presigned PUT
//!   leaves metadata and `If-Match`/`If-None-Match` headers unsigned, so
//!   half of the requests would still need another path;
//! - our own SigV4: small, but it is exactly the part where a subtle
//!   mistake (canonical query encoding, which headers are signed, session
//!   tokens) breaks against one provider only; rust-s3's signer is tested
//!   against many, and reusing it keeps one signer for all requests;
//! - another S3 crate (the AWS SDK): async, built on tokio.
//!
//! Neither rust-s3's retry (it is never invoked) nor ureq's redirects are
//! in play: walsync's uploader retries with capped, jittered backoff itself,
//! and two retry layers would multiply delays and hide outages from it. The
//! one retry below it is for a pooled connection the server had already
//! closed (see `transport.rs`), which is not a failure of the server.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use s3::command::Command;
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::serde_types::{
    DeleteObjectsRequest, DeleteObjectsResult, ListBucketResult, ObjectIdentifier,
};
use s3::{Bucket, Region};

use super::{
    err, normalize_prefix, one_line, validate_key, Metadata, ObjectInfo, Precondition, Storage,
};
use crate::error::{Error, Result, StorageErrorKind};

/// Longest time one S3 request may take, from sending to the last body
/// byte (set on the agent in `transport.rs`, which says why).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Signing region; `None` means [`crate::defaults::S3_REGION`].
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by Garage and MinIO.
    pub path_style: bool,
    /// Access keys; `None` falls back to rust-s3's lookup (environment, then
    /// the `~/.aws/credentials` profile).
    pub credentials: Option<S3Credentials>,
    /// PEM file of the certificate authorities HTTPS endpoints are checked
    /// against, instead of the built-in Mozilla roots (`AWS_CA_BUNDLE`, as
    /// the AWS CLI and SDKs read it): a private CA, or a self-signed
    /// server's certificate.
    pub ca_bundle: Option<PathBuf>,
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
    ///   `AWS_SESSION_TOKEN`;
    /// - trusted certificate authorities: `AWS_CA_BUNDLE`, else the built-in
    ///   Mozilla roots.
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
            ca_bundle: var("AWS_CA_BUNDLE").map(PathBuf::from),
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

mod client;
mod errors;
mod multipart;
mod requests;
#[cfg(test)]
mod tests;
mod transport;
mod wire;

pub use client::*;
use errors::*;
#[cfg(test)]
use requests::*;
use transport::{Answer, Failure, Http, Replay};
