//! [`TestDisk`]: a read-only whole disk over a file or a buffer that
//! reports what reached it.

use disk_backend::Disk;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use disk_layered::DiskLayer;
use disk_layered::LayerIo;
use disk_layered::SectorMarker;
use parking_lot::Mutex;
use std::io::Write as _;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use tokio::sync::Semaphore;

/// The sector size of every [`TestDisk`].
pub const SECTOR_SIZE: u32 = 512;

/// Where a test disk's bytes are.
enum Bytes {
    Memory(Vec<u8>),
    /// Read with positioned I/O (`pread`), never written.
    File(std::fs::File),
}

/// The sector ranges of reads (`start..end` as a pair), in arrival order.
type ReadLog = Mutex<Vec<(u64, u64)>>;

/// A read-only whole disk (every sector present) over a file or a buffer,
/// for the bottom of a stack under test or an export. Every read is
/// counted (and reported as [`DiskCounters::remote_requests`], as the
/// remote blob a test disk stands in for would); optionally its sector
/// range is logged, it waits for a permit of a gate the test opens, or it
/// fails.
///
/// A handle: clones share the bytes and what the test observes, so a test
/// keeps one clone and hands another to the stack
/// ([`disk`](Self::disk), [`layer`](Self::layer)). Configure it (the
/// `with_`/`logging_`/`failing_` methods) before cloning it.
///
/// The order of a read: range check (an out-of-range read fails before
/// anything else), count, log, gate, injected failure, data.
#[derive(Clone)]
pub struct TestDisk {
    bytes: Arc<Bytes>,
    sectors: u64,
    disk_id: Option<[u8; 16]>,
    reads: Arc<AtomicU64>,
    log: Option<Arc<ReadLog>>,
    gate: Option<Arc<Semaphore>>,
    fail_next: Arc<AtomicBool>,
    bad_sectors: Option<Range<u64>>,
}

impl TestDisk {
    fn new(bytes: Bytes, len: u64) -> Self {
        assert!(
            len.is_multiple_of(u64::from(SECTOR_SIZE)),
            "a test disk's length ({len}) must be a multiple of {SECTOR_SIZE}"
        );
        TestDisk {
            bytes: Arc::new(bytes),
            sectors: len / u64::from(SECTOR_SIZE),
            disk_id: None,
            reads: Arc::default(),
            log: None,
            gate: None,
            fail_next: Arc::default(),
            bad_sectors: None,
        }
    }

