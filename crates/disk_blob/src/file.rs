//! [`FileBlob`]: a blob backed by a local file.

use crate::Blob;
use crate::BlobError;
use crate::BlobReadFuture;
use crate::check_blob_range;
use std::fs::File;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// A blob backed by a local file, opened read-only.
///
/// The length is taken at open. Reads are positional (`pread`), run on
/// tokio's blocking pool and copied into the caller's buffer, so the async
/// runtime is never blocked. A file that shrinks after open gives
/// [`BlobError::UnexpectedEof`].
///
/// DEVNOTE: the blocking task needs an owned buffer, so each read costs one
/// extra copy; for a local file this is far cheaper than the syscall.
#[derive(Debug)]
pub struct FileBlob {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
}

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
            let file = self.file.clone();
            let data = tokio::task::spawn_blocking(move || {
                let mut v = vec![0u8; n];
                read_exact_at(&file, &mut v, off).map(|()| v)
            })
            .await
            .map_err(|e| BlobError::Io {
                context: format!("reading {}", self.path.display()),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    BlobError::UnexpectedEof {
                        what: self.path.display().to_string(),
                        offset: off,
                        len: n as u64,
                    }
                } else {
                    BlobError::Io {
                        context: format!(
                            "reading {n} bytes at offset {off} of {}",
                            self.path.display()
                        ),
                        source,
                    }
                }
            })?;
            piece[..n].copy_from_slice(&data);
            done += n;
        }
        Ok(())
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
