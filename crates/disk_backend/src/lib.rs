//! The async block-device interface that every disk in the workspace
//! implements.
//!
//! Position in the data flow: this is the lowest shared vocabulary of the
//! storage crates. `disk_layered` builds a [`Disk`] out of layers,
//! `disk_blob` presents a remote or local blob as a [`Disk`], and consumers
//! (the NBD export, the petri backends, benchmarks) only ever hold a [`Disk`].
//!
//! Model:
//! - A disk is an array of `sector_count()` sectors of `sector_size()`
//!   bytes. All I/O is addressed in sectors and its length must be a whole
//!   number of sectors.
//! - [`DiskIo`] is the implementor-facing trait (static async methods).
//!   [`Disk`] is the consumer-facing handle: cheap to clone, `Send + Sync`,
//!   usable from many tasks at once; it erases the concrete type.
//!
//! Invariants every implementation keeps (and [`Disk`] checks again before
//! calling into one, so a buggy caller gets an error rather than a short or
//! wrapped access):
//! - an access that ends past the end of the disk is [`DiskError::OutOfRange`];
//! - a buffer that is not a multiple of the sector size is
//!   [`DiskError::InvalidArgument`];
//! - a write to a read-only disk is [`DiskError::ReadOnly`];
//! - a read either fills the whole buffer or fails.

#![forbid(unsafe_code)]

pub mod io_hints;

use std::future::Future;

use std::sync::Arc;

/// The sector size used unless a disk says otherwise.
pub const DEFAULT_SECTOR_SIZE: u32 = 512;