    /// A disk holding `data` in memory (a multiple of 512 bytes).
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let len = data.len() as u64;
        Self::new(Bytes::Memory(data), len)
    }

    /// A disk over the file at `path`, opened read-only; its length must
    /// be a multiple of 512 bytes.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        if !len.is_multiple_of(u64::from(SECTOR_SIZE)) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: {len} bytes is not a whole number of {SECTOR_SIZE}-byte sectors",
                    path.display()
                ),
            ));
        }
        Ok(Self::new(Bytes::File(file), len))
    }

    /// A disk over an unnamed temporary file holding `content` (a multiple
    /// of 512 bytes): a real file read with positioned I/O, gone when the
    /// last clone is dropped.
    pub fn in_temp_file(content: &[u8]) -> Self {
        let mut file = tempfile::tempfile().expect("creating a temporary file");
        file.write_all(content)
            .expect("writing the test disk's temporary file");
        Self::new(Bytes::File(file), content.len() as u64)
    }

    /// Reports `id` as the disk id (default: none).
    pub fn with_disk_id(mut self, id: [u8; 16]) -> Self {
        self.disk_id = Some(id);
        self
    }

    /// Makes every read wait for a permit of a gate that starts with
    /// `permits` and that [`open_gate`](Self::open_gate) adds to; each
    /// read uses one up. The read is counted and logged before it waits.
    pub fn with_gate(mut self, permits: usize) -> Self {
        self.gate = Some(Arc::new(Semaphore::new(permits)));
        self
    }

    /// Logs the sector range of every read (see [`read_log`](Self::read_log)).
    pub fn logging_reads(mut self) -> Self {
        self.log = Some(Arc::default());
        self
    }

    /// Fails every read that touches a sector of `sectors`, with an I/O
    /// error and no data.
    pub fn failing_reads_touching(mut self, sectors: Range<u64>) -> Self {
        self.bad_sectors = Some(sectors);
        self
    }

    /// The number of sectors.
    pub fn sector_count(&self) -> u64 {
        self.sectors
    }

    /// Reads that reached the disk so far (failed ones included, apart
    /// from out-of-range ones).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    /// The counter behind [`reads`](Self::reads), for a test that keeps it
    /// apart from the disk.
    pub fn read_counter(&self) -> Arc<AtomicU64> {
        self.reads.clone()
    }

    /// The sector range (`start..end` as a pair) of every read so far, in
    /// the order they arrived.
    ///
    /// Panics unless the disk was made with
    /// [`logging_reads`](Self::logging_reads).
    pub fn read_log(&self) -> Vec<(u64, u64)> {
        self.log
            .as_ref()
            .expect("read_log needs a disk made with logging_reads()")
            .lock()
            .clone()
    }

    /// Lets `n` more reads through the gate.
    ///
    /// Panics unless the disk was made with [`with_gate`](Self::with_gate).
    pub fn open_gate(&self, n: usize) {
        self.gate
            .as_ref()
            .expect("open_gate needs a disk made with with_gate()")
            .add_permits(n);
    }

    /// Makes the next read (once past the gate) fail with an I/O error.
    pub fn fail_next_read(&self) {
        self.fail_next.store(true, Ordering::SeqCst);
    }

    /// Every byte of the disk, read now (for a file: from the file, so a
    /// test can check that nothing wrote to it).
    pub fn contents(&self) -> Vec<u8> {
        match &*self.bytes {
            Bytes::Memory(data) => data.clone(),
            Bytes::File(file) => {
                let mut data = vec![0; (self.sectors * u64::from(SECTOR_SIZE)) as usize];
                file.read_exact_at(&mut data, 0)
                    .expect("reading the test disk's file");
                data
            }
        }
    }

    /// A [`Disk`] over a clone of this disk.
    pub fn disk(&self) -> Disk {
        Disk::new(self.clone()).expect("a test disk is a valid disk")
    }

    /// A layer over a clone of this disk (read directly as a
    /// [`LayerIo`], not through a [`Disk`]).
    pub fn layer(&self) -> DiskLayer {
        DiskLayer::from_layer(self.clone())
    }

    async fn read_at(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let count = check_io_range(sector, buf.len(), SECTOR_SIZE, self.sectors)?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        if let Some(log) = &self.log {
            log.lock().push((sector, sector + count));
        }
        if let Some(gate) = &self.gate {
            gate.acquire()
                .await
                .map_err(|e| DiskError::io("waiting at the test disk's gate", e))?
                .forget();
        }
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(DiskError::io(
                "reading the test disk",
                std::io::Error::other("injected failure"),
            ));
        }
        if let Some(bad) = &self.bad_sectors
            && sector < bad.end
            && bad.start < sector + count
        {
            return Err(DiskError::io(
                "reading the test disk",
                std::io::Error::other("bad sector"),
            ));
        }
        let offset = sector * u64::from(SECTOR_SIZE);
        match &*self.bytes {
            Bytes::Memory(data) => {
                let offset = offset as usize;
                buf.copy_from_slice(&data[offset..offset + buf.len()]);
                Ok(())
            }
            Bytes::File(file) => file
                .read_exact_at(buf, offset)
                .map_err(|e| DiskError::io("reading the test disk's file", e)),
        }
    }

    fn counters(&self) -> DiskCounters {
        DiskCounters {
            remote_requests: self.reads(),
            ..Default::default()
        }
    }
}

