//! The processes the suite drives: its own workloads (this binary, or a
//! `--baseline-bin`), curl, cat, nbdcopy, nbdkit and QEMU.

use super::GuestFiles;
use super::GuestKind;
use crate::workloads::Output;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::ChildStdin;
use std::process::ChildStdout;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

/// Runs one `disk-bench` workload and parses its JSON line.
pub fn disk_bench(bin: &Path, args: &[String]) -> Result<Output> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "disk-bench {} failed ({}): {}",
            args.first().map_or("", String::as_str),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("parsing disk-bench output {line:?}"))
}

/// The standard output of a short command, trimmed.
pub fn capture(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd).args(args).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One full download with curl into `to` (`/dev/null` for the network
/// alone): (bytes, seconds as curl measured them).
pub fn curl_download(url: &str, to: &Path) -> Result<(u64, f64)> {
    let out = Command::new("curl")
        .args(["-sS", "-o"])
        .arg(to)
        .args(["-w", "%{size_download} %{time_total}", url])
        .output()
        .context("running curl (apt-get install curl)")?;
    if !out.status.success() {
        bail!(
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let mut it = s.split_whitespace();
    let bytes = it.next().and_then(|v| v.parse().ok());
    let secs = it.next().and_then(|v| v.parse().ok());
    match (bytes, secs) {
        (Some(b), Some(t)) => Ok((b, t)),
        _ => bail!("unexpected curl output {s:?}"),
    }
}

/// `cat file > /dev/null`, timed.
pub fn cat(file: &Path) -> Result<f64> {
    let t = Instant::now();
    let status = Command::new("cat")
        .arg(file)
        .stdout(Stdio::null())
        .status()
        .context("running cat")?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("cat {} failed ({status})", file.display());
    }
    Ok(secs)
}

/// `nbdcopy URI null:`, timed.
pub fn nbdcopy(uri: &str) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new("nbdcopy")
        .args([uri, "null:"])
        .stdin(Stdio::null())
        .output()
        .context("running nbdcopy (apt-get install libnbd-bin)")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "nbdcopy {uri} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

/// Kills a child we started if we leave early.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `disk-bench serve-nbd` running in the background.
pub struct NbdServerProc {
    child: Guard,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    uri: String,
}

impl NbdServerProc {
    /// Starts the server and waits for its ready line.
    pub fn start(bin: &Path, stack_args: &[String], socket: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("serve-nbd")
            .args(stack_args)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve-nbd", bin.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("no stdout")?;
        let mut me = NbdServerProc {
            child: Guard(Some(child)),
            stdin,
            stdout: BufReader::new(stdout),
            uri: String::new(),
        };
        let mut line = String::new();
        me.stdout.read_line(&mut line)?;
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .with_context(|| format!("disk-bench serve-nbd did not start: {line:?}"))?;
        me.uri = v["uri"]
            .as_str()
            .context("no uri in the ready line")?
            .to_owned();
        Ok(me)
    }

    /// The export's NBD URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Closes the server's stdin (it shuts down) and reads its figures.
    pub fn stop(mut self) -> Result<Output> {
        drop(self.stdin.take());
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let child = self.child.0.take().context("server already gone")?;
        let status = child.wait_with_output()?.status;
        if !status.success() {
            bail!("disk-bench serve-nbd failed ({status})");
        }
        serde_json::from_str(line.trim())
            .with_context(|| format!("parsing disk-bench serve-nbd output {line:?}"))
    }
}

/// `nbdkit -r curl` with the readahead and cache filters
/// (`cache-on-read=true`), serving on a Unix socket until dropped.
pub struct Nbdkit {
    _child: Guard,
    uri: String,
    stderr_log: PathBuf,
}

impl Nbdkit {
    /// Starts nbdkit (its cache file lives in `dir`) and waits until it
    /// accepts connections.
    pub fn start(url: &str, dir: &Path) -> Result<Self> {
        Self::start_plugin(
            dir,
            &[
                "--filter=readahead".to_owned(),
                "--filter=cache".to_owned(),
                "curl".to_owned(),
                format!("url={url}"),
                "cache-on-read=true".to_owned(),
            ],
        )
    }

    /// `nbdkit -r file` serving a local file (the peer of our export of a
    /// local image).
    pub fn start_file(path: &Path, dir: &Path) -> Result<Self> {
        Self::start_plugin(
            dir,
            &["file".to_owned(), format!("file={}", path.display())],
        )
    }

    fn start_plugin(dir: &Path, plugin: &[String]) -> Result<Self> {
        let sock = dir.join("nbdkit.sock");
        let pidfile = dir.join("nbdkit.pid");
        let stderr_log = dir.join("nbdkit.log");
        let child = Command::new("nbdkit")
            .env("TMPDIR", dir)
            .args(["-f", "-r", "-U"])
            .arg(&sock)
            .arg("-P")
            .arg(&pidfile)
            .args(plugin)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&stderr_log)?)
            .spawn()
            .context("starting nbdkit (apt-get install nbdkit)")?;
        let mut guard = Guard(Some(child));
        // nbdkit writes its pid file once it accepts connections; it has no
        // other readiness signal, so poll for it.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pidfile.exists() {
            if let Some(c) = guard.0.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "nbdkit exited early ({status}): {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!("nbdkit did not start within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nbdkit {
            _child: guard,
            uri: format!("nbd+unix:///?socket={}", sock.display()),
            stderr_log,
        })
    }

    /// The export's URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Whether nbdkit warned that its readahead filter does nothing.
    pub fn readahead_inactive(&self) -> bool {
        std::fs::read_to_string(&self.stderr_log)
            .is_ok_and(|l| l.contains("readahead") && l.contains("won't do anything"))
    }
}

