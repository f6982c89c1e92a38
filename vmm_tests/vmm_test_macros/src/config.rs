//! Parsing and validation of the `#[vmm_test(...)]` argument list.
//!
//! Grammar (informal):
//!
//! ```text
//! args    := item (',' item)* ','?
//! item    := config | mark
//! mark    := ('unstable' | 'ignore') '(' 'reason' '=' STRING ',' item (',' item)* ','? ')'
//! config  := NAME ['(' guest ')'] ['[' PATH (',' PATH)* ','? ']']
//! NAME    := {vmm}_{firmware}_{arch}
//! guest   := 'vhd' '(' IMAGE ')' | 'iso' '(' IMAGE ')' | 'none'
//! ```
//!
//! Every error points at the offending token and lists the valid choices.

use crate::catalog;
use crate::catalog::Arch;
use crate::catalog::BuiltGuest;
use crate::catalog::Image;
use crate::catalog::ImageKind;
use proc_macro2::Span;
use syn::Ident;
use syn::LitStr;
use syn::Token;
use syn::parse::Parse;
use syn::parse::ParseStream;

/// One VMM the macro knows. Adding a backend is one row in [`VMMS`] plus
/// the backend type in petri.
pub(crate) struct VmmInfo {
    /// The name used in config names.
    pub name: &'static str,
    /// The Rust path of the petri backend type.
    pub backend_path: &'static str,
    /// The firmwares the backend can boot.
    pub firmwares: &'static [FirmwareKind],
    /// Whether a bare `{vmm}_linux_direct_{arch}` boots the petri test
    /// guest (kernel, initramfs, raw root disk). Backends without a
    /// built-in kernel need it; any backend boots a built test guest when
    /// the config names one of its root disks,
    /// `{vmm}_linux_direct_{arch}(vhd(IMAGE))` (that guest's kernel and
    /// initramfs come with it).
    pub linux_direct_needs_test_guest: bool,
}

/// The VMMs, in the order they are listed in error messages.
pub(crate) const VMMS: &[VmmInfo] = &[
    VmmInfo {
        name: "openvmm",
        backend_path: "::petri::openvmm::OpenVmmPetriBackend",
        firmwares: &[
            FirmwareKind::LinuxDirect,
            FirmwareKind::Pcat,
            FirmwareKind::Uefi,
        ],
        linux_direct_needs_test_guest: false,
    },
    VmmInfo {
        name: "hyperv",
        backend_path: "::petri::hyperv::HyperVPetriBackend",
        // Hyper-V has no direct Linux kernel boot.
        firmwares: &[FirmwareKind::Pcat, FirmwareKind::Uefi],
        linux_direct_needs_test_guest: false,
    },
    VmmInfo {
        name: "qemu",
        backend_path: "::petri::qemu::QemuPetriBackend",
        // The QEMU backend boots the built test guests directly.
        firmwares: &[FirmwareKind::LinuxDirect],
        linux_direct_needs_test_guest: true,
    },
];

/// Firmware families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirmwareKind {
    LinuxDirect,
    Pcat,
    Uefi,
}

impl FirmwareKind {
    const ALL: [FirmwareKind; 3] = [
        FirmwareKind::LinuxDirect,
        FirmwareKind::Pcat,
        FirmwareKind::Uefi,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FirmwareKind::LinuxDirect => "linux_direct",
            FirmwareKind::Pcat => "pcat",
            FirmwareKind::Uefi => "uefi",
        }
    }
}

