//! The metadata reader: headers, BAT pieces, L1 and L2 tables fetched in
//! aligned pieces, kept in memory and (when a directory is given) on disk.
//!
//! A piece is [`PIECE_SIZE`] bytes of the image file at an offset that is
//! a multiple of [`PIECE_SIZE`] (the last piece is shorter). A read asks
//! for any byte range; the pieces it covers come from memory, else from
//! the piece directory, else from the blob, where the missing pieces of
//! one read are fetched with one range request.
//!
//! The piece directory ([`PieceDir`]) holds one file per piece, named by
//! its offset, written to a temporary name and renamed into place, and
//! verified on every load (a header with offset and length, an xxh3 of
//! the bytes). So concurrent processes may fill it at once (both write
//! the same bytes of the same version; the last rename wins), a process
//! killed mid-write leaves at most a temporary file, and a damaged or
//! truncated piece file is treated as missing and replaced. The caller
//! names a directory per image version (URL path + validator), so pieces
//! of two versions never mix.

use crate::SparseError;
use disk_blob::Blob;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Size and alignment of a metadata piece.
pub const PIECE_SIZE: u64 = 64 << 10;
/// Most bytes of pieces kept in memory per image.
const MEMORY_BUDGET: usize = 64 << 20;
/// First bytes of a piece file.
const PIECE_MAGIC: &[u8; 8] = b"dsparse1";
/// Piece file header: magic, offset (u64 LE), length (u32 LE), xxh3 (u64 LE).
const PIECE_HEADER: usize = 8 + 8 + 4 + 8;

/// A directory of verified piece files for one version of one image.
#[derive(Debug, Clone)]
pub struct PieceDir {
    dir: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PieceDir {
    /// Pieces kept in `dir` (created on first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PieceDir { dir: dir.into() }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    fn file(&self, offset: u64) -> PathBuf {
        self.dir.join(format!("{offset:016x}.piece"))
    }

    /// The piece at `offset` if a file holds it intact with exactly `len`
    /// bytes; `None` otherwise (missing, damaged, of another length).
    pub fn load(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let raw = std::fs::read(self.file(offset)).ok()?;
        let (head, body) = raw.split_at_checked(PIECE_HEADER)?;
        let field = |r: Range<usize>| head.get(r);
        if field(0..8)? != PIECE_MAGIC
            || u64::from_le_bytes(field(8..16)?.try_into().ok()?) != offset
            || u32::from_le_bytes(field(16..20)?.try_into().ok()?) as usize != len
            || body.len() != len
            || u64::from_le_bytes(field(20..28)?.try_into().ok()?)
                != xxhash_rust::xxh3::xxh3_64(body)
        {
            tracing::debug!(dir = %self.dir.display(), offset, "ignoring a damaged metadata piece");
            return None;
        }
        Some(body.to_vec())
    }

    /// Stores the piece at `offset` (temporary file, then rename).
    pub fn store(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let mut bytes = Vec::with_capacity(PIECE_HEADER + data.len());
        bytes.extend_from_slice(PIECE_MAGIC);
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(data).to_le_bytes());
        bytes.extend_from_slice(data);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let r =
            std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, self.file(offset)));
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }
}

struct Cached {
    data: Arc<[u8]>,
    last_use: u64,
}

#[derive(Default)]
struct Memory {
    pieces: HashMap<u64, Cached>,
    bytes: usize,
    tick: u64,
}

impl Memory {
    fn get(&mut self, index: u64) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        self.pieces.get_mut(&index).map(|c| {
            c.last_use = tick;
            c.data.clone()
        })
    }

    fn insert(&mut self, index: u64, data: Arc<[u8]>) {
        self.tick += 1;
        self.bytes += data.len();
        if let Some(old) = self.pieces.insert(
            index,
            Cached {
                data,
                last_use: self.tick,
            },
        ) {
            self.bytes -= old.data.len();
        }
        while self.bytes > MEMORY_BUDGET && self.pieces.len() > 1 {
            let Some((&oldest, _)) = self.pieces.iter().min_by_key(|(_, c)| c.last_use) else {
                break;
            };
            if let Some(c) = self.pieces.remove(&oldest) {
                self.bytes -= c.data.len();
            }
        }
    }
}

/// Reads an image's metadata through memory, a [`PieceDir`] and the blob.
pub struct MetaReader {
    blob: Arc<dyn Blob>,
    dir: Option<PieceDir>,
    memory: Mutex<Memory>,
    /// Serialises fetches, so two readers needing one piece fetch it once.
    /// FUTURE: per-piece single flight, if metadata fetches ever show up
    /// as a wait in a profile (they happen once per piece per image).
    fetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for MetaReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaReader")
            .field("blob", &self.blob.describe())
            .field("dir", &self.dir)
            .finish()
    }
}

