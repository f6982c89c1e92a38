//! Resolver scenarios through the public API, with temp dirs and an
//! explicit [`ResolverEnv`] (the process environment is never mutated).

use petri_artifact_resolver_openvmm_known_paths::BaseUrlError;
use petri_artifact_resolver_openvmm_known_paths::LocalArtifactNotFound;
use petri_artifact_resolver_openvmm_known_paths::OpenvmmKnownPathsTestArtifactResolver;
use petri_artifact_resolver_openvmm_known_paths::ResolverEnv;
use petri_artifact_resolver_openvmm_known_paths::SearchOutcome;
use petri_artifact_resolver_openvmm_known_paths::UnknownArtifact;
use petri_artifact_resolver_openvmm_known_paths::find_workspace_root;
use petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY;
use petri_artifacts_core::ArtifactResolutionError;
use petri_artifacts_core::ArtifactResolver;
use petri_artifacts_core::ArtifactSource;
use petri_artifacts_core::RemoteAccess;
use petri_artifacts_core::RemoteOverride;
use petri_artifacts_core::ResolveTestArtifact;
use petri_artifacts_core::TestArtifactRequirements;
use petri_artifacts_vmm_test::artifacts::test_iso;
use petri_artifacts_vmm_test::artifacts::test_vhd;
use std::path::Path;
use std::path::PathBuf;
use tempfile::TempDir;
use vmm_test_images::KnownTestArtifacts;

const UBUNTU_FILE: &str = "ubuntu-24.04-server-cloudimg-amd64.vhd";
const AZURE_UBUNTU: &str =
    "https://hvlitetestvhds.blob.core.windows.net/vhds/ubuntu-24.04-server-cloudimg-amd64.vhd";

/// A fake workspace: `<tmp>/ws` (with `images/`) and `<tmp>/custom`.
struct Fixture {
    _tmp: TempDir,
    root: PathBuf,
    custom: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("ws");
        let custom = tmp.path().join("custom");
        std::fs::create_dir_all(root.join("images")).unwrap();
        std::fs::create_dir_all(&custom).unwrap();
        Self {
            _tmp: tmp,
            root,
            custom,
        }
    }

    /// No env vars set.
    fn env(&self) -> ResolverEnv {
        ResolverEnv::with_workspace_root(&self.root)
    }

    /// `VMM_TEST_IMAGES` = the custom folder.
    fn env_custom(&self) -> ResolverEnv {
        ResolverEnv {
            images_dir: Some(self.custom.clone()),
            ..self.env()
        }
    }

    fn resolver(&self, env: ResolverEnv) -> OpenvmmKnownPathsTestArtifactResolver {
        OpenvmmKnownPathsTestArtifactResolver::with_env("suite::my_test", env)
    }
}

fn touch(path: &Path) {
    std::fs::write(path, b"not really a disk").unwrap();
}

fn full(err: &anyhow::Error) -> String {
    format!("{err:#} | {err:?}")
}

#[test]
fn local_hit_in_vmm_test_images() {
    let fx = Fixture::new();
    let file = fx.custom.join(UBUNTU_FILE);
    touch(&file);
    let r = fx.resolver(fx.env_custom());
    let h = test_vhd::UBUNTU_2404_SERVER_X64.erase();
    assert_eq!(r.resolve(h).unwrap(), file);
    assert_eq!(r.resolve_source(h).unwrap(), ArtifactSource::Local(file));
}

#[test]
fn local_hit_in_default_images_folder() {
    let fx = Fixture::new();
    let file = fx.root.join("images").join(UBUNTU_FILE);
    touch(&file);
    let h = test_vhd::UBUNTU_2404_SERVER_X64.erase();
    // Without VMM_TEST_IMAGES it is found...
    assert_eq!(fx.resolver(fx.env()).resolve(h).unwrap(), file);
    // ...but VMM_TEST_IMAGES replaces the default folder, so a run can make
    // an image stream even though the workspace holds a copy.
    let err = fx.resolver(fx.env_custom()).resolve(h).unwrap_err();
    assert!(format!("{err:#}").contains("custom"), "{err:#}");
    let remote = fx.resolver(fx.env_custom()).resolve_source(h).unwrap();
    assert!(
        matches!(remote, ArtifactSource::Remote { .. }),
        "{remote:?}"
    );
}

