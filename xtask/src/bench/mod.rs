//! `cargo xtask bench`: the lazy disk against its peers, in one run.
//!
//! What it does, in order (every figure is the median of `--reps`
//! repetitions, 3 by default; guest boots `--guest-reps`, 5 by default):
//! 1. builds `disk-bench` (release) and prepares a random image, flat and
//!    as a fixed VHD1 (512 MiB; `--quick`: 8 MiB), plus a 1 GiB flat image
//!    for the peak-RSS workload, served by nginx on loopback;
//! 2. references: one `curl` download of the image to `/dev/null` (the
//!    network), one saved to a file (what downloading first costs; shown as
//!    context), `cat` of the local file from the page cache;
//! 3. our stack in-process (`disk-bench`, one process per workload, so a
//!    warm run is a new process that only finds the persistent cache): cold
//!    sequential 64 KiB and 1 MiB reads (fresh cache dir), warm sequential
//!    1 MiB reads, 20,000 seeded random 4 KiB reads cold and warm, and the
//!    one-row-per-sector baseline for the warm random reads; flat and VHD1.
//!    The cold sequential passes are also reported timed to the close of
//!    the disk (the cache commits fills behind the reader; at close every
//!    byte read is in the cache file); and, as context, a cold 1 MiB pass
//!    with no read cache in the stack (the fetch path alone);
//! 4. NBD with one client (`nbdcopy` to `null:`): our `disk_nbd` export of
//!    the stack (cold: fresh cache; warm: a new server process over the same
//!    cache) and `nbdkit -r curl` with the readahead and cache filters (warm:
//!    a second pass in the same nbdkit process, its cache not being
//!    persistent);
//! 5. the test guest booted under QEMU (TCG) with `petri.steps=read-data`
//!    from the local raw file (`snapshot=on`), and from the VHD over our
//!    stack exported with `disk_nbd`: cold, warm, and cold with 20 ms added
//!    to every HTTP request (the in-process fault server of
//!    `blob_test_servers` serving the same file, as the delay proxy);
//! 6. peak RSS while reading a 1 GiB image sequentially (cold, 1 MiB reads).
//!
//! The report (figures, then each target with PASS/FAIL) is printed and
//! written to `target/bench/report.md` (or `--out`).
//!
//! Dependencies: `blob_test_servers` (nginx, the latency server, the image
//! writers) is a test-support crate; the bench is a tool, not a product, so
//! it uses it as a normal dependency.

mod report;
mod tools;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use blob_test_servers::FaultServer;
use blob_test_servers::NginxServer;
use report::Cmp;
use report::Field;
use report::Report;
use report::Sample;
use report::Unit;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use tools::BenchOut;

/// Options for `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
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
    /// Where to write the markdown report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the guest boot workload.
    #[arg(long)]
    skip_guest: bool,
    /// Skip the NBD workloads.
    #[arg(long)]
    skip_nbd: bool,
    /// Run only these workload groups (comma-separated: refs, stack,
    /// baseline, rss, nbd, guest); default all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Install missing Debian packages (nbdkit, libnbd-bin, curl,
    /// qemu-utils, qemu-system-x86) with apt-get.
    #[arg(long)]
    install: bool,
    /// A `disk-bench` binary built from another tree (for example the
    /// commit before a change: `git worktree add /tmp/base REV` and
    /// `cargo build --release -p disk_bench` there). Its stack and NBD
    /// workloads run interleaved with ours, rep by rep, and are reported
    /// as `base-*` rows next to ours: before and after in one run.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

/// Sizes of one run.
struct Plan {
    image_size: u64,
    rss_image_size: u64,
    random_reads: u64,
    reps: usize,
    guest_reps: usize,
}

const SEED: u64 = 0x5eed_b10b;
const RANDOM_SEED: u64 = 20_000;
const MIB: u64 = 1024 * 1024;

