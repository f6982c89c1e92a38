//! The SQLite layer on its own and inside a layered disk: round trips,
//! presence, write-no-overwrite, unmap, file size, a random model check,
//! and damaged files.
//!
//! DEVNOTE: one file of over 800 lines on purpose: the layer's behaviour
//! as one suite (the random model check reuses the round-trip helpers);
//! integrity, the fill queue and the cache directory have files of their
//! own.

mod common;

use disk_backend::Disk;
use disk_backend::DiskError;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_layered::LayerIo;
use disk_layered::LayeredDisk;
use disk_layered::WriteNoOverwrite;
use disk_test_support::TestDisk;
use disk_test_support::random_bytes;
use disk_test_support::write_random_image;
use disklayer_ram::RamDiskLayer;
use disklayer_sqlite::FormatParams;
use disklayer_sqlite::SqliteDiskLayer;
use disklayer_sqlite::SqliteDiskLayerConfig;
use disklayer_sqlite::SqliteLayerError;
use rand::Rng;
use rand::SeedableRng;
use std::sync::atomic::Ordering;

const SS: usize = 512;

fn params(sectors: u64, chunk: u32) -> FormatParams {
    FormatParams {
        chunk_size: chunk,
        ..FormatParams::new(sectors, 512)
    }
}

#[tokio::test]
async fn round_trip_and_presence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    // 100 sectors, 16-sector (8 KiB) chunks: the last chunk has 4 sectors.
    let layer = SqliteDiskLayer::create(&path, &params(100, 8192))
        .await
        .unwrap();

    let mut buf = vec![0xffu8; 100 * SS];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert_eq!(p.present_count(), 0);
    assert!(buf.iter().all(|&b| b == 0), "absent sectors read as zero");

    // A write spanning three chunks, starting mid-chunk.
    let data = random_bytes(1, 30 * SS);
    assert_eq!(
        layer.write_sectors(10, &data, true, false).await.unwrap(),
        30
    );
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert_eq!(p.present_runs(), vec![(10, 30)]);
    assert_eq!(&buf[10 * SS..40 * SS], &data[..]);
    assert!(buf[..10 * SS].iter().all(|&b| b == 0));
    assert!(buf[40 * SS..].iter().all(|&b| b == 0));

    // The last, short chunk.
    let tail = random_bytes(2, 4 * SS);
    layer.write_sectors(96, &tail, true, false).await.unwrap();
    let mut b4 = vec![0u8; 4 * SS];
    let p = layer.read_sectors(96, &mut b4).await.unwrap();
    assert!(p.all_present());
    assert_eq!(b4, tail);
    // Sectors 32..40 of chunk 2 plus the full tail chunk are rows; chunk 0
    // (10..16) and chunk 1 (16..32, full) too.
    assert_eq!(layer.stats().await.unwrap(), (4, 34));

    // Overwrite inside a full chunk (in-place BLOB write) and inside a
    // partial chunk (read-modify-write).
    let over = random_bytes(3, 8 * SS);
    layer.write_sectors(20, &over, true, false).await.unwrap();
    layer.write_sectors(36, &over, true, false).await.unwrap();
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert_eq!(p.present_runs(), vec![(10, 34), (96, 4)]);
    assert_eq!(&buf[20 * SS..28 * SS], &over[..]);
    assert_eq!(&buf[36 * SS..44 * SS], &over[..]);
    assert_eq!(&buf[28 * SS..36 * SS], &data[18 * SS..26 * SS]);

    // Out of range and bad lengths are errors, not short reads.
    let mut two = vec![0u8; 2 * SS];
    assert!(matches!(
        layer.read_sectors(99, &mut two).await,
        Err(SqliteLayerError::Disk(DiskError::OutOfRange { .. }))
    ));
    assert!(matches!(
        layer.write_sectors(u64::MAX, &two, true, false).await,
        Err(SqliteLayerError::Disk(DiskError::OutOfRange { .. }))
    ));
    let mut odd = vec![0u8; 100];
    assert!(matches!(
        layer.read_sectors(0, &mut odd).await,
        Err(SqliteLayerError::Disk(DiskError::InvalidArgument(_)))
    ));
}

