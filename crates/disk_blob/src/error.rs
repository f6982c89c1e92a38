//! The blob error type.
//!
//! Every `url` field holds a URL that already went through
//! [`url_redact::redact_url`]: no query string, no userinfo. Sources carried
//! in `#[source]` never contain a URL (they come from the TCP, TLS and HTTP
//! layers, which do not print request URIs).

use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What [`BlobError::AccessRefused`] says about the cause and the remedy.
/// Front ends that know where the URL came from (a command-line option, an
/// environment variable) add that.
pub const ACCESS_REFUSED_ADVICE: &str = "the store refused the URL's credentials: \
    the SAS token or signature in its query has expired, was revoked, lacks read permission, \
    or was cut short (quote the whole URL for the shell); \
    get a fresh one and pass the whole URL, query included";

/// Why a blob operation failed. Each failure class is its own variant so
/// callers (and tests) can tell them apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The URL could not be used (not http/https, unparsable, has userinfo).
    #[error("invalid blob URL {url}: {reason}")]
    InvalidUrl {
        /// The redacted URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused the credentials the URL carries (`401` or
    /// `403`): with a store such as Azure blob storage, the SAS token or
    /// signature in its query expired, was revoked, or lacks read
    /// permission. The message says so and what to do
    /// ([`ACCESS_REFUSED_ADVICE`]).
    #[error("{method} {url} was refused (HTTP {status}): {ACCESS_REFUSED_ADVICE}")]
    AccessRefused {
        /// The redacted URL.
        url: String,
        /// The request method (`HEAD` or `GET`).
        method: &'static str,
        /// The status code (401 or 403).
        status: u16,
    },
    /// The server answered with a status this client does not accept
    /// (other than the refused credentials of
    /// [`BlobError::AccessRefused`]).
    #[error("{method} {url} failed: HTTP status {status}")]
    HttpStatus {
        /// The redacted URL.
        url: String,
        /// The request method (`HEAD` or `GET`).
        method: &'static str,
        /// The status code.
        status: u16,
    },
    /// A range GET was answered with `200 OK` and the whole blob: the
    /// server ignores `Range`, which a lazily fetched disk cannot use.
    #[error(
        "GET {url} with Range bytes={start}-{end} was answered 200 instead of 206: the server ignores range requests"
    )]
    Unexpected200 {
        /// The redacted URL.
        url: String,
        /// First byte asked for.
        start: u64,
        /// Last byte asked for (inclusive).
        end: u64,
    },
    /// The body ended (cleanly) before all requested bytes arrived.
    #[error("GET {url} at offset {offset}: body too short, got {got} of {expected} bytes")]
    ShortBody {
        /// The redacted URL.
        url: String,
        /// Offset of the range in the blob.
        offset: u64,
        /// Bytes asked for.
        expected: u64,
        /// Bytes received (or announced by `Content-Length`).
        got: u64,
    },
    /// The body carried (or announced) more bytes than requested.
    #[error(
        "GET {url} at offset {offset}: body too long, more than the {expected} bytes asked for"
    )]
    LongBody {
        /// The redacted URL.
        url: String,
        /// Offset of the range in the blob.
        offset: u64,
        /// Bytes asked for.
        expected: u64,
    },
    /// A 206 response's `Content-Range` did not describe the requested
    /// range.
    #[error("GET {url}: Content-Range mismatch, asked for {expected}, got {got}")]
    ContentRangeMismatch {
        /// The redacted URL.
        url: String,
        /// What was asked for, as `bytes a-b/len`.
        expected: String,
        /// The header as received (or `<missing>`).
        got: String,
    },
    /// The blob is not the version seen at open (412 Precondition Failed,
    /// an ETag, Last-Modified or total length that changed).
    #[error("the image at {url} changed since it was opened: {reason}")]
    ImageChanged {
        /// The redacted URL.
        url: String,
        /// What showed the change.
        reason: String,
    },
    /// More redirects than allowed (this includes redirect loops).
    #[error("too many redirects (more than {max}) starting from {url}; a redirect loop?")]
    TooManyRedirects {
        /// The redacted URL where the chain started.
        url: String,
        /// The limit.
        max: u32,
    },
    /// A redirect from https to http, which would drop transport security.
    #[error("refusing redirect from {from} to the insecure {to}")]
    HttpsToHttpRedirect {
        /// The redacted https URL.
        from: String,
        /// The redacted http URL it pointed to.
        to: String,
    },
    /// A redirect without a usable `Location`.
    #[error("bad redirect from {url}: {reason}")]
    BadRedirect {
        /// The redacted URL that answered with the redirect.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// A required response header was missing or malformed.
    #[error("{method} {url}: bad response header: {reason}")]
    BadHeader {
        /// The redacted URL.
        url: String,
        /// The request method.
        method: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The TLS handshake failed (for example an untrusted certificate).
    #[error("TLS with {url} failed")]
    Tls {
        /// The redacted URL.
        url: String,
        /// The TLS error.
        #[source]
        source: BoxError,
    },
    /// A request did not complete in time.
    #[error("{method} {url} timed out after {after:?}")]
    Timeout {
        /// The redacted URL.
        url: String,
        /// The request method.
        method: &'static str,
        /// The timeout that expired.
        after: Duration,
    },
    /// The connection could not be established.
    #[error("cannot connect to {url}")]
    Connect {
        /// The redacted URL.
        url: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The connection failed while a request or its body was in flight
    /// (reset, closed early, protocol error).
    #[error("{method} {url}: transfer failed")]
    Transport {
        /// The redacted URL.
        url: String,
        /// The request method.
        method: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// The TLS configuration could not be built (a bad custom root
    /// certificate, for example).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// A read ended past the end of the blob.
    #[error(
        "read of {len} bytes at offset {offset} is out of range: the blob has {blob_len} bytes"
    )]
    OutOfRange {
        /// Offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// Length of the blob.
        blob_len: u64,
    },
    /// The data source ended before the read was complete (a local file
    /// that shrank after open).
    #[error("{what}: unexpected end of data reading {len} bytes at offset {offset}")]
    UnexpectedEof {
        /// The blob.
        what: String,
        /// Offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
    },
    /// A local I/O operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl BlobError {
    /// Whether this error says the blob changed since it was opened.
    pub fn is_image_changed(&self) -> bool {
        matches!(self, BlobError::ImageChanged { .. })
    }

    /// Whether this error says the server refused the URL's credentials.
    pub fn is_access_refused(&self) -> bool {
        matches!(self, BlobError::AccessRefused { .. })
    }
}
