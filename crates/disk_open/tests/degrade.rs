//! A stack whose read cache cannot be used opens without it: `[RAM,
//! blob]`, every byte right, one warning naming the cache directory and
//! the reason; unless the description requires the cache. The cache
//! entry records where the image is without the URL's query.
//!
//! Real file systems: a full tmpfs, then the same tmpfs read-only (root
//! only; outside CI the test prints why it skips).

use blob_test_servers::FaultServer;
use blob_test_servers::Tmpfs;
use blob_test_servers::captured_logs;
use blob_test_servers::error_chain;
use blob_test_servers::images::random_bytes;
use blob_test_servers::images::sha256_hex;
use blob_test_servers::remote_stack;
use disk_backend::Disk;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayeredDiskHandle;
use disk_open::OpenError;
use disk_open::OpenOptions;
use disk_open::open;
use disklayer_sqlite::cache_entries::list_entries;
use std::path::Path;

const MIB: usize = 1 << 20;

fn remote(cache_dir: &Path, url: &str, required: bool) -> LayeredDiskHandle {
    remote_stack(cache_dir, url, BlobFormat::Flat, required)
}

async fn read_all(disk: &Disk) -> Vec<u8> {
    let mut out = vec![0u8; disk.size_bytes() as usize];
    for (i, piece) in out.chunks_mut(256 << 10).enumerate() {
        disk.read((i * 512) as u64, piece).await.unwrap();
    }
    out
}

/// A cache directory on a full file system, then on a read-only one:
/// the disk opens uncached each time (nothing is hit or filled, no cache
/// file is left), with one warning per open that names the directory and
/// why; a required cache is an error saying the same.
#[tokio::test]
async fn no_usable_cache_opens_uncached_with_one_warning() {
    let logs = captured_logs();
    let Some(fs) = Tmpfs::mount("1m") else {
        return;
    };
    fs.fill();
    let server = FaultServer::start().unwrap();
    let data = random_bytes(7, 4 * MIB);
    server.put_blob("/images/disk.raw", data.clone());
    let url = server.url("/images/disk.raw");
    let cache_dir = fs.path().join("cache");
    let needle = cache_dir.display().to_string();

    for (round, reason) in [(0, "disk is full"), (1, "Read-only file system")] {
        if round == 1 {
            fs.remount_read_only();
        }
        let disk = open(&remote(&cache_dir, &url, false), &OpenOptions::default())
            .await
            .unwrap();
        for _ in 0..2 {
            assert_eq!(sha256_hex(&read_all(&disk).await), sha256_hex(&data));
        }
        let c = disk.counters();
        // (The blob's own readahead serves part of the second pass.)
        assert!(c.remote_bytes_fetched >= data.len() as u64, "{c:?}");
        assert_eq!(
            (c.cache_hit_bytes, c.cache_miss_bytes, c.cache_fill_bytes),
            (0, 0, 0),
            "no cache layer: {c:?}"
        );
        drop(disk);
        assert!(
            list_entries(&cache_dir)
                .unwrap()
                .iter()
                .all(|e| e.cache_file_bytes.is_none()),
            "no cache file"
        );
        let warnings = logs.warnings_with(&needle);
        assert_eq!(warnings.len(), round + 1, "{warnings:#?}");
        let last = &warnings[round];
        assert!(
            last.contains("no usable read cache") && last.contains(reason),
            "{last}"
        );

        let err = open(&remote(&cache_dir, &url, true), &OpenOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, OpenError::Cache { .. }), "{err:?}");
        let text = error_chain(&err);
        assert!(
            text.contains(&needle) && text.contains("required") && text.contains(reason),
            "{text}"
        );
    }
}

/// The cache entry of a remote image records its URL without the query
/// (it may be a SAS token) and the server's validator.
#[tokio::test]
async fn the_entry_records_the_image_without_its_query() {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(8, MIB);
    server.put_blob("/images/flat.img", data.clone());
    let url = server.url("/images/flat.img?sv=2024&sig=SECRET");
    let cache = tempfile::tempdir().unwrap();
    let disk = open(&remote(cache.path(), &url, true), &OpenOptions::default())
        .await
        .unwrap();
    assert!(read_all(&disk).await == data);
    let entries = list_entries(cache.path()).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].in_use, "the open disk holds its entry");
    drop(disk);
    let entries = list_entries(cache.path()).unwrap();
    assert!(!entries[0].in_use);
    let info = entries[0].info.clone().unwrap();
    assert_eq!(
        info.location.as_deref(),
        Some(server.url("/images/flat.img").as_str())
    );
    let etag = server.etag("/images/flat.img").unwrap();
    assert_eq!(info.identity, Some(format!("etag:{etag}")));
    assert_eq!(info.disk_size, Some(MIB as u64));
    for e in walk(cache.path()) {
        let text = String::from_utf8_lossy(&std::fs::read(&e).unwrap_or_default()).into_owned();
        assert!(!text.contains("SECRET"), "{}", e.display());
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
