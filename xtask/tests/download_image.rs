//! `cargo xtask guest-test download-image` against real servers: nginx
//! (static files) and the in-test fault server. The xtask binary runs as a
//! child process, exactly as a user runs it.

mod common;

use blob_test_servers::Fault;
use blob_test_servers::FaultRule;
use blob_test_servers::FaultServer;
use blob_test_servers::NginxServer;
use blob_test_servers::Times;
use common::*;
use http::Method;
use std::path::Path;
use std::process::Child;
use std::process::Stdio;
use std::time::Duration;

/// A length that is not a multiple of the piece size.
const LEN: usize = 40 * PIECE as usize + 1234;

fn fault_server(data: &[u8]) -> (FaultServer, String) {
    let server = FaultServer::start().expect("fault server");
    server.put_blob(&format!("/vhds/{FILE}"), data.to_vec());
    let base = server.url("/vhds");
    (server, base)
}

/// The downloaded file holds exactly `data`.
fn assert_downloaded(out: &Path, data: &[u8]) {
    assert_eq!(sha(&out.join(FILE)), sha_bytes(data));
}

/// A download stopped (with an error) once `bytes` are written.
fn stopped_download(base: &str, out: &Path, bytes: u64) -> Run {
    let r = download(base, out, &["--stop-after-bytes", &bytes.to_string()]);
    assert!(!r.ok, "{}", r.text);
    r
}

/// Resumes the download recorded in `out` (no faults, counters reset):
/// it succeeds, fetches only the `LEN - done` bytes missing, and the file
/// is `data`.
fn resume_fetches_only_the_rest(
    server: &FaultServer,
    base: &str,
    out: &Path,
    data: &[u8],
    done: u64,
) -> Run {
    server.clear_faults();
    server.reset_stats();
    let r = download(base, out, &[]);
    assert!(r.ok, "{}", r.text);
    assert_eq!(server.bytes_served(), LEN as u64 - done);
    assert_downloaded(out, data);
    r
}

/// Starts a download with `jobs` parallel requests whose GETs after the
/// first `pieces` stall, and returns the process once those pieces are
/// recorded (it is still running). `output` receives its stdout and
/// stderr.
fn start_until_recorded(
    server: &FaultServer,
    base: &str,
    out: &Path,
    jobs: &str,
    pieces: u32,
    output: fn() -> Stdio,
) -> Child {
    server.add_fault(
        FaultRule::new(
            Fault::StallBody {
                after: Some(0),
                duration: Duration::from_secs(600),
            },
            Times::Always,
        )
        .method(Method::GET)
        .skip(pieces),
    );
    let mut cmd = download_cmd();
    let mut args = small_args(base, out);
    let at = args.iter().position(|a| a == "--jobs").unwrap();
    args[at + 1] = jobs.into();
    cmd.args(args)
        .args(["--artifacts", NAME])
        .stdout(output())
        .stderr(output());
    let mut child = cmd.spawn().unwrap();
    wait_for_recorded(out, u64::from(pieces) * PIECE, &mut child);
    child
}

