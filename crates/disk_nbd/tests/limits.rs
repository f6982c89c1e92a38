//! What a hostile or broken client can make the server hold: the memory
//! charged to requests in flight (per connection and server-wide), the
//! handshake timeout, the timeout for clients that stop taking their
//! replies, and the connection limit.

mod common;

use std::time::Duration;

use common::Gated;
use common::GatedDisk;
use common::RawClient;
use common::VecDisk;
use common::serve;
use common::wait_for_stats;
use disk_nbd::NbdServerOptions;
use disk_nbd::protocol::*;
use disk_test_support::random_bytes;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

const DISK_BYTES: usize = 1 << 20;

/// Small limits, so a test reaches them with little data: requests and
/// merged reads of at most 64 KiB.
fn small(in_flight: usize, total: usize) -> NbdServerOptions {
    NbdServerOptions {
        max_request_bytes: 64 << 10,
        max_merged_read_bytes: 64 << 10,
        max_in_flight_bytes: in_flight,
        max_total_in_flight_bytes: total,
        ..Default::default()
    }
}

fn write_request(cookie: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = RequestHeader {
        flags: 0,
        command: CMD_WRITE,
        cookie,
        offset,
        length: payload.len() as u32,
    }
    .encode()
    .to_vec();
    b.extend_from_slice(payload);
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_unaligned_writes_on_many_connections_stay_under_the_server_wide_cap() {
    // The attack from outside: pipelined 256-byte writes off sector
    // boundaries, on several connections, while the disk holds them. Each
    // connection alone may charge 512 KiB; all together also only 512 KiB.
    const CONNECTIONS: usize = 4;
    const WRITES: usize = 600;
    const CAP: usize = 512 << 10;
    let (disk, gate) = GatedDisk::create(vec![0; DISK_BYTES], Gated::Writes);
    let data = gate.data.clone();
    let f = serve(disk, small(CAP, CAP)).await;
    let mut model = vec![0u8; DISK_BYTES];
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let (client, _, _) = RawClient::connect_go(&f.socket).await;
        let mut requests = Vec::new();
        for i in 0..WRITES {
            let n = c * WRITES + i;
            let offset = 100 + n * 256;
            let payload = random_bytes(n as u64 + 1, 256);
            model[offset..offset + 256].copy_from_slice(&payload);
            requests.extend_from_slice(&write_request(n as u64, offset as u64, &payload));
        }
        let (mut read_half, mut write_half) = client.stream.into_split();
        // The server stops reading once it is over budget, so the requests
        // are sent from a task of their own.
        tokio::spawn(async move { write_half.write_all(&requests).await.map(|_| write_half) });
        clients.push(tokio::spawn(async move {
            for _ in 0..WRITES {
                assert_eq!(read_half.read_u32().await.unwrap(), SIMPLE_REPLY_MAGIC);
                assert_eq!(read_half.read_u32().await.unwrap(), 0, "write error");
                read_half.read_u64().await.unwrap();
            }
        }));
    }

    // Some connection had to wait for the server-wide cap: the requests
    // the server has taken in fill it.
    let stats = wait_for_stats(
        f.listener.server(),
        "a request to wait for the server-wide cap",
        |s| s.memory_cap_waits > 0,
    )
    .await;
    assert!(stats.in_flight_bytes <= CAP as u64, "{stats:?}");
    assert!(stats.peak_in_flight_bytes <= CAP as u64, "{stats:?}");
    // Each request taken in was charged at least its payload and the
    // sector of its read-modify-write (every connection may have read one
    // more request that waits for its charge).
    let taken = stats.requests - CONNECTIONS as u64;
    assert!(
        taken * (256 + 512) <= CAP as u64,
        "{taken} requests in flight: {stats:?}"
    );
    assert!(taken < (CONNECTIONS * WRITES) as u64);

    gate.open(1 << 20);
    for c in clients {
        c.await.unwrap();
    }
    assert!(data.lock()[..] == model[..], "the disk holds every write");
    let stats = wait_for_stats(f.listener.server(), "every charge to be given back", |s| {
        s.in_flight_bytes == 0
    })
    .await;
    assert_eq!(stats.requests, (CONNECTIONS * WRITES) as u64);
    assert!(stats.peak_in_flight_bytes <= CAP as u64, "{stats:?}");
}

