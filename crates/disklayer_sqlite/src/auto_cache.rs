//! A SQLite read cache that lives in a shared cache directory and is
//! created on first use.
//!
//! The cache file of a disk is `<cache dir>/<key>/cache.dbhd`, where the key
//! is:
//!
//! - the explicit key, if one is given: used as is when it is a plain file
//!   name (`[A-Za-z0-9._-]`, not `.` or `..`, not starting with `sha256-`,
//!   at most 128 bytes), else replaced by `sha256-<hex of its SHA-256>`. An
//!   empty key is an error. No key can name a path outside the cache
//!   directory;
//! - otherwise the lower layer's 16-byte disk id as 32 lowercase hex digits
//!   (an all-zero id counts as no id); without an id and without a key,
//!   opening fails with [`SqliteLayerError::NoCacheKey`].
//!
//! Creation is atomic across processes: the file is formatted in a fresh
//! temporary directory inside the key directory, then hard-linked into
//! place. A link that finds the file already there means another process
//! won the race; its file is used and ours is dropped. So every process
//! sees either no file or a complete, formatted one.
//!
//! An existing file must describe the same disk as the lower layer (same
//! sector count and size, and the same disk id when both have one);
//! otherwise opening fails with an error naming both geometries and the
//! file. A read-only auto-cache opens an existing file read-only and never
//! creates one.
//!
//! Directories this module creates (the cache directory and the key
//! directories) get permissions 0700: a cache may hold private images.
//!
//! # Entries in use, size limit, read-only and unusable directories
//!
//! Each key directory is an *entry* of the cache directory (see
//! [`crate::cache_entries`]): an open layer holds a shared lock on the
//! entry's `in-use.lock` until it closes, so no process removes an entry
//! in use; the open records the entry's last use and what it caches
//! (`entry.json`, from [`AutoCacheSqliteDiskLayer::with_entry_info`]).
//! With a size limit ([`AutoCacheSqliteDiskLayer::with_max_size`]), the
//! whole cache directory is brought under it when the layer is opened
//! (before a new file is created) and again when it is closed, removing
//! the least recently used entries that no process has open, never the
//! layer's own.
//!
//! A cache that cannot be written (its directory or file system is
//! read-only, the file is write-protected) is opened read-only if its file
//! exists, with one warning that says why: reads it has are served from
//! it, misses are read from below and not kept. Where no file exists (or
//! it cannot be read either), opening fails with the error that stopped
//! the writable open, naming the directory or file and the reason; the
//! opener of the stack decides whether to go on without the cache.
//!
//! A process killed between formatting and linking leaves a `.tmp-*`
//! directory in the key directory; the next process that creates a cache
//! file there removes such directories once they are an hour old (a live
//! creator needs milliseconds).

use crate::FormatParams;
use crate::Geometry;
use crate::SqliteDiskLayer;
use crate::SqliteLayerError;
use crate::cache_entries::EntryGuard;
use crate::cache_entries::EntryInfo;
use crate::cache_entries::EntryLock;
use sha2::Digest;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// Name of the cache file inside its key directory.
pub const CACHE_FILE_NAME: &str = "cache.dbhd";

/// Longest explicit key used verbatim as a directory name.
const MAX_PLAIN_KEY: usize = 128;

/// What the auto-cache must know about the layer below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LowerDisk {
    /// The lower layer's geometry.
    pub geometry: Geometry,
    /// The lower layer's disk id, if any.
    pub disk_id: Option<[u8; 16]>,
}

/// An auto-cache configuration: where the cache directory is, which key
/// to use, whether to open read-only. It becomes a [`SqliteDiskLayer`]
/// once the lower layer is known ([`AutoCacheSqliteDiskLayer::open_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoCacheSqliteDiskLayer {
    cache_dir: PathBuf,
    key: Option<String>,
    read_only: bool,
    chunk_size: u32,
    /// The fill unit of the opened layer (0: its chunk size).
    fill_size: u32,
    max_size: Option<u64>,
    entry_info: Option<EntryInfo>,
}

