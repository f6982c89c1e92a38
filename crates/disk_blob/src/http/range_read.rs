//! One range read: how it is pinned to the version seen at open, split
//! into aligned pieces, retried, and checked (status, `Content-Range`,
//! length, validators) before its body is streamed into the caller's
//! buffer.

use super::Inner;
use super::headers::header_str;
use super::transport::Failure;
use super::transport::status_failure;
use crate::BlobError;
use crate::BlobValidators;
use http::HeaderMap;
use http::HeaderValue;
use http::Method;
use http::StatusCode;
use http::header;
use http_body_util::BodyExt;
use http_ranges::ContentRange;
use http_ranges::content_range::unsatisfied_total;
use std::sync::atomic::Ordering;
use url_redact::redact_url;

/// Largest single request of a background read.
const MAX_BACKGROUND_REQUEST: usize = 8 << 20;

/// How reads are pinned to the version seen at open.
#[derive(Debug, Clone)]
pub(super) enum Precondition {
    /// `If-Match: <strong etag>`.
    IfMatch(HeaderValue),
    /// `If-Range: <last-modified>`.
    IfRange(HeaderValue),
    /// Nothing to send; responses are still verified.
    None,
}

impl Inner {
    /// Reads `buf` at `offset` with range requests of at most one aligned
    /// piece each, in parallel.
    pub(super) async fn read_pieces(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
        let piece = self.piece;
        if buf.len() as u64 <= piece && offset / piece == (offset + buf.len() as u64 - 1) / piece {
            return self.read_range(buf, offset).await;
        }
        let mut pieces = Vec::new();
        let mut rest = buf;
        let mut off = offset;
        while !rest.is_empty() {
            let to_boundary = piece - off % piece;
            let n = (rest.len() as u64).min(to_boundary) as usize;
            let (head, tail) = rest.split_at_mut(n);
            pieces.push(self.read_range(head, off));
            rest = tail;
            off += n as u64;
        }
        futures::future::try_join_all(pieces).await?;
        Ok(())
    }

    /// A background read (a prefetch, see `disk_backend::io_hints`): one
    /// range request for up to [`MAX_BACKGROUND_REQUEST`] bytes, so a run
    /// of adjacent chunks costs one round trip, not one per piece.
    pub(super) async fn read_background(
        &self,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), BlobError> {
        let mut rest = buf;
        let mut off = offset;
        while !rest.is_empty() {
            let n = rest.len().min(MAX_BACKGROUND_REQUEST);
            let (head, tail) = rest.split_at_mut(n);
            self.read_range(head, off).await?;
            rest = tail;
            off += n as u64;
        }
        Ok(())
    }

    /// Reads one range with retries.
    pub(super) async fn read_range(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
        let mut attempt = 0;
        loop {
            let r = {
                let _permit = self.t.permits.acquire().await;
                self.attempt_range(buf, offset).await
            };
            match r {
                Ok(()) => return Ok(()),
                Err(f) => self.t.backoff(f, &mut attempt).await?,
            }
        }
    }

