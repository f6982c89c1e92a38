//! The built test guests booted from a remote image: nginx on 127.0.0.1
//! serves the built images folder, the root disk resolves to its URL, and
//! the backend reads it lazily through RAM diff, SQLite auto-cache and
//! HTTP blob, exported to QEMU over NBD (see `mirror` for how each test
//! gets its mirror). The petri test guest boots cold then warm; the Debian
//! guest boots once, cold (the bench does the repeats), replaying the
//! prefetch list the store holds beside the image.

use crate::guest::SCRATCH_MARKER;
use crate::guest::any_file_contains;
use crate::guest::boot_guest;
use crate::guest::dir_bytes;
use crate::mirror;
use anyhow::Context as _;
use anyhow::ensure;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use petri::TestCase;
use petri::TestCaseRegistration;
use std::process::Command;
use vmm_test_images::KnownTestArtifacts;
use vmm_test_macros::vmm_test;

/// The QEMU case of [`cold_then_warm`].
const QEMU_CASE: &str = "remote_mirror::qemu_linux_direct_x64_petri_test_guest_x64::cold_then_warm";

/// Boots twice from the nginx mirror with one fresh cache: the cold boot
/// fetches what the guest reads, the warm boot fetches nothing (one HEAD
/// validates the image), and the guest's writes (`write-scratch`, 4 MiB)
/// never reach the cache.
#[vmm_test(
    qemu_linux_direct_x64(vhd(petri_test_guest_x64)),
    openvmm_linux_direct_x64(vhd(petri_test_guest_x64)),
    hyperv_uefi_x64(vhd(petri_test_guest_x64))
)]
async fn cold_then_warm<T: PetriVmmBackend + Clone>(
    config: PetriVmBuilder<T>,
) -> anyhow::Result<()> {
    let mirror = mirror::take(&config.params().test_name)?;
    mirror.check_serves_root(&config)?;
    let config = config.with_cache_dir(mirror.cache_dir());
    // Requests nginx saw (only when the store is our nginx).
    let requests = || mirror.nginx_requests();

    let before = requests()?;
    let cold = boot_guest(config.clone(), &["write-scratch"]).await?;
    let after_cold = requests()?;
    let c = cold.counters;
    eprintln!("cold boot: {c:?}");
    check_cold_boot(
        &c,
        KnownTestArtifacts::PetriTestGuestX64Vhd,
        2,
        before,
        after_cold,
    )?;

    let warm = boot_guest(config, &["write-scratch"]).await?;
    let after_warm = requests()?;
    let w = warm.counters;
    eprintln!("warm boot: {w:?}");
    ensure!(
        w.remote_bytes_fetched == 0,
        "the warm boot fetched bytes: {w:?}"
    );
    // The one request is the HEAD that checks the image is unchanged.
    ensure!(w.remote_requests == 1, "warm boot requests: {w:?}");
    if let (Some(before), Some(after)) = (after_cold, after_warm) {
        ensure!(after - before == 1, "nginx saw {} requests", after - before);
    }
    ensure!(
        w.cache_hit_bytes > 0,
        "the warm boot read nothing from the cache: {w:?}"
    );

    // The guest wrote its marker (the step passed), but only into RAM.
    let cache = mirror.cache_dir();
    ensure!(dir_bytes(&cache) > 0, "the cache is empty");
    ensure!(
        !any_file_contains(&cache, SCRATCH_MARKER)?,
        "the guest's writes reached the cache in {}",
        cache.display()
    );
    if let Some(served) = mirror.served_dir() {
        ensure!(
            !any_file_contains(
                &served.join(KnownTestArtifacts::PetriTestGuestX64Vhd.file_name()),
                SCRATCH_MARKER
            )?,
            "the guest's writes reached the served image"
        );
    }
    Ok(())
}

/// Checks a cold boot's counters: it fetched (and cached) something, less
/// than `1 / fraction` of `image`, and nginx (when the store is ours) saw
/// exactly the requests the disk counted between `before` and `after`.
fn check_cold_boot(
    c: &petri::DiskCounters,
    image: KnownTestArtifacts,
    fraction: u64,
    before: Option<u64>,
    after: Option<u64>,
) -> anyhow::Result<()> {
    ensure!(
        c.remote_bytes_fetched > 0 && c.cache_fill_bytes > 0,
        "the cold boot fetched nothing: {c:?}"
    );
    ensure!(
        c.remote_bytes_fetched < image.size() / fraction,
        "the cold boot fetched more than 1/{fraction} of {image}: {c:?}"
    );
    if let (Some(before), Some(after)) = (before, after) {
        ensure!(
            after - before == c.remote_requests,
            "nginx saw {} requests, the disk counted {c:?}",
            after - before
        );
    }
    Ok(())
}

