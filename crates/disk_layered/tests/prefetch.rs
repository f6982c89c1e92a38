//! Prefetch through the layered disk: listed chunks the cache lacks are
//! fetched once, in order, within the budget; chunks the cache has are
//! skipped without reading them; a guest read racing a prefetch of the
//! same chunk shares its one fetch; the guest's first reads are recorded.

mod common;

use common::SS;
use common::SharedRam;
use common::gated_disk;
use disk_backend::DiskIo;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_layered::LayeredDisk;
use disk_layered::PrefetchOptions;
use disk_test_support::TestDisk;
use disklayer_sqlite::SqliteDiskLayerConfig;
use std::sync::Arc;

const CHUNK_SECTORS: u64 = 64; // 32 KiB fill chunks
const CHUNK: u64 = CHUNK_SECTORS * SS as u64;

fn image(chunks: u64) -> Vec<u8> {
    (0..chunks * CHUNK).map(|i| (i * 7 / 13) as u8).collect()
}

/// `[RAM cache with 32 KiB fills, gated disk]`.
async fn ram_cached(chunks: u64, permits: usize) -> (Arc<LayeredDisk>, TestDisk) {
    let gated = gated_disk(image(chunks), permits);
    let ld = LayeredDisk::new(
        true,
        vec![
            LayerConfiguration::read_cache(DiskLayer::from_layer(
                SharedRam::new(chunks * CHUNK_SECTORS).with_fill(CHUNK_SECTORS),
            )),
            LayerConfiguration::plain(gated.disk()),
        ],
    )
    .await
    .unwrap();
    (Arc::new(ld), gated)
}

fn bytes(chunks: std::ops::Range<u64>) -> std::ops::Range<u64> {
    chunks.start * CHUNK..chunks.end * CHUNK
}

#[tokio::test]
async fn listed_chunks_are_fetched_once_and_then_hit() {
    let (ld, gated) = ram_cached(16, 1000).await;
    let report = ld
        .prefetch(
            &[bytes(4..6), bytes(0..1), bytes(5..8)],
            PrefetchOptions::default(),
        )
        .await;
    // Chunks 4, 5, 0, 6, 7: each once (5 is listed twice).
    assert_eq!(report.fetched_bytes, 5 * CHUNK);
    assert_eq!(report.failed_fetches, 0);
    // In list order; chunks that follow each other in it are fetched
    // together.
    let mut log = gated.read_log();
    log.sort();
    assert_eq!(
        log,
        vec![
            (0, CHUNK_SECTORS),
            (4 * CHUNK_SECTORS, 6 * CHUNK_SECTORS),
            (6 * CHUNK_SECTORS, 8 * CHUNK_SECTORS)
        ]
    );
    // The guest's reads of prefetched chunks hit.
    let mut buf = vec![0u8; 2 * CHUNK as usize];
    DiskIo::read(&*ld, 4 * CHUNK_SECTORS, &mut buf)
        .await
        .unwrap();
    assert!(buf[..] == image(16)[bytes(4..6).start as usize..bytes(4..6).end as usize]);
    assert_eq!(gated.reads(), 3, "no new fetch");
    let c = DiskIo::counters(&*ld);
    assert_eq!(c.prefetched_bytes, 5 * CHUNK);
    assert_eq!(c.prefetch_used_bytes, 2 * CHUNK);
    assert_eq!(c.prefetch_hit_reads, 1);
    // Recorded: the guest's reads only, not the prefetch's.
    let t = ld.first_touches().unwrap();
    assert_eq!(t.chunk_bytes, CHUNK);
    assert_eq!(
        t.touches.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![4, 5]
    );
}

#[tokio::test]
async fn the_budget_caps_a_prefetch() {
    let (ld, gated) = ram_cached(16, 1000).await;
    let report = ld
        .prefetch(
            &[bytes(0..16)],
            PrefetchOptions {
                max_bytes: 3 * CHUNK,
                ..PrefetchOptions::default()
            },
        )
        .await;
    assert!(report.over_budget);
    assert_eq!(report.fetched_bytes, 3 * CHUNK);
    assert_eq!(gated.read_log(), vec![(0, 3 * CHUNK_SECTORS)]);
}

/// A guest read of a chunk being prefetched waits for that fetch instead
/// of fetching it again, and gets the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_read_shares_the_prefetch_of_its_chunk() {
    let (ld, gated) = ram_cached(8, 0).await;
    let prefetch = {
        let ld = ld.clone();
        tokio::spawn(async move {
            ld.prefetch(&[bytes(2..3)], PrefetchOptions::default())
                .await
        })
    };
    // The prefetch's fetch has reached the bottom (and waits at the gate).
    while gated.reads() < 1 {
        tokio::task::yield_now().await;
    }
    let read = {
        let ld = ld.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            DiskIo::read(&*ld, 2 * CHUNK_SECTORS + 8, &mut buf)
                .await
                .map(|()| buf)
        })
    };
    // Let both run to their waiting points, then open the gate for ONE
    // fetch: a read that fetched for itself would wait at the gate for
    // ever (the timeout turns that into a failure).
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    gated.open_gate(1);
    let buf = tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("the read shares the prefetch's fetch")
        .unwrap()
        .unwrap();
    let off = (2 * CHUNK + 8 * SS as u64) as usize;
    assert!(buf[..] == image(8)[off..off + 4096]);
    assert_eq!(prefetch.await.unwrap().fetched_bytes, CHUNK);
    assert_eq!(gated.reads(), 1, "one fetch for both");
}

/// With a read cache that can tell what it holds (SQLite), chunks it has
/// are skipped without reading their data.
#[tokio::test]
async fn chunks_the_cache_holds_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let gated = gated_disk(image(16), 1000);
    let mut config = SqliteDiskLayerConfig::new(dir.path().join("c.dbhd"), true, false);
    config.chunk_size = CHUNK as u32;
    config.logically_read_only = true;
    let ld = LayeredDisk::new(
        true,
        vec![
            LayerConfiguration::read_cache(DiskLayer::new(config)),
            LayerConfiguration::plain(gated.disk()),
        ],
    )
    .await
    .unwrap();
    // The guest reads chunks 2 and 3.
    let mut buf = vec![0u8; 2 * CHUNK as usize];
    DiskIo::read(&ld, 2 * CHUNK_SECTORS, &mut buf)
        .await
        .unwrap();
    assert_eq!(gated.reads(), 1);
    let report = ld
        .prefetch(&[bytes(0..6)], PrefetchOptions::default())
        .await;
    assert_eq!(report.present_bytes, 2 * CHUNK);
    assert_eq!(report.fetched_bytes, 4 * CHUNK);
    let mut log = gated.read_log();
    log.sort();
    assert_eq!(
        log,
        vec![
            (0, 2 * CHUNK_SECTORS),
            (2 * CHUNK_SECTORS, 4 * CHUNK_SECTORS),
            (4 * CHUNK_SECTORS, 6 * CHUNK_SECTORS)
        ]
    );
}
