//! Generates the protobuf types and gRPC stubs of `proto/mlx_sidecar/v1` (`inference.proto`,
//! the worker's service, and `daemon.proto`, the daemon's) with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and tonic-prost-build, and writes the encoded
//! file descriptor set of both that `FILE_DESCRIPTOR_SET` embeds.

use std::path::PathBuf;

use protox::prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?)
        .join("../../proto")
        .canonicalize()?;
    let protos = [
        "mlx_sidecar/v1/inference.proto",
        "mlx_sidecar/v1/daemon.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let descriptors = protox::compile(protos, [&root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("mlx_sidecar_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
