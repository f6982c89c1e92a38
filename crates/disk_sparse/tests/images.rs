//! Images made by `qemu-img` from a raw image with data, holes and zero
//! regions, and images built by the defs crates, read through
//! `disk_sparse` from local files and compared byte for byte with the raw
//! image; damaged images give errors that name the image and the
//! structure.

use blob_test_servers::images::test_rng;
use blob_test_servers::require_tool;
use blob_test_servers::sparse_images::SPARSE_VARIANTS;
use blob_test_servers::sparse_images::SparseVariant;
use blob_test_servers::sparse_images::convert_with_qemu_img;
use blob_test_servers::sparse_images::write_sparse_raw;
use disk_backend::DiskIo;
use disk_blob::Blob;
use disk_blob::BlobReadFuture;
use disk_blob::FileBlob;
use disk_sparse::ExtensionHint;
use disk_sparse::ImageFormat;
use disk_sparse::MetaReader;
use disk_sparse::SparseDisk;
use disk_sparse::detect;
use disk_sparse::open_sparse;
use rand::RngCore as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const MIB: usize = 1 << 20;

/// Plain qcow2 (version 3, 64 KiB clusters).
const QCOW2: SparseVariant = SparseVariant {
    name: "plain.qcow2",
    args: &["-O", "qcow2"],
};

/// Writes the raw test image of `size` bytes into `dir` and converts it
/// with `variant`, named `name`: the raw bytes and the image's path.
fn raw_and_converted(
    dir: &Path,
    size: usize,
    variant: SparseVariant,
    name: &'static str,
) -> (Vec<u8>, PathBuf) {
    let raw_path = dir.join("disk.raw");
    let raw = write_sparse_raw(&raw_path, size).unwrap();
    let path = convert_with_qemu_img(&raw_path, dir, &SparseVariant { name, ..variant }).unwrap();
    (raw, path)
}

async fn open_file(path: &Path) -> Result<SparseDisk, disk_sparse::SparseError> {
    let blob: Arc<dyn Blob> = Arc::new(FileBlob::open(path).await.unwrap());
    let meta = Arc::new(MetaReader::new(blob, None));
    let hint = ExtensionHint::from_location(&path.display().to_string());
    let format = detect(&meta, hint).await?;
    open_sparse(meta, format).await
}

async fn read_all(disk: &SparseDisk, chunk: usize) -> Vec<u8> {
    let size = (disk.sector_count() * 512) as usize;
    let mut out = vec![0u8; size];
    for (i, piece) in out.chunks_mut(chunk).enumerate() {
        DiskIo::read(disk, (i * chunk / 512) as u64, piece)
            .await
            .unwrap();
    }
    out
}

#[tokio::test]
async fn qemu_img_images_read_back_identical() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.raw");
    // Zero clusters (version 3 zero flag) over allocated data.
    let (raw, zeroed) = raw_and_converted(dir.path(), 32 * MIB, QCOW2, "zeroed.qcow2");
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -z 0 1M"])
        .arg(&zeroed)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut zeroed_raw = raw.clone();
    zeroed_raw[..MIB].fill(0);
    let mut cases = vec![(zeroed, zeroed_raw, ImageFormat::Qcow2)];
    for v in SPARSE_VARIANTS {
        let path = convert_with_qemu_img(&raw_path, dir.path(), v).unwrap();
        let format = if v.name.ends_with(".vhdx") {
            ImageFormat::Vhdx
        } else if v.name.ends_with(".vhd") {
            ImageFormat::DynamicVhd1
        } else {
            ImageFormat::Qcow2
        };
        cases.push((path, raw.clone(), format));
    }
    for (path, want, format) in cases {
        let disk = open_file(&path).await.unwrap();
        assert_eq!(disk.format(), format, "{}", path.display());
        assert_eq!(disk.sector_count() * 512, want.len() as u64);
        for chunk in [MIB, 64 << 10, 4096 * 3] {
            let got = read_all(&disk, chunk).await;
            assert!(
                got == want,
                "{} read in {chunk}-byte pieces differs",
                path.display()
            );
        }
        // Random unaligned-to-block reads.
        let mut rng = test_rng(7);
        for _ in 0..100 {
            let len = (1 + (rng.next_u64() % 512) as usize) * 512;
            let start = (rng.next_u64() % ((want.len() - len) as u64 / 512)) as usize * 512;
            let mut got = vec![0u8; len];
            DiskIo::read(&disk, (start / 512) as u64, &mut got)
                .await
                .unwrap();
            assert!(
                got == want[start..start + len],
                "{} at {start}+{len}",
                path.display()
            );
        }
    }
}