#[tokio::test]
async fn a_client_that_stalls_in_the_handshake_is_disconnected() {
    let (disk, _) = VecDisk::create(vec![0; DISK_BYTES], false);
    let f = serve(
        disk,
        NbdServerOptions {
            handshake_timeout: Duration::from_millis(100),
            ..Default::default()
        },
    )
    .await;
    // Reads the greeting, then says nothing.
    let (mut silent, _) = RawClient::connect_raw(&f.socket).await;
    assert!(silent.closed_by_server().await);
    // One that sent its flags and then stalls mid-option.
    let mut slow = RawClient::connect(&f.socket).await;
    slow.stream
        .write_all(&IHAVEOPT.to_be_bytes())
        .await
        .unwrap();
    assert!(slow.closed_by_server().await);
    let stats = f.listener.server().stats();
    assert_eq!(stats.timed_out_connections, 2, "{stats:?}");
    // A client that handshakes at once is served.
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    assert_eq!(c.read(0, 512).await, (0, vec![0; 512]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_no_replies_is_closed_and_frees_the_cap() {
    // The cap holds a few 64 KiB reads. The first client sends far more
    // reads than the socket buffers hold and never reads a reply: its
    // requests fill the cap until the stall timeout closes it. Then
    // another client is served.
    const CAP: usize = 256 << 10;
    let initial = random_bytes(5, DISK_BYTES);
    let (disk, _) = VecDisk::create(initial.clone(), false);
    let f = serve(
        disk,
        NbdServerOptions {
            stalled_reply_timeout: Duration::from_millis(300),
            ..small(CAP, CAP)
        },
    )
    .await;
    let (mut stalled, _, _) = RawClient::connect_go(&f.socket).await;
    let mut requests = Vec::new();
    for i in 0..1024u64 {
        let offset = (i * (64 << 10)) % DISK_BYTES as u64;
        requests.extend_from_slice(
            &RequestHeader {
                flags: 0,
                command: CMD_READ,
                cookie: i,
                offset,
                length: 64 << 10,
            }
            .encode(),
        );
    }
    stalled.stream.write_all(&requests).await.unwrap();

    let stats = wait_for_stats(
        f.listener.server(),
        "the stalled client to be closed",
        |s| s.timed_out_connections == 1 && s.in_flight_bytes == 0,
    )
    .await;
    assert!(stats.peak_in_flight_bytes <= CAP as u64, "{stats:?}");
    assert!(stats.requests < 1024, "{stats:?}");
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    assert_eq!(c.read(4096, 4096).await, (0, initial[4096..8192].to_vec()));
    // The stalled client gets what was already in its socket, then EOF.
    let mut rest = Vec::new();
    stalled.stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.len() < 1024 * ((64 << 10) + 16));
}

#[tokio::test]
async fn connections_past_the_limit_are_refused() {
    let (disk, _) = VecDisk::create(vec![7; DISK_BYTES], false);
    let f = serve(
        disk,
        NbdServerOptions {
            max_connections: 2,
            ..Default::default()
        },
    )
    .await;
    let (mut a, _, _) = RawClient::connect_go(&f.socket).await;
    let (b, _, _) = RawClient::connect_go(&f.socket).await;
    // The third is closed before the greeting.
    let mut third = tokio::net::UnixStream::connect(&f.socket).await.unwrap();
    let mut greeting = Vec::new();
    third.read_to_end(&mut greeting).await.unwrap();
    assert!(greeting.is_empty(), "{greeting:?}");
    assert_eq!(f.listener.server().stats().refused_connections, 1);
    assert_eq!(a.read(0, 512).await, (0, vec![7; 512]));
    // Once one leaves, a new client gets its slot.
    drop(b);
    wait_for_stats(f.listener.server(), "the connection to close", |s| {
        s.active_connections == 1
    })
    .await;
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    assert_eq!(c.read(512, 512).await, (0, vec![7; 512]));
}
