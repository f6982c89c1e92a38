//! Shared helpers: a file-backed bottom layer that counts its reads, and
//! deterministic image contents.

#![allow(dead_code)]

use disk_backend::{Disk, DiskError};
use disk_layered::{DiskLayer, LayerConfiguration, LayerIo, LayeredDisk, SectorMarker};
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
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

/// Whether the run is a CI run (`CI` is `true` or `1`): a real component
/// that is missing fails the test instead of skipping it.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `None` after printing why a test cannot run here; under CI a panic.
fn cannot(why: String) -> Option<std::convert::Infallible> {
    if ci() {
        panic!("{why}");
    }
    eprintln!("skipped: {why}");
    None
}

fn run(cmd: &mut std::process::Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!("{cmd:?}: {other:?}")),
    }
}

/// A small tmpfs mounted for one test (root only), unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with the reason printed) where mounting is not possible
    /// outside CI; under `CI=true` a failure to mount fails the test.
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = run(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path()));
        match mounted {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => cannot(format!("cannot mount a tmpfs (needs root): {e}")).map(|n| match n {}),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the whole file system read-only (as a read-only mount is).
    pub fn remount_read_only(&self) {
        run(std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.dir.path()))
        .unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

/// One existing file made read-only by a read-only bind mount over
/// itself (root only; the directory stays writable), undone on drop.
pub struct ReadOnlyFile {
    path: std::path::PathBuf,
}

impl ReadOnlyFile {
    /// `None` (with the reason printed) outside CI where it cannot be done.
    pub fn protect(path: &Path) -> Option<ReadOnlyFile> {
        let bound = run(std::process::Command::new("mount")
            .arg("--bind")
            .arg(path)
            .arg(path));
        if let Err(e) = bound {
            return cannot(format!("cannot bind-mount a file (needs root): {e}"))
                .map(|n| match n {});
        }
        let guard = ReadOnlyFile {
            path: path.to_path_buf(),
        };
        run(std::process::Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(path))
        .unwrap();
        Some(guard)
    }
}

impl Drop for ReadOnlyFile {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}