/// Errors returned by disk operations.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The access does not lie entirely inside the disk.
    #[error(
        "access out of range: sectors {start}..{end} requested, the disk has {sector_count} sectors"
    )]
    OutOfRange {
        /// First sector of the access.
        start: u64,
        /// One past the last sector of the access (saturated on overflow).
        end: u64,
        /// Number of sectors in the disk.
        sector_count: u64,
    },
    /// A write or unmap was issued to a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// An argument was malformed, for example a buffer length that is not a
    /// multiple of the sector size.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An underlying I/O operation failed.
    #[error("disk I/O failed: {context}")]
    Io {
        /// What was being done, for the error message.
        context: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl DiskError {
    /// Wraps any error as an I/O error with a short description of what was
    /// being done.
    pub fn io(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        DiskError::Io {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Counters a disk (or a stack of layers) keeps about where its data came
/// from. All fields are totals since the disk was opened.
///
/// Every field is optional in spirit: a layer that has nothing to say about
/// a field leaves it zero, and a stack adds its layers' counters together.
/// With the `serde` feature the counters (de)serialize as an object with
/// one field per counter, by field name; a missing field reads as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(default)
)]
pub struct DiskCounters {
    /// Requests sent to a remote store (HTTP range GETs, HEADs, ...).
    pub remote_requests: u64,
    /// Payload bytes received from a remote store.
    pub remote_bytes_fetched: u64,
    /// Requests that were retried after a transient failure.
    pub remote_retries: u64,
    /// Requests that failed for good.
    pub remote_errors: u64,
    /// Bytes served from a persistent read cache without going further down.
    pub cache_hit_bytes: u64,
    /// Bytes a read cache did not have and had to get from below.
    pub cache_miss_bytes: u64,
    /// Bytes written into a read cache by fills.
    pub cache_fill_bytes: u64,
    /// Read-cache chunks found damaged (their bytes did not match their
    /// checksums); each was served from below instead and cached again.
    pub cache_damaged_chunks: u64,
    /// Bytes a prefetch fetched into a read cache ahead of the guest.
    pub prefetched_bytes: u64,
    /// Bytes of prefetched chunks the guest then read (each chunk once);
    /// `prefetched_bytes - prefetch_used_bytes` were fetched in vain (so
    /// far).
    pub prefetch_used_bytes: u64,
    /// Guest reads that touched a prefetched chunk.
    pub prefetch_hit_reads: u64,
}

impl std::ops::Add for DiskCounters {
    type Output = DiskCounters;

    fn add(self, o: DiskCounters) -> DiskCounters {
        DiskCounters {
            remote_requests: self.remote_requests + o.remote_requests,
            remote_bytes_fetched: self.remote_bytes_fetched + o.remote_bytes_fetched,
            remote_retries: self.remote_retries + o.remote_retries,
            remote_errors: self.remote_errors + o.remote_errors,
            cache_hit_bytes: self.cache_hit_bytes + o.cache_hit_bytes,
            cache_miss_bytes: self.cache_miss_bytes + o.cache_miss_bytes,
            cache_fill_bytes: self.cache_fill_bytes + o.cache_fill_bytes,
            cache_damaged_chunks: self.cache_damaged_chunks + o.cache_damaged_chunks,
            prefetched_bytes: self.prefetched_bytes + o.prefetched_bytes,
            prefetch_used_bytes: self.prefetch_used_bytes + o.prefetch_used_bytes,
            prefetch_hit_reads: self.prefetch_hit_reads + o.prefetch_hit_reads,
        }
    }
}

/// Checks that `len` bytes starting at `sector` lie inside a disk of
/// `sector_count` sectors of `sector_size` bytes, and that `len` is a whole
/// number of sectors. Returns the number of sectors covered.
pub fn check_io_range(
    sector: u64,
    len: usize,
    sector_size: u32,
    sector_count: u64,
) -> Result<u64, DiskError> {
    let ss = u64::from(sector_size);
    if ss == 0 {
        return Err(DiskError::InvalidArgument("sector size is zero".into()));
    }
    let len = len as u64;
    if !len.is_multiple_of(ss) {
        return Err(DiskError::InvalidArgument(format!(
            "buffer length {len} is not a multiple of the sector size {sector_size}"
        )));
    }
    let count = len / ss;
    check_sector_range(sector, count, sector_count)?;
    Ok(count)
}

/// Checks that sectors `sector..sector + count` lie inside a disk of
/// `sector_count` sectors.
pub fn check_sector_range(sector: u64, count: u64, sector_count: u64) -> Result<(), DiskError> {
    match sector.checked_add(count) {
        Some(end) if end <= sector_count => Ok(()),
        end => Err(DiskError::OutOfRange {
            start: sector,
            end: end.unwrap_or(u64::MAX),
            sector_count,
        }),
    }
}

/// The implementor-facing disk trait.
///
/// Implementations must check ranges themselves (use [`check_io_range`]):
/// [`Disk`] checks too, but a backend may be driven directly in tests.
pub trait DiskIo: Send + Sync + 'static {
    /// A short name of the kind of disk, for logs ("ram", "layered", ...).
    fn disk_type(&self) -> &str;
    /// Number of sectors.
    fn sector_count(&self) -> u64;
    /// Logical sector size in bytes.
    fn sector_size(&self) -> u32 {
        DEFAULT_SECTOR_SIZE
    }
    /// Physical sector size in bytes (a hint for alignment).
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }
    /// A 16-byte identifier of the disk's contents, if it has one (a fixed
    /// VHD's unique id, for example).
    fn disk_id(&self) -> Option<[u8; 16]> {
        None
    }
    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;
    /// Where the disk's data came from so far.
    fn counters(&self) -> DiskCounters {
        DiskCounters::default()
    }
    /// Reads `buf.len()` bytes starting at `sector`, filling the whole
    /// buffer or failing.
    fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
    ) -> impl Future<Output = Result<(), DiskError>> + Send;
    /// Reads `buf.len()` bytes starting at `sector` into a buffer the
    /// caller hands over, and hands it back with the result. The default
    /// lends the buffer to [`read`](Self::read); a disk whose data comes
    /// from another thread (the SQLite cache engine) overrides it to fill
    /// the buffer there and save a copy. A consumer that keeps its own
    /// buffers (the NBD export's pool) should prefer it.
    fn read_owned(
        &self,
        sector: u64,
        mut buf: Vec<u8>,
    ) -> impl Future<Output = (Vec<u8>, Result<(), DiskError>)> + Send {
        async move {
            let result = self.read(sector, &mut buf).await;
            (buf, result)
        }
    }
    /// Writes `buf` starting at `sector`. With `fua` the data is durable
    /// when the call returns.
    fn write(
        &self,
        sector: u64,
        buf: &[u8],
        fua: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;
    /// Makes all completed writes durable.
    fn sync_cache(&self) -> impl Future<Output = Result<(), DiskError>> + Send;
    /// Tells the disk that `count` sectors at `sector` are no longer in
    /// use. Reading them afterwards returns zeroes or their old contents.
    fn unmap(&self, sector: u64, count: u64) -> impl Future<Output = Result<(), DiskError>> + Send;
}

mod erased {
    //! Object-safe mirror of [`DiskIo`](super::DiskIo), kept in its own module so
    //! its method names never shadow the public trait's.
    use super::DiskCounters;
    use super::DiskError;
    use super::DiskIo;
    use std::future::Future;
    use std::pin::Pin;

