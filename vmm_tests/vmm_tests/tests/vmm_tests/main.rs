//! The VMM tests, run by petri's harness.

mod boot;
mod harness_checks;

use petri_artifact_resolver_openvmm_known_paths::OpenvmmKnownPathsTestArtifactResolver;

fn main() {
    petri::test_main(|name, requirements| {
        requirements.resolve(OpenvmmKnownPathsTestArtifactResolver::new(name))
    })
}
