//! The built guests' prefetch lists: `<disk file name>.prefetch` beside
//! each streamed root disk, recorded by booting the guest once through the
//! real stack, so that a store hosting the images folder serves them and a
//! cold lazy boot fetches what the boot will read ahead of the guest.
//!
//! How one list is recorded: an embedded `blob_server` hosts the images
//! folder on 127.0.0.1; `petri-tool disk serve-nbd <url>
//! --record-prefetch <list>` opens the disk as a test would (RAM over a
//! fresh read cache over the blob) and exports it; the guest boots under
//! QEMU from that export (the smoke boot's wiring, [`super::smoke`]) to its
//! done marker and powers off; SIGTERM makes the server close the disk,
//! which writes the list. The list names the image's identity: the VHD's
//! unique id for the fixed VHD (valid in any store), the URL path and the
//! server's validator for the raw disk (valid for a store serving this very
//! file: the main job's embedded store, which hosts this folder).
//!
//! A list is up to date when it is newer than its disk; a rebuilt disk
//! gets a new one. A stale or foreign list is harmless: the stack ignores a
//! list whose identity does not match the image.

use super::smoke;
use crate::guest_run::remove_dir_if_exists;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use vmm_test_images::BuiltGuest;
use vmm_test_images::ImageKind;

/// The suffix of a prefetch list beside its image.
pub const LIST_SUFFIX: &str = ".prefetch";

/// How long one recording boot may take.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The prefetch list of `disk` (beside it).
pub fn list_path(disk: &Path) -> PathBuf {
    let mut name = disk.as_os_str().to_owned();
    name.push(LIST_SUFFIX);
    PathBuf::from(name)
}

/// Whether `list` exists and is at least as new as `disk`.
fn up_to_date(disk: &Path, list: &Path) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((modified(disk), modified(list)), (Some(d), Some(l)) if l >= d)
}

/// Records the missing or stale prefetch lists of `guest`'s streamed root
/// disks in `images` (built already); the boots' console logs go to
/// `<target>/guest-image-prefetch/<guest>`. Returns how many lists were
/// written.
pub fn ensure_lists(root: &Path, images: &Path, guest: BuiltGuest) -> Result<usize> {
    let disks: Vec<PathBuf> = guest
        .files()
        .filter(|a| a.remote_capable())
        .map(|a| images.join(a.file_name()))
        .filter(|disk| !up_to_date(disk, &list_path(disk)))
        .collect();
    if disks.is_empty() {
        return Ok(0);
    }
    let file_of = |kind: ImageKind| {
        guest
            .files()
            .find(|a| a.kind() == kind)
            .map(|a| images.join(a.file_name()))
            .with_context(|| format!("the catalog has no {kind:?} for {guest}"))
    };
    let work = crate::target_dir(root)
        .join("guest-image-prefetch")
        .join(guest.cli_name());
    let kernel = file_of(ImageKind::Kernel)?;
    let initrd = file_of(ImageKind::Initrd)?;
    let tool = build_petri_tool(root)?;
    let (runtime, server) = crate::guest_run::serve_images(images, Default::default())?;
    let mut written = 0;
    let result = (|| -> Result<()> {
        for disk in &disks {
            let name = disk
                .file_name()
                .and_then(|n| n.to_str())
                .with_context(|| format!("{} has no UTF-8 file name", disk.display()))?;
            let dir = work.join(name);
            remove_dir_if_exists(&dir)?;
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let list = list_path(disk);
            let partial = dir.join("list.partial");
            println!(
                "guest-image: recording the prefetch list of {name} (one boot under QEMU TCG)"
            );
            let started = std::time::Instant::now();
            let served = ServedDisk::start(
                &tool,
                &format!("{}/{name}", server.base_url()),
                &dir,
                &partial,
            )?;
            let booted = smoke::boot(&smoke::BootSpec {
                kernel: &kernel,
                initrd: &initrd,
                disk: smoke::BootDisk::Nbd(&served.uri),
                steps: "",
                work_dir: &dir.join("boot"),
                timeout: BOOT_TIMEOUT,
                memory_mib: guest.boot_memory_mib(),
                processors: guest.boot_processors(),
            })
            .with_context(|| {
                format!(
                    "booting {guest} from {name} over NBD; console log in {}",
                    dir.join("boot").display()
                )
            });
            let stopped = served.stop();
            let booted = booted?;
            stopped?;
            if booted.status != 0 {
                bail!(
                    "booting {guest} from {name} to record its prefetch list: the guest \
                     reported status {}; console log in {}",
                    booted.status,
                    dir.join("boot").display()
                );
            }
            std::fs::rename(&partial, &list)
                .with_context(|| format!("moving {} to {}", partial.display(), list.display()))?;
            // The console log stays for inspection; the read cache goes.
            remove_dir_if_exists(&dir.join("cache"))?;
            println!(
                "guest-image: {} ({} bytes; boot read {} bytes in {} requests, {:.1} s)",
                list.display(),
                std::fs::metadata(&list).map(|m| m.len()).unwrap_or(0),
                booted.rd_bytes,
                booted.rd_operations,
                started.elapsed().as_secs_f64()
            );
            written += 1;
        }
        Ok(())
    })();
    runtime.block_on(server.shutdown());
    result.map(|()| written)
}

