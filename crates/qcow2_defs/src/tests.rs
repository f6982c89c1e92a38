//! Unit tests of the parent module.

use super::*;

/// A version 3 header for a disk of `size` bytes with 64 KiB clusters,
/// L1 table at 0x30000.
fn header_bytes(size: u64) -> Vec<u8> {
    let mut b = vec![0u8; 65536];
    b[..4].copy_from_slice(&MAGIC);
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    b[20..24].copy_from_slice(&16u32.to_be_bytes());
    b[24..32].copy_from_slice(&size.to_be_bytes());
    let l1 = size.div_ceil(65536 * 8192) as u32;
    b[36..40].copy_from_slice(&l1.to_be_bytes());
    b[40..48].copy_from_slice(&0x30000u64.to_be_bytes());
    b[96..100].copy_from_slice(&4u32.to_be_bytes());
    b[100..104].copy_from_slice(&104u32.to_be_bytes());
    b
}

fn layout() -> Layout {
    Layout::new(Header::parse(&header_bytes(1 << 30)).unwrap(), 1 << 24).unwrap()
}

#[test]
fn header_parses() {
    let h = Header::parse(&header_bytes(1 << 30)).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.cluster_bits, 16);
    assert_eq!(h.compression, Compression::Deflate);
    let l = Layout::new(h, 1 << 24).unwrap();
    assert_eq!(l.l1_entries, 2);
    assert_eq!(l.indexes(l.cluster_of((512 << 20) + 65536)), (1, 1));
}

#[test]
fn refusals_are_specific() {
    let mut b = header_bytes(1 << 20);
    b[8..16].copy_from_slice(&200u64.to_be_bytes());
    b[16..20].copy_from_slice(&8u32.to_be_bytes());
    b[200..208].copy_from_slice(b"base.img");
    let e = Header::parse(&b).unwrap_err();
    assert_eq!(
        e,
        Qcow2Error::BackingFile {
            name: "base.img".into()
        }
    );
    assert!(e.to_string().contains("backing file \"base.img\""), "{e}");
    let mut b = header_bytes(1 << 20);
    b[32..36].copy_from_slice(&2u32.to_be_bytes());
    assert_eq!(Header::parse(&b), Err(Qcow2Error::Encrypted(2)));
    let mut b = header_bytes(1 << 20);
    b[79] = incompatible::EXTERNAL_DATA_FILE as u8;
    assert_eq!(Header::parse(&b), Err(Qcow2Error::ExternalDataFile));
    b[79] = incompatible::EXTENDED_L2 as u8;
    assert_eq!(Header::parse(&b), Err(Qcow2Error::ExtendedL2));
    b[79] = 0x40;
    assert_eq!(Header::parse(&b), Err(Qcow2Error::UnknownFeatures(0x40)));
    // Zstd needs the compression type field.
    b[79] = incompatible::COMPRESSION_TYPE as u8;
    assert!(matches!(
        Header::parse(&b),
        Err(Qcow2Error::BadValue { .. })
    ));
    b[100..104].copy_from_slice(&112u32.to_be_bytes());
    b[104] = 1;
    assert_eq!(Header::parse(&b).unwrap().compression, Compression::Zstd);
    b[104] = 7;
    assert_eq!(Header::parse(&b), Err(Qcow2Error::UnknownCompression(7)));
    let mut b = header_bytes(1 << 20);
    b[4..8].copy_from_slice(&4u32.to_be_bytes());
    assert_eq!(Header::parse(&b), Err(Qcow2Error::UnsupportedVersion(4)));
    let mut b = header_bytes(1 << 20);
    b[20..24].copy_from_slice(&30u32.to_be_bytes());
    assert!(
        Header::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("cluster_bits")
    );
    assert_eq!(
        Header::parse(b"QFI"),
        Err(Qcow2Error::Truncated { got: 3, need: 8 })
    );
    assert_eq!(Header::parse(b"conectix"), Err(Qcow2Error::BadMagic));
}

#[test]
fn l1_checks() {
    let mut b = header_bytes(1 << 30);
    b[36..40].copy_from_slice(&1u32.to_be_bytes());
    let e = Layout::new(Header::parse(&b).unwrap(), 1 << 24).unwrap_err();
    assert!(e.to_string().contains("L1 size"), "{e}");
    let mut b = header_bytes(1 << 30);
    b[40..48].copy_from_slice(&(1u64 << 40).to_be_bytes());
    let e = Layout::new(Header::parse(&b).unwrap(), 1 << 24).unwrap_err();
    assert!(matches!(e, Qcow2Error::OutsideFile { .. }), "{e}");
    // A disk so large that its L1 table would be huge.
    let mut b = header_bytes(1 << 30);
    b[24..32].copy_from_slice(&(1u64 << 55).to_be_bytes());
    b[36..40].copy_from_slice(&(1u32 << 26).to_be_bytes());
    let e = Layout::new(Header::parse(&b).unwrap(), 1 << 24).unwrap_err();
    assert!(e.to_string().contains("32 MiB"), "{e}");
}

