//! The [`Storage`] requests over S3: PUT (multipart past a size, in
//! `multipart.rs`), GET, ranged GET, HEAD, LIST, DELETE, conditional writes.
//!
//! Why a file of its own: the request-by-request mapping of the trait onto
//! the S3 API — which status means what, and whether a request may be
//! replayed ([`Replay`]) — with metadata and times parsed from its answers.

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
    /// `x-amz-meta-*` headers for `meta`, validated.
    pub(super) fn meta_headers(&self, key: &str, meta: &Metadata) -> Result<HeaderMap> {
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

/// Content type of every object walsync stores.
pub(super) const OCTET_STREAM: &str = "application/octet-stream";

impl S3Storage {
    /// `prefix/` of our keys inside the bucket (empty without a prefix).
    fn root(&self) -> String {
        if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        }
    }

    /// One ListObjectsV2 page of full keys under `full_prefix`.
    fn list_request(
        &self,
        full_prefix: &str,
        continuation_token: Option<String>,
        start_after: Option<String>,
        max_keys: usize,
        location: &str,
    ) -> Result<ListBucketResult> {
        let command = Command::ListObjectsV2 {
            prefix: full_prefix.to_string(),
            delimiter: None,
            continuation_token,
            start_after,
            max_keys: Some(max_keys),
        };
        let answer = self.call(location, "/", command, Replay::Idempotent)?;
        let answer = self.success(location, answer)?;
        self.parse_xml(location, &answer)
    }

    /// A PUT of `body` with `headers` (metadata, preconditions).
    pub(super) fn put_request(
        &self,
        location: &str,
        full: &str,
        body: &[u8],
        headers: HeaderMap,
        replay: Replay,
    ) -> Result<Answer> {
        let command = Command::PutObject {
            content: body,
            content_type: OCTET_STREAM,
            custom_headers: Some(headers),
            multipart: None,
        };
        self.call(location, full, command, replay)
    }
}

/// Object infos for listed keys under `root`, with `root` cut off.
fn infos(
    root: &str,
    contents: Vec<s3::serde_types::Object>,
) -> impl Iterator<Item = ObjectInfo> + '_ {
    contents.into_iter().filter_map(move |object| {
        object.key.strip_prefix(root).map(|key| ObjectInfo {
            key: key.to_string(),
            size: object.size,
            last_modified: parse_time(&object.last_modified),
            metadata: Metadata::new(),
        })
    })
}

impl Storage for S3Storage {
    fn put_stream(
        &self,
        key: &str,
        body: &mut dyn crate::storage::Source,
        meta: &Metadata,
    ) -> Result<()> {
        self.put_streamed(key, body, meta)
    }

    fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<Vec<ObjectInfo>> {
        let root = self.root();
        let full_prefix = format!("{root}{prefix}");
        let location = format!("s3://{}/{full_prefix}", self.bucket_name);
        let page = self.list_request(
            &full_prefix,
            None,
            start_after.map(|s| format!("{root}{s}")),
            max_keys.clamp(1, BATCH),
            &location,
        )?;
        let mut out: Vec<ObjectInfo> = infos(&root, page.contents).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.truncate(max_keys);
        Ok(out)
    }

    fn put(&self, key: &str, body: &[u8], meta: &Metadata) -> Result<()> {
        let full = self.checked_key(key)?;
        let headers = self.meta_headers(key, meta)?;
        let location = self.location(key);
        let answer = self.put_request(&location, &full, body, headers, Replay::Idempotent)?;
        self.success(&location, answer).map(|_| ())
    }

