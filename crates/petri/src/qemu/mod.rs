//! The QEMU backend: boots linux-direct guests under QEMU, with the boot
//! disk served from our own disk stack over NBD.
//!
//! Model: the VM model's drives are translated exactly as for OpenVMM
//! ([`crate::disk_stack`]): a remote root disk becomes `[RAM diff,
//! SQLite auto-cache (read cache in the cache directory), HTTP blob]`, a
//! local one `[RAM diff, file]`. At launch each drive's stack is opened in
//! this process ([`crate::disk_stack::open_description`]) and exported
//! with `disk_nbd` on a Unix socket in a private temporary directory
//! (short path: socket paths are limited to 108 bytes); QEMU attaches it
//! as a virtio-blk disk (`-drive file=nbd+unix:///?socket=...,format=raw,
//! if=virtio`). So QEMU never sees the image file or URL: every guest
//! read goes through our stack, guest writes land in the RAM layer and
//! never reach the image or the cache, and the disk's counters (bytes
//! fetched, requests, cache hits) are the stack's own.
//!
//! Boot: linux-direct only (`-kernel`, `-initrd`, `-append "console=ttyS0
//! panic=-1 loglevel=4 <extra>"`; the petri test guest's initramfs mounts
//! `/dev/vda`, the Debian guest's finds its root disk by filesystem UUID).
//! One processor and 512 MiB unless the test asks for more
//! (`PetriVmBuilder::with_processors`, `with_memory_mib`). Accelerator: TCG unless `PETRI_QEMU_ACCEL=kvm` asks for
//! KVM (KVM hangs guests on the machines this was written on). QEMU runs
//! with `-nodefaults -display none -serial stdio -no-reboot`, so the guest
//! powering off ends the process.
//!
//! Console: QEMU's standard output is the serial console. A reader task
//! appends every line to `console.log` in the test's log directory
//! (`console-<n>.log` for the n-th boot of a test) and to an in-memory
//! buffer, and wakes waiters ([`QemuVm::wait_for_console_line`]); QEMU's
//! standard error goes to `qemu-stderr.log`. Waiting is event-driven (no
//! polling): a timeout fails with the console tail.
//!
//! Disk counters: when a VM ends (exit, kill or drop) the backend prints
//! one line per disk to standard output,
//! `PETRI_DISK_COUNTERS {json}` ([`DISK_COUNTERS_MARKER`]), and writes
//! every boot of the test as a JSON array to `disk-counters.json` in the
//! log directory; see [`DiskCountersReport`] for the fields.
//!
//! Host support: the binary is `$PETRI_QEMU` if set, else
//! `qemu-system-x86_64` on `PATH`. If it is missing, tests are listed as
//! ignored with the reason (install `qemu-system-x86`), except under
//! `CI=true`, where they run and fail at launch, so CI never skips them
//! silently.
//!
//! FUTURE: UEFI and PCAT boots (OVMF/SeaBIOS), a KVM probe boot, QMP for
//! orderly shutdown and block statistics.

mod console;
mod counters;

use crate::PetriTestParams;
use crate::backend::HostSupport;
use crate::backend::PetriVmmBackend;
use crate::backend::PreparedVm;
use crate::backend::VmHandle;
use crate::disk_stack::DiskCounters;
use crate::disk_stack::DiskStackError;
use crate::disk_stack::OpenOptions;
use crate::disk_stack::OpenedDisk;
use crate::disk_stack::drive_description;
use crate::disk_stack::open_description;
use crate::vm::Drive;
use anyhow::Context as _;
use console::Console;
use console::pump_lines;
use console::wait_for_line;
pub use counters::DiskCountersReport;
use disk_backend_resources::LayerKind;
use disk_backend_resources::LayeredDiskHandle;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RemoteAccess;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::watch;

/// The variable naming the QEMU binary (default: `qemu-system-x86_64` on
/// `PATH`).
pub const QEMU_BINARY_ENV: &str = "PETRI_QEMU";

