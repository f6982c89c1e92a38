//! A sparse in-memory disk layer.
//!
//! Position in the data flow: the top layer of a VM's disk stack. Guest
//! writes land here, so the read cache and the image below are never
//! dirtied; when the VM goes away its writes go with it. Tests also use it
//! as a read cache (it supports write-no-overwrite) and, alone, as a RAM
//! disk.
//!
//! Model: the layer is split into chunks of [`CHUNK_SECTORS`] sectors.
//! Only chunks that have been written (or filled) are allocated; each has
//! one 64-bit presence word, bit `i` saying whether sector `i` of the chunk
//! is present in this layer. A read copies the present sectors run by run
//! and marks them; everything else falls through to the layer below.
//!
//! Invariants:
//! - a sector is present iff its presence bit is set; the bytes of absent
//!   sectors inside an allocated chunk are never returned;
//! - write-no-overwrite writes exactly the absent sectors and sets their
//!   bits under the same lock as ordinary writes, so a fill never
//!   replaces newer data;
//! - every access is range-checked against the layer's sector count.
//!
//! Size: [`RamDiskLayer::lazy`] takes an optional length in bytes; without
//! one the layer takes the size (and sector size) of the layer below when
//! it is attached.
//!
//! DEVNOTE: unmap drops sectors only when the layers below read as zero
//! (`next_is_zero`); otherwise dropping them would expose older data, so
//! the sectors keep their contents (allowed: unmapped sectors read as old
//! contents or zeroes).
//!
//! FUTURE: no memory limit; a guest that writes its whole disk holds it all
//! in RAM.

#![forbid(unsafe_code)]

use disk_backend::DEFAULT_SECTOR_SIZE;
use disk_backend::Disk;
use disk_backend::DiskError;
use disk_backend::check_sector_range;
use disk_layered::InvalidLayeredDisk;
use disk_layered::LayerAttach;
use disk_layered::LayerConfiguration;
use disk_layered::LayerIo;
use disk_layered::LayeredDisk;
use disk_layered::LowerLayerMetadata;
use disk_layered::SectorMarker;
use disk_layered::WriteNoOverwrite;
use parking_lot::RwLock;
use std::collections::BTreeMap;

/// Sectors per allocation chunk (one presence bit each in a `u64`).
pub const CHUNK_SECTORS: u64 = 64;

/// Errors creating or attaching a RAM layer.
#[derive(Debug, thiserror::Error)]
pub enum RamLayerError {
    /// The sector size is zero or not a power of two.
    #[error("sector size {0} is not a power of two")]
    BadSectorSize(u32),
    /// The length is not a whole number of sectors.
    #[error("RAM layer length {len} is not a multiple of the sector size {sector_size}")]
    LengthNotSectorMultiple {
        /// The requested length in bytes.
        len: u64,
        /// The sector size in bytes.
        sector_size: u32,
    },
    /// No length was given and there is no layer below to take it from.
    #[error("a RAM layer without a length must have a layer below it")]
    NoLength,
}

struct Chunk {
    present: u64,
    data: Box<[u8]>,
}

/// A sparse in-memory layer; see the [crate docs](crate).
pub struct RamDiskLayer {
    sector_count: u64,
    sector_size: u32,
    chunks: RwLock<BTreeMap<u64, Chunk>>,
}

impl std::fmt::Debug for RamDiskLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RamDiskLayer")
            .field("sector_count", &self.sector_count)
            .field("sector_size", &self.sector_size)
            .field("allocated_chunks", &self.chunks.read().len())
            .finish()
    }
}

/// Bits `lo..hi` of a word (`lo < hi <= 64`).
fn bits(lo: u64, hi: u64) -> u64 {
    let upper = if hi >= 64 { !0u64 } else { (1u64 << hi) - 1 };
    upper & (!0u64 << lo)
}