    async fn attempt_range(&self, buf: &mut [u8], offset: u64) -> Result<(), Failure> {
        let t = &self.t;
        let len = buf.len() as u64;
        let end = offset + len - 1;
        let (resp, uri) = t
            .send(
                Method::GET,
                &self.read_uri,
                Some((offset, end)),
                &self.precondition,
            )
            .await?;
        let url = redact_url(&uri.to_string());
        let status = resp.status();
        let headers = resp.headers();
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                if let Some(reason) = self.changed_validators(headers) {
                    return Err(Failure::fatal(BlobError::ImageChanged { url, reason }));
                }
                return Err(Failure::fatal(BlobError::Unexpected200 {
                    url,
                    start: offset,
                    end,
                }));
            }
            StatusCode::PRECONDITION_FAILED => {
                return Err(Failure::fatal(BlobError::ImageChanged {
                    url,
                    reason: "the server answered 412 Precondition Failed to If-Match with the ETag seen at open".into(),
                }));
            }
            StatusCode::RANGE_NOT_SATISFIABLE
                if header_str(headers, header::CONTENT_RANGE)
                    .and_then(unsatisfied_total)
                    .is_some_and(|total| total != self.len) =>
            {
                let total = header_str(headers, header::CONTENT_RANGE)
                    .and_then(unsatisfied_total)
                    .unwrap_or_default();
                return Err(Failure::fatal(BlobError::ImageChanged {
                    url,
                    reason: format!(
                        "the server answered 416: its length is now {total} bytes, it was {} at open",
                        self.len
                    ),
                }));
            }
            s => return Err(status_failure(s, headers, url, "GET")),
        }
        if let Some(reason) = self.changed_validators(headers) {
            return Err(Failure::fatal(BlobError::ImageChanged { url, reason }));
        }
        let expected_range = format!("bytes {offset}-{end}/{}", self.len);
        let cr = headers.get(header::CONTENT_RANGE);
        match cr
            .and_then(|v| v.to_str().ok())
            .and_then(ContentRange::parse)
        {
            Some(ContentRange {
                start,
                end: e,
                total,
            }) if start == offset && e == end => {
                if let Some(total) = total
                    && total != self.len
                {
                    return Err(Failure::fatal(BlobError::ImageChanged {
                        url,
                        reason: format!(
                            "its length is now {total} bytes, it was {} at open",
                            self.len
                        ),
                    }));
                }
            }
            _ => {
                return Err(Failure::fatal(BlobError::ContentRangeMismatch {
                    url,
                    expected: expected_range,
                    got: cr.map_or_else(
                        || "<missing>".to_string(),
                        |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    ),
                }));
            }
        }
        if let Some(cl) = headers.get(header::CONTENT_LENGTH) {
            let cl = cl
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| BlobError::BadHeader {
                    url: url.clone(),
                    method: "GET",
                    reason: "unparsable Content-Length".into(),
                })?;
            if cl < len {
                return Err(Failure::fatal(BlobError::ShortBody {
                    url,
                    offset,
                    expected: len,
                    got: cl,
                }));
            }
            if cl > len {
                return Err(Failure::fatal(BlobError::LongBody {
                    url,
                    offset,
                    expected: len,
                }));
            }
        }
        let mut body = resp.into_body();
        let mut pos = 0usize;
        loop {
            let frame = match tokio::time::timeout(t.opts.request_timeout, body.frame()).await {
                Err(_) => {
                    return Err(Failure::transient(BlobError::Timeout {
                        url,
                        method: "GET",
                        after: t.opts.request_timeout,
                    }));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(Failure::transient(BlobError::Transport {
                        url,
                        method: "GET",
                        source: Box::new(e),
                    }));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                t.counters
                    .bytes_fetched
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let Some(dst) = buf.get_mut(pos..pos + data.len()) else {
                    return Err(Failure::fatal(BlobError::LongBody {
                        url,
                        offset,
                        expected: len,
                    }));
                };
                dst.copy_from_slice(&data);
                pos += data.len();
            }
        }
        if pos < buf.len() {
            return Err(Failure::fatal(BlobError::ShortBody {
                url,
                offset,
                expected: len,
                got: pos as u64,
            }));
        }
        Ok(())
    }

    fn changed_validators(&self, headers: &HeaderMap) -> Option<String> {
        changed_validators(&self.validators, headers)
    }
}

/// How reads are pinned, given the validators seen at open (see
/// [`HttpBlob`](super::HttpBlob) for why a weak ETag is not sent).
pub(super) fn precondition_for(v: &BlobValidators) -> Precondition {
    if v.has_strong_etag()
        && let Some(Ok(etag)) = v.etag.as_deref().map(HeaderValue::from_str)
    {
        return Precondition::IfMatch(etag);
    }
    if let Some(Ok(lm)) = v.last_modified.as_deref().map(HeaderValue::from_str) {
        return Precondition::IfRange(lm);
    }
    Precondition::None
}

/// Returns why a response's validators show a different version than the
/// one seen at open, if they do. Validators missing on either side are not
/// evidence of a change.
fn changed_validators(pinned: &BlobValidators, headers: &HeaderMap) -> Option<String> {
    if let (Some(pinned), Some(now)) = (&pinned.etag, header_str(headers, header::ETAG))
        && !http_ranges::etag::same_version(pinned, now)
    {
        return Some(format!("its ETag is now {now}, it was {pinned} at open"));
    }
    if let (Some(pinned), Some(now)) = (
        &pinned.last_modified,
        header_str(headers, header::LAST_MODIFIED),
    ) && pinned != now
    {
        return Some(format!(
            "its Last-Modified is now {now}, it was {pinned} at open"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precondition_choice() {
        let v = |etag: Option<&str>, lm: Option<&str>| BlobValidators {
            etag: etag.map(Into::into),
            last_modified: lm.map(Into::into),
        };
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert!(matches!(
            precondition_for(&v(Some("\"a\""), Some(lm))),
            Precondition::IfMatch(h) if h == "\"a\""
        ));
        // A weak ETag never satisfies If-Match: fall back to If-Range.
        assert!(matches!(
            precondition_for(&v(Some("W/\"a\""), Some(lm))),
            Precondition::IfRange(h) if h == lm
        ));
        assert!(matches!(
            precondition_for(&v(Some("W/\"a\""), None)),
            Precondition::None
        ));
        assert!(matches!(
            precondition_for(&v(None, None)),
            Precondition::None
        ));
    }

    #[test]
    fn changed_validator_detection() {
        let pinned = BlobValidators {
            etag: Some("W/\"a\"".into()),
            last_modified: Some("Mon, 01 Jan 2024 00:00:00 GMT".into()),
        };
        let mut h = HeaderMap::new();
        assert_eq!(changed_validators(&pinned, &h), None);
        h.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
        );
        assert_eq!(changed_validators(&pinned, &h), None);
        h.insert(header::ETAG, HeaderValue::from_static("W/\"b\""));
        assert!(changed_validators(&pinned, &h).unwrap().contains("ETag"));
        h.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        h.insert(
            header::LAST_MODIFIED,
            HeaderValue::from_static("Tue, 02 Jan 2024 00:00:00 GMT"),
        );
        assert!(
            changed_validators(&pinned, &h)
                .unwrap()
                .contains("Last-Modified")
        );
    }
}
