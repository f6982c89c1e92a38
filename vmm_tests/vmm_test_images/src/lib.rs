//! The one catalog of VMM test images.
//!
//! Position in the data flow: [`KnownTestArtifacts`] is the single table
//! that everything which needs to *name* a test image reads:
//!
//! - the `#[vmm_test]` proc-macro maps `vhd(ubuntu_2404_server_x64)` to a
//!   handle with [`KnownTestArtifacts::from_macro`] and
//!   [`KnownTestArtifacts::handle_path`], and checks the architecture with
//!   [`KnownTestArtifacts::arch`];
//! - the known-paths resolver maps a handle back to its entry
//!   ([`KnownTestArtifacts::from_handle`]) to find its file name, whether
//!   it may be read remotely, and the download command it prints on a
//!   miss;
//! - `cargo xtask guest-test download-image --artifacts <Name>` parses the
//!   command-line name (clap [`ValueEnum`](clap::ValueEnum), names
//!   verbatim) and downloads [`KnownTestArtifacts::file_name`] of
//!   [`KnownTestArtifacts::size`] bytes.
//!
//! How an image gets into the local images folder is part of its entry
//! ([`KnownTestArtifacts::obtain`], an [`Obtain`]): store images are
//! downloaded (`download-image`), the built test guests ([`BuiltGuest`]:
//! the small petri test guest and the Debian 12 systemd guest, each a
//! kernel, an initramfs, a raw and a VHD root disk) are built on this
//! machine (`cargo xtask guest-test build-image [--guest debian]`). Every
//! recovery hint (resolver misses, backend errors) prints
//! [`KnownTestArtifacts::download_command`], which follows that rule, so no
//! caller special-cases a built guest.
//!
//! Model: one enum variant per declared image in `petri_artifacts_vmm_test`.
//! A row of the catalog names the variant, the handle, the macro name, the
//! kind and the format; the file name, size, OS flavor and architecture are
//! read from the tag trait impls beside the declaration, so no fact is
//! written twice (review finding 4 of the reference).
//!
//! Invariants (tested):
//!
//! - every variant maps to a distinct handle and a distinct file name;
//! - every variant round-trips through its command-line name and serde;
//! - [`KnownTestArtifacts::remote_capable`] is the handle's blob flag, and
//!   it is `true` exactly for disk formats the disk layer reads lazily
//!   ([`ImageFormat::FixedVhd1`], [`ImageFormat::Flat`] and
//!   [`ImageFormat::Vhdx`]; it also reads dynamic VHD1 and qcow2);
//! - the format agrees with what the file name's extension says
//!   ([`ImageFormat::from_file_name`]), which the disk layer takes as a
//!   hint and checks against the content;
//! - every entry's file name, size and command-line name are pinned by a
//!   table in the tests, so a change is deliberate;
//! - `(macro keyword, macro name)` pairs are unique.
//!
//! Nothing here does I/O.

#![forbid(unsafe_code)]

use petri_artifacts_common::tags::IsBuiltTestFile;
use petri_artifacts_common::tags::IsHostedOnBlobStore;
use petri_artifacts_common::tags::IsTestInitrd;
use petri_artifacts_common::tags::IsTestIso;
use petri_artifacts_common::tags::IsTestKernel;
use petri_artifacts_common::tags::IsTestVhd;
pub use petri_artifacts_common::tags::MachineArch;
pub use petri_artifacts_common::tags::OsFlavor;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_vmm_test::artifacts;
use serde::Deserialize;
use serde::Serialize;
use std::fmt;
use std::str::FromStr;

/// The Azure storage account of the default image store.
pub const STORAGE_ACCOUNT: &str = "hvlitetestvhds";

/// The blob container of the default image store.
pub const CONTAINER: &str = "vhds";

/// The default store's base URL:
/// `https://{STORAGE_ACCOUNT}.blob.core.windows.net/{CONTAINER}`.
pub fn default_base_url() -> String {
    format!("https://{STORAGE_ACCOUNT}.blob.core.windows.net/{CONTAINER}")
}

