//! [`HttpBlob`]: a blob behind an HTTP(S) URL, read with `Range` GETs.

use crate::Blob;
use crate::BlobCounters;
use crate::BlobError;
use crate::BlobReadFuture;
use crate::BlobValidators;
use crate::check_blob_range;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::future::Shared;
use http::HeaderMap;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::Uri;
use http::header;
use http_body_util::BodyExt;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioTimer;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::collections::btree_map;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use url_redact::redact_url;

/// Tuning and trust settings of an [`HttpBlob`]. `Default` gives sane
/// values; nothing is read from the environment.
#[derive(Debug, Clone)]
pub struct HttpBlobOptions {
    /// Most requests in flight at once (and most idle pooled connections
    /// kept). Default 8. Zero is treated as one.
    pub max_connections: usize,
    /// Largest range one GET asks for; longer reads are split into pieces
    /// aligned to this size and fetched in parallel. Default 1 MiB; zero
    /// means the default.
    pub max_request_size: usize,
    /// Most bytes fetched ahead of a sequential reader (one whose read
    /// starts where its previous read ended), in aligned pieces of
    /// `max_request_size`, in parallel. The window starts at two pieces and
    /// doubles with each further sequential read. Zero turns readahead off.
    /// Default 4 MiB.
    pub readahead: usize,
    /// How many times a transient failure is retried. Default 5.
    pub max_retries: u32,
    /// First backoff delay; doubled on each retry. Default 100 ms.
    pub initial_backoff: Duration,
    /// Largest backoff delay. Default 5 s.
    pub max_backoff: Duration,
    /// Largest `Retry-After` delay that is honoured; longer ones are cut to
    /// this. Default 30 s.
    pub max_retry_after: Duration,
    /// Longest wait for response headers, and for each piece of a body.
    /// Default 60 s.
    pub request_timeout: Duration,
    /// Longest wait for a TCP connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Most redirect hops followed per request. Default 5.
    pub max_redirects: u32,
    /// Trust the Mozilla root set compiled in (webpki-roots). Default true.
    pub webpki_roots: bool,
    /// Trust the platform's root store (on Linux this honours
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR`; read once per open). Default
    /// false.
    pub native_roots: bool,
    /// Extra trusted root certificates, each PEM (one or more
    /// certificates) or DER. Default none.
    pub extra_root_certificates: Vec<Vec<u8>>,
    /// How long an idle pooled connection is kept. Default 90 s.
    pub pool_idle_timeout: Duration,
    /// The `User-Agent` header. Default `disk_blob/<version>`.
    pub user_agent: String,
}

impl Default for HttpBlobOptions {
    fn default() -> Self {
        HttpBlobOptions {
            max_connections: 8,
            max_request_size: 1 << 20,
            readahead: 4 << 20,
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            webpki_roots: true,
            native_roots: false,
            extra_root_certificates: Vec::new(),
            pool_idle_timeout: Duration::from_secs(90),
            user_agent: concat!("disk_blob/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

impl HttpBlobOptions {
    /// Adds a trusted root certificate (PEM or DER).
    pub fn with_root_certificate(mut self, cert: impl Into<Vec<u8>>) -> Self {
        self.extra_root_certificates.push(cert.into());
        self
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// How reads are pinned to the version seen at open.
#[derive(Debug, Clone)]
enum Precondition {
    /// `If-Match: <strong etag>`.
    IfMatch(HeaderValue),
    /// `If-Range: <last-modified>`.
    IfRange(HeaderValue),
    /// Nothing to send; responses are still verified.
    None,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    bytes_fetched: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BlobCounters {
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
struct Failure {
    error: BlobError,
    retry: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: BlobError) -> Self {
        Failure {
            error,
            retry: false,
            retry_after: None,
        }
    }
    fn transient(error: BlobError) -> Self {
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
struct Transport {
    client: HttpClient,
    opts: HttpBlobOptions,
    permits: tokio::sync::Semaphore,
    counters: Counters,
    /// The URL given to `open`, redacted.
    url: String,
}

/// A blob behind an HTTP(S) URL, read with `Range` GETs.
///
/// Wire rules:
/// - Open: `HEAD` gives the length (`Content-Length`) and the validators
///   (`ETag`, `Last-Modified`). If `HEAD` is refused (400, 403, 405, 501)
///   or gives no length, a `GET` with `Range: bytes=0-0` is sent instead
///   and the length is taken from the total in its `Content-Range`.
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

struct Probe {
    len: u64,
    validators: BlobValidators,
    uri: Uri,
}

/// Sequential readahead state (see [`HttpBlobOptions::readahead`]).
struct Readahead {
    /// Most bytes fetched ahead of a sequential reader.
    max_window: u64,
    state: Mutex<ReadaheadState>,
    buffers: Arc<PiecePool>,
}

#[derive(Default)]
struct ReadaheadState {
    /// Recent sequential streams, most recently used last (at most
    /// [`MAX_STREAMS`]).
    streams: Vec<Stream>,
    /// Prefetched (or in-flight) aligned pieces, by start offset.
    pieces: BTreeMap<u64, Prefetch>,
    /// Whole pieces a demand read is fetching right now: not fetched
    /// ahead (that would fetch them twice).
    demand: BTreeSet<u64>,
    /// Whole pieces read recently (at most [`MAX_CONSUMED`], oldest
    /// first): not fetched ahead again. Above a read cache, a piece that
    /// was read once is in the cache and will not be read from here again.
    consumed: VecDeque<u64>,
    consumed_set: BTreeSet<u64>,
}

/// One sequential reader: where it reads next and how long it has been
/// sequential.
struct Stream {
    next: u64,
    run: u32,
}

/// Sequential streams tracked at once. Several clients (or several
/// connections of one NBD client) read different regions concurrently;
/// with one stream they would reset each other and look random.
const MAX_STREAMS: usize = 8;
/// Consumed pieces remembered (see [`ReadaheadState::consumed`]).
const MAX_CONSUMED: usize = 1024;

impl ReadaheadState {
    /// Notes a read of `offset..end`: returns how many sequential reads in
    /// a row its stream has seen (0: not sequential).
    fn note_read(&mut self, offset: u64, end: u64) -> u32 {
        match self.streams.iter().position(|s| s.next == offset) {
            Some(i) => {
                let mut s = self.streams.remove(i);
                s.run = s.run.saturating_add(1);
                s.next = end;
                let run = s.run;
                self.streams.push(s);
                run
            }
            None => {
                if self.streams.len() >= MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push(Stream { next: end, run: 0 });
                0
            }
        }
    }

    fn mark_consumed(&mut self, start: u64) {
        if self.consumed_set.insert(start) {
            self.consumed.push_back(start);
            if self.consumed.len() > MAX_CONSUMED
                && let Some(old) = self.consumed.pop_front()
            {
                self.consumed_set.remove(&old);
            }
        }
    }
}

type PrefetchFuture = Shared<BoxFuture<'static, Option<Arc<PieceBuf>>>>;

/// Recycled buffers of prefetched pieces. A fresh buffer per piece cost a
/// zeroing pass and a page fault per 4 KiB for every byte fetched ahead:
/// ~15% of the CPU of a cold sequential pass with no cache above the blob
/// (`perf`, 512 MiB from nginx on loopback).
struct PiecePool {
    bufs: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept; more are freed.
    max: usize,
}

impl PiecePool {
    /// A buffer of exactly `len` bytes, reused if one is free. Its bytes
    /// are stale (another piece's); the fetch overwrites all of them before
    /// the piece is used, and a fetch that fails discards the piece.
    fn take(self: &Arc<Self>, len: usize) -> PieceBuf {
        let reused = {
            let mut bufs = self.bufs.lock();
            bufs.iter()
                .rposition(|b| b.len() == len)
                .map(|i| bufs.swap_remove(i))
        };
        PieceBuf {
            buf: reused.unwrap_or_else(|| vec![0; len]),
            pool: self.clone(),
        }
    }
}

/// A prefetched piece's bytes; the buffer goes back to its pool on drop.
struct PieceBuf {
    buf: Vec<u8>,
    pool: Arc<PiecePool>,
}

impl std::ops::Deref for PieceBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PieceBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        let mut bufs = self.pool.bufs.lock();
        if bufs.len() < self.pool.max {
            bufs.push(std::mem::take(&mut self.buf));
        }
    }
}

/// One aligned piece fetched ahead by a spawned task. The result is `None`
/// if the fetch failed or was aborted; the reader then fetches the piece
/// itself, so errors are always reported by a demand read.
struct Prefetch {
    data: PrefetchFuture,
    abort: tokio::task::AbortHandle,
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
        let readahead = (opts.readahead > 0).then(|| Readahead {
            max_window: opts.readahead as u64,
            state: Mutex::new(ReadaheadState::default()),
            buffers: Arc::new(PiecePool {
                bufs: Mutex::new(Vec::new()),
                // One stream's window and what is being read from it.
                max: (2 * (opts.readahead as u64).div_ceil(piece) + 2) as usize,
            }),
        });
        let t = Transport {
            client,
            opts,
            permits,
            counters: Counters::default(),
            url: redacted,
        };
        let probe = t.probe(&uri).await?;
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

    async fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
        let inner = &self.inner;
        check_blob_range(offset, buf.len(), inner.len)?;
        if buf.is_empty() {
            return Ok(());
        }
        let Some(ra) = &self.readahead else {
            return inner.read_pieces(buf, offset).await;
        };
        let end = offset + buf.len() as u64;
        let piece = inner.piece;
        // Under the lock: pick up prefetched pieces this read covers, note
        // whether the reader is sequential and start fetching ahead.
        let mut found: Vec<(u64, PrefetchFuture)> = Vec::new();
        // Whole pieces this read fetches itself (see `demand`).
        let mut whole: Vec<u64> = Vec::new();
        {
            let mut st = ra.state.lock();
            let run = st.note_read(offset, end);
            let sequential = run > 0;
            let first = offset - offset % piece;
            for (&start, p) in st.pieces.range(first..end) {
                found.push((start, p.data.clone()));
            }
            let mut start = offset.div_ceil(piece).saturating_mul(piece);
            while start < end {
                let piece_end = start.saturating_add(piece).min(inner.len);
                if piece_end > end {
                    break;
                }
                if !st.pieces.contains_key(&start) {
                    whole.push(start);
                }
                st.mark_consumed(start);
                start = piece_end;
            }
            st.demand.extend(whole.iter().copied());
            // Pieces this read uses up entirely are no longer needed. (A
            // piece behind a sequential reader may belong to another
            // stream, or to a read of this one that arrives out of order;
            // the cap below bounds what such pieces hold.)
            st.pieces.retain(|&start, _| {
                let piece_end = start.saturating_add(piece).min(inner.len);
                !(start >= offset && piece_end <= end)
            });
            if sequential && let Ok(rt) = tokio::runtime::Handle::try_current() {
                // The window doubles with each sequential read, from two
                // pieces up to the configured maximum.
                let window = piece
                    .saturating_mul(1 << run.min(16))
                    .min(ra.max_window.max(piece));
                let mut start = end.div_ceil(piece).saturating_mul(piece);
                while start < inner.len && start < end.saturating_add(window) {
                    if st.demand.contains(&start) || st.consumed_set.contains(&start) {
                        start = start.saturating_add(piece);
                        continue;
                    }
                    if let btree_map::Entry::Vacant(slot) = st.pieces.entry(start) {
                        let n = (inner.len - start).min(piece) as usize;
                        let task_inner = inner.clone();
                        let buffers = ra.buffers.clone();
                        let task = rt.spawn(async move {
                            let mut v = buffers.take(n);
                            task_inner.read_range(&mut v, start).await.ok()?;
                            Some(Arc::new(v))
                        });
                        let abort = task.abort_handle();
                        let data = async move { task.await.ok().flatten() }.boxed().shared();
                        slot.insert(Prefetch { data, abort });
                    }
                    start = start.saturating_add(piece);
                }
            }
            // Bound the memory held by pieces of abandoned sequential runs:
            // drop (and stop fetching) those farthest from this read.
            // (Per sequential stream: one stream's pieces must not push out
            // another's.)
            let active = st.streams.iter().filter(|s| s.run > 0).count().max(1);
            let cap = (2 * ra.max_window.div_ceil(piece) + 2) as usize * active;
            if st.pieces.len() > cap {
                let mut keys: Vec<u64> = st.pieces.keys().copied().collect();
                keys.sort_by_key(|&k| std::cmp::Reverse(k.abs_diff(offset)));
                for k in keys.into_iter().take(st.pieces.len() - cap) {
                    if let Some(p) = st.pieces.remove(&k) {
                        p.abort.abort();
                    }
                }
            }
        }
        let r = self.read_with(found, buf, offset).await;
        if !whole.is_empty() {
            let mut st = ra.state.lock();
            for start in whole {
                st.demand.remove(&start);
            }
        }
        r
    }

    /// Reads `buf` at `offset`, taking the pieces in `found` from their
    /// prefetches.
    async fn read_with(
        &self,
        found: Vec<(u64, PrefetchFuture)>,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), BlobError> {
        let inner = &self.inner;
        let piece = inner.piece;
        if found.is_empty() {
            return inner.read_pieces(buf, offset).await;
        }
        // Split at piece boundaries; serve each piece from its prefetch if
        // there is one (and it succeeded), else with a range request.
        let mut parts = Vec::new();
        let mut rest = buf;
        let mut off = offset;
        while !rest.is_empty() {
            let start = off - off % piece;
            let n = (rest.len() as u64).min(start.saturating_add(piece) - off) as usize;
            let (head, tail) = rest.split_at_mut(n);
            let pre = found
                .iter()
                .find(|(s, _)| *s == start)
                .map(|(_, f)| f.clone());
            parts.push(async move {
                if let Some(pre) = pre
                    && let Some(data) = pre.await
                {
                    let at = (off - start) as usize;
                    if let Some(src) = data.get(at..at + head.len()) {
                        head.copy_from_slice(src);
                        return Ok(());
                    }
                }
                inner.read_range(head, off).await
            });
            rest = tail;
            off += n as u64;
        }
        futures::future::try_join_all(parts).await?;
        Ok(())
    }
}

impl Inner {
    /// Reads `buf` at `offset` with range requests of at most one aligned
    /// piece each, in parallel.
    async fn read_pieces(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
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

    /// Reads one range with retries.
    async fn read_range(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
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
                    .and_then(parse_content_range_total)
                    .is_some_and(|total| total != self.len) =>
            {
                let total = header_str(headers, header::CONTENT_RANGE)
                    .and_then(parse_content_range_total)
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
            .and_then(parse_content_range)
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
/// [`HttpBlob`] for why a weak ETag is not sent).
fn precondition_for(v: &BlobValidators) -> Precondition {
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
        && !etag_weak_eq(pinned, now)
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

impl Transport {
    /// Sends one request, following redirects. Returns the final response
    /// and the URI that gave it.
    async fn send(
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
    async fn backoff(&self, f: Failure, attempt: &mut u32) -> Result<(), BlobError> {
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

    /// Learns length and validators: HEAD, or a one-byte ranged GET.
    async fn probe(&self, uri: &Uri) -> Result<Probe, BlobError> {
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
            if let Some(len) = len {
                return Ok(Probe {
                    len,
                    validators: validators_of(headers),
                    uri: final_uri,
                });
            }
            tracing::debug!(url = %self.url, "HEAD gave no length, trying a ranged GET");
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
                let total = cr.and_then(parse_content_range_total);
                match (status, cr.and_then(parse_content_range), total) {
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

impl Drop for HttpBlob {
    fn drop(&mut self) {
        if let Some(ra) = &self.readahead {
            for p in ra.state.lock().pieces.values() {
                p.abort.abort();
            }
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

fn method_name(m: &Method) -> &'static str {
    if *m == Method::HEAD { "HEAD" } else { "GET" }
}

fn is_redirect(s: StatusCode) -> bool {
    matches!(s.as_u16(), 301 | 302 | 303 | 307 | 308)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn validators_of(headers: &HeaderMap) -> BlobValidators {
    BlobValidators {
        etag: header_str(headers, header::ETAG).map(str::to_owned),
        last_modified: header_str(headers, header::LAST_MODIFIED).map(str::to_owned),
    }
}

/// Weak comparison of two entity tags (RFC 9110 8.8.3.2): equal opaque
/// tags, whatever their weakness.
fn etag_weak_eq(a: &str, b: &str) -> bool {
    a.trim().trim_start_matches("W/") == b.trim().trim_start_matches("W/")
}

/// A failure for an unexpected status: transient for 408, 429 and 5xx.
fn status_failure(
    status: StatusCode,
    headers: &HeaderMap,
    url: String,
    method: &'static str,
) -> Failure {
    let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
    Failure {
        error: BlobError::HttpStatus {
            url,
            method,
            status: status.as_u16(),
        },
        retry,
        retry_after: if retry {
            header_str(headers, header::RETRY_AFTER).and_then(parse_retry_after)
        } else {
            None
        },
    }
}

/// Parses `Retry-After`: delay-seconds, or an IMF-fixdate (the delay is
/// the time until then, zero if it is past).
fn parse_retry_after(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(s)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) into seconds
/// since the Unix epoch. The obsolete date forms are not accepted.
fn parse_imf_fixdate(s: &str) -> Option<u64> {
    let (_weekday, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if it.next()? != "GMT" || it.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from 1970-01-01 to the date (proleptic Gregorian calendar).
    let is_leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let month_days = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > month_days[month - 1] {
        return None;
    }
    let mut days: u64 = (1970..year)
        .map(|y| if is_leap(y) { 366 } else { 365 })
        .sum();
    days += month_days[..month - 1].iter().sum::<u64>();
    days += day - 1;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Classifies a client error: TLS (fatal), connect (transient) or a broken
/// transfer (transient).
fn classify_client_error(
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

/// A parsed `Content-Range: bytes a-b/total` (total `None` for `*`).
#[derive(Debug, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

fn parse_content_range(s: &str) -> Option<ContentRange> {
    let rest = s.trim().strip_prefix("bytes ")?.trim();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let start = a.trim().parse().ok()?;
    let end = b.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => {
            let t: u64 = t.parse().ok()?;
            if end >= t {
                return None;
            }
            Some(t)
        }
    };
    Some(ContentRange { start, end, total })
}

/// The total of `bytes a-b/total` or `bytes */total`.
fn parse_content_range_total(s: &str) -> Option<u64> {
    let rest = s.trim().strip_prefix("bytes ")?;
    let (_, total) = rest.split_once('/')?;
    total.trim().parse().ok()
}

/// Parses and checks a blob URL: http or https, a host, no userinfo. The
/// fragment is dropped (it is never sent).
fn parse_url(url: &str) -> Result<Uri, BlobError> {
    let invalid = |reason: String| BlobError::InvalidUrl {
        url: redact_url(url),
        reason,
    };
    let without_fragment = url.split('#').next().unwrap_or(url);
    let uri = Uri::try_from(without_fragment).map_err(|e| invalid(e.to_string()))?;
    check_uri(&uri).map_err(invalid)?;
    Ok(uri)
}

fn check_uri(uri: &Uri) -> Result<(), String> {
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(s) => return Err(format!("unsupported scheme {s:?}, expected http or https")),
        None => return Err("not an absolute URL".into()),
    }
    let auth = uri.authority().ok_or("no host")?;
    if auth.as_str().contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    if auth.host().is_empty() {
        return Err("no host".into());
    }
    Ok(())
}

/// Resolves a `Location` header against the URI that sent it (RFC 3986
/// reference resolution, without `..` beyond the root).
fn resolve_location(base: &Uri, loc: &str) -> Result<Uri, String> {
    let loc = loc.trim();
    let loc = loc.split('#').next().unwrap_or(loc);
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    let has_scheme = loc.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !s.contains('/')
    });
    let abs = if has_scheme {
        loc.to_string()
    } else if let Some(rest) = loc.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        let (path, query) = split_query(loc);
        format!("{scheme}://{authority}{}{query}", remove_dot_segments(path))
    } else if loc.starts_with('?') {
        format!("{scheme}://{authority}{}{loc}", base.path())
    } else if loc.is_empty() {
        base.to_string()
    } else {
        let base_path = base.path();
        let dir = &base_path[..base_path.rfind('/').map_or(0, |i| i + 1)];
        let (path, query) = split_query(loc);
        let joined = format!("{}{path}", if dir.is_empty() { "/" } else { dir });
        format!(
            "{scheme}://{authority}{}{query}",
            remove_dot_segments(&joined)
        )
    };
    let uri = Uri::try_from(abs.as_str()).map_err(|e| format!("unparsable Location: {e}"))?;
    check_uri(&uri).map_err(|e| format!("Location: {e}"))?;
    Ok(uri)
}

fn split_query(s: &str) -> (&str, &str) {
    match s.find('?') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').collect();
    for (i, seg) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *seg {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

/// Builds the pooled client: TCP with nodelay and a connect timeout, TLS by
/// rustls (ring) with the configured roots, HTTP/1.1 keep-alive.
async fn build_client(opts: &HttpBlobOptions) -> Result<HttpClient, BlobError> {
    let tls = tls_config(opts).await?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(opts.connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(opts.max_connections.max(1))
        .pool_idle_timeout(opts.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

async fn tls_config(opts: &HttpBlobOptions) -> Result<rustls::ClientConfig, BlobError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    if opts.webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if opts.native_roots {
        let native = tokio::task::spawn_blocking(rustls_native_certs::load_native_certs)
            .await
            .map_err(|e| BlobError::TlsConfig(format!("loading native roots: {e}")))?;
        for e in &native.errors {
            tracing::debug!(error = %e, "skipping a native root certificate source");
        }
        let (added, ignored) = roots.add_parsable_certificates(native.certs);
        tracing::debug!(added, ignored, "loaded native root certificates");
    }
    for (i, cert) in opts.extra_root_certificates.iter().enumerate() {
        let is_pem = cert
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .is_some_and(|p| cert[p..].starts_with(b"-----BEGIN"));
        let ders: Vec<CertificateDer<'static>> = if is_pem {
            CertificateDer::pem_slice_iter(cert)
                .collect::<Result<_, _>>()
                .map_err(|e| BlobError::TlsConfig(format!("root certificate #{i}: bad PEM: {e}")))?
        } else {
            vec![CertificateDer::from(cert.clone())]
        };
        if ders.is_empty() {
            return Err(BlobError::TlsConfig(format!(
                "root certificate #{i}: no certificate in PEM"
            )));
        }
        for der in ders {
            roots
                .add(der)
                .map_err(|e| BlobError::TlsConfig(format!("root certificate #{i}: {e}")))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BlobError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some(ContentRange {
                start: 0,
                end: 99,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some(ContentRange {
                start: 5,
                end: 5,
                total: None
            })
        );
        assert_eq!(parse_content_range("bytes 10-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes 0-x/2"), None);
        assert_eq!(parse_content_range_total("bytes */0"), Some(0));
        assert_eq!(parse_content_range_total("bytes 0-0/77"), Some(77));
        assert_eq!(parse_content_range_total("bytes 0-0/*"), None);
    }

    #[test]
    fn location_resolution() {
        let base: Uri = "https://h.example:8443/a/b/c.vhd?sig=1".parse().unwrap();
        let r = |l: &str| resolve_location(&base, l).map(|u| u.to_string());
        assert_eq!(r("https://x/y").unwrap(), "https://x/y");
        assert_eq!(r("//other/z.vhd").unwrap(), "https://other/z.vhd");
        assert_eq!(r("/z.vhd?t=2").unwrap(), "https://h.example:8443/z.vhd?t=2");
        assert_eq!(r("d.vhd").unwrap(), "https://h.example:8443/a/b/d.vhd");
        assert_eq!(r("../d.vhd").unwrap(), "https://h.example:8443/a/d.vhd");
        assert_eq!(
            r("./x/../d.vhd").unwrap(),
            "https://h.example:8443/a/b/d.vhd"
        );
        assert_eq!(r("/../../d").unwrap(), "https://h.example:8443/d");
        assert_eq!(r("?s=3").unwrap(), "https://h.example:8443/a/b/c.vhd?s=3");
        assert_eq!(r("http://plain/x").unwrap(), "http://plain/x");
        assert!(r("ftp://x/y").is_err());
        assert!(r("https://user:pw@x/y").is_err());
    }

    #[test]
    fn url_checks() {
        assert!(parse_url("http://127.0.0.1:8080/a.vhd?sig=SECRET#frag").is_ok());
        for bad in [
            "ftp://h/a?sig=SECRET",
            "/relative?sig=SECRET",
            "https://u:SECRET@h/a",
            "http:// bad host/a?sig=SECRET",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(matches!(e, BlobError::InvalidUrl { .. }), "{bad}");
            assert!(!e.to_string().contains("SECRET"), "{e}");
        }
    }

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

    #[test]
    fn etag_comparison() {
        assert!(etag_weak_eq("\"a\"", "\"a\""));
        assert!(etag_weak_eq("W/\"a\"", "\"a\""));
        assert!(!etag_weak_eq("\"a\"", "\"b\""));
    }

    #[test]
    fn retry_after_parsing() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        assert_eq!(parse_imf_fixdate("Wed, 29 Feb 2001 12:00:00 GMT"), None);
        assert_eq!(parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(parse_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_imf_fixdate("Sun, 06 Foo 1994 08:49:37 GMT"), None);
        let future = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let d = parse_retry_after(&blob_test_servers::http_date(future)).unwrap();
        assert!(d > Duration::from_secs(3000) && d <= Duration::from_secs(3600));
    }

    #[test]
    fn default_options_are_sane() {
        let o = HttpBlobOptions::default();
        assert!((4..=8).contains(&o.max_connections));
        assert_eq!(o.max_redirects, 5);
        assert!(o.webpki_roots && !o.native_roots);
    }

    #[tokio::test]
    async fn native_roots_load_without_webpki() {
        let opts = HttpBlobOptions {
            webpki_roots: false,
            native_roots: true,
            ..Default::default()
        };
        tls_config(&opts).await.unwrap();
    }

    #[tokio::test]
    async fn bad_custom_root_is_tls_config_error() {
        let opts = HttpBlobOptions::default().with_root_certificate(
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
        );
        assert!(matches!(
            tls_config(&opts).await,
            Err(BlobError::TlsConfig(_))
        ));
        let opts = HttpBlobOptions::default().with_root_certificate(vec![1, 2, 3]);
        assert!(matches!(
            tls_config(&opts).await,
            Err(BlobError::TlsConfig(_))
        ));
    }
}
