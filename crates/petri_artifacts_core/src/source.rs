//! Where an artifact comes from ([`ArtifactSource`]) and the remote access
//! policy ([`RemoteAccess`], [`RemoteOverride`], [`effective_remote_access`]).

use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use url_redact::RedactedUrl;

/// Where a resolved artifact comes from.
///
/// `Debug` and `Display` redact the URL's query string (it may hold a SAS
/// token); the full URL is available from [`ArtifactSource::remote_url`]
/// for the code that opens it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ArtifactSource {
    /// A file on the local file system.
    Local(PathBuf),
    /// An HTTP(S) URL, to be opened lazily as a blob disk.
    Remote {
        /// The full URL, query string included.
        url: String,
    },
}

impl ArtifactSource {
    /// The local path, if the source is local.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            ArtifactSource::Local(path) => Some(path),
            ArtifactSource::Remote { .. } => None,
        }
    }

    /// The full (unredacted) URL, if the source is remote. Do not print it;
    /// print the source itself or [`RedactedUrl`] instead.
    pub fn remote_url(&self) -> Option<&str> {
        match self {
            ArtifactSource::Local(_) => None,
            ArtifactSource::Remote { url } => Some(url),
        }
    }

    /// Whether the source is remote.
    pub fn is_remote(&self) -> bool {
        matches!(self, ArtifactSource::Remote { .. })
    }
}

impl fmt::Debug for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactSource::Local(path) => f.debug_tuple("Local").field(path).finish(),
            ArtifactSource::Remote { url } => f
                .debug_struct("Remote")
                .field("url", &RedactedUrl(url))
                .finish(),
        }
    }
}

impl fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactSource::Local(path) => write!(f, "{}", path.display()),
            ArtifactSource::Remote { url } => write!(f, "{}", RedactedUrl(url)),
        }
    }
}

/// Whether an artifact may be served remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RemoteAccess {
    /// A remote source (URL) is acceptable.
    #[default]
    Allow,
    /// The artifact must be a local file.
    LocalOnly,
}

impl RemoteAccess {
    /// The stricter of the two: `LocalOnly` if either is `LocalOnly`.
    pub const fn strictest(self, other: RemoteAccess) -> RemoteAccess {
        match (self, other) {
            (RemoteAccess::Allow, RemoteAccess::Allow) => RemoteAccess::Allow,
            _ => RemoteAccess::LocalOnly,
        }
    }
}

/// The process-wide remote access override.
///
/// Set `PETRI_REMOTE_ARTIFACTS` to `0` or `false` (any case, surrounding
/// whitespace ignored) to force every artifact to resolve locally,
/// whatever a test allows. Any other value, or no value, changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RemoteOverride {
    /// No override: the declared and requested policy decides.
    #[default]
    NoOverride,
    /// Every artifact must be local.
    ForceLocal,
}

impl RemoteOverride {
    /// The environment variable holding the override.
    pub const ENV_VAR: &'static str = "PETRI_REMOTE_ARTIFACTS";

    /// Parses a value of [`Self::ENV_VAR`] (`None` = unset). Pure; use it
    /// in tests instead of mutating the process environment.
    pub fn parse(value: Option<&str>) -> RemoteOverride {
        match value.map(str::trim) {
            Some(v) if v == "0" || v.eq_ignore_ascii_case("false") => RemoteOverride::ForceLocal,
            _ => RemoteOverride::NoOverride,
        }
    }

    /// Reads [`Self::ENV_VAR`] from the process environment. This is the
    /// only place in the workspace that reads it. A value that is not
    /// valid Unicode is treated like any other non-`0`/`false` value.
    pub fn from_process_env() -> RemoteOverride {
        let value = std::env::var_os(Self::ENV_VAR);
        Self::parse(value.as_deref().and_then(|v| v.to_str()))
    }
}

