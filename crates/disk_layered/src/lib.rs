//! Layered disks (not yet written).

#![forbid(unsafe_code)]
