//! `petri-tool cache list | prune | verify` as a user runs them, on a
//! cache directory filled by real remote disks (the in-test HTTP server,
//! opened through `disk_open` as petri does), one of them held open by
//! this process while the commands run.

use blob_test_servers::FaultServer;
use blob_test_servers::images::fixed_vhd1_bytes;
use blob_test_servers::images::random_bytes;
use blob_test_servers::remote_stack;
use disk_backend::Disk;
use disk_backend_resources::BlobFormat;
use disk_backend_resources::LayeredDiskHandle;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use std::time::SystemTime;

const TOOL: &str = env!("CARGO_BIN_EXE_petri-tool");
const MIB: usize = 1 << 20;

fn remote(cache_dir: &Path, url: &str, format: BlobFormat) -> LayeredDiskHandle {
    remote_stack(cache_dir, url, format, true)
}

/// Opens `url` with its cache in `cache_dir` and reads its first `len`
/// bytes.
async fn open_and_read(cache_dir: &Path, url: &str, format: BlobFormat, len: usize) -> Disk {
    let disk = disk_open::open(&remote(cache_dir, url, format), &Default::default())
        .await
        .unwrap();
    let mut buf = vec![0u8; len];
    disk.read(0, &mut buf).await.unwrap();
    disk
}

/// The output of one `petri-tool cache ...` run.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn tool(cache_dir: &Path, args: &[&str]) -> Run {
    let out = Command::new(TOOL)
        .arg("cache")
        .args(args)
        .arg("--cache-dir")
        .arg(cache_dir)
        .env_remove("PETRI_CACHE_MAX_SIZE")
        .output()
        .unwrap();
    let run = Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains("SECRET"), "{text}");
    }
    run
}

fn list_json(cache_dir: &Path) -> Vec<serde_json::Value> {
    let run = tool(cache_dir, &["list", "--json"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    serde_json::from_str(&run.stdout).unwrap()
}

fn row<'a>(rows: &'a [serde_json::Value], location_ends: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| {
            r["location"]
                .as_str()
                .is_some_and(|l| l.ends_with(location_ends))
        })
        .unwrap_or_else(|| panic!("no row for {location_ends}: {rows:#?}"))
}

/// Flips one byte of `file` where `needle` occurs.
fn flip_where(file: &Path, needle: &[u8]) {
    let bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the cached bytes are in the file");
    let f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.write_all_at(&[bytes[at] ^ 0xff], at as u64).unwrap();
}

