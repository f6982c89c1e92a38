//! The image metadata kept under a cache directory:
//! `<cache dir>/image-metadata/<version>/`, one directory per image
//! version (a hash of the URL without its query and the server's
//! validator) holding that version's metadata pieces (see
//! `disk_sparse::PieceDir`).
//!
//! A version directory's modification time is its last use: every open
//! of the image sets it. Removing a version directory is always safe: its
//! pieces are fetched again by the next open that needs them (and a
//! process that has the image open keeps the pieces it read in memory),
//! so nothing here needs the entry locks of the read cache. A removal
//! renames the directory away first, so an open that stores pieces
//! meanwhile starts a fresh directory instead of writing into one being
//! deleted.

use std::path::Path;
use std::path::PathBuf;
use std::time::SystemTime;

/// The directory under the cache directory that holds the versions.
pub const DIR_NAME: &str = "image-metadata";

/// Prefix of a version directory being removed.
const REMOVING_PREFIX: &str = ".removing-";

/// Marks the version directory `dir` used now (if it exists).
pub(crate) fn mark_used(dir: &Path) {
    let marked = std::fs::File::open(dir).and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(err) = marked
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!(dir = %dir.display(), error = %err, "could not mark image metadata used");
    }
}

/// Removes the metadata of every image version in `cache_dir` last used
/// before `cutoff` (every version with `None`), and what earlier removals
/// left behind. Returns each removed directory with the bytes it held.
pub fn prune(cache_dir: &Path, cutoff: Option<SystemTime>) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let root = cache_dir.join(DIR_NAME);
    let read = match std::fs::read_dir(&root) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for e in read {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let leftover = name.starts_with(REMOVING_PREFIX);
        let old = match cutoff {
            None => true,
            Some(cutoff) => e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff),
        };
        if !(leftover || old) {
            continue;
        }
        let path = e.path();
        let bytes = dir_bytes(&path);
        let doomed = if leftover {
            path.clone()
        } else {
            let to = root.join(format!("{REMOVING_PREFIX}{name}-{}", std::process::id()));
            match std::fs::rename(&path, &to) {
                Ok(()) => to,
                // Removed by another process meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
        };
        std::fs::remove_dir_all(&doomed)?;
        removed.push((path, bytes));
    }
    removed.sort();
    Ok(removed)
}

/// Bytes of the files directly in `dir` (piece directories are flat).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn version(cache: &Path, name: &str, age: Duration) -> PathBuf {
        let dir = cache.join(DIR_NAME).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0000000000000000.piece"), [7u8; 100]).unwrap();
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        dir
    }

    #[test]
    fn prune_removes_versions_unused_since_the_cutoff() {
        let cache = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let old = version(cache.path(), "old", 10 * day);
        let recent = version(cache.path(), "recent", day);
        let used = version(cache.path(), "used-now", 10 * day);
        mark_used(&used);
        let removed = prune(cache.path(), Some(SystemTime::now() - 5 * day)).unwrap();
        assert_eq!(removed, vec![(old.clone(), 100)]);
        assert!(!old.exists() && recent.exists() && used.exists());
        // No leftovers of the rename-then-delete.
        let names: Vec<_> = std::fs::read_dir(cache.path().join(DIR_NAME))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        let removed = prune(cache.path(), None).unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!recent.exists() && !used.exists());
        // A cache directory without metadata: nothing to do.
        let empty = tempfile::tempdir().unwrap();
        assert!(prune(empty.path(), None).unwrap().is_empty());
    }
}
