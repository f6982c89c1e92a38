//! A small static blob server (not yet written).

#![forbid(unsafe_code)]
