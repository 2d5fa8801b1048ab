//! `src/env/bundle.rs` embeds the worker's Python source with `include_dir`, which cannot tell
//! cargo to watch those directories; this does.

fn main() {
    for dir in [
        "../../sidecar/mlx_worker",
        "../../sidecar/mlx_sidecar",
        "../../sidecar/requirements",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
}
