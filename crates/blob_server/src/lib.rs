//! A small static blob server: serves the files of one directory over
//! HTTP/1.1 on loopback, with the parts of HTTP that lazy disk reads rely
//! on.
//!
//! Position in the data flow: this is the store side of a remote disk, for
//! when there is no real store. `cargo xtask guest-test run` starts one on
//! `127.0.0.1` over the test images folder and points
//! `PETRI_ARTIFACT_BASE_URL` at it, so the tests' disks are opened lazily
//! through `disk_blob::HttpBlob` exactly as they would be from Azure, nginx
//! or a CDN. It is product code, not a test fake: it is honest about
//! versions and never sends bytes of one version of a file under the
//! validators of another. (The tests' peers are nginx and the fault server
//! of `blob_test_servers`; this crate does not depend on either.)
//!
//! # Model
//!
//! A request path names a file under the root directory: the path is split
//! at `/`, each segment is percent-decoded, and the file is
//! `root/segment/...`. The query string is ignored, so a base URL with a
//! SAS-like query works. Directories are not listed. Only `GET` and `HEAD`
//! are served (anything else is `405` with `Allow: GET, HEAD`).
//!
//! Each response describes the version of the file it was opened at (the
//! metadata of the open file handle):
//! - `ETag`: strong, `"<length>-<mtime ns>-<device>-<inode>-<ctime ns>"`
//!   in hex (on Unix; elsewhere only length and mtime), so every new
//!   version gets a new tag, also one with the old one's length and mtime
//!   (copied with its timestamp, or written within one tick of the
//!   filesystem clock): it is another inode, or the same inode number
//!   reused at a later change time. A read cache keyed on the tag can rely
//!   on that. (The tag also changes on a metadata-only change such as
//!   `chmod`, which costs a cache refetch, never wrong bytes.)
//! - `Last-Modified`: the modification time in whole seconds;
//! - `Accept-Ranges: bytes`, `Content-Length`, and
//!   `Content-Type: application/octet-stream`.
//!
//! Conditional requests and ranges are decided by `http_ranges::decide`
//! (the same rules the test servers use), which follows RFC 9110 section
//! 13.2.2, in order: `If-Match` (strong comparison; `412` on mismatch),
//! else `If-Unmodified-Since` (`412`); `If-None-Match` (weak comparison,
//! `304`), else `If-Modified-Since` (`304`); then `If-Range` (an entity tag
//! compared strongly, or a date equal to `Last-Modified`), which drops the
//! range and sends the whole file when the client's version is not current.
//! Ranges: a `bytes=` range (`a-b`, `a-`, `-n`; several that overlap or
//! touch are merged into one) gets `206` with `Content-Range`; if no range
//! is satisfiable, `416` with `Content-Range: bytes */<length>`.
//!
//! # Latency
//!
//! A store on loopback answers in microseconds; a real one is a round trip
//! or more away. [`Latency`] (in [`BlobServerOptions`], or changed while
//! running with [`BlobServer::set_latency`]) adds, in user space (no
//! `netem` needed):
//! - `per_request`: a wait before each request is answered (one round
//!   trip), whatever the answer;
//! - `per_connection`: a wait before the first request of a new connection
//!   is read (the TCP and TLS handshakes a real store costs), so a client
//!   that opens a connection per request pays it every time and one that
//!   keeps connections alive pays it once per connection.
//!
//! [`BlobServerStats::delayed_requests`] and
//! [`BlobServerStats::delayed_connections`] count what was delayed. A
//! latency change applies to requests and connections that arrive after
//! it.
//!
//! Connections are HTTP/1.1 keep-alive; each runs on its own task of the
//! tokio runtime that called [`BlobServer::serve_dir`]. Bodies are streamed
//! from the file in 256 KiB pieces, so memory does not grow with the range.
//!
//! # Invariants
//!
//! - Loopback only: [`BlobServer::serve_dir`] refuses any other address.
//! - Nothing outside the root is served: `..`, `.`, empty segments and
//!   encoded `/`, `\` or NUL are rejected (`400`), and a path whose
//!   canonical form (symbolic links resolved) leaves the canonical root is
//!   `404`.
//! - The server never panics on client input; a malformed `Range` is
//!   ignored (the RFC allows it) and a malformed date is treated as absent.
//! - [`BlobServerStats`] counters only grow.
//!
//! DEVNOTE: a request for several separate ranges (`bytes=0-1,5-6`) gets
//! the whole file (`200`), which RFC 9110 allows; `multipart/byteranges` is
//! not implemented because no disk client sends one.
//!
//! DEVNOTE: a file replaced by renaming a new one over it is seen at the
//! next request (new ETag). A file rewritten in place while a response is
//! streaming can still mix versions inside that one response: this server
//! trusts the directory to hold immutable images, as an image store does.
//!
//! FUTURE: TLS, HTTP/2 and `multipart/byteranges`.

