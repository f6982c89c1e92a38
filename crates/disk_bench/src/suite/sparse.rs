//! The `sparse` group: a striped image (random, compressible, holes)
//! converted by `qemu-img` to a dynamic VHD, a VHDX, a qcow2 and a
//! compressed qcow2, read through our stack (format detected from the
//! content) and, as the peer, by QEMU's own format drivers over its curl
//! block driver (`json:{"file.driver":"http",...}`, package
//! `qemu-block-extra`).
//!
//! Rows per format: ours cold sequential 1 MiB, warm sequential 1 MiB (new
//! process), cold random 4 KiB; QEMU sequential (`qemu-img dd` of the
//! whole disk in 1 MiB blocks to a file) and random 4 KiB (`qemu-io`, the
//! same seeded offsets). QEMU's curl driver keeps nothing between runs, so
//! it has no warm row.
//!
//! DEVNOTE: `qemu-img convert` would be the natural sequential peer, but
//! it asks the format driver for the allocation status of every region,
//! which the vpc driver over curl answers with small requests one at a
//! time: 64 MiB took over 18 minutes on loopback. `dd` reads plainly.
//!
//! Sizes: at most [`MAX_IMAGE`] and [`MAX_RANDOM_READS`], whatever the
//! plan, so the group stays within minutes.

use super::Bench;
use super::MIB;
use super::RANDOM_SEED;
use super::SEED;
use super::mbps;
use super::report::Sample;
use super::report::Unit;
use crate::workloads::Output;
use anyhow::Context;
use anyhow::Result;
use blob_test_servers::NginxServer;
use blob_test_servers::sparse_images::SparseVariant;
use blob_test_servers::sparse_images::convert_with_qemu_img;
use blob_test_servers::sparse_images::write_striped_raw;
use std::io::Write as _;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// Largest image of this group.
const MAX_IMAGE: u64 = 64 * MIB;
/// Most random reads of this group's random rows.
const MAX_RANDOM_READS: u64 = 2_000;
/// Longest a QEMU peer run may take before it is taken as hung. QEMU
/// 7.2's curl driver stops for good in a compressed qcow2 (after about a
/// dozen requests: no request and no CPU use from then on), every time;
/// a QEMU that reads it gets its rows back.
const QEMU_LIMIT: Duration = Duration::from_secs(120);

/// The formats measured: file name (its extension is the hint), QEMU's
/// driver name, and the conversion.
const FORMATS: &[(SparseVariant, &str)] = &[
    (
        SparseVariant {
            name: "bench-dynamic.vhd",
            args: &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
        },
        "vpc",
    ),
    (
        SparseVariant {
            name: "bench.vhdx",
            args: &["-O", "vhdx"],
        },
        "vhdx",
    ),
    (
        SparseVariant {
            name: "bench.qcow2",
            args: &["-O", "qcow2"],
        },
        "qcow2",
    ),
    (
        SparseVariant {
            name: "bench-compressed.qcow2",
            args: &["-c", "-O", "qcow2"],
        },
        "qcow2",
    ),
];

