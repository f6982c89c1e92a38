//! A disk built from a stack of layers.
//!
//! Position in the data flow: petri's backends describe a stack such as
//! `[RAM diff, SQLite auto-cache (read cache), HTTP blob]`; the opener
//! attaches each layer and hands the list to [`LayeredDisk::new`]. The
//! resulting [`LayeredDisk`] implements [`disk_backend::DiskIo`], so it is
//! wrapped in a [`disk_backend::Disk`] and consumed like any other disk.
//!
//! # Model
//!
//! `layers[0]` is the top of the stack, the last layer the bottom. A layer
//! ([`LayerIo`]) may be *sparse*: it has some sectors and not others. When
//! it is read it copies the sectors it has and marks them through a
//! [`SectorMarker`].
//!
//! - **Presence and reads.** Each sector of a read comes from the topmost
//!   layer that has it. Sectors a layer does not have are asked of the
//!   next layer down, run by run. Sectors no layer has read as zero (a
//!   full disk at the bottom has every sector, so this only happens for
//!   stacks of sparse layers).
//! - **Read caching.** A layer configured as a read cache is filled with
//!   what is read from below it, using [`WriteNoOverwrite`], so a fill
//!   never replaces data written into the cache after the lower read
//!   began. A cache may ask for fills in aligned chunks
//!   ([`LayerIo::preferred_fill_sectors`]): a miss is widened to the
//!   chunks that contain it (clipped to the disk), so the next sequential
//!   read hits. Concurrent misses on the same sectors of the same cache in
//!   one process are fetched from below once (single-flight): later
//!   readers wait for the first and then read the cache.
//! - **Write-through.** Writes go to the top layer; if a layer is
//!   write-through they go to the layer below it too, and so on. Flushes
//!   and unmaps follow the same path.
//! - **Metadata.** Sector count, sector size, physical sector size and disk
//!   id of the stack are those of the bottom layer. Layers are attached
//!   bottom first, each learning the metadata of the layer below it
//!   ([`LayerAttach`]).
//!
//! # Validation rules ([`LayeredDisk::new`])
//!
//! - there is at least one layer;
//! - every layer has the same sector size, and the same sector count, as
//!   the bottom layer (DEVNOTE: the reference allows upper layers to be
//!   larger; nothing here needs that, and equal sizes keep every range
//!   check in one place);
//! - write-through layers are contiguous from the top;
//! - the last layer is not write-through;
//! - read-cache layers support write-no-overwrite;
//! - a writable disk has writable (not logically read-only) layers on its
//!   whole write path (the top layer and every layer reached through
//!   write-through).
//!
//! # Counters
//!
//! [`LayeredDisk`] counts, for its read-cache layers, the bytes served from
//! a cache (`cache_hit_bytes`), the bytes a cache had to get from below
//! (`cache_miss_bytes`, after widening) and the bytes offered to it as
//! fills (`cache_fill_bytes`), and adds the layers' own counters.
//!
//! # Failures
//!
//! A failed read of any layer fails the request. A failed *fill* does not:
//! the reader already has correct data from below, so the failure is
//! logged (once at warn level, then at debug level) and the next read of
//! those sectors simply misses again. A cache that knows it cannot keep
//! fills (read-only, full, damaged) says so ([`LayerIo::accepts_fills`]);
//! its misses are then read from below exactly as asked, not widened, so
//! nothing is fetched that cannot be kept.
//!
//! FUTURE: a miss that spans several separate fill chunks fetches each
//! merged run from below one after the other; a lower layer that wants
//! parallelism (the HTTP blob) provides it itself.
//!
//! FUTURE: a layer is asked once per run of sectors the layers above it
//! lacked, so a request whose sectors are scattered over an upper layer
//! (every other sector written, say) costs one call per gap further down.
//! Passing the whole request with a "skip" mask would avoid that.
//!
//! DEVNOTE: the hot path (a read that hits) does no per-sector work: the
//! presence bitmap is handled 64 sectors per word, and each layer is
//! called once per run.
//!
//! DEVNOTE: over 800 lines, kept whole: after the model above, it is one
//! type, `LayeredDisk`, whose read path (presence, fill widening,
//! single-flight of fills) is one flow over private state (`CacheState`,
//! the in-flight map); the layer traits, the bitmap and the prefetch
//! runner are modules of their own.

