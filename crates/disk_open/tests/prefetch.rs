//! Trace-guided prefetch end to end, against the in-test fault server
//! (real HTTP on loopback, with a request log and injected latency):
//! recording a boot's reads, publishing the list beside the image, a cold
//! run that replays it, demand reads going first, nothing fetched twice,
//! and lists that do not belong to the image being ignored.

use blob_test_servers::FaultServer;
use blob_test_servers::images::random_bytes;
use blob_test_servers::remote_stack;
use disk_backend::Disk;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayeredDiskHandle;
use disk_open::OpenOptions;
use disk_open::open;
use disk_open::prefetch::RECORD_FILE_NAME;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn remote(cache_dir: &Path, url: &str) -> LayeredDiskHandle {
    remote_stack(cache_dir, url, BlobFormat::Flat, true)
}

/// A boot-like read pattern: small reads scattered over `chunks`, in a
/// fixed order.
fn boot_reads(chunks: &[u64]) -> Vec<(u64, usize)> {
    chunks
        .iter()
        .enumerate()
        .flat_map(|(i, &c)| {
            let base = c * MIB + (i as u64 % 7) * 65536;
            [(base, 4096), (base + 16384, 16384)]
        })
        .collect()
}

async fn run_reads(disk: &Disk, image: &[u8], reads: &[(u64, usize)]) {
    for &(off, len) in reads {
        let mut buf = vec![0u8; len];
        disk.read(off / 512, &mut buf).await.unwrap();
        assert!(
            buf[..] == image[off as usize..off as usize + len],
            "at {off}"
        );
    }
}

