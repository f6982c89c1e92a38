//! What a server owner can tune: [`NbdServerOptions`] and their defaults,
//! and the block sizes advertised to clients.

use std::time::Duration;

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
