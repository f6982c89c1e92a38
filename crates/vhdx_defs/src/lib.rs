//! On-disk definitions of VHDX ("[MS-VHDX]: Virtual Hard Disk v2 (VHDX)
//! File Format", version 1) for a read-only reader: the file identifier,
//! the two headers, the region table, the metadata region and the block
//! allocation table (BAT), with CRC-32C checks.
//!
//! Position in the data flow: `disk_sparse` fetches the bytes (the first
//! 320 KiB, the metadata table and items, pieces of the BAT) through its
//! cached metadata reader and hands them to the parsers here; the parsers
//! never do I/O. The results tell it the disk's size and sector sizes, its
//! identity (the data write GUID, the read cache's key) and, per payload
//! block, whether the block reads as zeros or where it lies in the file.
//!
//! Model (all integers little-endian, GUIDs in their usual mixed-endian
//! byte order):
//!
//! ```text
//! 0      file identifier "vhdxfile" + creator      (64 KiB)
//! 64K    header 1 "head", CRC-32C, sequence number  (4 KiB)
//! 128K   header 2                                  (4 KiB)
//! 192K   region table 1 "regi", CRC-32C            (64 KiB)
//! 256K   region table 2                            (64 KiB)
//! ...    log, metadata region, BAT region, payload blocks (1 MiB aligned)
//! ```
//!
//! Invariants:
//! - Every parser takes bytes, checks signature, then CRC-32C, then
//!   fields, and returns a typed [`VhdxError`] that names the structure;
//!   nothing panics on any input.
//! - Nothing allocates in proportion to a count read from the file beyond
//!   the fixed maxima of the format (2047 region and metadata entries);
//!   BAT pieces are decoded from bytes the caller bounded.
//! - The current header is the valid one with the higher sequence number;
//!   a header whose log GUID is set is accepted only when
//!   [`log_has_entries`] finds no valid log entry: a log that must be
//!   replayed is [`VhdxError::LogNotEmpty`].
//! - Differencing disks (a parent) are [`VhdxError::Differencing`];
//!   unknown regions or metadata items marked required are refused.
//!
//! DEVNOTE: over 800 lines, kept whole: it is one format's on-disk
//! structures in file order (identifier, headers, log check, region
//! table, metadata, BAT), each section short and checked by the next;
//! the error type and the GUID constants take a third, and the image
//! builder at the end (for tests and tools) another hundred lines. The
//! unit tests are in `tests.rs`.

#![forbid(unsafe_code)]

use std::fmt;
use std::ops::Range;

/// 1 KiB.
pub const KIB: u64 = 1024;
/// 1 MiB: the alignment of regions and payload blocks.
pub const MIB: u64 = 1 << 20;
/// The file identifier signature at offset 0.
pub const FILE_SIGNATURE: [u8; 8] = *b"vhdxfile";
/// Offsets of the two headers.
pub const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
/// Size of a header structure (the CRC covers all of it).
pub const HEADER_SIZE: usize = 4096;
/// Offsets of the two region tables.
pub const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
/// Size of a region table (the CRC covers all of it).
pub const REGION_TABLE_SIZE: usize = 64 * 1024;
/// End of the fixed structures (file identifier, headers, region tables):
/// reading `0..HEADER_AREA_END` gives everything [`FileHeaders::parse`]
/// needs.
pub const HEADER_AREA_END: u64 = 320 * KIB;
/// The header section (file identifier .. region tables plus reserved
/// space) that nothing else may overlap.
pub const HEADER_SECTION_SIZE: u64 = MIB;
/// Size of the metadata table at the start of the metadata region.
pub const METADATA_TABLE_SIZE: usize = 64 * 1024;
/// Most entries of a region table or a metadata table.
pub const MAX_TABLE_ENTRIES: u32 = 2047;
/// Size of a BAT entry.
pub const BAT_ENTRY_SIZE: u64 = 8;
/// The largest virtual disk the format allows (64 TiB).
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Size of the log's unit (entries are multiples of it).
pub const LOG_SECTOR_SIZE: usize = 4096;

/// A GUID in on-disk byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The GUID written `{d1}-{d2}-{d3}-{d4[0..2]}-{d4[2..]}`.
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }

    /// Whether every byte is zero.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    fn read(b: &[u8], off: usize) -> Self {
        let mut g = [0u8; 16];
        g.copy_from_slice(&b[off..off + 16]);
        Guid(g)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{self}}}")
    }
}

