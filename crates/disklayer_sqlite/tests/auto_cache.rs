//! The auto-cache: persistence across processes, 16 processes racing to
//! create and fill one cache, geometry checks, directory problems and
//! hostile keys.
//!
//! Child processes are this test binary run again with
//! `AUTO_CACHE_CHILD` set, executing one of the `child_*` tests with
//! `--ignored --exact` (they are ignored in an ordinary run and fail if run
//! without their parent).

mod common;

use common::cached_stack;
use common::child;
use common::list_files;
use common::lower;
use disk_layered::LayerAttach;
use disk_layered::LowerLayerMetadata;
use disk_test_support::write_random_image;
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::SqliteDiskLayer;
use disklayer_sqlite::SqliteLayerError;
use disklayer_sqlite::auto_cache::CACHE_FILE_NAME;
use disklayer_sqlite::auto_cache::format_atomically;
use disklayer_sqlite::auto_cache::key_dir_name;
use std::io::Read;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;

const ID: [u8; 16] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0xff,
];
const ID_HEX: &str = "000102030405060708090a0b0c0d0eff";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the whole disk in 64 KiB pieces, in an order that depends on
/// `salt`, and checks it against the image.
async fn read_all_and_check(disk: &disk_backend::Disk, image: &[u8], salt: u64) {
    let pieces = image.len() / 65536;
    for i in 0..pieces {
        let p = (i * 7 + salt as usize * 5) % pieces;
        let mut buf = vec![0u8; 65536];
        disk.read((p * 128) as u64, &mut buf).await.unwrap();
        assert!(
            buf == image[p * 65536..(p + 1) * 65536],
            "piece {p} differs"
        );
    }
}

/// A populated cache serves every sector in a new process without one
/// read of the lower layer.
#[tokio::test]
async fn persistence_in_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let cache_dir = dir.path().join("cache");
    let data = write_random_image(&image, 77, 4 << 20).unwrap();

    let (disk, reads) = cached_stack(
        AutoCacheSqliteDiskLayer::new(&cache_dir, None, false),
        &image,
        Some(ID),
    )
    .await
    .unwrap();
    read_all_and_check(&disk, &data, 0).await;
    assert!(reads.load(Ordering::SeqCst) > 0);
    assert!(disk.counters().cache_fill_bytes >= data.len() as u64);
    drop(disk);
    assert!(cache_dir.join(ID_HEX).join(CACHE_FILE_NAME).is_file());

    let out = child(
        "child_persistence",
        &[
            ("AUTO_CACHE_CHILD", "persistence"),
            ("AUTO_CACHE_DIR", cache_dir.to_str().unwrap()),
            ("AUTO_CACHE_IMAGE", image.to_str().unwrap()),
        ],
    )
    .arg("--ignored")
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("CHILD-OK lower_reads=0"), "{stdout}");
}

#[tokio::test]
#[ignore = "child process of persistence_in_a_new_process; run by it"]
async fn child_persistence() {
    assert_eq!(
        env("AUTO_CACHE_CHILD").as_deref(),
        Some("persistence"),
        "a child process of persistence_in_a_new_process, which runs it"
    );
    let cache_dir = PathBuf::from(env("AUTO_CACHE_DIR").unwrap());
    let image = PathBuf::from(env("AUTO_CACHE_IMAGE").unwrap());
    let data = std::fs::read(&image).unwrap();
    // Read-only: the cache must already be there.
    let (disk, reads) = cached_stack(
        AutoCacheSqliteDiskLayer::new(&cache_dir, None, true),
        &image,
        Some(ID),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; data.len()];
    disk.read(0, &mut buf).await.unwrap();
    assert!(buf == data, "cached contents differ from the image");
    read_all_and_check(&disk, &data, 3).await;
    let c = disk.counters();
    assert_eq!(c.cache_miss_bytes, 0);
    assert_eq!(c.cache_hit_bytes, 2 * data.len() as u64);
    println!("CHILD-OK lower_reads={}", reads.load(Ordering::SeqCst));
}

