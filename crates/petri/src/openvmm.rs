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
//!   `[Ram { len: None }, AutoCacheSqlite { cache_dir, key } (read cache),
//!   Blob { url, format }]` — guest writes stay in RAM, blocks read from the
//!   blob are kept in the shared persistent cache;
//! - local differencing disk: `[Ram { len: None }, File { path, format }]`;
//! - memory disk: `[Ram { len: Some(len) }]`;
//! - persistent / temporary disk file: `[Sqlite { path, create: true }]`.
//!
//! Format rule ([`blob_format`]): by the URL path with query and fragment
//! stripped (or the file name): `.vhd` and `.vmgs` are fixed VHD1, `.vhdx`
//! is an error naming the artifact and its download command (a VHDX cannot
//! be read as a blob), anything else is flat.
//!
//! Cache key rule: the description leaves `key: None` and the opener
//! derives the key when it opens the blob, because the key needs data only
//! the open has: for a fixed VHD1 it is the disk's unique id from the
//! footer (lowercase zero-padded hex); for a flat blob it is derived from
//! the URL path (never the query, which may hold a SAS token) plus the
//! server's validator (ETag, else Last-Modified and length) from the HEAD
//! response, so a replaced image never serves stale cached blocks.
//!
//! DEVNOTE: opening the description into a live disk is the disk crates'
//! job; there is deliberately no process-launch code here.

use crate::PetriTestParams;
use crate::backend::HostSupport;
use crate::backend::PetriVmmBackend;
use crate::backend::PreparedVm;
use crate::backend::describe_artifact;
use crate::cache_dir::CacheDirError;
use crate::vm::Disk;
use crate::vm::DiskPath;
use crate::vm::Drive;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerDescription;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteAccess;
use petri_artifacts_core::redact_url;
use petri_artifacts_core::strip_query;
use std::path::Path;
use std::path::PathBuf;

/// The reason OpenVMM tests are ignored here.
pub const OPENVMM_UNAVAILABLE: &str = "OpenVMM is not available on this host";

/// Errors of the OpenVMM backend.
#[derive(Debug, thiserror::Error)]
pub enum OpenVmmError {
    /// A VHDX image cannot be opened as a blob or file disk.
    #[error(
        "{location} is a VHDX image, which OpenVMM cannot open here \
         (only fixed VHD1 and flat images are supported): {artifact}"
    )]
    UnsupportedVhdx {
        /// Where the image is (URL redacted).
        location: String,
        /// The artifact and how to get it.
        artifact: String,
    },
    /// No cache directory for the remote disk's read cache.
    #[error("no cache directory for the remote disk read cache")]
    CacheDir(#[from] CacheDirError),
    /// OpenVMM cannot run on this host.
    #[error("{OPENVMM_UNAVAILABLE}")]
    Unavailable,
}

/// An unsupported image format found by [`blob_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedFormat {
    /// A VHDX image.
    Vhdx,
}

/// The blob format of an image, by the extension of the URL path (query
/// and fragment stripped) or file name. Case-insensitive.
pub fn blob_format(url_or_path: &str) -> Result<BlobFormat, UnsupportedFormat> {
    let path = strip_query(url_or_path);
    let file_name = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let ext = match file_name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => String::new(),
    };
    match ext.as_str() {
        "vhd" | "vmgs" => Ok(BlobFormat::FixedVhd1),
        "vhdx" => Err(UnsupportedFormat::Vhdx),
        _ => Ok(BlobFormat::Flat),
    }
}

fn local_format(
    path: &Path,
    artifact: Option<ErasedArtifactHandle>,
) -> Result<BlobFormat, OpenVmmError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    blob_format(&name).map_err(|UnsupportedFormat::Vhdx| OpenVmmError::UnsupportedVhdx {
        location: path.display().to_string(),
        artifact: describe_artifact(artifact),
    })
}

