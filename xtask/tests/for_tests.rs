//! `download-image --for-tests`: the real vmm_tests binary (built by the
//! command itself, as for a user) decides which images are fetched.

mod common;

use blob_test_servers::FaultServer;
use common::*;
use vmm_test_images::KnownTestArtifacts;
use vmm_test_images::KnownTestArtifacts::*;

/// Serves every catalog image (small, distinct bytes) under `/vhds`.
fn serve_catalog() -> (FaultServer, String) {
    let server = FaultServer::start().expect("fault server");
    for (i, a) in KnownTestArtifacts::all().enumerate() {
        server.put_blob(
            &format!("/vhds/{}", a.file_name()),
            image(100 + i as u64, 3000 + i),
        );
    }
    let base = server.url("/vhds");
    (server, base)
}

fn for_tests(base: &str, out: &std::path::Path, filter: &str, extra: &[&str]) -> Run {
    let mut cmd = download_cmd();
    cmd.args(small_args(base, out))
        .args(["--for-tests", filter])
        .args(extra);
    run(&mut cmd)
}

fn names(list: &[KnownTestArtifacts]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|a| a.file_name().to_string()).collect();
    v.sort();
    v
}

/// Paths the server was asked for.
fn requested(server: &FaultServer) -> Vec<String> {
    let mut v: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.path().trim_start_matches("/vhds/").to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn for_tests_downloads_exactly_the_local_only_images_of_the_selected_tests() {
    let (server, base) = serve_catalog();

    // Hyper-V needs its disks locally; the VMGS of boot_with_vmgs is an
    // extra artifact, always local.
    let out = tempfile::tempdir().unwrap();
    let r = for_tests(&base, out.path(), "hyperv", &[]);
    assert!(r.ok, "{}", r.text);
    let expected = names(&[
        Gen1WindowsDataCenterCore2022X64Vhd,
        Gen2WindowsDataCenterCore2022X64Vhd,
        Ubuntu2404ServerX64Vhd,
        Windows11EnterpriseAarch64Vhdx,
        VmgsWithBootEntry,
    ]);
    assert_eq!(files_in(out.path()), expected, "{}", r.text);
    assert_eq!(requested(&server), expected);

    // An OpenVMM test streams its (blob-capable) disk: nothing to fetch...
    let out = tempfile::tempdir().unwrap();
    server.reset_stats();
    let r = for_tests(&base, out.path(), "openvmm_uefi_x64_alpine_3_23_x64", &[]);
    assert!(r.ok, "{}", r.text);
    assert!(files_in(out.path()).is_empty(), "{}", r.text);
    assert!(r.text.contains("Alpine323X64Vhd"), "{}", r.text);
    assert!(r.text.contains("--all-required"), "{}", r.text);
    assert_eq!(server.request_count(), 0);

    // ...unless every required image is asked for.
    let r = for_tests(
        &base,
        out.path(),
        "openvmm_uefi_x64_alpine_3_23_x64",
        &["--all-required"],
    );
    assert!(r.ok, "{}", r.text);
    assert_eq!(
        files_in(out.path()),
        names(&[Alpine323X64Vhd]),
        "{}",
        r.text
    );

    // --artifacts adds to the tests' selection.
    let out = tempfile::tempdir().unwrap();
    let r = for_tests(
        &base,
        out.path(),
        "hyperv_pcat_x64",
        &["--artifacts", "FreeBsd13_2X64Iso"],
    );
    assert!(r.ok, "{}", r.text);
    assert_eq!(
        files_in(out.path()),
        names(&[Gen1WindowsDataCenterCore2022X64Vhd, FreeBsd13_2X64Iso]),
        "{}",
        r.text
    );
}
