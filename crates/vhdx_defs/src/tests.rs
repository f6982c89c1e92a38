//! Unit tests of the parent module.

use super::*;

const DATA_GUID: Guid = Guid([0xd7; 16]);

fn sample() -> (Vec<u8>, Vec<u8>) {
    let mut data = vec![0u8; 5 << 20];
    data[1] = 1;
    data[(3 << 20) + 5] = 3;
    (build_vhdx(&data, 1 << 20, 512, DATA_GUID), data)
}

fn open(f: &[u8]) -> Result<(FileHeaders, DiskMetadata, BatLayout), VhdxError> {
    let len = f.len() as u64;
    let h = FileHeaders::parse(f.get(..HEADER_AREA_END as usize).unwrap_or(f), len)?;
    let m = h.regions.metadata;
    let table = f
        .get(m.offset as usize..m.offset as usize + METADATA_TABLE_SIZE)
        .unwrap_or_default();
    let locs = parse_metadata_table(table, m.length)?;
    let items: Vec<&[u8]> = locs
        .iter()
        .map(|l| {
            let s = (m.offset + u64::from(l.offset)) as usize;
            f.get(s..s + l.length as usize).unwrap_or_default()
        })
        .collect();
    let meta = DiskMetadata::parse(&locs, &items)?;
    let bat = BatLayout::new(&h, &meta, len)?;
    Ok((h, meta, bat))
}

#[test]
fn crc32c_known_values() {
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[]), 0);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
}

#[test]
fn guid_display() {
    assert_eq!(
        BAT_REGION.to_string(),
        "2dc27766-f623-4200-9d64-115e9bfd4a08"
    );
    assert_eq!(&BAT_REGION.0[..4], &[0x66, 0x77, 0xc2, 0x2d]);
}

#[test]
fn built_file_parses() {
    let (f, data) = sample();
    let (h, meta, bat) = open(&f).unwrap();
    assert_eq!(h.header.data_write_guid, DATA_GUID);
    assert_eq!(meta.disk_size, 5 << 20);
    assert_eq!(meta.block_size, 1 << 20);
    assert_eq!(bat.chunk_ratio, 4096);
    let raw = &f[bat.region.offset as usize..bat.region.offset as usize + 5 * 8];
    let entries = bat.decode_entries(0, raw).unwrap();
    assert_eq!(entries.len(), 5);
    assert!(matches!(entries[1].1, Block::Zero));
    let Block::Present(off) = entries[3].1 else {
        panic!("block 3 not present")
    };
    assert_eq!(f[off as usize + 5], data[(3 << 20) + 5]);
}

#[test]
fn header_choice_by_sequence_number() {
    let (f, _) = sample();
    let h1 = &f[64 << 10..(64 << 10) + 4096];
    let h2 = &f[128 << 10..(128 << 10) + 4096];
    assert_eq!(current_header(h1, h2).unwrap().sequence_number, 1);
    let mut bad2 = h2.to_vec();
    bad2[100] ^= 1;
    assert_eq!(current_header(h1, &bad2).unwrap().sequence_number, 0);
    let e = Header::parse(&bad2).unwrap_err();
    assert!(
        matches!(e, VhdxError::BadChecksum { what: "header", .. }),
        "{e}"
    );
    let mut bad1 = h1.to_vec();
    bad1[0] = b'x';
    let e = current_header(&bad1, &bad2).unwrap_err();
    assert!(e.to_string().contains("neither VHDX header"), "{e}");
    // Same sequence number, different contents.
    let mut a = Header::parse(h1).unwrap();
    let mut b = a.clone();
    b.file_write_guid = Guid([5; 16]);
    a.sequence_number = 3;
    b.sequence_number = 3;
    assert_eq!(
        current_header(&a.to_bytes(), &b.to_bytes()),
        Err(VhdxError::AmbiguousHeaders(3))
    );
    assert_eq!(current_header(&a.to_bytes(), &a.to_bytes()), Ok(a));
}

#[test]
fn log_entries_are_found() {
    let mut h = Header::parse(&sample().0[64 << 10..(64 << 10) + 4096]).unwrap();
    let log = vec![0u8; 1 << 20];
    assert!(!log_has_entries(&h, &log));
    h.log_guid = Guid([3; 16]);
    assert!(!log_has_entries(&h, &log));
    let mut log = log;
    let at = 8192;
    log[at..at + 4].copy_from_slice(b"loge");
    log[at + 8..at + 12].copy_from_slice(&4096u32.to_le_bytes());
    log[at + 32..at + 48].copy_from_slice(&[3; 16]);
    let c = crc32c_with_zeroed(&log[at..at + 4096], 4);
    log[at + 4..at + 8].copy_from_slice(&c.to_le_bytes());
    assert!(log_has_entries(&h, &log));
    // Another log's entry does not count.
    h.log_guid = Guid([4; 16]);
    assert!(!log_has_entries(&h, &log));
    assert!(
        VhdxError::LogNotEmpty
            .to_string()
            .contains("VHDX-aware tool")
    );
}

fn corrupt_region_tables(f: &mut [u8], edit: impl Fn(&mut [u8])) {
    for &off in &REGION_TABLE_OFFSETS {
        let rt = &mut f[off as usize..off as usize + REGION_TABLE_SIZE];
        edit(rt);
        let c = crc32c_with_zeroed(rt, 4);
        rt[4..8].copy_from_slice(&c.to_le_bytes());
    }
}

