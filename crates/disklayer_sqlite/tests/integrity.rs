//! The read cache keeps itself healthy: bytes damaged on disk are detected
//! by their checksums and never returned (the chunk is read from below and
//! cached again), a damaged or outdated file is moved aside and replaced,
//! and a writable layer reports damage instead of hiding it.
//!
//! Damage is done to real files, as a bad sector or a stray write would:
//! bytes are flipped in place where the cached data sits in the file.

mod common;

use blob_test_servers::Tmpfs;
use common::cached_stack;
use disk_backend::Disk;
use disk_test_support::random_bytes;
use disk_test_support::write_random_image;
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::FormatParams;
use disklayer_sqlite::SqliteDiskLayer;
use disklayer_sqlite::SqliteLayerError;
use disklayer_sqlite::auto_cache::CACHE_FILE_NAME;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

const ID: [u8; 16] = *b"integrity-disk-1";
const MIB: usize = 1 << 20;

fn cache_file(cache_dir: &Path) -> PathBuf {
    cache_dir
        .join(disklayer_sqlite::auto_cache::hex(&ID))
        .join(CACHE_FILE_NAME)
}

async fn read_all(disk: &Disk) -> Vec<u8> {
    let mut buf = vec![0u8; disk.size_bytes() as usize];
    disk.read(0, &mut buf).await.unwrap();
    buf
}

/// `[auto-cache in cache_dir (read cache), image]`, as every test here
/// opens it, and the count of the image layer's reads.
async fn open(cache_dir: &Path, image: &Path) -> anyhow::Result<(Disk, Arc<AtomicU64>)> {
    cached_stack(
        AutoCacheSqliteDiskLayer::new(cache_dir, None, false),
        image,
        Some(ID),
    )
    .await
}

/// Whether a damaged cache file was moved aside beside `file` (kept for
/// inspection as `cache.dbhd.corrupt-*`).
fn moved_aside(file: &Path) -> bool {
    std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("cache.dbhd.corrupt-")
        })
}

/// A new opener (as the next process would be) reads the whole image
/// from the cache alone and finds no damage: the cache is whole again.
async fn assert_served_from_cache(cache_dir: &Path, image: &Path, data: &[u8], what: &str) {
    let (disk, lower_reads) = open(cache_dir, image).await.unwrap();
    assert!(read_all(&disk).await == data, "{what}");
    assert_eq!(
        lower_reads.load(Ordering::SeqCst),
        0,
        "{what}: read from below, the cache is not whole"
    );
    assert_eq!(disk.counters().cache_damaged_chunks, 0, "{what}");
}

/// Flips `len` bytes of `file` where `needle` (bytes of the image) is
/// stored. Panics if the bytes are not found: the test must damage real
/// cached data.
fn flip_where(file: &Path, needle: &[u8], len: usize) -> u64 {
    let bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the cached bytes are in the file") as u64;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut damaged = vec![0u8; len];
    f.read_exact_at(&mut damaged, at).unwrap();
    for b in &mut damaged {
        *b ^= 0xa5;
    }
    f.write_all_at(&damaged, at).unwrap();
    f.sync_all().unwrap();
    at
}

/// 4 KiB of cached data flipped on disk: a later process reads the right
/// bytes (the chunk comes from below), counts the damage, and repairs the
/// cache, so the process after it reads everything from the cache again.
#[tokio::test]
async fn flipped_cached_bytes_are_never_returned_and_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let cache_dir = dir.path().join("cache");
    let data = write_random_image(&image, 31, 8 * MIB).unwrap();

    // Cold: fill the cache, close it.
    {
        let (disk, _) = open(&cache_dir, &image).await.unwrap();
        assert!(read_all(&disk).await == data);
    }
    // Damage 4 KiB inside chunk 3.
    let off = 3 * MIB + 40 * 1024;
    flip_where(&cache_file(&cache_dir), &data[off..off + 64], 4096);

    // `verify` finds it.
    {
        let layer = SqliteDiskLayer::open(&cache_file(&cache_dir), true)
            .await
            .unwrap();
        let report = layer.verify().await.unwrap();
        assert_eq!(report.damaged_chunks, vec![3], "{report:?}");
        assert!(!report.is_ok());
    }

    // A reader gets the image's bytes, from below for the damaged chunk.
    {
        let (disk, lower_reads) = open(&cache_dir, &image).await.unwrap();
        assert!(read_all(&disk).await == data, "damaged bytes were returned");
        assert!(
            lower_reads.load(Ordering::SeqCst) >= 1,
            "the chunk came from below"
        );
        assert_eq!(disk.counters().cache_damaged_chunks, 1);
    }
    // Repaired: the next process needs nothing from below.
    assert_served_from_cache(&cache_dir, &image, &data, "after the repair").await;
}

