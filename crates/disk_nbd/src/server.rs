//! The server: export description, handshake, transmission and listeners.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use disk_backend::{Disk, DiskError};
use tokio::io::{
    AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::{OwnedSemaphorePermit, RwLock, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::protocol::*;

/// Default largest payload of one read or write request: 32 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Default budget of request payload bytes in flight per connection.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 128 << 20;

/// Default [`NbdServerOptions::max_parallel_reads`].
pub const DEFAULT_MAX_PARALLEL_READS: usize = 4;
/// Default [`NbdServerOptions::max_merged_read_bytes`]: 1 MiB.
pub const DEFAULT_MAX_MERGED_READ_BYTES: u32 = 1 << 20;

/// Default [`NbdServerOptions::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Granularity of the per-connection in-flight budget.
const PERMIT_UNIT: usize = 4096;
/// Option data up to this size is read and parsed.
const MAX_OPTION_DATA: u32 = 64 << 10;
/// Option data above [`MAX_OPTION_DATA`] and up to this size is skipped and
/// refused; anything larger ends the connection.
const MAX_OPTION_DRAIN: u32 = 16 << 20;
/// Chunk size used to write zeroes.
const ZERO_CHUNK: usize = 1 << 20;
/// Most bytes the server's buffer pool keeps while idle.
const POOL_MAX_BYTES: usize = 64 << 20;
/// Smallest pooled buffer.
const POOL_MIN_BUF: usize = 64 << 10;
/// Buffer size of the socket reader and of the handshake's writer.
const IO_BUF: usize = 256 << 10;
/// Send buffer asked for on accepted sockets: a 256 KiB read reply then
/// fits in one system call instead of waiting for the client to drain the
/// default ~200 KiB buffer mid-reply.
const SOCKET_SEND_BUF: usize = 4 << 20;

/// Errors of the NBD server.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The options passed to [`NbdServer::new`] are inconsistent.
    #[error("invalid NBD server options: {0}")]
    InvalidOptions(String),
    /// The listening socket could not be set up.
    #[error("failed to listen for NBD clients on {endpoint}")]
    Listen {
        /// The socket path or address.
        endpoint: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Reading from or writing to a client failed.
    #[error("NBD connection I/O failed")]
    Io(#[from] io::Error),
    /// The client broke the protocol in a way that ends the connection.
    #[error("NBD protocol violation by the client: {0}")]
    Protocol(String),
    /// The server was shut down; it does not listen again.
    #[error("the NBD server was shut down")]
    ShutDown,
    /// A request task ended without replying (it panicked).
    #[error("an NBD request task failed: {0}")]
    TaskFailed(String),
}

/// How an export is presented to clients.
#[derive(Debug, Clone)]
pub struct NbdServerOptions {
    /// The export's name. `None` accepts any name a client asks for (the
    /// server has exactly one export). `Some(name)` accepts only `name`
    /// and the empty name, which the protocol reserves for the default
    /// export; other names get `NBD_REP_ERR_UNKNOWN` (or a closed
    /// connection after `NBD_OPT_EXPORT_NAME`, as the protocol requires).
    pub export_name: Option<String>,
    /// A human-readable description, sent when a client asks for
    /// `NBD_INFO_DESCRIPTION`.
    pub description: Option<String>,
    /// Export read-only even if the disk accepts writes. A disk that is
    /// itself read-only is always exported read-only.
    pub read_only: bool,
    /// Largest read or write payload a client may request (advertised as
    /// the maximum block size). Larger requests get `EINVAL`.
    pub max_request_bytes: u32,
    /// Budget of request bytes in flight per connection; the server stops
    /// reading requests from a client that is over budget.
    pub max_in_flight_bytes: usize,
    /// Advertise a minimum block size of 1 byte instead of the disk's
    /// sector size. Unaligned requests are served correctly either way
    /// (widened reads, read-modify-write); this only tells clients not to
    /// align on their side.
    pub byte_granularity: bool,
    /// After [`NbdServer::shutdown`], how long a connection may take to
    /// deliver the replies of requests already in flight before they are
    /// dropped (a client that stopped reading could otherwise hold the
    /// shutdown up forever).
    pub shutdown_grace: Duration,
    /// Disk reads one connection runs at once (at least 1). A read keeps
    /// its slot until its reply is written, so a connection never holds
    /// more than this many read buffers that are filled but not yet sent,
    /// and the data goes out while it is still in the CPU cache. Other
    /// requests past this many wait (in the in-flight budget) for a slot.
    pub max_parallel_reads: usize,
    /// Read requests that arrive back to back and continue each other
    /// (each starts where the previous one ends) are served with one disk
    /// read of up to this many bytes, which does not extend past a multiple
    /// of this size (so merged reads line up with a cache's chunks of the
    /// same size); each still gets its own reply. Only requests already
    /// received are merged, never waited for. 0 turns merging off.
    pub max_merged_read_bytes: u32,
}

impl Default for NbdServerOptions {
    fn default() -> Self {
        NbdServerOptions {
            export_name: None,
            description: None,
            read_only: false,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            byte_granularity: false,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_parallel_reads: DEFAULT_MAX_PARALLEL_READS,
            max_merged_read_bytes: DEFAULT_MAX_MERGED_READ_BYTES,
        }
    }
}

/// The block size constraints the server advertises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size (1 or the sector size).
    pub minimum: u32,
    /// Preferred block size (the physical sector size, at least 4096).
    pub preferred: u32,
    /// Maximum payload of one request.
    pub maximum: u32,
}

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Connections accepted since the server was created.
    pub connections: u64,
    /// Connections currently open.
    pub active_connections: u64,
    /// Transmission requests received.
    pub requests: u64,
    /// Requests answered with an error.
    pub error_replies: u64,
    /// Payload bytes sent in read replies.
    pub bytes_read: u64,
    /// Reads sent to the disk; fewer than read requests when back-to-back
    /// requests were merged (see [`NbdServerOptions::max_merged_read_bytes`]).
    pub disk_reads: u64,
    /// Payload bytes written to the disk by write requests.
    pub bytes_written: u64,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    active_connections: AtomicU64,
    requests: AtomicU64,
    error_replies: AtomicU64,
    bytes_read: AtomicU64,
    disk_reads: AtomicU64,
    bytes_written: AtomicU64,
}

/// One exported disk and everything every connection to it shares.
struct Export {
    disk: Disk,
    name: Option<String>,
    description: Option<String>,
    read_only: bool,
    size: u64,
    sector_size: u64,
    block_sizes: BlockSizes,
    transmission_flags: u16,
    budget_units: u32,
    max_parallel_reads: usize,
    max_merged_read: u64,
    shutdown_grace: Duration,
    /// Writes that cover only part of a sector take this exclusively for
    /// their read-modify-write; all other writes take it shared. This keeps
    /// a partial-sector write from writing back stale bytes of a sector
    /// that a concurrent write (on any connection) is changing.
    rmw: RwLock<()>,
    zeroes: Box<[u8]>,
    pool: BufPool,
    stats: Stats,
    shutdown: watch::Sender<bool>,
}

/// An NBD server exporting one [`Disk`].
///
/// Cheap to clone; clones share the export, its counters and its shutdown
/// signal. Serve it on a Unix socket with [`NbdServer::listen_unix`], on
/// loopback TCP with [`NbdServer::listen_tcp`], or on any byte stream with
/// [`NbdServer::serve_connection`].
#[derive(Clone)]
pub struct NbdServer {
    export: Arc<Export>,
}

impl std::fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdServer")
            .field("disk", &self.export.disk)
            .field("name", &self.export.name)
            .field("read_only", &self.export.read_only)
            .field("block_sizes", &self.export.block_sizes)
            .finish()
    }
}