/// Builds `petri-tool` (the export that records the list) and returns its
/// path.
fn build_petri_tool(root: &Path) -> Result<PathBuf> {
    let status = Command::new("cargo")
        .args(["build", "-p", "petri_tool", "--bin", "petri-tool"])
        .current_dir(root)
        .status()
        .context("starting cargo build -p petri_tool")?;
    if !status.success() {
        bail!("building petri-tool failed ({status})");
    }
    Ok(crate::target_dir(root).join("debug").join("petri-tool"))
}

/// A running `petri-tool disk serve-nbd ... --record-prefetch`.
struct ServedDisk {
    child: Option<Child>,
    uri: String,
    output: Option<std::thread::JoinHandle<String>>,
}

impl ServedDisk {
    fn start(tool: &Path, url: &str, dir: &Path, list: &Path) -> Result<Self> {
        let mut child = Command::new(tool)
            .args(["disk", "serve-nbd", url, "--socket"])
            .arg(dir.join("nbd.sock"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--record-prefetch")
            .arg(list)
            // The list is recorded from this boot alone, and nothing
            // replays an older one into it.
            .env("PETRI_PREFETCH", "0")
            .env_remove("PETRI_CACHE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", tool.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("petri-tool's stdout is missing")?;
        let mut me = ServedDisk {
            child: Some(child),
            uri: String::new(),
            output: None,
        };
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if lines
                .read_line(&mut line)
                .context("reading petri-tool's output")?
                == 0
            {
                bail!(
                    "petri-tool disk serve-nbd {url} exited before serving (see its errors above)"
                );
            }
            if line.starts_with("petri-tool: serving ")
                && let Some((_, uri)) = line.trim_end().rsplit_once(" at ")
            {
                me.uri = uri.to_owned();
                break;
            }
        }
        // Keep draining its output, so it never blocks on a full pipe.
        me.output = Some(std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(lines.get_mut(), &mut rest);
            rest
        }));
        Ok(me)
    }

    /// SIGTERM, then waits: the server closes the disk and writes the list.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // `kill` of the POSIX shell: no signal crate for one signal.
        let signalled = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -TERM {}", child.id()))
            .status()
            .context("signalling petri-tool")?;
        if !signalled.success() {
            let _ = child.kill();
        }
        let status = child.wait().context("waiting for petri-tool")?;
        let output = self
            .output
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        if !status.success() {
            bail!("petri-tool disk serve-nbd failed ({status}); its output:\n{output}");
        }
        Ok(())
    }
}

impl Drop for ServedDisk {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_sit_beside_their_disks_and_go_stale_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("guest.vhd");
        let list = list_path(&disk);
        assert_eq!(list, dir.path().join("guest.vhd.prefetch"));
        std::fs::write(&disk, "disk").unwrap();
        assert!(!up_to_date(&disk, &list), "no list yet");
        std::fs::write(&list, "list").unwrap();
        let now = std::time::SystemTime::now();
        let set = |p: &Path, t: std::time::SystemTime| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        set(&disk, now - Duration::from_secs(60));
        set(&list, now);
        assert!(up_to_date(&disk, &list));
        // A rebuilt disk makes the list stale.
        set(&disk, now + Duration::from_secs(60));
        assert!(!up_to_date(&disk, &list));
    }
}
