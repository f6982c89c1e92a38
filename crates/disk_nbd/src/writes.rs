//! How the export applies byte ranges to a disk of sectors: partial-sector
//! writes as read-modify-write, zeroes in chunks, trims of whole sectors.

use disk_backend::DiskError;

use crate::server::Export;

/// Chunk size used to write zeroes.
pub(crate) const ZERO_CHUNK: usize = 1 << 20;

impl Export {
    /// Writes `data` at byte `offset`, which the caller has range-checked.
    /// Whole-sector writes go straight to the disk; partial sectors at
    /// either end are merged with the disk's current contents under the
    /// exclusive side of [`Export::rmw`].
    pub(crate) async fn write_bytes(
        &self,
        offset: u64,
        data: &[u8],
        fua: bool,
    ) -> Result<(), DiskError> {
        if data.is_empty() {
            return Ok(());
        }
        let ss = self.sector_size;
        let end = offset + data.len() as u64;
        if offset.is_multiple_of(ss) && end.is_multiple_of(ss) {
            let _shared = self.rmw.read().await;
            return self.disk.write(offset / ss, data, fua).await;
        }
        let _exclusive = self.rmw.write().await;
        let ssz = ss as usize;
        let first = offset / ss;
        let last = (end - 1) / ss;
        if first == last {
            let mut sector = vec![0u8; ssz];
            self.disk.read(first, &mut sector).await?;
            let at = (offset - first * ss) as usize;
            sector[at..at + data.len()].copy_from_slice(data);
            return self.disk.write(first, &sector, fua).await;
        }
        let mut rest = data;
        let mut sector_no = first;
        let head = (offset % ss) as usize;
        if head != 0 {
            let mut sector = vec![0u8; ssz];
            self.disk.read(first, &mut sector).await?;
            let n = ssz - head;
            sector[head..].copy_from_slice(&rest[..n]);
            self.disk.write(first, &sector, fua).await?;
            rest = &rest[n..];
            sector_no += 1;
        }
        let whole = rest.len() / ssz * ssz;
        if whole > 0 {
            self.disk.write(sector_no, &rest[..whole], fua).await?;
            rest = &rest[whole..];
        }
        if !rest.is_empty() {
            let mut sector = vec![0u8; ssz];
            self.disk.read(last, &mut sector).await?;
            sector[..rest.len()].copy_from_slice(rest);
            self.disk.write(last, &sector, fua).await?;
        }
        Ok(())
    }

    /// Writes zeroes over `len` bytes at `offset` in chunks.
    pub(crate) async fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), DiskError> {
        let chunk = self.zeroes.len() as u64;
        if chunk == 0 {
            return Err(DiskError::ReadOnly);
        }
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            // Chunk boundaries sit on multiples of the chunk size, so only
            // the first and last chunk can be unaligned.
            let n = (end - pos).min(chunk - pos % chunk);
            self.write_bytes(pos, &self.zeroes[..n as usize], false)
                .await?;
            pos += n;
        }
        // One flush for the whole range instead of FUA on every chunk.
        if fua {
            self.disk.sync_cache().await?;
        }
        Ok(())
    }

    /// Discards the whole sectors inside the range; partial sectors at the
    /// ends are left alone (a trim is a hint).
    pub(crate) async fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DiskError> {
        let ss = self.sector_size;
        let first = offset.div_ceil(ss);
        let end = (offset + len) / ss;
        if first < end {
            let _shared = self.rmw.read().await;
            self.disk.unmap(first, end - first).await?;
            if fua {
                self.disk.sync_cache().await?;
            }
        }
        Ok(())
    }
}