impl DiskIo for TestDisk {
    fn disk_type(&self) -> &str {
        "test"
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.disk_id
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn counters(&self) -> DiskCounters {
        TestDisk::counters(self)
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.read_at(sector, buf).await
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

impl LayerIo for TestDisk {
    fn layer_type(&self) -> &str {
        "test"
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn sector_size(&self) -> u32 {
        SECTOR_SIZE
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.disk_id
    }
    fn is_logically_read_only(&self) -> bool {
        true
    }
    fn counters(&self) -> DiskCounters {
        TestDisk::counters(self)
    }
    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        mut marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        self.read_at(sector, buf).await?;
        marker.set_all();
        Ok(())
    }
    async fn write(&self, _sector: u64, _buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, _sector: u64, _count: u64, _next_is_zero: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random_bytes;

    #[tokio::test]
    async fn reads_return_the_bytes_and_are_counted_and_logged() {
        let data = random_bytes(1, 16 * 512);
        for disk in [
            TestDisk::from_bytes(data.clone()),
            TestDisk::in_temp_file(&data),
        ] {
            let disk = disk.with_disk_id([9; 16]).logging_reads();
            let d = disk.disk();
            assert_eq!(d.sector_count(), 16);
            assert_eq!(d.disk_id(), Some([9; 16]));
            assert!(d.is_read_only());
            let mut buf = vec![0; 3 * 512];
            d.read(2, &mut buf).await.unwrap();
            assert_eq!(buf, data[2 * 512..5 * 512]);
            assert!(d.read(15, &mut buf).await.is_err(), "past the end");
            assert!(matches!(
                d.write(0, &buf, false).await,
                Err(DiskError::ReadOnly)
            ));
            assert_eq!(disk.reads(), 1);
            assert_eq!(d.counters().remote_requests, 1);
            assert_eq!(disk.read_log(), [(2, 5)]);
            assert_eq!(disk.contents(), data);
        }
    }

    #[tokio::test]
    async fn a_file_disk_reads_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.raw");
        let data = crate::write_random_image(&path, 2, 8 * 512).unwrap();
        let disk = TestDisk::open(&path).unwrap();
        let mut buf = vec![0; 8 * 512];
        DiskIo::read(&disk, 0, &mut buf).await.unwrap();
        assert_eq!(buf, data);

        std::fs::write(&path, [0u8; 700]).unwrap();
        let err = TestDisk::open(&path).err().unwrap();
        assert!(err.to_string().contains("700 bytes"), "{err}");
    }

    #[tokio::test]
    async fn the_gate_holds_reads_until_opened() {
        let disk = TestDisk::from_bytes(vec![7; 4 * 512]).with_gate(0);
        let d = disk.disk();
        let read = tokio::spawn(async move {
            let mut buf = vec![0; 512];
            d.read(1, &mut buf).await.map(|()| buf)
        });
        // The read is counted before it waits at the gate.
        while disk.reads() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!read.is_finished());
        disk.open_gate(1);
        assert_eq!(read.await.unwrap().unwrap(), vec![7; 512]);
    }

    #[tokio::test]
    async fn as_a_layer_every_sector_is_present() {
        let data = random_bytes(3, 8 * 512);
        let disk = TestDisk::from_bytes(data.clone()).with_disk_id([4; 16]);
        let stack = disk_layered::LayeredDisk::new(
            true,
            vec![disk_layered::LayerConfiguration::plain(disk.layer())],
        )
        .await
        .unwrap();
        let d = Disk::new(stack).unwrap();
        assert_eq!(d.disk_id(), Some([4; 16]));
        let mut buf = vec![0; 8 * 512];
        d.read(0, &mut buf).await.unwrap();
        assert_eq!(buf, data);
        assert_eq!(disk.reads(), 1);
        assert_eq!(d.counters().remote_requests, 1);
    }

    #[tokio::test]
    async fn injected_failures() {
        let disk = TestDisk::from_bytes(vec![1; 64 * 512]).failing_reads_touching(10..11);
        let d = disk.disk();
        let mut buf = vec![0; 4 * 512];
        assert!(d.read(8, &mut buf).await.is_err(), "touches sector 10");
        d.read(11, &mut buf).await.unwrap();
        disk.fail_next_read();
        assert!(d.read(20, &mut buf).await.is_err(), "the next read fails");
        d.read(20, &mut buf).await.unwrap();
        assert_eq!(disk.reads(), 4);
    }
}
