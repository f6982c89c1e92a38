//! The file's schema and metadata: formatting a new layer file and
//! reading (and validating) an existing one's metadata.

use super::checksum;
use super::conn::PAGE_SIZE;
use super::conn::corrupt;
use super::conn::io_err;
use super::conn::sql_err;
use crate::FormatParams;
use crate::Geometry;
use crate::LayerMetadata;
use crate::SqliteLayerError;
use rusqlite::Connection;
use rusqlite::OpenFlags;
use rusqlite::OptionalExtension;
use rusqlite::params;
use std::path::Path;

/// `PRAGMA application_id` of every file this crate formats ("DLSQ").
pub(crate) const APPLICATION_ID: i32 = 0x444c_5351;
/// Version of the schema below. A file with another version is refused,
/// except [`UNCHECKSUMMED_VERSION`], which can be upgraded.
pub(crate) const FORMAT_VERSION: i64 = 2;
/// The version before chunk checksums: the same schema without `sums`.
/// Its data is never trusted as is: a read cache of this version is
/// recreated, a writable layer is upgraded in place ([`upgrade`]).
pub(crate) const UNCHECKSUMMED_VERSION: i64 = 1;
/// Value of the `magic` metadata row.
const MAGIC: &str = "disklayer_sqlite";

const SCHEMA: &str = "
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value ANY
);
CREATE TABLE chunks (
    idx INTEGER PRIMARY KEY,
    present BLOB,
    sums BLOB NOT NULL,
    data BLOB NOT NULL
);
";

pub(crate) fn params_to_meta(p: &FormatParams) -> LayerMetadata {
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
pub(crate) fn validate_meta(m: &LayerMetadata) -> Result<(), String> {
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

/// Creates a new, empty layer file at `path`. Fails if it exists.
pub(crate) fn format(path: &Path, params: &FormatParams) -> Result<(), SqliteLayerError> {
    crate::engine::debug_assert_engine_thread();
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
        ins.execute(params!["checksum", checksum::SCHEME])?;
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

/// Reads and validates the metadata table.
pub(crate) fn read_meta(path: &Path, conn: &Connection) -> Result<LayerMetadata, SqliteLayerError> {
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
    if version == UNCHECKSUMMED_VERSION {
        return Err(SqliteLayerError::OutdatedFormat {
            path: path.to_path_buf(),
            version,
        });
    }
    if version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
            ),
        ));
    }
    match get("checksum")? {
        Value::Text(t) if t == checksum::SCHEME => {}
        v => {
            return Err(corrupt(
                path,
                format!("checksum scheme {v:?} is not {:?}", checksum::SCHEME),
            ));
        }
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

/// Upgrades a file of [`UNCHECKSUMMED_VERSION`] in place, in one
/// transaction: every chunk's data is checksummed as it is now (a writable
/// layer's data has no other copy to check it against) and the rows move
/// to the current schema. Returns the number of chunks upgraded.
pub(crate) fn upgrade(path: &Path, conn: &mut Connection) -> Result<u64, SqliteLayerError> {
    crate::engine::debug_assert_engine_thread();
    let err = |e| sql_err(path, "upgrading the layer file to checksummed chunks", e);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(err)?;
    let version: i64 = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'format_version'",
            [],
            |r| r.get(0),
        )
        .map_err(err)?;
    if version != UNCHECKSUMMED_VERSION {
        // Another process upgraded it first.
        return Ok(0);
    }
    tx.execute_batch(
        "CREATE TABLE chunks_v2 (
            idx INTEGER PRIMARY KEY,
            present BLOB,
            sums BLOB NOT NULL,
            data BLOB NOT NULL
        );",
    )
    .map_err(err)?;
    let mut n = 0u64;
    {
        let mut read = tx
            .prepare("SELECT idx, present, data FROM chunks ORDER BY idx")
            .map_err(err)?;
        let mut insert = tx
            .prepare("INSERT INTO chunks_v2 (idx, present, sums, data) VALUES (?1, ?2, ?3, ?4)")
            .map_err(err)?;
        let mut rows = read.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let idx: i64 = row.get(0).map_err(err)?;
            let present: Option<Vec<u8>> = row.get(1).map_err(err)?;
            let data = row
                .get_ref(2)
                .and_then(|v| v.as_blob().map_err(Into::into))
                .map_err(err)?;
            insert
                .execute(params![idx, present, checksum::sums_of(data), data])
                .map_err(err)?;
            n += 1;
        }
    }
    tx.execute_batch(&format!(
        "DROP TABLE chunks;
         ALTER TABLE chunks_v2 RENAME TO chunks;
         UPDATE meta SET value = {FORMAT_VERSION} WHERE key = 'format_version';
         INSERT INTO meta (key, value) VALUES ('checksum', '{}');
         PRAGMA user_version = {FORMAT_VERSION};",
        checksum::SCHEME
    ))
    .map_err(err)?;
    tx.commit().map_err(err)?;
    Ok(n)
}