/// What kind of test image an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageKind {
    /// A bootable disk in VHD format.
    Vhd,
    /// A bootable ISO.
    Iso,
    /// A VMGS (guest state) file.
    Vmgs,
    /// A bootable disk in VHDX format.
    Vhdx,
    /// A bootable raw (flat) disk image.
    Raw,
    /// A Linux kernel for direct boot.
    Kernel,
    /// An initramfs for direct boot.
    Initrd,
}

impl ImageKind {
    /// The `#[vmm_test]` keyword that names images of this kind: `vhd`
    /// (for VHD, VHDX and raw disks alike), `iso` or `vmgs`; kernels and
    /// initramfs images are not named in the macro (`kernel`, `initrd`).
    pub const fn macro_keyword(self) -> &'static str {
        match self {
            ImageKind::Vhd | ImageKind::Vhdx | ImageKind::Raw => "vhd",
            ImageKind::Iso => "iso",
            ImageKind::Vmgs => "vmgs",
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initrd",
        }
    }

    /// Whether images of this kind are disks (as opposed to files a VMM
    /// loads itself, such as a kernel).
    pub const fn is_disk(self) -> bool {
        !matches!(self, ImageKind::Kernel | ImageKind::Initrd)
    }
}

/// How an image gets into the local images folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Obtain {
    /// Downloaded from the image store:
    /// `cargo xtask guest-test download-image --artifacts <Name>`.
    Download,
    /// Built on this machine by `cargo xtask guest-test build-image` (see
    /// [`BuiltGuest::build_command`]). A mirror of the built images folder
    /// may still serve the blob-capable ones remotely.
    Build(BuiltGuest),
}

/// A test guest built on this machine by
/// `cargo xtask guest-test build-image`. Each is a kernel and an initramfs
/// (local only) and a root disk as raw and fixed VHD1 (blob-capable);
/// `linux_direct` configurations boot them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BuiltGuest {
    /// The small petri test guest: the Debian kernel, a busybox initramfs
    /// and a busybox root disk with data files (reads ~2 MB to boot). The
    /// default guest wherever speed matters.
    PetriTestGuest,
    /// Debian 12 (bookworm) minbase with systemd, booted with its own
    /// kernel and initramfs-tools initramfs to a unit after
    /// `multi-user.target` (reads ~50 MB of a 2 GiB disk to boot).
    Debian12,
}

impl BuiltGuest {
    /// Every built guest.
    pub const ALL: [BuiltGuest; 2] = [BuiltGuest::PetriTestGuest, BuiltGuest::Debian12];

    /// The value of `cargo xtask guest-test build-image --guest` (and of
    /// `guest-test run --guest`) that selects this guest.
    pub const fn cli_name(self) -> &'static str {
        match self {
            BuiltGuest::PetriTestGuest => "petri",
            BuiltGuest::Debian12 => "debian",
        }
    }

    /// The command that builds this guest into the local images folder.
    pub const fn build_command(self) -> &'static str {
        match self {
            BuiltGuest::PetriTestGuest => "cargo xtask guest-test build-image",
            BuiltGuest::Debian12 => "cargo xtask guest-test build-image --guest debian",
        }
    }

    /// The virtual processors to boot this guest with: what its boot was
    /// measured with (the Debian guest: QEMU `-smp 2`).
    pub const fn boot_processors(self) -> u32 {
        match self {
            BuiltGuest::PetriTestGuest => 1,
            BuiltGuest::Debian12 => 2,
        }
    }

    /// The memory, in MiB, to boot this guest with (the Debian guest: QEMU
    /// `-m 1024`).
    pub const fn boot_memory_mib(self) -> u32 {
        match self {
            BuiltGuest::PetriTestGuest => 512,
            BuiltGuest::Debian12 => 1024,
        }
    }

    /// The catalog entries of this guest's files, in catalog order.
    pub fn files(self) -> impl Iterator<Item = KnownTestArtifacts> {
        KnownTestArtifacts::all().filter(move |a| a.built_guest() == Some(self))
    }
}

