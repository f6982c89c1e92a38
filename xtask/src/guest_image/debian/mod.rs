//! `cargo xtask guest-test build-image --guest debian`: the Debian 12
//! systemd test guest, a real distribution boot for measuring what lazy
//! fetching costs beyond the small petri test guest.
//!
//! Position in the data flow: like the petri test guest ([`super`]), this
//! runs before any test; its outputs are the local images the known-paths
//! resolver finds and the files a blob server hosts for lazy boots.
//!
//! Recipe:
//! 1. `mmdebstrap --mode=root --variant=minbase
//!    --include=systemd-sysv,udev,linux-image-amd64,initramfs-tools,zstd
//!    bookworm` from the host's own apt sources for bookworm ([`sources`]),
//!    with `SOURCE_DATE_EPOCH` set. A setup hook puts the initramfs root
//!    setting in place before the kernel package runs `update-initramfs`,
//!    so the distribution's own initrd (`MODULES=most`: virtio_pci,
//!    virtio_blk, ext4) finds the root filesystem by UUID.
//! 2. The build adds the readiness unit and its script, `/etc/fstab` and
//!    the host name ([`guest_files`]) and drops `/etc/resolv.conf` (the
//!    host's; the guest has no network).
//! 3. The tree becomes a 2 GiB ext4 image ([`DISK_SIZE_BASE`], rounded to a
//!    VHD1 CHS-exact size) with `mke2fs -d`, fixed UUID, hash seed and
//!    clock; a `debugfs` pass sets every inode's atime, ctime and crtime to
//!    [`rootfs::FIXED_TIME`] and clamps its mtime to it (owners are kept:
//!    they are the packages' own).
//! 4. The raw disk, the same disk as a fixed VHD1 (footer id = first 16
//!    bytes of the raw disk's sha256), the kernel and the initrd from the
//!    guest's `/boot`, and the manifest ([`DebianManifest`]: every file's
//!    size and sha256, every installed package's version, the apt sources)
//!    go into the output directory, the manifest last.
//!
//! Outputs: [`RAW_FILE`], [`VHD_FILE`] (blob-capable), [`KERNEL_FILE`],
//! [`INITRD_FILE`] (local only), [`MANIFEST_FILE`].
//!
//! Up to date means: the manifest exists, its inputs hash (the recipe, the
//! guest files' text, the apt sources, the mmdebstrap and mke2fs versions)
//! equals the current one, and every output has the recorded size. The
//! packages' versions are *not* part of it (knowing them needs the mirror):
//! a guest built last month stays in use until `--force`, which rebuilds it
//! from the packages the mirror has now.
//!
//! Reproducibility: with the same mirror content and the same host, two
//! builds give the same bytes. What is not reproducible:
//! - the packages themselves: the mirror moves (security updates, point
//!   releases), and snapshot.debian.org is not among the sources;
//! - the host: mke2fs 1.47.0 (bookworm) adds each directory's entries in
//!   the staging directory's readdir order, which on the host's ext4
//!   depends on that filesystem's hash seed, so another host may place
//!   inodes and blocks differently (mke2fs 1.47.1 sorts them);
//! - mmdebstrap copies nothing host-specific into the tree that we keep
//!   (`/etc/hostname` and `/etc/resolv.conf` are replaced or dropped).
//!
//! Needs root: mmdebstrap's root mode (chroot, mounts, device nodes) and
//! installing missing packages (`mmdebstrap`, `e2fsprogs`,
//! `debian-archive-keyring`).
//!
//! DEVNOTE: the host's apt proxy settings (`Acquire::http::Proxy` in
//! apt.conf) are not passed on; `http_proxy` in the environment is.

mod guest_files;
mod sources;

use super::BuildOutcome;
use super::ManifestFile;
use super::host;
use super::rootfs;
use super::sha256_file;
use super::sha256_hex;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use serde::Deserialize;
use serde::Serialize;
use std::os::unix::fs::MetadataExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use vmm_test_images::BuiltGuest;
use vmm_test_images::KnownTestArtifacts;

