//! What requests in flight may hold in memory.
//!
//! Before the server reads a request's payload or starts its work, the
//! request is charged what it will really hold until its reply is written:
//! the capacity of its buffer (as the pool hands it out, not the bytes the
//! client asked for), the sectors of a read-modify-write, its task and the
//! bookkeeping of each reply. The charge is taken from the connection's
//! budget ([`NbdServerOptions::max_in_flight_bytes`]) and then from the
//! server-wide cap ([`NbdServerOptions::max_total_in_flight_bytes`]); a
//! reader that cannot get it stops reading from its client until replies
//! have been written. So however many connections a client opens and
//! however small its requests, the request memory of the server stays
//! under the cap (plus the idle buffers the pool keeps, see
//! [`crate::pool`]).
//!
//! [`NbdServerOptions::max_in_flight_bytes`]: crate::NbdServerOptions::max_in_flight_bytes
//! [`NbdServerOptions::max_total_in_flight_bytes`]: crate::NbdServerOptions::max_total_in_flight_bytes

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::TryAcquireError;

use crate::pool::buffer_capacity;

/// Granularity of the budgets' semaphores: a charge is rounded up to a
/// multiple of this many bytes.
const CHARGE_UNIT: u64 = 256;

/// What every request task costs besides its buffers: the task's future
/// (its state machine: the disk call in progress, the reply being
/// written), tokio's task header and the connection's task set entry. The
/// futures are measured against [`TASK_FUTURE_BYTES`] where they are
/// spawned (in debug builds); the rest is tokio's fixed per-task cost.
pub(crate) const TASK_OVERHEAD: u64 = TASK_FUTURE_BYTES as u64 + 512;

/// Largest future a request task may have for [`TASK_OVERHEAD`] to hold.
pub(crate) const TASK_FUTURE_BYTES: usize = 1024;

/// What each request of a merged read costs besides the shared buffer:
/// its cookie and length, its reply header and the two slices of the
/// vectored reply.
pub(crate) const READ_PART_OVERHEAD: u64 = 64;

/// Most requests merged into one disk read, so a merged read's
/// bookkeeping stays small next to its buffer.
pub(crate) const MAX_MERGED_PARTS: usize = 256;

/// Bytes a (merged) read of `parts` requests holds: a buffer of
/// `buffer_len` bytes (the request widened to whole sectors).
pub(crate) fn read_cost(buffer_len: u64, parts: usize) -> u64 {
    capacity(buffer_len) + TASK_OVERHEAD + parts as u64 * READ_PART_OVERHEAD
}

/// Bytes a write of `len` bytes at `offset` holds: its payload buffer and,
/// if either end is not on a sector boundary, one sector for each
/// read-modify-write.
pub(crate) fn write_cost(offset: u64, len: u64, sector_size: u64) -> u64 {
    capacity(len) + partial_sector_bytes(offset, len, sector_size) + TASK_OVERHEAD
}

/// Bytes a request without a buffer of its own holds (flush, trim, write
/// zeroes from the shared zero buffer, an error reply): its task, and the
/// read-modify-write sectors of an unaligned write-zeroes.
pub(crate) fn bufferless_cost(partial_sectors: u64) -> u64 {
    partial_sectors + TASK_OVERHEAD
}

/// The sectors a write of `len` bytes at `offset` has to read, modify and
/// write back: one for each end that is not on a sector boundary (one in
/// all if both ends fall in the same sector).
pub(crate) fn partial_sector_bytes(offset: u64, len: u64, sector_size: u64) -> u64 {
    if len == 0 {
        return 0;
    }
    let end = offset + len;
    let first = offset / sector_size;
    let last = (end - 1) / sector_size;
    let head = !offset.is_multiple_of(sector_size);
    let tail = !end.is_multiple_of(sector_size);
    let sectors = match (head, tail) {
        (false, false) => 0,
        _ if first == last => 1,
        (true, true) => 2,
        _ => 1,
    };
    sectors * sector_size
}

fn capacity(len: u64) -> u64 {
    buffer_capacity(usize::try_from(len).unwrap_or(usize::MAX)) as u64
}

/// The server-wide cap and its accounting.
pub(crate) struct MemoryCap {
    semaphore: Arc<Semaphore>,
    charged: AtomicU64,
    peak: AtomicU64,
    waits: AtomicU64,
}

impl MemoryCap {
    pub(crate) fn new(cap_bytes: usize) -> Arc<Self> {
        Arc::new(MemoryCap {
            semaphore: Arc::new(Semaphore::new(units(cap_bytes as u64))),
            charged: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            waits: AtomicU64::new(0),
        })
    }

    /// Bytes charged to requests in flight now.
    pub(crate) fn charged(&self) -> u64 {
        self.charged.load(Ordering::Relaxed)
    }

