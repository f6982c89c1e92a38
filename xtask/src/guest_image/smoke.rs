//! The smoke boot: boots a built guest under QEMU (TCG) from the raw root
//! disk and checks the console protocol, measuring how long the boot takes
//! and how much of the disk it reads.
//!
//! Wiring: the serial console is QEMU's standard output (`-serial stdio`),
//! read line by line and time-stamped as it arrives. QMP is a Unix socket
//! that *we* listen on and QEMU connects to (`-chardev socket` in client
//! mode), so nothing polls for a socket file to appear. `-no-shutdown`
//! keeps QEMU alive after the guest powers off, so `query-blockstats` then
//! reports every byte the guest read from the disk (`rd_bytes`, counted at
//! the virtio device, i.e. what a lazily fetched image would have to fetch
//! before caching and readahead); then we send `quit`.
//!
//! The disk is attached with `snapshot=on`: guest writes go to a temporary
//! overlay and the image stays unchanged.
//!
//! FUTURE: `-accel tcg` always; KVM hangs guests on the machines this was
//! written on. A KVM probe belongs to the QEMU backend in `petri`.

use super::host;
use super::scripts;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;
use vmm_test_images::BuiltGuest;

/// What one boot showed.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// Host time from starting QEMU to the ready marker.
    pub to_ready: Duration,
    /// Host time from starting QEMU to the done marker.
    pub to_done: Duration,
    /// The guest's uptime printed with the ready marker.
    pub guest_uptime_at_ready: String,
    /// The status printed with the done marker.
    pub status: i32,
    /// Bytes the guest read from the disk.
    pub rd_bytes: u64,
    /// Read requests the guest issued.
    pub rd_operations: u64,
    /// Bytes the guest wrote (into the snapshot overlay).
    pub wr_bytes: u64,
    /// The whole console output.
    pub console: String,
}

/// Where the root disk of a boot comes from.
#[derive(Debug, Clone, Copy)]
pub enum BootDisk<'a> {
    /// A raw file, attached with `snapshot=on` (writes go to a temporary
    /// overlay).
    RawFile(&'a Path),
    /// An NBD export (`nbd+unix:///?socket=...`) of a disk stack, which
    /// keeps the guest's writes itself.
    Nbd(&'a str),
}

impl BootDisk<'_> {
    /// QEMU's `-drive` value for the root disk.
    fn drive(&self) -> String {
        match self {
            BootDisk::RawFile(path) => format!(
                "file={},format=raw,if=virtio,snapshot=on,id=root",
                path.display()
            ),
            BootDisk::Nbd(uri) => format!("file={uri},format=raw,if=virtio,id=root"),
        }
    }
}

/// Files and settings of one boot.
pub struct BootSpec<'a> {
    /// Kernel image.
    pub kernel: &'a Path,
    /// Initramfs.
    pub initrd: &'a Path,
    /// The root disk.
    pub disk: BootDisk<'a>,
    /// `petri.steps=` value (may be empty).
    pub steps: &'a str,
    /// Where the console log and the QMP socket go.
    pub work_dir: &'a Path,
    /// Give up (and kill QEMU) after this long.
    pub timeout: Duration,
    /// Guest memory (`-m`).
    pub memory_mib: u32,
    /// Virtual processors (`-smp`).
    pub processors: u32,
}

enum Event {
    Serial(Instant, String),
    SerialClosed,
    QmpConnected(UnixStream),
    Qmp(serde_json::Value),
    QmpClosed,
}

/// Kills QEMU if we leave early (error or timeout).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What follows `marker` in `line`, if it holds it.
fn after_marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

