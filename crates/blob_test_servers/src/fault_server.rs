//! The in-test HTTP(S) blob server with injectable faults.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::header;
use http_body_util::BodyExt as _;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use http_ranges::Decision;
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::tls::TestCa;

/// Size of the chunks a response body is produced in.
const CHUNK: u64 = 64 * 1024;

/// A fault to inject into responses. See [`FaultServer::set_fault`].
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
    fault: Fault,
    remaining: Option<u32>,
    skip: u32,
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

    fn matches(&self, method: &Method, path: &str) -> bool {
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
    /// 0-based (not reset by [`FaultServer::reset_stats`]).
    pub connection: u64,
    /// The per-request latency this request waited
    /// ([`FaultServer::set_latency`]; zero if none).
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

enum Content {
    Mem(Bytes),
    File(Arc<std::fs::File>),
}

struct Blob {
    content: Content,
    len: u64,
    etag: String,
    last_modified_secs: u64,
    last_modified: String,
}

impl Blob {
    /// Reads `len` bytes at `offset` (which the caller keeps inside the blob).
    fn read(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        match &self.content {
            Content::Mem(b) => {
                let start = usize::try_from(offset).map_err(io::Error::other)?;
                let end = usize::try_from(offset + len).map_err(io::Error::other)?;
                Ok(b.slice(start..end))
            }
            Content::File(f) => {
                use std::os::unix::fs::FileExt as _;
                let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
                f.read_exact_at(&mut buf, offset)?;
                Ok(Bytes::from(buf))
            }
        }
    }
}

struct Redirect {
    location: String,
    status: u16,
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, Arc<Blob>>,
    redirects: HashMap<String, Redirect>,
    rules: Vec<FaultRule>,
    log: Vec<RequestRecord>,
    /// Every request as it arrived (before any latency or fault), in
    /// order of arrival; `status` is `None` in these copies.
    arrivals: Vec<RequestRecord>,
    required_token: Option<String>,
    generation: u64,
    no_etag: bool,
    no_last_modified: bool,
}

struct Shared {
    state: Mutex<State>,
    requests: AtomicU64,
    bytes_served: Arc<AtomicU64>,
    connections: AtomicU64,
    faults_fired: AtomicU64,
    latency_us: AtomicU64,
    connection_latency_us: AtomicU64,
    delayed_requests: AtomicU64,
    delayed_connections: AtomicU64,
    /// Connections accepted since start (numbers them; never reset).
    accepted: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    etag_seed: u64,
}

/// Counts a request as in flight from its arrival until its response body
/// is finished (or dropped).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave State inconsistent in a
        // way that matters to a test server; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, path: &str, content: Content, len: u64) -> String {
        let mut state = self.lock();
        state.generation += 1;
        let generation = state.generation;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Last-Modified must change on replacement, even within one second.
        let last_modified_secs = match state.blobs.get(path) {
            Some(old) => now.max(old.last_modified_secs + 1),
            None => now,
        };
        let etag = format!("\"{:x}-{generation}-{len:x}\"", self.etag_seed);
        let blob = Blob {
            content,
            len,
            etag: etag.clone(),
            last_modified_secs,
            last_modified: http_ranges::date::format(last_modified_secs),
        };
        state.blobs.insert(path.to_string(), Arc::new(blob));
        etag
    }

    fn take_fault(&self, method: &Method, path: &str) -> Option<Fault> {
        let mut state = self.lock();
        let rule = state.rules.iter_mut().find(|r| r.matches(method, path))?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        self.faults_fired.fetch_add(1, Ordering::Relaxed);
        Some(rule.fault.clone())
    }
}

/// Options for starting a [`FaultServer`].
#[derive(Debug, Default, Clone)]
pub struct FaultServerBuilder {
    tls: bool,
    latency: Duration,
    connection_latency: Duration,
}

