//! VMM tests (not yet written).

#![forbid(unsafe_code)]
