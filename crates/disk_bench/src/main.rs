//! Disk stack benchmark workloads (not yet written).

fn main() {}
