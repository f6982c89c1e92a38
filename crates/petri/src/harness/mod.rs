//! The test harness: registration, listing, artifact collection and
//! running, on top of `libtest-mimic`.
//!
//! Test cases are registered with [`inventory`] ([`TestCaseRegistration`],
//! usually by the `#[vmm_test]` macro) and run by [`test_main`], which a
//! `harness = false` test target calls from `main`. It speaks the libtest
//! command line (`--list`, `--format terse`, `--exact`, `--ignored`,
//! `--include-ignored`, `--skip`, filters), so it works under `cargo test`
//! and `cargo nextest run`, plus one option of its own:
//! `--list-required-artifacts` prints the [`ArtifactListOutput`] JSON of the
//! selected tests (filters apply; ignored tests are included, because a
//! tool preparing a machine for them needs to know).
//!
//! Phases of one test: host check (unsupported host -> ignored with the
//! reason), collecting (the requirement closure against a collector, with
//! the case's remote access policy), resolution (the caller's resolve
//! function; its error text is reported intact), creating the log
//! directory, resolving (the same closure again), and the run function,
//! with panics caught. Listing runs nothing but the collecting phase.
//!
//! Unstable tests (`unstable(reason)`) fail normally; with
//! `PETRI_IGNORE_UNSTABLE_FAILURES` set (to anything but empty, `0` or
//! `false`), their failures are reported as ignored with the failure text.

use crate::MachineArch;
use crate::backend::HostSupport;
use crate::backend::PetriVmBuilder;
use crate::backend::PetriVmmBackend;
use crate::vm::Firmware;
use anyhow::Context as _;
use libtest_mimic::Arguments;
use libtest_mimic::Completion;
use libtest_mimic::Failed;
use libtest_mimic::Trial;
use petri_artifacts_common::artifacts::TEST_LOG_DIRECTORY;
use petri_artifacts_core::ArtifactListOutput;
use petri_artifacts_core::ArtifactResolver;
use petri_artifacts_core::RemoteAccess;
use petri_artifacts_core::TestArtifactRequirements;
use petri_artifacts_core::TestArtifacts;
use std::ffi::OsString;
use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

/// The harness's own command-line flag.
pub const LIST_REQUIRED_ARTIFACTS_FLAG: &str = "--list-required-artifacts";

/// The variable that tolerates failures of unstable tests.
pub const PETRI_IGNORE_UNSTABLE_FAILURES: &str = "PETRI_IGNORE_UNSTABLE_FAILURES";

/// An error a test returns to be reported as ignored, with `reason`,
/// instead of failed.
///
/// For tests that need something this machine may lack and that only the
/// test itself can check (for example the petri test guest images, built
/// by `cargo xtask guest-test build-image`). Under `CI=true` a test should
/// fail instead of skipping; [`SkipTest::or_fail_under_ci`] applies that
/// rule.
#[derive(Debug, Clone, thiserror::Error)]
#[error("skipped: {reason}")]
pub struct SkipTest {
    /// Why the test did not run.
    pub reason: String,
}

impl SkipTest {
    /// A skip with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// A skip with `reason`, unless under CI ([`ci_env::in_ci`]), where the
    /// missing prerequisite is a plain error (never a silent skip in CI).
    pub fn or_fail_under_ci(reason: impl Into<String>) -> anyhow::Error {
        let reason = reason.into();
        if ci_env::in_ci() {
            anyhow::anyhow!("{reason} (CI=true, so this fails instead of skipping)")
        } else {
            eprintln!("skipping: {reason}");
            SkipTest::new(reason).into()
        }
    }
}

/// What a test's run function receives from the harness.
#[derive(Debug, Clone)]
pub struct PetriTestParams {
    /// The full test name.
    pub test_name: String,
    /// The test's log directory (exists when the test runs).
    pub log_dir: PathBuf,
}

