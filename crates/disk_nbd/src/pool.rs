//! The request buffer pool shared by all connections of a server.

/// Most bytes the pool keeps in idle buffers. This is memory the server
/// keeps after its clients are gone, on top of what requests in flight
/// are charged (see [`crate::memory`]).
const POOL_MAX_BYTES: usize = 32 << 20;
/// Smallest pooled buffer: smaller buffers are allocated for their request
/// (exactly its size) and freed with it, which the allocator does cheaply.
pub(crate) const POOL_MIN_BUF: usize = 64 << 10;
/// Largest pooled buffer: the largest request (32 MiB by default) when
/// it is aligned. A bigger buffer (an unaligned largest read, widened by a
/// sector) is freed after its request.
const POOL_MAX_BUF: usize = POOL_MAX_BYTES;

/// The capacity of the buffer a request of `len` bytes gets, which is
/// what it costs while it is in flight: exactly `len` below
/// [`POOL_MIN_BUF`]; above, `len` rounded up to a size class, four per
/// power of two (so at most a quarter more than asked for, and exact for
/// the powers of two that clients and merged reads mostly use).
pub(crate) fn buffer_capacity(len: usize) -> usize {
    if len < POOL_MIN_BUF {
        return len;
    }
    let step = len.next_power_of_two() / 8;
    len.div_ceil(step).saturating_mul(step)
}

/// A pool of request buffers shared by all connections, so steady-state
/// requests of [`POOL_MIN_BUF`] or more (up to [`POOL_MAX_BUF`]) neither
/// allocate nor fault in fresh pages.
///
/// Buffers are matched by capacity, one of the size classes of
/// [`buffer_capacity`], and keep the length their last user gave them: a
/// [`PooledBuf`] is resized to the length asked for, which writes zeroes
/// only where it grows past that. Their contents are stale data of earlier
/// requests, so every user overwrites the bytes it uses before sending any
/// of them (a disk read fills its whole buffer or fails; a payload read is
/// exact). A whole buffer can be lent by value (a disk's `read_owned`).
///
/// DEVNOTE: not one pool type with `disk_blob`'s piece pool or the SQLite
/// engine's buffers, because its rules are its own: client requests have
/// any length from a byte to 32 MiB, so buffers are matched by size class
/// of capacity and bounded in bytes (a count would bound nothing), and the
/// classes are also what [`crate::memory`] charges a request in flight.
/// The piece pool matches one exact length and returns buffers on drop;
/// the engine keeps a few buffers of any size by count.
#[derive(Default)]
pub(crate) struct BufPool {
    idle: parking_lot::Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    bufs: Vec<Vec<u8>>,
    /// The capacities of `bufs`, summed.
    bytes: usize,
}

/// A buffer taken from a [`BufPool`], exactly as long as asked for.
pub(crate) struct PooledBuf {
    pub(crate) buf: Vec<u8>,
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

/// Whether buffers of capacity `class` are kept in the pool: a size class
/// from [`POOL_MIN_BUF`] to [`POOL_MAX_BUF`].
fn pooled(class: usize) -> bool {
    (POOL_MIN_BUF..=POOL_MAX_BUF).contains(&class) && buffer_capacity(class) == class
}

impl BufPool {
    /// A buffer of `len` bytes, of capacity [`buffer_capacity`]`(len)`.
    pub(crate) fn get(&self, len: usize) -> PooledBuf {
        let class = buffer_capacity(len);
        let reused = if pooled(class) {
            let mut idle = self.idle.lock();
            // The most recently returned buffer of the class: it is the
            // likeliest to still be in the CPU cache.
            let found = idle.bufs.iter().rposition(|b| b.capacity() == class);
            found.map(|i| {
                idle.bytes -= class;
                idle.bufs.swap_remove(i)
            })
        } else {
            None
        };
        let buf = match reused {
            Some(mut buf) => {
                buf.resize(len, 0);
                buf
            }
            None => {
                // Zeroed by the allocator (for big buffers, fresh pages
                // the kernel zeroes as they are first touched), not by a
                // pass over them here.
                let mut buf = vec![0; class];
                buf.truncate(len);
                buf
            }
        };
        PooledBuf { buf }
    }

