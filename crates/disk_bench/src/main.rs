//! `disk-bench`: the disk-stack benchmark: its workloads, one per process,
//! and the suite that runs them against their peers and writes the report.
//!
//! Position: a tool. `cargo xtask bench` builds it in release mode and runs
//! `disk-bench suite` ([`suite`]), which runs this same binary once per
//! workload, beside curl, cat, nbdkit and QEMU, and writes a markdown
//! report. Each workload invocation opens the remote stack that petri uses
//! for a lazily fetched image (RAM diff over an auto-cache SQLite read
//! cache over an HTTP blob, via `disk_open::open`), runs exactly one
//! workload, and prints one JSON line on standard output
//! ([`workloads::Output`]). Running one workload per process is what makes
//! "warm" honest (a new process that finds only the persistent cache, no
//! warm in-memory state) and what makes the peak RSS figure (`VmHWM` of
//! this process) belong to one workload.
//!
//! Workloads:
//! - `seq`: sequential reads of one request size over the whole disk (or a
//!   prefix), queue depth 1, timed from before the open; with
//!   `--without-read-cache` the stack has no SQLite layer (the fetch path
//!   alone, as context for what the cache's writes cost);
//! - `random`: N seeded random aligned reads (queue depth 1); with
//!   `--layout per-sector` the auto-cache is replaced by the reference's
//!   one-row-per-sector SQLite layout ([`per_sector`]) in the same stack
//!   (RAM above, the same HTTP blob below): the baseline of the warm random
//!   target;
//! - `replay`: a recorded read trace replayed with its causality
//!   ([`replay`]);
//! - `serve-http`: the workspace's blob server with added latency, as the
//!   store of a replay or a boot;
//! - `serve-nbd`: exports the stack with `disk_nbd` on a Unix socket, prints
//!   a `ready` line, serves until standard input closes, then prints the
//!   counters of the whole session.
//!
//! Invariant: every figure a workload prints comes from its own process
//! (counters of the `Disk`, the cache directory on disk after the disk is
//! closed, `VmHWM`); the suite only times the peers and takes medians.
//!
//! DEVNOTE: the per-sector baseline layer is implemented here because the
//! one in `disklayer_sqlite/benches` is private to that bench (and is not a
//! layer).

#![forbid(unsafe_code)]

mod per_sector;
mod replay;
mod suite;
mod workloads;

use anyhow::Context;
use anyhow::Result;
use clap::Parser;
use clap::Subcommand;
use std::io::Write;
use std::path::PathBuf;
use workloads::Layout;
use workloads::StackArgs;

#[derive(Parser)]
#[command(
    about = "Runs one disk-stack benchmark workload and prints a JSON line, or (suite) all of them against their peers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every workload against its peers (curl, cat, nbdkit, QEMU), one
    /// process each, and the markdown report (what `cargo xtask bench`
    /// runs).
    Suite(Box<suite::SuiteArgs>),
    #[command(flatten)]
    Workload(Workload),
}

/// One workload, run in this process; its [`workloads::Output`] is printed
/// as one JSON line.
#[derive(Subcommand)]
enum Workload {
    /// Sequential reads of one size over the disk.
    Seq {
        #[command(flatten)]
        stack: StackArgs,
        /// Bytes per read request.
        #[arg(long)]
        request_size: usize,
        /// Stop after this many bytes (default: the whole disk).
        #[arg(long)]
        limit: Option<u64>,
        /// Leave the SQLite read cache out of the stack (RAM straight over
        /// the HTTP blob): measures the fetch path alone, as context for
        /// what the cache's writes cost. `--cache-dir` is then unused.
        #[arg(long)]
        without_read_cache: bool,
    },
    /// Seeded random aligned reads.
    Random {
        #[command(flatten)]
        stack: StackArgs,
        /// Number of reads.
        #[arg(long)]
        count: u64,
        /// Bytes per read (a multiple of 512).
        #[arg(long, default_value_t = 4096)]
        io_size: usize,
        /// The seed of the read offsets.
        #[arg(long)]
        seed: u64,
        /// The read-cache layout.
        #[arg(long, value_enum, default_value = "chunked")]
        layout: Layout,
    },
    /// Replay a recorded read trace (`petri-tool disk serve-nbd
    /// --trace-reads`), keeping its causality; reports the disk-wait.
    Replay {
        #[command(flatten)]
        stack: StackArgs,
        /// The trace file.
        #[arg(long)]
        trace: PathBuf,
    },
    /// Serve a directory over HTTP (the workspace's blob server) with
    /// simulated latency until standard input closes: the store of a
    /// replay or a boot. Prints a `ready` line with the base URL.
    ServeHttp {
        /// The directory.
        #[arg(long)]
        dir: PathBuf,
        /// Milliseconds waited before each request is answered.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Milliseconds waited once per new connection.
        #[arg(long, default_value_t = 0)]
        connection_latency_ms: u64,
    },
    /// Export the stack over NBD until standard input closes.
    ServeNbd {
        #[command(flatten)]
        stack: StackArgs,
        /// The Unix socket to listen on.
        #[arg(long)]
        socket: PathBuf,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Suite(args) => suite::run(*args),
        Cmd::Workload(workload) => run_workload(workload),
    }
}

fn run_workload(workload: Workload) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let out = match workload {
        Workload::Seq {
            stack,
            request_size,
            limit,
            without_read_cache,
        } => rt.block_on(workloads::seq(
            &stack,
            request_size,
            limit,
            without_read_cache,
        ))?,
        Workload::Random {
            stack,
            count,
            io_size,
            seed,
            layout,
        } => rt.block_on(workloads::random(&stack, count, io_size, seed, layout))?,
        Workload::ServeNbd { stack, socket } => {
            rt.block_on(workloads::serve_nbd(&stack, &socket))?
        }
        Workload::Replay { stack, trace } => {
            rt.block_on(workloads::replay_trace(&stack, &trace))?
        }
        Workload::ServeHttp {
            dir,
            latency_ms,
            connection_latency_ms,
        } => rt.block_on(workloads::serve_http(
            &dir,
            latency_ms,
            connection_latency_ms,
        ))?,
    };
    drop(rt);
    let line = serde_json::to_string(&out)?;
    // A reader that went away (a script that stopped `serve-http` by
    // closing its pipes) is no error of the workload's.
    match writeln!(std::io::stdout().lock(), "{line}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing the result to standard output")
        }
        _ => Ok(()),
    }
}
