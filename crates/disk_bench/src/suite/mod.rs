//! `disk-bench suite`: the lazy disk against its peers, in one run (what
//! `cargo xtask bench` runs).
//!
//! What it does, in order (every figure is the median of `--reps`
//! repetitions, 3 by default; guest boots `--guest-reps`, 5 by default):
//! 1. prepares a random image, flat and as a fixed VHD1 (512 MiB;
//!    `--quick`: 8 MiB), plus a 1 GiB flat image for the peak-RSS workload,
//!    served by nginx on loopback;
//! 2. references: one `curl` download of the image to `/dev/null` (the
//!    network), one saved to a file (what downloading first costs; shown as
//!    context), `cat` of the local file from the page cache;
//! 3. our stack in-process (this binary's workloads, one process per
//!    workload, so a warm run is a new process that only finds the
//!    persistent cache): cold sequential 64 KiB and 1 MiB reads (fresh
//!    cache dir), warm sequential 1 MiB reads, 20,000 seeded random 4 KiB
//!    reads cold and warm, and the one-row-per-sector baseline for the warm
//!    random reads; flat and VHD1. The cold sequential passes are also
//!    reported timed to the close of the disk (the cache commits fills
//!    behind the reader; at close every byte read is in the cache file);
//!    and, as context, a cold 1 MiB pass with no read cache in the stack
//!    (the fetch path alone);
//! 4. NBD with one client (`nbdcopy` to `null:`): our `disk_nbd` export of
//!    the stack (cold: fresh cache; warm: a new server process over the same
//!    cache) and `nbdkit -r curl` with the readahead and cache filters (warm:
//!    a second pass in the same nbdkit process, its cache not being
//!    persistent), then a local file exported by us and by `nbdkit file`;
//! 5. the test guest booted under QEMU (TCG) with `petri.steps=read-data`
//!    from the local raw file (`snapshot=on`), and from the VHD over our
//!    stack exported with `disk_nbd`: cold, warm, and cold with 20 ms added
//!    to every HTTP request (the in-process fault server of
//!    `blob_test_servers` serving the same file, as the delay proxy);
//! 6. peak RSS while reading a 1 GiB image sequentially (cold, 1 MiB reads);
//! 7. sparse formats: a striped image (random, compressible, holes)
//!    converted to dynamic VHD, VHDX, qcow2 and compressed qcow2, read by
//!    our stack (cold and warm sequential, cold random 4 KiB) and by QEMU's
//!    drivers over its curl driver (see `sparse`).
//!
//! The report (figures, then each target with PASS/FAIL, [`targets`]) is
//! printed and written to `<bench dir>/report.md` (or `--out`).
//!
//! Dependencies: `blob_test_servers` (nginx, the latency server, the image
//! writers) is a test-support crate; the bench is a tool, not a product, so
//! it uses it as a normal dependency.

mod groups;
mod report;
mod sparse;
mod targets;
mod tools;

use crate::workloads::Output;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use blob_test_servers::NginxServer;
use report::Report;
use report::Sample;
use report::Unit;
use std::path::Path;
use std::path::PathBuf;

