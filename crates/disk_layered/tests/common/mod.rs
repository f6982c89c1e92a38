//! Test-only building blocks: a file-backed full disk, a bottom disk whose
//! reads can be held at a gate and counted, and a shared RAM layer that can
//! be inspected after it has been handed to a stack.

#![allow(dead_code)]

use disk_backend::Disk;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_layered::LayerIo;
use disk_layered::LayeredDisk;
use disk_layered::SectorBitmap;
use disk_layered::SectorMarker;
use disk_layered::WriteNoOverwrite;
use disklayer_ram::RamDiskLayer;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;

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

/// A full disk stored in a real file, read and written with positioned I/O.
pub struct FileDisk {
    pub file: std::fs::File,
    pub sector_count: u64,
    pub read_only: bool,
    pub reads: AtomicU64,
}

impl FileDisk {
    /// A temp file holding `content`.
    pub fn with_content(content: &[u8], read_only: bool) -> Self {
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(content, 0).unwrap();
        FileDisk {
            file,
            sector_count: (content.len() / SS) as u64,
            read_only,
            reads: AtomicU64::new(0),
        }
    }
}

impl DiskIo for FileDisk {
    fn disk_type(&self) -> &str {
        "testfile"
    }
    fn sector_count(&self) -> u64 {
        self.sector_count
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        Some([0x42; 16])
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_io_range(sector, buf.len(), SS as u32, self.sector_count)?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.file
            .read_exact_at(buf, sector * SS as u64)
            .map_err(|e| DiskError::io("read test file", e))
    }
    async fn write(&self, sector: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        check_io_range(sector, buf.len(), SS as u32, self.sector_count)?;
        self.file
            .write_all_at(buf, sector * SS as u64)
            .map_err(|e| DiskError::io("write test file", e))
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, _sector: u64, _count: u64) -> Result<(), DiskError> {
        Ok(())
    }
}

/// A read-only full disk whose reads each wait for a permit of `gate`
/// (released by the test) and are counted and logged.
pub struct GatedDisk {
    pub data: Vec<u8>,
    pub gate: Semaphore,
    pub started: AtomicU64,
    pub log: parking_lot::Mutex<Vec<(u64, u64)>>,
    pub fail_next: AtomicBool,
}

impl GatedDisk {
    pub fn new(data: Vec<u8>, permits: usize) -> Arc<Self> {
        Arc::new(GatedDisk {
            data,
            gate: Semaphore::new(permits),
            started: AtomicU64::new(0),
            log: parking_lot::Mutex::new(Vec::new()),
            fail_next: AtomicBool::new(false),
        })
    }
}

/// `DiskIo` over a shared [`GatedDisk`], so the test keeps a handle.
pub struct GatedHandle(pub Arc<GatedDisk>);

impl DiskIo for GatedHandle {
    fn disk_type(&self) -> &str {
        "gated"
    }
    fn sector_count(&self) -> u64 {
        (self.0.data.len() / SS) as u64
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        Some([7; 16])
    }
    fn counters(&self) -> DiskCounters {
        DiskCounters {
            remote_requests: self.0.started.load(Ordering::SeqCst),
            ..Default::default()
        }
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let n = check_io_range(sector, buf.len(), SS as u32, self.sector_count())?;
        self.0.started.fetch_add(1, Ordering::SeqCst);
        self.0.log.lock().push((sector, sector + n));
        self.0
            .gate
            .acquire()
            .await
            .map_err(|e| DiskError::io("gate", e))?
            .forget();
        if self.0.fail_next.swap(false, Ordering::SeqCst) {
            return Err(DiskError::io(
                "injected",
                std::io::Error::other("injected failure"),
            ));
        }
        let off = sector as usize * SS;
        buf.copy_from_slice(&self.0.data[off..off + buf.len()]);
        Ok(())
    }
    async fn write(&self, _sector: u64, _buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, _sector: u64, _count: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
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
