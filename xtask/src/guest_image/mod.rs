//! `cargo xtask guest-test build-image [--guest petri|debian|all]`: builds
//! the test guests that the QEMU backend and the vmm_tests boot, from
//! Debian packages. `--guest petri` (the default) is the small Linux test
//! guest described here; `--guest debian` is the Debian 12 systemd guest
//! ([`debian`]), a real distribution boot; `--guest all` builds both.
//!
//! Position in the data flow: this runs before any test. Its outputs are
//! the local images that the known-paths resolver finds in
//! `VMM_TEST_IMAGES` (or `images/`), and the files a blob server (nginx,
//! the embedded server) hosts so that tests can open the disk lazily.
//!
//! Outputs (in `--out-dir`, default `$VMM_TEST_IMAGES`, else
//! `<workspace>/images`):
//! - [`KERNEL_FILE`]: the Debian kernel (`/boot/vmlinuz-<version>` of the
//!   kernel `linux-image-amd64` depends on), copied as is.
//! - [`INITRD_FILE`]: an uncompressed newc cpio with static busybox and
//!   the virtio/ext4 modules; its `/init` mounts the root disk (`/dev/vda`)
//!   and `switch_root`s into it (see [`initramfs`], [`scripts`]).
//! - [`RAW_FILE`]: the ext4 root disk; its `/init` prints
//!   `PETRI_GUEST_READY`, runs the steps named by `petri.steps=` on the
//!   kernel command line, prints `PETRI_GUEST_DONE status=<n>` and powers
//!   off (protocol in [`scripts`]). `/data` holds `--data-mib` MiB of
//!   reproducible data files and their `SHA256SUMS` (see [`rootfs`]).
//! - [`VHD_FILE`]: the same disk as a fixed VHD1 (raw bytes plus a 512-byte
//!   footer whose unique id is the first 16 bytes of the raw disk's
//!   sha256, so the id, which is the read-cache key of a VHD, changes
//!   exactly when the content does).
//! - [`MANIFEST_FILE`]: JSON with each file's name, size and sha256, the
//!   package versions used and the hash of all inputs.
//! - `<disk>.prefetch` beside each root disk (raw and VHD), unless
//!   `--no-prefetch-lists`: the disk's prefetch list, recorded by booting
//!   the guest once through the real lazy stack ([`prefetch`]); a store
//!   hosting this folder serves it, so a cold lazy boot fetches what the
//!   boot reads ahead of the guest. Not byte-reproducible (it records
//!   timings), and the raw disk's list names this store's validator.
//!
//! Invariants:
//! - Deterministic: the same packages, e2fsprogs version and `--data-mib`
//!   give the same bytes in every file, whatever the output directory, the
//!   clock or the user (see [`rootfs`] for how the ext4 image is pinned).
//!   The manifest holds no timestamps, so it is reproducible too.
//! - Up to date means: the manifest exists, its inputs hash equals the
//!   current one, and every output has the recorded size; then nothing is
//!   rebuilt unless `--force`.
//! - Outputs are built in a private work directory beside them and renamed
//!   into place, the manifest last, so a crash never leaves a manifest that
//!   describes half-written files.
//!
//! Needs root only to install missing packages (`linux-image-amd64`,
//! `busybox-static`, `e2fsprogs`; `qemu-system-x86` for `--smoke-boot`);
//! with them installed, any user can build.
//!
//! DEVNOTE: two builds into the same directory at the same time each write
//! their own work directory and rename complete files into place; the last
//! one wins, and both produce the same bytes anyway.

pub mod debian;
mod host;
mod initramfs;
mod modules;
pub mod prefetch;
mod rootfs;
mod scripts;
mod smoke;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use vmm_test_images::BuiltGuest;

/// The kernel image.
pub const KERNEL_FILE: &str = "petri-test-guest-x64.vmlinuz";
/// The initramfs (uncompressed newc cpio).
pub const INITRD_FILE: &str = "petri-test-guest-x64.initrd";
/// The root disk, raw ext4.
pub const RAW_FILE: &str = "petri-test-guest-x64.raw";
/// The root disk as a fixed VHD1.
pub const VHD_FILE: &str = "petri-test-guest-x64.vhd";
/// The manifest.
pub const MANIFEST_FILE: &str = "petri-test-guest-x64.manifest.json";
/// Version of the manifest format and of the build recipe; bump it when the
/// recipe changes in a way the inputs hash does not see.
/// (3: inode times are really the fixed time; debugfs had read them as
/// dates.)
const FORMAT: u32 = 3;
/// Default `--data-mib`.
pub const DEFAULT_DATA_MIB: u64 = 256;

