//! Layered-disk semantics against real layers (RAM layers, a real temp
//! file, a gated in-memory bottom whose reads the test releases).

mod common;

use common::*;
use disk_backend::Disk;
use disk_backend::DiskError;
use disk_layered::DiskLayer;
use disk_layered::InvalidLayeredDisk;
use disk_layered::LayerConfiguration;
use disk_layered::LayeredDisk;
use disklayer_ram::RamDiskLayer;
use futures::poll;
use std::task::Poll;

const N: u64 = 1000;

async fn read(d: &Disk, sector: u64, n: u64) -> Vec<u8> {
    let mut buf = vec![0xcc; n as usize * SS];
    d.read(sector, &mut buf).await.unwrap();
    buf
}

#[tokio::test]
async fn reads_prefer_upper_layers() {
    let top = SharedRam::new(N);
    let mid = SharedRam::new(N);
    top.put(10, &pattern(10, 5, 1)).await;
    mid.put(12, &pattern(12, 10, 2)).await;
    let file = file_disk(&pattern(0, N, 3));
    let d = stack(true, vec![plain(top), plain(mid), bottom(file)]).await;

    let got = read(&d, 8, 20).await;
    let mut want = pattern(8, 20, 3);
    want[(12 - 8) * SS..(22 - 8) * SS].copy_from_slice(&pattern(12, 10, 2));
    want[(10 - 8) * SS..(15 - 8) * SS].copy_from_slice(&pattern(10, 5, 1));
    assert_eq!(got, want);
}

#[tokio::test]
async fn sparse_stack_without_full_bottom_reads_zero() {
    let only = SharedRam::new(N);
    only.put(3, &pattern(3, 1, 1)).await;
    let d = stack(true, vec![plain(only)]).await;
    let got = read(&d, 0, 8).await;
    let mut want = vec![0; 8 * SS];
    want[3 * SS..4 * SS].copy_from_slice(&pattern(3, 1, 1));
    assert_eq!(got, want);
}

#[tokio::test]
async fn metadata_comes_from_the_bottom() {
    let file = file_disk(&pattern(0, N, 3));
    let d = stack(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            bottom(file),
        ],
    )
    .await;
    assert_eq!(d.sector_count(), N);
    assert_eq!(d.sector_size(), 512);
    assert_eq!(d.disk_id(), Some([0x42; 16]));
    assert!(!d.is_read_only());
    assert_eq!(d.disk_type(), "layered");
}

#[tokio::test]
async fn cache_fills_and_serves_second_read() {
    let lower = gated_disk(pattern(0, N, 5), 1000);
    let top = SharedRam::new(N);
    let c = SharedRam::new(N);
    let d = stack(
        false,
        vec![plain(top.clone()), cache(c.clone()), bottom(lower.clone())],
    )
    .await;

    assert_eq!(read(&d, 100, 16).await, pattern(100, 16, 5));
    assert_eq!(lower.reads(), 1);
    let (bytes, bm) = c.peek(100, 16).await;
    assert!(bm.all_set(), "the cache was filled");
    assert_eq!(bytes, pattern(100, 16, 5));
    assert_eq!(top.inner.allocated_chunks(), 0, "fills never go to the top");

    assert_eq!(read(&d, 100, 16).await, pattern(100, 16, 5));
    assert_eq!(lower.reads(), 1, "second read hit");

    // Part hit, part miss: only the missing run goes down.
    assert_eq!(read(&d, 96, 24).await, pattern(96, 24, 5));
    assert_eq!(lower.read_log(), vec![(100, 116), (96, 100), (116, 120)]);

    let ctr = d.counters();
    assert_eq!(ctr.cache_hit_bytes, 16 * 512 + 16 * 512);
    assert_eq!(ctr.cache_miss_bytes, 24 * 512);
    assert_eq!(ctr.cache_fill_bytes, 24 * 512);
    assert_eq!(ctr.remote_requests, 3, "layer counters are summed in");
}

