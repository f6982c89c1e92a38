//! The workloads: each opens the stack, does one thing, and returns its
//! [`Output`] (printed by `main` as one JSON line).

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use clap::ValueEnum;
use disk_backend::Disk;
use disk_backend::DiskCounters;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerDescription;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use rand::Rng;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Deserialize;
use serde::Serialize;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

/// How the blob maps to the disk.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Format {
    /// Detected from the content, the URL's extension as a hint (flat,
    /// fixed or dynamic VHD1, VHDX, qcow2).
    Auto,
    Flat,
    Vhd1,
}

/// The read cache of the `random` workload.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Layout {
    /// Our auto-cache (chunked SQLite), opened with `disk_open`.
    Chunked,
    /// The reference's one-row-per-sector SQLite layout.
    PerSector,
}

/// The stack a workload opens.
#[derive(clap::Args)]
pub(crate) struct StackArgs {
    /// The image: an HTTP(S) URL, or a local file (then the stack is RAM
    /// over the file, with no read cache).
    #[arg(long)]
    url: String,
    /// How the blob maps to the disk.
    #[arg(long, value_enum, default_value = "flat")]
    format: Format,
    /// The auto-cache directory (fresh for a cold run, reused for warm).
    #[arg(long)]
    cache_dir: PathBuf,
    /// The unit a cache miss is fetched in, KiB (default: the cache's
    /// chunk size, 1 MiB).
    #[arg(long)]
    fill_kib: Option<u32>,
    /// Do not replay prefetch lists.
    #[arg(long)]
    no_prefetch: bool,
}

/// The one JSON line a workload prints, which the suite reads back.
///
/// The fields without `#[serde(default)]` are the ones every `disk-bench`
/// build has printed, so the suite also reads the output of an older build
/// (`--baseline-bin`); fields added since read as zero from one.
#[derive(Serialize, Deserialize, Default, Debug)]
pub(crate) struct Output {
    #[serde(default)]
    pub workload: String,
    /// Bytes the workload read from the disk (or NBD clients read).
    pub bytes_read: u64,
    /// Read requests issued (`serve-nbd`: the client's read requests).
    pub reads: u64,
    /// Wall time of the timed part, in seconds.
    pub secs: f64,
    /// Time to open the stack (included in `secs` for `seq`/`random`).
    #[serde(default)]
    pub open_secs: f64,
    /// Time to close the disk after the timed part (not in `secs`): the
    /// cache's queued fills are committed and its WAL checkpointed, so
    /// after it every byte read is in the cache file.
    #[serde(default)]
    pub close_secs: f64,
    /// HTTP requests the stack sent.
    pub remote_requests: u64,
    /// Bytes the stack fetched.
    pub remote_bytes_fetched: u64,
    /// Requests retried.
    #[serde(default)]
    pub remote_retries: u64,
    /// Bytes read from the read cache.
    #[serde(default)]
    pub cache_hit_bytes: u64,
    /// Bytes the read cache did not hold.
    #[serde(default)]
    pub cache_miss_bytes: u64,
    /// Bytes written into the read cache.
    #[serde(default)]
    pub cache_fill_bytes: u64,
    /// Bytes of every file under the cache directory after close.
    pub cache_file_bytes: u64,
    /// Bytes of sectors present in the cache files after close.
    pub cached_data_bytes: u64,
    /// Peak resident set size of this process (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Checksum of everything read (keeps the reads from being elided and
    /// lets the suite compare passes).
    pub checksum: u64,
    /// `replay` and `serve-nbd`: time with at least one read outstanding
    /// (the client's disk-wait), seconds.
    #[serde(default)]
    pub disk_wait_secs: f64,
    /// Bytes a prefetch fetched ahead.
    #[serde(default)]
    pub prefetched_bytes: u64,
    /// Of the prefetched bytes, the ones read.
    #[serde(default)]
    pub prefetch_used_bytes: u64,
}

/// The stack petri opens for an image: for a URL `[RAM, SQLite auto-cache,
/// HTTP blob]` (`with_read_cache: false` leaves out the cache), for a local
/// path `[RAM, file]`.
fn handle(stack: &StackArgs, with_read_cache: bool) -> LayeredDiskHandle {
    let mut layers = vec![LayerDescription::plain(LayerKind::Ram { len: None })];
    let format = match stack.format {
        Format::Auto => BlobFormat::Auto,
        Format::Flat => BlobFormat::Flat,
        Format::Vhd1 => BlobFormat::FixedVhd1,
    };
    if !stack.url.starts_with("http://") && !stack.url.starts_with("https://") {
        layers.push(LayerDescription::plain(LayerKind::File {
            path: PathBuf::from(&stack.url),
            format,
        }));
        return LayeredDiskHandle {
            layers,
            read_only: false,
        };
    }
    if with_read_cache {
        layers.push(LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
            cache_dir: stack.cache_dir.clone(),
            key: None,
            // A cache that silently went missing would skew the figures.
            required: true,
            max_size: None,
        }));
    }
    layers.push(LayerDescription::plain(LayerKind::Blob {
        url: stack.url.clone(),
        format,
    }));
    LayeredDiskHandle {
        layers,
        read_only: false,
    }
}

