//! `petri-tool disk serve-nbd` as a user runs it: a child process serving
//! an image from nginx, the fault server or a local file, read by
//! `qemu-img` and `qemu-io` over the Unix socket, stopped by a signal.

use blob_test_servers::FaultServer;
use blob_test_servers::NginxServer;
use blob_test_servers::images::sha256_file;
use blob_test_servers::images::write_fixed_vhd1;
use blob_test_servers::images::write_random_file;
use blob_test_servers::require_tool;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Read;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;

const TOOL: &str = env!("CARGO_BIN_EXE_petri-tool");

/// A running `serve-nbd` child.
struct Served {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    banner: String,
    uri: String,
}

/// What the child printed after it stopped.
struct Stopped {
    stdout: String,
    counters: serde_json::Value,
}

/// Where one test's runs of the command keep their socket, read cache and
/// counters file.
struct Files {
    socket: PathBuf,
    cache: PathBuf,
    counters: PathBuf,
}

impl Files {
    fn in_dir(dir: &Path) -> Files {
        Files {
            socket: dir.join("nbd.sock"),
            cache: dir.join("cache"),
            counters: dir.join("counters.json"),
        }
    }

    /// Starts `petri-tool disk serve-nbd source` with `extra` arguments and
    /// waits for its banner.
    fn serve(&self, source: &str, extra: &[&str]) -> Served {
        let mut child = Command::new(TOOL)
            .args(["disk", "serve-nbd", source, "--socket"])
            .arg(&self.socket)
            .arg("--counters-json")
            .arg(&self.counters)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // The first line says it is serving (or the process failed).
        let mut banner = String::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!("petri-tool exited ({status}) before serving; output: {banner}");
            }
            banner.push_str(&line);
            if line.starts_with("petri-tool: serving ") {
                break;
            }
        }
        let uri = banner.rsplit(" at ").next().unwrap().trim().to_string();
        assert!(uri.starts_with("nbd+unix:///?socket="), "{banner}");
        Served {
            child,
            stdout,
            banner,
            uri,
        }
    }

    /// One run of a remote image over the read cache in `self.cache`:
    /// serves `url` (with `extra` arguments too), checks that the export
    /// holds `raw`'s bytes, lets `with_export` use it, and stops it with
    /// SIG`signal`.
    fn cached_run(
        &self,
        url: &str,
        raw: &Path,
        extra: &[&str],
        signal: &str,
        with_export: impl FnOnce(&Served),
    ) -> Stopped {
        let mut args = vec!["--cache-dir", self.cache.to_str().unwrap()];
        args.extend_from_slice(extra);
        let served = self.serve(url, &args);
        qemu_img_compare(raw, &served.uri);
        with_export(&served);
        served.stop(signal, &self.counters)
    }
}

impl Served {
    fn stop(mut self, signal: &str, counters: &Path) -> Stopped {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}; output: {rest}");
        assert!(rest.contains(&format!("petri-tool: SIG{signal}")), "{rest}");
        assert!(rest.contains("petri-tool: disk counters for "), "{rest}");
        let counters = serde_json::from_str(&std::fs::read_to_string(counters).unwrap()).unwrap();
        Stopped {
            stdout: rest,
            counters,
        }
    }
}

