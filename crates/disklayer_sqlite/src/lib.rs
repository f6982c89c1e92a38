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
//! - Reads report which sectors were present; through the public read
//!   methods absent sectors read as zero.
//! - Rows are checked against the metadata as they are read (bitmap length,
//!   data length, index range): a damaged file gives
//!   [`SqliteLayerError::Corrupt`], never wrong bytes of the wrong length.
//! - The file is in WAL mode with a busy timeout, so many processes (nextest
//!   runs every test in its own process) can read and fill it at once.
//!
//! # The engine: one boundary between async callers and SQLite
//!
//! ```text
//! async callers (LayeredDisk, NBD tasks)         engine threads (own every connection)
//!   read / read_owned  ------ job ------>   reader pool (1..=4 threads, mapped and
//!                                           unmapped connections)
//!   fill (queue_fill)  ---- message --->   owner thread: the writer connection;
//!   write, unmap, sync, stats, flush --->    commits fills in batches, runs every
//!                                           operation in the order it was sent
//!                                         checkpoint thread: WAL -> file
//!          <---- oneshot reply (with the job's buffer) ----
//! ```
//!
//! - No SQLite call runs on a caller's thread (a tokio worker in
//!   particular), and nothing blocks one: every method that touches the
//!   file is async and awaits a reply from an engine thread. There is one
//!   code path whatever runtime or executor polls it. (Debug builds assert
//!   it at every entry into the store.)
//! - Cache fills are write-behind: a fill (the layered disk's
//!   `WriteNoOverwrite`) is queued and the guest's read returns at once;
//!   the owner thread commits queued fills in batches of up to 16 MiB, and
//!   reads in this process see a queued fill before it is committed.
//! - **Backpressure is one bound: [`MAX_QUEUED_FILL_BYTES`] (64 MiB) of
//!   queued fills.** A fill that does not fit waits (awaits) until enough
//!   queued fills are committed; that is the only point where a guest read
//!   waits for the cache's disk writes.
//! - Every other write, unmap, sync, stats and flush runs after the fills
//!   queued before it; dropping the last handle of a layer commits the
//!   queue before it returns. A fill batch that fails to commit is logged
//!   (once at warn level) and dropped, never half-applied: fills are best
//!   effort.
//! - WAL checkpoints run on a thread of their own (SQLite's automatic
//!   checkpoint is off), so no write waits for the checkpoint's disk syncs;
//!   a WAL that falls 512 MiB behind is checkpointed inline.
//! - A read lands in a buffer the job owns. With an owned buffer
//!   ([`SqliteDiskLayer::read_sectors_owned`], `DiskIo::read_owned`, which
//!   the NBD export uses) the reader thread fills the caller's buffer
//!   itself; a borrowed buffer costs one copy of the present sectors (safe
//!   code cannot lend a borrowed buffer to another thread).
//! - A caller that reads one block at a time would pay two thread
//!   wake-ups per read; instead the reader that finished a job spins 50 us
//!   for the next one, and a caller whose small read went to that reader
//!   spins 30 us for the reply. Only one reader spins, an idle engine
//!   sleeps, and under load (readers busy) nobody spins.
//! - Reads of at least one page (64 KiB) use connections without SQLite's
//!   memory map, so a pass over a large cache does not leave the file
//!   mapped into the process; smaller reads use mapped connections, which
//!   spare them a 64 KiB page copy each.
//!
//! # Layers and the auto-cache
//!
//! [`SqliteDiskLayer`] implements `disk_layered`'s `LayerIo` (reads mark
//! the sectors present, the preferred fill size is the chunk size) and
//! `WriteNoOverwrite`, and also `disk_backend::DiskIo` for use on its own.
//! [`SqliteDiskLayerConfig`] opens (or formats) an explicit file when a
//! stack is assembled; [`AutoCacheSqliteDiskLayer`] finds or atomically
//! creates `<cache dir>/<key>/cache.dbhd` for the layer below it (see
//! [`auto_cache`]). Each key directory is an entry of the cache directory
//! ([`cache_entries`]): an open auto-cache holds its entry's lock until it
//! closes, so no process removes an entry in use, and an optional size
//! limit for the whole directory removes the least recently used entries
//! when caches are opened and closed.
//!
//! # Performance
//!
//! `cargo bench -p disklayer_sqlite` (warm reads and cold fills against the
//! image file and a one-row-per-sector layout) and `cargo xtask bench`
//! (the whole stack); the Guide's performance page has the figures and
//! what limits them.
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
pub mod cache_entries;
mod checkpoint;
mod engine;
mod layer;
mod store;

