//! One chunk's row in memory: the presence bitmap and the compact data
//! layout (only the present sectors, in order), and the merge and remove
//! operations that writes and unmaps apply to it.
//!
//! No I/O: the store reads and writes rows, this module only reshapes them.

/// Presence bitmap of one chunk: bit `i` (LSB first within each byte) is
/// set when sector `i` of the chunk is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bitmap(pub(crate) Vec<u8>);

impl Bitmap {
    pub(crate) fn empty(sectors: u32) -> Self {
        Bitmap(vec![0; (sectors as usize).div_ceil(8)])
    }
    pub(crate) fn full(sectors: u32, span: u32) -> Self {
        // Whole bytes at once: this runs on every read of a full chunk, and
        // setting 2048 bits one by one was a quarter of a warm random read.
        let mut b = Self::empty(sectors);
        let whole = (span / 8) as usize;
        b.0[..whole].fill(0xff);
        for i in (span / 8 * 8)..span {
            b.set(i, true);
        }
        b
    }
    pub(crate) fn get(&self, i: u32) -> bool {
        self.0[(i / 8) as usize] & (1 << (i % 8)) != 0
    }
    pub(crate) fn set(&mut self, i: u32, v: bool) {
        let byte = &mut self.0[(i / 8) as usize];
        if v {
            *byte |= 1 << (i % 8);
        } else {
            *byte &= !(1 << (i % 8));
        }
    }
    pub(crate) fn count(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }
    /// Number of set bits strictly before bit `i`.
    pub(crate) fn count_before(&self, i: u32) -> u32 {
        let whole = (i / 8) as usize;
        let mut n: u32 = self.0[..whole].iter().map(|b| b.count_ones()).sum();
        let rem = i % 8;
        if rem != 0 {
            n += (self.0[whole] & ((1u8 << rem) - 1)).count_ones();
        }
        n
    }
}

/// Sets bits `from..to` of a `u64`-word bitmap.
pub(crate) fn set_bits(words: &mut [u64], from: u64, to: u64) {
    let mut i = from;
    while i < to {
        let w = (i / 64) as usize;
        let bit = i % 64;
        let n = (64 - bit).min(to - i);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        words[w] |= mask;
        i += n;
    }
}

/// One chunk in memory, in the file's compact layout: `data` holds only
/// the present sectors, in order.
#[derive(Debug)]
pub(crate) struct ChunkImage {
    pub(crate) present: Bitmap,
    pub(crate) data: Vec<u8>,
}

impl ChunkImage {
    /// Merges `new` (sectors starting at chunk-local sector `start`) into
    /// the chunk. Without `overwrite` only absent sectors take new data.
    /// Returns the merged chunk and the number of sectors that changed.
    pub(crate) fn merge(
        &self,
        sector_size: usize,
        start: u32,
        new: &[u8],
        overwrite: bool,
    ) -> (ChunkImage, u32) {
        let new_count = (new.len() / sector_size) as u32;
        let sectors = (self.present.0.len() * 8) as u32;
        let mut present = self.present.clone();
        let mut data = Vec::with_capacity(self.data.len() + new.len());
        let mut old_off = 0usize;
        let mut written = 0;
        for i in 0..sectors {
            let had = self.present.get(i);
            let in_new = i >= start && i < start + new_count;
            if in_new && (overwrite || !had) {
                let n = (i - start) as usize * sector_size;
                data.extend_from_slice(&new[n..n + sector_size]);
                present.set(i, true);
                written += 1;
            } else if had {
                data.extend_from_slice(&self.data[old_off..old_off + sector_size]);
            }
            if had {
                old_off += sector_size;
            }
        }
        (ChunkImage { present, data }, written)
    }

    /// Removes sectors `start..start + count` (chunk-local). Returns the
    /// new chunk and whether anything changed.
    pub(crate) fn remove(&self, sector_size: usize, start: u32, count: u32) -> (ChunkImage, bool) {
        let sectors = (self.present.0.len() * 8) as u32;
        let mut present = self.present.clone();
        let mut data = Vec::with_capacity(self.data.len());
        let mut old_off = 0usize;
        let mut changed = false;
        for i in 0..sectors {
            if !self.present.get(i) {
                continue;
            }
            if i >= start && i < start + count {
                present.set(i, false);
                changed = true;
            } else {
                data.extend_from_slice(&self.data[old_off..old_off + sector_size]);
            }
            old_off += sector_size;
        }
        (ChunkImage { present, data }, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_bits() {
        let mut w = vec![0u64; 3];
        set_bits(&mut w, 3, 3);
        assert_eq!(w, [0, 0, 0]);
        set_bits(&mut w, 62, 130);
        assert_eq!(w, [0b11 << 62, u64::MAX, 0b11]);
        let mut w = vec![0u64; 1];
        set_bits(&mut w, 0, 64);
        assert_eq!(w, [u64::MAX]);
    }

    #[test]
    fn bitmap_counts() {
        let mut b = Bitmap::empty(16);
        b.set(0, true);
        b.set(3, true);
        b.set(9, true);
        assert_eq!(b.count(), 3);
        assert_eq!(b.count_before(0), 0);
        assert_eq!(b.count_before(1), 1);
        assert_eq!(b.count_before(4), 2);
        assert_eq!(b.count_before(8), 2);
        assert_eq!(b.count_before(10), 3);
        b.set(3, false);
        assert!(!b.get(3));
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn merge_respects_presence() {
        let ss = 4;
        // Sectors 1 and 2 present out of 8.
        let mut present = Bitmap::empty(8);
        present.set(1, true);
        present.set(2, true);
        let old = ChunkImage {
            present,
            data: b"AAAABBBB".to_vec(),
        };
        // Write sectors 0..3 without overwrite: only sector 0 changes.
        let (m, n) = old.merge(ss, 0, b"xxxxyyyyzzzz", false);
        assert_eq!(n, 1);
        assert_eq!(m.data, b"xxxxAAAABBBB");
        assert_eq!(m.present.count(), 3);
        // With overwrite all three change.
        let (m, n) = old.merge(ss, 0, b"xxxxyyyyzzzz", true);
        assert_eq!(n, 3);
        assert_eq!(m.data, b"xxxxyyyyzzzz");
        // Remove sector 1: sector 2's data stays.
        let (r, changed) = old.remove(ss, 1, 1);
        assert!(changed);
        assert_eq!(r.data, b"BBBB");
        assert!(r.present.get(2) && !r.present.get(1));
        let (_, changed) = old.remove(ss, 4, 4);
        assert!(!changed);
    }
}