#![forbid(unsafe_code)]

mod bitmap;
mod layer;
mod prefetch;

pub use bitmap::SectorBitmap;
pub use bitmap::SectorMarker;
pub use layer::Attached;
pub use layer::DiskAsLayer;
pub use layer::DiskLayer;
pub use layer::LayerAttach;
pub use layer::LayerConfiguration;
pub use layer::LayerIo;
pub use layer::LowerLayerMetadata;
pub use layer::NoWriteNoOverwrite;
pub use layer::WriteNoOverwrite;
pub use prefetch::FirstTouches;
pub use prefetch::PrefetchOptions;
pub use prefetch::PrefetchReport;

use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use disk_backend::check_sector_range;
use layer::BoxFut;
use layer::erased::DynLayerIo;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use tokio::sync::watch;

/// The largest fill chunk honoured from
/// [`LayerIo::preferred_fill_sectors`]: a larger request is clamped, so a
/// misconfigured cache cannot make one read buffer the whole disk.
pub const MAX_FILL_BYTES: u64 = 64 << 20;

/// Why a stack of layers could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum InvalidLayeredDisk {
    /// The layer list was empty.
    #[error("a layered disk needs at least one layer")]
    NoLayers,
    /// A layer failed to attach.
    #[error("layer {layer} failed to attach")]
    Attach {
        /// Index of the layer (0 = top).
        layer: usize,
        /// The layer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bottom layer's sector size is zero or not a power of two.
    #[error("the bottom layer's sector size {0} is not a power of two")]
    BadSectorSize(u32),
    /// A layer's sector size differs from the bottom layer's.
    #[error(
        "layer {layer} ({layer_type}) has sector size {found}, the bottom layer has {expected}"
    )]
    SectorSizeMismatch {
        /// Index of the layer (0 = top).
        layer: usize,
        /// Kind of the layer.
        layer_type: String,
        /// The bottom layer's sector size.
        expected: u32,
        /// This layer's sector size.
        found: u32,
    },
    /// A layer's sector count differs from the bottom layer's.
    #[error("layer {layer} ({layer_type}) has {found} sectors, the bottom layer has {expected}")]
    SectorCountMismatch {
        /// Index of the layer (0 = top).
        layer: usize,
        /// Kind of the layer.
        layer_type: String,
        /// The bottom layer's sector count.
        expected: u64,
        /// This layer's sector count.
        found: u64,
    },
    /// A write-through layer sits below a layer that is not write-through.
    #[error(
        "layer {0} is write-through but the layer above it is not: write-through layers must be contiguous from the top"
    )]
    WriteThroughNotContiguous(usize),
    /// The bottom layer is write-through (there is nothing to write through to).
    #[error("the last layer cannot be write-through")]
    LastLayerWriteThrough,
    /// A read-cache layer cannot be filled without overwriting.
    #[error("layer {layer} ({layer_type}) is a read cache but does not support write-no-overwrite")]
    ReadCacheWithoutWriteNoOverwrite {
        /// Index of the layer (0 = top).
        layer: usize,
        /// Kind of the layer.
        layer_type: String,
    },
    /// A writable disk has a read-only layer on its write path.
    #[error("the disk is writable but layer {layer} ({layer_type}) on its write path is read-only")]
    ReadOnlyLayerOnWritePath {
        /// Index of the layer (0 = top).
        layer: usize,
        /// Kind of the layer.
        layer_type: String,
    },
}

