//! `petri-tool`: command-line access to petri's disk machinery.
//!
//! Position in the data flow: a user-facing edge. It builds the same disk
//! stack the VMM backends open for a test's boot disk (through
//! `petri::disk_stack` and `disk_open`) and hands it to something outside
//! the test framework.
//!
//! Commands:
//! - `petri-tool disk serve-nbd <url-or-path> --socket <path>`: exports a
//!   remote image (RAM diff over the persistent auto-cache over the HTTP
//!   blob) or a local image file (RAM diff over the file) as an NBD export on
//!   a Unix socket, until SIGINT or SIGTERM, then prints the disk counters.
//!   Any NBD client can attach it (`qemu-img`, `qemu-system-*`, `nbd-client`,
//!   nbdkit's benchmarks). See [`serve_nbd`].
//! - `petri-tool cache list | prune | verify`: the read-cache directory
//!   shared by remote disks: what it holds, removing entries (never one in
//!   use), checking every entry for damage. See [`cache`].
//!
//! Invariants: a URL's query (a SAS token, a presigned signature) is never
//! printed: every URL in output and errors goes through `url_redact`.
//! Guest writes go to the RAM layer only; neither the cache nor the image
//! is ever written by a client.

#![forbid(unsafe_code)]

use clap::Parser;
use clap::Subcommand;
use std::process::ExitCode;

mod cache;
mod read_trace;
mod serve_nbd;

/// Command-line tools for petri's lazily fetched disk images.
#[derive(Parser)]
#[command(name = "petri-tool", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Disk images: serve them to other programs.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// The read cache of remote disks: list, prune, verify.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Serve an image (an http(s) URL or a local file) over NBD on a Unix
    /// socket, with guest writes kept in RAM and remote blocks cached on
    /// disk, until SIGINT or SIGTERM; then print the disk counters.
    ServeNbd(serve_nbd::ServeNbdArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Plain text unless standard error is a terminal (and NO_COLOR is
    // unset), so redirected logs carry no colour codes.
    petri::logging::init_stderr_logging("warn");
    let result = match cli.command {
        Command::Disk(DiskCommand::ServeNbd(args)) => serve_nbd::run(args),
        Command::Cache(command) => cache::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The chain, one cause per line; URLs in it are redacted where
            // they are formatted.
            eprintln!("petri-tool: error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