/// The kernel (`/boot/vmlinuz-<version>` of the guest).
pub const KERNEL_FILE: &str = KnownTestArtifacts::Debian12X64Kernel.file_name();
/// The guest's own initramfs (`/boot/initrd.img-<version>`).
pub const INITRD_FILE: &str = KnownTestArtifacts::Debian12X64Initrd.file_name();
/// The root disk, raw ext4.
pub const RAW_FILE: &str = KnownTestArtifacts::Debian12X64Raw.file_name();
/// The root disk as a fixed VHD1.
pub const VHD_FILE: &str = KnownTestArtifacts::Debian12X64Vhd.file_name();
/// The manifest.
pub const MANIFEST_FILE: &str = "petri-debian-12-x64.manifest.json";
/// Version of the manifest format and of the recipe; bump it when the
/// recipe changes in a way the inputs hash does not see.
/// (2: inode times are really the fixed time; debugfs had read them as
/// dates.)
const FORMAT: u32 = 2;
/// The mmdebstrap variant.
pub const VARIANT: &str = "minbase";
/// The packages installed on top of the variant.
pub const INCLUDE: [&str; 5] = [
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "initramfs-tools",
    // initramfs-tools compresses with zstd by default; without it, it
    // falls back to gzip with a warning.
    "zstd",
];
/// Filesystem UUID of the root disk (also how the guest finds it).
pub const FS_UUID: &str = "7e57a11e-9e57-4b00-8000-0000deb1a000";
/// Directory hash seed of the root disk.
const HASH_SEED: &str = "5eed5eed-0000-4000-8000-00000000deb1";
/// The root filesystem's label.
const LABEL: &str = "debian-root";
/// The root disk's size before rounding to a CHS-exact size: 2 GiB.
pub const DISK_SIZE_BASE: u64 = 2 << 30;

/// Debian packages the build needs, with a file that proves each is there.
const BUILD_PACKAGES: &[(&str, &str)] = &[
    ("mmdebstrap", "/usr/bin/mmdebstrap"),
    ("e2fsprogs", "/sbin/mke2fs"),
    ("e2fsprogs", "/sbin/debugfs"),
    ("debian-archive-keyring", sources::DEBIAN_KEYRING),
];

/// The root disk's size.
pub fn disk_size() -> u64 {
    rootfs::chs_exact_size(DISK_SIZE_BASE)
}

/// The manifest written beside the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebianManifest {
    /// [`FORMAT`] of the builder that wrote it.
    pub format: u32,
    /// Hash of every input (recipe, guest files, sources, tool versions).
    pub inputs_sha256: String,
    /// The Debian suite.
    pub suite: String,
    /// The mmdebstrap variant.
    pub variant: String,
    /// The packages asked for on top of the variant.
    pub include: Vec<String>,
    /// The apt sources the guest was built from (deb822).
    pub apt_sources: String,
    /// `mmdebstrap --version`.
    pub mmdebstrap_version: String,
    /// `mke2fs -V` first line.
    pub mke2fs_version: String,
    /// The guest's kernel release.
    pub kernel_version: String,
    /// Every installed package, `name version`, sorted.
    pub packages: Vec<String>,
    /// Size of the root disk (raw file; the VHD's current size).
    pub disk_size: u64,
    /// The ext4 filesystem UUID.
    pub fs_uuid: String,
    /// The VHD footer's unique id, lowercase hex (the VHD's cache key).
    pub vhd_unique_id: String,
    /// The output files.
    pub files: Vec<ManifestFile>,
}

/// Builds the Debian guest into `out_dir`, unless it is up to date (or
/// `force`).
pub fn build(out_dir: &Path, force: bool) -> Result<(DebianManifest, BuildOutcome)> {
    host::ensure_packages(
        &host::missing_packages(BUILD_PACKAGES),
        "building the Debian test guest",
    )?;
    if !host::is_root() {
        bail!(
            "building the Debian test guest runs mmdebstrap in root mode (chroot, mounts, \
             device nodes); run `{}` as root",
            BuiltGuest::Debian12.build_command()
        );
    }
    let apt_sources = match sources::guest_sources(&sources::host_source_files()) {
        Some(s) => s,
        None => {
            println!(
                "guest-image: the host's apt sources have no {} entry; using deb.debian.org",
                sources::SUITE
            );
            sources::default_sources()
        }
    };
    let mmdebstrap_version = host::output("mmdebstrap", &["--version"])
        .context("asking mmdebstrap for its version")?
        .trim()
        .to_owned();
    let mke2fs_version = host::mke2fs_version()?;
    let inputs = inputs_hash(&apt_sources, &mmdebstrap_version, &mke2fs_version);
    if !force && let Some(m) = up_to_date(out_dir, &inputs) {
        return Ok((m, BuildOutcome::UpToDate));
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("creating the output directory {}", out_dir.display()))?;
    let work = out_dir.join(format!(".petri-debian-build-{}", std::process::id()));
    if work.exists() {
        remove_work_dir(&work)?;
    }
    std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let versions = Versions {
        apt_sources,
        mmdebstrap_version,
        mke2fs_version,
        inputs_sha256: inputs,
    };
    let result = build_in(&work, out_dir, versions);
    let cleanup = remove_work_dir(&work);
    let manifest = result?;
    cleanup?;
    Ok((manifest, BuildOutcome::Built))
}

