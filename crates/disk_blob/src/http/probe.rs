//! The probe at open: learns a blob's length and validators with `HEAD`,
//! or with a one-byte ranged `GET` when `HEAD` is refused or gives no
//! length.

use super::headers::header_str;
use super::headers::validators_of;
use super::range_read::Precondition;
use super::transport::Failure;
use super::transport::Transport;
use super::transport::status_failure;
use crate::BlobError;
use crate::BlobValidators;
use http::Method;
use http::StatusCode;
use http::Uri;
use http::header;
use http_body_util::BodyExt;
use http_ranges::ContentRange;
use http_ranges::content_range::unsatisfied_total;
use std::sync::atomic::Ordering;
use url_redact::redact_url;

/// What the probe learnt.
pub(super) struct Probe {
    pub(super) len: u64,
    pub(super) validators: BlobValidators,
    /// Where the probe's redirects ended: reads go there.
    pub(super) uri: Uri,
}

impl Transport {
    /// Learns length and validators: HEAD, or a one-byte ranged GET.
    pub(super) async fn probe(&self, uri: &Uri) -> Result<Probe, BlobError> {
        let mut attempt = 0;
        loop {
            let r = {
                let _permit = self.permits.acquire().await;
                self.attempt_probe(uri).await
            };
            match r {
                Ok(p) => return Ok(p),
                Err(f) => self.backoff(f, &mut attempt).await?,
            }
        }
    }

    async fn attempt_probe(&self, uri: &Uri) -> Result<Probe, Failure> {
        let (resp, final_uri) = self
            .send(Method::HEAD, uri, None, &Precondition::None)
            .await?;
        let status = resp.status();
        let headers = resp.headers();
        if status == StatusCode::OK {
            let len = header_str(headers, header::CONTENT_LENGTH)
                .and_then(|s| s.trim().parse::<u64>().ok());
            let advertised = header_str(headers, header::ACCEPT_RANGES)
                .is_some_and(http_ranges::range::accepts_byte_ranges);
            match len {
                Some(len) if advertised || len == 0 => {
                    return Ok(Probe {
                        len,
                        validators: validators_of(headers),
                        uri: final_uri,
                    });
                }
                // A server that does not say it serves ranges is asked for
                // one now: one that ignores them is refused at open with
                // the error its first read would give, instead of opening
                // and failing every read.
                Some(_) => tracing::debug!(
                    url = %self.url,
                    "HEAD does not advertise Accept-Ranges: bytes, probing with a ranged GET"
                ),
                None => {
                    tracing::debug!(url = %self.url, "HEAD gave no length, trying a ranged GET")
                }
            }
        } else if matches!(status.as_u16(), 400 | 403 | 405 | 501) {
            tracing::debug!(url = %self.url, %status, "HEAD refused, trying a ranged GET");
        } else {
            return Err(status_failure(
                status,
                headers,
                redact_url(&final_uri.to_string()),
                "HEAD",
            ));
        }
        drop(resp);
        self.attempt_probe_get(uri).await
    }

    async fn attempt_probe_get(&self, uri: &Uri) -> Result<Probe, Failure> {
        let (resp, final_uri) = self
            .send(Method::GET, uri, Some((0, 0)), &Precondition::None)
            .await?;
        let url = redact_url(&final_uri.to_string());
        let status = resp.status();
        let headers = resp.headers();
        let len = match status {
            StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
                let cr = header_str(headers, header::CONTENT_RANGE);
                let total = cr.and_then(unsatisfied_total);
                match (status, cr.and_then(ContentRange::parse), total) {
                    (StatusCode::PARTIAL_CONTENT, Some(r), Some(total))
                        if r.start == 0 && r.end == 0 =>
                    {
                        total
                    }
                    (StatusCode::RANGE_NOT_SATISFIABLE, _, Some(0)) => 0,
                    _ => {
                        return Err(Failure::fatal(BlobError::ContentRangeMismatch {
                            url,
                            expected: "bytes 0-0/<length>".into(),
                            got: cr.unwrap_or("<missing>").to_string(),
                        }));
                    }
                }
            }
            StatusCode::OK => {
                return Err(Failure::fatal(BlobError::Unexpected200 {
                    url,
                    start: 0,
                    end: 0,
                }));
            }
            s => return Err(status_failure(s, headers, url, "GET")),
        };
        let validators = validators_of(headers);
        // Read the (at most one byte) body so the connection can be reused.
        let mut body = resp.into_body();
        let mut got = 0u64;
        // The length is known; a broken or slow one-byte body does not
        // matter, so any end of the loop is fine.
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout(self.opts.request_timeout, body.frame()).await
        {
            if let Ok(d) = frame.into_data() {
                got += d.len() as u64;
                self.counters
                    .bytes_fetched
                    .fetch_add(d.len() as u64, Ordering::Relaxed);
                if got > 1 {
                    return Err(Failure::fatal(BlobError::LongBody {
                        url,
                        offset: 0,
                        expected: 1,
                    }));
                }
            }
        }
        Ok(Probe {
            len,
            validators,
            uri: final_uri,
        })
    }
}
