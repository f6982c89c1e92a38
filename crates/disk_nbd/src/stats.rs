//! The server's counters: [`NbdStats`] is the snapshot callers see,
//! `Stats` the atomics the connections update.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use crate::memory::MemoryCap;

/// A snapshot of the server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NbdStats {
    /// Connections accepted since the server was created.
    pub connections: u64,
    /// Connections currently open.
    pub active_connections: u64,
    /// Connections closed at once because
    /// [`NbdServerOptions::max_connections`](crate::NbdServerOptions::max_connections)
    /// were open.
    pub refused_connections: u64,
    /// Connections closed by a timeout: a stalled handshake, a client that
    /// took no replies for
    /// [`NbdServerOptions::stalled_reply_timeout`](crate::NbdServerOptions::stalled_reply_timeout).
    pub timed_out_connections: u64,
    /// Transmission requests received.
    pub requests: u64,
    /// Requests answered with an error.
    pub error_replies: u64,
    /// Payload bytes sent in read replies.
    pub bytes_read: u64,
    /// Reads sent to the disk; fewer than read requests when back-to-back
    /// requests were merged (see [`NbdServerOptions::max_merged_read_bytes`](crate::NbdServerOptions::max_merged_read_bytes)).
    pub disk_reads: u64,
    /// Payload bytes written to the disk by write requests.
    pub bytes_written: u64,
    /// Bytes charged to the requests in flight now, on all connections
    /// (what their buffers and tasks hold; see
    /// [`NbdServerOptions::max_in_flight_bytes`](crate::NbdServerOptions::max_in_flight_bytes)).
    pub in_flight_bytes: u64,
    /// The most bytes ever charged at once; never above
    /// [`NbdServerOptions::max_total_in_flight_bytes`](crate::NbdServerOptions::max_total_in_flight_bytes).
    pub peak_in_flight_bytes: u64,
    /// Requests that had to wait because the server-wide cap was reached.
    pub memory_cap_waits: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) active_connections: AtomicU64,
    pub(crate) refused_connections: AtomicU64,
    pub(crate) timed_out_connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) error_replies: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) disk_reads: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
}

impl Stats {
    /// A snapshot of the counters and of the memory cap's accounting.
    pub(crate) fn snapshot(&self, memory: &MemoryCap) -> NbdStats {
        NbdStats {
            connections: self.connections.load(Ordering::Relaxed),
            active_connections: self.active_connections.load(Ordering::Relaxed),
            refused_connections: self.refused_connections.load(Ordering::Relaxed),
            timed_out_connections: self.timed_out_connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            error_replies: self.error_replies.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            disk_reads: self.disk_reads.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            in_flight_bytes: memory.charged(),
            peak_in_flight_bytes: memory.peak(),
            memory_cap_waits: memory.waits(),
        }
    }
}
