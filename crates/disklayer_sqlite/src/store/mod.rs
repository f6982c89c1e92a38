//! The storage engine's synchronous core: one SQLite file holding chunk
//! rows, read and written through connections the caller owns.
//!
//! Everything here blocks. Only the engine's own threads (`engine.rs`)
//! call it, each with the connections it owns; see the crate
//! documentation for the file format.

mod chunk;
mod conn;
mod schema;

pub(crate) use chunk::set_bits;
pub(crate) use conn::ConnKind;
pub(crate) use conn::MAPPED_READ_LIMIT;
pub(crate) use conn::open_conn;
pub(crate) use schema::format;

use crate::LayerMetadata;
use crate::SqliteLayerError;
use crate::checkpoint::AfterCommit;
use crate::checkpoint::Checkpointer;
use crate::engine::debug_assert_engine_thread;
use chunk::Bitmap;
use chunk::ChunkImage;
use conn::checkpoint;
use conn::chunk_presence_rows;
use conn::corrupt;
use conn::io_err;
use conn::sql_err;
use rusqlite::Connection;
use rusqlite::TransactionBehavior;
use rusqlite::params;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// What every engine thread knows about the file: where it is, its
/// validated metadata, and the checkpoint bookkeeping of its writes.
pub(crate) struct Store {
    path: PathBuf,
    meta: LayerMetadata,
    /// Sectors per chunk (a multiple of 8).
    spc: u32,
    read_only: bool,
    /// Checkpoints the WAL off the writer's path (see [`Checkpointer`]).
    checkpointer: Arc<Checkpointer>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.checkpointer.stop();
    }
}

/// The checkpoint thread: one connection of its own, one `PASSIVE`
/// checkpoint per request.
fn run_checkpoints(cp: &Checkpointer, path: &Path) {
    crate::engine::enter_engine_thread();
    let conn = match open_conn(path, false, ConnKind::Plain) {
        Ok(c) => c,
        Err(err) => {
            tracing::debug!(
                error = &err as &dyn std::error::Error,
                "no checkpoint connection"
            );
            return;
        }
    };
    while cp.next() {
        let behind = cp.behind();
        if checkpoint(&conn, path) {
            cp.completed(behind);
        }
    }
}