/// The guest a config boots.
#[derive(Clone, Copy)]
pub(crate) enum Guest {
    /// No guest given (`openvmm_linux_direct_x64`).
    Absent,
    /// `none` (UEFI without a boot disk).
    None,
    /// `vhd(IMAGE)`.
    Vhd(&'static Image),
    /// `iso(IMAGE)`.
    Iso(&'static Image),
}

/// What a linux_direct config boots.
#[derive(Clone, Copy)]
pub(crate) struct LinuxDirectImages {
    pub kernel: &'static Image,
    pub initrd: &'static Image,
    pub root: &'static Image,
}

/// One validated configuration.
pub(crate) struct Config {
    pub vmm: &'static VmmInfo,
    pub firmware: FirmwareKind,
    pub arch: Arch,
    pub guest: Guest,
    /// For linux_direct: the built test guest's kernel, initramfs and
    /// root disk, when the config boots one.
    pub linux_direct: Option<LinuxDirectImages>,
    pub extras: Vec<syn::Path>,
    pub unstable: Option<String>,
    pub ignore: Option<String>,
    pub span: Span,
}

impl Config {
    /// The config part of the test name: `{vmm}_{firmware}_{arch}[_{image}]`.
    pub(crate) fn name(&self) -> String {
        let mut name = format!(
            "{}_{}_{}",
            self.vmm.name,
            self.firmware.name(),
            self.arch.name()
        );
        match self.guest {
            Guest::Absent | Guest::None => {}
            Guest::Vhd(image) => {
                name.push('_');
                name.push_str(image.macro_name);
            }
            // Image names are unique per kind only (the FreeBSD VHD and ISO
            // share one), so ISO guests get a suffix.
            Guest::Iso(image) => {
                name.push('_');
                name.push_str(image.macro_name);
                name.push_str("_iso");
            }
        }
        name
    }
}

/// The whole argument list.
pub(crate) struct Args {
    pub configs: Vec<Config>,
}

/// Marks inherited from enclosing `unstable(...)` / `ignore(...)`.
#[derive(Clone, Default)]
struct Marks {
    unstable: Option<String>,
    ignore: Option<String>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut configs = Vec::new();
        parse_items(input, &Marks::default(), &mut configs)?;
        if configs.is_empty() {
            return Err(syn::Error::new(
                Span::call_site(),
                format!(
                    "#[vmm_test] needs at least one config, e.g. \
                     #[vmm_test(openvmm_uefi_x64(vhd(ubuntu_2404_server_x64)))]; {}",
                    config_help()
                ),
            ));
        }
        let mut seen: Vec<String> = Vec::new();
        for config in &configs {
            let name = config.name();
            if seen.contains(&name) {
                return Err(syn::Error::new(
                    config.span,
                    format!("duplicate config `{name}`"),
                ));
            }
            seen.push(name);
        }
        Ok(Args { configs })
    }
}

fn parse_items(input: ParseStream<'_>, marks: &Marks, out: &mut Vec<Config>) -> syn::Result<()> {
    while !input.is_empty() {
        parse_item(input, marks, out)?;
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(())
}

fn parse_item(input: ParseStream<'_>, marks: &Marks, out: &mut Vec<Config>) -> syn::Result<()> {
    let ident: Ident = input.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected a config name; {}", config_help()),
        )
    })?;
    let word = ident.to_string();
    if word == "unstable" || word == "ignore" {
        let content;
        syn::parenthesized!(content in input);
        let reason = parse_reason(&content, &ident)?;
        let mut marks = marks.clone();
        if word == "unstable" {
            marks.unstable = Some(reason);
        } else {
            marks.ignore = Some(reason);
        }
        if content.is_empty() {
            return Err(syn::Error::new(
                ident.span(),
                format!(
                    "`{word}(reason = \"...\", ...)` needs at least one config after the reason"
                ),
            ));
        }
        return parse_items(&content, &marks, out);
    }
    let config = parse_config(input, ident, marks)?;
    out.push(config);
    Ok(())
}

