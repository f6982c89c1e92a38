//! The full remote stack [RAM, SQLite auto-cache, HTTP blob] opened from a
//! description, against the in-test fault server.

use blob_test_servers::FaultServer;
use blob_test_servers::error_chain;
use blob_test_servers::images::fixed_vhd1_bytes;
use blob_test_servers::images::random_bytes;
use blob_test_servers::remote_stack;
use disk_backend::Disk;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerDescription;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use disk_open::OpenError;
use disk_open::OpenOptions;
use disk_open::open;
use std::path::Path;

const MIB: usize = 1 << 20;

fn remote(cache_dir: &Path, url: &str, format: BlobFormat) -> LayeredDiskHandle {
    remote_stack(cache_dir, url, format, false)
}

async fn read_all(disk: &Disk, chunk: usize) -> Vec<u8> {
    let mut out = vec![0u8; disk.size_bytes() as usize];
    for (i, piece) in out.chunks_mut(chunk).enumerate() {
        disk.read((i * chunk / 512) as u64, piece).await.unwrap();
    }
    out
}

fn key_dirs(cache_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache_dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn flat_image_second_open_fetches_nothing() {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(1, 8 * MIB);
    let url = server.url("/images/disk.raw");
    server.put_blob("/images/disk.raw", data.clone());
    let cache = tempfile::tempdir().unwrap();
    let handle = remote(cache.path(), &url, BlobFormat::Flat);

    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert_eq!(disk.size_bytes(), data.len() as u64);
    assert!(read_all(&disk, 64 << 10).await == data, "cold read differs");
    let cold = disk.counters();
    assert!(
        cold.remote_bytes_fetched >= data.len() as u64
            && cold.remote_bytes_fetched * 10 <= data.len() as u64 * 11,
        "cold read fetched {} bytes for {} bytes of disk",
        cold.remote_bytes_fetched,
        data.len()
    );
    drop(disk);

    server.reset_stats();
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(read_all(&disk, 1 << 20).await == data, "warm read differs");
    let warm = disk.counters();
    assert_eq!(warm.remote_bytes_fetched, 0, "{warm:?}");
    assert_eq!(warm.cache_hit_bytes, data.len() as u64, "{warm:?}");
    // The open itself validates the image with one HEAD; reads send nothing.
    assert_eq!(server.request_count(), 1, "{:?}", server.requests());
    assert_eq!(warm.remote_requests, 1);

    let dirs = key_dirs(cache.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].starts_with("flat-disk.raw-"), "{dirs:?}");
}

#[tokio::test]
async fn replaced_flat_image_gets_a_fresh_cache() {
    let server = FaultServer::start().unwrap();
    let v1 = random_bytes(2, 2 * MIB);
    let v2 = random_bytes(3, 2 * MIB);
    server.put_blob("/disk.img", v1.clone());
    let url = server.url("/disk.img");
    let cache = tempfile::tempdir().unwrap();
    let handle = remote(cache.path(), &url, BlobFormat::Flat);

    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(read_all(&disk, MIB).await == v1);
    drop(disk);

    // Same name, new bytes, new ETag: never served from the old cache.
    server.put_blob("/disk.img", v2.clone());
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(read_all(&disk, MIB).await == v2, "stale data served");
    assert_eq!(disk.counters().remote_bytes_fetched, v2.len() as u64);
    assert_eq!(key_dirs(cache.path()).len(), 2);
}

#[tokio::test]
async fn flat_image_without_validators_is_not_cached() {
    let server = FaultServer::start().unwrap();
    server.set_validators(false, false);
    let data = random_bytes(4, MIB);
    server.put_blob("/novalidator.raw", data.clone());
    let url = server.url("/novalidator.raw");
    let cache = tempfile::tempdir().unwrap();
    let handle = remote(cache.path(), &url, BlobFormat::Flat);

    for _ in 0..2 {
        let disk = open(&handle, &OpenOptions::default()).await.unwrap();
        assert!(read_all(&disk, MIB).await == data);
        assert_eq!(disk.counters().remote_bytes_fetched, data.len() as u64);
    }
    assert!(key_dirs(cache.path()).is_empty());
}

