//! Timestamps as Litestream stores them (`litestream-timestamp` metadata).
//!
//! Why a file of its own: RFC 3339 with Go's trimmed fraction, both ways,
//! so Litestream's restore-by-time reads walsync's objects and vice versa.

use super::*;

/// Format milliseconds since the epoch the way Litestream stores
/// `litestream-timestamp`: Go's `time.RFC3339Nano` in UTC (fraction digits
/// with trailing zeros trimmed, none for whole seconds), e.g.
/// `2025-01-02T03:04:05.678Z`.
pub fn format_timestamp_ms(ms: i64) -> Result<String> {
    let nanos = i128::from(ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map_err(|e| Error::Config(format!("timestamp {ms} ms out of range: {e}")))?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::Config(format!("timestamp {ms} ms cannot be formatted: {e}")))
}

/// Milliseconds since the epoch for people reading a table: RFC 3339 in UTC
/// with always three fraction digits (`2025-01-02T03:04:05.600Z`), so a
/// column of times lines up. Stored metadata uses [`format_timestamp_ms`].
pub fn display_timestamp_ms(ms: i64) -> Result<String> {
    let t = format_timestamp_ms(ms.div_euclid(1000) * 1000)?;
    // Whole seconds format without a fraction: "…:05Z".
    let whole = t.strip_suffix('Z').unwrap_or(&t);
    Ok(format!("{whole}.{:03}Z", ms.rem_euclid(1000)))
}

/// [`format_timestamp_ms`] for a `SystemTime` (truncated to milliseconds,
/// the resolution of the LTX header).
pub fn format_system_time(t: SystemTime) -> Result<String> {
    format_timestamp_ms(system_time_ms(t))
}

/// Parse an RFC 3339 timestamp (any fraction length, any offset) back to
/// milliseconds since the epoch (truncated, as Litestream does).
pub fn parse_timestamp(s: &str) -> Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::Config(format!("bad RFC 3339 timestamp {s:?}: {e}")))?;
    let ms = t.unix_timestamp_nanos().div_euclid(1_000_000);
    i64::try_from(ms).map_err(|_| Error::Config(format!("timestamp {s:?} out of range")))
}
