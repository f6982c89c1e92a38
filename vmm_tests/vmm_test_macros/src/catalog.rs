//! The macro's view of the one image catalog (`vmm_test_images`).
//!
//! Nothing here lists images: the table is built once from
//! `KnownTestArtifacts::all()` at macro expansion time.

use std::sync::OnceLock;
pub(crate) use vmm_test_images::BuiltGuest;

/// Machine architectures a config can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    X64,
    Aarch64,
}

impl Arch {
    pub(crate) const ALL: [Arch; 2] = [Arch::X64, Arch::Aarch64];

    /// The name used in config names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Arch::X64 => "x64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The Rust expression of the matching `petri::MachineArch`.
    pub(crate) fn petri_path(self) -> &'static str {
        match self {
            Arch::X64 => "::petri::MachineArch::X64",
            Arch::Aarch64 => "::petri::MachineArch::Aarch64",
        }
    }
}

/// What kind of file an image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ImageKind {
    Vhd,
    Vhdx,
    Raw,
    Iso,
    Vmgs,
    Kernel,
    Initrd,
}

impl ImageKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ImageKind::Vhd => "VHD",
            ImageKind::Vhdx => "VHDX",
            ImageKind::Iso => "ISO",
            ImageKind::Vmgs => "VMGS",
            ImageKind::Raw => "raw disk",
            ImageKind::Kernel => "kernel",
            ImageKind::Initrd => "initramfs",
        }
    }
}

/// One catalog entry, as the macro needs it.
#[derive(Debug)]
pub(crate) struct Image {
    /// The snake_case name written in the macro.
    pub macro_name: &'static str,
    /// The Rust path of the artifact handle.
    pub handle_path: &'static str,
    /// The kind of file.
    pub kind: ImageKind,
    /// The guest architecture, if the image has one.
    pub arch: Option<Arch>,
    /// The built test guest (`cargo xtask guest-test build-image`) the
    /// file belongs to: its disks are the root disks linux_direct boots
    /// with that guest's kernel and initramfs.
    pub built_guest: Option<BuiltGuest>,
}

/// The file of `kind` for `arch` of the built test guest `guest`, if there
/// is one.
pub(crate) fn guest_file(guest: BuiltGuest, kind: ImageKind, arch: Arch) -> Option<&'static Image> {
    images()
        .iter()
        .find(|i| i.built_guest == Some(guest) && i.kind == kind && i.arch == Some(arch))
}

/// The root disks of every built test guest for `arch`.
pub(crate) fn built_guest_roots(arch: Arch) -> Vec<&'static Image> {
    images()
        .iter()
        .filter(|i| {
            i.built_guest.is_some()
                && i.arch == Some(arch)
                && matches!(i.kind, ImageKind::Vhd | ImageKind::Raw)
        })
        .collect()
}

/// All catalog entries.
pub(crate) fn images() -> &'static [Image] {
    static IMAGES: OnceLock<Vec<Image>> = OnceLock::new();
    IMAGES.get_or_init(load)
}

fn load() -> Vec<Image> {
    use vmm_test_images::KnownTestArtifacts;
    KnownTestArtifacts::all()
        .map(|a| Image {
            macro_name: a.macro_name(),
            handle_path: a.handle_path(),
            kind: convert_kind(a.kind()),
            arch: a.arch().map(convert_arch),
            built_guest: a.built_guest(),
        })
        .collect()
}

fn convert_kind(kind: vmm_test_images::ImageKind) -> ImageKind {
    match kind {
        vmm_test_images::ImageKind::Vhd => ImageKind::Vhd,
        vmm_test_images::ImageKind::Vhdx => ImageKind::Vhdx,
        vmm_test_images::ImageKind::Iso => ImageKind::Iso,
        vmm_test_images::ImageKind::Vmgs => ImageKind::Vmgs,
        vmm_test_images::ImageKind::Raw => ImageKind::Raw,
        vmm_test_images::ImageKind::Kernel => ImageKind::Kernel,
        vmm_test_images::ImageKind::Initrd => ImageKind::Initrd,
    }
}

fn convert_arch(arch: petri_artifacts_common::tags::MachineArch) -> Arch {
    match arch {
        petri_artifacts_common::tags::MachineArch::X64 => Arch::X64,
        petri_artifacts_common::tags::MachineArch::Aarch64 => Arch::Aarch64,
    }
}