    fn get_with_info(&self, key: &str) -> Result<(Vec<u8>, ObjectInfo)> {
        let full = self.checked_key(key)?;
        let location = self.location(key);
        let answer = self.call(&location, &full, Command::GetObject, Replay::Idempotent)?;
        let answer = self.success(&location, answer)?;
        self.check_length(key, &answer)?;
        let last_modified = answer.header("last-modified").and_then(parse_time);
        let metadata = metadata_from_headers(
            answer
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        let info = ObjectInfo {
            key: key.to_string(),
            size: answer.body.len() as u64,
            last_modified,
            metadata,
        };
        Ok((answer.body, info))
    }

    fn get_range(&self, key: &str, start: u64, len: Option<u64>) -> Result<Vec<u8>> {
        let full = self.checked_key(key)?;
        if len == Some(0) {
            return Ok(Vec::new());
        }
        let end = len.map(|l| start.saturating_add(l - 1));
        let location = self.location(key);
        let command = Command::GetObjectRange { start, end };
        let answer = self.call(&location, &full, command, Replay::Idempotent)?;
        match answer.status {
            206 => self.check_length(key, &answer)?,
            // The server ignored the Range header and sent everything.
            200 => self.check_length(key, &answer)?,
            // Range starting at or past the end: S3 says 416, we say "no bytes".
            416 => return Ok(Vec::new()),
            _ => return Err(self.http_error(&location, &answer)),
        }
        let mut body = answer.body;
        if answer.status == 200 {
            let from = usize::try_from(start).unwrap_or(usize::MAX).min(body.len());
            body.drain(..from);
        }
        if let Some(len) = len {
            body.truncate(usize::try_from(len).unwrap_or(usize::MAX));
        }
        Ok(body)
    }

    fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let full = self.checked_key(key)?;
        let location = self.location(key);
        let answer = self.call(&location, &full, Command::HeadObject, Replay::Idempotent)?;
        // HEAD responses have no body, so a 404 cannot say whether the key or
        // the bucket is missing: both read as "absent" ([`Storage::check`]
        // tells a missing bucket apart at start-up).
        if answer.status == 404 {
            return Ok(None);
        }
        let answer = self.success(&location, answer)?;
        let metadata = metadata_from_headers(
            answer
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        );
        Ok(Some(ObjectInfo {
            key: key.to_string(),
            size: answer
                .header("content-length")
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0),
            last_modified: answer.header("last-modified").and_then(parse_time),
            metadata,
        }))
    }

    fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectInfo>> {
        let root = self.root();
        let full_prefix = format!("{root}{prefix}");
        let location = format!("s3://{}/{full_prefix}", self.bucket_name);
        let mut start_after = start_after.map(|s| format!("{root}{s}"));
        let mut token: Option<String> = None;
        let mut out = Vec::new();
        loop {
            let after = if token.is_some() {
                None
            } else {
                start_after.clone()
            };
            let page = self.list_request(&full_prefix, token.clone(), after, BATCH, &location)?;
            let last = page.contents.last().map(|o| o.key.clone());
            out.extend(infos(&root, page.contents));
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
        let location = self.location(key);
        // Not idempotent: a second copy of a write that succeeded would be
        // answered 412 and read as "another writer got there first".
        let answer = self.put_request(&location, &full, body, headers, Replay::OnlyUnsent)?;
        match answer.status {
            // The precondition failed: another writer got there first.
            412 => Ok(false),
            // AWS: a concurrent conditional write to the same key; retry.
            409 => Err(err(
                location,
                StorageErrorKind::Transient,
                format!(
                    "HTTP 409 {}",
                    xml_field(&String::from_utf8_lossy(&answer.body), "Code").unwrap_or_default()
                ),
            )),
            _ => self.success(&location, answer).map(|_| true),
        }
    }

    fn get_with_etag(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let full = self.checked_key(key)?;
        let location = self.location(key);
        let answer = self.call(&location, &full, Command::GetObject, Replay::Idempotent)?;
        if answer.status == 404
            && xml_field(&String::from_utf8_lossy(&answer.body), "Code").as_deref()
                != Some("NoSuchBucket")
        {
            return Ok(None);
        }
        let answer = self.success(&location, answer)?;
        self.check_length(key, &answer)?;
        let etag = answer
            .header("etag")
            .map(|v| v.trim_matches('"').to_string())
            .ok_or_else(|| {
                err(
                    self.location(key),
                    StorageErrorKind::Other,
                    "the server sent no ETag",
                )
            })?;
        Ok(Some((answer.body, etag)))
    }

    fn delete_many(&self, keys: &[String]) -> Result<()> {
        let mut full_keys = Vec::with_capacity(keys.len());
        for key in keys {
            full_keys.push(self.checked_key(key)?);
        }
        for chunk in full_keys.chunks(BATCH) {
            let objects: Vec<ObjectIdentifier> = chunk
                .iter()
                .map(|k| ObjectIdentifier::new(k.as_str()))
                .collect();
            let location = format!("s3://{}/{}", self.bucket_name, chunk[0]);
            let command = Command::DeleteObjects {
                data: DeleteObjectsRequest {
                    objects,
                    quiet: false,
                },
            };
            let answer = self.call(&location, "/", command, Replay::Idempotent)?;
            let answer = self.success(&location, answer)?;
            let result: DeleteObjectsResult = self.parse_xml(&location, &answer)?;
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
        let root = self.root();
        self.list_request(&root, None, None, 1, &self.describe())
            .map(|_| ())
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket_name)
        } else {
            format!("s3://{}/{}", self.bucket_name, self.prefix)
        }
    }
}