/// Small, unaligned reads verify the whole checksum piece they touch: a
/// flipped byte next to (not inside) the bytes asked for is still caught,
/// through a bare layer too (absent sectors read as zero there).
#[tokio::test]
async fn small_reads_verify_the_pieces_they_touch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.dbhd");
    let params = FormatParams {
        logically_read_only: true,
        ..FormatParams::new(4096, 512)
    };
    let layer = SqliteDiskLayer::create(&path, &params).await.unwrap();
    let data = random_bytes(3, 2 * MIB);
    layer.write_sectors(0, &data, false, false).await.unwrap();
    drop(layer);
    // Flip one byte at 8 KiB + 100: piece 2 of chunk 0.
    flip_where(&path, &data[8192 + 100..8192 + 164], 1);

    let layer = SqliteDiskLayer::open(&path, false).await.unwrap();
    // Sector 17 (bytes 8704..9216) lies in the damaged piece, the flipped
    // byte does not: the piece is checked, the sector reported absent.
    let mut one = vec![0xff; 512];
    let p = layer.read_sectors(17, &mut one).await.unwrap();
    assert_eq!(p.present_count(), 0);
    assert!(one.iter().all(|&b| b == 0), "absent sectors read as zero");
    // Sectors in other pieces are fine.
    let mut other = vec![0u8; 512];
    let p = layer.read_sectors(40, &mut other).await.unwrap();
    assert!(p.all_present());
    assert!(other == data[40 * 512..41 * 512]);
    assert_eq!(layer.cache_counters().cache_damaged_chunks, 1);
}

/// A writable layer's data has no other copy: damage is an error naming
/// the file, never bytes that differ from what was written.
#[tokio::test]
async fn damage_in_a_writable_layer_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.dbhd");
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(4096, 512))
        .await
        .unwrap();
    let data = random_bytes(4, MIB);
    layer.write_sectors(0, &data, true, false).await.unwrap();
    drop(layer);
    flip_where(&path, &data[MIB / 2..MIB / 2 + 64], 16);

    let layer = SqliteDiskLayer::open(&path, false).await.unwrap();
    let mut buf = vec![0u8; MIB];
    let err = layer.read_sectors(0, &mut buf).await.unwrap_err();
    assert!(matches!(err, SqliteLayerError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("w.dbhd"), "{err}");
    // Writing into the damaged piece does not launder it either.
    let err = layer
        .write_sectors((MIB / 2 / 512) as u64, &[0u8; 512], true, false)
        .await
        .unwrap_err();
    assert!(matches!(err, SqliteLayerError::Corrupt { .. }), "{err:?}");
}

/// Garbage, empty and half-truncated cache files are moved aside (kept
/// for inspection) and replaced by a fresh cache; the disk opens and reads
/// the image.
#[tokio::test]
async fn unusable_cache_files_are_moved_aside_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let data = write_random_image(&image, 32, 4 * MIB).unwrap();
    for (what, damage) in [
        (
            "garbage",
            Box::new(|f: &Path| std::fs::write(f, vec![0x5au8; 200_000]).unwrap())
                as Box<dyn Fn(&Path)>,
        ),
        (
            "empty",
            Box::new(|f: &Path| std::fs::write(f, b"").unwrap()),
        ),
        (
            "truncated",
            Box::new(|f: &Path| {
                let len = std::fs::metadata(f).unwrap().len();
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .unwrap()
                    .set_len(len / 2)
                    .unwrap();
            }),
        ),
    ] {
        let cache_dir = dir.path().join(format!("cache-{what}"));
        {
            let (disk, _) = open(&cache_dir, &image).await.unwrap();
            assert!(read_all(&disk).await == data);
        }
        damage(&cache_file(&cache_dir));
        let (disk, _) = open(&cache_dir, &image)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(read_all(&disk).await == data, "{what}");
        drop(disk);
        assert!(
            moved_aside(&cache_file(&cache_dir)),
            "{what}: the damaged file is kept aside"
        );
        // The new file is whole: a further process reads it all.
        assert_served_from_cache(&cache_dir, &image, &data, what).await;
    }
}