    type BoxFut<'a> = Pin<Box<dyn Future<Output = Result<(), DiskError>> + Send + 'a>>;
    type OwnedFut<'a> = Pin<Box<dyn Future<Output = (Vec<u8>, Result<(), DiskError>)> + Send + 'a>>;

    /// Object-safe mirror of [`DiskIo`], implemented for every `DiskIo`.
    pub(crate) trait DynDiskIo: Send + Sync {
        fn disk_type(&self) -> &str;
        fn sector_count(&self) -> u64;
        fn sector_size(&self) -> u32;
        fn physical_sector_size(&self) -> u32;
        fn disk_id(&self) -> Option<[u8; 16]>;
        fn is_read_only(&self) -> bool;
        fn counters(&self) -> DiskCounters;
        fn read<'a>(&'a self, sector: u64, buf: &'a mut [u8]) -> BoxFut<'a>;
        fn read_owned(&self, sector: u64, buf: Vec<u8>) -> OwnedFut<'_>;
        fn write<'a>(&'a self, sector: u64, buf: &'a [u8], fua: bool) -> BoxFut<'a>;
        fn sync_cache(&self) -> BoxFut<'_>;
        fn unmap(&self, sector: u64, count: u64) -> BoxFut<'_>;
    }

    impl<T: DiskIo> DynDiskIo for T {
        fn disk_type(&self) -> &str {
            DiskIo::disk_type(self)
        }
        fn sector_count(&self) -> u64 {
            DiskIo::sector_count(self)
        }
        fn sector_size(&self) -> u32 {
            DiskIo::sector_size(self)
        }
        fn physical_sector_size(&self) -> u32 {
            DiskIo::physical_sector_size(self)
        }
        fn disk_id(&self) -> Option<[u8; 16]> {
            DiskIo::disk_id(self)
        }
        fn is_read_only(&self) -> bool {
            DiskIo::is_read_only(self)
        }
        fn counters(&self) -> DiskCounters {
            DiskIo::counters(self)
        }
        fn read<'a>(&'a self, sector: u64, buf: &'a mut [u8]) -> BoxFut<'a> {
            Box::pin(DiskIo::read(self, sector, buf))
        }
        fn read_owned(&self, sector: u64, buf: Vec<u8>) -> OwnedFut<'_> {
            Box::pin(DiskIo::read_owned(self, sector, buf))
        }
        fn write<'a>(&'a self, sector: u64, buf: &'a [u8], fua: bool) -> BoxFut<'a> {
            Box::pin(DiskIo::write(self, sector, buf, fua))
        }
        fn sync_cache(&self) -> BoxFut<'_> {
            Box::pin(DiskIo::sync_cache(self))
        }
        fn unmap(&self, sector: u64, count: u64) -> BoxFut<'_> {
            Box::pin(DiskIo::unmap(self, sector, count))
        }
    }
}

/// A cheap-to-clone handle to any disk.
///
/// The handle re-checks ranges, buffer lengths and the read-only flag before
/// calling the implementation, so every consumer gets the same errors.
#[derive(Clone)]
pub struct Disk(Arc<dyn erased::DynDiskIo>);

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("type", &self.disk_type())
            .field("sector_count", &self.sector_count())
            .field("sector_size", &self.sector_size())
            .field("read_only", &self.is_read_only())
            .finish()
    }
}

impl Disk {
    /// Wraps a disk implementation. Fails if its sector size is zero or not
    /// a power of two.
    pub fn new(disk: impl DiskIo) -> Result<Self, DiskError> {
        let ss = DiskIo::sector_size(&disk);
        if ss == 0 || !ss.is_power_of_two() {
            return Err(DiskError::InvalidArgument(format!(
                "sector size {ss} is not a power of two"
            )));
        }
        Ok(Disk(Arc::new(disk)))
    }

