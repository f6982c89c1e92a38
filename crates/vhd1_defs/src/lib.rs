//! VHD1 definitions (not yet written).

#![forbid(unsafe_code)]