use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use engine::Engine;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

pub use auto_cache::AutoCacheSqliteDiskLayer;
pub use engine::MAX_QUEUED_FILL_BYTES;
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
    /// The file is a layer file of the format before chunk checksums. A
    /// writable layer is upgraded in place when it is opened read-write; a
    /// read cache is recreated by the auto-cache.
    #[error(
        "{} is a disk layer file of format version {version}, without checksums; \
         open it read-write once to upgrade it (a read cache is recreated instead)",
        path.display()
    )]
    OutdatedFormat {
        /// The file.
        path: PathBuf,
        /// Its format version.
        version: i64,
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

/// What [`SqliteDiskLayer::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunk rows checked.
    pub chunks: u64,
    /// Chunks whose bytes do not match their checksums.
    pub damaged_chunks: Vec<u64>,
    /// What SQLite's `PRAGMA integrity_check` reported, if not "ok" (then
    /// the chunks were not checked).
    pub sqlite_problems: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damaged_chunks.is_empty() && self.sqlite_problems.is_empty()
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

/// Where a read lands: a borrowed buffer, or an owned one that the
/// engine's reader thread fills directly.
enum ReadTarget<'a> {
    Borrowed(&'a mut [u8]),
    Owned(&'a mut Vec<u8>),
}

impl ReadTarget<'_> {
    fn slice(&mut self) -> &mut [u8] {
        match self {
            ReadTarget::Borrowed(b) => b,
            ReadTarget::Owned(v) => v.as_mut_slice(),
        }
    }
}

#[derive(Default)]
struct Counters {
    hit: AtomicU64,
    miss: AtomicU64,
}

/// A disk layer backed by one SQLite file.
///
/// Cheap to clone; clones share the engine (its threads and connections)
/// and counters. Dropping the last clone commits queued fills and stops
/// the engine's threads. Also usable directly as a [`DiskIo`] (absent
/// sectors read as zero).
///
/// Every method that touches the file is async and runs its SQLite work on
/// the engine's threads (see the crate docs), whatever runtime or executor
/// polls it.
#[derive(Clone)]
pub struct SqliteDiskLayer {
    engine: Arc<Engine>,
    counters: Arc<Counters>,
    /// Bytes a read-cache fill is widened to (see
    /// [`SqliteDiskLayer::with_fill_size`]); 0: the chunk size.
    fill_size: u32,
    /// An auto-cache's entry: its lock is released (and the cache
    /// directory's size limit kept) when the last clone is dropped, after
    /// the engine has closed: fields drop in order, so this stays after
    /// `engine`.
    entry: Option<Arc<cache_entries::EntryGuard>>,
}

impl fmt::Debug for SqliteDiskLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDiskLayer")
            .field("path", &self.path())
            .field("meta", self.metadata())
            .field("read_only", &self.is_opened_read_only())
            .finish()
    }
}

impl SqliteDiskLayer {
    /// Formats a new layer file at `path` (which must not exist).
    pub async fn format(path: &Path, params: &FormatParams) -> Result<(), SqliteLayerError> {
        let path = path.to_path_buf();
        let params = params.clone();
        engine::off_runtime("formatting", move || store::format(&path, &params)).await
    }

    /// Opens an existing layer file. With `read_only` the file is opened
    /// read-only and every write fails.
    pub async fn open(path: &Path, read_only: bool) -> Result<Self, SqliteLayerError> {
        Self::open_with_hook(path, read_only, None).await
    }

    /// [`open`](Self::open) with a hook called (once, on an engine thread)
    /// when SQLite finds the file of this read cache damaged during a
    /// read; the layer then serves every read from below.
    pub(crate) async fn open_with_hook(
        path: &Path,
        read_only: bool,
        on_damaged_file: Option<engine::DamagedFileHook>,
    ) -> Result<Self, SqliteLayerError> {
        let engine = Engine::open(path.to_path_buf(), read_only, on_damaged_file).await?;
        Ok(SqliteDiskLayer {
            engine: Arc::new(engine),
            counters: Arc::default(),
            fill_size: 0,
            entry: None,
        })
    }

    /// Formats a new layer file and opens it read-write.
    pub async fn create(path: &Path, params: &FormatParams) -> Result<Self, SqliteLayerError> {
        Self::format(path, params).await?;
        Self::open(path, false).await
    }

