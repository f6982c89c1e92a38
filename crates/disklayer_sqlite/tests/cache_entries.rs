//! The cache directory keeps itself usable and bounded: a read-only
//! directory or file serves the cache it holds (read-only, with one
//! warning), a size limit removes the least recently used entries but
//! never one that a process has open or the one being opened, and damaged
//! files kept aside go first.
//!
//! Real file systems where it matters: a tmpfs remounted read-only, a
//! read-only bind mount over one file (root only; outside CI the test
//! prints why it skips). Another process holding an entry is this test
//! binary run again with `CACHE_ENTRIES_CHILD` set, executing
//! `child_hold_entry` (ignored in an ordinary run).

mod common;

use blob_test_servers::ReadOnlyFile;
use blob_test_servers::Tmpfs;
use blob_test_servers::captured_logs;
use blob_test_servers::error_chain;
use common::cached_stack;
use common::child;
use common::lower;
use disk_backend::Disk;
use disk_test_support::random_bytes;
use disk_test_support::write_random_image;
use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::SqliteDiskLayer;
use disklayer_sqlite::auto_cache::CACHE_FILE_NAME;
use disklayer_sqlite::auto_cache::hex;
use disklayer_sqlite::cache_entries::ENTRY_LOCK_NAME;
use disklayer_sqlite::cache_entries::EntryInfo;
use disklayer_sqlite::cache_entries::enforce_limit;
use disklayer_sqlite::cache_entries::list_entries;
use disklayer_sqlite::cache_entries::read_info;
use disklayer_sqlite::cache_entries::remove_entry;
use disklayer_sqlite::cache_entries::tree_size;
use std::io::BufRead;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::SystemTime;

const ID: [u8; 16] = *b"cache-entries-id";
const MIB: usize = 1 << 20;
/// Sectors of the disks the entries of the limit tests cache (8 MiB).
const SECTORS: u64 = 16384;

/// The warnings logged so far that mention `about`.
fn warnings_about(about: &Path) -> Vec<String> {
    captured_logs().warnings_with(&about.display().to_string())
}

async fn read_all(disk: &Disk) -> Vec<u8> {
    let mut buf = vec![0u8; disk.size_bytes() as usize];
    for (i, piece) in buf.chunks_mut(256 * 1024).enumerate() {
        disk.read((i * 512) as u64, piece).await.unwrap();
    }
    buf
}

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}

/// A read-only directory holding a complete cache: the disk reads every
/// byte from it without touching the layer below, with one warning that
/// names the directory and why; a partial cache serves what it has and
/// passes the rest through without keeping it.
#[tokio::test]
async fn a_read_only_directory_serves_the_cache_it_holds() {
    captured_logs();
    let Some(fs) = Tmpfs::mount("32m") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let data = write_random_image(&image, 1, 4 * MIB).unwrap();
    let other_image = dir.path().join("other.raw");
    let other = write_random_image(&other_image, 2, 4 * MIB).unwrap();
    let cache_dir = fs.path().join("cache");
    let cache = || AutoCacheSqliteDiskLayer::new(&cache_dir, None, false);
    const OTHER: [u8; 16] = *b"other-disk-id-01";

    // A complete cache of one image, the first half of another.
    let (disk, _) = cached_stack(cache(), &image, Some(ID)).await.unwrap();
    assert!(read_all(&disk).await == data);
    drop(disk);
    let (disk, _) = cached_stack(cache(), &other_image, Some(OTHER))
        .await
        .unwrap();
    let mut half = vec![0u8; 2 * MIB];
    disk.read(0, &mut half).await.unwrap();
    drop(disk);
    let file = cache_dir.join(hex(&ID)).join(CACHE_FILE_NAME);
    let file_hash = sha(&std::fs::read(&file).unwrap());

    fs.remount_read_only();
    let (disk, lower_reads) = cached_stack(cache(), &image, Some(ID)).await.unwrap();
    assert_eq!(sha(&read_all(&disk).await), sha(&data));
    assert_eq!(lower_reads.load(Ordering::SeqCst), 0, "all from the cache");
    drop(disk);
    let warnings = warnings_about(&cache_dir);
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("used read-only") && warnings[0].contains("Read-only file system"),
        "{warnings:#?}"
    );

    // The partial cache: hits for the first half; the rest is read from
    // below each time (nothing can be kept) and as asked (not widened).
    let (disk, lower_reads) = cached_stack(cache(), &other_image, Some(OTHER))
        .await
        .unwrap();
    assert_eq!(sha(&read_all(&disk).await), sha(&other));
    let first = lower_reads.load(Ordering::SeqCst);
    assert_eq!(first, 8, "the missing half in 256 KiB reads");
    assert_eq!(sha(&read_all(&disk).await), sha(&other));
    assert_eq!(lower_reads.load(Ordering::SeqCst), 2 * first);
    assert_eq!(disk.counters().cache_hit_bytes, 2 * 2 * MIB as u64);
    drop(disk);
    assert_eq!(sha(&std::fs::read(&file).unwrap()), file_hash);
}

