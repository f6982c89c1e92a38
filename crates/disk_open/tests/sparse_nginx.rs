//! Sparse images (made by `qemu-img` from one raw image with data, holes
//! and zero regions) opened lazily from a real nginx through the full
//! stack [RAM, SQLite auto-cache, HTTP blob] with the format detected from
//! the content, exported over NBD, and compared with the raw image by
//! `qemu-img compare`, cold and warm; nginx's access log counts the
//! requests and bytes, and they must be the disk's own counts.

use blob_test_servers::NginxServer;
use blob_test_servers::remote_stack;
use blob_test_servers::require_tool;
use blob_test_servers::sparse_images::SPARSE_VARIANTS;
use blob_test_servers::sparse_images::convert_with_qemu_img;
use blob_test_servers::sparse_images::write_sparse_raw;
use disk_backend::Disk;
use disk_backend_resources::BlobFormat;
use disk_open::OpenOptions;
use disk_open::open;
use std::path::Path;

const MIB: usize = 1 << 20;
const RAW_SIZE: usize = 48 * MIB;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `qemu-img compare` of the raw image against `disk` exported over NBD.
async fn compare_over_nbd(disk: Disk, raw: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let listener = disk_nbd::serve_unix(&socket, disk, disk_nbd::NbdServerOptions::default())
        .await
        .unwrap();
    let uri = listener.nbd_uri();
    let out = tokio::process::Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(raw)
        .arg(&uri)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Images are identical"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    listener.shutdown().await.unwrap();
}

/// Runs `f` on a runtime of its own and shuts that runtime down before
/// returning, so every task that held a clone of the disk is gone and the
/// read cache's engine has committed its fills, as when a process exits.
fn in_own_runtime<T>(f: impl Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(f);
    drop(rt);
    out
}

