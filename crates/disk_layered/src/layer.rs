//! The layer traits: what a layer implements to take part in a
//! [`LayeredDisk`](crate::LayeredDisk), and the type-erased wrappers the
//! layered disk stores.

use crate::SectorMarker;
use disk_backend::Disk;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use std::error::Error;
use std::future::Future;
use std::pin::Pin;

/// What a layer learns, when it is attached, about the layer directly below
/// it (the next layer towards the bottom of the stack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerLayerMetadata {
    /// Number of sectors of the lower layer.
    pub sector_count: u64,
    /// Logical sector size of the lower layer, in bytes.
    pub sector_size: u32,
    /// Physical sector size of the lower layer, in bytes.
    pub physical_sector_size: u32,
    /// The lower layer's disk id, which the stack's disk id comes from (a
    /// fixed VHD's unique id, for example). Read caches key on it.
    pub disk_id: Option<[u8; 16]>,
}

/// An attached layer's I/O interface: like [`disk_backend::DiskIo`], except
/// that a layer may be *sparse* and its reads report which sectors it had.
///
/// Contract the layered disk relies on:
/// - [`read`](Self::read) is called for a run of sectors none of which an
///   upper layer supplied. The layer copies the sectors it has into `buf`
///   and marks them with the [`SectorMarker`]; sectors it does not mark are
///   looked up in the layers below. The layer may scribble on the bytes of
///   unmarked sectors (they will be overwritten).
/// - [`write`](Self::write) makes every sector of the write present.
/// - Ranges have been checked by the layered disk, but a layer should still
///   return [`DiskError::OutOfRange`] rather than panic if called badly.
/// - A layer is shared by many tasks at once and synchronises internally;
///   in particular a read-cache layer's
///   [`WriteNoOverwrite::write_no_overwrite`] must be atomic with respect
///   to [`write`](Self::write) for each sector.
///
/// Counters: the layered disk itself accounts `cache_hit_bytes`,
/// `cache_miss_bytes` and `cache_fill_bytes` for every read-cache layer, so
/// a layer's [`counters`](Self::counters) should leave those three fields
/// zero (they are added together with the layer's other counters).
///
/// # Example
///
/// A layer that knows nothing (every read falls through) and refuses
/// writes:
///
/// ```
/// use disk_backend::DiskError;
/// use disk_layered::LayerIo;
/// use disk_layered::SectorMarker;
///
/// struct EmptyLayer {
///     sectors: u64,
/// }
///
/// impl LayerIo for EmptyLayer {
///     fn layer_type(&self) -> &str {
///         "empty"
///     }
///     fn sector_count(&self) -> u64 {
///         self.sectors
///     }
///     fn sector_size(&self) -> u32 {
///         512
///     }
///     fn is_logically_read_only(&self) -> bool {
///         true
///     }
///     async fn read(
///         &self,
///         _sector: u64,
///         _buf: &mut [u8],
///         _marker: SectorMarker<'_>,
///     ) -> Result<(), DiskError> {
///         // Mark nothing: every sector comes from the layers below.
///         Ok(())
///     }
///     async fn write(&self, _sector: u64, _buf: &[u8], _fua: bool) -> Result<(), DiskError> {
///         Err(DiskError::ReadOnly)
///     }
///     async fn sync_cache(&self) -> Result<(), DiskError> {
///         Ok(())
///     }
///     async fn unmap(&self, _s: u64, _n: u64, _next_is_zero: bool) -> Result<(), DiskError> {
///         Ok(())
///     }
/// }
/// ```
///
/// A read cache additionally implements [`WriteNoOverwrite`] and returns
/// `Some(self)` from [`write_no_overwrite`](Self::write_no_overwrite),
/// and may ask for whole-chunk fills with
/// [`preferred_fill_sectors`](Self::preferred_fill_sectors).
pub trait LayerIo: Send + Sync + 'static {
    /// A short name of the kind of layer, for logs ("ram", "sqlite", ...).
    fn layer_type(&self) -> &str;

    /// Number of sectors. Every layer of a stack has the same count.
    fn sector_count(&self) -> u64;

    /// Logical sector size in bytes. Every layer of a stack has the same
    /// size.
    fn sector_size(&self) -> u32;

    /// Physical sector size in bytes.
    fn physical_sector_size(&self) -> u32 {
        self.sector_size()
    }

    /// The layer's disk id. Only the bottom layer's id is used by the stack.
    fn disk_id(&self) -> Option<[u8; 16]> {
        None
    }

    /// Whether ordinary writes are refused. A logically read-only layer may
    /// still accept read-cache fills through [`WriteNoOverwrite`].
    fn is_logically_read_only(&self) -> bool;

    /// For a read-cache layer: fill in aligned chunks of this many sectors.
    /// A miss of sectors `s..e` is widened to
    /// `s / n * n .. e.div_ceil(n) * n` (clipped to the disk), so the cache
    /// fills whole chunks and a sequential reader hits. `None` (the
    /// default) fills exactly the missed sectors.
    fn preferred_fill_sectors(&self) -> Option<u64> {
        None
    }

    /// For a read-cache layer: whether it takes fills right now. A cache
    /// that cannot store them (opened read-only, its file system full, its
    /// file damaged) says `false`; the layered disk then reads its misses
    /// from below exactly as asked (no widening, no fill), so nothing is
    /// fetched that cannot be kept. Default `true`.
    fn accepts_fills(&self) -> bool {
        true
    }

    /// The layer's own counters (remote requests, bytes fetched, ...).
    /// Leave the cache hit/miss/fill fields zero: the layered disk counts
    /// those.
    fn counters(&self) -> DiskCounters {
        DiskCounters::default()
    }

    /// Reads the sectors this layer has from `sector..sector + n`, where
    /// `n = buf.len() / sector_size`, into `buf`, marking each one supplied
    /// through `marker` (whose range is exactly the request).
    fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        marker: SectorMarker<'_>,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// [`read`](Self::read) into a buffer handed over and back with the
    /// result: the layered disk calls it instead when the layer is asked
    /// for the whole of a read into an owned buffer
    /// ([`disk_backend::Disk::read_owned`]). The default lends the buffer
    /// to `read`; a layer whose data comes from another thread overrides
    /// it to fill the buffer there and save a copy.
    fn read_owned(
        &self,
        sector: u64,
        mut buf: Vec<u8>,
        marker: SectorMarker<'_>,
    ) -> impl Future<Output = (Vec<u8>, Result<(), DiskError>)> + Send {
        async move {
            let result = self.read(sector, &mut buf, marker).await;
            (buf, result)
        }
    }

    /// Marks, through `marker`, which sectors of `sector..sector + count`
    /// the layer has, without reading their data, if it can tell that
    /// cheaply; returns whether it did. The default cannot (`false`), and
    /// a caller then has to read to know. A prefetch uses it to skip what a
    /// read cache already holds.
    fn presence(
        &self,
        sector: u64,
        count: u64,
        marker: SectorMarker<'_>,
    ) -> impl Future<Output = Result<bool, DiskError>> + Send {
        let _ = (sector, count, marker);
        std::future::ready(Ok(false))
    }

    /// Writes `buf` at `sector`; afterwards those sectors are present. With
    /// `fua` the data is durable when the call returns.
    fn write(
        &self,
        sector: u64,
        buf: &[u8],
        fua: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Makes completed writes durable.
    fn sync_cache(&self) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// Unmaps `count` sectors at `sector`. The sectors must afterwards read
    /// (through the stack) as either their old contents or zeroes: a layer
    /// may drop them (making them fall through to the layers below) only
    /// if `next_is_zero` says the layers below read as zero there;
    /// otherwise it keeps them or stores zeroes.
    fn unmap(
        &self,
        sector: u64,
        count: u64,
        next_is_zero: bool,
    ) -> impl Future<Output = Result<(), DiskError>> + Send;

    /// The layer's write-no-overwrite interface, if it has one. A layer can
    /// only be a read cache if this returns `Some`. The usual
    /// implementation is `Some(self)` on a layer that implements
    /// [`WriteNoOverwrite`].
    fn write_no_overwrite(&self) -> Option<impl WriteNoOverwrite> {
        None::<NoWriteNoOverwrite>
    }
}

