//! Protocol-level tests with a byte-level client: handshake options,
//! transmission commands, malformed input, concurrency and shutdown.
//!
//! DEVNOTE: one file of over 800 lines on purpose: it is the byte-level
//! conformance suite of one protocol, each test short and independent;
//! the raw client and the test disks it shares are in `tests/common`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::RawClient;
use common::VecDisk;
use disk_nbd::NbdListener;
use disk_nbd::NbdServer;
use disk_nbd::NbdServerOptions;
use disk_nbd::protocol::*;
use disk_nbd::serve_unix;
use disk_test_support::random_bytes;
use tokio::io::AsyncWriteExt;

const DISK_BYTES: usize = 1 << 20;

struct Fixture {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    listener: NbdListener,
    data: std::sync::Arc<parking_lot::Mutex<Vec<u8>>>,
    initial: Vec<u8>,
}

async fn fixture(options: NbdServerOptions, disk_read_only: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let initial = random_bytes(42, DISK_BYTES);
    let (disk, data) = VecDisk::create(initial.clone(), disk_read_only);
    let listener = serve_unix(&socket, disk, options).await.unwrap();
    Fixture {
        _dir: dir,
        socket,
        listener,
        data,
        initial,
    }
}

async fn writable() -> Fixture {
    fixture(NbdServerOptions::default(), false).await
}

/// Proves the server still serves a fresh client correctly.
async fn assert_serves_another_client(f: &Fixture) {
    let (mut c, size, _) = RawClient::connect_go(&f.socket).await;
    assert_eq!(size, DISK_BYTES as u64);
    let (error, data) = c.read(4096, 4096).await;
    assert_eq!(error, 0);
    assert_eq!(data, f.data.lock()[4096..8192]);
}

#[tokio::test]
async fn go_reports_size_flags_and_block_sizes() {
    let f = writable().await;
    let mut c = RawClient::connect(&f.socket).await;
    let replies = c
        .info_or_go(OPT_GO, "", &[INFO_BLOCK_SIZE, INFO_NAME])
        .await;
    assert_eq!(replies.last().unwrap().reply, REP_ACK);
    let mut seen = HashMap::new();
    for r in &replies[..replies.len() - 1] {
        assert_eq!(r.reply, REP_INFO);
        seen.insert(
            u16::from_be_bytes([r.data[0], r.data[1]]),
            r.data[2..].to_vec(),
        );
    }
    let export = &seen[&INFO_EXPORT];
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        DISK_BYTES as u64
    );
    let flags = u16::from_be_bytes(export[8..10].try_into().unwrap());
    assert_eq!(
        flags,
        FLAG_HAS_FLAGS
            | FLAG_SEND_FLUSH
            | FLAG_SEND_FUA
            | FLAG_SEND_TRIM
            | FLAG_SEND_WRITE_ZEROES
            | FLAG_CAN_MULTI_CONN
    );
    let bs = &seen[&INFO_BLOCK_SIZE];
    let words: Vec<u32> = bs
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(words, vec![512, 4096, 32 << 20]);
    assert_eq!(seen[&INFO_NAME], b"");

    let (error, data) = c.read(0, 512).await;
    assert_eq!(error, 0);
    assert_eq!(data, f.initial[..512]);
    c.send_request(CMD_DISC, 0, 1, 0, 0, &[]).await;
    assert!(c.closed_by_server().await);
}

