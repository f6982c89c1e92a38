//! The test image catalog (not yet written).

#![forbid(unsafe_code)]