/// Builds a file of the format before checksums (version 1: no `sums`).
fn write_v1_file(path: &Path, logically_read_only: bool, data: &[u8]) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA page_size=65536; PRAGMA auto_vacuum=INCREMENTAL;
         PRAGMA application_id={}; PRAGMA user_version=1;
         CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value ANY);
         CREATE TABLE chunks (idx INTEGER PRIMARY KEY, present BLOB, data BLOB NOT NULL);
         INSERT INTO meta VALUES ('magic', 'disklayer_sqlite'), ('format_version', 1),
           ('sector_count', {}), ('sector_size', 512), ('chunk_size', 1048576),
           ('logically_read_only', {}), ('disk_id', NULL);
         PRAGMA journal_mode=WAL;",
        0x444c_5351,
        data.len() / 512,
        i64::from(logically_read_only),
    ))
    .unwrap();
    for (i, chunk) in data.chunks(MIB).enumerate() {
        conn.execute(
            "INSERT INTO chunks (idx, present, data) VALUES (?1, NULL, ?2)",
            rusqlite::params![i as i64, chunk],
        )
        .unwrap();
    }
}

/// A writable layer of the format before checksums is upgraded in place
/// (its data kept, now checksummed); opened read-only it is refused with
/// an error that says what to do.
#[tokio::test]
async fn writable_layers_of_the_old_format_are_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.dbhd");
    let data = random_bytes(9, 3 * MIB);
    write_v1_file(&path, false, &data);

    let err = SqliteDiskLayer::open(&path, true).await.unwrap_err();
    assert!(
        matches!(err, SqliteLayerError::OutdatedFormat { version: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("read-write once"), "{err}");

    let layer = SqliteDiskLayer::open(&path, false).await.unwrap();
    let mut buf = vec![0u8; data.len()];
    assert!(layer.read_sectors(0, &mut buf).await.unwrap().all_present());
    assert!(buf == data);
    assert!(layer.verify().await.unwrap().is_ok());
    drop(layer);
    // Now readable read-only too.
    SqliteDiskLayer::open(&path, true).await.unwrap();
}

/// A read cache of the format before checksums is never trusted: the
/// auto-cache replaces it with a fresh one and reads come from below.
#[tokio::test]
async fn read_caches_of_the_old_format_are_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let data = write_random_image(&image, 33, 2 * MIB).unwrap();
    let cache_dir = dir.path().join("cache");
    let file = cache_file(&cache_dir);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    // Old cached bytes that differ from the image: they must not be served.
    write_v1_file(&file, true, &vec![0xee; data.len()]);

    let (disk, lower_reads) = open(&cache_dir, &image).await.unwrap();
    assert!(read_all(&disk).await == data);
    assert!(lower_reads.load(Ordering::SeqCst) > 0);
}

/// Damaged SQLite pages (512 bytes flipped in one of the first pages:
/// schema, metadata or the chunk index): whether SQLite notices at open or
/// during a read, the reader gets the image's bytes, the file is moved
/// aside, and the next process gets a fresh, working cache.
#[tokio::test]
async fn damaged_index_pages_do_not_stop_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let data = write_random_image(&image, 34, 8 * MIB).unwrap();
    // Pages 3, 4 and 5 (offsets 2, 3 and 4 x 64 KiB) hold the metadata
    // table, its index and the chunk index's root.
    let mut set_aside_count = 0;
    for page in [2u64, 3, 4] {
        let cache_dir = dir.path().join(format!("cache-{page}"));
        {
            let (disk, _) = open(&cache_dir, &image).await.unwrap();
            assert!(read_all(&disk).await == data);
        }
        let file = cache_file(&cache_dir);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        // The end of a page, where SQLite keeps its cells.
        let at = page * 65536 + 65536 - 512;
        let mut bytes = vec![0u8; 512];
        f.read_exact_at(&mut bytes, at).unwrap();
        for b in &mut bytes {
            *b = !*b;
        }
        f.write_all_at(&bytes, at).unwrap();
        drop(f);

        let (disk, _) = open(&cache_dir, &image)
            .await
            .unwrap_or_else(|e| panic!("page {page}: {e:#}"));
        assert!(read_all(&disk).await == data, "page {page}");
        drop(disk);
        let set_aside = moved_aside(&file);
        // Damage SQLite never reads (free space in a page) may go
        // unnoticed; damage it reads must not stop the disk. Either way
        // the next process reads the image.
        set_aside_count += usize::from(set_aside);
        let (disk, _) = open(&cache_dir, &image).await.unwrap();
        assert!(read_all(&disk).await == data, "page {page}");
        drop(disk);
        if set_aside {
            let what = format!("page {page}: the fresh cache");
            assert_served_from_cache(&cache_dir, &image, &data, &what).await;
        }
    }
    assert!(set_aside_count > 0, "the damage must be noticed somewhere");
}