#[tokio::test]
async fn vhd1_image_is_keyed_by_unique_id_and_footer_is_not_disk_data() {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(5, 3 * MIB);
    let id = [0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff];
    server.put_blob("/os.vhd", fixed_vhd1_bytes(data.clone(), id).unwrap());
    let url = server.url("/os.vhd");
    let cache = tempfile::tempdir().unwrap();
    let handle = remote(cache.path(), &url, BlobFormat::FixedVhd1);

    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert_eq!(disk.size_bytes(), data.len() as u64);
    assert_eq!(disk.disk_id(), Some(id));
    assert!(read_all(&disk, 256 << 10).await == data);
    let mut past_end = [0u8; 512];
    assert!(disk.read(disk.sector_count(), &mut past_end).await.is_err());
    // One key directory named by the unique id, plus the image metadata
    // (the footer piece).
    assert_eq!(
        key_dirs(cache.path()),
        vec![
            "0a0000000000000000000000000000ff".to_string(),
            "image-metadata".to_string()
        ]
    );
    drop(disk);

    // A warm open takes the footer from the metadata pieces: one HEAD, no GET.
    server.reset_stats();
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(read_all(&disk, MIB).await == data);
    assert_eq!(disk.counters().remote_bytes_fetched, 0);
    assert_eq!(server.request_count(), 1, "{:?}", server.requests());
    assert!(
        cache
            .path()
            .join("0a0000000000000000000000000000ff/cache.dbhd")
            .is_file()
    );
    drop(disk);
    // A damaged piece file is never served: its check fails, the footer
    // is fetched again (one GET) and the piece rewritten.
    let version_dirs: Vec<_> = std::fs::read_dir(cache.path().join("image-metadata"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(version_dirs.len(), 1);
    let pieces: Vec<_> = std::fs::read_dir(&version_dirs[0])
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pieces.len(), 1, "{pieces:?}");
    let mut raw = std::fs::read(&pieces[0]).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0xff;
    std::fs::write(&pieces[0], &raw).unwrap();
    server.reset_stats();
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(read_all(&disk, MIB).await == data);
    assert_eq!(server.request_count(), 2, "{:?}", server.requests());
    assert_ne!(std::fs::read(&pieces[0]).unwrap(), raw);
}

#[tokio::test]
async fn guest_writes_stay_in_ram() {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(6, 2 * MIB);
    server.put_blob("/w.raw", data.clone());
    let url = server.url("/w.raw");
    let cache = tempfile::tempdir().unwrap();
    let handle = remote(cache.path(), &url, BlobFormat::Flat);

    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    // A distinctive pattern that random data will not contain.
    let pattern: Vec<u8> = (0..64 << 10).map(|i| b"GUEST-WRITE-MARK"[i % 16]).collect();
    disk.write(128, &pattern, true).await.unwrap();
    disk.sync_cache().await.unwrap();
    let mut back = vec![0u8; pattern.len()];
    disk.read(128, &mut back).await.unwrap();
    assert!(back == pattern);
    // Reading everything else fills the cache around the written range.
    let all = read_all(&disk, MIB).await;
    assert!(all[..128 * 512] == data[..128 * 512]);
    drop(disk);

    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(
        read_all(&disk, MIB).await == data,
        "a write leaked below RAM"
    );
    drop(disk);
    for dir in key_dirs(cache.path()) {
        for entry in std::fs::read_dir(cache.path().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !bytes.windows(16).any(|w| w == b"GUEST-WRITE-MARK"),
                    "{} contains guest-written data",
                    path.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn sas_token_never_reaches_cache_paths_or_errors() {
    let server = FaultServer::start().unwrap();
    server.set_required_query_token(Some("sig=SECRET"));
    let data = random_bytes(7, MIB);
    server.put_blob("/sas.raw", data.clone());
    let url = format!("{}?sv=2024&sig=SECRET", server.url("/sas.raw"));
    let cache = tempfile::tempdir().unwrap();
    let disk = open(
        &remote(cache.path(), &url, BlobFormat::Flat),
        &OpenOptions::default(),
    )
    .await
    .unwrap();
    assert!(read_all(&disk, MIB).await == data);
    for d in key_dirs(cache.path()) {
        assert!(!d.contains("SECRET"), "{d}");
    }

    let missing = format!("{}?sv=2024&sig=SECRET", server.url("/missing.raw"));
    let err = open(
        &remote(cache.path(), &missing, BlobFormat::Flat),
        &OpenOptions::default(),
    )
    .await
    .unwrap_err();
    let text = format!("{:#}", error_chain(&err));
    assert!(!text.contains("SECRET"), "{text}");
    assert!(text.contains("missing.raw?<redacted>"), "{text}");
    assert!(format!("{err:?}").find("SECRET").is_none());
}

#[tokio::test]
async fn local_vhd1_file_under_ram() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(8, MIB);
    let path = dir.path().join("local.vhd");
    std::fs::write(&path, fixed_vhd1_bytes(data.clone(), [7; 16]).unwrap()).unwrap();
    let handle = LayeredDiskHandle {
        layers: vec![
            LayerDescription::plain(LayerKind::Ram { len: None }),
            LayerDescription::plain(LayerKind::File {
                path: path.clone(),
                format: BlobFormat::FixedVhd1,
            }),
        ],
        read_only: false,
    };
    let disk = open(&handle, &OpenOptions::default()).await.unwrap();
    assert!(read_all(&disk, 64 << 10).await == data);
    disk.write(0, &[0xee; 4096], false).await.unwrap();
    drop(disk);
    // The file under the RAM layer is untouched.
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk[..data.len()] == data[..]);
}

#[tokio::test]
async fn malformed_descriptions_are_errors() {
    let empty = LayeredDiskHandle {
        layers: vec![],
        read_only: true,
    };
    assert!(matches!(
        open(&empty, &OpenOptions::default()).await,
        Err(OpenError::Empty)
    ));
    let ram_bottom = LayeredDiskHandle {
        layers: vec![LayerDescription::plain(LayerKind::Ram { len: Some(4096) })],
        read_only: false,
    };
    let err = open(&ram_bottom, &OpenOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, OpenError::BottomNotFullDisk("RAM")), "{err}");
    let file_in_middle = LayeredDiskHandle {
        layers: vec![
            LayerDescription::plain(LayerKind::File {
                path: "/nonexistent".into(),
                format: BlobFormat::Flat,
            }),
            LayerDescription::plain(LayerKind::File {
                path: "/nonexistent".into(),
                format: BlobFormat::Flat,
            }),
        ],
        read_only: true,
    };
    let err = open(&file_in_middle, &OpenOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, OpenError::FullDiskNotAtBottom("file")),
        "{err}"
    );
    let missing = LayeredDiskHandle {
        layers: vec![LayerDescription::plain(LayerKind::File {
            path: "/nonexistent/disk.vhd".into(),
            format: BlobFormat::FixedVhd1,
        })],
        read_only: true,
    };
    let err = open(&missing, &OpenOptions::default()).await.unwrap_err();
    assert!(err.to_string().contains("/nonexistent/disk.vhd"), "{err}");
}

