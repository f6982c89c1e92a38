//! `cargo xtask guest-test download-image` (not yet written).

use anyhow::Result;
use std::path::Path;

/// Options for `cargo xtask guest-test download-image`.
#[derive(clap::Args)]
pub struct DownloadImageArgs {}

/// Downloads test images.
pub fn run(_root: &Path, _args: DownloadImageArgs) -> Result<()> {
    anyhow::bail!("guest-test download-image is not implemented yet")
}
