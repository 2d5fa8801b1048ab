//! The integration tests: one test binary, one module per area.
//!
//! The library's tests (`serving`, `faults`) run the real worker with real MLX: a tiny
//! random-weight model made once per run (`support::tiny_model`) for speed, and the
//! default SmolLM2 model in one end-to-end test. Python comes from `MLX_SIDECAR_PYTHON`,
//! else the repository's `.venv`; each test has its own temporary directory.

mod bench;
mod catalogue;
mod catalogue_process;
mod catalogue_requests;
mod cli;
mod env;
mod faults;
mod lifetime;
mod serving;
mod standby;
mod support;
