//! The wire contract of mlx-sidecar: the protobuf messages and gRPC stubs of the
//! `mlx_sidecar.v1.Inference` service (what a worker serves, and the daemon relays) and the
//! `mlx_sidecar.v1.Daemon` service (what `mlx-sidecar serve` says about itself), generated at
//! build time from `proto/mlx_sidecar/v1/inference.proto` and `daemon.proto` (the same files
//! the Python stubs come from).
//!
//! The `mlx-sidecar` library speaks to the worker through these types but does not expose
//! them; depend on this crate to send raw wire messages (tests, fuzzing), to serve the
//! contract yourself ([`v1::inference_server`]), or to offer gRPC reflection
//! ([`FILE_DESCRIPTOR_SET`]).

/// Version 1 of the contract: messages, [`v1::inference_client::InferenceClient`],
/// [`v1::inference_server::InferenceServer`], [`v1::daemon_client::DaemonClient`] and
/// [`v1::daemon_server::DaemonServer`].
pub mod v1 {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("mlx_sidecar.v1");
}

/// The encoded `google.protobuf.FileDescriptorSet` of `mlx_sidecar/v1/inference.proto` and
/// `mlx_sidecar/v1/daemon.proto`, for
/// serving gRPC reflection (e.g. `tonic_reflection`'s `register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mlx_sidecar_v1_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_holds_both_services() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET)
            .expect("a valid FileDescriptorSet");
        for (path, service) in [
            ("mlx_sidecar/v1/inference.proto", "Inference"),
            ("mlx_sidecar/v1/daemon.proto", "Daemon"),
        ] {
            let file = set
                .file
                .iter()
                .find(|f| f.name() == path)
                .unwrap_or_else(|| panic!("{path} is in the set"));
            assert_eq!(file.package(), "mlx_sidecar.v1");
            assert!(file.service.iter().any(|s| s.name() == service));
        }
    }

    #[test]
    fn messages_round_trip() {
        let request = super::v1::DetokenizeRequest {
            ids: vec![1, 2, 3],
            skip_special_tokens: true,
        };
        let decoded = super::v1::DetokenizeRequest::decode(request.encode_to_vec().as_slice());
        assert_eq!(decoded.ok(), Some(request));
    }
}