/// The variable choosing the accelerator: `tcg` (default) or `kvm`.
pub const QEMU_ACCEL_ENV: &str = "PETRI_QEMU_ACCEL";

/// The QEMU binary for x64 guests.
pub const QEMU_SYSTEM_X64: &str = "qemu-system-x86_64";

/// The Debian package that provides [`QEMU_SYSTEM_X64`].
pub const QEMU_PACKAGE: &str = "qemu-system-x86";

/// The start of the line each finished VM prints per disk, followed by a
/// space and a [`DiskCountersReport`] as JSON.
pub const DISK_COUNTERS_MARKER: &str = "PETRI_DISK_COUNTERS";

/// The file in the test's log directory holding every boot's
/// [`DiskCountersReport`]s as a JSON array.
pub const DISK_COUNTERS_FILE: &str = "disk-counters.json";

/// Errors of the QEMU backend.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A disk cannot be described or opened.
    #[error(transparent)]
    DiskStack(#[from] DiskStackError),
    /// The firmware is not a linux-direct boot with a guest.
    #[error(
        "the QEMU backend boots only linux_direct guests with a kernel, an initramfs and a \
         root disk (a built test guest), not {0}"
    )]
    UnsupportedFirmware(String),
    /// `PETRI_QEMU_ACCEL` has a value other than `tcg` or `kvm`.
    #[error("{QEMU_ACCEL_ENV}={0:?} is not an accelerator; use tcg or kvm")]
    BadAccel(String),
    /// The QEMU binary is missing.
    #[error(
        "{0} not found; install the Debian package {QEMU_PACKAGE} (apt-get install \
         {QEMU_PACKAGE}) or set {QEMU_BINARY_ENV}"
    )]
    QemuMissing(String),
    /// The NBD export could not be set up.
    #[error("exporting the disk over NBD")]
    Nbd(#[from] disk_nbd::NbdError),
    /// An I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// The accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuAccel {
    /// Software emulation (default).
    Tcg,
    /// KVM (only when asked for: it hangs guests on some hosts).
    Kvm,
}

impl QemuAccel {
    /// Parses a value of [`QEMU_ACCEL_ENV`]; unset or empty is TCG.
    pub fn parse(value: Option<&str>) -> Result<Self, QemuError> {
        match value.map(str::trim) {
            None | Some("") => Ok(QemuAccel::Tcg),
            Some(v) if v.eq_ignore_ascii_case("tcg") => Ok(QemuAccel::Tcg),
            Some(v) if v.eq_ignore_ascii_case("kvm") => Ok(QemuAccel::Kvm),
            Some(v) => Err(QemuError::BadAccel(v.to_owned())),
        }
    }

    /// The `-accel` argument.
    pub fn arg(self) -> &'static str {
        match self {
            QemuAccel::Tcg => "tcg",
            QemuAccel::Kvm => "kvm",
        }
    }
}

/// The QEMU binary to run: `$PETRI_QEMU`, else [`QEMU_SYSTEM_X64`] found on
/// `PATH`. `None` when it does not exist.
pub fn find_qemu() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(QEMU_BINARY_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(QEMU_SYSTEM_X64))
        .find(|p| p.is_file())
}

/// The host-support rule, with the environment injected: a QEMU binary
/// present, or CI (where a missing QEMU must fail, not skip).
pub fn host_support_for(qemu: Option<&Path>, ci: bool) -> HostSupport {
    match (qemu, ci) {
        (Some(_), _) | (None, true) => HostSupport::Supported,
        (None, false) => HostSupport::Unsupported(
            format!(
                "{QEMU_SYSTEM_X64} not found on PATH; install the Debian package {QEMU_PACKAGE} \
                 (or set {QEMU_BINARY_ENV})"
            )
            .into(),
        ),
    }
}