/// What the build records besides its outputs.
struct Versions {
    apt_sources: String,
    mmdebstrap_version: String,
    mke2fs_version: String,
    inputs_sha256: String,
}

/// The hash of everything the outputs are made from, as far as it can be
/// known without the mirror.
fn inputs_hash(apt_sources: &str, mmdebstrap_version: &str, mke2fs_version: &str) -> String {
    let mut desc = format!(
        "format={FORMAT}\nsuite={}\nvariant={VARIANT}\ninclude={}\ndisk_size={}\n\
         fixed_time={}\nfs_uuid={FS_UUID}\nhash_seed={HASH_SEED}\nlabel={LABEL}\n\
         mmdebstrap={mmdebstrap_version}\nmke2fs={mke2fs_version}\n",
        sources::SUITE,
        INCLUDE.join(","),
        disk_size(),
        rootfs::FIXED_TIME,
    );
    for (name, text) in [
        ("apt_sources", apt_sources.to_owned()),
        ("ready_unit", guest_files::ready_unit()),
        ("ready_script", guest_files::ready_script()),
        ("fstab", guest_files::fstab()),
        ("initramfs_root", guest_files::initramfs_root_conf()),
        ("hostname", guest_files::hostname()),
        ("mke2fs_conf", rootfs::MKE2FS_CONF.to_owned()),
    ] {
        desc.push_str(&format!("{name}={}\n", sha256_hex(text.as_bytes())));
    }
    sha256_hex(desc.as_bytes())
}

/// The manifest in `out_dir` if it describes up-to-date outputs for
/// `inputs`.
fn up_to_date(out_dir: &Path, inputs: &str) -> Option<DebianManifest> {
    super::current_manifest(out_dir, MANIFEST_FILE, FORMAT, inputs)
}

impl super::BuiltManifest for DebianManifest {
    fn built(&self) -> (u32, &str, &[ManifestFile]) {
        (self.format, &self.inputs_sha256, &self.files)
    }
}

/// `'...'` quoting for a shell word.
fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

fn build_in(work: &Path, out_dir: &Path, v: Versions) -> Result<DebianManifest> {
    let tree = work.join("rootfs");
    let sources_file = work.join("apt.sources");
    std::fs::write(&sources_file, &v.apt_sources)
        .with_context(|| format!("writing {}", sources_file.display()))?;
    let root_conf = work.join("initramfs-root.conf");
    std::fs::write(&root_conf, guest_files::initramfs_root_conf())
        .with_context(|| format!("writing {}", root_conf.display()))?;

    run_mmdebstrap(work, &tree, &sources_file, &root_conf)?;
    customize(&tree)?;

    // The kernel and the initrd update-initramfs made for it.
    let (kernel_version, kernel, initrd) = find_boot_files(&tree)?;
    std::fs::copy(&kernel, work.join(KERNEL_FILE))
        .with_context(|| format!("copying {}", kernel.display()))?;
    std::fs::copy(&initrd, work.join(INITRD_FILE))
        .with_context(|| format!("copying {}", initrd.display()))?;
    let packages = installed_packages(&tree)?;

    // The root disk.
    let raw = work.join(RAW_FILE);
    let conf = work.join("mke2fs.conf");
    let size = disk_size();
    println!("guest-image: making the {size}-byte ext4 root disk (mke2fs -d)");
    rootfs::make_ext4(
        &raw,
        &tree,
        &conf,
        &rootfs::Ext4Spec {
            label: LABEL,
            uuid: FS_UUID,
            hash_seed: HASH_SEED,
            size,
        },
    )?;
    let mut cmds = String::new();
    for (path, mtime) in tree_times(&tree)? {
        cmds.push_str(&rootfs::sif_commands(
            &path,
            &[
                ("atime", rootfs::FIXED_TIME),
                ("mtime", mtime.min(rootfs::FIXED_TIME)),
                ("ctime", rootfs::FIXED_TIME),
                ("crtime", rootfs::FIXED_TIME),
                ("atime_extra", 0),
                ("mtime_extra", 0),
                ("ctime_extra", 0),
                ("crtime_extra", 0),
            ],
        )?);
    }
    cmds.push_str(&rootfs::sif_commands(
        "/lost+found",
        &[
            ("atime", rootfs::FIXED_TIME),
            ("mtime", rootfs::FIXED_TIME),
            ("ctime", rootfs::FIXED_TIME),
            ("crtime", rootfs::FIXED_TIME),
        ],
    )?);
    rootfs::debugfs_then_check(&raw, &cmds, &work.join("debugfs.cmds"), &conf)?;
    // The tree is as large as the guest; drop it early.
    remove_work_dir(&tree)?;

    let (raw_sha, vhd_sha, unique_id) = super::write_vhd(&raw, &work.join(VHD_FILE), size)?;
    let file = |role: &str, name: &str| -> Result<ManifestFile> {
        let (size, sha256) = sha256_file(&work.join(name))?;
        Ok(ManifestFile {
            role: role.into(),
            name: name.into(),
            size,
            sha256,
        })
    };
    let mut files = vec![file("kernel", KERNEL_FILE)?, file("initrd", INITRD_FILE)?];
    files.extend(super::disk_files(
        RAW_FILE, VHD_FILE, size, raw_sha, vhd_sha,
    ));
    let manifest = DebianManifest {
        format: FORMAT,
        inputs_sha256: v.inputs_sha256,
        suite: sources::SUITE.into(),
        variant: VARIANT.into(),
        include: INCLUDE.iter().map(|p| p.to_string()).collect(),
        apt_sources: v.apt_sources,
        mmdebstrap_version: v.mmdebstrap_version,
        mke2fs_version: v.mke2fs_version,
        kernel_version,
        packages,
        disk_size: size,
        fs_uuid: FS_UUID.into(),
        vhd_unique_id: super::hex(&unique_id),
        files,
    };
    let json = serde_json::to_string_pretty(&manifest).context("encoding the manifest")?;
    super::install_outputs(work, out_dir, &manifest.files, MANIFEST_FILE, &json)?;
    Ok(manifest)
}

