//! Compile tests of `#[vmm_test]`: every rejected input is a compile error
//! with a snapshot of its message (regenerate with `TRYBUILD=overwrite`),
//! and a real use compiles and registers its cases.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