/// Runs the benchmark.
pub fn run(root: &Path, args: BenchArgs) -> Result<()> {
    let plan = if args.quick {
        Plan {
            image_size: 8 * MIB,
            rss_image_size: 16 * MIB,
            random_reads: 500,
            reps: args.reps.unwrap_or(1),
            guest_reps: args.guest_reps.unwrap_or(1),
        }
    } else {
        Plan {
            image_size: 512 * MIB,
            rss_image_size: 1024 * MIB,
            random_reads: 20_000,
            reps: args.reps.unwrap_or(3),
            guest_reps: args.guest_reps.unwrap_or(5),
        }
    };
    if plan.reps == 0 || plan.guest_reps == 0 {
        bail!("--reps and --guest-reps must be at least 1");
    }
    if args.install {
        crate::setup::apt_install(&[
            "nbdkit",
            "libnbd-bin",
            "curl",
            "qemu-utils",
            "qemu-system-x86",
        ])?;
    }
    let bin = tools::build_disk_bench(root)?;
    let work = root.join("target/bench/work");
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    let www = work.join("www");
    std::fs::create_dir_all(&www)?;
    println!("bench: preparing images in {}", www.display());
    blob_test_servers::images::write_random_file(&www.join("image.raw"), SEED, plan.image_size)?;
    blob_test_servers::images::write_fixed_vhd1(
        &www.join("image.vhd"),
        SEED,
        plan.image_size,
        *b"disk-bench-image",
    )?;
    blob_test_servers::images::write_random_file(
        &www.join("big.raw"),
        SEED + 1,
        plan.rss_image_size,
    )?;
    let guest = GuestFiles::find(root);
    if let Some(g) = &guest {
        link_or_copy(&g.vhd, &www.join("guest.vhd"))?;
    }
    let nginx = NginxServer::serve_dir(&www).context("starting nginx")?;

    if let Some(base) = &args.baseline_bin
        && !base.is_file()
    {
        bail!("--baseline-bin {}: no such file", base.display());
    }
    let mut b = Bench {
        bin,
        baseline: args.baseline_bin.clone(),
        work: work.clone(),
        www: www.clone(),
        plan,
        report: Report::default(),
        next_dir: 0,
    };
    let on = |g: &str| args.only.is_empty() || args.only.iter().any(|o| o == g);
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
                let why = "test guest images missing: run cargo xtask guest-test build-image";
                b.report
                    .skipped("boot-local", "guest boot", Unit::Seconds, why);
            }
            Some(g) => b.guest(&nginx, g)?,
        }
    }
    targets(&mut b.report);

    let header = header(&b.plan, args.quick);
    let md = b.report.markdown(&header);
    println!("\n{md}");
    let out = args
        .out
        .unwrap_or_else(|| root.join("target/bench/report.md"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    println!("bench: report written to {}", out.display());
    drop(nginx);
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn header(plan: &Plan, quick: bool) -> String {
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
         run in turn: local, cold, warm, cold with latency). MB = 10^6 bytes.",
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
    )
}

