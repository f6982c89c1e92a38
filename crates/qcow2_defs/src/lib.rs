//! On-disk definitions of qcow2 (QEMU copy-on-write, versions 2 and 3)
//! for a read-only reader: the header, the L1 and L2 tables and
//! compressed clusters.
//!
//! Position in the data flow: `disk_sparse` fetches the header, pieces of
//! the L1 table and L2 tables through its cached metadata reader and hands
//! the bytes to the parsers here, then reads the clusters they point at;
//! compressed clusters come back here to [`decompress_cluster`]. Nothing
//! here does I/O.
//!
//! Model (all integers big-endian): a disk offset splits into an L1 index,
//! an L2 index and an offset in a cluster of `1 << cluster_bits` bytes.
//! The L1 entry names an L2 table (one cluster of 8-byte entries), the L2
//! entry names the cluster: unallocated, zero (v3), at a host offset, or
//! compressed (deflate, or zstd when the header's compression type says
//! so) at a byte offset with a length in 512-byte sectors. Refcounts and
//! snapshots are not needed to read the active image and are ignored.
//!
//! Invariants:
//! - [`Header::parse`] refuses what a reader of this image alone cannot
//!   serve correctly, each with its own [`Qcow2Error`]: backing files,
//!   encryption, external data files, extended L2 entries, unknown
//!   incompatible features and compression types.
//! - Table and cluster offsets are checked against the file length, the
//!   cluster alignment, the header cluster and the L1 table before use: an
//!   entry pointing there is a corrupt image, not data.
//! - Nothing panics on any input; nothing allocates in proportion to a
//!   field of the file beyond the limits QEMU also enforces (an L1 table of
//!   at most 32 MiB is never read whole: the caller fetches pieces).
//!   Decompression writes into the caller's cluster buffer and bounds the
//!   zstd window.

#![forbid(unsafe_code)]

use std::ops::Range;

/// The magic at offset 0: `QFI\xfb`.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Smallest cluster size (512 bytes).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size QEMU writes (2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table QEMU accepts, in bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: usize = 72;
/// Length of a version 3 header without optional fields.
pub const V3_HEADER_LEN: usize = 104;
/// Offset bits of an L1 entry (and of a standard L2 entry).
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry flag: the cluster is compressed.
pub const L2_COMPRESSED: u64 = 1 << 62;
/// L2 entry flag (version 3, standard clusters): the cluster reads as zeros.
pub const L2_ZERO: u64 = 1;
/// Largest zstd window accepted when decompressing a cluster.
pub const MAX_ZSTD_WINDOW: u64 = 8 << 20;

/// Incompatible feature bits (version 3).
pub mod incompatible {
    /// Refcounts may be stale (harmless for reading).
    pub const DIRTY: u64 = 1 << 0;
    /// QEMU found the image corrupt.
    pub const CORRUPT: u64 = 1 << 1;
    /// Guest data lives in an external file.
    pub const EXTERNAL_DATA_FILE: u64 = 1 << 2;
    /// The header's compression type field is used.
    pub const COMPRESSION_TYPE: u64 = 1 << 3;
    /// L2 entries are 16 bytes with subcluster bitmaps.
    pub const EXTENDED_L2: u64 = 1 << 4;
    /// Every bit this reader knows.
    pub const KNOWN: u64 = DIRTY | CORRUPT | EXTERNAL_DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;
}

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), QEMU's default.
    Deflate,
    /// Zstandard frames.
    Zstd,
}

