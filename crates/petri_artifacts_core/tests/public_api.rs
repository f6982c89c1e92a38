//! The artifacts core seen from another crate: declare macros expand
//! outside the defining crate, and a requirement closure runs through both
//! phases with a resolver written against the public API only.

use petri_artifacts_core::ArtifactResolver;
use petri_artifacts_core::ArtifactSource;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteAccess;
use petri_artifacts_core::RemoteOverride;
use petri_artifacts_core::ResolveTestArtifact;
use petri_artifacts_core::ResolvedArtifact;
use petri_artifacts_core::ResolvedArtifactSource;
use petri_artifacts_core::TestArtifactRequirements;
use std::path::PathBuf;

/// Declared the way test crates declare their images.
pub mod images {
    petri_artifacts_core::declare_blob_artifacts! {
        /// A disk that may be read lazily.
        LAZY_DISK,
    }
    petri_artifacts_core::declare_artifacts! {
        /// A firmware file that must be local.
        FIRMWARE,
    }
}

struct Store {
    dir: PathBuf,
}

impl ResolveTestArtifact for Store {
    fn resolve(&self, id: ErasedArtifactHandle) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(id.name());
        anyhow::ensure!(path.is_file(), "{} not found at {}", id, path.display());
        Ok(path)
    }

    fn resolve_source(&self, id: ErasedArtifactHandle) -> anyhow::Result<ArtifactSource> {
        match self.resolve(id) {
            Ok(path) => Ok(ArtifactSource::Local(path)),
            Err(_) => Ok(ArtifactSource::Remote {
                url: format!("http://127.0.0.1:1/{}?sig=SECRET", id.name()),
            }),
        }
    }
}

fn closure(
    r: &ArtifactResolver<'_>,
) -> (
    ResolvedArtifactSource<images::LAZY_DISK>,
    ResolvedArtifact<images::FIRMWARE>,
) {
    (
        r.require_source(images::LAZY_DISK, RemoteAccess::Allow),
        r.require(images::FIRMWARE),
    )
}

#[test]
fn two_phase_flow_from_another_crate() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_owned();
    std::fs::write(tmp.join("FIRMWARE"), b"fw").unwrap();
    let store = Store { dir: tmp.clone() };

    for (over, remote) in [
        (RemoteOverride::NoOverride, true),
        (RemoteOverride::ForceLocal, false),
    ] {
        let mut reqs = TestArtifactRequirements::with_override(over);
        let _ = closure(&ArtifactResolver::collector(&mut reqs));
        let result = reqs.resolve(&store);
        if remote {
            let arts = result.unwrap();
            let (disk, fw) = closure(&ArtifactResolver::resolver(&arts));
            assert!(disk.get().is_remote());
            assert!(!disk.get().to_string().contains("SECRET"));
            assert_eq!(fw.get(), tmp.join("FIRMWARE"));
            assert_eq!(
                reqs.list_output().local_only,
                [images::FIRMWARE.erase().id()]
            );
        } else {
            // Forced local and missing: an error naming the disk.
            let err = result.unwrap_err();
            assert!(
                format!("{err:#}").contains("LAZY_DISK not found"),
                "{err:#}"
            );
        }
    }
}

#[test]
fn ids_carry_this_crates_module_path() {
    assert_eq!(images::LAZY_DISK.id(), "public_api::images::LAZY_DISK");
    assert!(images::LAZY_DISK.is_blob_capable());
    assert!(!images::FIRMWARE.is_blob_capable());
    assert_eq!(
        format!("{:?}", images::FIRMWARE),
        "public_api::images::FIRMWARE"
    );
}