impl Store {
    /// Opens an existing layer file: checks that it is a regular file,
    /// opens the first connection and validates the metadata. Returns the
    /// store and that connection (read-write unless `read_only`), which
    /// becomes the engine's writer connection.
    pub(crate) fn open(
        path: &Path,
        read_only: bool,
    ) -> Result<(Store, Connection), SqliteLayerError> {
        debug_assert_engine_thread();
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(corrupt(path, "not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SqliteLayerError::NotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(io_err(path, "inspecting the layer file", e)),
        }
        let conn = open_conn(path, read_only, ConnKind::Plain)?;
        let meta = schema::read_meta(path, &conn)?;
        let spc = meta.chunk_size / meta.geometry.sector_size;
        if !read_only {
            // Checkpoints are run by `Checkpointer`, not by whichever
            // commit crosses SQLite's threshold.
            conn.execute_batch("PRAGMA wal_autocheckpoint=0")
                .map_err(|e| sql_err(path, "opening the database", e))?;
        }
        Ok((
            Store {
                path: path.to_path_buf(),
                meta,
                spc,
                read_only,
                checkpointer: Arc::default(),
            },
            conn,
        ))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn meta(&self) -> &LayerMetadata {
        &self.meta
    }

    pub(crate) fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn check_writable(&self) -> Result<(), SqliteLayerError> {
        if self.read_only {
            return Err(SqliteLayerError::Disk(disk_backend::DiskError::ReadOnly));
        }
        Ok(())
    }

    fn ss(&self) -> usize {
        self.meta.geometry.sector_size as usize
    }

    /// Sectors of chunk `idx` that lie inside the disk.
    fn span(&self, idx: u64) -> u32 {
        let start = idx * u64::from(self.spc);
        (self.meta.geometry.sector_count - start).min(u64::from(self.spc)) as u32
    }

    fn check_range(&self, sector: u64, count: u64) -> Result<(), SqliteLayerError> {
        disk_backend::check_sector_range(sector, count, self.meta.geometry.sector_count)
            .map_err(SqliteLayerError::Disk)
    }

    /// Checks a row's shape against the format; returns its bitmap
    /// (all-ones over the span for a full chunk) and expected data length.
    fn row_shape(
        &self,
        idx: i64,
        present: Option<Vec<u8>>,
    ) -> Result<(Bitmap, bool, usize), SqliteLayerError> {
        let chunks = self
            .meta
            .geometry
            .sector_count
            .div_ceil(u64::from(self.spc));
        if idx < 0 || idx as u64 >= chunks {
            return Err(corrupt(
                &self.path,
                format!("chunk index {idx} is out of range"),
            ));
        }
        let span = self.span(idx as u64);
        match present {
            None => Ok((
                Bitmap::full(self.spc, span),
                true,
                span as usize * self.ss(),
            )),
            Some(bits) => {
                let bm = Bitmap(bits);
                if bm.0.len() != self.spc as usize / 8 {
                    return Err(corrupt(
                        &self.path,
                        format!("chunk {idx} has a presence bitmap of {} bytes", bm.0.len()),
                    ));
                }
                if (span..self.spc).any(|i| bm.get(i)) {
                    return Err(corrupt(
                        &self.path,
                        format!("chunk {idx} marks sectors past the end of the disk"),
                    ));
                }
                let n = bm.count();
                Ok((bm, false, n as usize * self.ss()))
            }
        }
    }

    /// Reads the present sectors of `sector..sector + buf.len() / ss` into
    /// `buf`, with one query for the whole range. The bytes of absent
    /// sectors are left as they were. Returns the presence of each sector
    /// of the request (bit `i` of the result is sector `sector + i`).
    pub(crate) fn read(
        &self,
        conn: &Connection,
        sector: u64,
        buf: &mut [u8],
    ) -> Result<Vec<u64>, SqliteLayerError> {
        debug_assert_engine_thread();
        let ss = self.ss();
        let count = (buf.len() / ss) as u64;
        self.check_range(sector, count)?;
        let mut presence = vec![0u64; count.div_ceil(64) as usize];
        if count == 0 {
            return Ok(presence);
        }
        let end = sector + count;
        let spc = u64::from(self.spc);
        let first = sector / spc;
        let last = (end - 1) / spc;
        let path = &self.path;
        // No explicit transaction: the row query stays active while the
        // BLOBs are read, and SQLite keeps one read transaction (one WAL
        // snapshot) open for as long as a statement is active, so
        // bitmaps and data are consistent. This saves a BEGIN and a
        // COMMIT per read.
        let mut stmt = conn
            .prepare_cached(
                "SELECT idx, present FROM chunks WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx",
            )
            .map_err(|e| sql_err(path, "preparing a read", e))?;
        let mut rows = stmt
            .query(params![first as i64, last as i64])
            .map_err(|e| sql_err(path, "reading chunk rows", e))?;
        let mut blob: Option<rusqlite::blob::Blob<'_>> = None;
        while let Some(row) = rows
            .next()
            .map_err(|e| sql_err(path, "reading chunk rows", e))?
        {
            let idx: i64 = row
                .get(0)
                .map_err(|e| sql_err(path, "reading chunk rows", e))?;
            let present: Option<Vec<u8>> = row
                .get(1)
                .map_err(|e| sql_err(path, "reading chunk rows", e))?;
            let (bm, full, data_len) = self.row_shape(idx, present)?;
            let b = match blob.take() {
                Some(mut b) => {
                    b.reopen(idx)
                        .map_err(|e| sql_err(path, "opening chunk data", e))?;
                    b
                }
                None => conn
                    .blob_open(rusqlite::MAIN_DB, "chunks", "data", idx, true)
                    .map_err(|e| sql_err(path, "opening chunk data", e))?,
            };
            if b.len() != data_len {
                return Err(corrupt(
                    path,
                    format!(
                        "chunk {idx} holds {} bytes of data, its bitmap says {data_len}",
                        b.len()
                    ),
                ));
            }
            let idx = idx as u64;
            let cstart = idx * spc;
            let lo = sector.max(cstart);
            let hi = end.min(cstart + spc);
            if full {
                // The common case: one read for the whole overlap.
                let dst = &mut buf[(lo - sector) as usize * ss..(hi - sector) as usize * ss];
                b.read_at_exact(dst, (lo - cstart) as usize * ss)
                    .map_err(|e| sql_err(path, "reading chunk data", e))?;
                set_bits(&mut presence, lo - sector, hi - sector);
                blob = Some(b);
                continue;
            }
            // Walk runs of equal presence inside [lo, hi).
            let mut s = lo;
            let mut data_off = if full {
                (lo - cstart) as usize * ss
            } else {
                bm.count_before((lo - cstart) as u32) as usize * ss
            };
            while s < hi {
                let here = bm.get((s - cstart) as u32);
                let mut e = s + 1;
                while e < hi && bm.get((e - cstart) as u32) == here {
                    e += 1;
                }
                let dst = &mut buf[(s - sector) as usize * ss..(e - sector) as usize * ss];
                if here {
                    b.read_at_exact(dst, data_off)
                        .map_err(|e| sql_err(path, "reading chunk data", e))?;
                    data_off += dst.len();
                    set_bits(&mut presence, s - sector, e - sector);
                }
                s = e;
            }
            blob = Some(b);
        }
        Ok(presence)
    }

    /// Writes `buf` at `sector` in one transaction. Without `overwrite`,
    /// only sectors not yet present are written. Returns the number of
    /// sectors whose contents changed.
    pub(crate) fn write(
        &self,
        conn: &mut Connection,
        sector: u64,
        buf: &[u8],
        overwrite: bool,
    ) -> Result<u64, SqliteLayerError> {
        self.write_batch(conn, &[(sector, buf)], overwrite)
    }

    /// Writes several `(sector, data)` pieces in one transaction, in order
    /// (a later piece sees what an earlier one wrote). Returns the number
    /// of sectors written. All or nothing: an error rolls back every piece.
    pub(crate) fn write_batch(
        &self,
        conn: &mut Connection,
        pieces: &[(u64, &[u8])],
        overwrite: bool,
    ) -> Result<u64, SqliteLayerError> {
        let ss = self.ss();
        for (sector, buf) in pieces {
            self.check_range(*sector, (buf.len() / ss) as u64)?;
        }
        if pieces.iter().all(|(_, b)| b.len() < ss) {
            return Ok(0);
        }
        self.check_writable()?;
        debug_assert_engine_thread();
        let path = &self.path;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err(path, "starting a write transaction", e))?;
        let mut written = 0u64;
        for (sector, buf) in pieces {
            written += self.write_in(&tx, *sector, buf, overwrite)?;
        }
        tx.commit()
            .map_err(|e| sql_err(path, "committing a write", e))?;
        self.after_commit(conn, written * ss as u64);
        Ok(written)
    }

    /// Checkpoint bookkeeping after a commit of about `bytes` (see
    /// [`Checkpointer`]). Checkpoint failures are not errors of the write
    /// (it has committed); the WAL is checkpointed again later.
    fn after_commit(&self, conn: &Connection, bytes: u64) {
        match self.checkpointer.committed(bytes) {
            AfterCommit::Nothing => {}
            AfterCommit::StartThread => {
                let cp = self.checkpointer.clone();
                let path = self.path.clone();
                self.checkpointer.start(move || run_checkpoints(&cp, &path));
            }
            AfterCommit::CheckpointInline => {
                let behind = self.checkpointer.behind();
                if checkpoint(conn, &self.path) {
                    self.checkpointer.completed(behind);
                }
            }
        }
    }

    /// One piece of [`write_batch`](Self::write_batch), inside its
    /// transaction.
    fn write_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        sector: u64,
        buf: &[u8],
        overwrite: bool,
    ) -> Result<u64, SqliteLayerError> {
        let ss = self.ss();
        let count = (buf.len() / ss) as u64;
        if count == 0 {
            return Ok(0);
        }
        let end = sector + count;
        let spc = u64::from(self.spc);
        let first = sector / spc;
        let last = (end - 1) / spc;
        let path = &self.path;
        let existing = chunk_presence_rows(tx, path, first, last)?;
        let mut existing = existing.into_iter().peekable();
        let mut written = 0u64;
        for idx in first..=last {
            let cstart = idx * spc;
            let lo = sector.max(cstart);
            let hi = end.min(cstart + spc);
            let new = &buf[(lo - sector) as usize * ss..(hi - sector) as usize * ss];
            let local = (lo - cstart) as u32;
            let span = self.span(idx);
            let row = match existing.peek() {
                Some((i, _)) if *i as u64 == idx => existing.next().map(|(_, p)| p),
                _ => None,
            };
            match row {
                None => {
                    // A new chunk: the compact layout is exactly the slice.
                    let n = (hi - lo) as u32;
                    let present = if n == span {
                        None
                    } else {
                        let mut bm = Bitmap::empty(self.spc);
                        for i in local..local + n {
                            bm.set(i, true);
                        }
                        Some(bm.0)
                    };
                    // The row is inserted with a zeroblob and its bytes are
                    // written through incremental blob I/O: binding `new`
                    // would copy it twice (SQLite's bound copy, then the
                    // record) before the third copy into the pages. This
                    // way SQLite zeroes the pages and the one copy goes
                    // straight into them; the two copies saved were
                    // about a fifth of the cache writer's time in the cold
                    // sequential bench.
                    tx.prepare_cached(
                        "INSERT INTO chunks (idx, present, data) VALUES (?1, ?2, zeroblob(?3))",
                    )
                    .and_then(|mut s| s.execute(params![idx as i64, present, new.len() as i64]))
                    .map_err(|e| sql_err(path, "inserting a chunk", e))?;
                    tx.blob_open(rusqlite::MAIN_DB, "chunks", "data", idx as i64, false)
                        .and_then(|mut b| b.write_at(new, 0))
                        .map_err(|e| sql_err(path, "writing a new chunk's data", e))?;
                    written += u64::from(n);
                }
                Some(present) => {
                    let (bm, full, data_len) = self.row_shape(idx as i64, present)?;
                    if full {
                        if overwrite {
                            let mut b = tx
                                .blob_open(rusqlite::MAIN_DB, "chunks", "data", idx as i64, false)
                                .map_err(|e| sql_err(path, "opening chunk data", e))?;
                            if b.len() != data_len {
                                return Err(corrupt(
                                    path,
                                    format!(
                                        "chunk {idx} holds {} bytes of data, expected {data_len}",
                                        b.len()
                                    ),
                                ));
                            }
                            b.write_at(new, local as usize * ss)
                                .map_err(|e| sql_err(path, "writing chunk data", e))?;
                            written += hi - lo;
                        }
                        continue;
                    }
                    if !overwrite && (local..local + (hi - lo) as u32).all(|i| bm.get(i)) {
                        continue;
                    }
                    let data: Vec<u8> = tx
                        .prepare_cached("SELECT data FROM chunks WHERE idx = ?1")
                        .and_then(|mut s| s.query_row([idx as i64], |r| r.get(0)))
                        .map_err(|e| sql_err(path, "reading chunk data", e))?;
                    if data.len() != data_len {
                        return Err(corrupt(
                            path,
                            format!(
                                "chunk {idx} holds {} bytes of data, expected {data_len}",
                                data.len()
                            ),
                        ));
                    }
                    let old = ChunkImage { present: bm, data };
                    let (merged, n) = old.merge(ss, local, new, overwrite);
                    let present = if merged.present.count() == span {
                        None
                    } else {
                        Some(merged.present.0)
                    };
                    tx.prepare_cached("UPDATE chunks SET present = ?2, data = ?3 WHERE idx = ?1")
                        .and_then(|mut s| s.execute(params![idx as i64, present, merged.data]))
                        .map_err(|e| sql_err(path, "updating a chunk", e))?;
                    written += u64::from(n);
                }
            }
        }
        Ok(written)
    }