/// Threads of one process (parallel test cases, say) opening different
/// VHD1 images into one cache directory each get their own footer cached
/// (the metadata piece that holds it): no thread's piece lands under
/// another image's key.
#[test]
fn threads_opening_different_images_keep_their_own_footers() {
    const THREADS: usize = 16;
    let server = FaultServer::start().unwrap();
    let cache = tempfile::tempdir().unwrap();
    // Different sizes and unique ids, so a swapped footer cannot pass.
    let images: Vec<(String, [u8; 16], Vec<u8>)> = (0..THREADS)
        .map(|i| {
            let data = random_bytes(100 + i as u64, 64 * 1024 + i * 4096);
            let mut id = [0u8; 16];
            id[0] = 0x5f;
            id[15] = i as u8;
            let path = format!("/thread-{i}.vhd");
            let image = fixed_vhd1_bytes(data, id).unwrap();
            server.put_blob(&path, image.clone());
            (server.url(&path), id, image)
        })
        .collect();

    let open_and_check = |url: &str, id: [u8; 16], image: &[u8]| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let handle = remote(cache.path(), url, BlobFormat::FixedVhd1);
            let disk = open(&handle, &OpenOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{url}: {}", error_chain(&e)));
            assert_eq!(disk.disk_id(), Some(id), "{url}");
            assert_eq!(disk.size_bytes(), image.len() as u64 - 512, "{url}");
            disk.counters()
        })
    };

    // Cold: every thread opens its image at the same moment.
    let start = std::sync::Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for (url, id, image) in &images {
            let start = &start;
            let open_and_check = &open_and_check;
            scope.spawn(move || {
                start.wait();
                open_and_check(url, *id, image);
            });
        }
    });

    // One version directory per image, each holding one piece (the last
    // 64 KiB-aligned piece, with the footer) whose bytes are that image's,
    // and no temporary file left behind.
    let meta_dir = cache.path().join("image-metadata");
    let mut cached: Vec<Vec<u8>> = Vec::new();
    for version in std::fs::read_dir(&meta_dir).unwrap() {
        let files: Vec<_> = std::fs::read_dir(version.unwrap().path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        cached.push(std::fs::read(&files[0]).unwrap());
    }
    assert_eq!(cached.len(), THREADS);
    for (url, _, image) in &images {
        let tail = &image[64 * 1024..];
        assert_eq!(
            cached.iter().filter(|c| c.ends_with(tail)).count(),
            1,
            "{url}: its footer piece is not cached exactly once"
        );
    }

    // Warm: each image opens from its cached footer (no footer GET), and
    // the footer it gets is its own (right id and size, checked above).
    server.reset_stats();
    for (url, id, image) in &images {
        let counters = open_and_check(url, *id, image);
        assert_eq!(counters.remote_bytes_fetched, 0, "{url}");
    }
    assert_eq!(
        server.request_count(),
        THREADS as u64,
        "{:?}",
        server.requests()
    );
}
