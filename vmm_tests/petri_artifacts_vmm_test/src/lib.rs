//! The guest images VMM tests can boot, declared as petri artifacts.
//!
//! Position in the data flow: tests (through the `#[vmm_test]` macro) name
//! these handles; the `vmm_test_images` catalog enumerates them (one enum
//! variant per handle, with download names); resolvers turn them into local
//! paths or URLs. Each image's facts sit next to its declaration as tag
//! trait impls from `petri_artifacts_common::tags`: OS flavor and
//! architecture ([`IsTestVhd`] / [`IsTestIso`]), and the store file name and
//! size ([`IsHostedOnBlobStore`]). The catalog reads them from here, so they
//! are written exactly once.
//!
//! Invariants:
//!
//! - Disk images (VHD, VHDX), ISOs (flat) and VMGS files (fixed VHD1) are
//!   declared with `declare_blob_artifacts!`: they may be read lazily over
//!   HTTP (the disk layer reads flat, fixed and dynamic VHD1, VHDX and
//!   qcow2).
//! - Every `FILENAME` is unique and its extension names its format
//!   (`.vhd`/`.vmgs` VHD1, `.vhdx` VHDX, `.iso` flat), which the disk
//!   layer takes as a hint and checks against the content;
//!   `vmm_test_images` tests this.
//!
//! - The built test guests ([`artifacts::test_linux_direct`]: the small
//!   petri test guest and the Debian 12 systemd guest) are built on this
//!   machine by `cargo xtask guest-test build-image [--guest debian]`: their
//!   kernels and initramfs images are local-only ([`IsBuiltTestFile`]);
//!   their root disks, raw (flat) and fixed VHD1, are blob-capable, so a
//!   test can boot them from any HTTP mirror of the images folder.
//!
//! DEVNOTE: the Ubuntu 24.04 and 25.04 x64, Alpine 3.23 (both
//! architectures), FreeBSD 13.2 VHD and Windows 11 aarch64 VHDX sizes are
//! taken from the reference store's catalog; the others are plausible
//! values marked "size not verified against the store" where they are
//! declared.

#![forbid(unsafe_code)]

use petri_artifacts_common::tags::IsBuiltTestFile;
use petri_artifacts_common::tags::IsHostedOnBlobStore;
use petri_artifacts_common::tags::IsTestInitrd;
use petri_artifacts_common::tags::IsTestIso;
use petri_artifacts_common::tags::IsTestKernel;
use petri_artifacts_common::tags::IsTestVhd;
use petri_artifacts_common::tags::IsTestVmgs;

/// The declared test images.
pub mod artifacts {
    /// Bootable test disks (VHD, and one VHDX).
    pub mod test_vhd {
        use super::super::*;
        use petri_artifacts_common::tags::MachineArch;
        use petri_artifacts_common::tags::OsFlavor;

        petri_artifacts_core::declare_blob_artifacts! {
            /// Windows Server 2022 Datacenter Core, generation 1 (BIOS), x64.
            GEN1_WINDOWS_DATA_CENTER_CORE2022_X64,
            /// Windows Server 2022 Datacenter Core, generation 2 (UEFI), x64.
            GEN2_WINDOWS_DATA_CENTER_CORE2022_X64,
            /// Windows Server 2025 Datacenter Core, generation 2 (UEFI), x64.
            GEN2_WINDOWS_DATA_CENTER_CORE2025_X64,
            /// FreeBSD 13.2, x64.
            FREE_BSD_13_2_X64,
            /// Ubuntu 24.04 server cloud image, x64.
            UBUNTU_2404_SERVER_X64,
            /// Ubuntu 24.04 server cloud image, aarch64.
            UBUNTU_2404_SERVER_AARCH64,
            /// Ubuntu 25.04 server cloud image, x64.
            UBUNTU_2504_SERVER_X64,
            /// Alpine Linux 3.23 (UEFI, cloud-init), x64.
            ALPINE_3_23_X64,
            /// Alpine Linux 3.23 (UEFI, cloud-init), aarch64.
            ALPINE_3_23_AARCH64,
            /// Windows 11 Enterprise, aarch64 (a VHDX).
            WINDOWS_11_ENTERPRISE_AARCH64,
        }

