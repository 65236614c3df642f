//! The S3 client: one rust-s3 bucket handle (addressing, credentials,
//! signing) and one HTTP agent (connections), built from the
//! configuration.
//!
//! Why a file of its own: addressing style and credentials are decided once,
//! here, and every request goes through [`S3Storage::call`], so the
//! mapping of failures to storage errors is in one place.

use super::*;

/// A [`Storage`] in an S3-compatible bucket.
pub struct S3Storage {
    pub(super) bucket: Box<Bucket>,
    /// Keep-alive connections shared by every thread using this storage.
    pub(super) http: Http,
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
        Ok(S3Storage {
            bucket,
            http: Http::new(config.ca_bundle.as_deref())?,
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

    /// Sends `command` for `path` (a full key, or `/` for the bucket);
    /// `location` names the object in errors. Any HTTP status is an answer
    /// (see [`S3Storage::success`]).
    pub(super) fn call(
        &self,
        location: &str,
        path: &str,
        command: Command<'_>,
        replay: Replay,
    ) -> Result<Answer> {
        self.call_on(&self.bucket, location, path, command, replay)
    }

    /// [`S3Storage::call`] signed with `bucket`, a copy of ours with extra
    /// headers.
    pub(super) fn call_on(
        &self,
        bucket: &Bucket,
        location: &str,
        path: &str,
        command: Command<'_>,
        replay: Replay,
    ) -> Result<Answer> {
        self.http.send(bucket, path, command, replay).map_err(|e| {
            let (kind, message) = classify_failure(&e, &self.endpoint);
            err(location.to_string(), kind, message)
        })
    }

    /// `answer` if its status is 2xx, else the error it describes.
    pub(super) fn success(&self, location: &str, answer: Answer) -> Result<Answer> {
        if (200..300).contains(&answer.status) {
            Ok(answer)
        } else {
            Err(self.http_error(location, &answer))
        }
    }

    /// The error an answer with a non-2xx status describes.
    pub(super) fn http_error(&self, location: &str, answer: &Answer) -> Error {
        let (kind, message) = classify_http(answer.status, &String::from_utf8_lossy(&answer.body));
        err(location.to_string(), kind, message)
    }

    /// The XML document of a 2xx answer as `T` (one of rust-s3's types).
    pub(super) fn parse_xml<T: serde::de::DeserializeOwned>(
        &self,
        location: &str,
        answer: &Answer,
    ) -> Result<T> {
        quick_xml::de::from_reader(answer.body.as_slice())
            .map_err(|e| self.map_err(location.to_string(), S3Error::SerdeXml(e)))
    }

    /// A body cut short by a dropped connection must not pass for a
    /// complete one: compare it with `Content-Length`, and call a short body
    /// what it is, a transient transport failure. ureq already fails a body
    /// that ends early; this keeps the guarantee independent of the HTTP
    /// layer.
    pub(super) fn check_length(&self, key: &str, answer: &Answer) -> Result<()> {
        let announced = answer
            .header("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        match announced {
            Some(n) if n != answer.body.len() as u64 => Err(err(
                self.location(key),
                StorageErrorKind::Transient,
                format!(
                    "{}: body cut short: {} of {n} bytes received",
                    self.endpoint,
                    answer.body.len()
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