/// Fill bookkeeping of one read-cache layer.
#[derive(Default)]
struct CacheState {
    /// Sector ranges being filled right now, keyed by start, disjoint:
    /// `start -> (end, signal)`. The signal's sender is dropped when the
    /// fill finishes (or fails, or is cancelled).
    inflight: Mutex<BTreeMap<u64, (u64, watch::Receiver<()>)>>,
    hit_bytes: AtomicU64,
    miss_bytes: AtomicU64,
    fill_bytes: AtomicU64,
    /// A fill has failed (logged once at warn level).
    fill_failed: AtomicBool,
}

struct Layer {
    io: Box<dyn DynLayerIo>,
    write_through: bool,
    /// `Some` for read-cache layers that have something below them.
    cache: Option<CacheState>,
    /// Fill chunk in sectors (1 = no widening).
    fill_sectors: u64,
}

/// A disk made of a stack of layers; see the [crate docs](crate).
pub struct LayeredDisk {
    layers: Vec<Layer>,
    /// Recycled staging buffers for widened fills (see `fill_misses`):
    /// a fresh zeroed 1 MiB buffer per miss cost a page-faulting
    /// allocation and a memset each time.
    spare: Mutex<Vec<Vec<u8>>>,
    read_only: bool,
    sector_count: u64,
    sector_size: u32,
    physical_sector_size: u32,
    disk_id: Option<[u8; 16]>,
    /// The guest's first read of each chunk of the top read cache, as far
    /// as it reached that cache (`None` without a read cache): what a
    /// prefetch list is recorded from.
    access: Option<prefetch::AccessLog>,
}

impl std::fmt::Debug for LayeredDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let layers: Vec<_> = self.layers.iter().map(|l| l.io.layer_type()).collect();
        f.debug_struct("LayeredDisk")
            .field("layers", &layers)
            .field("read_only", &self.read_only)
            .field("sector_count", &self.sector_count)
            .field("sector_size", &self.sector_size)
            .finish()
    }
}

/// The buffer of a read: borrowed, or owned by the reader, in which case
/// a layer asked for the whole read gets it by value
/// ([`LayerIo::read_owned`]) and hands it back.
enum ReadBuf<'a> {
    Borrowed(&'a mut [u8]),
    Owned(&'a mut Vec<u8>),
}

impl ReadBuf<'_> {
    fn slice(&mut self) -> &mut [u8] {
        match self {
            ReadBuf::Borrowed(b) => b,
            ReadBuf::Owned(v) => v.as_mut_slice(),
        }
    }

    fn len(&self) -> usize {
        match self {
            ReadBuf::Borrowed(b) => b.len(),
            ReadBuf::Owned(v) => v.len(),
        }
    }
}

/// Removes an in-flight fill registration (and wakes its waiters by
/// dropping the sender) when the fill ends, however it ends.
struct InflightGuard<'a> {
    map: &'a Mutex<BTreeMap<u64, (u64, watch::Receiver<()>)>>,
    start: u64,
    _tx: watch::Sender<()>,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.map.lock().remove(&self.start);
    }
}

