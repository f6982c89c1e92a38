//! Dynamic VHD1 disks: the dynamic disk header, the block allocation table
//! (BAT) and the sector bitmaps in front of each block.
//!
//! Layout of a dynamic VHD1 file:
//!
//! ```text
//! 0         footer copy (512 bytes, same as the footer at the end)
//! hdr       dynamic disk header (1024 bytes, at the footer's data_offset)
//! bat       BAT: max_table_entries big-endian u32 sector numbers,
//!           0xFFFFFFFF for a block that is not allocated
//! block i   at BAT[i] * 512: sector bitmap (one bit per sector of the
//!           block, most significant bit first, padded to 512 bytes),
//!           then block_size bytes of data
//! end-512   footer
//! ```
//!
//! A sector whose bitmap bit is clear reads as zeros, and so does every
//! sector of an unallocated block.
//!
//! Nothing here does I/O: [`DynamicLayout::new`] checks a footer and a
//! dynamic header against the blob length, and the layout then answers
//! where things are ([`DynamicLayout::bat_range`],
//! [`DynamicLayout::block_location`]) from bytes the caller fetched.
//! Every check returns a typed [`DynamicError`]; nothing panics on any
//! input and nothing allocates in proportion to a field of the file.

use crate::DISK_TYPE_DIFFERENCING;
use crate::DISK_TYPE_DYNAMIC;
use crate::FOOTER_SIZE;
use crate::Footer;
use crate::SECTOR_SIZE;
use crate::disk_type_name;

/// Size of the dynamic disk header in bytes.
pub const HEADER_SIZE: usize = 1024;
/// The dynamic disk header cookie.
pub const HEADER_COOKIE: [u8; 8] = *b"cxsparse";
/// The only dynamic header version defined by the spec.
pub const HEADER_VERSION: u32 = 0x0001_0000;
/// A BAT entry that names no block.
pub const BAT_UNUSED: u32 = 0xFFFF_FFFF;
/// Size of one BAT entry.
pub const BAT_ENTRY_SIZE: u64 = 4;
/// The smallest block size accepted.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// The largest block size accepted (the spec's default is 2 MiB; larger
/// blocks only make the sector bitmap bigger).
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// Byte offsets of the dynamic header fields.
pub mod offsets {
    /// Cookie, 8 bytes.
    pub const COOKIE: usize = 0;
    /// Data offset (unused, all ones), u64.
    pub const DATA_OFFSET: usize = 8;
    /// Absolute offset of the BAT, u64.
    pub const TABLE_OFFSET: usize = 16;
    /// Header version, u32.
    pub const HEADER_VERSION: usize = 24;
    /// Number of BAT entries, u32.
    pub const MAX_TABLE_ENTRIES: usize = 28;
    /// Block size in bytes, u32.
    pub const BLOCK_SIZE: usize = 32;
    /// Checksum, u32.
    pub const CHECKSUM: usize = 36;
    /// Parent unique id, 16 bytes.
    pub const PARENT_UNIQUE_ID: usize = 40;
    /// Parent time stamp, u32.
    pub const PARENT_TIMESTAMP: usize = 56;
    /// Parent file name, UTF-16BE, 512 bytes.
    pub const PARENT_NAME: usize = 64;
}