/// What is wrong with a qcow2 file, or what it needs that this reader
/// does not provide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Qcow2Error {
    /// Fewer bytes than the header needs.
    #[error("qcow2 header truncated: {got} bytes, need {need}")]
    Truncated {
        /// Bytes available.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Not `QFI\xfb`.
    #[error("not a qcow2 image: bad magic")]
    BadMagic,
    /// A version other than 2 or 3.
    #[error("unsupported qcow2 version {0} (2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// The image has a backing file.
    #[error(
        "the qcow2 image has a backing file {name:?}: it cannot be read on its own; \
         flatten it first (for example `qemu-img convert -O qcow2 in.qcow2 out.qcow2`)"
    )]
    BackingFile {
        /// The backing file name (empty if not in the bytes given).
        name: String,
    },
    /// The image is encrypted.
    #[error("the qcow2 image is encrypted (method {0}); encrypted images are not supported")]
    Encrypted(u32),
    /// Guest data is in an external data file.
    #[error("the qcow2 image keeps its data in an external data file, which is not supported")]
    ExternalDataFile,
    /// Extended L2 entries (subclusters).
    #[error(
        "the qcow2 image uses extended L2 entries (subclusters), which are not supported; \
         convert it without `-o extended_l2=on`"
    )]
    ExtendedL2,
    /// Unknown incompatible feature bits.
    #[error("the qcow2 image uses unknown incompatible features {0:#x}")]
    UnknownFeatures(u64),
    /// A compression type other than deflate (0) or zstd (1).
    #[error("unknown qcow2 compression type {0}")]
    UnknownCompression(u8),
    /// A header field out of range.
    #[error("qcow2 {what} {value} is invalid: {why}")]
    BadValue {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        why: &'static str,
    },
    /// A table or cluster lies (partly) outside the file.
    #[error(
        "qcow2 {what} at offset {offset} ({len} bytes) lies outside the file of {file_len} bytes"
    )]
    OutsideFile {
        /// Which structure.
        what: String,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The file length.
        file_len: u64,
    },
    /// An offset that must be cluster aligned is not.
    #[error("qcow2 {what} offset {offset:#x} is not aligned to the cluster size")]
    Misaligned {
        /// Which structure.
        what: String,
        /// The offset.
        offset: u64,
    },
    /// A table entry points into metadata.
    #[error("qcow2 {what} points at offset {offset:#x}, inside the {other}: the image is corrupt")]
    PointsIntoMetadata {
        /// Which entry.
        what: String,
        /// The offset.
        offset: u64,
        /// What it points into.
        other: &'static str,
    },
    /// A compressed cluster could not be decompressed.
    #[error("qcow2 compressed cluster {cluster} at offset {offset:#x} does not decompress: {why}")]
    Decompress {
        /// The guest cluster index.
        cluster: u64,
        /// Its host offset.
        offset: u64,
        /// What went wrong.
        why: String,
    },
}

fn be_u32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn be_u64(b: &[u8], off: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(x)
}

/// A decoded and checked qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size.
    pub cluster_bits: u32,
    /// The guest disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Incompatible feature bits (version 3; 0 for version 2).
    pub incompatible_features: u64,
    /// How compressed clusters are compressed.
    pub compression: Compression,
}