/// The disk stack description of one disk.
pub fn disk_description(
    disk: &Disk,
    artifact: Option<ErasedArtifactHandle>,
    cache_dir: impl FnOnce() -> Result<PathBuf, CacheDirError>,
) -> Result<LayeredDiskHandle, OpenVmmError> {
    let layers = match disk {
        Disk::Memory(len) => vec![LayerDescription::plain(LayerKind::Ram { len: Some(*len) })],
        Disk::Differencing(DiskPath::Local(path)) => vec![
            LayerDescription::plain(LayerKind::Ram { len: None }),
            LayerDescription::plain(LayerKind::File {
                path: path.clone(),
                format: local_format(path, artifact)?,
            }),
        ],
        Disk::Differencing(DiskPath::Remote { url }) => {
            let format = blob_format(url).map_err(|UnsupportedFormat::Vhdx| {
                OpenVmmError::UnsupportedVhdx {
                    location: redact_url(url),
                    artifact: describe_artifact(artifact),
                }
            })?;
            vec![
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                    cache_dir: cache_dir()?,
                    // Derived by the opener; see the module docs.
                    key: None,
                }),
                LayerDescription::plain(LayerKind::Blob {
                    url: url.clone(),
                    format,
                }),
            ]
        }
        Disk::Persistent(path) | Disk::Temporary(path) => {
            vec![LayerDescription::plain(LayerKind::Sqlite {
                path: path.clone(),
                create: true,
                read_only: false,
            })]
        }
    };
    Ok(LayeredDiskHandle {
        layers,
        read_only: false,
    })
}

/// One drive as OpenVMM would attach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenVmmDrive {
    /// The disk stack, `None` for an empty drive.
    pub disk: Option<LayeredDiskHandle>,
    /// Presented as an optical drive (read-only).
    pub is_dvd: bool,
}

/// The OpenVMM backend.
#[derive(Debug)]
pub struct OpenVmmPetriBackend {
    cache_dir: Option<PathBuf>,
}

impl OpenVmmPetriBackend {
    /// A backend whose remote disks cache into `cache_dir` instead of the
    /// directory from the cache directory rule.
    pub fn with_cache_dir(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir: Some(cache_dir),
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
        Ok(Self { cache_dir: None })
    }

    fn translate_drive(&self, drive: &Drive) -> Result<OpenVmmDrive, OpenVmmError> {
        let disk = match &drive.disk {
            None => None,
            Some(disk) => {
                let mut handle =
                    disk_description(disk, drive.artifact, || match &self.cache_dir {
                        Some(dir) => Ok(dir.clone()),
                        None => crate::cache_dir::cache_dir(),
                    })?;
                handle.read_only = drive.is_dvd;
                Some(handle)
            }
        };
        Ok(OpenVmmDrive {
            disk,
            is_dvd: drive.is_dvd,
        })
    }

    async fn launch(vm: PreparedVm<Self>) -> Result<Self::Vm, OpenVmmError> {
        tracing::error!(?vm, "{OPENVMM_UNAVAILABLE}");
        Err(OpenVmmError::Unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petri_artifacts_vmm_test::artifacts::test_iso;
    use petri_artifacts_vmm_test::artifacts::test_vhd;
    use petri_artifacts_vmm_test::artifacts::test_vmgs;

    const CACHE: &str = "/var/cache/petri-test";

    fn cache() -> Result<PathBuf, CacheDirError> {
        Ok(PathBuf::from(CACHE))
    }

    fn no_cache() -> Result<PathBuf, CacheDirError> {
        crate::cache_dir::cache_dir_with(|_| None, crate::cache_dir::HostOs::Linux)
    }

    fn remote(url: &str) -> Disk {
        Disk::Differencing(DiskPath::Remote { url: url.into() })
    }

    fn remote_stack(url: &str, format: BlobFormat) -> LayeredDiskHandle {
        LayeredDiskHandle {
            layers: vec![
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                    cache_dir: CACHE.into(),
                    key: None,
                }),
                LayerDescription::plain(LayerKind::Blob {
                    url: url.into(),
                    format,
                }),
            ],
            read_only: false,
        }
    }

    #[test]
    fn remote_vhd_is_ram_over_auto_cache_over_vhd1_blob() {
        let url = "https://hvlitetestvhds.blob.core.windows.net/vhds/ubuntu-24.04-server-cloudimg-amd64.vhd?sv=1&sig=SECRET";
        let handle = disk_description(
            &remote(url),
            Some(test_vhd::UBUNTU_2404_SERVER_X64.erase()),
            cache,
        )
        .unwrap();
        assert_eq!(handle, remote_stack(url, BlobFormat::FixedVhd1));
        // The SAS token survives in the data (the opener needs it) but not
        // in its Debug output.
        assert!(!format!("{handle:?}").contains("SECRET"));
    }

