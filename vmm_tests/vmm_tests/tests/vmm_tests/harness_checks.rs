//! Checks of the harness itself, run by the harness: each invokes this
//! very test binary (`std::env::current_exe()`) the way `cargo nextest`
//! and `download-image --for-tests` do, and checks what it prints.

use anyhow::Context as _;
use anyhow::ensure;
use petri::ArtifactListOutput;
use petri::ArtifactResolver;
use petri::TestCase;
use petri::TestCaseRegistration;
use std::process::Command;
use vmm_test_images::KnownTestArtifacts;

const OPENVMM_UBUNTU: &str = "boot::openvmm_uefi_x64_ubuntu_2404_server_x64::boot";
const HYPERV_UBUNTU: &str = "boot::hyperv_uefi_x64_ubuntu_2404_server_x64::boot";
const UBUNTU_ID: &str = "petri_artifacts_vmm_test::artifacts::test_vhd::UBUNTU_2404_SERVER_X64";

/// Runs this test binary with `args`; `PETRI_REMOTE_ARTIFACTS` is removed
/// unless given in `env`.
fn harness(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the test binary")?;
    let mut cmd = Command::new(&exe);
    cmd.args(args).env_remove("PETRI_REMOTE_ARTIFACTS");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {}", exe.display()))?;
    let stdout = String::from_utf8(out.stdout).context("stdout is not UTF-8")?;
    ensure!(
        out.status.success(),
        "{} {args:?} failed with {}:\n{stdout}\n{}",
        exe.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
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

fn is_vm_test(name: &str) -> bool {
    name.starts_with("boot::")
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
        } else if name.contains("::openvmm_") {
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
        "no OpenVMM config allows a remote image"
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
        if !is_vm_test(name) {
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

petri::inventory::submit!(TestCaseRegistration::new(module_path!(), policy_case));
petri::inventory::submit!(TestCaseRegistration::new(module_path!(), listing_case));
petri::inventory::submit!(TestCaseRegistration::new(module_path!(), forced_run_case));
