//! `--test-model`: the real worker on its tiny random-weight model, from the command line.

use serde_json::Value;

use crate::cli::{Cli, json_lines, text};

#[test]
fn generate_on_the_test_model_streams_and_keeps_to_the_limit() {
    let out = Cli::new()
        .args([
            "--test-model",
            "generate",
            "--json",
            "--max-tokens",
            "8",
            "Hello",
        ])
        .run();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = json_lines(&out);
    let last: &Value = events.last().expect("events");
    assert_eq!(last["type"], "finished", "{events:?}");
    assert_eq!(last["finish_reason"], "length");
    assert_eq!(last["usage"]["completion_tokens"], 8);

    let both = Cli::new()
        .args(["--test-model", "--model", "x.gguf", "generate", "hi"])
        .run();
    assert_eq!(both.status.code(), Some(2), "{}", text(&both.stderr));
}