async fn open(stack: &StackArgs) -> Result<Disk> {
    open_stack(stack, true).await
}

async fn open_stack(stack: &StackArgs, with_read_cache: bool) -> Result<Disk> {
    let mut options = disk_open::OpenOptions {
        cache_fill_size: stack.fill_kib.map(|k| k << 10),
        ..Default::default()
    };
    if stack.no_prefetch {
        options.prefetch = None;
    }
    disk_open::open(&handle(stack, with_read_cache), &options)
        .await
        .context("opening the disk stack")
}

/// The baseline's database file name inside the cache directory.
const PER_SECTOR_DB: &str = "per-sector.db";

/// The byte offsets of `count` random reads of `io_size` (aligned to
/// `io_size`) inside a disk of `size` bytes. Seeded with a fixed algorithm
/// (xoshiro256++), so that the stack run and the baseline run read the
/// same offsets and a seed in a report keeps meaning the same reads.
pub(crate) fn random_offsets(seed: u64, count: u64, io_size: usize, size: u64) -> Result<Vec<u64>> {
    let slots = size / io_size as u64;
    if slots == 0 {
        bail!("the disk ({size} bytes) is smaller than one read of {io_size} bytes");
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    Ok((0..count)
        .map(|_| rng.random_range(0..slots) * io_size as u64)
        .collect())
}

pub(crate) fn fold(sum: u64, buf: &[u8]) -> u64 {
    // Cheap: one word per 512-byte sector is enough to tie the checksum to
    // the data without making the checksum the bottleneck.
    buf.chunks(512).fold(sum, |acc, s| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[..8.min(s.len())]);
        acc.rotate_left(5) ^ u64::from_le_bytes(w)
    })
}

