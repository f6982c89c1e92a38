//! Benchmark of the SQLite layer (being written).

fn main() {}
