//! The library's integration tests: one test binary, one module per area.
//!
//! They run the real worker with real MLX: a tiny random-weight model made once per run
//! (`support::tiny_model`) for speed, and the default SmolLM2 model in one end-to-end test.
//! Python comes from `MLX_SIDECAR_PYTHON`, else the repository's `.venv`; each test has its
//! own temporary directory. `support` is the `mlx-sidecar-testkit` crate, shared with the
//! command's tests (`crates/mlx-sidecar-cli/tests/it`).

mod catalogue;
mod catalogue_process;
mod catalogue_requests;
mod connect;
mod env;
mod faults;
mod housekeeping;
mod json_output;
mod lifetime;
mod readme;
mod replicas;
mod resume;
mod resume_points;
mod serving;
mod shard;
mod standby;

use mlx_sidecar_testkit as support;
