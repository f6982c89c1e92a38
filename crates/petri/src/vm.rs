//! The VM configuration model: firmware, boot images, disks and drives.
//!
//! A test's requirement closure builds a [`Firmware`] from resolved artifact
//! sources ([`BootImageConfig`]); at run time [`Firmware::boot_drive`] turns
//! the boot medium into a [`Drive`] holding a
//! [`Disk::Differencing`]`(`[`DiskPath`]`)`, local or remote, and a backend
//! translates drives into what its VMM understands. Nothing here does I/O;
//! whether a remote disk is acceptable is the backend's decision.

use crate::MachineArch;
use crate::OsFlavor;
use petri_artifacts_common::tags::IsTestInitrd;
use petri_artifacts_common::tags::IsTestIso;
use petri_artifacts_common::tags::IsTestKernel;
use petri_artifacts_common::tags::IsTestVhd;
use petri_artifacts_core::ArtifactSource;
use petri_artifacts_core::ErasedArtifactHandle;
use petri_artifacts_core::RedactedUrl;
use petri_artifacts_core::ResolvedArtifact;
use petri_artifacts_core::ResolvedArtifactSource;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::path::PathBuf;

/// Type tags for [`BootImageConfig`].
pub mod boot_image_type {
    /// A bootable hard disk image (VHD, VHDX).
    #[derive(Debug)]
    pub enum Vhd {}
    /// A bootable optical disc image.
    #[derive(Debug)]
    pub enum Iso {}
}

/// A boot medium: a resolved artifact source plus what the test needs to
/// know about the guest on it.
pub struct BootImageConfig<T> {
    source: ResolvedArtifactSource<()>,
    os_flavor: OsFlavor,
    arch: Option<MachineArch>,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for BootImageConfig<T> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            os_flavor: self.os_flavor,
            arch: self.arch,
            _kind: PhantomData,
        }
    }
}

impl<T> fmt::Debug for BootImageConfig<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootImageConfig")
            .field("source", &self.source)
            .field("os_flavor", &self.os_flavor)
            .field("arch", &self.arch)
            .finish()
    }
}

impl BootImageConfig<boot_image_type::Vhd> {
    /// A bootable disk from a `require_source` result.
    pub fn from_vhd<A: IsTestVhd>(source: ResolvedArtifactSource<A>) -> Self {
        Self {
            source: source.erase(),
            os_flavor: A::OS_FLAVOR,
            arch: Some(A::ARCH),
            _kind: PhantomData,
        }
    }
}

impl BootImageConfig<boot_image_type::Iso> {
    /// A bootable ISO from a `require_source` result.
    pub fn from_iso<A: IsTestIso>(source: ResolvedArtifactSource<A>) -> Self {
        Self {
            source: source.erase(),
            os_flavor: A::OS_FLAVOR,
            arch: Some(A::ARCH),
            _kind: PhantomData,
        }
    }
}

impl<T> BootImageConfig<T> {
    /// The artifact this image came from.
    pub fn artifact(&self) -> ErasedArtifactHandle {
        self.source.handle()
    }

    /// Where the image is.
    ///
    /// # Panics
    ///
    /// In the collecting phase (see `ResolvedArtifactSource::get`).
    #[track_caller]
    pub fn source(&self) -> &ArtifactSource {
        self.source.get()
    }

    /// The guest OS family on the image.
    pub fn os_flavor(&self) -> OsFlavor {
        self.os_flavor
    }

    /// The guest architecture, if the image declares one.
    pub fn arch(&self) -> Option<MachineArch> {
        self.arch
    }
}

/// What a PCAT (BIOS) VM boots.
#[derive(Debug, Clone)]
pub enum PcatGuest {
    /// A hard disk.
    Vhd(BootImageConfig<boot_image_type::Vhd>),
    /// An optical disc.
    Iso(BootImageConfig<boot_image_type::Iso>),
}

/// What a UEFI VM boots.
#[derive(Debug, Clone)]
pub enum UefiGuest {
    /// A hard disk.
    Vhd(BootImageConfig<boot_image_type::Vhd>),
    /// Nothing: the firmware runs without a boot disk.
    None,
}

/// What a direct Linux boot loads: a kernel, an initramfs (both local
/// files) and a root disk (local or remote), as the petri test guest
/// provides them.
#[derive(Debug, Clone)]
pub struct LinuxDirectGuest {
    kernel: ResolvedArtifact<()>,
    initrd: ResolvedArtifact<()>,
    root: BootImageConfig<boot_image_type::Vhd>,
}

impl LinuxDirectGuest {
    /// A guest from `require` results (kernel, initramfs) and a
    /// `require_source` result (root disk).
    pub fn new<K: IsTestKernel, I: IsTestInitrd>(
        kernel: ResolvedArtifact<K>,
        initrd: ResolvedArtifact<I>,
        root: BootImageConfig<boot_image_type::Vhd>,
    ) -> Self {
        Self {
            kernel: kernel.erase(),
            initrd: initrd.erase(),
            root,
        }
    }

    /// The kernel image.
    ///
    /// # Panics
    ///
    /// In the collecting phase.
    #[track_caller]
    pub fn kernel(&self) -> &Path {
        self.kernel.get()
    }

    /// The initramfs.
    ///
    /// # Panics
    ///
    /// In the collecting phase.
    #[track_caller]
    pub fn initrd(&self) -> &Path {
        self.initrd.get()
    }

    /// The root disk (attached as the first virtio disk, `/dev/vda`).
    pub fn root(&self) -> &BootImageConfig<boot_image_type::Vhd> {
        &self.root
    }
}

