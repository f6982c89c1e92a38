//! Unit tests of the parent module.

use super::*;
use clap::ValueEnum;
use std::collections::HashSet;

#[test]
fn handles_and_file_names_are_distinct() {
    let handles: HashSet<_> = KnownTestArtifacts::all().map(|a| a.handle()).collect();
    let ids: HashSet<_> = KnownTestArtifacts::all().map(|a| a.handle().id()).collect();
    let files: HashSet<_> = KnownTestArtifacts::all().map(|a| a.file_name()).collect();
    let paths: HashSet<_> = KnownTestArtifacts::all().map(|a| a.handle_path()).collect();
    let n = KnownTestArtifacts::ALL.len();
    assert_eq!(handles.len(), n);
    assert_eq!(ids.len(), n);
    assert_eq!(files.len(), n);
    assert_eq!(paths.len(), n);
    assert_eq!(KnownTestArtifacts::value_variants().len(), n);
}

#[test]
fn cli_name_round_trips() {
    for a in KnownTestArtifacts::all() {
        let name = a.cli_name();
        assert_eq!(
            <KnownTestArtifacts as ValueEnum>::from_str(name, false),
            Ok(a),
            "clap {name}"
        );
        assert_eq!(name.parse::<KnownTestArtifacts>(), Ok(a));
        assert_eq!(
            a.to_possible_value().map(|v| v.get_name().to_owned()),
            Some(name.to_owned())
        );
        assert_eq!(a.to_string(), name);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, format!("\"{name}\""));
        assert_eq!(
            serde_json::from_str::<KnownTestArtifacts>(&json).unwrap(),
            a
        );
        match a.obtain() {
            Obtain::Download => assert!(
                a.download_command()
                    .ends_with(&format!("--artifacts {name}"))
            ),
            Obtain::Build(BuiltGuest::PetriTestGuest) => {
                assert_eq!(a.download_command(), "cargo xtask guest-test build-image")
            }
            Obtain::Build(BuiltGuest::Debian12) => assert_eq!(
                a.download_command(),
                "cargo xtask guest-test build-image --guest debian"
            ),
        }
    }
    assert_eq!(
        "Ubuntu2404ServerX64Vhd".parse(),
        Ok(KnownTestArtifacts::Ubuntu2404ServerX64Vhd)
    );
    let err = "NoSuchImage".parse::<KnownTestArtifacts>().unwrap_err();
    assert!(err.to_string().contains("Ubuntu2404ServerX64Vhd"));
}

#[test]
fn clap_parses_the_verbatim_name() {
    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[arg(long, value_delimiter = ',')]
        artifacts: Vec<KnownTestArtifacts>,
    }
    let cli = <Cli as clap::Parser>::try_parse_from([
        "x",
        "--artifacts",
        "FreeBsd13_2X64Iso,Alpine323X64Vhd",
    ])
    .unwrap();
    assert_eq!(
        cli.artifacts,
        [
            KnownTestArtifacts::FreeBsd13_2X64Iso,
            KnownTestArtifacts::Alpine323X64Vhd
        ]
    );
    assert!(<Cli as clap::Parser>::try_parse_from(["x", "--artifacts", "alpine"]).is_err());
}

#[test]
fn blob_capability_matches_format() {
    for a in KnownTestArtifacts::all() {
        assert_eq!(a.remote_capable(), a.handle().is_blob_capable(), "{a}");
        assert_eq!(a.remote_capable(), a.format().is_blob_readable(), "{a}");
        // Disks: the format the blob layer infers from the name.
        // Other files (kernel, initramfs) are never disks.
        if a.kind().is_disk() {
            assert_eq!(
                ImageFormat::from_file_name(a.file_name()),
                a.format(),
                "{a}: {}",
                a.file_name()
            );
        } else {
            assert_eq!(a.format(), ImageFormat::File, "{a}");
        }
        assert_eq!(
            a.kind() == ImageKind::Vhdx,
            a.format() == ImageFormat::Vhdx,
            "{a}"
        );
    }
    assert!(KnownTestArtifacts::Windows11EnterpriseAarch64Vhdx.remote_capable());
    assert!(!KnownTestArtifacts::PetriTestGuestX64Kernel.remote_capable());
    assert!(KnownTestArtifacts::Ubuntu2404ServerX64Vhd.remote_capable());
    assert!(KnownTestArtifacts::FreeBsd13_2X64Iso.remote_capable());
}