/// Lowercase, zero-padded hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The key directory name for an explicit key and/or a disk id. See the
/// module documentation for the rules.
pub fn key_dir_name(
    key: Option<&str>,
    disk_id: Option<[u8; 16]>,
) -> Result<String, SqliteLayerError> {
    match key {
        Some("") => Err(SqliteLayerError::InvalidKey("the key is empty".to_string())),
        Some(k) => {
            let plain = k.len() <= MAX_PLAIN_KEY
                && k != "."
                && k != ".."
                && !k.starts_with("sha256-")
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if plain {
                Ok(k.to_string())
            } else {
                Ok(format!(
                    "sha256-{}",
                    hex(&sha2::Sha256::digest(k.as_bytes()))
                ))
            }
        }
        None => match disk_id {
            Some(id) if id != [0; 16] => Ok(hex(&id)),
            _ => Err(SqliteLayerError::NoCacheKey),
        },
    }
}

/// Creates `dir` (and missing parents) with permissions 0700. An existing
/// directory is left as it is.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), SqliteLayerError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    // DEVNOTE: elsewhere the directory inherits the ACL of its parent
    // (on Windows, %LOCALAPPDATA% is already private to the user).
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    let not_a_dir = || SqliteLayerError::Io {
        path: dir.to_path_buf(),
        context: "creating a cache directory".into(),
        source: std::io::Error::other("it exists and is not a directory"),
    };
    match builder.create(dir) {
        Ok(()) if dir.is_dir() => Ok(()),
        Ok(()) => Err(not_a_dir()),
        Err(_) if dir.exists() && !dir.is_dir() => Err(not_a_dir()),
        Err(source) => Err(SqliteLayerError::Io {
            path: dir.to_path_buf(),
            context: "creating a cache directory".into(),
            source,
        }),
    }
}

impl AutoCacheSqliteDiskLayer {
    /// An auto-cache in `cache_dir`, keyed by `key` or else by the lower
    /// layer's disk id.
    pub fn new(cache_dir: impl Into<PathBuf>, key: Option<String>, read_only: bool) -> Self {
        AutoCacheSqliteDiskLayer {
            cache_dir: cache_dir.into(),
            key,
            read_only,
            chunk_size: crate::DEFAULT_CHUNK_SIZE,
            fill_size: 0,
            max_size: None,
            entry_info: None,
        }
    }

    /// Keeps the whole cache directory under `max_size` bytes (see the
    /// module documentation); `None`: no limit.
    pub fn with_max_size(mut self, max_size: Option<u64>) -> Self {
        self.max_size = max_size;
        self
    }

    /// Records what the entry caches (where the image is, which version)
    /// in its `entry.json` when it is opened, for `petri-tool cache list`.
    /// The disk size is added by the open.
    pub fn with_entry_info(mut self, info: EntryInfo) -> Self {
        self.entry_info = Some(info);
        self
    }

