//! The VMM tests.
//!
//! The tests live in the `vmm_tests` test target (`tests/vmm_tests/`),
//! which runs under petri's harness (`harness = false`, `petri::test_main`)
//! with the known-paths resolver. Each `#[vmm_test]` function becomes one
//! test per configuration, named `{module}::{vmm}_{firmware}_{arch}[_{image}]::{fn}`:
//!
//! ```text
//! cargo nextest list -p vmm_tests
//! cargo nextest run -p vmm_tests
//! cargo test -p vmm_tests --test vmm_tests -- --list-required-artifacts hyperv_
//! ```
//!
//! Modules of the test target:
//!
//! - `boot`: OpenVMM and Hyper-V configurations over the store images;
//!   on hosts without OpenVMM or Hyper-V they are listed as ignored with
//!   the reason.
//! - `test_guest`: the petri test guest (built by
//!   `cargo xtask guest-test build-image`) booted under QEMU from the local
//!   raw image (`qemu_linux_direct_x64::boot`; from `PETRI_ARTIFACT_BASE_URL` when the raw disk is not local): nothing fetched, the
//!   image never written; and `failing_step_is_reported` (a guest step
//!   that fails is a test failure carrying the console). Two boots.
//! - `debian_guest`: the Debian 12 systemd guest (built by
//!   `cargo xtask guest-test build-image --guest debian`) booted under QEMU
//!   (`-smp 2 -m 1024`) from its raw disk, local or from
//!   `PETRI_ARTIFACT_BASE_URL`, to its marker after `multi-user.target`
//!   with no failed unit (`qemu_linux_direct_x64_debian_12_raw_x64::boot_to_marker`).
//!   One boot, 20-55 s under TCG.
//! - `remote_mirror`: the petri test guest booted from an nginx mirror of the
//!   built images (`qemu_linux_direct_x64_petri_test_guest_x64::cold_then_warm`):
//!   the cold boot fetches what the guest reads (about 6 MB of the 336 MB
//!   VHD, 8 requests), the warm boot on the same cache fetches 0 bytes
//!   with exactly one request (the HEAD that validates the image), and
//!   the guest's 4 MiB of writes never reach the cache. Two boots (so
//!   four QEMU boots in the default run, about 15 s each under TCG).
//!   `qemu_linux_direct_x64_debian_12_x64::cold_boot` boots the Debian
//!   guest once, cold, from the mirror (about 160 MB of the 2 GiB VHD in
//!   about 160 requests).
//!   `forced_local_fails_with_the_build_hint` reruns it with
//!   `PETRI_REMOTE_ARTIFACTS=0` and checks it fails before booting with
//!   the build command. The OpenVMM and Hyper-V variants of both tests
//!   are listed as ignored with their reasons.
//! - `sparse_formats`: the same guest booted under QEMU from its raw root
//!   disk converted by `qemu-img convert` (in the test setup) to a dynamic
//!   VHD, a VHDX and a deflate-compressed qcow2, each served by its own
//!   nginx under the raw image's name (the `.raw` extension gives no
//!   hint, so the disk layer detects the format from the content); each
//!   boot reaches the guest's markers and fetches a few MB of the ~270 MB
//!   image, and nginx sees exactly the requests the disk counted. Three
//!   boots; they need `qemu-img` (`qemu-utils`) besides QEMU and nginx.
//! - `harness_checks`: self-checks of the harness that invoke this test
//!   binary (`--list`, `--list-required-artifacts`, forced runs).
//!
//! Per-test resolver environment: the test binary's resolve function
//! builds each test's resolver environment itself instead of changing
//! process environment variables (shared by all tests of a `cargo test`
//! process); tests in `remote_mirror` get a base URL pointing at their own
//! nginx, an image folder holding only the kernel and initramfs, and a
//! fresh cache directory (handed to the backend with
//! `PetriVmBuilder::with_cache_dir`). See `tests/vmm_tests/mirror.rs`.
//!
//! Prerequisites: QEMU (`qemu-system-x86`) and nginx, and the built test
//! guests (each test needs only the guest it boots). Without QEMU the QEMU cases are listed as ignored; without the
//! built guest or nginx they are skipped at run time with the command to
//! run. Under `CI=true` each of these is a failure instead.
//!
//! Machine-readable output: every QEMU boot prints one line per disk,
//! `PETRI_DISK_COUNTERS {json}` (fields of `petri::qemu::DiskCountersReport`:
//! test, boot, drive, location, remote, disk_bytes, one field per
//! `disk_backend::DiskCounters` counter such as remote_bytes_fetched or
//! cache_hit_bytes, the NBD export's nbd_read_requests, nbd_bytes_read and
//! nbd_read_wait_micros, vm_millis, exit_code) and keeps all boots of the
//! test in `disk-counters.json` in its log directory.
//!
//! This library target is intentionally empty.

#![forbid(unsafe_code)]
