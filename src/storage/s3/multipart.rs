//! Streamed uploads: a body written by a [`Source`] goes out as one PUT when
//! it fits in one part, else as a multipart upload whose parts are sent as
//! they fill; abort on failure.
//!
//! Why a file of its own: it is the one write made of several requests,
//! with an upload id to clean up when any of them fails. The steps are
//! rust-s3's (same commands, same XML), sent over the storage's pooled
//! connections like every other request.
//!
//! Memory is one part per upload in progress. The part size grows with the
//! body's size hint, so S3's limit of 10,000 parts never caps an object:
//! 8 MiB parts up to ~70 GiB, larger ones beyond (a 1 TiB snapshot uploads
//! in parts of ~117 MiB).

use std::io::{self, Write};

use s3::command::{Command, Multipart};
use s3::serde_types::{CompleteMultipartUploadData, InitiateMultipartUploadResponse, Part};

use super::requests::OCTET_STREAM;
use super::*;
use crate::storage::retry::{retry_transient, ATTEMPTS};
use crate::storage::Source;

/// Smallest part: rust-s3's (S3's minimum is 5 MiB).
const PART: usize = s3::bucket::CHUNK_SIZE;
/// Parts planned for a body of its size hint, below S3's 10,000 so a hint
/// that is a little low still fits.
const PLANNED_PARTS: u64 = 9_000;
/// S3's limit.
const MAX_PARTS: usize = 10_000;

/// The part size for a body of at most `hint` bytes: [`PART`], or more (in
/// whole MiB) when [`PLANNED_PARTS`] parts of it would not hold `hint`.
pub(super) fn part_size(hint: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let want = hint.div_ceil(PLANNED_PARTS).div_ceil(MIB) * MIB;
    usize::try_from(want).map_or(usize::MAX, |w| w.max(PART))
}

impl S3Storage {
    /// Stores what `body` writes under `key` (see the module doc).
    pub(super) fn put_streamed(
        &self,
        key: &str,
        body: &mut dyn Source,
        meta: &Metadata,
    ) -> Result<()> {
        let mut up = Upload {
            s3: self,
            full: self.checked_key(key)?,
            location: self.location(key),
            headers: Some(self.meta_headers(key, meta)?),
            part: part_size(body.size_hint()),
            buf: Vec::new(),
            upload_id: None,
            parts: Vec::new(),
            failed: None,
        };
        up.buf
            .reserve(usize::try_from(body.size_hint()).map_or(up.part, |h| h.min(up.part)));
        let written = body.write_to(&mut up);
        let result = match (up.failed.take(), written) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(_)) => up.finish(),
        };
        if result.is_err() {
            up.abort();
        }
        result
    }
}

/// One streamed upload in progress.
struct Upload<'a> {
    s3: &'a S3Storage,
    full: String,
    location: String,
    /// Metadata headers, sent with the single PUT or the initiate request.
    headers: Option<HeaderMap>,
    part: usize,
    buf: Vec<u8>,
    upload_id: Option<String>,
    parts: Vec<Part>,
    /// The store's own error, kept whole (the source sees an `io::Error`).
    failed: Option<Error>,
}