    /// Sets the chunk size used when this auto-cache creates a file (an
    /// existing file keeps its own).
    pub fn with_chunk_size(mut self, chunk_size: u32) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// Sets the fill unit of the opened layer (see
    /// [`SqliteDiskLayer::with_fill_size`]).
    pub fn with_fill_size(mut self, fill_size: u32) -> Self {
        self.fill_size = fill_size;
        self
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The explicit key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether the cache is opened read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The cache file that serves a lower layer with `disk_id`.
    pub fn cache_file_path(&self, disk_id: Option<[u8; 16]>) -> Result<PathBuf, SqliteLayerError> {
        let name = key_dir_name(self.key.as_deref(), disk_id)?;
        Ok(self.cache_dir.join(name).join(CACHE_FILE_NAME))
    }

    /// Opens the cache file for `lower`, creating it (atomically, see the
    /// module documentation) unless it exists or the cache is read-only.
    /// A cache that cannot be written is opened read-only if its file
    /// exists (with one warning); see the module documentation.
    pub async fn open_for(&self, lower: &LowerDisk) -> Result<SqliteDiskLayer, SqliteLayerError> {
        let file = self.cache_file_path(lower.disk_id)?;
        let name = key_dir_name(self.key.as_deref(), lower.disk_id)?;
        let entry = {
            let this = self.clone();
            let file = file.clone();
            let name = name.clone();
            let lower = *lower;
            crate::engine::off_runtime("opening the cache entry", move || {
                this.open_entry(&file, &name, &lower)
            })
            .await?
        };
        let mut read_only = entry.read_only;
        // Why a cache asked to be writable is used read-only.
        let mut why_read_only = entry.why_read_only;
        let mut set_aside_once = false;
        let layer = loop {
            let prepare = {
                let this = self.clone();
                let file = file.clone();
                let lower = *lower;
                move || this.prepare_file(&file, &lower, read_only)
            };
            match crate::engine::off_runtime("finding the cache file", prepare).await {
                Ok(()) => {}
                // The file exists, but cannot be written: read-only.
                Err(err) if !read_only && file.is_file() => {
                    read_only = true;
                    why_read_only = Some(err);
                    continue;
                }
                Err(err) => return Err(why_read_only.unwrap_or(err)),
            }
            let identity = file_identity(&file);
            let hook: crate::engine::DamagedFileHook = {
                Box::new(move |path: &Path, err: &SqliteLayerError| {
                    if !read_only {
                        set_aside(path, identity, err);
                    }
                })
            };
            match SqliteDiskLayer::open_with_hook(&file, read_only, Some(hook)).await {
                Ok(layer) => break layer.with_fill_size(self.fill_size),
                // A damaged, foreign or outdated file in our own cache
                // directory: move it aside and create a fresh one (once;
                // a second failure is reported).
                Err(err) if is_replaceable(&err) && !read_only && !set_aside_once => {
                    set_aside_once = true;
                    let path = file.clone();
                    crate::engine::off_runtime("moving a damaged cache file aside", move || {
                        set_aside(&path, identity, &err);
                        Ok(())
                    })
                    .await?;
                }
                // Not damaged, but not writable by this process (SQLite
                // cannot create its WAL beside it, say): read-only.
                Err(err) if !read_only && !is_replaceable(&err) && file.is_file() => {
                    read_only = true;
                    why_read_only = Some(err);
                }
                Err(err) => return Err(err),
            }
        };
        let meta = layer.metadata();
        if meta.geometry != lower.geometry {
            return Err(SqliteLayerError::GeometryMismatch {
                path: file,
                file: meta.geometry,
                lower: lower.geometry,
            });
        }
        if let (Some(f), Some(l)) = (meta.disk_id, lower.disk_id)
            && f != l
        {
            return Err(SqliteLayerError::DiskIdMismatch {
                path: file,
                file: hex(&f),
                lower: hex(&l),
            });
        }
        if let Some(why) = why_read_only {
            tracing::warn!(
                cache_dir = %self.cache_dir.display(),
                path = %file.display(),
                error = &why as &dyn std::error::Error,
                "the read cache cannot be written; its existing file is used read-only: \
                 what it holds is served from it, the rest is read from below and not kept"
            );
        }
        let mut layer = layer;
        layer.entry = Some(Arc::new(EntryGuard {
            lock: entry.lock,
            cache_dir: self.cache_dir.clone(),
            name,
            // A cache this process cannot write cannot remove entries.
            max_size: self.max_size.filter(|_| !read_only),
        }));
        Ok(layer)
    }

    /// Takes the entry's lock (creating the directories unless the cache
    /// is read-only), records its use and what it caches, and keeps the
    /// size limit. A writable cache whose entry cannot be written but
    /// whose file exists comes back read-only, with the reason. Blocks.
    fn open_entry(
        &self,
        file: &Path,
        name: &str,
        lower: &LowerDisk,
    ) -> Result<OpenedEntry, SqliteLayerError> {
        let key_dir = self.cache_dir.join(name);
        if !self.read_only {
            let locked = create_private_dir(&self.cache_dir)
                .and_then(|()| EntryLock::acquire(&key_dir, true));
            match locked {
                Ok(lock) => {
                    if let Some(lock) = &lock {
                        lock.record_use();
                    }
                    self.record_info(&key_dir, lower);
                    if let Some(max) = self.max_size {
                        crate::cache_entries::keep_limit(&self.cache_dir, max, name);
                    }
                    return Ok(OpenedEntry {
                        lock,
                        read_only: false,
                        why_read_only: None,
                    });
                }
                Err(err) if file.is_file() => {
                    return Ok(OpenedEntry {
                        lock: EntryLock::acquire(&key_dir, false).ok().flatten(),
                        read_only: true,
                        why_read_only: Some(err),
                    });
                }
                Err(err) => return Err(err),
            }
        }
        Ok(OpenedEntry {
            lock: EntryLock::acquire(&key_dir, false)?,
            read_only: true,
            why_read_only: None,
        })
    }

    /// Writes the entry's `entry.json` (best effort), keeping what an
    /// earlier open recorded where this one knows less.
    fn record_info(&self, key_dir: &Path, lower: &LowerDisk) {
        let old = crate::cache_entries::read_info(key_dir).unwrap_or_default();
        let given = self.entry_info.clone().unwrap_or_default();
        let info = EntryInfo {
            location: given.location.or(old.location),
            identity: given
                .identity
                .or_else(|| lower.disk_id.map(|id| format!("vhd-id {}", hex(&id))))
                .or(old.identity),
            disk_size: Some(
                lower
                    .geometry
                    .sector_count
                    .saturating_mul(u64::from(lower.geometry.sector_size)),
            ),
        };
        if let Err(err) = crate::cache_entries::record_info(key_dir, &info) {
            tracing::debug!(dir = %key_dir.display(), error = %err, "could not record what the cache entry holds");
        }
    }

    /// Makes sure `file` exists and can be written (formatting it
    /// atomically if missing), or, `read_only`, that it exists. Blocks.
    fn prepare_file(
        &self,
        file: &Path,
        lower: &LowerDisk,
        read_only: bool,
    ) -> Result<(), SqliteLayerError> {
        let key_dir = file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.cache_dir.clone());
        if read_only {
            if !file.exists() {
                return Err(SqliteLayerError::ReadOnlyMissing {
                    path: file.to_path_buf(),
                });
            }
            return Ok(());
        }
        if std::fs::metadata(file).is_ok_and(|m| m.is_file()) {
            // SQLite would open a write-protected file read-only without
            // a word and fail at the first fill.
            std::fs::OpenOptions::new()
                .write(true)
                .open(file)
                .map_err(|source| SqliteLayerError::Io {
                    path: file.to_path_buf(),
                    context: "opening the cache file for writing".into(),
                    source,
                })?;
            return Ok(());
        }
        if !file.exists() {
            remove_stale_temp_dirs(&key_dir);
            format_atomically_blocking(
                file,
                &FormatParams {
                    sector_count: lower.geometry.sector_count,
                    sector_size: lower.geometry.sector_size,
                    chunk_size: self.chunk_size,
                    logically_read_only: true,
                    disk_id: lower.disk_id,
                },
            )?;
        }
        Ok(())
    }
}