        impl IsTestVhd for GEN1_WINDOWS_DATA_CENTER_CORE2022_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Windows;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for GEN1_WINDOWS_DATA_CENTER_CORE2022_X64 {
            const FILENAME: &'static str =
                "WindowsServer-2022-datacenter-core-smalldisk-20348.1906.230803.vhd";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 32_214_352_384;
        }

        impl IsTestVhd for GEN2_WINDOWS_DATA_CENTER_CORE2022_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Windows;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for GEN2_WINDOWS_DATA_CENTER_CORE2022_X64 {
            const FILENAME: &'static str =
                "WindowsServer-2022-datacenter-core-smalldisk-g2-20348.1906.230803.vhd";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 32_214_352_384;
        }

        impl IsTestVhd for GEN2_WINDOWS_DATA_CENTER_CORE2025_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Windows;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for GEN2_WINDOWS_DATA_CENTER_CORE2025_X64 {
            const FILENAME: &'static str =
                "WindowsServer-2025-datacenter-core-smalldisk-g2-26100.3476.250306.vhd";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 32_214_352_384;
        }

        impl IsTestVhd for FREE_BSD_13_2_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::FreeBsd;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for FREE_BSD_13_2_X64 {
            const FILENAME: &'static str = "FreeBSD-13.2-RELEASE-amd64.vhd";
            const SIZE: u64 = 6_477_005_312;
        }

        impl IsTestVhd for UBUNTU_2404_SERVER_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for UBUNTU_2404_SERVER_X64 {
            const FILENAME: &'static str = "ubuntu-24.04-server-cloudimg-amd64.vhd";
            const SIZE: u64 = 3_758_211_584;
        }

        impl IsTestVhd for UBUNTU_2404_SERVER_AARCH64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::Aarch64;
        }
        impl IsHostedOnBlobStore for UBUNTU_2404_SERVER_AARCH64 {
            const FILENAME: &'static str = "ubuntu-24.04-server-cloudimg-arm64.vhd";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 3_758_211_584;
        }

        impl IsTestVhd for UBUNTU_2504_SERVER_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for UBUNTU_2504_SERVER_X64 {
            const FILENAME: &'static str = "ubuntu-25.04-server-cloudimg-amd64.vhd";
            const SIZE: u64 = 3_758_211_584;
        }

        impl IsTestVhd for ALPINE_3_23_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for ALPINE_3_23_X64 {
            const FILENAME: &'static str = "nocloud_alpine-3.23.2-x86_64-uefi-cloudinit-r0.vhd";
            const SIZE: u64 = 224_494_080;
        }

