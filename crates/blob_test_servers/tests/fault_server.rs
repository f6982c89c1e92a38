//! Tests of FaultServer against a real hyper client over 127.0.0.1.

mod common;

use std::time::Duration;
use std::time::Instant;

use blob_test_servers::Fault;
use blob_test_servers::FaultRule;
use blob_test_servers::FaultServer;
use blob_test_servers::Times;
use blob_test_servers::images::random_bytes;
use bytes::Bytes;
use common::Client;

const LEN: usize = 300_000;

fn server_with_blob() -> (FaultServer, Vec<u8>) {
    let s = FaultServer::start().unwrap();
    let data = random_bytes(1, LEN);
    s.put_blob("/disk.img", data.clone());
    (s, data)
}

#[tokio::test]
async fn range_semantics() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");

    let r = c.get(&url, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body(), &data[..]);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("etag"), s.etag("/disk.img").as_deref());
    assert!(r.header("etag").unwrap().starts_with('"'));
    assert_eq!(
        r.header("last-modified"),
        s.last_modified("/disk.img").as_deref()
    );
    assert!(r.header("last-modified").unwrap().ends_with(" GMT"));

    let r = c.get(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 10-19/300000"));
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.body(), &data[10..20]);

    let r = c.get(&url, &[("range", "bytes=299990-")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 299990-299999/300000")
    );
    assert_eq!(r.body(), &data[299_990..]);

    let r = c.get(&url, &[("range", "bytes=299995-400000")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[299_995..]);

    let r = c.get(&url, &[("range", "bytes=-7")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 299993-299999/300000")
    );
    assert_eq!(r.body(), &data[LEN - 7..]);

    let r = c.get(&url, &[("range", "bytes=300000-")]).await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));

    // A large range spans many body chunks.
    let r = c.get(&url, &[("range", "bytes=1-250000")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[1..250_001]);

    let r = c.head(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("300000"));
    assert!(r.body().is_empty());

    let r = c.get(&s.url("/missing"), &[]).await;
    assert_eq!(r.status, 404);
    let r = c.request("POST", &url, &[]).await.unwrap();
    assert_eq!(r.status, 405);

    // Counters and the log.
    assert_eq!(s.request_count(), 10);
    let expected_bytes = (LEN + 10 + 10 + 5 + 7 + 250_000) as u64;
    assert_eq!(s.bytes_served(), expected_bytes);
    let log = s.requests();
    assert_eq!(log.len(), 10);
    assert_eq!(log[1].range.as_deref(), Some("bytes=10-19"));
    assert_eq!(log[1].status, Some(206));
    assert_eq!(log[5].status, Some(416));
    assert_eq!(log[7].method, "HEAD");
    // Keep-alive: one connection for all requests.
    assert_eq!(s.connection_count(), 1);
    s.reset_stats();
    assert_eq!(s.request_count(), 0);
    assert_eq!(s.bytes_served(), 0);
    assert!(s.requests().is_empty());
}

/// The edge cases of `Range` over the wire; the rules are
/// `http_ranges::select_range`, the same as `blob_server`'s.
#[tokio::test]
async fn range_edge_cases() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    for (range, start, end) in [
        // A last position too large for u64 means "to the end".
        ("bytes=299999-99999999999999999999999", 299_999, 299_999),
        // A suffix longer than the blob is the whole blob.
        ("bytes=-99999999999999999999999", 0, LEN - 1),
        // Overlapping or touching ranges are one part.
        ("bytes=10-19,0-14", 0, 19),
        ("bytes=0-9, 10-19", 0, 19),
        // Unsatisfiable ranges are dropped.
        ("bytes=0-9,400000-", 0, 9),
    ] {
        let r = c.get(&url, &[("range", range)]).await;
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{end}/{LEN}").as_str()),
            "{range}"
        );
        assert_eq!(r.body(), &data[start..=end], "{range}");
    }
    for range in ["bytes=99999999999999999999999-", "bytes=400000-,-0"] {
        let r = c.get(&url, &[("range", range)]).await;
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some("bytes */300000"));
    }
    for range in ["bytes=0-1,5-6", "bytes=5-4", "bytes = 0-1", "items=0-1"] {
        let r = c.get(&url, &[("range", range)]).await;
        assert_eq!(r.status, 200, "{range}");
        assert_eq!(r.body(), &data[..], "{range}");
    }
    // Entity-tag lists: a weak tag fails If-Match, passes If-None-Match.
    let etag = s.etag("/disk.img").unwrap();
    let weak = format!("W/{etag}");
    let list = format!("\"other\", {etag}");
    let r = c
        .get(&url, &[("range", "bytes=0-0"), ("if-match", &list)])
        .await;
    assert_eq!(r.status, 206);
    let r = c
        .get(&url, &[("range", "bytes=0-0"), ("if-match", &weak)])
        .await;
    assert_eq!(r.status, 412);
    let r = c
        .get(&url, &[("range", "bytes=0-0"), ("if-match", "*")])
        .await;
    assert_eq!(r.status, 206);
    let r = c.get(&url, &[("if-none-match", &weak)]).await;
    assert_eq!(r.status, 304);
}

