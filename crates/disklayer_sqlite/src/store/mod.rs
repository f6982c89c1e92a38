//! The synchronous storage engine: one SQLite file holding chunk rows.
//!
//! Everything here blocks; the async layer in `lib.rs` runs it on tokio's
//! blocking pool. See the crate documentation for the file format.

use crate::checkpoint::{AfterCommit, Checkpointer};
use crate::{FormatParams, Geometry, LayerMetadata, SqliteLayerError};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `PRAGMA application_id` of every file this crate formats ("DLSQ").
pub(crate) const APPLICATION_ID: i32 = 0x444c_5351;
/// Version of the schema below. A file with another version is refused.
pub(crate) const FORMAT_VERSION: i64 = 1;
/// Value of the `magic` metadata row.
const MAGIC: &str = "disklayer_sqlite";
/// How long a connection waits for another connection's (or process's)
/// lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);
/// SQLite page size of newly formatted files. Large pages keep a 1 MiB
/// chunk to 16 overflow pages, so a chunk read is a handful of page reads.
const PAGE_SIZE: u32 = 65536;
/// How many idle read connections are kept for reuse.
const MAX_IDLE_READERS: usize = 8;
/// Memory-map window of the connections that serve small reads (SQLite
/// caps it at its compile-time maximum, about 2 GiB): a 4 KiB read of a
/// mapped file copies 4 KiB and needs no syscall, where an unmapped one
/// reads the whole 64 KiB page that holds it (and the overflow pages it
/// walks through) into SQLite's page cache first.
///
/// Large reads use unmapped connections instead (see
/// [`MAPPED_READ_LIMIT`]): SQLite reads whole overflow pages of an
/// unmapped file straight into the caller's buffer, one `pread` per
/// 64 KiB, which is as fast as a copy out of the map, and the pages do not
/// stay mapped into the process. With one kind of connection for all
/// reads, a sequential pass over a 1 GiB cache left 1 GiB of the file
/// mapped and resident in the process (`VmHWM` 1052 MiB); unmapped large
/// reads keep it at a few tens of MiB.
///
/// DEVNOTE: with memory-mapped reads, a device I/O error while reading the
/// cache file arrives as SIGBUS instead of an error return (SQLite's
/// documented trade-off). For a local cache file that is acceptable; set
/// this to 0 if caches ever live on unreliable storage.
const MMAP_SIZE: u64 = 0x7fff_0000;
/// Reads of at least this many bytes use unmapped connections (see
/// [`MMAP_SIZE`]): one SQLite page, below which the unmapped path would
/// copy more than it returns.
const MAPPED_READ_LIMIT: usize = PAGE_SIZE as usize;

const SCHEMA: &str = "
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value ANY
);
CREATE TABLE chunks (
    idx INTEGER PRIMARY KEY,
    present BLOB,
    data BLOB NOT NULL
);
";

/// Presence bitmap of one chunk: bit `i` (LSB first within each byte) is
/// set when sector `i` of the chunk is present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bitmap(Vec<u8>);

impl Bitmap {
    fn empty(sectors: u32) -> Self {
        Bitmap(vec![0; (sectors as usize).div_ceil(8)])
    }
    fn full(sectors: u32, span: u32) -> Self {
        // Whole bytes at once: this runs on every read of a full chunk, and
        // setting 2048 bits one by one was a quarter of a warm random read.
        let mut b = Self::empty(sectors);
        let whole = (span / 8) as usize;
        b.0[..whole].fill(0xff);
        for i in (span / 8 * 8)..span {
            b.set(i, true);
        }
        b
    }
    fn get(&self, i: u32) -> bool {
        self.0[(i / 8) as usize] & (1 << (i % 8)) != 0
    }
    fn set(&mut self, i: u32, v: bool) {
        let byte = &mut self.0[(i / 8) as usize];
        if v {
            *byte |= 1 << (i % 8);
        } else {
            *byte &= !(1 << (i % 8));
        }
    }
    fn count(&self) -> u32 {
        self.0.iter().map(|b| b.count_ones()).sum()
    }
    /// Number of set bits strictly before bit `i`.
    fn count_before(&self, i: u32) -> u32 {
        let whole = (i / 8) as usize;
        let mut n: u32 = self.0[..whole].iter().map(|b| b.count_ones()).sum();
        let rem = i % 8;
        if rem != 0 {
            n += (self.0[whole] & ((1u8 << rem) - 1)).count_ones();
        }
        n
    }
}