impl FaultServerBuilder {
    /// Serve HTTPS with a certificate from a fresh [`TestCa`].
    pub fn tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Delay every request by this much (see [`FaultServer::set_latency`]).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Delay every new connection by this much before its first request is
    /// read (see [`FaultServer::set_connection_latency`]).
    pub fn connection_latency(mut self, latency: Duration) -> Self {
        self.connection_latency = latency;
        self
    }

    /// Starts the server on 127.0.0.1 on a free port.
    pub fn start(self) -> anyhow::Result<FaultServer> {
        FaultServer::start_with(self)
    }
}

/// An HTTP/1.1 and HTTP/2 (optionally TLS) blob server on 127.0.0.1 with
/// injectable faults, request counters and a request log.
///
/// It runs on its own tokio runtime (two worker threads), so it works the
/// same from synchronous tests and from any async runtime, and it never
/// competes with the client under test for the caller's runtime. Dropping
/// the server stops it and closes every connection.
///
/// Routing: the request path (without query) selects a blob. Before that,
/// in order: the per-request latency, the first matching fault rule, the
/// required query token (403), and the redirect table.
///
/// Latency (a store a round trip away, simulated in user space): the
/// per-request latency ([`FaultServer::set_latency`]) is waited before
/// each request is handled; the per-connection latency
/// ([`FaultServer::set_connection_latency`]) once per new connection,
/// before its TLS handshake and its first request are read, as a real
/// store's TCP and TLS handshakes cost. [`FaultServer::delayed_requests`],
/// [`FaultServer::delayed_connections`] and the request log
/// ([`RequestRecord::connection`], [`RequestRecord::latency`]) show what
/// was delayed.
///
/// Semantics of a normal response:
/// - `GET`/`HEAD` only (others: 405). `Accept-Ranges: bytes`, a strong
///   `ETag` (changes whenever the blob is replaced), `Last-Modified`.
/// - Conditional requests and `Range` are decided by `http_ranges::decide`,
///   the rules `blob_server` uses too (RFC 9110 section 13.2.2): `If-Match`
///   that matches no current ETag (strong comparison): 412; `If-None-Match`
///   that matches: 304; the date conditions likewise.
/// - A `bytes=` range (`a-b`, `a-`, `-n`; several that overlap or touch
///   merge into one): 206 with `Content-Range`; none satisfiable: 416 with
///   `Content-Range: bytes */len`; a malformed header, or several separate
///   ranges, is ignored (200), as RFC 9110 allows. `If-Range` (ETag or
///   Last-Modified) that does not match turns the answer into a 200 with
///   the whole blob.
pub struct FaultServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ca: Option<TestCa>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultServer")
            .field("addr", &self.addr)
            .field("tls", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

static SERVER_SEED: AtomicU64 = AtomicU64::new(0);

impl FaultServer {
    /// Options for a server.
    pub fn builder() -> FaultServerBuilder {
        FaultServerBuilder::default()
    }

    /// Starts a plain HTTP server.
    pub fn start() -> anyhow::Result<Self> {
        Self::builder().start()
    }

    /// Starts an HTTPS server with a fresh self-signed CA (see
    /// [`FaultServer::ca`]).
    pub fn start_tls() -> anyhow::Result<Self> {
        Self::builder().tls(true).start()
    }

    fn start_with(opts: FaultServerBuilder) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-server")
            .enable_all()
            .build()
            .context("building the fault server runtime")?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (ca, acceptor) = if opts.tls {
            let ca = TestCa::new()?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config()?));
            (Some(ca), Some(acceptor))
        } else {
            (None, None)
        };
        let seed = SERVER_SEED.fetch_add(1, Ordering::Relaxed) << 32
            | u64::from(std::process::id()) << 16
            | u64::from(addr.port());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            requests: AtomicU64::new(0),
            bytes_served: Arc::new(AtomicU64::new(0)),
            connections: AtomicU64::new(0),
            faults_fired: AtomicU64::new(0),
            latency_us: AtomicU64::new(duration_us(opts.latency)),
            connection_latency_us: AtomicU64::new(duration_us(opts.connection_latency)),
            delayed_requests: AtomicU64::new(0),
            delayed_connections: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            etag_seed: seed,
        });
        runtime.spawn(accept_loop(listener, shared.clone(), acceptor));
        Ok(Self {
            shared,
            addr,
            ca,
            runtime: Some(runtime),
        })
    }

    /// The listening address (always 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`. (The TLS
    /// certificate names both `127.0.0.1` and `localhost`, so
    /// `https://localhost:PORT` verifies too.)
    pub fn base_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// `base_url() + path`; `path` should start with `/` and may carry a query.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// Whether the server speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.ca.is_some()
    }

    /// The CA of an HTTPS server.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// The CA certificate (PEM) that HTTPS clients must trust.
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|c| c.ca_cert_pem())
    }

    /// The CA certificate (DER) that HTTPS clients must trust.
    pub fn ca_cert_der(&self) -> Option<&[u8]> {
        self.ca.as_ref().map(|c| c.ca_cert_der().as_ref())
    }

    /// Serves `data` at `path` (replacing any blob there, with a new ETag
    /// and a later Last-Modified). Returns the new ETag.
    pub fn put_blob(&self, path: &str, data: impl Into<Bytes>) -> String {
        let data = data.into();
        let len = data.len() as u64;
        self.shared.put(path, Content::Mem(data), len)
    }

    /// Serves the file at `file` at `path` (read on demand; its length is
    /// taken now and must not change while served). Returns the ETag.
    pub fn put_file(&self, path: &str, file: &Path) -> anyhow::Result<String> {
        let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = f.metadata()?.len();
        Ok(self.shared.put(path, Content::File(Arc::new(f)), len))
    }

    /// Stops serving `path` (404 afterwards).
    pub fn remove_blob(&self, path: &str) {
        self.shared.lock().blobs.remove(path);
    }

    /// The current ETag of the blob at `path` (with quotes).
    pub fn etag(&self, path: &str) -> Option<String> {
        self.shared.lock().blobs.get(path).map(|b| b.etag.clone())
    }

    /// The current Last-Modified value of the blob at `path`.
    pub fn last_modified(&self, path: &str) -> Option<String> {
        self.shared
            .lock()
            .blobs
            .get(path)
            .map(|b| b.last_modified.clone())
    }

    /// Permanently redirects requests for `from` (path without query) to
    /// `location` with a 302. Chains and loops are built from several calls.
    pub fn add_redirect(&self, from: &str, location: &str) {
        self.add_redirect_with_status(from, location, 302);
    }

    /// Like [`FaultServer::add_redirect`] with a chosen 3xx status.
    pub fn add_redirect_with_status(&self, from: &str, location: &str, status: u16) {
        self.shared.lock().redirects.insert(
            from.to_string(),
            Redirect {
                location: location.to_string(),
                status,
            },
        );
    }

    /// Requires every request's query string to contain `token` as one of
    /// its `&`-separated parts (e.g. `sig=abc`), else 403 — a stand-in for
    /// an Azure SAS. `None` turns the check off.
    pub fn set_required_query_token(&self, token: Option<&str>) {
        self.shared.lock().required_token = token.map(str::to_string);
    }

    /// Replaces all fault rules with one rule applying `fault` to the next
    /// `times` requests.
    pub fn set_fault(&self, fault: Fault, times: Times) {
        let mut state = self.shared.lock();
        state.rules.clear();
        state.rules.push(FaultRule::new(fault, times));
    }

    /// Adds a fault rule after the existing ones.
    pub fn add_fault(&self, rule: FaultRule) {
        self.shared.lock().rules.push(rule);
    }

    /// Removes all fault rules.
    pub fn clear_faults(&self) {
        self.shared.lock().rules.clear();
    }

    /// Delays every request by `latency` before it is handled (one round
    /// trip of a far-away store). Zero turns it off. Applies to requests
    /// that arrive from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(duration_us(latency), Ordering::Relaxed);
    }

    /// Delays every new connection by `latency` before its TLS handshake
    /// and first request are read (the handshakes of a far-away store).
    /// Zero turns it off. Applies to connections accepted from now on.
    pub fn set_connection_latency(&self, latency: Duration) {
        self.shared
            .connection_latency_us
            .store(duration_us(latency), Ordering::Relaxed);
    }

    /// Requests that waited the per-request latency.
    pub fn delayed_requests(&self) -> u64 {
        self.shared.delayed_requests.load(Ordering::Relaxed)
    }

    /// Connections that waited the per-connection latency.
    pub fn delayed_connections(&self) -> u64 {
        self.shared.delayed_connections.load(Ordering::Relaxed)
    }

    /// Requests received so far (including ones answered with a fault).
    pub fn request_count(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Blob body bytes handed to the connection so far.
    pub fn bytes_served(&self) -> u64 {
        self.shared.bytes_served.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far (keep-alive keeps this low).
    pub fn connection_count(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Requests currently being handled or streaming their body.
    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The largest number of requests that were in flight at once (since
    /// start or [`FaultServer::reset_stats`]); shows whether a client
    /// issued requests in parallel.
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Chooses which validators responses carry (both by default). Turning
    /// the ETag off models servers that only send Last-Modified; turning
    /// both off models servers with no validators at all. Conditional
    /// request headers are still evaluated against the blob's validators.
    pub fn set_validators(&self, etag: bool, last_modified: bool) {
        let mut state = self.shared.lock();
        state.no_etag = !etag;
        state.no_last_modified = !last_modified;
    }

    /// Faults injected so far.
    pub fn faults_fired(&self) -> u64 {
        self.shared.faults_fired.load(Ordering::Relaxed)
    }

    /// A copy of the request log, in order of completion of the headers.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().log.clone()
    }

    /// Every request as it arrived, before its latency or fault, in order
    /// of arrival (`status` is `None`): with latency set, what is in flight
    /// shows here before it shows in [`requests`](Self::requests).
    pub fn arrivals(&self) -> Vec<RequestRecord> {
        self.shared.lock().arrivals.clone()
    }

    /// Clears the request log and zeroes the request, byte, connection,
    /// fault and delay counters.
    pub fn reset_stats(&self) {
        let mut state = self.shared.lock();
        state.log.clear();
        state.arrivals.clear();
        self.shared.requests.store(0, Ordering::Relaxed);
        self.shared.bytes_served.store(0, Ordering::Relaxed);
        self.shared.connections.store(0, Ordering::Relaxed);
        self.shared.faults_fired.store(0, Ordering::Relaxed);
        self.shared.delayed_requests.store(0, Ordering::Relaxed);
        self.shared.delayed_connections.store(0, Ordering::Relaxed);
        self.shared.max_in_flight.store(
            self.shared.in_flight.load(Ordering::SeqCst),
            Ordering::SeqCst,
        );
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Does not block, so dropping the server inside an async test is fine.
            rt.shutdown_background();
        }
    }
}

fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. EMFILE; back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let connection = shared.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let handshake =
                Duration::from_micros(shared.connection_latency_us.load(Ordering::Relaxed));
            if !handshake.is_zero() {
                shared.delayed_connections.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(handshake).await;
            }
            let service =
                hyper::service::service_fn(move |req| handle(shared.clone(), connection, req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}

type Body = BoxBody<Bytes, io::Error>;

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn text(s: &str) -> Body {
    Full::new(Bytes::from(s.to_string()))
        .map_err(|e: Infallible| match e {})
        .boxed()
}

fn status_response(status: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(text(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r
}

fn redirect_response(status: u16, location: &str) -> Response<Body> {
    let mut r = status_response(status, "");
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    shared: Arc<Shared>,
    connection: u64,
    req: Request<Incoming>,
) -> Result<Response<Body>, io::Error> {
    let seq = shared.requests.fetch_add(1, Ordering::Relaxed);
    let mut in_flight = Some(InFlight::new(&shared));
    let mut record = RequestRecord {
        seq,
        method: req.method().to_string(),
        path_and_query: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
        range: header_str(&req, header::RANGE).map(str::to_string),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        fault: None,
        status: None,
        connection,
        latency: Duration::ZERO,
    };
    shared.lock().arrivals.push(record.clone());
    let finish = |mut record: RequestRecord, response: Response<Body>| {
        record.status = Some(response.status().as_u16());
        shared.lock().log.push(record);
        Ok(response)
    };

    let latency = Duration::from_micros(shared.latency_us.load(Ordering::Relaxed));
    if !latency.is_zero() {
        shared.delayed_requests.fetch_add(1, Ordering::Relaxed);
        record.latency = latency;
        tokio::time::sleep(latency).await;
    }

    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let mut modifier = None;
    if let Some(fault) = shared.take_fault(&method, &path) {
        record.fault = Some(fault.name());
        match fault {
            Fault::Status {
                status,
                retry_after,
            } => {
                let mut r = status_response(status, "injected fault\n");
                if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                return finish(record, r);
            }
            Fault::Redirect { location, status } => {
                return finish(record, redirect_response(status, &location));
            }
            Fault::RefuseHead => {
                let mut r = status_response(405, "");
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET"));
                return finish(record, r);
            }
            Fault::DropConnection => {
                shared.lock().log.push(record);
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "injected fault: drop connection",
                ));
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::ReplaceContent(data) => {
                let len = data.len() as u64;
                shared.put(&path, Content::Mem(data), len);
            }
            other => modifier = Some(other),
        }
    }

    let (required_token, redirect, blob, send_etag, send_last_modified) = {
        let state = shared.lock();
        (
            state.required_token.clone(),
            state
                .redirects
                .get(&path)
                .map(|r| (r.status, r.location.clone())),
            state.blobs.get(&path).cloned(),
            !state.no_etag,
            !state.no_last_modified,
        )
    };
    if let Some(token) = required_token {
        let ok = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == token));
        if !ok {
            return finish(record, status_response(403, "missing or wrong token\n"));
        }
    }
    if let Some((status, location)) = redirect {
        return finish(record, redirect_response(status, &location));
    }
    let Some(blob) = blob else {
        return finish(record, status_response(404, "not found\n"));
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = status_response(405, "");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return finish(record, r);
    }

    let ranges_supported = !matches!(modifier, Some(Fault::IgnoreRange));
    let validators = |r: &mut Response<Body>| {
        let h = r.headers_mut();
        if let Some(v) = send_etag
            .then(|| HeaderValue::from_str(&blob.etag).ok())
            .flatten()
        {
            h.insert(header::ETAG, v);
        }
        if let Some(v) = send_last_modified
            .then(|| HeaderValue::from_str(&blob.last_modified).ok())
            .flatten()
        {
            h.insert(header::LAST_MODIFIED, v);
        }
        if ranges_supported {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        }
    };

    let conditions = http_ranges::Conditions {
        if_match: header_str(&req, header::IF_MATCH),
        if_none_match: header_str(&req, header::IF_NONE_MATCH),
        if_modified_since: header_str(&req, header::IF_MODIFIED_SINCE),
        if_unmodified_since: header_str(&req, header::IF_UNMODIFIED_SINCE),
        if_range: header_str(&req, header::IF_RANGE),
        range: header_str(&req, header::RANGE),
    };
    let version = http_ranges::Version {
        len: blob.len,
        etag: blob.etag.clone(),
        modified: blob.last_modified_secs,
    };
    let mut decision = http_ranges::decide(&conditions, &version);
    if matches!(modifier, Some(Fault::IgnoreRange))
        && matches!(
            decision,
            Decision::Partial { .. } | Decision::RangeNotSatisfiable
        )
    {
        decision = Decision::Full;
    }

    let (status, mut start, len) = match decision {
        Decision::Full => (StatusCode::OK, 0, blob.len),
        Decision::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Decision::PreconditionFailed => {
            let mut r = status_response(412, "precondition failed\n");
            validators(&mut r);
            return finish(record, r);
        }
        Decision::NotModified => {
            let mut r = status_response(304, "");
            validators(&mut r);
            return finish(record, r);
        }
        Decision::RangeNotSatisfiable => {
            let mut r = status_response(416, "");
            validators(&mut r);
            if let Ok(v) = HeaderValue::from_str(&http_ranges::content_range::unsatisfied(blob.len))
            {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return finish(record, r);
        }
    };
    // The range the Content-Range header claims (before body faults).
    if let Some(Fault::WrongContentRange { shift }) = modifier {
        let max_start = blob.len - len;
        start = if shift >= 0 {
            start.saturating_add(shift.unsigned_abs()).min(max_start)
        } else {
            start.saturating_sub(shift.unsigned_abs())
        };
    }
    let claimed = (start, len);
    let mut plan = BodyPlan {
        offset: start,
        data_len: len,
        zeros: 0,
        stall: None,
        fail_after: None,
    };
    match &modifier {
        Some(Fault::ShortBody { by }) => plan.data_len = len.saturating_sub(*by),
        Some(Fault::LongBody { by }) => {
            let total = len.saturating_add(*by);
            plan.data_len = total.min(blob.len - start);
            plan.zeros = total - plan.data_len;
        }
        Some(Fault::ResetMidBody { after }) => {
            plan.fail_after = Some(after.unwrap_or(len / 2).min(len));
        }
        Some(Fault::StallBody { after, duration }) => {
            plan.stall = Some((after.unwrap_or(len / 2).min(len), *duration));
        }
        _ => {}
    }
    let body_len = plan.data_len + plan.zeros;
    // A reset body announces the full length and then fails part way.
    let content_length = if plan.fail_after.is_some() {
        len
    } else {
        body_len
    };

    let body = if method == Method::HEAD || body_len == 0 {
        empty()
    } else {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(produce_body(blob.clone(), plan, tx));
        ChanBody {
            rx,
            counter: shared.bytes_served.clone(),
            _in_flight: in_flight.take(),
        }
        .boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    validators(&mut r);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
    if status == StatusCode::PARTIAL_CONTENT {
        let (s, l) = claimed;
        let content_range = http_ranges::ContentRange {
            start: s,
            end: s + l - 1,
            total: Some(blob.len),
        };
        if let Ok(v) = HeaderValue::from_str(&content_range.to_string()) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    finish(record, r)
}

/// What the body producer sends: `data_len` blob bytes from `offset`, then
/// `zeros` zero bytes; optionally pausing or failing after some bytes.
#[derive(Debug, Clone, Copy)]
struct BodyPlan {
    offset: u64,
    data_len: u64,
    zeros: u64,
    stall: Option<(u64, Duration)>,
    fail_after: Option<u64>,
}

async fn produce_body(blob: Arc<Blob>, plan: BodyPlan, tx: mpsc::Sender<io::Result<Bytes>>) {
    let total = plan.data_len + plan.zeros;
    let mut sent = 0u64;
    let mut stall = plan.stall;
    loop {
        if plan.fail_after.is_some_and(|f| sent >= f) {
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "injected fault: reset mid-body",
                )))
                .await;
            return;
        }
        if let Some((at, d)) = stall
            && sent >= at
        {
            tokio::time::sleep(d).await;
            stall = None;
        }
        if sent >= total {
            return;
        }
        let mut limit = CHUNK.min(total - sent);
        if let Some(f) = plan.fail_after {
            limit = limit.min(f - sent);
        }
        if let Some((at, _)) = stall {
            limit = limit.min(at - sent);
        }
        let chunk = if sent < plan.data_len {
            let n = limit.min(plan.data_len - sent);
            let offset = plan.offset + sent;
            let blob = blob.clone();
            match tokio::task::spawn_blocking(move || blob.read(offset, n)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            }
        } else {
            Bytes::from(vec![0u8; usize::try_from(limit).unwrap_or(0)])
        };
        sent += chunk.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
}

/// A response body fed by the producer task through a channel; counts the
/// bytes it hands to hyper.
struct ChanBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    counter: Arc<AtomicU64>,
    _in_flight: Option<InFlight>,
}

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(b))) => {
                self.counter.fetch_add(b.len() as u64, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
