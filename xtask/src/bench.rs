//! `cargo xtask bench`: builds `disk-bench` in release mode and runs its
//! `suite` (the workloads, their peers and the report all live in the
//! `disk_bench` crate).
//!
//! What xtask adds is what only xtask knows: the Debian packages of the
//! peers (`--install`), where the build puts the binary, the bench
//! directory under `target/`, and where `cargo xtask guest-test
//! build-image` put the test guests (passed as `--guest-*` and, for the
//! Debian guest, `--distro-*` when they are there). Every other option is
//! the suite's and is passed on unchanged.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

/// Options for `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Install missing Debian packages (nbdkit, libnbd-bin, curl,
    /// qemu-utils, qemu-block-extra, qemu-system-x86) with apt-get first.
    #[arg(long)]
    install: bool,
    /// Options of `disk-bench suite`, passed on unchanged: --quick,
    /// --reps N, --guest-reps N, --distro-reps N, --out FILE, --skip-nbd,
    /// --skip-guest,
    /// --only GROUPS, --baseline-bin FILE (`cargo xtask bench -- --help`
    /// lists them all).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    suite_options: Vec<OsString>,
}

/// Runs the benchmark.
pub fn run(root: &Path, args: BenchArgs) -> Result<()> {
    // `--install` may also stand among the suite's options.
    let install = args.install || args.suite_options.iter().any(|a| a == "--install");
    if install {
        crate::setup::apt_install(&[
            "nbdkit",
            "libnbd-bin",
            "curl",
            "qemu-utils",
            "qemu-block-extra",
            "qemu-system-x86",
        ])?;
    }
    let bin = build_disk_bench(root)?;
    let mut suite = Command::new(&bin);
    suite
        .current_dir(root)
        .arg("suite")
        .arg("--bench-dir")
        .arg(root.join("target/bench"));
    for guest in [guest_files(root), distro_files(root)]
        .into_iter()
        .flatten()
    {
        for (option, path) in guest {
            suite.arg(option).arg(path);
        }
    }
    suite.args(args.suite_options.iter().filter(|a| *a != "--install"));
    let status = suite
        .status()
        .with_context(|| format!("running {} suite", bin.display()))?;
    if !status.success() {
        bail!("disk-bench suite failed ({status})");
    }
    Ok(())
}

/// Builds `disk-bench` in release mode and returns its path.
fn build_disk_bench(root: &Path) -> Result<PathBuf> {
    println!("bench: cargo build --release -p disk_bench");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "disk_bench"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building disk-bench failed ({status})");
    }
    let bin = crate::target_dir(root).join("release/disk-bench");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// The suite's `--guest-*` options for the built petri test guest, if all
/// its files are there.
fn guest_files(root: &Path) -> Option<[(&'static str, PathBuf); 4]> {
    let dir = root.join("images");
    let files = [
        ("--guest-kernel", dir.join(crate::guest_image::KERNEL_FILE)),
        ("--guest-initrd", dir.join(crate::guest_image::INITRD_FILE)),
        ("--guest-raw", dir.join(crate::guest_image::RAW_FILE)),
        ("--guest-vhd", dir.join(crate::guest_image::VHD_FILE)),
    ];
    files.iter().all(|(_, p)| p.exists()).then_some(files)
}

/// The suite's `--distro-*` options for the built Debian guest, if all its
/// files are there.
fn distro_files(root: &Path) -> Option<[(&'static str, PathBuf); 4]> {
    use vmm_test_images::KnownTestArtifacts as A;
    let dir = root.join("images");
    let files = [
        (
            "--distro-kernel",
            dir.join(A::Debian12X64Kernel.file_name()),
        ),
        (
            "--distro-initrd",
            dir.join(A::Debian12X64Initrd.file_name()),
        ),
        ("--distro-raw", dir.join(A::Debian12X64Raw.file_name())),
        ("--distro-vhd", dir.join(A::Debian12X64Vhd.file_name())),
    ];
    files.iter().all(|(_, p)| p.exists()).then_some(files)
}