impl fmt::Display for BuiltGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuiltGuest::PetriTestGuest => "the petri test guest",
            BuiltGuest::Debian12 => "the Debian 12 test guest",
        })
    }
}

/// How an image file's bytes map to a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageFormat {
    /// A fixed VHD1: the disk followed by a 512-byte footer.
    FixedVhd1,
    /// The file is the disk, byte for byte (ISO, raw).
    Flat,
    /// VHDX, read lazily like the others.
    Vhdx,
    /// Not a disk: a file the VMM loads itself (kernel, initramfs).
    File,
}

impl ImageFormat {
    /// Whether the disk layer can read this format lazily, i.e. whether an
    /// image in it may be read from a URL.
    pub const fn is_blob_readable(self) -> bool {
        match self {
            ImageFormat::FixedVhd1 | ImageFormat::Flat | ImageFormat::Vhdx => true,
            ImageFormat::File => false,
        }
    }

    /// The format a file name's extension names: `.vhd` and `.vmgs` are
    /// VHD1, `.vhdx` is VHDX, anything else is flat. Case-insensitive.
    /// (The disk layer decides from the content; this is its hint.)
    pub fn from_file_name(file_name: &str) -> ImageFormat {
        let ext = match file_name.rsplit_once('.') {
            Some((_, ext)) => ext.to_ascii_lowercase(),
            None => String::new(),
        };
        match ext.as_str() {
            "vhd" | "vmgs" => ImageFormat::FixedVhd1,
            "vhdx" => ImageFormat::Vhdx,
            _ => ImageFormat::Flat,
        }
    }
}

macro_rules! os_arch {
    (arch, Raw, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestVhd>::ARCH)
    };
    (arch, Kernel, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestKernel>::ARCH)
    };
    (arch, Initrd, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestInitrd>::ARCH)
    };
    (os, Raw, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestVhd>::OS_FLAVOR)
    };
    (os, Kernel, $m:ident :: $n:ident) => {
        Some(OsFlavor::Linux)
    };
    (os, Initrd, $m:ident :: $n:ident) => {
        Some(OsFlavor::Linux)
    };
    (arch, Vhd, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestVhd>::ARCH)
    };
    (arch, Vhdx, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestVhd>::ARCH)
    };
    (arch, Iso, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestIso>::ARCH)
    };
    (arch, Vmgs, $m:ident :: $n:ident) => {
        None
    };
    (os, Vhd, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestVhd>::OS_FLAVOR)
    };
    (os, Vhdx, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestVhd>::OS_FLAVOR)
    };
    (os, Iso, $m:ident :: $n:ident) => {
        Some(<artifacts::$m::$n as IsTestIso>::OS_FLAVOR)
    };
    (os, Vmgs, $m:ident :: $n:ident) => {
        None
    };
}

/// Where a row's file name and size come from: built files from
/// [`IsBuiltTestFile`], everything else from [`IsHostedOnBlobStore`].
macro_rules! file_fact {
    ($fact:ident, Kernel, $m:ident :: $n:ident) => {
        <artifacts::$m::$n as IsBuiltTestFile>::$fact
    };
    ($fact:ident, Initrd, $m:ident :: $n:ident) => {
        <artifacts::$m::$n as IsBuiltTestFile>::$fact
    };
    ($fact:ident, $kind:ident, $m:ident :: $n:ident) => {
        <artifacts::$m::$n as IsHostedOnBlobStore>::$fact
    };
}

