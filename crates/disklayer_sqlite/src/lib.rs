//! A persistent disk layer stored in one SQLite file, and the auto-cache
//! that puts such a file under a shared cache directory.
//!
//! Position in the data flow: in the stack `[RAM diff, SQLite auto-cache,
//! blob]` this crate is the middle layer. `disk_layered` reads each sector
//! from the topmost layer that has it; sectors that came from the blob are
//! written back into this layer with write-no-overwrite, so the next read
//! (in this process or any later one) is served from the local file and the
//! network is not touched again.
//!
//! # Model
//!
//! A layer file describes a disk of `sector_count` sectors of `sector_size`
//! bytes. The disk is cut into chunks of `chunk_size` bytes (1 MiB by
//! default, fixed when the file is formatted). Each chunk that holds any
//! data is one row of the `chunks` table:
//!
//! - `idx`: the chunk number (the row id);
//! - `present`: a bitmap with one bit per sector of the chunk (LSB first),
//!   or NULL when every sector of the chunk (up to the end of the disk) is
//!   present: the common case for a read cache, which fills whole chunks;
//! - `data`: the present sectors only, in order (a full chunk is simply the
//!   chunk's bytes). Absent sectors take no space, so the file stays close
//!   to the size of the data it holds.
//!
//! A chunk with no present sector has no row. The `meta` table holds the
//! format version, geometry, chunk size, the "logically read-only" flag
//! (the layer is a read cache: it refuses guest writes but accepts
//! write-no-overwrite fills) and the disk id of the disk it caches, if any.
//! The file carries `PRAGMA application_id` `0x444c5351` ("DLSQ").
//!
//! # Invariants
//!
//! - Never one row per sector: a read of any length is one range query over
//!   the chunk index plus incremental BLOB reads of just the bytes asked
//!   for, all inside one read snapshot (the query stays active while the
//!   BLOBs are read); a write is one transaction for all the chunks it
//!   touches.
//! - Write-no-overwrite (`overwrite = false`) writes only sectors whose
//!   presence bit is clear, inside the same `BEGIN IMMEDIATE` transaction
//!   that reads the bits, so a cache fill never clobbers newer data, even
//!   from another process.
//! - Unmap clears presence bits; a chunk left empty is deleted and its
//!   pages are given back (`auto_vacuum = INCREMENTAL`).
//! - Reads report which sectors were present; absent sectors read as zero.
//! - Rows are checked against the metadata as they are read (bitmap length,
//!   data length, index range): a damaged file gives
//!   [`SqliteLayerError::Corrupt`], never wrong bytes of the wrong length.
//! - The file is in WAL mode with a busy timeout, so many processes (nextest
//!   runs every test in its own process) can read and fill it at once.
//! - Cache fills are write-behind: a fill from the layered disk (its
//!   `WriteNoOverwrite`) is queued and the guest's read returns at once; a
//!   writer thread commits queued fills in batches, and reads of the layer
//!   in this process see a queued fill before it is committed. The queue
//!   is bounded (64 MiB); every other write, unmap or sync waits for it
//!   first; dropping the last handle commits it. See `fill_queue.rs`.
//! - WAL checkpoints run on a thread of their own (the writer turns
//!   SQLite's automatic checkpoint off), so no write waits for the
//!   checkpoint's disk syncs; a WAL that falls 512 MiB behind is
//!   checkpointed inline. See `checkpoint.rs`.
//! - SQLite calls block, so the async API never runs them plainly on a
//!   runtime thread: on a multi-thread tokio runtime reads and writes use
//!   `block_in_place` (the worker's other tasks move to another thread,
//!   and the caller's buffer is used directly), elsewhere they go to
//!   tokio's blocking pool with an owned (recycled) buffer.
//!
//! # Layers and the auto-cache
//!
//! [`SqliteDiskLayer`] implements `disk_layered`'s `LayerIo` (reads mark
//! the sectors present, the preferred fill size is the chunk size) and
//! `WriteNoOverwrite`, and also `disk_backend::DiskIo` for use on its own.
//! [`SqliteDiskLayerConfig`] opens (or formats) an explicit file when a
//! stack is assembled; [`AutoCacheSqliteDiskLayer`] finds or atomically
//! creates `<cache dir>/<key>/cache.dbhd` for the layer below it (see
//! [`auto_cache`]).
//!
//! # Performance
//!
//! `cargo bench -p disklayer_sqlite` compares warm reads and cold fills
//! with reading the image file directly and with a one-row-per-sector
//! layout. On the development VM (2 CPUs shared with other builds, so the
//! figures move by tens of percent between runs), warm sequential reads of
//! a 512 MiB cache through `[auto-cache, file]` ran at about 0.65-0.8x
//! (64 KiB) and 0.9-1.0x (1 MiB) of direct `pread` from the page cache,
//! 3-5x the per-sector layout read with range queries and 7-12x the
//! per-sector layout read with one query per sector. A full chunk costs
//! one BLOB read, a memory copy out of SQLite's memory map; on a
//! multi-thread runtime it lands directly in the caller's buffer. Cold
//! fills run at about 2-3x the per-sector layout, bounded by SQLite's WAL
//! and checkpoint writes. The file holds about 1.01x the cached bytes
//! (64 KiB pages, 1 MiB chunks).
//!
//! Reads of at least one page (64 KiB) use connections without SQLite's
//! memory map (SQLite then reads whole overflow pages straight into the
//! caller's buffer, as fast as copying out of the map), so a sequential
//! pass over a large cache does not leave the file mapped into the
//! process; smaller reads use mapped connections, which spare them a
//! 64 KiB page copy each (about 2x the IOPS for 4 KiB reads).
//!
//! In `cargo xtask bench` (512 MiB image on nginx at 127.0.0.1), taking
//! the fill and the checkpoint off the reader's path raised cold
//! sequential 1 MiB reads from about 320-340 MB/s to 690-970 MB/s (two
//! full runs on an otherwise idle machine). Measured side by side on a
//! loaded machine, `synchronous=OFF` instead (not used: a power cut could
//! then damage the file) gave the same 600-670 MB/s as the checkpoint
//! thread, so the disk syncs are no longer in the reader's way. A new
//! chunk row is inserted as a zeroblob and its bytes written through
//! incremental blob I/O: one copy into SQLite's pages (after SQLite zeroes
//! them) instead of three (binding the bytes copies them, building the
//! record copies them again),
//! 677 -> 708 MB/s and 1.61 -> 1.46 CPU-seconds per 512 MiB pass (six
//! interleaved runs). What remains is the WAL itself: each cached byte is
//! written twice (WAL, then the file) and checksummed, and the file is
//! synced at each checkpoint (this machine's disk takes synced writes at
//! ~460 MB/s: `dd bs=16M conv=fdatasync`).
//!
//! DEVNOTE: a partial write into a partially present chunk rewrites the
//! chunk's row (read-modify-write of up to `chunk_size` bytes). That is
//! cheap for a read cache, which fills whole chunks, and slow for a guest
//! writing small random blocks into a writable SQLite layer; use a RAM
//! layer on top for guest writes.
//!
//! FUTURE: data bytes are not checksummed: SQLite detects structural damage
//! (and this crate detects shape damage), but a flipped bit inside a data
//! page is returned as is.