/// Sets bits `from..to` of a `u64`-word bitmap.
pub(crate) fn set_bits(words: &mut [u64], from: u64, to: u64) {
    let mut i = from;
    while i < to {
        let w = (i / 64) as usize;
        let bit = i % 64;
        let n = (64 - bit).min(to - i);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        words[w] |= mask;
        i += n;
    }
}

/// One chunk in memory, in the file's compact layout: `data` holds only
/// the present sectors, in order.
#[derive(Debug)]
pub(crate) struct ChunkImage {
    pub(crate) present: Bitmap,
    pub(crate) data: Vec<u8>,
}

impl ChunkImage {
    /// Merges `new` (sectors starting at chunk-local sector `start`) into
    /// the chunk. Without `overwrite` only absent sectors take new data.
    /// Returns the merged chunk and the number of sectors that changed.
    pub(crate) fn merge(
        &self,
        sector_size: usize,
        start: u32,
        new: &[u8],
        overwrite: bool,
    ) -> (ChunkImage, u32) {
        let new_count = (new.len() / sector_size) as u32;
        let sectors = (self.present.0.len() * 8) as u32;
        let mut present = self.present.clone();
        let mut data = Vec::with_capacity(self.data.len() + new.len());
        let mut old_off = 0usize;
        let mut written = 0;
        for i in 0..sectors {
            let had = self.present.get(i);
            let in_new = i >= start && i < start + new_count;
            if in_new && (overwrite || !had) {
                let n = (i - start) as usize * sector_size;
                data.extend_from_slice(&new[n..n + sector_size]);
                present.set(i, true);
                written += 1;
            } else if had {
                data.extend_from_slice(&self.data[old_off..old_off + sector_size]);
            }
            if had {
                old_off += sector_size;
            }
        }
        (ChunkImage { present, data }, written)
    }

    /// Removes sectors `start..start + count` (chunk-local). Returns the
    /// new chunk and whether anything changed.
    pub(crate) fn remove(&self, sector_size: usize, start: u32, count: u32) -> (ChunkImage, bool) {
        let sectors = (self.present.0.len() * 8) as u32;
        let mut present = self.present.clone();
        let mut data = Vec::with_capacity(self.data.len());
        let mut old_off = 0usize;
        let mut changed = false;
        for i in 0..sectors {
            if !self.present.get(i) {
                continue;
            }
            if i >= start && i < start + count {
                present.set(i, false);
                changed = true;
            } else {
                data.extend_from_slice(&self.data[old_off..old_off + sector_size]);
            }
            old_off += sector_size;
        }
        (ChunkImage { present, data }, changed)
    }
}

/// The engine: metadata plus a writer connection and a pool of readers.
pub(crate) struct Store {
    path: PathBuf,
    meta: LayerMetadata,
    /// Sectors per chunk (a multiple of 8).
    spc: u32,
    /// `None` when the file was opened read-only.
    writer: Option<Mutex<Connection>>,
    /// Idle readers with the memory map (small reads).
    mapped_readers: Mutex<Vec<Connection>>,
    /// Idle readers without it (large reads, stats).
    plain_readers: Mutex<Vec<Connection>>,
    read_only: bool,
    /// Checkpoints the WAL off the writer's path (see [`Checkpointer`]).
    checkpointer: Arc<Checkpointer>,
}

impl Drop for Store {
    fn drop(&mut self) {
        self.checkpointer.stop();
    }
}

/// Which kind of reader connection a read uses (see [`MMAP_SIZE`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReaderKind {
    Mapped,
    Plain,
}