#[tokio::test]
async fn misses_widen_to_aligned_chunks_clipped_to_the_disk() {
    let lower = gated_disk(pattern(0, N, 5), 1000);
    let c = SharedRam::new(N).with_fill(64);
    let d = stack(true, vec![cache(c.clone()), bottom(lower.clone())]).await;

    assert_eq!(read(&d, 70, 1).await, pattern(70, 1, 5));
    assert_eq!(lower.read_log(), vec![(64, 128)]);
    // Anything in the same chunk now hits.
    assert_eq!(read(&d, 100, 28).await, pattern(100, 28, 5));
    assert_eq!(lower.reads(), 1);
    // A read spanning a filled and two empty chunks fetches the empty ones
    // as one run.
    assert_eq!(read(&d, 120, 100).await, pattern(120, 100, 5));
    assert_eq!(lower.read_log(), vec![(64, 128), (128, 256)]);
    // The last chunk is clipped to the disk's end (1000 sectors).
    assert_eq!(read(&d, 990, 10).await, pattern(990, 10, 5));
    assert_eq!(lower.read_log().last(), Some(&(960, 1000)));
    assert!(c.peek(960, 40).await.1.all_set());
    assert_eq!(d.counters().cache_miss_bytes, (64 + 128 + 40) * 512);
}

#[tokio::test]
async fn widened_fill_does_not_refetch_what_the_cache_has() {
    let lower = gated_disk(pattern(0, N, 5), 1000);
    let c = SharedRam::new(N).with_fill(64);
    // The cache already has sectors 0..10 (from an earlier run, say).
    c.put(0, &pattern(0, 10, 5)).await;
    let d = stack(true, vec![cache(c.clone()), bottom(lower.clone())]).await;
    assert_eq!(read(&d, 5, 20).await, pattern(5, 20, 5));
    assert_eq!(lower.read_log(), vec![(10, 64)]);
}

#[tokio::test]
async fn concurrent_misses_on_one_chunk_fetch_once() {
    let lower = gated_disk(pattern(0, N, 5), 0);
    let c = SharedRam::new(N).with_fill(64);
    let d = stack(true, vec![cache(c), bottom(lower.clone())]).await;

    let mut b1 = vec![0; 4 * SS];
    let mut b2 = vec![0; 8 * SS];
    let mut r1 = Box::pin(d.read(130, &mut b1));
    let mut r2 = Box::pin(d.read(160, &mut b2));
    // The first read reaches the lower disk and blocks at the gate.
    assert!(matches!(poll!(r1.as_mut()), Poll::Pending));
    assert_eq!(lower.reads(), 1);
    // The second misses the same chunk and waits instead of reading.
    assert!(matches!(poll!(r2.as_mut()), Poll::Pending));
    assert_eq!(lower.reads(), 1);

    lower.open_gate(1);
    let (a, b) = tokio::join!(r1, r2);
    a.unwrap();
    b.unwrap();
    assert_eq!(lower.read_log(), vec![(128, 192)]);
    assert_eq!(b1, pattern(130, 4, 5));
    assert_eq!(b2, pattern(160, 8, 5));
}

#[tokio::test]
async fn a_waiter_fetches_itself_when_the_leader_fails() {
    let lower = gated_disk(pattern(0, N, 5), 0);
    let c = SharedRam::new(N).with_fill(64);
    let d = stack(true, vec![cache(c), bottom(lower.clone())]).await;

    let mut b1 = vec![0; SS];
    let mut b2 = vec![0; SS];
    let mut r1 = Box::pin(d.read(0, &mut b1));
    let mut r2 = Box::pin(d.read(1, &mut b2));
    assert!(matches!(poll!(r1.as_mut()), Poll::Pending));
    assert!(matches!(poll!(r2.as_mut()), Poll::Pending));
    lower.fail_next_read();
    lower.open_gate(2);
    let (a, b) = tokio::join!(r1, r2);
    assert!(matches!(a, Err(DiskError::Io { .. })));
    b.unwrap();
    assert_eq!(b2, pattern(1, 1, 5));
    assert_eq!(lower.reads(), 2);
}

#[tokio::test]
async fn a_waiter_fetches_itself_when_the_leader_is_cancelled() {
    let lower = gated_disk(pattern(0, N, 5), 0);
    let c = SharedRam::new(N).with_fill(64);
    let d = stack(true, vec![cache(c), bottom(lower.clone())]).await;

    let mut b1 = vec![0; SS];
    let mut b2 = vec![0; SS];
    let mut r1 = Box::pin(d.read(0, &mut b1));
    let mut r2 = Box::pin(d.read(1, &mut b2));
    assert!(matches!(poll!(r1.as_mut()), Poll::Pending));
    assert!(matches!(poll!(r2.as_mut()), Poll::Pending));
    drop(r1);
    lower.open_gate(1);
    r2.await.unwrap();
    assert_eq!(b2, pattern(1, 1, 5));
}