/// The disk a guest boots from.
pub enum BootDisk<'a> {
    /// The local raw file, with QEMU's `snapshot=on`.
    Local(&'a Path),
    /// An NBD export.
    Nbd(&'a str),
}

const DONE_MARKER: &str = "PETRI_GUEST_DONE";

/// Boots a built guest under QEMU TCG (the petri test guest with
/// `petri.steps=read-data`, the Debian guest to its marker) and returns
/// the seconds from starting QEMU to the done marker.
pub fn boot(g: &GuestFiles, disk: &BootDisk<'_>) -> Result<f64> {
    let drive = match disk {
        BootDisk::Local(p) => format!("file={},format=raw,if=virtio,snapshot=on", p.display()),
        BootDisk::Nbd(uri) => format!("file={uri},format=raw,if=virtio"),
    };
    // The machines the catalog gives each guest (`BuiltGuest` in
    // vmm_test_images): the Debian guest needs two processors and 1 GiB.
    let (memory, processors, append) = match g.kind {
        GuestKind::Petri => (
            "512",
            "1",
            "console=ttyS0 panic=-1 loglevel=4 petri.steps=read-data",
        ),
        GuestKind::Debian => ("1024", "2", "console=ttyS0 panic=-1 loglevel=4"),
    };
    let t = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            memory,
            "-smp",
            processors,
            "-nodefaults",
        ])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&g.kernel)
        .arg("-initrd")
        .arg(&g.initrd)
        .args(["-append", append])
        .arg("-drive")
        .arg(drive)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let mut guard = Guard(Some(child));
    let stdout = guard
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .context("no stdout")?;
    // A reader thread so that a hung guest hits the timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The Debian guest's lines pass through systemd, which
            // prefixes them with the unit's name.
            let done = line.contains(DONE_MARKER);
            if tx.send((Instant::now(), line)).is_err() || done {
                break;
            }
        }
    });
    let deadline = t + Duration::from_secs(900);
    let mut console = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, line)) => {
                console.push_str(&line);
                console.push('\n');
                if let Some(rest) = line
                    .find(DONE_MARKER)
                    .map(|i| &line[i + DONE_MARKER.len()..])
                {
                    if rest.trim() != "status=0" {
                        bail!("guest finished with {rest:?}:\n{}", tail(&console));
                    }
                    let secs = (at - t).as_secs_f64();
                    // The guest only powers off from here; stop QEMU (the
                    // guard kills it) rather than wait for that.
                    drop(guard);
                    return Ok(secs);
                }
            }
            Err(_) => bail!("guest did not finish:\n{}", tail(&console)),
        }
    }
}

fn tail(console: &str) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
