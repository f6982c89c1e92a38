//! Backend-neutral translation of a VM model disk into a disk stack
//! description ([`LayeredDiskHandle`], plain data).
//!
//! - remote differencing disk (`DiskPath::Remote`):
//!   `[Ram { len: None }, AutoCacheSqlite { cache_dir, key, required,
//!   max_size } (read cache), Blob { url, format }]`: guest writes stay in
//!   RAM, blocks read from the blob are kept in the shared persistent
//!   cache (directory, `required` and `max_size` from the [cache
//!   settings](crate::cache_dir)); with `PETRI_CACHE=off`,
//!   `[Ram { len: None }, Blob { url, format }]`;
//! - local differencing disk: `[Ram { len: None }, File { path, format }]`;
//! - memory disk: `[Ram { len: Some(len) }]`;
//! - persistent / temporary disk file: `[Sqlite { path, create: true }]`.
//!
//! Format rule: every image is described as [`BlobFormat::Auto`]; the
//! opener reads its content (magic at offset 0, a VHD footer at the end)
//! and takes the extension of the URL path (query and fragment stripped)
//! or file name as a hint: flat, fixed or dynamic VHD1, VHDX and qcow2 are
//! all read lazily, and a name that contradicts the content (a `.vhd`
//! holding qcow2) is an error naming both. Content without magic keeps
//! the extension rule: `.vhd` and `.vmgs` are fixed VHD1, anything else
//! flat.
//!
//! Cache key rule: the description leaves `key: None` and the opener
//! derives the key when it opens the blob, because the key needs data only
//! the open has: for a VHD1 it is the disk's unique id from the footer
//! (lowercase zero-padded hex), for a VHDX its data write GUID; for a flat
//! or qcow2 blob it is derived from the URL path (never the query, which
//! may hold a SAS token) plus the server's validator (ETag, else
//! Last-Modified and length) from the HEAD response, so a replaced image
//! never serves stale cached blocks.
//!
//! Describing does no I/O: the cache settings are looked up (through the
//! closure the caller passes) only for a remote disk.
//!
//! Opening ([`open_drive`], [`open_description`]) is the one place a
//! backend turns a description into a live [`disk_backend::Disk`], through
//! `disk_open::open`; the OpenVMM backend and the QEMU backend (which
//! exports the opened disk over NBD) both use it, so they open the very
//! same stack. The result, an [`OpenedDisk`], keeps the description next
//! to the live disk and hands out its [`DiskCounters`] (bytes fetched,
//! requests, cache hits), so a test can assert that a second open on a
//! warm cache fetched nothing.

use crate::backend::describe_artifact;
use crate::cache_dir::CacheSettings;
use crate::cache_dir::CacheSettingsError;
use crate::vm::Disk;
use crate::vm::DiskPath;
use crate::vm::Drive;
pub use disk_backend::DiskCounters;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerDescription;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::redact_url;
use std::path::Path;

/// Errors describing a disk stack.
#[derive(Debug, thiserror::Error)]
pub enum DiskStackError {
    /// No cache settings for the remote disk's read cache (no cache
    /// directory, or a cache variable with a bad value).
    #[error("cannot set up the remote disk's read cache")]
    Cache(#[from] CacheSettingsError),
    /// The described stack could not be opened.
    #[error("cannot open {location} for {artifact}")]
    Open {
        /// The bottom layer's file or URL (redacted).
        location: String,
        /// The artifact and how to get it locally.
        artifact: String,
        /// The cause (boxed: it is large).
        #[source]
        source: Box<disk_open::OpenError>,
    },
}

/// Settings for opening a stack (HTTP client options, cache chunk size).
pub use disk_open::OpenOptions;

/// A disk stack opened into a live disk, with the description it came
/// from.
#[derive(Clone)]
pub struct OpenedDisk {
    disk: disk_backend::Disk,
    description: LayeredDiskHandle,
}

impl std::fmt::Debug for OpenedDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedDisk")
            .field("description", &self.description)
            .field("size_bytes", &self.disk.size_bytes())
            .field("counters", &self.disk.counters())
            .finish()
    }
}

impl OpenedDisk {
    /// The live disk (a cheap handle; clones share the stack).
    pub fn disk(&self) -> &disk_backend::Disk {
        &self.disk
    }

    /// The description the disk was opened from.
    pub fn description(&self) -> &LayeredDiskHandle {
        &self.description
    }

    /// Where the disk's data came from so far: requests and bytes fetched
    /// from the remote store, read-cache hits, misses and fills.
    pub fn counters(&self) -> DiskCounters {
        self.disk.counters()
    }