    fn store(&self) -> &store::Store {
        self.engine.store()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.store().path()
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &LayerMetadata {
        self.store().meta()
    }

    /// The disk's geometry.
    pub fn geometry(&self) -> Geometry {
        self.metadata().geometry
    }

    /// Chunk size in bytes: the natural fill granularity.
    pub fn chunk_size(&self) -> u32 {
        self.metadata().chunk_size
    }

    /// Sets how much a read-cache miss is widened to (in a stack: the
    /// aligned unit fetched from below), in bytes: a power of two between
    /// one sector and the chunk size (other values are clamped to that).
    /// The default is the chunk size, which stores whole chunks compactly
    /// but fetches a whole chunk for a 4 KiB miss; smaller units fetch
    /// closer to what is read (a partly filled chunk keeps a presence
    /// bitmap and is rewritten as it fills).
    pub fn with_fill_size(mut self, bytes: u32) -> Self {
        self.fill_size = bytes;
        self
    }

    /// The fill unit in bytes (see [`with_fill_size`](Self::with_fill_size)).
    pub fn fill_size(&self) -> u32 {
        let ss = self.geometry().sector_size;
        match self.fill_size {
            0 => self.chunk_size(),
            n => n.next_power_of_two().clamp(ss, self.chunk_size()),
        }
    }

    /// Whether the file was opened read-only (no write of any kind).
    pub fn is_opened_read_only(&self) -> bool {
        self.store().is_read_only()
    }

    /// Whether ordinary (overwriting) writes are refused: the file was
    /// opened read-only or is logically read-only.
    pub fn refuses_writes(&self) -> bool {
        self.is_opened_read_only() || self.metadata().logically_read_only
    }

    fn check_io(&self, sector: u64, len: usize) -> Result<u64, SqliteLayerError> {
        let g = self.geometry();
        disk_backend::check_io_range(sector, len, g.sector_size, g.sector_count)
            .map_err(SqliteLayerError::Disk)
    }

    /// Reads `buf.len()` bytes at `sector`; absent sectors read as zero.
    /// Returns which sectors were present. Fills queued but not yet
    /// committed are seen.
    pub async fn read_sectors(
        &self,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<SectorPresence, SqliteLayerError> {
        self.read_into(sector, ReadTarget::Borrowed(buf), true)
            .await
    }

    /// [`read_sectors`](Self::read_sectors) into a buffer handed over and
    /// back: the engine's reader thread fills it directly, which saves the
    /// copy a borrowed buffer costs.
    pub async fn read_sectors_owned(
        &self,
        sector: u64,
        mut buf: Vec<u8>,
    ) -> (Vec<u8>, Result<SectorPresence, SqliteLayerError>) {
        let r = self
            .read_into(sector, ReadTarget::Owned(&mut buf), true)
            .await;
        (buf, r)
    }

    /// The one read path: checks the range, reads through the engine
    /// (straight into an owned buffer, or into the engine's buffer and then
    /// the present runs into a borrowed one), zeroes the absent sectors if
    /// asked (a layer of a stack need not: the layers below overwrite
    /// them) and counts hits and misses.
    async fn read_into(
        &self,
        sector: u64,
        mut target: ReadTarget<'_>,
        zero_absent: bool,
    ) -> Result<SectorPresence, SqliteLayerError> {
        let len = target.slice().len();
        let count = self.check_io(sector, len)?;
        let bits = if count == 0 {
            Vec::new()
        } else {
            match &mut target {
                ReadTarget::Borrowed(buf) => self.engine.read(sector, buf).await?,
                ReadTarget::Owned(owned) => {
                    let (back, r) = self.engine.read_owned(sector, std::mem::take(*owned)).await;
                    **owned = back;
                    r?
                }
            }
        };
        let p = SectorPresence { count, bits };
        let ss = self.geometry().sector_size as usize;
        if zero_absent && !p.all_present() {
            let buf = target.slice();
            let mut at = 0;
            for (from, to) in engine::present_runs(&p.bits, count) {
                buf[at * ss..from as usize * ss].fill(0);
                at = to as usize;
            }
            buf[at * ss..].fill(0);
        }
        let hit = p.present_count() * ss as u64;
        self.counters.hit.fetch_add(hit, Ordering::Relaxed);
        self.counters
            .miss
            .fetch_add(len as u64 - hit, Ordering::Relaxed);
        Ok(p)
    }

    /// Writes `buf` at `sector` in one transaction, after every fill queued
    /// before it. With `overwrite` every sector is written (refused on a
    /// logically read-only layer); without it only sectors not yet present
    /// are (a cache fill). With `fua` the data is durable on return.
    /// Returns the number of sectors written.
    pub async fn write_sectors(
        &self,
        sector: u64,
        buf: &[u8],
        overwrite: bool,
        fua: bool,
    ) -> Result<u64, SqliteLayerError> {
        self.check_io(sector, buf.len())?;
        if self.is_opened_read_only() || (overwrite && self.metadata().logically_read_only) {
            return Err(SqliteLayerError::Disk(DiskError::ReadOnly));
        }
        self.engine
            .write(sector, buf.to_vec(), overwrite, fua)
            .await
    }

    /// Marks `count` sectors at `sector` absent, after every fill queued
    /// before it.
    pub async fn unmap_sectors(&self, sector: u64, count: u64) -> Result<(), SqliteLayerError> {
        disk_backend::check_sector_range(sector, count, self.geometry().sector_count)
            .map_err(SqliteLayerError::Disk)?;
        if self.refuses_writes() {
            return Err(SqliteLayerError::Disk(DiskError::ReadOnly));
        }
        self.engine.unmap(sector, count).await
    }

    /// Queues a cache fill (write-no-overwrite) and returns without waiting
    /// for SQLite: the engine's owner thread commits queued fills in
    /// batches, and reads of this layer see them at once. Waits only while
    /// [`MAX_QUEUED_FILL_BYTES`] of fills are already queued. Every other
    /// write, unmap, sync and stats runs after the fills queued before it,
    /// and dropping the last handle of the layer commits what is queued. A
    /// fill that fails to commit is logged and dropped (fills are best
    /// effort).
    ///
    /// Fails at once on a file opened read-only.
    pub async fn queue_fill(&self, sector: u64, buf: &[u8]) -> Result<(), SqliteLayerError> {
        self.check_io(sector, buf.len())?;
        if self.is_opened_read_only() {
            return Err(SqliteLayerError::Disk(DiskError::ReadOnly));
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.engine.queue_fill(sector, buf).await
    }

    /// Whether the layer takes fills now: not when it is opened read-only,
    /// its file was found damaged, or fills are paused after a failed fill
    /// (a full or read-only file system: the pause starts at a minute and
    /// doubles with each failure, up to ten).
    pub fn accepts_fills(&self) -> bool {
        self.engine.accepts_fills()
    }

    /// Returns once every fill queued before the call is committed (or
    /// dropped after an error).
    pub async fn flush_fills(&self) -> Result<(), SqliteLayerError> {
        self.engine.flush().await
    }

    /// Makes all completed writes (and queued fills) durable.
    pub async fn sync(&self) -> Result<(), SqliteLayerError> {
        self.engine.sync().await
    }

    /// Number of chunk rows and of present sectors in the file, after
    /// queued fills are committed.
    pub async fn stats(&self) -> Result<(u64, u64), SqliteLayerError> {
        self.engine.stats().await
    }

    async fn engine_presence(&self, sector: u64, count: u64) -> Result<Vec<u64>, SqliteLayerError> {
        self.engine.presence(sector, count).await
    }

    /// Checks the whole file: SQLite's structure and every chunk's bytes
    /// against their checksums. Reads the whole file.
    pub async fn verify(&self) -> Result<VerifyReport, SqliteLayerError> {
        self.engine.verify().await
    }

    /// Counters kept by the layer itself (when it is used as a layer of a
    /// `LayeredDisk`, the layered disk keeps its own): bytes read that
    /// were present (hits), absent (misses), and bytes committed by
    /// write-no-overwrite fills.
    pub fn cache_counters(&self) -> DiskCounters {
        DiskCounters {
            cache_hit_bytes: self.counters.hit.load(Ordering::Relaxed),
            cache_miss_bytes: self.counters.miss.load(Ordering::Relaxed),
            cache_fill_bytes: self.engine.committed_fill_bytes(),
            cache_damaged_chunks: self.engine.damaged_chunks(),
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
    async fn read_owned(&self, sector: u64, buf: Vec<u8>) -> (Vec<u8>, Result<(), DiskError>) {
        let (buf, r) = self.read_sectors_owned(sector, buf).await;
        (buf, r.map(drop).map_err(DiskError::from))
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
