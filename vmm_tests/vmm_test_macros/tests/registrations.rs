//! What `#[vmm_test]` registers, checked through petri's own API rather
//! than the text of the expansion: the cases and their names, each case's
//! remote policy and marks, and what its requirement closure asks the
//! resolver for (which artifacts, local or possibly remote).

use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use petri::RemoteAccess;
use petri::ResolvedArtifact;
use petri::TestArtifactRequirements;
use petri::openvmm::OpenVmmPetriBackend;
use petri_artifacts_core::RemoteOverride;
use petri_artifacts_vmm_test::artifacts::test_iso;
use petri_artifacts_vmm_test::artifacts::test_linux_direct;
use petri_artifacts_vmm_test::artifacts::test_vhd;
use petri_artifacts_vmm_test::artifacts::test_vmgs;
use vmm_test_macros::vmm_test;

#[vmm_test(
    openvmm_uefi_x64(vhd(ubuntu_2404_server_x64)),
    hyperv_uefi_x64(vhd(ubuntu_2404_server_x64)),
    openvmm_pcat_x64(iso(freebsd_13_2_x64)),
    qemu_linux_direct_x64,
    qemu_linux_direct_x64(vhd(petri_test_guest_x64)),
    openvmm_linux_direct_x64,
    unstable(reason = "flaky boot", openvmm_uefi_aarch64(none)),
    ignore(reason = "needs a TPM", hyperv_uefi_x64(none))
)]
async fn boot<T: PetriVmmBackend>(config: PetriVmBuilder<T>) -> anyhow::Result<()> {
    let _ = config;
    Ok(())
}

#[vmm_test(openvmm_uefi_x64(vhd(ubuntu_2404_server_x64))[test_vmgs::VMGS_WITH_BOOT_ENTRY])]
async fn with_vmgs(
    config: PetriVmBuilder<OpenVmmPetriBackend>,
    (vmgs,): (ResolvedArtifact<test_vmgs::VMGS_WITH_BOOT_ENTRY>,),
) -> anyhow::Result<()> {
    let _ = (config, vmgs);
    Ok(())
}

/// The registered case `name` (a full test name without the crate).
fn case(name: &str) -> petri::TestCase {
    let mut tests = petri::registered_tests();
    let names: Vec<String> = tests.iter().map(|t| t.name.clone()).collect();
    let i = tests
        .iter()
        .position(|t| t.name == name)
        .unwrap_or_else(|| panic!("{name} is not registered: {names:?}"));
    tests.swap_remove(i).case
}

/// What `name`'s requirement closure asks for, as `(artifact id, access)`
/// pairs sorted by id (the process environment's override is not applied).
fn requirements(name: &str) -> Vec<(String, RemoteAccess)> {
    let mut req = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
    case(name).collect_requirements(&mut req);
    assert_eq!(req.optional_artifacts().count(), 0, "{name}");
    let mut out: Vec<_> = req
        .required_artifacts()
        .map(|h| (h.id().to_owned(), req.access(h).unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn id(handle: impl petri_artifacts_core::AsArtifactHandle) -> String {
    handle.erase().id().to_owned()
}

#[test]
fn one_case_per_config_with_stable_names() {
    let names: Vec<String> = petri::registered_tests()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        [
            "hyperv_uefi_x64::boot",
            "hyperv_uefi_x64_ubuntu_2404_server_x64::boot",
            "openvmm_linux_direct_x64::boot",
            "openvmm_pcat_x64_freebsd_13_2_x64_iso::boot",
            "openvmm_uefi_aarch64::boot",
            "openvmm_uefi_x64_ubuntu_2404_server_x64::boot",
            "openvmm_uefi_x64_ubuntu_2404_server_x64::with_vmgs",
            "qemu_linux_direct_x64::boot",
            "qemu_linux_direct_x64_petri_test_guest_x64::boot",
        ]
    );
}

#[test]
fn boot_media_follow_the_backend_policy() {
    // OpenVMM may stream a blob-capable image; Hyper-V needs it local.
    let ubuntu = id(test_vhd::UBUNTU_2404_SERVER_X64);
    assert_eq!(
        requirements("openvmm_uefi_x64_ubuntu_2404_server_x64::boot"),
        [(ubuntu.clone(), RemoteAccess::Allow)]
    );
    assert_eq!(
        requirements("hyperv_uefi_x64_ubuntu_2404_server_x64::boot"),
        [(ubuntu, RemoteAccess::LocalOnly)]
    );
    for (name, access) in [
        (
            "openvmm_uefi_x64_ubuntu_2404_server_x64::boot",
            RemoteAccess::Allow,
        ),
        (
            "hyperv_uefi_x64_ubuntu_2404_server_x64::boot",
            RemoteAccess::LocalOnly,
        ),
        ("qemu_linux_direct_x64::boot", RemoteAccess::Allow),
    ] {
        assert_eq!(case(name).remote_access_policy(), access, "{name}");
    }
    // An ISO guest requires the ISO.
    assert_eq!(
        requirements("openvmm_pcat_x64_freebsd_13_2_x64_iso::boot"),
        [(id(test_iso::FREE_BSD_13_2_X64), RemoteAccess::Allow)]
    );
    // No guest, nothing to resolve.
    assert_eq!(requirements("openvmm_uefi_aarch64::boot"), []);
    assert_eq!(requirements("hyperv_uefi_x64::boot"), []);
}

#[test]
fn qemu_linux_direct_boots_the_test_guest() {
    // Kernel and initramfs are always local; the root disk follows the
    // backend policy.
    let kernel = (
        id(test_linux_direct::PETRI_TEST_GUEST_KERNEL_X64),
        RemoteAccess::LocalOnly,
    );
    let initrd = (
        id(test_linux_direct::PETRI_TEST_GUEST_INITRD_X64),
        RemoteAccess::LocalOnly,
    );
    for (name, root) in [
        (
            "qemu_linux_direct_x64_petri_test_guest_x64::boot",
            id(test_linux_direct::PETRI_TEST_GUEST_X64),
        ),
        // A bare QEMU config boots the raw test guest disk.
        (
            "qemu_linux_direct_x64::boot",
            id(test_linux_direct::PETRI_TEST_GUEST_RAW_X64),
        ),
    ] {
        let mut want = vec![kernel.clone(), initrd.clone(), (root, RemoteAccess::Allow)];
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(requirements(name), want, "{name}");
    }
    // A bare OpenVMM linux_direct config keeps its built-in kernel.
    assert_eq!(requirements("openvmm_linux_direct_x64::boot"), []);
}

#[test]
fn extra_artifacts_are_required_locally() {
    let mut want = vec![
        (id(test_vhd::UBUNTU_2404_SERVER_X64), RemoteAccess::Allow),
        (id(test_vmgs::VMGS_WITH_BOOT_ENTRY), RemoteAccess::LocalOnly),
    ];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        requirements("openvmm_uefi_x64_ubuntu_2404_server_x64::with_vmgs"),
        want
    );
}

#[test]
fn marks_reach_the_case() {
    let unstable = case("openvmm_uefi_aarch64::boot");
    assert_eq!(unstable.unstable_reason(), Some("flaky boot"));
    assert_eq!(unstable.ignore_reason(), None);
    let ignored = case("hyperv_uefi_x64::boot");
    assert_eq!(ignored.ignore_reason(), Some("needs a TPM"));
    assert_eq!(ignored.unstable_reason(), None);
    let plain = case("openvmm_uefi_x64_ubuntu_2404_server_x64::boot");
    assert_eq!(plain.unstable_reason(), None);
    assert_eq!(plain.ignore_reason(), None);
}