#[test]
fn vmm_test_images_wins_over_the_default_folder() {
    let fx = Fixture::new();
    touch(&fx.root.join("images").join(UBUNTU_FILE));
    touch(&fx.custom.join(UBUNTU_FILE));
    let h = test_vhd::UBUNTU_2404_SERVER_X64.erase();
    assert_eq!(
        fx.resolver(fx.env_custom()).resolve(h).unwrap(),
        fx.custom.join(UBUNTU_FILE)
    );
}

#[test]
fn relative_vmm_test_images_is_relative_to_the_workspace_root() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.root.join("my-images")).unwrap();
    touch(&fx.root.join("my-images").join(UBUNTU_FILE));
    let env = ResolverEnv {
        images_dir: Some("my-images".into()),
        ..fx.env()
    };
    assert_eq!(
        fx.resolver(env)
            .resolve(test_vhd::UBUNTU_2404_SERVER_X64.erase())
            .unwrap(),
        fx.root.join("my-images").join(UBUNTU_FILE)
    );
}

#[test]
fn local_miss_remote_allowed_default_azure_url() {
    let fx = Fixture::new();
    let r = fx.resolver(fx.env_custom());
    let src = r
        .resolve_source(test_vhd::UBUNTU_2404_SERVER_X64.erase())
        .unwrap();
    assert_eq!(
        src,
        ArtifactSource::Remote {
            url: AZURE_UBUNTU.into()
        }
    );
    // Same answer for the ISO (flat) and a VMGS.
    let iso = r
        .resolve_source(test_iso::FREE_BSD_13_2_X64.erase())
        .unwrap();
    assert_eq!(
        iso.remote_url(),
        Some(
            "https://hvlitetestvhds.blob.core.windows.net/vhds/FreeBSD-13.2-RELEASE-amd64-dvd1.iso"
        )
    );
}

#[test]
fn local_miss_remote_allowed_custom_base() {
    let fx = Fixture::new();
    for (base, expected) in [
        (
            "http://127.0.0.1:8080/mirror/",
            format!("http://127.0.0.1:8080/mirror/{UBUNTU_FILE}"),
        ),
        (
            "https://cdn.example.test",
            format!("https://cdn.example.test/{UBUNTU_FILE}"),
        ),
        (
            // Azurite, path style, with a SAS token: the query is kept as
            // the query of the artifact URL.
            "http://127.0.0.1:10000/devstoreaccount1/vhds?sv=2024-01-01&sr=c&sig=SECRET%2Fx",
            format!(
                "http://127.0.0.1:10000/devstoreaccount1/vhds/{UBUNTU_FILE}?sv=2024-01-01&sr=c&sig=SECRET%2Fx"
            ),
        ),
    ] {
        let env = ResolverEnv {
            base_url: Some(base.into()),
            ..fx.env_custom()
        };
        let src = fx
            .resolver(env)
            .resolve_source(test_vhd::UBUNTU_2404_SERVER_X64.erase())
            .unwrap();
        assert_eq!(src.remote_url(), Some(expected.as_str()), "{base}");
        let shown = format!("{src} {src:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
    }
}

#[test]
fn local_hit_wins_over_remote() {
    let fx = Fixture::new();
    touch(&fx.custom.join(UBUNTU_FILE));
    let env = ResolverEnv {
        base_url: Some("http://127.0.0.1:1/x".into()),
        ..fx.env_custom()
    };
    let src = fx
        .resolver(env)
        .resolve_source(test_vhd::UBUNTU_2404_SERVER_X64.erase())
        .unwrap();
    assert_eq!(src, ArtifactSource::Local(fx.custom.join(UBUNTU_FILE)));
}

#[test]
fn local_miss_local_only_names_paths_and_command() {
    let fx = Fixture::new();
    let r = fx.resolver(fx.env_custom());
    let err = r
        .resolve(test_vhd::UBUNTU_2404_SERVER_X64.erase())
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("Ubuntu2404ServerX64Vhd"), "{msg}");
    assert!(msg.contains("UBUNTU_2404_SERVER_X64"), "{msg}");
    let custom = fx.custom.join(UBUNTU_FILE);
    assert!(msg.contains(&custom.display().to_string()), "{msg}");
    assert!(
        msg.contains("cargo xtask guest-test download-image --artifacts Ubuntu2404ServerX64Vhd"),
        "{msg}"
    );
    let typed = err.downcast_ref::<LocalArtifactNotFound>().unwrap();
    assert_eq!(typed.artifact, KnownTestArtifacts::Ubuntu2404ServerX64Vhd);
    let searched: Vec<_> = typed.searched.iter().map(|s| s.path.clone()).collect();
    // VMM_TEST_IMAGES replaces the default folder: it is the one searched.
    assert_eq!(searched, [custom]);
    assert!(
        typed
            .searched
            .iter()
            .all(|s| matches!(s.outcome, SearchOutcome::Missing))
    );
}

