//! The storage engine's synchronous core: one SQLite file holding chunk
//! rows, read and written through connections the caller owns.
//!
//! Everything here blocks. Only the engine's own threads (`engine.rs`)
//! call it, each with the connections it owns; see the crate
//! documentation for the file format.
//!
//! DEVNOTE: over 900 lines, kept whole: it is the `Store`, the operations
//! on chunk rows (read, presence, write, unmap, verify), which share the
//! row-shape and damage rules; the chunk format, the schema and the
//! connections are the submodules.

mod checksum;
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
use crate::VerifyReport;
use crate::checkpoint::AfterCommit;
use crate::checkpoint::Checkpointer;
use crate::engine::debug_assert_engine_thread;
use chunk::Bitmap;
use chunk::ChunkImage;
use conn::checkpoint;
use conn::chunk_heads;
use conn::corrupt;
use conn::io_err;
use conn::sql_err;
use rusqlite::Connection;
use rusqlite::TransactionBehavior;
use rusqlite::params;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// What a read found: the presence of each sector of the request (bit `i`
/// is the request's sector `i`), and the chunks whose bytes did not match
/// their checksums (their sectors are reported absent).
#[derive(Debug, Default)]
pub(crate) struct ReadOutcome {
    pub(crate) presence: Vec<u64>,
    pub(crate) damaged: Vec<u64>,
}

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

