//! What a server owner can tune: [`NbdServerOptions`] and their defaults,
//! and the block sizes advertised to clients.

use std::time::Duration;

/// Default largest payload of one read or write request: 32 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: u32 = 32 << 20;
/// Default [`NbdServerOptions::max_in_flight_bytes`]: 96 MiB per
/// connection, room for two reads of the largest size (widened by a sector,
/// as allocated) at once.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 96 << 20;
/// Default [`NbdServerOptions::max_total_in_flight_bytes`]: 128 MiB for the
/// whole server.
pub const DEFAULT_MAX_TOTAL_IN_FLIGHT_BYTES: usize = 128 << 20;
/// Default [`NbdServerOptions::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default [`NbdServerOptions::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default [`NbdServerOptions::stalled_reply_timeout`].
pub const DEFAULT_STALLED_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Default [`NbdServerOptions::max_parallel_reads`].
pub const DEFAULT_MAX_PARALLEL_READS: usize = 4;
/// Default [`NbdServerOptions::max_merged_read_bytes`]: 1 MiB.
pub const DEFAULT_MAX_MERGED_READ_BYTES: u32 = 1 << 20;

/// Default [`NbdServerOptions::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

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
    /// Memory the requests in flight on one connection may hold; the
    /// server stops reading requests from a client that is over budget
    /// until replies have been written. Each request is charged what it
    /// really holds: its buffer's capacity (not just its length), the
    /// sectors of a read-modify-write and its task, so a flood of tiny
    /// unaligned writes is bounded like a few big reads. Must hold the
    /// largest request (`max_request_bytes` widened by a sector and
    /// rounded up to the buffer pool's size class, about 1.25x).
    pub max_in_flight_bytes: usize,
    /// Memory the requests in flight on all connections together may
    /// hold, charged like [`NbdServerOptions::max_in_flight_bytes`]. A
    /// client that opens many connections, or many clients, wait for each
    /// other here instead of growing the server without bound. The
    /// server's idle buffer pool (at most 32 MiB) comes on top.
    pub max_total_in_flight_bytes: usize,
    /// Connections served at once; a client that connects beyond this is
    /// closed at once (and counted in [`crate::NbdStats::refused_connections`]).
    /// A VMM uses one connection per disk, `nbdcopy` up to four.
    pub max_connections: usize,
    /// How long a client may take from connecting to entering
    /// transmission (or leaving); a client that stalls in the handshake is
    /// disconnected. Clients handshake in milliseconds.
    pub handshake_timeout: Duration,
    /// The idle-connection limit for clients that stop reading: a
    /// connection whose client takes none of its waiting replies for this
    /// long is closed, and what its requests held goes back to the
    /// server-wide cap. Memory stays bounded without it (by the budgets
    /// above); this keeps a client that stopped reading from holding its
    /// share of the cap for ever. Long, because a client that is merely
    /// slow (a debugger-stopped VMM) would lose its disk.
    ///
    /// DEVNOTE: a connection with nothing in flight is never closed for
    /// being idle: it holds only its socket and read buffer, and a VMM
    /// keeps its connection for the life of a guest that may not touch
    /// its disk for a long time, and does not reconnect.
    pub stalled_reply_timeout: Duration,
    /// Advertise a minimum block size of 1 byte instead of the disk's
    /// sector size. Unaligned requests are served correctly either way
    /// (widened reads, read-modify-write); this only tells clients not to
    /// align on their side.
    pub byte_granularity: bool,
    /// After [`NbdServer::shutdown`](crate::NbdServer::shutdown), how long a connection may take to
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
            max_total_in_flight_bytes: DEFAULT_MAX_TOTAL_IN_FLIGHT_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            stalled_reply_timeout: DEFAULT_STALLED_REPLY_TIMEOUT,
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