/// A read-only directory without a cache for the disk: opening fails
/// with an error that names the directory and the reason (the opener of
/// the stack decides whether to go on uncached).
#[tokio::test]
async fn a_read_only_directory_without_a_cache_is_an_error_naming_it() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    std::fs::create_dir(fs.path().join("cache")).unwrap();
    fs.remount_read_only();
    for cache_dir in [fs.path().join("cache"), fs.path().join("missing")] {
        let err = AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
            .open_for(&lower(SECTORS, Some(ID)))
            .await
            .unwrap_err();
        let text = error_chain(&err);
        assert!(
            text.contains(&cache_dir.display().to_string())
                && text.contains("Read-only file system"),
            "{text}"
        );
    }
}

/// A cache left with transactions in its WAL (a process was killed) in a
/// directory that is now read-only: SQLite could read it only through a
/// `-shm` index it cannot create, and reading the file alone would miss
/// those transactions, so opening fails and says why.
#[tokio::test]
async fn a_read_only_cache_with_an_unfinished_wal_is_refused() {
    let Some(fs) = Tmpfs::mount("16m") else {
        return;
    };
    let live_dir = tempfile::tempdir().unwrap();
    let live = AutoCacheSqliteDiskLayer::new(live_dir.path(), None, false)
        .open_for(&lower(SECTORS, Some(ID)))
        .await
        .unwrap();
    live.write_sectors(0, &random_bytes(3, MIB), false, false)
        .await
        .unwrap();
    // Copied while it is open: the file and a WAL with frames, no index.
    let key_dir = fs.path().join("cache").join(hex(&ID));
    std::fs::create_dir_all(&key_dir).unwrap();
    let src = live_dir.path().join(hex(&ID)).join(CACHE_FILE_NAME);
    let dst = key_dir.join(CACHE_FILE_NAME);
    std::fs::copy(&src, &dst).unwrap();
    let wal_len = std::fs::copy(
        format!("{}-wal", src.display()),
        format!("{}-wal", dst.display()),
    )
    .unwrap();
    assert!(wal_len > 0);
    drop(live);
    fs.remount_read_only();
    let err = AutoCacheSqliteDiskLayer::new(fs.path().join("cache"), None, false)
        .open_for(&lower(SECTORS, Some(ID)))
        .await
        .unwrap_err();
    let text = error_chain(&err);
    assert!(
        text.contains("-wal") && text.contains("cannot be written"),
        "{text}"
    );
}

/// A cache file that cannot be written (here a read-only bind mount over
/// it, in a writable directory): SQLite would open it read-only without a
/// word and fail at the first fill; it is used read-only from the start,
/// with one warning naming it.
#[tokio::test]
async fn a_write_protected_cache_file_is_used_read_only() {
    captured_logs();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("image.raw");
    let data = write_random_image(&image, 4, 4 * MIB).unwrap();
    let cache_dir = dir.path().join("cache");
    let cache = || AutoCacheSqliteDiskLayer::new(&cache_dir, None, false);
    let (disk, _) = cached_stack(cache(), &image, Some(ID)).await.unwrap();
    assert!(read_all(&disk).await == data);
    drop(disk);
    let file = cache_dir.join(hex(&ID)).join(CACHE_FILE_NAME);
    let Some(_protected) = ReadOnlyFile::protect(&file) else {
        return;
    };
    let layer = cache().open_for(&lower(8192, Some(ID))).await.unwrap();
    assert!(layer.is_opened_read_only());
    assert!(!layer.accepts_fills());
    drop(layer);
    let (disk, lower_reads) = cached_stack(cache(), &image, Some(ID)).await.unwrap();
    assert_eq!(sha(&read_all(&disk).await), sha(&data));
    assert_eq!(lower_reads.load(Ordering::SeqCst), 0);
    drop(disk);
    let warnings = warnings_about(&file);
    assert_eq!(warnings.len(), 2, "one per open: {warnings:#?}");
    assert!(warnings[0].contains("used read-only"), "{warnings:#?}");
}

/// Opens (creating) the entry `key` of `cache_dir`, filled with `mib` MiB.
async fn entry(cache_dir: &Path, key: &str, mib: usize, max: Option<u64>) -> SqliteDiskLayer {
    let layer = AutoCacheSqliteDiskLayer::new(cache_dir, Some(key.into()), false)
        .with_max_size(max)
        .open_for(&lower(SECTORS, None))
        .await
        .unwrap();
    if mib > 0 {
        layer
            .write_sectors(0, &random_bytes(mib as u64, mib * MIB), false, false)
            .await
            .unwrap();
        layer.sync().await.unwrap();
    }
    layer
}