/// What is wrong with a dynamic VHD1's structures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DynamicError {
    /// The footer is not that of a dynamic disk.
    #[error("VHD1 disk type {0} ({name}) is not a dynamic disk", name = disk_type_name(*.0))]
    NotDynamic(u32),
    /// A differencing disk, which needs its parent.
    #[error(
        "a differencing VHD1 (parent {parent:?}) cannot be opened on its own: \
         merge it into a dynamic or fixed VHD first (for example `qemu-img convert -O vpc`)"
    )]
    Differencing {
        /// The parent's file name from the dynamic header (may be empty).
        parent: String,
    },
    /// The header is shorter than 1024 bytes.
    #[error("VHD1 dynamic header truncated: {0} bytes, need 1024")]
    HeaderTruncated(usize),
    /// The header's cookie is not `cxsparse`.
    #[error("VHD1 dynamic header has a bad cookie (expected \"cxsparse\")")]
    BadCookie,
    /// The header's checksum does not match.
    #[error(
        "VHD1 dynamic header checksum mismatch: stored {found:#010x}, computed {expected:#010x}"
    )]
    BadChecksum {
        /// The checksum computed from the header bytes.
        expected: u32,
        /// The checksum stored in the header.
        found: u32,
    },
    /// An unknown header version.
    #[error("unsupported VHD1 dynamic header version {0:#010x}, expected 0x00010000")]
    UnsupportedVersion(u32),
    /// The block size is not a power of two in the accepted range.
    #[error("VHD1 block size {0} is not a power of two between 512 bytes and 256 MiB")]
    BadBlockSize(u32),
    /// The disk size is not a whole number of sectors.
    #[error("VHD1 disk size {0} is not a multiple of 512")]
    SizeNotSectorMultiple(u64),
    /// The BAT has fewer entries than the disk has blocks.
    #[error("VHD1 BAT has {entries} entries but the disk of {disk_size} bytes needs {needed}")]
    BatTooSmall {
        /// Entries in the BAT.
        entries: u32,
        /// Blocks the disk needs.
        needed: u64,
        /// The disk size.
        disk_size: u64,
    },
    /// A structure lies (partly) outside the file.
    #[error(
        "VHD1 {what} at offset {offset} ({len} bytes) lies outside the file of {file_len} bytes"
    )]
    OutsideFile {
        /// Which structure.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file length.
        file_len: u64,
    },
    /// A block's BAT entry points into the file's own metadata.
    #[error(
        "VHD1 BAT entry for block {block} points at offset {offset}, inside the {what}: the BAT is corrupt"
    )]
    BlockOverlapsMetadata {
        /// The block index.
        block: u64,
        /// The offset the entry names.
        offset: u64,
        /// Which structure it overlaps.
        what: &'static str,
    },
    /// Two BAT entries name the same block of the file.
    #[error(
        "VHD1 BAT entries for blocks {first} and {second} both point at offset {offset}: the BAT is corrupt"
    )]
    BlocksShareStorage {
        /// The first block.
        first: u64,
        /// The second block.
        second: u64,
        /// The shared offset.
        offset: u64,
    },
}