impl LayeredDisk {
    /// Attaches `layers` (top first) bottom-up and checks the validation
    /// rules listed in the [crate docs](crate).
    pub async fn new(
        read_only: bool,
        layers: Vec<LayerConfiguration>,
    ) -> Result<Self, InvalidLayeredDisk> {
        let n = layers.len();
        if n == 0 {
            return Err(InvalidLayeredDisk::NoLayers);
        }
        // Configuration-only rules first, so no layer is attached (an
        // auto-cache may create files) for a stack that cannot work.
        for (i, l) in layers.iter().enumerate() {
            if l.write_through && i > 0 && !layers[i - 1].write_through {
                return Err(InvalidLayeredDisk::WriteThroughNotContiguous(i));
            }
        }
        if layers[n - 1].write_through {
            return Err(InvalidLayeredDisk::LastLayerWriteThrough);
        }

        let mut attached: Vec<(Box<dyn DynLayerIo>, bool, bool)> = Vec::with_capacity(n);
        let mut lower: Option<LowerLayerMetadata> = None;
        for (i, cfg) in layers.into_iter().enumerate().rev() {
            let io = cfg
                .layer
                .0
                .attach(lower)
                .await
                .map_err(|source| InvalidLayeredDisk::Attach { layer: i, source })?;
            lower = Some(LowerLayerMetadata {
                sector_count: io.sector_count(),
                sector_size: io.sector_size(),
                physical_sector_size: io.physical_sector_size(),
                disk_id: io.disk_id(),
            });
            attached.push((io, cfg.write_through, cfg.read_cache));
        }
        attached.reverse();

        let bottom = &attached[n - 1].0;
        let sector_size = bottom.sector_size();
        let sector_count = bottom.sector_count();
        if sector_size == 0 || !sector_size.is_power_of_two() {
            return Err(InvalidLayeredDisk::BadSectorSize(sector_size));
        }
        let mut on_write_path = !read_only;
        for (i, (io, write_through, read_cache)) in attached.iter().enumerate() {
            let layer_type = io.layer_type().to_owned();
            if io.sector_size() != sector_size {
                return Err(InvalidLayeredDisk::SectorSizeMismatch {
                    layer: i,
                    layer_type,
                    expected: sector_size,
                    found: io.sector_size(),
                });
            }
            if io.sector_count() != sector_count {
                return Err(InvalidLayeredDisk::SectorCountMismatch {
                    layer: i,
                    layer_type,
                    expected: sector_count,
                    found: io.sector_count(),
                });
            }
            if *read_cache && !io.supports_write_no_overwrite() {
                return Err(InvalidLayeredDisk::ReadCacheWithoutWriteNoOverwrite {
                    layer: i,
                    layer_type,
                });
            }
            if on_write_path && io.is_logically_read_only() {
                return Err(InvalidLayeredDisk::ReadOnlyLayerOnWritePath {
                    layer: i,
                    layer_type,
                });
            }
            on_write_path &= *write_through;
        }

        let physical_sector_size = bottom.physical_sector_size();
        let disk_id = bottom.disk_id();
        let layers: Vec<Layer> = attached
            .into_iter()
            .enumerate()
            .map(|(i, (io, write_through, read_cache))| {
                let max_fill = (MAX_FILL_BYTES / u64::from(sector_size)).max(1);
                let fill_sectors = io.preferred_fill_sectors().unwrap_or(1).clamp(1, max_fill);
                Layer {
                    io,
                    write_through,
                    cache: (read_cache && i + 1 < n).then(CacheState::default),
                    fill_sectors,
                }
            })
            .collect();
        let access = layers
            .iter()
            .position(|l| l.cache.is_some())
            .map(|i| prefetch::AccessLog::new(i, sector_count, layers[i].fill_sectors));
        Ok(LayeredDisk {
            layers,
            access,
            spare: Mutex::default(),
            read_only,
            sector_count,
            sector_size,
            physical_sector_size,
            disk_id,
        })
    }

    /// Number of layers.
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// The counters of each layer (top first), including the cache
    /// hit/miss/fill bytes the layered disk accounted to it.
    pub fn layer_counters(&self) -> Vec<DiskCounters> {
        self.layers.iter().map(Self::one_layer_counters).collect()
    }

    fn one_layer_counters(l: &Layer) -> DiskCounters {
        let mut c = l.io.counters();
        if let Some(cache) = &l.cache {
            c.cache_hit_bytes += cache.hit_bytes.load(Ordering::Relaxed);
            c.cache_miss_bytes += cache.miss_bytes.load(Ordering::Relaxed);
            c.cache_fill_bytes += cache.fill_bytes.load(Ordering::Relaxed);
        }
        c
    }

    fn bytes(&self, sectors: u64) -> usize {
        (sectors * u64::from(self.sector_size)) as usize
    }

    /// Byte range of `run` inside a buffer that starts at sector `base`.
    fn span(&self, base: u64, run: &Range<u64>) -> Range<usize> {
        self.bytes(run.start - base)..self.bytes(run.end - base)
    }

