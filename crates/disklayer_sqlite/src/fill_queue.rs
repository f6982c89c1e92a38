//! Write-behind for cache fills: a bounded queue of accepted fills, a
//! writer thread that commits them in batches, and an overlay that makes
//! a queued fill visible to reads before it is committed.
//!
//! Why: a cache miss fetches a chunk from the network and then has to put
//! it into SQLite (WAL frames, checksums, and every so often a checkpoint
//! that copies them into the file). Done in the reader's path, that write
//! cost more than the fetch, and the guest waited for both. With the
//! queue, the reader returns as soon as its bytes are fetched; the writer
//! thread commits the fills (several per transaction) while the next
//! fetch is on the wire, on the machine's other core.
//!
//! Invariants:
//! - A fill is in the overlay from the moment it is accepted until its
//!   transaction has committed, so a read of this layer (in this process)
//!   always sees it: reads snapshot the overlay *before* they query SQLite
//!   (a fill that leaves the overlay in between is in the file by then).
//! - Fills are write-no-overwrite, committed in the order they were
//!   accepted. Every other write, unmap or sync first waits until the
//!   queue is empty ([`FillQueue::drain`]), so operations keep their order.
//! - The queue holds at most [`FillQueue::MAX_BYTES`]; a fill that does
//!   not fit waits for room (backpressure, bounded memory).
//! - Dropping the last handle of the layer commits everything queued
//!   before it returns: a process that closes its disk leaves every fill
//!   in the file.
//! - Fills are best effort, as everywhere in a read cache: a batch that
//!   fails to commit is logged and dropped (those sectors are simply
//!   fetched again later), never half-applied.

use crate::store::{Store, set_bits};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One accepted fill: `data` for the sectors starting at `sector`.
pub(crate) struct Fill {
    pub(crate) sector: u64,
    pub(crate) data: Vec<u8>,
}

#[derive(Default)]
struct State {
    /// Accepted, not yet taken by the writer, in order.
    waiting: VecDeque<Arc<Fill>>,
    /// Every fill not yet committed (waiting or being written).
    overlay: Vec<Arc<Fill>>,
    /// Bytes in `overlay`.
    bytes: usize,
    /// Buffers of committed fills, kept for the next fills: a fresh
    /// 1 MiB allocation per fill cost page faults (the memory is reused
    /// at once anyway, the queue being bounded).
    spare: Vec<Vec<u8>>,
    /// No more fills: the writer exits once `waiting` is empty.
    closed: bool,
}

/// The queue shared by the layer's handles and its writer thread.
#[derive(Default)]
pub(crate) struct FillQueue {
    state: Mutex<State>,
    /// Signalled when fills are added, committed, or the queue closes.
    changed: Condvar,
    /// Sector bytes committed by the writer.
    pub(crate) committed_bytes: AtomicU64,
    /// A batch has failed (logged once at warn level).
    failed: AtomicBool,
}

impl FillQueue {
    /// Bytes the queue holds at most (accepted but not committed).
    pub(crate) const MAX_BYTES: usize = 64 << 20;
    /// Bytes the writer commits in one transaction at most.
    const MAX_BATCH_BYTES: usize = 16 << 20;

    /// Buffers kept for reuse (half the queue's bound in 1 MiB fills).
    const KEEP_SPARE: usize = 32;

    /// A buffer holding a copy of `data`, recycled if one is spare.
    pub(crate) fn copy_of(&self, data: &[u8]) -> Vec<u8> {
        let mut v = self.state.lock().spare.pop().unwrap_or_default();
        v.clear();
        v.extend_from_slice(data);
        v
    }

    /// Accepts a fill, blocking while the queue is full. A fill larger
    /// than the whole queue is accepted once the queue is empty.
    pub(crate) fn push(&self, fill: Fill) {
        let fill = Arc::new(fill);
        let len = fill.data.len();
        let mut st = self.state.lock();
        while st.bytes > 0 && st.bytes + len > Self::MAX_BYTES {
            self.changed.wait(&mut st);
        }
        st.bytes += len;
        st.overlay.push(fill.clone());
        st.waiting.push_back(fill);
        self.changed.notify_all();
    }

    /// The uncommitted fills that overlap sectors `sector..sector + count`
    /// (of `sector_size` bytes). Take it before reading the file.
    pub(crate) fn overlapping(
        &self,
        sector: u64,
        count: u64,
        sector_size: usize,
    ) -> Vec<Arc<Fill>> {
        let st = self.state.lock();
        if st.overlay.is_empty() {
            return Vec::new();
        }
        let end = sector + count;
        st.overlay
            .iter()
            .filter(|f| {
                let f_end = f.sector + (f.data.len() / sector_size) as u64;
                f.sector < end && sector < f_end
            })
            .cloned()
            .collect()
    }

    /// Blocks until every accepted fill is committed (or dropped after an
    /// error).
    pub(crate) fn drain(&self) {
        let mut st = self.state.lock();
        while !st.overlay.is_empty() {
            self.changed.wait(&mut st);
        }
    }

