//! `cargo xtask guest-test run [--guest petri|debian|all]`: the main job.
//! Boots built test guests under QEMU from lazily fetched images, twice
//! (cold cache, then warm), and prints what each test fetched.
//!
//! Position in the data flow: this sits above everything. It prepares a
//! machine (QEMU, the guests' Debian packages, cargo-nextest), builds the
//! selected test guests ([`crate::guest_image`]: the small petri test guest
//! by default, the Debian 12 systemd guest with `--guest debian`, both
//! with `--guest all`), hosts the images over HTTP with the embedded
//! `blob_server` on 127.0.0.1 (or uses `--base-url`), and runs the QEMU
//! vmm_tests of those guests ([`guest_filterset`]) through
//! `cargo nextest run -p vmm_tests` with:
//! - `PETRI_ARTIFACT_BASE_URL` = the store,
//! - `PETRI_CACHE_DIR` = the read cache (emptied before the cold run, kept
//!   for the warm run),
//! - `VMM_TEST_IMAGES` = a folder holding only the local-only files (the
//!   kernel and initramfs), so the disks resolve to URLs and stream,
//! - `TEST_OUTPUT_PATH` = a fresh folder per run, where the QEMU backend
//!   leaves each test's `disk-counters.json`;
//!
//! and `PETRI_REMOTE_ARTIFACTS` removed. It then reads the counters and
//! nextest's per-test times and prints one table row per test (see
//! [`report`]), and writes the same data to `summary.json` in its work
//! folder (`<target>/guest-test-run/`).
//!
//! Invariants:
//! - The store URL is printed only redacted (a SAS token stays secret).
//! - The embedded server listens on loopback only and serves only the
//!   images folder.
//! - A run whose disks would be found locally (in the `VMM_TEST_IMAGES`
//!   folder the tests get, which replaces `<workspace>/images`) is refused
//!   up front unless `--allow-local`; the table then says `local` for such disks,
//!   never claiming streaming that did not happen.
//! - Only folders this command owns are emptied; a user's `--cache-dir`
//!   is emptied only with `--clear-cache`.
//!
//! DEVNOTE: the per-test times are nextest's wall times (VM boot plus the
//! test's own work); without a nextest line for a test, the table falls
//! back to the VMs' run time, marked `vm`.

mod report;

use crate::guest_image::GuestChoice;
use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use blob_server::BlobServer;
use blob_server::BlobServerStats;
use petri_artifact_resolver_openvmm_known_paths::BASE_URL_ENV;
use petri_artifact_resolver_openvmm_known_paths::IMAGES_DIR_ENV;
use petri_artifact_resolver_openvmm_known_paths::ResolverEnv;
use petri_artifact_resolver_openvmm_known_paths::artifact_base_url;
use report::Phase;
use std::io::BufRead;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;
use url_redact::redact_url;
use vmm_test_images::BuiltGuest;
use vmm_test_images::KnownTestArtifacts;

/// `petri::cache_dir::PETRI_CACHE_DIR` (xtask does not link petri).
const PETRI_CACHE_DIR_ENV: &str = "PETRI_CACHE_DIR";
/// `disk_open::prefetch`'s switch (xtask does not link disk_open).
const PETRI_PREFETCH_ENV: &str = "PETRI_PREFETCH";
/// The QEMU binary the backend looks for on `PATH`.
const QEMU_BINARY: &str = "qemu-system-x86_64";
/// The Debian package that provides it.
const QEMU_PACKAGE: &str = "qemu-system-x86";

