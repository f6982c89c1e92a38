//! On-disk definitions of the VHD1 ("Virtual Hard Disk Image Format
//! Specification", version 1.0) footer, with a parser, a validator for
//! fixed disks and a writer; the dynamic disk header, BAT and sector
//! bitmaps are in [`dynamic`].
//!
//! Position in the data flow: `disk_blob`'s `BlobDisk::new_fixed_vhd1`
//! reads the last [`FOOTER_SIZE`] bytes of a blob (local file or HTTP) and
//! hands them to [`Footer::parse`], then to [`validate_fixed`]; the petri
//! wiring uses [`Footer::unique_id_hex`] as the read-cache key of a VHD.
//! Tests and tools use [`Footer::new_fixed`] and [`Footer::to_bytes`] to
//! build fixed VHDs (raw data followed by a footer).
//!
//! Model: a fixed VHD1 is `current_size` bytes of raw disk data followed by
//! a 512-byte footer. All multi-byte footer fields are big-endian. The
//! footer's checksum is the one's complement of the byte-wise sum of the
//! footer with the checksum field taken as zero.
//!
//! Invariants:
//! - [`Footer::parse`] never panics; it checks the cookie, the checksum and
//!   the format version, in that order, and returns a typed [`FooterError`].
//! - [`validate_fixed`] checks what a reader of a *fixed* disk relies on:
//!   disk type 2, a size that is a whole number of 512-byte sectors, and a
//!   size that fits before the footer.
//! - [`Footer::to_bytes`] always writes a correct checksum, so
//!   `Footer::parse(&f.to_bytes())` round-trips.
//!
//! Dynamic disks ([`dynamic`]) are read by `disk_sparse`; differencing
//! disks (which need their parent) are refused with
//! [`dynamic::DynamicError::Differencing`].
//!
//! DEVNOTE: `data_offset` is not validated for fixed disks. The spec says
//! it is `0xFFFFFFFFFFFFFFFF` for a fixed disk (and [`Footer::new_fixed`]
//! writes that), but a reader of a fixed disk never uses it, and refusing
//! an otherwise valid image over an unused field helps no one.

#![forbid(unsafe_code)]

pub mod dynamic;

use std::fmt;

/// Size of the VHD1 footer in bytes.
pub const FOOTER_SIZE: usize = 512;
/// Sector size of a VHD1 disk in bytes.
pub const SECTOR_SIZE: u64 = 512;
/// The footer cookie.
pub const COOKIE: [u8; 8] = *b"conectix";
/// The "reserved" feature bit, which the spec says must always be set.
pub const FEATURES_RESERVED: u32 = 0x0000_0002;
/// The "temporary" feature bit.
pub const FEATURES_TEMPORARY: u32 = 0x0000_0001;
/// The only file format version defined by the spec (major 1, minor 0).
pub const FORMAT_VERSION: u32 = 0x0001_0000;
/// The data offset a fixed disk stores (there is no dynamic header).
pub const FIXED_DATA_OFFSET: u64 = u64::MAX;
/// Disk type: fixed.
pub const DISK_TYPE_FIXED: u32 = 2;
/// Disk type: dynamic.
pub const DISK_TYPE_DYNAMIC: u32 = 3;
/// Disk type: differencing.
pub const DISK_TYPE_DIFFERENCING: u32 = 4;
/// Creator application written by [`Footer::new_fixed`].
pub const DEFAULT_CREATOR_APP: [u8; 4] = *b"vmmt";
/// Creator version written by [`Footer::new_fixed`].
pub const DEFAULT_CREATOR_VERSION: u32 = 0x0001_0000;
/// Creator host OS "Wi2k" (Windows), as written by [`Footer::new_fixed`].
pub const CREATOR_HOST_OS_WINDOWS: [u8; 4] = *b"Wi2k";
/// Creator host OS "Mac ".
pub const CREATOR_HOST_OS_MAC: [u8; 4] = *b"Mac ";
/// The largest disk size the CHS geometry can describe:
/// 65535 cylinders * 16 heads * 255 sectors per track * 512 bytes.
/// Larger disks are still valid; their geometry is clamped to this.
pub const MAX_CHS_SECTORS: u64 = 65535 * 16 * 255;

