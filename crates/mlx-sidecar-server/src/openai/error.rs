//! Every HTTP error the daemon sends, in OpenAI's shape (`{"error": {message, type,
//! param, code}}`) with its status, built here and nowhere else.
//!
//! | cause | status | type / code |
//! |---|---|---|
//! | malformed JSON, wrong type, bad value; worker `INVALID_ARGUMENT` | 400 | `invalid_request_error`, `param` named |
//! | prompt (+ max_tokens) beyond the context: worker `RESOURCE_EXHAUSTED` on `prompt`/`max_tokens` | 400 | `context_length_exceeded` |
//! | unknown model | 404 | `model_not_found` |
//! | body over the limit | 413 | `request_too_large` |
//! | the worker's queue is full: other `RESOURCE_EXHAUSTED` | 429 + `Retry-After` | `rate_limit_exceeded` |
//! | no worker ready, worker died, draining: `UNAVAILABLE` | 503 + `Retry-After` | `service_unavailable` |
//! | deadline passed | 504 | `timeout` |
//! | bad or missing API key | 401 + `WWW-Authenticate` | `invalid_api_key` |
//! | anything else | 500 | `server_error` |
//!
//! The worker names the field at fault by its path in the gRPC request
//! (`sampling.top_p: must be in (0, 1], got 1.5`); [`openai_param`] maps it back to the
//! OpenAI parameter the client sent (`top_p`).

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::types::{ErrorBody, ErrorDetail};

/// Which OpenAI route a request came to (parameters are named differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

/// Marks a response whose error body was built here (so the router's error-shaping
/// middleware leaves it alone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shaped;

