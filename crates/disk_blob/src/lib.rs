//! Blobs (byte arrays that live in a local file or behind an HTTP(S) URL)
//! and the read-only disk that presents one as a [`disk_backend::Disk`].
//!
//! Position in the data flow: this crate is the bottom of a remote disk
//! stack. Above it, `disk_layered` stacks a SQLite read cache and a RAM
//! layer for guest writes over a [`BlobDisk`]; the read cache widens misses
//! into aligned chunks (1 MiB) before they reach us, so this crate sees few,
//! large, mostly sequential reads. Nothing below this crate knows about
//! disks; nothing in it knows about caches, tests or artifacts.
//!
//! Model:
//! - A [`Blob`] is an immutable array of [`Blob::len`] bytes, fixed when it
//!   is opened. [`Blob::read`] fills the whole buffer or fails with a typed
//!   [`BlobError`]; there is no partial success. An empty read succeeds
//!   without doing any I/O; a read that ends past the end of the blob is
//!   [`BlobError::OutOfRange`].
//! - [`FileBlob`] reads a local file with positional reads on tokio's
//!   blocking pool, so it never blocks the async runtime.
//! - [`HttpBlob`] learns the length and the validators (ETag,
//!   Last-Modified) at open, then serves every read with `Range` GETs pinned
//!   to those validators, so bytes of two versions of an image are never
//!   mixed: a change is [`BlobError::ImageChanged`]. Large reads are split
//!   into aligned range requests run in parallel over a bounded pool of
//!   keep-alive connections, transient failures are retried with backoff,
//!   and a sequential reader gets readahead. See [`HttpBlob`] for the wire
//!   rules, retries, readahead and concurrency.
//! - [`BlobDisk`] presents a blob as a read-only disk of 512-byte sectors,
//!   either flat (the whole blob) or as a fixed VHD1 (the blob minus its
//!   512-byte footer, which is validated with `vhd1_defs`).
//!
//! Invariants:
//! - No URL query string (SAS token, presigned signature) and no URL
//!   userinfo ever appears in an error or a log line: every URL goes
//!   through [`url_redact`] first.
//! - A read never returns bytes that were not received for exactly the
//!   requested range of the version pinned at open.
//! - Nothing is read from the process environment (no proxy variables, no
//!   certificate paths) except through documented [`HttpBlobOptions`].
//! - Counters ([`BlobCounters`]) only grow; [`BlobDisk`] reports them
//!   through [`disk_backend::DiskIo::counters`].

#![forbid(unsafe_code)]

mod disk;
mod error;
mod file;
mod http;

pub use disk::BlobDisk;
pub use disk::BlobDiskError;
pub use disk::BlobDiskFormat;
pub use error::ACCESS_REFUSED_ADVICE;
pub use error::BlobError;
pub use file::FileBlob;
pub use http::HttpBlob;
pub use http::HttpBlobOptions;

use std::future::Future;
use std::pin::Pin;

/// The future returned by [`Blob::read`]: boxed, so that [`Blob`] is
/// dyn-compatible and can be shared as `Arc<dyn Blob>`.
pub type BlobReadFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BlobError>> + Send + 'a>>;

/// The future of [`Blob::read_owned`]: the buffer comes back with the
/// result.
pub type BlobOwnedReadFuture<'a> =
    Pin<Box<dyn Future<Output = (Vec<u8>, Result<(), BlobError>)> + Send + 'a>>;

/// Totals a blob keeps about its traffic since it was opened.
///
/// For an [`HttpBlob`] these count HTTP requests (HEADs, GETs and redirect
/// hops); a [`FileBlob`] is not remote and leaves them all zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobCounters {
    /// Requests sent, including redirect hops and retried attempts.
    pub requests: u64,
    /// Payload (body) bytes received.
    pub bytes_fetched: u64,
    /// Attempts that failed transiently and were tried again.
    pub retries: u64,
    /// Operations (opens and reads) that failed for good.
    pub errors: u64,
}

impl From<BlobCounters> for disk_backend::DiskCounters {
    fn from(c: BlobCounters) -> Self {
        disk_backend::DiskCounters {
            remote_requests: c.requests,
            remote_bytes_fetched: c.bytes_fetched,
            remote_retries: c.retries,
            remote_errors: c.errors,
            ..Default::default()
        }
    }
}

