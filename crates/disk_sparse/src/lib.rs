//! Sparse image formats (dynamic VHD1, VHDX, qcow2) presented as
//! read-only disks over a blob, and the detection of an image's format
//! from its content.
//!
//! Position in the data flow: `disk_open` opens the bottom blob of a stack
//! (a local file or an HTTP(S) URL), asks [`detect`] what the image is
//! (unless the description names the format), and for a sparse format
//! hands the blob to [`open_sparse`]; the resulting [`SparseDisk`] is the
//! bottom layer under the SQLite read cache and the RAM layer, exactly
//! where a flat or fixed-VHD1 `BlobDisk` sits. The parsers live in
//! `vhd1_defs`, `vhdx_defs` and `qcow2_defs`; this crate does their I/O.
//!
//! Model:
//! - Metadata (headers, BAT, L1/L2 tables) is read through a [`MetaReader`]:
//!   aligned 64 KiB pieces, fetched on demand, several adjacent missing
//!   pieces in one request, kept in memory (bounded) and, when the opener
//!   gives a [`PieceDir`], in verified files that a later open reuses. So a
//!   warm open of an image whose data the read cache already holds sends
//!   only the blob's validating HEAD and fetches no bytes.
//! - A read maps its disk range to extents: zeros (unallocated blocks and
//!   clusters, zero states, clear bits of a VHD sector bitmap), file
//!   ranges, and compressed qcow2 clusters. Zeros cost no request;
//!   adjacent file ranges are read with one request; compressed clusters
//!   adjacent in the file are fetched together and the last few
//!   decompressed clusters are kept, so a cluster larger than the read
//!   cache's chunk is fetched once per pass.
//! - The disk's id (the read cache's key) is the format's own content id
//!   where it has one: a VHD's unique id, a VHDX's data write GUID (which
//!   changes whenever the data does). A qcow2 image has none; the opener
//!   keys its cache by URL path and validator, as for a flat blob.
//!
//! Invariants:
//! - Every structure is checked by its parser before use; a bad one is a
//!   [`SparseError`] naming the image (path or redacted URL) and the
//!   structure, never a panic, never wrong bytes, never an allocation
//!   sized by an unchecked field.
//! - Reads never return bytes from outside a block or cluster the
//!   metadata assigns to the disk range; parts of a block that lie past
//!   the end of the file read as zeros (as QEMU reads them).
//! - The disk is read-only: writes and unmaps are refused.

#![forbid(unsafe_code)]

mod detect;
mod disk;
mod meta;
mod qcow2;
mod vhd;
mod vhdx;

pub use detect::ExtensionHint;
pub use detect::ImageFormat;
pub use detect::detect;
pub use disk::SparseDisk;
pub use disk::open_sparse;
pub use meta::MetaReader;
pub use meta::PIECE_SIZE;
pub use meta::PieceDir;

/// Why a sparse image could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SparseError {
    /// Reading a structure from the blob failed.
    #[error("{image}: reading the {structure} ({len} bytes at offset {offset})")]
    Read {
        /// The image (path or redacted URL).
        image: String,
        /// What was being read.
        structure: String,
        /// Where.
        offset: u64,
        /// How much.
        len: u64,
        /// The cause.
        #[source]
        source: disk_blob::BlobError,
    },
    /// A structure lies outside the image.
    #[error(
        "{image}: the {structure} at offset {offset} ({len} bytes) lies outside the image of {image_len} bytes"
    )]
    OutsideImage {
        /// The image.
        image: String,
        /// Which structure.
        structure: String,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The image length.
        image_len: u64,
    },
    /// The VHD1 footer is bad.
    #[error("{image} is not a usable VHD")]
    Vhd1Footer {
        /// The image.
        image: String,
        /// What is wrong.
        #[source]
        source: vhd1_defs::FooterError,
    },
    /// A dynamic VHD1 structure is bad.
    #[error("{image} is not a usable dynamic VHD")]
    Vhd1 {
        /// The image.
        image: String,
        /// What is wrong.
        #[source]
        source: vhd1_defs::dynamic::DynamicError,
    },
    /// A VHDX structure is bad.
    #[error("{image} is not a usable VHDX")]
    Vhdx {
        /// The image.
        image: String,
        /// What is wrong.
        #[source]
        source: vhdx_defs::VhdxError,
    },
    /// A qcow2 structure is bad.
    #[error("{image} is not a usable qcow2 image")]
    Qcow2 {
        /// The image.
        image: String,
        /// What is wrong.
        #[source]
        source: qcow2_defs::Qcow2Error,
    },
    /// The content is not what the file name says.
    #[error(
        "{image}: the name says {hint} but the content is {content}; \
         rename the file or name the format explicitly"
    )]
    FormatMismatch {
        /// The image.
        image: String,
        /// What the extension says.
        hint: ExtensionHint,
        /// What the content is.
        content: ImageFormat,
    },
    /// A format the sparse reader does not handle was asked of it.
    #[error("{image}: {format} is not a sparse format")]
    NotSparse {
        /// The image.
        image: String,
        /// The format.
        format: ImageFormat,
    },
    /// The disk size is not a whole number of 512-byte sectors.
    #[error("{image}: disk size {size} is not a multiple of 512")]
    SizeNotSectorMultiple {
        /// The image.
        image: String,
        /// The size.
        size: u64,
    },
}
