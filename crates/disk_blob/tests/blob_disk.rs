//! `BlobDisk` over real files and a real HTTP server: flat and fixed VHD1
//! layouts, range checks against the disk (not the blob), footer
//! validation.

use blob_test_servers::Fault;
use blob_test_servers::FaultServer;
use blob_test_servers::Times;
use blob_test_servers::images::fixed_vhd1_bytes;
use blob_test_servers::images::random_bytes;
use disk_backend::Disk;
use disk_backend::DiskError;
use disk_blob::Blob;
use disk_blob::BlobDisk;
use disk_blob::BlobDiskError;
use disk_blob::BlobDiskFormat;
use disk_blob::BlobError;
use disk_blob::FileBlob;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use std::sync::Arc;
use vhd1_defs::FOOTER_SIZE;
use vhd1_defs::FooterError;
use vhd1_defs::offsets;

const UID: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];

async fn http_blob(server: &FaultServer, path: &str) -> Arc<dyn Blob> {
    Arc::new(
        HttpBlob::open(&server.url(path), HttpBlobOptions::default())
            .await
            .unwrap(),
    )
}

async fn file_blob(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> Arc<dyn Blob> {
    let p = dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    Arc::new(FileBlob::open(&p).await.unwrap())
}

async fn read_sectors(disk: &Disk, sector: u64, count: usize) -> Result<Vec<u8>, DiskError> {
    let mut buf = vec![0u8; count * 512];
    disk.read(sector, &mut buf).await?;
    Ok(buf)
}

#[tokio::test]
async fn flat_disk_over_http() {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(1, 256 * 512);
    server.put_blob("/flat.img", data.clone());
    let blob = http_blob(&server, "/flat.img").await;
    let bd = BlobDisk::new_flat(blob.clone()).unwrap();
    assert_eq!(bd.format(), BlobDiskFormat::Flat);
    let disk = Disk::new(bd).unwrap();
    assert_eq!(disk.sector_count(), 256);
    assert_eq!(disk.disk_id(), None);
    assert!(disk.is_read_only());
    assert_eq!(disk.disk_type(), "blob_flat");

    assert!(read_sectors(&disk, 0, 256).await.unwrap() == data);
    assert!(read_sectors(&disk, 255, 1).await.unwrap() == data[255 * 512..]);
    assert!(read_sectors(&disk, 17, 3).await.unwrap() == data[17 * 512..20 * 512]);
    assert!(matches!(
        read_sectors(&disk, 255, 2).await,
        Err(DiskError::OutOfRange {
            start: 255,
            end: 257,
            sector_count: 256
        })
    ));
    assert!(matches!(
        disk.write(0, &[0; 512], false).await,
        Err(DiskError::ReadOnly)
    ));
    assert!(matches!(disk.unmap(0, 1).await, Err(DiskError::ReadOnly)));

    let c = disk.counters();
    assert_eq!(c, blob.counters().into());
    assert_eq!(c.remote_requests, server.request_count());
    assert_eq!(c.remote_bytes_fetched, (256 + 1 + 3) * 512);

    // A blob error reaches the disk's caller as an I/O error carrying the
    // typed blob error as its source.
    server.set_fault(Fault::IgnoreRange, Times::Next(1));
    let err = read_sectors(&disk, 0, 1).await.unwrap_err();
    let DiskError::Io { source, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(matches!(
        source.downcast_ref::<BlobError>(),
        Some(BlobError::Unexpected200 { .. })
    ));
}

#[tokio::test]
async fn flat_disk_over_file_and_bad_length() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2, 64 * 512);
    let disk =
        Disk::new(BlobDisk::new_flat(file_blob(&dir, "a.img", &data).await).unwrap()).unwrap();
    assert!(read_sectors(&disk, 10, 20).await.unwrap() == data[10 * 512..30 * 512]);
    assert_eq!(disk.counters(), Default::default());

    let err = BlobDisk::new_flat(file_blob(&dir, "odd.img", &data[..1000]).await).unwrap_err();
    assert!(
        matches!(err, BlobDiskError::NotSectorMultiple { len: 1000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("odd.img"), "{err}");
}

/// Owned reads of a file (the NBD export's path) fill the handed-over
/// buffer itself, give the same bytes as borrowed reads, and hand the
/// buffer back on errors too; a file that shrank after open is an error.
#[tokio::test]
async fn owned_reads_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3, 64 * 512);
    let blob = file_blob(&dir, "o.img", &data).await;
    let disk = Disk::new(BlobDisk::new_flat(blob).unwrap()).unwrap();
    let (buf, r) = disk.read_owned(3, vec![0xee; 20 * 512]).await;
    r.unwrap();
    assert!(buf == data[3 * 512..23 * 512]);
    assert!(buf == read_sectors(&disk, 3, 20).await.unwrap());
    let (buf, r) = disk.read_owned(60, vec![7; 8 * 512]).await;
    assert!(matches!(r, Err(DiskError::OutOfRange { .. })), "{r:?}");
    assert_eq!(buf, vec![7; 8 * 512], "the buffer comes back");

    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("o.img"))
        .unwrap()
        .set_len(10 * 512)
        .unwrap();
    let (_, r) = disk.read_owned(8, vec![0; 4 * 512]).await;
    let err = r.unwrap_err();
    assert!(format!("{:?}", err).contains("UnexpectedEof"), "{err:?}");
}

