//! Unit tests of the parent module.

use super::*;
use crate::DiskPath;
use crate::PcatGuest;
use crate::UefiGuest;
use crate::hyperv::HyperVPetriBackend;
use crate::openvmm::OpenVmmPetriBackend;
use crate::vm::BootImageConfig;
use petri_artifacts_core::ArtifactSource;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteOverride;
use petri_artifacts_core::ResolveTestArtifact;
use petri_artifacts_vmm_test::artifacts::test_iso;
use petri_artifacts_vmm_test::artifacts::test_vhd;
use petri_artifacts_vmm_test::artifacts::test_vmgs;
use std::path::Path;

/// A real resolver over a temp folder: files named after the artifact
/// are local; a missing blob-capable artifact resolves to a URL.
struct FolderResolver {
    root: PathBuf,
    test_name: String,
}

impl ResolveTestArtifact for FolderResolver {
    fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
        if id == TEST_LOG_DIRECTORY {
            return Ok(self.root.join("logs").join(&self.test_name));
        }
        let path = self.root.join(id.name());
        if path.exists() {
            Ok(path)
        } else {
            anyhow::bail!("artifact {} not found at {}", id.name(), path.display())
        }
    }

    fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
        match self.resolve(id) {
            Ok(path) => Ok(ArtifactSource::Local(path)),
            Err(_) => Ok(ArtifactSource::Remote {
                url: format!("http://127.0.0.1:9/{}.vhd?sig=SECRET", id.name()),
            }),
        }
    }
}

fn env() -> HarnessEnv {
    HarnessEnv {
        ignore_unstable_failures: false,
        host_arch: Some(MachineArch::X64),
    }
}

fn named(case: TestCase) -> NamedTestCase {
    NamedTestCase {
        name: full_test_name("vmm_tests::boot", case.leaf_name()),
        case,
    }
}

/// What the macro generates for `{vmm}_uefi_x64(vhd(ubuntu_2404_server_x64))`.
fn uefi_ubuntu<B: PetriVmmBackend>() -> TestCase {
    TestCase::vmm::<B, _, _, _, _>(
        &format!("{}_uefi_x64_ubuntu_2404_server_x64", B::NAME),
        "boot",
        MachineArch::X64,
        |resolver: &ArtifactResolver<'_>| {
            let firmware = Firmware::Uefi {
                guest: UefiGuest::Vhd(BootImageConfig::from_vhd(
                    resolver.require_source(test_vhd::UBUNTU_2404_SERVER_X64, B::REMOTE_ACCESS),
                )),
            };
            (
                firmware,
                (resolver.require(test_vmgs::VMGS_WITH_BOOT_ENTRY),),
            )
        },
        |builder: PetriVmBuilder<B>, _extras| async move {
            let _vm = builder.run().await?;
            Ok(())
        },
    )
    .remote_access(B::REMOTE_ACCESS)
}

fn list(cases: &[NamedTestCase], over: RemoteOverride) -> ArtifactListOutput {
    required_artifacts(cases, TestArtifactRequirements::with_override(over))
}

const UBUNTU: &str = "petri_artifacts_vmm_test::artifacts::test_vhd::UBUNTU_2404_SERVER_X64";
const VMGS: &str = "petri_artifacts_vmm_test::artifacts::test_vmgs::VMGS_WITH_BOOT_ENTRY";

#[test]
fn hyperv_requires_local_openvmm_allows_remote() {
    assert_eq!(test_vhd::UBUNTU_2404_SERVER_X64.erase().id(), UBUNTU);
    let hyperv = [named(uefi_ubuntu::<HyperVPetriBackend>())];
    let out = list(&hyperv, RemoteOverride::NoOverride);
    assert_eq!(out.required, [UBUNTU, VMGS]);
    assert_eq!(out.local_only, [UBUNTU, VMGS]);

    let openvmm = [named(uefi_ubuntu::<OpenVmmPetriBackend>())];
    let out = list(&openvmm, RemoteOverride::NoOverride);
    assert_eq!(out.required, [UBUNTU, VMGS]);
    // Extra artifacts are always local; the boot disk may be remote.
    assert_eq!(out.local_only, [VMGS]);

    // The process-wide override wins.
    let out = list(&openvmm, RemoteOverride::ForceLocal);
    assert_eq!(out.local_only, [UBUNTU, VMGS]);

    // Merged: the strictest wins.
    let both = [
        named(uefi_ubuntu::<HyperVPetriBackend>()),
        named(uefi_ubuntu::<OpenVmmPetriBackend>()),
    ];
    assert_eq!(
        list(&both, RemoteOverride::NoOverride).local_only,
        [UBUNTU, VMGS]
    );
}

