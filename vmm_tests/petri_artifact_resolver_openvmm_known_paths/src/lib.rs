//! Known-paths resolver (not yet written).

#![forbid(unsafe_code)]
