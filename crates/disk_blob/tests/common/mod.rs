//! Shared helpers of the blob tests.

use disk_blob::Blob;
use disk_blob::BlobError;

/// Reads `len` bytes at `offset` into a new buffer.
pub async fn read_vec(blob: &dyn Blob, offset: u64, len: usize) -> Result<Vec<u8>, BlobError> {
    let mut buf = vec![0u8; len];
    blob.read(&mut buf, offset).await?;
    Ok(buf)
}