pub(crate) async fn seq(
    stack: &StackArgs,
    request_size: usize,
    limit: Option<u64>,
    without_read_cache: bool,
) -> Result<Output> {
    if request_size == 0 || !request_size.is_multiple_of(512) {
        bail!("--request-size must be a non-zero multiple of 512");
    }
    let start = Instant::now();
    let disk = open_stack(stack, !without_read_cache).await?;
    let open_secs = start.elapsed().as_secs_f64();
    let ss = u64::from(disk.sector_size());
    let total = limit.unwrap_or(u64::MAX).min(disk.size_bytes());
    let mut buf = vec![0u8; request_size];
    let mut off = 0u64;
    let mut reads = 0u64;
    let mut sum = 0u64;
    while off < total {
        let n = (total - off).min(request_size as u64) as usize;
        let n = n - n % ss as usize;
        if n == 0 {
            break;
        }
        disk.read(off / ss, &mut buf[..n])
            .await
            .with_context(|| format!("reading at byte {off}"))?;
        sum = fold(sum, &buf[..n]);
        off += n as u64;
        reads += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    finish(stack, disk, "seq", off, reads, secs, open_secs, sum).await
}

pub(crate) async fn random(
    stack: &StackArgs,
    count: u64,
    io_size: usize,
    seed: u64,
    layout: Layout,
) -> Result<Output> {
    if io_size == 0 || !io_size.is_multiple_of(512) {
        bail!("--io-size must be a non-zero multiple of 512");
    }
    let start = Instant::now();
    let disk = match layout {
        Layout::Chunked => open(stack).await?,
        Layout::PerSector => open_per_sector(stack).await?,
    };
    let open_secs = start.elapsed().as_secs_f64();
    let ss = u64::from(disk.sector_size());
    let offsets = random_offsets(seed, count, io_size, disk.size_bytes())?;
    let mut buf = vec![0u8; io_size];
    let mut sum = 0u64;
    // The reads alone are timed: IOPS is about the read path, and the open
    // is reported separately.
    let t = Instant::now();
    for &off in &offsets {
        disk.read(off / ss, &mut buf)
            .await
            .with_context(|| format!("reading at byte {off}"))?;
        sum = fold(sum, &buf);
    }
    let secs = t.elapsed().as_secs_f64();
    finish(
        stack,
        disk,
        "random",
        count * io_size as u64,
        count,
        secs,
        open_secs,
        sum,
    )
    .await
}

#[expect(clippy::too_many_arguments)]
async fn finish(
    stack: &StackArgs,
    disk: Disk,
    workload: &str,
    bytes_read: u64,
    reads: u64,
    secs: f64,
    open_secs: f64,
    checksum: u64,
) -> Result<Output> {
    let c = disk.counters();
    let closing = Instant::now();
    drop(disk);
    let close_secs = closing.elapsed().as_secs_f64();
    let (cache_file_bytes, cached_data_bytes) = cache_usage(&stack.cache_dir).await?;
    let mut out = output(
        workload,
        bytes_read,
        reads,
        secs,
        open_secs,
        &c,
        cache_file_bytes,
        cached_data_bytes,
        checksum,
    );
    out.close_secs = close_secs;
    Ok(out)
}

#[expect(clippy::too_many_arguments)]
fn output(
    workload: &str,
    bytes_read: u64,
    reads: u64,
    secs: f64,
    open_secs: f64,
    c: &DiskCounters,
    cache_file_bytes: u64,
    cached_data_bytes: u64,
    checksum: u64,
) -> Output {
    Output {
        workload: workload.to_owned(),
        bytes_read,
        reads,
        secs,
        open_secs,
        close_secs: 0.0,
        remote_requests: c.remote_requests,
        remote_bytes_fetched: c.remote_bytes_fetched,
        remote_retries: c.remote_retries,
        cache_hit_bytes: c.cache_hit_bytes,
        cache_miss_bytes: c.cache_miss_bytes,
        cache_fill_bytes: c.cache_fill_bytes,
        cache_file_bytes,
        cached_data_bytes,
        peak_rss_bytes: peak_rss(),
        checksum,
        disk_wait_secs: 0.0,
        prefetched_bytes: c.prefetched_bytes,
        prefetch_used_bytes: c.prefetch_used_bytes,
    }
}

/// The `serve-http` helper: the blob server with latency, until standard
/// input closes; its counters are the output.
pub(crate) async fn serve_http(
    dir: &Path,
    latency_ms: u64,
    connection_latency_ms: u64,
) -> Result<Output> {
    let options = blob_server::BlobServerOptions {
        latency: blob_server::Latency {
            per_request: std::time::Duration::from_millis(latency_ms),
            per_connection: std::time::Duration::from_millis(connection_latency_ms),
        },
    };
    let server =
        blob_server::BlobServer::serve_dir_with(dir, "127.0.0.1:0".parse()?, options).await?;
    println!(
        "{}",
        serde_json::json!({ "ready": true, "url": server.url("") })
    );
    // Standard input closing is the stop signal.
    tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
        .await??;
    let stats = server.stats();
    Ok(Output {
        workload: "serve-http".to_owned(),
        remote_requests: stats.requests,
        remote_bytes_fetched: stats.bytes_sent,
        ..Default::default()
    })
}

/// The `replay` workload.
pub(crate) async fn replay_trace(stack: &StackArgs, trace: &Path) -> Result<Output> {
    let text = std::fs::read_to_string(trace)
        .with_context(|| format!("reading the trace {}", trace.display()))?;
    let reads = prefetch_list::trace::parse_trace(&text)
        .with_context(|| format!("parsing the trace {}", trace.display()))?;
    let t = Instant::now();
    let disk = open(stack).await?;
    let open_secs = t.elapsed().as_secs_f64();
    let r = crate::replay::replay(&disk, &reads).await?;
    let mut out = finish(
        stack,
        disk,
        "replay",
        r.bytes_read,
        r.reads,
        r.secs,
        open_secs,
        r.checksum,
    )
    .await?;
    out.disk_wait_secs = r.disk_wait_secs;
    Ok(out)
}

/// Total size of the files under `dir`, and the bytes of sectors present in
/// every SQLite cache file (`*.dbhd`) there.
async fn cache_usage(dir: &Path) -> Result<(u64, u64)> {
    let mut files = 0u64;
    let mut data = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for e in rd {
            let e = e?;
            let meta = e.metadata()?;
            let path = e.path();
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            files += meta.len();
            if path.file_name().is_some_and(|n| n == PER_SECTOR_DB) {
                data += crate::per_sector::PerSectorLayer::present_sectors(&path)? * 512;
            } else if path.extension().is_some_and(|x| x == "dbhd") {
                let layer = disklayer_sqlite::SqliteDiskLayer::open(&path, true)
                    .await
                    .with_context(|| format!("opening cache {}", path.display()))?;
                let (_rows, sectors) = layer.stats().await?;
                data += sectors * u64::from(layer.geometry().sector_size);
            }
        }
    }
    Ok((files, data))
}

/// This process's peak resident set size (`VmHWM`), in bytes; 0 if the
/// kernel does not report it.
fn peak_rss() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

