//! The HTTP API's own headers, shared by every handler and by the error answers.

use axum::http::HeaderValue;

/// The store revision an answer reflects.
pub const REVISION_HEADER: &str = "x-metcd-revision";
/// The compacted revision, on an answer refusing a read below it.
pub const COMPACT_REVISION_HEADER: &str = "x-metcd-compact-revision";

/// A header value from text this server wrote (digits, quotes); never fails.
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("0"))
}