#![forbid(unsafe_code)]

mod request_path;

use bytes::Bytes;
use http::HeaderMap;
use http::HeaderValue;
use http::Method;
use http::Request;
use http::Response;
use http::StatusCode;
use http::header;
use http_body_util::BodyExt;
use http_body_util::Empty;
use http_body_util::Full;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use http_ranges::Conditions;
use http_ranges::Decision;
use http_ranges::Version;
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::UNIX_EPOCH;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncSeekExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Size of one body piece read from the file.
const PIECE: usize = 256 * 1024;

/// How long [`BlobServer::shutdown`] lets open responses finish before it
/// drops their connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BlobServerError {
    /// The address is not a loopback address.
    #[error("the blob server listens on loopback only, not on {0}")]
    NotLoopback(SocketAddr),
    /// The root is not a readable directory.
    #[error("the blob server root {path} is not a directory")]
    NotADirectory {
        /// The root given.
        path: PathBuf,
        /// The cause, if the path could not be examined.
        #[source]
        source: Option<io::Error>,
    },
    /// The address could not be bound.
    #[error("binding the blob server to {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Request and traffic counters of a server, totals since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobServerStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Requests received (every method, every outcome).
    pub requests: u64,
    /// `HEAD` requests answered with `200`.
    pub head_requests: u64,
    /// `GET` requests answered with `206` (one range).
    pub range_requests: u64,
    /// `GET` requests answered with `200` (the whole file).
    pub full_requests: u64,
    /// Requests answered with `304`.
    pub not_modified: u64,
    /// Requests answered with `412`.
    pub precondition_failed: u64,
    /// Requests answered with `416`.
    pub range_not_satisfiable: u64,
    /// Requests answered with another `4xx` or `5xx`.
    pub errors: u64,
    /// Body bytes handed to connections.
    pub bytes_sent: u64,
    /// Requests that waited the per-request latency ([`Latency`]).
    pub delayed_requests: u64,
    /// Connections that waited the per-connection latency ([`Latency`]).
    pub delayed_connections: u64,
}

/// Simulated network latency (see the crate doc, "Latency"). Zero (the
/// default) adds nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    /// Waited before each request is answered: one round trip.
    pub per_request: Duration,
    /// Waited once per new connection, before its first request is read:
    /// the TCP (and, for a real store, TLS) handshakes.
    pub per_connection: Duration,
}

