//! Boot tests across backends, firmwares and images.

use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use petri::ResolvedArtifact;
use petri_artifacts_vmm_test::artifacts::test_vmgs;
use vmm_test_macros::vmm_test;

/// Boots the guest and lets it go. Remote-capable images (Ubuntu, Alpine,
/// FreeBSD) may be read lazily on OpenVMM; Hyper-V needs them locally.
#[vmm_test(
    openvmm_linux_direct_x64,
    openvmm_uefi_x64(vhd(ubuntu_2404_server_x64)),
    openvmm_uefi_x64(vhd(alpine_3_23_x64)),
    openvmm_uefi_aarch64(vhd(ubuntu_2404_server_aarch64)),
    openvmm_pcat_x64(vhd(freebsd_13_2_x64)),
    openvmm_pcat_x64(iso(freebsd_13_2_x64)),
    openvmm_uefi_x64(none),
    hyperv_uefi_x64(vhd(ubuntu_2404_server_x64)),
    hyperv_pcat_x64(vhd(gen1_windows_data_center_core2022_x64)),
    hyperv_uefi_aarch64(vhd(windows_11_enterprise_aarch64)),
    unstable(
        reason = "Windows Server 2025 first boot is slow and sometimes times out",
        openvmm_uefi_x64(vhd(gen2_windows_data_center_core2025_x64)),
    )
)]
async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let _vm = config.run().await?;
    Ok(())
}

/// Boots with a VMGS file holding a boot entry. The VMGS is an extra
/// artifact, so it is always required locally.
#[vmm_test(
    openvmm_uefi_x64(vhd(ubuntu_2404_server_x64))[test_vmgs::VMGS_WITH_BOOT_ENTRY],
    hyperv_uefi_x64(vhd(gen2_windows_data_center_core2022_x64))[test_vmgs::VMGS_WITH_BOOT_ENTRY],
    ignore(
        reason = "TPM state restore is not modelled yet",
        openvmm_uefi_x64(vhd(gen2_windows_data_center_core2025_x64))[test_vmgs::VMGS_WITH_BOOT_ENTRY],
    ),
)]
async fn boot_with_vmgs<T: PetriVmmBackend>(
    config: PetriVmBuilder<T>,
    (vmgs,): (ResolvedArtifact<test_vmgs::VMGS_WITH_BOOT_ENTRY>,),
) -> anyhow::Result<()> {
    eprintln!("using VMGS {}", vmgs.get().display());
    let _vm = config
        .with_drive(petri::Drive::disk(petri::Disk::Differencing(
            vmgs.get().to_path_buf().into(),
        )))
        .run()
        .await?;
    Ok(())
}
