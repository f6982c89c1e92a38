//! SQLite connections of a layer file: how they are opened and tuned, and
//! how SQLite's errors become this crate's.
//!
//! Connections are owned by the engine's threads (see `engine.rs`); this
//! module only makes them.

use crate::SqliteLayerError;
use rusqlite::Connection;
use rusqlite::OpenFlags;
use rusqlite::params;
use std::path::Path;
use std::time::Duration;

/// How long a connection waits for another connection's (or process's)
/// lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// SQLite page size of newly formatted files. Large pages keep a 1 MiB
/// chunk to 16 overflow pages, so a chunk read is a handful of page reads.
pub(crate) const PAGE_SIZE: u32 = 65536;

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
pub(crate) const MAPPED_READ_LIMIT: usize = PAGE_SIZE as usize;

/// Which kind of connection (see [`MMAP_SIZE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// With SQLite's memory map: small reads.
    Mapped,
    /// Without it: large reads, writes, checkpoints, metadata.
    Plain,
}

/// Opens a connection to the layer file at `path`.
pub(crate) fn open_conn(
    path: &Path,
    read_only: bool,
    kind: ConnKind,
) -> Result<Connection, SqliteLayerError> {
    // NO_MUTEX: each connection is used by one thread at a time (its
    // owner), so SQLite's own per-connection mutex is pure overhead.
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let mut conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_err(path, "opening the database", e))?;
    if read_only {
        conn = usable_read_only(conn, path)?;
    }
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_err(path, "setting the busy timeout", e))?;
    conn.set_prepared_statement_cache_capacity(32);
    // `synchronous=NORMAL` in WAL mode keeps the file consistent on a
    // crash; durability on demand comes from the store's `sync`. A WAL
    // file never shrinks by itself: after a long fill burst it would keep
    // its peak size on disk for as long as the file is open, so a writer
    // that restarts the WAL after a checkpoint truncates it to
    // `journal_size_limit`.
    let mmap_size = match kind {
        ConnKind::Mapped => MMAP_SIZE,
        ConnKind::Plain => 0,
    };
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA mmap_size={mmap_size}; PRAGMA cache_size=-16384; \
         PRAGMA journal_size_limit={WAL_SIZE_LIMIT};"
    ))
    .map_err(|e| sql_err(path, "opening the database", e))?;
    Ok(conn)
}

/// The size a WAL file is truncated to when a writer restarts it (see
/// [`open_conn`]'s use of `journal_size_limit`).
const WAL_SIZE_LIMIT: u64 = 16 << 20;

/// A read-only connection that can read `path`: `conn` itself, or, in a
/// directory this process cannot write, an immutable one.
///
/// DEVNOTE: SQLite reads a WAL-mode file through its `-shm` index, which
/// it must create (and a `-wal`) if they do not exist, even for a
/// read-only connection; in a read-only directory (a cache prepared
/// by another user, a read-only mount) it cannot, and the first read fails
/// with SQLITE_CANTOPEN. Then, if there is no `-wal` with frames in it,
/// every committed transaction is in the file itself (the last process to
/// close it checkpointed and removed the WAL), and the file is opened
/// with `immutable=1`, which reads it without the index and without locks.
/// That is safe as long as no process writes the file meanwhile; one that
/// could (another user allowed to write there) might change pages under
/// the reader, which the row checks and chunk checksums catch: such reads
/// come from the layer below. A `-wal` with frames and no `-shm` cannot be
/// read safely here: that is an error. (`PRAGMA query_only` would not
/// help: it forbids writes through the connection but still needs the
/// `-shm`.)
fn usable_read_only(conn: Connection, path: &Path) -> Result<Connection, SqliteLayerError> {
    let probe = conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0));
    match probe {
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::CannotOpen) => {}
        _ => return Ok(conn),
    }
    drop(conn);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
        return Err(SqliteLayerError::Io {
            path: path.to_path_buf(),
            context: "opening the database read-only".into(),
            source: std::io::Error::other(format!(
                "its directory cannot be written and {} holds transactions not yet in the file                  (left by a process that did not close it); open it once where the directory                  can be written",
                wal.display()
            )),
        });
    }
    open_immutable(path)
}