/// How a [`BlobServer`] behaves beyond its root and address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobServerOptions {
    /// Simulated network latency; none by default.
    pub latency: Latency,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    head_requests: AtomicU64,
    range_requests: AtomicU64,
    full_requests: AtomicU64,
    not_modified: AtomicU64,
    precondition_failed: AtomicU64,
    range_not_satisfiable: AtomicU64,
    errors: AtomicU64,
    bytes_sent: AtomicU64,
    delayed_requests: AtomicU64,
    delayed_connections: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> BlobServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlobServerStats {
            connections: get(&self.connections),
            requests: get(&self.requests),
            head_requests: get(&self.head_requests),
            range_requests: get(&self.range_requests),
            full_requests: get(&self.full_requests),
            not_modified: get(&self.not_modified),
            precondition_failed: get(&self.precondition_failed),
            range_not_satisfiable: get(&self.range_not_satisfiable),
            errors: get(&self.errors),
            bytes_sent: get(&self.bytes_sent),
            delayed_requests: get(&self.delayed_requests),
            delayed_connections: get(&self.delayed_connections),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct State {
    /// The canonical root.
    root: PathBuf,
    counters: Counters,
    /// [`Latency::per_request`] in microseconds.
    request_latency_us: AtomicU64,
    /// [`Latency::per_connection`] in microseconds.
    connection_latency_us: AtomicU64,
}

impl State {
    fn request_latency(&self) -> Duration {
        Duration::from_micros(self.request_latency_us.load(Ordering::Relaxed))
    }

    fn connection_latency(&self) -> Duration {
        Duration::from_micros(self.connection_latency_us.load(Ordering::Relaxed))
    }

    fn set_latency(&self, latency: Latency) {
        self.request_latency_us
            .store(micros(latency.per_request), Ordering::Relaxed);
        self.connection_latency_us
            .store(micros(latency.per_connection), Ordering::Relaxed);
    }
}

/// A duration in whole microseconds, saturating.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A running blob server. Stop it with [`BlobServer::shutdown`]; dropping
/// it stops it abruptly (open connections are dropped).
pub struct BlobServer {
    addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for BlobServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobServer")
            .field("addr", &self.addr)
            .field("root", &self.state.root)
            .finish()
    }
}

impl BlobServer {
    /// Serves the files under `dir` on `addr`, which must be a loopback
    /// address (port 0 picks a free port; see [`Self::local_addr`]). Must be
    /// called within a tokio runtime; the server runs on it until
    /// [`Self::shutdown`] or drop.
    pub async fn serve_dir(
        dir: impl AsRef<Path>,
        addr: SocketAddr,
    ) -> Result<BlobServer, BlobServerError> {
        Self::serve_dir_with(dir, addr, BlobServerOptions::default()).await
    }

    /// [`Self::serve_dir`] with options (e.g. a simulated [`Latency`]).
    pub async fn serve_dir_with(
        dir: impl AsRef<Path>,
        addr: SocketAddr,
        options: BlobServerOptions,
    ) -> Result<BlobServer, BlobServerError> {
        let dir = dir.as_ref();
        if !addr.ip().is_loopback() {
            return Err(BlobServerError::NotLoopback(addr));
        }
        let not_dir = |source| BlobServerError::NotADirectory {
            path: dir.to_owned(),
            source,
        };
        let root = tokio::fs::canonicalize(dir)
            .await
            .map_err(|e| not_dir(Some(e)))?;
        let meta = tokio::fs::metadata(&root)
            .await
            .map_err(|e| not_dir(Some(e)))?;
        if !meta.is_dir() {
            return Err(not_dir(None));
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BlobServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BlobServerError::Bind { addr, source })?;
        let state = Arc::new(State {
            root,
            counters: Counters::default(),
            request_latency_us: AtomicU64::new(0),
            connection_latency_us: AtomicU64::new(0),
        });
        state.set_latency(options.latency);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, state.clone(), stop_rx));
        tracing::debug!(%addr, root = %state.root.display(), "blob server started");
        Ok(BlobServer {
            addr,
            state,
            stop,
            task: Some(task),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL, `http://<addr>` without a trailing `/`: a file `f` of
    /// the root is at `<base_url>/f` (see [`Self::url`]). Suitable as
    /// `PETRI_ARTIFACT_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of `relative_path` (`/`-separated, each segment
    /// percent-encoded as needed).
    pub fn url(&self, relative_path: &str) -> String {
        let mut url = self.base_url();
        for segment in relative_path.split('/').filter(|s| !s.is_empty()) {
            url.push('/');
            for b in segment.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    url.push(b as char);
                } else {
                    url.push_str(&format!("%{b:02X}"));
                }
            }
        }
        url
    }

    /// The directory served (canonical form).
    pub fn root(&self) -> &Path {
        &self.state.root
    }

    /// Changes the simulated latency for requests and connections that
    /// arrive from now on.
    pub fn set_latency(&self, latency: Latency) {
        self.state.set_latency(latency);
    }

    /// The simulated latency in force.
    pub fn latency(&self) -> Latency {
        Latency {
            per_request: self.state.request_latency(),
            per_connection: self.state.connection_latency(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> BlobServerStats {
        self.state.counters.snapshot()
    }

    /// Stops accepting, lets requests in progress finish (up to
    /// [`SHUTDOWN_GRACE`]; idle keep-alive connections close at once), and
    /// returns the final counters.
    pub async fn shutdown(mut self) -> BlobServerStats {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.stats()
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts the
            // connection tasks.
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    bump(&state.counters.connections);
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, state.clone(), stop.clone()));
                }
                Err(err) => {
                    // Out of descriptors and the like: keep serving the
                    // connections we have and retry shortly.
                    tracing::warn!(error = %err, "blob server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "blob server: dropping connections still busy after the shutdown grace"
        );
        connections.abort_all();
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    // The handshakes of a far-away store: nothing is read before this.
    let handshake = state.connection_latency();
    if !handshake.is_zero() {
        bump(&state.counters.delayed_connections);
        tokio::select! {
            _ = tokio::time::sleep(handshake) => {}
            _ = stop.changed() => return,
        }
    }
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                tracing::debug!(error = %err, "blob server: connection ended with an error");
            }
            return;
        }
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

