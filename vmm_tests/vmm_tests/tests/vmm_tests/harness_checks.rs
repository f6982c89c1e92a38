//! Checks of the harness itself, run by the harness: each invokes this
//! very test binary (`std::env::current_exe()`) the way `cargo nextest`
//! and `download-image --for-tests` do, and checks what it prints.

use anyhow::Context as _;
use anyhow::ensure;
use petri::ArtifactListOutput;
use petri::ArtifactResolver;
use petri::TestCase;
use petri::TestCaseRegistration;
use petri_artifacts_vmm_test::artifacts::test_vhd;
use std::process::Command;
use vmm_test_images::KnownTestArtifacts;

const OPENVMM_UBUNTU: &str = "boot::openvmm_uefi_x64_ubuntu_2404_server_x64::boot";
const HYPERV_UBUNTU: &str = "boot::hyperv_uefi_x64_ubuntu_2404_server_x64::boot";
/// Makes [`resolution_failure_helper_case`] require an image.
const SELF_CHECK_ENV: &str = "VMM_TESTS_HARNESS_SELF_CHECK";
const HELPER: &str = "harness_checks::resolution_failure_helper";
const UBUNTU_ID: &str = "petri_artifacts_vmm_test::artifacts::test_vhd::UBUNTU_2404_SERVER_X64";

/// Runs this test binary with `args`; `PETRI_REMOTE_ARTIFACTS` and the
/// self-check switch are removed unless given in `env`. Returns whether it
/// succeeded, its stdout and its stderr.
fn run_harness(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String, String)> {
    let exe = std::env::current_exe().context("cannot find the test binary")?;
    let mut cmd = Command::new(&exe);
    cmd.args(args)
        .env_remove("PETRI_REMOTE_ARTIFACTS")
        .env_remove(SELF_CHECK_ENV);
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {}", exe.display()))?;
    let stdout = String::from_utf8(out.stdout).context("stdout is not UTF-8")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    Ok((out.status.success(), stdout, stderr))
}

/// Like [`run_harness`], failing unless the binary succeeded.
fn harness(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let (ok, stdout, stderr) = run_harness(args, env)?;
    ensure!(ok, "test binary {args:?} failed:\n{stdout}\n{stderr}");
    Ok(stdout)
}

