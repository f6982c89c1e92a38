//! [`ArtifactResolver`]: the object a test's requirement closure talks to,
//! in both phases.

use crate::handle::ArtifactHandle;
use crate::handle::ArtifactId;
use crate::handle::ErasedArtifactHandle;
use crate::requirements::TestArtifactRequirements;
use crate::requirements::TestArtifacts;
use crate::resolved::ResolvedArtifact;
use crate::resolved::ResolvedArtifactSource;
use crate::resolved::ResolvedOptionalArtifact;
use crate::source::ArtifactSource;
use crate::source::RemoteAccess;
use crate::source::RemoteOverride;
use crate::source::effective_remote_access;
use std::cell::RefCell;
use std::fmt;

enum Phase<'a> {
    Collecting(RefCell<&'a mut TestArtifactRequirements>),
    Resolving(&'a TestArtifacts),
}

/// Requires artifacts on behalf of a test, in one of two phases (see the
/// crate docs): collecting ([`Self::collector`]) records requirements and
/// returns placeholders; resolving ([`Self::resolver`]) returns what
/// resolution stored.
pub struct ArtifactResolver<'a> {
    phase: Phase<'a>,
    policy: RemoteAccess,
}

impl fmt::Debug for ArtifactResolver<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::Collecting(_) => "collecting",
            Phase::Resolving(_) => "resolving",
        };
        f.debug_struct("ArtifactResolver")
            .field("phase", &phase)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<'a> ArtifactResolver<'a> {
    /// A resolver for the collecting phase, recording into `requirements`.
    pub fn collector(requirements: &'a mut TestArtifactRequirements) -> Self {
        Self {
            phase: Phase::Collecting(RefCell::new(requirements)),
            policy: RemoteAccess::Allow,
        }
    }

    /// A resolver for the resolving phase, reading from `artifacts`.
    pub fn resolver(artifacts: &'a TestArtifacts) -> Self {
        Self {
            phase: Phase::Resolving(artifacts),
            policy: RemoteAccess::Allow,
        }
    }

    /// Sets the resolver-wide remote access policy (default
    /// [`RemoteAccess::Allow`]). With [`RemoteAccess::LocalOnly`] every
    /// [`Self::require_source`] call is local-only, whatever it asks for;
    /// use it for a backend that needs local files (Hyper-V). Use the same
    /// policy in both phases.
    pub fn with_remote_access(mut self, access: RemoteAccess) -> Self {
        self.policy = access;
        self
    }

    /// The resolver-wide remote access policy.
    pub fn remote_access(&self) -> RemoteAccess {
        self.policy
    }

    /// Whether this resolver is in the collecting phase.
    pub fn is_collecting(&self) -> bool {
        matches!(self.phase, Phase::Collecting(_))
    }

    fn record(&self, handle: ErasedArtifactHandle, access: RemoteAccess, optional: bool) {
        if let Phase::Collecting(requirements) = &self.phase {
            requirements.borrow_mut().require(handle, access, optional);
        }
    }

    /// Requires `handle` as a local file.
    ///
    /// In the resolving phase, panics if the artifact was not collected or
    /// resolved to a remote source (which cannot happen when the same
    /// closure ran in the collecting phase).
    #[track_caller]
    pub fn require<A: ArtifactId>(&self, handle: ArtifactHandle<A>) -> ResolvedArtifact<A> {
        let handle = handle.erase();
        match &self.phase {
            Phase::Collecting(_) => {
                self.record(handle, RemoteAccess::LocalOnly, false);
                ResolvedArtifact::collecting(handle)
            }
            Phase::Resolving(artifacts) => {
                ResolvedArtifact::resolved(handle, artifacts.get(handle).to_owned())
            }
        }
    }

    /// Requires `handle` as an optional local file.
    #[track_caller]
    pub fn try_require<A: ArtifactId>(
        &self,
        handle: ArtifactHandle<A>,
    ) -> ResolvedOptionalArtifact<A> {
        let handle = handle.erase();
        match &self.phase {
            Phase::Collecting(_) => {
                self.record(handle, RemoteAccess::LocalOnly, true);
                ResolvedOptionalArtifact::collecting(handle)
            }
            Phase::Resolving(artifacts) => ResolvedOptionalArtifact::resolved(
                handle,
                artifacts.try_get(handle).map(|p| p.to_owned()),
            ),
        }
    }

    /// Requires `handle` as a local file or, if `access` is
    /// [`RemoteAccess::Allow`] and the effective-access rule agrees (the
    /// artifact is blob-capable, this resolver's policy allows it, and
    /// `PETRI_REMOTE_ARTIFACTS` does not forbid it), a remote URL.
    ///
    /// In the resolving phase, panics if the artifact was not collected, or
    /// if it resolved remotely although this call is local-only (a phase
    /// mismatch, e.g. a different [`Self::with_remote_access`] policy).
    #[track_caller]
    pub fn require_source<A: ArtifactId>(
        &self,
        handle: ArtifactHandle<A>,
        access: RemoteAccess,
    ) -> ResolvedArtifactSource<A> {
        let handle = handle.erase();
        match &self.phase {
            Phase::Collecting(requirements) => {
                let over = requirements.borrow().remote_override();
                let effective =
                    effective_remote_access(handle.is_blob_capable(), self.policy, access, over);
                self.record(handle, effective, false);
                ResolvedArtifactSource::collecting(handle)
            }
            Phase::Resolving(artifacts) => {
                let source = artifacts.get_source(handle);
                let effective = effective_remote_access(
                    handle.is_blob_capable(),
                    self.policy,
                    access,
                    RemoteOverride::NoOverride,
                );
                if let (ArtifactSource::Remote { .. }, RemoteAccess::LocalOnly) =
                    (source, effective)
                {
                    panic!(
                        "artifact {handle:?} resolved to a remote source ({source}) but this \
                         require_source call is local-only; collect and resolve with the same \
                         remote access policy"
                    );
                }
                ResolvedArtifactSource::resolved(handle, source.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requirements::ResolveTestArtifact;
    use crate::test_support::panic_message;
    use std::path::Path;
    use std::path::PathBuf;

    mod arts {
        crate::declare_blob_artifacts! {
            /// A blob-capable disk.
            DISK,
            /// Another one.
            DISK2,
        }
        crate::declare_artifacts! {
            /// A local-only file.
            FW,
            /// An optional local-only file.
            EXTRA,
        }
    }
    use arts::*;

    /// Local files for `FW` and `DISK2`; everything blob-capable also
    /// resolves remotely.
    struct Fixed;
    impl ResolveTestArtifact for Fixed {
        fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
            match id.name() {
                "FW" => Ok("/img/fw".into()),
                "DISK2" => Ok("/img/disk2.vhd".into()),
                _ => anyhow::bail!("{} missing", id.name()),
            }
        }
        fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
            Ok(ArtifactSource::Remote {
                url: format!("https://store/{}.vhd?sig=SECRET", id.name()),
            })
        }
    }

    /// A test's requirement closure, in the shape the test macro generates.
    struct Reqs {
        disk: ResolvedArtifactSource<DISK>,
        disk2: ResolvedArtifactSource<DISK2>,
        fw: ResolvedArtifact<FW>,
        extra: ResolvedOptionalArtifact<EXTRA>,
    }

    fn closure(r: &ArtifactResolver<'_>) -> Reqs {
        Reqs {
            disk: r.require_source(DISK, RemoteAccess::Allow),
            disk2: r.require_source(DISK2, RemoteAccess::Allow),
            fw: r.require(FW),
            extra: r.try_require(EXTRA),
        }
    }

    fn run(policy: RemoteAccess, over: RemoteOverride) -> (TestArtifactRequirements, Reqs) {
        let mut reqs = TestArtifactRequirements::with_override(over);
        let placeholders =
            closure(&ArtifactResolver::collector(&mut reqs).with_remote_access(policy));
        assert!(placeholders.disk.handle() == DISK);
        let arts = reqs.resolve(Fixed).unwrap();
        let out = closure(&ArtifactResolver::resolver(&arts).with_remote_access(policy));
        (reqs, out)
    }

    #[test]
    fn two_phases_allow() {
        let (reqs, out) = run(RemoteAccess::Allow, RemoteOverride::NoOverride);
        assert_eq!(reqs.access(DISK), Some(RemoteAccess::Allow));
        assert_eq!(reqs.access(FW), Some(RemoteAccess::LocalOnly));
        assert_eq!(reqs.is_optional(EXTRA), Some(true));
        assert_eq!(
            out.disk.get().remote_url(),
            Some("https://store/DISK.vhd?sig=SECRET")
        );
        assert!(out.disk2.get().is_remote());
        assert_eq!(out.fw.get(), Path::new("/img/fw"));
        assert_eq!(out.extra.get(), None);
        let dbg = format!("{:?}", out.disk);
        assert!(dbg.contains("DISK") && !dbg.contains("SECRET"), "{dbg}");
    }

    #[test]
    fn resolver_wide_local_only_policy_is_real() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        let r = ArtifactResolver::collector(&mut reqs).with_remote_access(RemoteAccess::LocalOnly);
        assert_eq!(r.remote_access(), RemoteAccess::LocalOnly);
        let _ = r.require_source(DISK2, RemoteAccess::Allow);

        assert_eq!(reqs.access(DISK2), Some(RemoteAccess::LocalOnly));

        // And through both phases: DISK2 resolves to its local file.
        let arts = reqs.resolve(Fixed).unwrap();
        let r = ArtifactResolver::resolver(&arts).with_remote_access(RemoteAccess::LocalOnly);
        assert_eq!(
            r.require_source(DISK2, RemoteAccess::Allow).get(),
            &ArtifactSource::Local("/img/disk2.vhd".into())
        );
    }

    #[test]
    fn local_only_policy_fails_without_local_files() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        closure(
            &ArtifactResolver::collector(&mut reqs).with_remote_access(RemoteAccess::LocalOnly),
        );
        let err = reqs.resolve(Fixed).unwrap_err();
        assert!(format!("{err:#}").contains("DISK missing"), "{err:#}");
    }

    #[test]
    fn override_forces_local_in_collector() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::ForceLocal);
        let r = ArtifactResolver::collector(&mut reqs);
        let _ = r.require_source(DISK2, RemoteAccess::Allow);

        assert_eq!(reqs.access(DISK2), Some(RemoteAccess::LocalOnly));
        let arts = reqs.resolve(Fixed).unwrap();
        assert_eq!(arts.get(DISK2), Path::new("/img/disk2.vhd"));
    }

    #[test]
    fn per_call_local_only_is_recorded() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        let r = ArtifactResolver::collector(&mut reqs);
        assert!(r.is_collecting());
        let _ = r.require_source(DISK, RemoteAccess::LocalOnly);

        assert_eq!(reqs.access(DISK), Some(RemoteAccess::LocalOnly));
    }

    #[test]
    fn placeholders_panic_in_the_collecting_phase() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        let p = closure(&ArtifactResolver::collector(&mut reqs));
        let Reqs {
            disk,
            disk2: _,
            fw,
            extra,
        } = p;
        let fw2 = fw.clone();
        let msgs = [
            panic_message(move || {
                disk.get();
            }),
            panic_message(move || {
                fw.get();
            }),
            panic_message(move || {
                let _: PathBuf = fw2.into();
            }),
            panic_message(move || {
                extra.get();
            }),
        ];
        for (msg, name) in msgs.iter().zip(["DISK", "FW", "FW", "EXTRA"]) {
            assert!(msg.contains("collecting phase"), "{msg}");
            assert!(msg.contains(name), "{msg}");
        }
    }

    #[test]
    fn phase_mismatch_panics_instead_of_returning_a_url() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        let _ = ArtifactResolver::collector(&mut reqs).require_source(DISK, RemoteAccess::Allow);
        let arts = reqs.resolve(Fixed).unwrap();
        let msg = panic_message(move || {
            let r = ArtifactResolver::resolver(&arts).with_remote_access(RemoteAccess::LocalOnly);
            let _ = r.require_source(DISK, RemoteAccess::Allow);
        });
        assert!(msg.contains("DISK") && msg.contains("local-only"), "{msg}");
        assert!(!msg.contains("SECRET"), "{msg}");
    }

    #[test]
    fn require_in_resolving_phase_panics_for_remote() {
        let mut reqs = TestArtifactRequirements::with_override(RemoteOverride::NoOverride);
        let _ = ArtifactResolver::collector(&mut reqs).require_source(DISK, RemoteAccess::Allow);
        let arts = reqs.resolve(Fixed).unwrap();
        let msg = panic_message(move || {
            let _ = ArtifactResolver::resolver(&arts).require(DISK);
        });
        assert!(msg.contains("require_source"), "{msg}");
    }

    #[test]
    fn erase_keeps_the_value() {
        let (_, out) = run(RemoteAccess::Allow, RemoteOverride::NoOverride);
        let fw: ResolvedArtifact = out.fw.erase();
        assert_eq!(fw.as_ref(), Path::new("/img/fw"));
        let d: ResolvedArtifactSource = out.disk.erase();
        assert!(d.into_source().is_remote());
        assert_eq!(out.extra.erase().get(), None);
    }
}