impl Stopped {
    /// A counter from `--counters-json`.
    fn n(&self, field: &str) -> u64 {
        self.counters[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {}", self.counters))
    }

    /// A cold run: every byte of the disk came from the store.
    fn assert_fetched_at_least(&self, len: u64) {
        let fetched = self.n("remote_bytes_fetched");
        assert!(fetched >= len, "{fetched} < {len}: {}", self.counters);
    }

    /// A warm run: nothing came from the store.
    fn assert_fetched_nothing(&self) {
        assert_eq!(self.n("remote_bytes_fetched"), 0, "{}", self.counters);
    }
}

fn qemu_img_compare(raw: &Path, uri: &str) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(raw)
        .arg(uri)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img compare failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs one `qemu-io` command against `uri`; `succeeds` says whether it
/// must succeed (and write or read what it says).
fn qemu_io(uri: &str, command: &str, succeeds: bool) {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", command, uri])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // qemu-io may exit 0 after a refused write; only a done one says
    // "wrote N/N bytes" (or "read N/N bytes").
    let did = out.status.success() && (stdout.contains("wrote ") || stdout.contains("read "));
    assert_eq!(
        did,
        succeeds,
        "qemu-io -c '{command}': {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn remote_flat_image_streams_once_and_the_warm_run_fetches_nothing() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    let len = 6 << 20;
    write_random_file(&image, 11, len).unwrap();
    let server = FaultServer::start().unwrap();
    server.put_file("/images/disk.raw", &image).unwrap();
    let url = format!("{}?sv=2024&sig=SECRET", server.url("/images/disk.raw"));
    let files = Files::in_dir(dir.path());

    // Cold: every byte comes from the server once, into the cache.
    let cold = files.cached_run(&url, &image, &[], "TERM", |served| {
        let banner = &served.banner;
        assert!(banner.contains(&format!("({len} bytes)")), "{banner}");
        assert!(!banner.contains("SECRET"), "{banner}");
        assert!(banner.contains("disk.raw?<redacted>"), "{banner}");
    });
    assert!(!cold.stdout.contains("SECRET"), "{}", cold.stdout);
    assert!(cold.stdout.contains("bytes fetched in"), "{}", cold.stdout);
    cold.assert_fetched_at_least(len);
    assert!(cold.n("cache_fill_bytes") >= len, "{}", cold.counters);
    assert!(cold.n("nbd_bytes_read") >= len, "{}", cold.counters);
    // qemu-img's reads, and the time they kept it waiting.
    assert!(cold.n("nbd_read_requests") > 0, "{}", cold.counters);
    assert!(
        cold.counters["nbd_read_wait_seconds"].as_f64().unwrap() > 0.0,
        "{}",
        cold.counters
    );
    assert!(
        cold.stdout.contains("with a read waiting"),
        "{}",
        cold.stdout
    );
    assert!(!files.socket.exists(), "the socket file is removed at exit");

    // Warm, same cache: only the validating HEAD goes to the server.
    server.reset_stats();
    let warm = files.cached_run(&url, &image, &[], "INT", |_| {});
    warm.assert_fetched_nothing();
    assert!(warm.n("cache_hit_bytes") >= len, "{}", warm.counters);
    assert_eq!(warm.n("remote_requests"), server.request_count());
    assert!(server.bytes_served() == 0, "{}", server.bytes_served());
}

#[test]
fn remote_vhd_from_nginx_keeps_writes_in_ram() {
    if require_tool("qemu-img").is_none()
        || require_tool("qemu-io").is_none()
        || require_tool("nginx").is_none()
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let disk_size = 4 << 20;
    let vhd = www.join("guest.vhd");
    write_fixed_vhd1(&vhd, 12, disk_size, *b"petri-tool-vhd-1").unwrap();
    let raw = dir.path().join("guest.raw");
    write_random_file(&raw, 12, disk_size).unwrap();
    let vhd_hash = sha256_file(&vhd).unwrap();
    let nginx = NginxServer::serve_dir(&www).unwrap();
    let files = Files::in_dir(dir.path());
    let url = nginx.url("/guest.vhd");

    // The export is the disk without the footer, and a client's write
    // lands in the RAM layer: it reads back...
    files.cached_run(&url, &raw, &[], "TERM", |served| {
        assert!(served.banner.contains(&format!("({disk_size} bytes)")));
        qemu_io(&served.uri, "write -P 0xab 65536 65536", true);
        qemu_io(&served.uri, "read -P 0xab 65536 65536", true);
    });
    // ...but never reaches the image or the cache: a new server over the
    // same cache shows the original bytes, fetching nothing.
    assert_eq!(sha256_file(&vhd).unwrap(), vhd_hash);
    files
        .cached_run(&url, &raw, &[], "TERM", |_| {})
        .assert_fetched_nothing();
}

#[test]
fn local_file_read_only_export_refuses_writes() {
    if require_tool("qemu-img").is_none() || require_tool("qemu-io").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("local.img");
    write_random_file(&image, 13, 2 << 20).unwrap();
    let hash = sha256_file(&image).unwrap();
    let files = Files::in_dir(dir.path());

    let served = files.serve(image.to_str().unwrap(), &["--read-only"]);
    assert!(served.banner.contains("read-only"), "{}", served.banner);
    assert!(!served.banner.contains("read cache"), "{}", served.banner);
    qemu_img_compare(&image, &served.uri);
    qemu_io(&served.uri, "write -P 0xcd 0 4096", false);
    let stopped = served.stop("TERM", &files.counters);
    assert_eq!(stopped.n("remote_requests"), 0);
    assert_eq!(stopped.n("nbd_bytes_written"), 0);
    assert_eq!(sha256_file(&image).unwrap(), hash);
}

/// Runs `petri-tool disk serve-nbd <source> --socket <socket> <extra>`,
/// which must fail; returns its standard error.
fn fails(source: &str, socket: &str, extra: &[&str]) -> String {
    let out = Command::new(TOOL)
        .args(["disk", "serve-nbd", source, "--socket", socket])
        .args(extra)
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected failure for {source}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn clear_errors_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let socket = socket.to_str().unwrap();
    let cache = dir.path().join("cache");
    let cache = cache.to_str().unwrap();
    let server = FaultServer::start().unwrap();
    let missing = format!("{}?sig=SECRET", server.url("/missing.vhd"));

    // A name that contradicts the content: a raw image called .vhdx.
    server.put_blob("/win.vhdx", vec![0u8; 1 << 20]);
    let contradicting = format!("{}?sig=SECRET", server.url("/win.vhdx"));
    // (source, extra arguments, what the error must say)
    let cases: [(&str, &[&str], &[&str]); 4] = [
        ("/no/such/image.vhd", &[], &["/no/such/image.vhd"]),
        ("ftp://h/x.vhd?sig=SECRET", &[], &["unsupported URL scheme"]),
        (
            &missing,
            &["--cache-dir", cache],
            &["missing.vhd?<redacted>", "404"],
        ),
        (
            &contradicting,
            &["--cache-dir", cache],
            &["VHDX (.vhdx)", "raw data", "win.vhdx?<redacted>"],
        ),
    ];
    for (source, extra, says) in cases {
        let err = fails(source, socket, extra);
        for s in says {
            assert!(err.contains(s), "{source}: {err}");
        }
        assert!(!err.contains("SECRET"), "{source}: {err}");
    }
    assert!(!Path::new(socket).exists());
}

#[test]
fn read_only_remote_export_still_fills_the_read_cache() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ro.img");
    let len = 3 << 20;
    write_random_file(&image, 14, len).unwrap();
    let server = FaultServer::start().unwrap();
    server.put_file("/ro.img", &image).unwrap();
    let files = Files::in_dir(dir.path());
    let url = server.url("/ro.img");

    files
        .cached_run(&url, &image, &["--read-only"], "TERM", |_| {})
        .assert_fetched_at_least(len);
    files
        .cached_run(&url, &image, &["--read-only"], "TERM", |_| {})
        .assert_fetched_nothing();
}

/// The main job's path: the embedded blob server hosting a fixed VHD1,
/// read through the full stack; the warm run sends only the validating HEAD.
#[test]
fn remote_vhd_from_the_embedded_blob_server() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    let disk_size = 5 << 20;
    write_fixed_vhd1(&www.join("g.vhd"), 15, disk_size, *b"petri-tool-vhd-2").unwrap();
    let raw = dir.path().join("g.raw");
    write_random_file(&raw, 15, disk_size).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime
        .block_on(blob_server::BlobServer::serve_dir(
            &www,
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    let url = format!("{}?sig=SECRET", server.url("g.vhd"));
    let files = Files::in_dir(dir.path());

    let cold = files.cached_run(&url, &raw, &[], "TERM", |_| {});
    cold.assert_fetched_at_least(disk_size);
    let after_cold = server.stats();
    assert_eq!(after_cold.requests, cold.n("remote_requests"));
    assert_eq!(after_cold.bytes_sent, cold.n("remote_bytes_fetched"));
    // The one error is the 404 for the image's prefetch list, which this
    // store does not have.
    assert_eq!(after_cold.errors, 1);
    assert_eq!(after_cold.precondition_failed, 0);

    files
        .cached_run(&url, &raw, &[], "TERM", |_| {})
        .assert_fetched_nothing();
    let after_warm = server.stats();
    assert_eq!(
        after_warm.requests - after_cold.requests,
        1,
        "{after_warm:?}"
    );
    assert_eq!(after_warm.head_requests - after_cold.head_requests, 1);
    assert_eq!(after_warm.bytes_sent, after_cold.bytes_sent);
    runtime.block_on(server.shutdown());
}

#[test]
fn log_lines_to_a_pipe_are_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let server = FaultServer::start().unwrap();
    let url = server.url("/missing.raw");
    let out = Command::new(TOOL)
        .args(["disk", "serve-nbd", &url, "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("RUST_LOG", "debug")
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Standard error is a pipe here: log lines are there, colour codes not.
    assert!(stderr.contains(" DEBUG "), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

/// `--record-prefetch`: a session's reads become a prefetch list; published
/// beside the image, it makes a session on an empty cache fetch the image
/// ahead of the client (each byte once), and the list never carries the
/// URL's query.
#[test]
fn a_recorded_prefetch_list_published_in_the_store_is_replayed() {
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("p.raw");
    let len = 8 << 20;
    write_random_file(&image, 12, len).unwrap();
    let server = FaultServer::start().unwrap();
    server.put_file("/p.raw", &image).unwrap();
    let url = format!("{}?sig=SECRET", server.url("/p.raw"));
    let list = dir.path().join("p.raw.prefetch");

    let recorder = Files::in_dir(&dir.path().join("a"));
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    let cold = recorder.cached_run(
        &url,
        &image,
        &["--record-prefetch", list.to_str().unwrap()],
        "TERM",
        |_| {},
    );
    assert!(
        cold.stdout.contains("prefetch list written to"),
        "{}",
        cold.stdout
    );
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(text.starts_with("petri-prefetch 1\n"), "{text}");
    assert!(!text.contains("SECRET"));

    server.put_file("/p.raw.prefetch", &list).unwrap();
    let fresh = Files::in_dir(&dir.path().join("b"));
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let replayed = fresh.cached_run(&url, &image, &[], "TERM", |_| {});
    assert!(replayed.n("prefetched_bytes") > 0, "{}", replayed.counters);
    let fetched = replayed.n("remote_bytes_fetched");
    assert!(
        fetched <= len + len / 10,
        "fetched {fetched} for an image of {len}: {}",
        replayed.counters
    );
}

/// Sparse images served from the embedded test server (which counts the
/// requests and bytes it answers): the format is detected from the
/// content (a qcow2 named `.img`, as clouds ship them) or named with
/// `--format`; the export holds the raw image's bytes; the cold run
/// fetches no more than the image's allocated bytes and a tenth; the warm
/// run fetches nothing.
#[test]
fn sparse_images_stream_with_the_format_detected_or_named() {
    use blob_test_servers::sparse_images::SparseVariant;
    use blob_test_servers::sparse_images::convert_with_qemu_img;
    use blob_test_servers::sparse_images::write_sparse_raw;
    if require_tool("qemu-img").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    write_sparse_raw(&raw, 24 << 20).unwrap();
    let server = FaultServer::start().unwrap();
    let variants: [(SparseVariant, &[&str]); 3] = [
        (
            SparseVariant {
                name: "cloud.img",
                args: &["-c", "-O", "qcow2"],
            },
            &[],
        ),
        (
            SparseVariant {
                name: "dynamic.vhd",
                args: &["-O", "vpc", "-o", "subformat=dynamic,force_size=on"],
            },
            &["--format", "vhd1-dynamic"],
        ),
        (
            SparseVariant {
                name: "disk.vhdx",
                args: &["-O", "vhdx", "-o", "block_size=1M"],
            },
            &["--format", "auto"],
        ),
    ];
    for (variant, extra) in variants {
        let name = variant.name;
        let image = convert_with_qemu_img(&raw, dir.path(), &variant).unwrap();
        let image_len = std::fs::metadata(&image).unwrap().len();
        server.put_file(&format!("/{name}"), &image).unwrap();
        let url = format!("{}?sig=SECRET", server.url(&format!("/{name}")));
        let run_dir = dir.path().join(format!("run-{name}"));
        std::fs::create_dir(&run_dir).unwrap();
        let files = Files::in_dir(&run_dir);

        server.reset_stats();
        let cold = files.cached_run(&url, &raw, extra, "TERM", |_| {});
        let fetched = cold.n("remote_bytes_fetched");
        assert!(fetched > 0, "{name}: {}", cold.counters);
        assert!(
            fetched as f64 <= image_len as f64 * 1.1,
            "{name}: fetched {fetched} of a {image_len}-byte image"
        );
        assert_eq!(server.bytes_served(), fetched, "{name}");
        assert_eq!(server.request_count(), cold.n("remote_requests"), "{name}");

        server.reset_stats();
        let warm = files.cached_run(&url, &raw, extra, "INT", |_| {});
        warm.assert_fetched_nothing();
        assert_eq!(server.bytes_served(), 0, "{name}");
        assert_eq!(server.request_count(), 1, "{name}: only the HEAD");
    }

    // A named format that the content contradicts is refused, naming the
    // image (the URL without its query) and the structure.
    let socket = dir.path().join("s.sock");
    let err = fails(
        &format!("{}?sig=SECRET", server.url("/cloud.img")),
        socket.to_str().unwrap(),
        &["--format", "vhdx"],
    );
    assert!(err.contains("cloud.img?<redacted>"), "{err}");
    assert!(err.contains("VHDX"), "{err}");
    assert!(!err.contains("SECRET"), "{err}");
}
