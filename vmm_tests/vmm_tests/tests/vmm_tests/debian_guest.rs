//! The Debian 12 systemd guest (built by
//! `cargo xtask guest-test build-image --guest debian`) booted from
//! wherever the resolver finds its raw root disk: the local images folder,
//! or, when the disk is not local and `PETRI_ARTIFACT_BASE_URL` names a
//! store (as `cargo xtask guest-test run --guest debian` arranges), that
//! store, read lazily through the cache in `PETRI_CACHE_DIR`. Its lazy
//! boot from a mirror of the images folder is `remote_mirror::cold_boot`.

use crate::guest::boot_disk;
use crate::guest::boot_guest;
use crate::guest::check_local_boot;
use anyhow::Context as _;
use anyhow::ensure;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use vmm_test_images::KnownTestArtifacts;
use vmm_test_macros::vmm_test;

/// Boots the guest (its own kernel and initramfs, systemd, `-smp 2 -m
/// 1024`) to the readiness unit, which reports after systemd reached
/// `multi-user.target` and no unit failed, then powers off. From a local
/// file nothing is fetched.
#[vmm_test(qemu_linux_direct_x64(vhd(debian_12_raw_x64)))]
async fn boot_to_marker<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let root = boot_disk(&config)?;
    let local = matches!(root, petri::Disk::Differencing(petri::DiskPath::Local(_)));
    let log_dir = config.params().log_dir.clone();
    let run = boot_guest(config, &[]).await?;
    let c = run.counters;
    eprintln!(
        "Debian guest from a {} root disk: {c:?}",
        if local { "local" } else { "remote" }
    );
    // The marker comes from the unit ordered after multi-user.target, so
    // systemd reached the target first.
    let lines: Vec<&str> = run.console.lines().collect();
    let reached = lines
        .iter()
        .position(|l| l.contains("Reached target") && l.contains("Multi-User System"))
        .with_context(|| format!("systemd never reached multi-user.target:\n{}", run.console))?;
    let ready = lines
        .iter()
        .position(|l| l.contains("PETRI_GUEST_READY"))
        .context("no ready marker")?;
    ensure!(reached < ready, "the marker came before multi-user.target");
    ensure!(
        !run.console.contains("PETRI_FAILED_UNIT"),
        "units failed:\n{}",
        run.console
    );
    if local {
        check_local_boot(&c, &log_dir, KnownTestArtifacts::Debian12X64Raw)?;
    }
    Ok(())
}