/// One drive as QEMU gets it: a disk stack this process opens and
/// exports over NBD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuDrive {
    /// The disk stack, `None` for an empty drive.
    pub disk: Option<LayeredDiskHandle>,
    /// Presented read-only (a DVD).
    pub read_only: bool,
    /// The artifact the medium came from, for error messages.
    pub artifact: Option<ErasedArtifactHandle>,
}

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuPetriBackend {
    cache_dir: Option<PathBuf>,
    open_options: OpenOptions,
    memory_mib: u32,
    /// Boots of this test so far, shared by clones of the backend (a test
    /// that boots twice clones its builder).
    boots: Arc<AtomicU32>,
}

impl QemuPetriBackend {
    /// A backend caching remote blocks in `cache_dir` (or by the cache
    /// directory rule when `None`).
    pub fn new_with(cache_dir: Option<PathBuf>, open_options: OpenOptions) -> Self {
        Self {
            cache_dir,
            open_options,
            memory_mib: 512,
            boots: Arc::new(AtomicU32::new(0)),
        }
    }

    /// Uses `options` (HTTP settings such as extra TLS roots) when opening
    /// disks.
    pub fn with_open_options(mut self, options: OpenOptions) -> Self {
        self.open_options = options;
        self
    }

    /// The guest's memory size (default 512 MiB; a test's
    /// `PetriVmBuilder::with_memory_mib` wins).
    pub fn with_memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
}

impl PetriVmmBackend for QemuPetriBackend {
    const NAME: &'static str = "qemu";
    const REMOTE_ACCESS: RemoteAccess = RemoteAccess::Allow;
    // TCG emulates an x64 guest on any host.
    const NATIVE_ARCH_ONLY: bool = false;
    type DriveConfig = QemuDrive;
    type Error = QemuError;
    type Vm = QemuVm;

    fn host_support() -> HostSupport {
        host_support_for(find_qemu().as_deref(), ci_env::in_ci())
    }

    fn new(_params: &PetriTestParams) -> Result<Self, QemuError> {
        Ok(Self::new_with(None, OpenOptions::default()))
    }

    fn set_cache_dir(&mut self, dir: PathBuf) {
        self.cache_dir = Some(dir);
    }

    fn translate_drive(&self, drive: &Drive) -> Result<QemuDrive, QemuError> {
        let disk = drive_description(drive, self.cache_dir.as_deref())?;
        Ok(QemuDrive {
            disk,
            read_only: drive.is_dvd,
            artifact: drive.artifact,
        })
    }

    async fn launch(vm: PreparedVm<Self>) -> Result<QemuVm, QemuError> {
        QemuVm::launch(vm).await
    }
}

struct ServedDisk {
    name: String,
    opened: OpenedDisk,
    /// The export's counters stay readable after its listener is shut down.
    server: disk_nbd::NbdServer,
    listener: Option<disk_nbd::NbdListener>,
}

/// A QEMU process running a guest, with its disks served by this process.
pub struct QemuVm {
    child: tokio::process::Child,
    console: Arc<Console>,
    console_rx: watch::Receiver<u64>,
    next_line: usize,
    disks: Vec<ServedDisk>,
    test_name: String,
    log_dir: PathBuf,
    console_log: PathBuf,
    boot: u32,
    started: Instant,
    exit_code: Option<i32>,
    reported: bool,
    // Holds the NBD sockets; removed when the VM is dropped.
    _socket_dir: tempfile::TempDir,
}

impl std::fmt::Debug for QemuVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuVm")
            .field("test_name", &self.test_name)
            .field("boot", &self.boot)
            .field("console_log", &self.console_log)
            .finish_non_exhaustive()
    }
}

fn drive_args(socket: &Path, read_only: bool) -> String {
    let mut arg = format!(
        "file=nbd+unix:///?socket={},format=raw,if=virtio",
        socket.display()
    );
    if read_only {
        arg.push_str(",readonly=on");
    }
    arg
}