#[test]
fn a_directory_with_the_image_name_is_not_a_hit() {
    let fx = Fixture::new();
    std::fs::create_dir_all(fx.custom.join(UBUNTU_FILE)).unwrap();
    let err = fx
        .resolver(fx.env_custom())
        .resolve(test_vhd::UBUNTU_2404_SERVER_X64.erase())
        .unwrap_err();
    assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
}

#[test]
fn vhdx_resolves_to_the_store_like_any_disk() {
    let fx = Fixture::new();
    let env = ResolverEnv {
        base_url: Some("http://127.0.0.1:8080/mirror?sig=SECRET".into()),
        ..fx.env_custom()
    };
    let r = fx.resolver(env);
    let h = test_vhd::WINDOWS_11_ENTERPRISE_AARCH64.erase();
    match r.resolve_source(h).unwrap() {
        ArtifactSource::Remote { url } => assert_eq!(
            url,
            "http://127.0.0.1:8080/mirror/\
             windows11preview-arm64-win11-24h2-ent-26100.3775.250406-1.vhdx?sig=SECRET"
        ),
        other => panic!("expected a remote source, got {other:?}"),
    }
    // With the file present it resolves locally.
    touch(
        &fx.custom
            .join(KnownTestArtifacts::Windows11EnterpriseAarch64Vhdx.file_name()),
    );
    assert!(matches!(
        r.resolve_source(h).unwrap(),
        ArtifactSource::Local(_)
    ));
}

#[test]
fn kernel_is_never_remote_and_keeps_the_original_error() {
    use petri_artifacts_vmm_test::artifacts::test_linux_direct;
    let fx = Fixture::new();
    let env = ResolverEnv {
        base_url: Some("http://127.0.0.1:8080/mirror?sig=SECRET".into()),
        ..fx.env_custom()
    };
    let r = fx.resolver(env);
    let h = test_linux_direct::PETRI_TEST_GUEST_KERNEL_X64.erase();
    let err = r.resolve_source(h).unwrap_err();
    // The error is the local lookup's error itself, not a new one.
    let typed = err.downcast_ref::<LocalArtifactNotFound>().unwrap();
    assert_eq!(typed.artifact, KnownTestArtifacts::PetriTestGuestX64Kernel);
    assert_eq!(err.chain().count(), 1);
    let msg = full(&err);
    assert!(msg.contains("cannot be read remotely"), "{msg}");
    assert!(msg.contains("cargo xtask guest-test build-image"), "{msg}");
    assert!(
        !msg.contains("SECRET") && !msg.contains("127.0.0.1"),
        "{msg}"
    );
}

#[test]
fn vhdx_is_local_only_where_the_backend_says_so() {
    let fx = Fixture::new();
    let r = fx.resolver(fx.env_custom());
    // OpenVMM and QEMU allow remote access: the VHDX may stream.
    let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
    reqs.require(
        test_vhd::WINDOWS_11_ENTERPRISE_AARCH64,
        RemoteAccess::Allow,
        false,
    );
    assert_eq!(
        reqs.access(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64),
        Some(RemoteAccess::Allow)
    );
    // Hyper-V needs it locally: a miss names the download command.
    let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
    reqs.require(
        test_vhd::WINDOWS_11_ENTERPRISE_AARCH64,
        RemoteAccess::LocalOnly,
        false,
    );
    assert_eq!(
        reqs.access(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64),
        Some(RemoteAccess::LocalOnly)
    );
    let err = reqs.resolve(&r).unwrap_err();
    assert!(
        format!("{err:#}").contains("download-image --artifacts Windows11EnterpriseAarch64Vhdx")
    );
}