/// Options for `cargo xtask guest-test run`.
#[derive(clap::Args)]
pub struct RunArgs {
    /// The image store to stream from (http or https; a query such as a SAS
    /// token is kept and never printed) [default: an embedded blob server on
    /// 127.0.0.1 hosting --images-dir].
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// The persistent read cache [default: target/guest-test-run/cache,
    /// emptied before the cold run]. A given folder must be empty or
    /// missing, unless --clear-cache.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Empty --cache-dir before the cold run.
    #[arg(long)]
    clear_cache: bool,
    /// Where the test guests are built and hosted from [default:
    /// target/guest-test-run/images]. The tests get their own
    /// VMM_TEST_IMAGES folder, so a copy here is still streamed.
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Which guests' tests to run: the small petri test guest, the Debian
    /// 12 systemd guest (built with mmdebstrap: needs root), or both.
    #[arg(long, value_enum, default_value_t = GuestChoice::Petri)]
    guest: GuestChoice,
    /// MiB of data files on the petri test guest's root disk, if it must be
    /// built.
    #[arg(long, value_name = "N", default_value_t = crate::guest_image::DEFAULT_DATA_MIB,
          value_parser = clap::value_parser!(u64).range(1..=65536))]
    data_mib: u64,
    /// The nextest filter selecting the tests (a substring of test names).
    #[arg(long, value_name = "FILTER", default_value = "qemu_")]
    filter: String,
    /// Run only the cold run (no warm run).
    #[arg(long)]
    cold_only: bool,
    /// Run even if the resolver would find the disks in a local images
    /// folder (they are then read locally, and the table says `local`).
    #[arg(long)]
    allow_local: bool,
    /// Simulated network latency of the embedded store: milliseconds
    /// before each request is answered (one round trip to a far-away
    /// store; ~50 ms is an Azure store seen from a CI runner).
    #[arg(long, value_name = "MS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    latency_ms: u64,
    /// Milliseconds each new connection to the embedded store waits before
    /// its first request (TCP and TLS handshakes) [default: twice
    /// --latency-ms].
    #[arg(long, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    connection_latency_ms: Option<u64>,
    /// Run the tests with PETRI_PREFETCH=0: cold boots do not replay the
    /// images' prefetch lists (to compare with and without).
    #[arg(long)]
    no_prefetch: bool,
    /// Do not record the built guests' prefetch lists (`<disk>.prefetch`
    /// in --images-dir, one boot each; the store serves them).
    #[arg(long)]
    no_prefetch_lists: bool,
    /// Extra arguments for `cargo nextest run` (after `--`).
    #[arg(last = true, value_name = "NEXTEST_ARGS")]
    nextest_args: Vec<String>,
}

/// The store the tests stream from.
enum Store {
    /// The embedded server (with its runtime, which must outlive it).
    Embedded {
        runtime: tokio::runtime::Runtime,
        server: BlobServer,
    },
    /// A user-given base URL (normalised, may hold a secret query).
    External(String),
}

/// Serves `images` with the workspace's blob server on 127.0.0.1 (a free
/// port), on a runtime of its own that must outlive the server.
pub(crate) fn serve_images(
    images: &Path,
    options: blob_server::BlobServerOptions,
) -> Result<(tokio::runtime::Runtime, BlobServer)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the blob server's runtime")?;
    let server = runtime
        .block_on(BlobServer::serve_dir_with(
            images,
            (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            options,
        ))
        .with_context(|| format!("serving {}", images.display()))?;
    Ok((runtime, server))
}

impl Store {
    fn base_url(&self) -> String {
        match self {
            Store::Embedded { server, .. } => server.base_url(),
            Store::External(url) => url.clone(),
        }
    }

    fn stats(&self) -> Option<BlobServerStats> {
        match self {
            Store::Embedded { server, .. } => Some(server.stats()),
            Store::External(_) => None,
        }
    }
}

/// One nextest run's outcome.
struct RunOutcome {
    phase: Phase,
    success: bool,
    server: Option<BlobServerStats>,
}