/// The checksum of a dynamic header: one's complement of the byte sum with
/// the checksum field taken as zero (as for the footer).
pub fn header_checksum(header: &[u8; HEADER_SIZE]) -> u32 {
    let sum = header
        .iter()
        .enumerate()
        .filter(|(i, _)| !(offsets::CHECKSUM..offsets::CHECKSUM + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

fn be_u32(b: &[u8], off: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(x)
}

fn be_u64(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(x)
}

/// A decoded dynamic disk header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicHeader {
    /// Absolute file offset of the BAT.
    pub table_offset: u64,
    /// Number of BAT entries.
    pub max_table_entries: u32,
    /// Bytes of data per block.
    pub block_size: u32,
    /// The parent's unique id (differencing disks only).
    pub parent_unique_id: [u8; 16],
    /// The parent's file name (differencing disks only; lossy UTF-16BE).
    pub parent_name: String,
}

impl DynamicHeader {
    /// Parses and checks a dynamic header: length, cookie, checksum,
    /// version (in that order).
    pub fn parse(bytes: &[u8]) -> Result<Self, DynamicError> {
        let raw: &[u8; HEADER_SIZE] = bytes
            .get(..HEADER_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(DynamicError::HeaderTruncated(bytes.len()))?;
        if raw[..8] != HEADER_COOKIE {
            return Err(DynamicError::BadCookie);
        }
        let expected = header_checksum(raw);
        let found = be_u32(raw, offsets::CHECKSUM);
        if expected != found {
            return Err(DynamicError::BadChecksum { expected, found });
        }
        let version = be_u32(raw, offsets::HEADER_VERSION);
        if version != HEADER_VERSION {
            return Err(DynamicError::UnsupportedVersion(version));
        }
        let mut parent_unique_id = [0u8; 16];
        parent_unique_id
            .copy_from_slice(&raw[offsets::PARENT_UNIQUE_ID..offsets::PARENT_UNIQUE_ID + 16]);
        let name_units: Vec<u16> = raw[offsets::PARENT_NAME..offsets::PARENT_NAME + 512]
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        Ok(Self {
            table_offset: be_u64(raw, offsets::TABLE_OFFSET),
            max_table_entries: be_u32(raw, offsets::MAX_TABLE_ENTRIES),
            block_size: be_u32(raw, offsets::BLOCK_SIZE),
            parent_unique_id,
            parent_name: String::from_utf16_lossy(&name_units),
        })
    }

    /// Encodes the header (for tests and tools), with a correct checksum;
    /// the parent's name as UTF-16BE, cut at 256 code units.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(&HEADER_COOKIE);
        b[offsets::DATA_OFFSET..offsets::DATA_OFFSET + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        b[offsets::TABLE_OFFSET..offsets::TABLE_OFFSET + 8]
            .copy_from_slice(&self.table_offset.to_be_bytes());
        b[offsets::HEADER_VERSION..offsets::HEADER_VERSION + 4]
            .copy_from_slice(&HEADER_VERSION.to_be_bytes());
        b[offsets::MAX_TABLE_ENTRIES..offsets::MAX_TABLE_ENTRIES + 4]
            .copy_from_slice(&self.max_table_entries.to_be_bytes());
        b[offsets::BLOCK_SIZE..offsets::BLOCK_SIZE + 4]
            .copy_from_slice(&self.block_size.to_be_bytes());
        b[offsets::PARENT_UNIQUE_ID..offsets::PARENT_UNIQUE_ID + 16]
            .copy_from_slice(&self.parent_unique_id);
        for (i, unit) in self.parent_name.encode_utf16().take(256).enumerate() {
            let at = offsets::PARENT_NAME + 2 * i;
            b[at..at + 2].copy_from_slice(&unit.to_be_bytes());
        }
        let c = header_checksum(&b);
        b[offsets::CHECKSUM..offsets::CHECKSUM + 4].copy_from_slice(&c.to_be_bytes());
        b
    }
}

/// Where the parts of one allocated block are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLocation {
    /// Offset of the block's sector bitmap.
    pub bitmap_offset: u64,
    /// Offset of the block's first data byte.
    pub data_offset: u64,
}

/// The checked geometry of a dynamic VHD1: everything a reader needs to
/// map a disk offset to the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicLayout {
    /// The disk size in bytes (the footer's current size).
    pub disk_size: u64,
    /// Bytes of data per block.
    pub block_size: u32,
    /// Bytes of sector bitmap in front of each block (a multiple of 512).
    pub bitmap_size: u32,
    /// Offset of the BAT.
    pub bat_offset: u64,
    /// Blocks the disk has (BAT entries that are used).
    pub block_count: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Offset of the dynamic header.
    pub header_offset: u64,
}

impl DynamicLayout {
    /// Checks a parsed footer (the copy at offset 0 or the one at the end)
    /// and its dynamic header against a file of `file_len` bytes.
    ///
    /// `header` is `Err` when the dynamic header could not be parsed; a
    /// differencing disk is reported as [`DynamicError::Differencing`]
    /// whenever its header parses (to name the parent), and as such even
    /// when it does not.
    pub fn new(
        footer: &Footer,
        header: Result<&DynamicHeader, DynamicError>,
        file_len: u64,
    ) -> Result<Self, DynamicError> {
        if footer.disk_type == DISK_TYPE_DIFFERENCING {
            return Err(DynamicError::Differencing {
                parent: header.map(|h| h.parent_name.clone()).unwrap_or_default(),
            });
        }
        if footer.disk_type != DISK_TYPE_DYNAMIC {
            return Err(DynamicError::NotDynamic(footer.disk_type));
        }
        let header = header?;
        if !footer.current_size.is_multiple_of(SECTOR_SIZE) {
            return Err(DynamicError::SizeNotSectorMultiple(footer.current_size));
        }
        let bs = header.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) {
            return Err(DynamicError::BadBlockSize(bs));
        }
        let block_count = footer.current_size.div_ceil(u64::from(bs));
        if u64::from(header.max_table_entries) < block_count {
            return Err(DynamicError::BatTooSmall {
                entries: header.max_table_entries,
                needed: block_count,
                disk_size: footer.current_size,
            });
        }
        let sectors_per_block = u64::from(bs) / SECTOR_SIZE;
        let bitmap_size = sectors_per_block.div_ceil(8).next_multiple_of(SECTOR_SIZE);
        let layout = Self {
            disk_size: footer.current_size,
            block_size: bs,
            // At most 256 MiB / 512 / 8 = 64 KiB.
            bitmap_size: bitmap_size as u32,
            bat_offset: header.table_offset,
            block_count,
            file_len,
            header_offset: footer.data_offset,
        };
        layout.check_inside("dynamic header", footer.data_offset, HEADER_SIZE as u64)?;
        layout.check_inside("BAT", header.table_offset, block_count * BAT_ENTRY_SIZE)?;
        Ok(layout)
    }

    fn check_inside(&self, what: &'static str, offset: u64, len: u64) -> Result<(), DynamicError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.file_len => Ok(()),
            _ => Err(DynamicError::OutsideFile {
                what,
                offset,
                len,
                file_len: self.file_len,
            }),
        }
    }

    /// The byte range of the used part of the BAT (`block_count` entries).
    pub fn bat_range(&self) -> std::ops::Range<u64> {
        self.bat_offset..self.bat_offset + self.block_count * BAT_ENTRY_SIZE
    }

    /// The block holding disk byte `offset`, and the offset inside it.
    pub fn block_of(&self, offset: u64) -> (u64, u64) {
        let bs = u64::from(self.block_size);
        (offset / bs, offset % bs)
    }

    /// Where block `block` is, from its raw BAT entry: `None` if it is not
    /// allocated. Checks that the block starts inside the file, before
    /// the footer, and outside the metadata (footer copy, dynamic header,
    /// BAT).
    ///
    /// DEVNOTE: a block whose data runs past the end of the file is
    /// accepted (readers fill the missing tail with zeros, as QEMU does);
    /// only a block that starts past the data area is an error.
    pub fn block_location(
        &self,
        block: u64,
        entry: u32,
    ) -> Result<Option<BlockLocation>, DynamicError> {
        if entry == BAT_UNUSED {
            return Ok(None);
        }
        let bitmap_offset = u64::from(entry) * SECTOR_SIZE;
        let data_end = self.file_len.saturating_sub(FOOTER_SIZE as u64);
        if bitmap_offset + u64::from(self.bitmap_size) >= data_end {
            return Err(DynamicError::OutsideFile {
                what: "block",
                offset: bitmap_offset,
                len: u64::from(self.bitmap_size) + u64::from(self.block_size),
                file_len: self.file_len,
            });
        }
        let block_len = u64::from(self.bitmap_size) + u64::from(self.block_size);
        let bat = self.bat_range();
        let bat_len = (bat.end - bat.start).next_multiple_of(SECTOR_SIZE);
        for (what, start, len) in [
            ("footer copy", 0, FOOTER_SIZE as u64),
            ("dynamic header", self.header_offset, HEADER_SIZE as u64),
            ("BAT", bat.start, bat_len),
        ] {
            if bitmap_offset < start.saturating_add(len) && start < bitmap_offset + block_len {
                return Err(DynamicError::BlockOverlapsMetadata {
                    block,
                    offset: bitmap_offset,
                    what,
                });
            }
        }
        Ok(Some(BlockLocation {
            bitmap_offset,
            data_offset: bitmap_offset + u64::from(self.bitmap_size),
        }))
    }

    /// Decodes and checks a run of raw BAT bytes holding the entries of
    /// blocks `first_block..`: each allocated entry through
    /// [`DynamicLayout::block_location`], and no two entries naming the
    /// same block of the file. Entries past `block_count` are ignored.
    pub fn decode_bat(
        &self,
        first_block: u64,
        raw: &[u8],
    ) -> Result<Vec<Option<BlockLocation>>, DynamicError> {
        let mut out = Vec::with_capacity(raw.len() / 4);
        let mut seen: Vec<(u64, u64)> = Vec::new();
        for (i, chunk) in raw.chunks_exact(4).enumerate() {
            let block = first_block + i as u64;
            if block >= self.block_count {
                break;
            }
            let entry = be_u32(chunk, 0);
            let loc = self.block_location(block, entry)?;
            if let Some(l) = loc {
                seen.push((l.bitmap_offset, block));
            }
            out.push(loc);
        }
        seen.sort_unstable();
        let block_len = u64::from(self.bitmap_size) + u64::from(self.block_size);
        for pair in seen.windows(2) {
            let ((a_off, a), (b_off, b)) = (pair[0], pair[1]);
            if b_off < a_off + block_len {
                return Err(DynamicError::BlocksShareStorage {
                    first: a.min(b),
                    second: a.max(b),
                    offset: b_off,
                });
            }
        }
        Ok(out)
    }

    /// Sectors per block.
    pub fn sectors_per_block(&self) -> u64 {
        u64::from(self.block_size) / SECTOR_SIZE
    }
}