/// 16 processes race to create and fill the same auto-cache.
#[tokio::test]
async fn sixteen_processes_race_on_one_cache() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let cache_dir = dir.path().join("cache");
    let data = write_random_image(&image, 99, 8 << 20).unwrap();

    let mut children = Vec::new();
    for i in 0..16 {
        let salt = i.to_string();
        let c = child(
            "child_race",
            &[
                ("AUTO_CACHE_CHILD", "race"),
                ("AUTO_CACHE_DIR", cache_dir.to_str().unwrap()),
                ("AUTO_CACHE_IMAGE", image.to_str().unwrap()),
                ("AUTO_CACHE_SALT", &salt),
            ],
        )
        .arg("--ignored")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        children.push(c);
    }
    // Start line: every child waits for a byte on stdin, so they all hit
    // the empty cache directory together.
    for c in &mut children {
        c.stdin.take().unwrap().write_all(b"g").unwrap();
    }
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK"),
            "child {i} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Exactly one key directory with exactly one cache file (plus SQLite's
    // -wal/-shm companions if any), and no temporary directories left.
    let entries: Vec<_> = list_files(&cache_dir)
        .into_iter()
        .map(|p| p.strip_prefix(&cache_dir).unwrap().to_path_buf())
        .collect();
    let db_files: Vec<_> = entries
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == CACHE_FILE_NAME))
        .collect();
    assert_eq!(
        db_files,
        vec![&Path::new(ID_HEX).join(CACHE_FILE_NAME)],
        "{entries:?}"
    );
    assert!(
        entries
            .iter()
            .all(|p| p.starts_with(ID_HEX) && !p.to_string_lossy().contains(".tmp-")),
        "{entries:?}"
    );

    let layer = SqliteDiskLayer::open(&cache_dir.join(ID_HEX).join(CACHE_FILE_NAME), true)
        .await
        .unwrap();
    let mut buf = vec![0u8; data.len()];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert!(p.all_present());
    assert!(buf == data, "cache contents differ from the image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of sixteen_processes_race_on_one_cache; run by it"]
async fn child_race() {
    assert_eq!(
        env("AUTO_CACHE_CHILD").as_deref(),
        Some("race"),
        "a child process of sixteen_processes_race_on_one_cache, which runs it"
    );
    let mut go = [0u8; 1];
    std::io::stdin().read_exact(&mut go).unwrap();
    let cache_dir = PathBuf::from(env("AUTO_CACHE_DIR").unwrap());
    let image = PathBuf::from(env("AUTO_CACHE_IMAGE").unwrap());
    let salt: u64 = env("AUTO_CACHE_SALT").unwrap().parse().unwrap();
    let data = std::fs::read(&image).unwrap();
    let (disk, _) = cached_stack(
        AutoCacheSqliteDiskLayer::new(&cache_dir, None, false),
        &image,
        Some(ID),
    )
    .await
    .unwrap();
    read_all_and_check(&disk, &data, salt).await;
    // Again, now from whatever mix of fills landed.
    read_all_and_check(&disk, &data, salt + 1).await;
    println!("CHILD-OK");
}

#[tokio::test]
async fn geometry_mismatch_names_both_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutoCacheSqliteDiskLayer::new(dir.path(), Some("img".into()), false);
    cache.open_for(&lower(1000, None)).await.unwrap();
    let err = cache.open_for(&lower(2000, None)).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SqliteLayerError::GeometryMismatch { .. }),
        "{msg}"
    );
    assert!(msg.contains("1000 sectors of 512 bytes"), "{msg}");
    assert!(msg.contains("2000 sectors of 512 bytes"), "{msg}");
    assert!(
        msg.contains(
            &dir.path()
                .join("img")
                .join(CACHE_FILE_NAME)
                .display()
                .to_string()
        ),
        "{msg}"
    );

    // Same key, other disk id: also refused.
    let with_id = AutoCacheSqliteDiskLayer::new(dir.path(), Some("img2".into()), false);
    with_id.open_for(&lower(1000, Some(ID))).await.unwrap();
    let mut other = ID;
    other[0] = 0x77;
    let err = with_id
        .open_for(&lower(1000, Some(other)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SqliteLayerError::DiskIdMismatch { .. }),
        "{err}"
    );

    // Through the layer trait.
    let err = AutoCacheSqliteDiskLayer::new(dir.path(), Some("img".into()), false)
        .attach(Some(LowerLayerMetadata {
            sector_count: 1000,
            sector_size: 4096,
            physical_sector_size: 4096,
            disk_id: None,
        }))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("1000 sectors of 4096 bytes"),
        "{err}"
    );
    let err = AutoCacheSqliteDiskLayer::new(dir.path(), Some("img".into()), false)
        .attach(None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs a layer below"), "{err}");
}

