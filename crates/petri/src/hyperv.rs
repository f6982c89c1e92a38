//! The Hyper-V backend: translates the VM model's drives into Hyper-V disk
//! attachments.
//!
//! Hyper-V opens disk files itself, so every disk must be a local file: a
//! remote differencing disk is an error ("Hyper-V backend requires local
//! disk files; remote disk artifacts are not supported") that names the
//! artifact and its download command. That is why Hyper-V tests require
//! their boot media with [`RemoteAccess::LocalOnly`], so resolution already
//! fails early with the resolver's download hint; the translation check is
//! the backstop for drives built by hand.
//!
//! Hyper-V runs only on Windows; on other hosts its tests are listed as
//! ignored with the reason.
//!
//! DEVNOTE: launching through the Hyper-V PowerShell module is not written;
//! even on Windows the backend reports itself unsupported until it is.

use crate::PetriTestParams;
use crate::backend::HostSupport;
use crate::backend::PetriVmmBackend;
use crate::backend::PreparedVm;
use crate::backend::describe_artifact;
use crate::vm::Disk;
use crate::vm::DiskPath;
use crate::vm::Drive;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteAccess;
use petri_artifacts_core::redact_url;
use std::path::PathBuf;

/// The start of the error for a remote disk.
pub const REMOTE_DISK_UNSUPPORTED: &str =
    "Hyper-V backend requires local disk files; remote disk artifacts are not supported";

/// The reason Hyper-V tests are ignored on a non-Windows host.
pub const HYPERV_NEEDS_WINDOWS: &str = "Hyper-V requires a Windows host";

/// The reason Hyper-V tests are ignored on Windows for now.
pub const HYPERV_LAUNCH_MISSING: &str = "the Hyper-V launcher is not implemented yet";

/// Errors of the Hyper-V backend.
#[derive(Debug, thiserror::Error)]
pub enum HyperVError {
    /// A disk's base image is a URL.
    #[error("{REMOTE_DISK_UNSUPPORTED}: {url} for {artifact}")]
    RemoteDisk {
        /// The URL, redacted.
        url: String,
        /// The artifact and how to download it.
        artifact: String,
    },
    /// Hyper-V cannot run on this host.
    #[error("{0}")]
    Unavailable(&'static str),
}

fn remote_disk_error(url: &str, artifact: Option<ErasedArtifactHandle>) -> HyperVError {
    HyperVError::RemoteDisk {
        url: redact_url(url),
        artifact: describe_artifact(artifact),
    }
}

/// How Hyper-V attaches one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HyperVDisk {
    /// A new differencing disk (in the test's log directory) over this
    /// local parent, so the parent is never written.
    Differencing {
        /// The parent image.
        parent: PathBuf,
    },
    /// A new dynamically expanding disk of this size.
    NewDynamic {
        /// Size in bytes.
        size: u64,
    },
    /// An existing disk file attached as is.
    Attach {
        /// The disk file.
        path: PathBuf,
    },
}

/// One drive as Hyper-V would attach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HyperVDrive {
    /// The disk, `None` for an empty drive.
    pub disk: Option<HyperVDisk>,
    /// Presented as a DVD drive.
    pub is_dvd: bool,
}

/// Translates one disk.
pub fn translate_disk(
    disk: &Disk,
    artifact: Option<ErasedArtifactHandle>,
) -> Result<HyperVDisk, HyperVError> {
    Ok(match disk {
        Disk::Memory(size) => HyperVDisk::NewDynamic { size: *size },
        Disk::Differencing(DiskPath::Local(path)) => HyperVDisk::Differencing {
            parent: path.clone(),
        },
        Disk::Differencing(DiskPath::Remote { url }) => {
            return Err(remote_disk_error(url, artifact));
        }
        Disk::Persistent(path) | Disk::Temporary(path) => HyperVDisk::Attach { path: path.clone() },
    })
}