#![forbid(unsafe_code)]

pub mod auto_cache;
mod checkpoint;
mod fill_queue;
mod layer;
mod store;

use disk_backend::{DiskCounters, DiskError, DiskIo};
use fill_queue::{Fill, FillWriter, apply_overlay};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use store::Store;

pub use auto_cache::AutoCacheSqliteDiskLayer;
pub use layer::SqliteDiskLayerConfig;

/// Default chunk size of newly formatted files: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;

/// The shape of a disk: how many sectors of what size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Number of sectors.
    pub sector_count: u64,
    /// Sector size in bytes.
    pub sector_size: u32,
}

impl fmt::Display for Geometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sectors of {} bytes ({} bytes)",
            self.sector_count,
            self.sector_size,
            u128::from(self.sector_count) * u128::from(self.sector_size)
        )
    }
}

/// Parameters used to format a new layer file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatParams {
    /// Number of sectors of the disk.
    pub sector_count: u64,
    /// Sector size in bytes (a power of two, 512..=65536).
    pub sector_size: u32,
    /// Chunk size in bytes: a power of two, at least 8 sectors, at most
    /// 64 MiB.
    pub chunk_size: u32,
    /// The layer refuses ordinary writes (it is a read cache) but accepts
    /// write-no-overwrite fills.
    pub logically_read_only: bool,
    /// Identifier of the disk the layer caches, if any.
    pub disk_id: Option<[u8; 16]>,
}

