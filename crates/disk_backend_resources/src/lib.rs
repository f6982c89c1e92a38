//! Disk stack descriptions (not yet written).

#![forbid(unsafe_code)]
