//! Per-test resolver environments, and the nginx mirror the
//! `remote_mirror` tests boot from.
//!
//! Why not environment variables: the resolver reads
//! `PETRI_ARTIFACT_BASE_URL`, `VMM_TEST_IMAGES` and `PETRI_CACHE_DIR` from
//! the process environment, which is shared by every test of the process
//! (`cargo test` runs tests on threads of one process; only nextest gives
//! each its own), and the workspace `images` folder, where
//! `cargo xtask guest-test build-image` puts the test guest, is always
//! searched, so the root disk would simply resolve locally. Instead the
//! test binary's resolve function builds each test's
//! [`ResolverEnv`] itself ([`resolver_env`]):
//!
//! - every test: the process environment, plus a check that the built
//!   test guest files it requires (the petri test guest's or the Debian
//!   guest's) are built (missing: the test is skipped with that guest's
//!   build command, or fails under `CI=true`); root disks may instead
//!   stream from a store the user names with `PETRI_ARTIFACT_BASE_URL` (as
//!   `cargo xtask guest-test run` does);
//! - a test in the `remote_mirror` module that requires a built guest
//!   additionally gets a [`RemoteMirror`]: a store (nginx on 127.0.0.1
//!   serving the folder of the built root disk the test requires, or the
//!   user's `PETRI_ARTIFACT_BASE_URL` when set), a private images folder
//!   holding only the guest's kernel and initramfs (local-only
//!   artifacts), a fresh cache directory, and a resolver environment whose
//!   base URL is that store and whose only image folder is the private
//!   one. So the root disk always resolves to a URL, exactly as for a user
//!   whose images live on a store.
//!
//! - a test in the `sparse_formats` module gets the same, except that
//!   its nginx serves a new folder holding the test guest's raw root
//!   disk converted by `qemu-img convert` to the test's format, under the
//!   raw image's name (so the root disk resolves to it).
//!
//! The test takes its mirror with [`take`] (for the cache directory and
//! nginx's request count; the backend gets the cache directory through
//! `PetriVmBuilder::with_cache_dir`), and nginx stops when the test drops
//! it. Nothing here changes the process environment, so tests can run in
//! one process in parallel, and `PETRI_REMOTE_ARTIFACTS=0` still applies
//! (the artifacts core reads it).

use anyhow::Context as _;
use blob_test_servers::NginxServer;
use petri::SkipTest;
use petri::TestArtifactRequirements;
use petri_artifact_resolver_openvmm_known_paths::ResolverEnv;
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use vmm_test_images::KnownTestArtifacts;

/// Tests whose names start with this boot from a [`RemoteMirror`].
pub const MIRRORED_MODULE: &str = "remote_mirror::";

/// Tests whose names start with this boot from a [`RemoteMirror`] that
/// serves the test guest's raw root disk converted to another format
/// (see `sparse_formats`).
pub const SPARSE_MODULE: &str = "sparse_formats::";

/// nginx serving the built test guest images, plus the folders a test
/// resolves and caches into.
pub struct RemoteMirror {
    /// nginx and the folder it serves; `None` for the user's store.
    nginx: Option<(NginxServer, PathBuf)>,
    base_url: String,
    root: tempfile::TempDir,
    /// The folder of converted images nginx serves, if any.
    _converted: Option<tempfile::TempDir>,
}

impl RemoteMirror {
    /// The fresh read-cache directory of this test.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// nginx, when the mirror is ours (not the user's store).
    pub fn nginx(&self) -> Option<&NginxServer> {
        self.nginx.as_ref().map(|(n, _)| n)
    }

    /// Requests nginx has answered so far, when the mirror is ours.
    pub fn nginx_requests(&self) -> anyhow::Result<Option<u64>> {
        self.nginx().map(|n| n.request_count()).transpose()
    }

    /// The folder nginx serves (the built images folder), when ours.
    pub fn served_dir(&self) -> Option<&Path> {
        self.nginx.as_ref().map(|(_, d)| d.as_path())
    }

    /// Checks that `config` boots from a remote root disk this mirror
    /// serves (and not, say, from a local copy).
    pub fn check_serves_root<T: petri::PetriVmmBackend>(
        &self,
        config: &petri::PetriVmBuilder<T>,
    ) -> anyhow::Result<()> {
        let root = crate::guest::boot_disk(config)?;
        let base = self.base_url.split('?').next().unwrap_or_default();
        match &root {
            petri::Disk::Differencing(petri::DiskPath::Remote { url }) => anyhow::ensure!(
                url.starts_with(base),
                "the root disk {root:?} is not served by the test's store"
            ),
            other => anyhow::bail!("expected a remote root disk, got {other:?}"),
        }
        Ok(())
    }