#[test]
fn vmm_cases_are_named_and_ignored_with_the_backend_reason() {
    let case = named(uefi_ubuntu::<OpenVmmPetriBackend>());
    assert_eq!(
        case.name,
        "boot::openvmm_uefi_x64_ubuntu_2404_server_x64::boot"
    );
    assert!(is_statically_ignored(&case, &env()));
    let dir = tempfile::tempdir().unwrap();
    let resolve = |name: &str, reqs: TestArtifactRequirements| {
        reqs.resolve(FolderResolver {
            root: dir.path().into(),
            test_name: name.into(),
        })
    };
    match run_test(&case, &resolve, &env()) {
        Ok(Completion::Ignored { reason }) => {
            assert_eq!(
                reason.as_deref(),
                Some("OpenVMM is not available on this host")
            )
        }
        _ => panic!("expected a runtime ignore"),
    }
    let case = named(uefi_ubuntu::<HyperVPetriBackend>());
    match run_test(&case, &resolve, &env()) {
        Ok(Completion::Ignored { reason }) => assert!(reason.is_some()),
        _ => panic!("expected a runtime ignore"),
    }
}

#[test]
fn wrong_host_arch_is_ignored() {
    let host = HostRequirements {
        backend: None,
        arch: Some(MachineArch::Aarch64),
    };
    let reason = host.check(Some(MachineArch::X64));
    assert!(
        reason.reason().unwrap().contains("needs an aarch64 host"),
        "{reason:?}"
    );
    assert_eq!(
        host.check(Some(MachineArch::Aarch64)),
        HostSupport::Supported
    );
}

fn simple(leaf: &str, run: fn(PetriTestParams) -> anyhow::Result<()>) -> TestCase {
    TestCase::new(
        leaf,
        |resolver: &ArtifactResolver<'_>| resolver.require(test_vmgs::VMGS_WITH_16K_TPM),
        move |params, vmgs| {
            assert!(vmgs.get().exists());
            run(params)
        },
    )
}

fn run_in(dir: &Path, case: TestCase, env: HarnessEnv) -> Result<Completion, Failed> {
    let resolve = |name: &str, reqs: TestArtifactRequirements| {
        reqs.resolve(FolderResolver {
            root: dir.into(),
            test_name: name.into(),
        })
    };
    run_test(&named(case), &resolve, &env)
}

#[test]
fn resolution_errors_are_reported_intact() {
    let dir = tempfile::tempdir().unwrap();
    let failed = match run_in(dir.path(), simple("t", |_| Ok(())), env()) {
        Err(failed) => failed,
        Ok(_) => panic!("expected a failure"),
    };
    let msg = failed.message().unwrap();
    assert!(
        msg.contains("artifact VMGS_WITH_16K_TPM not found at"),
        "{msg}"
    );
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn skip_errors_become_runtime_ignores() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("VMGS_WITH_16K_TPM"), b"x").unwrap();
    let case = simple("s", |_| {
        Err(anyhow::Error::new(SkipTest::new("no test guest here")).context("booting"))
    });
    match run_in(dir.path(), case, env()) {
        Ok(Completion::Ignored { reason }) => {
            assert_eq!(reason.as_deref(), Some("no test guest here"))
        }
        _ => panic!("expected a runtime ignore"),
    }
}

#[test]
fn error_report_keeps_every_cause() {
    let err = anyhow::anyhow!("root cause")
        .context("middle")
        .context("top");
    assert_eq!(
        error_report(&err),
        "top\n\nCaused by:\n    0: middle\n    1: root cause"
    );
}

#[test]
fn passing_test_gets_its_log_dir_created() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("VMGS_WITH_16K_TPM"), b"x").unwrap();
    let outcome = run_in(
        dir.path(),
        simple("t", |params| {
            anyhow::ensure!(params.log_dir.is_dir(), "no log dir");
            anyhow::ensure!(params.test_name == "boot::t");
            Ok(())
        }),
        env(),
    );
    assert!(matches!(outcome, Ok(Completion::Completed)));
    assert!(dir.path().join("logs").join("boot::t").is_dir());
}

#[test]
fn panics_are_caught_and_unstable_failures_tolerated_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("VMGS_WITH_16K_TPM"), b"x").unwrap();
    let panicking = || simple("p", |_| panic!("guest said boom"));
    match run_in(dir.path(), panicking(), env()) {
        Err(f) => assert!(f.message().unwrap().contains("guest said boom")),
        Ok(_) => panic!("expected a failure"),
    }
    match run_in(dir.path(), panicking().unstable("flaky"), env()) {
        Err(f) => assert!(f.message().unwrap().contains("guest said boom")),
        Ok(_) => panic!("unstable tests fail normally"),
    }
    let tolerant = HarnessEnv {
        ignore_unstable_failures: true,
        ..env()
    };
    match run_in(dir.path(), panicking().unstable("flaky"), tolerant) {
        Ok(Completion::Ignored { reason }) => {
            let reason = reason.unwrap();
            assert!(
                reason.contains("flaky") && reason.contains("guest said boom"),
                "{reason}"
            );
        }
        _ => panic!("expected a tolerated failure"),
    }
    // A stable test still fails with the flag set.
    assert!(run_in(dir.path(), panicking(), tolerant).is_err());
}

