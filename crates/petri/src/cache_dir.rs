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
//!
//! # How the cache is used
//!
//! This module is also the one place that reads the two variables that
//! say how remote disks use the cache ([`cache_settings`]):
//!
//! - `PETRI_CACHE`: unset, empty or `auto`: use the cache, and where no
//!   usable cache can be opened (the directory cannot be created or
//!   written, its file system is full, ...) open the disk without it, with
//!   one warning; `required`: that is an error instead; `off`: no
//!   persistent cache at all (nor a cache directory to find). Any other
//!   value is an error.
//! - `PETRI_CACHE_MAX_SIZE`: a size limit for the whole cache directory,
//!   in bytes or with a binary unit (`512M`, `20G`, `1T`; `K`, `M`, `G`,
//!   `T` are powers of 1024, `KiB`/`KB` and the like mean the same), kept
//!   whenever a remote disk's cache is opened or closed by removing the
//!   entries used least recently (never one in use). Unset or empty: no
//!   limit.
//!
//! Both travel in the disk stack description (the cache layer's `required`
//! and `max_size`), so the process that opens the stack needs no
//! environment of its own.

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

/// The variable that makes the cache required or turns it off.
pub const PETRI_CACHE: &str = "PETRI_CACHE";

/// The variable that limits the cache directory's size.
pub const PETRI_CACHE_MAX_SIZE: &str = "PETRI_CACHE_MAX_SIZE";

/// How remote disks use the cache, as the environment sets it up (see
/// the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The cache directory.
    pub dir: PathBuf,
    /// No usable cache is an error (`PETRI_CACHE=required`) rather than a
    /// warning.
    pub required: bool,
    /// The size limit of the whole cache directory in bytes
    /// (`PETRI_CACHE_MAX_SIZE`).
    pub max_size: Option<u64>,
}

/// The cache settings could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum CacheSettingsError {
    /// No cache directory.
    #[error(transparent)]
    Dir(#[from] CacheDirError),
    /// A variable has a value that means nothing.
    #[error("{var}={value:?} is not valid: {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it may be.
        expected: String,
    },
}

/// The cache settings for `os`, reading variables through `env`; `dir`
/// (a command-line option, say) replaces the directory rule. `None` when
/// `PETRI_CACHE=off`.
pub fn cache_settings_with(
    env: impl Fn(&str) -> Option<OsString>,
    os: HostOs,
    dir: Option<&Path>,
) -> Result<Option<CacheSettings>, CacheSettingsError> {
    let required = match env_text(&env, PETRI_CACHE)?
        .map(|v| v.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "auto") => false,
        Some("required") => true,
        Some("off") => return Ok(None),
        Some(other) => {
            return Err(CacheSettingsError::Invalid {
                var: PETRI_CACHE,
                value: other.to_owned(),
                expected: "use `auto` (the default), `required` or `off`".into(),
            });
        }
    };
    let max_size = cache_max_size_with(&env)?;
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => cache_dir_with(env, os)?,
    };
    Ok(Some(CacheSettings {
        dir,
        required,
        max_size,
    }))
}

/// The value of `var` through `env`, trimmed; `None` if unset or empty.
fn env_text(
    env: &impl Fn(&str) -> Option<OsString>,
    var: &'static str,
) -> Result<Option<String>, CacheSettingsError> {
    match non_empty(env(var)) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(|s| Some(s.trim().to_owned()).filter(|s| !s.is_empty()))
            .map_err(|v| CacheSettingsError::Invalid {
                var,
                value: v.to_string_lossy().into_owned(),
                expected: "a value in UTF-8".into(),
            }),
    }
}

/// `PETRI_CACHE_MAX_SIZE` through `env`.
fn cache_max_size_with(
    env: &impl Fn(&str) -> Option<OsString>,
) -> Result<Option<u64>, CacheSettingsError> {
    let Some(v) = env_text(env, PETRI_CACHE_MAX_SIZE)? else {
        return Ok(None);
    };
    parse_size(&v)
        .map(Some)
        .map_err(|why| CacheSettingsError::Invalid {
            var: PETRI_CACHE_MAX_SIZE,
            value: v,
            expected: why,
        })
}

/// The cache directory's size limit of this process
/// (`PETRI_CACHE_MAX_SIZE`), whatever `PETRI_CACHE` says: for tools that
/// manage the directory.
pub fn cache_max_size() -> Result<Option<u64>, CacheSettingsError> {
    cache_max_size_with(&|name: &str| std::env::var_os(name))
}

/// The cache settings of this process (see [`cache_settings_with`]).
pub fn cache_settings(dir: Option<&Path>) -> Result<Option<CacheSettings>, CacheSettingsError> {
    cache_settings_with(|name| std::env::var_os(name), HostOs::current(), dir)
}

/// A size in bytes: digits, optionally followed by a binary unit (`K`,
/// `M`, `G`, `T`, each also as `KiB`/`KB` and so on, any case): `512M`,
/// `20G`, `1073741824`. The error says what is accepted.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => u32::MAX,
    };
    let expected = || {
        format!(
            "`{text}` is not a size: use bytes or a whole number with K, M, G or T \
             (powers of 1024), e.g. 512M or 20G"
        )
    };
    let n: u64 = number.parse().map_err(|_| expected())?;
    if shift == u32::MAX {
        return Err(expected());
    }
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
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
    fn cache_settings_follow_petri_cache_and_max_size() {
        let home = [("HOME", "/home/u")];
        let s = cache_settings_with(env(&home), HostOs::Linux, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            s,
            CacheSettings {
                dir: "/home/u/.cache/petri".into(),
                required: false,
                max_size: None,
            }
        );
        for (mode, required) in [("", false), ("auto", false), ("Required", true)] {
            let vars = [("HOME", "/home/u"), ("PETRI_CACHE", mode)];
            let s = cache_settings_with(env(&vars), HostOs::Linux, None)
                .unwrap()
                .unwrap();
            assert_eq!(s.required, required, "{mode}");
        }
        // Off needs no directory at all.
        let off = [("PETRI_CACHE", " off ")];
        assert_eq!(
            cache_settings_with(env(&off), HostOs::Linux, None).unwrap(),
            None
        );
        let bad = [("HOME", "/home/u"), ("PETRI_CACHE", "sometimes")];
        let err = cache_settings_with(env(&bad), HostOs::Linux, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PETRI_CACHE") && err.contains("sometimes") && err.contains("required"),
            "{err}"
        );
        let sized = [("PETRI_CACHE_MAX_SIZE", "20G")];
        let s = cache_settings_with(env(&sized), HostOs::Linux, Some(Path::new("/c")))
            .unwrap()
            .unwrap();
        assert_eq!((s.dir, s.max_size), (PathBuf::from("/c"), Some(20 << 30)));
        let bad = [("HOME", "/home/u"), ("PETRI_CACHE_MAX_SIZE", "lots")];
        let err = cache_settings_with(env(&bad), HostOs::Linux, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("PETRI_CACHE_MAX_SIZE") && err.contains("512M"),
            "{err}"
        );
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("1048576", 1 << 20),
            ("512M", 512 << 20),
            ("20G", 20 << 30),
            ("20 GiB", 20 << 30),
            ("3gb", 3 << 30),
            ("1T", 1 << 40),
            ("64k", 64 << 10),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "G", "1.5G", "-1G", "12X", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
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