/// The one recorded list under `cache_dir`.
fn recorded_list(cache_dir: &Path) -> PathBuf {
    let mut found = Vec::new();
    for e in std::fs::read_dir(cache_dir).unwrap().flatten() {
        let p = e.path().join(RECORD_FILE_NAME);
        if p.exists() {
            found.push(p);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    found.pop().unwrap()
}

/// Waits (polling the disk's own counters, with a deadline) until the
/// prefetch has fetched `bytes`.
async fn wait_prefetched(disk: &Disk, bytes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while disk.counters().prefetched_bytes < bytes {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not finish: {:?}",
            disk.counters()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Two runs of a boot record a list; published beside the image, it makes
/// a third, cold run on another machine (an empty cache) read everything
/// from the cache: the prefetch fetched it first, each chunk once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_list_makes_the_next_cold_boot_all_hits() {
    let server = FaultServer::start().unwrap();
    let image = random_bytes(11, (64 * MIB) as usize);
    server.put_blob("/img/disk.raw", image.clone());
    let url = server.url("/img/disk.raw");
    let boot: Vec<u64> = vec![3, 40, 41, 7, 60, 12, 13, 14, 0, 33];
    let reads = boot_reads(&boot);

    let recorder_cache = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let disk = open(
            &remote(recorder_cache.path(), &url),
            &OpenOptions::default(),
        )
        .await
        .unwrap();
        run_reads(&disk, &image, &reads).await;
    }
    let list_path = recorded_list(recorder_cache.path());
    let list = prefetch_list::PrefetchList::parse(&std::fs::read(&list_path).unwrap()).unwrap();
    assert_eq!(list.total_bytes(), boot.len() as u64 * MIB);
    // First-read order is kept (adjacent ones merged).
    assert_eq!(list.ranges[0].offset, 3 * MIB);
    assert_eq!(list.ranges[1].offset, 40 * MIB);
    assert_eq!(list.ranges[1].len, 2 * MIB);

    // Publish it beside the image.
    server.put_blob("/img/disk.raw.prefetch", std::fs::read(&list_path).unwrap());

    let cold_cache = tempfile::tempdir().unwrap();
    let disk = open(&remote(cold_cache.path(), &url), &OpenOptions::default())
        .await
        .unwrap();
    wait_prefetched(&disk, list.total_bytes()).await;
    let before = server.request_count();
    run_reads(&disk, &image, &reads).await;
    assert_eq!(server.request_count(), before, "every read was a hit");
    let c = disk.counters();
    assert_eq!(c.prefetch_hit_reads, reads.len() as u64);
    assert_eq!(c.prefetched_bytes, list.total_bytes());
    assert_eq!(c.prefetch_used_bytes, list.total_bytes());
    // Fetched: the listed chunks once, nothing else.
    assert_eq!(
        c.remote_bytes_fetched,
        list.total_bytes() + std::fs::metadata(&list_path).unwrap().len()
    );
}

/// Demand reads never queue behind prefetches: with a slow server and a
/// long list, a guest read of a chunk the prefetch has not reached yet
/// reaches the server before any prefetch request of the next round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_read_goes_before_queued_prefetches() {
    let server = FaultServer::start().unwrap();
    let image = random_bytes(12, (128 * MIB) as usize);
    server.put_blob("/disk.raw", image.clone());
    let url = server.url("/disk.raw");
    let etag = server.etag("/disk.raw").unwrap();
    // 64 chunks, none adjacent in list order: 64 separate fetches.
    let chunks: Vec<u64> = (0..64).map(|i| (i * 2 + 1) % 128).collect();
    let list = prefetch_list::PrefetchList::from_touches(
        &format!("flat:/disk.raw;etag:{etag}"),
        128 * MIB,
        MIB,
        chunks.iter().enumerate().map(|(i, &c)| (c, i as u64)),
    );
    server.put_blob("/disk.raw.prefetch", list.to_text().into_bytes());

    let cache = tempfile::tempdir().unwrap();
    let opts = OpenOptions::default();
    let parallel = opts.prefetch.unwrap().parallel as u64;
    let disk = open(&remote(cache.path(), &url), &opts).await.unwrap();
    // Slow from now on: each request waits 2 s at the server.
    server.set_latency(Duration::from_secs(2));
    // The first prefetch round is in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server.in_flight() < parallel {
        assert!(std::time::Instant::now() < deadline, "no prefetch round");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The guest reads chunk 100, listed 50th.
    let mut buf = vec![0u8; 4096];
    disk.read(100 * MIB / 512, &mut buf).await.unwrap();
    assert!(buf[..] == image[(100 * MIB) as usize..(100 * MIB) as usize + 4096]);
    drop(disk);

    let log = server.arrivals();
    let range_start = |r: &blob_test_servers::RequestRecord| {
        r.range
            .as_deref()
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let demand = log
        .iter()
        .find(|r| range_start(r) == Some(100 * MIB))
        .expect("the guest's read reached the server");
    let prefetches_before = log
        .iter()
        .filter(|r| r.seq < demand.seq && r.path() == "/disk.raw" && r.range.is_some())
        .count() as u64;
    assert!(
        prefetches_before <= parallel,
        "{prefetches_before} prefetch requests reached the server before the guest's read"
    );
}

/// A chunk being prefetched and read by the guest at the same moment is
/// fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_being_prefetched_is_not_fetched_again_for_the_guest() {
    let server = FaultServer::start().unwrap();
    let image = random_bytes(13, (32 * MIB) as usize);
    server.put_blob("/d.raw", image.clone());
    let url = server.url("/d.raw");
    let etag = server.etag("/d.raw").unwrap();
    let list = prefetch_list::PrefetchList::from_touches(
        &format!("flat:/d.raw;etag:{etag}"),
        32 * MIB,
        MIB,
        [(5, 0)],
    );
    server.put_blob("/d.raw.prefetch", list.to_text().into_bytes());
    server.set_latency(Duration::from_millis(500));
    let cache = tempfile::tempdir().unwrap();
    let disk = open(&remote(cache.path(), &url), &OpenOptions::default())
        .await
        .unwrap();
    // The prefetch of chunk 5 is in flight.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let chunk5 = format!("bytes={}-{}", 5 * MIB, 6 * MIB - 1);
    while !server
        .arrivals()
        .iter()
        .any(|r| r.range.as_deref() == Some(chunk5.as_str()))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no prefetch of chunk 5"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut buf = vec![0u8; 8192];
    disk.read((5 * MIB + 4096) / 512, &mut buf).await.unwrap();
    assert!(buf[..] == image[(5 * MIB + 4096) as usize..(5 * MIB + 4096 + 8192) as usize]);
    drop(disk);
    let fetches = server
        .requests()
        .iter()
        .filter(|r| r.path() == "/d.raw" && r.range.is_some())
        .count();
    assert_eq!(fetches, 1, "{:?}", server.requests());
}

/// Lists that do not belong to the image (another image, the same URL at
/// another version, truncated, garbage) change nothing: the disk opens and
/// reads, nothing is prefetched. The image's SAS query never appears in the
/// recorded list, its name, or the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_or_damaged_lists_change_nothing_and_no_secret_leaks() {
    let server = FaultServer::start().unwrap();
    let image = random_bytes(14, (16 * MIB) as usize);
    server.put_blob("/v/img.raw", image.clone());
    let etag = server.etag("/v/img.raw").unwrap();
    let good = |identity: &str| {
        prefetch_list::PrefetchList::from_touches(identity, 16 * MIB, MIB, (0..8).map(|c| (c, c)))
            .to_text()
    };
    let cases = [
        (
            "another image",
            good(&format!("flat:/v/other.raw;etag:{etag}")),
        ),
        (
            "another version",
            good("flat:/v/img.raw;etag:\"other-version\""),
        ),
        (
            "truncated",
            good(&format!("flat:/v/img.raw;etag:{etag}"))[..40].to_owned(),
        ),
        ("garbage", "\u{1}\u{2}not a list at all".to_owned()),
    ];
    let secret = "sig=TOPSECRET-SAS-TOKEN";
    // Every log line of this process (every level), captured.
    let logs = LogCapture::install();
    for (what, list) in cases {
        server.put_blob("/v/img.raw.prefetch", list.into_bytes());
        let cache = tempfile::tempdir().unwrap();
        let url = format!("{}?{secret}", server.url("/v/img.raw"));
        let disk = open(&remote(cache.path(), &url), &OpenOptions::default())
            .await
            .unwrap();
        // The list was fetched (with the query) ...
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !server
            .requests()
            .iter()
            .any(|r| r.path() == "/v/img.raw.prefetch" && r.path_and_query.contains(secret))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: list never fetched"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut buf = vec![0u8; 4096];
        disk.read(2 * MIB / 512, &mut buf).await.unwrap();
        assert!(
            buf[..] == image[(2 * MIB) as usize..(2 * MIB) as usize + 4096],
            "{what}"
        );
        // ... and nothing was prefetched.
        assert_eq!(disk.counters().prefetched_bytes, 0, "{what}");
        drop(disk);
        // The recorded list names the image without the query.
        let recorded = std::fs::read_to_string(recorded_list(cache.path())).unwrap();
        assert!(
            recorded.contains("image flat:/v/img.raw;etag:"),
            "{recorded}"
        );
        for p in walk(cache.path()) {
            assert!(!p.to_string_lossy().contains("TOPSECRET"), "{what}: {p:?}");
            if p.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(9).any(|w| w == b"TOPSECRET"),
                    "{what}: the secret is in {p:?}"
                );
            }
        }
        server.reset_stats();
    }
    let text = logs.text();
    assert!(
        text.contains("prefetch list"),
        "the log says what happened:\n{text}"
    );
    assert!(
        !text.contains("TOPSECRET"),
        "the secret is in the log:\n{text}"
    );
}