impl FormatParams {
    /// Parameters for a writable layer of the given geometry, with the
    /// default chunk size and no disk id.
    pub fn new(sector_count: u64, sector_size: u32) -> Self {
        FormatParams {
            sector_count,
            sector_size,
            chunk_size: DEFAULT_CHUNK_SIZE,
            logically_read_only: false,
            disk_id: None,
        }
    }
}

/// What a layer file says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerMetadata {
    /// The disk's geometry.
    pub geometry: Geometry,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Whether the layer refuses ordinary writes.
    pub logically_read_only: bool,
    /// Identifier of the disk the layer caches, if any.
    pub disk_id: Option<[u8; 16]>,
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum SqliteLayerError {
    /// Format parameters were rejected.
    #[error("invalid format parameters: {0}")]
    InvalidParams(String),
    /// The layer file does not exist.
    #[error("SQLite disk layer file {} does not exist", path.display())]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a valid layer file (damaged, truncated, foreign).
    #[error("{} is not a valid SQLite disk layer file: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A SQLite call failed.
    #[error("SQLite error on {} while {context}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file-system call failed.
    #[error("I/O error on {} while {context}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An existing cache file describes a different disk than the layer
    /// below it.
    #[error(
        "cache file {} holds a disk of {file}, but the layer below is {lower}; \
         delete the file if the image really changed",
        path.display()
    )]
    GeometryMismatch {
        /// The cache file.
        path: PathBuf,
        /// The file's geometry.
        file: Geometry,
        /// The lower layer's geometry.
        lower: Geometry,
    },
    /// An existing cache file was made for a disk with another id.
    #[error(
        "cache file {} was made for disk id {file}, but the layer below has disk id {lower}",
        path.display()
    )]
    DiskIdMismatch {
        /// The cache file.
        path: PathBuf,
        /// The file's disk id (hex).
        file: String,
        /// The lower layer's disk id (hex).
        lower: String,
    },
    /// No cache key could be derived.
    #[error(
        "cannot choose an auto-cache key: no explicit key was given and the layer below has no disk id"
    )]
    NoCacheKey,
    /// The explicit cache key is unusable.
    #[error("invalid auto-cache key: {0}")]
    InvalidKey(String),
    /// A read-only auto-cache found no cache file.
    #[error(
        "no cache file at {}: the auto-cache is read-only and never creates one",
        path.display()
    )]
    ReadOnlyMissing {
        /// Where the file was expected.
        path: PathBuf,
    },
    /// A disk-level error (range, read-only).
    #[error(transparent)]
    Disk(DiskError),
}

impl From<SqliteLayerError> for DiskError {
    fn from(e: SqliteLayerError) -> DiskError {
        match e {
            SqliteLayerError::Disk(d) => d,
            e => DiskError::io("sqlite disk layer", e),
        }
    }
}

/// Which sectors of a read the layer had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorPresence {
    count: u64,
    bits: Vec<u64>,
}