    #[test]
    fn remote_formats_follow_the_url_path_not_the_query() {
        for (url, format) in [
            ("http://127.0.0.1:8080/imgs/a.vmgs", BlobFormat::FixedVhd1),
            ("http://127.0.0.1:8080/imgs/A.VHD", BlobFormat::FixedVhd1),
            (
                "http://127.0.0.1:8080/imgs/FreeBSD-13.2-RELEASE-amd64-dvd1.iso",
                BlobFormat::Flat,
            ),
            (
                "http://127.0.0.1:8080/imgs/disk.raw?x=a.vhd",
                BlobFormat::Flat,
            ),
            (
                "http://127.0.0.1:8080/imgs/disk.vhd?sig=a.iso#frag.raw",
                BlobFormat::FixedVhd1,
            ),
            ("http://127.0.0.1:8080/imgs/noext", BlobFormat::Flat),
        ] {
            let handle = disk_description(&remote(url), None, cache).unwrap();
            assert_eq!(handle, remote_stack(url, format), "{url}");
        }
    }

    #[test]
    fn remote_vhdx_is_rejected_with_the_download_command() {
        let url = "https://acct.blob.core.windows.net/vhds/windows11.vhdx?sig=SECRET";
        let err = disk_description(
            &remote(url),
            Some(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64.erase()),
            cache,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("VHDX"), "{err}");
        assert!(err.contains("WINDOWS_11_ENTERPRISE_AARCH64"), "{err}");
        let known = vmm_test_images::KnownTestArtifacts::from_handle(
            test_vhd::WINDOWS_11_ENTERPRISE_AARCH64.erase(),
        )
        .unwrap();
        assert!(err.contains(&known.download_command()), "{err}");
        assert!(err.contains("windows11.vhdx?<redacted>"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn local_disks_are_ram_over_file() {
        for (path, format) in [
            ("/images/ubuntu.vhd", BlobFormat::FixedVhd1),
            ("/images/state.vmgs", BlobFormat::FixedVhd1),
            ("/images/freebsd.iso", BlobFormat::Flat),
            ("/images/disk.img", BlobFormat::Flat),
        ] {
            // A local disk needs no cache directory.
            let handle = disk_description(
                &Disk::Differencing(DiskPath::Local(path.into())),
                None,
                no_cache,
            )
            .unwrap();
            assert_eq!(
                handle,
                LayeredDiskHandle {
                    layers: vec![
                        LayerDescription::plain(LayerKind::Ram { len: None }),
                        LayerDescription::plain(LayerKind::File {
                            path: path.into(),
                            format,
                        }),
                    ],
                    read_only: false,
                },
                "{path}"
            );
        }
        let err = disk_description(
            &Disk::Differencing(DiskPath::Local("/images/w.vhdx".into())),
            Some(test_vhd::WINDOWS_11_ENTERPRISE_AARCH64.erase()),
            no_cache,
        )
        .unwrap_err();
        assert!(matches!(err, OpenVmmError::UnsupportedVhdx { .. }), "{err}");
    }

    #[test]
    fn remote_disk_without_cache_dir_is_an_error() {
        let err = disk_description(&remote("http://127.0.0.1/a.vhd"), None, no_cache).unwrap_err();
        assert!(matches!(err, OpenVmmError::CacheDir(_)), "{err}");
    }

    #[test]
    fn memory_and_persistent_disks() {
        assert_eq!(
            disk_description(&Disk::Memory(1 << 20), None, no_cache).unwrap(),
            LayeredDiskHandle {
                layers: vec![LayerDescription::plain(LayerKind::Ram {
                    len: Some(1 << 20)
                })],
                read_only: false,
            }
        );
        assert_eq!(
            disk_description(&Disk::Persistent("/logs/vmgs.dbhd".into()), None, no_cache).unwrap(),
            LayeredDiskHandle {
                layers: vec![LayerDescription::plain(LayerKind::Sqlite {
                    path: "/logs/vmgs.dbhd".into(),
                    create: true,
                    read_only: false,
                })],
                read_only: false,
            }
        );
    }

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
        let mut expected = remote_stack(url, BlobFormat::Flat);
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
    fn vmgs_artifact_is_vhd1() {
        let url = "http://127.0.0.1:9/vmgs.vmgs";
        let handle = disk_description(
            &remote(url),
            Some(test_vmgs::VMGS_WITH_BOOT_ENTRY.erase()),
            cache,
        )
        .unwrap();
        assert_eq!(handle, remote_stack(url, BlobFormat::FixedVhd1));
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