    /// Returns a buffer: kept for reuse if its capacity is a pooled class
    /// (not a small one, a huge one, or one a disk handed back in another
    /// shape) and the pool has room, else freed.
    pub(crate) fn put(&self, buf: PooledBuf) {
        let buf = buf.buf;
        let class = buf.capacity();
        if !pooled(class) {
            return;
        }
        let mut idle = self.idle.lock();
        if idle.bytes + class <= POOL_MAX_BYTES {
            idle.bytes += class;
            idle.bufs.push(buf);
        }
    }

    /// Frees every idle buffer.
    pub(crate) fn clear(&self) {
        let freed = std::mem::take(&mut *self.idle.lock());
        drop(freed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_are_exact_when_small_and_classed_when_big() {
        assert_eq!(buffer_capacity(0), 0);
        assert_eq!(buffer_capacity(256), 256);
        assert_eq!(buffer_capacity(POOL_MIN_BUF - 1), POOL_MIN_BUF - 1);
        assert_eq!(buffer_capacity(POOL_MIN_BUF), POOL_MIN_BUF);
        assert_eq!(buffer_capacity(1 << 20), 1 << 20);
        assert_eq!(buffer_capacity((1 << 20) + 512), (1 << 20) + (256 << 10));
        assert_eq!(buffer_capacity(32 << 20), 32 << 20);
        assert_eq!(buffer_capacity((32 << 20) + 512), 40 << 20);
        for len in [POOL_MIN_BUF, 100_000, 300_000, (1 << 20) + 1, 5 << 20] {
            let c = buffer_capacity(len);
            assert!(c >= len && c <= len + len / 4 + 1, "{len} -> {c}");
        }
    }

    #[test]
    fn buffer_pool_reuses_size_classes() {
        let pool = BufPool::default();
        let class = POOL_MIN_BUF + POOL_MIN_BUF / 4;
        let mut a = pool.get(POOL_MIN_BUF + 1);
        assert_eq!(a.len(), POOL_MIN_BUF + 1);
        assert_eq!(a.buf.capacity(), class);
        a.fill(7);
        pool.put(a);
        // Same class: the same buffer comes back, stale bytes and all,
        // resized to the requested length (zeroes only where it grew).
        let b = pool.get(POOL_MIN_BUF + 5000);
        assert_eq!(b.len(), POOL_MIN_BUF + 5000);
        assert_eq!(b.buf.capacity(), class);
        assert!(b[..POOL_MIN_BUF + 1].iter().all(|&x| x == 7));
        assert!(b[POOL_MIN_BUF + 1..].iter().all(|&x| x == 0));
        // Another class is a new buffer.
        let c = pool.get(POOL_MIN_BUF);
        assert_eq!(c.buf.capacity(), POOL_MIN_BUF);
        // Small buffers are exact and never kept; huge ones are not kept.
        let d = pool.get(300);
        assert_eq!(d.buf.capacity(), 300);
        let e = pool.get(POOL_MAX_BUF + 1);
        pool.put(b);
        pool.put(c);
        pool.put(d);
        pool.put(e);
        // Nor is a buffer of no class (a disk handed back another shape).
        pool.put(PooledBuf {
            buf: Vec::with_capacity(POOL_MIN_BUF + 3000),
        });
        let idle = pool.idle.lock();
        assert_eq!(idle.bufs.len(), 2);
        assert_eq!(idle.bytes, class + POOL_MIN_BUF);
    }

    #[test]
    fn the_pool_keeps_at_most_its_limit() {
        let pool = BufPool::default();
        let bufs: Vec<_> = (0..POOL_MAX_BYTES / (1 << 20) + 3)
            .map(|_| pool.get(1 << 20))
            .collect();
        for b in bufs {
            pool.put(b);
        }
        assert_eq!(pool.idle.lock().bytes, POOL_MAX_BYTES);
        pool.clear();
        assert_eq!(pool.idle.lock().bytes, 0);
        assert!(pool.idle.lock().bufs.is_empty());
    }
}
