//! The petri test harness and VM model (not yet written).

#![forbid(unsafe_code)]