    /// The most bytes ever charged at once.
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Requests that had to wait because the server-wide cap was reached.
    pub(crate) fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

/// A per-connection budget: a semaphore of [`CHARGE_UNIT`]s.
pub(crate) fn connection_budget(bytes: usize) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(units(bytes as u64)))
}

fn units(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(CHARGE_UNIT))
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

/// Whether a charge of `bytes` fits in a budget of `budget` bytes at all
/// (checked once, when the server is created, for the largest request).
pub(crate) fn fits(bytes: u64, budget: usize) -> bool {
    let needed = bytes.div_ceil(CHARGE_UNIT);
    u32::try_from(needed).is_ok() && (needed as usize) <= units(budget as u64)
}

/// A request's charge; dropping it gives the bytes back to both budgets.
pub(crate) struct Charge {
    _connection: OwnedSemaphorePermit,
    _server: OwnedSemaphorePermit,
    bytes: u64,
    cap: Arc<MemoryCap>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.cap.charged.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The budgets were closed; they never are while the server lives.
#[derive(Debug)]
pub(crate) struct BudgetClosed;

/// Charges `bytes` to the connection's budget, then to the server-wide
/// cap, waiting for each as long as it takes. The server checked when it
/// was created that the largest request fits in both.
pub(crate) async fn charge(
    connection: &Arc<Semaphore>,
    cap: &Arc<MemoryCap>,
    bytes: u64,
) -> Result<Charge, BudgetClosed> {
    let n = u32::try_from(bytes.div_ceil(CHARGE_UNIT)).map_err(|_| BudgetClosed)?;
    let conn_permit = connection
        .clone()
        .acquire_many_owned(n)
        .await
        .map_err(|_| BudgetClosed)?;
    let server_permit = match cap.semaphore.clone().try_acquire_many_owned(n) {
        Ok(p) => p,
        Err(TryAcquireError::NoPermits) => {
            cap.waits.fetch_add(1, Ordering::Relaxed);
            cap.semaphore
                .clone()
                .acquire_many_owned(n)
                .await
                .map_err(|_| BudgetClosed)?
        }
        Err(TryAcquireError::Closed) => return Err(BudgetClosed),
    };
    let now = cap.charged.fetch_add(bytes, Ordering::Relaxed) + bytes;
    cap.peak.fetch_max(now, Ordering::Relaxed);
    Ok(Charge {
        _connection: conn_permit,
        _server: server_permit,
        bytes,
        cap: cap.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_sectors_of_writes() {
        assert_eq!(partial_sector_bytes(0, 512, 512), 0);
        assert_eq!(partial_sector_bytes(0, 0, 512), 0);
        assert_eq!(partial_sector_bytes(100, 256, 512), 512);
        assert_eq!(partial_sector_bytes(100, 1000, 512), 1024);
        assert_eq!(partial_sector_bytes(512, 100, 512), 512);
        assert_eq!(partial_sector_bytes(100, 412, 512), 512);
        assert_eq!(partial_sector_bytes(100, 4096 - 100, 4096), 4096);
    }

    #[test]
    fn a_tiny_unaligned_write_costs_a_sector_and_a_task() {
        // The attack the cap is for: 256-byte writes off sector
        // boundaries. Each holds its payload, a sector for the
        // read-modify-write and its task, not 256 bytes.
        let cost = write_cost(100, 256, 512);
        assert!(cost >= 256 + 512 + TASK_OVERHEAD, "{cost}");
        // A read is charged its buffer's capacity, which the pool rounds
        // up for big buffers.
        let big = read_cost((32 << 20) + 512, 1);
        assert!(big >= buffer_capacity((32 << 20) + 512) as u64);
        assert!(buffer_capacity((32 << 20) + 512) > (32 << 20) + 512);
    }

    #[tokio::test]
    async fn charges_stay_under_the_cap_and_are_given_back() {
        let cap = MemoryCap::new(10 * 1024);
        let a = connection_budget(1 << 20);
        let b = connection_budget(1 << 20);
        let first = charge(&a, &cap, 6000).await.unwrap();
        assert_eq!(cap.charged(), 6000);
        // Another connection's charge that does not fit waits for the
        // first to be given back.
        let waiting = tokio::spawn({
            let cap = cap.clone();
            async move { charge(&b, &cap, 6000).await.map(|c| c.bytes) }
        });
        while cap.waits() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished());
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), 6000);
        assert_eq!(cap.peak(), 6000);
        assert_eq!(cap.charged(), 0);
        assert!(fits(10 * 1024, 10 * 1024));
        assert!(!fits(10 * 1024 + 1, 10 * 1024));
    }
}