#[tokio::test]
async fn file_backed_blob() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f.raw");
    blob_test_servers::images::write_random_file(&p, 9, 200_000).unwrap();
    let data = std::fs::read(&p).unwrap();
    let s = FaultServer::start().unwrap();
    s.put_file("/f.raw", &p).unwrap();
    let c = Client::new(None);
    let r = c
        .get(&s.url("/f.raw"), &[("range", "bytes=65530-140000")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[65_530..140_001]);
    let r = c.get(&s.url("/f.raw"), &[]).await;
    assert_eq!(r.body(), &data[..]);
}

#[tokio::test]
async fn etag_if_match_if_range() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    let etag = s.etag("/disk.img").unwrap();
    let lm = s.last_modified("/disk.img").unwrap();

    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-match", &etag)])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[..4]);
    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-match", "\"nope\"")])
        .await;
    assert_eq!(r.status, 412);

    // Replace the content: new ETag, later Last-Modified.
    let new_data = random_bytes(2, 1000);
    let new_etag = s.put_blob("/disk.img", new_data.clone());
    assert_ne!(new_etag, etag);
    assert_ne!(s.last_modified("/disk.img").unwrap(), lm);
    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-match", &etag)])
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(r.header("etag"), Some(new_etag.as_str()));

    // If-Range with the old validator: whole new content with 200.
    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-range", &etag)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body(), &new_data[..]);
    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-range", &lm)])
        .await;
    assert_eq!(r.status, 200);
    // With the current validators: the range.
    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-range", &new_etag)])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &new_data[..4]);
    let new_lm = s.last_modified("/disk.img").unwrap();
    let r = c
        .get(&url, &[("range", "bytes=0-3"), ("if-range", &new_lm)])
        .await;
    assert_eq!(r.status, 206);

    let r = c.get(&url, &[("if-none-match", &new_etag)]).await;
    assert_eq!(r.status, 304);
}

#[tokio::test]
async fn status_faults_with_retry_after_and_counts() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");

    s.set_fault(Fault::unavailable(3), Times::Next(2));
    for _ in 0..2 {
        let r = c.get(&url, &[("range", "bytes=0-9")]).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("retry-after"), Some("3"));
    }
    let r = c.get(&url, &[("range", "bytes=0-9")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[..10]);

    s.set_fault(Fault::too_many_requests(1), Times::Next(1));
    let r = c.get(&url, &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));

    s.set_fault(Fault::internal_error(), Times::Always);
    for _ in 0..3 {
        assert_eq!(c.get(&url, &[]).await.status, 500);
    }
    s.clear_faults();
    assert_eq!(c.get(&url, &[]).await.status, 200);
    assert_eq!(s.faults_fired(), 6);
    let log = s.requests();
    assert_eq!(log[0].fault, Some("status"));
    assert_eq!(log[2].fault, None);
}

#[tokio::test]
async fn rule_filters_skip_path_method() {
    let (s, _) = server_with_blob();
    s.put_blob("/other", vec![1u8; 100]);
    let c = Client::new(None);
    s.add_fault(
        FaultRule::new(Fault::internal_error(), Times::Next(1))
            .skip(2)
            .path("/disk.img")
            .method(http::Method::GET),
    );
    assert_eq!(c.get(&s.url("/other"), &[]).await.status, 200);
    assert_eq!(c.head(&s.url("/disk.img")).await.status, 200);
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 200);
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 200);
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 500);
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 200);
}

