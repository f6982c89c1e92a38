//! Trace-guided prefetch for a remote disk with a read cache.
//!
//! At open, the stack looks for a prefetch list (`prefetch_list` format):
//! the list recorded beside the cache entry by earlier runs
//! (`<cache dir>/<key>/access.prefetch`), else `<image URL>.prefetch` from
//! the store (with the image URL's query; a 404 means there is none). A
//! list whose image identity does not match is ignored with a debug line;
//! a damaged one with a warning; neither fails the open. A thread of its
//! own then fetches the listed chunks the cache lacks, in order, in the
//! background (`LayeredDisk::prefetch`: the guest's reads go first).
//! When the disk closes, the prefetch stops and the chunks this run's guest
//! read first are merged into the list beside the cache entry, so copying
//! that file next to the image in the store as `<image file name>.prefetch`
//! publishes it.
//!
//! `PETRI_PREFETCH=0` (or `false`) turns replay off; this module is the one
//! place that reads it. Recording stays on (it costs nothing on the wire).
//!
//! Why a thread with its own runtime: closing the disk must stop the
//! prefetch and release its hold on the stack before the close returns
//! (the read cache commits its queued fills when the last handle goes),
//! whatever runtime the caller uses; a task on the caller's runtime could
//! only be asked to stop.

use disk_backend::Disk;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_blob::HttpBlob;
use disk_layered::LayeredDisk;
use disk_layered::PrefetchOptions;
use prefetch_list::PrefetchList;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// Name of the list recorded beside a cache entry.
pub const RECORD_FILE_NAME: &str = "access.prefetch";

/// The suffix of the list beside an image in the store.
pub const STORE_SUFFIX: &str = ".prefetch";

/// Whether `PETRI_PREFETCH` allows replaying prefetch lists (default yes).
pub fn prefetch_allowed_by_env() -> bool {
    !std::env::var("PETRI_PREFETCH").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "0" | "false" | "off" | "no"
        )
    })
}

/// What the prefetch of one opened disk needs to know.
pub(crate) struct PrefetchPlan {
    /// The image identity a list must name (see `prefetch_list`).
    pub identity: String,
    /// The list recorded beside the cache entry.
    pub record_path: PathBuf,
    /// Where to look for a published list, for a remote image.
    pub store: Option<Arc<HttpBlob>>,
    /// Replay lists (else only record).
    pub replay: bool,
    pub options: PrefetchOptions,
}

/// The disk `open` returns when a prefetch plan applies: the layered disk,
/// plus the prefetch thread and the recording done at close.
pub(crate) struct PrefetchingDisk {
    disk: Arc<LayeredDisk>,
    /// Stops the prefetch thread (dropping it stops it too).
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    identity: String,
    record_path: PathBuf,
}

impl PrefetchingDisk {
    pub(crate) fn start(disk: LayeredDisk, plan: PrefetchPlan) -> Self {
        let disk = Arc::new(disk);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = plan.replay.then(|| {
            let disk = disk.clone();
            let identity = plan.identity.clone();
            let record = plan.record_path.clone();
            let store = plan.store.clone();
            let options = plan.options;
            std::thread::Builder::new()
                .name("disk-prefetch".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(err) => {
                            tracing::debug!(error = %err, "no prefetch runtime; prefetch off");
                            return;
                        }
                    };
                    rt.block_on(async move {
                        tokio::select! {
                            _ = stopped => {}
                            () = replay(&disk, &identity, &record, store.as_deref(), options) => {}
                        }
                    });
                })
                .map_err(|err| tracing::debug!(error = %err, "no prefetch thread; prefetch off"))
                .ok()
        });
        PrefetchingDisk {
            disk,
            stop: Some(stop),
            thread: thread.flatten(),
            identity: plan.identity,
            record_path: plan.record_path,
        }
    }
}

/// Finds a list and fetches what it names.
async fn replay(
    disk: &LayeredDisk,
    identity: &str,
    record: &Path,
    store: Option<&HttpBlob>,
    options: PrefetchOptions,
) {
    let list = match find_list(identity, record, store).await {
        Some(list) => list,
        None => return,
    };
    let started = std::time::Instant::now();
    let ranges: Vec<std::ops::Range<u64>> = list
        .ranges
        .iter()
        .map(|r| r.offset..r.offset + r.len)
        .collect();
    let report = disk.prefetch(&ranges, options).await;
    tracing::info!(
        listed_bytes = list.total_bytes(),
        fetched_bytes = report.fetched_bytes,
        present_bytes = report.present_bytes,
        failed_fetches = report.failed_fetches,
        over_budget = report.over_budget,
        secs = started.elapsed().as_secs_f64(),
        "prefetch done"
    );
}

