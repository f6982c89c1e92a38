//! Declared test images (not yet written).

#![forbid(unsafe_code)]