#[tokio::test]
async fn unknown_options_are_refused_and_haggling_continues() {
    let f = fixture(
        NbdServerOptions {
            export_name: Some("disk0".into()),
            description: Some("test disk".into()),
            ..Default::default()
        },
        false,
    )
    .await;
    let mut c = RawClient::connect(&f.socket).await;

    for option in [
        0x1234_5678,
        OPT_STRUCTURED_REPLY,
        OPT_STARTTLS,
        OPT_SET_META_CONTEXT,
    ] {
        c.send_option(option, b"some data").await;
        let r = c.read_option_reply().await;
        assert_eq!((r.option, r.reply), (option, REP_ERR_UNSUP));
    }

    c.send_option(OPT_LIST, &[]).await;
    let r = c.read_option_reply().await;
    assert_eq!(r.reply, REP_SERVER);
    assert_eq!(r.data, [&5u32.to_be_bytes()[..], b"disk0"].concat());
    assert_eq!(c.read_option_reply().await.reply, REP_ACK);

    c.send_option(OPT_LIST, b"x").await;
    assert_eq!(c.read_option_reply().await.reply, REP_ERR_INVALID);

    // A truncated info request is invalid, an unknown name is unknown.
    c.send_option(OPT_INFO, &[0, 0, 0, 9, b'a']).await;
    assert_eq!(c.read_option_reply().await.reply, REP_ERR_INVALID);
    let r = c.info_or_go(OPT_INFO, "other", &[]).await;
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].reply, REP_ERR_UNKNOWN);
    let r = c.info_or_go(OPT_GO, "other", &[]).await;
    assert_eq!(r[0].reply, REP_ERR_UNKNOWN);

    // INFO with name and description, then GO by the configured name.
    let r = c
        .info_or_go(OPT_INFO, "disk0", &[INFO_NAME, INFO_DESCRIPTION])
        .await;
    assert_eq!(r.last().unwrap().reply, REP_ACK);
    let texts: Vec<&[u8]> = r
        .iter()
        .filter(|r| {
            r.data.len() >= 2
                && matches!(
                    u16::from_be_bytes([r.data[0], r.data[1]]),
                    INFO_NAME | INFO_DESCRIPTION
                )
        })
        .map(|r| &r.data[2..])
        .collect();
    assert_eq!(texts, vec![&b"disk0"[..], &b"test disk"[..]]);

    let r = c.info_or_go(OPT_GO, "disk0", &[]).await;
    assert_eq!(r.last().unwrap().reply, REP_ACK);
    let (error, data) = c.read(512, 1024).await;
    assert_eq!(error, 0);
    assert_eq!(data, f.initial[512..1536]);
}

#[tokio::test]
async fn export_name_option_with_and_without_zeroes() {
    let f = fixture(
        NbdServerOptions {
            export_name: Some("disk0".into()),
            ..Default::default()
        },
        false,
    )
    .await;

    // Without NO_ZEROES: size, flags and 124 zero bytes.
    let (mut c, _) = RawClient::connect_raw(&f.socket).await;
    c.stream.write_u32(FLAG_C_FIXED_NEWSTYLE).await.unwrap();
    c.send_option(OPT_EXPORT_NAME, b"disk0").await;
    let mut reply = [0xffu8; 8 + 2 + 124];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut reply)
        .await
        .unwrap();
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().unwrap()),
        DISK_BYTES as u64
    );
    assert!(reply[10..].iter().all(|&b| b == 0));
    let (error, data) = c.read(0, 512).await;
    assert_eq!(error, 0);
    assert_eq!(data, f.initial[..512]);

    // With NO_ZEROES and the default (empty) name: no padding.
    let mut c = RawClient::connect(&f.socket).await;
    c.send_option(OPT_EXPORT_NAME, b"").await;
    let mut reply = [0u8; 10];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut reply)
        .await
        .unwrap();
    let (error, data) = c.read(1024, 512).await;
    assert_eq!(error, 0);
    assert_eq!(data, f.initial[1024..1536]);

    // An unknown name cannot be answered with an error: the server closes.
    let mut c = RawClient::connect(&f.socket).await;
    c.send_option(OPT_EXPORT_NAME, b"nope").await;
    assert!(c.closed_by_server().await);
    assert_serves_another_client(&f).await;
}

