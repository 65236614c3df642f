//! The [`Storage`] requests over S3: PUT (multipart past a size), GET,
//! ranged GET, HEAD, LIST, DELETE, conditional writes.
//!
//! Why a file of its own: the request-by-request mapping of the trait onto
//! the S3 API, with metadata and times parsed from its answers.

use super::*;

/// Parses S3 times: RFC 3339 in listings, the HTTP date form
/// (`Wed, 21 Oct 2015 07:28:00 GMT`) in headers.
pub(super) fn parse_time(text: &str) -> Option<SystemTime> {
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
pub(super) fn metadata_from_headers<'a>(
    headers: impl Iterator<Item = (&'a str, &'a str)>,
) -> Metadata {
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
pub(super) fn quote_etag(etag: &str) -> String {
    format!("\"{}\"", etag.trim_matches('"'))
}

/// Files larger than this are uploaded in parts (rust-s3 uses 8 MiB parts).
pub(super) const MULTIPART_THRESHOLD: u64 = 16 << 20;

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
