//! Helpers shared by the xtask integration tests: run the real xtask
//! binary, make images, read the download sidecar.

#![allow(dead_code)]

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// The image most tests download (served small, under its catalog name).
pub const NAME: &str = "Alpine323X64Vhd";
/// Its file name in the catalog.
pub const FILE: &str = "nocloud_alpine-3.23.2-x86_64-uefi-cloudinit-r0.vhd";
/// Piece size used by the tests (many pieces per small file).
pub const PIECE: u64 = 64 * 1024;

/// `cargo xtask guest-test download-image` with a hermetic environment.
pub fn download_cmd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["guest-test", "download-image"])
        .env_remove("VMM_TEST_IMAGES")
        .env_remove("PETRI_ARTIFACT_BASE_URL")
        .stdin(Stdio::null());
    cmd
}

/// The usual options for a small test download.
pub fn small_args(base_url: &str, out: &Path) -> Vec<String> {
    vec![
        "--base-url".into(),
        base_url.into(),
        "--output-folder".into(),
        out.display().to_string(),
        "--no-catalog-size-check".into(),
        "--piece-size".into(),
        PIECE.to_string(),
        "--jobs".into(),
        "4".into(),
    ]
}

/// The result of one run: status and both streams joined.
pub struct Run {
    pub ok: bool,
    pub text: String,
}

/// Runs `cmd` to completion.
pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("running xtask");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    Run {
        ok: status.success(),
        text,
    }
}

/// Runs a download of `NAME` with `extra` options and returns the result.
pub fn download(base_url: &str, out: &Path, extra: &[&str]) -> Run {
    let mut cmd = download_cmd();
    cmd.args(small_args(base_url, out))
        .args(["--artifacts", NAME])
        .args(extra);
    run(&mut cmd)
}

/// Deterministic image bytes.
pub fn image(seed: u64, len: usize) -> Vec<u8> {
    blob_test_servers::images::random_bytes(seed, len)
}

/// The sidecar beside `<out>/<FILE>.part`.
pub fn sidecar(out: &Path) -> PathBuf {
    out.join(format!("{FILE}.part.json"))
}

/// Bytes the sidecar records as on disk (0 if there is none).
pub fn recorded_bytes(out: &Path) -> u64 {
    let Ok(text) = std::fs::read_to_string(sidecar(out)) else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return 0;
    };
    v["completed"]
        .as_array()
        .map(|ranges| {
            ranges
                .iter()
                .filter_map(|r| Some(r[1].as_u64()? - r[0].as_u64()?))
                .sum()
        })
        .unwrap_or(0)
}

/// Waits (bounded poll) until the sidecar records at least `n` bytes.
pub fn wait_for_recorded(out: &Path, n: u64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if recorded_bytes(out) >= n {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("xtask exited ({status}) before recording {n} bytes");
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar never recorded {n} bytes (has {})",
            recorded_bytes(out)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SHA-256 of a file, hex.
pub fn sha(path: &Path) -> String {
    blob_test_servers::images::sha256_file(path).expect("hashing")
}

/// SHA-256 of bytes, hex.
pub fn sha_bytes(data: &[u8]) -> String {
    blob_test_servers::images::sha256_hex(data)
}

/// Names of the files in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}