/// Which built test guests a command works on (`--guest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GuestChoice {
    /// The small petri test guest (busybox; boots in seconds).
    Petri,
    /// The Debian 12 systemd guest (2 GiB disk; a real distribution boot).
    Debian,
    /// Both.
    All,
}

impl GuestChoice {
    /// The guests selected, in catalog order.
    pub fn guests(self) -> Vec<BuiltGuest> {
        match self {
            GuestChoice::Petri => vec![BuiltGuest::PetriTestGuest],
            GuestChoice::Debian => vec![BuiltGuest::Debian12],
            GuestChoice::All => BuiltGuest::ALL.to_vec(),
        }
    }
}

/// Options for `cargo xtask guest-test build-image`.
#[derive(clap::Args)]
pub struct BuildImageArgs {
    /// Output directory [default: $VMM_TEST_IMAGES, else images/ in the workspace].
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Which guest to build: the small petri test guest, the Debian 12
    /// systemd guest (needs root: mmdebstrap), or both.
    #[arg(long, value_enum, default_value_t = GuestChoice::Petri)]
    guest: GuestChoice,
    /// MiB of reproducible data files on the petri test guest's root disk
    /// (the guest's working set for tests that read a lot).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DATA_MIB,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    data_mib: u64,
    /// Rebuild even when the outputs are up to date.
    #[arg(long)]
    force: bool,
    /// After building, boot each guest under QEMU (TCG): the petri test
    /// guest twice (boot only, then hash-data and write-scratch), the
    /// Debian guest once; check the markers and print the boot time and
    /// the bytes read from the disk.
    #[arg(long)]
    smoke_boot: bool,
    /// Timeout of each smoke boot, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    smoke_timeout: u64,
    /// Do not record the prefetch lists (`<disk>.prefetch`, one boot of
    /// each streamed root disk through `petri-tool disk serve-nbd`).
    #[arg(long)]
    no_prefetch_lists: bool,
}

/// One output file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// `kernel`, `initrd`, `disk-raw` or `disk-vhd`.
    pub role: String,
    /// File name inside the output directory.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
}

/// The manifest written beside the outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`] of the builder that wrote it.
    pub format: u32,
    /// Hash of every input (packages' files, scripts, options).
    pub inputs_sha256: String,
    /// Kernel release.
    pub kernel_version: String,
    /// Kernel package and version.
    pub kernel_package: String,
    /// busybox-static package and version.
    pub busybox_package: String,
    /// `mke2fs -V` first line.
    pub mke2fs_version: String,
    /// MiB of data files.
    pub data_mib: u64,
    /// Size of the root disk (raw file; the VHD's current size).
    pub disk_size: u64,
    /// The ext4 filesystem UUID.
    pub fs_uuid: String,
    /// The VHD footer's unique id, lowercase hex (the VHD's cache key).
    pub vhd_unique_id: String,
    /// The modules the initramfs loads, in order (`?` marks optional ones).
    pub modules: Vec<String>,
    /// The output files.
    pub files: Vec<ManifestFile>,
}

#[cfg(test)]
impl Manifest {
    /// The entry for `role`.
    pub fn file(&self, role: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.role == role)
    }
}

/// Options of [`build`].
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Output directory.
    pub out_dir: PathBuf,
    /// MiB of data files.
    pub data_mib: u64,
    /// Rebuild even when up to date.
    pub force: bool,
}

/// Whether [`build`] did any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// The outputs were built.
    Built,
    /// The outputs were up to date; nothing was written.
    UpToDate,
}

