//! Errors of model loading and execution.
//!
//! Every variant names the file or tensor involved so a user can fix the input without reading code.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("file not found: {path}")]
    NotFound { path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    #[error("{path}: unsupported architecture {arch:?} (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        arch: String,
        /// The architectures this build runs (`Arch::supported`).
        supported: String,
    },

    #[error("{path}: unsupported weight dtype {dtype} for tensor {tensor}")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: missing {what}")]
    Missing { path: PathBuf, what: String },

    #[error("invalid config in {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("chat template error: {0}")]
    ChatTemplate(String),

    #[error("model {repo} is not in the local Hugging Face cache and downloads are disabled (HF_HUB_OFFLINE=1)")]
    HubOffline { repo: String },

    #[error("cannot fetch {file} of {repo} from the Hugging Face hub: {reason}")]
    Hub {
        repo: String,
        file: String,
        reason: String,
    },

    #[error("unsupported device {0:?} (expected cpu, cuda[:N] or metal)")]
    Device(String),

    #[error("CPU kernels: {0}")]
    CpuKernels(String),

    #[error("invalid batch: {0}")]
    InvalidBatch(String),

    #[error("sequence of {len} tokens exceeds the model's context of {max} tokens")]
    ContextOverflow { len: usize, max: usize },

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound { path }
        } else {
            ModelError::Io { path, source }
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        ModelError::Corrupt {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}

/// A LoRA delta that cannot run where the CPU path needs it to.
pub(crate) fn host_delta_failed() -> ModelError {
    ModelError::InvalidBatch("LoRA rows that do not match the delta, on the CPU path".into())
}
