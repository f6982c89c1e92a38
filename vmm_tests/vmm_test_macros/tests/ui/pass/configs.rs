//! A real use of the macro: generic and concrete functions, every
//! firmware, marks and extra artifacts. It must compile and register its
//! cases with petri.

use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use petri::ResolvedArtifact;
use petri::openvmm::OpenVmmPetriBackend;
use petri_artifacts_vmm_test::artifacts::test_vmgs;
use vmm_test_macros::vmm_test;

#[vmm_test(
    openvmm_linux_direct_x64,
    qemu_linux_direct_x64,
    qemu_linux_direct_x64(vhd(petri_test_guest_x64)),
    openvmm_uefi_x64(vhd(ubuntu_2404_server_x64)),
    openvmm_uefi_aarch64(vhd(alpine_3_23_aarch64)),
    openvmm_pcat_x64(iso(freebsd_13_2_x64)),
    openvmm_pcat_x64(vhd(freebsd_13_2_x64)),
    hyperv_uefi_x64(vhd(gen2_windows_data_center_core2025_x64)),
    hyperv_uefi_aarch64(vhd(windows_11_enterprise_aarch64)),
    unstable(reason = "flaky", openvmm_uefi_x64(none)),
    ignore(reason = "slow", hyperv_pcat_x64(vhd(gen1_windows_data_center_core2022_x64))),
)]
async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let _vm = config.run().await?;
    Ok(())
}

#[vmm_test(openvmm_uefi_x64(vhd(ubuntu_2404_server_x64))[test_vmgs::VMGS_WITH_BOOT_ENTRY])]
async fn with_vmgs(
    config: PetriVmBuilder<OpenVmmPetriBackend>,
    (vmgs,): (ResolvedArtifact<test_vmgs::VMGS_WITH_BOOT_ENTRY>,),
) -> anyhow::Result<()> {
    let _ = vmgs.get();
    let _vm = config.run().await?;
    Ok(())
}

fn main() {
    // Each case carries its backend's remote policy and its marks.
    for test in petri::registered_tests() {
        let want = if test.name.starts_with("hyperv_") {
            petri::RemoteAccess::LocalOnly
        } else {
            petri::RemoteAccess::Allow
        };
        assert_eq!(test.case.remote_access_policy(), want, "{}", test.name);
        let unstable = test.name == "openvmm_uefi_x64::boot";
        assert_eq!(test.case.unstable_reason().is_some(), unstable, "{}", test.name);
        let ignored = test.name == "hyperv_pcat_x64_gen1_windows_data_center_core2022_x64::boot";
        assert_eq!(test.case.ignore_reason() == Some("slow"), ignored, "{}", test.name);
    }
    let names: Vec<String> = petri::registered_tests().into_iter().map(|t| t.name).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(
        names.contains(&"qemu_linux_direct_x64_petri_test_guest_x64::boot".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"openvmm_uefi_x64_ubuntu_2404_server_x64::with_vmgs".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"openvmm_pcat_x64_freebsd_13_2_x64_iso::boot".to_owned()),
        "{names:?}"
    );
}