/// Runs the command.
pub fn run(root: &Path, args: BuildImageArgs) -> Result<()> {
    let out_dir = args
        .out_dir
        .clone()
        .or_else(|| std::env::var_os("VMM_TEST_IMAGES").map(PathBuf::from))
        .unwrap_or_else(|| root.join("images"));
    let guests = args.guest.guests();
    if args.smoke_boot || !args.no_prefetch_lists {
        host::ensure_packages(
            if Path::new(host::QEMU_BINARY).exists() {
                &[]
            } else {
                &[host::QEMU_PACKAGE]
            },
            "the smoke boot and the prefetch lists",
        )?;
    }
    let target = crate::target_dir(root);
    for guest in guests {
        let started = std::time::Instant::now();
        let outcome = match guest {
            BuiltGuest::PetriTestGuest => {
                let (manifest, outcome) = build(&BuildOptions {
                    out_dir: out_dir.clone(),
                    data_mib: args.data_mib,
                    force: args.force,
                })?;
                println!(
                    "guest-image: petri test guest: kernel {} ({}), {} MiB of data, modules: {}",
                    manifest.kernel_version,
                    manifest.kernel_package,
                    manifest.data_mib,
                    manifest.modules.join(" ")
                );
                print_files(&manifest.files);
                outcome
            }
            BuiltGuest::Debian12 => {
                let (manifest, outcome) = debian::build(&out_dir, args.force)?;
                println!(
                    "guest-image: Debian guest: {} {}, kernel {}, {} packages, {} \
                     (apt sources: {})",
                    manifest.suite,
                    manifest.variant,
                    manifest.kernel_version,
                    manifest.packages.len(),
                    manifest.mmdebstrap_version,
                    manifest
                        .apt_sources
                        .lines()
                        .filter_map(|l| l.strip_prefix("URIs: "))
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                print_files(&manifest.files);
                outcome
            }
        };
        match outcome {
            BuildOutcome::Built => println!(
                "guest-image: {guest} built in {:.1} s into {}",
                started.elapsed().as_secs_f64(),
                out_dir.display()
            ),
            BuildOutcome::UpToDate => println!(
                "guest-image: {guest} in {} is up to date (use --force to rebuild)",
                out_dir.display()
            ),
        }
        if !args.no_prefetch_lists {
            let written = prefetch::ensure_lists(root, &out_dir, guest)?;
            if written == 0 {
                println!("guest-image: {guest}: prefetch lists up to date");
            }
        }
        if args.smoke_boot {
            let timeout = Duration::from_secs(args.smoke_timeout);
            let work = target.join("guest-image-smoke").join(guest.cli_name());
            match guest {
                BuiltGuest::PetriTestGuest => {
                    smoke::run(&out_dir, &work, timeout)?;
                }
                BuiltGuest::Debian12 => debian::smoke(&out_dir, &work, timeout)?,
            }
            println!(
                "guest-image: smoke boot passed; console logs in {}",
                work.display()
            );
        }
    }
    Ok(())
}

/// What [`build_guest`] produced.
pub struct BuiltImages {
    /// Whether the images were built or found up to date.
    pub outcome: BuildOutcome,
    /// The guest's kernel release.
    pub kernel_version: String,
    /// Prefetch lists written (0 when they were up to date or not asked
    /// for).
    pub lists_written: usize,
}

/// Builds `guest` into `out_dir` (or finds it up to date) and, with
/// `prefetch_lists`, records its missing or stale prefetch lists: what
/// `build-image`, the main job and `cargo xtask test` each do before they
/// use a guest.
pub fn build_guest(
    root: &Path,
    out_dir: &Path,
    guest: BuiltGuest,
    data_mib: u64,
    force: bool,
    prefetch_lists: bool,
) -> Result<BuiltImages> {
    let (outcome, kernel_version) = match guest {
        BuiltGuest::PetriTestGuest => {
            let (m, outcome) = build(&BuildOptions {
                out_dir: out_dir.to_owned(),
                data_mib,
                force,
            })
            .context("building the petri test guest")?;
            (outcome, m.kernel_version)
        }
        BuiltGuest::Debian12 => {
            let (m, outcome) =
                debian::build(out_dir, force).context("building the Debian test guest")?;
            (outcome, m.kernel_version)
        }
    };
    let lists_written = if prefetch_lists {
        prefetch::ensure_lists(root, out_dir, guest)
            .with_context(|| format!("recording the prefetch lists of {guest}"))?
    } else {
        0
    };
    Ok(BuiltImages {
        outcome,
        kernel_version,
        lists_written,
    })
}

fn print_files(files: &[ManifestFile]) {
    for f in files {
        println!("  {:<34} {:>12} bytes  sha256 {}", f.name, f.size, f.sha256);
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex sha256 of `data`.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

/// The size and sha256 of a file.
fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// The hash of everything the outputs are made from.
fn inputs_hash(
    parts: &host::HostParts,
    plan: &[modules::PlannedModule],
    data_mib: u64,
) -> Result<String> {
    let mut desc = format!(
        "format={FORMAT}\ndata_mib={data_mib}\ndisk_size={}\nmke2fs={}\nkernel={}\nbusybox={}\n",
        rootfs::disk_size(data_mib),
        parts.mke2fs_version,
        sha256_file(&parts.kernel_image)?.1,
        sha256_file(&parts.busybox)?.1,
    );
    for m in plan {
        desc.push_str(&format!(
            "module={} {} {}\n",
            m.rel_path,
            m.optional,
            sha256_file(&parts.modules_dir.join(&m.rel_path))?.1
        ));
    }
    for (name, text) in [
        ("initramfs_init", scripts::initramfs_init()),
        ("root_init", scripts::root_init()),
        ("mke2fs_conf", rootfs::MKE2FS_CONF.to_string()),
    ] {
        desc.push_str(&format!("{name}={}\n", sha256_hex(text.as_bytes())));
    }
    Ok(sha256_hex(desc.as_bytes()))
}

/// The manifest in `out_dir` if it describes up-to-date outputs for
/// `inputs`.
fn up_to_date(out_dir: &Path, inputs: &str) -> Option<Manifest> {
    current_manifest(out_dir, MANIFEST_FILE, FORMAT, inputs)
}

/// What the up-to-date check reads of a guest's manifest: the format
/// version of the builder that wrote it, the hash of its inputs, and the
/// files it describes.
trait BuiltManifest: serde::de::DeserializeOwned {
    fn built(&self) -> (u32, &str, &[ManifestFile]);
}

impl BuiltManifest for Manifest {
    fn built(&self) -> (u32, &str, &[ManifestFile]) {
        (self.format, &self.inputs_sha256, &self.files)
    }
}

/// The manifest `name` in `out_dir` if it parses, was written by a
/// builder of `format` from `inputs`, and every file it lists is in
/// `out_dir` with its recorded size: the one rule of both guests' "already
/// built" check.
fn current_manifest<M: BuiltManifest>(
    out_dir: &Path,
    name: &str,
    format: u32,
    inputs: &str,
) -> Option<M> {
    let text = std::fs::read_to_string(out_dir.join(name)).ok()?;
    let m: M = serde_json::from_str(&text).ok()?;
    let (built_format, built_inputs, files) = m.built();
    let files_present = files.iter().all(|f| {
        std::fs::metadata(out_dir.join(&f.name)).is_ok_and(|md| md.is_file() && md.len() == f.size)
    });
    (built_format == format && built_inputs == inputs && files_present).then_some(m)
}

/// Moves the built `files` from `work` into `out_dir`, then writes the
/// manifest (`json`) as `manifest_name`, last, so a manifest never
/// describes half-installed files.
fn install_outputs(
    work: &Path,
    out_dir: &Path,
    files: &[ManifestFile],
    manifest_name: &str,
    json: &str,
) -> Result<()> {
    for f in files {
        let dest = out_dir.join(&f.name);
        std::fs::rename(work.join(&f.name), &dest)
            .with_context(|| format!("moving {} into place", dest.display()))?;
    }
    let tmp = work.join(manifest_name);
    std::fs::write(&tmp, format!("{json}\n"))
        .with_context(|| format!("writing {}", tmp.display()))?;
    let dest = out_dir.join(manifest_name);
    std::fs::rename(&tmp, &dest).with_context(|| format!("moving {} into place", dest.display()))
}

/// Builds the test guest into `opts.out_dir`, unless it is up to date.
pub fn build(opts: &BuildOptions) -> Result<(Manifest, BuildOutcome)> {
    host::ensure_packages(&host::missing_build_packages(), "building the test guest")?;
    let parts = host::find_parts()?;
    let index = modules::ModuleIndex::load(&parts.modules_dir)?;
    let plan = index
        .plan(initramfs::WANTED_MODULES)
        .with_context(|| format!("planning the modules of kernel {}", parts.kernel_version))?;
    let inputs = inputs_hash(&parts, &plan, opts.data_mib)?;
    if !opts.force
        && let Some(m) = up_to_date(&opts.out_dir, &inputs)
    {
        return Ok((m, BuildOutcome::UpToDate));
    }
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating the output directory {}", opts.out_dir.display()))?;
    let work = opts
        .out_dir
        .join(format!(".petri-test-guest-build-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("removing the stale work directory {}", work.display()))?;
    }
    std::fs::create_dir(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = build_in(&work, opts, &parts, &plan, inputs);
    let cleanup = std::fs::remove_dir_all(&work)
        .with_context(|| format!("removing the work directory {}", work.display()));
    let manifest = result?;
    cleanup?;
    Ok((manifest, BuildOutcome::Built))
}

fn build_in(
    work: &Path,
    opts: &BuildOptions,
    parts: &host::HostParts,
    plan: &[modules::PlannedModule],
    inputs_sha256: String,
) -> Result<Manifest> {
    let out = |name: &str| work.join(name);

    std::fs::copy(&parts.kernel_image, out(KERNEL_FILE)).with_context(|| {
        format!(
            "copying {} to {}",
            parts.kernel_image.display(),
            out(KERNEL_FILE).display()
        )
    })?;

    let initrd = initramfs::build(parts, plan)?;
    std::fs::write(out(INITRD_FILE), &initrd)
        .with_context(|| format!("writing {}", out(INITRD_FILE).display()))?;

    let disk_size = rootfs::build(
        &out(RAW_FILE),
        &work.join("stage"),
        &parts.busybox,
        opts.data_mib,
    )?;
    // The staged files are as large as the data; drop them early.
    std::fs::remove_dir_all(work.join("stage"))
        .with_context(|| format!("removing {}", work.join("stage").display()))?;

    let (raw, vhd, unique_id) = write_vhd(&out(RAW_FILE), &out(VHD_FILE), disk_size)?;
    let (kernel_size, kernel_sha) = sha256_file(&out(KERNEL_FILE))?;
    let mut files = vec![
        ManifestFile {
            role: "kernel".into(),
            name: KERNEL_FILE.into(),
            size: kernel_size,
            sha256: kernel_sha,
        },
        ManifestFile {
            role: "initrd".into(),
            name: INITRD_FILE.into(),
            size: initrd.len() as u64,
            sha256: sha256_hex(&initrd),
        },
    ];
    files.extend(disk_files(RAW_FILE, VHD_FILE, disk_size, raw, vhd));
    let manifest = Manifest {
        format: FORMAT,
        inputs_sha256,
        kernel_version: parts.kernel_version.clone(),
        kernel_package: parts.kernel_package.clone(),
        busybox_package: parts.busybox_package.clone(),
        mke2fs_version: parts.mke2fs_version.clone(),
        data_mib: opts.data_mib,
        disk_size,
        fs_uuid: rootfs::FS_UUID.into(),
        vhd_unique_id: hex(&unique_id),
        modules: plan
            .iter()
            .map(|m| format!("{}{}", m.name, if m.optional { "?" } else { "" }))
            .collect(),
        files,
    };

    let json = serde_json::to_string_pretty(&manifest).context("encoding the manifest")?;
    install_outputs(work, &opts.out_dir, &manifest.files, MANIFEST_FILE, &json)?;
    Ok(manifest)
}

/// The manifest entries of a root disk written by [`write_vhd`]: the raw
/// file (`disk-raw`) and the VHD (`disk-vhd`, one footer longer).
fn disk_files(
    raw_name: &str,
    vhd_name: &str,
    disk_size: u64,
    raw_sha256: String,
    vhd_sha256: String,
) -> [ManifestFile; 2] {
    [
        ManifestFile {
            role: "disk-raw".into(),
            name: raw_name.into(),
            size: disk_size,
            sha256: raw_sha256,
        },
        ManifestFile {
            role: "disk-vhd".into(),
            name: vhd_name.into(),
            size: disk_size + vhd1_defs::FOOTER_SIZE as u64,
            sha256: vhd_sha256,
        },
    ]
}

/// Copies the raw disk to a fixed VHD1 and appends the footer, in one read
/// of the raw disk. Returns the sha256 of the raw and VHD files and the
/// footer's unique id. All-zero 1 MiB pieces are skipped (left as holes),
/// so a mostly empty disk costs little space and time.
fn write_vhd(raw: &Path, vhd: &Path, disk_size: u64) -> Result<(String, String, [u8; 16])> {
    use std::io::Seek;
    let mut src = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let mut dst =
        std::fs::File::create(vhd).with_context(|| format!("creating {}", vhd.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        // Fill whole pieces, so the zero test sees aligned 1 MiB runs.
        let mut n = 0;
        while n < buf.len() {
            let got = src
                .read(&mut buf[n..])
                .with_context(|| format!("reading {}", raw.display()))?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if buf[..n].iter().all(|&b| b == 0) {
            dst.seek(std::io::SeekFrom::Current(n as i64))
                .with_context(|| format!("writing {}", vhd.display()))?;
        } else {
            dst.write_all(&buf[..n])
                .with_context(|| format!("writing {}", vhd.display()))?;
        }
        copied += n as u64;
    }
    if copied != disk_size {
        bail!(
            "{} is {copied} bytes, expected {disk_size}; was it changed while building?",
            raw.display()
        );
    }
    let mut vhd_hasher = hasher.clone();
    let raw_sha = hasher.finalize();
    let mut unique_id = [0u8; 16];
    unique_id.copy_from_slice(&raw_sha[..16]);
    let footer = vhd1_defs::Footer::new_fixed(disk_size, unique_id)
        .with_context(|| format!("making the VHD1 footer for {}", vhd.display()))?
        .to_bytes();
    dst.write_all(&footer)
        .and_then(|_| dst.flush())
        .with_context(|| format!("writing {}", vhd.display()))?;
    vhd_hasher.update(footer);
    Ok((hex(&raw_sha), hex(&vhd_hasher.finalize()), unique_id))
}

#[cfg(test)]
mod tests;
