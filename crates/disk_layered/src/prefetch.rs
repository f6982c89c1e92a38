//! Trace-guided prefetch: what the layered disk records of its guest's
//! reads (the first read of each chunk, in order, with its time), and how
//! it fetches a list of ranges into its read cache in the background.
//!
//! A prefetch goes through the same single-flight table as the guest's
//! reads, so nothing is fetched twice: a guest read of a chunk being
//! prefetched waits for that one fetch; a prefetch of a chunk a guest read
//! is fetching skips it. Prefetch I/O carries the background hint
//! ([`disk_backend::io_hints`]): no readahead on its behalf. The guest's
//! reads never queue behind prefetches: at most
//! [`PrefetchOptions::parallel`] prefetch fetches are ever in flight (none
//! waits in a queue below), so a guest read waits for at most the one
//! fetch of its chunk already under way, and the HTTP client keeps
//! connections beyond that number for guest reads.

use crate::CacheState;
use crate::LayeredDisk;
use crate::SectorBitmap;
use disk_backend::DiskCounters;
use disk_backend::io_hints;
use disk_backend::io_hints::IoHints;
use parking_lot::Mutex;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

/// How a prefetch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefetchOptions {
    /// Most prefetch fetches in flight at once. Default 12: the HTTP
    /// client's 16 connections leave 4 for the guest's own reads.
    pub parallel: usize,
    /// Most bytes fetched in all (the budget); chunks past it are left to
    /// the guest's reads. Default 1 GiB.
    pub max_bytes: u64,
    /// Largest single fetch: adjacent missing chunks are fetched together
    /// up to this size. Default 4 MiB.
    pub max_fetch_bytes: u64,
}

impl Default for PrefetchOptions {
    fn default() -> Self {
        PrefetchOptions {
            parallel: 12,
            max_bytes: 1 << 30,
            max_fetch_bytes: 4 << 20,
        }
    }
}

/// What a prefetch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    /// Bytes fetched from below into the cache.
    pub fetched_bytes: u64,
    /// Bytes of the list the cache already had (or a guest read was
    /// fetching).
    pub present_bytes: u64,
    /// Fetches that failed (the guest's own reads fetch those chunks, and
    /// report any error).
    pub failed_fetches: u64,
    /// Whether the byte budget stopped it.
    pub over_budget: bool,
}

/// The first read of each chunk of the top read cache, by the guest (only
/// the sectors that reached that cache: what the guest's own writes in a
/// layer above supply is never needed from the store).
pub(crate) struct AccessLog {
    /// Index of the top read-cache layer, where reads are recorded.
    layer: usize,
    opened: Instant,
    /// Chunk size in sectors (the top read cache's fill chunk).
    chunk_sectors: u64,
    state: Mutex<AccessState>,
    /// Bytes fetched by prefetches.
    prefetched_bytes: AtomicU64,
}

#[derive(Default)]
struct AccessState {
    /// One bit per chunk: read by the guest.
    touched: Vec<u64>,
    /// First reads, in order: (chunk, milliseconds after open).
    order: Vec<(u64, u64)>,
    /// One bit per chunk: fetched by a prefetch.
    prefetched: Vec<u64>,
    /// Bytes of prefetched chunks the guest then read (each chunk once).
    used_bytes: u64,
    /// Guest reads that touched a prefetched chunk.
    hit_reads: u64,
}