        impl IsTestVhd for ALPINE_3_23_AARCH64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::Aarch64;
        }
        impl IsHostedOnBlobStore for ALPINE_3_23_AARCH64 {
            const FILENAME: &'static str = "nocloud_alpine-3.23.2-aarch64-uefi-cloudinit-r0.vhd";
            const SIZE: u64 = 258_015_744;
        }

        impl IsTestVhd for WINDOWS_11_ENTERPRISE_AARCH64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Windows;
            const ARCH: MachineArch = MachineArch::Aarch64;
        }
        impl IsHostedOnBlobStore for WINDOWS_11_ENTERPRISE_AARCH64 {
            const FILENAME: &'static str =
                "windows11preview-arm64-win11-24h2-ent-26100.3775.250406-1.vhdx";
            const SIZE: u64 = 24_398_266_368;
        }
    }

    /// Bootable test ISOs.
    pub mod test_iso {
        use super::super::*;
        use petri_artifacts_common::tags::MachineArch;
        use petri_artifacts_common::tags::OsFlavor;

        petri_artifacts_core::declare_blob_artifacts! {
            /// FreeBSD 13.2 installer DVD, x64.
            FREE_BSD_13_2_X64,
        }

        impl IsTestIso for FREE_BSD_13_2_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::FreeBsd;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for FREE_BSD_13_2_X64 {
            const FILENAME: &'static str = "FreeBSD-13.2-RELEASE-amd64-dvd1.iso";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 4_245_487_616;
        }
    }

    /// The built test guests, booted directly (kernel + initramfs) from an
    /// ext4 root disk:
    ///
    /// - the petri test guest (`PETRI_TEST_GUEST_*`): a small Debian-kernel
    ///   Linux with a busybox userland, built by
    ///   `cargo xtask guest-test build-image`;
    /// - the Debian 12 guest (`DEBIAN_12_*`): Debian bookworm minbase with
    ///   systemd, its own kernel and its own initramfs-tools initramfs,
    ///   built by `cargo xtask guest-test build-image --guest debian`.
    ///
    /// Sizes are those of the default build: the petri root disk's depends
    /// on `--data-mib` (default 256), the Debian root disk is a fixed 2 GiB,
    /// the kernels' and initramfs images' depend on the Debian packages
    /// (these are for `6.1.0-56-amd64` and `6.1.0-57-amd64`). Nothing
    /// checks local sizes against them (see the resolver's FUTURE).
    pub mod test_linux_direct {
        use super::super::*;
        use petri_artifacts_common::tags::MachineArch;
        use petri_artifacts_common::tags::OsFlavor;

        petri_artifacts_core::declare_artifacts! {
            /// The test guest's kernel (`vmlinuz`), local only.
            PETRI_TEST_GUEST_KERNEL_X64,
            /// The test guest's initramfs (uncompressed cpio), local only.
            PETRI_TEST_GUEST_INITRD_X64,
        }

        petri_artifacts_core::declare_blob_artifacts! {
            /// The test guest's root disk as a fixed VHD1.
            PETRI_TEST_GUEST_X64,
            /// The test guest's root disk, raw (flat).
            PETRI_TEST_GUEST_RAW_X64,
        }

        impl IsTestKernel for PETRI_TEST_GUEST_KERNEL_X64 {
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsBuiltTestFile for PETRI_TEST_GUEST_KERNEL_X64 {
            const FILENAME: &'static str = "petri-test-guest-x64.vmlinuz";
            const SIZE: u64 = 8_247_232;
        }

        impl IsTestInitrd for PETRI_TEST_GUEST_INITRD_X64 {
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsBuiltTestFile for PETRI_TEST_GUEST_INITRD_X64 {
            const FILENAME: &'static str = "petri-test-guest-x64.initrd";
            const SIZE: u64 = 4_804_688;
        }

        impl IsTestVhd for PETRI_TEST_GUEST_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for PETRI_TEST_GUEST_X64 {
            const FILENAME: &'static str = "petri-test-guest-x64.vhd";
            const SIZE: u64 = 335_979_008;
        }

        impl IsTestVhd for PETRI_TEST_GUEST_RAW_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for PETRI_TEST_GUEST_RAW_X64 {
            const FILENAME: &'static str = "petri-test-guest-x64.raw";
            const SIZE: u64 = 335_978_496;
        }

        petri_artifacts_core::declare_artifacts! {
            /// The Debian 12 guest's kernel (`vmlinuz` of its
            /// `linux-image-amd64`), local only.
            DEBIAN_12_KERNEL_X64,
            /// The Debian 12 guest's initramfs (its own, made by
            /// initramfs-tools), local only.
            DEBIAN_12_INITRD_X64,
        }

        petri_artifacts_core::declare_blob_artifacts! {
            /// The Debian 12 guest's root disk as a fixed VHD1.
            DEBIAN_12_X64,
            /// The Debian 12 guest's root disk, raw (flat).
            DEBIAN_12_RAW_X64,
        }

        impl IsTestKernel for DEBIAN_12_KERNEL_X64 {
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsBuiltTestFile for DEBIAN_12_KERNEL_X64 {
            const FILENAME: &'static str = "petri-debian-12-x64.vmlinuz";
            const SIZE: u64 = 8_247_232;
        }

        impl IsTestInitrd for DEBIAN_12_INITRD_X64 {
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsBuiltTestFile for DEBIAN_12_INITRD_X64 {
            const FILENAME: &'static str = "petri-debian-12-x64.initrd";
            const SIZE: u64 = 30_230_566;
        }

        impl IsTestVhd for DEBIAN_12_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for DEBIAN_12_X64 {
            const FILENAME: &'static str = "petri-debian-12-x64.vhd";
            const SIZE: u64 = DEBIAN_12_DISK_SIZE + 512;
        }

        impl IsTestVhd for DEBIAN_12_RAW_X64 {
            const OS_FLAVOR: OsFlavor = OsFlavor::Linux;
            const ARCH: MachineArch = MachineArch::X64;
        }
        impl IsHostedOnBlobStore for DEBIAN_12_RAW_X64 {
            const FILENAME: &'static str = "petri-debian-12-x64.raw";
            const SIZE: u64 = DEBIAN_12_DISK_SIZE;
        }

        /// The Debian 12 guest's root disk size: 2 GiB rounded up to a
        /// size the VHD1 CHS geometry describes exactly.
        const DEBIAN_12_DISK_SIZE: u64 = 2_147_991_552;
    }

    /// Test VMGS (VM guest state) files, stored as fixed VHD1.
    pub mod test_vmgs {
        use super::super::*;

        petri_artifacts_core::declare_blob_artifacts! {
            /// A VMGS file holding a UEFI boot entry.
            VMGS_WITH_BOOT_ENTRY,
            /// A VMGS file with a 16 KiB TPM state.
            VMGS_WITH_16K_TPM,
        }

        impl IsTestVmgs for VMGS_WITH_BOOT_ENTRY {}
        impl IsHostedOnBlobStore for VMGS_WITH_BOOT_ENTRY {
            const FILENAME: &'static str = "sample-vmgs.vhd";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 4_194_816;
        }

        impl IsTestVmgs for VMGS_WITH_16K_TPM {}
        impl IsHostedOnBlobStore for VMGS_WITH_16K_TPM {
            const FILENAME: &'static str = "vmgs_with_16k_tpm.vmgs";
            // DEVNOTE: size not verified against the store
            const SIZE: u64 = 4_194_816;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::artifacts::*;

    #[test]
    fn same_name_in_vhd_and_iso_does_not_collide() {
        assert_ne!(
            test_vhd::FREE_BSD_13_2_X64.erase(),
            test_iso::FREE_BSD_13_2_X64.erase()
        );
        assert_eq!(
            test_vhd::FREE_BSD_13_2_X64.id(),
            "petri_artifacts_vmm_test::artifacts::test_vhd::FREE_BSD_13_2_X64"
        );
        assert_eq!(
            test_iso::FREE_BSD_13_2_X64.id(),
            "petri_artifacts_vmm_test::artifacts::test_iso::FREE_BSD_13_2_X64"
        );
    }

    #[test]
    fn disks_are_blob_capable_and_guest_boot_files_are_not() {
        assert!(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64.is_blob_capable());
        assert!(test_vhd::UBUNTU_2404_SERVER_X64.is_blob_capable());
        assert!(test_iso::FREE_BSD_13_2_X64.is_blob_capable());
        assert!(test_vmgs::VMGS_WITH_BOOT_ENTRY.is_blob_capable());
        // The built test guest: root disks may be remote, kernel and
        // initramfs never.
        assert!(test_linux_direct::PETRI_TEST_GUEST_X64.is_blob_capable());
        assert!(test_linux_direct::PETRI_TEST_GUEST_RAW_X64.is_blob_capable());
        assert!(!test_linux_direct::PETRI_TEST_GUEST_KERNEL_X64.is_blob_capable());
        assert!(!test_linux_direct::PETRI_TEST_GUEST_INITRD_X64.is_blob_capable());
        assert!(test_linux_direct::DEBIAN_12_X64.is_blob_capable());
        assert!(test_linux_direct::DEBIAN_12_RAW_X64.is_blob_capable());
        assert!(!test_linux_direct::DEBIAN_12_KERNEL_X64.is_blob_capable());
        assert!(!test_linux_direct::DEBIAN_12_INITRD_X64.is_blob_capable());
    }
}