/// An error on its way to an HTTP client; see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after: Option<Duration>,
    grpc_code: tonic::Code,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
            grpc_code: tonic::Code::Unknown,
        }
    }

    /// 400 `invalid_request_error`, naming `param` when one is at fault.
    pub(crate) fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            param: param.map(str::to_owned),
            grpc_code: tonic::Code::InvalidArgument,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 404 `model_not_found`.
    pub(crate) fn model_not_found(requested: &str, served: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            grpc_code: tonic::Code::NotFound,
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{requested}` does not exist; this server serves `{served}`."),
            )
        }
    }

    /// 404 for a path no route serves.
    pub(crate) fn unknown_route(method: &str, path: &str) -> Self {
        ApiError {
            grpc_code: tonic::Code::NotFound,
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("Unknown request URL: {method} {path}."),
            )
        }
    }

    /// 413: the body is over `limit` bytes.
    pub(crate) fn payload_too_large(limit: usize) -> Self {
        ApiError {
            code: Some("request_too_large"),
            grpc_code: tonic::Code::ResourceExhausted,
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("The request body is larger than the limit of {limit} bytes."),
            )
        }
    }

    /// 401 with `WWW-Authenticate: Bearer`; says nothing about why.
    pub(crate) fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            grpc_code: tonic::Code::Unauthenticated,
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "A valid API key is required (Authorization: Bearer KEY).",
            )
        }
    }

    /// 503 with `Retry-After`: no worker can take the request now (starting,
    /// restarting, or the daemon is draining).
    pub(crate) fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        ApiError {
            code: Some("service_unavailable"),
            retry_after: Some(retry_after),
            grpc_code: tonic::Code::Unavailable,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
        }
    }

    /// 504: the request's deadline passed.
    pub(crate) fn timeout(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("timeout"),
            grpc_code: tonic::Code::DeadlineExceeded,
            ..Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
        }
    }

    /// 500 `server_error`.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError {
            grpc_code: tonic::Code::Internal,
            ..Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
        }
    }

    /// An error with any status: `invalid_request_error` for 4xx, `server_error` for 5xx.
    pub(crate) fn for_status(status: StatusCode, message: impl Into<String>) -> Self {
        let (kind, grpc_code) = if status.is_server_error() {
            ("server_error", tonic::Code::Internal)
        } else {
            ("invalid_request_error", tonic::Code::InvalidArgument)
        };
        ApiError {
            grpc_code,
            ..Self::new(status, kind, message)
        }
    }

    /// The error for a library failure, by its gRPC code (see the [module docs](self)).
    /// `retry_after` is what a 429 or 503 tells the client to wait.
    pub(crate) fn from_library(
        error: &mlx_sidecar::Error,
        endpoint: Endpoint,
        retry_after: Duration,
    ) -> Self {
        let code = error.code();
        let message = match error {
            mlx_sidecar::Error::Rpc { message, .. } => message.clone(),
            other => crate::remote_error::remote_message(other),
        };
        Self::from_status(code, &message, endpoint, retry_after)
    }

    /// The error for a gRPC status from the worker (or the library's code and message).
    pub(crate) fn from_status(
        code: tonic::Code,
        message: &str,
        endpoint: Endpoint,
        retry_after: Duration,
    ) -> Self {
        use tonic::Code;
        let field = field_path(message);
        let mut error = match code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                Self::invalid_request(
                    message,
                    field.and_then(|f| openai_param(f, endpoint)).as_deref(),
                )
            }
            Code::ResourceExhausted if matches!(field, Some("prompt" | "max_tokens")) => ApiError {
                code: Some("context_length_exceeded"),
                ..Self::invalid_request(
                    message,
                    field.and_then(|f| openai_param(f, endpoint)).as_deref(),
                )
            },
            Code::ResourceExhausted => ApiError {
                code: Some("rate_limit_exceeded"),
                retry_after: Some(retry_after),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            },
            Code::NotFound => ApiError {
                code: Some("not_found"),
                ..Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
            },
            Code::Unavailable | Code::Cancelled | Code::Aborted => {
                Self::unavailable(message, retry_after)
            }
            Code::DeadlineExceeded => Self::timeout(message),
            Code::Unauthenticated => Self::unauthorized(),
            _ => Self::internal(message),
        };
        error.grpc_code = code;
        error
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The gRPC code this error corresponds to (what metrics count it under).
    pub(crate) fn code(&self) -> tonic::Code {
        self.grpc_code
    }

    /// The OpenAI parameter at fault, if one is.
    #[cfg(test)]
    pub(crate) fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// The error body.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.clone(),
                code: self.code.map(str::to_owned),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(Shaped);
        response
    }
}

/// The field path a worker message starts with (`sampling.top_p: must be …`), if any.
fn field_path(message: &str) -> Option<&str> {
    let (path, _) = message.split_once(": ")?;
    let plausible = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._[]".contains(c));
    plausible.then_some(path)
}

/// The OpenAI parameter for a field path of the worker's `GenerateRequest`, or `None`
/// for fields a client cannot set (`request_id`).
pub(crate) fn openai_param(field_path: &str, endpoint: Endpoint) -> Option<String> {
    let base = field_path.split('[').next().unwrap_or(field_path);
    let param = match base {
        "request_id" => return None,
        "logprobs.top_n" | "logprobs" => match endpoint {
            Endpoint::Chat => "top_logprobs",
            Endpoint::Completions => "logprobs",
        },
        "prompt.chat.messages" => {
            // Keep the index and any sub-field: prompt.chat.messages[0].role → messages[0].role.
            return Some(field_path.replacen("prompt.chat.", "", 1));
        }
        "prompt" | "prompt.chat" | "prompt.text" | "prompt.tokens.ids" | "prompt.tokens" => {
            match endpoint {
                Endpoint::Chat => "messages",
                Endpoint::Completions => "prompt",
            }
        }
        "stop" => "stop",
        "stop_token_ids" => "stop_token_ids",
        "response_format.json_schema" => "response_format.json_schema.schema",
        "response_format" | "response_format.json_object" => "response_format",
        other => other.strip_prefix("sampling.").unwrap_or(other),
    };
    Some(param.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_worker(code: tonic::Code, message: &str, endpoint: Endpoint) -> ApiError {
        ApiError::from_library(
            &mlx_sidecar::Error::Rpc {
                code,
                message: message.into(),
            },
            endpoint,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn worker_field_paths_map_back_to_openai_parameters() {
        let cases = [
            ("sampling.top_p", Endpoint::Chat, Some("top_p")),
            (
                "sampling.logit_bias[999]",
                Endpoint::Chat,
                Some("logit_bias"),
            ),
            ("max_tokens", Endpoint::Completions, Some("max_tokens")),
            ("stop[3]", Endpoint::Chat, Some("stop")),
            ("logprobs.top_n", Endpoint::Chat, Some("top_logprobs")),
            (
                "response_format.json_schema",
                Endpoint::Chat,
                Some("response_format.json_schema.schema"),
            ),
            (
                "response_format",
                Endpoint::Completions,
                Some("response_format"),
            ),
            ("logprobs.top_n", Endpoint::Completions, Some("logprobs")),
            (
                "prompt.chat.messages[1].role",
                Endpoint::Chat,
                Some("messages[1].role"),
            ),
            ("prompt.chat", Endpoint::Chat, Some("messages")),
            ("prompt.text", Endpoint::Completions, Some("prompt")),
            (
                "prompt.tokens.ids[2]",
                Endpoint::Completions,
                Some("prompt"),
            ),
            ("stop_token_ids[0]", Endpoint::Chat, Some("stop_token_ids")),
            ("request_id", Endpoint::Chat, None),
        ];
        for (path, endpoint, expected) in cases {
            assert_eq!(openai_param(path, endpoint).as_deref(), expected, "{path}");
        }
    }

    #[test]
    fn invalid_argument_is_400_naming_the_parameter() {
        let e = from_worker(
            tonic::Code::InvalidArgument,
            "sampling.top_p: must be in (0, 1], got 1.5",
            Endpoint::Chat,
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(body.error.kind, "invalid_request_error");
        assert_eq!(body.error.param.as_deref(), Some("top_p"));
        assert!(body.error.message.contains("1.5"));
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn context_overflow_is_400_and_a_full_queue_is_429() {
        let e = from_worker(
            tonic::Code::ResourceExhausted,
            "max_tokens: 10 prompt tokens + 5000 max_tokens exceed the context of 2048 tokens",
            Endpoint::Completions,
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            e.body().error.code.as_deref(),
            Some("context_length_exceeded")
        );
        assert_eq!(e.param(), Some("max_tokens"));
        let e = from_worker(
            tonic::Code::ResourceExhausted,
            "the worker's queue is full (264 requests in flight, limit 264)",
            Endpoint::Chat,
        );
        assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
        let response = e.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn library_failures_map_by_code() {
        let retry = Duration::from_millis(200);
        let not_ready = mlx_sidecar::Error::NotReady {
            waited: Duration::from_secs(1),
            state: "starting".into(),
        };
        let e = ApiError::from_library(&not_ready, Endpoint::Chat, retry);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Retry-After is whole seconds, at least 1.
        assert_eq!(e.into_response().headers()[header::RETRY_AFTER], "1");
        let deadline = mlx_sidecar::Error::Deadline {
            deadline: Duration::from_secs(1),
            partial_text: String::new(),
        };
        assert_eq!(
            ApiError::from_library(&deadline, Endpoint::Chat, retry).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        let bug = mlx_sidecar::Error::Protocol("a bug".into());
        let e = ApiError::from_library(&bug, Endpoint::Chat, retry);
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.body().error.kind, "server_error");
    }

    #[test]
    fn unauthorized_says_bearer_and_nothing_else() {
        let response = ApiError::unauthorized().into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert!(response.extensions().get::<Shaped>().is_some());
    }

    #[test]
    fn messages_without_a_field_path_name_no_parameter() {
        let e = from_worker(
            tonic::Code::InvalidArgument,
            "the chat template failed: boom",
            Endpoint::Chat,
        );
        assert_eq!(e.param(), None);
        assert_eq!(
            field_path("prompt.chat: the chat template failed: x"),
            Some("prompt.chat")
        );
    }
}