#[tokio::test]
async fn fill_never_overwrites_a_write_made_during_the_lower_read() {
    let lower = gated_disk(pattern(0, N, 5), 0);
    // The read cache is also the top (write) layer: a guest write lands in
    // it while a fill for the same sectors is in flight.
    let c = SharedRam::new(N);
    let d = stack(false, vec![cache(c.clone()), bottom(lower.clone())]).await;

    let mut buf = vec![0; 8 * SS];
    let mut r = Box::pin(d.read(0, &mut buf));
    assert!(matches!(poll!(r.as_mut()), Poll::Pending));
    assert_eq!(lower.reads(), 1);
    d.write(3, &pattern(3, 1, 0x77), false).await.unwrap();
    lower.open_gate(1);
    r.await.unwrap();

    let mut want = pattern(0, 8, 5);
    want[3 * SS..4 * SS].copy_from_slice(&pattern(3, 1, 0x77));
    assert_eq!(read(&d, 0, 8).await, want);
    assert_eq!(c.peek(0, 8).await.0, want);
    assert_eq!(lower.reads(), 1);
}

#[tokio::test]
async fn writes_reach_only_the_top_layer() {
    let content = pattern(0, N, 5);
    let file = file_disk(&content);
    let top = SharedRam::new(N);
    let c = SharedRam::new(N).with_fill(64);
    let d = stack(
        false,
        vec![plain(top.clone()), cache(c.clone()), bottom(file.clone())],
    )
    .await;

    // Populate the cache, then overwrite part of the cached range.
    assert_eq!(read(&d, 0, 64).await, content[..64 * SS]);
    d.write(10, &pattern(10, 4, 9), true).await.unwrap();
    d.write(500, &pattern(500, 3, 9), false).await.unwrap();
    d.sync_cache().await.unwrap();

    let mut want = content[..64 * SS].to_vec();
    want[10 * SS..14 * SS].copy_from_slice(&pattern(10, 4, 9));
    assert_eq!(read(&d, 0, 64).await, want);
    assert_eq!(read(&d, 500, 3).await, pattern(500, 3, 9));
    // The cache still holds the lower data; it never saw sector 500.
    assert_eq!(c.peek(0, 64).await.0, content[..64 * SS]);
    assert_eq!(c.peek(500, 3).await.1.set_count(), 0);
    // The file is untouched.
    assert_eq!(file.contents(), content);
    assert_eq!(top.peek(10, 4).await.0, pattern(10, 4, 9));
}

#[tokio::test]
async fn write_through_layers_receive_writes() {
    let top = SharedRam::new(N);
    let second = SharedRam::new(N);
    let third = SharedRam::new(N);
    let file = file_disk(&pattern(0, N, 5));
    let d = stack(
        false,
        vec![
            LayerConfiguration::write_through(DiskLayer::from_layer(top.clone())),
            plain(second.clone()),
            plain(third.clone()),
            bottom(file),
        ],
    )
    .await;
    d.write(7, &pattern(7, 2, 1), false).await.unwrap();
    assert_eq!(top.peek(7, 2).await.0, pattern(7, 2, 1));
    assert_eq!(second.peek(7, 2).await.0, pattern(7, 2, 1));
    assert_eq!(third.peek(7, 2).await.1.set_count(), 0);
}

#[tokio::test]
async fn out_of_range_and_read_only_errors() {
    let file = file_disk(&pattern(0, N, 5));
    let layered = LayeredDisk::new(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            bottom(file),
        ],
    )
    .await
    .unwrap();
    // Directly through DiskIo (no Disk handle checks in front).
    use disk_backend::DiskIo;
    let mut buf = vec![0; 2 * SS];
    assert!(matches!(
        layered.read(N - 1, &mut buf).await,
        Err(DiskError::OutOfRange {
            start: 999,
            end: 1001,
            sector_count: 1000
        })
    ));
    assert!(matches!(
        layered.read(u64::MAX, &mut buf).await,
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        layered.write(N, &buf, false).await,
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        layered.unmap(N - 1, 2).await,
        Err(DiskError::OutOfRange { .. })
    ));
    assert!(matches!(
        layered.read(0, &mut buf[..100]).await,
        Err(DiskError::InvalidArgument(_))
    ));

    let ro = LayeredDisk::new(true, vec![bottom(file_disk(&pattern(0, N, 5)))])
        .await
        .unwrap();
    assert!(matches!(
        ro.write(0, &buf, false).await,
        Err(DiskError::ReadOnly)
    ));
    assert!(matches!(ro.unmap(0, 1).await, Err(DiskError::ReadOnly)));
}

