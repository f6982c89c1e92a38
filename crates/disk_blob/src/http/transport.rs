//! The client side shared by the probe at open and by reads: sending one
//! request through redirects, classifying failures as transient or fatal,
//! and backing off before a retry.

use super::HttpBlobOptions;
use super::HttpClient;
use super::headers::header_str;
use super::range_read::Precondition;
use super::urls::resolve_location;
use crate::BlobCounters;
use crate::BlobError;
use http::HeaderMap;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Uri;
use http::header;
use http_body_util::Empty;
use hyper::body::Incoming;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use url_redact::redact_url;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) requests: AtomicU64,
    pub(super) bytes_fetched: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Counters {
    pub(super) fn snapshot(&self) -> BlobCounters {
        BlobCounters {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_fetched: self.bytes_fetched.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// One failed attempt, and whether it is worth another.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) error: BlobError,
    pub(super) retry: bool,
    pub(super) retry_after: Option<Duration>,
}

impl Failure {
    pub(super) fn fatal(error: BlobError) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
    pub(super) fn transient(error: BlobError) -> Self {
        Failure {
            error,
            retry: true,
            retry_after: None,
        }
    }
}

impl From<BlobError> for Failure {
    fn from(e: BlobError) -> Self {
        Failure::fatal(e)
    }
}

/// The client side shared by open and reads.
pub(super) struct Transport {
    pub(super) client: HttpClient,
    pub(super) opts: HttpBlobOptions,
    pub(super) permits: tokio::sync::Semaphore,
    pub(super) counters: Counters,
    /// The URL given to `open`, redacted.
    pub(super) url: String,
}

impl Transport {
    /// Sends one request, following redirects. Returns the final response
    /// and the URI that gave it.
    pub(super) async fn send(
        &self,
        method: Method,
        start: &Uri,
        range: Option<(u64, u64)>,
        precondition: &Precondition,
    ) -> Result<(Response<Incoming>, Uri), Failure> {
        let mut uri = start.clone();
        let mut hops = 0;
        loop {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(uri.clone())
                .header(header::USER_AGENT, self.opts.user_agent.as_str());
            if let Some((a, b)) = range {
                req = req.header(header::RANGE, format!("bytes={a}-{b}"));
            }
            match precondition {
                Precondition::IfMatch(v) => req = req.header(header::IF_MATCH, v.clone()),
                Precondition::IfRange(v) => req = req.header(header::IF_RANGE, v.clone()),
                Precondition::None => {}
            }
            let url = redact_url(&uri.to_string());
            let method_name = method_name(&method);
            let req = req.body(Empty::new()).map_err(|e| BlobError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let resp =
                match tokio::time::timeout(self.opts.request_timeout, self.client.request(req))
                    .await
                {
                    Err(_) => {
                        return Err(Failure::transient(BlobError::Timeout {
                            url,
                            method: method_name,
                            after: self.opts.request_timeout,
                        }));
                    }
                    Ok(Err(e)) => return Err(classify_client_error(e, url, method_name)),
                    Ok(Ok(resp)) => resp,
                };
            if !is_redirect(resp.status()) {
                return Ok((resp, uri));
            }
            if hops >= self.opts.max_redirects {
                return Err(Failure::fatal(BlobError::TooManyRedirects {
                    url: self.url.clone(),
                    max: self.opts.max_redirects,
                }));
            }
            hops += 1;
            let loc = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| BlobError::BadRedirect {
                    url: url.clone(),
                    reason: format!("status {} without a usable Location", resp.status()),
                })?;
            let next = resolve_location(&uri, loc).map_err(|reason| BlobError::BadRedirect {
                url: url.clone(),
                reason,
            })?;
            if uri.scheme() == Some(&http::uri::Scheme::HTTPS)
                && next.scheme() != Some(&http::uri::Scheme::HTTPS)
            {
                return Err(Failure::fatal(BlobError::HttpsToHttpRedirect {
                    from: url,
                    to: redact_url(&next.to_string()),
                }));
            }
            tracing::debug!(from = %url, to = %redact_url(&next.to_string()), "following redirect");
            uri = next;
        }
    }

    /// Handles a failed attempt: returns after the backoff delay if it is
    /// worth another try, or the error if not.
    pub(super) async fn backoff(&self, f: Failure, attempt: &mut u32) -> Result<(), BlobError> {
        if !f.retry || *attempt >= self.opts.max_retries {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %f.error, attempts = *attempt + 1, "blob request failed");
            return Err(f.error);
        }
        let delay = match f.retry_after {
            Some(d) => d.min(self.opts.max_retry_after),
            None => {
                let exp = self
                    .opts
                    .initial_backoff
                    .saturating_mul(1u32 << (*attempt).min(20));
                let base = exp.min(self.opts.max_backoff);
                // Jitter: a uniform delay in [base/2, base].
                let half = base / 2;
                let jitter_ns =
                    rand::random_range(0..=half.as_nanos().min(u64::MAX as u128) as u64);
                half + Duration::from_nanos(jitter_ns)
            }
        };
        *attempt += 1;
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(error = %f.error, attempt = *attempt, ?delay, "retrying blob request");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

fn method_name(m: &Method) -> &'static str {
    if *m == Method::HEAD { "HEAD" } else { "GET" }
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// A failure for an unexpected status: transient for 408, 429 and 5xx;
/// 401 and 403 are refused credentials (see [`BlobError::AccessRefused`]).
pub(super) fn status_failure(
    status: StatusCode,
    headers: &HeaderMap,
    url: String,
    method: &'static str,
) -> Failure {
    let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
    let status = status.as_u16();
    Failure {
        error: if matches!(status, 401 | 403) {
            BlobError::AccessRefused {
                url,
                method,
                status,
            }
        } else {
            BlobError::HttpStatus {
                url,
                method,
                status,
            }
        },
        retry,
        retry_after: if retry {
            header_str(headers, header::RETRY_AFTER).and_then(parse_retry_after)
        } else {
            None
        },
    }
}

/// Parses `Retry-After`: delay-seconds, or an HTTP date (the delay is the
/// time until then, zero if it is past).
fn parse_retry_after(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_ranges::date::parse(s)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Classifies a client error: TLS (fatal), connect (transient) or a broken
/// transfer (transient).
pub(super) fn classify_client_error(
    e: hyper_util::client::legacy::Error,
    url: String,
    method: &'static str,
) -> Failure {
    if is_tls_error(&e) {
        return Failure::fatal(BlobError::Tls {
            url,
            source: Box::new(e),
        });
    }
    if e.is_connect() {
        Failure::transient(BlobError::Connect {
            url,
            source: Box::new(e),
        })
    } else {
        Failure::transient(BlobError::Transport {
            url,
            method,
            source: Box::new(e),
        })
    }
}

/// Whether a rustls error is anywhere in the chain (also inside
/// `io::Error`s, whose `source()` skips the wrapped error).
fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && is_tls_error(inner)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        // The obsolete date forms count too.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        let future = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let d = parse_retry_after(&http_ranges::date::format(future)).unwrap();
        assert!(d > Duration::from_secs(3000) && d <= Duration::from_secs(3600));
    }
}
