//! Opens a plain-data disk stack description into a live disk.
//!
//! Position in the data flow: petri's backends decide what disk a VM gets
//! and write it down as a [`disk_backend_resources::LayeredDiskHandle`].
//! [`open`] is the one place that turns such a description into a
//! [`disk_backend::Disk`]: it opens the bottom blob (local file or HTTP),
//! attaches the SQLite and RAM layers above it and assembles a
//! [`disk_layered::LayeredDisk`]. This crate depends on every layer crate;
//! no layer crate depends on it, so dependencies stay one-directional.
//!
//! # Formats
//!
//! The bottom blob's format is the description's [`BlobFormat`]; with
//! [`BlobFormat::Auto`] it is detected from the content (magic at offset
//! 0, a VHD footer at the end) with the file name's extension as a hint
//! ([`disk_sparse::detect`]). Flat and fixed-VHD1 blobs become a
//! `disk_blob::BlobDisk`; dynamic VHD1, VHDX and qcow2 images a
//! [`disk_sparse::SparseDisk`].
//!
//! # Cache keys
//!
//! An auto-cache layer without an explicit key is keyed by what it caches:
//! - over a fixed or dynamic VHD1 or a VHDX, by the image's own content id
//!   (the VHD unique id, the VHDX data write GUID; the auto-cache does
//!   this itself from the lower layer's disk id);
//! - over a flat or qcow2 HTTP blob, which has no trustworthy id, by
//!   [`url_cache_key`]: the format, the URL without its query (never the
//!   SAS token) plus the server's validator (the ETag, else Last-Modified
//!   and the length). A replaced image gets a new key, so it never serves
//!   stale data;
//! - over such a blob whose server sends no validator at all, nothing can
//!   tell a replaced image from the cached one, so the cache layer is left
//!   out (with a warning) rather than risking stale data.
//!
//! # Image metadata cache
//!
//! Opening an image needs some of its bytes beyond the data the guest
//! reads: the first piece (format magic, headers), a fixed VHD1's footer,
//! and, as reads arrive, a sparse format's BAT or L1/L2 tables. They are
//! read through a [`disk_sparse::MetaReader`] in aligned 64 KiB pieces.
//! When the stack has an auto-cache and the server sends a validator, the
//! pieces are also kept in
//! `<cache dir>/image-metadata/<hash of URL without query + validator>/`
//! (one verified file per piece, written atomically, see
//! [`disk_sparse::PieceDir`]), so a warm open of an image whose data the
//! read cache holds sends only the validating HEAD and fetches no bytes.
//! Every structure is parsed and checked again on each open. Each open
//! marks its version directory used; [`image_metadata::prune`] removes
//! versions unused for a while (`petri-tool cache prune`). The size limit
//! of the cache directory counts these pieces but never removes them.
//!
//! # Prefetch
//!
//! A remote image with a read cache records the guest's first reads beside
//! its cache entry when it closes, and at open replays a prefetch list (the
//! recorded one, else `<image URL>.prefetch` from the store) on a thread of
//! its own; see [`prefetch`].
//!
//! # A cache that cannot be used
//!
//! An auto-cache layer is opened before the stack is assembled. When no
//! usable cache can be opened (the directory cannot be created or
//! written, the file system is full, the file is damaged beyond repair
//! in a read-only directory, ...), the stack is assembled without that
//! layer (`[RAM, blob]`: every read the RAM layer does not hold goes to
//! the image) and one warning names the cache directory and the reason,
//! unless the description marks the cache `required`: then opening fails
//! with [`OpenError::Cache`]. A cache that exists but cannot be written is
//! used read-only (the auto-cache says so). Each open records in the
//! cache entry where the image is (its URL without the query) and which
//! version it is (the VHD unique id, the VHDX data write GUID or the
//! server's validator), and keeps the description's size limit for the
//! cache directory (see `disklayer_sqlite::cache_entries`).
//!
//! DEVNOTE: an image keyed by its content id relies on an image that
//! changes getting a new id (the reference does this for VHDs; VHDX
//! changes its data write GUID by itself); within one open, reads are
//! still pinned to the validator seen at open by `disk_blob`.

#![forbid(unsafe_code)]

pub mod image_metadata;
pub mod prefetch;