impl Write for Upload<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::other(e.to_string()));
        }
        let n = data.len().min(self.part - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part {
            if let Err(e) = self.send_part() {
                let io = io::Error::other(e.to_string());
                self.failed = Some(e);
                return Err(io);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload<'_> {
    /// The initiate request, once, carrying the metadata (rust-s3 sends a
    /// bucket's extra headers on it and leaves them off the parts).
    fn upload_id(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let s3 = self.s3;
        let headers = self.headers.take().unwrap_or_default();
        let with_meta = s3
            .bucket
            .with_extra_headers(headers)
            .map_err(|e| s3.map_err(self.location.clone(), e))?;
        let command = Command::InitiateMultipartUpload {
            content_type: OCTET_STREAM,
        };
        // Not idempotent: a second initiate would open a second upload.
        let answer = s3.call_on(
            &with_meta,
            &self.location,
            &self.full,
            command,
            Replay::OnlyUnsent,
        )?;
        let answer = s3.success(&self.location, answer)?;
        let upload: InitiateMultipartUploadResponse = s3.parse_xml(&self.location, &answer)?;
        self.upload_id = Some(upload.upload_id.clone());
        Ok(upload.upload_id)
    }

    /// Sends the buffered bytes as the next part (transient failures
    /// retried from the buffer) and empties the buffer.
    fn send_part(&mut self) -> Result<()> {
        let upload_id = self.upload_id()?;
        if self.parts.len() >= MAX_PARTS {
            return Err(err(
                self.location.clone(),
                StorageErrorKind::Other,
                format!("more than {MAX_PARTS} parts: the body outgrew its size hint"),
            ));
        }
        let part_number = u32::try_from(self.parts.len() + 1).unwrap_or(u32::MAX);
        let (s3, location, full, buf) = (self.s3, &self.location, &self.full, &self.buf);
        let etag = retry_transient(ATTEMPTS, location, || {
            let command = Command::PutObject {
                content: buf,
                content_type: OCTET_STREAM,
                custom_headers: None,
                multipart: Some(Multipart::new(part_number, &upload_id)),
            };
            // Idempotent: the same part number again replaces the part.
            let answer = s3.call(location, full, command, Replay::Idempotent)?;
            let answer = s3.success(location, answer)?;
            answer.header("etag").map(str::to_string).ok_or_else(|| {
                err(
                    location.clone(),
                    StorageErrorKind::Other,
                    "the server sent no ETag for a part",
                )
            })
        })?;
        self.parts.push(Part { part_number, etag });
        self.buf.clear();
        Ok(())
    }

    /// Everything is written: one PUT when it fit in one part, else the
    /// last part and the completion.
    fn finish(&mut self) -> Result<()> {
        let s3 = self.s3;
        if self.upload_id.is_none() {
            let headers = self.headers.take().unwrap_or_default();
            let answer = s3.put_request(
                &self.location,
                &self.full,
                &self.buf,
                headers,
                Replay::Idempotent,
            )?;
            return s3.success(&self.location, answer).map(|_| ());
        }
        if !self.buf.is_empty() {
            self.send_part()?;
        }
        let upload_id = self.upload_id()?;
        let command = Command::CompleteMultipartUpload {
            upload_id: &upload_id,
            data: CompleteMultipartUploadData {
                parts: std::mem::take(&mut self.parts),
            },
        };
        // Not idempotent: completing twice is answered NoSuchUpload.
        let answer = s3.call(&self.location, &self.full, command, Replay::OnlyUnsent)?;
        let answer = s3.success(&self.location, answer)?;
        // S3 may answer 200 and report a failure in the body.
        let body = String::from_utf8_lossy(&answer.body);
        if !body.contains("CompleteMultipartUploadResult") {
            let code = xml_field(&body, "Code").unwrap_or_default();
            return Err(err(
                self.location.clone(),
                status_kind(500, &code),
                format!("completing the upload failed: {code}"),
            ));
        }
        Ok(())
    }

    /// Best effort after a failure: the upload's own error is the one to
    /// report. Parts of an upload that is neither completed nor aborted stay
    /// billed in the bucket until a lifecycle rule removes them.
    fn abort(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let abort = Command::AbortMultipartUpload {
            upload_id: &upload_id,
        };
        if let Err(e) = self
            .s3
            .call(&self.location, &self.full, abort, Replay::Idempotent)
        {
            log::debug!("{}: abort of a failed multipart upload: {e}", self.location);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_ten_thousand_always_suffice() {
        assert_eq!(part_size(0), PART);
        assert_eq!(part_size(10 << 30), PART);
        for hint in [70u64 << 30, 100 << 30, 1 << 40, 5 << 40] {
            let p = part_size(hint) as u64;
            assert!(p.div_ceil(1) >= PART as u64);
            assert!(hint.div_ceil(p) <= PLANNED_PARTS, "{hint}: {p}");
            assert_eq!(p % (1 << 20), 0);
        }
    }
}
