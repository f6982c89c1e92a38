//! Artifact declarations, requirements and resolution for petri tests.
//!
//! Position in the data flow: this is the vocabulary at the top of the
//! stack. Test crates *declare* artifacts (guest images, firmware, log
//! folders) with [`declare_artifacts!`] or [`declare_blob_artifacts!`]; a
//! test's requirement closure *requires* them through an
//! [`ArtifactResolver`]; the harness *resolves* the collected
//! [`TestArtifactRequirements`] with a [`ResolveTestArtifact`]
//! implementation (for example the known-paths resolver) into
//! [`TestArtifacts`]; and the test body reads the resolved paths or
//! [`ArtifactSource`]s through the same resolver. Nothing here knows where
//! artifacts live, how they are fetched or how a disk is opened.
//!
//! # Model: two phases, one closure
//!
//! A test's requirement closure runs twice against an [`ArtifactResolver`]:
//!
//! 1. **Collecting** ([`ArtifactResolver::collector`]): every `require*`
//!    call records the artifact and how it may be served into a
//!    [`TestArtifactRequirements`], and returns a placeholder. Reading a
//!    placeholder (`get()`) panics with a message saying so.
//! 2. **Resolving** ([`ArtifactResolver::resolver`]): the same calls return
//!    what [`TestArtifactRequirements::resolve`] stored in [`TestArtifacts`].
//!
//! # Remote access policy
//!
//! An artifact may be served remotely (as an HTTP(S) URL opened lazily as a
//! blob disk) only if all of these allow it; otherwise it is
//! [`RemoteAccess::LocalOnly`]:
//!
//! - the artifact was declared with [`declare_blob_artifacts!`]
//!   ([`ErasedArtifactHandle::is_blob_capable`]);
//! - the resolver-wide policy ([`ArtifactResolver::with_remote_access`],
//!   default [`RemoteAccess::Allow`]) allows it;
//! - the process-wide override does not forbid it
//!   ([`RemoteOverride`], from `PETRI_REMOTE_ARTIFACTS` = `0` or `false`);
//! - the per-call value (`require_source(handle, access)`) allows it.
//!
//! The rule is the pure function [`effective_remote_access`]; the
//! environment variable is read only by [`RemoteOverride::from_process_env`].
//!
//! # Invariants
//!
//! - The artifacts core does no I/O besides reading one environment variable
//!   in [`RemoteOverride::from_process_env`].
//! - Duplicate requirements merge to the strictest: required beats optional,
//!   [`RemoteAccess::LocalOnly`] beats [`RemoteAccess::Allow`].
//! - A URL's query string (which may hold a SAS token) never appears in the
//!   `Debug` or `Display` output of an [`ArtifactSource`]; use
//!   [`RedactedUrl`] / [`redact_url`] for every URL printed elsewhere.
//! - Artifact ids are `module_path!() :: NAME` of the declaration, so two
//!   artifacts with the same NAME in different modules never collide.

#![forbid(unsafe_code)]

mod handle;
mod requirements;
mod resolved;
mod resolver;
mod source;
#[cfg(test)]
mod test_support;

pub use handle::ArtifactHandle;
pub use handle::ArtifactId;
pub use handle::AsArtifactHandle;
pub use handle::ErasedArtifactHandle;
pub use requirements::ArtifactFailure;
pub use requirements::ArtifactListOutput;
pub use requirements::ArtifactResolutionError;
pub use requirements::ResolveTestArtifact;
pub use requirements::TestArtifactRequirements;
pub use requirements::TestArtifacts;
pub use resolved::ResolvedArtifact;
pub use resolved::ResolvedArtifactSource;
pub use resolved::ResolvedOptionalArtifact;
pub use resolver::ArtifactResolver;
pub use source::ArtifactSource;
pub use source::RemoteAccess;
pub use source::RemoteOverride;
pub use source::effective_remote_access;

// URL redaction, re-exported from the `url_redact` crate for convenience.
pub use url_redact::RedactedUrl;
pub use url_redact::redact_url;
pub use url_redact::strip_query;

// Used by the declare macros; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use core::concat;
    pub use core::module_path;
    pub use core::stringify;
}