#[tokio::test]
async fn list_prune_and_verify_a_real_cache_directory() {
    let server = FaultServer::start().unwrap();
    let flat = random_bytes(1, 3 * MIB);
    let vhd = random_bytes(2, 4 * MIB);
    let held = random_bytes(3, 2 * MIB);
    let id = *b"petri-tool-cache";
    server.put_blob("/images/flat.raw", flat.clone());
    server.put_blob("/images/os.vhd", fixed_vhd1_bytes(vhd.clone(), id).unwrap());
    server.put_blob("/images/held.raw", held.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");

    let flat_url = server.url("/images/flat.raw?sv=2024&sig=SECRET");
    drop(open_and_read(&cache_dir, &flat_url, BlobFormat::Flat, flat.len()).await);
    let vhd_url = server.url("/images/os.vhd");
    drop(open_and_read(&cache_dir, &vhd_url, BlobFormat::FixedVhd1, 2 * MIB).await);
    // Stays open (in use) until the end.
    let held_url = server.url("/images/held.raw");
    let held_disk = open_and_read(&cache_dir, &held_url, BlobFormat::Flat, held.len()).await;

    let rows = list_json(&cache_dir);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let r = row(&rows, "/images/flat.raw");
    assert_eq!(r["location"], server.url("/images/flat.raw"));
    let etag = server.etag("/images/flat.raw").unwrap();
    assert_eq!(r["identity"], format!("etag:{etag}"));
    assert_eq!(r["disk_size"], 3 * MIB);
    assert_eq!(r["cached_bytes"], 3 * MIB);
    assert_eq!(r["cached_percent"], 100.0);
    assert!(r["file_bytes"].as_u64().unwrap() >= 3 * MIB as u64);
    assert_eq!(
        (r["state"].as_str(), r["in_use"].as_bool()),
        (Some("ok"), Some(false))
    );
    let flat_entry = r["entry"].as_str().unwrap().to_owned();
    let r = row(&rows, "/images/os.vhd");
    assert_eq!(r["identity"], format!("vhd-id {}", hex(&id)));
    assert_eq!(r["entry"], hex(&id));
    assert_eq!(
        (r["disk_size"].as_u64(), r["cached_bytes"].as_u64()),
        (Some(4 * MIB as u64), Some(2 * MIB as u64))
    );
    assert_eq!(r["cached_percent"], 50.0);
    let vhd_entry = r["entry"].as_str().unwrap().to_owned();
    let r = row(&rows, "/images/held.raw");
    assert_eq!(
        (r["state"].as_str(), r["in_use"].as_bool()),
        (Some("in use"), Some(true))
    );
    let held_entry = r["entry"].as_str().unwrap().to_owned();

    // The table says the same for people.
    let run = tool(&cache_dir, &["list"]);
    assert!(run.ok, "{}", run.stderr);
    for needle in [
        "ENTRY",
        "LOCATION",
        "CACHED",
        &flat_entry,
        "3.0 MiB (100%)",
        "2.0 MiB (50%)",
        "in use",
    ] {
        assert!(run.stdout.contains(needle), "{needle}: {}", run.stdout);
    }

    // Every entry is sound; then one flipped byte in the cached data of
    // the flat image makes verify fail and say what to do.
    let run = tool(&cache_dir, &["verify"]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert_eq!(run.stdout.matches(": ok (").count(), 3, "{}", run.stdout);
    let flat_file = cache_dir.join(&flat_entry).join("cache.dbhd");
    flip_where(&flat_file, &flat[MIB + 4096..MIB + 4096 + 64]);
    let run = tool(&cache_dir, &["verify"]);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("{flat_entry}: DAMAGED")),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains(&format!("petri-tool cache prune --entry {flat_entry}")),
        "{}",
        run.stderr
    );

    // A damaged file kept aside: listed, and removed by any prune.
    let aside = cache_dir
        .join(&vhd_entry)
        .join("cache.dbhd.corrupt-20261204T131646Z");
    std::fs::write(&aside, vec![1u8; MIB]).unwrap();
    let rows = list_json(&cache_dir);
    assert_eq!(row(&rows, "/images/os.vhd")["state"], "corrupt-aside");
    let run = tool(&cache_dir, &["prune"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("removed {}", aside.display())),
        "{}",
        run.stdout
    );
    assert!(!aside.exists());
    assert_eq!(list_json(&cache_dir).len(), 3);

    // Old entries go with --older-than.
    std::fs::File::options()
        .write(true)
        .open(cache_dir.join(&flat_entry).join("in-use.lock"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3 * 86_400))
        .unwrap();
    let run = tool(&cache_dir, &["prune", "--older-than", "2d"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("removed entry {flat_entry} (")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("MiB (1 entry);"), "{}", run.stdout);
    assert!(!cache_dir.join(&flat_entry).exists());

    // --all spares the entry in use, and says so.
    let run = tool(&cache_dir, &["prune", "--all"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("removed entry {vhd_entry}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("kept entry {held_entry}: in use")),
        "{}",
        run.stdout
    );
    let rows = list_json(&cache_dir);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["entry"], held_entry);
    // ... and removes every image's metadata pieces, which are fetched
    // again when needed (even the open disk's: it keeps what it read).
    assert!(
        run.stdout.contains("removed image metadata"),
        "{}",
        run.stdout
    );
    let versions = std::fs::read_dir(cache_dir.join("image-metadata"))
        .unwrap()
        .count();
    assert_eq!(versions, 0);

    // Once closed, a size limit of nothing removes it.
    drop(held_disk);
    let run = tool(&cache_dir, &["prune", "--max-size", "0"]);
    assert!(run.ok, "{}", run.stderr);
    assert!(
        run.stdout.contains(&format!("removed entry {held_entry}")),
        "{}",
        run.stdout
    );
    assert!(list_json(&cache_dir).is_empty());
    let run = tool(&cache_dir, &["list"]);
    assert!(run.stdout.contains("(no entries)"), "{}", run.stdout);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bad arguments are refused with what is accepted.
#[test]
fn bad_sizes_and_durations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = tool(dir.path(), &["prune", "--max-size", "lots"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("512M"), "{}", run.stderr);
    let run = tool(dir.path(), &["prune", "--older-than", "7"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("12h"), "{}", run.stderr);
    let run = tool(dir.path(), &["prune", "--entry", "nope"]);
    assert!(!run.ok);
    assert!(run.stderr.contains("no entry nope"), "{}", run.stderr);
}

/// `petri-tool disk serve-nbd` with `PETRI_CACHE` set, until it serves (or
/// fails); then stopped with SIGINT. Returns whether it served, its
/// stdout and its stderr.
fn serve_with(
    url: &str,
    socket: &Path,
    cache_dir: &Path,
    petri_cache: &str,
) -> (bool, String, String) {
    use std::io::BufRead;
    use std::io::Read;
    let mut child = Command::new(TOOL)
        .args(["disk", "serve-nbd", url, "--socket"])
        .arg(socket)
        .arg("--cache-dir")
        .arg(cache_dir)
        .env("PETRI_CACHE", petri_cache)
        .env_remove("PETRI_CACHE_MAX_SIZE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    let mut served = false;
    loop {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        stdout.push_str(&line);
        if line.starts_with("petri-tool: stop with") {
            served = true;
            let status = Command::new("kill")
                .arg("-INT")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    out.read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.success(), served, "{stdout}{stderr}");
    (served, stdout, stderr)
}

/// `PETRI_CACHE` as `serve-nbd` applies it: with a cache directory that
/// cannot be created (a regular file is in the way), the default serves
/// uncached with one warning naming it, `required` refuses to start with
/// the reason, and `off` neither warns nor looks at the directory.
#[test]
fn petri_cache_auto_required_and_off() {
    let server = FaultServer::start().unwrap();
    server.put_blob("/images/disk.raw", random_bytes(9, MIB));
    let url = server.url("/images/disk.raw");
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let cache_dir = blocked.join("cache");
    let needle = cache_dir.display().to_string();
    let socket = dir.path().join("nbd.sock");

    let (served, stdout, stderr) = serve_with(&url, &socket, &cache_dir, "");
    assert!(served);
    let warnings: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&needle))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("no usable read cache"), "{stderr}");
    assert!(
        stdout.contains(&format!("no read cache (none usable in {needle}")),
        "{stdout}"
    );

    let (served, _, stderr) = serve_with(&url, &socket, &cache_dir, "required");
    assert!(!served);
    assert!(
        stderr.contains(&needle)
            && stderr.contains("required")
            && stderr.contains("Not a directory"),
        "{stderr}"
    );

    let (served, stdout, stderr) = serve_with(&url, &socket, &cache_dir, "off");
    assert!(served);
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(!stdout.contains("read cache"), "{stdout}");

    let (served, _, stderr) = serve_with(&url, &socket, &cache_dir, "sometimes");
    assert!(!served);
    assert!(stderr.contains("PETRI_CACHE=\"sometimes\""), "{stderr}");

    // A usable directory: the cache file is named.
    let good = dir.path().join("cache");
    let (served, stdout, _) = serve_with(&url, &socket, &good, "required");
    assert!(served);
    assert!(
        stdout.contains(&format!("read cache {}", good.display())),
        "{stdout}"
    );
}
