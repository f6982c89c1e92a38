//! [`FileBlob`]: a blob backed by a local file.

use crate::Blob;
use crate::BlobError;
use crate::BlobOwnedReadFuture;
use crate::BlobReadFuture;
use crate::check_blob_range;
use std::fs::File;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// A blob backed by a local file, opened read-only.
///
/// The length is taken at open. Reads are positional (`pread`) and run on
/// tokio's blocking pool, so the async runtime is never blocked. A read
/// into an owned buffer ([`Blob::read_owned`], which the NBD export uses
/// through the disk stack) is done straight into that buffer; a read into
/// a borrowed one goes through a recycled buffer of the blob's and is
/// copied once (safe code cannot lend a borrowed buffer to another
/// thread). A file that shrinks after open gives
/// [`BlobError::UnexpectedEof`].
#[derive(Debug)]
pub struct FileBlob {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// Recycled buffers for borrowed reads: a fresh zeroed buffer per read
    /// cost a zeroing pass and page faults on every byte.
    spare: parking_lot::Mutex<Vec<Vec<u8>>>,
}

/// Buffers of borrowed reads kept for reuse.
const KEEP_SPARE: usize = 4;

/// Largest piece one blocking task reads, so a huge read does not pin a
/// single huge temporary buffer.
const MAX_PIECE: usize = 8 << 20;

impl FileBlob {
    /// Opens `path` read-only. Must be called from within a tokio runtime.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, BlobError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let (file, len) = tokio::task::spawn_blocking(move || {
            let file = File::open(&p)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await
        .map_err(|e| BlobError::Io {
            context: format!("opening {}", path.display()),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| BlobError::Io {
            context: format!("opening {}", path.display()),
            source,
        })?;
        Ok(FileBlob {
            file: Arc::new(file),
            path,
            len,
            spare: parking_lot::Mutex::default(),
        })
    }

    /// The path the blob was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read_inner(&self, buf: &mut [u8], offset: u64) -> Result<(), BlobError> {
        check_blob_range(offset, buf.len(), self.len)?;
        let mut done = 0;
        while done < buf.len() {
            let piece = &mut buf[done..];
            let n = piece.len().min(MAX_PIECE);
            let off = offset + done as u64;
            let mut v = self.spare.lock().pop().unwrap_or_default();
            // Stale contents are fine: the read overwrites every byte.
            v.resize(n, 0);
            let (v, result) = self.read_on_blocking_pool(v, off).await;
            if result.is_ok() {
                piece[..n].copy_from_slice(&v);
            }
            let mut spare = self.spare.lock();
            if spare.len() < KEEP_SPARE {
                spare.push(v);
            }
            drop(spare);
            result?;
            done += n;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` into `buf` on tokio's blocking
    /// pool; the buffer comes back with the result.
    async fn read_on_blocking_pool(
        &self,
        mut buf: Vec<u8>,
        offset: u64,
    ) -> (Vec<u8>, Result<(), BlobError>) {
        let n = buf.len();
        let file = self.file.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let r = read_exact_at(&file, &mut buf, offset);
            (buf, r)
        })
        .await;
        let (buf, result) = match joined {
            Ok(r) => r,
            Err(e) => {
                let err = BlobError::Io {
                    context: format!("reading {}", self.path.display()),
                    source: std::io::Error::other(e),
                };
                return (vec![0; n], Err(err));
            }
        };
        let result = result.map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                BlobError::UnexpectedEof {
                    what: self.path.display().to_string(),
                    offset,
                    len: n as u64,
                }
            } else {
                BlobError::Io {
                    context: format!(
                        "reading {n} bytes at offset {offset} of {}",
                        self.path.display()
                    ),
                    source,
                }
            }
        });
        (buf, result)
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    // `seek_read` moves the file cursor, which is harmless: every read here
    // is positional.
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Blob for FileBlob {
    fn len(&self) -> u64 {
        self.len
    }

    fn read<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> BlobReadFuture<'a> {
        Box::pin(self.read_inner(buf, offset))
    }

    /// Straight into `buf` on the blocking pool: no copy.
    fn read_owned(&self, buf: Vec<u8>, offset: u64) -> BlobOwnedReadFuture<'_> {
        Box::pin(async move {
            if let Err(e) = check_blob_range(offset, buf.len(), self.len) {
                return (buf, Err(e));
            }
            if buf.is_empty() {
                return (buf, Ok(()));
            }
            self.read_on_blocking_pool(buf, offset).await
        })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[tokio::test]
    async fn reads_exact_ranges() {
        let data = pattern(100_000);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let blob = FileBlob::open(f.path()).await.unwrap();
        assert_eq!(blob.len(), 100_000);
        for (off, len) in [
            (0usize, 1usize),
            (1, 4095),
            (99_999, 1),
            (12_345, 50_000),
            (0, 100_000),
        ] {
            let mut buf = vec![0u8; len];
            blob.read(&mut buf, off as u64).await.unwrap();
            assert_eq!(buf, data[off..off + len], "offset {off} len {len}");
        }
        // Empty read at the end is fine; past the end is not.
        blob.read(&mut [], 100_000).await.unwrap();
        let mut buf = [0u8; 2];
        assert!(matches!(
            blob.read(&mut buf, 99_999).await,
            Err(BlobError::OutOfRange { .. })
        ));
        assert_eq!(blob.counters(), crate::BlobCounters::default());
    }

    #[tokio::test]
    async fn shrunk_file_is_unexpected_eof() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&pattern(8192)).unwrap();
        let blob = FileBlob::open(f.path()).await.unwrap();
        f.as_file().set_len(4096).unwrap();
        let mut buf = vec![0u8; 8192];
        assert!(matches!(
            blob.read(&mut buf, 0).await,
            Err(BlobError::UnexpectedEof { .. })
        ));
    }

    #[tokio::test]
    async fn missing_file_is_io_error_naming_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope.img");
        let err = FileBlob::open(&p).await.unwrap_err();
        assert!(matches!(err, BlobError::Io { .. }));
        assert!(err.to_string().contains("nope.img"));
    }
}
