//! Shared helpers: a file-backed bottom layer that counts its reads, and
//! deterministic image contents.

#![allow(dead_code)]

use disk_backend::{Disk, DiskError};
use disk_layered::{DiskLayer, LayerConfiguration, LayerIo, LayeredDisk, SectorMarker};
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::Geometry;
use disklayer_sqlite::auto_cache::LowerDisk;
use rand::{RngCore, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A real file presented as a full, read-only bottom layer. Every read is
/// counted, so tests can prove a cache served a read without it.
pub struct FileLayer {
    file: std::fs::File,
    sectors: u64,
    disk_id: Option<[u8; 16]>,
    pub reads: Arc<AtomicU64>,
}

impl FileLayer {
    pub fn open(path: &Path, disk_id: Option<[u8; 16]>) -> anyhow::Result<(Self, Arc<AtomicU64>)> {
        let file = std::fs::File::open(path)?;
        let sectors = file.metadata()?.len() / 512;
        let reads = Arc::new(AtomicU64::new(0));
        Ok((
            FileLayer {
                file,
                sectors,
                disk_id,
                reads: reads.clone(),
            },
            reads,
        ))
    }
}

impl LayerIo for FileLayer {
    fn layer_type(&self) -> &str {
        "test-file"
    }
    fn sector_count(&self) -> u64 {
        self.sectors
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn disk_id(&self) -> Option<[u8; 16]> {
        self.disk_id
    }
    fn is_logically_read_only(&self) -> bool {
        true
    }
    async fn read(
        &self,
        sector: u64,
        buf: &mut [u8],
        mut marker: SectorMarker<'_>,
    ) -> Result<(), DiskError> {
        disk_backend::check_io_range(sector, buf.len(), 512, self.sectors)?;
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.file
            .read_exact_at(buf, sector * 512)
            .map_err(|e| DiskError::io("reading test image", e))?;
        marker.set_all();
        Ok(())
    }
    async fn write(&self, _sector: u64, _buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, _s: u64, _n: u64, _z: bool) -> Result<(), DiskError> {
        Err(DiskError::ReadOnly)
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Writes a pseudo-random image file of `len` bytes and returns its bytes.
pub fn make_image(path: &Path, seed: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let data = pattern(seed, len);
    std::fs::write(path, &data)?;
    Ok(data)
}

/// `[auto-cache (read cache), file]`, read-only, as a `Disk`.
pub async fn cached_stack(
    cache: AutoCacheSqliteDiskLayer,
    image: &Path,
    disk_id: Option<[u8; 16]>,
) -> anyhow::Result<(Disk, Arc<AtomicU64>)> {
    let (lower, reads) = FileLayer::open(image, disk_id)?;
    let disk = LayeredDisk::new(
        true,
        vec![
            LayerConfiguration::read_cache(DiskLayer::new(cache)),
            LayerConfiguration::plain(DiskLayer::from_layer(lower)),
        ],
    )
    .await?;
    Ok((Disk::new(disk)?, reads))
}

/// Runs this test binary again as a child process executing the test
/// `test_name` with extra environment variables.
pub fn child(test_name: &str, env: &[(&str, &str)]) -> std::process::Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Sum of the sizes of the regular files under `dir`, and their paths.
pub fn list_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// What an auto-cache learns of a lower disk of `sectors` 512-byte
/// sectors with disk id `id`.
pub fn lower(sectors: u64, id: Option<[u8; 16]>) -> LowerDisk {
    LowerDisk {
        geometry: Geometry {
            sector_count: sectors,
            sector_size: 512,
        },
        disk_id: id,
    }
}