/// Runs the command.
pub fn run(root: &Path, args: RunArgs) -> Result<()> {
    let work = crate::target_dir(root).join("guest-test-run");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    // 1. What the job needs on this machine.
    ensure_qemu()?;
    ensure_nextest(root)?;

    // 2. Refuse early (before a long build) if the guests' disks would
    // resolve locally anyway.
    let guests = args.guest.guests();
    let local = work.join("local-images");
    remove_dir_if_exists(&local)?;
    check_streaming(root, &local, &guest_disks(&guests), args.allow_local)?;

    // 3. The test guests.
    let images = match &args.images_dir {
        Some(d) => root.join(d),
        None => work.join("images"),
    };
    for guest in &guests {
        let started = Instant::now();
        let built = crate::guest_image::build_guest(
            root,
            &images,
            *guest,
            args.data_mib,
            false,
            !args.no_prefetch_lists,
        )?;
        println!(
            "guest-test run: {guest} {} in {} ({:.1} s; kernel {}; {} prefetch lists recorded)",
            if built.outcome == crate::guest_image::BuildOutcome::Built {
                "built"
            } else {
                "up to date"
            },
            images.display(),
            started.elapsed().as_secs_f64(),
            built.kernel_version,
            built.lists_written,
        );
    }

    // 4. The local folder: local-only files, never the streamed disks.
    let streamed = prepare_local_images(&images, &local)?;
    check_streaming(root, &local, &streamed, args.allow_local)?;

    // 5. The cache.
    let cache = prepare_cache(&work, args.cache_dir.as_deref(), args.clear_cache, root)?;

    // 6. The store.
    let latency = blob_server::Latency {
        per_request: Duration::from_millis(args.latency_ms),
        per_connection: Duration::from_millis(
            args.connection_latency_ms.unwrap_or(2 * args.latency_ms),
        ),
    };
    let store = match &args.base_url {
        Some(_) if latency != blob_server::Latency::default() => bail!(
            "--latency-ms and --connection-latency-ms apply to the embedded store only; \
             leave out --base-url to use it"
        ),
        Some(url) => Store::External(artifact_base_url(Some(url)).context("checking --base-url")?),
        None => {
            let (runtime, server) =
                serve_images(&images, blob_server::BlobServerOptions { latency })?;
            Store::Embedded { runtime, server }
        }
    };
    let base_url = store.base_url();
    println!(
        "guest-test run: store {} ({}), read cache {}, local images {}{}",
        redact_url(&base_url),
        match &store {
            Store::Embedded { .. } => format!(
                "embedded blob server hosting {}, {} ms per request, {} ms per new connection",
                images.display(),
                latency.per_request.as_millis(),
                latency.per_connection.as_millis()
            ),
            Store::External(_) => "--base-url".to_owned(),
        },
        cache.display(),
        local.display(),
        if args.no_prefetch {
            ", prefetch lists not replayed (PETRI_PREFETCH=0)"
        } else {
            ""
        }
    );

    // 7. Build the tests once, so the runs below time only the tests.
    let status = Command::new("cargo")
        .args(["nextest", "run", "-p", "vmm_tests", "--no-run"])
        .current_dir(root)
        .status()
        .context("starting cargo nextest")?;
    if !status.success() {
        bail!("building the vmm_tests failed ({status})");
    }

    // 8. Cold, then warm.
    let filterset = guest_filterset(&guests);
    let env = TestEnv {
        root,
        base_url: &base_url,
        cache: &cache,
        local: &local,
        filter: &args.filter,
        filterset: filterset.as_deref(),
        extra: &args.nextest_args,
        no_prefetch: args.no_prefetch,
    };
    let cold = run_phase(&env, &store, &work.join("cold"), "cold")?;
    let warm = if args.cold_only {
        None
    } else {
        Some(run_phase(&env, &store, &work.join("warm"), "warm")?)
    };

    if let Store::Embedded { runtime, server } = store {
        runtime.block_on(server.shutdown());
    }

    // 9. The table.
    let empty = Phase::default();
    let warm_phase = warm.as_ref().map(|w| &w.phase).unwrap_or(&empty);
    println!();
    println!(
        "guest-test run: per-test results (time in seconds; fetched = bytes read from the store)"
    );
    print!("{}", report::render_table(&cold.phase, warm_phase));
    for (name, r) in std::iter::once(("cold", &cold)).chain(warm.iter().map(|w| ("warm", w))) {
        if let Some(s) = r.server {
            println!(
                "store, {name} run: {} requests ({} HEAD, {} range, {} full), {} sent, {} connections",
                s.requests,
                s.head_requests,
                s.range_requests,
                s.full_requests,
                report::format_bytes(s.bytes_sent),
                s.connections
            );
        }
    }
    if let Some(s) = cold.server
        && s.requests == 0
    {
        println!(
            "guest-test run: note: no test read from the embedded store; the remote rows \
             above (if any) streamed from stores of their own, and `local` rows read \
             local files"
        );
    }
    write_summary(&work.join("summary.json"), &cold, warm.as_ref())?;
    println!(
        "guest-test run: summary in {}",
        work.join("summary.json").display()
    );

    let failed: Vec<&str> = std::iter::once(("cold", &cold))
        .chain(warm.iter().map(|w| ("warm", w)))
        .filter(|(_, r)| !r.success)
        .map(|(n, _)| n)
        .collect();
    if !failed.is_empty() {
        bail!(
            "tests failed in the {} run(s); logs in {}",
            failed.join(" and "),
            work.display()
        );
    }
    if cold.phase.totals.is_empty() {
        bail!(
            "no test reported disk counters: does the filter `{}` select QEMU tests, \
             and did they run (not ignored)?",
            args.filter
        );
    }
    Ok(())
}

struct TestEnv<'a> {
    root: &'a Path,
    base_url: &'a str,
    cache: &'a Path,
    local: &'a Path,
    filter: &'a str,
    /// The nextest filterset selecting the chosen guests' tests.
    filterset: Option<&'a str>,
    extra: &'a [String],
    /// Run the tests with `PETRI_PREFETCH=0`.
    no_prefetch: bool,
}