#[tokio::test]
async fn write_no_overwrite_never_clobbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let layer = SqliteDiskLayer::create(&path, &params(64, 8192))
        .await
        .unwrap();
    let newer = random_bytes(10, 3 * SS);
    layer.write_sectors(5, &newer, true, false).await.unwrap();
    // A full chunk too.
    let full = random_bytes(11, 16 * SS);
    layer.write_sectors(16, &full, true, false).await.unwrap();

    // A fill of everything with stale data writes only what was absent.
    let stale = vec![0xeeu8; 64 * SS];
    let n = layer.write_sectors(0, &stale, false, false).await.unwrap();
    assert_eq!(n, 64 - 3 - 16);
    WriteNoOverwrite::write_no_overwrite(&layer, 0, &stale)
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * SS];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert!(p.all_present());
    assert_eq!(&buf[5 * SS..8 * SS], &newer[..]);
    assert_eq!(&buf[16 * SS..32 * SS], &full[..]);
    assert!(buf[..5 * SS].iter().all(|&b| b == 0xee));
    assert!(buf[32 * SS..].iter().all(|&b| b == 0xee));
    // Every chunk is now full and stored compactly.
    assert_eq!(layer.stats().await.unwrap(), (4, 64));
}

#[tokio::test]
async fn unmap_clears_presence_and_deletes_empty_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let layer = SqliteDiskLayer::create(&path, &params(64, 8192))
        .await
        .unwrap();
    let data = random_bytes(20, 64 * SS);
    layer.write_sectors(0, &data, true, false).await.unwrap();
    layer.unmap_sectors(4, 8).await.unwrap(); // part of chunk 0
    layer.unmap_sectors(16, 16).await.unwrap(); // all of chunk 1
    layer.unmap_sectors(40, 30).await.ok(); // out of range: refused
    let mut buf = vec![0u8; 64 * SS];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert_eq!(p.present_runs(), vec![(0, 4), (12, 4), (32, 32)]);
    assert_eq!(&buf[..4 * SS], &data[..4 * SS]);
    assert_eq!(&buf[12 * SS..16 * SS], &data[12 * SS..16 * SS]);
    assert!(buf[4 * SS..12 * SS].iter().all(|&b| b == 0));
    assert_eq!(layer.stats().await.unwrap(), (3, 40));

    // Through the layer trait: dropping only when the layers below are zero.
    LayerIo::unmap(&layer, 0, 4, false).await.unwrap();
    assert_eq!(layer.stats().await.unwrap(), (3, 40));
    LayerIo::unmap(&layer, 0, 16, true).await.unwrap();
    assert_eq!(layer.stats().await.unwrap(), (2, 32));
}

#[tokio::test]
async fn logically_read_only_layer_takes_fills_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let mut p = params(64, 8192);
    p.logically_read_only = true;
    let layer = SqliteDiskLayer::create(&path, &p).await.unwrap();
    assert!(layer.is_logically_read_only());
    let data = random_bytes(30, 8 * SS);
    assert!(matches!(
        layer.write_sectors(0, &data, true, false).await,
        Err(SqliteLayerError::Disk(DiskError::ReadOnly))
    ));
    layer.write_sectors(0, &data, false, false).await.unwrap();
    drop(layer);

    // Opened read-only, even fills are refused.
    let ro = SqliteDiskLayer::open(&path, true).await.unwrap();
    assert!(matches!(
        WriteNoOverwrite::write_no_overwrite(&ro, 8, &data).await,
        Err(DiskError::ReadOnly)
    ));
    assert!(matches!(
        ro.write_sectors(8, &data, false, false).await,
        Err(SqliteLayerError::Disk(DiskError::ReadOnly))
    ));
    let mut buf = vec![0u8; 8 * SS];
    assert!(ro.read_sectors(0, &mut buf).await.unwrap().all_present());
    assert_eq!(buf, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_a_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let layer = SqliteDiskLayer::create(&path, &params(4096, 65536))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let layer = layer.clone();
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(100 + t, 512 * SS);
            layer
                .write_sectors(t * 512, &data, t % 2 == 0, false)
                .await
                .unwrap();
            let mut buf = vec![0u8; 512 * SS];
            assert!(
                layer
                    .read_sectors(t * 512, &mut buf)
                    .await
                    .unwrap()
                    .all_present()
            );
            assert_eq!(buf, data);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(layer.stats().await.unwrap(), (32, 4096));
}

