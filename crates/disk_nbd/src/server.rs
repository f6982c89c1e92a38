//! The export and its server handle: [`NbdServer`] owns what every
//! connection shares (the disk, the advertised sizes and flags, the buffer
//! pool, the counters, the shutdown signal) and runs one connection from
//! the handshake into transmission.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use disk_backend::Disk;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::BufReader;
use tokio::io::BufWriter;
use tokio::sync::RwLock;
use tokio::sync::Semaphore;
use tokio::sync::watch;

use crate::handshake::Negotiated;
use crate::handshake::handshake;
use crate::memory::MAX_MERGED_PARTS;
use crate::memory::MemoryCap;
use crate::memory::fits;
use crate::memory::read_cost;
use crate::memory::write_cost;
use crate::options::BlockSizes;
use crate::options::NbdServerOptions;
use crate::pool::BufPool;
use crate::protocol::*;
use crate::stats::NbdStats;
use crate::stats::Stats;
use crate::transmission::transmission;
use crate::writes::ZERO_CHUNK;

/// Buffer size of the socket reader.
const IO_BUF: usize = 256 << 10;
/// Buffer size of the handshake's writer (option replies are small; it is
/// dropped when transmission starts).
const HANDSHAKE_WRITE_BUF: usize = 8 << 10;

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
    /// The client took too long (see the timeouts of [`NbdServerOptions`]);
    /// the connection was closed.
    #[error("the NBD client {0}; closed the connection")]
    TimedOut(String),
    /// [`NbdServerOptions::max_connections`] connections were open; this one
    /// was closed at once.
    #[error("refused an NBD client: {0} connections are open already (the limit)")]
    TooManyConnections(usize),
}

/// One exported disk and everything every connection to it shares.
pub(crate) struct Export {
    pub(crate) disk: Disk,
    pub(crate) name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) read_only: bool,
    pub(crate) size: u64,
    pub(crate) sector_size: u64,
    pub(crate) block_sizes: BlockSizes,
    pub(crate) transmission_flags: u16,
    /// [`NbdServerOptions::max_in_flight_bytes`].
    pub(crate) connection_budget: usize,
    /// The server-wide cap on what requests in flight hold.
    pub(crate) memory: Arc<MemoryCap>,
    /// One permit per connection that may be open.
    pub(crate) connection_slots: Arc<Semaphore>,
    pub(crate) max_connections: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) stalled_reply_timeout: Duration,
    pub(crate) max_parallel_reads: usize,
    pub(crate) max_merged_read: u64,
    pub(crate) shutdown_grace: Duration,
    /// Writes that cover only part of a sector take this exclusively for
    /// their read-modify-write; all other writes take it shared. This keeps
    /// a partial-sector write from writing back stale bytes of a sector
    /// that a concurrent write (on any connection) is changing.
    pub(crate) rmw: RwLock<()>,
    pub(crate) zeroes: Box<[u8]>,
    pub(crate) pool: BufPool,
    pub(crate) stats: Stats,
    pub(crate) shutdown: watch::Sender<bool>,
}