impl NbdServer {
    /// Describes an export of `disk`. Fails if the options are
    /// inconsistent (see [`NbdServerOptions`]).
    pub fn new(disk: Disk, options: NbdServerOptions) -> Result<Self, NbdError> {
        for (what, s) in [
            ("export name", &options.export_name),
            ("description", &options.description),
        ] {
            if let Some(s) = s
                && (s.len() > MAX_STRING_LEN || s.contains('\0'))
            {
                return Err(NbdError::InvalidOptions(format!(
                    "the {what} must be at most {MAX_STRING_LEN} bytes without NUL"
                )));
            }
        }
        let sector_size = disk.sector_size();
        let minimum = if options.byte_granularity {
            1
        } else {
            sector_size
        };
        let physical = disk.physical_sector_size();
        let preferred = if physical.is_power_of_two() {
            physical.max(4096).max(minimum)
        } else {
            4096u32.max(minimum)
        };
        let maximum = options.max_request_bytes;
        if maximum < preferred || !maximum.is_multiple_of(sector_size) {
            return Err(NbdError::InvalidOptions(format!(
                "max_request_bytes {maximum} must be a multiple of the sector size {sector_size} \
                 and at least the preferred block size {preferred}"
            )));
        }
        if options.max_in_flight_bytes < maximum as usize {
            return Err(NbdError::InvalidOptions(format!(
                "max_in_flight_bytes {} is smaller than max_request_bytes {maximum}",
                options.max_in_flight_bytes
            )));
        }
        if options.max_parallel_reads == 0 {
            return Err(NbdError::InvalidOptions(
                "max_parallel_reads must be at least 1".into(),
            ));
        }
        let budget_units = u32::try_from(options.max_in_flight_bytes / PERMIT_UNIT)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);

        let read_only = options.read_only || disk.is_read_only();
        let mut transmission_flags =
            FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_CAN_MULTI_CONN;
        if read_only {
            transmission_flags |= FLAG_READ_ONLY;
        } else {
            transmission_flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
        }
        let zeroes = if read_only {
            Box::default()
        } else {
            vec![0u8; ZERO_CHUNK].into_boxed_slice()
        };
        let (shutdown, _) = watch::channel(false);
        Ok(NbdServer {
            export: Arc::new(Export {
                size: disk.size_bytes(),
                sector_size: u64::from(sector_size),
                disk,
                name: options.export_name,
                description: options.description,
                read_only,
                block_sizes: BlockSizes {
                    minimum,
                    preferred,
                    maximum,
                },
                transmission_flags,
                budget_units,
                shutdown_grace: options.shutdown_grace,
                rmw: RwLock::new(()),
                zeroes,
                max_parallel_reads: options.max_parallel_reads,
                max_merged_read: u64::from(options.max_merged_read_bytes),
                pool: BufPool::default(),
                stats: Stats::default(),
                shutdown,
            }),
        })
    }

    /// The exported disk.
    pub fn disk(&self) -> &Disk {
        &self.export.disk
    }

    /// Size of the export in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.export.size
    }

    /// Whether the export refuses writes.
    pub fn is_read_only(&self) -> bool {
        self.export.read_only
    }

    /// The transmission flags sent to clients.
    pub fn transmission_flags(&self) -> u16 {
        self.export.transmission_flags
    }

    /// The advertised block size constraints.
    pub fn block_sizes(&self) -> BlockSizes {
        self.export.block_sizes
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> NbdStats {
        let s = &self.export.stats;
        NbdStats {
            connections: s.connections.load(Ordering::Relaxed),
            active_connections: s.active_connections.load(Ordering::Relaxed),
            requests: s.requests.load(Ordering::Relaxed),
            error_replies: s.error_replies.load(Ordering::Relaxed),
            bytes_read: s.bytes_read.load(Ordering::Relaxed),
            disk_reads: s.disk_reads.load(Ordering::Relaxed),
            bytes_written: s.bytes_written.load(Ordering::Relaxed),
        }
    }

    /// Asks every listener and connection of this server to stop: listeners
    /// stop accepting, connections in the handshake are closed, connections
    /// in transmission stop reading requests, finish the ones in flight,
    /// send their replies and close. Returns at once; await
    /// [`NbdListener::shutdown`] to wait for the end.
    pub fn shutdown(&self) {
        self.export.shutdown.send_replace(true);
    }

    /// Whether [`NbdServer::shutdown`] was called. A server that was shut
    /// down stays down: listening again fails with [`NbdError::ShutDown`].
    pub fn is_shut_down(&self) -> bool {
        *self.export.shutdown.borrow()
    }

    /// Serves one client over a byte stream split into its two halves,
    /// from the handshake to the end of the connection.
    ///
    /// Returns `Ok` when the client disconnects (cleanly or not during
    /// transmission) or the server shuts down; an error when the client
    /// broke the protocol or the stream failed. Either way the connection
    /// is over and other connections are unaffected.
    pub async fn serve_connection<R, W>(&self, reader: R, writer: W) -> Result<(), NbdError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let export = self.export.clone();
        export.stats.connections.fetch_add(1, Ordering::Relaxed);
        export
            .stats
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        let _active = ActiveGuard(export.clone());
        let mut shutdown = export.shutdown.subscribe();
        let mut reader = BufReader::with_capacity(IO_BUF, reader);
        let mut writer = BufWriter::with_capacity(IO_BUF, writer);
        let negotiated = tokio::select! {
            biased;
            _ = shutdown_signalled(&mut shutdown) => return Ok(()),
            r = handshake(&export, &mut reader, &mut writer) => r,
        };
        match negotiated {
            Ok(Negotiated::Transmit) => transmission(export, reader, writer, shutdown).await,
            Ok(Negotiated::Close) => {
                let _ = writer.shutdown().await;
                Ok(())
            }
            Err(NbdError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(()),
            Err(e) => {
                let _ = writer.shutdown().await;
                Err(e)
            }
        }
    }

    /// Listens on a Unix socket at `path` and serves every client that
    /// connects, each on its own task, until shut down.
    ///
    /// A stale socket file left by a dead server is replaced; a socket with
    /// a live server behind it, or any other file, is an error.
    pub async fn listen_unix(&self, path: impl AsRef<Path>) -> Result<NbdListener, NbdError> {
        if self.is_shut_down() {
            return Err(NbdError::ShutDown);
        }
        let path = path.as_ref().to_path_buf();
        let err = |source| NbdError::Listen {
            endpoint: path.display().to_string(),
            source,
        };
        remove_stale_socket(&path).map_err(err)?;
        let listener = tokio::net::UnixListener::bind(&path).map_err(err)?;
        let task = tokio::spawn(accept_loop(self.clone(), listener));
        Ok(NbdListener {
            server: self.clone(),
            endpoint: Endpoint::Unix(path),
            task: Some(task),
        })
    }

    /// Listens on a TCP address, which must be a loopback address (the
    /// protocol has no authentication here), e.g. `127.0.0.1:0` for any
    /// free port.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> Result<NbdListener, NbdError> {
        if !addr.ip().is_loopback() {
            return Err(NbdError::InvalidOptions(format!(
                "refusing to serve NBD on {addr}: only loopback addresses are allowed"
            )));
        }
        if self.is_shut_down() {
            return Err(NbdError::ShutDown);
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| NbdError::Listen {
                endpoint: addr.to_string(),
                source,
            })?;
        let local = listener.local_addr().map_err(|source| NbdError::Listen {
            endpoint: addr.to_string(),
            source,
        })?;
        let task = tokio::spawn(accept_loop(self.clone(), listener));
        Ok(NbdListener {
            server: self.clone(),
            endpoint: Endpoint::Tcp(local),
            task: Some(task),
        })
    }
}

