//! `cargo xtask test`: the one command that runs every check and test.
//!
//! The README's quick start and CI's `.ci/run` both call exactly this, so a
//! green run here is what lands.

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use vmm_test_images::BuiltGuest;

/// Options for `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip installing missing test prerequisites.
    #[arg(long)]
    skip_setup: bool,
    /// Only run the tests (skip fmt, clippy and rustdoc).
    #[arg(long)]
    tests_only: bool,
    /// Extra arguments passed to `cargo nextest run` (e.g. a filter).
    #[arg(last = true)]
    nextest_args: Vec<String>,
}

/// One step of the test command.
struct Step {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, &'static str)>,
}

impl Step {
    fn cargo(name: &'static str, args: &[&str]) -> Step {
        Step {
            name,
            program: "cargo",
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }
}

/// Runs set-up and every check, stopping at the first failure.
pub fn run(root: &Path, args: TestArgs) -> Result<()> {
    let started = Instant::now();
    if !args.skip_setup {
        crate::setup::ensure_test_prerequisites()?;
        crate::setup::ensure_mdbook()?;
        // The QEMU tests boot the built test guests (the petri test guest
        // and the Debian guest, one cold lazy boot and one local boot of
        // the latter); build them and their prefetch lists (or find them up
        // to date) before any test runs.
        let images = std::env::var_os("VMM_TEST_IMAGES")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| root.join("images"));
        for guest in BuiltGuest::ALL {
            let t = Instant::now();
            println!("==> xtask test: {guest} ({})", images.display());
            let built = crate::guest_image::build_guest(
                root,
                &images,
                guest,
                crate::guest_image::DEFAULT_DATA_MIB,
                false,
                true,
            )
            .with_context(|| format!("building {guest}"));
            match built {
                Ok(built) => println!(
                    "==> xtask test: {guest} {} in {:.1}s ({} prefetch lists recorded)",
                    match built.outcome {
                        crate::guest_image::BuildOutcome::Built => "built",
                        crate::guest_image::BuildOutcome::UpToDate => "up to date",
                    },
                    t.elapsed().as_secs_f64(),
                    built.lists_written
                ),
                // On a developer machine (not root, say) the tests that
                // boot it skip with a printed reason instead; CI must run
                // them.
                Err(e) if !crate::is_ci() => println!(
                    "==> xtask test: {guest}: {e:#}; the tests that need what is missing \
                     will skip"
                ),
                Err(e) => return Err(e),
            }
        }
    }
    let mut steps = Vec::new();
    if !args.tests_only {
        steps.push(Step::cargo("format", &["fmt", "--all", "--", "--check"]));
        steps.push(Step::cargo(
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ));
        let mut doc = Step::cargo("rustdoc", &["doc", "--workspace", "--no-deps"]);
        doc.env.push(("RUSTDOCFLAGS", "-D warnings"));
        steps.push(doc);
        steps.push(Step {
            name: "guide",
            program: "mdbook",
            args: vec!["build".into(), "Guide".into()],
            env: Vec::new(),
        });
    }
    let profile = if crate::is_ci() { "ci" } else { "default" };
    let mut nextest = Step::cargo(
        "nextest",
        &["nextest", "run", "--workspace", "--profile", profile],
    );
    nextest.args.extend(args.nextest_args.iter().cloned());
    steps.push(nextest);
    if args.nextest_args.is_empty() {
        steps.push(Step::cargo("doc tests", &["test", "--workspace", "--doc"]));
    }

    if !args.tests_only {
        // Cheap, so before the long steps: the dependency rules, doc links
        // and the Guide's pages, links and includes.
        let t = Instant::now();
        println!("==> xtask test: lint (cargo xtask lint)");
        crate::lint::run(root).context("xtask test: step 'lint' failed")?;
        println!(
            "==> xtask test: lint passed in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    for step in &steps {
        let t = Instant::now();
        println!(
            "==> xtask test: {} ({} {})",
            step.name,
            step.program,
            step.args.join(" ")
        );
        let status = Command::new(step.program)
            .args(&step.args)
            .envs(step.env.iter().copied())
            .current_dir(root)
            .status()
            .with_context(|| format!("starting {}", step.name))?;
        if !status.success() {
            bail!("xtask test: step '{}' failed ({status})", step.name);
        }
        println!(
            "==> xtask test: {} passed in {:.1}s",
            step.name,
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "==> xtask test: all steps passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
