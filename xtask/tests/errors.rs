//! How xtask reports an error it returns: the chain of causes for the user,
//! without a backtrace even when `RUST_BACKTRACE=1` is set (as on many CI
//! machines).

mod common;

use common::*;

#[test]
fn a_user_error_prints_its_causes_without_a_backtrace() {
    let server = blob_test_servers::FaultServer::start().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut cmd = download_cmd();
    cmd.args(small_args(&server.url("/missing"), out.path()))
        .args(["--artifacts", NAME])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE");
    let r = run(&mut cmd);
    assert!(!r.ok, "{}", r.text);
    // The error and its causes, on one line.
    let line = r
        .text
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line: {}", r.text));
    assert!(line.contains(NAME), "{line}");
    assert!(line.contains("404"), "{line}");
    assert!(!r.text.contains("acktrace"), "{}", r.text);
    assert!(!r.text.contains("Caused by"), "{}", r.text);
}
