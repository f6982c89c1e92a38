//! Test support for the disk crates: a read-only test disk and seeded
//! bytes.
//!
//! Test-only. This crate is a dev-dependency of the disk crates' tests and
//! benchmarks (and of the test servers' image writers); it must never be a
//! normal dependency of product code.
//!
//! Position in the data flow: it stands where an image sits in a real
//! stack, at the bottom. [`TestDisk`] is a whole disk over a file or a
//! buffer that a test puts under the layers it checks, either as a
//! [`disk_backend::Disk`] (as a stack's bottom disk or an NBD export) or
//! as a [`disk_layered::LayerIo`] layer, and then asks what reached it: how
//! many reads, which sector ranges. It can hold reads at a gate (for
//! concurrency tests with no timing involved) and fail a read on demand.
//!
//! [`random_bytes`] and [`test_rng`] are the one seeded generator of the
//! tests and test images: xoshiro256++, an algorithm that does not change
//! with `rand` releases, so a seed in a failure message or a bench report
//! keeps meaning the same bytes.

#![forbid(unsafe_code)]

mod random;
mod test_disk;

pub use random::TestRng;
pub use random::random_bytes;
pub use random::test_rng;
pub use random::write_random_image;
pub use test_disk::SECTOR_SIZE;
pub use test_disk::TestDisk;
