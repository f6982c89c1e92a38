//! The cache directory as a set of entries: which process has an entry
//! open, when each was last used, how much space it takes, and how it is
//! removed.
//!
//! Position in the data flow: the auto-cache ([`crate::auto_cache`])
//! keeps the read cache of each disk in an entry `<cache dir>/<key>/`.
//! This module keeps the whole directory under a size limit (when an
//! auto-cache that has one is opened and when it is closed), and it is
//! what `petri-tool cache list` and `prune` work with.
//!
//! # An entry
//!
//! - `cache.dbhd` (with SQLite's `-wal` and `-shm`): the read cache;
//! - `cache.dbhd.corrupt-<UTC time>` (with its `-wal`, `-shm`): a damaged
//!   file moved aside by the auto-cache, kept for inspection;
//! - `in-use.lock` ([`ENTRY_LOCK_NAME`]): every process that has the entry
//!   open holds a shared advisory lock on it for as long as its layer is
//!   open; its modification time is the entry's last use, set at every
//!   open;
//! - `entry.json` ([`ENTRY_INFO_NAME`]): what the entry caches
//!   ([`EntryInfo`]), written at open;
//! - `replace.lock`, `.tmp-*`: see the auto-cache.
//!
//! Anything else directly in the cache directory (such as
//! `image-metadata/`, where `disk_open` keeps the images' metadata
//! pieces) is not an entry: it counts towards the directory's size and is
//! left alone.
//!
//! # Invariants
//!
//! - An entry is removed only by a process that holds the exclusive lock
//!   of its `in-use.lock`, which it cannot get while any process has the
//!   entry open: an entry in use is never removed. The remover first
//!   renames the entry's directory to `.evicting-*` (so no process can
//!   open it under its name any more), then deletes it.
//! - A process opening an entry takes the shared lock, then checks that
//!   the file it locked is still the entry's lock file, not one renamed
//!   away by a removal it had to wait for; if it is not, it starts again
//!   with a fresh entry.
//! - Keeping a size limit removes damaged files moved aside first, then
//!   whole entries, least recently used first, until the directory fits;
//!   the entry the caller is opening or closing is never removed to make
//!   room for itself (so a single entry larger than the limit stays).
//! - Sizes are the lengths of the files (apparent sizes), counted over
//!   everything under the cache directory.
//!
//! DEVNOTE: in a directory where the lock file cannot be created (read-only
//! and without one), an entry is used without a lock. A process of ours
//! cannot remove anything there either; a process of another user who
//! can write there could.
//!
//! DEVNOTE: the check that a locked file is still the entry's lock file
//! compares (device, inode), which only Unix offers here; elsewhere it is
//! skipped, and an entry removed while being opened is noticed only when
//! its cache file turns out to be missing.

use crate::SqliteLayerError;
use crate::auto_cache::CACHE_FILE_NAME;
use crate::auto_cache::create_private_dir;
use serde::Deserialize;
use serde::Serialize;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

/// The lock file of an entry (see the module docs).
pub const ENTRY_LOCK_NAME: &str = "in-use.lock";

/// The file that says what an entry caches.
pub const ENTRY_INFO_NAME: &str = "entry.json";

/// Prefix of an entry's directory while it is being removed.
const EVICTING_PREFIX: &str = ".evicting-";

/// How often opening an entry starts again because the entry was removed
/// while the opener waited for its lock, before it gives up.
const MAX_LOCK_ATTEMPTS: usize = 16;

/// What an entry caches, as recorded in its `entry.json`. Never holds a
/// URL's query string (it may be a SAS token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    /// Where the image is: its URL without the query string, or its path.
    #[serde(default)]
    pub location: Option<String>,
    /// Which version of the image: `vhd-id <hex>` for a VHD,
    /// `vhdx-data-write-guid <hex>` for a VHDX, else the server's
    /// validator (`etag:...`, or `last-modified:...` and the length).
    #[serde(default)]
    pub identity: Option<String>,
    /// The disk's size in bytes.
    #[serde(default)]
    pub disk_size: Option<u64>,
}

/// A shared lock on an entry, held by a process for as long as it has the
/// entry open: while any process holds one, the entry is not removed.
#[derive(Debug)]
pub struct EntryLock {
    file: File,
}