impl SectorPresence {
    /// Number of sectors the read covered.
    pub fn len(&self) -> u64 {
        self.count
    }
    /// Whether the read covered no sector.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Whether sector `i` of the read (0-based from the read's first
    /// sector) was present.
    pub fn is_present(&self, i: u64) -> bool {
        i < self.count && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    /// Number of present sectors.
    pub fn present_count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Whether every sector was present.
    pub fn all_present(&self) -> bool {
        self.present_count() == self.count
    }
    /// Maximal runs `(first, count)` of present sectors, relative to the
    /// read's first sector.
    pub fn present_runs(&self) -> Vec<(u64, u64)> {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < self.count {
            if self.is_present(i) {
                let s = i;
                while i < self.count && self.is_present(i) {
                    i += 1;
                }
                runs.push((s, i - s));
            } else {
                i += 1;
            }
        }
        runs
    }
}

#[derive(Default)]
struct Counters {
    hit: AtomicU64,
    miss: AtomicU64,
    fill: AtomicU64,
}

/// A disk layer backed by one SQLite file.
///
/// Cheap to clone; clones share connections and counters. Also usable
/// directly as a [`DiskIo`] (absent sectors read as zero).
#[derive(Clone)]
pub struct SqliteDiskLayer {
    store: Arc<Store>,
    counters: Arc<Counters>,
    buffers: Arc<BufferPool>,
    /// Write-behind for cache fills (see [`Self::queue_fill`]).
    fills: Arc<FillWriter>,
}

/// Recycled read buffers (see [`SqliteDiskLayer::read_sectors`]).
#[derive(Default)]
struct BufferPool(parking_lot::Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    /// Buffers kept for reuse.
    const KEEP: usize = 8;
    /// Larger buffers are not kept.
    const MAX_LEN: usize = 16 << 20;

    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self.0.lock().pop().unwrap_or_default();
        v.resize(len, 0);
        v
    }

    fn give(&self, v: Vec<u8>) {
        if v.capacity() <= Self::MAX_LEN {
            let mut pool = self.0.lock();
            if pool.len() < Self::KEEP {
                pool.push(v);
            }
        }
    }
}

impl fmt::Debug for SqliteDiskLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDiskLayer")
            .field("path", &self.store.path())
            .field("meta", self.store.meta())
            .field("read_only", &self.store.is_read_only())
            .finish()
    }
}

/// Runs blocking SQLite work off the async runtime's worker threads (on
/// tokio's blocking pool), or inline when there is no tokio runtime.
async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, SqliteLayerError> + Send + 'static,
) -> Result<R, SqliteLayerError> {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h
            .spawn_blocking(f)
            .await
            .map_err(|e| SqliteLayerError::Disk(DiskError::io("sqlite worker task failed", e)))?,
        Err(_) => f(),
    }
}

/// Whether blocking work may run on the current thread through
/// [`tokio::task::block_in_place`]: on a multi-thread runtime, which then
/// hands this worker's other tasks to another thread, so the runtime is
/// not blocked and borrowed buffers need no copy.
///
/// DEVNOTE: `block_in_place` panics on a current-thread runtime; those
/// (and `#[tokio::test]` without `flavor = "multi_thread"`) take the
/// `spawn_blocking` path with owned buffers instead.
fn in_place_allowed() -> bool {
    matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread)
    )
}

impl SqliteDiskLayer {
    /// Formats a new layer file at `path` (which must not exist). Blocks.
    pub fn format(path: &Path, params: &FormatParams) -> Result<(), SqliteLayerError> {
        Store::format(path, params)
    }

