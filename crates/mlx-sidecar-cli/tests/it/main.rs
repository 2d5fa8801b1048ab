//! The `mlx-sidecar` command's integration tests: the binary run for real as a user would
//! (one test binary, one module per area). Fixtures (interpreter, worker source, tiny model)
//! come from the `mlx-sidecar-testkit` crate, as `support`.

mod bench;
mod catalogue;
mod cli;
mod daemon;
mod errors;
mod models;
mod test_model;

use mlx_sidecar_testkit as support;
