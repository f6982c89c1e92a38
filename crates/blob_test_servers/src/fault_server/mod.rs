//! The in-test HTTP(S) blob server with injectable faults.
//!
//! Here: the server, its builder and the state its handle and the
//! connections share. `faults`: what a test injects and the record of each
//! request. `handler`: the accept loop and the answer to one request.

mod faults;
mod handler;

use handler::accept_loop;

pub use faults::Fault;
pub use faults::FaultRule;
pub use faults::RequestRecord;
pub use faults::Times;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http::Method;

use crate::tls::TestCa;

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