/// Reads one at a time, in bursts, and from several tasks at once, with
/// pauses between that end a reader's spin at every point: every read
/// is answered with the right bytes (a job lost between the spinning
/// reader and the sleeping ones would hang this test, and nextest ends
/// it as a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_every_queue_depth_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let sectors = 2048u64;
    let layer = SqliteDiskLayer::create(&path, &params(sectors, 65536))
        .await
        .unwrap();
    let data = random_bytes(7, sectors as usize * SS);
    layer.write_sectors(0, &data, true, false).await.unwrap();
    let data = std::sync::Arc::new(data);
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (layer, data) = (layer.clone(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            for i in 0..2000u32 {
                let count = rng.random_range(1..=16u64);
                let sector = rng.random_range(0..sectors - count);
                let mut buf = vec![0u8; count as usize * SS];
                assert!(
                    layer
                        .read_sectors(sector, &mut buf)
                        .await
                        .unwrap()
                        .all_present()
                );
                let at = sector as usize * SS;
                assert_eq!(buf, data[at..at + buf.len()], "task {t} read {i}");
                // Gaps of 10-200 us between some reads (busy, on the
                // worker: not synchronisation, a spread of timings that
                // outlast the reader's spin or not).
                match rng.random_range(0..8) {
                    0 => {
                        let gap = std::time::Duration::from_micros(rng.random_range(10..200));
                        let until = std::time::Instant::now() + gap;
                        while std::time::Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    }
                    1 => tokio::task::yield_now().await,
                    _ => {}
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The file holds the data compactly: full chunks cost little more than
/// their bytes once the WAL is checkpointed.
#[tokio::test]
async fn file_size_close_to_data_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let sectors = 64 * 2048; // 64 MiB
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(sectors, 512))
        .await
        .unwrap();
    let chunk = random_bytes(40, 1 << 20);
    for i in 0..64u64 {
        layer
            .write_sectors(i * 2048, &chunk, false, false)
            .await
            .unwrap();
    }
    drop(layer);
    let size = std::fs::metadata(&path).unwrap().len();
    let data = 64u64 << 20;
    eprintln!(
        "file {size} bytes for {data} data bytes ({:.4}x)",
        size as f64 / data as f64
    );
    assert!(size as f64 <= data as f64 * 1.05, "{size} > 1.05 x {data}");
    assert!(
        !dir.path().join("l.dbhd-wal").exists(),
        "WAL removed at close"
    );
}

/// Whether this process has `path` memory-mapped (Linux `/proc/self/maps`).
#[cfg(target_os = "linux")]
fn is_mapped(path: &std::path::Path) -> bool {
    let path = std::fs::canonicalize(path).unwrap();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|l| {
        l.ends_with(path.to_str().unwrap()) || l.ends_with(&format!("{} (deleted)", path.display()))
    })
}

/// Large reads go through connections without SQLite's memory map, so a
/// sequential pass over a big cache does not leave the whole file mapped
/// (and counted in the process's resident set); small reads use the map,
/// which saves copying a whole 64 KiB page per 4 KiB read. Both return the
/// same bytes.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_reads_do_not_map_the_file_small_reads_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("map.dbhd");
    let sectors = 8 * 2048; // 8 MiB
    let data = random_bytes(41, 8 << 20);
    {
        let layer = SqliteDiskLayer::create(&path, &FormatParams::new(sectors, 512))
            .await
            .unwrap();
        layer.write_sectors(0, &data, false, false).await.unwrap();
    }
    let layer = SqliteDiskLayer::open(&path, false).await.unwrap();
    let mut big = vec![0u8; 1 << 20];
    for i in 0..8u64 {
        let p = layer.read_sectors(i * 2048, &mut big).await.unwrap();
        assert!(p.all_present());
        assert_eq!(big, data[(i as usize) << 20..((i as usize) + 1) << 20]);
    }
    assert!(
        !is_mapped(&path),
        "1 MiB reads must not memory-map the cache file"
    );
    let mut small = vec![0u8; 4096];
    let p = layer.read_sectors(8 * 1000 + 3, &mut small).await.unwrap();
    assert!(p.all_present());
    let off = (8 * 1000 + 3) * SS;
    assert_eq!(small, data[off..off + 4096]);
    assert!(is_mapped(&path), "4 KiB reads use the memory map");
}

/// Random reads, writes, fills and unmaps against a plain model, on a
/// current-thread runtime...
#[tokio::test]
async fn random_ops_match_a_model() {
    random_ops(7).await;
}

