//! [`HttpBlob`]: a blob behind an HTTP(S) URL, read with `Range` GETs.
//!
//! The blob and its open live here; the rest is split by concern:
//! - `options`: [`HttpBlobOptions`] and the hyper client and rustls
//!   configuration they build;
//! - `transport`: sending one request through redirects, counters, and
//!   which failures are retried after which backoff;
//! - `probe`: learning length and validators at open;
//! - `range_read`: one pinned, checked range read and its retries;
//! - `readahead` and `piece_pool`: fetching ahead of sequential readers
//!   into recycled buffers;
//! - `headers` and `urls`: parsing of response headers, blob URLs and
//!   redirect locations.

mod headers;
mod options;
mod piece_pool;
mod probe;
mod range_read;
mod readahead;
mod sibling;
mod transport;
mod urls;

pub use options::HttpBlobOptions;

use crate::Blob;
use crate::BlobCounters;
use crate::BlobError;
use crate::BlobReadFuture;
use crate::BlobValidators;
use http::Uri;
use options::HttpClient;
use options::build_client;
use range_read::Precondition;
use range_read::precondition_for;
use readahead::Readahead;
use std::sync::Arc;
use transport::Counters;
use transport::Transport;
use url_redact::redact_url;
use urls::parse_url;

/// A blob behind an HTTP(S) URL, read with `Range` GETs.
///
/// Wire rules:
/// - Open: `HEAD` gives the length (`Content-Length`) and the validators
///   (`ETag`, `Last-Modified`). If `HEAD` is refused (400, 403, 405, 501),
///   gives no length, or does not advertise `Accept-Ranges: bytes` (for a
///   non-empty blob), a `GET` with `Range: bytes=0-0` is sent instead and
///   the length and validators are taken from its `206` (the length from
///   the total in its `Content-Range`). A server that answers that probe
///   with `200` ignores ranges and is refused at open with
///   [`BlobError::Unexpected200`], the error its first read would give.
///   (DEVNOTE: a server that advertises byte ranges and then ignores them
///   is found only at the first read.)
/// - Redirects (301, 302, 303, 307, 308, absolute or relative `Location`)
///   are followed, at most [`HttpBlobOptions::max_redirects`] hops per
///   request; https -> http is refused. Reads go to the URL the open's
///   redirects ended at, so a redirecting front end costs one hop per open,
///   not per read.
/// - Every read is a `GET` with `Range: bytes=a-b`, pinned to the version
///   seen at open:
///   - a strong ETag is sent as `If-Match`, so a changed image is
///     `412 Precondition Failed`;
///   - a weak ETag (`W/"..."`) cannot be used with `If-Match` (it requires
///     the strong comparison, so it would never match) nor with `If-Range`;
///     then `Last-Modified`, if present, is sent as `If-Range`, and a
///     changed image comes back as `200` with the new validators;
///   - in every case each `206` is verified: its `ETag` and
///     `Last-Modified` (when present) must equal those seen at open (weak
///     comparison for weak tags) and the total in `Content-Range` must be
///     the length seen at open. With no validator at all only the length
///     can be checked (DEVNOTE: such a server cannot be pinned better).
/// - A response is accepted only if it is `206` with a `Content-Range` of
///   exactly the requested range and a body of exactly the requested
///   length, which is streamed straight into the caller's buffer.
///
/// Concurrency and retries: at most [`HttpBlobOptions::max_connections`]
/// requests are in flight per blob (a semaphore); connections are kept
/// alive and pooled by the hyper-util client. A read longer than
/// [`HttpBlobOptions::max_request_size`] is split into pieces aligned to
/// that size, fetched in parallel. Connect errors, connections that break
/// mid-response, timeouts, 408, 429 and 5xx are retried up to
/// [`HttpBlobOptions::max_retries`] times with exponential backoff and
/// jitter, or after the `Retry-After` delay (seconds or date, capped) when the
/// server sends one. Protocol violations (wrong status, wrong range, wrong
/// length, changed image) are not retried: they would not heal.
///
/// Readahead: a read that starts where an earlier read ended is
/// sequential (up to 8 such streams are tracked at once, so concurrent
/// readers of different regions, such as the connections of one NBD
/// client, do not reset each other); after such a read, the next aligned
/// pieces are fetched by spawned tasks (two pieces at first, doubling per
/// sequential read up to [`HttpBlobOptions::readahead`] bytes) and later
/// reads are served from them. Random readers fetch nothing ahead. A piece
/// is never fetched ahead while a demand read is fetching it, nor after it
/// was read entirely (the last 1024 such pieces are remembered): above a
/// read cache those would be fetched twice. A failed or aborted prefetch is
/// never reported: the reader fetches the piece itself, so errors always
/// come from a demand read. Prefetched pieces are dropped once read
/// entirely, or (farthest first) when more than about twice the window per
/// sequential stream is held. Their buffers are reused: while the blob is
/// open it keeps up to twice the window plus two pieces of them (10 MiB
/// with the defaults).
///
/// Counters: `requests` counts every request sent (HEAD, GET, redirect
/// hops, retries, prefetches); `bytes_fetched` every body byte received
/// (also from attempts that failed later, and from prefetches);
/// `retries` every retried attempt; `errors` every range or open that
/// failed for good (also prefetches that failed).
///
/// Runtime: all I/O runs on the tokio runtime of the caller (the client
/// spawns its connection tasks, and readahead its fetch tasks, there);
/// nothing blocks it. Dropping the blob aborts its readahead tasks.
///
/// FUTURE: readahead cannot see the read cache above it. Within one
/// process the pieces read recently are remembered (see above), but a new
/// process making a sequential pass over a partly cached disk prefetches
/// chunks the cache already has (measured before that memory existed:
/// 1.2x the disk fetched for 200 random reads then a full pass over
/// 256 MiB, against 1.0x for a full pass on a fresh cache). A hint from the
/// layered disk about which chunks are missing would remove it.
///
/// FUTURE: coalescing adjacent small reads into one request.
///
/// FUTURE: proxies (nothing is taken from `HTTP_PROXY` and friends),
/// HTTP/2, credentials from URL userinfo.
///
/// Cheap to share as `Arc<dyn Blob>`; reads may run from many tasks at
/// once. Counters are logged (with the redacted URL) when it is dropped.
pub struct HttpBlob {
    inner: Arc<Inner>,
    readahead: Option<Readahead>,
}