/// Calls `f(lo, hi)` for each maximal run of set bits of `mask`.
fn for_each_run(mut mask: u64, mut f: impl FnMut(u64, u64)) {
    while mask != 0 {
        let lo = u64::from(mask.trailing_zeros());
        let hi = lo + u64::from((mask >> lo).trailing_ones());
        f(lo, hi);
        mask &= !bits(lo, hi);
    }
}

impl RamDiskLayer {
    /// An empty layer of `sector_count` sectors of `sector_size` bytes.
    pub fn new(sector_count: u64, sector_size: u32) -> Result<Self, RamLayerError> {
        if sector_size == 0 || !sector_size.is_power_of_two() {
            return Err(RamLayerError::BadSectorSize(sector_size));
        }
        Ok(RamDiskLayer {
            sector_count,
            sector_size,
            chunks: RwLock::new(BTreeMap::new()),
        })
    }

    /// A layer to be attached into a stack: `len` bytes if given, else the
    /// size of the layer below it.
    pub fn lazy(len: Option<u64>) -> LazyRamDiskLayer {
        LazyRamDiskLayer { len }
    }

    /// Number of allocated chunks (for tests and diagnostics).
    pub fn allocated_chunks(&self) -> usize {
        self.chunks.read().len()
    }

    fn ss(&self) -> usize {
        self.sector_size as usize
    }

    fn check(&self, sector: u64, len: usize) -> Result<u64, DiskError> {
        disk_backend::check_io_range(sector, len, self.sector_size, self.sector_count)
    }

    /// Copies `buf` into the layer; with `overwrite == false` only absent
    /// sectors are written.
    fn store(&self, sector: u64, buf: &[u8], overwrite: bool) -> Result<(), DiskError> {
        let count = self.check(sector, buf.len())?;
        if count == 0 {
            return Ok(());
        }
        let end = sector + count;
        let ss = self.ss();
        let chunk_bytes = CHUNK_SECTORS as usize * ss;
        let mut chunks = self.chunks.write();
        for ci in sector / CHUNK_SECTORS..=(end - 1) / CHUNK_SECTORS {
            let base = ci * CHUNK_SECTORS;
            let lo = sector.max(base) - base;
            let hi = end.min(base + CHUNK_SECTORS) - base;
            let mask = bits(lo, hi);
            let chunk = chunks.entry(ci).or_insert_with(|| Chunk {
                present: 0,
                data: vec![0; chunk_bytes].into_boxed_slice(),
            });
            let todo = if overwrite {
                mask
            } else {
                mask & !chunk.present
            };
            for_each_run(todo, |a, b| {
                let src = ((base + a - sector) as usize) * ss..((base + b - sector) as usize) * ss;
                chunk.data[a as usize * ss..b as usize * ss].copy_from_slice(&buf[src]);
            });
            chunk.present |= mask;
        }
        Ok(())
    }

    fn load(
        &self,
        sector: u64,
        buf: &mut [u8],
        marker: &mut SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        let count = self.check(sector, buf.len())?;
        if count == 0 {
            return Ok(());
        }
        let end = sector + count;
        let ss = self.ss();
        let chunks = self.chunks.read();
        for (&ci, chunk) in chunks.range(sector / CHUNK_SECTORS..=(end - 1) / CHUNK_SECTORS) {
            let base = ci * CHUNK_SECTORS;
            let lo = sector.max(base) - base;
            let hi = end.min(base + CHUNK_SECTORS) - base;
            for_each_run(bits(lo, hi) & chunk.present, |a, b| {
                let dst = ((base + a - sector) as usize) * ss..((base + b - sector) as usize) * ss;
                buf[dst].copy_from_slice(&chunk.data[a as usize * ss..b as usize * ss]);
                marker.set_range(base + a..base + b);
            });
        }
        Ok(())
    }

