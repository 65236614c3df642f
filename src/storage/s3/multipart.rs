//! Multipart upload of a large file: initiate, upload parts, complete; abort
//! on failure.
//!
//! Why a file of its own: it is the one write made of several requests,
//! with an upload id to clean up when any of them fails. The steps are
//! rust-s3's (same commands, same 8 MiB parts, same XML), sent over the
//! storage's pooled connections like every other request.

use std::io::Read;

use s3::command::{Command, Multipart};
use s3::serde_types::{CompleteMultipartUploadData, InitiateMultipartUploadResponse, Part};

use super::requests::OCTET_STREAM;
use super::*;

/// Part size: rust-s3's (S3's minimum is 5 MiB, its maximum 10,000 parts).
const PART: usize = s3::bucket::CHUNK_SIZE;

impl S3Storage {
    /// Uploads the file at `path` to `key` in parts of [`PART`] bytes.
    pub(super) fn put_multipart(
        &self,
        key: &str,
        path: &std::path::Path,
        meta: &Metadata,
    ) -> Result<()> {
        let full = self.checked_key(key)?;
        let location = self.location(key);
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // Metadata belongs to the initiate request (rust-s3 sends a
        // bucket's extra headers on it and leaves them off the parts).
        let headers = self.meta_headers(key, meta)?;
        let with_meta = self
            .bucket
            .with_extra_headers(headers)
            .map_err(|e| self.map_err(location.clone(), e))?;
        let command = Command::InitiateMultipartUpload {
            content_type: OCTET_STREAM,
        };
        // Not idempotent: a second initiate would open a second upload.
        let answer = self.call_on(&with_meta, &location, &full, command, Replay::OnlyUnsent)?;
        let answer = self.success(&location, answer)?;
        let upload: InitiateMultipartUploadResponse = self.parse_xml(&location, &answer)?;
        let result = self.upload_parts(&location, &full, &upload.upload_id, &mut file, path);
        if result.is_err() {
            // Best effort: the upload's own error is the one to report.
            let abort = Command::AbortMultipartUpload {
                upload_id: &upload.upload_id,
            };
            if let Err(e) = self.call(&location, &full, abort, Replay::Idempotent) {
                log::debug!("{location}: abort of a failed multipart upload: {e}");
            }
        }
        result
    }

    /// Parts and completion of the upload `upload_id`.
    fn upload_parts(
        &self,
        location: &str,
        full: &str,
        upload_id: &str,
        file: &mut std::fs::File,
        path: &std::path::Path,
    ) -> Result<()> {
        let mut parts = Vec::new();
        let mut buf = vec![0u8; PART];
        loop {
            let n = read_full(file, &mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 && !parts.is_empty() {
                break;
            }
            let part_number = u32::try_from(parts.len() + 1).unwrap_or(u32::MAX);
            let command = Command::PutObject {
                content: &buf[..n],
                content_type: OCTET_STREAM,
                custom_headers: None,
                multipart: Some(Multipart::new(part_number, upload_id)),
            };
            // Idempotent: the same part number again replaces the part.
            let answer = self.call(location, full, command, Replay::Idempotent)?;
            let answer = self.success(location, answer)?;
            let etag = answer.header("etag").ok_or_else(|| {
                err(
                    location.to_string(),
                    StorageErrorKind::Other,
                    "the server sent no ETag for a part",
                )
            })?;
            parts.push(Part {
                part_number,
                etag: etag.to_string(),
            });
            if n < PART {
                break;
            }
        }
        let command = Command::CompleteMultipartUpload {
            upload_id,
            data: CompleteMultipartUploadData { parts },
        };
        // Not idempotent: completing twice is answered NoSuchUpload.
        let answer = self.call(location, full, command, Replay::OnlyUnsent)?;
        let answer = self.success(location, answer)?;
        // S3 may answer 200 and report a failure in the body.
        let body = String::from_utf8_lossy(&answer.body);
        if !body.contains("CompleteMultipartUploadResult") {
            let code = xml_field(&body, "Code").unwrap_or_default();
            return Err(err(
                location.to_string(),
                status_kind(500, &code),
                format!("completing the upload failed: {code}"),
            ));
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
