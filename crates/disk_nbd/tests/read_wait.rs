//! The export's read counters: read requests, bytes the client read, and
//! the client's disk-wait time (wall time with at least one read request
//! outstanding, from its header received to its reply written), measured
//! with a disk that holds each read until the test releases it.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Gated;
use common::GatedDisk;
use common::RawClient;
use common::serve;
use common::wait_for_stats;
use disk_nbd::NbdServerOptions;
use disk_nbd::protocol::*;
use disk_test_support::random_bytes;

const DISK_BYTES: usize = 1 << 20;

#[tokio::test]
async fn disk_wait_covers_a_held_read_and_stands_still_without_reads() {
    let initial = random_bytes(9, DISK_BYTES);
    let (disk, mut gate) = GatedDisk::create(initial.clone(), Gated::Reads);
    let served = serve(disk, NbdServerOptions::default()).await;
    let (socket, listener) = (&served.socket, &served.listener);
    let stats = || listener.server().stats();
    let (mut c, _, _) = RawClient::connect_go(socket).await;
    assert_eq!(stats().read_wait, Duration::ZERO);

    c.send_request(CMD_READ, 0, 1, 4096, 8192, &[]).await;
    // The read is inside the disk now, held at the gate. The server's
    // clock started earlier, when the header arrived.
    assert_eq!(gate.started.recv().await.unwrap(), (true, 8, 8192));
    let held_from = Instant::now();
    // Hold it for a while: an interval to measure, not a synchronisation.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let held_so_far = held_from.elapsed();
    let during = stats();
    assert_eq!(during.reads_outstanding, 1);
    assert!(
        during.read_wait >= held_so_far,
        "{:?} < {held_so_far:?}",
        during.read_wait
    );
    let held = held_from.elapsed();
    gate.open(1);
    let (error, cookie, data) = c.read_reply(|_| 8192).await;
    assert_eq!((error, cookie), (0, 1));
    assert!(data == initial[4096..4096 + 8192]);

    // The clock stops once the reply is written.
    let after = wait_for_stats(listener.server(), "the replies to be written", |s| {
        s.reads_outstanding == 0
    })
    .await;
    assert!(after.read_wait >= held, "{:?} < {held:?}", after.read_wait);
    assert_eq!(after.read_requests, 1);
    assert_eq!(after.bytes_read, 8192);

    // With no read outstanding the clock stands still, whatever else the
    // client does (an aligned write needs no read of the disk).
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(c.command(CMD_WRITE, 0, 0, 512, &[5; 512]).await, 0);
    assert_eq!(c.command(CMD_FLUSH, 0, 0, 0, &[]).await, 0);
    let idle = stats();
    assert_eq!(idle.read_wait, after.read_wait);
    assert_eq!(idle.read_requests, 1);
}

#[tokio::test]
async fn merged_and_refused_reads_are_counted() {
    let initial = random_bytes(4, DISK_BYTES);
    let (disk, mut gate) = GatedDisk::create(initial.clone(), Gated::Reads);
    let served = serve(disk, NbdServerOptions::default()).await;
    let (socket, listener) = (&served.socket, &served.listener);
    let (mut c, _, _) = RawClient::connect_go(socket).await;
    // Four back-to-back reads in one write: one disk read, four requests,
    // all outstanding while it is held.
    let mut reqs = Vec::new();
    for i in 0..4u64 {
        reqs.extend_from_slice(
            &RequestHeader {
                flags: 0,
                command: CMD_READ,
                cookie: i,
                offset: i * 4096,
                length: 4096,
            }
            .encode(),
        );
    }
    tokio::io::AsyncWriteExt::write_all(&mut c.stream, &reqs)
        .await
        .unwrap();
    assert_eq!(gate.started.recv().await.unwrap(), (true, 0, 4 * 4096));
    assert_eq!(listener.server().stats().reads_outstanding, 4);
    gate.open(1);
    for _ in 0..4 {
        let (error, _, _) = c.read_reply(|_| 4096).await;
        assert_eq!(error, 0);
    }
    // A read past the end is refused, not served: an error reply only.
    let (error, _) = c.read(DISK_BYTES as u64, 512).await;
    assert_eq!(error, EINVAL);
    let s = wait_for_stats(listener.server(), "the replies to be written", |s| {
        s.reads_outstanding == 0
    })
    .await;
    assert_eq!(s.read_requests, 4);
    assert_eq!(s.bytes_read, 4 * 4096);
    assert_eq!(s.disk_reads, 1);
    assert_eq!(s.error_replies, 1);
    assert!(s.read_wait > Duration::ZERO);
}
