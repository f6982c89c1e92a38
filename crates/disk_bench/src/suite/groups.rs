//! The workload groups of the suite, each measuring ours beside its peers
//! and adding its rows to the report.

use super::Bench;
use super::GuestFiles;
use super::MIB;
use super::mbps;
use super::report::Sample;
use super::report::Unit;
use super::tools;
use crate::workloads::Output;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use blob_test_servers::FaultServer;
use blob_test_servers::NginxServer;
use std::path::Path;
use std::time::Duration;

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

impl Bench {
    pub(super) fn references(&mut self, nginx: &NginxServer) -> Result<()> {
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

    pub(super) fn in_process(&mut self, nginx: &NginxServer, fmt: &str) -> Result<()> {
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
    pub(super) fn per_sector_baseline(&mut self, nginx: &NginxServer) -> Result<()> {
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
    pub(super) fn rss(&mut self, nginx: &NginxServer) -> Result<()> {
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

    pub(super) fn nbd(&mut self, nginx: &NginxServer) -> Result<()> {
        println!("bench: NBD (nbdcopy to null:)");
        let missing: Vec<&str> = ["/usr/bin/nbdcopy", "/usr/sbin/nbdkit", "/usr/bin/nbdkit"]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        if missing.contains(&"/usr/bin/nbdcopy")
            || (missing.contains(&"/usr/sbin/nbdkit") && missing.contains(&"/usr/bin/nbdkit"))
        {
            let why = "nbdkit or nbdcopy missing (cargo xtask bench --install, or apt-get install nbdkit libnbd-bin)";
            if ci_env::in_ci() {
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

    pub(super) fn guest(&mut self, nginx: &NginxServer, g: &GuestFiles) -> Result<()> {
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
    ) -> Result<(f64, Output)> {
        self.boot_with(g, &self.stack_args(url, "vhd1", cache), sock)
    }

    /// The Debian guest (a real distribution boot, ~40 MB read of 2 GiB)
    /// from a store with 0, 20 and 50 ms per request (and twice that per
    /// new connection, for the handshakes), cold, without and with the
    /// prefetch list `cargo xtask guest-test build-image` recorded beside
    /// the VHD; beside a local boot and a warm one. Each repetition runs
    /// every case once, in turn, so the machine's drift spreads evenly.
    pub(super) fn distro(&mut self, g: &GuestFiles) -> Result<()> {
        println!("bench: Debian guest boot (QEMU TCG, to its marker)");
        let mut list = g.vhd.clone().into_os_string();
        list.push(".prefetch");
        let list = std::path::PathBuf::from(list);
        let has_list = list.is_file();
        const LATENCIES: [u64; 3] = [0, 20, 50];
        let mut servers = Vec::new();
        for ms in LATENCIES {
            let server = FaultServer::builder()
                .latency(Duration::from_millis(ms))
                .connection_latency(Duration::from_millis(2 * ms))
                .start()
                .context("starting the latency server")?;
            server.put_file("/debian.vhd", &g.vhd)?;
            if has_list {
                server.put_file("/debian.vhd.prefetch", &list)?;
            }
            servers.push(server);
        }
        let sock = self.work.join("distro.sock");
        let mut local = Vec::new();
        let mut warm = Vec::new();
        // [latency][without, with prefetch]
        let mut cold: Vec<[Vec<Sample>; 2]> =
            LATENCIES.iter().map(|_| Default::default()).collect();
        for rep in 0..self.plan.distro_reps {
            println!("bench: Debian guest, repetition {}", rep + 1);
            let secs = tools::boot(g, &tools::BootDisk::Local(&g.raw))?;
            local.push(Sample {
                value: secs,
                ..Default::default()
            });
            for (i, server) in servers.iter().enumerate() {
                let url = server.url("/debian.vhd");
                for (with_list, samples) in cold[i].iter_mut().enumerate() {
                    if with_list == 1 && !has_list {
                        continue;
                    }
                    let dir = self.fresh_dir("cache")?;
                    let mut args = self.stack_args(&url, "vhd1", &dir);
                    if with_list == 0 {
                        args.push("--no-prefetch".into());
                    }
                    let (secs, o) = self.boot_with(g, &args, &sock)?;
                    samples.push(o.sample(secs));
                    if i == 0 && with_list == 0 {
                        // The cache this cold boot filled, in a new process.
                        let (secs, o) = self.boot_with(g, &args, &sock)?;
                        warm.push(o.sample(secs));
                    }
                }
            }
        }
        let r = &mut self.report;
        r.push(
            "distro-local",
            "Debian boot: local raw file (QEMU snapshot=on)",
            Unit::Seconds,
            local,
        );
        r.push(
            "distro-warm",
            "Debian boot: remote VHD, warm (new process, same cache)",
            Unit::Seconds,
            warm,
        );
        for (ms, [without, with]) in LATENCIES.iter().zip(cold) {
            r.push(
                &format!("distro-cold-{ms}ms"),
                &format!("Debian boot: remote, cold, {ms} ms per request, no prefetch list"),
                Unit::Seconds,
                without,
            );
            let key = format!("distro-cold-{ms}ms-prefetch");
            let label = format!("Debian boot: remote, cold, {ms} ms per request, prefetch list");
            if has_list {
                r.push(&key, &label, Unit::Seconds, with);
            } else {
                r.skipped(
                    &key,
                    &label,
                    Unit::Seconds,
                    "no prefetch list beside the VHD (cargo xtask guest-test build-image records it)",
                );
            }
        }
        Ok(())
    }

    /// Boots `g` over our NBD export of the stack `stack_args` describes;
    /// the time runs from starting the server process to the done marker.
    fn boot_with(
        &self,
        g: &GuestFiles,
        stack_args: &[String],
        sock: &Path,
    ) -> Result<(f64, Output)> {
        let t = std::time::Instant::now();
        let server = tools::NbdServerProc::start(&self.bin, stack_args, sock)?;
        tools::boot(g, &tools::BootDisk::Nbd(server.uri()))?;
        let secs = t.elapsed().as_secs_f64();
        let out = server.stop()?;
        Ok((secs, out))
    }
}