/// Region: the block allocation table.
pub const BAT_REGION: Guid = Guid::from_fields(
    0x2DC2_7766,
    0xF623,
    0x4200,
    [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08],
);
/// Region: the metadata region.
pub const METADATA_REGION: Guid = Guid::from_fields(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
/// Metadata item: file parameters (block size, flags).
pub const FILE_PARAMETERS: Guid = Guid::from_fields(
    0xCAA1_6737,
    0xFA36,
    0x4D43,
    [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B],
);
/// Metadata item: virtual disk size.
pub const VIRTUAL_DISK_SIZE: Guid = Guid::from_fields(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
/// Metadata item: virtual disk id.
pub const VIRTUAL_DISK_ID: Guid = Guid::from_fields(
    0xBECA_12AB,
    0xB2E6,
    0x4523,
    [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46],
);
/// Metadata item: logical sector size.
pub const LOGICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0x8141_BF1D,
    0xA96F,
    0x4709,
    [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F],
);
/// Metadata item: physical sector size.
pub const PHYSICAL_SECTOR_SIZE: Guid = Guid::from_fields(
    0xCDA3_48C7,
    0x445D,
    0x4471,
    [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56],
);
/// Metadata item: parent locator (differencing disks).
pub const PARENT_LOCATOR: Guid = Guid::from_fields(
    0xA8D3_5F2D,
    0xB30B,
    0x454D,
    [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C],
);

/// What is wrong with a VHDX file's structures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VhdxError {
    /// Fewer bytes than the structure needs.
    #[error("VHDX {what} truncated: {got} bytes, need {need}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A signature does not match.
    #[error("VHDX {what} has a bad signature (expected {expected:?})")]
    BadSignature {
        /// Which structure.
        what: &'static str,
        /// The signature expected.
        expected: &'static str,
    },
    /// A CRC-32C does not match.
    #[error(
        "VHDX {what} checksum (CRC-32C) mismatch: stored {found:#010x}, computed {expected:#010x}"
    )]
    BadChecksum {
        /// Which structure.
        what: &'static str,
        /// Computed.
        expected: u32,
        /// Stored.
        found: u32,
    },
    /// Neither header is valid.
    #[error("neither VHDX header is valid (header 1: {first}; header 2: {second})")]
    NoValidHeader {
        /// Why header 1 was refused.
        first: Box<VhdxError>,
        /// Why header 2 was refused.
        second: Box<VhdxError>,
    },
    /// Both headers are valid, with the same sequence number, but differ.
    #[error("the two VHDX headers have the same sequence number {0} but differ")]
    AmbiguousHeaders(u64),
    /// Neither region table is valid.
    #[error("neither VHDX region table is valid (table 1: {first}; table 2: {second})")]
    NoValidRegionTable {
        /// Why table 1 was refused.
        first: Box<VhdxError>,
        /// Why table 2 was refused.
        second: Box<VhdxError>,
    },
    /// An unsupported version field.
    #[error("unsupported VHDX {what} version {found}")]
    UnsupportedVersion {
        /// Which version field.
        what: &'static str,
        /// Its value.
        found: u32,
    },
    /// The log holds entries that must be replayed.
    #[error(
        "the VHDX log holds changes that were never written to the image (it was not closed cleanly); \
         open it once with a VHDX-aware tool (Hyper-V, Windows' disk management, or `qemu-img check -r all`) \
         to replay the log, then use it again"
    )]
    LogNotEmpty,
    /// Too many table entries.
    #[error("VHDX {what} has {count} entries, more than the format's 2047")]
    TooManyEntries {
        /// Which table.
        what: &'static str,
        /// The count found.
        count: u32,
    },
    /// A region or item the reader must understand but does not.
    #[error("VHDX {what} {guid} is marked required but is not known to this reader")]
    UnknownRequired {
        /// Region or metadata item.
        what: &'static str,
        /// Its GUID.
        guid: Guid,
    },
    /// A required region or item is missing.
    #[error("VHDX {0} is missing")]
    Missing(&'static str),
    /// A region, item or block lies (partly) outside where it must be.
    #[error("VHDX {what} at offset {offset} ({len} bytes) lies outside {within} ({limit} bytes)")]
    OutOfBounds {
        /// Which structure.
        what: String,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// What it must lie within.
        within: &'static str,
        /// That container's length.
        limit: u64,
    },
    /// A region or block offset that is not 1 MiB aligned.
    #[error("VHDX {what} at offset {offset} is not 1 MiB aligned")]
    Misaligned {
        /// Which structure.
        what: String,
        /// Its offset.
        offset: u64,
    },
    /// Two structures overlap.
    #[error("VHDX {what} at offset {offset} overlaps the {other}: the file is corrupt")]
    Overlap {
        /// Which structure.
        what: String,
        /// Its offset.
        offset: u64,
        /// What it overlaps.
        other: String,
    },
    /// A field has a value the format does not allow.
    #[error("VHDX {what} {value} is invalid: {why}")]
    BadValue {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        why: &'static str,
    },
    /// A differencing disk, which needs its parent.
    #[error(
        "a differencing VHDX cannot be opened on its own: merge it into its parent first \
         (for example with `qemu-img convert -O vhdx`)"
    )]
    Differencing,
    /// A BAT entry in a state that this (non-differencing) disk cannot have.
    #[error("VHDX BAT entry for block {block} has state {state} ({name}), invalid here")]
    BadBlockState {
        /// The payload block.
        block: u64,
        /// The state value.
        state: u8,
        /// Its name.
        name: &'static str,
    },
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C of `data` (as VHDX computes it: initial value all ones, final
/// complement).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_with_zeroed(data, usize::MAX)
}