    /// Marks sectors absent; chunks left empty are deleted.
    pub(crate) fn unmap(
        &self,
        conn: &mut Connection,
        sector: u64,
        count: u64,
    ) -> Result<(), SqliteLayerError> {
        self.check_writable()?;
        debug_assert_engine_thread();
        self.check_range(sector, count)?;
        if count == 0 {
            return Ok(());
        }
        let ss = self.ss();
        let end = sector + count;
        let spc = u64::from(self.spc);
        let first = sector / spc;
        let last = (end - 1) / spc;
        let path = &self.path;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err(path, "starting an unmap transaction", e))?;
        let rows = chunk_presence_rows(&tx, path, first, last)?;
        let mut deleted = false;
        for (idx, present) in rows {
            let (bm, _, data_len) = self.row_shape(idx, present)?;
            let cstart = idx as u64 * spc;
            let lo = sector.max(cstart);
            let hi = end.min(cstart + spc);
            let local = (lo - cstart) as u32;
            let n = (hi - lo) as u32;
            let covers_all =
                (0..self.span(idx as u64)).all(|i| !bm.get(i) || (i >= local && i < local + n));
            if covers_all {
                tx.prepare_cached("DELETE FROM chunks WHERE idx = ?1")
                    .and_then(|mut s| s.execute([idx]))
                    .map_err(|e| sql_err(path, "deleting a chunk", e))?;
                deleted = true;
                continue;
            }
            if !(local..local + n).any(|i| bm.get(i)) {
                continue;
            }
            let data: Vec<u8> = tx
                .prepare_cached("SELECT data FROM chunks WHERE idx = ?1")
                .and_then(|mut s| s.query_row([idx], |r| r.get(0)))
                .map_err(|e| sql_err(path, "reading chunk data", e))?;
            if data.len() != data_len {
                return Err(corrupt(
                    path,
                    format!(
                        "chunk {idx} holds {} bytes of data, expected {data_len}",
                        data.len()
                    ),
                ));
            }
            let (rest, _) = ChunkImage { present: bm, data }.remove(ss, local, n);
            tx.prepare_cached("UPDATE chunks SET present = ?2, data = ?3 WHERE idx = ?1")
                .and_then(|mut s| s.execute(params![idx, rest.present.0, rest.data]))
                .map_err(|e| sql_err(path, "updating a chunk", e))?;
        }
        tx.commit()
            .map_err(|e| sql_err(path, "committing an unmap", e))?;
        if deleted {
            // Give freed pages back to the file system.
            conn.execute_batch("PRAGMA incremental_vacuum")
                .map_err(|e| sql_err(path, "vacuuming", e))?;
        }
        Ok(())
    }

    /// Makes every committed transaction durable: WAL mode with
    /// `synchronous=NORMAL` writes commits to the WAL without syncing it,
    /// so sync the WAL (and the database) file here.
    pub(crate) fn sync(&self) -> Result<(), SqliteLayerError> {
        if self.read_only {
            return Ok(());
        }
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        for p in [PathBuf::from(wal), self.path.clone()] {
            match std::fs::File::open(&p) {
                Ok(f) => f.sync_all().map_err(|e| io_err(&p, "syncing", e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&p, "opening for sync", e)),
            }
        }
        Ok(())
    }

    /// Number of chunk rows and of present sectors, for tests and tools.
    pub(crate) fn stats(&self, conn: &Connection) -> Result<(u64, u64), SqliteLayerError> {
        debug_assert_engine_thread();
        let path = &self.path;
        let rows: Vec<(i64, Option<Vec<u8>>)> = {
            let mut stmt = conn
                .prepare_cached("SELECT idx, present FROM chunks")
                .map_err(|e| sql_err(path, "preparing stats", e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| sql_err(path, "reading chunk rows", e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| sql_err(path, "reading chunk rows", e))?
        };
        let mut sectors = 0;
        let n = rows.len() as u64;
        for (idx, present) in rows {
            let (bm, _, _) = self.row_shape(idx, present)?;
            sectors += u64::from(bm.count());
        }
        Ok((n, sectors))
    }
}