/// An entry opened by [`AutoCacheSqliteDiskLayer::open_entry`].
struct OpenedEntry {
    lock: Option<EntryLock>,
    read_only: bool,
    why_read_only: Option<SqliteLayerError>,
}

/// Whether an error opening an auto-cache file means the file itself is
/// unusable (and can be replaced), rather than that the directory, the
/// disk or the request is.
fn is_replaceable(err: &SqliteLayerError) -> bool {
    matches!(
        err,
        SqliteLayerError::Corrupt { .. } | SqliteLayerError::OutdatedFormat { .. }
    )
}

/// Which file a path named when it was opened (device and inode), so a
/// file is only moved aside if it is still the one found damaged: another
/// process may have replaced it with a fresh one meanwhile.
type FileIdentity = Option<(u64, u64)>;

fn file_identity(path: &Path) -> FileIdentity {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Name of the lock file, in each key directory, that serialises moving a
/// damaged cache file aside and creating its replacement among processes.
const REPLACE_LOCK_NAME: &str = "replace.lock";

/// Moves the damaged (or outdated) cache file `file` aside, best effort:
/// to `<file>.corrupt-<UTC time>` (with its `-wal` and `-shm` files), kept
/// for inspection; an outdated file of the format before checksums is
/// simply removed. Done under the key directory's replace lock and only if
/// `file` is still the file that was found damaged (`identity`), so a
/// fresh file another process created meanwhile is left alone. Processes
/// that have the old file open keep reading it (from their own open
/// handles) or, once it is found damaged, from the layer below. Logs what
/// it did once, at warn level.
fn set_aside(file: &Path, identity: FileIdentity, why: &SqliteLayerError) {
    let Some(dir) = file.parent() else {
        return;
    };
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(REPLACE_LOCK_NAME))
    {
        Ok(f) => f,
        Err(err) => {
            tracing::warn!(path = %file.display(), error = %err, "cannot lock the cache entry to replace a damaged cache file");
            return;
        }
    };
    if let Err(err) = lock.lock() {
        tracing::warn!(path = %file.display(), error = %err, "cannot lock the cache entry to replace a damaged cache file");
        return;
    }
    if identity.is_some() && file_identity(file) != identity {
        // Already replaced by another process.
        return;
    }
    let outdated = matches!(why, SqliteLayerError::OutdatedFormat { .. });
    let companions = |base: &Path| -> Vec<(PathBuf, PathBuf)> {
        ["-wal", "-shm"]
            .iter()
            .map(|suffix| {
                let mut from = file.as_os_str().to_owned();
                from.push(suffix);
                let mut to = base.as_os_str().to_owned();
                to.push(suffix);
                (PathBuf::from(from), PathBuf::from(to))
            })
            .collect()
    };
    if outdated {
        for p in
            std::iter::once(file.to_path_buf()).chain(companions(file).into_iter().map(|(f, _)| f))
        {
            let _ = std::fs::remove_file(p);
        }
        tracing::warn!(
            path = %file.display(),
            "removed a read-cache file of the format before checksums; a new one is created"
        );
        return;
    }
    let aside = aside_name(file);
    match std::fs::rename(file, &aside) {
        Ok(()) => {
            for (from, to) in companions(&aside) {
                let _ = std::fs::rename(from, to);
            }
            tracing::warn!(
                path = %file.display(),
                moved_to = %aside.display(),
                error = why as &dyn std::error::Error,
                "the read-cache file is damaged; it was moved aside (kept for inspection, \
                 removed by `petri-tool cache prune`) and a new one is created"
            );
        }
        Err(err) => tracing::warn!(
            path = %file.display(),
            error = %err,
            "the read-cache file is damaged and could not be moved aside; delete it"
        ),
    }
}

