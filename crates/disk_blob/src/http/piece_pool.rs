//! Recycled buffers for pieces fetched ahead.

use parking_lot::Mutex;
use std::sync::Arc;

/// Recycled buffers of prefetched pieces. A fresh buffer per piece cost a
/// zeroing pass and a page fault per 4 KiB for every byte fetched ahead:
/// ~15% of the CPU of a cold sequential pass with no cache above the blob
/// (`perf`, 512 MiB from nginx on loopback).
///
/// DEVNOTE: not one pool type with `disk_nbd`'s request buffers or the
/// SQLite engine's read and fill buffers, because the rules differ where
/// it matters: pieces come in one length (the piece size, and the blob's
/// shorter tail), so matching the exact length always hits with no resize
/// and no size classes; a piece is shared by readers and dropped wherever
/// the readahead lets it go, so it returns itself on drop (a guard that
/// holds the pool) instead of being handed back; and the bound is a count,
/// the readahead window in pieces. The NBD pool matches size classes of
/// capacity under a byte cap, the engine keeps a few buffers of any size.
pub(super) struct PiecePool {
    bufs: Mutex<Vec<Vec<u8>>>,
    /// Most buffers kept; more are freed.
    max: usize,
}

impl PiecePool {
    /// An empty pool that keeps at most `max` free buffers.
    pub(super) fn new(max: usize) -> Arc<PiecePool> {
        Arc::new(PiecePool {
            bufs: Mutex::new(Vec::new()),
            max,
        })
    }

    /// A buffer of exactly `len` bytes, reused if one is free. Its bytes
    /// are stale (another piece's); the fetch overwrites all of them before
    /// the piece is used, and a fetch that fails discards the piece.
    pub(super) fn take(self: &Arc<Self>, len: usize) -> PieceBuf {
        let reused = {
            let mut bufs = self.bufs.lock();
            bufs.iter()
                .rposition(|b| b.len() == len)
                .map(|i| bufs.swap_remove(i))
        };
        PieceBuf {
            buf: reused.unwrap_or_else(|| vec![0; len]),
            pool: self.clone(),
        }
    }
}

/// A prefetched piece's bytes; the buffer goes back to its pool on drop.
pub(super) struct PieceBuf {
    buf: Vec<u8>,
    pool: Arc<PiecePool>,
}

impl std::ops::Deref for PieceBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::ops::DerefMut for PieceBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        let mut bufs = self.pool.bufs.lock();
        if bufs.len() < self.pool.max {
            bufs.push(std::mem::take(&mut self.buf));
        }
    }
}
