//! `--for-tests`: which catalog images the selected VMM tests need.
//!
//! The vmm_tests test binary (petri's harness) prints, for a libtest
//! filter, the merged artifact requirements of the tests it selects as
//! `petri_artifacts_core::ArtifactListOutput` JSON
//! (`--list-required-artifacts`). This module builds or locates that
//! binary, runs it, and maps the artifact ids to catalog entries through
//! the one catalog (`KnownTestArtifacts::handle`); there is no second
//! table of ids.
//!
//! Policy: only `local_only` artifacts are downloaded (Hyper-V tests, extra
//! artifacts such as VMGS files, images that cannot be read remotely);
//! every other required image can be streamed lazily by the tests. With
//! `--all-required`, every required catalog image is downloaded.

use anyhow::Context as _;
use anyhow::Result;
use anyhow::bail;
use petri_artifacts_core::ArtifactListOutput;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use vmm_test_images::KnownTestArtifacts;

/// The images selected from a test list.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct TestSelection {
    /// Catalog images to download, in catalog order.
    pub download: Vec<KnownTestArtifacts>,
    /// Required catalog images the tests may stream (not downloaded
    /// without `--all-required`), in catalog order.
    pub streamable: Vec<KnownTestArtifacts>,
    /// Catalog images the tests need locally that are built on this
    /// machine (`cargo xtask guest-test build-image`), not downloaded.
    pub built: Vec<KnownTestArtifacts>,
    /// Required ids that are not catalog images (not downloadable here).
    pub not_in_catalog: Vec<String>,
}

/// The catalog entry whose handle has the artifact id `id`.
pub(crate) fn catalog_entry(id: &str) -> Option<KnownTestArtifacts> {
    KnownTestArtifacts::all().find(|a| a.handle().id() == id)
}

/// Chooses the images to download from a test list: the `local_only`
/// ones, or every required one with `all_required`.
pub(crate) fn select(list: &ArtifactListOutput, all_required: bool) -> TestSelection {
    let mut sel = TestSelection::default();
    let mut wanted: Vec<&String> = list.required.iter().collect();
    // local_only is a subset of required by construction; be tolerant of a
    // list that says otherwise.
    for id in &list.local_only {
        if !wanted.contains(&id) {
            wanted.push(id);
        }
    }
    for id in wanted {
        let local = list.local_only.contains(id);
        match catalog_entry(id) {
            Some(a) if !a.is_downloadable() => {
                if local || all_required {
                    sel.built.push(a)
                }
            }
            Some(a) if local || all_required => sel.download.push(a),
            Some(a) => sel.streamable.push(a),
            None => sel.not_in_catalog.push(id.clone()),
        }
    }
    sel.download.sort();
    sel.download.dedup();
    sel.streamable.sort();
    sel.streamable.dedup();
    sel.built.sort();
    sel.built.dedup();
    sel.not_in_catalog.sort();
    sel.not_in_catalog.dedup();
    sel
}

/// Runs `binary --list-required-artifacts <filter>` and parses its JSON.
pub(crate) fn list_required(
    root: &Path,
    binary: &Path,
    filter: &str,
) -> Result<ArtifactListOutput> {
    let mut cmd = Command::new(binary);
    cmd.arg("--list-required-artifacts");
    if !filter.is_empty() {
        cmd.arg(filter);
    }
    let out = cmd
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list-required-artifacts {filter:?} failed ({}):\n{}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_list(&out.stdout).with_context(|| {
        format!(
            "{} --list-required-artifacts printed no artifact list (is it the vmm_tests binary?)",
            binary.display()
        )
    })
}

/// Parses the harness's list output.
pub(crate) fn parse_list(stdout: &[u8]) -> Result<ArtifactListOutput> {
    let text = std::str::from_utf8(stdout).context("output is not UTF-8")?;
    serde_json::from_str(text.trim()).context("parsing the artifact list JSON")
}

