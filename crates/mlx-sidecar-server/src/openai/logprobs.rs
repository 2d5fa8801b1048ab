//! Log-probabilities in OpenAI's two shapes: chat's `logprobs.content[{token, logprob,
//! bytes, top_logprobs}]` and completions' `logprobs.{tokens, token_logprobs,
//! top_logprobs, text_offset}`.

use super::{
    generation::TokenInfo,
    types::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs, TopLogprobsMap},
};

/// Chat's shape for `tokens`.
pub(crate) fn chat(tokens: &[TokenInfo]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.text.clone(),
                logprob: t.logprob,
                bytes: t.bytes.clone(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|(text, logprob)| ChatTopLogprob {
                        token: text.clone(),
                        logprob: *logprob,
                        bytes: text.as_bytes().to_vec(),
                    })
                    .collect(),
            })
            .collect(),
        refusal: None,
    }
}

/// Completions' shape for `tokens`, whose text starts `offset` characters into the
/// completion. Returns the shape and the offset after the last token.
pub(crate) fn completion(tokens: &[TokenInfo], mut offset: usize) -> (CompletionLogprobs, usize) {
    let mut out = CompletionLogprobs::default();
    for t in tokens {
        out.tokens.push(t.text.clone());
        out.token_logprobs.push(t.logprob);
        out.top_logprobs.push(TopLogprobsMap(t.top.clone()));
        out.text_offset.push(offset);
        offset += t.text.chars().count();
    }
    (out, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Vec<TokenInfo> {
        vec![
            TokenInfo {
                text: "Pa".into(),
                bytes: b"Pa".to_vec(),
                logprob: -0.25,
                top: vec![("Pa".into(), -0.25), ("Lo".into(), -2.0)],
            },
            TokenInfo {
                text: "rïs".into(),
                bytes: "rïs".as_bytes().to_vec(),
                logprob: -0.5,
                top: vec![("rïs".into(), -0.5)],
            },
        ]
    }

    #[test]
    fn chat_shape_has_bytes_and_alternatives() {
        let json = serde_json::to_value(chat(&tokens())).expect("json");
        assert_eq!(json["content"][0]["token"], "Pa");
        assert_eq!(json["content"][0]["bytes"], serde_json::json!([80, 97]));
        assert_eq!(json["content"][0]["top_logprobs"][1]["token"], "Lo");
        assert_eq!(
            json["content"][1]["bytes"].as_array().map(Vec::len),
            Some(4)
        );
        assert!(json["refusal"].is_null());
    }

    #[test]
    fn completion_shape_counts_offsets_in_characters() {
        let (shape, end) = completion(&tokens(), 10);
        assert_eq!(shape.text_offset, vec![10, 12]);
        assert_eq!(end, 15);
        let json = serde_json::to_value(&shape).expect("json");
        assert_eq!(json["tokens"], serde_json::json!(["Pa", "rïs"]));
        assert_eq!(json["token_logprobs"], serde_json::json!([-0.25, -0.5]));
        assert_eq!(
            json["top_logprobs"][0],
            serde_json::json!({"Pa": -0.25, "Lo": -2.0})
        );
    }
}