/// An NBD server exporting one [`Disk`].
///
/// Cheap to clone; clones share the export, its counters and its shutdown
/// signal. Serve it on a Unix socket with [`NbdServer::listen_unix`], on
/// loopback TCP with [`NbdServer::listen_tcp`], or on any byte stream with
/// [`NbdServer::serve_connection`].
#[derive(Clone)]
pub struct NbdServer {
    pub(crate) export: Arc<Export>,
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
        // What the largest request holds: a read of the largest size (or
        // merged size) widened by a sector at each end, or a write of the
        // largest size with a partial sector at each end.
        let ss = u64::from(sector_size);
        let largest_read = u64::from(maximum.max(options.max_merged_read_bytes)) + 2 * ss;
        let largest_cost =
            read_cost(largest_read, MAX_MERGED_PARTS).max(write_cost(1, u64::from(maximum), ss));
        for (what, budget) in [
            ("max_in_flight_bytes", options.max_in_flight_bytes),
            (
                "max_total_in_flight_bytes",
                options.max_total_in_flight_bytes,
            ),
        ] {
            if !fits(largest_cost, budget) {
                return Err(NbdError::InvalidOptions(format!(
                    "{what} {budget} cannot hold the largest request ({largest_cost} bytes: \
                     its buffer as allocated, read-modify-write sectors and task); \
                     raise it or lower max_request_bytes {maximum}"
                )));
            }
        }
        if options.max_parallel_reads == 0 {
            return Err(NbdError::InvalidOptions(
                "max_parallel_reads must be at least 1".into(),
            ));
        }
        if options.max_connections == 0 || options.max_connections > Semaphore::MAX_PERMITS {
            return Err(NbdError::InvalidOptions(
                "max_connections must be at least 1".into(),
            ));
        }

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
                connection_budget: options.max_in_flight_bytes,
                memory: MemoryCap::new(options.max_total_in_flight_bytes),
                connection_slots: Arc::new(Semaphore::new(options.max_connections)),
                max_connections: options.max_connections,
                handshake_timeout: options.handshake_timeout,
                stalled_reply_timeout: options.stalled_reply_timeout,
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
        self.export.stats.snapshot(&self.export.memory)
    }

    /// Asks every listener and connection of this server to stop: listeners
    /// stop accepting, connections in the handshake are closed, connections
    /// in transmission stop reading requests, finish the ones in flight,
    /// send their replies and close. Returns at once; await
    /// [`NbdListener::shutdown`](crate::NbdListener::shutdown) to wait for the end.
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
        let Ok(slot) = export.connection_slots.clone().try_acquire_owned() else {
            export
                .stats
                .refused_connections
                .fetch_add(1, Ordering::Relaxed);
            let mut writer = writer;
            let _ = writer.shutdown().await;
            return Err(NbdError::TooManyConnections(export.max_connections));
        };
        export.stats.connections.fetch_add(1, Ordering::Relaxed);
        export
            .stats
            .active_connections
            .fetch_add(1, Ordering::Relaxed);
        let _active = ActiveGuard {
            export: export.clone(),
            _slot: slot,
        };
        let mut shutdown = export.shutdown.subscribe();
        let mut reader = BufReader::with_capacity(IO_BUF, reader);
        let mut writer = BufWriter::with_capacity(HANDSHAKE_WRITE_BUF, writer);
        let timeout = export.handshake_timeout;
        let negotiated = tokio::select! {
            biased;
            _ = shutdown_signalled(&mut shutdown) => return Ok(()),
            r = tokio::time::timeout(timeout, handshake(&export, &mut reader, &mut writer)) => {
                r.unwrap_or_else(|_| {
                    export.stats.timed_out_connections.fetch_add(1, Ordering::Relaxed);
                    Err(NbdError::TimedOut(format!(
                        "did not finish the handshake within {timeout:?}"
                    )))
                })
            }
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
}

/// Counts the connection as active and holds its connection slot.
struct ActiveGuard {
    export: Arc<Export>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let was = self
            .export
            .stats
            .active_connections
            .fetch_sub(1, Ordering::Relaxed);
        if was == 1 {
            // The last client left: give the idle buffers back instead of
            // keeping them for clients that may never come.
            self.export.pool.clear();
        }
    }
}

/// Resolves once the shutdown flag is set; never resolves if the sender is
/// gone (it lives as long as the export).
pub(crate) async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Export {
    pub(crate) fn in_range(&self, offset: u64, len: u64) -> bool {
        offset.checked_add(len).is_some_and(|end| end <= self.size)
    }

    /// The byte range of whole sectors that covers `len` bytes at
    /// `offset` (a range-checked request): what a read has to fetch.
    pub(crate) fn widen_to_sectors(&self, offset: u64, len: u64) -> (u64, u64) {
        let ss = self.sector_size;
        let start = offset - offset % ss;
        let end = (offset + len).div_ceil(ss) * ss;
        (start, end)
    }
}

/// Reads and discards `len` bytes (a payload or option data the server
/// does not use), so the stream stays in step.
pub(crate) async fn drain<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(len), &mut tokio::io::sink()).await?;
    if copied != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
