//! The VMM tests, run by petri's harness.

mod boot;
mod debian_guest;
mod guest;
mod harness_checks;
mod mirror;
mod remote_mirror;
mod sparse_formats;
mod test_guest;

use petri_artifact_resolver_openvmm_known_paths::OpenvmmKnownPathsTestArtifactResolver;

fn main() {
    petri::test_main(|name, requirements| {
        // The per-test resolver environment: the process environment, plus
        // for tests in `remote_mirror` an nginx mirror of the built images,
        // for tests in `sparse_formats` one of a converted root disk (see
        // `mirror`).
        let env = mirror::resolver_env(name, &requirements)?;
        let resolved =
            requirements.resolve(OpenvmmKnownPathsTestArtifactResolver::with_env(name, env));
        if resolved.is_err() {
            // The test will not run: stop its mirror now.
            mirror::discard(name);
        }
        resolved
    })
}
