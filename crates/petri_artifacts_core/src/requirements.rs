//! Collected requirements ([`TestArtifactRequirements`]), their resolution
//! through a [`ResolveTestArtifact`] into [`TestArtifacts`], and the list
//! output ([`ArtifactListOutput`]).

use crate::handle::AsArtifactHandle;
use crate::handle::ErasedArtifactHandle;
use crate::source::ArtifactSource;
use crate::source::RemoteAccess;
use crate::source::RemoteOverride;
use crate::source::effective_remote_access;
use serde::Deserialize;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

/// Resolves artifacts to local paths or sources. Implemented by artifact
/// resolvers such as the known-paths resolver.
pub trait ResolveTestArtifact {
    /// Resolves `id` to a local file.
    fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf>;

    /// Resolves `id` to a local file or, if the resolver can serve it
    /// remotely, a URL. Called only for requirements whose effective access
    /// is [`RemoteAccess::Allow`]. The default wraps [`Self::resolve`] in
    /// [`ArtifactSource::Local`].
    fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
        self.resolve(id).map(ArtifactSource::Local)
    }
}

impl<T: ResolveTestArtifact + ?Sized> ResolveTestArtifact for &T {
    fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
        (**self).resolve(id)
    }

    fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
        (**self).resolve_source(id)
    }
}

/// One merged requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Requirement {
    access: RemoteAccess,
    optional: bool,
}

/// The artifacts a test needs, collected by running its requirement
/// closure against [`ArtifactResolver::collector`](crate::ArtifactResolver::collector).
///
/// Duplicate registrations merge to the strictest: required if any
/// registration is required, [`RemoteAccess::LocalOnly`] if any is. Every
/// registration goes through [`effective_remote_access`], so a non-blob
/// artifact or the process-wide [`RemoteOverride`] records `LocalOnly`
/// even when `Allow` was asked for.
#[derive(Debug, Clone)]
pub struct TestArtifactRequirements {
    artifacts: BTreeMap<ErasedArtifactHandle, Requirement>,
    remote_override: RemoteOverride,
}

impl Default for TestArtifactRequirements {
    /// Same as [`TestArtifactRequirements::new`] (reads the override).
    fn default() -> Self {
        Self::new()
    }
}

impl TestArtifactRequirements {
    /// Empty requirements, with the process-wide override read from
    /// `PETRI_REMOTE_ARTIFACTS` ([`RemoteOverride::from_process_env`]).
    pub fn new() -> Self {
        Self::with_override(RemoteOverride::from_process_env())
    }

    /// Empty requirements with an explicit override (for tests and for
    /// callers that read the environment themselves).
    pub fn with_override(remote_override: RemoteOverride) -> Self {
        Self {
            artifacts: BTreeMap::new(),
            remote_override,
        }
    }

    /// The override these requirements apply.
    pub fn remote_override(&self) -> RemoteOverride {
        self.remote_override
    }

    /// Registers `handle` with `access` (subject to the effective-access
    /// rule) as required or `optional`, merging with earlier registrations.
    pub fn require(
        &mut self,
        handle: impl AsArtifactHandle,
        access: RemoteAccess,
        optional: bool,
    ) -> &mut Self {
        let handle = handle.erase();
        let access = effective_remote_access(
            handle.is_blob_capable(),
            RemoteAccess::Allow,
            access,
            self.remote_override,
        );
        self.insert(handle, Requirement { access, optional });
        self
    }

    fn insert(&mut self, handle: ErasedArtifactHandle, new: Requirement) {
        self.artifacts
            .entry(handle)
            .and_modify(|old| {
                old.access = old.access.strictest(new.access);
                old.optional &= new.optional;
            })
            .or_insert(new);
    }

    /// Merges every requirement of `other` into `self` (strictest wins), for
    /// example to collect what a set of tests needs. `other`'s entries are
    /// re-checked against `self`'s override.
    pub fn merge(&mut self, other: &TestArtifactRequirements) -> &mut Self {
        for (&handle, &req) in &other.artifacts {
            self.require(handle, req.access, req.optional);
        }
        self
    }