fn parse_reason(content: ParseStream<'_>, wrapper: &Ident) -> syn::Result<String> {
    let missing = || {
        syn::Error::new(
            wrapper.span(),
            format!(
                "`{wrapper}(...)` needs a reason first: \
                 `{wrapper}(reason = \"why\", openvmm_uefi_x64(vhd(...)))`"
            ),
        )
    };
    let fork = content.fork();
    let key: Ident = fork.parse().map_err(|_| missing())?;
    if key != "reason" || !fork.peek(Token![=]) {
        return Err(missing());
    }
    content.parse::<Ident>()?;
    content.parse::<Token![=]>()?;
    let lit: LitStr = content.parse().map_err(|e| {
        syn::Error::new(
            e.span(),
            "the reason must be a string literal: reason = \"why\"",
        )
    })?;
    let reason = lit.value();
    if reason.trim().is_empty() {
        return Err(syn::Error::new(
            lit.span(),
            format!("the reason of `{wrapper}(...)` must not be empty"),
        ));
    }
    if !content.is_empty() {
        content.parse::<Token![,]>()?;
    }
    Ok(reason)
}

/// Splits `{vmm}_{firmware}_{arch}`.
pub(crate) fn split_config_name(
    name: &str,
) -> Result<(&'static VmmInfo, FirmwareKind, Arch), String> {
    let Some((rest, arch_str)) = name.rsplit_once('_') else {
        return Err(format!("unknown config `{name}`; {}", config_help()));
    };
    let vmm = VMMS.iter().find(|v| {
        rest.strip_prefix(v.name)
            .is_some_and(|r| r.starts_with('_'))
    });
    let Some(vmm) = vmm else {
        let fw = FirmwareKind::ALL
            .iter()
            .find(|f| rest.ends_with(&format!("_{}", f.name())));
        return Err(match fw {
            Some(f) => {
                let unknown = &rest[..rest.len() - f.name().len() - 1];
                format!(
                    "unknown VMM `{unknown}` in `{name}`; valid VMMs: {}",
                    vmm_names()
                )
            }
            None => format!("unknown config `{name}`; {}", config_help()),
        });
    };
    let firmware_str = &rest[vmm.name.len() + 1..];
    let Some(firmware) = FirmwareKind::ALL
        .iter()
        .copied()
        .find(|f| f.name() == firmware_str)
    else {
        return Err(format!(
            "unknown firmware `{firmware_str}` in `{name}`; valid firmwares: {}",
            firmware_names(&FirmwareKind::ALL)
        ));
    };
    let Some(arch) = Arch::ALL.iter().copied().find(|a| a.name() == arch_str) else {
        return Err(format!(
            "unknown architecture `{arch_str}` in `{name}`; valid architectures: {}",
            Arch::ALL.map(|a| a.name()).join(", ")
        ));
    };
    if !vmm.firmwares.contains(&firmware) {
        return Err(format!(
            "`{}` does not support `{}` firmware; valid firmwares for {}: {}",
            vmm.name,
            firmware.name(),
            vmm.name,
            firmware_names(vmm.firmwares)
        ));
    }
    if firmware == FirmwareKind::Pcat && arch != Arch::X64 {
        return Err(format!(
            "PCAT (BIOS) firmware exists only on x64, not {}; use uefi for {}",
            arch.name(),
            arch.name()
        ));
    }
    Ok((vmm, firmware, arch))
}

fn parse_config(input: ParseStream<'_>, ident: Ident, marks: &Marks) -> syn::Result<Config> {
    let name = ident.to_string();
    let (vmm, firmware, arch) =
        split_config_name(&name).map_err(|msg| syn::Error::new(ident.span(), msg))?;

    let mut guest = Guest::Absent;
    let mut guest_span = ident.span();
    if input.peek(syn::token::Paren) {
        let content;
        let paren = syn::parenthesized!(content in input);
        guest_span = paren.span.join();
        guest = parse_guest(&content, arch)?;
        if !content.is_empty() {
            return Err(content.error("unexpected tokens after the guest"));
        }
    }
    check_guest(firmware, &name, guest, guest_span)?;
    let linux_direct = linux_direct_images(vmm, firmware, arch, guest, &name, guest_span)?;

    let mut extras = Vec::new();
    if input.peek(syn::token::Bracket) {
        let content;
        syn::bracketed!(content in input);
        let paths = content.parse_terminated(syn::Path::parse, Token![,])?;
        extras.extend(paths);
    }

    Ok(Config {
        vmm,
        firmware,
        arch,
        guest,
        linux_direct,
        extras,
        unstable: marks.unstable.clone(),
        ignore: marks.ignore.clone(),
        span: ident.span(),
    })
}