/// Byte offsets of the footer fields.
pub mod offsets {
    /// Cookie, 8 bytes.
    pub const COOKIE: usize = 0;
    /// Features, u32.
    pub const FEATURES: usize = 8;
    /// File format version, u32.
    pub const FORMAT_VERSION: usize = 12;
    /// Data offset, u64.
    pub const DATA_OFFSET: usize = 16;
    /// Time stamp (seconds since 2000-01-01 00:00:00 UTC), u32.
    pub const TIMESTAMP: usize = 24;
    /// Creator application, 4 bytes.
    pub const CREATOR_APP: usize = 28;
    /// Creator version, u32.
    pub const CREATOR_VERSION: usize = 32;
    /// Creator host OS, 4 bytes.
    pub const CREATOR_HOST_OS: usize = 36;
    /// Original size, u64.
    pub const ORIGINAL_SIZE: usize = 40;
    /// Current size, u64.
    pub const CURRENT_SIZE: usize = 48;
    /// Disk geometry, u32 (cylinders u16, heads u8, sectors per track u8).
    pub const DISK_GEOMETRY: usize = 56;
    /// Disk type, u32.
    pub const DISK_TYPE: usize = 60;
    /// Checksum, u32.
    pub const CHECKSUM: usize = 64;
    /// Unique id, 16 bytes.
    pub const UNIQUE_ID: usize = 68;
    /// Saved state, 1 byte.
    pub const SAVED_STATE: usize = 84;
    /// Start of the reserved (zero) area, which runs to the end of the footer.
    pub const RESERVED: usize = 85;
}

/// Errors from parsing or validating a VHD1 footer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FooterError {
    /// The first 8 bytes are not `conectix`: this is not a VHD1 footer.
    #[error("not a VHD1 footer: bad cookie {}, expected \"conectix\"", Escaped(.found))]
    BadCookie {
        /// The bytes found where the cookie should be.
        found: [u8; 8],
    },
    /// The stored checksum does not match the footer contents.
    #[error("VHD1 footer checksum mismatch: stored {found:#010x}, computed {expected:#010x}")]
    BadChecksum {
        /// The checksum computed from the footer bytes.
        expected: u32,
        /// The checksum stored in the footer.
        found: u32,
    },
    /// The file format version is not 0x00010000.
    #[error("unsupported VHD1 format version {0:#010x}, expected 0x00010000")]
    UnsupportedVersion(u32),
    /// The disk is not a fixed disk (the value is the footer's disk type).
    #[error("VHD1 disk type {0} ({name}) is not supported, only fixed (2) disks are", name = disk_type_name(*.0))]
    NotFixed(u32),
    /// The current size is not a whole number of 512-byte sectors.
    #[error("VHD1 current size {0} is not a multiple of 512")]
    SizeNotSectorMultiple(u64),
    /// The blob is too short to hold the data the footer declares plus the footer.
    #[error(
        "VHD1 current size {current_size} does not fit before the footer in a blob of {blob_len} bytes (need at least {} bytes)",
        .current_size.saturating_add(FOOTER_SIZE as u64)
    )]
    SizeTooLarge {
        /// The footer's current size.
        current_size: u64,
        /// The blob length.
        blob_len: u64,
    },
    /// The blob is shorter than a footer.
    #[error("blob of {0} bytes is too short to hold a 512-byte VHD1 footer")]
    BlobTooShort(u64),
}

/// Displays bytes as an escaped ASCII string, for error messages.
struct Escaped<'a>(&'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in std::ascii::escape_default(b) {
                f.write_str(
                    // escape_default yields ASCII only.
                    char::from(c).encode_utf8(&mut [0; 4]),
                )?;
            }
        }
        f.write_str("\"")
    }
}

/// A human-readable name of a VHD1 disk type.
pub fn disk_type_name(disk_type: u32) -> &'static str {
    match disk_type {
        0 => "none",
        DISK_TYPE_FIXED => "fixed",
        DISK_TYPE_DYNAMIC => "dynamic",
        DISK_TYPE_DIFFERENCING => "differencing",
        1 | 5 | 6 => "reserved (deprecated)",
        _ => "unknown",
    }
}

/// CHS disk geometry as stored in the footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Geometry {
    /// Number of cylinders.
    pub cylinders: u16,
    /// Number of heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors_per_track: u8,
}

