//! `cargo xtask guest-test download-image`: fetch test images from the
//! image store, natively (no azcopy), resumably, and only those needed.
//!
//! Position in the data flow: beside the product. The known-paths resolver
//! looks for images in `$VMM_TEST_IMAGES` (else `images` under the
//! workspace root) before it falls back to a URL; this command fills that
//! folder. It reads the same catalog (`vmm_test_images`) and the same
//! base-URL rule (`petri_artifact_resolver_openvmm_known_paths::
//! artifact_base_url`) as the resolver, and fetches with the same HTTP
//! client as the lazy disk stack (`disk_blob::HttpBlob`).
//!
//! What is downloaded: the images named with `--artifacts`; plus, with
//! `--for-tests <filter>`, the images that the selected VMM tests need as
//! local files (their `local_only` artifacts, e.g. every Hyper-V test's
//! disk), or every image they require with `--all-required`; with neither
//! option, every image of the store. Catalog entries that are built on this
//! machine (the built test guests, `Obtain::Build`) are never downloaded;
//! naming one is an error that gives its build command.
//!
//! How one file is fetched (see [`fetch`]): `<file>.part` plus a sidecar
//! `<file>.part.json`, parallel range requests, resume pinned to the
//! validators, restart from zero when the image changed, length checked
//! against `Content-Length` and the catalog, fsync and atomic rename. A
//! complete file already in place is skipped unless `--force`.
//!
//! Hidden options exist for tests only: `--no-catalog-size-check` (test
//! servers serve small files under the catalog's names),
//! `--piece-size`, `--stop-after-bytes` (a deterministic interruption),
//! `--vmm-tests-binary` (use this test binary instead of building
//! vmm_tests), `--ca-cert` (trust a test CA) and `--progress-interval-ms`.
//!
//! FUTURE: checksums in the catalog, so that a complete download is also
//! verified by content, not just by length.

mod fetch;
mod progress;
mod select;

use anyhow::Context as _;
use anyhow::Result;
use anyhow::bail;
use fetch::FetchOptions;
use fetch::Job;
use fetch::Target;
use indicatif::HumanBytes;
use petri_artifact_resolver_openvmm_known_paths::ResolverEnv;
use petri_artifact_resolver_openvmm_known_paths::artifact_base_url;
use petri_artifact_resolver_openvmm_known_paths::artifact_url;
use progress::Progress;
use std::io::IsTerminal as _;
use std::path::Path;
use std::path::PathBuf;
use vmm_test_images::KnownTestArtifacts;

/// The default piece size (bytes per range request).
const DEFAULT_PIECE_SIZE: u64 = 8 << 20;

/// Options for `cargo xtask guest-test download-image`.
#[derive(clap::Args, Debug)]
pub struct DownloadImageArgs {
    /// Images to download, by catalog name (repeat the option or separate
    /// names with commas). Without this and without --for-tests, every
    /// image of the store is downloaded (the petri test guest is built,
    /// not downloaded: `cargo xtask guest-test build-image`).
    #[arg(long, value_name = "NAME", value_delimiter = ',', num_args = 1..)]
    artifacts: Vec<KnownTestArtifacts>,

    /// Download the images that the VMM tests matching this filter (a
    /// libtest filter, e.g. `hyperv`) need as local files; images that the
    /// tests can stream lazily are left out unless --all-required.
    #[arg(long, value_name = "FILTER")]
    for_tests: Option<String>,

    /// With --for-tests: download every image the selected tests require,
    /// including those they could stream.
    #[arg(long, requires = "for_tests")]
    all_required: bool,

    /// Where the images go. Default: $VMM_TEST_IMAGES, else `images` under
    /// the workspace root (where the tests look for them).
    #[arg(long, value_name = "DIR")]
    output_folder: Option<PathBuf>,

    /// Download again even if the image is already there.
    #[arg(long)]
    force: bool,

    /// The image store: a base URL, optionally with a query (a SAS token)
    /// that is appended to every request and never printed. Default:
    /// $PETRI_ARTIFACT_BASE_URL, else the project's Azure container.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,

