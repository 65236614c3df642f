//! The S3 client: one rust-s3 bucket handle (blocking API), built from the
//! configuration.
//!
//! Why a file of its own: addressing style, credentials and the request
//! timeout are decided once, here.

use super::*;

/// A [`Storage`] in an S3-compatible bucket.
pub struct S3Storage {
    pub(super) bucket: Box<Bucket>,
    pub(super) bucket_name: String,
    pub(super) prefix: String,
    /// Endpoint shown in transport error messages.
    pub(super) endpoint: String,
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
            .unwrap_or_else(|| crate::defaults::S3_REGION.to_string());
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
    pub(super) fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{}", self.prefix, key)
        }
    }

    pub(super) fn location(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket_name, self.full_key(key))
    }

    pub(super) fn checked_key(&self, key: &str) -> Result<String> {
        validate_key(key)
            .map_err(|reason| err(self.location(key), StorageErrorKind::Other, reason))?;
        Ok(self.full_key(key))
    }

    /// The HTTP client hands over a body cut short by a dropped connection
    /// as if it were complete: compare it with `Content-Length`, and call a
    /// short body what it is, a transient transport failure.
    pub(super) fn check_length(
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
    pub(super) fn map_err(&self, location: String, e: S3Error) -> Error {
        let (kind, message) = classify(&e, &self.endpoint);
        err(location, kind, message)
    }
}