/// Sets an entry's last use `ago` in the past.
fn used_ago(cache_dir: &Path, key: &str, ago: Duration) {
    std::fs::File::options()
        .write(true)
        .open(cache_dir.join(key).join(ENTRY_LOCK_NAME))
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

fn names(cache_dir: &Path) -> Vec<String> {
    list_entries(cache_dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

const HOUR: Duration = Duration::from_secs(3600);

/// Another process holding an entry open: this binary run again; it
/// prints `HOLDING` once the entry is open and closes it when its stdin
/// closes.
struct Holder {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(cache_dir: &Path, key: &str) -> Holder {
        let mut child = child(
            "child_hold_entry",
            &[
                ("CACHE_ENTRIES_CHILD", "hold"),
                ("CACHE_ENTRIES_DIR", cache_dir.to_str().unwrap()),
                ("CACHE_ENTRIES_KEY", key),
            ],
        )
        .arg("--ignored")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "the child exited");
            if line.trim() == "HOLDING" {
                break;
            }
        }
        Holder { child, out }
    }

    /// Lets the child close the entry and exit.
    fn release(mut self) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success(), "{rest}");
    }
}

#[tokio::test]
#[ignore = "child process of the_limit_removes_least_recently_used_entries_never_one_in_use; run by it"]
async fn child_hold_entry() {
    assert_eq!(
        std::env::var("CACHE_ENTRIES_CHILD").as_deref(),
        Ok("hold"),
        "a child process of the_limit_removes_least_recently_used_entries_never_one_in_use, \
         which runs it"
    );
    let cache_dir = PathBuf::from(std::env::var("CACHE_ENTRIES_DIR").unwrap());
    let key = std::env::var("CACHE_ENTRIES_KEY").unwrap();
    let layer = entry(&cache_dir, &key, 0, None).await;
    // On a line of its own: libtest has already printed the test name.
    println!("\nHOLDING");
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest).unwrap();
    drop(layer);
}

/// The size limit removes the least recently used entries first; an
/// entry another process has open is never removed, nor is the entry
/// being opened; once released, the held entry can go.
#[tokio::test]
async fn the_limit_removes_least_recently_used_entries_never_one_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    for (key, age) in [("a", 4), ("b", 3), ("c", 2)] {
        drop(entry(&cache_dir, key, 2, None).await);
        used_ago(&cache_dir, key, age * HOUR);
    }
    // "b" stays open in another process (and is older than "c").
    let holder = Holder::start(&cache_dir, "b");
    used_ago(&cache_dir, "b", 3 * HOUR);
    let listed = list_entries(&cache_dir).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|e| (e.name.as_str(), e.in_use))
            .collect::<Vec<_>>(),
        vec![("a", false), ("b", true), ("c", false)]
    );

    // Room for "d" needs one entry to go: the oldest.
    let limit = tree_size(&cache_dir) - 100;
    let d = entry(&cache_dir, "d", 0, Some(limit)).await;
    assert_eq!(names(&cache_dir), ["b", "c", "d"]);
    assert!(tree_size(&cache_dir) <= limit);
    drop(d);

    // No room at all: everything goes but "b" (in use) and "e" (being
    // opened), and "e" still works.
    let e = entry(&cache_dir, "e", 1, Some(0)).await;
    assert_eq!(names(&cache_dir), ["b", "e"]);
    let mut buf = vec![0u8; MIB];
    assert!(e.read_sectors(0, &mut buf).await.unwrap().all_present());
    assert!(buf == random_bytes(1, MIB));

    // Released by its process, "b" can go; "e" is still open here.
    holder.release();
    let done = enforce_limit(&cache_dir, 0, None).unwrap();
    assert_eq!(done.removed_entries.len(), 1, "{done:?}");
    assert_eq!(done.removed_entries[0].0, "b");
    assert_eq!(done.in_use, ["e"]);
    // Closing "e" keeps the limit but not at its own expense.
    drop(e);
    assert_eq!(names(&cache_dir), ["e"]);
    assert_eq!(
        remove_entry(&cache_dir, "e")
            .unwrap()
            .map(|b| b > MIB as u64),
        Some(true)
    );
    assert!(names(&cache_dir).is_empty());
    assert!(
        std::fs::read_dir(&cache_dir).unwrap().next().is_none(),
        "nothing left behind"
    );
}

