//! Code generation: one registered petri test case per config.

use crate::config::Args;
use crate::config::Config;
use crate::config::FirmwareKind;
use crate::config::Guest;
use proc_macro2::TokenStream;
use quote::format_ident;
use quote::quote;
use quote::quote_spanned;
use syn::ItemFn;

/// Expands `#[vmm_test(attr)] item`.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args: Args = syn::parse2(attr)?;
    let item: ItemFn = syn::parse2(item)?;
    check_fn(&item, &args)?;

    let cases = args
        .configs
        .iter()
        .map(|config| expand_config(config, &item))
        .collect::<syn::Result<Vec<_>>>()?;

    Ok(quote! {
        #item
        #(#cases)*
    })
}

fn check_fn(item: &ItemFn, args: &Args) -> syn::Result<()> {
    let sig = &item.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new_spanned(
            sig.fn_token,
            "#[vmm_test] functions must be `async fn name(config: PetriVmBuilder<T>) -> anyhow::Result<()>`",
        ));
    }
    match sig.inputs.len() {
        1 => {
            if let Some(config) = args.configs.iter().find(|c| !c.extras.is_empty()) {
                return Err(syn::Error::new(
                    config.span,
                    "this config lists extra artifacts, so the test function needs a second \
                     parameter receiving them as a tuple of `ResolvedArtifact`s",
                ));
            }
        }
        2 => {}
        _ => {
            return Err(syn::Error::new_spanned(
                &sig.inputs,
                "#[vmm_test] functions take the VM builder and, optionally, a tuple of the \
                 config's extra artifacts",
            ));
        }
    }
    Ok(())
}

fn parse_path(path: &str) -> syn::Result<syn::Path> {
    syn::parse_str(path)
}