#[test]
fn sparse_images_through_the_full_stack_cold_and_warm() {
    if require_tool("nginx").is_none() || require_tool("qemu-img").is_none() {
        return;
    }
    let served = tempfile::tempdir().unwrap();
    let raw_path = served.path().join("disk.raw");
    let raw = write_sparse_raw(&raw_path, RAW_SIZE).unwrap();
    let data_bytes = raw
        .chunks(4096)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count()
        * 4096;
    let nginx = NginxServer::serve_dir(served.path()).unwrap();
    eprintln!(
        "{:<22} {:>10} {:>10} {:>5} {:>7} {:>7} {:>5} {:>5}",
        "image", "file", "fetched", "reqs", "/file", "/data", "warmR", "warmB"
    );
    for v in SPARSE_VARIANTS {
        let path = convert_with_qemu_img(&raw_path, served.path(), v).unwrap();
        let file_len = std::fs::metadata(&path).unwrap().len();
        let url = nginx.url(&format!("/{}", v.name));
        let cache = tempfile::tempdir().unwrap();
        let handle = remote_stack(cache.path(), &url, BlobFormat::Auto, true);

        // Reads through holes (MiB 24..40 hold no data: not allocated even
        // with VHDX's default 8 MiB blocks) make no request once the
        // metadata that says so is loaded. Checked on an open of its own,
        // with a fresh cache, no HTTP readahead and no prefetch, so no
        // request of an earlier read or of the open can still be in
        // flight.
        in_own_runtime(async {
            let cache = tempfile::tempdir().unwrap();
            let handle = remote_stack(cache.path(), &url, BlobFormat::Auto, true);
            let mut options = OpenOptions {
                prefetch: None,
                ..OpenOptions::default()
            };
            options.http.readahead = 0;
            let disk = open(&handle, &options).await.unwrap();
            let mut buf = vec![0u8; MIB];
            disk.read(0, &mut buf).await.unwrap();
            let (disk_before, server_before) = (
                disk.counters().remote_requests,
                nginx.request_count().unwrap(),
            );
            for mib in 24..40u64 {
                disk.read(mib * 2048, &mut buf).await.unwrap();
                assert!(buf.iter().all(|&b| b == 0), "{}: hole at {mib} MiB", v.name);
            }
            assert_eq!(
                (
                    disk.counters().remote_requests,
                    nginx.request_count().unwrap()
                ),
                (disk_before, server_before),
                "{}: reading holes sent requests",
                v.name
            );
        });

        // Cold: a full pass over the image.
        let log_before = nginx.access_log().unwrap().len();
        let cold = in_own_runtime(async {
            let disk = open(&handle, &OpenOptions::default()).await.unwrap();
            assert_eq!(disk.size_bytes(), RAW_SIZE as u64, "{}", v.name);
            compare_over_nbd(disk.clone(), &raw_path).await;
            disk.counters()
        });
        let cold_log = nginx.access_log().unwrap().split_off(log_before);
        let cold_requests = cold_log.len() as u64;
        // Bytes of the image nginx sent (not counting the body of the 404
        // for the prefetch list the open looks for beside the image).
        let cold_served: u64 = cold_log
            .iter()
            .filter(|e| e.uri == format!("/{}", v.name))
            .map(|e| e.body_bytes)
            .sum();
        assert_eq!(cold_requests, cold.remote_requests, "{}: {cold:?}", v.name);
        assert_eq!(
            cold_served, cold.remote_bytes_fetched,
            "{}: {cold:?}",
            v.name
        );
        // The file holds only allocated blocks and metadata: its length is
        // the image's allocated bytes.
        let ratio = cold_served as f64 / file_len as f64;
        assert!(
            ratio <= 1.1,
            "{}: a full cold pass fetched {cold_served} bytes, {ratio:.3}x the {file_len}-byte image",
            v.name,
        );

        // The read cache is keyed by the image's own content id where it
        // has one (VHD unique id, VHDX data write GUID), else by URL path
        // and validator.
        let mut dirs: Vec<String> = std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        dirs.retain(|d| d != "image-metadata");
        assert_eq!(dirs.len(), 1, "{}: {dirs:?}", v.name);
        let image = std::fs::read(&path).unwrap();
        let want = if v.name.ends_with(".qcow2") {
            None
        } else if v.name.ends_with(".vhdx") {
            let area = &image[..vhdx_defs::HEADER_AREA_END as usize];
            let headers = vhdx_defs::FileHeaders::parse(area, file_len).unwrap();
            Some(hex(&headers.header.data_write_guid.0))
        } else {
            let footer = vhd1_defs::Footer::parse(image[..512].try_into().unwrap()).unwrap();
            Some(footer.unique_id_hex())
        };
        match &want {
            Some(id) => assert_eq!(&dirs[0], id, "{}: keyed by its content id", v.name),
            None => assert!(
                dirs[0].starts_with(&format!("qcow2-{}-", v.name)),
                "{dirs:?}"
            ),
        }
        // The entry says where the image is and which version it holds
        // (what `petri-tool cache list` shows).
        let info = disklayer_sqlite::cache_entries::read_info(&cache.path().join(&dirs[0]))
            .expect("entry.json");
        assert_eq!(info.location.as_deref(), Some(url.as_str()), "{}", v.name);
        assert_eq!(info.disk_size, Some(RAW_SIZE as u64), "{}", v.name);
        let identity = info.identity.unwrap_or_default();
        match (&want, v.name.ends_with(".vhdx")) {
            (Some(id), true) => assert_eq!(identity, format!("vhdx-data-write-guid {id}")),
            (Some(id), false) => assert_eq!(identity, format!("vhd-id {id}")),
            (None, _) => assert!(identity.starts_with("etag:"), "{}: {identity}", v.name),
        }

        // Warm: one HEAD, no bytes, still identical.
        let log_before = nginx.access_log().unwrap().len();
        let warm = in_own_runtime(async {
            let disk = open(&handle, &OpenOptions::default()).await.unwrap();
            compare_over_nbd(disk.clone(), &raw_path).await;
            disk.counters()
        });
        let warm_log = nginx.access_log().unwrap().split_off(log_before);
        assert_eq!(warm.remote_bytes_fetched, 0, "{}: {warm:?}", v.name);
        assert!(
            warm_log.len() == 1 && warm_log[0].method == "HEAD" && warm_log[0].body_bytes == 0,
            "{}: a warm open sent {warm_log:?}",
            v.name
        );
        let warm_requests = warm_log.len();
        eprintln!(
            "{:<22} {:>10} {:>10} {:>5} {:>7.3} {:>7.3} {:>5} {:>5}",
            v.name,
            file_len,
            cold.remote_bytes_fetched,
            cold_requests,
            ratio,
            cold.remote_bytes_fetched as f64 / data_bytes as f64,
            warm_requests,
            warm.remote_bytes_fetched
        );
    }
}
