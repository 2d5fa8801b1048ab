//! Generates the gRPC code for `proto/mlx_sidecar/v1` with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and tonic-prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/mlx_sidecar/v1/inference.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // src/env/bundle.rs embeds these with include_dir, which cannot tell cargo to watch them.
    for dir in [
        "sidecar/mlx_worker",
        "sidecar/mlx_sidecar",
        "sidecar/requirements",
    ] {
        println!("cargo:rerun-if-changed={dir}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
