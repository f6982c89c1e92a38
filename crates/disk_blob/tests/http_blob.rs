//! `HttpBlob` against a real HTTP(S) server on 127.0.0.1 with injected
//! faults (`blob_test_servers::FaultServer`).
//!
//! DEVNOTE: one file of over 800 lines on purpose: it is `HttpBlob`'s
//! contract against one fault server (ranges, retries, validators,
//! redirects, TLS, readahead), each test short and independent.

mod common;

use blob_test_servers::Fault;
use blob_test_servers::FaultServer;
use blob_test_servers::Times;
use blob_test_servers::error_renderings;
use blob_test_servers::images::random_bytes;
use common::read_vec;
use disk_blob::Blob;
use disk_blob::BlobCounters;
use disk_blob::BlobError;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

const PATH: &str = "/images/disk.img";

/// Options with short backoffs so retry tests stay quick.
fn fast_opts() -> HttpBlobOptions {
    HttpBlobOptions {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        max_retry_after: Duration::from_secs(2),
        request_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

fn server_with(len: usize, seed: u64) -> (FaultServer, Vec<u8>) {
    let server = FaultServer::start().unwrap();
    let data = random_bytes(seed, len);
    server.put_blob(PATH, data.clone());
    (server, data)
}

#[tokio::test]
async fn open_learns_size_and_validators() {
    let (server, data) = server_with(300_001, 1);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    assert_eq!(blob.len(), data.len() as u64);
    let v = blob.validators();
    assert_eq!(v.etag, server.etag(PATH));
    assert_eq!(v.last_modified, server.last_modified(PATH));
    assert!(v.has_strong_etag());
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "HEAD");
    assert_eq!(
        blob.counters(),
        BlobCounters {
            requests: 1,
            ..Default::default()
        }
    );
}

#[tokio::test]
async fn refused_head_falls_back_to_ranged_get() {
    let (server, data) = server_with(70_000, 2);
    server.set_fault(Fault::RefuseHead, Times::Always);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    assert_eq!(blob.len(), data.len() as u64);
    assert_eq!(blob.validators().etag, server.etag(PATH));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].status),
        ("HEAD", Some(405))
    );
    assert_eq!(reqs[1].method, "GET");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=0-0"));
    assert_eq!(read_vec(&blob, 69_000, 1000).await.unwrap(), data[69_000..]);
}