/// Builds the vmm_tests test binary (`cargo test -p vmm_tests --test
/// vmm_tests --no-run`) and returns its path from cargo's JSON messages.
pub(crate) fn build_vmm_tests(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("download-image: building the vmm_tests binary to list the tests' artifacts");
    let out = Command::new(cargo)
        .args([
            "test",
            "-p",
            "vmm_tests",
            "--test",
            "vmm_tests",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(root)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run for vmm_tests")?;
    if !out.status.success() {
        bail!("building the vmm_tests test binary failed ({})", out.status);
    }
    find_test_executable(&out.stdout, "vmm_tests")
        .context("cargo did not report the vmm_tests test executable")
}

/// Finds the executable of test target `name` in cargo's JSON messages.
pub(crate) fn find_test_executable(messages: &[u8], name: &str) -> Option<PathBuf> {
    String::from_utf8_lossy(messages)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == name)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "test"))
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;
    use KnownTestArtifacts::*;

    fn id(a: KnownTestArtifacts) -> String {
        a.handle().id().to_string()
    }

    fn fixture() -> ArtifactListOutput {
        // What `--list-required-artifacts hyperv` prints for the suite, plus
        // a streamable image and a non-catalog id.
        ArtifactListOutput {
            required: vec![
                id(Gen1WindowsDataCenterCore2022X64Vhd),
                id(Ubuntu2404ServerX64Vhd),
                id(Alpine323X64Vhd),
                id(VmgsWithBootEntry),
                id(PetriTestGuestX64Kernel),
                id(PetriTestGuestX64Raw),
                "petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY".into(),
            ],
            optional: vec![id(FreeBsd13_2X64Iso)],
            local_only: vec![
                id(Gen1WindowsDataCenterCore2022X64Vhd),
                id(Ubuntu2404ServerX64Vhd),
                id(VmgsWithBootEntry),
                id(PetriTestGuestX64Kernel),
            ],
        }
    }

    #[test]
    fn local_only_images_are_selected() {
        let sel = select(&fixture(), false);
        assert_eq!(
            sel.download,
            [
                Gen1WindowsDataCenterCore2022X64Vhd,
                Ubuntu2404ServerX64Vhd,
                VmgsWithBootEntry
            ]
        );
        assert_eq!(sel.streamable, [Alpine323X64Vhd]);
        // Built images are never downloaded; the streamable raw disk is
        // not mentioned.
        assert_eq!(sel.built, [PetriTestGuestX64Kernel]);
        assert_eq!(
            sel.not_in_catalog,
            ["petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY"]
        );
    }

    #[test]
    fn all_required_adds_streamable_but_not_optional() {
        let sel = select(&fixture(), true);
        assert_eq!(
            sel.download,
            [
                Gen1WindowsDataCenterCore2022X64Vhd,
                Ubuntu2404ServerX64Vhd,
                Alpine323X64Vhd,
                VmgsWithBootEntry
            ]
        );
        assert!(sel.streamable.is_empty());
        assert!(!sel.download.contains(&FreeBsd13_2X64Iso));
        assert_eq!(sel.built, [PetriTestGuestX64Raw, PetriTestGuestX64Kernel]);
    }

    #[test]
    fn every_catalog_id_maps_back() {
        for a in KnownTestArtifacts::all() {
            assert_eq!(catalog_entry(a.handle().id()), Some(a));
        }
        assert_eq!(catalog_entry("nope::NOPE"), None);
    }

    #[test]
    fn parses_harness_json_and_rejects_garbage() {
        let json = serde_json::to_string_pretty(&fixture()).unwrap();
        assert_eq!(parse_list(json.as_bytes()).unwrap(), fixture());
        assert!(parse_list(b"running 3 tests").is_err());
        assert!(parse_list(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn finds_the_test_executable_in_cargo_messages() {
        let msgs = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"vmm_tests","kind":["lib"]},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"vmm_tests","kind":["test"]},"executable":"/t/debug/deps/vmm_tests-abc"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\nnot json\n"
        );
        assert_eq!(
            find_test_executable(msgs.as_bytes(), "vmm_tests"),
            Some(PathBuf::from("/t/debug/deps/vmm_tests-abc"))
        );
        assert_eq!(find_test_executable(msgs.as_bytes(), "other"), None);
    }
}