/// One nextest run with the job's environment; `out` becomes the tests'
/// output root (emptied first).
fn run_phase(env: &TestEnv<'_>, store: &Store, out: &Path, name: &str) -> Result<RunOutcome> {
    remove_dir_if_exists(out)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let profile = if crate::is_ci() { "ci" } else { "default" };
    println!(
        "==> guest-test run: {name} run (test output in {})",
        out.display()
    );
    let before = store.stats();
    let mut child = Command::new("cargo")
        .args([
            "nextest",
            "run",
            "-p",
            "vmm_tests",
            "--no-fail-fast",
            "--color",
            "never",
            "--profile",
            profile,
            env.filter,
        ])
        .args(env.filterset.iter().flat_map(|f| ["-E", f]))
        .args(env.extra)
        .current_dir(env.root)
        .env(BASE_URL_ENV, env.base_url)
        .env(PETRI_CACHE_DIR_ENV, env.cache)
        .env(IMAGES_DIR_ENV, env.local)
        .env(petri_artifacts_common::TEST_OUTPUT_PATH_ENV, out)
        .env_remove(petri_artifacts_core::RemoteOverride::ENV_VAR)
        .envs(env.no_prefetch.then_some((PETRI_PREFETCH_ENV, "0")))
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cargo nextest")?;
    // nextest reports on stderr: pass it through and keep the status lines.
    let mut phase = Phase::default();
    if let Some(stderr) = child.stderr.take() {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.context("reading nextest's output")?;
            eprintln!("{line}");
            if let Some(s) = report::parse_nextest_status(&line) {
                phase.statuses.insert(s.test.clone(), s);
            }
        }
    }
    let status = child.wait().context("waiting for cargo nextest")?;
    phase.reports = report::collect_reports(out)?;
    phase.totals = report::aggregate(&phase.reports);
    let server = match (before, store.stats()) {
        (Some(b), Some(a)) => Some(stats_delta(&b, &a)),
        _ => None,
    };
    Ok(RunOutcome {
        phase,
        success: status.success(),
        server,
    })
}

fn stats_delta(b: &BlobServerStats, a: &BlobServerStats) -> BlobServerStats {
    BlobServerStats {
        connections: a.connections - b.connections,
        requests: a.requests - b.requests,
        head_requests: a.head_requests - b.head_requests,
        range_requests: a.range_requests - b.range_requests,
        full_requests: a.full_requests - b.full_requests,
        not_modified: a.not_modified - b.not_modified,
        precondition_failed: a.precondition_failed - b.precondition_failed,
        range_not_satisfiable: a.range_not_satisfiable - b.range_not_satisfiable,
        errors: a.errors - b.errors,
        bytes_sent: a.bytes_sent - b.bytes_sent,
        delayed_requests: a.delayed_requests - b.delayed_requests,
        delayed_connections: a.delayed_connections - b.delayed_connections,
    }
}