/// ...and on a multi-thread runtime (the same engine path, other seeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_ops_match_a_model_multi_thread() {
    random_ops(8).await;
}

async fn random_ops(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let sectors = 300u64; // 16-sector chunks, the last one short
    let layer = SqliteDiskLayer::create(&path, &params(sectors, 8192))
        .await
        .unwrap();
    let mut model: Vec<Option<Vec<u8>>> = vec![None; sectors as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for step in 0..600 {
        let start = rng.random_range(0..sectors);
        let len = rng.random_range(1..=(sectors - start).min(40));
        match rng.random_range(0..4) {
            0 | 1 => {
                let overwrite = rng.random_bool(0.5);
                let data = random_bytes(step, len as usize * SS);
                layer
                    .write_sectors(start, &data, overwrite, false)
                    .await
                    .unwrap();
                for i in 0..len as usize {
                    let m = &mut model[start as usize + i];
                    if overwrite || m.is_none() {
                        *m = Some(data[i * SS..(i + 1) * SS].to_vec());
                    }
                }
            }
            2 => {
                layer.unmap_sectors(start, len).await.unwrap();
                for i in 0..len as usize {
                    model[start as usize + i] = None;
                }
            }
            _ => {
                let mut buf = vec![0xaau8; len as usize * SS];
                let p = layer.read_sectors(start, &mut buf).await.unwrap();
                for i in 0..len as usize {
                    let got = &buf[i * SS..(i + 1) * SS];
                    match &model[start as usize + i] {
                        Some(d) => {
                            assert!(
                                p.is_present(i as u64),
                                "step {step} sector {}",
                                start as usize + i
                            );
                            assert_eq!(got, &d[..], "step {step}");
                        }
                        None => {
                            assert!(!p.is_present(i as u64), "step {step}");
                            assert!(got.iter().all(|&b| b == 0));
                        }
                    }
                }
            }
        }
    }
    // And after reopening.
    drop(layer);
    let layer = SqliteDiskLayer::open(&path, true).await.unwrap();
    let mut buf = vec![0u8; sectors as usize * SS];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    for (i, m) in model.iter().enumerate() {
        assert_eq!(p.is_present(i as u64), m.is_some());
        if let Some(d) = m {
            assert_eq!(&buf[i * SS..(i + 1) * SS], &d[..]);
        }
    }
}

/// `[RAM, SQLite read cache, file]` against a model (random reads, writes
/// and unmaps): reads fill the cache, writes never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_over_cache_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let sectors = 4096u64; // 2 MiB
    let mut model = write_random_image(&image, 50, sectors as usize * SS).unwrap();
    let cache_path = dir.path().join("cache.dbhd");
    let lower = TestDisk::open(&image).unwrap();
    let mut cfg = SqliteDiskLayerConfig::new(&cache_path, true, false);
    cfg.logically_read_only = true;
    cfg.chunk_size = 65536;
    let disk = Disk::new(
        LayeredDisk::new(
            false,
            vec![
                LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
                LayerConfiguration::read_cache(DiskLayer::new(cfg)),
                LayerConfiguration::plain(lower.layer()),
            ],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    // After an unmap a sector may read as its old contents or as zero.
    let mut maybe_zero = vec![false; sectors as usize];
    for step in 0..400u64 {
        let start = rng.random_range(0..sectors);
        let len = rng.random_range(1..=(sectors - start).min(300));
        let range = start as usize * SS..(start + len) as usize * SS;
        match rng.random_range(0..10) {
            0..3 => {
                let data = random_bytes(1000 + step, range.len());
                disk.write(start, &data, false).await.unwrap();
                model[range].copy_from_slice(&data);
                maybe_zero[start as usize..(start + len) as usize].fill(false);
            }
            3 => {
                disk.unmap(start, len).await.unwrap();
                maybe_zero[start as usize..(start + len) as usize].fill(true);
            }
            _ => {
                let mut buf = vec![0u8; range.len()];
                disk.read(start, &mut buf).await.unwrap();
                for i in 0..len as usize {
                    let s = start as usize + i;
                    let got = &buf[i * SS..(i + 1) * SS];
                    let want = &model[s * SS..(s + 1) * SS];
                    assert!(
                        got == want || (maybe_zero[s] && got.iter().all(|&b| b == 0)),
                        "step {step} sector {s}"
                    );
                }
            }
        }
    }
    drop(disk);

    // The cache holds only image bytes, never the guest's writes.
    let cache = SqliteDiskLayer::open(&cache_path, true).await.unwrap();
    let mut buf = vec![0u8; sectors as usize * SS];
    let p = cache.read_sectors(0, &mut buf).await.unwrap();
    assert!(p.present_count() > 0);
    let image_bytes = std::fs::read(&image).unwrap();
    for (s, n) in p.present_runs() {
        let r = s as usize * SS..(s + n) as usize * SS;
        assert_eq!(buf[r.clone()], image_bytes[r]);
    }
    // Fills came in whole 64 KiB chunks.
    for (s, n) in p.present_runs() {
        assert_eq!(s % 128, 0);
        assert!(n % 128 == 0 || s + n == sectors);
    }
    assert!(lower.reads() > 0);
}

#[tokio::test]
async fn sqlite_config_checks_geometry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    SqliteDiskLayer::format(&path, &FormatParams::new(100, 512))
        .await
        .unwrap();
    let image = dir.path().join("image.raw");
    write_random_image(&image, 1, 200 * SS).unwrap();
    let lower = TestDisk::open(&image).unwrap();
    let err = LayeredDisk::new(
        true,
        vec![
            LayerConfiguration::read_cache(DiskLayer::new(SqliteDiskLayerConfig::new(
                &path, false, false,
            ))),
            LayerConfiguration::plain(lower.layer()),
        ],
    )
    .await
    .unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains("100 sectors") && msg.contains("200 sectors"),
        "{msg}"
    );

    // A second format of the same path fails instead of clobbering it.
    assert!(
        SqliteDiskLayer::format(&path, &FormatParams::new(100, 512))
            .await
            .is_err()
    );
    // Nonsense parameters are refused before anything is created.
    let bad = dir.path().join("bad.dbhd");
    for p in [
        FormatParams::new(0, 512),
        FormatParams::new(10, 500),
        FormatParams {
            chunk_size: 1000,
            ..FormatParams::new(10, 512)
        },
        FormatParams::new(u64::MAX / 2, 512),
    ] {
        assert!(matches!(
            SqliteDiskLayer::format(&bad, &p).await,
            Err(SqliteLayerError::InvalidParams(_))
        ));
        assert!(!bad.exists());
    }
}

