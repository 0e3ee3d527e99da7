//! Loraplex runtime: sampling, stop conditions, per-sequence state, generation and scoring over a
//! `loraplex_models::Decoder`. It never sees OpenAI or HTTP types.

mod batch;
mod constraint;
mod engine;
mod error;
mod generate;
mod handle;
mod loader;
mod request;
mod residency;
mod sampling;
mod scheduler;
mod score;
mod sequence;
mod stats;
mod stop;

pub use constraint::{
    styled_schema, CompiledGrammar, Constraint, GrammarSpec, GrammarStats, Grammars,
};
pub use engine::{start, EngineConfig};
pub use error::{Result, RuntimeError};
pub use generate::{check_context, generate, GenRequest, Generation};
pub use handle::EngineHandle;
pub use request::{GenerationRequest, Priority, Timings, TokenEvent, TokenStream, Usage};
pub use residency::ResidencyView;
pub use sampling::{
    argmax, logprobs_of, top_n, truncated_distribution, LogitBias, MinP, Penalties, Sampler,
    Sampling, Temperature, TokenLogprob, TopP,
};
pub use scheduler::{AdapterKey, QueueFull, Scheduled, Scheduler, SchedulerConfig, SeqId};
pub use score::{score, ScoredToken};
pub use sequence::{FinishReason, GenerationParams, SequenceState, TokenStep};
pub use stats::{EngineStats, MaskTimes, MASK_BUCKETS_US};
pub use stop::{StopScan, StopStrings};