/// When the store holds the image's prefetch list (`<image>.prefetch`,
/// which `cargo xtask guest-test build-image` records and `cargo xtask
/// test` always builds, so required under CI), checks that the cold boot
/// replayed it: the prefetch fetched nearly everything that was fetched
/// (the guest's own misses were few), and nearly all of it was then read.
fn check_prefetch_replayed(
    c: &petri::DiskCounters,
    mirror: &mirror::RemoteMirror,
    image: KnownTestArtifacts,
) -> anyhow::Result<()> {
    let Some(served) = mirror.served_dir() else {
        // The user's store: whether it publishes a list is its business.
        return Ok(());
    };
    if !petri::prefetch_allowed_by_env() {
        eprintln!("PETRI_PREFETCH turns prefetching off: the replay is not checked");
        return Ok(());
    }
    let list = served.join(format!("{}.prefetch", image.file_name()));
    if !list.is_file() {
        ensure!(
            !ci_env::in_ci(),
            "{} is missing: cargo xtask test records it with the image",
            list.display()
        );
        eprintln!("no prefetch list at {}: not checked", list.display());
        return Ok(());
    }
    ensure!(
        c.prefetched_bytes > 0 && c.prefetch_hit_reads > 0,
        "the cold boot did not replay {}: {c:?}",
        list.display()
    );
    ensure!(
        c.prefetched_bytes * 10 >= c.remote_bytes_fetched * 9,
        "the guest's own misses fetched more than a tenth of the bytes: {c:?}"
    );
    ensure!(
        c.prefetch_used_bytes * 10 >= c.prefetched_bytes * 9,
        "more than a tenth of the prefetched bytes were never read: {c:?}"
    );
    Ok(())
}

/// The Debian 12 systemd guest booted lazily: one cold boot from the
/// mirror, with a fresh cache, to its readiness unit after
/// `multi-user.target` with no failed unit. It fetches what it reads (tens
/// of MB) and far less than the 2 GiB image, and nginx saw exactly the
/// requests the disk counted.
#[vmm_test(qemu_linux_direct_x64(vhd(debian_12_x64)))]
async fn cold_boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let mirror = mirror::take(&config.params().test_name)?;
    mirror.check_serves_root(&config)?;
    let config = config.with_cache_dir(mirror.cache_dir());
    let requests = || mirror.nginx_requests();
    let before = requests()?;
    let run = boot_guest(config, &[]).await?;
    let after = requests()?;
    let c = run.counters;
    eprintln!("cold boot of the Debian guest: {c:?}");
    check_cold_boot(&c, KnownTestArtifacts::Debian12X64Vhd, 4, before, after)?;
    check_prefetch_replayed(&c, &mirror, KnownTestArtifacts::Debian12X64Vhd)?;
    ensure!(
        !run.console.contains("PETRI_FAILED_UNIT"),
        "units failed:\n{}",
        run.console
    );
    Ok(())
}

/// `PETRI_REMOTE_ARTIFACTS=0` forces local resolution: the QEMU case of
/// [`cold_then_warm`], run by this very binary with it set, must fail
/// before booting, naming the root disk and the command that builds it.
fn forced_local_fails_with_the_build_hint() -> anyhow::Result<()> {
    let env = petri_artifact_resolver_openvmm_known_paths::ResolverEnv::from_process_env();
    if env
        .find_local(KnownTestArtifacts::PetriTestGuestX64Vhd)
        .is_err()
    {
        return Err(petri::SkipTest::or_fail_under_ci(
            "the petri test guest is not built; build it with `cargo xtask guest-test build-image`",
        ));
    }
    let exe = std::env::current_exe().context("cannot find the test binary")?;
    let out = Command::new(&exe)
        .args(["--exact", QEMU_CASE])
        .env("PETRI_REMOTE_ARTIFACTS", "0")
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("is ignored on this host") || text.contains("1 ignored") {
        return Err(petri::SkipTest::or_fail_under_ci(
            "the QEMU case is ignored on this host (no QEMU)",
        ));
    }
    ensure!(
        !out.status.success(),
        "the forced-local run passed:\n{text}"
    );
    ensure!(
        text.contains(KnownTestArtifacts::PetriTestGuestX64Vhd.cli_name())
            && text.contains("cargo xtask guest-test build-image"),
        "the failure does not name the image and the build command:\n{text}"
    );
    ensure!(
        !text.contains("PETRI_DISK_COUNTERS"),
        "the forced-local run booted:\n{text}"
    );
    Ok(())
}

fn forced_local_case() -> TestCase {
    TestCase::new(
        "forced_local_fails_with_the_build_hint",
        |_: &petri::ArtifactResolver<'_>| (),
        |_, ()| forced_local_fails_with_the_build_hint(),
    )
}

petri::inventory::submit!(TestCaseRegistration::new(module_path!(), forced_local_case));