    /// Print what would be downloaded (and what is already there), then
    /// stop without contacting the store.
    #[arg(long)]
    dry_run: bool,

    /// Range requests in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    jobs: u16,

    /// Test option: accept a server length that differs from the catalog
    /// size (test servers serve small files under the catalog's names).
    #[arg(long, hide = true)]
    no_catalog_size_check: bool,

    /// Test option: bytes per range request.
    #[arg(long, hide = true, default_value_t = DEFAULT_PIECE_SIZE,
          value_parser = clap::value_parser!(u64).range(1..=(1 << 30)))]
    piece_size: u64,

    /// Test option: stop as if interrupted once this many bytes were
    /// fetched (the progress is kept for a resume).
    #[arg(long, hide = true)]
    stop_after_bytes: Option<u64>,

    /// Test option: the vmm_tests test binary to ask for the tests'
    /// artifacts, instead of building it.
    #[arg(long, hide = true)]
    vmm_tests_binary: Option<PathBuf>,

    /// Test option: milliseconds between plain progress lines (default
    /// 5000).
    #[arg(long, hide = true)]
    progress_interval_ms: Option<u64>,

    /// Test option: trust this extra root certificate (PEM).
    #[arg(long, hide = true)]
    ca_cert: Option<PathBuf>,
}

/// Downloads test images.
pub fn run(root: &Path, args: DownloadImageArgs) -> Result<()> {
    let env = ResolverEnv {
        workspace_root: root.to_owned(),
        ..ResolverEnv::from_process_env()
    };
    let base = match &args.base_url {
        Some(v) => artifact_base_url(Some(v)).map_err(|e| {
            anyhow::anyhow!(
                "--base-url is not a valid http(s) base URL ({}): {}",
                e.problem,
                e.value
            )
        })?,
        None => env.base_url()?,
    };
    let out_dir = match &args.output_folder {
        Some(dir) => dir.clone(),
        None => env.download_dir(),
    };

    let wanted = wanted_artifacts(root, &args)?;
    if wanted.is_empty() {
        println!("download-image: nothing to download");
        return Ok(());
    }

    // Skip complete files first, so the total counts only real work.
    let mut todo = Vec::new();
    let mut failures = Vec::new();
    for a in wanted {
        let dest = out_dir.join(a.file_name());
        match std::fs::metadata(&dest) {
            Ok(meta) if !args.force => {
                if !args.no_catalog_size_check && meta.len() != a.size() {
                    println!("download-image: {a}: FAILED");
                    failures.push(anyhow::anyhow!(
                        "{a}: {} exists with {} bytes but the catalog says {}; \
                         it is not the catalog's image (or is damaged): pass --force to replace it",
                        dest.display(),
                        meta.len(),
                        a.size()
                    ));
                    continue;
                }
                println!(
                    "download-image: {a}: {} is already there (--force downloads it again)",
                    dest.display()
                );
            }
            _ => todo.push((a, dest)),
        }
    }
    if todo.is_empty() {
        return report(failures);
    }
    if args.dry_run {
        for (a, dest) in &todo {
            println!(
                "download-image: would download {a} ({}) from {} to {}",
                HumanBytes(a.size()),
                url_redact::RedactedUrl(&artifact_url(&base, a.file_name())),
                dest.display()
            );
        }
        return report(failures);
    }

    let extra_roots = match &args.ca_cert {
        Some(p) => vec![std::fs::read(p).with_context(|| format!("reading {}", p.display()))?],
        None => Vec::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // Ctrl-C: the running download checkpoints its progress and stops.
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    runtime.spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = cancel_tx.send(true);
        }
    });
    let opts = FetchOptions {
        jobs: usize::from(args.jobs),
        piece_size: args.piece_size,
        stop_after_bytes: args.stop_after_bytes,
        extra_roots,
        cancel,
    };
    let check_size = !args.no_catalog_size_check;
    println!(
        "download-image: {} image(s), {} at most, from {} into {}",
        todo.len(),
        HumanBytes(todo.iter().map(|(a, _)| a.size()).sum()),
        url_redact::RedactedUrl(&base),
        out_dir.display()
    );
    let progress = Progress::new(
        todo.iter().map(|(a, _)| a.size()).sum(),
        std::io::stdout().is_terminal(),
        args.progress_interval_ms
            .map_or(progress::PLAIN_INTERVAL, std::time::Duration::from_millis),
    );
    for (a, dest) in todo {
        let url = artifact_url(&base, a.file_name());
        let job = Job {
            artifact: a,
            url: &url,
            target: Target { dest: dest.clone() },
            expected_size: check_size.then_some(a.size()),
        };
        match runtime.block_on(fetch::fetch(&job, &opts, &progress)) {
            Ok(done) => progress.println(&format!(
                "download-image: {a}: {} ({}) done: fetched {}{}",
                dest.display(),
                HumanBytes(done.len),
                HumanBytes(done.fetched),
                if done.resumed > 0 {
                    format!(", resumed with {} already there", HumanBytes(done.resumed))
                } else {
                    String::new()
                }
            )),
            Err(e) if e.is::<fetch::Interrupted>() => {
                progress.finish();
                return Err(e);
            }
            Err(e) => {
                progress.println(&format!("download-image: {a}: FAILED"));
                failures.push(e);
            }
        }
    }
    progress.finish();
    report(failures)
}

