//! Decodes arbitrary bytes as every request message of `mlx_sidecar.v1.Inference`
//! (GenerateRequest, TokenizeRequest, DetokenizeRequest, ModelInfoRequest): decoding must
//! never panic, and whatever decodes must encode and decode again to the same message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_sidecar_proto::v1 as pb;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        let bytes = message.encode_to_vec();
        let again = M::decode(bytes.as_slice()).expect("re-encoded message decodes");
        // NaN floats never compare equal; compare the encodings instead.
        assert_eq!(again.encode_to_vec(), bytes, "{message:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<pb::GenerateRequest>(data);
    round_trip::<pb::TokenizeRequest>(data);
    round_trip::<pb::DetokenizeRequest>(data);
    round_trip::<pb::ModelInfoRequest>(data);
});
