//! The `mlx-sidecar` command line.

fn main() {}