use disk_backend::Disk;
use disk_backend::DiskError;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use disk_blob::Blob;
use disk_blob::BlobDisk;
use disk_blob::BlobDiskError;
use disk_blob::BlobError;
use disk_blob::BlobValidators;
use disk_blob::FileBlob;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use disk_layered::DiskLayer;
use disk_layered::InvalidLayeredDisk;
use disk_layered::LayerConfiguration;
use disk_layered::LayeredDisk;
use disk_sparse::ExtensionHint;
use disk_sparse::ImageFormat;
use disk_sparse::MetaReader;
use disk_sparse::PieceDir;
use disk_sparse::SparseError;
use disklayer_ram::RamDiskLayer;
use disklayer_sqlite::Geometry;
use disklayer_sqlite::SqliteDiskLayerConfig;
use disklayer_sqlite::SqliteLayerError;
use disklayer_sqlite::auto_cache::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::auto_cache::LowerDisk;
use disklayer_sqlite::cache_entries::EntryInfo;
use sha2::Digest;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use url_redact::RedactedUrl;
use url_redact::redact_url;
use url_redact::strip_query;

/// How to open the parts of a stack that need settings beyond the
/// description (HTTP client options, cache chunk size, prefetch).
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Options for HTTP blobs (timeouts, retries, TLS roots, parallelism).
    pub http: HttpBlobOptions,
    /// Chunk size of auto-caches this open creates, in bytes; `None` uses
    /// the SQLite layer's default.
    pub cache_chunk_size: Option<u32>,
    /// The unit a read-cache miss is fetched in, in bytes (see
    /// `SqliteDiskLayer::with_fill_size`); `None` uses the layer's default.
    pub cache_fill_size: Option<u32>,
    /// How a prefetch list is replayed for a remote image with a read
    /// cache (see [`prefetch`]); `None` turns replay off (as
    /// `PETRI_PREFETCH=0` does). The guest's first reads are recorded
    /// beside the cache entry either way.
    pub prefetch: Option<disk_layered::PrefetchOptions>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            http: HttpBlobOptions::default(),
            cache_chunk_size: None,
            cache_fill_size: None,
            prefetch: Some(disk_layered::PrefetchOptions::default()),
        }
    }
}

