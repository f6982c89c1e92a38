//! The server's counters: [`NbdStats`] is the snapshot callers see,
//! `Stats` the atomics the connections update, and `ReadWait` the clock of
//! the time the client spent waiting for reads.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

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
    /// Read requests served (from the disk, successfully or with a disk
    /// error); a read the server refuses as invalid counts only in
    /// `error_replies`.
    pub read_requests: u64,
    /// Payload bytes sent in read replies: what the client read.
    pub bytes_read: u64,
    /// The client's disk-wait time: wall time during which at least one
    /// read request was outstanding at the export, from its header being
    /// received to its reply being written (on all connections together;
    /// concurrent reads count once). The time a guest's boot spent waiting
    /// for its disk, whatever the stack below does.
    pub read_wait: Duration,
    /// Read requests outstanding now (received, reply not yet written).
    pub reads_outstanding: u64,
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
    pub(crate) read_requests: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) read_wait: ReadWait,
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
            read_requests: self.read_requests.load(Ordering::Relaxed),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            read_wait: self.read_wait.total(),
            reads_outstanding: self.read_wait.outstanding(),
            disk_reads: self.disk_reads.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            in_flight_bytes: memory.charged(),
            peak_in_flight_bytes: memory.peak(),
            memory_cap_waits: memory.waits(),
        }
    }
}

/// Wall time during which at least one read was outstanding: the clock
/// runs from the moment the count of outstanding reads leaves 0 until it
/// returns to 0.
#[derive(Default)]
pub(crate) struct ReadWait {
    state: parking_lot::Mutex<ReadWaitState>,
}

#[derive(Default)]
struct ReadWaitState {
    outstanding: u64,
    since: Option<Instant>,
    total: Duration,
}

impl ReadWait {
    /// `n` more reads are outstanding (their headers were received).
    pub(crate) fn begin(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut s = self.state.lock();
        if s.outstanding == 0 {
            s.since = Some(Instant::now());
        }
        s.outstanding += n;
    }

    /// `n` reads are answered (their replies were written, or dropped).
    pub(crate) fn end(&self, n: u64) {
        if n == 0 {
            return;
        }
        let mut s = self.state.lock();
        s.outstanding = s.outstanding.saturating_sub(n);
        if s.outstanding == 0
            && let Some(since) = s.since.take()
        {
            s.total += since.elapsed();
        }
    }

    /// The time so far, including a wait still going on.
    pub(crate) fn total(&self) -> Duration {
        let s = self.state.lock();
        s.total + s.since.map_or(Duration::ZERO, |since| since.elapsed())
    }

    /// Reads outstanding now.
    pub(crate) fn outstanding(&self) -> u64 {
        self.state.lock().outstanding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_reads_count_once_and_gaps_not_at_all() {
        let w = ReadWait::default();
        assert_eq!(w.total(), Duration::ZERO);
        let t0 = Instant::now();
        w.begin(1);
        w.begin(2);
        w.end(1);
        assert_eq!(w.outstanding(), 2);
        w.end(2);
        let busy = t0.elapsed();
        let first = w.total();
        assert!(first <= busy, "{first:?} > {busy:?}");
        // Idle time between reads adds nothing.
        std::thread::yield_now();
        assert_eq!(w.total(), first);
        // A read still outstanding counts up to now.
        w.begin(1);
        let t1 = Instant::now();
        std::thread::yield_now();
        let held = t1.elapsed();
        let running = w.total();
        assert!(
            running >= first + held,
            "{running:?} < {first:?} + {held:?}"
        );
        w.end(1);
        assert!(w.total() >= running);
    }
}