    /// Reads `buf` at `sector` as seen from layer `first` downwards.
    fn read_from<'a>(&'a self, first: usize, sector: u64, buf: ReadBuf<'a>) -> BoxFut<'a> {
        Box::pin(async move {
            let mut buf = buf;
            let count = (buf.len() / self.sector_size as usize) as u64;
            let mut bitmap = SectorBitmap::new(sector, count);
            for (i, layer) in self.layers.iter().enumerate().skip(first) {
                let runs: Vec<Range<u64>> = bitmap.unset_runs().collect();
                for run in runs {
                    // What reaches the top read cache (not what a layer
                    // above it, the guest's own writes, supplied) is what a
                    // later run needs from the store: record it.
                    if let Some(access) = &self.access
                        && access.layer() == i
                    {
                        access.note_read(run.start, run.end - run.start, self.sector_size);
                    }
                    let before = bitmap.set_count();
                    let marker = bitmap.marker_for(run.clone());
                    match &mut buf {
                        // No upper layer supplied anything: hand the whole
                        // owned buffer to this layer.
                        ReadBuf::Owned(owned) if run.end - run.start == count => {
                            let (back, result) = layer
                                .io
                                .read_owned(run.start, std::mem::take(*owned), marker)
                                .await;
                            **owned = back;
                            result?;
                        }
                        _ => {
                            layer
                                .io
                                .read(run.start, &mut buf.slice()[self.span(sector, &run)], marker)
                                .await?
                        }
                    }
                    let Some(cache) = &layer.cache else {
                        continue;
                    };
                    let hit = bitmap.set_count() - before;
                    cache
                        .hit_bytes
                        .fetch_add(self.bytes(hit) as u64, Ordering::Relaxed);
                    if hit == run.end - run.start {
                        continue;
                    }
                    let misses: Vec<Range<u64>> = bitmap.unset_runs_in(run).collect();
                    self.fill_misses(i, cache, &misses, sector, buf.slice())
                        .await?;
                    for m in misses {
                        bitmap.set_range(m);
                    }
                }
                if bitmap.all_set() {
                    return Ok(());
                }
            }
            for run in bitmap.unset_runs() {
                buf.slice()[self.span(sector, &run)].fill(0);
            }
            Ok(())
        })
    }

    /// Widens `misses` to the cache's fill chunks, merged.
    fn widen(&self, layer: &Layer, misses: &[Range<u64>]) -> Vec<Range<u64>> {
        let n = layer.fill_sectors;
        let mut out: Vec<Range<u64>> = Vec::new();
        for m in misses {
            let s = m.start / n * n;
            let e = m.end.div_ceil(n).saturating_mul(n).min(self.sector_count);
            match out.last_mut() {
                Some(last) if last.end >= s => last.end = last.end.max(e),
                _ => out.push(s..e),
            }
        }
        out
    }

    /// Serves `misses` (sector runs inside `buf`, which starts at `base`)
    /// that cache layer `i` did not have: fetches them, widened, from
    /// below, fills the cache, and copies them into `buf`.
    async fn fill_misses(
        &self,
        i: usize,
        cache: &CacheState,
        misses: &[Range<u64>],
        base: u64,
        buf: &mut [u8],
    ) -> Result<(), DiskError> {
        let layer = &self.layers[i];
        if !layer.io.accepts_fills() {
            // The cache cannot keep what is fetched now: fetch exactly the
            // misses, nothing ahead, and do not offer fills.
            for m in misses {
                let part = &mut buf[self.span(base, m)];
                self.read_from(i + 1, m.start, ReadBuf::Borrowed(part))
                    .await?;
                cache
                    .miss_bytes
                    .fetch_add(part.len() as u64, Ordering::Relaxed);
            }
            return Ok(());
        }
        let widened = self.widen(layer, misses);
        let direct = widened.as_slice() == misses;
        for w in widened {
            if direct {
                // No widening: fetch straight into the caller's buffer.
                let span = self.span(base, &w);
                self.fetch_through_cache(i, cache, w, &mut buf[span])
                    .await?;
            } else {
                // Stale contents are fine: the fetch writes every byte.
                let mut tmp = self.spare.lock().pop().unwrap_or_default();
                tmp.resize(self.bytes(w.end - w.start), 0);
                let r = self
                    .fetch_through_cache(i, cache, w.clone(), &mut tmp)
                    .await;
                if let Err(err) = r {
                    self.recycle(tmp);
                    return Err(err);
                }
                for m in misses {
                    let s = m.start.max(w.start);
                    let e = m.end.min(w.end);
                    if s < e {
                        buf[self.span(base, &(s..e))]
                            .copy_from_slice(&tmp[self.span(w.start, &(s..e))]);
                    }
                }
                self.recycle(tmp);
            }
        }
        Ok(())
    }

