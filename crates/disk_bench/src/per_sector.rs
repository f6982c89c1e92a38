//! The baseline read cache: the reference's one-row-per-sector SQLite
//! layout, as a `disk_layered` read-cache layer.
//!
//! Model (the reference's, kept on purpose): table `sectors(sector INTEGER
//! PRIMARY KEY, data BLOB)` with one row per 512-byte sector (`NULL` data
//! for an all-zero sector); a read is one range query collecting one row
//! per sector; a fill is one `INSERT OR IGNORE` per sector in one
//! transaction; fills are exactly the missed sectors (no chunk widening);
//! all SQLite work runs on a blocking thread behind one connection.
//!
//! DEVNOTE: this exists only so `cargo xtask bench` can compare our chunked
//! cache with the layout it replaced inside the same stack (RAM layer above,
//! HTTP blob below) in the same run. It is not a product layer: no
//! metadata table, no identity check, no atomic creation.

use disk_backend::DiskError;
use disk_layered::LayerIo;
use disk_layered::SectorMarker;
use disk_layered::WriteNoOverwrite;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

const SS: usize = 512;

/// The per-sector read-cache layer.
pub struct PerSectorLayer {
    conn: Arc<Mutex<rusqlite::Connection>>,
    sector_count: u64,
}

fn err(e: impl std::fmt::Display) -> DiskError {
    DiskError::io("per-sector SQLite cache", e.to_string())
}

impl PerSectorLayer {
    /// Opens (creating if needed) the cache database at `path` for a disk of
    /// `sector_count` 512-byte sectors.
    pub fn open(path: &Path, sector_count: u64) -> anyhow::Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS sectors (sector INTEGER PRIMARY KEY, data BLOB);",
        )?;
        Ok(PerSectorLayer {
            conn: Arc::new(Mutex::new(conn)),
            sector_count,
        })
    }

    /// Rows (present sectors) in the database at `path`.
    pub fn present_sectors(path: &Path) -> anyhow::Result<u64> {
        let conn = rusqlite::Connection::open(path)?;
        let n: i64 = conn.query_row("SELECT count(*) FROM sectors", [], |r| r.get(0))?;
        Ok(u64::try_from(n)?)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, DiskError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().map_err(err)?;
            f(&mut c).map_err(err)
        })
        .await
        .map_err(err)?
    }

    async fn insert(&self, sector: u64, buf: &[u8], replace: bool) -> Result<(), DiskError> {
        let data = buf.to_vec();
        let sql = if replace {
            "INSERT OR REPLACE INTO sectors (sector, data) VALUES (?1, ?2)"
        } else {
            "INSERT OR IGNORE INTO sectors (sector, data) VALUES (?1, ?2)"
        };
        self.blocking(move |c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(sql)?;
                for (i, s) in data.chunks(SS).enumerate() {
                    let v = if s.iter().all(|&b| b == 0) {
                        None
                    } else {
                        Some(s)
                    };
                    st.execute(rusqlite::params![(sector + i as u64) as i64, v])?;
                }
            }
            tx.commit()
        })
        .await
    }
}

impl LayerIo for PerSectorLayer {
    fn layer_type(&self) -> &str {
        "per-sector-sqlite"
    }

    fn sector_count(&self) -> u64 {
        self.sector_count
    }

    fn sector_size(&self) -> u32 {
        SS as u32
    }

    fn is_logically_read_only(&self) -> bool {
        false
    }

    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        mut marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        let n = (buf.len() / SS) as u64;
        let rows = self
            .blocking(move |c| {
                let mut st = c.prepare_cached(
                    "SELECT sector, data FROM sectors WHERE sector >= ?1 AND sector < ?2 ORDER BY sector",
                )?;
                let rows = st.query_map([sector as i64, (sector + n) as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        for (s, data) in rows {
            let s = s as u64;
            let at = ((s - sector) as usize) * SS;
            let dst = &mut buf[at..at + SS];
            match data {
                Some(d) if d.len() == SS => dst.copy_from_slice(&d),
                None => dst.fill(0),
                Some(_) => return Err(err(format!("sector {s} row has a bad length"))),
            }
            marker.set(s);
        }
        Ok(())
    }

    async fn write(&self, sector: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        self.insert(sector, buf, true).await
    }

    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }

    async fn unmap(&self, sector: u64, count: u64, next_is_zero: bool) -> Result<(), DiskError> {
        if next_is_zero {
            self.blocking(move |c| {
                c.execute(
                    "DELETE FROM sectors WHERE sector >= ?1 AND sector < ?2",
                    [sector as i64, (sector + count) as i64],
                )
                .map(drop)
            })
            .await
        } else {
            let zeros = vec![0u8; usize::try_from(count).map_err(err)? * SS];
            self.insert(sector, &zeros, true).await
        }
    }

    fn write_no_overwrite(&self) -> Option<impl WriteNoOverwrite> {
        Some(self)
    }
}

impl WriteNoOverwrite for PerSectorLayer {
    async fn write_no_overwrite(&self, sector: u64, buf: &[u8]) -> Result<(), DiskError> {
        self.insert(sector, buf, false).await
    }
}
