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
        (FirmwareKind::LinuxDirect, _) => quote! { ::petri::Firmware::linux_direct() },
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
                    |resolver: &::petri::ArtifactResolver<'_>| {
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