/// The effective remote access of one requirement.
///
/// `LocalOnly` if the artifact is not blob-capable, or the resolver-wide
/// policy is `LocalOnly`, or the process-wide override forces local;
/// otherwise the per-call value.
pub const fn effective_remote_access(
    blob_capable: bool,
    resolver_policy: RemoteAccess,
    per_call: RemoteAccess,
    remote_override: RemoteOverride,
) -> RemoteAccess {
    if !blob_capable || matches!(remote_override, RemoteOverride::ForceLocal) {
        return RemoteAccess::LocalOnly;
    }
    resolver_policy.strictest(per_call)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAS_URL: &str = "https://acct.blob.core.windows.net/vhds/a.vhd?sv=2024&sig=SECRET";

    #[test]
    fn remote_source_debug_and_display_redact_the_query() {
        let s = ArtifactSource::Remote {
            url: SAS_URL.to_string(),
        };
        let debug = format!("{s:?}");
        let display = s.to_string();
        for out in [&debug, &display] {
            assert!(!out.contains("SECRET"), "{out}");
            assert!(!out.contains("sig="), "{out}");
            assert!(out.contains("?<redacted>"), "{out}");
            assert!(
                out.contains("acct.blob.core.windows.net/vhds/a.vhd"),
                "{out}"
            );
        }
        assert!(debug.starts_with("Remote { url: "), "{debug}");
        assert!(format!("{s:#?}").contains("<redacted>"));
        assert!(!format!("{s:#?}").contains("SECRET"));
        assert_eq!(s.remote_url(), Some(SAS_URL));
        assert!(s.is_remote());
        assert_eq!(s.local_path(), None);
    }

    #[test]
    fn local_source_prints_the_path() {
        let s = ArtifactSource::Local(PathBuf::from("/images/a.vhd"));
        assert_eq!(s.to_string(), "/images/a.vhd");
        assert_eq!(format!("{s:?}"), "Local(\"/images/a.vhd\")");
        assert_eq!(s.local_path(), Some(Path::new("/images/a.vhd")));
        assert!(!s.is_remote());
    }

    #[test]
    fn override_parsing() {
        use RemoteOverride::*;
        for v in ["0", "false", "FALSE", "False", " false\n", " 0 "] {
            assert_eq!(RemoteOverride::parse(Some(v)), ForceLocal, "{v:?}");
        }
        for v in ["1", "true", "", "no", "00", "f", "off"] {
            assert_eq!(RemoteOverride::parse(Some(v)), NoOverride, "{v:?}");
        }
        assert_eq!(RemoteOverride::parse(None), NoOverride);
    }

    /// The full policy table: resolver policy x per-call x blob-capable x
    /// override.
    #[test]
    fn policy_table() {
        use RemoteAccess::*;
        use RemoteOverride::*;
        let mut rows = 0;
        for policy in [Allow, LocalOnly] {
            for per_call in [Allow, LocalOnly] {
                for blob in [true, false] {
                    for over in [NoOverride, ForceLocal] {
                        let expected =
                            if policy == Allow && per_call == Allow && blob && over == NoOverride {
                                Allow
                            } else {
                                LocalOnly
                            };
                        assert_eq!(
                            effective_remote_access(blob, policy, per_call, over),
                            expected,
                            "policy={policy:?} per_call={per_call:?} blob={blob} override={over:?}"
                        );
                        rows += 1;
                    }
                }
            }
        }
        assert_eq!(rows, 16);
        // And the one Allow row, spelled out.
        assert_eq!(
            effective_remote_access(true, Allow, Allow, NoOverride),
            Allow
        );
    }

    /// Child half of `from_process_env_reads_the_variable`: prints what
    /// this process sees.
    #[test]
    #[ignore = "run by from_process_env_reads_the_variable in a child process"]
    fn child_prints_override() {
        println!("OVERRIDE={:?}", RemoteOverride::from_process_env());
    }

    /// The env-reading path, tested in child processes so this process's
    /// environment is never mutated.
    #[test]
    fn from_process_env_reads_the_variable() {
        let exe = std::env::current_exe().unwrap();
        for (value, expected) in [
            (Some("0"), "ForceLocal"),
            (Some("False"), "ForceLocal"),
            (Some("1"), "NoOverride"),
            (None, "NoOverride"),
        ] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "--exact",
                "source::tests::child_prints_override",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ]);
            match value {
                Some(v) => cmd.env(RemoteOverride::ENV_VAR, v),
                None => cmd.env_remove(RemoteOverride::ENV_VAR),
            };
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{stdout}");
            assert!(
                stdout.contains(&format!("OVERRIDE={expected}")),
                "{value:?}: {stdout}"
            );
        }
    }

    #[test]
    fn strictest_is_local_only_if_any() {
        use RemoteAccess::*;
        assert_eq!(Allow.strictest(Allow), Allow);
        assert_eq!(Allow.strictest(LocalOnly), LocalOnly);
        assert_eq!(LocalOnly.strictest(Allow), LocalOnly);
        assert_eq!(LocalOnly.strictest(LocalOnly), LocalOnly);
    }
}
