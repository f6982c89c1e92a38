//! [`BlobDisk`]: a read-only disk over a blob, flat or fixed VHD1.

use crate::Blob;
use crate::BlobError;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use std::sync::Arc;
use vhd1_defs::FOOTER_SIZE;
use vhd1_defs::Footer;
use vhd1_defs::FooterError;

const SECTOR_SIZE: u64 = 512;

/// How a [`BlobDisk`] maps its blob to sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDiskFormat {
    /// The whole blob is the disk.
    Flat,
    /// A fixed VHD1: the disk is the first `current_size` bytes; the
    /// 512-byte footer at the end of the blob is not part of it.
    FixedVhd1,
}

/// Why a blob cannot be presented as a disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobDiskError {
    /// A flat blob whose length is not a whole number of sectors.
    #[error("{what} is {len} bytes long, not a whole number of 512-byte sectors")]
    NotSectorMultiple {
        /// The blob (path or redacted URL).
        what: String,
        /// Its length.
        len: u64,
    },
    /// The footer could not be read.
    #[error("reading the VHD1 footer of {what}")]
    ReadFooter {
        /// The blob (path or redacted URL).
        what: String,
        /// The read error.
        #[source]
        source: BlobError,
    },
    /// The footer is not that of a usable fixed VHD1.
    #[error("{what} is not a usable fixed VHD1: {error}")]
    Footer {
        /// The blob (path or redacted URL).
        what: String,
        /// What is wrong with the footer.
        error: FooterError,
    },
}

/// A read-only disk of 512-byte sectors over a [`Blob`].
///
/// Reads are range-checked against the disk size (for a fixed VHD1, the
/// footer's current size), never the blob size, so the footer can never be
/// read as disk data. Writes and unmaps are refused. Counters are the
/// blob's.
pub struct BlobDisk {
    blob: Arc<dyn Blob>,
    format: BlobDiskFormat,
    sector_count: u64,
    disk_id: Option<[u8; 16]>,
}

impl std::fmt::Debug for BlobDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobDisk")
            .field("blob", &self.blob.describe())
            .field("format", &self.format)
            .field("sector_count", &self.sector_count)
            .finish()
    }
}

impl BlobDisk {
    /// Presents the whole blob as a disk. Its length must be a multiple of
    /// 512.
    pub fn new_flat(blob: Arc<dyn Blob>) -> Result<Self, BlobDiskError> {
        let len = blob.len();
        if !len.is_multiple_of(SECTOR_SIZE) {
            return Err(BlobDiskError::NotSectorMultiple {
                what: blob.describe(),
                len,
            });
        }
        Ok(BlobDisk {
            blob,
            format: BlobDiskFormat::Flat,
            sector_count: len / SECTOR_SIZE,
            disk_id: None,
        })
    }

    /// Presents a fixed VHD1 blob as a disk: reads the last 512 bytes and
    /// validates them as a fixed-disk footer (cookie, checksum, version,
    /// type, a size that is a multiple of 512 and fits before the footer).
    /// The disk id is the footer's unique id.
    pub async fn new_fixed_vhd1(blob: Arc<dyn Blob>) -> Result<Self, BlobDiskError> {
        let len = blob.len();
        let footer_error = |error| BlobDiskError::Footer {
            what: blob.describe(),
            error,
        };
        let offset = vhd1_defs::footer_offset(len).map_err(footer_error)?;
        let mut raw = [0u8; FOOTER_SIZE];
        blob.read(&mut raw, offset)
            .await
            .map_err(|source| BlobDiskError::ReadFooter {
                what: blob.describe(),
                source,
            })?;
        let footer = Footer::parse_fixed(&raw, len).map_err(footer_error)?;
        tracing::debug!(
            blob = %blob.describe(),
            size = footer.current_size,
            id = %footer.unique_id_hex(),
            "opened fixed VHD1 blob"
        );
        Ok(BlobDisk {
            format: BlobDiskFormat::FixedVhd1,
            sector_count: footer.current_size / SECTOR_SIZE,
            disk_id: Some(footer.unique_id),
            blob,
        })
    }

    /// The blob under the disk.
    pub fn blob(&self) -> &Arc<dyn Blob> {
        &self.blob
    }

    /// How the blob is mapped.
    pub fn format(&self) -> BlobDiskFormat {
        self.format
    }
}

impl DiskIo for BlobDisk {
    fn disk_type(&self) -> &str {
        match self.format {
            BlobDiskFormat::Flat => "blob_flat",
            BlobDiskFormat::FixedVhd1 => "blob_vhd1",
        }
    }

    fn sector_count(&self) -> u64 {
        self.sector_count
    }

    fn disk_id(&self) -> Option<[u8; 16]> {
        self.disk_id
    }

    fn is_read_only(&self) -> bool {
        true
    }

    fn counters(&self) -> DiskCounters {
        self.blob.counters().into()
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_io_range(sector, buf.len(), SECTOR_SIZE as u32, self.sector_count)?;
        let len = buf.len();
        self.blob
            .read(buf, sector * SECTOR_SIZE)
            .await
            .map_err(|e| {
                DiskError::io(
                    format!(
                        "reading {len} bytes at sector {sector} of {}",
                        self.blob.describe()
                    ),
                    e,
                )
            })
    }

    async fn read_owned(&self, sector: u64, buf: Vec<u8>) -> (Vec<u8>, Result<(), DiskError>) {
        if let Err(e) = check_io_range(sector, buf.len(), SECTOR_SIZE as u32, self.sector_count) {
            return (buf, Err(e));
        }
        let len = buf.len();
        let (buf, result) = self.blob.read_owned(buf, sector * SECTOR_SIZE).await;
        let result = result.map_err(|e| {
            DiskError::io(
                format!(
                    "reading {len} bytes at sector {sector} of {}",
                    self.blob.describe()
                ),
                e,
            )
        });
        (buf, result)
    }

    async fn write(&self, _sector: u64, _buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }

    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }

    async fn unmap(&self, _sector: u64, _count: u64) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
}