#[tokio::test]
async fn bad_handshake_input_closes_only_that_connection() {
    let f = writable().await;

    // Bad option magic.
    let mut c = RawClient::connect(&f.socket).await;
    c.stream
        .write_all(b"NOTMAGIC\0\0\0\x07\0\0\0\0")
        .await
        .unwrap();
    assert!(c.closed_by_server().await);

    // Unknown client flags.
    let (mut c, _) = RawClient::connect_raw(&f.socket).await;
    c.stream.write_u32(0x8000_0001).await.unwrap();
    assert!(c.closed_by_server().await);

    // Absurdly long option data.
    let mut c = RawClient::connect(&f.socket).await;
    let mut b = IHAVEOPT.to_be_bytes().to_vec();
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&u32::MAX.to_be_bytes());
    c.stream.write_all(&b).await.unwrap();
    assert!(c.closed_by_server().await);

    // Long but bounded option data is skipped and refused.
    let mut c = RawClient::connect(&f.socket).await;
    c.send_option(0x99, &vec![0u8; 100 << 10]).await;
    assert_eq!(c.read_option_reply().await.reply, REP_ERR_UNSUP);
    c.send_option(OPT_GO, &vec![0u8; 100 << 10]).await;
    assert_eq!(c.read_option_reply().await.reply, REP_ERR_TOO_BIG);
    c.go().await;

    // A client that hangs up in the middle of the handshake.
    let (c, _) = RawClient::connect_raw(&f.socket).await;
    drop(c);

    // NBD_OPT_ABORT is acknowledged, then the server closes.
    let mut c = RawClient::connect(&f.socket).await;
    c.send_option(OPT_ABORT, &[]).await;
    assert_eq!(c.read_option_reply().await.reply, REP_ACK);
    assert!(c.closed_by_server().await);

    assert_serves_another_client(&f).await;
}

#[tokio::test]
async fn invalid_requests_get_errors_and_the_connection_stays_usable() {
    let f = writable().await;
    let (mut c, size, _) = RawClient::connect_go(&f.socket).await;

    // Oversized read: EINVAL, no data.
    let (error, data) = c.read(0, (32 << 20) + 1).await;
    assert_eq!((error, data.len()), (EINVAL, 0));
    // Out of range reads: EINVAL.
    assert_eq!(c.read(size - 512, 1024).await.0, EINVAL);
    assert_eq!(c.read(u64::MAX - 10, 512).await.0, EINVAL);
    // Write past the end: ENOSPC, and its payload is skipped.
    assert_eq!(
        c.command(CMD_WRITE, 0, size - 512, 1024, &[0xee; 1024])
            .await,
        ENOSPC
    );
    // Oversized write: EINVAL, payload skipped too.
    let big = vec![0xddu8; (32 << 20) + 512];
    assert_eq!(
        c.command(CMD_WRITE, 0, 0, big.len() as u32, &big).await,
        EINVAL
    );
    // Trim past the end: EINVAL; write zeroes past the end: ENOSPC.
    assert_eq!(c.command(CMD_TRIM, 0, size, 512, &[]).await, EINVAL);
    assert_eq!(
        c.command(CMD_WRITE_ZEROES, 0, size - 512, 1024, &[]).await,
        ENOSPC
    );
    // Unknown command, commands that were not negotiated, unknown flags.
    assert_eq!(c.command(0x55, 0, 0, 0, &[]).await, EINVAL);
    assert_eq!(c.command(CMD_BLOCK_STATUS, 0, 0, 512, &[]).await, EINVAL);
    assert_eq!(c.command(CMD_CACHE, 0, 0, 512, &[]).await, EINVAL);
    c.send_request(CMD_READ, CMD_FLAG_DF, 3, 0, 512, &[]).await;
    assert_eq!(c.read_reply(|_| 512).await.0, EINVAL);
    assert_eq!(
        c.command(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512, &[])
            .await,
        EINVAL
    );

    // Nothing above changed the disk, and the connection still works.
    assert_eq!(*f.data.lock(), f.initial);
    let (error, data) = c.read(size - 512, 512).await;
    assert_eq!(error, 0);
    assert_eq!(data, f.initial[DISK_BYTES - 512..]);
    assert!(f.listener.server().stats().error_replies >= 11);

    // A bad request magic cannot be resynced: the server hangs up.
    c.stream
        .write_all(&[0u8; REQUEST_HEADER_LEN])
        .await
        .unwrap();
    assert!(c.closed_by_server().await);
    assert_serves_another_client(&f).await;
}

