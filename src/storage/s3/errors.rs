//! Turning S3 and transport failures into one line and a kind.
//!
//! Why a file of its own: whether a failure is retried (transient), reported
//! (access denied, missing bucket) or means "not found" is decided here, for
//! every request.

use super::*;

/// Extracts `<tag>…</tag>` from an S3 XML error body, entities decoded.
pub(super) fn xml_field(body: &str, tag: &str) -> Option<String> {
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

/// Kind and one-line message for an S3 error answer: its status and
/// body (an XML `<Error>` document, or nothing for HEAD).
pub(super) fn classify_http(status: u16, body: &str) -> (StorageErrorKind, String) {
    let code = xml_field(body, "Code").unwrap_or_default();
    let kind = status_kind(status, &code);
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

/// Kind and one-line message for a request that got no answer.
pub(super) fn classify_failure(e: &Failure, endpoint: &str) -> (StorageErrorKind, String) {
    match e {
        Failure::Build(e) => classify(e, endpoint),
        Failure::Url(m) => (
            StorageErrorKind::Other,
            format!("{endpoint}: bad request URL: {}", one_line(m)),
        ),
        Failure::Transport(e) => {
            let kind = match e {
                ureq::Error::Io(io) => io_kind(io.kind()),
                ureq::Error::Timeout(_)
                | ureq::Error::ConnectionFailed
                | ureq::Error::BodyStalled => StorageErrorKind::Transient,
                // An answer that does not parse as HTTP was cut off or
                // garbled on the way: asking again is the cure.
                ureq::Error::Protocol(_) | ureq::Error::Decompress(..) => {
                    StorageErrorKind::Transient
                }
                _ => StorageErrorKind::Other,
            };
            (kind, format!("{endpoint}: {}", one_line(&e.to_string())))
        }
    }
}

/// Kind and one-line message for a rust-s3 error (building or signing a
/// request, parsing an answer).
pub(super) fn classify(e: &S3Error, endpoint: &str) -> (StorageErrorKind, String) {
    match e {
        S3Error::HttpFailWithBody(status, body) => classify_http(*status, body),
        S3Error::HttpFail => (StorageErrorKind::Other, "HTTP request failed".into()),
        S3Error::Io(io) => (
            io_kind(io.kind()),
            format!("{endpoint}: {}", one_line(&io.to_string())),
        ),
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
pub(super) fn status_kind(status: u16, code: &str) -> StorageErrorKind {
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
pub(super) fn io_kind(kind: io::ErrorKind) -> StorageErrorKind {
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