/// The list for `identity`: the recorded one, else the store's.
async fn find_list(
    identity: &str,
    record: &Path,
    store: Option<&HttpBlob>,
) -> Option<PrefetchList> {
    let path = record.to_path_buf();
    let local = tokio::task::spawn_blocking(move || std::fs::read(&path))
        .await
        .ok()
        .and_then(Result::ok);
    // A recorded list that is unusable falls through to the store's.
    if let Some(bytes) = local
        && let Some(list) = usable(&bytes, identity, &record.display().to_string())
    {
        return Some(list);
    }
    let store = store?;
    match store
        .fetch_sibling(STORE_SUFFIX, prefetch_list::MAX_LIST_BYTES)
        .await
    {
        Ok(Some(bytes)) => {
            let what = format!("{}{STORE_SUFFIX}", store.redacted_url());
            usable(&bytes, identity, &what)
        }
        Ok(None) => {
            tracing::debug!(url = %store.redacted_url(), "the store has no prefetch list for this image");
            None
        }
        Err(err) => {
            tracing::warn!(
                url = %store.redacted_url(),
                error = &err as &dyn std::error::Error,
                "could not fetch the image's prefetch list; booting without it"
            );
            None
        }
    }
}

/// A parsed list if it is well formed and for `identity`.
fn usable(bytes: &[u8], identity: &str, what: &str) -> Option<PrefetchList> {
    match PrefetchList::parse(bytes) {
        Ok(list) if list.identity == identity => Some(list),
        Ok(list) => {
            tracing::debug!(
                list = %what,
                list_image = %list.identity,
                image = %identity,
                "prefetch list is for another image (or version); ignored"
            );
            None
        }
        Err(err) => {
            tracing::warn!(
                list = %what,
                error = &err as &dyn std::error::Error,
                "prefetch list is damaged; ignored"
            );
            None
        }
    }
}

impl Drop for PrefetchingDisk {
    fn drop(&mut self) {
        // Stop the prefetch and wait until it has let go of the disk.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(err) = record(&self.disk, &self.identity, &self.record_path) {
            tracing::debug!(
                path = %self.record_path.display(),
                error = %err,
                "could not record the prefetch list"
            );
        }
    }
}

/// Merges this run's first reads into the list beside the cache entry.
fn record(disk: &LayeredDisk, identity: &str, path: &Path) -> std::io::Result<()> {
    let Some(touches) = disk.first_touches() else {
        return Ok(());
    };
    if touches.touches.is_empty() {
        return Ok(());
    }
    let size = disk.sector_count() * u64::from(disk.sector_size());
    let mut list = PrefetchList::from_touches(
        identity,
        size,
        touches.chunk_bytes,
        touches.touches.iter().copied(),
    );
    if let Ok(bytes) = std::fs::read(path)
        && let Ok(old) = PrefetchList::parse(&bytes)
        && let Some(merged) = old.merge(&list)
    {
        list = merged;
    }
    crate::store_atomically(path, list.to_text().as_bytes())
}

impl DiskIo for PrefetchingDisk {
    fn disk_type(&self) -> &str {
        self.disk.disk_type()
    }
    fn sector_count(&self) -> u64 {
        self.disk.sector_count()
    }
    fn sector_size(&self) -> u32 {
        self.disk.sector_size()
    }
    fn physical_sector_size(&self) -> u32 {
        self.disk.physical_sector_size()
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        DiskIo::disk_id(&*self.disk)
    }
    fn is_read_only(&self) -> bool {
        self.disk.is_read_only()
    }
    fn counters(&self) -> DiskCounters {
        self.disk.counters()
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.disk.read(sector, buf).await
    }
    async fn read_owned(&self, sector: u64, buf: Vec<u8>) -> (Vec<u8>, Result<(), DiskError>) {
        self.disk.read_owned(sector, buf).await
    }
    async fn write(&self, sector: u64, buf: &[u8], fua: bool) -> Result<(), DiskError> {
        self.disk.write(sector, buf, fua).await
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        self.disk.sync_cache().await
    }
    async fn unmap(&self, sector: u64, count: u64) -> Result<(), DiskError> {
        self.disk.unmap(sector, count).await
    }
}

/// Wraps `disk` with the prefetch of `plan`, or as it is without one.
pub(crate) fn wrap(disk: LayeredDisk, plan: Option<PrefetchPlan>) -> Result<Disk, DiskError> {
    match plan {
        Some(plan) => Disk::new(PrefetchingDisk::start(disk, plan)),
        None => Disk::new(disk),
    }
}
