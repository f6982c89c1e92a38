//! No URL secret (query string, userinfo) ever appears in an error, an
//! error's sources or a log line. A binary of its own, so that its global
//! `tracing` subscriber sees every log line of the process.

mod common;

use blob_test_servers::Fault;
use blob_test_servers::FaultRule;
use blob_test_servers::FaultServer;
use blob_test_servers::Times;
use blob_test_servers::error_renderings;
use blob_test_servers::images::random_bytes;
use common::read_vec;
use disk_blob::Blob;
use disk_blob::BlobError;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use std::time::Duration;

const PATH: &str = "/images/disk.img";

fn fast_opts() -> HttpBlobOptions {
    HttpBlobOptions {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        ..Default::default()
    }
}

/// Provokes one error of as many classes as a server can produce, with a
/// secret in every URL, and checks that the secret appears in no error (or
/// its sources) and no log line.
#[tokio::test]
async fn secrets_never_appear_in_errors_or_logs() {
    let logs = blob_test_servers::captured_logs();
    let server = FaultServer::start().unwrap();
    server.put_blob(PATH, random_bytes(22, 100_000));
    server.set_required_query_token(Some("sig=SECRET"));
    let url = server.url(&format!("{PATH}?sig=SECRET"));
    let mut errors: Vec<BlobError> = Vec::new();

    errors.push(
        HttpBlob::open(&server.url("/missing?sig=SECRET"), fast_opts())
            .await
            .unwrap_err(),
    );
    errors.push(
        HttpBlob::open(
            &server.url(&format!("{PATH}?sig=WRONG-SECRET")),
            fast_opts(),
        )
        .await
        .unwrap_err(),
    );
    errors.push(
        HttpBlob::open("ftp://127.0.0.1/a?sig=SECRET", fast_opts())
            .await
            .unwrap_err(),
    );
    errors.push(
        HttpBlob::open("https://user:SECRET@127.0.0.1/a", fast_opts())
            .await
            .unwrap_err(),
    );
    let opts = HttpBlobOptions {
        request_timeout: Duration::from_millis(200),
        max_retries: 1,
        ..fast_opts()
    };
    let blob = HttpBlob::open(&url, opts).await.unwrap();
    assert!(!blob.describe().contains("SECRET"));
    assert!(!format!("{blob:?}").contains("SECRET"));
    for fault in [
        Fault::IgnoreRange,
        Fault::ShortBody { by: 1 },
        Fault::LongBody { by: 1 },
        Fault::WrongContentRange { shift: 1 },
        Fault::internal_error(),
        Fault::ResetMidBody { after: Some(5) },
        Fault::Delay(Duration::from_secs(2)),
        Fault::redirect("/nowhere?sig=SECRET"),
        Fault::ReplaceContent(random_bytes(23, 100_000).into()),
    ] {
        server.set_fault(fault, Times::Always);
        errors.push(read_vec(&blob, 10, 1000).await.unwrap_err());
    }
    server.clear_faults();
    server.add_fault(
        FaultRule::new(Fault::redirect("/self?sig=SECRET"), Times::Always).path("/self"),
    );
    errors.push(
        HttpBlob::open(&server.url("/self?sig=SECRET"), fast_opts())
            .await
            .unwrap_err(),
    );
    errors.push(read_vec(&blob, 99_999, 2).await.unwrap_err());
    drop(blob);

    let mut kinds = std::collections::BTreeSet::new();
    for e in &errors {
        let chain = error_renderings(e);
        assert!(!chain.contains("SECRET"), "secret leaked: {chain}");
        kinds.insert(
            format!("{e:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert!(kinds.len() >= 10, "{kinds:?}");
    let logs = logs.text();
    assert!(logs.contains("http blob closed"), "{logs}");
    assert!(!logs.contains("SECRET"), "secret leaked into logs: {logs}");
}