impl QemuVm {
    async fn launch(vm: PreparedVm<QemuPetriBackend>) -> Result<QemuVm, QemuError> {
        let PreparedVm {
            backend,
            params,
            firmware,
            boot_drive,
            drives,
            kernel_cmdline,
            processors,
            memory_mib,
            ..
        } = vm;
        let guest = firmware
            .linux_direct_artifacts()
            .ok_or_else(|| QemuError::UnsupportedFirmware(format!("{firmware:?}")))?;
        let accel = QemuAccel::parse(std::env::var(QEMU_ACCEL_ENV).ok().as_deref())?;
        let qemu = match find_qemu() {
            Some(path) => path,
            None => {
                return Err(QemuError::QemuMissing(
                    std::env::var(QEMU_BINARY_ENV).unwrap_or_else(|_| QEMU_SYSTEM_X64.into()),
                ));
            }
        };
        let boot = backend.boots.fetch_add(1, Ordering::Relaxed) + 1;
        let socket_dir = tempfile::Builder::new()
            .prefix("petri-qemu-")
            .tempdir()
            .map_err(io_err("creating a directory for the NBD sockets"))?;

        // Open every disk in this process and export it over NBD.
        let mut disks = Vec::new();
        let mut drive_flags = Vec::new();
        let all = boot_drive
            .into_iter()
            .map(|d| ("boot".to_owned(), d))
            .chain(
                drives
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| (format!("drive{}", i + 1), d)),
            );
        for (name, drive) in all {
            let Some(handle) = drive.disk else { continue };
            let opened = open_description(handle, drive.artifact, &backend.open_options).await?;
            let server = disk_nbd::NbdServer::new(
                opened.disk().clone(),
                disk_nbd::NbdServerOptions::default(),
            )?;
            let socket = socket_dir.path().join(format!("{name}.sock"));
            let listener = server.listen_unix(&socket).await?;
            drive_flags.push(drive_args(&socket, drive.read_only));
            disks.push(ServedDisk {
                name,
                opened,
                server,
                listener: Some(listener),
            });
        }

        let suffix = if boot == 1 {
            String::new()
        } else {
            format!("-{boot}")
        };
        let console_log = params.log_dir.join(format!("console{suffix}.log"));
        let stderr_log = params.log_dir.join(format!("qemu-stderr{suffix}.log"));
        let mut append = "console=ttyS0 panic=-1 loglevel=4".to_owned();
        if !kernel_cmdline.trim().is_empty() {
            append.push(' ');
            append.push_str(kernel_cmdline.trim());
        }

