//! Tests of the nginx fixture (real nginx; skipped when it is missing,
//! failing under CI=true).

mod common;

use std::time::Duration;

use blob_test_servers::FaultServer;
use blob_test_servers::NginxConfig;
use blob_test_servers::NginxServer;
use blob_test_servers::images::random_bytes;
use blob_test_servers::images::write_random_file;
use blob_test_servers::require_tool;
use common::Client;

#[tokio::test]
async fn nginx_serves_file_with_range_etag_and_counts() {
    let Some(_) = require_tool("nginx") else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let len = 3 << 20;
    write_random_file(&root.path().join("disk.raw"), 11, len).unwrap();
    let data = random_bytes(11, len as usize);
    let n = NginxServer::serve_dir(root.path()).unwrap();
    assert!(n.base_url().starts_with("http://127.0.0.1:"));
    let c = Client::new(None);
    let url = n.url("/disk.raw");

    let r = c.head(&url).await;
    assert_eq!(r.status, 200, "{}", n.error_log());
    assert_eq!(r.header("content-length"), Some("3145728"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").unwrap().to_string();

    let r = c.get(&url, &[("range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/3145728"));
    assert_eq!(r.body(), &data[1000..2000]);

    let r = c.get(&url, &[("range", "bytes=-10")]).await;
    assert_eq!(r.body(), &data[data.len() - 10..]);

    let r = c
        .get(&url, &[("range", "bytes=0-9"), ("if-match", &etag)])
        .await;
    assert_eq!(r.status, 206);
    let r = c
        .get(&url, &[("range", "bytes=0-9"), ("if-match", "\"other\"")])
        .await;
    assert_eq!(r.status, 412);

    // nginx 1.22 closes the connection after a 412 although the response
    // says `Connection: keep-alive`; a pooled client reusing it races that
    // close and sees ECONNRESET now and then. A fresh client opens a new
    // connection, so the next request never rides on the closed one.
    let c = Client::new(None);
    let r = c.get(&url, &[("range", "bytes=4000000-")]).await;
    assert_eq!(r.status, 416);

    assert_eq!(n.request_count().unwrap(), 6);
    // Status queries are not counted.
    assert_eq!(n.request_count().unwrap(), 6);
    let log = n.wait_for_log(6, Duration::from_secs(10)).unwrap();
    assert_eq!(log.len(), 6);
    assert_eq!(log[0].method, "HEAD");
    assert_eq!(log[1].range.as_deref(), Some("bytes=1000-1999"));
    assert_eq!(log[1].status, 206);
    assert_eq!(log[1].body_bytes, 1000);
    assert_eq!(log[1].uri, "/disk.raw");
    assert_eq!(log[4].status, 412);
}

#[tokio::test]
async fn nginx_caching_proxy_in_front_of_fault_server() {
    let Some(_) = require_tool("nginx") else {
        return;
    };
    let origin = FaultServer::start().unwrap();
    let len = (5 << 20) + 123;
    let data = random_bytes(12, len);
    origin.put_blob("/img.raw", data.clone());
    let proxy = NginxServer::start(NginxConfig::caching_proxy(origin.base_url())).unwrap();
    let c = Client::new(None);
    let url = proxy.url("/img.raw");

    let r = c.get(&url, &[("range", "bytes=100-199")]).await;
    assert_eq!(r.status, 206, "{}", proxy.error_log());
    assert_eq!(r.body(), &data[100..200]);
    assert_eq!(r.header("x-cache-status"), Some("MISS"));
    let origin_requests = origin.request_count();
    assert!(origin_requests >= 1);

    // Same range again: served from the cache, the origin sees nothing.
    let r = c.get(&url, &[("range", "bytes=100-199")]).await;
    assert_eq!(r.body(), &data[100..200]);
    assert_eq!(r.header("x-cache-status"), Some("HIT"));
    assert_eq!(origin.request_count(), origin_requests);

    // A range crossing a slice boundary near the end.
    let r = c
        .get(&url, &[("range", &format!("bytes={}-", len - 2_000_000))])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[len - 2_000_000..]);

    if proxy.has_slice_module() {
        // The origin only ever saw 1 MiB-aligned slice ranges.
        for rec in origin.requests() {
            let range = rec.range.expect("slice requests carry a Range");
            let start: u64 = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap();
            assert_eq!(start % (1 << 20), 0, "{range}");
        }
        assert!(proxy.config_text().contains("slice 1048576;"));
    }
    assert_eq!(proxy.request_count().unwrap(), 3);
}

#[test]
fn nginx_start_failure_reports_error_log() {
    let Some(_) = require_tool("nginx") else {
        return;
    };
    let e = NginxServer::start(
        NginxConfig::static_dir("/nonexistent").server_extra("this_is_not_a_directive on;"),
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("this_is_not_a_directive"), "{msg}");
}
