//! Sector presence bitmaps: how a layer tells the layered disk which sectors
//! of a read it had.
//!
//! All operations work on 64-sector words, never sector by sector, so that
//! marking a 1 MiB read (2048 sectors) costs 32 word operations.

use std::ops::Range;

/// A bitmap of sectors `start..start + len`, one bit per sector, recording
/// which sectors of a request have been supplied so far.
///
/// Layer implementations normally only see a [`SectorMarker`]; the bitmap is
/// public so that a layer's own tests can drive [`LayerIo::read`] directly
/// and inspect the result.
///
/// [`LayerIo::read`]: crate::LayerIo::read
#[derive(Debug, Clone)]
pub struct SectorBitmap {
    start: u64,
    len: u64,
    words: Vec<u64>,
    set: u64,
}

impl SectorBitmap {
    /// A bitmap of `len` sectors starting at `start`, all unset.
    pub fn new(start: u64, len: u64) -> Self {
        let nwords = usize::try_from(len.div_ceil(64)).unwrap_or(usize::MAX);
        SectorBitmap {
            start,
            len,
            words: vec![0; nwords],
            set: 0,
        }
    }

    /// The sectors this bitmap covers.
    pub fn range(&self) -> Range<u64> {
        self.start..self.start + self.len
    }

    /// Number of sectors covered.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the bitmap covers no sectors.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of sectors set.
    pub fn set_count(&self) -> u64 {
        self.set
    }

    /// Whether every sector is set.
    pub fn all_set(&self) -> bool {
        self.set == self.len
    }

    /// Whether `sector` is set (`false` outside the bitmap).
    pub fn is_set(&self, sector: u64) -> bool {
        if !self.range().contains(&sector) {
            return false;
        }
        let bit = sector - self.start;
        self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Sets the sectors of `range` (clipped to the bitmap).
    pub fn set_range(&mut self, range: Range<u64>) {
        let s = range.start.max(self.start);
        let e = range.end.min(self.start + self.len);
        if s >= e {
            return;
        }
        let (mut b, end) = (s - self.start, e - self.start);
        while b < end {
            let w = (b / 64) as usize;
            let lo = b % 64;
            let hi = (end - (b - lo)).min(64);
            let mask = mask_bits(lo, hi);
            let word = &mut self.words[w];
            self.set += u64::from((mask & !*word).count_ones());
            *word |= mask;
            b = b - lo + hi;
        }
    }

    /// A marker through which a layer sets sectors of `range` (clipped to
    /// the bitmap).
    pub fn marker_for(&mut self, range: Range<u64>) -> SectorMarker<'_> {
        let s = range.start.max(self.start);
        let e = range.end.min(self.start + self.len).max(s);
        SectorMarker {
            bitmap: self,
            range: s..e,
        }
    }

    /// A marker over the whole bitmap.
    pub fn marker(&mut self) -> SectorMarker<'_> {
        let r = self.range();
        self.marker_for(r)
    }

    /// First sector at or after `from` (absolute) whose bit equals `value`,
    /// or the end of the bitmap.
    fn find(&self, from: u64, value: bool) -> u64 {
        let end = self.start + self.len;
        if from >= end {
            return end;
        }
        let mut b = from - self.start;
        while b < self.len {
            let w = (b / 64) as usize;
            let mut word = self.words[w];
            if !value {
                word = !word;
            }
            word &= !0u64 << (b % 64);
            if word != 0 {
                let found = (b - b % 64) + u64::from(word.trailing_zeros());
                return self.start + found.min(self.len);
            }
            b = b - b % 64 + 64;
        }
        end
    }

    /// Runs of sectors inside `within` whose bit equals `value`.
    fn runs_in(&self, within: Range<u64>, value: bool) -> Runs<'_> {
        let s = within.start.max(self.start);
        let e = within.end.min(self.start + self.len).max(s);
        Runs {
            bitmap: self,
            pos: s,
            end: e,
            value,
        }
    }

    /// Maximal runs of unset sectors, in order.
    pub fn unset_runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs_in(self.range(), false)
    }

    /// Maximal runs of unset sectors inside `within`, in order.
    pub fn unset_runs_in(&self, within: Range<u64>) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs_in(within, false)
    }

    /// Maximal runs of set sectors, in order.
    pub fn set_runs(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs_in(self.range(), true)
    }
}