/// Captures this process's `tracing` output (all levels) in memory.
#[derive(Clone, Default)]
struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl LogCapture {
    fn install() -> Self {
        let capture = LogCapture::default();
        let writer = capture.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        capture
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What the guest wrote itself (served by the RAM layer above the cache)
/// is not recorded: a warm run with the recorded list sends only the
/// validating HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guests_own_writes_are_not_recorded() {
    let server = FaultServer::start().unwrap();
    let image = random_bytes(15, (32 * MIB) as usize);
    server.put_blob("/w.raw", image.clone());
    let url = server.url("/w.raw");
    let cache = tempfile::tempdir().unwrap();
    {
        let disk = open(&remote(cache.path(), &url), &OpenOptions::default())
            .await
            .unwrap();
        let mine = vec![0x5a; MIB as usize];
        disk.write(20 * MIB / 512, &mine, false).await.unwrap();
        let mut back = vec![0u8; MIB as usize];
        disk.read(20 * MIB / 512, &mut back).await.unwrap();
        assert!(back == mine);
        run_reads(&disk, &image, &[(3 * MIB, 4096)]).await;
    }
    let list =
        prefetch_list::PrefetchList::parse(&std::fs::read(recorded_list(cache.path())).unwrap())
            .unwrap();
    assert_eq!(list.ranges.len(), 1);
    assert_eq!(list.ranges[0].offset, 3 * MIB);

    server.reset_stats();
    let disk = open(&remote(cache.path(), &url), &OpenOptions::default())
        .await
        .unwrap();
    run_reads(&disk, &image, &[(3 * MIB, 4096)]).await;
    drop(disk);
    let sent: Vec<String> = server
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path()))
        .collect();
    assert_eq!(
        sent,
        vec!["HEAD /w.raw".to_owned()],
        "warm run sent {sent:?}"
    );
}
