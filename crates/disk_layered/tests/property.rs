//! Seeded random operations against real stacks, compared with a plain
//! in-memory model of the disk.
//!
//! Stacks: a RAM write layer over one or two RAM read caches (with and
//! without chunked fills) over a real temp file; the same with a real
//! SQLite read cache in the middle; and stacks whose read cache (RAM or
//! SQLite) is also the write layer. Reads, writes, unmaps, flushes and
//! batches of concurrent reads are mixed; every read (borrowed or owned
//! buffer) must match the model, and the file at the bottom must never
//! change.

mod common;

use common::*;
use disk_backend::Disk;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_test_support::TestDisk;
use disk_test_support::TestRng;
use disk_test_support::test_rng;
use disklayer_sqlite::SqliteDiskLayerConfig;
use rand::Rng;
use rand::RngCore;
use std::path::Path;

/// Sectors in the test disk: not a multiple of any fill chunk, so the
/// clipped last chunk is exercised.
const N: u64 = 777;

/// `len` bytes from `rng`.
fn bytes(rng: &mut TestRng, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    rng.fill_bytes(&mut v);
    v
}

/// A random range of at most `max` sectors inside the disk.
fn range(rng: &mut TestRng, max: u64) -> (u64, u64) {
    let s = rng.random_range(0..N);
    let n = rng.random_range(1..=max.min(N - s));
    (s, n)
}

/// The model: each sector's bytes, and whether it was unmapped since it
/// was last read or written (then it may read as its old bytes or zeroes).
struct Model {
    data: Vec<u8>,
    unmapped: Vec<bool>,
}

impl Model {
    fn check_read(&mut self, sector: u64, got: &[u8], what: &str) {
        for (i, chunk) in got.chunks(SS).enumerate() {
            let s = sector as usize + i;
            let want = &mut self.data[s * SS..(s + 1) * SS];
            if self.unmapped[s] {
                assert!(
                    chunk == want || chunk.iter().all(|b| *b == 0),
                    "{what}: unmapped sector {s} is neither its old contents nor zero"
                );
                want.copy_from_slice(chunk);
                self.unmapped[s] = false;
            } else {
                assert!(chunk == want, "{what}: sector {s} differs from the model");
            }
        }
    }
}

/// Builds a stack over the shared file (a clone of the test's handle);
/// `dir` is a scratch directory that outlives the stack (for SQLite files).
type StackFn = fn(TestDisk, &Path) -> Vec<LayerConfiguration>;

fn ram_cache_file(f: TestDisk, _dir: &Path) -> Vec<LayerConfiguration> {
    vec![
        plain(SharedRam::new(N)),
        cache(SharedRam::new(N).with_fill(64)),
        bottom(f),
    ]
}

fn ram_two_caches_file(f: TestDisk, _dir: &Path) -> Vec<LayerConfiguration> {
    vec![
        plain(SharedRam::new(N)),
        cache(SharedRam::new(N)),
        cache(SharedRam::new(N).with_fill(16)),
        bottom(f),
    ]
}

fn cache_on_top_file(f: TestDisk, _dir: &Path) -> Vec<LayerConfiguration> {
    vec![cache(SharedRam::new(N).with_fill(32)), bottom(f)]
}

/// A SQLite layer in `dir`: 8 KiB chunks (16 sectors, so the 777-sector
/// disk ends in a partial chunk), a logically read-only read cache or a
/// writable layer.
fn sqlite(dir: &Path, name: &str, logically_read_only: bool) -> DiskLayer {
    let mut config = SqliteDiskLayerConfig::new(dir.join(name), true, false);
    config.chunk_size = 8192;
    config.logically_read_only = logically_read_only;
    DiskLayer::new(config)
}

fn ram_sqlite_cache_file(f: TestDisk, dir: &Path) -> Vec<LayerConfiguration> {
    vec![
        plain(SharedRam::new(N)),
        LayerConfiguration::read_cache(sqlite(dir, "c.dbhd", true)),
        bottom(f),
    ]
}

fn ram_ram_cache_sqlite_cache_file(f: TestDisk, dir: &Path) -> Vec<LayerConfiguration> {
    vec![
        plain(SharedRam::new(N)),
        cache(SharedRam::new(N).with_fill(64)),
        LayerConfiguration::read_cache(sqlite(dir, "c.dbhd", true)),
        bottom(f),
    ]
}

fn writable_sqlite_cache_file(f: TestDisk, dir: &Path) -> Vec<LayerConfiguration> {
    vec![
        LayerConfiguration::read_cache(sqlite(dir, "w.dbhd", false)),
        bottom(f),
    ]
}

