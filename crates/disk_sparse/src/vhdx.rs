//! VHDX: header section, log check, metadata, BAT pieces.

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
use vhdx_defs::BAT_ENTRY_SIZE;
use vhdx_defs::BatLayout;
use vhdx_defs::Block;
use vhdx_defs::DiskMetadata;
use vhdx_defs::FileHeaders;
use vhdx_defs::HEADER_AREA_END;
use vhdx_defs::METADATA_TABLE_SIZE;
use vhdx_defs::VhdxError;

/// The largest log this reader scans for entries to replay (VHDX tools
/// write 1 MiB logs).
const MAX_LOG_SCAN: u32 = 64 << 20;

/// Decoded BAT pieces: the first block of the piece and its blocks.
type BatPiece = Arc<(u64, Vec<Block>)>;

pub(crate) struct VhdxMapper {
    bat: BatLayout,
    /// End of the used BAT entries in the file.
    bat_end: u64,
    decoded: Mutex<HashMap<u64, BatPiece>>,
}

fn vhdx_err(meta: &MetaReader) -> impl Fn(VhdxError) -> SparseError + '_ {
    move |source| SparseError::Vhdx {
        image: meta.describe(),
        source,
    }
}

pub(crate) async fn open(meta: &MetaReader) -> Result<Opened, SparseError> {
    let len = meta.len();
    let err = vhdx_err(meta);
    let area = meta
        .read(0..HEADER_AREA_END.min(len), "VHDX header section")
        .await?;
    let headers = FileHeaders::parse(&area, len).map_err(&err)?;
    let header = &headers.header;
    if !header.log_guid.is_nil() {
        // The log may hold writes that never reached the BAT or the
        // payload: look for a valid entry of this log.
        if header.log_length > MAX_LOG_SCAN {
            return Err(err(VhdxError::LogNotEmpty));
        }
        let log = meta.read(header.log_range(), "VHDX log").await?;
        if vhdx_defs::log_has_entries(header, &log) {
            return Err(err(VhdxError::LogNotEmpty));
        }
    }
    let m = headers.regions.metadata;
    let table = meta
        .read_at(m.offset, METADATA_TABLE_SIZE as u64, "VHDX metadata table")
        .await?;
    let locations = vhdx_defs::parse_metadata_table(&table, m.length).map_err(&err)?;
    let mut items = Vec::with_capacity(locations.len());
    for l in &locations {
        items.push(
            meta.read_at(
                m.offset + u64::from(l.offset),
                l.length.into(),
                "VHDX metadata item",
            )
            .await?,
        );
    }
    let item_refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
    let disk = DiskMetadata::parse(&locations, &item_refs).map_err(&err)?;
    let bat = BatLayout::new(&headers, &disk, len).map_err(&err)?;
    let bat_end = bat.entry_offset(bat.payload_blocks - 1) + BAT_ENTRY_SIZE;
    Ok(Opened {
        disk_size: disk.disk_size,
        // The data write GUID changes whenever the disk's data does: the
        // identity of the contents, so the read cache's key.
        disk_id: Some(header.data_write_guid.0),
        cluster_size: disk.block_size.into(),
        compression: None,
        mapper: Mapper::Vhdx(VhdxMapper {
            bat,
            bat_end,
            decoded: Mutex::new(HashMap::new()),
        }),
    })
}

impl VhdxMapper {
    async fn block(&self, meta: &MetaReader, block: u64) -> Result<Block, SparseError> {
        let entry = self.bat.entry_offset(block);
        let piece = entry / PIECE_SIZE;
        let decoded = self.decoded.lock().get(&piece).cloned();
        let decoded = match decoded {
            Some(d) => d,
            None => {
                let region = self.bat.region.offset;
                let start = region.max(piece * PIECE_SIZE);
                let end = self.bat_end.min((piece + 1) * PIECE_SIZE);
                let raw = meta.read(start..end, "VHDX BAT").await?;
                let entries = self
                    .bat
                    .decode_entries((start - region) / BAT_ENTRY_SIZE, &raw)
                    .map_err(vhdx_err(meta))?;
                let first = entries.first().map_or(block, |(b, _)| *b);
                let d: BatPiece = Arc::new((first, entries.into_iter().map(|(_, s)| s).collect()));
                self.decoded.lock().insert(piece, d.clone());
                d
            }
        };
        block
            .checked_sub(decoded.0)
            .and_then(|i| decoded.1.get(i as usize).copied())
            .ok_or_else(|| vhdx_err(meta)(VhdxError::Missing("BAT entry of a payload block")))
    }

    pub(crate) async fn map(
        &self,
        meta: &MetaReader,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), SparseError> {
        for (block, in_block, n) in split_units(offset, len, self.bat.block_size.into()) {
            let e = match self.block(meta, block).await? {
                Block::Zero => Extent::Zero(n),
                Block::Present(at) => Extent::File {
                    offset: at + in_block,
                    len: n,
                },
            };
            push_extent(out, e);
        }
        Ok(())
    }
}
