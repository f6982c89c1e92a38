//! `cargo xtask bench` (not yet written).

use anyhow::Result;
use std::path::Path;

/// Options for `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {}

/// Runs the benchmark.
pub fn run(_root: &Path, _args: BenchArgs) -> Result<()> {
    anyhow::bail!("bench is not implemented yet")
}