async fn fill(path: &std::path::Path, sectors: u64) -> Vec<u8> {
    let layer = SqliteDiskLayer::create(path, &params(sectors, 65536))
        .await
        .unwrap();
    let data = random_bytes(60, sectors as usize * SS);
    layer.write_sectors(0, &data, true, false).await.unwrap();
    data
}

fn expect_corrupt(r: Result<impl std::fmt::Debug, SqliteLayerError>, what: &str) -> String {
    match r {
        Err(e @ SqliteLayerError::Corrupt { .. }) => e.to_string(),
        other => panic!("{what}: expected a corrupt-file error, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.dbhd");
    std::fs::write(&garbage, random_bytes(1, 100_000)).unwrap();
    let msg = expect_corrupt(SqliteDiskLayer::open(&garbage, false).await, "garbage");
    assert!(msg.contains("garbage.dbhd"), "{msg}");

    // A valid SQLite database that is not a layer file.
    let foreign = dir.path().join("foreign.db");
    rusqlite_free_db(&foreign);
    let msg = expect_corrupt(SqliteDiskLayer::open(&foreign, true).await, "foreign");
    assert!(msg.contains("application id"), "{msg}");

    let empty = dir.path().join("empty.dbhd");
    std::fs::write(&empty, b"").unwrap();
    expect_corrupt(SqliteDiskLayer::open(&empty, true).await, "empty");

    assert!(matches!(
        SqliteDiskLayer::open(&dir.path().join("missing"), false).await,
        Err(SqliteLayerError::NotFound { .. })
    ));
    expect_corrupt(
        SqliteDiskLayer::open(dir.path(), false).await,
        "a directory",
    );
}

fn rusqlite_free_db(path: &std::path::Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
}

#[tokio::test]
async fn truncated_file_is_an_error_not_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let sectors = 8 * 128; // 8 chunks of 64 KiB
    let data = fill(&path, sectors).await;
    let len = std::fs::metadata(&path).unwrap().len();
    for cut in [len - 1000, len / 2, 4096, 100] {
        let p = dir.path().join(format!("cut{cut}.dbhd"));
        std::fs::copy(&path, &p).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let r = async {
            let layer = SqliteDiskLayer::open(&p, true).await?;
            let mut buf = vec![0u8; sectors as usize * SS];
            layer.read_sectors(0, &mut buf).await?;
            Ok::<_, SqliteLayerError>(buf)
        }
        .await;
        match r {
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("cut{cut}.dbhd")), "{msg}");
            }
            Ok(buf) => panic!(
                "truncated to {cut} of {len} bytes, read succeeded (same bytes: {})",
                buf == data
            ),
        }
    }
}