trait RunTest: Send + Sync {
    /// Runs the requirement closure (collecting phase).
    fn collect(&self, resolver: &ArtifactResolver<'_>);
    /// Runs the requirement closure (resolving phase), then the test.
    fn run(&self, params: PetriTestParams, resolver: &ArtifactResolver<'_>) -> anyhow::Result<()>;
}

struct SimpleTest<A, R, F> {
    requirements: R,
    run: F,
    _artifacts: PhantomData<fn() -> A>,
}

impl<A, R, F> RunTest for SimpleTest<A, R, F>
where
    R: Fn(&ArtifactResolver<'_>) -> A + Send + Sync,
    F: Fn(PetriTestParams, A) -> anyhow::Result<()> + Send + Sync,
{
    fn collect(&self, resolver: &ArtifactResolver<'_>) {
        let _placeholders = (self.requirements)(resolver);
    }

    fn run(&self, params: PetriTestParams, resolver: &ArtifactResolver<'_>) -> anyhow::Result<()> {
        let artifacts = (self.requirements)(resolver);
        (self.run)(params, artifacts)
    }
}

/// What a host must offer to run a test.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostRequirements {
    /// The backend's own host check.
    pub backend: Option<fn() -> HostSupport>,
    /// The VM architecture, which must match the host's (no emulation).
    pub arch: Option<MachineArch>,
}

impl HostRequirements {
    /// Checks the requirements against a host of architecture `host_arch`
    /// (`None` = an architecture petri does not know).
    pub fn check(&self, host_arch: Option<MachineArch>) -> HostSupport {
        if let Some(backend) = self.backend
            && let unsupported @ HostSupport::Unsupported(_) = backend()
        {
            return unsupported;
        }
        if let Some(arch) = self.arch
            && host_arch != Some(arch)
        {
            return HostSupport::Unsupported(
                format!(
                    "needs an {arch} host, this host is {}",
                    std::env::consts::ARCH
                )
                .into(),
            );
        }
        HostSupport::Supported
    }
}

/// The architecture of this host, if petri knows it.
pub fn host_arch() -> Option<MachineArch> {
    match std::env::consts::ARCH {
        "x86_64" => Some(MachineArch::X64),
        "aarch64" => Some(MachineArch::Aarch64),
        _ => None,
    }
}

/// One test case: a leaf name, a requirement closure, a run function and
/// its marks. Build with [`TestCase::new`] or [`TestCase::vmm`].
pub struct TestCase {
    leaf_name: String,
    runner: Box<dyn RunTest>,
    remote_access: RemoteAccess,
    unstable: Option<String>,
    ignore: Option<String>,
    host: HostRequirements,
}

impl std::fmt::Debug for TestCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCase")
            .field("leaf_name", &self.leaf_name)
            .field("remote_access", &self.remote_access)
            .field("unstable", &self.unstable)
            .field("ignore", &self.ignore)
            .field("host", &self.host)
            .finish()
    }
}