#[tokio::test]
async fn writes_trims_zeroes_and_flush_reach_the_disk() {
    let f = writable().await;
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    let mut expect = f.initial.clone();

    // Aligned write with FUA.
    let payload = random_bytes(7, 8192);
    assert_eq!(
        c.command(CMD_WRITE, CMD_FLAG_FUA, 4096, 8192, &payload)
            .await,
        0
    );
    expect[4096..12288].copy_from_slice(&payload);

    // Unaligned writes: inside one sector, across sectors, long.
    for (off, len, seed) in [
        (1000u64, 10usize, 1u64),
        (511, 2, 2),
        (70_000, 5000, 3),
        (130_001, 1, 4),
    ] {
        let p = random_bytes(seed, len);
        assert_eq!(c.command(CMD_WRITE, 0, off, len as u32, &p).await, 0);
        expect[off as usize..off as usize + len].copy_from_slice(&p);
    }
    // Zero-length write and read are no-ops.
    assert_eq!(c.command(CMD_WRITE, 0, 100, 0, &[]).await, 0);
    assert_eq!(c.read(100, 0).await, (0, Vec::new()));

    // Write zeroes, unaligned and spanning a 1 MiB chunk boundary is not
    // possible on a 1 MiB disk, so span several sectors instead.
    assert_eq!(
        c.command(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 200_003, 70_000, &[])
            .await,
        0
    );
    expect[200_003..270_003].fill(0);

    // Trim discards whole sectors inside the range only (VecDisk zeroes
    // them); the partial sectors at the ends keep their bytes.
    assert_eq!(c.command(CMD_TRIM, 0, 300_100, 2048, &[]).await, 0);
    expect[300_544..302_080].fill(0);

    assert_eq!(c.command(CMD_FLUSH, 0, 0, 0, &[]).await, 0);
    assert_eq!(*f.data.lock(), expect);

    // Unaligned reads return exactly the bytes asked for.
    for (off, len) in [
        (1u64, 1u32),
        (511, 3),
        (69_999, 5003),
        (DISK_BYTES as u64 - 7, 7),
    ] {
        let (error, data) = c.read(off, len).await;
        assert_eq!(error, 0);
        assert_eq!(data, expect[off as usize..off as usize + len as usize]);
    }
    let stats = f.listener.server().stats();
    assert!(stats.bytes_written >= 8192 + 5013);
    assert_eq!(stats.error_replies, 0);
}

#[tokio::test]
async fn read_only_export_refuses_writes_with_eperm() {
    for (options, disk_ro) in [
        (
            NbdServerOptions {
                read_only: true,
                ..Default::default()
            },
            false,
        ),
        (NbdServerOptions::default(), true),
    ] {
        let f = fixture(options, disk_ro).await;
        let (mut c, _, flags) = RawClient::connect_go(&f.socket).await;
        assert_ne!(flags & FLAG_READ_ONLY, 0);
        assert_eq!(flags & (FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES), 0);
        assert_eq!(c.command(CMD_WRITE, 0, 0, 512, &[1; 512]).await, EPERM);
        assert_eq!(c.command(CMD_TRIM, 0, 0, 512, &[]).await, EPERM);
        assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 0, 512, &[]).await, EPERM);
        assert_eq!(c.command(CMD_FLUSH, 0, 0, 0, &[]).await, 0);
        let (error, data) = c.read(0, 512).await;
        assert_eq!(error, 0);
        assert_eq!(data, f.initial[..512]);
        assert_eq!(*f.data.lock(), f.initial);
    }
}

#[tokio::test]
async fn many_requests_in_flight_on_one_connection() {
    let f = writable().await;
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    // Pipeline 64 writes to distinct 4 KiB blocks, then 64 reads of them,
    // without waiting for any reply in between.
    let mut sent = Vec::new();
    for i in 0..64u64 {
        let p = random_bytes(1000 + i, 4096);
        sent.extend_from_slice(
            &RequestHeader {
                flags: 0,
                command: CMD_WRITE,
                cookie: i,
                offset: i * 8192,
                length: 4096,
            }
            .encode(),
        );
        sent.extend_from_slice(&p);
    }
    for i in 0..64u64 {
        sent.extend_from_slice(
            &RequestHeader {
                flags: 0,
                command: CMD_READ,
                cookie: 1000 + i,
                offset: i * 8192 + 4096,
                length: 4096,
            }
            .encode(),
        );
    }
    c.stream.write_all(&sent).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..128 {
        let (error, cookie, data) = c
            .read_reply(|cookie| if cookie >= 1000 { 4096 } else { 0 })
            .await;
        assert_eq!(error, 0);
        assert!(seen.insert(cookie), "duplicate reply for {cookie}");
        if cookie >= 1000 {
            let off = (cookie - 1000) as usize * 8192 + 4096;
            assert_eq!(data, f.initial[off..off + 4096]);
        }
    }
    let disk = f.data.lock();
    for i in 0..64u64 {
        let off = i as usize * 8192;
        assert_eq!(disk[off..off + 4096], random_bytes(1000 + i, 4096));
    }
}

