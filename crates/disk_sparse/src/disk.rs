//! [`SparseDisk`]: a read-only disk over a sparse image, and the extents
//! a read maps to.

use crate::ImageFormat;
use crate::MetaReader;
use crate::SparseError;
use crate::qcow2::Qcow2Mapper;
use crate::vhd::VhdMapper;
use crate::vhdx::VhdxMapper;
use disk_backend::DiskCounters;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;

const SECTOR_SIZE: u64 = 512;
/// Bytes of decompressed clusters kept, so a cluster larger than the read
/// cache's chunk is not fetched once per chunk.
const DECOMPRESSED_BUDGET: u64 = 8 << 20;
/// Longest run of adjacent compressed clusters fetched with one request.
const MAX_COMPRESSED_RUN: u64 = 8 << 20;

/// Where a piece of a read comes from.
#[derive(Debug, Clone)]
pub(crate) enum Extent {
    /// Zeros.
    Zero(u64),
    /// `len` bytes of the file at `offset`.
    File {
        /// File offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Bytes already fetched (with the metadata that said where they are).
    Bytes {
        /// The fetched buffer.
        data: Arc<[u8]>,
        /// Where this extent's bytes start in it.
        start: usize,
        /// How many.
        len: usize,
    },
    /// `len` bytes at `skip` of compressed guest cluster `cluster`.
    Compressed {
        /// The guest cluster index.
        cluster: u64,
        /// Host offset of the compressed data.
        offset: u64,
        /// Compressed bytes to read (clipped to the file).
        clen: u64,
        /// Offset inside the decompressed cluster.
        skip: u64,
        /// Bytes.
        len: u64,
    },
}

impl Extent {
    fn len(&self) -> u64 {
        match self {
            Extent::Zero(n) => *n,
            Extent::File { len, .. } | Extent::Compressed { len, .. } => *len,
            Extent::Bytes { len, .. } => *len as u64,
        }
    }
}

/// Appends `e` to `out`, merging it into the previous extent when both
/// are zeros, or file ranges that continue each other.
pub(crate) fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if e.len() == 0 {
        return;
    }
    match (out.last_mut(), &e) {
        (Some(Extent::Zero(a)), Extent::Zero(b)) => *a += b,
        (
            Some(Extent::File { offset, len }),
            Extent::File {
                offset: next,
                len: more,
            },
        ) if *offset + *len == *next => *len += more,
        _ => out.push(e),
    }
}

/// Splits `offset..offset + len` at multiples of `unit` (a block or
/// cluster size): `(unit index, offset in the unit, length)` per piece.
pub(crate) fn split_units(
    offset: u64,
    len: u64,
    unit: u64,
) -> impl Iterator<Item = (u64, u64, u64)> {
    let end = offset.saturating_add(len);
    std::iter::successors(Some(offset).filter(|&o| o < end), move |&o| {
        let next = (o / unit + 1) * unit;
        (next < end).then_some(next)
    })
    .map(move |o| (o / unit, o % unit, (unit - o % unit).min(end - o)))
}

/// The format-specific part of a sparse disk: how a disk range maps to
/// extents.
pub(crate) enum Mapper {
    Vhd(VhdMapper),
    Vhdx(VhdxMapper),
    Qcow2(Qcow2Mapper),
}

impl Mapper {
    async fn map(
        &self,
        meta: &MetaReader,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), SparseError> {
        match self {
            Mapper::Vhd(m) => m.map(meta, offset, len, out).await,
            Mapper::Vhdx(m) => m.map(meta, offset, len, out).await,
            Mapper::Qcow2(m) => m.map(meta, offset, len, out).await,
        }
    }
}

/// What a mapper found at open.
pub(crate) struct Opened {
    pub mapper: Mapper,
    pub disk_size: u64,
    pub disk_id: Option<[u8; 16]>,
    pub cluster_size: u64,
    pub compression: Option<qcow2_defs::Compression>,
}

/// A read-only disk of 512-byte sectors over a dynamic VHD1, VHDX or
/// qcow2 image (see the [crate docs](crate)).
pub struct SparseDisk {
    meta: Arc<MetaReader>,
    mapper: Mapper,
    format: ImageFormat,
    sector_count: u64,
    disk_id: Option<[u8; 16]>,
    cluster_size: u64,
    compression: Option<qcow2_defs::Compression>,
    decompressed: Mutex<VecDeque<(u64, Arc<[u8]>)>>,
}

