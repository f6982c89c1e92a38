//! Sparse test images made by `qemu-img` (VHDX, dynamic VHD, qcow2) from
//! one raw image with data, holes and zero regions, for the tests and
//! benchmarks of the sparse formats.

use crate::images::test_rng;
use anyhow::Context as _;
use rand::RngCore as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

const MIB: usize = 1 << 20;

/// One way of converting the raw image: the file name (its extension
/// is the format's) and the `qemu-img convert` arguments that make it.
#[derive(Debug, Clone, Copy)]
pub struct SparseVariant {
    /// File name.
    pub name: &'static str,
    /// Arguments after `convert -f raw`, before the file names.
    pub args: &'static [&'static str],
}

/// The variants the tests cover: VHDX with 1 MiB and default blocks,
/// dynamic VHD, qcow2 v3 with 64 KiB and 2 MiB clusters, v2, and
/// compressed (deflate at 64 KiB and 2 MiB, zstd).
pub const SPARSE_VARIANTS: &[SparseVariant] = &[
    SparseVariant {
        name: "small-blocks.vhdx",
        args: &["-O", "vhdx", "-o", "block_size=1M"],
    },
    SparseVariant {
        name: "default-blocks.vhdx",
        args: &["-O", "vhdx"],
    },
    SparseVariant {
        name: "dynamic.vhd",
        args: &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
    },
    SparseVariant {
        name: "c64k.qcow2",
        args: &["-O", "qcow2", "-o", "cluster_size=64k"],
    },
    SparseVariant {
        name: "c2m.qcow2",
        args: &["-O", "qcow2", "-o", "cluster_size=2M"],
    },
    SparseVariant {
        name: "v2.qcow2",
        args: &["-O", "qcow2", "-o", "compat=0.10"],
    },
    SparseVariant {
        name: "deflate-c64k.qcow2",
        args: &["-c", "-O", "qcow2", "-o", "cluster_size=64k"],
    },
    SparseVariant {
        name: "deflate-c2m.qcow2",
        args: &["-c", "-O", "qcow2", "-o", "cluster_size=2M"],
    },
    SparseVariant {
        name: "zstd.qcow2",
        args: &["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
    },
];

/// Writes a raw image of `size` bytes (a multiple of 1 MiB, at least 24
/// MiB) to `path`: deterministic data in several regions (one of 4 KiB,
/// one at the very end), half of them random (incompressible) and half
/// compressible (random nibbles, about 2:1 with deflate, so qcow2's
/// compressed variants really hold compressed clusters); zeros in between,
/// inside and across allocation units. MiB 24..40 hold no data at all.
/// Returns the bytes.
pub fn write_sparse_raw(path: &Path, size: usize) -> anyhow::Result<Vec<u8>> {
    let mut data = vec![0u8; size];
    let mut rng = test_rng(16);
    // (start MiB, length KiB, compressible); everything else reads zero.
    let regions: [(usize, usize, bool); 6] = [
        (0, 1536, false),
        (3, 4, false),
        (9, 3072, true),
        (14, 64, false),
        (17, 2048, true),
        (size / MIB - 1, 1024, true),
    ];
    for (mib, kib, compressible) in regions {
        let start = mib * MIB;
        let end = (start + kib * 1024).min(size);
        let region = &mut data[start..end];
        rng.fill_bytes(region);
        if compressible {
            for b in region.iter_mut() {
                *b &= 0x0f;
            }
        }
    }
    std::fs::write(path, &data).with_context(|| format!("writing {}", path.display()))?;
    Ok(data)
}

/// Writes a raw benchmark image of `size` bytes (a multiple of 4 MiB):
/// each 4 MiB stripe holds 1.5 MiB of random data, 1.5 MiB of
/// compressible data (random nibbles) and a 1 MiB hole, so converted
/// images have allocated, compressible and unallocated parts throughout.
/// Writes in stripes; returns nothing but errors.
pub fn write_striped_raw(path: &Path, seed: u64, size: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let stripe = 4 * MIB;
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut rng = test_rng(seed);
    let mut buf = vec![0u8; stripe];
    for _ in 0..size / stripe as u64 {
        let (random, rest) = buf.split_at_mut(3 * MIB / 2);
        let (compressible, hole) = rest.split_at_mut(3 * MIB / 2);
        rng.fill_bytes(random);
        rng.fill_bytes(compressible);
        for b in compressible.iter_mut() {
            *b &= 0x0f;
        }
        hole.fill(0);
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

/// Runs `qemu-img convert -f raw <variant args> raw out` and returns the
/// output path (`dir/<variant name>`).
pub fn convert_with_qemu_img(
    raw: &Path,
    dir: &Path,
    variant: &SparseVariant,
) -> anyhow::Result<PathBuf> {
    let out = dir.join(variant.name);
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw"])
        .args(variant.args)
        .arg(raw)
        .arg(&out)
        .output()
        .context("running qemu-img (apt-get install qemu-utils)")?;
    anyhow::ensure!(
        status.status.success(),
        "qemu-img convert {:?}: {}",
        variant.args,
        String::from_utf8_lossy(&status.stderr)
    );
    Ok(out)
}
