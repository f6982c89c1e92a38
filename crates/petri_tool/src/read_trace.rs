//! `--trace-reads`: a disk wrapper that records every read (start and end
//! time, offset, length) for `prefetch_list::trace`.

use disk_backend::Disk;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use parking_lot::Mutex;
use prefetch_list::trace::TracedRead;
use std::sync::Arc;
use std::time::Instant;

/// The reads recorded so far, shared with the caller.
pub type Reads = Arc<Mutex<Vec<TracedRead>>>;

/// `inner`, with every read recorded into the returned list.
pub fn tracing_disk(inner: Disk) -> Result<(Disk, Reads), DiskError> {
    let reads = Reads::default();
    let disk = Disk::new(TracingDisk {
        inner,
        opened: Instant::now(),
        reads: reads.clone(),
    })?;
    Ok((disk, reads))
}

struct TracingDisk {
    inner: Disk,
    opened: Instant,
    reads: Reads,
}

impl TracingDisk {
    fn note(&self, started: Instant, sector: u64, len: usize) {
        let us = |t: Instant| t.duration_since(self.opened).as_micros() as u64;
        self.reads.lock().push(TracedRead {
            start_us: us(started),
            end_us: us(Instant::now()),
            offset: sector * u64::from(self.inner.sector_size()),
            len: len as u64,
        });
    }
}

impl DiskIo for TracingDisk {
    fn disk_type(&self) -> &str {
        self.inner.disk_type()
    }
    fn sector_count(&self) -> u64 {
        self.inner.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.inner.physical_sector_size()
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.inner.disk_id()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn counters(&self) -> DiskCounters {
        self.inner.counters()
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let started = Instant::now();
        let r = self.inner.read(sector, buf).await;
        self.note(started, sector, buf.len());
        r
    }
    async fn read_owned(&self, sector: u64, buf: Vec<u8>) -> (Vec<u8>, Result<(), DiskError>) {
        let started = Instant::now();
        let len = buf.len();
        let r = self.inner.read_owned(sector, buf).await;
        self.note(started, sector, len);
        r
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        self.inner.write(sector, buf, fua).await
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        self.inner.sync_cache().await
    }
    async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        self.inner.unmap(sector, count).await
    }
}