impl std::fmt::Debug for SparseDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SparseDisk")
            .field("image", &self.meta.describe())
            .field("format", &self.format)
            .field("sector_count", &self.sector_count)
            .finish()
    }
}

/// Opens the image behind `meta` as a disk of `format` (a sparse one:
/// [`ImageFormat::DynamicVhd1`], [`ImageFormat::Vhdx`] or
/// [`ImageFormat::Qcow2`]), reading and checking its headers.
pub async fn open_sparse(
    meta: Arc<MetaReader>,
    format: ImageFormat,
) -> Result<SparseDisk, SparseError> {
    let opened = match format {
        ImageFormat::DynamicVhd1 => crate::vhd::open(&meta).await?,
        ImageFormat::Vhdx => crate::vhdx::open(&meta).await?,
        ImageFormat::Qcow2 => crate::qcow2::open(&meta).await?,
        ImageFormat::Flat | ImageFormat::FixedVhd1 => {
            return Err(SparseError::NotSparse {
                image: meta.describe(),
                format,
            });
        }
    };
    if !opened.disk_size.is_multiple_of(SECTOR_SIZE) {
        return Err(SparseError::SizeNotSectorMultiple {
            image: meta.describe(),
            size: opened.disk_size,
        });
    }
    tracing::debug!(
        image = %meta.describe(),
        ?format,
        size = opened.disk_size,
        "opened sparse image"
    );
    Ok(SparseDisk {
        mapper: opened.mapper,
        format,
        sector_count: opened.disk_size / SECTOR_SIZE,
        disk_id: opened.disk_id,
        cluster_size: opened.cluster_size,
        compression: opened.compression,
        decompressed: Mutex::new(VecDeque::new()),
        meta,
    })
}

impl SparseDisk {
    /// The image's format.
    pub fn format(&self) -> ImageFormat {
        self.format
    }

    /// The metadata reader (and through it, the blob).
    pub fn meta(&self) -> &Arc<MetaReader> {
        &self.meta
    }

    /// Reads disk bytes `offset..offset + buf.len()` (inside the disk).
    pub async fn read_bytes(&self, offset: u64, buf: &mut [u8]) -> Result<(), SparseError> {
        let mut extents = Vec::new();
        self.mapper
            .map(&self.meta, offset, buf.len() as u64, &mut extents)
            .await?;
        let clusters = self.decompress(&extents).await?;
        let mut reads = Vec::new();
        let mut rest: &mut [u8] = buf;
        for e in &extents {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(e.len() as usize);
            rest = tail;
            match e {
                Extent::Zero(_) => head.fill(0),
                Extent::File { offset, .. } => reads.push(self.read_file(head, *offset)),
                Extent::Bytes { data, start, len } => {
                    head.copy_from_slice(&data[*start..*start + *len]);
                }
                Extent::Compressed { cluster, skip, .. } => {
                    let data = clusters
                        .iter()
                        .find(|(c, _)| c == cluster)
                        .map(|(_, d)| d)
                        .ok_or_else(|| SparseError::OutsideImage {
                            image: self.meta.describe(),
                            structure: format!("compressed cluster {cluster}"),
                            offset: 0,
                            len: 0,
                            image_len: self.meta.len(),
                        })?;
                    let skip = *skip as usize;
                    head.copy_from_slice(&data[skip..skip + head.len()]);
                }
            }
        }
        futures::future::try_join_all(reads).await?;
        Ok(())
    }

    /// Reads file bytes at `offset` into `buf`; what lies past the end of
    /// the file reads as zeros.
    async fn read_file(&self, buf: &mut [u8], offset: u64) -> Result<(), SparseError> {
        let avail = self.meta.len().saturating_sub(offset).min(buf.len() as u64) as usize;
        let (data, past_end) = buf.split_at_mut(avail);
        past_end.fill(0);
        self.meta
            .blob()
            .read(data, offset)
            .await
            .map_err(|source| SparseError::Read {
                image: self.meta.describe(),
                structure: "data".into(),
                offset,
                len: avail as u64,
                source,
            })
    }