fn sql_err(path: &Path, context: &str, source: rusqlite::Error) -> SqliteLayerError {
    use rusqlite::ErrorCode;
    let bad_value = matches!(
        source,
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..)
    );
    match source.sqlite_error_code() {
        _ if bad_value => SqliteLayerError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{context}: {source}"),
        },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => SqliteLayerError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("{context}: {source}"),
        },
        _ => SqliteLayerError::Sqlite {
            path: path.to_path_buf(),
            context: context.to_string(),
            source,
        },
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> SqliteLayerError {
    SqliteLayerError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path, context: &str, source: std::io::Error) -> SqliteLayerError {
    SqliteLayerError::Io {
        path: path.to_path_buf(),
        context: context.to_string(),
        source,
    }
}

fn open_conn(
    path: &Path,
    read_only: bool,
    kind: ReaderKind,
) -> Result<Connection, SqliteLayerError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_err(path, "opening the database", e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_err(path, "setting the busy timeout", e))?;
    conn.set_prepared_statement_cache_capacity(32);
    // `synchronous=NORMAL` in WAL mode keeps the file consistent on a
    // crash; durability on demand comes from `Store::sync`.
    let mmap_size = match kind {
        ReaderKind::Mapped => MMAP_SIZE,
        ReaderKind::Plain => 0,
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA mmap_size={mmap_size}; PRAGMA cache_size=-16384;"
    ))
    .map_err(|e| sql_err(path, "opening the database", e))?;
    Ok(conn)
}

/// Runs one `PASSIVE` checkpoint; whether it copied the whole WAL.
fn checkpoint(conn: &Connection, path: &Path) -> bool {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        // (busy, frames in the WAL, frames checkpointed)
        Ok((busy, log, done)) => busy == 0 && log == done,
        Err(err) => {
            tracing::debug!(
                path = %path.display(),
                error = &err as &dyn std::error::Error,
                "WAL checkpoint failed; it is retried later"
            );
            false
        }
    }
}