    /// Stops accepting work; the writer exits after committing the rest.
    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }

    /// The writer thread's loop: commit batches until closed and empty.
    pub(crate) fn run_writer(&self, store: &Store) {
        loop {
            let batch: Vec<Arc<Fill>> = {
                let mut st = self.state.lock();
                while st.waiting.is_empty() && !st.closed {
                    self.changed.wait(&mut st);
                }
                if st.waiting.is_empty() {
                    return;
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                while let Some(f) = st.waiting.front() {
                    if !batch.is_empty() && bytes + f.data.len() > Self::MAX_BATCH_BYTES {
                        break;
                    }
                    bytes += f.data.len();
                    batch.extend(st.waiting.pop_front());
                }
                batch
            };
            let pieces: Vec<(u64, &[u8])> = batch
                .iter()
                .map(|f| (f.sector, f.data.as_slice()))
                .collect();
            // A panic must not leave the batch in the overlay forever (every
            // drain would then wait for it): it is handled like an error.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.write_batch(&pieces, false)
            }))
            .unwrap_or_else(|_| {
                Err(crate::SqliteLayerError::Disk(disk_backend::DiskError::io(
                    "the cache fill writer panicked",
                    std::io::Error::other("panic"),
                )))
            });
            match result {
                Ok(sectors) => {
                    let ss = u64::from(store.meta().geometry.sector_size);
                    self.committed_bytes
                        .fetch_add(sectors * ss, Ordering::Relaxed);
                }
                Err(err) => {
                    if !self.failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            path = %store.path().display(),
                            error = &err as &dyn std::error::Error,
                            "read-cache fill failed; those sectors will be fetched again (further failures are logged at debug level)"
                        );
                    } else {
                        tracing::debug!(
                            path = %store.path().display(),
                            error = &err as &dyn std::error::Error,
                            "read-cache fill failed"
                        );
                    }
                }
            }
            let mut st = self.state.lock();
            st.overlay
                .retain(|f| !batch.iter().any(|b| Arc::ptr_eq(b, f)));
            st.bytes -= batch.iter().map(|f| f.data.len()).sum::<usize>();
            // A fill still held by a reader's overlay snapshot is simply
            // freed later instead of recycled.
            for f in batch {
                if let Ok(f) = Arc::try_unwrap(f)
                    && st.spare.len() < Self::KEEP_SPARE
                {
                    st.spare.push(f.data);
                }
            }
            self.changed.notify_all();
        }
    }
}

/// Copies the sectors of `fills` that `bits` marks absent into `buf`
/// (which holds sectors from `sector`) and marks them present.
pub(crate) fn apply_overlay(
    fills: &[Arc<Fill>],
    sector: u64,
    buf: &mut [u8],
    bits: &mut [u64],
    sector_size: usize,
) {
    let count = (buf.len() / sector_size) as u64;
    let is_set = |bits: &[u64], i: u64| bits[(i / 64) as usize] & (1 << (i % 64)) != 0;
    for f in fills {
        let f_count = (f.data.len() / sector_size) as u64;
        // The part of the request the fill covers, relative to `sector`.
        let lo = f.sector.max(sector) - sector;
        let hi = (f.sector + f_count)
            .min(sector + count)
            .saturating_sub(sector);
        let mut i = lo;
        while i < hi {
            if is_set(bits, i) {
                i += 1;
                continue;
            }
            // A run of absent sectors: one copy for all of it.
            let mut end = i + 1;
            while end < hi && !is_set(bits, end) {
                end += 1;
            }
            let from = (sector + i - f.sector) as usize * sector_size;
            let len = (end - i) as usize * sector_size;
            buf[i as usize * sector_size..][..len].copy_from_slice(&f.data[from..from + len]);
            set_bits(bits, i, end);
            i = end;
        }
    }
}

/// The writer thread of one layer, started on the first fill. Dropping it
/// closes the queue and waits for the thread, so every accepted fill is
/// committed by then.
pub(crate) struct FillWriter {
    pub(crate) queue: Arc<FillQueue>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    store: Arc<Store>,
}

impl FillWriter {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        FillWriter {
            queue: Arc::default(),
            thread: Mutex::new(None),
            store,
        }
    }

    /// Queues a fill, starting the writer thread if needed. Blocks while
    /// the queue is full. Falls back to writing inline if the thread
    /// cannot be started.
    pub(crate) fn push(&self, fill: Fill) {
        {
            let mut t = self.thread.lock();
            if t.is_none() {
                let queue = self.queue.clone();
                let store = self.store.clone();
                match std::thread::Builder::new()
                    .name("sqlite-fill".into())
                    .spawn(move || queue.run_writer(&store))
                {
                    Ok(h) => *t = Some(h),
                    Err(err) => {
                        tracing::debug!(error = %err, "no fill writer thread; filling inline");
                        drop(t);
                        if let Ok(n) = self.store.write(fill.sector, &fill.data, false) {
                            let ss = u64::from(self.store.meta().geometry.sector_size);
                            self.queue
                                .committed_bytes
                                .fetch_add(n * ss, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
        }
        self.queue.push(fill);
    }
}

impl Drop for FillWriter {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(h) = self.thread.get_mut().take() {
            let _ = h.join();
        }
    }
}
