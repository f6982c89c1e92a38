//! The read fast path: replies written as one vectored write per request
//! (or per merged read), back-to-back reads merged into one disk read,
//! per-connection read slots, and multi-conn consistency.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::RawClient;
use common::Served;
use common::VecDisk;
use common::serve;
use disk_backend::Disk;
use disk_nbd::NbdServerOptions;
use disk_nbd::protocol::*;
use disk_test_support::TestDisk;
use disk_test_support::random_bytes;
use disk_test_support::test_rng;
use rand::Rng;
use tokio::io::AsyncWriteExt;

const DISK_BYTES: usize = 4 << 20;

struct Fixture {
    served: Served,
    initial: Vec<u8>,
}

async fn serve_initial(disk: Disk, initial: Vec<u8>, options: NbdServerOptions) -> Fixture {
    Fixture {
        served: serve(disk, options).await,
        initial,
    }
}

async fn vec_fixture(options: NbdServerOptions) -> Fixture {
    let initial = random_bytes(77, DISK_BYTES);
    let (disk, _) = VecDisk::create(initial.clone(), false);
    serve_initial(disk, initial, options).await
}

fn read_header(cookie: u64, offset: u64, length: u32, flags: u16) -> [u8; REQUEST_HEADER_LEN] {
    RequestHeader {
        flags,
        command: CMD_READ,
        cookie,
        offset,
        length,
    }
    .encode()
}

/// Sends every request in one write (so the server finds them all in its
/// buffer at once) and collects `n` replies by cookie: (error, data).
async fn pipeline(
    c: &mut RawClient,
    requests: &[u8],
    n: usize,
    lens: &HashMap<u64, usize>,
) -> HashMap<u64, (u32, Vec<u8>)> {
    c.stream.write_all(requests).await.unwrap();
    let mut replies = HashMap::new();
    for _ in 0..n {
        let (error, cookie, data) = c.read_reply(|cookie| lens[&cookie]).await;
        assert!(
            replies.insert(cookie, (error, data)).is_none(),
            "two replies for cookie {cookie}"
        );
    }
    replies
}

/// `n` back-to-back reads of `len` bytes from `start` (cookies `0..n`):
/// the requests in one buffer, and each cookie's reply length.
fn contiguous_reads(start: u64, len: u32, n: u64) -> (Vec<u8>, HashMap<u64, usize>) {
    let mut reqs = Vec::new();
    let mut lens = HashMap::new();
    for i in 0..n {
        reqs.extend_from_slice(&read_header(i, start + i * u64::from(len), len, 0));
        lens.insert(i, len as usize);
    }
    (reqs, lens)
}

/// Every reply of [`contiguous_reads`] succeeded with exactly its bytes.
fn assert_contiguous_replies(
    initial: &[u8],
    replies: &HashMap<u64, (u32, Vec<u8>)>,
    start: u64,
    len: u32,
    n: u64,
) {
    for i in 0..n {
        let (error, data) = &replies[&i];
        assert_eq!(*error, 0, "cookie {i}");
        let off = (start + i * u64::from(len)) as usize;
        assert!(data[..] == initial[off..off + len as usize], "cookie {i}");
    }
}

#[tokio::test]
async fn back_to_back_reads_are_merged_and_each_reply_is_byte_exact() {
    // 64 contiguous 4 KiB reads from 8 KiB with a 64 KiB merge limit:
    // merged reads end at multiples of 64 KiB, so 14 + 16 + 16 + 16 + 2
    // requests in 5 disk reads.
    let f = vec_fixture(NbdServerOptions {
        max_merged_read_bytes: 64 << 10,
        ..Default::default()
    })
    .await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    let (reqs, lens) = contiguous_reads(8192, 4096, 64);
    let replies = pipeline(&mut c, &reqs, 64, &lens).await;
    assert_contiguous_replies(&f.initial, &replies, 8192, 4096, 64);
    let stats = f.served.listener.server().stats();
    assert_eq!(stats.requests, 64);
    assert_eq!(stats.disk_reads, 5);
    assert_eq!(stats.bytes_read, 64 * 4096);
    // The connection is still in step.
    assert_eq!(c.read(0, 512).await, (0, f.initial[..512].to_vec()));
}

/// nbdcopy's pattern (256 KiB reads) starting in the middle of a 1 MiB
/// block: merged reads stop at each 1 MiB boundary instead of straddling
/// two of a cache's chunks.
#[tokio::test]
async fn merged_reads_do_not_cross_a_multiple_of_the_limit() {
    let f = vec_fixture(NbdServerOptions {
        max_merged_read_bytes: 1 << 20,
        ..Default::default()
    })
    .await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    // 768 KiB .. 2816 KiB: [768K, 1M) [1M, 2M) [2M, 2816K).
    let (reqs, lens) = contiguous_reads(768 << 10, 256 << 10, 8);
    let replies = pipeline(&mut c, &reqs, 8, &lens).await;
    assert_contiguous_replies(&f.initial, &replies, 768 << 10, 256 << 10, 8);
    assert_eq!(f.served.listener.server().stats().disk_reads, 3);
}

