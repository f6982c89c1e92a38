//! Tests with real NBD clients: `qemu-img` and `qemu-io` (Debian package
//! `qemu-utils`). Missing tools fail under `CI=true` and skip otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{FileDisk, VecDisk, pattern_bytes, require_tool};
use disk_nbd::{NbdListener, NbdServerOptions, serve_unix};
use rand::{Rng, SeedableRng};

async fn run(program: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `qemu-io` with one `-c` per command against `uri`.
async fn qemu_io(qemu_io: &Path, uri: &str, read_only: bool, commands: &[String]) -> Output {
    let mut args = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    run(qemu_io, &args).await
}

struct Served {
    dir: tempfile::TempDir,
    listener: NbdListener,
    uri: String,
}

async fn serve(disk: disk_backend::Disk, options: NbdServerOptions) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket: PathBuf = dir.path().join("nbd.sock");
    let listener = serve_unix(&socket, disk, options).await.unwrap();
    let uri = listener.nbd_uri();
    Served { dir, listener, uri }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_info_shows_the_export_size() {
    let Some(qemu_img) = require_tool("qemu-img") else {
        return;
    };
    let size = (3 << 20) + 512;
    let (disk, _) = VecDisk::create(vec![0; size], false);
    let s = serve(disk, NbdServerOptions::default()).await;
    let out = run(&qemu_img, &["info", "--output=json", &s.uri]).await;
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(size as u64), "{info}");
    assert_eq!(info["format"].as_str(), Some("raw"));
    s.listener.shutdown().await.unwrap();

    // A named export on a socket path that needs escaping in a URI.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("my disk #1.sock");
    let (disk, _) = VecDisk::create(vec![0; 1 << 20], false);
    let options = NbdServerOptions {
        export_name: Some("boot disk".into()),
        ..Default::default()
    };
    let listener = serve_unix(&socket, disk, options).await.unwrap();
    let uri = listener.nbd_uri();
    assert!(uri.starts_with("nbd+unix:///boot%20disk?socket="), "{uri}");
    let out = run(&qemu_img, &["info", "--output=json", &uri]).await;
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["virtual-size"].as_u64(), Some(1 << 20), "{info}");
    listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_compare_finds_the_export_identical_to_its_source() {
    let Some(qemu_img) = require_tool("qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.raw");
    let bytes = pattern_bytes(8 << 20, 99);
    std::fs::write(&source, &bytes).unwrap();
    let s = serve(FileDisk::open(&source, true), NbdServerOptions::default()).await;
    let source_str = source.to_str().unwrap();
    let out = run(
        &qemu_img,
        &["compare", "-f", "raw", "-F", "raw", &s.uri, source_str],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));

    // The comparison can fail: one changed byte is found in its sector
    // (qemu-img reports the sector-aligned offset).
    let changed = dir.path().join("changed.raw");
    let mut other = bytes.clone();
    other[5_000_001] ^= 0xff;
    std::fs::write(&changed, &other).unwrap();
    let out = run(
        &qemu_img,
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &s.uri,
            changed.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mismatch at offset 4999680"),
        "{}",
        text(&out)
    );

    // A full copy through the export (requests up to qemu-img's buffer
    // size) is byte-identical too.
    let copy = dir.path().join("copy.raw");
    let out = run(
        &qemu_img,
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &s.uri,
            copy.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(&copy).unwrap() == bytes);
    assert!(s.listener.server().stats().bytes_read >= 2 * bytes.len() as u64);
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_random_writes_are_read_back() {
    let Some(qemu_io_bin) = require_tool("qemu-io") else {
        return;
    };
    const SIZE: usize = 16 << 20;
    let initial = pattern_bytes(SIZE, 3);
    let (disk, data) = VecDisk::create(initial.clone(), false);
    let s = serve(disk, NbdServerOptions::default()).await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut expect = initial.clone();
    let mut commands = Vec::new();
    let mut written = Vec::new();
    for i in 0..40 {
        let len = rng.random_range(1..=256usize) * 512;
        let off = rng.random_range(0..(SIZE - len) / 512) * 512;
        let pat = rng.random_range(1..=255u8);
        // Alternate synchronous and asynchronous (in-flight) writes.
        let verb = if i % 2 == 0 { "write" } else { "aio_write" };
        commands.push(format!("{verb} -P {pat} {off} {len}"));
        expect[off..off + len].fill(pat);
        written.push((off, len));
    }
    commands.push("aio_flush".into());
    commands.push("flush".into());
    // Read back every written range against what should be there now
    // (later writes may overlap earlier ones, so check the final bytes).
    for &(off, len) in &written {
        let pat = expect[off];
        if expect[off..off + len].iter().all(|&b| b == pat) {
            commands.push(format!("read -P {pat} {off} {len}"));
        }
    }
    // Unaligned accesses: qemu aligns them to the advertised 512 bytes.
    commands.push("write -P 0x5a 1000 300".into());
    commands.push("read -P 0x5a 1000 300".into());
    expect[1000..1300].fill(0x5a);
    // Write zeroes.
    commands.push("write -z 65536 131072".into());
    commands.push("read -P 0 65536 131072".into());
    expect[65536..196_608].fill(0);

    let out = qemu_io(&qemu_io_bin, &s.uri, false, &commands).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("verification failed"));
    assert!(
        *data.lock() == expect,
        "disk content differs from the writes"
    );

    // A pattern that is not there is reported, so the reads above really
    // checked something.
    let bad = format!("read -P {} 0 512", initial[0].wrapping_add(1));
    let out = qemu_io(&qemu_io_bin, &s.uri, false, &[bad]).await;
    assert!(!out.status.success(), "{}", text(&out));
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_byte_granular_writes_keep_neighbouring_bytes() {
    let Some(qemu_io_bin) = require_tool("qemu-io") else {
        return;
    };
    let initial = pattern_bytes(1 << 20, 11);
    let (disk, data) = VecDisk::create(initial.clone(), false);
    let s = serve(
        disk,
        NbdServerOptions {
            byte_granularity: true,
            ..Default::default()
        },
    )
    .await;
    let commands = [
        "write -P 0xcd 1001 77".to_string(),
        "read -P 0xcd 1001 77".to_string(),
        "write -P 0xce 4000 10000".to_string(),
        "read -P 0xce 4000 10000".to_string(),
    ];
    let out = qemu_io(&qemu_io_bin, &s.uri, false, &commands).await;
    assert!(out.status.success(), "{}", text(&out));
    let mut expect = initial;
    expect[1001..1078].fill(0xcd);
    expect[4000..14000].fill(0xce);
    assert!(*data.lock() == expect);
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_cannot_write_a_read_only_export() {
    let Some(qemu_io_bin) = require_tool("qemu-io") else {
        return;
    };
    let initial = pattern_bytes(1 << 20, 12);
    let (disk, data) = VecDisk::create(initial.clone(), false);
    let s = serve(
        disk,
        NbdServerOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .await;
    let first = initial[0];
    // Opened read-write: refused, as the export says it is read-only.
    let out = qemu_io(&qemu_io_bin, &s.uri, false, &["write -P 1 0 512".into()]).await;
    assert!(!out.status.success(), "{}", text(&out));
    // Opened read-only: reads work, writes fail.
    let read = format!("read -P {first} 0 1");
    let out = qemu_io(&qemu_io_bin, &s.uri, true, &[read]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = qemu_io(&qemu_io_bin, &s.uri, true, &["write -P 1 0 512".into()]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(*data.lock() == initial);
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_qemu_io_clients() {
    let Some(qemu_io_bin) = require_tool("qemu-io") else {
        return;
    };
    const CLIENTS: usize = 4;
    const REGION: usize = 1 << 20;
    let (disk, data) = VecDisk::create(vec![0; CLIENTS * REGION], false);
    let s = serve(disk, NbdServerOptions::default()).await;
    let mut runs = Vec::new();
    for i in 0..CLIENTS {
        let bin = qemu_io_bin.clone();
        let uri = s.uri.clone();
        runs.push(tokio::spawn(async move {
            let base = i * REGION;
            let pat = 0x10 + i;
            let commands = vec![
                format!("aio_write -P {pat} {base} 262144"),
                format!("aio_write -P {pat} {} 262144", base + 262_144),
                format!("aio_write -P {pat} {} 524288", base + 524_288),
                "aio_flush".to_string(),
                format!("read -P {pat} {base} {REGION}"),
            ];
            qemu_io(&bin, &uri, false, &commands).await
        }));
    }
    for r in runs {
        let out = r.await.unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    {
        let disk = data.lock();
        for i in 0..CLIENTS {
            assert!(
                disk[i * REGION..(i + 1) * REGION]
                    .iter()
                    .all(|&b| b as usize == 0x10 + i)
            );
        }
    }
    let stats = s.listener.server().stats();
    assert_eq!(stats.connections, CLIENTS as u64);
    assert_eq!(stats.error_replies, 0);
    assert!(s.dir.path().join("nbd.sock").exists());
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_diff_over_a_file_keeps_qemu_writes_out_of_the_file() {
    let (Some(qemu_img), Some(qemu_io_bin)) = (require_tool("qemu-img"), require_tool("qemu-io"))
    else {
        return;
    };
    use disk_layered::{DiskLayer, LayerConfiguration, LayeredDisk};
    use disklayer_ram::RamDiskLayer;

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let bytes = pattern_bytes(4 << 20, 21);
    std::fs::write(&base, &bytes).unwrap();
    // The stack petri opens for a local image: RAM diff over the file.
    let stack = LayeredDisk::new(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            LayerConfiguration::plain(FileDisk::open(&base, true)),
        ],
    )
    .await
    .unwrap();
    let disk = disk_backend::Disk::new(stack).unwrap();
    let s = serve(disk, NbdServerOptions::default()).await;

    let mut expect = bytes.clone();
    let mut commands = Vec::new();
    for (i, (off, len)) in [
        (0usize, 4096usize),
        (1_000_448, 65536),
        (4_190_208, 4096),
        (2_000_000, 1000),
    ]
    .into_iter()
    .enumerate()
    {
        let pat = 0x30 + i as u8;
        commands.push(format!("write -P {pat} {off} {len}"));
        expect[off..off + len].fill(pat);
    }
    let out = qemu_io(&qemu_io_bin, &s.uri, false, &commands).await;
    assert!(out.status.success(), "{}", text(&out));

    // The export shows the writes over the file's data...
    let expected = dir.path().join("expected.raw");
    std::fs::write(&expected, &expect).unwrap();
    let out = run(
        &qemu_img,
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            &s.uri,
            expected.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    // ...and the file itself is untouched.
    assert!(std::fs::read(&base).unwrap() == bytes);
    s.listener.shutdown().await.unwrap();
}