/// Damage SQLite finds only when a read reaches it (a chunk row's cell in
/// the middle of the file): that read and every later one in the process
/// come from below, the file is moved aside, and the next process starts a
/// fresh cache.
#[tokio::test]
async fn damage_found_during_a_read_switches_to_the_layer_below() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let cache_dir = dir.path().join("cache");
    let data = write_random_image(&image, 35, 32 * MIB).unwrap();
    {
        let (disk, _) = open(&cache_dir, &image).await.unwrap();
        assert!(read_all(&disk).await == data);
    }
    // Chunk 15's row: its cell holds the record header (column types:
    // ..., sums a 2048-byte BLOB `a0 0c`, data a 1 MiB BLOB `81 80 80 0c`),
    // the 2 KiB of checksums, then the first bytes of its data. Make the
    // header claim 2049 bytes of checksums: the row no longer adds up,
    // which SQLite (or the row check) finds only when the row is read;
    // opening the file reads other rows.
    let file = cache_file(&cache_dir);
    let bytes = std::fs::read(&file).unwrap();
    let needle = &data[15 * MIB..15 * MIB + 64];
    let at = bytes
        .windows(64)
        .position(|w| w == needle)
        .expect("chunk 15 is in the file");
    assert_eq!(
        &bytes[at - 2048 - 6..at - 2048],
        &[0xa0, 0x0c, 0x81, 0x80, 0x80, 0x0c]
    );
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.write_all_at(&[0x0e], (at - 2048 - 5) as u64).unwrap();
    drop(f);

    let (disk, _) = open(&cache_dir, &image).await.unwrap();
    // 1 MiB at a time: the chunks before the damaged one come from the
    // file (it opened fine), the rest from below.
    let mut got = vec![0u8; data.len()];
    for (i, piece) in got.chunks_mut(MIB).enumerate() {
        disk.read((i * MIB / 512) as u64, piece).await.unwrap();
    }
    assert!(got == data, "the reader gets the image");
    assert_eq!(disk.counters().cache_hit_bytes, 15 * MIB as u64);
    drop(disk);
    assert!(moved_aside(&file));
    let (disk, _) = open(&cache_dir, &image).await.unwrap();
    assert!(read_all(&disk).await == data);
    drop(disk);
    assert_served_from_cache(&cache_dir, &image, &data, "a fresh, full cache").await;
}

/// A cache on a file system that fills up: once a fill fails, fills pause
/// and misses are read from below exactly as asked (no widened chunks that
/// could not be kept), so a pass fetches about what it reads; every byte
/// is still right.
#[tokio::test]
async fn a_full_file_system_pauses_fills_instead_of_refetching() {
    let Some(fs) = Tmpfs::mount("6m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let data = write_random_image(&image, 36, 24 * MIB).unwrap();
    let cache_dir = fs.path().join("cache");
    let (disk, lower_reads) = open(&cache_dir, &image).await.unwrap();
    // 64 KiB reads: with widened 1 MiB fills that fail, every read would
    // fetch a whole chunk again. The first half (twice what the file
    // system holds) makes fills fail; the sync waits for the queued fills,
    // so the pause has begun before the second half is read.
    let mut got = vec![0u8; data.len()];
    let half = data.len() / 2;
    let piece = 64 * 1024;
    for (i, buf) in got[..half].chunks_mut(piece).enumerate() {
        disk.read((i * piece / 512) as u64, buf).await.unwrap();
    }
    // The sync's own result does not matter (the file system is full).
    let _ = disk.sync_cache().await;
    let reads_before = lower_reads.load(Ordering::SeqCst);
    for (i, buf) in got[half..].chunks_mut(piece).enumerate() {
        disk.read(((half + i * piece) / 512) as u64, buf)
            .await
            .unwrap();
    }
    assert!(got == data);
    let c = disk.counters();
    // At most the ~6 MiB that fit (in whole chunks) plus the 64 KiB reads
    // after the pause began, and one chunk in flight when the fill failed.
    assert!(
        c.cache_miss_bytes <= data.len() as u64 + 4 * MIB as u64,
        "fetched {} for {} read",
        c.cache_miss_bytes,
        data.len()
    );
    // With fills paused, each 64 KiB miss of the second half is read as
    // asked (192 of them), not widened to 12 whole chunks.
    let second_half_reads = lower_reads.load(Ordering::SeqCst) - reads_before;
    assert!(
        second_half_reads >= (half / piece) as u64,
        "misses were read in chunks ({second_half_reads} reads for the second half)"
    );
}
