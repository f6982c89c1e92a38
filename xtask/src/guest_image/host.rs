//! The host side of the build: which Debian packages provide the guest's
//! parts, installing them when missing, and finding the installed files.
//!
//! The kernel is the one the `linux-image-amd64` metapackage depends on
//! (`linux-image-<version>`), so several installed kernels never make the
//! choice depend on directory order. Its image is `/boot/vmlinuz-<version>`
//! and its modules live in `/lib/modules/<version>`.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

/// Debian packages the build needs, with a file that proves each is there.
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("linux-image-amd64", "/usr/share/doc/linux-image-amd64"),
    ("busybox-static", "/usr/share/doc/busybox-static"),
    ("e2fsprogs", "/sbin/mke2fs"),
    ("e2fsprogs", "/sbin/debugfs"),
];

/// The Debian package that provides QEMU for the smoke boot.
pub const QEMU_PACKAGE: &str = "qemu-system-x86";
/// The QEMU binary the smoke boot runs.
pub const QEMU_BINARY: &str = "/usr/bin/qemu-system-x86_64";

/// Installed parts the guest is made of.
#[derive(Debug, Clone)]
pub struct HostParts {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_version: String,
    /// `package version` of the kernel package, for the manifest.
    pub kernel_package: String,
    /// `/boot/vmlinuz-<version>`.
    pub kernel_image: PathBuf,
    /// `/lib/modules/<version>`.
    pub modules_dir: PathBuf,
    /// The static busybox binary.
    pub busybox: PathBuf,
    /// `package version` of busybox-static.
    pub busybox_package: String,
    /// First line of `mke2fs -V`.
    pub mke2fs_version: String,
}

pub use crate::setup::is_root;

/// The packages among `wanted` (package, proof file) whose proof is missing.
pub fn missing_packages<'a>(wanted: &[(&'a str, &str)]) -> Vec<&'a str> {
    let mut out: Vec<&str> = wanted
        .iter()
        .filter(|(_, proof)| !Path::new(proof).exists())
        .map(|(p, _)| *p)
        .collect();
    out.dedup();
    out
}

/// The build packages that are not installed.
pub fn missing_build_packages() -> Vec<&'static str> {
    missing_packages(BUILD_PACKAGES)
}

/// Installs `packages` with apt-get when any is missing (as root), or fails
/// with the command to run.
pub fn ensure_packages(packages: &[&str], why: &str) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{why} needs the Debian packages {list}, which are not installed; run this command \
             as root to install them, or install them first: sudo apt-get install -y \
             --no-install-recommends {list}",
            list = packages.join(" ")
        );
    }
    crate::setup::apt_install(packages)
}

/// Runs `program args` and returns its standard output, failing with the
/// command line and its standard error when it fails.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("{program} {} printed non-UTF-8 output", args.join(" ")))
}

/// `package version` of an installed Debian package.
fn package_version(package: &str) -> Result<String> {
    let v = output("dpkg-query", &["-W", "-f=${Version}", package])
        .with_context(|| format!("asking dpkg for the version of {package}"))?;
    Ok(format!("{package} {}", v.trim()))
}

/// Finds the installed parts (the packages must be installed).
pub fn find_parts() -> Result<HostParts> {
    let depends = output("dpkg-query", &["-W", "-f=${Depends}", "linux-image-amd64"])
        .context("reading the dependencies of linux-image-amd64")?;
    let kernel_pkg = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-") && d != &"linux-image-amd64")
        .with_context(|| {
            format!("linux-image-amd64 depends on no linux-image-<version> package: {depends:?}")
        })?
        .to_string();
    let kernel_version = kernel_pkg
        .strip_prefix("linux-image-")
        .unwrap_or(&kernel_pkg)
        .trim_end_matches("-unsigned")
        .to_string();
    let kernel_image = PathBuf::from(format!("/boot/vmlinuz-{kernel_version}"));
    let modules_dir = PathBuf::from(format!("/lib/modules/{kernel_version}"));
    for p in [&kernel_image, &modules_dir] {
        if !p.exists() {
            bail!(
                "{} is missing although {kernel_pkg} is the current kernel package; reinstall \
                 it: apt-get install --reinstall {kernel_pkg}",
                p.display()
            );
        }
    }
    let busybox = PathBuf::from("/bin/busybox");
    let file = output("dpkg-query", &["-S", "/bin/busybox"])
        .context("asking dpkg which package owns /bin/busybox (install busybox-static)")?;
    if !file.starts_with("busybox-static:") {
        bail!(
            "/bin/busybox does not come from busybox-static (dpkg says {:?}); the guest needs \
             the static build: apt-get install busybox-static",
            file.trim()
        );
    }
    let mke2fs_version = mke2fs_version()?;
    Ok(HostParts {
        kernel_package: package_version(&kernel_pkg)?,
        kernel_version,
        kernel_image,
        modules_dir,
        busybox,
        busybox_package: package_version("busybox-static")?,
        mke2fs_version,
    })
}

/// The first line of `mke2fs -V` (which prints to standard error).
pub fn mke2fs_version() -> Result<String> {
    let version = Command::new("mke2fs")
        .arg("-V")
        .output()
        .context("running mke2fs -V (install e2fsprogs)")?;
    Ok(String::from_utf8_lossy(&version.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The applet names of a busybox binary (sorted, without `busybox`), from
/// its own `--list`.
pub fn busybox_applets(busybox: &Path) -> Result<Vec<String>> {
    let list = output(&busybox.to_string_lossy(), &["--list"])
        .with_context(|| format!("listing the applets of {}", busybox.display()))?;
    let mut applets: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort_unstable();
    applets.dedup();
    if !applets.iter().any(|a| a == "sh") {
        bail!("{} has no sh applet; is it busybox?", busybox.display());
    }
    Ok(applets)
}