/// A layer that grows while it is open keeps the limit when it closes:
/// older entries go then.
#[tokio::test]
async fn closing_a_layer_keeps_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    drop(entry(&cache_dir, "old", 2, None).await);
    used_ago(&cache_dir, "old", HOUR);
    let limit = tree_size(&cache_dir) + 3 * MIB as u64;
    let grows = entry(&cache_dir, "new", 0, Some(limit)).await;
    assert_eq!(names(&cache_dir), ["new", "old"]);
    grows
        .write_sectors(0, &random_bytes(9, 4 * MIB), false, false)
        .await
        .unwrap();
    drop(grows);
    assert_eq!(names(&cache_dir), ["new"]);
    assert!(tree_size(&cache_dir) <= limit);
}

/// Damaged files moved aside count against the limit and go before any
/// entry.
#[tokio::test]
async fn set_aside_files_count_and_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    drop(entry(&cache_dir, "a", 2, None).await);
    drop(entry(&cache_dir, "b", 2, None).await);
    used_ago(&cache_dir, "a", 2 * HOUR);
    let aside = cache_dir
        .join("b")
        .join(format!("{CACHE_FILE_NAME}.corrupt-20261204T131646Z"));
    std::fs::write(&aside, vec![0u8; 3 * MIB]).unwrap();
    let listed = list_entries(&cache_dir).unwrap();
    assert_eq!(listed[1].set_aside, vec![(aside.clone(), 3 * MIB as u64)]);
    assert!(listed[1].bytes > 3 * MIB as u64);

    let limit = tree_size(&cache_dir) - 2 * MIB as u64;
    let done = enforce_limit(&cache_dir, limit, None).unwrap();
    assert_eq!(done.removed_files, vec![(aside.clone(), 3 * MIB as u64)]);
    assert!(done.removed_entries.is_empty(), "{done:?}");
    assert_eq!(names(&cache_dir), ["a", "b"]);
    assert!(!aside.exists());
}

/// An open records what the entry caches; a later open that knows less
/// keeps it.
#[tokio::test]
async fn the_entry_records_what_it_caches() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let info = EntryInfo {
        location: Some("https://store.example/vhds/disk.vhd".into()),
        identity: None,
        disk_size: None,
    };
    drop(
        AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
            .with_entry_info(info)
            .open_for(&lower(SECTORS, Some(ID)))
            .await
            .unwrap(),
    );
    let expected = EntryInfo {
        location: Some("https://store.example/vhds/disk.vhd".into()),
        identity: Some(format!("vhd-id {}", hex(&ID))),
        disk_size: Some(SECTORS * 512),
    };
    let key_dir = cache_dir.join(hex(&ID));
    assert_eq!(read_info(&key_dir), Some(expected.clone()));
    drop(
        AutoCacheSqliteDiskLayer::new(&cache_dir, None, false)
            .open_for(&lower(SECTORS, Some(ID)))
            .await
            .unwrap(),
    );
    assert_eq!(read_info(&key_dir), Some(expected));
}

/// The key directory's lock file, as `maj:min:inode` in `/proc/locks`.
#[cfg(target_os = "linux")]
fn lock_id(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let dev = m.dev();
    // Linux's encoding of a dev_t.
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0xff);
    format!("{major:02x}:{minor:02x}:{}", m.ino())
}

/// An opener that waited for the lock of an entry being removed does not
/// keep the lock of the removed entry: it opens a fresh one, whose lock
/// it holds (so a later removal skips it).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_opener_that_waited_for_a_removal_locks_the_fresh_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    drop(entry(&cache_dir, "k", 1, None).await);
    let key_dir = cache_dir.join("k");
    let lock_path = key_dir.join(ENTRY_LOCK_NAME);
    // Play the remover: hold the exclusive lock while the opener starts.
    let lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    lock.lock().unwrap();
    let id = lock_id(&lock_path);
    let opener = tokio::spawn({
        let cache_dir = cache_dir.clone();
        async move { entry(&cache_dir, "k", 0, None).await }
    });
    // Wait until the opener is blocked on the lock (a waiter shows as
    // `->` in /proc/locks).
    loop {
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        if locks.lines().any(|l| l.contains("->") && l.contains(&id)) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let doomed = cache_dir.join(".evicting-k-test");
    std::fs::rename(&key_dir, &doomed).unwrap();
    std::fs::remove_dir_all(&doomed).unwrap();
    drop(lock);
    let layer = opener.await.unwrap();
    assert_eq!(layer.stats().await.unwrap(), (0, 0), "a fresh cache");
    assert_eq!(
        list_entries(&cache_dir)
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.in_use))
            .collect::<Vec<_>>(),
        [("k", true)]
    );
    assert_eq!(remove_entry(&cache_dir, "k").unwrap(), None);
    drop(layer);
    assert!(remove_entry(&cache_dir, "k").unwrap().is_some());
}
