//! The server's counters: [`NbdStats`] is the snapshot callers see,
//! `Stats` the atomics the connections update.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

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
    /// requests were merged (see [`NbdServerOptions::max_merged_read_bytes`](crate::NbdServerOptions::max_merged_read_bytes)).
    pub disk_reads: u64,
    /// Payload bytes written to the disk by write requests.
    pub bytes_written: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections: AtomicU64,
    pub(crate) active_connections: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) error_replies: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) disk_reads: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
}

impl Stats {
    /// A snapshot of the counters.
    pub(crate) fn snapshot(&self) -> NbdStats {
        NbdStats {
            connections: self.connections.load(Ordering::Relaxed),
            active_connections: self.active_connections.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            error_replies: self.error_replies.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            disk_reads: self.disk_reads.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}
