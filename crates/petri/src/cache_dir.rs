//! The persistent cache directory rule.
//!
//! Remote disks opened by a backend keep the blocks they read in a SQLite
//! read cache under this directory, shared by every test process on the
//! machine. The rule:
//!
//! 1. `PETRI_CACHE_DIR`, if set and non-empty, used as given.
//! 2. Otherwise the per-OS user cache directory:
//!    - Linux and other Unix: `$XDG_CACHE_HOME/petri` if `XDG_CACHE_HOME`
//!      is an absolute path (the XDG spec says to ignore a relative one),
//!      else `$HOME/.cache/petri`;
//!    - macOS: `$HOME/Library/Caches/petri`;
//!    - Windows: `%LOCALAPPDATA%\petri\cache`.
//! 3. If none of those variables is usable, an error naming them. There is
//!    no silent fallback to the current directory.
//!
//! [`cache_dir_with`] is the pure rule (environment and OS injected) that
//! tests exercise; [`cache_dir`] applies it to the process environment.

use std::ffi::OsString;
use std::path::Path;
use std::path::PathBuf;

/// The variable that overrides the cache directory.
pub const PETRI_CACHE_DIR: &str = "PETRI_CACHE_DIR";

/// The operating-system families the rule distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostOs {
    /// Linux and other Unix systems (XDG rules).
    Linux,
    /// macOS.
    MacOs,
    /// Windows.
    Windows,
}

impl HostOs {
    /// The OS this binary was built for.
    pub const fn current() -> HostOs {
        if cfg!(windows) {
            HostOs::Windows
        } else if cfg!(target_os = "macos") {
            HostOs::MacOs
        } else {
            HostOs::Linux
        }
    }
}

/// No cache directory could be determined.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot determine the petri cache directory: set {PETRI_CACHE_DIR} \
     (none of {tried} is set to a usable value)"
)]
pub struct CacheDirError {
    tried: String,
}

fn non_empty(value: Option<OsString>) -> Option<OsString> {
    value.filter(|v| !v.is_empty())
}

/// The cache directory for `os`, reading variables through `env`.
pub fn cache_dir_with(
    env: impl Fn(&str) -> Option<OsString>,
    os: HostOs,
) -> Result<PathBuf, CacheDirError> {
    if let Some(dir) = non_empty(env(PETRI_CACHE_DIR)) {
        return Ok(PathBuf::from(dir));
    }
    let tried = match os {
        HostOs::Linux => {
            if let Some(xdg) = non_empty(env("XDG_CACHE_HOME")) {
                let xdg = PathBuf::from(xdg);
                if xdg.is_absolute() || xdg.starts_with("/") {
                    return Ok(xdg.join("petri"));
                }
            }
            if let Some(home) = non_empty(env("HOME")) {
                return Ok(Path::new(&home).join(".cache").join("petri"));
            }
            "PETRI_CACHE_DIR, XDG_CACHE_HOME, HOME"
        }
        HostOs::MacOs => {
            if let Some(home) = non_empty(env("HOME")) {
                return Ok(Path::new(&home).join("Library/Caches/petri"));
            }
            "PETRI_CACHE_DIR, HOME"
        }
        HostOs::Windows => {
            if let Some(local) = non_empty(env("LOCALAPPDATA")) {
                return Ok(Path::new(&local).join("petri").join("cache"));
            }
            "PETRI_CACHE_DIR, LOCALAPPDATA"
        }
    };
    Err(CacheDirError {
        tried: tried.to_owned(),
    })
}

/// The cache directory for this process (process environment, this OS).
pub fn cache_dir() -> Result<PathBuf, CacheDirError> {
    cache_dir_with(|name| std::env::var_os(name), HostOs::current())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |name| map.get(name).map(OsString::from)
    }

    #[test]
    fn override_wins_on_every_os() {
        for os in [HostOs::Linux, HostOs::MacOs, HostOs::Windows] {
            let vars = [
                ("PETRI_CACHE_DIR", "/srv/petri-cache"),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/u"),
                ("LOCALAPPDATA", "C:\\Users\\u\\AppData\\Local"),
            ];
            assert_eq!(
                cache_dir_with(env(&vars), os).unwrap(),
                PathBuf::from("/srv/petri-cache")
            );
        }
    }

    #[test]
    fn empty_override_is_ignored() {
        let vars = [("PETRI_CACHE_DIR", ""), ("HOME", "/home/u")];
        assert_eq!(
            cache_dir_with(env(&vars), HostOs::Linux).unwrap(),
            PathBuf::from("/home/u/.cache/petri")
        );
    }

    #[test]
    fn linux_prefers_xdg_then_home() {
        let vars = [("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(
            cache_dir_with(env(&vars), HostOs::Linux).unwrap(),
            PathBuf::from("/xdg/petri")
        );
        let vars = [("HOME", "/home/u")];
        assert_eq!(
            cache_dir_with(env(&vars), HostOs::Linux).unwrap(),
            PathBuf::from("/home/u/.cache/petri")
        );
    }

    #[test]
    fn linux_ignores_relative_xdg() {
        let vars = [("XDG_CACHE_HOME", "relative/cache"), ("HOME", "/home/u")];
        assert_eq!(
            cache_dir_with(env(&vars), HostOs::Linux).unwrap(),
            PathBuf::from("/home/u/.cache/petri")
        );
    }

    #[test]
    fn macos_uses_library_caches() {
        let vars = [("XDG_CACHE_HOME", "/xdg"), ("HOME", "/Users/u")];
        assert_eq!(
            cache_dir_with(env(&vars), HostOs::MacOs).unwrap(),
            PathBuf::from("/Users/u/Library/Caches/petri")
        );
    }

    #[test]
    fn windows_uses_localappdata() {
        let vars = [("LOCALAPPDATA", "/appdata/local"), ("HOME", "/home/u")];
        assert_eq!(
            cache_dir_with(env(&vars), HostOs::Windows).unwrap(),
            Path::new("/appdata/local").join("petri").join("cache")
        );
    }

    #[test]
    fn nothing_set_is_an_error_naming_the_variables() {
        for (os, names) in [
            (HostOs::Linux, "XDG_CACHE_HOME, HOME"),
            (HostOs::MacOs, "HOME"),
            (HostOs::Windows, "LOCALAPPDATA"),
        ] {
            let err = cache_dir_with(env(&[]), os).unwrap_err().to_string();
            assert!(err.contains("PETRI_CACHE_DIR"), "{err}");
            assert!(err.contains(names), "{err}");
        }
    }
}
