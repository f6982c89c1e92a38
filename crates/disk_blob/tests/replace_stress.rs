//! Stress: the image is replaced on the server at random moments while
//! many clients read it. Every read that succeeds must return bytes of
//! exactly one version of the image at that offset: the version the blob
//! pinned at open (so never a mix of two, never another offset's bytes).
//! A replaced image may only ever show up as `ImageChanged`. Two stores:
//! the fault server (the new version replaces the old one when a random
//! request arrives) and `blob_server` over a directory (a new file is
//! renamed over the old one once a random number of requests was served).
//!
//! Seeded: `REPLACE_STRESS_SEED=<n>` reruns a failing seed (the failure
//! message names it).

use blob_server::BlobServer;
use blob_test_servers::Fault;
use blob_test_servers::FaultRule;
use blob_test_servers::FaultServer;
use blob_test_servers::Times;
use blob_test_servers::images::random_bytes;
use disk_blob::Blob;
use disk_blob::HttpBlob;
use disk_blob::HttpBlobOptions;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

const PATH: &str = "/images/replaced.img";
const LEN: usize = 2 << 20;
const PIECE: usize = 128 << 10;
const ROUNDS: u64 = 200;
const CLIENTS: u64 = 4;
const READS_PER_CLIENT: usize = 8;
/// Distinct images the server cycles through (each put gets a new ETag,
/// even when the bytes repeat).
const IMAGES: usize = 3;

/// What the test saw, summed over rounds.
#[derive(Debug, Default)]
struct Tally {
    reads_ok: u64,
    bytes_checked: u64,
    image_changed: u64,
    replacements: u64,
}

/// One client: opens the blob (pinning whatever version is current), reads
/// at random offsets and in sequential runs (so that readahead and its
/// recycled buffers take part), reopens after `ImageChanged`. Returns an
/// error message for the first read whose bytes are wrong.
async fn client(
    url: String,
    images: Arc<Vec<Vec<u8>>>,
    versions: Arc<HashMap<String, usize>>,
    replacement: usize,
    seed: u64,
) -> Result<Tally, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let opts = HttpBlobOptions {
        max_request_size: PIECE,
        readahead: 4 * PIECE,
        max_connections: 4,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        ..Default::default()
    };
    let mut tally = Tally::default();
    let mut blob = HttpBlob::open(&url, opts.clone())
        .await
        .map_err(|e| format!("open: {e}"))?;
    let mut next_sequential: Option<u64> = None;
    for _ in 0..READS_PER_CLIENT {
        let len = match rng.random_range(0..4) {
            0 => 4096,
            1 => rng.random_range(1..=PIECE),
            2 => PIECE,
            _ => rng.random_range(PIECE..=3 * PIECE),
        };
        let offset = match next_sequential {
            Some(o) if (o as usize) + len <= LEN => o,
            _ => rng.random_range(0..=(LEN - len) as u64),
        };
        next_sequential = rng.random_bool(0.6).then_some(offset + len as u64);
        let mut buf = vec![0u8; len];
        match blob.read(&mut buf, offset).await {
            Ok(()) => {
                // An ETag not known before the round is the one the
                // server gave this round's replacement (there is at most
                // one put per round).
                let etag = blob.validators().etag.unwrap_or_default();
                let pinned = versions.get(&etag).copied().unwrap_or(replacement);
                let at = offset as usize..offset as usize + len;
                if buf != images[pinned][at.clone()] {
                    let other = (0..IMAGES).find(|&v| buf == images[v][at.clone()]);
                    let first_bad = buf
                        .iter()
                        .zip(&images[pinned][at.clone()])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    return Err(format!(
                        "{len} bytes at {offset}, pinned to image {pinned} ({etag}): \
                         wrong from byte {first_bad}; whole piece equals image {other:?}"
                    ));
                }
                tally.reads_ok += 1;
                tally.bytes_checked += len as u64;
            }
            Err(e) if e.is_image_changed() => {
                tally.image_changed += 1;
                next_sequential = None;
                blob = HttpBlob::open(&url, opts.clone())
                    .await
                    .map_err(|e| format!("reopen: {e}"))?;
            }
            Err(e) => return Err(format!("read {len} bytes at {offset}: {e:?}")),
        }
    }
    Ok(tally)
}

/// Writes image bytes as the store's file: into a new file renamed over
/// the old one, as an image store publishes a new version. With
/// `keep_mtime` the new file gets the old one's modification time, as a
/// copy that preserves timestamps (`cp -p`, `rsync -t`) would.
fn write_version(root: &Path, bytes: &[u8], n: u64, keep_mtime: bool) {
    let dest = root.join(PATH.trim_start_matches('/'));
    let tmp = dest.with_extension(format!("new{n}"));
    std::fs::write(&tmp, bytes).unwrap();
    if keep_mtime {
        let mtime = std::fs::metadata(&dest).unwrap().modified().unwrap();
        let file = std::fs::File::options().write(true).open(&tmp).unwrap();
        file.set_modified(mtime).unwrap();
    }
    std::fs::rename(&tmp, &dest).unwrap();
}

/// Where the image lives and how a new version replaces it.
enum Store {
    Fault(Box<FaultServer>),
    Dir {
        server: Arc<BlobServer>,
        dir: tempfile::TempDir,
    },
}

/// A replacement armed for one round.
enum Armed {
    /// The fault server replaces the image when the rule fires.
    Rule { fired_before: u64 },
    /// A task renames the new version in; it has done so when it ends.
    Task(tokio::task::JoinHandle<()>, Arc<AtomicBool>),
}