/// CRC-32C of `data` with the four bytes at `checksum_at` taken as zero.
pub fn crc32c_with_zeroed(data: &[u8], checksum_at: usize) -> u32 {
    let mut crc = !0u32;
    for (i, &b) in data.iter().enumerate() {
        let b = if (checksum_at..checksum_at.saturating_add(4)).contains(&i) {
            0
        } else {
            b
        };
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn le_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(x)
}

fn need<'a>(what: &'static str, b: &'a [u8], n: usize) -> Result<&'a [u8], VhdxError> {
    b.get(..n).ok_or(VhdxError::Truncated {
        what,
        got: b.len(),
        need: n,
    })
}

fn check_crc(what: &'static str, b: &[u8]) -> Result<(), VhdxError> {
    let found = le_u32(b, 4);
    let expected = crc32c_with_zeroed(b, 4);
    if found != expected {
        return Err(VhdxError::BadChecksum {
            what,
            expected,
            found,
        });
    }
    Ok(())
}

/// Checks the file identifier at offset 0 (its signature only; the
/// creator string is informational).
pub fn check_file_identifier(bytes: &[u8]) -> Result<(), VhdxError> {
    if need("file identifier", bytes, 8)? != FILE_SIGNATURE {
        return Err(VhdxError::BadSignature {
            what: "file identifier",
            expected: "vhdxfile",
        });
    }
    Ok(())
}

/// A decoded VHDX header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Which header is current: the valid one with the higher number.
    pub sequence_number: u64,
    /// Changes whenever the file is written.
    pub file_write_guid: Guid,
    /// Changes whenever the virtual disk's data is written: the identity
    /// of the disk's contents.
    pub data_write_guid: Guid,
    /// Non-nil when the log may hold entries to replay.
    pub log_guid: Guid,
    /// Log format version (0).
    pub log_version: u16,
    /// Header version (1).
    pub version: u16,
    /// Length of the log in bytes.
    pub log_length: u32,
    /// Offset of the log.
    pub log_offset: u64,
}

impl Header {
    /// Parses and checks one header: signature "head", CRC-32C over the
    /// 4 KiB, version 1, log version 0.
    pub fn parse(bytes: &[u8]) -> Result<Self, VhdxError> {
        let b = need("header", bytes, HEADER_SIZE)?;
        if &b[..4] != b"head" {
            return Err(VhdxError::BadSignature {
                what: "header",
                expected: "head",
            });
        }
        check_crc("header", b)?;
        let h = Header {
            sequence_number: le_u64(b, 8),
            file_write_guid: Guid::read(b, 16),
            data_write_guid: Guid::read(b, 32),
            log_guid: Guid::read(b, 48),
            log_version: le_u16(b, 64),
            version: le_u16(b, 66),
            log_length: le_u32(b, 68),
            log_offset: le_u64(b, 72),
        };
        if h.version != 1 {
            return Err(VhdxError::UnsupportedVersion {
                what: "header",
                found: h.version.into(),
            });
        }
        if h.log_version != 0 {
            return Err(VhdxError::UnsupportedVersion {
                what: "log",
                found: h.log_version.into(),
            });
        }
        Ok(h)
    }

    /// Encodes the header with a correct CRC (for tests and tools).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[..4].copy_from_slice(b"head");
        b[8..16].copy_from_slice(&self.sequence_number.to_le_bytes());
        b[16..32].copy_from_slice(&self.file_write_guid.0);
        b[32..48].copy_from_slice(&self.data_write_guid.0);
        b[48..64].copy_from_slice(&self.log_guid.0);
        b[64..66].copy_from_slice(&self.log_version.to_le_bytes());
        b[66..68].copy_from_slice(&self.version.to_le_bytes());
        b[68..72].copy_from_slice(&self.log_length.to_le_bytes());
        b[72..80].copy_from_slice(&self.log_offset.to_le_bytes());
        let c = crc32c_with_zeroed(&b, 4);
        b[4..8].copy_from_slice(&c.to_le_bytes());
        b
    }

    /// The log's byte range in the file.
    pub fn log_range(&self) -> Range<u64> {
        self.log_offset..self.log_offset.saturating_add(u64::from(self.log_length))
    }
}