    /// Where the bottom layer is: a file path or the URL with its query
    /// redacted. Safe to log.
    pub fn location(&self) -> String {
        bottom_location(&self.description)
    }
}

fn bottom_location(handle: &LayeredDiskHandle) -> String {
    match handle.layers.last().map(|l| &l.layer) {
        Some(LayerKind::Blob { url, .. }) => redact_url(url),
        Some(LayerKind::File { path, .. }) => path.display().to_string(),
        Some(LayerKind::Sqlite { path, .. }) => path.display().to_string(),
        Some(LayerKind::Ram { .. }) => "a RAM disk".to_owned(),
        Some(LayerKind::AutoCacheSqlite { .. }) | None => "a disk stack".to_owned(),
    }
}

/// Opens a described stack. `artifact` names the image in errors.
pub async fn open_description(
    description: LayeredDiskHandle,
    artifact: Option<ErasedArtifactHandle>,
    options: &OpenOptions,
) -> Result<OpenedDisk, DiskStackError> {
    match disk_open::open(&description, options).await {
        Ok(disk) => {
            tracing::debug!(
                location = %bottom_location(&description),
                size = disk.size_bytes(),
                "opened disk stack"
            );
            Ok(OpenedDisk { disk, description })
        }
        Err(source) => Err(DiskStackError::Open {
            location: bottom_location(&description),
            artifact: describe_artifact(artifact),
            source: Box::new(source),
        }),
    }
}

/// Describes and opens the disk of `drive`, caching remote blocks in
/// `cache_dir` (or the directory from the [cache directory
/// rule](crate::cache_dir) when `None`). Returns `None` for an empty
/// drive. A DVD is opened read-only.
pub async fn open_drive(
    drive: &Drive,
    cache_dir: Option<&Path>,
    options: &OpenOptions,
) -> Result<Option<OpenedDisk>, DiskStackError> {
    let Some(disk) = &drive.disk else {
        return Ok(None);
    };
    let mut description = disk_description(disk, || crate::cache_dir::cache_settings(cache_dir))?;
    description.read_only = drive.is_dvd;
    open_description(description, drive.artifact, options)
        .await
        .map(Some)
}

/// The stack description of `drive`'s disk (`None` for an empty drive),
/// with the cache in `cache_dir` or else the default cache directory. A
/// DVD is read-only. Every backend translates its drives through this.
pub fn drive_description(
    drive: &Drive,
    cache_dir: Option<&Path>,
) -> Result<Option<LayeredDiskHandle>, DiskStackError> {
    let Some(disk) = &drive.disk else {
        return Ok(None);
    };
    let mut handle = disk_description(disk, || crate::cache_dir::cache_settings(cache_dir))?;
    handle.read_only = drive.is_dvd;
    Ok(Some(handle))
}

