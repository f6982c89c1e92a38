//! Benchmark of the SQLite layer: warm sequential reads from a populated
//! cache and cold fill throughput, against reading the image file
//! directly and against a one-row-per-sector SQLite layout (the
//! reference's) implemented here as the baseline.
//!
//! Run: `cargo bench -p disklayer_sqlite` (release). `BENCH_DISK_MIB`
//! changes the disk size (default 512); `BENCH_DIR` the scratch directory
//! (default: a temporary directory); `BENCH_CASES` (comma-separated:
//! direct, stack, stack_owned, stack_hot, layer, base, base_q) limits the warm-read
//! cases, for profiling. Prints a markdown table.

use anyhow::Context;
use disk_backend::Disk;
use disk_layered::DiskLayer;
use disk_layered::LayerConfiguration;
use disk_layered::LayeredDisk;
use disk_test_support::TestDisk;
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::SqliteDiskLayer;
use rand::RngCore;
use rand::SeedableRng;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;
use std::time::Instant;

const SS: u64 = 512;

/// The reference's layout: one row per 512-byte sector (`NULL` for an
/// all-zero sector), one range query per read that collects a `Vec` per
/// sector, and SQLite work on a blocking thread behind one connection
/// mutex: the data path the chunked layout replaces. Written for this
/// bench from the layout's description.
#[derive(Clone)]
struct PerSectorDb {
    conn: std::sync::Arc<parking_lot::Mutex<rusqlite::Connection>>,
}

impl PerSectorDb {
    fn create(path: &Path) -> anyhow::Result<Self> {
        let conn = rusqlite::Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE sectors (sector INTEGER PRIMARY KEY, data BLOB);",
        )?;
        Ok(PerSectorDb {
            conn: std::sync::Arc::new(parking_lot::Mutex::new(conn)),
        })
    }

    /// Inserts `buf` at `sector` without overwriting, one row per sector,
    /// in one transaction.
    async fn write(&self, sector: u64, buf: Vec<u8>) -> anyhow::Result<()> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut conn = conn.lock();
            let tx = conn.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO sectors (sector, data) VALUES (?1, ?2)",
                )?;
                for (i, s) in buf.chunks(SS as usize).enumerate() {
                    let data = (!s.iter().all(|&b| b == 0)).then_some(s);
                    st.execute(rusqlite::params![(sector + i as u64) as i64, data])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?
    }

    /// The same layout read with one query per sector, in one read
    /// transaction, straight into the buffer, on the calling thread: the
    /// pattern "one query per sector" without the reference's other costs.
    fn read_per_sector_query(&self, sector: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached("SELECT data FROM sectors WHERE sector = ?1")?;
            for (i, dst) in buf.chunks_mut(SS as usize).enumerate() {
                st.query_row([(sector + i as u64) as i64], |r| {
                    match r.get_ref(0)?.as_blob_or_null()? {
                        Some(d) => dst.copy_from_slice(d),
                        None => dst.fill(0),
                    }
                    Ok(())
                })?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn read(&self, sector: u64, buf: &mut [u8]) -> anyhow::Result<()> {
        let n = buf.len() as u64 / SS;
        let conn = self.conn.clone();
        let rows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(u64, Option<Vec<u8>>)>> {
            let conn = conn.lock();
            let mut st = conn.prepare_cached(
                "SELECT sector, data FROM sectors WHERE sector >= ?1 AND sector < ?2 ORDER BY sector",
            )?;
            let mut rows = st.query([sector as i64, (sector + n) as i64])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let s: i64 = r.get(0)?;
                out.push((s as u64, r.get_ref(1)?.as_blob_or_null()?.map(<[u8]>::to_vec)));
            }
            Ok(out)
        })
        .await??;
        anyhow::ensure!(rows.len() as u64 == n, "baseline missing sectors");
        for (s, d) in rows {
            let off = (s - sector) as usize * SS as usize;
            let dst = &mut buf[off..off + SS as usize];
            match d {
                Some(d) => dst.copy_from_slice(&d),
                None => dst.fill(0),
            }
        }
        Ok(())
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

fn direct_read(file: &std::fs::File, size: u64, io: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; io];
    let mut off = 0;
    while off < size {
        file.read_exact_at(&mut buf, off)?;
        std::hint::black_box(&buf);
        off += io as u64;
    }
    Ok(())
}

async fn disk_read(disk: &Disk, size: u64, io: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; io];
    let mut off = 0;
    while off < size {
        disk.read(off / SS, &mut buf).await?;
        std::hint::black_box(&buf);
        off += io as u64;
    }
    Ok(())
}

async fn disk_read_owned(disk: &Disk, size: u64, io: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; io];
    let mut off = 0;
    while off < size {
        let (back, r) = disk.read_owned(off / SS, buf).await;
        r?;
        buf = std::hint::black_box(back);
        off += io as u64;
    }
    Ok(())
}