impl Geometry {
    /// Computes the geometry of a disk of `disk_size` bytes with the
    /// algorithm from the VHD1 specification (appendix "CHS calculation").
    ///
    /// Disks larger than [`MAX_CHS_SECTORS`] sectors get the maximum
    /// geometry (65535/16/255).
    pub fn from_disk_size(disk_size: u64) -> Self {
        let total_sectors = (disk_size / SECTOR_SIZE).min(MAX_CHS_SECTORS);
        let (sectors_per_track, heads, cylinders_times_heads): (u64, u64, u64);
        if total_sectors >= 65535 * 16 * 63 {
            sectors_per_track = 255;
            heads = 16;
            cylinders_times_heads = total_sectors / sectors_per_track;
        } else {
            let mut spt = 17;
            let mut cth = total_sectors / spt;
            let mut h = cth.div_ceil(1024).max(4);
            if cth >= h * 1024 || h > 16 {
                spt = 31;
                h = 16;
                cth = total_sectors / spt;
            }
            if cth >= h * 1024 {
                spt = 63;
                h = 16;
                cth = total_sectors / spt;
            }
            sectors_per_track = spt;
            heads = h;
            cylinders_times_heads = cth;
        }
        let cylinders = cylinders_times_heads / heads;
        // All three fit by construction: total_sectors is clamped, so
        // cylinders <= 65535, heads <= 16, sectors_per_track <= 255.
        Self {
            cylinders: u16::try_from(cylinders).unwrap_or(u16::MAX),
            heads: u8::try_from(heads).unwrap_or(u8::MAX),
            sectors_per_track: u8::try_from(sectors_per_track).unwrap_or(u8::MAX),
        }
    }

    /// Decodes the footer's big-endian geometry field.
    pub fn from_u32(raw: u32) -> Self {
        let [c0, c1, heads, sectors_per_track] = raw.to_be_bytes();
        Self {
            cylinders: u16::from_be_bytes([c0, c1]),
            heads,
            sectors_per_track,
        }
    }

    /// Encodes the geometry as the footer's big-endian field value.
    pub fn to_u32(self) -> u32 {
        let [c0, c1] = self.cylinders.to_be_bytes();
        u32::from_be_bytes([c0, c1, self.heads, self.sectors_per_track])
    }

    /// Number of sectors the geometry addresses (C * H * S).
    pub fn sectors(self) -> u64 {
        u64::from(self.cylinders) * u64::from(self.heads) * u64::from(self.sectors_per_track)
    }
}

/// Computes the footer checksum: the one's complement of the sum of all
/// footer bytes, with the checksum field (bytes 64..68) taken as zero.
pub fn checksum(footer: &[u8; FOOTER_SIZE]) -> u32 {
    let sum = footer
        .iter()
        .enumerate()
        .filter(|(i, _)| !(offsets::CHECKSUM..offsets::CHECKSUM + 4).contains(i))
        .fold(0u32, |acc, (_, &b)| acc.wrapping_add(u32::from(b)));
    !sum
}

/// Recomputes and stores the checksum of a raw footer in place. Useful for
/// tests that corrupt one field and want only that field to be wrong.
pub fn fix_checksum(footer: &mut [u8; FOOTER_SIZE]) {
    let c = checksum(footer);
    footer[offsets::CHECKSUM..offsets::CHECKSUM + 4].copy_from_slice(&c.to_be_bytes());
}

/// The offset of the footer in a blob of `blob_len` bytes (the last 512
/// bytes), or an error if the blob is shorter than a footer.
pub fn footer_offset(blob_len: u64) -> Result<u64, FooterError> {
    blob_len
        .checked_sub(FOOTER_SIZE as u64)
        .ok_or(FooterError::BlobTooShort(blob_len))
}

