//! `HttpBlob` against a real TCP server on 127.0.0.1 that answers with
//! canned raw HTTP/1.1 responses, for server behaviour the fault server
//! cannot produce: absurd lengths, missing or garbage headers.

use disk_blob::Blob;
use disk_blob::BlobError;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use std::sync::Arc;
use std::sync::Mutex;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// A server that answers each request (one per connection) with a response
/// made by `respond` from the request head; it records the request heads.
struct CannedServer {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CannedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CannedServer {
    async fn start(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/blob.img", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        let respond = Arc::new(respond);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match sock.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let resp = respond(&head);
                    log.lock().unwrap().push(head);
                    let _ = sock.write_all(&resp).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        CannedServer {
            url,
            requests,
            task,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn requested_range(head: &str) -> Option<(u64, u64)> {
    let r = header(head, "range")?.strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The byte at blob offset `o` of the synthetic blob.
fn byte_at(o: u64) -> u8 {
    (o % 251) as u8
}

fn opts() -> HttpBlobOptions {
    HttpBlobOptions {
        max_retries: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn huge_claimed_length_is_handled_without_overflow() {
    const LEN: u64 = u64::MAX;
    let server = CannedServer::start(|head| {
        if head.starts_with("HEAD") {
            return format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {LEN}\r\nAccept-Ranges: bytes\r\nETag: \"big\"\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
        }
        let Some((a, b)) = requested_range(head) else {
            return b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_vec();
        };
        let body: Vec<u8> = (a..=b).map(byte_at).collect();
        let mut r = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{LEN}\r\nContent-Length: {}\r\nETag: \"big\"\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    })
    .await;
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    assert_eq!(blob.len(), LEN);
    // Sequential reads up to the very end (readahead runs into the end).
    let mut off = LEN - 3000;
    while off < LEN {
        let n = (LEN - off).min(1000);
        let mut buf = vec![0u8; n as usize];
        blob.read(&mut buf, off).await.unwrap();
        assert!(buf.iter().zip(off..).all(|(b, o)| *b == byte_at(o)));
        off += n;
    }
    let mut one = [0u8; 1];
    assert!(matches!(
        blob.read(&mut one, LEN).await,
        Err(BlobError::OutOfRange { .. })
    ));
    assert!(
        server
            .requests()
            .iter()
            .all(|h| header(h, "if-match") == Some("\"big\"") || h.starts_with("HEAD"))
    );
}

#[tokio::test]
async fn head_without_length_falls_back_to_ranged_get() {
    let server = CannedServer::start(|head| {
        if head.starts_with("HEAD") {
            // Chunked: no Content-Length.
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                .to_vec();
        }
        let mut r = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-0/5000\r\nContent-Length: 1\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: close\r\n\r\n".to_vec();
        r.push(byte_at(0));
        r
    })
    .await;
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    assert_eq!(blob.len(), 5000);
    assert_eq!(blob.validators().etag, None);
    assert_eq!(
        blob.validators().last_modified.as_deref(),
        Some("Mon, 01 Jan 2024 00:00:00 GMT")
    );
    assert_eq!(blob.counters().bytes_fetched, 1);
}

#[tokio::test]
async fn empty_blob_via_ranged_get_416() {
    let server = CannedServer::start(|head| {
        if head.starts_with("HEAD") {
            return b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
        }
        b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    })
    .await;
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    assert_eq!(blob.len(), 0);
    assert!(blob.is_empty());
    blob.read(&mut [], 0).await.unwrap();
}

/// A server whose HEAD is fine and whose range GETs carry `headers` and
/// the right body.
async fn server_with_range_headers(extra: &'static str) -> CannedServer {
    CannedServer::start(move |head| {
        if head.starts_with("HEAD") {
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: close\r\n\r\n".to_vec();
        }
        let (a, b) = requested_range(head).unwrap_or((0, 0));
        let body: Vec<u8> = (a..=b).map(byte_at).collect();
        let mut r = format!(
            "HTTP/1.1 206 Partial Content\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    })
    .await
}

async fn read_err(server: &CannedServer) -> BlobError {
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    let mut buf = vec![0u8; 100];
    blob.read(&mut buf, 10).await.unwrap_err()
}

#[tokio::test]
async fn missing_or_garbage_content_range_is_a_mismatch() {
    let server = server_with_range_headers("").await;
    match read_err(&server).await {
        BlobError::ContentRangeMismatch { got, expected, .. } => {
            assert_eq!(got, "<missing>");
            assert_eq!(expected, "bytes 10-109/100000");
        }
        e => panic!("{e:?}"),
    }
    let server = server_with_range_headers("Content-Range: bytes ten-eleven/100000\r\n").await;
    assert!(matches!(
        read_err(&server).await,
        BlobError::ContentRangeMismatch { .. }
    ));
}

#[tokio::test]
async fn changed_validators_on_206_are_image_changed() {
    // The server ignores If-Match but says (truthfully) that the ETag changed.
    let server =
        server_with_range_headers("Content-Range: bytes 10-109/100000\r\nETag: \"v2\"\r\n").await;
    let e = read_err(&server).await;
    assert!(e.is_image_changed(), "{e:?}");
    assert!(e.to_string().contains("ETag"), "{e}");

    let server = server_with_range_headers(
        "Content-Range: bytes 10-109/100000\r\nLast-Modified: Tue, 02 Jan 2024 00:00:00 GMT\r\n",
    )
    .await;
    let e = read_err(&server).await;
    assert!(e.to_string().contains("Last-Modified"), "{e}");

    // A different total length is a different image too.
    let server = server_with_range_headers("Content-Range: bytes 10-109/200000\r\n").await;
    let e = read_err(&server).await;
    assert!(e.is_image_changed(), "{e:?}");
    assert!(e.to_string().contains("200000"), "{e}");
}

#[tokio::test]
async fn bad_redirects_are_errors() {
    let server = CannedServer::start(|_| {
        b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    })
    .await;
    let e = HttpBlob::open(&server.url, opts()).await.unwrap_err();
    assert!(matches!(e, BlobError::BadRedirect { .. }), "{e:?}");

    let server = CannedServer::start(|_| {
        b"HTTP/1.1 301 Moved\r\nLocation: ftp://elsewhere/x?sig=SECRET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    })
    .await;
    let e = HttpBlob::open(&server.url, opts()).await.unwrap_err();
    assert!(matches!(e, BlobError::BadRedirect { .. }), "{e:?}");
    assert!(!e.to_string().contains("SECRET"), "{e}");
}

#[tokio::test]
async fn shrunk_blob_416_is_image_changed() {
    let server = CannedServer::start(|head| {
        if head.starts_with("HEAD") {
            return b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n"
                .to_vec();
        }
        b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */50000\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    })
    .await;
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    let mut buf = vec![0u8; 10];
    let e = blob.read(&mut buf, 60_000).await.unwrap_err();
    assert!(e.is_image_changed(), "{e:?}");
    assert!(e.to_string().contains("50000"), "{e}");
}

/// A server like `python3 -m http.server`: HEAD has a length but no
/// `Accept-Ranges`, and every GET gets the whole file with 200.
async fn range_ignoring_server(len: u64) -> CannedServer {
    CannedServer::start(move |head| {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        if head.starts_with("GET") {
            r.extend((0..len).map(byte_at));
        }
        r
    })
    .await
}

#[tokio::test]
async fn a_server_that_ignores_ranges_is_refused_at_open() {
    let server = range_ignoring_server(8192).await;
    let e = HttpBlob::open(&server.url, opts()).await.unwrap_err();
    // The error the first read gave before open probed.
    assert!(
        matches!(
            e,
            BlobError::Unexpected200 {
                start: 0,
                end: 0,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .ends_with("was answered 200 instead of 206: the server ignores range requests"),
        "{e}"
    );
    let heads = server.requests();
    assert_eq!(heads.len(), 2);
    assert!(heads[0].starts_with("HEAD"));
    assert_eq!(requested_range(&heads[1]), Some((0, 0)));
}

#[tokio::test]
async fn unadvertised_ranges_are_probed_once_then_used() {
    // Serves ranges but never says so (no Accept-Ranges anywhere).
    let server = CannedServer::start(|head| {
        if head.starts_with("HEAD") {
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n".to_vec();
        }
        let (a, b) = requested_range(head).unwrap_or((0, 0));
        let body: Vec<u8> = (a..=b).map(byte_at).collect();
        let mut r = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/5000\r\nETag: \"v1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r
    })
    .await;
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    assert_eq!(blob.len(), 5000);
    assert_eq!(blob.validators().etag.as_deref(), Some("\"v1\""));
    assert_eq!(blob.counters().requests, 2);
    let mut buf = vec![0u8; 100];
    blob.read(&mut buf, 4900).await.unwrap();
    assert!(buf.iter().zip(4900..).all(|(b, o)| *b == byte_at(o)));
    assert_eq!(blob.counters().requests, 3);

    // An advertising server costs no probe.
    let server = server_with_range_headers("Content-Range: bytes 0-0/100000\r\n").await;
    let blob = HttpBlob::open(&server.url, opts()).await.unwrap();
    assert_eq!(blob.counters().requests, 1);
}