impl Store {
    async fn fault(first: &[u8]) -> Store {
        let server = FaultServer::start().unwrap();
        server.put_blob(PATH, first.to_vec());
        Store::Fault(Box::new(server))
    }

    async fn dir(first: &[u8]) -> Store {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("images")).unwrap();
        write_version(dir.path(), first, 0, false);
        let server = BlobServer::serve_dir(dir.path(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Store::Dir {
            server: Arc::new(server),
            dir,
        }
    }

    fn url(&self) -> String {
        match self {
            Store::Fault(s) => s.url(PATH),
            Store::Dir { server, .. } => server.url(PATH),
        }
    }

    /// Arms the replacement by `next` for when `skip` more requests have
    /// arrived (`keep_mtime`: see [`write_version`]; the fault server's
    /// versions always differ in ETag and Last-Modified).
    fn arm(&self, next: &[u8], skip: u64, round: u64, keep_mtime: bool) -> Armed {
        match self {
            Store::Fault(s) => {
                s.clear_faults();
                s.add_fault(
                    FaultRule::new(Fault::ReplaceContent(next.to_vec().into()), Times::Next(1))
                        .path(PATH)
                        .skip(skip as u32),
                );
                Armed::Rule {
                    fired_before: s.faults_fired(),
                }
            }
            Store::Dir { server, dir } => {
                let root = dir.path().to_owned();
                let next = next.to_vec();
                let server = server.clone();
                let at = server.stats().requests + skip;
                let clients_done = Arc::new(AtomicBool::new(false));
                let done = clients_done.clone();
                let task = tokio::spawn(async move {
                    // The rename is the injection; this wait only picks its
                    // moment (the chosen request, or the end of the round).
                    while server.stats().requests < at && !done.load(Ordering::Relaxed) {
                        tokio::task::yield_now().await;
                    }
                    tokio::task::spawn_blocking(move || {
                        write_version(&root, &next, round + 1, keep_mtime)
                    })
                    .await
                    .unwrap();
                });
                Armed::Task(task, clients_done)
            }
        }
    }

    /// After the clients are done: makes sure the replacement happened.
    async fn settle(&self, armed: Armed, next: &[u8]) {
        match (self, armed) {
            (Store::Fault(s), Armed::Rule { fired_before }) => {
                if s.faults_fired() == fired_before {
                    // Fewer requests than the skip: replace now.
                    s.clear_faults();
                    s.put_blob(PATH, next.to_vec());
                }
            }
            (Store::Dir { .. }, Armed::Task(task, clients_done)) => {
                clients_done.store(true, Ordering::Relaxed);
                task.await.unwrap();
            }
            _ => unreachable!("armed for another store"),
        }
    }
}

/// The ETag the store gives the image now, as a client sees it at open.
async fn current_etag(url: &str) -> String {
    let blob = HttpBlob::open(url, HttpBlobOptions::default())
        .await
        .unwrap();
    blob.validators().etag.unwrap()
}

/// Which store serves the image.
enum Kind {
    FaultServer,
    BlobServer,
}

async fn stress(kind: Kind) {
    let seed: u64 = std::env::var("REPLACE_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2024);
    let images: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..IMAGES as u64)
            .map(|i| random_bytes(100 + i, LEN))
            .collect(),
    );
    let store = match kind {
        Kind::FaultServer => Store::fault(&images[0]).await,
        Kind::BlobServer => Store::dir(&images[0]).await,
    };
    let url = store.url();
    let mut versions = HashMap::new();
    versions.insert(current_etag(&url).await, 0);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut total = Tally::default();
    let mut current = 0usize;

    for round in 0..ROUNDS {
        let next = (current + 1) % IMAGES;
        let skip = rng.random_range(0..40);
        let armed = store.arm(&images[next], skip, round, rng.random_bool(0.5));
        let known = Arc::new(versions.clone());
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client(
                    url.clone(),
                    images.clone(),
                    known.clone(),
                    next,
                    seed ^ (round << 8) ^ c,
                ))
            })
            .collect();
        let mut errors = Vec::new();
        for c in clients {
            match c.await.unwrap() {
                Ok(t) => {
                    total.reads_ok += t.reads_ok;
                    total.bytes_checked += t.bytes_checked;
                    total.image_changed += t.image_changed;
                }
                Err(e) => errors.push(e),
            }
        }
        store.settle(armed, &images[next]).await;
        total.replacements += 1;
        current = next;
        assert!(
            errors.is_empty(),
            "seed {seed}, round {round}: {}",
            errors.join("; ")
        );
        // A tag seen before would pin a later reader (or key a read cache)
        // to bytes of another version.
        let etag = current_etag(&url).await;
        assert!(
            !versions.contains_key(&etag),
            "seed {seed}, round {round}: the new version got an old ETag {etag}"
        );
        versions.insert(etag, current);
    }
    println!("{total:?}");
    assert_eq!(total.replacements, ROUNDS);
    // The replacements raced the reads: some reads saw them.
    assert!(total.image_changed > 0, "{total:?}");
    assert!(
        total.reads_ok > ROUNDS * CLIENTS * READS_PER_CLIENT as u64 / 2,
        "{total:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_server_replacements_never_yield_mixed_or_foreign_bytes() {
    stress(Kind::FaultServer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_server_replacements_never_yield_mixed_or_foreign_bytes() {
    stress(Kind::BlobServer).await;
}