#[test]
fn region_errors() {
    let (f, _) = sample();
    let mut g = f.clone();
    g[(192 << 10) + 20] ^= 1;
    g[(256 << 10) + 20] ^= 1;
    let e = open(&g).unwrap_err();
    assert!(matches!(e, VhdxError::NoValidRegionTable { .. }), "{e}");
    assert!(e.to_string().contains("CRC-32C"), "{e}");
    // One bad table: the other is used.
    let mut g = f.clone();
    g[(192 << 10) + 20] ^= 1;
    open(&g).unwrap();
    // A region past the end of the file.
    let mut g = f.clone();
    corrupt_region_tables(&mut g, |rt| {
        rt[16 + 16..16 + 24].copy_from_slice(&(1u64 << 40).to_le_bytes())
    });
    let e = open(&g).unwrap_err();
    assert!(e.to_string().contains("BAT region"), "{e}");
    // An unknown required region.
    let mut g = f.clone();
    corrupt_region_tables(&mut g, |rt| rt[16] ^= 0xff);
    let e = open(&g).unwrap_err();
    assert!(e.to_string().contains("marked required"), "{e}");
}

#[test]
fn bat_entry_errors() {
    let (f, _) = sample();
    let (_, _, bat) = open(&f).unwrap();
    let present = |off: u64| off | 6;
    let e = bat.decode_entry(2, present(1 << 40)).unwrap_err();
    assert!(e.to_string().contains("payload block 2"), "{e}");
    assert!(e.to_string().contains("outside the file"), "{e}");
    // Pointing back into the BAT region.
    let e = bat.decode_entry(0, present(bat.region.offset)).unwrap_err();
    assert!(matches!(e, VhdxError::Overlap { .. }), "{e}");
    assert!(e.to_string().contains("BAT region"), "{e}");
    let e = bat.decode_entry(0, present(0)).unwrap_err();
    assert!(e.to_string().contains("header section"), "{e}");
    assert!(matches!(
        bat.decode_entry(0, 7),
        Err(VhdxError::BadBlockState { state: 7, .. })
    ));
    // Two blocks at one offset.
    let mut raw = f[bat.region.offset as usize..bat.region.offset as usize + 40].to_vec();
    let e0 = raw[..8].to_vec();
    raw[24..32].copy_from_slice(&e0);
    let e = bat.decode_entries(0, &raw).unwrap_err();
    assert!(matches!(e, VhdxError::Overlap { .. }), "{e}");
}

#[test]
fn metadata_errors() {
    let (f, _) = sample();
    let m = 2 << 20;
    // A parent locator makes it differencing.
    let mut g = f.clone();
    g[m + 32..m + 48].copy_from_slice(&PARENT_LOCATOR.0);
    assert_eq!(open(&g).unwrap_err(), VhdxError::Differencing);
    // The has-parent flag too.
    let mut g = f.clone();
    g[m + 65536 + 4] = 2;
    assert_eq!(open(&g).unwrap_err(), VhdxError::Differencing);
    // A block size that is not a power of two.
    let mut g = f.clone();
    g[m + 65536..m + 65536 + 4].copy_from_slice(&3_000_000u32.to_le_bytes());
    let e = open(&g).unwrap_err();
    assert!(e.to_string().contains("block size"), "{e}");
    // A huge entry count.
    let mut g = f.clone();
    g[m + 10..m + 12].copy_from_slice(&u16::MAX.to_le_bytes());
    assert!(matches!(open(&g), Err(VhdxError::TooManyEntries { .. })));
}

/// Arbitrary bytes never panic the parsers (bounded, seeded).
#[test]
fn fuzz_arbitrary_bytes() {
    let (f, _) = sample();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let hot: [(u64, u64); 5] = [
        (0, 16),
        (64 << 10, 128),
        (192 << 10, 128),
        (2 << 20, 256),
        ((2 << 20) + 65536, 160),
    ];
    for round in 0..400 {
        let mut g = f.clone();
        for _ in 0..(next() % 6 + 1) {
            let (start, len) = hot[(next() % hot.len() as u64) as usize];
            let at = (start + next() % len) as usize;
            g[at] = next() as u8;
        }
        if round % 3 == 0 {
            // Fix the CRCs so the fields behind them get exercised.
            for &off in &HEADER_OFFSETS {
                let h = &mut g[off as usize..off as usize + HEADER_SIZE];
                let c = crc32c_with_zeroed(h, 4);
                h[4..8].copy_from_slice(&c.to_le_bytes());
            }
            corrupt_region_tables(&mut g, |_| {});
        }
        let cut = g.len() - (next() % 4096) as usize;
        if let Ok((_, _, bat)) = open(&g[..cut]) {
            let at = bat.region.offset as usize;
            let raw = g.get(at..at + 64).unwrap_or_default();
            let _ = bat.decode_entries(next() % 3, raw);
            let _ = bat.decode_entry(next(), next());
        }
        let mut junk = vec![0u8; 70_000];
        for b in junk.iter_mut().step_by(7) {
            *b = next() as u8;
        }
        let _ = FileHeaders::parse(&junk, next());
        let _ = parse_metadata_table(&junk, next() as u32);
        let _ = Header::parse(&junk);
    }
}