/// Fails with every error, if any.
fn report(mut failures: Vec<anyhow::Error>) -> Result<()> {
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        n => {
            let mut msg = format!("{n} downloads failed:");
            for e in failures {
                msg.push_str(&format!("\n- {e:#}"));
            }
            bail!(msg)
        }
    }
}

/// The images to download, in catalog order, without duplicates.
fn wanted_artifacts(root: &Path, args: &DownloadImageArgs) -> Result<Vec<KnownTestArtifacts>> {
    let mut wanted = args.artifacts.clone();
    if let Some(filter) = &args.for_tests {
        let binary = match &args.vmm_tests_binary {
            Some(b) => b.clone(),
            None => select::build_vmm_tests(root)?,
        };
        let list = select::list_required(root, &binary, filter)?;
        let sel = select::select(&list, args.all_required);
        println!(
            "download-image: tests matching {filter:?} need {} image(s) locally{}",
            sel.download.len(),
            if args.all_required {
                " (--all-required: every required image)"
            } else {
                ""
            }
        );
        for a in &sel.download {
            println!("  {a} ({}, {})", a.file_name(), HumanBytes(a.size()));
        }
        if !sel.streamable.is_empty() {
            println!(
                "  not downloaded, streamed lazily by the tests (--all-required downloads them): {}",
                sel.streamable
                    .iter()
                    .map(|a| a.cli_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !sel.built.is_empty() {
            println!(
                "  built on this machine, not downloaded (run `{}` if they are not built yet): {}",
                build_commands(&sel.built),
                sel.built
                    .iter()
                    .map(|a| a.cli_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for id in &sel.not_in_catalog {
            println!("  not a catalog image (nothing to download): {id}");
        }
        wanted.extend(sel.download);
    } else if wanted.is_empty() {
        wanted = KnownTestArtifacts::all()
            .filter(|a| a.is_downloadable())
            .collect();
    }
    wanted.sort();
    wanted.dedup();
    let built: Vec<KnownTestArtifacts> = wanted
        .iter()
        .copied()
        .filter(|a| !a.is_downloadable())
        .collect();
    if !built.is_empty() {
        bail!(
            "{} {} built on this machine, not downloaded from the image store: run `{}`",
            built
                .iter()
                .map(|a| a.cli_name())
                .collect::<Vec<_>>()
                .join(", "),
            if built.len() == 1 { "is" } else { "are" },
            build_commands(&built)
        );
    }
    Ok(wanted)
}

/// The build commands of the built guests `built` belong to, each once,
/// joined with "` and `".
fn build_commands(built: &[KnownTestArtifacts]) -> String {
    let mut commands: Vec<&str> = built
        .iter()
        .filter_map(|a| a.built_guest())
        .map(|g| g.build_command())
        .collect();
    commands.sort_unstable();
    commands.dedup();
    commands.join("` and `")
}
