//! The VMM tests.
//!
//! The tests live in the `vmm_tests` test target (`tests/vmm_tests/`),
//! which runs under petri's harness (`harness = false`, `petri::test_main`)
//! with the known-paths resolver. Each `#[vmm_test]` function becomes one
//! test per configuration, named `{module}::{vmm}_{firmware}_{arch}[_{image}]::{fn}`:
//!
//! ```text
//! cargo nextest list -p vmm_tests
//! cargo nextest run -p vmm_tests
//! cargo test -p vmm_tests --test vmm_tests -- --list-required-artifacts hyperv_
//! ```
//!
//! On hosts without OpenVMM or Hyper-V those tests are listed as ignored
//! with the reason. The harness self-checks in `harness_checks` run
//! everywhere: they invoke the test binary itself and assert, through
//! `--list-required-artifacts`, that Hyper-V configurations require their
//! images locally while OpenVMM configurations allow remote ones.
//!
//! This library target is intentionally empty.

#![forbid(unsafe_code)]