/// Whether `file` (open) is still the file at `path`: not renamed away or
/// replaced.
fn still_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

fn io_err(path: &Path, context: &str, source: io::Error) -> SqliteLayerError {
    SqliteLayerError::Io {
        path: path.to_path_buf(),
        context: context.to_string(),
        source,
    }
}

impl EntryLock {
    /// Takes the shared lock of the entry in `key_dir` for a process that
    /// is about to open it. With `writable`, the key directory and the
    /// lock file are created when missing (and created again if the entry
    /// is removed while this waits); without, an entry without a lock
    /// file gives `Ok(None)`. Blocks only while another process is
    /// removing the entry.
    pub(crate) fn acquire(
        key_dir: &Path,
        writable: bool,
    ) -> Result<Option<EntryLock>, SqliteLayerError> {
        let path = key_dir.join(ENTRY_LOCK_NAME);
        for _ in 0..MAX_LOCK_ATTEMPTS {
            if writable {
                create_private_dir(key_dir)?;
            }
            let opened = if writable {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
            } else {
                File::open(&path)
            };
            let file = match opened {
                Ok(f) => f,
                // Removed between creating the directory and opening the
                // lock file: start again.
                Err(e) if writable && e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&path, "opening the cache entry's lock file", e)),
            };
            file.lock_shared()
                .map_err(|e| io_err(&path, "locking the cache entry", e))?;
            if still_at(&file, &path) {
                return Ok(Some(EntryLock { file }));
            }
            // The entry was removed while this waited for the lock.
        }
        Err(io_err(
            &path,
            "locking the cache entry",
            io::Error::other("the entry was removed again and again while being opened"),
        ))
    }

    /// Takes the shared lock of the existing entry in `key_dir` (for a
    /// process that reads it without using it as a cache: a listing, a
    /// check); `None` if it has no lock file. Creates nothing.
    pub fn shared(key_dir: &Path) -> Result<Option<EntryLock>, SqliteLayerError> {
        Self::acquire(key_dir, false)
    }

    /// Records now as the entry's last use (best effort: the time of a
    /// lock file this process may not change stays as it is).
    pub(crate) fn record_use(&self) {
        if let Err(e) = self.file.set_modified(SystemTime::now()) {
            tracing::debug!(error = %e, "could not record the cache entry's last use");
        }
    }
}

/// Held by an open auto-cache layer: its entry's lock, released when the
/// layer closes, and the directory's size limit, kept again then.
#[derive(Debug)]
pub(crate) struct EntryGuard {
    pub(crate) lock: Option<EntryLock>,
    pub(crate) cache_dir: PathBuf,
    pub(crate) name: String,
    pub(crate) max_size: Option<u64>,
}

impl Drop for EntryGuard {
    fn drop(&mut self) {
        drop(self.lock.take());
        if let Some(max) = self.max_size {
            keep_limit(&self.cache_dir, max, &self.name);
        }
    }
}

/// [`enforce_limit`] keeping `keep`, with what it did logged (removals at
/// info level; a failure at debug level: the limit is best effort).
pub(crate) fn keep_limit(cache_dir: &Path, max_size: u64, keep: &str) {
    match enforce_limit(cache_dir, max_size, Some(keep)) {
        Ok(done) => {
            for (path, bytes) in &done.removed_files {
                tracing::info!(path = %path.display(), bytes, "removed a damaged cache file kept aside, to keep the cache directory under its size limit");
            }
            for (name, bytes) in &done.removed_entries {
                tracing::info!(cache_dir = %cache_dir.display(), entry = %name, bytes, "removed the least recently used cache entry, to keep the cache directory under its size limit");
            }
            if done.total_after > max_size {
                tracing::info!(
                    cache_dir = %cache_dir.display(),
                    bytes = done.total_after,
                    limit = max_size,
                    in_use = done.in_use.len(),
                    "the cache directory stays over its size limit: the rest is entries in use (this one included) and files that are not entries"
                );
            }
        }
        Err(err) => tracing::debug!(
            cache_dir = %cache_dir.display(),
            error = %err,
            "could not keep the cache directory under its size limit"
        ),
    }
}