/// What identifies the version of a blob that was seen at open: the pieces
/// a cache key needs so that a replaced image is never served stale.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobValidators {
    /// The `ETag` header exactly as the server sent it (quotes and a weak
    /// `W/` prefix included).
    pub etag: Option<String>,
    /// The `Last-Modified` header exactly as the server sent it.
    pub last_modified: Option<String>,
}

impl BlobValidators {
    /// Whether the ETag is a strong one (usable with `If-Match`).
    pub fn has_strong_etag(&self) -> bool {
        self.etag.as_deref().is_some_and(|e| !e.starts_with("W/"))
    }
}

/// An immutable array of bytes that can be read at any offset.
///
/// Implementations are `Send + Sync` and are used from many tasks at once.
/// The trait is dyn-compatible; share blobs as `Arc<dyn Blob>`.
pub trait Blob: Send + Sync {
    /// Length of the blob in bytes, fixed at open.
    fn len(&self) -> u64;

    /// Whether the blob has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `buf.len()` bytes at `offset`, filling the whole buffer or
    /// failing. An empty buffer succeeds without I/O; a range ending past
    /// [`Blob::len`] is [`BlobError::OutOfRange`]. On failure the contents
    /// of `buf` are unspecified.
    fn read<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> BlobReadFuture<'a>;

    /// [`read`](Self::read) into a buffer handed over and back with the
    /// result (`buf.len()` bytes at `offset`). The default lends the
    /// buffer to `read`; a blob that reads on another thread (a local
    /// file) fills the buffer there instead of copying into it.
    fn read_owned(&self, mut buf: Vec<u8>, offset: u64) -> BlobOwnedReadFuture<'_> {
        Box::pin(async move {
            let result = self.read(&mut buf, offset).await;
            (buf, result)
        })
    }

    /// Traffic totals since open.
    fn counters(&self) -> BlobCounters {
        BlobCounters::default()
    }

    /// The validators seen at open, if the blob has any.
    fn validators(&self) -> BlobValidators {
        BlobValidators::default()
    }

    /// A description for logs and errors: a path, or a redacted URL.
    fn describe(&self) -> String;
}

impl<T: Blob + ?Sized> Blob for std::sync::Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn read<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> BlobReadFuture<'a> {
        (**self).read(buf, offset)
    }
    fn read_owned(&self, buf: Vec<u8>, offset: u64) -> BlobOwnedReadFuture<'_> {
        (**self).read_owned(buf, offset)
    }
    fn counters(&self) -> BlobCounters {
        (**self).counters()
    }
    fn validators(&self) -> BlobValidators {
        (**self).validators()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Checks that `len` bytes at `offset` lie inside a blob of `blob_len`
/// bytes.
pub(crate) fn check_blob_range(offset: u64, len: usize, blob_len: u64) -> Result<(), BlobError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= blob_len => Ok(()),
        _ => Err(BlobError::OutOfRange {
            offset,
            len,
            blob_len,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_check() {
        assert!(check_blob_range(0, 10, 10).is_ok());
        assert!(check_blob_range(10, 0, 10).is_ok());
        assert!(matches!(
            check_blob_range(5, 6, 10),
            Err(BlobError::OutOfRange {
                offset: 5,
                len: 6,
                blob_len: 10
            })
        ));
        assert!(check_blob_range(u64::MAX, 1, 10).is_err());
    }

    #[test]
    fn counters_map_to_disk_counters() {
        let c = BlobCounters {
            requests: 1,
            bytes_fetched: 2,
            retries: 3,
            errors: 4,
        };
        let d: disk_backend::DiskCounters = c.into();
        assert_eq!(
            (
                d.remote_requests,
                d.remote_bytes_fetched,
                d.remote_retries,
                d.remote_errors
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(d.cache_hit_bytes, 0);
    }

    #[test]
    fn strong_etag() {
        let mut v = BlobValidators::default();
        assert!(!v.has_strong_etag());
        v.etag = Some("W/\"x\"".into());
        assert!(!v.has_strong_etag());
        v.etag = Some("\"x\"".into());
        assert!(v.has_strong_etag());
    }
}
