//! The `disk_layered` traits for the SQLite layer and the auto-cache.

use crate::FormatParams;
use crate::Geometry;
use crate::ReadTarget;
use crate::SectorPresence;
use crate::SqliteDiskLayer;
use crate::SqliteLayerError;
use crate::auto_cache::AutoCacheSqliteDiskLayer;
use crate::auto_cache::LowerDisk;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_layered::LayerAttach;
use disk_layered::LayerIo;
use disk_layered::LowerLayerMetadata;
use disk_layered::SectorMarker;
use disk_layered::WriteNoOverwrite;
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
    /// Fills come in units of the fill size (whole chunks by default: a
    /// chunk that is entirely present is stored in its compact form and
    /// read with a single BLOB read).
    fn preferred_fill_sectors(&self) -> Option<u64> {
        Some(u64::from(self.fill_size() / self.geometry().sector_size))
    }
    /// From the chunk index (and queued fills) alone: no data is read.
    async fn presence(
        &self,
        sector: u64,
        count: u64,
        mut marker: SectorMarker<'_>,
    ) -> Result<bool, DiskError> {
        disk_backend::check_sector_range(sector, count, self.geometry().sector_count)?;
        let bits = self.engine_presence(sector, count).await?;
        for (from, to) in crate::engine::present_runs(&bits, count) {
            marker.set_range(sector + from..sector + to);
        }
        Ok(true)
    }
    /// See [`SqliteDiskLayer::accepts_fills`].
    fn accepts_fills(&self) -> bool {
        SqliteDiskLayer::accepts_fills(self)
    }
    /// The layered disk counts cache hits, misses and fills itself; the
    /// layer adds the damaged chunks its reads found.
    fn counters(&self) -> DiskCounters {
        DiskCounters {
            cache_damaged_chunks: self.cache_counters().cache_damaged_chunks,
            ..DiskCounters::default()
        }
    }
    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        let present = self
            .read_into(sector, ReadTarget::Borrowed(buf), false)
            .await?;
        mark(sector, &present, marker);
        Ok(())
    }
    /// The engine's reader thread fills the buffer directly.
    async fn read_owned(
        &self,
        sector: u64,
        mut buf: Vec<u8>,
        marker: SectorMarker<'_>,
    ) -> (Vec<u8>, Result<(), DiskError>) {
        let r = self
            .read_into(sector, ReadTarget::Owned(&mut buf), false)
            .await;
        let r = match r {
            Ok(present) => {
                mark(sector, &present, marker);
                Ok(())
            }
            Err(e) => Err(e.into()),
        };
        (buf, r)
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

/// Marks the present sectors of a read that started at `sector`.
fn mark(sector: u64, present: &SectorPresence, mut marker: SectorMarker<'_>) {
    for (s, n) in present.present_runs() {
        marker.set_range(sector + s..sector + s + n);
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
        self.open_for(&lower).await
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
        let lower_geo = lower.as_ref().map(lower_geometry);
        if self.create && !self.read_only {
            let params = lower_geo.or(self.geometry).map(|g| FormatParams {
                sector_count: g.sector_count,
                sector_size: g.sector_size,
                chunk_size: self.chunk_size,
                logically_read_only: self.logically_read_only,
                disk_id: lower.and_then(|l| l.disk_id),
            });
            let path = self.path.clone();
            crate::engine::off_runtime("formatting", move || {
                if path.exists() {
                    return Ok(());
                }
                let Some(params) = params else {
                    return Err(SqliteLayerError::InvalidParams(format!(
                        "cannot format {}: it is the bottom layer and no geometry was given",
                        path.display()
                    )));
                };
                crate::auto_cache::format_atomically_blocking(&path, &params).map(drop)
            })
            .await?;
        }
        let layer = SqliteDiskLayer::open(&self.path, self.read_only).await?;
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
    }
}