/// Fills `local` with links to (or copies of) the catalog's local-only
/// files found in `images`; returns the remote-capable files there (the
/// ones that must stream).
fn prepare_local_images(images: &Path, local: &Path) -> Result<Vec<KnownTestArtifacts>> {
    remove_dir_if_exists(local)?;
    std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
    let mut streamed = Vec::new();
    for a in KnownTestArtifacts::all() {
        let src = images.join(a.file_name());
        if !src.is_file() {
            continue;
        }
        if a.remote_capable() {
            streamed.push(a);
            continue;
        }
        let dst = local.join(a.file_name());
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    if streamed.is_empty() {
        bail!(
            "{} holds no remote-capable test image: nothing would stream",
            images.display()
        );
    }
    Ok(streamed)
}

/// The root disks of `guests` in the catalog: the files that must stream.
fn guest_disks(guests: &[BuiltGuest]) -> Vec<KnownTestArtifacts> {
    guests
        .iter()
        .flat_map(|g| g.files())
        .filter(|a| a.remote_capable())
        .collect()
}

/// The nextest filterset selecting the tests of `guests`, `None` for all.
///
/// Which guest a test boots is in its name: the `#[vmm_test]` config names
/// the root disk (`qemu_linux_direct_x64_debian_12_x64`); a config naming
/// no built guest's disk (a bare `qemu_linux_direct_x64`) boots the petri
/// test guest. So a guest other than the petri test guest owns the tests
/// whose names contain one of its root disks' macro names, and the petri
/// test guest owns the rest.
fn guest_filterset(guests: &[BuiltGuest]) -> Option<String> {
    if BuiltGuest::ALL.iter().all(|g| guests.contains(g)) {
        return None;
    }
    let names = |g: BuiltGuest| -> Vec<String> {
        g.files()
            .filter(|a| a.remote_capable())
            .map(|a| format!("test(~{})", a.macro_name()))
            .collect()
    };
    let others: Vec<String> = BuiltGuest::ALL
        .iter()
        .filter(|g| **g != BuiltGuest::PetriTestGuest)
        .flat_map(|g| names(*g))
        .collect();
    let mut parts: Vec<String> = Vec::new();
    for g in guests {
        match g {
            BuiltGuest::PetriTestGuest => parts.push(format!("not ({})", others.join(" | "))),
            other => parts.push(names(*other).join(" | ")),
        }
    }
    Some(parts.join(" | "))
}

/// [`refuse_local_copies`], or only a warning with `--allow-local`.
fn check_streaming(
    root: &Path,
    local: &Path,
    streamed: &[KnownTestArtifacts],
    allow_local: bool,
) -> Result<()> {
    if let Err(err) = refuse_local_copies(root, local, streamed) {
        if !allow_local {
            bail!("{err:#}, or pass --allow-local to run anyway");
        }
        println!("guest-test run: warning (--allow-local): {err:#}");
    }
    Ok(())
}

/// Fails if the resolver, with `VMM_TEST_IMAGES=local`, would find any of
/// `streamed` on disk.
fn refuse_local_copies(root: &Path, local: &Path, streamed: &[KnownTestArtifacts]) -> Result<()> {
    let mut env = ResolverEnv::with_workspace_root(root);
    env.images_dir = Some(local.to_owned());
    let found: Vec<String> = streamed
        .iter()
        .filter_map(|a| env.find_local(*a).ok())
        .map(|p| p.display().to_string())
        .collect();
    if !found.is_empty() {
        bail!(
            "the test guest's disks would be read locally instead of streaming: {} \
             (the resolver searches the VMM_TEST_IMAGES folder); move them out of \
             that folder (this command builds and hosts its own copy in \
             target/guest-test-run/images)",
            found.join(", ")
        );
    }
    Ok(())
}

/// The read cache folder, empty.
fn prepare_cache(work: &Path, given: Option<&Path>, clear: bool, root: &Path) -> Result<PathBuf> {
    let Some(dir) = given else {
        let dir = work.join("cache");
        remove_dir_if_exists(&dir)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        return Ok(dir);
    };
    let dir = root.join(dir);
    let non_empty = std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some());
    if non_empty {
        if !clear {
            bail!(
                "the cache folder {} is not empty, so the first run would not be cold; \
                 pass --clear-cache to empty it, or name an empty folder",
                dir.display()
            );
        }
        remove_dir_if_exists(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Removes `dir` and everything in it; a missing `dir` is fine.
pub(crate) fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// QEMU, installed with apt-get when missing and running as root.
fn ensure_qemu() -> Result<()> {
    if std::env::var_os("PETRI_QEMU").is_some() || on_path(QEMU_BINARY) {
        return Ok(());
    }
    if !running_as_root() {
        bail!("{QEMU_BINARY} is missing; install it with: sudo apt-get install -y {QEMU_PACKAGE}");
    }
    crate::setup::apt_install(&[QEMU_PACKAGE])?;
    if !on_path(QEMU_BINARY) {
        bail!("installed {QEMU_PACKAGE} but {QEMU_BINARY} is still not on PATH");
    }
    Ok(())
}

/// cargo-nextest, installed with `cargo install` when missing.
fn ensure_nextest(root: &Path) -> Result<()> {
    crate::setup::cargo_install_if_missing(
        &["cargo", "nextest", "--version"],
        Some(root),
        "cargo-nextest",
    )
}

/// Writes the runs' per-test data as JSON.
fn write_summary(path: &Path, cold: &RunOutcome, warm: Option<&RunOutcome>) -> Result<()> {
    let phase_json = |r: &RunOutcome| {
        let tests: serde_json::Map<String, serde_json::Value> = r
            .phase
            .totals
            .iter()
            .map(|(name, t)| {
                let secs = r.phase.statuses.get(name).map(|s| s.secs);
                let status = r.phase.statuses.get(name).map(|s| s.status.clone());
                (
                    name.clone(),
                    serde_json::json!({ "totals": t, "secs": secs, "status": status }),
                )
            })
            .collect();
        serde_json::json!({
            "success": r.success,
            "tests": tests,
            "reports": r.phase.reports,
            "store_requests": r.server.map(|s| s.requests),
            "store_bytes_sent": r.server.map(|s| s.bytes_sent),
        })
    };
    let json = serde_json::json!({
        "cold": phase_json(cold),
        "warm": warm.map(phase_json),
    });
    std::fs::write(path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests;