    /// The required artifacts, ordered by id.
    pub fn required_artifacts(&self) -> impl Iterator<Item = ErasedArtifactHandle> + '_ {
        self.artifacts
            .iter()
            .filter(|(_, r)| !r.optional)
            .map(|(h, _)| *h)
    }

    /// The optional artifacts (never required by any registration),
    /// ordered by id.
    pub fn optional_artifacts(&self) -> impl Iterator<Item = ErasedArtifactHandle> + '_ {
        self.artifacts
            .iter()
            .filter(|(_, r)| r.optional)
            .map(|(h, _)| *h)
    }

    /// The required artifacts that must be local files after the merge,
    /// ordered by id.
    pub fn local_only_artifacts(&self) -> impl Iterator<Item = ErasedArtifactHandle> + '_ {
        self.artifacts
            .iter()
            .filter(|(_, r)| !r.optional && r.access == RemoteAccess::LocalOnly)
            .map(|(h, _)| *h)
    }

    /// The merged access of `handle`, or `None` if it was never registered.
    pub fn access(&self, handle: impl AsArtifactHandle) -> Option<RemoteAccess> {
        self.artifacts.get(&handle.erase()).map(|r| r.access)
    }

    /// Whether `handle` is registered only optionally; `None` if it was
    /// never registered.
    pub fn is_optional(&self, handle: impl AsArtifactHandle) -> Option<bool> {
        self.artifacts.get(&handle.erase()).map(|r| r.optional)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.artifacts.is_empty()
    }

    /// The list output (ids) for `--list-required-artifacts` style
    /// commands and `download-image --for-tests`.
    pub fn list_output(&self) -> ArtifactListOutput {
        ArtifactListOutput {
            required: self
                .required_artifacts()
                .map(|h| h.id().to_owned())
                .collect(),
            optional: self
                .optional_artifacts()
                .map(|h| h.id().to_owned())
                .collect(),
            local_only: self
                .local_only_artifacts()
                .map(|h| h.id().to_owned())
                .collect(),
        }
    }

    /// Resolves every registered artifact with `resolver`, applying the
    /// override these requirements were created with.
    ///
    /// Artifacts whose access is [`RemoteAccess::Allow`] go through
    /// [`ResolveTestArtifact::resolve_source`], the others through
    /// [`ResolveTestArtifact::resolve`]. Failed optional artifacts are
    /// skipped; every failed required artifact is reported in one
    /// [`ArtifactResolutionError`] (reachable with
    /// `anyhow::Error::downcast_ref`), each with its cause chain.
    pub fn resolve(&self, resolver: impl ResolveTestArtifact) -> anyhow::Result<TestArtifacts> {
        self.resolve_with_override(resolver, self.remote_override)
    }

    /// Like [`Self::resolve`], additionally applying `remote_override`
    /// (which can only narrow access further).
    pub fn resolve_with_override(
        &self,
        resolver: impl ResolveTestArtifact,
        remote_override: RemoteOverride,
    ) -> anyhow::Result<TestArtifacts> {
        let mut resolved = BTreeMap::new();
        let mut failures = Vec::new();
        let over = match (remote_override, self.remote_override) {
            (RemoteOverride::NoOverride, RemoteOverride::NoOverride) => RemoteOverride::NoOverride,
            _ => RemoteOverride::ForceLocal,
        };
        for (&handle, req) in &self.artifacts {
            let access = effective_remote_access(
                handle.is_blob_capable(),
                RemoteAccess::Allow,
                req.access,
                over,
            );
            let result = match access {
                RemoteAccess::Allow => resolver.resolve_source(handle),
                RemoteAccess::LocalOnly => resolver.resolve(handle).map(ArtifactSource::Local),
            };
            match result {
                Ok(source) => {
                    resolved.insert(handle, Some(source));
                }
                Err(err) if req.optional => {
                    tracing::debug!(
                        artifact = handle.id(),
                        error = format!("{err:#}"),
                        "optional artifact not available; skipping"
                    );
                    resolved.insert(handle, None);
                }
                Err(error) => failures.push(ArtifactFailure { handle, error }),
            }
        }
        if failures.is_empty() {
            Ok(TestArtifacts {
                artifacts: Arc::new(resolved),
            })
        } else {
            Err(ArtifactResolutionError { failures }.into())
        }
    }
}

/// One required artifact that failed to resolve.
#[derive(Debug)]
pub struct ArtifactFailure {
    /// The artifact.
    pub handle: ErasedArtifactHandle,
    /// Why it failed, with its full cause chain.
    pub error: anyhow::Error,
}

