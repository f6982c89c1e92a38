//! End to end through the public API: a VM test's requirements are
//! collected, resolved by the real known-paths resolver (local images in a
//! temp folder, a custom store base URL with a SAS-style query), and the
//! VM builder's boot drive is prepared by each backend.

use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerDescription;
use disk_backend_resources::LayerKind;
use petri::ArtifactResolver;
use petri::BootImageConfig;
use petri::Disk;
use petri::Drive;
use petri::Firmware;
use petri::MachineArch;
use petri::PcatGuest;
use petri::PetriTestParams;
use petri::PetriVmBuilder;
use petri::PetriVmmBackend;
use petri::RemoteAccess;
use petri::TestArtifactRequirements;
use petri::TestArtifacts;
use petri::UefiGuest;
use petri::hyperv::HyperVPetriBackend;
use petri::openvmm::OpenVmmPetriBackend;
use petri_artifact_resolver_openvmm_known_paths::OpenvmmKnownPathsTestArtifactResolver;
use petri_artifact_resolver_openvmm_known_paths::ResolverEnv;
use petri_artifacts_core::RemoteOverride;
use petri_artifacts_vmm_test::artifacts::test_iso;
use petri_artifacts_vmm_test::artifacts::test_vhd;
use std::path::Path;

const BASE: &str = "http://127.0.0.1:9/store?sv=2024&sig=SECRET";

/// What `#[vmm_test({vmm}_uefi_x64(vhd(ubuntu_2404_server_x64)))]` builds.
fn uefi_ubuntu(resolver: &ArtifactResolver<'_>, access: RemoteAccess) -> Firmware {
    Firmware::Uefi {
        guest: UefiGuest::Vhd(BootImageConfig::from_vhd(
            resolver.require_source(test_vhd::UBUNTU_2404_SERVER_X64, access),
        )),
    }
}

/// What `#[vmm_test({vmm}_pcat_x64(iso(freebsd_13_2_x64)))]` builds.
fn pcat_freebsd_iso(resolver: &ArtifactResolver<'_>, access: RemoteAccess) -> Firmware {
    Firmware::Pcat {
        guest: PcatGuest::Iso(BootImageConfig::from_iso(
            resolver.require_source(test_iso::FREE_BSD_13_2_X64, access),
        )),
    }
}

/// Collects, resolves and re-runs `build` as the harness does, with the
/// backend's policy as resolver-wide policy.
fn resolve<B: PetriVmmBackend>(
    root: &Path,
    build: fn(&ArtifactResolver<'_>, RemoteAccess) -> Firmware,
) -> anyhow::Result<Firmware> {
    let mut requirements = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
    build(
        &ArtifactResolver::collector(&mut requirements).with_remote_access(B::REMOTE_ACCESS),
        B::REMOTE_ACCESS,
    );
    let mut env = ResolverEnv::with_workspace_root(root);
    env.images_dir = Some(root.join("images"));
    env.base_url = Some(BASE.into());
    let artifacts: TestArtifacts =
        requirements.resolve(OpenvmmKnownPathsTestArtifactResolver::with_env("t", env))?;
    Ok(build(
        &ArtifactResolver::resolver(&artifacts).with_remote_access(B::REMOTE_ACCESS),
        B::REMOTE_ACCESS,
    ))
}

fn params(root: &Path) -> PetriTestParams {
    PetriTestParams {
        test_name: "t".into(),
        log_dir: root.join("logs"),
    }
}

#[test]
fn openvmm_reads_a_missing_image_lazily_from_the_store() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("images")).unwrap();
    let firmware = resolve::<OpenVmmPetriBackend>(root.path(), uefi_ubuntu).unwrap();
    let cache = root.path().join("cache");
    let prepared = PetriVmBuilder::new(
        OpenVmmPetriBackend::with_cache_dir(cache.clone()),
        params(root.path()),
        firmware,
        MachineArch::X64,
    )
    .with_drive(Drive::disk(Disk::Memory(1 << 20)))
    .prepare()
    .unwrap();

    let boot = prepared.boot_drive.as_ref().unwrap().disk.as_ref().unwrap();
    let url = "http://127.0.0.1:9/store/ubuntu-24.04-server-cloudimg-amd64.vhd?sv=2024&sig=SECRET";
    // The cache's policy comes from the environment (PETRI_CACHE must not
    // be `off` for this test).
    let settings = petri::cache_dir::cache_settings(Some(&cache))
        .unwrap()
        .expect("PETRI_CACHE=off");
    assert_eq!(
        boot.layers,
        [
            LayerDescription::plain(LayerKind::Ram { len: None }),
            LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                cache_dir: cache,
                key: None,
                required: settings.required,
                max_size: settings.max_size,
            }),
            LayerDescription::plain(LayerKind::Blob {
                url: url.into(),
                format: BlobFormat::Auto
            }),
        ]
    );
    assert_eq!(
        prepared.drives[0].disk.as_ref().unwrap().layers,
        [LayerDescription::plain(LayerKind::Ram {
            len: Some(1 << 20)
        })]
    );
    assert!(!format!("{prepared:?}").contains("SECRET"));
}