    fn drop_sectors(&self, sector: u64, count: u64) {
        let end = sector + count;
        let mut chunks = self.chunks.write();
        let keys: Vec<u64> = chunks
            .range(sector / CHUNK_SECTORS..=(end - 1) / CHUNK_SECTORS)
            .map(|(k, _)| *k)
            .collect();
        for ci in keys {
            let base = ci * CHUNK_SECTORS;
            let lo = sector.max(base) - base;
            let hi = end.min(base + CHUNK_SECTORS) - base;
            if let Some(chunk) = chunks.get_mut(&ci) {
                chunk.present &= !bits(lo, hi);
                if chunk.present == 0 {
                    chunks.remove(&ci);
                }
            }
        }
    }
}

impl LayerIo for RamDiskLayer {
    fn layer_type(&self) -> &str {
        "ram"
    }

    fn sector_count(&self) -> u64 {
        self.sector_count
    }

    fn sector_size(&self) -> u32 {
        self.sector_size
    }

    fn is_logically_read_only(&self) -> bool {
        false
    }

    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        mut marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        self.load(sector, buf, &mut marker)
    }

    async fn write(&self, sector: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        self.store(sector, buf, true)
    }

    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64, next_is_zero: bool) -> Result<(), DiskError> {
        check_sector_range(sector, count, self.sector_count)?;
        if count > 0 && next_is_zero {
            self.drop_sectors(sector, count);
        }
        Ok(())
    }

    fn write_no_overwrite(&self) -> Option<impl WriteNoOverwrite> {
        Some(self)
    }
}

impl WriteNoOverwrite for RamDiskLayer {
    async fn write_no_overwrite(&self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.store(sector, buf, false)
    }
}

/// A RAM layer that has not been attached yet; see [`RamDiskLayer::lazy`].
#[derive(Debug, Clone, Copy)]
pub struct LazyRamDiskLayer {
    len: Option<u64>,
}

impl LayerAttach for LazyRamDiskLayer {
    type Layer = RamDiskLayer;
    type Error = RamLayerError;

    async fn attach(
        self,
        lower: Option<LowerLayerMetadata>,
    ) -> Result<RamDiskLayer, RamLayerError> {
        let sector_size = lower.map_or(DEFAULT_SECTOR_SIZE, |l| l.sector_size);
        if sector_size == 0 || !sector_size.is_power_of_two() {
            return Err(RamLayerError::BadSectorSize(sector_size));
        }
        let sector_count = match (self.len, lower) {
            (Some(len), _) => {
                if !len.is_multiple_of(u64::from(sector_size)) {
                    return Err(RamLayerError::LengthNotSectorMultiple { len, sector_size });
                }
                len / u64::from(sector_size)
            }
            (None, Some(l)) => l.sector_count,
            (None, None) => return Err(RamLayerError::NoLength),
        };
        RamDiskLayer::new(sector_count, sector_size)
    }
}