/// Picks the current header from the raw bytes of both: the valid one
/// with the higher sequence number. Two valid headers with the same
/// number must be identical (some tools write them so).
pub fn current_header(first: &[u8], second: &[u8]) -> Result<Header, VhdxError> {
    match (Header::parse(first), Header::parse(second)) {
        (Ok(a), Ok(b)) => {
            if a.sequence_number > b.sequence_number {
                Ok(a)
            } else if b.sequence_number > a.sequence_number {
                Ok(b)
            } else if a == b {
                Ok(a)
            } else {
                Err(VhdxError::AmbiguousHeaders(a.sequence_number))
            }
        }
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(a), Err(b)) => Err(VhdxError::NoValidHeader {
            first: Box::new(a),
            second: Box::new(b),
        }),
    }
}

/// Whether the log (its bytes, `header.log_length` of them) holds a
/// valid entry of this header's log GUID, i.e. whether it must be
/// replayed before the file can be read. A nil log GUID means an empty
/// log without looking.
pub fn log_has_entries(header: &Header, log: &[u8]) -> bool {
    if header.log_guid.is_nil() {
        return false;
    }
    let mut at = 0usize;
    while let Some(entry) = log.get(at..at + LOG_SECTOR_SIZE) {
        if &entry[..4] == b"loge" && Guid::read(entry, 32) == header.log_guid {
            let len = le_u32(entry, 8) as usize;
            if len >= LOG_SECTOR_SIZE
                && len.is_multiple_of(LOG_SECTOR_SIZE)
                && let Some(whole) = log.get(at..at + len)
                && le_u32(whole, 4) == crc32c_with_zeroed(whole, 4)
            {
                return true;
            }
        }
        at += LOG_SECTOR_SIZE;
    }
    false
}

/// One region of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Offset in the file (1 MiB aligned).
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl Region {
    /// The region's byte range.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.length)
    }
}

/// The regions a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    /// The BAT.
    pub bat: Region,
    /// The metadata region.
    pub metadata: Region,
}

fn check_within(
    what: impl Into<String>,
    offset: u64,
    len: u64,
    within: &'static str,
    limit: u64,
) -> Result<(), VhdxError> {
    match offset.checked_add(len) {
        Some(end) if end <= limit => Ok(()),
        _ => Err(VhdxError::OutOfBounds {
            what: what.into(),
            offset,
            len,
            within,
            limit,
        }),
    }
}

fn overlaps(a: Range<u64>, b: Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl Regions {
    /// Parses and checks one region table: signature "regi", CRC-32C over
    /// the 64 KiB, at most 2047 entries, the BAT and metadata regions
    /// present, 1 MiB aligned, inside a file of `file_len` bytes, past the
    /// header section and not overlapping each other; unknown required
    /// regions refused.
    pub fn parse(bytes: &[u8], file_len: u64) -> Result<Self, VhdxError> {
        let b = need("region table", bytes, REGION_TABLE_SIZE)?;
        if &b[..4] != b"regi" {
            return Err(VhdxError::BadSignature {
                what: "region table",
                expected: "regi",
            });
        }
        check_crc("region table", b)?;
        let count = le_u32(b, 8);
        if count > MAX_TABLE_ENTRIES {
            return Err(VhdxError::TooManyEntries {
                what: "region table",
                count,
            });
        }
        let (mut bat, mut metadata) = (None, None);
        for i in 0..count as usize {
            let e = &b[16 + 32 * i..16 + 32 * (i + 1)];
            let guid = Guid::read(e, 0);
            let region = Region {
                offset: le_u64(e, 16),
                length: le_u32(e, 24),
            };
            let required = le_u32(e, 28) & 1 != 0;
            let (slot, name) = if guid == BAT_REGION {
                (&mut bat, "BAT region")
            } else if guid == METADATA_REGION {
                (&mut metadata, "metadata region")
            } else if required {
                return Err(VhdxError::UnknownRequired {
                    what: "region",
                    guid,
                });
            } else {
                continue;
            };
            if !region.offset.is_multiple_of(MIB) || region.offset < HEADER_SECTION_SIZE {
                return Err(VhdxError::Misaligned {
                    what: name.into(),
                    offset: region.offset,
                });
            }
            check_within(
                name,
                region.offset,
                region.length.into(),
                "the file",
                file_len,
            )?;
            *slot = Some(region);
        }
        let bat = bat.ok_or(VhdxError::Missing("BAT region"))?;
        let metadata = metadata.ok_or(VhdxError::Missing("metadata region"))?;
        if overlaps(bat.range(), metadata.range()) {
            return Err(VhdxError::Overlap {
                what: "BAT region".into(),
                offset: bat.offset,
                other: "metadata region".into(),
            });
        }
        if (metadata.length as usize) < METADATA_TABLE_SIZE {
            return Err(VhdxError::BadValue {
                what: "metadata region length",
                value: metadata.length.into(),
                why: "must hold the 64 KiB metadata table",
            });
        }
        Ok(Regions { bat, metadata })
    }
}

/// Everything in the first [`HEADER_AREA_END`] bytes: the current header
/// and the regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeaders {
    /// The current header.
    pub header: Header,
    /// The BAT and metadata regions.
    pub regions: Regions,
}

