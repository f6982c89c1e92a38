//! The petri-tool command (not yet written).

fn main() {}