/// Writing only the sectors a layer does not have yet: how a read cache is
/// filled without clobbering newer data.
///
/// A fill carries data read from the layers below *before* the fill; a
/// guest write to the same sector may have landed in the cache layer in
/// the meantime. Write-no-overwrite keeps the newer write.
pub trait WriteNoOverwrite: Send + Sync {
    /// Writes those sectors of `buf` (starting at `sector`) that are not
    /// present in the layer; sectors already present keep their contents.
    /// Must be atomic per sector with respect to [`LayerIo::write`].
    fn write_no_overwrite(
        &self,
        sector: u64,
        buf: &[u8],
    ) -> impl Future<Output = Result<(), DiskError>> + Send;
}

impl<T: WriteNoOverwrite> WriteNoOverwrite for &T {
    fn write_no_overwrite(
        &self,
        sector: u64,
        buf: &[u8],
    ) -> impl Future<Output = Result<(), DiskError>> + Send {
        (**self).write_no_overwrite(sector, buf)
    }
}

/// The type of "no write-no-overwrite support": it has no values, so
/// `None::<NoWriteNoOverwrite>` is the default of
/// [`LayerIo::write_no_overwrite`].
#[derive(Debug)]
pub enum NoWriteNoOverwrite {}

impl WriteNoOverwrite for NoWriteNoOverwrite {
    async fn write_no_overwrite(&self, _sector: u64, _buf: &[u8]) -> Result<(), DiskError> {
        match *self {}
    }
}

