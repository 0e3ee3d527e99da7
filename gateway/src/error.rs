//! The gateway's errors and their one mapping to HTTP (status, OpenAI error envelope, headers).
//! Internal details go to the log, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use loraplex_adapters::AdapterError;
use loraplex_runtime::RuntimeError;

use crate::wire::{ErrorBody, ErrorEnvelope};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is wrong; names the field.
    #[error("{message}")]
    InvalidParameter { param: String, message: String },
    /// The body is not valid JSON for this endpoint, or the content type is wrong.
    #[error("{0}")]
    BadRequest(String),
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_tokens}) exceeds the model's context length of {context} tokens")]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("the server is overloaded; retry later")]
    Overloaded,
    #[error("the server is shutting down")]
    Unavailable,
    #[error("the request timed out")]
    Timeout,
    #[error("not found")]
    RouteNotFound,
    #[error("{0}")]
    Forbidden(String),
    /// An uploaded or pulled adapter was refused; says why.
    #[error("invalid adapter: {0}")]
    InvalidAdapter(String),
    #[error("The adapter `{0}` does not exist.")]
    AdapterNotFound(String),
    #[error("The experiment `{0}` does not exist.")]
    ExperimentNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// The adapter's files cannot be served (corrupt, unreadable, no longer valid): the
    /// operator's problem, not the request's; logged with the adapter's name.
    #[error("the adapter `{name}` cannot be served: {reason}")]
    AdapterUnavailable { name: String, reason: String },
    /// Anything unexpected; the detail is logged, the client gets a generic message.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::InvalidParameter {
            param: param.to_string(),
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. }
            | ApiError::BadRequest(_)
            | ApiError::ContextLength { .. }
            | ApiError::InvalidAdapter(_) => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_)
            | ApiError::RouteNotFound
            | ApiError::AdapterNotFound(_)
            | ApiError::ExperimentNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable | ApiError::AdapterUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI error body.
    pub fn body(&self) -> ErrorEnvelope {
        let (kind, param, code) = match self {
            ApiError::InvalidParameter { param, .. } => {
                ("invalid_request_error", Some(param.clone()), None)
            }
            ApiError::BadRequest(_) | ApiError::PayloadTooLarge(_) => {
                ("invalid_request_error", None, None)
            }
            ApiError::ContextLength { .. } => (
                "invalid_request_error",
                Some("messages".into()),
                Some("context_length_exceeded".into()),
            ),
            ApiError::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model".into()),
                Some("model_not_found".into()),
            ),
            ApiError::RouteNotFound => ("invalid_request_error", None, Some("not_found".into())),
            ApiError::InvalidAdapter(_) => (
                "invalid_request_error",
                None,
                Some("invalid_adapter".into()),
            ),
            ApiError::AdapterNotFound(_) => (
                "invalid_request_error",
                Some("name".into()),
                Some("adapter_not_found".into()),
            ),
            ApiError::ExperimentNotFound(_) => (
                "invalid_request_error",
                Some("name".into()),
                Some("experiment_not_found".into()),
            ),
            ApiError::Forbidden(_) => ("permission_error", None, Some("forbidden".into())),
            ApiError::Conflict(_) => ("invalid_request_error", None, Some("conflict".into())),
            ApiError::Unauthorized => {
                ("authentication_error", None, Some("invalid_api_key".into()))
            }
            ApiError::Overloaded => ("rate_limit_error", None, Some("overloaded".into())),
            ApiError::Unavailable => ("server_error", None, Some("unavailable".into())),
            ApiError::AdapterUnavailable { .. } => {
                ("server_error", None, Some("adapter_unavailable".into()))
            }
            ApiError::Timeout => ("server_error", None, Some("timeout".into())),
            ApiError::Internal(_) => ("server_error", None, None),
        };
        ErrorEnvelope {
            error: ErrorBody {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl From<RuntimeError> for ApiError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::InvalidParameter { param, message } => ApiError::invalid(param, message),
            RuntimeError::ContextOverflow {
                prompt,
                max_tokens,
                context,
            } => ApiError::ContextLength {
                prompt,
                max_tokens,
                context,
            },
            RuntimeError::EmptyPrompt => ApiError::invalid("prompt", "the prompt is empty"),
            RuntimeError::UnknownAdapter(name) => ApiError::ModelNotFound(name),
            RuntimeError::Overloaded => ApiError::Overloaded,
            RuntimeError::ShuttingDown => ApiError::Unavailable,
            RuntimeError::AdapterLoad { name, source } => ApiError::AdapterUnavailable {
                name,
                reason: source.to_string(),
            },
            // Validation refuses grammars that do not compile, naming the field; one failing
            // later (a sequence its grammar cannot continue) is the server's failure.
            other @ (RuntimeError::InvalidConfig(_)
            | RuntimeError::Grammar(_)
            | RuntimeError::EngineStart(_)
            | RuntimeError::StepFailed(_)
            | RuntimeError::Model(_)) => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<AdapterError> for ApiError {
    fn from(e: AdapterError) -> Self {
        match e {
            AdapterError::InvalidName(_) => ApiError::invalid("name", e.to_string()),
            AdapterError::UnknownAdapter(n) => ApiError::AdapterNotFound(n),
            AdapterError::AlreadyExists(n) => {
                ApiError::Conflict(format!("adapter {n:?} already exists"))
            }
            // The server's own disk or device failed, not the adapter.
            AdapterError::Io { .. } | AdapterError::Candle(_) => ApiError::Internal(e.to_string()),
            other => ApiError::InvalidAdapter(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::AdapterUnavailable { name, reason } => {
                tracing::error!(adapter = %name, %reason, "adapter cannot be served")
            }
            _ => {}
        }
        let status = self.status();
        let mut resp = (status, Json(self.body())).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}