#[tokio::test]
async fn damaged_rows_and_metadata_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    fill(&path, 256).await;
    // Smash the header of the chunk table's root page: SQLite must report
    // corruption, and the read must fail rather than return bytes.
    let root: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'chunks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let page = (root as usize - 1) * 65536;
    for b in &mut bytes[page..page + 200] {
        *b = 0x5a;
    }
    let smashed = dir.path().join("smashed.dbhd");
    std::fs::write(&smashed, &bytes).unwrap();
    let r = async {
        let layer = SqliteDiskLayer::open(&smashed, true).await?;
        let mut buf = vec![0u8; 256 * SS];
        layer.read_sectors(0, &mut buf).await?;
        Ok::<_, SqliteLayerError>(())
    }
    .await;
    let e = r.expect_err("smashed file must not read");
    assert!(e.to_string().contains("smashed.dbhd"), "{e}");
}

/// Tampering through SQL: metadata out of range, rows of the wrong shape.
#[tokio::test]
async fn tampered_metadata_and_rows_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "meta-sector-size",
            "UPDATE meta SET value = 3 WHERE key = 'sector_size'",
        ),
        (
            "meta-version",
            "UPDATE meta SET value = 99 WHERE key = 'format_version'",
        ),
        ("meta-missing", "DELETE FROM meta WHERE key = 'chunk_size'"),
        (
            "meta-count",
            "UPDATE meta SET value = -5 WHERE key = 'sector_count'",
        ),
        (
            "meta-type",
            "UPDATE meta SET value = 'x' WHERE key = 'sector_count'",
        ),
        (
            "row-short-data",
            "UPDATE chunks SET data = x'00' WHERE idx = 1",
        ),
        (
            "row-bitmap-len",
            "UPDATE chunks SET present = x'ff' WHERE idx = 0",
        ),
        ("row-index", "UPDATE chunks SET idx = 1000 WHERE idx = 1"),
        (
            "row-bits-past-end",
            "UPDATE chunks SET present = CAST(zeroblob(15) || x'ff' AS BLOB) WHERE idx = 1",
        ),
    ];
    for (name, sql) in cases {
        let path = dir.path().join(format!("{name}.dbhd"));
        // 200 sectors with 128-sector chunks: chunk 1 has 72 sectors.
        let layer = SqliteDiskLayer::create(&path, &params(200, 65536))
            .await
            .unwrap();
        layer
            .write_sectors(0, &random_bytes(1, 200 * SS), true, false)
            .await
            .unwrap();
        drop(layer);
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
        let r = async {
            let layer = SqliteDiskLayer::open(&path, false).await?;
            let mut buf = vec![0u8; 200 * SS];
            layer.read_sectors(0, &mut buf).await?;
            // Writes check shapes too.
            layer.write_sectors(0, &buf, false, false).await?;
            Ok::<_, SqliteLayerError>(())
        }
        .await;
        let msg = expect_corrupt(r, name);
        assert!(msg.contains(&format!("{name}.dbhd")), "{msg}");
    }
}