/// Test names from `--list --format terse` (plus `extra` arguments).
fn list(extra: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut args = vec!["--list", "--format", "terse"];
    args.extend_from_slice(extra);
    let out = harness(&args, &[])?;
    Ok(out
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

fn required(filter: &[&str], env: &[(&str, &str)]) -> anyhow::Result<ArtifactListOutput> {
    let mut args = vec![petri::LIST_REQUIRED_ARTIFACTS_FLAG];
    args.extend_from_slice(filter);
    let out = harness(&args, env)?;
    serde_json::from_str(&out).with_context(|| format!("not ArtifactListOutput JSON: {out}"))
}

fn catalog_entry(id: &str) -> Option<KnownTestArtifacts> {
    KnownTestArtifacts::all().find(|a| a.handle().id() == id)
}

/// `{module}::{vmm}_{firmware}_{arch}[_{image}]::{fn}`, as the macro names
/// its cases.
fn is_vm_test(name: &str) -> bool {
    let parts: Vec<&str> = name.split("::").collect();
    parts.len() == 3
        && ["openvmm_", "hyperv_", "qemu_"]
            .iter()
            .any(|vmm| parts[1].starts_with(vmm))
}

/// Hyper-V configs require every image locally; OpenVMM configs leave
/// remote-capable boot images remote-allowed (extra artifacts and images
/// with no remote form stay local).
fn required_artifacts_follow_backend_policy() -> anyhow::Result<()> {
    let names = list(&[])?;
    let mut remote_allowed = 0;
    for name in names.iter().filter(|n| is_vm_test(n)) {
        let out = required(&["--exact", name], &[])?;
        for id in &out.local_only {
            ensure!(
                out.required.contains(id),
                "{name}: {id} local-only but not required"
            );
        }
        if name.contains("::hyperv_") {
            ensure!(!out.required.is_empty(), "{name} requires nothing");
            ensure!(
                out.local_only == out.required,
                "{name}: Hyper-V must require every image locally: {out:?}"
            );
        } else if name.contains("::openvmm_") || name.contains("::qemu_") {
            for id in &out.required {
                let entry = catalog_entry(id);
                let extra = id.contains("::test_vmgs::");
                let must_be_local = extra || entry.is_none_or(|e| !e.remote_capable());
                ensure!(
                    out.local_only.contains(id) == must_be_local,
                    "{name}: {id} local_only should be {must_be_local}: {out:?}"
                );
                if !must_be_local {
                    remote_allowed += 1;
                }
            }
        } else {
            anyhow::bail!("unexpected VM test name {name}");
        }
    }
    ensure!(
        remote_allowed > 0,
        "no OpenVMM or QEMU config allows a remote image"
    );

    // The two Ubuntu configs, spelled out.
    let openvmm = required(&["--exact", OPENVMM_UBUNTU], &[])?;
    ensure!(openvmm.required == [UBUNTU_ID], "{openvmm:?}");
    ensure!(openvmm.local_only.is_empty(), "{openvmm:?}");
    let hyperv = required(&["--exact", HYPERV_UBUNTU], &[])?;
    ensure!(hyperv.required == [UBUNTU_ID], "{hyperv:?}");
    ensure!(hyperv.local_only == [UBUNTU_ID], "{hyperv:?}");

    // Merged over both, the strictest wins; filters apply.
    let merged = required(&["ubuntu_2404_server_x64::boot"], &[])?;
    ensure!(
        merged.local_only.contains(&UBUNTU_ID.to_owned()),
        "{merged:?}"
    );
    let all_hyperv = required(&["::hyperv_"], &[])?;
    ensure!(all_hyperv.required.len() >= 3, "{all_hyperv:?}");
    ensure!(
        all_hyperv.local_only == all_hyperv.required,
        "{all_hyperv:?}"
    );

    // PETRI_REMOTE_ARTIFACTS=0 forces everything local.
    let forced = required(
        &["--exact", OPENVMM_UBUNTU],
        &[("PETRI_REMOTE_ARTIFACTS", "0")],
    )?;
    ensure!(forced.local_only == [UBUNTU_ID], "{forced:?}");
    Ok(())
}

/// `--list --format terse` (what nextest runs) lists every test;
/// `--ignored` lists exactly those this host cannot run, which on a host
/// without OpenVMM (and, off Windows, without Hyper-V) are the VM tests.
fn listing_marks_unrunnable_backends_ignored() -> anyhow::Result<()> {
    let all = list(&[])?;
    let ignored = list(&["--ignored"])?;
    for name in [
        OPENVMM_UBUNTU,
        HYPERV_UBUNTU,
        "boot::openvmm_linux_direct_x64::boot",
    ] {
        ensure!(all.iter().any(|n| n == name), "{name} not listed: {all:?}");
    }
    let vm_tests: Vec<&String> = all.iter().filter(|n| is_vm_test(n)).collect();
    ensure!(vm_tests.len() >= 14, "{vm_tests:?}");
    for name in &all {
        let expect_ignored =
            name.contains("::openvmm_") || (name.contains("::hyperv_") && !cfg!(windows));
        if expect_ignored {
            ensure!(ignored.contains(name), "{name} should be listed as ignored");
        }
        if !is_vm_test(name) && name != HELPER {
            ensure!(!ignored.contains(name), "{name} should not be ignored");
        }
    }
    Ok(())
}

/// Forcing an unrunnable test to run reports it ignored with the reason,
/// not failed.
fn forced_run_reports_the_reason() -> anyhow::Result<()> {
    let out = harness(&["--ignored", "--exact", OPENVMM_UBUNTU], &[])?;
    ensure!(
        out.contains("ignored (OpenVMM is not available on this host)"),
        "{out}"
    );
    ensure!(
        out.contains("1 ignored") && out.contains("0 failed"),
        "{out}"
    );
    if !cfg!(windows) {
        let out = harness(&["--ignored", "--exact", HYPERV_UBUNTU], &[])?;
        ensure!(
            out.contains("ignored (Hyper-V requires a Windows host)"),
            "{out}"
        );
    }
    Ok(())
}

/// A test whose artifact cannot be resolved reports the resolver's error
/// intact: the artifact, every path searched and the download command.
fn resolution_errors_reach_the_output() -> anyhow::Result<()> {
    let missing_dir =
        std::env::temp_dir().join(format!("vmm-tests-no-images-{}", std::process::id()));
    let missing = missing_dir.to_string_lossy().into_owned();
    let (ok, stdout, stderr) = run_harness(
        &["--ignored", "--exact", HELPER],
        &[(SELF_CHECK_ENV, "1"), ("VMM_TEST_IMAGES", &missing)],
    )?;
    if ok {
        // The workspace's own images folder holds the image.
        eprintln!("skipped: the Windows 11 aarch64 VHDX is available locally");
        return Ok(());
    }
    let known = KnownTestArtifacts::from_handle(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64.erase())
        .context("the VHDX is not in the catalog")?;
    ensure!(
        stdout.contains(&format!("---- {HELPER} ----")),
        "{stdout}\n{stderr}"
    );
    ensure!(stdout.contains(&known.download_command()), "{stdout}");
    ensure!(
        stdout.contains(&missing),
        "searched paths missing: {stdout}"
    );
    ensure!(stdout.contains("1 failed"), "{stdout}");
    Ok(())
}

/// Requires a local-only image when [`SELF_CHECK_ENV`] is set, so
/// [`resolution_errors_reach_the_output`] can watch it fail. Ignored, and
/// trivially passing when run without the switch.
fn resolution_failure_helper_case() -> TestCase {
    TestCase::new(
        "resolution_failure_helper",
        |resolver: &ArtifactResolver<'_>| {
            std::env::var_os(SELF_CHECK_ENV)
                .map(|_| resolver.require(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64))
        },
        |_params, _image| Ok(()),
    )
    .ignore(
        "helper of harness_checks::resolution_errors_reach_the_output \
         (fails on purpose only when VMM_TESTS_HARNESS_SELF_CHECK is set)",
    )
}

fn check(leaf: &'static str, run: fn() -> anyhow::Result<()>) -> TestCase {
    TestCase::new(
        leaf,
        |_: &ArtifactResolver<'_>| (),
        move |_params, ()| run(),
    )
}

fn policy_case() -> TestCase {
    check(
        "required_artifacts_follow_backend_policy",
        required_artifacts_follow_backend_policy,
    )
}

fn listing_case() -> TestCase {
    check(
        "listing_marks_unrunnable_backends_ignored",
        listing_marks_unrunnable_backends_ignored,
    )
}

fn forced_run_case() -> TestCase {
    check(
        "forced_run_reports_the_reason",
        forced_run_reports_the_reason,
    )
}

fn resolution_errors_case() -> TestCase {
    check(
        "resolution_errors_reach_the_output",
        resolution_errors_reach_the_output,
    )
}

petri::inventory::submit!(TestCaseRegistration::new(module_path!(), policy_case));
petri::inventory::submit!(TestCaseRegistration::new(
    module_path!(),
    resolution_errors_case
));
petri::inventory::submit!(TestCaseRegistration::new(
    module_path!(),
    resolution_failure_helper_case
));
petri::inventory::submit!(TestCaseRegistration::new(module_path!(), listing_case));
petri::inventory::submit!(TestCaseRegistration::new(module_path!(), forced_run_case));
