//! The generated protobuf and gRPC code for `mlx_sidecar.v1`, kept in one place.
//!
//! The rest of the crate speaks in its own types (see [`crate::client`]); this module is
//! public so that callers who need the raw wire types can still reach them.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// Version 1 of the contract (`proto/mlx_sidecar/v1`).
pub mod v1 {
    tonic::include_proto!("mlx_sidecar.v1");
}
