//! qcow2: header, L1 and L2 entries, compressed clusters.

use crate::MetaReader;
use crate::SparseError;
use crate::disk::Extent;
use crate::disk::Mapper;
use crate::disk::Opened;
use crate::disk::push_extent;
use crate::disk::split_units;
use qcow2_defs::Cluster;
use qcow2_defs::Header;
use qcow2_defs::Layout;
use qcow2_defs::Qcow2Error;

pub(crate) struct Qcow2Mapper {
    layout: Layout,
}

fn qcow2_err(meta: &MetaReader) -> impl Fn(Qcow2Error) -> SparseError + '_ {
    move |source| SparseError::Qcow2 {
        image: meta.describe(),
        source,
    }
}

pub(crate) async fn open(meta: &MetaReader) -> Result<Opened, SparseError> {
    let err = qcow2_err(meta);
    // The first piece holds the header and, usually, a backing file's name.
    let head = meta
        .read(0..meta.len().min(crate::PIECE_SIZE), "qcow2 header")
        .await?;
    let header = Header::parse(&head).map_err(&err)?;
    if header.incompatible_features & qcow2_defs::incompatible::CORRUPT != 0 {
        tracing::warn!(
            image = %meta.describe(),
            "QEMU marked this qcow2 image corrupt; reading it anyway (read-only)"
        );
    }
    let compression = header.compression;
    let layout = Layout::new(header, meta.len()).map_err(&err)?;
    Ok(Opened {
        disk_size: layout.header.size,
        disk_id: None,
        cluster_size: layout.cluster_size,
        compression: Some(compression),
        mapper: Mapper::Qcow2(Qcow2Mapper { layout }),
    })
}

fn be_u64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

impl Qcow2Mapper {
    async fn cluster(&self, meta: &MetaReader, cluster: u64) -> Result<Cluster, SparseError> {
        let err = qcow2_err(meta);
        let (l1, l2) = self.layout.indexes(cluster);
        let raw = meta
            .read_at(self.layout.l1_range().start + l1 * 8, 8, "qcow2 L1 table")
            .await?;
        let Some(table) = self.layout.decode_l1(l1, be_u64(&raw)).map_err(&err)? else {
            return Ok(Cluster::Unallocated);
        };
        let raw = meta.read_at(table + l2 * 8, 8, "qcow2 L2 table").await?;
        self.layout
            .decode_l2(cluster, table, be_u64(&raw))
            .map_err(&err)
    }

    pub(crate) async fn map(
        &self,
        meta: &MetaReader,
        offset: u64,
        len: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), SparseError> {
        for (cluster, in_cluster, n) in split_units(offset, len, self.layout.cluster_size) {
            let e = match self.cluster(meta, cluster).await? {
                Cluster::Unallocated | Cluster::Zero => Extent::Zero(n),
                Cluster::Data(at) => Extent::File {
                    offset: at + in_cluster,
                    len: n,
                },
                Cluster::Compressed {
                    offset: at,
                    len: clen,
                } => Extent::Compressed {
                    cluster,
                    offset: at,
                    clen: clen.min(meta.len() - at),
                    skip: in_cluster,
                    len: n,
                },
            };
            push_extent(out, e);
        }
        Ok(())
    }
}