        let mut cmd = tokio::process::Command::new(&qemu);
        cmd.args(["-accel", accel.arg()])
            .arg("-m")
            .arg(memory_mib.unwrap_or(backend.memory_mib).to_string())
            .arg("-smp")
            .arg(processors.unwrap_or(1).max(1).to_string())
            .args(["-nodefaults", "-display", "none"])
            .args(["-serial", "stdio", "-no-reboot"])
            .arg("-kernel")
            .arg(guest.kernel())
            .arg("-initrd")
            .arg(guest.initrd())
            .arg("-append")
            .arg(&append);
        for flags in &drive_flags {
            cmd.arg("-drive").arg(flags);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        tracing::info!(
            qemu = %qemu.display(),
            accel = accel.arg(),
            kernel = %guest.kernel().display(),
            append,
            disks = ?disks.iter().map(|d| d.opened.location()).collect::<Vec<_>>(),
            console = %console_log.display(),
            "launching QEMU"
        );
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", qemu.display())))?;
        let (console, console_rx) = Console::new();
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(pump_lines(
                stdout,
                console_log.clone(),
                Some(console.clone()),
            ));
        } else {
            console.close();
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(pump_lines(stderr, stderr_log, None));
        }
        Ok(QemuVm {
            child,
            console,
            console_rx,
            next_line: 0,
            disks,
            test_name: params.test_name,
            log_dir: params.log_dir,
            console_log,
            boot,
            started,
            exit_code: None,
            reported: false,
            _socket_dir: socket_dir,
        })
    }

    /// Which boot of the test this is (1 for the first).
    pub fn boot_index(&self) -> u32 {
        self.boot
    }

    /// The console log file in the test's log directory.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }

    /// The opened boot disk (its description and live counters).
    pub fn boot_disk(&self) -> Option<&OpenedDisk> {
        self.disks
            .iter()
            .find(|d| d.name == "boot")
            .map(|d| &d.opened)
    }

    /// The last console lines, formatted for an error message.
    pub fn console_tail(&self) -> String {
        self.console.tail()
    }

    /// The counters reports of this VM's disks, as of now.
    pub fn counters_reports(&self) -> Vec<DiskCountersReport> {
        let vm_millis = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.disks
            .iter()
            .map(|d| {
                let nbd = d.server.stats();
                DiskCountersReport {
                    test: self.test_name.clone(),
                    boot: self.boot,
                    drive: d.name.clone(),
                    location: d.opened.location(),
                    remote: matches!(
                        d.opened.description().layers.last().map(|l| &l.layer),
                        Some(LayerKind::Blob { .. })
                    ),
                    disk_bytes: d.opened.disk().size_bytes(),
                    counters: d.opened.counters(),
                    nbd_read_requests: nbd.read_requests,
                    nbd_bytes_read: nbd.bytes_read,
                    nbd_read_wait_micros: u64::try_from(nbd.read_wait.as_micros())
                        .unwrap_or(u64::MAX),
                    vm_millis,
                    exit_code: self.exit_code,
                }
            })
            .collect()
    }

    /// Prints and records the counters once.
    fn report(&mut self) {
        if self.reported {
            return;
        }
        self.reported = true;
        let reports = self.counters_reports();
        for r in &reports {
            match serde_json::to_string(r) {
                Ok(json) => println!("{DISK_COUNTERS_MARKER} {json}"),
                Err(err) => tracing::warn!(%err, "cannot serialise the disk counters"),
            }
        }
        let file = self.log_dir.join(DISK_COUNTERS_FILE);
        // The first boot of a test starts a fresh file (the log directory
        // outlives runs); later boots append.
        let mut all: Vec<DiskCountersReport> = if self.boot == 1 {
            Vec::new()
        } else {
            std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        };
        all.extend(reports);
        match serde_json::to_vec_pretty(&all) {
            Ok(json) => {
                if let Err(err) = std::fs::write(&file, json) {
                    tracing::warn!(file = %file.display(), %err, "cannot write the disk counters");
                }
            }
            Err(err) => tracing::warn!(%err, "cannot serialise the disk counters"),
        }
    }

    /// Stops the NBD exports (after QEMU is gone) and reports.
    async fn finish(&mut self) {
        // Let the console reader drain what QEMU wrote before exiting.
        let drained = async {
            loop {
                if self.console.is_closed() {
                    break;
                }
                if self.console_rx.changed().await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(10), drained).await;
        for d in &mut self.disks {
            if let Some(listener) = d.listener.take()
                && let Err(err) = listener.shutdown().await
            {
                tracing::warn!(disk = d.name, %err, "NBD export did not shut down cleanly");
            }
        }
        self.report();
    }

    /// Waits until a console line contains `needle` and returns it; lines
    /// matched by earlier calls are skipped.
    pub async fn wait_for_console_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        wait_for_line(
            &self.console,
            &mut self.console_rx,
            &mut self.next_line,
            needle,
            timeout,
            &self.console_log,
        )
        .await
    }

    /// Waits for QEMU to exit (the guest powered off; `-no-reboot`), then
    /// stops the exports and reports the counters. Kills QEMU on timeout.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => {
                let status = status.context("waiting for QEMU")?;
                self.exit_code = status.code();
                self.finish().await;
                Ok(status.code())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                self.finish().await;
                anyhow::bail!(
                    "QEMU did not exit within {timeout:?}; killed it; console {}:{}",
                    self.console_log.display(),
                    self.console.tail()
                )
            }
        }
    }

    /// Kills QEMU (if it still runs), stops the exports and reports.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if self.child.try_wait().ok().flatten().is_none() {
            self.child.kill().await.context("killing QEMU")?;
        }
        self.finish().await;
        Ok(())
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // `kill_on_drop` ends QEMU; the exports end with their listeners.
        let _ = self.child.start_kill();
        self.report();
    }
}