#[test]
fn table_entries() {
    let l = layout();
    assert_eq!(l.decode_l1(0, 0), Ok(None));
    assert_eq!(l.decode_l1(0, 0x40000 | (1 << 63)), Ok(Some(0x40000)));
    let e = l.decode_l1(1, 0x40200).unwrap_err();
    assert!(matches!(e, Qcow2Error::Misaligned { .. }), "{e}");
    let e = l.decode_l1(1, 0x30000).unwrap_err();
    assert!(e.to_string().contains("L1 table"), "{e}");
    let e = l.decode_l1(1, 1 << 40).unwrap_err();
    assert!(e.to_string().contains("L1 entry 1"), "{e}");
    assert!(e.to_string().contains("outside the file"), "{e}");

    assert_eq!(l.decode_l2(5, 0x40000, 0), Ok(Cluster::Unallocated));
    assert_eq!(l.decode_l2(5, 0x40000, 1), Ok(Cluster::Zero));
    assert_eq!(l.decode_l2(5, 0x40000, 0x50000 | 1), Ok(Cluster::Zero));
    assert_eq!(l.decode_l2(5, 0x40000, 0x50000), Ok(Cluster::Data(0x50000)));
    let e = l.decode_l2(5, 0x40000, 0x40000).unwrap_err();
    assert!(e.to_string().contains("L2 table that holds it"), "{e}");
    let e = l.decode_l2(5, 0x40000, 0x2000_0000).unwrap_err();
    assert!(e.to_string().contains("guest cluster 5"), "{e}");
    // Compressed: offset 0x50010, 3 extra sectors: (4 * 512) - 0x10.
    let raw = L2_COMPRESSED | (3u64 << 54) | 0x50010;
    assert_eq!(
        l.decode_l2(5, 0x40000, raw),
        Ok(Cluster::Compressed {
            offset: 0x50010,
            len: 4 * 512 - 16
        })
    );
    let raw = L2_COMPRESSED | 0x100;
    assert!(l.decode_l2(5, 0x40000, raw).is_err());
}

#[test]
fn version_2_has_no_zero_flag() {
    let mut b = header_bytes(1 << 30);
    b[4..8].copy_from_slice(&2u32.to_be_bytes());
    let l = Layout::new(Header::parse(&b).unwrap(), 1 << 24).unwrap();
    assert_eq!(l.decode_l2(0, 0x40000, 0x50001), Ok(Cluster::Data(0x50000)));
}

#[test]
fn deflate_clusters() {
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let packed = miniz_oxide::deflate::compress_to_vec(&data, 6);
    let mut padded = packed.clone();
    padded.resize(packed.len().next_multiple_of(512), 0xaa);
    let mut out = vec![0u8; 65536];
    decompress_cluster(Compression::Deflate, &padded, &mut out).unwrap();
    assert!(out == data);
    // Truncated input: an error, not a panic or short data.
    let e = decompress_cluster(Compression::Deflate, &packed[..packed.len() / 2], &mut out)
        .unwrap_err();
    assert!(e.contains("65536"), "{e}");
    // A stream of the wrong length.
    let short = miniz_oxide::deflate::compress_to_vec(&data[..1000], 6);
    assert!(decompress_cluster(Compression::Deflate, &short, &mut out).is_err());
    assert!(decompress_cluster(Compression::Deflate, &[0xff; 64], &mut out).is_err());
}

#[test]
fn zstd_frames_are_bounded() {
    let mut out = vec![0u8; 4096];
    assert!(decompress_cluster(Compression::Zstd, &[0u8; 64], &mut out).is_err());
    // A frame header asking for a 2^41-byte window.
    let frame = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xf8, 0, 0, 0, 0];
    let e = decompress_cluster(Compression::Zstd, &frame, &mut out).unwrap_err();
    assert!(e.contains("window"), "{e}");
    // A raw block holding 4096 bytes of 7, single segment, content size 4096.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x60];
    frame.extend_from_slice(&(4096u16 - 256).to_le_bytes());
    // Block header: last=1, type=RLE(1), size=4096: (4096 << 3) | (1 << 1) | 1.
    let bh: u32 = (4096 << 3) | (1 << 1) | 1;
    frame.extend_from_slice(&bh.to_le_bytes()[..3]);
    frame.push(7);
    frame.extend_from_slice(&[0; 100]);
    decompress_cluster(Compression::Zstd, &frame, &mut out).unwrap();
    assert!(out.iter().all(|&b| b == 7));
}

/// Arbitrary bytes never panic the parsers or the decompressors.
#[test]
fn fuzz_arbitrary_bytes() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let base = header_bytes(1 << 30);
    let mut out = vec![0u8; 4096];
    for _ in 0..5000 {
        let mut b = base[..512].to_vec();
        for _ in 0..(next() % 6 + 1) {
            let at = (next() % 112) as usize;
            b[at] = next() as u8;
        }
        b.truncate((next() % 512) as usize + 1);
        if let Ok(h) = Header::parse(&b)
            && let Ok(l) = Layout::new(h, next() % (1 << 32))
        {
            let _ = l.decode_l1(next(), next());
            let _ = l.decode_l2(next() >> 20, next(), next());
        }
        let mut junk = vec![0u8; (next() % 300) as usize];
        for x in junk.iter_mut() {
            *x = next() as u8;
        }
        if next() % 2 == 0 && junk.len() > 5 {
            junk[..4].copy_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        }
        let _ = decompress_cluster(Compression::Zstd, &junk, &mut out);
        let _ = decompress_cluster(Compression::Deflate, &junk, &mut out);
    }
}
