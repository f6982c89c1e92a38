//! Tests with real NBD clients: `qemu-img` and `qemu-io` (Debian package
//! `qemu-utils`). Missing tools fail under `CI=true` and skip otherwise.

mod common;

use std::path::Path;
use std::process::Output;

use common::VecDisk;
use common::require_tool;
use common::serve;
use disk_nbd::NbdServerOptions;
use disk_nbd::NbdStats;
use disk_nbd::serve_unix;
use disk_test_support::TestDisk;
use disk_test_support::random_bytes;
use rand::Rng;
use rand::SeedableRng;

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

/// `qemu-img info` of `uri`, which must succeed: the virtual size.
async fn qemu_img_virtual_size(qemu_img: &Path, uri: &str) -> u64 {
    let out = run(qemu_img, &["info", "--output=json", uri]).await;
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["format"].as_str(), Some("raw"), "{info}");
    info["virtual-size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no virtual-size: {info}"))
}

/// `qemu-img compare` of the export at `uri` with a raw file.
async fn qemu_img_compare(qemu_img: &Path, uri: &str, raw: &Path) -> Output {
    let raw = raw.to_str().unwrap();
    run(qemu_img, &["compare", "-f", "raw", "-F", "raw", uri, raw]).await
}

/// One `qemu-io` run against the export and whether it must succeed.
struct Session {
    read_only: bool,
    commands: Vec<String>,
    succeeds: bool,
}

impl Session {
    /// A read-write session that must succeed.
    fn new(commands: Vec<String>) -> Self {
        Session {
            read_only: false,
            commands,
            succeeds: true,
        }
    }

    fn ok(commands: &[&str]) -> Self {
        Self::new(commands.iter().map(|c| c.to_string()).collect())
    }

    /// The session must fail.
    fn failing(self) -> Self {
        Session {
            succeeds: false,
            ..self
        }
    }

    /// `qemu-io -r`: the image opened read-only.
    fn read_only(self) -> Self {
        Session {
            read_only: true,
            ..self
        }
    }
}