impl TestCase {
    /// A test whose `requirements` closure requires artifacts (it runs once
    /// to collect, once more after resolution) and whose `run` function
    /// receives the closure's second result.
    pub fn new<A, R, F>(leaf_name: impl Into<String>, requirements: R, run: F) -> Self
    where
        A: 'static,
        R: Fn(&ArtifactResolver<'_>) -> A + Send + Sync + 'static,
        F: Fn(PetriTestParams, A) -> anyhow::Result<()> + Send + Sync + 'static,
    {
        TestCase {
            leaf_name: leaf_name.into(),
            runner: Box::new(SimpleTest {
                requirements,
                run,
                _artifacts: PhantomData,
            }),
            remote_access: RemoteAccess::LocalOnly,
            unstable: None,
            ignore: None,
            host: HostRequirements::default(),
        }
    }

    /// A VM test on backend `B`, named `{config_name}::{fn_name}`.
    /// `requirements` builds the firmware and the extra artifacts `E`;
    /// `run` is the async test function. The host must support `B` and
    /// have architecture `arch`.
    pub fn vmm<B, E, R, F, Fut>(
        config_name: &str,
        fn_name: &str,
        arch: MachineArch,
        requirements: R,
        run: F,
    ) -> Self
    where
        B: PetriVmmBackend,
        E: 'static,
        R: Fn(&ArtifactResolver<'_>) -> (Firmware, E) + Send + Sync + 'static,
        F: Fn(PetriVmBuilder<B>, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut case = TestCase::new(
            format!("{config_name}::{fn_name}"),
            requirements,
            move |params: PetriTestParams, (firmware, extras): (Firmware, E)| {
                let backend = B::new(&params)?;
                let builder = PetriVmBuilder::new(backend, params, firmware, arch);
                block_on(run(builder, extras))
            },
        );
        case.host = HostRequirements {
            backend: Some(B::host_support),
            arch: B::NATIVE_ARCH_ONLY.then_some(arch),
        };
        case
    }

    /// Sets the remote access policy the harness applies to the resolver
    /// (default [`RemoteAccess::LocalOnly`]).
    pub fn remote_access(mut self, access: RemoteAccess) -> Self {
        self.remote_access = access;
        self
    }

    /// Marks the test unstable.
    pub fn unstable(mut self, reason: impl Into<String>) -> Self {
        self.unstable = Some(reason.into());
        self
    }

    /// Marks the test ignored.
    pub fn ignore(mut self, reason: impl Into<String>) -> Self {
        self.ignore = Some(reason.into());
        self
    }

    /// Sets the host requirements.
    pub fn host_requirements(mut self, host: HostRequirements) -> Self {
        self.host = host;
        self
    }

    /// The leaf name (without the module path).
    pub fn leaf_name(&self) -> &str {
        &self.leaf_name
    }

    /// The remote access policy.
    pub fn remote_access_policy(&self) -> RemoteAccess {
        self.remote_access
    }

    /// Whether the test is marked ignored, and why.
    pub fn ignore_reason(&self) -> Option<&str> {
        self.ignore.as_deref()
    }

    /// Whether the test is marked unstable, and why.
    pub fn unstable_reason(&self) -> Option<&str> {
        self.unstable.as_deref()
    }

    /// Whether a host of architecture `host_arch` can run the test.
    pub fn host_support(&self, host_arch: Option<MachineArch>) -> HostSupport {
        self.host.check(host_arch)
    }

    /// Runs the collecting phase into `requirements`.
    pub fn collect_requirements(&self, requirements: &mut TestArtifactRequirements) {
        let resolver =
            ArtifactResolver::collector(requirements).with_remote_access(self.remote_access);
        self.runner.collect(&resolver);
    }
}

/// Runs a future to completion on a fresh current-thread tokio runtime.
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to create the tokio runtime")?;
    runtime.block_on(future)
}

/// A test case registration, collected with [`inventory`].
pub struct TestCaseRegistration {
    module_path: &'static str,
    make: fn() -> TestCase,
}

impl TestCaseRegistration {
    /// A registration of the case `make` builds, declared in `module_path`
    /// (pass `module_path!()`).
    pub const fn new(module_path: &'static str, make: fn() -> TestCase) -> Self {
        Self { module_path, make }
    }
}

inventory::collect!(TestCaseRegistration);

/// A test case with its full name.
#[derive(Debug)]
pub struct NamedTestCase {
    /// `{module path without the crate}::{leaf name}`.
    pub name: String,
    /// The case.
    pub case: TestCase,
}

/// The full name of a test: the module path without its crate name, then
/// the leaf name.
pub fn full_test_name(module_path: &str, leaf_name: &str) -> String {
    match module_path.split_once("::") {
        Some((_crate, rest)) => format!("{rest}::{leaf_name}"),
        None => leaf_name.to_owned(),
    }
}

/// Every registered test case, sorted by name.
pub fn registered_tests() -> Vec<NamedTestCase> {
    let mut tests: Vec<NamedTestCase> = inventory::iter::<TestCaseRegistration>
        .into_iter()
        .map(|reg| {
            let case = (reg.make)();
            NamedTestCase {
                name: full_test_name(reg.module_path, case.leaf_name()),
                case,
            }
        })
        .collect();
    tests.sort_by(|a, b| a.name.cmp(&b.name));
    tests
}

/// Harness settings read from the process environment, in one place.
#[derive(Debug, Clone, Copy)]
pub struct HarnessEnv {
    /// `PETRI_IGNORE_UNSTABLE_FAILURES` is set.
    pub ignore_unstable_failures: bool,
    /// This host's architecture.
    pub host_arch: Option<MachineArch>,
}

impl HarnessEnv {
    /// Parses a value of [`PETRI_IGNORE_UNSTABLE_FAILURES`].
    pub fn parse_ignore_unstable(value: Option<&str>) -> bool {
        match value.map(str::trim) {
            None | Some("") | Some("0") => false,
            Some(v) => !v.eq_ignore_ascii_case("false"),
        }
    }