    /// Opens an existing layer file. With `read_only` the file is opened
    /// read-only and every write fails. Blocks.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, SqliteLayerError> {
        let store = Arc::new(Store::open(path, read_only)?);
        Ok(SqliteDiskLayer {
            fills: Arc::new(FillWriter::new(store.clone())),
            store,
            counters: Arc::default(),
            buffers: Arc::default(),
        })
    }

    /// Formats a new layer file and opens it read-write. Blocks.
    pub fn create(path: &Path, params: &FormatParams) -> Result<Self, SqliteLayerError> {
        Self::format(path, params)?;
        Self::open(path, false)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &LayerMetadata {
        self.store.meta()
    }

    /// The disk's geometry.
    pub fn geometry(&self) -> Geometry {
        self.store.meta().geometry
    }

    /// Chunk size in bytes: the natural fill granularity.
    pub fn chunk_size(&self) -> u32 {
        self.store.meta().chunk_size
    }

    /// Whether the file was opened read-only (no write of any kind).
    pub fn is_opened_read_only(&self) -> bool {
        self.store.is_read_only()
    }

    /// Whether ordinary (overwriting) writes are refused: the file was
    /// opened read-only or is logically read-only.
    pub fn refuses_writes(&self) -> bool {
        self.store.is_read_only() || self.store.meta().logically_read_only
    }

    /// Reads `buf.len()` bytes at `sector`; absent sectors read as zero.
    /// Returns which sectors were present.
    pub async fn read_sectors(
        &self,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<SectorPresence, SqliteLayerError> {
        let ss = self.geometry().sector_size;
        let count =
            disk_backend::check_io_range(sector, buf.len(), ss, self.geometry().sector_count)
                .map_err(SqliteLayerError::Disk)?;
        let len = buf.len();
        // Before the file is read: a fill that leaves the queue after this
        // is committed by the time the file is read.
        let queued = self.fills.queue.overlapping(sector, count, ss as usize);
        let mut bits = if in_place_allowed() {
            // Straight into the caller's buffer, no hand-off.
            tokio::task::block_in_place(|| self.store.read(sector, buf))?
        } else {
            // The blocking pool needs owned memory; one copy back is
            // cheaper than blocking a runtime thread. Buffers are recycled,
            // so a read costs no allocation or zeroing (the engine writes
            // every byte).
            let store = self.store.clone();
            let mut data = self.buffers.take(len);
            let (data, bits) = blocking(move || {
                let bits = store.read(sector, &mut data)?;
                Ok((data, bits))
            })
            .await?;
            buf.copy_from_slice(&data);
            self.buffers.give(data);
            bits
        };
        if !queued.is_empty() {
            apply_overlay(&queued, sector, buf, &mut bits, ss as usize);
        }
        let p = SectorPresence { count, bits };
        let hit = p.present_count() * u64::from(ss);
        self.counters.hit.fetch_add(hit, Ordering::Relaxed);
        self.counters
            .miss
            .fetch_add(len as u64 - hit, Ordering::Relaxed);
        Ok(p)
    }

    /// Like [`read_sectors`](Self::read_sectors), but blocks the calling
    /// thread and reads straight into `buf` (no hand-off, no copy). For
    /// callers on their own threads (an NBD server thread, a tool); never
    /// call it from an async task.
    pub fn read_sectors_blocking(
        &self,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<SectorPresence, SqliteLayerError> {
        let ss = self.geometry().sector_size;
        let count =
            disk_backend::check_io_range(sector, buf.len(), ss, self.geometry().sector_count)
                .map_err(SqliteLayerError::Disk)?;
        let queued = self.fills.queue.overlapping(sector, count, ss as usize);
        let mut bits = self.store.read(sector, buf)?;
        if !queued.is_empty() {
            apply_overlay(&queued, sector, buf, &mut bits, ss as usize);
        }
        let p = SectorPresence { count, bits };
        let hit = p.present_count() * u64::from(ss);
        self.counters.hit.fetch_add(hit, Ordering::Relaxed);
        self.counters
            .miss
            .fetch_add(buf.len() as u64 - hit, Ordering::Relaxed);
        Ok(p)
    }

    /// Writes `buf` at `sector` in one transaction. With `overwrite` every
    /// sector is written (refused on a logically read-only layer);
    /// without it only sectors not yet present are (a cache fill). With
    /// `fua` the data is durable on return. Returns the number of sectors
    /// written.
    pub async fn write_sectors(
        &self,
        sector: u64,
        buf: &[u8],
        overwrite: bool,
        fua: bool,
    ) -> Result<u64, SqliteLayerError> {
        let g = self.geometry();
        disk_backend::check_io_range(sector, buf.len(), g.sector_size, g.sector_count)
            .map_err(SqliteLayerError::Disk)?;
        if self.store.is_read_only() || (overwrite && self.store.meta().logically_read_only) {
            return Err(SqliteLayerError::Disk(DiskError::ReadOnly));
        }
        let written = if in_place_allowed() {
            tokio::task::block_in_place(|| {
                // Queued fills come first: operations keep their order.
                self.fills.queue.drain();
                let n = self.store.write(sector, buf, overwrite)?;
                if fua {
                    self.store.sync()?;
                }
                Ok::<_, SqliteLayerError>(n)
            })?
        } else {
            let store = self.store.clone();
            let queue = self.fills.queue.clone();
            let data = buf.to_vec();
            blocking(move || {
                queue.drain();
                let n = store.write(sector, &data, overwrite)?;
                if fua {
                    store.sync()?;
                }
                Ok(n)
            })
            .await?
        };
        if !overwrite {
            self.counters
                .fill
                .fetch_add(written * u64::from(g.sector_size), Ordering::Relaxed);
        }
        Ok(written)
    }

    /// Marks `count` sectors at `sector` absent.
    pub async fn unmap_sectors(&self, sector: u64, count: u64) -> Result<(), SqliteLayerError> {
        if self.refuses_writes() {
            return Err(SqliteLayerError::Disk(DiskError::ReadOnly));
        }
        let store = self.store.clone();
        let queue = self.fills.queue.clone();
        blocking(move || {
            queue.drain();
            store.unmap(sector, count)
        })
        .await
    }

    /// Queues a cache fill (write-no-overwrite) and returns without
    /// waiting for SQLite: a writer thread commits queued fills in
    /// batches, and reads of this layer see them at once. Blocks only
    /// while 64 MiB of fills are already queued. Every other write,
    /// unmap and sync waits for the queue first, and dropping the last
    /// handle of the layer commits what is queued. A fill that fails to
    /// commit is logged and dropped (fills are best effort).
    ///
    /// Fails at once on a file opened read-only.
    pub async fn queue_fill(&self, sector: u64, buf: &[u8]) -> Result<(), SqliteLayerError> {
        let g = self.geometry();
        disk_backend::check_io_range(sector, buf.len(), g.sector_size, g.sector_count)
            .map_err(SqliteLayerError::Disk)?;
        if self.store.is_read_only() {
            return Err(SqliteLayerError::Disk(DiskError::ReadOnly));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let fill = Fill {
            sector,
            data: self.fills.queue.copy_of(buf),
        };
        if in_place_allowed() {
            tokio::task::block_in_place(|| self.fills.push(fill));
        } else {
            let fills = self.fills.clone();
            blocking(move || {
                fills.push(fill);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Commits every queued fill (see [`queue_fill`](Self::queue_fill))
    /// before returning. Blocks.
    pub fn flush_fills(&self) {
        self.fills.queue.drain();
    }

    /// Makes all completed writes (and queued fills) durable.
    pub async fn sync(&self) -> Result<(), SqliteLayerError> {
        let store = self.store.clone();
        let queue = self.fills.queue.clone();
        blocking(move || {
            queue.drain();
            store.sync()
        })
        .await
    }

    /// Number of chunk rows and of present sectors in the file, after
    /// queued fills are committed. Blocks.
    pub fn stats(&self) -> Result<(u64, u64), SqliteLayerError> {
        self.fills.queue.drain();
        self.store.stats()
    }

    /// Counters kept by the layer itself (when it is used as a layer of a
    /// `LayeredDisk`, the layered disk keeps its own): bytes read that were present (hits), absent
    /// (misses), and bytes written by write-no-overwrite fills.
    pub fn cache_counters(&self) -> DiskCounters {
        DiskCounters {
            cache_hit_bytes: self.counters.hit.load(Ordering::Relaxed),
            cache_miss_bytes: self.counters.miss.load(Ordering::Relaxed),
            cache_fill_bytes: self.counters.fill.load(Ordering::Relaxed)
                + self.fills.queue.committed_bytes.load(Ordering::Relaxed),
            ..Default::default()
        }
    }
}

impl DiskIo for SqliteDiskLayer {
    fn disk_type(&self) -> &str {
        "sqlite"
    }
    fn sector_count(&self) -> u64 {
        self.geometry().sector_count
    }
    fn sector_size(&self) -> u32 {
        self.geometry().sector_size
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.metadata().disk_id
    }
    fn is_read_only(&self) -> bool {
        self.refuses_writes()
    }
    fn counters(&self) -> DiskCounters {
        self.cache_counters()
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.read_sectors(sector, buf).await?;
        Ok(())
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        self.write_sectors(sector, buf, true, fua).await?;
        Ok(())
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(self.sync().await?)
    }
    async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        Ok(self.unmap_sectors(sector, count).await?)
    }
}
