//! The `#[vmm_test]` attribute: one petri test case per VM configuration.
//!
//! Position in the data flow: this is the top. A test author writes
//!
//! ```
//! use petri::PetriVmBuilder;
//! use petri::PetriVmmBackend;
//! use vmm_test_macros::vmm_test;
//!
//! #[vmm_test(
//!     openvmm_uefi_x64(vhd(ubuntu_2404_server_x64)),
//!     hyperv_uefi_x64(vhd(ubuntu_2404_server_x64)),
//!     openvmm_pcat_x64(iso(freebsd_13_2_x64)),
//!     unstable(reason = "flaky on aarch64", openvmm_uefi_aarch64(vhd(ubuntu_2404_server_aarch64))),
//! )]
//! async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
//!     let _vm = config.run().await?;
//!     Ok(())
//! }
//! # fn main() {
//! #     let names: Vec<String> = petri::registered_tests().into_iter().map(|t| t.name).collect();
//! #     assert!(names.iter().any(|n| n.ends_with("openvmm_pcat_x64_freebsd_13_2_x64_iso::boot")), "{names:?}");
//! # }
//! ```
//!
//! and the macro registers, through `petri`'s inventory, one test case per
//! config named `{module}::{vmm}_{firmware}_{arch}[_{image}]::{fn}` (for
//! example `boot::openvmm_uefi_x64_ubuntu_2404_server_x64::boot`). Each case's
//! requirement closure builds the `petri::Firmware` from the config, requiring the
//! boot medium with `resolver.require_source(HANDLE, policy)` and each extra
//! artifact with `resolver.require(PATH)`; the petri harness runs that closure
//! once to collect requirements and once more, after resolution, to hand the
//! test its resolved artifacts.
//!
//! # Configs
//!
//! - Names: `{vmm}_{firmware}_{arch}` with vmm in `openvmm`, `hyperv`;
//!   firmware in `linux_direct`, `pcat`, `uefi`; arch in `x64`, `aarch64`.
//!   The VMM list lives in one table (`config::VMMS`); adding a backend
//!   (QEMU) is one row there plus the backend type in petri.
//! - Guests: `linux_direct` takes none or `vhd(IMAGE)` with a built test
//!   guest's root disk (`petri_test_guest_x64`, `petri_test_guest_raw_x64`,
//!   `debian_12_x64`, `debian_12_raw_x64`), which brings that guest's
//!   kernel and initramfs; a bare `qemu_linux_direct_x64` boots the petri
//!   test guest's raw disk. `pcat` takes `vhd(IMAGE)` or `iso(IMAGE)` (x64
//!   only); `uefi` takes `vhd(IMAGE)` or `none`. Hyper-V has no
//!   `linux_direct`.
//! - Images are the snake_case names of the one catalog,
//!   `vmm_test_images::KnownTestArtifacts` (its `macro_name()`), for
//!   example `ubuntu_2404_server_x64`, `alpine_3_23_x64`. The macro reads
//!   the catalog at compile time, so a new catalog entry is usable at once
//!   and an unknown name lists the valid ones.
//! - Extra artifacts: `config[PATH, PATH]` requires each handle with
//!   `require` (local only); the test function then takes a second
//!   parameter, the tuple of `ResolvedArtifact`s in that order.
//! - `unstable(reason = "...", config, ...)` marks configs whose failures
//!   are tolerated when `PETRI_IGNORE_UNSTABLE_FAILURES` is set;
//!   `ignore(reason = "...", config, ...)` marks them ignored. The reason is
//!   mandatory.
//!
//! # Remote policy
//!
//! Each case carries its backend's policy,
//! `<Backend as PetriVmmBackend>::REMOTE_ACCESS`: `LocalOnly` for Hyper-V
//! (it needs local files), `Allow` for OpenVMM (it opens remote images
//! lazily). The case sets it as the resolver-wide policy and passes it to
//! every `require_source` of a boot medium.
//!
//! # Errors
//!
//! Unknown VMM, firmware, architecture or image, a missing or empty
//! reason, a guest on a firmware that cannot take it, an image of the wrong
//! kind or architecture, and duplicate configs are compile errors pointing
//! at the offending token and listing the valid choices.
//!

#![forbid(unsafe_code)]

mod catalog;
mod config;
mod expand;

use proc_macro::TokenStream;

/// Registers one petri test case per VM configuration. See the crate
/// documentation for the syntax.
#[proc_macro_attribute]
pub fn vmm_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    match expand::expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(err) => {
            // Keep the function (without registrations) so the only
            // diagnostic is the macro's own, not knock-on unused warnings.
            let err = err.to_compile_error();
            quote::quote!(#err #[allow(dead_code)] #item).into()
        }
    }
}
