//! What `ArtifactResolver::require*` returns: placeholders in the collecting
//! phase, resolved values in the resolving phase.

use crate::handle::ErasedArtifactHandle;
use crate::source::ArtifactSource;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::path::PathBuf;

#[track_caller]
fn collecting_phase_panic(what: &str, handle: ErasedArtifactHandle) -> ! {
    panic!(
        "{what} called for artifact {handle:?} during the collecting phase: \
         artifacts are only available after requirements are resolved; \
         do not read resolved artifacts inside the requirement-collecting pass"
    )
}

/// A required artifact resolved to a local path (from
/// [`ArtifactResolver::require`](crate::ArtifactResolver::require)).
pub struct ResolvedArtifact<A = ()> {
    handle: ErasedArtifactHandle,
    path: Option<PathBuf>,
    _tag: PhantomData<fn() -> A>,
}

impl<A> ResolvedArtifact<A> {
    pub(crate) fn collecting(handle: ErasedArtifactHandle) -> Self {
        Self {
            handle,
            path: None,
            _tag: PhantomData,
        }
    }

    pub(crate) fn resolved(handle: ErasedArtifactHandle, path: PathBuf) -> Self {
        Self {
            handle,
            path: Some(path),
            _tag: PhantomData,
        }
    }

    /// The artifact's handle.
    pub fn handle(&self) -> ErasedArtifactHandle {
        self.handle
    }

    /// The local path.
    ///
    /// # Panics
    ///
    /// In the collecting phase, with a message saying so.
    #[track_caller]
    pub fn get(&self) -> &Path {
        match &self.path {
            Some(path) => path,
            None => collecting_phase_panic("ResolvedArtifact::get", self.handle),
        }
    }

    /// Erases the type tag.
    pub fn erase(self) -> ResolvedArtifact<()> {
        ResolvedArtifact {
            handle: self.handle,
            path: self.path,
            _tag: PhantomData,
        }
    }
}

impl<A> AsRef<Path> for ResolvedArtifact<A> {
    /// # Panics
    ///
    /// In the collecting phase, like [`ResolvedArtifact::get`].
    #[track_caller]
    fn as_ref(&self) -> &Path {
        self.get()
    }
}

impl<A> From<ResolvedArtifact<A>> for PathBuf {
    /// # Panics
    ///
    /// In the collecting phase, like [`ResolvedArtifact::get`].
    #[track_caller]
    fn from(value: ResolvedArtifact<A>) -> Self {
        match value.path {
            Some(path) => path,
            None => collecting_phase_panic("PathBuf::from(ResolvedArtifact)", value.handle),
        }
    }
}

impl<A> Clone for ResolvedArtifact<A> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle,
            path: self.path.clone(),
            _tag: PhantomData,
        }
    }
}

impl<A> fmt::Debug for ResolvedArtifact<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedArtifact")
            .field("handle", &self.handle)
            .field("path", &self.path)
            .finish()
    }
}

/// An optional artifact (from
/// [`ArtifactResolver::try_require`](crate::ArtifactResolver::try_require)):
/// a local path, or nothing if it could not be resolved.
pub struct ResolvedOptionalArtifact<A = ()> {
    handle: ErasedArtifactHandle,
    /// `None` in the collecting phase.
    state: Option<Option<PathBuf>>,
    _tag: PhantomData<fn() -> A>,
}

impl<A> ResolvedOptionalArtifact<A> {
    pub(crate) fn collecting(handle: ErasedArtifactHandle) -> Self {
        Self {
            handle,
            state: None,
            _tag: PhantomData,
        }
    }

    pub(crate) fn resolved(handle: ErasedArtifactHandle, path: Option<PathBuf>) -> Self {
        Self {
            handle,
            state: Some(path),
            _tag: PhantomData,
        }
    }

    /// The artifact's handle.
    pub fn handle(&self) -> ErasedArtifactHandle {
        self.handle
    }

    /// The local path, or `None` if the artifact could not be resolved.
    ///
    /// # Panics
    ///
    /// In the collecting phase, with a message saying so.
    #[track_caller]
    pub fn get(&self) -> Option<&Path> {
        match &self.state {
            Some(path) => path.as_deref(),
            None => collecting_phase_panic("ResolvedOptionalArtifact::get", self.handle),
        }
    }

    /// Erases the type tag.
    pub fn erase(self) -> ResolvedOptionalArtifact<()> {
        ResolvedOptionalArtifact {
            handle: self.handle,
            state: self.state,
            _tag: PhantomData,
        }
    }
}

impl<A> Clone for ResolvedOptionalArtifact<A> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle,
            state: self.state.clone(),
            _tag: PhantomData,
        }
    }
}

impl<A> fmt::Debug for ResolvedOptionalArtifact<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolvedOptionalArtifact")
            .field("handle", &self.handle)
            .field("state", &self.state)
            .finish()
    }
}

/// An artifact resolved to a local file or a remote URL (from
/// [`ArtifactResolver::require_source`](crate::ArtifactResolver::require_source)).
pub struct ResolvedArtifactSource<A = ()> {
    handle: ErasedArtifactHandle,
    source: Option<ArtifactSource>,
    _tag: PhantomData<fn() -> A>,
}

impl<A> ResolvedArtifactSource<A> {
    pub(crate) fn collecting(handle: ErasedArtifactHandle) -> Self {
        Self {
            handle,
            source: None,
            _tag: PhantomData,
        }
    }

    pub(crate) fn resolved(handle: ErasedArtifactHandle, source: ArtifactSource) -> Self {
        Self {
            handle,
            source: Some(source),
            _tag: PhantomData,
        }
    }

    /// The artifact's handle.
    pub fn handle(&self) -> ErasedArtifactHandle {
        self.handle
    }

    /// The source.
    ///
    /// # Panics
    ///
    /// In the collecting phase, with a message saying so.
    #[track_caller]
    pub fn get(&self) -> &ArtifactSource {
        match &self.source {
            Some(source) => source,
            None => collecting_phase_panic("ResolvedArtifactSource::get", self.handle),
        }
    }

    /// Consumes `self`, returning the source.
    ///
    /// # Panics
    ///
    /// In the collecting phase, like [`ResolvedArtifactSource::get`].
    #[track_caller]
    pub fn into_source(self) -> ArtifactSource {
        match self.source {
            Some(source) => source,
            None => collecting_phase_panic("ResolvedArtifactSource::into_source", self.handle),
        }
    }

    /// Erases the type tag.
    pub fn erase(self) -> ResolvedArtifactSource<()> {
        ResolvedArtifactSource {
            handle: self.handle,
            source: self.source,
            _tag: PhantomData,
        }
    }
}

impl<A> Clone for ResolvedArtifactSource<A> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle,
            source: self.source.clone(),
            _tag: PhantomData,
        }
    }
}

impl<A> fmt::Debug for ResolvedArtifactSource<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `ArtifactSource`'s Debug redacts URL queries.
        f.debug_struct("ResolvedArtifactSource")
            .field("handle", &self.handle)
            .field("source", &self.source)
            .finish()
    }
}