fn tail(console: &str, lines: usize) -> String {
    let all: Vec<&str> = console.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Boots once and returns what happened; fails when the guest does not
/// print both markers and power off within the timeout.
pub fn boot(spec: &BootSpec<'_>) -> Result<BootReport> {
    if !Path::new(host::QEMU_BINARY).exists() {
        bail!(
            "{} is missing; install it with apt-get install {}",
            host::QEMU_BINARY,
            host::QEMU_PACKAGE
        );
    }
    std::fs::create_dir_all(spec.work_dir)
        .with_context(|| format!("creating {}", spec.work_dir.display()))?;
    let sock = spec.work_dir.join("qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("listening for QMP on {}", sock.display()))?;
    let log_path = spec.work_dir.join("console.log");
    let mut log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;

    let append = format!(
        "console=ttyS0 panic=-1 loglevel=4 petri.steps={}",
        spec.steps
    );
    let mut cmd = Command::new(host::QEMU_BINARY);
    cmd.args(["-accel", "tcg", "-m"])
        .arg(spec.memory_mib.to_string())
        .arg("-smp")
        .arg(spec.processors.to_string())
        .arg("-nodefaults")
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-no-shutdown",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=qmp,path={}", sock.display()))
        .args(["-mon", "chardev=qmp,mode=control"])
        .arg("-kernel")
        .arg(spec.kernel)
        .arg("-initrd")
        .arg(spec.initrd)
        .arg("-append")
        .arg(&append)
        .arg("-drive")
        .arg(spec.disk.drive())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", host::QEMU_BINARY))?;
    let stdout = child
        .stdout
        .take()
        .context("QEMU's stdout pipe is missing")?;
    let mut stderr = child
        .stderr
        .take()
        .context("QEMU's stderr pipe is missing")?;
    let mut guard = ChildGuard(Some(child));

    let (tx, rx) = mpsc::channel();
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\r', '\n'])
                            .to_string();
                        if tx.send(Event::Serial(Instant::now(), line)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Event::SerialClosed);
        });
    }
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                let _ = tx.send(Event::QmpClosed);
                return;
            };
            match stream.try_clone() {
                Ok(w) => {
                    let _ = tx.send(Event::QmpConnected(w));
                }
                Err(_) => {
                    let _ = tx.send(Event::QmpClosed);
                    return;
                }
            }
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(Event::Qmp(v)).is_err()
                {
                    return;
                }
            }
            let _ = tx.send(Event::QmpClosed);
        });
    }
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    drop(tx);

    let deadline = started + spec.timeout;
    let mut console = String::new();
    let mut qmp: Option<UnixStream> = None;
    let mut ready: Option<(Duration, String)> = None;
    let mut done: Option<(Duration, i32)> = None;
    let mut shutdown_reason: Option<String> = None;
    let mut stats: Option<serde_json::Value> = None;
    let mut serial_closed = false;
    let send = |qmp: &mut Option<UnixStream>, cmd: &str| -> Result<()> {
        let s = qmp
            .as_mut()
            .context("QEMU has not connected to the QMP socket")?;
        s.write_all(cmd.as_bytes())
            .and_then(|_| s.write_all(b"\n"))
            .context("writing a QMP command to QEMU")
    };

    while !(serial_closed && stats.is_some()) {
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "the guest did not finish within {:?} (steps {:?}); console tail:\n{}",
                spec.timeout,
                spec.steps,
                tail(&console, 30)
            );
        }
        let ev = match rx.recv_timeout(deadline - now) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match ev {
            Event::Serial(at, line) => {
                writeln!(log, "{line}")
                    .with_context(|| format!("writing {}", log_path.display()))?;
                // A marker may follow a prefix (the Debian guest's lines
                // pass through systemd, which prefixes the unit's name).
                if let Some(rest) = after_marker(&line, scripts::READY_MARKER) {
                    let up = rest.trim().trim_start_matches("uptime=").to_string();
                    ready = Some((at - started, up));
                } else if let Some(rest) = after_marker(&line, scripts::DONE_MARKER) {
                    let status = rest
                        .trim()
                        .trim_start_matches("status=")
                        .parse()
                        .with_context(|| format!("bad done marker line {line:?}"))?;
                    done = Some((at - started, status));
                }
                console.push_str(&line);
                console.push('\n');
            }
            Event::SerialClosed => {
                serial_closed = true;
                if stats.is_none() {
                    break;
                }
            }
            Event::QmpConnected(s) => {
                qmp = Some(s);
                send(&mut qmp, r#"{"execute":"qmp_capabilities"}"#)?;
            }
            Event::Qmp(v) => {
                let is_shutdown = v.get("event").and_then(|e| e.as_str()) == Some("SHUTDOWN");
                // Only the first SHUTDOWN is the guest's; `quit` causes another.
                if is_shutdown && shutdown_reason.is_none() {
                    shutdown_reason = Some(
                        v.pointer("/data/reason")
                            .and_then(|r| r.as_str())
                            .unwrap_or("unknown")
                            .to_string(),
                    );
                    send(&mut qmp, r#"{"execute":"query-blockstats","id":"stats"}"#)?;
                } else if v.get("id").and_then(|i| i.as_str()) == Some("stats") {
                    stats = Some(v);
                    send(&mut qmp, r#"{"execute":"quit"}"#)?;
                }
            }
            Event::QmpClosed => {}
        }
    }

    let status = guard
        .0
        .take()
        .map(|mut c| c.wait())
        .transpose()
        .context("waiting for QEMU to exit")?;
    let qemu_stderr = stderr_thread.join().unwrap_or_default();
    let Some(stats) = stats else {
        bail!(
            "QEMU exited ({}) before the guest shut down; stderr: {}; console tail:\n{}",
            status.map(|s| s.to_string()).unwrap_or_default(),
            qemu_stderr.trim(),
            tail(&console, 30)
        );
    };
    let reason = shutdown_reason.unwrap_or_default();
    if reason != "guest-shutdown" {
        bail!(
            "the guest stopped with reason {reason:?} instead of powering off; console tail:\n{}",
            tail(&console, 30)
        );
    }
    let Some((to_ready, guest_uptime_at_ready)) = ready else {
        bail!(
            "the guest never printed {}; console tail:\n{}",
            scripts::READY_MARKER,
            tail(&console, 30)
        );
    };
    let Some((to_done, status)) = done else {
        bail!(
            "the guest never printed {}; console tail:\n{}",
            scripts::DONE_MARKER,
            tail(&console, 30)
        );
    };
    let dev = stats
        .get("return")
        .and_then(|r| r.as_array())
        .and_then(|a| {
            a.iter()
                .find(|d| d.get("device").and_then(|n| n.as_str()) == Some("root"))
        })
        .and_then(|d| d.get("stats"))
        .with_context(|| format!("query-blockstats has no device \"root\": {stats}"))?;
    let num = |k: &str| dev.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    Ok(BootReport {
        to_ready,
        to_done,
        guest_uptime_at_ready,
        status,
        rd_bytes: num("rd_bytes"),
        rd_operations: num("rd_operations"),
        wr_bytes: num("wr_bytes"),
        console,
    })
}

/// The two smoke boots of `cargo xtask guest-test build-image --smoke-boot`:
/// one with no steps (what a boot alone reads) and one that hashes every
/// data file and writes the scratch file. Fails unless both succeed.
pub fn run(out_dir: &Path, work_dir: &Path, timeout: Duration) -> Result<Vec<BootReport>> {
    let kernel = out_dir.join(super::KERNEL_FILE);
    let initrd = out_dir.join(super::INITRD_FILE);
    let disk = out_dir.join(super::RAW_FILE);
    let disk_size = std::fs::metadata(&disk)
        .with_context(|| format!("reading the size of {}", disk.display()))?
        .len();
    let mut reports = Vec::new();
    let mut summary = Vec::new();
    for (name, steps) in [("boot", ""), ("steps", "hash-data,write-scratch")] {
        let dir: PathBuf = work_dir.join(name);
        println!("guest-image: smoke boot {name:?} (steps {steps:?}) under QEMU TCG ...");
        let r = boot(&BootSpec {
            kernel: &kernel,
            initrd: &initrd,
            disk: BootDisk::RawFile(&disk),
            steps,
            work_dir: &dir,
            timeout,
            memory_mib: BuiltGuest::PetriTestGuest.boot_memory_mib(),
            processors: BuiltGuest::PetriTestGuest.boot_processors(),
        })
        .with_context(|| format!("smoke boot {name:?}; console log in {}", dir.display()))?;
        if r.status != 0 {
            bail!(
                "smoke boot {name:?}: the guest reported status {}; console tail:\n{}",
                r.status,
                tail(&r.console, 30)
            );
        }
        if steps.contains("hash-data") && !r.console.contains("PETRI_HASH_CHECK ok") {
            bail!("smoke boot {name:?}: no PETRI_HASH_CHECK ok line on the console");
        }
        println!(
            "guest-image: {name}: ready after {:.1} s (guest uptime {} s), done after {:.1} s, \
             read {} bytes ({:.2}% of the disk) in {} requests, wrote {} bytes",
            r.to_ready.as_secs_f64(),
            r.guest_uptime_at_ready,
            r.to_done.as_secs_f64(),
            r.rd_bytes,
            100.0 * r.rd_bytes as f64 / disk_size.max(1) as f64,
            r.rd_operations,
            r.wr_bytes
        );
        summary.push(serde_json::json!({
            "name": name,
            "steps": steps,
            "seconds_to_ready": r.to_ready.as_secs_f64(),
            "seconds_to_done": r.to_done.as_secs_f64(),
            "guest_uptime_at_ready": r.guest_uptime_at_ready,
            "rd_bytes": r.rd_bytes,
            "rd_operations": r.rd_operations,
            "wr_bytes": r.wr_bytes,
            "disk_size": disk_size,
        }));
        reports.push(r);
    }
    let path = work_dir.join("summary.json");
    let text = serde_json::to_string_pretty(&summary).context("encoding the smoke summary")?;
    std::fs::write(&path, format!("{text}\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_found_after_a_prefix() {
        assert_eq!(
            after_marker("PETRI_GUEST_READY uptime=1.5", scripts::READY_MARKER),
            Some(" uptime=1.5")
        );
        assert_eq!(
            after_marker(
                "[   14.345179] petri-guest-ready[238]: PETRI_GUEST_DONE status=0",
                scripts::DONE_MARKER
            ),
            Some(" status=0")
        );
        assert_eq!(
            after_marker("PETRI_GUEST_READ", scripts::READY_MARKER),
            None
        );
    }
}
