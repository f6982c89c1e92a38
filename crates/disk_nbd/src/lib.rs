//! NBD export of a disk (not yet written).

#![forbid(unsafe_code)]
