//! The known-paths artifact resolver: local images first, then a URL.
//!
//! Position in the data flow: the petri harness collects a test's
//! `TestArtifactRequirements` and resolves them with
//! [`OpenvmmKnownPathsTestArtifactResolver`]. For each artifact it answers
//! from the one catalog (`vmm_test_images::KnownTestArtifacts`) and the
//! environment:
//!
//! - [`ResolveTestArtifact::resolve`] (local only): the image's file name in
//!   the folder of [`ResolverEnv::image_search_dirs`]: `$VMM_TEST_IMAGES`
//!   when set, else `images` under the workspace root (`VMM_TEST_IMAGES`
//!   replaces the default folder rather than adding to it, so a run can
//!   make an image stream even when the workspace holds a copy). A miss is a
//!   [`LocalArtifactNotFound`] naming the artifact, every path searched and
//!   the exact recovery command
//!   (`cargo xtask guest-test download-image --artifacts <Name>`).
//! - [`ResolveTestArtifact::resolve_source`] (remote allowed): the same
//!   local lookup, done once; on a miss, a blob-capable image becomes
//!   `ArtifactSource::Remote { url }` with url = base URL + `/` +
//!   percent-encoded file name ([`artifact_url`]), base URL from
//!   [`artifact_base_url`] (`$PETRI_ARTIFACT_BASE_URL`, else the default
//!   Azure container). Every disk image has a remote form (flat, VHD1 and
//!   VHDX alike: the disk layer reads them lazily); a file with none (the
//!   test guest's kernel and initramfs, which the VMM loads itself)
//!   returns the original local error, unchanged.
//! - The per-test log directory
//!   (`petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY`) resolves to
//!   `$TEST_OUTPUT_PATH/<test name>`, by default
//!   `<target dir>/test-output/<test name>`, created on resolution.
//!
//! The environment is read once, into a [`ResolverEnv`], by
//! [`ResolverEnv::from_process_env`]; tests build a [`ResolverEnv`] by hand
//! instead of mutating the process environment. `PETRI_REMOTE_ARTIFACTS` is
//! not read here: the artifacts core applies it before this resolver is
//! asked, by calling `resolve` instead of `resolve_source`.
//!
//! Invariants:
//!
//! - No URL query string (SAS token, presigned signature) appears in any
//!   error or log line from this crate: base URLs are shown through
//!   `RedactedUrl`, built URLs are never put into errors.
//! - Each artifact's local lookup happens once per call; its error is the
//!   one returned (or kept as the cause), never replaced by a second lookup.
//! - The base-URL rule ([`artifact_base_url`]) and URL construction
//!   ([`artifact_url`]) exist only here; `download-image` reuses them.
//!
//! FUTURE: check a local file's size against the catalog once every size
//! in the catalog is verified against the store.

#![forbid(unsafe_code)]

mod base_url;

pub use base_url::BASE_URL_ENV;
pub use base_url::BaseUrlError;
pub use base_url::BaseUrlProblem;
pub use base_url::artifact_base_url;
pub use base_url::artifact_url;
pub use base_url::default_base_url;
pub use base_url::percent_encode_segment;

use petri_artifacts_common::DEFAULT_TEST_OUTPUT_SUBDIR;
use petri_artifacts_common::TEST_OUTPUT_PATH_ENV;
use petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY;
use petri_artifacts_common::test_log_directory;
use petri_artifacts_core::ArtifactSource;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RedactedUrl;
use petri_artifacts_core::ResolveTestArtifact;
use std::fmt;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use vmm_test_images::KnownTestArtifacts;

/// The environment variable naming the local images folder.
pub const IMAGES_DIR_ENV: &str = "VMM_TEST_IMAGES";

/// The images folder under the workspace root, searched after
/// `$VMM_TEST_IMAGES` (and the only one when it is not set).
pub const DEFAULT_IMAGES_SUBDIR: &str = "images";

/// Cargo's target directory override.
pub const CARGO_TARGET_DIR_ENV: &str = "CARGO_TARGET_DIR";

