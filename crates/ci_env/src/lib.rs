//! Whether this process runs under CI: the one reading of the `CI`
//! variable.
//!
//! Position in the data flow: none; a leaf crate with no dependencies. Test
//! code and tools use it to apply the workspace's rule for real components
//! (nginx, QEMU, nbdkit, mdbook): a missing component fails under CI and
//! skips, with a printed reason, on a developer machine. The harness
//! (`petri`), xtask and the test helpers all ask here, so they agree on
//! what counts as CI.
//!
//! Rule: `CI` set to `true` (any case) or `1` is CI; unset, empty or any
//! other value is not.

#![forbid(unsafe_code)]

/// The variable CI systems set.
pub const CI_VAR: &str = "CI";

/// Whether a value of [`CI_VAR`] means CI (`true` in any case, or `1`).
pub fn is_ci_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Whether this process runs under CI, where a missing real component is
/// a failure rather than a reason to skip.
pub fn in_ci() -> bool {
    is_ci_value(std::env::var(CI_VAR).ok().as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn true_and_one_are_ci_anything_else_is_not() {
        for value in ["true", "TRUE", "True", "1"] {
            assert!(is_ci_value(Some(value)), "{value}");
        }
        for value in ["", "0", "false", "yes", "2", " true"] {
            assert!(!is_ci_value(Some(value)), "{value}");
        }
        assert!(!is_ci_value(None));
    }
}