#[tokio::test]
async fn unaligned_back_to_back_reads_merge_into_one_widened_read() {
    let f = vec_fixture(NbdServerOptions::default()).await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    // Byte-granular, contiguous, of odd sizes: one disk read widened to
    // whole sectors; every reply must carry exactly its own bytes.
    let mut reqs = Vec::new();
    let mut lens = HashMap::new();
    let mut expect = HashMap::new();
    let mut off = 1000u64;
    for (i, len) in [1u32, 511, 513, 4095, 7, 65536, 3].into_iter().enumerate() {
        let cookie = 100 + i as u64;
        reqs.extend_from_slice(&read_header(cookie, off, len, 0));
        lens.insert(cookie, len as usize);
        expect.insert(
            cookie,
            f.initial[off as usize..(off + u64::from(len)) as usize].to_vec(),
        );
        off += u64::from(len);
    }
    let replies = pipeline(&mut c, &reqs, 7, &lens).await;
    for (cookie, want) in &expect {
        assert_eq!(replies[cookie], (0, want.clone()), "cookie {cookie}");
    }
    assert_eq!(f.served.listener.server().stats().disk_reads, 1);
}

#[tokio::test]
async fn reads_that_do_not_continue_each_other_are_not_merged() {
    let f = vec_fixture(NbdServerOptions::default()).await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    let size = DISK_BYTES as u64;
    let mut reqs = Vec::new();
    let mut lens = HashMap::new();
    // Each of these must stay its own request:
    // 1: a gap before it; 2: overlaps 1; 3: continues 2 but carries FUA;
    // 5: continues 4 but runs past the end of the disk (EINVAL).
    let cases: [(u64, u64, u32, u16, u32); 6] = [
        (0, 0, 4096, 0, 0),
        (1, 8192, 4096, 0, 0),
        (2, 12288 - 512, 4096, 0, 0),
        (3, 12288 - 512 + 4096, 4096, CMD_FLAG_FUA, 0),
        (4, size - 4096, 4096, 0, 0),
        (5, size, 512, 0, EINVAL),
    ];
    for (cookie, off, len, flags, _) in cases {
        reqs.extend_from_slice(&read_header(cookie, off, len, flags));
        lens.insert(cookie, len as usize);
    }
    // A write between two contiguous reads keeps them apart too.
    reqs.extend_from_slice(&read_header(6, 65536, 512, 0));
    lens.insert(6, 512);
    let payload = random_bytes(5, 512);
    reqs.extend_from_slice(
        &RequestHeader {
            flags: 0,
            command: CMD_WRITE,
            cookie: 7,
            offset: 1 << 20,
            length: 512,
        }
        .encode(),
    );
    reqs.extend_from_slice(&payload);
    lens.insert(7, 0);
    reqs.extend_from_slice(&read_header(8, 65536 + 512, 512, 0));
    lens.insert(8, 512);

    let replies = pipeline(&mut c, &reqs, 9, &lens).await;
    for (cookie, off, len, _, error) in cases {
        let (got_error, data) = &replies[&cookie];
        assert_eq!(*got_error, error, "cookie {cookie}");
        if error == 0 {
            assert_eq!(
                data[..],
                f.initial[off as usize..off as usize + len as usize],
                "cookie {cookie}"
            );
        }
    }
    assert_eq!(replies[&6], (0, f.initial[65536..65536 + 512].to_vec()));
    assert_eq!(replies[&7], (0, Vec::new()));
    assert_eq!(
        replies[&8],
        (0, f.initial[65536 + 512..65536 + 1024].to_vec())
    );
    // Cookies 0, 1, 2, 3, 4, 6 and 8 each needed their own disk read.
    assert_eq!(f.served.listener.server().stats().disk_reads, 7);
}

#[tokio::test]
async fn merging_can_be_turned_off() {
    let f = vec_fixture(NbdServerOptions {
        max_merged_read_bytes: 0,
        ..Default::default()
    })
    .await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    let mut reqs = Vec::new();
    let mut lens = HashMap::new();
    for i in 0..8u64 {
        reqs.extend_from_slice(&read_header(i, i * 512, 512, 0));
        lens.insert(i, 512);
    }
    let replies = pipeline(&mut c, &reqs, 8, &lens).await;
    for i in 0..8u64 {
        let off = i as usize * 512;
        assert_eq!(replies[&i], (0, f.initial[off..off + 512].to_vec()));
    }
    assert_eq!(f.served.listener.server().stats().disk_reads, 8);
}