#[tokio::test]
async fn built_images_read_back_identical() {
    let mut data = vec![0u8; 9 * MIB + 4096];
    test_rng(3).fill_bytes(&mut data[..MIB]);
    test_rng(4).fill_bytes(&mut data[5 * MIB..6 * MIB + 512]);
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes, id) in [
        (
            "b.vhd",
            vhd1_defs::dynamic::build_dynamic(&data, 2 << 20, [5; 16]),
            [5u8; 16],
        ),
        (
            "b.vhdx",
            vhdx_defs::build_vhdx(&data, 1 << 20, 512, vhdx_defs::Guid([6; 16])),
            [6u8; 16],
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let disk = open_file(&path).await.unwrap();
        assert_eq!(DiskIo::disk_id(&disk), Some(id), "{name}");
        assert!(read_all(&disk, MIB).await == data, "{name}");
    }
}

#[tokio::test]
async fn names_that_contradict_the_content_are_refused() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw_path = dir.path().join("disk.raw");
    let (_, q) = raw_and_converted(dir.path(), 24 * MIB, QCOW2, "disk.vhd");
    let e = blob_test_servers::error_chain(&open_file(&q).await.unwrap_err());
    assert!(
        e.contains("disk.vhd") && e.contains("VHD (.vhd)") && e.contains("qcow2"),
        "{e}"
    );
    let x = dir.path().join("disk.vhdx");
    std::fs::copy(&raw_path, &x).unwrap();
    let e = blob_test_servers::error_chain(&open_file(&x).await.unwrap_err());
    assert!(e.contains("VHDX (.vhdx)") && e.contains("raw data"), "{e}");
    // No hint: the content decides (a qcow2 named .img, as clouds ship them).
    let img = dir.path().join("cloud.img");
    std::fs::copy(&q, &img).unwrap();
    assert_eq!(open_file(&img).await.unwrap().format(), ImageFormat::Qcow2);
}

/// An in-memory blob, for images damaged in the test.
struct MemBlob(Vec<u8>);

impl Blob for MemBlob {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> BlobReadFuture<'a> {
        let r = match self.0.get(offset as usize..offset as usize + buf.len()) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(disk_blob::BlobError::OutOfRange {
                offset,
                len: buf.len() as u64,
                blob_len: self.0.len() as u64,
            }),
        };
        Box::pin(std::future::ready(r))
    }
    fn describe(&self) -> String {
        "memory://damaged.img".into()
    }
}

async fn open_mem(
    bytes: Vec<u8>,
    hint: ExtensionHint,
) -> Result<SparseDisk, disk_sparse::SparseError> {
    let meta = Arc::new(MetaReader::new(Arc::new(MemBlob(bytes)), None));
    let format = detect(&meta, hint).await?;
    open_sparse(meta, format).await
}

/// Opens and reads every sector; the first error's text.
async fn first_error(bytes: Vec<u8>, hint: ExtensionHint) -> Option<String> {
    let disk = match open_mem(bytes, hint).await {
        Ok(d) => d,
        Err(e) => return Some(blob_test_servers::error_chain(&e)),
    };
    let mut buf = vec![0u8; MIB];
    let sectors = disk.sector_count();
    let mut s = 0;
    while s < sectors {
        let n = (sectors - s).min(2048);
        if let Err(e) = DiskIo::read(&disk, s, &mut buf[..(n * 512) as usize]).await {
            return Some(blob_test_servers::error_chain(&e));
        }
        s += n;
    }
    None
}

fn be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[tokio::test]
async fn damaged_images_give_clear_errors() {
    let mut data = vec![0u8; 6 * MIB];
    test_rng(9).fill_bytes(&mut data[..3 * MIB]);
    // Dynamic VHD: BAT at 1536 (footer copy + header before it).
    let vhd = vhd1_defs::dynamic::build_dynamic(&data, 2 << 20, [1; 16]);
    let mut past_end = vhd.clone();
    be32(&mut past_end, 1536 + 4, 0x00ff_0000);
    let e = first_error(past_end, ExtensionHint::Vhd).await.unwrap();
    assert!(
        e.contains("damaged.img") && e.contains("block") && e.contains("outside the file"),
        "{e}"
    );
    let mut looped = vhd.clone();
    be32(&mut looped, 1536 + 4, 3); // block 1 at the BAT's own sector
    let e = first_error(looped, ExtensionHint::Vhd).await.unwrap();
    assert!(e.contains("inside the BAT"), "{e}");
    let mut bad_sum = vhd.clone();
    bad_sum[512 + 40] ^= 1; // dynamic header, checksum not fixed
    let e = first_error(bad_sum, ExtensionHint::Vhd).await.unwrap();
    assert!(e.contains("dynamic header checksum"), "{e}");
    let truncated = vhd[..vhd.len() / 2].to_vec();
    let e = first_error(truncated, ExtensionHint::Vhd).await;
    assert!(e.is_some(), "a truncated dynamic VHD read without error");

    // VHDX: CRC mismatch in both headers, BAT entry past the end.
    let vhdx = vhdx_defs::build_vhdx(&data, 1 << 20, 512, vhdx_defs::Guid([2; 16]));
    let mut bad = vhdx.clone();
    bad[(64 << 10) + 200] ^= 1;
    bad[(128 << 10) + 200] ^= 1;
    let e = first_error(bad, ExtensionHint::Vhdx).await.unwrap();
    assert!(
        e.contains("damaged.img") && e.contains("header") && e.contains("CRC-32C"),
        "{e}"
    );
    let mut bad = vhdx.clone();
    let bat = 3 << 20;
    bad[bat + 8..bat + 16].copy_from_slice(&((1u64 << 40) | 6).to_le_bytes());
    let e = first_error(bad, ExtensionHint::Vhdx).await.unwrap();
    assert!(
        e.contains("payload block 1") && e.contains("outside the file"),
        "{e}"
    );
    let e = first_error(vhdx[..200 << 10].to_vec(), ExtensionHint::Vhdx)
        .await
        .unwrap();
    assert!(e.contains("damaged.img"), "{e}");
}