#[test]
fn openvmm_uses_a_local_iso_when_present() {
    let root = tempfile::tempdir().unwrap();
    let images = root.path().join("images");
    std::fs::create_dir_all(&images).unwrap();
    let iso = images.join("FreeBSD-13.2-RELEASE-amd64-dvd1.iso");
    std::fs::write(&iso, b"not really an iso").unwrap();
    let firmware = match resolve::<OpenVmmPetriBackend>(root.path(), pcat_freebsd_iso) {
        Ok(firmware) => firmware,
        Err(err) => panic!("{err:?}"),
    };
    let prepared = PetriVmBuilder::new(
        OpenVmmPetriBackend::with_cache_dir(root.path().join("cache")),
        params(root.path()),
        firmware,
        MachineArch::X64,
    )
    .prepare()
    .unwrap();
    let boot = prepared.boot_drive.unwrap();
    assert!(boot.is_dvd);
    let stack = boot.disk.unwrap();
    assert!(stack.read_only);
    assert_eq!(
        stack.layers,
        [
            LayerDescription::plain(LayerKind::Ram { len: None }),
            LayerDescription::plain(LayerKind::File {
                path: iso,
                format: BlobFormat::Auto
            }),
        ]
    );
}

#[test]
fn hyperv_never_gets_a_remote_image() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("images")).unwrap();
    // LocalOnly: resolution itself fails, naming the download command.
    let err = resolve::<HyperVPetriBackend>(root.path(), uefi_ubuntu).unwrap_err();
    let err = format!("{err:#}");
    assert!(
        err.contains("cargo xtask guest-test download-image --artifacts"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");

    // With the image present, Hyper-V gets a differencing disk over it.
    let vhd = root
        .path()
        .join("images")
        .join("ubuntu-24.04-server-cloudimg-amd64.vhd");
    std::fs::write(&vhd, b"vhd").unwrap();
    let firmware = resolve::<HyperVPetriBackend>(root.path(), uefi_ubuntu).unwrap();
    let prepared = PetriVmBuilder::new(
        HyperVPetriBackend::default(),
        params(root.path()),
        firmware,
        MachineArch::X64,
    )
    .prepare()
    .unwrap();
    assert_eq!(
        prepared.boot_drive.unwrap().disk,
        Some(petri::hyperv::HyperVDisk::Differencing { parent: vhd })
    );
}

#[test]
fn launching_openvmm_here_reports_why_it_cannot() {
    let root = tempfile::tempdir().unwrap();
    let builder = PetriVmBuilder::new(
        OpenVmmPetriBackend::with_cache_dir(root.path().join("cache")),
        params(root.path()),
        Firmware::linux_direct(),
        MachineArch::X64,
    );
    let err = match petri::block_on(builder.run()) {
        Ok(_) => panic!("OpenVMM launched"),
        Err(err) => err.to_string(),
    };
    assert_eq!(err, "OpenVMM is not available on this host");
}