pub(crate) async fn serve_nbd(stack: &StackArgs, socket: &Path) -> Result<Output> {
    let start = Instant::now();
    let disk = open(stack).await?;
    let open_secs = start.elapsed().as_secs_f64();
    let listener = disk_nbd::serve_unix(socket, disk, Default::default())
        .await
        .context("serving NBD")?;
    println!(
        "{}",
        serde_json::json!({ "ready": true, "uri": listener.nbd_uri() })
    );
    // Serve until the driver closes our standard input.
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await
    .context("waiting for standard input to close")?;
    let server = listener.server().clone();
    listener
        .shutdown()
        .await
        .context("stopping the NBD server")?;
    let nbd = server.stats();
    let disk = server.disk().clone();
    drop(server);
    let secs = start.elapsed().as_secs_f64();
    let mut out = finish(
        stack,
        disk,
        "serve-nbd",
        nbd.bytes_read,
        nbd.read_requests,
        secs,
        open_secs,
        0,
    )
    .await?;
    // The client's disk-wait: time with at least one read outstanding.
    out.disk_wait_secs = nbd.read_wait.as_secs_f64();
    Ok(out)
}

/// The same stack as [`open`] with the reference's one-row-per-sector
/// layout (in `<cache dir>/per-sector.db`) in place of the auto-cache.
async fn open_per_sector(stack: &StackArgs) -> Result<Disk> {
    use disk_layered::DiskLayer;
    use disk_layered::LayerConfiguration;
    let blob = disk_blob::HttpBlob::open(&stack.url, Default::default())
        .await
        .context("opening the blob")?;
    let blob: std::sync::Arc<dyn disk_blob::Blob> = std::sync::Arc::new(blob);
    let bottom = match stack.format {
        Format::Flat => disk_blob::BlobDisk::new_flat(blob)?,
        Format::Vhd1 => disk_blob::BlobDisk::new_fixed_vhd1(blob).await?,
        Format::Auto => bail!("the per-sector baseline takes --format flat or vhd1"),
    };
    let bottom = Disk::new(bottom)?;
    std::fs::create_dir_all(&stack.cache_dir)?;
    let cache = crate::per_sector::PerSectorLayer::open(
        &stack.cache_dir.join(PER_SECTOR_DB),
        bottom.sector_count(),
    )?;
    let layers = vec![
        LayerConfiguration::plain(DiskLayer::new(disklayer_ram::RamDiskLayer::lazy(None))),
        LayerConfiguration::read_cache(DiskLayer::from_layer(cache)),
        LayerConfiguration::plain(DiskLayer::from_disk(bottom)),
    ];
    let layered = disk_layered::LayeredDisk::new(false, layers).await?;
    Ok(Disk::new(layered)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_offsets_are_seeded_aligned_and_inside_the_disk() {
        let size = 64 * 1024 * 1024 + 1000;
        let a = random_offsets(7, 5000, 4096, size).unwrap();
        let b = random_offsets(7, 5000, 4096, size).unwrap();
        let c = random_offsets(8, 5000, 4096, size).unwrap();
        assert_eq!(a, b, "the same seed gives the same reads");
        assert_ne!(a, c, "another seed gives other reads");
        assert!(a.iter().all(|&o| o % 4096 == 0 && o + 4096 <= size));
        // Spread over the disk, not clustered at its start.
        assert!(a.iter().any(|&o| o >= size / 2));
        assert!(random_offsets(1, 1, 4096, 4095).is_err());
    }

    #[test]
    fn checksum_depends_on_every_sector() {
        let mut buf = vec![0u8; 4096];
        let base = fold(0, &buf);
        buf[7 * 512] = 1;
        assert_ne!(fold(0, &buf), base);
    }

    #[test]
    fn the_suite_reads_outputs_of_this_build_and_of_older_ones() {
        let out = Output {
            bytes_read: 5,
            checksum: 9,
            close_secs: 1.5,
            ..Default::default()
        };
        let back: Output = serde_json::from_str(&serde_json::to_string(&out).unwrap()).unwrap();
        assert_eq!(
            (back.bytes_read, back.checksum, back.close_secs),
            (5, 9, 1.5)
        );
        // What a build without the later fields printed (a --baseline-bin).
        let old = r#"{"bytes_read":1,"reads":1,"secs":0.5,"remote_requests":2,
            "remote_bytes_fetched":3,"cache_file_bytes":4,"cached_data_bytes":5,
            "peak_rss_bytes":6,"checksum":7}"#;
        let old: Output = serde_json::from_str(old).unwrap();
        assert_eq!((old.checksum, old.close_secs), (7, 0.0));
        // serve-nbd's ready line is not an output.
        let ready = r#"{"ready":true,"uri":"nbd+unix:///?socket=/tmp/x"}"#;
        assert!(serde_json::from_str::<Output>(ready).is_err());
    }

    #[test]
    fn peak_rss_is_reported() {
        assert!(peak_rss() > 0);
    }
}