#[tokio::test]
async fn reset_mid_body() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    s.set_fault(Fault::ResetMidBody { after: None }, Times::Next(1));
    let r = c.get(&url, &[("range", "bytes=0-199999")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-length"), Some("200000"));
    assert!(
        r.body.is_err(),
        "body must fail: {:?}",
        r.body.as_ref().map(|b| b.len())
    );
    assert_eq!(s.bytes_served(), 100_000);
    // The next request is served normally (on a new connection).
    let r = c.get(&url, &[("range", "bytes=0-199999")]).await;
    assert_eq!(r.body(), &data[..200_000]);
    assert_eq!(s.connection_count(), 2);

    s.set_fault(Fault::ResetMidBody { after: Some(0) }, Times::Next(1));
    let r = c.get(&url, &[("range", "bytes=0-9")]).await;
    assert!(r.body.is_err());
}

#[tokio::test]
async fn drop_connection() {
    let (s, _) = server_with_blob();
    let c = Client::new(None);
    s.set_fault(Fault::DropConnection, Times::Next(1));
    let r = c.request("GET", &s.url("/disk.img"), &[]).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(s.requests()[0].status, None);
    assert_eq!(s.requests()[0].fault, Some("drop_connection"));
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 200);
}

#[tokio::test]
async fn body_shape_faults() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    let range = [("range", "bytes=100-199")];

    s.set_fault(Fault::IgnoreRange, Times::Next(1));
    let r = c.get(&url, &range).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-range"), None);
    assert_eq!(r.header("accept-ranges"), None);
    assert_eq!(r.body(), &data[..]);
    s.set_fault(Fault::IgnoreRange, Times::Next(1));
    let r = c.head(&url).await;
    assert_eq!(r.header("accept-ranges"), None);
    assert_eq!(c.head(&url).await.header("accept-ranges"), Some("bytes"));

    s.set_fault(Fault::ShortBody { by: 10 }, Times::Next(1));
    let r = c.get(&url, &range).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/300000"));
    assert_eq!(r.body(), &data[100..190]);

    s.set_fault(Fault::LongBody { by: 10 }, Times::Next(1));
    let r = c.get(&url, &range).await;
    assert_eq!(r.header("content-range"), Some("bytes 100-199/300000"));
    assert_eq!(r.body(), &data[100..210]);

    // Long body at the end of the blob: padded with zeros.
    s.set_fault(Fault::LongBody { by: 4 }, Times::Next(1));
    let r = c.get(&url, &[("range", "bytes=-2")]).await;
    let mut want = data[LEN - 2..].to_vec();
    want.extend_from_slice(&[0; 4]);
    assert_eq!(r.body(), &want[..]);

    s.set_fault(Fault::WrongContentRange { shift: 50 }, Times::Next(1));
    let r = c.get(&url, &range).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 150-249/300000"));
    assert_eq!(r.body(), &data[150..250]);

    s.set_fault(Fault::WrongContentRange { shift: -1000 }, Times::Next(1));
    let r = c.get(&url, &range).await;
    assert_eq!(r.header("content-range"), Some("bytes 0-99/300000"));
    assert_eq!(r.body(), &data[..100]);

    s.set_fault(
        Fault::StallBody {
            after: Some(70_000),
            duration: Duration::from_millis(50),
        },
        Times::Next(1),
    );
    let t = Instant::now();
    let r = c.get(&url, &[]).await;
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(r.body(), &data[..]);
    assert_eq!(s.faults_fired(), 8);
}

#[tokio::test]
async fn replace_content_fault_and_delay() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    let etag = s.etag("/disk.img").unwrap();
    let r = c.get(&url, &[("range", "bytes=0-9")]).await;
    assert_eq!(r.body(), &data[..10]);

    let new = Bytes::from(random_bytes(3, LEN));
    s.set_fault(Fault::ReplaceContent(new.clone()), Times::Next(1));
    let r = c
        .get(&url, &[("range", "bytes=10-19"), ("if-match", &etag)])
        .await;
    assert_eq!(r.status, 412);
    assert_ne!(s.etag("/disk.img").unwrap(), etag);
    let r = c.get(&url, &[("range", "bytes=10-19")]).await;
    assert_eq!(r.body(), &new[10..20]);

    s.set_fault(Fault::Delay(Duration::from_millis(30)), Times::Next(1));
    let t = Instant::now();
    let r = c.get(&url, &[("range", "bytes=0-0")]).await;
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(r.status, 206);
    assert_eq!(s.requests().last().unwrap().fault, Some("delay"));

    s.set_latency(Duration::from_millis(20));
    let t = Instant::now();
    c.get(&url, &[("range", "bytes=0-0")]).await;
    assert!(t.elapsed() >= Duration::from_millis(20));
    s.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn redirects_chains_loops_and_fault() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    s.add_redirect("/a", "/b");
    s.add_redirect_with_status("/b", "/disk.img", 307);
    let r = c.get(&s.url("/a"), &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("/b"));
    let r = c.get(&s.url("/b"), &[]).await;
    assert_eq!(r.status, 307);
    assert_eq!(r.header("location"), Some("/disk.img"));

    s.add_redirect("/loop1", "/loop2");
    s.add_redirect("/loop2", "/loop1");
    assert_eq!(
        c.get(&s.url("/loop2"), &[]).await.header("location"),
        Some("/loop1")
    );

    s.set_fault(Fault::redirect(s.url("/disk.img")), Times::Next(1));
    let r = c.get(&s.url("/disk.img"), &[]).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some(s.url("/disk.img").as_str()));
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.body(), &data[..]);
}