async fn layer_read(layer: &SqliteDiskLayer, size: u64, io: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; io];
    let mut off = 0;
    while off < size {
        let p = layer.read_sectors(off / SS, &mut buf).await?;
        anyhow::ensure!(p.all_present(), "cache is not fully populated");
        std::hint::black_box(&buf);
        off += io as u64;
    }
    Ok(())
}

fn baseline_read_per_query(db: &PerSectorDb, size: u64, io: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; io];
    let mut off = 0;
    while off < size {
        db.read_per_sector_query(off / SS, &mut buf)?;
        std::hint::black_box(&buf);
        off += io as u64;
    }
    Ok(())
}

async fn baseline_read(db: &PerSectorDb, size: u64, io: usize) -> anyhow::Result<()> {
    let mut buf = vec![0u8; io];
    let mut off = 0;
    while off < size {
        db.read(off / SS, &mut buf).await?;
        std::hint::black_box(&buf);
        off += io as u64;
    }
    Ok(())
}

async fn stack(cache_dir: &Path, image: &Path) -> anyhow::Result<Disk> {
    // The image file as the bottom layer (read with `pread`).
    let lower = TestDisk::open(image)?.with_disk_id(*b"bench-disk-id-01");
    let disk = LayeredDisk::new(
        true,
        vec![
            LayerConfiguration::read_cache(DiskLayer::new(AutoCacheSqliteDiskLayer::new(
                cache_dir, None, false,
            ))),
            LayerConfiguration::plain(lower.layer()),
        ],
    )
    .await?;
    Ok(Disk::new(disk)?)
}