/// The Hyper-V backend.
#[derive(Debug, Default, Clone)]
pub struct HyperVPetriBackend {
    _private: (),
}

impl HyperVPetriBackend {
    /// Whether a host on this OS could run Hyper-V tests.
    pub fn host_support_for(windows: bool) -> HostSupport {
        if windows {
            HostSupport::Unsupported(HYPERV_LAUNCH_MISSING.into())
        } else {
            HostSupport::Unsupported(HYPERV_NEEDS_WINDOWS.into())
        }
    }
}

impl PetriVmmBackend for HyperVPetriBackend {
    const NAME: &'static str = "hyperv";
    const REMOTE_ACCESS: RemoteAccess = RemoteAccess::LocalOnly;
    type DriveConfig = HyperVDrive;
    type Error = HyperVError;
    type Vm = std::convert::Infallible;

    fn host_support() -> HostSupport {
        Self::host_support_for(cfg!(windows))
    }

    fn new(_params: &PetriTestParams) -> Result<Self, HyperVError> {
        Ok(Self::default())
    }

    fn set_cache_dir(&mut self, _dir: PathBuf) {
        // Hyper-V reads local files only; there is nothing to cache.
    }

    fn translate_drive(&self, drive: &Drive) -> Result<HyperVDrive, HyperVError> {
        let disk = match &drive.disk {
            None => None,
            Some(disk) => Some(translate_disk(disk, drive.artifact)?),
        };
        Ok(HyperVDrive {
            disk,
            is_dvd: drive.is_dvd,
        })
    }

    async fn launch(vm: PreparedVm<Self>) -> Result<Self::Vm, HyperVError> {
        let reason = if cfg!(windows) {
            HYPERV_LAUNCH_MISSING
        } else {
            HYPERV_NEEDS_WINDOWS
        };
        tracing::error!(?vm, "{reason}");
        Err(HyperVError::Unavailable(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petri_artifacts_vmm_test::artifacts::test_vhd;

    #[test]
    fn remote_disk_is_rejected_with_download_command() {
        let url = "https://hvlitetestvhds.blob.core.windows.net/vhds/ubuntu.vhd?sv=1&sig=SECRET";
        let err = translate_disk(
            &Disk::Differencing(DiskPath::Remote { url: url.into() }),
            Some(test_vhd::UBUNTU_2404_SERVER_X64.erase()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "Hyper-V backend requires local disk files; remote disk artifacts are not supported"
            ),
            "{err}"
        );
        let known = vmm_test_images::KnownTestArtifacts::from_handle(
            test_vhd::UBUNTU_2404_SERVER_X64.erase(),
        )
        .unwrap();
        assert!(err.contains(&known.download_command()), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        assert!(err.contains("ubuntu.vhd?<redacted>"), "{err}");
    }

    #[test]
    fn local_disks_translate() {
        assert_eq!(
            translate_disk(
                &Disk::Differencing(DiskPath::Local("/images/u.vhd".into())),
                None
            )
            .unwrap(),
            HyperVDisk::Differencing {
                parent: "/images/u.vhd".into()
            }
        );
        assert_eq!(
            translate_disk(&Disk::Memory(4096), None).unwrap(),
            HyperVDisk::NewDynamic { size: 4096 }
        );
        assert_eq!(
            translate_disk(&Disk::Temporary("/logs/t.vhdx".into()), None).unwrap(),
            HyperVDisk::Attach {
                path: "/logs/t.vhdx".into()
            }
        );
    }

    #[test]
    fn policy_and_host_support() {
        assert_eq!(HyperVPetriBackend::REMOTE_ACCESS, RemoteAccess::LocalOnly);
        assert_eq!(
            HyperVPetriBackend::host_support_for(false).reason(),
            Some(HYPERV_NEEDS_WINDOWS)
        );
        assert!(
            HyperVPetriBackend::host_support_for(true)
                .reason()
                .is_some()
        );
    }
}
