//! Why an adapter was refused. Each variant names the field or tensor at fault so the author of
//! the adapter can fix it; none of them affects anything already being served.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("adapter file not found: {0}")]
    NotFound(PathBuf),

    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },

    #[error("invalid adapter_config.json: {0}")]
    InvalidConfig(String),

    #[error("unsupported adapter: {0}")]
    Unsupported(String),

    #[error("{path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error("tensor {tensor}: {reason}")]
    BadTensor { tensor: String, reason: String },

    #[error("tensor {tensor} has shape {got:?}, the base model needs {want:?}")]
    ShapeMismatch {
        tensor: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },

    #[error("rank {rank} of {module} exceeds the configured maximum {max}")]
    RankTooLarge {
        module: String,
        rank: usize,
        max: usize,
    },

    #[error("target module {0:?} does not exist in the base model")]
    UnknownTarget(String),

    #[error("the adapter matches no module of the base model")]
    NoMatchingModule,

    #[error("the adapter was trained for {adapter_base:?}, whose architecture is not the base model's ({base_arch})")]
    ArchitectureMismatch {
        adapter_base: String,
        base_arch: String,
    },

    #[error("unknown adapter {0:?}")]
    UnknownAdapter(String),

    #[error("invalid adapter name {0:?}: use 1-64 of A-Z a-z 0-9 . _ -, not starting with a dot")]
    InvalidName(String),

    #[error("adapter {0:?} already exists")]
    AlreadyExists(String),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Model(#[from] loraplex_models::ModelError),
}

pub type Result<T> = std::result::Result<T, AdapterError>;