#[tokio::test]
async fn damaged_qcow2_gives_clear_errors() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, q) = raw_and_converted(dir.path(), 24 * MIB, QCOW2, "d.qcow2");
    let good = std::fs::read(&q).unwrap();
    let l1 = u64::from_be_bytes(good[40..48].try_into().unwrap()) as usize;
    let l2 = (u64::from_be_bytes(good[l1..l1 + 8].try_into().unwrap()) & qcow2_defs::OFFSET_MASK)
        as usize;
    // An L2 entry out of range.
    let mut bad = good.clone();
    bad[l2..l2 + 8].copy_from_slice(&(1u64 << 45).to_be_bytes());
    let e = first_error(bad, ExtensionHint::Qcow2).await.unwrap();
    assert!(
        e.contains("damaged.img")
            && e.contains("L2 entry of guest cluster 0")
            && e.contains("outside the file"),
        "{e}"
    );
    // An L2 entry pointing back at the L1 table.
    let mut bad = good.clone();
    bad[l2..l2 + 8].copy_from_slice(&(l1 as u64).to_be_bytes());
    let e = first_error(bad, ExtensionHint::Qcow2).await.unwrap();
    assert!(e.contains("L1 table"), "{e}");
    // An L1 entry past the end.
    let mut bad = good.clone();
    bad[l1..l1 + 8].copy_from_slice(&(1u64 << 44).to_be_bytes());
    let e = first_error(bad, ExtensionHint::Qcow2).await.unwrap();
    assert!(e.contains("L1 entry 0"), "{e}");
    // A backing file.
    let mut bad = good.clone();
    bad[8..16].copy_from_slice(&0x200u64.to_be_bytes());
    bad[16..20].copy_from_slice(&4u32.to_be_bytes());
    bad[0x200..0x204].copy_from_slice(b"base");
    let e = first_error(bad, ExtensionHint::Qcow2).await.unwrap();
    assert!(e.contains("backing file \"base\""), "{e}");
    // Truncated after the header.
    let e = first_error(good[..l2].to_vec(), ExtensionHint::Qcow2)
        .await
        .unwrap();
    assert!(e.contains("damaged.img"), "{e}");
}

/// Random damage to the metadata of real images, opened and read whole:
/// an error or bytes, never a panic (bounded, seeded).
#[tokio::test]
async fn fuzz_damaged_images() {
    let mut data = vec![0u8; 4 * MIB];
    test_rng(11).fill_bytes(&mut data[..MIB + 4096]);
    let mut images = vec![
        (
            vhd1_defs::dynamic::build_dynamic(&data, 1 << 20, [1; 16]),
            ExtensionHint::Vhd,
            4096usize,
        ),
        (
            vhdx_defs::build_vhdx(&data, 1 << 20, 512, vhdx_defs::Guid([2; 16])),
            ExtensionHint::Vhdx,
            4 << 20,
        ),
    ];
    if blob_test_servers::find_tool("qemu-img").is_some() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("r.raw");
        std::fs::write(&raw, &data).unwrap();
        for v in [
            QCOW2,
            SparseVariant {
                name: "c.qcow2",
                args: &["-c", "-O", "qcow2"],
            },
        ] {
            let p = convert_with_qemu_img(&raw, dir.path(), &v).unwrap();
            images.push((std::fs::read(&p).unwrap(), ExtensionHint::Qcow2, 0x50000));
        }
    }
    let mut rng = test_rng(99);
    for round in 0..120 {
        let (img, hint, meta_len) = &images[round % images.len()];
        let mut bad = img.clone();
        for _ in 0..(1 + (rng.next_u64() % 6)) {
            let at = (rng.next_u64() % ((*meta_len).min(bad.len()) as u64)) as usize;
            bad[at] = rng.next_u64() as u8;
        }
        if rng.next_u64().is_multiple_of(4) {
            let cut = (rng.next_u64() % (bad.len() as u64)) as usize;
            bad.truncate(cut);
        }
        let _ = first_error(bad, *hint).await;
    }
}

