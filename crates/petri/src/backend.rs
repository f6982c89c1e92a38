//! The backend trait and the VM builder a test receives.
//!
//! A backend is one VMM (OpenVMM, Hyper-V, QEMU). It states whether
//! this host can run it ([`PetriVmmBackend::host_support`]), how far it
//! accepts remote artifacts ([`PetriVmmBackend::REMOTE_ACCESS`]), and how
//! a VM model [`Drive`] becomes its own drive configuration
//! ([`PetriVmmBackend::translate_drive`]). The builder collects the model;
//! [`PetriVmBuilder::prepare`] translates it, [`PetriVmBuilder::run`]
//! launches it, and the test drives the running VM through [`PetriVm`]
//! (console markers, disk counters, exit), which forwards to the
//! backend's [`VmHandle`].

use crate::MachineArch;
use crate::PetriTestParams;
use crate::disk_stack::DiskCounters;
use crate::vm::Drive;
use crate::vm::Firmware;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteAccess;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// Whether this host can run something, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSupport {
    /// It can.
    Supported,
    /// It cannot, for this reason (shown to the user).
    Unsupported(Cow<'static, str>),
}

impl HostSupport {
    /// The reason, when unsupported.
    pub fn reason(&self) -> Option<&str> {
        match self {
            HostSupport::Supported => None,
            HostSupport::Unsupported(reason) => Some(reason),
        }
    }
}

/// One VMM that petri can drive.
pub trait PetriVmmBackend: Sized + Send + 'static {
    /// Short name, as used in test names (`openvmm`, `hyperv`).
    const NAME: &'static str;

    /// How far boot media may be remote for this backend: the test macro
    /// makes it the resolver-wide policy of the backend's tests and passes
    /// it to `require_source`.
    const REMOTE_ACCESS: RemoteAccess;

    /// Whether the VM architecture must match the host's. A backend that
    /// emulates foreign architectures (QEMU with TCG) sets `false`.
    const NATIVE_ARCH_ONLY: bool = true;

    /// The backend's own description of one drive.
    type DriveConfig: fmt::Debug + Send;

    /// The backend's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// A running VM.
    type Vm: VmHandle;

    /// Whether this host can run the backend. Tests of an unsupported
    /// backend are listed as ignored with the reason.
    fn host_support() -> HostSupport;

    /// Creates the backend for one test.
    fn new(params: &PetriTestParams) -> Result<Self, Self::Error>;

    /// Makes remote disks cache their blocks in `dir` instead of the
    /// directory from the [cache directory rule](crate::cache_dir).
    fn set_cache_dir(&mut self, dir: PathBuf);

    /// Translates one drive of the VM model.
    fn translate_drive(&self, drive: &Drive) -> Result<Self::DriveConfig, Self::Error>;

    /// Launches a prepared VM.
    fn launch(vm: PreparedVm<Self>) -> impl Future<Output = Result<Self::Vm, Self::Error>> + Send;
}

/// What a test can do with a running VM, whatever the backend.
pub trait VmHandle: Send {
    /// Waits until a console line contains `needle` and returns that line.
    /// Lines seen by earlier calls are not matched again. Fails on timeout
    /// or when the console closes first; the error carries the console
    /// tail.
    fn wait_for_console_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<String>> + Send;

    /// Everything the console printed so far.
    fn console_text(&self) -> String;

    /// The boot disk's counters, if the backend opened the disk itself.
    fn boot_disk_counters(&self) -> Option<DiskCounters>;

    /// Waits for the VM to stop (the guest powers off) and returns the
    /// VMM's exit code; kills it on timeout and fails.
    fn wait_for_exit(
        &mut self,
        timeout: Duration,
    ) -> impl Future<Output = anyhow::Result<Option<i32>>> + Send;
}

/// Backends that cannot launch have no VMs.
impl VmHandle for std::convert::Infallible {
    async fn wait_for_console_line(
        &mut self,
        _needle: &str,
        _timeout: Duration,
    ) -> anyhow::Result<String> {
        match *self {}
    }

    fn console_text(&self) -> String {
        match *self {}
    }

    fn boot_disk_counters(&self) -> Option<DiskCounters> {
        match *self {}
    }

    async fn wait_for_exit(&mut self, _timeout: Duration) -> anyhow::Result<Option<i32>> {
        match *self {}
    }
}

/// The command that puts `artifact` into the local images folder
/// (download or build), if the catalog knows it.
pub fn download_command(artifact: ErasedArtifactHandle) -> Option<String> {
    vmm_test_images::KnownTestArtifacts::from_handle(artifact).map(|known| known.download_command())
}

/// Describes `artifact` for an error message: its name and, if known, the
/// command that downloads it.
pub(crate) fn describe_artifact(artifact: Option<ErasedArtifactHandle>) -> String {
    match artifact {
        None => "the disk".to_owned(),
        Some(handle) => match download_command(handle) {
            Some(cmd) => format!("artifact {} (get it locally with `{cmd}`)", handle.name()),
            None => format!(
                "artifact {} (place it in the local images folder)",
                handle.name()
            ),
        },
    }
}

/// The VM a test configures, before it runs.
pub struct PetriVmBuilder<B: PetriVmmBackend> {
    backend: B,
    params: PetriTestParams,
    firmware: Firmware,
    arch: MachineArch,
    drives: Vec<Drive>,
    kernel_cmdline: Vec<String>,
    processors: Option<u32>,
    memory_mib: Option<u32>,
}

impl<B: PetriVmmBackend + Clone> Clone for PetriVmBuilder<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
            params: self.params.clone(),
            firmware: self.firmware.clone(),
            arch: self.arch,
            drives: self.drives.clone(),
            kernel_cmdline: self.kernel_cmdline.clone(),
            processors: self.processors,
            memory_mib: self.memory_mib,
        }
    }
}