fn parse_guest(content: ParseStream<'_>, arch: Arch) -> syn::Result<Guest> {
    let expected = "expected `vhd(IMAGE)`, `iso(IMAGE)` or `none`";
    let kind: Ident = content
        .parse()
        .map_err(|e| syn::Error::new(e.span(), expected))?;
    match kind.to_string().as_str() {
        "none" => Ok(Guest::None),
        "vhd" | "iso" => {
            let inner;
            syn::parenthesized!(inner in content);
            let image_ident: Ident = inner.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("expected an image name; {}", valid_images(&kind, arch)),
                )
            })?;
            if !inner.is_empty() {
                return Err(inner.error("expected a single image name"));
            }
            let image = lookup_image(&kind, &image_ident, arch)?;
            Ok(if kind == "vhd" {
                Guest::Vhd(image)
            } else {
                Guest::Iso(image)
            })
        }
        other => Err(syn::Error::new(
            kind.span(),
            format!("unknown guest `{other}`; {expected}"),
        )),
    }
}

/// The images a `vhd(...)` / `iso(...)` of this arch accepts.
fn accepted(kind: &Ident, arch: Arch) -> Vec<&'static Image> {
    catalog::images()
        .iter()
        .filter(|i| i.arch == Some(arch) && kind_matches(kind, i.kind))
        .collect()
}

fn kind_matches(kind: &Ident, image: ImageKind) -> bool {
    if kind == "vhd" {
        matches!(image, ImageKind::Vhd | ImageKind::Vhdx | ImageKind::Raw)
    } else {
        image == ImageKind::Iso
    }
}

fn valid_images(kind: &Ident, arch: Arch) -> String {
    let names: Vec<&str> = accepted(kind, arch).iter().map(|i| i.macro_name).collect();
    if names.is_empty() {
        format!("there are no {kind} images for {}", arch.name())
    } else {
        format!(
            "valid {kind} images for {}: {}",
            arch.name(),
            names.join(", ")
        )
    }
}

fn lookup_image(kind: &Ident, ident: &Ident, arch: Arch) -> syn::Result<&'static Image> {
    let name = ident.to_string();
    let same_name = || catalog::images().iter().filter(|i| i.macro_name == name);
    let image = same_name()
        .find(|i| kind_matches(kind, i.kind))
        .or_else(|| same_name().next());
    let Some(image) = image else {
        return Err(syn::Error::new(
            ident.span(),
            format!("unknown image `{name}`; {}", valid_images(kind, arch)),
        ));
    };
    if !kind_matches(kind, image.kind) {
        let hint = match image.kind {
            ImageKind::Iso => format!("; use iso({name}) with pcat firmware"),
            ImageKind::Vhd | ImageKind::Vhdx | ImageKind::Raw => format!("; use vhd({name})"),
            ImageKind::Kernel | ImageKind::Initrd => {
                "; a built test guest's kernel and initramfs come with linux_direct configs".into()
            }
            ImageKind::Vmgs => {
                "; VMGS files are not bootable (list them as extra artifacts in [...])".into()
            }
        };
        return Err(syn::Error::new(
            ident.span(),
            format!(
                "`{name}` is a {} image, not {kind}{hint}; {}",
                image.kind.name(),
                valid_images(kind, arch)
            ),
        ));
    }
    if image.arch != Some(arch) {
        let image_arch = image.arch.map_or("architecture-independent", |a| a.name());
        return Err(syn::Error::new(
            ident.span(),
            format!(
                "`{name}` is built for {image_arch} but the config is {}; {}",
                arch.name(),
                valid_images(kind, arch)
            ),
        ));
    }
    Ok(image)
}