/// Options of `disk-bench suite` (and so of `cargo xtask bench`).
#[derive(clap::Args)]
pub struct SuiteArgs {
    /// Small sizes and one repetition: checks that the command works; the
    /// figures mean little.
    #[arg(long)]
    quick: bool,
    /// Repetitions per figure (default 3, 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Repetitions of each guest boot (default 5, 1 with --quick): a TCG
    /// boot varies by about 10% from run to run on a shared machine, so
    /// its ratios need more samples than the disk workloads.
    #[arg(long)]
    guest_reps: Option<usize>,
    /// The bench's directory: scratch files go to `work/` in it (removed at
    /// the end), the report to `report.md`.
    #[arg(long, default_value = "target/bench")]
    bench_dir: PathBuf,
    /// Where to write the markdown report (default: `report.md` in the
    /// bench directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the guest boot workload.
    #[arg(long)]
    skip_guest: bool,
    /// Skip the NBD workloads.
    #[arg(long)]
    skip_nbd: bool,
    /// Run only these workload groups (comma-separated: refs, stack,
    /// baseline, rss, nbd, guest, distro, sparse); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A `disk-bench` binary built from another tree (for example the
    /// commit before a change: `git worktree add /tmp/base REV` and
    /// `cargo build --release -p disk_bench` there). Its stack and NBD
    /// workloads run interleaved with ours, rep by rep, and are reported
    /// as `base-*` rows next to ours: before and after in one run.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
    /// The built test guest (`cargo xtask guest-test build-image`), which
    /// `cargo xtask bench` passes when it is there: its kernel, ...
    #[arg(long, requires_all = ["guest_initrd", "guest_raw", "guest_vhd"])]
    guest_kernel: Option<PathBuf>,
    /// ... its initramfs, ...
    #[arg(long, requires = "guest_kernel")]
    guest_initrd: Option<PathBuf>,
    /// ... its root disk as a raw file, ...
    #[arg(long, requires = "guest_kernel")]
    guest_raw: Option<PathBuf>,
    /// ... and as a fixed VHD1.
    #[arg(long, requires = "guest_kernel")]
    guest_vhd: Option<PathBuf>,
    /// The built Debian 12 systemd guest (`cargo xtask guest-test
    /// build-image --guest debian`), which `cargo xtask bench` passes when
    /// it is there: its kernel, ... Its root disk's prefetch list is
    /// `<vhd>.prefetch` beside the VHD (build-image records it).
    #[arg(long, requires_all = ["distro_initrd", "distro_raw", "distro_vhd"])]
    distro_kernel: Option<PathBuf>,
    /// ... its initramfs, ...
    #[arg(long, requires = "distro_kernel")]
    distro_initrd: Option<PathBuf>,
    /// ... its root disk as a raw file, ...
    #[arg(long, requires = "distro_kernel")]
    distro_raw: Option<PathBuf>,
    /// ... and as a fixed VHD1.
    #[arg(long, requires = "distro_kernel")]
    distro_vhd: Option<PathBuf>,
    /// Repetitions of each Debian guest boot (default 3, 1 with --quick):
    /// each repetition boots it 8 times (local, warm, and cold at 0, 20
    /// and 50 ms per request with and without the prefetch list).
    #[arg(long)]
    distro_reps: Option<usize>,
}

/// Sizes of one run.
struct Plan {
    image_size: u64,
    rss_image_size: u64,
    random_reads: u64,
    reps: usize,
    guest_reps: usize,
    distro_reps: usize,
}

const SEED: u64 = 0x5eed_b10b;
const RANDOM_SEED: u64 = 20_000;
const MIB: u64 = 1024 * 1024;