/// What reads need, shared with readahead tasks.
struct Inner {
    t: Transport,
    /// Where reads go (after the open's redirects).
    read_uri: Uri,
    /// The URL given to `open` (with its query): where siblings are.
    open_uri: Uri,
    len: u64,
    validators: BlobValidators,
    precondition: Precondition,
    /// Size and alignment of one range request.
    piece: u64,
}

impl std::fmt::Debug for HttpBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBlob")
            .field("url", &self.inner.t.url)
            .field("len", &self.inner.len)
            .field("validators", &self.inner.validators)
            .finish()
    }
}

impl HttpBlob {
    /// Opens the blob at `url` (http or https): learns its length and
    /// validators. Must be called from within a tokio runtime, which the
    /// blob then uses for all its I/O.
    pub async fn open(url: &str, opts: HttpBlobOptions) -> Result<Self, BlobError> {
        let redacted = redact_url(url);
        let uri = parse_url(url)?;
        let client = build_client(&opts).await?;
        let permits = tokio::sync::Semaphore::new(opts.max_connections.max(1));
        let piece = match opts.max_request_size {
            0 => HttpBlobOptions::default().max_request_size,
            n => n,
        } as u64;
        let readahead = Readahead::new(&opts, piece);
        let t = Transport {
            client,
            opts,
            permits,
            counters: Counters::default(),
            url: redacted,
        };
        let probe = t.probe(&uri).await?;
        let open_uri = uri;
        let precondition = precondition_for(&probe.validators);
        tracing::debug!(
            url = %t.url,
            len = probe.len,
            etag = ?probe.validators.etag,
            last_modified = ?probe.validators.last_modified,
            "opened http blob"
        );
        Ok(HttpBlob {
            inner: Arc::new(Inner {
                t,
                read_uri: probe.uri,
                open_uri,
                len: probe.len,
                validators: probe.validators,
                precondition,
                piece,
            }),
            readahead,
        })
    }

    /// The URL given to [`HttpBlob::open`], redacted.
    pub fn redacted_url(&self) -> &str {
        &self.inner.t.url
    }

    /// The URL reads go to (after redirects at open), redacted.
    pub fn redacted_read_url(&self) -> String {
        redact_url(&self.inner.read_uri.to_string())
    }
}

impl Drop for HttpBlob {
    fn drop(&mut self) {
        if let Some(ra) = &self.readahead {
            ra.abort_all();
        }
        let c = self.inner.t.counters.snapshot();
        tracing::info!(
            url = %self.inner.t.url,
            len = self.inner.len,
            requests = c.requests,
            bytes_fetched = c.bytes_fetched,
            retries = c.retries,
            errors = c.errors,
            "http blob closed"
        );
    }
}

impl Blob for HttpBlob {
    fn len(&self) -> u64 {
        self.inner.len
    }

    fn read<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> BlobReadFuture<'a> {
        Box::pin(self.read_inner(buf, offset))
    }

    fn counters(&self) -> BlobCounters {
        self.inner.t.counters.snapshot()
    }

    fn validators(&self) -> BlobValidators {
        self.inner.validators.clone()
    }

    fn describe(&self) -> String {
        self.inner.t.url.clone()
    }
}