#[test]
fn sizes_are_plausible() {
    for a in KnownTestArtifacts::all() {
        assert!(a.size() > 0, "{a}");
        if a.format() == ImageFormat::FixedVhd1 {
            // A fixed VHD1 is whole sectors plus a 512-byte footer.
            assert_eq!(a.size() % 512, 0, "{a}");
            assert!(a.size() > 512, "{a}");
        }
    }
    // The published sizes of the store's images (the Guide's test image
    // table lists them too).
    assert_eq!(
        KnownTestArtifacts::Ubuntu2404ServerX64Vhd.size(),
        3_758_211_584
    );
    assert_eq!(KnownTestArtifacts::Alpine323X64Vhd.size(), 224_494_080);
    assert_eq!(KnownTestArtifacts::FreeBsd13_2X64Vhd.size(), 6_477_005_312);
    assert_eq!(
        KnownTestArtifacts::Alpine323X64Vhd.file_name(),
        "nocloud_alpine-3.23.2-x86_64-uefi-cloudinit-r0.vhd"
    );
}

/// Every entry's file name, size and command-line name, as the store
/// (and the reference catalog) has them: a change here is deliberate.
#[test]
fn catalog_matches_the_store() {
    use KnownTestArtifacts::*;
    let table: &[(KnownTestArtifacts, &str, u64, &str)] = &[
        (
            Gen1WindowsDataCenterCore2022X64Vhd,
            "WindowsServer-2022-datacenter-core-smalldisk-20348.1906.230803.vhd",
            32_214_352_384,
            "Gen1WindowsDataCenterCore2022X64Vhd",
        ),
        (
            Gen2WindowsDataCenterCore2022X64Vhd,
            "WindowsServer-2022-datacenter-core-smalldisk-g2-20348.1906.230803.vhd",
            32_214_352_384,
            "Gen2WindowsDataCenterCore2022X64Vhd",
        ),
        (
            Gen2WindowsDataCenterCore2025X64Vhd,
            "WindowsServer-2025-datacenter-core-smalldisk-g2-26100.3476.250306.vhd",
            32_214_352_384,
            "Gen2WindowsDataCenterCore2025X64Vhd",
        ),
        (
            FreeBsd13_2X64Vhd,
            "FreeBSD-13.2-RELEASE-amd64.vhd",
            6_477_005_312,
            "FreeBsd13_2X64Vhd",
        ),
        (
            FreeBsd13_2X64Iso,
            "FreeBSD-13.2-RELEASE-amd64-dvd1.iso",
            4_245_487_616,
            "FreeBsd13_2X64Iso",
        ),
        (
            Ubuntu2404ServerX64Vhd,
            "ubuntu-24.04-server-cloudimg-amd64.vhd",
            3_758_211_584,
            "Ubuntu2404ServerX64Vhd",
        ),
        (
            Ubuntu2404ServerAarch64Vhd,
            "ubuntu-24.04-server-cloudimg-arm64.vhd",
            3_758_211_584,
            "Ubuntu2404ServerAarch64Vhd",
        ),
        (
            Ubuntu2504ServerX64Vhd,
            "ubuntu-25.04-server-cloudimg-amd64.vhd",
            3_758_211_584,
            "Ubuntu2504ServerX64Vhd",
        ),
        (
            Alpine323X64Vhd,
            "nocloud_alpine-3.23.2-x86_64-uefi-cloudinit-r0.vhd",
            224_494_080,
            "Alpine323X64Vhd",
        ),
        (
            Alpine323Aarch64Vhd,
            "nocloud_alpine-3.23.2-aarch64-uefi-cloudinit-r0.vhd",
            258_015_744,
            "Alpine323Aarch64Vhd",
        ),
        (
            Windows11EnterpriseAarch64Vhdx,
            "windows11preview-arm64-win11-24h2-ent-26100.3775.250406-1.vhdx",
            24_398_266_368,
            "Windows11EnterpriseAarch64Vhdx",
        ),
        (
            VmgsWithBootEntry,
            "sample-vmgs.vhd",
            4_194_816,
            "VmgsWithBootEntry",
        ),
        (
            VmgsWith16kTpm,
            "vmgs_with_16k_tpm.vmgs",
            4_194_816,
            "VmgsWith16kTpm",
        ),
        (
            PetriTestGuestX64Vhd,
            "petri-test-guest-x64.vhd",
            335_979_008,
            "PetriTestGuestX64Vhd",
        ),
        (
            PetriTestGuestX64Raw,
            "petri-test-guest-x64.raw",
            335_978_496,
            "PetriTestGuestX64Raw",
        ),
        (
            PetriTestGuestX64Kernel,
            "petri-test-guest-x64.vmlinuz",
            8_247_232,
            "PetriTestGuestX64Kernel",
        ),
        (
            PetriTestGuestX64Initrd,
            "petri-test-guest-x64.initrd",
            4_804_688,
            "PetriTestGuestX64Initrd",
        ),
        (
            Debian12X64Vhd,
            "petri-debian-12-x64.vhd",
            2_147_992_064,
            "Debian12X64Vhd",
        ),
        (
            Debian12X64Raw,
            "petri-debian-12-x64.raw",
            2_147_991_552,
            "Debian12X64Raw",
        ),
        (
            Debian12X64Kernel,
            "petri-debian-12-x64.vmlinuz",
            8_247_232,
            "Debian12X64Kernel",
        ),
        (
            Debian12X64Initrd,
            "petri-debian-12-x64.initrd",
            30_230_566,
            "Debian12X64Initrd",
        ),
    ];
    for &(a, file, size, cli) in table {
        assert_eq!(
            (a.file_name(), a.size(), a.cli_name()),
            (file, size, cli),
            "{a}"
        );
    }
    let pinned: HashSet<_> = table.iter().map(|row| row.0).collect();
    let missing: Vec<_> = KnownTestArtifacts::all()
        .filter(|a| !pinned.contains(a))
        .collect();
    assert!(missing.is_empty(), "entries not pinned: {missing:?}");
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "ubuntu_2504_server_x64"),
        Some(Ubuntu2504ServerX64Vhd)
    );
}