/// A layer that is not attached yet: attaching it tells it about the layer
/// below (or that there is none), and yields the [`LayerIo`].
///
/// This is how a layer can infer its size (a RAM layer without a length)
/// or its identity (an auto-cache keyed by the lower disk's id) from the
/// stack. The layered disk attaches layers bottom first.
pub trait LayerAttach: Send + 'static {
    /// The attached layer.
    type Layer: LayerIo;
    /// Why attaching failed.
    type Error: Error + Send + Sync + 'static;

    /// Attaches the layer above a layer described by `lower`, or as the
    /// bottom layer if `lower` is `None`.
    fn attach(
        self,
        lower: Option<LowerLayerMetadata>,
    ) -> impl Future<Output = Result<Self::Layer, Self::Error>> + Send;
}

/// A [`LayerIo`] that is already attached; attaching it again is a no-op.
/// The layered disk still checks it against the layer below.
#[derive(Debug)]
pub struct Attached<L>(pub L);

impl<L: LayerIo> LayerAttach for Attached<L> {
    type Layer = L;
    type Error = std::convert::Infallible;

    async fn attach(self, _lower: Option<LowerLayerMetadata>) -> Result<L, Self::Error> {
        Ok(self.0)
    }
}

/// A full [`Disk`] used as a layer: it has every sector, so nothing below
/// it is ever read. Normally the bottom layer (a file or a blob).
#[derive(Debug, Clone)]
pub struct DiskAsLayer(pub Disk);

impl LayerIo for DiskAsLayer {
    fn layer_type(&self) -> &str {
        self.0.disk_type()
    }
    fn sector_count(&self) -> u64 {
        self.0.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.0.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.0.physical_sector_size()
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.0.disk_id()
    }
    fn is_logically_read_only(&self) -> bool {
        self.0.is_read_only()
    }
    fn counters(&self) -> DiskCounters {
        self.0.counters()
    }
    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        mut marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        self.0.read(sector, buf).await?;
        marker.set_all();
        Ok(())
    }
    async fn read_owned(
        &self,
        sector: u64,
        buf: Vec<u8>,
        mut marker: SectorMarker<'_>,
    ) -> (Vec<u8>, Result<(), DiskError>) {
        let (buf, result) = self.0.read_owned(sector, buf).await;
        if result.is_ok() {
            marker.set_all();
        }
        (buf, result)
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        self.0.write(sector, buf, fua).await
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        self.0.sync_cache().await
    }
    async fn unmap(&self, sector: u64, count: u64, _next_is_zero: bool) -> Result<(), DiskError> {
        // A full disk decides itself what unmapped sectors read as (zero or
        // old contents); nothing below it can show through.
        self.0.unmap(sector, count).await
    }
}