/// The inputs of resolution, normally read from the process environment.
///
/// Relative paths are taken relative to [`Self::workspace_root`] (test
/// binaries run with the package directory as the working directory, so a
/// path relative to it would surprise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverEnv {
    /// `$VMM_TEST_IMAGES`: the local images folder.
    pub images_dir: Option<PathBuf>,
    /// `$PETRI_ARTIFACT_BASE_URL`, raw (may hold a secret query; never
    /// print it, use [`Self::base_url`]).
    pub base_url: Option<String>,
    /// `$TEST_OUTPUT_PATH`: the root of per-test output folders.
    pub test_output_path: Option<PathBuf>,
    /// `$CARGO_TARGET_DIR`.
    pub target_dir: Option<PathBuf>,
    /// The workspace root (see [`workspace_root`]).
    pub workspace_root: PathBuf,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl ResolverEnv {
    /// Reads `VMM_TEST_IMAGES`, `PETRI_ARTIFACT_BASE_URL`,
    /// `TEST_OUTPUT_PATH` and `CARGO_TARGET_DIR` (empty values count as
    /// unset), and finds the workspace root. The only place this crate
    /// reads the environment.
    pub fn from_process_env() -> Self {
        Self {
            images_dir: env_path(IMAGES_DIR_ENV),
            // A value that is not valid Unicode is kept lossily: it fails
            // validation with a clear error instead of being ignored.
            base_url: std::env::var_os(BASE_URL_ENV).map(|v| v.to_string_lossy().into_owned()),
            test_output_path: env_path(TEST_OUTPUT_PATH_ENV),
            target_dir: env_path(CARGO_TARGET_DIR_ENV),
            workspace_root: workspace_root(),
        }
    }

    /// An environment with nothing set and the given workspace root.
    pub fn with_workspace_root(workspace_root: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: None,
            base_url: None,
            test_output_path: None,
            target_dir: None,
            workspace_root: workspace_root.into(),
        }
    }

    fn absolute(&self, path: &Path) -> PathBuf {
        self.workspace_root.join(path)
    }

    /// The folders searched for local images: `$VMM_TEST_IMAGES` when set,
    /// else `<workspace root>/images` (one folder; a list so that error
    /// messages and callers need not change if a search path is added).
    pub fn image_search_dirs(&self) -> Vec<PathBuf> {
        vec![self.download_dir()]
    }

    /// Where downloaded images go: the images folder.
    pub fn download_dir(&self) -> PathBuf {
        match &self.images_dir {
            Some(dir) => self.absolute(dir),
            None => self.workspace_root.join(DEFAULT_IMAGES_SUBDIR),
        }
    }

    /// The base URL by the one rule ([`artifact_base_url`]).
    pub fn base_url(&self) -> Result<String, BaseUrlError> {
        artifact_base_url(self.base_url.as_deref())
    }

    /// The URL `artifact` is fetched from (for lazy reads and for
    /// `download-image`, whether or not it is blob-capable).
    pub fn download_url(&self, artifact: KnownTestArtifacts) -> Result<String, BaseUrlError> {
        Ok(artifact_url(&self.base_url()?, artifact.file_name()))
    }

    /// The target directory: `$CARGO_TARGET_DIR`, else
    /// `<workspace root>/target`.
    pub fn target_dir(&self) -> PathBuf {
        match &self.target_dir {
            Some(dir) => self.absolute(dir),
            None => self.workspace_root.join("target"),
        }
    }

    /// The root of per-test output folders: `$TEST_OUTPUT_PATH`, else
    /// `<target dir>/test-output`.
    pub fn test_output_root(&self) -> PathBuf {
        match &self.test_output_path {
            Some(dir) => self.absolute(dir),
            None => self.target_dir().join(DEFAULT_TEST_OUTPUT_SUBDIR),
        }
    }

    /// Looks `artifact` up in the image folders (no remote fallback).
    pub fn find_local(
        &self,
        artifact: KnownTestArtifacts,
    ) -> Result<PathBuf, LocalArtifactNotFound> {
        let mut searched = Vec::new();
        for dir in self.image_search_dirs() {
            let path = dir.join(artifact.file_name());
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => return Ok(path),
                Ok(_) => searched.push(SearchedPath {
                    path,
                    outcome: SearchOutcome::NotAFile,
                }),
                Err(err) if err.kind() == io::ErrorKind::NotFound => searched.push(SearchedPath {
                    path,
                    outcome: SearchOutcome::Missing,
                }),
                Err(err) => searched.push(SearchedPath {
                    path,
                    outcome: SearchOutcome::Error(err),
                }),
            }
        }
        Err(LocalArtifactNotFound { artifact, searched })
    }
}

/// The workspace root: the nearest ancestor of this crate's source
/// directory (as compiled) that holds `rust-toolchain.toml`, else
/// `Cargo.lock`; if neither exists (the crate was built elsewhere), the
/// current directory.
pub fn workspace_root() -> PathBuf {
    let start = Path::new(env!("CARGO_MANIFEST_DIR"));
    find_workspace_root(start)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| start.to_owned())
}

/// The nearest ancestor of `start` (itself included) holding
/// `rust-toolchain.toml`, else the nearest holding `Cargo.lock`.
pub fn find_workspace_root(start: &Path) -> Option<PathBuf> {
    let find = |marker: &str| {
        start
            .ancestors()
            .find(|dir| dir.join(marker).is_file())
            .map(Path::to_owned)
    };
    find("rust-toolchain.toml").or_else(|| find("Cargo.lock"))
}

/// The outcome of looking at one candidate path.
#[derive(Debug)]
pub enum SearchOutcome {
    /// Nothing there.
    Missing,
    /// Something there, but not a regular file.
    NotAFile,
    /// The path could not be examined.
    Error(io::Error),
}

