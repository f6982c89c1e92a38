//! The full remote stack against a real nginx serving a 256 MiB random
//! image, as flat and as fixed VHD1.

use blob_test_servers::NginxServer;
use blob_test_servers::images::test_rng;
use blob_test_servers::images::write_fixed_vhd1;
use blob_test_servers::images::write_random_file;
use blob_test_servers::remote_stack;
use blob_test_servers::require_tool;
use disk_backend::Disk;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayeredDiskHandle;
use disk_open::OpenOptions;
use disk_open::open;
use rand::Rng;
use sha2::Digest;
use std::os::unix::fs::FileExt;
use std::path::Path;

const IMAGE_SIZE: u64 = 256 << 20;

fn remote(cache_dir: &Path, url: &str, format: BlobFormat) -> LayeredDiskHandle {
    remote_stack(cache_dir, url, format, false)
}

/// Random reads of 4 KiB to 1 MiB compared byte for byte with the file.
async fn random_reads_match(disk: &Disk, file: &std::fs::File, seed: u64, count: usize) {
    let mut rng = test_rng(seed);
    let sectors = disk.sector_count();
    for _ in 0..count {
        let len_sectors = 8 << rng.random_range(0..9); // 4 KiB ..= 1 MiB
        let start = rng.random_range(0..sectors - len_sectors);
        let mut got = vec![0u8; (len_sectors * 512) as usize];
        disk.read(start, &mut got).await.unwrap();
        let mut want = vec![0u8; got.len()];
        file.read_exact_at(&mut want, start * 512).unwrap();
        assert!(got == want, "mismatch at sector {start} (+{len_sectors})");
    }
}

/// SHA-256 of the whole disk read sequentially in 1 MiB requests.
async fn disk_hash(disk: &Disk) -> String {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut sector = 0;
    while sector < disk.sector_count() {
        let n = (disk.sector_count() - sector).min(2048);
        let piece = &mut buf[..(n * 512) as usize];
        disk.read(sector, piece).await.unwrap();
        h.update(&*piece);
        sector += n;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

async fn full_stack_against_nginx(format: BlobFormat) {
    if require_tool("nginx").is_none() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    // Only the two formats this test writes.
    let vhd = format == BlobFormat::FixedVhd1;
    let name = if vhd { "image.vhd" } else { "image.raw" };
    let path = root.path().join(name);
    let hash = if vhd {
        write_fixed_vhd1(&path, 42, IMAGE_SIZE, [0x42; 16])
            .unwrap()
            .1
    } else {
        write_random_file(&path, 42, IMAGE_SIZE).unwrap()
    };
    let file = std::fs::File::open(&path).unwrap();
    let nginx = NginxServer::serve_dir(root.path()).unwrap();
    let url = nginx.url(&format!("/{name}"));
    let cache = tempfile::tempdir().unwrap();
    let handle = remote(cache.path(), &url, format);

    // Cold, random: reads through HTTP equal the file.
    let random_cache = tempfile::tempdir().unwrap();
    let disk = open(
        &remote(random_cache.path(), &url, format),
        &OpenOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(disk.size_bytes(), IMAGE_SIZE);
    random_reads_match(&disk, &file, 1, 200).await;
    drop(disk);

    // Cold, the first full read on a fresh cache fetches each byte about
    // once (chunk widening and readahead must not refetch).
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert_eq!(disk_hash(&disk).await, hash);
    let cold = disk.counters();
    let ratio = cold.remote_bytes_fetched as f64 / IMAGE_SIZE as f64;
    assert!(
        (1.0..=1.1).contains(&ratio),
        "a full cold read fetched {ratio:.3}x the disk size ({cold:?})"
    );
    drop(disk);

    // Warm: a second stack on the same cache fetches nothing.
    let before = nginx.request_count().unwrap();
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert_eq!(disk_hash(&disk).await, hash);
    random_reads_match(&disk, &file, 2, 200).await;
    let warm = disk.counters();
    assert_eq!(warm.remote_bytes_fetched, 0, "{warm:?}");
    // Only the validating HEAD of the open reached nginx.
    let after = nginx.request_count().unwrap();
    assert_eq!(
        after - before,
        1,
        "warm open sent {} requests",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flat_image_through_full_stack() {
    full_stack_against_nginx(BlobFormat::Flat).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhd1_image_through_full_stack() {
    full_stack_against_nginx(BlobFormat::FixedVhd1).await;
}
