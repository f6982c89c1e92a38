//! Test-only building blocks: the bottom disks of these tests (made from
//! `disk_test_support::TestDisk`), and a shared RAM layer that can be
//! inspected after it has been handed to a stack.

#![allow(dead_code)]

use disk_backend::Disk;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_layered::LayerIo;
use disk_layered::LayeredDisk;
use disk_layered::SectorBitmap;
use disk_layered::SectorMarker;
use disk_layered::WriteNoOverwrite;
use disk_test_support::TestDisk;
use disklayer_ram::RamDiskLayer;
use std::sync::Arc;

pub const SS: usize = 512;

/// Deterministic bytes for a sector: depends on the sector number and a tag.
pub fn pattern(sector: u64, n: u64, tag: u8) -> Vec<u8> {
    let mut v = Vec::with_capacity(n as usize * SS);
    for s in sector..sector + n {
        for i in 0..SS {
            v.push((s as u8).wrapping_mul(31) ^ (i as u8) ^ tag);
        }
    }
    v
}

/// A read-only disk in a real temp file holding `content`.
pub fn file_disk(content: &[u8]) -> TestDisk {
    TestDisk::in_temp_file(content).with_disk_id([0x42; 16])
}

/// A read-only in-memory disk whose reads are counted and logged, and each
/// wait for a permit of its gate (`permits` to start with), released by
/// the test.
pub fn gated_disk(data: Vec<u8>, permits: usize) -> TestDisk {
    TestDisk::from_bytes(data)
        .with_disk_id([7; 16])
        .with_gate(permits)
        .logging_reads()
}

/// A RAM layer shared with the test (so its contents can be inspected after
/// the stack owns it), optionally asking for chunked fills, optionally
/// without write-no-overwrite or read-only (for validation tests).
#[derive(Clone)]
pub struct SharedRam {
    pub inner: Arc<RamDiskLayer>,
    pub fill: Option<u64>,
    pub no_wno: bool,
    pub fail_wno: bool,
    pub read_only: bool,
}

/// Write-no-overwrite of a [`SharedRam`], optionally failing every call.
pub struct SharedWno<'a> {
    inner: &'a RamDiskLayer,
    fail: bool,
}

impl WriteNoOverwrite for SharedWno<'_> {
    async fn write_no_overwrite(&self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.fail {
            return Err(DiskError::io(
                "fill",
                std::io::Error::other("injected fill failure"),
            ));
        }
        WriteNoOverwrite::write_no_overwrite(self.inner, sector, buf).await
    }
}

impl SharedRam {
    pub fn new(sectors: u64) -> Self {
        SharedRam {
            inner: Arc::new(RamDiskLayer::new(sectors, SS as u32).unwrap()),
            fill: None,
            no_wno: false,
            fail_wno: false,
            read_only: false,
        }
    }

    pub fn with_fill(mut self, fill: u64) -> Self {
        self.fill = Some(fill);
        self
    }

    /// Writes `data` into the layer directly (not through a stack).
    pub async fn put(&self, sector: u64, data: &[u8]) {
        LayerIo::write(&*self.inner, sector, data, false)
            .await
            .unwrap();
    }

    /// Which of `sector..sector + n` this layer has, and their bytes.
    pub async fn peek(&self, sector: u64, n: u64) -> (Vec<u8>, SectorBitmap) {
        let mut buf = vec![0; n as usize * self.inner.sector_size() as usize];
        let mut bm = SectorBitmap::new(sector, n);
        LayerIo::read(&*self.inner, sector, &mut buf, bm.marker())
            .await
            .unwrap();
        (buf, bm)
    }
}

impl LayerIo for SharedRam {
    fn layer_type(&self) -> &str {
        "shared-ram"
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn is_logically_read_only(&self) -> bool {
        self.read_only
    }
    fn preferred_fill_sectors(&self) -> Option<u64> {
        self.fill
    }
    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        LayerIo::read(&*self.inner, sector, buf, marker).await
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        LayerIo::write(&*self.inner, sector, buf, fua).await
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, sector: u64, count: u64, next_is_zero: bool) -> Result<(), DiskError> {
        self.inner.unmap(sector, count, next_is_zero).await
    }
    fn write_no_overwrite(&self) -> Option<impl WriteNoOverwrite> {
        (!self.no_wno).then_some(SharedWno {
            inner: &self.inner,
            fail: self.fail_wno,
        })
    }
}

pub fn plain(l: SharedRam) -> LayerConfiguration {
    LayerConfiguration::plain(DiskLayer::from_layer(l))
}

pub fn cache(l: SharedRam) -> LayerConfiguration {
    LayerConfiguration::read_cache(DiskLayer::from_layer(l))
}

pub fn bottom(d: impl DiskIo) -> LayerConfiguration {
    LayerConfiguration::plain(Disk::new(d).unwrap())
}

pub async fn stack(read_only: bool, layers: Vec<LayerConfiguration>) -> Disk {
    Disk::new(LayeredDisk::new(read_only, layers).await.unwrap()).unwrap()
}