    /// Keeps a staging buffer for the next widened fill (a few, of at
    /// most 16 MiB each).
    fn recycle(&self, buf: Vec<u8>) {
        const KEEP: usize = 8;
        const MAX_LEN: usize = 16 << 20;
        if buf.capacity() <= MAX_LEN {
            let mut spare = self.spare.lock();
            if spare.len() < KEEP {
                spare.push(buf);
            }
        }
    }

    /// Fills `out` with sectors `w` as seen from cache layer `i` down,
    /// filling the cache from below where it lacks them. Single-flight: a
    /// part of `w` another task is already filling is waited for and then
    /// read from the cache.
    async fn fetch_through_cache(
        &self,
        i: usize,
        cache: &CacheState,
        w: Range<u64>,
        out: &mut [u8],
    ) -> Result<(), DiskError> {
        let (led, waits) = self.register(cache, &w);
        for (r, guard) in led {
            self.lead_fill(i, cache, &r, &mut out[self.span(w.start, &r)])
                .await?;
            drop(guard);
        }
        // Waiting for another task's fetch: a demand read waits at most for
        // that one fetch (demand or prefetch), never behind a queue.
        for (r, mut rx) in waits {
            // Err means the leader finished (its sender is gone): that is
            // the signal, whether it succeeded or not.
            let _ = rx.changed().await;
            // Read what the leader left in the cache; fetch anything still
            // missing (the leader failed) ourselves, without waiting again.
            let part = &mut out[self.span(w.start, &r)];
            let mut bm = SectorBitmap::new(r.start, r.end - r.start);
            self.layers[i].io.read(r.start, part, bm.marker()).await?;
            let missing: Vec<Range<u64>> = bm.unset_runs().collect();
            for m in missing {
                self.lead_fill(i, cache, &m, &mut part[self.span(r.start, &m)])
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads `r` from cache layer `i`, fetches what it lacks from below,
    /// and fills the cache with write-no-overwrite. Returns the bytes
    /// fetched from below.
    async fn lead_fill(
        &self,
        i: usize,
        cache: &CacheState,
        r: &Range<u64>,
        out: &mut [u8],
    ) -> Result<u64, DiskError> {
        let layer = &self.layers[i];
        let mut bm = SectorBitmap::new(r.start, r.end - r.start);
        // Another task may have filled part of `r` since our first look.
        layer.io.read(r.start, out, bm.marker()).await?;
        let missing: Vec<Range<u64>> = bm.unset_runs().collect();
        let mut fetched = 0;
        for m in missing {
            let span = self.span(r.start, &m);
            let part = &mut out[span];
            self.read_from(i + 1, m.start, ReadBuf::Borrowed(part))
                .await?;
            let len = part.len() as u64;
            fetched += len;
            cache.miss_bytes.fetch_add(len, Ordering::Relaxed);
            // Fills are best effort: the caller has correct data either
            // way, and a cache that cannot take it (full, busy, opened
            // read-only) must not fail the guest's read.
            match layer.io.write_no_overwrite(m.start, part).await {
                Ok(()) => {
                    cache.fill_bytes.fetch_add(len, Ordering::Relaxed);
                }
                Err(err) => {
                    if !cache.fill_failed.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            layer = i,
                            layer_type = layer.io.layer_type(),
                            error = &err as &dyn std::error::Error,
                            "read-cache fill failed; serving from below (further failures are logged at debug level)"
                        );
                    } else {
                        tracing::debug!(
                            layer = i,
                            error = &err as &dyn std::error::Error,
                            "read-cache fill failed"
                        );
                    }
                }
            }
        }
        Ok(fetched)
    }

    /// Splits `w` into the parts this task leads (registered as in flight,
    /// with a guard) and the parts another task is filling (with a signal
    /// to wait on).
    #[allow(clippy::type_complexity)]
    fn register<'a>(
        &self,
        cache: &'a CacheState,
        w: &Range<u64>,
    ) -> (
        Vec<(Range<u64>, InflightGuard<'a>)>,
        Vec<(Range<u64>, watch::Receiver<()>)>,
    ) {
        let mut map = cache.inflight.lock();
        // Entries are disjoint and sorted, so their ends are sorted too:
        // walk back from `w.end` until an entry ends before `w.start`.
        let mut overlapping: Vec<(Range<u64>, watch::Receiver<()>)> = Vec::new();
        for (&s, (e, rx)) in map.range(..w.end).rev() {
            if *e <= w.start {
                break;
            }
            overlapping.push((s.max(w.start)..(*e).min(w.end), rx.clone()));
        }
        overlapping.reverse();
        let mut led = Vec::new();
        let mut pos = w.start;
        let gaps: Vec<Range<u64>> = overlapping
            .iter()
            .map(|(r, _)| r.clone())
            .chain(std::iter::once(w.end..w.end))
            .filter_map(|r| {
                let gap = pos..r.start;
                pos = r.end;
                (gap.start < gap.end).then_some(gap)
            })
            .collect();
        for gap in gaps {
            let (tx, rx) = watch::channel(());
            map.insert(gap.start, (gap.end, rx));
            led.push((
                gap.clone(),
                InflightGuard {
                    map: &cache.inflight,
                    start: gap.start,
                    _tx: tx,
                },
            ));
        }
        (led, overlapping)
    }
}

impl DiskIo for LayeredDisk {
    fn disk_type(&self) -> &str {
        "layered"
    }