/// Whether the file at `conn` says it is a read cache (logically
/// read-only); `false` if that cannot be read.
fn is_cache_file(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'logically_read_only'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .is_ok_and(|v| v == 1)
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
        let mut conn = open_conn(path, read_only, ConnKind::Plain)?;
        let meta = match schema::read_meta(path, &conn) {
            // A writable layer of the format before checksums is upgraded
            // in place; a read cache is recreated by its owner instead
            // (the auto-cache), and a read-only open cannot upgrade.
            Err(SqliteLayerError::OutdatedFormat { .. }) if !read_only && !is_cache_file(&conn) => {
                let n = schema::upgrade(path, &mut conn)?;
                tracing::info!(
                    path = %path.display(),
                    chunks = n,
                    "upgraded the layer file to checksummed chunks"
                );
                schema::read_meta(path, &conn)?
            }
            other => other?,
        };
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

    /// Whether the file is a read cache (logically read-only): its data
    /// can always be fetched again, so a damaged chunk is dropped rather
    /// than reported.
    fn is_cache(&self) -> bool {
        self.meta.logically_read_only
    }

    /// Checks a row's shape against the format; returns its bitmap
    /// (all-ones over the span for a full chunk), whether it is full, and
    /// its expected data length. `sums_len` is the length of the row's
    /// checksums, which must match the data length.
    fn row_shape(
        &self,
        idx: i64,
        present: Option<Vec<u8>>,
        sums_len: usize,
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
        let (bm, full, data_len) = match present {
            None => (
                Bitmap::full(self.spc, span),
                true,
                span as usize * self.ss(),
            ),
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
                (bm, false, n as usize * self.ss())
            }
        };
        if sums_len != checksum::piece_count(data_len) * checksum::SUM_LEN {
            return Err(corrupt(
                &self.path,
                format!(
                    "chunk {idx} has {sums_len} bytes of checksums for {data_len} bytes of data"
                ),
            ));
        }
        Ok((bm, full, data_len))
    }

    /// Reads the present sectors of `sector..sector + buf.len() / ss` into
    /// `buf`, with one query for the whole range, verifying every byte it
    /// returns against the chunk's checksums. The bytes of absent sectors
    /// are left as they were. `scratch` is the caller's reusable buffer for
    /// reads that are not aligned to checksum pieces.
    ///
    /// A chunk whose bytes do not match their checksums is reported in
    /// [`ReadOutcome::damaged`] and its sectors as absent (the layer below
    /// then serves them); they are never returned.
    pub(crate) fn read(
        &self,
        conn: &Connection,
        sector: u64,
        buf: &mut [u8],
        scratch: &mut Vec<u8>,
    ) -> Result<ReadOutcome, SqliteLayerError> {
        debug_assert_engine_thread();
        let ss = self.ss();
        let count = (buf.len() / ss) as u64;
        self.check_range(sector, count)?;
        let mut out = ReadOutcome {
            presence: vec![0u64; count.div_ceil(64) as usize],
            damaged: Vec::new(),
        };
        if count == 0 {
            return Ok(out);
        }
        let end = sector + count;
        let spc = u64::from(self.spc);
        let first = sector / spc;
        let last = (end - 1) / spc;
        let path = &self.path;
        // No explicit transaction: the row query stays active while the
        // BLOBs are read, and SQLite keeps one read transaction (one WAL
        // snapshot) open for as long as a statement is active, so
        // bitmaps, checksums and data are consistent. This saves a BEGIN
        // and a COMMIT per read.
        let mut stmt = conn
            .prepare_cached(
                "SELECT idx, present, sums FROM chunks WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx",
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
            let row_err = |e| sql_err(path, "reading chunk rows", e);
            let idx: i64 = row.get(0).map_err(row_err)?;
            let present: Option<Vec<u8>> = row.get(1).map_err(row_err)?;
            // Borrowed from the row: the sums are not copied.
            let sums = row
                .get_ref(2)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(row_err)?;
            let (bm, full, data_len) = self.row_shape(idx, present, sums.len())?;
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
            let (local_lo, local_hi) = ((lo - cstart) as u32, (hi - cstart) as u32);
            // The present sectors of [lo, hi) are one contiguous range of
            // the compact data.
            let (c0, c1) = if full {
                (local_lo as usize * ss, local_hi as usize * ss)
            } else {
                (
                    bm.count_before(local_lo) as usize * ss,
                    bm.count_before(local_hi) as usize * ss,
                )
            };
            if c0 == c1 {
                blob = Some(b);
                continue;
            }
            let (w0, w1) = checksum::window(c0, c1, data_len);
            let first_piece = w0 / checksum::PIECE;
            if full && (w0, w1) == (c0, c1) {
                // The common case: aligned, straight into the caller's
                // buffer, verified there.
                let dst = &mut buf[(lo - sector) as usize * ss..(hi - sector) as usize * ss];
                b.read_at_exact(dst, c0)
                    .map_err(|e| sql_err(path, "reading chunk data", e))?;
                if checksum::verify(sums, first_piece, dst) {
                    set_bits(&mut out.presence, lo - sector, hi - sector);
                } else {
                    self.damaged_on_read(idx, &mut out)?;
                }
                blob = Some(b);
                continue;
            }
            // Whole pieces into the scratch buffer, verified, then the
            // present runs copied out.
            scratch.resize(w1 - w0, 0);
            b.read_at_exact(scratch, w0)
                .map_err(|e| sql_err(path, "reading chunk data", e))?;
            blob = Some(b);
            if !checksum::verify(sums, first_piece, scratch) {
                self.damaged_on_read(idx, &mut out)?;
                continue;
            }
            let mut data_off = c0 - w0;
            let mut s = lo;
            while s < hi {
                let here = full || bm.get((s - cstart) as u32);
                let mut e = s + 1;
                while e < hi && (full || bm.get((e - cstart) as u32) == here) {
                    e += 1;
                }
                if here {
                    let dst = &mut buf[(s - sector) as usize * ss..(e - sector) as usize * ss];
                    dst.copy_from_slice(&scratch[data_off..data_off + dst.len()]);
                    data_off += dst.len();
                    set_bits(&mut out.presence, s - sector, e - sector);
                }
                s = e;
            }
        }
        Ok(out)
    }

    /// Which sectors of `sector..sector + count` are present, from the
    /// chunk index alone (no data is read): bit `i` is sector
    /// `sector + i`.
    pub(crate) fn presence(
        &self,
        conn: &Connection,
        sector: u64,
        count: u64,
    ) -> Result<Vec<u64>, SqliteLayerError> {
        debug_assert_engine_thread();
        self.check_range(sector, count)?;
        let mut bits = vec![0u64; count.div_ceil(64) as usize];
        if count == 0 {
            return Ok(bits);
        }
        let end = sector + count;
        let spc = u64::from(self.spc);
        let path = &self.path;
        let mut stmt = conn
            .prepare_cached(
                "SELECT idx, present, length(sums) FROM chunks WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx",
            )
            .map_err(|e| sql_err(path, "preparing a presence query", e))?;
        let mut rows = stmt
            .query(params![(sector / spc) as i64, ((end - 1) / spc) as i64])
            .map_err(|e| sql_err(path, "reading chunk rows", e))?;
        while let Some(row) = rows
            .next()
            .map_err(|e| sql_err(path, "reading chunk rows", e))?
        {
            let row_err = |e| sql_err(path, "reading chunk rows", e);
            let idx: i64 = row.get(0).map_err(row_err)?;
            let present: Option<Vec<u8>> = row.get(1).map_err(row_err)?;
            let sums_len: i64 = row.get(2).map_err(row_err)?;
            let (bm, full, _) = self.row_shape(idx, present, sums_len.max(0) as usize)?;
            let cstart = idx as u64 * spc;
            let lo = sector.max(cstart);
            let hi = end.min(cstart + spc);
            if full {
                set_bits(&mut bits, lo - sector, hi - sector);
                continue;
            }
            for s in lo..hi {
                if bm.get((s - cstart) as u32) {
                    set_bits(&mut bits, s - sector, s - sector + 1);
                }
            }
        }
        Ok(bits)
    }

    /// A read found chunk `idx`'s bytes not matching their checksums: a
    /// read cache reports the chunk (its sectors stay absent, so they are
    /// served from below and the chunk is repaired); a writable layer's
    /// data cannot be fetched again, so that is an error.
    fn damaged_on_read(&self, idx: u64, out: &mut ReadOutcome) -> Result<(), SqliteLayerError> {
        if !self.is_cache() {
            return Err(corrupt(
                &self.path,
                format!("chunk {idx}'s data does not match its checksums"),
            ));
        }
        out.damaged.push(idx);
        Ok(())
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

    /// Reads a whole row's data inside a write transaction and verifies it.
    /// `Ok(None)` means the bytes do not match their checksums: in a read
    /// cache the row is then deleted (its sectors are fetched again), in a
    /// writable layer that is an error (its data cannot be fetched again).
    fn verified_data(
        &self,
        tx: &rusqlite::Transaction<'_>,
        idx: i64,
        data_len: usize,
        sums: &[u8],
    ) -> Result<Option<Vec<u8>>, SqliteLayerError> {
        let path = &self.path;
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
        if checksum::verify(sums, 0, &data) {
            return Ok(Some(data));
        }
        self.damaged_row(tx, idx)?;
        Ok(None)
    }

    /// A row whose data does not match its checksums was found while
    /// changing it: a read cache deletes it; a writable layer fails.
    fn damaged_row(
        &self,
        tx: &rusqlite::Transaction<'_>,
        idx: i64,
    ) -> Result<(), SqliteLayerError> {
        if !self.is_cache() {
            return Err(corrupt(
                &self.path,
                format!("chunk {idx}'s data does not match its checksums"),
            ));
        }
        tracing::warn!(
            path = %self.path.display(),
            chunk = idx,
            "read-cache chunk does not match its checksums; dropped (it is fetched again)"
        );
        tx.prepare_cached("DELETE FROM chunks WHERE idx = ?1")
            .and_then(|mut s| s.execute([idx]))
            .map_err(|e| sql_err(&self.path, "deleting a damaged chunk", e))?;
        Ok(())
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
        let existing = chunk_heads(tx, path, first, last)?;
        let mut existing = existing.into_iter().peekable();
        let mut written = 0u64;
        for idx in first..=last {
            let cstart = idx * spc;
            let lo = sector.max(cstart);
            let hi = end.min(cstart + spc);
            let new = &buf[(lo - sector) as usize * ss..(hi - sector) as usize * ss];
            let local = (lo - cstart) as u32;
            let span = self.span(idx);
            let mut row = match existing.peek() {
                Some(head) if head.idx as u64 == idx => existing.next(),
                _ => None,
            };
            if let Some(head) = row.take() {
                let (bm, full, data_len) =
                    self.row_shape(head.idx, head.present, head.sums.len())?;
                if full && !overwrite {
                    continue;
                }
                if full {
                    if self.overwrite_in_place(tx, head.idx, head.sums, data_len, local, new)? {
                        written += hi - lo;
                        continue;
                    }
                    // Damaged and dropped: written below as a new chunk.
                } else {
                    if !overwrite && (local..local + (hi - lo) as u32).all(|i| bm.get(i)) {
                        continue;
                    }
                    if let Some(data) = self.verified_data(tx, head.idx, data_len, &head.sums)? {
                        let old = ChunkImage { present: bm, data };
                        let (merged, n) = old.merge(ss, local, new, overwrite);
                        let present = if merged.present.count() == span {
                            None
                        } else {
                            Some(merged.present.0)
                        };
                        let sums = checksum::sums_of(&merged.data);
                        tx.prepare_cached(
                            "UPDATE chunks SET present = ?2, sums = ?3, data = ?4 WHERE idx = ?1",
                        )
                        .and_then(|mut s| {
                            s.execute(params![idx as i64, present, sums, merged.data])
                        })
                        .map_err(|e| sql_err(path, "updating a chunk", e))?;
                        written += u64::from(n);
                        continue;
                    }
                    // Damaged and dropped: written below as a new chunk.
                }
            }
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
            let sums = checksum::sums_of(new);
            // The row is inserted with a zeroblob and its bytes are
            // written through incremental blob I/O: binding `new` would
            // copy it twice (SQLite's bound copy, then the record) before
            // the third copy into the pages. This way SQLite zeroes the
            // pages and the one copy goes straight into them; the two
            // copies saved were about a fifth of the cache writer's time
            // in the cold sequential bench.
            tx.prepare_cached(
                "INSERT INTO chunks (idx, present, sums, data) VALUES (?1, ?2, ?3, zeroblob(?4))",
            )
            .and_then(|mut s| s.execute(params![idx as i64, present, sums, new.len() as i64]))
            .map_err(|e| sql_err(path, "inserting a chunk", e))?;
            tx.blob_open(rusqlite::MAIN_DB, "chunks", "data", idx as i64, false)
                .and_then(|mut b| b.write_at(new, 0))
                .map_err(|e| sql_err(path, "writing a new chunk's data", e))?;
            written += u64::from(n);
        }
        Ok(written)
    }

    /// Overwrites `new` at chunk-local sector `local` of the full chunk
    /// `idx` in place: the checksum pieces it touches are read, verified,
    /// patched, written back and re-summed. Returns `false` if they did not
    /// verify (a read cache then has dropped the row).
    fn overwrite_in_place(
        &self,
        tx: &rusqlite::Transaction<'_>,
        idx: i64,
        mut sums: Vec<u8>,
        data_len: usize,
        local: u32,
        new: &[u8],
    ) -> Result<bool, SqliteLayerError> {
        let path = &self.path;
        let mut b = tx
            .blob_open(rusqlite::MAIN_DB, "chunks", "data", idx, false)
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
        let at = local as usize * self.ss();
        let (w0, w1) = checksum::window(at, at + new.len(), data_len);
        let mut window = vec![0u8; w1 - w0];
        b.read_at_exact(&mut window, w0)
            .map_err(|e| sql_err(path, "reading chunk data", e))?;
        if !checksum::verify(&sums, w0 / checksum::PIECE, &window) {
            drop(b);
            self.damaged_row(tx, idx)?;
            return Ok(false);
        }
        window[at - w0..at - w0 + new.len()].copy_from_slice(new);
        b.write_at(&window, w0)
            .map_err(|e| sql_err(path, "writing chunk data", e))?;
        drop(b);
        checksum::update_sums(&mut sums, w0 / checksum::PIECE, &window);
        tx.prepare_cached("UPDATE chunks SET sums = ?2 WHERE idx = ?1")
            .and_then(|mut s| s.execute(params![idx, sums]))
            .map_err(|e| sql_err(path, "updating chunk checksums", e))?;
        Ok(true)
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
        let rows = chunk_heads(&tx, path, first, last)?;
        let mut deleted = false;
        for head in rows {
            let idx = head.idx;
            let (bm, _, data_len) = self.row_shape(idx, head.present, head.sums.len())?;
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
            let Some(data) = self.verified_data(&tx, idx, data_len, &head.sums)? else {
                deleted = true;
                continue;
            };
            let (rest, _) = ChunkImage { present: bm, data }.remove(ss, local, n);
            let sums = checksum::sums_of(&rest.data);
            tx.prepare_cached(
                "UPDATE chunks SET present = ?2, sums = ?3, data = ?4 WHERE idx = ?1",
            )
            .and_then(|mut s| s.execute(params![idx, rest.present.0, sums, rest.data]))
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

    /// Deletes chunk `idx` if its data (still) does not match its
    /// checksums: a reader found it damaged. Returns whether it was
    /// deleted. Only for read caches.
    pub(crate) fn drop_if_damaged(
        &self,
        conn: &mut Connection,
        idx: u64,
    ) -> Result<bool, SqliteLayerError> {
        self.check_writable()?;
        debug_assert_engine_thread();
        if !self.is_cache() {
            return Ok(false);
        }
        let path = &self.path;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err(path, "starting a repair transaction", e))?;
        let Some(head) = chunk_heads(&tx, path, idx, idx)?.into_iter().next() else {
            return Ok(false);
        };
        let (_, _, data_len) = self.row_shape(head.idx, head.present, head.sums.len())?;
        let dropped = self
            .verified_data(&tx, head.idx, data_len, &head.sums)?
            .is_none();
        tx.commit()
            .map_err(|e| sql_err(path, "committing a repair", e))?;
        Ok(dropped)
    }

    /// Checks the whole file: SQLite's own structure
    /// (`PRAGMA integrity_check`) and every chunk's bytes against its
    /// checksums (and every row's shape).
    pub(crate) fn verify(&self, conn: &Connection) -> Result<VerifyReport, SqliteLayerError> {
        debug_assert_engine_thread();
        let path = &self.path;
        let mut sqlite_problems = Vec::new();
        {
            let mut stmt = conn
                .prepare("PRAGMA integrity_check")
                .map_err(|e| sql_err(path, "checking integrity", e))?;
            let mut rows = stmt
                .query([])
                .map_err(|e| sql_err(path, "checking integrity", e))?;
            while let Some(row) = rows
                .next()
                .map_err(|e| sql_err(path, "checking integrity", e))?
            {
                let line: String = row
                    .get(0)
                    .map_err(|e| sql_err(path, "checking integrity", e))?;
                if line != "ok" {
                    sqlite_problems.push(line);
                }
            }
        }
        let (chunks, damaged_chunks) = if sqlite_problems.is_empty() {
            self.verify_chunks(conn)?
        } else {
            // Rows of a structurally damaged file cannot be trusted to
            // read at all.
            (0, Vec::new())
        };
        Ok(VerifyReport {
            chunks,
            damaged_chunks,
            sqlite_problems,
        })
    }

    /// Checks every chunk's bytes against its checksums (and the rows'
    /// shape); returns the number of chunks and the damaged ones.
    fn verify_chunks(&self, conn: &Connection) -> Result<(u64, Vec<u64>), SqliteLayerError> {
        let path = &self.path;
        let mut stmt = conn
            .prepare("SELECT idx, present, sums, data FROM chunks ORDER BY idx")
            .map_err(|e| sql_err(path, "preparing a check", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| sql_err(path, "reading chunk rows", e))?;
        let mut damaged = Vec::new();
        let mut chunks = 0;
        while let Some(row) = rows
            .next()
            .map_err(|e| sql_err(path, "reading chunk rows", e))?
        {
            let row_err = |e| sql_err(path, "reading chunk rows", e);
            let idx: i64 = row.get(0).map_err(row_err)?;
            let present: Option<Vec<u8>> = row.get(1).map_err(row_err)?;
            let sums = row
                .get_ref(2)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(row_err)?;
            let data = row
                .get_ref(3)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(row_err)?;
            let (_, _, data_len) = self.row_shape(idx, present, sums.len())?;
            chunks += 1;
            if data.len() != data_len || !checksum::verify(sums, 0, data) {
                damaged.push(idx as u64);
            }
        }
        Ok((chunks, damaged))
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
        let rows: Vec<(i64, Option<Vec<u8>>, i64)> = {
            let mut stmt = conn
                .prepare_cached("SELECT idx, present, length(sums) FROM chunks")
                .map_err(|e| sql_err(path, "preparing stats", e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(|e| sql_err(path, "reading chunk rows", e))?;
            rows.collect::<Result<_, _>>()
                .map_err(|e| sql_err(path, "reading chunk rows", e))?
        };
        let mut sectors = 0;
        let n = rows.len() as u64;
        for (idx, present, sums_len) in rows {
            let (bm, _, _) = self.row_shape(idx, present, sums_len.max(0) as usize)?;
            sectors += u64::from(bm.count());
        }
        Ok((n, sectors))
    }
}
