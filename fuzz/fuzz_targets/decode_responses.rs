//! Decodes arbitrary bytes as the worker's answers and turns them into the client's own
//! types, as the client does with every message it receives: no input may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mlx_sidecar::{Finished, ModelInfo, TokenLogprob};
use mlx_sidecar_proto::v1 as pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = pb::GenerateResponse::decode(data) {
        match response.event {
            Some(pb::generate_response::Event::Finished(f)) => {
                let _ = Finished::from(f);
            }
            Some(pb::generate_response::Event::Chunk(c)) => {
                let _: Vec<TokenLogprob> = c.logprobs.into_iter().map(Into::into).collect();
            }
            None => {}
        }
    }
    if let Ok(info) = pb::ModelInfoResponse::decode(data) {
        let _ = ModelInfo::from(info);
    }
    let _ = pb::TokenizeResponse::decode(data);
    let _ = pb::DetokenizeResponse::decode(data);
});
