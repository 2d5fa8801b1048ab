//! JSON output through the library: a schema given as a `serde_json::Value` constrains a real
//! worker's output (the tiny model's random weights: the mask does all the work), any object
//! with `json_object()`, and a schema the grammar engine refuses is `InvalidArgument` naming
//! `response_format.json_schema`.

use mlx_sidecar::{Error, FinishReason, GenerateRequest};

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_and_json_object_constrain_the_output() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();

    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "color": {"enum": ["red", "green", "blue"]}
        },
        "required": ["name", "age", "color"],
        "additionalProperties": false
    });
    for temperature in [0.0, 1.0] {
        let (value, text) = complete_json(
            &client,
            GenerateRequest::text("JSON:")
                .json_schema(&schema)
                .temperature(temperature)
                .seed(5)
                .max_tokens(1000),
        )
        .await;
        let object = value.as_object().expect("an object");
        let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["age", "color", "name"], "{text}");
        let age = object["age"].as_i64().expect("an integer age");
        assert!((0..=120).contains(&age), "{age}");
        assert!(["red", "green", "blue"].contains(&object["color"].as_str().unwrap_or("")));
        assert!(
            object["name"]
                .as_str()
                .expect("a string name")
                .chars()
                .count()
                <= 10
        );
    }

    let (value, text) = complete_json(
        &client,
        GenerateRequest::text("JSON:")
            .json_object()
            .max_tokens(1000),
    )
    .await;
    assert!(value.is_object(), "{text}");
    supervisor.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_schema_is_invalid_argument_naming_it() {
    let sandbox = tempfile::tempdir().expect("tempdir");
    let supervisor = support::ready_tiny_supervisor(sandbox.path()).await;
    let client = supervisor.client();
    for schema in [
        r#"{"type": "array", "uniqueItems": true}"#,
        r#"{"type": "objekt"}"#,
        "not json",
    ] {
        let err = client
            .generate(GenerateRequest::text("x").json_schema(schema))
            .await
            .expect_err("must be refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        match &err {
            Error::Rpc { message, .. } => {
                assert!(
                    message.starts_with("response_format.json_schema: "),
                    "{message}"
                );
            }
            other => panic!("expected Error::Rpc, got {other:?}"),
        }
    }
    supervisor.shutdown().await.expect("shutdown");
}

/// Generates `request` to its end: it must finish with STOP (the JSON complete) and parse.
async fn complete_json(
    client: &mlx_sidecar::Client,
    request: GenerateRequest,
) -> (serde_json::Value, String) {
    let done = client
        .generate(request)
        .await
        .expect("generate")
        .collect()
        .await
        .expect("collect");
    assert_eq!(
        done.finished.finish_reason,
        FinishReason::Stop,
        "{}",
        done.text
    );
    let value = serde_json::from_str(&done.text).expect("JSON");
    (value, done.text)
}
