//! Disk stack descriptions the tests open, so each test file does not
//! spell them out again.

use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayerDescription;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use std::path::Path;

/// The stack petri gives a remote image: `[RAM diff, SQLite auto-cache in
/// cache_dir (read cache, keyed by the opener, no size limit), blob at
/// url]`. `required`: no usable cache fails the open instead of opening
/// the disk without it.
pub fn remote_stack(
    cache_dir: &Path,
    url: &str,
    format: BlobFormat,
    required: bool,
) -> LayeredDiskHandle {
    LayeredDiskHandle {
        layers: vec![
            LayerDescription::plain(LayerKind::Ram { len: None }),
            LayerDescription::read_cache(LayerKind::AutoCacheSqlite {
                cache_dir: cache_dir.to_path_buf(),
                key: None,
                required,
                max_size: None,
            }),
            LayerDescription::plain(LayerKind::Blob {
                url: url.to_string(),
                format,
            }),
        ],
        read_only: false,
    }
}
