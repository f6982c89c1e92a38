//! Dynamic VHD1: footer copy, dynamic header, BAT pieces, sector bitmaps.

use crate::MetaReader;
use crate::PIECE_SIZE;
use crate::SparseError;
use crate::disk::Extent;
use crate::disk::Mapper;
use crate::disk::Opened;
use crate::disk::push_extent;
use crate::disk::split_units;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use vhd1_defs::FOOTER_SIZE;
use vhd1_defs::Footer;
use vhd1_defs::dynamic::BlockLocation;
use vhd1_defs::dynamic::DynamicError;
use vhd1_defs::dynamic::DynamicHeader;
use vhd1_defs::dynamic::DynamicLayout;
use vhd1_defs::dynamic::HEADER_SIZE;
use vhd1_defs::dynamic::bitmap_bit;

/// A block's bitmap is fetched together with the block's data when the
/// read starts at most this far into the block (one request instead of
/// two, at the cost of these bytes).
const COMBINE_LIMIT: u64 = 64 << 10;
/// Sector bitmaps kept in memory (bitmaps are 512 bytes for 2 MiB blocks).
const MAX_BITMAPS: usize = 8192;

/// Decoded BAT pieces: the first block of the piece and its blocks.
type BatPiece = Arc<(u64, Vec<Option<BlockLocation>>)>;

pub(crate) struct VhdMapper {
    layout: DynamicLayout,
    bat: Mutex<HashMap<u64, BatPiece>>,
    bitmaps: Mutex<HashMap<u64, Arc<[u8]>>>,
}

fn vhd_err(meta: &MetaReader) -> impl Fn(DynamicError) -> SparseError + '_ {
    move |source| SparseError::Vhd1 {
        image: meta.describe(),
        source,
    }
}

pub(crate) async fn open(meta: &MetaReader) -> Result<Opened, SparseError> {
    let len = meta.len();
    let footer_err = |source| SparseError::Vhd1Footer {
        image: meta.describe(),
        source,
    };
    // The copy at offset 0 first (it is in the piece detection read);
    // the footer at the end if the copy is damaged.
    let copy = meta
        .read_at(0, FOOTER_SIZE as u64, "VHD footer copy")
        .await?;
    let footer = match Footer::parse(copy.as_slice().try_into().unwrap_or(&[0; FOOTER_SIZE])) {
        Ok(f) => f,
        Err(first) => {
            let at = vhd1_defs::footer_offset(len).map_err(footer_err)?;
            let tail = meta.read_at(at, FOOTER_SIZE as u64, "VHD footer").await?;
            Footer::parse(tail.as_slice().try_into().unwrap_or(&[0; FOOTER_SIZE]))
                .map_err(|_| footer_err(first))?
        }
    };
    let header_bytes = match footer.data_offset.checked_add(HEADER_SIZE as u64) {
        Some(end) if end <= len => {
            meta.read(footer.data_offset..end, "VHD dynamic header")
                .await?
        }
        _ => Vec::new(),
    };
    let header = DynamicHeader::parse(&header_bytes);
    let layout = DynamicLayout::new(&footer, header.as_ref().map_err(Clone::clone), len)
        .map_err(vhd_err(meta))?;
    Ok(Opened {
        disk_size: layout.disk_size,
        disk_id: Some(footer.unique_id),
        cluster_size: layout.block_size.into(),
        compression: None,
        mapper: Mapper::Vhd(VhdMapper {
            layout,
            bat: Mutex::new(HashMap::new()),
            bitmaps: Mutex::new(HashMap::new()),
        }),
    })
}

impl VhdMapper {
    /// Where block `block` is (`None`: not allocated).
    async fn block(
        &self,
        meta: &MetaReader,
        block: u64,
    ) -> Result<Option<BlockLocation>, SparseError> {
        let bat = self.layout.bat_range();
        let entry = bat.start + block * 4;
        let piece = entry / PIECE_SIZE;
        let decoded = self.bat.lock().get(&piece).cloned();
        let decoded = match decoded {
            Some(d) => d,
            None => {
                let start = bat.start.max(piece * PIECE_SIZE);
                let end = bat.end.min((piece + 1) * PIECE_SIZE);
                let raw = meta.read(start..end, "VHD BAT").await?;
                let first = (start - bat.start) / 4;
                let locs = self.layout.decode_bat(first, &raw).map_err(vhd_err(meta))?;
                let d: BatPiece = Arc::new((first, locs));
                self.bat.lock().insert(piece, d.clone());
                d
            }
        };
        Ok(decoded
            .1
            .get((block - decoded.0) as usize)
            .copied()
            .flatten())
    }

    pub(crate) async fn map(
        &self,
        meta: &MetaReader,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), SparseError> {
        let bs = u64::from(self.layout.block_size);
        for (block, in_block, n) in split_units(offset, len, bs) {
            match self.block(meta, block).await? {
                None => push_extent(out, Extent::Zero(n)),
                Some(loc) => self.map_block(meta, block, loc, in_block, n, out).await?,
            }
        }
        Ok(())
    }

    /// Maps `n` bytes at `in_block` of an allocated block by its sector
    /// bitmap: set bits read the file, clear bits read zeros.
    async fn map_block(
        &self,
        meta: &MetaReader,
        block: u64,
        loc: BlockLocation,
        in_block: u64,
        n: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), SparseError> {
        let bitmap_size = u64::from(self.layout.bitmap_size);
        let cached = self.bitmaps.lock().get(&block).cloned();
        let (bitmap, fetched): (Arc<[u8]>, Option<Arc<[u8]>>) = match cached {
            Some(b) => (b, None),
            None => {
                let combine = in_block <= COMBINE_LIMIT;
                let fetch_len = if combine {
                    bitmap_size + in_block + n
                } else {
                    bitmap_size
                };
                let avail = meta.len().saturating_sub(loc.bitmap_offset).min(fetch_len);
                let mut buf = vec![0u8; fetch_len as usize];
                meta.blob()
                    .read(&mut buf[..avail as usize], loc.bitmap_offset)
                    .await
                    .map_err(|source| SparseError::Read {
                        image: meta.describe(),
                        structure: format!("sector bitmap of VHD block {block}"),
                        offset: loc.bitmap_offset,
                        len: avail,
                        source,
                    })?;
                let bitmap: Arc<[u8]> = buf[..bitmap_size as usize].into();
                {
                    let mut kept = self.bitmaps.lock();
                    if kept.len() >= MAX_BITMAPS {
                        kept.clear();
                    }
                    kept.insert(block, bitmap.clone());
                }
                (bitmap, combine.then(|| Arc::from(buf)))
            }
        };
        let first = in_block / 512;
        let count = n / 512;
        let mut s = 0;
        while s < count {
            let present = bitmap_bit(&bitmap, first + s);
            let mut run = 1;
            while s + run < count && bitmap_bit(&bitmap, first + s + run) == present {
                run += 1;
            }
            let at = in_block + s * 512;
            let bytes = run * 512;
            let e = match (&fetched, present) {
                (_, false) => Extent::Zero(bytes),
                (Some(data), true) => Extent::Bytes {
                    data: data.clone(),
                    start: (bitmap_size + at) as usize,
                    len: bytes as usize,
                },
                (None, true) => Extent::File {
                    offset: loc.data_offset + at,
                    len: bytes,
                },
            };
            push_extent(out, e);
            s += run;
        }
        Ok(())
    }
}