/// The disk stack description of one disk. `cache` gives the cache
/// settings of a remote disk (`None`: no persistent cache).
pub fn disk_description(
    disk: &Disk,
    cache: impl FnOnce() -> Result<Option<CacheSettings>, CacheSettingsError>,
) -> Result<LayeredDiskHandle, DiskStackError> {
    let layers = match disk {
        Disk::Memory(len) => vec![LayerDescription::plain(LayerKind::Ram { len: Some(*len) })],
        Disk::Differencing(DiskPath::Local(path)) => vec![
            LayerDescription::plain(LayerKind::Ram { len: None }),
            LayerDescription::plain(LayerKind::File {
                path: path.clone(),
                format: BlobFormat::Auto,
            }),
        ],
        Disk::Differencing(DiskPath::Remote { url }) => {
            let mut layers = vec![LayerDescription::plain(LayerKind::Ram { len: None })];
            if let Some(cache) = cache()? {
                layers.push(LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                    cache_dir: cache.dir,
                    // Derived by the opener; see the module docs.
                    key: None,
                    required: cache.required,
                    max_size: cache.max_size,
                }));
            }
            layers.push(LayerDescription::plain(LayerKind::Blob {
                url: url.clone(),
                format: BlobFormat::Auto,
            }));
            layers
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// The cache directory the backends' translation tests use.
    pub(crate) const CACHE: &str = "/var/cache/petri-test";

    fn cache() -> Result<Option<CacheSettings>, CacheSettingsError> {
        Ok(Some(CacheSettings {
            dir: PathBuf::from(CACHE),
            required: false,
            max_size: None,
        }))
    }

    fn no_cache() -> Result<Option<CacheSettings>, CacheSettingsError> {
        crate::cache_dir::cache_settings_with(|_| None, crate::cache_dir::HostOs::Linux, None)
    }

    /// A remote differencing disk.
    pub(crate) fn remote(url: &str) -> Disk {
        Disk::Differencing(DiskPath::Remote { url: url.into() })
    }

    /// The stack a remote disk must translate to, cached in [`CACHE`].
    pub(crate) fn remote_stack(url: &str, format: BlobFormat) -> LayeredDiskHandle {
        LayeredDiskHandle {
            layers: vec![
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                    cache_dir: CACHE.into(),
                    key: None,
                    required: false,
                    max_size: None,
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
    fn remote_vhd_is_ram_over_auto_cache_over_blob() {
        let url = "https://hvlitetestvhds.blob.core.windows.net/vhds/ubuntu-24.04-server-cloudimg-amd64.vhd?sv=1&sig=SECRET";
        let handle = disk_description(&remote(url), cache).unwrap();
        assert_eq!(handle, remote_stack(url, BlobFormat::Auto));
        // The SAS token survives in the data (the opener needs it) but not
        // in its Debug output.
        assert!(!format!("{handle:?}").contains("SECRET"));
    }

    #[test]
    fn every_image_format_is_left_to_the_opener() {
        // The opener detects the format from the content, with the URL
        // path's extension (never the query) as a hint; VHDX and qcow2
        // images are described like any other.
        for url in [
            "http://127.0.0.1:8080/imgs/a.vmgs",
            "http://127.0.0.1:8080/imgs/A.VHD",
            "http://127.0.0.1:8080/imgs/FreeBSD-13.2-RELEASE-amd64-dvd1.iso",
            "http://127.0.0.1:8080/imgs/disk.raw?x=a.vhd",
            "https://acct.blob.core.windows.net/vhds/windows11.vhdx?sig=SECRET",
            "http://127.0.0.1:8080/imgs/noble-server-cloudimg-amd64.img",
            "http://127.0.0.1:8080/imgs/guest.qcow2",
        ] {
            let handle = disk_description(&remote(url), cache).unwrap();
            assert_eq!(handle, remote_stack(url, BlobFormat::Auto), "{url}");
        }
    }

    #[test]
    fn local_disks_are_ram_over_file() {
        for path in [
            "/images/ubuntu.vhd",
            "/images/state.vmgs",
            "/images/freebsd.iso",
            "/images/disk.img",
            "/images/w.vhdx",
        ] {
            // A local disk needs no cache directory.
            let handle =
                disk_description(&Disk::Differencing(DiskPath::Local(path.into())), no_cache)
                    .unwrap();
            assert_eq!(
                handle,
                LayeredDiskHandle {
                    layers: vec![
                        LayerDescription::plain(LayerKind::Ram { len: None }),
                        LayerDescription::plain(LayerKind::File {
                            path: path.into(),
                            format: BlobFormat::Auto,
                        }),
                    ],
                    read_only: false,
                },
                "{path}"
            );
        }
    }

    #[test]
    fn remote_disk_without_cache_dir_is_an_error() {
        let err = disk_description(&remote("http://127.0.0.1/a.vhd"), no_cache).unwrap_err();
        assert!(matches!(err, DiskStackError::Cache(_)), "{err}");
    }

    #[test]
    fn cache_settings_shape_the_remote_stack() {
        let url = "http://127.0.0.1/a.vhd";
        let required = || {
            Ok(Some(CacheSettings {
                dir: PathBuf::from(CACHE),
                required: true,
                max_size: Some(20 << 30),
            }))
        };
        let handle = disk_description(&remote(url), required).unwrap();
        assert_eq!(
            handle.layers[1].layer,
            LayerKind::AutoCacheSqlite {
                cache_dir: CACHE.into(),
                key: None,
                required: true,
                max_size: Some(20 << 30),
            }
        );
        // PETRI_CACHE=off: RAM over the blob, no cache directory needed.
        let off = [("PETRI_CACHE", "off")];
        let handle = disk_description(&remote(url), || {
            crate::cache_dir::cache_settings_with(
                |name| {
                    off.iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| (*v).into())
                },
                crate::cache_dir::HostOs::Linux,
                None,
            )
        })
        .unwrap();
        assert_eq!(
            handle.layers,
            [
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::plain(LayerKind::Blob {
                    url: url.into(),
                    format: BlobFormat::Auto,
                }),
            ]
        );
    }

    #[test]
    fn memory_and_persistent_disks() {
        assert_eq!(
            disk_description(&Disk::Memory(1 << 20), no_cache).unwrap(),
            LayeredDiskHandle {
                layers: vec![LayerDescription::plain(LayerKind::Ram {
                    len: Some(1 << 20)
                })],
                read_only: false,
            }
        );
        assert_eq!(
            disk_description(&Disk::Persistent("/logs/vmgs.dbhd".into()), no_cache).unwrap(),
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
}