impl Header {
    /// Parses and checks the header from the start of the file (give at
    /// least the header; give the first cluster to get a backing file's
    /// name into the error).
    pub fn parse(bytes: &[u8]) -> Result<Self, Qcow2Error> {
        let need = |n: usize| {
            if bytes.len() < n {
                Err(Qcow2Error::Truncated {
                    got: bytes.len(),
                    need: n,
                })
            } else {
                Ok(())
            }
        };
        need(8)?;
        if bytes[..4] != MAGIC {
            return Err(Qcow2Error::BadMagic);
        }
        let version = be_u32(bytes, 4);
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        need(V2_HEADER_LEN)?;
        let backing_offset = be_u64(bytes, 8);
        let backing_size = be_u32(bytes, 16);
        if backing_offset != 0 {
            let name = usize::try_from(backing_offset)
                .ok()
                .and_then(|o| bytes.get(o..o.checked_add(backing_size.min(1023) as usize)?))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            return Err(Qcow2Error::BackingFile { name });
        }
        let cluster_bits = be_u32(bytes, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Qcow2Error::BadValue {
                what: "cluster_bits",
                value: cluster_bits.into(),
                why: "must be 9 (512 bytes) to 21 (2 MiB)",
            });
        }
        let crypt = be_u32(bytes, 32);
        if crypt != 0 {
            return Err(Qcow2Error::Encrypted(crypt));
        }
        let mut incompatible_features = 0;
        let mut compression = Compression::Deflate;
        if version == 3 {
            need(V3_HEADER_LEN)?;
            incompatible_features = be_u64(bytes, 72);
            let header_length = be_u32(bytes, 100);
            if (header_length as usize) < V3_HEADER_LEN {
                return Err(Qcow2Error::BadValue {
                    what: "header_length",
                    value: header_length.into(),
                    why: "a version 3 header has at least 104 bytes",
                });
            }
            let unknown = incompatible_features & !incompatible::KNOWN;
            if unknown != 0 {
                return Err(Qcow2Error::UnknownFeatures(unknown));
            }
            if incompatible_features & incompatible::EXTERNAL_DATA_FILE != 0 {
                return Err(Qcow2Error::ExternalDataFile);
            }
            if incompatible_features & incompatible::EXTENDED_L2 != 0 {
                return Err(Qcow2Error::ExtendedL2);
            }
            if incompatible_features & incompatible::COMPRESSION_TYPE != 0 {
                if header_length <= 104 {
                    return Err(Qcow2Error::BadValue {
                        what: "header_length",
                        value: header_length.into(),
                        why: "the compression type feature needs the compression type field",
                    });
                }
                need(105)?;
                compression = match bytes[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    other => return Err(Qcow2Error::UnknownCompression(other)),
                };
            }
        }
        let size = be_u64(bytes, 24);
        if !size.is_multiple_of(512) {
            return Err(Qcow2Error::BadValue {
                what: "disk size",
                value: size,
                why: "must be a multiple of 512",
            });
        }
        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_size: be_u32(bytes, 36),
            l1_table_offset: be_u64(bytes, 40),
            incompatible_features,
            compression,
        })
    }
}

/// Where a guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Not allocated: reads as zeros (there is no backing file).
    Unallocated,
    /// Explicitly zero (version 3).
    Zero,
    /// Stored at this host offset, `cluster_size` bytes.
    Data(u64),
    /// Compressed: `len` bytes at `offset` (the length is rounded up to
    /// whole 512-byte sectors, so it may run past the compressed data and
    /// past the end of the file; read what exists).
    Compressed {
        /// Host byte offset.
        offset: u64,
        /// Bytes to read.
        len: u64,
    },
}

/// The checked geometry of a qcow2 image in a file of a known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The header.
    pub header: Header,
    /// Cluster size in bytes.
    pub cluster_size: u64,
    /// Entries per L2 table.
    pub l2_entries: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Entries of the L1 table the disk needs (the rest are unused).
    pub l1_entries: u64,
}

