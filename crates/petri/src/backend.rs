//! The backend trait and the VM builder a test receives.
//!
//! A backend is one VMM (OpenVMM, Hyper-V, later QEMU). It states whether
//! this host can run it ([`PetriVmmBackend::host_support`]), how far it
//! accepts remote artifacts ([`PetriVmmBackend::REMOTE_ACCESS`]), and how
//! a VM model [`Drive`] becomes its own drive configuration
//! ([`PetriVmmBackend::translate_drive`]). The builder collects the model;
//! [`PetriVmBuilder::prepare`] translates it, [`PetriVmBuilder::run`]
//! launches it.

use crate::MachineArch;
use crate::PetriTestParams;
use crate::vm::Drive;
use crate::vm::Firmware;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteAccess;
use std::borrow::Cow;
use std::fmt;
use std::future::Future;

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
    type Vm: Send;

    /// Whether this host can run the backend. Tests of an unsupported
    /// backend are listed as ignored with the reason.
    fn host_support() -> HostSupport;

    /// Creates the backend for one test.
    fn new(params: &PetriTestParams) -> Result<Self, Self::Error>;

    /// Translates one drive of the VM model.
    fn translate_drive(&self, drive: &Drive) -> Result<Self::DriveConfig, Self::Error>;

    /// Launches a prepared VM.
    fn launch(vm: PreparedVm<Self>) -> impl Future<Output = Result<Self::Vm, Self::Error>> + Send;
}

/// The command that downloads `artifact` for local use, if the catalog
/// knows it.
pub fn download_command(artifact: ErasedArtifactHandle) -> Option<String> {
    vmm_test_images::KnownTestArtifacts::from_handle(artifact).map(|known| known.download_command())
}

/// Describes `artifact` for an error message: its name and, if known, the
/// command that downloads it.
pub(crate) fn describe_artifact(artifact: Option<ErasedArtifactHandle>) -> String {
    match artifact {
        None => "the disk".to_owned(),
        Some(handle) => match download_command(handle) {
            Some(cmd) => format!("artifact {} (download it with `{cmd}`)", handle.name()),
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
}

impl<B: PetriVmmBackend> fmt::Debug for PetriVmBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PetriVmBuilder")
            .field("backend", &B::NAME)
            .field("params", &self.params)
            .field("firmware", &self.firmware)
            .field("arch", &self.arch)
            .field("drives", &self.drives)
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
        }
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
}

impl<B: PetriVmmBackend> fmt::Debug for PreparedVm<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedVm")
            .field("backend", &B::NAME)
            .field("firmware", &self.firmware.name())
            .field("arch", &self.arch)
            .field("boot_drive", &self.boot_drive)
            .field("drives", &self.drives)
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
}
