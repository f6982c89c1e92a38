//! RAM disk layer (not yet written).

#![forbid(unsafe_code)]