#[tokio::test]
async fn concurrent_clients_share_one_disk() {
    let f = writable().await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let socket = f.socket.clone();
        tasks.push(tokio::spawn(async move {
            let (mut c, _, _) = RawClient::connect_go(&socket).await;
            // Unaligned writes into the same sectors as neighbouring clients
            // exercise the read-modify-write lock.
            for j in 0..32u64 {
                let off = j * 4096 + i * 100;
                let p = random_bytes(i * 1000 + j, 100);
                assert_eq!(c.command(CMD_WRITE, 0, off, 100, &p).await, 0);
            }
            assert_eq!(c.command(CMD_FLUSH, 0, 0, 0, &[]).await, 0);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let disk = f.data.lock();
    for i in 0..8u64 {
        for j in 0..32u64 {
            let off = (j * 4096 + i * 100) as usize;
            assert_eq!(
                disk[off..off + 100],
                random_bytes(i * 1000 + j, 100),
                "client {i} write {j}"
            );
        }
    }
    assert_eq!(f.listener.server().stats().connections, 8);
}

#[tokio::test]
async fn shutdown_finishes_connections_and_removes_the_socket() {
    let f = writable().await;
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    let (mut idle, _) = RawClient::connect_raw(&f.socket).await;
    assert_eq!(c.read(0, 512).await.0, 0);
    let socket = f.socket.clone();
    let listener = f.listener;
    // A clone of the server (as a signal handler would hold) stops it.
    let server = listener.server().clone();
    let server_again = server.clone();
    assert!(!server.is_shut_down());
    tokio::spawn(async move { server.shutdown() });
    listener.closed().await;
    assert!(listener.server().is_shut_down());
    listener.shutdown().await.unwrap();
    assert!(!socket.exists());
    assert!(c.closed_by_server().await);
    assert!(idle.closed_by_server().await);
    assert!(tokio::net::UnixStream::connect(&socket).await.is_err());
    // A shut-down server stays down.
    assert!(matches!(
        server_again.listen_unix(&socket).await,
        Err(disk_nbd::NbdError::ShutDown)
    ));
}

#[tokio::test]
async fn shutdown_gives_up_on_a_client_that_stopped_reading() {
    let f = fixture(
        NbdServerOptions {
            shutdown_grace: std::time::Duration::from_millis(100),
            ..Default::default()
        },
        false,
    )
    .await;
    let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
    // 64 MiB of read replies, far more than the socket buffers hold.
    let mut reqs = Vec::new();
    for i in 0..64 {
        reqs.extend_from_slice(
            &RequestHeader {
                flags: 0,
                command: CMD_READ,
                cookie: i,
                offset: 0,
                length: DISK_BYTES as u32,
            }
            .encode(),
        );
    }
    c.stream.write_all(&reqs).await.unwrap();
    // The first reply header proves the server is busy replying; then the
    // client stops reading.
    let mut first = [0u8; SIMPLE_REPLY_LEN];
    tokio::io::AsyncReadExt::read_exact(&mut c.stream, &mut first)
        .await
        .unwrap();
    assert_eq!(first[..8], encode_simple_reply(0, 0)[..8]);
    let done =
        tokio::time::timeout(std::time::Duration::from_secs(60), f.listener.shutdown()).await;
    assert!(
        matches!(done, Ok(Ok(()))),
        "shutdown hung on a stalled client"
    );
}

#[tokio::test]
async fn listening_rules_for_sockets_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let (disk, data) = VecDisk::create(random_bytes(5, 64 << 10), false);
    let server = NbdServer::new(disk, NbdServerOptions::default()).unwrap();

    // A regular file is never replaced; a live socket is not stolen.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(server.listen_unix(&file).await.is_err());
    let sock = dir.path().join("s.sock");
    let live = server.listen_unix(&sock).await.unwrap();
    assert!(server.listen_unix(&sock).await.is_err());
    assert_eq!(
        live.nbd_uri(),
        format!("nbd+unix:///?socket={}", sock.display())
    );

    // A stale socket file (no server behind it) is replaced.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let l2 = server.listen_unix(&stale).await.unwrap();
    let (mut c, size, _) = RawClient::connect_go(&stale).await;
    assert_eq!(size, 64 << 10);
    assert_eq!(c.read(0, 512).await.1, data.lock()[..512]);

    // TCP only on loopback.
    assert!(matches!(
        server.listen_tcp("0.0.0.0:0".parse().unwrap()).await,
        Err(disk_nbd::NbdError::InvalidOptions(_))
    ));
    let tcp = server
        .listen_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    assert!(tcp.nbd_uri().starts_with("nbd://127.0.0.1:"));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut hello = [0u8; 18];
    tokio::io::AsyncReadExt::read_exact(&mut s, &mut hello)
        .await
        .unwrap();
    assert_eq!(&hello[..8], b"NBDMAGIC");

    drop(l2);
    drop(tcp);
    live.shutdown().await.unwrap();
}

#[test]
fn inconsistent_options_are_rejected() {
    let (disk, _) = VecDisk::create(vec![0; 4096], false);
    for options in [
        NbdServerOptions {
            max_request_bytes: 1000,
            ..Default::default()
        },
        NbdServerOptions {
            max_request_bytes: 4096 + 1,
            ..Default::default()
        },
        NbdServerOptions {
            max_in_flight_bytes: 1 << 20,
            ..Default::default()
        },
        NbdServerOptions {
            export_name: Some("a\0b".into()),
            ..Default::default()
        },
        NbdServerOptions {
            max_parallel_reads: 0,
            ..Default::default()
        },
    ] {
        assert!(NbdServer::new(disk.clone(), options).is_err());
    }
    let s = NbdServer::new(
        disk,
        NbdServerOptions {
            byte_granularity: true,
            max_request_bytes: 64 << 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(s.block_sizes().minimum, 1);
    assert_eq!(s.block_sizes().preferred, 4096);
    assert_eq!(s.block_sizes().maximum, 64 << 10);
}

#[tokio::test]
async fn four_kib_sector_disk_serves_byte_granular_requests() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let initial = random_bytes(8, 256 << 10);
    let (disk, data) = VecDisk::with_sector_size(initial.clone(), false, 4096);
    let listener = serve_unix(&socket, disk, NbdServerOptions::default())
        .await
        .unwrap();
    assert_eq!(listener.server().block_sizes().minimum, 4096);
    let (mut c, size, _) = RawClient::connect_go(&socket).await;
    assert_eq!(size, 256 << 10);
    let mut expect = initial;
    for (off, len, seed) in [
        (1u64, 1usize, 1u64),
        (4095, 2, 2),
        (5000, 9000, 3),
        (16384, 4096, 4),
        ((256 << 10) - 10, 10, 5),
    ] {
        let p = random_bytes(seed, len);
        assert_eq!(c.command(CMD_WRITE, 0, off, len as u32, &p).await, 0);
        expect[off as usize..off as usize + len].copy_from_slice(&p);
        let (error, back) = c.read(off.saturating_sub(3), len as u32 + 3).await;
        assert_eq!(error, 0);
        let from = off.saturating_sub(3) as usize;
        assert_eq!(back, expect[from..from + len + 3]);
    }
    assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 40_000, 50_000, &[]).await, 0);
    expect[40_000..90_000].fill(0);
    assert!(*data.lock() == expect);
    listener.shutdown().await.unwrap();
}

#[tokio::test]
async fn random_garbage_never_stops_the_server() {
    use rand::Rng;
    use rand::SeedableRng;
    let f = writable().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad);
    for round in 0..60 {
        let mut junk = vec![0u8; rng.random_range(0..2000)];
        rng.fill(&mut junk[..]);
        if round % 3 == 0 {
            // Garbage from the first byte on.
            let (mut c, _) = RawClient::connect_raw(&f.socket).await;
            let _ = c.stream.write_all(&junk).await;
        } else if round % 3 == 1 {
            // Garbage options after valid client flags.
            let mut c = RawClient::connect(&f.socket).await;
            c.send_option(rng.random(), &junk).await;
            let _ = c.stream.write_all(&junk).await;
        } else {
            // Requests with valid magic but random fields, then garbage.
            let (mut c, _, _) = RawClient::connect_go(&f.socket).await;
            for _ in 0..8 {
                let h = RequestHeader {
                    flags: rng.random(),
                    command: rng.random_range(0..10),
                    cookie: rng.random(),
                    offset: if rng.random() {
                        rng.random()
                    } else {
                        rng.random_range(0..DISK_BYTES as u64)
                    },
                    length: rng.random_range(0..70_000),
                };
                let _ = c.stream.write_all(&h.encode()).await;
            }
            let _ = c.stream.write_all(&junk).await;
        }
        // The client hangs up; the server must simply drop the connection.
    }
    assert_serves_another_client(&f).await;
    let stats = f.listener.server().stats();
    assert!(stats.connections > 60);
}