impl Layout {
    /// Checks `header` against a file of `file_len` bytes: the L1 table
    /// covers the disk, is at most 32 MiB, cluster aligned, inside the
    /// file and not on the header cluster.
    pub fn new(header: Header, file_len: u64) -> Result<Self, Qcow2Error> {
        let cluster_size = 1u64 << header.cluster_bits;
        let l2_entries = cluster_size / 8;
        let per_l1 = cluster_size * l2_entries;
        let l1_entries = header.size.div_ceil(per_l1);
        if u64::from(header.l1_size) < l1_entries {
            return Err(Qcow2Error::BadValue {
                what: "L1 size",
                value: header.l1_size.into(),
                why: "too small for the disk size",
            });
        }
        let l1_bytes = l1_entries * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::BadValue {
                what: "L1 table size in bytes",
                value: l1_bytes,
                why: "larger than 32 MiB",
            });
        }
        let layout = Layout {
            header,
            cluster_size,
            l2_entries,
            file_len,
            l1_entries,
        };
        if l1_entries > 0 {
            let off = layout.header.l1_table_offset;
            layout.check_aligned("L1 table", off)?;
            if off < cluster_size {
                return Err(Qcow2Error::PointsIntoMetadata {
                    what: "the L1 table offset".into(),
                    offset: off,
                    other: "header cluster",
                });
            }
            layout.check_inside("L1 table", off, l1_bytes)?;
        }
        Ok(layout)
    }

    fn check_aligned(&self, what: &str, offset: u64) -> Result<(), Qcow2Error> {
        if !offset.is_multiple_of(self.cluster_size) {
            return Err(Qcow2Error::Misaligned {
                what: what.into(),
                offset,
            });
        }
        Ok(())
    }

    fn check_inside(&self, what: &str, offset: u64, len: u64) -> Result<(), Qcow2Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.file_len => Ok(()),
            _ => Err(Qcow2Error::OutsideFile {
                what: what.into(),
                offset,
                len,
                file_len: self.file_len,
            }),
        }
    }

    /// The byte range of the used part of the L1 table.
    pub fn l1_range(&self) -> Range<u64> {
        let start = self.header.l1_table_offset;
        start..start + self.l1_entries * 8
    }

    /// The guest cluster holding disk byte `offset`.
    pub fn cluster_of(&self, offset: u64) -> u64 {
        offset >> self.header.cluster_bits
    }

    /// The L1 index and L2 index of guest cluster `cluster`.
    pub fn indexes(&self, cluster: u64) -> (u64, u64) {
        (cluster / self.l2_entries, cluster % self.l2_entries)
    }

    fn check_not_metadata(&self, what: &dyn Fn() -> String, offset: u64) -> Result<(), Qcow2Error> {
        let l1 = self.l1_range();
        let l1_end = l1.end.next_multiple_of(self.cluster_size);
        let span = offset..offset.saturating_add(self.cluster_size);
        for (other, r) in [
            ("header cluster", 0..self.cluster_size),
            ("L1 table", l1.start..l1_end),
        ] {
            if span.start < r.end && r.start < span.end {
                return Err(Qcow2Error::PointsIntoMetadata {
                    what: what(),
                    offset,
                    other,
                });
            }
        }
        Ok(())
    }

    /// Decodes L1 entry `index`: the offset of its L2 table, or `None`
    /// when the whole range reads as zeros. The table must be cluster
    /// aligned, wholly inside the file, and not the header cluster or the
    /// L1 table.
    pub fn decode_l1(&self, index: u64, raw: u64) -> Result<Option<u64>, Qcow2Error> {
        let offset = raw & OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        let what = || format!("L1 entry {index} (an L2 table)");
        self.check_aligned(&what(), offset)?;
        self.check_not_metadata(&what, offset)?;
        self.check_inside(&what(), offset, self.cluster_size)?;
        Ok(Some(offset))
    }

    /// Decodes the L2 entry of guest cluster `cluster`, found in the L2
    /// table at `l2_offset`. A data cluster must be aligned, start inside
    /// the file, and not be the header cluster, the L1 table or this L2
    /// table; a compressed cluster must start inside the file.
    ///
    /// DEVNOTE: a data cluster whose end lies past the end of the file is
    /// accepted; readers fill the missing tail with zeros, as QEMU does.
    pub fn decode_l2(&self, cluster: u64, l2_offset: u64, raw: u64) -> Result<Cluster, Qcow2Error> {
        let what = || format!("L2 entry of guest cluster {cluster}");
        if raw & L2_COMPRESSED != 0 {
            let bits = self.header.cluster_bits;
            let shift = 62 - (bits - 8);
            let offset = raw & ((1u64 << shift) - 1);
            let sectors = ((raw >> shift) & ((1u64 << (bits - 8)) - 1)) + 1;
            let len = sectors * 512 - (offset & 511);
            if offset >= self.file_len {
                return Err(Qcow2Error::OutsideFile {
                    what: what(),
                    offset,
                    len,
                    file_len: self.file_len,
                });
            }
            if offset < self.cluster_size {
                return Err(Qcow2Error::PointsIntoMetadata {
                    what: what(),
                    offset,
                    other: "header cluster",
                });
            }
            return Ok(Cluster::Compressed { offset, len });
        }
        if self.header.version >= 3 && raw & L2_ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        let offset = raw & OFFSET_MASK;
        if offset == 0 {
            return Ok(Cluster::Unallocated);
        }
        self.check_aligned(&what(), offset)?;
        self.check_not_metadata(&what, offset)?;
        if offset == l2_offset {
            return Err(Qcow2Error::PointsIntoMetadata {
                what: what(),
                offset,
                other: "L2 table that holds it",
            });
        }
        if offset >= self.file_len {
            return Err(Qcow2Error::OutsideFile {
                what: what(),
                offset,
                len: self.cluster_size,
                file_len: self.file_len,
            });
        }
        Ok(Cluster::Data(offset))
    }
}