/// A writable RAM disk of `len` bytes (512-byte sectors), all zeroes: a
/// one-layer [`LayeredDisk`].
pub async fn ram_disk(len: u64) -> Result<Disk, InvalidLayeredDisk> {
    let disk = LayeredDisk::new(
        false,
        vec![LayerConfiguration::plain(disk_layered::DiskLayer::new(
            RamDiskLayer::lazy(Some(len)),
        ))],
    )
    .await?;
    Disk::new(disk).map_err(|e| InvalidLayeredDisk::Attach {
        layer: 0,
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_layered::SectorBitmap;

    fn pattern(sector: u64, n: u64, tag: u8) -> Vec<u8> {
        let mut v = Vec::new();
        for s in sector..sector + n {
            v.extend(std::iter::repeat_n(tag ^ (s as u8), 512));
        }
        v
    }

    async fn read(l: &RamDiskLayer, sector: u64, n: u64) -> (Vec<u8>, SectorBitmap) {
        let mut buf = vec![0xee; n as usize * 512];
        let mut bm = SectorBitmap::new(sector, n);
        LayerIo::read(l, sector, &mut buf, bm.marker())
            .await
            .unwrap();
        (buf, bm)
    }

    #[tokio::test]
    async fn sparse_presence_across_chunks() {
        let l = RamDiskLayer::new(1000, 512).unwrap();
        l.write(60, &pattern(60, 10, 1), false).await.unwrap();
        assert_eq!(l.allocated_chunks(), 2);
        let (buf, bm) = read(&l, 50, 30).await;
        assert_eq!(bm.set_runs().collect::<Vec<_>>(), vec![60..70]);
        assert_eq!(&buf[10 * 512..20 * 512], &pattern(60, 10, 1)[..]);
        // Unmarked sectors' bytes are left alone.
        assert!(buf[..10 * 512].iter().all(|b| *b == 0xee));
        // Untouched area: nothing allocated, nothing marked.
        let (_, bm) = read(&l, 500, 100).await;
        assert_eq!(bm.set_count(), 0);
    }

    #[tokio::test]
    async fn write_no_overwrite_keeps_present_sectors() {
        let l = RamDiskLayer::new(256, 512).unwrap();
        l.write(10, &pattern(10, 2, 7), false).await.unwrap();
        WriteNoOverwrite::write_no_overwrite(&l, 0, &pattern(0, 130, 9))
            .await
            .unwrap();
        let (buf, bm) = read(&l, 0, 130).await;
        assert!(bm.all_set());
        let mut want = pattern(0, 130, 9);
        want[10 * 512..12 * 512].copy_from_slice(&pattern(10, 2, 7));
        assert_eq!(buf, want);
    }

    #[tokio::test]
    async fn range_checks() {
        let l = RamDiskLayer::new(100, 512).unwrap();
        assert!(matches!(
            l.write(99, &[0; 1024], false).await,
            Err(DiskError::OutOfRange { .. })
        ));
        let mut buf = vec![0; 1024];
        let mut bm = SectorBitmap::new(99, 2);
        assert!(matches!(
            LayerIo::read(&l, 99, &mut buf, bm.marker()).await,
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            l.unmap(50, 51, true).await,
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            l.write(0, &[0; 100], false).await,
            Err(DiskError::InvalidArgument(_))
        ));
        assert!(l.chunks.read().is_empty());
    }

    #[tokio::test]
    async fn unmap_drops_only_over_zero() {
        let l = RamDiskLayer::new(200, 512).unwrap();
        l.write(0, &pattern(0, 70, 3), false).await.unwrap();
        l.unmap(0, 70, false).await.unwrap();
        assert_eq!(read(&l, 0, 70).await.1.set_count(), 70);
        l.unmap(0, 64, true).await.unwrap();
        assert_eq!(l.allocated_chunks(), 1);
        assert_eq!(
            read(&l, 0, 70).await.1.set_runs().collect::<Vec<_>>(),
            vec![64..70]
        );
    }

    #[tokio::test]
    async fn lazy_attach_sizes() {
        let lower = LowerLayerMetadata {
            sector_count: 77,
            sector_size: 4096,
            physical_sector_size: 4096,
            disk_id: None,
        };
        let l = RamDiskLayer::lazy(None).attach(Some(lower)).await.unwrap();
        assert_eq!((l.sector_count, l.sector_size), (77, 4096));
        let l = RamDiskLayer::lazy(Some(8192))
            .attach(Some(lower))
            .await
            .unwrap();
        assert_eq!(l.sector_count, 2);
        assert!(matches!(
            RamDiskLayer::lazy(Some(1000)).attach(Some(lower)).await,
            Err(RamLayerError::LengthNotSectorMultiple { .. })
        ));
        assert!(matches!(
            RamDiskLayer::lazy(None).attach(None).await,
            Err(RamLayerError::NoLength)
        ));
    }

    #[tokio::test]
    async fn ram_disk_round_trip() {
        let d = ram_disk(1 << 20).await.unwrap();
        assert_eq!(d.sector_count(), 2048);
        let mut buf = vec![1u8; 4096];
        d.read(100, &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        d.write(100, &pattern(100, 8, 5), false).await.unwrap();
        d.read(100, &mut buf).await.unwrap();
        assert_eq!(buf, pattern(100, 8, 5));
        d.unmap(100, 8).await.unwrap();
        d.read(100, &mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 0));
    }
}
