//! petri: the VMM test harness, the VM configuration model and its
//! backends.
//!
//! Position in the data flow: below the `#[vmm_test]` macro, above the
//! artifacts core and the disk stack. The macro registers test cases with
//! this crate's harness; the harness collects each case's artifact
//! requirements, resolves them with the resolver the test binary passes to
//! [`test_main`], and runs the case with a [`PetriVmBuilder`] for its
//! backend. The builder holds the VM model ([`Firmware`], [`Drive`],
//! [`Disk`], [`DiskPath`]); a backend ([`PetriVmmBackend`]) translates it:
//!
//! - [`hyperv::HyperVPetriBackend`]: local files only; a remote disk is an
//!   error with the artifact's download command. Tests require their
//!   images with [`RemoteAccess::LocalOnly`].
//! - [`openvmm::OpenVmmPetriBackend`]: a remote disk becomes a lazily read
//!   layer stack (RAM diff, SQLite auto-cache in the [`cache_dir`], HTTP
//!   blob) described as plain data ([`disk_backend_resources`]) by the
//!   backend-neutral [`disk_stack`] module. Tests allow remote images
//!   ([`RemoteAccess::Allow`]). [`openvmm::OpenVmmPetriBackend::open_drive`]
//!   opens such a stack for real (OpenVMM itself cannot run here).
//! - [`qemu::QemuPetriBackend`]: really boots linux-direct guests under
//!   QEMU; the same stack is opened in this process and exported to QEMU
//!   over NBD, so a test can read the disk's [`DiskCounters`] (bytes
//!   fetched, requests, cache hits) through [`PetriVm`].
//!
//! Invariants:
//!
//! - Listing tests (`--list`, `--list-required-artifacts`) runs only the
//!   collecting phase: no network, no resolution.
//! - A test its host cannot run is listed as ignored with the reason, never
//!   hidden and never failed.
//! - Backends translate descriptions; disks are opened only through
//!   [`disk_stack::open_description`], and no VMM process is launched that
//!   this host cannot run.
//! - URLs are printed only through [`RedactedUrl`] (query redacted).
//!
//! A test whose artifacts are not available can skip itself at run time
//! by returning a [`SkipTest`] error (the harness reports it as ignored
//! with the reason); see [`SkipTest`] for when that is appropriate.

#![forbid(unsafe_code)]

mod backend;
pub mod cache_dir;
pub mod disk_stack;
mod harness;
pub mod hyperv;
pub mod logging;
pub mod openvmm;
pub mod qemu;
mod vm;

pub use backend::HostSupport;
pub use backend::PetriVm;
pub use backend::PetriVmBuilder;
pub use backend::PetriVmmBackend;
pub use backend::PreparedVm;
pub use backend::VmHandle;
pub use backend::download_command;
pub use disk_open::prefetch::prefetch_allowed_by_env;
pub use disk_stack::DiskCounters;
pub use harness::HarnessEnv;
pub use harness::HostRequirements;
pub use harness::LIST_REQUIRED_ARTIFACTS_FLAG;
pub use harness::NamedTestCase;
pub use harness::PETRI_IGNORE_UNSTABLE_FAILURES;
pub use harness::PetriTestParams;
pub use harness::SkipTest;
pub use harness::TestCase;
pub use harness::TestCaseRegistration;
pub use harness::block_on;
pub use harness::full_test_name;
pub use harness::host_arch;
pub use harness::registered_tests;
pub use harness::required_artifacts;
pub use harness::run_test;
pub use harness::select;
pub use harness::split_args;
pub use harness::test_main;
pub use vm::BootImageConfig;
pub use vm::Disk;
pub use vm::DiskPath;
pub use vm::Drive;
pub use vm::Firmware;
pub use vm::LinuxDirectGuest;
pub use vm::PcatGuest;
pub use vm::UefiGuest;
pub use vm::boot_image_type;

pub use petri_artifacts_common::tags::MachineArch;
pub use petri_artifacts_common::tags::OsFlavor;
pub use petri_artifacts_core::ArtifactHandle;
pub use petri_artifacts_core::ArtifactListOutput;
pub use petri_artifacts_core::ArtifactResolver;
pub use petri_artifacts_core::ArtifactSource;
pub use petri_artifacts_core::ErasedArtifactHandle;
pub use petri_artifacts_core::RedactedUrl;
pub use petri_artifacts_core::RemoteAccess;
pub use petri_artifacts_core::ResolveTestArtifact;
pub use petri_artifacts_core::ResolvedArtifact;
pub use petri_artifacts_core::ResolvedArtifactSource;
pub use petri_artifacts_core::ResolvedOptionalArtifact;
pub use petri_artifacts_core::TestArtifactRequirements;
pub use petri_artifacts_core::TestArtifacts;

/// Re-exported for the `#[vmm_test]` macro's generated registrations.
#[doc(hidden)]
pub use inventory;