#[tokio::test]
async fn refuse_head_only_affects_head() {
    let (s, data) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    s.set_fault(Fault::RefuseHead, Times::Always);
    let r = c.get(&url, &[("range", "bytes=0-0")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[..1]);
    let r = c.head(&url).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(c.head(&url).await.status, 405);
    assert_eq!(s.faults_fired(), 2);
}

#[tokio::test]
async fn required_query_token() {
    let (s, _) = server_with_blob();
    let c = Client::new(None);
    s.set_required_query_token(Some("sig=s3cret"));
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 403);
    assert_eq!(c.get(&s.url("/disk.img?sig=wrong"), &[]).await.status, 403);
    assert_eq!(
        c.get(&s.url("/disk.img?sv=1&sig=s3cret"), &[]).await.status,
        200
    );
    assert_eq!(
        s.requests().last().unwrap().path_and_query,
        "/disk.img?sv=1&sig=s3cret"
    );
    assert_eq!(s.requests().last().unwrap().path(), "/disk.img");
    s.set_required_query_token(None);
    assert_eq!(c.get(&s.url("/disk.img"), &[]).await.status, 200);
}

#[tokio::test]
async fn latency_per_request_and_per_new_connection_is_logged() {
    let ms = Duration::from_millis;
    for tls in [false, true] {
        let s = FaultServer::builder()
            .tls(tls)
            .latency(ms(1))
            .connection_latency(ms(3))
            .start()
            .unwrap();
        let data = random_bytes(5, 10_000);
        s.put_blob("/disk.img", data.clone());
        let url = s.url("/disk.img");

        // Four requests on one keep-alive connection: four round trips, one
        // handshake (before the TLS handshake, which still works).
        let c = Client::new(s.ca_cert_der());
        for i in 0..4usize {
            let range = format!("bytes={}-{}", i * 100, i * 100 + 9);
            let r = c.get(&url, &[("range", &range)]).await;
            assert_eq!(r.status, 206);
            assert_eq!(r.body(), &data[i * 100..i * 100 + 10]);
        }
        assert_eq!(s.delayed_requests(), 4);
        assert_eq!(s.delayed_connections(), 1);
        assert_eq!(s.connection_count(), 1);
        let log = s.requests();
        assert!(log.iter().all(|r| r.connection == log[0].connection));
        assert!(log.iter().all(|r| r.latency == ms(1)));

        // A new client, a new connection: the handshake again.
        s.set_latency(ms(2));
        let r = Client::new(s.ca_cert_der()).head(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(s.delayed_requests(), 5);
        assert_eq!(s.delayed_connections(), 2);
        let last = s.requests().pop().unwrap();
        assert_ne!(last.connection, log[0].connection);
        assert_eq!(last.latency, ms(2));

        // Zero turns both off.
        s.set_latency(Duration::ZERO);
        s.set_connection_latency(Duration::ZERO);
        let r = Client::new(s.ca_cert_der()).head(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!((s.delayed_requests(), s.delayed_connections()), (5, 2));
        assert_eq!(s.connection_count(), 3);
        assert_eq!(s.requests().pop().unwrap().latency, Duration::ZERO);
        s.reset_stats();
        assert_eq!((s.delayed_requests(), s.delayed_connections()), (0, 0));
    }
}

#[tokio::test]
async fn tls_with_custom_ca_only() {
    let s = FaultServer::start_tls().unwrap();
    let data = random_bytes(4, 5000);
    s.put_blob("/disk.vhd", data.clone());
    assert!(s.base_url().starts_with("https://127.0.0.1:"));

    let trusted = Client::new(s.ca_cert_der());
    let r = trusted
        .get(&s.url("/disk.vhd"), &[("range", "bytes=100-199")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body(), &data[100..200]);
    // The DNS name localhost is in the certificate too.
    let name_url = format!("https://localhost:{}/disk.vhd", s.addr().port());
    assert_eq!(trusted.get(&name_url, &[]).await.body(), &data[..]);

    let untrusted = Client::new(None);
    let e = untrusted
        .request("GET", &s.url("/disk.vhd"), &[])
        .await
        .unwrap_err();
    assert!(
        e.contains("Certificate") || e.contains("certificate"),
        "{e}"
    );
    assert!(
        s.ca_cert_pem()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );

    // https -> http redirect (the client must refuse to follow it).
    let plain = FaultServer::start().unwrap();
    plain.put_blob("/disk.vhd", data);
    s.add_redirect("/downgrade", &plain.url("/disk.vhd"));
    let r = trusted.get(&s.url("/downgrade"), &[]).await;
    assert_eq!(r.status, 302);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
}

#[test]
fn works_from_sync_code_and_drop_stops_it() {
    let s = FaultServer::start().unwrap();
    let addr = s.addr();
    s.put_blob("/x", vec![5u8; 10]);
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Read as _;
    use std::io::Write as _;
    stream
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nRange: bytes=2-3\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 206"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-range: bytes 2-3/10"),
        "{text}"
    );
    assert!(resp.ends_with(&[5, 5]));
    drop(s);
    // The listener is closed once the server is dropped (the runtime shuts
    // down in the background; give it a bounded number of tries).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "server still accepting after drop"
        );
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn validators_can_be_turned_off() {
    let (s, _) = server_with_blob();
    let c = Client::new(None);
    let url = s.url("/disk.img");
    s.set_validators(false, true);
    let r = c.head(&url).await;
    assert_eq!(r.header("etag"), None);
    assert!(r.header("last-modified").is_some());
    s.set_validators(false, false);
    let r = c.get(&url, &[("range", "bytes=0-0")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("etag"), None);
    assert_eq!(r.header("last-modified"), None);
    s.set_validators(true, true);
    assert!(c.head(&url).await.header("etag").is_some());
}

#[tokio::test]
async fn in_flight_tracks_unfinished_bodies() {
    let s = FaultServer::start().unwrap();
    // Far larger than the loopback socket buffers, so the body cannot finish
    // while the client does not read it.
    s.put_blob("/big", vec![0u8; 64 << 20]);
    s.put_blob("/small", vec![1u8; 10]);
    let url = s.url("/big");
    let a = Client::new(None);
    let req = http::Request::get(&url)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let held = a.raw().request(req).await.unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(s.in_flight(), 1);
    let b = Client::new(None);
    assert_eq!(b.get(&s.url("/small"), &[]).await.body(), &[1u8; 10]);
    assert_eq!(s.max_in_flight(), 2);
    drop(held);
}

#[tokio::test]
async fn http2_over_tls_ranges_and_reset() {
    let s = FaultServer::start_tls().unwrap();
    let data = random_bytes(6, LEN);
    s.put_blob("/d", data.clone());
    let c = Client::with_http2(s.ca_cert_der(), true);
    let url = s.url("/d");
    let r = c.get(&url, &[("range", "bytes=5-200004")]).await;
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 5-200004/300000"));
    assert_eq!(r.body(), &data[5..200_005]);

    s.set_fault(Fault::ResetMidBody { after: None }, Times::Next(1));
    // HTTP/2 drops a stream's queued frames when it is reset, so the client
    // sees either the 206 and then a failed body, or (when the reset
    // overtakes the queued headers) a reset stream and no response.
    match c.request("GET", &url, &[("range", "bytes=0-199999")]).await {
        Ok(r) => {
            assert_eq!(r.status, 206);
            assert!(r.body.is_err());
        }
        Err(e) => assert!(e.contains("Reset"), "{e}"),
    }
    assert_eq!(s.requests().last().unwrap().fault, Some("reset_mid_body"));
    // The connection survives a reset stream; the next request succeeds.
    let r = c.get(&url, &[("range", "bytes=0-9")]).await;
    assert_eq!(r.body(), &data[..10]);
    assert_eq!(s.connection_count(), 1);
}
