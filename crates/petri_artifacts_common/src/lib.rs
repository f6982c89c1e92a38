//! Common artifact tags and artifacts (not yet written).

#![forbid(unsafe_code)]