fn file_layer() -> LayerConfiguration {
    bottom(file_disk(&pattern(0, N, 5)))
}

async fn invalid(read_only: bool, layers: Vec<LayerConfiguration>) -> InvalidLayeredDisk {
    LayeredDisk::new(read_only, layers).await.unwrap_err()
}

#[tokio::test]
async fn validation_rules() {
    assert!(matches!(
        invalid(true, vec![]).await,
        InvalidLayeredDisk::NoLayers
    ));

    let small = SharedRam {
        inner: std::sync::Arc::new(RamDiskLayer::new(N, 4096).unwrap()),
        ..SharedRam::new(N)
    };
    assert!(matches!(
        invalid(true, vec![plain(small), file_layer()]).await,
        InvalidLayeredDisk::SectorSizeMismatch {
            layer: 0,
            expected: 512,
            found: 4096,
            ..
        }
    ));
    assert!(matches!(
        invalid(true, vec![plain(SharedRam::new(N + 1)), file_layer()]).await,
        InvalidLayeredDisk::SectorCountMismatch {
            layer: 0,
            expected: 1000,
            found: 1001,
            ..
        }
    ));

    let wt = |l| LayerConfiguration::write_through(DiskLayer::from_layer(l));
    assert!(matches!(
        invalid(
            false,
            vec![
                plain(SharedRam::new(N)),
                wt(SharedRam::new(N)),
                file_layer()
            ]
        )
        .await,
        InvalidLayeredDisk::WriteThroughNotContiguous(1)
    ));
    assert!(matches!(
        invalid(false, vec![wt(SharedRam::new(N))]).await,
        InvalidLayeredDisk::LastLayerWriteThrough
    ));

    let no_wno = SharedRam {
        no_wno: true,
        ..SharedRam::new(N)
    };
    let err = invalid(
        true,
        vec![plain(SharedRam::new(N)), cache(no_wno), file_layer()],
    )
    .await;
    assert!(matches!(
        err,
        InvalidLayeredDisk::ReadCacheWithoutWriteNoOverwrite { layer: 1, .. }
    ));
    assert!(err.to_string().contains("write-no-overwrite"), "{err}");

    // Writable disk directly over a read-only file: refused...
    assert!(matches!(
        invalid(false, vec![file_layer()]).await,
        InvalidLayeredDisk::ReadOnlyLayerOnWritePath { layer: 0, .. }
    ));
    // ...and a read-only layer reached through write-through too.
    let ro_ram = SharedRam {
        read_only: true,
        ..SharedRam::new(N)
    };
    assert!(matches!(
        invalid(
            false,
            vec![wt(SharedRam::new(N)), plain(ro_ram.clone()), file_layer()]
        )
        .await,
        InvalidLayeredDisk::ReadOnlyLayerOnWritePath { layer: 1, .. }
    ));
    // A read-only layer below the write path is fine, and so is a
    // read-only disk over read-only layers.
    LayeredDisk::new(
        false,
        vec![plain(SharedRam::new(N)), plain(ro_ram), file_layer()],
    )
    .await
    .unwrap();
    LayeredDisk::new(true, vec![file_layer()]).await.unwrap();

    // Attach errors name the layer and keep the cause.
    let err = invalid(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(Some(1000)))),
            file_layer(),
        ],
    )
    .await;
    assert!(matches!(err, InvalidLayeredDisk::Attach { layer: 0, .. }));
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("not a multiple"), "{cause}");
}

#[tokio::test]
async fn ram_layer_on_top_of_a_read_only_stack_takes_its_size() {
    let d = stack(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            LayerConfiguration::read_cache(DiskLayer::new(RamDiskLayer::lazy(None))),
            file_layer(),
        ],
    )
    .await;
    assert_eq!(d.sector_count(), N);
    d.write(999, &pattern(999, 1, 1), false).await.unwrap();
    assert_eq!(read(&d, 998, 2).await[SS..], pattern(999, 1, 1));
    assert_eq!(read(&d, 998, 1).await, pattern(998, 1, 5));
}

