//! Opening backend drives for real, through the public API: the OpenVMM
//! backend opens a remote fixed VHD1 and a flat image served by the fault
//! server (a real HTTP server on 127.0.0.1) through the layer stack, and a
//! second open on the same cache fetches nothing. The QEMU backend
//! describes the very same stack.

use disk_backend_resources::LayerKind;
use petri::Disk;
use petri::DiskPath;
use petri::Drive;
use petri::PetriVmmBackend;
use petri::openvmm::OpenVmmPetriBackend;
use petri::qemu::QemuPetriBackend;
use std::path::Path;

const DISK_BYTES: usize = 4 << 20;
const MARKER: &[u8] = b"WRITTEN_BY_THE_TEST_NOT_IN_THE_IMAGE";

/// Deterministic, non-repeating disk contents.
fn disk_data() -> Vec<u8> {
    blob_test_servers::images::random_bytes(1, DISK_BYTES)
}

fn vhd(data: &[u8]) -> Vec<u8> {
    let footer = vhd1_defs::Footer::new_fixed(data.len() as u64, *b"petri-open-test1").unwrap();
    let mut out = data.to_vec();
    out.extend_from_slice(&footer.to_bytes());
    out
}

fn remote_drive(url: &str) -> Drive {
    Drive::disk(Disk::Differencing(DiskPath::Remote { url: url.into() }))
}

/// Every byte of every file under `dir`.
fn files_contain(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        if path.is_dir() {
            files_contain(&path, needle)
        } else {
            std::fs::read(&path)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        }
    })
}

async fn read_all(disk: &disk_backend::Disk) -> Vec<u8> {
    let mut buf = vec![0; disk.size_bytes() as usize];
    disk.read(0, &mut buf).await.unwrap();
    buf
}

async fn cold_then_warm(file: &str, image: Vec<u8>) {
    let data = disk_data();
    let server = blob_test_servers::FaultServer::start().unwrap();
    let path = format!("/images/{file}");
    server.put_blob(&path, image);
    let url = format!("{}?sig=SECRET", server.url(&path));
    let cache = tempfile::tempdir().unwrap();

    // Cold: the backend translates and opens its drive; everything read
    // comes from the server.
    let backend = OpenVmmPetriBackend::with_cache_dir(cache.path().into());
    let drive = backend.translate_drive(&remote_drive(&url)).unwrap();
    let opened = backend.open_drive(&drive).await.unwrap().unwrap();
    assert_eq!(opened.disk().size_bytes(), DISK_BYTES as u64);
    assert!(
        !opened.location().contains("SECRET"),
        "{}",
        opened.location()
    );
    assert!(
        opened.location().ends_with("?<redacted>"),
        "{}",
        opened.location()
    );
    assert!(read_all(opened.disk()).await == data, "cold read differs");
    let cold = opened.counters();
    assert!(
        cold.remote_bytes_fetched >= DISK_BYTES as u64,
        "cold open fetched {cold:?}"
    );
    assert!(cold.remote_requests >= 2, "{cold:?}");

    // A guest write lands in the RAM layer only.
    let mut sector = vec![0u8; 512];
    sector[..MARKER.len()].copy_from_slice(MARKER);
    opened.disk().write(8, &sector, true).await.unwrap();
    opened.disk().sync_cache().await.unwrap();
    let mut back = vec![0u8; 512];
    opened.disk().read(8, &mut back).await.unwrap();
    assert_eq!(back, sector);
    drop(opened);
    assert!(
        !files_contain(cache.path(), MARKER),
        "a write reached the cache"
    );

    // Warm: a second open on the same cache reads everything from the
    // cache: one validating HEAD, no bytes.
    server.reset_stats();
    let backend = OpenVmmPetriBackend::with_cache_dir(cache.path().into());
    let drive = backend.translate_drive(&remote_drive(&url)).unwrap();
    let opened = backend.open_drive(&drive).await.unwrap().unwrap();
    assert!(read_all(opened.disk()).await == data, "warm read differs");
    let warm = opened.counters();
    assert_eq!(warm.remote_bytes_fetched, 0, "{warm:?}");
    assert_eq!(warm.remote_requests, 1, "{warm:?}");
    assert_eq!(warm.cache_hit_bytes, DISK_BYTES as u64, "{warm:?}");
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "HEAD", "{requests:?}");
}

#[tokio::test]
async fn remote_vhd_opens_through_the_backend_and_warm_opens_fetch_nothing() {
    cold_then_warm("guest.vhd", vhd(&disk_data())).await;
}

#[tokio::test]
async fn remote_flat_image_opens_through_the_backend_and_warm_opens_fetch_nothing() {
    cold_then_warm("guest.raw", disk_data()).await;
}

#[tokio::test]
async fn local_drive_is_ram_over_the_file_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guest.vhd");
    let data = disk_data();
    std::fs::write(&path, vhd(&data)).unwrap();
    let drive = Drive::disk(Disk::Differencing(DiskPath::Local(path.clone())));
    let opened = petri::disk_stack::open_drive(&drive, None, &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert!(read_all(opened.disk()).await == data);
    opened.disk().write(0, &[0xaa; 4096], false).await.unwrap();
    let counters = opened.counters();
    assert_eq!(counters.remote_requests, 0);
    assert_eq!(counters.remote_bytes_fetched, 0);
    assert!(std::fs::read(&path).unwrap()[..DISK_BYTES] == data[..]);
}

#[tokio::test]
async fn broken_remote_image_names_the_url_redacted() {
    let server = blob_test_servers::FaultServer::start().unwrap();
    server.put_blob("/images/bad.vhd", vec![0u8; 8192]);
    let url = server.url("/images/bad.vhd");
    let cache = tempfile::tempdir().unwrap();
    let backend = OpenVmmPetriBackend::with_cache_dir(cache.path().into());
    let drive = backend
        .translate_drive(&remote_drive(&format!("{url}?sig=SECRET")))
        .unwrap();
    let err = backend.open_drive(&drive).await.unwrap_err();
    let text = format!("{:#}", anyhow::Error::new(err));
    assert!(text.contains("bad.vhd?<redacted>"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

#[test]
fn qemu_and_openvmm_describe_the_same_stack() {
    let cache = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9/images/petri-test-guest-x64.vhd";
    let openvmm = OpenVmmPetriBackend::with_cache_dir(cache.path().into())
        .translate_drive(&remote_drive(url))
        .unwrap();
    let mut qemu = QemuPetriBackend::new_with(None, Default::default());
    qemu.set_cache_dir(cache.path().into());
    let qemu = qemu.translate_drive(&remote_drive(url)).unwrap();
    assert_eq!(qemu.disk, openvmm.disk);
    let layers = qemu.disk.unwrap().layers;
    assert!(matches!(layers[0].layer, LayerKind::Ram { len: None }));
    assert!(matches!(layers[1].layer, LayerKind::AutoCacheSqlite { .. }));
    assert!(matches!(layers[2].layer, LayerKind::Blob { .. }));
}
