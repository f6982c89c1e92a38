//! Throughput of the NBD server alone: an in-memory disk exported on a Unix
//! socket and driven by `qemu-img bench` (Debian package `qemu-utils`), so
//! the numbers show the server's own overhead, not a disk stack's.
//!
//! Run: `cargo bench -p disk_nbd` (release). `BENCH_DISK_MIB` sets the disk
//! size (default 256), `BENCH_FILTER` keeps only the cases whose name
//! contains it. Prints a markdown table. Without `qemu-img` it
//! prints why and exits successfully, except under `CI=true`, where it
//! fails.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use disk_backend::Disk;
use disk_backend::DiskError;
use disk_backend::DiskIo;
use disk_backend::check_io_range;
use disk_nbd::NbdServerOptions;
use disk_nbd::serve_unix;

/// A flat in-memory disk (reads copy out of one buffer under a read lock).
struct MemDisk {
    data: parking_lot::RwLock<Vec<u8>>,
}

impl DiskIo for MemDisk {
    fn disk_type(&self) -> &str {
        "bench-mem"
    }
    fn sector_count(&self) -> u64 {
        self.data.read().len() as u64 / 512
    }
    fn is_read_only(&self) -> bool {
        false
    }
    async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let data = self.data.read();
        check_io_range(sector, buf.len(), 512, data.len() as u64 / 512)?;
        let off = sector as usize * 512;
        buf.copy_from_slice(&data[off..off + buf.len()]);
        Ok(())
    }
    async fn write(&self, sector: u64, buf: &[u8], _fua: bool) -> Result<(), DiskError> {
        let mut data = self.data.write();
        check_io_range(sector, buf.len(), 512, data.len() as u64 / 512)?;
        let off = sector as usize * 512;
        data[off..off + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    async fn sync_cache(&self) -> Result<(), DiskError> {
        Ok(())
    }
    async fn unmap(&self, _sector: u64, _count: u64) -> Result<(), DiskError> {
        Ok(())
    }
}

struct Case {
    name: &'static str,
    write: bool,
    block: u64,
    depth: u32,
}

fn main() -> anyhow::Result<()> {
    let qemu_img = match which("qemu-img") {
        Some(p) => p,
        None if ci_env::in_ci() => {
            bail!("qemu-img is required under CI=true (Debian package qemu-utils)")
        }
        None => {
            eprintln!("skipping the NBD benchmark: qemu-img not found (install qemu-utils)");
            return Ok(());
        }
    };
    let mib: u64 = std::env::var("BENCH_DISK_MIB")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("BENCH_DISK_MIB")?
        .unwrap_or(256);
    let size = mib << 20;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("bench.sock");
    let disk = Disk::new(MemDisk {
        data: parking_lot::RwLock::new(vec![0x5a; size as usize]),
    })?;
    let listener = rt.block_on(serve_unix(&socket, disk, NbdServerOptions::default()))?;
    let uri = listener.nbd_uri();

    let cases = [
        Case {
            name: "read 4 KiB, depth 1",
            write: false,
            block: 4 << 10,
            depth: 1,
        },
        Case {
            name: "read 4 KiB, depth 32",
            write: false,
            block: 4 << 10,
            depth: 32,
        },
        Case {
            name: "read 64 KiB, depth 16",
            write: false,
            block: 64 << 10,
            depth: 16,
        },
        Case {
            name: "read 1 MiB, depth 8",
            write: false,
            block: 1 << 20,
            depth: 8,
        },
        Case {
            name: "read 32 MiB, depth 2",
            write: false,
            block: 32 << 20,
            depth: 2,
        },
        Case {
            name: "write 64 KiB, depth 16",
            write: true,
            block: 64 << 10,
            depth: 16,
        },
        Case {
            name: "write 1 MiB, depth 8",
            write: true,
            block: 1 << 20,
            depth: 8,
        },
    ];
    println!(
        "NBD server throughput, {mib} MiB in-memory disk, qemu-img bench over a Unix socket\n"
    );
    println!("| case | requests | seconds | MiB/s | requests/s |");
    println!("|---|---:|---:|---:|---:|");
    let filter = std::env::var("BENCH_FILTER").unwrap_or_default();
    for case in cases.iter().filter(|c| c.name.contains(&filter)) {
        // Enough requests to sweep the disk about four times, wrapping
        // around at the end.
        let count = ((4 * size) / case.block).clamp(64, 200_000);
        let mut cmd = Command::new(&qemu_img);
        cmd.args(["bench", "-f", "raw", "-t", "none", "-i", "threads"])
            .args(["-c", &count.to_string()])
            .args(["-d", &case.depth.to_string()])
            .args(["-s", &case.block.to_string()]);
        if case.write {
            cmd.arg("-w");
        }
        cmd.arg(&uri);
        let start = Instant::now();
        let out = cmd.output().context("running qemu-img bench")?;
        let secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "qemu-img bench failed for {}: {}",
                case.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mib_moved = (count * case.block) as f64 / f64::from(1 << 20);
        println!(
            "| {} | {count} | {secs:.2} | {:.0} | {:.0} |",
            case.name,
            mib_moved / secs,
            count as f64 / secs
        );
    }
    nbdcopy_cases(&uri, size, dir.path())?;
    let stats = listener.server().stats();
    println!(
        "\nserver: {} requests, {} disk reads, {} MiB read, {} MiB written, {} error replies",
        stats.requests,
        stats.disk_reads,
        stats.bytes_read >> 20,
        stats.bytes_written >> 20,
        stats.error_replies
    );
    rt.block_on(listener.shutdown())?;
    Ok(())
}

/// `nbdcopy URI null:` (multi-conn, 256 KiB requests, 64 in flight per
/// connection) against this server and, as the peer, against `nbdkit -r
/// file` serving a page-cached file of the same size: both serve from
/// memory, so the difference is the servers' own cost. Skipped (with a
/// note) if nbdcopy or nbdkit is missing.
fn nbdcopy_cases(uri: &str, size: u64, dir: &std::path::Path) -> anyhow::Result<()> {
    if which("nbdcopy").is_none() {
        eprintln!("skipping the nbdcopy cases: nbdcopy not found (install libnbd-bin)");
        return Ok(());
    }
    let mib = size >> 20;
    println!("\n`nbdcopy URI null:`, {mib} MiB, median of 5\n");
    println!("| server | seconds | MiB/s |");
    println!("|---|---:|---:|");
    let copy = |uri: &str| -> anyhow::Result<f64> {
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let out = Command::new("nbdcopy")
                .args([uri, "null:"])
                .output()
                .context("running nbdcopy")?;
            if !out.status.success() {
                bail!("nbdcopy failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok(times[2])
    };
    let secs = copy(uri)?;
    println!(
        "| disk_nbd (in-memory disk) | {secs:.3} | {:.0} |",
        mib as f64 / secs
    );
    if which("nbdkit").is_none() {
        eprintln!("skipping the nbdkit peer: nbdkit not found (install nbdkit)");
        return Ok(());
    }
    let file = dir.join("peer.img");
    std::fs::write(&file, vec![0x5a; size as usize])?;
    let sock = dir.join("nbdkit.sock");
    let pidfile = dir.join("nbdkit.pid");
    let mut child = Command::new("nbdkit")
        .args(["-f", "-r", "-U"])
        .arg(&sock)
        .arg("-P")
        .arg(&pidfile)
        .arg("file")
        .arg(&file)
        .spawn()
        .context("starting nbdkit")?;
    // nbdkit writes its pid file once it accepts connections.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !pidfile.exists() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = copy(&format!("nbd+unix:///?socket={}", sock.display()));
    let _ = child.kill();
    let _ = child.wait();
    let secs = result?;
    println!(
        "| nbdkit file (page-cached file) | {secs:.3} | {:.0} |",
        mib as f64 / secs
    );
    Ok(())
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}
