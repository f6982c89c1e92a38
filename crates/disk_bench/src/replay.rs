//! `disk-bench replay`: replays a recorded read trace (a real boot's reads,
//! `prefetch_list::trace`) against a stack, keeping the trace's causality:
//! a read starts only after every read that had ended before it started in
//! the recording has ended here too, plus the same think time. So the reads
//! overlap as they did, and what changes with the stack (or the store's
//! latency) shows as disk-wait: the time with at least one read
//! outstanding.

use anyhow::Context;
use anyhow::Result;
use disk_backend::Disk;
use parking_lot::Mutex;
use prefetch_list::trace::TracedRead;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

/// What a replay measured.
pub struct Replayed {
    /// Wall time from the first read's start to the last read's end.
    pub secs: f64,
    /// Time with at least one read outstanding.
    pub disk_wait_secs: f64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Reads.
    pub reads: u64,
    /// Checksum of everything read.
    pub checksum: u64,
}

/// Outstanding reads and the time spent with at least one.
#[derive(Default)]
struct Busy {
    outstanding: usize,
    since: Option<Instant>,
    total: Duration,
}

impl Busy {
    fn start(&mut self, now: Instant) {
        if self.outstanding == 0 {
            self.since = Some(now);
        }
        self.outstanding += 1;
    }
    fn end(&mut self, now: Instant) {
        self.outstanding -= 1;
        if self.outstanding == 0
            && let Some(s) = self.since.take()
        {
            self.total += now - s;
        }
    }
}

/// A replayed read: when it ended, and the checksum of its bytes.
type ReadTask = tokio::task::JoinHandle<Result<(Instant, u64)>>;

/// Replays `trace` (sorted by start) against `disk`.
pub async fn replay(disk: &Disk, trace: &[TracedRead]) -> Result<Replayed> {
    let size = disk.size_bytes();
    let ss = u64::from(disk.sector_size());
    for r in trace {
        if r.offset % ss != 0 || r.len % ss != 0 || r.offset + r.len > size {
            anyhow::bail!(
                "trace read at {} (+{}) does not fit this disk ({size} bytes, {ss}-byte sectors)",
                r.offset,
                r.len
            );
        }
    }
    // Reads in order of their recorded end.
    let mut by_end: Vec<usize> = (0..trace.len()).collect();
    by_end.sort_by_key(|&i| (trace[i].end_us, trace[i].start_us));
    let busy = Arc::new(Mutex::new(Busy::default()));
    let t0 = Instant::now();
    let base = trace.first().map_or(0, |r| r.start_us);
    let mut handles: Vec<Option<ReadTask>> = (0..trace.len()).map(|_| None).collect();
    let mut awaited = 0;
    let mut delay = Duration::ZERO;
    let mut checksum = 0u64;
    for (i, r) in trace.iter().enumerate() {
        // Every read that had ended before this one started.
        while awaited < by_end.len() && trace[by_end[awaited]].end_us <= r.start_us {
            let j = by_end[awaited];
            awaited += 1;
            let Some(h) = handles[j].take() else {
                // Ended in the recording no later than it started: only a
                // read that starts at the same time can be both; it is
                // spawned below in order.
                continue;
            };
            let (ended, sum) = h.await.context("a replayed read panicked")??;
            checksum = checksum.wrapping_add(sum);
            let recorded_end = t0 + Duration::from_micros(trace[j].end_us - base);
            delay = delay.max(ended.saturating_duration_since(recorded_end));
        }
        let at = t0 + Duration::from_micros(r.start_us - base) + delay;
        tokio::time::sleep_until(at.into()).await;
        let disk = disk.clone();
        let busy = busy.clone();
        let (sector, len) = (r.offset / ss, r.len as usize);
        handles[i] = Some(tokio::spawn(async move {
            busy.lock().start(Instant::now());
            let (buf, result) = disk.read_owned(sector, vec![0u8; len]).await;
            let ended = Instant::now();
            busy.lock().end(ended);
            result.with_context(|| format!("reading {len} bytes at sector {sector}"))?;
            Ok((ended, crate::workloads::fold(0, &buf)))
        }));
    }
    let mut last = t0;
    for h in handles.into_iter().flatten() {
        let (ended, sum) = h.await.context("a replayed read panicked")??;
        checksum = checksum.wrapping_add(sum);
        last = last.max(ended);
    }
    let total = busy.lock().total;
    Ok(Replayed {
        secs: (last - t0).as_secs_f64(),
        disk_wait_secs: total.as_secs_f64(),
        bytes_read: trace.iter().map(|r| r.len).sum(),
        reads: trace.len() as u64,
        checksum,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_backend::DiskError;
    use disk_backend::DiskIo;

    /// A disk whose reads take `delay` and log when they start and end.
    struct SlowDisk {
        delay: Duration,
        log: Arc<Mutex<Vec<(u64, Instant, Instant)>>>,
    }

    impl DiskIo for SlowDisk {
        fn disk_type(&self) -> &str {
            "slow"
        }
        fn sector_count(&self) -> u64 {
            1024
        }
        fn is_read_only(&self) -> bool {
            true
        }
        async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
            let start = Instant::now();
            tokio::time::sleep(self.delay).await;
            buf.fill(1);
            self.log.lock().push((sector, start, Instant::now()));
            Ok(())
        }
        async fn write(&self, _: u64, _: &[u8], _: bool) -> Result<(), DiskError> {
            Err(DiskError::ReadOnly)
        }
        async fn sync_cache(&self) -> Result<(), DiskError> {
            Ok(())
        }
        async fn unmap(&self, _: u64, _: u64) -> Result<(), DiskError> {
            Ok(())
        }
    }

    fn read(start_us: u64, end_us: u64, sector: u64) -> TracedRead {
        TracedRead {
            start_us,
            end_us,
            offset: sector * 512,
            len: 512,
        }
    }

    /// A read that started after another ended waits for it here too; one
    /// that overlapped it does not.
    #[tokio::test]
    async fn causality_is_kept() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let disk = Disk::new(SlowDisk {
            delay: Duration::from_millis(30),
            log: log.clone(),
        })
        .unwrap();
        // Recorded: A 0-10 ms, C 2-4 ms (overlaps A), B 11-12 ms (after A).
        let trace = vec![
            read(0, 10_000, 1),
            read(2_000, 4_000, 3),
            read(11_000, 12_000, 2),
        ];
        let r = replay(&disk, &trace).await.unwrap();
        let log = log.lock().clone();
        let at = |s: u64| log.iter().find(|e| e.0 == s).copied().unwrap();
        let (a, b, c) = (at(1), at(2), at(3));
        assert!(b.1 >= a.2, "B waited for A");
        assert!(c.1 < a.2, "C overlapped A");
        // A and C overlap, B follows: about 2 reads' time waiting.
        assert!(r.disk_wait_secs >= 0.059, "{}", r.disk_wait_secs);
        assert_eq!(r.reads, 3);
    }
}