type Body = BoxBody<Bytes, io::Error>;

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(message.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn handle(state: &Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let c = &state.counters;
    bump(&c.requests);
    let round_trip = state.request_latency();
    if !round_trip.is_zero() {
        bump(&c.delayed_requests);
        tokio::time::sleep(round_trip).await;
    }
    let resp = respond(state, &req).await;
    match resp.status() {
        StatusCode::OK if req.method() == Method::HEAD => bump(&c.head_requests),
        StatusCode::OK => bump(&c.full_requests),
        StatusCode::PARTIAL_CONTENT => bump(&c.range_requests),
        StatusCode::NOT_MODIFIED => bump(&c.not_modified),
        StatusCode::PRECONDITION_FAILED => bump(&c.precondition_failed),
        StatusCode::RANGE_NOT_SATISFIABLE => bump(&c.range_not_satisfiable),
        _ => bump(&c.errors),
    }
    // The path only: the query may hold a secret.
    tracing::trace!(method = %req.method(), path = req.uri().path(), status = resp.status().as_u16(), "blob server request");
    resp
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn respond(state: &Arc<State>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
    };
    let segments = match request_path::request_segments(req.uri().path()) {
        Ok(s) => s,
        Err(_) => return text(StatusCode::BAD_REQUEST, "bad request path\n"),
    };
    let path = segments
        .iter()
        .fold(state.root.clone(), |p, segment| p.join(segment));
    // Symbolic links may point anywhere; serve only what stays under the root.
    let path = match tokio::fs::canonicalize(&path).await {
        Ok(p) if p.starts_with(&state.root) => p,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => {
            return text(StatusCode::FORBIDDEN, "forbidden\n");
        }
        Err(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    let meta = match file.metadata().await {
        Ok(m) if m.is_file() => m,
        Ok(_) => return text(StatusCode::NOT_FOUND, "not found\n"),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "blob server: stat failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n");
        }
    };
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .unwrap_or_default();
    let version = Version {
        len: meta.len(),
        etag: format!(
            "\"{:x}-{:x}{}\"",
            meta.len(),
            mtime.as_nanos(),
            file_identity(&meta)
        ),
        modified: mtime.as_secs(),
    };
    let h = req.headers();
    let conditions = Conditions {
        if_match: header_str(h, header::IF_MATCH),
        if_none_match: header_str(h, header::IF_NONE_MATCH),
        if_modified_since: header_str(h, header::IF_MODIFIED_SINCE),
        if_unmodified_since: header_str(h, header::IF_UNMODIFIED_SINCE),
        if_range: header_str(h, header::IF_RANGE),
        range: header_str(h, header::RANGE),
    };
    let decision = http_ranges::decide(&conditions, &version);
    let (status, start, count) = match decision {
        Decision::Full => (StatusCode::OK, 0, version.len),
        Decision::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Decision::NotModified => (StatusCode::NOT_MODIFIED, 0, 0),
        Decision::PreconditionFailed => (StatusCode::PRECONDITION_FAILED, 0, 0),
        Decision::RangeNotSatisfiable => (StatusCode::RANGE_NOT_SATISFIABLE, 0, 0),
    };
    let body = if head || count == 0 {
        empty()
    } else {
        if start > 0
            && let Err(err) = file.seek(io::SeekFrom::Start(start)).await
        {
            tracing::warn!(path = %path.display(), error = %err, "blob server: seek failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the file\n");
        }
        file_body(file, count, state.clone())
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    let mut set = |name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    set(header::ETAG, version.etag.clone());
    set(
        header::LAST_MODIFIED,
        http_ranges::date::format(version.modified),
    );
    set(header::ACCEPT_RANGES, "bytes".into());
    match decision {
        Decision::Full | Decision::Partial { .. } => {
            set(header::CONTENT_LENGTH, count.to_string());
            set(header::CONTENT_TYPE, "application/octet-stream".into());
            if let Decision::Partial { start, end } = decision {
                let content_range = http_ranges::ContentRange {
                    start,
                    end,
                    total: Some(version.len),
                };
                set(header::CONTENT_RANGE, content_range.to_string());
            }
        }
        Decision::RangeNotSatisfiable => {
            set(
                header::CONTENT_RANGE,
                http_ranges::content_range::unsatisfied(version.len),
            );
            set(header::CONTENT_LENGTH, "0".into());
        }
        Decision::PreconditionFailed => set(header::CONTENT_LENGTH, "0".into()),
        Decision::NotModified => {}
    }
    resp
}

/// What tells two versions of a file with the same length and
/// modification time apart (see the `ETag` rule in the crate doc): on
/// Unix, the device and inode numbers (a new version renamed over the old
/// one is another inode) and the inode's change time, which the kernel
/// sets on every write, rename or metadata change and nobody can set back
/// (an inode number freed by an old version and reused by a later one
/// still gets a new change time). Elsewhere nothing.
fn file_identity(meta: &std::fs::Metadata) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ctime_ns = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
        format!("-{:x}-{:x}-{:x}", meta.dev(), meta.ino(), ctime_ns)
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        String::new()
    }
}

/// Streams `count` bytes of `file` from its current position. A file that
/// turns out shorter than its metadata said ends the body with an error,
/// so the client sees a short, failed response rather than wrong bytes.
fn file_body(file: tokio::fs::File, count: u64, state: Arc<State>) -> Body {
    let stream =
        futures::stream::unfold((file, count, state), |(mut file, left, state)| async move {
            if left == 0 {
                return None;
            }
            let want = left.min(PIECE as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match file.read(&mut buf[filled..]).await {
                    Ok(0) => {
                        let err = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while it was being served",
                        );
                        return Some((Err(err), (file, 0, state)));
                    }
                    Ok(n) => filled += n,
                    Err(err) => return Some((Err(err), (file, 0, state))),
                }
            }
            state
                .counters
                .bytes_sent
                .fetch_add(want as u64, Ordering::Relaxed);
            let frame = Frame::data(Bytes::from(buf));
            Some((Ok(frame), (file, left - want as u64, state)))
        });
    StreamBody::new(stream).boxed()
}
