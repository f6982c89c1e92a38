//! The "external tool missing" rule for tests.

use std::path::Path;
use std::path::PathBuf;

/// Directories searched after `PATH` (nginx lives in `/usr/sbin`, which is
/// often not on a non-root user's `PATH`).
const EXTRA_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// Whether the environment says we run in CI (`CI=true`, or `CI=1`).
pub fn in_ci() -> bool {
    ci_env::in_ci()
}

/// Finds an executable by name on `PATH` and in the usual sbin
/// directories (or checks an absolute path).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_exe(p))
}

/// How to install a tool, for the skip/fail message.
pub fn install_hint(name: &str) -> &'static str {
    let base = name.rsplit('/').next().unwrap_or(name);
    match base {
        "nginx" => "apt-get install nginx-light (or nginx)",
        "qemu-img" | "qemu-nbd" | "qemu-io" => "apt-get install qemu-utils",
        "nbdkit" => "apt-get install nbdkit",
        "azurite" => "npm install -g azurite",
        "qemu-system-x86_64" => "apt-get install qemu-system-x86",
        "sqlite3" => "apt-get install sqlite3",
        _ => "install it with the system package manager",
    }
}

/// The rule for tests that need an external program:
/// - found: returns its path;
/// - missing and `CI=true`: panics with a clear message, so the test fails
///   (CI must not silently skip);
/// - missing otherwise: prints `skipping: <tool> not installed (<how to
///   install>)` and returns `None`; the test should return early.
///
/// ```no_run
/// let Some(nginx) = blob_test_servers::require_tool("nginx") else { return };
/// ```
pub fn require_tool(name: &str) -> Option<PathBuf> {
    if let Some(p) = find_tool(name) {
        return Some(p);
    }
    let hint = install_hint(name);
    if in_ci() {
        panic!("required tool `{name}` is not installed and CI=true: {hint}");
    }
    eprintln!("skipping: {name} not installed ({hint})");
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("/bin/sh").is_some());
        assert!(find_tool("definitely-not-a-tool-4711").is_none());
        assert!(find_tool("/nonexistent/definitely-not-a-tool").is_none());
    }

    #[test]
    fn missing_tool_skips_or_fails_by_ci() {
        let r = std::panic::catch_unwind(|| require_tool("definitely-not-a-tool-4711"));
        if in_ci() {
            let e = r.unwrap_err();
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains("definitely-not-a-tool-4711"), "{msg}");
            assert!(msg.contains("CI=true"), "{msg}");
        } else {
            assert!(r.unwrap().is_none());
        }
    }
}
