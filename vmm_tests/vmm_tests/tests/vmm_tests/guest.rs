//! Booting a built test guest (the petri test guest or the Debian guest:
//! both speak the same console markers) and reading what it did.

use anyhow::Context as _;
use anyhow::ensure;
use petri::DiskCounters;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use std::path::Path;
use std::time::Duration;
use vmm_test_images::BuiltGuest;
use vmm_test_images::KnownTestArtifacts;

/// What the guest's `write-scratch` step writes (4 MiB containing it).
pub const SCRATCH_MARKER: &[u8] = b"PETRI_SCRATCH_WRITTEN_BY_GUEST";

/// Time allowed for each console marker. A TCG boot takes 7-17 s on an
/// idle machine; test machines are shared and slow.
pub const MARKER_TIMEOUT: Duration = Duration::from_secs(300);

/// What one boot did.
pub struct GuestRun {
    /// The boot disk's counters when the VM ended.
    pub counters: DiskCounters,
    /// The console text.
    pub console: String,
}

/// The boot disk of `config` (a differencing disk over a local file or a
/// URL, as the resolver found the image).
pub fn boot_disk<T: PetriVmmBackend>(config: &PetriVmBuilder<T>) -> anyhow::Result<petri::Disk> {
    config
        .firmware()
        .boot_drive()
        .and_then(|d| d.disk)
        .context("no boot disk")
}

/// The built test guest whose root disk `config` boots, if any.
pub fn booted_guest<T: PetriVmmBackend>(config: &PetriVmBuilder<T>) -> Option<BuiltGuest> {
    let artifact = config.firmware().boot_drive()?.artifact?;
    KnownTestArtifacts::from_handle(artifact)?.built_guest()
}

/// Boots the guest with `petri.steps=<steps>` (and the processors and
/// memory the catalog gives the booted guest), checks that it becomes
/// ready, that every step and the whole run report status 0, and that it
/// powers off; returns the boot disk's counters.
pub async fn boot_guest<T: PetriVmmBackend>(
    config: PetriVmBuilder<T>,
    steps: &[&str],
) -> anyhow::Result<GuestRun> {
    let config = match booted_guest(&config) {
        Some(guest) => config
            .with_processors(guest.boot_processors())
            .with_memory_mib(guest.boot_memory_mib()),
        None => config,
    };
    let mut vm = config
        .with_kernel_cmdline(format!("petri.steps={}", steps.join(",")))
        .run()
        .await?;
    vm.wait_for_console_line("PETRI_GUEST_READY", MARKER_TIMEOUT)
        .await?;
    for step in steps {
        let line = vm
            .wait_for_console_line(&format!("PETRI_STEP {step} "), MARKER_TIMEOUT)
            .await?;
        ensure!(
            line.trim_end().ends_with("status=0"),
            "guest step {step} failed: {line}\nconsole:\n{}",
            vm.console_text()
        );
    }
    let done = vm
        .wait_for_console_line("PETRI_GUEST_DONE", MARKER_TIMEOUT)
        .await?;
    ensure!(
        done.trim_end().ends_with("status=0"),
        "the guest reported failure: {done}\nconsole:\n{}",
        vm.console_text()
    );
    vm.wait_for_exit(MARKER_TIMEOUT).await?;
    let counters = vm
        .boot_disk_counters()
        .context("the backend did not open the boot disk itself")?;
    Ok(GuestRun {
        counters,
        console: vm.console_text(),
    })
}

/// Checks a local boot: nothing was fetched (`c`), and the machine-readable
/// record the main job reads (`disk-counters.json` in `log_dir`) holds
/// exactly one first boot of a local disk of `image`'s size that exited 0.
pub fn check_local_boot(
    c: &DiskCounters,
    log_dir: &Path,
    image: KnownTestArtifacts,
) -> anyhow::Result<()> {
    ensure!(
        c.remote_requests == 0 && c.remote_bytes_fetched == 0,
        "a local disk fetched something: {c:?}"
    );
    let file = log_dir.join(petri::qemu::DISK_COUNTERS_FILE);
    let reports: Vec<petri::qemu::DiskCountersReport> = serde_json::from_slice(
        &std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
    )?;
    ensure!(
        reports.len() == 1
            && reports[0].boot == 1
            && !reports[0].remote
            && reports[0].exit_code == Some(0)
            && reports[0].disk_bytes == image.size(),
        "{reports:?}"
    );
    Ok(())
}

/// Whether any file under `path` (a file or a folder, recursively)
/// contains `needle`. Reads files in pieces, so multi-GB files are fine.
pub fn any_file_contains(path: &Path, needle: &[u8]) -> anyhow::Result<bool> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            if any_file_contains(&entry?.path(), needle)? {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut buf = vec![0u8; 8 << 20];
    let mut carry = 0;
    loop {
        let n = file.read(&mut buf[carry..])?;
        if n == 0 {
            return Ok(false);
        }
        let end = carry + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        // Keep a tail so a match across pieces is found.
        let keep = (needle.len() - 1).min(end);
        buf.copy_within(end - keep..end, 0);
        carry = keep;
    }
}

/// Total bytes of the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        dir_bytes(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
