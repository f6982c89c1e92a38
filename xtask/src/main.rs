//! Workspace automation: `cargo xtask <command>`.
//!
//! Position in the data flow: xtask sits outside the product. It installs
//! what the checks and tests need on a fresh machine (Debian packages) and
//! runs them, so that the README's test command and CI's `.ci/run` are one
//! and the same thing.
//!
//! Commands:
//! - `cargo xtask test`: set-up, then every check and test (fmt, clippy,
//!   rustdoc with warnings denied, the Guide, nextest, doc tests).
//! - `cargo xtask setup`: only the set-up (missing Debian packages).
//! - `cargo xtask lint`: the dependency rules of ARCHITECTURE.md against
//!   `cargo metadata`, doc links and the Guide's structure (also run by
//!   `cargo xtask test`).
//! - `cargo xtask bench`: builds `disk-bench` and runs its suite: the lazy
//!   disk against curl, cat and nbdkit, side by side, with a markdown
//!   report.
//! - `cargo xtask guest-test build-image`: the small Linux test guest.
//! - `cargo xtask guest-test download-image`: test images from the image
//!   store (all, named ones, or those selected tests need locally).
//! - `cargo xtask guest-test run`: the main job (QEMU tests cold, then warm,
//!   against a local image store).

#![forbid(unsafe_code)]

use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use std::process::ExitCode;

mod bench;
mod download;
mod guest_image;
mod guest_run;
mod guide_check;
mod lint;
mod setup;
mod test;

/// Workspace automation for the lazy disk artifacts project.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the tests need (when missing), then run every check and
    /// test: fmt, clippy, rustdoc, nextest and doc tests.
    Test(test::TestArgs),
    /// Install what the tests need, without running anything else.
    Setup,
    /// Check the dependency rules in ARCHITECTURE.md against the
    /// workspace, doc links and the Guide's pages and links.
    Lint,
    /// Benchmark the lazy disk against curl, cat and nbdkit, side by side
    /// (release build), and write a markdown report: builds `disk-bench`
    /// and runs `disk-bench suite` with the options given.
    Bench(bench::BenchArgs),
    /// Guest images for VMM tests.
    #[command(subcommand)]
    GuestTest(GuestTestCommand),
}

#[derive(Subcommand)]
enum GuestTestCommand {
    /// Build a test guest (kernel, initramfs, root disk): the small petri
    /// test guest (default) or the Debian 12 systemd guest (--guest).
    BuildImage(guest_image::BuildImageArgs),
    /// Download test images from the image store (all, named ones, or
    /// those the selected tests need locally).
    DownloadImage(download::DownloadImageArgs),
    /// The main job: build the test guest if needed, host it on a local
    /// blob server, run the QEMU vmm_tests twice (cold cache, then warm)
    /// and print per-test times and bytes fetched.
    Run(guest_run::RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // What went wrong and why, one chain on one line. A returned
            // error is for the user, so no backtrace even with
            // RUST_BACKTRACE=1 (common on CI); a developer who wants one
            // sets RUST_LIB_BACKTRACE=1. Panics keep theirs.
            if std::env::var_os("RUST_LIB_BACKTRACE").is_some_and(|v| v == "1") {
                eprintln!("error: {err:?}");
            } else {
                eprintln!("error: {err:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root().context("finding the workspace root")?;
    match cli.command {
        Command::Test(args) => test::run(&root, args),
        Command::Setup => setup::ensure_test_prerequisites(),
        Command::Lint => lint::run(&root),
        Command::Bench(args) => bench::run(&root, args),
        Command::GuestTest(GuestTestCommand::BuildImage(args)) => guest_image::run(&root, args),
        Command::GuestTest(GuestTestCommand::DownloadImage(args)) => download::run(&root, args),
        Command::GuestTest(GuestTestCommand::Run(args)) => guest_run::run(&root, args),
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<std::path::PathBuf> {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(|p| p.to_path_buf())
        .context("xtask's manifest directory has no parent")
}

/// Cargo's target directory for the workspace at `root`:
/// `CARGO_TARGET_DIR` (relative to `root`), else `<root>/target`.
fn target_dir(root: &std::path::Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|t| root.join(t))
        .unwrap_or_else(|| root.join("target"))
}

/// Whether we run under CI, where a missing component is a failure rather
/// than a reason to skip: the workspace's one check, under xtask's name.
pub use ci_env::in_ci as is_ci;