impl VmHandle for QemuVm {
    async fn wait_for_console_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        QemuVm::wait_for_console_line(self, needle, timeout).await
    }

    fn console_text(&self) -> String {
        self.console.text()
    }

    fn boot_disk_counters(&self) -> Option<DiskCounters> {
        self.boot_disk().map(|d| d.counters())
    }

    async fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        QemuVm::wait_for_exit(self, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accel_parsing() {
        assert_eq!(QemuAccel::parse(None).unwrap(), QemuAccel::Tcg);
        assert_eq!(QemuAccel::parse(Some("")).unwrap(), QemuAccel::Tcg);
        assert_eq!(QemuAccel::parse(Some("KVM")).unwrap(), QemuAccel::Kvm);
        assert_eq!(QemuAccel::parse(Some(" tcg ")).unwrap(), QemuAccel::Tcg);
        let err = QemuAccel::parse(Some("hvf")).unwrap_err().to_string();
        assert!(
            err.contains("PETRI_QEMU_ACCEL") && err.contains("hvf"),
            "{err}"
        );
    }

    #[test]
    fn missing_qemu_is_ignored_except_under_ci() {
        let reason = host_support_for(None, false);
        let text = reason.reason().unwrap();
        assert!(
            text.contains("qemu-system-x86_64") && text.contains("qemu-system-x86"),
            "{text}"
        );
        assert_eq!(host_support_for(None, true), HostSupport::Supported);
        assert_eq!(
            host_support_for(Some(Path::new("/usr/bin/qemu-system-x86_64")), false),
            HostSupport::Supported
        );
    }

    #[test]
    fn drives_are_nbd_over_unix_virtio() {
        let arg = drive_args(Path::new("/tmp/petri-qemu-x/boot.sock"), false);
        assert!(
            arg.starts_with(
                "file=nbd+unix:///?socket=/tmp/petri-qemu-x/boot.sock,format=raw,if=virtio"
            ),
            "{arg}"
        );
        assert!(!arg.contains("readonly"), "{arg}");
        assert!(drive_args(Path::new("/s"), true).ends_with(",readonly=on"));
    }

    #[test]
    fn processors_and_memory_reach_the_prepared_vm() {
        let params = PetriTestParams {
            test_name: "t".into(),
            log_dir: PathBuf::from("/logs/t"),
        };
        let backend = QemuPetriBackend::new_with(None, OpenOptions::default());
        let builder = crate::PetriVmBuilder::new(
            backend,
            params,
            crate::Firmware::linux_direct(),
            crate::MachineArch::X64,
        );
        let defaults = builder.clone().prepare().unwrap();
        assert_eq!((defaults.processors, defaults.memory_mib), (None, None));
        let chosen = builder
            .with_processors(2)
            .with_memory_mib(1024)
            .prepare()
            .unwrap();
        assert_eq!(
            (chosen.processors, chosen.memory_mib),
            (Some(2), Some(1024))
        );
    }

    #[test]
    fn policy() {
        assert_eq!(QemuPetriBackend::REMOTE_ACCESS, RemoteAccess::Allow);
        assert_eq!(QemuPetriBackend::NAME, "qemu");
    }
}