#[tokio::test]
async fn flush_and_fua_reach_the_disk_as_flushes() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let (disk, data, flushes) = VecDisk::create_counting(vec![0xff; 1 << 20]);
    let listener = serve_unix(&socket, disk, NbdServerOptions::default())
        .await
        .unwrap();
    let (mut c, _, _) = RawClient::connect_go(&socket).await;
    assert_eq!(c.command(CMD_FLUSH, 0, 0, 0, &[]).await, 0);
    assert_eq!(flushes.load(Relaxed), 1);
    // Write zeroes over several chunks with FUA: one flush at the end.
    assert_eq!(
        c.command(CMD_WRITE_ZEROES, CMD_FLAG_FUA, 1000, 600_000, &[])
            .await,
        0
    );
    assert_eq!(flushes.load(Relaxed), 2);
    // Without FUA: none.
    assert_eq!(c.command(CMD_WRITE_ZEROES, 0, 0, 512, &[]).await, 0);
    assert_eq!(flushes.load(Relaxed), 2);
    {
        let d = data.lock();
        assert!(d[..512].iter().all(|&b| b == 0));
        assert!(d[512..1000].iter().all(|&b| b == 0xff));
        assert!(d[1000..601_000].iter().all(|&b| b == 0));
        assert!(d[601_000..].iter().all(|&b| b == 0xff));
    }
    listener.shutdown().await.unwrap();
}

