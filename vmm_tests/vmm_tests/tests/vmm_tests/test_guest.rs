//! The petri test guest booted from local images.

use crate::guest::SCRATCH_MARKER;
use crate::guest::any_file_contains;
use crate::guest::boot_guest;
use anyhow::Context as _;
use anyhow::ensure;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use vmm_test_macros::vmm_test;

/// Boots the test guest from the local raw root disk (RAM diff over the
/// file, exported over NBD), lets it write 4 MiB, and checks that nothing
/// was fetched and the image file never saw the guest's writes.
#[vmm_test(
    qemu_linux_direct_x64,
    openvmm_linux_direct_x64(vhd(petri_test_guest_raw_x64)),
    hyperv_uefi_x64(vhd(petri_test_guest_x64))
)]
async fn boot_local<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let root = config
        .firmware()
        .boot_drive()
        .and_then(|d| d.disk)
        .context("no boot disk")?;
    let image = match root {
        petri::Disk::Differencing(petri::DiskPath::Local(path)) => path,
        other => anyhow::bail!("expected a local root disk, got {other:?}"),
    };
    let run = boot_guest(config, &["write-scratch"]).await?;
    let c = run.counters;
    ensure!(
        c.remote_requests == 0 && c.remote_bytes_fetched == 0,
        "a local disk fetched something: {c:?}"
    );
    ensure!(
        run.console.contains("PETRI_STEP write-scratch status=0"),
        "{}",
        run.console
    );
    ensure!(
        !any_file_contains(&image, SCRATCH_MARKER)?,
        "the guest's writes reached the image {}",
        image.display()
    );
    Ok(())
}