/// Runs mmdebstrap into `tree`; its output goes to `mmdebstrap.log` in
/// `work`, whose tail is the error when it fails.
fn run_mmdebstrap(work: &Path, tree: &Path, sources_file: &Path, root_conf: &Path) -> Result<()> {
    let log_path = work.join("mmdebstrap.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .with_context(|| format!("opening {}", log_path.display()))?;
    let hook = format!(
        "mkdir -p \"$1/etc/initramfs-tools/conf.d\" && cp {} \"$1/{}\"",
        sh_quote(root_conf),
        guest_files::INITRAMFS_ROOT_CONF
    );
    println!(
        "guest-image: mmdebstrap --variant={VARIANT} --include={} {} (about a minute; log in {})",
        INCLUDE.join(","),
        sources::SUITE,
        log_path.display()
    );
    let started = std::time::Instant::now();
    let status = Command::new("mmdebstrap")
        .arg("--mode=root")
        .arg(format!("--variant={VARIANT}"))
        .arg(format!("--include={}", INCLUDE.join(",")))
        .arg(format!("--setup-hook={hook}"))
        .arg(sources::SUITE)
        .arg(tree)
        .arg(sources_file)
        .env("SOURCE_DATE_EPOCH", rootfs::FIXED_TIME.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .status()
        .context("running mmdebstrap (install the mmdebstrap package)")?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "mmdebstrap failed ({status}); check the apt sources and the network; its output \
             ends with:\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    println!(
        "guest-image: mmdebstrap done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_file(tree: &Path, rel: &str, text: &str, mode: u32) -> Result<()> {
    let path = tree.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // Replace, never write through, whatever is there (a symlink, say).
    let _ = std::fs::remove_file(&path);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// Adds the guest's own files to the tree.
fn customize(tree: &Path) -> Result<()> {
    write_file(tree, "etc/hostname", &guest_files::hostname(), 0o644)?;
    write_file(tree, "etc/fstab", &guest_files::fstab(), 0o644)?;
    write_file(
        tree,
        guest_files::READY_UNIT_PATH,
        &guest_files::ready_unit(),
        0o644,
    )?;
    write_file(
        tree,
        guest_files::READY_SCRIPT,
        &guest_files::ready_script(),
        0o755,
    )?;
    let link = tree.join(guest_files::READY_UNIT_WANTS_LINK);
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("/{}", guest_files::READY_UNIT_PATH), &link)
        .with_context(|| format!("creating the symlink {}", link.display()))?;
    // The host's resolver configuration; the guest has no network.
    let resolv = tree.join("etc/resolv.conf");
    match std::fs::remove_file(&resolv) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", resolv.display())),
    }
}

/// The kernel release, kernel and initrd in the tree's `/boot` (exactly
/// one kernel).
fn find_boot_files(tree: &Path) -> Result<(String, PathBuf, PathBuf)> {
    let boot = tree.join("boot");
    let mut versions: Vec<String> = std::fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .collect();
    versions.sort();
    let [version] = versions.as_slice() else {
        bail!(
            "expected exactly one kernel in {}, found {versions:?}",
            boot.display()
        );
    };
    let kernel = boot.join(format!("vmlinuz-{version}"));
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        bail!(
            "{} is missing: update-initramfs did not run for kernel {version} (see the \
             mmdebstrap log)",
            initrd.display()
        );
    }
    Ok((version.clone(), kernel, initrd))
}

