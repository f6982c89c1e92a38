//! Workspace automation (not yet written).

fn main() {}