impl<B: PetriVmmBackend> fmt::Debug for PetriVmBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PetriVmBuilder")
            .field("backend", &B::NAME)
            .field("params", &self.params)
            .field("firmware", &self.firmware)
            .field("arch", &self.arch)
            .field("drives", &self.drives)
            .field("kernel_cmdline", &self.kernel_cmdline)
            .field("processors", &self.processors)
            .field("memory_mib", &self.memory_mib)
            .finish()
    }
}

impl<B: PetriVmmBackend> PetriVmBuilder<B> {
    /// A builder for a VM with `firmware` on `arch`.
    pub fn new(backend: B, params: PetriTestParams, firmware: Firmware, arch: MachineArch) -> Self {
        Self {
            backend,
            params,
            firmware,
            arch,
            drives: Vec::new(),
            kernel_cmdline: Vec::new(),
            processors: None,
            memory_mib: None,
        }
    }

    /// Gives the VM `count` virtual processors (default: the backend's,
    /// one for QEMU).
    pub fn with_processors(mut self, count: u32) -> Self {
        self.processors = Some(count);
        self
    }

    /// Gives the VM `mib` MiB of memory (default: the backend's, 512 MiB
    /// for QEMU).
    pub fn with_memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    /// Appends `args` (space-separated) to the kernel command line of a
    /// linux-direct boot, e.g. `petri.steps=write-scratch`. Backends
    /// without direct boot ignore it.
    pub fn with_kernel_cmdline(mut self, args: impl Into<String>) -> Self {
        self.kernel_cmdline.push(args.into());
        self
    }

    /// Caches remote disk blocks in `dir` instead of the directory from
    /// the [cache directory rule](crate::cache_dir) (tests use a fresh
    /// directory per test instead of changing `PETRI_CACHE_DIR`).
    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.backend.set_cache_dir(dir.into());
        self
    }

    /// Adds a drive after the boot drive.
    pub fn with_drive(mut self, drive: Drive) -> Self {
        self.drives.push(drive);
        self
    }

    /// The firmware.
    pub fn firmware(&self) -> &Firmware {
        &self.firmware
    }

    /// The VM architecture.
    pub fn arch(&self) -> MachineArch {
        self.arch
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The test's parameters (name, log directory).
    pub fn params(&self) -> &PetriTestParams {
        &self.params
    }

    /// Translates the model into the backend's terms without launching.
    pub fn prepare(self) -> Result<PreparedVm<B>, B::Error> {
        let boot_drive = match self.firmware.boot_drive() {
            Some(drive) => Some(self.backend.translate_drive(&drive)?),
            None => None,
        };
        let drives = self
            .drives
            .iter()
            .map(|d| self.backend.translate_drive(d))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreparedVm {
            backend: self.backend,
            params: self.params,
            firmware: self.firmware,
            arch: self.arch,
            boot_drive,
            drives,
            kernel_cmdline: self.kernel_cmdline.join(" "),
            processors: self.processors,
            memory_mib: self.memory_mib,
        })
    }

    /// Prepares and launches the VM.
    pub async fn run(self) -> anyhow::Result<PetriVm<B>> {
        let prepared = self.prepare()?;
        let vm = B::launch(prepared).await?;
        Ok(PetriVm { inner: vm })
    }
}

/// A VM translated into the backend's terms, ready to launch.
pub struct PreparedVm<B: PetriVmmBackend> {
    /// The backend.
    pub backend: B,
    /// The test's parameters.
    pub params: PetriTestParams,
    /// The firmware model.
    pub firmware: Firmware,
    /// The VM architecture.
    pub arch: MachineArch,
    /// The translated boot drive.
    pub boot_drive: Option<B::DriveConfig>,
    /// The translated additional drives.
    pub drives: Vec<B::DriveConfig>,
    /// Extra kernel command-line arguments for a linux-direct boot.
    pub kernel_cmdline: String,
    /// Virtual processors, when the test chose (else the backend's default).
    pub processors: Option<u32>,
    /// Memory in MiB, when the test chose (else the backend's default).
    pub memory_mib: Option<u32>,
}

impl<B: PetriVmmBackend> fmt::Debug for PreparedVm<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedVm")
            .field("backend", &B::NAME)
            .field("firmware", &self.firmware.name())
            .field("arch", &self.arch)
            .field("boot_drive", &self.boot_drive)
            .field("drives", &self.drives)
            .field("processors", &self.processors)
            .field("memory_mib", &self.memory_mib)
            .finish()
    }
}

/// A running VM.
pub struct PetriVm<B: PetriVmmBackend> {
    inner: B::Vm,
}

impl<B: PetriVmmBackend> PetriVm<B> {
    /// The backend's VM object.
    pub fn inner(&self) -> &B::Vm {
        &self.inner
    }

    /// The backend's VM object, mutably.
    pub fn inner_mut(&mut self) -> &mut B::Vm {
        &mut self.inner
    }

    /// The backend's VM object.
    pub fn into_inner(self) -> B::Vm {
        self.inner
    }

    /// Waits until a console line contains `needle`; see
    /// [`VmHandle::wait_for_console_line`].
    pub async fn wait_for_console_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        self.inner.wait_for_console_line(needle, timeout).await
    }

    /// Everything the console printed so far.
    pub fn console_text(&self) -> String {
        self.inner.console_text()
    }

    /// The boot disk's counters (bytes fetched, requests, cache hits), if
    /// the backend opened the disk itself.
    pub fn boot_disk_counters(&self) -> Option<DiskCounters> {
        self.inner.boot_disk_counters()
    }

    /// Waits for the VM to stop; see [`VmHandle::wait_for_exit`].
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        self.inner.wait_for_exit(timeout).await
    }
}