/// QEMU's image filename for `url` read by its `driver` over curl.
fn qemu_json(url: &str, driver: &str) -> String {
    format!(r#"json:{{"driver":"{driver}","file.driver":"http","file.url":"{url}"}}"#)
}

impl Bench {
    pub(super) fn sparse(&mut self, nginx: &NginxServer) -> Result<()> {
        println!("bench: sparse formats (ours against QEMU's drivers over curl)");
        let raw = self.www.join("sparse-source.raw");
        let size = self.plan.image_size.min(MAX_IMAGE);
        write_striped_raw(&raw, SEED + 2, size)?;
        let reads = self.plan.random_reads.min(MAX_RANDOM_READS);
        let qemu_can_curl = Command::new("qemu-img")
            .args(["info", &qemu_json(&nginx.url("/sparse-source.raw"), "raw")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        for (variant, driver) in FORMATS {
            let path = convert_with_qemu_img(&raw, &self.www, variant)?;
            let file_len = std::fs::metadata(&path)?.len();
            let url = nginx.url(&format!("/{}", variant.name));
            let what = variant.name;
            let (mut cold, mut warm, mut random) = (Vec::new(), Vec::new(), Vec::new());
            let (mut q_seq, mut q_random) = (Vec::new(), Vec::new());
            // Why QEMU's rows stopped early, if they did.
            let mut q_stopped: Option<String> = None;
            for _ in 0..self.plan.reps {
                let dir = self.fresh_dir("sparse-cache")?;
                let c = self.seq(&url, "auto", &dir, MIB)?;
                cold.push(c.mbps_sample());
                let w = self.seq(&url, "auto", &dir, MIB)?;
                warm.push(w.mbps_sample());
                if c.checksum != w.checksum {
                    anyhow::bail!("{what}: cold and warm passes read different data");
                }
                let dir = self.fresh_dir("sparse-cache")?;
                random.push(self.random_n(&url, &dir, reads)?.iops_sample());
                if qemu_can_curl && q_stopped.is_none() {
                    match self.qemu_dd(&url, driver, size)? {
                        Some(sample) => q_seq.push(sample),
                        None => {
                            q_stopped =
                                Some(format!("qemu-img dd hung (killed after {QEMU_LIMIT:?})"))
                        }
                    }
                }
                if qemu_can_curl && q_stopped.is_none() {
                    match self.qemu_random(&url, driver, size, reads)? {
                        Some(sample) => q_random.push(sample),
                        None => {
                            q_stopped = Some(format!("qemu-io hung (killed after {QEMU_LIMIT:?})"))
                        }
                    }
                }
            }
            let key = format!("sparse-{}", what.replace('.', "-"));
            let r = &mut self.report;
            r.push(
                &format!("{key}-cold-seq-1m"),
                &format!("ours {what} ({file_len} bytes): cold sequential 1 MiB"),
                Unit::MBps,
                cold,
            );
            r.push(
                &format!("{key}-warm-seq-1m"),
                &format!("ours {what}: warm sequential 1 MiB (new process)"),
                Unit::MBps,
                warm,
            );
            r.push(
                &format!("{key}-cold-random"),
                &format!("ours {what}: cold random 4 KiB ({reads} reads)"),
                Unit::Iops,
                random,
            );
            if qemu_can_curl {
                r.push(
                    &format!("{key}-qemu-seq"),
                    &format!("QEMU {driver} over curl {what}: sequential 1 MiB (qemu-img dd)"),
                    Unit::MBps,
                    q_seq,
                );
                r.push(
                    &format!("{key}-qemu-random"),
                    &format!(
                        "QEMU {driver} over curl {what}: random 4 KiB ({reads} reads, qemu-io)"
                    ),
                    Unit::Iops,
                    q_random,
                );
                if let Some(why) = &q_stopped {
                    for row in r.rows.iter_mut().filter(|row| row.key.starts_with(&key)) {
                        if row.key.contains("-qemu-") {
                            row.note = format!("{why}; the samples are the runs before it");
                        }
                    }
                }
            } else {
                let why = "QEMU's curl driver is missing (apt-get install qemu-block-extra)";
                r.skipped(
                    &format!("{key}-qemu-seq"),
                    "QEMU over curl",
                    Unit::MBps,
                    why,
                );
            }
            let _ = std::fs::remove_file(&path);
        }
        let _ = std::fs::remove_file(&raw);
        Ok(())
    }

    /// `qemu-img dd` of the whole disk over curl, 1 MiB blocks, to a raw
    /// file: MB/s of disk bytes.
    /// `None` if it hung.
    fn qemu_dd(&self, url: &str, driver: &str, size: u64) -> Result<Option<Sample>> {
        let out = self.work.join("qemu-dd.raw");
        let start = Instant::now();
        let child = Command::new("qemu-img")
            .args(["dd", "-f", driver, "-O", "raw", "bs=1M"])
            .arg(format!("count={}", size / MIB))
            .arg(format!("if={}", qemu_json(url, driver)))
            .arg(format!("of={}", out.display()))
            .spawn()
            .context("running qemu-img dd")?;
        let status = wait_bounded(child, QEMU_LIMIT)?;
        let secs = start.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&out);
        let Some(status) = status else {
            return Ok(None);
        };
        anyhow::ensure!(status.success(), "qemu-img dd over curl failed");
        Ok(Some(Sample {
            value: mbps(size as f64, secs),
            bytes_read: Some(size as f64),
            ..Default::default()
        }))
    }

    /// Our random workload with `count` reads, format detected.
    fn random_n(&self, url: &str, cache: &std::path::Path, count: u64) -> Result<Output> {
        let mut a = vec!["random".to_owned()];
        a.extend(self.stack_args(url, "auto", cache));
        a.extend([
            "--count".to_owned(),
            count.to_string(),
            "--seed".to_owned(),
            RANDOM_SEED.to_string(),
        ]);
        super::tools::disk_bench(&self.bin, &a)
    }

    /// `qemu-io` reading `count` seeded random 4 KiB blocks: reads per
    /// second; `None` if it hung.
    fn qemu_random(
        &self,
        url: &str,
        driver: &str,
        size: u64,
        count: u64,
    ) -> Result<Option<Sample>> {
        // The very reads of our random workload.
        let offsets = crate::workloads::random_offsets(RANDOM_SEED, count, 4096, size)?;
        let mut script = String::new();
        for offset in offsets {
            script.push_str(&format!("read -q {offset} 4k\n"));
        }
        let start = Instant::now();
        let mut child = Command::new("qemu-io")
            .args(["-r", &qemu_json(url, driver)])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("running qemu-io")?;
        child
            .stdin
            .take()
            .context("qemu-io stdin")?
            .write_all(script.as_bytes())?;
        let Some(status) = wait_bounded(child, QEMU_LIMIT)? else {
            return Ok(None);
        };
        let secs = start.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "qemu-io over curl failed");
        Ok(Some(Sample {
            value: count as f64 / secs,
            ..Default::default()
        }))
    }
}

/// Waits for `child` at most `limit`; past it, kills it and returns
/// `None`.
fn wait_bounded(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