    /// A mirror for a test that requires the built guest files `needed`:
    /// of the built root disk's folder (or the user's store), or, with
    /// `converted`, of that folder of converted images (always our own
    /// nginx).
    fn start(
        env: &ResolverEnv,
        needed: &[KnownTestArtifacts],
        converted: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Self> {
        let nginx = match (&env.base_url, &converted) {
            (Some(_), None) => None,
            _ => {
                if blob_test_servers::require_tool("nginx").is_none() {
                    return Err(
                        SkipTest::new("nginx is not installed (apt-get install nginx)").into(),
                    );
                }
                let served_dir = match &converted {
                    Some(dir) => dir.path().to_owned(),
                    None => {
                        let disk = needed
                            .iter()
                            .find(|a| a.remote_capable())
                            .context("the test requires no built root disk to serve")?;
                        let path = env
                            .find_local(*disk)
                            .with_context(|| format!("{disk} is not built"))?;
                        path.parent()
                            .with_context(|| format!("{} has no parent folder", path.display()))?
                            .to_owned()
                    }
                };
                let nginx = NginxServer::serve_dir(&served_dir).context("starting nginx")?;
                Some((nginx, served_dir))
            }
        };
        let base_url = match &nginx {
            Some((n, _)) => n.base_url(),
            None => env.base_url()?,
        };
        let root = tempfile::Builder::new()
            .prefix("petri-mirror-")
            .tempdir()
            .context("creating the mirror's folders")?;
        let images = root.path().join("images");
        std::fs::create_dir_all(&images)?;
        std::fs::create_dir_all(root.path().join("cache"))?;
        // The local-only files (kernel, initramfs) stay local.
        for a in needed.iter().filter(|a| !a.remote_capable()) {
            let from = env.find_local(*a)?;
            let to = images.join(a.file_name());
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
            }
        }
        Ok(Self {
            nginx,
            base_url,
            root,
            _converted: converted,
        })
    }
}

/// Converts the built raw root disk of the test guest for `conversion`
/// into a new folder, under the raw image's own file name.
fn convert_root_disk(
    env: &ResolverEnv,
    conversion: &crate::sparse_formats::Conversion,
) -> anyhow::Result<tempfile::TempDir> {
    let Some(qemu_img) = blob_test_servers::require_tool("qemu-img") else {
        return Err(SkipTest::new("qemu-img is not installed (apt-get install qemu-utils)").into());
    };
    let raw = env
        .find_local(KnownTestArtifacts::PetriTestGuestX64Raw)
        .context("the test guest's raw disk is not built")?;
    let dir = tempfile::Builder::new()
        .prefix("petri-converted-")
        .tempdir()
        .context("creating the folder of converted images")?;
    let out = dir
        .path()
        .join(KnownTestArtifacts::PetriTestGuestX64Raw.file_name());
    let status = std::process::Command::new(qemu_img)
        .args(["convert", "-f", "raw"])
        .args(conversion.args)
        .arg(&raw)
        .arg(&out)
        .output()
        .context("running qemu-img convert")?;
    anyhow::ensure!(
        status.status.success(),
        "qemu-img convert {:?}: {}",
        conversion.args,
        String::from_utf8_lossy(&status.stderr)
    );
    Ok(dir)
}

type Mirrors = BTreeMap<String, Arc<RemoteMirror>>;

static MIRRORS: Mutex<Mirrors> = Mutex::new(BTreeMap::new());

fn mirrors() -> std::sync::MutexGuard<'static, Mirrors> {
    MIRRORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The built test guest files `requirements` needs; an error (a skip, or a
/// failure under `CI=true`) naming the build command if one is missing.
fn check_test_guest_built(
    env: &ResolverEnv,
    requirements: &TestArtifactRequirements,
) -> anyhow::Result<Vec<KnownTestArtifacts>> {
    let mut needed = Vec::new();
    for handle in requirements.required_artifacts() {
        let Some(a) = KnownTestArtifacts::from_handle(handle) else {
            continue;
        };
        let Some(guest) = a.built_guest() else {
            continue;
        };
        let streams = a.remote_capable() && env.base_url.is_some();
        if let Err(miss) = env.find_local(a)
            && !streams
        {
            return Err(SkipTest::or_fail_under_ci(format!(
                "{guest} is not built ({miss}); build it with `{}`",
                guest.build_command()
            )));
        }
        needed.push(a);
    }
    Ok(needed)
}

/// The resolver environment of test `name`; see the module docs.
pub fn resolver_env(
    name: &str,
    requirements: &TestArtifactRequirements,
) -> anyhow::Result<ResolverEnv> {
    let mut env = ResolverEnv::from_process_env();
    let guest_files = check_test_guest_built(&env, requirements)?;
    let conversion = crate::sparse_formats::conversion_for(name);
    if guest_files.is_empty() || !(name.starts_with(MIRRORED_MODULE) || conversion.is_some()) {
        return Ok(env);
    }
    let converted = conversion.map(|c| convert_root_disk(&env, c)).transpose()?;
    let mirror = Arc::new(RemoteMirror::start(&env, &guest_files, converted)?);
    // Keep logs where they would go, then make the private folder the only
    // image folder (the workspace root decides the default one).
    env.target_dir = Some(env.target_dir());
    env.test_output_path = Some(env.test_output_root());
    env.workspace_root = mirror.root.path().to_owned();
    env.images_dir = None;
    env.base_url = Some(mirror.base_url.clone());
    mirrors().insert(name.to_owned(), mirror);
    Ok(env)
}

/// Takes the mirror of test `name` (made by [`resolver_env`]).
pub fn take(name: &str) -> anyhow::Result<Arc<RemoteMirror>> {
    mirrors().remove(name).with_context(|| {
        format!("test {name} has no remote mirror; run it through the vmm_tests harness")
    })
}

/// Drops the mirror of test `name`, if any (its resolution failed).
pub fn discard(name: &str) {
    let mirror = mirrors().remove(name);
    drop(mirror);
}
