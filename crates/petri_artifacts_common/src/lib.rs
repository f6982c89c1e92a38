//! Artifact tags and artifacts shared by every petri test crate.
//!
//! Position in the data flow: between the artifacts core (which knows only
//! ids, handles and sources) and the crates that declare concrete images
//! (`petri_artifacts_vmm_test`) or catalogue them (`vmm_test_images`).
//! Here live:
//!
//! - the tag traits in [`tags`]: what kind of artifact a type tag names
//!   ([`tags::IsTestVhd`], [`tags::IsTestIso`], [`tags::IsTestVmgs`],
//!   [`tags::IsTestKernel`], [`tags::IsTestInitrd`]) and where it comes
//!   from ([`tags::IsHostedOnBlobStore`] with `FILENAME` and `SIZE` for
//!   store images, [`tags::IsBuiltTestFile`] for files built locally), so
//!   that generic code can ask an artifact for its facts at compile time;
//! - the common artifacts in [`artifacts`], such as the per-test log
//!   directory, and the pure rule that names that directory
//!   ([`test_log_directory`]).
//!
//! Invariants:
//!
//! - No I/O and no environment access here: resolvers read the
//!   environment (`TEST_OUTPUT_PATH`) and create directories; this crate
//!   only says which path a test's log directory is.
//! - Being hosted on the blob store (downloadable) is not the same as being
//!   blob-capable (readable lazily): a VHDX is hosted but is declared with
//!   `declare_artifacts!`, so it is never served remotely.

#![forbid(unsafe_code)]

use std::path::Path;
use std::path::PathBuf;

/// Tag traits describing artifacts.
pub mod tags {
    use petri_artifacts_core::ArtifactId;
    use serde::Deserialize;
    use serde::Serialize;
    use std::fmt;

    /// The operating system (or firmware environment) an image boots.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum OsFlavor {
        /// Windows.
        Windows,
        /// A Linux distribution.
        Linux,
        /// FreeBSD.
        FreeBsd,
        /// Only UEFI firmware (no OS), e.g. a UEFI shell image.
        Uefi,
    }

    impl fmt::Display for OsFlavor {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                OsFlavor::Windows => "windows",
                OsFlavor::Linux => "linux",
                OsFlavor::FreeBsd => "freebsd",
                OsFlavor::Uefi => "uefi",
            })
        }
    }

    /// The machine architecture an image is built for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum MachineArch {
        /// x86-64 (amd64).
        X64,
        /// AArch64 (arm64).
        Aarch64,
    }

    impl fmt::Display for MachineArch {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(match self {
                MachineArch::X64 => "x64",
                MachineArch::Aarch64 => "aarch64",
            })
        }
    }

    /// The artifact is a bootable test disk image (VHD, VHDX or a raw
    /// disk image).
    pub trait IsTestVhd: ArtifactId {
        /// The OS on the disk.
        const OS_FLAVOR: OsFlavor;
        /// The architecture the OS is built for.
        const ARCH: MachineArch;
    }

    /// The artifact is a bootable test ISO image.
    pub trait IsTestIso: ArtifactId {
        /// The OS on the ISO.
        const OS_FLAVOR: OsFlavor;
        /// The architecture the OS is built for.
        const ARCH: MachineArch;
    }

    /// The artifact is a test VMGS (VM guest state) file.
    pub trait IsTestVmgs: ArtifactId {}

    /// The artifact is a Linux kernel image for direct kernel boot.
    pub trait IsTestKernel: ArtifactId {
        /// The architecture the kernel is built for.
        const ARCH: MachineArch;
    }

    /// The artifact is an initial RAM disk (initramfs) for direct kernel
    /// boot.
    pub trait IsTestInitrd: ArtifactId {
        /// The architecture the initramfs is built for.
        const ARCH: MachineArch;
    }

    /// The artifact is a file built on this machine (by
    /// `cargo xtask guest-test build-image`), not hosted on the image
    /// store. It is never read remotely.
    pub trait IsBuiltTestFile: ArtifactId {
        /// The local file name in the images folder.
        const FILENAME: &'static str;
        /// The file's size in bytes with the default build settings.
        const SIZE: u64;
    }

    /// The artifact is hosted on the test image store (by default the
    /// Azure container `hvlitetestvhds/vhds`) under `FILENAME`.
    pub trait IsHostedOnBlobStore: ArtifactId {
        /// The file name in the store, which is also the local file name.
        const FILENAME: &'static str;
        /// The file's size in bytes.
        const SIZE: u64;
    }
}

