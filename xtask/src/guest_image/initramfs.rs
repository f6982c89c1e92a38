//! The initramfs: static busybox, the modules that reach an ext4 root on a
//! virtio disk, and [`scripts::initramfs_init`], as an uncompressed newc
//! cpio (the kernel accepts it as is; a few MB, so compression would save
//! little and add a dependency).
//!
//! Layout: `/init`, `/bin/busybox` with a symlink per applet, `/dev/console` (the kernel opens it
//! before running `/init`, and devtmpfs is not mounted yet), empty `/dev`,
//! `/proc`, `/sys`, `/newroot`, the modules under
//! `/lib/modules/<version>/<path from modules.dep>`, and
//! `/etc/petri-modules` with the load plan.
//!
//! FUTURE: kernels whose modules are compressed (`.ko.xz`, `.ko.zst`) are
//! rejected with a clear error; decompress them here when needed.

use super::host::HostParts;
use super::modules::PlannedModule;
use super::rootfs::FIXED_TIME;
use super::scripts;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use initrd_cpio::Archive;

/// The modules the root disk needs; dependencies come from `modules.dep`.
pub const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

/// Builds the initramfs bytes.
pub fn build(parts: &HostParts, plan: &[PlannedModule]) -> Result<Vec<u8>> {
    let mut a = Archive::new(FIXED_TIME as u32);
    for d in ["bin", "dev", "etc", "newroot", "proc", "sys"] {
        a.dir(d, 0o755)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, scripts::initramfs_init().into_bytes())?;
    let busybox = std::fs::read(&parts.busybox)
        .with_context(|| format!("reading {}", parts.busybox.display()))?;
    a.file("bin/busybox", 0o755, busybox)?;
    for applet in super::host::busybox_applets(&parts.busybox)? {
        a.symlink(&format!("bin/{applet}"), "busybox")?;
    }

    let mut list = String::new();
    for m in plan {
        if !m.rel_path.ends_with(".ko") {
            bail!(
                "kernel module {} is compressed ({}); the initramfs builder only handles \
                 uncompressed .ko files",
                m.name,
                m.rel_path
            );
        }
        let src = parts.modules_dir.join(&m.rel_path);
        let data = std::fs::read(&src).with_context(|| {
            format!(
                "reading kernel module {} (reinstall {})",
                src.display(),
                parts.kernel_package
            )
        })?;
        let dest = format!("lib/modules/{}/{}", parts.kernel_version, m.rel_path);
        a.file(&dest, 0o644, data)?;
        let need = if m.optional { "optional" } else { "required" };
        list.push_str(&format!("{} /{dest} {need}\n", m.name));
    }
    a.file("etc/petri-modules", 0o644, list.into_bytes())?;
    Ok(a.to_bytes())
}