/// The VM's firmware and the guest it boots.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// Direct Linux kernel boot.
    LinuxDirect {
        /// The kernel, initramfs and root disk; `None` when the backend
        /// brings its own (OpenVMM's built-in test kernel in the
        /// reference).
        guest: Option<LinuxDirectGuest>,
    },
    /// PCAT BIOS (x64 only).
    Pcat {
        /// The boot medium.
        guest: PcatGuest,
    },
    /// UEFI.
    Uefi {
        /// The boot medium.
        guest: UefiGuest,
    },
}

impl Firmware {
    /// Direct Linux kernel boot without artifacts of its own.
    pub fn linux_direct() -> Self {
        Firmware::LinuxDirect { guest: None }
    }

    /// Direct Linux kernel boot of `guest`.
    pub fn linux_direct_guest(guest: LinuxDirectGuest) -> Self {
        Firmware::LinuxDirect { guest: Some(guest) }
    }

    /// The direct-boot guest, if this is a linux-direct firmware that has
    /// one.
    pub fn linux_direct_artifacts(&self) -> Option<&LinuxDirectGuest> {
        match self {
            Firmware::LinuxDirect { guest } => guest.as_ref(),
            _ => None,
        }
    }

    /// The firmware family's short name (`linux_direct`, `pcat`, `uefi`).
    pub fn name(&self) -> &'static str {
        match self {
            Firmware::LinuxDirect { .. } => "linux_direct",
            Firmware::Pcat { .. } => "pcat",
            Firmware::Uefi { .. } => "uefi",
        }
    }

    /// The guest OS family, if a boot image says so. Linux direct boot is
    /// Linux.
    pub fn os_flavor(&self) -> Option<OsFlavor> {
        match self {
            Firmware::LinuxDirect { .. } => Some(OsFlavor::Linux),
            Firmware::Pcat {
                guest: PcatGuest::Vhd(c),
            }
            | Firmware::Uefi {
                guest: UefiGuest::Vhd(c),
            } => Some(c.os_flavor()),
            Firmware::Pcat {
                guest: PcatGuest::Iso(c),
            } => Some(c.os_flavor()),
            Firmware::Uefi {
                guest: UefiGuest::None,
            } => None,
        }
    }

    /// The drive the firmware boots from: a differencing disk over the boot
    /// image's source (so the guest never writes the image; for linux
    /// direct boot, the root disk), a DVD for an ISO, or `None` when there
    /// is no boot image.
    ///
    /// # Panics
    ///
    /// In the collecting phase, because the sources are not resolved yet.
    #[track_caller]
    pub fn boot_drive(&self) -> Option<Drive> {
        let (artifact, source, is_dvd) = match self {
            Firmware::LinuxDirect { guest: None }
            | Firmware::Uefi {
                guest: UefiGuest::None,
            } => return None,
            Firmware::LinuxDirect { guest: Some(g) } => (g.root.artifact(), g.root.source(), false),
            Firmware::Pcat {
                guest: PcatGuest::Vhd(c),
            }
            | Firmware::Uefi {
                guest: UefiGuest::Vhd(c),
            } => (c.artifact(), c.source(), false),
            Firmware::Pcat {
                guest: PcatGuest::Iso(c),
            } => (c.artifact(), c.source(), true),
        };
        Some(Drive {
            disk: Some(Disk::Differencing(DiskPath::from(source.clone()))),
            is_dvd,
            artifact: Some(artifact),
        })
    }
}

/// Where a disk's base image is.
#[derive(Clone, PartialEq, Eq)]
pub enum DiskPath {
    /// A local file.
    Local(PathBuf),
    /// An HTTP(S) URL. Its query may hold a SAS token: `Debug` and
    /// `Display` redact it.
    Remote {
        /// The full URL.
        url: String,
    },
}

impl From<PathBuf> for DiskPath {
    fn from(path: PathBuf) -> Self {
        DiskPath::Local(path)
    }
}

impl From<ArtifactSource> for DiskPath {
    fn from(source: ArtifactSource) -> Self {
        match source {
            ArtifactSource::Local(path) => DiskPath::Local(path),
            ArtifactSource::Remote { url } => DiskPath::Remote { url },
        }
    }
}

impl fmt::Debug for DiskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskPath::Local(path) => f.debug_tuple("Local").field(path).finish(),
            DiskPath::Remote { url } => f
                .debug_struct("Remote")
                .field("url", &RedactedUrl(url))
                .finish(),
        }
    }
}

impl fmt::Display for DiskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskPath::Local(path) => write!(f, "{}", path.display()),
            DiskPath::Remote { url } => write!(f, "{}", RedactedUrl(url)),
        }
    }
}

/// A disk attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disk {
    /// An empty RAM disk of this many bytes; contents vanish with the VM.
    Memory(u64),
    /// A base image the guest reads, with its writes kept apart (in RAM or
    /// a differencing file, depending on the backend).
    Differencing(DiskPath),
    /// A writable disk file that outlives the VM (created if missing).
    Persistent(PathBuf),
    /// A writable disk file for this run only; the test deletes it.
    Temporary(PathBuf),
}

/// A drive slot: a disk (or an empty slot) plus how it is presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// The medium, `None` for an empty slot (an empty DVD drive).
    pub disk: Option<Disk>,
    /// Presented as an optical drive.
    pub is_dvd: bool,
    /// The artifact the medium came from, for error messages.
    pub artifact: Option<ErasedArtifactHandle>,
}

impl Drive {
    /// A hard disk drive holding `disk`.
    pub fn disk(disk: Disk) -> Self {
        Drive {
            disk: Some(disk),
            is_dvd: false,
            artifact: None,
        }
    }

    /// An optical drive holding `disk`.
    pub fn dvd(disk: Disk) -> Self {
        Drive {
            disk: Some(disk),
            is_dvd: true,
            artifact: None,
        }
    }
}