/// `<file>.corrupt-<UTC time as YYYYMMDDTHHMMSSZ>`, with a counter if that
/// name is taken.
fn aside_name(file: &Path) -> PathBuf {
    let stamp = utc_stamp(std::time::SystemTime::now());
    let mut n = 0;
    loop {
        let mut name = file.as_os_str().to_owned();
        name.push(format!(".corrupt-{stamp}"));
        if n > 0 {
            name.push(format!("-{n}"));
        }
        let p = PathBuf::from(name);
        if !p.exists() {
            return p;
        }
        n += 1;
    }
}

/// `t` as `YYYYMMDDTHHMMSSZ` (UTC), for file names.
pub(crate) fn utc_stamp(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Age after which a `.tmp-*` directory is taken to be left over by a
/// crashed creator.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Best effort: removes `.tmp-*` directories older than
/// [`STALE_TEMP_AGE`] from `dir`.
fn remove_stale_temp_dirs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if old && e.file_type().is_ok_and(|t| t.is_dir()) {
            let path = e.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a stale temporary directory")
                }
                Err(err) => {
                    tracing::debug!(path = %path.display(), error = %err, "could not remove a stale temporary directory")
                }
            }
        }
    }
}

/// Formats a layer file at `file` atomically: the file is formatted in a
/// fresh temporary directory beside it and hard-linked into place, so no
/// process ever sees a half-formatted file. Returns `false` if another
/// process linked its file first (that file is left as it is). The work
/// runs on a thread of its own.
pub async fn format_atomically(
    file: &Path,
    params: &FormatParams,
) -> Result<bool, SqliteLayerError> {
    let file = file.to_path_buf();
    let params = params.clone();
    crate::engine::off_runtime("formatting", move || {
        format_atomically_blocking(&file, &params)
    })
    .await
}