/// Every required artifact that failed to resolve, from
/// [`TestArtifactRequirements::resolve`].
///
/// `Display` lists each artifact's id and its error's cause chain (joined
/// with `: `); the per-artifact errors are kept intact in
/// [`Self::failures`].
#[derive(Debug)]
pub struct ArtifactResolutionError {
    failures: Vec<ArtifactFailure>,
}

impl ArtifactResolutionError {
    /// The failures, ordered by artifact id.
    pub fn failures(&self) -> &[ArtifactFailure] {
        &self.failures
    }
}

impl fmt::Display for ArtifactResolutionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.failures.len();
        write!(
            f,
            "failed to resolve {n} required test artifact{}",
            if n == 1 { "" } else { "s" }
        )?;
        for failure in &self.failures {
            // Indent multi-line causes under their artifact.
            let cause = format!("{:#}", failure.error).replace('\n', "\n    ");
            write!(f, "\n  - {}: {cause}", failure.handle)?;
        }
        Ok(())
    }
}

impl std::error::Error for ArtifactResolutionError {}

/// The resolved artifacts of one test. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct TestArtifacts {
    /// `None` = optional artifact that could not be resolved.
    artifacts: Arc<BTreeMap<ErasedArtifactHandle, Option<ArtifactSource>>>,
}

impl TestArtifacts {
    #[track_caller]
    fn entry(&self, handle: ErasedArtifactHandle) -> Option<&ArtifactSource> {
        match self.artifacts.get(&handle) {
            Some(entry) => entry.as_ref(),
            None => panic!(
                "artifact {handle:?} was not registered in the collecting phase; \
                 require it in the test's requirement closure"
            ),
        }
    }

    #[track_caller]
    fn local(handle: ErasedArtifactHandle, source: &ArtifactSource) -> &Path {
        match source {
            ArtifactSource::Local(path) => path,
            ArtifactSource::Remote { .. } => panic!(
                "artifact {handle:?} resolved to a remote source ({source}), but a local \
                 path was asked for: use `ArtifactResolver::require_source` to accept a \
                 remote source, or download the artifact into the local images folder"
            ),
        }
    }

    /// The local path of a required artifact.
    ///
    /// # Panics
    ///
    /// If the artifact was not registered, was optional and not resolved,
    /// or resolved to a remote source (the message tells the user to use
    /// `require_source` or download the artifact).
    #[track_caller]
    pub fn get(&self, handle: impl AsArtifactHandle) -> &Path {
        let handle = handle.erase();
        match self.entry(handle) {
            Some(source) => Self::local(handle, source),
            None => panic!("optional artifact {handle:?} could not be resolved; use `try_get`"),
        }
    }

    /// The local path of an artifact, or `None` if it was optional and could
    /// not be resolved.
    ///
    /// # Panics
    ///
    /// If the artifact was not registered, or resolved to a remote source.
    #[track_caller]
    pub fn try_get(&self, handle: impl AsArtifactHandle) -> Option<&Path> {
        let handle = handle.erase();
        self.entry(handle).map(|source| Self::local(handle, source))
    }

    /// The source of a required artifact.
    ///
    /// # Panics
    ///
    /// If the artifact was not registered, or was optional and not resolved.
    #[track_caller]
    pub fn get_source(&self, handle: impl AsArtifactHandle) -> &ArtifactSource {
        let handle = handle.erase();
        match self.entry(handle) {
            Some(source) => source,
            None => {
                panic!("optional artifact {handle:?} could not be resolved; use `try_get_source`")
            }
        }
    }

    /// The source of an artifact, or `None` if it was optional and could
    /// not be resolved.
    ///
    /// # Panics
    ///
    /// If the artifact was not registered.
    #[track_caller]
    pub fn try_get_source(&self, handle: impl AsArtifactHandle) -> Option<&ArtifactSource> {
        self.entry(handle.erase())
    }

    /// Every resolved artifact and its source, ordered by id (`None` for an
    /// optional artifact that could not be resolved).
    pub fn iter(&self) -> impl Iterator<Item = (ErasedArtifactHandle, Option<&ArtifactSource>)> {
        self.artifacts.iter().map(|(h, s)| (*h, s.as_ref()))
    }
}