/// A decoded VHD1 footer. The cookie is implied (a `Footer` only exists
/// for bytes whose cookie was `conectix`, or was built by
/// [`Footer::new_fixed`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Footer {
    /// Feature bits ([`FEATURES_RESERVED`] is always set by well-formed writers).
    pub features: u32,
    /// File format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// Absolute offset of the dynamic disk header; [`FIXED_DATA_OFFSET`] for fixed disks.
    pub data_offset: u64,
    /// Creation time, seconds since 2000-01-01 00:00:00 UTC.
    pub timestamp: u32,
    /// Creator application (four ASCII characters).
    pub creator_app: [u8; 4],
    /// Creator version.
    pub creator_version: u32,
    /// Creator host OS ([`CREATOR_HOST_OS_WINDOWS`] or [`CREATOR_HOST_OS_MAC`]).
    pub creator_host_os: [u8; 4],
    /// Size of the disk at creation, in bytes.
    pub original_size: u64,
    /// Current size of the disk, in bytes. This is the size the guest sees.
    pub current_size: u64,
    /// CHS geometry.
    pub geometry: Geometry,
    /// Disk type ([`DISK_TYPE_FIXED`], [`DISK_TYPE_DYNAMIC`], [`DISK_TYPE_DIFFERENCING`]).
    pub disk_type: u32,
    /// The checksum stored in the footer. [`Footer::to_bytes`] ignores it
    /// and always writes the correct checksum.
    pub checksum: u32,
    /// Unique id of the disk (identifies the image; used as a cache key).
    pub unique_id: [u8; 16],
    /// Saved-state flag (1 if the disk is in a saved state).
    pub saved_state: u8,
}