/// The built test guest's files a linux_direct config boots, if any: the
/// root disk named in `vhd(...)` decides the guest (and so the kernel and
/// initramfs); a bare config boots the petri test guest's raw disk.
fn linux_direct_images(
    vmm: &VmmInfo,
    firmware: FirmwareKind,
    arch: Arch,
    guest: Guest,
    name: &str,
    span: Span,
) -> syn::Result<Option<LinuxDirectImages>> {
    if firmware != FirmwareKind::LinuxDirect {
        return Ok(None);
    }
    let roots = built_guest_root_names(arch);
    let (built, root) = match guest {
        Guest::Absent if !vmm.linux_direct_needs_test_guest => return Ok(None),
        // The petri test guest's raw root disk by default.
        Guest::Absent => (
            BuiltGuest::PetriTestGuest,
            catalog::guest_file(BuiltGuest::PetriTestGuest, ImageKind::Raw, arch),
        ),
        Guest::Vhd(image) => match image.built_guest {
            Some(built) => (built, Some(image)),
            None => {
                return Err(syn::Error::new(
                    span,
                    format!(
                        "linux_direct boots a built test guest's kernel, so its root disk must \
                         be a built test guest disk, not `{}`; valid root disks for {}: {roots}",
                        image.macro_name,
                        arch.name()
                    ),
                ));
            }
        },
        // Rejected by check_guest.
        Guest::None | Guest::Iso(_) => return Ok(None),
    };
    let kernel = catalog::guest_file(built, ImageKind::Kernel, arch);
    let initrd = catalog::guest_file(built, ImageKind::Initrd, arch);
    match (kernel, initrd, root) {
        (Some(kernel), Some(initrd), Some(root)) => Ok(Some(LinuxDirectImages {
            kernel,
            initrd,
            root,
        })),
        _ => Err(syn::Error::new(
            span,
            format!(
                "`{name}` boots {built}, which is not built for {} \
                 (`{}` builds x64 only)",
                arch.name(),
                built.build_command()
            ),
        )),
    }
}

fn built_guest_root_names(arch: Arch) -> String {
    let names: Vec<&str> = catalog::built_guest_roots(arch)
        .iter()
        .map(|i| i.macro_name)
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn check_guest(firmware: FirmwareKind, name: &str, guest: Guest, span: Span) -> syn::Result<()> {
    let msg = match (firmware, guest) {
        (FirmwareKind::LinuxDirect, Guest::Absent | Guest::Vhd(_)) => return Ok(()),
        (FirmwareKind::LinuxDirect, _) => format!(
            "linux_direct boots a kernel directly and takes at most a root disk: write `{name}` \
             or `{name}(vhd(IMAGE))` with a built test guest's root disk"
        ),
        (FirmwareKind::Pcat, Guest::Vhd(_) | Guest::Iso(_)) => return Ok(()),
        (FirmwareKind::Pcat, Guest::Absent | Guest::None) => format!(
            "pcat firmware needs a boot image: `{name}(vhd(IMAGE))` or `{name}(iso(IMAGE))`"
        ),
        (FirmwareKind::Uefi, Guest::Vhd(_) | Guest::None) => return Ok(()),
        (FirmwareKind::Uefi, Guest::Iso(_)) => format!(
            "uefi firmware cannot take an ISO guest (ISO boot is pcat only): \
             use `{name}(vhd(IMAGE))` or `{name}(none)`"
        ),
        (FirmwareKind::Uefi, Guest::Absent) => {
            format!("uefi firmware needs a guest: `{name}(vhd(IMAGE))` or `{name}(none)`")
        }
    };
    Err(syn::Error::new(span, msg))
}

fn vmm_names() -> String {
    VMMS.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
}

fn firmware_names(list: &[FirmwareKind]) -> String {
    list.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

fn config_help() -> String {
    format!(
        "configs are named {{vmm}}_{{firmware}}_{{arch}} with vmm one of [{}], \
         firmware one of [{}], arch one of [{}]",
        vmm_names(),
        firmware_names(&FirmwareKind::ALL),
        Arch::ALL.map(|a| a.name()).join(", ")
    )
}
