//! A disk stack described as plain data.
//!
//! Position in the data flow: petri's backends decide *what* disk a VM gets
//! (RAM diff over an auto-cache over an HTTP blob, or RAM diff over a local
//! file) and write that decision down as a [`LayeredDiskHandle`]. The
//! description is then logged, compared in tests, serialised to another
//! process, and finally opened into a live `disk_backend::Disk` by the
//! opener. Keeping the description apart from the code that opens it means
//! the decision can be tested without any I/O.
//!
//! Model: `layers[0]` is the top of the stack (where guest writes land);
//! the last layer is the bottom and must be a full disk (a file or a blob).
//! Each layer may be a read cache (filled with what is read from below it)
//! and/or write-through (writes go to it and to the next layer down).
//!
//! Invariant: nothing here does I/O, and nothing here prints a URL's query
//! string: the `Debug` output of a blob layer redacts it (serialisation
//! keeps the full URL, because the opener needs it).

#![forbid(unsafe_code)]

use serde::Deserialize;
use serde::Serialize;
use std::fmt;
use std::path::PathBuf;
use url_redact::RedactedUrl;

/// A whole disk stack, top layer first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayeredDiskHandle {
    /// The layers, `layers[0]` being the top.
    pub layers: Vec<LayerDescription>,
    /// Whether the assembled disk refuses writes.
    pub read_only: bool,
}

/// One layer of a stack and how it takes part in reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDescription {
    /// What the layer is.
    pub layer: LayerKind,
    /// Sectors read from below this layer are written into it
    /// (write-no-overwrite), so the next read hits here.
    pub read_cache: bool,
    /// Writes to this layer are passed on to the layer below it too.
    pub write_through: bool,
}

/// How a blob's bytes map to the disk's sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobFormat {
    /// Decided by the opener from the content (magic at offset 0, a VHD
    /// footer at the end), with the file name's extension as a hint: any
    /// of the formats below; content without magic is flat (a fixed VHD1
    /// for a `.vhd` or `.vmgs` name), and content that contradicts the
    /// extension is an error.
    Auto,
    /// The blob is the disk, byte for byte.
    Flat,
    /// The blob is a fixed VHD1: the disk followed by a 512-byte footer.
    FixedVhd1,
    /// A dynamic VHD1 (footer copy, dynamic header, BAT, blocks with
    /// sector bitmaps). Differencing VHDs are refused.
    DynamicVhd1,
    /// A VHDX (non-differencing, with an empty log).
    Vhdx,
    /// A qcow2 image, version 2 or 3, without backing file, encryption or
    /// external data file.
    Qcow2,
}

/// The kinds of layer a stack can be built from.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerKind {
    /// A sparse in-memory layer. Without a length it takes the length of
    /// the layer below it.
    Ram {
        /// Size in bytes, if fixed.
        len: Option<u64>,
    },
    /// A persistent SQLite layer in an explicit file.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Create (format) the file if it does not exist.
        create: bool,
        /// Open the layer read-only.
        read_only: bool,
    },
    /// A persistent SQLite read cache in `<cache_dir>/<key>/cache.dbhd`,
    /// created on first use and shared by every process using the same
    /// key.
    AutoCacheSqlite {
        /// The cache directory (see petri's cache directory rule).
        cache_dir: PathBuf,
        /// The cache key; without one, the lower layer's disk id is used.
        key: Option<String>,
        /// When no usable cache can be opened (the directory cannot be
        /// created or written, its file system is full, ...): `true` fails
        /// the open; `false` opens the disk without this layer, with a
        /// warning.
        #[serde(default)]
        required: bool,
        /// A size limit in bytes for the whole cache directory, kept when
        /// the cache is opened and closed by removing the entries used
        /// least recently (never one in use); `None`: no limit.
        #[serde(default)]
        max_size: Option<u64>,
    },
    /// A local file presented as a disk, never written.
    File {
        /// The file.
        path: PathBuf,
        /// How its bytes map to sectors.
        format: BlobFormat,
    },
    /// A remote HTTP(S) blob read with Range requests, never written.
    Blob {
        /// The full URL (its query may hold a SAS token: never print it
        /// unredacted).
        url: String,
        /// How its bytes map to sectors.
        format: BlobFormat,
    },
}

impl fmt::Debug for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerKind::Ram { len } => f.debug_struct("Ram").field("len", len).finish(),
            LayerKind::Sqlite {
                path,
                create,
                read_only,
            } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("create", create)
                .field("read_only", read_only)
                .finish(),
            LayerKind::AutoCacheSqlite {
                cache_dir,
                key,
                required,
                max_size,
            } => f
                .debug_struct("AutoCacheSqlite")
                .field("cache_dir", cache_dir)
                .field("key", key)
                .field("required", required)
                .field("max_size", max_size)
                .finish(),
            LayerKind::File { path, format } => f
                .debug_struct("File")
                .field("path", path)
                .field("format", format)
                .finish(),
            LayerKind::Blob { url, format } => f
                .debug_struct("Blob")
                .field("url", &RedactedUrl(url))
                .field("format", format)
                .finish(),
        }
    }
}

impl LayerDescription {
    /// A layer that is neither a read cache nor write-through.
    pub fn plain(layer: LayerKind) -> Self {
        LayerDescription {
            layer,
            read_cache: false,
            write_through: false,
        }
    }

    /// A read-cache layer.
    pub fn read_cache(layer: LayerKind) -> Self {
        LayerDescription {
            layer,
            read_cache: true,
            write_through: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote_stack() -> LayeredDiskHandle {
        LayeredDiskHandle {
            layers: vec![
                LayerDescription::plain(LayerKind::Ram { len: None }),
                LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                    cache_dir: "/tmp/cache".into(),
                    key: None,
                    required: false,
                    max_size: Some(20 << 30),
                }),
                LayerDescription::plain(LayerKind::Blob {
                    url: "https://a.blob.core.windows.net/vhds/x.vhd?sig=SECRET".into(),
                    format: BlobFormat::FixedVhd1,
                }),
            ],
            read_only: false,
        }
    }

    #[test]
    fn debug_redacts_blob_query() {
        let s = format!("{:?}", remote_stack());
        assert!(!s.contains("SECRET"), "{s}");
        assert!(s.contains("x.vhd?<redacted>"), "{s}");
    }

    #[test]
    fn serde_round_trip_keeps_full_url() {
        let h = remote_stack();
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("sig=SECRET"));
        let back: LayeredDiskHandle = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn a_cache_layer_without_policy_fields_is_best_effort_and_unlimited() {
        let json = r#"{"layers":[{"layer":{"AutoCacheSqlite":{"cache_dir":"/c","key":null}},
            "read_cache":true,"write_through":false}],"read_only":false}"#;
        let h: LayeredDiskHandle = serde_json::from_str(json).unwrap();
        assert_eq!(
            h.layers[0].layer,
            LayerKind::AutoCacheSqlite {
                cache_dir: "/c".into(),
                key: None,
                required: false,
                max_size: None,
            }
        );
    }
}