async fn run() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("BENCH_DISK_MIB")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("BENCH_DISK_MIB")?
        .unwrap_or(512);
    let size = mib << 20;
    let scratch = match std::env::var_os("BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let image = scratch.path().join("image.raw");
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut chunk = vec![0u8; 1 << 20];
        let mut f = std::io::BufWriter::new(std::fs::File::create(&image)?);
        for _ in 0..mib {
            rng.fill_bytes(&mut chunk);
            std::io::Write::write_all(&mut f, &chunk)?;
        }
        std::io::Write::flush(&mut f)?;
    }
    let file = std::fs::File::open(&image)?;
    // Warm the page cache.
    direct_read(&file, size, 1 << 20)?;

    // Cold fills, ours and the baseline's, interleaved; each pass into a
    // fresh cache. The last caches stay for the warm reads.
    let fill_passes = 2;
    let mut fill = 0f64;
    let mut base_fill = 0f64;
    let mut kept = None;
    for pass in 0..fill_passes {
        let cache_dir = scratch.path().join(format!("cache{pass}"));
        let t = Instant::now();
        let d = stack(&cache_dir, &image).await?;
        disk_read(&d, size, 1 << 20).await?;
        fill = fill.max(mib_s(size, t.elapsed()));
        let counters = d.counters();
        anyhow::ensure!(
            counters.cache_fill_bytes == size,
            "fill incomplete: {counters:?}"
        );

        let base_path = scratch.path().join(format!("per-sector{pass}.db"));
        let db = PerSectorDb::create(&base_path)?;
        let t = Instant::now();
        let mut off = 0;
        while off < size {
            let mut buf = vec![0u8; 1 << 20];
            file.read_exact_at(&mut buf, off)?;
            db.write(off / SS, buf).await?;
            off += 1 << 20;
        }
        base_fill = base_fill.max(mib_s(size, t.elapsed()));
        kept = Some((d, cache_dir, db, base_path));
    }
    let (hot_disk, cache_dir, db, base_path) = kept.context("no fill pass ran")?;
    // The cache as a later process sees it: the filling process closed it
    // (its WAL checkpointed into the file) and it is opened afresh.
    drop(hot_disk);
    let disk = stack(&cache_dir, &image).await?;
    let cache_file = AutoCacheSqliteDiskLayer::new(&cache_dir, None, true)
        .cache_file_path(Some(*b"bench-disk-id-01"))?;
    let layer = SqliteDiskLayer::open(&cache_file, true).await?;
    // And as the filling process sees it right after a fill, with the
    // last fills still in the WAL (a second cache, filled just now).
    let hot_dir = scratch.path().join("cache-hot");
    let hot_disk = stack(&hot_dir, &image).await?;
    disk_read(&hot_disk, size, 1 << 20).await?;

    // Flush every dirty page the fills left, so background writeback does
    // not run during the read measurements.
    sync_tree(scratch.path())?;

    // Warm reads, every measurement once per round, rounds interleaved so
    // that load from other processes hits all of them alike.
    type Case<'a> = (&'a str, usize, Box<dyn FnMut() -> anyhow::Result<()> + 'a>);
    let mut cases: Vec<Case<'_>> = Vec::new();
    for io in [64usize << 10, 1 << 20] {
        let (file, disk, layer, db, hot_disk) = (&file, &disk, &layer, &db, &hot_disk);
        cases.push(("direct", io, Box::new(move || direct_read(file, size, io))));
        cases.push((
            "stack",
            io,
            Box::new(move || futures_block(disk_read(disk, size, io))),
        ));
        cases.push((
            "stack_owned",
            io,
            Box::new(move || futures_block(disk_read_owned(disk, size, io))),
        ));
        cases.push((
            "stack_hot",
            io,
            Box::new(move || futures_block(disk_read(hot_disk, size, io))),
        ));
        cases.push((
            "layer",
            io,
            Box::new(move || futures_block(layer_read(layer, size, io))),
        ));
        cases.push((
            "base",
            io,
            Box::new(move || futures_block(baseline_read(db, size, io))),
        ));
        cases.push((
            "base_q",
            io,
            Box::new(move || baseline_read_per_query(db, size, io)),
        ));
    }
    // BENCH_CASES=stack,layer,... runs only those cases (for profiling).
    if let Ok(only) = std::env::var("BENCH_CASES") {
        let only: Vec<&str> = only.split(',').collect();
        cases.retain(|(n, _, _)| only.contains(n));
    }
    let rounds = 4;
    let mut results = vec![0f64; cases.len()];
    for _ in 0..rounds {
        for (i, (_, _, f)) in cases.iter_mut().enumerate() {
            let t = Instant::now();
            f()?;
            results[i] = results[i].max(mib_s(size, t.elapsed()));
        }
    }
    let get = |name: &str, io: usize| -> f64 {
        cases
            .iter()
            .zip(&results)
            .find(|((n, i, _), _)| *n == name && *i == io)
            .map_or(0.0, |(_, r)| *r)
    };
    anyhow::ensure!(
        disk.counters().cache_miss_bytes == 0 && hot_disk.counters().cache_miss_bytes == size,
        "warm reads went below the cache"
    );

    println!(
        "## disklayer_sqlite benchmark ({mib} MiB disk; reads: best of {rounds} interleaved rounds; fills: best of {fill_passes})\n"
    );
    println!(
        "| measurement | MiB/s | vs direct file read | vs per-sector SQLite (range query, reference data path) | vs per-sector SQLite (one query per sector) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let row = |name: &str, v: f64, direct: f64, base: f64, base_q: f64| {
        println!(
            "| {name} | {v:.0} | {:.2}x | {:.1}x | {:.1}x |",
            v / direct,
            v / base,
            v / base_q
        );
    };
    for (io, label) in [(64usize << 10, "64 KiB"), (1 << 20, "1 MiB")] {
        let (d, b, q) = (get("direct", io), get("base", io), get("base_q", io));
        let r = |name: &str, key: &str| row(name, get(key, io), d, b, q);
        r(
            &format!("warm read {label}, stack [cache, file], async"),
            "stack",
        );
        r(
            &format!("warm read {label}, stack [cache, file], owned buffer (read_owned)"),
            "stack_owned",
        );
        r(
            &format!("warm read {label}, stack, right after filling (WAL not yet checkpointed)"),
            "stack_hot",
        );
        r(
            &format!("warm read {label}, SQLite layer alone, async"),
            "layer",
        );
        r(
            &format!("direct file read {label} (pread, page cache)"),
            "direct",
        );
        r(
            &format!("per-sector SQLite read {label}, range query"),
            "base",
        );
        r(
            &format!("per-sector SQLite read {label}, query per sector"),
            "base_q",
        );
    }
    let d = get("direct", 1 << 20);
    row(
        "cold fill, 1 MiB reads through the stack",
        fill,
        d,
        base_fill,
        base_fill,
    );
    row(
        "per-sector SQLite fill, 1 MiB transactions",
        base_fill,
        d,
        base_fill,
        base_fill,
    );
    println!(
        "\nMachine: {} CPUs, shared with other engineers' builds while this ran.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // File sizes once every connection is closed (the last close
    // checkpoints the WAL into the file and removes it).
    // The read-only handle goes first: a read-only connection closing
    // last cannot checkpoint.
    drop(cases);
    drop(layer);
    drop(disk);
    drop(hot_disk);
    drop(db);
    let cache_size = std::fs::metadata(&cache_file)?.len();
    let base_size = std::fs::metadata(&base_path)?.len();
    println!(
        "Cache file: {cache_size} bytes for {size} data bytes ({:.4}x); per-sector file: {base_size} bytes ({:.4}x).",
        cache_size as f64 / size as f64,
        base_size as f64 / size as f64
    );
    Ok(())
}

/// `fsync`s every regular file under `dir`.
fn sync_tree(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            sync_tree(&e.path())?;
        } else if t.is_file() {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    Ok(())
}

/// Runs a future to completion from inside `best`'s synchronous closure,
/// on the current multi-thread runtime.
fn futures_block<F: Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}