/// Artifacts every petri test may use.
pub mod artifacts {
    petri_artifacts_core::declare_artifacts! {
        /// The per-test log directory: `$TEST_OUTPUT_PATH/<test name>`,
        /// by default `<target dir>/test-output/<test name>` (see
        /// [`test_log_directory`](crate::test_log_directory)). Resolvers
        /// create it.
        TEST_LOG_DIRECTORY,
    }
}

/// The environment variable naming the root of per-test output folders.
pub const TEST_OUTPUT_PATH_ENV: &str = "TEST_OUTPUT_PATH";

/// The folder under the target directory used when `TEST_OUTPUT_PATH` is
/// not set.
pub const DEFAULT_TEST_OUTPUT_SUBDIR: &str = "test-output";

/// The log directory of `test_name`.
///
/// `root` is `$TEST_OUTPUT_PATH` if set, else
/// `<target dir>/`[`DEFAULT_TEST_OUTPUT_SUBDIR`]. The test name becomes a
/// single path component (see [`sanitize_test_name`]), so every test gets
/// its own subfolder and no test name can escape `root`.
pub fn test_log_directory(root: &Path, test_name: &str) -> PathBuf {
    root.join(sanitize_test_name(test_name))
}

/// Turns a test name into a single, portable path component: ASCII
/// letters, digits, `-`, `_` and `.` are kept, every other character
/// (`:` of `module::test`, `/`, `\`, spaces, ...) becomes `_`. An empty
/// name, or one made only of dots, gets a leading `_` so it can never be
/// `.` or `..`.
pub fn sanitize_test_name(test_name: &str) -> String {
    let mut out: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.chars().all(|c| c == '.') {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use petri_artifacts_core::ArtifactId;

    #[test]
    fn log_directory_is_one_subfolder_per_test() {
        let root = Path::new("/t/test-output");
        assert_eq!(
            test_log_directory(root, "x86_64::openvmm_uefi_x64_boot"),
            Path::new("/t/test-output/x86_64__openvmm_uefi_x64_boot")
        );
        assert_ne!(
            test_log_directory(root, "a::b"),
            test_log_directory(root, "a::c")
        );
    }

    #[test]
    fn test_names_cannot_escape_the_root() {
        let root = Path::new("/t");
        for name in ["..", ".", "", "../../etc", "a/b", "a\\b", "/abs"] {
            let dir = test_log_directory(root, name);
            assert_eq!(dir.parent(), Some(root), "{name:?} -> {dir:?}");
            let last = dir.file_name().unwrap().to_str().unwrap();
            assert!(last != "." && last != "..", "{name:?}");
        }
        assert_eq!(sanitize_test_name("a b:c"), "a_b_c");
        assert_eq!(sanitize_test_name("ok-1.2_x"), "ok-1.2_x");
    }

    #[test]
    fn log_directory_artifact_is_local_only() {
        let h = artifacts::TEST_LOG_DIRECTORY.erase();
        assert!(!h.is_blob_capable());
        assert_eq!(h.name(), "TEST_LOG_DIRECTORY");
        assert_eq!(
            artifacts::TEST_LOG_DIRECTORY::GLOBAL_UNIQUE_ID,
            "petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY"
        );
    }

    #[test]
    fn display_names() {
        assert_eq!(tags::MachineArch::X64.to_string(), "x64");
        assert_eq!(tags::OsFlavor::FreeBsd.to_string(), "freebsd");
    }
}