#[test]
fn full_download_from_nginx_equals_the_source_and_is_skipped_next_time() {
    let Some(_) = blob_test_servers::require_tool("nginx") else {
        return;
    };
    let src = tempfile::tempdir().unwrap();
    let data = image(1, LEN);
    std::fs::write(src.path().join(FILE), &data).unwrap();
    let nginx = NginxServer::serve_dir(src.path()).unwrap();
    let out = tempfile::tempdir().unwrap();

    let r = download(&nginx.base_url(), out.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert_downloaded(out.path(), &data);
    // Only the final file is left: no .part, no sidecar.
    assert_eq!(files_in(out.path()), [FILE]);
    // 1 HEAD + one GET per piece.
    let requests = nginx.request_count().unwrap();
    assert_eq!(requests, 1 + (LEN as u64).div_ceil(PIECE), "{}", r.text);

    // A complete file is skipped without any request.
    let r = download(&nginx.base_url(), out.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert!(r.text.contains("already there"), "{}", r.text);
    assert_eq!(nginx.request_count().unwrap(), requests);

    // --force downloads it again.
    let r = download(&nginx.base_url(), out.path(), &["--force"]);
    assert!(r.ok, "{}", r.text);
    assert!(nginx.request_count().unwrap() > requests);
    assert_downloaded(out.path(), &data);
}

#[test]
fn a_size_that_differs_from_the_catalog_is_an_error_naming_both() {
    let data = image(2, 4096);
    let (_server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    // The catalog's size is checked (not the tests' small options).
    let checked_download = || {
        let mut cmd = download_cmd();
        cmd.args(["--base-url", &base, "--output-folder"])
            .arg(out.path())
            .args(["--artifacts", NAME]);
        run(&mut cmd)
    };
    let r = checked_download();
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains(NAME), "{}", r.text);
    assert!(r.text.contains("4096"), "{}", r.text);
    assert!(r.text.contains("224494080"), "{}", r.text);
    assert!(!out.path().join(FILE).exists());

    // An existing file of the wrong size is not silently accepted either.
    std::fs::write(out.path().join(FILE), b"short").unwrap();
    let r = checked_download();
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains("--force"), "{}", r.text);
}

#[test]
fn an_interrupted_download_resumes_and_fetches_only_the_rest() {
    let data = image(3, LEN);
    let (server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();

    let r = stopped_download(&base, out.path(), 10 * PIECE);
    assert!(r.text.contains("resumes"), "{}", r.text);
    assert!(!out.path().join(FILE).exists());
    let done = recorded_bytes(out.path());
    assert!(done >= 10 * PIECE && done < LEN as u64, "{done}");

    let r = resume_fetches_only_the_rest(&server, &base, out.path(), &data, done);
    assert!(r.text.contains("resumed"), "{}", r.text);
    assert_eq!(files_in(out.path()), [FILE]);
}

#[test]
fn a_killed_download_resumes_and_fetches_only_the_rest() {
    let data = image(4, LEN);
    let (server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    // The first 6 GETs go through; every later one stalls, so the process
    // is killed with exactly 6 pieces on disk.
    let mut child = start_until_recorded(&server, &base, out.path(), "2", 6, Stdio::null);
    child.kill().unwrap();
    child.wait().unwrap();
    let done = recorded_bytes(out.path());
    assert_eq!(done, 6 * PIECE);

    resume_fetches_only_the_rest(&server, &base, out.path(), &data, done);
}

#[test]
fn an_image_replaced_between_runs_restarts_from_zero() {
    let data = image(5, LEN);
    let (server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    stopped_download(&base, out.path(), 8 * PIECE);
    assert!(recorded_bytes(out.path()) > 0);

    let new = image(6, LEN - 4096);
    server.put_blob(&format!("/vhds/{FILE}"), new.clone());
    server.reset_stats();
    let r = download(&base, out.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert!(r.text.contains("starting from zero"), "{}", r.text);
    assert_eq!(server.bytes_served(), new.len() as u64);
    assert_downloaded(out.path(), &new);
}

#[test]
fn an_image_that_changes_during_the_resume_restarts_from_zero() {
    let data = image(7, LEN);
    let (server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    stopped_download(&base, out.path(), 8 * PIECE);

    // The resume's HEAD still sees the old version; its first GET replaces
    // the image, so that GET (pinned with If-Match) fails as changed.
    let new = image(8, LEN);
    server.add_fault(
        FaultRule::new(Fault::ReplaceContent(new.clone().into()), Times::Next(1))
            .method(Method::GET),
    );
    server.reset_stats();
    let r = download(&base, out.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert!(r.text.contains("changed on the server"), "{}", r.text);
    assert_downloaded(out.path(), &new);
    // The whole new image was fetched after the restart.
    assert!(server.bytes_served() >= new.len() as u64);
}

#[test]
fn not_found_names_the_artifact_url_and_base_url_advice() {
    let server = FaultServer::start().unwrap();
    let out = tempfile::tempdir().unwrap();
    let base = server.url("/missing");
    let r = download(&base, out.path(), &[]);
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains(NAME), "{}", r.text);
    assert!(r.text.contains(&format!("{base}/{FILE}")), "{}", r.text);
    assert!(r.text.contains("404"), "{}", r.text);
    assert!(r.text.contains("check the base URL"), "{}", r.text);
}

#[test]
fn forbidden_says_check_the_sas_token_and_never_prints_it() {
    let data = image(9, 3 * PIECE as usize);
    let (server, base) = fault_server(&data);
    server.set_required_query_token(Some("sig=GOODTOKEN"));
    let out = tempfile::tempdir().unwrap();

    let bad = format!("{base}?sv=2024&sig=BADSECRET");
    let r = download(&bad, out.path(), &[]);
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains("403"), "{}", r.text);
    assert!(r.text.contains("SAS token"), "{}", r.text);
    assert!(r.text.contains(&format!("{FILE}?<redacted>")), "{}", r.text);
    assert!(!r.text.contains("BADSECRET"), "{}", r.text);

    let good = format!("{base}?sv=2024&sig=GOODTOKEN");
    let r = stopped_download(&good, out.path(), 1);
    assert!(!r.text.contains("GOODTOKEN"), "{}", r.text);
    // The sidecar keeps the URL without its query.
    let state = std::fs::read_to_string(sidecar(out.path())).unwrap();
    assert!(!state.contains("GOODTOKEN"), "{state}");
    assert!(state.contains(&format!("/vhds/{FILE}\"")), "{state}");

    let r = download(&good, out.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert!(!r.text.contains("GOODTOKEN"), "{}", r.text);
    assert_downloaded(out.path(), &data);
    // Every request carried the token.
    assert!(
        server
            .requests()
            .iter()
            .filter(|q| q.path().ends_with(FILE))
            .all(|q| q.path_and_query.contains("sig=GOODTOKEN")
                || (q.path_and_query.contains("sig=BADSECRET") && q.status == Some(403))),
    );
}

#[test]
fn an_invalid_base_url_is_rejected_redacted() {
    let out = tempfile::tempdir().unwrap();
    let r = download("ftp://h/x?sig=SECRET", out.path(), &[]);
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains("--base-url"), "{}", r.text);
    assert!(!r.text.contains("SECRET"), "{}", r.text);
}

#[test]
fn downloads_run_jobs_range_requests_in_parallel() {
    let data = image(10, LEN);
    let (server, base) = fault_server(&data);
    // Each request takes a while, so the client's parallel requests overlap.
    server.set_latency(Duration::from_millis(30));
    let out = tempfile::tempdir().unwrap();
    let r = download(&base, out.path(), &[]);
    assert!(r.ok, "{}", r.text);
    assert_downloaded(out.path(), &data);
    assert_eq!(server.max_in_flight(), 4, "--jobs 4");
}

#[test]
fn https_with_a_trusted_ca_works_and_an_untrusted_one_says_tls() {
    let data = image(11, 5 * PIECE as usize + 7);
    let server = FaultServer::start_tls().unwrap();
    server.put_blob(&format!("/vhds/{FILE}"), data.clone());
    let base = server.url("/vhds");
    assert!(base.starts_with("https://"), "{base}");
    let out = tempfile::tempdir().unwrap();

    let r = download(&base, out.path(), &[]);
    assert!(!r.ok, "{}", r.text);
    assert!(r.text.contains("TLS"), "{}", r.text);

    let ca = out.path().join("ca.pem");
    std::fs::write(&ca, server.ca_cert_pem().unwrap()).unwrap();
    let r = download(&base, out.path(), &["--ca-cert", &ca.display().to_string()]);
    assert!(r.ok, "{}", r.text);
    assert_downloaded(out.path(), &data);
}

#[test]
fn dry_run_contacts_nothing_and_writes_nothing() {
    let data = image(12, 4096);
    let (server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    let r = download(&base, out.path(), &["--dry-run"]);
    assert!(r.ok, "{}", r.text);
    assert!(
        r.text.contains("would download Alpine323X64Vhd"),
        "{}",
        r.text
    );
    assert_eq!(server.request_count(), 0);
    assert!(files_in(out.path()).is_empty());
}

#[test]
fn ctrl_c_keeps_the_progress_and_says_how_to_resume() {
    let data = image(13, LEN);
    let (server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    let child = start_until_recorded(&server, &base, out.path(), "1", 5, Stdio::piped);
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("interrupted"), "{text}");
    assert!(text.contains("resumes"), "{text}");
    assert_eq!(recorded_bytes(out.path()), 5 * PIECE);

    resume_fetches_only_the_rest(&server, &base, out.path(), &data, 5 * PIECE);
}

#[test]
fn without_a_terminal_progress_is_plain_lines() {
    let data = image(14, LEN);
    let (_server, base) = fault_server(&data);
    let out = tempfile::tempdir().unwrap();
    let r = download(&base, out.path(), &["--progress-interval-ms", "0"]);
    assert!(r.ok, "{}", r.text);
    // Output is captured (not a terminal): no bar escape codes, and one
    // plain line per piece with bytes, percent, rate, ETA and the total.
    assert!(!r.text.contains('\u{1b}'), "{}", r.text);
    let lines: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.starts_with(&format!("download-image: {NAME}: ")) && l.contains("%)"))
        .collect();
    assert_eq!(
        lines.len() as u64,
        (LEN as u64).div_ceil(PIECE),
        "{}",
        r.text
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("/s, ETA") && l.contains("total"))
    );
    assert!(lines.last().unwrap().contains("(100%)"), "{}", r.text);
}
