//! Installs the external programs that tests use as real components.
//!
//! Each entry names a program the tests look for and the Debian package that
//! provides it. Missing programs are installed with `apt-get` when we run as
//! root (fresh CI machines and developer VMs); otherwise the command says
//! what to install, and fails under CI.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::path::Path;
use std::process::Command;
use std::process::Stdio;

/// A program the tests need and where it comes from.
struct Requirement {
    /// Absolute path the tests look at.
    program: &'static str,
    /// Debian package that installs it.
    package: &'static str,
    /// Why the tests need it.
    why: &'static str,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        program: "/usr/sbin/nginx",
        package: "nginx-light",
        why: "the static HTTP server (Range, ETag) that remote-disk tests read from",
    },
    Requirement {
        program: "/usr/bin/qemu-img",
        package: "qemu-utils",
        why: "the disk-image client used to make and compare test images",
    },
    Requirement {
        program: "/usr/bin/qemu-system-x86_64",
        package: "qemu-system-x86",
        why: "the VMM that boots the test guest from our disk stack",
    },
    Requirement {
        program: "/usr/bin/time",
        package: "time",
        why: "measures the NBD server's peak memory under hostile clients (petri_tool's nbd_memory bench)",
    },
];

/// Installs mdbook with `cargo install --locked` when it is missing. The
/// binary lands in `~/.cargo/bin`, so later runs on the same machine reuse
/// it.
pub fn ensure_mdbook() -> Result<()> {
    cargo_install_if_missing(&["mdbook", "--version"], None, "mdbook")
}

/// Installs `krate` with `cargo install --locked` unless `probe` (a program
/// and its arguments, run in `dir` if given) runs and succeeds.
pub fn cargo_install_if_missing(probe: &[&str], dir: Option<&Path>, krate: &str) -> Result<()> {
    let (program, args) = probe
        .split_first()
        .context("cargo_install_if_missing: empty probe command")?;
    let mut check = Command::new(program);
    check.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(dir) = dir {
        check.current_dir(dir);
    }
    if check.status().is_ok_and(|s| s.success()) {
        return Ok(());
    }
    println!("xtask setup: {krate} is missing; cargo install --locked {krate}");
    let status = Command::new("cargo")
        .args(["install", "--locked", krate])
        .status()
        .with_context(|| format!("running cargo install {krate}"))?;
    if !status.success() {
        bail!("cargo install --locked {krate} failed ({status})");
    }
    Ok(())
}

/// Installs every missing requirement, or explains what is missing.
pub fn ensure_test_prerequisites() -> Result<()> {
    let missing: Vec<&Requirement> = REQUIREMENTS
        .iter()
        .filter(|r| !Path::new(r.program).exists())
        .collect();
    if missing.is_empty() {
        println!("xtask setup: all test prerequisites are installed");
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
    for r in &missing {
        println!(
            "xtask setup: {} is missing (package {}): {}",
            r.program, r.package, r.why
        );
    }
    if !is_root() {
        let msg = format!(
            "missing test prerequisites; install them with: sudo apt-get install -y {}",
            packages.join(" ")
        );
        if crate::is_ci() {
            bail!("{msg}");
        }
        println!("xtask setup: {msg} (tests that need them will be skipped)");
        return Ok(());
    }
    apt_install(&packages)?;
    for r in &missing {
        if !Path::new(r.program).exists() {
            bail!(
                "installed package {} but {} is still missing",
                r.package,
                r.program
            );
        }
    }
    Ok(())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // `id -u` avoids unsafe libc calls for a one-off check.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether dpkg has `package` installed.
fn package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed"
        })
}

/// Runs `apt-get update`, then `apt-get install` of those of `packages` that
/// are not installed yet. One apt-get at a time within this process (tests
/// may build in parallel); the dpkg lock timeout covers other processes.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    static APT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask setup: apt-get install {}", missing.join(" "));
    let run = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(["-q", "-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .with_context(|| format!("running apt-get {} (is this a Debian host?)", args[0]))?;
        if !status.success() {
            bail!(
                "apt-get {} failed ({status}); check the output above and the apt sources",
                args.join(" ")
            );
        }
        Ok(())
    };
    run(&["update"])?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend_from_slice(&missing);
    run(&args)
}
