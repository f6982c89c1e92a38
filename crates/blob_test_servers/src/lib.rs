//! Test HTTP servers (not yet written).

#![forbid(unsafe_code)]
