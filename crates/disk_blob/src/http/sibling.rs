//! Small files that sit beside an image in the store (its prefetch list,
//! `<image>.prefetch`): one GET each, with the image's query string (a SAS
//! token grants the same container), through the image's client.

use super::HttpBlob;
use super::range_read::Precondition;
use super::transport::status_failure;
use crate::BlobError;
use http::Method;
use http::StatusCode;
use http::Uri;
use http_body_util::BodyExt;
use std::sync::atomic::Ordering;
use url_redact::redact_url;

impl HttpBlob {
    /// Fetches the file whose URL is the image's with `suffix` appended to
    /// its path (the query kept): `Ok(None)` if the store has none (404 or
    /// 410), an error if it answers otherwise, is unreachable, or sends
    /// more than `max_len` bytes. One GET, no retries: the file is an
    /// optimisation, and an error is only logged by the caller.
    pub async fn fetch_sibling(
        &self,
        suffix: &str,
        max_len: usize,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        let t = &self.inner.t;
        let uri = sibling_uri(&self.inner.open_uri, suffix)?;
        let url = redact_url(&uri.to_string());
        let _permit = t.permits.acquire().await;
        let (resp, _) = t
            .send(Method::GET, &uri, None, &Precondition::None)
            .await
            .map_err(|f| f.error)?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(None),
            s => return Err(status_failure(s, resp.headers(), url, "GET").error),
        }
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BlobError::Transport {
                url: url.clone(),
                method: "GET",
                source: Box::new(e),
            })?;
            if let Ok(data) = frame.into_data() {
                t.counters
                    .bytes_fetched
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                if out.len() + data.len() > max_len {
                    return Err(BlobError::Transport {
                        url,
                        method: "GET",
                        source: format!("the file is larger than {max_len} bytes").into(),
                    });
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(Some(out))
    }
}

/// `base` with `suffix` appended to its path, its query kept.
fn sibling_uri(base: &Uri, suffix: &str) -> Result<Uri, BlobError> {
    let path = base.path();
    let pq = match base.query() {
        Some(q) => format!("{path}{suffix}?{q}"),
        None => format!("{path}{suffix}"),
    };
    let mut parts = base.clone().into_parts();
    parts.path_and_query =
        Some(
            pq.parse()
                .map_err(|e: http::uri::InvalidUri| BlobError::InvalidUrl {
                    url: redact_url(&base.to_string()),
                    reason: e.to_string(),
                })?,
        );
    Uri::from_parts(parts).map_err(|e| BlobError::InvalidUrl {
        url: redact_url(&base.to_string()),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suffix_goes_before_the_query() {
        let base: Uri = "https://acct.blob.core.windows.net/vhds/img.vhd?sv=1&sig=abc"
            .parse()
            .unwrap();
        assert_eq!(
            sibling_uri(&base, ".prefetch").unwrap().to_string(),
            "https://acct.blob.core.windows.net/vhds/img.vhd.prefetch?sv=1&sig=abc"
        );
        let base: Uri = "http://127.0.0.1:8080/a/b.raw".parse().unwrap();
        assert_eq!(
            sibling_uri(&base, ".prefetch").unwrap().to_string(),
            "http://127.0.0.1:8080/a/b.raw.prefetch"
        );
    }
}