#[tokio::test]
async fn random_byte_granular_operations_match_a_model() {
    use rand::Rng;
    use rand::SeedableRng;
    let f = writable().await;
    let (mut c, size, _) = RawClient::connect_go(&f.socket).await;
    let mut model = f.initial.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0dd);
    for step in 0..600 {
        let len = rng.random_range(0..20_000usize);
        let off = rng.random_range(0..=(size as usize - len));
        match rng.random_range(0..10) {
            0..=3 => {
                let p = random_bytes(step, len);
                assert_eq!(c.command(CMD_WRITE, 0, off as u64, len as u32, &p).await, 0);
                model[off..off + len].copy_from_slice(&p);
            }
            4 => {
                let error = c
                    .command(CMD_WRITE_ZEROES, 0, off as u64, len as u32, &[])
                    .await;
                assert_eq!(error, 0);
                model[off..off + len].fill(0);
            }
            5 => {
                // VecDisk zeroes unmapped sectors; only whole sectors
                // inside the range are trimmed.
                assert_eq!(c.command(CMD_TRIM, 0, off as u64, len as u32, &[]).await, 0);
                let first = off.div_ceil(512) * 512;
                let end = (off + len) / 512 * 512;
                if first < end {
                    model[first..end].fill(0);
                }
            }
            _ => {
                let (error, data) = c.read(off as u64, len as u32).await;
                assert_eq!(error, 0);
                assert!(
                    data == model[off..off + len],
                    "step {step}: read {off}+{len}"
                );
            }
        }
    }
    assert!(*f.data.lock() == model);
}