/// Opens `path` read-only with SQLite's `immutable=1` (see
/// [`usable_read_only`]).
#[cfg(unix)]
fn open_immutable(path: &Path) -> Result<Connection, SqliteLayerError> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::ffi::OsStringExt;
    // A URI: `%`, `?` and `#` in the path must be escaped.
    let mut uri = b"file:".to_vec();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'%' | b'?' | b'#' => uri.extend_from_slice(format!("%{b:02X}").as_bytes()),
            _ => uri.push(b),
        }
    }
    uri.extend_from_slice(b"?immutable=1");
    let uri = std::path::PathBuf::from(std::ffi::OsString::from_vec(uri));
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&uri, flags)
        .map_err(|e| sql_err(path, "opening the database read-only (immutable)", e))?;
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| sql_err(path, "opening the database read-only (immutable)", e))?;
    tracing::debug!(path = %path.display(), "opened read-only without a WAL index (read-only directory)");
    Ok(conn)
}

#[cfg(not(unix))]
fn open_immutable(path: &Path) -> Result<Connection, SqliteLayerError> {
    Err(SqliteLayerError::Io {
        path: path.to_path_buf(),
        context: "opening the database read-only".into(),
        source: std::io::Error::other("its directory cannot be written"),
    })
}

/// Maps a SQLite error to [`SqliteLayerError`]: damage (a corrupt page, a
/// file that is not a database, a value of the wrong type) becomes
/// [`SqliteLayerError::Corrupt`], everything else
/// [`SqliteLayerError::Sqlite`] with `context` saying what was being done.
pub(crate) fn sql_err(path: &Path, context: &str, source: rusqlite::Error) -> SqliteLayerError {
    use rusqlite::ErrorCode;
    let bad_value = matches!(
        source,
        rusqlite::Error::InvalidColumnType(..) | rusqlite::Error::FromSqlConversionFailure(..)
    );
    match source.sqlite_error_code() {
        _ if bad_value => corrupt(path, format!("{context}: {source}")),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            corrupt(path, format!("{context}: {source}"))
        }
        _ => SqliteLayerError::Sqlite {
            path: path.to_path_buf(),
            context: context.to_string(),
            source,
        },
    }
}

/// A [`SqliteLayerError::Corrupt`] for `path`.
pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> SqliteLayerError {
    SqliteLayerError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A [`SqliteLayerError::Io`] for `path`.
pub(crate) fn io_err(path: &Path, context: &str, source: std::io::Error) -> SqliteLayerError {
    SqliteLayerError::Io {
        path: path.to_path_buf(),
        context: context.to_string(),
        source,
    }
}

/// Runs one `PASSIVE` checkpoint; whether it copied the whole WAL.
/// A failure is logged at debug level and retried by a later checkpoint.
pub(crate) fn checkpoint(conn: &Connection, path: &Path) -> bool {
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

/// What a write needs to know of a stored chunk before touching its data:
/// its index, presence bitmap (`None`: fully present) and checksums.
pub(crate) struct ChunkHead {
    pub(crate) idx: i64,
    pub(crate) present: Option<Vec<u8>>,
    pub(crate) sums: Vec<u8>,
}

/// The [`ChunkHead`] of every stored chunk in `first..=last`, in order,
/// read inside the caller's write transaction.
pub(crate) fn chunk_heads(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    first: u64,
    last: u64,
) -> Result<Vec<ChunkHead>, SqliteLayerError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT idx, present, sums FROM chunks WHERE idx BETWEEN ?1 AND ?2 ORDER BY idx",
        )
        .map_err(|e| sql_err(path, "preparing a chunk query", e))?;
    let rows = stmt
        .query_map(params![first as i64, last as i64], |r| {
            Ok(ChunkHead {
                idx: r.get(0)?,
                present: r.get(1)?,
                sums: r.get(2)?,
            })
        })
        .map_err(|e| sql_err(path, "reading chunk rows", e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| sql_err(path, "reading chunk rows", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_cap_the_wal_they_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db");
        Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        for kind in [ConnKind::Mapped, ConnKind::Plain] {
            let conn = open_conn(&path, false, kind).unwrap();
            let limit: i64 = conn
                .query_row("PRAGMA journal_size_limit", [], |r| r.get(0))
                .unwrap();
            assert_eq!(limit as u64, WAL_SIZE_LIMIT);
        }
    }
}
