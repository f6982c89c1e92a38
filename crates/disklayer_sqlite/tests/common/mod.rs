//! Shared helpers: a cached stack over an image file (whose bottom is
//! `disk_test_support::TestDisk`), child processes, file listings.

#![allow(dead_code)]

use disk_backend::Disk;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_layered::LayeredDisk;
use disk_test_support::TestDisk;
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::Geometry;
use disklayer_sqlite::auto_cache::LowerDisk;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// `[auto-cache (read cache), file]`, read-only, as a `Disk`, and the count
/// of the file layer's reads (so a test can prove the cache served a read
/// without it).
pub async fn cached_stack(
    cache: AutoCacheSqliteDiskLayer,
    image: &Path,
    disk_id: Option<[u8; 16]>,
) -> anyhow::Result<(Disk, Arc<AtomicU64>)> {
    let mut lower = TestDisk::open(image)?;
    if let Some(id) = disk_id {
        lower = lower.with_disk_id(id);
    }
    let disk = LayeredDisk::new(
        true,
        vec![
            LayerConfiguration::read_cache(DiskLayer::new(cache)),
            LayerConfiguration::plain(lower.layer()),
        ],
    )
    .await?;
    Ok((Disk::new(disk)?, lower.read_counter()))
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