#[tokio::test]
async fn a_failed_fill_does_not_fail_the_read() {
    let lower = gated_disk(pattern(0, N, 5), 1000);
    let c = SharedRam {
        fail_wno: true,
        ..SharedRam::new(N).with_fill(64)
    };
    let d = stack(true, vec![cache(c.clone()), bottom(lower.clone())]).await;
    assert_eq!(read(&d, 10, 4).await, pattern(10, 4, 5));
    assert_eq!(read(&d, 10, 4).await, pattern(10, 4, 5));
    assert_eq!(lower.reads(), 2, "nothing was cached");
    assert_eq!(c.peek(0, 64).await.1.set_count(), 0);
    let ctr = d.counters();
    assert_eq!(
        (ctr.cache_miss_bytes, ctr.cache_fill_bytes),
        (2 * 64 * 512, 0)
    );
}

#[tokio::test]
async fn huge_preferred_fill_is_clamped() {
    // 2^20 sectors of 512 bytes = 512 MiB; the cache asks for whole-disk
    // fills, which are clamped to MAX_FILL_BYTES (64 MiB = 131072 sectors).
    let sectors = 1 << 20;
    let c = SharedRam::new(sectors).with_fill(u64::MAX);
    let d = stack(
        true,
        vec![
            cache(c.clone()),
            LayerConfiguration::plain(DiskLayer::from_layer(SharedRam::new(sectors))),
        ],
    )
    .await;
    let mut buf = vec![0; SS];
    d.read(200_000, &mut buf).await.unwrap();
    let max = disk_layered::MAX_FILL_BYTES / 512;
    assert_eq!(d.counters().cache_miss_bytes, max * 512);
    assert!(c.peek(max, 1).await.1.all_set());
    assert_eq!(c.peek(max - 1, 1).await.1.set_count(), 0);
}

#[tokio::test]
async fn four_kib_sectors() {
    const S4: usize = 4096;
    let lower = SharedRam {
        inner: std::sync::Arc::new(RamDiskLayer::new(100, 4096).unwrap()),
        ..SharedRam::new(1)
    };
    let data: Vec<u8> = (0..10 * S4).map(|i| (i / 7) as u8).collect();
    lower.put(45, &data).await;
    let c = SharedRam {
        inner: std::sync::Arc::new(RamDiskLayer::new(100, 4096).unwrap()),
        fill: Some(16),
        ..SharedRam::new(1)
    };
    let d = stack(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            cache(c.clone()),
            plain(lower),
        ],
    )
    .await;
    assert_eq!((d.sector_size(), d.sector_count()), (4096, 100));
    let mut buf = vec![1u8; 20 * S4];
    d.read(40, &mut buf).await.unwrap();
    assert!(buf[..5 * S4].iter().all(|b| *b == 0));
    assert_eq!(&buf[5 * S4..15 * S4], &data[..]);
    assert!(buf[15 * S4..].iter().all(|b| *b == 0));
    // Widened to 32..64 (16-sector chunks), and the cache has it.
    assert!(c.peek(32, 32).await.1.all_set());
    assert_eq!(c.peek(64, 1).await.1.set_count(), 0);
    d.write(99, &[9; S4], false).await.unwrap();
    let mut last = vec![0; S4];
    d.read(99, &mut last).await.unwrap();
    assert_eq!(last, vec![9; S4]);
}

#[tokio::test]
async fn a_layered_disk_can_be_the_bottom_of_another() {
    let inner = stack(
        true,
        vec![
            cache(SharedRam::new(N)),
            bottom(file_disk(&pattern(0, N, 5))),
        ],
    )
    .await;
    let outer = stack(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            LayerConfiguration::plain(inner.clone()),
        ],
    )
    .await;
    assert_eq!(outer.disk_id(), Some([0x42; 16]));
    outer.write(1, &pattern(1, 1, 8), false).await.unwrap();
    let mut want = pattern(0, 4, 5);
    want[SS..2 * SS].copy_from_slice(&pattern(1, 1, 8));
    assert_eq!(read(&outer, 0, 4).await, want);
    assert_eq!(read(&inner, 0, 4).await, pattern(0, 4, 5));
    assert_eq!(outer.counters().cache_fill_bytes, 4 * 512);
}