/// Runs `qemu-img` with `args`; panics with its stderr if it fails.
fn qemu_img(dir: &Path, args: &[&str]) {
    let out = Command::new("qemu-img")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Images this reader cannot read on its own, made by the tools that make
/// them (qemu-img) or by editing a built image the way those tools would:
/// each is refused at open with an error that names the file, says what
/// the image is and what to do, and no data is read.
#[tokio::test]
async fn images_that_cannot_be_read_alone_are_refused_by_name() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // qcow2 images made by qemu-img: a backing file, encryption (the
    // legacy AES method: LUKS would make qemu-img time its key derivation,
    // which fails now and then on a busy machine), an external data file,
    // extended L2 entries.
    for args in [
        &["base.qcow2", "4M"][..],
        &["-b", "base.qcow2", "-F", "qcow2", "backed.qcow2"],
        &[
            "--object",
            "secret,id=s0,data=password",
            "-o",
            "encrypt.format=aes,encrypt.key-secret=s0",
            "aes.qcow2",
            "4M",
        ],
        &["-o", "data_file=external.raw", "external.qcow2", "4M"],
        &["-o", "extended_l2=on", "subclusters.qcow2", "4M"],
    ] {
        qemu_img(dir, &[&["create", "-q", "-f", "qcow2"][..], args].concat());
    }

    // A differencing VHD: a dynamic VHD whose footer (both copies) says
    // differencing and whose header names its parent.
    let mut data = vec![0u8; 4 * MIB];
    test_rng(5).fill_bytes(&mut data[..MIB]);
    let mut vhd = vhd1_defs::dynamic::build_dynamic(&data, 2 << 20, [7; 16]);
    let mut footer = vhd1_defs::Footer::parse(vhd[..512].try_into().unwrap()).unwrap();
    footer.disk_type = vhd1_defs::DISK_TYPE_DIFFERENCING;
    let footer = footer.to_bytes();
    let end = vhd.len();
    vhd[..512].copy_from_slice(&footer);
    vhd[end - 512..].copy_from_slice(&footer);
    let mut header = vhd1_defs::dynamic::DynamicHeader::parse(&vhd[512..1536]).unwrap();
    header.parent_name = "parent.vhd".into();
    vhd[512..1536].copy_from_slice(&header.to_bytes());
    std::fs::write(dir.join("child.vhd"), &vhd).unwrap();

    // A VHDX that was not closed cleanly: both headers name a log that
    // holds a valid entry.
    let mut vhdx = vhdx_defs::build_vhdx(&data, 1 << 20, 512, vhdx_defs::Guid([8; 16]));
    let log_guid = vhdx_defs::Guid([9; 16]);
    let mut log_at = 0;
    for off in vhdx_defs::HEADER_OFFSETS {
        let off = off as usize;
        let mut h = vhdx_defs::Header::parse(&vhdx[off..off + 4096]).unwrap();
        h.log_guid = log_guid;
        log_at = h.log_offset as usize;
        vhdx[off..off + 4096].copy_from_slice(&h.to_bytes());
    }
    let entry = &mut vhdx[log_at..log_at + 4096];
    entry[..4].copy_from_slice(b"loge");
    entry[8..12].copy_from_slice(&4096u32.to_le_bytes());
    entry[32..48].copy_from_slice(&log_guid.0);
    let crc = vhdx_defs::crc32c_with_zeroed(entry, 4);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join("dirty.vhdx"), &vhdx).unwrap();

    for (file, says) in [
        (
            "backed.qcow2",
            &["backing file \"base.qcow2\"", "flatten"][..],
        ),
        ("aes.qcow2", &["encrypted"][..]),
        ("external.qcow2", &["external data file"][..]),
        ("subclusters.qcow2", &["extended L2", "extended_l2=on"][..]),
        ("child.vhd", &["parent.vhd"][..]),
        ("dirty.vhdx", &["log", "VHDX-aware tool"][..]),
    ] {
        let path = dir.join(file);
        let e = match open_file(&path).await {
            Ok(_) => panic!("{file} was opened"),
            Err(e) => blob_test_servers::error_chain(&e),
        };
        assert!(e.contains(&path.display().to_string()), "{file}: {e}");
        for s in says {
            assert!(e.contains(s), "{file}: {e:?} does not say {s:?}");
        }
    }
}