/// [`format_atomically`] on the calling thread (an engine thread).
pub(crate) fn format_atomically_blocking(
    file: &Path,
    params: &FormatParams,
) -> Result<bool, SqliteLayerError> {
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(dir)
        .map_err(|source| SqliteLayerError::Io {
            path: dir.to_path_buf(),
            context: "creating a temporary directory".into(),
            source,
        })?;
    let tmp_file = tmp.path().join(CACHE_FILE_NAME);
    crate::store::format(&tmp_file, params)?;
    let created = match std::fs::hard_link(&tmp_file, file) {
        Ok(()) => {
            tracing::debug!(path = %file.display(), "created layer file");
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            tracing::debug!(path = %file.display(), "another process created the layer file first");
            false
        }
        Err(source) => {
            return Err(SqliteLayerError::Io {
                path: file.to_path_buf(),
                context: "linking the new layer file into place".into(),
                source,
            });
        }
    };
    // Removes the temporary directory and its link to the file.
    tmp.close().map_err(|source| SqliteLayerError::Io {
        path: dir.to_path_buf(),
        context: "removing a temporary directory".into(),
        source,
    })?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps() {
        let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(utc_stamp(at(0)), "19700101T000000Z");
        // 2000-02-29 12:34:56 UTC (a leap day).
        assert_eq!(utc_stamp(at(951_827_696)), "20000229T123456Z");
        // 2026-12-04 13:16:46 UTC.
        assert_eq!(utc_stamp(at(1_796_390_206)), "20261204T131646Z");
    }

    #[test]
    fn key_names() {
        assert_eq!(
            key_dir_name(Some("ubuntu-24.04_x64"), None).unwrap(),
            "ubuntu-24.04_x64"
        );
        let mut id = [0u8; 16];
        id[15] = 1;
        id[0] = 0xab;
        assert_eq!(
            key_dir_name(None, Some(id)).unwrap(),
            "ab000000000000000000000000000001"
        );
        assert!(matches!(
            key_dir_name(None, None),
            Err(SqliteLayerError::NoCacheKey)
        ));
        assert!(matches!(
            key_dir_name(None, Some([0; 16])),
            Err(SqliteLayerError::NoCacheKey)
        ));
        assert!(matches!(
            key_dir_name(Some(""), Some(id)),
            Err(SqliteLayerError::InvalidKey(_))
        ));
        for hostile in ["..", ".", "../x", "/abs", "a/b", "a\0b", "sha256-abc", "ü"] {
            let name = key_dir_name(Some(hostile), None).unwrap();
            assert!(
                name.starts_with("sha256-") && name.len() == 7 + 64,
                "{hostile:?} -> {name}"
            );
        }
        assert_ne!(
            key_dir_name(Some("../x"), None).unwrap(),
            key_dir_name(Some("/abs"), None).unwrap()
        );
        let long = "a".repeat(MAX_PLAIN_KEY + 1);
        assert!(
            key_dir_name(Some(&long), None)
                .unwrap()
                .starts_with("sha256-")
        );
    }
}