/// Decompresses one compressed cluster: `input` is what was read at the
/// cluster's offset (up to its rounded length), `out` the cluster buffer,
/// which must be filled exactly. Trailing bytes after the compressed
/// stream are ignored (the length is rounded up to sectors).
pub fn decompress_cluster(
    compression: Compression,
    input: &[u8],
    out: &mut [u8],
) -> Result<(), String> {
    match compression {
        Compression::Deflate => inflate_raw(input, out),
        Compression::Zstd => unzstd(input, out),
    }
}

fn inflate_raw(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    use miniz_oxide::inflate::TINFLStatus;
    use miniz_oxide::inflate::core::DecompressorOxide;
    use miniz_oxide::inflate::core::decompress;
    use miniz_oxide::inflate::core::inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
    let mut state = Box::<DecompressorOxide>::default();
    let (status, _, written) = decompress(
        &mut state,
        input,
        out,
        0,
        TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF,
    );
    match status {
        // Done, or stopped because the cluster is full: QEMU accepts both.
        TINFLStatus::Done | TINFLStatus::HasMoreOutput if written == out.len() => Ok(()),
        TINFLStatus::Done | TINFLStatus::HasMoreOutput | TINFLStatus::NeedsMoreInput => {
            Err(format!(
                "the deflate stream gives {written} bytes, the cluster has {}",
                out.len()
            ))
        }
        other => Err(format!(
            "deflate error {other:?} after {written} of {} bytes",
            out.len()
        )),
    }
}

/// The window size a zstd frame header asks for, if the bytes start with
/// one (magic, descriptor, window descriptor or content size).
fn zstd_window(input: &[u8]) -> Option<u64> {
    if input.get(..4)? != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let fhd = *input.get(4)?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *input.get(5)?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    let dict_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + dict_len;
    let b = input.get(at..at + fcs_len)?;
    let mut v = [0u8; 8];
    v[..fcs_len].copy_from_slice(b);
    let size = u64::from_le_bytes(v);
    Some(if fcs_len == 2 { size + 256 } else { size })
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    use std::io::Read as _;
    let mut rest = input;
    let mut filled = 0;
    while filled < out.len() {
        match zstd_window(rest) {
            Some(w) if w <= MAX_ZSTD_WINDOW => {}
            Some(w) => return Err(format!("a zstd frame asks for a {w}-byte window")),
            None => {
                return Err(format!(
                    "no zstd frame after {filled} of {} bytes",
                    out.len()
                ));
            }
        }
        let mut decoder = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
            &mut rest,
            MAX_ZSTD_WINDOW,
        )
        .map_err(|e| format!("zstd frame header: {e}"))?;
        let before = filled;
        while filled < out.len() {
            let n = decoder
                .read(&mut out[filled..])
                .map_err(|e| format!("zstd: {e}"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == before {
            return Err("an empty zstd frame".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