/// The checkpoint thread: one connection of its own, one `PASSIVE`
/// checkpoint per request.
fn run_checkpoints(cp: &Checkpointer, path: &Path) {
    let conn = match open_conn(path, false, ReaderKind::Plain) {
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

fn params_to_meta(p: &FormatParams) -> LayerMetadata {
    LayerMetadata {
        geometry: Geometry {
            sector_count: p.sector_count,
            sector_size: p.sector_size,
        },
        chunk_size: p.chunk_size,
        logically_read_only: p.logically_read_only,
        disk_id: p.disk_id,
    }
}

/// Checks geometry and chunking; shared by format and open.
fn validate_meta(m: &LayerMetadata) -> Result<(), String> {
    let ss = m.geometry.sector_size;
    if !(512..=65536).contains(&ss) || !ss.is_power_of_two() {
        return Err(format!(
            "sector size {ss} is not a power of two between 512 and 65536"
        ));
    }
    let cs = m.chunk_size;
    if !cs.is_power_of_two() || cs < ss.saturating_mul(8) || cs > 64 << 20 {
        return Err(format!(
            "chunk size {cs} must be a power of two, at least 8 sectors ({} bytes) and at most 64 MiB",
            u64::from(ss) * 8
        ));
    }
    if m.geometry.sector_count == 0 {
        return Err("sector count is zero".into());
    }
    // Byte offsets and SQLite integers must not overflow.
    if m.geometry
        .sector_count
        .checked_mul(u64::from(ss))
        .is_none_or(|b| b > i64::MAX as u64)
    {
        return Err(format!(
            "{} sectors of {ss} bytes is too large",
            m.geometry.sector_count
        ));
    }
    Ok(())
}

impl Store {
    /// Creates a new, empty layer file at `path`. Fails if it exists.
    pub(crate) fn format(path: &Path, params: &FormatParams) -> Result<(), SqliteLayerError> {
        let meta = params_to_meta(params);
        validate_meta(&meta).map_err(SqliteLayerError::InvalidParams)?;
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options
                .open(path)
                .map_err(|e| io_err(path, "creating the layer file", e))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, "opening the new file", e))?;
        let disk_id: Option<Vec<u8>> = meta.disk_id.map(|d| d.to_vec());
        let result = (|| -> rusqlite::Result<()> {
            conn.execute_batch(&format!(
                "PRAGMA page_size={PAGE_SIZE}; PRAGMA auto_vacuum=INCREMENTAL; \
                 PRAGMA application_id={APPLICATION_ID}; PRAGMA user_version={FORMAT_VERSION};"
            ))?;
            conn.execute_batch("BEGIN")?;
            conn.execute_batch(SCHEMA)?;
            let mut ins = conn.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
            ins.execute(params!["magic", MAGIC])?;
            ins.execute(params!["format_version", FORMAT_VERSION])?;
            ins.execute(params!["sector_count", meta.geometry.sector_count as i64])?;
            ins.execute(params!["sector_size", meta.geometry.sector_size])?;
            ins.execute(params!["chunk_size", meta.chunk_size])?;
            ins.execute(params!["logically_read_only", meta.logically_read_only])?;
            ins.execute(params!["disk_id", disk_id])?;
            drop(ins);
            conn.execute_batch("COMMIT")?;
            // WAL is a persistent property of the file; switching now, with
            // no other connection, leaves an empty WAL that close removes.
            conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
            Ok(())
        })();
        result.map_err(|e| sql_err(path, "formatting the layer file", e))?;
        conn.close()
            .map_err(|(_, e)| sql_err(path, "closing the new file", e))?;
        std::fs::File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err(path, "syncing the new file", e))?;
        Ok(())
    }

    /// Opens an existing layer file and validates its metadata.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Store, SqliteLayerError> {
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
        let conn = open_conn(path, read_only, ReaderKind::Plain)?;
        let meta = read_meta(path, &conn)?;
        let spc = meta.chunk_size / meta.geometry.sector_size;
        let (writer, readers) = if read_only {
            (None, vec![conn])
        } else {
            // Checkpoints are run by `Checkpointer`, not by whichever
            // commit crosses SQLite's threshold.
            conn.execute_batch("PRAGMA wal_autocheckpoint=0")
                .map_err(|e| sql_err(path, "opening the database", e))?;
            (Some(Mutex::new(conn)), Vec::new())
        };
        Ok(Store {
            path: path.to_path_buf(),
            meta,
            spc,
            writer,
            mapped_readers: Mutex::new(Vec::new()),
            plain_readers: Mutex::new(readers),
            read_only,
            checkpointer: Arc::default(),
        })
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

    fn ss(&self) -> usize {
        self.meta.geometry.sector_size as usize
    }

    /// Sectors of chunk `idx` that lie inside the disk.
    fn span(&self, idx: u64) -> u32 {
        let start = idx * u64::from(self.spc);
        (self.meta.geometry.sector_count - start).min(u64::from(self.spc)) as u32
    }

    fn with_reader<R>(
        &self,
        kind: ReaderKind,
        f: impl FnOnce(&mut Connection) -> Result<R, SqliteLayerError>,
    ) -> Result<R, SqliteLayerError> {
        let pool = match kind {
            ReaderKind::Mapped => &self.mapped_readers,
            ReaderKind::Plain => &self.plain_readers,
        };
        let conn = pool.lock().pop();
        let mut conn = match conn {
            Some(c) => c,
            None => open_conn(&self.path, self.read_only, kind)?,
        };
        let r = f(&mut conn);
        // A connection left inside a transaction by an error is dropped
        // rather than reused.
        if conn.is_autocommit() {
            let mut idle = pool.lock();
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        r
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

    /// Reads sectors `sector..sector + buf.len() / ss` into `buf`, one query
    /// for the whole range. Absent sectors are zero-filled: every byte of
    /// `buf` is written, so `buf` may hold stale data. Returns the
    /// presence of each sector of the request (bit `i` of the result is
    /// sector `sector + i`).
    pub(crate) fn read(&self, sector: u64, buf: &mut [u8]) -> Result<Vec<u64>, SqliteLayerError> {
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
        let kind = if buf.len() < MAPPED_READ_LIMIT {
            ReaderKind::Mapped
        } else {
            ReaderKind::Plain
        };
        self.with_reader(kind, |conn| {
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
            let mut filled = vec![false; (last - first + 1) as usize];
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
                filled[(idx - first) as usize] = true;
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
                    } else {
                        dst.fill(0);
                    }
                    s = e;
                }
                blob = Some(b);
            }
            drop(blob);
            drop(rows);
            // Chunks without a row are absent as a whole.
            for (i, f) in filled.iter().enumerate() {
                if !f {
                    let cstart = (first + i as u64) * spc;
                    let lo = sector.max(cstart);
                    let hi = end.min(cstart + spc);
                    buf[(lo - sector) as usize * ss..(hi - sector) as usize * ss].fill(0);
                }
            }
            Ok(presence)
        })
    }

    fn writer(&self) -> Result<parking_lot::MutexGuard<'_, Connection>, SqliteLayerError> {
        match &self.writer {
            Some(w) => Ok(w.lock()),
            None => Err(SqliteLayerError::Disk(disk_backend::DiskError::ReadOnly)),
        }
    }

    /// Writes `buf` at `sector` in one transaction. Without `overwrite`,
    /// only sectors not yet present are written. Returns the number of
    /// sectors whose contents changed.
    pub(crate) fn write(
        &self,
        sector: u64,
        buf: &[u8],
        overwrite: bool,
    ) -> Result<u64, SqliteLayerError> {
        self.write_batch(&[(sector, buf)], overwrite)
    }

    /// Writes several `(sector, data)` pieces in one transaction, in order
    /// (a later piece sees what an earlier one wrote). Returns the number
    /// of sectors written. All or nothing: an error rolls back every piece.
    pub(crate) fn write_batch(
        &self,
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
        let path = &self.path;
        let mut conn = self.writer()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_err(path, "starting a write transaction", e))?;
        let mut written = 0u64;
        for (sector, buf) in pieces {
            written += self.write_in(&tx, *sector, buf, overwrite)?;
        }
        tx.commit()
            .map_err(|e| sql_err(path, "committing a write", e))?;
        self.after_commit(&conn, written * ss as u64);
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
    pub(crate) fn unmap(&self, sector: u64, count: u64) -> Result<(), SqliteLayerError> {
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
        let mut conn = self.writer()?;
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
        let _w = self.writer()?;
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
    pub(crate) fn stats(&self) -> Result<(u64, u64), SqliteLayerError> {
        let path = &self.path;
        self.with_reader(ReaderKind::Plain, |conn| {
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
        })
    }
}

