//! The OpenVMM backend: translates the VM model's drives into disk stack
//! descriptions ([`LayeredDiskHandle`]).
//!
//! OpenVMM itself cannot run on the hosts this workspace targets (no
//! OpenVMM binary, no usable hypervisor), so [`OpenVmmPetriBackend`]
//! reports [`HostSupport::Unsupported`] ("OpenVMM is not available on this
//! host") and its tests are listed as ignored. Its job here is the
//! translation, which is plain data and tested:
//!
//! - remote differencing disk (`DiskPath::Remote`):
//!   `[Ram { len: None }, AutoCacheSqlite { cache_dir, key, required,
//!   max_size } (read cache), Blob { url, format }]` — guest writes stay in
//!   RAM, blocks read from the blob are kept in the shared persistent cache
//!   (left out with `PETRI_CACHE=off`);
//! - local differencing disk: `[Ram { len: None }, File { path, format }]`;
//! - memory disk: `[Ram { len: Some(len) }]`;
//! - persistent / temporary disk file: `[Sqlite { path, create: true }]`.
//!
//! The translation itself is backend-neutral and lives in
//! [`crate::disk_stack`] (a QEMU backend serving the same stack over NBD
//! reuses it).
//!
//! Opening is real: [`OpenVmmPetriBackend::open_drive`] opens a
//! translated drive into a live disk through [`crate::disk_stack`] (the
//! same code the QEMU backend uses), and [`PetriVmmBackend::launch`] opens
//! the boot disk before it reports that OpenVMM cannot run here, so a
//! broken image or URL shows up as that error rather than as "unavailable".
//!
//! DEVNOTE: there is deliberately no process-launch code here.

use crate::PetriTestParams;
use crate::backend::HostSupport;
use crate::backend::PetriVmmBackend;
use crate::backend::PreparedVm;
use crate::disk_stack::DiskStackError;
use crate::disk_stack::OpenOptions;
use crate::disk_stack::OpenedDisk;
use crate::disk_stack::drive_description;
use crate::disk_stack::open_description;
use crate::vm::Drive;
use disk_backend_resources::LayeredDiskHandle;
use petri_artifacts_core::RemoteAccess;
use std::path::PathBuf;

/// The reason OpenVMM tests are ignored here.
pub const OPENVMM_UNAVAILABLE: &str = "OpenVMM is not available on this host";

/// Errors of the OpenVMM backend.
#[derive(Debug, thiserror::Error)]
pub enum OpenVmmError {
    /// A disk cannot be described as a stack.
    #[error(transparent)]
    DiskStack(#[from] DiskStackError),
    /// OpenVMM cannot run on this host.
    #[error("{OPENVMM_UNAVAILABLE}")]
    Unavailable,
}

/// One drive as OpenVMM would attach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenVmmDrive {
    /// The disk stack, `None` for an empty drive.
    pub disk: Option<LayeredDiskHandle>,
    /// Presented as an optical drive (read-only).
    pub is_dvd: bool,
    /// The artifact the medium came from, for error messages.
    pub artifact: Option<petri_artifacts_core::ErasedArtifactHandle>,
}

/// The OpenVMM backend.
#[derive(Debug, Clone)]
pub struct OpenVmmPetriBackend {
    cache_dir: Option<PathBuf>,
    open_options: OpenOptions,
}

impl OpenVmmPetriBackend {
    /// A backend whose remote disks cache into `cache_dir` instead of the
    /// directory from the cache directory rule.
    pub fn with_cache_dir(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir: Some(cache_dir),
            open_options: OpenOptions::default(),
        }
    }

    /// Uses `options` (HTTP settings such as extra TLS roots) when opening
    /// disks.
    pub fn with_open_options(mut self, options: OpenOptions) -> Self {
        self.open_options = options;
        self
    }

    /// Opens a translated drive into a live disk, as OpenVMM would attach
    /// it: remote disks read through the shared cache, writes kept in RAM.
    /// `None` for an empty drive.
    pub async fn open_drive(
        &self,
        drive: &OpenVmmDrive,
    ) -> Result<Option<OpenedDisk>, OpenVmmError> {
        match &drive.disk {
            None => Ok(None),
            Some(handle) => Ok(Some(
                open_description(handle.clone(), drive.artifact, &self.open_options).await?,
            )),
        }
    }
}

impl PetriVmmBackend for OpenVmmPetriBackend {
    const NAME: &'static str = "openvmm";
    const REMOTE_ACCESS: RemoteAccess = RemoteAccess::Allow;
    type DriveConfig = OpenVmmDrive;
    type Error = OpenVmmError;
    type Vm = std::convert::Infallible;

    fn host_support() -> HostSupport {
        HostSupport::Unsupported(OPENVMM_UNAVAILABLE.into())
    }

    fn new(_params: &PetriTestParams) -> Result<Self, OpenVmmError> {
        // The cache directory is looked up when a remote disk needs it.
        Ok(Self {
            cache_dir: None,
            open_options: OpenOptions::default(),
        })
    }

    fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache_dir = Some(dir);
    }

    fn translate_drive(&self, drive: &Drive) -> Result<OpenVmmDrive, OpenVmmError> {
        let disk = drive_description(drive, self.cache_dir.as_deref())?;
        Ok(OpenVmmDrive {
            disk,
            is_dvd: drive.is_dvd,
            artifact: drive.artifact,
        })
    }

    async fn launch(vm: PreparedVm<Self>) -> Result<Self::Vm, OpenVmmError> {
        if let Some(drive) = &vm.boot_drive
            && let Some(disk) = vm.backend.open_drive(drive).await?
        {
            tracing::info!(
                location = %disk.location(),
                counters = ?disk.counters(),
                "opened the boot disk"
            );
        }
        tracing::error!(?vm, "{OPENVMM_UNAVAILABLE}");
        Err(OpenVmmError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_stack::tests::CACHE;
    use crate::disk_stack::tests::remote;
    use crate::disk_stack::tests::remote_stack;
    use disk_backend_resources::BlobFormat;
    use petri_artifacts_vmm_test::artifacts::test_iso;

    #[test]
    fn dvd_drive_is_read_only() {
        let backend = OpenVmmPetriBackend::with_cache_dir(CACHE.into());
        let url = "http://127.0.0.1:9/FreeBSD-13.2-RELEASE-amd64-dvd1.iso";
        let drive = Drive {
            disk: Some(remote(url)),
            is_dvd: true,
            artifact: Some(test_iso::FREE_BSD_13_2_X64.erase()),
        };
        let translated = backend.translate_drive(&drive).unwrap();
        let mut expected = remote_stack(url, BlobFormat::Auto);
        expected.read_only = true;
        assert_eq!(translated.disk, Some(expected));
        assert!(translated.is_dvd);
        let empty = backend
            .translate_drive(&Drive {
                disk: None,
                is_dvd: true,
                artifact: None,
            })
            .unwrap();
        assert_eq!(empty.disk, None);
    }

    #[test]
    fn policy_and_host_support() {
        assert_eq!(OpenVmmPetriBackend::REMOTE_ACCESS, RemoteAccess::Allow);
        assert_eq!(
            OpenVmmPetriBackend::host_support().reason(),
            Some("OpenVMM is not available on this host")
        );
    }
}