#[test]
fn ignore_unstable_env_parsing() {
    for (v, want) in [
        (None, false),
        (Some(""), false),
        (Some("0"), false),
        (Some("FALSE"), false),
        (Some("1"), true),
        (Some("yes"), true),
    ] {
        assert_eq!(HarnessEnv::parse_ignore_unstable(v), want, "{v:?}");
    }
}

#[test]
fn args_filters_and_names() {
    let (rest, list) =
        split_args(["bin", "--list-required-artifacts", "--exact", "x"].map(OsString::from));
    assert!(list);
    assert_eq!(rest, ["bin", "--exact", "x"].map(OsString::from));
    assert_eq!(full_test_name("vmm_tests", "a::b"), "a::b");
    assert_eq!(
        full_test_name("vmm_tests::boot::x", "a::b"),
        "boot::x::a::b"
    );

    let tests = [
        named(uefi_ubuntu::<HyperVPetriBackend>()),
        named(uefi_ubuntu::<OpenVmmPetriBackend>()),
        named(simple("host_check", |_| Ok(()))),
    ];
    let sel = |args: &[&str]| -> Vec<String> {
        let args = Arguments::from_iter(std::iter::once("bin").chain(args.iter().copied()));
        select(&args, &tests, &env())
            .into_iter()
            .map(|t| t.name.clone())
            .collect()
    };
    assert_eq!(sel(&[]).len(), 3);
    assert_eq!(
        sel(&["hyperv_"]),
        ["boot::hyperv_uefi_x64_ubuntu_2404_server_x64::boot"]
    );
    assert_eq!(sel(&["--skip", "hyperv"]).len(), 2);
    assert_eq!(sel(&["--exact", "boot::host_check"]), ["boot::host_check"]);
    assert!(sel(&["--exact", "host_check"]).is_empty());
    // --ignored selects what this host cannot run.
    assert_eq!(sel(&["--ignored"]).len(), 2);
}

#[test]
fn resolved_remote_boot_image_becomes_a_remote_differencing_drive() {
    let dir = tempfile::tempdir().unwrap();
    // The ISO is local, the VHD is not.
    std::fs::write(dir.path().join("FREE_BSD_13_2_X64"), b"iso").unwrap();
    let requirements = |resolver: &ArtifactResolver<'_>| {
        (
            Firmware::Uefi {
                guest: UefiGuest::Vhd(BootImageConfig::from_vhd(
                    resolver.require_source(test_vhd::ALPINE_3_23_X64, RemoteAccess::Allow),
                )),
            },
            Firmware::Pcat {
                guest: PcatGuest::Iso(BootImageConfig::from_iso(
                    resolver.require_source(test_iso::FREE_BSD_13_2_X64, RemoteAccess::Allow),
                )),
            },
        )
    };
    let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
    let _ = requirements(&ArtifactResolver::collector(&mut reqs));
    let artifacts = reqs
        .resolve(FolderResolver {
            root: dir.path().into(),
            test_name: "t".into(),
        })
        .unwrap();
    let (uefi, pcat) = requirements(&ArtifactResolver::resolver(&artifacts));
    assert_eq!(uefi.os_flavor(), Some(crate::OsFlavor::Linux));
    let drive = uefi.boot_drive().unwrap();
    assert_eq!(
        drive.disk,
        Some(crate::Disk::Differencing(DiskPath::Remote {
            url: "http://127.0.0.1:9/ALPINE_3_23_X64.vhd?sig=SECRET".into()
        }))
    );
    assert_eq!(drive.artifact, Some(test_vhd::ALPINE_3_23_X64.erase()));
    assert!(!format!("{drive:?}").contains("SECRET"));
    let dvd = pcat.boot_drive().unwrap();
    assert!(dvd.is_dvd);
    assert_eq!(
        dvd.disk,
        Some(crate::Disk::Differencing(DiskPath::Local(
            dir.path().join("FREE_BSD_13_2_X64")
        )))
    );

    // The OpenVMM backend turns the remote one into a lazy stack, the
    // Hyper-V backend refuses it.
    let openvmm = OpenVmmPetriBackend::with_cache_dir(dir.path().join("cache"));
    let stack = openvmm.translate_drive(&drive).unwrap().disk.unwrap();
    assert_eq!(stack.layers.len(), 3);
    let err = HyperVPetriBackend::default()
        .translate_drive(&drive)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("remote disk artifacts are not supported"),
        "{err}"
    );
    assert!(err.contains("download-image --artifacts"), "{err}");
}

#[test]
fn no_boot_drive_without_boot_image() {
    assert!(Firmware::linux_direct().boot_drive().is_none());
    assert!(
        Firmware::Uefi {
            guest: UefiGuest::None
        }
        .boot_drive()
        .is_none()
    );
}