/// Reads and validates the metadata table.
fn read_meta(path: &Path, conn: &Connection) -> Result<LayerMetadata, SqliteLayerError> {
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| sql_err(path, "reading the file header", e))?;
    if app_id != APPLICATION_ID {
        return Err(corrupt(
            path,
            format!("application id {app_id:#x} is not a disk layer file's ({APPLICATION_ID:#x})"),
        ));
    }
    use rusqlite::types::Value;
    let get = |key: &str| -> Result<Value, SqliteLayerError> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| sql_err(path, "reading metadata", e))?
            .ok_or_else(|| corrupt(path, format!("metadata entry `{key}` is missing")))
    };
    let int = |key: &str| -> Result<i64, SqliteLayerError> {
        match get(key)? {
            Value::Integer(i) => Ok(i),
            v => Err(corrupt(
                path,
                format!("metadata entry `{key}` is {v:?}, not an integer"),
            )),
        }
    };
    match get("magic")? {
        Value::Text(t) if t == MAGIC => {}
        v => return Err(corrupt(path, format!("metadata magic is {v:?}"))),
    }
    let version = int("format_version")?;
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            ),
        ));
    }
    let to_u32 = |key: &str, v: i64| -> Result<u32, SqliteLayerError> {
        u32::try_from(v).map_err(|_| {
            corrupt(
                path,
                format!("metadata entry `{key}` = {v} is out of range"),
            )
        })
    };
    let sector_count = int("sector_count")?;
    let sector_count = u64::try_from(sector_count)
        .map_err(|_| corrupt(path, format!("sector count {sector_count} is negative")))?;
    let sector_size = to_u32("sector_size", int("sector_size")?)?;
    let chunk_size = to_u32("chunk_size", int("chunk_size")?)?;
    let logically_read_only = match int("logically_read_only")? {
        0 => false,
        1 => true,
        v => return Err(corrupt(path, format!("logically_read_only flag is {v}"))),
    };
    let disk_id = match get("disk_id")? {
        Value::Null => None,
        Value::Blob(b) => Some(
            <[u8; 16]>::try_from(b.as_slice())
                .map_err(|_| corrupt(path, format!("disk id has {} bytes, not 16", b.len())))?,
        ),
        v => return Err(corrupt(path, format!("disk id is {v:?}"))),
    };
    let meta = LayerMetadata {
        geometry: Geometry {
            sector_count,
            sector_size,
        },
        chunk_size,
        logically_read_only,
        disk_id,
    };
    validate_meta(&meta).map_err(|reason| corrupt(path, reason))?;
    // Rows outside the disk would never be read; their presence means the
    // file was damaged or made for another disk. (Two b-tree lookups.)
    let (lo, hi): (Option<i64>, Option<i64>) = conn
        .query_row("SELECT min(idx), max(idx) FROM chunks", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| sql_err(path, "checking chunk rows", e))?;
    let chunks = sector_count.div_ceil(u64::from(chunk_size / sector_size));
    if lo.is_some_and(|l| l < 0) || hi.is_some_and(|h| h as u64 >= chunks) {
        return Err(corrupt(
            path,
            format!("chunk rows {lo:?}..={hi:?} lie outside the disk's {chunks} chunks"),
        ));
    }
    Ok(meta)
}