fn bit(words: &[u64], i: u64) -> bool {
    words
        .get((i / 64) as usize)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(words: &mut [u64], i: u64) {
    if let Some(w) = words.get_mut((i / 64) as usize) {
        *w |= 1 << (i % 64);
    }
}

impl AccessLog {
    pub(crate) fn new(layer: usize, sector_count: u64, chunk_sectors: u64) -> Self {
        let chunks = sector_count.div_ceil(chunk_sectors);
        let words = chunks.div_ceil(64) as usize;
        AccessLog {
            layer,
            opened: Instant::now(),
            chunk_sectors,
            state: Mutex::new(AccessState {
                touched: vec![0; words],
                prefetched: vec![0; words],
                ..AccessState::default()
            }),
            prefetched_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn layer(&self) -> usize {
        self.layer
    }

    /// Notes a guest read of `count` sectors at `sector` that reached the
    /// top read cache (not a prefetch's).
    pub(crate) fn note_read(&self, sector: u64, count: u64, sector_size: u32) {
        if count == 0 || io_hints::current().background {
            return;
        }
        let first = sector / self.chunk_sectors;
        let last = (sector + count - 1) / self.chunk_sectors;
        let ms = self.opened.elapsed().as_millis() as u64;
        let chunk_bytes = self.chunk_sectors * u64::from(sector_size);
        let mut st = self.state.lock();
        let mut hit = false;
        for c in first..=last {
            let prefetched = bit(&st.prefetched, c);
            hit |= prefetched;
            if !bit(&st.touched, c) {
                set_bit(&mut st.touched, c);
                st.order.push((c, ms));
                if prefetched {
                    st.used_bytes += chunk_bytes;
                }
            }
        }
        if hit {
            st.hit_reads += 1;
        }
    }

    fn note_prefetched(&self, sectors: &Range<u64>, fetched: u64) {
        self.prefetched_bytes.fetch_add(fetched, Ordering::Relaxed);
        if fetched == 0 {
            return;
        }
        let mut st = self.state.lock();
        for c in sectors.start / self.chunk_sectors..sectors.end.div_ceil(self.chunk_sectors) {
            // A chunk the guest read first was not fetched for it by us.
            if !bit(&st.touched, c) {
                set_bit(&mut st.prefetched, c);
            }
        }
    }

    pub(crate) fn add_counters(&self, c: &mut DiskCounters) {
        let st = self.state.lock();
        c.prefetched_bytes += self.prefetched_bytes.load(Ordering::Relaxed);
        c.prefetch_used_bytes += st.used_bytes;
        c.prefetch_hit_reads += st.hit_reads;
    }
}

/// The guest's first reads of each chunk of the top read cache, in
/// order: what a prefetch list is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstTouches {
    /// Chunk size in bytes.
    pub chunk_bytes: u64,
    /// `(chunk index, milliseconds after the disk was opened)`, in order.
    pub touches: Vec<(u64, u64)>,
}

impl LayeredDisk {
    /// The guest's first read of each chunk of the top read cache so far,
    /// in order (reads done under the background hint, prefetches, are
    /// not counted). `None` if the disk has no read cache.
    pub fn first_touches(&self) -> Option<FirstTouches> {
        let log = self.access.as_ref()?;
        Some(FirstTouches {
            chunk_bytes: log.chunk_sectors * u64::from(self.sector_size),
            touches: log.state.lock().order.clone(),
        })
    }

    /// Fetches the byte ranges `ranges` (in this order) into the topmost
    /// read cache, skipping what it already has, in the background: see
    /// the module docs for how it stays out of the guest's way. Errors are
    /// not returned: a failed fetch is counted and left to the guest's own
    /// reads. Dropping the future stops it (fetches in flight are
    /// abandoned; a guest read waiting on one fetches for itself).
    pub async fn prefetch(&self, ranges: &[Range<u64>], opts: PrefetchOptions) -> PrefetchReport {
        let background = IoHints { background: true };
        io_hints::with_hints(background, self.prefetch_inner(ranges, opts)).await
    }

    async fn prefetch_inner(&self, ranges: &[Range<u64>], opts: PrefetchOptions) -> PrefetchReport {
        let mut report = PrefetchReport::default();
        let Some((i, cache)) = self
            .layers
            .iter()
            .enumerate()
            .find_map(|(i, l)| l.cache.as_ref().map(|c| (i, c)))
        else {
            return report;
        };
        let layer = &self.layers[i];
        if !layer.io.accepts_fills() {
            return report;
        }
        let ss = u64::from(self.sector_size);
        let chunk = layer.fill_sectors;
        let max_fetch = (opts.max_fetch_bytes / ss / chunk).max(1) * chunk;
        // Chunks already scheduled (lists may overlap).
        let mut scheduled: std::collections::BTreeSet<u64> = std::collections::BTreeSet::new();
        let mut units: Vec<Range<u64>> = Vec::new();
        let mut budget = opts.max_bytes;
        'ranges: for r in ranges {
            let start = (r.start / ss).min(self.sector_count) / chunk * chunk;
            let end = r.end.div_ceil(ss).min(self.sector_count);
            if start >= end {
                continue;
            }
            let end = end
                .div_ceil(chunk)
                .saturating_mul(chunk)
                .min(self.sector_count);
            let mut present = SectorBitmap::new(start, end - start);
            let known = layer
                .io
                .presence(start, end - start, present.marker())
                .await
                .unwrap_or(false);
            let missing: Vec<Range<u64>> = if known {
                report.present_bytes += present.set_count() * ss;
                present.unset_runs().collect()
            } else {
                std::iter::once(start..end).collect()
            };
            for m in missing {
                // Whole chunks, each once, cut into fetches of at most
                // `max_fetch` sectors.
                let mut s = m.start / chunk * chunk;
                while s < m.end {
                    let e = (s + chunk).min(self.sector_count);
                    let c = s / chunk;
                    if scheduled.insert(c) {
                        let bytes = (e - s) * ss;
                        if bytes > budget {
                            report.over_budget = true;
                            break 'ranges;
                        }
                        budget -= bytes;
                        match units.last_mut() {
                            Some(u) if u.end == s && u.end - u.start < max_fetch => u.end = e,
                            _ => units.push(s..e),
                        }
                    }
                    s = e;
                }
            }
        }
        let parallel = opts.parallel.max(1);
        let results = run_limited(units, parallel, |u| self.prefetch_unit(i, cache, u)).await;
        for r in results {
            match r {
                Ok(n) => report.fetched_bytes += n,
                Err(()) => report.failed_fetches += 1,
            }
        }
        report
    }

    /// Fetches one unit into cache layer `i`: the parts no one else is
    /// fetching (a guest read already fetching a part has it covered).
    async fn prefetch_unit(&self, i: usize, cache: &CacheState, u: Range<u64>) -> Result<u64, ()> {
        let (led, _others) = self.register(cache, &u);
        let mut fetched = 0;
        for (r, guard) in led {
            let mut tmp = self.spare.lock().pop().unwrap_or_default();
            tmp.resize(self.bytes(r.end - r.start), 0);
            let result = self.lead_fill(i, cache, &r, &mut tmp).await;
            drop(guard);
            self.recycle(tmp);
            match result {
                Ok(n) => {
                    if let Some(log) = &self.access {
                        log.note_prefetched(&r, n);
                    }
                    fetched += n;
                }
                Err(err) => {
                    tracing::debug!(
                        sectors = ?r,
                        error = &err as &dyn std::error::Error,
                        "prefetch failed; the guest's reads will fetch these sectors"
                    );
                    return Err(());
                }
            }
        }
        Ok(fetched)
    }
}

/// Runs `f` over `items` in order with at most `limit` running at once;
/// returns the results in order.
async fn run_limited<T, R, F, Fut>(items: Vec<T>, limit: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = R>,
{
    let mut pending: std::collections::VecDeque<(usize, T)> =
        items.into_iter().enumerate().collect();
    let total = pending.len();
    let mut running: Vec<(usize, Pin<Box<Fut>>)> = Vec::new();
    let mut out: Vec<Option<R>> = (0..total).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        loop {
            while running.len() < limit
                && let Some((i, item)) = pending.pop_front()
            {
                running.push((i, Box::pin(f(item))));
            }
            let mut progressed = false;
            let mut k = 0;
            while k < running.len() {
                if let Poll::Ready(r) = running[k].1.as_mut().poll(cx) {
                    let (i, _) = running.swap_remove(k);
                    out[i] = Some(r);
                    progressed = true;
                } else {
                    k += 1;
                }
            }
            if running.is_empty() && pending.is_empty() {
                return Poll::Ready(());
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