/// The shape of the `qemu-io` tests: a `len`-byte pattern disk (from
/// `seed`) exported with `options` (on loopback TCP if `tcp`, else a Unix
/// socket); `plan` turns the initial bytes into the sessions to run and
/// the bytes the disk must hold afterwards. Each session must succeed or
/// fail as it says; `None` when `qemu-io` is missing (skipped).
async fn qemu_io_case(
    len: usize,
    seed: u64,
    options: NbdServerOptions,
    tcp: bool,
    plan: impl FnOnce(&[u8]) -> (Vec<Session>, Vec<u8>),
) -> Option<NbdStats> {
    let bin = require_tool("qemu-io")?;
    let initial = random_bytes(seed, len);
    let (disk, data) = VecDisk::create(initial.clone(), false);
    let server = disk_nbd::NbdServer::new(disk, options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listener = if tcp {
        server.listen_tcp("127.0.0.1:0".parse().unwrap()).await
    } else {
        server.listen_unix(dir.path().join("nbd.sock")).await
    }
    .unwrap();
    let uri = listener.nbd_uri();
    let (sessions, expect) = plan(&initial);
    for (i, session) in sessions.iter().enumerate() {
        let out = qemu_io(&bin, &uri, session.read_only, &session.commands).await;
        assert_eq!(
            out.status.success(),
            session.succeeds,
            "session {i} {:?}: {}",
            session.commands,
            text(&out)
        );
        if session.succeeds {
            assert!(
                !String::from_utf8_lossy(&out.stdout).contains("verification failed"),
                "{}",
                text(&out)
            );
        }
    }
    assert!(*data.lock() == expect, "disk content differs from the plan");
    let stats = server.stats();
    listener.shutdown().await.unwrap();
    Some(stats)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_info_shows_the_export_size() {
    let Some(qemu_img) = require_tool("qemu-img") else {
        return;
    };
    let size = (3 << 20) + 512;
    let (disk, _) = VecDisk::create(vec![0; size], false);
    let s = serve(disk, NbdServerOptions::default()).await;
    assert_eq!(qemu_img_virtual_size(&qemu_img, &s.uri).await, size as u64);
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
    assert_eq!(qemu_img_virtual_size(&qemu_img, &uri).await, 1 << 20);
    listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_compare_finds_the_export_identical_to_its_source() {
    let Some(qemu_img) = require_tool("qemu-img") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source.raw");
    let bytes = random_bytes(99, 8 << 20);
    std::fs::write(&source, &bytes).unwrap();
    let s = serve(
        TestDisk::open(&source).unwrap().disk(),
        NbdServerOptions::default(),
    )
    .await;
    let out = qemu_img_compare(&qemu_img, &s.uri, &source).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("identical"));

    // The comparison can fail: one changed byte is found in its sector
    // (qemu-img reports the sector-aligned offset).
    let changed = dir.path().join("changed.raw");
    let mut other = bytes.clone();
    other[5_000_001] ^= 0xff;
    std::fs::write(&changed, &other).unwrap();
    let out = qemu_img_compare(&qemu_img, &s.uri, &changed).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("mismatch at offset 4999680"),
        "{}",
        text(&out)
    );

    // A full copy through the export (requests up to qemu-img's buffer
    // size) is byte-identical too.
    let copy = dir.path().join("copy.raw");
    let copy_arg = copy.to_str().unwrap();
    let convert = ["convert", "-f", "raw", "-O", "raw", &s.uri, copy_arg];
    let out = run(&qemu_img, &convert).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(&copy).unwrap() == bytes);
    assert!(s.listener.server().stats().bytes_read >= 2 * bytes.len() as u64);
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_random_writes_are_read_back() {
    const SIZE: usize = 16 << 20;
    qemu_io_case(SIZE, 3, NbdServerOptions::default(), false, |initial| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut expect = initial.to_vec();
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
        // A pattern that is not there is reported, so the reads above
        // really checked something.
        let bad = format!("read -P {} 0 512", expect[0].wrapping_add(1));
        let bad = Session::ok(&[&bad]).failing();
        (vec![Session::new(commands), bad], expect)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_byte_granular_writes_keep_neighbouring_bytes() {
    let options = NbdServerOptions {
        byte_granularity: true,
        ..Default::default()
    };
    qemu_io_case(1 << 20, 11, options, false, |initial| {
        let mut expect = initial.to_vec();
        expect[1001..1078].fill(0xcd);
        expect[4000..14000].fill(0xce);
        let session = Session::ok(&[
            "write -P 0xcd 1001 77",
            "read -P 0xcd 1001 77",
            "write -P 0xce 4000 10000",
            "read -P 0xce 4000 10000",
        ]);
        (vec![session], expect)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_cannot_write_a_read_only_export() {
    let options = NbdServerOptions {
        read_only: true,
        ..Default::default()
    };
    qemu_io_case(1 << 20, 12, options, false, |initial| {
        let write = || Session::ok(&["write -P 1 0 512"]).failing();
        let read = format!("read -P {} 0 1", initial[0]);
        // Opened read-write: refused, as the export says it is read-only.
        // Opened read-only: reads work, writes fail.
        let sessions = vec![
            write(),
            Session::ok(&[&read]).read_only(),
            write().read_only(),
        ];
        (sessions, initial.to_vec())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_loopback_tcp() {
    qemu_io_case(2 << 20, 31, NbdServerOptions::default(), true, |initial| {
        let mut expect = initial.to_vec();
        expect[8192..73_728].fill(0x77);
        let session = Session::ok(&[
            &format!("read -P {} 4096 1", initial[4096]),
            "write -P 0x77 8192 65536",
            "read -P 0x77 8192 65536",
        ]);
        (vec![session], expect)
    })
    .await;
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
    assert!(s.socket.exists());
    s.listener.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ram_diff_over_a_file_keeps_qemu_writes_out_of_the_file() {
    let (Some(qemu_img), Some(qemu_io_bin)) = (require_tool("qemu-img"), require_tool("qemu-io"))
    else {
        return;
    };
    use disk_layered::DiskLayer;
    use disk_layered::LayerConfiguration;
    use disk_layered::LayeredDisk;
    use disklayer_ram::RamDiskLayer;

    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let bytes = random_bytes(21, 4 << 20);
    std::fs::write(&base, &bytes).unwrap();
    // The stack petri opens for a local image: RAM diff over the file.
    let stack = LayeredDisk::new(
        false,
        vec![
            LayerConfiguration::plain(DiskLayer::new(RamDiskLayer::lazy(None))),
            LayerConfiguration::plain(TestDisk::open(&base).unwrap().disk()),
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
    let out = qemu_img_compare(&qemu_img, &s.uri, &expected).await;
    assert!(out.status.success(), "{}", text(&out));
    // ...and the file itself is untouched.
    assert!(std::fs::read(&base).unwrap() == bytes);
    s.listener.shutdown().await.unwrap();
}

/// A BIOS boot sector, hand-assembled (16-bit real mode, loaded at 0x7c00):
/// reads sector 2 (CHS 0/0/2) to 0x7e00 with `int 13h` and prints that
/// NUL-terminated text on COM1, then writes its own 512 bytes to sector 3
/// and prints `WRITE-OK` (or `DISK-FAIL` if either call fails) and halts.
const BOOT_CODE: &[u8] = &[
    0xfa, // cli
    0x31, 0xc0, // xor ax, ax
    0x8e, 0xd8, // mov ds, ax
    0x8e, 0xc0, // mov es, ax
    0x8e, 0xd0, // mov ss, ax
    0xbc, 0x00, 0x7c, // mov sp, 0x7c00
    0xfb, // sti
    0x88, 0x16, 0x00, 0x05, // mov [0x500], dl   (boot drive)
    0xb8, 0x01, 0x02, // mov ax, 0x0201      (read 1 sector)
    0xb9, 0x02, 0x00, // mov cx, 2           (cylinder 0, sector 2)
    0xb6, 0x00, // mov dh, 0                  (head 0)
    0xbb, 0x00, 0x7e, // mov bx, 0x7e00
    0xcd, 0x13, // int 0x13
    0x72, 0x23, // jc fail
    0xbe, 0x00, 0x7e, // mov si, 0x7e00
    0xe8, 0x25, 0x00, // call print
    0x8a, 0x16, 0x00, 0x05, // mov dl, [0x500]
    0xb8, 0x01, 0x03, // mov ax, 0x0301      (write 1 sector)
    0xb9, 0x03, 0x00, // mov cx, 3           (cylinder 0, sector 3)
    0xb6, 0x00, // mov dh, 0
    0xbb, 0x00, 0x7c, // mov bx, 0x7c00      (this boot sector)
    0xcd, 0x13, // int 0x13
    0x72, 0x0a, // jc fail
    0xbe, 0x57, 0x7c, // mov si, ok_msg
    0xe8, 0x0c, 0x00, // call print
    0xfa, // halt: cli
    0xf4, // hlt
    0xeb, 0xfc, // jmp halt
    0xbe, 0x61, 0x7c, // fail: mov si, fail_msg
    0xe8, 0x02, 0x00, // call print
    0xeb, 0xf4, // jmp halt
    0xac, // print: lodsb
    0x84, 0xc0, // test al, al
    0x74, 0x06, // jz .ret
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xee, // out dx, al
    0xeb, 0xf5, // jmp print
    0xc3, // .ret: ret
    b'W', b'R', b'I', b'T', b'E', b'-', b'O', b'K', b'\n', 0, // ok_msg (0x57)
    b'D', b'I', b'S', b'K', b'-', b'F', b'A', b'I', b'L', b'\n', 0, // fail_msg (0x61)
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_boots_from_the_export_and_writes_through_it() {
    let Some(qemu) = require_tool("qemu-system-x86_64") else {
        return;
    };
    use tokio::io::AsyncBufReadExt;

    let mut image = random_bytes(77, 1 << 20);
    image[..512].fill(0);
    image[..BOOT_CODE.len()].copy_from_slice(BOOT_CODE);
    image[510] = 0x55;
    image[511] = 0xaa;
    let message = b"NBD-BOOT-OK: sector 2 came over NBD\n\0";
    image[512..512 + message.len()].copy_from_slice(message);
    let (disk, data) = VecDisk::create(image.clone(), false);
    let s = serve(disk, NbdServerOptions::default()).await;

    // TCG: KVM is not dependable on these machines.
    let drive = format!("file={},format=raw,if=virtio,cache=none", s.uri);
    let mut child = tokio::process::Command::new(&qemu)
        .args(["-machine", "pc,accel=tcg", "-m", "32", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-drive", &drive])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut console = Vec::new();
    // A bound on a hang, not a synchronisation: the guest's own output
    // tells when it is done.
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            console.push(line.clone());
            if line.contains("WRITE-OK") || line.contains("DISK-FAIL") {
                return Some(line);
            }
        }
        None
    })
    .await;
    child.kill().await.unwrap();
    let stderr = child.wait_with_output().await.unwrap().stderr;
    let console = console.join("\n");
    let report = format!(
        "console:\n{console}\nqemu stderr:\n{}",
        String::from_utf8_lossy(&stderr)
    );
    assert_eq!(
        outcome.ok().flatten().as_deref(),
        Some("WRITE-OK"),
        "{report}"
    );
    assert!(
        console.contains("NBD-BOOT-OK: sector 2 came over NBD"),
        "{report}"
    );

    // The guest's write reached the disk: sector 3 holds the boot sector,
    // everything else is as it was.
    let mut expect = image.clone();
    let boot = image[..512].to_vec();
    expect[1024..1536].copy_from_slice(&boot);
    assert!(*data.lock() == expect);
    assert!(s.listener.server().stats().bytes_read >= 1024);
    s.listener.shutdown().await.unwrap();
}
