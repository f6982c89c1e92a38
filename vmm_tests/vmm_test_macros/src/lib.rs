//! The vmm_test macro (not yet written).

#![forbid(unsafe_code)]