/// Bits `lo..hi` of a word (`hi <= 64`).
fn mask_bits(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { !0u64 } else { (1u64 << hi) - 1 };
    upper & (!0u64 << lo)
}

struct Runs<'a> {
    bitmap: &'a SectorBitmap,
    pos: u64,
    end: u64,
    value: bool,
}

impl Iterator for Runs<'_> {
    type Item = Range<u64>;

    fn next(&mut self) -> Option<Range<u64>> {
        if self.pos >= self.end {
            return None;
        }
        let s = self.bitmap.find(self.pos, self.value).min(self.end);
        if s >= self.end {
            self.pos = self.end;
            return None;
        }
        let e = self.bitmap.find(s, !self.value).min(self.end);
        self.pos = e;
        Some(s..e)
    }
}

/// The handle a layer uses, during [`LayerIo::read`], to report which
/// sectors of the request it supplied.
///
/// Sector numbers are absolute disk sectors. Marks outside the request are
/// ignored (clipped), so a buggy layer can never claim sectors it was not
/// asked for.
///
/// [`LayerIo::read`]: crate::LayerIo::read
#[derive(Debug)]
pub struct SectorMarker<'a> {
    bitmap: &'a mut SectorBitmap,
    range: Range<u64>,
}

impl SectorMarker<'_> {
    /// The sectors of the request this marker covers.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// Marks one sector as supplied.
    pub fn set(&mut self, sector: u64) {
        self.set_range(sector..sector.saturating_add(1));
    }

    /// Marks a run of sectors as supplied (clipped to the request).
    pub fn set_range(&mut self, range: Range<u64>) {
        let s = range.start.max(self.range.start);
        let e = range.end.min(self.range.end);
        if s < e {
            self.bitmap.set_range(s..e);
        }
    }

    /// Marks the whole request as supplied.
    pub fn set_all(&mut self) {
        self.bitmap.set_range(self.range.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand::SeedableRng;

    #[test]
    fn set_and_runs_across_words() {
        let mut b = SectorBitmap::new(1000, 200);
        assert_eq!(b.unset_runs().collect::<Vec<_>>(), vec![1000..1200]);
        b.set_range(1010..1070);
        b.set_range(1060..1130);
        b.set_range(1199..5000);
        assert_eq!(b.set_count(), 120 + 1);
        assert_eq!(
            b.unset_runs().collect::<Vec<_>>(),
            vec![1000..1010, 1130..1199]
        );
        assert_eq!(
            b.set_runs().collect::<Vec<_>>(),
            vec![1010..1130, 1199..1200]
        );
        assert_eq!(
            b.unset_runs_in(1005..1140).collect::<Vec<_>>(),
            vec![1005..1010, 1130..1140]
        );
        assert!(b.is_set(1010) && !b.is_set(1009) && !b.is_set(5));
        b.marker().set_all();
        assert!(b.all_set());
        assert_eq!(b.unset_runs().count(), 0);
    }

    #[test]
    fn marker_is_clipped_to_its_request() {
        let mut b = SectorBitmap::new(0, 128);
        let mut m = b.marker_for(64..70);
        m.set_range(0..128);
        m.set(200);
        assert_eq!(b.set_runs().collect::<Vec<_>>(), vec![64..70]);
    }

    #[test]
    fn matches_naive_model() {
        // Seeded, so a failure repeats.
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x9e37_79b9_7f4a_7c15);
        for _ in 0..200 {
            let len = rng.random_range(0..300);
            let mut b = SectorBitmap::new(7, len);
            let mut model = vec![false; len as usize];
            for _ in 0..5 {
                let s = 7 + rng.random_range(0..=len);
                let e = s + rng.random_range(0..100);
                b.set_range(s..e);
                for i in s..e.min(7 + len) {
                    model[(i - 7) as usize] = true;
                }
            }
            let mut runs = Vec::new();
            let mut i = 0;
            while i < model.len() {
                if !model[i] {
                    let s = i;
                    while i < model.len() && !model[i] {
                        i += 1;
                    }
                    runs.push(7 + s as u64..7 + i as u64);
                } else {
                    i += 1;
                }
            }
            assert_eq!(b.unset_runs().collect::<Vec<_>>(), runs);
            assert_eq!(b.set_count(), model.iter().filter(|v| **v).count() as u64);
        }
    }
}