/// Why a stack could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The description has no layers.
    #[error("the disk stack description has no layers")]
    Empty,
    /// The bottom layer is not a full disk (a file or a blob).
    #[error("the bottom layer of a disk stack must be a file or a blob, found {0}")]
    BottomNotFullDisk(&'static str),
    /// A file or blob layer is not at the bottom.
    #[error("a {0} layer can only be the bottom layer of a disk stack")]
    FullDiskNotAtBottom(&'static str),
    /// A local file could not be opened.
    #[error("opening disk file {path}")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: BlobError,
    },
    /// A remote blob could not be opened.
    #[error("opening remote disk {url}")]
    OpenBlob {
        /// The redacted URL.
        url: String,
        /// The cause.
        #[source]
        source: BlobError,
    },
    /// The blob is not a disk of the described format.
    #[error("presenting {what} as a disk")]
    BlobDisk {
        /// A path or redacted URL.
        what: String,
        /// The cause.
        #[source]
        source: BlobDiskError,
    },
    /// The image's format could not be detected, or its structures are
    /// not those of a usable image of that format.
    #[error("opening the image {what}")]
    Image {
        /// A path or redacted URL.
        what: String,
        /// The cause (it names the structure).
        #[source]
        source: SparseError,
    },
    /// The layers could not be assembled.
    #[error("assembling the disk stack")]
    Layers(#[source] InvalidLayeredDisk),
    /// The assembled disk was refused by the disk handle.
    #[error("wrapping the disk stack")]
    Disk(#[source] DiskError),
    /// The read cache, which the description requires, could not be
    /// opened.
    #[error("opening the read cache in {}, which is required", cache_dir.display())]
    Cache {
        /// The cache directory.
        cache_dir: PathBuf,
        /// The cause.
        #[source]
        source: SqliteLayerError,
    },
}

/// The cache key of a flat HTTP blob: [`url_cache_key`] with the prefix
/// `flat`.
pub fn flat_blob_cache_key(url: &str, validators: &BlobValidators, len: u64) -> Option<String> {
    url_cache_key("flat", url, validators, len)
}

/// The cache key of an HTTP blob without a content id (flat, qcow2): the
/// format's prefix, a readable part taken from the file name, then a
/// SHA-256 over the URL without its query string and the server's
/// validator. Returns `None` when the server sent no validator (no ETag,
/// no Last-Modified): such a blob must not be cached persistently.
pub fn url_cache_key(
    prefix: &str,
    url: &str,
    validators: &BlobValidators,
    len: u64,
) -> Option<String> {
    let validator = validator_string(validators, len)?;
    let hash = version_hash(url, &validator);
    let name = strip_query(url).rsplit('/').next().unwrap_or_default();
    let readable: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(48)
        .collect();
    let hash = &hash[..32];
    Some(if readable.is_empty() || readable.starts_with('.') {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{readable}-{hash}")
    })
}

/// The validator string a cache key is derived from: the ETag, else
/// Last-Modified plus the length; `None` without either.
fn validator_string(validators: &BlobValidators, len: u64) -> Option<String> {
    match (&validators.etag, &validators.last_modified) {
        (Some(etag), _) => Some(format!("etag:{etag}")),
        (None, Some(lm)) => Some(format!("last-modified:{lm};length:{len}")),
        (None, None) => None,
    }
}

/// Hex SHA-256 of the URL without its query, a newline and the validator.
fn version_hash(url: &str, validator: &str) -> String {
    let mut h = sha2::Sha256::new();
    h.update(strip_query(url).as_bytes());
    h.update(b"\n");
    h.update(validator.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A blob whose last 512 bytes (a VHD1 footer) are served from memory.
struct FooterCachedBlob {
    inner: Arc<dyn Blob>,
    footer_offset: u64,
    footer: [u8; 512],
}

impl Blob for FooterCachedBlob {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> disk_blob::BlobReadFuture<'a> {
        if offset == self.footer_offset && buf.len() == self.footer.len() {
            buf.copy_from_slice(&self.footer);
            return Box::pin(std::future::ready(Ok(())));
        }
        self.inner.read(buf, offset)
    }
    fn counters(&self) -> disk_blob::BlobCounters {
        self.inner.counters()
    }
    fn validators(&self) -> BlobValidators {
        self.inner.validators()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// Where the metadata pieces of a remote image are kept, if they can be.
fn piece_dir(cache_dir: &Path, url: &str, blob: &dyn Blob) -> Option<PieceDir> {
    let validator = validator_string(&blob.validators(), blob.len())?;
    let dir = cache_dir
        .join(image_metadata::DIR_NAME)
        .join(version_hash(url, &validator));
    image_metadata::mark_used(&dir);
    Some(PieceDir::new(dir))
}

/// `blob` with its fixed-VHD1 footer (the last 512 bytes) served from the
/// metadata reader's pieces, so a warm open reads no bytes for it.
async fn with_cached_footer(
    blob: Arc<dyn Blob>,
    meta: &MetaReader,
) -> Result<Arc<dyn Blob>, SparseError> {
    let len = blob.len();
    let Some(footer_offset) = len.checked_sub(512) else {
        return Ok(blob);
    };
    let bytes = meta.read(footer_offset..len, "VHD footer").await?;
    let Ok(footer) = <[u8; 512]>::try_from(bytes.as_slice()) else {
        return Ok(blob);
    };
    Ok(Arc::new(FooterCachedBlob {
        inner: blob,
        footer_offset,
        footer,
    }))
}

/// Writes `data` to `path` through a temporary file and a rename, so a
/// reader never sees a partial file. The temporary file has a unique name:
/// threads of one process storing different files into one directory at
/// once each rename their own bytes.
fn store_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    // DEVNOTE: elsewhere the directory inherits the ACL of its parent (on
    // Windows, %LOCALAPPDATA% is already private to the user), as the
    // SQLite cache's own directories do.
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    // Removed on drop if anything below fails.
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The bottom of a stack once opened, with what the layers above need to
/// know about it.
struct Bottom {
    disk: Disk,
    /// The HTTP blob, for a remote image (its store may hold a prefetch
    /// list).
    http: Option<Arc<HttpBlob>>,
    /// What a prefetch list of this image must name: a VHD1's unique id, a
    /// VHDX's data write GUID, else the URL path and validator of a flat
    /// or qcow2 blob (`None` without either).
    identity: Option<String>,
    /// Whether the bottom is an HTTP blob without a content id (flat,
    /// qcow2), whose cache is keyed by URL and validator.
    url_keyed: bool,
    /// For such a blob: the key its auto-cache must use, or `None` when
    /// the server sent no validator.
    url_key: Option<String>,
    /// What a cache entry of this disk records about it.
    entry_info: EntryInfo,
}

async fn open_bottom(
    kind: &LayerKind,
    options: &OpenOptions,
    cache_dir: Option<&Path>,
) -> Result<Bottom, OpenError> {
    let mut http = None;
    let (blob, format, location, url): (Arc<dyn Blob>, BlobFormat, String, Option<&str>) =
        match kind {
            LayerKind::File { path, format } => {
                let blob = FileBlob::open(path)
                    .await
                    .map_err(|source| OpenError::OpenFile {
                        path: path.clone(),
                        source,
                    })?;
                (Arc::new(blob), *format, path.display().to_string(), None)
            }
            LayerKind::Blob { url, format } => {
                let blob = HttpBlob::open(url, options.http.clone())
                    .await
                    .map_err(|source| OpenError::OpenBlob {
                        url: RedactedUrl(url).to_string(),
                        source,
                    })?;
                let blob = Arc::new(blob);
                http = Some(blob.clone());
                (blob, *format, url.clone(), Some(url.as_str()))
            }
            other => return Err(OpenError::BottomNotFullDisk(layer_name(other))),
        };
    let what = blob.describe();
    let image_error = |source| OpenError::Image {
        what: what.clone(),
        source,
    };
    let pieces = match (url, cache_dir) {
        (Some(url), Some(dir)) => piece_dir(dir, url, &*blob),
        _ => None,
    };
    let meta = Arc::new(MetaReader::new(blob.clone(), pieces));
    let image_format = match format {
        BlobFormat::Auto => disk_sparse::detect(&meta, ExtensionHint::from_location(&location))
            .await
            .map_err(image_error)?,
        BlobFormat::Flat => ImageFormat::Flat,
        BlobFormat::FixedVhd1 => ImageFormat::FixedVhd1,
        BlobFormat::DynamicVhd1 => ImageFormat::DynamicVhd1,
        BlobFormat::Vhdx => ImageFormat::Vhdx,
        BlobFormat::Qcow2 => ImageFormat::Qcow2,
    };
    tracing::debug!(image = %what, format = ?image_format, "opening the bottom of a disk stack");
    let blob_disk_error = |source| OpenError::BlobDisk {
        what: what.clone(),
        source,
    };
    let disk = match image_format {
        ImageFormat::Flat => Disk::new(BlobDisk::new_flat(blob.clone()).map_err(blob_disk_error)?),
        ImageFormat::FixedVhd1 => {
            let blob = with_cached_footer(blob.clone(), &meta)
                .await
                .map_err(image_error)?;
            Disk::new(
                BlobDisk::new_fixed_vhd1(blob)
                    .await
                    .map_err(blob_disk_error)?,
            )
        }
        ImageFormat::DynamicVhd1 | ImageFormat::Vhdx | ImageFormat::Qcow2 => Disk::new(
            disk_sparse::open_sparse(meta, image_format)
                .await
                .map_err(image_error)?,
        ),
    }
    .map_err(OpenError::Disk)?;
    let prefix = match image_format {
        ImageFormat::Flat => Some("flat"),
        ImageFormat::Qcow2 => Some("qcow2"),
        _ => None,
    };
    let (url_keyed, url_key) = match (url, prefix) {
        (Some(url), Some(prefix)) => {
            let key = url_cache_key(prefix, url, &blob.validators(), blob.len());
            if key.is_none() {
                tracing::warn!(
                    blob = %what,
                    "the server sent no ETag or Last-Modified for this image, which has no \
                     content id; its persistent read cache is disabled so a replaced image \
                     can never be served stale"
                );
            }
            (true, key)
        }
        _ => (false, None),
    };
    let entry_info = EntryInfo {
        location: Some(match kind {
            LayerKind::Blob { url, .. } => strip_query(&redact_url(url)).to_owned(),
            LayerKind::File { path, .. } => path.display().to_string(),
            _ => what.clone(),
        }),
        // A VHD1 is known by its unique id (the auto-cache records it from
        // the disk id); a VHDX by its data write GUID; the others by the
        // server's validator.
        identity: match image_format {
            ImageFormat::Flat | ImageFormat::Qcow2 => {
                validator_string(&blob.validators(), blob.len())
            }
            ImageFormat::Vhdx => disk.disk_id().map(|id| {
                format!(
                    "vhdx-data-write-guid {}",
                    disklayer_sqlite::auto_cache::hex(&id)
                )
            }),
            ImageFormat::FixedVhd1 | ImageFormat::DynamicVhd1 => None,
        },
        disk_size: None,
    };
    let identity = match image_format {
        ImageFormat::FixedVhd1 | ImageFormat::DynamicVhd1 => disk
            .disk_id()
            .map(|id| format!("vhd1-id:{}", disklayer_sqlite::auto_cache::hex(&id))),
        ImageFormat::Vhdx => disk.disk_id().map(|id| {
            format!(
                "vhdx-data-write-guid:{}",
                disklayer_sqlite::auto_cache::hex(&id)
            )
        }),
        ImageFormat::Flat | ImageFormat::Qcow2 => match (url, prefix) {
            (Some(url), Some(prefix)) => validator_string(&blob.validators(), blob.len())
                .map(|v| format!("{prefix}:{};{v}", url_path(url))),
            _ => None,
        },
    };
    Ok(Bottom {
        disk,
        http,
        identity,
        url_keyed,
        url_key,
        entry_info,
    })
}

/// The path of `url` (no scheme, host or query): what a flat image's
/// prefetch identity names, so a list works from any mirror and never
/// carries a SAS token.
fn url_path(url: &str) -> &str {
    let no_query = strip_query(url);
    let after_scheme = no_query.split_once("://").map_or(no_query, |(_, r)| r);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

fn layer_name(kind: &LayerKind) -> &'static str {
    match kind {
        LayerKind::Ram { .. } => "RAM",
        LayerKind::Sqlite { .. } => "SQLite",
        LayerKind::AutoCacheSqlite { .. } => "SQLite auto-cache",
        LayerKind::File { .. } => "file",
        LayerKind::Blob { .. } => "blob",
    }
}

/// A disk [`open_with_details`] opened, with what a tool may want to know
/// about it.
#[derive(Debug)]
pub struct OpenedDisk {
    /// The disk.
    pub disk: Disk,
    /// Where the guest's first reads are recorded as a prefetch list when
    /// the disk closes (a remote image with a read cache), merged with
    /// earlier runs: the file to publish beside the image in the store.
    pub prefetch_record: Option<PathBuf>,
    /// The read cache's file, if the stack has one that could be opened
    /// (see [`OpenError::Cache`] for one that could not).
    pub cache_file: Option<PathBuf>,
}

/// Opens `handle` into a live disk. See the [crate docs](crate) for how
/// cache keys are chosen.
pub async fn open(handle: &LayeredDiskHandle, options: &OpenOptions) -> Result<Disk, OpenError> {
    open_with_details(handle, options).await.map(|o| o.disk)
}

/// [`open`], also saying where the disk's prefetch list is recorded.
pub async fn open_with_details(
    handle: &LayeredDiskHandle,
    options: &OpenOptions,
) -> Result<OpenedDisk, OpenError> {
    let (bottom_desc, upper) = handle.layers.split_last().ok_or(OpenError::Empty)?;
    if let Some(l) = upper
        .iter()
        .find(|l| matches!(l.layer, LayerKind::File { .. } | LayerKind::Blob { .. }))
    {
        return Err(OpenError::FullDiskNotAtBottom(layer_name(&l.layer)));
    }
    let cache_dir = upper.iter().find_map(|l| match &l.layer {
        LayerKind::AutoCacheSqlite { cache_dir, .. } => Some(cache_dir.as_path()),
        _ => None,
    });
    let bottom = open_bottom(&bottom_desc.layer, options, cache_dir).await?;

    let mut layers = Vec::with_capacity(handle.layers.len());
    let mut plan = None;
    let mut cache_file = None;
    for desc in upper {
        let layer = match &desc.layer {
            LayerKind::Ram { len } => DiskLayer::new(RamDiskLayer::lazy(*len)),
            LayerKind::Sqlite {
                path,
                create,
                read_only,
            } => DiskLayer::new(SqliteDiskLayerConfig::new(path, *create, *read_only)),
            LayerKind::AutoCacheSqlite {
                cache_dir,
                key,
                required,
                max_size,
            } => {
                let key = match key {
                    Some(k) => Some(k.clone()),
                    None if bottom.url_keyed => match &bottom.url_key {
                        Some(k) => Some(k.clone()),
                        // No validator: leave the cache out (warned above).
                        None => continue,
                    },
                    None => None,
                };
                let mut cache = AutoCacheSqliteDiskLayer::new(cache_dir, key, false)
                    .with_max_size(*max_size)
                    .with_entry_info(bottom.entry_info.clone());
                if let Some(chunk) = options.cache_chunk_size {
                    cache = cache.with_chunk_size(chunk);
                }
                if let Some(fill) = options.cache_fill_size {
                    cache = cache.with_fill_size(fill);
                }
                // What it caches is the bottom disk (every layer has its
                // geometry; its id is the stack's).
                let lower = LowerDisk {
                    geometry: Geometry {
                        sector_count: bottom.disk.sector_count(),
                        sector_size: bottom.disk.sector_size(),
                    },
                    disk_id: bottom.disk.disk_id(),
                };
                let opened = match cache.open_for(&lower).await {
                    Ok(layer) => layer,
                    Err(source) if *required => {
                        return Err(OpenError::Cache {
                            cache_dir: cache_dir.clone(),
                            source,
                        });
                    }
                    Err(err) => {
                        tracing::warn!(
                            cache_dir = %cache_dir.display(),
                            error = &err as &dyn std::error::Error,
                            "no usable read cache: the disk is opened without it, \
                             so what is read is fetched from the image every time"
                        );
                        continue;
                    }
                };
                cache_file.get_or_insert_with(|| opened.path().to_path_buf());
                // The topmost read cache of a remote image records (and
                // replays) the prefetch list.
                if plan.is_none()
                    && desc.read_cache
                    && let (Some(identity), Some(http)) = (&bottom.identity, &bottom.http)
                    && let Some(entry) = opened.path().parent()
                {
                    plan = Some(prefetch::PrefetchPlan {
                        identity: identity.clone(),
                        record_path: entry.join(prefetch::RECORD_FILE_NAME),
                        store: Some(http.clone()),
                        replay: options.prefetch.is_some() && prefetch::prefetch_allowed_by_env(),
                        options: options.prefetch.unwrap_or_default(),
                    });
                }
                DiskLayer::from_layer(opened)
            }
            other @ (LayerKind::File { .. } | LayerKind::Blob { .. }) => {
                // Rejected before opening anything; kept for exhaustiveness.
                return Err(OpenError::FullDiskNotAtBottom(layer_name(other)));
            }
        };
        layers.push(LayerConfiguration {
            layer,
            read_cache: desc.read_cache,
            write_through: desc.write_through,
        });
    }
    layers.push(LayerConfiguration {
        layer: DiskLayer::from_disk(bottom.disk),
        read_cache: bottom_desc.read_cache,
        write_through: bottom_desc.write_through,
    });
    let layered = LayeredDisk::new(handle.read_only, layers)
        .await
        .map_err(OpenError::Layers)?;
    let prefetch_record = plan.as_ref().map(|p| p.record_path.clone());
    Ok(OpenedDisk {
        disk: prefetch::wrap(layered, plan).map_err(OpenError::Disk)?,
        prefetch_record,
        cache_file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads storing different files into one directory at once each
    /// end up with their own bytes under their own name.
    #[test]
    fn concurrent_stores_into_one_directory_keep_their_own_bytes() {
        const THREADS: usize = 8;
        const ROUNDS: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let start = std::sync::Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for t in 0..THREADS {
                let (dir, start) = (dir.path(), &start);
                scope.spawn(move || {
                    start.wait();
                    let path = dir.join("footers").join(format!("key-{t}"));
                    for round in 0..ROUNDS {
                        let data = [t as u8, round as u8, 0xAA];
                        store_atomically(&path, &data)
                            .unwrap_or_else(|e| panic!("thread {t} round {round}: {e}"));
                        let back = std::fs::read(&path).unwrap();
                        // Another thread may not replace this file; only
                        // this thread writes it, so it holds this round.
                        assert_eq!(back, data, "thread {t} round {round}");
                    }
                });
            }
        });
        let names: Vec<_> = std::fs::read_dir(dir.path().join("footers"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), THREADS, "temporary files left: {names:?}");
    }
}
