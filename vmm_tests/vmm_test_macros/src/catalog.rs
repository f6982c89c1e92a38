//! The macro's view of the one image catalog (`vmm_test_images`).
//!
//! Nothing here lists images: the table is built once from
//! `KnownTestArtifacts::all()` at macro expansion time.

use std::sync::OnceLock;

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
    Iso,
    Vmgs,
}

impl ImageKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ImageKind::Vhd => "VHD",
            ImageKind::Vhdx => "VHDX",
            ImageKind::Iso => "ISO",
            ImageKind::Vmgs => "VMGS",
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
        })
        .collect()
}

fn convert_kind(kind: vmm_test_images::ImageKind) -> ImageKind {
    match kind {
        vmm_test_images::ImageKind::Vhd => ImageKind::Vhd,
        vmm_test_images::ImageKind::Vhdx => ImageKind::Vhdx,
        vmm_test_images::ImageKind::Iso => ImageKind::Iso,
        vmm_test_images::ImageKind::Vmgs => ImageKind::Vmgs,
    }
}

fn convert_arch(arch: petri_artifacts_common::tags::MachineArch) -> Arch {
    match arch {
        petri_artifacts_common::tags::MachineArch::X64 => Arch::X64,
        petri_artifacts_common::tags::MachineArch::Aarch64 => Arch::Aarch64,
    }
}