/// The targets, evaluated on the flat image's rows.
fn targets(r: &mut Report) {
    let t = r.ratio("flat-cold-seq-64k", "curl");
    r.target("cold sequential 64 KiB / curl", t, Cmp::AtLeast, 0.6, "x");
    let t = r.ratio("flat-cold-seq-1m", "curl");
    r.target("cold sequential 1 MiB / curl", t, Cmp::AtLeast, 0.7, "x");
    // Context for the two above (not the targets): against a
    // download that is saved to a file, and timed to the close of the
    // disk, when the cache file holds every byte.
    for (ours, what, bar) in [
        ("flat-cold-seq-64k", "64 KiB", 0.6),
        ("flat-cold-seq-1m", "1 MiB", 0.7),
        ("flat-cold-seq-1m-closed", "1 MiB timed to close", 0.7),
    ] {
        let t = r.ratio(ours, "curl-file");
        let label = format!("(context) cold sequential {what} / curl saving to a file");
        r.target(&label, t, Cmp::AtLeast, bar, "x");
    }
    let t = r.ratio("flat-uncached-seq-1m", "curl");
    r.target(
        "(context) sequential 1 MiB without the read cache / curl",
        t,
        Cmp::AtLeast,
        0.7,
        "x",
    );
    let t = r.ratio("flat-warm-seq-1m", "cat");
    r.target("warm sequential 1 MiB / cat", t, Cmp::AtLeast, 0.5, "x");
    let t = r.ratio("flat-warm-random", "per-sector-random");
    r.target(
        "warm random 4 KiB / one-row-per-sector layout",
        t,
        Cmp::AtLeast,
        2.0,
        "x",
    );
    let t = r.get("flat-cold-random", Field::FetchedPerRead);
    r.target(
        "cold random 4 KiB: fetched / read",
        t,
        Cmp::AtMost,
        16.0,
        "x",
    );
    for key in ["flat-cold-seq-1m", "flat-cold-random"] {
        let t = r.get(key, Field::CachePerData);
        let label = format!("cache file / cached data ({key})");
        r.target(&label, t, Cmp::AtMost, 1.05, "x");
    }
    let t = r.ratio("nbd-ours-cold", "nbd-nbdkit-cold");
    r.target("NBD cold: ours / nbdkit", t, Cmp::AtLeast, 1.0, "x");
    let t = r.ratio("nbd-ours-warm", "nbd-nbdkit-warm");
    r.target("NBD warm: ours / nbdkit", t, Cmp::AtLeast, 1.0, "x");
    let t = r.ratio("nbd-file-ours", "nbd-file-nbdkit");
    r.target(
        "NBD local file: ours / nbdkit file",
        t,
        Cmp::AtLeast,
        1.0,
        "x",
    );
    let t = r.ratio("boot-cold", "boot-local");
    r.target("guest boot cold remote / local", t, Cmp::AtMost, 1.3, "x");
    let t = r.ratio("boot-warm", "boot-local");
    r.target("guest boot warm remote / local", t, Cmp::AtMost, 1.05, "x");
    let t = r.ratio("boot-cold-20ms", "boot-local");
    r.target(
        "guest boot cold remote, 20 ms latency / local",
        t,
        Cmp::AtMost,
        2.0,
        "x",
    );
    // With --baseline-bin: ours against the baseline build, side by side.
    for key in [
        "flat-warm-seq-1m",
        "flat-warm-random",
        "flat-cold-seq-1m",
        "vhd1-warm-seq-1m",
        "nbd-ours-warm",
        "nbd-ours-cold",
    ] {
        let base = match key.strip_prefix("nbd-ours-") {
            Some(rest) => format!("nbd-base-{rest}"),
            None => format!("base-{key}"),
        };
        if r.row(&base).is_some() {
            let t = r.ratio(key, &base);
            let label = format!("(context) {key}: ours / baseline build");
            r.target(&label, t, Cmp::AtLeast, 1.0, "x");
        }
    }
    for (key, what) in [("rss-1g", "cold"), ("rss-1g-warm", "warm")] {
        let t = r.get(key, Field::PeakRss).map(|v| v / MIB as f64);
        let label = format!("peak RSS reading 1 GiB sequentially, {what} (VmHWM)");
        r.target(&label, t, Cmp::AtMost, 256.0, " MiB");
    }
}

/// The samples of the in-process workloads of one binary.
#[derive(Default)]
struct InProcessRows {
    c64: Vec<Sample>,
    c1m: Vec<Sample>,
    w1m: Vec<Sample>,
    crand: Vec<Sample>,
    wrand: Vec<Sample>,
    /// The cold passes again, timed until the disk is closed (every byte
    /// read committed to the cache file).
    c64_closed: Vec<Sample>,
    c1m_closed: Vec<Sample>,
    /// Context: the same cold pass with no read cache in the stack (the
    /// fetch path alone), so the report shows what the cache's writes
    /// cost.
    uncached: Vec<Sample>,
}

