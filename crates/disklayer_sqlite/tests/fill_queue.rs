//! Write-behind fills: a fill queued through `WriteNoOverwrite` is served
//! to reads before SQLite has committed it, is in the file once the layer
//! is closed, and keeps its place in line with unmaps and syncs.
//!
//! The writer thread is held back deterministically by another connection
//! that holds the database's write lock (`BEGIN IMMEDIATE`), so "not yet
//! committed" is a state the test controls, not a race it hopes to win.

mod common;

use disk_layered::WriteNoOverwrite;
use disk_test_support::random_bytes;
use disklayer_sqlite::FormatParams;
use disklayer_sqlite::SqliteDiskLayer;
use rusqlite::Connection;
use std::path::Path;

const SS: usize = 512;

/// Takes the database's write lock from a connection of its own.
fn hold_write_lock(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

/// Rows in the file, as another connection sees them (committed only).
fn committed_rows(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_fill_is_read_before_commit_and_is_in_the_file_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.dbhd");
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(4 * 2048, 512))
        .await
        .unwrap();
    let data = random_bytes(7, 2 << 20);

    let lock = hold_write_lock(&path);
    // Returns without waiting for SQLite (the lock would block it).
    layer.write_no_overwrite(2048, &data).await.unwrap();
    assert_eq!(committed_rows(&path), 0, "the fill is still queued");

    // A read that overlaps the queued fill sees it, byte-exact, as present;
    // the sectors outside it are absent and zero.
    let mut buf = vec![0xaau8; 3 << 20];
    let p = layer.read_sectors(1024, &mut buf).await.unwrap();
    assert_eq!(p.present_runs(), vec![(1024, 4096)]);
    assert!(buf[..1024 * SS].iter().all(|&b| b == 0));
    assert!(buf[1024 * SS..5120 * SS] == data[..]);
    assert!(buf[5120 * SS..].iter().all(|&b| b == 0));

    // A fill that overlaps the queued one does not replace its bytes.
    let other = random_bytes(8, 1 << 20);
    layer.write_no_overwrite(2048, &other).await.unwrap();
    let mut one = vec![0u8; 1 << 20];
    layer.read_sectors(2048, &mut one).await.unwrap();
    assert!(one[..] == data[..1 << 20]);

    drop(lock);
    // Closing commits the queue before it returns.
    drop(layer);
    assert_eq!(committed_rows(&path), 2);
    let layer = SqliteDiskLayer::open(&path, false).await.unwrap();
    let p = layer.read_sectors(1024, &mut buf).await.unwrap();
    assert_eq!(p.present_runs(), vec![(1024, 4096)]);
    assert!(buf[1024 * SS..5120 * SS] == data[..]);
}

/// An unmap issued while a fill is queued runs after it: the sectors end
/// up absent, not resurrected by the late fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmap_waits_for_queued_fills() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("u.dbhd");
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(2048, 512))
        .await
        .unwrap();
    let data = random_bytes(9, 1 << 20);

    let lock = hold_write_lock(&path);
    layer.write_no_overwrite(0, &data).await.unwrap();
    let unmapper = {
        let layer = layer.clone();
        tokio::spawn(async move { layer.unmap_sectors(0, 2048).await })
    };
    drop(lock);
    unmapper.await.unwrap().unwrap();

    let mut buf = vec![0u8; 1 << 20];
    let p = layer.read_sectors(0, &mut buf).await.unwrap();
    assert_eq!(p.present_count(), 0, "the unmap came last");
    assert_eq!(layer.stats().await.unwrap(), (0, 0));
}

/// `stats` and `sync` see every fill queued before them.
#[tokio::test]
async fn sync_and_stats_include_queued_fills_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.dbhd");
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(8 * 2048, 512))
        .await
        .unwrap();
    for i in 0..8u64 {
        layer
            .write_no_overwrite(i * 2048, &random_bytes(i, 1 << 20))
            .await
            .unwrap();
    }
    layer.sync().await.unwrap();
    assert_eq!(committed_rows(&path), 8);
    assert_eq!(layer.stats().await.unwrap(), (8, 8 * 2048));
    assert_eq!(layer.cache_counters().cache_fill_bytes, 8 << 20);
}

/// A layer opened read-only refuses a fill at once (the layered disk then
/// serves the data from below without caching it).
#[tokio::test]
async fn read_only_layer_refuses_fills_immediately() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.dbhd");
    SqliteDiskLayer::format(&path, &FormatParams::new(2048, 512))
        .await
        .unwrap();
    let layer = SqliteDiskLayer::open(&path, true).await.unwrap();
    let err = layer
        .write_no_overwrite(0, &random_bytes(1, 4096))
        .await
        .unwrap_err();
    assert!(matches!(err, disk_backend::DiskError::ReadOnly), "{err:?}");
}