/// Two independent handles (separate connections, as two processes would
/// have): one overwrites, the other fills with stale data without
/// overwriting, concurrently. Every overwritten sector ends up with the
/// new data, every other sector with the fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fills_never_clobber_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let sectors = 2048u64;
    SqliteDiskLayer::format(&path, &params(sectors, 16384))
        .await
        .unwrap();
    let writer = SqliteDiskLayer::open(&path, false).await.unwrap();
    let filler = SqliteDiskLayer::open(&path, false).await.unwrap();
    let fill_task = tokio::spawn(async move {
        let stale = vec![0x5au8; 64 * SS];
        for round in 0..3u64 {
            for i in 0..sectors / 64 {
                let s = (i * 7 + round * 13) % (sectors / 64) * 64;
                filler.write_sectors(s, &stale, false, false).await.unwrap();
            }
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut written = vec![None::<u8>; sectors as usize];
    for step in 0..200u8 {
        let start = rng.random_range(0..sectors);
        let len = rng.random_range(1..=(sectors - start).min(50));
        let v = step.wrapping_mul(3) | 1;
        writer
            .write_sectors(start, &vec![v; len as usize * SS], true, false)
            .await
            .unwrap();
        for s in start..start + len {
            written[s as usize] = Some(v);
        }
    }
    fill_task.await.unwrap();
    let mut buf = vec![0u8; sectors as usize * SS];
    assert!(
        writer
            .read_sectors(0, &mut buf)
            .await
            .unwrap()
            .all_present()
    );
    for (s, w) in written.iter().enumerate() {
        let expect = w.unwrap_or(0x5a);
        assert!(
            buf[s * SS..(s + 1) * SS].iter().all(|&b| b == expect),
            "sector {s}"
        );
    }
}

/// The layer used directly as a `Disk`.
#[tokio::test]
async fn standalone_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let disk = Disk::new(
        SqliteDiskLayer::create(&path, &params(64, 8192))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(disk.disk_type(), "sqlite");
    assert_eq!(disk.size_bytes(), 64 * 512);
    let data = random_bytes(8, 4 * SS);
    disk.write(60, &data, true).await.unwrap();
    let mut buf = vec![0u8; 4 * SS];
    disk.read(60, &mut buf).await.unwrap();
    assert_eq!(buf, data);
    disk.unmap(60, 4).await.unwrap();
    disk.read(60, &mut buf).await.unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    disk.sync_cache().await.unwrap();
    assert!(disk.read(61, &mut buf).await.is_err());
    assert_eq!(disk.counters().cache_hit_bytes, 4 * SS as u64);
}

/// Reads see a consistent snapshot of a chunk's bitmap and compact data,
/// while another connection keeps changing the chunk's layout (present
/// sectors shift the offsets of the ones after them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_consistent_while_layout_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    SqliteDiskLayer::format(&path, &params(64, 16384))
        .await
        .unwrap();
    // Sector s holds bytes equal to s, always.
    let sector = |s: u64| vec![s as u8; SS];
    let writer = SqliteDiskLayer::open(&path, false).await.unwrap();
    for s in 8..32 {
        writer
            .write_sectors(s, &sector(s), true, false)
            .await
            .unwrap();
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let layer = SqliteDiskLayer::open(&path, true).await.unwrap();
        tokio::spawn(async move {
            let mut reads = 0u64;
            let mut buf = vec![0u8; 24 * SS];
            while !stop.load(Ordering::SeqCst) || reads < 100 {
                let p = layer.read_sectors(8, &mut buf).await.unwrap();
                for i in 0..24u64 {
                    let got = &buf[i as usize * SS..(i as usize + 1) * SS];
                    if p.is_present(i) {
                        assert!(got.iter().all(|&b| b == (8 + i) as u8), "sector {}", 8 + i);
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    // Toggle sectors 8..16 in and out: the data of 16..32 moves inside
    // the row each time.
    for round in 0..200u64 {
        let s = 8 + round % 8;
        writer.unmap_sectors(s, 1).await.unwrap();
        writer
            .write_sectors(s, &sector(s), false, false)
            .await
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(reader.await.unwrap() >= 100);
}

/// 4 KiB sectors: the bitmap, compact data and reads work in sectors of
/// the file's size, not 512 bytes.
#[tokio::test]
async fn four_kib_sectors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let p = FormatParams {
        chunk_size: 65536,
        ..FormatParams::new(40, 4096)
    };
    let layer = SqliteDiskLayer::create(&path, &p).await.unwrap();
    let data = random_bytes(44, 5 * 4096);
    layer.write_sectors(14, &data, true, false).await.unwrap();
    drop(layer);
    let layer = SqliteDiskLayer::open(&path, true).await.unwrap();
    assert_eq!(layer.geometry().sector_size, 4096);
    assert_eq!(layer.preferred_fill_sectors(), Some(16));
    let mut buf = vec![0u8; 40 * 4096];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert_eq!(p.present_runs(), vec![(14, 5)]);
    assert_eq!(&buf[14 * 4096..19 * 4096], &data[..]);
    let mut odd = vec![0u8; 512];
    assert!(layer.read_sectors(0, &mut odd).await.is_err());
}
