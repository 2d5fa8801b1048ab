//! mlx-sidecar: real MLX inference for Rust programs, served by a supervised Python worker.
//!
//! (Theory of operation: filled in as the crate grows.)

pub mod env;
pub mod proto;