impl FileHeaders {
    /// Parses the file identifier, picks the current header, and reads the
    /// first valid region table, from the first [`HEADER_AREA_END`] bytes
    /// of a file of `file_len` bytes. The log is checked separately
    /// ([`log_has_entries`]) since it lies elsewhere.
    pub fn parse(area: &[u8], file_len: u64) -> Result<Self, VhdxError> {
        let area = need("header section", area, HEADER_AREA_END as usize)?;
        check_file_identifier(area)?;
        let at = |o: u64, n: usize| &area[o as usize..o as usize + n];
        let header = current_header(
            at(HEADER_OFFSETS[0], HEADER_SIZE),
            at(HEADER_OFFSETS[1], HEADER_SIZE),
        )?;
        if !header.log_guid.is_nil() {
            check_within(
                "log",
                header.log_offset,
                header.log_length.into(),
                "the file",
                file_len,
            )?;
        }
        let regions = match Regions::parse(at(REGION_TABLE_OFFSETS[0], REGION_TABLE_SIZE), file_len)
        {
            Ok(r) => r,
            Err(first) => Regions::parse(at(REGION_TABLE_OFFSETS[1], REGION_TABLE_SIZE), file_len)
                .map_err(|second| VhdxError::NoValidRegionTable {
                    first: Box::new(first),
                    second: Box::new(second),
                })?,
        };
        Ok(FileHeaders { header, regions })
    }
}

/// The metadata items a reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KnownItem {
    /// Block size and flags.
    FileParameters,
    /// Virtual disk size.
    VirtualDiskSize,
    /// Virtual disk id.
    VirtualDiskId,
    /// Logical sector size.
    LogicalSectorSize,
    /// Physical sector size.
    PhysicalSectorSize,
}

impl KnownItem {
    const ALL: [(KnownItem, Guid, u32); 5] = [
        (KnownItem::FileParameters, FILE_PARAMETERS, 8),
        (KnownItem::VirtualDiskSize, VIRTUAL_DISK_SIZE, 8),
        (KnownItem::VirtualDiskId, VIRTUAL_DISK_ID, 16),
        (KnownItem::LogicalSectorSize, LOGICAL_SECTOR_SIZE, 4),
        (KnownItem::PhysicalSectorSize, PHYSICAL_SECTOR_SIZE, 4),
    ];

    fn name(self) -> &'static str {
        match self {
            KnownItem::FileParameters => "file parameters",
            KnownItem::VirtualDiskSize => "virtual disk size",
            KnownItem::VirtualDiskId => "virtual disk id",
            KnownItem::LogicalSectorSize => "logical sector size",
            KnownItem::PhysicalSectorSize => "physical sector size",
        }
    }
}

/// Where one metadata item's bytes are, relative to the metadata region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemLocation {
    /// Which item.
    pub item: KnownItem,
    /// Offset from the start of the metadata region.
    pub offset: u32,
    /// Length in bytes (the size the reader needs).
    pub length: u32,
}

/// Parses the metadata table (the first 64 KiB of the metadata region of
/// `region_len` bytes): signature "metadata", at most 2047 entries, each
/// inside the region past the table; unknown required items refused; a
/// parent locator means a differencing disk. Returns where the items the
/// reader needs are.
pub fn parse_metadata_table(bytes: &[u8], region_len: u32) -> Result<Vec<ItemLocation>, VhdxError> {
    let b = need("metadata table", bytes, METADATA_TABLE_SIZE)?;
    if &b[..8] != b"metadata" {
        return Err(VhdxError::BadSignature {
            what: "metadata table",
            expected: "metadata",
        });
    }
    let count = u32::from(le_u16(b, 10));
    if count > MAX_TABLE_ENTRIES {
        return Err(VhdxError::TooManyEntries {
            what: "metadata table",
            count,
        });
    }
    let mut found = Vec::new();
    for i in 0..count as usize {
        let e = &b[32 + 32 * i..32 + 32 * (i + 1)];
        let guid = Guid::read(e, 0);
        let offset = le_u32(e, 16);
        let length = le_u32(e, 20);
        let required = le_u32(e, 24) & 4 != 0;
        if guid == PARENT_LOCATOR {
            return Err(VhdxError::Differencing);
        }
        let Some(&(item, _, size)) = KnownItem::ALL.iter().find(|(_, g, _)| *g == guid) else {
            if required {
                return Err(VhdxError::UnknownRequired {
                    what: "metadata item",
                    guid,
                });
            }
            continue;
        };
        if length < size {
            return Err(VhdxError::BadValue {
                what: "metadata item length",
                value: length.into(),
                why: "shorter than the item",
            });
        }
        if (offset as usize) < METADATA_TABLE_SIZE {
            return Err(VhdxError::Overlap {
                what: format!("metadata item {}", item.name()),
                offset: offset.into(),
                other: "metadata table".into(),
            });
        }
        check_within(
            format!("metadata item {}", item.name()),
            offset.into(),
            length.into(),
            "the metadata region",
            region_len.into(),
        )?;
        if found.iter().any(|l: &ItemLocation| l.item == item) {
            return Err(VhdxError::BadValue {
                what: "metadata table entries for one item",
                value: 2,
                why: "an item may appear once",
            });
        }
        found.push(ItemLocation {
            item,
            offset,
            length: size,
        });
    }
    for (item, _, _) in KnownItem::ALL {
        if !found.iter().any(|l| l.item == item) {
            return Err(VhdxError::Missing(item.name()));
        }
    }
    Ok(found)
}