    /// Reads the process environment.
    pub fn from_process_env() -> Self {
        let value = std::env::var_os(PETRI_IGNORE_UNSTABLE_FAILURES);
        HarnessEnv {
            ignore_unstable_failures: Self::parse_ignore_unstable(
                value.as_deref().map(|v| v.to_str().unwrap_or("1")),
            ),
            host_arch: host_arch(),
        }
    }
}

/// Splits the harness's own flag off the command line. Returns the libtest
/// arguments and whether `--list-required-artifacts` was given.
pub fn split_args(args: impl IntoIterator<Item = OsString>) -> (Vec<OsString>, bool) {
    let mut list_artifacts = false;
    let rest = args
        .into_iter()
        .filter(|a| {
            if a == LIST_REQUIRED_ARTIFACTS_FLAG {
                list_artifacts = true;
                false
            } else {
                true
            }
        })
        .collect();
    (rest, list_artifacts)
}

fn is_statically_ignored(test: &NamedTestCase, env: &HarnessEnv) -> bool {
    test.case.ignore.is_some()
        || matches!(
            test.case.host_support(env.host_arch),
            HostSupport::Unsupported(_)
        )
}

/// The tests `args` selects (filters, `--skip`, `--exact`, `--ignored`).
pub fn select<'a>(
    args: &Arguments,
    tests: &'a [NamedTestCase],
    env: &HarnessEnv,
) -> Vec<&'a NamedTestCase> {
    tests
        .iter()
        .filter(|t| {
            let probe = Trial::test(t.name.clone(), || Ok(()))
                .with_ignored_flag(is_statically_ignored(t, env));
            !args.is_filtered_out(&probe)
        })
        .collect()
}

/// The merged artifact requirements of `tests` as list output. Runs only
/// the collecting phase.
pub fn required_artifacts<'a>(
    tests: impl IntoIterator<Item = &'a NamedTestCase>,
    requirements: TestArtifactRequirements,
) -> ArtifactListOutput {
    let mut requirements = requirements;
    for test in tests {
        test.case.collect_requirements(&mut requirements);
    }
    requirements.list_output()
}

type ResolveFn =
    dyn Fn(&str, TestArtifactRequirements) -> anyhow::Result<TestArtifacts> + Send + Sync;

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

fn run_phases<R>(name: &str, case: &TestCase, resolve: &R) -> anyhow::Result<()>
where
    R: Fn(&str, TestArtifactRequirements) -> anyhow::Result<TestArtifacts> + ?Sized,
{
    let mut requirements = TestArtifactRequirements::new();
    case.collect_requirements(&mut requirements);
    requirements.require(TEST_LOG_DIRECTORY.erase(), RemoteAccess::LocalOnly, false);
    let artifacts = resolve(name, requirements)?;
    let log_dir = artifacts.get(TEST_LOG_DIRECTORY).to_owned();
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("failed to create the log directory {}", log_dir.display()))?;
    let resolver = ArtifactResolver::resolver(&artifacts).with_remote_access(case.remote_access);
    case.runner.run(
        PetriTestParams {
            test_name: name.to_owned(),
            log_dir,
        },
        &resolver,
    )
}

