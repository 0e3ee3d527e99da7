//! Errors of the runtime: rejected parameters (the caller's fault, naming the parameter) versus
//! model failures.

use std::sync::Arc;

use loraplex_adapters::AdapterError;
use loraplex_models::ModelError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid {param}: {message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },

    #[error("prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {context} tokens")]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },

    #[error("empty prompt")]
    EmptyPrompt,

    #[error("the model {0:?} does not exist")]
    UnknownAdapter(String),

    /// Shared by every request that waited for the load.
    #[error("adapter {name:?} could not be loaded: {source}")]
    AdapterLoad {
        name: String,
        source: Arc<AdapterError>,
    },

    /// A grammar or schema that does not compile, or a constrained sequence that cannot go on.
    #[error("{0}")]
    Grammar(String),

    #[error("the engine queue is full; retry later")]
    Overloaded,

    #[error("the engine is shutting down")]
    ShuttingDown,

    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),

    #[error("the engine thread could not start: {0}")]
    EngineStart(#[source] std::io::Error),

    #[error("the batch step failed: {0}")]
    StepFailed(String),

    #[error(transparent)]
    Model(#[from] ModelError),
}

impl RuntimeError {
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        RuntimeError::InvalidParameter {
            param,
            message: message.into(),
        }
    }
}

impl From<candle_core::Error> for RuntimeError {
    fn from(e: candle_core::Error) -> Self {
        RuntimeError::Model(ModelError::Candle(e))
    }
}

pub type Result<T> = std::result::Result<T, RuntimeError>;