/// Runs the suite.
pub fn run(args: SuiteArgs) -> Result<()> {
    let plan = if args.quick {
        Plan {
            image_size: 8 * MIB,
            rss_image_size: 16 * MIB,
            random_reads: 500,
            reps: args.reps.unwrap_or(1),
            guest_reps: args.guest_reps.unwrap_or(1),
            distro_reps: args.distro_reps.unwrap_or(1),
        }
    } else {
        Plan {
            image_size: 512 * MIB,
            rss_image_size: 1024 * MIB,
            random_reads: 20_000,
            reps: args.reps.unwrap_or(3),
            guest_reps: args.guest_reps.unwrap_or(5),
            distro_reps: args.distro_reps.unwrap_or(3),
        }
    };
    if plan.reps == 0 || plan.guest_reps == 0 || plan.distro_reps == 0 {
        bail!("--reps, --guest-reps and --distro-reps must be at least 1");
    }
    if let Some(base) = &args.baseline_bin
        && !base.is_file()
    {
        bail!("--baseline-bin {}: no such file", base.display());
    }
    // The workloads are this binary's own subcommands.
    let bin = std::env::current_exe().context("finding the disk-bench binary")?;
    let guest = GuestFiles::from_args(&args)?;
    let distro = GuestFiles::distro_from_args(&args)?;
    let work = args.bench_dir.join("work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let www = work.join("www");
    std::fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
    let on = |g: &str| args.only.is_empty() || args.only.iter().any(|o| o == g);
    // Only the images the chosen groups read (the full plan's are GiBs).
    println!("bench: preparing images in {}", www.display());
    if ["refs", "stack", "baseline", "nbd"].into_iter().any(on) {
        blob_test_servers::images::write_random_file(
            &www.join("image.raw"),
            SEED,
            plan.image_size,
        )?;
    }
    if on("stack") {
        blob_test_servers::images::write_fixed_vhd1(
            &www.join("image.vhd"),
            SEED,
            plan.image_size,
            *b"disk-bench-image",
        )?;
    }
    if on("rss") {
        blob_test_servers::images::write_random_file(
            &www.join("big.raw"),
            SEED + 1,
            plan.rss_image_size,
        )?;
    }
    if let Some(g) = &guest {
        link_or_copy(&g.vhd, &www.join("guest.vhd"))?;
    }
    let nginx = NginxServer::serve_dir(&www).context("starting nginx")?;

    let mut b = Bench {
        bin,
        baseline: args.baseline_bin.clone(),
        work: work.clone(),
        www: www.clone(),
        plan,
        report: Report::default(),
        next_dir: 0,
    };
    if on("refs") {
        b.references(&nginx)?;
    }
    if on("stack") {
        for fmt in ["flat", "vhd1"] {
            b.in_process(&nginx, fmt)?;
        }
    }
    if on("baseline") {
        b.per_sector_baseline(&nginx)?;
    }
    if on("sparse") {
        b.sparse(&nginx)?;
    }
    if on("rss") {
        b.rss(&nginx)?;
    }
    if on("nbd") {
        if args.skip_nbd {
            let why = "skipped (--skip-nbd)";
            b.report.skipped("nbd-ours-cold", "NBD", Unit::MBps, why);
        } else {
            b.nbd(&nginx)?;
        }
    }
    if on("guest") {
        match &guest {
            _ if args.skip_guest => {
                let why = "skipped (--skip-guest)";
                b.report
                    .skipped("boot-local", "guest boot", Unit::Seconds, why);
            }
            None => {
                let why = "test guest images missing: run cargo xtask guest-test build-image \
                           (cargo xtask bench then passes them as --guest-kernel ...)";
                b.report
                    .skipped("boot-local", "guest boot", Unit::Seconds, why);
            }
            Some(g) => b.guest(&nginx, g)?,
        }
    }
    if on("distro") {
        match &distro {
            _ if args.skip_guest => {
                let why = "skipped (--skip-guest)";
                b.report
                    .skipped("distro-local", "Debian guest boot", Unit::Seconds, why);
            }
            None => {
                let why = "Debian guest images missing: run cargo xtask guest-test build-image \
                           --guest debian (cargo xtask bench then passes them as --distro-kernel ...)";
                b.report
                    .skipped("distro-local", "Debian guest boot", Unit::Seconds, why);
            }
            Some(g) => b.distro(g)?,
        }
    }
    targets::targets(&mut b.report);

    let header = header(&b.plan, args.quick, &args.only);
    let md = b.report.markdown(&header);
    println!("\n{md}");
    let out = args.out.unwrap_or_else(|| args.bench_dir.join("report.md"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("bench: report written to {}", out.display());
    drop(nginx);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn header(plan: &Plan, quick: bool, only: &[String]) -> String {
    let uname = tools::capture("uname", &["-srm"]).unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = tools::capture("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "# Disk stack benchmark{}\n\n{date}; {uname}; {cpus} CPUs ({cpu}); load average at the end: {}.\n\
         Image {} MiB (random data, flat and fixed VHD1) on nginx at 127.0.0.1; RSS image {} MiB; \
         {} random reads; each figure is the median of {} repetition(s) ({} for guest boots, \
         run in turn: local, cold, warm, cold with latency). MB = 10^6 bytes.{}",
        if quick {
            " (--quick: sizes too small for the targets to mean anything)"
        } else {
            ""
        },
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        plan.image_size / MIB,
        plan.rss_image_size / MIB,
        plan.random_reads,
        plan.reps,
        plan.guest_reps,
        if only.is_empty() {
            String::new()
        } else {
            format!(
                "\nOnly the groups {} ran (the sizes above are those of the others; \
                 each group's rows say their own).",
                only.join(", ")
            )
        },
    )
}

/// One run of the suite: where its files go, what it measures with, and
/// the report it fills.
struct Bench {
    /// This binary: the workloads.
    bin: PathBuf,
    /// `--baseline-bin`: measured beside `bin` in the stack and NBD groups.
    baseline: Option<PathBuf>,
    work: PathBuf,
    www: PathBuf,
    plan: Plan,
    report: Report,
    next_dir: u32,
}

fn mbps(bytes: f64, secs: f64) -> f64 {
    if secs > 0.0 { bytes / secs / 1e6 } else { 0.0 }
}

impl Output {
    fn sample(&self, value: f64) -> Sample {
        Sample {
            value,
            requests: Some(self.remote_requests as f64),
            fetched: Some(self.remote_bytes_fetched as f64),
            bytes_read: Some(self.bytes_read as f64),
            cache_file: Some(self.cache_file_bytes as f64),
            cached_data: Some(self.cached_data_bytes as f64),
            peak_rss: Some(self.peak_rss_bytes as f64),
            // Only an NBD export or a replay sees the client's waits.
            disk_wait: matches!(self.workload.as_str(), "serve-nbd" | "replay")
                .then_some(self.disk_wait_secs),
            prefetched: Some(self.prefetched_bytes as f64),
        }
    }

    fn mbps_sample(&self) -> Sample {
        self.sample(mbps(self.bytes_read as f64, self.secs))
    }

    /// MB/s until the disk was closed (the cache then holds every byte).
    fn closed_mbps_sample(&self) -> Sample {
        self.sample(mbps(self.bytes_read as f64, self.secs + self.close_secs))
    }

    fn iops_sample(&self) -> Sample {
        let v = if self.secs > 0.0 {
            self.reads as f64 / self.secs
        } else {
            0.0
        };
        self.sample(v)
    }
}

impl Bench {
    fn fresh_dir(&mut self, what: &str) -> Result<PathBuf> {
        self.next_dir += 1;
        let d = self.work.join(format!("{what}-{}", self.next_dir));
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    fn stack_args(&self, url: &str, fmt: &str, cache: &Path) -> Vec<String> {
        vec![
            "--url".into(),
            url.into(),
            "--format".into(),
            fmt.into(),
            "--cache-dir".into(),
            cache.display().to_string(),
        ]
    }

    fn seq(&self, url: &str, fmt: &str, cache: &Path, request: u64) -> Result<Output> {
        self.seq_args(&self.bin, url, fmt, cache, request, &[])
    }

    fn seq_args(
        &self,
        bin: &Path,
        url: &str,
        fmt: &str,
        cache: &Path,
        request: u64,
        extra: &[&str],
    ) -> Result<Output> {
        let mut a = vec!["seq".to_owned()];
        a.extend(self.stack_args(url, fmt, cache));
        a.extend(["--request-size".to_owned(), request.to_string()]);
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        tools::disk_bench(bin, &a)
    }

    fn random(&self, bin: &Path, url: &str, fmt: &str, cache: &Path) -> Result<Output> {
        self.random_layout(bin, url, fmt, cache, "chunked")
    }

    fn random_layout(
        &self,
        bin: &Path,
        url: &str,
        fmt: &str,
        cache: &Path,
        layout: &str,
    ) -> Result<Output> {
        let mut a = vec![
            "random".to_owned(),
            "--layout".to_owned(),
            layout.to_owned(),
        ];
        a.extend(self.stack_args(url, fmt, cache));
        a.extend([
            "--count".to_owned(),
            self.plan.random_reads.to_string(),
            "--seed".to_owned(),
            RANDOM_SEED.to_string(),
        ]);
        tools::disk_bench(bin, &a)
    }

    /// The binaries to measure in the stack and NBD groups, with the key
    /// prefix of their rows: ours, then `--baseline-bin` if given.
    fn bins(&self) -> Vec<(&'static str, PathBuf)> {
        let mut bins = vec![("", self.bin.clone())];
        if let Some(base) = &self.baseline {
            bins.push(("base-", base.clone()));
        }
        bins
    }
}

/// Which built guest a [`GuestFiles`] is: how it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestKind {
    /// The petri test guest, booted with `petri.steps=read-data`.
    Petri,
    /// The Debian 12 systemd guest, booted to its marker.
    Debian,
}

/// A built test guest.
pub struct GuestFiles {
    kind: GuestKind,
    kernel: PathBuf,
    initrd: PathBuf,
    raw: PathBuf,
    vhd: PathBuf,
}

impl GuestFiles {
    /// The guest named by `--guest-*`, if given; every file must exist.
    fn from_args(args: &SuiteArgs) -> Result<Option<Self>> {
        Self::from_paths(
            GuestKind::Petri,
            [
                &args.guest_kernel,
                &args.guest_initrd,
                &args.guest_raw,
                &args.guest_vhd,
            ],
            "--guest-*; build the guest with cargo xtask guest-test build-image",
        )
    }

    /// The Debian guest named by `--distro-*`, if given.
    fn distro_from_args(args: &SuiteArgs) -> Result<Option<Self>> {
        Self::from_paths(
            GuestKind::Debian,
            [
                &args.distro_kernel,
                &args.distro_initrd,
                &args.distro_raw,
                &args.distro_vhd,
            ],
            "--distro-*; build the guest with cargo xtask guest-test build-image --guest debian",
        )
    }

    fn from_paths(
        kind: GuestKind,
        paths: [&Option<PathBuf>; 4],
        hint: &str,
    ) -> Result<Option<Self>> {
        let [Some(kernel), Some(initrd), Some(raw), Some(vhd)] = paths else {
            return Ok(None);
        };
        for p in [kernel, initrd, raw, vhd] {
            if !p.is_file() {
                bail!("{}: no such file ({hint})", p.display());
            }
        }
        Ok(Some(GuestFiles {
            kind,
            kernel: kernel.clone(),
            initrd: initrd.clone(),
            raw: raw.clone(),
            vhd: vhd.clone(),
        }))
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}