/// The disk parameters from the metadata items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskMetadata {
    /// Payload block size (1 MiB ..= 256 MiB, a power of two).
    pub block_size: u32,
    /// The virtual disk size in bytes.
    pub disk_size: u64,
    /// The virtual disk id (identifies the disk, not its contents).
    pub disk_id: Guid,
    /// Logical sector size (512 or 4096).
    pub logical_sector_size: u32,
    /// Physical sector size (512 or 4096).
    pub physical_sector_size: u32,
}

impl DiskMetadata {
    /// Decodes and checks the items (`items[i]` holds the bytes of
    /// `locations[i]`).
    pub fn parse(locations: &[ItemLocation], items: &[&[u8]]) -> Result<Self, VhdxError> {
        let get = |want: KnownItem| -> Result<&[u8], VhdxError> {
            locations
                .iter()
                .zip(items)
                .find(|(l, _)| l.item == want)
                .map(|(l, b)| need(want.name(), b, l.length as usize))
                .unwrap_or(Err(VhdxError::Missing(want.name())))
        };
        let params = get(KnownItem::FileParameters)?;
        let block_size = le_u32(params, 0);
        let flags = le_u32(params, 4);
        if flags & 2 != 0 {
            return Err(VhdxError::Differencing);
        }
        if !block_size.is_power_of_two() || !(1 << 20..=256 << 20).contains(&block_size) {
            return Err(VhdxError::BadValue {
                what: "block size",
                value: block_size.into(),
                why: "must be a power of two from 1 MiB to 256 MiB",
            });
        }
        let sector = |item, what| -> Result<u32, VhdxError> {
            let v = le_u32(get(item)?, 0);
            if v != 512 && v != 4096 {
                return Err(VhdxError::BadValue {
                    what,
                    value: v.into(),
                    why: "must be 512 or 4096",
                });
            }
            Ok(v)
        };
        let logical_sector_size = sector(KnownItem::LogicalSectorSize, "logical sector size")?;
        let physical_sector_size = sector(KnownItem::PhysicalSectorSize, "physical sector size")?;
        let disk_size = le_u64(get(KnownItem::VirtualDiskSize)?, 0);
        if disk_size == 0
            || disk_size > MAX_DISK_SIZE
            || !disk_size.is_multiple_of(logical_sector_size.into())
        {
            return Err(VhdxError::BadValue {
                what: "virtual disk size",
                value: disk_size,
                why: "must be a non-zero multiple of the logical sector size, at most 64 TiB",
            });
        }
        Ok(DiskMetadata {
            block_size,
            disk_size,
            disk_id: Guid::read(get(KnownItem::VirtualDiskId)?, 0),
            logical_sector_size,
            physical_sector_size,
        })
    }
}

/// Payload block states (the low 3 bits of a BAT entry).
pub mod block_state {
    /// Never written: zeros.
    pub const NOT_PRESENT: u8 = 0;
    /// Contents undefined: read as zeros.
    pub const UNDEFINED: u8 = 1;
    /// Explicitly zero.
    pub const ZERO: u8 = 2;
    /// Unmapped (trimmed): read as zeros.
    pub const UNMAPPED: u8 = 3;
    /// Fully present at the entry's file offset.
    pub const FULLY_PRESENT: u8 = 6;
    /// Partly present (differencing disks only).
    pub const PARTIALLY_PRESENT: u8 = 7;

    /// The state's name.
    pub fn name(state: u8) -> &'static str {
        match state {
            NOT_PRESENT => "not present",
            UNDEFINED => "undefined",
            ZERO => "zero",
            UNMAPPED => "unmapped",
            FULLY_PRESENT => "fully present",
            PARTIALLY_PRESENT => "partially present",
            _ => "reserved",
        }
    }
}

/// Where a payload block's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// The block reads as zeros.
    Zero,
    /// The block's data starts at this file offset.
    Present(u64),
}

/// The BAT's geometry and the checks on its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatLayout {
    /// Payload block size.
    pub block_size: u32,
    /// Payload blocks per sector bitmap block (a BAT holds one sector
    /// bitmap entry after every `chunk_ratio` payload entries).
    pub chunk_ratio: u64,
    /// Payload blocks of the disk.
    pub payload_blocks: u64,
    /// The BAT region.
    pub region: Region,
    /// Length of the file.
    pub file_len: u64,
    /// Ranges no payload block may overlap (header section, log,
    /// metadata, BAT), with names.
    reserved: Vec<(Range<u64>, &'static str)>,
}

