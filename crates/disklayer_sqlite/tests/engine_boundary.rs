//! The engine boundary: every SQLite call runs on the engine's own
//! threads, callers only await, and the one backpressure point (queued fill
//! bytes) makes a caller wait without blocking the thread it runs on.
//!
//! (Debug builds also assert, at every entry into the store, that the
//! calling thread is an engine thread; every test of this crate runs with
//! that check.)

mod common;

use disk_layered::WriteNoOverwrite;
use disk_test_support::random_bytes;
use disklayer_sqlite::FormatParams;
use disklayer_sqlite::MAX_QUEUED_FILL_BYTES;
use disklayer_sqlite::SqliteDiskLayer;
use futures::FutureExt;
use rusqlite::Connection;

const MIB: usize = 1 << 20;

/// A fill beyond the queue's bound waits (its future stays pending) while
/// the cache cannot commit, and meanwhile the same single thread keeps
/// serving reads, which see every queued fill: the wait is an await, not a
/// blocked thread. Once the cache can commit, the waiting fill goes in.
#[tokio::test(flavor = "current_thread")]
async fn a_full_fill_queue_waits_without_blocking_the_runtime_thread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.dbhd");
    let chunks = MAX_QUEUED_FILL_BYTES / MIB + 2;
    let sectors = (chunks * MIB / 512) as u64;
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(sectors, 512))
        .await
        .unwrap();

    // Another connection holds the write lock: nothing can commit.
    let lock = Connection::open(&path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();

    // The bound's worth of fills is accepted at once.
    let per_chunk = (MIB / 512) as u64;
    for i in 0..(MAX_QUEUED_FILL_BYTES / MIB) as u64 {
        let data = random_bytes(i, MIB);
        let fill = layer.write_no_overwrite(i * per_chunk, &data);
        assert!(
            fill.now_or_never().is_some(),
            "fill {i} is within the bound and must not wait"
        );
    }
    // One more must wait for room.
    let last = (MAX_QUEUED_FILL_BYTES / MIB) as u64;
    let last_data = random_bytes(last, MIB);
    let mut waiting = Box::pin(layer.write_no_overwrite(last * per_chunk, &last_data));
    assert!((&mut waiting).now_or_never().is_none(), "the queue is full");

    // This thread is free: a read completes and sees queued fills.
    let mut buf = vec![0u8; 2 * MIB];
    let p = layer.read_sectors(per_chunk * 3, &mut buf).await.unwrap();
    assert!(p.all_present());
    assert!(buf[..MIB] == random_bytes(3, MIB)[..]);
    assert!(buf[MIB..] == random_bytes(4, MIB)[..]);

    // Release the lock: the queue drains and the waiting fill is accepted.
    drop(lock);
    waiting.await.unwrap();
    layer.flush_fills().await.unwrap();
    assert_eq!(
        layer.stats().await.unwrap(),
        (last + 1, (last + 1) * per_chunk)
    );
}

/// The layer does not depend on a tokio runtime: an executor that is not
/// tokio's drives every operation (the engine answers on its own threads).
#[test]
fn works_under_an_executor_that_is_not_tokio() {
    futures::executor::block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.dbhd");
        let layer = SqliteDiskLayer::create(&path, &FormatParams::new(4096, 512))
            .await
            .unwrap();
        let data = random_bytes(5, MIB);
        layer.write_sectors(0, &data, true, false).await.unwrap();
        layer
            .write_no_overwrite(2048, &random_bytes(6, MIB))
            .await
            .unwrap();
        let mut buf = vec![0u8; 2 * MIB];
        let p = layer.read_sectors(0, &mut buf).await.unwrap();
        assert!(p.all_present());
        assert!(buf[..MIB] == data[..]);
        layer.sync().await.unwrap();
        assert_eq!(layer.stats().await.unwrap(), (2, 4096));
    });
}

/// An owned read fills the handed-over buffer: same bytes as a borrowed
/// read, absent sectors zeroed (whatever the buffer held), queued fills
/// included, and the buffer comes back on errors too.
#[tokio::test]
async fn owned_reads_match_borrowed_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.dbhd");
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(4096, 512))
        .await
        .unwrap();
    let data = random_bytes(7, 300 * 512);
    layer.write_sectors(100, &data, true, false).await.unwrap();
    let queued = random_bytes(8, 64 * 512);
    layer.write_no_overwrite(1000, &queued).await.unwrap();

    for (sector, len) in [
        (0u64, 512 * 512),
        (90, 40 * 512),
        (990, 100 * 512),
        (3000, 4096),
    ] {
        let mut borrowed = vec![0xaa; len];
        let pb = layer.read_sectors(sector, &mut borrowed).await.unwrap();
        let (owned, po) = layer.read_sectors_owned(sector, vec![0x55; len]).await;
        let po = po.unwrap();
        assert_eq!(po, pb, "presence at {sector}");
        assert!(owned == borrowed, "bytes at {sector}");
    }

    let (back, r) = layer.read_sectors_owned(4095, vec![1; 1024]).await;
    assert!(r.is_err(), "past the end");
    assert_eq!(back, vec![1; 1024], "the buffer comes back untouched");
}

/// Dropping the last handle commits every queued fill before it returns,
/// whichever thread drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_layer_on_a_worker_commits_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.dbhd");
    let layer = SqliteDiskLayer::create(&path, &FormatParams::new(8 * 2048, 512))
        .await
        .unwrap();
    for i in 0..8u64 {
        layer
            .write_no_overwrite(i * 2048, &random_bytes(i, MIB))
            .await
            .unwrap();
    }
    tokio::spawn(async move { drop(layer) }).await.unwrap();
    let rows: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT count(*) FROM chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 8);
}