macro_rules! catalog {
    ($(
        $(#[$attr:meta])*
        $variant:ident => $module:ident :: $name:ident, $macro_name:literal, $kind:ident, $format:ident, $obtain:ident $(($guest:ident))?;
    )*) => {
        /// Every known test image. The command-line and serde names are
        /// the variant names, verbatim.
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            Serialize, Deserialize, clap::ValueEnum,
        )]
        #[value(rename_all = "verbatim")]
        pub enum KnownTestArtifacts {
            $( $(#[$attr])* $variant, )*
        }

        impl KnownTestArtifacts {
            /// Every entry, in catalog order.
            pub const ALL: &'static [KnownTestArtifacts] = &[$(KnownTestArtifacts::$variant),*];

            /// The artifact handle.
            pub const fn handle(self) -> ErasedArtifactHandle {
                match self {
                    $(KnownTestArtifacts::$variant => artifacts::$module::$name.erase(),)*
                }
            }

            /// The Rust path of the handle, for generated code, e.g.
            /// `"::petri_artifacts_vmm_test::artifacts::test_vhd::UBUNTU_2404_SERVER_X64"`.
            pub const fn handle_path(self) -> &'static str {
                match self {
                    $(KnownTestArtifacts::$variant => concat!(
                        "::petri_artifacts_vmm_test::artifacts::",
                        stringify!($module),
                        "::",
                        stringify!($name)
                    ),)*
                }
            }

            /// The snake_case name used in `#[vmm_test(... vhd(<name>))]`.
            /// Unique per [`ImageKind::macro_keyword`].
            pub const fn macro_name(self) -> &'static str {
                match self {
                    $(KnownTestArtifacts::$variant => $macro_name,)*
                }
            }

            /// The kind of image.
            pub const fn kind(self) -> ImageKind {
                match self {
                    $(KnownTestArtifacts::$variant => ImageKind::$kind,)*
                }
            }

            /// The file format.
            pub const fn format(self) -> ImageFormat {
                match self {
                    $(KnownTestArtifacts::$variant => ImageFormat::$format,)*
                }
            }

            /// The file name in the store, which is also the local file name.
            pub const fn file_name(self) -> &'static str {
                match self {
                    $(KnownTestArtifacts::$variant =>
                        file_fact!(FILENAME, $kind, $module::$name),)*
                }
            }

            /// The file size in bytes (for built files: with the default
            /// build settings).
            pub const fn size(self) -> u64 {
                match self {
                    $(KnownTestArtifacts::$variant =>
                        file_fact!(SIZE, $kind, $module::$name),)*
                }
            }

            /// How the image gets into the local images folder.
            pub const fn obtain(self) -> Obtain {
                match self {
                    $(KnownTestArtifacts::$variant => Obtain::$obtain $((BuiltGuest::$guest))?,)*
                }
            }

            /// The architecture of a bootable image; `None` for VMGS files.
            pub const fn arch(self) -> Option<MachineArch> {
                match self {
                    $(KnownTestArtifacts::$variant => os_arch!(arch, $kind, $module::$name),)*
                }
            }

            /// The OS of a bootable image; `None` for VMGS files.
            pub const fn os_flavor(self) -> Option<OsFlavor> {
                match self {
                    $(KnownTestArtifacts::$variant => os_arch!(os, $kind, $module::$name),)*
                }
            }

            /// The command-line (and serde) name: the variant name.
            pub const fn cli_name(self) -> &'static str {
                match self {
                    $(KnownTestArtifacts::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

catalog! {
    /// Windows Server 2022 Datacenter Core, generation 1, x64 (VHD).
    Gen1WindowsDataCenterCore2022X64Vhd => test_vhd::GEN1_WINDOWS_DATA_CENTER_CORE2022_X64,
        "gen1_windows_data_center_core2022_x64", Vhd, FixedVhd1, Download;
    /// Windows Server 2022 Datacenter Core, generation 2, x64 (VHD).
    Gen2WindowsDataCenterCore2022X64Vhd => test_vhd::GEN2_WINDOWS_DATA_CENTER_CORE2022_X64,
        "gen2_windows_data_center_core2022_x64", Vhd, FixedVhd1, Download;
    /// Windows Server 2025 Datacenter Core, generation 2, x64 (VHD).
    Gen2WindowsDataCenterCore2025X64Vhd => test_vhd::GEN2_WINDOWS_DATA_CENTER_CORE2025_X64,
        "gen2_windows_data_center_core2025_x64", Vhd, FixedVhd1, Download;
    /// FreeBSD 13.2, x64 (VHD).
    FreeBsd13_2X64Vhd => test_vhd::FREE_BSD_13_2_X64, "freebsd_13_2_x64", Vhd, FixedVhd1, Download;
    /// FreeBSD 13.2 installer DVD, x64 (ISO).
    FreeBsd13_2X64Iso => test_iso::FREE_BSD_13_2_X64, "freebsd_13_2_x64", Iso, Flat, Download;
    /// Ubuntu 24.04 server, x64 (VHD).
    Ubuntu2404ServerX64Vhd => test_vhd::UBUNTU_2404_SERVER_X64, "ubuntu_2404_server_x64", Vhd, FixedVhd1, Download;
    /// Ubuntu 24.04 server, aarch64 (VHD).
    Ubuntu2404ServerAarch64Vhd => test_vhd::UBUNTU_2404_SERVER_AARCH64,
        "ubuntu_2404_server_aarch64", Vhd, FixedVhd1, Download;
    /// Ubuntu 25.04 server, x64 (VHD).
    Ubuntu2504ServerX64Vhd => test_vhd::UBUNTU_2504_SERVER_X64, "ubuntu_2504_server_x64", Vhd, FixedVhd1, Download;
    /// Alpine Linux 3.23, x64 (VHD).
    Alpine323X64Vhd => test_vhd::ALPINE_3_23_X64, "alpine_3_23_x64", Vhd, FixedVhd1, Download;
    /// Alpine Linux 3.23, aarch64 (VHD).
    Alpine323Aarch64Vhd => test_vhd::ALPINE_3_23_AARCH64, "alpine_3_23_aarch64", Vhd, FixedVhd1, Download;
    /// Windows 11 Enterprise, aarch64 (VHDX).
    Windows11EnterpriseAarch64Vhdx => test_vhd::WINDOWS_11_ENTERPRISE_AARCH64,
        "windows_11_enterprise_aarch64", Vhdx, Vhdx, Download;
    /// VMGS with a UEFI boot entry.
    VmgsWithBootEntry => test_vmgs::VMGS_WITH_BOOT_ENTRY, "vmgs_with_boot_entry", Vmgs, FixedVhd1, Download;
    /// VMGS with a 16 KiB TPM state.
    VmgsWith16kTpm => test_vmgs::VMGS_WITH_16K_TPM, "vmgs_with_16k_tpm", Vmgs, FixedVhd1, Download;
    /// The petri test guest's root disk, x64 (fixed VHD1; built).
    PetriTestGuestX64Vhd => test_linux_direct::PETRI_TEST_GUEST_X64,
        "petri_test_guest_x64", Vhd, FixedVhd1, Build(PetriTestGuest);
    /// The petri test guest's root disk, x64 (raw; built).
    PetriTestGuestX64Raw => test_linux_direct::PETRI_TEST_GUEST_RAW_X64,
        "petri_test_guest_raw_x64", Raw, Flat, Build(PetriTestGuest);
    /// The petri test guest's kernel, x64 (built; local only).
    PetriTestGuestX64Kernel => test_linux_direct::PETRI_TEST_GUEST_KERNEL_X64,
        "petri_test_guest_kernel_x64", Kernel, File, Build(PetriTestGuest);
    /// The petri test guest's initramfs, x64 (built; local only).
    PetriTestGuestX64Initrd => test_linux_direct::PETRI_TEST_GUEST_INITRD_X64,
        "petri_test_guest_initrd_x64", Initrd, File, Build(PetriTestGuest);
    /// The Debian 12 systemd guest's root disk, x64 (fixed VHD1; built).
    Debian12X64Vhd => test_linux_direct::DEBIAN_12_X64,
        "debian_12_x64", Vhd, FixedVhd1, Build(Debian12);
    /// The Debian 12 systemd guest's root disk, x64 (raw; built).
    Debian12X64Raw => test_linux_direct::DEBIAN_12_RAW_X64,
        "debian_12_raw_x64", Raw, Flat, Build(Debian12);
    /// The Debian 12 systemd guest's kernel, x64 (built; local only).
    Debian12X64Kernel => test_linux_direct::DEBIAN_12_KERNEL_X64,
        "debian_12_kernel_x64", Kernel, File, Build(Debian12);
    /// The Debian 12 systemd guest's initramfs, x64 (built; local only).
    Debian12X64Initrd => test_linux_direct::DEBIAN_12_INITRD_X64,
        "debian_12_initrd_x64", Initrd, File, Build(Debian12);
}

impl KnownTestArtifacts {
    /// Every entry, in catalog order.
    pub fn all() -> impl Iterator<Item = KnownTestArtifacts> {
        Self::ALL.iter().copied()
    }

    /// Whether the image may be read remotely (lazily, as a blob disk): the
    /// handle was declared with `declare_blob_artifacts!`.
    pub const fn remote_capable(self) -> bool {
        self.handle().is_blob_capable()
    }

    /// The catalog entry of `handle`, if it is a known test image.
    pub fn from_handle(handle: ErasedArtifactHandle) -> Option<KnownTestArtifacts> {
        Self::all().find(|a| a.handle() == handle)
    }

    /// The entry whose [`Self::macro_name`] is `name`, if exactly one
    /// entry has it. Names are unique only per macro keyword (the FreeBSD
    /// VHD and ISO are both `freebsd_13_2_x64`); use [`Self::from_macro`]
    /// when the keyword is known.
    pub fn from_macro_name(name: &str) -> Option<KnownTestArtifacts> {
        let mut found = Self::all().filter(|a| a.macro_name() == name);
        match (found.next(), found.next()) {
            (Some(a), None) => Some(a),
            _ => None,
        }
    }

    /// The entry named `name` under the `#[vmm_test]` keyword `keyword`
    /// (`vhd`, `iso` or `vmgs`; see [`ImageKind::macro_keyword`]).
    pub fn from_macro(keyword: &str, name: &str) -> Option<KnownTestArtifacts> {
        Self::all().find(|a| a.kind().macro_keyword() == keyword && a.macro_name() == name)
    }

    /// The entry whose command-line name is `name` (exact match).
    pub fn from_cli_name(name: &str) -> Option<KnownTestArtifacts> {
        Self::all().find(|a| a.cli_name() == name)
    }

    /// The command that puts this image into the local images folder, by
    /// [`Self::obtain`]: `cargo xtask guest-test download-image --artifacts
    /// <Name>` for store images, the guest's
    /// [`BuiltGuest::build_command`] for a built test guest. This is the
    /// recovery hint every error prints.
    pub fn download_command(self) -> String {
        match self.obtain() {
            Obtain::Download => format!(
                "cargo xtask guest-test download-image --artifacts {}",
                self.cli_name()
            ),
            Obtain::Build(guest) => guest.build_command().to_owned(),
        }
    }

    /// The built test guest this file belongs to, if it is built here.
    pub const fn built_guest(self) -> Option<BuiltGuest> {
        match self.obtain() {
            Obtain::Download => None,
            Obtain::Build(guest) => Some(guest),
        }
    }

    /// Whether `download-image` can fetch this image from the store.
    pub const fn is_downloadable(self) -> bool {
        matches!(self.obtain(), Obtain::Download)
    }
}

impl fmt::Display for KnownTestArtifacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cli_name())
    }
}

/// An unknown command-line name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTestArtifact(pub String);

impl fmt::Display for UnknownTestArtifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown test artifact {:?}; known: ", self.0)?;
        for (i, a) in KnownTestArtifacts::all().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(a.cli_name())?;
        }
        Ok(())
    }
}

impl std::error::Error for UnknownTestArtifact {}

impl FromStr for KnownTestArtifacts {
    type Err = UnknownTestArtifact;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_cli_name(s).ok_or_else(|| UnknownTestArtifact(s.to_owned()))
    }
}

#[cfg(test)]
mod tests;