impl BatLayout {
    /// The BAT of a disk described by `headers` and `meta` in a file of
    /// `file_len` bytes. Checks that the BAT region holds every entry.
    pub fn new(
        headers: &FileHeaders,
        meta: &DiskMetadata,
        file_len: u64,
    ) -> Result<Self, VhdxError> {
        let chunk_ratio =
            ((1u64 << 23) * u64::from(meta.logical_sector_size)) / u64::from(meta.block_size);
        let payload_blocks = meta.disk_size.div_ceil(meta.block_size.into());
        let entries = payload_blocks + (payload_blocks - 1) / chunk_ratio;
        let region = headers.regions.bat;
        check_within(
            "BAT",
            region.offset,
            entries * BAT_ENTRY_SIZE,
            "the BAT region",
            region.offset + u64::from(region.length),
        )?;
        let mut reserved = vec![
            (0..HEADER_SECTION_SIZE, "header section"),
            (headers.regions.metadata.range(), "metadata region"),
            (region.range(), "BAT region"),
        ];
        if !headers.header.log_guid.is_nil() || headers.header.log_length > 0 {
            reserved.push((headers.header.log_range(), "log"));
        }
        Ok(BatLayout {
            block_size: meta.block_size,
            chunk_ratio,
            payload_blocks,
            region,
            file_len,
            reserved,
        })
    }

    /// The index in the BAT of payload block `block`'s entry.
    pub fn entry_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// The file offset of payload block `block`'s entry.
    pub fn entry_offset(&self, block: u64) -> u64 {
        self.region.offset + self.entry_index(block) * BAT_ENTRY_SIZE
    }

    /// Decodes the raw entry of payload block `block`: zeros for the
    /// not-present, undefined, zero and unmapped states; the file offset
    /// for a fully present block, which must be 1 MiB aligned, start
    /// inside the file and overlap no metadata. Partially present and
    /// reserved states are errors (this reader refuses differencing
    /// disks).
    ///
    /// DEVNOTE: a fully present block whose end lies past the end of the
    /// file is accepted; readers fill the missing tail with zeros.
    pub fn decode_entry(&self, block: u64, raw: u64) -> Result<Block, VhdxError> {
        let state = (raw & 7) as u8;
        match state {
            block_state::NOT_PRESENT
            | block_state::UNDEFINED
            | block_state::ZERO
            | block_state::UNMAPPED => Ok(Block::Zero),
            block_state::FULLY_PRESENT => {
                let offset = (raw >> 20) << 20;
                let what = || format!("payload block {block}");
                if offset >= self.file_len {
                    return Err(VhdxError::OutOfBounds {
                        what: what(),
                        offset,
                        len: self.block_size.into(),
                        within: "the file",
                        limit: self.file_len,
                    });
                }
                let range = offset..offset + u64::from(self.block_size);
                if let Some((_, other)) = self
                    .reserved
                    .iter()
                    .find(|(r, _)| overlaps(r.clone(), range.clone()))
                {
                    return Err(VhdxError::Overlap {
                        what: what(),
                        offset,
                        other: (*other).into(),
                    });
                }
                Ok(Block::Present(offset))
            }
            _ => Err(VhdxError::BadBlockState {
                block,
                state,
                name: block_state::name(state),
            }),
        }
    }

    /// Decodes raw BAT bytes starting at entry index `first_index`
    /// (sector bitmap entries are skipped): returns `(block, state)` for
    /// each payload entry, and refuses two blocks stored at one offset.
    pub fn decode_entries(
        &self,
        first_index: u64,
        raw: &[u8],
    ) -> Result<Vec<(u64, Block)>, VhdxError> {
        let mut out = Vec::with_capacity(raw.len() / 8);
        let group = self.chunk_ratio + 1;
        for (i, e) in raw.chunks_exact(8).enumerate() {
            let index = first_index + i as u64;
            if (index + 1).is_multiple_of(group) {
                continue;
            }
            let block = index - index / group;
            if block >= self.payload_blocks {
                break;
            }
            out.push((block, self.decode_entry(block, le_u64(e, 0))?));
        }
        let mut present: Vec<(u64, u64)> = out
            .iter()
            .filter_map(|&(b, s)| match s {
                Block::Present(o) => Some((o, b)),
                Block::Zero => None,
            })
            .collect();
        present.sort_unstable();
        for w in present.windows(2) {
            if w[1].0 < w[0].0 + u64::from(self.block_size) {
                return Err(VhdxError::Overlap {
                    what: format!("payload block {}", w[1].1),
                    offset: w[1].0,
                    other: format!("payload block {}", w[0].1),
                });
            }
        }
        Ok(out)
    }
}