struct Bench {
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

impl BenchOut {
    fn sample(&self, value: f64) -> Sample {
        Sample {
            value,
            requests: Some(self.remote_requests as f64),
            fetched: Some(self.remote_bytes_fetched as f64),
            bytes_read: Some(self.bytes_read as f64),
            cache_file: Some(self.cache_file_bytes as f64),
            cached_data: Some(self.cached_data_bytes as f64),
            peak_rss: Some(self.peak_rss_bytes as f64),
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

    fn references(&mut self, nginx: &NginxServer) -> Result<()> {
        println!("bench: references (curl, cat)");
        let url = nginx.url("/image.raw");
        // The network reference writes to /dev/null; the second curl row
        // saves the image to a file on the file system of the caches, as a
        // user who downloads it first would (any persistent cache has to
        // write every byte once, too).
        let saved = self.work.join("curl-download.raw");
        let (mut curl, mut curl_file) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.reps {
            for (to, v) in [
                (Path::new("/dev/null"), &mut curl),
                (saved.as_path(), &mut curl_file),
            ] {
                let (bytes, secs) = tools::curl_download(&url, to)?;
                if bytes != self.plan.image_size {
                    bail!(
                        "curl downloaded {bytes} bytes, expected {}",
                        self.plan.image_size
                    );
                }
                v.push(Sample {
                    value: mbps(bytes as f64, secs),
                    requests: Some(1.0),
                    fetched: Some(bytes as f64),
                    bytes_read: Some(bytes as f64),
                    ..Default::default()
                });
                let _ = std::fs::remove_file(&saved);
            }
        }
        self.report.push(
            "curl",
            "reference: curl full download (to /dev/null)",
            Unit::MBps,
            curl,
        );
        self.report.push(
            "curl-file",
            "reference: curl full download saved to a file (context)",
            Unit::MBps,
            curl_file,
        );
        let file = self.www.join("image.raw");
        // One untimed pass puts the file in the page cache.
        tools::cat(&file)?;
        let mut cat = Vec::new();
        for _ in 0..self.plan.reps {
            let secs = tools::cat(&file)?;
            cat.push(Sample {
                value: mbps(self.plan.image_size as f64, secs),
                ..Default::default()
            });
        }
        self.report
            .push("cat", "reference: cat from page cache", Unit::MBps, cat);
        Ok(())
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

    fn seq(&self, url: &str, fmt: &str, cache: &Path, request: u64) -> Result<BenchOut> {
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
    ) -> Result<BenchOut> {
        let mut a = vec!["seq".to_owned()];
        a.extend(self.stack_args(url, fmt, cache));
        a.extend(["--request-size".to_owned(), request.to_string()]);
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        tools::disk_bench(bin, &a)
    }

    fn random(&self, bin: &Path, url: &str, fmt: &str, cache: &Path) -> Result<BenchOut> {
        self.random_layout(bin, url, fmt, cache, "chunked")
    }

    fn random_layout(
        &self,
        bin: &Path,
        url: &str,
        fmt: &str,
        cache: &Path,
        layout: &str,
    ) -> Result<BenchOut> {
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

    fn in_process(&mut self, nginx: &NginxServer, fmt: &str) -> Result<()> {
        println!("bench: our stack in-process ({fmt})");
        let url = nginx.url(if fmt == "flat" {
            "/image.raw"
        } else {
            "/image.vhd"
        });
        let bins = self.bins();
        let mut rows: Vec<InProcessRows> = bins.iter().map(|_| InProcessRows::default()).collect();
        let mut checksums = Vec::new();
        // Reps outside, binaries inside: load from other processes hits
        // ours and the baseline alike.
        for _ in 0..self.plan.reps {
            for ((_, bin), r) in bins.iter().zip(&mut rows) {
                self.in_process_rep(bin, &url, fmt, r, &mut checksums)?;
            }
        }
        if checksums.windows(2).any(|w| w[0] != w[1]) {
            bail!("sequential passes returned different data ({fmt})");
        }
        for ((prefix, _), rows) in bins.iter().zip(rows) {
            let who = if prefix.is_empty() {
                "ours"
            } else {
                "baseline build"
            };
            self.push_in_process(prefix, who, fmt, rows);
        }
        Ok(())
    }

    /// One repetition of every in-process workload with `bin`.
    fn in_process_rep(
        &mut self,
        bin: &Path,
        url: &str,
        fmt: &str,
        r: &mut InProcessRows,
        checksums: &mut Vec<u64>,
    ) -> Result<()> {
        let dir = self.fresh_dir("cache")?;
        let o = self.seq_args(bin, url, fmt, &dir, 64 * 1024, &[])?;
        r.c64.push(o.mbps_sample());
        r.c64_closed.push(o.closed_mbps_sample());

        let dir = self.fresh_dir("cache")?;
        let cold = self.seq_args(bin, url, fmt, &dir, MIB, &[])?;
        r.c1m.push(cold.mbps_sample());
        r.c1m_closed.push(cold.closed_mbps_sample());
        let warm = self.seq_args(bin, url, fmt, &dir, MIB, &[])?;
        r.w1m.push(warm.mbps_sample());
        let dir = self.fresh_dir("cache")?;
        let bare = self.seq_args(bin, url, fmt, &dir, MIB, &["--without-read-cache"])?;
        r.uncached.push(bare.mbps_sample());
        checksums.extend([o.checksum, cold.checksum, warm.checksum, bare.checksum]);

        let dir = self.fresh_dir("cache")?;
        let cold = self.random(bin, url, fmt, &dir)?;
        r.crand.push(cold.iops_sample());
        let warm = self.random(bin, url, fmt, &dir)?;
        r.wrand.push(warm.iops_sample());
        if cold.checksum != warm.checksum {
            bail!("random reads returned different data cold and warm ({fmt})");
        }
        Ok(())
    }

    fn push_in_process(&mut self, prefix: &str, who: &str, fmt: &str, rows: InProcessRows) {
        let p = format!("{prefix}{fmt}-");
        let r = &mut self.report;
        r.push(
            &format!("{p}cold-seq-64k"),
            &format!("{who} {fmt}: cold sequential 64 KiB"),
            Unit::MBps,
            rows.c64,
        );
        r.push(
            &format!("{p}cold-seq-1m"),
            &format!("{who} {fmt}: cold sequential 1 MiB"),
            Unit::MBps,
            rows.c1m,
        );
        r.push(
            &format!("{p}cold-seq-64k-closed"),
            &format!("{who} {fmt}: cold sequential 64 KiB, timed to close (cache committed)"),
            Unit::MBps,
            rows.c64_closed,
        );
        r.push(
            &format!("{p}cold-seq-1m-closed"),
            &format!("{who} {fmt}: cold sequential 1 MiB, timed to close (cache committed)"),
            Unit::MBps,
            rows.c1m_closed,
        );
        r.push(
            &format!("{p}uncached-seq-1m"),
            &format!(
                "{who} {fmt}: sequential 1 MiB without the read cache (context: fetch path alone)"
            ),
            Unit::MBps,
            rows.uncached,
        );
        r.push(
            &format!("{p}warm-seq-1m"),
            &format!("{who} {fmt}: warm sequential 1 MiB (new process)"),
            Unit::MBps,
            rows.w1m,
        );
        r.push(
            &format!("{p}cold-random"),
            &format!("{who} {fmt}: cold random 4 KiB"),
            Unit::Iops,
            rows.crand,
        );
        r.push(
            &format!("{p}warm-random"),
            &format!("{who} {fmt}: warm random 4 KiB (new process)"),
            Unit::Iops,
            rows.wrand,
        );
    }

    /// The same stack with the reference's one-row-per-sector cache layout
    /// in place of the auto-cache: cold random reads fill it, then a new
    /// process reads the same offsets warm.
    fn per_sector_baseline(&mut self, nginx: &NginxServer) -> Result<()> {
        println!("bench: one-row-per-sector baseline (same stack, reference cache layout)");
        let url = nginx.url("/image.raw");
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.reps {
            let dir = self.fresh_dir("per-sector")?;
            for v in [&mut cold, &mut warm] {
                let o = self.random_layout(&self.bin, &url, "flat", &dir, "per-sector")?;
                v.push(o.iops_sample());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.report.push(
            "per-sector-cold-random",
            "baseline: one-row-per-sector layout, cold random 4 KiB",
            Unit::Iops,
            cold,
        );
        self.report.push(
            "per-sector-random",
            "baseline: one-row-per-sector layout, warm random 4 KiB (new process)",
            Unit::Iops,
            warm,
        );
        Ok(())
    }

    /// Peak RSS of reading the big image sequentially (1 MiB reads), cold
    /// (fresh cache) and warm (new process, same cache).
    fn rss(&mut self, nginx: &NginxServer) -> Result<()> {
        println!(
            "bench: peak RSS reading {} MiB",
            self.plan.rss_image_size / MIB
        );
        let url = nginx.url("/big.raw");
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.reps {
            let dir = self.fresh_dir("cache")?;
            for v in [&mut cold, &mut warm] {
                let o = self.seq(&url, "flat", &dir, MIB)?;
                v.push(o.mbps_sample());
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let mib = self.plan.rss_image_size / MIB;
        let label = format!("ours flat: cold sequential 1 MiB over {mib} MiB (peak RSS)");
        self.report.push("rss-1g", &label, Unit::MBps, cold);
        let label = format!("ours flat: warm sequential 1 MiB over {mib} MiB (peak RSS)");
        self.report.push("rss-1g-warm", &label, Unit::MBps, warm);
        Ok(())
    }

    fn nbd(&mut self, nginx: &NginxServer) -> Result<()> {
        println!("bench: NBD (nbdcopy to null:)");
        let missing: Vec<&str> = ["/usr/bin/nbdcopy", "/usr/sbin/nbdkit", "/usr/bin/nbdkit"]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if missing.contains(&"/usr/bin/nbdcopy")
            || (missing.contains(&"/usr/sbin/nbdkit") && missing.contains(&"/usr/bin/nbdkit"))
        {
            let why = "nbdkit or nbdcopy missing (cargo xtask bench --install, or apt-get install nbdkit libnbd-bin)";
            if crate::is_ci() {
                bail!("{why}");
            }
            self.report.skipped("nbd-ours-cold", "NBD", Unit::MBps, why);
            return Ok(());
        }
        let url = nginx.url("/image.raw");
        let bins = self.bins();
        // Cold and warm samples of each binary.
        let mut ours: Vec<(Vec<Sample>, Vec<Sample>)> =
            bins.iter().map(|_| (Vec::new(), Vec::new())).collect();
        let (mut kc, mut kw) = (Vec::new(), Vec::new());
        let mut inactive_readahead = false;
        for _ in 0..self.plan.reps {
            for ((_, bin), (oc, ow)) in bins.iter().zip(&mut ours) {
                let dir = self.fresh_dir("cache")?;
                let sock = self.work.join("ours.sock");
                for (v, _warm) in [(&mut *oc, false), (&mut *ow, true)] {
                    let server = tools::NbdServerProc::start(
                        bin,
                        &self.stack_args(&url, "flat", &dir),
                        &sock,
                    )?;
                    let secs = tools::nbdcopy(server.uri())?;
                    let o = server.stop()?;
                    v.push(o.sample(mbps(self.plan.image_size as f64, secs)));
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
            let kdir = self.fresh_dir("nbdkit")?;
            let nbdkit = tools::Nbdkit::start(&url, &kdir)?;
            for v in [&mut kc, &mut kw] {
                // nginx's access log tells what nbdkit fetched.
                let (r0, b0) = (nginx.request_count()?, nginx.bytes_sent()?);
                let secs = tools::nbdcopy(nbdkit.uri())?;
                let (r1, b1) = (nginx.request_count()?, nginx.bytes_sent()?);
                v.push(Sample {
                    value: mbps(self.plan.image_size as f64, secs),
                    requests: Some(r1.saturating_sub(r0) as f64),
                    fetched: Some(b1.saturating_sub(b0) as f64),
                    bytes_read: Some(self.plan.image_size as f64),
                    ..Default::default()
                });
            }
            inactive_readahead |= nbdkit.readahead_inactive();
            drop(nbdkit);
            let _ = std::fs::remove_dir_all(&kdir);
        }
        let r = &mut self.report;
        for ((prefix, _), (oc, ow)) in bins.iter().zip(ours) {
            let (key, who) = if prefix.is_empty() {
                ("nbd-ours", "ours")
            } else {
                ("nbd-base", "baseline build")
            };
            r.push(
                &format!("{key}-cold"),
                &format!("NBD: {who} (disk_nbd over the stack), cold"),
                Unit::MBps,
                oc,
            );
            r.push(
                &format!("{key}-warm"),
                &format!("NBD: {who}, warm (new server process, same cache)"),
                Unit::MBps,
                ow,
            );
        }
        r.push(
            "nbd-nbdkit-cold",
            "NBD: nbdkit curl+readahead+cache, cold",
            Unit::MBps,
            kc,
        );
        r.push(
            "nbd-nbdkit-warm",
            "NBD: nbdkit, warm (second pass, same process)",
            Unit::MBps,
            kw,
        );
        self.nbd_local_file()?;
        let r = &mut self.report;
        if inactive_readahead
            && let Some(row) = r.rows.iter_mut().find(|r| r.key == "nbd-nbdkit-cold")
        {
            row.note = "nbdkit warned: its readahead filter does nothing over this curl plugin \
                        (no NBD_CMD_CACHE / PARALLEL)"
                .to_owned();
        }
        Ok(())
    }

    /// A local image exported as it is (`[RAM, file]`, what `petri-tool
    /// disk serve-nbd FILE` serves) against `nbdkit file`, both reading a
    /// file in the page cache, interleaved.
    fn nbd_local_file(&mut self) -> Result<()> {
        println!("bench: NBD export of a local file (nbdcopy to null:)");
        let file = self.www.join("image.raw");
        tools::cat(&file)?;
        let (mut ours, mut kit) = (Vec::new(), Vec::new());
        for _ in 0..self.plan.reps {
            let dir = self.fresh_dir("file")?;
            let sock = self.work.join("ours-file.sock");
            let args = self.stack_args(&file.display().to_string(), "flat", &dir);
            let server = tools::NbdServerProc::start(&self.bin, &args, &sock)?;
            let secs = tools::nbdcopy(server.uri())?;
            server.stop()?;
            ours.push(Sample {
                value: mbps(self.plan.image_size as f64, secs),
                ..Default::default()
            });
            let nbdkit = tools::Nbdkit::start_file(&file, &dir)?;
            let secs = tools::nbdcopy(nbdkit.uri())?;
            drop(nbdkit);
            kit.push(Sample {
                value: mbps(self.plan.image_size as f64, secs),
                ..Default::default()
            });
            let _ = std::fs::remove_dir_all(&dir);
        }
        self.report.push(
            "nbd-file-ours",
            "NBD local file: ours ([RAM, file], as petri-tool disk serve-nbd FILE)",
            Unit::MBps,
            ours,
        );
        self.report.push(
            "nbd-file-nbdkit",
            "NBD local file: nbdkit file",
            Unit::MBps,
            kit,
        );
        Ok(())
    }

    fn guest(&mut self, nginx: &NginxServer, g: &GuestFiles) -> Result<()> {
        println!("bench: guest boot (QEMU TCG, petri.steps=read-data)");
        let url = nginx.url("/guest.vhd");
        let slow = FaultServer::builder()
            .latency(Duration::from_millis(20))
            .start()
            .context("starting the latency server")?;
        slow.put_file("/guest.vhd", &g.vhd)?;
        let slow_url = slow.url("/guest.vhd");
        let (mut local, mut cold, mut warm, mut lat) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.plan.guest_reps {
            let secs = tools::boot(g, &tools::BootDisk::Local(&g.raw))?;
            local.push(Sample {
                value: secs,
                ..Default::default()
            });
            let dir = self.fresh_dir("cache")?;
            let sock = self.work.join("guest.sock");
            for (v, u) in [(&mut cold, &url), (&mut warm, &url)] {
                let (secs, o) = self.boot_remote(g, u, &dir, &sock)?;
                v.push(o.sample(secs));
            }
            let dir = self.fresh_dir("cache")?;
            let (secs, o) = self.boot_remote(g, &slow_url, &dir, &sock)?;
            lat.push(o.sample(secs));
        }
        let r = &mut self.report;
        r.push(
            "boot-local",
            "guest boot: local raw file (QEMU snapshot=on)",
            Unit::Seconds,
            local,
        );
        r.push(
            "boot-cold",
            "guest boot: remote VHD over our NBD export, cold",
            Unit::Seconds,
            cold,
        );
        r.push(
            "boot-warm",
            "guest boot: remote, warm (new process, same cache)",
            Unit::Seconds,
            warm,
        );
        r.push(
            "boot-cold-20ms",
            "guest boot: remote, cold, 20 ms per HTTP request",
            Unit::Seconds,
            lat,
        );
        Ok(())
    }

    /// Boots from `url` over our NBD export; the time runs from starting
    /// the server process (so it includes opening the stack) to the
    /// guest's done marker.
    fn boot_remote(
        &self,
        g: &GuestFiles,
        url: &str,
        cache: &Path,
        sock: &Path,
    ) -> Result<(f64, BenchOut)> {
        let t = std::time::Instant::now();
        let server =
            tools::NbdServerProc::start(&self.bin, &self.stack_args(url, "vhd1", cache), sock)?;
        tools::boot(g, &tools::BootDisk::Nbd(server.uri()))?;
        let secs = t.elapsed().as_secs_f64();
        let out = server.stop()?;
        Ok((secs, out))
    }
}

/// The built test guest.
pub struct GuestFiles {
    kernel: PathBuf,
    initrd: PathBuf,
    raw: PathBuf,
    vhd: PathBuf,
}

impl GuestFiles {
    fn find(root: &Path) -> Option<Self> {
        let dir = root.join("images");
        let g = GuestFiles {
            kernel: dir.join(crate::guest_image::KERNEL_FILE),
            initrd: dir.join(crate::guest_image::INITRD_FILE),
            raw: dir.join(crate::guest_image::RAW_FILE),
            vhd: dir.join(crate::guest_image::VHD_FILE),
        };
        [&g.kernel, &g.initrd, &g.raw, &g.vhd]
            .iter()
            .all(|p| p.exists())
            .then_some(g)
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}