    fn sector_count(&self) -> u64 {
        self.sector_count
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }

    fn disk_id(&self) -> Option<[u8; 16]> {
        self.disk_id
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn counters(&self) -> DiskCounters {
        let mut c = self
            .layers
            .iter()
            .map(Self::one_layer_counters)
            .fold(DiskCounters::default(), |a, b| a + b);
        if let Some(access) = &self.access {
            access.add_counters(&mut c);
        }
        c
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let n = check_io_range(sector, buf.len(), self.sector_size, self.sector_count)?;
        if n == 0 {
            return Ok(());
        }
        self.read_from(0, sector, ReadBuf::Borrowed(buf)).await
    }

    async fn read_owned(&self, sector: u64, mut buf: Vec<u8>) -> (Vec<u8>, Result<(), DiskError>) {
        let result = match check_io_range(sector, buf.len(), self.sector_size, self.sector_count) {
            Err(e) => Err(e),
            Ok(0) => Ok(()),
            Ok(_) => self.read_from(0, sector, ReadBuf::Owned(&mut buf)).await,
        };
        (buf, result)
    }

    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let n = check_io_range(sector, buf.len(), self.sector_size, self.sector_count)?;
        if n == 0 {
            return Ok(());
        }
        for layer in &self.layers {
            layer.io.write(sector, buf, fua).await?;
            if !layer.write_through {
                break;
            }
        }
        Ok(())
    }

    async fn sync_cache(&self) -> Result<(), DiskError> {
        for layer in &self.layers {
            layer.io.sync_cache().await?;
            if !layer.write_through {
                break;
            }
        }
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        check_sector_range(sector, count, self.sector_count)?;
        if count == 0 {
            return Ok(());
        }
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            layer.io.unmap(sector, count, i == last).await?;
            if !layer.write_through {
                break;
            }
        }
        Ok(())
    }
}