#[tokio::test]
async fn a_failed_merged_read_fails_every_request_in_it_and_sends_no_data() {
    let initial = random_bytes(3, 1 << 20);
    let disk = TestDisk::from_bytes(initial.clone())
        .failing_reads_touching(20..21)
        .disk();
    let f = serve_initial(disk, initial, NbdServerOptions::default()).await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    // Sectors 16..24 in four requests: merged, and the merge touches the
    // bad sector, so all four fail, including those that do not touch it
    // themselves (the protocol allows any error; never wrong bytes). A
    // request after the gap is served on its own.
    let mut reqs = Vec::new();
    let mut lens = HashMap::new();
    for i in 0..4u64 {
        reqs.extend_from_slice(&read_header(i, (16 + 2 * i) * 512, 1024, 0));
        lens.insert(i, 1024);
    }
    reqs.extend_from_slice(&read_header(9, 64 * 512, 512, 0));
    lens.insert(9, 512);
    let replies = pipeline(&mut c, &reqs, 5, &lens).await;
    for i in 0..4u64 {
        assert_eq!(replies[&i], (EIO, Vec::new()), "cookie {i}");
    }
    assert_eq!(
        replies[&9],
        (0, f.initial[64 * 512..65 * 512].to_vec()),
        "a read past the bad range"
    );
    let stats = f.served.listener.server().stats();
    assert_eq!(stats.error_replies, 4);
    assert_eq!(stats.disk_reads, 2);
    // The stream is still in step after the error replies.
    assert_eq!(c.read(0, 512).await, (0, f.initial[..512].to_vec()));
}

#[tokio::test]
async fn many_large_reads_in_flight_with_one_read_slot_arrive_intact() {
    // More data in flight than the socket buffers hold, replies written by
    // the request tasks under the connection's writer lock: every reply
    // must arrive whole and in one piece, whatever order they come in.
    let f = vec_fixture(NbdServerOptions {
        max_parallel_reads: 1,
        max_merged_read_bytes: 256 << 10,
        ..Default::default()
    })
    .await;
    let (mut c, _, _) = RawClient::connect_go(&f.served.socket).await;
    let mut reqs = Vec::new();
    let mut lens = HashMap::new();
    let mut expect: HashMap<u64, (u64, u64)> = HashMap::new();
    let mut rng = test_rng(1);
    for cookie in 0..200u64 {
        let len = rng.random_range(1..=300 << 10);
        // Three of every four continue the previous request, so some
        // merge.
        let off = if cookie % 4 != 0 {
            let (po, pl) = expect[&(cookie - 1)];
            (po + pl).min(DISK_BYTES as u64 - u64::from(len))
        } else {
            rng.random_range(0..DISK_BYTES as u64 - u64::from(len))
        };
        reqs.extend_from_slice(&read_header(cookie, off, len, 0));
        lens.insert(cookie, len as usize);
        expect.insert(cookie, (off, u64::from(len)));
    }
    let replies = pipeline(&mut c, &reqs, 200, &lens).await;
    for (cookie, (off, len)) in &expect {
        let (error, data) = &replies[cookie];
        assert_eq!(*error, 0);
        assert!(
            data[..] == f.initial[*off as usize..(*off + *len) as usize],
            "cookie {cookie}: wrong bytes"
        );
    }
    let stats = f.served.listener.server().stats();
    assert_eq!(stats.requests, 200);
    assert!(stats.disk_reads < 200, "{stats:?}");
}

async fn connect_all(socket: &Path, n: usize) -> Vec<RawClient> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let (c, _, flags) = RawClient::connect_go(socket).await;
        assert_ne!(flags & FLAG_CAN_MULTI_CONN, 0, "multi-conn advertised");
        clients.push(c);
    }
    clients
}

#[tokio::test]
async fn multi_conn_clients_see_one_consistent_disk() {
    let initial = random_bytes(12, DISK_BYTES);
    let (disk, data, flushes) = VecDisk::create_counting(initial.clone());
    let f = serve_initial(disk, initial, NbdServerOptions::default()).await;
    let mut clients = connect_all(&f.served.socket, 4).await;

    // Connection 0 writes; once the write is acknowledged, every other
    // connection reads the new bytes (pipelined, merged reads included).
    let new = random_bytes(99, 256 << 10);
    let off = 1u64 << 20;
    assert_eq!(
        clients[0]
            .command(CMD_WRITE, 0, off, new.len() as u32, &new)
            .await,
        0
    );
    let mut readers = Vec::new();
    for (k, mut c) in clients.drain(1..).enumerate() {
        let new = new.clone();
        readers.push(tokio::spawn(async move {
            let mut reqs = Vec::new();
            let mut lens = HashMap::new();
            for i in 0..64u64 {
                reqs.extend_from_slice(&read_header(i, off + i * 4096, 4096, 0));
                lens.insert(i, 4096);
            }
            let replies = pipeline(&mut c, &reqs, 64, &lens).await;
            for i in 0..64usize {
                assert_eq!(
                    replies[&(i as u64)],
                    (0, new[i * 4096..(i + 1) * 4096].to_vec()),
                    "connection {} block {i}",
                    k + 1
                );
            }
            c
        }));
    }
    let mut others = Vec::new();
    for r in readers {
        others.push(r.await.unwrap());
    }
    // A flush on another connection covers the write completed on
    // connection 0: it reaches the shared disk.
    let before = flushes.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(others[0].command(CMD_FLUSH, 0, 0, 0, &[]).await, 0);
    assert_eq!(
        flushes.load(std::sync::atomic::Ordering::Relaxed),
        before + 1
    );
    assert_eq!(data.lock()[off as usize..off as usize + new.len()], new[..]);
    assert_eq!(f.served.listener.server().stats().connections, 4);
}