#[tokio::test]
async fn no_key_and_no_disk_id_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutoCacheSqliteDiskLayer::new(dir.path().join("c"), None, false);
    let err = cache.open_for(&lower(100, None)).await.unwrap_err();
    assert!(matches!(err, SqliteLayerError::NoCacheKey));
    assert!(err.to_string().contains("no disk id"), "{err}");
    assert!(!dir.path().join("c").exists(), "nothing created");
}

#[tokio::test]
async fn read_only_never_creates() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("c");
    let ro = AutoCacheSqliteDiskLayer::new(&cache_dir, None, true);
    let err = ro.open_for(&lower(100, Some(ID))).await.unwrap_err();
    assert!(
        matches!(err, SqliteLayerError::ReadOnlyMissing { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("never creates"), "{err}");
    assert!(!cache_dir.exists());

    AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
        .open_for(&lower(100, Some(ID)))
        .await
        .unwrap();
    let layer = ro.open_for(&lower(100, Some(ID))).await.unwrap();
    assert!(layer.is_opened_read_only());
}

#[tokio::test]
async fn directories_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("a").join("cache");
    AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
        .open_for(&lower(100, Some(ID)))
        .await
        .unwrap();
    for d in [cache_dir.clone(), cache_dir.join(ID_HEX)] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} has mode {mode:o}", d.display());
    }
    let mode = std::fs::metadata(cache_dir.join(ID_HEX).join(CACHE_FILE_NAME))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode & 0o077, 0, "cache file mode {mode:o}");
}

#[tokio::test]
async fn unusable_directories_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // The cache directory is a regular file (tests run as root, so
    // permission bits would not stop us).
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = AutoCacheSqliteDiskLayer::new(&file, None, false)
        .open_for(&lower(100, Some(ID)))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SqliteLayerError::Io { .. }), "{msg}");
    assert!(
        msg.contains("not-a-dir") && msg.contains("cache directory"),
        "{msg}"
    );

    // The key directory is a regular file.
    let cache_dir = dir.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    std::fs::write(cache_dir.join(ID_HEX), b"x").unwrap();
    let err = AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
        .open_for(&lower(100, Some(ID)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(ID_HEX), "{err}");

    // A cache "file" that is a directory, or a garbage file: not served;
    // moved aside (kept for inspection) and replaced by a fresh cache.
    for (name, make) in [
        (
            "cache2",
            Box::new(|p: &Path| std::fs::create_dir_all(p).unwrap()) as Box<dyn Fn(&Path)>,
        ),
        (
            "cache3",
            Box::new(|p: &Path| std::fs::write(p, vec![7u8; 70000]).unwrap()),
        ),
    ] {
        let cache_dir = dir.path().join(name);
        std::fs::create_dir_all(cache_dir.join(ID_HEX)).unwrap();
        make(&cache_dir.join(ID_HEX).join(CACHE_FILE_NAME));
        let layer = AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
            .open_for(&lower(100, Some(ID)))
            .await
            .unwrap();
        assert_eq!(
            layer.stats().await.unwrap(),
            (0, 0),
            "{name}: a fresh cache"
        );
        let aside: Vec<_> = list_files(&cache_dir.join(ID_HEX))
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("cache.dbhd.corrupt-"))
            })
            .collect();
        assert_eq!(aside.len(), 1, "{name}: the old one is kept aside");
    }
}

