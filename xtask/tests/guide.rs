//! The Guide: its structure and links are consistent, it builds with
//! mdbook, its image table matches the catalog, and every
//! `download-image` command it shows is accepted by the real command
//! (run with `--dry-run`, so nothing is fetched).

#[path = "../src/guide_check.rs"]
mod guide_check;

mod common;

use std::path::Path;
use std::path::PathBuf;
use vmm_test_images::KnownTestArtifacts;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

fn page(name: &str) -> String {
    std::fs::read_to_string(root().join("Guide/src").join(name)).expect("Guide page")
}

fn all_pages() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join("Guide/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            out.push((name, std::fs::read_to_string(&path).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn summary_pages_links_and_includes_are_consistent() {
    guide_check::check_guide(&root().join("Guide")).unwrap();
}

#[test]
fn mdbook_builds_the_guide() {
    let Some(mdbook) = blob_test_servers::require_tool("mdbook") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let result = std::process::Command::new(mdbook)
        .arg("build")
        .arg(root().join("Guide"))
        .arg("--dest-dir")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "mdbook build failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    // The proxy config is included verbatim in the built page.
    let html = std::fs::read_to_string(out.path().join("scaling-out.html")).unwrap();
    assert!(html.contains("proxy_cache_key"), "include not expanded");
}

#[test]
fn the_image_table_matches_the_catalog() {
    let text = page("test-images.md");
    for a in KnownTestArtifacts::all() {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", a.cli_name())))
            .unwrap_or_else(|| panic!("no row for {a}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[2], format!("`{}`", a.file_name()), "{a}");
        assert_eq!(cells[3], a.size().to_string(), "{a}");
        let debug = format!("{:?}", a.format());
        let format = match debug.as_str() {
            "FixedVhd1" => "fixed VHD1",
            "Flat" => "flat",
            "Vhdx" => "VHDX",
            "File" => "file",
            other => other,
        };
        assert_eq!(cells[4], format, "{a}");
        assert_eq!(cells[5].starts_with("yes"), a.remote_capable(), "{a}");
        let obtained = if a.is_downloadable() {
            "download"
        } else {
            "build-image"
        };
        assert_eq!(cells[6], obtained, "{a}");
    }
    let rows = text.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(rows, KnownTestArtifacts::ALL.len());
}

#[test]
fn every_environment_variable_is_documented() {
    let text = page("environment.md");
    for var in [
        "PETRI_REMOTE_ARTIFACTS",
        "PETRI_CACHE_DIR",
        "PETRI_CACHE",
        "PETRI_CACHE_MAX_SIZE",
        "VMM_TEST_IMAGES",
        "PETRI_ARTIFACT_BASE_URL",
        "TEST_OUTPUT_PATH",
        "PETRI_IGNORE_UNSTABLE_FAILURES",
        "CI",
        "CARGO_TARGET_DIR",
        "RUST_LOG",
        "PETRI_QEMU",
        "PETRI_QEMU_ACCEL",
    ] {
        assert!(
            text.contains(&format!("| `{var}` |")),
            "{var} has no row in environment.md"
        );
    }
    assert!(text.contains(&vmm_test_images::default_base_url()));
    // Every PETRI_* variable the code reads has a row too.
    for var in petri_variables_in_code() {
        assert!(
            text.contains(&format!("| `{var}` |")),
            "{var} is read by the code but has no row in environment.md"
        );
    }
}

/// Every `PETRI_*` environment variable the workspace's Rust sources read:
/// `var("PETRI_...")`, `var_os("PETRI_...")`, clap's `env = "PETRI_..."`
/// and `const PETRI_X: &str = "PETRI_X"` (other `"PETRI_..."` strings are
/// log markers).
fn petri_variables_in_code() -> std::collections::BTreeSet<String> {
    let root = root();
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![
        root.join("crates"),
        root.join("vmm_tests"),
        root.join("xtask"),
    ];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    stack.push(p);
                }
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") || p.ends_with("guide.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            for (i, _) in text.match_indices("\"PETRI_") {
                let name: String = text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                let before = text[..i].trim_end();
                // A constant named after the variable holds its name.
                let named_const = format!("const {name}: &str =");
                if !(before.ends_with("var(")
                    || before.ends_with("var_os(")
                    || before.ends_with("env =")
                    || before.ends_with(&named_const))
                {
                    continue;
                }
                if text[i + 1 + name.len()..].starts_with('"') && name.len() > "PETRI_".len() {
                    found.insert(name);
                }
            }
        }
    }
    assert!(
        found.contains("PETRI_CACHE_DIR"),
        "the scan finds the known ones"
    );
    found
}

/// The `cargo xtask guest-test download-image ...` commands in ```sh
/// blocks, with backslash continuations joined.
fn download_commands() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, text) in all_pages() {
        let mut in_sh = false;
        let mut pending = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with("```") {
                in_sh = t == "```sh";
                continue;
            }
            if !in_sh {
                continue;
            }
            if let Some(cont) = t.strip_suffix('\\') {
                pending.push_str(cont);
                pending.push(' ');
                continue;
            }
            pending.push_str(t);
            let cmd = std::mem::take(&mut pending);
            if cmd.starts_with("cargo xtask guest-test download-image") {
                out.push((name.clone(), cmd));
            }
        }
    }
    out
}

#[test]
fn every_download_command_in_the_guide_is_accepted() {
    let commands = download_commands();
    assert!(commands.len() >= 5, "{commands:?}");
    for (page, cmd) in commands {
        let args: Vec<&str> = cmd
            .strip_prefix("cargo xtask guest-test download-image")
            .unwrap()
            .split_whitespace()
            .collect();
        let out = tempfile::tempdir().unwrap();
        let mut c = common::download_cmd();
        c.args(&args);
        if !args.contains(&"--dry-run") {
            c.arg("--dry-run");
        }
        // Keep the dry run away from the real images folder unless the
        // command names its own.
        if !args.contains(&"--output-folder") {
            c.arg("--output-folder").arg(out.path());
        }
        let r = common::run(&mut c);
        assert!(r.ok, "{page}: `{cmd}` failed:\n{}", r.text);
    }
}