/// Exports `disk` on a Unix socket at `path`: [`NbdServer::new`] followed
/// by [`NbdServer::listen_unix`].
pub async fn serve_unix(
    path: impl AsRef<Path>,
    disk: Disk,
    options: NbdServerOptions,
) -> Result<NbdListener, NbdError> {
    NbdServer::new(disk, options)?.listen_unix(path).await
}

struct ActiveGuard(Arc<Export>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0
            .stats
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the shutdown flag is set; never resolves if the sender is
/// gone (it lives as long as the export).
async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Where a listener listens.
#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A running listener. Dropping it shuts the server down without waiting;
/// call [`NbdListener::shutdown`] to wait for every connection to finish.
#[derive(Debug)]
pub struct NbdListener {
    server: NbdServer,
    endpoint: Endpoint,
    task: Option<JoinHandle<()>>,
}

impl NbdListener {
    /// The server behind this listener.
    pub fn server(&self) -> &NbdServer {
        &self.server
    }

    /// The Unix socket path, for a Unix listener.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Unix(p) => Some(p),
            Endpoint::Tcp(_) => None,
        }
    }

    /// The bound address, for a TCP listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.endpoint {
            Endpoint::Unix(_) => None,
            Endpoint::Tcp(a) => Some(*a),
        }
    }

    /// The export as an NBD URI that QEMU and libnbd understand:
    /// `nbd+unix:///NAME?socket=PATH` or `nbd://ADDR/NAME`.
    ///
    /// The name and path are percent-encoded where URI syntax needs it.
    pub fn nbd_uri(&self) -> String {
        let name = uri_escape(self.server.export.name.as_deref().unwrap_or("").as_bytes());
        match &self.endpoint {
            Endpoint::Unix(p) => {
                use std::os::unix::ffi::OsStrExt;
                let path = uri_escape(p.as_os_str().as_bytes());
                format!("nbd+unix:///{name}?socket={path}")
            }
            Endpoint::Tcp(a) => format!("nbd://{a}/{name}"),
        }
    }

    /// Resolves once the server has been asked to shut down (by
    /// [`NbdServer::shutdown`] on any clone). Use it to serve "until
    /// stopped", then call [`NbdListener::shutdown`] to wait for the
    /// connections.
    pub async fn closed(&self) {
        let mut rx = self.server.export.shutdown.subscribe();
        shutdown_signalled(&mut rx).await;
    }

    /// Shuts the server down (see [`NbdServer::shutdown`]), waits until
    /// the listener and all its connections have finished, and removes the
    /// socket file.
    pub async fn shutdown(mut self) -> Result<(), NbdError> {
        self.server.shutdown();
        let result = match self.task.take() {
            Some(task) => task.await.map_err(|e| NbdError::TaskFailed(e.to_string())),
            None => Ok(()),
        };
        self.remove_socket();
        result
    }

    fn remove_socket(&self) {
        if let Endpoint::Unix(p) = &self.endpoint {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Percent-encodes everything but unreserved URI characters and `/`.
fn uri_escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Drop for NbdListener {
    fn drop(&mut self) {
        if self.task.is_some() {
            self.server.shutdown();
            self.remove_socket();
        }
    }
}

/// A listening socket the accept loop can take connections from.
trait Acceptor: Send + 'static {
    type Read: AsyncRead + Unpin + Send + 'static;
    type Write: AsyncWrite + Unpin + Send + 'static;
    fn accept_split(&self) -> impl Future<Output = io::Result<(Self::Read, Self::Write)>> + Send;
}

impl Acceptor for tokio::net::UnixListener {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    async fn accept_split(&self) -> io::Result<(Self::Read, Self::Write)> {
        let (s, _) = self.accept().await?;
        grow_send_buffer(&s);
        Ok(s.into_split())
    }
}

/// Asks the kernel for a send buffer of [`SOCKET_SEND_BUF`] bytes (it caps
/// the request at `net.core.wmem_max`). Best effort: a failure only costs
/// speed.
fn grow_send_buffer<S: std::os::fd::AsFd>(s: &S) {
    if let Err(e) = socket2::SockRef::from(s).set_send_buffer_size(SOCKET_SEND_BUF) {
        tracing::debug!(
            error = &e as &dyn std::error::Error,
            "could not grow the NBD socket's send buffer"
        );
    }
}

impl Acceptor for tokio::net::TcpListener {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    async fn accept_split(&self) -> io::Result<(Self::Read, Self::Write)> {
        let (s, _) = self.accept().await?;
        s.set_nodelay(true)?;
        grow_send_buffer(&s);
        Ok(s.into_split())
    }
}

async fn accept_loop<A: Acceptor>(server: NbdServer, listener: A) {
    let mut shutdown = server.export.shutdown.subscribe();
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            biased;
            _ = shutdown_signalled(&mut shutdown) => break,
            r = listener.accept_split() => r,
        };
        match accepted {
            Ok((r, w)) => {
                next_id += 1;
                let id = next_id;
                let server = server.clone();
                connections.spawn(async move {
                    match server.serve_connection(r, w).await {
                        Ok(()) => tracing::debug!(connection = id, "NBD client disconnected"),
                        Err(e) => tracing::info!(
                            connection = id,
                            error = &e as &dyn std::error::Error,
                            "NBD connection ended with an error"
                        ),
                    }
                });
            }
            Err(e) => {
                // Typically EMFILE; back off briefly instead of spinning.
                tracing::warn!(
                    error = &e as &dyn std::error::Error,
                    "accepting an NBD client failed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

enum Negotiated {
    Transmit,
    Close,
}

impl Export {
    /// Whether a client asking for `name` gets this export.
    fn accepts(&self, name: &[u8]) -> bool {
        match &self.name {
            None => true,
            Some(n) => name.is_empty() || name == n.as_bytes(),
        }
    }

    fn canonical_name<'a>(&'a self, asked: &'a [u8]) -> &'a [u8] {
        match &self.name {
            Some(n) => n.as_bytes(),
            None => asked,
        }
    }

    fn in_range(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }
}

async fn write_option_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut h = [0u8; 20];
    h[0..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&option.to_be_bytes());
    h[12..16].copy_from_slice(&reply.to_be_bytes());
    let len = u32::try_from(data.len()).map_err(|_| io::Error::other("option reply too long"))?;
    h[16..20].copy_from_slice(&len.to_be_bytes());
    w.write_all(&h).await?;
    w.write_all(data).await
}

async fn drain<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if copied != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Parses the data of `NBD_OPT_INFO`/`NBD_OPT_GO`: the export name and the
/// list of requested information types.
fn parse_info_request(data: &[u8]) -> Option<(&[u8], Vec<u16>)> {
    let mut c = Cursor::new(data);
    let name_len = c.u32()? as usize;
    if name_len > MAX_STRING_LEN {
        return None;
    }
    let name = c.take(name_len)?;
    let n = c.u16()?;
    let mut infos = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        infos.push(c.u16()?);
    }
    c.is_empty().then_some((name, infos))
}

async fn handshake<R, W>(export: &Export, r: &mut R, w: &mut W) -> Result<Negotiated, NbdError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut hello = [0u8; 18];
    hello[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    hello[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    hello[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&hello).await?;
    w.flush().await?;

    let client_flags = r.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;

    let mut data = Vec::new();
    loop {
        let magic = r.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(NbdError::Protocol(format!("bad option magic {magic:#x}")));
        }
        let option = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION_DATA {
            if len > MAX_OPTION_DRAIN {
                return Err(NbdError::Protocol(format!(
                    "option {option} carries {len} bytes of data"
                )));
            }
            drain(r, u64::from(len)).await?;
            let reply = if matches!(option, OPT_EXPORT_NAME | OPT_LIST | OPT_INFO | OPT_GO) {
                REP_ERR_TOO_BIG
            } else {
                REP_ERR_UNSUP
            };
            if option == OPT_EXPORT_NAME {
                // No error reply exists for NBD_OPT_EXPORT_NAME.
                return Ok(Negotiated::Close);
            }
            write_option_reply(w, option, reply, b"option data too large").await?;
            w.flush().await?;
            continue;
        }
        data.resize(len as usize, 0);
        r.read_exact(&mut data).await?;

        match option {
            OPT_EXPORT_NAME => {
                if data.len() > MAX_STRING_LEN || !export.accepts(&data) {
                    tracing::debug!("NBD client asked for an unknown export; closing");
                    return Ok(Negotiated::Close);
                }
                let mut reply = [0u8; 10 + 124];
                reply[0..8].copy_from_slice(&export.size.to_be_bytes());
                reply[8..10].copy_from_slice(&export.transmission_flags.to_be_bytes());
                let n = if no_zeroes { 10 } else { reply.len() };
                w.write_all(&reply[..n]).await?;
                w.flush().await?;
                return Ok(Negotiated::Transmit);
            }
            OPT_ABORT => {
                // The client may already be gone; the session ends either way.
                let _ = write_option_reply(w, option, REP_ACK, &[]).await;
                let _ = w.flush().await;
                return Ok(Negotiated::Close);
            }
            OPT_LIST => {
                if data.is_empty() {
                    let name = export.name.as_deref().unwrap_or("").as_bytes();
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name);
                    write_option_reply(w, option, REP_SERVER, &d).await?;
                    write_option_reply(w, option, REP_ACK, &[]).await?;
                } else {
                    write_option_reply(w, option, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")
                        .await?;
                }
            }
            OPT_INFO | OPT_GO => match parse_info_request(&data) {
                None => {
                    write_option_reply(w, option, REP_ERR_INVALID, b"malformed info request")
                        .await?;
                }
                Some((name, _)) if !export.accepts(name) => {
                    write_option_reply(w, option, REP_ERR_UNKNOWN, b"no such export").await?;
                }
                Some((name, infos)) => {
                    let mut d = Vec::with_capacity(16);
                    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                    d.extend_from_slice(&export.size.to_be_bytes());
                    d.extend_from_slice(&export.transmission_flags.to_be_bytes());
                    write_option_reply(w, option, REP_INFO, &d).await?;

                    // Sent whether or not it was asked for: the server
                    // accepts any alignment, so a client that ignores it
                    // loses nothing, and one that honours it aligns.
                    let bs = export.block_sizes;
                    d.clear();
                    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                    d.extend_from_slice(&bs.minimum.to_be_bytes());
                    d.extend_from_slice(&bs.preferred.to_be_bytes());
                    d.extend_from_slice(&bs.maximum.to_be_bytes());
                    write_option_reply(w, option, REP_INFO, &d).await?;

                    if infos.contains(&INFO_NAME) {
                        d.clear();
                        d.extend_from_slice(&INFO_NAME.to_be_bytes());
                        d.extend_from_slice(export.canonical_name(name));
                        write_option_reply(w, option, REP_INFO, &d).await?;
                    }
                    if infos.contains(&INFO_DESCRIPTION)
                        && let Some(desc) = &export.description
                    {
                        d.clear();
                        d.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
                        d.extend_from_slice(desc.as_bytes());
                        write_option_reply(w, option, REP_INFO, &d).await?;
                    }
                    write_option_reply(w, option, REP_ACK, &[]).await?;
                    if option == OPT_GO {
                        w.flush().await?;
                        return Ok(Negotiated::Transmit);
                    }
                }
            },
            _ => {
                // Includes NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, the
                // metadata context options and NBD_OPT_EXTENDED_HEADERS:
                // this server speaks simple replies only.
                write_option_reply(w, option, REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
        w.flush().await?;
    }
}

/// A pool of request buffers shared by all connections, so steady-state
/// requests neither allocate nor fault in fresh pages.
///
/// Buffers are matched by capacity, in powers of two (at least
/// [`POOL_MIN_BUF`]), and keep the length their last user gave them: a
/// [`PooledBuf`] is resized to the length asked for, which writes zeroes
/// only where it grows past that. Their contents are stale data of earlier
/// requests, so every user overwrites the bytes it uses before sending any
/// of them (a disk read fills its whole buffer or fails; a payload read is
/// exact). A whole buffer can be lent by value (a disk's `read_owned`).
#[derive(Default)]
struct BufPool {
    bufs: parking_lot::Mutex<Vec<Vec<u8>>>,
}

/// A buffer taken from a [`BufPool`], exactly as long as asked for.
struct PooledBuf {
    buf: Vec<u8>,
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl BufPool {
    fn get(&self, len: usize) -> PooledBuf {
        let class = len.max(POOL_MIN_BUF).next_power_of_two();
        let reused = {
            let mut bufs = self.bufs.lock();
            // The most recently returned buffer of the class: it is the
            // likeliest to still be in the CPU cache.
            bufs.iter()
                .rposition(|b| b.capacity() == class)
                .map(|i| bufs.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(class));
        buf.resize(len, 0);
        PooledBuf { buf }
    }

    fn put(&self, buf: PooledBuf) {
        let buf = buf.buf;
        let class = buf.capacity();
        // Only buffers of a class (not one a disk handed back in another
        // shape) are kept.
        if !class.is_power_of_two() || class < POOL_MIN_BUF {
            return;
        }
        let mut bufs = self.bufs.lock();
        let held: usize = bufs.iter().map(Vec::capacity).sum();
        if held + class <= POOL_MAX_BYTES {
            bufs.push(buf);
        }
    }
}

/// State of one connection in transmission, shared by its request tasks.
struct Conn {
    export: Arc<Export>,
    /// The connection's sending half. Each request task writes its own
    /// reply (header and payload in one vectored write) as soon as it has
    /// it, under this lock, so a reply is never interleaved with another
    /// and the data goes out from the thread that just read it, while it
    /// is still in the CPU cache.
    writer: tokio::sync::Mutex<ReplyStream>,
    /// Set once writing a reply failed (the client is gone): later replies
    /// are dropped and the reader stops.
    write_failed: std::sync::atomic::AtomicBool,
    /// The first write error, for the connection's result.
    write_error: parking_lot::Mutex<Option<io::Error>>,
    /// Wakes the reader when a write failed.
    write_failed_notify: tokio::sync::Notify,
    budget: Arc<Semaphore>,
    /// [`NbdServerOptions::max_parallel_reads`] slots.
    read_slots: Semaphore,
}

/// The sending half of a connection, type-erased so that [`Conn`] is not
/// generic.
type ReplyStream = Box<dyn AsyncWrite + Unpin + Send>;

enum Flow {
    Continue,
    Disconnect,
}

async fn transmission<R, W>(
    export: Arc<Export>,
    mut reader: BufReader<R>,
    writer: BufWriter<W>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // The handshake flushed everything it wrote; replies bypass the
    // buffer and go out with vectored writes.
    let writer: ReplyStream = Box::new(writer.into_inner());
    let conn = Arc::new(Conn {
        budget: Arc::new(Semaphore::new(export.budget_units as usize)),
        read_slots: Semaphore::new(export.max_parallel_reads),
        export,
        writer: tokio::sync::Mutex::new(writer),
        write_failed: Default::default(),
        write_error: Default::default(),
        write_failed_notify: Default::default(),
    });
    let mut tasks = JoinSet::new();
    let mut header = [0u8; REQUEST_HEADER_LEN];
    let mut result = 'conn: loop {
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done {
                break 'conn Err(NbdError::TaskFailed(e.to_string()));
            }
        }
        // The whole step (header, budget, payload) gives way to shutdown,
        // so a client that stalls mid-request cannot hold the server up.
        // A reply that could not be written (the client is gone) ends the
        // reading too.
        let step = tokio::select! {
            biased;
            _ = shutdown_signalled(&mut shutdown) => break Ok(()),
            _ = conn.write_failed_notify.notified() => break Ok(()),
            r = conn.next_request(&mut reader, &mut header, &mut tasks) => r,
        };
        match step {
            Ok(Flow::Continue) => {}
            Ok(Flow::Disconnect) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(reader);

    // Finish what is in flight, so every request read gets its reply. A
    // client that stops reading replies can block that forever; once the
    // server shuts down it gets `shutdown_grace`, then the work is dropped.
    let grace = conn.export.shutdown_grace;
    let finish = async {
        let mut r = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done
                && r.is_ok()
            {
                r = Err(NbdError::TaskFailed(e.to_string()));
            }
        }
        if !conn.write_failed.load(Ordering::Acquire) {
            // The client may already be gone; the connection ends anyway.
            let _ = conn.writer.lock().await.shutdown().await;
        }
        r
    };
    let finished = tokio::select! {
        r = finish => {
            if result.is_ok() {
                result = r;
            }
            true
        }
        _ = async {
            shutdown_signalled(&mut shutdown).await;
            tokio::time::sleep(grace).await;
        } => false,
    };
    if !finished {
        tracing::info!("NBD client did not take its replies within the shutdown grace period");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    if result.is_ok()
        && let Some(e) = conn.write_error.lock().take()
    {
        result = Err(e.into());
    }
    match result {
        Err(NbdError::Io(e)) if is_disconnect(&e) => Ok(()),
        r => r,
    }
}

/// Writes every byte of `slices`, as few system calls as the stream
/// allows.
async fn write_all_vectored<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    mut slices: &mut [io::IoSlice<'_>],
) -> io::Result<()> {
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        io::IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

fn is_disconnect(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Maps a disk error to an NBD error value.
fn errno(e: &DiskError, writing: bool) -> u32 {
    match e {
        DiskError::OutOfRange { .. } if writing => ENOSPC,
        DiskError::OutOfRange { .. } => EINVAL,
        DiskError::ReadOnly => EPERM,
        DiskError::InvalidArgument(_) => EINVAL,
        DiskError::Io { .. } => EIO,
    }
}

impl Conn {
    /// Writes one simple reply (header, then `data` for a successful read)
    /// with one vectored write under the writer lock. If the client is
    /// gone the reply is dropped and the reader is told to stop.
    async fn reply(&self, cookie: u64, error: u32, data: &[u8]) {
        if error != 0 {
            self.export
                .stats
                .error_replies
                .fetch_add(1, Ordering::Relaxed);
        }
        let header = encode_simple_reply(error, cookie);
        let mut slices = [io::IoSlice::new(&header), io::IoSlice::new(data)];
        self.write_reply_slices(&mut slices).await;
    }

    /// Writes whole replies under the writer lock, with as few system
    /// calls as the socket allows. If the client is gone the replies are
    /// dropped and the reader is told to stop.
    async fn write_reply_slices(&self, slices: &mut [io::IoSlice<'_>]) {
        let mut w = self.writer.lock().await;
        if self.write_failed.load(Ordering::Acquire) {
            return;
        }
        let mut res = write_all_vectored(&mut *w, slices).await;
        if res.is_ok() {
            // A no-op on sockets; other streams may buffer.
            res = w.flush().await;
        }
        if let Err(e) = res {
            self.write_failed.store(true, Ordering::Release);
            self.write_error.lock().get_or_insert(e);
            self.write_failed_notify.notify_one();
        }
    }

    /// Answers an error from the reader without waiting for the writer:
    /// the reply is written by a task of its own. It takes a unit of the
    /// in-flight budget like any request, so a client that sends bad
    /// requests without reading the replies cannot queue them without
    /// bound.
    async fn reply_now(
        self: &Arc<Self>,
        cookie: u64,
        error: u32,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), NbdError> {
        let permit = self.acquire(0).await?;
        let conn = self.clone();
        tasks.spawn(async move {
            conn.reply(cookie, error, &[]).await;
            drop(permit);
        });
        Ok(())
    }

    async fn acquire(&self, len: u64) -> Result<OwnedSemaphorePermit, NbdError> {
        let units = (len / PERMIT_UNIT as u64 + 1).min(u64::from(self.export.budget_units)) as u32;
        self.budget
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| NbdError::TaskFailed("request budget closed".into()))
    }

    /// Reads the next request header and dispatches it.
    async fn next_request<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        reader: &mut BufReader<R>,
        header: &mut [u8; REQUEST_HEADER_LEN],
        tasks: &mut JoinSet<()>,
    ) -> Result<Flow, NbdError> {
        match reader.read_exact(header).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Flow::Disconnect),
            Err(e) => return Err(e.into()),
        }
        let Some(req) = RequestHeader::decode(header) else {
            return Err(NbdError::Protocol("bad request magic".into()));
        };
        self.dispatch(req, reader, tasks).await
    }

    /// Handles one request header: validates it, consumes its payload and
    /// either answers an error at once or spawns the work.
    async fn dispatch<R: AsyncRead + Unpin>(
        self: &Arc<Self>,
        req: RequestHeader,
        reader: &mut BufReader<R>,
        tasks: &mut JoinSet<()>,
    ) -> Result<Flow, NbdError> {
        let export = &self.export;
        export.stats.requests.fetch_add(1, Ordering::Relaxed);
        let len = u64::from(req.length);
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let allowed_flags = match req.command {
            CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
            _ => CMD_FLAG_FUA,
        };
        let bad_flags = req.flags & !allowed_flags != 0;
        let max = u64::from(export.block_sizes.maximum);

        match req.command {
            CMD_DISC => Ok(Flow::Disconnect),
            CMD_READ => {
                let error = if bad_flags || len > max || !export.in_range(req.offset, len) {
                    EINVAL
                } else {
                    0
                };
                if error != 0 {
                    self.reply_now(req.cookie, error, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let mut parts = vec![ReadPart {
                    cookie: req.cookie,
                    len: req.length,
                }];
                let total = self.merge_reads(req.offset + len, &mut parts, reader);
                let permit = self.acquire(total).await?;
                let conn = self.clone();
                tasks.spawn(async move {
                    conn.do_read(req.offset, total, parts, permit).await;
                });
                Ok(Flow::Continue)
            }
            CMD_WRITE => {
                let error = if bad_flags || len > max {
                    EINVAL
                } else if export.read_only {
                    EPERM
                } else if !export.in_range(req.offset, len) {
                    ENOSPC
                } else {
                    0
                };
                if error != 0 {
                    // The payload follows the header whatever we think of
                    // the request; skip it to stay in step.
                    drain(reader, len).await?;
                    self.reply_now(req.cookie, error, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let permit = self.acquire(len).await?;
                let mut buf = self.export.pool.get(req.length as usize);
                reader.read_exact(&mut buf).await?;
                let conn = self.clone();
                tasks.spawn(async move {
                    let res = conn.export.write_bytes(req.offset, &buf, fua).await;
                    conn.export.pool.put(buf);
                    let error = match res {
                        Ok(()) => {
                            conn.export
                                .stats
                                .bytes_written
                                .fetch_add(len, Ordering::Relaxed);
                            0
                        }
                        Err(e) => log_disk_error(&e, "write", true),
                    };
                    conn.reply(req.cookie, error, &[]).await;
                    drop(permit);
                });
                Ok(Flow::Continue)
            }
            CMD_FLUSH => {
                if bad_flags {
                    self.reply_now(req.cookie, EINVAL, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let permit = self.acquire(0).await?;
                let conn = self.clone();
                tasks.spawn(async move {
                    let error = match conn.export.disk.sync_cache().await {
                        Ok(()) => 0,
                        Err(e) => log_disk_error(&e, "flush", true),
                    };
                    conn.reply(req.cookie, error, &[]).await;
                    drop(permit);
                });
                Ok(Flow::Continue)
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                let zero = req.command == CMD_WRITE_ZEROES;
                let error = if bad_flags {
                    EINVAL
                } else if export.read_only {
                    EPERM
                } else if !export.in_range(req.offset, len) {
                    if zero { ENOSPC } else { EINVAL }
                } else {
                    0
                };
                if error != 0 {
                    self.reply_now(req.cookie, error, tasks).await?;
                    return Ok(Flow::Continue);
                }
                let permit = self.acquire(0).await?;
                let conn = self.clone();
                tasks.spawn(async move {
                    let res = if zero {
                        conn.export.write_zeroes(req.offset, len, fua).await
                    } else {
                        conn.export.trim(req.offset, len, fua).await
                    };
                    let error = match res {
                        Ok(()) => 0,
                        Err(e) => {
                            log_disk_error(&e, if zero { "write zeroes" } else { "trim" }, true)
                        }
                    };
                    conn.reply(req.cookie, error, &[]).await;
                    drop(permit);
                });
                Ok(Flow::Continue)
            }
            _ => {
                // Unknown commands (and NBD_CMD_CACHE/BLOCK_STATUS, which
                // are not negotiated) carry no payload without extended
                // headers, so the stream stays in step.
                self.reply_now(req.cookie, EINVAL, tasks).await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// Takes the read requests that follow at once in the reader's buffer
    /// and continue the one just read (same command, no flags, starting
    /// where the previous one ends, valid on their own), up to
    /// [`MAX_MERGED_READ`] bytes in all and not past a multiple of it, and
    /// adds them to `parts`. Never
    /// waits for more input. Returns the merged length in bytes.
    fn merge_reads<R: AsyncRead + Unpin>(
        &self,
        mut end: u64,
        parts: &mut Vec<ReadPart>,
        reader: &mut BufReader<R>,
    ) -> u64 {
        let export = &self.export;
        let max = u64::from(export.block_sizes.maximum);
        let mut total: u64 = parts.iter().map(|p| u64::from(p.len)).sum();
        let limit = export.max_merged_read;
        while let Some(head) = reader.buffer().first_chunk::<REQUEST_HEADER_LEN>() {
            let Some(next) = RequestHeader::decode(head) else {
                break;
            };
            let len = u64::from(next.length);
            if next.command != CMD_READ
                || next.flags != 0
                || next.offset != end
                || len == 0
                || len > max
                || total + len > limit
                // Merged reads stop at multiples of the limit: below a
                // chunked cache (1 MiB rows, the default limit), a read of
                // whole rows is copied straight into the buffer, while a
                // read that straddles two rows reads their partial pages
                // through SQLite's page cache (for nbdcopy's 256 KiB reads
                // of a warm cache: 1.48x the bytes served copied out of the
                // kernel's page cache before, 1.29x after).
                || end.is_multiple_of(limit)
                || !export.in_range(next.offset, len)
            {
                break;
            }
            std::pin::Pin::new(&mut *reader).consume(REQUEST_HEADER_LEN);
            export.stats.requests.fetch_add(1, Ordering::Relaxed);
            parts.push(ReadPart {
                cookie: next.cookie,
                len: next.length,
            });
            end += len;
            total += len;
        }
        total
    }

    /// Serves `parts`, read requests that cover `total` bytes from
    /// `offset` back to back, with one disk read and one vectored write of
    /// all their replies.
    async fn do_read(
        &self,
        offset: u64,
        total: u64,
        parts: Vec<ReadPart>,
        permit: OwnedSemaphorePermit,
    ) {
        let export = &self.export;
        if total == 0 {
            self.reply_parts(&parts, 0, None).await;
            drop(permit);
            return;
        }
        let ss = export.sector_size;
        let head = offset % ss;
        let start = offset - head;
        let end = offset + total;
        let aligned_end = end.div_ceil(ss) * ss;
        // Never closed, so this always gets a slot.
        let slot = self.read_slots.acquire().await.ok();
        let buf = export.pool.get((aligned_end - start) as usize);
        export.stats.disk_reads.fetch_add(1, Ordering::Relaxed);
        // Lent by value: a disk whose data comes from another thread fills
        // it there instead of copying.
        let (buf, res) = export.disk.read_owned(start / ss, buf.buf).await;
        let buf = PooledBuf { buf };
        match res {
            Ok(()) => {
                export.stats.bytes_read.fetch_add(total, Ordering::Relaxed);
                let head = head as usize;
                self.reply_parts(&parts, 0, Some(&buf[head..head + total as usize]))
                    .await;
            }
            Err(e) => {
                let error = log_disk_error(&e, "read", false);
                self.reply_parts(&parts, error, None).await;
            }
        }
        drop(slot);
        export.pool.put(buf);
        drop(permit);
    }

    /// Replies to every part of a (merged) read with one vectored write:
    /// on success each header is followed by its slice of `data`.
    async fn reply_parts(&self, parts: &[ReadPart], error: u32, data: Option<&[u8]>) {
        if error != 0 {
            self.export
                .stats
                .error_replies
                .fetch_add(parts.len() as u64, Ordering::Relaxed);
        }
        let headers: Vec<[u8; SIMPLE_REPLY_LEN]> = parts
            .iter()
            .map(|p| encode_simple_reply(error, p.cookie))
            .collect();
        let mut slices = Vec::with_capacity(2 * parts.len());
        let mut at = 0;
        for (h, p) in headers.iter().zip(parts) {
            slices.push(io::IoSlice::new(h));
            if let Some(data) = data {
                let n = p.len as usize;
                slices.push(io::IoSlice::new(&data[at..at + n]));
                at += n;
            }
        }
        self.write_reply_slices(&mut slices).await;
    }
}

/// One request of a merged read.
struct ReadPart {
    cookie: u64,
    len: u32,
}

fn log_disk_error(e: &DiskError, what: &str, writing: bool) -> u32 {
    let error = errno(e, writing);
    tracing::warn!(
        error = e as &dyn std::error::Error,
        errno = error,
        "NBD {what} failed"
    );
    error
}

impl Export {
    /// Writes `data` at byte `offset`, which the caller has range-checked.
    /// Whole-sector writes go straight to the disk; partial sectors at
    /// either end are merged with the disk's current contents under the
    /// exclusive side of [`Export::rmw`].
    async fn write_bytes(&self, offset: u64, data: &[u8], fua: bool) -> Result<(), DiskError> {
        if data.is_empty() {
            return Ok(());
        }
        let ss = self.sector_size;
        let end = offset + data.len() as u64;
        if offset.is_multiple_of(ss) && end.is_multiple_of(ss) {
            let _shared = self.rmw.read().await;
            return self.disk.write(offset / ss, data, fua).await;
        }
        let _exclusive = self.rmw.write().await;
        let ssz = ss as usize;
        let first = offset / ss;
        let last = (end - 1) / ss;
        if first == last {
            let mut sector = vec![0u8; ssz];
            self.disk.read(first, &mut sector).await?;
            let at = (offset - first * ss) as usize;
            sector[at..at + data.len()].copy_from_slice(data);
            return self.disk.write(first, &sector, fua).await;
        }
        let mut rest = data;
        let mut sector_no = first;
        let head = (offset % ss) as usize;
        if head != 0 {
            let mut sector = vec![0u8; ssz];
            self.disk.read(first, &mut sector).await?;
            let n = ssz - head;
            sector[head..].copy_from_slice(&rest[..n]);
            self.disk.write(first, &sector, fua).await?;
            rest = &rest[n..];
            sector_no += 1;
        }
        let whole = rest.len() / ssz * ssz;
        if whole > 0 {
            self.disk.write(sector_no, &rest[..whole], fua).await?;
            rest = &rest[whole..];
        }
        if !rest.is_empty() {
            let mut sector = vec![0u8; ssz];
            self.disk.read(last, &mut sector).await?;
            sector[..rest.len()].copy_from_slice(rest);
            self.disk.write(last, &sector, fua).await?;
        }
        Ok(())
    }

    /// Writes zeroes over `len` bytes at `offset` in chunks.
    async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DiskError> {
        let chunk = self.zeroes.len() as u64;
        if chunk == 0 {
            return Err(DiskError::ReadOnly);
        }
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            // Chunk boundaries sit on multiples of the chunk size, so only
            // the first and last chunk can be unaligned.
            let n = (end - pos).min(chunk - pos % chunk);
            self.write_bytes(pos, &self.zeroes[..n as usize], false)
                .await?;
            pos += n;
        }
        // One flush for the whole range instead of FUA on every chunk.
        if fua {
            self.disk.sync_cache().await?;
        }
        Ok(())
    }

    /// Discards the whole sectors inside the range; partial sectors at the
    /// ends are left alone (a trim is a hint).
    async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DiskError> {
        let ss = self.sector_size;
        let first = offset.div_ceil(ss);
        let end = (offset + len) / ss;
        if first < end {
            let _shared = self.rmw.read().await;
            self.disk.unmap(first, end - first).await?;
            if fua {
                self.disk.sync_cache().await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &[u8], n: u16, infos: &[u16], extra: &[u8]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name);
        d.extend_from_slice(&n.to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d.extend_from_slice(extra);
        d
    }

    #[test]
    fn info_requests_are_parsed_strictly() {
        let d = info(b"disk", 2, &[INFO_NAME, INFO_BLOCK_SIZE], &[]);
        let (name, infos) = parse_info_request(&d).unwrap();
        assert_eq!(name, b"disk");
        assert_eq!(infos, [INFO_NAME, INFO_BLOCK_SIZE]);
        // Fewer info entries than announced, trailing bytes, a name longer
        // than the data or than the protocol allows: all invalid.
        assert!(parse_info_request(&info(b"disk", 3, &[1, 2], &[])).is_none());
        assert!(parse_info_request(&info(b"disk", 0, &[], &[0])).is_none());
        assert!(parse_info_request(&[0, 0, 0, 9, b'a', 0, 0]).is_none());
        let long = vec![b'x'; MAX_STRING_LEN + 1];
        assert!(parse_info_request(&info(&long, 0, &[], &[])).is_none());
        assert!(parse_info_request(&[]).is_none());
    }

    #[test]
    fn uri_escape_keeps_paths_readable() {
        assert_eq!(uri_escape(b"/tmp/a-b_c.sock"), "/tmp/a-b_c.sock");
        assert_eq!(
            uri_escape(b"/tmp/my disk#1?.sock"),
            "/tmp/my%20disk%231%3F.sock"
        );
        assert_eq!(uri_escape("é".as_bytes()), "%C3%A9");
    }

    #[test]
    fn buffer_pool_reuses_size_classes() {
        let pool = BufPool::default();
        let mut a = pool.get(100);
        assert_eq!(a.len(), 100);
        a.fill(7);
        assert_eq!(a.buf.capacity(), POOL_MIN_BUF);
        pool.put(a);
        // Same class: the same buffer comes back, stale bytes and all,
        // resized to the requested length (zeroes only where it grew).
        let b = pool.get(5000);
        assert_eq!(b.len(), 5000);
        assert_eq!(b.buf.capacity(), POOL_MIN_BUF);
        assert!(b[..100].iter().all(|&x| x == 7));
        assert!(b[100..].iter().all(|&x| x == 0));
        // A bigger class is a new buffer.
        let c = pool.get(POOL_MIN_BUF + 1);
        assert_eq!(c.buf.capacity(), 2 * POOL_MIN_BUF);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.bufs.lock().len(), 2);
        // A buffer of no class (a disk handed back another shape) is not
        // kept.
        pool.put(PooledBuf { buf: vec![0; 3000] });
        assert_eq!(pool.bufs.lock().len(), 2);
    }
}