/// The artifacts of one or more tests as plain data (serde JSON), for
/// listing and for `download-image --for-tests`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactListOutput {
    /// Ids of required artifacts.
    pub required: Vec<String>,
    /// Ids of optional artifacts.
    pub optional: Vec<String>,
    /// Ids of required artifacts that must be local files after the merge.
    pub local_only: Vec<String>,
}

impl From<&TestArtifactRequirements> for ArtifactListOutput {
    fn from(value: &TestArtifactRequirements) -> Self {
        value.list_output()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::panic_message;
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    mod arts {
        crate::declare_blob_artifacts! {
            /// Blob-capable disk.
            DISK_A,
            /// Another blob-capable disk.
            DISK_B,
        }
        crate::declare_artifacts! {
            /// Local-only firmware.
            FIRMWARE,
            /// Local-only ISO.
            LOCAL_ISO,
        }
    }
    use arts::*;

    /// A resolver over a fixed table, recording the calls it gets.
    #[derive(Default)]
    struct TableResolver {
        local: BTreeMap<&'static str, PathBuf>,
        remote: BTreeMap<&'static str, String>,
        calls: RefCell<Vec<(&'static str, &'static str)>>,
    }

    impl TableResolver {
        fn local(mut self, h: impl AsArtifactHandle, p: &str) -> Self {
            self.local.insert(h.erase().id(), p.into());
            self
        }
        fn remote(mut self, h: impl AsArtifactHandle, u: &str) -> Self {
            self.remote.insert(h.erase().id(), u.into());
            self
        }
        fn calls(&self) -> Vec<(&'static str, &'static str)> {
            self.calls.borrow().clone()
        }
    }

    impl ResolveTestArtifact for TableResolver {
        fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
            self.calls.borrow_mut().push(("resolve", id.name()));
            self.local
                .get(id.id())
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no such file: root cause for {}", id.name()))
                .map_err(|e| e.context(format!("{} not found locally", id.name())))
        }

        fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
            self.calls.borrow_mut().push(("resolve_source", id.name()));
            if let Some(p) = self.local.get(id.id()) {
                return Ok(ArtifactSource::Local(p.clone()));
            }
            match self.remote.get(id.id()) {
                Some(url) => Ok(ArtifactSource::Remote { url: url.clone() }),
                None => Err(anyhow::anyhow!("{} has no source", id.name())),
            }
        }
    }

    fn ids(it: impl Iterator<Item = ErasedArtifactHandle>) -> BTreeSet<&'static str> {
        it.map(|h| h.name()).collect()
    }

    #[test]
    fn duplicates_merge_to_the_strictest() {
        use RemoteAccess::*;
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        // optional + required -> required
        r.require(DISK_A, Allow, true).require(DISK_A, Allow, false);
        // required + optional -> required (order does not matter)
        r.require(DISK_B, Allow, false).require(DISK_B, Allow, true);
        assert_eq!(r.is_optional(DISK_A), Some(false));
        assert_eq!(r.is_optional(DISK_B), Some(false));
        assert_eq!(r.access(DISK_A), Some(Allow));

        // Allow + LocalOnly -> LocalOnly, both orders
        r.require(DISK_A, LocalOnly, false);
        r.require(DISK_B, LocalOnly, true)
            .require(DISK_B, Allow, false);
        assert_eq!(r.access(DISK_A), Some(LocalOnly));
        assert_eq!(r.access(DISK_B), Some(LocalOnly));

        // optional + optional stays optional
        r.require(LOCAL_ISO, LocalOnly, true)
            .require(LOCAL_ISO, LocalOnly, true);
        assert_eq!(r.is_optional(LOCAL_ISO), Some(true));

        assert_eq!(ids(r.required_artifacts()), ["DISK_A", "DISK_B"].into());
        assert_eq!(ids(r.optional_artifacts()), ["LOCAL_ISO"].into());
        assert_eq!(r.access(FIRMWARE), None);
        assert_eq!(r.is_optional(FIRMWARE), None);
    }

    #[test]
    fn non_blob_artifact_is_local_only_even_when_allowed() {
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(FIRMWARE, RemoteAccess::Allow, false);
        assert_eq!(r.access(FIRMWARE), Some(RemoteAccess::LocalOnly));
        assert_eq!(ids(r.local_only_artifacts()), ["FIRMWARE"].into());
    }

    #[test]
    fn override_forces_local_when_registering() {
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::ForceLocal);
        r.require(DISK_A, RemoteAccess::Allow, false);
        assert_eq!(r.access(DISK_A), Some(RemoteAccess::LocalOnly));
    }

    #[test]
    fn resolve_uses_resolve_source_only_for_allow() {
        use RemoteAccess::*;
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(DISK_A, Allow, false)
            .require(DISK_B, LocalOnly, false)
            .require(FIRMWARE, Allow, false);
        let resolver = TableResolver::default()
            .remote(DISK_A, "https://h/a.vhd?sig=SECRET")
            .remote(DISK_B, "https://h/b.vhd")
            .local(DISK_B, "/img/b.vhd")
            .local(FIRMWARE, "/img/fw.bin");
        let arts = r.resolve(&resolver).unwrap();
        let mut calls = resolver.calls();
        calls.sort();
        assert_eq!(
            calls,
            [
                ("resolve", "DISK_B"),
                ("resolve", "FIRMWARE"),
                ("resolve_source", "DISK_A"),
            ]
        );
        assert_eq!(
            arts.get_source(DISK_A).remote_url(),
            Some("https://h/a.vhd?sig=SECRET")
        );
        assert_eq!(arts.get(DISK_B), Path::new("/img/b.vhd"));
        assert_eq!(arts.get(FIRMWARE), Path::new("/img/fw.bin"));
        assert_eq!(
            arts.get_source(FIRMWARE),
            &ArtifactSource::Local("/img/fw.bin".into())
        );
    }

    #[test]
    fn resolve_with_override_forces_local() {
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(DISK_A, RemoteAccess::Allow, false);
        assert_eq!(r.access(DISK_A), Some(RemoteAccess::Allow));
        let resolver = TableResolver::default()
            .remote(DISK_A, "https://h/a.vhd")
            .local(DISK_A, "/img/a.vhd");
        let arts = r
            .resolve_with_override(&resolver, RemoteOverride::ForceLocal)
            .unwrap();
        assert_eq!(resolver.calls(), [("resolve", "DISK_A")]);
        assert_eq!(arts.get(DISK_A), Path::new("/img/a.vhd"));

        // Without a local file the override makes it an error, never remote.
        let resolver = TableResolver::default().remote(DISK_A, "https://h/a.vhd");
        let err = r
            .resolve_with_override(&resolver, RemoteOverride::ForceLocal)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("DISK_A not found locally"),
            "{err:#}"
        );
    }

    #[test]
    fn all_failed_required_artifacts_are_reported_with_causes() {
        use RemoteAccess::*;
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(DISK_A, LocalOnly, false)
            .require(FIRMWARE, LocalOnly, false)
            .require(DISK_B, Allow, false)
            .require(LOCAL_ISO, LocalOnly, true);
        let resolver = TableResolver::default().remote(DISK_B, "https://h/b.vhd");
        let err = r.resolve(&resolver).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("failed to resolve 2 required test artifacts"),
            "{msg}"
        );
        for name in ["DISK_A", "FIRMWARE"] {
            assert!(msg.contains(&format!("{name} not found locally")), "{msg}");
            assert!(msg.contains(&format!("root cause for {name}")), "{msg}");
        }
        // The optional artifact's failure is not an error.
        assert!(!msg.contains("LOCAL_ISO"), "{msg}");
        assert!(!msg.contains("DISK_B"), "{msg}");

        let typed = err.downcast_ref::<ArtifactResolutionError>().unwrap();
        let failed: Vec<_> = typed.failures().iter().map(|f| f.handle.name()).collect();
        assert_eq!(failed, ["DISK_A", "FIRMWARE"]);
        let chain: Vec<String> = typed.failures()[0]
            .error
            .chain()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(
            chain,
            [
                "DISK_A not found locally",
                "no such file: root cause for DISK_A"
            ]
        );
    }

    #[test]
    fn failed_optional_artifacts_are_skipped() {
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(LOCAL_ISO, RemoteAccess::LocalOnly, true)
            .require(DISK_A, RemoteAccess::Allow, true)
            .require(FIRMWARE, RemoteAccess::LocalOnly, false);
        let resolver = TableResolver::default()
            .local(FIRMWARE, "/fw")
            .remote(DISK_A, "http://h/a.vhd");
        let arts = r.resolve(&resolver).unwrap();
        assert_eq!(arts.try_get(LOCAL_ISO), None);
        assert_eq!(arts.try_get_source(LOCAL_ISO), None);
        assert_eq!(
            arts.try_get_source(DISK_A).and_then(|s| s.remote_url()),
            Some("http://h/a.vhd")
        );
        assert_eq!(arts.try_get(FIRMWARE), Some(Path::new("/fw")));
        assert_eq!(arts.iter().count(), 3);
    }

    #[test]
    fn empty_requirements_do_not_call_the_resolver() {
        struct Liar;
        impl ResolveTestArtifact for Liar {
            fn resolve(&self, _: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
                unreachable!()
            }
            fn resolve_source(&self, _: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
                unreachable!()
            }
        }
        let r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        assert_eq!(r.resolve(Liar).unwrap().iter().count(), 0);
    }

    fn remote_artifacts() -> TestArtifacts {
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(DISK_A, RemoteAccess::Allow, false)
            .require(DISK_B, RemoteAccess::Allow, true);
        let resolver = TableResolver::default()
            .remote(DISK_A, "https://h/a.vhd?sig=SECRET")
            .remote(DISK_B, "https://h/b.vhd?sig=SECRET");
        r.resolve(&resolver).unwrap()
    }

    #[test]
    fn get_on_a_remote_source_panics_with_advice() {
        let arts = remote_artifacts();
        let a = arts.clone();
        let msg = panic_message(move || {
            a.get(DISK_A);
        });
        assert!(msg.contains("DISK_A"), "{msg}");
        assert!(msg.contains("require_source"), "{msg}");
        assert!(msg.contains("download"), "{msg}");
        assert!(
            msg.contains("?<redacted>") && !msg.contains("SECRET"),
            "{msg}"
        );

        let a = arts.clone();
        let msg = panic_message(move || {
            a.try_get(DISK_B);
        });
        assert!(
            msg.contains("DISK_B") && msg.contains("require_source"),
            "{msg}"
        );
        assert!(!msg.contains("SECRET"), "{msg}");
    }

    #[test]
    fn unregistered_artifact_panics() {
        let arts = remote_artifacts();
        let msg = panic_message(move || {
            arts.try_get_source(FIRMWARE);
        });
        assert!(msg.contains("FIRMWARE"), "{msg}");
        assert!(msg.contains("not registered"), "{msg}");
    }

    #[test]
    fn list_output_and_json() {
        use RemoteAccess::*;
        let mut r = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        r.require(DISK_A, Allow, false)
            .require(DISK_B, LocalOnly, false)
            .require(FIRMWARE, Allow, true);
        let out = ArtifactListOutput::from(&r);
        assert_eq!(out.required, [DISK_A.id(), DISK_B.id()]);
        assert_eq!(out.optional, [FIRMWARE.id()]);
        assert_eq!(out.local_only, [DISK_B.id()]);
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "required": [DISK_A.id(), DISK_B.id()],
                "optional": [FIRMWARE.id()],
                "local_only": [DISK_B.id()],
            })
        );
        let back: ArtifactListOutput = serde_json::from_value(json).unwrap();
        assert_eq!(back, out);
    }

    #[test]
    fn merge_across_tests_is_strictest() {
        use RemoteAccess::*;
        let mut openvmm = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        openvmm
            .require(DISK_A, Allow, false)
            .require(DISK_B, Allow, true);
        let mut hyperv = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        hyperv
            .require(DISK_A, LocalOnly, false)
            .require(DISK_B, Allow, false);
        let mut all = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        all.merge(&openvmm).merge(&hyperv);
        assert_eq!(all.access(DISK_A), Some(LocalOnly));
        assert_eq!(all.is_optional(DISK_B), Some(false));
        assert_eq!(all.access(DISK_B), Some(Allow));
        assert_eq!(all.list_output().local_only, [DISK_A.id()]);
    }

    #[test]
    fn test_artifacts_clone_shares_storage() {
        let a = remote_artifacts();
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.artifacts, &b.artifacts));
    }
}