async fn run(seed: u64, make: StackFn, ops: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = test_rng(seed);
    let initial = bytes(&mut rng, N as usize * SS);
    let file = file_disk(&initial);
    let disk: Disk = stack(false, make(file.clone(), dir.path())).await;
    let mut model = Model {
        data: initial.clone(),
        unmapped: vec![false; N as usize],
    };

    for op in 0..ops {
        let what = format!("seed {seed} op {op}");
        match rng.random_range(0..100) {
            0..45 => {
                let (s, n) = range(&mut rng, 150);
                let mut buf = vec![0xcd; n as usize * SS];
                if rng.random::<bool>() {
                    disk.read(s, &mut buf).await.unwrap();
                } else {
                    // The owned path: a layer asked for the whole read gets
                    // the buffer by value.
                    let (back, r) = disk.read_owned(s, buf).await;
                    r.unwrap();
                    buf = back;
                }
                model.check_read(s, &buf, &what);
            }
            45..80 => {
                let (s, n) = range(&mut rng, 100);
                let data = bytes(&mut rng, n as usize * SS);
                disk.write(s, &data, rng.random_range(0..4) == 0)
                    .await
                    .unwrap();
                model.data[s as usize * SS..(s + n) as usize * SS].copy_from_slice(&data);
                model.unmapped[s as usize..(s + n) as usize].fill(false);
            }
            80..88 => {
                let (s, n) = range(&mut rng, 200);
                disk.unmap(s, n).await.unwrap();
                model.unmapped[s as usize..(s + n) as usize].fill(true);
            }
            88..90 => disk.sync_cache().await.unwrap(),
            90..95 => {
                // A write racing with reads of its neighbours: the reads'
                // fills cover the written sectors (same fill chunk) and
                // must not clobber them. Reads avoid the written range, so
                // their results are deterministic.
                let (s, n) = range(&mut rng, 8);
                let data = bytes(&mut rng, n as usize * SS);
                let left = s.saturating_sub(1 + rng.random_range(0..40))..s;
                let right = s + n..(s + n + 1 + rng.random_range(0..40)).min(N);
                let w = {
                    let d = disk.clone();
                    let data = data.clone();
                    tokio::spawn(async move { d.write(s, &data, false).await })
                };
                let reads: Vec<_> = [left, right]
                    .into_iter()
                    .filter(|r| !r.is_empty())
                    .map(|r| {
                        let d = disk.clone();
                        let start = r.start;
                        (
                            start,
                            tokio::spawn(async move {
                                let mut buf = vec![0xcd; (r.end - r.start) as usize * SS];
                                d.read(r.start, &mut buf).await.map(|()| buf)
                            }),
                        )
                    })
                    .collect();
                w.await.unwrap().unwrap();
                for (start, t) in reads {
                    let buf = t.await.unwrap().unwrap();
                    model.check_read(start, &buf, &what);
                }
                model.data[s as usize * SS..(s + n) as usize * SS].copy_from_slice(&data);
                model.unmapped[s as usize..(s + n) as usize].fill(false);
            }
            _ => {
                // Concurrent readers on overlapping ranges (no writes in
                // between): exercises single-flight fills.
                let ranges: Vec<(u64, u64)> = (0..4).map(|_| range(&mut rng, 120)).collect();
                let tasks: Vec<_> = ranges
                    .iter()
                    .map(|&(s, n)| {
                        let d = disk.clone();
                        tokio::spawn(async move {
                            let mut buf = vec![0xcd; n as usize * SS];
                            d.read(s, &mut buf).await.map(|()| buf)
                        })
                    })
                    .collect();
                for ((s, _), t) in ranges.into_iter().zip(tasks) {
                    let buf = t.await.unwrap().unwrap();
                    model.check_read(s, &buf, &what);
                }
            }
        }
    }

    let mut all = vec![0; N as usize * SS];
    disk.read(0, &mut all).await.unwrap();
    model.check_read(0, &all, &format!("seed {seed} final"));
    assert!(
        file.contents() == initial,
        "seed {seed}: the bottom file was modified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_over_ram_cache_over_file() {
    for seed in 0..12 {
        run(seed, ram_cache_file, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_over_two_caches_over_file() {
    for seed in 100..112 {
        run(seed, ram_two_caches_file, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_cache_over_file() {
    for seed in 200..212 {
        run(seed, cache_on_top_file, 400).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_over_sqlite_cache_over_file() {
    for seed in 300..308 {
        run(seed, ram_sqlite_cache_file, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_over_ram_cache_over_sqlite_cache_over_file() {
    for seed in 400..406 {
        run(seed, ram_ram_cache_sqlite_cache_file, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writable_sqlite_cache_over_file() {
    for seed in 500..506 {
        run(seed, writable_sqlite_cache_file, 300).await;
    }
}