    /// The decompressed clusters `extents` need: from the kept ones, the
    /// rest fetched (adjacent ones together) and decompressed.
    async fn decompress(&self, extents: &[Extent]) -> Result<Vec<(u64, Arc<[u8]>)>, SparseError> {
        let mut found: Vec<(u64, Arc<[u8]>)> = Vec::new();
        let mut missing: Vec<(u64, u64, u64)> = Vec::new();
        {
            let kept = self.decompressed.lock();
            for e in extents {
                if let Extent::Compressed {
                    cluster,
                    offset,
                    clen,
                    ..
                } = *e
                {
                    if found.iter().any(|(c, _)| *c == cluster)
                        || missing.iter().any(|(c, _, _)| *c == cluster)
                    {
                        continue;
                    }
                    match kept.iter().find(|(c, _)| *c == cluster) {
                        Some((_, d)) => found.push((cluster, d.clone())),
                        None => missing.push((cluster, offset, clen)),
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let compression = self.compression.unwrap_or(qcow2_defs::Compression::Deflate);
        missing.sort_by_key(|&(_, offset, _)| offset);
        let mut runs: Vec<Vec<(u64, u64, u64)>> = Vec::new();
        for m in missing {
            match runs.last_mut() {
                Some(run)
                    if {
                        let start = run[0].1;
                        let end = run.iter().map(|&(_, o, l)| o + l).max().unwrap_or(start);
                        m.1 <= end && m.1 + m.2 - start <= MAX_COMPRESSED_RUN
                    } =>
                {
                    run.push(m)
                }
                _ => runs.push(vec![m]),
            }
        }
        let cluster_size = self.cluster_size as usize;
        let fetches = runs.into_iter().map(|run| async move {
            let start = run[0].1;
            let end = run.iter().map(|&(_, o, l)| o + l).max().unwrap_or(start);
            let mut raw = vec![0u8; (end - start) as usize];
            self.meta
                .blob()
                .read(&mut raw, start)
                .await
                .map_err(|source| SparseError::Read {
                    image: self.meta.describe(),
                    structure: "compressed clusters".into(),
                    offset: start,
                    len: end - start,
                    source,
                })?;
            let mut out = Vec::with_capacity(run.len());
            for (cluster, offset, clen) in run {
                let from = (offset - start) as usize;
                let input = &raw[from..from + clen as usize];
                let mut data = vec![0u8; cluster_size];
                qcow2_defs::decompress_cluster(compression, input, &mut data).map_err(|why| {
                    SparseError::Qcow2 {
                        image: self.meta.describe(),
                        source: qcow2_defs::Qcow2Error::Decompress {
                            cluster,
                            offset,
                            why,
                        },
                    }
                })?;
                out.push((cluster, Arc::<[u8]>::from(data)));
            }
            Ok::<_, SparseError>(out)
        });
        let fetched = futures::future::try_join_all(fetches).await?;
        let keep = (DECOMPRESSED_BUDGET / self.cluster_size.max(1)).max(2) as usize;
        let mut kept = self.decompressed.lock();
        for (cluster, data) in fetched.into_iter().flatten() {
            kept.push_back((cluster, data.clone()));
            found.push((cluster, data));
        }
        while kept.len() > keep {
            kept.pop_front();
        }
        Ok(found)
    }
}

impl DiskIo for SparseDisk {
    fn disk_type(&self) -> &str {
        match self.format {
            ImageFormat::DynamicVhd1 => "sparse_vhd1",
            ImageFormat::Vhdx => "sparse_vhdx",
            ImageFormat::Qcow2 => "sparse_qcow2",
            ImageFormat::Flat | ImageFormat::FixedVhd1 => "sparse",
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
        self.meta.blob().counters().into()
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        check_io_range(sector, buf.len(), SECTOR_SIZE as u32, self.sector_count)?;
        let len = buf.len();
        self.read_bytes(sector * SECTOR_SIZE, buf)
            .await
            .map_err(|e| DiskError::io(format!("reading {len} bytes at sector {sector}"), e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_split_at_boundaries() {
        let v: Vec<_> = split_units(1000, 5000, 2048).collect();
        assert_eq!(v, [(0, 1000, 1048), (1, 0, 2048), (2, 0, 1904)]);
        assert_eq!(split_units(4096, 0, 512).count(), 0);
        assert_eq!(split_units(0, 512, 512).collect::<Vec<_>>(), [(0, 0, 512)]);
    }
}