impl MetaReader {
    /// A reader of `blob`'s metadata, keeping pieces in `dir` if given.
    pub fn new(blob: Arc<dyn Blob>, dir: Option<PieceDir>) -> Self {
        MetaReader {
            blob,
            dir,
            memory: Mutex::new(Memory::default()),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The blob.
    pub fn blob(&self) -> &Arc<dyn Blob> {
        &self.blob
    }

    /// The image's length.
    pub fn len(&self) -> u64 {
        self.blob.len()
    }

    /// Whether the image is empty.
    pub fn is_empty(&self) -> bool {
        self.blob.is_empty()
    }

    /// What the image is, for errors (a path or a redacted URL).
    pub fn describe(&self) -> String {
        self.blob.describe()
    }

    fn piece_range(&self, index: u64) -> Range<u64> {
        let start = index * PIECE_SIZE;
        start..(start + PIECE_SIZE).min(self.blob.len())
    }

    /// The bytes `range` of the image, which must lie inside it;
    /// `structure` names what they are, for errors.
    pub async fn read(&self, range: Range<u64>, structure: &str) -> Result<Vec<u8>, SparseError> {
        if range.end > self.blob.len() || range.start > range.end {
            return Err(SparseError::OutsideImage {
                image: self.describe(),
                structure: structure.into(),
                offset: range.start,
                len: range.end.saturating_sub(range.start),
                image_len: self.blob.len(),
            });
        }
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let first = range.start / PIECE_SIZE;
        let last = (range.end - 1) / PIECE_SIZE;
        let pieces = match self.cached(first..=last) {
            Some(p) => p,
            None => {
                let _guard = self.fetch.lock().await;
                match self.cached(first..=last) {
                    Some(p) => p,
                    None => self.fill(first, last, structure).await?,
                }
            }
        };
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (i, piece) in (first..=last).zip(&pieces) {
            let pr = self.piece_range(i);
            let from = range.start.max(pr.start) - pr.start;
            let to = range.end.min(pr.end) - pr.start;
            out.extend_from_slice(&piece[from as usize..to as usize]);
        }
        Ok(out)
    }

    /// Reads `len` bytes at `offset`, for small structures.
    pub async fn read_at(
        &self,
        offset: u64,
        len: u64,
        structure: &str,
    ) -> Result<Vec<u8>, SparseError> {
        let end = offset.checked_add(len).ok_or(SparseError::OutsideImage {
            image: self.describe(),
            structure: structure.into(),
            offset,
            len,
            image_len: self.blob.len(),
        })?;
        self.read(offset..end, structure).await
    }

    fn cached(&self, indexes: std::ops::RangeInclusive<u64>) -> Option<Vec<Arc<[u8]>>> {
        let mut m = self.memory.lock();
        indexes.map(|i| m.get(i)).collect()
    }

    /// Brings pieces `first..=last` into memory: from the directory where
    /// it has them, the rest from the blob in runs of adjacent pieces.
    async fn fill(
        &self,
        first: u64,
        last: u64,
        structure: &str,
    ) -> Result<Vec<Arc<[u8]>>, SparseError> {
        let mut have: Vec<Option<Arc<[u8]>>> = {
            let mut m = self.memory.lock();
            (first..=last).map(|i| m.get(i)).collect()
        };
        if let Some(dir) = &self.dir {
            let wanted: Vec<(u64, Range<u64>)> = (first..=last)
                .zip(&have)
                .filter(|(_, h)| h.is_none())
                .map(|(i, _)| (i, self.piece_range(i)))
                .collect();
            let dir = dir.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                wanted
                    .into_iter()
                    .map(|(i, r)| (i, dir.load(r.start, (r.end - r.start) as usize)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (i, data) in loaded {
                if let Some(data) = data {
                    have[(i - first) as usize] = Some(data.into());
                }
            }
        }
        let mut fetched: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut i = first;
        while i <= last {
            if have[(i - first) as usize].is_some() {
                i += 1;
                continue;
            }
            let run_start = i;
            while i <= last && have[(i - first) as usize].is_none() {
                i += 1;
            }
            let start = self.piece_range(run_start).start;
            let end = self.piece_range(i - 1).end;
            let mut buf = vec![0u8; (end - start) as usize];
            self.blob
                .read(&mut buf, start)
                .await
                .map_err(|source| SparseError::Read {
                    image: self.describe(),
                    structure: structure.into(),
                    offset: start,
                    len: end - start,
                    source,
                })?;
            for j in run_start..i {
                let r = self.piece_range(j);
                let piece = buf[(r.start - start) as usize..(r.end - start) as usize].to_vec();
                have[(j - first) as usize] = Some(piece.as_slice().into());
                fetched.push((r.start, piece));
            }
        }
        if let (Some(dir), false) = (&self.dir, fetched.is_empty()) {
            let dir = dir.clone();
            let stored = tokio::task::spawn_blocking(move || {
                fetched
                    .iter()
                    .try_for_each(|(offset, data)| dir.store(*offset, data))
            })
            .await;
            if let Ok(Err(e)) = stored {
                tracing::debug!(error = %e, "could not keep image metadata pieces on disk");
            }
        }
        let mut m = self.memory.lock();
        let out: Vec<Arc<[u8]>> = have.into_iter().flatten().collect();
        for (i, p) in (first..=last).zip(&out) {
            m.insert(i, p.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_files_are_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = PieceDir::new(tmp.path().join("v1"));
        assert!(dir.load(0, 4).is_none());
        dir.store(65536, b"abcd").unwrap();
        assert_eq!(dir.load(65536, 4).unwrap(), b"abcd");
        // Wrong length asked: not this piece.
        assert!(dir.load(65536, 5).is_none());
        // Damaged bytes: ignored.
        let file = dir.file(65536);
        let mut raw = std::fs::read(&file).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&file, &raw).unwrap();
        assert!(dir.load(65536, 4).is_none());
        // Truncated: ignored.
        std::fs::write(&file, &raw[..10]).unwrap();
        assert!(dir.load(65536, 4).is_none());
        // Replaced by a good store.
        dir.store(65536, b"abcd").unwrap();
        assert_eq!(dir.load(65536, 4).unwrap(), b"abcd");
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn memory_is_bounded() {
        let mut m = Memory::default();
        let piece: Arc<[u8]> = vec![0u8; PIECE_SIZE as usize].into();
        for i in 0..(2 * MEMORY_BUDGET as u64 / PIECE_SIZE) {
            m.insert(i, piece.clone());
        }
        assert!(m.bytes <= MEMORY_BUDGET);
        assert!(m.get(0).is_none());
        assert!(m.get(2 * MEMORY_BUDGET as u64 / PIECE_SIZE - 1).is_some());
    }
}