/// Writes `info` to the entry's `entry.json` (atomically: through a
/// temporary file and a rename) unless it already says that.
pub(crate) fn record_info(key_dir: &Path, info: &EntryInfo) -> io::Result<()> {
    if read_info(key_dir).as_ref() == Some(info) {
        return Ok(());
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".entry-")
        .suffix(".tmp")
        .tempfile_in(key_dir)?;
    serde_json::to_writer_pretty(&mut tmp, info).map_err(io::Error::other)?;
    tmp.persist(key_dir.join(ENTRY_INFO_NAME))
        .map_err(|e| e.error)?;
    Ok(())
}

/// What the entry in `key_dir` caches, if its `entry.json` says.
pub fn read_info(key_dir: &Path) -> Option<EntryInfo> {
    let text = std::fs::read(key_dir.join(ENTRY_INFO_NAME)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether `name` is a damaged cache file moved aside (or one of its
/// SQLite companions).
fn is_set_aside(name: &str) -> bool {
    name.strip_prefix(CACHE_FILE_NAME)
        .is_some_and(|rest| rest.starts_with(".corrupt-"))
}

/// Total length of the regular files under `path` (symbolic links are not
/// followed); 0 for what cannot be read.
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries.flatten().map(|e| tree_size(&e.path())).sum()
}

/// One entry of a cache directory, as [`list_entries`] found it.
#[derive(Debug, Clone)]
pub struct CacheEntry {
    /// The key directory's name.
    pub name: String,
    /// The key directory.
    pub dir: PathBuf,
    /// What the entry caches, if recorded.
    pub info: Option<EntryInfo>,
    /// Bytes of every file of the entry.
    pub bytes: u64,
    /// Bytes of the cache file and its WAL, if there is a cache file.
    pub cache_file_bytes: Option<u64>,
    /// Damaged files moved aside, with their sizes.
    pub set_aside: Vec<(PathBuf, u64)>,
    /// When the entry was last opened (else when its cache file last
    /// changed).
    pub last_used: Option<SystemTime>,
    /// Whether a process has the entry open now.
    pub in_use: bool,
}

impl CacheEntry {
    /// The entry's cache file.
    pub fn cache_file(&self) -> PathBuf {
        self.dir.join(CACHE_FILE_NAME)
    }
}

/// Whether a process holds the entry's lock now (a lock that cannot be
/// checked counts as held).
fn entry_in_use(key_dir: &Path) -> bool {
    let Ok(file) = File::open(key_dir.join(ENTRY_LOCK_NAME)) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// The entries of `cache_dir` (none if it does not exist), by name.
pub fn list_entries(cache_dir: &Path) -> io::Result<Vec<CacheEntry>> {
    let read = match std::fs::read_dir(cache_dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in read {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let mut set_aside = Vec::new();
        let mut is_entry = false;
        for f in std::fs::read_dir(&dir)?.flatten() {
            let fname = f.file_name().to_string_lossy().into_owned();
            if is_set_aside(&fname) {
                set_aside.push((f.path(), tree_size(&f.path())));
            }
            is_entry |= is_set_aside(&fname)
                || fname == CACHE_FILE_NAME
                || fname == ENTRY_LOCK_NAME
                || fname == ENTRY_INFO_NAME;
        }
        if !is_entry {
            continue;
        }
        set_aside.sort();
        let cache_file = dir.join(CACHE_FILE_NAME);
        let cache_file_bytes = file_len(&cache_file).map(|len| {
            let mut wal = cache_file.as_os_str().to_owned();
            wal.push("-wal");
            len + file_len(Path::new(&wal)).unwrap_or(0)
        });
        let last_used = modified(&dir.join(ENTRY_LOCK_NAME)).or_else(|| modified(&cache_file));
        out.push(CacheEntry {
            info: read_info(&dir),
            bytes: tree_size(&dir),
            cache_file_bytes,
            set_aside,
            last_used,
            in_use: entry_in_use(&dir),
            name,
            dir,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes the entry `name` of `cache_dir` unless a process has it open.
/// Returns the bytes freed, or `None` if it is in use (then nothing is
/// touched). An entry that is already gone frees 0 bytes.
pub fn remove_entry(cache_dir: &Path, name: &str) -> io::Result<Option<u64>> {
    let dir = cache_dir.join(name);
    let lock_path = dir.join(ENTRY_LOCK_NAME);
    let lock = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Some(0)),
        Err(e) => return Err(e),
    };
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    if !still_at(&lock, &lock_path) {
        // Removed and created again meanwhile: the new one is not ours to
        // judge.
        return Ok(None);
    }
    let bytes = tree_size(&dir);
    let mut n = 0u32;
    let doomed = loop {
        let p = cache_dir.join(format!(
            "{EVICTING_PREFIX}{name}-{}-{n}",
            std::process::id()
        ));
        if !p.exists() {
            break p;
        }
        n += 1;
    };
    std::fs::rename(&dir, &doomed)?;
    if let Err(e) = std::fs::remove_dir_all(&doomed) {
        tracing::debug!(path = %doomed.display(), error = %e, "could not finish removing a cache entry; a later removal does");
    }
    Ok(Some(bytes - tree_size(&doomed).min(bytes)))
}

/// Removes every damaged file moved aside in the entries of `cache_dir`,
/// and what an interrupted removal of an entry left behind. Returns what
/// it removed, with sizes. A damaged file is never opened again by its
/// name, so this is safe while the entry is in use (a process that still
/// has it open keeps its handle).
pub fn remove_set_aside_files(cache_dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut removed = Vec::new();
    let Ok(read) = std::fs::read_dir(cache_dir) else {
        return removed;
    };
    for e in read.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(EVICTING_PREFIX) {
            let bytes = tree_size(&path);
            if std::fs::remove_dir_all(&path).is_ok() {
                removed.push((path, bytes));
            }
            continue;
        }
        if name.starts_with('.') || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(&path) else {
            continue;
        };
        for f in files.flatten() {
            if is_set_aside(&f.file_name().to_string_lossy()) {
                let bytes = tree_size(&f.path());
                if std::fs::remove_file(f.path()).is_ok() {
                    removed.push((f.path(), bytes));
                }
            }
        }
    }
    removed.sort();
    removed
}

/// What [`enforce_limit`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eviction {
    /// Bytes under the cache directory before.
    pub total_before: u64,
    /// Bytes under the cache directory after.
    pub total_after: u64,
    /// Damaged files moved aside (and leftovers of interrupted removals)
    /// that were removed, with their sizes.
    pub removed_files: Vec<(PathBuf, u64)>,
    /// Entries removed, least recently used first, with the bytes freed.
    pub removed_entries: Vec<(String, u64)>,
    /// Entries that would have been removed but are in use.
    pub in_use: Vec<String>,
}

/// Brings `cache_dir` under `max_size` bytes if it is over: removes the
/// damaged files moved aside, then whole entries, least recently used
/// first, never one in use and never `keep`.
pub fn enforce_limit(cache_dir: &Path, max_size: u64, keep: Option<&str>) -> io::Result<Eviction> {
    let mut done = Eviction {
        total_before: tree_size(cache_dir),
        ..Eviction::default()
    };
    let mut total = done.total_before;
    if total > max_size {
        done.removed_files = remove_set_aside_files(cache_dir);
        total = tree_size(cache_dir);
    }
    if total > max_size {
        let mut entries = list_entries(cache_dir)?;
        entries.retain(|e| Some(e.name.as_str()) != keep);
        // Never used first, then oldest first.
        entries.sort_by_key(|e| e.last_used);
        for entry in entries {
            if total <= max_size {
                break;
            }
            match remove_entry(cache_dir, &entry.name) {
                Ok(Some(bytes)) => {
                    total = total.saturating_sub(bytes);
                    done.removed_entries.push((entry.name, bytes));
                }
                Ok(None) => done.in_use.push(entry.name),
                Err(e) => {
                    tracing::debug!(entry = %entry.name, error = %e, "could not remove a cache entry")
                }
            }
        }
        total = tree_size(cache_dir);
    }
    done.total_after = total;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_names() {
        assert!(is_set_aside("cache.dbhd.corrupt-20261204T131646Z"));
        assert!(is_set_aside("cache.dbhd.corrupt-20261204T131646Z-1-wal"));
        assert!(!is_set_aside("cache.dbhd"));
        assert!(!is_set_aside("cache.dbhd-wal"));
        assert!(!is_set_aside("other.corrupt-1"));
    }
}