#[tokio::test]
async fn ranges_are_byte_exact_and_pinned() {
    let len = 3 * 1024 * 1024 + 777;
    let (server, data) = server_with(len, 3);
    let opts = HttpBlobOptions {
        max_request_size: 256 * 1024,
        ..fast_opts()
    };
    let blob = HttpBlob::open(&server.url(PATH), opts).await.unwrap();
    let mut rng = blob_test_servers::images::test_rng(99);
    let mut cases: Vec<(usize, usize)> = vec![
        (0, 1),
        (len - 1, 1),
        (0, len),
        (256 * 1024 - 1, 2),
        (100, 256 * 1024),
        (len - 300_000, 300_000),
    ];
    for _ in 0..40 {
        let off = rng.random_range(0..len);
        let n = rng.random_range(1..=(len - off).min(600_000));
        cases.push((off, n));
    }
    for (off, n) in cases {
        let got = read_vec(&blob, off as u64, n).await.unwrap();
        assert!(
            got == data[off..off + n],
            "mismatch at offset {off} len {n}"
        );
    }
    let etag = server.etag(PATH).unwrap();
    for r in server.requests().iter().filter(|r| r.method == "GET") {
        let range = r.range.as_deref().expect("every GET has a Range");
        let (a, b) = range
            .strip_prefix("bytes=")
            .and_then(|s| s.split_once('-'))
            .unwrap();
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        assert!(b - a < 256 * 1024, "piece larger than max_request_size");
        assert_eq!(
            a / (256 * 1024),
            b / (256 * 1024),
            "piece crosses an alignment boundary"
        );
        assert_eq!(r.header("if-match"), Some(etag.as_str()));
        assert_eq!(r.status, Some(206));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_read_is_split_into_parallel_aligned_requests() {
    let len = 9 * 1024 * 1024;
    let (server, data) = server_with(len, 4);
    let opts = HttpBlobOptions {
        max_request_size: 1024 * 1024,
        max_connections: 4,
        ..fast_opts()
    };
    let blob = Arc::new(HttpBlob::open(&server.url(PATH), opts).await.unwrap());
    server.reset_stats();
    // Starts mid-chunk, so the first and last pieces are partial.
    let off = 512 * 1024;
    let n = 8 * 1024 * 1024;
    let got = read_vec(&*blob, off as u64, n).await.unwrap();
    assert!(got == data[off..off + n]);
    let gets: Vec<String> = server
        .requests()
        .iter()
        .filter_map(|r| r.range.clone())
        .collect();
    // 0.5 MiB + 7 x 1 MiB + 0.5 MiB.
    assert_eq!(gets.len(), 9, "{gets:?}");
    assert!(gets.contains(&format!("bytes={}-{}", off, 1024 * 1024 - 1)));
    assert!(gets.contains(&format!("bytes={}-{}", 8 * 1024 * 1024, off + n - 1)));
    // Several tasks reading at once share the pool and all get their bytes.
    let mut tasks = Vec::new();
    for i in 0..6u64 {
        let blob = blob.clone();
        tasks.push(tokio::spawn(async move {
            let off = i * 1_400_000;
            let mut buf = vec![0u8; 1_500_000];
            blob.read(&mut buf, off).await.map(|()| (off as usize, buf))
        }));
    }
    for t in tasks {
        let (off, buf) = t.await.unwrap().unwrap();
        assert!(buf == data[off..off + buf.len()]);
    }
    let c = blob.counters();
    assert_eq!(c.errors, 0);
    assert_eq!(c.retries, 0);
    assert_eq!(c.requests, 1 + server.request_count());
    assert_eq!(c.bytes_fetched, (n + 6 * 1_500_000) as u64);
}

#[tokio::test]
async fn empty_and_out_of_range_reads_make_no_request() {
    let (server, _) = server_with(4096, 5);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    let before = server.request_count();
    blob.read(&mut [], 0).await.unwrap();
    blob.read(&mut [], 4096).await.unwrap();
    let mut buf = [0u8; 2];
    assert!(matches!(
        blob.read(&mut buf, 4095).await,
        Err(BlobError::OutOfRange {
            offset: 4095,
            len: 2,
            blob_len: 4096
        })
    ));
    assert!(matches!(
        blob.read(&mut buf, u64::MAX).await,
        Err(BlobError::OutOfRange { .. })
    ));
    assert_eq!(server.request_count(), before);
}

#[tokio::test]
async fn reset_mid_body_is_retried_then_succeeds() {
    let (server, data) = server_with(500_000, 6);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    server.set_fault(Fault::ResetMidBody { after: None }, Times::Next(1));
    assert!(read_vec(&blob, 1000, 400_000).await.unwrap() == data[1000..401_000]);
    assert_eq!(server.faults_fired(), 1);
    let c = blob.counters();
    assert_eq!((c.retries, c.errors), (1, 0));
    // The aborted attempt's bytes count as fetched too.
    assert!(c.bytes_fetched > 400_000);
}

#[tokio::test]
async fn dropped_connection_is_retried() {
    let (server, data) = server_with(10_000, 7);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    server.set_fault(Fault::DropConnection, Times::Next(2));
    assert!(read_vec(&blob, 0, 10_000).await.unwrap() == data);
    assert_eq!(server.faults_fired(), 2);
    assert!(blob.counters().retries >= 1);
}

#[tokio::test]
async fn server_errors_and_throttling_are_retried() {
    let (server, data) = server_with(100_000, 8);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    for fault in [
        Fault::internal_error(),
        Fault::unavailable(1),
        Fault::too_many_requests(0),
        Fault::Status {
            status: 502,
            retry_after: None,
        },
    ] {
        server.reset_stats();
        let before = blob.counters();
        server.set_fault(fault.clone(), Times::Next(2));
        assert!(
            read_vec(&blob, 5, 50_000).await.unwrap() == data[5..50_005],
            "{fault:?}"
        );
        assert_eq!(server.faults_fired(), 2, "{fault:?}");
        assert_eq!(server.request_count(), 3, "{fault:?}");
        assert_eq!(blob.counters().retries - before.retries, 2, "{fault:?}");
    }
    assert_eq!(blob.counters().errors, 0);
}

#[tokio::test]
async fn retries_are_bounded() {
    let (server, _) = server_with(100_000, 9);
    let opts = HttpBlobOptions {
        max_retries: 3,
        ..fast_opts()
    };
    let blob = HttpBlob::open(&server.url(PATH), opts).await.unwrap();
    server.reset_stats();
    server.set_fault(Fault::unavailable(0), Times::Always);
    let err = read_vec(&blob, 0, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::HttpStatus {
                status: 503,
                method: "GET",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.request_count(), 4);
    let c = blob.counters();
    assert_eq!((c.retries, c.errors), (3, 1));
}

#[tokio::test]
async fn retried_open() {
    let (server, data) = server_with(1000, 10);
    server.set_fault(Fault::internal_error(), Times::Next(1));
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    assert_eq!(blob.len(), data.len() as u64);
    assert_eq!(blob.counters().retries, 1);
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let (server, _) = server_with(1000, 11);
    let err = HttpBlob::open(&server.url("/missing.img"), fast_opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::HttpStatus {
                status: 404,
                method: "HEAD",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.request_count(), 1);
}

/// Opens a blob, injects `fault` for every request, reads, and returns the
/// error and how many requests the read made.
#[tokio::test]
async fn refused_credentials_at_open_are_access_refused() {
    let (server, _) = server_with(1000, 12);
    server.set_required_query_token(Some("sig=GOOD"));
    // HEAD is refused with 403, so the ranged GET is tried, and refused too.
    let err = HttpBlob::open(&server.url(&format!("{PATH}?sig=EXPIRED")), fast_opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::AccessRefused {
                status: 403,
                method: "GET",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(disk_blob::ACCESS_REFUSED_ADVICE));
    assert!(!error_renderings(&err).contains("EXPIRED"));
    assert_eq!(server.request_count(), 2);
    // 401 is the same class.
    server.set_required_query_token(None);
    server.set_fault(
        Fault::Status {
            status: 401,
            retry_after: None,
        },
        Times::Always,
    );
    let err = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::AccessRefused { status: 401, .. }),
        "{err:?}"
    );
}

/// A flat image on a server that ignores `Range` is refused at open with
/// the error a first read would give, not opened to fail every read.
#[tokio::test]
async fn a_server_that_ignores_ranges_is_refused_at_open() {
    let (server, _) = server_with(64 * 512, 13);
    server.set_fault(Fault::IgnoreRange, Times::Always);
    let err = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            BlobError::Unexpected200 {
                start: 0,
                end: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("the server ignores range requests"),
        "{err}"
    );
    // HEAD (no Accept-Ranges), then one ranged probe; not retried.
    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "HEAD");
    assert_eq!(log[1].range.as_deref(), Some("bytes=0-0"));
    assert_eq!(log[1].status, Some(200));
}

async fn read_with_fault(fault: Fault) -> (BlobError, u64, BlobCounters) {
    let (server, _) = server_with(200_000, 12);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    server.reset_stats();
    server.set_fault(fault, Times::Always);
    let err = read_vec(&blob, 1000, 100_000).await.unwrap_err();
    (err, server.request_count(), blob.counters())
}

#[tokio::test]
async fn ignored_range_is_unexpected_200() {
    let (err, requests, c) = read_with_fault(Fault::IgnoreRange).await;
    assert!(
        matches!(
            err,
            BlobError::Unexpected200 {
                start: 1000,
                end: 100_999,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("200 instead of 206"), "{err}");
    assert_eq!(requests, 1, "protocol violations are not retried");
    assert_eq!((c.errors, c.retries), (1, 0));
}

#[tokio::test]
async fn short_body_is_detected() {
    let (err, requests, _) = read_with_fault(Fault::ShortBody { by: 10 }).await;
    assert!(
        matches!(
            err,
            BlobError::ShortBody {
                expected: 100_000,
                got: 99_990,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn long_body_is_detected() {
    let (err, requests, _) = read_with_fault(Fault::LongBody { by: 1 }).await;
    assert!(
        matches!(
            err,
            BlobError::LongBody {
                expected: 100_000,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn wrong_content_range_is_detected() {
    let (err, requests, _) = read_with_fault(Fault::WrongContentRange { shift: 512 }).await;
    match &err {
        BlobError::ContentRangeMismatch { expected, got, .. } => {
            assert_eq!(expected, "bytes 1000-100999/200000");
            assert_eq!(got, "bytes 1512-101511/200000");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn replaced_content_is_image_changed() {
    let (server, data) = server_with(100_000, 13);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    assert!(read_vec(&blob, 0, 4096).await.unwrap() == data[..4096]);
    // Same length, different bytes: only the validator can tell.
    server.put_blob(PATH, random_bytes(14, 100_000));
    let err = read_vec(&blob, 0, 4096).await.unwrap_err();
    assert!(err.is_image_changed(), "{err:?}");
    assert!(err.to_string().contains("412"), "{err}");

    // Replaced by the server itself in the middle of a run.
    let (server, _) = server_with(100_000, 15);
    let blob = HttpBlob::open(&server.url(PATH), fast_opts())
        .await
        .unwrap();
    server.set_fault(
        Fault::ReplaceContent(random_bytes(16, 100_000).into()),
        Times::Next(1),
    );
    let err = read_vec(&blob, 50_000, 10).await.unwrap_err();
    assert!(err.is_image_changed(), "{err:?}");
    assert_eq!(blob.counters().retries, 0);
}

#[tokio::test]
async fn redirect_chain_is_followed_once_at_open() {
    let (server, data) = server_with(100_000, 17);
    server.add_redirect("/a", "/b?tok=1");
    server.add_redirect_with_status("/b", "c", 307);
    server.add_redirect_with_status("/c", &server.url("/d"), 301);
    server.add_redirect_with_status("/d", "/e", 308);
    server.add_redirect_with_status("/e", PATH, 303);
    let blob = HttpBlob::open(&server.url("/a?sig=SECRET"), fast_opts())
        .await
        .unwrap();
    assert_eq!(blob.len(), 100_000);
    assert!(!blob.redacted_read_url().contains("SECRET"));
    server.reset_stats();
    assert!(read_vec(&blob, 10, 1000).await.unwrap() == data[10..1010]);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1, "reads go straight to the redirect target");
    assert_eq!(reqs[0].path(), PATH);
}

#[tokio::test]
async fn redirect_loops_and_long_chains_fail() {
    let (server, _) = server_with(1000, 18);
    server.add_redirect("/loop1", "/loop2");
    server.add_redirect("/loop2", "/loop1");
    let err = HttpBlob::open(&server.url("/loop1?sig=SECRET"), fast_opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::TooManyRedirects { max: 5, .. }),
        "{err:?}"
    );
    assert!(!error_renderings(&err).contains("SECRET"));

    // Six hops is one too many; five is fine.
    for i in 0..6 {
        server.add_redirect(&format!("/r{i}"), &format!("/r{}", i + 1));
    }
    server.add_redirect("/r6", PATH);
    let err = HttpBlob::open(&server.url("/r0"), fast_opts())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::TooManyRedirects { .. }), "{err:?}");
    HttpBlob::open(&server.url("/r2"), fast_opts())
        .await
        .unwrap();
}

#[tokio::test]
async fn tls_needs_the_custom_root() {
    let server = FaultServer::start_tls().unwrap();
    let data = random_bytes(19, 2_000_000);
    server.put_blob(PATH, data.clone());
    let url = server.url(&format!("{PATH}?sig=SECRET"));

    let err = HttpBlob::open(&url, fast_opts()).await.unwrap_err();
    assert!(matches!(err, BlobError::Tls { .. }), "{err:?}");
    assert!(!error_renderings(&err).contains("SECRET"));
    assert!(
        error_renderings(&err)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        error_renderings(&err)
    );

    for root in [
        server.ca_cert_pem().unwrap().as_bytes().to_vec(),
        server.ca_cert_der().unwrap().to_vec(),
    ] {
        let blob = HttpBlob::open(&url, fast_opts().with_root_certificate(root))
            .await
            .unwrap();
        assert_eq!(blob.len(), data.len() as u64);
        assert!(read_vec(&blob, 0, data.len()).await.unwrap() == data);
        assert!(read_vec(&blob, 1_999_999, 1).await.unwrap() == data[1_999_999..]);
    }
}

#[tokio::test]
async fn https_to_http_redirect_is_refused() {
    let plain = FaultServer::start().unwrap();
    plain.put_blob(PATH, random_bytes(20, 1000));
    let tls = FaultServer::start_tls().unwrap();
    tls.add_redirect("/x", &plain.url(&format!("{PATH}?sig=SECRET")));
    let opts = fast_opts().with_root_certificate(tls.ca_cert_pem().unwrap().as_bytes().to_vec());
    let err = HttpBlob::open(&tls.url("/x?sig=SECRET"), opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobError::HttpsToHttpRedirect { .. }),
        "{err:?}"
    );
    assert!(!error_renderings(&err).contains("SECRET"));
    assert_eq!(plain.request_count(), 0);
}

#[tokio::test]
async fn slow_response_times_out() {
    let (server, _) = server_with(1000, 21);
    let opts = HttpBlobOptions {
        request_timeout: Duration::from_millis(200),
        max_retries: 1,
        ..fast_opts()
    };
    let blob = HttpBlob::open(&server.url(PATH), opts).await.unwrap();
    server.set_fault(Fault::Delay(Duration::from_secs(5)), Times::Always);
    let err = read_vec(&blob, 0, 10).await.unwrap_err();
    assert!(
        matches!(err, BlobError::Timeout { method: "GET", .. }),
        "{err:?}"
    );
    assert_eq!(blob.counters().retries, 1);

    // A body that stalls longer than the timeout.
    server.set_fault(
        Fault::StallBody {
            after: Some(10),
            duration: Duration::from_secs(5),
        },
        Times::Always,
    );
    let err = read_vec(&blob, 0, 1000).await.unwrap_err();
    assert!(matches!(err, BlobError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let opts = HttpBlobOptions {
        max_retries: 2,
        ..fast_opts()
    };
    let err = HttpBlob::open(&format!("http://127.0.0.1:{port}/a.img?sig=SECRET"), opts)
        .await
        .unwrap_err();
    assert!(matches!(err, BlobError::Connect { .. }), "{err:?}");
    assert!(!error_renderings(&err).contains("SECRET"));
}

/// Polls (bounded) until the server has seen `n` requests.
async fn wait_for_requests(server: &FaultServer, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.request_count() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "server saw {} requests, expected {n}",
            server.request_count()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

const MIB: usize = 1024 * 1024;

fn readahead_opts() -> HttpBlobOptions {
    HttpBlobOptions {
        max_request_size: MIB,
        readahead: 4 * MIB,
        max_retries: 0,
        ..fast_opts()
    }
}

#[tokio::test]
async fn sequential_reads_are_fetched_ahead_exactly_once() {
    let (server, data) = server_with(8 * MIB + 1000, 30);
    let blob = HttpBlob::open(&server.url(PATH), readahead_opts())
        .await
        .unwrap();
    // Two sequential reads: the second starts a two-piece readahead.
    assert!(read_vec(&blob, 0, MIB).await.unwrap() == data[..MIB]);
    assert!(read_vec(&blob, MIB as u64, MIB).await.unwrap() == data[MIB..2 * MIB]);
    // HEAD + two reads + two pieces ahead arrive without further reads.
    wait_for_requests(&server, 5).await;
    // Read on to the end in 64 KiB steps (inside prefetched pieces).
    let mut off = 2 * MIB;
    while off < data.len() {
        let n = (data.len() - off).min(64 * 1024);
        assert!(read_vec(&blob, off as u64, n).await.unwrap() == data[off..off + n]);
        off += n;
    }
    let c = blob.counters();
    assert_eq!(
        c.bytes_fetched,
        data.len() as u64,
        "every byte fetched once"
    );
    // Whole pieces only: HEAD + 9 pieces (the last one partial).
    assert_eq!(c.requests, 10);
    assert_eq!(server.request_count(), 10);
    assert_eq!(c.errors, 0);
}

/// Readers of several regions at once, each a little out of order (what
/// an NBD client with several connections and many requests in flight
/// looks like below a chunked cache): every piece is still fetched once,
/// and readahead does run (fewer demand requests than pieces).
#[tokio::test]
async fn interleaved_out_of_order_streams_fetch_each_piece_once() {
    let pieces = 32;
    let (server, data) = server_with(pieces * MIB, 33);
    let blob = HttpBlob::open(&server.url(PATH), readahead_opts())
        .await
        .unwrap();
    // Two regions of 16 pieces, read alternately; inside each region the
    // pieces come in the order 1, 0, 2, 4, 3, 5, 7, 6, ... (a swap in
    // every group of three).
    let order: Vec<usize> = (0..16)
        .map(|i| match i % 3 {
            0 => i + 1,
            1 => i - 1,
            _ => i,
        })
        .map(|i| i.min(15))
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for &i in &order {
        for region in [0, 16] {
            let k = region + i;
            if !seen.insert(k) {
                continue;
            }
            let off = k * MIB;
            assert!(read_vec(&blob, off as u64, MIB).await.unwrap() == data[off..off + MIB]);
        }
    }
    for k in 0..pieces {
        if seen.insert(k) {
            let off = k * MIB;
            assert!(read_vec(&blob, off as u64, MIB).await.unwrap() == data[off..off + MIB]);
        }
    }
    let c = blob.counters();
    // Prefetches run ahead of each region's reader; at a region's end
    // they may reach into the next region's first pieces, which that
    // reader has consumed already and so are not fetched again. Every
    // piece is fetched exactly once.
    assert_eq!(
        c.bytes_fetched,
        data.len() as u64,
        "every piece fetched once"
    );
    assert_eq!(
        c.requests,
        1 + pieces as u64,
        "HEAD + one request per piece"
    );
}

#[tokio::test]
async fn random_reads_do_not_fetch_ahead() {
    let (server, data) = server_with(8 * MIB, 31);
    let blob = HttpBlob::open(&server.url(PATH), readahead_opts())
        .await
        .unwrap();
    for off in [5 * MIB, MIB, 7 * MIB, 0, 3 * MIB] {
        assert!(read_vec(&blob, off as u64, 4096).await.unwrap() == data[off..off + 4096]);
    }
    assert_eq!(blob.counters().bytes_fetched, 5 * 4096);
    assert_eq!(server.request_count(), 6);
}

/// Prefetched pieces live in recycled buffers. A fetch that breaks off
/// mid-body leaves a buffer half overwritten; that buffer must never be
/// served, and buffers reused later must hold only their own piece.
#[tokio::test]
async fn recycled_readahead_buffers_never_serve_stale_bytes() {
    let pieces = 24;
    let (server, data) = server_with(pieces * MIB, 34);
    let opts = HttpBlobOptions {
        request_timeout: Duration::from_millis(300),
        ..readahead_opts()
    };
    let blob = HttpBlob::open(&server.url(PATH), opts).await.unwrap();
    let piece = |k: usize| &data[k * MIB..(k + 1) * MIB];
    // A sequential pass over the first pieces fills the buffer pool with
    // buffers of pieces already read.
    for k in 0..8 {
        assert!(read_vec(&blob, (k * MIB) as u64, MIB).await.unwrap() == piece(k));
    }
    // The next three requests (prefetches or demand reads, in whatever
    // order) send 1000 bytes of their piece, then stall past the timeout.
    server.set_fault(
        Fault::StallBody {
            after: Some(1000),
            duration: Duration::from_secs(5),
        },
        Times::Next(3),
    );
    for k in 8..pieces {
        // A demand read that drew a stall fails like any timeout (at most
        // three can); the reader's next attempt is served normally.
        let mut timeouts = 0;
        let got = loop {
            match read_vec(&blob, (k * MIB) as u64, MIB).await {
                Ok(v) => break v,
                Err(BlobError::Timeout { .. }) if timeouts < 3 => timeouts += 1,
                Err(e) => panic!("piece {k}: {e:?}"),
            }
        };
        assert!(got == piece(k), "piece {k} differs");
    }
    assert_eq!(server.faults_fired(), 3);
}

#[tokio::test]
async fn failed_readahead_falls_back_to_a_demand_read() {
    let (server, data) = server_with(6 * MIB, 32);
    let blob = HttpBlob::open(&server.url(PATH), readahead_opts())
        .await
        .unwrap();
    assert!(read_vec(&blob, 0, MIB).await.unwrap() == data[..MIB]);
    // The second read and the two pieces it fetches ahead all fail,
    // in whatever order they reach the server.
    server.set_fault(Fault::internal_error(), Times::Next(3));
    let err = read_vec(&blob, MIB as u64, MIB).await.unwrap_err();
    assert!(
        matches!(err, BlobError::HttpStatus { status: 500, .. }),
        "{err:?}"
    );
    // The failed prefetches are not errors for the reader: it fetches the
    // pieces itself.
    for k in 2..6 {
        assert!(
            read_vec(&blob, (k * MIB) as u64, MIB).await.unwrap() == data[k * MIB..(k + 1) * MIB]
        );
    }
    assert_eq!(server.faults_fired(), 3);
}