fn be_u32(b: &[u8; FOOTER_SIZE], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn be_u64(b: &[u8; FOOTER_SIZE], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(x)
}

fn arr<const N: usize>(b: &[u8; FOOTER_SIZE], off: usize) -> [u8; N] {
    let mut x = [0u8; N];
    x.copy_from_slice(&b[off..off + N]);
    x
}

impl Footer {
    /// Decodes the fields of a footer without validating anything (not even
    /// the cookie). Prefer [`Footer::parse`].
    pub fn decode_unchecked(bytes: &[u8; FOOTER_SIZE]) -> Self {
        Self {
            features: be_u32(bytes, offsets::FEATURES),
            format_version: be_u32(bytes, offsets::FORMAT_VERSION),
            data_offset: be_u64(bytes, offsets::DATA_OFFSET),
            timestamp: be_u32(bytes, offsets::TIMESTAMP),
            creator_app: arr(bytes, offsets::CREATOR_APP),
            creator_version: be_u32(bytes, offsets::CREATOR_VERSION),
            creator_host_os: arr(bytes, offsets::CREATOR_HOST_OS),
            original_size: be_u64(bytes, offsets::ORIGINAL_SIZE),
            current_size: be_u64(bytes, offsets::CURRENT_SIZE),
            geometry: Geometry::from_u32(be_u32(bytes, offsets::DISK_GEOMETRY)),
            disk_type: be_u32(bytes, offsets::DISK_TYPE),
            checksum: be_u32(bytes, offsets::CHECKSUM),
            unique_id: arr(bytes, offsets::UNIQUE_ID),
            saved_state: bytes[offsets::SAVED_STATE],
        }
    }

    /// Parses and checks a footer: cookie, then checksum, then format
    /// version. Does not check the disk type or sizes; see
    /// [`validate_fixed`] (or [`Footer::parse_fixed`], which does both).
    pub fn parse(bytes: &[u8; FOOTER_SIZE]) -> Result<Self, FooterError> {
        let cookie: [u8; 8] = arr(bytes, offsets::COOKIE);
        if cookie != COOKIE {
            return Err(FooterError::BadCookie { found: cookie });
        }
        let footer = Self::decode_unchecked(bytes);
        let expected = checksum(bytes);
        if footer.checksum != expected {
            return Err(FooterError::BadChecksum {
                expected,
                found: footer.checksum,
            });
        }
        if footer.format_version != FORMAT_VERSION {
            return Err(FooterError::UnsupportedVersion(footer.format_version));
        }
        Ok(footer)
    }

    /// Parses the footer of a fixed disk held in a blob of `blob_len`
    /// bytes: [`Footer::parse`] followed by [`validate_fixed`].
    pub fn parse_fixed(bytes: &[u8; FOOTER_SIZE], blob_len: u64) -> Result<Self, FooterError> {
        let footer = Self::parse(bytes)?;
        validate_fixed(&footer, blob_len)?;
        Ok(footer)
    }

    /// Builds the footer of a fixed disk of `size` bytes (which must be a
    /// multiple of 512) with the given unique id. The timestamp is 0 (so the
    /// same inputs always give the same bytes); set
    /// [`Footer::timestamp`] if a real time is wanted.
    pub fn new_fixed(size: u64, unique_id: [u8; 16]) -> Result<Self, FooterError> {
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(FooterError::SizeNotSectorMultiple(size));
        }
        let mut footer = Self {
            features: FEATURES_RESERVED,
            format_version: FORMAT_VERSION,
            data_offset: FIXED_DATA_OFFSET,
            timestamp: 0,
            creator_app: DEFAULT_CREATOR_APP,
            creator_version: DEFAULT_CREATOR_VERSION,
            creator_host_os: CREATOR_HOST_OS_WINDOWS,
            original_size: size,
            current_size: size,
            geometry: Geometry::from_disk_size(size),
            disk_type: DISK_TYPE_FIXED,
            checksum: 0,
            unique_id,
            saved_state: 0,
        };
        footer.checksum = checksum(&footer.to_bytes());
        Ok(footer)
    }

    /// Encodes the footer, writing the cookie, zeroed reserved bytes and a
    /// freshly computed checksum (the [`Footer::checksum`] field is ignored).
    pub fn to_bytes(&self) -> [u8; FOOTER_SIZE] {
        let mut b = [0u8; FOOTER_SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(offsets::COOKIE, &COOKIE);
        put(offsets::FEATURES, &self.features.to_be_bytes());
        put(offsets::FORMAT_VERSION, &self.format_version.to_be_bytes());
        put(offsets::DATA_OFFSET, &self.data_offset.to_be_bytes());
        put(offsets::TIMESTAMP, &self.timestamp.to_be_bytes());
        put(offsets::CREATOR_APP, &self.creator_app);
        put(
            offsets::CREATOR_VERSION,
            &self.creator_version.to_be_bytes(),
        );
        put(offsets::CREATOR_HOST_OS, &self.creator_host_os);
        put(offsets::ORIGINAL_SIZE, &self.original_size.to_be_bytes());
        put(offsets::CURRENT_SIZE, &self.current_size.to_be_bytes());
        put(
            offsets::DISK_GEOMETRY,
            &self.geometry.to_u32().to_be_bytes(),
        );
        put(offsets::DISK_TYPE, &self.disk_type.to_be_bytes());
        put(offsets::UNIQUE_ID, &self.unique_id);
        put(offsets::SAVED_STATE, &[self.saved_state]);
        fix_checksum(&mut b);
        b
    }

    /// Number of 512-byte sectors of the disk (current size / 512).
    pub fn sector_count(&self) -> u64 {
        self.current_size / SECTOR_SIZE
    }

    /// The unique id as 32 lowercase, zero-padded hex digits (used as the
    /// cache key of a VHD; never contains spaces).
    pub fn unique_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.unique_id {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// Checks that `footer` describes a fixed disk whose data fits in a blob of
/// `blob_len` bytes (data followed by the footer).
///
/// Checks, in order: disk type is fixed ([`FooterError::NotFixed`]), the
/// current size is a multiple of 512 ([`FooterError::SizeNotSectorMultiple`]),
/// and `current_size + 512 <= blob_len` ([`FooterError::SizeTooLarge`]).
///
/// Why `<=` and not `==`: the footer is always read from the last 512 bytes
/// and the disk's data always starts at offset 0, so a blob with extra bytes
/// between the data and the footer is still read correctly (the extra bytes
/// are never exposed: the disk is `current_size` long). Blob stores and
/// converters do produce such files (e.g. sizes rounded up to an alignment),
/// and the reference implementation accepts any current size that fits
/// before the footer. What must never happen is a disk larger than the data
/// in front of the footer, because reads near its end would return footer
/// bytes or fail; that is the check.
pub fn validate_fixed(footer: &Footer, blob_len: u64) -> Result<(), FooterError> {
    if footer.disk_type != DISK_TYPE_FIXED {
        return Err(FooterError::NotFixed(footer.disk_type));
    }
    if !footer.current_size.is_multiple_of(SECTOR_SIZE) {
        return Err(FooterError::SizeNotSectorMultiple(footer.current_size));
    }
    let data_end = footer_offset(blob_len)?;
    if footer.current_size > data_end {
        return Err(FooterError::SizeTooLarge {
            current_size: footer.current_size,
            blob_len,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: [u8; 16] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0xff,
    ];

    #[test]
    fn round_trip() {
        let f = Footer::new_fixed(1 << 20, ID).unwrap();
        let bytes = f.to_bytes();
        assert_eq!(&bytes[..8], b"conectix");
        assert!(bytes[offsets::RESERVED..].iter().all(|&b| b == 0));
        let parsed = Footer::parse(&bytes).unwrap();
        assert_eq!(parsed, f);
        assert_eq!(parsed.to_bytes(), bytes);
        assert_eq!(parsed.current_size, 1 << 20);
        assert_eq!(parsed.sector_count(), 2048);
        assert_eq!(parsed.data_offset, u64::MAX);
        assert_eq!(parsed.disk_type, DISK_TYPE_FIXED);
        assert_eq!(parsed.unique_id_hex(), "000102030405060708090a0b0c0d0eff");
    }

    #[test]
    fn field_layout_big_endian() {
        let f = Footer::new_fixed(0x0102_0304_0506_0800, ID).unwrap();
        let b = f.to_bytes();
        assert_eq!(&b[12..16], &[0, 1, 0, 0]);
        assert_eq!(&b[16..24], &[0xff; 8]);
        assert_eq!(&b[48..56], &[1, 2, 3, 4, 5, 6, 8, 0]);
        assert_eq!(&b[40..48], &[1, 2, 3, 4, 5, 6, 8, 0]);
        assert_eq!(&b[60..64], &[0, 0, 0, 2]);
        assert_eq!(&b[68..84], &ID);
        assert_eq!(&b[8..12], &[0, 0, 0, 2]);
    }

    #[test]
    fn checksum_known_value() {
        // All-zero footer: the sum is 0, so the checksum is !0.
        assert_eq!(checksum(&[0u8; FOOTER_SIZE]), 0xffff_ffff);
        // The checksum field itself is excluded from the sum.
        let mut b = [0u8; FOOTER_SIZE];
        b[64..68].copy_from_slice(&[0xff; 4]);
        assert_eq!(checksum(&b), 0xffff_ffff);
        // Cookie only: sum of the bytes of "conectix" = 0x35d.
        let mut b = [0u8; FOOTER_SIZE];
        b[..8].copy_from_slice(b"conectix");
        let sum: u32 = b"conectix".iter().map(|&x| u32::from(x)).sum();
        assert_eq!(sum, 0x35d);
        assert_eq!(checksum(&b), !0x35d);
        assert_eq!(checksum(&b), 0xffff_fca2);
        // Every byte 0xff (checksum field excluded): 508 * 255 = 129540.
        assert_eq!(checksum(&[0xff; FOOTER_SIZE]), !129_540u32);
    }

    #[test]
    fn bad_cookie() {
        let mut b = Footer::new_fixed(4096, ID).unwrap().to_bytes();
        b[..8].copy_from_slice(b"vhdxfile");
        fix_checksum(&mut b);
        let e = Footer::parse(&b).unwrap_err();
        assert_eq!(
            e,
            FooterError::BadCookie {
                found: *b"vhdxfile"
            }
        );
        assert!(e.to_string().contains("cookie"), "{e}");
        assert!(e.to_string().contains("vhdxfile"), "{e}");
    }

    #[test]
    fn bad_checksum() {
        let mut b = Footer::new_fixed(4096, ID).unwrap().to_bytes();
        let good = checksum(&b);
        b[offsets::UNIQUE_ID] ^= 1;
        let e = Footer::parse(&b).unwrap_err();
        assert_eq!(
            e,
            FooterError::BadChecksum {
                expected: checksum(&b),
                found: good,
            }
        );
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn unsupported_version() {
        let mut b = Footer::new_fixed(4096, ID).unwrap().to_bytes();
        b[offsets::FORMAT_VERSION..offsets::FORMAT_VERSION + 4]
            .copy_from_slice(&0x0002_0000u32.to_be_bytes());
        fix_checksum(&mut b);
        let e = Footer::parse(&b).unwrap_err();
        assert_eq!(e, FooterError::UnsupportedVersion(0x0002_0000));
        assert!(e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn not_fixed() {
        for (t, name) in [
            (DISK_TYPE_DYNAMIC, "dynamic"),
            (DISK_TYPE_DIFFERENCING, "differencing"),
        ] {
            let mut f = Footer::new_fixed(4096, ID).unwrap();
            f.disk_type = t;
            let b = f.to_bytes();
            // Generic parse accepts it; the fixed validation rejects it.
            assert!(Footer::parse(&b).is_ok());
            let e = Footer::parse_fixed(&b, 4096 + 512).unwrap_err();
            assert_eq!(e, FooterError::NotFixed(t));
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn size_not_sector_multiple() {
        assert_eq!(
            Footer::new_fixed(1000, ID).unwrap_err(),
            FooterError::SizeNotSectorMultiple(1000)
        );
        let mut f = Footer::new_fixed(4096, ID).unwrap();
        f.current_size = 4097;
        let e = validate_fixed(&f, 1 << 20).unwrap_err();
        assert_eq!(e, FooterError::SizeNotSectorMultiple(4097));
        assert!(e.to_string().contains("multiple of 512"), "{e}");
    }

    #[test]
    fn size_fits_before_footer() {
        let f = Footer::new_fixed(4096, ID).unwrap();
        // Exactly data + footer.
        validate_fixed(&f, 4096 + 512).unwrap();
        // Extra bytes between data and footer are accepted.
        validate_fixed(&f, 8192 + 512).unwrap();
        // One byte short.
        let e = validate_fixed(&f, 4096 + 511).unwrap_err();
        assert_eq!(
            e,
            FooterError::SizeTooLarge {
                current_size: 4096,
                blob_len: 4607
            }
        );
        assert!(e.to_string().contains("does not fit"), "{e}");
        // Shorter than a footer.
        assert_eq!(
            validate_fixed(&f, 100).unwrap_err(),
            FooterError::BlobTooShort(100)
        );
        // Huge sizes do not overflow.
        let mut big = f.clone();
        big.current_size = u64::MAX - 511;
        assert!(matches!(
            validate_fixed(&big, u64::MAX),
            Err(FooterError::SizeTooLarge { .. })
        ));
    }

    #[test]
    fn geometry() {
        // 1 MiB = 2048 sectors: 17 spt, cth = 120, heads = 4, c = 30.
        let g = Geometry::from_disk_size(1 << 20);
        assert_eq!(
            g,
            Geometry {
                cylinders: 30,
                heads: 4,
                sectors_per_track: 17
            }
        );
        // 127 MiB = 260096 sectors: 17 spt, cth 15299, heads 15, c = 1019.
        let g = Geometry::from_disk_size(127 << 20);
        assert_eq!(
            g,
            Geometry {
                cylinders: 1019,
                heads: 15,
                sectors_per_track: 17
            }
        );
        // 200 MiB = 409600 sectors: 17 spt needs 24 heads (> 16), so 31 spt,
        // 16 heads, cth = 13212 < 16*1024 -> c = 825.
        let g = Geometry::from_disk_size(200 << 20);
        assert_eq!(
            g,
            Geometry {
                cylinders: 825,
                heads: 16,
                sectors_per_track: 31
            }
        );
        // 1 GiB = 2097152 sectors: 63 spt, cth = 33288, c = 2080.
        let g = Geometry::from_disk_size(1 << 30);
        assert_eq!(
            g,
            Geometry {
                cylinders: 2080,
                heads: 16,
                sectors_per_track: 63
            }
        );
        // 64 GiB: >= 65535*16*63 sectors -> 255 spt; 134217728/255 = 526343,
        // /16 = 32896.
        let g = Geometry::from_disk_size(64 << 30);
        assert_eq!(
            g,
            Geometry {
                cylinders: 32896,
                heads: 16,
                sectors_per_track: 255
            }
        );
        // Larger than CHS can describe: clamped.
        let g = Geometry::from_disk_size(4 << 40);
        assert_eq!(
            g,
            Geometry {
                cylinders: 65535,
                heads: 16,
                sectors_per_track: 255
            }
        );
        assert_eq!(Geometry::from_u32(g.to_u32()), g);
        assert_eq!(g.to_u32(), 0xffff_10ff);
        assert!(g.sectors() <= MAX_CHS_SECTORS);
    }

    #[test]
    fn reference_image_size_parses() {
        // Size of the reference Ubuntu image blob: 3758211584 bytes incl. footer.
        let size = 3_758_211_584 - 512;
        let f = Footer::new_fixed(size, ID).unwrap();
        let parsed = Footer::parse_fixed(&f.to_bytes(), 3_758_211_584).unwrap();
        assert_eq!(parsed.current_size, size);
    }
}
