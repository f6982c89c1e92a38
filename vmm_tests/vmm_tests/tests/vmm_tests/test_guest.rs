//! The petri test guest booted from wherever the resolver finds its root
//! disk: the local images folder (`cargo xtask guest-test build-image`),
//! or, when the raw disk is not local and `PETRI_ARTIFACT_BASE_URL` names
//! a store (as `cargo xtask guest-test run` arranges), that store, read
//! lazily through the cache in `PETRI_CACHE_DIR`.

use crate::guest::SCRATCH_MARKER;
use crate::guest::any_file_contains;
use crate::guest::boot_disk;
use crate::guest::boot_guest;
use crate::guest::check_local_boot;
use anyhow::ensure;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use vmm_test_macros::vmm_test;

/// Boots the test guest from its raw root disk, lets it write 4 MiB, and
/// checks that the writes stayed in RAM: a local image file is unchanged
/// and nothing was fetched; a remote image's cache never holds them.
#[vmm_test(
    qemu_linux_direct_x64,
    openvmm_linux_direct_x64(vhd(petri_test_guest_raw_x64)),
    hyperv_uefi_x64(vhd(petri_test_guest_x64))
)]
async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let root = boot_disk(&config)?;
    let image = match root {
        petri::Disk::Differencing(petri::DiskPath::Local(path)) => path,
        petri::Disk::Differencing(petri::DiskPath::Remote { .. }) => {
            let run = boot_guest(config, &["write-scratch"]).await?;
            eprintln!("remote root disk: {:?}", run.counters);
            let cache = petri::cache_dir::cache_dir()?;
            ensure!(
                !any_file_contains(&cache, SCRATCH_MARKER)?,
                "the guest's writes reached the cache in {}",
                cache.display()
            );
            return Ok(());
        }
        other => anyhow::bail!("expected a differencing root disk, got {other:?}"),
    };
    let log_dir = config.params().log_dir.clone();
    let run = boot_guest(config, &["write-scratch"]).await?;
    check_local_boot(
        &run.counters,
        &log_dir,
        vmm_test_images::KnownTestArtifacts::PetriTestGuestX64Raw,
    )?;
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

/// A failing guest step is reported as a test failure that carries the
/// guest's own report and the console.
#[vmm_test(qemu_linux_direct_x64)]
async fn failing_step_is_reported<T: PetriVmmBackend>(
    config: PetriVmBuilder<T>,
) -> anyhow::Result<()> {
    let err = match boot_guest(config, &["fail"]).await {
        Ok(_) => anyhow::bail!("a guest whose step failed passed"),
        Err(err) => format!("{err:#}"),
    };
    ensure!(
        err.contains("guest step fail failed") && err.contains("PETRI_STEP fail status="),
        "{err}"
    );
    ensure!(
        err.contains("PETRI_GUEST_READY"),
        "no console in the error: {err}"
    );
    Ok(())
}