#[test]
fn petri_remote_artifacts_0_forces_local_through_requirements() {
    let fx = Fixture::new();
    let r = fx.resolver(fx.env_custom());
    let over = RemoteOverride::parse(Some("0"));
    assert_eq!(over, RemoteOverride::ForceLocal);

    // The same requirement closure a test would have.
    let mut reqs = TestArtifactRequirements::with_override(over);
    let _ = ArtifactResolver::collector(&mut reqs)
        .require_source(test_vhd::UBUNTU_2404_SERVER_X64, RemoteAccess::Allow);
    assert_eq!(
        reqs.access(test_vhd::UBUNTU_2404_SERVER_X64),
        Some(RemoteAccess::LocalOnly)
    );
    // Missing locally: an error (never a URL), with the download command.
    let err = reqs.resolve(&r).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("--artifacts Ubuntu2404ServerX64Vhd"), "{msg}");
    assert!(!msg.contains("https://"), "{msg}");

    // Present locally: the local file.
    touch(&fx.custom.join(UBUNTU_FILE));
    let arts = reqs.resolve(&r).unwrap();
    assert_eq!(
        arts.get_source(test_vhd::UBUNTU_2404_SERVER_X64),
        &ArtifactSource::Local(fx.custom.join(UBUNTU_FILE))
    );

    // Without the override, the same requirement resolves remotely when
    // the file is missing.
    std::fs::remove_file(fx.custom.join(UBUNTU_FILE)).unwrap();
    let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::parse(Some("1")));
    let _ = ArtifactResolver::collector(&mut reqs)
        .require_source(test_vhd::UBUNTU_2404_SERVER_X64, RemoteAccess::Allow);
    let arts = reqs.resolve(&r).unwrap();
    assert_eq!(
        arts.get_source(test_vhd::UBUNTU_2404_SERVER_X64)
            .remote_url(),
        Some(AZURE_UBUNTU)
    );
    // And resolve_with_override applies a late override too.
    let err = reqs
        .resolve_with_override(&r, RemoteOverride::ForceLocal)
        .unwrap_err();
    assert!(format!("{err:#}").contains("not available locally"));
}

#[test]
fn error_chain_keeps_the_original_cause() {
    let fx = Fixture::new();
    let r = fx.resolver(fx.env_custom());
    let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
    reqs.require(test_vhd::ALPINE_3_23_X64, RemoteAccess::LocalOnly, false)
        .require(test_vhd::FREE_BSD_13_2_X64, RemoteAccess::LocalOnly, false)
        .require(test_iso::FREE_BSD_13_2_X64, RemoteAccess::Allow, false);
    let err = reqs.resolve(&r).unwrap_err();
    let agg = err.downcast_ref::<ArtifactResolutionError>().unwrap();
    // Every failed required artifact, each with its typed cause; the ISO
    // resolved remotely.
    let failed: Vec<_> = agg
        .failures()
        .iter()
        .map(|f| {
            f.error
                .downcast_ref::<LocalArtifactNotFound>()
                .unwrap()
                .artifact
        })
        .collect();
    assert_eq!(
        failed,
        [
            KnownTestArtifacts::Alpine323X64Vhd,
            KnownTestArtifacts::FreeBsd13_2X64Vhd
        ]
    );
    let msg = format!("{err:#}");
    assert!(msg.contains("--artifacts Alpine323X64Vhd"), "{msg}");
    assert!(msg.contains("--artifacts FreeBsd13_2X64Vhd"), "{msg}");
    assert!(!msg.contains("FreeBsd13_2X64Iso"), "{msg}");
}