fn expand_config(config: &Config, item: &ItemFn) -> syn::Result<TokenStream> {
    let span = config.span;
    let backend = parse_path(config.vmm.backend_path)?;
    let arch = parse_path(config.arch.petri_path())?;
    let config_name = config.name();
    let fn_ident = &item.sig.ident;
    let fn_name = fn_ident.to_string();

    let access = quote! { <#backend as ::petri::PetriVmmBackend>::REMOTE_ACCESS };
    let firmware = match (config.firmware, config.guest) {
        (FirmwareKind::LinuxDirect, _) => match &config.linux_direct {
            None => quote! { ::petri::Firmware::linux_direct() },
            Some(images) => {
                let kernel = parse_path(images.kernel.handle_path)?;
                let initrd = parse_path(images.initrd.handle_path)?;
                let root = parse_path(images.root.handle_path)?;
                quote! {
                    ::petri::Firmware::linux_direct_guest(::petri::LinuxDirectGuest::new(
                        resolver.require(#kernel),
                        resolver.require(#initrd),
                        ::petri::BootImageConfig::from_vhd(resolver.require_source(#root, #access)),
                    ))
                }
            }
        },
        (FirmwareKind::Pcat, Guest::Vhd(image)) => {
            let handle = parse_path(image.handle_path)?;
            quote! {
                ::petri::Firmware::Pcat {
                    guest: ::petri::PcatGuest::Vhd(
                        ::petri::BootImageConfig::from_vhd(resolver.require_source(#handle, #access)),
                    ),
                }
            }
        }
        (FirmwareKind::Pcat, Guest::Iso(image)) => {
            let handle = parse_path(image.handle_path)?;
            quote! {
                ::petri::Firmware::Pcat {
                    guest: ::petri::PcatGuest::Iso(
                        ::petri::BootImageConfig::from_iso(resolver.require_source(#handle, #access)),
                    ),
                }
            }
        }
        (FirmwareKind::Uefi, Guest::Vhd(image)) => {
            let handle = parse_path(image.handle_path)?;
            quote! {
                ::petri::Firmware::Uefi {
                    guest: ::petri::UefiGuest::Vhd(
                        ::petri::BootImageConfig::from_vhd(resolver.require_source(#handle, #access)),
                    ),
                }
            }
        }
        (FirmwareKind::Uefi, _) => quote! {
            ::petri::Firmware::Uefi { guest: ::petri::UefiGuest::None }
        },
        // Rejected by the parser.
        (FirmwareKind::Pcat, _) => {
            return Err(syn::Error::new(span, "pcat firmware needs a boot image"));
        }
    };

    let extras = &config.extras;
    let call = if item.sig.inputs.len() == 2 {
        quote! { #fn_ident(builder, extras) }
    } else {
        quote! { { let () = extras; #fn_ident(builder) } }
    };
    let unstable = config
        .unstable
        .as_ref()
        .map(|reason| quote! { .unstable(#reason) });
    let ignore = config
        .ignore
        .as_ref()
        .map(|reason| quote! { .ignore(#reason) });
    let make = format_ident!("__petri_vmm_test_case");

    Ok(quote_spanned! {span=>
        const _: () = {
            fn #make() -> ::petri::TestCase {
                ::petri::TestCase::vmm::<#backend, _, _, _, _>(
                    #config_name,
                    #fn_name,
                    #arch,
                    |#[allow(unused_variables)] resolver: &::petri::ArtifactResolver<'_>| {
                        let firmware = #firmware;
                        let extras = ( #( resolver.require(#extras), )* );
                        (firmware, extras)
                    },
                    |builder, extras| #call,
                )
                .remote_access(#access)
                #unstable
                #ignore
            }
            ::petri::inventory::submit! {
                ::petri::TestCaseRegistration::new(::core::module_path!(), #make)
            }
        };
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Args;

    fn expand_str(attr: &str, item: &str) -> syn::Result<String> {
        let attr: TokenStream = syn::parse_str(attr)?;
        let item: TokenStream = syn::parse_str(item)?;
        expand(attr, item).map(|t| t.to_string())
    }

    const GENERIC_FN: &str = "async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> { Ok(()) }";

    fn names(attr: &str) -> Vec<String> {
        let args: Args = syn::parse_str(attr).unwrap();
        args.configs.iter().map(|c| c.name()).collect()
    }

    fn parse_err(attr: &str) -> String {
        match syn::parse_str::<Args>(attr) {
            Ok(_) => panic!("`{attr}` parsed"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_names_are_stable() {
        assert_eq!(
            names(
                "openvmm_linux_direct_x64, openvmm_uefi_x64(vhd(ubuntu_2404_server_x64)), \
                 hyperv_pcat_x64(vhd(freebsd_13_2_x64)), openvmm_pcat_x64(iso(freebsd_13_2_x64)), \
                 openvmm_uefi_aarch64(none)"
            ),
            [
                "openvmm_linux_direct_x64",
                "openvmm_uefi_x64_ubuntu_2404_server_x64",
                "hyperv_pcat_x64_freebsd_13_2_x64",
                "openvmm_pcat_x64_freebsd_13_2_x64_iso",
                "openvmm_uefi_aarch64",
            ]
        );
    }

    #[test]
    fn marks_apply_to_every_nested_config() {
        let args: Args = syn::parse_str(
            r#"unstable(reason = "flaky", openvmm_uefi_x64(none), ignore(reason = "slow", hyperv_uefi_x64(none))), openvmm_linux_direct_x64"#,
        )
        .unwrap();
        let marks: Vec<_> = args
            .configs
            .iter()
            .map(|c| (c.name(), c.unstable.clone(), c.ignore.clone()))
            .collect();
        assert_eq!(
            marks,
            [
                ("openvmm_uefi_x64".into(), Some("flaky".into()), None),
                (
                    "hyperv_uefi_x64".into(),
                    Some("flaky".into()),
                    Some("slow".into())
                ),
                ("openvmm_linux_direct_x64".into(), None, None),
            ]
        );
    }

    #[test]
    fn qemu_linux_direct_config_names() {
        assert_eq!(
            names(
                "qemu_linux_direct_x64, qemu_linux_direct_x64(vhd(petri_test_guest_x64)), \
                 openvmm_linux_direct_x64"
            ),
            [
                "qemu_linux_direct_x64",
                "qemu_linux_direct_x64_petri_test_guest_x64",
                "openvmm_linux_direct_x64"
            ]
        );
    }

    #[test]
    fn linux_direct_boots_the_guest_of_its_root_disk() {
        assert_eq!(
            names(
                "qemu_linux_direct_x64(vhd(debian_12_x64)), qemu_linux_direct_x64(vhd(debian_12_raw_x64))"
            ),
            [
                "qemu_linux_direct_x64_debian_12_x64",
                "qemu_linux_direct_x64_debian_12_raw_x64"
            ]
        );
        let out = expand_str(
            "qemu_linux_direct_x64(vhd(debian_12_x64)), openvmm_linux_direct_x64(vhd(debian_12_raw_x64))",
            GENERIC_FN,
        )
        .unwrap();
        let path = ":: petri_artifacts_vmm_test :: artifacts :: test_linux_direct ::";
        // The Debian disk brings the Debian kernel and initramfs, never the
        // petri test guest's.
        for handle in ["DEBIAN_12_KERNEL_X64", "DEBIAN_12_INITRD_X64"] {
            assert_eq!(
                out.matches(&format!("resolver . require ({path} {handle})"))
                    .count(),
                2,
                "{out}"
            );
        }
        assert!(!out.contains("PETRI_TEST_GUEST"), "{out}");
        let qemu = "< :: petri :: qemu :: QemuPetriBackend as :: petri :: PetriVmmBackend > :: REMOTE_ACCESS";
        let openvmm = "< :: petri :: openvmm :: OpenVmmPetriBackend as :: petri :: PetriVmmBackend > :: REMOTE_ACCESS";
        assert!(
            out.contains(&format!(
                "resolver . require_source ({path} DEBIAN_12_X64 , {qemu})"
            )),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "resolver . require_source ({path} DEBIAN_12_RAW_X64 , {openvmm})"
            )),
            "{out}"
        );
        let e = parse_err("qemu_linux_direct_x64(vhd(debian_12_kernel_x64))");
        assert!(e.contains("is a kernel image, not vhd"), "{e}");
    }

    #[test]
    fn iso_guest_uses_from_iso_and_the_iso_handle() {
        // Which artifacts a case requires, and with what policy, is checked
        // through petri in tests/registrations.rs; only the firmware shape
        // is not visible there. Compared without whitespace, so a change in
        // how tokens are printed does not matter.
        let out = expand_str("openvmm_pcat_x64(iso(freebsd_13_2_x64))", GENERIC_FN).unwrap();
        let out: String = out.split_whitespace().collect();
        assert!(out.contains("PcatGuest::Iso("), "{out}");
        assert!(out.contains("BootImageConfig::from_iso("), "{out}");
        assert!(!out.contains("from_vhd"), "{out}");
    }

    #[test]
    fn extras_need_a_second_parameter() {
        let err =
            expand_str("openvmm_uefi_x64(none)[VMGS_WITH_BOOT_ENTRY]", GENERIC_FN).unwrap_err();
        assert!(err.to_string().contains("second parameter"), "{err}");
    }

    #[test]
    fn non_async_fn_is_rejected() {
        let err = expand_str(
            "openvmm_uefi_x64(none)",
            "fn boot(config: PetriVmBuilder<OpenVmmPetriBackend>) -> anyhow::Result<()> { Ok(()) }",
        )
        .unwrap_err();
        assert!(err.to_string().contains("async fn"), "{err}");
    }

    #[test]
    fn errors_list_valid_choices() {
        let e = parse_err("openvmm_uefi_x64(vhd(ubuntu_9999))");
        assert!(e.contains("unknown image `ubuntu_9999`"), "{e}");
        assert!(e.contains("ubuntu_2404_server_x64"), "{e}");
        assert!(e.contains("alpine_3_23_x64"), "{e}");
        // Only images the config could take are offered.
        assert!(!e.contains("ubuntu_2404_server_aarch64"), "{e}");

        let e = parse_err("vbox_uefi_x64(none)");
        assert!(
            e.contains("unknown VMM `vbox`") && e.contains("openvmm, hyperv, qemu"),
            "{e}"
        );
        let e = parse_err("qemu_uefi_x64(none)");
        assert!(
            e.contains("`qemu` does not support `uefi`") && e.contains("linux_direct"),
            "{e}"
        );
        let e = parse_err("qemu_linux_direct_aarch64");
        assert!(e.contains("not built for aarch64"), "{e}");
        let e = parse_err("qemu_linux_direct_x64(iso(freebsd_13_2_x64))");
        assert!(e.contains("takes at most a root disk"), "{e}");
        let e = parse_err("openvmm_bios_x64(none)");
        assert!(
            e.contains("unknown firmware `bios`") && e.contains("linux_direct, pcat, uefi"),
            "{e}"
        );
        let e = parse_err("openvmm_uefi_riscv64(none)");
        assert!(
            e.contains("unknown architecture `riscv64`") && e.contains("x64, aarch64"),
            "{e}"
        );
        let e = parse_err("unstable(openvmm_uefi_x64(none))");
        assert!(e.contains("needs a reason"), "{e}");
        let e = parse_err(r#"ignore(reason = "  ", openvmm_uefi_x64(none))"#);
        assert!(e.contains("must not be empty"), "{e}");
        let e = parse_err("openvmm_uefi_x64(iso(freebsd_13_2_x64))");
        assert!(e.contains("cannot take an ISO"), "{e}");
        let e = parse_err("openvmm_pcat_x64(none)");
        assert!(e.contains("needs a boot image"), "{e}");
        let e = parse_err("openvmm_uefi_x64");
        assert!(e.contains("needs a guest"), "{e}");
        let e = parse_err("openvmm_linux_direct_x64(vhd(ubuntu_2404_server_x64))");
        assert!(
            e.contains("must be a built test guest disk")
                && e.contains(
                    "petri_test_guest_x64, petri_test_guest_raw_x64, debian_12_x64, debian_12_raw_x64"
                ),
            "{e}"
        );
        let e = parse_err("openvmm_pcat_aarch64(vhd(ubuntu_2404_server_aarch64))");
        assert!(e.contains("only on x64"), "{e}");
        let e = parse_err("hyperv_linux_direct_x64");
        assert!(
            e.contains("does not support `linux_direct`") && e.contains("pcat, uefi"),
            "{e}"
        );
        let e = parse_err("openvmm_uefi_x64(vhd(ubuntu_2404_server_aarch64))");
        assert!(
            e.contains("is built for aarch64 but the config is x64"),
            "{e}"
        );
        let e = parse_err("openvmm_uefi_x64(vhd(vmgs_with_boot_entry))");
        assert!(e.contains("not bootable"), "{e}");
        let e = parse_err("openvmm_uefi_x64(none), openvmm_uefi_x64(none)");
        assert!(e.contains("duplicate config"), "{e}");
        let e = parse_err("");
        assert!(e.contains("at least one config"), "{e}");
    }
}