/// A type-erased, not yet attached layer: what a [`LayerConfiguration`]
/// holds.
pub struct DiskLayer(pub(crate) Box<dyn erased::DynLayerAttach>);

impl std::fmt::Debug for DiskLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLayer").finish_non_exhaustive()
    }
}

impl DiskLayer {
    /// A layer that is attached when the stack is built.
    pub fn new(layer: impl LayerAttach) -> Self {
        DiskLayer(Box::new(layer))
    }

    /// An already attached layer.
    pub fn from_layer(layer: impl LayerIo) -> Self {
        Self::new(Attached(layer))
    }

    /// A full disk as a layer (see [`DiskAsLayer`]).
    pub fn from_disk(disk: Disk) -> Self {
        Self::from_layer(DiskAsLayer(disk))
    }
}

impl From<Disk> for DiskLayer {
    fn from(disk: Disk) -> Self {
        Self::from_disk(disk)
    }
}

/// One layer of a stack passed to [`LayeredDisk::new`](crate::LayeredDisk::new),
/// with its role in reads and writes.
#[derive(Debug)]
pub struct LayerConfiguration<L = DiskLayer> {
    /// The layer.
    pub layer: L,
    /// Writes to this layer also go to the layer below it.
    pub write_through: bool,
    /// Sectors read from below this layer are written into it with
    /// write-no-overwrite.
    pub read_cache: bool,
}

impl LayerConfiguration {
    /// A layer that is neither write-through nor a read cache.
    pub fn plain(layer: impl Into<DiskLayer>) -> Self {
        LayerConfiguration {
            layer: layer.into(),
            write_through: false,
            read_cache: false,
        }
    }

    /// A read-cache layer.
    pub fn read_cache(layer: impl Into<DiskLayer>) -> Self {
        LayerConfiguration {
            layer: layer.into(),
            write_through: false,
            read_cache: true,
        }
    }

    /// A write-through layer.
    pub fn write_through(layer: impl Into<DiskLayer>) -> Self {
        LayerConfiguration {
            layer: layer.into(),
            write_through: true,
            read_cache: false,
        }
    }
}

pub(crate) type BoxFut<'a, T = ()> =
    Pin<Box<dyn Future<Output = Result<T, DiskError>> + Send + 'a>>;

/// A read into an owned buffer: the buffer comes back with the result.
pub(crate) type OwnedFut<'a> =
    Pin<Box<dyn Future<Output = (Vec<u8>, Result<(), DiskError>)> + Send + 'a>>;

pub(crate) mod erased {
    //! Object-safe mirrors of the layer traits, in their own module so their
    //! method names never shadow the public traits'.
    use super::*;

    pub(crate) type AttachFut = Pin<
        Box<dyn Future<Output = Result<Box<dyn DynLayerIo>, Box<dyn Error + Send + Sync>>> + Send>,
    >;

    pub(crate) trait DynLayerAttach: Send {
        fn attach(self: Box<Self>, lower: Option<LowerLayerMetadata>) -> AttachFut;
    }

    impl<T: LayerAttach> DynLayerAttach for T {
        fn attach(self: Box<Self>, lower: Option<LowerLayerMetadata>) -> AttachFut {
            Box::pin(async move {
                match LayerAttach::attach(*self, lower).await {
                    Ok(l) => Ok(Box::new(l) as Box<dyn DynLayerIo>),
                    Err(e) => Err(Box::new(e) as Box<dyn Error + Send + Sync>),
                }
            })
        }
    }

