//! `HttpBlob` and `BlobDisk` against a real nginx serving files from a
//! directory (the ordinary static HTTP server with Range support).
//!
//! Needs nginx (`/usr/sbin/nginx`): under `CI=true` a missing nginx fails
//! the tests, otherwise they print why and return.

use blob_test_servers::NginxServer;
use blob_test_servers::images::random_bytes;
use blob_test_servers::images::sha256_hex;
use blob_test_servers::images::write_fixed_vhd1;
use blob_test_servers::images::write_random_file;
use blob_test_servers::require_tool;
use disk_backend::Disk;
use disk_blob::Blob;
use disk_blob::BlobDisk;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use rand::Rng;
use sha2::Digest;
use std::sync::Arc;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_flat_blob_random_and_full_reads() {
    if require_tool("nginx").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let len = 24 * MIB + 512;
    let path = dir.path().join("flat.img");
    let hash = write_random_file(&path, 7, len).unwrap();
    let data = std::fs::read(&path).unwrap();
    let nginx = NginxServer::serve_dir(dir.path()).unwrap();

    let blob = HttpBlob::open(
        &nginx.url("/flat.img?sig=SECRET"),
        HttpBlobOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(blob.len(), len);
    let v = blob.validators();
    assert!(v.has_strong_etag(), "{v:?}");
    assert!(v.last_modified.is_some());

    // Random reads.
    let mut rng = blob_test_servers::images::test_rng(1);
    let mut expect_bytes = 0;
    for _ in 0..200 {
        let off = rng.random_range(0..len);
        let n = rng.random_range(1..=(len - off).min(3 * MIB)) as usize;
        let mut buf = vec![0u8; n];
        blob.read(&mut buf, off).await.unwrap();
        assert!(
            buf == data[off as usize..off as usize + n],
            "offset {off} len {n}"
        );
        expect_bytes += n as u64;
    }
    // A full read in one call (split into parallel pieces).
    let mut all = vec![0u8; len as usize];
    blob.read(&mut all, 0).await.unwrap();
    assert_eq!(sha256_hex(&all), hash);
    expect_bytes += len;
    // Sequential 1 MiB reads, as the read cache above issues them.
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(MIB) as usize;
        blob.read(&mut buf[..n], off).await.unwrap();
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    expect_bytes += len;
    let seq_hash: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(seq_hash, hash);

    let c = blob.counters();
    assert_eq!(
        c.bytes_fetched, expect_bytes,
        "each byte fetched exactly once per read"
    );
    assert_eq!((c.retries, c.errors), (0, 0));
    assert_eq!(c.requests, nginx.request_count().unwrap());
}

#[tokio::test]
async fn nginx_fixed_vhd1_disk() {
    if require_tool("nginx").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 4 * MIB;
    let uid = *b"0123456789abcdef";
    let (_footer, hash) = write_fixed_vhd1(&dir.path().join("d.vhd"), 9, size, uid).unwrap();
    let nginx = NginxServer::serve_dir(dir.path()).unwrap();
    let blob: Arc<dyn Blob> = Arc::new(
        HttpBlob::open(&nginx.url("/d.vhd"), HttpBlobOptions::default())
            .await
            .unwrap(),
    );
    let disk = Disk::new(BlobDisk::new_fixed_vhd1(blob).await.unwrap()).unwrap();
    assert_eq!(disk.size_bytes(), size);
    assert_eq!(disk.disk_id(), Some(uid));
    let mut all = vec![0u8; size as usize];
    disk.read(0, &mut all).await.unwrap();
    assert_eq!(sha256_hex(&all), hash);
    assert!(disk.counters().remote_bytes_fetched >= size);
}

#[tokio::test]
async fn nginx_replaced_file_is_image_changed() {
    if require_tool("nginx").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    std::fs::write(&path, random_bytes(1, 64 * 1024)).unwrap();
    let nginx = NginxServer::serve_dir(dir.path()).unwrap();
    let blob = HttpBlob::open(&nginx.url("/x.img"), HttpBlobOptions::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    blob.read(&mut buf, 0).await.unwrap();

    // Same length, new bytes, a later mtime: nginx's ETag changes.
    let tmp = dir.path().join("x.img.new");
    std::fs::write(&tmp, random_bytes(2, 64 * 1024)).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, &path).unwrap();

    let err = blob.read(&mut buf, 0).await.unwrap_err();
    assert!(err.is_image_changed(), "{err:?}");
}

/// Throughput against curl on the same nginx file; prints numbers, asserts
/// only correctness. Each variant is paired with a curl run just before it,
/// best of three rounds, to damp the noise of a shared machine. Run with
/// `cargo test -p disk_blob --release --test nginx -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a test"]
async fn measure_throughput_vs_curl() {
    let (Some(_), Some(curl)) = (require_tool("nginx"), require_tool("curl")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let len = 256 * MIB;
    let hash = write_random_file(&dir.path().join("big.img"), 3, len).unwrap();
    let nginx = NginxServer::serve_dir(dir.path()).unwrap();
    let url = nginx.url("/big.img");
    let mib = len as f64 / MIB as f64;

    for (name, chunk, piece, readahead) in [
        ("1 MiB reads, 1 MiB pieces, no readahead", MIB, MIB, 0),
        ("1 MiB reads, 512 KiB pieces, no readahead", MIB, MIB / 2, 0),
        (
            "1 MiB reads, 1 MiB pieces, 4 MiB readahead",
            MIB,
            MIB,
            4 * MIB,
        ),
        (
            "1 MiB reads, 1 MiB pieces, 8 MiB readahead",
            MIB,
            MIB,
            8 * MIB,
        ),
        ("64 KiB reads, no readahead", 64 * 1024, MIB, 0),
        ("64 KiB reads, 4 MiB readahead", 64 * 1024, MIB, 4 * MIB),
        ("16 MiB reads, 1 MiB pieces", 16 * MIB, MIB, 0),
        ("16 MiB reads, 4 MiB pieces", 16 * MIB, 4 * MIB, 0),
    ] {
        let mut best_ratio = 0f64;
        let mut best = (0f64, 0f64);
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let st = std::process::Command::new(&curl)
                .args(["-sS", "-o", "/dev/null", &url])
                .status()
                .unwrap();
            assert!(st.success());
            let curl_s = t.elapsed().as_secs_f64();

            let opts = HttpBlobOptions {
                max_request_size: piece as usize,
                readahead: readahead as usize,
                ..Default::default()
            };
            let blob = HttpBlob::open(&url, opts).await.unwrap();
            let mut hasher = sha2::Sha256::new();
            let mut buf = vec![0u8; chunk as usize];
            // Only the reads are timed (hashing is slow in debug builds).
            let mut s = 0.0;
            let mut off = 0;
            while off < len {
                let t = std::time::Instant::now();
                blob.read(&mut buf, off).await.unwrap();
                s += t.elapsed().as_secs_f64();
                hasher.update(&buf);
                off += chunk;
            }
            let h: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(h, hash);
            if curl_s / s > best_ratio {
                best_ratio = curl_s / s;
                best = (mib / s, mib / curl_s);
            }
        }
        println!(
            "{name}: {:.0} MiB/s, {best_ratio:.2}x curl ({:.0} MiB/s) [best of 3 paired runs]",
            best.0, best.1
        );
    }
}

/// With no ETag (nginx `etag off`), reads are pinned with `If-Range:
/// <Last-Modified>`: nginx answers a changed file with 200 and the whole
/// file, which must be reported as a changed image, not served.
#[tokio::test]
async fn nginx_without_etag_pins_with_if_range() {
    if require_tool("nginx").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("y.img");
    let data = random_bytes(5, 256 * 1024);
    std::fs::write(&path, &data).unwrap();
    let nginx = NginxServer::start(
        blob_test_servers::NginxConfig::static_dir(dir.path()).location_extra("etag off;"),
    )
    .unwrap();
    let blob = HttpBlob::open(&nginx.url("/y.img"), HttpBlobOptions::default())
        .await
        .unwrap();
    let v = blob.validators();
    assert_eq!(v.etag, None);
    assert!(v.last_modified.is_some());
    let mut buf = vec![0u8; 1000];
    blob.read(&mut buf, 5000).await.unwrap();
    assert!(buf == data[5000..6000]);

    let tmp = dir.path().join("y.img.new");
    std::fs::write(&tmp, random_bytes(6, 256 * 1024)).unwrap();
    let f = std::fs::File::options().write(true).open(&tmp).unwrap();
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
        .unwrap();
    drop(f);
    std::fs::rename(&tmp, &path).unwrap();

    let err = blob.read(&mut buf, 5000).await.unwrap_err();
    assert!(err.is_image_changed(), "{err:?}");
    assert!(err.to_string().contains("Last-Modified"), "{err}");
}
