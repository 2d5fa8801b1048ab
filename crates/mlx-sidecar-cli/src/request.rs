//! Turning the sampling options into a [`GenerateRequest`], and the worker's
//! `INVALID_ARGUMENT` field paths back into the options that set them.

use mlx_sidecar::GenerateRequest;

use super::args::SamplingArgs;

/// Applies the sampling options to a request.
pub(crate) fn apply(mut req: GenerateRequest, s: &SamplingArgs) -> GenerateRequest {
    if let Some(n) = s.max_tokens {
        req = req.max_tokens(n);
    }
    if let Some(t) = s.temperature {
        req = req.temperature(t);
    }
    if let Some(p) = s.top_p {
        req = req.top_p(p);
    }
    if let Some(k) = s.top_k {
        req = req.top_k(k);
    }
    if let Some(p) = s.min_p {
        req = req.min_p(p);
    }
    if let Some(r) = s.repetition_penalty {
        req = req.repetition_penalty(r);
    }
    if let Some(seed) = s.seed {
        req = req.seed(seed);
    }
    for stop in &s.stop {
        req = req.stop(stop.clone());
    }
    if s.ignore_eos {
        req = req.ignore_eos(true);
    }
    if s.no_resume {
        req = req.no_resume();
    }
    req
}

/// The command-line option behind a request field named at the start of an
/// `INVALID_ARGUMENT` message ("sampling.top_p: must be in (0, 1], got 1.5" → "--top-p").
pub(crate) fn option_for(message: &str) -> Option<&'static str> {
    let field = message.split(':').next()?.trim();
    let field = field.split('[').next()?;
    Some(match field {
        "max_tokens" => "--max-tokens",
        "sampling.temperature" => "--temperature",
        "sampling.top_p" => "--top-p",
        "sampling.top_k" => "--top-k",
        "sampling.min_p" => "--min-p",
        "sampling.repetition_penalty" => "--repetition-penalty",
        "sampling.seed" => "--seed",
        "stop" => "--stop",
        "response_format.json_schema" => "--json-schema",
        "response_format.json_object" => "--json-object",
        "prompt" | "prompt.text" | "prompt.chat" | "prompt.chat.messages" => "the prompt",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_map_to_options() {
        assert_eq!(
            option_for("sampling.top_p: must be in (0, 1], got 1.5"),
            Some("--top-p")
        );
        assert_eq!(option_for("stop[3]: too long"), Some("--stop"));
        assert_eq!(option_for("max_tokens: must be >= 1"), Some("--max-tokens"));
        assert_eq!(
            option_for("response_format.json_schema: Unimplemented keys: [\"not\"]"),
            Some("--json-schema")
        );
        assert_eq!(option_for("something else"), None);
    }
}
