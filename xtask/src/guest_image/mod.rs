//! `cargo xtask guest-test build-image`: builds the small Linux test guest
//! (not yet written).

use anyhow::Result;
use std::path::Path;

/// Options for `cargo xtask guest-test build-image`.
#[derive(clap::Args)]
pub struct BuildImageArgs {}

/// Builds the test guest.
pub fn run(_root: &Path, _args: BuildImageArgs) -> Result<()> {
    anyhow::bail!("guest-test build-image is not implemented yet")
}
