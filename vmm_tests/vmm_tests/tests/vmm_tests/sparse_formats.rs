//! The petri test guest booted over HTTP from a dynamic VHD, a VHDX and a
//! compressed qcow2 image: the test setup converts the built raw root
//! disk with `qemu-img convert` into a folder that nginx serves (see
//! `mirror`), under the raw image's own name, whose `.raw` extension
//! gives no hint, so the disk layer detects the format from the content
//! (as for a distribution's `.img` cloud image). The guest must reach its
//! markers; nginx must have seen exactly the requests the disk counted,
//! and the boot must have fetched far less than the image.

use crate::guest::boot_guest;
use crate::mirror;
use anyhow::Context as _;
use anyhow::ensure;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use vmm_test_macros::vmm_test;

/// One converted format: the test function's name and the `qemu-img
/// convert` arguments (after `-f raw`) that make the image.
pub struct Conversion {
    /// The test function (the last segment of the test name).
    pub test_fn: &'static str,
    /// `qemu-img convert` arguments.
    pub args: &'static [&'static str],
}

/// The formats booted, one test each.
pub const CONVERSIONS: &[Conversion] = &[
    Conversion {
        test_fn: "boots_from_dynamic_vhd",
        args: &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
    },
    Conversion {
        test_fn: "boots_from_vhdx",
        args: &["-O", "vhdx"],
    },
    Conversion {
        test_fn: "boots_from_compressed_qcow2",
        args: &["-c", "-O", "qcow2"],
    },
];

/// The conversion test `name` needs, if it is one of this module's.
pub fn conversion_for(name: &str) -> Option<&'static Conversion> {
    if !name.starts_with(mirror::SPARSE_MODULE) {
        return None;
    }
    let leaf = name.rsplit("::").next()?;
    CONVERSIONS.iter().find(|c| c.test_fn == leaf)
}

async fn boot_converted<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let name = config.params().test_name.clone();
    let mirror = mirror::take(&name)?;
    mirror.check_serves_root(&config)?;
    let served = mirror
        .served_dir()
        .context("the converted image is served by the test's own nginx")?
        .join(vmm_test_images::KnownTestArtifacts::PetriTestGuestX64Raw.file_name());
    let image_len = std::fs::metadata(&served)
        .with_context(|| format!("reading {}", served.display()))?
        .len();
    let nginx = mirror.nginx().context("no nginx")?;
    let before = nginx.request_count()?;
    let run = boot_guest(
        config.with_cache_dir(mirror.cache_dir()),
        &["write-scratch"],
    )
    .await?;
    let c = run.counters;
    eprintln!("{name}: {image_len}-byte image, boot: {c:?}");
    ensure!(
        c.remote_bytes_fetched > 0,
        "the boot fetched nothing: {c:?}"
    );
    ensure!(
        c.remote_bytes_fetched < image_len / 2,
        "the boot fetched more than half the {image_len}-byte image: {c:?}"
    );
    let seen = nginx.request_count()? - before;
    ensure!(
        seen == c.remote_requests,
        "nginx saw {seen} requests, the disk counted {c:?}"
    );
    Ok(())
}

/// Boots from a dynamic VHD (vpc, 2 MiB blocks with sector bitmaps).
#[vmm_test(qemu_linux_direct_x64(vhd(petri_test_guest_raw_x64)))]
async fn boots_from_dynamic_vhd<T: PetriVmmBackend>(
    config: PetriVmBuilder<T>,
) -> anyhow::Result<()> {
    boot_converted(config).await
}

/// Boots from a VHDX (qemu-img's default block size).
#[vmm_test(qemu_linux_direct_x64(vhd(petri_test_guest_raw_x64)))]
async fn boots_from_vhdx<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    boot_converted(config).await
}

/// Boots from a deflate-compressed qcow2 (64 KiB clusters).
#[vmm_test(qemu_linux_direct_x64(vhd(petri_test_guest_raw_x64)))]
async fn boots_from_compressed_qcow2<T: PetriVmmBackend>(
    config: PetriVmBuilder<T>,
) -> anyhow::Result<()> {
    boot_converted(config).await
}