#[test]
fn handle_paths_name_the_handles() {
    for a in KnownTestArtifacts::all() {
        let path = a.handle_path().trim_start_matches("::");
        assert_eq!(path, a.handle().id(), "{a}");
        assert_eq!(KnownTestArtifacts::from_handle(a.handle()), Some(a));
    }
    assert_eq!(
        KnownTestArtifacts::Ubuntu2404ServerX64Vhd.handle_path(),
        "::petri_artifacts_vmm_test::artifacts::test_vhd::UBUNTU_2404_SERVER_X64"
    );
    assert_eq!(
        KnownTestArtifacts::from_handle(
            petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY.erase()
        ),
        None
    );
}

#[test]
fn macro_names() {
    let mut seen = HashSet::new();
    for a in KnownTestArtifacts::all() {
        let name = a.macro_name();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        // The macro name is the handle's NAME in snake case
        // ("FREE_BSD" spelled "freebsd").
        assert_eq!(
            name,
            a.handle()
                .name()
                .to_ascii_lowercase()
                .replace("free_bsd", "freebsd"),
            "{a}"
        );
        assert!(
            seen.insert((a.kind().macro_keyword(), name)),
            "duplicate {name}"
        );
        assert_eq!(
            KnownTestArtifacts::from_macro(a.kind().macro_keyword(), name),
            Some(a)
        );
    }
    assert_eq!(
        KnownTestArtifacts::from_macro_name("ubuntu_2404_server_x64"),
        Some(KnownTestArtifacts::Ubuntu2404ServerX64Vhd)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro_name("alpine_3_23_x64"),
        Some(KnownTestArtifacts::Alpine323X64Vhd)
    );
    // Ambiguous across keywords.
    assert_eq!(
        KnownTestArtifacts::from_macro_name("freebsd_13_2_x64"),
        None
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("iso", "freebsd_13_2_x64"),
        Some(KnownTestArtifacts::FreeBsd13_2X64Iso)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "freebsd_13_2_x64"),
        Some(KnownTestArtifacts::FreeBsd13_2X64Vhd)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "windows_11_enterprise_aarch64"),
        Some(KnownTestArtifacts::Windows11EnterpriseAarch64Vhdx)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("iso", "ubuntu_2404_server_x64"),
        None
    );
}

#[test]
fn arch_and_os() {
    use KnownTestArtifacts::*;
    assert_eq!(
        Ubuntu2404ServerAarch64Vhd.arch(),
        Some(MachineArch::Aarch64)
    );
    assert_eq!(Ubuntu2404ServerX64Vhd.arch(), Some(MachineArch::X64));
    assert_eq!(FreeBsd13_2X64Iso.os_flavor(), Some(OsFlavor::FreeBsd));
    assert_eq!(
        Windows11EnterpriseAarch64Vhdx.os_flavor(),
        Some(OsFlavor::Windows)
    );
    assert_eq!(VmgsWithBootEntry.arch(), None);
    for a in KnownTestArtifacts::all() {
        assert_eq!(a.arch().is_none(), a.kind() == ImageKind::Vmgs, "{a}");
        assert_eq!(a.os_flavor().is_none(), a.kind() == ImageKind::Vmgs, "{a}");
        // The name says the arch.
        if let Some(arch) = a.arch() {
            assert!(a.macro_name().ends_with(&arch.to_string()), "{a}");
        }
    }
}