#[test]
fn malformed_base_url_is_an_error_with_cause_and_redacted_value() {
    let fx = Fixture::new();
    for base in [
        "ftp://mirror.example/vhds?sv=1&sig=SECRET",
        "https://:8080/vhds?sig=SECRET",
        "https://h:70000/vhds?sig=SECRET",
        "https://h/vhds?sig=SECRET#x",
        "https://USER:SECRET@/vhds",
        "http//missing-colon?sig=SECRET",
    ] {
        let env = ResolverEnv {
            base_url: Some(base.into()),
            ..fx.env_custom()
        };
        let err = fx
            .resolver(env)
            .resolve_source(test_vhd::UBUNTU_2404_SERVER_X64.erase())
            .unwrap_err();
        let msg = full(&err);
        assert!(msg.contains("PETRI_ARTIFACT_BASE_URL"), "{msg}");
        assert!(msg.contains("Ubuntu2404ServerX64Vhd"), "{msg}");
        assert!(!msg.contains("SECRET"), "{base}: {msg}");
        // The typed cause is in the chain.
        let cause = err
            .chain()
            .find_map(|e| e.downcast_ref::<BaseUrlError>())
            .unwrap();
        assert_eq!(cause.var, "PETRI_ARTIFACT_BASE_URL");
        assert!(!cause.value.contains("SECRET"));

        // Through the requirements too.
        let env = ResolverEnv {
            base_url: Some(base.into()),
            ..fx.env_custom()
        };
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        reqs.require(test_vhd::UBUNTU_2404_SERVER_X64, RemoteAccess::Allow, false);
        let err = reqs.resolve(fx.resolver(env)).unwrap_err();
        let msg = full(&err);
        assert!(msg.contains("PETRI_ARTIFACT_BASE_URL"), "{msg}");
        assert!(!msg.contains("SECRET"), "{base}: {msg}");
    }
}

#[test]
fn a_malformed_base_url_does_not_matter_when_the_file_is_local() {
    let fx = Fixture::new();
    touch(&fx.custom.join(UBUNTU_FILE));
    let env = ResolverEnv {
        base_url: Some("not a url".into()),
        ..fx.env_custom()
    };
    assert!(matches!(
        fx.resolver(env)
            .resolve_source(test_vhd::UBUNTU_2404_SERVER_X64.erase())
            .unwrap(),
        ArtifactSource::Local(_)
    ));
}

#[test]
fn test_log_directory_default_and_override() {
    let fx = Fixture::new();
    // Default: <workspace>/target/test-output/<test name>, created.
    let dir = fx
        .resolver(fx.env())
        .resolve(TEST_LOG_DIRECTORY.erase())
        .unwrap();
    assert_eq!(dir, fx.root.join("target/test-output/suite__my_test"));
    assert!(dir.is_dir());
    // CARGO_TARGET_DIR moves it.
    let env = ResolverEnv {
        target_dir: Some(fx.custom.join("tgt")),
        ..fx.env()
    };
    let dir = fx
        .resolver(env)
        .resolve(TEST_LOG_DIRECTORY.erase())
        .unwrap();
    assert_eq!(dir, fx.custom.join("tgt/test-output/suite__my_test"));
    // TEST_OUTPUT_PATH wins.
    let env = ResolverEnv {
        test_output_path: Some(fx.custom.join("out")),
        target_dir: Some(fx.custom.join("tgt")),
        ..fx.env()
    };
    let r = OpenvmmKnownPathsTestArtifactResolver::with_env("other::test", env);
    let src = r.resolve_source(TEST_LOG_DIRECTORY.erase()).unwrap();
    assert_eq!(
        src,
        ArtifactSource::Local(fx.custom.join("out/other__test"))
    );
    assert!(fx.custom.join("out/other__test").is_dir());
}

#[test]
fn test_log_directory_creation_failure_keeps_the_io_error() {
    let fx = Fixture::new();
    // A file where the output root should be.
    let blocker = fx.custom.join("blocker");
    touch(&blocker);
    let env = ResolverEnv {
        test_output_path: Some(blocker.clone()),
        ..fx.env()
    };
    let err = fx
        .resolver(env)
        .resolve(TEST_LOG_DIRECTORY.erase())
        .unwrap_err();
    assert!(format!("{err:#}").contains("log directory"), "{err:#}");
    assert!(
        err.chain()
            .any(|e| e.downcast_ref::<std::io::Error>().is_some())
    );
}