/// One path the resolver looked at.
#[derive(Debug)]
pub struct SearchedPath {
    /// The candidate path.
    pub path: PathBuf,
    /// What was found.
    pub outcome: SearchOutcome,
}

/// A test image is not available locally.
///
/// Names the artifact, every path searched (with what was found there) and
/// the command that downloads it. Its `source` is the first I/O error other
/// than "not found", if any.
#[derive(Debug)]
pub struct LocalArtifactNotFound {
    /// The image.
    pub artifact: KnownTestArtifacts,
    /// Every path searched, in order.
    pub searched: Vec<SearchedPath>,
}

impl fmt::Display for LocalArtifactNotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.artifact;
        write!(
            f,
            "test artifact {a} ({}) is not available locally; searched:",
            a.handle()
        )?;
        for s in &self.searched {
            write!(f, "\n    {} (", s.path.display())?;
            match &s.outcome {
                SearchOutcome::Missing => f.write_str("not found")?,
                SearchOutcome::NotAFile => f.write_str("not a regular file")?,
                SearchOutcome::Error(err) => write!(f, "{err}")?,
            }
            f.write_str(")")?;
        }
        if !a.remote_capable() {
            write!(
                f,
                "\n  {} cannot be read remotely, so it must be present locally",
                match a.format() {
                    vmm_test_images::ImageFormat::File =>
                        "a file the VMM loads itself (kernel, initramfs)",
                    _ => "this image",
                }
            )?;
        }
        write!(
            f,
            "\n  download it with: {} (or set {IMAGES_DIR_ENV} to the folder holding {})",
            a.download_command(),
            a.file_name()
        )
    }
}

impl std::error::Error for LocalArtifactNotFound {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.searched.iter().find_map(|s| match &s.outcome {
            SearchOutcome::Error(err) => Some(err as &(dyn std::error::Error + 'static)),
            _ => None,
        })
    }
}

/// An artifact this resolver does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "artifact {0} is not in the vmm_test_images catalog; the known-paths resolver cannot resolve it"
)]
pub struct UnknownArtifact(pub ErasedArtifactHandle);

/// Resolves test artifacts from the local images folder and, where allowed,
/// the image store. See the crate docs for the rules.
#[derive(Debug, Clone)]
pub struct OpenvmmKnownPathsTestArtifactResolver {
    test_name: String,
    env: ResolverEnv,
}

impl OpenvmmKnownPathsTestArtifactResolver {
    /// A resolver for `test_name` (used for its log directory), with the
    /// environment read now ([`ResolverEnv::from_process_env`]).
    pub fn new(test_name: &str) -> Self {
        Self::with_env(test_name, ResolverEnv::from_process_env())
    }

    /// A resolver with an explicit environment (for tests and tools).
    pub fn with_env(test_name: &str, env: ResolverEnv) -> Self {
        Self {
            test_name: test_name.to_owned(),
            env,
        }
    }

    /// The environment this resolver uses.
    pub fn env(&self) -> &ResolverEnv {
        &self.env
    }

    /// The test this resolver resolves for.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    fn test_log_directory(&self) -> anyhow::Result<PathBuf> {
        let dir = test_log_directory(&self.env.test_output_root(), &self.test_name);
        std::fs::create_dir_all(&dir).map_err(|err| {
            anyhow::Error::new(err).context(format!(
                "creating the log directory of test {:?} at {}",
                self.test_name,
                dir.display()
            ))
        })?;
        Ok(dir)
    }

    fn known(id: ErasedArtifactHandle) -> Result<KnownTestArtifacts, UnknownArtifact> {
        KnownTestArtifacts::from_handle(id).ok_or(UnknownArtifact(id))
    }
}

impl ResolveTestArtifact for OpenvmmKnownPathsTestArtifactResolver {
    fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
        if id == TEST_LOG_DIRECTORY {
            return self.test_log_directory();
        }
        let known = Self::known(id)?;
        Ok(self.env.find_local(known)?)
    }

    fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
        if id == TEST_LOG_DIRECTORY {
            return self.test_log_directory().map(ArtifactSource::Local);
        }
        let known = Self::known(id)?;
        let local_miss = match self.env.find_local(known) {
            Ok(path) => return Ok(ArtifactSource::Local(path)),
            Err(miss) => miss,
        };
        if !known.remote_capable() {
            // No remote form: the original local error, as is.
            return Err(local_miss.into());
        }
        let base = self.env.base_url().map_err(|err| {
            anyhow::Error::new(err).context(format!(
                "test artifact {known} is not available locally and no remote URL can be \
                 built for it; fix the base URL, or {}",
                known.download_command()
            ))
        })?;
        let url = artifact_url(&base, known.file_name());
        tracing::debug!(
            artifact = %known,
            url = %RedactedUrl(&url),
            "artifact not found locally; resolved to a remote source"
        );
        Ok(ArtifactSource::Remote { url })
    }
}