/// `name version` of every package installed in the tree, sorted.
fn installed_packages(tree: &Path) -> Result<Vec<String>> {
    let admindir = tree.join("var/lib/dpkg");
    let admindir_arg = format!("--admindir={}", admindir.display());
    let text = host::output(
        "dpkg-query",
        &[&admindir_arg, "-W", "-f=${Package} ${Version}\\n"],
    )
    .context("listing the guest's packages")?;
    let mut packages: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    packages.sort();
    Ok(packages)
}

/// Every path in `tree` (as the guest sees it, `/` first, sorted) with its
/// mtime. Symlinks are not followed.
fn tree_times(tree: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![(tree.to_owned(), "/".to_owned())];
    while let Some((dir, guest)) = stack.pop() {
        let meta = std::fs::symlink_metadata(&dir)
            .with_context(|| format!("reading {}", dir.display()))?;
        out.push((guest.clone(), u64::try_from(meta.mtime()).unwrap_or(0)));
        if !meta.is_dir() {
            continue;
        }
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", dir.display()))?;
        children.sort();
        for name in children.into_iter().rev() {
            let name_str = name.to_string_lossy();
            let child = if guest == "/" {
                format!("/{name_str}")
            } else {
                format!("{guest}/{name_str}")
            };
            stack.push((dir.join(&name), child));
        }
    }
    Ok(out)
}

/// The mount points at or under `dir` (from `/proc/self/mounts`).
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    text.lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // Spaces and other characters are octal escapes in this file.
        .map(|m| PathBuf::from(m.replace("\\040", " ").replace("\\011", "\t")))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

/// Removes a work directory, unless something is mounted under it (a
/// crashed mmdebstrap may leave /proc or /sys mounted in the tree, and
/// deleting through those would touch the host).
fn remove_work_dir(dir: &Path) -> Result<()> {
    refuse_mounts(dir, &mounts_under(dir))?;
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

/// An error naming `mounts` (mount points under `dir`), if any.
fn refuse_mounts(dir: &Path, mounts: &[PathBuf]) -> Result<()> {
    if !mounts.is_empty() {
        bail!(
            "not removing {}: something is still mounted under it ({}); unmount it \
             (umount -R) and remove the folder",
            dir.display(),
            mounts
                .iter()
                .map(|m| m.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The smoke boot of `--smoke-boot --guest debian`: one boot under QEMU
/// (TCG, `-smp 2 -m 1024`) from the raw disk to the readiness unit and
/// power-off, reporting how long it took and how much of the disk the
/// guest read.
pub fn smoke(out_dir: &Path, work_dir: &Path, timeout: Duration) -> Result<()> {
    let disk = out_dir.join(RAW_FILE);
    println!("guest-image: smoke boot of the Debian guest under QEMU TCG ...");
    let r = super::smoke::boot(&super::smoke::BootSpec {
        kernel: &out_dir.join(KERNEL_FILE),
        initrd: &out_dir.join(INITRD_FILE),
        disk: super::smoke::BootDisk::RawFile(&disk),
        steps: "",
        work_dir,
        timeout,
        memory_mib: BuiltGuest::Debian12.boot_memory_mib(),
        processors: BuiltGuest::Debian12.boot_processors(),
    })
    .with_context(|| format!("smoke boot; console log in {}", work_dir.display()))?;
    if r.status != 0 {
        bail!(
            "smoke boot: the guest reported status {} (failed units: {})",
            r.status,
            r.console
                .lines()
                .filter_map(|l| l.split_once("PETRI_FAILED_UNIT ").map(|(_, u)| u))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "guest-image: debian: ready after {:.1} s (guest uptime {} s), powered off after \
         {:.1} s, read {} bytes ({:.2}% of the disk) in {} requests",
        r.to_ready.as_secs_f64(),
        r.guest_uptime_at_ready,
        r.to_done.as_secs_f64(),
        r.rd_bytes,
        100.0 * r.rd_bytes as f64 / disk_size() as f64,
        r.rd_operations,
    );
    Ok(())
}

#[cfg(test)]
mod tests;