/// A stored chunk's index and presence bitmap (`None`: fully present).
type ChunkPresence = (i64, Option<Vec<u8>>);

/// The [`ChunkPresence`] of every stored chunk in `first..=last`, in order,
/// read inside the caller's write transaction.
fn chunk_presence_rows(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    first: u64,
    last: u64,
) -> Result<Vec<ChunkPresence>, SqliteLayerError> {
    let mut stmt = tx
        .prepare_cached("SELECT idx, present FROM chunks WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx")
        .map_err(|e| sql_err(path, "preparing a chunk query", e))?;
    let rows = stmt
        .query_map(params![first as i64, last as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(|e| sql_err(path, "reading chunk rows", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| sql_err(path, "reading chunk rows", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_bits() {
        let mut w = vec![0u64; 3];
        set_bits(&mut w, 3, 3);
        assert_eq!(w, [0, 0, 0]);
        set_bits(&mut w, 62, 130);
        assert_eq!(w, [0b11 << 62, u64::MAX, 0b11]);
        let mut w = vec![0u64; 1];
        set_bits(&mut w, 0, 64);
        assert_eq!(w, [u64::MAX]);
    }

    #[test]
    fn bitmap_counts() {
        let mut b = Bitmap::empty(16);
        b.set(0, true);
        b.set(3, true);
        b.set(9, true);
        assert_eq!(b.count(), 3);
        assert_eq!(b.count_before(0), 0);
        assert_eq!(b.count_before(1), 1);
        assert_eq!(b.count_before(4), 2);
        assert_eq!(b.count_before(8), 2);
        assert_eq!(b.count_before(10), 3);
        b.set(3, false);
        assert!(!b.get(3));
        assert_eq!(b.count(), 2);
    }

    #[test]
    fn merge_respects_presence() {
        let ss = 4;
        // Sectors 1 and 2 present out of 8.
        let mut present = Bitmap::empty(8);
        present.set(1, true);
        present.set(2, true);
        let old = ChunkImage {
            present,
            data: b"AAAABBBB".to_vec(),
        };
        // Write sectors 0..3 without overwrite: only sector 0 changes.
        let (m, n) = old.merge(ss, 0, b"xxxxyyyyzzzz", false);
        assert_eq!(n, 1);
        assert_eq!(m.data, b"xxxxAAAABBBB");
        assert_eq!(m.present.count(), 3);
        // With overwrite all three change.
        let (m, n) = old.merge(ss, 0, b"xxxxyyyyzzzz", true);
        assert_eq!(n, 3);
        assert_eq!(m.data, b"xxxxyyyyzzzz");
        // Remove sector 1: sector 2's data stays.
        let (r, changed) = old.remove(ss, 1, 1);
        assert!(changed);
        assert_eq!(r.data, b"BBBB");
        assert!(r.present.get(2) && !r.present.get(1));
        let (_, changed) = old.remove(ss, 4, 4);
        assert!(!changed);
    }
}