/// An error and its cause chain, one cause per line, without the
/// backtrace anyhow adds under `RUST_BACKTRACE=1` (it would only show the
/// harness's own frames).
fn error_report(err: &anyhow::Error) -> String {
    use std::fmt::Write as _;
    let mut report = err.to_string();
    let causes: Vec<_> = err.chain().skip(1).collect();
    if !causes.is_empty() {
        report.push_str("\n\nCaused by:");
        for (i, cause) in causes.iter().enumerate() {
            let _ = write!(report, "\n    {i}: {cause}");
        }
    }
    report
}

/// Runs one test through every phase, as the harness does.
pub fn run_test<R>(
    test: &NamedTestCase,
    resolve: &R,
    env: &HarnessEnv,
) -> Result<Completion, Failed>
where
    R: Fn(&str, TestArtifactRequirements) -> anyhow::Result<TestArtifacts> + ?Sized,
{
    if let HostSupport::Unsupported(reason) = test.case.host_support(env.host_arch) {
        return Ok(Completion::ignored_with(reason));
    }
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_phases(&test.name, &test.case, resolve)
    }));
    let failure = match outcome {
        Ok(Ok(())) => return Ok(Completion::Completed),
        Ok(Err(err)) => {
            if let Some(skip) = err.chain().find_map(|e| e.downcast_ref::<SkipTest>()) {
                return Ok(Completion::ignored_with(skip.reason.clone()));
            }
            error_report(&err)
        }
        Err(payload) => format!("test panicked: {}", panic_message(payload.as_ref())),
    };
    match &test.case.unstable {
        Some(reason) if env.ignore_unstable_failures => {
            eprintln!(
                "unstable test {} failed ({PETRI_IGNORE_UNSTABLE_FAILURES} is set, so the \
                 failure is tolerated): {failure}",
                test.name
            );
            Ok(Completion::ignored_with(format!(
                "unstable ({reason}); failure tolerated: {failure}"
            )))
        }
        _ => Err(failure.into()),
    }
}

/// The harness entry point for a `harness = false` test target.
///
/// `resolve` turns a test's collected requirements into artifacts, for
/// example with the known-paths resolver:
///
/// ```text
/// fn main() {
///     petri::test_main(|name, requirements| {
///         requirements.resolve(OpenvmmKnownPathsTestArtifactResolver::new(name))
///     })
/// }
/// ```
pub fn test_main<F>(resolve: F) -> !
where
    F: Fn(&str, TestArtifactRequirements) -> anyhow::Result<TestArtifacts> + Send + Sync + 'static,
{
    crate::logging::init_stderr_logging("info");

    let (raw_args, list_artifacts) = split_args(std::env::args_os());
    let args = Arguments::from_iter(raw_args);
    let env = HarnessEnv::from_process_env();
    let tests = registered_tests();

    if list_artifacts {
        let selected = select(&args, &tests, &env);
        let output = required_artifacts(selected, TestArtifactRequirements::new());
        match serde_json::to_string_pretty(&output) {
            Ok(json) => {
                println!("{json}");
                std::process::exit(0)
            }
            Err(err) => {
                eprintln!("error: cannot serialise the artifact list: {err}");
                std::process::exit(101)
            }
        }
    }

    let quiet = args.exact
        || args.quiet
        || matches!(
            args.format,
            Some(libtest_mimic::FormatSetting::Terse | libtest_mimic::FormatSetting::Json)
        );
    for test in tests.iter().filter(|_| !quiet) {
        if let HostSupport::Unsupported(reason) = test.case.host_support(env.host_arch) {
            eprintln!("note: {} is ignored on this host: {reason}", test.name);
        } else if let Some(reason) = &test.case.ignore {
            eprintln!("note: {} is ignored: {reason}", test.name);
        }
    }

    let resolve: Arc<ResolveFn> = Arc::new(resolve);
    let trials = tests
        .into_iter()
        .map(|test| {
            let ignored = is_statically_ignored(&test, &env);
            let name = test.name.clone();
            let resolve = resolve.clone();
            Trial::ignorable_test(name, move || run_test(&test, resolve.as_ref(), &env))
                .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

#[cfg(test)]
mod tests;