#[test]
fn unknown_artifacts_are_errors() {
    mod other {
        petri_artifacts_core::declare_blob_artifacts! {
            /// Not in the catalog.
            NOT_IN_CATALOG,
        }
    }
    let fx = Fixture::new();
    let r = fx.resolver(fx.env());
    for err in [
        r.resolve(other::NOT_IN_CATALOG.erase()).unwrap_err(),
        r.resolve_source(other::NOT_IN_CATALOG.erase()).unwrap_err(),
    ] {
        assert!(err.downcast_ref::<UnknownArtifact>().is_some());
        assert!(err.to_string().contains("NOT_IN_CATALOG"), "{err}");
    }
}

#[test]
fn download_helpers_for_xtask() {
    let fx = Fixture::new();
    let env = ResolverEnv {
        base_url: Some("http://127.0.0.1:9/m/?sig=S".into()),
        ..fx.env_custom()
    };
    assert_eq!(env.download_dir(), fx.custom);
    assert_eq!(
        env.download_url(KnownTestArtifacts::Windows11EnterpriseAarch64Vhdx)
            .unwrap(),
        "http://127.0.0.1:9/m/windows11preview-arm64-win11-24h2-ent-26100.3775.250406-1.vhdx?sig=S"
    );
    assert_eq!(fx.env().download_dir(), fx.root.join("images"));
    assert_eq!(
        fx.env().image_search_dirs(),
        [fx.root.join("images")],
        "no duplicate when VMM_TEST_IMAGES is unset"
    );
}

#[test]
fn workspace_root_detection() {
    let fx = Fixture::new();
    let nested = fx.root.join("a/b/c");
    std::fs::create_dir_all(&nested).unwrap();
    assert_eq!(find_workspace_root(&nested), None);
    touch(&fx.root.join("Cargo.lock"));
    assert_eq!(find_workspace_root(&nested), Some(fx.root.clone()));
    // rust-toolchain.toml is preferred over a nearer Cargo.lock.
    touch(&fx.root.join("a/Cargo.lock"));
    touch(&fx.root.join("rust-toolchain.toml"));
    assert_eq!(find_workspace_root(&nested), Some(fx.root.clone()));
    // The real one holds this repository's toolchain file.
    let real = petri_artifact_resolver_openvmm_known_paths::workspace_root();
    assert!(real.join("rust-toolchain.toml").is_file(), "{real:?}");
}

/// Child half of `process_env_is_read_by_new`: resolves with the process
/// environment and prints the outcome.
#[test]
#[ignore = "run by process_env_is_read_by_new in a child process"]
fn child_resolves_from_process_env() {
    let r = OpenvmmKnownPathsTestArtifactResolver::new("child::test");
    let env = r.env();
    println!("IMAGES={:?}", env.images_dir);
    println!("OUTPUT={:?}", env.test_output_root());
    println!("TARGET={:?}", env.target_dir());
    match r.resolve_source(test_vhd::UBUNTU_2404_SERVER_X64.erase()) {
        Ok(src) => println!("SOURCE={}", src.remote_url().unwrap_or("local")),
        Err(err) => println!("ERROR={err:#}"),
    }
}

/// `new()` reads VMM_TEST_IMAGES, PETRI_ARTIFACT_BASE_URL,
/// TEST_OUTPUT_PATH and CARGO_TARGET_DIR; tested in a child process so this
/// process's environment is never mutated.
#[test]
fn process_env_is_read_by_new() {
    let fx = Fixture::new();
    let run = |base: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_resolves_from_process_env",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("VMM_TEST_IMAGES", &fx.custom)
            .env("PETRI_ARTIFACT_BASE_URL", base)
            .env("TEST_OUTPUT_PATH", fx.custom.join("out"))
            .env("CARGO_TARGET_DIR", fx.custom.join("tgt"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let stdout = run("http://127.0.0.1:8080/m?sig=S");
    assert!(
        stdout.contains(&format!("IMAGES=Some({:?})", fx.custom)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("OUTPUT={:?}", fx.custom.join("out"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("TARGET={:?}", fx.custom.join("tgt"))),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "SOURCE=http://127.0.0.1:8080/m/{UBUNTU_FILE}?sig=S"
        )),
        "{stdout}"
    );
    let stdout = run("gopher://h/x?sig=SECRET");
    assert!(stdout.contains("ERROR="), "{stdout}");
    assert!(stdout.contains("PETRI_ARTIFACT_BASE_URL"), "{stdout}");
    assert!(!stdout.contains("SECRET"), "{stdout}");
}