    /// A short name of the kind of disk.
    pub fn disk_type(&self) -> &str {
        self.0.disk_type()
    }
    /// Number of sectors.
    pub fn sector_count(&self) -> u64 {
        self.0.sector_count()
    }
    /// Logical sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.0.sector_size()
    }
    /// Size of the disk in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.sector_count() * u64::from(self.sector_size())
    }
    /// Physical sector size in bytes.
    pub fn physical_sector_size(&self) -> u32 {
        self.0.physical_sector_size()
    }
    /// The disk's 16-byte identifier, if any.
    pub fn disk_id(&self) -> Option<[u8; 16]> {
        self.0.disk_id()
    }
    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
    /// Where the disk's data came from so far.
    pub fn counters(&self) -> DiskCounters {
        self.0.counters()
    }

    /// Reads `buf.len()` bytes at `sector`.
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let n = check_io_range(sector, buf.len(), self.sector_size(), self.sector_count())?;
        if n == 0 {
            return Ok(());
        }
        self.0.read(sector, buf).await
    }

    /// Reads `buf.len()` bytes at `sector` into a buffer handed over and
    /// back (see [`DiskIo::read_owned`]): for consumers that keep their
    /// own buffers, this saves a copy on disks whose data comes from
    /// another thread.
    pub async fn read_owned(&self, sector: u64, buf: Vec<u8>) -> (Vec<u8>, Result<(), DiskError>) {
        match check_io_range(sector, buf.len(), self.sector_size(), self.sector_count()) {
            Err(e) => (buf, Err(e)),
            Ok(0) => (buf, Ok(())),
            Ok(_) => self.0.read_owned(sector, buf).await,
        }
    }

    /// Writes `buf` at `sector`.
    pub async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        if self.is_read_only() {
            return Err(DiskError::ReadOnly);
        }
        let n = check_io_range(sector, buf.len(), self.sector_size(), self.sector_count())?;
        if n == 0 {
            return Ok(());
        }
        self.0.write(sector, buf, fua).await
    }

    /// Makes all completed writes durable.
    pub async fn sync_cache(&self) -> Result<(), DiskError> {
        self.0.sync_cache().await
    }

    /// Unmaps `count` sectors at `sector`.
    pub async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        if self.is_read_only() {
            return Err(DiskError::ReadOnly);
        }
        check_sector_range(sector, count, self.sector_count())?;
        if count == 0 {
            return Ok(());
        }
        self.0.unmap(sector, count).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A plain in-memory disk used to exercise the handle's checks.
    struct VecDisk {
        data: Mutex<Vec<u8>>,
        read_only: bool,
    }

    impl DiskIo for VecDisk {
        fn disk_type(&self) -> &str {
            "vec"
        }
        fn sector_count(&self) -> u64 {
            self.data.lock().unwrap().len() as u64 / 512
        }
        fn is_read_only(&self) -> bool {
            self.read_only
        }
        async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            check_io_range(sector, buf.len(), 512, self.sector_count())?;
            let off = sector as usize * 512;
            buf.copy_from_slice(&self.data.lock().unwrap()[off..off + buf.len()]);
            Ok(())
        }
        async fn write(&self, sector: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
            check_io_range(sector, buf.len(), 512, self.sector_count())?;
            let off = sector as usize * 512;
            self.data.lock().unwrap()[off..off + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        async fn sync_cache(&self) -> Result<(), DiskError> {
            Ok(())
        }
        async fn unmap(&self, _sector: u64, _count: u64) -> Result<(), DiskError> {
            Ok(())
        }
    }

    fn disk(read_only: bool) -> Disk {
        Disk::new(VecDisk {
            data: Mutex::new(vec![0; 8 * 512]),
            read_only,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn round_trip_and_range_checks() {
        let d = disk(false);
        assert_eq!(d.size_bytes(), 4096);
        d.write(7, &[0xab; 512], false).await.unwrap();
        let mut buf = [0u8; 512];
        d.read(7, &mut buf).await.unwrap();
        assert_eq!(buf, [0xab; 512]);

        let mut two = [0u8; 1024];
        assert!(matches!(
            d.read(7, &mut two).await,
            Err(DiskError::OutOfRange {
                start: 7,
                end: 9,
                sector_count: 8
            })
        ));
        assert!(matches!(
            d.read(u64::MAX, &mut buf).await,
            Err(DiskError::OutOfRange { end: u64::MAX, .. })
        ));
        let mut odd = [0u8; 100];
        assert!(matches!(
            d.read(0, &mut odd).await,
            Err(DiskError::InvalidArgument(_))
        ));
        assert!(matches!(
            d.unmap(4, 5).await,
            Err(DiskError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn read_only_refuses_writes() {
        let d = disk(true);
        assert!(matches!(
            d.write(0, &[0; 512], false).await,
            Err(DiskError::ReadOnly)
        ));
        assert!(matches!(d.unmap(0, 1).await, Err(DiskError::ReadOnly)));
    }

    #[test]
    fn counters_add() {
        let a = DiskCounters {
            remote_requests: 1,
            cache_hit_bytes: 10,
            ..Default::default()
        };
        let b = DiskCounters {
            remote_requests: 2,
            remote_bytes_fetched: 5,
            ..Default::default()
        };
        let c = a + b;
        assert_eq!(c.remote_requests, 3);
        assert_eq!(c.remote_bytes_fetched, 5);
        assert_eq!(c.cache_hit_bytes, 10);
    }
}
