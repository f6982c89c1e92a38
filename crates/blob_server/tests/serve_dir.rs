//! The blob server against real HTTP clients: hyper's client for the wire
//! details, and `disk_blob::HttpBlob` (the product's reader) for whole
//! reads pinned to the version seen at open.

use blob_server::BlobServer;
use blob_server::BlobServerError;
use blob_server::BlobServerOptions;
use blob_server::Latency;
use bytes::Bytes;
use disk_blob::Blob;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use disk_test_support::random_bytes;
use http::Request;
use http::StatusCode;
use http_body_util::BodyExt;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::time::Duration;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(client: &HttpClient, method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn start(dir: &Path) -> BlobServer {
    BlobServer::serve_dir(dir, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn head_and_full_get_describe_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(1, 300_000);
    std::fs::write(dir.path().join("disk.raw"), &data).unwrap();
    let server = start(dir.path()).await;
    let c = client();
    let url = server.url("disk.raw");

    let head = send(&c, "HEAD", &url, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), Some("300000"));
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    let etag = head.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(head.header("last-modified").unwrap().ends_with(" GMT"));
    assert!(head.body.is_empty());

    let get = send(&c, "GET", &url, &[]).await;
    assert_eq!(get.status, StatusCode::OK);
    assert_eq!(get.header("etag"), Some(etag.as_str()));
    assert_eq!(get.body, data);

    // A query string (a SAS token, say) does not change what is served.
    let get = send(&c, "GET", &format!("{url}?sv=1&sig=x"), &[]).await;
    assert_eq!(get.body, data);

    let stats = server.stats();
    assert_eq!(stats.requests, 3);
    assert_eq!(stats.head_requests, 1);
    assert_eq!(stats.full_requests, 2);
    assert_eq!(stats.bytes_sent, 600_000);
}

#[tokio::test]
async fn ranges_are_exact_and_out_of_range_is_416() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(2, 10_000);
    std::fs::write(dir.path().join("a b.vhd"), &data).unwrap();
    let server = start(dir.path()).await;
    let c = client();
    let url = server.url("a b.vhd");
    assert!(url.ends_with("/a%20b.vhd"), "{url}");

    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=100-4195", 100, 4195),
        ("bytes=9000-", 9000, 9999),
        ("bytes=-512", 9488, 9999),
        ("bytes=9999-20000", 9999, 9999),
        // A last position too large for u64 still means "to the end".
        ("bytes=9999-99999999999999999999999", 9999, 9999),
        // Overlapping ranges are served as one part.
        ("bytes=10-19, 0-14", 0, 19),
    ] {
        let r = send(&c, "GET", &url, &[("range", range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/10000").as_str()),
            "{range}"
        );
        assert_eq!(r.body, &data[start..=end], "{range}");
    }
    let r = send(&c, "GET", &url, &[("range", "bytes=10000-")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), Some("bytes */10000"));
    let r = send(&c, "GET", &url, &[("range", "bytes=20000-, -0")]).await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // Several separate ranges: the whole file, which the RFC allows.
    let r = send(&c, "GET", &url, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, data);
    // HEAD with a range: the headers of the 206, no body.
    let r = send(&c, "HEAD", &url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.body.is_empty());
    let stats = server.stats();
    assert_eq!(stats.range_requests, 8);
    assert_eq!(stats.range_not_satisfiable, 2);
}

#[tokio::test]
async fn conditions_pin_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(3, 4096);
    std::fs::write(dir.path().join("img.raw"), &data).unwrap();
    let server = start(dir.path()).await;
    let c = client();
    let url = server.url("img.raw");
    let head = send(&c, "HEAD", &url, &[]).await;
    let etag = head.header("etag").unwrap().to_string();
    let modified = head.header("last-modified").unwrap().to_string();

    let r = send(
        &c,
        "GET",
        &url,
        &[("if-match", &etag), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, &data[..10]);

    let r = send(
        &c,
        "GET",
        &url,
        &[("if-match", "\"someone-else\""), ("range", "bytes=0-9")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PRECONDITION_FAILED);
    assert!(r.body.is_empty());

    // If-Range with the current tag or date: the range; a stale one: all.
    for current in [etag.as_str(), modified.as_str()] {
        let r = send(
            &c,
            "GET",
            &url,
            &[("if-range", current), ("range", "bytes=5-9")],
        )
        .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{current}");
        assert_eq!(r.body, &data[5..10]);
    }
    let r = send(
        &c,
        "GET",
        &url,
        &[("if-range", "\"old\""), ("range", "bytes=5-9")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, data);

    let r = send(&c, "GET", &url, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());

    let stats = server.stats();
    assert_eq!(stats.precondition_failed, 1);
    assert_eq!(stats.not_modified, 1);
}

#[tokio::test]
async fn http_blob_reads_match_the_file_over_reused_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(4, 5 << 20);
    std::fs::write(dir.path().join("big.raw"), &data).unwrap();
    let server = start(dir.path()).await;
    let opts = HttpBlobOptions {
        max_request_size: 256 * 1024,
        readahead: 0,
        max_connections: 2,
        ..Default::default()
    };
    let blob = HttpBlob::open(&server.url("big.raw"), opts).await.unwrap();
    assert_eq!(blob.len(), data.len() as u64);
    assert!(blob.validators().has_strong_etag());
    assert!(blob.validators().last_modified.is_some());
    // Unaligned reads of assorted sizes, across piece boundaries.
    let mut offset = 12_345u64;
    for len in [1usize, 511, 4096, 300_000, 1 << 20, 77] {
        let mut buf = vec![0u8; len];
        blob.read(&mut buf, offset).await.unwrap();
        assert_eq!(buf, &data[offset as usize..offset as usize + len]);
        offset = (offset * 7 + 1_000_003) % (data.len() as u64 - (1 << 20));
    }
    let stats = server.stats();
    assert_eq!(stats.requests, blob.counters().requests);
    assert_eq!(stats.bytes_sent, blob.counters().bytes_fetched);
    assert!(stats.range_requests >= 6);
    // Keep-alive: far fewer connections than requests.
    assert!(
        stats.connections < stats.requests,
        "{} connections for {} requests",
        stats.connections,
        stats.requests
    );
}

#[tokio::test]
async fn latency_delays_every_request_and_each_new_connection_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(7, 1 << 20);
    std::fs::write(dir.path().join("img.raw"), &data).unwrap();
    let latency = Latency {
        per_request: Duration::from_millis(2),
        per_connection: Duration::from_millis(5),
    };
    let server = BlobServer::serve_dir_with(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        BlobServerOptions { latency },
    )
    .await
    .unwrap();
    assert_eq!(server.latency(), latency);
    let url = server.url("img.raw");

    // Five requests over one keep-alive connection: five round trips, one
    // handshake.
    let c = client();
    for i in 0..5usize {
        let range = format!("bytes={}-{}", i * 1000, i * 1000 + 99);
        let r = send(&c, "GET", &url, &[("range", &range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body, &data[i * 1000..i * 1000 + 100]);
    }
    let s = server.stats();
    assert_eq!((s.requests, s.delayed_requests), (5, 5));
    assert_eq!((s.connections, s.delayed_connections), (1, 1));

    // Another client opens another connection and pays the handshake again.
    let r = send(&client(), "HEAD", &url, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let s = server.stats();
    assert_eq!((s.requests, s.delayed_requests), (6, 6));
    assert_eq!((s.connections, s.delayed_connections), (2, 2));

    // The product's reader: every request it sends waits, and so does each
    // connection it opens.
    let opts = HttpBlobOptions {
        max_request_size: 128 * 1024,
        max_connections: 4,
        ..Default::default()
    };
    let blob = HttpBlob::open(&url, opts).await.unwrap();
    let mut buf = vec![0u8; 1 << 20];
    blob.read(&mut buf, 0).await.unwrap();
    assert_eq!(buf, data);
    let after = server.stats();
    assert_eq!(
        after.delayed_requests - s.delayed_requests,
        blob.counters().requests
    );
    assert_eq!(after.requests - s.requests, blob.counters().requests);
    assert_eq!(
        after.delayed_connections - s.delayed_connections,
        after.connections - s.connections
    );
    assert!(after.connections - s.connections >= 1);

    // Zero turns it off for what arrives next.
    server.set_latency(Latency::default());
    let r = send(&client(), "HEAD", &url, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let last = server.stats();
    assert_eq!(last.requests, after.requests + 1);
    assert_eq!(last.connections, after.connections + 1);
    assert_eq!(last.delayed_requests, after.delayed_requests);
    assert_eq!(last.delayed_connections, after.delayed_connections);
}

#[tokio::test]
async fn a_replaced_file_is_an_image_change_not_mixed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.raw");
    std::fs::write(&path, random_bytes(5, 1 << 20)).unwrap();
    let server = start(dir.path()).await;
    let blob = HttpBlob::open(&server.url("img.raw"), HttpBlobOptions::default())
        .await
        .unwrap();
    // Replace it atomically with other bytes of another length (so the tag
    // differs even on a filesystem with coarse timestamps).
    let tmp = dir.path().join("img.raw.new");
    std::fs::write(&tmp, random_bytes(6, (1 << 20) + 512)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let mut buf = vec![0u8; 4096];
    let err = blob.read(&mut buf, 0).await.unwrap_err();
    assert!(err.is_image_changed(), "{err}");
    assert_eq!(server.stats().precondition_failed, 1);
}

/// A new version renamed over the old one with the same length and the
/// same modification time (copied with its timestamp, or written within
/// one tick of a coarse filesystem clock) is still another version.
#[tokio::test]
async fn a_replacement_with_the_same_length_and_mtime_is_an_image_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.raw");
    let old = random_bytes(8, 1 << 20);
    std::fs::write(&path, &old).unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let server = start(dir.path()).await;
    let blob = HttpBlob::open(&server.url("img.raw"), HttpBlobOptions::default())
        .await
        .unwrap();
    let tmp = dir.path().join("img.raw.new");
    std::fs::write(&tmp, random_bytes(9, 1 << 20)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    let mut buf = vec![0u8; 4096];
    let err = blob.read(&mut buf, 0).await.unwrap_err();
    assert!(err.is_image_changed(), "{err}");
    assert_eq!(server.stats().precondition_failed, 1);
}

#[tokio::test]
async fn nothing_outside_the_root_and_only_get_and_head() {
    let outer = tempfile::tempdir().unwrap();
    std::fs::write(outer.path().join("secret"), b"secret").unwrap();
    let root = outer.path().join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("sub/ok.raw"), b"ok").unwrap();
    std::os::unix::fs::symlink(outer.path().join("secret"), root.join("escape")).unwrap();
    std::os::unix::fs::symlink(root.join("sub/ok.raw"), root.join("inside")).unwrap();
    let server = start(&root).await;
    let c = client();
    let base = server.base_url();

    assert_eq!(
        send(&c, "GET", &format!("{base}/sub/ok.raw"), &[])
            .await
            .body,
        b"ok"
    );
    assert_eq!(
        send(&c, "GET", &format!("{base}/inside"), &[]).await.body,
        b"ok"
    );
    for (path, status) in [
        ("/escape", StatusCode::NOT_FOUND),
        ("/sub", StatusCode::NOT_FOUND),
        ("/", StatusCode::BAD_REQUEST),
        ("/missing.vhd", StatusCode::NOT_FOUND),
        ("/sub/..%2f..%2fsecret", StatusCode::BAD_REQUEST),
        ("/sub/%2e%2e/%2e%2e/secret", StatusCode::BAD_REQUEST),
        ("/%ff", StatusCode::BAD_REQUEST),
    ] {
        let r = send(&c, "GET", &format!("{base}{path}"), &[]).await;
        assert_eq!(r.status, status, "{path}");
        assert!(!r.body.starts_with(b"secret"), "{path}");
    }
    for method in ["PUT", "DELETE", "POST"] {
        let r = send(&c, method, &format!("{base}/sub/ok.raw"), &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(std::fs::read(root.join("sub/ok.raw")).unwrap(), b"ok");
}

#[tokio::test]
async fn loopback_only_and_a_directory_root() {
    let dir = tempfile::tempdir().unwrap();
    let err = BlobServer::serve_dir(dir.path(), "0.0.0.0:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobServerError::NotLoopback(_)), "{err}");
    let file = dir.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let err = BlobServer::serve_dir(&file, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobServerError::NotADirectory { .. }),
        "{err}"
    );
    let err = BlobServer::serve_dir(dir.path().join("nope"), "[::1]:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, BlobServerError::NotADirectory { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_and_stops_listening() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.raw"), random_bytes(7, 1000)).unwrap();
    let server = start(dir.path()).await;
    let addr = server.local_addr();
    let c = client();
    // Leaves an idle pooled keep-alive connection behind.
    assert_eq!(
        send(&c, "GET", &server.url("f.raw"), &[]).await.status,
        StatusCode::OK
    );
    let stats = server.shutdown().await;
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.connections, 1);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
