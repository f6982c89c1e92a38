//! The response headers reads look at: validators (`ETag`,
//! `Last-Modified`). The syntax of `Content-Range`, entity tags and dates
//! is `http_ranges`'s, shared with the servers.

use crate::BlobValidators;
use http::HeaderMap;
use http::header;

/// A header's value, if present and visible ASCII.
pub(super) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The validators a response carries, exactly as sent.
pub(super) fn validators_of(headers: &HeaderMap) -> BlobValidators {
    BlobValidators {
        etag: header_str(headers, header::ETAG).map(str::to_owned),
        last_modified: header_str(headers, header::LAST_MODIFIED).map(str::to_owned),
    }
}
