//! Artifact declarations, requirements and resolution (not yet written).

#![forbid(unsafe_code)]
