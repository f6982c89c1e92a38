//! The `disk_layered` traits for the SQLite layer and the auto-cache.

use crate::auto_cache::{AutoCacheSqliteDiskLayer, LowerDisk};
use crate::{FormatParams, Geometry, SqliteDiskLayer, SqliteLayerError};
use disk_backend::{DiskCounters, DiskError};
use disk_layered::{LayerAttach, LayerIo, LowerLayerMetadata, SectorMarker, WriteNoOverwrite};
use std::path::PathBuf;

impl LayerIo for SqliteDiskLayer {
    fn layer_type(&self) -> &str {
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
    fn is_logically_read_only(&self) -> bool {
        self.refuses_writes()
    }
    /// Fills come in whole chunks: a chunk that is entirely present is
    /// stored in its compact form and read with a single BLOB read.
    fn preferred_fill_sectors(&self) -> Option<u64> {
        Some(u64::from(self.chunk_size() / self.geometry().sector_size))
    }
    /// The layered disk counts cache hits, misses and fills itself.
    fn counters(&self) -> DiskCounters {
        DiskCounters::default()
    }
    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        mut marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        let present = self.read_sectors(sector, buf).await?;
        for (s, n) in present.present_runs() {
            marker.set_range(sector + s..sector + s + n);
        }
        Ok(())
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        self.write_sectors(sector, buf, true, fua).await?;
        Ok(())
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(self.sync().await?)
    }
    /// Drops the sectors when the layers below read as zero there;
    /// otherwise keeps their old contents (allowed by the contract, and
    /// it costs nothing).
    async fn unmap(&self, sector: u64, count: u64, next_is_zero: bool) -> Result<(), DiskError> {
        disk_backend::check_sector_range(sector, count, self.geometry().sector_count)?;
        if self.refuses_writes() {
            return Err(DiskError::ReadOnly);
        }
        if next_is_zero {
            self.unmap_sectors(sector, count).await?;
        }
        Ok(())
    }
    /// Always offered, so a cache opened read-only can still sit in a
    /// stack as a read cache: its fills then fail with
    /// [`DiskError::ReadOnly`], which the layered disk treats as "not
    /// cached" (fills are best effort) while serving the data from below.
    fn write_no_overwrite(&self) -> Option<impl WriteNoOverwrite> {
        Some(self)
    }
}

impl WriteNoOverwrite for SqliteDiskLayer {
    /// Queued write-behind ([`SqliteDiskLayer::queue_fill`]): the guest's
    /// read does not wait for SQLite.
    async fn write_no_overwrite(&self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.queue_fill(sector, buf).await?;
        Ok(())
    }
}

fn lower_geometry(lower: &LowerLayerMetadata) -> Geometry {
    Geometry {
        sector_count: lower.sector_count,
        sector_size: lower.sector_size,
    }
}

impl LayerAttach for AutoCacheSqliteDiskLayer {
    type Layer = SqliteDiskLayer;
    type Error = SqliteLayerError;

    /// Opens (or atomically creates) the cache file for the layer below.
    /// An auto-cache cannot be the bottom layer.
    async fn attach(
        self,
        lower: Option<LowerLayerMetadata>,
    ) -> Result<SqliteDiskLayer, SqliteLayerError> {
        let Some(lower) = lower else {
            return Err(SqliteLayerError::InvalidParams(
                "an auto-cache layer needs a layer below it (it caches that layer)".into(),
            ));
        };
        let lower = LowerDisk {
            geometry: lower_geometry(&lower),
            disk_id: lower.disk_id,
        };
        crate::blocking(move || self.open_for(&lower)).await
    }
}

/// A SQLite layer in an explicit file, opened (and, if asked, formatted)
/// when it is attached to a stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteDiskLayerConfig {
    /// The layer file.
    pub path: PathBuf,
    /// Format the file if it does not exist, with the lower layer's
    /// geometry (or `sector_count`/`sector_size` when it is the bottom).
    pub create: bool,
    /// Open the file read-only.
    pub read_only: bool,
    /// Chunk size for a newly formatted file.
    pub chunk_size: u32,
    /// Format the file as logically read-only (a read cache).
    pub logically_read_only: bool,
    /// Geometry for a new bottom-layer file: sector count and size.
    pub geometry: Option<Geometry>,
}

impl SqliteDiskLayerConfig {
    /// Opens an existing file; `create` formats it if missing.
    pub fn new(path: impl Into<PathBuf>, create: bool, read_only: bool) -> Self {
        SqliteDiskLayerConfig {
            path: path.into(),
            create,
            read_only,
            chunk_size: crate::DEFAULT_CHUNK_SIZE,
            logically_read_only: false,
            geometry: None,
        }
    }
}

impl LayerAttach for SqliteDiskLayerConfig {
    type Layer = SqliteDiskLayer;
    type Error = SqliteLayerError;

    /// Opens the file, formatting it first if it is missing and `create`
    /// is set. With a lower layer, the file's geometry must match it.
    async fn attach(
        self,
        lower: Option<LowerLayerMetadata>,
    ) -> Result<SqliteDiskLayer, SqliteLayerError> {
        crate::blocking(move || {
            let lower_geo = lower.as_ref().map(lower_geometry);
            if self.create && !self.read_only && !self.path.exists() {
                let Some(g) = lower_geo.or(self.geometry) else {
                    return Err(SqliteLayerError::InvalidParams(format!(
                        "cannot format {}: it is the bottom layer and no geometry was given",
                        self.path.display()
                    )));
                };
                let params = FormatParams {
                    sector_count: g.sector_count,
                    sector_size: g.sector_size,
                    chunk_size: self.chunk_size,
                    logically_read_only: self.logically_read_only,
                    disk_id: lower.and_then(|l| l.disk_id),
                };
                crate::auto_cache::format_atomically(&self.path, &params)?;
            }
            let layer = SqliteDiskLayer::open(&self.path, self.read_only)?;
            if let Some(g) = lower_geo
                && g != layer.geometry()
            {
                return Err(SqliteLayerError::GeometryMismatch {
                    path: self.path.clone(),
                    file: layer.geometry(),
                    lower: g,
                });
            }
            Ok(layer)
        })
        .await
    }
}
