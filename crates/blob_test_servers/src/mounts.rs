//! Small real file systems for tests of full and read-only caches: a
//! tmpfs of a given size (remountable read-only) and a read-only bind
//! mount over one file. Mounting needs root: where it fails, outside CI
//! the helper prints why and returns `None` (the test returns early);
//! under `CI=true` it panics, so CI never silently skips.

use crate::tools::in_ci;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        other => Err(format!("{cmd:?}: {other:?}")),
    }
}

/// Prints why a test cannot run here and gives `None`; under CI panics.
fn cannot<T>(why: String) -> Option<T> {
    if in_ci() {
        panic!("{why} (CI=true: tests that need it must run)");
    }
    eprintln!("skipping: {why}");
    None
}

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `"8m"`).
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mounted = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path()));
        match mounted {
            Ok(()) => Some(Tmpfs { dir }),
            Err(e) => cannot(format!("cannot mount a tmpfs (needs root): {e}")),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the whole file system read-only.
    pub fn remount_read_only(&self) {
        run(Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.dir.path()))
        .expect("remounting the tmpfs read-only");
    }

    /// Fills the file system: writes a file until no byte more fits.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler"))
            .expect("creating the filler file");
        let block = vec![0u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// An existing file made read-only by a read-only bind mount over itself
/// (its directory stays writable), undone on drop.
pub struct ReadOnlyFile {
    path: PathBuf,
}

impl ReadOnlyFile {
    /// Protects `path`.
    pub fn protect(path: &Path) -> Option<ReadOnlyFile> {
        if let Err(e) = run(Command::new("mount").arg("--bind").arg(path).arg(path)) {
            return cannot(format!("cannot bind-mount a file (needs root): {e}"));
        }
        let guard = ReadOnlyFile {
            path: path.to_path_buf(),
        };
        run(Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(path))
        .expect("making the bind mount read-only");
        Some(guard)
    }
}

impl Drop for ReadOnlyFile {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}
