//! The request buffer pool shared by all connections of a server.

/// Most bytes the server's buffer pool keeps while idle.
const POOL_MAX_BYTES: usize = 64 << 20;
/// Smallest pooled buffer.
const POOL_MIN_BUF: usize = 64 << 10;

/// A pool of request buffers shared by all connections, so steady-state
/// requests neither allocate nor fault in fresh pages.
///
/// Buffers are matched by capacity, in powers of two (at least
/// [`POOL_MIN_BUF`]), and keep the length their last user gave them: a
/// [`PooledBuf`] is resized to the length asked for, which writes zeroes
/// only where it grows past that. Their contents are stale data of earlier
/// requests, so every user overwrites the bytes it uses before sending any
/// of them (a disk read fills its whole buffer or fails; a payload read is
/// exact). A whole buffer can be lent by value (a disk's `read_owned`).
#[derive(Default)]
pub(crate) struct BufPool {
    bufs: parking_lot::Mutex<Vec<Vec<u8>>>,
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

impl BufPool {
    pub(crate) fn get(&self, len: usize) -> PooledBuf {
        let class = len.max(POOL_MIN_BUF).next_power_of_two();
        let reused = {
            let mut bufs = self.bufs.lock();
            // The most recently returned buffer of the class: it is the
            // likeliest to still be in the CPU cache.
            bufs.iter()
                .rposition(|b| b.capacity() == class)
                .map(|i| bufs.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(class));
        buf.resize(len, 0);
        PooledBuf { buf }
    }

    pub(crate) fn put(&self, buf: PooledBuf) {
        let buf = buf.buf;
        let class = buf.capacity();
        // Only buffers of a class (not one a disk handed back in another
        // shape) are kept.
        if !class.is_power_of_two() || class < POOL_MIN_BUF {
            return;
        }
        let mut bufs = self.bufs.lock();
        let held: usize = bufs.iter().map(Vec::capacity).sum();
        if held + class <= POOL_MAX_BYTES {
            bufs.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_pool_reuses_size_classes() {
        let pool = BufPool::default();
        let mut a = pool.get(100);
        assert_eq!(a.len(), 100);
        a.fill(7);
        assert_eq!(a.buf.capacity(), POOL_MIN_BUF);
        pool.put(a);
        // Same class: the same buffer comes back, stale bytes and all,
        // resized to the requested length (zeroes only where it grew).
        let b = pool.get(5000);
        assert_eq!(b.len(), 5000);
        assert_eq!(b.buf.capacity(), POOL_MIN_BUF);
        assert!(b[..100].iter().all(|&x| x == 7));
        assert!(b[100..].iter().all(|&x| x == 0));
        // A bigger class is a new buffer.
        let c = pool.get(POOL_MIN_BUF + 1);
        assert_eq!(c.buf.capacity(), 2 * POOL_MIN_BUF);
        pool.put(b);
        pool.put(c);
        assert_eq!(pool.bufs.lock().len(), 2);
        // A buffer of no class (a disk handed back another shape) is not
        // kept.
        pool.put(PooledBuf { buf: vec![0; 3000] });
        assert_eq!(pool.bufs.lock().len(), 2);
    }
}