/// Whether sector `index` of a block is present according to its sector
/// bitmap (most significant bit first). A bit beyond the bitmap reads as
/// present (the caller sized the bitmap from the layout, so this does not
/// happen for checked input).
pub fn bitmap_bit(bitmap: &[u8], index: u64) -> bool {
    let byte = (index / 8) as usize;
    let bit = 7 - (index % 8) as u32;
    bitmap.get(byte).is_none_or(|b| (b >> bit) & 1 == 1)
}

/// Builds a dynamic VHD1 file in memory from `data` (for tests): blocks
/// that are all zeros are left unallocated, the others get a bitmap with
/// every bit set. Returns the file bytes.
pub fn build_dynamic(data: &[u8], block_size: u32, unique_id: [u8; 16]) -> Vec<u8> {
    let size = (data.len() as u64).next_multiple_of(SECTOR_SIZE);
    let mut footer = Footer::new_fixed(size, unique_id).unwrap_or_else(|_| unreachable!());
    footer.disk_type = DISK_TYPE_DYNAMIC;
    footer.data_offset = FOOTER_SIZE as u64;
    let bs = u64::from(block_size);
    let blocks = size.div_ceil(bs);
    let bat_offset = (FOOTER_SIZE + HEADER_SIZE) as u64;
    let bat_bytes = (blocks * BAT_ENTRY_SIZE).next_multiple_of(SECTOR_SIZE);
    let header = DynamicHeader {
        table_offset: bat_offset,
        max_table_entries: blocks as u32,
        block_size,
        parent_unique_id: [0; 16],
        parent_name: String::new(),
    };
    let bitmap_size = (bs / SECTOR_SIZE).div_ceil(8).next_multiple_of(SECTOR_SIZE) as usize;
    let mut out = Vec::new();
    out.extend_from_slice(&footer.to_bytes());
    out.extend_from_slice(&header.to_bytes());
    out.resize((bat_offset + bat_bytes) as usize, 0xff);
    for b in 0..blocks {
        let start = (b * bs) as usize;
        let end = ((b + 1) * bs).min(data.len() as u64) as usize;
        let chunk = data.get(start..end).unwrap_or_default();
        let entry_at = (bat_offset + b * BAT_ENTRY_SIZE) as usize;
        if chunk.iter().all(|&x| x == 0) {
            out[entry_at..entry_at + 4].copy_from_slice(&BAT_UNUSED.to_be_bytes());
            continue;
        }
        let sector = (out.len() as u64 / SECTOR_SIZE) as u32;
        out[entry_at..entry_at + 4].copy_from_slice(&sector.to_be_bytes());
        out.resize(out.len() + bitmap_size, 0xff);
        let data_start = out.len();
        out.resize(data_start + bs as usize, 0);
        out[data_start..data_start + chunk.len()].copy_from_slice(chunk);
    }
    out.extend_from_slice(&footer.to_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [7; 16];

    fn parse_file(file: &[u8]) -> Result<DynamicLayout, DynamicError> {
        let footer = Footer::parse(file[..512].try_into().unwrap()).unwrap();
        let off = footer.data_offset as usize;
        let header = DynamicHeader::parse(&file[off..]);
        DynamicLayout::new(
            &footer,
            header.as_ref().map_err(Clone::clone),
            file.len() as u64,
        )
    }

    fn sample() -> (Vec<u8>, Vec<u8>) {
        let mut data = vec![0u8; 5 << 20];
        data[100] = 1;
        data[(4 << 20) + 7] = 2;
        (build_dynamic(&data, 2 << 20, ID), data)
    }

    #[test]
    fn layout_of_a_built_file() {
        let (file, _) = sample();
        let l = parse_file(&file).unwrap();
        assert_eq!(l.disk_size, 5 << 20);
        assert_eq!(l.block_count, 3);
        assert_eq!(l.bitmap_size, 512);
        let bat = &file[l.bat_range().start as usize..l.bat_range().end as usize];
        let locs = l.decode_bat(0, bat).unwrap();
        assert!(locs[0].is_some());
        assert!(locs[1].is_none());
        let loc2 = locs[2].unwrap();
        assert_eq!(file[(loc2.data_offset + 7) as usize], 2);
        let bitmap = &file[loc2.bitmap_offset as usize..loc2.data_offset as usize];
        assert!(bitmap_bit(bitmap, 0));
        assert_eq!(l.block_of((4 << 20) + 7), (2, 7));
    }

    #[test]
    fn bitmap_bits_are_msb_first() {
        let bitmap = [0b1000_0001u8, 0];
        assert!(bitmap_bit(&bitmap, 0));
        assert!(!bitmap_bit(&bitmap, 1));
        assert!(bitmap_bit(&bitmap, 7));
        assert!(!bitmap_bit(&bitmap, 8));
    }

    #[test]
    fn header_errors() {
        let (file, _) = sample();
        let hdr = &file[512..1536];
        assert!(DynamicHeader::parse(&hdr[..100]).is_err());
        let mut bad = hdr.to_vec();
        bad[0] = b'x';
        assert_eq!(DynamicHeader::parse(&bad), Err(DynamicError::BadCookie));
        let mut bad = hdr.to_vec();
        bad[offsets::BLOCK_SIZE] ^= 1;
        assert!(matches!(
            DynamicHeader::parse(&bad),
            Err(DynamicError::BadChecksum { .. })
        ));
    }

    fn with_header(file: &[u8], f: impl FnOnce(&mut DynamicHeader)) -> Vec<u8> {
        let mut file = file.to_vec();
        let mut h = DynamicHeader::parse(&file[512..1536]).unwrap();
        f(&mut h);
        file[512..1536].copy_from_slice(&h.to_bytes());
        file
    }

    #[test]
    fn bad_geometry_is_refused() {
        let (file, _) = sample();
        let f = with_header(&file, |h| h.block_size = 3 << 20);
        assert_eq!(parse_file(&f), Err(DynamicError::BadBlockSize(3 << 20)));
        let f = with_header(&file, |h| h.max_table_entries = 2);
        assert!(matches!(
            parse_file(&f),
            Err(DynamicError::BatTooSmall { .. })
        ));
        let f = with_header(&file, |h| h.table_offset = u64::MAX - 2);
        let e = parse_file(&f).unwrap_err();
        assert!(
            matches!(e, DynamicError::OutsideFile { what: "BAT", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("BAT"), "{e}");
    }

    #[test]
    fn bat_entries_past_the_end_into_metadata_or_shared_are_refused() {
        let (file, _) = sample();
        let l = parse_file(&file).unwrap();
        let e = l.block_location(0, u32::MAX - 1).unwrap_err();
        assert!(
            matches!(e, DynamicError::OutsideFile { what: "block", .. }),
            "{e}"
        );
        // Pointing at the BAT itself (a loop back into metadata).
        let e = l
            .block_location(1, (l.bat_offset / 512) as u32)
            .unwrap_err();
        assert!(
            matches!(e, DynamicError::BlockOverlapsMetadata { what: "BAT", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("block 1"), "{e}");
        // Two blocks at one place.
        let bat = &file[l.bat_range().start as usize..l.bat_range().end as usize];
        let mut bat = bat.to_vec();
        let first = bat[..4].to_vec();
        bat[8..12].copy_from_slice(&first);
        let e = l.decode_bat(0, &bat).unwrap_err();
        assert!(
            matches!(
                e,
                DynamicError::BlocksShareStorage {
                    first: 0,
                    second: 2,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn differencing_names_its_parent() {
        let (mut file, _) = sample();
        let mut footer = Footer::parse(file[..512].try_into().unwrap()).unwrap();
        footer.disk_type = DISK_TYPE_DIFFERENCING;
        file[..512].copy_from_slice(&footer.to_bytes());
        let mut hdr: [u8; 1024] = file[512..1536].try_into().unwrap();
        for (i, u) in "base.vhd".encode_utf16().enumerate() {
            hdr[offsets::PARENT_NAME + 2 * i..offsets::PARENT_NAME + 2 * i + 2]
                .copy_from_slice(&u.to_be_bytes());
        }
        let c = header_checksum(&hdr);
        hdr[offsets::CHECKSUM..offsets::CHECKSUM + 4].copy_from_slice(&c.to_be_bytes());
        file[512..1536].copy_from_slice(&hdr);
        let e = parse_file(&file).unwrap_err();
        assert_eq!(
            e,
            DynamicError::Differencing {
                parent: "base.vhd".into()
            }
        );
        assert!(e.to_string().contains("base.vhd"), "{e}");
    }

    /// Arbitrary bytes never panic the parsers (bounded, seeded).
    #[test]
    fn fuzz_arbitrary_bytes() {
        let (file, _) = sample();
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut f = file.clone();
            // Mutate a few bytes in the metadata area.
            for _ in 0..(next() % 8 + 1) {
                let at = (next() % 4096) as usize;
                f[at] = next() as u8;
            }
            if next() % 4 == 0 {
                let mut h = [0u8; 1024];
                for b in h.iter_mut() {
                    *b = next() as u8;
                }
                let _ = DynamicHeader::parse(&h);
            }
            let Ok(footer) = Footer::parse(f[..512].try_into().unwrap()) else {
                continue;
            };
            let off = footer.data_offset.min(f.len() as u64) as usize;
            let header = DynamicHeader::parse(&f[off..]);
            let len = f.len() as u64 - next() % 1024;
            if let Ok(l) = DynamicLayout::new(&footer, header.as_ref().map_err(Clone::clone), len) {
                let r = l.bat_range();
                if let Some(bat) = f.get(r.start as usize..r.end as usize) {
                    let _ = l.decode_bat(0, bat);
                }
                let _ = l.block_location(next() % 4, next() as u32);
            }
        }
    }
}