#[test]
fn format_rule_by_extension() {
    assert_eq!(ImageFormat::from_file_name("a.VHD"), ImageFormat::FixedVhd1);
    assert_eq!(
        ImageFormat::from_file_name("a.vmgs"),
        ImageFormat::FixedVhd1
    );
    assert_eq!(ImageFormat::from_file_name("a.vhdx"), ImageFormat::Vhdx);
    assert_eq!(ImageFormat::from_file_name("a.iso"), ImageFormat::Flat);
    assert_eq!(ImageFormat::from_file_name("raw"), ImageFormat::Flat);
}

#[test]
fn test_guests_are_built_not_downloaded() {
    use KnownTestArtifacts::*;
    let petri = [
        PetriTestGuestX64Vhd,
        PetriTestGuestX64Raw,
        PetriTestGuestX64Kernel,
        PetriTestGuestX64Initrd,
    ];
    let debian = [
        Debian12X64Vhd,
        Debian12X64Raw,
        Debian12X64Kernel,
        Debian12X64Initrd,
    ];
    for a in KnownTestArtifacts::all() {
        let guest = if petri.contains(&a) {
            Some(BuiltGuest::PetriTestGuest)
        } else if debian.contains(&a) {
            Some(BuiltGuest::Debian12)
        } else {
            None
        };
        assert_eq!(a.built_guest(), guest, "{a}");
        assert_eq!(a.is_downloadable(), guest.is_none(), "{a}");
        match guest {
            Some(g) => {
                assert_eq!(a.obtain(), Obtain::Build(g), "{a}");
                let prefix = match g {
                    BuiltGuest::PetriTestGuest => "petri-test-guest-x64.",
                    BuiltGuest::Debian12 => "petri-debian-12-x64.",
                };
                assert!(a.file_name().starts_with(prefix), "{a}");
                assert_eq!(a.arch(), Some(MachineArch::X64), "{a}");
                assert_eq!(a.os_flavor(), Some(OsFlavor::Linux), "{a}");
                assert_eq!(a.download_command(), g.build_command(), "{a}");
                // Root disks stream; kernel and initramfs are local only.
                assert_eq!(a.remote_capable(), a.kind().is_disk(), "{a}");
            }
            None => assert!(a.download_command().contains("download-image"), "{a}"),
        }
    }
    assert_eq!(
        BuiltGuest::PetriTestGuest.files().collect::<Vec<_>>(),
        petri
    );
    assert_eq!(BuiltGuest::Debian12.files().collect::<Vec<_>>(), debian);
    assert_eq!(
        BuiltGuest::ALL.map(BuiltGuest::cli_name),
        ["petri", "debian"]
    );
    // The Debian guest boots as measured: -smp 2 -m 1024.
    assert_eq!(BuiltGuest::Debian12.boot_processors(), 2);
    assert_eq!(BuiltGuest::Debian12.boot_memory_mib(), 1024);
    assert_eq!(BuiltGuest::PetriTestGuest.boot_processors(), 1);
    assert!(
        BuiltGuest::Debian12
            .build_command()
            .ends_with("build-image --guest debian")
    );
    // The default builds: the petri guest's `--data-mib 256` disk, the
    // Debian guest's 2 GiB disk (both sizes the VHD1 CHS geometry
    // describes exactly); VHD = raw + 512-byte footer.
    assert_eq!(PetriTestGuestX64Raw.size(), 335_978_496);
    assert_eq!(Debian12X64Raw.size(), 2_147_991_552);
    for (raw, vhd) in [
        (PetriTestGuestX64Raw, PetriTestGuestX64Vhd),
        (Debian12X64Raw, Debian12X64Vhd),
    ] {
        assert_eq!(vhd.size(), raw.size() + 512);
        assert_eq!(raw.format(), ImageFormat::Flat);
        assert_eq!(vhd.format(), ImageFormat::FixedVhd1);
    }
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "petri_test_guest_x64"),
        Some(PetriTestGuestX64Vhd)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "petri_test_guest_raw_x64"),
        Some(PetriTestGuestX64Raw)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "debian_12_x64"),
        Some(Debian12X64Vhd)
    );
    assert_eq!(
        KnownTestArtifacts::from_macro("vhd", "debian_12_raw_x64"),
        Some(Debian12X64Raw)
    );
    assert_eq!(PetriTestGuestX64Kernel.kind().macro_keyword(), "kernel");
    assert_eq!(Debian12X64Initrd.kind().macro_keyword(), "initrd");
}

#[test]
fn default_store() {
    assert_eq!(
        default_base_url(),
        "https://hvlitetestvhds.blob.core.windows.net/vhds"
    );
}