    pub(crate) trait DynLayerIo: Send + Sync {
        fn layer_type(&self) -> &str;
        fn sector_count(&self) -> u64;
        fn sector_size(&self) -> u32;
        fn physical_sector_size(&self) -> u32;
        fn disk_id(&self) -> Option<[u8; 16]>;
        fn is_logically_read_only(&self) -> bool;
        fn preferred_fill_sectors(&self) -> Option<u64>;
        fn accepts_fills(&self) -> bool;
        fn counters(&self) -> DiskCounters;
        fn supports_write_no_overwrite(&self) -> bool;
        fn read<'a>(&'a self, sector: u64, buf: &'a mut [u8], m: SectorMarker<'a>) -> BoxFut<'a>;
        fn read_owned<'a>(&'a self, sector: u64, buf: Vec<u8>, m: SectorMarker<'a>)
        -> OwnedFut<'a>;
        fn presence<'a>(&'a self, sector: u64, count: u64, m: SectorMarker<'a>)
        -> BoxFut<'a, bool>;
        fn write<'a>(&'a self, sector: u64, buf: &'a [u8], fua: bool) -> BoxFut<'a>;
        fn write_no_overwrite<'a>(&'a self, sector: u64, buf: &'a [u8]) -> BoxFut<'a>;
        fn sync_cache(&self) -> BoxFut<'_>;
        fn unmap(&self, sector: u64, count: u64, next_is_zero: bool) -> BoxFut<'_>;
    }

    impl<T: LayerIo> DynLayerIo for T {
        fn layer_type(&self) -> &str {
            LayerIo::layer_type(self)
        }
        fn sector_count(&self) -> u64 {
            LayerIo::sector_count(self)
        }
        fn sector_size(&self) -> u32 {
            LayerIo::sector_size(self)
        }
        fn physical_sector_size(&self) -> u32 {
            LayerIo::physical_sector_size(self)
        }
        fn disk_id(&self) -> Option<[u8; 16]> {
            LayerIo::disk_id(self)
        }
        fn is_logically_read_only(&self) -> bool {
            LayerIo::is_logically_read_only(self)
        }
        fn preferred_fill_sectors(&self) -> Option<u64> {
            LayerIo::preferred_fill_sectors(self)
        }
        fn accepts_fills(&self) -> bool {
            LayerIo::accepts_fills(self)
        }
        fn counters(&self) -> DiskCounters {
            LayerIo::counters(self)
        }
        fn supports_write_no_overwrite(&self) -> bool {
            LayerIo::write_no_overwrite(self).is_some()
        }
        fn read<'a>(&'a self, sector: u64, buf: &'a mut [u8], m: SectorMarker<'a>) -> BoxFut<'a> {
            Box::pin(LayerIo::read(self, sector, buf, m))
        }
        fn read_owned<'a>(
            &'a self,
            sector: u64,
            buf: Vec<u8>,
            m: SectorMarker<'a>,
        ) -> OwnedFut<'a> {
            Box::pin(LayerIo::read_owned(self, sector, buf, m))
        }
        fn presence<'a>(
            &'a self,
            sector: u64,
            count: u64,
            m: SectorMarker<'a>,
        ) -> BoxFut<'a, bool> {
            Box::pin(LayerIo::presence(self, sector, count, m))
        }
        fn write<'a>(&'a self, sector: u64, buf: &'a [u8], fua: bool) -> BoxFut<'a> {
            Box::pin(LayerIo::write(self, sector, buf, fua))
        }
        fn write_no_overwrite<'a>(&'a self, sector: u64, buf: &'a [u8]) -> BoxFut<'a> {
            Box::pin(async move {
                match LayerIo::write_no_overwrite(self) {
                    Some(w) => w.write_no_overwrite(sector, buf).await,
                    None => Err(DiskError::InvalidArgument(format!(
                        "layer {} does not support write-no-overwrite",
                        LayerIo::layer_type(self)
                    ))),
                }
            })
        }
        fn sync_cache(&self) -> BoxFut<'_> {
            Box::pin(LayerIo::sync_cache(self))
        }
        fn unmap(&self, sector: u64, count: u64, next_is_zero: bool) -> BoxFut<'_> {
            Box::pin(LayerIo::unmap(self, sector, count, next_is_zero))
        }
    }
}
