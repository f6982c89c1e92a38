//! Deterministic test images (seeded random data, flat or fixed VHD1) and
//! hashing helpers.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use rand::RngCore as _;
use sha2::Digest as _;
use vhd1_defs::Footer;

// The seeded generator of test images and tests (xoshiro256++) is
// disk_test_support's, named here too so that an image written below and
// the bytes a test expects of it come from one generator.
pub use disk_test_support::random_bytes;
pub use disk_test_support::test_rng;

/// Writes `len` deterministic random bytes for `seed` to `path` (the same
/// bytes as [`random_bytes`]`(seed, len)`), streaming in 1 MiB chunks.
/// Returns the SHA-256 of the data (lowercase hex).
pub fn write_random_file(path: &Path, seed: u64, len: u64) -> anyhow::Result<String> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut rng = test_rng(seed);
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64))?;
        // The same bytes as random_bytes: only the final chunk can be
        // shorter than a multiple of 8.
        rng.fill_bytes(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(hex(&hasher.finalize()))
}

/// Appends a fixed VHD1 footer (for `data.len()` bytes of disk) to `data`.
/// `data.len()` must be a multiple of 512.
pub fn fixed_vhd1_bytes(mut data: Vec<u8>, unique_id: [u8; 16]) -> anyhow::Result<Vec<u8>> {
    let footer = Footer::new_fixed(data.len() as u64, unique_id)?;
    data.extend_from_slice(&footer.to_bytes());
    Ok(data)
}

/// Writes a fixed VHD1 to `path`: `disk_size` bytes of deterministic random
/// data for `seed` (identical to [`write_random_file`]`(.., seed,
/// disk_size)`), then the footer. Returns the footer and the SHA-256 of the
/// disk data (without the footer).
pub fn write_fixed_vhd1(
    path: &Path,
    seed: u64,
    disk_size: u64,
    unique_id: [u8; 16],
) -> anyhow::Result<(Footer, String)> {
    let footer = Footer::new_fixed(disk_size, unique_id)?;
    let hash = write_random_file(path, seed, disk_size)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(&footer.to_bytes())?;
    Ok((footer, hash))
}

/// SHA-256 of `data` as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

/// SHA-256 of a whole file as lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        assert_eq!(random_bytes(1, 1000), random_bytes(1, 1000));
        assert_ne!(random_bytes(1, 1000), random_bytes(2, 1000));
        assert_ne!(random_bytes(0, 64), vec![0u8; 64]);
        // A prefix of a longer stream is the shorter stream.
        assert_eq!(random_bytes(7, 999)[..], random_bytes(7, 2000)[..999]);
    }

    #[test]
    fn file_matches_bytes_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let len = (3 << 20) + 13;
        let hash = write_random_file(&p, 42, len).unwrap();
        let want = random_bytes(42, len as usize);
        assert_eq!(std::fs::read(&p).unwrap(), want);
        assert_eq!(hash, sha256_hex(&want));
        assert_eq!(sha256_file(&p).unwrap(), hash);
    }

    #[test]
    fn sha256_known_value() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn fixed_vhd1_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.vhd");
        let (footer, hash) = write_fixed_vhd1(&p, 5, 1 << 20, [7; 16]).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.len(), (1 << 20) + 512);
        assert_eq!(sha256_hex(&bytes[..1 << 20]), hash);
        let tail: [u8; 512] = bytes[1 << 20..].try_into().unwrap();
        let parsed = Footer::parse_fixed(&tail, bytes.len() as u64).unwrap();
        assert_eq!(parsed, footer);
        assert_eq!(
            fixed_vhd1_bytes(random_bytes(5, 1 << 20), [7; 16]).unwrap(),
            bytes
        );
        assert!(fixed_vhd1_bytes(vec![0; 100], [0; 16]).is_err());
    }
}
