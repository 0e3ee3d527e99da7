//! Loraplex runtime: sampling, stop conditions, per-sequence state, generation and scoring over a
//! `loraplex_models::Llama`. It never sees OpenAI or HTTP types.

mod engine;
mod error;
mod generate;
mod loader;
mod sampling;
mod scheduler;
mod score;
mod sequence;
mod stop;

pub use engine::{
    start, EngineConfig, EngineHandle, EngineStats, GenerationRequest, TokenEvent, TokenStream,
    Usage,
};
pub use error::{Result, RuntimeError};
pub use generate::{check_context, generate, GenRequest, Generation};
pub use sampling::{
    argmax, logprobs_of, top_n, truncated_distribution, LogitBias, MinP, Penalties, Sampler,
    Sampling, Temperature, TokenLogprob, TopP,
};
pub use scheduler::{AdapterKey, QueueFull, Scheduled, Scheduler, SchedulerConfig, SeqId};
pub use score::{score, ScoredToken};
pub use sequence::{FinishReason, GenerationParams, SequenceState, TokenStep};
pub use stop::{StopScan, StopStrings};