#[tokio::test]
async fn hostile_keys_stay_inside_the_cache_dir() {
    let outer = tempfile::tempdir().unwrap();
    let cache_dir = outer.path().join("cache");
    std::fs::create_dir(&cache_dir).unwrap();
    let image = outer.path().join("image.raw");
    let data = write_random_image(&image, 5, 1 << 20).unwrap();
    let outside = |p: &PathBuf| !p.starts_with(&cache_dir) || *p == cache_dir;
    let before: Vec<_> = list_files(outer.path())
        .into_iter()
        .filter(outside)
        .collect();

    let hostile = [
        "../x",
        "../../etc/evil",
        "/abs",
        "/tmp/abs-key",
        ".",
        "..",
        "a/b",
        "a\\b",
        "key\0nul",
        "sha256-0000",
        "~",
        "x".repeat(5000).leak() as &str,
    ];
    let mut names = std::collections::HashSet::new();
    for key in hostile {
        let cache = AutoCacheSqliteDiskLayer::new(&cache_dir, Some(key.to_string()), false);
        let path = cache.cache_file_path(None).unwrap();
        let name = key_dir_name(Some(key), None).unwrap();
        assert_eq!(path, cache_dir.join(&name).join(CACHE_FILE_NAME), "{key:?}");
        assert!(names.insert(name), "two keys share a directory");
        let (disk, _) = cached_stack(cache, &image, None).await.unwrap();
        let mut buf = vec![0u8; 65536];
        disk.read(0, &mut buf).await.unwrap();
        assert_eq!(buf, data[..65536]);
    }
    // An ordinary key is used as is.
    let cache = AutoCacheSqliteDiskLayer::new(&cache_dir, Some("ubuntu-24.04.vhd".into()), false);
    assert_eq!(
        cache.cache_file_path(None).unwrap(),
        cache_dir.join("ubuntu-24.04.vhd").join(CACHE_FILE_NAME)
    );
    // An empty key is an error.
    let err = AutoCacheSqliteDiskLayer::new(&cache_dir, Some(String::new()), false)
        .open_for(&lower(2048, None))
        .await
        .unwrap_err();
    assert!(matches!(err, SqliteLayerError::InvalidKey(_)), "{err}");

    // Nothing appeared outside the cache directory.
    let after: Vec<_> = list_files(outer.path())
        .into_iter()
        .filter(outside)
        .collect();
    assert_eq!(before, after);
    assert!(!Path::new("/abs").exists() && !Path::new("/tmp/abs-key").exists());
    // Every key directory is a direct child of the cache directory.
    for p in std::fs::read_dir(&cache_dir).unwrap() {
        let p = p.unwrap().path();
        assert!(p.join(CACHE_FILE_NAME).is_file(), "{}", p.display());
    }
}

/// The losing side of the creation race keeps the winner's file.
#[tokio::test]
async fn atomic_format_keeps_the_winners_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("layer.dbhd");
    let mut params = disklayer_sqlite::FormatParams::new(64, 512);
    params.chunk_size = 8192;
    assert!(format_atomically(&file, &params).await.unwrap());
    let winner = SqliteDiskLayer::open(&file, false).await.unwrap();
    winner
        .write_sectors(0, &[0x11; 512], true, false)
        .await
        .unwrap();
    // A second creator with other parameters loses and changes nothing.
    let mut other = params.clone();
    other.sector_count = 128;
    assert!(!format_atomically(&file, &other).await.unwrap());
    let layer = SqliteDiskLayer::open(&file, true).await.unwrap();
    assert_eq!(layer.geometry().sector_count, 64);
    let mut buf = [0u8; 512];
    assert!(layer.read_sectors(0, &mut buf).await.unwrap().all_present());
    assert_eq!(buf, [0x11; 512]);
    // No temporary directories are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".tmp-")),
        "{names:?}"
    );
}

/// Tasks of one process racing to create the same auto-cache (each open
/// prepares the file on a thread of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_race_to_create() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let cache_dir = cache_dir.clone();
            tokio::spawn(async move {
                AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
                    .open_for(&lower(4096, Some(ID)))
                    .await
                    .map(|l| l.geometry())
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap().sector_count, 4096);
    }
    let entries = list_files(&cache_dir);
    assert!(
        entries
            .iter()
            .all(|p| !p.to_string_lossy().contains(".tmp-")),
        "{entries:?}"
    );
}

/// Temporary directories left by a crashed creator are removed once old;
/// fresh ones (a creator at work) are left alone.
#[tokio::test]
async fn stale_temp_dirs_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let key_dir = cache_dir.join(ID_HEX);
    std::fs::create_dir_all(key_dir.join(".tmp-crashed")).unwrap();
    std::fs::write(key_dir.join(".tmp-crashed").join(CACHE_FILE_NAME), b"half").unwrap();
    std::fs::create_dir_all(key_dir.join(".tmp-busy")).unwrap();
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::open(key_dir.join(".tmp-crashed"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
        .open_for(&lower(100, Some(ID)))
        .await
        .unwrap();
    assert!(!key_dir.join(".tmp-crashed").exists());
    assert!(key_dir.join(".tmp-busy").exists());
    assert!(key_dir.join(CACHE_FILE_NAME).is_file());
}