/// Builds a VHDX file in memory from `data` (for tests and tools): 1 MiB
/// log-free layout, metadata at 2 MiB, BAT at 3 MiB, payload from 4 MiB;
/// all-zero blocks are left not present. `logical_sector_size` is 512 or
/// 4096. Returns the file bytes.
pub fn build_vhdx(
    data: &[u8],
    block_size: u32,
    logical_sector_size: u32,
    data_write_guid: Guid,
) -> Vec<u8> {
    let disk_size = (data.len() as u64).next_multiple_of(logical_sector_size.into());
    let bs = u64::from(block_size);
    let blocks = disk_size.div_ceil(bs).max(1);
    let chunk_ratio = ((1u64 << 23) * u64::from(logical_sector_size)) / bs;
    let entries = blocks + (blocks - 1) / chunk_ratio;
    let bat_len = (entries * 8).next_multiple_of(MIB);
    let (meta_off, bat_off) = (2 * MIB, 3 * MIB);
    let mut f = vec![0u8; (bat_off + bat_len) as usize];
    f[..8].copy_from_slice(&FILE_SIGNATURE);
    for (i, &off) in HEADER_OFFSETS.iter().enumerate() {
        let h = Header {
            sequence_number: i as u64,
            file_write_guid: Guid([1; 16]),
            data_write_guid,
            log_guid: Guid::default(),
            log_version: 0,
            version: 1,
            log_length: MIB as u32,
            log_offset: MIB,
        };
        f[off as usize..off as usize + HEADER_SIZE].copy_from_slice(&h.to_bytes());
    }
    let mut rt = vec![0u8; REGION_TABLE_SIZE];
    rt[..4].copy_from_slice(b"regi");
    rt[8..12].copy_from_slice(&2u32.to_le_bytes());
    for (i, (g, off, len)) in [
        (BAT_REGION, bat_off, bat_len),
        (METADATA_REGION, meta_off, MIB),
    ]
    .into_iter()
    .enumerate()
    {
        let e = &mut rt[16 + 32 * i..16 + 32 * (i + 1)];
        e[..16].copy_from_slice(&g.0);
        e[16..24].copy_from_slice(&off.to_le_bytes());
        e[24..28].copy_from_slice(&(len as u32).to_le_bytes());
        e[28..32].copy_from_slice(&1u32.to_le_bytes());
    }
    let c = crc32c_with_zeroed(&rt, 4);
    rt[4..8].copy_from_slice(&c.to_le_bytes());
    for &off in &REGION_TABLE_OFFSETS {
        f[off as usize..off as usize + REGION_TABLE_SIZE].copy_from_slice(&rt);
    }
    let m = meta_off as usize;
    f[m..m + 8].copy_from_slice(b"metadata");
    f[m + 10..m + 12].copy_from_slice(&5u16.to_le_bytes());
    let mut params = [0u8; 8];
    params[..4].copy_from_slice(&block_size.to_le_bytes());
    let items: [(Guid, Vec<u8>); 5] = [
        (FILE_PARAMETERS, params.to_vec()),
        (VIRTUAL_DISK_SIZE, disk_size.to_le_bytes().to_vec()),
        (VIRTUAL_DISK_ID, vec![9; 16]),
        (
            LOGICAL_SECTOR_SIZE,
            logical_sector_size.to_le_bytes().to_vec(),
        ),
        (PHYSICAL_SECTOR_SIZE, 4096u32.to_le_bytes().to_vec()),
    ];
    let mut item_off = METADATA_TABLE_SIZE;
    for (i, (g, bytes)) in items.iter().enumerate() {
        let e = m + 32 + 32 * i;
        f[e..e + 16].copy_from_slice(&g.0);
        f[e + 16..e + 20].copy_from_slice(&(item_off as u32).to_le_bytes());
        f[e + 20..e + 24].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
        f[e + 24..e + 28].copy_from_slice(&4u32.to_le_bytes());
        f[m + item_off..m + item_off + bytes.len()].copy_from_slice(bytes);
        item_off += 32;
    }
    for b in 0..blocks {
        let start = (b * bs) as usize;
        let end = ((b + 1) * bs).min(data.len() as u64) as usize;
        let chunk = data.get(start..end).unwrap_or_default();
        let index = b + b / chunk_ratio;
        let at = (bat_off + index * 8) as usize;
        if chunk.iter().all(|&x| x == 0) {
            f[at..at + 8].copy_from_slice(&u64::from(block_state::ZERO).to_le_bytes());
            continue;
        }
        let off = f.len() as u64;
        f.resize((off + bs) as usize, 0);
        f[off as usize..off as usize + chunk.len()].copy_from_slice(chunk);
        let entry = off | u64::from(block_state::FULLY_PRESENT);
        f[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    }
    f
}

#[cfg(test)]
mod tests;