#[tokio::test]
async fn fixed_vhd1_over_http_and_file() {
    let data = random_bytes(3, 2048 * 512);
    let vhd = fixed_vhd1_bytes(data.clone(), UID).unwrap();
    let server = FaultServer::start().unwrap();
    server.put_blob("/disk.vhd", vhd.clone());
    let dir = tempfile::tempdir().unwrap();
    for blob in [
        http_blob(&server, "/disk.vhd").await,
        file_blob(&dir, "disk.vhd", &vhd).await,
    ] {
        let bd = BlobDisk::new_fixed_vhd1(blob).await.unwrap();
        assert_eq!(bd.format(), BlobDiskFormat::FixedVhd1);
        let disk = Disk::new(bd).unwrap();
        assert_eq!(disk.sector_count(), 2048);
        assert_eq!(disk.disk_id(), Some(UID));
        assert_eq!(disk.disk_type(), "blob_vhd1");
        assert!(read_sectors(&disk, 0, 2048).await.unwrap() == data);
        assert!(read_sectors(&disk, 2047, 1).await.unwrap() == data[2047 * 512..]);
        // The footer is not part of the disk.
        assert!(matches!(
            read_sectors(&disk, 2047, 2).await,
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(matches!(
            read_sectors(&disk, 2048, 1).await,
            Err(DiskError::OutOfRange { .. })
        ));
    }
}

/// Builds a VHD of 8 sectors, lets `corrupt` change its footer, serves it
/// and opens it as a fixed VHD1.
async fn open_corrupted(
    server: &FaultServer,
    name: &str,
    fix_checksum: bool,
    corrupt: impl FnOnce(&mut [u8; FOOTER_SIZE]),
) -> BlobDiskError {
    let mut vhd = fixed_vhd1_bytes(random_bytes(4, 8 * 512), UID).unwrap();
    let at = vhd.len() - FOOTER_SIZE;
    let footer: &mut [u8; FOOTER_SIZE] = (&mut vhd[at..]).try_into().unwrap();
    corrupt(footer);
    if fix_checksum {
        vhd1_defs::fix_checksum(footer);
    }
    let path = format!("/{name}.vhd?sig=SECRET");
    server.put_blob(&format!("/{name}.vhd"), vhd);
    let blob: Arc<dyn Blob> = Arc::new(
        HttpBlob::open(&server.url(&path), HttpBlobOptions::default())
            .await
            .unwrap(),
    );
    let err = BlobDisk::new_fixed_vhd1(blob).await.unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("SECRET"), "{text}");
    assert!(text.contains(&format!("{name}.vhd")), "{text}");
    err
}

fn footer_error(e: BlobDiskError) -> FooterError {
    match e {
        BlobDiskError::Footer { error, .. } => error,
        other => panic!("expected a footer error, got {other:?}"),
    }
}

fn put_be_u64(f: &mut [u8; FOOTER_SIZE], off: usize, v: u64) {
    f[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

#[tokio::test]
async fn bad_footers_give_distinct_errors() {
    let server = FaultServer::start().unwrap();

    let e = open_corrupted(&server, "cookie", true, |f| f[0] = b'X').await;
    assert!(e.to_string().contains("cookie"), "{e}");
    assert!(matches!(footer_error(e), FooterError::BadCookie { .. }));

    let e = open_corrupted(&server, "checksum", false, |f| f[offsets::TIMESTAMP] ^= 1).await;
    assert!(e.to_string().contains("checksum"), "{e}");
    assert!(matches!(footer_error(e), FooterError::BadChecksum { .. }));

    let e = open_corrupted(&server, "version", true, |f| {
        f[offsets::FORMAT_VERSION..offsets::FORMAT_VERSION + 4]
            .copy_from_slice(&0x0002_0000u32.to_be_bytes())
    })
    .await;
    assert!(matches!(
        footer_error(e),
        FooterError::UnsupportedVersion(0x0002_0000)
    ));

    let e = open_corrupted(&server, "dynamic", true, |f| {
        f[offsets::DISK_TYPE..offsets::DISK_TYPE + 4].copy_from_slice(&3u32.to_be_bytes())
    })
    .await;
    assert!(e.to_string().contains("type"), "{e}");
    assert!(matches!(footer_error(e), FooterError::NotFixed(3)));

    let e = open_corrupted(&server, "odd_size", true, |f| {
        put_be_u64(f, offsets::CURRENT_SIZE, 1000)
    })
    .await;
    assert!(e.to_string().contains("multiple of 512"), "{e}");
    assert!(matches!(
        footer_error(e),
        FooterError::SizeNotSectorMultiple(1000)
    ));

    let e = open_corrupted(&server, "too_big", true, |f| {
        put_be_u64(f, offsets::CURRENT_SIZE, 9 * 512)
    })
    .await;
    assert!(e.to_string().contains("does not fit"), "{e}");
    assert!(matches!(
        footer_error(e),
        FooterError::SizeTooLarge {
            current_size: 4608,
            blob_len: 4608
        }
    ));
}

#[tokio::test]
async fn tiny_or_unreadable_vhd() {
    let dir = tempfile::tempdir().unwrap();
    let e = BlobDisk::new_fixed_vhd1(file_blob(&dir, "tiny.vhd", &[0; 100]).await)
        .await
        .unwrap_err();
    assert!(matches!(footer_error(e), FooterError::BlobTooShort(100)));

    let server = FaultServer::start().unwrap();
    server.put_blob(
        "/d.vhd",
        fixed_vhd1_bytes(random_bytes(5, 4096), UID).unwrap(),
    );
    let blob = http_blob(&server, "/d.vhd").await;
    server.set_fault(Fault::IgnoreRange, Times::Always);
    let e = BlobDisk::new_fixed_vhd1(blob).await.unwrap_err();
    assert!(
        matches!(
            e,
            BlobDiskError::ReadFooter {
                source: BlobError::Unexpected200 { .. },
                ..
            }
        ),
        "{e:?}"
    );
}

/// An expired or revoked SAS while a disk is being served: the error a
/// read returns (and its sources, which the NBD server logs) says the
/// URL's credentials were refused and what to do, never the token.
#[tokio::test]
async fn revoked_sas_under_a_disk_read_says_what_to_do() {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(3, 64 * 512);
    server.put_blob("/flat.img", data.clone());
    server.set_required_query_token(Some("sig=GOODSECRET"));
    let url = server.url("/flat.img?sv=1&sig=GOODSECRET");
    let blob: Arc<dyn Blob> = Arc::new(
        HttpBlob::open(&url, HttpBlobOptions::default())
            .await
            .unwrap(),
    );
    let disk = Disk::new(BlobDisk::new_flat(blob).unwrap()).unwrap();
    assert!(read_sectors(&disk, 0, 1).await.unwrap() == data[..512]);

    // The store now wants another token: the one in the URL is revoked.
    server.set_required_query_token(Some("sig=NEWSECRET"));
    server.reset_stats();
    let err = read_sectors(&disk, 8, 1).await.unwrap_err();
    let DiskError::Io { source, .. } = &err else {
        panic!("{err:?}")
    };
    let blob_err = source.downcast_ref::<BlobError>().unwrap();
    assert!(blob_err.is_access_refused(), "{blob_err:?}");
    assert!(matches!(
        blob_err,
        BlobError::AccessRefused {
            status: 403,
            method: "GET",
            ..
        }
    ));
    // Not retried: it would not heal.
    assert_eq!(server.request_count(), 1);
    let mut chain = err.to_string();
    let mut cur = std::error::Error::source(&err);
    while let Some(e) = cur {
        chain.push_str(&format!(": {e}"));
        cur = e.source();
    }
    for needle in [
        "HTTP 403",
        "refused the URL's credentials",
        "SAS token",
        "expired",
        "get a fresh one",
        "/flat.img?<redacted>",
    ] {
        assert!(chain.contains(needle), "{needle:?} not in {chain}");
    }
    assert!(!chain.contains("SECRET"), "{chain}");
}
