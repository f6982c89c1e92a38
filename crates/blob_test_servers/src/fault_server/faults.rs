//! What can go wrong: the faults a test injects, how often, for which
//! requests, and the record of each request the server answered.

use std::time::Duration;

use bytes::Bytes;
use http::Method;

/// A fault to inject into responses. See [`FaultServer::set_fault`](crate::FaultServer::set_fault).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status code and an empty body, optionally with a
    /// `Retry-After` header (seconds or an HTTP date, sent verbatim).
    Status {
        /// The status code (e.g. 500, 503, 429).
        status: u16,
        /// The `Retry-After` value, if any.
        retry_after: Option<String>,
    },
    /// Send the headers (with the full `Content-Length`) and `after` body
    /// bytes (half the body if `None`), then abort the connection (HTTP/2:
    /// reset the stream).
    ResetMidBody {
        /// Body bytes sent before the reset; `None` means half.
        after: Option<u64>,
    },
    /// Close the connection without sending any response.
    DropConnection,
    /// Answer 200 with the whole blob even if a `Range` was asked, and do
    /// not send `Accept-Ranges: bytes` (also on `HEAD`): a server that does
    /// not support ranges.
    IgnoreRange,
    /// Send `by` fewer body bytes than the range asked for. `Content-Length`
    /// matches the (short) body; `Content-Range` still claims the range that
    /// was asked for.
    ShortBody {
        /// How many bytes to leave out at the end.
        by: u64,
    },
    /// Send `by` more body bytes than the range asked for (the blob's
    /// following bytes, then zeros past its end). `Content-Length` matches
    /// the (long) body; `Content-Range` still claims the range asked for.
    LongBody {
        /// How many bytes to add at the end.
        by: u64,
    },
    /// Answer 206 for a range of the same length moved by `shift` bytes
    /// (clamped to the blob), with a `Content-Range` and body that match
    /// each other but not the request.
    WrongContentRange {
        /// Byte shift of the served range.
        shift: i64,
    },
    /// Replace the blob at the request's path with these bytes (new ETag and
    /// Last-Modified), then serve the request normally.
    ReplaceContent(Bytes),
    /// Wait this long before answering, then answer normally.
    Delay(Duration),
    /// Send `after` body bytes (half if `None`), pause for `duration`, then
    /// send the rest.
    StallBody {
        /// Body bytes sent before the pause; `None` means half.
        after: Option<u64>,
        /// How long to pause.
        duration: Duration,
    },
    /// Redirect to `location` (sent verbatim: a path or an absolute URL,
    /// e.g. `http://...` from an HTTPS server) with the given 3xx status.
    Redirect {
        /// The `Location` header value.
        location: String,
        /// The status code (301, 302, 303, 307 or 308).
        status: u16,
    },
    /// Answer HEAD requests with 405 Method Not Allowed. Only HEAD requests
    /// match a rule holding this fault (GETs neither fire nor consume it).
    RefuseHead,
}

impl Fault {
    /// 500 Internal Server Error.
    pub fn internal_error() -> Self {
        Fault::Status {
            status: 500,
            retry_after: None,
        }
    }

    /// 503 Service Unavailable with `Retry-After: <secs>`.
    pub fn unavailable(retry_after_secs: u64) -> Self {
        Fault::Status {
            status: 503,
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// 429 Too Many Requests with `Retry-After: <secs>`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Fault::Status {
            status: 429,
            retry_after: Some(retry_after_secs.to_string()),
        }
    }

    /// A 302 redirect to `location`.
    pub fn redirect(location: impl Into<String>) -> Self {
        Fault::Redirect {
            location: location.into(),
            status: 302,
        }
    }

    /// A short name of the fault, as recorded in [`RequestRecord::fault`].
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Status { .. } => "status",
            Fault::ResetMidBody { .. } => "reset_mid_body",
            Fault::DropConnection => "drop_connection",
            Fault::IgnoreRange => "ignore_range",
            Fault::ShortBody { .. } => "short_body",
            Fault::LongBody { .. } => "long_body",
            Fault::WrongContentRange { .. } => "wrong_content_range",
            Fault::ReplaceContent(_) => "replace_content",
            Fault::Delay(_) => "delay",
            Fault::StallBody { .. } => "stall_body",
            Fault::Redirect { .. } => "redirect",
            Fault::RefuseHead => "refuse_head",
        }
    }
}

/// How many matching requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next `n` matching requests.
    Next(u32),
    /// Every matching request until the rule is cleared.
    Always,
}

/// A fault plus the requests it applies to. Rules are checked in the order
/// they were added; the first rule that matches a request and is not used
/// up fires (at most one fault per request).
#[derive(Debug, Clone)]
pub struct FaultRule {
    pub(super) fault: Fault,
    pub(super) remaining: Option<u32>,
    pub(super) skip: u32,
    path: Option<String>,
    method: Option<Method>,
}

impl FaultRule {
    /// A rule applying `fault` to the next matching requests.
    pub fn new(fault: Fault, times: Times) -> Self {
        Self {
            fault,
            remaining: match times {
                Times::Next(n) => Some(n),
                Times::Always => None,
            },
            skip: 0,
            path: None,
            method: None,
        }
    }

    /// Let the first `n` matching requests through untouched before the
    /// fault starts firing (e.g. fail the third request of a read).
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// Only match requests for this path (without query).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Only match requests with this method.
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    pub(super) fn matches(&self, method: &Method, path: &str) -> bool {
        if self.remaining == Some(0) {
            return false;
        }
        if matches!(self.fault, Fault::RefuseHead) && method != Method::HEAD {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        if self.path.as_deref().is_some_and(|p| p != path) {
            return false;
        }
        true
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// Sequence number (0-based, in order of arrival).
    pub seq: u64,
    /// The method (`GET`, `HEAD`, ...).
    pub method: String,
    /// The request path including the query string, e.g. `/disk.vhd?sig=x`.
    pub path_and_query: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// All request headers (lowercase names), in order.
    pub headers: Vec<(String, String)>,
    /// The injected fault that fired for this request, if any
    /// ([`Fault::name`]).
    pub fault: Option<&'static str>,
    /// The status sent, or `None` if the connection was dropped without a
    /// response.
    pub status: Option<u16>,
    /// The connection the request came on: its number in order of accept,
    /// 0-based (not reset by [`FaultServer::reset_stats`](crate::FaultServer::reset_stats)).
    pub connection: u64,
    /// The per-request latency this request waited
    /// ([`FaultServer::set_latency`](crate::FaultServer::set_latency); zero if none).
    pub latency: Duration,
}

impl RequestRecord {
    /// The first value of a request header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }
}
